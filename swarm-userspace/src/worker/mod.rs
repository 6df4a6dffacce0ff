//! The worker: runs the tasks the leader assigns to this node (swarmkit's
//! `agent/worker` and task managers).
//!
//! Owns: one task manager per assigned task ([`task`]), which pulls the
//! image, mounts the rootfs, creates, starts, waits for and stops the
//! task's container through the [`Executor`] and reports each state; the
//! adoption of containers a previous run left, and the removal of those
//! no assigned task owns; the latest status of every task
//! ([`status::StatusBoard`]), which the agent ships to the dispatcher; and
//! each task's container log, until the task leaves the assignments.
//!
//! Must never talk to the managers (the agent does), stop containers
//! because the daemon stops (a restarted daemon adopts them), touch a
//! container without its task label, or remove anything a previous run
//! left before the first complete assignment set says what to keep.
pub mod decide;
pub mod images;
pub mod status;
mod task;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use swarm_proto::v1 as pb;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::executor::logs::LogSource;
use crate::executor::{ContainerState, DEFAULT_STOP_GRACE, ExecError, Executor, Signal};
use crate::image::ImageError;
use crate::supervisor::{ControlLoop, LoopError};
use images::Images;
use status::StatusBoard;
use task::TaskManager;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Exec(#[from] ExecError),
    #[error("the worker has stopped: the daemon is shutting down")]
    Stopped,
    #[error("a blocking image store operation failed: {0}")]
    Blocking(String),
}

/// A task's network namespace, prepared by the node's networking.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreparedNetwork {
    pub netns: std::path::PathBuf,
    /// The task's addresses, for its /etc/hosts.
    pub addresses: Vec<std::net::IpAddr>,
    /// The embedded DNS server's address inside the namespace.
    pub nameserver: Option<std::net::IpAddr>,
}

/// The worker's seam to the node's networking (`crate::network`): overlay
/// state from the assignments, and each task's namespace.
#[async_trait::async_trait]
pub trait TaskNetworks: Send + Sync {
    /// The overlay part of an assignments message (before its tasks run).
    async fn apply(&self, m: &pb::AssignmentsMessage);
    /// Prepares (or, for an adopted task, takes over) the task's network
    /// namespace; `None` when it is attached to no network.
    async fn attach(&self, task: &pb::Task) -> Result<Option<PreparedNetwork>, String>;
    /// Undoes `attach`; a no-op for unknown tasks.
    async fn detach(&self, task_id: &str);
}

/// For nodes without overlay networking (simulated nodes, unit tests):
/// tasks get a namespace with loopback only.
#[derive(Debug, Default)]
pub struct NoNetworks;

#[async_trait::async_trait]
impl TaskNetworks for NoNetworks {
    async fn apply(&self, _m: &pb::AssignmentsMessage) {}
    async fn attach(&self, _task: &pb::Task) -> Result<Option<PreparedNetwork>, String> {
        Ok(None)
    }
    async fn detach(&self, _task_id: &str) {}
}

/// What the task managers share.
pub(crate) struct Shared {
    executor: Arc<dyn Executor>,
    images: Arc<dyn Images>,
    networks: Arc<dyn TaskNetworks>,
    board: StatusBoard,
    logs: Mutex<HashMap<String, LogSource>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

enum Command {
    Assign(Box<pb::AssignmentsMessage>),
    RemoveAll(oneshot::Sender<()>),
}

/// The worker as the rest of the node sees it. Cheap to clone.
#[derive(Clone)]
pub struct Worker {
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<Command>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("executor", &self.shared.executor.name())
            .field("statuses", &self.shared.board)
            .finish()
    }
}

impl Worker {
    /// A worker and the control loop that runs its task managers.
    pub fn new(executor: Arc<dyn Executor>, images: Arc<dyn Images>) -> (Worker, WorkerLoop) {
        Self::with_networks(executor, images, Arc::new(NoNetworks))
    }

    /// A worker whose tasks are attached to overlay networks by `networks`.
    pub fn with_networks(
        executor: Arc<dyn Executor>,
        images: Arc<dyn Images>,
        networks: Arc<dyn TaskNetworks>,
    ) -> (Worker, WorkerLoop) {
        let shared = Arc::new(Shared {
            executor,
            images,
            networks,
            board: StatusBoard::default(),
            logs: Mutex::new(HashMap::new()),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Worker {
                shared: shared.clone(),
                tx,
            },
            WorkerLoop {
                shared,
                rx,
                found: None,
                tasks: HashMap::new(),
                managers: JoinSet::new(),
                by_join: HashMap::new(),
                readd: HashMap::new(),
                panics: HashMap::new(),
                cleanups: JoinSet::new(),
            },
        )
    }

    /// An assignment message from the dispatcher: a complete set (FULL:
    /// tasks not in it are removed) or changes (INCREMENTAL). Never blocks.
    pub fn assign(&self, m: pb::AssignmentsMessage) {
        if self.tx.send(Command::Assign(Box::new(m))).is_err() {
            tracing::warn!("assignments arrived after the worker stopped; ignored");
        }
    }

    /// Task statuses to ship to the dispatcher.
    pub fn statuses(&self) -> &StatusBoard {
        &self.shared.board
    }

    /// The log of task `task_id`'s container, while the task is assigned
    /// and its container exists.
    pub fn log_source(&self, task_id: &str) -> Option<LogSource> {
        lock(&self.shared.logs).get(task_id).cloned()
    }

    /// Managed tasks by state, for `swarm_agent_tasks`.
    pub fn task_counts(&self) -> BTreeMap<String, i64> {
        self.shared.board.counts()
    }

    /// The node leaves the swarm: every task's container is stopped and
    /// removed, with their root filesystems. Returns when that is done.
    pub async fn remove_all(&self) -> Result<(), WorkerError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::RemoveAll(tx))
            .map_err(|_| WorkerError::Stopped)?;
        rx.await.map_err(|_| WorkerError::Stopped)
    }
}

struct Managed {
    tx: watch::Sender<pb::Task>,
    removed: CancellationToken,
}

/// Times a task's manager may panic before it is given up on.
const MAX_RESTARTS: u32 = 3;

/// See the module docs.
pub struct WorkerLoop {
    shared: Arc<Shared>,
    rx: mpsc::UnboundedReceiver<Command>,
    /// Containers found at start, until the first complete assignment set.
    found: Option<Vec<ContainerState>>,
    tasks: HashMap<String, Managed>,
    managers: JoinSet<()>,
    by_join: HashMap<tokio::task::Id, String>,
    /// Tasks assigned again while their old manager was still removing
    /// their container: started once it is done.
    readd: HashMap<String, pb::Task>,
    panics: HashMap<String, u32>,
    /// Removals of containers no task owns.
    cleanups: JoinSet<()>,
}

impl std::fmt::Debug for WorkerLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerLoop")
            .field("tasks", &self.tasks.len())
            .finish_non_exhaustive()
    }
}

impl WorkerLoop {
    fn spawn(&mut self, task: pb::Task) {
        let id = decide::task_id(&task).to_owned();
        let (tx, rx) = watch::channel(task);
        let removed = CancellationToken::new();
        let m = TaskManager::new(self.shared.clone(), rx, removed.clone());
        let h = self.managers.spawn(m.run());
        self.by_join.insert(h.id(), id.clone());
        self.tasks.insert(id, Managed { tx, removed });
    }

    fn update(&mut self, task: pb::Task) {
        let id = decide::task_id(&task).to_owned();
        if let Err(e) = crate::executor::validate_id(&id) {
            tracing::warn!(task = %id, error = %e, "ignoring an assigned task with an unusable ID");
            return;
        }
        match self.tasks.get(&id) {
            Some(m) if m.removed.is_cancelled() => {
                self.readd.insert(id, task);
            }
            Some(m) => {
                m.tx.send_replace(task);
            }
            None => self.spawn(task),
        }
    }

    fn remove(&mut self, id: &str) {
        self.readd.remove(id);
        if let Some(m) = self.tasks.get(id) {
            m.removed.cancel();
        }
    }

    async fn assign(&mut self, m: pb::AssignmentsMessage) {
        // Overlay state first: the tasks in this message may need it.
        self.shared.networks.apply(&m).await;
        let full = m.r#type == pb::assignments_message::Type::Full as i32;
        if full {
            let assigned: BTreeSet<String> = m
                .updated_tasks
                .iter()
                .map(|t| decide::task_id(t).to_owned())
                .collect();
            if let Some(found) = self.found.take() {
                self.remove_leftovers(&assigned, &found).await;
            }
            let gone: Vec<String> = self
                .tasks
                .keys()
                .filter(|id| !assigned.contains(*id))
                .cloned()
                .collect();
            for id in gone {
                self.remove(&id);
            }
        }
        tracing::debug!(
            full,
            updated = m.updated_tasks.len(),
            removed = m.removed_task_ids.len(),
            "assignments"
        );
        for t in m.updated_tasks {
            self.update(t);
        }
        for id in &m.removed_task_ids {
            self.remove(id);
        }
    }

    /// After a start, the first complete set: containers of tasks no longer
    /// assigned are removed, and root filesystems no kept container uses
    /// are released (before any task manager may mount one again).
    async fn remove_leftovers(&mut self, assigned: &BTreeSet<String>, found: &[ContainerState]) {
        let mounted = match self.shared.images.mounted().await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list container root filesystems");
                Vec::new()
            }
        };
        let plan = decide::leftovers(assigned, found, &mounted);
        let doomed: BTreeSet<&String> = plan.containers.iter().collect();
        for id in plan.rootfs.iter().filter(|id| !doomed.contains(id)) {
            tracing::info!(container = %id, "releasing a root filesystem no container uses");
            if let Err(e) = self.shared.images.release(id).await {
                tracing::warn!(container = %id, error = %e, "releasing a leftover rootfs failed");
            }
        }
        for id in plan.containers {
            tracing::info!(container = %id, "removing the container of a task no longer assigned to this node");
            let shared = self.shared.clone();
            self.cleanups.spawn(remove_container(shared, id));
        }
    }

    fn manager_ended(&mut self, res: Result<tokio::task::Id, tokio::task::JoinError>) {
        let (jid, panicked) = match res {
            Ok(jid) => (jid, false),
            Err(e) => (e.id(), e.is_panic()),
        };
        let Some(id) = self.by_join.remove(&jid) else {
            return;
        };
        let Some(m) = self.tasks.remove(&id) else {
            return;
        };
        if panicked && !m.removed.is_cancelled() {
            let n = self.panics.entry(id.clone()).or_default();
            *n += 1;
            if *n <= MAX_RESTARTS {
                tracing::error!(task = %id, restarts = *n, "a task manager panicked; starting another (it adopts the container)");
                let task = m.tx.borrow().clone();
                self.spawn(task);
            } else {
                tracing::error!(task = %id, "a task manager keeps panicking; the task is left as it is");
            }
            return;
        }
        self.panics.remove(&id);
        if let Some(t) = self.readd.remove(&id) {
            self.spawn(t);
        }
    }

    async fn remove_all(&mut self) {
        if let Some(found) = self.found.take() {
            for c in &found {
                if let Some(id) = decide::task_of(c) {
                    self.cleanups
                        .spawn(remove_container(self.shared.clone(), id.to_owned()));
                }
            }
        }
        self.readd.clear();
        let ids: Vec<String> = self.tasks.keys().cloned().collect();
        for id in &ids {
            self.remove(id);
        }
        while let Some(r) = self.managers.join_next_with_id().await {
            let jid = match r {
                Ok((jid, ())) => jid,
                Err(e) => e.id(),
            };
            if let Some(id) = self.by_join.remove(&jid) {
                self.tasks.remove(&id);
            }
        }
        while self.cleanups.join_next().await.is_some() {}
        match self.shared.images.mounted().await {
            Ok(left) => {
                for id in left {
                    if let Err(e) = self.shared.images.release(&id).await {
                        tracing::warn!(container = %id, error = %e, "releasing a rootfs failed");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot list container root filesystems"),
        }
        tracing::info!("removed every task container of this node");
    }
}

/// Stops (SIGTERM, docker's grace period) and removes a container no task
/// owns, then releases its rootfs.
async fn remove_container(shared: Arc<Shared>, id: String) {
    match shared.executor.adopt(&id).await {
        Ok(ctl) => {
            let _ = ctl.shutdown(DEFAULT_STOP_GRACE, Signal::TERM).await;
            if let Err(e) = ctl.remove().await {
                tracing::warn!(container = %id, error = %e, "removing a leftover container failed");
            }
        }
        Err(ExecError::NotFound(_)) => {}
        Err(e) => {
            tracing::warn!(container = %id, error = %e, "cannot adopt a leftover container to remove it")
        }
    }
    if let Err(e) = shared.images.release(&id).await {
        tracing::warn!(container = %id, error = %e, "releasing a leftover rootfs failed");
    }
    shared.networks.detach(&id).await;
}

impl ControlLoop for WorkerLoop {
    fn name(&self) -> &'static str {
        "worker"
    }

    async fn run(mut self, shutdown: CancellationToken) -> Result<(), LoopError> {
        // Left untouched until the first complete assignment set says
        // which of them to keep.
        let found = match self.shared.executor.list().await {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the containers of a previous run");
                Vec::new()
            }
        };
        for c in &found {
            tracing::info!(
                container = %c.id,
                status = %c.status,
                exit_code = c.exit.map(|e| e.code),
                task = decide::task_of(c).is_some(),
                "found a container from before this start"
            );
        }
        self.found = Some(found);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                cmd = self.rx.recv() => match cmd {
                    Some(Command::Assign(m)) => self.assign(*m).await,
                    Some(Command::RemoveAll(done)) => {
                        self.remove_all().await;
                        let _ = done.send(());
                    }
                    // Every handle is gone: only at shutdown.
                    None => shutdown.cancelled().await,
                },
                Some(r) = self.managers.join_next_with_id() => {
                    self.manager_ended(r.map(|(id, ())| id));
                }
                Some(_) = self.cleanups.join_next() => {}
            }
        }
        // Containers keep running: the next start adopts them. Aborted
        // managers stop at their next await, before the task channels
        // they watch are dropped.
        self.managers.abort_all();
        self.cleanups.abort_all();
        while self.managers.join_next().await.is_some() {}
        while self.cleanups.join_next().await.is_some() {}
        Ok(())
    }
}
