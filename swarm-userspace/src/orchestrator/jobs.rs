//! Jobs: replicated jobs run `total_completions` tasks to completion, at
//! most `max_concurrent` at a time; global jobs run one task to completion
//! on every eligible node, including nodes that join later (swarmkit's jobs
//! orchestrator).
//!
//! Job tasks are desired COMPLETE. A task that completes is never
//! restarted; one that fails is restarted per its restart policy. Running
//! the job again (`service update --force`) bumps the job iteration: tasks
//! of older iterations that have not ended are removed.

use std::sync::Arc;

use swarm_proto::v1 as pb;
use swarm_proto::v1::TaskState as S;

use super::instance::{self, Instance, Opts};
use super::plan::{Ix, Plan};
use super::task::{has_ended, new_task};
use super::{Action, Context, SlotKey};

/// The actions for a replicated job. `tasks` are all the service's tasks.
#[must_use]
pub fn reconcile_replicated(
    ctx: &Context<'_>,
    service: &pb::Service,
    tasks: &[Arc<pb::Task>],
) -> Vec<Action> {
    let mut plan = Plan::new(tasks);
    replicated_stage(ctx, service, &mut plan);
    plan.into_actions()
}

/// The actions for a global job. `tasks` are all the service's tasks.
#[must_use]
pub fn reconcile_global(
    ctx: &Context<'_>,
    service: &pb::Service,
    tasks: &[Arc<pb::Task>],
) -> Vec<Action> {
    let mut plan = Plan::new(tasks);
    global_stage(ctx, service, &mut plan);
    plan.into_actions()
}

pub(crate) fn iteration_of(service: &pb::Service) -> u64 {
    service.job_status.as_ref().map_or(0, |j| j.job_iteration)
}

/// Tasks of earlier runs that still run are removed.
fn retire_old_iterations(plan: &mut Plan, iteration: u64) {
    let old: Vec<Ix> = plan
        .tasks()
        .filter(|(_, t)| t.job_iteration != iteration && !has_ended(t))
        .map(|(i, _)| i)
        .collect();
    for i in old {
        plan.set_desired(i, S::Remove);
    }
}

pub(crate) fn replicated_stage(ctx: &Context<'_>, service: &pb::Service, plan: &mut Plan) {
    let Some(pb::service_spec::Mode::ReplicatedJob(job)) =
        service.spec.as_ref().and_then(|s| s.mode.as_ref())
    else {
        return;
    };
    let iteration = iteration_of(service);
    retire_old_iterations(plan, iteration);
    let total = job.total_completions;
    let max_concurrent = if job.max_concurrent == 0 {
        total
    } else {
        job.max_concurrent
    };

    let slots = plan.group_by(|t| {
        (t.job_iteration == iteration && t.slot > 0).then_some(SlotKey::Replica(t.slot))
    });
    let (mut done, mut active, mut settled) = (0u64, 0u64, 0u64);
    let mut used = std::collections::BTreeSet::new();
    for (key, ixs) in slots.iter() {
        let opts = Opts {
            key: key.clone(),
            job: true,
            allow_new: true,
        };
        match instance::reconcile(ctx, service, plan, &opts, ixs) {
            Instance::Done => done += 1,
            Instance::Serving | Instance::Waiting | Instance::Replaced | Instance::Blocked => {
                active += 1;
            }
            Instance::Settled => settled += 1,
            Instance::Free => continue,
        }
        if let Some(slot) = key.replica() {
            used.insert(slot);
        }
    }

    let wanted = max_concurrent
        .saturating_sub(active)
        .min(total.saturating_sub(done + active + settled));
    let mut next = 1u64;
    for _ in 0..wanted {
        while used.contains(&next) {
            next += 1;
        }
        plan.create(new_task(ctx, service, &SlotKey::Replica(next)));
        used.insert(next);
    }
}

pub(crate) fn global_stage(ctx: &Context<'_>, service: &pb::Service, plan: &mut Plan) {
    if !matches!(
        service.spec.as_ref().and_then(|s| s.mode.as_ref()),
        Some(pb::service_spec::Mode::GlobalJob(_))
    ) {
        return;
    }
    let iteration = iteration_of(service);
    retire_old_iterations(plan, iteration);
    super::global::stage(ctx, service, plan, Some(iteration));
}
