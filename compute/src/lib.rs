//! # rjs-compute
//!
//! The compute node: it runs strangers' code on someone's PC, so the owner stays in control
//! (nothing runs unless they trust the author) and no job may harm the machine, starve it or
//! take the node down. See `docs/compute-node.md`.
//!
//! * [`announce`]: the signed mDNS announcer (lease renewals for the lookup server).
//! * [`config`]: `node.toml` and command-line overrides ([`config::NodeConfig`]).
//! * [`bench`]: the Linpack-style speed benchmark announced to lookup servers.
//! * [`trust`]: the owner's trust store and the [`trust::Gatekeeper`] deciding per job.
//! * [`prompt`]: the trust prompt on the node's terminal.
//! * [`idle`]: the "only when idle" policy.
//! * [`sandbox`]: the WebAssembly sandbox (supervisor + one worker process per slot).
//! * [`identity`]: the node's key (signs answers) and id; [`bundles`]: its bundle cache.
//! * [`node`]: the job pipeline (verify, trust, limits, sandbox, signed answer).
//! * [`server`]: the mutual-TLS job server (`docs/compute-protocol.md`).
//! * [`join`]: enrolment with a lookup server (`rjs-compute join TOKEN`).

pub mod announce;
pub mod bench;
pub mod bundles;
pub mod config;
pub mod identity;
pub mod idle;
pub mod job;
pub mod join;
pub mod node;
pub mod prompt;
pub mod sandbox;
pub mod server;
pub mod trust;
