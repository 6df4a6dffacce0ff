//! One instance of a service: a replica slot, or a node for global
//! services. The rules every mode shares live here: take tasks off ended
//! runs and bad nodes, restart per policy, and start delayed tasks once
//! their predecessors have stopped.

use std::time::Duration;

use swarm_proto::v1 as pb;
use swarm_proto::v1::TaskState as S;

use super::plan::{Ix, Plan};
use super::restart::should_restart;
use super::task::{
    NodeHealth, RestartPolicy, has_ended, id, is, is_live, is_stopped, new_task, newest,
    node_health, since, state,
};
use super::{Context, SlotKey, WakeReason};

/// What an instance holds after its pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Instance {
    /// A task is wanted and healthy (maybe still starting).
    Serving,
    /// A restart waits for its delay.
    Waiting,
    /// A replacement was created in this pass.
    Replaced,
    /// Its last task ended and the restart policy says no more.
    Settled,
    /// Nothing may be created here now (a paused node).
    Blocked,
    /// A job's task completed.
    Done,
    /// No task, or only tasks being removed: the instance is not there.
    Free,
}

pub(crate) struct Opts {
    pub key: SlotKey,
    pub job: bool,
    /// False on paused nodes: no new task, not even a restart.
    pub allow_new: bool,
}

/// The desired state of a task that may run now.
pub(crate) fn run_state(job: bool) -> S {
    if job { S::Complete } else { S::Running }
}

/// Whether the instance is there at all: a task still wanted, or a last
/// task that was not removed (restarting, or refused a restart).
pub(crate) fn occupied(plan: &Plan, ixs: &[Ix]) -> bool {
    let tasks = || ixs.iter().filter_map(|&i| plan.get(i));
    tasks().any(is_live) || newest(tasks()).is_some_and(|t| t.desired_state != S::Remove as i32)
}

/// Why the instance has no healthy task.
enum Cause {
    /// Its task ended at this time.
    Ended(std::time::SystemTime),
    /// Its task was taken off a drained node: replaced at once.
    Drained,
    /// Its task lost its node, or was stopped for another reason: replaced
    /// at once (the node-down detection already took its time).
    Lost,
}

pub(crate) fn reconcile(
    ctx: &Context<'_>,
    service: &pb::Service,
    plan: &mut Plan,
    opts: &Opts,
    ixs: &[Ix],
) -> Instance {
    let mut healthy = 0usize;
    let mut delayed = false;
    let mut drained = false;
    for &i in ixs {
        let Some(t) = plan.get(i) else { continue };
        if opts.job && is(state(t), S::Complete) {
            return Instance::Done;
        }
        if !is_live(t) {
            continue;
        }
        if has_ended(t) {
            plan.set_desired(i, S::Shutdown);
            continue;
        }
        match node_health(ctx, t) {
            NodeHealth::Fine => {
                healthy += 1;
                delayed |= is(t.desired_state, S::Ready);
            }
            NodeHealth::Drained => {
                drained = true;
                plan.set_desired(i, S::Shutdown);
            }
            NodeHealth::Down | NodeHealth::Missing => plan.set_desired(i, S::Shutdown),
        }
    }

    if healthy > 0 {
        if delayed {
            start_delayed(ctx, plan, opts, ixs);
        }
        return Instance::Serving;
    }

    let tasks: Vec<&pb::Task> = ixs.iter().filter_map(|&i| plan.get(i)).collect();
    let Some(last) = newest(tasks.iter().copied()) else {
        return Instance::Free;
    };
    if last.desired_state >= S::Remove as i32 {
        return Instance::Free;
    }
    if !opts.allow_new {
        return Instance::Blocked;
    }
    let cause = if has_ended(last) {
        Cause::Ended(since(last, ctx.now))
    } else if drained {
        Cause::Drained
    } else {
        Cause::Lost
    };
    let when = match cause {
        Cause::Ended(at) => at,
        Cause::Drained | Cause::Lost => ctx.now,
    };
    if !should_restart(last, &tasks, opts.job, when) {
        return Instance::Settled;
    }
    let delay = match cause {
        Cause::Ended(_) => RestartPolicy::of(last.spec.as_ref()).delay,
        Cause::Drained | Cause::Lost => Duration::ZERO,
    };
    let at = when + delay;
    if at > ctx.now {
        let task_id = id(last).to_owned();
        plan.waiting.insert(opts.key.clone());
        plan.wake(at, WakeReason::RestartDelay { task_id });
        return Instance::Waiting;
    }
    let all_stopped = tasks.iter().all(|t| is_stopped(ctx, t));
    let mut task = new_task(ctx, service, &opts.key);
    task.desired_state = if all_stopped {
        run_state(opts.job)
    } else {
        // Wait (as READY) for the old task to stop before starting.
        S::Ready
    }
    .into();
    plan.create(task);
    Instance::Replaced
}

/// Tasks created READY (a restart after a drain, or a stop-first update)
/// may run once every other task of the instance that is being shut down
/// has stopped.
fn start_delayed(ctx: &Context<'_>, plan: &mut Plan, opts: &Opts, ixs: &[Ix]) {
    let others_stopped = ixs
        .iter()
        .filter_map(|&i| plan.get(i))
        .filter(|t| !is_live(t))
        .all(|t| is_stopped(ctx, t));
    if !others_stopped {
        return;
    }
    let ready: Vec<Ix> = ixs
        .iter()
        .copied()
        .filter(|&i| plan.get(i).is_some_and(|t| is(t.desired_state, S::Ready)))
        .collect();
    for i in ready {
        plan.set_desired(i, run_state(opts.job));
    }
}
