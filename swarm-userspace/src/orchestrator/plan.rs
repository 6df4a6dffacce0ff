//! A plan: one service's tasks as the stages of a pass have left them.
//!
//! Each stage (reconcile, update, reap) reads the plan, so it sees what the
//! stages before it decided, and writes to it; at the end the plan becomes
//! the fewest [`Action`]s: one create per new task, one update per changed
//! task, one removal per removed task. Desired states only move forward.
//!
//! Tasks are addressed by position ([`Ix`]) and grouped with one sort, so
//! a pass over a service with 100,000 tasks allocates little.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::SystemTime;

use swarm_proto::v1 as pb;

use super::task::id;
use super::{Action, SlotKey, WakeReason};

/// A task's position in a plan.
pub(crate) type Ix = usize;

struct Entry {
    task: Arc<pb::Task>,
    /// As read from the store; `None` for a task this pass creates.
    original: Option<Arc<pb::Task>>,
    removed: bool,
}

pub(crate) struct Plan {
    /// The store's tasks first, then the ones this pass creates, in
    /// creation order.
    entries: Vec<Entry>,
    service: Option<pb::Service>,
    remove_service: Option<String>,
    wakes: Vec<(SystemTime, WakeReason)>,
    /// Instances whose restart waits for its delay: the updater leaves them
    /// to the restart rules.
    pub waiting: BTreeSet<SlotKey>,
}

/// Task positions grouped by instance, keys in order.
pub(crate) struct Groups {
    keys: Vec<SlotKey>,
    /// `ixs[starts[i]..starts[i + 1]]` belong to `keys[i]`.
    starts: Vec<usize>,
    ixs: Vec<Ix>,
}

impl Groups {
    pub fn iter(&self) -> impl Iterator<Item = (&SlotKey, &[Ix])> {
        self.keys
            .iter()
            .enumerate()
            .map(|(i, k)| (k, &self.ixs[self.starts[i]..self.starts[i + 1]]))
    }

    /// The group of `key` (empty if it has no task).
    pub fn get(&self, key: &SlotKey) -> &[Ix] {
        match self.keys.binary_search(key) {
            Ok(i) => &self.ixs[self.starts[i]..self.starts[i + 1]],
            Err(_) => &[],
        }
    }
}

impl Plan {
    pub fn new(tasks: &[Arc<pb::Task>]) -> Plan {
        Plan {
            entries: tasks
                .iter()
                .map(|t| Entry {
                    task: Arc::clone(t),
                    original: Some(Arc::clone(t)),
                    removed: false,
                })
                .collect(),
            service: None,
            remove_service: None,
            wakes: Vec::new(),
            waiting: BTreeSet::new(),
        }
    }

    /// The task at `ix`, unless removed.
    pub fn get(&self, ix: Ix) -> Option<&pb::Task> {
        self.entries
            .get(ix)
            .filter(|e| !e.removed)
            .map(|e| &*e.task)
    }

    /// The task as the store holds it (`None` if this pass created it).
    pub fn original(&self, ix: Ix) -> Option<&pb::Task> {
        self.entries.get(ix).and_then(|e| e.original.as_deref())
    }

    /// Every task not removed.
    pub fn tasks(&self) -> impl Iterator<Item = (Ix, &pb::Task)> {
        self.entries
            .iter()
            .enumerate()
            .filter(|(_, e)| !e.removed)
            .map(|(i, e)| (i, &*e.task))
    }

    pub fn is_empty(&self) -> bool {
        self.tasks().next().is_none()
    }

    /// Task IDs to positions, for memory kept across passes by ID.
    pub fn index_by_id(&self) -> HashMap<&str, Ix> {
        self.tasks().map(|(i, t)| (id(t), i)).collect()
    }

    /// Groups the tasks by `key` (tasks it maps to `None` are left out).
    pub fn group_by(&self, key: impl Fn(&pb::Task) -> Option<SlotKey>) -> Groups {
        let mut pairs: Vec<(SlotKey, Ix)> = self
            .tasks()
            .filter_map(|(i, t)| key(t).map(|k| (k, i)))
            .collect();
        pairs.sort_unstable();
        let mut groups = Groups {
            keys: Vec::new(),
            starts: Vec::new(),
            ixs: Vec::with_capacity(pairs.len()),
        };
        for (k, i) in pairs {
            if groups.keys.last() != Some(&k) {
                groups.starts.push(groups.ixs.len());
                groups.keys.push(k);
            }
            groups.ixs.push(i);
        }
        groups.starts.push(groups.ixs.len());
        groups
    }

    /// Raises the task's desired state to `to`; never lowers it.
    pub fn set_desired(&mut self, ix: Ix, to: pb::TaskState) {
        if let Some(e) = self.entries.get_mut(ix).filter(|e| !e.removed)
            && e.task.desired_state < to as i32
        {
            Arc::make_mut(&mut e.task).desired_state = to.into();
        }
    }

    pub fn create(&mut self, task: pb::Task) -> Ix {
        self.entries.push(Entry {
            task: Arc::new(task),
            original: None,
            removed: false,
        });
        self.entries.len() - 1
    }

    pub fn remove(&mut self, ix: Ix) {
        if let Some(e) = self.entries.get_mut(ix) {
            e.removed = true;
        }
    }

    pub fn update_service(&mut self, service: pb::Service) {
        self.service = Some(service);
    }

    pub fn remove_service(&mut self, service_id: &str) {
        self.remove_service = Some(service_id.to_owned());
    }

    pub fn wake(&mut self, at: SystemTime, reason: WakeReason) {
        self.wakes.push((at, reason));
    }

    /// The actions: creates in creation order, then updates and removals
    /// in the order the tasks were given, then the service, then wake-ups
    /// (earliest first).
    pub fn into_actions(mut self) -> Vec<Action> {
        let mut creates = Vec::new();
        let mut changes = Vec::new();
        for e in self.entries {
            match e.original {
                None if !e.removed => creates.push(Action::CreateTask {
                    task: Box::new(Arc::unwrap_or_clone(e.task)),
                }),
                None => {}
                Some(original) if e.removed => changes.push(Action::RemoveTask {
                    id: id(&original).to_owned(),
                }),
                Some(original) if !Arc::ptr_eq(&e.task, &original) && *e.task != *original => {
                    drop(original);
                    changes.push(Action::UpdateTask {
                        task: Box::new(Arc::unwrap_or_clone(e.task)),
                    });
                }
                Some(_) => {}
            }
        }
        let mut actions = creates;
        actions.append(&mut changes);
        if let Some(service) = self.service {
            actions.push(Action::UpdateService {
                service: Box::new(service),
            });
        }
        if let Some(id) = self.remove_service {
            actions.push(Action::RemoveService { id });
        }
        self.wakes.sort_by_key(|(at, _)| *at);
        actions.extend(
            self.wakes
                .into_iter()
                .map(|(at, reason)| Action::ReconcileAt { at, reason }),
        );
        actions
    }
}
