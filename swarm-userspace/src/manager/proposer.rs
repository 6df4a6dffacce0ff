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
    #[error(
        "the write was not committed within {after:?}: {reachable} of {managers} managers answer, but no quorum confirmed it in time (the managers may be overloaded: check their CPU and disk); retry"
    )]
    Timeout {
        after: Duration,
        reachable: usize,
        managers: usize,
    },
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

/// Proposals [`Proposer::propose_pipelined`] keeps in Raft at once: more
/// than one AppendEntries carries, so replication always has the next
/// entries ready.
pub const PIPELINE: usize = 8;

fn proposal(actions: Vec<pb::StoreAction>) -> Proposal {
    let batch = new_batch(actions);
    Proposal {
        timestamp_nanos: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
        payload: batch.encode_to_vec(),
    }
}

fn observe(res: &Result<u64, ProposeError>, started: std::time::Instant) {
    let m = crate::metrics::metrics();
    if res.is_ok() {
        m.raft_proposal_latency
            .observe(started.elapsed().as_secs_f64());
    } else {
        m.raft_proposals_failed.inc();
    }
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
        // Borrowed, not cloned: every dispatcher call asks, and the metrics
        // carry the whole membership.
        // The state too: once Raft is shut down (a demotion, the daemon
        // stopping) its metrics keep naming this manager the leader.
        let rx = self.raft.metrics();
        let m = rx.borrow();
        m.state == openraft::ServerState::Leader && m.current_leader == Some(m.id)
    }

    /// Proposes `actions` as one batch and waits until it is applied here.
    /// Returns the Raft index (the written objects' new version).
    pub async fn propose(&self, actions: Vec<pb::StoreAction>) -> Result<u64, ProposeError> {
        self.check()?;
        let proposal = proposal(actions);
        let started = std::time::Instant::now();
        let res = self.commit(proposal).await;
        observe(&res, started);
        res
    }

    /// Proposes each of `chunks` as its own batch, in order, with up to
    /// [`PIPELINE`] of them in Raft at once (appended, replicated and
    /// fsynced together) instead of one round trip each. Stops at the first
    /// failure; chunks already submitted may still apply. Returns the Raft
    /// index of each, in order.
    pub async fn propose_pipelined(
        &self,
        chunks: impl IntoIterator<Item = Vec<pb::StoreAction>>,
    ) -> Result<Vec<u64>, ProposeError> {
        self.check()?;
        let mut in_flight = std::collections::VecDeque::new();
        let mut indexes = Vec::new();
        for chunk in chunks {
            if in_flight.len() >= PIPELINE
                && let Some((started, rx)) = in_flight.pop_front()
            {
                indexes.push(self.finish(rx, started).await?);
            }
            let started = std::time::Instant::now();
            let rx = self
                .raft
                .client_write_ff(proposal(chunk))
                .await
                .map_err(|e| ProposeError::Raft(e.to_string()))?;
            in_flight.push_back((started, rx));
        }
        while let Some((started, rx)) = in_flight.pop_front() {
            indexes.push(self.finish(rx, started).await?);
        }
        Ok(indexes)
    }

    /// Waits for one pipelined proposal.
    async fn finish(
        &self,
        rx: tokio::sync::oneshot::Receiver<
            openraft::raft::ClientWriteResult<crate::raft::TypeConfig>,
        >,
        started: std::time::Instant,
    ) -> Result<u64, ProposeError> {
        let res = match tokio::time::timeout(self.timeout, rx).await {
            Err(_) => Err(self.timed_out()),
            Ok(Err(_)) => Err(ProposeError::Raft(
                "Raft stopped before answering the proposal".into(),
            )),
            Ok(Ok(r)) => self.outcome(r.map_err(openraft::error::RaftError::APIError)),
        };
        observe(&res, started);
        res
    }

    /// Leader and quorum, checked before proposing: a write without a
    /// majority fails at once instead of waiting out the timeout.
    fn check(&self) -> Result<(), ProposeError> {
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
        Ok(())
    }

    /// A proposal that was not committed in time: for lack of a majority,
    /// or (with a majority answering) because the managers are too slow.
    /// Saying "no quorum: 2 of 3 reachable" for the latter misled.
    fn timed_out(&self) -> ProposeError {
        let (reachable, managers) = self.reachability();
        if reachable * 2 <= managers {
            ProposeError::NoQuorum {
                reachable,
                managers,
            }
        } else {
            ProposeError::Timeout {
                after: self.timeout,
                reachable,
                managers,
            }
        }
    }

    fn outcome(
        &self,
        res: Result<
            openraft::raft::ClientWriteResponse<crate::raft::TypeConfig>,
            openraft::error::RaftError<
                RaftId,
                openraft::error::ClientWriteError<RaftId, openraft::BasicNode>,
            >,
        >,
    ) -> Result<u64, ProposeError> {
        match res {
            Err(e) => match e.forward_to_leader() {
                Some(f) => Err(ProposeError::NotLeader {
                    leader_addr: f.leader_node.as_ref().map(|n| n.addr.clone()),
                }),
                None => Err(ProposeError::Raft(e.to_string())),
            },
            Ok(resp) => match resp.data {
                ApplyResult::Applied { index } => Ok(index),
                ApplyResult::Rejected { reason } => Err(ProposeError::Rejected(reason)),
                ApplyResult::Noop => Ok(resp.log_id.index),
            },
        }
    }

    async fn commit(&self, proposal: Proposal) -> Result<u64, ProposeError> {
        match tokio::time::timeout(self.timeout, self.raft.client_write(proposal)).await {
            Err(_) => Err(self.timed_out()),
            Ok(r) => self.outcome(r),
        }
    }
}
