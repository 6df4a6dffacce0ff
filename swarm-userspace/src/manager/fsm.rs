//! The cluster store as Raft's state machine: committed entries carry
//! prost-encoded `StoreBatch`es, applied with `MemoryStore::apply`.
use prost::Message;
use swarm_proto::v1 as pb;

use crate::{
    raft::{ApplyResult, Fsm, Proposal},
    store::MemoryStore,
};

/// Wraps the store for Raft. Rejections are deterministic (every manager
/// rejects the same batch the same way), so they are results, not errors.
#[derive(Clone, Debug)]
pub struct StoreFsm(pub MemoryStore);

impl Fsm for StoreFsm {
    fn apply(&self, index: u64, proposal: &Proposal) -> ApplyResult {
        let batch = match pb::StoreBatch::decode(proposal.payload.as_slice()) {
            Ok(b) => b,
            Err(e) => {
                return ApplyResult::Rejected {
                    reason: format!("undecodable store batch: {e}"),
                };
            }
        };
        let started = std::time::Instant::now();
        let res = self.0.apply(index, batch);
        crate::metrics::metrics()
            .store_write_tx_latency
            .observe(started.elapsed().as_secs_f64());
        match res {
            Ok(_) => ApplyResult::Applied { index },
            Err(e) => ApplyResult::Rejected {
                reason: e.to_string(),
            },
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        self.0.snapshot_bytes()
    }

    fn restore(&self, data: &[u8]) -> Result<(), String> {
        self.0.restore_bytes(data).map_err(|e| e.to_string())
    }
}
