//! The Raft log and vote, persisted in redb under `<data-root>/raft/`.
//!
//! Every append and vote is committed with fsync before openraft is told it
//! is durable: a manager that acknowledged an entry still has it after a
//! power cut. Entries are encoded with postcard. This module stores and
//! returns entries; it never interprets them.
use std::{
    fmt::Debug,
    ops::{Bound, RangeBounds},
    path::Path,
    sync::Arc,
};

use openraft::{
    Entry, LogId, LogState, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote,
    storage::{LogFlushed, RaftLogStorage},
};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::{RaftError, RaftId, TypeConfig};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_PURGED: &str = "last_purged";

type SErr = StorageError<RaftId>;

fn read_err(e: impl std::error::Error + 'static) -> SErr {
    StorageIOError::read_logs(&e).into()
}
fn write_err(e: impl std::error::Error + 'static) -> SErr {
    StorageIOError::write_logs(&e).into()
}

/// Log storage; cheap to clone (readers share the database).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogStore")
    }
}

impl LogStore {
    /// Opens (or creates) the log database in `dir`.
    pub fn open(dir: &Path) -> Result<Self, RaftError> {
        let storage_err = |reason: String| RaftError::Storage {
            path: dir.display().to_string(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|e| storage_err(e.to_string()))?;
        let db = Database::create(dir.join("log.redb")).map_err(|e| storage_err(e.to_string()))?;
        let txn = db.begin_write().map_err(|e| storage_err(e.to_string()))?;
        {
            txn.open_table(LOG)
                .map_err(|e| storage_err(e.to_string()))?;
            txn.open_table(META)
                .map_err(|e| storage_err(e.to_string()))?;
        }
        txn.commit().map_err(|e| storage_err(e.to_string()))?;
        Ok(LogStore { db: Arc::new(db) })
    }

    fn get_meta<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, SErr> {
        let txn = self.db.begin_read().map_err(read_err)?;
        let table = txn.open_table(META).map_err(read_err)?;
        let Some(v) = table.get(key).map_err(read_err)? else {
            return Ok(None);
        };
        postcard::from_bytes(v.value()).map(Some).map_err(read_err)
    }

    fn put_meta<T: serde::Serialize>(&self, key: &str, value: &T) -> Result<(), SErr> {
        let bytes = postcard::to_allocvec(value).map_err(write_err)?;
        let txn = self.db.begin_write().map_err(write_err)?;
        {
            let mut table = txn.open_table(META).map_err(write_err)?;
            table.insert(key, bytes.as_slice()).map_err(write_err)?;
        }
        txn.commit().map_err(write_err)
    }

    /// Number of entries currently in the log (for metrics).
    pub fn len(&self) -> Result<u64, SErr> {
        let txn = self.db.begin_read().map_err(read_err)?;
        let table = txn.open_table(LOG).map_err(read_err)?;
        table.len().map_err(read_err)
    }

    pub fn is_empty(&self) -> Result<bool, SErr> {
        Ok(self.len()? == 0)
    }

    /// The entries in `bounds`, stopping before the one that would take
    /// their encoded size past `max_bytes` (the first always comes).
    fn read_entries(
        &self,
        bounds: (Bound<u64>, Bound<u64>),
        max_bytes: usize,
    ) -> Result<Vec<Entry<TypeConfig>>, SErr> {
        let txn = self.db.begin_read().map_err(read_err)?;
        let table = txn.open_table(LOG).map_err(read_err)?;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for item in table.range::<u64>(bounds).map_err(read_err)? {
            let (_, v) = item.map_err(read_err)?;
            let v = v.value();
            bytes = bytes.saturating_add(v.len());
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push(postcard::from_bytes(v).map_err(read_err)?);
        }
        Ok(out)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, SErr> {
        let bounds = (range.start_bound().cloned(), range.end_bound().cloned());
        self.read_entries(bounds, usize::MAX)
    }

    /// What one AppendEntries carries: entries from `start` until they
    /// reach [`MAX_APPEND_BYTES`](super::MAX_APPEND_BYTES) (always at least
    /// one); openraft also caps the count.
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry<TypeConfig>>, SErr> {
        self.read_entries(
            (Bound::Included(start), Bound::Excluded(end)),
            super::MAX_APPEND_BYTES,
        )
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, SErr> {
        let last_purged: Option<LogId<RaftId>> = self.get_meta(KEY_PURGED)?;
        let last = {
            let txn = self.db.begin_read().map_err(read_err)?;
            let table = txn.open_table(LOG).map_err(read_err)?;
            match table.last().map_err(read_err)? {
                Some((_, v)) => {
                    let e: Entry<TypeConfig> = postcard::from_bytes(v.value()).map_err(read_err)?;
                    Some(e.log_id)
                }
                None => None,
            }
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last.or(last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<RaftId>) -> Result<(), SErr> {
        self.put_meta(KEY_VOTE, vote)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<RaftId>>, SErr> {
        self.get_meta(KEY_VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId<RaftId>>) -> Result<(), SErr> {
        self.put_meta(KEY_COMMITTED, &committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<RaftId>>, SErr> {
        Ok(self
            .get_meta::<Option<LogId<RaftId>>>(KEY_COMMITTED)?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), SErr>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut encoded = Vec::new();
        for e in entries {
            encoded.push((
                e.log_id.index,
                postcard::to_allocvec(&e).map_err(write_err)?,
            ));
        }
        let db = self.db.clone();
        // The commit fsyncs; keep it off the async workers.
        let res = tokio::task::spawn_blocking(move || -> Result<(), redb::Error> {
            let txn = db.begin_write()?;
            {
                let mut table = txn.open_table(LOG)?;
                for (idx, bytes) in &encoded {
                    table.insert(*idx, bytes.as_slice())?;
                }
            }
            txn.commit()?;
            Ok(())
        })
        .await;
        let io = match res {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(std::io::Error::other(e.to_string())),
            Err(e) => Err(std::io::Error::other(e.to_string())),
        };
        let failed = io
            .as_ref()
            .err()
            .map(|e| std::io::Error::new(e.kind(), e.to_string()));
        callback.log_io_completed(io);
        match failed {
            Some(e) => Err(write_err(e)),
            None => Ok(()),
        }
    }

    async fn truncate(&mut self, log_id: LogId<RaftId>) -> Result<(), SErr> {
        let txn = self.db.begin_write().map_err(write_err)?;
        {
            let mut table = txn.open_table(LOG).map_err(write_err)?;
            table
                .retain_in(log_id.index.., |_, _| false)
                .map_err(write_err)?;
        }
        txn.commit().map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId<RaftId>) -> Result<(), SErr> {
        let bytes = postcard::to_allocvec(&log_id).map_err(write_err)?;
        let txn = self.db.begin_write().map_err(write_err)?;
        {
            let mut meta = txn.open_table(META).map_err(write_err)?;
            meta.insert(KEY_PURGED, bytes.as_slice())
                .map_err(write_err)?;
            let mut table = txn.open_table(LOG).map_err(write_err)?;
            table
                .retain_in(..=log_id.index, |_, _| false)
                .map_err(write_err)?;
        }
        txn.commit().map_err(write_err)
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;
    use crate::raft::{MAX_APPEND_BYTES, Proposal};

    /// A log holding one entry of `size` payload bytes per element.
    fn log_of(sizes: &[usize]) -> (tempfile::TempDir, LogStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(dir.path()).unwrap();
        let txn = store.db.begin_write().unwrap();
        {
            let mut table = txn.open_table(LOG).unwrap();
            for (i, size) in sizes.iter().enumerate() {
                let index = i as u64 + 1;
                let e: Entry<TypeConfig> = Entry {
                    log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
                    payload: EntryPayload::Normal(Proposal {
                        timestamp_nanos: 0,
                        payload: vec![7; *size],
                    }),
                };
                table
                    .insert(index, postcard::to_allocvec(&e).unwrap().as_slice())
                    .unwrap();
            }
        }
        txn.commit().unwrap();
        (dir, store)
    }

    fn indexes(v: &[Entry<TypeConfig>]) -> Vec<u64> {
        v.iter().map(|e| e.log_id.index).collect()
    }

    #[tokio::test]
    async fn an_append_stops_at_the_byte_bound_but_carries_at_least_one_entry() {
        let third = MAX_APPEND_BYTES / 3;
        let (_d, mut log) = log_of(&[third, third, third, third, 10, 2 * MAX_APPEND_BYTES, 10]);
        // Three thirds and their framing pass the bound: two go.
        assert_eq!(
            indexes(&log.limited_get_log_entries(1, 8).await.unwrap()),
            [1, 2]
        );
        assert_eq!(
            indexes(&log.limited_get_log_entries(3, 8).await.unwrap()),
            [3, 4, 5]
        );
        // An entry bigger than the bound goes alone.
        assert_eq!(
            indexes(&log.limited_get_log_entries(6, 8).await.unwrap()),
            [6]
        );
        // Small entries all go, up to the end asked for.
        assert_eq!(
            indexes(&log.limited_get_log_entries(7, 8).await.unwrap()),
            [7]
        );
        assert_eq!(
            indexes(&log.limited_get_log_entries(1, 2).await.unwrap()),
            [1]
        );
    }
}
