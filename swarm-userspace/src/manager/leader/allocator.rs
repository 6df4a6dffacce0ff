//! The allocator loop: runs [`Allocator::pass`] whenever new tasks,
//! services, networks or the cluster's address pools change, and writes
//! the allocations (task addresses and NEW → PENDING, service VIPs, network
//! subnets) before the scheduler sees the tasks.
use std::time::SystemTime;

use swarm_proto::v1 as pb;
use tokio_util::sync::CancellationToken;

use crate::allocator::Allocator;
use crate::store::{Object, WatchItem};
use crate::supervisor::{ControlLoop, LoopError};

use super::{LEADERSHIP_CHECK, Manager, RETRY_DELAY, Wake, propose_chunked, until_leader};

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

    async fn pass(&self, alloc: &mut Allocator) -> Result<usize, super::UpdateError> {
        let _w = self.m.write_lock().await;
        let view = self.m.store.view();
        let out = alloc.pass(&view, SystemTime::now());
        for p in &out.problems {
            tracing::warn!(problem = %p, "allocator");
        }
        if out.is_empty() {
            return Ok(0);
        }
        let n = propose_chunked(&self.m, |tx| out.write(tx)).await?;
        tracing::debug!(
            tasks = out.tasks.len(),
            services = out.services.len(),
            networks = out.networks.len(),
            writes = n,
            "allocator pass"
        );
        Ok(n)
    }
}

impl ControlLoop for AllocatorLoop {
    fn name(&self) -> &'static str {
        "allocator"
    }

    async fn run(self, shutdown: CancellationToken) -> Result<(), LoopError> {
        loop {
            if !until_leader(&self.m, &shutdown).await {
                return Ok(());
            }
            let (view, mut watch) = self.m.store.watch();
            // Everything it needs is in the store: a new leader rebuilds it.
            let mut alloc = Allocator::from_view(&view);
            drop(view);
            let mut want = true;
            while self.m.is_leader() {
                if want {
                    if let Err(e) = self.pass(&mut alloc).await {
                        tracing::info!(error = %e, "allocator pass failed; retrying");
                        alloc = Allocator::from_view(&self.m.store.view());
                        tokio::select! {
                            () = shutdown.cancelled() => return Ok(()),
                            () = tokio::time::sleep(RETRY_DELAY) => {}
                        }
                        continue;
                    }
                    want = false;
                }
                let deadline = tokio::time::Instant::now() + LEADERSHIP_CHECK;
                match super::next_wake(&mut watch, deadline, &shutdown).await {
                    Wake::Shutdown => return Ok(()),
                    Wake::Deadline => {}
                    Wake::Items(items) => want = wants_pass(&items),
                }
            }
        }
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
