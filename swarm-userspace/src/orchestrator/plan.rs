//! A plan: one service's tasks as the stages of a pass have left them.
//!
//! Each stage (reconcile, update, reap) reads the plan, so it sees what the
//! stages before it decided, and writes to it; at the end the plan becomes
//! the fewest [`Action`]s: one create per new task, one update per changed
//! task, one removal per removed task. Desired states only move forward.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::SystemTime;

use swarm_proto::v1 as pb;

use super::task::id;
use super::{Action, SlotKey, WakeReason};

struct Entry {
    task: Arc<pb::Task>,
    /// As read from the store; `None` for a task this pass creates.
    original: Option<Arc<pb::Task>>,
    removed: bool,
}

pub(crate) struct Plan {
    entries: BTreeMap<String, Entry>,
    /// IDs of created tasks, in creation order.
    created: Vec<String>,
    service: Option<pb::Service>,
    remove_service: Option<String>,
    wakes: Vec<(SystemTime, WakeReason)>,
    /// Instances whose restart waits for its delay: the updater leaves them
    /// to the restart rules.
    pub waiting: BTreeSet<SlotKey>,
}

impl Plan {
    pub fn new(tasks: &[Arc<pb::Task>]) -> Plan {
        Plan {
            entries: tasks
                .iter()
                .map(|t| {
                    (
                        id(t).to_owned(),
                        Entry {
                            task: Arc::clone(t),
                            original: Some(Arc::clone(t)),
                            removed: false,
                        },
                    )
                })
                .collect(),
            created: Vec::new(),
            service: None,
            remove_service: None,
            wakes: Vec::new(),
            waiting: BTreeSet::new(),
        }
    }

    pub fn get(&self, task_id: &str) -> Option<&pb::Task> {
        self.entries
            .get(task_id)
            .filter(|e| !e.removed)
            .map(|e| &*e.task)
    }

    /// The task as the store holds it (`None` if this pass created it).
    pub fn original(&self, task_id: &str) -> Option<&pb::Task> {
        self.entries
            .get(task_id)
            .and_then(|e| e.original.as_deref())
    }

    /// Every task not removed, by ID.
    pub fn tasks(&self) -> impl Iterator<Item = &pb::Task> {
        self.entries
            .values()
            .filter(|e| !e.removed)
            .map(|e| &*e.task)
    }

    pub fn is_empty(&self) -> bool {
        self.tasks().next().is_none()
    }

    /// Groups the tasks by `key` (tasks it maps to `None` are left out);
    /// IDs in each group sorted.
    pub fn group_by(
        &self,
        key: impl Fn(&pb::Task) -> Option<SlotKey>,
    ) -> BTreeMap<SlotKey, Vec<String>> {
        let mut groups: BTreeMap<SlotKey, Vec<String>> = BTreeMap::new();
        for t in self.tasks() {
            if let Some(k) = key(t) {
                groups.entry(k).or_default().push(id(t).to_owned());
            }
        }
        groups
    }

    /// Raises the task's desired state to `to`; never lowers it.
    pub fn set_desired(&mut self, task_id: &str, to: pb::TaskState) {
        if let Some(e) = self.entries.get_mut(task_id).filter(|e| !e.removed)
            && e.task.desired_state < to as i32
        {
            Arc::make_mut(&mut e.task).desired_state = to.into();
        }
    }

    pub fn create(&mut self, task: pb::Task) -> String {
        let task_id = id(&task).to_owned();
        self.created.push(task_id.clone());
        self.entries.insert(
            task_id.clone(),
            Entry {
                task: Arc::new(task),
                original: None,
                removed: false,
            },
        );
        task_id
    }

    pub fn remove(&mut self, task_id: &str) {
        if let Some(e) = self.entries.get_mut(task_id) {
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
    /// by task ID, then the service, then wake-ups (earliest first).
    pub fn into_actions(mut self) -> Vec<Action> {
        let mut actions = Vec::new();
        for task_id in &self.created {
            if let Some(e) = self.entries.remove(task_id)
                && !e.removed
            {
                actions.push(Action::CreateTask {
                    task: Box::new(Arc::unwrap_or_clone(e.task)),
                });
            }
        }
        for (task_id, e) in self.entries {
            let Some(original) = e.original else {
                continue;
            };
            if e.removed {
                actions.push(Action::RemoveTask { id: task_id });
            } else if !Arc::ptr_eq(&e.task, &original) && *e.task != *original {
                actions.push(Action::UpdateTask {
                    task: Box::new(Arc::unwrap_or_clone(e.task)),
                });
            }
        }
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
