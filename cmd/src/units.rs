//! Sizes written for people, on command lines and in configuration files alike.
//!
//! Grammar: a whole number of bytes, optionally followed by a unit — `K`/`KiB`, `M`/`MiB`,
//! `G`/`GiB` (powers of 1024; `B` for bytes), case-insensitive, surrounding spaces ignored.
//! `123`, `64K`, `256M`, `2KiB`, `1g`. No fractions, signs or spaces inside.

use std::fmt;

/// A size that does not follow the [grammar](self).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SizeError {
    text: String,
    kind: SizeErrorKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SizeErrorKind {
    Syntax,
    TooLarge,
    Zero,
}

impl fmt::Display for SizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = &self.text;
        match self.kind {
            SizeErrorKind::Syntax => write!(
                f,
                "invalid size {text:?}: use bytes or a number with K, M or G (e.g. 1048576, 512K, 64M, 1G)"
            ),
            SizeErrorKind::TooLarge => write!(f, "invalid size {text:?}: too large"),
            SizeErrorKind::Zero => write!(f, "invalid size {text:?}: must be at least 1 byte"),
        }
    }
}

impl std::error::Error for SizeError {}

/// Parses a size (see the [grammar](self)); zero is allowed.
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let err = |kind| SizeError {
        text: text.to_string(),
        kind,
    };
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    if digits.is_empty() {
        return Err(err(SizeErrorKind::Syntax));
    }
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        _ => return Err(err(SizeErrorKind::Syntax)),
    };
    let n: u64 = digits.parse().map_err(|_| err(SizeErrorKind::TooLarge))?;
    n.checked_mul(mult).ok_or(err(SizeErrorKind::TooLarge))
}

/// [`parse_size`] for limits that cannot be zero.
pub fn parse_nonzero_size(text: &str) -> Result<u64, SizeError> {
    match parse_size(text)? {
        0 => Err(SizeError {
            text: text.to_string(),
            kind: SizeErrorKind::Zero,
        }),
        n => Ok(n),
    }
}

/// A clap `value_parser` for size flags (`--max-memory 512M`).
pub fn size_arg(text: &str) -> Result<u64, String> {
    parse_size(text).map_err(|e| e.to_string())
}

/// A clap `value_parser` for size flags that cannot be zero (`--max-bundle 64M`).
pub fn nonzero_size_arg(text: &str) -> Result<u64, String> {
    parse_nonzero_size(text).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grammar() {
        assert_eq!(parse_size("123"), Ok(123));
        assert_eq!(parse_size(" 64K "), Ok(64 << 10));
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("2KiB"), Ok(2048));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("7b"), Ok(7));
        assert_eq!(parse_size("0"), Ok(0));
        for bad in ["", "M", "1.5M", "-1", "1 M", "12T", "lots"] {
            let e = parse_size(bad).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("invalid size {bad:?}: use bytes")),
                "{e}"
            );
        }
        assert!(parse_size("99999999999999G").is_err());
        assert!(parse_size("99999999999999999999999").is_err());
        assert!(parse_nonzero_size("0").is_err());
        assert_eq!(parse_nonzero_size("1"), Ok(1));
    }
}
