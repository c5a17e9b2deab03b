//! Enrolment: the cluster CA, one-time join tokens, the enrolment endpoint and the registry of
//! enrolled (and revoked) nodes. See `docs/lookup-enrolment.md`.
//!
//! Files in the lookup's data directory (mode 0700; every file written atomically):
//!
//! | file | what |
//! | --- | --- |
//! | `cluster-ca.pem`, `cluster-ca-key.pem` (0600) | the cluster CA |
//! | `lookup.pem`, `lookup-key.pem` (0600) | the enrolment/status endpoint's server certificate (chain: leaf, CA) |
//! | `lookup-client.pem`, `lookup-client-key.pem` (0600) | the client certificate the lookup presents to nodes |
//! | `nodes.json` | the [`Registry`] |
//! | `tokens.json` (0600) | SHA-256 of each unexpired token secret, its expiry and whether it was used |
//! | `lock` | serialises read-modify-write of the JSON files across processes (`flock`) |

use std::fs::File;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rcgen::{ExtendedKeyUsagePurpose, SanType};
use rjs_signer::PublicKey;
use rjs_signer::fsutil::{create_private_dir, read_bounded, write_atomic};
use rjs_wire::enrol::{EnrolRequest, EnrolResponse, MAX_HOSTS, SECRET_LEN, Token};
use rjs_wire::gate::{Gate, GateLimits, Throttle};
use rjs_wire::pki::{self, Ca};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

pub const CA_FILE: &str = "cluster-ca.pem";
pub const CA_KEY_FILE: &str = "cluster-ca-key.pem";
pub const SERVER_CERT_FILE: &str = "lookup.pem";
pub const SERVER_KEY_FILE: &str = "lookup-key.pem";
pub const CLIENT_CERT_FILE: &str = "lookup-client.pem";
pub const CLIENT_KEY_FILE: &str = "lookup-client-key.pem";
pub const NODES_FILE: &str = "nodes.json";
pub const TOKENS_FILE: &str = "tokens.json";
const LOCK_FILE: &str = "lock";
/// Common name of the cluster CA.
pub const CA_COMMON_NAME: &str = "RJS cluster CA";
/// Common name of the lookup's server and client certificates.
pub const LOOKUP_COMMON_NAME: &str = "rjs-lookup";
/// Default hosts of the lookup's server certificate.
pub const DEFAULT_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];
/// Longest token lifetime.
pub const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Whole-exchange deadline of one enrolment connection (handshake included).
pub const ENROL_TIMEOUT: Duration = Duration::from_secs(15);
/// Enrolment connections open at once: at most 4 from one source and 64 in all (more are
/// closed at once). Enrolment is rare; a node makes one connection.
pub const ENROL_LIMITS: GateLimits = GateLimits {
    per_source: 4,
    total: 64,
};
/// Largest JSON state file read.
const MAX_STATE: u64 = 16 * 1024 * 1024;

fn now() -> u64 {
    rjs_signer::unix_now()
}

/// Whether `id` is a valid node id (`[A-Za-z0-9._-]{1,64}`, as the compute node requires).
pub fn valid_node_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// `data`'s cluster CA.
pub fn load_ca(data: &Path) -> Result<Ca> {
    let read = |name: &str| -> Result<String> {
        let bytes = read_bounded(&data.join(name), 1024 * 1024)
            .with_context(|| format!("reading {name} (did you run `rjs-lookup init`?)"))?;
        String::from_utf8(bytes).with_context(|| format!("{name} is not text"))
    };
    Ok(Ca {
        cert_pem: read(CA_FILE)?,
        key_pem: read(CA_KEY_FILE)?,
    })
}

/// SHA-256 (hex) of the cluster CA certificate in `data`: what tokens pin.
pub fn ca_fingerprint(data: &Path) -> Result<String> {
    let certs = rjs_wire::tls::load_certs(&data.join(CA_FILE))?;
    Ok(rjs_wire::tls::cert_sha256(&certs[0]))
}

/// `rjs-lookup init`: creates `data` (0700), the cluster CA, the lookup's server certificate
/// for `hosts`, its client certificate and an empty registry. Refuses an initialised
/// directory. Returns the CA fingerprint.
pub fn init(data: &Path, hosts: &[String]) -> Result<String> {
    let sans = pki::host_sans(hosts)?;
    create_private_dir(data)?;
    if data.join(CA_FILE).exists() || data.join(CA_KEY_FILE).exists() {
        bail!("{} already holds a cluster CA", data.display());
    }
    let ca = pki::new_ca(CA_COMMON_NAME)?;
    let server = pki::issue(
        &ca,
        LOOKUP_COMMON_NAME,
        sans,
        vec![ExtendedKeyUsagePurpose::ServerAuth],
    )?;
    let client = pki::issue_lookup_client(&ca, LOOKUP_COMMON_NAME)?;
    let chain = |leaf: &str| format!("{}\n{}", leaf.trim_end(), ca.cert_pem);
    // Keys first: a certificate never exists without its key.
    write_atomic(
        &data.join(SERVER_KEY_FILE),
        server.key_pem.as_bytes(),
        0o600,
    )?;
    write_atomic(
        &data.join(CLIENT_KEY_FILE),
        client.key_pem.as_bytes(),
        0o600,
    )?;
    write_atomic(
        &data.join(SERVER_CERT_FILE),
        chain(&server.cert_pem).as_bytes(),
        0o644,
    )?;
    write_atomic(
        &data.join(CLIENT_CERT_FILE),
        chain(&client.cert_pem).as_bytes(),
        0o644,
    )?;
    write_atomic(
        &data.join(NODES_FILE),
        b"{\"next\":1,\"nodes\":[]}\n",
        0o644,
    )?;
    write_atomic(&data.join(TOKENS_FILE), b"{\"tokens\":[]}\n", 0o600)?;
    // The CA last: its presence means "initialised".
    write_atomic(&data.join(CA_KEY_FILE), ca.key_pem.as_bytes(), 0o600)?;
    write_atomic(&data.join(CA_FILE), ca.cert_pem.as_bytes(), 0o644)?;
    ca_fingerprint(data)
}

/// Runs `f` holding the data directory's exclusive lock (across processes).
fn locked<T>(data: &Path, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(data.join(LOCK_FILE))
        .with_context(|| format!("opening the lock in {}", data.display()))?;
    file.lock().context("locking the data directory")?;
    let out = f();
    let _ = file.unlock();
    out
}

fn load_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let bytes = read_bounded(path, MAX_STATE)?;
    serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
}

fn save_json<T: Serialize>(path: &Path, value: &T, mode: u32) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value)?;
    bytes.push(b'\n');
    write_atomic(path, &bytes, mode)?;
    Ok(())
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Tokens {
    tokens: Vec<StoredToken>,
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredToken {
    /// SHA-256 (hex) of the secret.
    hash: String,
    /// Unix time after which it no longer works.
    expires: u64,
    used: bool,
}

fn secret_hash(secret: &[u8]) -> String {
    rjs_wire::tls::cert_sha256(secret)
}

/// Equality whose time does not depend on where the inputs differ.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `rjs-lookup token`: a new one-time token for the enrolment endpoint at `addr`, valid for
/// `ttl`. Only the secret's hash is stored.
pub fn new_token(data: &Path, addr: &str, ttl: Duration) -> Result<Token> {
    if ttl.is_zero() || ttl > MAX_TTL {
        bail!("the token lifetime must be between 1 s and 7 days");
    }
    let ca_sha256 = ca_fingerprint(data)?;
    let secret: [u8; SECRET_LEN] = rand::random();
    let token = Token {
        addr: addr.to_owned(),
        ca_sha256,
        secret,
    };
    // The token must parse as the node will parse it.
    Token::parse(&token.encode())?;
    locked(data, || {
        let path = data.join(TOKENS_FILE);
        let mut tokens: Tokens = load_json(&path)?;
        let t = now();
        tokens.tokens.retain(|s| s.expires >= t);
        tokens.tokens.push(StoredToken {
            hash: secret_hash(&secret),
            expires: t + ttl.as_secs().max(1),
            used: false,
        });
        save_json(&path, &tokens, 0o600)
    })?;
    Ok(token)
}

/// Consumes the token with this secret: Ok if it existed, was unused and unexpired (it is
/// then marked used on disk before returning).
fn consume_token(data: &Path, secret: &[u8]) -> Result<std::result::Result<(), &'static str>> {
    let path = data.join(TOKENS_FILE);
    let mut tokens: Tokens = load_json(&path)?;
    let hash = secret_hash(secret);
    let t = now();
    let mut found = None;
    for (i, s) in tokens.tokens.iter().enumerate() {
        if ct_eq(s.hash.as_bytes(), hash.as_bytes()) {
            found = Some(i);
        }
    }
    let Some(i) = found else {
        return Ok(Err("unknown token"));
    };
    let s = &mut tokens.tokens[i];
    if s.used {
        return Ok(Err("token already used"));
    }
    if s.expires < t {
        return Ok(Err("token expired"));
    }
    s.used = true;
    save_json(&path, &tokens, 0o600)?;
    Ok(Ok(()))
}

/// The registry of enrolled nodes (`nodes.json`).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Registry {
    /// Next number for an assigned `node-<n>` id.
    pub next: u64,
    pub nodes: Vec<NodeRecord>,
}

/// One enrolled node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: String,
    /// ed25519 public key, base64: signs its announcements and answers.
    pub node_key: String,
    /// SHA-256 (hex) of the node certificate issued.
    pub cert_sha256: String,
    pub hosts: Vec<String>,
    pub enrolled_at: u64,
    /// Set by `rjs-lookup nodes remove`.
    #[serde(default)]
    pub revoked_at: Option<u64>,
}

impl Registry {
    /// Reads `<data>/nodes.json`.
    pub fn load(data: &Path) -> Result<Registry> {
        load_json(&data.join(NODES_FILE))
    }

    fn save(&self, data: &Path) -> Result<()> {
        save_json(&data.join(NODES_FILE), self, 0o644)
    }

    pub fn get(&self, node_id: &str) -> Option<&NodeRecord> {
        self.nodes.iter().find(|n| n.id == node_id)
    }

    /// Whether `node_id` is enrolled with exactly this ed25519 key and not revoked: what
    /// discovery and dispatch require of a node.
    pub fn is_active(&self, node_id: &str, key: &PublicKey) -> bool {
        self.get(node_id).is_some_and(|n| {
            n.revoked_at.is_none()
                && PublicKey::parse(&n.node_key).is_ok_and(|(k, _)| k.as_bytes() == key.as_bytes())
        })
    }

    /// Whether a certificate (SHA-256 hex) is one issued to an active node.
    pub fn is_active_cert(&self, cert_sha256: &str) -> bool {
        self.nodes
            .iter()
            .any(|n| n.revoked_at.is_none() && n.cert_sha256 == cert_sha256)
    }
}

/// `rjs-lookup nodes remove`: marks `node_id` revoked. Returns false if it already was.
pub fn revoke(data: &Path, node_id: &str) -> Result<bool> {
    locked(data, || {
        let mut reg = Registry::load(data)?;
        let Some(n) = reg.nodes.iter_mut().find(|n| n.id == node_id) else {
            bail!("no node {node_id:?} in {}", data.join(NODES_FILE).display());
        };
        if n.revoked_at.is_some() {
            return Ok(false);
        }
        n.revoked_at = Some(now());
        reg.save(data)?;
        Ok(true)
    })
}

/// Handles one enrolment request (token, id, certificate, registry), under the lock.
pub fn enrol(data: &Path, req: &EnrolRequest) -> Result<EnrolResponse> {
    let refuse = |reason: &str| {
        Ok(EnrolResponse::Refused {
            reason: reason.to_owned(),
        })
    };
    let Ok((node_key, _)) = PublicKey::parse(&req.node_key) else {
        return refuse("bad node key");
    };
    if req.hosts.len() > MAX_HOSTS {
        return refuse("too many hosts");
    }
    let mut sans = match pki::host_sans(&req.hosts) {
        Ok(s) => s,
        Err(e) => return refuse(&e.to_string()),
    };
    if let Some(id) = &req.node_id
        && !valid_node_id(id)
    {
        return refuse("invalid node id: use 1-64 characters of A-Z a-z 0-9 . _ -");
    }
    let ca = load_ca(data)?;
    locked(data, || {
        if let Err(reason) = consume_token(data, &req.secret)? {
            return refuse(reason);
        }
        let mut reg = Registry::load(data)?;
        let id = match &req.node_id {
            Some(id) if reg.get(id).is_some() => return refuse("node id already taken"),
            Some(id) => id.clone(),
            None => loop {
                let id = format!("node-{}", reg.next.max(1));
                reg.next = reg.next.max(1) + 1;
                if reg.get(&id).is_none() {
                    break id;
                }
            },
        };
        sans.push(SanType::URI(
            format!("urn:rjs:node:{id}").as_str().try_into()?,
        ));
        let issued = match pki::issue_for_csr(
            &ca,
            &req.csr_pem,
            &id,
            sans,
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        ) {
            Ok(i) => i,
            Err(e) => return refuse(&format!("certificate request: {}", rjs_cmd::chain(&e))),
        };
        reg.nodes.push(NodeRecord {
            id: id.clone(),
            node_key: node_key.to_base64(),
            cert_sha256: issued.sha256(),
            hosts: req.hosts.clone(),
            enrolled_at: now(),
            revoked_at: None,
        });
        reg.save(data)?;
        tracing::info!(node = %id, "enrolled");
        Ok(EnrolResponse::Enrolled {
            node_id: id,
            cert_pem: issued.cert_pem,
            ca_pem: ca.cert_pem.clone(),
        })
    })
}

/// The enrolment endpoint's TLS configuration (server certificate chain from `data`; no
/// client certificates: the token's secret is the credential).
pub fn enrolment_tls(data: &Path) -> Result<Arc<rustls::ServerConfig>> {
    let chain = rjs_wire::tls::load_certs(&data.join(SERVER_CERT_FILE))?;
    let key = rjs_wire::tls::load_key(&data.join(SERVER_KEY_FILE))?;
    Ok(Arc::new(rjs_wire::tls::server_config(
        chain,
        key,
        rjs_wire::tls::ClientAuth::None,
    )?))
}

/// The mutual-TLS client configuration the lookup dials its nodes with: the cluster CA the
/// only root, the lookup's client certificate (without the CA) and key from `data`.
pub fn node_client_tls(data: &Path) -> Result<Arc<rustls::ClientConfig>> {
    let ca = rjs_wire::tls::load_certs(&data.join(CA_FILE))?;
    let chain = rjs_wire::tls::load_certs(&data.join(CLIENT_CERT_FILE))?;
    let key = rjs_wire::tls::load_key(&data.join(CLIENT_KEY_FILE))?;
    let leaf: Vec<_> = chain.into_iter().filter(|c| !ca.contains(c)).collect();
    let tls = rjs_wire::tls::client_config(&ca, Some((leaf, key)))
        .context("building the TLS client configuration for nodes")?;
    Ok(Arc::new(tls))
}

/// Serves enrolment requests on `listener` until `shutdown` completes: TLS, one framed JSON
/// [`EnrolRequest`] in, one [`EnrolResponse`] out, each connection bounded by
/// [`ENROL_TIMEOUT`]. Requests are handled one at a time.
pub async fn serve_enrolment(
    data: PathBuf,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(enrolment_tls(&data)?);
    let data = Arc::new(data);
    let one_at_a_time = Arc::new(Mutex::new(()));
    // A whole enrolment is unauthenticated until the token is checked: every connection
    // holds a place in the gate until it ends (at most ENROL_TIMEOUT).
    let gate = Gate::new(ENROL_LIMITS);
    let failures = Arc::new(Throttle::default());
    tokio::pin!(shutdown);
    while let Some((tcp, peer)) =
        rjs_wire::shutdown::accept_or_stop(&listener, shutdown.as_mut()).await
    {
        let Some(pass) = gate.admit(peer, "enrolment connections") else {
            continue;
        };
        let (acceptor, data, one) = (acceptor.clone(), data.clone(), one_at_a_time.clone());
        let failures = failures.clone();
        tokio::spawn(async move {
            let _pass = pass;
            let work = async {
                let mut tls = acceptor.accept(tcp).await?;
                let req: EnrolRequest =
                    rjs_wire::node::read_msg(&mut tls, rjs_wire::node::CONTROL_TIMEOUT).await?;
                let resp = tokio::task::spawn_blocking(move || {
                    let _g = one.lock().unwrap_or_else(|e| e.into_inner());
                    enrol(&data, &req)
                })
                .await??;
                if let EnrolResponse::Refused { reason } = &resp
                    && let Some(n) = failures.hit()
                {
                    tracing::warn!(%peer, failures = n, "enrolment refused: {reason}");
                }
                rjs_wire::node::write_msg(&mut tls, &resp, rjs_wire::node::CONTROL_TIMEOUT).await?;
                use tokio::io::AsyncWriteExt;
                let _ = tls.shutdown().await;
                anyhow::Ok(())
            };
            let failed = match tokio::time::timeout(ENROL_TIMEOUT, work).await {
                Ok(Ok(())) => return,
                Ok(Err(e)) => format!("{}", rjs_cmd::report::Chain(e.as_ref())),
                Err(_) => "timed out".to_owned(),
            };
            if let Some(n) = failures.hit() {
                tracing::warn!(%peer, failures = n, error = %failed, "enrolment connection");
            }
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ct_eq_and_ids() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
        assert!(valid_node_id("pc-7.lab_1"));
        assert!(!valid_node_id("bad id"));
        assert!(!valid_node_id(""));
    }
}
