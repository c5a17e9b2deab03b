//! The canonical zip layout of bundle format v1 (see `docs/bundle-format.md`, "Zip layout").
//!
//! Every byte of a bundle is either an entry's stored data (covered by the signature through
//! its SHA-256) or a header field that is fixed or derived from signed values. The writer
//! emits exactly this layout; the verifier recomputes every header and compares it with the
//! file, so a bundle has one valid byte form and a change to any byte is refused.
//!
//! Layout: for each entry in order, a local file header (no extra field, no data descriptor)
//! followed by its stored bytes; then the central directory in the same order; then the
//! end-of-central-directory record without comment. No zip64, no encryption, no gaps.

use std::io::{self, Write};

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

const LOCAL_SIG: u32 = 0x0403_4b50;
const CENTRAL_SIG: u32 = 0x0201_4b50;
const EOCD_SIG: u32 = 0x0605_4b50;
/// "Version needed to extract": 2.0 (deflate).
const VERSION_NEEDED: u16 = 20;
/// "Version made by": unix (3), spec 2.0.
const VERSION_MADE_BY: u16 = (3 << 8) | 20;
/// DOS time 00:00:00 and DOS date 1980-01-01: no timestamps in a bundle.
const DOS_TIME: u16 = 0;
const DOS_DATE: u16 = (1 << 5) | 1;
/// External attributes: a regular file with mode 0644.
const EXTERNAL_ATTRS: u32 = 0o100_644 << 16;
/// Size of a local file header without its name.
pub const LOCAL_HEADER_LEN: u64 = 30;
/// Size of a central directory header without its name.
pub const CENTRAL_HEADER_LEN: u64 = 46;
/// Size of the end-of-central-directory record.
pub const EOCD_LEN: u64 = 22;
/// Zip fields are 32-bit: no entry or offset may reach 4 GiB (there is no zip64 here).
pub const MAX_ZIP_OFFSET: u64 = u32::MAX as u64;

/// How an entry's bytes are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Stored,
    Deflate,
}

impl Method {
    pub fn code(self) -> u16 {
        match self {
            Method::Stored => 0,
            Method::Deflate => 8,
        }
    }
    pub fn from_code(code: u16) -> Option<Self> {
        match code {
            0 => Some(Method::Stored),
            8 => Some(Method::Deflate),
            _ => None,
        }
    }
    /// The name used in the signed statement.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Stored => "stored",
            Method::Deflate => "deflate",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "stored" => Some(Method::Stored),
            "deflate" => Some(Method::Deflate),
            _ => None,
        }
    }
}

/// The header-relevant facts of one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryMeta<'a> {
    pub name: &'a str,
    pub method: Method,
    pub crc32: u32,
    /// Uncompressed size.
    pub size: u64,
    /// Size of the stored (possibly compressed) bytes.
    pub stored_size: u64,
}

fn put16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}
fn put32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Sizes that fit in the 32-bit fields (callers check against [`MAX_ZIP_OFFSET`] first).
fn u32_of(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

/// The fields a local and a central header share, from "version needed" to the name's
/// length.
fn put_entry_fields(h: &mut Vec<u8>, e: &EntryMeta<'_>) {
    put16(h, VERSION_NEEDED);
    put16(h, 0); // flags: no encryption, no data descriptor, ASCII names
    put16(h, e.method.code());
    put16(h, DOS_TIME);
    put16(h, DOS_DATE);
    put32(h, e.crc32);
    put32(h, u32_of(e.stored_size));
    put32(h, u32_of(e.size));
    put16(h, e.name.len() as u16);
}

/// The exact local file header of an entry.
pub fn local_header(e: &EntryMeta<'_>) -> Vec<u8> {
    let mut h = Vec::with_capacity(LOCAL_HEADER_LEN as usize + e.name.len());
    put32(&mut h, LOCAL_SIG);
    put_entry_fields(&mut h, e);
    put16(&mut h, 0); // no extra field
    h.extend_from_slice(e.name.as_bytes());
    h
}

/// The exact central directory header of an entry whose local header is at `offset`.
pub fn central_header(e: &EntryMeta<'_>, offset: u64) -> Vec<u8> {
    let mut h = Vec::with_capacity(CENTRAL_HEADER_LEN as usize + e.name.len());
    put32(&mut h, CENTRAL_SIG);
    put16(&mut h, VERSION_MADE_BY);
    put_entry_fields(&mut h, e);
    put16(&mut h, 0); // extra
    put16(&mut h, 0); // comment
    put16(&mut h, 0); // disk number
    put16(&mut h, 0); // internal attributes
    put32(&mut h, EXTERNAL_ATTRS);
    put32(&mut h, u32_of(offset));
    h.extend_from_slice(e.name.as_bytes());
    h
}

/// The exact end-of-central-directory record.
pub fn end_record(count: usize, cd_size: u64, cd_offset: u64) -> Vec<u8> {
    let mut h = Vec::with_capacity(EOCD_LEN as usize);
    put32(&mut h, EOCD_SIG);
    put16(&mut h, 0);
    put16(&mut h, 0);
    put16(&mut h, count as u16);
    put16(&mut h, count as u16);
    put32(&mut h, u32_of(cd_size));
    put32(&mut h, u32_of(cd_offset));
    put16(&mut h, 0); // comment length
    h
}

/// Writes entries (metadata + stored bytes) in the canonical layout.
pub fn write_zip<W: Write>(out: &mut W, entries: &[(EntryMeta<'_>, &[u8])]) -> io::Result<()> {
    let mut offset = 0u64;
    let mut offsets = Vec::with_capacity(entries.len());
    for (meta, stored) in entries {
        let h = local_header(meta);
        out.write_all(&h)?;
        out.write_all(stored)?;
        offsets.push(offset);
        offset += h.len() as u64 + stored.len() as u64;
    }
    let cd_offset = offset;
    let mut cd_size = 0u64;
    for ((meta, _), off) in entries.iter().zip(&offsets) {
        let h = central_header(meta, *off);
        cd_size += h.len() as u64;
        out.write_all(&h)?;
    }
    out.write_all(&end_record(entries.len(), cd_size, cd_offset))
}

/// Where the canonical layout was broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} at byte {offset} differs from the canonical layout")]
pub struct LayoutError {
    pub what: String,
    pub offset: u64,
}

/// Checks that `file` is exactly the canonical layout of `entries` (in this order) and
/// returns where each entry's stored bytes are.
pub fn check_layout(
    file: &[u8],
    entries: &[EntryMeta<'_>],
) -> Result<Vec<std::ops::Range<usize>>, LayoutError> {
    let mut offset = 0u64;
    let mut data = Vec::with_capacity(entries.len());
    let mut offsets = Vec::with_capacity(entries.len());
    let expect =
        |offset: u64, bytes: &[u8], what: &dyn Fn() -> String| -> Result<(), LayoutError> {
            let start = offset as usize;
            match file.get(start..start + bytes.len()) {
                Some(actual) if actual == bytes => Ok(()),
                _ => Err(LayoutError {
                    what: what(),
                    offset,
                }),
            }
        };
    for e in entries {
        let h = local_header(e);
        expect(offset, &h, &|| format!("local header of {:?}", e.name))?;
        offsets.push(offset);
        offset += h.len() as u64;
        let end = offset + e.stored_size;
        if end > file.len() as u64 {
            return Err(LayoutError {
                what: format!("data of {:?} runs past the end of the file", e.name),
                offset,
            });
        }
        data.push(offset as usize..end as usize);
        offset = end;
    }
    let cd_offset = offset;
    for (e, off) in entries.iter().zip(&offsets) {
        let h = central_header(e, *off);
        expect(offset, &h, &|| {
            format!("central directory header of {:?}", e.name)
        })?;
        offset += h.len() as u64;
    }
    let eocd = end_record(entries.len(), offset - cd_offset, cd_offset);
    expect(offset, &eocd, &|| "end of central directory".to_owned())?;
    offset += eocd.len() as u64;
    if offset != file.len() as u64 {
        return Err(LayoutError {
            what: format!(
                "{} trailing bytes",
                file.len() as u64 - offset.min(file.len() as u64)
            ),
            offset,
        });
    }
    Ok(data)
}

/// Deflates `data` (level 6).
pub fn deflate(data: &[u8]) -> Vec<u8> {
    Deflater::new().deflate(data)
}

/// Deflates entry after entry with one compressor (level 6, raw deflate): a compressor's
/// state is hundreds of KiB, and making one per entry cost more than compressing a small
/// answer's entries. Output is the same as [`deflate`]'s.
pub struct Deflater {
    c: Compress,
}

impl Default for Deflater {
    fn default() -> Self {
        Deflater::new()
    }
}

impl Deflater {
    pub fn new() -> Deflater {
        Deflater {
            c: Compress::new(Compression::new(6), false),
        }
    }

    /// The raw deflate stream of `data`.
    pub fn deflate(&mut self, data: &[u8]) -> Vec<u8> {
        self.c.reset();
        let mut out = Vec::with_capacity(data.len() / 2 + 64);
        loop {
            let consumed = usize::try_from(self.c.total_in()).unwrap_or(usize::MAX);
            let input = data.get(consumed..).unwrap_or_default();
            match self.c.compress_vec(input, &mut out, FlushCompress::Finish) {
                Ok(Status::StreamEnd) => return out,
                // Out of room: grow and go on.
                Ok(_) => out.reserve(out.capacity().max(64)),
                // Compressing into memory cannot fail; should it, the caller stores the
                // entry (an empty result is never smaller than the data).
                Err(_) => return Vec::new(),
            }
        }
    }
}

/// Inflates exactly `size` bytes from `stored`; more or fewer is an error. Never produces
/// more than `size + 1` bytes, whatever the input claims, and inflates in one call (no
/// intermediate buffering).
pub fn inflate(stored: &[u8], size: u64) -> io::Result<Vec<u8>> {
    let size = usize::try_from(size)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "entry too large"))?;
    let (out, status, consumed) = inflate_upto(stored, size + 1, FlushDecompress::Finish)?;
    if out.len() > size {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("inflates to more than the {size} bytes its header says"),
        ));
    }
    if status != Status::StreamEnd || out.len() != size {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("deflate stream ends early ({} of {size} bytes)", out.len()),
        ));
    }
    // The stored size is the stream's: nothing may follow its final block.
    if consumed != stored.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} bytes of trailing data after the deflate stream",
                stored.len() - consumed
            ),
        ));
    }
    Ok(out)
}

/// Inflates at most the first `n` bytes of a deflate stream.
pub fn inflate_prefix(stored: &[u8], n: usize) -> io::Result<Vec<u8>> {
    Ok(inflate_upto(stored, n, FlushDecompress::None)?.0)
}

/// Inflates `stored` until its stream ends, it stops making progress, or `limit` bytes are
/// out; never returns more than `limit` bytes. Also returns the last status and how many
/// bytes of `stored` the stream used.
fn inflate_upto(
    stored: &[u8],
    limit: usize,
    flush: FlushDecompress,
) -> io::Result<(Vec<u8>, Status, usize)> {
    let mut out = Vec::with_capacity(limit);
    let mut z = Decompress::new(false);
    let mut status = Status::Ok;
    while out.len() < limit && status != Status::StreamEnd {
        let before = (z.total_in(), z.total_out());
        status = z
            .decompress_vec(&stored[z.total_in() as usize..], &mut out, flush)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        if (z.total_in(), z.total_out()) == before {
            break;
        }
    }
    out.truncate(limit);
    let consumed = usize::try_from(z.total_in()).unwrap_or(usize::MAX);
    Ok((out, status, consumed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn one_deflater_for_many_entries_gives_what_a_fresh_encoder_gives() {
        let inputs: Vec<Vec<u8>> = vec![
            b"{\"format\":1,\"ending\":{\"exit\":0}}".to_vec(),
            vec![0x5a; 300_000],
            (0..70_000u32)
                .flat_map(|i| i.wrapping_mul(2_654_435_761).to_le_bytes())
                .collect(),
            b"x".to_vec(),
        ];
        let mut d = Deflater::new();
        for data in &inputs {
            let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), Compression::new(6));
            enc.write_all(data).unwrap();
            let fresh = enc.finish().unwrap();
            let reused = d.deflate(data);
            assert_eq!(reused, fresh, "{} bytes", data.len());
            assert_eq!(inflate(&reused, data.len() as u64).unwrap(), *data);
        }
    }

    #[test]
    fn zip_crate_reads_the_canonical_layout() {
        let a = b"hello hello hello hello".to_vec();
        let a_d = deflate(&a);
        let b = b"xyz".to_vec();
        let ma = EntryMeta {
            name: "a.txt",
            method: Method::Deflate,
            crc32: crc32fast::hash(&a),
            size: a.len() as u64,
            stored_size: a_d.len() as u64,
        };
        let mb = EntryMeta {
            name: "dir/b.txt",
            method: Method::Stored,
            crc32: crc32fast::hash(&b),
            size: 3,
            stored_size: 3,
        };
        let mut file = Vec::new();
        write_zip(&mut file, &[(ma, &a_d), (mb, &b)]).unwrap();
        let ranges = check_layout(&file, &[ma, mb]).unwrap();
        assert_eq!(&file[ranges[1].clone()], b"xyz");
        let mut z = zip::ZipArchive::new(std::io::Cursor::new(&file)).unwrap();
        let mut s = String::new();
        z.by_name("a.txt").unwrap().read_to_string(&mut s).unwrap();
        assert_eq!(s.as_bytes(), &a[..]);
        let mut extra = file.clone();
        extra.push(0);
        assert!(check_layout(&extra, &[ma, mb]).is_err());
    }

    #[test]
    fn inflate_is_bounded() {
        let zeros = vec![0u8; 1 << 20];
        let d = deflate(&zeros);
        assert!(inflate(&d, 1000).is_err());
        assert!(inflate(&d, 2 << 20).is_err());
        assert_eq!(inflate(&d, 1 << 20).unwrap().len(), 1 << 20);
    }

    #[test]
    fn nothing_may_follow_the_final_deflate_block() {
        let data = b"hello hello hello hello".to_vec();
        let mut d = deflate(&data);
        assert_eq!(inflate(&d, data.len() as u64).unwrap(), data);
        d.extend_from_slice(b"junk");
        let e = inflate(&d, data.len() as u64).unwrap_err();
        assert_eq!(
            e.to_string(),
            "4 bytes of trailing data after the deflate stream"
        );
    }
}
