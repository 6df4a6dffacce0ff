//! The store's state: one persistent (copy-on-write) table per kind plus
//! secondary indexes, and the write rules every manager applies.
//!
//! Tables are `imbl` B-tree maps: cloning them is O(1) and a write copies
//! only the O(log n) nodes on its path, so a snapshot costs nothing however
//! large the store, and writers never wait for readers. Tables are keyed in
//! sorted order (no hash maps to iterate), so listings and snapshots come
//! out the same on every manager.
//!
//! Nothing here reads a clock, a random source or the environment: the
//! result of a write depends only on the tables and the action.

use std::collections::HashMap;
use std::sync::Arc;

use imbl::{OrdMap, OrdSet};
use prost_types::Timestamp;
use swarm_proto::v1 as pb;
use swarm_proto::v1::store_action::Target;

use super::error::StoreError;
use super::key::Key;
use super::object::{ObjectKind, StoreObject, name_key};
use super::watch::{Event, EventKind};

/// One kind's objects by ID, and its name index.
pub struct Table<T> {
    by_id: OrdMap<Key, Arc<T>>,
    /// (name key, id): unique keys for kinds with unique names, repeated
    /// keys (one entry per id) for nodes.
    by_name: OrdSet<(Key, Key)>,
}

impl<T> Clone for Table<T> {
    fn clone(&self) -> Self {
        Table {
            by_id: self.by_id.clone(),
            by_name: self.by_name.clone(),
        }
    }
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Table {
            by_id: OrdMap::new(),
            by_name: OrdSet::new(),
        }
    }
}

impl<T> Table<T> {
    pub(super) fn len(&self) -> usize {
        self.by_id.len()
    }

    pub(super) fn get(&self, id: &str) -> Option<&Arc<T>> {
        self.by_id.get(&Key::from(id))
    }

    pub(super) fn get_key(&self, id: &Key) -> Option<&Arc<T>> {
        self.by_id.get(id)
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &Arc<T>> {
        self.by_id.values()
    }

    pub(super) fn with_id_prefix<'a>(
        &'a self,
        prefix: &'a str,
    ) -> impl Iterator<Item = &'a Arc<T>> {
        self.by_id
            .range(Key::from(prefix)..)
            .take_while(move |(id, _)| id.as_bytes().starts_with(prefix.as_bytes()))
            .map(|(_, o)| o)
    }

    /// IDs of the objects whose name key is `key`.
    pub(super) fn ids_named<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> {
        self.by_name
            .range((Key::from(key), Key::from(""))..)
            .take_while(move |(k, _)| k.as_bytes() == key.as_bytes())
            .map(|(_, id)| id.as_str())
    }
}

/// Where a table lives in [`Tables`], and the secondary indexes a kind keeps.
/// Public only inside the crate's private `tables` module, which seals
/// [`StoreObject`].
pub trait Indexed: Sized {
    fn table(t: &Tables) -> &Table<Self>;
    fn table_mut(t: &mut Tables) -> &mut Table<Self>;
    /// Add (`add`) or drop this object's entries in secondary indexes.
    fn index(_t: &mut Tables, _obj: &Self, _add: bool) {}
    /// Moves the index entries of `old` to those of `new` (same ID).
    /// Kinds whose index keys rarely change override it to touch only
    /// what changed: an update is the most frequent write.
    fn reindex(t: &mut Tables, old: &Self, new: &Self) {
        Self::index(t, old, false);
        Self::index(t, new, true);
    }
}

/// Every table and index at one version.
#[derive(Clone, Default)]
pub struct Tables {
    /// Raft index of the last batch applied (or of the restored snapshot).
    pub(super) version: u64,
    pub(super) clusters: Table<pb::Cluster>,
    pub(super) nodes: Table<pb::Node>,
    pub(super) services: Table<pb::Service>,
    pub(super) tasks: Table<pb::Task>,
    pub(super) networks: Table<pb::Network>,
    pub(super) secrets: Table<pb::Secret>,
    pub(super) configs: Table<pb::Config>,
    /// (node_id, task_id), for assigned tasks only.
    pub(super) tasks_by_node: OrdSet<(Key, Key)>,
    /// (service_id, slot, task_id); also serves lookups by service alone, so
    /// a task write touches two index trees, not three.
    pub(super) tasks_by_slot: OrdSet<(Key, u64, Key)>,
    /// How many tasks are in each observed state, so metrics need no scan
    /// of every task.
    pub(super) task_states: OrdMap<i32, usize>,
}

impl Indexed for pb::Task {
    fn table(t: &Tables) -> &Table<Self> {
        &t.tasks
    }
    fn table_mut(t: &mut Tables) -> &mut Table<Self> {
        &mut t.tasks
    }
    fn index(t: &mut Tables, task: &Self, add: bool) {
        count_task_state(t, task_state(task), add);
        index_task_slot(t, task, add);
        index_task_node(t, task, add);
    }

    fn reindex(t: &mut Tables, old: &Self, new: &Self) {
        let (was, is) = (task_state(old), task_state(new));
        if was != is {
            count_task_state(t, was, false);
            count_task_state(t, is, true);
        }
        if old.service_id != new.service_id || old.slot != new.slot {
            index_task_slot(t, old, false);
            index_task_slot(t, new, true);
        }
        if old.node_id != new.node_id {
            index_task_node(t, old, false);
            index_task_node(t, new, true);
        }
    }
}

fn task_state(task: &pb::Task) -> i32 {
    task.status.as_ref().map_or(0, |s| s.state)
}

/// Whether `task` waits for the scheduler: PENDING, and still wanted
/// (desired state at most COMPLETE: READY for delayed starts, RUNNING, or
/// COMPLETE for jobs). The rule a [`pb::TaskAssignment`] applies by.
#[must_use]
pub fn awaits_node(task: &pb::Task) -> bool {
    task_state(task) == pb::TaskState::Pending as i32
        && task.desired_state <= pb::TaskState::Complete as i32
}

fn count_task_state(t: &mut Tables, state: i32, add: bool) {
    let n = t.task_states.get(&state).copied().unwrap_or(0);
    let n = if add { n + 1 } else { n.saturating_sub(1) };
    if n == 0 {
        t.task_states.remove(&state);
    } else {
        t.task_states.insert(state, n);
    }
}

fn index_task_slot(t: &mut Tables, task: &pb::Task, add: bool) {
    let key = (
        Key::from(task.service_id.as_str()),
        task.slot,
        Key::from(task.id()),
    );
    if add {
        t.tasks_by_slot.insert(key);
    } else {
        t.tasks_by_slot.remove(&key);
    }
}

fn index_task_node(t: &mut Tables, task: &pb::Task, add: bool) {
    if task.node_id.is_empty() {
        return;
    }
    let key = (Key::from(task.node_id.as_str()), Key::from(task.id()));
    if add {
        t.tasks_by_node.insert(key);
    } else {
        t.tasks_by_node.remove(&key);
    }
}

/// How a write sets the meta the store owns, and which version an update
/// must carry.
///
/// The rule for versions inside a batch: an update carries the version its
/// proposer read, which is the object's version before the batch, or 0 if
/// the batch itself created the object. So a leader can write one object
/// several times in one batch without knowing the Raft index the batch will
/// get, and the actions apply exactly as its [`WriteTx`](super::WriteTx)
/// checked them, in the same order.
pub(super) enum Stamp {
    /// A committed batch: versions become its Raft index and timestamps its
    /// timestamp.
    Commit {
        index: u64,
        at: Timestamp,
        /// The version the proposer saw for each object the batch has
        /// written so far.
        seen: HashMap<(ObjectKind, Key), u64>,
    },
    /// A leader's trial run before proposing: meta stays as the proposer
    /// sees it (version 0 and no timestamps for new objects, unchanged for
    /// updated ones), which is what the rule above expects.
    Propose,
}

impl Stamp {
    pub(super) fn commit(index: u64, at: Timestamp) -> Stamp {
        Stamp::Commit {
            index,
            at,
            seen: HashMap::new(),
        }
    }

    fn version(&self) -> u64 {
        match self {
            Stamp::Commit { index, .. } => *index,
            Stamp::Propose => 0,
        }
    }
}

fn checked_id<T: StoreObject>(obj: &T) -> Result<&str, StoreError> {
    let id = obj.id();
    if id.is_empty() {
        return Err(StoreError::InvalidObject {
            kind: T::KIND,
            reason: "it has no meta.id; set one with store::new_id()".to_owned(),
        });
    }
    Ok(id)
}

impl Tables {
    pub(super) fn count(&self, kind: ObjectKind) -> usize {
        match kind {
            ObjectKind::Cluster => self.clusters.len(),
            ObjectKind::Node => self.nodes.len(),
            ObjectKind::Service => self.services.len(),
            ObjectKind::Task => self.tasks.len(),
            ObjectKind::Network => self.networks.len(),
            ObjectKind::Secret => self.secrets.len(),
            ObjectKind::Config => self.configs.len(),
        }
    }

    fn check_name<T: StoreObject>(&self, obj: &T, id: &str) -> Result<(), StoreError> {
        if !T::UNIQUE_NAME {
            return Ok(());
        }
        let name = obj.name().unwrap_or_default();
        if name.is_empty() {
            return Err(StoreError::InvalidObject {
                kind: T::KIND,
                reason: format!(
                    "{} {id} has no name; every {} needs a unique name",
                    T::KIND,
                    T::KIND
                ),
            });
        }
        let key = name_key(name);
        if let Some(existing) = T::table(self).ids_named(&key).find(|other| *other != id) {
            return Err(StoreError::NameConflict {
                kind: T::KIND,
                name: name.to_owned(),
                existing_id: existing.to_owned(),
            });
        }
        Ok(())
    }

    fn insert<T: StoreObject>(&mut self, id: String, obj: Arc<T>) {
        let id = Key::from(id);
        if let Some(name) = obj.name().filter(|n| !n.is_empty()) {
            T::table_mut(self)
                .by_name
                .insert((Key::from(name_key(name)), id.clone()));
        }
        T::index(self, &obj, true);
        T::table_mut(self).by_id.insert(id, obj);
    }

    /// Puts `obj` in the place of `old` (same ID), touching only the index
    /// entries whose keys changed: most updates change none.
    fn replace<T: StoreObject>(&mut self, id: &str, old: &T, obj: Arc<T>) {
        let name_of = |o: &T| o.name().filter(|n| !n.is_empty()).map(name_key);
        let (was, is) = (name_of(old), name_of(&obj));
        if was != is {
            let by_name = &mut T::table_mut(self).by_name;
            if let Some(k) = was {
                by_name.remove(&(Key::from(k), Key::from(id)));
            }
            if let Some(k) = is {
                by_name.insert((Key::from(k), Key::from(id)));
            }
        }
        T::reindex(self, old, &obj);
        // In place: the key stays, no new one is allocated.
        match T::table_mut(self).by_id.get_mut(&Key::from(id)) {
            Some(slot) => *slot = obj,
            None => {
                T::table_mut(self).by_id.insert(Key::from(id), obj);
            }
        }
    }

    fn unindex<T: StoreObject>(&mut self, old: &T) {
        if let Some(name) = old.name().filter(|n| !n.is_empty()) {
            T::table_mut(self)
                .by_name
                .remove(&(Key::from(name_key(name)), Key::from(old.id())));
        }
        T::index(self, old, false);
    }

    pub(super) fn create<T: StoreObject>(
        &mut self,
        mut obj: T,
        stamp: &mut Stamp,
    ) -> Result<Event, StoreError> {
        let id = checked_id(&obj)?.to_owned();
        if T::table(self).by_id.contains_key(&Key::from(id.as_str())) {
            return Err(StoreError::AlreadyExists { kind: T::KIND, id });
        }
        self.check_name(&obj, &id)?;
        let meta = obj.meta_mut();
        match stamp {
            Stamp::Commit { index, at, seen } => {
                meta.version = *index;
                meta.created_at = Some(*at);
                meta.updated_at = Some(*at);
                seen.insert((T::KIND, Key::from(id.as_str())), 0);
            }
            Stamp::Propose => {
                meta.version = 0;
                meta.created_at = None;
                meta.updated_at = None;
            }
        }
        let obj = Arc::new(obj);
        self.insert(id, Arc::clone(&obj));
        Ok(Event {
            kind: EventKind::Created,
            version: stamp.version(),
            object: T::into_object(obj),
            old: None,
        })
    }

    pub(super) fn update<T: StoreObject>(
        &mut self,
        mut obj: T,
        stamp: &mut Stamp,
    ) -> Result<Event, StoreError> {
        let id = checked_id(&obj)?.to_owned();
        let Some(old) = T::table(self).get(&id).cloned() else {
            return Err(StoreError::NotFound { kind: T::KIND, id });
        };
        let key = (T::KIND, Key::from(id.as_str()));
        let stored = match stamp {
            Stamp::Commit { seen, .. } => seen.get(&key).copied().unwrap_or(old.version()),
            Stamp::Propose => old.version(),
        };
        let read = obj.version();
        if read != stored {
            return Err(StoreError::OutOfSequence {
                kind: T::KIND,
                id,
                read,
                stored,
            });
        }
        self.check_name(&obj, &id)?;
        let old_meta = old.meta().cloned().unwrap_or_default();
        let meta = obj.meta_mut();
        match stamp {
            Stamp::Commit { index, at, seen } => {
                meta.version = *index;
                meta.created_at = old_meta.created_at;
                meta.updated_at = Some(*at);
                seen.entry(key).or_insert(stored);
            }
            Stamp::Propose => *meta = old_meta,
        }
        let obj = Arc::new(obj);
        self.replace(&id, &*old, Arc::clone(&obj));
        Ok(Event {
            kind: EventKind::Updated,
            version: stamp.version(),
            object: T::into_object(obj),
            old: Some(T::into_object(old)),
        })
    }

    pub(super) fn remove<T: StoreObject>(
        &mut self,
        id: &str,
        stamp: &mut Stamp,
    ) -> Result<Event, StoreError> {
        let Some(old) = T::table_mut(self).by_id.remove(&Key::from(id)) else {
            return Err(StoreError::NotFound {
                kind: T::KIND,
                id: id.to_owned(),
            });
        };
        self.unindex(&*old);
        if let Stamp::Commit { seen, .. } = stamp {
            seen.remove(&(T::KIND, Key::from(id)));
        }
        Ok(Event {
            kind: EventKind::Removed,
            version: stamp.version(),
            object: T::into_object(old),
            old: None,
        })
    }

    /// Applies one replicated action: its event, or `None` for a status
    /// report or an assignment that changes nothing.
    pub(super) fn apply_action(
        &mut self,
        action: pb::StoreAction,
        stamp: &mut Stamp,
    ) -> Result<Option<Event>, StoreError> {
        let kind =
            pb::StoreActionKind::try_from(action.kind).map_err(|_| StoreError::InvalidAction {
                reason: format!("unknown action kind {}", action.kind),
            })?;
        let Some(target) = action.target else {
            return Err(StoreError::InvalidAction {
                reason: format!("{} action has no target object", kind.as_str_name()),
            });
        };
        match target {
            Target::Cluster(o) => self.dispatch(kind, *o, stamp).map(Some),
            Target::Node(o) => self.dispatch(kind, *o, stamp).map(Some),
            Target::Service(o) => self.dispatch(kind, *o, stamp).map(Some),
            Target::Task(o) => self.dispatch(kind, *o, stamp).map(Some),
            Target::Network(o) => self.dispatch(kind, *o, stamp).map(Some),
            Target::Secret(o) => self.dispatch(kind, *o, stamp).map(Some),
            Target::Config(o) => self.dispatch(kind, *o, stamp).map(Some),
            Target::TaskStatus(r) => {
                let what = || format!("status report for task {}", r.task_id);
                Self::update_only(kind, what)?;
                let Some(status) = r.status else {
                    return Err(StoreError::InvalidAction {
                        reason: format!("{} has no status", what()),
                    });
                };
                Ok(self.report_status(&r.task_id, &r.node_id, status, stamp))
            }
            Target::TaskAssignment(a) => {
                let what = || format!("assignment of task {}", a.task_id);
                Self::update_only(kind, what)?;
                let Some(status) = a.status else {
                    return Err(StoreError::InvalidAction {
                        reason: format!("{} has no status", what()),
                    });
                };
                if a.node_id.is_empty() {
                    return Err(StoreError::InvalidAction {
                        reason: format!("{} names no node", what()),
                    });
                }
                Ok(self.assign_task(&a.task_id, a.node_id, status, stamp))
            }
        }
    }

    /// Status reports and assignments are written without the task: they
    /// can only update it.
    fn update_only(kind: pb::StoreActionKind, what: impl Fn() -> String) -> Result<(), StoreError> {
        if kind == pb::StoreActionKind::Update {
            return Ok(());
        }
        Err(StoreError::InvalidAction {
            reason: format!(
                "{} has kind {}; only UPDATE is allowed",
                what(),
                kind.as_str_name()
            ),
        })
    }

    /// A node's status report (see `pb::TaskStatusReport`): the task takes
    /// the status if it still exists, is still on the reporting node and
    /// its state does not go back; otherwise nothing changes (`None`). No
    /// version check: the report was written without reading the task.
    fn report_status(
        &mut self,
        task_id: &str,
        node_id: &str,
        status: pb::TaskStatus,
        stamp: &mut Stamp,
    ) -> Option<Event> {
        let old = self.tasks.get(task_id).cloned()?;
        // A report of the status the task already has (a node resends all
        // its statuses to a new leader) changes nothing, not even the
        // version: watchers are not woken for it.
        if old.node_id != node_id
            || status.state < task_state(&old)
            || old.status.as_ref() == Some(&status)
        {
            return None;
        }
        let mut task = pb::Task::clone(&old);
        task.status = Some(status);
        Some(self.rewrite_task(old, task, stamp))
    }

    /// The scheduler's placement (see `pb::TaskAssignment`): the task moves
    /// to the node with the status if it still [`awaits_node`] and has no
    /// other node; otherwise nothing changes (`None`). No version check,
    /// as for a status report.
    fn assign_task(
        &mut self,
        task_id: &str,
        node_id: String,
        status: pb::TaskStatus,
        stamp: &mut Stamp,
    ) -> Option<Event> {
        let old = self.tasks.get(task_id).cloned()?;
        if !awaits_node(&old) || !(old.node_id.is_empty() || old.node_id == node_id) {
            return None;
        }
        let mut task = pb::Task::clone(&old);
        task.node_id = node_id;
        task.status = Some(status);
        Some(self.rewrite_task(old, task, stamp))
    }

    /// Replaces `old` with `task`, a change written without a version
    /// (status reports, assignments), stamping it as [`update`](Self::update)
    /// would.
    fn rewrite_task(&mut self, old: Arc<pb::Task>, mut task: pb::Task, stamp: &mut Stamp) -> Event {
        if let Stamp::Commit { index, at, seen } = stamp {
            let meta = task.meta.get_or_insert_with(Default::default);
            meta.version = *index;
            meta.updated_at = Some(*at);
            // A later update in this batch carries the version from before it.
            seen.entry((ObjectKind::Task, Key::from(task.id())))
                .or_insert(old.version());
        }
        let task = Arc::new(task);
        self.replace(task.id(), &*old, Arc::clone(&task));
        Event {
            kind: EventKind::Updated,
            version: stamp.version(),
            object: pb::Task::into_object(task),
            old: Some(pb::Task::into_object(old)),
        }
    }

    fn dispatch<T: StoreObject>(
        &mut self,
        kind: pb::StoreActionKind,
        obj: T,
        stamp: &mut Stamp,
    ) -> Result<Event, StoreError> {
        match kind {
            pb::StoreActionKind::Create => self.create(obj, stamp),
            pb::StoreActionKind::Update => self.update(obj, stamp),
            pb::StoreActionKind::Remove => self.remove::<T>(checked_id(&obj)?, stamp),
            pb::StoreActionKind::Unknown => Err(StoreError::InvalidAction {
                reason: format!("action on {} {} has kind UNKNOWN", T::KIND, obj.id()),
            }),
        }
    }

    /// Adds an object from a snapshot as it is (meta included), checking only
    /// what keeps the tables consistent: ID and name uniqueness.
    fn restore_one<T: StoreObject>(&mut self, obj: T) -> Result<(), StoreError> {
        let id = checked_id(&obj)?.to_owned();
        if T::table(self).by_id.contains_key(&Key::from(id.as_str())) {
            return Err(StoreError::AlreadyExists { kind: T::KIND, id });
        }
        self.check_name(&obj, &id)?;
        self.insert(id, Arc::new(obj));
        Ok(())
    }

    pub(super) fn from_snapshot(snap: pb::StoreSnapshot) -> Result<Tables, StoreError> {
        fn all<T: StoreObject>(t: &mut Tables, objs: Vec<T>) -> Result<(), StoreError> {
            objs.into_iter().try_for_each(|o| t.restore_one(o))
        }
        let mut t = Tables {
            version: snap.version,
            ..Tables::default()
        };
        all(&mut t, snap.clusters)?;
        all(&mut t, snap.nodes)?;
        all(&mut t, snap.services)?;
        all(&mut t, snap.tasks)?;
        all(&mut t, snap.networks)?;
        all(&mut t, snap.secrets)?;
        all(&mut t, snap.configs)?;
        Ok(t)
    }

    pub(super) fn to_snapshot(&self) -> pb::StoreSnapshot {
        fn all<T: StoreObject>(t: &Tables) -> Vec<T> {
            T::table(t).values().map(|o| T::clone(o)).collect()
        }
        pb::StoreSnapshot {
            version: self.version,
            clusters: all(self),
            nodes: all(self),
            services: all(self),
            tasks: all(self),
            networks: all(self),
            secrets: all(self),
            configs: all(self),
        }
    }
}
