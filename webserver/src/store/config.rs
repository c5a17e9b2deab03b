//! Where the metadata store is: the data directory's SQLite file (the default: nothing else to
//! run), or a PostgreSQL database shared by several web servers (`docs/scale-out.md`).
//!
//! A PostgreSQL URL names no password: a command line is visible to every user in `ps`. The
//! password comes from a file (`--store-password-file`, readable by its owner only) or the
//! environment (`RJS_STORE_PASSWORD`). A database reached over the network (not a Unix socket,
//! not loopback) must be reached over TLS (`sslmode=require`) with its CA given
//! (`--store-ca`), whose certificate and host name rustls checks.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rjs_signer::fsutil::{self, FileError};
use tokio_postgres::config::{Host, SslMode};

use super::postgres::{PgOptions, PgStore};
use super::sqlite::SqliteStore;
use super::{Store, StoreError};

/// The environment variable a PostgreSQL password may come from.
pub const PASSWORD_ENV: &str = "RJS_STORE_PASSWORD";
/// Largest password file read.
const MAX_PASSWORD_FILE: u64 = 4096;

/// Where the metadata store is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum StoreConfig {
    /// `DIR/rjs.db` of the data directory.
    #[default]
    Sqlite,
    Postgres(PgConfig),
}

/// A PostgreSQL store.
#[derive(Clone, PartialEq, Eq)]
pub struct PgConfig {
    /// The URL, without a password.
    pub url: String,
    pub password: Option<String>,
    /// The database server's CA (PEM), for TLS.
    pub ca: Option<PathBuf>,
}

impl std::fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConfig")
            .field("url", &self.url)
            .field("password", &self.password.as_ref().map(|_| "…"))
            .field("ca", &self.ca)
            .finish()
    }
}

/// A store setting that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "unknown store (scheme {0:?}): `sqlite` (the data directory's file) or a postgres:// \
         URL expected"
    )]
    Unknown(String),
    #[error("invalid PostgreSQL URL")]
    Url(#[source] tokio_postgres::Error),
    #[error(
        "the store URL carries a password: anyone can read a command line with ps; give the \
         password in {PASSWORD_ENV} or in a file named by --store-password-file"
    )]
    PasswordInUrl,
    #[error(
        "the database at {host} is reached over the network without TLS: add sslmode=require \
         to the URL and give the database's CA with --store-ca"
    )]
    Plaintext { host: String },
    #[error("sslmode=require needs the database's CA certificate (--store-ca FILE)")]
    NoCa,
    #[error("{0} can be read by other users: make it readable by its owner only (chmod 600)")]
    OpenPasswordFile(PathBuf),
    #[error("{0} is empty")]
    EmptyPassword(PathBuf),
    #[error("{path} cannot be a password: {why}")]
    BadPassword { path: PathBuf, why: &'static str },
    #[error("{what} is only for a PostgreSQL store (--store postgres://…)")]
    NotPostgres { what: &'static str },
    #[error(transparent)]
    File(#[from] FileError),
}

impl StoreConfig {
    /// Reads a store setting: `sqlite`, or a `postgres://` URL with its password from
    /// `password_file` or, failing that, `env_password` ([`PASSWORD_ENV`]'s value), and its
    /// CA from `ca`.
    pub fn parse(
        spec: &str,
        password_file: Option<&Path>,
        env_password: Option<String>,
        ca: Option<&Path>,
    ) -> Result<StoreConfig, ConfigError> {
        let spec = spec.trim();
        if spec.is_empty() || spec == "sqlite" {
            if password_file.is_some() {
                return Err(ConfigError::NotPostgres {
                    what: "--store-password-file",
                });
            }
            if ca.is_some() {
                return Err(ConfigError::NotPostgres { what: "--store-ca" });
            }
            return Ok(StoreConfig::Sqlite);
        }
        if !(spec.starts_with("postgres://") || spec.starts_with("postgresql://")) {
            // Only the scheme: the rest of a mistyped URL may hold a password.
            let scheme = spec.split_once(':').map_or("", |(scheme, _)| scheme);
            return Err(ConfigError::Unknown(scheme.chars().take(20).collect()));
        }
        let config: tokio_postgres::Config = spec.parse().map_err(ConfigError::Url)?;
        if config.get_password().is_some() {
            return Err(ConfigError::PasswordInUrl);
        }
        // A `hostaddr` is where the connection really goes (the host name then only
        // names the server for TLS).
        let remote = config
            .get_hostaddrs()
            .iter()
            .find(|ip| !ip.is_loopback())
            .map(IpAddr::to_string)
            .or_else(|| {
                config.get_hosts().iter().find_map(|h| match h {
                    Host::Tcp(name) if !is_loopback(name) => Some(name.clone()),
                    _ => None,
                })
            });
        let tls = config.get_ssl_mode() == SslMode::Require;
        if let Some(host) = remote
            && !tls
        {
            return Err(ConfigError::Plaintext { host });
        }
        if tls && ca.is_none() {
            return Err(ConfigError::NoCa);
        }
        let password = match password_file {
            Some(path) => Some(read_password(path)?),
            None => env_password.filter(|p| !p.is_empty()),
        };
        Ok(StoreConfig::Postgres(PgConfig {
            url: spec.to_owned(),
            password,
            ca: ca.map(Path::to_owned),
        }))
    }

    /// Opens the store (`db` is the data directory's SQLite file, used by
    /// [`StoreConfig::Sqlite`]), bringing its schema up to date.
    pub fn open(&self, db: &Path) -> Result<Arc<dyn Store>, StoreError> {
        match self {
            StoreConfig::Sqlite => Ok(Arc::new(SqliteStore::open(db)?)),
            StoreConfig::Postgres(pg) => Ok(Arc::new(PgStore::connect(&pg.options()?)?)),
        }
    }

    /// Where the store is, for messages (no password).
    pub fn describe(&self, db: &Path) -> String {
        match self {
            StoreConfig::Sqlite => db.display().to_string(),
            StoreConfig::Postgres(pg) => pg.url.clone(),
        }
    }
}

impl PgConfig {
    fn options(&self) -> Result<PgOptions, StoreError> {
        let mut opts = PgOptions::new(self.url.clone());
        opts.password = self.password.clone();
        if let Some(ca) = &self.ca {
            let roots =
                rjs_wire::tls::load_certs(ca).map_err(|e| StoreError::Backend(Box::new(e)))?;
            let mut store = rustls::RootCertStore::empty();
            for c in roots {
                store.add(c).map_err(|e| StoreError::Backend(Box::new(e)))?;
            }
            opts.tls = Some(Arc::new(
                rustls::ClientConfig::builder()
                    .with_root_certificates(store)
                    .with_no_client_auth(),
            ));
        }
        Ok(opts)
    }
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A password file: readable by its owner only, one line (trailing newline dropped).
fn read_password(path: &Path) -> Result<String, ConfigError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).map_err(|e| FileError::io("reading", path, e))?;
        if meta.mode() & 0o077 != 0 {
            return Err(ConfigError::OpenPasswordFile(path.to_owned()));
        }
    }
    let bytes = fsutil::read_bounded(path, MAX_PASSWORD_FILE)?;
    let text = String::from_utf8(bytes).map_err(|_| ConfigError::BadPassword {
        path: path.to_owned(),
        why: "it is not UTF-8 text",
    })?;
    let password = text.trim_end_matches(['\n', '\r']).to_owned();
    if password.contains(['\0', '\n', '\r']) {
        return Err(ConfigError::BadPassword {
            path: path.to_owned(),
            why: "it holds more than one line, or a NUL byte",
        });
    }
    if password.is_empty() {
        return Err(ConfigError::EmptyPassword(path.to_owned()));
    }
    Ok(password)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(spec: &str) -> Result<StoreConfig, ConfigError> {
        StoreConfig::parse(spec, None, None, None)
    }

    #[test]
    fn sqlite_is_the_default() {
        assert_eq!(parse("").unwrap(), StoreConfig::Sqlite);
        assert_eq!(parse("sqlite").unwrap(), StoreConfig::Sqlite);
        assert!(matches!(parse("mysql://x"), Err(ConfigError::Unknown(_))));
        assert!(matches!(
            StoreConfig::parse("sqlite", None, None, Some(Path::new("ca.pem"))),
            Err(ConfigError::NotPostgres { .. })
        ));
    }

    #[test]
    fn urls_carry_no_password_and_remote_ones_need_tls_and_a_ca() {
        assert!(matches!(
            parse("postgres://rjs:secret@127.0.0.1/rjs"),
            Err(ConfigError::PasswordInUrl)
        ));
        assert!(matches!(
            parse("postgres://rjs@db.example/rjs"),
            Err(ConfigError::Plaintext { .. })
        ));
        assert!(matches!(
            parse("postgres://rjs@db.example/rjs?sslmode=require"),
            Err(ConfigError::NoCa)
        ));
        let ok = StoreConfig::parse(
            "postgres://rjs@db.example/rjs?sslmode=require",
            None,
            Some("pw".into()),
            Some(Path::new("ca.pem")),
        )
        .unwrap();
        let StoreConfig::Postgres(pg) = ok else {
            panic!("postgres expected")
        };
        assert_eq!(pg.password.as_deref(), Some("pw"));
        assert!(!format!("{pg:?}").contains("pw\""), "{pg:?}");
        // Loopback and a Unix socket may go without TLS.
        parse("postgres://rjs@127.0.0.1:5432/rjs").unwrap();
        parse("postgres://rjs@localhost/rjs?host=/run/postgresql").unwrap();
        // The address connected to is hostaddr's when one is given, whatever the host name.
        assert!(matches!(
            parse("postgres://rjs@localhost/rjs?hostaddr=10.0.0.5&sslmode=disable"),
            Err(ConfigError::Plaintext { host }) if host == "10.0.0.5"
        ));
        parse("postgres://rjs@db.example/rjs?hostaddr=127.0.0.1").unwrap_err();
        parse("postgres://rjs@localhost/rjs?hostaddr=127.0.0.1").unwrap();
    }

    #[test]
    fn a_mistyped_url_is_not_echoed_past_its_scheme() {
        let e = parse("postgress://rjs:hunter2@db/rjs").unwrap_err();
        let shown = rjs_cmd::chain(&e);
        assert!(shown.contains("\"postgress\""), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn a_password_file_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let url = "postgres://rjs@127.0.0.1/rjs";
        assert!(matches!(
            StoreConfig::parse(url, Some(&file), None, None),
            Err(ConfigError::OpenPasswordFile(_))
        ));
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let StoreConfig::Postgres(pg) =
            StoreConfig::parse(url, Some(&file), Some("env".into()), None).unwrap()
        else {
            panic!("postgres expected")
        };
        assert_eq!(pg.password.as_deref(), Some("s3cret"), "the file wins");
        // Not text, or two lines: refused, the content not shown.
        for bad in [&b"s3cret\xff\n"[..], b"s3cret\nmore\n", b"s3\0cret"] {
            std::fs::write(&file, bad).unwrap();
            let e = StoreConfig::parse(url, Some(&file), None, None).unwrap_err();
            assert!(matches!(e, ConfigError::BadPassword { .. }), "{e:?}");
            assert!(!e.to_string().contains("cret"), "{e}");
        }
    }
}
