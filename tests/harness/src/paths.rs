//! Where things are: the workspace, the `swarm` binary, the image cache.
//!
//! Never builds anything: a missing binary is reported with the command
//! that builds it.

use std::path::{Path, PathBuf};

/// The workspace root (the directory whose Cargo.toml has `[workspace]`).
///
/// Known at compile time from this crate's manifest dir (`<ws>/tests/harness`);
/// checked, with a walk up from the current directory as a fallback in case
/// the tree was moved after the build.
pub fn workspace_root() -> PathBuf {
    let compiled = Path::new(env!("CARGO_MANIFEST_DIR"));
    let candidates = compiled.ancestors().map(Path::to_path_buf).chain(
        std::env::current_dir()
            .ok()
            .into_iter()
            .flat_map(|d| d.ancestors().map(Path::to_path_buf).collect::<Vec<_>>()),
    );
    for dir in candidates {
        let manifest = dir.join("Cargo.toml");
        if std::fs::read_to_string(&manifest).is_ok_and(|s| s.contains("[workspace]")) {
            return dir;
        }
    }
    panic!(
        "cannot find the workspace root (a Cargo.toml with [workspace]) above {} or the current directory",
        compiled.display()
    );
}

/// The `swarm` binary the tests drive: `$SWARM_BIN` if set, else `swarm`
/// next to the running test binary's profile directory (test binaries live
/// in `target/<profile>/deps/`, the binary in `target/<profile>/`).
/// Panics with instructions if it does not exist.
pub fn swarm_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SWARM_BIN") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "SWARM_BIN={} does not exist: build it first: cargo build -p swarm",
            p.display()
        );
        return p;
    }
    let exe = std::env::current_exe().expect("current_exe() must work on Linux");
    let mut dir = exe
        .parent()
        .expect("an executable lives in a directory")
        .to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    let bin = dir.join("swarm");
    assert!(
        bin.is_file(),
        "swarm binary not found at {} (derived from {}): build it first: cargo build -p swarm \
         (with the same CARGO_TARGET_DIR and profile as the tests), or set SWARM_BIN",
        bin.display(),
        exe.display()
    );
    bin
}

/// Where test images and their registry storage are cached:
/// `$SWARM_TEST_IMAGES_DIR` if set, else `<workspace>/target/test-images`.
/// Deliberately not under `$CARGO_TARGET_DIR`, so that every target dir
/// (the harness's own, CI's, a developer's) shares one cache.
pub fn test_images_dir() -> PathBuf {
    match std::env::var_os("SWARM_TEST_IMAGES_DIR") {
        Some(p) => PathBuf::from(p),
        None => workspace_root().join("target").join("test-images"),
    }
}
