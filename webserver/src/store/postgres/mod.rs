//! The metadata store on PostgreSQL, for a grid of several web servers sharing one database
//! (`docs/scale-out.md`, being written with issue 14).
//!
//! **In progress.** What is here and tested: connecting (a `deadpool-postgres` pool of
//! `tokio-postgres` connections, TLS through rustls for a remote database), and the schema
//! migrated once however many servers start at the same moment (under a transaction-scoped
//! advisory lock). The `Store` trait's implementation follows; until then `serve` does not
//! offer this backend.
//!
//! The `Store` trait is synchronous (its calls run on actix's blocking pool or the answer
//! committer's thread), the driver asynchronous: the store owns a small tokio runtime of its
//! own, which drives the pool's connections, and each call blocks on it.

mod schema;

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};

use super::StoreError;

/// Connections a store keeps at most.
pub const MAX_CONNECTIONS: usize = 16;
/// The advisory lock every server takes to migrate (any constant shared by all of them).
const MIGRATION_LOCK: i64 = 0x524a_535f_5343_4845; // "RJS_SCHE"

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        StoreError::Backend(Box::new(e))
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        StoreError::Backend(Box::new(e))
    }
}

/// How to reach the database.
#[derive(Clone)]
pub struct PgOptions {
    /// A `postgres://` URL (a Unix socket folder as `?host=/path`).
    pub url: String,
    /// The TLS client used when the URL's `sslmode` asks for TLS (ignored on a Unix socket);
    /// `None`: the web server's default (no roots but the ones given later, so TLS to a
    /// remote database needs its CA configured).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// How long taking a connection from the pool may wait (the database down, or every
    /// connection busy) before the call fails.
    pub wait: Duration,
}

impl PgOptions {
    pub fn new(url: impl Into<String>) -> PgOptions {
        PgOptions {
            url: url.into(),
            tls: None,
            wait: Duration::from_secs(10),
        }
    }
}

/// The store on PostgreSQL.
pub struct PgStore {
    rt: tokio::runtime::Runtime,
    pool: Pool,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connects and brings the schema up to date (refusing a newer one).
    pub fn connect(opts: &PgOptions) -> Result<PgStore, StoreError> {
        let config: tokio_postgres::Config = opts
            .url
            .parse()
            .map_err(|e| StoreError::Backend(Box::new(e)))?;
        let tls = match &opts.tls {
            Some(c) => (**c).clone(),
            None => rustls::ClientConfig::builder()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
        };
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls);
        let manager = Manager::from_config(
            config,
            tls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("rjs-pg")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Backend(Box::new(e)))?;
        let pool = {
            let _guard = rt.enter();
            Pool::builder(manager)
                .max_size(MAX_CONNECTIONS)
                .runtime(Runtime::Tokio1)
                .wait_timeout(Some(opts.wait))
                .create_timeout(Some(opts.wait))
                .build()
                .map_err(|e| StoreError::Backend(Box::new(e)))?
        };
        let store = PgStore { rt, pool };
        store.migrate()?;
        Ok(store)
    }

    /// The schema version this program writes.
    pub fn schema_version() -> i64 {
        schema::MIGRATIONS.len() as i64
    }

    /// The schema version of the database.
    pub fn database_version(&self) -> Result<i64, StoreError> {
        self.rt.block_on(async {
            let client = self.pool.get().await?;
            let row = client
                .query_one("SELECT version FROM schema_version", &[])
                .await?;
            Ok(row.get::<_, i32>(0) as i64)
        })
    }

    /// Applies the steps the database lacks, all in one transaction that holds the migration
    /// lock: several servers starting at once migrate once, one after another.
    fn migrate(&self) -> Result<(), StoreError> {
        self.rt.block_on(async {
            let mut client = self.pool.get().await?;
            let tx = client.transaction().await?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
                .await?;
            tx.batch_execute(
                "CREATE TABLE IF NOT EXISTS schema_version (
                     one     BOOLEAN PRIMARY KEY DEFAULT true CHECK (one),
                     version INTEGER NOT NULL
                 );
                 INSERT INTO schema_version (version) VALUES (0) ON CONFLICT DO NOTHING;",
            )
            .await?;
            let version: i32 = tx
                .query_one("SELECT version FROM schema_version", &[])
                .await?
                .get(0);
            let known = schema::MIGRATIONS.len();
            let version = usize::try_from(version).map_err(|_| {
                StoreError::Schema(format!("the database has schema version {version}"))
            })?;
            if version > known {
                return Err(StoreError::Schema(format!(
                    "the database has schema version {version}, newer than this program \
                     knows ({known}): use a newer rjs-webserver"
                )));
            }
            for (i, step) in schema::MIGRATIONS.iter().enumerate().skip(version) {
                tx.batch_execute(step)
                    .await
                    .map_err(|e| StoreError::Migration {
                        version: i + 1,
                        source: Box::new(e),
                    })?;
            }
            tx.execute("UPDATE schema_version SET version = $1", &[&(known as i32)])
                .await?;
            tx.commit().await?;
            Ok(())
        })
    }
}
