//! Administration commands behind `rjs-webserver init | author … | lookup …`. Each returns
//! what it did; the binary prints it. Nothing here prints or returns a secret.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rjs_signer::fsutil::{self, FileError};
use rjs_signer::keys::{self, KeyError, PublicKey};

use crate::datadir::DataDir;
use crate::pki::{self, PkiError};
use crate::store::blobs::{BlobError, BlobStore};
use crate::store::config::StoreConfig;
use crate::store::{Author, LookupServer, Store, StoreError, now};

/// What the administration commands act on: a data directory (CA, certificates, and with the
/// default store its database) and where the metadata store is.
#[derive(Debug, Clone)]
pub struct Site {
    pub dir: PathBuf,
    pub store: StoreConfig,
}

impl Site {
    /// A data directory with its own SQLite store.
    pub fn local(dir: impl AsRef<Path>) -> Site {
        Site {
            dir: dir.as_ref().to_owned(),
            store: StoreConfig::Sqlite,
        }
    }
}

/// Hosts the server certificate names when `init` is given none.
pub const DEFAULT_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];
/// Largest PEM file read back from the data directory.
const MAX_PEM: u64 = 1024 * 1024;

/// Administration failures.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0} already holds a web server CA; refusing to overwrite it")]
    AlreadyInitialized(PathBuf),
    #[error(
        "{dir} is not an initialized web server data directory (no {file}); run `rjs-webserver init --data {dir}` first"
    )]
    NotInitialized { dir: String, file: String },
    #[error(
        "invalid name {0:?}: 1 to 64 characters of A-Z a-z 0-9 . _ @ -, starting with a letter or digit"
    )]
    BadName(String),
    #[error("{0} already exists; refusing to overwrite it")]
    OutputExists(PathBuf),
    #[error("reading the author's public key")]
    Key(#[source] KeyError),
    #[error("opening the database {path}")]
    OpenDb {
        path: String,
        #[source]
        source: StoreError,
    },
    #[error("opening the blob store {path}")]
    OpenBlobs {
        path: PathBuf,
        #[source]
        source: BlobError,
    },
    #[error("{what}")]
    Store {
        what: String,
        #[source]
        source: StoreError,
    },
    #[error("{what}")]
    Pki {
        what: &'static str,
        #[source]
        source: PkiError,
    },
    #[error(transparent)]
    File(#[from] FileError),
}

/// Author and lookup names: the same rule as key names.
pub fn check_name(name: &str) -> Result<(), AdminError> {
    keys::validate_key_name(name).map_err(|_| AdminError::BadName(name.to_owned()))
}

/// What `init` created.
#[derive(Debug, Clone)]
pub struct InitReport {
    pub dir: PathBuf,
    /// The CA certificate to hand to authors and lookup admins.
    pub ca_cert: PathBuf,
    /// SHA-256 of the CA certificate (DER), for checking a copy by eye.
    pub ca_sha256: String,
    pub hosts: Vec<String>,
}

/// `init`: creates the data directory, the CA, the server certificate for `hosts` (the
/// defaults if empty), the database and the blob store. Refuses a directory that already has
/// a CA.
pub fn init(site: &Site, hosts: &[String]) -> Result<InitReport, AdminError> {
    let dir = site.dir.as_path();
    let hosts: Vec<String> = if hosts.is_empty() {
        DEFAULT_HOSTS.iter().map(|h| (*h).to_owned()).collect()
    } else {
        hosts.to_vec()
    };
    for h in &hosts {
        pki::check_host(h).map_err(pki_err("checking the host names"))?;
    }
    let data = DataDir::new(dir);
    for existing in [data.ca_key(), data.ca_cert()] {
        if existing.exists() {
            return Err(AdminError::AlreadyInitialized(dir.to_owned()));
        }
    }
    let created = !dir.exists();
    fsutil::create_private_dir(dir)?;
    #[cfg(unix)]
    if !created {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| FileError::io("setting permissions of", dir, e))?;
    }
    #[cfg(not(unix))]
    let _ = created;

    let ca = pki::new_ca().map_err(pki_err("creating the CA"))?;
    let server =
        pki::issue_server(&ca, &hosts).map_err(pki_err("issuing the server certificate"))?;
    // Keys first: a certificate without its key is useless, a key alone is harmless.
    fsutil::write_atomic(&data.ca_key(), ca.key_pem.as_bytes(), 0o600)?;
    fsutil::write_atomic(&data.server_key(), server.key_pem.as_bytes(), 0o600)?;
    fsutil::write_atomic(&data.server_cert(), server.cert_pem.as_bytes(), 0o644)?;
    fsutil::write_atomic(&data.ca_cert(), ca.cert_pem.as_bytes(), 0o644)?;

    open_store(&data, &site.store)?;
    let blobs = BlobStore::open(&data.blobs()).map_err(|source| AdminError::OpenBlobs {
        path: data.blobs(),
        source,
    })?;
    drop(blobs);

    let ca_der =
        rjs_wire::tls::certs_from_pem(ca.cert_pem.as_bytes(), "CA certificate").map_err(|e| {
            AdminError::Pki {
                what: "reading back the CA certificate",
                source: e.into(),
            }
        })?;
    Ok(InitReport {
        dir: dir.to_owned(),
        ca_cert: data.ca_cert(),
        ca_sha256: ca_der
            .first()
            .map(|c| rjs_wire::tls::cert_sha256(c))
            .unwrap_or_default(),
        hosts,
    })
}

/// The data directory of an initialized server (its CA certificate exists, and its database
/// when the store is the data directory's).
pub fn existing(site: &Site) -> Result<DataDir, AdminError> {
    let dir = site.dir.as_path();
    let data = DataDir::new(dir);
    let mut needed = vec![data.ca_cert()];
    if site.store == StoreConfig::Sqlite {
        needed.push(data.db());
    }
    for f in needed {
        if !f.is_file() {
            return Err(AdminError::NotInitialized {
                dir: dir.display().to_string(),
                file: f
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            });
        }
    }
    Ok(data)
}

/// Opens the metadata store of a data directory (its SQLite file, or the shared database).
pub fn open_store(data: &DataDir, store: &StoreConfig) -> Result<Arc<dyn Store>, AdminError> {
    store.open(&data.db()).map_err(|source| AdminError::OpenDb {
        path: store.describe(&data.db()),
        source,
    })
}

fn store_of(site: &Site) -> Result<Arc<dyn Store>, AdminError> {
    open_store(&existing(site)?, &site.store)
}

fn store_err(what: impl Into<String>) -> impl FnOnce(StoreError) -> AdminError {
    let what = what.into();
    move |source| AdminError::Store { what, source }
}

/// One call on the store of the data directory `dir`; its failure is reported as `what`.
fn with_store<T>(
    site: &Site,
    what: impl Into<String>,
    call: impl FnOnce(&dyn Store) -> Result<T, StoreError>,
) -> Result<T, AdminError> {
    call(&*store_of(site)?).map_err(store_err(what))
}

fn pki_err(what: &'static str) -> impl FnOnce(PkiError) -> AdminError {
    move |source| AdminError::Pki { what, source }
}

/// `author add NAME --key KEY`: enrolls an author. `key` is a public key file, a
/// `rjs-ed25519 …` line or a bare base64 key.
pub fn author_add(site: &Site, name: &str, key: &str) -> Result<Author, AdminError> {
    check_name(name)?;
    let (key, _) = PublicKey::load_or_parse(key).map_err(AdminError::Key)?;
    with_store(site, format!("adding author {name:?}"), |s| {
        s.add_author(
            name,
            &key.to_base64(),
            &key.fingerprint().to_string(),
            now(),
        )
    })
}

/// `author list`: every author, removed ones included (flagged).
pub fn author_list(site: &Site) -> Result<Vec<Author>, AdminError> {
    with_store(site, "listing authors", |s| s.list_authors())
}

/// `author remove NAME`: the author can no longer authenticate (their jobs stay).
pub fn author_remove(site: &Site, name: &str) -> Result<(), AdminError> {
    with_store(site, format!("removing author {name:?}"), |s| {
        s.remove_author(name)
    })
}

/// `dashboard-link --admin`: a one-time administrator login for the dashboard, valid
/// [`LOGIN_TOKEN_TTL`](crate::server::author::LOGIN_TOKEN_TTL) seconds; returns its path
/// (`/dashboard/login?token=…`). Only the token's hash is stored.
pub fn admin_login(site: &Site) -> Result<String, AdminError> {
    let token = crate::dashboard::secret::Secret::new();
    let hash = token.hash();
    let now = crate::store::now();
    with_store(site, "recording an administrator login".to_owned(), |s| {
        crate::store::Sessions::add_login_token(
            s,
            &hash,
            None,
            now + crate::server::author::LOGIN_TOKEN_TTL,
            now,
        )
    })?;
    Ok(crate::dashboard::login_path(&token))
}

/// What `lookup add` did.
#[derive(Debug, Clone)]
pub struct LookupAdded {
    pub lookup: LookupServer,
    /// The credentials file written (0600).
    pub creds: PathBuf,
}

fn load_ca(data: &DataDir) -> Result<pki::Ca, AdminError> {
    let read = |p: &Path| -> Result<String, AdminError> {
        let bytes = fsutil::read_bounded(p, MAX_PEM)?;
        String::from_utf8(bytes).map_err(|_| AdminError::Pki {
            what: "reading the CA",
            source: PkiError::Creds(format!("{} is not text", p.display())),
        })
    };
    Ok(pki::Ca {
        cert_pem: read(&data.ca_cert())?,
        key_pem: read(&data.ca_key())?,
    })
}

/// `lookup add NAME -o FILE`: issues a client certificate to a lookup server, writes the
/// credentials file (see [`crate::pki`] for its format) and records the certificate's SHA-256.
pub fn lookup_add(site: &Site, name: &str, out: &Path) -> Result<LookupAdded, AdminError> {
    check_name(name)?;
    let data = existing(site)?;
    let store = open_store(&data, &site.store)?;
    let taken = store
        .list_lookups()
        .map_err(store_err("listing lookup servers"))?
        .iter()
        .any(|l| l.name == name && !l.revoked);
    if taken {
        return Err(AdminError::Store {
            what: format!("adding lookup server {name:?}"),
            source: StoreError::Exists(format!("lookup server {name:?}")),
        });
    }
    if out.exists() {
        return Err(AdminError::OutputExists(out.to_owned()));
    }
    let ca = load_ca(&data)?;
    let issued = pki::issue_lookup(&ca, name).map_err(pki_err("issuing the lookup certificate"))?;
    let text = pki::creds_file(name, &issued, &ca.cert_pem);
    fsutil::write_atomic(out, text.as_bytes(), 0o600)?;
    match store.add_lookup(name, &issued.sha256(), now()) {
        Ok(lookup) => Ok(LookupAdded {
            lookup,
            creds: out.to_owned(),
        }),
        Err(source) => {
            // Not enrolled: the file would be useless.
            let _ = std::fs::remove_file(out);
            Err(AdminError::Store {
                what: format!("adding lookup server {name:?}"),
                source,
            })
        }
    }
}

/// `lookup list`.
pub fn lookup_list(site: &Site) -> Result<Vec<LookupServer>, AdminError> {
    with_store(site, "listing lookup servers", |s| s.list_lookups())
}

/// `lookup revoke NAME`: its certificate is refused from the next request on (no restart).
pub fn lookup_revoke(site: &Site, name: &str) -> Result<(), AdminError> {
    with_store(site, format!("revoking lookup server {name:?}"), |s| {
        s.revoke_lookup(name)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn init_add_revoke() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ws");
        let site = Site::local(&dir);
        let report = init(&site, &[]).unwrap();
        assert_eq!(report.hosts, DEFAULT_HOSTS);
        assert_eq!(report.ca_cert, dir.join("ca.pem"));
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("ca-key.pem")), 0o600);
        assert_eq!(mode(&dir.join("server-key.pem")), 0o600);
        assert!(dir.join("rjs.db").is_file());
        assert!(dir.join("blobs").is_dir());
        // A second init refuses to overwrite the CA.
        let ca_before = std::fs::read(dir.join("ca.pem")).unwrap();
        assert!(matches!(
            init(&site, &[]),
            Err(AdminError::AlreadyInitialized(_))
        ));
        assert_eq!(std::fs::read(dir.join("ca.pem")).unwrap(), ca_before);

        // Authors.
        let key = rjs_signer::KeyPair::from_secret([7; 32]).public();
        let a = author_add(&site, "alice", &key.to_line("alice")).unwrap();
        assert_eq!(a.fingerprint, key.fingerprint().to_string());
        assert!(
            author_add(&site, "alice2", &key.to_base64()).is_err(),
            "same key twice"
        );
        assert!(author_add(&site, "bad name", &key.to_base64()).is_err());
        assert_eq!(author_list(&site).unwrap().len(), 1);
        author_remove(&site, "alice").unwrap();
        assert!(author_list(&site).unwrap()[0].removed);

        // Lookups.
        let out = tmp.path().join("lab.creds");
        let added = lookup_add(&site, "lab", &out).unwrap();
        assert_eq!(mode(&out), 0o600);
        let creds = pki::parse_creds(&std::fs::read(&out).unwrap()).unwrap();
        assert_eq!(
            rjs_wire::tls::cert_sha256(&creds.cert),
            added.lookup.cert_sha256
        );
        assert_eq!(pki::common_name(&creds.cert).as_deref(), Some("lab"));
        assert_eq!(creds.ca.as_ref(), {
            let ca = std::fs::read(dir.join("ca.pem")).unwrap();
            rjs_wire::tls::certs_from_pem(&ca, "ca").unwrap()[0].to_vec()
        });
        // Existing output and duplicate names are refused, leaving the file alone.
        assert!(matches!(
            lookup_add(&site, "lab2", &out),
            Err(AdminError::OutputExists(_))
        ));
        let out2 = tmp.path().join("lab-again.creds");
        assert!(lookup_add(&site, "lab", &out2).is_err());
        assert!(!out2.exists());
        lookup_revoke(&site, "lab").unwrap();
        assert!(lookup_list(&site).unwrap()[0].revoked);
        assert!(lookup_revoke(&site, "lab").is_err());
    }

    #[test]
    fn commands_need_an_initialized_dir() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(matches!(
            author_list(&Site::local(tmp.path())),
            Err(AdminError::NotInitialized { .. })
        ));
    }
}
