//! The task reaper: deletes tasks nobody needs any more (swarmkit's
//! taskreaper).
//!
//! - Tasks desired REMOVE (scaled away, service deleted, old job runs) are
//!   deleted once they have stopped: ended, never assigned, or on a node
//!   that left the swarm.
//! - Replicated and global services keep at most
//!   `task_history_retention_limit` tasks per instance (`--task-history-limit`,
//!   5 by default; negative keeps all), deleting the oldest finished ones
//!   first. With `--restart-max-attempts N` at least N + 1 are kept, since
//!   restart counts are read from them. The newest task of an instance is
//!   never deleted: it says whether the instance is restarting or done.
//!   Jobs keep their history: completed tasks are the job's record.

use std::sync::Arc;

use swarm_proto::v1 as pb;
use swarm_proto::v1::TaskState as S;

use super::plan::{Ix, Plan};
use super::task::{NodeHealth, RestartPolicy, created, has_ended, id, is_live, node_health, state};
use super::{Action, Context, SlotKey};
use crate::store::defaults::TASK_HISTORY_RETENTION_LIMIT;

/// The actions that delete a service's tasks that are no longer needed.
#[must_use]
pub fn reap(ctx: &Context<'_>, service: &pb::Service, tasks: &[Arc<pb::Task>]) -> Vec<Action> {
    let mut plan = Plan::new(tasks);
    stage(ctx, service, &mut plan);
    plan.into_actions()
}

/// Tasks whose service no longer exists: stopped ones are deleted, the
/// others are told to stop (desired REMOVE) and deleted on a later pass.
/// Tasks that belong to no service (network attachments) are left alone.
#[must_use]
pub fn orphaned(ctx: &Context<'_>, tasks: &[Arc<pb::Task>]) -> Vec<Action> {
    let owned: Vec<Arc<pb::Task>> = tasks
        .iter()
        .filter(|t| !t.service_id.is_empty())
        .cloned()
        .collect();
    let mut plan = Plan::new(&owned);
    for i in 0..owned.len() {
        plan.set_desired(i, S::Remove);
    }
    remove_stopped(ctx, &mut plan);
    plan.into_actions()
}

fn retention_limit(ctx: &Context<'_>, service: &pb::Service) -> Option<usize> {
    let limit = ctx
        .cluster
        .and_then(|c| c.spec.as_ref())
        .and_then(|s| s.orchestration.as_ref())
        .map_or(TASK_HISTORY_RETENTION_LIMIT, |o| {
            o.task_history_retention_limit
        });
    let limit = usize::try_from(limit).ok()?;
    let attempts =
        RestartPolicy::of(service.spec.as_ref().and_then(|s| s.task.as_ref())).max_attempts;
    let for_restarts = usize::try_from(attempts.saturating_add(1)).unwrap_or(usize::MAX);
    Some(if attempts > 0 {
        limit.max(for_restarts)
    } else {
        limit
    })
}

/// Gone for good: ended, never assigned, or its node left the swarm.
fn stopped_for_good(ctx: &Context<'_>, t: &pb::Task) -> bool {
    has_ended(t) || state(t) < S::Assigned as i32 || node_health(ctx, t) == NodeHealth::Missing
}

fn remove_stopped(ctx: &Context<'_>, plan: &mut Plan) {
    let gone: Vec<Ix> = plan
        .tasks()
        .filter(|(_, t)| t.desired_state >= S::Remove as i32 && stopped_for_good(ctx, t))
        .map(|(i, _)| i)
        .collect();
    for i in gone {
        plan.remove(i);
    }
}

pub(crate) fn stage(ctx: &Context<'_>, service: &pb::Service, plan: &mut Plan) {
    remove_stopped(ctx, plan);
    let Some(mode) = service.spec.as_ref().and_then(|s| s.mode.as_ref()) else {
        return;
    };
    let key: fn(&pb::Task) -> Option<SlotKey> = match mode {
        pb::service_spec::Mode::Replicated(_) => {
            |t| (t.slot > 0).then_some(SlotKey::Replica(t.slot))
        }
        pb::service_spec::Mode::Global(_) => {
            |t| (!t.node_id.is_empty()).then(|| SlotKey::Node(t.node_id.clone()))
        }
        pb::service_spec::Mode::ReplicatedJob(_) | pb::service_spec::Mode::GlobalJob(_) => return,
    };
    let Some(limit) = retention_limit(ctx, service) else {
        return;
    };
    let groups = plan.group_by(key);
    let mut drop = Vec::new();
    for (_, ixs) in groups.iter() {
        if ixs.len() <= limit {
            continue;
        }
        let mut tasks: Vec<(Ix, &pb::Task)> = ixs
            .iter()
            .filter_map(|&i| plan.get(i).map(|t| (i, t)))
            .collect();
        tasks.sort_by(|(_, a), (_, b)| (created(a), id(a)).cmp(&(created(b), id(b))));
        let Some((_newest, older)) = tasks.split_last() else {
            continue;
        };
        let mut left = tasks.len();
        for &(i, t) in older {
            if left <= limit {
                break;
            }
            if !is_live(t) && stopped_for_good(ctx, t) {
                drop.push(i);
                left -= 1;
            }
        }
    }
    for i in drop {
        plan.remove(i);
    }
}
