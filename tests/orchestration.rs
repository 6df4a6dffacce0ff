//! The leader loops on real daemons: services' tasks are created by the
//! orchestrator and placed by the scheduler, spread over the nodes, follow
//! scale changes, and a new leader carries on after a failover.
mod support;

use std::time::Duration;

use serde_json::Value;
use support::*;
use swarm_harness::Topology;

/// Desired-running tasks per node, sorted, once every one of them is placed.
fn placed_counts(tasks: &[Value]) -> Option<Vec<usize>> {
    let by = running_by_node(tasks);
    if by.contains_key("") {
        return None;
    }
    let mut counts: Vec<usize> = by.into_values().collect();
    counts.sort_unstable();
    Some(counts)
}

#[test]
fn replicas_are_placed_spread_over_the_nodes_and_follow_scale() {
    let c = cluster(3, Topology::Bridge);
    form(&c, 1, 2);
    let n1 = c.node(1);
    wait_all_ready(n1, 3);
    let image = c.image("bb:1");
    n1.swarm(&[
        "service",
        "create",
        "--detach",
        "--name",
        "web",
        "--replicas",
        "5",
        &image,
    ])
    .success();
    eventually(Duration::from_secs(10), "5 tasks spread 1/2/2", || {
        let tasks = service_ps(n1, "web");
        (placed_counts(&tasks)? == [1, 2, 2]).then_some(())
    });

    n1.swarm(&["service", "scale", "--detach", "web=9"])
        .success();
    eventually(Duration::from_secs(10), "9 tasks spread 3/3/3", || {
        let tasks = service_ps(n1, "web");
        (placed_counts(&tasks)? == [3, 3, 3]).then_some(())
    });

    n1.swarm(&["service", "scale", "--detach", "web=2"])
        .success();
    eventually(Duration::from_secs(10), "2 tasks on 2 nodes", || {
        let tasks = service_ps(n1, "web");
        (placed_counts(&tasks)? == [1, 1]).then_some(())
    });
    // Slots are kept: the survivors are replicas 1 and 2.
    let mut slots: Vec<u64> = service_ps(n1, "web")
        .iter()
        .filter(|t| t["DesiredState"] == "running")
        .filter_map(|t| t["Slot"].as_u64())
        .collect();
    slots.sort_unstable();
    assert_eq!(slots, [1, 2]);
}

#[test]
fn a_global_service_has_one_task_per_node_including_nodes_that_join_later() {
    let c = cluster(3, Topology::Bridge);
    let (worker_token, _) = form(&c, 1, 1);
    let n1 = c.node(1);
    wait_all_ready(n1, 2);
    n1.swarm(&[
        "service",
        "create",
        "--detach",
        "--mode",
        "global",
        "--name",
        "agent",
        &c.image("bb:1"),
    ])
    .success();
    eventually(
        Duration::from_secs(10),
        "one task on each of 2 nodes",
        || (placed_counts(&service_ps(n1, "agent"))? == [1, 1]).then_some(()),
    );
    join(&c, 3, &worker_token);
    eventually(
        Duration::from_secs(10),
        "one task on each of 3 nodes",
        || (placed_counts(&service_ps(n1, "agent"))? == [1, 1, 1]).then_some(()),
    );
}

#[test]
fn a_new_leader_carries_on_orchestrating() {
    let c = cluster(3, Topology::Bridge);
    form(&c, 3, 0);
    let n1 = c.node(1);
    wait_all_ready(n1, 3);
    n1.swarm(&[
        "service",
        "create",
        "--detach",
        "--name",
        "web",
        "--replicas",
        "3",
        &c.image("bb:1"),
    ])
    .success();
    eventually(Duration::from_secs(10), "3 tasks placed", || {
        (placed_counts(&service_ps(n1, "web"))?.iter().sum::<usize>() == 3).then_some(())
    });

    // Stop the leader (node 1, which initialised the swarm); the others
    // elect a new one, which must scale the service.
    n1.stop();
    let n2 = c.node(2);
    eventually(
        Duration::from_secs(15),
        "scale through the new leader",
        || {
            n2.swarm(&["service", "scale", "--detach", "web=6"])
                .status
                .success()
                .then_some(())
        },
    );
    eventually(Duration::from_secs(10), "6 tasks placed", || {
        let tasks = service_ps(n2, "web");
        let by = running_by_node(&tasks);
        (!by.contains_key("") && by.values().sum::<usize>() == 6).then_some(())
    });
}
