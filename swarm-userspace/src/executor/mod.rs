//! The container seam of a worker: the [`Executor`] and [`Controller`]
//! traits, shaped like swarmkit's exec controller (prepare, start, wait,
//! shutdown, terminate, remove), plus what they take and report.
//!
//! Owns: the description of one container ([`ContainerConfig`]: a mounted
//! rootfs, the image's config and the task's `ContainerSpec`), the pure
//! translation of it into an OCI runtime spec ([`spec`]), healthcheck
//! decisions ([`health`]), the in-memory [`fake::FakeExecutor`] for simulated
//! nodes, and the [`conformance`] suite every implementation must pass.
//!
//! Never touches the kernel itself: the libcontainer implementation lives in
//! [`crate::runtime`]. Never pulls images: the image store hands over a
//! mounted rootfs and the image config.
pub mod conformance;
pub mod fake;
pub mod health;
pub mod logs;
pub mod spec;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use swarm_proto::v1 as pb;

pub use health::{HealthCheck, HealthState, HealthStatus};

/// docker's default `--stop-grace-period`.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);

/// The `config` object of an OCI/docker image configuration: what the image
/// store reads from the image and hands to the executor. Field names are the
/// image config's own, so the JSON object deserializes as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ImageConfig {
    /// `KEY=value` entries.
    #[serde(deserialize_with = "null_as_default")]
    pub env: Vec<String>,
    #[serde(deserialize_with = "null_as_default")]
    pub entrypoint: Vec<String>,
    #[serde(deserialize_with = "null_as_default")]
    pub cmd: Vec<String>,
    pub working_dir: String,
    /// `user`, `uid`, `user:group` or `uid:gid`, resolved in the rootfs.
    pub user: String,
    /// `80/tcp` → `{}`, as in the image config.
    #[serde(deserialize_with = "null_as_default")]
    pub exposed_ports: BTreeMap<String, serde_json::Value>,
    #[serde(deserialize_with = "null_as_default")]
    pub labels: BTreeMap<String, String>,
    /// E.g. `SIGQUIT`; empty means SIGTERM.
    pub stop_signal: String,
    /// docker images may carry a healthcheck (not part of the OCI spec).
    pub healthcheck: Option<health::ImageHealthcheck>,
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Which network namespace a container runs in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetworkMode {
    /// The node's own namespace (`--network host`).
    Host,
    /// A new namespace with only loopback, up: what a task gets until the
    /// networking layer attaches it to networks.
    Isolated,
    /// A namespace prepared by the networking layer, joined by path
    /// (e.g. `/run/netns/<name>`).
    Namespace(PathBuf),
}

/// Everything needed to create one container.
#[derive(Clone, Debug)]
pub struct ContainerConfig {
    /// Unique on the node; letters, digits, `_`, `-`, `.`; at most 64.
    pub id: String,
    /// The mounted root filesystem (owned by the image store: the executor
    /// never deletes it).
    pub rootfs: PathBuf,
    pub image: ImageConfig,
    pub spec: pb::ContainerSpec,
    pub resources: Option<pb::ResourceRequirements>,
    pub network: NetworkMode,
    /// The container's addresses on its networks, for its /etc/hosts.
    pub addresses: Vec<std::net::IpAddr>,
    /// The embedded DNS server, when the networking layer provides one:
    /// /etc/resolv.conf then names only it.
    pub nameserver: Option<std::net::IpAddr>,
}

impl ContainerConfig {
    /// The signal that asks the container to stop: the task's, else the
    /// image's, else SIGTERM.
    pub fn stop_signal(&self) -> Result<Signal, ExecError> {
        let name = [&self.spec.stop_signal, &self.image.stop_signal]
            .into_iter()
            .find(|s| !s.is_empty());
        match name {
            Some(s) => s.parse(),
            None => Ok(Signal::TERM),
        }
    }

    /// `--stop-grace-period`, 10 s by default.
    pub fn stop_grace(&self) -> Duration {
        self.spec
            .stop_grace_period
            .as_ref()
            .and_then(|d| Duration::try_from(*d).ok())
            .unwrap_or(DEFAULT_STOP_GRACE)
    }
}

/// Checks a container ID: it names directories and cgroups.
pub fn validate_id(id: &str) -> Result<(), ExecError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(ExecError::InvalidSpec(format!(
            "container ID {id:?} must be 1 to 64 letters, digits, '_', '-' or '.', not starting with '.'"
        )))
    }
}

/// A signal number, parsed from `SIGTERM`, `TERM`, `term` or `15`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Signal(pub i32);

impl Signal {
    pub const TERM: Signal = Signal(libc::SIGTERM);
    pub const KILL: Signal = Signal(libc::SIGKILL);
}

impl FromStr for Signal {
    type Err = ExecError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ExecError::InvalidSpec(format!("invalid stop signal {s:?}"));
        if let Ok(n) = s.parse::<i32>() {
            return nix::sys::signal::Signal::try_from(n)
                .map(|_| Signal(n))
                .map_err(|_| bad());
        }
        let upper = s.trim().to_ascii_uppercase();
        let name = if upper.starts_with("SIG") {
            upper
        } else {
            format!("SIG{upper}")
        };
        nix::sys::signal::Signal::from_str(&name)
            .map(|sig| Signal(sig as i32))
            .map_err(|_| bad())
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match nix::sys::signal::Signal::try_from(self.0) {
            Ok(s) => f.write_str(s.as_str()),
            Err(_) => write!(f, "signal {}", self.0),
        }
    }
}

/// Where a container is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    /// Prepared: its process exists but has not run the command yet.
    Created,
    Running,
    /// Its process is gone; [`ContainerState::exit`] says how.
    Exited,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Exited => "exited",
        })
    }
}

/// How a container's process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// The exit code, or 128 + signal number when a signal killed it (as
    /// docker reports it).
    pub code: i32,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    /// The real status is unknown: the process ended while no one could
    /// collect it (its shim was killed). `code` is then 137.
    pub lost: bool,
    /// The kernel's OOM killer killed a process of the container (its
    /// memory cgroup counted an OOM kill), as docker's `OOMKilled`. Records
    /// written before this field existed load as `false`.
    #[serde(default)]
    pub oom_killed: bool,
}

impl ExitStatus {
    pub fn code(code: i32) -> ExitStatus {
        ExitStatus {
            code,
            signal: None,
            lost: false,
            oom_killed: false,
        }
    }

    pub fn signaled(signal: i32) -> ExitStatus {
        ExitStatus {
            code: 128 + signal,
            signal: Some(signal),
            lost: false,
            oom_killed: false,
        }
    }

    /// What is reported when the real status could not be collected.
    pub fn lost() -> ExitStatus {
        ExitStatus {
            code: 128 + libc::SIGKILL,
            signal: None,
            lost: true,
            oom_killed: false,
        }
    }

    /// The same status, marked as ended by the OOM killer when `killed`.
    pub fn with_oom_killed(self, killed: bool) -> ExitStatus {
        ExitStatus {
            oom_killed: killed,
            ..self
        }
    }
}

/// What [`Controller::wait`] returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WaitOutcome {
    /// The process ended.
    Exited(ExitStatus),
    /// The healthcheck failed `retries` times in a row; the container is
    /// still running and the caller fails the task and shuts it down.
    Unhealthy(HealthState),
}

/// A snapshot of one container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerState {
    pub id: String,
    pub status: Status,
    /// The container's init process on the host, while it exists.
    pub pid: Option<u32>,
    pub exit: Option<ExitStatus>,
    /// `None` when the container has no healthcheck.
    pub health: Option<HealthState>,
    pub created_at: SystemTime,
    pub started_at: Option<SystemTime>,
    pub finished_at: Option<SystemTime>,
    /// The task's container labels (`ContainerSpec.labels`), so a restarted
    /// agent can tell its containers apart.
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("no container {0} on this node")]
    NotFound(String),
    #[error("a container {0} already exists on this node; remove it first")]
    AlreadyExists(String),
    #[error("invalid container configuration: {0}")]
    InvalidSpec(String),
    #[error("cannot {op} container {id}: it is {status}")]
    WrongState {
        id: String,
        op: &'static str,
        status: Status,
    },
    #[error("{op} of container {id} failed: {message}")]
    Runtime {
        id: String,
        op: &'static str,
        message: String,
    },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl From<spec::SpecError> for ExecError {
    fn from(e: spec::SpecError) -> Self {
        ExecError::InvalidSpec(e.to_string())
    }
}

/// Creates controllers, and finds the containers that already exist (after
/// an agent restart). One per node.
#[async_trait::async_trait]
pub trait Executor: Send + Sync {
    /// A short name for logs (`libcontainer`, `fake`).
    fn name(&self) -> &'static str;

    /// A controller for a new container; nothing happens until
    /// [`Controller::prepare`].
    fn controller(&self, config: ContainerConfig) -> Result<Box<dyn Controller>, ExecError>;

    /// Every container this executor knows on the node, running or not,
    /// including those created before a restart.
    async fn list(&self) -> Result<Vec<ContainerState>, ExecError>;

    /// A controller for an existing container (found by [`Executor::list`]),
    /// e.g. after the agent restarted: its state, wait, shutdown and remove
    /// work as for a container this process created.
    async fn adopt(&self, id: &str) -> Result<Box<dyn Controller>, ExecError>;
}

/// One container's life cycle. Every method may be called again after an
/// error or a restart; `shutdown`, `terminate` and `remove` are idempotent.
#[async_trait::async_trait]
pub trait Controller: Send + Sync {
    fn id(&self) -> &str;

    /// Creates the container (rootfs mounts, namespaces, cgroups, the
    /// process, stopped before the command runs). Fails with
    /// [`ExecError::AlreadyExists`] if it exists.
    async fn prepare(&self) -> Result<(), ExecError>;

    /// Runs the command; the healthcheck, if any, starts too.
    async fn start(&self) -> Result<(), ExecError>;

    /// Until the process exits or the container turns unhealthy. Cancel-safe.
    async fn wait(&self) -> Result<WaitOutcome, ExecError>;

    /// Sends `signal` and, if the process is still there after `grace`,
    /// SIGKILL; returns once it has exited. Nothing to do if it has.
    async fn shutdown(&self, grace: Duration, signal: Signal) -> Result<(), ExecError>;

    /// SIGKILL now, and wait for the exit.
    async fn terminate(&self) -> Result<(), ExecError>;

    /// Deletes the container, killing it first if it runs: cgroups, mounts
    /// and state are gone afterwards. Removing a missing container succeeds.
    async fn remove(&self) -> Result<(), ExecError>;

    async fn inspect(&self) -> Result<ContainerState, ExecError>;

    /// The container's log file, if this executor keeps one.
    fn log_source(&self) -> Option<logs::LogSource>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_in_every_docker_form() {
        for s in ["SIGTERM", "TERM", "term", "15", "sigterm"] {
            assert_eq!(s.parse::<Signal>().unwrap(), Signal::TERM, "{s}");
        }
        assert_eq!("SIGQUIT".parse::<Signal>().unwrap(), Signal(libc::SIGQUIT));
        assert_eq!("9".parse::<Signal>().unwrap(), Signal::KILL);
        assert!("SIGNOPE".parse::<Signal>().is_err());
        assert!("99".parse::<Signal>().is_err());
        assert_eq!(Signal::TERM.to_string(), "SIGTERM");
    }

    #[test]
    fn ids_are_checked() {
        assert!(validate_id("abc-1.2_x").is_ok());
        assert!(validate_id("").is_err());
        assert!(validate_id("../x").is_err());
        assert!(validate_id(".hidden").is_err());
        assert!(validate_id(&"a".repeat(65)).is_err());
    }

    #[test]
    fn image_config_reads_the_image_json() {
        let json = r#"{"Env":["PATH=/bin"],"Entrypoint":["/sbin/tini","--"],
            "Cmd":["/bin/httpd","-f"],"WorkingDir":"/","ExposedPorts":{"80/tcp":{}},
            "Labels":null,"StopSignal":"SIGQUIT",
            "Healthcheck":{"Test":["CMD-SHELL","true"],"Interval":1000000000,"Retries":2}}"#;
        let c: ImageConfig = serde_json::from_str(json).unwrap();
        assert_eq!(c.entrypoint, ["/sbin/tini", "--"]);
        assert_eq!(c.cmd, ["/bin/httpd", "-f"]);
        assert!(c.exposed_ports.contains_key("80/tcp"));
        assert!(c.labels.is_empty());
        assert_eq!(c.stop_signal, "SIGQUIT");
        let hc = c.healthcheck.unwrap();
        assert_eq!(hc.test, ["CMD-SHELL", "true"]);
        assert_eq!(hc.interval, 1_000_000_000);
        assert_eq!(hc.retries, 2);
    }

    #[test]
    fn stop_signal_and_grace_defaults() {
        let mut c = ContainerConfig {
            id: "x".into(),
            rootfs: "/r".into(),
            image: ImageConfig::default(),
            spec: pb::ContainerSpec::default(),
            resources: None,
            network: NetworkMode::Isolated,
            addresses: Vec::new(),
            nameserver: None,
        };
        assert_eq!(c.stop_signal().unwrap(), Signal::TERM);
        assert_eq!(c.stop_grace(), DEFAULT_STOP_GRACE);
        c.image.stop_signal = "SIGQUIT".into();
        assert_eq!(c.stop_signal().unwrap(), Signal(libc::SIGQUIT));
        c.spec.stop_signal = "SIGINT".into();
        assert_eq!(c.stop_signal().unwrap(), Signal(libc::SIGINT));
        c.spec.stop_grace_period = Some(prost_types::Duration {
            seconds: 2,
            nanos: 0,
        });
        assert_eq!(c.stop_grace(), Duration::from_secs(2));
    }
}
