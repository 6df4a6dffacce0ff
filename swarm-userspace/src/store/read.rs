//! Read transactions: consistent point-in-time views of the store.

use std::sync::Arc;

use swarm_proto::v1 as pb;

use super::key::Key;
use super::object::{ObjectKind, StoreObject, name_key};
use super::tables::Tables;

/// A consistent, immutable view of the whole store at one version.
///
/// Taking one is O(1) and holding one never blocks writers: later writes
/// build new tables that share unchanged parts with this one. Keep a view
/// only as long as needed: what it alone still references stays in memory.
#[derive(Clone)]
pub struct ReadTx {
    pub(super) tables: Arc<Tables>,
}

impl std::fmt::Debug for ReadTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("ReadTx");
        d.field("version", &self.version());
        for (kind, n) in self.counts() {
            d.field(kind.as_str(), &n);
        }
        d.finish()
    }
}

impl ReadTx {
    /// Raft index of the last batch this view includes (0 for an empty store).
    #[must_use]
    pub fn version(&self) -> u64 {
        self.tables.version
    }

    #[must_use]
    pub fn get<T: StoreObject>(&self, id: &str) -> Option<Arc<T>> {
        T::table(&self.tables).get(id).cloned()
    }

    /// The object named `name`, compared without ASCII case (as docker
    /// does). For nodes, whose names may repeat, the one with the lowest ID;
    /// use [`find_by_name`](Self::find_by_name) to see them all.
    #[must_use]
    pub fn get_by_name<T: StoreObject>(&self, name: &str) -> Option<Arc<T>> {
        let key = name_key(name);
        let table = T::table(&self.tables);
        table
            .ids_named(&key)
            .next()
            .and_then(|id| table.get(id).cloned())
    }

    /// Every object named `name` (at most one for kinds with unique names).
    #[must_use]
    pub fn find_by_name<T: StoreObject>(&self, name: &str) -> Vec<Arc<T>> {
        let key = name_key(name);
        let table = T::table(&self.tables);
        table
            .ids_named(&key)
            .filter_map(|id| table.get(id).cloned())
            .collect()
    }

    /// Objects whose ID starts with `prefix`, for resolving the short IDs
    /// users type.
    #[must_use]
    pub fn find_by_id_prefix<T: StoreObject>(&self, prefix: &str) -> Vec<Arc<T>> {
        T::table(&self.tables)
            .with_id_prefix(prefix)
            .cloned()
            .collect()
    }

    /// All objects of a kind, sorted by ID.
    pub fn list<T: StoreObject>(&self) -> impl Iterator<Item = Arc<T>> + '_ {
        T::table(&self.tables).values().cloned()
    }

    #[must_use]
    pub fn count<T: StoreObject>(&self) -> usize {
        T::table(&self.tables).len()
    }

    /// How many objects of each kind; O(1) per kind.
    #[must_use]
    pub fn counts(&self) -> [(ObjectKind, usize); 7] {
        ObjectKind::ALL.map(|k| (k, self.tables.count(k)))
    }

    /// How many tasks are in each observed state (`TaskState` as i32),
    /// states without tasks left out; O(number of states).
    pub fn task_state_counts(&self) -> impl Iterator<Item = (i32, usize)> + '_ {
        self.tables.task_states.iter().map(|(s, n)| (*s, *n))
    }

    /// Tasks of a service, sorted by slot, then task ID.
    #[must_use]
    pub fn tasks_by_service(&self, service_id: &str) -> Vec<Arc<pb::Task>> {
        self.tables
            .tasks_by_slot
            .range((Key::from(service_id), 0, Key::from(""))..)
            .take_while(|(s, _, _)| s.as_bytes() == service_id.as_bytes())
            .filter_map(|(_, _, id)| self.tables.tasks.get_key(id).cloned())
            .collect()
    }

    /// Tasks assigned to a node, sorted by task ID.
    #[must_use]
    pub fn tasks_by_node(&self, node_id: &str) -> Vec<Arc<pb::Task>> {
        if node_id.is_empty() {
            return Vec::new();
        }
        self.tables
            .tasks_by_node
            .range((Key::from(node_id), Key::from(""))..)
            .take_while(|(n, _)| n.as_bytes() == node_id.as_bytes())
            .filter_map(|(_, id)| self.tables.tasks.get_key(id).cloned())
            .collect()
    }

    /// Tasks of one slot of a replicated service (the current one and its
    /// history), sorted by task ID. Global services' tasks are all in slot 0.
    #[must_use]
    pub fn tasks_by_slot(&self, service_id: &str, slot: u64) -> Vec<Arc<pb::Task>> {
        self.tables
            .tasks_by_slot
            .range((Key::from(service_id), slot, Key::from(""))..)
            .take_while(|(s, n, _)| s.as_bytes() == service_id.as_bytes() && *n == slot)
            .filter_map(|(_, _, id)| self.tables.tasks.get_key(id).cloned())
            .collect()
    }

    /// Every object, each kind sorted by ID: what a Raft snapshot holds.
    /// O(n) copies; take it from a view so writers carry on meanwhile.
    #[must_use]
    pub fn snapshot(&self) -> pb::StoreSnapshot {
        self.tables.to_snapshot()
    }
}
