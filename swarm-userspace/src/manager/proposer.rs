//! Writes to the cluster store: batches proposed through Raft on the
//! leader, with a fast, explicit failure when there is no quorum.
//!
//! Never applies anything itself: the store changes only when Raft applies
//! the committed entry, on every manager alike.
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost::Message;
use swarm_proto::v1 as pb;

use crate::{
    raft::{ApplyResult, Proposal, Raft, RaftId, network::Contacts},
    store::new_batch,
};

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ProposeError {
    #[error("this manager is not the leader{}", leader_hint(.leader_addr))]
    NotLeader { leader_addr: Option<String> },
    #[error(
        "no quorum: {reachable} of {managers} managers reachable; writes are refused until a majority is back (reads still work)"
    )]
    NoQuorum { reachable: usize, managers: usize },
    #[error("rejected by the store: {0}")]
    Rejected(String),
    #[error("Raft failed: {0}")]
    Raft(String),
}

fn leader_hint(addr: &Option<String>) -> String {
    addr.as_ref()
        .map(|a| format!(" (the leader is at {a})"))
        .unwrap_or_default()
}

/// Proposes store batches. Cheap to clone.
#[derive(Clone)]
pub struct Proposer {
    raft: Raft,
    contacts: Contacts,
    /// How long a peer may be silent and still count as reachable.
    reachable_within: Duration,
    /// Upper bound on one proposal, so a write never hangs.
    timeout: Duration,
}

impl std::fmt::Debug for Proposer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Proposer")
    }
}

impl Proposer {
    pub fn new(raft: Raft, contacts: Contacts, reachable_within: Duration) -> Self {
        Proposer {
            raft,
            contacts,
            reachable_within,
            timeout: Duration::from_secs(5),
        }
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// Voters and how many of them this manager can reach (itself included).
    pub fn reachability(&self) -> (usize, usize) {
        let m = self.raft.metrics().borrow().clone();
        let voters: Vec<RaftId> = m.membership_config.membership().voter_ids().collect();
        let reachable = voters
            .iter()
            .filter(|id| **id == m.id || self.contacts.recent(**id, self.reachable_within))
            .count();
        (reachable, voters.len())
    }

    /// Whether manager `id` answered a Raft RPC recently.
    pub fn peer_reachable(&self, id: RaftId) -> bool {
        self.contacts.recent(id, self.reachable_within)
    }

    /// The leader's advertise address, if one is known.
    pub fn leader_addr(&self) -> Option<String> {
        let m = self.raft.metrics().borrow().clone();
        let leader = m.current_leader?;
        m.membership_config
            .membership()
            .get_node(&leader)
            .map(|n| n.addr.clone())
    }

    pub fn is_leader(&self) -> bool {
        let m = self.raft.metrics().borrow().clone();
        m.current_leader == Some(m.id)
    }

    /// Proposes `actions` as one batch and waits until it is applied here.
    /// Returns the Raft index (the written objects' new version).
    pub async fn propose(&self, actions: Vec<pb::StoreAction>) -> Result<u64, ProposeError> {
        if !self.is_leader() {
            return Err(ProposeError::NotLeader {
                leader_addr: self.leader_addr(),
            });
        }
        let (reachable, managers) = self.reachability();
        if reachable * 2 <= managers {
            return Err(ProposeError::NoQuorum {
                reachable,
                managers,
            });
        }
        let batch = new_batch(actions);
        let proposal = Proposal {
            timestamp_nanos: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
            payload: batch.encode_to_vec(),
        };
        let started = std::time::Instant::now();
        let res = self.commit(proposal).await;
        let m = crate::metrics::metrics();
        if res.is_ok() {
            m.raft_proposal_latency
                .observe(started.elapsed().as_secs_f64());
        } else {
            m.raft_proposals_failed.inc();
        }
        res
    }

    async fn commit(&self, proposal: Proposal) -> Result<u64, ProposeError> {
        match tokio::time::timeout(self.timeout, self.raft.client_write(proposal)).await {
            Err(_) => {
                let (reachable, managers) = self.reachability();
                Err(ProposeError::NoQuorum {
                    reachable,
                    managers,
                })
            }
            Ok(Err(e)) => match e.forward_to_leader() {
                Some(f) => Err(ProposeError::NotLeader {
                    leader_addr: f.leader_node.as_ref().map(|n| n.addr.clone()),
                }),
                None => Err(ProposeError::Raft(e.to_string())),
            },
            Ok(Ok(resp)) => match resp.data {
                ApplyResult::Applied { index } => Ok(index),
                ApplyResult::Rejected { reason } => Err(ProposeError::Rejected(reason)),
                ApplyResult::Noop => Ok(resp.log_id.index),
            },
        }
    }
}
