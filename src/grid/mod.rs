//! The whole grid on this machine, as `rjs demo` uses it: the launcher of the harness
//! ([`rjs_harness::grid`]: [`LocalGrid`], [`GridOptions`], the author API client), with
//! [`stitch`] for the Mandelbrot sample's tiles.

pub mod image;

pub use image::{Image, stitch};
pub use rjs_harness::grid::*;
