//! The node's own identity: an ed25519 key (signs answers and, later, announcements) kept in
//! the data directory with mode 0600, and a node id.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rjs_signer::fsutil::{self, FileError};
use rjs_signer::keys::{self, KeyError, KeyPair};
use rjs_wire::ids::NodeId;

/// File name stem of the node key in the data directory (`node.key`, `node.pub`).
pub const NODE_KEY_NAME: &str = "node";
/// File in the data directory holding the id the lookup assigned at enrolment
/// (`rjs-compute join`); used when no id is given.
pub const NODE_ID_FILE: &str = "node-id";

/// The node's key and id.
#[derive(Debug)]
pub struct NodeIdentity {
    pub id: NodeId,
    /// Shared with the tasks that sign answers and announcements.
    pub key: Arc<KeyPair>,
    pub key_path: PathBuf,
}

/// Why the identity could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("node id {0:?}: use 1-64 characters of A-Z a-z 0-9 . _ -")]
    BadId(String),
    #[error("the node key")]
    Key(#[from] KeyError),
    #[error("the enrolled node id")]
    IdFile(#[from] FileError),
}

/// Whether `id` is a valid node id (`[A-Za-z0-9._-]{1,64}`).
pub use rjs_signer::answer::valid_node_id;

impl NodeIdentity {
    /// Loads `<data>/node.key`, creating it (0600) on first start. The id is `id` if given,
    /// else the one in `<data>/node-id` (written at enrolment), else `node-` and the first 8
    /// hex digits of the key's fingerprint.
    pub fn load_or_create(data_dir: &Path, id: Option<&str>) -> Result<Self, IdentityError> {
        let key_path = data_dir.join(format!("{NODE_KEY_NAME}.key"));
        let key = if key_path.exists() {
            KeyPair::load(&key_path)?
        } else {
            let key = KeyPair::generate();
            keys::write_key_pair(&key, NODE_KEY_NAME, data_dir, false)?;
            key
        };
        let id_file = data_dir.join(NODE_ID_FILE);
        let enrolled = if id_file.exists() {
            let raw = fsutil::read_bounded(&id_file, 1024)?;
            Some(String::from_utf8_lossy(&raw).trim().to_owned())
        } else {
            None
        };
        let id = match id.or(enrolled.as_deref()) {
            Some(id) if valid_node_id(id) => NodeId::from(id),
            Some(id) => return Err(IdentityError::BadId(id.to_owned())),
            None => {
                let fp = key.public().fingerprint().to_string();
                NodeId::new(format!(
                    "node-{}",
                    fp.replace('-', "").get(..8).unwrap_or("0")
                ))
            }
        };
        Ok(NodeIdentity {
            id,
            key: Arc::new(key),
            key_path,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let a = NodeIdentity::load_or_create(dir.path(), None).unwrap();
        let b = NodeIdentity::load_or_create(dir.path(), None).unwrap();
        assert_eq!(a.key.public(), b.key.public());
        assert_eq!(a.id, b.id);
        assert!(a.id.as_str().starts_with("node-") && a.id.as_str().len() == 13);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&a.key_path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        assert!(NodeIdentity::load_or_create(dir.path(), Some("bad id")).is_err());
        assert_eq!(
            NodeIdentity::load_or_create(dir.path(), Some("pc-7"))
                .unwrap()
                .id,
            "pc-7"
        );
        std::fs::write(dir.path().join(NODE_ID_FILE), "node-3\n").unwrap();
        assert_eq!(
            NodeIdentity::load_or_create(dir.path(), None).unwrap().id,
            "node-3"
        );
        assert_eq!(
            NodeIdentity::load_or_create(dir.path(), Some("pc-8"))
                .unwrap()
                .id,
            "pc-8"
        );
    }
}
