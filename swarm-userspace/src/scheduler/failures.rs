//! Recent task failures per node and service version, which rank a node
//! down for that service (swarmkit: 5 failures in 5 minutes).
//!
//! Owns: the bookkeeping only. The leader loop feeds it task updates with
//! [`FailureHistory::observe`] and passes it to [`schedule`](super::schedule);
//! it never reads a clock itself.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use swarm_proto::v1 as pb;

/// How far back failures count.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(5 * 60);
/// Failures within [`FAILURE_WINDOW`] after which a node ranks below every
/// node with fewer failures for the service.
pub const MAX_RECENT_FAILURES: usize = 5;

/// Times at which tasks of a service version failed or were rejected, per
/// node.
#[derive(Debug, Clone, Default)]
pub struct FailureHistory {
    /// (service ID, service version) → node ID → failure times, oldest first.
    by_service: HashMap<(String, u64), HashMap<String, Vec<SystemTime>>>,
}

fn state_of(t: &pb::Task) -> i32 {
    t.status.as_ref().map_or(0, |s| s.state)
}

impl FailureHistory {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that a task of `service_id` at `service_version` failed on
    /// `node_id` at `at`.
    pub fn record(
        &mut self,
        node_id: &str,
        service_id: &str,
        service_version: u64,
        at: SystemTime,
    ) {
        let times = self
            .by_service
            .entry((service_id.to_owned(), service_version))
            .or_default()
            .entry(node_id.to_owned())
            .or_default();
        // Keep the list sorted even if observations arrive out of order.
        let pos = times.partition_point(|t| *t <= at);
        times.insert(pos, at);
    }

    /// Records a failure if `new` is a task that has just moved into FAILED
    /// or REJECTED on a node (`old` is the task before the change, if known).
    /// Call it for every task update the leader sees.
    pub fn observe(&mut self, old: Option<&pb::Task>, new: &pb::Task, at: SystemTime) {
        let state = state_of(new);
        let failed =
            state == pb::TaskState::Failed as i32 || state == pb::TaskState::Rejected as i32;
        if !failed || new.node_id.is_empty() || old.is_some_and(|o| state_of(o) == state) {
            return;
        }
        self.record(&new.node_id, &new.service_id, new.service_version, at);
    }

    /// Failures of the service version on the node within the window before
    /// `now`.
    #[must_use]
    pub fn recent(
        &self,
        node_id: &str,
        service_id: &str,
        service_version: u64,
        now: SystemTime,
    ) -> usize {
        self.nodes_of(service_id, service_version)
            .and_then(|nodes| nodes.get(node_id))
            .map_or(0, |times| count_recent(times, now))
    }

    pub(crate) fn nodes_of(
        &self,
        service_id: &str,
        service_version: u64,
    ) -> Option<&HashMap<String, Vec<SystemTime>>> {
        // A borrowed tuple key cannot be looked up without allocating, and
        // this runs once per task group, not per node.
        self.by_service
            .get(&(service_id.to_owned(), service_version))
    }

    /// Forgets failures older than the window; call now and then.
    pub fn prune(&mut self, now: SystemTime) {
        let Some(cutoff) = now.checked_sub(FAILURE_WINDOW) else {
            return;
        };
        self.by_service.retain(|_, nodes| {
            nodes.retain(|_, times| {
                times.retain(|t| *t >= cutoff);
                !times.is_empty()
            });
            !nodes.is_empty()
        });
    }
}

pub(crate) fn count_recent(times: &[SystemTime], now: SystemTime) -> usize {
    match now.checked_sub(FAILURE_WINDOW) {
        Some(cutoff) => times.len() - times.partition_point(|t| *t < cutoff),
        None => times.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + s)
    }

    fn task(state: pb::TaskState) -> pb::Task {
        pb::Task {
            service_id: "svc".into(),
            service_version: 3,
            node_id: "n1".into(),
            status: Some(pb::TaskStatus {
                state: state.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn counts_only_the_window() {
        let mut h = FailureHistory::new();
        for s in [0, 10, 100, 299, 400] {
            h.record("n1", "svc", 3, at(s));
        }
        // At 400: failures after 100 count (window is 300 s, exclusive start).
        assert_eq!(h.recent("n1", "svc", 3, at(400)), 3);
        assert_eq!(h.recent("n1", "svc", 4, at(400)), 0);
        assert_eq!(h.recent("n2", "svc", 3, at(400)), 0);
        h.prune(at(400));
        assert_eq!(h.recent("n1", "svc", 3, at(400)), 3);
        h.prune(at(10_000));
        assert!(h.by_service.is_empty());
    }

    #[test]
    fn observes_transitions_into_failed_or_rejected_once() {
        let mut h = FailureHistory::new();
        let running = task(pb::TaskState::Running);
        let failed = task(pb::TaskState::Failed);
        h.observe(Some(&running), &running, at(0));
        assert_eq!(h.recent("n1", "svc", 3, at(0)), 0);
        h.observe(Some(&running), &failed, at(1));
        h.observe(Some(&failed), &failed, at(2));
        assert_eq!(h.recent("n1", "svc", 3, at(2)), 1);
        h.observe(None, &task(pb::TaskState::Rejected), at(3));
        assert_eq!(h.recent("n1", "svc", 3, at(3)), 2);
        let mut unassigned = task(pb::TaskState::Failed);
        unassigned.node_id.clear();
        h.observe(None, &unassigned, at(4));
        assert_eq!(h.recent("n1", "svc", 3, at(4)), 2);
    }
}
