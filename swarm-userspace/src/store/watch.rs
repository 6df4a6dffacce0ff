//! Watch streams: how control loops follow the store.
//!
//! Contract:
//! - [`MemoryStore::watch`](super::MemoryStore::watch) returns a view and a
//!   stream atomically: the stream's first commit is the first batch applied
//!   after the view, with nothing lost or repeated in between.
//! - The stream yields each committed batch's events (those passing the
//!   stream's filter) as one [`WatchItem::Commit`], in apply order.
//!   Batches with no matching event are skipped.
//! - Queues are bounded: a subscriber that falls more than the store's watch
//!   capacity of batches behind does not slow the store down; instead it
//!   gets [`WatchItem::Resync`] with reason [`ResyncReason::Lagged`] and a
//!   fresh view. It must then rebuild its state from that view: the commits
//!   it missed are gone. Commits after the resync apply on top of that view.
//! - A snapshot restore (Raft install-snapshot) replaces the whole store and
//!   reaches every subscriber as a `Resync` with reason
//!   [`ResyncReason::Restored`], handled the same way.
//! - The stream ends (`None`) once the store is dropped.

use std::sync::{Arc, Weak};

use tokio::sync::broadcast;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use super::object::{Object, ObjectKind};
use super::read::ReadTx;

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Created,
    Updated,
    Removed,
}

/// One change to one object.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub kind: EventKind,
    /// Raft index of the batch (0 in a leader's trial run).
    pub version: u64,
    /// The object as created or updated, or as it was when removed.
    pub object: Object,
    /// For updates, the object before.
    pub old: Option<Object>,
}

impl Event {
    /// Whether this is a task event that concerns `node_id`: the task is, or
    /// was before this update, assigned to it.
    #[must_use]
    pub fn concerns_node(&self, node_id: &str) -> bool {
        let on = |o: &Object| o.as_task().is_some_and(|t| t.node_id == node_id);
        on(&self.object) || self.old.as_ref().is_some_and(on)
    }
}

/// What the store publishes to every subscriber.
pub(super) enum Notice {
    Commit { version: u64, events: Vec<Event> },
    Reset { view: ReadTx },
}

/// Why a subscriber must rebuild its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResyncReason {
    /// It fell too far behind and missed commits.
    Lagged,
    /// The store was replaced from a snapshot.
    Restored,
}

/// What a [`WatchStream`] yields.
#[derive(Debug, Clone)]
pub enum WatchItem {
    /// The matching events of one committed batch, in apply order.
    Commit { version: u64, events: Vec<Event> },
    /// Discard what you derived from earlier items and rebuild from `view`;
    /// later commits follow on from it.
    Resync { view: ReadTx, reason: ResyncReason },
}

type Filter = Arc<dyn Fn(&Event) -> bool + Send + Sync>;

/// A subscription to the store's commits. See the module docs for the
/// contract.
pub struct WatchStream {
    rx: broadcast::Receiver<Arc<Notice>>,
    store: Weak<super::Shared>,
    filters: Vec<Filter>,
}

impl std::fmt::Debug for WatchStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchStream")
            .field("pending", &self.rx.len())
            .field("filters", &self.filters.len())
            .finish()
    }
}

impl WatchStream {
    pub(super) fn new(rx: broadcast::Receiver<Arc<Notice>>, store: Weak<super::Shared>) -> Self {
        WatchStream {
            rx,
            store,
            filters: Vec::new(),
        }
    }

    /// Keeps only events for which `f` is true (and every earlier filter).
    #[must_use]
    pub fn filter(mut self, f: impl Fn(&Event) -> bool + Send + Sync + 'static) -> Self {
        self.filters.push(Arc::new(f));
        self
    }

    /// Keeps only events on objects of these kinds.
    #[must_use]
    pub fn kinds(self, kinds: &[ObjectKind]) -> Self {
        let kinds = kinds.to_vec();
        self.filter(move |e| kinds.contains(&e.object.kind()))
    }

    /// Keeps only task events that concern `node_id` (see
    /// [`Event::concerns_node`]): what a node's dispatcher session needs.
    #[must_use]
    pub fn tasks_on_node(self, node_id: &str) -> Self {
        let node_id = node_id.to_owned();
        self.filter(move |e| e.concerns_node(&node_id))
    }

    /// The next item; `None` once the store is gone.
    pub async fn recv(&mut self) -> Option<WatchItem> {
        loop {
            match self.rx.recv().await {
                Ok(notice) => {
                    if let Some(item) = self.item(&notice) {
                        return Some(item);
                    }
                }
                Err(RecvError::Lagged(_)) => return self.resubscribe(),
                Err(RecvError::Closed) => return None,
            }
        }
    }

    /// The next item if one is ready now; `None` if none is (or the store
    /// is gone).
    pub fn try_recv(&mut self) -> Option<WatchItem> {
        loop {
            match self.rx.try_recv() {
                Ok(notice) => {
                    if let Some(item) = self.item(&notice) {
                        return Some(item);
                    }
                }
                Err(TryRecvError::Lagged(_)) => return self.resubscribe(),
                Err(TryRecvError::Empty | TryRecvError::Closed) => return None,
            }
        }
    }

    fn item(&self, notice: &Notice) -> Option<WatchItem> {
        match notice {
            Notice::Commit { version, events } => {
                let events: Vec<Event> = events
                    .iter()
                    .filter(|e| self.filters.iter().all(|f| f(e)))
                    .cloned()
                    .collect();
                (!events.is_empty()).then_some(WatchItem::Commit {
                    version: *version,
                    events,
                })
            }
            Notice::Reset { view } => Some(WatchItem::Resync {
                view: view.clone(),
                reason: ResyncReason::Restored,
            }),
        }
    }

    /// Starts over from the current state: a new view and a new place in the
    /// queue, taken together so nothing falls between them.
    fn resubscribe(&mut self) -> Option<WatchItem> {
        let store = self.store.upgrade()?;
        let (view, rx) = store.subscribe();
        self.rx = rx;
        Some(WatchItem::Resync {
            view,
            reason: ResyncReason::Lagged,
        })
    }
}
