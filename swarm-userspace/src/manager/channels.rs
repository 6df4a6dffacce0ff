//! Mutual-TLS gRPC channels to other managers, one per address, created
//! lazily and reused (Raft, forwarding, agents all share them).
use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
    time::Duration,
};

use tonic::transport::Channel;

use crate::{
    ca::{self, ClientTls, RootCert, TlsIdentity},
    raft::network::ChannelProvider,
};

pub struct MtlsChannels {
    tls: ClientTls,
    cache: Mutex<HashMap<String, Channel>>,
}

impl std::fmt::Debug for MtlsChannels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MtlsChannels")
    }
}

/// Connect (TCP and TLS handshake) limit between managers: a manager that
/// does not answer within it is treated as unreachable.
pub const MANAGER_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Connect limit for a node's agent. After a failover, every node's
/// handshake lands on the new leader within about one heartbeat period;
/// under [`MANAGER_CONNECT_TIMEOUT`] the ones queued longest gave up,
/// the leader's work on them was lost, and they came back to queue again.
/// A manager that is gone costs an agent this much only when it comes
/// round again, since the agent never retries the manager it just lost
/// first.
pub const AGENT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl MtlsChannels {
    /// Channels for a manager's own calls (Raft, forwarding).
    pub fn new(root: &RootCert, identity: &TlsIdentity) -> Result<Self, ca::TlsError> {
        Self::with_connect_timeout(root, identity, MANAGER_CONNECT_TIMEOUT)
    }

    /// Channels for a node's agent (sessions, log publishing).
    pub fn for_agent(root: &RootCert, identity: &TlsIdentity) -> Result<Self, ca::TlsError> {
        Self::with_connect_timeout(root, identity, AGENT_CONNECT_TIMEOUT)
    }

    fn with_connect_timeout(
        root: &RootCert,
        identity: &TlsIdentity,
        timeout: Duration,
    ) -> Result<Self, ca::TlsError> {
        Ok(MtlsChannels {
            tls: ClientTls::new(root, Some(identity))?.with_connect_timeout(timeout),
            cache: Mutex::new(HashMap::new()),
        })
    }
}

impl ChannelProvider for MtlsChannels {
    fn channel(&self, addr: &str) -> Result<Channel, String> {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = cache.get(addr) {
            return Ok(c.clone());
        }
        let sock: std::net::SocketAddr = addr
            .parse()
            .map_err(|e| format!("bad manager address {addr:?}: {e}"))?;
        let c = ca::connect_lazy(sock, self.tls.clone()).map_err(|e| e.to_string())?;
        cache.insert(addr.to_string(), c.clone());
        Ok(c)
    }
}
