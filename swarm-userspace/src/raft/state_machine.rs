//! Feeds committed entries to the [`Fsm`] and keeps its snapshots on disk.
//!
//! The state machine itself lives in memory (the store); what this module
//! persists is snapshots, written atomically as
//! `<dir>/snapshot-<index>-<id>.bin`, so a restarting manager restores the
//! newest one and replays only the log after it. Never decides what an
//! entry means.
use std::{
    io::{Cursor, Write},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use openraft::{
    BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, Snapshot,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership, storage::RaftStateMachine,
};
use serde::{Deserialize, Serialize};

use super::{ApplyResult, Fsm, RaftError, RaftId, TypeConfig};

type SErr = StorageError<RaftId>;
type Meta = SnapshotMeta<RaftId, BasicNode>;

#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    meta: Meta,
    #[serde(with = "super::serde_bytes_compat")]
    data: Vec<u8>,
}

#[derive(Default)]
struct Applied {
    last_applied: Option<LogId<RaftId>>,
    membership: StoredMembership<RaftId, BasicNode>,
    /// Entries applied since start: names snapshots uniquely.
    snapshot_seq: u64,
}

/// openraft's state machine: the [`Fsm`] plus what Raft needs around it.
#[derive(Clone)]
pub struct StateMachine {
    fsm: Arc<dyn Fsm>,
    applied: Arc<Mutex<Applied>>,
    dir: PathBuf,
    /// Old snapshots kept besides the newest; the manager follows the
    /// cluster's `--max-snapshots` through [`StateMachine::set_keep_old`].
    keep_old: Arc<std::sync::atomic::AtomicUsize>,
}

impl std::fmt::Debug for StateMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMachine")
            .field("dir", &self.dir)
            .finish()
    }
}

fn io_err(e: impl std::error::Error + 'static) -> SErr {
    StorageIOError::write_snapshot(None, &e).into()
}

fn lock_err() -> SErr {
    io_err(std::io::Error::other("state machine lock poisoned"))
}

impl StateMachine {
    /// Opens the snapshot directory and restores the newest snapshot, if
    /// any, into `fsm`.
    pub fn open(fsm: Arc<dyn Fsm>, dir: &Path, keep_old: usize) -> Result<Self, RaftError> {
        let storage_err = |reason: String| RaftError::Storage {
            path: dir.display().to_string(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|e| storage_err(e.to_string()))?;
        let sm = StateMachine {
            fsm,
            applied: Arc::new(Mutex::new(Applied::default())),
            dir: dir.to_path_buf(),
            keep_old: Arc::new(std::sync::atomic::AtomicUsize::new(keep_old)),
        };
        if let Some(path) = sm
            .newest_snapshot_path()
            .map_err(|e| storage_err(e.to_string()))?
        {
            let file = read_snapshot(&path)
                .map_err(|e| storage_err(format!("{}: {e}", path.display())))?;
            sm.fsm
                .restore(&file.data)
                .map_err(|e| storage_err(format!("restoring {}: {e}", path.display())))?;
            let mut a = sm
                .applied
                .lock()
                .map_err(|_| storage_err("poisoned".into()))?;
            a.last_applied = file.meta.last_log_id;
            a.membership = file.meta.last_membership.clone();
            tracing::info!(snapshot = %path.display(), "state restored from snapshot");
        }
        Ok(sm)
    }

    /// Snapshot files, oldest first (by index in the name, then mtime).
    fn snapshot_paths(&self) -> std::io::Result<Vec<PathBuf>> {
        let mut v: Vec<(u64, PathBuf)> = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let p = entry?.path();
            let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let Some(rest) = name
                .strip_prefix("snapshot-")
                .and_then(|r| r.strip_suffix(".bin"))
            else {
                continue;
            };
            let idx = rest
                .split('-')
                .next()
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(0);
            v.push((idx, p));
        }
        v.sort();
        Ok(v.into_iter().map(|(_, p)| p).collect())
    }

    fn newest_snapshot_path(&self) -> std::io::Result<Option<PathBuf>> {
        Ok(self.snapshot_paths()?.pop())
    }

    fn persist(&self, file: &SnapshotFile) -> Result<(), SErr> {
        let idx = file.meta.last_log_id.map_or(0, |l| l.index);
        let name = format!("snapshot-{idx:020}-{}.bin", file.meta.snapshot_id);
        let path = self.dir.join(&name);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let bytes = postcard::to_allocvec(file).map_err(io_err)?;
        {
            let mut f = std::fs::File::create(&tmp).map_err(io_err)?;
            f.write_all(&bytes).map_err(io_err)?;
            f.sync_all().map_err(io_err)?;
        }
        std::fs::rename(&tmp, &path).map_err(io_err)?;
        if let Ok(d) = std::fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        // Retention: the newest plus `keep_old`.
        if let Ok(mut all) = self.snapshot_paths() {
            let keep = self.keep_old.load(std::sync::atomic::Ordering::Relaxed) + 1;
            if all.len() > keep {
                let remove = all.len() - keep;
                for p in all.drain(..remove) {
                    let _ = std::fs::remove_file(p);
                }
            }
        }
        Ok(())
    }

    pub fn set_keep_old(&self, n: usize) {
        self.keep_old.store(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// Number of snapshot files on disk (for metrics).
    pub fn snapshot_count(&self) -> usize {
        self.snapshot_paths().map_or(0, |v| v.len())
    }
}

fn read_snapshot(path: &Path) -> Result<SnapshotFile, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    postcard::from_bytes(&bytes).map_err(|e| e.to_string())
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, SErr> {
        // Capture state and position together: openraft does not apply
        // while the state machine task runs this.
        let (data, meta) = {
            let mut a = self.applied.lock().map_err(|_| lock_err())?;
            a.snapshot_seq += 1;
            let data = self.fsm.snapshot();
            let idx = a.last_applied.map_or(0, |l| l.index);
            let meta = Meta {
                last_log_id: a.last_applied,
                last_membership: a.membership.clone(),
                snapshot_id: format!("{idx}-{}", a.snapshot_seq),
            };
            (data, meta)
        };
        let file = SnapshotFile { meta, data };
        let this = self.clone();
        let file = tokio::task::spawn_blocking(move || this.persist(&file).map(|()| file))
            .await
            .map_err(io_err)??;
        tracing::info!(snapshot = %file.meta.snapshot_id, bytes = file.data.len(), "Raft snapshot taken");
        Ok(Snapshot {
            meta: file.meta,
            snapshot: Box::new(Cursor::new(file.data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<RaftId>>, StoredMembership<RaftId, BasicNode>), SErr> {
        let a = self.applied.lock().map_err(|_| lock_err())?;
        Ok((a.last_applied, a.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<ApplyResult>, SErr>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut out = Vec::new();
        let mut a = self.applied.lock().map_err(|_| lock_err())?;
        for e in entries {
            a.last_applied = Some(e.log_id);
            let r = match e.payload {
                EntryPayload::Blank => ApplyResult::Noop,
                EntryPayload::Normal(ref p) => {
                    let started = std::time::Instant::now();
                    let r = self.fsm.apply(e.log_id.index, p);
                    crate::metrics::metrics()
                        .raft_apply_latency
                        .observe(started.elapsed().as_secs_f64());
                    r
                }
                EntryPayload::Membership(m) => {
                    a.membership = StoredMembership::new(Some(e.log_id), m);
                    ApplyResult::Noop
                }
            };
            out.push(r);
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, SErr> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), SErr> {
        let data = snapshot.into_inner();
        self.fsm
            .restore(&data)
            .map_err(|e| io_err(std::io::Error::other(format!("installing snapshot: {e}"))))?;
        {
            let mut a = self.applied.lock().map_err(|_| lock_err())?;
            a.last_applied = meta.last_log_id;
            a.membership = meta.last_membership.clone();
        }
        let file = SnapshotFile {
            meta: meta.clone(),
            data,
        };
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.persist(&file))
            .await
            .map_err(io_err)??;
        tracing::info!(snapshot = %meta.snapshot_id, "installed snapshot from the leader");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, SErr> {
        let Some(path) = self.newest_snapshot_path().map_err(io_err)? else {
            return Ok(None);
        };
        let file = read_snapshot(&path).map_err(|e| io_err(std::io::Error::other(e)))?;
        Ok(Some(Snapshot {
            meta: file.meta,
            snapshot: Box::new(Cursor::new(file.data)),
        }))
    }
}
