//! The CA's gRPC service: certificates for joining nodes (authenticated by
//! join token) and renewals (authenticated by the current certificate).
//!
//! Runs on the leader: issuing creates the Node object through Raft, so a
//! follower forwards the call. The CA key is read from the replicated
//! cluster object at each use and never leaves the managers.
use std::{collections::BTreeSet, time::Duration};

use openraft::{BasicNode, ChangeMembers};
use swarm_proto::v1::{self as pb, node_ca_client::NodeCaClient, node_ca_server};
use tonic::{Request, Response, Status};

use super::{Manager, ProposeError};
use crate::{
    ca::{self, JoinToken, Role, RootCa},
    store::{WriteTx, new_id},
};

#[derive(Clone, Debug)]
pub struct NodeCaService {
    m: Manager,
}

impl NodeCaService {
    pub fn new(m: Manager) -> Self {
        NodeCaService { m }
    }
    pub fn into_server(self) -> node_ca_server::NodeCaServer<Self> {
        node_ca_server::NodeCaServer::new(self)
    }
}

/// Maps a proposal failure to a gRPC status the caller can act on.
pub fn propose_status(e: ProposeError) -> Status {
    match e {
        // Not UNAVAILABLE: the daemon answered; it is the cluster that
        // cannot take the write (clients read UNAVAILABLE as "no daemon").
        ProposeError::NotLeader { .. }
        | ProposeError::NoQuorum { .. }
        | ProposeError::Timeout { .. } => Status::failed_precondition(e.to_string()),
        ProposeError::Rejected(r) if r.contains("out of sequence") => Status::aborted(format!(
            "the object changed while this update was in flight; read it again and retry ({r})"
        )),
        ProposeError::Rejected(r) => Status::failed_precondition(r),
        ProposeError::Raft(r) => Status::internal(r),
    }
}

pub fn node_cert_validity(cluster: &pb::Cluster) -> Duration {
    cluster
        .spec
        .as_ref()
        .and_then(|s| s.ca_config.as_ref())
        .and_then(|c| c.node_cert_expiry)
        .and_then(|d| Duration::try_from(d).ok())
        .filter(|d| *d >= ca::MIN_NODE_CERT_VALIDITY)
        .unwrap_or(ca::NODE_CERT_VALIDITY)
}

pub fn root_ca_of(cluster: &pb::Cluster) -> Result<RootCa, Status> {
    let rc = cluster
        .root_ca
        .as_ref()
        .ok_or_else(|| Status::internal("the cluster has no root CA"))?;
    let cert = String::from_utf8_lossy(&rc.ca_cert_pem);
    let key = String::from_utf8_lossy(&rc.ca_key_pem);
    RootCa::from_pem(&cert, &key).map_err(|e| Status::internal(format!("loading the root CA: {e}")))
}

/// Advertise addresses of all managers, leader first.
pub fn manager_addrs(m: &Manager) -> Vec<String> {
    let leader = m.proposer.leader_addr();
    let mut v: Vec<String> = m
        .store
        .view()
        .list::<pb::Node>()
        .filter_map(|n| n.manager_status.as_ref().map(|s| s.addr.clone()))
        .filter(|a| !a.is_empty())
        .collect();
    v.sort();
    v.dedup();
    if let Some(l) = leader {
        v.retain(|a| *a != l);
        v.insert(0, l);
    }
    v
}

/// Takes a demoted manager out of Raft, retrying while another membership
/// change is in flight. If it is this leader, it steps down afterwards.
pub async fn remove_raft_voter(m: Manager, raft_id: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while tokio::time::Instant::now() < deadline {
        if !m.is_leader() {
            tracing::info!(raft_id, "lost leadership while removing a manager");
            return;
        }
        let ids: BTreeSet<u64> = [raft_id].into();
        match m
            .raft
            .change_membership(ChangeMembers::RemoveVoters(ids), false)
            .await
        {
            Ok(_) => {
                tracing::info!(raft_id, "manager removed from Raft");
                return;
            }
            Err(e) => {
                tracing::debug!(raft_id, error = %e, "removing voter; retrying");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
    tracing::warn!(raft_id, "gave up removing the manager from Raft");
}

/// Adds a new manager to Raft: first as a learner (so it catches up
/// without counting towards quorum), then as a voter. Retries while
/// another membership change is in flight; gives up after about a minute.
pub async fn add_raft_voter(m: Manager, raft_id: u64, addr: String) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut learner_added = false;
    while tokio::time::Instant::now() < deadline {
        if !m.is_leader() {
            tracing::info!(
                raft_id,
                "lost leadership while adding a manager; the new leader takes over"
            );
            return;
        }
        if !learner_added {
            match m
                .raft
                .add_learner(raft_id, BasicNode::new(addr.clone()), true)
                .await
            {
                Ok(_) => learner_added = true,
                Err(e) => {
                    tracing::debug!(raft_id, error = %e, "adding learner; retrying");
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    continue;
                }
            }
        }
        let add: BTreeSet<u64> = [raft_id].into();
        match m
            .raft
            .change_membership(ChangeMembers::AddVoterIds(add), false)
            .await
        {
            Ok(_) => {
                tracing::info!(raft_id, %addr, "manager added to Raft as a voter");
                return;
            }
            Err(e) => {
                tracing::debug!(raft_id, error = %e, "promoting learner to voter; retrying");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
    tracing::warn!(raft_id, %addr, "gave up adding the manager to Raft");
}

#[tonic::async_trait]
impl node_ca_server::NodeCa for NodeCaService {
    async fn issue_node_certificate(
        &self,
        req: Request<pb::IssueNodeCertificateRequest>,
    ) -> Result<Response<pb::IssueNodeCertificateResponse>, Status> {
        if !self.m.is_leader() {
            let ch = self.m.leader_channel().map_err(propose_status)?;
            return NodeCaClient::new(ch)
                .issue_node_certificate(req.into_inner())
                .await;
        }
        let r = req.into_inner();
        let cluster = self
            .m
            .cluster()
            .ok_or_else(|| Status::failed_precondition("the swarm is still initialising; retry"))?;
        let presented =
            JoinToken::parse(&r.token).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let tokens = cluster
            .root_ca
            .as_ref()
            .and_then(|rc| rc.join_tokens.as_ref())
            .ok_or_else(|| Status::internal("the cluster has no join tokens"))?;
        let parse = |t: &str| JoinToken::parse(t).map_err(|e| Status::internal(e.to_string()));
        let tokens = ca::JoinTokens {
            worker: parse(&tokens.worker)?,
            manager: parse(&tokens.manager)?,
        };
        let role = tokens.role_for(&presented).ok_or_else(|| {
            Status::permission_denied(
                "invalid join token: it is not this swarm's current worker or manager token (it may have been rotated); ask a manager for `swarm join-token worker`",
            )
        })?;
        if role == Role::Manager && r.raft_id == 0 {
            return Err(Status::invalid_argument(
                "a joining manager must send its Raft ID",
            ));
        }
        let root = root_ca_of(&cluster)?;
        let node_id = new_id();
        let csr = String::from_utf8_lossy(&r.csr_pem).into_owned();
        let cert = root
            .issue(
                &csr,
                &node_id,
                role,
                &cluster
                    .meta
                    .as_ref()
                    .map(|m| m.id.clone())
                    .unwrap_or_default(),
                node_cert_validity(&cluster),
            )
            .map_err(|e| Status::invalid_argument(format!("cannot sign the request: {e}")))?;
        let pb_role = match role {
            Role::Manager => pb::NodeRole::Manager,
            Role::Worker => pb::NodeRole::Worker,
        };
        let node = pb::Node {
            meta: Some(pb::Meta {
                id: node_id.clone(),
                ..Default::default()
            }),
            spec: Some(pb::NodeSpec {
                annotations: Some(pb::Annotations::default()),
                desired_role: pb_role as i32,
                availability: r.availability,
            }),
            description: r.description.clone(),
            status: Some(pb::NodeStatus {
                state: pb::NodeState::Unknown as i32,
                message: "joined; waiting for its first session".into(),
                addr: r.advertise_addr.clone(),
            }),
            manager_status: (role == Role::Manager).then(|| pb::ManagerStatus {
                raft_id: r.raft_id,
                addr: r.advertise_addr.clone(),
                leader: false,
                reachability: pb::Reachability::Unknown as i32,
            }),
            role: pb_role as i32,
            certificate: Some(pb::Certificate {
                role: pb_role as i32,
                cn: node_id.clone(),
                certificate_pem: cert.to_pem().into_bytes(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let actions = self
            .m
            .store
            .prepare(|tx: &mut WriteTx| tx.create(node))
            .map_err(|e| Status::internal(e.to_string()))?;
        self.m
            .proposer
            .propose(actions)
            .await
            .map_err(propose_status)?;
        tracing::info!(%node_id, ?role, addr = %r.advertise_addr, "node joined");
        if role == Role::Manager {
            tokio::spawn(add_raft_voter(
                self.m.clone(),
                r.raft_id,
                r.advertise_addr.clone(),
            ));
        }
        Ok(Response::new(pb::IssueNodeCertificateResponse {
            node_id,
            cluster_id: cluster
                .meta
                .as_ref()
                .map(|m| m.id.clone())
                .unwrap_or_default(),
            role: pb_role as i32,
            certificate_pem: cert.to_pem().into_bytes(),
            root_ca_pem: root.cert_pem().into_bytes(),
            managers: manager_addrs(&self.m),
        }))
    }

    async fn renew_node_certificate(
        &self,
        req: Request<pb::RenewNodeCertificateRequest>,
    ) -> Result<Response<pb::RenewNodeCertificateResponse>, Status> {
        let peer = ca::peer_identity(&req).cloned().ok_or_else(|| {
            Status::unauthenticated("renewal needs the node's current certificate")
        })?;
        let cluster = self
            .m
            .cluster()
            .ok_or_else(|| Status::failed_precondition("the swarm is still initialising; retry"))?;
        let node = self
            .m
            .store
            .view()
            .get::<pb::Node>(&peer.node_id)
            .ok_or_else(|| Status::permission_denied("this node is no longer part of the swarm"))?;
        let role = match pb::NodeRole::try_from(node.role) {
            Ok(pb::NodeRole::Manager) => Role::Manager,
            _ => Role::Worker,
        };
        // A promoted node becomes a manager here: record where its Raft
        // runs and add it to the membership (only the leader can).
        if role == Role::Manager && node.manager_status.is_none() {
            if !self.m.is_leader() {
                return Err(Status::failed_precondition(
                    "promotion is completed by the leader; renew there",
                ));
            }
            let r = req.get_ref();
            if r.raft_id == 0 || r.advertise_addr.is_empty() {
                return Err(Status::invalid_argument(
                    "a node being promoted must send its Raft ID and advertise address",
                ));
            }
            let mut n = (*node).clone();
            n.manager_status = Some(pb::ManagerStatus {
                raft_id: r.raft_id,
                addr: r.advertise_addr.clone(),
                leader: false,
                reachability: pb::Reachability::Unknown as i32,
            });
            let actions = self
                .m
                .store
                .prepare(|tx: &mut WriteTx| tx.update(n))
                .map_err(|e| Status::internal(e.to_string()))?;
            self.m
                .proposer
                .propose(actions)
                .await
                .map_err(propose_status)?;
            tokio::spawn(add_raft_voter(
                self.m.clone(),
                r.raft_id,
                r.advertise_addr.clone(),
            ));
        }
        let root = root_ca_of(&cluster)?;
        let csr = String::from_utf8_lossy(&req.get_ref().csr_pem).into_owned();
        let cert = root
            .issue(
                &csr,
                &peer.node_id,
                role,
                &peer.cluster_id,
                node_cert_validity(&cluster),
            )
            .map_err(|e| Status::invalid_argument(format!("cannot sign the request: {e}")))?;
        Ok(Response::new(pb::RenewNodeCertificateResponse {
            role: node.role,
            certificate_pem: cert.to_pem().into_bytes(),
            root_ca_pem: root.cert_pem().into_bytes(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slow_commit_with_a_majority_is_not_called_a_lost_quorum() {
        let slow = ProposeError::Timeout {
            after: Duration::from_secs(5),
            reachable: 2,
            managers: 3,
        };
        let s = propose_status(slow);
        assert_eq!(s.code(), tonic::Code::FailedPrecondition);
        assert!(
            s.message()
                .starts_with("the write was not committed within 5s"),
            "{}",
            s.message()
        );
        assert!(!s.message().contains("no quorum:"), "{}", s.message());
        let lost = propose_status(ProposeError::NoQuorum {
            reachable: 1,
            managers: 3,
        });
        assert!(
            lost.message().starts_with("no quorum: 1 of 3"),
            "{}",
            lost.message()
        );
    }
}
