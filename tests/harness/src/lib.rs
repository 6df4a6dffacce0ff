//! Test infrastructure for swarm: real `swarm daemon` processes, each in its
//! own network namespace, wired together by a "fabric" namespace that plays
//! the physical network; small real OCI images; and a local registry.
//!
//! Modules:
//! - [`cluster`]: multi-node clusters ([`Cluster`], [`Node`], [`Host`]) and
//!   their fault injection (cut, isolate).
//! - [`netns`]: one named network namespace ([`Netns`]) and ways to run code
//!   or commands inside it.
//! - [`process`]: a guard for a long-running child process ([`Process`]).
//! - [`cmd`]: running short commands with a deadline ([`CmdOutput`]).
//! - [`images`]: building and caching the test images; [`Registry`].
//! - [`http`]: a minimal HTTP/1.0 client for checking services from a test.
//! - [`cleanup`]: leak hunting shared by `Drop` impls and the stale sweep.
//! - [`paths`]: the workspace, the `swarm` binary, the image cache.
//!
//! Nodes and client hosts are numbered from 1 (`node(1)` is `n1`,
//! 198.51.100.11). The crate also has a `fake-swarm` binary, a stand-in
//! daemon used only by its own tests of the daemon lifecycle.
//!
//! Everything here needs root (namespaces, mounts, cgroups). Everything a
//! test creates is named with a per-process unique prefix
//! (`swt-<pid>-<n>`) so that tests in parallel processes never collide and a
//! later process can find and remove what a killed one left behind.
//!
//! This crate is test infrastructure: on a broken environment it panics with
//! a message saying what to fix, rather than returning errors nobody handles.

pub mod cleanup;
pub mod cluster;
pub mod cmd;
pub mod http;
pub mod images;
pub mod netns;
pub mod overlay_lab;
pub mod paths;
pub mod process;
mod spawner;

pub use cluster::{Cluster, ClusterBuilder, Host, Node, Topology};
pub use cmd::CmdOutput;
pub use images::{Registry, TestImages};
pub use netns::Netns;
pub use process::Process;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Every name the harness creates starts with this, followed by
/// `<pid>-<n>-`: the pid lets the stale sweep tell live owners from dead ones.
pub const NAME_PREFIX: &str = "swt-";

static NEXT_ID: AtomicU32 = AtomicU32::new(1);

/// A name unique on this machine while this process lives:
/// `swt-<pid>-<n>`. Clusters and standalone namespaces derive all their
/// resource names from one of these, so cleanup can match on it.
pub fn unique_prefix() -> String {
    loop {
        let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("{NAME_PREFIX}{}-{n}", std::process::id());
        // A dead process that had our pid may have left namespaces with this
        // very prefix (the sweep cannot tell them from ours): skip it.
        let taken = std::fs::read_dir(netns::NETNS_DIR).is_ok_and(|d| {
            d.flatten().any(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("{prefix}-"))
            })
        });
        if !taken {
            return prefix;
        }
    }
}

/// Polls `check` every 50 ms until it returns true; panics naming `what` if
/// it has not after `timeout`. Distributed state converges, it does not
/// switch: tests wait for it instead of sleeping a fixed time.
#[track_caller]
pub fn wait_until(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting until {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
