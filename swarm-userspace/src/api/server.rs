//! Serves the node-local API on a unix socket.
use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Instant,
};

use swarm_proto::v1::{
    self as pb,
    system_server::{System, SystemServer},
};
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::{
    api::{
        images::ImagesApi,
        local::{LocalControl, LocalSwarm},
    },
    dataplane::Dataplane,
    node::NodeHandle,
    supervisor::{ControlLoop, LoopError},
    version,
};

/// Shared handle to the node's data plane, if it has one.
pub type SharedDataplane = Arc<Mutex<Box<dyn Dataplane>>>;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("another daemon is already serving {0}; stop it or choose another -H/--host")]
    InUse(PathBuf),
    #[error("cannot create the API socket directory {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on {path}: {source}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

struct SystemApi {
    started: Instant,
    dataplane: Option<SharedDataplane>,
}

#[tonic::async_trait]
impl System for SystemApi {
    async fn version(
        &self,
        _req: Request<pb::VersionRequest>,
    ) -> Result<Response<pb::VersionResponse>, Status> {
        Ok(Response::new(pb::VersionResponse {
            version: version::VERSION.into(),
            git_commit: version::GIT_COMMIT.into(),
            api_version: version::API_VERSION.into(),
            os: version::OS.into(),
            arch: version::arch().into(),
            kernel_version: version::kernel_version(),
            uptime_seconds: self.started.elapsed().as_secs(),
        }))
    }

    async fn dataplane_status(
        &self,
        _req: Request<pb::DataplaneStatusRequest>,
    ) -> Result<Response<pb::DataplaneStatusResponse>, Status> {
        let Some(dp) = &self.dataplane else {
            return Ok(Response::new(pb::DataplaneStatusResponse {
                backend: "none".into(),
                ..Default::default()
            }));
        };
        let status = {
            let dp = dp.lock().map_err(|_| {
                Status::internal("data plane state is poisoned; restart the daemon")
            })?;
            dp.status()
        }
        .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::DataplaneStatusResponse {
            backend: status.backend,
            interfaces: status
                .interfaces
                .into_iter()
                .map(|i| pb::AttachedInterface {
                    name: i.name,
                    ifindex: i.ifindex,
                    programs: i
                        .programs
                        .into_iter()
                        .map(|p| pb::AttachedProgram {
                            name: p.name,
                            kind: p.kind,
                            attach_mode: p.attach_mode,
                        })
                        .collect(),
                })
                .collect(),
            counters: status
                .counters
                .into_iter()
                .map(|((iface, dir, class), c)| pb::PacketCounter {
                    interface: iface,
                    direction: dir.into(),
                    class: class.into(),
                    packets: c.packets,
                    bytes: c.bytes,
                })
                .collect(),
        }))
    }
}

/// The API server as a control loop. Binding happens in [`ApiServer::bind`]
/// so a busy or unwritable socket fails the daemon at start, not later.
pub struct ApiServer {
    path: PathBuf,
    listener: UnixListener,
    api: SystemApi,
    node: NodeHandle,
    images: Option<ImagesApi>,
}

impl std::fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServer")
            .field("path", &self.path)
            .finish()
    }
}

impl ApiServer {
    pub async fn bind(
        path: &Path,
        dataplane: Option<SharedDataplane>,
        node: NodeHandle,
    ) -> Result<Self, ApiError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| ApiError::Dir {
                path: dir.into(),
                source,
            })?;
        }
        if path.exists() {
            // A socket file outlives a crashed daemon; only a live listener
            // means the address is really taken.
            if UnixStream::connect(path).await.is_ok() {
                return Err(ApiError::InUse(path.into()));
            }
            let _ = std::fs::remove_file(path);
        }
        let listener = UnixListener::bind(path).map_err(|source| ApiError::Bind {
            path: path.into(),
            source,
        })?;
        // Root and the owning group only, like docker.sock: the API can
        // reconfigure the node.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(
            |source| ApiError::Bind {
                path: path.into(),
                source,
            },
        )?;
        Ok(ApiServer {
            path: path.into(),
            listener,
            api: SystemApi {
                started: Instant::now(),
                dataplane,
            },
            node,
            images: None,
        })
    }

    /// Serves the Images API (`swarm image ...`) too.
    pub fn with_images(mut self, images: ImagesApi) -> Self {
        self.images = Some(images);
        self
    }
}

impl ControlLoop for ApiServer {
    fn name(&self) -> &'static str {
        "api"
    }

    async fn run(self, shutdown: CancellationToken) -> Result<(), LoopError> {
        tracing::info!(socket = %self.path.display(), "API listening");
        let incoming = UnixListenerStream::new(self.listener);
        let res = tonic::transport::Server::builder()
            .add_service(SystemServer::new(self.api))
            .add_service(swarm_proto::v1::swarm_server::SwarmServer::new(LocalSwarm(
                self.node.clone(),
            )))
            .add_service(swarm_proto::v1::control_server::ControlServer::new(
                LocalControl(self.node.clone()),
            ))
            .add_service(swarm_proto::v1::logs_server::LogsServer::new(
                crate::api::logs::LocalLogs(self.node),
            ))
            .add_optional_service(
                self.images
                    .map(swarm_proto::v1::images_server::ImagesServer::new),
            )
            .serve_with_incoming_shutdown(incoming, shutdown.cancelled())
            .await;
        let _ = std::fs::remove_file(&self.path);
        res.map_err(Into::into)
    }
}
