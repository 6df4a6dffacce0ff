//! The latest status of every task on this node, and which of them the
//! dispatcher has not heard yet. Task managers write here; the agent's
//! session takes batches of what changed and ships them.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};

use swarm_proto::v1::{self as pb, TaskState};
use tokio::sync::Notify;

/// Updates per UpdateTaskStatus call: far below gRPC's 4 MiB message limit
/// (a status is about 100 bytes).
pub const MAX_BATCH: usize = 5000;

#[derive(Default)]
struct Board {
    /// Statuses this worker reported, by task.
    reported: HashMap<String, pb::TaskStatus>,
    /// States of every managed task (reported or as the managers last
    /// knew it), for the `swarm_agent_tasks` gauge.
    states: HashMap<String, i32>,
    /// Reported but not yet sent.
    dirty: BTreeSet<String>,
}

/// See the module docs.
#[derive(Default)]
pub struct StatusBoard {
    board: Mutex<Board>,
    notify: Notify,
}

impl std::fmt::Debug for StatusBoard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = self.lock();
        f.debug_struct("StatusBoard")
            .field("tasks", &b.states.len())
            .field("unsent", &b.dirty.len())
            .finish()
    }
}

impl StatusBoard {
    fn lock(&self) -> MutexGuard<'_, Board> {
        self.board.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records `status` as the task's latest, to be sent. A status with a
    /// lower state than one already recorded is dropped (states only move
    /// forward); returns whether it was recorded.
    pub fn report(&self, task_id: &str, status: pb::TaskStatus) -> bool {
        let mut b = self.lock();
        let floor = b.states.get(task_id).copied().unwrap_or(0);
        if status.state < floor {
            tracing::warn!(
                task = task_id,
                from = floor,
                to = status.state,
                "refusing to report a task state lower than one already reported"
            );
            return false;
        }
        b.states.insert(task_id.to_owned(), status.state);
        b.reported.insert(task_id.to_owned(), status);
        b.dirty.insert(task_id.to_owned());
        drop(b);
        self.notify.notify_one();
        true
    }

    /// The state the managers already know for a task this worker has not
    /// reported on (it came with the assignment): counted, never sent.
    pub fn known(&self, task_id: &str, state: i32) {
        let mut b = self.lock();
        let cur = b.states.entry(task_id.to_owned()).or_insert(state);
        *cur = (*cur).max(state);
    }

    /// The task left the assignments: nothing more to say about it.
    pub fn forget(&self, task_id: &str) {
        let mut b = self.lock();
        b.states.remove(task_id);
        b.reported.remove(task_id);
        b.dirty.remove(task_id);
    }

    /// A new session: the new leader may have missed anything, so every
    /// reported status is sent again.
    pub fn resend_all(&self) {
        let mut b = self.lock();
        let all: Vec<String> = b.reported.keys().cloned().collect();
        b.dirty.extend(all);
        let any = !b.dirty.is_empty();
        drop(b);
        if any {
            self.notify.notify_one();
        }
    }

    /// Waits until something is unsent. Only one waiter (the agent's
    /// session) is expected.
    pub async fn changed(&self) {
        loop {
            if !self.lock().dirty.is_empty() {
                return;
            }
            // A report between the check and here left a permit: no
            // wake-up is lost.
            self.notify.notified().await;
        }
    }

    /// Up to `max` unsent statuses, now counted as sent.
    pub fn take(&self, max: usize) -> Vec<pb::update_task_status_request::TaskStatusUpdate> {
        let mut b = self.lock();
        let ids: Vec<String> = b.dirty.iter().take(max).cloned().collect();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            b.dirty.remove(&id);
            if let Some(s) = b.reported.get(&id) {
                out.push(pb::update_task_status_request::TaskStatusUpdate {
                    task_id: id,
                    status: Some(s.clone()),
                });
            }
        }
        out
    }

    /// The latest status reported for a task.
    pub fn get(&self, task_id: &str) -> Option<pb::TaskStatus> {
        self.lock().reported.get(task_id).cloned()
    }

    /// Managed tasks by state (lower-case names, as in metrics).
    pub fn counts(&self) -> BTreeMap<String, i64> {
        let b = self.lock();
        let mut out = BTreeMap::new();
        for s in b.states.values() {
            let name = TaskState::try_from(*s)
                .map(|t| {
                    t.as_str_name()
                        .trim_start_matches("TASK_STATE_")
                        .to_ascii_lowercase()
                })
                .unwrap_or_else(|_| s.to_string());
            *out.entry(name).or_default() += 1;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(state: TaskState) -> pb::TaskStatus {
        pb::TaskStatus {
            state: state as i32,
            ..Default::default()
        }
    }

    #[test]
    fn changes_coalesce_into_one_batch() {
        let b = StatusBoard::default();
        for i in 0..1000 {
            b.report(&format!("t{i}"), status(TaskState::Accepted));
            b.report(&format!("t{i}"), status(TaskState::Preparing));
        }
        let batch = b.take(MAX_BATCH);
        assert_eq!(batch.len(), 1000);
        assert!(
            batch
                .iter()
                .all(|u| u.status.as_ref().unwrap().state == TaskState::Preparing as i32)
        );
        assert!(b.take(MAX_BATCH).is_empty());
    }

    #[test]
    fn batches_are_bounded() {
        let b = StatusBoard::default();
        for i in 0..10 {
            b.report(&format!("t{i}"), status(TaskState::Accepted));
        }
        assert_eq!(b.take(4).len(), 4);
        assert_eq!(b.take(4).len(), 4);
        assert_eq!(b.take(4).len(), 2);
    }

    #[test]
    fn states_never_go_back() {
        let b = StatusBoard::default();
        assert!(b.report("t", status(TaskState::Running)));
        assert!(!b.report("t", status(TaskState::Preparing)));
        assert_eq!(b.get("t").unwrap().state, TaskState::Running as i32);
        // Equal states may refresh the details.
        assert!(b.report("t", status(TaskState::Running)));
        // What the managers knew counts as a floor too.
        b.known("u", TaskState::Running as i32);
        assert!(!b.report("u", status(TaskState::Ready)));
    }

    #[test]
    fn a_new_session_resends_what_was_reported() {
        let b = StatusBoard::default();
        b.report("a", status(TaskState::Running));
        b.known("quiet", TaskState::Complete as i32);
        assert_eq!(b.take(MAX_BATCH).len(), 1);
        b.resend_all();
        let again = b.take(MAX_BATCH);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].task_id, "a");
        b.forget("a");
        b.resend_all();
        assert!(b.take(MAX_BATCH).is_empty());
    }

    #[test]
    fn counts_by_state() {
        let b = StatusBoard::default();
        b.report("a", status(TaskState::Running));
        b.report("b", status(TaskState::Running));
        b.known("c", TaskState::Failed as i32);
        let c = b.counts();
        assert_eq!(c["running"], 2);
        assert_eq!(c["failed"], 1);
    }

    #[tokio::test(start_paused = true)]
    async fn changed_wakes_on_a_report() {
        let b = std::sync::Arc::new(StatusBoard::default());
        let w = tokio::spawn({
            let b = b.clone();
            async move { b.changed().await }
        });
        tokio::task::yield_now().await;
        assert!(!w.is_finished());
        b.report("a", status(TaskState::Accepted));
        tokio::time::timeout(std::time::Duration::from_secs(1), w)
            .await
            .unwrap()
            .unwrap();
    }
}
