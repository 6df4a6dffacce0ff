//! The orchestrators: keep every service's tasks in line with its spec
//! (swarmkit's `manager/orchestrator`: replicated, global and jobs
//! orchestrators, restart supervisor, update supervisor, task reaper).
//!
//! Owns: which tasks exist and their desired state. A pass over one
//! service runs in stages on a [`plan`]: the mode's reconciler
//! ([`replicated`], [`global`], [`jobs`]: scaling, restarts per policy,
//! tasks on down or drained nodes, delayed starts), then the rolling
//! [`update`] supervisor, then the [`reaper`]. [`orchestrate`] runs them
//! all; each module also has its own entry point.
//!
//! Must never: read the store, a clock or a random source other than
//! [`store::new_id`](crate::store::new_id) for new task IDs; write
//! anything; or set a task's observed state (agents and the scheduler
//! report those). Every function takes a snapshot plus `now` and returns
//! [`Action`]s; the leader loop (`manager::leader`) turns them into one store batch
//! ([`Action::write`]) and runs the pass again when anything about the
//! service, its tasks or their nodes changes, and at each
//! [`Action::ReconcileAt`] time.

pub mod global;
mod instance;
pub mod jobs;
mod plan;
pub mod reaper;
pub mod replicated;
mod restart;
mod task;
pub mod update;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use swarm_proto::v1 as pb;
use swarm_proto::v1::TaskState as S;

use crate::store::{ReadTx, StoreError, WriteTx};
use plan::Plan;

pub use task::{DEFAULT_RESTART_DELAY, NEW_TASK_MESSAGE, NEW_TASK_STATE, new_task};
pub use update::{UpdateOutcome, UpdateProgress, UpdateStep};

/// Nodes by ID.
pub type NodeMap = BTreeMap<String, Arc<pb::Node>>;

/// Every node in a view.
#[must_use]
pub fn nodes_of(view: &ReadTx) -> NodeMap {
    view.list::<pb::Node>()
        .map(|n| {
            (
                n.meta.as_ref().map_or_else(String::new, |m| m.id.clone()),
                n,
            )
        })
        .collect()
}

/// What the orchestrators read besides the service and its tasks.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The leader's clock, for new tasks' status time, restart delays and
    /// update timing.
    pub now: SystemTime,
    pub nodes: &'a NodeMap,
    /// For `--task-history-limit`; `None` uses docker's default (5).
    pub cluster: Option<&'a pb::Cluster>,
}

/// One instance of a service: a replica slot, or a node for global
/// services.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SlotKey {
    Replica(u64),
    Node(String),
}

/// Why a pass asks to run again later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WakeReason {
    /// The restart of the instance whose last task is `task_id` waits for
    /// its `--restart-delay`.
    RestartDelay { task_id: String },
    /// A rolling update waits for `--update-delay` before its next slot.
    UpdateDelay,
    /// A rolling update watches its last replacements (`--update-monitor`)
    /// before completing.
    UpdateMonitor,
}

/// A decision. Tasks and services carry the version they were read at, so
/// a batch built from a stale view fails instead of overwriting newer
/// state.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// A new task, complete with `meta.id`.
    CreateTask {
        task: Box<pb::Task>,
    },
    /// A task with a new desired state (always a later one).
    UpdateTask {
        task: Box<pb::Task>,
    },
    RemoveTask {
        id: String,
    },
    /// The service with a new update status (or, for an automatic
    /// rollback, its previous spec).
    UpdateService {
        service: Box<pb::Service>,
    },
    /// A service marked `pending_delete` whose tasks are all gone.
    RemoveService {
        id: String,
    },
    /// Not a write: run the pass for this service again at `at`.
    ReconcileAt {
        at: SystemTime,
        reason: WakeReason,
    },
}

impl Action {
    /// Adds the action to a batch being prepared; [`Action::ReconcileAt`]
    /// writes nothing. Takes the action: its object moves into the batch
    /// (100,000 new tasks are 100,000 fewer copies).
    pub fn write(self, tx: &mut WriteTx) -> Result<(), StoreError> {
        match self {
            Action::CreateTask { task } => tx.create(*task),
            Action::UpdateTask { task } => tx.update(*task),
            Action::RemoveTask { id } => tx.remove::<pb::Task>(&id),
            Action::UpdateService { service } => tx.update(*service),
            Action::RemoveService { id } => tx.remove::<pb::Service>(&id),
            Action::ReconcileAt { .. } => Ok(()),
        }
    }
}

/// The earliest [`Action::ReconcileAt`] among `actions`.
#[must_use]
pub fn next_wake(actions: &[Action]) -> Option<SystemTime> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::ReconcileAt { at, .. } => Some(*at),
            _ => None,
        })
        .min()
}

/// A full pass over one service: its mode's reconciler, the update
/// supervisor (replicated and global services), then the reaper. `tasks`
/// are all the service's tasks; `progress` is this service's update memory
/// (keep one per service ID; a fresh one is fine after a leader change).
#[must_use]
pub fn orchestrate(
    ctx: &Context<'_>,
    service: &pb::Service,
    tasks: &[Arc<pb::Task>],
    progress: &mut UpdateProgress,
) -> Vec<Action> {
    let mut plan = Plan::new(tasks);
    if service.pending_delete {
        for i in 0..tasks.len() {
            plan.set_desired(i, S::Remove);
        }
        reaper::stage(ctx, service, &mut plan);
        if plan.is_empty() {
            plan.remove_service(service.meta.as_ref().map_or("", |m| m.id.as_str()));
        }
        return plan.into_actions();
    }
    match service.spec.as_ref().and_then(|s| s.mode.as_ref()) {
        Some(pb::service_spec::Mode::Replicated(_)) => {
            replicated::stage(ctx, service, &mut plan);
            update::stage(progress, ctx, service, &mut plan);
        }
        Some(pb::service_spec::Mode::Global(_)) => {
            global::stage(ctx, service, &mut plan, None);
            update::stage(progress, ctx, service, &mut plan);
        }
        Some(pb::service_spec::Mode::ReplicatedJob(_)) => {
            jobs::replicated_stage(ctx, service, &mut plan);
        }
        Some(pb::service_spec::Mode::GlobalJob(_)) => jobs::global_stage(ctx, service, &mut plan),
        None => {}
    }
    reaper::stage(ctx, service, &mut plan);
    plan.into_actions()
}
