//! The worker over the fake executor and an in-memory image source, in
//! paused time.
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use swarm_proto::v1::{self as pb, TaskState};
use tokio_util::sync::CancellationToken;

use super::images::{Images, ResolvedImage, Rootfs};
use super::*;
use crate::executor::fake::{self, FakeExecutor};
use crate::executor::{ExitStatus, ImageConfig, Status};

/// Images that exist unless named `missing...`; pulls of `slow...` take a
/// minute. Mounts are remembered.
#[derive(Default)]
struct TestImages {
    mounted: Mutex<BTreeSet<String>>,
    pulls: Mutex<u32>,
}

#[async_trait::async_trait]
impl Images for TestImages {
    async fn local(&self, reference: &str) -> Option<ResolvedImage> {
        (!reference.starts_with("missing") && !reference.starts_with("slow")).then(|| {
            ResolvedImage {
                id: format!("sha256:{reference}"),
                config: ImageConfig {
                    cmd: vec!["serve".into()],
                    stop_signal: "SIGQUIT".into(),
                    ..Default::default()
                },
            }
        })
    }

    async fn ensure(&self, reference: &str) -> Result<ResolvedImage, WorkerError> {
        *self.pulls.lock().unwrap() += 1;
        if reference.starts_with("missing") {
            return Err(WorkerError::Image(ImageError::Pull {
                reference: reference.into(),
                message: "manifest unknown".into(),
            }));
        }
        if let Some(rest) = reference.strip_prefix("slow") {
            tokio::time::sleep(Duration::from_secs(60)).await;
            return Ok(self.local(rest).await.unwrap());
        }
        Ok(self.local(reference).await.unwrap())
    }

    async fn mount(&self, _image_id: &str, container_id: &str) -> Result<Rootfs, WorkerError> {
        let mut m = self.mounted.lock().unwrap();
        if !m.insert(container_id.to_owned()) {
            return Err(WorkerError::Image(ImageError::RootfsExists(
                container_id.into(),
            )));
        }
        Ok(Rootfs::unmounted("/nonexistent".into()))
    }

    async fn release(&self, container_id: &str) -> Result<(), WorkerError> {
        self.mounted.lock().unwrap().remove(container_id);
        Ok(())
    }

    async fn mounted(&self) -> Result<Vec<String>, WorkerError> {
        Ok(self.mounted.lock().unwrap().iter().cloned().collect())
    }
}

struct Node {
    exec: FakeExecutor,
    images: Arc<TestImages>,
    worker: Worker,
    stop: CancellationToken,
    run: tokio::task::JoinHandle<Result<(), LoopError>>,
}

impl Node {
    fn new() -> Node {
        Node::on(FakeExecutor::new(), Arc::new(TestImages::default()))
    }

    fn on(exec: FakeExecutor, images: Arc<TestImages>) -> Node {
        let (worker, lp) = Worker::new(Arc::new(exec.clone()), images.clone());
        let stop = CancellationToken::new();
        let run = tokio::spawn(lp.run(stop.clone()));
        Node {
            exec,
            images,
            worker,
            stop,
            run,
        }
    }

    /// The daemon stops (containers stay) and starts again.
    async fn restart(self) -> Node {
        self.stop.cancel();
        self.run.await.unwrap().unwrap();
        Node::on(self.exec.restarted(), self.images.clone())
    }

    fn full(&self, tasks: Vec<pb::Task>) {
        self.worker.assign(pb::AssignmentsMessage {
            r#type: pb::assignments_message::Type::Full as i32,
            updated_tasks: tasks,
            ..Default::default()
        });
    }

    fn update(&self, tasks: Vec<pb::Task>, removed: &[&str]) {
        self.worker.assign(pb::AssignmentsMessage {
            r#type: pb::assignments_message::Type::Incremental as i32,
            updated_tasks: tasks,
            removed_task_ids: removed.iter().map(|s| (*s).to_owned()).collect(),
            ..Default::default()
        });
    }

    async fn until(&self, id: &str, state: TaskState) -> pb::TaskStatus {
        for _ in 0..10_000 {
            if let Some(s) = self.worker.statuses().get(id)
                && s.state >= state as i32
            {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "task {id} never reached {state:?}: {:?}",
            self.worker.statuses().get(id)
        );
    }

    async fn container(&self, id: &str) -> Option<crate::executor::ContainerState> {
        self.exec
            .list()
            .await
            .unwrap()
            .into_iter()
            .find(|c| c.id == id)
    }

    async fn settle(&self) {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn task(id: &str, labels: &[(&str, &str)]) -> pb::Task {
    task_with(id, "bb:1", labels)
}

fn task_with(id: &str, image: &str, labels: &[(&str, &str)]) -> pb::Task {
    pb::Task {
        meta: Some(pb::Meta {
            id: id.into(),
            ..Default::default()
        }),
        spec: Some(pb::TaskSpec {
            container: Some(pb::ContainerSpec {
                image: image.into(),
                labels: labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        service_id: "svc".into(),
        slot: 1,
        node_id: "node1".into(),
        service_annotations: Some(pb::Annotations {
            name: "web".into(),
            ..Default::default()
        }),
        desired_state: TaskState::Running as i32,
        status: Some(pb::TaskStatus {
            state: TaskState::Assigned as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn desired(mut t: pb::Task, d: TaskState) -> pb::Task {
    t.desired_state = d as i32;
    t
}

fn state(s: &pb::TaskStatus) -> TaskState {
    TaskState::try_from(s.state).unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_task_runs_and_its_states_are_reported_in_order() {
    let n = Node::new();
    n.full(vec![task(
        "t1",
        &[(fake::LABEL_EXIT, "0"), (fake::LABEL_RUN_FOR, "5s")],
    )]);
    let s = n.until("t1", TaskState::Running).await;
    let c = s.container.clone().unwrap();
    assert_eq!(c.container_id, "t1");
    let pid = n.container("t1").await.unwrap().pid.unwrap();
    assert_eq!(c.pid, i32::try_from(pid).unwrap());
    assert_eq!(s.message, "started");
    // The container carries docker's labels.
    let labels = n.container("t1").await.unwrap().labels;
    assert_eq!(labels[decide::LABEL_TASK_ID], "t1");
    assert_eq!(labels[decide::LABEL_SERVICE_NAME], "web");
    let s = n.until("t1", TaskState::Complete).await;
    assert_eq!(
        (state(&s), s.message.as_str()),
        (TaskState::Complete, "finished")
    );
    assert_eq!(s.container.unwrap().exit_code, 0);
    // Kept (with its logs) while the task is assigned.
    assert!(n.container("t1").await.is_some());
    assert_eq!(n.worker.task_counts()["complete"], 1);
}

#[tokio::test(start_paused = true)]
async fn every_state_reaches_the_board_in_a_batch() {
    let n = Node::new();
    n.full(vec![task("t1", &[])]);
    n.until("t1", TaskState::Running).await;
    // Coalesced: one update per task, the latest.
    let batch = n.worker.statuses().take(100);
    assert_eq!(batch.len(), 1);
    assert_eq!(
        batch[0].status.as_ref().unwrap().state,
        TaskState::Running as i32
    );
}

#[tokio::test(start_paused = true)]
async fn a_non_zero_exit_fails_the_task() {
    let n = Node::new();
    n.full(vec![task("t1", &[(fake::LABEL_EXIT, "3")])]);
    let s = n.until("t1", TaskState::Complete).await;
    assert_eq!(state(&s), TaskState::Failed);
    assert_eq!(s.err, "task: non-zero exit (3)");
    assert_eq!(s.container.unwrap().exit_code, 3);
}

#[tokio::test(start_paused = true)]
async fn an_image_that_cannot_be_pulled_rejects_the_task() {
    let n = Node::new();
    n.full(vec![task_with("t1", "missing:1", &[])]);
    let s = n.until("t1", TaskState::Rejected).await;
    assert_eq!(state(&s), TaskState::Rejected);
    assert!(s.err.contains("manifest unknown"), "{}", s.err);
    assert!(n.container("t1").await.is_none());
    assert!(n.images.mounted.lock().unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn an_invalid_spec_rejects_the_task_and_releases_the_rootfs() {
    let n = Node::new();
    n.full(vec![task("t1", &[(fake::LABEL_EXIT, "not-a-number")])]);
    let s = n.until("t1", TaskState::Rejected).await;
    assert!(s.err.contains("exit code"), "{}", s.err);
    assert!(n.images.mounted.lock().unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn delayed_start_prepares_then_waits() {
    let n = Node::new();
    let t = task("t1", &[]);
    n.full(vec![desired(t.clone(), TaskState::Ready)]);
    n.until("t1", TaskState::Ready).await;
    n.settle().await;
    assert_eq!(
        state(&n.worker.statuses().get("t1").unwrap()),
        TaskState::Ready
    );
    assert_eq!(n.container("t1").await.unwrap().status, Status::Created);
    n.update(vec![t], &[]);
    n.until("t1", TaskState::Running).await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_stops_with_the_stop_signal_and_keeps_the_container() {
    let n = Node::new();
    let t = task("t1", &[]);
    n.full(vec![t.clone()]);
    n.until("t1", TaskState::Running).await;
    n.update(vec![desired(t, TaskState::Shutdown)], &[]);
    let s = n.until("t1", TaskState::Shutdown).await;
    assert_eq!(
        (state(&s), s.message.as_str()),
        (TaskState::Shutdown, "shutdown")
    );
    let c = n.container("t1").await.unwrap();
    assert_eq!(c.status, Status::Exited);
    // The image's stop signal (SIGQUIT), as the task sets none.
    assert_eq!(c.exit, Some(ExitStatus::signaled(libc::SIGQUIT)));
    assert!(n.images.mounted.lock().unwrap().contains("t1"));
    // Removed from the assignments: container and rootfs go.
    n.update(vec![], &["t1"]);
    n.settle().await;
    assert!(n.container("t1").await.is_none());
    assert!(n.images.mounted.lock().unwrap().is_empty());
    assert!(n.worker.statuses().get("t1").is_none());
}

#[tokio::test(start_paused = true)]
async fn a_load_balanced_task_drains_before_its_stop_signal() {
    for (balanced, min, max) in [
        (true, super::task::LB_DRAIN, super::task::LB_DRAIN * 2),
        (false, Duration::ZERO, super::task::LB_DRAIN / 2),
    ] {
        let n = Node::new();
        let mut t = task("t1", &[]);
        if balanced {
            t.endpoint = Some(pb::Endpoint {
                virtual_ips: vec![pb::VirtualIp {
                    network_id: "n".into(),
                    addr: "10.0.1.2/24".into(),
                }],
                ..Default::default()
            });
        }
        n.full(vec![t.clone()]);
        n.until("t1", TaskState::Running).await;
        let at = tokio::time::Instant::now();
        n.update(vec![desired(t, TaskState::Shutdown)], &[]);
        n.until("t1", TaskState::Shutdown).await;
        let took = at.elapsed();
        assert!(took >= min && took < max, "balanced={balanced}: {took:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_grace_period_is_given_before_sigkill() {
    let n = Node::new();
    let mut t = task("t1", &[(fake::LABEL_IGNORE_STOP, "true")]);
    if let Some(c) = t.spec.as_mut().and_then(|s| s.container.as_mut()) {
        c.stop_grace_period = Some(prost_types::Duration {
            seconds: 3,
            nanos: 0,
        });
    }
    n.full(vec![t.clone()]);
    n.until("t1", TaskState::Running).await;
    let at = tokio::time::Instant::now();
    n.update(vec![desired(t, TaskState::Shutdown)], &[]);
    let s = n.until("t1", TaskState::Shutdown).await;
    assert!(at.elapsed() >= Duration::from_secs(3), "{:?}", at.elapsed());
    assert_eq!(s.container.unwrap().exit_code, 137);
}

#[tokio::test(start_paused = true)]
async fn a_pull_is_abandoned_when_the_task_is_no_longer_wanted() {
    let n = Node::new();
    let t = task_with("t1", "slowbb:1", &[]);
    n.full(vec![t.clone()]);
    n.until("t1", TaskState::Preparing).await;
    n.update(vec![desired(t, TaskState::Shutdown)], &[]);
    let at = tokio::time::Instant::now();
    n.until("t1", TaskState::Shutdown).await;
    assert!(at.elapsed() < Duration::from_secs(60));
    assert!(n.container("t1").await.is_none());
}

#[tokio::test(start_paused = true)]
async fn an_unhealthy_container_fails_the_task_and_is_stopped() {
    let n = Node::new();
    let mut t = task("t1", &[(fake::LABEL_HEALTH, "fail")]);
    if let Some(c) = t.spec.as_mut().and_then(|s| s.container.as_mut()) {
        c.healthcheck = Some(pb::HealthConfig {
            test: vec!["CMD".into(), "false".into()],
            interval: Some(prost_types::Duration {
                seconds: 1,
                nanos: 0,
            }),
            retries: 2,
            ..Default::default()
        });
    }
    n.full(vec![t]);
    let s = n.until("t1", TaskState::Complete).await;
    assert_eq!(state(&s), TaskState::Failed);
    assert_eq!(s.err, "task: container unhealthy");
    n.settle().await;
    assert_eq!(n.container("t1").await.unwrap().status, Status::Exited);
}

#[tokio::test(start_paused = true)]
async fn a_full_set_removes_tasks_it_does_not_name() {
    let n = Node::new();
    n.full(vec![task("a", &[]), task("b", &[])]);
    n.until("a", TaskState::Running).await;
    n.until("b", TaskState::Running).await;
    n.full(vec![task("b", &[])]);
    n.settle().await;
    assert!(n.container("a").await.is_none());
    assert_eq!(n.container("b").await.unwrap().status, Status::Running);
    assert!(n.worker.statuses().get("a").is_none());
}

#[tokio::test(start_paused = true)]
async fn a_restarted_agent_adopts_what_is_assigned_and_removes_the_rest() {
    let n = Node::new();
    n.full(vec![
        task("keep", &[]),
        task("gone", &[]),
        task(
            "ends",
            &[(fake::LABEL_EXIT, "4"), (fake::LABEL_RUN_FOR, "10s")],
        ),
    ]);
    for id in ["keep", "gone", "ends"] {
        n.until(id, TaskState::Running).await;
    }
    let pid = n.container("keep").await.unwrap().pid;
    let n = n.restart().await;
    // Containers outlive the agent.
    assert_eq!(n.container("keep").await.unwrap().pid, pid);
    // "ends" exits while the agent waits for its assignments.
    tokio::time::sleep(Duration::from_secs(15)).await;
    // Nothing is removed before the first complete set.
    assert!(n.container("gone").await.is_some());
    let running = |mut t: pb::Task| {
        t.status = Some(pb::TaskStatus {
            state: TaskState::Running as i32,
            ..Default::default()
        });
        t
    };
    n.full(vec![running(task("keep", &[])), running(task("ends", &[]))]);
    let s = n.until("ends", TaskState::Complete).await;
    assert_eq!(state(&s), TaskState::Failed);
    assert_eq!(s.container.unwrap().exit_code, 4);
    n.settle().await;
    assert!(n.container("gone").await.is_none(), "unassigned: removed");
    assert!(!n.images.mounted.lock().unwrap().contains("gone"));
    // Kept, same process, and nothing lower than RUNNING is reported.
    assert_eq!(n.container("keep").await.unwrap().pid, pid);
    assert!(n.images.mounted.lock().unwrap().contains("keep"));
    assert!(n.worker.statuses().get("keep").is_none());
    assert_eq!(n.worker.task_counts()["running"], 1);
    // Still managed: a shutdown stops it.
    n.update(
        vec![desired(running(task("keep", &[])), TaskState::Shutdown)],
        &[],
    );
    n.until("keep", TaskState::Shutdown).await;
}

#[tokio::test(start_paused = true)]
async fn a_restart_before_running_finishes_the_job() {
    let n = Node::new();
    let t = task("t1", &[]);
    n.full(vec![desired(t.clone(), TaskState::Ready)]);
    n.until("t1", TaskState::Ready).await;
    let n = n.restart().await;
    let mut t = t;
    t.status = Some(pb::TaskStatus {
        state: TaskState::Ready as i32,
        ..Default::default()
    });
    n.full(vec![t]);
    n.until("t1", TaskState::Running).await;
    assert_eq!(*n.images.pulls.lock().unwrap(), 1, "no second pull");
}

#[tokio::test(start_paused = true)]
async fn a_started_task_whose_container_vanished_fails() {
    let n = Node::new();
    let mut t = task("t1", &[]);
    t.status = Some(pb::TaskStatus {
        state: TaskState::Running as i32,
        ..Default::default()
    });
    n.full(vec![t]);
    let s = n.until("t1", TaskState::Failed).await;
    assert!(s.err.contains("gone"), "{}", s.err);
}

#[tokio::test(start_paused = true)]
async fn leaving_removes_every_container() {
    let n = Node::new();
    n.full(vec![task("a", &[]), task("b", &[(fake::LABEL_EXIT, "0")])]);
    n.until("a", TaskState::Running).await;
    n.until("b", TaskState::Complete).await;
    n.worker.remove_all().await.unwrap();
    assert!(n.exec.list().await.unwrap().is_empty());
    assert!(n.images.mounted.lock().unwrap().is_empty());
    assert!(n.worker.task_counts().is_empty());
}

#[tokio::test(start_paused = true)]
async fn leaving_before_any_assignment_removes_what_a_previous_run_left() {
    let n = Node::new();
    n.full(vec![task("a", &[])]);
    n.until("a", TaskState::Running).await;
    let n = n.restart().await;
    n.settle().await;
    assert!(n.container("a").await.is_some());
    n.worker.remove_all().await.unwrap();
    assert!(n.exec.list().await.unwrap().is_empty());
    assert!(n.images.mounted.lock().unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn log_sources_follow_the_assignments() {
    let n = Node::new();
    n.full(vec![task("a", &[])]);
    n.until("a", TaskState::Running).await;
    // The fake executor keeps no logs.
    assert!(n.worker.log_source("a").is_none());
    assert!(n.worker.log_source("nope").is_none());
}

#[tokio::test(start_paused = true)]
async fn many_tasks_run_at_once() {
    let n = Node::new();
    let tasks: Vec<pb::Task> = (0..300).map(|i| task(&format!("t{i}"), &[])).collect();
    n.full(tasks);
    for i in 0..300 {
        n.until(&format!("t{i}"), TaskState::Running).await;
    }
    assert_eq!(n.worker.statuses().take(status::MAX_BATCH).len(), 300);
    assert_eq!(n.worker.task_counts()["running"], 300);
}
