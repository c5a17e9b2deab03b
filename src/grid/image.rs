//! Stitching the Mandelbrot sample's tiles (PNG bands) back into one image, from files
//! (decoding and stitching: `rjs_signer::image`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
pub use rjs_signer::image::Image;
use rjs_signer::image::MAX_PIXELS;

/// Decodes the tiles (PNGs of equal width), stacks them top to bottom in the order given
/// (task index order) and returns the whole image.
pub fn stitch(tiles: &[PathBuf]) -> Result<Image> {
    let decoded = tiles
        .iter()
        .map(|p| load(p).with_context(|| format!("tile {}", p.display())))
        .collect::<Result<Vec<_>>>()?;
    rjs_signer::image::stitch(&decoded, MAX_PIXELS).with_context(|| {
        format!(
            "stitching {}",
            tiles
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

fn load(path: &Path) -> Result<Image> {
    let bytes = rjs_signer::fsutil::read_bounded(path, 256 * 1024 * 1024)?;
    Ok(Image::decode_png(&bytes, MAX_PIXELS)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rjs_sample_mandelbrot as mandelbrot;

    fn params(args: &[&str]) -> mandelbrot::Params {
        mandelbrot::parse_args(args).expect("sample arguments")
    }

    /// The sample's own rendering of band `index` of `count`, as the PNG it writes.
    fn render_png(p: &mandelbrot::Params, index: u32, count: u32) -> Vec<u8> {
        let task =
            mandelbrot::parse_task(Some(&index.to_string()), Some(&count.to_string()), p.height)
                .expect("task");
        mandelbrot::encode_png(&mandelbrot::render_task(p, &task)).expect("encode")
    }

    #[test]
    fn eight_tiles_stitch_into_the_whole_image() {
        // Heights that do not divide by 8 give bands of unequal height: covered too.
        for (w, h) in [("64", "64"), ("37", "61")] {
            let p = params(&[w, h, "50"]);
            let dir = tempfile::tempdir().unwrap();
            let tiles: Vec<PathBuf> = (0..8)
                .map(|i| {
                    let path = dir.path().join(format!("tile-{i}.png"));
                    std::fs::write(&path, render_png(&p, i, 8)).unwrap();
                    path
                })
                .collect();
            let whole = Image::decode_png(&render_png(&p, 0, 1), MAX_PIXELS).unwrap();
            let stitched = stitch(&tiles).unwrap();
            assert_eq!((stitched.width, stitched.height), (p.width, p.height));
            assert_eq!(stitched, whole, "{w}x{h}");
            // And what is written decodes to the same pixels.
            let again = Image::decode_png(&stitched.encode_png().unwrap(), MAX_PIXELS).unwrap();
            assert_eq!(again, whole);
        }
    }

    #[test]
    fn a_file_that_is_not_a_png_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("tile-0.png");
        std::fs::write(&bad, b"not a png").unwrap();
        let err = format!("{:#}", stitch(&[bad]).unwrap_err());
        assert!(err.contains("tile-0.png"), "{err}");
    }
}
