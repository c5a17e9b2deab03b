//! PNG images in answers: decoding under a pixel bound, re-encoding, and stitching tiles (one
//! band per task, equal widths) into one image. Used by `rjs demo` (the Mandelbrot tiles) and
//! the web server's dashboard (previews and galleries of untrusted answers: every PNG it shows
//! is decoded here and re-encoded, never passed through).
//!
//! Every image is normalised to 8-bit RGBA, whatever the PNG's colour type and depth.

use std::io::Cursor;

/// The PNG signature: the first eight bytes of every PNG file.
pub const PNG_MAGIC: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];

/// Default bound on an image's pixels: 64 Mpixel.
pub const MAX_PIXELS: u64 = 64 * 1024 * 1024;

/// Why an image could not be decoded, encoded or stitched.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("not a PNG file (its first bytes are not the PNG signature)")]
    NotPng,
    #[error("{width}x{height} pixels is more than the limit of {max} pixels")]
    TooLarge { width: u32, height: u32, max: u64 },
    #[error("decoding the PNG")]
    Decode(#[source] png::DecodingError),
    #[error("encoding the PNG")]
    Encode(#[source] png::EncodingError),
    #[error("no tiles to stitch")]
    NoTiles,
    #[error("tile {index} is {width} pixels wide, tile 0 is {first}: tiles must have equal widths")]
    Widths {
        index: usize,
        width: u32,
        first: u32,
    },
}

/// An 8-bit RGBA image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub width: u32,
    pub height: u32,
    /// `4 * width * height` bytes, row after row.
    pub rgba: Vec<u8>,
}

/// Whether `bytes` start with the PNG signature.
pub fn is_png(bytes: &[u8]) -> bool {
    bytes.starts_with(&PNG_MAGIC)
}

fn check_size(width: u32, height: u32, max: u64) -> Result<(), ImageError> {
    if u64::from(width) * u64::from(height) > max {
        return Err(ImageError::TooLarge { width, height, max });
    }
    Ok(())
}

impl Image {
    /// Decodes a PNG of at most `max_pixels` pixels (checked from its header, before any
    /// pixel is decoded) of any colour type and depth, into 8-bit RGBA.
    pub fn decode_png(bytes: &[u8], max_pixels: u64) -> Result<Image, ImageError> {
        if !is_png(bytes) {
            return Err(ImageError::NotPng);
        }
        let mut decoder = png::Decoder::new(Cursor::new(bytes));
        decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
        // The decoder's own memory bound: the frame buffer at 8 bytes a pixel.
        decoder.set_limits(png::Limits {
            bytes: usize::try_from(max_pixels.saturating_mul(8)).unwrap_or(usize::MAX),
        });
        let mut reader = decoder.read_info().map_err(ImageError::Decode)?;
        let (width, height) = reader.info().size();
        check_size(width, height, max_pixels)?;
        let size = reader.output_buffer_size().ok_or(ImageError::TooLarge {
            width,
            height,
            max: max_pixels,
        })?;
        let mut buf = vec![0; size];
        let info = reader.next_frame(&mut buf).map_err(ImageError::Decode)?;
        let (w, h) = (width as usize, height as usize);
        let mut rgba = Vec::with_capacity(w * h * 4);
        for line in buf.chunks(info.line_size).take(h) {
            match info.color_type {
                png::ColorType::Rgba => rgba.extend_from_slice(&line[..w * 4]),
                png::ColorType::Rgb => {
                    for p in line[..w * 3].chunks_exact(3) {
                        rgba.extend_from_slice(&[p[0], p[1], p[2], 255]);
                    }
                }
                png::ColorType::GrayscaleAlpha => {
                    for p in line[..w * 2].chunks_exact(2) {
                        rgba.extend_from_slice(&[p[0], p[0], p[0], p[1]]);
                    }
                }
                // EXPAND turned palettes into RGB(A); what is left is grey.
                png::ColorType::Grayscale | png::ColorType::Indexed => {
                    for &g in &line[..w] {
                        rgba.extend_from_slice(&[g, g, g, 255]);
                    }
                }
            }
        }
        Ok(Image {
            width,
            height,
            rgba,
        })
    }

    /// Encodes as an 8-bit PNG: RGB when every pixel is opaque, RGBA otherwise.
    pub fn encode_png(&self) -> Result<Vec<u8>, ImageError> {
        let opaque = self.rgba.chunks_exact(4).all(|p| p[3] == 255);
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, self.width, self.height);
        encoder.set_depth(png::BitDepth::Eight);
        let data: std::borrow::Cow<'_, [u8]> = if opaque {
            encoder.set_color(png::ColorType::Rgb);
            self.rgba
                .chunks_exact(4)
                .flat_map(|p| [p[0], p[1], p[2]])
                .collect::<Vec<u8>>()
                .into()
        } else {
            encoder.set_color(png::ColorType::Rgba);
            (&self.rgba[..]).into()
        };
        let mut writer = encoder.write_header().map_err(ImageError::Encode)?;
        writer.write_image_data(&data).map_err(ImageError::Encode)?;
        writer.finish().map_err(ImageError::Encode)?;
        Ok(out)
    }
}

/// Stacks tiles of equal width top to bottom in the order given (task order) into one image
/// of at most `max_pixels` pixels.
pub fn stitch(tiles: &[Image], max_pixels: u64) -> Result<Image, ImageError> {
    let Some(first) = tiles.first() else {
        return Err(ImageError::NoTiles);
    };
    let width = first.width;
    let mut height = 0u32;
    for (index, t) in tiles.iter().enumerate() {
        if t.width != width {
            return Err(ImageError::Widths {
                index,
                width: t.width,
                first: width,
            });
        }
        height = height.saturating_add(t.height);
        check_size(width, height, max_pixels)?;
    }
    let mut rgba = Vec::with_capacity(width as usize * height as usize * 4);
    for t in tiles {
        rgba.extend_from_slice(&t.rgba);
    }
    Ok(Image {
        width,
        height,
        rgba,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png_of(color: png::ColorType, depth: png::BitDepth, w: u32, h: u32, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut e = png::Encoder::new(&mut out, w, h);
        e.set_color(color);
        e.set_depth(depth);
        let mut wr = e.write_header().unwrap();
        wr.write_image_data(data).unwrap();
        wr.finish().unwrap();
        out
    }

    #[test]
    fn every_colour_type_becomes_rgba_and_round_trips() {
        let grey = png_of(
            png::ColorType::Grayscale,
            png::BitDepth::Eight,
            2,
            1,
            &[0, 200],
        );
        let img = Image::decode_png(&grey, MAX_PIXELS).unwrap();
        assert_eq!(img.rgba, vec![0, 0, 0, 255, 200, 200, 200, 255]);
        let rgb16 = png_of(
            png::ColorType::Rgb,
            png::BitDepth::Sixteen,
            1,
            1,
            &[1, 0, 2, 0, 3, 0],
        );
        assert_eq!(
            Image::decode_png(&rgb16, MAX_PIXELS).unwrap().rgba,
            vec![1, 2, 3, 255]
        );
        let rgba = png_of(
            png::ColorType::Rgba,
            png::BitDepth::Eight,
            1,
            1,
            &[9, 8, 7, 6],
        );
        let img = Image::decode_png(&rgba, MAX_PIXELS).unwrap();
        assert_eq!(img.rgba, vec![9, 8, 7, 6]);
        let again = Image::decode_png(&img.encode_png().unwrap(), MAX_PIXELS).unwrap();
        assert_eq!(again, img);
    }

    #[test]
    fn too_many_pixels_and_non_pngs_are_refused_before_decoding() {
        let big = png_of(
            png::ColorType::Grayscale,
            png::BitDepth::Eight,
            100,
            100,
            &[0; 10_000],
        );
        assert!(matches!(
            Image::decode_png(&big, 9_999),
            Err(ImageError::TooLarge {
                width: 100,
                height: 100,
                ..
            })
        ));
        assert!(matches!(
            Image::decode_png(b"<svg/>", MAX_PIXELS),
            Err(ImageError::NotPng)
        ));
        let mut cut = big.clone();
        cut.truncate(big.len() / 2);
        assert!(Image::decode_png(&cut, MAX_PIXELS).is_err());
    }

    #[test]
    fn tiles_stack_in_order_and_must_share_a_width() {
        let a = Image {
            width: 1,
            height: 1,
            rgba: vec![1, 1, 1, 255],
        };
        let b = Image {
            width: 1,
            height: 2,
            rgba: vec![2; 8],
        };
        let s = stitch(&[a.clone(), b.clone()], MAX_PIXELS).unwrap();
        assert_eq!((s.width, s.height), (1, 3));
        assert_eq!(&s.rgba[..4], &a.rgba[..]);
        let c = Image {
            width: 2,
            height: 1,
            rgba: vec![0; 8],
        };
        let err = stitch(&[a.clone(), c], MAX_PIXELS).unwrap_err();
        assert!(err.to_string().contains("equal widths"), "{err}");
        assert!(matches!(stitch(&[], MAX_PIXELS), Err(ImageError::NoTiles)));
        assert!(matches!(
            stitch(&[a, b], 2),
            Err(ImageError::TooLarge { .. })
        ));
    }
}
