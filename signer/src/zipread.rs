//! A strict reader for the central directory of a bundle.
//!
//! Why not the zip crate's reader: verification needs every raw header field (to prove the
//! file is in the one canonical layout, see [`crate::zipfmt`]) and must see duplicate names,
//! which the zip crate's name-indexed map collapses. This reader only walks the
//! end-of-central-directory record and the central directory, with every offset and count
//! checked against the file's size; it never inflates anything.

use crate::zipfmt::{CENTRAL_HEADER_LEN, EOCD_LEN};

const CENTRAL_SIG: u32 = 0x0201_4b50;
const EOCD_SIG: u32 = 0x0605_4b50;

/// One central directory record, raw.
#[derive(Debug, Clone)]
pub struct CdEntry<'a> {
    pub name: &'a [u8],
    pub version_made_by: u16,
    pub flags: u16,
    pub method: u16,
    pub crc32: u32,
    pub stored_size: u64,
    pub size: u64,
    pub external_attrs: u32,
    pub local_offset: u64,
}

/// The file type an entry claims through its attributes and name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Directory,
    Symlink,
    Other,
}

impl CdEntry<'_> {
    pub fn kind(&self) -> EntryKind {
        let host = self.version_made_by >> 8;
        let unix_type = (self.external_attrs >> 16) & 0o170_000;
        if self.name.ends_with(b"/") {
            return EntryKind::Directory;
        }
        // Unix-made entries carry st_mode in the high 16 bits.
        if host == 3 && unix_type != 0 {
            return match unix_type {
                0o100_000 => EntryKind::File,
                0o040_000 => EntryKind::Directory,
                0o120_000 => EntryKind::Symlink,
                _ => EntryKind::Other,
            };
        }
        // MS-DOS directory attribute.
        if self.external_attrs & 0x10 != 0 {
            return EntryKind::Directory;
        }
        EntryKind::File
    }

    /// Traditional (bit 0) or strong (bit 6) encryption, or the AES method (99).
    pub fn encrypted(&self) -> bool {
        self.flags & 0x0001 != 0 || self.flags & 0x0040 != 0 || self.method == 99
    }
}

/// Why the file is not a readable zip archive at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ZipError {
    #[error(
        "no end-of-central-directory record at the end of the file (not a zip, trailing data, or an archive comment)"
    )]
    NoEnd,
    #[error("multi-disk or zip64 archives are not bundles")]
    Unsupported,
    #[error("{count} entries, more than the limit of {limit}")]
    TooManyEntries { count: usize, limit: usize },
    #[error("central directory is out of bounds or malformed at byte {0}")]
    Malformed(u64),
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Reads the central directory. The end record must be the file's last 22 bytes (bundles have
/// no archive comment); more than `max_entries` records is refused before any is read.
pub fn read_central_directory(
    file: &[u8],
    max_entries: usize,
) -> Result<Vec<CdEntry<'_>>, ZipError> {
    let len = file.len();
    if len < EOCD_LEN as usize {
        return Err(ZipError::NoEnd);
    }
    let eocd = &file[len - EOCD_LEN as usize..];
    if u32_at(eocd, 0) != EOCD_SIG || u16_at(eocd, 20) != 0 {
        return Err(ZipError::NoEnd);
    }
    let (disk, cd_disk) = (u16_at(eocd, 4), u16_at(eocd, 6));
    let (count_here, count) = (u16_at(eocd, 8) as usize, u16_at(eocd, 10) as usize);
    let cd_size = u32_at(eocd, 12) as u64;
    let cd_offset = u32_at(eocd, 16) as u64;
    if disk != 0
        || cd_disk != 0
        || count_here != count
        || count == 0xFFFF
        || cd_offset == 0xFFFF_FFFF
    {
        return Err(ZipError::Unsupported);
    }
    if count > max_entries {
        return Err(ZipError::TooManyEntries {
            count,
            limit: max_entries,
        });
    }
    let eocd_at = (len - EOCD_LEN as usize) as u64;
    if cd_offset.checked_add(cd_size) != Some(eocd_at) {
        return Err(ZipError::Malformed(cd_offset));
    }
    let mut entries = Vec::with_capacity(count);
    let mut at = cd_offset as usize;
    let end = eocd_at as usize;
    for _ in 0..count {
        if end - at.min(end) < CENTRAL_HEADER_LEN as usize || u32_at(file, at) != CENTRAL_SIG {
            return Err(ZipError::Malformed(at as u64));
        }
        let h = &file[at..];
        let name_len = u16_at(h, 28) as usize;
        let extra_len = u16_at(h, 30) as usize;
        let comment_len = u16_at(h, 32) as usize;
        let total = CENTRAL_HEADER_LEN as usize + name_len + extra_len + comment_len;
        if end - at < total {
            return Err(ZipError::Malformed(at as u64));
        }
        let name_start = at + CENTRAL_HEADER_LEN as usize;
        entries.push(CdEntry {
            name: &file[name_start..name_start + name_len],
            version_made_by: u16_at(h, 4),
            flags: u16_at(h, 8),
            method: u16_at(h, 10),
            crc32: u32_at(h, 16),
            stored_size: u32_at(h, 20) as u64,
            size: u32_at(h, 24) as u64,
            external_attrs: u32_at(h, 38),
            local_offset: u32_at(h, 42) as u64,
        });
        at += total;
    }
    if at != end {
        return Err(ZipError::Malformed(at as u64));
    }
    Ok(entries)
}
