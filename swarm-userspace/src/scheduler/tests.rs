//! Unit tests of the scheduler, and its timing test (`--ignored`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use swarm_proto::v1 as pb;

use super::*;

pub(super) const GB: i64 = 1 << 30;
pub(super) const CPU: i64 = 1_000_000_000;

pub(super) fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

/// A ready, active worker with 4 CPUs and 8 GB.
pub(super) fn node(id: &str) -> pb::Node {
    pb::Node {
        meta: Some(pb::Meta {
            id: id.into(),
            ..Default::default()
        }),
        spec: Some(pb::NodeSpec::default()),
        description: Some(pb::NodeDescription {
            hostname: format!("host-{id}"),
            platform: Some(pb::Platform {
                os: "linux".into(),
                architecture: "x86_64".into(),
            }),
            resources: Some(pb::Resources {
                nano_cpus: 4 * CPU,
                memory_bytes: 8 * GB,
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

pub(super) fn with_label(mut n: pb::Node, k: &str, v: &str) -> pb::Node {
    n.spec
        .get_or_insert_with(Default::default)
        .annotations
        .get_or_insert_with(Default::default)
        .labels
        .insert(k.into(), v.into());
    n
}

fn with_availability(mut n: pb::Node, a: pb::NodeAvailability) -> pb::Node {
    n.spec.get_or_insert_with(Default::default).availability = a.into();
    n
}

fn with_state(mut n: pb::Node, s: pb::NodeState) -> pb::Node {
    n.status.get_or_insert_with(Default::default).state = s.into();
    n
}

pub(super) fn with_resources(mut n: pb::Node, cpus: i64, memory: i64) -> pb::Node {
    n.description.get_or_insert_with(Default::default).resources = Some(pb::Resources {
        nano_cpus: cpus,
        memory_bytes: memory,
    });
    n
}

/// A pending task of `service` (version 1) wanting to run.
pub(super) fn task(id: &str, service: &str) -> pb::Task {
    pb::Task {
        meta: Some(pb::Meta {
            id: id.into(),
            ..Default::default()
        }),
        service_id: service.into(),
        service_version: 1,
        spec: Some(pb::TaskSpec::default()),
        status: Some(pb::TaskStatus {
            state: pb::TaskState::Pending.into(),
            ..Default::default()
        }),
        desired_state: pb::TaskState::Running.into(),
        ..Default::default()
    }
}

pub(super) fn reserving(mut t: pb::Task, cpus: i64, memory: i64) -> pb::Task {
    t.spec.get_or_insert_with(Default::default).resources = Some(pb::ResourceRequirements {
        limits: None,
        reservations: Some(pb::Resources {
            nano_cpus: cpus,
            memory_bytes: memory,
        }),
    });
    t
}

pub(super) fn placement(t: &mut pb::Task) -> &mut pb::Placement {
    t.spec
        .get_or_insert_with(Default::default)
        .placement
        .get_or_insert_with(Default::default)
}

fn constrained(mut t: pb::Task, c: &[&str]) -> pb::Task {
    placement(&mut t).constraints = c.iter().map(|s| (*s).to_owned()).collect();
    t
}

pub(super) fn spread_over(mut t: pb::Task, descriptors: &[&str]) -> pb::Task {
    placement(&mut t).preferences = descriptors
        .iter()
        .map(|d| pb::PlacementPreference {
            preference: Some(pb::placement_preference::Preference::Spread(
                pb::SpreadOver {
                    spread_descriptor: (*d).to_owned(),
                },
            )),
        })
        .collect();
    t
}

/// `t` running on `node`.
pub(super) fn running_on(mut t: pb::Task, node: &str) -> pb::Task {
    t.node_id = node.into();
    t.status.get_or_insert_with(Default::default).state = pb::TaskState::Running.into();
    t
}

pub(super) fn set(nodes: Vec<pb::Node>, tasks: &[pb::Task]) -> NodeSet {
    NodeSet::new(nodes.into_iter().map(Arc::new), tasks)
}

fn tasks(n: usize, service: &str) -> Vec<pb::Task> {
    (0..n)
        .map(|i| task(&format!("{service}-{i:06}"), service))
        .collect()
}

pub(super) fn per_node(d: &Decisions) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for a in &d.assigned {
        *m.entry(a.node_id.clone()).or_default() += 1;
    }
    m
}

fn run(nodes: Vec<pb::Node>, existing: &[pb::Task], pending: &[pb::Task]) -> Decisions {
    schedule(
        &set(nodes, existing),
        pending,
        &FailureHistory::new(),
        now(),
    )
}

#[test]
fn spreads_one_service_evenly_over_equal_nodes() {
    let d = run(vec![node("a"), node("b"), node("c")], &[], &tasks(7, "web"));
    assert!(d.unplaced.is_empty());
    let counts: Vec<usize> = per_node(&d).into_values().collect();
    assert_eq!(counts, [3, 2, 2]);
}

#[test]
fn only_ready_active_nodes_take_new_tasks() {
    let nodes = vec![
        node("ok"),
        with_availability(node("paused"), pb::NodeAvailability::Pause),
        with_availability(node("drained"), pb::NodeAvailability::Drain),
        with_state(node("down"), pb::NodeState::Down),
        with_state(node("unknown"), pb::NodeState::Unknown),
    ];
    let d = run(nodes.clone(), &[], &tasks(3, "web"));
    assert_eq!(per_node(&d), BTreeMap::from([("ok".into(), 3)]));

    let d = run(nodes[1..].to_vec(), &[], &tasks(2, "web"));
    assert!(d.assigned.is_empty());
    assert_eq!(d.unplaced.len(), 2);
    assert_eq!(
        d.unplaced[0].reason,
        "no suitable node (4 nodes not available for new tasks)"
    );
}

#[test]
fn no_nodes_at_all() {
    let d = run(vec![], &[], &tasks(1, "web"));
    assert_eq!(d.unplaced[0].reason, "no suitable node");
}

#[test]
fn reservations_limit_what_fits_and_the_reason_says_why() {
    let nodes = vec![
        with_resources(node("a"), 4 * CPU, GB),
        with_resources(node("b"), 4 * CPU, GB),
        with_resources(node("c"), CPU / 2, 8 * GB),
        with_availability(node("d"), pb::NodeAvailability::Drain),
    ];
    let pending: Vec<_> = tasks(5, "db")
        .into_iter()
        .map(|t| reserving(t, CPU, 400 << 20))
        .collect();
    let d = run(nodes, &[], &pending);
    // 2 fit on a, 2 on b, none on c (CPU), none on d (drained).
    assert_eq!(
        per_node(&d),
        BTreeMap::from([("a".into(), 2), ("b".into(), 2)])
    );
    assert_eq!(d.unplaced.len(), 1);
    assert_eq!(
        d.unplaced[0].reason,
        "no suitable node (insufficient memory on 2 nodes; 1 node not available for new tasks; \
         insufficient CPU on 1 node)"
    );
}

#[test]
fn tasks_already_on_a_node_use_its_resources_until_they_end() {
    let nodes = vec![with_resources(node("a"), 4 * CPU, GB)];
    let big = |id: &str| reserving(task(id, "other"), 0, 700 << 20);
    let mut ended = running_on(big("old"), "a");
    ended.status.as_mut().unwrap().state = pb::TaskState::Failed.into();
    let mut stopping = running_on(big("stopping"), "a");
    stopping.desired_state = pb::TaskState::Shutdown.into();

    let want = vec![reserving(task("t", "web"), 0, 500 << 20)];
    assert_eq!(run(nodes.clone(), &[ended], &want).assigned.len(), 1);
    // Still running though told to stop: its memory is still taken.
    let d = run(nodes, &[stopping.clone()], &want);
    assert!(d.assigned.is_empty());
    assert_eq!(
        d.unplaced[0].reason,
        "no suitable node (insufficient memory on 1 node)"
    );
    // But it does not count as a task of the node for ranking.
    let s = set(vec![node("a")], &[stopping]);
    assert_eq!(s.get("a").unwrap().active_tasks, 0);
    assert_eq!(
        s.get("a").unwrap().available.memory_bytes,
        8 * GB - (700 << 20)
    );
}

#[test]
fn constraints_filter_nodes() {
    let nodes = vec![
        with_label(node("a"), "zone", "east"),
        with_label(node("b"), "zone", "west"),
        node("c"),
    ];
    let pending: Vec<_> = tasks(4, "web")
        .into_iter()
        .map(|t| constrained(t, &["node.labels.zone==east"]))
        .collect();
    let d = run(nodes.clone(), &[], &pending);
    assert_eq!(per_node(&d), BTreeMap::from([("a".into(), 4)]));

    let pending = vec![constrained(task("x", "web"), &["node.labels.zone==north"])];
    let d = run(nodes, &[], &pending);
    assert_eq!(
        d.unplaced[0].reason,
        "no suitable node (scheduling constraints not satisfied on 3 nodes)"
    );
}

#[test]
fn role_and_hostname_constraints() {
    let mut m = node("m");
    m.role = pb::NodeRole::Manager.into();
    let nodes = vec![m, node("w1"), node("w2")];
    let d = run(
        nodes.clone(),
        &[],
        &[constrained(task("x", "s"), &["node.role==manager"])],
    );
    assert_eq!(d.assigned[0].node_id, "m");
    let d = run(
        nodes.clone(),
        &[],
        &[constrained(
            task("x", "s"),
            &["node.role!=manager", "node.hostname!=host-w1"],
        )],
    );
    assert_eq!(d.assigned[0].node_id, "w2");
    let d = run(nodes, &[], &[constrained(task("x", "s"), &["node.id==w1"])]);
    assert_eq!(d.assigned[0].node_id, "w1");
}

#[test]
fn platforms_filter_nodes() {
    let mut arm = node("arm");
    arm.description.as_mut().unwrap().platform = Some(pb::Platform {
        os: "linux".into(),
        architecture: "aarch64".into(),
    });
    let mut t = task("x", "s");
    placement(&mut t).platforms = vec![pb::Platform {
        os: "linux".into(),
        architecture: "arm64".into(),
    }];
    let d = run(vec![node("amd"), arm.clone()], &[], &[t.clone()]);
    assert_eq!(d.assigned[0].node_id, "arm");
    let d = run(vec![node("amd")], &[], &[t]);
    assert_eq!(
        d.unplaced[0].reason,
        "no suitable node (unsupported platform on 1 node)"
    );
}

#[test]
fn host_mode_ports_are_exclusive_per_node() {
    let with_port = |id: &str| {
        let mut t = task(id, "edge");
        t.endpoint = Some(pb::Endpoint {
            ports: vec![pb::PortConfig {
                protocol: pb::PortProtocol::Tcp.into(),
                target_port: 80,
                published_port: 8080,
                publish_mode: pb::PublishMode::Host.into(),
                ..Default::default()
            }],
            ..Default::default()
        });
        t
    };
    let d = run(
        vec![node("a"), node("b")],
        &[],
        &[with_port("1"), with_port("2"), with_port("3")],
    );
    assert_eq!(d.assigned.len(), 2);
    assert_eq!(per_node(&d).len(), 2);
    assert_eq!(
        d.unplaced[0].reason,
        "no suitable node (host-mode port already in use on 2 nodes)"
    );
}

#[test]
fn max_replicas_per_node() {
    let pending: Vec<_> = tasks(5, "web")
        .into_iter()
        .map(|mut t| {
            placement(&mut t).max_replicas = 2;
            t
        })
        .collect();
    let existing = [running_on(task("old", "web"), "a")];
    let d = run(vec![node("a"), node("b")], &existing, &pending);
    assert_eq!(
        per_node(&d),
        BTreeMap::from([("a".into(), 1), ("b".into(), 2)])
    );
    assert_eq!(d.unplaced.len(), 2);
    assert_eq!(
        d.unplaced[0].reason,
        "no suitable node (max replicas per node limit exceed)"
    );
}

#[test]
fn ranks_by_tasks_of_the_service_then_by_all_tasks() {
    // a runs 2 of web; b runs 5 of other services; c runs 1 of other.
    let mut existing = vec![
        running_on(task("w1", "web"), "a"),
        running_on(task("w2", "web"), "a"),
    ];
    existing.extend((0..5).map(|i| running_on(task(&format!("o{i}"), "other"), "b")));
    existing.push(running_on(task("o9", "other"), "c"));
    let d = run(
        vec![node("a"), node("b"), node("c")],
        &existing,
        &tasks(1, "web"),
    );
    assert_eq!(d.assigned[0].node_id, "c");
    let d = run(
        vec![node("a"), node("b"), node("c")],
        &existing,
        &tasks(4, "web"),
    );
    // c first (fewest overall), then b and c even out on web, a last.
    assert_eq!(
        per_node(&d),
        BTreeMap::from([("b".into(), 2), ("c".into(), 2)])
    );
}

#[test]
fn nodes_where_the_service_keeps_failing_rank_last() {
    let nodes = vec![node("a"), node("b")];
    let mut failures = FailureHistory::new();
    for s in 0..5 {
        failures.record("a", "web", 1, now() - Duration::from_secs(10 * s));
    }
    // b already runs two tasks of web, a none: a would win but for failures.
    let existing = [
        running_on(task("w1", "web"), "b"),
        running_on(task("w2", "web"), "b"),
    ];
    let s = set(nodes.clone(), &existing);
    let d = schedule(&s, &tasks(1, "web"), &failures, now());
    assert_eq!(d.assigned[0].node_id, "b");
    // Another version of the service is not penalised.
    let mut v2 = task("v2", "web");
    v2.service_version = 2;
    let d = schedule(&s, &[v2], &failures, now());
    assert_eq!(d.assigned[0].node_id, "a");
    // Four failures are not enough; old failures fade out.
    let d = schedule(&s, &tasks(1, "web"), &failures, now() + FAILURE_WINDOW);
    assert_eq!(d.assigned[0].node_id, "a");
    // A penalised node still takes tasks when it is the only one.
    let d = schedule(
        &set(vec![node("a")], &[]),
        &tasks(2, "web"),
        &failures,
        now(),
    );
    assert_eq!(d.assigned.len(), 2);
}

#[test]
fn spread_preferences_balance_label_values_first() {
    let nodes = vec![
        with_label(node("a1"), "zone", "a"),
        with_label(node("b1"), "zone", "b"),
        with_label(node("b2"), "zone", "b"),
        with_label(node("c1"), "zone", "c"),
        with_label(node("c2"), "zone", "c"),
        with_label(node("c3"), "zone", "c"),
    ];
    let pending: Vec<_> = tasks(6, "web")
        .into_iter()
        .map(|t| spread_over(t, &["node.labels.zone"]))
        .collect();
    let d = run(nodes.clone(), &[], &pending);
    assert!(d.unplaced.is_empty());
    let got = per_node(&d);
    assert_eq!(got["a1"], 2);
    assert_eq!(got["b1"] + got["b2"], 2);
    assert_eq!((got["b1"], got["b2"]), (1, 1));
    let n = |k: &str| got.get(k).copied().unwrap_or(0);
    assert_eq!(n("c1") + n("c2") + n("c3"), 2);

    // Existing tasks count: zone a already runs 3, so new ones go elsewhere.
    let existing: Vec<_> = (0..3)
        .map(|i| running_on(task(&format!("e{i}"), "web"), "a1"))
        .collect();
    let d = run(nodes, &existing, &pending);
    let got = per_node(&d);
    assert_eq!(got.get("a1"), None);
    let n = |k: &str| got.get(k).copied().unwrap_or(0);
    assert_eq!(n("b1") + n("b2"), 3);
    assert_eq!(n("c1") + n("c2") + n("c3"), 3);
}

#[test]
fn nested_spread_and_nodes_without_the_label() {
    let nodes = vec![
        with_label(with_label(node("n1"), "dc", "x"), "rack", "1"),
        with_label(with_label(node("n2"), "dc", "x"), "rack", "2"),
        with_label(node("n3"), "dc", "y"),
        // No labels: its own branch (value "").
        node("n4"),
    ];
    let pending: Vec<_> = tasks(6, "web")
        .into_iter()
        .map(|t| spread_over(t, &["node.labels.dc", "node.labels.rack"]))
        .collect();
    let got = per_node(&run(nodes, &[], &pending));
    assert_eq!(got["n1"] + got["n2"], 2);
    assert_eq!((got["n1"], got["n2"]), (1, 1));
    assert_eq!(got["n3"], 2);
    assert_eq!(got["n4"], 2);
}

#[test]
fn a_full_branch_overflows_into_the_others() {
    let nodes = vec![
        with_resources(with_label(node("a"), "zone", "a"), CPU, GB),
        with_label(node("b"), "zone", "b"),
    ];
    let pending: Vec<_> = tasks(6, "web")
        .into_iter()
        .map(|t| spread_over(reserving(t, 0, GB / 2), &["node.labels.zone"]))
        .collect();
    let got = per_node(&run(nodes, &[], &pending));
    assert_eq!(got["a"], 2);
    assert_eq!(got["b"], 4);
}

#[test]
fn preassigned_tasks_are_checked_against_their_node() {
    let nodes = vec![
        node("a"),
        with_availability(node("p"), pb::NodeAvailability::Pause),
    ];
    let mut on_a = task("ga", "global");
    on_a.node_id = "a".into();
    let mut on_p = task("gp", "global");
    on_p.node_id = "p".into();
    let mut on_gone = task("gx", "global");
    on_gone.node_id = "gone".into();
    let d = run(nodes, &[], &[on_a, on_p, on_gone]);
    assert_eq!(
        d.assigned,
        [Assignment {
            task_id: "ga".into(),
            node_id: "a".into()
        }]
    );
    assert_eq!(d.unplaced[0].reason, "1 node not available for new tasks");
    assert_eq!(d.unplaced[1].reason, "node gone is not part of the swarm");
}

#[test]
fn only_pending_wanted_tasks_are_considered() {
    let mut assigned = task("assigned", "web");
    assigned.status.as_mut().unwrap().state = pb::TaskState::Assigned.into();
    let mut new = task("new", "web");
    new.status.as_mut().unwrap().state = pb::TaskState::New.into();
    let mut unwanted = task("unwanted", "web");
    unwanted.desired_state = pb::TaskState::Shutdown.into();
    let mut delayed = task("delayed", "web");
    delayed.desired_state = pb::TaskState::Ready.into();
    let mut job = task("job", "web");
    job.desired_state = pb::TaskState::Complete.into();
    let d = run(
        vec![node("a")],
        &[],
        &[assigned, new, unwanted, delayed, job],
    );
    let ids: Vec<_> = d.assigned.iter().map(|a| a.task_id.as_str()).collect();
    assert_eq!(ids, ["delayed", "job"]);
    assert!(d.unplaced.is_empty());
}

#[test]
fn groups_by_service_version_and_later_groups_see_earlier_placements() {
    // Two services, one node with room for 3 tasks of 1 GB.
    let nodes = vec![with_resources(node("a"), CPU, 3 * GB)];
    let mut pending: Vec<_> = tasks(2, "x")
        .into_iter()
        .chain(tasks(2, "y"))
        .map(|t| reserving(t, 0, GB))
        .collect();
    pending[1].service_version = 2;
    let d = run(nodes, &[], &pending);
    assert_eq!(d.assigned.len(), 3);
    assert_eq!(d.unplaced.len(), 1);
    assert_eq!(d.unplaced[0].task_id, "y-000001");
}

#[test]
fn decisions_are_deterministic() {
    let nodes: Vec<_> = (0..20).map(|i| node(&format!("n{i:02}"))).collect();
    let pending = tasks(97, "web");
    assert_eq!(run(nodes.clone(), &[], &pending), run(nodes, &[], &pending));
}

#[test]
fn place_updates_the_set() {
    let mut s = set(vec![node("a")], &[]);
    let pending = vec![reserving(task("t", "web"), CPU, GB)];
    let d = s.place(&pending, &FailureHistory::new(), now());
    assert_eq!(d.assigned.len(), 1);
    let a = s.get("a").unwrap();
    assert_eq!(a.active_tasks, 1);
    assert_eq!(a.available.memory_bytes, 7 * GB);
    assert_eq!(s.tasks_of_service("a", "web"), 1);
}

#[test]
fn task_helpers() {
    let t = task("t", "web");
    let st = assigned_status(now());
    let mut a = t.clone();
    a.node_id = "n1".into();
    a.status = Some(st.clone());
    assert_eq!(st.state, pb::TaskState::Assigned as i32);
    assert_eq!(st.message, ASSIGNED_MESSAGE);
    assert_eq!(st.timestamp, Some(now().into()));

    let u = unplaced_task(&t, "no suitable node", now()).unwrap();
    assert_eq!(u.status.as_ref().unwrap().err, "no suitable node");
    assert_eq!(
        u.status.as_ref().unwrap().state,
        pb::TaskState::Pending as i32
    );
    assert!(unplaced_task(&u, "no suitable node", now()).is_none());
    assert!(is_schedulable(&t));
    assert!(!is_schedulable(&a));
}

#[test]
fn pending_tasks_come_from_the_view() {
    use crate::store::MemoryStore;
    let store = MemoryStore::new();
    let actions = store
        .prepare(|tx| {
            tx.create(node("a"))?;
            tx.create(task("p", "web"))?;
            tx.create(running_on(task("r", "web"), "a"))
        })
        .unwrap();
    store.apply(1, crate::store::new_batch(actions)).unwrap();
    let view = store.view();
    let pending = pending_tasks(&view);
    assert_eq!(pending.len(), 1);
    let s = NodeSet::from_view(&view);
    assert_eq!(s.tasks_of_service("a", "web"), 1);
    let d = schedule(&s, &pending, &FailureHistory::new(), now());
    assert_eq!(d.assigned[0].task_id, "p");
}

#[test]
fn decisions_write_skips_tasks_that_changed_meanwhile() {
    use crate::store::{MemoryStore, new_batch};
    let store = MemoryStore::new();
    let actions = store
        .prepare(|tx| {
            tx.create(node("a"))?;
            tx.create(task("p1", "web"))?;
            tx.create(task("p2", "web"))?;
            tx.create(constrained(task("p3", "web"), &["node.id==b"]))
        })
        .unwrap();
    store.apply(1, new_batch(actions)).unwrap();
    let view = store.view();
    let d = schedule(
        &NodeSet::from_view(&view),
        &pending_tasks(&view),
        &FailureHistory::new(),
        now(),
    );
    assert_eq!(d.assigned.len(), 2);
    assert_eq!(d.unplaced.len(), 1);
    // Meanwhile p2 is no longer wanted.
    let mut p2 = (*view.get::<pb::Task>("p2").unwrap()).clone();
    p2.desired_state = pb::TaskState::Shutdown.into();
    let actions = store.prepare(|tx| tx.update(p2)).unwrap();
    store.apply(2, new_batch(actions)).unwrap();

    let actions = store.prepare(|tx| d.write(tx, now())).unwrap();
    assert_eq!(actions.len(), 2);
    // p1's placement travels as an assignment, p3's reason as its task.
    assert!(matches!(
        actions[0].target,
        Some(pb::store_action::Target::TaskAssignment(_))
    ));
    store.apply(3, new_batch(actions)).unwrap();
    let view = store.view();
    let p1 = view.get::<pb::Task>("p1").unwrap();
    assert_eq!(p1.node_id, "a");
    assert_eq!(
        p1.status.as_ref().unwrap().state,
        pb::TaskState::Assigned as i32
    );
    assert!(view.get::<pb::Task>("p2").unwrap().node_id.is_empty());
    assert_eq!(
        view.get::<pb::Task>("p3")
            .unwrap()
            .status
            .as_ref()
            .unwrap()
            .err,
        "no suitable node (scheduling constraints not satisfied on 1 node)"
    );
    // Writing the same reason again writes nothing.
    let view = store.view();
    let d = schedule(
        &NodeSet::from_view(&view),
        &pending_tasks(&view),
        &FailureHistory::new(),
        now(),
    );
    assert!(store.prepare(|tx| d.write(tx, now())).unwrap().is_empty());
}

/// Timing: run with `cargo test --release -p swarm scheduler::tests::timing
/// -- --ignored --nocapture`.
#[test]
#[ignore = "timing; run in release mode"]
fn timing_100k_tasks_on_1000_nodes() {
    let nodes: Vec<_> = (0..1000)
        .map(|i| {
            with_label(
                with_resources(node(&format!("node-{i:04}")), 64 * CPU, 256 * GB),
                "zone",
                &format!("z{}", i % 10),
            )
        })
        .collect();
    // Existing load: 20,000 tasks of 50 services.
    let existing: Vec<_> = (0..20_000)
        .map(|i| {
            reserving(
                running_on(
                    task(&format!("old-{i}"), &format!("svc-{}", i % 50)),
                    &format!("node-{:04}", i % 1000),
                ),
                CPU / 10,
                64 << 20,
            )
        })
        .collect();
    let scenarios: Vec<(&str, Vec<pb::Task>)> = vec![
        (
            "1 service x 100,000 tasks",
            (0..100_000)
                .map(|i| reserving(task(&format!("t{i}"), "big"), CPU / 100, 16 << 20))
                .collect(),
        ),
        (
            "100 services x 1,000 tasks, constraint + spread over 10 zones",
            (0..100_000)
                .map(|i| {
                    let t = reserving(
                        task(&format!("t{i}"), &format!("s{}", i % 100)),
                        CPU / 100,
                        16 << 20,
                    );
                    spread_over(
                        constrained(t, &["node.role==worker"]),
                        &["node.labels.zone"],
                    )
                })
                .collect(),
        ),
        (
            "10,000 services x 10 tasks",
            (0..100_000)
                .map(|i| {
                    reserving(
                        task(&format!("t{i}"), &format!("s{}", i % 10_000)),
                        CPU / 100,
                        16 << 20,
                    )
                })
                .collect(),
        ),
    ];
    let started = Instant::now();
    let base = NodeSet::new(nodes.into_iter().map(Arc::new), &existing);
    eprintln!(
        "NodeSet::new (1,000 nodes, 20,000 running tasks): {:?}",
        started.elapsed()
    );
    for (name, pending) in &scenarios {
        let mut best = Duration::MAX;
        for _ in 0..3 {
            let started = Instant::now();
            let d = schedule(&base, pending, &FailureHistory::new(), now());
            best = best.min(started.elapsed());
            assert_eq!(d.assigned.len(), 100_000, "{name}");
            let counts: HashMap<String, usize> = per_node(&d).into_iter().collect();
            let (min, max) = (
                counts.values().min().copied().unwrap_or(0),
                counts.values().max().copied().unwrap_or(0),
            );
            assert!(max - min <= 1 + 100_000 / 1000 / 5, "{name}: {min}..{max}");
        }
        eprintln!("schedule {name}: best of 3 = {best:?}");
        assert!(best < Duration::from_secs(1), "{name} took {best:?}");
    }
}

#[test]
fn a_pass_is_written_in_runs_of_each_node() {
    let assigned: Vec<Assignment> = (0..12)
        .map(|i| Assignment {
            task_id: format!("t{i:02}"),
            node_id: format!("n{}", i % 3),
        })
        .collect();
    let order: Vec<&str> = in_node_runs(&assigned, 2)
        .into_iter()
        .map(|i| assigned[i].task_id.as_str())
        .collect();
    // Decided round-robin over n0, n1, n2; written two per node at a time.
    assert_eq!(
        order,
        [
            "t00", "t03", "t01", "t04", "t02", "t05", "t06", "t09", "t07", "t10", "t08", "t11"
        ]
    );
    let d = Decisions {
        assigned,
        unplaced: vec![Unplaced {
            task_id: "u".into(),
            reason: "no suitable node".into(),
        }],
    };
    let steps: Vec<&str> = d
        .steps()
        .map(|s| match s {
            Step::Assign(a) => a.task_id.as_str(),
            Step::Unplaced(u) => u.task_id.as_str(),
        })
        .collect();
    assert_eq!(steps.len(), 13);
    assert_eq!(steps.last(), Some(&"u"));
}
