//! `swarm daemon`: wires one node together and owns its lifetime.
//!
//! Takes the node's data root (locked so two daemons never share it), loads
//! the data plane, binds the API socket, then hands every long-running part
//! to the [`Supervisor`] and waits for SIGTERM/SIGINT. Must never contain a
//! control loop's logic itself: it only builds and starts them.
use std::{
    fs::File,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use crate::{
    api::server::{ApiError, ApiServer, SharedDataplane},
    dataplane::{Dataplane, DataplaneError, XdpMode, ebpf::EbpfDataplane},
    executor::{ExecError, Executor, fake::FakeExecutor},
    host::Host,
    runtime::{LibcontainerExecutor, RuntimeConfig},
    supervisor::{Supervisor, SupervisorError},
    worker::{
        Worker,
        images::{Images, SimulatedImages, StoreImages},
    },
};

/// Everything `swarm daemon` is told on its command line.
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    pub data_root: PathBuf,
    pub host: Host,
    /// Interfaces the data plane attaches to; none means no data plane.
    pub dataplane_interfaces: Vec<String>,
    pub xdp_mode: XdpMode,
    pub shutdown_timeout: Duration,
    /// Name this node reports (docker uses the OS hostname).
    pub hostname: String,
    pub raft: crate::raft::RaftSettings,
    /// Where to serve Prometheus metrics; `None` serves none.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Registries (`host:port`) pulled from over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// `--cgroup-parent` of containers.
    pub cgroup_parent: String,
    pub executor: ExecutorKind,
}

/// Which [`Executor`] runs the node's tasks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ExecutorKind {
    /// Containers, with libcontainer.
    #[default]
    Runtime,
    /// No containers: for simulated nodes.
    Fake,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot create data root {path}: {source}")]
    DataRoot {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "data root {0} is in use by another swarm daemon; stop it or pass a different --data-root"
    )]
    DataRootLocked(PathBuf),
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(transparent)]
    Metrics(#[from] crate::metrics::server::MetricsError),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
    #[error("opening the image store: {0}")]
    Images(#[from] crate::image::ImageError),
    #[error("cannot set up the container runtime: {0}")]
    Executor(#[from] ExecError),
}

/// Holds the data root's lock for the daemon's lifetime.
fn lock_data_root(root: &Path) -> Result<File, DaemonError> {
    std::fs::create_dir_all(root).map_err(|source| DaemonError::DataRoot {
        path: root.into(),
        source,
    })?;
    let lock_path = root.join("swarm.lock");
    let file = File::create(&lock_path).map_err(|source| DaemonError::DataRoot {
        path: lock_path.clone(),
        source,
    })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(DaemonError::DataRootLocked(root.into())),
        Err(std::fs::TryLockError::Error(source)) => Err(DaemonError::DataRoot {
            path: lock_path,
            source,
        }),
    }
}

/// Resolves on the first SIGTERM or SIGINT.
async fn termination() -> Result<impl std::future::Future<Output = ()>, DaemonError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    })
}

/// Runs a node until it is told to stop or a part of it fails.
pub async fn run(config: DaemonConfig) -> Result<(), DaemonError> {
    let _lock = lock_data_root(&config.data_root)?;
    match raise_open_files_limit() {
        Ok(n) => tracing::debug!(limit = n, "open files limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open files limit"),
    }
    tracing::info!(
        version = crate::version::VERSION,
        commit = crate::version::GIT_COMMIT,
        data_root = %config.data_root.display(),
        "swarm daemon starting"
    );
    let stop = termination().await?;

    // The data plane: attached to the given interfaces (failing is fatal),
    // and carrying overlay networks for containers. A node that runs real
    // containers loads it even without interfaces; if it cannot, the node
    // still runs, and tasks on overlay networks are rejected with the
    // reason.
    let (dataplane, no_dataplane): (Option<SharedDataplane>, String) = if !config
        .dataplane_interfaces
        .is_empty()
    {
        let mut dp = EbpfDataplane::load_pinned(config.xdp_mode, &config.data_root.join("bpf"))?;
        for iface in &config.dataplane_interfaces {
            dp.attach(iface)?;
        }
        (
            Some(Arc::new(Mutex::new(Box::new(dp) as Box<dyn Dataplane>))),
            String::new(),
        )
    } else if config.executor == ExecutorKind::Runtime {
        match EbpfDataplane::load_pinned(config.xdp_mode, &config.data_root.join("bpf")) {
            Ok(dp) => (
                Some(Arc::new(Mutex::new(Box::new(dp) as Box<dyn Dataplane>))),
                String::new(),
            ),
            Err(e) => {
                tracing::warn!(error = %e, "cannot load the eBPF data plane: tasks on overlay networks will be rejected");
                (None, e.to_string())
            }
        }
    } else {
        (None, "simulated nodes have no data plane".to_string())
    };

    let executor = executor(&config)?;
    let images = crate::image::ImageStore::open(config.data_root.join("images"))?;
    images.recover()?;
    let puller = Arc::new(crate::image::Puller::new(&config.insecure_registries)?);
    let task_images: Arc<dyn Images> = match config.executor {
        ExecutorKind::Runtime => Arc::new(StoreImages::new(images.clone(), puller.clone())),
        ExecutorKind::Fake => Arc::new(SimulatedImages),
    };
    let mut ct_gc = None;
    let networks: Arc<dyn crate::worker::TaskNetworks> = match config.executor {
        ExecutorKind::Runtime => {
            let upstreams = crate::network::dns::read_resolv_conf(std::path::Path::new(
                "/etc/resolv.conf",
            ))
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "the embedded DNS server has no upstream resolvers");
                Vec::new()
            });
            let agent = crate::network::NetworkAgent::new(
                &config.data_root,
                Arc::new(crate::network::glue::DataplaneOverlay::new(
                    dataplane.clone(),
                    no_dataplane,
                )),
                Some(Arc::new(crate::network::glue::EmbeddedDns(
                    crate::network::dns::DnsServer::new(upstreams),
                ))),
            );
            ct_gc = Some(crate::network::CtGcLoop {
                agent: agent.clone(),
                every: Duration::from_secs(10),
            });
            Arc::new(agent)
        }
        ExecutorKind::Fake => Arc::new(crate::worker::NoNetworks),
    };
    let (worker, worker_loop) = Worker::with_networks(executor.clone(), task_images, networks);

    let (node, node_loop) = crate::node::new(crate::node::NodeConfig {
        data_root: config.data_root.clone(),
        hostname: config.hostname.clone(),
        raft: config.raft.clone(),
        worker,
    });
    let mut supervisor = Supervisor::new(config.shutdown_timeout);
    supervisor.spawn(worker_loop);
    if let Some(gc) = ct_gc {
        supervisor.spawn(gc);
    }
    supervisor.spawn(node_loop);
    supervisor.spawn(
        ApiServer::bind(config.host.unix_path(), dataplane.clone(), node.clone())
            .await?
            .with_images(crate::api::images::ImagesApi::new(images, puller)),
    );
    if let Some(addr) = config.metrics_addr {
        supervisor.spawn(
            crate::metrics::server::MetricsServer::bind(addr, node, dataplane.clone()).await?,
        );
    }
    let res = supervisor.run_until(stop).await;
    // Containers outlive the daemon on purpose: a restarted daemon adopts
    // them (see runtime/mod.rs).
    drop(executor);
    // Programs detach when the data plane is dropped, after the API that
    // reads it has stopped.
    drop(dataplane);
    tracing::info!("swarm daemon stopped");
    res.map_err(Into::into)
}

/// Raises this process's open-file limit to its hard limit: a manager
/// holding thousands of node sessions, or a process simulating them, needs
/// one descriptor per connection. Returns the new soft limit.
pub fn raise_open_files_limit() -> Result<u64, nix::Error> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(hard)
}

/// The node's executor. The libcontainer one makes this process a child
/// subreaper first, so that container processes orphaned by a dead shim come
/// to us and their exit statuses are not lost. What a previous run left is
/// the worker's to decide on.
fn executor(config: &DaemonConfig) -> Result<Arc<dyn Executor>, DaemonError> {
    let exec: Arc<dyn Executor> = match config.executor {
        ExecutorKind::Fake => Arc::new(FakeExecutor::new()),
        ExecutorKind::Runtime => Arc::new(LibcontainerExecutor::new(RuntimeConfig::new(
            &config.data_root,
            &config.cgroup_parent,
        )?)?),
    };
    tracing::info!(executor = exec.name(), "executor ready");
    Ok(exec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_root_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let first = lock_data_root(dir.path()).unwrap();
        assert!(matches!(
            lock_data_root(dir.path()),
            Err(DaemonError::DataRootLocked(_))
        ));
        drop(first);
        lock_data_root(dir.path()).unwrap();
    }
}
