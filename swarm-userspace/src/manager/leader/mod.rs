//! The leader's control loops: they run the pure decision modules
//! ([`orchestrator`](crate::orchestrator), [`allocator`](crate::allocator),
//! [`scheduler`](crate::scheduler))
//! on store changes and write what those decide.
//!
//! Owns: when a pass runs (on commits, at the times a pass asked to be woken,
//! on gaining leadership) and turning decisions into proposals, in chunks,
//! under the manager's write lock. Every manager runs the loops; they act
//! only while it leads and start afresh from the store each time it becomes
//! leader, so nothing but the store has to survive a failover.
//!
//! Must never decide anything itself: what to create, stop or place comes
//! from the decision modules.
mod allocator;
mod orchestrator;
mod scheduler;

use std::time::Duration;

use swarm_proto::v1 as pb;
use tokio_util::sync::CancellationToken;

use crate::store::{ReadTx, StoreError, WatchItem, WatchStream, WriteTx};
use crate::supervisor::LoopError;

use super::{Manager, UpdateError};

pub use allocator::AllocatorLoop;
pub use orchestrator::OrchestratorLoop;
pub use scheduler::SchedulerLoop;

/// Store actions per proposal: big passes (thousands of tasks) go out in
/// several Raft entries of bounded size instead of one huge one.
pub const MAX_ACTIONS_PER_PROPOSAL: usize = 1000;

/// How often a loop checks that it still leads while nothing happens.
const LEADERSHIP_CHECK: Duration = Duration::from_millis(500);

/// After a failed write, how long to wait before the next pass.
const RETRY_DELAY: Duration = Duration::from_millis(100);

/// Waits until this manager leads. `false` on shutdown.
async fn until_leader(m: &Manager, shutdown: &CancellationToken) -> bool {
    let mut rx = m.raft.metrics();
    loop {
        if shutdown.is_cancelled() {
            return false;
        }
        if m.is_leader() {
            return true;
        }
        tokio::select! {
            () = shutdown.cancelled() => return false,
            r = rx.changed() => if r.is_err() { return false },
        }
    }
}

/// What woke a loop up.
enum Wake {
    /// Commits (and resyncs), everything that was ready at once.
    Items(Vec<WatchItem>),
    /// The deadline passed (a timer a pass asked for, or the periodic
    /// leadership check).
    Deadline,
    Shutdown,
}

/// Waits for the next commit, `deadline` or shutdown; then takes every
/// other commit already waiting, so one pass covers them all.
async fn next_wake(
    watch: &mut WatchStream,
    deadline: tokio::time::Instant,
    shutdown: &CancellationToken,
) -> Wake {
    let first = tokio::select! {
        () = shutdown.cancelled() => return Wake::Shutdown,
        () = tokio::time::sleep_until(deadline) => return Wake::Deadline,
        item = watch.recv() => match item {
            Some(i) => i,
            // The store is gone: the manager is shutting down.
            None => return Wake::Shutdown,
        },
    };
    let mut items = vec![first];
    while let Some(i) = watch.try_recv() {
        items.push(i);
    }
    Wake::Items(items)
}

/// Runs `f`, a long synchronous stretch of a pass (deciding over 100,000
/// tasks, preparing as many writes: up to seconds), without holding up the
/// async tasks queued on this runtime worker: on the daemon's 2-worker
/// runtime, Raft's heartbeats and the dispatcher's sessions were starved
/// behind such passes, followers called elections and nodes were marked
/// down. Runs `f` in place on a current-thread runtime (unit tests).
pub(crate) fn off_runtime<R>(f: impl FnOnce() -> R) -> R {
    let multi_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if multi_thread {
        tokio::task::block_in_place(f)
    } else {
        f()
    }
}

/// Proposes `write`'s actions in chunks of [`MAX_ACTIONS_PER_PROPOSAL`].
/// `write` adds everything to one transaction (so the checks see earlier
/// writes); the chunks then go out in order, several in Raft at once
/// ([`Proposer::propose_pipelined`](crate::manager::Proposer::propose_pipelined)).
/// The caller holds the write lock, so each chunk applies on the state the
/// next was prepared against.
pub(crate) async fn propose_chunked(
    m: &Manager,
    write: impl FnOnce(&mut WriteTx) -> Result<(), StoreError>,
) -> Result<usize, UpdateError> {
    let actions: Vec<pb::StoreAction> = off_runtime(|| m.store.prepare(write))?;
    let n = actions.len();
    if n == 0 {
        return Ok(0);
    }
    // Pipelined: the chunks follow each other in the log in this order.
    m.proposer.propose_pipelined(chunks(actions)).await?;
    Ok(n)
}

/// `actions` in chunks of [`MAX_ACTIONS_PER_PROPOSAL`], in order, each
/// made when it is taken: a pass of 100,000 writes never holds a second
/// copy of them all (a store action takes 2.6 kB in memory, the size of
/// its largest kind).
fn chunks(actions: Vec<pb::StoreAction>) -> impl Iterator<Item = Vec<pb::StoreAction>> {
    let mut rest = actions.into_iter().peekable();
    std::iter::from_fn(move || {
        rest.peek()?;
        Some(rest.by_ref().take(MAX_ACTIONS_PER_PROPOSAL).collect())
    })
}

/// What one term of leadership of an event-driven leader loop remembers,
/// and what it does with it: a pass, and which commits call for one.
trait Term: Sized + Send {
    /// The memory at the start of a term, from the store alone.
    fn start(view: &ReadTx) -> Self;
    /// One pass on the newest view; its writes are proposed when it returns.
    fn pass(&mut self, m: &Manager) -> impl Future<Output = Result<usize, UpdateError>> + Send;
    /// Whether these commits call for a pass.
    fn wants_pass(&mut self, items: &[WatchItem]) -> bool;
    /// After a failed pass, before the retry.
    fn failed(&mut self, _m: &Manager) {}
}

/// Runs passes of `T` while this manager leads: one at the start of each
/// term, then one whenever commits call for it; a failed pass is retried
/// after [`RETRY_DELAY`].
async fn lead<T: Term>(
    m: &Manager,
    name: &str,
    shutdown: &CancellationToken,
) -> Result<(), LoopError> {
    loop {
        if !until_leader(m, shutdown).await {
            return Ok(());
        }
        let (view, mut watch) = m.store.watch();
        let mut term = T::start(&view);
        drop(view);
        let mut want = true;
        while m.is_leader() {
            if want {
                if let Err(e) = term.pass(m).await {
                    tracing::info!(error = %e, "{name} pass failed; retrying");
                    term.failed(m);
                    tokio::select! {
                        () = shutdown.cancelled() => return Ok(()),
                        () = tokio::time::sleep(RETRY_DELAY) => {}
                    }
                    continue;
                }
                want = false;
            }
            let deadline = tokio::time::Instant::now() + LEADERSHIP_CHECK;
            match next_wake(&mut watch, deadline, shutdown).await {
                Wake::Shutdown => return Ok(()),
                Wake::Deadline => {}
                Wake::Items(items) => want = term.wants_pass(&items),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_keep_the_order_and_are_bounded() {
        let actions: Vec<pb::StoreAction> = (0..2500)
            .map(|i| pb::StoreAction {
                kind: i,
                ..Default::default()
            })
            .collect();
        let c: Vec<_> = chunks(actions).collect();
        assert_eq!(
            c.iter().map(Vec::len).collect::<Vec<_>>(),
            [1000, 1000, 500]
        );
        let flat: Vec<i32> = c.into_iter().flatten().map(|a| a.kind).collect();
        assert_eq!(flat, (0..2500).collect::<Vec<_>>());
    }

    /// The point of `off_runtime`: other tasks on the runtime (Raft's
    /// heartbeats) keep running while a pass computes. With one worker and
    /// the pass computing in place, the ticker would not tick at all.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_long_pass_leaves_the_runtime_free() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let ticks = Arc::new(AtomicUsize::new(0));
        let counter = ticks.clone();
        let ticker = tokio::spawn(async move {
            loop {
                counter.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let before = ticks.load(Ordering::Relaxed);
        off_runtime(|| std::thread::sleep(Duration::from_millis(300)));
        let during = ticks.load(Ordering::Relaxed) - before;
        ticker.abort();
        assert!(during >= 5, "the runtime ticked {during} times in 300 ms");
    }

    #[test]
    fn off_runtime_runs_in_place_outside_a_multi_thread_runtime() {
        assert_eq!(off_runtime(|| 7), 7);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert_eq!(rt.block_on(async { off_runtime(|| 8) }), 8);
    }
}
