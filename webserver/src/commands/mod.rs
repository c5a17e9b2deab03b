//! The command line: one module per subcommand, each a clap `Args`/`Subcommand` type with a
//! `run` that calls the library and prints what it did.

mod author;
mod dashboard_link;
mod init;
mod lookup;
mod serve;

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use rjs_webserver::admin::Site;
use rjs_webserver::store::config::StoreConfig;
use rjs_webserver::store::{Author, LookupServer};

#[derive(Parser)]
#[command(
    name = "rjs-webserver",
    version,
    about = "RJS web server: bundles, jobs and answers; author accounts; the lookup API over mutual TLS"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// A configuration file: lines of NAME=VALUE naming the environment variables the flags
    /// read (RJS_STORE, RJS_BLOBS, RJS_S3_…, AWS_…), as a systemd EnvironmentFile; readable by
    /// its owner only. Flags and the environment win over it.
    #[arg(long, global = true, value_name = "FILE", env = CONFIG_ENV)]
    config: Option<PathBuf>,
}

/// The environment variable naming the configuration file.
pub const CONFIG_ENV: &str = "RJS_WEBSERVER_CONFIG";

/// `--data DIR` and where the metadata store is, shared by every subcommand.
#[derive(Args)]
struct Data {
    /// The server's data directory (created by `init`).
    #[arg(long, value_name = "DIR", env = "RJS_WEBSERVER_DATA")]
    data: PathBuf,
    /// Where the metadata is: `sqlite` (the data directory's rjs.db) or a PostgreSQL URL,
    /// `postgres://USER@HOST[:PORT]/DB[?sslmode=require]`, shared by several web servers.
    /// No password in it (see --store-password-file and RJS_STORE_PASSWORD).
    #[arg(
        long,
        value_name = "STORE",
        env = "RJS_STORE",
        default_value = "sqlite"
    )]
    store: String,
    /// A file (readable by its owner only) holding the PostgreSQL password.
    #[arg(long, value_name = "FILE", env = "RJS_STORE_PASSWORD_FILE")]
    store_password_file: Option<PathBuf>,
    /// The PostgreSQL server's CA certificate (PEM), for `sslmode=require`.
    #[arg(long, value_name = "FILE", env = "RJS_STORE_CA")]
    store_ca: Option<PathBuf>,
}

impl Data {
    /// The data directory and its store, checked.
    fn site(&self) -> anyhow::Result<Site> {
        let store = StoreConfig::parse(
            &self.store,
            self.store_password_file.as_deref(),
            std::env::var(rjs_webserver::store::config::PASSWORD_ENV).ok(),
            self.store_ca.as_deref(),
        )
        .context("--store")?;
        Ok(Site {
            dir: self.data.clone(),
            store,
        })
    }
}

#[derive(Subcommand)]
enum Command {
    /// Create the data directory: CA, server certificate, database, blob store.
    Init(init::InitCommand),
    /// Manage the authors allowed to upload bundles.
    #[command(subcommand)]
    Author(author::AuthorCommand),
    /// Manage the lookup servers allowed to lease jobs.
    #[command(subcommand)]
    Lookup(lookup::LookupCommand),
    /// Serve the author and lookup APIs over HTTPS until SIGTERM/SIGINT.
    Serve(serve::ServeCommand),
    /// Print a one-time login link to the dashboard (as the administrator).
    DashboardLink(dashboard_link::DashboardLinkCommand),
}

impl Cli {
    /// Runs the subcommand.
    pub fn run(self) -> anyhow::Result<()> {
        match self.command {
            Command::Init(c) => c.run(),
            Command::Author(c) => c.run(),
            Command::Lookup(c) => c.run(),
            Command::Serve(c) => c.run(),
            Command::DashboardLink(c) => c.run(),
        }
    }
}

/// One enrolled author or lookup server as `author list` / `lookup list` show it: name,
/// fingerprint (the key's, or the certificate's SHA-256), state (`active`, `removed`,
/// `revoked`) and enrolment date.
fn roster_line(name: &str, fingerprint: &str, state: &str, created_at: i64) -> String {
    format!(
        "{name:<24} {fingerprint}  {state:<7}  since {}",
        date(created_at)
    )
}

/// An author's roster line: active or removed.
fn author_line(a: &Author) -> String {
    let state = if a.removed { "removed" } else { "active" };
    roster_line(&a.name, &a.fingerprint, state, a.created_at)
}

/// A lookup server's roster line: active or revoked.
fn lookup_line(l: &LookupServer) -> String {
    let state = if l.revoked { "revoked" } else { "active" };
    roster_line(&l.name, &l.cert_sha256, state, l.created_at)
}

/// Prints one line per entry, or `empty` if there are none.
fn print_roster(empty: &str, lines: impl ExactSizeIterator<Item = String>) {
    if lines.len() == 0 {
        println!("{empty}");
    }
    for line in lines {
        println!("{line}");
    }
}

/// `YYYY-MM-DD` (UTC).
fn date(secs: i64) -> String {
    let (y, m, d) = rjs_webserver::pki::civil_from_unix(secs);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(951_782_400), "2000-02-29");
    }

    #[test]
    fn cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn size_flags_take_the_shared_grammar_and_refuse_zero() {
        use clap::Parser as _;
        let serve = |size: &str| {
            Cli::try_parse_from([
                "rjs-webserver",
                "serve",
                "--data",
                "d",
                "--max-bundle",
                size,
            ])
            .map(|cli| match cli.command {
                Command::Serve(s) => s.max_bundle,
                _ => unreachable!(),
            })
        };
        assert_eq!(serve("123").unwrap(), 123);
        assert_eq!(serve("64M").unwrap(), 64 << 20);
        assert_eq!(serve("2KiB").unwrap(), 2048);
        assert_eq!(serve("1g").unwrap(), 1 << 30);
        for bad in ["0", "12X", "", "99999999999999999999G"] {
            assert!(serve(bad).is_err(), "{bad:?}");
        }
    }
}
