//! # rjs-lookup
//!
//! The LAN's lookup server: enrols compute nodes (cluster CA, one-time join tokens),
//! discovers them by multicast with signed, timestamped announcements kept as leases, pulls
//! jobs from the web server, dispatches them fastest-first and relays the answers home
//! ([`service`]).

pub mod discovery;
pub mod dispatch;
pub mod enrol;
pub mod failover;
pub mod service;
pub mod spool;
pub mod status;
pub mod upstream;
