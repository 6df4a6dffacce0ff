//! What a node remembers about its swarm between restarts:
//! `<data-root>/swarm/state.json` (IDs, role, addresses, known managers).
//! Certificates live beside it in `<data-root>/swarm/certificates` (see
//! `ca::store`), the Raft log in `<data-root>/swarm/raft`.
//!
//! Written atomically (temp file, fsync, rename). Holds no secrets.
use std::{
    io::Write,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is damaged ({reason}); move it away and rejoin the swarm")]
    Damaged { path: PathBuf, reason: String },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeRole {
    Manager,
    Worker,
}

/// A joined node's identity and where its managers are.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    pub node_id: String,
    pub cluster_id: String,
    pub role: NodeRole,
    /// Raft ID while this node is a manager.
    pub raft_id: Option<u64>,
    /// Where this node listens for cluster traffic (managers only).
    pub listen_addr: String,
    /// Where other nodes reach this node.
    pub advertise_addr: String,
    /// Advertise addresses of the managers, most recently seen first.
    pub managers: Vec<String>,
}

/// The swarm directory inside a data root.
#[derive(Clone, Debug)]
pub struct SwarmDir(PathBuf);

impl SwarmDir {
    pub fn new(data_root: &Path) -> Self {
        SwarmDir(data_root.join("swarm"))
    }
    pub fn root(&self) -> &Path {
        &self.0
    }
    pub fn state_file(&self) -> PathBuf {
        self.0.join("state.json")
    }
    pub fn certificates(&self) -> PathBuf {
        self.0.join("certificates")
    }
    pub fn raft(&self) -> PathBuf {
        self.0.join("raft")
    }

    pub fn load(&self) -> Result<Option<NodeState>, StateError> {
        let path = self.state_file();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StateError::Read { path, source }),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StateError::Damaged {
                path,
                reason: e.to_string(),
            })
    }

    pub fn save(&self, state: &NodeState) -> Result<(), StateError> {
        let path = self.state_file();
        let werr = |source| StateError::Write {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&self.0).map_err(werr)?;
        let tmp = self.0.join(".state.json.tmp");
        let bytes = serde_json::to_vec_pretty(state).map_err(|e| werr(std::io::Error::other(e)))?;
        let mut f = std::fs::File::create(&tmp).map_err(werr)?;
        f.write_all(&bytes).map_err(werr)?;
        f.sync_all().map_err(werr)?;
        std::fs::rename(&tmp, &path).map_err(werr)?;
        if let Ok(d) = std::fs::File::open(&self.0) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Forgets the swarm: state, certificates and Raft data.
    pub fn wipe(&self) -> Result<(), StateError> {
        match std::fs::remove_dir_all(&self.0) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StateError::Write {
                path: self.0.clone(),
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_wipes() {
        let d = tempfile::tempdir().unwrap();
        let dir = SwarmDir::new(d.path());
        assert_eq!(dir.load().unwrap(), None);
        let s = NodeState {
            node_id: "n".into(),
            cluster_id: "c".into(),
            role: NodeRole::Manager,
            raft_id: Some(7),
            listen_addr: "0.0.0.0:2377".into(),
            advertise_addr: "198.51.100.11:2377".into(),
            managers: vec!["198.51.100.11:2377".into()],
        };
        dir.save(&s).unwrap();
        assert_eq!(dir.load().unwrap(), Some(s));
        std::fs::write(dir.state_file(), b"{").unwrap();
        assert!(matches!(dir.load(), Err(StateError::Damaged { .. })));
        dir.wipe().unwrap();
        assert_eq!(dir.load().unwrap(), None);
    }
}
