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

use crate::store::{StoreError, WatchItem, WatchStream, WriteTx};

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

/// Proposes `write`'s actions in chunks of [`MAX_ACTIONS_PER_PROPOSAL`].
/// `write` adds everything to one transaction (so the checks see earlier
/// writes); the chunks then go out in order. The caller holds the write
/// lock, so each chunk applies on the state the next was prepared against.
async fn propose_chunked(
    m: &Manager,
    write: impl FnOnce(&mut WriteTx) -> Result<(), StoreError>,
) -> Result<usize, UpdateError> {
    let actions: Vec<pb::StoreAction> = m.store.prepare(write)?;
    let n = actions.len();
    let mut rest = actions.into_iter().peekable();
    while rest.peek().is_some() {
        let chunk: Vec<_> = rest.by_ref().take(MAX_ACTIONS_PER_PROPOSAL).collect();
        m.proposer.propose(chunk).await?;
    }
    Ok(n)
}
