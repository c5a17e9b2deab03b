//! # rjs-wire
//!
//! The one place where the grid's wire types live:
//!
//! * [`announce`]: signed compute-node announcements as mDNS TXT fields.
//! * [`api`]: the JSON bodies of the web server's author and lookup APIs
//!   (`docs/webserver-api.md`).
//! * `creds` (feature `pki`): the lookup credentials file (`docs/webserver-admin.md`).
//! * [`enrol`]: the one-time join token and the messages of a node's enrolment with its lookup
//!   (`docs/lookup-enrolment.md`).
//! * [`gate`]: the bound on connections waiting to authenticate, shared by every server.
//! * [`ids`]: the job and node id types.
//! * [`node`]: the framed job protocol between a lookup server and a compute node
//!   (`docs/compute-protocol.md`).
//! * `pki` (feature `pki`): small PKI helpers: CAs and the certificates they issue.
//! * [`shutdown`]: the stop signal every RJS server obeys.
//! * [`status`]: the lookup server's local status socket (node panel, `why`).
//! * [`tls`]: loading PEM certificates and keys, and building rustls client and server
//!   configurations that trust only the grid's own CAs.

pub mod announce;
pub mod api;
#[cfg(feature = "pki")]
pub mod creds;
pub mod enrol;
pub mod gate;
pub mod ids;
pub mod node;
#[cfg(feature = "pki")]
pub mod pki;
pub mod shutdown;
pub mod status;
pub mod tls;
