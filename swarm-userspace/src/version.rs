//! Build identity of this binary. Read-only facts; no I/O beyond uname.

/// Crate version, e.g. "0.1.0".
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Short git commit this binary was built from, or "unknown".
pub const GIT_COMMIT: &str = env!("SWARM_GIT_COMMIT");
pub use swarm_proto::API_VERSION;

/// `linux`, as docker prints it in `OS/Arch`.
pub const OS: &str = std::env::consts::OS;

/// Docker-style architecture name (`amd64`, `arm64`, ...).
pub fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// The running kernel's release, e.g. "6.18.44".
pub fn kernel_version() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".into())
}
