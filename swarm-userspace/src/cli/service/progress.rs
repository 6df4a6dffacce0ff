//! The convergence display of `service create/update/scale/rollback`, as
//! docker's: "overall progress: N out of M tasks", one bar per replica slot
//! (or per node for global services), then "verify: Service converged" once
//! every task has stayed RUNNING for [`MONITOR`].
//!
//! Pure: [`Tracker::observe`] turns a snapshot of the service, its tasks and
//! the nodes, at a time since the wait began, into the lines to show and
//! whether the wait is over; [`Screen`] turns successive frames into the
//! bytes to write (redrawn on a terminal, changed lines only otherwise).
//! The polling loop lives in the command.
use std::{collections::HashMap, time::Duration};

use swarm_proto::v1::{self as pb, service_spec::Mode};

use crate::cli::task::task_error;

/// How often the command polls the manager.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// How long every task must stay RUNNING before the service counts as
/// converged (docker waits 5 s; tasks here start faster).
pub const MONITOR: Duration = Duration::from_secs(1);
/// How long a task may stay PENDING with "no suitable node" before the wait
/// gives up: no node can take it, and waiting longer rarely helps.
pub const NO_NODE_TIMEOUT: Duration = Duration::from_secs(120);
/// Slots or nodes shown one per line; beyond this only the totals are.
pub const MAX_LINES: usize = 100;
const BAR_WIDTH: u64 = 50;
/// Longest error text shown on a task's line.
const MAX_ERR_LEN: usize = 100;

/// What the manager said, at one poll.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot<'a> {
    /// `None` once the service is gone.
    pub service: Option<&'a pb::Service>,
    pub tasks: &'a [pb::Task],
    pub nodes: &'a [pb::Node],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Waiting,
    Converged,
    Failed(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub lines: Vec<String>,
    pub outcome: Outcome,
}

/// Follows one change (a create, update, scale or rollback) to its end.
#[derive(Debug, Clone)]
pub struct Tracker {
    write_version: u64,
    write_time: Option<prost_types::Timestamp>,
    rollback: bool,
    stable_since: Option<Duration>,
    no_node_since: Option<Duration>,
}

fn state(t: &pb::Task) -> i32 {
    t.status.as_ref().map_or(0, |s| s.state)
}

fn created(t: &pb::Task) -> (i64, i32, u64) {
    let m = t.meta.clone().unwrap_or_default();
    let c = m.created_at.unwrap_or_default();
    (c.seconds, c.nanos, m.version)
}

fn ts_key(t: &prost_types::Timestamp) -> (i64, i32) {
    (t.seconds, t.nanos)
}

const RUNNING: i32 = pb::TaskState::Running as i32;
const COMPLETE: i32 = pb::TaskState::Complete as i32;

/// Docker's progress steps: a task's state as a fraction of RUNNING.
fn step(s: i32) -> u64 {
    match pb::TaskState::try_from(s) {
        Ok(pb::TaskState::New) => 1,
        Ok(pb::TaskState::Pending) => 3,
        Ok(pb::TaskState::Assigned) => 4,
        Ok(pb::TaskState::Accepted) => 5,
        Ok(pb::TaskState::Preparing) => 6,
        Ok(pb::TaskState::Ready) => 7,
        Ok(pb::TaskState::Starting) => 8,
        Ok(pb::TaskState::Running | pb::TaskState::Complete) => 9,
        _ => 0,
    }
}

fn bar(s: i32) -> String {
    let done = usize::try_from(step(s) * BAR_WIDTH / 9).unwrap_or(0);
    let width = usize::try_from(BAR_WIDTH).unwrap_or(50);
    format!("[{}>{}]", "=".repeat(done), " ".repeat(width - done))
}

fn state_word(s: i32) -> String {
    pb::TaskState::try_from(s)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("TASK_STATE_")
                .to_ascii_lowercase()
        })
        .unwrap_or_else(|_| format!("state {s}"))
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut out: String = s.chars().take(max - 1).collect();
        out.push('…');
        out
    }
}

/// One task's line: its state and bar, or its error.
fn task_line(label: &str, t: Option<&pb::Task>) -> String {
    let Some(t) = t else {
        return format!("{label}:");
    };
    let s = state(t);
    let err = task_error(t);
    if !err.is_empty() && s != RUNNING && s != COMPLETE {
        return format!("{label}: {}", truncate(&err, MAX_ERR_LEN));
    }
    format!("{label}: {:<10}{}", state_word(s), bar(s))
}

impl Tracker {
    /// `write` is the service as the create or update returned it: tasks
    /// created at or after its version and time belong to this change.
    #[must_use]
    pub fn new(write: &pb::Service, rollback: bool) -> Self {
        let meta = write.meta.clone().unwrap_or_default();
        Tracker {
            write_version: meta.version,
            write_time: meta.updated_at,
            rollback,
            stable_since: None,
            no_node_since: None,
        }
    }

    /// Created for this change, by version (when the orchestrator records
    /// it) or by the leader's clock.
    fn fresh(&self, t: &pb::Task) -> bool {
        if self.write_version > 0 && t.service_version >= self.write_version {
            return true;
        }
        match (
            &self.write_time,
            t.meta.as_ref().and_then(|m| m.created_at.as_ref()),
        ) {
            (Some(w), Some(c)) => ts_key(c) >= ts_key(w),
            _ => false,
        }
    }

    /// Runs the current spec: the same task spec as the service (swarmkit's
    /// rule), or made for this change.
    fn up_to_date(&self, t: &pb::Task, svc: &pb::Service) -> bool {
        t.spec.as_ref() == svc.spec.as_ref().and_then(|s| s.task.as_ref()) || self.fresh(t)
    }

    /// The frame for `snap`, seen `now` after the wait began.
    pub fn observe(&mut self, snap: Snapshot<'_>, now: Duration) -> Frame {
        let Some(svc) = snap.service else {
            return Frame {
                lines: vec![],
                outcome: Outcome::Failed("the service was removed while waiting for it".into()),
            };
        };
        let tasks: Vec<&pb::Task> = snap
            .tasks
            .iter()
            .filter(|t| Some(&t.service_id) == svc.meta.as_ref().map(|m| &m.id))
            .collect();
        if let Some(reason) = self.update_failure(svc) {
            return Frame {
                lines: vec![],
                outcome: Outcome::Failed(reason),
            };
        }
        let spec = svc.spec.clone().unwrap_or_default();
        let (mut lines, done, job) = match &spec.mode {
            None | Some(Mode::Replicated(_)) => {
                let n = match &spec.mode {
                    Some(Mode::Replicated(r)) => r.replicas,
                    _ => 0,
                };
                self.replicated(svc, &tasks, n)
            }
            Some(Mode::Global(_)) => self.global(svc, &tasks, snap.nodes),
            Some(Mode::ReplicatedJob(j)) => Self::replicated_job(svc, &tasks, j),
            Some(Mode::GlobalJob(_)) => Self::global_job(svc, &tasks),
        };
        let updating = svc.update_status.as_ref().is_some_and(|u| {
            u.state == pb::UpdateState::Updating as i32
                || u.state == pb::UpdateState::RollbackStarted as i32
        });
        // During a rolling update a failed task is the update supervisor's
        // to judge (--update-failure-action, --update-max-failure-ratio):
        // its verdict, a pause or a rollback, ends the wait above.
        if !updating && let Some(reason) = self.task_failure(svc, &tasks, now) {
            return Frame {
                lines,
                outcome: Outcome::Failed(reason),
            };
        }
        if !done || updating {
            self.stable_since = None;
            return Frame {
                lines,
                outcome: Outcome::Waiting,
            };
        }
        if job {
            lines.push("verify: Job complete".into());
            return Frame {
                lines,
                outcome: Outcome::Converged,
            };
        }
        let since = *self.stable_since.get_or_insert(now);
        let stable_for = now.saturating_sub(since);
        if stable_for >= MONITOR {
            lines.push("verify: Service converged".into());
            return Frame {
                lines,
                outcome: Outcome::Converged,
            };
        }
        let left = (MONITOR - stable_for).as_secs_f64().ceil();
        lines.push(format!(
            "verify: Waiting {left} seconds to verify that tasks are stable..."
        ));
        Frame {
            lines,
            outcome: Outcome::Waiting,
        }
    }

    fn update_failure(&self, svc: &pb::Service) -> Option<String> {
        let u = svc.update_status.as_ref()?;
        let msg = if u.message.is_empty() {
            String::new()
        } else {
            format!(": {}", u.message)
        };
        match pb::UpdateState::try_from(u.state) {
            Ok(pb::UpdateState::Paused) => Some(format!(
                "service update paused{msg}; see `service ps` for the failed tasks, then `service update` to resume or `service rollback`"
            )),
            Ok(pb::UpdateState::RollbackPaused) => Some(format!("service rollback paused{msg}")),
            Ok(pb::UpdateState::RollbackCompleted) if !self.rollback => {
                Some(format!("service rolled back{msg}"))
            }
            _ => None,
        }
    }

    /// A task of this change that failed, or one no node could take for
    /// [`NO_NODE_TIMEOUT`].
    fn task_failure(
        &mut self,
        svc: &pb::Service,
        tasks: &[&pb::Task],
        now: Duration,
    ) -> Option<String> {
        for t in tasks.iter().filter(|t| self.fresh(t)) {
            let s = state(t);
            if s == pb::TaskState::Failed as i32 || s == pb::TaskState::Rejected as i32 {
                let why = task_error(t);
                let why = if why.is_empty() {
                    t.status
                        .as_ref()
                        .map(|s| s.message.clone())
                        .unwrap_or_default()
                } else {
                    why
                };
                return Some(format!(
                    "task {} {}: {why}; see `service ps --no-trunc {}`",
                    crate::cli::task::task_name(t),
                    state_word(s),
                    svc.spec
                        .as_ref()
                        .and_then(|s| s.annotations.as_ref())
                        .map_or("", |a| a.name.as_str())
                ));
            }
        }
        let stuck = tasks.iter().find(|t| {
            t.desired_state <= RUNNING
                && state(t) <= pb::TaskState::Pending as i32
                && self.up_to_date(t, svc)
                && task_error(t).contains("no suitable node")
        });
        match stuck {
            None => {
                self.no_node_since = None;
                None
            }
            Some(t) => {
                let since = *self.no_node_since.get_or_insert(now);
                (now.saturating_sub(since) >= NO_NODE_TIMEOUT).then(|| {
                    format!(
                        "task {} has been pending for {}s: {}; check the service's constraints and reservations (`service inspect --pretty`) against the nodes (`node ls`)",
                        crate::cli::task::task_name(t),
                        NO_NODE_TIMEOUT.as_secs(),
                        task_error(t)
                    )
                })
            }
        }
    }

    /// The task a slot (or node) is running or about to run: the newest
    /// up-to-date one still meant to run, else the newest up-to-date one.
    fn current<'a>(
        &self,
        svc: &pb::Service,
        tasks: impl Iterator<Item = &'a pb::Task>,
    ) -> Option<&'a pb::Task> {
        let candidates: Vec<&pb::Task> = tasks.filter(|t| self.up_to_date(t, svc)).collect();
        candidates
            .iter()
            .filter(|t| t.desired_state <= RUNNING)
            .max_by_key(|t| created(t))
            .or_else(|| candidates.iter().max_by_key(|t| created(t)))
            .copied()
    }

    fn replicated(
        &self,
        svc: &pb::Service,
        tasks: &[&pb::Task],
        n: u64,
    ) -> (Vec<String>, bool, bool) {
        let mut running = 0;
        let mut per_slot = Vec::new();
        for slot in 1..=n {
            let cur = self.current(svc, tasks.iter().copied().filter(|t| t.slot == slot));
            if cur.is_some_and(|t| state(t) == RUNNING && t.desired_state == RUNNING) {
                running += 1;
            }
            if per_slot.len() < MAX_LINES {
                per_slot.push(task_line(&format!("{slot}/{n}"), cur));
            }
        }
        let mut lines = vec![format!("overall progress: {running} out of {n} tasks")];
        if usize::try_from(n).is_ok_and(|n| n <= MAX_LINES) {
            lines.extend(per_slot);
        }
        let done = if n == 0 {
            !tasks
                .iter()
                .any(|t| t.desired_state <= RUNNING && state(t) == RUNNING)
        } else {
            running == n
        };
        (lines, done, false)
    }

    fn global(
        &self,
        svc: &pb::Service,
        tasks: &[&pb::Task],
        nodes: &[pb::Node],
    ) -> (Vec<String>, bool, bool) {
        let usable: HashMap<&str, &pb::Node> = nodes
            .iter()
            .filter(|n| {
                n.status
                    .as_ref()
                    .is_some_and(|s| s.state == pb::NodeState::Ready as i32)
                    && n.spec
                        .as_ref()
                        .is_none_or(|s| s.availability != pb::NodeAvailability::Drain as i32)
            })
            .filter_map(|n| n.meta.as_ref().map(|m| (m.id.as_str(), n)))
            .collect();
        let mut node_ids: Vec<&str> = tasks
            .iter()
            .filter(|t| t.desired_state <= RUNNING && self.up_to_date(t, svc))
            .map(|t| t.node_id.as_str())
            .filter(|id| usable.contains_key(id))
            .collect();
        node_ids.sort_unstable();
        node_ids.dedup();
        let total = node_ids.len();
        let mut running = 0;
        let mut per_node = Vec::new();
        for id in &node_ids {
            let cur = self.current(svc, tasks.iter().copied().filter(|t| t.node_id == *id));
            if cur.is_some_and(|t| state(t) == RUNNING && t.desired_state == RUNNING) {
                running += 1;
            }
            per_node.push(task_line(&id[..id.len().min(12)], cur));
        }
        let mut lines = vec![format!("overall progress: {running} out of {total} tasks")];
        if total <= MAX_LINES {
            lines.extend(per_node);
        }
        (lines, total > 0 && running == total, false)
    }

    fn iteration_tasks<'a>(svc: &pb::Service, tasks: &[&'a pb::Task]) -> Vec<&'a pb::Task> {
        let iteration = svc.job_status.as_ref().map_or(0, |j| j.job_iteration);
        tasks
            .iter()
            .copied()
            .filter(|t| t.job_iteration == iteration)
            .collect()
    }

    fn replicated_job(
        svc: &pb::Service,
        tasks: &[&pb::Task],
        j: &pb::ReplicatedJob,
    ) -> (Vec<String>, bool, bool) {
        let tasks = Self::iteration_tasks(svc, tasks);
        let total = j.total_completions;
        let concurrent = if j.max_concurrent == 0 {
            total
        } else {
            j.max_concurrent.min(total)
        };
        let completed = tasks.iter().filter(|t| state(t) == COMPLETE).count() as u64;
        let running = tasks.iter().filter(|t| state(t) == RUNNING).count() as u64;
        let mut lines = vec![
            format!(
                "job progress: {} out of {total} complete",
                completed.min(total)
            ),
            format!("active tasks: {running} out of {concurrent} tasks"),
        ];
        if usize::try_from(total).is_ok_and(|n| n <= MAX_LINES) {
            for slot in 1..=total {
                let cur = tasks
                    .iter()
                    .copied()
                    .filter(|t| t.slot == slot)
                    .max_by_key(|t| (state(t) == COMPLETE, created(t)));
                lines.push(task_line(&format!("{slot}/{total}"), cur));
            }
        }
        (lines, completed >= total, true)
    }

    fn global_job(svc: &pb::Service, tasks: &[&pb::Task]) -> (Vec<String>, bool, bool) {
        let tasks = Self::iteration_tasks(svc, tasks);
        let mut node_ids: Vec<&str> = tasks.iter().map(|t| t.node_id.as_str()).collect();
        node_ids.sort_unstable();
        node_ids.dedup();
        let total = node_ids.len();
        let mut completed = 0;
        let mut per_node = Vec::new();
        for id in &node_ids {
            let cur = tasks
                .iter()
                .copied()
                .filter(|t| t.node_id == *id)
                .max_by_key(|t| (state(t) == COMPLETE, created(t)));
            if cur.is_some_and(|t| state(t) == COMPLETE) {
                completed += 1;
            }
            per_node.push(task_line(&id[..id.len().min(12)], cur));
        }
        let mut lines = vec![format!("job progress: {completed} out of {total} complete")];
        if total <= MAX_LINES {
            lines.extend(per_node);
        }
        (lines, total > 0 && completed == total, true)
    }
}

/// Writes frames: on a terminal each frame redraws the previous one in
/// place; otherwise only lines that changed are printed, once each.
#[derive(Debug, Default)]
pub struct Screen {
    tty: bool,
    drawn: usize,
    last: HashMap<String, String>,
}

impl Screen {
    #[must_use]
    pub fn new(tty: bool) -> Self {
        Screen {
            tty,
            ..Default::default()
        }
    }

    /// The bytes that show `lines` after what was shown before.
    pub fn render(&mut self, lines: &[String]) -> String {
        let mut out = String::new();
        if self.tty {
            if self.drawn > 0 {
                out.push_str(&format!("\x1b[{}A", self.drawn));
            }
            for l in lines {
                out.push_str("\x1b[2K");
                out.push_str(l);
                out.push('\n');
            }
            if self.drawn > lines.len() {
                let extra = self.drawn - lines.len();
                for _ in 0..extra {
                    out.push_str("\x1b[2K\n");
                }
                out.push_str(&format!("\x1b[{extra}A"));
            }
            self.drawn = lines.len();
        } else {
            for l in lines {
                let key = l.split_once(':').map_or(l.as_str(), |(k, _)| k).to_string();
                if self.last.get(&key) != Some(l) {
                    out.push_str(l);
                    out.push('\n');
                    self.last.insert(key, l.clone());
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SID: &str = "svc1";

    fn ts(s: i64) -> Option<prost_types::Timestamp> {
        Some(prost_types::Timestamp {
            seconds: s,
            nanos: 0,
        })
    }

    fn service(mode: Mode, version: u64) -> pb::Service {
        pb::Service {
            meta: Some(pb::Meta {
                id: SID.into(),
                version,
                created_at: ts(100),
                updated_at: ts(100),
            }),
            spec: Some(pb::ServiceSpec {
                annotations: Some(pb::Annotations {
                    name: "web".into(),
                    ..Default::default()
                }),
                task: Some(pb::TaskSpec {
                    container: Some(pb::ContainerSpec {
                        image: "nginx".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                mode: Some(mode),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn replicated(n: u64) -> pb::Service {
        service(Mode::Replicated(pb::ReplicatedService { replicas: n }), 10)
    }

    fn task(id: &str, slot: u64, node: &str, s: pb::TaskState, created: i64) -> pb::Task {
        pb::Task {
            meta: Some(pb::Meta {
                id: id.into(),
                version: 11,
                created_at: ts(created),
                updated_at: ts(created),
            }),
            spec: Some(pb::TaskSpec {
                container: Some(pb::ContainerSpec {
                    image: "nginx".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            service_id: SID.into(),
            slot,
            node_id: node.into(),
            service_version: 10,
            service_annotations: Some(pb::Annotations {
                name: "web".into(),
                ..Default::default()
            }),
            status: Some(pb::TaskStatus {
                state: s as i32,
                ..Default::default()
            }),
            desired_state: RUNNING,
            ..Default::default()
        }
    }

    fn node(id: &str, ready: bool) -> pb::Node {
        pb::Node {
            meta: Some(pb::Meta {
                id: id.into(),
                ..Default::default()
            }),
            status: Some(pb::NodeStatus {
                state: if ready {
                    pb::NodeState::Ready
                } else {
                    pb::NodeState::Down
                } as i32,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn snap<'a>(s: &'a pb::Service, tasks: &'a [pb::Task], nodes: &'a [pb::Node]) -> Snapshot<'a> {
        Snapshot {
            service: Some(s),
            tasks,
            nodes,
        }
    }

    const FULL: &str = "[==================================================>]";

    #[test]
    fn replicated_progress_reads_like_docker() {
        let s = replicated(3);
        let mut tr = Tracker::new(&s, false);
        let f = tr.observe(snap(&s, &[], &[]), Duration::ZERO);
        assert_eq!(
            f.lines,
            ["overall progress: 0 out of 3 tasks", "1/3:", "2/3:", "3/3:"]
        );
        assert_eq!(f.outcome, Outcome::Waiting);

        let tasks = [
            task("t1", 1, "n1", pb::TaskState::Running, 101),
            task("t2", 2, "n1", pb::TaskState::Preparing, 101),
            task("t3", 3, "n1", pb::TaskState::Pending, 101),
        ];
        let f = tr.observe(snap(&s, &tasks, &[]), Duration::from_millis(200));
        assert_eq!(
            f.lines,
            [
                "overall progress: 1 out of 3 tasks".to_string(),
                format!("1/3: running   {FULL}"),
                "2/3: preparing [=================================>                 ]".into(),
                "3/3: pending   [================>                                  ]".into(),
            ]
        );
        assert_eq!(f.outcome, Outcome::Waiting);
    }

    #[test]
    fn converges_after_the_monitor_period() {
        let s = replicated(2);
        let mut tr = Tracker::new(&s, false);
        let tasks = [
            task("t1", 1, "n1", pb::TaskState::Running, 101),
            task("t2", 2, "n2", pb::TaskState::Running, 101),
        ];
        let f = tr.observe(snap(&s, &tasks, &[]), Duration::from_secs(3));
        assert_eq!(f.outcome, Outcome::Waiting);
        assert_eq!(
            f.lines.last().map(String::as_str),
            Some("verify: Waiting 1 seconds to verify that tasks are stable...")
        );
        let f = tr.observe(snap(&s, &tasks, &[]), Duration::from_millis(3_600));
        assert_eq!(f.outcome, Outcome::Waiting);
        // A task that stops running restarts the monitor period.
        let flapping = [
            tasks[0].clone(),
            task("t2", 2, "n2", pb::TaskState::Starting, 101),
        ];
        let f = tr.observe(snap(&s, &flapping, &[]), Duration::from_millis(3_800));
        assert_eq!(f.outcome, Outcome::Waiting);
        assert!(!f.lines.iter().any(|l| l.starts_with("verify")));
        let f = tr.observe(snap(&s, &tasks, &[]), Duration::from_secs(4));
        assert_eq!(f.outcome, Outcome::Waiting);
        let f = tr.observe(snap(&s, &tasks, &[]), Duration::from_secs(5));
        assert_eq!(f.outcome, Outcome::Converged);
        assert_eq!(
            f.lines.last().map(String::as_str),
            Some("verify: Service converged")
        );
    }

    #[test]
    fn old_tasks_do_not_count_for_an_update() {
        // Updated at version 20 with a new image: the running tasks run the old one.
        let mut s = replicated(1);
        s.meta.as_mut().unwrap().version = 20;
        s.meta.as_mut().unwrap().updated_at = ts(200);
        s.spec
            .as_mut()
            .unwrap()
            .task
            .as_mut()
            .unwrap()
            .container
            .as_mut()
            .unwrap()
            .image = "nginx:2".into();
        let mut tr = Tracker::new(&s, false);
        let old = task("t1", 1, "n1", pb::TaskState::Running, 101);
        let f = tr.observe(
            snap(&s, std::slice::from_ref(&old), &[]),
            Duration::from_secs(10),
        );
        assert_eq!(f.lines[0], "overall progress: 0 out of 1 tasks");
        let mut new = task("t2", 1, "n1", pb::TaskState::Running, 201);
        new.service_version = 20;
        let mut old_down = old.clone();
        old_down.desired_state = pb::TaskState::Shutdown as i32;
        let tasks = [old_down, new];
        let f = tr.observe(snap(&s, &tasks, &[]), Duration::from_secs(11));
        assert_eq!(f.lines[0], "overall progress: 1 out of 1 tasks");
        // An update in progress is not done even when every slot runs.
        s.update_status = Some(pb::UpdateStatus {
            state: pb::UpdateState::Updating as i32,
            ..Default::default()
        });
        let f = tr.observe(snap(&s, &tasks, &[]), Duration::from_secs(20));
        assert_eq!(f.outcome, Outcome::Waiting);
        s.update_status.as_mut().unwrap().state = pb::UpdateState::Completed as i32;
        tr.observe(snap(&s, &tasks, &[]), Duration::from_secs(21));
        let f = tr.observe(snap(&s, &tasks, &[]), Duration::from_secs(22));
        assert_eq!(f.outcome, Outcome::Converged);
    }

    #[test]
    fn unchanged_tasks_count_after_a_scale() {
        // Scaled from 1 to 2 at version 30: the first task's spec is unchanged.
        let mut s = replicated(2);
        s.meta.as_mut().unwrap().version = 30;
        s.meta.as_mut().unwrap().updated_at = ts(300);
        let mut tr = Tracker::new(&s, false);
        let mut t2 = task("t2", 2, "n1", pb::TaskState::Running, 301);
        t2.service_version = 30;
        let tasks = [task("t1", 1, "n1", pb::TaskState::Running, 101), t2];
        let f = tr.observe(snap(&s, &tasks, &[]), Duration::ZERO);
        assert_eq!(f.lines[0], "overall progress: 2 out of 2 tasks");
    }

    #[test]
    fn a_failed_task_of_this_change_fails_the_wait() {
        let s = replicated(1);
        let mut tr = Tracker::new(&s, false);
        let mut t = task("t1", 1, "n1", pb::TaskState::Failed, 101);
        t.status.as_mut().unwrap().err = "starting container failed: no such image".into();
        let f = tr.observe(snap(&s, std::slice::from_ref(&t), &[]), Duration::ZERO);
        assert_eq!(f.lines[1], "1/1: starting container failed: no such image");
        let Outcome::Failed(why) = f.outcome else {
            panic!("{:?}", f.outcome)
        };
        assert!(
            why.contains("task web.1 failed: starting container failed: no such image"),
            "{why}"
        );
        // A failure from before this change does not.
        let mut old = t.clone();
        old.service_version = 3;
        old.meta.as_mut().unwrap().created_at = ts(50);
        old.desired_state = pb::TaskState::Shutdown as i32;
        let f = tr.observe(snap(&s, &[old], &[]), Duration::ZERO);
        assert_eq!(f.outcome, Outcome::Waiting);
    }

    #[test]
    fn no_suitable_node_gives_up_after_the_timeout() {
        let s = replicated(1);
        let mut tr = Tracker::new(&s, false);
        let mut t = task("t1", 1, "", pb::TaskState::Pending, 101);
        t.status.as_mut().unwrap().err =
            "no suitable node (scheduling constraints not satisfied on 1 node)".into();
        let tasks = [t];
        let f = tr.observe(snap(&s, &tasks, &[]), Duration::from_secs(1));
        assert_eq!(
            f.lines[1],
            "1/1: no suitable node (scheduling constraints not satisfied on 1 node)"
        );
        assert_eq!(f.outcome, Outcome::Waiting);
        let f = tr.observe(snap(&s, &tasks, &[]), Duration::from_secs(120));
        assert_eq!(f.outcome, Outcome::Waiting);
        let f = tr.observe(snap(&s, &tasks, &[]), Duration::from_secs(121));
        let Outcome::Failed(why) = f.outcome else {
            panic!("{:?}", f.outcome)
        };
        assert!(
            why.contains("pending for 120s: no suitable node (scheduling constraints"),
            "{why}"
        );
        // Once placed, the clock resets.
        let placed = [task("t1", 1, "n1", pb::TaskState::Assigned, 101)];
        let mut tr = Tracker::new(&s, false);
        tr.observe(snap(&s, &tasks, &[]), Duration::ZERO);
        tr.observe(snap(&s, &placed, &[]), Duration::from_secs(100));
        let f = tr.observe(snap(&s, &tasks, &[]), Duration::from_secs(200));
        assert_eq!(f.outcome, Outcome::Waiting);
    }

    #[test]
    fn a_failed_task_during_an_update_waits_for_the_update_supervisor() {
        let mut s = replicated(1);
        s.update_status = Some(pb::UpdateStatus {
            state: pb::UpdateState::Updating as i32,
            ..Default::default()
        });
        let mut tr = Tracker::new(&s, false);
        let mut t = task("t1", 1, "n1", pb::TaskState::Failed, 101);
        t.status.as_mut().unwrap().err = "task: non-zero exit (1)".into();
        let tasks = [t];
        let f = tr.observe(snap(&s, &tasks, &[]), Duration::ZERO);
        assert_eq!(f.lines[1], "1/1: task: non-zero exit (1)");
        assert_eq!(f.outcome, Outcome::Waiting);
        // The supervisor rolls back (--update-failure-action rollback): the
        // wait ends with its verdict.
        let u = s.update_status.as_mut().unwrap();
        u.state = pb::UpdateState::RollbackStarted as i32;
        assert_eq!(
            tr.observe(snap(&s, &tasks, &[]), Duration::from_secs(1))
                .outcome,
            Outcome::Waiting
        );
        let u = s.update_status.as_mut().unwrap();
        u.state = pb::UpdateState::RollbackCompleted as i32;
        u.message = "rollback completed".into();
        let f = tr.observe(snap(&s, &tasks, &[]), Duration::from_secs(2));
        assert_eq!(
            f.outcome,
            Outcome::Failed("service rolled back: rollback completed".into())
        );
        // Once the update is over, a failure of its tasks fails the wait.
        s.update_status.as_mut().unwrap().state = pb::UpdateState::Completed as i32;
        let f = tr.observe(snap(&s, &tasks, &[]), Duration::from_secs(3));
        assert!(matches!(f.outcome, Outcome::Failed(w) if w.contains("task web.1 failed")));
    }

    #[test]
    fn paused_and_rolled_back_updates_fail() {
        let mut s = replicated(1);
        s.update_status = Some(pb::UpdateStatus {
            state: pb::UpdateState::Paused as i32,
            message: "update paused due to failure or early termination of task t1".into(),
            ..Default::default()
        });
        let f = Tracker::new(&s, false).observe(snap(&s, &[], &[]), Duration::ZERO);
        assert!(
            matches!(f.outcome, Outcome::Failed(w) if w.starts_with("service update paused: update paused due to failure"))
        );
        s.update_status.as_mut().unwrap().state = pb::UpdateState::RollbackCompleted as i32;
        let f = Tracker::new(&s, false).observe(snap(&s, &[], &[]), Duration::ZERO);
        assert!(matches!(f.outcome, Outcome::Failed(w) if w.starts_with("service rolled back")));
        // ... unless a rollback was asked for.
        let tasks = [task("t1", 1, "n1", pb::TaskState::Running, 101)];
        let mut tr = Tracker::new(&s, true);
        tr.observe(snap(&s, &tasks, &[]), Duration::ZERO);
        let f = tr.observe(snap(&s, &tasks, &[]), Duration::from_secs(1));
        assert_eq!(f.outcome, Outcome::Converged);
        let f = Tracker::new(&s, false).observe(
            Snapshot {
                service: None,
                tasks: &[],
                nodes: &[],
            },
            Duration::ZERO,
        );
        assert!(matches!(f.outcome, Outcome::Failed(w) if w.contains("removed")));
    }

    #[test]
    fn scaling_to_zero_waits_for_tasks_to_stop() {
        let s = replicated(0);
        let mut tr = Tracker::new(&s, false);
        let tasks = [task("t1", 1, "n1", pb::TaskState::Running, 101)];
        let f = tr.observe(snap(&s, &tasks, &[]), Duration::ZERO);
        assert_eq!(f.lines, ["overall progress: 0 out of 0 tasks"]);
        assert_eq!(f.outcome, Outcome::Waiting);
        let mut stopping = tasks[0].clone();
        stopping.desired_state = pb::TaskState::Shutdown as i32;
        tr.observe(
            snap(&s, std::slice::from_ref(&stopping), &[]),
            Duration::from_secs(1),
        );
        let f = tr.observe(snap(&s, &[stopping], &[]), Duration::from_secs(2));
        assert_eq!(f.outcome, Outcome::Converged);
    }

    #[test]
    fn global_progress_has_a_line_per_ready_node() {
        let s = service(Mode::Global(pb::GlobalService {}), 10);
        let nodes = [
            node("node-aaaaaaaaaaaaaaa", true),
            node("node-bbbbbbbbbbbbbbbb", true),
            node("node-dead", false),
        ];
        let mut tr = Tracker::new(&s, false);
        let f = tr.observe(snap(&s, &[], &nodes), Duration::ZERO);
        assert_eq!(f.lines, ["overall progress: 0 out of 0 tasks"]);
        assert_eq!(f.outcome, Outcome::Waiting);
        let tasks = [
            task("t1", 0, "node-aaaaaaaaaaaaaaa", pb::TaskState::Running, 101),
            task(
                "t2",
                0,
                "node-bbbbbbbbbbbbbbbb",
                pb::TaskState::Starting,
                101,
            ),
            task("t3", 0, "node-dead", pb::TaskState::Assigned, 101),
        ];
        let f = tr.observe(snap(&s, &tasks, &nodes), Duration::ZERO);
        assert_eq!(
            f.lines,
            [
                "overall progress: 1 out of 2 tasks".to_string(),
                format!("node-aaaaaaa: running   {FULL}"),
                "node-bbbbbbb: starting  [============================================>      ]"
                    .into(),
            ]
        );
        let tasks = [
            tasks[0].clone(),
            task(
                "t2",
                0,
                "node-bbbbbbbbbbbbbbbb",
                pb::TaskState::Running,
                101,
            ),
        ];
        tr.observe(snap(&s, &tasks, &nodes), Duration::from_secs(1));
        let f = tr.observe(snap(&s, &tasks, &nodes), Duration::from_secs(2));
        assert_eq!(f.outcome, Outcome::Converged);
    }

    #[test]
    fn jobs_complete() {
        let mut s = service(
            Mode::ReplicatedJob(pb::ReplicatedJob {
                max_concurrent: 1,
                total_completions: 2,
            }),
            10,
        );
        s.job_status = Some(pb::JobStatus {
            job_iteration: 1,
            last_execution: None,
        });
        let mut t1 = task("t1", 1, "n1", pb::TaskState::Complete, 101);
        t1.job_iteration = 1;
        let mut t2 = task("t2", 2, "n1", pb::TaskState::Running, 102);
        t2.job_iteration = 1;
        let mut tr = Tracker::new(&s, false);
        let f = tr.observe(snap(&s, &[t1.clone(), t2.clone()], &[]), Duration::ZERO);
        assert_eq!(f.lines[0], "job progress: 1 out of 2 complete");
        assert_eq!(f.lines[1], "active tasks: 1 out of 1 tasks");
        assert_eq!(f.outcome, Outcome::Waiting);
        t2.status.as_mut().unwrap().state = COMPLETE;
        let f = tr.observe(snap(&s, &[t1.clone(), t2.clone()], &[]), Duration::ZERO);
        assert_eq!(f.outcome, Outcome::Converged);
        assert_eq!(
            f.lines.last().map(String::as_str),
            Some("verify: Job complete")
        );

        let mut g = service(Mode::GlobalJob(pb::GlobalJob {}), 10);
        g.job_status = Some(pb::JobStatus::default());
        let mut tr = Tracker::new(&g, false);
        let a = task("a", 0, "n1", pb::TaskState::Complete, 101);
        let b = task("b", 0, "n2", pb::TaskState::Running, 101);
        let f = tr.observe(snap(&g, &[a.clone(), b], &[]), Duration::ZERO);
        assert_eq!(f.lines[0], "job progress: 1 out of 2 complete");
        let b = task("b", 0, "n2", pb::TaskState::Complete, 101);
        let f = tr.observe(snap(&g, &[a, b], &[]), Duration::ZERO);
        assert_eq!(f.outcome, Outcome::Converged);
    }

    #[test]
    fn screens_redraw_on_a_terminal_and_print_changes_otherwise() {
        let l = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let mut plain = Screen::new(false);
        assert_eq!(
            plain.render(&l(&["overall progress: 0 out of 1 tasks", "1/1: pending"])),
            "overall progress: 0 out of 1 tasks\n1/1: pending\n"
        );
        assert_eq!(
            plain.render(&l(&["overall progress: 0 out of 1 tasks", "1/1: pending"])),
            ""
        );
        assert_eq!(
            plain.render(&l(&["overall progress: 1 out of 1 tasks", "1/1: running"])),
            "overall progress: 1 out of 1 tasks\n1/1: running\n"
        );
        assert_eq!(
            plain.render(&l(&[
                "overall progress: 1 out of 1 tasks",
                "1/1: running",
                "verify: Service converged"
            ])),
            "verify: Service converged\n"
        );

        let mut tty = Screen::new(true);
        assert_eq!(tty.render(&l(&["a", "b"])), "\x1b[2Ka\n\x1b[2Kb\n");
        assert_eq!(
            tty.render(&l(&["c", "d", "e"])),
            "\x1b[2A\x1b[2Kc\n\x1b[2Kd\n\x1b[2Ke\n"
        );
        assert_eq!(
            tty.render(&l(&["f"])),
            "\x1b[3A\x1b[2Kf\n\x1b[2K\n\x1b[2K\n\x1b[2A"
        );
    }
}
