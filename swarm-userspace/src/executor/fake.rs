//! An executor without containers, for simulated nodes: tasks reach RUNNING
//! and stop as if they ran, so orchestration can be exercised on many nodes
//! without images, namespaces or cgroups.
//!
//! Behaviour comes from container labels (so a test service can ask for it):
//! - `swarm.fake.exit=N`: exits with code N once started, after
//!   `swarm.fake.run-for` (a duration such as `500ms`; default 0);
//! - `swarm.fake.ignore-stop=true`: ignores the stop signal (SIGKILL after
//!   the grace period ends it);
//! - `swarm.fake.health=fail|pass`: the probe's result, when the task or the
//!   image has a healthcheck (timings as configured).
//!
//! The node's containers live in memory, shared by every executor made with
//! [`FakeExecutor::restarted`], which stands for the agent after a restart.
//! It never touches the host.
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::task::AbortHandle;

use super::health::{self, HealthCheck, HealthState, HealthStatus, Probe, ProbeResult};
use super::{
    ContainerConfig, ContainerState, Controller, ExecError, Executor, ExitStatus, Signal, Status,
    WaitOutcome, validate_id,
};

pub const LABEL_EXIT: &str = "swarm.fake.exit";
pub const LABEL_RUN_FOR: &str = "swarm.fake.run-for";
pub const LABEL_IGNORE_STOP: &str = "swarm.fake.ignore-stop";
pub const LABEL_HEALTH: &str = "swarm.fake.health";

struct Fake {
    state: ContainerState,
    exit_code: Option<i32>,
    run_for: Duration,
    ignore_stop: bool,
    healthcheck: Option<HealthCheck>,
    health_passes: bool,
    exit: watch::Sender<Option<ExitStatus>>,
    health: Option<(watch::Receiver<HealthState>, AbortHandle)>,
    timer: Option<AbortHandle>,
}

impl Drop for Fake {
    fn drop(&mut self) {
        if let Some((_, h)) = self.health.take() {
            h.abort();
        }
        if let Some(t) = self.timer.take() {
            t.abort();
        }
    }
}

type Node = Arc<Mutex<HashMap<String, Fake>>>;

fn lock(n: &Node) -> MutexGuard<'_, HashMap<String, Fake>> {
    n.lock().unwrap_or_else(|p| p.into_inner())
}

/// The fake executor of one simulated node.
#[derive(Clone, Default)]
pub struct FakeExecutor {
    node: Node,
    pids: Arc<AtomicU32>,
}

impl std::fmt::Debug for FakeExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeExecutor")
            .field("containers", &lock(&self.node).len())
            .finish()
    }
}

impl FakeExecutor {
    pub fn new() -> FakeExecutor {
        FakeExecutor {
            node: Node::default(),
            pids: Arc::new(AtomicU32::new(1000)),
        }
    }

    /// Another executor over the same node: what a restarted agent finds.
    pub fn restarted(&self) -> FakeExecutor {
        self.clone()
    }
}

#[async_trait::async_trait]
impl Executor for FakeExecutor {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn controller(&self, config: ContainerConfig) -> Result<Box<dyn Controller>, ExecError> {
        validate_id(&config.id)?;
        Ok(Box::new(FakeController {
            id: config.id.clone(),
            config: Some(config),
            exec: self.clone(),
        }))
    }

    async fn list(&self) -> Result<Vec<ContainerState>, ExecError> {
        let node = lock(&self.node);
        let mut out: Vec<ContainerState> = node.values().map(snapshot).collect();
        out.sort_by_key(|s| s.created_at);
        Ok(out)
    }

    async fn adopt(&self, id: &str) -> Result<Box<dyn Controller>, ExecError> {
        if !lock(&self.node).contains_key(id) {
            return Err(ExecError::NotFound(id.to_string()));
        }
        Ok(Box::new(FakeController {
            id: id.to_string(),
            config: None,
            exec: self.clone(),
        }))
    }
}

fn snapshot(f: &Fake) -> ContainerState {
    let mut s = f.state.clone();
    s.health = f.health.as_ref().map(|(rx, _)| rx.borrow().clone());
    s
}

struct FakeController {
    id: String,
    config: Option<ContainerConfig>,
    exec: FakeExecutor,
}

struct FixedProbe(bool);

impl Probe for FixedProbe {
    async fn run(&self, _command: &[String], _timeout: Duration) -> ProbeResult {
        let now = SystemTime::now();
        ProbeResult {
            start: now,
            end: now,
            exit_code: if self.0 { 0 } else { 1 },
            output: String::new(),
        }
    }
}

fn set_exited(f: &mut Fake, status: ExitStatus) {
    if f.state.status == Status::Exited {
        return;
    }
    f.state.status = Status::Exited;
    f.state.pid = None;
    f.state.exit = Some(status);
    f.state.finished_at = Some(SystemTime::now());
    if let Some((_, h)) = f.health.take() {
        h.abort();
    }
    f.exit.send_replace(Some(status));
}

impl FakeController {
    fn with<R>(&self, f: impl FnOnce(&mut Fake) -> R) -> Result<R, ExecError> {
        let mut node = lock(&self.exec.node);
        let c = node
            .get_mut(&self.id)
            .ok_or_else(|| ExecError::NotFound(self.id.clone()))?;
        Ok(f(c))
    }

    fn exit_rx(&self) -> Result<watch::Receiver<Option<ExitStatus>>, ExecError> {
        self.with(|c| c.exit.subscribe())
    }

    async fn exited_within(&self, d: Duration) -> Result<bool, ExecError> {
        let mut rx = self.exit_rx()?;
        Ok(tokio::time::timeout(d, rx.wait_for(Option::is_some))
            .await
            .is_ok())
    }

    fn kill_now(&self, status: ExitStatus) -> Result<(), ExecError> {
        self.with(|c| set_exited(c, status))
    }
}

#[async_trait::async_trait]
impl Controller for FakeController {
    fn id(&self) -> &str {
        &self.id
    }

    async fn prepare(&self) -> Result<(), ExecError> {
        let Some(config) = &self.config else {
            return Err(ExecError::AlreadyExists(self.id.clone()));
        };
        // The same checks a real executor makes on its input.
        super::spec::command(&config.image, &config.spec)?;
        config.stop_signal()?;
        let healthcheck = health::resolve(
            config.image.healthcheck.as_ref(),
            config.spec.healthcheck.as_ref(),
        )?;
        let labels = &config.spec.labels;
        let exit_code = match labels.get(LABEL_EXIT) {
            Some(v) => Some(v.parse::<i32>().map_err(|_| {
                ExecError::InvalidSpec(format!("{LABEL_EXIT}={v:?} is not an exit code"))
            })?),
            None => None,
        };
        let run_for = match labels.get(LABEL_RUN_FOR) {
            Some(v) => crate::cli::parse_duration(v)
                .map_err(|e| ExecError::InvalidSpec(format!("{LABEL_RUN_FOR}: {e}")))?,
            None => Duration::ZERO,
        };
        let mut node = lock(&self.exec.node);
        if node.contains_key(&self.id) {
            return Err(ExecError::AlreadyExists(self.id.clone()));
        }
        let (exit, _) = watch::channel(None);
        node.insert(
            self.id.clone(),
            Fake {
                state: ContainerState {
                    id: self.id.clone(),
                    status: Status::Created,
                    pid: Some(self.exec.pids.fetch_add(1, Ordering::Relaxed)),
                    exit: None,
                    health: None,
                    created_at: SystemTime::now(),
                    started_at: None,
                    finished_at: None,
                    labels: labels.clone(),
                },
                exit_code,
                run_for,
                ignore_stop: labels.get(LABEL_IGNORE_STOP).is_some_and(|v| v == "true"),
                healthcheck,
                health_passes: labels.get(LABEL_HEALTH).is_none_or(|v| v != "fail"),
                exit,
                health: None,
                timer: None,
            },
        );
        Ok(())
    }

    async fn start(&self) -> Result<(), ExecError> {
        let node = self.exec.node.clone();
        let id = self.id.clone();
        self.with(|c| {
            match c.state.status {
                Status::Running => return Ok(()),
                Status::Exited => {
                    return Err(ExecError::WrongState {
                        id: id.clone(),
                        op: "start",
                        status: Status::Exited,
                    });
                }
                Status::Created => {}
            }
            c.state.status = Status::Running;
            c.state.started_at = Some(SystemTime::now());
            if let Some(code) = c.exit_code {
                let run_for = c.run_for;
                let node = node.clone();
                let id = id.clone();
                let t = tokio::spawn(async move {
                    tokio::time::sleep(run_for).await;
                    if let Some(c) = lock(&node).get_mut(&id) {
                        set_exited(c, ExitStatus::code(code));
                    }
                });
                c.timer = Some(t.abort_handle());
            }
            if let Some(check) = c.healthcheck.clone() {
                let (tx, rx) = watch::channel(HealthState::default());
                let t = tokio::spawn(health::run_loop(
                    check,
                    FixedProbe(c.health_passes),
                    tokio::time::Instant::now(),
                    tx,
                ));
                c.health = Some((rx, t.abort_handle()));
            }
            Ok(())
        })?
    }

    async fn wait(&self) -> Result<WaitOutcome, ExecError> {
        let mut exit = self.exit_rx()?;
        let health = self.with(|c| c.health.as_ref().map(|(rx, _)| rx.clone()))?;
        let unhealthy = async move {
            match health {
                Some(mut rx) => {
                    let s = rx
                        .wait_for(|s| s.status == HealthStatus::Unhealthy)
                        .await
                        .map(|s| s.clone());
                    match s {
                        Ok(s) => s,
                        Err(_) => std::future::pending().await,
                    }
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = exit.wait_for(Option::is_some) => {
                let status = r.ok().and_then(|s| *s).unwrap_or_else(ExitStatus::lost);
                Ok(WaitOutcome::Exited(status))
            }
            s = unhealthy => Ok(WaitOutcome::Unhealthy(s)),
        }
    }

    async fn shutdown(&self, grace: Duration, signal: Signal) -> Result<(), ExecError> {
        let (status, ignore) = self.with(|c| (c.state.status, c.ignore_stop))?;
        match status {
            Status::Exited => Ok(()),
            Status::Created => self.terminate().await,
            Status::Running if !ignore => self.kill_now(ExitStatus::signaled(signal.0)),
            Status::Running => {
                if !self.exited_within(grace).await? {
                    self.kill_now(ExitStatus::signaled(libc::SIGKILL))?;
                }
                Ok(())
            }
        }
    }

    async fn terminate(&self) -> Result<(), ExecError> {
        self.kill_now(ExitStatus::signaled(libc::SIGKILL))
    }

    async fn remove(&self) -> Result<(), ExecError> {
        let removed = lock(&self.exec.node).remove(&self.id);
        if let Some(mut c) = removed {
            set_exited(&mut c, ExitStatus::signaled(libc::SIGKILL));
        }
        Ok(())
    }

    async fn inspect(&self) -> Result<ContainerState, ExecError> {
        self.with(|c| snapshot(c))
    }

    fn log_source(&self) -> Option<super::logs::LogSource> {
        None
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::AtomicUsize;

    use swarm_proto::v1 as pb;

    use super::super::conformance::{Behaviour, Fixture};
    use super::super::{ImageConfig, NetworkMode};
    use super::*;

    struct FakeFixture {
        exec: FakeExecutor,
        n: AtomicUsize,
    }

    fn fixture() -> FakeFixture {
        FakeFixture {
            exec: FakeExecutor::new(),
            n: AtomicUsize::new(0),
        }
    }

    impl Fixture for FakeFixture {
        fn executor(&self) -> Arc<dyn Executor> {
            Arc::new(self.exec.restarted())
        }

        fn unique_id(&self, name: &str) -> String {
            format!("{name}-{}", self.n.fetch_add(1, Ordering::Relaxed))
        }

        fn config(&self, id: &str, b: Behaviour) -> ContainerConfig {
            let mut labels = BTreeMap::new();
            let mut healthcheck = None;
            let check = |pass: bool| pb::HealthConfig {
                test: vec!["CMD".into(), if pass { "true" } else { "false" }.into()],
                interval: Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 100_000_000,
                }),
                retries: 2,
                ..Default::default()
            };
            match b {
                Behaviour::Serve => {}
                Behaviour::Exit(code) => {
                    labels.insert(LABEL_EXIT.into(), code.to_string());
                }
                Behaviour::IgnoreTerm => {
                    labels.insert(LABEL_IGNORE_STOP.into(), "true".into());
                }
                Behaviour::Unhealthy => {
                    labels.insert(LABEL_HEALTH.into(), "fail".into());
                    healthcheck = Some(check(false));
                }
                Behaviour::Healthy => healthcheck = Some(check(true)),
            }
            ContainerConfig {
                id: id.into(),
                rootfs: "/nonexistent".into(),
                image: ImageConfig {
                    cmd: vec!["serve".into()],
                    ..Default::default()
                },
                spec: pb::ContainerSpec {
                    labels,
                    healthcheck,
                    ..Default::default()
                },
                resources: None,
                network: NetworkMode::Isolated,
                addresses: Vec::new(),
                nameserver: None,
            }
        }
    }

    crate::executor_conformance_tests!(fixture());

    #[tokio::test(start_paused = true)]
    async fn run_for_delays_the_exit() {
        let f = fixture();
        let mut config = f.config("slow", Behaviour::Exit(4));
        config.spec.labels.insert(LABEL_RUN_FOR.into(), "2s".into());
        let ctl = f.exec.controller(config).unwrap();
        ctl.prepare().await.unwrap();
        ctl.start().await.unwrap();
        let t = tokio::time::Instant::now();
        assert_eq!(
            ctl.wait().await.unwrap(),
            WaitOutcome::Exited(ExitStatus::code(4))
        );
        assert_eq!(t.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test]
    async fn bad_labels_are_refused() {
        let f = fixture();
        let mut config = f.config("bad", Behaviour::Serve);
        config.spec.labels.insert(LABEL_EXIT.into(), "x".into());
        let ctl = f.exec.controller(config).unwrap();
        assert!(matches!(
            ctl.prepare().await,
            Err(ExecError::InvalidSpec(_))
        ));
    }
}
