//! Mutual-TLS gRPC channels to other managers, one per address, created
//! lazily and reused (Raft, forwarding, agents all share them).
use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
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

impl MtlsChannels {
    pub fn new(root: &RootCert, identity: &TlsIdentity) -> Result<Self, ca::TlsError> {
        Ok(MtlsChannels {
            tls: ClientTls::new(root, Some(identity))?
                .with_connect_timeout(std::time::Duration::from_secs(2)),
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
