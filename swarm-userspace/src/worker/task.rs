//! One task's manager: takes a task from its assignment to a running
//! container and reports every state on the way (swarmkit's task manager
//! and `exec.Do`), until the task leaves the assignments; then it removes
//! the container and releases its rootfs.
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use swarm_proto::v1::{self as pb, TaskState};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::Shared;
use super::decide::{self, Report, Step};
use crate::executor::{Controller, ExecError, Signal, Status, WaitOutcome};
use crate::metrics::metrics;

/// What a step leaves the manager to do.
enum Flow {
    Continue,
    /// The worker is going away (daemon shutdown): leave everything as it
    /// is, containers keep running.
    Abandon,
}

pub(super) struct TaskManager {
    id: String,
    shared: Arc<Shared>,
    task: watch::Receiver<pb::Task>,
    /// Cancelled when the task leaves the assignments.
    removed: CancellationToken,
    ctl: Option<Box<dyn Controller>>,
    stop: (Duration, Signal),
    /// The last state reported, or the one the managers knew.
    current: i32,
    /// When the container began to be made, while a start without a pause
    /// (delayed start) follows: for the start-time histogram.
    preparing_since: Option<Instant>,
}

impl TaskManager {
    pub(super) fn new(
        shared: Arc<Shared>,
        task: watch::Receiver<pb::Task>,
        removed: CancellationToken,
    ) -> TaskManager {
        let t = task.borrow().clone();
        let id = decide::task_id(&t).to_owned();
        let current = t.status.as_ref().map_or(0, |s| s.state);
        shared.board.known(&id, current);
        TaskManager {
            id,
            shared,
            stop: decide::stop_params(&t, None),
            task,
            removed,
            ctl: None,
            current,
            preparing_since: None,
        }
    }

    pub(super) async fn run(mut self) {
        self.adopt().await;
        loop {
            if self.removed.is_cancelled() {
                break;
            }
            let task = self.task.borrow_and_update().clone();
            let step = decide::step(self.current, task.desired_state, self.ctl.is_some());
            tracing::trace!(task = %self.id, ?step, current = self.current, desired = task.desired_state, "task step");
            let flow = match step {
                Step::Accept => {
                    self.report(Report::new(TaskState::Accepted, "accepted"));
                    Flow::Continue
                }
                Step::Prepare => self.prepare(&task).await,
                Step::Start => {
                    self.start().await;
                    Flow::Continue
                }
                Step::Wait => self.wait().await,
                Step::Shutdown => {
                    self.shutdown().await;
                    Flow::Continue
                }
                Step::Lost => {
                    self.report(Report::new(TaskState::Failed, "started").err(
                        "task: its container is gone from this node (removed behind the agent's back?)",
                    ));
                    Flow::Continue
                }
                Step::Idle => self.idle().await,
            };
            if let Flow::Abandon = flow {
                return;
            }
        }
        self.remove().await;
    }

    /// Records and publishes a state; the manager's own view moves with it.
    fn report(&mut self, r: Report) {
        if (r.state as i32) < self.current {
            return;
        }
        tracing::debug!(task = %self.id, state = ?r.state, message = %r.message, err = %r.err, "task state");
        self.current = r.state as i32;
        self.shared
            .board
            .report(&self.id, r.status(&self.id, SystemTime::now()));
    }

    fn set_controller(&mut self, ctl: Box<dyn Controller>) {
        if let Some(src) = ctl.log_source() {
            super::lock(&self.shared.logs).insert(self.id.clone(), src);
        }
        self.ctl = Some(ctl);
    }

    /// A container for this task may already exist (the agent restarted,
    /// or this manager replaces one that failed): take it over and report
    /// its true state.
    async fn adopt(&mut self) {
        let ctl = match self.shared.executor.adopt(&self.id).await {
            Ok(c) => c,
            Err(ExecError::NotFound(_)) => return,
            Err(e) => {
                tracing::warn!(task = %self.id, error = %e, "cannot adopt the task's container");
                return;
            }
        };
        let state = match ctl.inspect().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(task = %self.id, error = %e, "cannot inspect the task's container");
                return;
            }
        };
        let task = self.task.borrow().clone();
        let image = match task.spec.as_ref().and_then(|s| s.container.as_ref()) {
            Some(c) => self.shared.images.local(&c.image).await,
            None => None,
        };
        self.stop = decide::stop_params(&task, image.as_ref().map(|i| &i.config));
        tracing::info!(task = %self.id, status = %state.status, "adopted the task's container");
        // Reconnect its namespace to this run's data path and DNS.
        if let Err(e) = self.shared.networks.attach(&task).await {
            tracing::warn!(task = %self.id, error = %e, "cannot take over the adopted task's network");
        }
        if let Some(r) = decide::adopted(self.current, task.desired_state, &state) {
            self.report(r);
        }
        self.set_controller(ctl);
    }

    /// Waits for the task to change or leave.
    async fn idle(&mut self) -> Flow {
        self.preparing_since = None;
        tokio::select! {
            () = self.removed.cancelled() => Flow::Continue,
            r = self.task.changed() => match r {
                Ok(()) => Flow::Continue,
                Err(_) => Flow::Abandon,
            },
        }
    }

    async fn prepare(&mut self, task: &pb::Task) -> Flow {
        if self.ctl.is_some() {
            // Adopted a created container: it is prepared.
            self.report(Report::new(TaskState::Ready, "prepared"));
            return Flow::Continue;
        }
        self.report(Report::new(TaskState::Preparing, "preparing"));
        let Some(spec) = task.spec.as_ref().and_then(|s| s.container.as_ref()) else {
            self.reject("task: the task has no container spec".into());
            return Flow::Continue;
        };
        // Pulling may take long: give up at once if the task is no longer
        // wanted (nothing partial stays behind a cancelled pull).
        let not_wanted = async {
            let mut rx = self.task.clone();
            let gone = rx
                .wait_for(|t| decide::stop_wanted(t.desired_state))
                .await
                .is_err();
            if gone {
                std::future::pending::<()>().await;
            }
        };
        let image = tokio::select! {
            r = self.shared.images.ensure(&spec.image) => r,
            () = self.removed.cancelled() => return Flow::Continue,
            () = not_wanted => return Flow::Continue,
        };
        let image = match image {
            Ok(i) => i,
            Err(e) => {
                self.reject(e.to_string());
                return Flow::Continue;
            }
        };
        let started = Instant::now();
        let rootfs = match self.shared.images.mount(&image.id, &self.id).await {
            Ok(r) => r,
            Err(e) => {
                self.reject(e.to_string());
                return Flow::Continue;
            }
        };
        let Some(mut config) = decide::container_config(task, rootfs.path.clone(), image.config)
        else {
            self.unmount(rootfs).await;
            self.reject("task: the task has no container spec".into());
            return Flow::Continue;
        };
        match self.shared.networks.attach(task).await {
            Ok(Some(net)) => {
                config.network = crate::executor::NetworkMode::Namespace(net.netns);
                config.addresses = net.addresses;
                config.nameserver = net.nameserver;
            }
            Ok(None) => {}
            Err(e) => {
                self.unmount(rootfs).await;
                self.shared.networks.detach(&self.id).await;
                self.reject(format!("network: {e}"));
                return Flow::Continue;
            }
        }
        self.stop = (
            config.stop_grace(),
            config.stop_signal().unwrap_or(Signal::TERM),
        );
        let ctl = match self.shared.executor.controller(config) {
            Ok(c) => c,
            Err(e) => {
                self.unmount(rootfs).await;
                self.shared.networks.detach(&self.id).await;
                self.reject(e.to_string());
                return Flow::Continue;
            }
        };
        if let Err(e) = ctl.prepare().await {
            self.unmount(rootfs).await;
            self.shared.networks.detach(&self.id).await;
            self.reject(e.to_string());
            return Flow::Continue;
        }
        rootfs.keep();
        self.set_controller(ctl);
        self.preparing_since = Some(started);
        self.report(Report::new(TaskState::Ready, "prepared"));
        Flow::Continue
    }

    /// Undoes a mount whose container could not be made.
    async fn unmount(&self, rootfs: super::images::Rootfs) {
        rootfs.keep();
        if let Err(e) = self.shared.images.release(&self.id).await {
            tracing::warn!(task = %self.id, error = %e, "releasing the task's rootfs failed");
        }
    }

    fn reject(&mut self, err: String) {
        tracing::info!(task = %self.id, error = %err, "task rejected");
        self.report(Report::new(TaskState::Rejected, "preparing").err(err));
    }

    async fn start(&mut self) {
        if self.current < TaskState::Starting as i32 {
            self.report(Report::new(TaskState::Starting, "starting"));
        }
        let Some(ctl) = self.ctl.as_ref() else {
            return;
        };
        let res = match ctl.start().await {
            // A container that ran and ended before we looked has no pid:
            // RUNNING, then Wait picks its exit up.
            Ok(()) => Ok(ctl.inspect().await.ok().and_then(|s| s.pid).unwrap_or(0)),
            Err(e) => Err(e),
        };
        match res {
            Ok(pid) => {
                if let Some(t) = self.preparing_since.take() {
                    metrics()
                        .agent_container_start_seconds
                        .observe(t.elapsed().as_secs_f64());
                }
                self.report(Report::running(pid));
            }
            Err(e) => {
                self.report(Report::new(TaskState::Failed, "starting").err(e.to_string()));
            }
        }
    }

    async fn wait(&mut self) -> Flow {
        let Some(ctl) = self.ctl.as_ref() else {
            return Flow::Continue;
        };
        let outcome = tokio::select! {
            () = self.removed.cancelled() => return Flow::Continue,
            r = self.task.changed() => return match r {
                Ok(()) => Flow::Continue,
                Err(_) => Flow::Abandon,
            },
            r = ctl.wait() => r,
        };
        match outcome {
            Ok(WaitOutcome::Exited(exit)) => self.report(Report::exited(exit)),
            Ok(WaitOutcome::Unhealthy(h)) => {
                tracing::info!(task = %self.id, streak = h.failing_streak, "container unhealthy; stopping it");
                self.report(Report::unhealthy());
                self.stop_container().await;
            }
            Err(e) => {
                self.report(Report::new(TaskState::Failed, "started").err(e.to_string()));
            }
        }
        Flow::Continue
    }

    async fn stop_container(&self) {
        if let Some(ctl) = &self.ctl {
            let (grace, signal) = self.stop;
            if let Err(e) = ctl.shutdown(grace, signal).await {
                tracing::warn!(task = %self.id, error = %e, "stopping the container failed");
            }
        }
    }

    /// The desired state went past COMPLETE: stop the container with the
    /// task's signal and grace period.
    async fn shutdown(&mut self) {
        let mut exit_code = 0;
        if let Some(ctl) = &self.ctl {
            // It may have ended on its own already: then that is its fate.
            if self.current == TaskState::Running as i32
                && let Ok(s) = ctl.inspect().await
                && s.status == Status::Exited
                && let Some(exit) = s.exit
            {
                self.report(Report::exited(exit));
                return;
            }
            if self.current == TaskState::Running as i32 && is_balanced(&self.task.borrow()) {
                // Every node's load balancer has heard that this task
                // stops (it came with the same commit) and sends it no new
                // connections; give that a moment to land before the
                // process is told to stop, so a rolling update under load
                // loses no requests.
                tracing::debug!(task = %self.id, drain = ?LB_DRAIN, "draining before the stop signal");
                tokio::time::sleep(LB_DRAIN).await;
            }
            self.stop_container().await;
            if let Ok(s) = ctl.inspect().await {
                exit_code = s.exit.map_or(0, |e| e.code);
            }
        }
        let mut r = Report::new(TaskState::Shutdown, "shutdown");
        r.exit_code = exit_code;
        self.report(r);
    }

    /// The task left the assignments: its container and rootfs go too.
    async fn remove(mut self) {
        if let Some(ctl) = self.ctl.take() {
            if self.current <= TaskState::Running as i32 {
                // Still (possibly) running: give it its grace period, as
                // docker does.
                let (grace, signal) = self.stop;
                let _ = ctl.shutdown(grace, signal).await;
            }
            if let Err(e) = ctl.remove().await {
                tracing::warn!(task = %self.id, error = %e, "removing the task's container failed");
            }
        }
        if let Err(e) = self.shared.images.release(&self.id).await {
            tracing::warn!(task = %self.id, error = %e, "releasing the task's rootfs failed");
        }
        self.shared.networks.detach(&self.id).await;
        super::lock(&self.shared.logs).remove(&self.id);
        self.shared.board.forget(&self.id);
        tracing::debug!(task = %self.id, "task removed");
    }
}

/// How long a load-balanced task keeps running after it is asked to stop,
/// before its stop signal: the time for every node to take it out of its
/// backend sets.
pub const LB_DRAIN: Duration = Duration::from_millis(500);

/// Whether a task is a backend of a VIP or of published ports.
fn is_balanced(t: &pb::Task) -> bool {
    t.endpoint
        .as_ref()
        .is_some_and(|e| !e.virtual_ips.is_empty() || !e.ports.is_empty())
}
