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
/// several Raft entries of bounded size (about 1 MB of tasks) instead of
/// one huge one. Every entry costs each manager an append, an fsync and a
/// publish, and the dispatcher a message to every node that has a task in
/// it: placing 100,000 tasks on 1,000 nodes in entries of 1,000 sent each
/// node 100 messages of one task. Entries of 4,000 placed faster still,
/// but an AppendEntries must stay small enough for a loaded follower to
/// answer in time ([`MAX_ENTRIES_PER_APPEND`](crate::raft::MAX_ENTRIES_PER_APPEND)
/// of these), and one entry per append cut concurrent small writes to
/// 40% of what 3 per append commit.
pub const MAX_ACTIONS_PER_PROPOSAL: usize = 2000;

/// The other bound on a proposal: its actions' encoded size, about 2,000
/// tasks. Writes that did not go through this bound made entries of 25 MB
/// (`service rm` of 100,000 tasks in one) and 850 KB (10,000 nodes back at
/// once); with 10,000 simulated nodes on the same 2 cores, appends of such
/// entries missed their 150 ms timeout again and again, the heartbeats
/// queued behind them, and followers called elections. Entries of 256 KB
/// placed 100,000 tasks on 1,000 nodes about 15% slower than these.
pub const MAX_PROPOSAL_BYTES: usize = 1 << 20;

/// How many of `actions`, from the front, go into one proposal: up to
/// [`MAX_ACTIONS_PER_PROPOSAL`] and, past the first, no more than
/// [`MAX_PROPOSAL_BYTES`] encoded. At least one when there are any.
pub(crate) fn proposal_len<'a>(actions: impl IntoIterator<Item = &'a pb::StoreAction>) -> usize {
    use prost::Message as _;
    let mut bytes = 0;
    let mut n = 0;
    for a in actions.into_iter().take(MAX_ACTIONS_PER_PROPOSAL) {
        bytes += a.encoded_len();
        if n > 0 && bytes > MAX_PROPOSAL_BYTES {
            break;
        }
        n += 1;
    }
    n
}

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

/// What [`propose_streamed`] committed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Proposed {
    /// Store actions.
    pub actions: usize,
    /// The Raft index of each chunk, in order: the versions of the commits
    /// a store watch will show for them.
    pub versions: Vec<u64>,
}

/// Proposes `write`'s actions in chunks bounded by [`proposal_len`]:
/// [`propose_streamed`] with a single step.
pub(crate) async fn propose_chunked(
    m: &Manager,
    write: impl FnOnce(&mut WriteTx) -> Result<(), StoreError> + Send,
) -> Result<Proposed, UpdateError> {
    let mut write = Some(write);
    propose_streamed(m, [()], move |tx, ()| match write.take() {
        Some(f) => f(tx),
        None => Ok(()),
    })
    .await
}

/// Writes `steps` with `write`, all in one transaction (so each step's
/// checks see the earlier steps' writes), and proposes the actions in
/// chunks bounded by [`proposal_len`] as they are prepared: the
/// first chunk is in Raft while the next is being prepared, several at once
/// ([`Proposer::propose_pipelined`](crate::manager::Proposer::propose_pipelined)).
/// Preparing a pass of 100,000 writes before proposing any left the other
/// managers idle for a second.
///
/// The caller holds the write lock, so each chunk applies on the state the
/// next was prepared against. A step that fails ends the writing: chunks
/// already handed to Raft stay (a pass is a reconciliation, and the next
/// one starts from what was committed), everything prepared since is
/// dropped, and the step's error is returned. Returns how many actions
/// were proposed, and at which versions they were committed.
pub(crate) async fn propose_streamed<I>(
    m: &Manager,
    steps: impl IntoIterator<Item = I, IntoIter: Send>,
    write: impl FnMut(&mut WriteTx, I) -> Result<(), StoreError> + Send,
) -> Result<Proposed, UpdateError> {
    let mut pieces = Pieces::new(m.store.write_tx(), steps.into_iter(), write);
    // Nothing to write: no proposal, and no leadership or quorum check.
    let Some(first) = pieces.next_chunk() else {
        return pieces
            .failed
            .map_or_else(|| Ok(Proposed::default()), |e| Err(e.into()));
    };
    let versions = m
        .proposer
        .propose_pipelined(std::iter::once(first).chain(std::iter::from_fn(|| pieces.next_chunk())))
        .await?;
    match pieces.failed {
        Some(e) => Err(e.into()),
        None => Ok(Proposed {
            actions: pieces.proposed,
            versions,
        }),
    }
}

/// A transaction being written step by step and taken in chunks; see
/// [`propose_streamed`].
struct Pieces<S, W> {
    tx: WriteTx,
    steps: S,
    write: W,
    /// Prepared actions not yet handed out.
    ready: std::collections::VecDeque<pb::StoreAction>,
    /// Every step has been written.
    done: bool,
    /// The step that failed; nothing more is handed out.
    failed: Option<StoreError>,
    proposed: usize,
}

impl<S, W> Pieces<S, W> {
    fn new(tx: WriteTx, steps: S, write: W) -> Self {
        Pieces {
            tx,
            steps,
            write,
            ready: std::collections::VecDeque::new(),
            done: false,
            failed: None,
            proposed: 0,
        }
    }
}

impl<I, S, W> Pieces<S, W>
where
    S: Iterator<Item = I>,
    W: FnMut(&mut WriteTx, I) -> Result<(), StoreError>,
{
    /// The next chunk ([`proposal_len`] actions),
    /// filled up by writing more steps first. `None` when every step is
    /// written and handed out, or once a step failed: what was prepared
    /// but not yet handed out is dropped with it.
    fn next_chunk(&mut self) -> Option<Vec<pb::StoreAction>> {
        if self.failed.is_some() {
            return None;
        }
        if !self.done && self.ready.len() < MAX_ACTIONS_PER_PROPOSAL {
            let want = MAX_ACTIONS_PER_PROPOSAL - self.ready.len();
            let Pieces {
                tx,
                steps,
                write,
                done,
                ..
            } = self;
            let prepared = off_runtime(|| {
                while tx.len() < want {
                    let Some(step) = steps.next() else {
                        *done = true;
                        break;
                    };
                    write(tx, step)?;
                }
                Ok::<_, StoreError>(tx.take_actions())
            });
            match prepared {
                Ok(actions) => self.ready.extend(actions),
                Err(e) => {
                    self.ready.clear();
                    self.failed = Some(e);
                    return None;
                }
            }
        }
        if self.ready.is_empty() {
            return None;
        }
        // One step may write many actions (a single-step writer writes
        // them all): hand them out in bounded chunks.
        let n = proposal_len(&self.ready);
        let chunk: Vec<_> = self.ready.drain(..n).collect();
        self.proposed += chunk.len();
        Some(chunk)
    }
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

    fn pieces<S: Iterator<Item = usize>>(
        steps: S,
        fail_at: Option<usize>,
    ) -> Pieces<S, impl FnMut(&mut WriteTx, usize) -> Result<(), StoreError>> {
        let store = crate::store::MemoryStore::new();
        let mut next = 0;
        Pieces::new(
            store.write_tx(),
            steps,
            // Step `n` creates `n` tasks, numbered on from the last step's;
            // step `fail_at` fails.
            move |tx: &mut WriteTx, n: usize| {
                if Some(n) == fail_at {
                    return Err(StoreError::InvalidAction {
                        reason: "step failed".into(),
                    });
                }
                for _ in 0..n {
                    tx.create(crate::store::testutil::task(
                        &format!("{next:05}"),
                        "s",
                        1,
                        "",
                    ))?;
                    next += 1;
                }
                Ok(())
            },
        )
    }

    fn id(a: &pb::StoreAction) -> String {
        match &a.target {
            Some(pb::store_action::Target::Task(t)) => {
                t.meta.as_ref().map_or_else(String::new, |m| m.id.clone())
            }
            _ => String::new(),
        }
    }

    fn sizes<S: Iterator<Item = usize>>(
        p: &mut Pieces<S, impl FnMut(&mut WriteTx, usize) -> Result<(), StoreError>>,
    ) -> Vec<usize> {
        std::iter::from_fn(|| p.next_chunk())
            .map(|c| c.len())
            .collect()
    }

    /// The bound, for short test arithmetic.
    const M: usize = MAX_ACTIONS_PER_PROPOSAL;

    #[test]
    fn chunks_fill_up_to_the_bound_and_keep_the_order() {
        // Steps are written until the chunk is full; what is over goes
        // first into the next chunk, which more steps then fill.
        let third = M * 2 / 5;
        let steps = [third, third, third, M * 9 / 10, M / 10];
        let total: usize = steps.iter().sum();
        let mut p = pieces(steps.into_iter(), None);
        assert_eq!(sizes(&mut p), [M, M, total - 2 * M]);
        assert_eq!(p.proposed, total);
        // One step of 2.5 chunks goes out in bounded chunks, in order.
        let mut p = pieces([M * 5 / 2].into_iter(), None);
        let chunks: Vec<_> = std::iter::from_fn(|| p.next_chunk()).collect();
        assert_eq!(
            chunks.iter().map(Vec::len).collect::<Vec<_>>(),
            [M, M, M / 2]
        );
        let ids: Vec<String> = chunks.iter().flatten().map(id).collect();
        assert_eq!(
            ids,
            (0..M * 5 / 2)
                .map(|i| format!("{i:05}"))
                .collect::<Vec<_>>()
        );
        assert!(p.failed.is_none());
    }

    /// A task creation of about `bytes` encoded.
    fn action_of(bytes: usize) -> pb::StoreAction {
        let mut t = crate::store::testutil::task("t", "s", 1, "");
        t.service_id = "s".repeat(bytes);
        pb::StoreAction {
            kind: pb::StoreActionKind::Create.into(),
            target: Some(pb::store_action::Target::Task(Box::new(t))),
        }
    }

    #[test]
    fn a_proposal_is_bounded_by_bytes_as_well_as_by_count() {
        let small = vec![action_of(10); M + 5];
        assert_eq!(proposal_len(&small), M);
        let quarter = vec![action_of(MAX_PROPOSAL_BYTES / 4); 10];
        // Four quarters and their framing pass the bound: three go.
        assert_eq!(proposal_len(&quarter), 3);
        // An action bigger than the bound goes alone.
        let huge = vec![action_of(2 * MAX_PROPOSAL_BYTES), action_of(10)];
        assert_eq!(proposal_len(&huge), 1);
        assert_eq!(proposal_len(&huge[1..]), 1);
        assert_eq!(proposal_len(&[]), 0);
    }

    #[test]
    fn chunks_of_big_actions_are_cut_by_bytes() {
        let store = crate::store::MemoryStore::new();
        let mut next = 0;
        let mut p = Pieces::new(
            store.write_tx(),
            [12].into_iter(),
            |tx: &mut WriteTx, n: usize| {
                for _ in 0..n {
                    let mut t = crate::store::testutil::task(&format!("{next:05}"), "s", 1, "");
                    t.service_id = "s".repeat(MAX_PROPOSAL_BYTES / 4);
                    tx.create(t)?;
                    next += 1;
                }
                Ok(())
            },
        );
        assert_eq!(sizes(&mut p), [3, 3, 3, 3]);
    }

    #[test]
    fn a_failed_step_ends_the_stream_and_drops_its_chunk() {
        // M - 1 and 2 fill the first chunk (one action over); then 5 is
        // written and 7 fails: the 6 prepared actions are dropped with it.
        let mut p = pieces([M - 1, 2, 5, 7, 3].into_iter(), Some(7));
        assert_eq!(sizes(&mut p), [M]);
        assert_eq!(p.proposed, M);
        assert!(p.failed.is_some());
        assert!(p.next_chunk().is_none());
    }

    #[test]
    fn no_steps_no_chunk() {
        let mut p = pieces(std::iter::empty(), None);
        assert!(p.next_chunk().is_none());
        assert!(p.failed.is_none());
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
