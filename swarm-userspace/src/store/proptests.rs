//! Property tests: determinism across replicas, atomic batches, watch
//! replay, index consistency, and that prepared batches apply.

use std::collections::BTreeMap;

use proptest::prelude::*;
use swarm_proto::v1 as pb;
use swarm_proto::v1::store_action::Target;

use super::testutil::*;
use super::*;

#[derive(Debug, Clone, Copy)]
enum Kind {
    Service,
    Task,
    Node,
    Secret,
}

#[derive(Debug, Clone, Copy)]
enum Action {
    Create,
    Update,
    Remove,
}

#[derive(Debug, Clone)]
struct Op {
    action: Action,
    kind: Kind,
    n: u8,
    name: u8,
    upper: bool,
    node: u8,
    slot: u8,
    /// Take `n` and `name` literally, which often breaks a rule; otherwise
    /// aim at an object and name that make the action valid.
    raw: bool,
    /// For a raw update: claim a version the object does not have.
    stale: bool,
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        Just(Kind::Service),
        Just(Kind::Task),
        Just(Kind::Node),
        Just(Kind::Secret)
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let action = prop_oneof![4 => Just(Action::Create), 4 => Just(Action::Update), 2 => Just(Action::Remove)];
    (
        action,
        kind(),
        (0..6u8, 0..6u8, any::<bool>(), 0..4u8, 0..3u8),
        prop::bool::weighted(0.1),
        any::<bool>(),
    )
        .prop_map(
            |(action, kind, (n, name, upper, node, slot), raw, stale)| Op {
                action,
                kind,
                n,
                name,
                upper,
                node,
                slot,
                raw,
                stale,
            },
        )
}

// Small ID and name spaces so raw creates collide, raw updates sometimes
// find their targets and names conflict often enough to matter.
const SPACE: u8 = 6;

fn id(kind: Kind, n: u8) -> String {
    format!("{}{n}", format!("{kind:?}").to_lowercase())
}

fn node_id(n: u8) -> String {
    if n == 0 {
        String::new()
    } else {
        format!("node{n}")
    }
}

fn fresh(kind: Kind, n: u8, name: &str, on: u8, slot: u8) -> Target {
    let id = id(kind, n);
    match kind {
        Kind::Service => Target::Service(Box::new(service(&id, name))),
        Kind::Task => {
            let mut t = task(
                &id,
                &format!("service{}", n % 2),
                u64::from(slot),
                &node_id(on),
            );
            // Updates move tasks between states, for the per-state counts.
            let state = [
                pb::TaskState::New,
                pb::TaskState::Assigned,
                pb::TaskState::Running,
            ][usize::from((on + slot) % 3)];
            t.status = Some(pb::TaskStatus {
                state: state as i32,
                ..Default::default()
            });
            Target::Task(Box::new(t))
        }
        Kind::Node => Target::Node(Box::new(node(&id, name))),
        Kind::Secret => Target::Secret(Box::new(secret(&id, name))),
    }
}

fn current(kind: Kind, view: &ReadTx, id: &str) -> Option<Target> {
    fn get<T: StoreObject>(view: &ReadTx, id: &str) -> Option<Box<T>> {
        view.get::<T>(id).map(|o| Box::new(T::clone(&o)))
    }
    match kind {
        Kind::Service => get::<pb::Service>(view, id).map(Target::Service),
        Kind::Task => get::<pb::Task>(view, id).map(Target::Task),
        Kind::Node => get::<pb::Node>(view, id).map(Target::Node),
        Kind::Secret => get::<pb::Secret>(view, id).map(Target::Secret),
    }
}

fn ids(kind: Kind, view: &ReadTx) -> Vec<String> {
    fn all<T: StoreObject>(view: &ReadTx) -> Vec<String> {
        view.list::<T>().map(|o| o.id().to_owned()).collect()
    }
    match kind {
        Kind::Service => all::<pb::Service>(view),
        Kind::Task => all::<pb::Task>(view),
        Kind::Node => all::<pb::Node>(view),
        Kind::Secret => all::<pb::Secret>(view),
    }
}

fn name_taken(kind: Kind, view: &ReadTx, name: &str) -> bool {
    match kind {
        Kind::Service => view.get_by_name::<pb::Service>(name).is_some(),
        Kind::Secret => view.get_by_name::<pb::Secret>(name).is_some(),
        // Node names may repeat; tasks have none.
        Kind::Node | Kind::Task => false,
    }
}

fn set_name(target: &mut Target, name: &str) {
    let annotations = |a: &mut Option<pb::Annotations>| {
        a.get_or_insert_with(Default::default).name = name.to_owned()
    };
    match target {
        Target::Service(s) => {
            annotations(&mut s.spec.get_or_insert_with(Default::default).annotations)
        }
        Target::Secret(s) => {
            annotations(&mut s.spec.get_or_insert_with(Default::default).annotations)
        }
        Target::Node(n) => {
            n.description.get_or_insert_with(Default::default).hostname = name.to_owned()
        }
        _ => {}
    }
}

fn meta_mut(target: &mut Target) -> &mut pb::Meta {
    match target {
        Target::Service(o) => o.meta_mut(),
        Target::Task(o) => o.meta_mut(),
        Target::Node(o) => o.meta_mut(),
        Target::Secret(o) => o.meta_mut(),
        Target::Cluster(o) => o.meta_mut(),
        Target::Network(o) => o.meta_mut(),
        Target::Config(o) => o.meta_mut(),
        Target::TaskStatus(_) | Target::TaskAssignment(_) => {
            unreachable!("the generators make no status reports or assignments")
        }
    }
}

/// What earlier actions of the batch being built have claimed.
#[derive(Default)]
struct Claims {
    objects: std::collections::HashSet<(String, String)>,
    names: std::collections::HashSet<String>,
}

impl Claims {
    fn object(&self, kind: Kind, id: &str) -> bool {
        self.objects.contains(&(format!("{kind:?}"), id.to_owned()))
    }
    fn name(&self, kind: Kind, name: &str) -> bool {
        self.names
            .contains(&format!("{kind:?}/{}", name.to_ascii_lowercase()))
    }
    fn claim(&mut self, kind: Kind, id: &str, name: Option<&str>) {
        self.objects.insert((format!("{kind:?}"), id.to_owned()));
        if let Some(name) = name {
            self.names
                .insert(format!("{kind:?}/{}", name.to_ascii_lowercase()));
        }
    }
}

fn action(kind: pb::StoreActionKind, target: Target) -> pb::StoreAction {
    pb::StoreAction {
        kind: kind.into(),
        target: Some(target),
    }
}

/// Turns an op into an action against `view`: a valid one unless the op is
/// raw (or nothing valid is left), so that most batches apply and some fail
/// anywhere in the middle.
fn resolve(op: &Op, view: &ReadTx, claims: &mut Claims) -> pb::StoreAction {
    let kind = op.kind;
    let free_name = |claims: &Claims, from: u8| {
        (0..SPACE)
            .map(|j| {
                let n = (from + j) % SPACE;
                if op.upper {
                    format!("Name{n}")
                } else {
                    format!("name{n}")
                }
            })
            .find(|name| !name_taken(kind, view, name) && !claims.name(kind, name))
    };
    let existing: Vec<String> = ids(kind, view)
        .into_iter()
        .filter(|id| !claims.object(kind, id))
        .collect();
    // Nothing to update or remove: create something instead.
    let act = if !op.raw && existing.is_empty() {
        Action::Create
    } else {
        op.action
    };
    match act {
        Action::Create => {
            let free_id = (0..SPACE).map(|j| (op.n + j) % SPACE).find(|n| {
                current(kind, view, &id(kind, *n)).is_none() && !claims.object(kind, &id(kind, *n))
            });
            let name = free_name(claims, op.name);
            let (n, name) = match (op.raw, free_id, name) {
                (false, Some(n), Some(name)) => (n, name),
                _ => (op.n, format!("name{}", op.name)),
            };
            claims.claim(kind, &id(kind, n), Some(&name));
            action(
                pb::StoreActionKind::Create,
                fresh(kind, n, &name, op.node, op.slot),
            )
        }
        Action::Update => {
            let target_id = if op.raw || existing.is_empty() {
                id(kind, op.n)
            } else {
                existing[usize::from(op.n) % existing.len()].clone()
            };
            let mut target = current(kind, view, &target_id)
                .unwrap_or_else(|| fresh(kind, op.n, "missing", 0, 0));
            // Rename half the time, to a free name unless raw.
            if op.name % 2 == 1 {
                let name = if op.raw {
                    Some(format!("name{}", op.name))
                } else {
                    free_name(claims, op.name)
                };
                if let Some(name) = name {
                    set_name(&mut target, &name);
                    claims.claim(kind, &target_id, Some(&name));
                }
            }
            claims.claim(kind, &target_id, None);
            if let Target::Task(t) = &mut target {
                t.node_id = node_id(op.node);
            }
            if op.raw && op.stale {
                meta_mut(&mut target).version += 1;
            }
            action(pb::StoreActionKind::Update, target)
        }
        Action::Remove => {
            let target_id = if op.raw || existing.is_empty() {
                id(kind, op.n)
            } else {
                existing[usize::from(op.n) % existing.len()].clone()
            };
            claims.claim(kind, &target_id, None);
            match kind {
                Kind::Service => remove::<pb::Service>(&target_id),
                Kind::Task => remove::<pb::Task>(&target_id),
                Kind::Node => remove::<pb::Node>(&target_id),
                Kind::Secret => remove::<pb::Secret>(&target_id),
            }
        }
    }
}

/// The state an event stream describes, rebuilt from a snapshot plus events.
#[derive(Default)]
struct Model {
    version: u64,
    objects: BTreeMap<(ObjectKind, String), Object>,
}

impl Model {
    fn from_view(view: &ReadTx) -> Model {
        fn add<T: StoreObject>(m: &mut Model, view: &ReadTx) {
            for o in view.list::<T>() {
                m.objects
                    .insert((T::KIND, o.id().to_owned()), T::into_object(o));
            }
        }
        let mut m = Model {
            version: view.version(),
            ..Model::default()
        };
        add::<pb::Cluster>(&mut m, view);
        add::<pb::Node>(&mut m, view);
        add::<pb::Service>(&mut m, view);
        add::<pb::Task>(&mut m, view);
        add::<pb::Network>(&mut m, view);
        add::<pb::Secret>(&mut m, view);
        add::<pb::Config>(&mut m, view);
        m
    }

    fn apply(&mut self, e: &Event) {
        let key = (e.object.kind(), e.object.id().to_owned());
        match e.kind {
            EventKind::Created | EventKind::Updated => {
                self.objects.insert(key, e.object.clone());
            }
            EventKind::Removed => {
                self.objects.remove(&key);
            }
        }
    }

    fn snapshot(&self) -> pb::StoreSnapshot {
        let mut s = pb::StoreSnapshot {
            version: self.version,
            ..Default::default()
        };
        for o in self.objects.values() {
            match o {
                Object::Cluster(o) => s.clusters.push(pb::Cluster::clone(o)),
                Object::Node(o) => s.nodes.push(pb::Node::clone(o)),
                Object::Service(o) => s.services.push(pb::Service::clone(o)),
                Object::Task(o) => s.tasks.push(pb::Task::clone(o)),
                Object::Network(o) => s.networks.push(pb::Network::clone(o)),
                Object::Secret(o) => s.secrets.push(pb::Secret::clone(o)),
                Object::Config(o) => s.configs.push(pb::Config::clone(o)),
            }
        }
        s
    }
}

/// Every index answers what a scan of the table answers.
fn check_indexes(view: &ReadTx) -> Result<(), TestCaseError> {
    let tasks: Vec<_> = view.list::<pb::Task>().collect();
    let ids =
        |v: Vec<std::sync::Arc<pb::Task>>| v.iter().map(|t| t.id().to_owned()).collect::<Vec<_>>();
    let scan = |f: &dyn Fn(&pb::Task) -> bool| {
        tasks
            .iter()
            .filter(|t| f(t))
            .map(|t| t.id().to_owned())
            .collect::<Vec<_>>()
    };
    for s in ["service0", "service1", "service9"] {
        let mut by_service = ids(view.tasks_by_service(s));
        by_service.sort();
        prop_assert_eq!(by_service, scan(&|t| t.service_id == s));
        for slot in 0..3 {
            prop_assert_eq!(
                ids(view.tasks_by_slot(s, slot)),
                scan(&|t| t.service_id == s && t.slot == slot)
            );
        }
    }
    for n in 1..4 {
        let n = node_id(n);
        prop_assert_eq!(ids(view.tasks_by_node(&n)), scan(&|t| t.node_id == n));
    }
    let mut by_state = std::collections::BTreeMap::<i32, usize>::new();
    for t in &tasks {
        *by_state
            .entry(t.status.as_ref().map_or(0, |s| s.state))
            .or_default() += 1;
    }
    prop_assert_eq!(
        view.task_state_counts()
            .collect::<std::collections::BTreeMap<_, _>>(),
        by_state
    );
    for s in view.list::<pb::Service>() {
        let name = s.name().unwrap_or_default().to_uppercase();
        prop_assert_eq!(
            view.get_by_name::<pb::Service>(&name)
                .map(|o| o.id().to_owned()),
            Some(s.id().to_owned())
        );
    }
    let nodes: Vec<_> = view.list::<pb::Node>().collect();
    for n in &nodes {
        let name = n.name().unwrap_or_default();
        let scanned = nodes
            .iter()
            .filter(|o| o.name().unwrap_or_default().eq_ignore_ascii_case(name))
            .count();
        prop_assert_eq!(view.find_by_name::<pb::Node>(name).len(), scanned);
    }
    Ok(())
}

fn strip_meta(mut s: pb::StoreSnapshot) -> pb::StoreSnapshot {
    fn strip<T: StoreObject>(v: &mut [T]) {
        for o in v {
            let id = o.id().to_owned();
            *o.meta_mut() = pb::Meta {
                id,
                ..Default::default()
            };
        }
    }
    s.version = 0;
    strip(&mut s.nodes);
    strip(&mut s.services);
    strip(&mut s.tasks);
    strip(&mut s.secrets);
    s
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Two replicas applying the same batches in the same order agree on
    /// every result and on every byte of state; failed batches change
    /// nothing; and the watch stream replayed onto the first view gives the
    /// final state.
    #[test]
    fn replicas_agree_and_watch_replays(
        batches in prop::collection::vec(prop::collection::vec(op(), 1..6), 1..40),
        gaps in prop::collection::vec(1..4u64, 40),
    ) {
        let a = MemoryStore::with_watch_capacity(64);
        let b = MemoryStore::new();
        let (initial, mut watch) = a.watch();
        let mut index = 0;
        for (i, ops) in batches.iter().enumerate() {
            let view = a.view();
            let mut claims = Claims::default();
            let actions: Vec<_> = ops.iter().map(|op| resolve(op, &view, &mut claims)).collect();
            index += gaps[i];
            let seconds = i64::try_from(i).unwrap_or_default();
            let before = a.snapshot_bytes();
            let ra = a.apply(index, batch(seconds, actions.clone()));
            let rb = b.apply(index, batch(seconds, actions));
            prop_assert_eq!(&ra, &rb);
            match &ra {
                Ok(events) => prop_assert!(events.iter().all(|e| e.version == index)),
                Err(_) => prop_assert_eq!(a.snapshot_bytes(), before),
            }
            check_indexes(&a.view())?;
        }
        prop_assert_eq!(a.snapshot_bytes(), b.snapshot_bytes());

        let mut model = Model::from_view(&initial);
        while let Some(item) = watch.try_recv() {
            match item {
                WatchItem::Commit { version, events } => {
                    prop_assert!(version > model.version);
                    model.version = version;
                    for e in &events {
                        prop_assert_eq!(e.version, version);
                        model.apply(e);
                    }
                }
                WatchItem::Resync { reason, .. } => prop_assert!(false, "unexpected resync {:?}", reason),
            }
        }
        prop_assert_eq!(model.snapshot(), a.snapshot());

        // A restored replica is the same store too.
        let c = MemoryStore::new();
        c.restore_bytes(&a.snapshot_bytes()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(c.snapshot_bytes(), a.snapshot_bytes());
        check_indexes(&c.view())?;
    }

    /// Whatever a leader's transaction accepted applies cleanly to the store
    /// it was prepared on, and yields what the transaction saw.
    #[test]
    fn prepared_batches_apply(
        setup in prop::collection::vec(op(), 0..25),
        tx_ops in prop::collection::vec(op(), 1..15),
    ) {
        let store = MemoryStore::new();
        for (i, op) in setup.iter().enumerate() {
            let action = resolve(op, &store.view(), &mut Claims::default());
            let index = u64::try_from(i).unwrap_or_default() + 1;
            if store.apply(index, batch(1, vec![action])).is_err() {
                store.apply(index, batch(1, vec![])).map_err(|e| TestCaseError::fail(e.to_string()))?;
            }
        }
        let mut seen = None;
        let actions = store
            .prepare(|tx| {
                for op in &tx_ops {
                    // The transaction sees its own writes: no claims needed.
                    let action = resolve(op, tx, &mut Claims::default());
                    // Refused writes are simply not part of the batch.
                    let _ = match (action.kind(), action.target) {
                        (pb::StoreActionKind::Create, Some(Target::Service(o))) => tx.create(*o),
                        (pb::StoreActionKind::Create, Some(Target::Task(o))) => tx.create(*o),
                        (pb::StoreActionKind::Create, Some(Target::Node(o))) => tx.create(*o),
                        (pb::StoreActionKind::Create, Some(Target::Secret(o))) => tx.create(*o),
                        (pb::StoreActionKind::Update, Some(Target::Service(o))) => tx.update(*o),
                        (pb::StoreActionKind::Update, Some(Target::Task(o))) => tx.update(*o),
                        (pb::StoreActionKind::Update, Some(Target::Node(o))) => tx.update(*o),
                        (pb::StoreActionKind::Update, Some(Target::Secret(o))) => tx.update(*o),
                        (pb::StoreActionKind::Remove, Some(Target::Service(o))) => tx.remove::<pb::Service>(o.id()),
                        (pb::StoreActionKind::Remove, Some(Target::Task(o))) => tx.remove::<pb::Task>(o.id()),
                        (pb::StoreActionKind::Remove, Some(Target::Node(o))) => tx.remove::<pb::Node>(o.id()),
                        (pb::StoreActionKind::Remove, Some(Target::Secret(o))) => tx.remove::<pb::Secret>(o.id()),
                        _ => Ok(()),
                    };
                }
                seen = Some(tx.snapshot());
                Ok::<_, StoreError>(())
            })
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let index = store.version() + 1;
        let applied = store.apply(index, batch(99, actions));
        prop_assert!(applied.is_ok(), "{:?}", applied);
        let seen = seen.ok_or_else(|| TestCaseError::fail("closure did not run"))?;
        prop_assert_eq!(strip_meta(store.snapshot()), strip_meta(seen));
        check_indexes(&store.view())?;
    }
}
