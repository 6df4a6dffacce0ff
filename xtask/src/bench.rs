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

    // One build for both, so their shared dependencies are compiled once;
    // the runner is then started from what that build made (`cargo run`
    // would resolve the runner's features alone and build it again).
    let out = Command::new(&cargo)
        .args([
            "build",
            "--package",
            "swarm",
            "--package",
            "swarm-bench",
            "--bins",
            "--message-format=json-render-diagnostics",
        ])
        .args(profile)
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running cargo build")?;
    if !out.status.success() {
        bail!("building swarm and swarm-bench failed ({})", out.status);
    }
    let runner = runner_path(&String::from_utf8_lossy(&out.stdout))
        .context("cargo build did not report the swarm-bench binary")?;

    // The runner finds `swarm` next to itself. Ctrl-C reaches the runner
    // too (same process group): it cleans up and exits, and its status is
    // ours. Here the signals stay blocked, so this process waits for that
    // instead of leaving it behind. (Children start with a clean signal
    // mask.)
    crate::block_stop_signals()?;
    let status = Command::new(&runner)
        .args(&args)
        .status()
        .with_context(|| format!("running {runner}"))?;
    if !status.success() {
        bail!("swarm-bench failed ({status})");
    }
    Ok(())
}

/// The `swarm-bench` executable among cargo's JSON build messages.
fn runner_path(messages: &str) -> Option<String> {
    messages
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "swarm-bench")
        .find_map(|m| m["executable"].as_str().map(str::to_owned))
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_the_runner_among_build_messages() {
        let msgs = concat!(
            r#"{"reason":"compiler-artifact","target":{"name":"swarm"},"executable":"/t/release/swarm"}"#,
            "\n",
            r#"{"reason":"compiler-artifact","target":{"name":"swarm-bench"},"executable":null}"#,
            "\n",
            r#"{"reason":"compiler-artifact","target":{"name":"swarm-bench"},"executable":"/t/release/swarm-bench"}"#,
            "\n",
            r#"{"reason":"build-finished","success":true}"#,
        );
        assert_eq!(
            super::runner_path(msgs).as_deref(),
            Some("/t/release/swarm-bench")
        );
        assert_eq!(super::runner_path("not json"), None);
    }
}
