//! # rjs-lookup
//!
//! The LAN's lookup server: enrols compute nodes (cluster CA, one-time join tokens),
//! discovers them by multicast with signed, timestamped announcements kept as leases, and
//! (coming next) pulls jobs from the web server and dispatches them fastest-first.

pub mod discovery;
pub mod dispatch;
pub mod enrol;
pub mod spool;
pub mod upstream;
