//! Ctrl-C without leaks: SIGINT and SIGTERM are blocked on the main thread
//! (before any other thread exists, so all inherit the mask) and a watcher
//! thread turns them into a flag. Benchmarks poll [`requested`] and return
//! an error, so clusters and namespaces are torn down by their `Drop`.

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};

static STOP: AtomicBool = AtomicBool::new(false);

/// Call first thing in `main`, while the process has one thread.
pub fn install() -> anyhow::Result<()> {
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&signals), None)
        .context("blocking SIGINT/SIGTERM")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            while let Ok(sig) = signals.wait() {
                eprintln!("swarm-bench: got {sig}; stopping after cleanup");
                STOP.store(true, Ordering::SeqCst);
            }
        })
        .context("starting the signal thread")?;
    Ok(())
}

/// Whether the user asked to stop.
pub fn requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// An error if the user asked to stop.
pub fn check() -> anyhow::Result<()> {
    if requested() {
        anyhow::bail!("interrupted");
    }
    Ok(())
}
