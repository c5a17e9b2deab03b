//! The web server's configuration file: `--config FILE` (or `RJS_WEBSERVER_CONFIG`), lines of
//! `NAME=VALUE` naming the environment variables every flag already reads (`RJS_STORE`,
//! `RJS_BLOBS`, `RJS_S3_ENDPOINT`, `AWS_ACCESS_KEY_ID`, …) — the format of a systemd
//! `EnvironmentFile=`. A flag on the command line wins over the environment, which wins over
//! the file. The file may hold secrets (the database password, S3 keys), so it must be
//! readable by its owner only.

use std::path::Path;

use rjs_signer::fsutil::{self, FileError};

/// Largest configuration file read.
const MAX_FILE: u64 = 64 * 1024;

/// A configuration file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum EnvFileError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{0} can be read by other users: make it readable by its owner only (chmod 600)")]
    Open(String),
    #[error("{file}, line {line}: {why}")]
    Line {
        file: String,
        line: usize,
        why: String,
    },
}

/// The settings of a configuration file, in order.
pub fn read(path: &Path) -> Result<Vec<(String, String)>, EnvFileError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).map_err(|e| FileError::io("reading", path, e))?;
        if meta.mode() & 0o077 != 0 {
            return Err(EnvFileError::Open(path.display().to_string()));
        }
    }
    let bytes = fsutil::read_bounded(path, MAX_FILE)?;
    let file = path.display().to_string();
    // The line of the first byte that is not UTF-8 (its value is not shown: it may be a
    // secret).
    let text = String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let line = 1 + e.as_bytes()[..at].iter().filter(|b| **b == b'\n').count();
        EnvFileError::Line {
            file: file.clone(),
            line,
            why: "not UTF-8 text".into(),
        }
    })?;
    parse(&text, &file)
}

/// Parses `NAME=VALUE` lines (`#` comments and blank lines skipped; a value may be quoted
/// with `"` or `'`). Names must be ours (`RJS_…`) or the S3 client's (`AWS_…`).
pub fn parse(text: &str, file: &str) -> Result<Vec<(String, String)>, EnvFileError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |why: String| EnvFileError::Line {
            file: file.to_owned(),
            line: i + 1,
            why,
        };
        let Some((name, value)) = line.split_once('=') else {
            return Err(bad("NAME=VALUE expected".into()));
        };
        let name = name.trim();
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
        if !valid || !(name.starts_with("RJS_") || name.starts_with("AWS_")) {
            let shown: String = name.chars().take(64).collect();
            return Err(bad(format!(
                "{shown:?} is not a setting: RJS_… or AWS_… names expected"
            )));
        }
        let value = value.trim();
        let value = ['"', '\'']
            .iter()
            .find_map(|q| value.strip_prefix(*q).and_then(|v| v.strip_suffix(*q)))
            .unwrap_or(value);
        // A NUL byte cannot be in the environment (and setting one would panic, printing
        // the value).
        if value.contains('\0') {
            return Err(bad(format!("{name}'s value holds a NUL byte")));
        }
        out.push((name.to_owned(), value.to_owned()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_comments_and_quotes() {
        let text = "# the shared store\nRJS_STORE=postgres://rjs@db/rjs?sslmode=require\n\n\
                    RJS_STORE_PASSWORD = \"s3cret word\"\nAWS_REGION='eu-west-1'\n";
        assert_eq!(
            parse(text, "f").unwrap(),
            vec![
                (
                    "RJS_STORE".into(),
                    "postgres://rjs@db/rjs?sslmode=require".into()
                ),
                ("RJS_STORE_PASSWORD".into(), "s3cret word".into()),
                ("AWS_REGION".into(), "eu-west-1".into()),
            ]
        );
    }

    #[test]
    fn foreign_names_and_malformed_lines_are_refused() {
        for bad in [
            "PATH=/tmp",
            "LD_PRELOAD=x.so",
            "RJS_STORE",
            "rjs_store=x",
            "=x",
            "RJS_STORE_PASSWORD=s3\0cret",
        ] {
            assert!(
                matches!(parse(bad, "f"), Err(EnvFileError::Line { line: 1, .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_file_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("webserver.env");
        std::fs::write(&f, "RJS_STORE=sqlite\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(read(&f), Err(EnvFileError::Open(_))));
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read(&f).unwrap().len(), 1);
        // Bytes that are not UTF-8 are refused with their line, not changed.
        std::fs::write(&f, b"RJS_STORE=sqlite\nRJS_STORE_PASSWORD=s3\xffcret\n").unwrap();
        let e = read(&f).unwrap_err();
        assert!(matches!(e, EnvFileError::Line { line: 2, .. }), "{e:?}");
        assert!(!e.to_string().contains("cret"), "{e}");
    }
}
