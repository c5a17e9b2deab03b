//! Where things are in the workspace: its root, its target directory, the built binaries and
//! the sample jobs. The one place that knows; every test, benchmark and `rjs demo` asks here.
//! Also [`mode`]: the permission bits of a file, for tests of private files.

use std::path::{Path, PathBuf};

/// The workspace root (the folder of the root `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    // harness/ -> the workspace root.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the harness crate lives in the workspace root")
        .to_owned()
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` (absolute, or relative to the workspace
/// root, as cargo reads it when run in the root), else `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    let root = workspace_root();
    match std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from) {
        Some(p) if p.is_absolute() => p,
        Some(p) => root.join(p),
        None => root.join("target"),
    }
}

/// The profile directory the running executable was built into (`<target>/<profile>`):
/// its own folder, or for test and bench executables (`<target>/<profile>/deps/`) the parent
/// of `deps`. The workspace's binaries are built there too.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the path of the running executable");
    let dir = exe.parent().expect("the executable's folder");
    match dir.parent() {
        Some(parent) if dir.file_name().is_some_and(|n| n == "deps") => parent.to_owned(),
        _ => dir.to_owned(),
    }
}

/// The workspace binary `name` built next to the running executable ([`profile_dir`]);
/// panics with instructions if it is missing.
pub fn bin(name: &str) -> PathBuf {
    let p = profile_dir().join(name);
    assert!(
        p.is_file(),
        "{} is missing: build the binaries first (cargo build --workspace --bins)",
        p.display()
    );
    p
}

/// The built sample jobs: `$RJS_SAMPLES`, else where `samples/build.sh` writes them by
/// default, `<workspace>/target/rjs-samples` (whatever `CARGO_TARGET_DIR` is).
pub fn samples_dir() -> PathBuf {
    match std::env::var_os("RJS_SAMPLES") {
        Some(d) => PathBuf::from(d),
        None => workspace_root().join("target").join("rjs-samples"),
    }
}

/// The sample job folder `<samples>/<job>`; panics with instructions if it is not built.
pub fn sample(job: &str) -> PathBuf {
    let dir = samples_dir().join(job);
    assert!(
        dir.join("manifest.json").is_file(),
        "{} is missing: build the samples first (samples/build.sh)",
        dir.display()
    );
    dir
}

/// The permission bits of `p` (`0o700`, `0o600`, …), for tests of private files; panics if it
/// cannot be read.
pub fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_executables_find_their_profile_dir() {
        let dir = profile_dir();
        assert!(dir.join("deps").is_dir(), "{}", dir.display());
        assert!(workspace_root().join("Cargo.toml").is_file());
        assert!(
            samples_dir().ends_with("rjs-samples") || std::env::var_os("RJS_SAMPLES").is_some()
        );
    }
}
