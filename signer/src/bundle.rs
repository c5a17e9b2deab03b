//! Signed bundles: writing ([`BundleBuilder`], [`pack_dir`]) and verifying ([`verify_bytes`],
//! [`verify_file`]). The format is specified in `docs/bundle-format.md`.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::fsutil::{self, FileError};
use crate::keys::{Fingerprint, KeyPair, PublicKey, validate_key_name};
use crate::manifest::{FORMAT_VERSION, MAX_MANIFEST_BYTES, Manifest, ManifestError};
use crate::paths::{self, MANIFEST, PathError, SIGNATURE};
use crate::zipfmt::{self, EntryMeta, Method};
use crate::zipread::{self, EntryKind, ZipError};

/// The domain-separation prefix of the signed statement: a bundle signature can never be
/// taken for any other kind of RJS signature (requests, answers, announcements).
pub const BUNDLE_DOMAIN: &str = "RJS-BUNDLE-SIGNATURE-V1";
/// The only signature algorithm.
pub const ALGORITHM: &str = "ed25519";
/// Largest signature entry accepted.
pub const MAX_SIGNATURE_ENTRY: u64 = 512 * 1024;
/// The WebAssembly module header: magic `\0asm` and version 1 (core modules only).
pub const WASM_HEADER: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00];

/// What tells one kind of signed archive from another (bundles here, answer archives in
/// [`crate::answer`]): the first line of the signed statement, and what the signature entry's
/// `signer_name` must be.
pub(crate) struct Domain {
    pub(crate) prefix: &'static str,
    pub(crate) signer_name_ok: fn(&str) -> bool,
    /// What a valid signer name is, for the error message ("a valid key name").
    pub(crate) signer_name_is: &'static str,
}

fn valid_signer_key_name(name: &str) -> bool {
    validate_key_name(name).is_ok()
}

/// Bundles: signed by an author, whose signer name is a key name.
pub(crate) const BUNDLE: Domain = Domain {
    prefix: BUNDLE_DOMAIN,
    signer_name_ok: valid_signer_key_name,
    signer_name_is: "a valid key name",
};

/// Limits applied while verifying. Reading stops as soon as one is crossed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyLimits {
    /// Size of the bundle file.
    pub max_bundle_bytes: u64,
    /// Entries, the signature entry included.
    pub max_entries: usize,
    /// Uncompressed bytes of all entries together.
    pub max_total_bytes: u64,
    /// Uncompressed size / stored size of any deflated entry.
    pub max_ratio: u64,
}

impl Default for VerifyLimits {
    fn default() -> Self {
        VerifyLimits {
            max_bundle_bytes: 256 * 1024 * 1024,
            max_entries: paths::MAX_ENTRIES,
            max_total_bytes: 256 * 1024 * 1024,
            max_ratio: 100,
        }
    }
}

/// Why a bundle was refused. Each rule of `docs/bundle-format.md` has its own variant; see
/// [`VerifyError::rule`] for a stable short name and [`VerifyError::entry`] for the entry.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("bundle is {size} bytes, more than the limit of {limit}")]
    BundleTooLarge { size: u64, limit: u64 },
    #[error("not a valid bundle archive")]
    Zip(#[source] ZipError),
    #[error("entry name is not UTF-8: {name:?}")]
    NameNotUtf8 { name: String },
    #[error("entry {name:?}")]
    BadName {
        name: String,
        #[source]
        reason: PathError,
    },
    #[error("entry {name:?} is a {kind}, only regular files are allowed")]
    NotRegular { name: String, kind: &'static str },
    #[error("entry {name:?} appears more than once (names are compared case-insensitively)")]
    Duplicate { name: String },
    #[error("entry {name:?} is encrypted")]
    Encrypted { name: String },
    #[error(
        "entry {name:?} uses compression method {method}; only stored (0) and deflate (8) are allowed"
    )]
    Compression { name: String, method: u16 },
    #[error(
        "entry {name:?} is {size} bytes uncompressed: entries total more than the limit of {limit}"
    )]
    TooManyBytes { name: String, size: u64, limit: u64 },
    #[error(
        "entry {name:?} compresses {ratio}:1, beyond the limit of {limit}:1 (compression bomb?)"
    )]
    Ratio {
        name: String,
        ratio: u64,
        limit: u64,
    },
    #[error("the signature entry {SIGNATURE:?} is missing: the bundle is unsigned")]
    Unsigned,
    #[error("entries are not in canonical order: {0}")]
    Order(String),
    #[error("archive layout")]
    Layout(#[source] zipfmt::LayoutError),
    #[error("signature entry is malformed: {0}")]
    SignatureEntry(String),
    #[error("signature entry: unsupported format {0} or algorithm")]
    SignatureAlgorithm(String),
    #[error("signer public key is invalid: {0}")]
    BadKey(String),
    #[error("signature is {0} bytes, an ed25519 signature is 64")]
    SignatureLength(usize),
    #[error("signature entry names fingerprint {claimed} but the key's is {actual}")]
    FingerprintMismatch {
        claimed: String,
        actual: Fingerprint,
    },
    #[error("entry {name:?} is not covered by the signature")]
    Uncovered { name: String },
    #[error("entry {name:?} is covered by the signature but missing from the archive")]
    Missing { name: String },
    #[error("entry {name:?}: its {field} differs from the signed value")]
    Mismatch { name: String, field: &'static str },
    #[error("entry {name:?} was changed after signing (SHA-256 differs)")]
    Changed { name: String },
    #[error("the signature does not verify with the signer's key {fingerprint}")]
    BadSignature { fingerprint: Fingerprint },
    #[error("entry {name:?} is corrupt: {why}")]
    Corrupt { name: String, why: String },
    #[error("{MANIFEST} is missing")]
    NoManifest,
    #[error(transparent)]
    Manifest(ManifestError),
    #[error("the manifest names module {name:?}, which is not in the bundle")]
    NoModule { name: String },
    #[error("the manifest names input {name:?}, which is not in the bundle")]
    NoInput { name: String },
    #[error("entry {name:?} is not named by the manifest (neither module nor input)")]
    Undeclared { name: String },
    #[error("module {name:?} is not a WebAssembly core module (bad header)")]
    NotWasm { name: String },
    #[error("module {name:?} cannot run on the grid's nodes")]
    BadModule {
        name: String,
        #[source]
        reason: crate::wasm::ModuleError,
    },
    #[error("the manifest names input folder {name:?}, which holds no file in the bundle")]
    EmptyFolder { name: String },
    #[error("entry {name:?} is inside {file:?}, which is a file")]
    InsideFile { name: String, file: String },
}

impl VerifyError {
    /// A stable, short name of the rule that was broken (for scripts and `--json`).
    pub fn rule(&self) -> &'static str {
        use VerifyError::*;
        match self {
            BundleTooLarge { .. } => "bundle-too-large",
            Zip(ZipError::TooManyEntries { .. }) => "too-many-entries",
            Zip(_) => "not-a-bundle-zip",
            NameNotUtf8 { .. } => "name-not-utf8",
            BadName { reason, .. } => path_rule(reason),
            NotRegular { .. } => "not-regular-file",
            Duplicate { .. } => "duplicate-name",
            Encrypted { .. } => "encrypted-entry",
            Compression { .. } => "compression-method",
            TooManyBytes { .. } => "too-many-bytes",
            Ratio { .. } => "compression-ratio",
            Unsigned => "unsigned",
            Order(_) => "entry-order",
            Layout(_) => "non-canonical-layout",
            SignatureEntry(_) => "malformed-signature-entry",
            SignatureAlgorithm(_) => "signature-algorithm",
            BadKey(_) => "bad-key",
            SignatureLength(_) => "signature-length",
            FingerprintMismatch { .. } => "fingerprint-mismatch",
            Uncovered { .. } => "uncovered-entry",
            Missing { .. } => "missing-entry",
            Mismatch { .. } => "entry-metadata-mismatch",
            Changed { .. } => "changed-entry",
            BadSignature { .. } => "bad-signature",
            Corrupt { .. } => "corrupt-entry",
            NoManifest => "no-manifest",
            Manifest(ManifestError::UnknownVersion(_)) => "unknown-format-version",
            Manifest(ManifestError::Json(_)) => "invalid-manifest-json",
            Manifest(ManifestError::UnknownField { .. }) => "unknown-manifest-field",
            Manifest(_) => "invalid-manifest",
            NoModule { .. } => "missing-module",
            NoInput { .. } => "missing-input",
            Undeclared { .. } => "undeclared-entry",
            NotWasm { .. } => "not-wasm",
            BadModule { .. } => "bad-module",
            EmptyFolder { .. } => "missing-input",
            InsideFile { .. } => "file-folder-clash",
        }
    }

    /// The entry the error is about, if it is about one.
    pub fn entry(&self) -> Option<&str> {
        use VerifyError::*;
        match self {
            NameNotUtf8 { name }
            | BadName { name, .. }
            | NotRegular { name, .. }
            | Duplicate { name }
            | Encrypted { name }
            | Compression { name, .. }
            | TooManyBytes { name, .. }
            | Ratio { name, .. }
            | Uncovered { name }
            | Missing { name }
            | Mismatch { name, .. }
            | Changed { name }
            | Corrupt { name, .. }
            | NoModule { name }
            | NoInput { name }
            | Undeclared { name }
            | NotWasm { name }
            | BadModule { name, .. }
            | EmptyFolder { name }
            | InsideFile { name, .. } => Some(name),
            NoManifest | Manifest(_) => Some(MANIFEST),
            SignatureEntry(_)
            | SignatureAlgorithm(_)
            | BadKey(_)
            | SignatureLength(_)
            | FingerprintMismatch { .. }
            | BadSignature { .. }
            | Unsigned => Some(SIGNATURE),
            _ => None,
        }
    }
}

/// The rule name of an entry name that breaks the name rules.
pub(crate) fn path_rule(reason: &PathError) -> &'static str {
    match reason {
        PathError::Absolute => "absolute-path",
        PathError::Backslash => "backslash-path",
        PathError::DriveLetter => "drive-letter-path",
        PathError::ParentDir => "parent-dir-path",
        _ => "bad-name",
    }
}

/// One signed entry as listed in the signature entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedEntry {
    pub name: String,
    /// `stored` or `deflate`.
    pub method: String,
    /// CRC-32 of the uncompressed bytes, 8 lowercase hex digits.
    pub crc32: String,
    /// Uncompressed size.
    pub size: u64,
    /// Size of the bytes as stored in the zip.
    pub stored_size: u64,
    /// SHA-256 of the stored bytes, 64 lowercase hex digits.
    pub sha256: String,
}

/// The signature entry (`rjs-signature.json`), in its canonical JSON form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureDoc {
    pub format: u32,
    pub algorithm: String,
    /// Standard base64 of the 32-byte ed25519 public key.
    pub public_key: String,
    pub fingerprint: String,
    /// The signer's self-declared label (the key name); informational, but signed.
    pub signer_name: String,
    /// Unix seconds.
    pub signed_at: u64,
    pub entries: Vec<SignedEntry>,
    /// Standard base64 of the 64-byte signature over [`SignatureDoc::statement`].
    pub signature: String,
}

impl SignedEntry {
    /// How the signature entry lists an entry: its metadata, and the SHA-256 of `stored`, its
    /// bytes as stored.
    pub fn new(meta: &EntryMeta<'_>, stored: &[u8]) -> SignedEntry {
        SignedEntry {
            name: meta.name.to_owned(),
            method: meta.method.as_str().to_owned(),
            crc32: format!("{:08x}", meta.crc32),
            size: meta.size,
            stored_size: meta.stored_size,
            sha256: hex(&Sha256::digest(stored)),
        }
    }
}

impl SignatureDoc {
    /// The signature entry listing `entries`, signed by `key` over the statement under
    /// `domain` (the bundle's is [`BUNDLE_DOMAIN`]).
    pub fn sign(
        key: &KeyPair,
        domain: &str,
        signer_name: &str,
        signed_at: u64,
        entries: Vec<SignedEntry>,
    ) -> SignatureDoc {
        let public = key.public();
        let mut doc = SignatureDoc {
            format: FORMAT_VERSION,
            algorithm: ALGORITHM.to_owned(),
            public_key: public.to_base64(),
            fingerprint: public.fingerprint().to_string(),
            signer_name: signer_name.to_owned(),
            signed_at,
            entries,
            signature: String::new(),
        };
        doc.signature = B64.encode(key.sign(&doc.statement_in(domain)));
        doc
    }

    /// The exact bytes that are signed (see `docs/bundle-format.md`, "Signed statement").
    pub fn statement(&self) -> Vec<u8> {
        self.statement_in(BUNDLE_DOMAIN)
    }

    /// The statement with another domain-separation prefix as its first line (answer
    /// archives use `RJS-ANSWER-SIGNATURE-V1`, see `docs/answer-format.md`).
    pub fn statement_in(&self, domain: &str) -> Vec<u8> {
        let mut s = String::with_capacity(256 + self.entries.len() * 128);
        let _ = write!(
            s,
            "{domain}\nformat {}\nalgorithm {}\npublic-key {}\nsigner-name {}\nsigned-at {}\nentries {}\n",
            self.format,
            self.algorithm,
            self.public_key,
            self.signer_name,
            self.signed_at,
            self.entries.len()
        );
        for e in &self.entries {
            let _ = writeln!(
                s,
                "{} {} {} {} {} {}",
                e.name, e.method, e.crc32, e.size, e.stored_size, e.sha256
            );
        }
        s.into_bytes()
    }
}

/// Who signed a verified bundle, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signer {
    pub public_key: PublicKey,
    pub fingerprint: Fingerprint,
    /// The label the signer gave their key (self-declared: identify authors by key).
    pub name: String,
    /// Unix seconds, as claimed by the signer.
    pub signed_at: u64,
}

/// Facts about one verified entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryInfo {
    pub name: String,
    pub method: Method,
    pub size: u64,
    pub stored_size: u64,
    pub crc32: u32,
    /// SHA-256 of the stored bytes (what the signature covers).
    pub stored_sha256: [u8; 32],
}

/// What [`SignedBundle`] and [`VerifiedBundle`] both tell: the manifest, the signer and the
/// entries (both hold these fields under these names).
macro_rules! signed_accessors {
    () => {
        pub fn manifest(&self) -> &Manifest {
            &self.manifest
        }
        /// The manifest exactly as signed.
        pub fn manifest_bytes(&self) -> &[u8] {
            &self.manifest_bytes
        }
        pub fn signer(&self) -> &Signer {
            &self.signer
        }
        /// Every entry except the signature entry, in bundle order.
        pub fn entries(&self) -> &[EntryInfo] {
            &self.entries
        }
    };
}

/// A bundle that passed every check. It can only be made by [`verify_bytes`], so holding one
/// means its manifest, module and inputs are exactly what its signer signed.
#[derive(Debug, Clone)]
pub struct VerifiedBundle {
    manifest: Manifest,
    manifest_bytes: Vec<u8>,
    signer: Signer,
    module: Vec<u8>,
    module_sha256: [u8; 32],
    inputs: Vec<(String, Vec<u8>)>,
    entries: Vec<EntryInfo>,
}

/// What a [`VerifiedBundle`] holds, taken out without copying (see
/// [`VerifiedBundle::into_parts`]).
#[derive(Debug, Clone)]
pub struct BundleParts {
    pub manifest: Manifest,
    pub signer: Signer,
    pub module: Vec<u8>,
    pub module_sha256: [u8; 32],
    pub inputs: Vec<(String, Vec<u8>)>,
}

impl VerifiedBundle {
    /// The manifest, signer, module and inputs, moved out (a runner needs them owned).
    pub fn into_parts(self) -> BundleParts {
        BundleParts {
            manifest: self.manifest,
            signer: self.signer,
            module: self.module,
            module_sha256: self.module_sha256,
            inputs: self.inputs,
        }
    }

    signed_accessors!();

    /// The WebAssembly module named by the manifest's `entry`.
    pub fn module(&self) -> &[u8] {
        &self.module
    }
    /// SHA-256 of the module's bytes (the key for compiled-module caches).
    pub fn module_sha256(&self) -> &[u8; 32] {
        &self.module_sha256
    }
    /// The input files (bundle path, bytes), in bundle order.
    pub fn inputs(&self) -> &[(String, Vec<u8>)] {
        &self.inputs
    }
}

/// The SHA-256 of a bundle file: its content address (the bundle id).
pub fn bundle_id(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Whether `s` is `len` lowercase hex digits (the form [`hex`] writes).
pub fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Whether `s` is a SHA-256 in lowercase hex (a bundle id, a blob name).
pub fn is_sha256_hex(s: &str) -> bool {
    is_lower_hex(s, 64)
}

pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Reads a bundle file (refusing one over `limits.max_bundle_bytes` before reading it) and
/// verifies it.
pub fn verify_file(path: &Path, limits: &VerifyLimits) -> Result<VerifiedBundle, VerifyFileError> {
    let bytes = fsutil::read_bounded(path, limits.max_bundle_bytes).map_err(|e| match e {
        FileError::TooLarge { limit, .. } => VerifyFileError::Verify(VerifyError::BundleTooLarge {
            size: std::fs::metadata(path)
                .map(|m| m.len())
                .unwrap_or(limit + 1),
            limit,
        }),
        e => VerifyFileError::Read(e),
    })?;
    verify_bytes(&bytes, limits).map_err(VerifyFileError::Verify)
}

/// [`verify_file`]'s error: the file could not be read, or it was read and refused.
#[derive(Debug, thiserror::Error)]
pub enum VerifyFileError {
    #[error(transparent)]
    Read(FileError),
    #[error(transparent)]
    Verify(VerifyError),
}

/// Verifies a bundle held in memory completely: [`verify_signed`], then
/// [`SignedBundle::extract`] (every entry inflated and checked).
pub fn verify_bytes(bytes: &[u8], limits: &VerifyLimits) -> Result<VerifiedBundle, VerifyError> {
    verify_signed(bytes, limits)?.extract()
}

/// Verifies everything but the inflation of the module and inputs: the archive's structure
/// and limits, the canonical layout, coverage, every stored byte's SHA-256, the signature, the
/// manifest and what it names, the module's header. Nothing but the manifest and the module's
/// first 8 bytes is inflated, and only after the central directory has passed the
/// entry-count, size and ratio limits and the signature has verified.
pub fn verify_signed<'a>(
    bytes: &'a [u8],
    limits: &VerifyLimits,
) -> Result<SignedBundle<'a>, VerifyError> {
    if bytes.len() as u64 > limits.max_bundle_bytes {
        return Err(VerifyError::BundleTooLarge {
            size: bytes.len() as u64,
            limit: limits.max_bundle_bytes,
        });
    }
    let SignedArchive {
        entries,
        ranges,
        signer,
    } = verify_archive(bytes, limits, &BUNDLE)?;

    // 6. The manifest (inflated and checked now) and what it names.
    let find = |name: &str| entries.iter().position(|e| e.name == name);
    let mi = find(MANIFEST).ok_or(VerifyError::NoManifest)?;
    if entries[mi].size > MAX_MANIFEST_BYTES {
        return Err(VerifyError::Manifest(ManifestError::TooLarge));
    }
    let manifest_bytes = inflate_entry(bytes, &entries[mi], &ranges[mi])?;
    let manifest = Manifest::parse(&manifest_bytes).map_err(VerifyError::Manifest)?;
    let module_index = find(&manifest.entry).ok_or_else(|| VerifyError::NoModule {
        name: manifest.entry.clone(),
    })?;
    let head = entry_prefix(
        bytes,
        &entries[module_index],
        &ranges[module_index],
        WASM_HEADER.len(),
    );
    if head.as_deref() != Some(&WASM_HEADER[..]) {
        return Err(VerifyError::NotWasm {
            name: manifest.entry.clone(),
        });
    }
    check_no_file_holds_entries(&entries)?;
    let mut input_indices = Vec::with_capacity(manifest.inputs.len());
    for input in &manifest.inputs {
        if input.ends_with('/') {
            let before = input_indices.len();
            input_indices.extend(
                entries
                    .iter()
                    .enumerate()
                    .filter(|(i, e)| *i != mi && e.name.starts_with(input.as_str()))
                    .map(|(i, _)| i),
            );
            if input_indices.len() == before {
                return Err(VerifyError::EmptyFolder {
                    name: input.clone(),
                });
            }
        } else {
            input_indices.push(find(input).ok_or_else(|| VerifyError::NoInput {
                name: input.clone(),
            })?);
        }
    }
    input_indices.sort_unstable();
    input_indices.dedup();
    if let Some(e) = entries.iter().enumerate().find_map(|(i, e)| {
        (i != mi && i != module_index && input_indices.binary_search(&i).is_err()).then_some(e)
    }) {
        return Err(VerifyError::Undeclared {
            name: e.name.clone(),
        });
    }
    Ok(SignedBundle {
        bytes,
        ranges,
        entries,
        manifest,
        manifest_bytes,
        signer,
        module_index,
        input_indices,
    })
}

/// No entry's path runs through another entry, as `data` and `data/a.txt` would: a node could
/// not write both (one would have to be a file and a folder at once).
fn check_no_file_holds_entries(entries: &[EntryInfo]) -> Result<(), VerifyError> {
    let files: std::collections::HashSet<String> = entries
        .iter()
        .map(|e| e.name.to_ascii_lowercase())
        .collect();
    for e in entries {
        let lower = e.name.to_ascii_lowercase();
        for (cut, _) in lower.match_indices('/') {
            if files.contains(&lower[..cut]) {
                return Err(VerifyError::InsideFile {
                    name: e.name.clone(),
                    file: e.name[..cut].to_owned(),
                });
            }
        }
    }
    Ok(())
}

/// A signed archive whose structure, limits, layout, signature entry, coverage, stored bytes
/// and signature have been verified under some [`Domain`] (steps 2-9 of
/// `docs/bundle-format.md`, "Verification"). What its entries must be is the caller's rule.
pub(crate) struct SignedArchive {
    /// Every entry but the signature entry, in archive order.
    pub(crate) entries: Vec<EntryInfo>,
    /// Where each entry's stored bytes are in the file.
    pub(crate) ranges: Vec<std::ops::Range<usize>>,
    /// The signature entry's key, signer name and time.
    pub(crate) signer: Signer,
}

/// Verifies everything that does not depend on what the archive is for: the central
/// directory against `limits` (nothing is inflated), canonical order and layout, the signature
/// entry, coverage, every stored byte's SHA-256 and the signature over `domain`'s statement.
/// The caller has checked the file's size.
pub(crate) fn verify_archive(
    bytes: &[u8],
    limits: &VerifyLimits,
    domain: &Domain,
) -> Result<SignedArchive, VerifyError> {
    let cd =
        zipread::read_central_directory(bytes, limits.max_entries).map_err(VerifyError::Zip)?;
    let names = check_entries(&cd, limits)?;
    let sig_index = check_order(&names)?;
    let metas: Vec<EntryMeta<'_>> = cd
        .iter()
        .zip(&names)
        .map(|(e, name)| EntryMeta {
            name,
            method: Method::from_code(e.method).unwrap_or(Method::Stored),
            crc32: e.crc32,
            size: e.size,
            stored_size: e.stored_size,
        })
        .collect();
    let mut ranges = zipfmt::check_layout(bytes, &metas).map_err(VerifyError::Layout)?;
    let sig = read_signature_entry(&bytes[ranges[sig_index].clone()], &metas[sig_index], domain)?;
    let covered = &metas[..sig_index];
    check_coverage(&sig.doc, covered)?;

    // Step 5: every stored byte against its signed SHA-256, then the signature itself.
    let entries = hash_entries(
        bytes,
        covered,
        &ranges,
        &sig.doc,
        domain.prefix,
        &sig.public_key,
        &sig.signature,
    )?;
    ranges.truncate(sig_index);
    Ok(SignedArchive {
        entries,
        ranges,
        signer: Signer {
            public_key: sig.public_key,
            fingerprint: sig.public_key.fingerprint(),
            name: sig.doc.signer_name,
            signed_at: sig.doc.signed_at,
        },
    })
}

/// Step 1 of [`verify_archive`], every entry on its own: name, kind, uniqueness, encryption,
/// method, sizes. Returns the entries' names, in archive order.
fn check_entries<'a>(
    cd: &[zipread::CdEntry<'a>],
    limits: &VerifyLimits,
) -> Result<Vec<&'a str>, VerifyError> {
    let mut names: Vec<&str> = Vec::with_capacity(cd.len());
    let mut seen = HashSet::with_capacity(cd.len());
    let mut total = 0u64;
    for e in cd {
        let Ok(name) = std::str::from_utf8(e.name) else {
            return Err(VerifyError::NameNotUtf8 {
                name: String::from_utf8_lossy(e.name).into_owned(),
            });
        };
        match e.kind() {
            EntryKind::File => {}
            kind => {
                return Err(VerifyError::NotRegular {
                    name: name.to_owned(),
                    kind: match kind {
                        EntryKind::Directory => "directory",
                        EntryKind::Symlink => "symbolic link",
                        _ => "special file",
                    },
                });
            }
        }
        paths::check_entry_name(name).map_err(|reason| VerifyError::BadName {
            name: name.to_owned(),
            reason,
        })?;
        if !seen.insert(name.to_ascii_lowercase()) {
            return Err(VerifyError::Duplicate {
                name: name.to_owned(),
            });
        }
        if e.encrypted() {
            return Err(VerifyError::Encrypted {
                name: name.to_owned(),
            });
        }
        let Some(method) = Method::from_code(e.method) else {
            return Err(VerifyError::Compression {
                name: name.to_owned(),
                method: e.method,
            });
        };
        total = total.saturating_add(e.size);
        if total > limits.max_total_bytes {
            return Err(VerifyError::TooManyBytes {
                name: name.to_owned(),
                size: e.size,
                limit: limits.max_total_bytes,
            });
        }
        if method == Method::Deflate {
            let ratio = e.size / e.stored_size.max(1);
            if ratio > limits.max_ratio {
                return Err(VerifyError::Ratio {
                    name: name.to_owned(),
                    ratio,
                    limit: limits.max_ratio,
                });
            }
        } else if e.size != e.stored_size {
            return Err(VerifyError::Corrupt {
                name: name.to_owned(),
                why: "stored entry whose sizes differ".into(),
            });
        }
        names.push(name);
    }
    Ok(names)
}

/// Step 2 of [`verify_archive`], order: covered entries sorted by name, the signature entry
/// last (whose index it returns). The caller then checks that the whole file is exactly the
/// canonical layout.
fn check_order(names: &[&str]) -> Result<usize, VerifyError> {
    let Some(sig_index) = names.iter().position(|n| *n == SIGNATURE) else {
        return Err(VerifyError::Unsigned);
    };
    if sig_index != names.len() - 1 {
        return Err(VerifyError::Order(format!(
            "{SIGNATURE} must be the last entry"
        )));
    }
    if let Some(w) = names[..sig_index].windows(2).find(|w| w[0] >= w[1]) {
        return Err(VerifyError::Order(format!(
            "{:?} comes before {:?}",
            w[0], w[1]
        )));
    }
    Ok(sig_index)
}

/// A signature entry that is well-formed: canonical JSON, a supported algorithm, a valid key
/// matching its fingerprint, a 64-byte signature (not verified yet), a valid signer name.
struct SignatureEntry {
    doc: SignatureDoc,
    public_key: PublicKey,
    signature: Vec<u8>,
}

/// Step 3 of [`verify_archive`], the signature entry: its stored bytes `sig_bytes` as described
/// by `sig_meta`.
fn read_signature_entry(
    sig_bytes: &[u8],
    sig_meta: &EntryMeta<'_>,
    domain: &Domain,
) -> Result<SignatureEntry, VerifyError> {
    if sig_meta.method != Method::Stored || sig_meta.size > MAX_SIGNATURE_ENTRY {
        return Err(VerifyError::SignatureEntry(format!(
            "must be stored uncompressed and at most {MAX_SIGNATURE_ENTRY} bytes"
        )));
    }
    if crc32fast::hash(sig_bytes) != sig_meta.crc32 {
        return Err(VerifyError::Corrupt {
            name: SIGNATURE.to_owned(),
            why: "CRC-32 mismatch".into(),
        });
    }
    let doc: SignatureDoc = serde_json::from_slice(sig_bytes)
        .map_err(|e| VerifyError::SignatureEntry(format!("invalid JSON: {e}")))?;
    if serde_json::to_vec(&doc).ok().as_deref() != Some(sig_bytes) {
        return Err(VerifyError::SignatureEntry(
            "not in canonical form (compact JSON, fields in the specified order)".into(),
        ));
    }
    if doc.format != FORMAT_VERSION || doc.algorithm != ALGORITHM {
        return Err(VerifyError::SignatureAlgorithm(format!(
            "format {} / {}",
            doc.format, doc.algorithm
        )));
    }
    let key_raw = B64
        .decode(&doc.public_key)
        .map_err(|e| VerifyError::BadKey(format!("bad base64 ({e})")))?;
    let public_key =
        PublicKey::from_bytes(&key_raw).map_err(|e| VerifyError::BadKey(e.to_string()))?;
    let signature = B64
        .decode(&doc.signature)
        .map_err(|e| VerifyError::SignatureEntry(format!("signature is not base64 ({e})")))?;
    if signature.len() != 64 {
        return Err(VerifyError::SignatureLength(signature.len()));
    }
    let fingerprint = public_key.fingerprint();
    if doc.fingerprint != fingerprint.to_string() {
        return Err(VerifyError::FingerprintMismatch {
            claimed: doc.fingerprint.clone(),
            actual: fingerprint,
        });
    }
    if !(domain.signer_name_ok)(&doc.signer_name) {
        return Err(VerifyError::SignatureEntry(format!(
            "signer name {:?} is not {}",
            doc.signer_name, domain.signer_name_is
        )));
    }
    Ok(SignatureEntry {
        doc,
        public_key,
        signature,
    })
}

/// Step 4 of [`verify_archive`], coverage: the listing names exactly the `covered` entries
/// (all but the signature entry), in archive order, with the same metadata.
fn check_coverage(doc: &SignatureDoc, covered: &[EntryMeta<'_>]) -> Result<(), VerifyError> {
    let listed: BTreeMap<&str, &SignedEntry> =
        doc.entries.iter().map(|e| (e.name.as_str(), e)).collect();
    if listed.len() != doc.entries.len() {
        return Err(VerifyError::SignatureEntry(
            "an entry is listed twice".into(),
        ));
    }
    for meta in covered {
        if !listed.contains_key(meta.name) {
            return Err(VerifyError::Uncovered {
                name: meta.name.to_owned(),
            });
        }
    }
    let present: HashSet<&str> = covered.iter().map(|m| m.name).collect();
    for e in &doc.entries {
        if !present.contains(e.name.as_str()) {
            return Err(VerifyError::Missing {
                name: e.name.clone(),
            });
        }
    }
    for (i, meta) in covered.iter().enumerate() {
        let signed = listed[meta.name];
        let mismatch = |field| VerifyError::Mismatch {
            name: meta.name.to_owned(),
            field,
        };
        if doc.entries[i].name != meta.name {
            return Err(VerifyError::SignatureEntry(
                "entries are not listed in bundle order".into(),
            ));
        }
        if Method::parse(&signed.method) != Some(meta.method) {
            return Err(mismatch("compression method"));
        }
        if signed.size != meta.size {
            return Err(mismatch("size"));
        }
        if signed.stored_size != meta.stored_size {
            return Err(mismatch("stored size"));
        }
        if signed.crc32 != format!("{:08x}", meta.crc32) {
            return Err(mismatch("CRC-32"));
        }
    }
    Ok(())
}

/// A bundle whose signature, structure and manifest have been verified: every stored byte is
/// exactly what the signer signed. The module and inputs are not inflated yet:
/// [`SignedBundle::extract`] inflates them within their (bounded, signed) sizes and checks
/// their CRC-32s. The web server stops here; a compute node extracts.
#[derive(Debug, Clone)]
pub struct SignedBundle<'a> {
    bytes: &'a [u8],
    ranges: Vec<std::ops::Range<usize>>,
    entries: Vec<EntryInfo>,
    manifest: Manifest,
    manifest_bytes: Vec<u8>,
    signer: Signer,
    module_index: usize,
    input_indices: Vec<usize>,
}

impl SignedBundle<'_> {
    signed_accessors!();

    /// Inflates the module and checks it as a node would before compiling it
    /// ([`crate::wasm::check_module`]: valid with the sandbox's features, WASI preview 1
    /// imports only, a `_start`). What the web server does on upload, after this bundle's
    /// signature has verified.
    pub fn module(&self) -> Result<Vec<u8>, VerifyError> {
        let i = self.module_index;
        let module = inflate_entry(self.bytes, &self.entries[i], &self.ranges[i])?;
        crate::wasm::check_module(&module).map_err(|reason| VerifyError::BadModule {
            name: self.entries[i].name.clone(),
            reason,
        })?;
        Ok(module)
    }

    /// Inflates and checks the module (see [`module`](Self::module)) and the inputs.
    pub fn extract(self) -> Result<VerifiedBundle, VerifyError> {
        let module = self.module()?;
        let mut inputs = Vec::with_capacity(self.input_indices.len());
        for &i in &self.input_indices {
            let data = inflate_entry(self.bytes, &self.entries[i], &self.ranges[i])?;
            inputs.push((self.entries[i].name.clone(), data));
        }
        let module_sha256 = Sha256::digest(&module).into();
        Ok(VerifiedBundle {
            manifest: self.manifest,
            manifest_bytes: self.manifest_bytes,
            signer: self.signer,
            module,
            module_sha256,
            inputs,
            entries: self.entries,
        })
    }
}

/// Inflates one entry within its declared size and checks its CRC-32.
pub(crate) fn inflate_entry(
    bytes: &[u8],
    entry: &EntryInfo,
    range: &std::ops::Range<usize>,
) -> Result<Vec<u8>, VerifyError> {
    let stored = &bytes[range.clone()];
    let corrupt = |why: String| VerifyError::Corrupt {
        name: entry.name.clone(),
        why,
    };
    let data = match entry.method {
        Method::Stored => stored.to_vec(),
        Method::Deflate => {
            zipfmt::inflate(stored, entry.size).map_err(|e| corrupt(e.to_string()))?
        }
    };
    if crc32fast::hash(&data) != entry.crc32 {
        return Err(corrupt("CRC-32 mismatch".into()));
    }
    Ok(data)
}

/// The first `n` bytes of an entry's content (None if it is shorter or does not inflate).
fn entry_prefix(
    bytes: &[u8],
    entry: &EntryInfo,
    range: &std::ops::Range<usize>,
    n: usize,
) -> Option<Vec<u8>> {
    let stored = &bytes[range.clone()];
    match entry.method {
        Method::Stored => stored.get(..n).map(<[u8]>::to_vec),
        Method::Deflate => zipfmt::inflate_prefix(stored, n)
            .ok()
            .filter(|p| p.len() == n),
    }
}

/// Step 5: every stored byte against its signed SHA-256, then the signature itself.
fn hash_entries(
    bytes: &[u8],
    covered: &[EntryMeta<'_>],
    ranges: &[std::ops::Range<usize>],
    doc: &SignatureDoc,
    domain: &str,
    public_key: &PublicKey,
    signature: &[u8],
) -> Result<Vec<EntryInfo>, VerifyError> {
    let mut entries = Vec::with_capacity(covered.len());
    for ((meta, range), signed) in covered.iter().zip(ranges).zip(&doc.entries) {
        let digest: [u8; 32] = Sha256::digest(&bytes[range.clone()]).into();
        if signed.sha256 != hex(&digest) {
            return Err(VerifyError::Changed {
                name: meta.name.to_owned(),
            });
        }
        entries.push(EntryInfo {
            name: meta.name.to_owned(),
            method: meta.method,
            size: meta.size,
            stored_size: meta.stored_size,
            crc32: meta.crc32,
            stored_sha256: digest,
        });
    }
    if !public_key.verify(&doc.statement_in(domain), signature) {
        return Err(VerifyError::BadSignature {
            fingerprint: public_key.fingerprint(),
        });
    }
    Ok(entries)
}

/// Errors while building a bundle.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("entry {name:?}")]
    BadName {
        name: String,
        #[source]
        reason: PathError,
    },
    #[error("entry {0:?} is a reserved name")]
    Reserved(String),
    #[error("entry {0:?} added twice (names are compared case-insensitively)")]
    Duplicate(String),
    #[error("more than {0} entries")]
    TooManyEntries(usize),
    #[error("entries total more than {0} bytes")]
    TooManyBytes(u64),
    #[error("the bundle would be larger than {0} bytes")]
    BundleTooLarge(u64),
    #[error("invalid signer name")]
    SignerName(#[source] crate::keys::KeyError),
}

/// Builds a signed bundle from entries. It checks entry names and the size limits but not
/// the manifest: [`pack_dir`] does that. (Tests use it to craft bundles that are signed but
/// wrong in some other way.)
#[derive(Debug, Default)]
pub struct BundleBuilder {
    entries: BTreeMap<String, Vec<u8>>,
    admitted: Admitted,
}

impl BundleBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an entry. Entries are written sorted by name whatever the order of the calls.
    pub fn add(&mut self, name: &str, data: Vec<u8>) -> Result<&mut Self, BuildError> {
        self.admitted.admit(name, data.len() as u64)?;
        self.entries.insert(name.to_owned(), data);
        Ok(self)
    }

    /// Compresses, lists, signs and lays out the bundle; returns the file's bytes.
    pub fn sign(
        &self,
        key: &KeyPair,
        signer_name: &str,
        signed_at: u64,
    ) -> Result<Vec<u8>, BuildError> {
        validate_key_name(signer_name).map_err(BuildError::SignerName)?;
        let entries: Vec<(&str, &[u8])> = self
            .entries
            .iter()
            .map(|(name, data)| (name.as_str(), data.as_slice()))
            .collect();
        sign_entries(
            &entries,
            &self.admitted,
            &BUNDLE,
            key,
            signer_name,
            signed_at,
        )
    }
}

/// The names and sizes of the entries of an archive being built, checked as they come
/// against the entry-name rules and the verifier's limits.
#[derive(Debug, Default)]
pub(crate) struct Admitted {
    lower: HashSet<String>,
    total: u64,
    limits: VerifyLimits,
}

impl Admitted {
    pub(crate) fn new(limits: VerifyLimits) -> Self {
        Admitted {
            limits,
            ..Admitted::default()
        }
    }

    /// Admits one more entry (not the signature entry, whose name is reserved).
    pub(crate) fn admit(&mut self, name: &str, size: u64) -> Result<(), BuildError> {
        paths::check_entry_name(name).map_err(|reason| BuildError::BadName {
            name: name.to_owned(),
            reason,
        })?;
        if name == SIGNATURE {
            return Err(BuildError::Reserved(name.to_owned()));
        }
        if !self.lower.insert(name.to_ascii_lowercase()) {
            return Err(BuildError::Duplicate(name.to_owned()));
        }
        // The signature entry counts too.
        if self.lower.len() >= self.limits.max_entries {
            return Err(BuildError::TooManyEntries(self.limits.max_entries));
        }
        self.total += size;
        if self.total > self.limits.max_total_bytes {
            return Err(BuildError::TooManyBytes(self.limits.max_total_bytes));
        }
        Ok(())
    }
}

/// Compresses, lists, signs (with `domain`'s statement) and lays out `entries`, which are
/// sorted by name and were all admitted by `admitted`; returns the file's bytes.
pub(crate) fn sign_entries(
    entries: &[(&str, &[u8])],
    admitted: &Admitted,
    domain: &Domain,
    key: &KeyPair,
    signer_name: &str,
    signed_at: u64,
) -> Result<Vec<u8>, BuildError> {
    let limits = &admitted.limits;
    let mut deflated: Vec<Option<Vec<u8>>> = Vec::with_capacity(entries.len());
    let mut deflater = zipfmt::Deflater::new();
    for (_, data) in entries {
        if data.is_empty() {
            deflated.push(None);
            continue;
        }
        let packed = deflater.deflate(data);
        // Store when deflate does not help, or when the ratio would look like a bomb.
        let ratio_ok = (data.len() as u64) / (packed.len() as u64).max(1) <= limits.max_ratio;
        deflated.push((packed.len() < data.len() && ratio_ok).then_some(packed));
    }
    let mut parts: Vec<(EntryMeta<'_>, &[u8])> = Vec::with_capacity(entries.len() + 1);
    for ((name, data), packed) in entries.iter().zip(&deflated) {
        let (method, stored) = match packed {
            Some(p) => (Method::Deflate, p.as_slice()),
            None => (Method::Stored, *data),
        };
        let meta = EntryMeta {
            name,
            method,
            crc32: crc32fast::hash(data),
            size: data.len() as u64,
            stored_size: stored.len() as u64,
        };
        parts.push((meta, stored));
    }
    let listing = parts.iter().map(|(m, s)| SignedEntry::new(m, s)).collect();
    let doc = SignatureDoc::sign(key, domain.prefix, signer_name, signed_at, listing);
    let sig_json = serde_json::to_vec(&doc).unwrap_or_default();
    parts.push((
        EntryMeta {
            name: SIGNATURE,
            method: Method::Stored,
            crc32: crc32fast::hash(&sig_json),
            size: sig_json.len() as u64,
            stored_size: sig_json.len() as u64,
        },
        &sig_json,
    ));
    // The verifier counts the signature entry in the uncompressed total and limits the
    // whole file: refuse here what it would refuse, rather than write an archive that no one
    // can verify (content just under the total limit, or incompressible content).
    if admitted.total + sig_json.len() as u64 > limits.max_total_bytes {
        return Err(BuildError::TooManyBytes(limits.max_total_bytes));
    }
    let file_len: u64 = parts
        .iter()
        .map(|(m, d)| {
            zipfmt::LOCAL_HEADER_LEN
                + zipfmt::CENTRAL_HEADER_LEN
                + 2 * m.name.len() as u64
                + d.len() as u64
        })
        .sum::<u64>()
        + zipfmt::EOCD_LEN;
    if file_len > limits.max_bundle_bytes {
        return Err(BuildError::BundleTooLarge(limits.max_bundle_bytes));
    }
    let mut out = Vec::with_capacity(file_len as usize);
    // Writing into a Vec cannot fail.
    let _ = zipfmt::write_zip(&mut out, &parts);
    Ok(out)
}

/// Errors of [`pack_dir`].
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("reading the job folder")]
    Read(#[from] FileError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("{path} is not a regular file (symbolic links and folders are not packed)")]
    NotRegular { path: PathBuf },
    #[error("{path} is not a WebAssembly core module (bad header)")]
    NotWasm { path: PathBuf },
    #[error("{path} cannot run on the grid's nodes")]
    BadModule {
        path: PathBuf,
        #[source]
        reason: crate::wasm::ModuleError,
    },
    #[error("{path} is a folder: name it {name:?} in `inputs` to pack everything in it")]
    FolderWithoutSlash { path: PathBuf, name: String },
    #[error("the input folder {path} holds no file")]
    EmptyFolder { path: PathBuf },
    #[error("the input folder {path} holds more than {max} files")]
    TooManyFiles { path: PathBuf, max: usize },
    #[error("{path} cannot be packed: its name {name:?} breaks the bundle's path rules")]
    BadName {
        path: PathBuf,
        name: String,
        #[source]
        reason: PathError,
    },
    #[error("building the bundle")]
    Build(#[from] BuildError),
}

/// Reads `JOB_DIR/manifest.json` and the files it names, checks them, and returns the signed
/// bundle's bytes with the parsed manifest. Files not named by the manifest are not packed.
pub fn pack_dir(
    job_dir: &Path,
    key: &KeyPair,
    signer_name: &str,
    signed_at: u64,
) -> Result<(Vec<u8>, Manifest), PackError> {
    let limits = VerifyLimits::default();
    let read_regular = |name: &str, limit: u64| -> Result<Vec<u8>, PackError> {
        let path = job_dir.join(name);
        let meta =
            std::fs::symlink_metadata(&path).map_err(|e| FileError::io("reading", &path, e))?;
        if !meta.file_type().is_file() {
            return Err(PackError::NotRegular { path });
        }
        Ok(fsutil::read_bounded(&path, limit)?)
    };
    let manifest_bytes = read_regular(MANIFEST, MAX_MANIFEST_BYTES)?;
    let manifest = Manifest::parse(&manifest_bytes)?;
    let mut builder = BundleBuilder::new();
    let module = read_regular(&manifest.entry, limits.max_total_bytes)?;
    if !module.starts_with(&WASM_HEADER) {
        return Err(PackError::NotWasm {
            path: job_dir.join(&manifest.entry),
        });
    }
    crate::wasm::check_module(&module).map_err(|reason| PackError::BadModule {
        path: job_dir.join(&manifest.entry),
        reason,
    })?;
    builder.add(MANIFEST, manifest_bytes)?;
    builder.add(&manifest.entry, module)?;
    for input in &manifest.inputs {
        if input.ends_with('/') {
            for name in folder_files(job_dir, input, limits.max_entries)? {
                let data = read_regular(&name, limits.max_total_bytes)?;
                builder.add(&name, data)?;
            }
            continue;
        }
        let path = job_dir.join(input);
        if std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
            return Err(PackError::FolderWithoutSlash {
                path,
                name: format!("{input}/"),
            });
        }
        let data = read_regular(input, limits.max_total_bytes)?;
        builder.add(input, data)?;
    }
    let bytes = builder.sign(key, signer_name, signed_at)?;
    Ok((bytes, manifest))
}

/// The bundle names of every file under the input folder `folder` (`data/`, relative to
/// `job_dir`), in name order, walking sub-folders. A symbolic link, a name that breaks the
/// path rules, an empty folder or more than `max` files is an error.
fn folder_files(job_dir: &Path, folder: &str, max: usize) -> Result<Vec<String>, PackError> {
    let root = job_dir.join(folder);
    let meta = std::fs::symlink_metadata(&root).map_err(|e| FileError::io("reading", &root, e))?;
    if !meta.is_dir() {
        return Err(PackError::NotRegular { path: root });
    }
    let mut names = Vec::new();
    let mut pending = vec![folder.trim_end_matches('/').to_owned()];
    while let Some(dir) = pending.pop() {
        let path = job_dir.join(&dir);
        let listing = std::fs::read_dir(&path).map_err(|e| FileError::io("listing", &path, e))?;
        for item in listing {
            let item = item.map_err(|e| FileError::io("listing", &path, e))?;
            let name = format!("{dir}/{}", item.file_name().to_string_lossy());
            let file = item.path();
            paths::check_entry_name(&name).map_err(|reason| PackError::BadName {
                path: file.clone(),
                name: name.clone(),
                reason,
            })?;
            let kind = item
                .file_type()
                .map_err(|e| FileError::io("reading", &file, e))?;
            if kind.is_dir() {
                pending.push(name);
            } else if kind.is_file() {
                names.push(name);
                if names.len() > max {
                    return Err(PackError::TooManyFiles { path: root, max });
                }
            } else {
                return Err(PackError::NotRegular { path: file });
            }
        }
    }
    if names.is_empty() {
        return Err(PackError::EmptyFolder { path: root });
    }
    names.sort();
    Ok(names)
}
