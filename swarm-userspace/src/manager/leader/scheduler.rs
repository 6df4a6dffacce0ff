//! The scheduler loop: places every pending task whenever tasks become
//! pending or nodes change, in one [`schedule`] call per pass over all of
//! them (so a service's tasks are spread as a group), and writes the
//! decisions in bounded chunks.
use std::time::SystemTime;

use tokio_util::sync::CancellationToken;

use crate::scheduler::{FailureHistory, NodeSet, is_schedulable, pending_tasks, schedule};
use crate::store::{Object, ReadTx, WatchItem};
use crate::supervisor::{ControlLoop, LoopError};

use super::{Manager, Term, lead, propose_streamed};

/// Places pending tasks while this manager leads.
pub struct SchedulerLoop {
    m: Manager,
}

impl std::fmt::Debug for SchedulerLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchedulerLoop").finish_non_exhaustive()
    }
}

/// Whether `items` call for a scheduling pass: a task that is now pending,
/// a node that changed (it may fit tasks that were left pending), or a
/// resync. Feeds task failures into `failures` on the way.
fn wants_pass(items: &[WatchItem], failures: &mut FailureHistory, now: SystemTime) -> bool {
    let mut want = false;
    for item in items {
        match item {
            WatchItem::Resync { .. } => want = true,
            WatchItem::Commit { events, .. } => {
                for e in events {
                    match &e.object {
                        Object::Task(t) => {
                            let old = e.old.as_ref().and_then(|o| o.as_task());
                            failures.observe(old, t, now);
                            want |= is_schedulable(t);
                        }
                        Object::Node(_) => want = true,
                        _ => {}
                    }
                }
            }
        }
    }
    want
}

impl SchedulerLoop {
    #[must_use]
    pub fn new(m: Manager) -> Self {
        SchedulerLoop { m }
    }
}

/// A term's memory: recent task failures, which rank nodes down.
struct SchedulerTerm(FailureHistory);

impl Term for SchedulerTerm {
    fn start(_: &ReadTx) -> Self {
        SchedulerTerm(FailureHistory::new())
    }

    async fn pass(&mut self, m: &Manager) -> Result<usize, super::UpdateError> {
        let failures = &mut self.0;
        let _w = m.write_lock().await;
        let view = m.store.view();
        let pending = pending_tasks(&view);
        if pending.is_empty() {
            return Ok(0);
        }
        let now = SystemTime::now();
        failures.prune(now);
        let started = std::time::Instant::now();
        let decisions =
            super::off_runtime(|| schedule(&NodeSet::from_view(&view), &pending, failures, now));
        let decided = started.elapsed();
        let placed = decisions.assigned.len();
        let n = propose_streamed(m, decisions.steps(), |tx, s| s.write(tx, now))
            .await?
            .actions;
        tracing::debug!(
            pending = pending.len(),
            placed,
            unplaced = decisions.unplaced.len(),
            decide_ms = decided.as_millis(),
            writes = n,
            "scheduler pass"
        );
        Ok(placed)
    }

    fn wants_pass(&mut self, items: &[WatchItem]) -> bool {
        wants_pass(items, &mut self.0, SystemTime::now())
    }
}

impl ControlLoop for SchedulerLoop {
    fn name(&self) -> &'static str {
        "scheduler"
    }

    async fn run(self, shutdown: CancellationToken) -> Result<(), LoopError> {
        lead::<SchedulerTerm>(&self.m, "scheduler", &shutdown).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Event, EventKind};
    use std::sync::Arc;
    use swarm_proto::v1 as pb;

    fn task_event(state: pb::TaskState) -> WatchItem {
        let mut t = crate::store::testutil::task("t", "s", 1, "");
        t.status = Some(pb::TaskStatus {
            state: state as i32,
            ..Default::default()
        });
        WatchItem::Commit {
            version: 2,
            events: vec![Event {
                kind: EventKind::Updated,
                version: 2,
                object: Object::Task(Arc::new(t)),
                old: None,
            }],
        }
    }

    #[test]
    fn only_pending_tasks_and_node_changes_call_for_a_pass() {
        let mut f = FailureHistory::new();
        let now = SystemTime::UNIX_EPOCH;
        assert!(wants_pass(
            &[task_event(pb::TaskState::Pending)],
            &mut f,
            now
        ));
        assert!(!wants_pass(
            &[task_event(pb::TaskState::Running)],
            &mut f,
            now
        ));
        let node = WatchItem::Commit {
            version: 3,
            events: vec![Event {
                kind: EventKind::Updated,
                version: 3,
                object: Object::Node(Arc::new(crate::store::testutil::node("n", "n"))),
                old: None,
            }],
        };
        assert!(wants_pass(&[node], &mut f, now));
    }
}
