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
}

/// One `DataDir` method per file of the layout above: its path.
macro_rules! files {
    ($($name:ident => $file:literal,)*) => {
        impl DataDir {
            $(
                #[doc = concat!("`DIR/", $file, "`")]
                pub fn $name(&self) -> PathBuf {
                    self.root.join($file)
                }
            )*
        }
    };
}

files! {
    ca_cert => "ca.pem",
    ca_key => "ca-key.pem",
    server_cert => "server.pem",
    server_key => "server-key.pem",
    db => "rjs.db",
    blobs => "blobs",
}
