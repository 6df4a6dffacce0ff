//! The gRPC service that receives Raft messages from other managers and
//! hands them to the local Raft. Authorization (manager certificates only)
//! is enforced by the transport's policy layer, not here.
use swarm_proto::v1::{RaftPayload, raft_server};
use tonic::{Request, Response, Status};

use super::Raft;

#[derive(Clone)]
pub struct RaftService {
    raft: Raft,
}

impl std::fmt::Debug for RaftService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RaftService")
    }
}

impl RaftService {
    pub fn new(raft: Raft) -> Self {
        RaftService { raft }
    }

    pub fn into_server(self) -> raft_server::RaftServer<Self> {
        raft_server::RaftServer::new(self)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
    }
}

fn decode<T: serde::de::DeserializeOwned>(req: Request<RaftPayload>) -> Result<T, Status> {
    postcard::from_bytes(&req.into_inner().data)
        .map_err(|e| Status::invalid_argument(format!("undecodable Raft message: {e}")))
}

fn encode<T: serde::Serialize>(v: &T) -> Result<Response<RaftPayload>, Status> {
    postcard::to_allocvec(v)
        .map(|data| Response::new(RaftPayload { data }))
        .map_err(|e| Status::internal(format!("encoding Raft response: {e}")))
}

#[tonic::async_trait]
impl raft_server::Raft for RaftService {
    async fn append_entries(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let r = self.raft.append_entries(decode(req)?).await;
        encode(&r)
    }

    async fn vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let r = self.raft.vote(decode(req)?).await;
        encode(&r)
    }

    async fn install_snapshot(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let r = self.raft.install_snapshot(decode(req)?).await;
        encode(&r)
    }
}
