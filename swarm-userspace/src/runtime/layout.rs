//! What a container leaves on disk, under `<data-root>/containers/<id>/`:
//!
//! ```text
//! container.json   Record: what the agent must know after a restart
//! bundle/          OCI bundle: config.json, hostname, hosts, resolv.conf
//! state/<id>/      libcontainer's state (state.json, notify socket)
//! shim.json        ShimRecord: the shim's and the container's pid + start time
//! started.json     when the container was started
//! exit.json        ExitRecord, written by the shim when the process ends
//! shim.log         the shim's own diagnostics
//! <id>-json.log    the container's output (rotated: .1, .2, ...)
//! ```
//!
//! Every record is written atomically (temp file + rename), so a reader
//! after a crash sees either the old file or the new one.
use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use super::reaper::ProcId;
use crate::executor::logs::LogOptions;
use crate::executor::{ExitStatus, HealthCheck, Signal};

/// Paths of one container.
#[derive(Clone, Debug)]
pub struct Paths {
    pub id: String,
    pub dir: PathBuf,
}

impl Paths {
    pub fn new(root: &Path, id: &str) -> Paths {
        Paths {
            id: id.to_string(),
            dir: root.join(id),
        }
    }
    pub fn record(&self) -> PathBuf {
        self.dir.join("container.json")
    }
    pub fn bundle(&self) -> PathBuf {
        self.dir.join("bundle")
    }
    /// libcontainer's root; the container's state is `<state_root>/<id>`.
    pub fn state_root(&self) -> PathBuf {
        self.dir.join("state")
    }
    pub fn libcontainer_state(&self) -> PathBuf {
        self.state_root().join(&self.id).join("state.json")
    }
    pub fn shim(&self) -> PathBuf {
        self.dir.join("shim.json")
    }
    pub fn started(&self) -> PathBuf {
        self.dir.join("started.json")
    }
    pub fn exit(&self) -> PathBuf {
        self.dir.join("exit.json")
    }
    pub fn shim_log(&self) -> PathBuf {
        self.dir.join("shim.log")
    }
    pub fn log(&self) -> PathBuf {
        self.dir.join(format!("{}-json.log", self.id))
    }
}

/// What the agent keeps about a container, written at prepare.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub created_at: SystemTime,
    pub labels: BTreeMap<String, String>,
    pub stop_signal: Signal,
    pub stop_grace: Duration,
    pub healthcheck: Option<HealthCheck>,
    /// A new network namespace whose loopback the shim brings up.
    pub isolated_network: bool,
    pub log: LogOptions,
    /// Anonymous volumes (host directories) removed with the container.
    pub anonymous_volumes: Vec<PathBuf>,
}

/// Written by the shim once the container exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShimRecord {
    pub shim: ProcId,
    pub init: ProcId,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartedRecord {
    pub at: SystemTime,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    pub status: ExitStatus,
    pub at: SystemTime,
}

/// Writes `value` as JSON to `path` atomically. Not fsynced: containers do
/// not survive a reboot, and the rename is atomic across process crashes.
pub fn write_json(path: &Path, value: &impl Serialize) -> io::Result<()> {
    let json = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = fs::File::create(&tmp)?;
    f.write_all(&json)?;
    fs::rename(&tmp, path)
}

/// Reads a JSON record; `None` if the file does not exist.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> io::Result<Option<T>> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The `status` field of libcontainer's state.json (`created`, `running`,
/// `stopped`, ...), if the file exists.
pub fn libcontainer_status(paths: &Paths) -> Option<String> {
    #[derive(Deserialize)]
    struct State {
        status: String,
    }
    read_json::<State>(&paths.libcontainer_state())
        .ok()
        .flatten()
        .map(|s| s.status.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let p = Paths::new(dir.path(), "c1");
        fs::create_dir_all(&p.dir).unwrap();
        assert_eq!(read_json::<ExitRecord>(&p.exit()).unwrap(), None);
        let rec = ExitRecord {
            status: ExitStatus::code(3),
            at: SystemTime::UNIX_EPOCH,
        };
        write_json(&p.exit(), &rec).unwrap();
        assert_eq!(read_json::<ExitRecord>(&p.exit()).unwrap(), Some(rec));
        assert!(!dir.path().join("c1/exit.json.tmp").exists());
        fs::write(p.exit(), b"{torn").unwrap();
        assert!(read_json::<ExitRecord>(&p.exit()).is_err());
        assert_eq!(p.log(), dir.path().join("c1/c1-json.log"));
        assert_eq!(
            p.libcontainer_state(),
            dir.path().join("c1/state/c1/state.json")
        );
    }
}
