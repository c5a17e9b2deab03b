//! The metadata store on PostgreSQL, for a grid of several web servers sharing one database
//! (`docs/scale-out.md`).
//!
//! - **Connections.** A `deadpool-postgres` pool of `tokio-postgres` connections; TLS through
//!   rustls when the URL asks for it (`sslmode=require`), with the CA given in [`PgOptions`].
//!   Every statement has a time limit (`statement_timeout`), so does an idle transaction, the
//!   connection attempt and the wait for a pooled connection.
//! - **Synchronous over asynchronous.** The `Store` trait is synchronous (its calls run on
//!   actix's blocking pool or the answer committer's thread); the store owns a small tokio
//!   runtime that drives the pool's connections, and each call blocks on it (so a call must
//!   not be made from an async task; `connect`, made at start-up, moves to a thread of its
//!   own when it is). No transaction is held across an HTTP exchange: each trait call is one
//!   transaction, begun and committed inside the call; the hot ones (a lease, a batch of
//!   answers) are one statement, a transaction by itself, without `BEGIN`/`COMMIT` round
//!   trips; reads are single statements outside any transaction.
//! - **One job, one holder.** Leasing is one statement per batch (`FOR UPDATE SKIP LOCKED`:
//!   two servers leasing at once take different jobs, never wait for each other). Every
//!   answer, renewal, release and failure report is an `UPDATE … WHERE` on the holder
//!   (`lease_lookup` / `last_lookup`), which PostgreSQL re-checks on the row's newest version
//!   after waiting for a concurrent writer (read committed): two lookups never hold one job, an
//!   answer is taken once, whichever server each request reaches.
//! - **The database's clock.** In production ([`PgClock::Database`]) every time the store
//!   compares or records is the database's (`now()` of the transaction), never a web
//!   server's: a caller's `until`/`expires_at` are taken as durations from the caller's `now`
//!   and laid onto the database's clock, so servers whose clocks disagree still agree on
//!   when a lease ends. [`PgClock::Caller`] takes the caller's times as they are (the
//!   conformance suite drives the clock so).
//! - **The change feed.** Its numbers come from one counter row, taken in the statement that
//!   changes the jobs (the last of its transaction), so they are committed in order (see
//!   `schema` and [`changing_jobs`]).
//! - **Retries.** A transaction PostgreSQL aborted for a deadlock or a serialization failure,
//!   or one that could not begin because its pooled connection had died (the database
//!   restarted), is run again (a few times). A failure at `COMMIT` is not retried: whether it
//!   committed is unknown, and the caller reports the error.
//! - **Wake-ups.** Transactions that queue jobs `NOTIFY rjs_queued`; [`PgStore::queue_hint`]
//!   is woken by a `LISTEN`ing connection, so a lookup's event stream on one server hears of
//!   jobs queued through another (polling stays the truth: see `server::queue`).

mod schema;
mod sessions;
mod store;
mod views;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};

use tokio_postgres::Row;
use tokio_postgres::error::SqlState;

use super::StoreError;
use super::rows::Columns;

/// Connections a store keeps at most.
pub const MAX_CONNECTIONS: usize = 16;
/// The advisory lock every server takes to migrate (any constant shared by all of them).
const MIGRATION_LOCK: i64 = 0x524a_535f_5343_4845; // "RJS_SCHE"
/// The channel of queue wake-ups.
const QUEUE_CHANNEL: &str = "rjs_queued";
/// Times a transaction is tried when PostgreSQL aborted it (deadlock, serialization) or its
/// connection was found dead before it began.
const ATTEMPTS: u32 = 5;
/// Longest a statement may run.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a whole store call may take (waiting for a connection, retries included).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        if unreachable(&e) {
            StoreError::Unavailable(Box::new(e))
        } else {
            StoreError::Backend(Box::new(e))
        }
    }
}

/// Whether `e` says the database cannot be reached rather than that a statement failed:
/// the connection is closed or failed (an I/O error underneath: refused, reset, timed out,
/// TLS), or the server refuses for now — a connection exception (class 08), too many
/// connections (53300), or shutting down, starting up or restarting (class 57P).
fn unreachable(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    if let Some(code) = e.code() {
        let c = code.code();
        return c.starts_with("08") || c.starts_with("57P") || c == "53300";
    }
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        if c.is::<std::io::Error>() {
            return true;
        }
        cause = c.source();
    }
    false
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        // No connection to be had: the wait timed out, connecting failed, the pool closed.
        StoreError::Unavailable(Box::new(e))
    }
}

/// Whose clock the store reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PgClock {
    /// The database's (`now()`): what production uses, so that every web server agrees.
    #[default]
    Database,
    /// The `now` each call is given (tests that drive the clock).
    Caller,
}

/// How to reach the database.
#[derive(Clone)]
pub struct PgOptions {
    /// A `postgres://` URL (a Unix socket folder as `?host=/path`).
    pub url: String,
    /// The password, when it is not in the URL (it should not be: see `store::config`).
    pub password: Option<String>,
    /// The TLS client used when the URL's `sslmode` asks for TLS (ignored on a Unix socket);
    /// `None`: no trusted roots, so TLS to a remote database needs its CA configured.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// How long taking a connection from the pool may wait (the database down, or every
    /// connection busy) before the call fails.
    pub wait: Duration,
    pub clock: PgClock,
    /// Connections kept at most.
    pub max_connections: usize,
}

impl PgOptions {
    pub fn new(url: impl Into<String>) -> PgOptions {
        PgOptions {
            url: url.into(),
            password: None,
            tls: None,
            wait: Duration::from_secs(10),
            clock: PgClock::Database,
            max_connections: MAX_CONNECTIONS,
        }
    }
}

/// The store on PostgreSQL.
pub struct PgStore {
    /// Always `Some` but in `drop` (which shuts it down without blocking).
    rt: Option<tokio::runtime::Runtime>,
    pool: Pool,
    clock: PgClock,
    /// Woken when a transaction (of any server) queued jobs.
    queue_hint: Arc<tokio::sync::Notify>,
    /// The clock second at which this store last requeued expired leases (see `lease`).
    expired_at: std::sync::atomic::AtomicI64,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

/// A transaction of the store's.
type Tx<'a> = deadpool_postgres::Transaction<'a>;

/// The time of one call: the store's `now` and the shift from the caller's clock to it.
#[derive(Debug, Clone, Copy)]
struct Clock {
    now: i64,
    shift: i64,
}

impl Clock {
    /// A caller's absolute time (`until`, `expires_at`) on the store's clock.
    fn at(&self, caller_time: i64) -> i64 {
        caller_time.saturating_add(self.shift)
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which an async context (a server's) forbids.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// Whether this thread has a tokio runtime's context (an async task's, where blocking on
/// another runtime is forbidden, or a `spawn_blocking` thread's, where it is not).
fn in_async_context() -> bool {
    tokio::runtime::Handle::try_current().is_ok()
}

/// Runs `f` on a thread of its own and waits for it (for blocking work asked for from an
/// async context); a panic there is raised here.
fn on_own_thread<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| match s.spawn(f).join() {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

impl PgStore {
    /// Connects and brings the schema up to date (refusing a newer one). Blocks; from an async
    /// context it does so on a thread of its own.
    pub fn connect(opts: &PgOptions) -> Result<PgStore, StoreError> {
        if in_async_context() {
            return on_own_thread(|| PgStore::connect(opts));
        }
        let mut config: tokio_postgres::Config = opts
            .url
            .parse()
            .map_err(|e| StoreError::Backend(Box::new(e)))?;
        if let Some(p) = &opts.password {
            config.password(p.as_bytes());
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(opts.wait);
        }
        // A connection whose peer is gone without a word (a partition, a database host
        // lost) is found dead within about 30 s, not the system's 15 min.
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(30));
        config.keepalives_interval(Duration::from_secs(5));
        config.keepalives_retries(3);
        config.tcp_user_timeout(Duration::from_secs(30));
        let options = session_options(config.get_options());
        config.options(options);
        let tls = match &opts.tls {
            Some(c) => (**c).clone(),
            None => rustls::ClientConfig::builder()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
        };
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls);
        let manager = Manager::from_config(
            config.clone(),
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("rjs-pg")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Backend(Box::new(e)))?;
        let pool = {
            let _guard = rt.enter();
            Pool::builder(manager)
                .max_size(opts.max_connections.max(1))
                .runtime(Runtime::Tokio1)
                .wait_timeout(Some(opts.wait))
                .create_timeout(Some(opts.wait))
                .recycle_timeout(Some(opts.wait))
                .build()
                .map_err(|e| StoreError::Backend(Box::new(e)))?
        };
        let queue_hint = Arc::new(tokio::sync::Notify::new());
        let store = PgStore {
            rt: Some(rt),
            pool,
            clock: opts.clock,
            queue_hint: queue_hint.clone(),
            expired_at: std::sync::atomic::AtomicI64::new(i64::MIN),
        };
        store.migrate()?;
        store
            .runtime()?
            .spawn(listen_for_queued(config, tls, queue_hint, opts.wait));
        Ok(store)
    }

    /// The schema version this program writes.
    pub fn schema_version() -> i64 {
        schema::MIGRATIONS.len() as i64
    }

    /// The schema version of the database.
    pub fn database_version(&self) -> Result<i64, StoreError> {
        self.read(async |tx| {
            let row = tx
                .query_one("SELECT version FROM schema_version", &[])
                .await?;
            Ok(i64::from(row.try_get::<_, i32>(0)?))
        })
    }

    /// Applies the steps the database lacks, all in one transaction that holds the migration
    /// lock: several servers starting at once migrate once, one after another.
    fn migrate(&self) -> Result<(), StoreError> {
        self.call(async {
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
                .try_get(0)?;
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

    fn runtime(&self) -> Result<&tokio::runtime::Runtime, StoreError> {
        self.rt
            .as_ref()
            .ok_or_else(|| StoreError::Backend("the store is closed".into()))
    }

    /// Runs `fut` on the store's runtime, within [`CALL_TIMEOUT`]. A call that runs out of
    /// time closes the idle connections (the one it used among them): one that hangs is not
    /// handed out again.
    fn call<T>(&self, fut: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
        let done = self
            .runtime()?
            .block_on(async { tokio::time::timeout(CALL_TIMEOUT, fut).await });
        done.unwrap_or_else(|_| {
            self.pool.retain(|_, _| false);
            Err(StoreError::Unavailable(
                format!(
                    "the database did not answer within {} s",
                    CALL_TIMEOUT.as_secs()
                )
                .into(),
            ))
        })
    }

    /// Runs `f` in one read-write transaction, committed if it succeeds (tried again if
    /// PostgreSQL aborted it, see the module's notes).
    fn write<T: Send>(
        &self,
        f: impl AsyncFn(&Tx<'_>) -> Result<T, StoreError> + Sync,
    ) -> Result<T, StoreError> {
        self.run_transaction(&f)
    }

    /// Runs `f`'s reads on a pooled connection, each statement on its own (no transaction:
    /// under read committed a transaction would give its statements no common snapshot
    /// anyway, and would cost two more round trips). Tried again on a connection found dead.
    fn read<T: Send>(
        &self,
        f: impl AsyncFn(&deadpool_postgres::Client) -> Result<T, StoreError> + Sync,
    ) -> Result<T, StoreError> {
        self.on_connection(f, retryable)
    }

    /// Runs `f`, one statement that is a transaction of its own (autocommit: no `BEGIN` and
    /// `COMMIT` round trips), on a pooled connection. Tried again only if PostgreSQL aborted
    /// it (deadlock, serialization failure): a connection lost during it leaves unknown
    /// whether it committed, so that is the caller's error.
    fn single<T: Send>(
        &self,
        f: impl AsyncFn(&deadpool_postgres::Client) -> Result<T, StoreError> + Sync,
    ) -> Result<T, StoreError> {
        self.on_connection(f, aborted)
    }

    /// Runs `f` on a pooled connection, again (a few times) while it fails as `again` says.
    fn on_connection<T: Send>(
        &self,
        f: impl AsyncFn(&deadpool_postgres::Client) -> Result<T, StoreError> + Sync,
        again: fn(&StoreError) -> bool,
    ) -> Result<T, StoreError> {
        self.call(async {
            let mut attempt = 1;
            loop {
                let client = self.pool.get().await?;
                match f(&client).await {
                    Err(e) if attempt < ATTEMPTS && again(&e) => attempt += 1,
                    result => return result,
                }
            }
        })
    }

    /// The caller's `now` for a statement that reads the clock as
    /// `coalesce($n::bigint, <the database's now>)`: None (the database's) in
    /// [`PgClock::Database`].
    fn caller_clock(&self, caller_now: i64) -> Option<i64> {
        match self.clock {
            PgClock::Caller => Some(caller_now),
            PgClock::Database => None,
        }
    }

    fn run_transaction<T>(
        &self,
        f: &impl AsyncFn(&Tx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.call(async {
            let mut attempt = 1;
            loop {
                let mut client = self.pool.get().await?;
                let tx = match client.transaction().await {
                    Ok(tx) => tx,
                    // Nothing was done: a dead pooled connection (it is not returned to the
                    // pool), try another.
                    Err(e) if attempt < ATTEMPTS && e.is_closed() => {
                        attempt += 1;
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                };
                match f(&tx).await {
                    Ok(value) => {
                        tx.commit().await?;
                        return Ok(value);
                    }
                    Err(e) if attempt < ATTEMPTS && retryable(&e) => {
                        drop(tx);
                        attempt += 1;
                        // A deadlock's other party goes on meanwhile.
                        tokio::time::sleep(Duration::from_millis(2 << attempt)).await;
                    }
                    Err(e) => return Err(e),
                }
            }
        })
    }

    /// The time of a call made with the caller's `now`: the database's in
    /// [`PgClock::Database`] (the transaction's start), else the caller's.
    async fn clock(&self, tx: &impl GenericClient, caller_now: i64) -> Result<Clock, StoreError> {
        let db_now = match self.clock {
            PgClock::Caller => caller_now,
            PgClock::Database => {
                one_value(tx, "SELECT floor(extract(epoch FROM now()))::bigint", &[]).await?
            }
        };
        Ok(self.clock_at(db_now, caller_now))
    }

    /// The time of a call, the database's clock reading `db_now`.
    fn clock_at(&self, db_now: i64, caller_now: i64) -> Clock {
        let now = match self.clock {
            PgClock::Caller => caller_now,
            PgClock::Database => db_now,
        };
        Clock {
            now,
            shift: now.saturating_sub(caller_now),
        }
    }
}

/// Whether a transaction failed in a way that running it again may cure: PostgreSQL aborted
/// it (deadlock, serialization failure), or its connection died before it committed (the
/// transaction was rolled back with it).
fn retryable(e: &StoreError) -> bool {
    aborted(e) || pg_error(e).is_some_and(|e| e.is_closed())
}

fn pg_error(e: &StoreError) -> Option<&tokio_postgres::Error> {
    match e {
        StoreError::Backend(source) | StoreError::Unavailable(source) => {
            source.downcast_ref::<tokio_postgres::Error>()
        }
        _ => None,
    }
}

/// Whether PostgreSQL aborted a transaction that may simply run again (deadlock,
/// serialization failure).
fn aborted(e: &StoreError) -> bool {
    let Some(e) = pg_error(e) else {
        return false;
    };
    matches!(
        e.code(),
        Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED
            || *c == SqlState::T_R_SERIALIZATION_FAILURE
    )
}

/// The options each session starts with: the URL's own (`given`), then the server-side
/// limits, which come last so that they win.
fn session_options(given: Option<&str>) -> String {
    let limits = format!(
        "-c statement_timeout={} -c idle_in_transaction_session_timeout={} -c lock_timeout={}",
        STATEMENT_TIMEOUT.as_millis(),
        CALL_TIMEOUT.as_millis(),
        STATEMENT_TIMEOUT.as_millis()
    );
    match given {
        Some(given) if !given.trim().is_empty() => format!("{given} {limits}"),
        _ => limits,
    }
}

/// Keeps one connection `LISTEN`ing on [`QUEUE_CHANNEL`], waking `hint` at each notification
/// (and once after each reconnection, since notifications sent meanwhile were lost).
async fn listen_for_queued(
    config: tokio_postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    hint: Arc<tokio::sync::Notify>,
    pause: Duration,
) {
    use futures_util::StreamExt as _;
    loop {
        // tokio-postgres's connect_timeout covers the TCP connect only, not the TLS handshake
        // and the login after it: a peer that accepts and then says nothing would hold the
        // listener for ever.
        let connected =
            match tokio::time::timeout(STATEMENT_TIMEOUT, config.connect(tls.clone())).await {
                Ok(Ok(connected)) => Ok(connected),
                Ok(Err(e)) => Err(rjs_cmd::chain(&e).to_string()),
                Err(_) => Err(format!("no answer within {STATEMENT_TIMEOUT:?}")),
            };
        match connected {
            Ok((client, mut connection)) => {
                let mut messages =
                    futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                let statement = format!("LISTEN {QUEUE_CHANNEL}");
                let listen = client.batch_execute(&statement);
                // The connection must be polled for the LISTEN to complete.
                let mut listen = std::pin::pin!(listen);
                let listened = tokio::time::timeout(STATEMENT_TIMEOUT, async {
                    loop {
                        tokio::select! {
                            r = &mut listen => break r,
                            m = messages.next() => if m.is_none() { break Ok(()) },
                        }
                    }
                })
                .await;
                let listening = match listened {
                    Ok(Ok(())) => true,
                    Ok(Err(e)) => {
                        tracing::warn!(error = %rjs_cmd::chain(&e), "listening for queued jobs");
                        false
                    }
                    Err(_) => {
                        tracing::warn!(
                            "listening for queued jobs: no answer within {STATEMENT_TIMEOUT:?}"
                        );
                        false
                    }
                };
                if listening {
                    hint.notify_one();
                    while let Some(message) = messages.next().await {
                        match message {
                            Ok(tokio_postgres::AsyncMessage::Notification(_)) => hint.notify_one(),
                            Ok(_) => {}
                            Err(e) => {
                                tracing::warn!(error = %rjs_cmd::chain(&e),
                                               "the queue listener's connection failed");
                                break;
                            }
                        }
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "connecting the queue listener"),
        }
        tokio::time::sleep(pause.min(Duration::from_secs(2))).await;
    }
}

// ------------------------------------------------------------------ row helpers

/// A value read from the database that does not fit its Rust type.
fn bad_value(what: String) -> StoreError {
    StoreError::Backend(what.into())
}

impl Columns for Row {
    type Error = StoreError;
    fn int(&self, idx: usize) -> Result<i64, StoreError> {
        Ok(self.try_get(idx)?)
    }
    fn opt_int(&self, idx: usize) -> Result<Option<i64>, StoreError> {
        Ok(self.try_get(idx)?)
    }
    fn text(&self, idx: usize) -> Result<String, StoreError> {
        Ok(self.try_get(idx)?)
    }
    fn opt_text(&self, idx: usize) -> Result<Option<String>, StoreError> {
        Ok(self.try_get(idx)?)
    }
    fn flag(&self, idx: usize) -> Result<bool, StoreError> {
        Ok(self.try_get(idx)?)
    }
    fn invalid(&self, idx: usize, why: String) -> StoreError {
        bad_value(format!("column {idx}: {why}"))
    }
}

/// Every row of `sql` (a cached statement), mapped.
async fn all_rows<T>(
    tx: &impl GenericClient,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    map: impl Fn(&Row) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    let stmt = tx.prepare_cached(sql).await?;
    tx.query(&stmt, params).await?.iter().map(map).collect()
}

/// The row of `sql` (a cached statement) mapped, if there is one.
async fn optional_row<T>(
    tx: &impl GenericClient,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    map: impl FnOnce(&Row) -> Result<T, StoreError>,
) -> Result<Option<T>, StoreError> {
    let stmt = tx.prepare_cached(sql).await?;
    tx.query_opt(&stmt, params)
        .await?
        .as_ref()
        .map(map)
        .transpose()
}

/// The first column of the one row of `sql` (a cached statement).
async fn one_value<T: for<'a> tokio_postgres::types::FromSql<'a>>(
    tx: &impl GenericClient,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<T, StoreError> {
    let stmt = tx.prepare_cached(sql).await?;
    Ok(tx.query_one(&stmt, params).await?.try_get(0)?)
}

/// Runs `sql` (a cached statement); the rows it changed.
async fn execute(
    tx: &impl GenericClient,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<u64, StoreError> {
    let stmt = tx.prepare_cached(sql).await?;
    Ok(tx.execute(&stmt, params).await?)
}

/// One statement that changes the jobs `target` selects, numbers each change from the change
/// counter and keeps their submissions' counts: `UPDATE jobs j SET {set} … RETURNING
/// {returning}` (`j` the job as changed).
///
/// `target` is a query over `jobs` that locks the jobs it selects (`FOR UPDATE`) and returns
/// their `id`, their `state AS old_state` and `outcome AS old_outcome` as it locked them, and
/// any per-job values `set` reads as `t.<column>`.
///
/// - Change numbers: the counter row is locked only when there is a job to change, and stays
///   locked until the transaction commits, so numbers are committed in order; a transaction
///   should run such a statement last (or nearly: the lock is held until `COMMIT`).
/// - Counts: one update of each submission's row per statement, from the old and new states
///   and outcomes (the same rules as SQLite's triggers and `rjs_wire::api::OutcomeCounts`).
fn changing_jobs(target: &str, set: &str, returning: &str) -> String {
    changing_jobs_and(target, set, returning, "")
}

/// [`changing_jobs`], with more common table expressions (`, name AS (…)`) run in the same
/// statement (they may read `target`: every job it selects is changed).
fn changing_jobs_and(target: &str, set: &str, returning: &str, also: &str) -> String {
    format!(
        "WITH target AS ({target}),
              numbered AS (SELECT t.*, row_number() OVER (ORDER BY t.id) AS rn FROM target t),
              counter AS (UPDATE change_counter SET seq = seq + (SELECT count(*) FROM target)
                          WHERE EXISTS (SELECT 1 FROM target)
                          RETURNING seq - (SELECT count(*) FROM target) AS base),
              changed AS (UPDATE jobs j
                             SET {set}, change_seq = (SELECT base FROM counter) + t.rn
                          FROM numbered t WHERE j.id = t.id
                          RETURNING j.*, t.old_state, t.old_outcome),
              counted AS (
                  UPDATE submission_counts c
                     SET queued = c.queued + d.queued, leased = c.leased + d.leased,
                         done = c.done + d.done, failed = c.failed + d.failed,
                         exit_zero = c.exit_zero + d.exit_zero,
                         exit_other = c.exit_other + d.exit_other,
                         trapped = c.trapped + d.trapped, limited = c.limited + d.limited,
                         first_answer_at = CASE WHEN d.answered > 0
                                                THEN coalesce(c.first_answer_at, d.first_answer)
                                                ELSE c.first_answer_at END,
                         last_answer_at = CASE WHEN d.answered > 0 THEN d.last_answer
                                               ELSE c.last_answer_at END,
                         changed_at = d.changed_at
                    FROM (SELECT submission_id,
                                 sum((state = 'queued')::int - (old_state = 'queued')::int)
                                     AS queued,
                                 sum((state = 'leased')::int - (old_state = 'leased')::int)
                                     AS leased,
                                 sum((state = 'done')::int - (old_state = 'done')::int) AS done,
                                 sum((state = 'failed')::int - (old_state = 'failed')::int)
                                     AS failed,
                                 count(*) FILTER (WHERE old_outcome IS NULL AND outcome IS NOT NULL)
                                     AS answered,
                                 count(*) FILTER (WHERE old_outcome IS NULL
                                                    AND rjs_exit_zero(outcome)) AS exit_zero,
                                 count(*) FILTER (WHERE old_outcome IS NULL
                                                    AND outcome LIKE 'exit %'
                                                    AND NOT rjs_exit_zero(outcome))
                                     AS exit_other,
                                 count(*) FILTER (WHERE old_outcome IS NULL
                                                    AND outcome LIKE 'trap%') AS trapped,
                                 count(*) FILTER (WHERE old_outcome IS NULL
                                                    AND outcome LIKE 'limit%') AS limited,
                                 min(updated_at) FILTER (WHERE old_outcome IS NULL
                                                           AND outcome IS NOT NULL)
                                     AS first_answer,
                                 max(updated_at) FILTER (WHERE old_outcome IS NULL
                                                           AND outcome IS NOT NULL)
                                     AS last_answer,
                                 max(updated_at) AS changed_at
                            FROM changed
                           WHERE old_state IS DISTINCT FROM state
                              OR (old_outcome IS NULL AND outcome IS NOT NULL)
                           GROUP BY submission_id) AS d
                   WHERE c.submission_id = d.submission_id)
              {also}
         SELECT {returning} FROM changed j"
    )
}

/// Wakes every server's queue listener when this transaction commits (jobs were queued).
async fn notify_queued(tx: &impl GenericClient) -> Result<(), StoreError> {
    execute(tx, "SELECT pg_notify($1, '')", &[&QUEUE_CHANNEL]).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limits_come_after_a_urls_own_options() {
        let mine = session_options(None);
        assert!(mine.contains("-c statement_timeout="), "{mine}");
        let url: tokio_postgres::Config =
            "postgres://rjs@127.0.0.1/rjs?options=-c%20statement_timeout%3D0"
                .parse()
                .unwrap();
        let both = session_options(url.get_options());
        assert_eq!(both, format!("-c statement_timeout=0 {mine}"));
    }
}
