//! Connects a CLI command to a daemon's unix socket.
use hyper_util::rt::TokioIo;
use swarm_proto::v1::{
    control_client::ControlClient, images_client::ImagesClient, logs_client::LogsClient,
    swarm_client::SwarmClient, system_client::SystemClient,
};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::host::Host;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot connect to the swarm daemon at {host}: {reason}. Is the daemon running? Start one with `swarm daemon`, or point -H/SWARM_HOST at a running daemon's socket"
    )]
    Unreachable { host: Host, reason: String },
    #[error("the daemon at {host} answered with an error: {message}")]
    Rpc { host: Host, message: String },
}

/// A connection to one daemon.
#[derive(Debug, Clone)]
pub struct Client {
    host: Host,
    channel: Channel,
}

impl Client {
    /// Connects now, so an absent daemon is reported before any request.
    pub async fn connect(host: &Host) -> Result<Self, ClientError> {
        let path = host.unix_path().to_path_buf();
        // The URI is required by tonic but unused: the connector below
        // always dials the socket.
        let endpoint = Endpoint::from_static("http://swarm.sock");
        let channel = endpoint
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(TokioIo::new(stream))
                }
            }))
            .await
            .map_err(|e| ClientError::Unreachable {
                host: host.clone(),
                reason: root_cause(&e),
            })?;
        Ok(Client {
            host: host.clone(),
            channel,
        })
    }

    pub fn host(&self) -> &Host {
        &self.host
    }

    pub fn system(&self) -> SystemClient<Channel> {
        SystemClient::new(self.channel.clone())
    }

    /// Node-local membership: init, join, leave, info.
    pub fn swarm(&self) -> SwarmClient<Channel> {
        SwarmClient::new(self.channel.clone())
    }

    /// The cluster's control API. A daemon serves it only while its node is
    /// a manager; a worker answers every call with FAILED_PRECONDITION.
    pub fn control(&self) -> ControlClient<Channel> {
        ControlClient::new(self.channel.clone())
    }

    /// Task logs, gathered by the leader (managers only, like `control`).
    pub fn logs(&self) -> LogsClient<Channel> {
        LogsClient::new(self.channel.clone())
    }

    /// The node's image store.
    pub fn images(&self) -> ImagesClient<Channel> {
        ImagesClient::new(self.channel.clone())
    }

    /// Maps a failed call to a user-facing error.
    pub fn rpc_error(&self, status: tonic::Status) -> ClientError {
        if status.code() == tonic::Code::Unavailable {
            return ClientError::Unreachable {
                host: self.host.clone(),
                reason: status.message().to_string(),
            };
        }
        ClientError::Rpc {
            host: self.host.clone(),
            message: status.message().to_string(),
        }
    }
}

/// The innermost cause, which is the part a user can act on ("No such file
/// or directory", "Permission denied").
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}
