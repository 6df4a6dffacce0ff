//! Simulated nodes (`swarm simulate`) against a real manager: hundreds of
//! nodes from one process join with a worker token, hold sessions with the
//! leader, and get tasks placed on them.
mod support;

use std::process::Stdio;
use std::time::Duration;

use support::*;
use swarm_harness::{Process, Topology};

const SIMULATED: usize = 200;

#[test]
fn hundreds_of_simulated_nodes_join_and_take_tasks() {
    let mut c = cluster(1, Topology::Bridge);
    let (worker_token, _) = form(&c, 1, 0);
    let manager = cluster_addr(c.node(1));
    let host_index = c.add_client_host().index();
    let host = c.host(host_index);
    let mut cmd = host.ns().command(swarm_harness::paths::swarm_bin());
    cmd.args([
        "simulate",
        "--token",
        &worker_token,
        "--nodes",
        &SIMULATED.to_string(),
        &manager,
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let mut sim = Process::spawn("simulate", cmd).expect("start swarm simulate");

    let n1 = c.node(1);
    eventually(
        Duration::from_secs(60),
        "every simulated node ready",
        || {
            let ls = node_ls(n1)?;
            let ready = ls.iter().filter(|n| state_of(n) == "ready").count();
            (ls.len() == SIMULATED + 1 && ready == SIMULATED + 1).then_some(())
        },
    );

    n1.swarm(&[
        "service",
        "create",
        "--detach",
        "--name",
        "many",
        "--replicas",
        "400",
        "--constraint",
        "node.role==worker",
        &c.image("bb:1"),
    ])
    .success();
    eventually(
        Duration::from_secs(30),
        "400 tasks, 2 on each simulated node",
        || {
            let by = running_by_node(&service_ps(n1, "many"));
            (!by.contains_key("") && by.len() == SIMULATED && by.values().all(|n| *n == 2))
                .then_some(())
        },
    );
    // Every node keeps heartbeating (once a second, on its session's
    // stream): over 4 s the leader counts at least two beats per node, and
    // no node is marked down (which 3 silent periods would do).
    let before = metric(n1, "swarm_dispatcher_heartbeats_total");
    std::thread::sleep(Duration::from_secs(4));
    let beats = metric(n1, "swarm_dispatcher_heartbeats_total") - before;
    assert!(
        beats >= 2.0 * SIMULATED as f64,
        "{beats} heartbeats from {SIMULATED} nodes in 4 s"
    );
    let ls = node_ls(n1).expect("node ls");
    assert!(
        ls.iter().all(|n| state_of(n) == "ready"),
        "a node went down: {ls:?}"
    );
    assert!(sim.is_running(), "the simulator exited early");
    sim.terminate(Duration::from_secs(10));
}
