//! The web server's data directory (`--data DIR`, mode 0700):
//!
//! ```text
//! DIR/ca.pem           the CA certificate: give it to authors and lookup admins
//! DIR/ca-key.pem       the CA key (0600): issues lookup certificates
//! DIR/server.pem       the server certificate (SANs: the hosts given to `init`)
//! DIR/server-key.pem   its key (0600)
//! DIR/rjs.db           SQLite database (+ -wal, -shm)
//! DIR/blobs/           content-addressed bundles and answers (see `store::blobs`)
//! ```

use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DataDir { root: root.into() }
    }
    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn ca_cert(&self) -> PathBuf {
        self.root.join("ca.pem")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.root.join("ca-key.pem")
    }
    pub fn server_cert(&self) -> PathBuf {
        self.root.join("server.pem")
    }
    pub fn server_key(&self) -> PathBuf {
        self.root.join("server-key.pem")
    }
    pub fn db(&self) -> PathBuf {
        self.root.join("rjs.db")
    }
    pub fn blobs(&self) -> PathBuf {
        self.root.join("blobs")
    }
}
