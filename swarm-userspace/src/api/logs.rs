//! `Logs` on the unix socket (`service logs`, `task logs`): a manager
//! passes the subscription to the leader's log broker over mTLS and
//! streams the answer back; a worker refuses like `Control` does.
use std::pin::Pin;

use swarm_proto::v1::{self as pb, logs_client::LogsClient, logs_server};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::{
    api::local::{NOT_A_MANAGER, NOT_IN_SWARM},
    manager::caserver::propose_status,
    node::NodeHandle,
};

#[derive(Clone, Debug)]
pub struct LocalLogs(pub NodeHandle);

type LogStream = Pin<Box<dyn Stream<Item = Result<pb::SubscribeLogsMessage, Status>> + Send>>;

#[tonic::async_trait]
impl logs_server::Logs for LocalLogs {
    type SubscribeLogsStream = LogStream;

    async fn subscribe_logs(
        &self,
        r: Request<pb::SubscribeLogsRequest>,
    ) -> Result<Response<LogStream>, Status> {
        let Some(m) = self.0.manager() else {
            return Err(Status::failed_precondition(
                if self.0.info().node_id.is_empty() {
                    NOT_IN_SWARM
                } else {
                    NOT_A_MANAGER
                },
            ));
        };
        // Subscriptions live on the leader, even when that is this node:
        // one path, through the cluster port.
        let channel = m.leader_channel().map_err(propose_status)?;
        let resp = LogsClient::new(channel)
            .subscribe_logs(r.into_inner())
            .await
            .map_err(|s| match s.code() {
                tonic::Code::Unavailable | tonic::Code::Unknown => Status::failed_precondition(
                    format!(
                        "cannot reach the swarm's leader for logs ({}); check `swarm node ls` and retry",
                        s.message()
                    ),
                ),
                _ => s,
            })?;
        Ok(Response::new(Box::pin(resp.into_inner())))
    }
}
