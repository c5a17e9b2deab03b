//! Mandelbrot sample job: render one horizontal band ("tile") of the Mandelbrot set.
//!
//! The image covers x ∈ [-2.5, 1.0], y ∈ [-1.25, 1.25] (top row = y 1.25), with each pixel
//! sampled at its centre. Task `index` of `count` renders rows
//! `index*H/count .. (index+1)*H/count`, so the tiles of all tasks, stacked in index order, are
//! exactly the full image.
//!
//! Determinism: the wasm32-wasip1 build and a native build must produce byte-identical tiles.
//! Every floating-point value is computed with IEEE 754 `+ - * /` and comparisons only (Rust
//! never contracts `a*b+c` into a fused multiply-add on its own, and no transcendental function
//! is used, since those come from platform libraries that differ). The PNG is compressed with
//! `fdeflate` (pure Rust, no target-specific paths) rather than `flate2`, whose backend can be
//! switched by cargo feature unification with other workspace crates (zlib-rs vs miniz_oxide),
//! which would change the compressed bytes.

use std::fmt;
use std::ops::Range;

/// Left edge of the rendered region.
pub const X_MIN: f64 = -2.5;
/// Right edge of the rendered region.
pub const X_MAX: f64 = 1.0;
/// Bottom edge of the rendered region.
pub const Y_MIN: f64 = -1.25;
/// Top edge of the rendered region (row 0).
pub const Y_MAX: f64 = 1.25;

/// Largest accepted width or height in pixels.
pub const MAX_DIMENSION: u32 = 16_384;

/// Default image width, height and iteration limit (`mandelbrot` with no arguments).
pub const DEFAULT_WIDTH: u32 = 1024;
pub const DEFAULT_HEIGHT: u32 = 1024;
pub const DEFAULT_MAX_ITER: u32 = 1000;

/// Colours of escaping points, indexed by `iterations % PALETTE.len()`.
pub const PALETTE: [[u8; 3]; 16] = [
    [66, 30, 15],
    [25, 7, 26],
    [9, 1, 47],
    [4, 4, 73],
    [0, 7, 100],
    [12, 44, 138],
    [24, 82, 177],
    [57, 125, 209],
    [134, 181, 229],
    [211, 236, 248],
    [241, 233, 191],
    [248, 201, 95],
    [255, 170, 0],
    [204, 128, 0],
    [153, 87, 0],
    [106, 52, 3],
];

/// Colour of points that did not escape within `max_iter` (taken to be in the set).
pub const INSIDE: [u8; 3] = [0, 0, 0];

/// Image parameters, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    pub width: u32,
    pub height: u32,
    pub max_iter: u32,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            width: DEFAULT_WIDTH,
            height: DEFAULT_HEIGHT,
            max_iter: DEFAULT_MAX_ITER,
        }
    }
}

/// Which band of the image this task renders, validated against the image height.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Task {
    pub index: u32,
    pub count: u32,
}

/// A bad command line or task environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UsageError {
    /// Not 0 or 3 positional arguments.
    ArgCount(usize),
    /// An argument that is not an integer in its allowed range.
    BadArg {
        name: &'static str,
        value: String,
        expected: String,
    },
    /// An environment variable that is not an integer in its allowed range.
    BadEnv {
        name: &'static str,
        value: String,
        expected: String,
    },
    /// `RJS_TASK_INDEX` not below `RJS_TASK_COUNT`.
    IndexOutOfRange { index: u32, count: u32 },
    /// More tasks than image rows: some tiles would be empty.
    TooManyTasks { count: u32, height: u32 },
}

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UsageError::ArgCount(n) => {
                write!(
                    f,
                    "expected 0 or 3 arguments (WIDTH HEIGHT MAX_ITER), got {n}"
                )
            }
            UsageError::BadArg {
                name,
                value,
                expected,
            } => write!(f, "invalid {name} {value:?}: expected {expected}"),
            UsageError::BadEnv {
                name,
                value,
                expected,
            } => write!(
                f,
                "invalid environment variable {name}={value:?}: expected {expected}"
            ),
            UsageError::IndexOutOfRange { index, count } => write!(
                f,
                "RJS_TASK_INDEX {index} is out of range: must be below RJS_TASK_COUNT {count}"
            ),
            UsageError::TooManyTasks { count, height } => write!(
                f,
                "RJS_TASK_COUNT {count} is larger than the image height {height}: \
                 every task must get at least one row"
            ),
        }
    }
}

impl std::error::Error for UsageError {}

fn parse_in_range(s: &str, range: std::ops::RangeInclusive<u32>) -> Option<u32> {
    s.parse::<u32>().ok().filter(|v| range.contains(v))
}

/// Parses the positional arguments (without argv\[0\]): none for the defaults, or exactly
/// `WIDTH HEIGHT MAX_ITER`.
pub fn parse_args<S: AsRef<str>>(args: &[S]) -> Result<Params, UsageError> {
    match args {
        [] => Ok(Params::default()),
        [w, h, m] => {
            let dim = |name: &'static str, s: &str| {
                parse_in_range(s, 1..=MAX_DIMENSION).ok_or_else(|| UsageError::BadArg {
                    name,
                    value: s.to_owned(),
                    expected: format!("an integer from 1 to {MAX_DIMENSION}"),
                })
            };
            let width = dim("WIDTH", w.as_ref())?;
            let height = dim("HEIGHT", h.as_ref())?;
            let m = m.as_ref();
            let max_iter = parse_in_range(m, 1..=u32::MAX).ok_or_else(|| UsageError::BadArg {
                name: "MAX_ITER",
                value: m.to_owned(),
                expected: format!("an integer from 1 to {}", u32::MAX),
            })?;
            Ok(Params {
                width,
                height,
                max_iter,
            })
        }
        other => Err(UsageError::ArgCount(other.len())),
    }
}

/// Validates the task environment: `index` and `count` are the raw values of `RJS_TASK_INDEX`
/// and `RJS_TASK_COUNT` (`None` when unset: defaults 0 and 1).
pub fn parse_task(
    index: Option<&str>,
    count: Option<&str>,
    height: u32,
) -> Result<Task, UsageError> {
    let count = match count {
        None => 1,
        Some(s) => parse_in_range(s, 1..=u32::MAX).ok_or_else(|| UsageError::BadEnv {
            name: "RJS_TASK_COUNT",
            value: s.to_owned(),
            expected: "a positive integer".to_owned(),
        })?,
    };
    let index = match index {
        None => 0,
        Some(s) => s.parse::<u32>().map_err(|_| UsageError::BadEnv {
            name: "RJS_TASK_INDEX",
            value: s.to_owned(),
            expected: "a non-negative integer".to_owned(),
        })?,
    };
    if index >= count {
        return Err(UsageError::IndexOutOfRange { index, count });
    }
    if count > height {
        return Err(UsageError::TooManyTasks { count, height });
    }
    Ok(Task { index, count })
}

/// Rows of band `index` of `count` in an image `height` rows high:
/// `index*height/count .. (index+1)*height/count`.
///
/// Requires `index < count`. For `count <= height` every band is non-empty; consecutive bands
/// share their boundary, so the bands tile `0..height` exactly.
pub fn band_rows(height: u32, index: u32, count: u32) -> Range<u32> {
    assert!(count >= 1 && index < count, "band {index} of {count}");
    let edge = |i: u32| (u64::from(i) * u64::from(height) / u64::from(count)) as u32;
    edge(index)..edge(index + 1)
}

/// The point sampled for pixel column `px` of an image `width` pixels wide (pixel centre).
pub fn pixel_x(px: u32, width: u32) -> f64 {
    X_MIN + (f64::from(px) + 0.5) * (X_MAX - X_MIN) / f64::from(width)
}

/// The point sampled for pixel row `py` of an image `height` pixels high (row 0 at the top).
pub fn pixel_y(py: u32, height: u32) -> f64 {
    Y_MAX - (f64::from(py) + 0.5) * (Y_MAX - Y_MIN) / f64::from(height)
}

/// Escape time of `c = cx + i·cy`: the number of iterations of `z ← z² + c` (from `z = 0`)
/// before `|z| > 2`, or `max_iter` if it never escapes within the limit.
#[inline]
pub fn escape_time(cx: f64, cy: f64, max_iter: u32) -> u32 {
    let (mut x, mut y) = (0.0f64, 0.0f64);
    let mut n = 0;
    while n < max_iter {
        let x2 = x * x;
        let y2 = y * y;
        if x2 + y2 > 4.0 {
            break;
        }
        y = 2.0 * x * y + cy;
        x = x2 - y2 + cx;
        n += 1;
    }
    n
}

/// The colour of a pixel whose escape time is `n`.
pub fn colour(n: u32, max_iter: u32) -> [u8; 3] {
    if n >= max_iter {
        INSIDE
    } else {
        PALETTE[n as usize % PALETTE.len()]
    }
}

/// A rendered band of the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tile {
    /// Width in pixels.
    pub width: u32,
    /// The image rows this tile holds.
    pub rows: Range<u32>,
    /// RGB8 pixels, row after row (`3 * width` bytes per row).
    pub rgb: Vec<u8>,
    /// Total escape-time iterations over all pixels of the tile (the work done).
    pub iterations: u64,
}

impl Tile {
    /// Number of rows in the tile.
    pub fn height(&self) -> u32 {
        self.rows.end - self.rows.start
    }

    /// The RGB bytes of each row, top to bottom.
    pub fn pixel_rows(&self) -> impl Iterator<Item = &[u8]> {
        self.rgb.chunks_exact(self.width as usize * 3)
    }

    /// The colour of pixel (`x`, tile-relative row `y`).
    pub fn pixel(&self, x: u32, y: u32) -> [u8; 3] {
        let i = (y as usize * self.width as usize + x as usize) * 3;
        [self.rgb[i], self.rgb[i + 1], self.rgb[i + 2]]
    }
}

/// Renders image rows `rows` (a sub-range of `0..params.height`).
pub fn render(params: &Params, rows: Range<u32>) -> Tile {
    assert!(
        rows.start <= rows.end && rows.end <= params.height,
        "rows {rows:?} outside 0..{}",
        params.height
    );
    let width = params.width;
    let mut rgb = Vec::with_capacity(width as usize * (rows.end - rows.start) as usize * 3);
    let mut iterations = 0u64;
    for py in rows.clone() {
        let cy = pixel_y(py, params.height);
        for px in 0..width {
            let n = escape_time(pixel_x(px, width), cy, params.max_iter);
            iterations += u64::from(n);
            rgb.extend_from_slice(&colour(n, params.max_iter));
        }
    }
    Tile {
        width,
        rows,
        rgb,
        iterations,
    }
}

/// Renders the band of `task`.
pub fn render_task(params: &Params, task: &Task) -> Tile {
    render(params, band_rows(params.height, task.index, task.count))
}

/// Encodes a tile as an 8-bit RGB PNG (deterministic bytes; see the crate documentation).
pub fn encode_png(tile: &Tile) -> Result<Vec<u8>, png::EncodingError> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, tile.width, tile.height());
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_deflate_compression(png::DeflateCompression::FdeflateUltraFast);
    encoder.set_filter(png::Filter::Adaptive);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(&tile.rgb)?;
    writer.finish()?;
    Ok(out)
}

/// The output path of task `index`, relative to the job's working directory.
pub fn tile_path(index: u32) -> String {
    format!("out/tile-{index}.png")
}

/// The one-line summary the job prints.
pub fn summary(params: &Params, task: &Task, tile: &Tile, path: &str) -> String {
    format!(
        "tile {}/{}: rows {}..{} of {}x{}, max_iter {}, {} iterations, {}",
        task.index,
        task.count,
        tile.rows.start,
        tile.rows.end,
        params.width,
        params.height,
        params.max_iter,
        tile.iterations,
        path
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Params {
        Params {
            width: 48,
            height: 37,
            max_iter: 100,
        }
    }

    #[test]
    fn bands_tile_the_image_exactly() {
        for height in [1u32, 2, 7, 37, 100, 1024, MAX_DIMENSION] {
            for count in (1..=height.min(40)).chain([height]) {
                let mut next = 0;
                for index in 0..count {
                    let r = band_rows(height, index, count);
                    assert_eq!(r.start, next, "h {height} band {index}/{count}");
                    assert!(r.end > r.start, "empty band {index}/{count} of {height}");
                    next = r.end;
                }
                assert_eq!(next, height, "h {height} count {count}");
            }
        }
    }

    #[test]
    fn band_matches_example() {
        assert_eq!(band_rows(1024, 3, 8), 384..512);
        assert_eq!(band_rows(10, 0, 3), 0..3);
        assert_eq!(band_rows(10, 1, 3), 3..6);
        assert_eq!(band_rows(10, 2, 3), 6..10);
    }

    #[test]
    fn stacked_tiles_equal_the_whole_image() {
        let p = small();
        let whole = render(&p, 0..p.height);
        let mut rgb = Vec::new();
        let mut iterations = 0;
        for index in 0..5 {
            let t = render_task(&p, &Task { index, count: 5 });
            rgb.extend_from_slice(&t.rgb);
            iterations += t.iterations;
        }
        assert_eq!(rgb, whole.rgb);
        assert_eq!(iterations, whole.iterations);
        assert_eq!(whole.pixel_rows().count(), p.height as usize);
        assert!(whole.pixel_rows().all(|r| r.len() == 3 * p.width as usize));
    }

    #[test]
    fn known_points() {
        // Inside: the origin, -1 (period-2 bulb), and the main cardioid near -0.1+0.1i.
        for (x, y) in [(0.0, 0.0), (-1.0, 0.0), (-0.1, 0.1), (0.25, 0.0)] {
            assert_eq!(escape_time(x, y, 500), 500, "({x}, {y})");
            assert_eq!(colour(escape_time(x, y, 500), 500), INSIDE);
        }
        // Outside: far away points escape at once; for 1+0i, z goes 0 → 1 → 2 → 5 and
        // |z| > 2 is seen after 3 iterations.
        assert_eq!(escape_time(3.0, 3.0, 500), 1);
        assert_eq!(escape_time(1.0, 0.0, 500), 3);
        assert_ne!(colour(3, 500), INSIDE);
    }

    #[test]
    fn pixel_centres() {
        assert_eq!(pixel_x(0, 2), X_MIN + 0.875);
        assert_eq!(pixel_x(1, 2), X_MAX - 0.875);
        assert_eq!(pixel_y(0, 2), 0.625);
        assert_eq!(pixel_y(1, 2), -0.625);
    }

    #[test]
    fn centre_of_image_is_black_and_corners_are_not() {
        // With an odd size the middle pixel of the bottom-left quarter maps to about -1.375..,
        // use an exact point instead: width 7 → column 5 is x = -2.5 + 5.5*0.5 = 0.25;
        // height 5 → row 2 is y = 0. The point 0.25 + 0i is the cusp of the cardioid (in the set).
        let p = Params {
            width: 7,
            height: 5,
            max_iter: 200,
        };
        assert_eq!(pixel_x(5, 7), 0.25);
        assert_eq!(pixel_y(2, 5), 0.0);
        let t = render(&p, 0..p.height);
        assert_eq!(t.pixel(5, 2), INSIDE);
        assert_ne!(t.pixel(0, 0), INSIDE);
        assert_ne!(t.pixel(6, 4), INSIDE);
    }

    #[test]
    fn png_round_trips() {
        let p = small();
        let t = render_task(&p, &Task { index: 1, count: 3 });
        let bytes = encode_png(&t).unwrap();
        let decoder = png::Decoder::new(std::io::Cursor::new(&bytes));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (t.width, t.height()));
        assert_eq!(info.color_type, png::ColorType::Rgb);
        assert_eq!(info.bit_depth, png::BitDepth::Eight);
        assert_eq!(&buf[..info.buffer_size()], &t.rgb[..]);
        // Same input, same bytes.
        assert_eq!(encode_png(&t).unwrap(), bytes);
    }

    /// FNV-1a, to pin the exact output bytes without a hashing dependency.
    fn fnv1a(bytes: &[u8]) -> u64 {
        bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    }

    /// Golden values: if this fails, the rendering or the PNG encoding changed (e.g. a `png`
    /// upgrade), and tiles made by old and new builds of the job will no longer be identical.
    #[test]
    fn golden_output() {
        let p = Params {
            width: 64,
            height: 48,
            max_iter: 300,
        };
        let t = render_task(&p, &Task { index: 1, count: 4 });
        assert_eq!(t.rows, 12..24);
        assert_eq!(t.iterations, GOLDEN_ITERATIONS);
        assert_eq!(fnv1a(&t.rgb), GOLDEN_RGB_FNV);
        assert_eq!(fnv1a(&encode_png(&t).unwrap()), GOLDEN_PNG_FNV);
    }
    const GOLDEN_ITERATIONS: u64 = 79_686;
    const GOLDEN_RGB_FNV: u64 = 0x8ac2_e41d_8ed8_a7dd;
    const GOLDEN_PNG_FNV: u64 = 0x1055_15b2_375a_df76;

    #[test]
    fn args() {
        assert_eq!(parse_args::<&str>(&[]), Ok(Params::default()));
        assert_eq!(
            parse_args(&["256", "128", "50"]),
            Ok(Params {
                width: 256,
                height: 128,
                max_iter: 50
            })
        );
        assert_eq!(parse_args(&["1", "2"]), Err(UsageError::ArgCount(2)));
        for bad in [
            ["0", "1", "1"],
            ["1", "0", "1"],
            ["1", "1", "0"],
            ["x", "1", "1"],
            ["-1", "1", "1"],
            ["16385", "1", "1"],
            [" 1", "1", "1"],
            ["1.5", "1", "1"],
        ] {
            assert!(
                matches!(parse_args(&bad), Err(UsageError::BadArg { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn task_env() {
        assert_eq!(parse_task(None, None, 10), Ok(Task { index: 0, count: 1 }));
        assert_eq!(
            parse_task(Some("3"), Some("8"), 1024),
            Ok(Task { index: 3, count: 8 })
        );
        assert_eq!(
            parse_task(Some("8"), Some("8"), 1024),
            Err(UsageError::IndexOutOfRange { index: 8, count: 8 })
        );
        assert_eq!(
            parse_task(Some("1"), None, 1024),
            Err(UsageError::IndexOutOfRange { index: 1, count: 1 })
        );
        assert_eq!(
            parse_task(None, Some("11"), 10),
            Err(UsageError::TooManyTasks {
                count: 11,
                height: 10
            })
        );
        assert_eq!(parse_task(Some("9"), Some("10"), 10).unwrap().index, 9);
        for (i, c) in [
            (Some("-1"), None),
            (None, Some("0")),
            (Some(""), None),
            (None, Some("x")),
        ] {
            assert!(
                matches!(parse_task(i, c, 10), Err(UsageError::BadEnv { .. })),
                "{i:?} {c:?}"
            );
        }
    }

    #[test]
    fn summary_line() {
        let p = Params::default();
        let task = Task { index: 3, count: 8 };
        let t = Tile {
            width: 1024,
            rows: band_rows(1024, 3, 8),
            rgb: Vec::new(),
            iterations: 123_456_789,
        };
        assert_eq!(
            summary(&p, &task, &t, &tile_path(3)),
            "tile 3/8: rows 384..512 of 1024x1024, max_iter 1000, 123456789 iterations, out/tile-3.png"
        );
    }
}
