//! The allocator loop: runs [`Allocator::pass`] whenever new tasks,
//! services, networks or the cluster's address pools change, and writes
//! the allocations (task addresses and NEW → PENDING, service VIPs, network
//! subnets) before the scheduler sees the tasks.
use std::time::SystemTime;

use swarm_proto::v1 as pb;
use tokio_util::sync::CancellationToken;

use crate::allocator::Allocator;
use crate::store::{Object, ReadTx, WatchItem};
use crate::supervisor::{ControlLoop, LoopError};

use super::{Manager, Term, lead, propose_chunked};

/// Allocates network resources while this manager leads.
pub struct AllocatorLoop {
    m: Manager,
}

impl std::fmt::Debug for AllocatorLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AllocatorLoop").finish_non_exhaustive()
    }
}

/// Whether `items` may give the allocator work: a task that is NEW or has
/// ended (its addresses come free), a service or network change, the
/// cluster object (address pools), or a resync.
fn wants_pass(items: &[WatchItem]) -> bool {
    items.iter().any(|item| match item {
        WatchItem::Resync { .. } => true,
        WatchItem::Commit { events, .. } => events.iter().any(|e| match &e.object {
            Object::Task(t) => {
                let state = t.status.as_ref().map_or(0, |s| s.state);
                state == pb::TaskState::New as i32
                    || state > pb::TaskState::Running as i32
                    || matches!(e.kind, crate::store::EventKind::Removed)
            }
            Object::Service(_) | Object::Network(_) | Object::Cluster(_) => true,
            _ => false,
        }),
    })
}

impl AllocatorLoop {
    #[must_use]
    pub fn new(m: Manager) -> Self {
        AllocatorLoop { m }
    }
}

/// A term's allocator: everything it needs is in the store, so a new
/// leader (or a retry after a failed write) rebuilds it from a view.
struct AllocatorTerm(Allocator);

impl Term for AllocatorTerm {
    fn start(view: &ReadTx) -> Self {
        AllocatorTerm(Allocator::from_view(view))
    }

    async fn pass(&mut self, m: &Manager) -> Result<usize, super::UpdateError> {
        let _w = m.write_lock().await;
        let view = m.store.view();
        let out = self.0.pass(&view, SystemTime::now());
        for p in &out.problems {
            tracing::warn!(problem = %p, "allocator");
        }
        if out.is_empty() {
            return Ok(0);
        }
        let n = propose_chunked(m, |tx| out.write(tx)).await?.actions;
        tracing::debug!(
            tasks = out.tasks.len(),
            services = out.services.len(),
            networks = out.networks.len(),
            writes = n,
            "allocator pass"
        );
        Ok(n)
    }

    fn wants_pass(&mut self, items: &[WatchItem]) -> bool {
        wants_pass(items)
    }

    fn failed(&mut self, m: &Manager) {
        self.0 = Allocator::from_view(&m.store.view());
    }
}

impl ControlLoop for AllocatorLoop {
    fn name(&self) -> &'static str {
        "allocator"
    }

    async fn run(self, shutdown: CancellationToken) -> Result<(), LoopError> {
        lead::<AllocatorTerm>(&self.m, "allocator", &shutdown).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Event, EventKind};
    use std::sync::Arc;

    fn task_item(state: pb::TaskState) -> WatchItem {
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
    fn new_and_ended_tasks_call_for_a_pass_running_ones_do_not() {
        assert!(wants_pass(&[task_item(pb::TaskState::New)]));
        assert!(wants_pass(&[task_item(pb::TaskState::Failed)]));
        assert!(!wants_pass(&[task_item(pb::TaskState::Running)]));
        assert!(!wants_pass(&[task_item(pb::TaskState::Assigned)]));
    }
}
