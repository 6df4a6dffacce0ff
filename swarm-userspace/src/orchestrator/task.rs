//! Task facts the orchestrators share: states, times, restart policy,
//! the health of a task's node, and building new tasks.

use std::time::{Duration, SystemTime};

use prost_types::Timestamp;
use swarm_proto::v1 as pb;
use swarm_proto::v1::TaskState as S;

use super::{Context, SlotKey};
use crate::store::new_id;

/// The observed state new tasks start in: the allocator gives them their
/// network addresses and moves them to PENDING, for the scheduler.
pub const NEW_TASK_STATE: S = S::New;
/// The status message of a new task (docker's).
pub const NEW_TASK_MESSAGE: &str = "created";
/// `--restart-delay` when the spec leaves it unset.
pub const DEFAULT_RESTART_DELAY: Duration = Duration::from_secs(5);

pub(crate) fn id(t: &pb::Task) -> &str {
    t.meta.as_ref().map_or("", |m| m.id.as_str())
}

pub(crate) fn state(t: &pb::Task) -> i32 {
    t.status.as_ref().map_or(0, |s| s.state)
}

pub(crate) fn is(value: i32, s: S) -> bool {
    value == s as i32
}

/// Still wanted: desired READY, RUNNING, or COMPLETE (jobs).
pub(crate) fn is_live(t: &pb::Task) -> bool {
    t.desired_state <= S::Complete as i32
}

/// Observed past RUNNING: it will not run (again).
pub(crate) fn has_ended(t: &pb::Task) -> bool {
    state(t) > S::Running as i32
}

pub(crate) fn time_of(ts: Option<&Timestamp>) -> Option<SystemTime> {
    ts.and_then(|t| SystemTime::try_from(*t).ok())
}

/// When the task was created: the store's stamp, else its first status.
pub(crate) fn created(t: &pb::Task) -> SystemTime {
    time_of(t.meta.as_ref().and_then(|m| m.created_at.as_ref()))
        .or_else(|| status_time(t))
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// The time of the task's current status.
pub(crate) fn status_time(t: &pb::Task) -> Option<SystemTime> {
    time_of(t.status.as_ref().and_then(|s| s.timestamp.as_ref()))
}

/// When the current status began, as best known and never after `now`
/// (agents' clocks may run ahead). Falls back to the store's last write,
/// and then to "long ago", so the answer does not move between passes.
pub(crate) fn since(t: &pb::Task, now: SystemTime) -> SystemTime {
    status_time(t)
        .or_else(|| time_of(t.meta.as_ref().and_then(|m| m.updated_at.as_ref())))
        .unwrap_or(SystemTime::UNIX_EPOCH)
        .min(now)
}

/// The newest of `tasks` by creation time (ties: highest ID).
pub(crate) fn newest<'a>(tasks: impl IntoIterator<Item = &'a pb::Task>) -> Option<&'a pb::Task> {
    tasks
        .into_iter()
        .max_by(|a, b| (created(a), id(a)).cmp(&(created(b), id(b))))
}

pub(crate) fn duration(d: Option<&prost_types::Duration>) -> Option<Duration> {
    d.map(|d| Duration::try_from(*d).unwrap_or_default())
}

/// A task's restart policy with docker's defaults filled in.
#[derive(Debug, Clone)]
pub(crate) struct RestartPolicy {
    pub condition: pb::RestartCondition,
    pub delay: Duration,
    /// 0 = unlimited.
    pub max_attempts: u64,
    /// `None` = unbounded.
    pub window: Option<Duration>,
}

impl RestartPolicy {
    pub fn of(spec: Option<&pb::TaskSpec>) -> RestartPolicy {
        let p = spec.and_then(|s| s.restart.as_ref());
        RestartPolicy {
            condition: p.map_or(pb::RestartCondition::Any, pb::RestartPolicy::condition),
            delay: duration(p.and_then(|p| p.delay.as_ref())).unwrap_or(DEFAULT_RESTART_DELAY),
            max_attempts: p.map_or(0, |p| p.max_attempts),
            window: duration(p.and_then(|p| p.window.as_ref())).filter(|w| !w.is_zero()),
        }
    }
}

/// Where a task's node stands, for the orchestrators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NodeHealth {
    /// Unassigned, or on a node that is up (or not yet known to be down).
    Fine,
    Down,
    Drained,
    /// The node was removed from the swarm.
    Missing,
}

pub(crate) fn node_health(ctx: &Context<'_>, t: &pb::Task) -> NodeHealth {
    if t.node_id.is_empty() {
        return NodeHealth::Fine;
    }
    let Some(node) = ctx.nodes.get(&t.node_id) else {
        return NodeHealth::Missing;
    };
    if node
        .status
        .as_ref()
        .is_some_and(|s| s.state == pb::NodeState::Down as i32)
    {
        NodeHealth::Down
    } else if node
        .spec
        .as_ref()
        .is_some_and(|s| s.availability == pb::NodeAvailability::Drain as i32)
    {
        NodeHealth::Drained
    } else {
        NodeHealth::Fine
    }
}

/// Not running and never going to: ended, never assigned, or on a node
/// that is down or gone. A delayed start waits for its slot's other tasks
/// to be stopped.
pub(crate) fn is_stopped(ctx: &Context<'_>, t: &pb::Task) -> bool {
    has_ended(t)
        || state(t) < S::Assigned as i32
        || matches!(node_health(ctx, t), NodeHealth::Down | NodeHealth::Missing)
}

/// A new task for `service`: the service's task spec, annotations and
/// endpoint, its version (and job iteration), desired RUNNING (COMPLETE
/// for jobs), status [`NEW_TASK_STATE`] at `ctx.now`, or PENDING if the
/// allocator has nothing to give it
/// ([`needs_allocation`](crate::allocator::needs_allocation)).
#[must_use]
pub fn new_task(ctx: &Context<'_>, service: &pb::Service, key: &SlotKey) -> pb::Task {
    let spec = service.spec.as_ref();
    let (slot, node_id) = match key {
        SlotKey::Replica(slot) => (*slot, String::new()),
        SlotKey::Node(node) => (0, node.clone()),
    };
    let job = spec.is_some_and(|s| {
        matches!(
            s.mode,
            Some(pb::service_spec::Mode::ReplicatedJob(_) | pb::service_spec::Mode::GlobalJob(_))
        )
    });
    // Nothing to allocate: straight to the scheduler.
    let (state, message) = if crate::allocator::needs_allocation(service) {
        (NEW_TASK_STATE, NEW_TASK_MESSAGE)
    } else {
        (S::Pending, crate::allocator::PENDING_MESSAGE)
    };
    pb::Task {
        meta: Some(pb::Meta {
            id: new_id(),
            ..Default::default()
        }),
        spec: Some(spec.and_then(|s| s.task.clone()).unwrap_or_default()),
        service_id: service
            .meta
            .as_ref()
            .map_or_else(String::new, |m| m.id.clone()),
        slot,
        node_id,
        service_version: service.meta.as_ref().map_or(0, |m| m.version),
        service_annotations: spec.and_then(|s| s.annotations.clone()),
        status: Some(pb::TaskStatus {
            timestamp: Some(ctx.now.into()),
            state: state.into(),
            message: message.to_owned(),
            ..Default::default()
        }),
        desired_state: if job { S::Complete } else { S::Running }.into(),
        networks: Vec::new(),
        // The allocated endpoint when there is one (host-mode ports matter
        // to the scheduler), else what the spec asks for.
        endpoint: service.endpoint.clone().or_else(|| {
            spec.and_then(|s| s.endpoint.clone()).map(|e| pb::Endpoint {
                spec: Some(e),
                ..Default::default()
            })
        }),
        job_iteration: if job {
            service.job_status.as_ref().map_or(0, |j| j.job_iteration)
        } else {
            0
        },
    }
}
