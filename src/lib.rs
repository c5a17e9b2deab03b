//! # rjs
//!
//! The umbrella crate of the RJS grid: the `rjs` binary is a thin layer over this library.
//!
//! * [`grid`]: a whole grid on this machine — the launcher of the test and demo harness
//!   ([`rjs_harness::grid`]: the real `rjs-webserver`, `rjs-lookup` and `rjs-compute`
//!   binaries started as child processes on loopback, inside a private network namespace) —
//!   and [`grid::stitch`] for the Mandelbrot sample's tiles. Used by `rjs demo` and the grid
//!   benchmarks.
//! * [`demo`]: `rjs demo` (see `docs/demo.md`).

pub mod demo;
pub mod grid;
