//! Names of entries inside a bundle (and of files inside an answer archive).
//!
//! A name is a relative path of at most [`MAX_NAME_BYTES`] bytes, with `/` as the only
//! separator and only the portable characters `A-Z a-z 0-9 . _ -` in its components; no
//! empty, `.` or `..` component. These rules are checked on the raw name, never on a
//! "sanitised" one: the zip crate's `enclosed_name()` would quietly turn `/etc/x` into
//! `etc/x`, and a verifier must refuse such a name instead.

/// The manifest's entry name.
pub const MANIFEST: &str = "manifest.json";
/// The signature entry's name (always the last entry).
pub const SIGNATURE: &str = "rjs-signature.json";
/// Longest entry name.
pub const MAX_NAME_BYTES: usize = 255;
/// Default and hard upper bound on the number of entries in a bundle.
pub const MAX_ENTRIES: usize = 1000;

/// Why an entry name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("empty name")]
    Empty,
    #[error("name longer than {MAX_NAME_BYTES} bytes")]
    TooLong,
    #[error("absolute path")]
    Absolute,
    #[error("backslash in path")]
    Backslash,
    #[error("drive letter or colon in path")]
    DriveLetter,
    #[error("`..` component in path")]
    ParentDir,
    #[error("empty or `.` component in path")]
    BadComponent,
    #[error("character {0:?} not allowed (use A-Z a-z 0-9 . _ - and /)")]
    BadChar(char),
}

/// Whether `name` is a label of 1 to `max` ASCII letters, digits and the `extra` characters,
/// starting with a letter or digit (job names, key names, node ids).
pub fn is_label(name: &str, max: usize, extra: &[char]) -> bool {
    !name.is_empty()
        && name.len() <= max
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || extra.contains(&c))
}

/// Checks one entry name against the rules above.
pub fn check_entry_name(name: &str) -> Result<(), PathError> {
    if name.is_empty() {
        return Err(PathError::Empty);
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(PathError::TooLong);
    }
    if name.contains('\\') {
        return Err(PathError::Backslash);
    }
    if name.starts_with('/') {
        return Err(PathError::Absolute);
    }
    if name.contains(':') {
        return Err(PathError::DriveLetter);
    }
    for component in name.split('/') {
        match component {
            ".." => return Err(PathError::ParentDir),
            "" | "." => return Err(PathError::BadComponent),
            _ => {}
        }
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/')))
    {
        return Err(PathError::BadChar(c));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules() {
        assert_eq!(check_entry_name("a/b-c_d.e"), Ok(()));
        assert_eq!(check_entry_name(""), Err(PathError::Empty));
        assert_eq!(check_entry_name("/etc/passwd"), Err(PathError::Absolute));
        assert_eq!(check_entry_name("a\\b"), Err(PathError::Backslash));
        assert_eq!(check_entry_name("C:x"), Err(PathError::DriveLetter));
        assert_eq!(check_entry_name("a/../b"), Err(PathError::ParentDir));
        assert_eq!(check_entry_name(".."), Err(PathError::ParentDir));
        assert_eq!(check_entry_name("a//b"), Err(PathError::BadComponent));
        assert_eq!(check_entry_name("a/"), Err(PathError::BadComponent));
        assert_eq!(check_entry_name("./a"), Err(PathError::BadComponent));
        assert_eq!(check_entry_name("a b"), Err(PathError::BadChar(' ')));
        assert_eq!(check_entry_name("é"), Err(PathError::BadChar('é')));
        assert_eq!(check_entry_name(&"a".repeat(256)), Err(PathError::TooLong));
    }
}
