//! Builds the eBPF programs (nightly, bpfel-unknown-none) with aya-build so
//! the daemon can embed the object, and records the git commit.
use std::process::Command;

fn main() -> anyhow::Result<()> {
    let commit = std::env::var("SWARM_GIT_COMMIT").ok().or_else(|| {
        let out = Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    });
    println!(
        "cargo:rustc-env=SWARM_GIT_COMMIT={}",
        commit.unwrap_or_else(|| "unknown".into())
    );
    println!("cargo:rerun-if-env-changed=SWARM_GIT_COMMIT");
    println!("cargo:rerun-if-changed=../.git/HEAD");
    println!("cargo:rerun-if-changed=../.git/refs/heads");

    aya_build::build_ebpf(
        [aya_build::Package {
            name: "swarm-ebpf",
            root_dir: "../swarm-ebpf/programs",
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
