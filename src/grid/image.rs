//! Stitching the Mandelbrot sample's tiles (8-bit RGB PNG bands) back into one image.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// Largest image decoded or built: 64 Mpixel (the sample's manifest allows far less).
const MAX_PIXELS: u64 = 64 * 1024 * 1024;

/// An 8-bit RGB image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub width: u32,
    pub height: u32,
    /// `3 * width * height` bytes, row after row.
    pub rgb: Vec<u8>,
}

impl Image {
    /// Decodes an 8-bit RGB PNG (no palette, no alpha, no 16-bit: what the sample writes).
    pub fn decode_png(bytes: &[u8]) -> Result<Image> {
        let decoder = png::Decoder::new(Cursor::new(bytes));
        let mut reader = decoder.read_info().context("reading the PNG header")?;
        let (width, height) = reader.info().size();
        if u64::from(width) * u64::from(height) > MAX_PIXELS {
            bail!("{width}x{height} pixels is more than this tool handles");
        }
        let size = reader
            .output_buffer_size()
            .context("the PNG's size does not fit in memory")?;
        let mut buf = vec![0; size];
        let info = reader.next_frame(&mut buf).context("decoding the PNG")?;
        if info.color_type != png::ColorType::Rgb || info.bit_depth != png::BitDepth::Eight {
            bail!(
                "the PNG is {:?} with {:?} bits per sample, not 8-bit RGB",
                info.color_type,
                info.bit_depth
            );
        }
        let row = width as usize * 3;
        let mut rgb = Vec::with_capacity(row * height as usize);
        for line in buf.chunks(info.line_size).take(height as usize) {
            rgb.extend_from_slice(&line[..row]);
        }
        Ok(Image { width, height, rgb })
    }

    /// Encodes as an 8-bit RGB PNG.
    pub fn encode_png(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, self.width, self.height);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().context("writing the PNG header")?;
        writer
            .write_image_data(&self.rgb)
            .context("encoding the PNG")?;
        writer.finish().context("finishing the PNG")?;
        Ok(out)
    }
}

/// Decodes the tiles (8-bit RGB PNGs of equal width), stacks them top to bottom in the order
/// given (task index order) and returns the whole image.
pub fn stitch(tiles: &[PathBuf]) -> Result<Image> {
    let decoded = tiles
        .iter()
        .map(|p| load(p).with_context(|| format!("tile {}", p.display())))
        .collect::<Result<Vec<_>>>()?;
    stitch_images(&decoded).with_context(|| {
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

/// [`stitch`] of images already decoded.
pub fn stitch_images(tiles: &[Image]) -> Result<Image> {
    let Some(first) = tiles.first() else {
        bail!("no tiles to stitch");
    };
    let width = first.width;
    let mut height = 0u32;
    for (i, t) in tiles.iter().enumerate() {
        if t.width != width {
            bail!(
                "tile {i} is {} pixels wide, tile 0 is {width}: tiles must have equal widths",
                t.width
            );
        }
        height = height
            .checked_add(t.height)
            .context("the stitched image is too tall")?;
    }
    if u64::from(width) * u64::from(height) > MAX_PIXELS {
        bail!("{width}x{height} pixels is more than this tool handles");
    }
    let mut rgb = Vec::with_capacity(width as usize * height as usize * 3);
    for t in tiles {
        rgb.extend_from_slice(&t.rgb);
    }
    Ok(Image { width, height, rgb })
}

fn load(path: &Path) -> Result<Image> {
    let bytes = rjs_signer::fsutil::read_bounded(path, 256 * 1024 * 1024)?;
    Image::decode_png(&bytes)
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
            let whole = Image::decode_png(&render_png(&p, 0, 1)).unwrap();
            let stitched = stitch(&tiles).unwrap();
            assert_eq!((stitched.width, stitched.height), (p.width, p.height));
            assert_eq!(stitched, whole, "{w}x{h}");
            // And what is written decodes to the same pixels.
            let again = Image::decode_png(&stitched.encode_png().unwrap()).unwrap();
            assert_eq!(again, whole);
        }
    }

    #[test]
    fn tiles_of_different_widths_are_refused() {
        let a = Image {
            width: 2,
            height: 1,
            rgb: vec![0; 6],
        };
        let b = Image {
            width: 3,
            height: 1,
            rgb: vec![0; 9],
        };
        let err = stitch_images(&[a, b]).unwrap_err().to_string();
        assert!(err.contains("equal widths"), "{err}");
        assert!(stitch_images(&[]).is_err());
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
