//! `cargo xtask bench [BENCH] [OPTIONS]`: the one entry point for
//! benchmarks. Builds the `swarm` binary (the daemons under test) and the
//! `swarm-bench` runner with the release profile (`--dev`: the dev
//! profile, quicker to build, numbers not representative), then runs the
//! runner with every argument passed on unchanged.
//!
//! The benchmarks themselves live in the `swarm-bench` crate (`bench/`):
//! the Raft benchmark runs manager stacks in-process and must be compiled
//! optimised, which this crate (built in dev by the `cargo xtask` alias)
//! cannot give. Results: a table on stdout, JSON in `<target>/bench/`.
use std::ffi::OsString;
use std::process::Command;

use anyhow::{Context, bail};

/// `args`: everything after `bench`, for `swarm-bench`.
pub fn run(args: Vec<OsString>) -> anyhow::Result<()> {
    let dev = args.iter().any(|a| a == "--dev");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let profile: &[&str] = if dev { &[] } else { &["--release"] };

    // One build for both, so their shared dependencies are compiled once.
    let status = Command::new(&cargo)
        .args([
            "build",
            "--package",
            "swarm",
            "--package",
            "swarm-bench",
            "--bins",
        ])
        .args(profile)
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("building swarm and swarm-bench failed ({status})");
    }

    // `cargo run` finds the binary (honouring CARGO_TARGET_DIR and cargo's
    // config), and the runner finds `swarm` next to itself.
    // Ctrl-C reaches the runner too (same process group): it cleans up and
    // exits, and its status is ours. Here the signals stay blocked, so this
    // process waits for that instead of leaving it behind. (Children start
    // with a clean signal mask.)
    crate::block_stop_signals()?;
    let status = Command::new(&cargo)
        .args([
            "run",
            "--quiet",
            "--package",
            "swarm-bench",
            "--bin",
            "swarm-bench",
        ])
        .args(profile)
        .arg("--")
        .args(&args)
        .status()
        .context("running swarm-bench")?;
    if !status.success() {
        bail!("swarm-bench failed ({status})");
    }
    Ok(())
}
