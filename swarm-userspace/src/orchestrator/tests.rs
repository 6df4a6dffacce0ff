//! Unit tests of the orchestrators, run through the simulator so every
//! decision is also applied to a real store.

use std::sync::Arc;

use swarm_proto::v1 as pb;
use swarm_proto::v1::TaskState as S;

use super::sim::{Sim, at, desired, global, image, node, replicated, service, st, task_spec};
use super::*;

fn creates(actions: &[Action]) -> Vec<&pb::Task> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::CreateTask { task } => Some(&**task),
            _ => None,
        })
        .collect()
}

fn updates(actions: &[Action]) -> Vec<&pb::Task> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::UpdateTask { task } => Some(&**task),
            _ => None,
        })
        .collect()
}

fn removals(actions: &[Action]) -> Vec<&str> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::RemoveTask { id } => Some(id.as_str()),
            _ => None,
        })
        .collect()
}

fn service_updates(actions: &[Action]) -> Vec<&pb::Service> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::UpdateService { service } => Some(&**service),
            _ => None,
        })
        .collect()
}

fn tid(t: &pb::Task) -> String {
    t.meta.as_ref().unwrap().id.clone()
}

fn setup(nodes: &[&str]) -> Sim {
    let mut s = Sim::new();
    for n in nodes {
        s.add_node(node(n));
    }
    s
}

/// Tasks of the service desired and observed RUNNING.
fn serving(sim: &Sim, service_id: &str) -> Vec<Arc<pb::Task>> {
    sim.tasks(service_id)
        .into_iter()
        .filter(|t| desired(t) == S::Running && st(t) == S::Running)
        .collect()
}

/// The service's one wanted task.
fn only(sim: &Sim, service_id: &str) -> Arc<pb::Task> {
    let wanted: Vec<_> = sim
        .tasks(service_id)
        .into_iter()
        .filter(|t| desired(t) <= S::Complete)
        .collect();
    assert_eq!(wanted.len(), 1, "{wanted:#?}");
    Arc::clone(&wanted[0])
}

fn restart_policy(s: &mut pb::Service, condition: pb::RestartCondition, delay: u64, max: u64) {
    task_spec(s).restart = Some(pb::RestartPolicy {
        condition: condition.into(),
        delay: Some(prost_types::Duration {
            seconds: i64::try_from(delay).unwrap(),
            nanos: 0,
        }),
        max_attempts: max,
        window: None,
    });
}

fn per_node(sim: &Sim, service_id: &str) -> std::collections::BTreeMap<String, usize> {
    let mut m = std::collections::BTreeMap::new();
    for t in sim.tasks(service_id) {
        if desired(&t) <= S::Running {
            *m.entry(t.node_id.clone()).or_default() += 1;
        }
    }
    m
}

// ---------------------------------------------------------------------------
// Replicated services

#[test]
fn a_new_service_gets_slots_one_to_n_with_complete_tasks() {
    let mut sim = setup(&["a"]);
    sim.add_service(service("web", replicated(3)));
    let actions = sim.orchestrate();
    let new = creates(&actions);
    let mut slots: Vec<u64> = new.iter().map(|t| t.slot).collect();
    slots.sort_unstable();
    assert_eq!(slots, [1, 2, 3]);
    let svc = sim.service("web");
    for t in new {
        assert_eq!(t.meta.as_ref().unwrap().id.len(), crate::store::ID_LEN);
        assert_eq!(t.service_id, "web");
        assert_eq!(t.spec, svc.spec.as_ref().unwrap().task);
        assert_eq!(t.service_annotations.as_ref().unwrap().name, "svc-web");
        assert_eq!(t.service_version, svc.meta.as_ref().unwrap().version);
        assert_eq!(desired(t), S::Running);
        // No network and no published port: nothing for the allocator, so
        // the task is ready for the scheduler at once.
        assert_eq!(st(t), S::Pending);
        let status = t.status.as_ref().unwrap();
        assert_eq!(status.timestamp, Some(at(0).into()));
        assert_eq!(status.message, crate::allocator::PENDING_MESSAGE);
        assert!(t.node_id.is_empty());
    }
    // A second pass changes nothing.
    assert!(sim.orchestrate().is_empty());
    sim.settle(10);
    assert_eq!(serving(&sim, "web").len(), 3);
}

#[test]
fn tasks_with_networks_or_published_ports_start_new_for_the_allocator() {
    let on_network = {
        let mut s = service("web", replicated(1));
        task_spec(&mut s)
            .networks
            .push(pb::NetworkAttachmentConfig {
                target: "net1".into(),
                ..Default::default()
            });
        s
    };
    let publishing = |mode: pb::PublishMode| {
        let mut s = service("web", replicated(1));
        s.spec.as_mut().unwrap().endpoint = Some(pb::EndpointSpec {
            ports: vec![pb::PortConfig {
                target_port: 80,
                publish_mode: mode.into(),
                ..Default::default()
            }],
            ..Default::default()
        });
        s
    };
    let nodes = crate::orchestrator::NodeMap::new();
    let ctx = Context {
        now: at(0),
        nodes: &nodes,
        cluster: None,
    };
    let key = SlotKey::Replica(1);
    for s in [
        on_network,
        publishing(pb::PublishMode::Ingress),
        publishing(pb::PublishMode::Host),
    ] {
        let t = new_task(&ctx, &s, &key);
        assert_eq!(st(&t), S::New);
        assert_eq!(t.status.as_ref().unwrap().message, NEW_TASK_MESSAGE);
    }
    let plain = new_task(&ctx, &service("web", replicated(1)), &key);
    assert_eq!(st(&plain), S::Pending);
}

#[test]
fn scaling_up_fills_the_lowest_free_slots() {
    let mut sim = setup(&["a"]);
    sim.add_service(service("web", replicated(4)));
    sim.settle(10);
    sim.update_service("web", |s| {
        s.spec.as_mut().unwrap().mode = Some(replicated(1));
    });
    sim.settle(10);
    let kept = only(&sim, "web").slot;
    sim.update_service("web", |s| {
        s.spec.as_mut().unwrap().mode = Some(replicated(3));
    });
    let actions = sim.orchestrate();
    let mut slots: Vec<u64> = creates(&actions).iter().map(|t| t.slot).collect();
    slots.sort_unstable();
    let expected: Vec<u64> = (1..=3).filter(|s| *s != kept).collect();
    assert_eq!(slots, expected);
}

#[test]
fn scaling_down_removes_from_the_most_loaded_node_first() {
    let mut sim = setup(&["a"]);
    sim.add_service(service("web", replicated(3)));
    sim.settle(10);
    sim.add_node(node("b"));
    sim.update_service("web", |s| {
        s.spec.as_mut().unwrap().mode = Some(replicated(4))
    });
    sim.settle(10);
    assert_eq!(
        per_node(&sim, "web"),
        [("a".into(), 3), ("b".into(), 1)].into()
    );
    sim.update_service("web", |s| {
        s.spec.as_mut().unwrap().mode = Some(replicated(2))
    });
    let actions = sim.orchestrate();
    let removed: Vec<&pb::Task> = updates(&actions);
    assert_eq!(removed.len(), 2);
    for t in &removed {
        assert_eq!(desired(t), S::Remove);
        assert_eq!(t.node_id, "a");
    }
    // Same age: the higher slots go.
    let mut slots: Vec<u64> = removed.iter().map(|t| t.slot).collect();
    slots.sort_unstable();
    assert_eq!(slots, [2, 3]);
    sim.settle(10);
    assert_eq!(
        per_node(&sim, "web"),
        [("a".into(), 1), ("b".into(), 1)].into()
    );
    // Removed tasks are deleted once stopped.
    assert_eq!(sim.tasks("web").len(), 2);
}

#[test]
fn scaling_down_prefers_the_newest_and_the_not_yet_running() {
    let mut sim = setup(&["a"]);
    sim.add_service(service("web", replicated(1)));
    sim.settle(10);
    let first = only(&sim, "web");
    sim.advance(60);
    sim.update_service("web", |s| {
        s.spec.as_mut().unwrap().mode = Some(replicated(2))
    });
    sim.settle(10);
    sim.update_service("web", |s| {
        s.spec.as_mut().unwrap().mode = Some(replicated(1))
    });
    sim.settle(10);
    assert_eq!(tid(&only(&sim, "web")), tid(&first));

    // A replica that cannot be placed goes before running ones, even old.
    sim.set_node("a", |n| {
        n.spec.as_mut().unwrap().availability = pb::NodeAvailability::Pause.into()
    });
    sim.advance(60);
    sim.update_service("web", |s| {
        s.spec.as_mut().unwrap().mode = Some(replicated(2))
    });
    sim.settle(10);
    assert_eq!(serving(&sim, "web").len(), 1);
    sim.advance(60);
    sim.set_node("a", |n| {
        n.spec.as_mut().unwrap().availability = pb::NodeAvailability::Active.into()
    });
    sim.update_service("web", |s| {
        s.spec.as_mut().unwrap().mode = Some(replicated(1))
    });
    let pending = sim
        .tasks("web")
        .into_iter()
        .find(|t| st(t) == S::Pending)
        .unwrap();
    let actions = sim.orchestrate();
    // Never assigned, so deleted at once rather than told to stop.
    assert_eq!(removals(&actions), [tid(&pending).as_str()]);
    assert!(updates(&actions).is_empty());
}

#[test]
fn a_failed_task_is_restarted_after_the_restart_delay() {
    let mut sim = setup(&["a"]);
    sim.add_service(service("web", replicated(1)));
    sim.settle(10);
    let t1 = only(&sim, "web");
    sim.advance(1);
    sim.report(&tid(&t1), S::Failed);
    let actions = sim.orchestrate();
    assert!(creates(&actions).is_empty());
    assert_eq!(desired(&sim.task(&tid(&t1))), S::Shutdown);
    assert_eq!(
        next_wake(&actions),
        Some(at(1) + DEFAULT_RESTART_DELAY),
        "{actions:#?}"
    );
    assert!(actions.contains(&Action::ReconcileAt {
        at: at(6),
        reason: WakeReason::RestartDelay { task_id: tid(&t1) }
    }));
    sim.advance(3);
    let actions = sim.orchestrate();
    assert!(creates(&actions).is_empty());
    assert_eq!(next_wake(&actions), Some(at(6)));
    sim.advance(2);
    let actions = sim.orchestrate();
    let new = creates(&actions);
    assert_eq!(new.len(), 1);
    assert_eq!(new[0].slot, t1.slot);
    assert_eq!(desired(new[0]), S::Running);
    sim.settle(10);
    assert_eq!(serving(&sim, "web").len(), 1);
}

#[test]
fn restart_condition_none_leaves_the_slot_dead() {
    let mut sim = setup(&["a"]);
    let mut s = service("web", replicated(2));
    restart_policy(&mut s, pb::RestartCondition::None, 0, 0);
    sim.add_service(s);
    sim.settle(10);
    let t = &serving(&sim, "web")[0];
    sim.report(&tid(t), S::Failed);
    let actions = sim.orchestrate();
    assert!(creates(&actions).is_empty());
    assert_eq!(next_wake(&actions), None);
    sim.advance(100);
    sim.settle(10);
    // One replica left: docker shows 1/2.
    assert_eq!(serving(&sim, "web").len(), 1);
    assert_eq!(sim.tasks("web").len(), 2);
}

#[test]
fn restart_on_failure_skips_tasks_that_exit_cleanly() {
    let mut sim = setup(&["a"]);
    let mut s = service("web", replicated(2));
    restart_policy(&mut s, pb::RestartCondition::OnFailure, 0, 0);
    sim.add_service(s);
    sim.settle(10);
    let running = serving(&sim, "web");
    sim.report(&tid(&running[0]), S::Complete);
    sim.report(&tid(&running[1]), S::Failed);
    let actions = sim.orchestrate();
    let new = creates(&actions);
    assert_eq!(new.len(), 1);
    assert_eq!(new[0].slot, running[1].slot);
}

#[test]
fn max_attempts_bound_restarts_of_a_slot() {
    let mut sim = setup(&["a"]);
    let mut s = service("web", replicated(1));
    restart_policy(&mut s, pb::RestartCondition::Any, 0, 2);
    sim.add_service(s);
    for _ in 0..6 {
        sim.settle(10);
        if let Some(t) = serving(&sim, "web").first() {
            sim.advance(1);
            sim.report(&tid(t), S::Failed);
        }
    }
    sim.settle(10);
    // The original and two restarts.
    assert_eq!(sim.tasks("web").len(), 3);
    assert!(serving(&sim, "web").is_empty());
    // A new spec version starts counting again.
    sim.update_service("web", |s| {
        task_spec(s).container.as_mut().unwrap().image = "bb:2".into();
    });
    sim.settle(10);
    assert_eq!(serving(&sim, "web").len(), 1);
    assert_eq!(image(&serving(&sim, "web")[0]), "bb:2");
}

#[test]
fn the_restart_window_forgets_old_restarts() {
    let mut sim = setup(&["a"]);
    let mut s = service("web", replicated(1));
    restart_policy(&mut s, pb::RestartCondition::Any, 0, 1);
    task_spec(&mut s).restart.as_mut().unwrap().window = Some(prost_types::Duration {
        seconds: 60,
        nanos: 0,
    });
    sim.add_service(s);
    sim.settle(10);
    sim.advance(5);
    sim.report(&tid(&only(&sim, "web")), S::Failed);
    sim.settle(10);
    // Restarted once (at 5 s). Failing again at 100 s: the restart is out
    // of the 60 s window, so another is allowed.
    sim.advance(95);
    sim.report(&tid(&serving(&sim, "web")[0]), S::Failed);
    sim.settle(10);
    assert_eq!(serving(&sim, "web").len(), 1);
    // Failing again at 110 s: one restart (at 100 s) within the window.
    sim.advance(10);
    sim.report(&tid(&serving(&sim, "web")[0]), S::Failed);
    sim.settle(10);
    assert!(serving(&sim, "web").is_empty());
}

#[test]
fn tasks_on_a_down_node_are_replaced_elsewhere_at_once() {
    let mut sim = setup(&["a", "b"]);
    sim.add_service(service("web", replicated(2)));
    sim.settle(10);
    let on_a: Vec<_> = serving(&sim, "web")
        .into_iter()
        .filter(|t| t.node_id == "a")
        .collect();
    assert_eq!(on_a.len(), 1);
    sim.set_node("a", |n| {
        n.status.as_mut().unwrap().state = pb::NodeState::Down.into()
    });
    let actions = sim.orchestrate();
    assert_eq!(desired(&sim.task(&tid(&on_a[0]))), S::Shutdown);
    let new = creates(&actions);
    assert_eq!(new.len(), 1);
    assert_eq!(new[0].slot, on_a[0].slot);
    // The old task cannot run any more: no need to wait for it.
    assert_eq!(desired(new[0]), S::Running);
    sim.settle(10);
    assert_eq!(per_node(&sim, "web"), [("b".into(), 2)].into());
}

#[test]
fn draining_moves_tasks_and_starts_them_after_the_old_ones_stop() {
    let mut sim = setup(&["a", "b"]);
    sim.add_service(service("web", replicated(2)));
    sim.settle(10);
    sim.set_node("a", |n| {
        n.spec.as_mut().unwrap().availability = pb::NodeAvailability::Drain.into()
    });
    let actions = sim.orchestrate();
    let new = creates(&actions);
    assert_eq!(new.len(), 1);
    // The old task is still running on a: the new one waits as READY.
    assert_eq!(desired(new[0]), S::Ready);
    let new_id = tid(new[0]);
    sim.schedule();
    assert_eq!(sim.task(&new_id).node_id, "b");
    sim.agents(|_| false);
    assert_eq!(st(&sim.task(&new_id)), S::Ready);
    sim.orchestrate();
    assert_eq!(desired(&sim.task(&new_id)), S::Running);
    sim.settle(10);
    assert_eq!(per_node(&sim, "web"), [("b".into(), 2)].into());
    assert_eq!(serving(&sim, "web").len(), 2);
}

#[test]
fn tasks_on_a_removed_node_are_replaced() {
    let mut sim = setup(&["a", "b"]);
    sim.add_service(service("web", replicated(2)));
    sim.settle(10);
    sim.write(|tx| tx.remove::<pb::Node>("a"));
    sim.settle(10);
    assert_eq!(per_node(&sim, "web"), [("b".into(), 2)].into());
}

#[test]
fn history_is_kept_to_the_retention_limit() {
    let mut sim = setup(&["a"]);
    let mut cluster = crate::store::defaults::cluster("c", "default");
    cluster
        .spec
        .as_mut()
        .unwrap()
        .orchestration
        .as_mut()
        .unwrap()
        .task_history_retention_limit = 3;
    sim.write(|tx| tx.create(cluster));
    let mut s = service("web", replicated(1));
    restart_policy(&mut s, pb::RestartCondition::Any, 0, 0);
    sim.add_service(s);
    sim.settle(10);
    for i in 0..6 {
        sim.advance(1);
        let t = only(&sim, "web");
        sim.report(&tid(&t), S::Failed);
        sim.settle(10);
        assert!(
            sim.tasks("web").len() <= 3,
            "round {i}: {}",
            sim.tasks("web").len()
        );
    }
    assert_eq!(sim.tasks("web").len(), 3);
    assert_eq!(serving(&sim, "web").len(), 1);
}

#[test]
fn history_keeps_what_max_attempts_needs_and_negative_keeps_all() {
    let mut sim = setup(&["a"]);
    let mut cluster = crate::store::defaults::cluster("c", "default");
    cluster
        .spec
        .as_mut()
        .unwrap()
        .orchestration
        .as_mut()
        .unwrap()
        .task_history_retention_limit = 1;
    sim.write(|tx| tx.create(cluster.clone()));
    let mut s = service("web", replicated(1));
    restart_policy(&mut s, pb::RestartCondition::Any, 0, 3);
    sim.add_service(s);
    for _ in 0..6 {
        sim.settle(10);
        if let Some(t) = serving(&sim, "web").first() {
            sim.advance(1);
            sim.report(&tid(t), S::Failed);
        }
    }
    sim.settle(10);
    assert_eq!(sim.tasks("web").len(), 4);
    assert!(serving(&sim, "web").is_empty());

    let mut sim = setup(&["a"]);
    let mut c = cluster;
    c.spec
        .as_mut()
        .unwrap()
        .orchestration
        .as_mut()
        .unwrap()
        .task_history_retention_limit = -1;
    sim.write(|tx| tx.create(c));
    let mut s = service("web", replicated(1));
    restart_policy(&mut s, pb::RestartCondition::Any, 0, 0);
    sim.add_service(s);
    sim.settle(10);
    for _ in 0..8 {
        sim.advance(1);
        sim.report(&tid(&only(&sim, "web")), S::Failed);
        sim.settle(10);
    }
    assert_eq!(sim.tasks("web").len(), 9);
}

#[test]
fn deleting_a_service_removes_its_tasks_then_the_service() {
    let mut sim = setup(&["a"]);
    sim.add_service(service("web", replicated(2)));
    sim.settle(10);
    sim.update_service("web", |s| s.pending_delete = true);
    let actions = sim.orchestrate();
    assert!(updates(&actions).iter().all(|t| desired(t) == S::Remove));
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::RemoveService { .. }))
    );
    sim.agents(|_| false);
    let actions = sim.orchestrate();
    assert_eq!(removals(&actions).len(), 2);
    assert!(actions.contains(&Action::RemoveService { id: "web".into() }));
    assert!(sim.store.view().get::<pb::Service>("web").is_none());
}

#[test]
fn orphaned_tasks_are_stopped_then_deleted() {
    let nodes: NodeMap = [("n1".to_owned(), Arc::new(node("n1")))].into();
    let ctx = Context {
        now: at(0),
        nodes: &nodes,
        cluster: None,
    };
    let mk = |id: &str, service: &str, node: &str, state: S| {
        Arc::new(pb::Task {
            meta: Some(pb::Meta {
                id: id.into(),
                ..Default::default()
            }),
            service_id: service.into(),
            node_id: node.into(),
            status: Some(pb::TaskStatus {
                state: state.into(),
                ..Default::default()
            }),
            desired_state: S::Running.into(),
            ..Default::default()
        })
    };
    let tasks = [
        mk("ended", "x", "n1", S::Failed),
        mk("lost", "x", "gone", S::Running),
        mk("live", "x", "n1", S::Running),
        mk("attachment", "", "n1", S::Running),
    ];
    let actions = reaper::orphaned(&ctx, &tasks);
    assert_eq!(removals(&actions), ["ended", "lost"]);
    let stop = updates(&actions);
    assert_eq!(stop.len(), 1);
    assert_eq!(tid(stop[0]), "live");
    assert_eq!(desired(stop[0]), S::Remove);
}

// ---------------------------------------------------------------------------
// Global services

fn set_availability(sim: &mut Sim, id: &str, a: pb::NodeAvailability) {
    sim.set_node(id, |n| n.spec.as_mut().unwrap().availability = a.into());
}

#[test]
fn global_services_run_once_on_every_eligible_node() {
    let mut sim = setup(&["a", "paused", "drained", "down"]);
    set_availability(&mut sim, "paused", pb::NodeAvailability::Pause);
    set_availability(&mut sim, "drained", pb::NodeAvailability::Drain);
    sim.set_node("down", |n| {
        n.status.as_mut().unwrap().state = pb::NodeState::Down.into()
    });
    sim.add_service(service("mon", global()));
    let actions = sim.orchestrate();
    let new = creates(&actions);
    assert_eq!(new.len(), 1);
    assert_eq!(new[0].node_id, "a");
    assert_eq!(new[0].slot, 0);
    sim.settle(10);
    assert_eq!(per_node(&sim, "mon"), [("a".into(), 1)].into());

    // A node that joins, or is unpaused, gets one.
    sim.add_node(node("new"));
    set_availability(&mut sim, "paused", pb::NodeAvailability::Active);
    sim.settle(10);
    assert_eq!(
        per_node(&sim, "mon"),
        [("a".into(), 1), ("new".into(), 1), ("paused".into(), 1)].into()
    );
    // Pausing keeps the task; draining shuts it down for good.
    set_availability(&mut sim, "a", pb::NodeAvailability::Pause);
    sim.settle(10);
    assert_eq!(per_node(&sim, "mon").get("a"), Some(&1));
    set_availability(&mut sim, "a", pb::NodeAvailability::Drain);
    let actions = sim.orchestrate();
    assert!(creates(&actions).is_empty());
    sim.settle(10);
    assert_eq!(per_node(&sim, "mon").get("a"), None);
    assert_eq!(serving(&sim, "mon").len(), 2);
}

#[test]
fn global_services_follow_constraints() {
    let mut sim = setup(&["a", "b"]);
    sim.set_node("a", |n| {
        n.spec.as_mut().unwrap().annotations = Some(pb::Annotations {
            name: String::new(),
            labels: [("zone".to_owned(), "x".to_owned())].into(),
        });
    });
    let mut s = service("mon", global());
    task_spec(&mut s).placement = Some(pb::Placement {
        constraints: vec!["node.labels.zone==x".into()],
        ..Default::default()
    });
    sim.add_service(s);
    sim.settle(10);
    assert_eq!(per_node(&sim, "mon"), [("a".into(), 1)].into());
    sim.set_node("a", |n| n.spec.as_mut().unwrap().annotations = None);
    sim.settle(10);
    assert!(per_node(&sim, "mon").is_empty());
}

#[test]
fn a_failed_global_task_restarts_on_its_node() {
    let mut sim = setup(&["a", "b"]);
    sim.add_service(service("mon", global()));
    sim.settle(10);
    let on_a = serving(&sim, "mon")
        .into_iter()
        .find(|t| t.node_id == "a")
        .unwrap();
    sim.report(&tid(&on_a), S::Failed);
    let actions = sim.orchestrate();
    assert!(creates(&actions).is_empty());
    sim.advance(5);
    let actions = sim.orchestrate();
    let new = creates(&actions);
    assert_eq!(new.len(), 1);
    assert_eq!(new[0].node_id, "a");
    sim.settle(10);
    assert_eq!(serving(&sim, "mon").len(), 2);
}

#[test]
fn global_tasks_of_a_removed_node_are_deleted() {
    let mut sim = setup(&["a", "b"]);
    sim.add_service(service("mon", global()));
    sim.settle(10);
    sim.write(|tx| tx.remove::<pb::Node>("a"));
    let actions = sim.orchestrate();
    assert_eq!(removals(&actions).len(), 1);
    assert_eq!(sim.tasks("mon").len(), 1);
}

// ---------------------------------------------------------------------------
// Jobs

fn replicated_job(max_concurrent: u64, total: u64) -> pb::service_spec::Mode {
    pb::service_spec::Mode::ReplicatedJob(pb::ReplicatedJob {
        max_concurrent,
        total_completions: total,
    })
}

fn completed(sim: &Sim, id: &str) -> usize {
    sim.tasks(id)
        .iter()
        .filter(|t| st(t) == S::Complete)
        .count()
}

#[test]
fn a_replicated_job_runs_to_its_completions_a_few_at_a_time() {
    let mut sim = setup(&["a", "b"]);
    sim.add_service(service("job", replicated_job(2, 5)));
    let actions = sim.orchestrate();
    let new = creates(&actions);
    assert_eq!(new.len(), 2);
    assert!(new.iter().all(|t| desired(t) == S::Complete));
    let mut max_active = 0;
    for _ in 0..20 {
        sim.orchestrate();
        sim.schedule();
        sim.agents(|_| false);
        let active = sim
            .tasks("job")
            .iter()
            .filter(|t| desired(t) <= S::Complete && st(t) != S::Complete)
            .count();
        max_active = max_active.max(active);
    }
    assert_eq!(completed(&sim, "job"), 5);
    assert_eq!(sim.tasks("job").len(), 5);
    assert!(max_active <= 2);
    let mut slots: Vec<u64> = sim.tasks("job").iter().map(|t| t.slot).collect();
    slots.sort_unstable();
    assert_eq!(slots, [1, 2, 3, 4, 5]);
}

#[test]
fn failed_job_tasks_restart_and_completed_ones_never_do() {
    let mut sim = setup(&["a"]);
    let mut s = service("job", replicated_job(0, 3));
    restart_policy(&mut s, pb::RestartCondition::Any, 0, 0);
    sim.add_service(s);
    sim.orchestrate();
    sim.schedule();
    let mut failed_once = false;
    sim.agents(|_| {
        let fail = !failed_once;
        failed_once = true;
        fail
    });
    sim.settle(20);
    assert_eq!(completed(&sim, "job"), 3);
    assert_eq!(
        sim.tasks("job")
            .iter()
            .filter(|t| st(t) == S::Failed)
            .count(),
        1
    );
    assert_eq!(sim.tasks("job").len(), 4);
    sim.advance(100);
    sim.settle(5);
    assert_eq!(sim.tasks("job").len(), 4);
}

#[test]
fn a_new_job_iteration_replaces_the_old_run() {
    let mut sim = setup(&["a"]);
    sim.add_service(service("job", replicated_job(1, 2)));
    sim.orchestrate();
    sim.schedule();
    sim.agents(|_| false);
    // One task running, none complete; run the job again.
    sim.update_service("job", |s| {
        s.job_status = Some(pb::JobStatus {
            job_iteration: 1,
            last_execution: None,
        });
    });
    let actions = sim.orchestrate();
    assert_eq!(updates(&actions).len(), 1);
    assert_eq!(desired(updates(&actions)[0]), S::Remove);
    let new = creates(&actions);
    assert_eq!(new.len(), 1);
    assert_eq!(new[0].job_iteration, 1);
    sim.settle(20);
    assert_eq!(completed(&sim, "job"), 2);
    assert!(sim.tasks("job").iter().all(|t| t.job_iteration == 1));
}

#[test]
fn a_global_job_completes_once_per_node_including_new_ones() {
    let mut sim = setup(&["a", "b"]);
    sim.add_service(service(
        "gj",
        pb::service_spec::Mode::GlobalJob(pb::GlobalJob {}),
    ));
    sim.settle(20);
    assert_eq!(completed(&sim, "gj"), 2);
    sim.advance(100);
    sim.settle(5);
    assert_eq!(sim.tasks("gj").len(), 2);
    sim.add_node(node("c"));
    sim.settle(20);
    assert_eq!(completed(&sim, "gj"), 3);
    assert_eq!(sim.tasks("gj").len(), 3);
}

// ---------------------------------------------------------------------------
// Rolling updates

fn update_config(s: &mut pb::Service, f: impl FnOnce(&mut pb::UpdateConfig)) {
    let spec = s.spec.as_mut().unwrap();
    let mut c = spec.update.take().unwrap_or(pb::UpdateConfig {
        parallelism: 1,
        monitor: Some(prost_types::Duration {
            seconds: 5,
            nanos: 0,
        }),
        ..Default::default()
    });
    f(&mut c);
    spec.update = Some(c);
}

fn set_image(sim: &mut Sim, id: &str, image: &str) {
    sim.update_service(id, |s| {
        task_spec(s).container.as_mut().unwrap().image = image.into();
    });
}

fn status(sim: &Sim, id: &str) -> (pb::UpdateState, String) {
    let s = sim.service(id);
    let st = s.update_status.clone().unwrap_or_default();
    (st.state(), st.message)
}

fn images(sim: &Sim, id: &str) -> Vec<String> {
    let mut v: Vec<String> = serving(sim, id)
        .iter()
        .map(|t| image(t).to_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn stop_first_updates_one_slot_at_a_time() {
    let mut sim = setup(&["a", "b"]);
    sim.add_service(service("web", replicated(3)));
    sim.settle(10);
    set_image(&mut sim, "web", "bb:2");
    let actions = sim.orchestrate();
    assert_eq!(
        status(&sim, "web"),
        (pb::UpdateState::Updating, update::MSG_UPDATING.into())
    );
    let new = creates(&actions);
    assert_eq!(new.len(), 1);
    assert_eq!(image(new[0]), "bb:2");
    // The old task is still running: the new one waits for it.
    assert_eq!(desired(new[0]), S::Ready);
    let shut: Vec<_> = updates(&actions);
    assert_eq!(shut.len(), 1);
    assert_eq!(shut[0].slot, new[0].slot);
    assert_eq!(desired(shut[0]), S::Shutdown);
    // Nothing more until the replacement runs.
    assert!(creates(&sim.orchestrate()).is_empty());
    sim.schedule();
    sim.agents(|_| false);
    sim.orchestrate();
    sim.schedule();
    sim.agents(|_| false);
    assert_eq!(images(&sim, "web"), ["bb:1", "bb:1", "bb:2"]);
    // Next slot.
    let actions = sim.orchestrate();
    assert_eq!(creates(&actions).len(), 1);
    sim.settle(20);
    assert_eq!(images(&sim, "web"), ["bb:2", "bb:2", "bb:2"]);
    // Completion waits for the monitor period.
    assert_eq!(status(&sim, "web").0, pb::UpdateState::Updating);
    sim.advance(5);
    sim.orchestrate();
    assert_eq!(
        status(&sim, "web"),
        (pb::UpdateState::Completed, update::MSG_COMPLETED.into())
    );
    let st = sim.service("web").update_status.clone().unwrap();
    assert_eq!(st.started_at, Some(at(0).into()));
    assert_eq!(st.completed_at, Some(at(5).into()));
}

/// The leader skips passes for tasks merely reaching RUNNING unless an
/// update awaits one of its replacements.
#[test]
fn an_update_awaits_its_replacements_until_they_run() {
    let mut sim = setup(&["a"]);
    sim.add_service(service("web", replicated(2)));
    sim.settle(10);
    let awaits = |sim: &Sim| {
        sim.progress
            .get("web")
            .is_some_and(UpdateProgress::awaits_tasks)
    };
    assert!(!awaits(&sim), "no update, nothing awaited");
    set_image(&mut sim, "web", "bb:2");
    sim.orchestrate();
    assert!(awaits(&sim));
    sim.schedule();
    sim.agents(|_| false);
    sim.orchestrate();
    sim.schedule();
    sim.agents(|_| false);
    assert!(
        awaits(&sim),
        "the old task stopped, the new one not yet seen running"
    );
    sim.orchestrate();
    sim.schedule();
    sim.agents(|_| false);
    sim.orchestrate();
    sim.schedule();
    sim.agents(|_| false);
    sim.orchestrate();
    sim.settle(20);
    assert_eq!(images(&sim, "web"), ["bb:2", "bb:2"]);
    assert!(!awaits(&sim), "every replacement ran");
}

#[test]
fn start_first_starts_the_new_task_before_stopping_the_old() {
    let mut sim = setup(&["a"]);
    let mut s = service("web", replicated(2));
    update_config(&mut s, |c| c.order = pb::UpdateOrder::StartFirst.into());
    sim.add_service(s);
    sim.settle(10);
    set_image(&mut sim, "web", "bb:2");
    let actions = sim.orchestrate();
    let new = creates(&actions);
    assert_eq!(new.len(), 1);
    assert_eq!(desired(new[0]), S::Running);
    assert!(updates(&actions).is_empty());
    sim.schedule();
    sim.agents(|_| false);
    assert_eq!(serving(&sim, "web").len(), 3);
    let actions = sim.orchestrate();
    let shut = updates(&actions);
    assert_eq!(shut.len(), 1);
    assert_eq!(desired(shut[0]), S::Shutdown);
    assert_eq!(image(shut[0]), "bb:1");
    sim.settle(20);
    assert_eq!(images(&sim, "web"), ["bb:2", "bb:2"]);
}

#[test]
fn the_update_delay_spaces_out_slots() {
    let mut sim = setup(&["a"]);
    let mut s = service("web", replicated(2));
    update_config(&mut s, |c| {
        c.delay = Some(prost_types::Duration {
            seconds: 10,
            nanos: 0,
        });
    });
    sim.add_service(s);
    sim.settle(10);
    set_image(&mut sim, "web", "bb:2");
    sim.settle(20);
    assert_eq!(images(&sim, "web"), ["bb:1", "bb:2"]);
    let actions = sim.orchestrate();
    assert_eq!(next_wake(&actions), Some(at(10)));
    sim.advance(9);
    assert!(creates(&sim.orchestrate()).is_empty());
    sim.advance(1);
    assert_eq!(creates(&sim.orchestrate()).len(), 1);
    sim.settle(20);
    assert_eq!(images(&sim, "web"), ["bb:2", "bb:2"]);
    // Delay (10 s) >= monitor (5 s): the last watch is 11 s after the delay.
    sim.advance(20);
    sim.orchestrate();
    assert_eq!(status(&sim, "web").0, pb::UpdateState::Updating);
    sim.advance(1);
    sim.orchestrate();
    assert_eq!(status(&sim, "web").0, pb::UpdateState::Completed);
}

#[test]
fn parallelism_zero_replaces_everything_at_once() {
    let mut sim = setup(&["a"]);
    let mut s = service("web", replicated(4));
    update_config(&mut s, |c| c.parallelism = 0);
    sim.add_service(s);
    sim.settle(10);
    set_image(&mut sim, "web", "bb:2");
    assert_eq!(creates(&sim.orchestrate()).len(), 4);
}

#[test]
fn a_failing_update_pauses() {
    let mut sim = setup(&["a"]);
    sim.add_service(service("web", replicated(3)));
    sim.settle(10);
    set_image(&mut sim, "web", "bb:bad");
    sim.orchestrate();
    sim.schedule();
    sim.agents(|_| false);
    sim.orchestrate();
    sim.schedule();
    let bad = sim
        .tasks("web")
        .into_iter()
        .find(|t| image(t) == "bb:bad")
        .unwrap();
    sim.agents(|t| image(t) == "bb:bad");
    let actions = sim.orchestrate();
    let (state, message) = status(&sim, "web");
    assert_eq!(state, pb::UpdateState::Paused);
    assert_eq!(
        message,
        format!(
            "update paused due to failure or early termination of task {}",
            tid(&bad)
        )
    );
    assert_eq!(service_updates(&actions).len(), 1);
    // Paused: no more slots are replaced (the failed one still restarts).
    sim.advance(10);
    for _ in 0..5 {
        sim.orchestrate();
        sim.schedule();
        sim.agents(|_| false);
    }
    assert_eq!(images(&sim, "web"), ["bb:1", "bb:1", "bb:bad"]);
    let mut progress = UpdateProgress::default();
    let view = sim.store.view();
    let nodes = nodes_of(&view);
    let ctx = Context {
        now: sim.now,
        nodes: &nodes,
        cluster: None,
    };
    let step = progress.step(&ctx, &sim.service("web"), &sim.tasks("web"));
    assert!(step.actions.is_empty());
    assert!(matches!(step.outcome, UpdateOutcome::Paused { .. }));
}

/// Rounds of orchestrate, schedule and agents (failing the tasks `fail`
/// picks) until `done`; whether it got there.
fn rounds_until(
    sim: &mut Sim,
    rounds: usize,
    mut fail: impl FnMut(&pb::Task) -> bool,
    done: impl Fn(&Sim) -> bool,
) -> bool {
    for _ in 0..rounds {
        sim.orchestrate();
        if done(sim) {
            return true;
        }
        sim.schedule();
        sim.agents(&mut fail);
    }
    false
}

/// Two replicas of web with `--update-failure-action rollback`, updated to
/// an image whose tasks fail, driven until the rollback has started.
fn failing_update_rolling_back() -> Sim {
    let mut sim = setup(&["a"]);
    let mut s = service("web", replicated(2));
    update_config(&mut s, |c| {
        c.failure_action = pb::UpdateFailureAction::Rollback.into()
    });
    sim.add_service(s);
    sim.settle(10);
    set_image(&mut sim, "web", "bb:bad");
    assert!(rounds_until(
        &mut sim,
        10,
        |t| image(t) == "bb:bad",
        |s| { status(s, "web").0 == pb::UpdateState::RollbackStarted }
    ));
    sim
}

fn assert_rollback_completed(sim: &Sim) {
    assert_eq!(
        status(sim, "web"),
        (
            pb::UpdateState::RollbackCompleted,
            update::MSG_ROLLBACK_COMPLETED.into()
        )
    );
}

#[test]
fn a_failing_update_rolls_back() {
    let mut sim = failing_update_rolling_back();
    let s = sim.service("web");
    assert!(
        status(&sim, "web")
            .1
            .starts_with("update rolled back due to failure")
    );
    assert_eq!(image_of(&s), "bb:1");
    assert!(s.previous_spec.is_none());
    sim.advance(10);
    sim.settle(20);
    assert_eq!(images(&sim, "web"), ["bb:1", "bb:1"]);
    sim.advance(10);
    sim.orchestrate();
    assert_rollback_completed(&sim);
}

/// The rollback can finish while the failed slot waits out its restart
/// delay; the restart that follows is no update of its own (it was read as
/// one, and "update completed" overwrote "rollback completed").
#[test]
fn a_restart_after_a_completed_rollback_keeps_its_status() {
    let mut sim = failing_update_rolling_back();
    // The other slot still runs bb:1: nothing to roll back, done at once.
    sim.advance(1);
    sim.orchestrate();
    assert_rollback_completed(&sim);
    // The failed slot restarts after its delay; every pass of the way
    // (created, assigned, running) leaves the status alone.
    sim.advance(5);
    let actions = sim.orchestrate();
    assert_eq!(creates(&actions).len(), 1, "{actions:#?}");
    assert!(service_updates(&actions).is_empty(), "{actions:#?}");
    for _ in 0..5 {
        sim.orchestrate();
        sim.schedule();
        sim.orchestrate();
        sim.agents(|_| false);
        sim.advance(10);
    }
    assert_rollback_completed(&sim);
    assert_eq!(images(&sim, "web"), ["bb:1", "bb:1"]);
}

#[test]
fn a_failing_rollback_pauses() {
    let mut sim = setup(&["a"]);
    let mut s = service("web", replicated(2));
    update_config(&mut s, |c| {
        c.parallelism = 0;
        c.failure_action = pb::UpdateFailureAction::Rollback.into();
    });
    s.spec.as_mut().unwrap().rollback = s.spec.as_ref().unwrap().update;
    sim.add_service(s);
    sim.settle(10);
    set_image(&mut sim, "web", "bb:bad");
    // Both new tasks start; then one fails within the monitor period.
    assert!(rounds_until(
        &mut sim,
        10,
        |_| false,
        |s| images(s, "web") == ["bb:bad", "bb:bad"]
    ));
    let t = serving(&sim, "web")[0].clone();
    sim.report(&tid(&t), S::Failed);
    sim.orchestrate();
    assert_eq!(status(&sim, "web").0, pb::UpdateState::RollbackStarted);
    // The rollback replaces the other bad task, and that replacement fails.
    assert!(rounds_until(
        &mut sim,
        10,
        |_| true,
        |s| { status(s, "web").0 == pb::UpdateState::RollbackPaused }
    ));
    let message = status(&sim, "web").1;
    assert!(
        message.starts_with("rollback paused due to failure or early termination of task"),
        "{message}"
    );
}

fn image_of(s: &pb::Service) -> String {
    s.spec
        .as_ref()
        .and_then(|s| s.task.as_ref())
        .and_then(|t| t.container.as_ref())
        .map(|c| c.image.clone())
        .unwrap_or_default()
}

#[test]
fn the_failure_ratio_tolerates_some_failures() {
    let mut sim = setup(&["a"]);
    let mut s = service("web", replicated(4));
    update_config(&mut s, |c| {
        c.parallelism = 0;
        c.max_failure_ratio = 0.5;
    });
    sim.add_service(s);
    sim.settle(10);
    set_image(&mut sim, "web", "bb:2");
    // Two of the four new tasks fail: 0.5 is not above the ratio.
    let mut n = 0;
    rounds_until(
        &mut sim,
        6,
        |t| {
            let fail = image(t) == "bb:2" && n < 2;
            n += usize::from(fail);
            fail
        },
        |_| false,
    );
    assert_eq!(n, 2);
    assert_eq!(status(&sim, "web").0, pb::UpdateState::Updating);
    // A third one is too many.
    let t = serving(&sim, "web")
        .into_iter()
        .find(|t| image(t) == "bb:2")
        .unwrap();
    sim.report(&tid(&t), S::Failed);
    sim.orchestrate();
    assert_eq!(status(&sim, "web").0, pb::UpdateState::Paused);
}

#[test]
fn failures_after_the_monitor_period_do_not_count() {
    let mut sim = setup(&["a"]);
    sim.add_service(service("web", replicated(2)));
    sim.settle(10);
    set_image(&mut sim, "web", "bb:2");
    assert!(rounds_until(
        &mut sim,
        10,
        |_| false,
        |s| { images(s, "web").iter().any(|i| i == "bb:2") }
    ));
    let t = serving(&sim, "web")
        .into_iter()
        .find(|t| image(t) == "bb:2")
        .unwrap();
    sim.advance(30);
    sim.report(&tid(&t), S::Failed);
    sim.orchestrate();
    assert_eq!(status(&sim, "web").0, pb::UpdateState::Updating);
}

#[test]
fn placement_only_changes_leave_matching_tasks_alone() {
    let mut sim = setup(&["a"]);
    sim.add_service(service("web", replicated(2)));
    sim.settle(10);
    sim.update_service("web", |s| {
        task_spec(s).placement = Some(pb::Placement {
            constraints: vec!["node.hostname==a".into()],
            ..Default::default()
        });
    });
    let actions = sim.orchestrate();
    assert!(creates(&actions).is_empty());
    assert!(updates(&actions).is_empty());
    // A constraint the node fails does replace tasks.
    sim.update_service("web", |s| {
        task_spec(s).placement = Some(pb::Placement {
            constraints: vec!["node.hostname==b".into()],
            ..Default::default()
        });
    });
    assert_eq!(creates(&sim.orchestrate()).len(), 1);
}

#[test]
fn a_new_leader_resumes_an_update_without_exceeding_parallelism() {
    let mut sim = setup(&["a"]);
    sim.add_service(service("web", replicated(3)));
    sim.settle(10);
    set_image(&mut sim, "web", "bb:2");
    sim.orchestrate();
    // The leader changes: its update memory is gone.
    sim.progress.clear();
    assert!(creates(&sim.orchestrate()).is_empty());
    sim.settle(30);
    sim.advance(10);
    sim.settle(5);
    assert_eq!(images(&sim, "web"), ["bb:2", "bb:2", "bb:2"]);
    assert_eq!(status(&sim, "web").0, pb::UpdateState::Completed);
}

#[test]
fn rolling_update_of_a_global_service() {
    let mut sim = setup(&["a", "b", "c"]);
    sim.add_service(service("mon", global()));
    sim.settle(10);
    set_image(&mut sim, "mon", "bb:2");
    let actions = sim.orchestrate();
    let new = creates(&actions);
    assert_eq!(new.len(), 1);
    assert!(!new[0].node_id.is_empty());
    sim.settle(30);
    assert_eq!(images(&sim, "mon"), ["bb:2", "bb:2", "bb:2"]);
    assert_eq!(per_node(&sim, "mon").len(), 3);
}

#[test]
fn paused_nodes_keep_their_global_task_through_an_update() {
    let mut sim = setup(&["a", "b"]);
    sim.add_service(service("mon", global()));
    sim.settle(10);
    set_availability(&mut sim, "b", pb::NodeAvailability::Pause);
    set_image(&mut sim, "mon", "bb:2");
    sim.settle(20);
    sim.advance(10);
    sim.settle(5);
    assert_eq!(images(&sim, "mon"), ["bb:1", "bb:2"]);
    assert_eq!(status(&sim, "mon").0, pb::UpdateState::Completed);
    // Back to active: its task is updated too.
    set_availability(&mut sim, "b", pb::NodeAvailability::Active);
    sim.settle(20);
    assert_eq!(images(&sim, "mon"), ["bb:2", "bb:2"]);
}

#[test]
fn the_update_stage_alone_reports_its_outcome() {
    let mut sim = setup(&["a"]);
    sim.add_service(service("web", replicated(2)));
    sim.settle(10);
    set_image(&mut sim, "web", "bb:2");
    let view = sim.store.view();
    let nodes = nodes_of(&view);
    let ctx = Context {
        now: sim.now,
        nodes: &nodes,
        cluster: None,
    };
    let mut progress = UpdateProgress::default();
    let step = progress.step(&ctx, &sim.service("web"), &sim.tasks("web"));
    assert_eq!(
        step.outcome,
        UpdateOutcome::Updating {
            started: vec![SlotKey::Replica(1)],
            busy: 1,
            remaining: 1
        }
    );
    assert_eq!(creates(&step.actions).len(), 1);
    assert_eq!(service_updates(&step.actions).len(), 1);
}

/// Timing: run with `cargo test --release -p swarm orchestrator::tests::timing
/// -- --ignored --nocapture`.
#[test]
#[ignore = "timing; run in release mode"]
fn timing_passes_over_100k_replicas() {
    use std::time::Instant;
    let nodes: NodeMap = (0..1000)
        .map(|i| {
            let id = format!("node-{i:04}");
            (id.clone(), Arc::new(node(&id)))
        })
        .collect();
    let ctx = Context {
        now: at(0),
        nodes: &nodes,
        cluster: None,
    };
    let mut svc = service("big", replicated(100_000));
    svc.meta.as_mut().unwrap().version = 1;
    let mut progress = UpdateProgress::default();

    let started = Instant::now();
    let actions = orchestrate(&ctx, &svc, &[], &mut progress);
    eprintln!("create 100,000 tasks: {:?}", started.elapsed());
    let node_ids: Vec<&String> = nodes.keys().collect();
    let tasks: Vec<Arc<pb::Task>> = creates(&actions)
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            let mut t = t.clone();
            t.node_id.clone_from(node_ids[i % node_ids.len()]);
            t.meta.as_mut().unwrap().created_at = Some(at(0).into());
            t.status.as_mut().unwrap().state = S::Running.into();
            Arc::new(t)
        })
        .collect();
    assert_eq!(tasks.len(), 100_000);

    let started = Instant::now();
    let actions = orchestrate(&ctx, &svc, &tasks, &mut progress);
    eprintln!("steady state, nothing to do: {:?}", started.elapsed());
    assert!(actions.is_empty());

    let mut down = nodes.clone();
    let mut n = (*down["node-0000"]).clone();
    n.status.as_mut().unwrap().state = pb::NodeState::Down.into();
    down.insert("node-0000".into(), Arc::new(n));
    let ctx_down = Context {
        nodes: &down,
        ..ctx
    };
    let started = Instant::now();
    let actions = orchestrate(&ctx_down, &svc, &tasks, &mut progress);
    eprintln!("one node down, 100 tasks replaced: {:?}", started.elapsed());
    assert_eq!(creates(&actions).len(), 100);

    task_spec(&mut svc).container.as_mut().unwrap().image = "bb:2".into();
    let started = Instant::now();
    let actions = orchestrate(&ctx, &svc, &tasks, &mut progress);
    eprintln!("rolling update step: {:?}", started.elapsed());
    assert_eq!(creates(&actions).len(), 1);
}
