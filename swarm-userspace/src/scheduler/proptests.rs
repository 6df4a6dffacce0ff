//! Property tests of the scheduler: no filter is ever broken by an
//! assignment, a task stays pending only if no node could take it, and
//! equal nodes share a service within one task.

use std::collections::HashMap;

use proptest::prelude::*;
use swarm_proto::v1 as pb;

use super::tests::{
    CPU, GB, node, now, per_node, placement, reserving, running_on, set, task, with_label,
    with_resources,
};
use super::*;

const ZONES: [&str; 3] = ["a", "b", "c"];
const CONSTRAINTS: [&str; 6] = [
    "node.labels.zone==a",
    "node.labels.zone!=b",
    "node.role==manager",
    "node.role!=manager",
    "node.labels.disk==ssd",
    "node.hostname!=host-n00",
];

#[derive(Debug, Clone)]
struct NodeGen {
    zone: Option<usize>,
    ssd: bool,
    manager: bool,
    availability: i32,
    state: i32,
    cpus: i64,
    memory: i64,
}

fn node_gen() -> impl Strategy<Value = NodeGen> {
    (
        prop::option::of(0..ZONES.len()),
        any::<bool>(),
        any::<bool>(),
        prop::sample::select(vec![0, 0, 0, 1, 2]),
        prop::sample::select(vec![2, 2, 2, 1, 0]),
        1i64..=8,
        1i64..=8,
    )
        .prop_map(
            |(zone, ssd, manager, availability, state, cpus, memory)| NodeGen {
                zone,
                ssd,
                manager,
                availability,
                state,
                cpus: cpus * CPU,
                memory: memory * GB,
            },
        )
}

fn build_node(i: usize, g: &NodeGen) -> pb::Node {
    let mut n = with_resources(node(&format!("n{i:02}")), g.cpus, g.memory);
    if let Some(z) = g.zone {
        n = with_label(n, "zone", ZONES[z]);
    }
    if g.ssd {
        n = with_label(n, "disk", "ssd");
    }
    if g.manager {
        n.role = pb::NodeRole::Manager.into();
    }
    n.spec.as_mut().unwrap().availability = g.availability;
    n.status.as_mut().unwrap().state = g.state;
    n
}

#[derive(Debug, Clone)]
struct ServiceGen {
    constraints: Vec<usize>,
    cpus_tenths: i64,
    memory_quarters: i64,
    max_replicas: u64,
    spread: bool,
    tasks: usize,
}

fn service_gen() -> impl Strategy<Value = ServiceGen> {
    (
        prop::collection::vec(0..CONSTRAINTS.len(), 0..3),
        0i64..=20,
        0i64..=8,
        0u64..=3,
        any::<bool>(),
        0usize..40,
    )
        .prop_map(
            |(constraints, cpus_tenths, memory_quarters, max_replicas, spread, tasks)| ServiceGen {
                constraints,
                cpus_tenths,
                memory_quarters,
                max_replicas,
                spread,
                tasks,
            },
        )
}

fn service_tasks(s: usize, g: &ServiceGen) -> Vec<pb::Task> {
    (0..g.tasks)
        .map(|i| {
            let mut t = reserving(
                task(&format!("s{s}-t{i:03}"), &format!("s{s}")),
                g.cpus_tenths * CPU / 10,
                g.memory_quarters * GB / 4,
            );
            let p = placement(&mut t);
            p.constraints = g
                .constraints
                .iter()
                .map(|&c| CONSTRAINTS[c].to_owned())
                .collect();
            p.max_replicas = g.max_replicas;
            if g.spread {
                p.preferences = vec![pb::PlacementPreference {
                    preference: Some(pb::placement_preference::Preference::Spread(
                        pb::SpreadOver {
                            spread_descriptor: "node.labels.zone".into(),
                        },
                    )),
                }];
            }
            t
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// No assignment breaks a filter (availability, constraints, resources,
    /// max replicas), and a task is left pending only if, after the pass,
    /// no node could take it.
    #[test]
    fn assignments_respect_every_filter(
        nodes in prop::collection::vec(node_gen(), 0..12),
        services in prop::collection::vec(service_gen(), 1..4),
        existing_per_node in 0usize..3,
    ) {
        let nodes: Vec<pb::Node> = nodes.iter().enumerate().map(|(i, g)| build_node(i, g)).collect();
        // Some load already there: small tasks of service s0 and others.
        let mut existing = Vec::new();
        for n in &nodes {
            let id = n.meta.as_ref().unwrap().id.clone();
            for k in 0..existing_per_node {
                let t = reserving(task(&format!("old-{id}-{k}"), &format!("s{}", k % 2)), CPU / 10, GB / 8);
                existing.push(running_on(t, &id));
            }
        }
        let pending: Vec<pb::Task> = services
            .iter()
            .enumerate()
            .flat_map(|(s, g)| service_tasks(s, g))
            .collect();
        let before = set(nodes.clone(), &existing);
        let d = schedule(&before, &pending, &FailureHistory::new(), now());
        prop_assert_eq!(d.assigned.len() + d.unplaced.len(), pending.len());

        let by_id: HashMap<&str, &pb::Task> =
            pending.iter().map(|t| (t.meta.as_ref().unwrap().id.as_str(), t)).collect();
        let mut after = before.clone();
        for a in &d.assigned {
            let t = by_id[a.task_id.as_str()];
            let info = after.get(&a.node_id).unwrap();
            prop_assert!(filter::node_available(&info.node));
            let constraints = parse_constraints(&placement(&mut t.clone()).constraints).unwrap();
            prop_assert!(node_matches(&constraints, &info.node), "{} on {}", a.task_id, a.node_id);
            let i = after.position(&a.node_id).unwrap();
            after.add_task(i, t);
            let info = after.get(&a.node_id).unwrap();
            prop_assert!(info.available.memory_bytes >= 0, "memory overcommitted on {}", a.node_id);
            prop_assert!(info.available.nano_cpus >= 0, "CPU overcommitted on {}", a.node_id);
            let max = placement(&mut t.clone()).max_replicas;
            if max > 0 {
                prop_assert!(after.tasks_of_service(&a.node_id, &t.service_id) <= max);
            }
        }
        for u in &d.unplaced {
            let t = by_id[u.task_id.as_str()];
            let needs = Needs::of(t);
            for info in after.iter() {
                let service_tasks = after.tasks_of_service(info.id(), &t.service_id);
                prop_assert!(
                    needs.check(info, service_tasks).is_err(),
                    "{} left pending but {} could take it", u.task_id, info.id()
                );
            }
            prop_assert!(u.reason.starts_with("no suitable node"));
        }
    }

    /// A service without preferences on equal, empty nodes: counts per
    /// node differ by at most one.
    #[test]
    fn equal_nodes_share_within_one(n_nodes in 1usize..40, n_tasks in 0usize..300) {
        let nodes: Vec<_> = (0..n_nodes).map(|i| node(&format!("n{i:02}"))).collect();
        let pending: Vec<_> = (0..n_tasks).map(|i| task(&format!("t{i:03}"), "web")).collect();
        let d = schedule(&set(nodes, &[]), &pending, &FailureHistory::new(), now());
        prop_assert_eq!(d.assigned.len(), n_tasks);
        let counts = per_node(&d);
        let max = counts.values().max().copied().unwrap_or(0);
        let min = if counts.len() < n_nodes { 0 } else { counts.values().min().copied().unwrap_or(0) };
        prop_assert!(max - min <= 1, "{:?}", counts);
    }

    /// With a spread preference and nodes in every zone, zones end within
    /// one task of each other as long as none runs out of room.
    #[test]
    fn spread_balances_zones(per_zone in prop::collection::vec(1usize..5, 3), n_tasks in 0usize..100) {
        let mut nodes = Vec::new();
        for (z, &count) in per_zone.iter().enumerate() {
            for k in 0..count {
                nodes.push(with_label(node(&format!("{}{k}", ZONES[z])), "zone", ZONES[z]));
            }
        }
        let pending: Vec<_> = (0..n_tasks)
            .map(|i| super::tests::spread_over(task(&format!("t{i:03}"), "web"), &["node.labels.zone"]))
            .collect();
        let d = schedule(&set(nodes, &[]), &pending, &FailureHistory::new(), now());
        let mut zones = [0usize; 3];
        for a in &d.assigned {
            let z = ZONES.iter().position(|z| a.node_id.starts_with(z)).unwrap();
            zones[z] += 1;
        }
        let (min, max) = (zones.iter().min().unwrap(), zones.iter().max().unwrap());
        prop_assert!(max - min <= 1, "{:?}", zones);
    }

    /// Writing in node runs is a permutation that keeps each node's order,
    /// writes round by round (a node's tasks `r × run` up to `(r + 1) × run`
    /// are round `r`), and within a round writes each node's tasks together.
    #[test]
    fn node_runs_keep_order_and_bound_runs(
        nodes_of in prop::collection::vec(0usize..6, 0..200),
        run in 1usize..8,
    ) {
        let assigned: Vec<Assignment> = nodes_of
            .iter()
            .enumerate()
            .map(|(i, n)| Assignment { task_id: format!("t{i:03}"), node_id: format!("n{n}") })
            .collect();
        let order = in_node_runs(&assigned, run);
        let mut sorted = order.clone();
        sorted.sort_unstable();
        prop_assert_eq!(sorted, (0..assigned.len()).collect::<Vec<_>>());
        // Each node's tasks in decision order.
        let mut last: HashMap<&str, usize> = HashMap::new();
        for &i in &order {
            let n = assigned[i].node_id.as_str();
            if let Some(&prev) = last.get(n) {
                prop_assert!(prev < i, "node {} out of order", n);
            }
            last.insert(n, i);
        }
        // Round of each written task: its node's ordinal over `run`.
        let mut seen: HashMap<&str, usize> = HashMap::new();
        let keys: Vec<(usize, &str)> = order
            .iter()
            .map(|&i| {
                let n = assigned[i].node_id.as_str();
                let k = seen.entry(n).or_default();
                *k += 1;
                ((*k - 1) / run, n)
            })
            .collect();
        prop_assert!(keys.windows(2).all(|w| w[0].0 <= w[1].0), "a round went back");
        // Within a round, each node's tasks are one stretch.
        let stretches = keys.chunk_by(|a, b| a == b).count();
        let distinct: std::collections::HashSet<_> = keys.iter().collect();
        prop_assert_eq!(stretches, distinct.len());
    }
}
