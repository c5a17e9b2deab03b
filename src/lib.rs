//! # rjs
//!
//! The umbrella crate of the RJS grid: the `rjs` binary is a thin layer over this library.
//!
//! * [`grid`]: a whole grid on this machine — the real `rjs-webserver`, `rjs-lookup` and
//!   `rjs-compute` binaries started as child processes on loopback, inside a private network
//!   namespace ([`grid::netns`]) — with an author API client, packing with a fresh author key,
//!   node and lookup restarts and kills, the node panel, and [`grid::stitch`] for the
//!   Mandelbrot sample's tiles. Used by `rjs demo`, end-to-end tests and benchmarks.
//! * [`demo`]: `rjs demo` (see `docs/demo.md`).
//! * [`signals`]: Ctrl-C / SIGTERM as a flag, so that everything started is stopped in order.

pub mod demo;
pub mod grid;
pub mod signals;
