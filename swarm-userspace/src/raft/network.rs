//! Sends Raft messages to other managers over gRPC.
//!
//! Connections come from a [`ChannelProvider`] (mutual TLS in production,
//! plain channels in unit tests), so this module never sees certificates.
//! Unreachable peers are reported as such so openraft backs off instead of
//! treating them as protocol errors.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use openraft::{
    BasicNode,
    error::{InstallSnapshotError, NetworkError, RPCError, RaftError, Unreachable},
    network::{RPCOption, RaftNetwork, RaftNetworkFactory},
    raft::{
        AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest,
        InstallSnapshotResponse, VoteRequest, VoteResponse,
    },
};
use serde::{Serialize, de::DeserializeOwned};
use swarm_proto::v1::{RaftPayload, raft_client::RaftClient};
use tonic::transport::Channel;

use super::{RaftId, TypeConfig};

/// Gives a gRPC channel to a manager's address ("ip:port"). Channels should
/// connect lazily and be cached: Raft calls this for every peer it tracks.
pub trait ChannelProvider: Send + Sync + 'static {
    fn channel(&self, addr: &str) -> Result<Channel, String>;
}

/// When each peer last answered a Raft RPC: the leader's view of which
/// managers are reachable (for "no quorum" errors and manager status).
#[derive(Clone, Debug, Default)]
pub struct Contacts(Arc<Mutex<HashMap<RaftId, Instant>>>);

impl Contacts {
    pub fn record(&self, id: RaftId) {
        if let Ok(mut m) = self.0.lock() {
            m.insert(id, Instant::now());
        }
    }

    /// Whether `id` answered within `within`.
    pub fn recent(&self, id: RaftId, within: Duration) -> bool {
        self.0
            .lock()
            .ok()
            .and_then(|m| m.get(&id).map(|t| t.elapsed() <= within))
            .unwrap_or(false)
    }
}

#[derive(Clone)]
pub struct Network {
    channels: Arc<dyn ChannelProvider>,
    contacts: Contacts,
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("raft::Network")
    }
}

impl Network {
    pub fn new(channels: Arc<dyn ChannelProvider>, contacts: Contacts) -> Self {
        Network { channels, contacts }
    }
}

pub struct Peer {
    target: RaftId,
    contacts: Contacts,
    addr: String,
    client: Result<RaftClient<Channel>, String>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: RaftId, node: &BasicNode) -> Peer {
        Peer {
            target,
            contacts: self.contacts.clone(),
            addr: node.addr.clone(),
            client: self
                .channels
                .channel(&node.addr)
                .map(|c| RaftClient::new(c).max_decoding_message_size(64 << 20)),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Msg(String);

type RpcErr<E> = RPCError<RaftId, BasicNode, E>;

impl Peer {
    async fn call<Req, Resp, E>(
        &mut self,
        req: &Req,
        option: &RPCOption,
        method: RpcMethod,
    ) -> Result<Resp, RpcErr<RaftError<RaftId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let client = match &self.client {
            Ok(c) => c.clone(),
            Err(e) => {
                return Err(RPCError::Unreachable(Unreachable::new(&Msg(format!(
                    "manager {} at {}: {e}",
                    self.target, self.addr
                )))));
            }
        };
        let data = postcard::to_allocvec(req)
            .map_err(|e| RPCError::Network(NetworkError::new(&Msg(e.to_string()))))?;
        let mut request = tonic::Request::new(RaftPayload { data });
        request.set_timeout(option.hard_ttl());
        let resp = method(client, request).await.map_err(|s| {
            let m = Msg(format!(
                "manager {} at {}: {}",
                self.target,
                self.addr,
                s.message()
            ));
            match s.code() {
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => {
                    RPCError::Unreachable(Unreachable::new(&m))
                }
                _ => RPCError::Network(NetworkError::new(&m)),
            }
        })?;
        self.contacts.record(self.target);
        let decoded: Result<Resp, RaftError<RaftId, E>> =
            postcard::from_bytes(&resp.into_inner().data)
                .map_err(|e| RPCError::Network(NetworkError::new(&Msg(e.to_string()))))?;
        decoded
            .map_err(|e| RPCError::RemoteError(openraft::error::RemoteError::new(self.target, e)))
    }
}

/// One of the Raft service's unary calls, boxed so `call` can take any.
type RpcMethod = fn(
    RaftClient<Channel>,
    tonic::Request<RaftPayload>,
) -> std::pin::Pin<
    Box<
        dyn std::future::Future<Output = Result<tonic::Response<RaftPayload>, tonic::Status>>
            + Send,
    >,
>;

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<RaftId>, RpcErr<RaftError<RaftId>>> {
        // What a slow append was made of, for the debug log: appends that
        // miss openraft's timeout are re-sent whole.
        let entries = rpc.entries.len();
        let bytes: usize = rpc
            .entries
            .iter()
            .map(|e| match &e.payload {
                openraft::EntryPayload::Normal(p) => p.payload.len(),
                _ => 0,
            })
            .sum();
        let started = Instant::now();
        let r = self
            .call(&rpc, &option, |mut c, r| {
                Box::pin(async move { c.append_entries(r).await })
            })
            .await;
        if entries > 0 {
            tracing::debug!(
                target = self.target,
                entries,
                bytes,
                ms = started.elapsed().as_millis(),
                ok = r.is_ok(),
                "Raft append sent"
            );
        }
        r
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<RaftId>, RpcErr<RaftError<RaftId, InstallSnapshotError>>>
    {
        self.call(&rpc, &option, |mut c, r| {
            Box::pin(async move { c.install_snapshot(r).await })
        })
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<RaftId>,
        option: RPCOption,
    ) -> Result<VoteResponse<RaftId>, RpcErr<RaftError<RaftId>>> {
        self.call(&rpc, &option, |mut c, r| {
            Box::pin(async move { c.vote(r).await })
        })
        .await
    }
}
