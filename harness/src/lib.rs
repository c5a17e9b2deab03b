//! # rjs-harness
//!
//! The one test and demo harness of the RJS workspace:
//!
//! * [`paths`]: the workspace root, its target directory (honouring `CARGO_TARGET_DIR`), the
//!   built binaries and the sample jobs.
//! * [`process`]: a managed child process ([`process::Managed`]): started and waited for
//!   until it reports that it listens, signalled, terminated with a timeout, killed when
//!   dropped.
//! * [`netns`]: private network namespaces (only `lo`, with multicast), entered with libc,
//!   and [`netns::isolated_child`] to run one test of a test binary inside one.
//! * [`signals`]: Ctrl-C / SIGTERM as a flag that long waits check.
//! * [`wait`]: polling with a deadline, for tests.
//! * [`data`]: reproducible test and benchmark data ([`data::noise`]).
//! * [`flood`]: bounded floods of idle connections ([`flood::idle_sockets`]) and of forged
//!   mDNS services ([`flood::mdns`]).
//! * [`procstat`]: a process's CPU time and memory from `/proc`.
//! * [`report`]: the benchmarks' summary table.
//! * [`forward`]: a port on this machine's network that leads into a private namespace (the
//!   demo's dashboard).
//! * [`hosts`]: several hosts on one machine (named network namespaces on a bridge, WAN links,
//!   partitions and loss by iptables) for the multi-host tests, and [`wan`]: a TCP proxy that
//!   delays each direction (the WAN's round-trip time) and counts TLS handshakes.
//! * [`grid`] (feature `grid`, on by default): a whole grid on this machine — the real
//!   `rjs-webserver`, `rjs-lookup` and `rjs-compute` binaries as child processes on loopback —
//!   used by `rjs demo`, the end-to-end tests and the benchmarks.

pub mod data;
pub mod flood;
pub mod forward;
#[cfg(feature = "grid")]
pub mod grid;
pub mod hosts;
pub mod modules;
pub mod netns;
pub mod paths;
pub mod postgres;
pub mod process;
pub mod procstat;
pub mod report;
pub mod s3;
pub mod signals;
pub mod wait;
pub mod wan;
