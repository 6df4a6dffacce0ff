//! Developer tasks (`cargo xtask <task>`, aliased in .cargo/config.toml).
//!
//! - `images`: build the test images (or reuse the cache) and say where
//!   they are.
//! - `registry`: serve the test images on a local registry until Ctrl-C, so
//!   a human can pull them (`skopeo inspect --tls-verify=false
//!   docker://127.0.0.1:5000/bb:1`) or point a daemon at them.
//!
//! - `demo`: start a swarm of daemons in network namespaces with the eBPF
//!   data plane, move some traffic, show what the CLI sees, and wait for
//!   Ctrl-C (the README's first command ends here).
//!
//! - `bench`: build release binaries and run the benchmarks
//!   (`cargo xtask bench [NAME] [--quick]`; see [`bench`]).
//!
//! Owns nothing of its own: the recipes and the registry are
//! `swarm_harness::images`, so tests and humans see the same images.

use std::ffi::OsString;
use std::net::SocketAddr;

use anyhow::Context;
use clap::{Parser, Subcommand};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};
use swarm_harness::images::{self, ALL_IMAGES, Registry};

mod bench;
mod demo;

#[derive(Parser)]
#[command(about = "swarm developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Build the test images (or reuse the cache) and print where they are.
    Images,
    /// Serve the test images from a local registry until Ctrl-C.
    Registry {
        /// Address to listen on (plain HTTP, no auth).
        #[arg(long, default_value = "127.0.0.1:5000")]
        addr: SocketAddr,
    },
    /// Start a demo swarm on this machine and keep it running until Ctrl-C.
    Demo {
        /// Number of nodes.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Walk through the demo and tear it down without waiting.
        #[arg(long)]
        no_wait: bool,
    },
    /// Build release binaries and run benchmarks: `bench [all|NAME]
    /// [--quick] [--dev]`. Arguments go to swarm-bench unchanged
    /// (`cargo xtask bench --help` shows them). Results: a table, and JSON
    /// and a PNG chart in <target>/bench/.
    #[command(disable_help_flag = true)]
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
}

/// Blocks SIGINT and SIGTERM on this (still single) thread, so every thread
/// spawned later inherits the mask and [`wait_for_stop`] is the only place
/// that sees them: cleanup then runs in Drop instead of being skipped.
fn block_stop_signals() -> anyhow::Result<SigSet> {
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&signals), None)
        .context("blocking SIGINT/SIGTERM")?;
    Ok(signals)
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Images => {
            let built = images::build_or_reuse()?;
            println!("test images: {}", built.dir().display());
            println!("  OCI layout:       {}", built.layout().display());
            println!("  registry storage: {}", built.registry_storage().display());
            for image in ALL_IMAGES {
                let manifest = built.manifest(image)?;
                let layers = manifest["layers"].as_array().map_or(0, Vec::len);
                println!(
                    "  {image:<14} layout tag {:<14} {layers} layer(s)",
                    images::layout_tag(image)
                );
            }
        }
        Task::Registry { addr } => {
            // Wait for the signals synchronously: the registry is then
            // stopped by Registry's Drop instead of being left behind.
            // (Children get a clean signal mask from std's spawn.)
            let signals = block_stop_signals()?;

            let registry = Registry::serve_test_images(addr, None)?;
            println!(
                "serving {ALL_IMAGES:?} on http://{addr} (pid {}); Ctrl-C to stop",
                registry.pid()
            );
            println!("  e.g. skopeo inspect --tls-verify=false docker://{addr}/bb:1");
            println!("  log: {}", registry.log_path().display());
            let sig = signals.wait().context("waiting for a signal")?;
            println!("got {sig}, stopping the registry");
            registry.stop();
        }
        Task::Bench { args } => bench::run(args)?,
        Task::Demo { nodes, no_wait } => {
            let signals = block_stop_signals()?;
            demo::run(
                nodes,
                no_wait.then_some(()).map_or(Some(signals), |()| None),
            )?;
        }
    }
    Ok(())
}
