//! The enrolment registry as the running service sees it: re-read when enrolment or
//! `rjs-lookup nodes remove` changes it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use anyhow::{Context, Result};
use rjs_signer::keys::PublicKey;

use crate::discovery::{KeyDirectory, NodeView};
use crate::enrol::{self, Registry};

/// The enrolment registry, re-read whenever `nodes.json` changes (a node enrolled by the
/// running endpoint, or revoked by `rjs-lookup nodes remove` from another process).
pub struct LiveRegistry {
    path: PathBuf,
    data: PathBuf,
    cached: Mutex<(Option<SystemTime>, Registry)>,
}

impl LiveRegistry {
    pub fn open(data: &Path) -> Result<Arc<Self>> {
        let me = LiveRegistry {
            path: data.join(enrol::NODES_FILE),
            data: data.to_owned(),
            cached: Mutex::new((None, Registry::default())),
        };
        me.with(|_| ())?;
        Ok(Arc::new(me))
    }

    fn with<T>(&self, f: impl FnOnce(&Registry) -> T) -> Result<T> {
        let mtime = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .with_context(|| format!("reading {}", self.path.display()))?;
        let mut c = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if c.0 != Some(mtime) {
            c.1 = Registry::load(&self.data)?;
            c.0 = Some(mtime);
        }
        Ok(f(&c.1))
    }

    /// Keeps the nodes enrolled and not revoked (none if the registry cannot be read), with
    /// one look at the registry for them all.
    pub fn retain_active(&self, nodes: &mut Vec<NodeView>) {
        let read = self.with(|r| {
            nodes.retain(|n| {
                r.get(n.node_id.as_str())
                    .is_some_and(|e| e.revoked_at.is_none())
            })
        });
        if read.is_err() {
            nodes.clear();
        }
    }

    /// Whether `cert_sha256` is node `node_id`'s enrolled, unrevoked certificate.
    pub fn is_node_cert(&self, node_id: &str, cert_sha256: &str) -> bool {
        self.with(|r| {
            r.get(node_id)
                .is_some_and(|n| n.revoked_at.is_none() && n.cert_sha256 == cert_sha256)
        })
        .unwrap_or(false)
    }
}

impl KeyDirectory for LiveRegistry {
    fn key_of(&self, node_id: &str) -> Option<PublicKey> {
        self.with(|r| {
            let n = r.get(node_id)?;
            if n.revoked_at.is_some() {
                return None;
            }
            PublicKey::parse(&n.node_key).ok().map(|(k, _)| k)
        })
        .ok()
        .flatten()
    }
}
