//! A cluster simulator for tests: a real [`MemoryStore`], the
//! orchestrators and the scheduler as a leader would run them, and agents
//! whose task reports the test controls.
//!
//! Every orchestrator pass is checked: its writes apply to the store (so
//! versions are right), desired states only move forward, and observed
//! states are never touched by the orchestrators.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use swarm_proto::v1 as pb;
use swarm_proto::v1::TaskState as S;

use super::{Action, Context, UpdateProgress, nodes_of, orchestrate};
use crate::allocator::Allocator;
use crate::scheduler::{self, FailureHistory, NodeSet};
use crate::store::{MemoryStore, StoreError, WriteTx};

pub(super) const T0: u64 = 1_700_000_000;

pub(super) fn at(s: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(T0 + s)
}

pub(super) struct Sim {
    pub store: MemoryStore,
    index: u64,
    pub now: SystemTime,
    pub progress: HashMap<String, UpdateProgress>,
    pub failures: FailureHistory,
    /// Every orchestrator action, for tests that look at them.
    pub log: Vec<Action>,
    allocator: Option<Allocator>,
}

/// A ready, active worker with 8 CPUs and 16 GB.
pub(super) fn node(id: &str) -> pb::Node {
    pb::Node {
        meta: Some(pb::Meta {
            id: id.into(),
            ..Default::default()
        }),
        spec: Some(pb::NodeSpec::default()),
        description: Some(pb::NodeDescription {
            hostname: id.into(),
            platform: Some(pb::Platform {
                os: "linux".into(),
                architecture: "x86_64".into(),
            }),
            resources: Some(pb::Resources {
                nano_cpus: 8_000_000_000,
                memory_bytes: 16 << 30,
            }),
            ..Default::default()
        }),
        status: Some(pb::NodeStatus {
            state: pb::NodeState::Ready.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A service running `image`, in `mode`.
pub(super) fn service(id: &str, mode: pb::service_spec::Mode) -> pb::Service {
    pb::Service {
        meta: Some(pb::Meta {
            id: id.into(),
            ..Default::default()
        }),
        spec: Some(pb::ServiceSpec {
            annotations: Some(pb::Annotations {
                name: format!("svc-{id}"),
                ..Default::default()
            }),
            task: Some(pb::TaskSpec {
                container: Some(pb::ContainerSpec {
                    image: "bb:1".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            mode: Some(mode),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(super) fn replicated(n: u64) -> pb::service_spec::Mode {
    pb::service_spec::Mode::Replicated(pb::ReplicatedService { replicas: n })
}

pub(super) fn global() -> pb::service_spec::Mode {
    pb::service_spec::Mode::Global(pb::GlobalService {})
}

pub(super) fn task_spec(s: &mut pb::Service) -> &mut pb::TaskSpec {
    s.spec
        .get_or_insert_with(Default::default)
        .task
        .get_or_insert_with(Default::default)
}

pub(super) fn image(t: &pb::Task) -> &str {
    t.spec
        .as_ref()
        .and_then(|s| s.container.as_ref())
        .map_or("", |c| c.image.as_str())
}

pub(super) fn st(t: &pb::Task) -> S {
    S::try_from(super::task::state(t)).unwrap_or(S::New)
}

pub(super) fn desired(t: &pb::Task) -> S {
    S::try_from(t.desired_state).unwrap_or(S::New)
}

impl Sim {
    pub fn new() -> Sim {
        Sim {
            store: MemoryStore::new(),
            index: 0,
            now: at(0),
            progress: HashMap::new(),
            failures: FailureHistory::new(),
            log: Vec::new(),
            allocator: None,
        }
    }

    pub fn commit(&mut self, actions: Vec<pb::StoreAction>) {
        if actions.is_empty() {
            return;
        }
        self.index += 1;
        let batch = pb::StoreBatch {
            timestamp: Some(self.now.into()),
            actions,
        };
        if let Err(e) = self.store.apply(self.index, batch) {
            panic!("batch failed to apply: {e}");
        }
    }

    pub fn write(&mut self, f: impl FnOnce(&mut WriteTx) -> Result<(), StoreError>) {
        let actions = self.store.prepare(f).unwrap();
        self.commit(actions);
    }

    pub fn advance(&mut self, secs: u64) {
        self.now += Duration::from_secs(secs);
    }

    pub fn add_node(&mut self, n: pb::Node) {
        self.write(|tx| tx.create(n));
    }

    pub fn set_node(&mut self, id: &str, f: impl FnOnce(&mut pb::Node)) {
        let mut n = (*self.store.view().get::<pb::Node>(id).unwrap()).clone();
        f(&mut n);
        self.write(|tx| tx.update(n));
    }

    pub fn add_service(&mut self, s: pb::Service) {
        self.write(|tx| tx.create(s));
    }

    /// `service update`, as the control API will do it: the old spec
    /// becomes the previous spec and the update status is cleared.
    pub fn update_service(&mut self, id: &str, f: impl FnOnce(&mut pb::Service)) {
        let old = (*self.service(id)).clone();
        let mut s = old.clone();
        f(&mut s);
        if s.spec != old.spec {
            s.previous_spec = old.spec;
            s.update_status = None;
        }
        self.write(|tx| tx.update(s));
    }

    pub fn service(&self, id: &str) -> Arc<pb::Service> {
        self.store.view().get::<pb::Service>(id).unwrap()
    }

    pub fn task(&self, id: &str) -> Arc<pb::Task> {
        self.store.view().get::<pb::Task>(id).unwrap()
    }

    pub fn tasks(&self, service_id: &str) -> Vec<Arc<pb::Task>> {
        self.store.view().tasks_by_service(service_id)
    }

    pub fn cluster(&self) -> Option<Arc<pb::Cluster>> {
        self.store.view().list::<pb::Cluster>().next()
    }

    /// One orchestrator pass over every service, one batch each; returns
    /// the actions.
    pub fn orchestrate(&mut self) -> Vec<Action> {
        let view = self.store.view();
        let nodes = nodes_of(&view);
        let cluster = self.cluster();
        let ctx = Context {
            now: self.now,
            nodes: &nodes,
            cluster: cluster.as_deref(),
        };
        let mut all = Vec::new();
        for service in view.list::<pb::Service>() {
            let id = service.meta.as_ref().unwrap().id.clone();
            let tasks = view.tasks_by_service(&id);
            let progress = self.progress.entry(id).or_default();
            let actions = orchestrate(&ctx, &service, &tasks, progress);
            check_actions(&view, &actions);
            let store_actions = self
                .store
                .prepare(|tx| actions.iter().cloned().try_for_each(|a| a.write(tx)))
                .unwrap();
            self.commit(store_actions);
            all.extend(actions);
        }
        self.log.extend(all.iter().cloned());
        all
    }

    /// One allocator pass, as the leader runs it before the scheduler:
    /// NEW tasks become PENDING.
    pub fn allocate(&mut self) {
        let view = self.store.view();
        let out = self
            .allocator
            .get_or_insert_with(|| Allocator::from_view(&view))
            .pass(&view, self.now);
        let actions = self.store.prepare(|tx| out.write(tx)).unwrap();
        self.commit(actions);
    }

    /// One scheduler pass (after an allocator pass); commits assignments
    /// and reasons.
    pub fn schedule(&mut self) -> scheduler::Decisions {
        self.allocate();
        let view = self.store.view();
        let set = NodeSet::from_view(&view);
        let pending = scheduler::pending_tasks(&view);
        let d = scheduler::schedule(&set, &pending, &self.failures, self.now);
        let now = self.now;
        let actions = self.store.prepare(|tx| d.write(tx, now)).unwrap();
        self.commit(actions);
        d
    }

    /// An agent report: the task moves (forward only) to `to`.
    pub fn report(&mut self, task_id: &str, to: S) {
        let mut t = (*self.task(task_id)).clone();
        assert!(
            (to as i32) > super::task::state(&t),
            "agent moved {task_id} backwards to {to:?}"
        );
        let old = t.clone();
        let status = t.status.get_or_insert_with(Default::default);
        status.state = to.into();
        status.timestamp = Some(self.now.into());
        self.failures.observe(Some(&old), &t, self.now);
        self.write(|tx| tx.update(t));
    }

    /// Agents on nodes that are up do what they are told: start assigned
    /// tasks that may run, finish job tasks, stop tasks told to stop.
    /// `fail` picks tasks that fail instead of starting.
    pub fn agents(&mut self, fail: impl FnMut(&pb::Task) -> bool) {
        self.agents_where(|_| true, fail);
    }

    /// [`agents`](Self::agents), acting only on tasks `act` picks (slow
    /// agents).
    pub fn agents_where(
        &mut self,
        mut act: impl FnMut(&pb::Task) -> bool,
        mut fail: impl FnMut(&pb::Task) -> bool,
    ) {
        let view = self.store.view();
        let up: Vec<String> = view
            .list::<pb::Node>()
            .filter(|n| {
                n.status
                    .as_ref()
                    .is_some_and(|s| s.state == pb::NodeState::Ready as i32)
            })
            .map(|n| n.meta.as_ref().unwrap().id.clone())
            .collect();
        let mut moves = Vec::new();
        for node in &up {
            for t in view.tasks_by_node(node) {
                let (s, d) = (st(&t), desired(&t));
                let id = t.meta.as_ref().unwrap().id.clone();
                if s > S::Running || !act(&t) {
                    continue;
                }
                if d >= S::Shutdown {
                    moves.push((id, S::Shutdown));
                } else if s < S::Running && d >= S::Running && s >= S::Assigned {
                    moves.push((id, if fail(&t) { S::Failed } else { S::Running }));
                } else if s == S::Running && d == S::Complete {
                    moves.push((id, S::Complete));
                } else if s < S::Ready && d == S::Ready && s >= S::Assigned {
                    moves.push((id, S::Ready));
                }
            }
        }
        for (id, to) in moves {
            self.report(&id, to);
        }
    }

    /// Orchestrate, schedule and let agents act until nothing changes
    /// (at most `rounds` rounds); returns how many rounds it took.
    pub fn settle(&mut self, rounds: usize) -> usize {
        for round in 0..rounds {
            let before = self.store.version();
            self.orchestrate();
            self.schedule();
            self.agents(|_| false);
            if self.store.version() == before {
                return round;
            }
        }
        rounds
    }
}

/// The rules every pass must keep.
fn check_actions(view: &crate::store::ReadTx, actions: &[Action]) {
    for a in actions {
        if let Action::UpdateTask { task } = a {
            let id = task.meta.as_ref().unwrap().id.as_str();
            let old = view.get::<pb::Task>(id).unwrap();
            assert!(
                task.desired_state > old.desired_state,
                "desired state of {id} went from {} to {}",
                old.desired_state,
                task.desired_state
            );
            assert_eq!(
                task.status, old.status,
                "orchestrator touched {id}'s status"
            );
            assert_eq!(task.node_id, old.node_id, "orchestrator moved {id}");
        }
        if let Action::CreateTask { task } = a {
            assert_eq!(task.meta.as_ref().unwrap().id.len(), crate::store::ID_LEN);
        }
    }
}
