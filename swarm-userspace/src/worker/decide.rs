//! The worker's decisions, without I/O: what a task manager does next, what
//! a container found after a restart means for its task, which leftovers a
//! restarted agent removes, and how a task becomes a container's labels.
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use swarm_proto::v1::{self as pb, TaskState};

use crate::executor::{
    ContainerConfig, ContainerState, ExitStatus, ImageConfig, NetworkMode, Signal, Status,
};

/// Labels docker puts on a task's container; a restarted agent finds its
/// containers by the first.
pub const LABEL_TASK_ID: &str = "com.docker.swarm.task.id";
pub const LABEL_TASK_NAME: &str = "com.docker.swarm.task.name";
pub const LABEL_SERVICE_ID: &str = "com.docker.swarm.service.id";
pub const LABEL_SERVICE_NAME: &str = "com.docker.swarm.service.name";
pub const LABEL_NODE_ID: &str = "com.docker.swarm.node.id";

const fn s(state: TaskState) -> i32 {
    state as i32
}

/// Whether a task with this desired state is to be stopped. Job tasks are
/// desired COMPLETE: they run until they exit, like swarmkit's; only a
/// desired state past COMPLETE (SHUTDOWN, REMOVE, ...) stops a task.
pub fn stop_wanted(desired: i32) -> bool {
    desired > s(TaskState::Complete)
}

/// What a task manager does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Report ACCEPTED.
    Accept,
    /// Pull, mount, create the container: PREPARING, then READY.
    Prepare,
    /// Run it: STARTING, then RUNNING.
    Start,
    /// Until it exits, turns unhealthy or the desired state changes.
    Wait,
    /// Stop the container (if there is one) and report SHUTDOWN.
    Shutdown,
    /// The container this state needs is gone: FAILED.
    Lost,
    /// Nothing to do until the task changes or is removed.
    Idle,
}

/// swarmkit's `exec.Do` as a table: the next step for a task whose last
/// reported state is `current`, whose desired state is `desired`, and which
/// has (`has_container`) or has not a container on this node.
pub fn step(current: i32, desired: i32, has_container: bool) -> Step {
    if current > s(TaskState::Running) {
        // COMPLETE, SHUTDOWN, FAILED, REJECTED: final. The container stays
        // (for its logs) until the task leaves the assignments.
        return Step::Idle;
    }
    if stop_wanted(desired) {
        return Step::Shutdown;
    }
    if current < s(TaskState::Accepted) {
        return Step::Accept;
    }
    if current <= s(TaskState::Preparing) {
        return if desired >= s(TaskState::Ready) {
            Step::Prepare
        } else {
            Step::Idle
        };
    }
    // READY, STARTING, RUNNING: reported only once a container existed.
    if !has_container {
        return Step::Lost;
    }
    if current == s(TaskState::Ready) && desired < s(TaskState::Running) {
        // Delayed start: prepared, and waiting to be told to run.
        return Step::Idle;
    }
    if current < s(TaskState::Running) {
        Step::Start
    } else {
        Step::Wait
    }
}

/// A status to report; the timestamp is added when it is reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub state: TaskState,
    pub message: String,
    pub err: String,
    pub pid: u32,
    pub exit_code: i32,
}

impl Report {
    pub fn new(state: TaskState, message: &str) -> Report {
        Report {
            state,
            message: message.to_owned(),
            err: String::new(),
            pid: 0,
            exit_code: 0,
        }
    }

    pub fn err(mut self, err: impl Into<String>) -> Report {
        self.err = err.into();
        self
    }

    pub fn running(pid: u32) -> Report {
        Report {
            pid,
            ..Report::new(TaskState::Running, "started")
        }
    }

    /// What the end of the container's process means for the task.
    pub fn exited(exit: ExitStatus) -> Report {
        let mut r = if exit.code == 0 && !exit.lost {
            Report::new(TaskState::Complete, "finished")
        } else if exit.lost {
            Report::new(TaskState::Failed, "started").err(format!(
                "task: non-zero exit ({}): the exit status was lost (the container's shim died)",
                exit.code
            ))
        } else if exit.oom_killed {
            // Docker shows this as `OOMKilled: true` in the container's
            // state; the task's error is what `service ps` shows.
            Report::new(TaskState::Failed, "started")
                .err(format!("task: non-zero exit ({}): OOM killed", exit.code))
        } else {
            Report::new(TaskState::Failed, "started")
                .err(format!("task: non-zero exit ({})", exit.code))
        };
        r.exit_code = exit.code;
        r
    }

    pub fn unhealthy() -> Report {
        Report::new(TaskState::Failed, "started").err("task: container unhealthy")
    }

    /// The status sent to the dispatcher.
    pub fn status(&self, container_id: &str, now: SystemTime) -> pb::TaskStatus {
        // Only states from READY on have a container to name.
        let container = (self.state as i32 >= s(TaskState::Ready)
            && self.state != TaskState::Rejected)
            .then(|| pb::ContainerStatus {
                container_id: container_id.to_owned(),
                pid: i32::try_from(self.pid).unwrap_or(0),
                exit_code: self.exit_code,
            });
        pb::TaskStatus {
            timestamp: Some(now.into()),
            state: self.state as i32,
            message: self.message.clone(),
            err: self.err.clone(),
            container,
            ports: Vec::new(),
        }
    }
}

/// What a container found for a task (after an agent restart, or by a
/// replacement task manager) means for the task, given the state last
/// reported (`current`, as the managers know it) and the desired state.
/// `None`: nothing new to report.
pub fn adopted(current: i32, desired: i32, container: &ContainerState) -> Option<Report> {
    if current > s(TaskState::Running) {
        return None;
    }
    match container.status {
        Status::Created => {
            (current < s(TaskState::Ready)).then(|| Report::new(TaskState::Ready, "prepared"))
        }
        Status::Running => {
            (current < s(TaskState::Running)).then(|| Report::running(container.pid.unwrap_or(0)))
        }
        Status::Exited => {
            let exit = container.exit.unwrap_or_else(ExitStatus::lost);
            if stop_wanted(desired) {
                // It was being stopped when the agent went away.
                let mut r = Report::new(TaskState::Shutdown, "shutdown");
                r.exit_code = exit.code;
                Some(r)
            } else {
                Some(Report::exited(exit))
            }
        }
    }
}

/// What a restarted agent removes once it knows its assignments.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Leftovers {
    /// Task containers no assigned task owns.
    pub containers: Vec<String>,
    /// Root filesystems no kept container uses (released after their
    /// container, if any, is removed).
    pub rootfs: Vec<String>,
}

/// The task a container was made for, from its labels (`None`: not a
/// swarm task's container; such containers are never touched).
pub fn task_of(c: &ContainerState) -> Option<&str> {
    c.labels
        .get(LABEL_TASK_ID)
        .map(String::as_str)
        .filter(|id| *id == c.id)
}

/// Given the first complete assignment set after a start, the containers
/// found on the node and the root filesystems the image store has mounted:
/// containers of tasks in the set are kept (their task managers adopt
/// them, whatever their desired state: a stopped container keeps its logs
/// until the task is removed); task containers of anything else are
/// removed; root filesystems not used by a kept container are released.
pub fn leftovers(
    assigned: &BTreeSet<String>,
    containers: &[ContainerState],
    rootfs: &[String],
) -> Leftovers {
    let mut kept = BTreeSet::new();
    let mut out = Leftovers::default();
    for c in containers {
        let Some(task) = task_of(c) else {
            continue;
        };
        if assigned.contains(task) {
            kept.insert(task.to_owned());
        } else {
            out.containers.push(c.id.clone());
        }
    }
    out.rootfs = rootfs
        .iter()
        .filter(|id| !kept.contains(*id))
        .cloned()
        .collect();
    out.rootfs.sort();
    out.rootfs.dedup();
    out
}

/// The task's container labels: its own, then docker's swarm labels.
pub fn labels(task: &pb::Task) -> BTreeMap<String, String> {
    let id = task_id(task);
    let mut l: BTreeMap<String, String> = task
        .spec
        .as_ref()
        .and_then(|s| s.container.as_ref())
        .map(|c| c.labels.clone().into_iter().collect())
        .unwrap_or_default();
    let service = task
        .service_annotations
        .as_ref()
        .map(|a| a.name.as_str())
        .unwrap_or_default();
    // docker: <service>.<slot>.<task> (<service>.<node>.<task> for global).
    let name = if task.slot > 0 {
        format!("{service}.{}.{id}", task.slot)
    } else {
        format!("{service}.{}.{id}", task.node_id)
    };
    l.insert(LABEL_TASK_ID.into(), id.to_owned());
    l.insert(LABEL_TASK_NAME.into(), name);
    l.insert(LABEL_SERVICE_ID.into(), task.service_id.clone());
    l.insert(LABEL_SERVICE_NAME.into(), service.to_owned());
    l.insert(LABEL_NODE_ID.into(), task.node_id.clone());
    l
}

pub fn task_id(task: &pb::Task) -> &str {
    task.meta
        .as_ref()
        .map(|m| m.id.as_str())
        .unwrap_or_default()
}

/// The container spec of a task, with the labels added.
pub fn container_spec(task: &pb::Task) -> Option<pb::ContainerSpec> {
    let mut c = task.spec.as_ref()?.container.clone()?;
    c.labels = labels(task).into_iter().collect();
    Some(c)
}

/// The container description of a task on a mounted rootfs.
pub fn container_config(
    task: &pb::Task,
    rootfs: std::path::PathBuf,
    image: ImageConfig,
) -> Option<ContainerConfig> {
    Some(ContainerConfig {
        id: task_id(task).to_owned(),
        rootfs,
        image,
        spec: container_spec(task)?,
        resources: task.spec.as_ref().and_then(|s| s.resources),
        // Loopback only; a task on overlay networks gets the namespace the
        // node's networking prepared instead (see `task::prepare`).
        network: NetworkMode::Isolated,
        addresses: Vec::new(),
        nameserver: None,
    })
}

/// How to stop a task's container: its stop signal (the task's, else the
/// image's, else SIGTERM; an invalid one falls back to SIGTERM, which can
/// only happen for a container adopted from another version) and grace.
pub fn stop_params(task: &pb::Task, image: Option<&ImageConfig>) -> (Duration, Signal) {
    let c = ContainerConfig {
        id: String::new(),
        rootfs: Default::default(),
        image: image.cloned().unwrap_or_default(),
        spec: task
            .spec
            .as_ref()
            .and_then(|s| s.container.clone())
            .unwrap_or_default(),
        resources: None,
        network: NetworkMode::Isolated,
        addresses: Vec::new(),
        nameserver: None,
    };
    (c.stop_grace(), c.stop_signal().unwrap_or(Signal::TERM))
}

#[cfg(test)]
mod tests {
    use super::*;
    use TaskState as T;

    fn st(t: T) -> i32 {
        t as i32
    }

    #[test]
    fn a_task_walks_to_running() {
        let want = st(T::Running);
        assert_eq!(step(st(T::Assigned), want, false), Step::Accept);
        assert_eq!(step(st(T::New), want, false), Step::Accept);
        assert_eq!(step(st(T::Accepted), want, false), Step::Prepare);
        // A restarted agent redoes an interrupted prepare.
        assert_eq!(step(st(T::Preparing), want, false), Step::Prepare);
        assert_eq!(step(st(T::Ready), want, true), Step::Start);
        assert_eq!(step(st(T::Starting), want, true), Step::Start);
        assert_eq!(step(st(T::Running), want, true), Step::Wait);
    }

    #[test]
    fn delayed_start_prepares_only() {
        let want = st(T::Ready);
        assert_eq!(step(st(T::Accepted), want, false), Step::Prepare);
        assert_eq!(step(st(T::Ready), want, true), Step::Idle);
        // Not even prepared while the desired state is below READY.
        assert_eq!(step(st(T::Accepted), st(T::Assigned), false), Step::Idle);
    }

    #[test]
    fn a_job_task_desired_complete_runs_to_its_end() {
        let want = st(T::Complete);
        assert_eq!(step(st(T::Assigned), want, false), Step::Accept);
        assert_eq!(step(st(T::Accepted), want, false), Step::Prepare);
        assert_eq!(step(st(T::Ready), want, true), Step::Start);
        assert_eq!(step(st(T::Running), want, true), Step::Wait);
        assert_eq!(step(st(T::Complete), want, true), Step::Idle);
        // Adopted after an agent restart: an exit is the job's result.
        let exited = container(Status::Exited, Some(ExitStatus::code(0)));
        assert_eq!(
            adopted(st(T::Running), want, &exited).map(|r| r.state),
            Some(T::Complete)
        );
    }

    #[test]
    fn a_desired_state_past_complete_stops_the_task() {
        for desired in [T::Shutdown, T::Remove, T::Failed] {
            for current in [T::Assigned, T::Accepted, T::Ready, T::Starting, T::Running] {
                assert_eq!(
                    step(st(current), st(desired), true),
                    Step::Shutdown,
                    "{current:?} → {desired:?}"
                );
            }
        }
    }

    #[test]
    fn final_states_stay() {
        for current in [T::Complete, T::Shutdown, T::Failed, T::Rejected] {
            for desired in [T::Running, T::Shutdown, T::Remove] {
                for has in [true, false] {
                    assert_eq!(step(st(current), st(desired), has), Step::Idle);
                }
            }
        }
    }

    #[test]
    fn a_missing_container_fails_a_started_task() {
        for current in [T::Ready, T::Starting, T::Running] {
            assert_eq!(step(st(current), st(T::Running), false), Step::Lost);
        }
        // ... but not one that is being stopped anyway.
        assert_eq!(step(st(T::Running), st(T::Shutdown), false), Step::Shutdown);
    }

    fn container(status: Status, exit: Option<ExitStatus>) -> ContainerState {
        ContainerState {
            id: "t1".into(),
            status,
            pid: (status != Status::Exited).then_some(42),
            exit,
            health: None,
            created_at: SystemTime::UNIX_EPOCH,
            started_at: None,
            finished_at: None,
            labels: [(LABEL_TASK_ID.to_owned(), "t1".to_owned())].into(),
        }
    }

    #[test]
    fn exits_map_to_docker_states() {
        let ok = Report::exited(ExitStatus::code(0));
        assert_eq!((ok.state, ok.message.as_str()), (T::Complete, "finished"));
        assert!(ok.err.is_empty());
        let bad = Report::exited(ExitStatus::code(3));
        assert_eq!(bad.state, T::Failed);
        assert_eq!(bad.err, "task: non-zero exit (3)");
        assert_eq!(bad.exit_code, 3);
        let killed = Report::exited(ExitStatus::signaled(9));
        assert_eq!(killed.err, "task: non-zero exit (137)");
        let lost = Report::exited(ExitStatus::lost());
        assert_eq!(lost.state, T::Failed);
        assert!(lost.err.contains("lost"), "{}", lost.err);
    }

    #[test]
    fn oom_kills_are_named() {
        let oom = Report::exited(ExitStatus::signaled(9).with_oom_killed(true));
        assert_eq!(oom.state, T::Failed);
        assert_eq!(oom.err, "task: non-zero exit (137): OOM killed");
        assert_eq!(oom.exit_code, 137);
        // tini reports its child's death by SIGKILL as exit code 137.
        let via_init = Report::exited(ExitStatus::code(137).with_oom_killed(true));
        assert_eq!(via_init.err, "task: non-zero exit (137): OOM killed");
        // A child killed while the init went on and succeeded: still done.
        let survived = Report::exited(ExitStatus::code(0).with_oom_killed(true));
        assert_eq!(survived.state, T::Complete);
    }

    #[test]
    fn exit_records_from_before_oom_detection_still_load() {
        let old: ExitStatus =
            serde_json::from_str(r#"{"code":137,"signal":9,"lost":false}"#).unwrap();
        assert_eq!(old, ExitStatus::signaled(9));
        assert!(!old.oom_killed);
    }

    #[test]
    fn adopted_containers_report_their_true_state() {
        let want = st(T::Running);
        let running = container(Status::Running, None);
        assert_eq!(
            adopted(st(T::Starting), want, &running),
            Some(Report::running(42))
        );
        assert_eq!(adopted(st(T::Running), want, &running), None);
        let created = container(Status::Created, None);
        assert_eq!(
            adopted(st(T::Preparing), want, &created).map(|r| r.state),
            Some(T::Ready)
        );
        // It exited while the agent was away.
        let done = container(Status::Exited, Some(ExitStatus::code(0)));
        assert_eq!(
            adopted(st(T::Running), want, &done).map(|r| r.state),
            Some(T::Complete)
        );
        let failed = container(Status::Exited, Some(ExitStatus::code(2)));
        let r = adopted(st(T::Running), want, &failed).unwrap();
        assert_eq!((r.state, r.exit_code), (T::Failed, 2));
        // Stopped on purpose.
        let stopped = container(Status::Exited, Some(ExitStatus::signaled(15)));
        let r = adopted(st(T::Running), st(T::Shutdown), &stopped).unwrap();
        assert_eq!((r.state, r.exit_code), (T::Shutdown, 143));
        // Final states are never revisited.
        assert_eq!(adopted(st(T::Failed), want, &done), None);
    }

    #[test]
    fn leftovers_keep_assigned_containers_and_their_rootfs() {
        let mut a = container(Status::Running, None);
        a.id = "a".into();
        a.labels.insert(LABEL_TASK_ID.into(), "a".into());
        let mut gone = container(Status::Exited, Some(ExitStatus::code(0)));
        gone.id = "gone".into();
        gone.labels.insert(LABEL_TASK_ID.into(), "gone".into());
        let mut foreign = container(Status::Running, None);
        foreign.id = "foreign".into();
        foreign.labels.clear();
        let assigned: BTreeSet<String> = ["a".to_owned(), "new".to_owned()].into();
        let rootfs = ["a", "gone", "new", "orphan"].map(String::from);
        let l = leftovers(&assigned, &[a, gone, foreign], &rootfs);
        assert_eq!(l.containers, ["gone"]);
        // "new" has a rootfs but no container: a crash between mount and
        // create; its task manager mounts again.
        assert_eq!(l.rootfs, ["gone", "new", "orphan"]);
    }

    #[test]
    fn nothing_is_kept_without_assignments() {
        let c = container(Status::Running, None);
        let l = leftovers(&BTreeSet::new(), &[c], &["t1".into()]);
        assert_eq!(l.containers, ["t1"]);
        assert_eq!(l.rootfs, ["t1"]);
    }

    fn task() -> pb::Task {
        pb::Task {
            meta: Some(pb::Meta {
                id: "task1".into(),
                ..Default::default()
            }),
            service_id: "svc1".into(),
            slot: 2,
            node_id: "node1".into(),
            service_annotations: Some(pb::Annotations {
                name: "web".into(),
                ..Default::default()
            }),
            spec: Some(pb::TaskSpec {
                container: Some(pb::ContainerSpec {
                    image: "bb:1".into(),
                    labels: [("mine".to_owned(), "1".to_owned())].into(),
                    stop_signal: "SIGINT".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn containers_carry_docker_labels() {
        let l = labels(&task());
        assert_eq!(l[LABEL_TASK_ID], "task1");
        assert_eq!(l[LABEL_TASK_NAME], "web.2.task1");
        assert_eq!(l[LABEL_SERVICE_ID], "svc1");
        assert_eq!(l[LABEL_SERVICE_NAME], "web");
        assert_eq!(l[LABEL_NODE_ID], "node1");
        assert_eq!(l["mine"], "1");
        let mut global = task();
        global.slot = 0;
        assert_eq!(labels(&global)[LABEL_TASK_NAME], "web.node1.task1");
        let c = container_config(&task(), "/r".into(), ImageConfig::default()).unwrap();
        assert_eq!(c.id, "task1");
        assert_eq!(c.network, NetworkMode::Isolated);
        assert_eq!(c.spec.labels[LABEL_TASK_ID], "task1");
    }

    #[test]
    fn stop_params_come_from_the_task_then_the_image() {
        let (grace, sig) = stop_params(&task(), None);
        assert_eq!(
            (grace, sig),
            (Duration::from_secs(10), Signal(libc::SIGINT))
        );
        let mut t = task();
        if let Some(c) = t.spec.as_mut().and_then(|s| s.container.as_mut()) {
            c.stop_signal.clear();
        }
        let img = ImageConfig {
            stop_signal: "SIGQUIT".into(),
            ..Default::default()
        };
        assert_eq!(stop_params(&t, Some(&img)).1, Signal(libc::SIGQUIT));
        assert_eq!(stop_params(&t, None).1, Signal::TERM);
    }

    #[test]
    fn statuses_name_the_container_once_it_exists() {
        let now = SystemTime::UNIX_EPOCH;
        let s = Report::new(T::Preparing, "preparing").status("t1", now);
        assert!(s.container.is_none());
        let s = Report::running(7).status("t1", now);
        let c = s.container.unwrap();
        assert_eq!((c.container_id.as_str(), c.pid), ("t1", 7));
        let s = Report::new(T::Rejected, "preparing")
            .err("pulling bb:1: manifest unknown")
            .status("t1", now);
        assert!(s.container.is_none());
        assert_eq!(s.err, "pulling bb:1: manifest unknown");
    }
}
