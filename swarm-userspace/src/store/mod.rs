//! The cluster store: every cluster object, in memory on every manager, as
//! the Raft state machine (swarmkit's `manager/state/store`).
//!
//! Owns: the tables of [`pb::Cluster`], [`pb::Node`], [`pb::Service`],
//! [`pb::Task`], [`pb::Network`], [`pb::Secret`] and [`pb::Config`]; the
//! write rules; snapshots; and watch streams for control loops.
//!
//! Must never: read a clock, a random source or anything local while
//! applying a batch. [`MemoryStore::apply`] is a pure function of the state
//! and the committed batch, so every manager that applies the same batches
//! in the same order holds identical objects with identical versions, and
//! fails the same batches with the same errors. (Only the leader's
//! [`new_id`] and [`new_batch`] use randomness and time, before proposing.)
//!
//! Writes: the leader builds a batch with [`MemoryStore::prepare`], proposes
//! it through Raft, and every manager (the leader included) applies the
//! committed entry with [`MemoryStore::apply`]. The checks at apply time are
//! authoritative: a batch prepared against an older view can still fail, for
//! example with [`StoreError::OutOfSequence`].
//!
//! Reads: [`MemoryStore::view`] is an O(1) consistent snapshot; readers and
//! writers never wait for each other beyond swapping a pointer.

pub mod defaults;
mod error;
mod id;
mod key;
mod object;
mod read;
mod tables;
mod tx;
pub mod watch;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) mod testutil;

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use prost::Message;
use swarm_proto::v1 as pb;
use tokio::sync::broadcast;

pub use error::StoreError;
pub use id::{ID_LEN, new_id};
pub use object::{Object, ObjectKind, StoreObject};
pub use read::ReadTx;
pub use tx::WriteTx;
pub use watch::{Event, EventKind, ResyncReason, WatchItem, WatchStream};

pub use tables::awaits_node;
use tables::{Stamp, Tables};
use watch::Notice;

/// Committed batches a subscriber may fall behind before it must resync.
pub const DEFAULT_WATCH_CAPACITY: usize = 1024;

/// The in-memory store. Cloning it gives another handle to the same store.
#[derive(Clone)]
pub struct MemoryStore {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("MemoryStore").field(&self.view()).finish()
    }
}

struct Shared {
    /// Serialises writers (apply, restore) for their whole run.
    write: Mutex<()>,
    /// The published state. Held only to swap or clone the pointer and to
    /// publish or subscribe, so a view, its watch position and a commit are
    /// always ordered.
    current: Mutex<Arc<Tables>>,
    notices: broadcast::Sender<Arc<Notice>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while these locks are held; if something ever did, the
    // data (a pointer or nothing) is still consistent.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn subscribe(&self) -> (ReadTx, broadcast::Receiver<Arc<Notice>>) {
        let current = lock(&self.current);
        let rx = self.notices.subscribe();
        (
            ReadTx {
                tables: Arc::clone(&current),
            },
            rx,
        )
    }

    fn publish(&self, tables: Arc<Tables>, notice: Notice) {
        let mut current = lock(&self.current);
        let previous = std::mem::replace(&mut *current, tables);
        // No subscribers is fine: nobody is watching.
        let _ = self.notices.send(Arc::new(notice));
        drop(current);
        // Freeing what only the previous version used can take a while;
        // readers need not wait for it.
        drop(previous);
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store at version 0.
    #[must_use]
    pub fn new() -> Self {
        Self::with_watch_capacity(DEFAULT_WATCH_CAPACITY)
    }

    /// An empty store whose subscribers may fall `capacity` committed
    /// batches behind before they must resync (at least 1).
    #[must_use]
    pub fn with_watch_capacity(capacity: usize) -> Self {
        let (notices, _) = broadcast::channel(capacity.max(1));
        MemoryStore {
            shared: Arc::new(Shared {
                write: Mutex::new(()),
                current: Mutex::new(Arc::new(Tables::default())),
                notices,
            }),
        }
    }

    /// A consistent view of the current state; O(1).
    #[must_use]
    pub fn view(&self) -> ReadTx {
        ReadTx {
            tables: Arc::clone(&lock(&self.shared.current)),
        }
    }

    /// Raft index of the last batch applied.
    #[must_use]
    pub fn version(&self) -> u64 {
        lock(&self.shared.current).version
    }

    /// How many objects of each kind; O(1).
    #[must_use]
    pub fn counts(&self) -> [(ObjectKind, usize); 7] {
        self.view().counts()
    }

    /// Applies the batch committed at Raft `index`, all or nothing.
    ///
    /// Every object it writes gets `meta.version = index`; creates set
    /// `created_at` and `updated_at`, updates set `updated_at`, both to the
    /// batch's timestamp. An update must carry the version its proposer
    /// read: the object's version before this batch, or 0 if this batch
    /// created it. On success returns the events, which subscribers
    /// also receive; on error nothing changed. `index` must be above the
    /// store's version: Raft entries that are not store batches may use the
    /// indexes in between.
    pub fn apply(&self, index: u64, batch: pb::StoreBatch) -> Result<Vec<Event>, StoreError> {
        let _writer = lock(&self.shared.write);
        let base = Arc::clone(&lock(&self.shared.current));
        if index <= base.version {
            return Err(StoreError::StaleIndex {
                index,
                version: base.version,
            });
        }
        let Some(at) = batch.timestamp else {
            return Err(StoreError::MissingTimestamp { index });
        };
        // A shallow copy: the persistent tables share all their nodes with
        // `base` until written.
        let mut next = Tables::clone(&base);
        drop(base);
        let mut stamp = Stamp::commit(index, at);
        let events = batch
            .actions
            .into_iter()
            .filter_map(|a| next.apply_action(a, &mut stamp).transpose())
            .collect::<Result<Vec<_>, _>>()?;
        next.version = index;
        self.shared.publish(
            Arc::new(next),
            Notice::Commit {
                version: index,
                events: events.clone(),
            },
        );
        Ok(events)
    }

    /// Runs `f` in a write transaction on the current view and returns the
    /// actions to propose, or `f`'s error. Nothing is written: the actions
    /// take effect when the committed batch is applied.
    pub fn prepare<E>(
        &self,
        f: impl FnOnce(&mut WriteTx) -> Result<(), E>,
    ) -> Result<Vec<pb::StoreAction>, E> {
        let mut tx = WriteTx::new(self.view());
        f(&mut tx)?;
        Ok(tx.into_actions())
    }

    /// A write transaction on the current view, for a writer that takes its
    /// actions in pieces as it goes ([`WriteTx::take_actions`]).
    #[must_use]
    pub fn write_tx(&self) -> WriteTx {
        WriteTx::new(self.view())
    }

    /// A view and a stream of the commits after it, taken atomically. See
    /// the [`watch` module](watch) for the contract.
    #[must_use]
    pub fn watch(&self) -> (ReadTx, WatchStream) {
        let (view, rx) = self.shared.subscribe();
        (view, WatchStream::new(rx, Arc::downgrade(&self.shared)))
    }

    /// Every object, for a Raft snapshot. Copies O(n) objects but holds no
    /// lock while doing so.
    #[must_use]
    pub fn snapshot(&self) -> pb::StoreSnapshot {
        self.view().snapshot()
    }

    /// [`snapshot`](Self::snapshot), protobuf-encoded. Identical stores give
    /// identical bytes.
    #[must_use]
    pub fn snapshot_bytes(&self) -> Vec<u8> {
        self.snapshot().encode_to_vec()
    }

    /// Replaces everything with `snapshot` (Raft install-snapshot). Objects
    /// keep their meta as recorded. Subscribers get
    /// [`WatchItem::Resync`] with [`ResyncReason::Restored`]. On error
    /// (duplicate IDs or names, missing IDs) nothing changed.
    pub fn restore(&self, snapshot: pb::StoreSnapshot) -> Result<(), StoreError> {
        let _writer = lock(&self.shared.write);
        let tables = Tables::from_snapshot(snapshot)
            .map_err(|e| StoreError::InvalidSnapshot(Box::new(e)))?;
        let tables = Arc::new(tables);
        let view = ReadTx {
            tables: Arc::clone(&tables),
        };
        self.shared.publish(tables, Notice::Reset { view });
        Ok(())
    }

    /// [`restore`](Self::restore) from [`snapshot_bytes`](Self::snapshot_bytes).
    pub fn restore_bytes(&self, bytes: &[u8]) -> Result<(), StoreError> {
        self.restore(pb::StoreSnapshot::decode(bytes)?)
    }
}

/// The action that writes a node's status report for one of its tasks
/// (see `pb::TaskStatusReport`): proposed as it is, without a
/// [`WriteTx`], since it reads nothing to be written.
#[must_use]
pub fn status_report(task_id: &str, node_id: &str, status: pb::TaskStatus) -> pb::StoreAction {
    pb::StoreAction {
        kind: pb::StoreActionKind::Update.into(),
        target: Some(pb::store_action::Target::TaskStatus(Box::new(
            pb::TaskStatusReport {
                task_id: task_id.to_owned(),
                node_id: node_id.to_owned(),
                status: Some(status),
            },
        ))),
    }
}

/// The action that places a task on a node (see `pb::TaskAssignment`);
/// the leader writes it through [`WriteTx::assign`].
#[must_use]
pub fn assignment(task_id: &str, node_id: &str, status: pb::TaskStatus) -> pb::StoreAction {
    pb::StoreAction {
        kind: pb::StoreActionKind::Update.into(),
        target: Some(pb::store_action::Target::TaskAssignment(
            pb::TaskAssignment {
                task_id: task_id.to_owned(),
                node_id: node_id.to_owned(),
                status: Some(status),
            },
        )),
    }
}

/// A batch of `actions` stamped with this manager's clock: for the leader,
/// just before it proposes.
#[must_use]
pub fn new_batch(actions: Vec<pb::StoreAction>) -> pb::StoreBatch {
    pb::StoreBatch {
        timestamp: Some(std::time::SystemTime::now().into()),
        actions,
    }
}
