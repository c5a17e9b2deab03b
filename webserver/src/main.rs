//! `rjs-webserver`: thin command line over `rjs_webserver::{admin, server}`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use rjs_webserver::{admin, server};

#[derive(Parser)]
#[command(
    name = "rjs-webserver",
    version,
    about = "RJS web server: bundles, jobs and answers; author accounts; the lookup API over mutual TLS"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct Data {
    /// The server's data directory (created by `init`).
    #[arg(long, value_name = "DIR", env = "RJS_WEBSERVER_DATA")]
    data: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Create the data directory: CA, server certificate, database, blob store.
    Init {
        #[command(flatten)]
        data: Data,
        /// A DNS name or IP address the server certificate is valid for (repeatable;
        /// default: localhost, 127.0.0.1, ::1).
        #[arg(long = "host", value_name = "NAME")]
        hosts: Vec<String>,
    },
    /// Manage the authors allowed to upload bundles.
    #[command(subcommand)]
    Author(AuthorCmd),
    /// Manage the lookup servers allowed to lease jobs.
    #[command(subcommand)]
    Lookup(LookupCmd),
    /// Serve the author and lookup APIs over HTTPS until SIGTERM/SIGINT.
    Serve {
        #[command(flatten)]
        data: Data,
        /// Address to listen on (port 0: any free port; the line `listening on https://ADDR`
        /// says which).
        #[arg(long, value_name = "ADDR", default_value = server::DEFAULT_LISTEN)]
        listen: String,
        /// Largest bundle accepted (bytes; K, M, G suffixes are powers of 1024).
        #[arg(long, value_name = "BYTES", default_value = "64M", value_parser = parse_size)]
        max_bundle: u64,
        /// Largest answer archive accepted (bytes; K, M, G suffixes).
        #[arg(long, value_name = "BYTES", default_value = "64M", value_parser = parse_size)]
        max_answer: u64,
        /// Leases of a job that may end without an answer before it fails.
        #[arg(long, value_name = "N", default_value_t = server::DEFAULT_MAX_ATTEMPTS,
              value_parser = clap::value_parser!(u32).range(1..=1000))]
        max_attempts: u32,
        /// HTTP worker threads (default: one per core).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
        workers: Option<u16>,
    },
}

#[derive(Subcommand)]
enum AuthorCmd {
    /// Enroll an author's public key.
    Add {
        /// The author's name (A-Z a-z 0-9 . _ @ -, at most 64).
        name: String,
        /// The public key: a `.pub` file, a `rjs-ed25519 <base64> [name]` line or base64.
        #[arg(long, value_name = "PUBKEY")]
        key: String,
        #[command(flatten)]
        data: Data,
    },
    /// List authors (removed ones too).
    List {
        #[command(flatten)]
        data: Data,
    },
    /// Remove an author: their key no longer authenticates (their jobs stay).
    Remove {
        name: String,
        #[command(flatten)]
        data: Data,
    },
}

#[derive(Subcommand)]
enum LookupCmd {
    /// Issue a client certificate to a lookup server; write its credentials file (secret).
    Add {
        /// The lookup server's name (the certificate's CN).
        name: String,
        /// Where to write the credentials (client certificate, CA certificate, key; 0600).
        #[arg(short = 'o', long = "output", value_name = "CREDS")]
        output: PathBuf,
        #[command(flatten)]
        data: Data,
    },
    /// List lookup servers (revoked ones too).
    List {
        #[command(flatten)]
        data: Data,
    },
    /// Revoke a lookup server: its certificate is refused from the next request on.
    Revoke {
        name: String,
        #[command(flatten)]
        data: Data,
    },
}

/// `123`, `64K`, `64M`, `1G` (also `KiB`, `MiB`, `GiB`): bytes.
fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 1048576, 512K, 64M, 1G)"))?;
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        _ => return Err(format!("unknown size unit {unit:?} (K, M or G)")),
    };
    match n.checked_mul(mult) {
        Some(0) => Err("the size must be at least 1 byte".into()),
        Some(v) => Ok(v),
        None => Err(format!("{s:?} is too large")),
    }
}

/// `YYYY-MM-DD` (UTC).
fn date(secs: i64) -> String {
    let (y, m, d) = rjs_webserver::pki::civil_from_unix(secs);
    format!("{y:04}-{m:02}-{d:02}")
}

fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    match cli.command {
        Command::Init { data, hosts } => {
            let r = admin::init(&data.data, &hosts)?;
            println!("initialized {}", r.dir.display());
            println!("server certificate for: {}", r.hosts.join(", "));
            println!(
                "give this file to authors and lookup admins (the CA to trust): {}",
                r.ca_cert.display()
            );
            println!("CA certificate SHA-256: {}", r.ca_sha256);
            println!(
                "next: rjs-webserver author add NAME --key KEY.pub --data {0}; \
                 rjs-webserver lookup add NAME -o NAME.creds --data {0}; \
                 rjs-webserver serve --data {0}",
                r.dir.display()
            );
        }
        Command::Author(AuthorCmd::Add { name, key, data }) => {
            let a = admin::author_add(&data.data, &name, &key)?;
            println!("added author {} ({})", a.name, a.fingerprint);
        }
        Command::Author(AuthorCmd::List { data }) => {
            let authors = admin::author_list(&data.data)?;
            if authors.is_empty() {
                println!("no authors");
            }
            for a in authors {
                println!(
                    "{:<24} {}  {:<7}  since {}",
                    a.name,
                    a.fingerprint,
                    if a.removed { "removed" } else { "active" },
                    date(a.created_at)
                );
            }
        }
        Command::Author(AuthorCmd::Remove { name, data }) => {
            admin::author_remove(&data.data, &name)?;
            println!("removed author {name}");
        }
        Command::Lookup(LookupCmd::Add { name, output, data }) => {
            let r = admin::lookup_add(&data.data, &name, &output)?;
            println!(
                "added lookup server {} (certificate SHA-256 {})",
                r.lookup.name, r.lookup.cert_sha256
            );
            println!(
                "credentials (secret, give only to that lookup's admin): {}",
                r.creds.display()
            );
        }
        Command::Lookup(LookupCmd::List { data }) => {
            let lookups = admin::lookup_list(&data.data)?;
            if lookups.is_empty() {
                println!("no lookup servers");
            }
            for l in lookups {
                println!(
                    "{:<24} {}  {:<7}  since {}",
                    l.name,
                    l.cert_sha256,
                    if l.revoked { "revoked" } else { "active" },
                    date(l.created_at)
                );
            }
        }
        Command::Lookup(LookupCmd::Revoke { name, data }) => {
            admin::lookup_revoke(&data.data, &name)?;
            println!("revoked lookup server {name}");
        }
        Command::Serve {
            data,
            listen,
            max_bundle,
            max_answer,
            max_attempts,
            workers,
        } => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
                )
                .with_writer(std::io::stderr)
                .init();
            let mut config = server::ServeConfig::new(data.data);
            config.listen = listen;
            config.max_bundle = max_bundle;
            config.max_answer = max_answer;
            config.max_attempts = max_attempts;
            config.workers = workers.map(usize::from);
            server::run(config)?;
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // Usage errors exit 2, --help and --version 0.
        Err(e) => e.exit(),
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "rjs-webserver: error: {}",
                rjs_signer::error_chain(e.as_ref())
            );
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("123").unwrap(), 123);
        assert_eq!(parse_size("64M").unwrap(), 64 << 20);
        assert_eq!(parse_size("2KiB").unwrap(), 2048);
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert!(parse_size("0").is_err());
        assert!(parse_size("12X").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999999999999G").is_err());
    }

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
}
