//! The orchestrator loop: runs [`orchestrate`] for every service whose
//! spec, tasks or nodes changed, and for services whose pass asked to be
//! woken (restart delays, update delays and monitors); cleans up the tasks
//! of removed services.
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::SystemTime;

use swarm_proto::v1 as pb;
use swarm_proto::v1::TaskState as S;
use tokio_util::sync::CancellationToken;

use crate::orchestrator::{Action, Context, UpdateProgress, next_wake, nodes_of, orchestrate};
use crate::store::{Event, Object, ReadTx, WatchItem};
use crate::supervisor::{ControlLoop, LoopError};

use super::{LEADERSHIP_CHECK, Manager, RETRY_DELAY, Wake, propose_streamed, until_leader};

/// Which services the next pass looks at.
#[derive(Debug, Default)]
struct Dirty {
    all: bool,
    services: HashSet<String>,
    /// Services whose tasks only moved forward towards RUNNING: they need
    /// a pass only while an update waits for its new tasks to run.
    progressed: HashSet<String>,
}

/// What a task's update means to the orchestrator.
#[derive(Debug, PartialEq, Eq)]
enum TaskChange {
    /// May call for action: a new desired state, another node, an end.
    Matters,
    /// Moved forward towards RUNNING (or only its message changed):
    /// only an update waiting for its new tasks to run cares.
    Progress,
}

/// Status reports move every task through ASSIGNED, ACCEPTED, PREPARING,
/// READY, STARTING and RUNNING; a pass over a service of 100,000 tasks for
/// each batch of them took 40% of the leader's CPU during placement while
/// deciding nothing. Restarts, scaling, the reaper and update failures act
/// on ends, desired states and nodes, which always matter; only a rolling
/// update's lanes wait for RUNNING.
fn task_change(old: &pb::Task, new: &pb::Task) -> TaskChange {
    let state = |t: &pb::Task| t.status.as_ref().map_or(0, |s| s.state);
    let (before, after) = (state(old), state(new));
    // Allocation (NEW to PENDING) and assignment (PENDING to ASSIGNED, a
    // node where there was none) are progress too: a task wanted running
    // that is not yet assigned counts as stopped only for a stop-first
    // start, which waits for its old task to stop, never for this.
    if old.desired_state == new.desired_state
        && new.desired_state <= S::Running as i32
        && (old.node_id == new.node_id || old.node_id.is_empty())
        && old.slot == new.slot
        && before <= after
        && after <= S::Running as i32
    {
        TaskChange::Progress
    } else {
        TaskChange::Matters
    }
}

impl Dirty {
    fn everything() -> Self {
        Dirty {
            all: true,
            ..Dirty::default()
        }
    }

    fn is_empty(&self) -> bool {
        !self.all && self.services.is_empty() && self.progressed.is_empty()
    }

    fn note(&mut self, o: &Object) {
        match o {
            Object::Service(s) => {
                if let Some(m) = &s.meta {
                    self.services.insert(m.id.clone());
                }
            }
            Object::Task(t) if !t.service_id.is_empty() => {
                self.services.insert(t.service_id.clone());
            }
            // Node state and availability, and the cluster's task history
            // limit, concern every service.
            Object::Node(_) | Object::Cluster(_) => self.all = true,
            _ => {}
        }
    }

    /// Notes what `items` make dirty, leaving out what `seen` says the
    /// passes already took into account.
    fn note_items(&mut self, items: &[WatchItem], seen: &mut Seen) {
        for item in items {
            match item {
                WatchItem::Resync { .. } => {
                    seen.own.clear();
                    self.all = true;
                }
                WatchItem::Commit { version, events } => {
                    let mine = seen.own.remove(version);
                    seen.own.retain(|v| v > version);
                    if mine {
                        continue;
                    }
                    let in_view = *version <= seen.version;
                    for e in events {
                        if in_view && seen.covers(e) {
                            continue;
                        }
                        if let (Object::Task(new), Some(Object::Task(old))) = (&e.object, &e.old)
                            && new.service_id == old.service_id
                            && !new.service_id.is_empty()
                            && task_change(old, new) == TaskChange::Progress
                        {
                            self.progressed.insert(new.service_id.clone());
                            continue;
                        }
                        self.note(&e.object);
                        if let Some(old) = &e.old {
                            self.note(old);
                        }
                    }
                }
            }
        }
    }
}

/// What this term's passes already took into account, so that the commits
/// they read or wrote call for no other pass. Without it, the first pass
/// over a new service of 100,000 tasks was followed by a second over all of
/// them that decided nothing and held the write lock for two seconds: the
/// allocator's write of the service had landed just before the first pass
/// read its view, and reached the watch after it.
#[derive(Debug, Default)]
struct Seen {
    /// The last pass's view: commits up to this version were in it...
    version: u64,
    /// ...for every service...
    all: bool,
    /// ...or for these.
    services: HashSet<String>,
    /// Versions of the commits the passes wrote that the watch has not
    /// shown yet; forgotten once it is past them.
    own: BTreeSet<u64>,
}

impl Seen {
    /// Whether the last pass's view held `e` for every service `e`
    /// concerns (given `e` was committed by then).
    fn covers(&self, e: &Event) -> bool {
        if self.all {
            return true;
        }
        let covered = |o: &Object| match o {
            Object::Service(s) => s
                .meta
                .as_ref()
                .is_some_and(|m| self.services.contains(&m.id)),
            Object::Task(t) => t.service_id.is_empty() || self.services.contains(&t.service_id),
            // Concern every service.
            Object::Node(_) | Object::Cluster(_) => false,
            _ => true,
        };
        covered(&e.object) && e.old.as_ref().is_none_or(covered)
    }
}

/// Keeps services' tasks in line with their specs while this manager leads.
pub struct OrchestratorLoop {
    m: Manager,
}

impl std::fmt::Debug for OrchestratorLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrchestratorLoop").finish_non_exhaustive()
    }
}

/// What one term of leadership remembers between passes.
#[derive(Debug, Default)]
struct Term {
    progress: HashMap<String, UpdateProgress>,
    seen: Seen,
    /// Services that asked to be passed over again, and when.
    wakes: HashMap<String, SystemTime>,
}

impl OrchestratorLoop {
    #[must_use]
    pub fn new(m: Manager) -> Self {
        OrchestratorLoop { m }
    }

    /// One pass over the dirty services (and those due a wake-up), all its
    /// writes proposed before it returns. On error the caller retries with
    /// everything dirty.
    async fn pass(&self, term: &mut Term, dirty: &Dirty) -> Result<usize, super::UpdateError> {
        let _w = self.m.write_lock().await;
        let view = self.m.store.view();
        let now = SystemTime::now();
        let nodes = nodes_of(&view);
        let cluster = view.list::<pb::Cluster>().next();
        let ctx = Context {
            now,
            nodes: &nodes,
            cluster: cluster.as_deref(),
        };
        let mut ids: HashSet<String> = if dirty.all {
            every_service_id(&view)
        } else {
            dirty.services.clone()
        };
        // Already narrowed by the run loop to services awaiting a task.
        ids.extend(dirty.progressed.iter().cloned());
        ids.extend(
            term.wakes
                .iter()
                .filter(|(_, at)| **at <= now)
                .map(|(id, _)| id.clone()),
        );
        term.seen.version = view.version();
        term.seen.all = dirty.all;
        term.seen.services.clone_from(&ids);
        let mut actions = Vec::new();
        super::off_runtime(|| {
            for id in &ids {
                let tasks = view.tasks_by_service(id);
                match view.get::<pb::Service>(id) {
                    Some(service) => {
                        let progress = term.progress.entry(id.clone()).or_default();
                        let acts = orchestrate(&ctx, &service, &tasks, progress);
                        match next_wake(&acts) {
                            Some(at) => term.wakes.insert(id.clone(), at),
                            None => term.wakes.remove(id),
                        };
                        actions.extend(acts);
                    }
                    None => {
                        term.progress.remove(id);
                        term.wakes.remove(id);
                        actions.extend(orphans(&ctx, &tasks));
                    }
                }
            }
        });
        if actions
            .iter()
            .all(|a| matches!(a, Action::ReconcileAt { .. }))
        {
            return Ok(0);
        }
        let proposed = propose_streamed(&self.m, actions, |tx, a| a.write(tx)).await?;
        term.seen.own.extend(&proposed.versions);
        tracing::debug!(
            services = ids.len(),
            writes = proposed.actions,
            "orchestrator pass"
        );
        Ok(proposed.actions)
    }

    fn next_deadline(term: &Term) -> tokio::time::Instant {
        let check = tokio::time::Instant::now() + LEADERSHIP_CHECK;
        let now = SystemTime::now();
        term.wakes
            .values()
            .min()
            .map(|at| {
                let wait = at.duration_since(now).unwrap_or_default();
                (tokio::time::Instant::now() + wait).min(check)
            })
            .unwrap_or(check)
    }
}

/// Every service, and every service ID that tasks still name although the
/// service is gone.
fn every_service_id(view: &ReadTx) -> HashSet<String> {
    let mut ids: HashSet<String> = view
        .list::<pb::Service>()
        .filter_map(|s| s.meta.as_ref().map(|m| m.id.clone()))
        .collect();
    ids.extend(
        view.list::<pb::Task>()
            .filter(|t| !t.service_id.is_empty())
            .map(|t| t.service_id.clone()),
    );
    ids
}

/// The tasks of a removed service: all are to be removed (`service rm`
/// already said so; a pass says it again in case). A task goes from the
/// store once nothing runs it any more: it never reached a node, it has
/// stopped, or its node is gone or down (a node that comes back stops what
/// it no longer has assignments for).
fn orphans(ctx: &Context<'_>, tasks: &[Arc<pb::Task>]) -> Vec<Action> {
    let mut out = Vec::new();
    for t in tasks {
        let state = t.status.as_ref().map_or(0, |s| s.state);
        let node_up = ctx
            .nodes
            .get(&t.node_id)
            .and_then(|n| n.status.as_ref())
            .is_some_and(|s| s.state != pb::NodeState::Down as i32);
        let stopped = state < S::Assigned as i32 || state > S::Running as i32 || !node_up;
        let id = t.meta.as_ref().map_or_else(String::new, |m| m.id.clone());
        if stopped {
            out.push(Action::RemoveTask { id });
        } else if t.desired_state < S::Remove as i32 {
            let mut nt = pb::Task::clone(t);
            nt.desired_state = S::Remove as i32;
            out.push(Action::UpdateTask { task: Box::new(nt) });
        }
    }
    out
}

impl ControlLoop for OrchestratorLoop {
    fn name(&self) -> &'static str {
        "orchestrator"
    }

    async fn run(self, shutdown: CancellationToken) -> Result<(), LoopError> {
        loop {
            if !until_leader(&self.m, &shutdown).await {
                return Ok(());
            }
            tracing::info!("orchestrator: leading; reconciling every service");
            let (_, mut watch) = self.m.store.watch();
            let mut term = Term::default();
            let mut dirty = Dirty::everything();
            while self.m.is_leader() {
                let due = {
                    let now = SystemTime::now();
                    term.wakes.values().any(|at| *at <= now)
                };
                dirty.progressed.retain(|id| {
                    term.progress
                        .get(id)
                        .is_some_and(UpdateProgress::awaits_tasks)
                });
                if !dirty.is_empty() || due {
                    tracing::debug!(
                        all = dirty.all,
                        services = dirty.services.len(),
                        progressed = dirty.progressed.len(),
                        due,
                        "orchestrator pass starts"
                    );
                    match self.pass(&mut term, &dirty).await {
                        Ok(_) => dirty = Dirty::default(),
                        Err(e) => {
                            tracing::info!(error = %e, "orchestrator pass failed; retrying");
                            dirty = Dirty::everything();
                            tokio::select! {
                                () = shutdown.cancelled() => return Ok(()),
                                () = tokio::time::sleep(RETRY_DELAY) => {}
                            }
                            continue;
                        }
                    }
                }
                match super::next_wake(&mut watch, Self::next_deadline(&term), &shutdown).await {
                    Wake::Shutdown => return Ok(()),
                    Wake::Deadline => {}
                    Wake::Items(items) => dirty.note_items(&items, &mut term.seen),
                }
            }
            tracing::info!("orchestrator: no longer leading");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testutil;

    fn running_on(id: &str, node: &str, state: S) -> Arc<pb::Task> {
        let mut t = testutil::task(id, "gone", 1, node);
        t.status = Some(pb::TaskStatus {
            state: state as i32,
            ..Default::default()
        });
        t.desired_state = S::Running as i32;
        Arc::new(t)
    }

    #[test]
    fn tasks_of_a_removed_service_go_once_stopped() {
        let mut up = testutil::node("up", "up");
        up.status = Some(pb::NodeStatus {
            state: pb::NodeState::Ready as i32,
            ..Default::default()
        });
        let mut down = testutil::node("down", "down");
        down.status = Some(pb::NodeStatus {
            state: pb::NodeState::Down as i32,
            ..Default::default()
        });
        let nodes = [("up", up), ("down", down)]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), Arc::new(v)))
            .collect();
        let ctx = Context {
            now: SystemTime::UNIX_EPOCH,
            nodes: &nodes,
            cluster: None,
        };
        let tasks = vec![
            running_on("a", "up", S::Running),
            running_on("b", "up", S::Shutdown),
            running_on("c", "down", S::Running),
            running_on("d", "", S::Pending),
            running_on("e", "gone-node", S::Running),
        ];
        let acts = orphans(&ctx, &tasks);
        let removed: Vec<&str> = acts
            .iter()
            .filter_map(|a| match a {
                Action::RemoveTask { id } => Some(id.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(removed, ["b", "c", "d", "e"]);
        let Some(Action::UpdateTask { task }) = acts.first() else {
            panic!("first action should stop the running task: {acts:?}");
        };
        assert_eq!(task.desired_state, S::Remove as i32);
    }

    fn at(state: S, desired: S) -> pb::Task {
        let mut t = testutil::task("t", "svc", 1, "n");
        t.status = Some(pb::TaskStatus {
            state: state as i32,
            ..Default::default()
        });
        t.desired_state = desired as i32;
        t
    }

    #[test]
    fn only_moves_towards_running_are_progress() {
        let run = S::Running;
        for (from, to) in [
            (S::Assigned, S::Accepted),
            (S::Accepted, S::Running),
            (S::Starting, S::Running),
            (S::Running, S::Running),
        ] {
            assert_eq!(
                task_change(&at(from, run), &at(to, run)),
                TaskChange::Progress,
                "{from:?} -> {to:?}"
            );
        }
        let mut unassigned = at(S::Pending, run);
        unassigned.node_id.clear();
        assert_eq!(
            task_change(&unassigned, &at(S::Assigned, run)),
            TaskChange::Progress,
            "the scheduler's assignment"
        );
        let matters = [
            (at(S::Running, run), at(S::Accepted, run)),
            (at(S::Running, run), at(S::Failed, run)),
            (at(S::Running, run), at(S::Complete, run)),
            (at(S::Running, run), at(S::Running, S::Shutdown)),
            // A task told to stop: its progress is the stop's.
            (at(S::Running, S::Shutdown), at(S::Running, S::Shutdown)),
        ];
        for (old, new) in &matters {
            assert_eq!(
                task_change(old, new),
                TaskChange::Matters,
                "{old:?} -> {new:?}"
            );
        }
        let mut moved = at(S::Running, run);
        moved.node_id = "elsewhere".into();
        assert_eq!(
            task_change(&at(S::Running, run), &moved),
            TaskChange::Matters
        );
    }

    #[test]
    fn progress_reports_alone_do_not_dirty_a_service() {
        use crate::store::{Event, EventKind};
        let event = |old: pb::Task, new: pb::Task| Event {
            kind: EventKind::Updated,
            version: 1,
            object: Object::Task(Arc::new(new)),
            old: Some(Object::Task(Arc::new(old))),
        };
        let mut d = Dirty::default();
        d.note_items(
            &[WatchItem::Commit {
                version: 1,
                events: vec![event(
                    at(S::Assigned, S::Running),
                    at(S::Running, S::Running),
                )],
            }],
            &mut Seen::default(),
        );
        assert!(d.services.is_empty());
        assert!(d.progressed.contains("svc"));
        d.note_items(
            &[WatchItem::Commit {
                version: 2,
                events: vec![event(at(S::Running, S::Running), at(S::Failed, S::Running))],
            }],
            &mut Seen::default(),
        );
        assert!(d.services.contains("svc"));
    }

    fn created(version: u64, service: &str) -> WatchItem {
        use crate::store::EventKind;
        WatchItem::Commit {
            version,
            events: vec![Event {
                kind: EventKind::Created,
                version,
                object: Object::Task(Arc::new(testutil::task("t", service, 1, ""))),
                old: None,
            }],
        }
    }

    #[test]
    fn the_loops_own_commits_make_nothing_dirty() {
        use crate::store::{MemoryStore, ResyncReason};
        let mut seen = Seen {
            own: [3, 4, 9].into(),
            ..Seen::default()
        };
        let mut d = Dirty::default();
        d.note_items(&[created(3, "svc"), created(4, "svc")], &mut seen);
        assert!(d.is_empty(), "{d:?}");
        // Someone else's commit counts; own versions it passed are forgotten.
        d.note_items(&[created(10, "svc")], &mut seen);
        assert!(d.services.contains("svc"));
        assert!(seen.own.is_empty(), "{seen:?}");
        seen.own.insert(11);
        let resync = WatchItem::Resync {
            view: MemoryStore::new().view(),
            reason: ResyncReason::Restored,
        };
        Dirty::default().note_items(&[resync], &mut seen);
        assert!(seen.own.is_empty());
    }

    #[test]
    fn commits_the_last_pass_read_count_only_for_services_it_left_out() {
        let mut seen = Seen {
            version: 5,
            services: ["a".to_owned()].into(),
            ..Seen::default()
        };
        let mut d = Dirty::default();
        // In the pass's view and of a service it looked at: nothing to do.
        d.note_items(&[created(5, "a")], &mut seen);
        assert!(d.is_empty(), "{d:?}");
        // In its view, but of a service it did not look at.
        d.note_items(&[created(5, "b")], &mut seen);
        assert!(d.services.contains("b"));
        // After its view.
        let mut d = Dirty::default();
        d.note_items(&[created(6, "a")], &mut seen);
        assert!(d.services.contains("a"));
        // A node change concerns every service, unless the pass looked at all.
        let node = |version| WatchItem::Commit {
            version,
            events: vec![Event {
                kind: crate::store::EventKind::Created,
                version,
                object: Object::Node(Arc::new(testutil::node("n", "n"))),
                old: None,
            }],
        };
        let mut d = Dirty::default();
        d.note_items(&[node(4)], &mut seen);
        assert!(d.all);
        seen.all = true;
        let mut d = Dirty::default();
        d.note_items(&[node(4)], &mut seen);
        assert!(d.is_empty(), "{d:?}");
    }

    #[test]
    fn node_changes_make_every_service_dirty() {
        let mut d = Dirty::default();
        d.note(&Object::Task(Arc::new(testutil::task("t", "svc", 1, "n"))));
        assert!(!d.all);
        assert!(d.services.contains("svc"));
        d.note(&Object::Node(Arc::new(testutil::node("n", "n"))));
        assert!(d.all);
    }
}
