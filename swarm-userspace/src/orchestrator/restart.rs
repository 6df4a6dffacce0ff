//! The restart policy (swarmkit's restart supervisor, without its memory):
//! whether an instance whose task ended or lost its node gets a new task,
//! and when.
//!
//! Restart counts come from the store, as swarmkit rebuilds them after a
//! leader change: every task of an instance with the same task spec (and
//! job iteration) after the first was a restart. The spec, not the
//! service's version: that version moves with every write to the service
//! (its endpoint, its update status), not only with spec changes, like
//! swarmkit's `SpecVersion`. The task reaper keeps
//! `max_attempts + 1` tasks per instance so the count stays whole.

use std::time::SystemTime;

use swarm_proto::v1 as pb;
use swarm_proto::v1::TaskState as S;

use super::task::{RestartPolicy, created, id, is, state};

/// Whether `task`, the newest of its instance, should be replaced, given
/// the instance's other tasks (`instance` may include `task`). `when` is
/// when it ended (or now, if it was taken off its node).
pub(crate) fn should_restart(
    task: &pb::Task,
    instance: &[&pb::Task],
    job: bool,
    when: SystemTime,
) -> bool {
    let policy = RestartPolicy::of(task.spec.as_ref());
    let completed = is(state(task), S::Complete);
    match policy.condition {
        pb::RestartCondition::None => return false,
        pb::RestartCondition::OnFailure if completed => return false,
        // A job's task that completed is done, whatever the condition.
        pb::RestartCondition::Any if job && completed => return false,
        _ => {}
    }
    if policy.max_attempts == 0 {
        return true;
    }
    let mut peers: Vec<&pb::Task> = instance
        .iter()
        .copied()
        .filter(|t| t.spec == task.spec && t.job_iteration == task.job_iteration)
        .collect();
    if !peers.iter().any(|t| id(t) == id(task)) {
        peers.push(task);
    }
    peers.sort_by(|a, b| (created(a), id(a)).cmp(&(created(b), id(b))));
    // The first is the original; each later one was a restart.
    let restarts = peers.iter().skip(1).filter(|t| match policy.window {
        None => true,
        Some(window) => {
            let at = created(t);
            at <= when && when.checked_sub(window).is_none_or(|from| at > from)
        }
    });
    (restarts.count() as u64) < policy.max_attempts
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000 + s)
    }

    fn task(id: &str, created_s: u64, state: S, policy: pb::RestartPolicy) -> pb::Task {
        pb::Task {
            meta: Some(pb::Meta {
                id: id.into(),
                created_at: Some(at(created_s).into()),
                ..Default::default()
            }),
            spec: Some(pb::TaskSpec {
                restart: Some(policy),
                ..Default::default()
            }),
            service_version: 7,
            status: Some(pb::TaskStatus {
                state: state.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn policy(condition: pb::RestartCondition, max: u64, window_s: i64) -> pb::RestartPolicy {
        pb::RestartPolicy {
            condition: condition.into(),
            delay: None,
            max_attempts: max,
            window: (window_s > 0).then_some(prost_types::Duration {
                seconds: window_s,
                nanos: 0,
            }),
        }
    }

    #[test]
    fn conditions() {
        use pb::RestartCondition::{Any, None as Never, OnFailure};
        let failed = |c| task("t", 0, S::Failed, policy(c, 0, 0));
        let done = |c| task("t", 0, S::Complete, policy(c, 0, 0));
        assert!(should_restart(&failed(Any), &[], false, at(1)));
        assert!(should_restart(&done(Any), &[], false, at(1)));
        assert!(!should_restart(&done(Any), &[], true, at(1)));
        assert!(should_restart(&failed(OnFailure), &[], false, at(1)));
        assert!(!should_restart(&done(OnFailure), &[], false, at(1)));
        assert!(!should_restart(&failed(Never), &[], false, at(1)));
        // A task taken off a dead node is still "running": restarted unless
        // the condition is none.
        let lost = task("t", 0, S::Running, policy(OnFailure, 0, 0));
        assert!(should_restart(&lost, &[], false, at(1)));
    }

    #[test]
    fn max_attempts_count_restarts_of_this_version() {
        let p = policy(pb::RestartCondition::Any, 2, 0);
        let t0 = task("a", 0, S::Failed, p);
        let t1 = task("b", 10, S::Failed, p);
        let t2 = task("c", 20, S::Failed, p);
        assert!(should_restart(&t0, &[&t0], false, at(5)));
        assert!(should_restart(&t1, &[&t0, &t1], false, at(15)));
        assert!(!should_restart(&t2, &[&t0, &t1, &t2], false, at(25)));
        // Another spec does not count.
        let mut old = task("z", 0, S::Failed, p);
        old.spec.as_mut().unwrap().force_update = 1;
        assert!(should_restart(&t1, &[&old, &t0, &t1], false, at(15)));
    }

    #[test]
    fn writes_to_the_service_that_keep_its_spec_do_not_reset_the_count() {
        // The service object was rewritten between the tasks (the
        // allocator gave it its endpoint; an update status changed): its
        // version moved, its spec did not.
        let p = policy(pb::RestartCondition::Any, 2, 0);
        let t0 = task("a", 0, S::Failed, p);
        let mut t1 = task("b", 10, S::Failed, p);
        t1.service_version = 8;
        let mut t2 = task("c", 20, S::Failed, p);
        t2.service_version = 9;
        assert!(!should_restart(&t2, &[&t0, &t1, &t2], false, at(25)));
    }

    #[test]
    fn the_window_only_counts_recent_restarts() {
        let p = policy(pb::RestartCondition::Any, 1, 60);
        let t0 = task("a", 0, S::Failed, p);
        let t1 = task("b", 10, S::Failed, p);
        // t1 was a restart at 10; t1 fails at 30: 1 restart in the window.
        assert!(!should_restart(&t1, &[&t0, &t1], false, at(30)));
        // Failing at 100, the restart at 10 is outside the last 60 s.
        assert!(should_restart(&t1, &[&t0, &t1], false, at(100)));
    }
}
