//! The update supervisor: rolling updates and rollbacks of replicated and
//! global services (swarmkit's updater), as a state machine stepped with
//! `now`.
//!
//! A slot is dirty when its wanted task runs an older task spec (a change
//! to placement alone does not count while the task's node still meets the
//! new constraints). Each step replaces dirty slots while fewer than
//! `parallelism` replacements are busy (0 = all at once). A replacement is
//! busy until its new task runs (or ends), and then for `delay`.
//! stop-first shuts the old task down and creates the new one READY, to
//! start once the old has stopped; start-first starts the new one and shuts
//! the old down once the new runs.
//!
//! A new task that fails, is rejected or exits before it has run for
//! `monitor` counts as a failure; when failures exceed `max_failure_ratio`
//! of the slots, `failure_action` applies: pause (status PAUSED), continue,
//! or rollback (the previous spec becomes the spec, status
//! ROLLBACK_STARTED, and the rollback config drives the next steps; a
//! failing rollback pauses). When no slot is dirty or busy, the update
//! completes after a last `monitor` period.
//!
//! What the store cannot tell (when a new task started running, which
//! failures were counted) lives in [`UpdateProgress`], which the caller
//! keeps per service. A new leader starts with an empty one: it re-derives
//! the slots from the store and may forget failures seen before, as
//! swarmkit does.
//!
//! Only a spec change (which clears the status) starts an update. Once an
//! update or rollback has completed, a slot found out of date later (a
//! restart racing the rollback) is replaced without touching the status
//! or counting failures.
//!
//! Never writes the service spec except for an automatic rollback, and
//! never touches the update status while it is paused.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use swarm_proto::v1 as pb;
use swarm_proto::v1::TaskState as S;
use swarm_proto::v1::UpdateState as U;

use super::plan::{Ix, Plan};
use super::task::{
    duration, has_ended, id, is, is_live, is_stopped, new_task, newest, state, status_time, time_of,
};
use super::{Action, Context, SlotKey, WakeReason};
use crate::scheduler::{node_matches, parse_constraints};

/// `--update-monitor` and `--rollback-monitor` when unset.
pub const DEFAULT_MONITOR: Duration = Duration::from_secs(5);

/// The status messages, as docker words them.
pub const MSG_UPDATING: &str = "update in progress";
pub const MSG_COMPLETED: &str = "update completed";
pub const MSG_ROLLBACK_COMPLETED: &str = "rollback completed";

/// An update config with docker's defaults filled in.
#[derive(Debug, Clone, Copy)]
struct Config {
    /// 0 = all at once.
    parallelism: u64,
    delay: Duration,
    failure_action: pb::UpdateFailureAction,
    monitor: Duration,
    max_failure_ratio: f32,
    order: pb::UpdateOrder,
}

impl Config {
    fn of(c: Option<&pb::UpdateConfig>) -> Config {
        match c {
            // `service create` without update flags: parallelism 1.
            None => Config {
                parallelism: 1,
                delay: Duration::ZERO,
                failure_action: pb::UpdateFailureAction::Pause,
                monitor: DEFAULT_MONITOR,
                max_failure_ratio: 0.0,
                order: pb::UpdateOrder::StopFirst,
            },
            Some(c) => Config {
                parallelism: c.parallelism,
                delay: duration(c.delay.as_ref()).unwrap_or_default(),
                failure_action: c.failure_action(),
                monitor: duration(c.monitor.as_ref()).unwrap_or(DEFAULT_MONITOR),
                max_failure_ratio: c.max_failure_ratio,
                order: c.order(),
            },
        }
    }

    /// How long to watch after the last replacement before declaring the
    /// update complete (swarmkit waits at least a second past the delay).
    fn final_watch(&self) -> Duration {
        if self.delay >= self.monitor {
            self.delay + Duration::from_secs(1)
        } else {
            self.monitor
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Tracked {
    /// Created by this progress (so its whole life was watched), rather
    /// than adopted from the store after a leader change.
    watched: bool,
    running_since: Option<SystemTime>,
    /// When it ran (or ended, or was stopped): its lane's delay starts then.
    done_at: Option<SystemTime>,
}

/// What the update supervisor remembers about one service's update between
/// steps. Start with `UpdateProgress::default()`; it resets itself when the
/// service's spec or direction (update or rollback) changes.
#[derive(Debug, Clone, Default)]
pub struct UpdateProgress {
    target: Option<pb::TaskSpec>,
    rollback: bool,
    begun: bool,
    total_slots: usize,
    tracked: BTreeMap<String, Tracked>,
    failed: BTreeSet<String>,
}

/// Where an update stands after a step.
#[derive(Debug, Clone, PartialEq)]
pub enum UpdateOutcome {
    /// Nothing to update and no update in progress.
    Idle,
    /// Slots are being replaced. `started` lists those this step began.
    Updating {
        started: Vec<SlotKey>,
        /// Replacements under way or in their delay.
        busy: usize,
        /// Dirty slots not started yet.
        remaining: usize,
    },
    /// Every slot is replaced; watching for failures until `until`.
    Monitoring { until: SystemTime },
    /// This step marked the update (or rollback) completed.
    Completed,
    /// Paused (now or before); the status message says why.
    Paused { reason: String },
    /// This step started an automatic rollback.
    RollingBack { reason: String },
}

/// One step's result.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateStep {
    pub actions: Vec<Action>,
    pub outcome: UpdateOutcome,
}

impl UpdateProgress {
    /// Whether a replacement this update started has not run (or ended)
    /// yet: only then does a task reaching RUNNING call for a step.
    #[must_use]
    pub fn awaits_tasks(&self) -> bool {
        self.tracked.values().any(|t| t.done_at.is_none())
    }

    /// One step of the update of `service`, given all its tasks. Only the
    /// update supervisor's own decisions: restarts, scaling and the reaper
    /// are left to [`orchestrate`](super::orchestrate), which runs them
    /// together.
    pub fn step(
        &mut self,
        ctx: &Context<'_>,
        service: &pb::Service,
        tasks: &[Arc<pb::Task>],
    ) -> UpdateStep {
        let mut plan = Plan::new(tasks);
        let outcome = stage(self, ctx, service, &mut plan);
        UpdateStep {
            actions: plan.into_actions(),
            outcome,
        }
    }
}

fn status_state(service: &pb::Service) -> i32 {
    service.update_status.as_ref().map_or(0, |s| s.state)
}

/// Whether `t` already runs what `target` asks for.
fn is_current(ctx: &Context<'_>, t: &pb::Task, target: &pb::TaskSpec) -> bool {
    let default = pb::TaskSpec::default();
    let spec = t.spec.as_ref().unwrap_or(&default);
    if spec == target {
        return true;
    }
    // Placement alone changed: fine as long as the node meets the new
    // constraints (swarmkit's rule; moving tasks needs a forced update).
    if spec.placement == target.placement {
        return false;
    }
    let mut same = spec.clone();
    same.placement.clone_from(&target.placement);
    if same != *target {
        return false;
    }
    let constraints = target
        .placement
        .as_ref()
        .and_then(|p| parse_constraints(&p.constraints).ok())
        .unwrap_or_default();
    ctx.nodes
        .get(&t.node_id)
        .is_some_and(|n| node_matches(&constraints, n))
}

/// A slot that needs its task replaced: the wanted tasks to retire (empty
/// if the slot's last task is dead and the restart policy let it be).
struct Dirty {
    key: SlotKey,
    old: Vec<Ix>,
}

fn with_status(service: &pb::Service, state: U, message: String, now: SystemTime) -> pb::Service {
    let mut s = service.clone();
    let previous = s.update_status.take().unwrap_or_default();
    let starting = matches!(state, U::Updating | U::RollbackStarted);
    let finished = matches!(state, U::Completed | U::RollbackCompleted);
    s.update_status = Some(pb::UpdateStatus {
        state: state.into(),
        started_at: if starting && previous.state != state as i32 {
            Some(now.into())
        } else {
            previous.started_at
        },
        completed_at: finished.then(|| now.into()),
        message,
    });
    s
}

/// Whether a tracked task ended early enough to count against the update:
/// it failed, was rejected, exited, or was shut down without being asked,
/// before running for `monitor` (or before running at all, if this
/// progress watched it from its creation).
fn is_failure(plan: &Plan, ix: Ix, tr: &Tracked, monitor: Duration, now: SystemTime) -> bool {
    let Some(t) = plan.get(ix) else {
        return false;
    };
    let st = state(t);
    let unasked = plan
        .original(ix)
        .is_none_or(|o| o.desired_state <= S::Running as i32);
    let early = is(st, S::Failed)
        || is(st, S::Rejected)
        || is(st, S::Complete)
        || (is(st, S::Shutdown) && unasked);
    if !early {
        return false;
    }
    let ended = status_time(t).unwrap_or(now).min(now);
    match tr.running_since {
        None => tr.watched,
        Some(since) => ended.duration_since(since).unwrap_or_default() <= monitor,
    }
}

pub(crate) fn stage(
    progress: &mut UpdateProgress,
    ctx: &Context<'_>,
    service: &pb::Service,
    plan: &mut Plan,
) -> UpdateOutcome {
    let Some(spec) = service.spec.as_ref() else {
        return UpdateOutcome::Idle;
    };
    let global = match spec.mode {
        Some(pb::service_spec::Mode::Replicated(_)) => false,
        Some(pb::service_spec::Mode::Global(_)) => true,
        _ => return UpdateOutcome::Idle,
    };
    let status = status_state(service);
    if is_update(status, U::Paused) || is_update(status, U::RollbackPaused) {
        let reason = service
            .update_status
            .as_ref()
            .map(|s| s.message.clone())
            .unwrap_or_default();
        return UpdateOutcome::Paused { reason };
    }
    let rollback = is_update(status, U::RollbackStarted);
    let active = is_update(status, U::Updating) || rollback;
    // A finished update or rollback is over: a slot that is out of date
    // after it (a straggler of a race) is replaced quietly, never read as a
    // new update. Only a spec change, which clears the status, starts one.
    let settled = is_update(status, U::Completed) || is_update(status, U::RollbackCompleted);
    let cfg = Config::of(if rollback {
        spec.rollback.as_ref()
    } else {
        spec.update.as_ref()
    });
    let target = spec.task.clone().unwrap_or_default();
    if progress.target.as_ref() != Some(&target) || progress.rollback != rollback {
        *progress = UpdateProgress {
            target: Some(target.clone()),
            rollback,
            ..UpdateProgress::default()
        };
    }
    let now = ctx.now;

    // Which slots are dirty, and which replacements are half done.
    let slots = plan.group_by(|t| {
        if global {
            (!t.node_id.is_empty()).then(|| SlotKey::Node(t.node_id.clone()))
        } else {
            (t.slot > 0).then_some(SlotKey::Replica(t.slot))
        }
    });
    let mut dirty = Vec::new();
    let mut in_flight: Vec<Ix> = Vec::new();
    for (key, ixs) in slots.iter() {
        // A paused node keeps what it runs: no new task, not even an update
        // (swarmkit's rule; the task could not be scheduled there anyway).
        if let SlotKey::Node(node) = key
            && ctx.nodes.get(node).is_none_or(|n| super::global::paused(n))
        {
            continue;
        }
        let mut current = 0usize;
        let mut current_runs = false;
        let mut old: Vec<Ix> = Vec::new();
        for &i in ixs {
            let Some(t) = plan.get(i).filter(|t| is_live(t)) else {
                continue;
            };
            if is_current(ctx, t, &target) {
                current += 1;
                current_runs |= is(state(t), S::Running);
            } else {
                old.push(i);
            }
        }
        if old.is_empty() {
            if current == 0 && !plan.waiting.contains(key) {
                let last = newest(ixs.iter().filter_map(|&i| plan.get(i)));
                if let Some(last) = last
                    && last.desired_state < S::Remove as i32
                    && !is_current(ctx, last, &target)
                {
                    dirty.push(Dirty {
                        key: key.clone(),
                        old,
                    });
                }
            }
            continue;
        }
        if current == 0 {
            dirty.push(Dirty {
                key: key.clone(),
                old,
            });
            continue;
        }
        // Old and new both wanted: a start-first replacement.
        in_flight.extend(ixs.iter().copied().filter(|&i| {
            plan.get(i)
                .is_some_and(|t| is_live(t) && is_current(ctx, t, &target))
        }));
        if current_runs {
            for i in old {
                plan.set_desired(i, S::Shutdown);
            }
        }
    }

    // A fresh progress (new leader, or new spec) adopts replacements that
    // are already under way, so they keep holding their lanes. After a
    // finished update there are none: a restart is not a replacement.
    if !progress.begun {
        if active {
            let started_at = service
                .update_status
                .as_ref()
                .and_then(|s| time_of(s.started_at.as_ref()));
            for (i, t) in plan.tasks() {
                let adopt = in_flight.contains(&i)
                    || (started_at.is_some_and(|at| super::task::created(t) >= at)
                        && is_live(t)
                        && state(t) < S::Running as i32
                        && is_current(ctx, t, &target));
                if adopt {
                    progress.tracked.entry(id(t).to_owned()).or_default();
                }
            }
        }
        progress.total_slots = dirty.len() + progress.tracked.len();
        progress.begun = true;
    }

    // Where the replacements are in this plan.
    let positions: Vec<(String, Option<Ix>)> = if progress.tracked.is_empty() {
        Vec::new()
    } else {
        let index = plan.index_by_id();
        progress
            .tracked
            .keys()
            .map(|k| (k.clone(), index.get(k.as_str()).copied()))
            .collect()
    };

    // What happened to them since the last step.
    for (task_id, ix) in &positions {
        let Some(tr) = progress.tracked.get_mut(task_id) else {
            continue;
        };
        let Some(t) = ix.and_then(|i| plan.get(i)) else {
            tr.done_at.get_or_insert(now);
            continue;
        };
        let at = status_time(t).unwrap_or(now).min(now);
        if is(state(t), S::Running) {
            tr.running_since.get_or_insert(at);
            tr.done_at.get_or_insert(at);
        } else if has_ended(t) {
            tr.done_at.get_or_insert(at);
        } else if !is_live(t) {
            // Shut down before it ran (its node went away, say).
            tr.done_at.get_or_insert(now);
        }
    }

    // Failures.
    if active && cfg.failure_action != pb::UpdateFailureAction::Continue {
        let found: Vec<String> = positions
            .iter()
            .filter(|(task_id, ix)| {
                !progress.failed.contains(task_id)
                    && ix
                        .zip(progress.tracked.get(task_id))
                        .is_some_and(|(i, tr)| is_failure(plan, i, tr, cfg.monitor, now))
            })
            .map(|(task_id, _)| task_id.clone())
            .collect();
        if let Some(task_id) = found.last().cloned() {
            progress.failed.extend(found);
            let total = progress.total_slots.max(1);
            #[allow(clippy::cast_precision_loss)]
            let ratio = progress.failed.len() as f32 / total as f32;
            if ratio > cfg.max_failure_ratio {
                return fail(progress, ctx, service, plan, &cfg, rollback, &task_id);
            }
        }
    }

    // Lanes in use.
    let mut busy = 0usize;
    let mut wake: Option<SystemTime> = None;
    for tr in progress.tracked.values() {
        match tr.done_at {
            None => busy += 1,
            Some(done) if done + cfg.delay > now => {
                busy += 1;
                let at = done + cfg.delay;
                wake = Some(wake.map_or(at, |w| w.min(at)));
            }
            Some(_) => {}
        }
    }
    let free = if cfg.parallelism == 0 {
        usize::MAX
    } else {
        usize::try_from(cfg.parallelism)
            .unwrap_or(usize::MAX)
            .saturating_sub(busy)
    };

    if (!dirty.is_empty() || busy > 0) && !active && !settled {
        plan.update_service(with_status(
            service,
            U::Updating,
            MSG_UPDATING.to_owned(),
            now,
        ));
    }

    let mut started = Vec::new();
    for d in dirty.iter().take(free) {
        let mut task = new_task(ctx, service, &d.key);
        match cfg.order {
            pb::UpdateOrder::StopFirst => {
                for &i in &d.old {
                    plan.set_desired(i, S::Shutdown);
                }
                let all_stopped = d
                    .old
                    .iter()
                    .filter_map(|&i| plan.get(i))
                    .all(|t| is_stopped(ctx, t));
                task.desired_state = if all_stopped { S::Running } else { S::Ready }.into();
            }
            pb::UpdateOrder::StartFirst => task.desired_state = S::Running.into(),
        }
        let task_id = id(&task).to_owned();
        plan.create(task);
        progress.tracked.insert(
            task_id,
            Tracked {
                watched: true,
                ..Tracked::default()
            },
        );
        started.push(d.key.clone());
    }
    let remaining = dirty.len() - started.len();
    if !started.is_empty() || busy > 0 || remaining > 0 {
        if let Some(at) = wake {
            plan.wake(at, WakeReason::UpdateDelay);
        }
        return UpdateOutcome::Updating {
            busy: busy + started.len(),
            started,
            remaining,
        };
    }

    // Nothing dirty, nothing busy.
    if !active {
        return UpdateOutcome::Idle;
    }
    let last = progress.tracked.values().filter_map(|t| t.done_at).max();
    if let Some(last) = last {
        let until = last + cfg.delay + cfg.final_watch();
        if until > now {
            plan.wake(until, WakeReason::UpdateMonitor);
            return UpdateOutcome::Monitoring { until };
        }
    }
    let (state, message) = if rollback {
        (U::RollbackCompleted, MSG_ROLLBACK_COMPLETED)
    } else {
        (U::Completed, MSG_COMPLETED)
    };
    plan.update_service(with_status(service, state, message.to_owned(), now));
    UpdateOutcome::Completed
}

fn is_update(value: i32, s: U) -> bool {
    value == s as i32
}

/// Applies the failure action after `task_id` tipped the failure ratio.
fn fail(
    progress: &mut UpdateProgress,
    ctx: &Context<'_>,
    service: &pb::Service,
    plan: &mut Plan,
    cfg: &Config,
    rollback: bool,
    task_id: &str,
) -> UpdateOutcome {
    let now = ctx.now;
    let pause = |message: String, plan: &mut Plan| {
        let state = if rollback {
            U::RollbackPaused
        } else {
            U::Paused
        };
        plan.update_service(with_status(service, state, message.clone(), now));
        UpdateOutcome::Paused { reason: message }
    };
    match cfg.failure_action {
        pb::UpdateFailureAction::Rollback if !rollback => {
            let Some(previous) = service.previous_spec.clone() else {
                return pause(
                    format!(
                        "update paused due to failure or early termination of task {task_id}; \
                         it cannot roll back: the service has no previous spec"
                    ),
                    plan,
                );
            };
            let reason =
                format!("update rolled back due to failure or early termination of task {task_id}");
            let mut s = with_status(service, U::RollbackStarted, reason.clone(), now);
            s.spec = Some(previous);
            s.previous_spec = None;
            plan.update_service(s);
            *progress = UpdateProgress::default();
            UpdateOutcome::RollingBack { reason }
        }
        _ => {
            let what = if rollback { "rollback" } else { "update" };
            pause(
                format!("{what} paused due to failure or early termination of task {task_id}"),
                plan,
            )
        }
    }
}
