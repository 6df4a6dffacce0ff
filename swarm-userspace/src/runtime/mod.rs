//! The libcontainer (youki) implementation of [`Executor`].
//!
//! Owns: the node's containers under `<data-root>/containers` (see
//! [`layout`]), their shims ([`shim`]) and the helper processes
//! ([`helper`]) through which every libcontainer call is made, the
//! subreaper ([`reaper`]), named volumes under `<data-root>/volumes`
//! ([`volumes`]), and cgroups under `--cgroup-parent`.
//!
//! Must never call libcontainer in the agent's own process: libcontainer
//! is not thread-safe (it `chdir()`s the process and clones with raw
//! `clone3`), and the agent runs tokio's threads. Each create, start, kill,
//! delete and exec re-executes this binary as `swarm runtime-helper ...`.
//!
//! Restart: containers outlive the agent. A new agent lists the directories,
//! reads the records, and finds the shim and the container's init by pid and
//! start time (so a reused pid is never mistaken for them). A container that
//! exited while the agent was down has its status in `exit.json`, written by
//! its shim. Only if the shim itself died first is the status unknown: it is
//! then reported as 137 with [`ExitStatus::lost`] set.
pub mod helper;
pub mod layout;
pub mod oom;
pub mod reaper;
pub mod shim;
pub mod volumes;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::io::AsyncBufReadExt;
use tokio::sync::watch;
use tokio::task::AbortHandle;

use self::layout::{ExitRecord, Paths, Record, ShimRecord, StartedRecord};
use self::reaper::PidFd;
use crate::executor::health::{self, HealthState, HealthStatus, Probe, ProbeResult};
use crate::executor::logs::{LogOptions, LogSource};
use crate::executor::spec::{self, EtcFiles, SpecInput, UserDb};
use crate::executor::{
    ContainerConfig, ContainerState, Controller, ExecError, Executor, ExitStatus, NetworkMode,
    Signal, Status, WaitOutcome, validate_id,
};
use swarm_proto::v1 as pb;

/// How long creating a container may take before it is abandoned.
const CREATE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a start/kill/delete helper may take.
const HELPER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a SIGKILLed container may take to be gone.
const KILL_TIMEOUT: Duration = Duration::from_secs(30);
/// Where Debian's tini-static lives: the init of `--init`.
pub const DEFAULT_INIT: &str = "/usr/bin/tini-static";

/// How the runtime is set up on a node.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// `<data-root>/containers`.
    pub root: PathBuf,
    /// `<data-root>/volumes`: named volumes, `<name>/_data` each.
    pub volumes: PathBuf,
    /// Containers' cgroups are `/<cgroup_parent>/<id>` in every hierarchy.
    pub cgroup_parent: String,
    /// The `swarm` binary that runs `runtime-helper`.
    pub helper: PathBuf,
    /// The init binary bind-mounted for `--init`, if the node has one.
    pub init_binary: Option<PathBuf>,
    pub log: LogOptions,
    /// The node's resolv.conf, the base of containers' (see
    /// [`spec::resolv_conf`]).
    pub resolv_conf: PathBuf,
}

impl RuntimeConfig {
    /// The usual layout under `data_root`, with this very binary as helper.
    pub fn new(data_root: &Path, cgroup_parent: &str) -> Result<RuntimeConfig, ExecError> {
        let helper = std::env::current_exe().map_err(|source| ExecError::Io {
            what: "finding the swarm binary",
            path: PathBuf::from("/proc/self/exe"),
            source,
        })?;
        Ok(RuntimeConfig {
            root: data_root.join("containers"),
            volumes: data_root.join("volumes"),
            cgroup_parent: cgroup_parent.to_string(),
            helper,
            init_binary: Path::new(DEFAULT_INIT)
                .exists()
                .then(|| PathBuf::from(DEFAULT_INIT)),
            log: LogOptions::default(),
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
        })
    }
}

/// Checks a `--cgroup-parent`: relative path segments of letters, digits,
/// `_`, `-`, `.`.
pub fn validate_cgroup_parent(parent: &str) -> Result<(), ExecError> {
    let ok = parent.trim_matches('/').split('/').all(|seg| {
        !seg.is_empty()
            && seg != "."
            && seg != ".."
            && seg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
    });
    if ok {
        Ok(())
    } else {
        Err(ExecError::InvalidSpec(format!(
            "--cgroup-parent {parent:?} must be a cgroup path such as \"swarm\" or \"a/b\""
        )))
    }
}

struct Inner {
    cfg: RuntimeConfig,
}

/// Runs containers with libcontainer, through helper processes.
#[derive(Clone)]
pub struct LibcontainerExecutor {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for LibcontainerExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LibcontainerExecutor")
            .field("root", &self.inner.cfg.root)
            .finish_non_exhaustive()
    }
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ExecError {
    let path = path.to_path_buf();
    move |source| ExecError::Io { what, path, source }
}

impl LibcontainerExecutor {
    /// Makes this process a child subreaper and starts its reaper (so
    /// container processes orphaned by a dead shim are collected), and
    /// creates the state directories.
    pub fn new(cfg: RuntimeConfig) -> Result<LibcontainerExecutor, ExecError> {
        validate_cgroup_parent(&cfg.cgroup_parent)?;
        reaper::become_subreaper().map_err(io_err("PR_SET_CHILD_SUBREAPER", Path::new("/")))?;
        reaper::start();
        for dir in [&cfg.root, &cfg.volumes] {
            std::fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
        }
        Ok(LibcontainerExecutor {
            inner: Arc::new(Inner { cfg }),
        })
    }

    pub fn config(&self) -> &RuntimeConfig {
        &self.inner.cfg
    }

    fn ctl(&self, id: &str, config: Option<ContainerConfig>) -> Ctl {
        Ctl {
            rt: self.inner.clone(),
            paths: Paths::new(&self.inner.cfg.root, id),
            config,
            shim: Mutex::new(None),
            health: Mutex::new(None),
        }
    }
}

#[async_trait::async_trait]
impl Executor for LibcontainerExecutor {
    fn name(&self) -> &'static str {
        "libcontainer"
    }

    fn controller(&self, config: ContainerConfig) -> Result<Box<dyn Controller>, ExecError> {
        validate_id(&config.id)?;
        Ok(Box::new(self.ctl(&config.id.clone(), Some(config))))
    }

    async fn list(&self) -> Result<Vec<ContainerState>, ExecError> {
        let root = &self.inner.cfg.root;
        let entries = std::fs::read_dir(root).map_err(io_err("listing", root))?;
        let mut out = Vec::new();
        for e in entries.flatten() {
            let Some(id) = e.file_name().to_str().map(String::from) else {
                continue;
            };
            if validate_id(&id).is_err() {
                continue;
            }
            match self.ctl(&id, None).inspect().await {
                Ok(s) => out.push(s),
                // Half-created (no record yet) or removed meanwhile.
                Err(ExecError::NotFound(_)) => {}
                Err(e) => tracing::warn!(container = %id, "cannot inspect: {e}"),
            }
        }
        out.sort_by_key(|s| s.created_at);
        Ok(out)
    }

    async fn adopt(&self, id: &str) -> Result<Box<dyn Controller>, ExecError> {
        validate_id(id)?;
        let ctl = self.ctl(id, None);
        let state = ctl.inspect().await?;
        if state.status == Status::Running {
            ctl.start_health()?;
        }
        Ok(Box::new(ctl))
    }
}

/// One container's controller; holds nothing that cannot be rebuilt from
/// disk, so a controller made by [`Executor::adopt`] is as good as the one
/// that created the container.
struct Ctl {
    rt: Arc<Inner>,
    paths: Paths,
    /// Set for a container this controller creates.
    config: Option<ContainerConfig>,
    shim: Mutex<Option<Arc<PidFd>>>,
    health: Mutex<Option<(watch::Receiver<HealthState>, AbortHandle)>>,
}

impl Drop for Ctl {
    fn drop(&mut self) {
        if let Some((_, task)) = lock(&self.health).take() {
            task.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The last few lines of a file, for error messages.
fn tail_of(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    all[all.len().saturating_sub(lines)..].join("; ")
}

impl Ctl {
    fn id(&self) -> &str {
        &self.paths.id
    }

    fn runtime_err(&self, op: &'static str, message: impl Into<String>) -> ExecError {
        ExecError::Runtime {
            id: self.id().to_string(),
            op,
            message: message.into(),
        }
    }

    fn record(&self) -> Result<Record, ExecError> {
        layout::read_json::<Record>(&self.paths.record())
            .map_err(io_err("reading", &self.paths.record()))?
            .ok_or_else(|| ExecError::NotFound(self.id().to_string()))
    }

    fn exit_record(&self) -> Result<Option<ExitRecord>, ExecError> {
        layout::read_json(&self.paths.exit()).map_err(io_err("reading", &self.paths.exit()))
    }

    fn shim_record(&self) -> Result<Option<ShimRecord>, ExecError> {
        layout::read_json(&self.paths.shim()).map_err(io_err("reading", &self.paths.shim()))
    }

    /// The shim, if it still runs.
    fn shim_fd(&self) -> Result<Option<Arc<PidFd>>, ExecError> {
        let mut cached = lock(&self.shim);
        if let Some(fd) = cached.as_ref() {
            return Ok(Some(fd.clone()));
        }
        let Some(rec) = self.shim_record()? else {
            return Ok(None);
        };
        let fd = PidFd::open_id(rec.shim).map(Arc::new);
        cached.clone_from(&fd);
        Ok(fd)
    }

    /// Runs `swarm runtime-helper <args> --dir D --id ID`; its stdout.
    async fn helper(&self, op: &'static str, args: &[&str]) -> Result<Vec<u8>, ExecError> {
        self.helper_with(op, args, &[], HELPER_TIMEOUT).await
    }

    async fn helper_with(
        &self,
        op: &'static str,
        args: &[&str],
        trailing: &[String],
        timeout: Duration,
    ) -> Result<Vec<u8>, ExecError> {
        let mut cmd = tokio::process::Command::new(&self.rt.cfg.helper);
        cmd.arg("runtime-helper")
            .args(args)
            .arg("--dir")
            .arg(&self.paths.dir)
            .arg("--id")
            .arg(self.id());
        if !trailing.is_empty() {
            cmd.arg("--").args(trailing);
        }
        cmd.stdin(std::process::Stdio::null()).kill_on_drop(true);
        let out = tokio::time::timeout(timeout, cmd.output())
            .await
            .map_err(|_| self.runtime_err(op, format!("the runtime helper took over {timeout:?}")))?
            .map_err(|e| {
                self.runtime_err(
                    op,
                    format!(
                        "cannot run {} runtime-helper: {e}",
                        self.rt.cfg.helper.display()
                    ),
                )
            })?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let msg: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
            return Err(self.runtime_err(op, format!("{} ({})", msg.join("; "), out.status)));
        }
        Ok(out.stdout)
    }

    fn write_etc_files(&self, config: &ContainerConfig) -> Result<EtcFiles, ExecError> {
        let bundle = self.paths.bundle();
        let files = EtcFiles {
            hostname: bundle.join("hostname"),
            hosts: bundle.join("hosts"),
            resolv_conf: bundle.join("resolv.conf"),
        };
        let hostname = spec::hostname(config);
        let host_resolv = std::fs::read_to_string(&self.rt.cfg.resolv_conf).unwrap_or_default();
        for (path, content) in [
            (&files.hostname, format!("{hostname}\n")),
            (
                &files.hosts,
                spec::hosts_file(&hostname, &config.addresses, &config.spec.hosts),
            ),
            (
                &files.resolv_conf,
                match config.nameserver {
                    Some(ns) => spec::embedded_resolv_conf(
                        ns,
                        config.spec.dns_config.as_ref(),
                        &host_resolv,
                    ),
                    None => spec::resolv_conf(config.spec.dns_config.as_ref(), &host_resolv),
                },
            ),
        ] {
            std::fs::write(path, content).map_err(io_err("writing", path))?;
        }
        Ok(files)
    }

    /// Host directories of the volume mounts, by target; the anonymous ones.
    fn prepare_volumes(
        &self,
        config: &ContainerConfig,
    ) -> Result<(BTreeMap<String, PathBuf>, Vec<PathBuf>), ExecError> {
        let mut by_target = BTreeMap::new();
        let mut anonymous = Vec::new();
        for (i, m) in config.spec.mounts.iter().enumerate() {
            if m.r#type != pb::MountType::Volume as i32 {
                continue;
            }
            let name = if m.source.is_empty() {
                format!("{}-anon-{i}", self.id())
            } else {
                m.source.clone()
            };
            if validate_id(&name).is_err() {
                return Err(ExecError::InvalidSpec(format!(
                    "volume name {name:?} must be letters, digits, '_', '-' or '.'"
                )));
            }
            let dir = self.rt.cfg.volumes.join(&name);
            let data = volumes::prepare(
                &self.rt.cfg.volumes,
                &name,
                &config.rootfs,
                &m.target,
                !m.volume_nocopy,
            )
            .map_err(io_err("preparing volume", &dir))?;
            if m.source.is_empty() {
                anonymous.push(dir);
            }
            by_target.insert(m.target.clone(), data);
        }
        Ok((by_target, anonymous))
    }

    async fn prepare_inner(&self, config: &ContainerConfig) -> Result<(), ExecError> {
        let healthcheck = health::resolve(
            config.image.healthcheck.as_ref(),
            config.spec.healthcheck.as_ref(),
        )?;
        let stop_signal = config.stop_signal()?;
        let (volumes, anonymous_volumes) = self.prepare_volumes(config)?;
        // The record first: from here on the container is listed (as
        // created), so a crash of ours leaves nothing a restarted agent
        // cannot see and remove.
        let record = Record {
            id: self.id().to_string(),
            created_at: SystemTime::now(),
            labels: config.spec.labels.clone(),
            stop_signal,
            stop_grace: config.stop_grace(),
            healthcheck,
            isolated_network: config.network == NetworkMode::Isolated,
            log: self.rt.cfg.log,
            anonymous_volumes,
        };
        layout::write_json(&self.paths.record(), &record)
            .map_err(io_err("writing", &self.paths.record()))?;
        let bundle = self.paths.bundle();
        std::fs::create_dir_all(&bundle).map_err(io_err("creating", &bundle))?;
        let etc = self.write_etc_files(config)?;
        let users = UserDb::read(&config.rootfs);
        let cgroups_path = format!(
            "/{}/{}",
            self.rt.cfg.cgroup_parent.trim_matches('/'),
            self.id()
        );
        let oci = spec::build(&SpecInput {
            config,
            users: &users,
            cgroups_path: &cgroups_path,
            etc_files: Some(&etc),
            volumes: &volumes,
            init_binary: self.rt.cfg.init_binary.as_deref(),
        })?;
        let spec_path = bundle.join("config.json");
        layout::write_json(&spec_path, &oci).map_err(io_err("writing", &spec_path))?;
        self.spawn_shim().await
    }

    async fn spawn_shim(&self) -> Result<(), ExecError> {
        let shim_log = self.paths.shim_log();
        let log = std::fs::File::create(&shim_log).map_err(io_err("creating", &shim_log))?;
        let mut cmd = shim::command(&self.rt.cfg.helper, &self.paths);
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(log);
        let (child, pidfd) = {
            let _guard = reaper::spawn_guard();
            let mut child = cmd.spawn().map_err(|e| {
                self.runtime_err(
                    "create",
                    format!("cannot run {}: {e}", self.rt.cfg.helper.display()),
                )
            })?;
            let pidfd = PidFd::open(child.id()).map_err(io_err("pidfd_open", &shim_log))?;
            let stdout = child.stdout.take();
            (stdout, pidfd)
        };
        let pidfd = Arc::new(pidfd);
        *lock(&self.shim) = Some(pidfd.clone());
        let stdout = child.ok_or_else(|| self.runtime_err("create", "the shim has no stdout"))?;
        let rx = tokio::net::unix::pipe::Receiver::from_owned_fd(stdout.into())
            .map_err(io_err("reading the shim's report", &shim_log))?;
        let mut line = String::new();
        let read = tokio::time::timeout(
            CREATE_TIMEOUT,
            tokio::io::BufReader::new(rx).read_line(&mut line),
        )
        .await;
        let report: Option<shim::ShimReport> = match read {
            Ok(Ok(n)) if n > 0 => serde_json::from_str(&line).ok(),
            Ok(_) => None,
            Err(_) => {
                let _ = pidfd.signal(libc::SIGKILL);
                return Err(self.runtime_err(
                    "create",
                    format!(
                        "not created after {CREATE_TIMEOUT:?}; shim log: {}",
                        tail_of(&shim_log, 5)
                    ),
                ));
            }
        };
        match report {
            Some(shim::ShimReport { pid: Some(_), .. }) => Ok(()),
            Some(shim::ShimReport { error: Some(e), .. }) => {
                Err(self.runtime_err("create", format!("{e}; {}", tail_of(&shim_log, 5))))
            }
            _ => Err(self.runtime_err(
                "create",
                format!(
                    "the shim exited without a report: {}",
                    tail_of(&shim_log, 5)
                ),
            )),
        }
    }

    /// Kills whatever a failed prepare left and removes its directory.
    async fn cleanup_failed(&self) {
        let shim = lock(&self.shim).clone();
        if let Some(shim) = shim {
            let _ = self.helper("delete", &["delete"]).await;
            let _ = tokio::time::timeout(Duration::from_secs(5), shim.wait_exit()).await;
            let _ = shim.signal(libc::SIGKILL);
        } else {
            let _ = self.helper("delete", &["delete"]).await;
        }
        if let Err(e) = std::fs::remove_dir_all(&self.paths.dir)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(container = %self.id(), "cannot remove {}: {e}", self.paths.dir.display());
        }
    }

    /// Starts the healthcheck loop if the container has one.
    fn start_health(&self) -> Result<(), ExecError> {
        let record = self.record()?;
        let Some(check) = record.healthcheck else {
            return Ok(());
        };
        let mut slot = lock(&self.health);
        if slot.is_some() {
            return Ok(());
        }
        let since_start = layout::read_json::<StartedRecord>(&self.paths.started())
            .ok()
            .flatten()
            .and_then(|s| s.at.elapsed().ok())
            .unwrap_or_default();
        let started = tokio::time::Instant::now()
            .checked_sub(since_start)
            .unwrap_or_else(tokio::time::Instant::now);
        let (tx, rx) = watch::channel(HealthState::default());
        let probe = ExecProbe {
            ctl: HelperRunner {
                helper: self.rt.cfg.helper.clone(),
                paths: self.paths.clone(),
            },
        };
        // Probing ends with the container (its shim exits after it).
        let Some(shim) = self.shim_fd()? else {
            return Ok(());
        };
        let task = tokio::spawn(async move {
            tokio::select! {
                () = health::run_loop(check, probe, started, tx) => {}
                _ = shim.wait_exit() => {}
            }
        });
        *slot = Some((rx, task.abort_handle()));
        Ok(())
    }

    fn stop_health(&self) {
        if let Some((_, task)) = lock(&self.health).take() {
            task.abort();
        }
    }

    fn health_rx(&self) -> Option<watch::Receiver<HealthState>> {
        lock(&self.health).as_ref().map(|(rx, _)| rx.clone())
    }

    /// The exit status when the shim could not record it: from our reaper if
    /// the container was re-parented to us, else lost. Recorded, so every
    /// later reader agrees.
    async fn settle_without_shim(&self, init: Option<u32>) -> Result<ExitStatus, ExecError> {
        let mut status = None;
        if let Some(pid) = init {
            for _ in 0..10 {
                status = reaper::reaped_status(pid);
                if status.is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let status = status.unwrap_or_else(ExitStatus::lost);
        if let Some(e) = self.exit_record()? {
            return Ok(e.status);
        }
        layout::write_json(
            &self.paths.exit(),
            &ExitRecord {
                status,
                at: SystemTime::now(),
            },
        )
        .map_err(io_err("writing", &self.paths.exit()))?;
        Ok(status)
    }

    /// Until the container's process has exited; its status.
    async fn wait_exit(&self) -> Result<ExitStatus, ExecError> {
        if let Some(e) = self.exit_record()? {
            return Ok(e.status);
        }
        if !self.paths.dir.exists() {
            return Err(ExecError::NotFound(self.id().to_string()));
        }
        let Some(rec) = self.shim_record()? else {
            return Err(self.runtime_err("wait", "the container was never created"));
        };
        let waiting = |e| io_err("waiting for", &self.paths.dir)(e);
        if let Some(shim) = self.shim_fd()? {
            // The shim records the status, then exits.
            shim.wait_exit().await.map_err(waiting)?;
            if let Some(e) = self.exit_record()? {
                return Ok(e.status);
            }
            tracing::warn!(container = %self.id(), "the shim exited without recording an exit status");
            *lock(&self.shim) = None;
        }
        // No shim: the container, if still there, is an orphan (ours, if we
        // are the subreaper it was re-parented to).
        if let Some(init) = PidFd::open_id(rec.init) {
            init.wait_exit().await.map_err(waiting)?;
        }
        // The shim may have written exit.json just before going.
        if let Some(e) = self.exit_record()? {
            return Ok(e.status);
        }
        self.settle_without_shim(Some(rec.init.pid)).await
    }

    async fn wait_exit_for(&self, timeout: Duration) -> Result<Option<ExitStatus>, ExecError> {
        match tokio::time::timeout(timeout, self.wait_exit()).await {
            Ok(r) => r.map(Some),
            Err(_) => Ok(None),
        }
    }

    async fn kill(&self, signal: Signal, all: bool) -> Result<(), ExecError> {
        let sig = signal.0.to_string();
        let mut args = vec!["kill", "--signal", sig.as_str()];
        if all {
            args.push("--all");
        }
        match self.helper("kill", &args).await {
            Ok(_) => Ok(()),
            // It may have exited meanwhile: that is what we wanted.
            Err(e) if self.exit_record()?.is_some() => {
                tracing::debug!(container = %self.id(), "kill after exit: {e}");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    async fn status(&self) -> Result<(Status, Option<u32>, Option<ExitRecord>), ExecError> {
        if let Some(e) = self.exit_record()? {
            return Ok((Status::Exited, None, Some(e)));
        }
        let Some(rec) = self.shim_record()? else {
            return Ok((Status::Created, None, None));
        };
        if let Some(init) = PidFd::open_id(rec.init)
            && !init.exited()
        {
            let started = self.paths.started().exists()
                || layout::libcontainer_status(&self.paths).as_deref() == Some("running");
            let status = if started {
                Status::Running
            } else {
                Status::Created
            };
            return Ok((status, Some(rec.init.pid), None));
        }
        // The init is gone: the shim is about to record how, or is gone too.
        if let Ok(Some(status)) = self.wait_exit_for(Duration::from_secs(5)).await {
            let at = self.exit_record()?.map_or_else(SystemTime::now, |e| e.at);
            return Ok((Status::Exited, None, Some(ExitRecord { status, at })));
        }
        Err(self.runtime_err(
            "inspect",
            "the container's process is gone but its status was not recorded yet",
        ))
    }
}

#[async_trait::async_trait]
impl Controller for Ctl {
    fn id(&self) -> &str {
        &self.paths.id
    }

    async fn prepare(&self) -> Result<(), ExecError> {
        let Some(config) = self.config.as_ref() else {
            return Err(ExecError::AlreadyExists(self.id().to_string()));
        };
        std::fs::create_dir_all(&self.rt.cfg.root)
            .map_err(io_err("creating", &self.rt.cfg.root))?;
        match std::fs::create_dir(&self.paths.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(ExecError::AlreadyExists(self.id().to_string()));
            }
            Err(e) => return Err(io_err("creating", &self.paths.dir)(e)),
        }
        let res = self.prepare_inner(config).await;
        if let Err(e) = &res {
            tracing::debug!(container = %self.id(), "prepare failed, cleaning up: {e}");
            self.cleanup_failed().await;
        }
        res
    }

    async fn start(&self) -> Result<(), ExecError> {
        let (status, _, _) = self.status().await?;
        match status {
            Status::Running => return Ok(()),
            Status::Exited => {
                return Err(ExecError::WrongState {
                    id: self.id().to_string(),
                    op: "start",
                    status,
                });
            }
            Status::Created => {}
        }
        if let Err(e) = self.helper("start", &["start"]).await {
            // A start that happened before a crash of ours is fine.
            if layout::libcontainer_status(&self.paths).as_deref() != Some("running") {
                return Err(e);
            }
        }
        layout::write_json(
            &self.paths.started(),
            &StartedRecord {
                at: SystemTime::now(),
            },
        )
        .map_err(io_err("writing", &self.paths.started()))?;
        self.start_health()
    }

    async fn wait(&self) -> Result<WaitOutcome, ExecError> {
        let unhealthy = async {
            match self.health_rx() {
                Some(mut rx) => {
                    let state = rx
                        .wait_for(|s| s.status == HealthStatus::Unhealthy)
                        .await
                        .map(|s| s.clone());
                    match state {
                        Ok(s) => s,
                        Err(_) => std::future::pending().await,
                    }
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            status = self.wait_exit() => Ok(WaitOutcome::Exited(status?)),
            state = unhealthy => {
                // Probes fail once the container is gone: an exit wins.
                match self.exit_record()? {
                    Some(e) => Ok(WaitOutcome::Exited(e.status)),
                    None => Ok(WaitOutcome::Unhealthy(state)),
                }
            }
        }
    }

    async fn shutdown(&self, grace: Duration, signal: Signal) -> Result<(), ExecError> {
        let (status, _, _) = self.status().await?;
        match status {
            Status::Exited => return Ok(()),
            // Its command never ran, so nothing could handle the signal.
            Status::Created => return self.terminate().await,
            Status::Running => {}
        }
        self.kill(signal, false).await?;
        if self.wait_exit_for(grace).await?.is_some() {
            return Ok(());
        }
        tracing::info!(container = %self.id(), "still running {grace:?} after {signal}: killing it");
        self.terminate().await
    }

    async fn terminate(&self) -> Result<(), ExecError> {
        let (status, _, _) = self.status().await?;
        if status == Status::Exited {
            return Ok(());
        }
        self.kill(Signal::KILL, true).await?;
        match self.wait_exit_for(KILL_TIMEOUT).await? {
            Some(_) => Ok(()),
            None => Err(self.runtime_err(
                "terminate",
                format!("still running {KILL_TIMEOUT:?} after SIGKILL"),
            )),
        }
    }

    async fn remove(&self) -> Result<(), ExecError> {
        if !self.paths.dir.exists() {
            return Ok(());
        }
        self.stop_health();
        let record = self.record().ok();
        match self.status().await {
            Ok((Status::Exited, _, _)) => {}
            Ok(_) => self.terminate().await?,
            Err(e) => {
                tracing::warn!(container = %self.id(), "removing a container in an unknown state: {e}")
            }
        }
        self.helper("delete", &["delete"]).await?;
        if let Ok(Some(shim)) = self.shim_fd()
            && tokio::time::timeout(Duration::from_secs(5), shim.wait_exit())
                .await
                .is_err()
        {
            let _ = shim.signal(libc::SIGKILL);
        }
        for v in record.iter().flat_map(|r| r.anonymous_volumes.iter()) {
            if let Err(e) = std::fs::remove_dir_all(v)
                && e.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!(container = %self.id(), "cannot remove volume {}: {e}", v.display());
            }
        }
        match std::fs::remove_dir_all(&self.paths.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("removing", &self.paths.dir)(e)),
        }
    }

    async fn inspect(&self) -> Result<ContainerState, ExecError> {
        if !self.paths.dir.exists() {
            return Err(ExecError::NotFound(self.id().to_string()));
        }
        let record = self.record()?;
        let (status, pid, exit) = self.status().await?;
        let started_at = layout::read_json::<StartedRecord>(&self.paths.started())
            .ok()
            .flatten()
            .map(|s| s.at);
        Ok(ContainerState {
            id: self.id().to_string(),
            status,
            pid,
            exit: exit.map(|e| e.status),
            health: self.health_rx().map(|rx| rx.borrow().clone()),
            created_at: record.created_at,
            started_at,
            finished_at: exit.map(|e| e.at),
            labels: record.labels,
        })
    }

    fn log_source(&self) -> Option<LogSource> {
        let max_files = self
            .record()
            .map_or(self.rt.cfg.log.max_files, |r| r.log.max_files);
        Some(LogSource {
            path: self.paths.log(),
            max_files,
        })
    }
}

/// Runs helpers for a container, without holding its controller.
#[derive(Clone)]
struct HelperRunner {
    helper: PathBuf,
    paths: Paths,
}

struct ExecProbe {
    ctl: HelperRunner,
}

impl Probe for ExecProbe {
    async fn run(&self, command: &[String], timeout: Duration) -> ProbeResult {
        let start = SystemTime::now();
        let failed = |output: String| ProbeResult {
            start,
            end: SystemTime::now(),
            exit_code: -1,
            output,
        };
        let mut cmd = tokio::process::Command::new(&self.ctl.helper);
        let mut args: Vec<OsString> = vec![
            "runtime-helper".into(),
            "exec".into(),
            "--dir".into(),
            self.ctl.paths.dir.clone().into(),
            "--id".into(),
            self.ctl.paths.id.clone().into(),
            "--timeout-ms".into(),
            timeout.as_millis().to_string().into(),
            "--".into(),
        ];
        args.extend(command.iter().map(OsString::from));
        cmd.args(args)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        // The helper enforces `timeout` itself; this bounds the helper.
        let out = match tokio::time::timeout(timeout + HELPER_TIMEOUT, cmd.output()).await {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => return failed(format!("cannot run the healthcheck: {e}")),
            Err(_) => return failed("the healthcheck helper hung".into()),
        };
        if !out.status.success() {
            return failed(format!(
                "cannot run the healthcheck: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        match serde_json::from_slice::<helper::ExecReport>(&out.stdout) {
            Ok(report) => report.into_probe(start, timeout),
            Err(e) => failed(format!("unreadable healthcheck report: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_parents_are_checked() {
        for ok in ["swarm", "/swarm/", "swt-1-2-n1", "a/b.c"] {
            assert!(validate_cgroup_parent(ok).is_ok(), "{ok}");
        }
        for bad in ["", "/", "a//b", "../x", "a/./b", "sp ace"] {
            assert!(validate_cgroup_parent(bad).is_err(), "{bad}");
        }
    }
}
