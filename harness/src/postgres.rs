//! A throw-away PostgreSQL server for tests and benchmarks: Debian's `postgresql` package,
//! a cluster made by `initdb` in a temporary folder, listening only on a Unix socket in that
//! folder (no TCP unless asked for a loopback port), `fsync=off` (commits still reach the WAL
//! before they return, so a killed server loses nothing committed; only an OS crash could).
//! `initdb` refuses to run as root, so as root the cluster belongs to the `postgres` user and
//! every server command runs through `runuser -u postgres`. Stopped (immediately) and removed
//! on drop.
//!
//! ```no_run
//! let pg = rjs_harness::postgres::Postgres::start().unwrap();
//! let url = pg.url("rjs"); // postgres://postgres@%2Ftmp%2F…/rjs?host=…
//! ```

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The server binaries of Debian's package (`postgresql-<major>`): the newest version found.
pub fn bin_dir() -> Result<PathBuf> {
    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(root)
        .with_context(|| {
            format!(
                "{} not found: install Debian's postgresql package (scripts/test.sh does)",
                root.display()
            )
        })?
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("pg_ctl").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, b)| b)
        .context("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin")
}

/// A running throw-away server.
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// Whether commands run as the `postgres` user (we are root).
    as_postgres: bool,
    /// The loopback TCP port, if it listens on one.
    port: Option<u16>,
    running: bool,
    /// Whether commits are flushed to disk (`fsync`), as in production.
    durable: bool,
    /// The certificate and key files the server offers TLS with, if it does.
    tls: Option<(PathBuf, PathBuf)>,
}

impl Postgres {
    /// A new cluster on its own socket folder, started.
    pub fn start() -> Result<Postgres> {
        Postgres::start_with(None)
    }

    /// [`start`](Self::start), also listening on `127.0.0.1:port`.
    pub fn start_with(port: Option<u16>) -> Result<Postgres> {
        Postgres::start_as(port, false)
    }

    /// [`start`](Self::start) with `fsync` on, as a production server runs (benchmarks).
    pub fn start_durable() -> Result<Postgres> {
        Postgres::start_as(None, true)
    }

    /// A server on `127.0.0.1:port` that also offers TLS with this certificate and key
    /// (PEM), as a remote database would (clients then connect with `sslmode=require`).
    pub fn start_tls(port: u16, cert_pem: &str, key_pem: &str) -> Result<Postgres> {
        let mut pg = Postgres::start_as(Some(port), false)?;
        pg.stop_mode("fast")?;
        let cert = pg.dir.path().join("server.crt");
        let key = pg.dir.path().join("server.key");
        for (path, pem) in [(&cert, cert_pem), (&key, key_pem)] {
            std::fs::write(path, pem).with_context(|| format!("writing {}", path.display()))?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("protecting {}", path.display()))?;
            if pg.as_postgres {
                std::os::unix::fs::chown(path, Some(uid("postgres")?), None)
                    .with_context(|| format!("giving {} to postgres", path.display()))?;
            }
        }
        pg.tls = Some((cert, key));
        pg.start_server()?;
        Ok(pg)
    }

    fn start_as(port: Option<u16>, durable: bool) -> Result<Postgres> {
        let bin = bin_dir()?;
        // SAFETY: geteuid cannot fail.
        let as_postgres = unsafe { libc::geteuid() } == 0;
        let dir = tempfile::Builder::new()
            .prefix("rjs-pg-")
            .tempdir()
            .context("making the cluster's folder")?;
        if as_postgres {
            // The postgres user must reach and own it.
            std::os::unix::fs::chown(dir.path(), Some(uid("postgres")?), None)
                .context("giving the cluster's folder to the postgres user")?;
        }
        let pg = Postgres {
            dir,
            bin,
            as_postgres,
            port,
            running: false,
            durable,
            tls: None,
        };
        let data = pg.data_dir();
        let out = pg.run(
            "initdb",
            &[
                "-D",
                path_str(&data)?,
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-instructions",
            ],
        )?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let mut pg = pg;
        pg.start_server()?;
        Ok(pg)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The folder holding the server's socket (`.s.PGSQL.5432`).
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// A connection URL for database `db` as the `postgres` superuser: over the socket, or
    /// over loopback TCP when the server listens on a port.
    pub fn url(&self, db: &str) -> String {
        match self.port {
            Some(port) => format!("postgres://postgres@127.0.0.1:{port}/{db}"),
            None => format!(
                "postgres://postgres@localhost/{db}?host={}",
                self.socket_dir().display()
            ),
        }
    }

    /// Creates database `name`.
    pub fn create_db(&self, name: &str) -> Result<()> {
        let out = self.run(
            "createdb",
            &["-h", path_str(self.socket_dir())?, "-U", "postgres", name],
        )?;
        if !out.status.success() {
            bail!("createdb {name}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// Runs `sql` in database `db` with `psql` as the superuser (behind the back of whatever
    /// uses the database); its output, unaligned, one row per line.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String> {
        let out = self.run(
            "psql",
            &[
                "-h",
                path_str(self.socket_dir())?,
                "-U",
                "postgres",
                "-d",
                db,
                "-v",
                "ON_ERROR_STOP=1",
                "-Atc",
                sql,
            ],
        )?;
        if !out.status.success() {
            bail!("psql: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Stops the server as a crash would (`pg_ctl stop -m immediate`: no checkpoint, every
    /// connection cut), so that a test sees what its clients do when the database goes away.
    pub fn kill(&mut self) -> Result<()> {
        self.stop_mode("immediate")
    }

    /// Starts it again after [`kill`](Self::kill) (crash recovery replays the WAL).
    pub fn restart(&mut self) -> Result<()> {
        self.start_server()
    }

    fn start_server(&mut self) -> Result<()> {
        let data = self.data_dir();
        let listen = match self.port {
            Some(p) => format!("-c listen_addresses=127.0.0.1 -p {p}"),
            None => "-c listen_addresses=''".to_owned(),
        };
        let fast = if self.durable {
            ""
        } else {
            "-c fsync=off -c full_page_writes=off"
        };
        let tls = match &self.tls {
            Some((cert, key)) => format!(
                "-c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                path_str(cert)?,
                path_str(key)?
            ),
            None => String::new(),
        };
        let opts = format!(
            "-k {} {listen} {fast} {tls} -c max_connections=200",
            path_str(self.socket_dir())?
        );
        let log = self.dir.path().join("server.log");
        let out = self.run(
            "pg_ctl",
            &[
                "-D",
                path_str(&data)?,
                "-l",
                path_str(&log)?,
                "-o",
                &opts,
                "-w",
                "-t",
                "60",
                "start",
            ],
        )?;
        if !out.status.success() {
            bail!(
                "pg_ctl start failed: {}{}",
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        self.running = true;
        // `-w` waits for the server to accept connections; check once more through the socket.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = self.run(
                "pg_isready",
                &["-h", path_str(self.socket_dir())?, "-U", "postgres"],
            )?;
            if out.status.success() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the server did not become ready within 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop_mode(&mut self, mode: &str) -> Result<()> {
        if !self.running {
            return Ok(());
        }
        let data = self.data_dir();
        let out = self.run(
            "pg_ctl",
            &["-D", path_str(&data)?, "-m", mode, "-w", "-t", "30", "stop"],
        )?;
        self.running = false;
        if !out.status.success() {
            bail!(
                "pg_ctl stop failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Runs one of the server's programs, as the `postgres` user when we are root.
    fn run(&self, program: &str, args: &[&str]) -> Result<Output> {
        let exe = self.bin.join(program);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        cmd.args(args)
            .current_dir(self.dir.path())
            .env_remove("PGDATA")
            .env_remove("PGHOST");
        // The socket's name carries the port: the client programs must know it.
        match self.port {
            Some(p) => cmd.env("PGPORT", p.to_string()),
            None => cmd.env_remove("PGPORT"),
        };
        cmd.output()
            .with_context(|| format!("running {}", exe.display()))
    }
}

/// The process's shared server (see [`Postgres::shared`]).
static SHARED: OnceLock<Result<Postgres, String>> = OnceLock::new();

/// Stops the shared server and removes its folder when the process exits (statics are never
/// dropped).
extern "C" fn stop_shared() {
    if let Some(Ok(pg)) = SHARED.get() {
        let data = pg.data_dir();
        if let Ok(data) = path_str(&data) {
            let _ = pg.run(
                "pg_ctl",
                &["-D", data, "-m", "immediate", "-w", "-t", "30", "stop"],
            );
        }
        let _ = std::fs::remove_dir_all(pg.dir.path());
    }
}

impl Postgres {
    /// One server for the whole process (a test binary whose tests each take a database of
    /// their own), started at the first call and stopped when the process exits.
    pub fn shared() -> Result<&'static Postgres> {
        let pg = SHARED.get_or_init(|| {
            let pg = Postgres::start().map_err(|e| format!("{e:#}"))?;
            // SAFETY: registers a plain function with no arguments.
            unsafe { libc::atexit(stop_shared) };
            Ok(pg)
        });
        pg.as_ref().map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// A new empty database on this server, named `<prefix>_<n>` (n counts up in this
    /// process); its name.
    pub fn fresh_db(&self, prefix: &str) -> Result<String> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("{prefix}_{n}");
        self.create_db(&name)?;
        Ok(name)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Err(e) = self.stop_mode("immediate") {
            eprintln!("rjs-harness: stopping PostgreSQL: {e:#}");
        }
    }
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .with_context(|| format!("{} is not UTF-8", p.display()))
}

/// The uid of user `name`.
fn uid(name: &str) -> Result<u32> {
    let out = Command::new("id")
        .args(["-u", name])
        .output()
        .context("running id")?;
    if !out.status.success() {
        bail!("no user {name}: install Debian's postgresql package (it makes the user)");
    }
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .with_context(|| format!("the uid of {name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cluster starts, takes a database, survives a crash and a restart, and leaves nothing.
    #[test]
    fn a_throwaway_cluster_starts_crashes_restarts_and_goes() {
        if bin_dir().is_err() {
            println!("SKIP: no PostgreSQL server installed");
            return;
        }
        let mut pg = Postgres::start().unwrap();
        pg.create_db("rjs").unwrap();
        assert_eq!(pg.psql("rjs", "select 1 + 1").unwrap().trim(), "2");
        pg.kill().unwrap();
        assert!(pg.psql("rjs", "select 1").is_err());
        pg.restart().unwrap();
        assert_eq!(pg.psql("rjs", "select 1").unwrap().trim(), "1");
        let dir = pg.socket_dir().to_owned();
        drop(pg);
        assert!(!dir.exists());
    }
}
