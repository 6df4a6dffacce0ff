//! Raft consensus for the managers, on openraft.
//!
//! Owns the replicated log (on disk, in redb, fsync'ed on every append),
//! snapshots (files under `<data-root>/raft/snapshots`), and the glue that
//! feeds committed entries to the state machine ([`Fsm`], implemented by
//! the cluster store). It never interprets entries: what a proposal means
//! is the store's business. Network transport between managers is in
//! [`network`]; the gRPC service that receives Raft messages is in
//! [`service`].
// openraft's storage traits fix `StorageError` (224 bytes) as the error
// type; boxing it in our helpers would only add conversions at every call.
#![allow(clippy::result_large_err)]

#[cfg(test)]
mod cluster_tests;
pub mod log_store;
pub mod network;
pub mod service;
pub mod state_machine;

use std::{io::Cursor, time::Duration};

use serde::{Deserialize, Serialize};

/// Raft node ID: random, never reused, mapped to a swarm node ID by the
/// store's Node objects.
pub type RaftId = u64;

openraft::declare_raft_types!(
    /// The types swarm's Raft is instantiated with.
    pub TypeConfig:
        D = Proposal,
        R = ApplyResult,
        NodeId = RaftId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The running Raft handle.
pub type Raft = openraft::Raft<TypeConfig>;
/// What a manager's Raft reports about itself.
pub type RaftMetrics = openraft::RaftMetrics<RaftId, openraft::BasicNode>;

/// One replicated write: an opaque, deterministic payload for the state
/// machine, stamped by the leader so every replica applies the same time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// Leader's wall clock at proposal time, Unix nanoseconds.
    pub timestamp_nanos: u64,
    /// Encoded by the state machine's owner (the store: prost StoreActions).
    #[serde(with = "serde_bytes_compat")]
    pub payload: Vec<u8>,
}

/// What applying a proposal did. Deterministic: every replica gets the same.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApplyResult {
    /// Applied; the index it was applied at (the objects' new version).
    Applied { index: u64 },
    /// Rejected by the state machine (e.g. a version conflict); nothing changed.
    Rejected { reason: String },
    /// A membership or blank entry: nothing for the state machine.
    Noop,
}

/// The replicated state machine: the cluster store implements this.
///
/// `apply` must be deterministic: the same proposals in the same order give
/// the same state and results on every manager.
pub trait Fsm: Send + Sync + 'static {
    fn apply(&self, index: u64, proposal: &Proposal) -> ApplyResult;
    /// A consistent, self-contained image of the state.
    fn snapshot(&self) -> Vec<u8>;
    /// Replaces the whole state with a snapshot's.
    fn restore(&self, data: &[u8]) -> Result<(), String>;
}

/// Log entries one AppendEntries carries at most (openraft's default is
/// 300): entries are store batches of up to 2,000 actions (about 1 MB of
/// tasks), and openraft allows an append one heartbeat interval (150 ms)
/// to be sent, decoded, fsync'ed and answered, or sends it again. At 8
/// entries of 1,000 actions a loaded follower missed that during placement
/// of 100,000 tasks, again and again, until it called an election; 3 of
/// 1,000 held. At 1 entry per append, 64 concurrent writers of small
/// objects committed 630 writes/s instead of about 1,500.
pub const MAX_ENTRIES_PER_APPEND: u64 = 3;

/// Encoded entry bytes one AppendEntries carries at most (one entry
/// always goes, whatever its size): with 10,000 simulated nodes on the same
/// 2 cores, appends of three 1 MB entries missed the 150 ms timeout again
/// and again, the heartbeats queued behind them, and followers called
/// elections. The leader's entries are bounded too
/// (`manager::leader::MAX_PROPOSAL_BYTES`).
pub const MAX_APPEND_BYTES: usize = 1 << 20;

/// Timing and retention of this manager's Raft.
#[derive(Clone, Debug)]
pub struct RaftSettings {
    pub heartbeat: Duration,
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    /// Take a snapshot and compact the log every this many entries
    /// (docker's `--snapshot-interval`, default 10000); 0 leaves snapshots
    /// to the caller (`raft.trigger().snapshot()`).
    pub snapshot_interval: u64,
    /// Old snapshots to keep besides the newest (docker's `--max-snapshots`).
    pub keep_old_snapshots: usize,
}

impl Default for RaftSettings {
    fn default() -> Self {
        // Docker ticks once a second and elects after 10 ticks (about 10 s
        // to notice a dead leader). openraft's followers refuse votes for a
        // lease of election_timeout_max after the last heartbeat, so the
        // first candidate is often refused and the second round wins:
        // failover takes up to about two maximum timeouts, here 2.5 s.
        // openraft also gives every AppendEntries (heartbeat or entries)
        // one heartbeat interval to answer: at 100 ms with up to 300
        // entries of 1,000 actions per append, a follower of a loaded
        // manager (thousands of nodes, a busy 2-core machine) missed it
        // again and again, re-sent entries piled up and elections followed.
        // [`MAX_ENTRIES_PER_APPEND`] bounds an append's work; 150 ms gives
        // it room while failover stays under 3 s (a 250 ms / 1.25-2.5 s
        // setting was steadier still at 1,000 simulated nodes, at the cost
        // of up to 5 s failovers).
        RaftSettings {
            heartbeat: Duration::from_millis(150),
            election_timeout_min: Duration::from_millis(750),
            election_timeout_max: Duration::from_millis(1250),
            snapshot_interval: 10_000,
            keep_old_snapshots: 0,
        }
    }
}

impl RaftSettings {
    pub fn openraft_config(&self, cluster_name: &str) -> Result<openraft::Config, RaftError> {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let cfg = openraft::Config {
            cluster_name: cluster_name.to_string(),
            heartbeat_interval: ms(self.heartbeat),
            election_timeout_min: ms(self.election_timeout_min),
            election_timeout_max: ms(self.election_timeout_max),
            // 0: the owner triggers snapshots itself (the manager follows
            // the cluster's --snapshot-interval, which can change at run time).
            snapshot_policy: if self.snapshot_interval == 0 {
                openraft::SnapshotPolicy::Never
            } else {
                openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_interval)
            },
            // Keep a little log behind the snapshot so a briefly lagging
            // follower catches up by log, not by a full snapshot.
            max_in_snapshot_log_to_keep: if self.snapshot_interval == 0 {
                500
            } else {
                self.snapshot_interval.min(500)
            },
            install_snapshot_timeout: 10_000,
            max_payload_entries: MAX_ENTRIES_PER_APPEND,
            ..Default::default()
        };
        cfg.validate().map_err(|e| RaftError::Config(e.to_string()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RaftError {
    #[error("invalid Raft settings: {0}")]
    Config(String),
    #[error("Raft storage at {path}: {reason}")]
    Storage { path: String, reason: String },
    #[error("starting Raft failed: {0}")]
    Start(String),
}

/// Vec<u8> as serde bytes (compact in postcard) without another crate.
mod serde_bytes_compat {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::with_capacity(a.size_hint().unwrap_or(0));
                while let Some(b) = a.next_element()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        // Deserializer::deserialize_byte_buf lets each format pick its
        // representation; Vec<u8> is the owned form.
        d.deserialize_byte_buf(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_are_bounded_and_elections_wait_several_heartbeats() {
        let s = RaftSettings::default();
        let cfg = s.openraft_config("c").unwrap();
        assert_eq!(cfg.max_payload_entries, MAX_ENTRIES_PER_APPEND);
        // openraft's AppendEntries timeout is the heartbeat interval.
        assert!(cfg.heartbeat_interval >= 150);
        assert!(cfg.election_timeout_min >= 5 * cfg.heartbeat_interval);
        // Two rounds of the longest timeout: failover within 3 s.
        assert!(2 * cfg.election_timeout_max < 3000);
    }

    #[test]
    fn proposals_round_trip_compactly() {
        let p = Proposal {
            timestamp_nanos: 42,
            payload: vec![7; 1000],
        };
        let bytes = postcard::to_allocvec(&p).unwrap();
        assert!(
            bytes.len() < 1010,
            "bytes must not be a sequence of numbers: {}",
            bytes.len()
        );
        assert_eq!(postcard::from_bytes::<Proposal>(&bytes).unwrap(), p);
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<Proposal>(&json).unwrap(), p);
    }

    #[test]
    fn default_settings_are_valid() {
        RaftSettings::default().openraft_config("c").unwrap();
    }
}

/// The storage handles of a running Raft, kept for metrics and inspection.
#[derive(Clone, Debug)]
pub struct RaftStorage {
    pub log: log_store::LogStore,
    pub state_machine: state_machine::StateMachine,
}

/// Opens this manager's Raft storage under `dir` (log in `dir/log.redb`,
/// snapshots in `dir/snapshots`), restores the newest snapshot into `fsm`,
/// and starts Raft. A fresh directory starts an empty, uninitialised node:
/// call `initialize` (new cluster) or wait to be added (joining manager).
/// Raft's own runtime: two threads that run only openraft's tasks (core
/// timers, replication, applying entries) and the manager-to-manager
/// channels they open. On the daemon's shared runtime, heartbeats waited
/// in one queue with thousands of node sessions, TLS handshakes and the
/// leader's passes: at 10,000 simulated nodes the leader missed heartbeats
/// for seconds and followers called elections. OS threads get their share
/// of the CPU whatever the other runtime's queue holds. One per process,
/// for the process's life (a manager that stops and starts again reuses
/// it).
fn runtime() -> Result<&'static tokio::runtime::Runtime, RaftError> {
    static RUNTIME: std::sync::OnceLock<Result<tokio::runtime::Runtime, String>> =
        std::sync::OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("swarm-raft")
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| RaftError::Start(format!("cannot start Raft's runtime: {e}")))
}

/// Starts this manager's Raft node on Raft's own runtime ([`runtime`]).
/// `channels` must be used by Raft alone: a channel's connection task runs
/// on the runtime that first opened it.
pub async fn start(
    id: RaftId,
    dir: &std::path::Path,
    settings: &RaftSettings,
    cluster_name: &str,
    fsm: std::sync::Arc<dyn Fsm>,
    channels: std::sync::Arc<dyn network::ChannelProvider>,
    contacts: network::Contacts,
) -> Result<(Raft, RaftStorage), RaftError> {
    let config = std::sync::Arc::new(settings.openraft_config(cluster_name)?);
    let log = log_store::LogStore::open(dir)?;
    let sm = state_machine::StateMachine::open(
        fsm,
        &dir.join("snapshots"),
        settings.keep_old_snapshots,
    )?;
    let network = network::Network::new(channels, contacts);
    let (log2, sm2) = (log.clone(), sm.clone());
    // Raft::new spawns the core, replication and state machine tasks on
    // the runtime it runs on: they then live on Raft's own threads.
    let raft = runtime()?
        .spawn(async move { Raft::new(id, config, network, log2, sm2).await })
        .await
        .map_err(|e| RaftError::Start(e.to_string()))?
        .map_err(|e| RaftError::Start(e.to_string()))?;
    Ok((
        raft,
        RaftStorage {
            log,
            state_machine: sm,
        },
    ))
}
