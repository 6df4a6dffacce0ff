//! Property tests of the orchestrators, through the simulator: random
//! clusters and random events, with the invariants checked after every
//! orchestrator pass.

use std::collections::BTreeMap;

use proptest::prelude::*;
use swarm_proto::v1 as pb;
use swarm_proto::v1::TaskState as S;

use super::sim::{Sim, desired, global, image, node, replicated, service, st, task_spec};

#[derive(Debug, Clone)]
enum Event {
    Scale(u64),
    NodeDown(usize),
    NodeUp(usize),
    Drain(usize),
    Pause(usize),
    Activate(usize),
    Fail(usize),
    Advance(u64),
}

fn event(nodes: usize) -> impl Strategy<Value = Event> {
    prop_oneof![
        (0u64..7).prop_map(Event::Scale),
        (0..nodes).prop_map(Event::NodeDown),
        (0..nodes).prop_map(Event::NodeUp),
        (0..nodes).prop_map(Event::Drain),
        (0..nodes).prop_map(Event::Pause),
        (0..nodes).prop_map(Event::Activate),
        (0usize..10).prop_map(Event::Fail),
        (0u64..8).prop_map(Event::Advance),
    ]
}

fn node_id(i: usize) -> String {
    format!("n{i}")
}

fn set_state(sim: &mut Sim, i: usize, s: pb::NodeState) {
    sim.set_node(&node_id(i), |n| n.status.as_mut().unwrap().state = s.into());
}

fn set_availability(sim: &mut Sim, i: usize, a: pb::NodeAvailability) {
    sim.set_node(&node_id(i), |n| {
        n.spec.as_mut().unwrap().availability = a.into()
    });
}

fn apply(sim: &mut Sim, service_id: &str, e: &Event) {
    match *e {
        Event::Scale(n) => sim.update_service(service_id, |s| {
            s.spec.as_mut().unwrap().mode = Some(replicated(n));
        }),
        Event::NodeDown(i) => set_state(sim, i, pb::NodeState::Down),
        Event::NodeUp(i) => set_state(sim, i, pb::NodeState::Ready),
        Event::Drain(i) => set_availability(sim, i, pb::NodeAvailability::Drain),
        Event::Pause(i) => set_availability(sim, i, pb::NodeAvailability::Pause),
        Event::Activate(i) => set_availability(sim, i, pb::NodeAvailability::Active),
        Event::Fail(k) => {
            let running: Vec<_> = sim
                .tasks(service_id)
                .into_iter()
                .filter(|t| st(t) == S::Running)
                .collect();
            if !running.is_empty() {
                let t = &running[k % running.len()];
                sim.report(&t.meta.as_ref().unwrap().id, S::Failed);
            }
        }
        Event::Advance(s) => sim.advance(s),
    }
}

fn replicas(sim: &Sim, id: &str) -> u64 {
    super::replicated::replicas_of(&sim.service(id)).unwrap()
}

fn running_desired(sim: &Sim, id: &str) -> usize {
    sim.tasks(id)
        .iter()
        .filter(|t| desired(t) == S::Running)
        .count()
}

fn serving(sim: &Sim, id: &str) -> usize {
    sim.tasks(id)
        .iter()
        .filter(|t| desired(t) == S::Running && st(t) == S::Running)
        .count()
}

/// Brings every node back and lets the cluster settle, time moving on.
fn heal(sim: &mut Sim, nodes: usize) {
    for i in 0..nodes {
        set_state(sim, i, pb::NodeState::Ready);
        set_availability(sim, i, pb::NodeAvailability::Active);
    }
    for _ in 0..30 {
        sim.advance(5);
        sim.settle(10);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever happens, a replicated service never has more tasks desired
    /// RUNNING than replicas; once the cluster heals it runs exactly
    /// `replicas` tasks, one per slot 1..=replicas or the slots it kept.
    #[test]
    fn replicated_never_wants_more_than_replicas(
        n_nodes in 1usize..4,
        initial in 0u64..6,
        events in prop::collection::vec(event(3), 0..25),
    ) {
        let mut sim = Sim::new();
        for i in 0..n_nodes {
            sim.add_node(node(&node_id(i)));
        }
        sim.add_service(service("web", replicated(initial)));
        for e in &events {
            if matches!(e, Event::NodeDown(i) | Event::NodeUp(i) | Event::Drain(i)
                | Event::Pause(i) | Event::Activate(i) if *i >= n_nodes) {
                continue;
            }
            apply(&mut sim, "web", e);
            sim.orchestrate();
            prop_assert!(running_desired(&sim, "web") as u64 <= replicas(&sim, "web"));
            sim.schedule();
            sim.agents(|_| false);
            prop_assert!(running_desired(&sim, "web") as u64 <= replicas(&sim, "web"));
        }
        heal(&mut sim, n_nodes);
        let want = replicas(&sim, "web");
        prop_assert_eq!(serving(&sim, "web") as u64, want);
        prop_assert_eq!(running_desired(&sim, "web") as u64, want);
        let slots: std::collections::BTreeSet<u64> = sim
            .tasks("web")
            .iter()
            .filter(|t| desired(t) == S::Running)
            .map(|t| t.slot)
            .collect();
        prop_assert_eq!(slots.len() as u64, want);
    }

    /// A global service runs exactly one wanted task on every eligible,
    /// active node, none on drained, down or non-matching ones, and at most
    /// one on paused ones.
    #[test]
    fn global_runs_exactly_one_task_per_eligible_node(
        states in prop::collection::vec((0u8..3, 0u8..3, any::<bool>()), 1..7),
        constrained in any::<bool>(),
        changes in prop::collection::vec((0usize..7, 0u8..3, 0u8..3, any::<bool>()), 0..6),
    ) {
        let mut sim = Sim::new();
        let label = |sim: &mut Sim, i: usize, on: bool| {
            sim.set_node(&node_id(i), |n| {
                let labels = &mut n.spec.as_mut().unwrap().annotations.get_or_insert_with(Default::default).labels;
                if on { labels.insert("role".into(), "edge".into()); } else { labels.remove("role"); }
            });
        };
        let configure = |sim: &mut Sim, i: usize, state: u8, avail: u8, lab: bool| {
            let s = [pb::NodeState::Ready, pb::NodeState::Down, pb::NodeState::Unknown][usize::from(state)];
            let a = [pb::NodeAvailability::Active, pb::NodeAvailability::Pause, pb::NodeAvailability::Drain][usize::from(avail)];
            set_state(sim, i, s);
            set_availability(sim, i, a);
            label(sim, i, lab);
        };
        for (i, &(s, a, l)) in states.iter().enumerate() {
            sim.add_node(node(&node_id(i)));
            configure(&mut sim, i, s, a, l);
        }
        let mut svc = service("mon", global());
        if constrained {
            task_spec(&mut svc).placement = Some(pb::Placement {
                constraints: vec!["node.labels.role==edge".into()],
                ..Default::default()
            });
        }
        sim.add_service(svc);
        let mut current = states.clone();
        for round in 0..=changes.len() {
            for _ in 0..5 {
                sim.advance(5);
                sim.settle(10);
            }
            let mut live: BTreeMap<String, usize> = BTreeMap::new();
            for t in sim.tasks("mon") {
                if desired(&t) <= S::Running {
                    *live.entry(t.node_id.clone()).or_default() += 1;
                }
            }
            for (i, &(s, a, l)) in current.iter().enumerate() {
                let n = live.get(&node_id(i)).copied().unwrap_or(0);
                let eligible = s != 1 && a != 2 && (!constrained || l);
                if !eligible {
                    prop_assert_eq!(n, 0, "node {} {:?}", i, (s, a, l));
                } else if a == 1 {
                    prop_assert!(n <= 1, "paused node {} has {}", i, n);
                } else {
                    prop_assert_eq!(n, 1, "node {} {:?}", i, (s, a, l));
                }
            }
            if let Some(&(i, s, a, l)) = changes.get(round)
                && i < current.len()
            {
                current[i] = (s, a, l);
                configure(&mut sim, i, s, a, l);
            }
        }
    }

    /// A stop-first rolling update never has more than `parallelism` slots
    /// being replaced, never fewer than `replicas - parallelism` tasks
    /// serving, and completes with every slot on the new spec, however
    /// slowly the agents start tasks.
    #[test]
    fn rolling_update_respects_parallelism(
        replicas_n in 1u64..9,
        parallelism in 1u64..4,
        n_nodes in 1usize..4,
        delay in 0i64..3,
        slowness in prop::collection::vec(any::<bool>(), 64),
        steps in prop::collection::vec(0u64..3, 64),
    ) {
        let mut sim = Sim::new();
        for i in 0..n_nodes {
            sim.add_node(node(&node_id(i)));
        }
        let mut svc = service("web", replicated(replicas_n));
        svc.spec.as_mut().unwrap().update = Some(pb::UpdateConfig {
            parallelism,
            delay: Some(prost_types::Duration { seconds: delay, nanos: 0 }),
            monitor: Some(prost_types::Duration { seconds: 2, nanos: 0 }),
            ..Default::default()
        });
        sim.add_service(svc);
        sim.settle(10);
        prop_assert_eq!(serving(&sim, "web") as u64, replicas_n);
        sim.update_service("web", |s| {
            task_spec(s).container.as_mut().unwrap().image = "bb:2".into();
        });
        for (k, &step) in steps.iter().enumerate() {
            sim.advance(step);
            sim.orchestrate();
            let tasks = sim.tasks("web");
            let replacing = tasks
                .iter()
                .filter(|t| image(t) == "bb:2" && desired(t) <= S::Running && st(t) < S::Running)
                .count() as u64;
            prop_assert!(replacing <= parallelism, "{} slots replacing", replacing);
            prop_assert!(
                serving(&sim, "web") as u64 >= replicas_n.saturating_sub(parallelism),
                "only {} serving", serving(&sim, "web")
            );
            sim.schedule();
            // Slow agents: each acts on a task only when its bit says so.
            let mut c = k;
            sim.agents_where(
                |_| {
                    c += 1;
                    slowness[c % slowness.len()]
                },
                |_| false,
            );
        }
        for _ in 0..40 {
            sim.advance(2);
            sim.settle(10);
        }
        let tasks = sim.tasks("web");
        let serving_new = tasks
            .iter()
            .filter(|t| desired(t) == S::Running && st(t) == S::Running && image(t) == "bb:2")
            .count() as u64;
        prop_assert_eq!(serving_new, replicas_n);
        prop_assert_eq!(
            sim.service("web").update_status.clone().unwrap_or_default().state(),
            pb::UpdateState::Completed
        );
    }
}
