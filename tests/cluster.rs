//! The control plane on real daemons in network namespaces: forming a
//! swarm, agreeing on it, losing and regaining managers.
mod support;

use std::time::{Duration, Instant};

use support::*;
use swarm_harness::Topology;

#[test]
fn three_managers_and_two_workers_form_a_swarm_every_manager_agrees_on() {
    let c = cluster(5, Topology::Bridge);
    form(&c, 3, 2);
    let views: Vec<Vec<(String, String, String)>> = (1..=3)
        .map(|i| {
            let ls = wait_all_ready(c.node(i), 5);
            let mut rows: Vec<(String, String, String)> = ls
                .iter()
                .map(|v| {
                    (
                        field(v, "ID").as_str().unwrap_or_default().to_string(),
                        hostname_of(v),
                        format!(
                            "{}/{}",
                            field(v, "Spec.Role").as_str().unwrap_or_default(),
                            field(v, "ManagerStatus.Reachability")
                                .as_str()
                                .unwrap_or_default()
                        ),
                    )
                })
                .collect();
            rows.sort();
            rows
        })
        .collect();
    assert_eq!(views[0], views[1]);
    assert_eq!(views[1], views[2]);
    let managers = views[0]
        .iter()
        .filter(|r| r.2.starts_with("manager"))
        .count();
    assert_eq!(managers, 3, "{:?}", views[0]);

    // Workers hold no cluster state and say so.
    let out = c.node(4).swarm(&["node", "ls"]).failure();
    assert!(out.stderr.contains("not a swarm manager"), "{}", out.stderr);

    // `info` on a worker names the managers it knows.
    let info = c
        .node(5)
        .swarm(&["info", "--format", "json"])
        .success()
        .json();
    assert_eq!(info["LocalNodeState"], "active", "{info}");
}

#[test]
fn a_dead_worker_is_marked_down_within_five_seconds() {
    let c = cluster(2, Topology::Bridge);
    form(&c, 1, 1);
    wait_all_ready(c.node(1), 2);
    c.node(2).kill9();
    let killed = Instant::now();
    eventually(Duration::from_secs(10), "worker marked down", || {
        let ls = node_ls(c.node(1))?;
        ls.iter()
            .any(|v| hostname_of(v) == "node-2" && state_of(v) == "down")
            .then_some(())
    });
    let took = killed.elapsed();
    assert!(took < Duration::from_secs(5), "took {took:?}");
    // It comes back by itself after a restart.
    c.node(2).start();
    wait_all_ready(c.node(1), 2);
}

#[test]
fn killing_the_leader_elects_another_that_accepts_a_write_within_three_seconds() {
    let c = cluster(3, Topology::Bridge);
    form(&c, 3, 0);
    let ls = wait_all_ready(c.node(1), 3);
    let leader = leader_index(&ls);
    let other = (1..=3).find(|i| *i != leader).expect("a follower");
    c.node(leader).kill9();
    let killed = Instant::now();
    eventually(Duration::from_secs(10), "a write after failover", || {
        c.node(other)
            .swarm(&[
                "node",
                "update",
                "--label-add",
                "failover=ok",
                &format!("node-{other}"),
            ])
            .ok()
            .then_some(())
    });
    let took = killed.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "failover write took {took:?}"
    );

    // The old leader returns as a follower and catches up.
    c.node(leader).start();
    eventually(Duration::from_secs(20), "old leader caught up", || {
        let ls = node_ls(c.node(leader))?;
        ls.iter()
            .any(|v| field(v, "Spec.Labels.failover") == "ok")
            .then_some(())
    });
}

#[test]
fn stopping_every_node_and_starting_them_again_keeps_the_state() {
    let c = cluster(4, Topology::Bridge);
    form(&c, 3, 1);
    wait_all_ready(c.node(1), 4);
    c.node(1)
        .swarm(&["node", "update", "--label-add", "zone=a", "node-4"])
        .success();
    let before: Vec<String> = {
        let mut v: Vec<String> = node_ls(c.node(1))
            .expect("node ls")
            .iter()
            .map(|v| field(v, "ID").as_str().unwrap_or_default().to_string())
            .collect();
        v.sort();
        v
    };
    for i in 1..=4 {
        c.node(i).stop();
    }
    for i in 1..=4 {
        c.node(i).start();
    }
    let ls = wait_all_ready(c.node(2), 4);
    let mut after: Vec<String> = ls
        .iter()
        .map(|v| field(v, "ID").as_str().unwrap_or_default().to_string())
        .collect();
    after.sort();
    assert_eq!(before, after);
    let w = ls
        .iter()
        .find(|v| hostname_of(v) == "node-4")
        .expect("node-4");
    assert_eq!(field(w, "Spec.Labels.zone"), "a");
}

#[test]
fn a_partitioned_manager_cannot_write_and_catches_up_when_healed() {
    let c = cluster(3, Topology::Bridge);
    form(&c, 3, 0);
    let ls = wait_all_ready(c.node(1), 3);
    let leader = leader_index(&ls);
    // Cut away a manager that is not the leader, so the majority keeps it.
    let lonely = (1..=3).find(|i| *i != leader).expect("a follower");
    c.isolate(lonely);
    let out = eventually(Duration::from_secs(10), "minority write refused", || {
        let out = c.node(lonely).swarm_timeout(
            &[
                "node",
                "update",
                "--label-add",
                "side=minority",
                &format!("node-{lonely}"),
            ],
            Duration::from_secs(20),
        );
        (!out.ok()).then_some(out)
    });
    assert!(
        out.stderr.contains("quorum") || out.stderr.contains("leader"),
        "{}",
        out.stderr
    );
    // Reads still answer on the minority side.
    assert!(node_ls(c.node(lonely)).is_some());
    // The majority writes.
    eventually(Duration::from_secs(10), "majority write", || {
        c.node(leader)
            .swarm(&[
                "node",
                "update",
                "--label-add",
                "side=majority",
                &format!("node-{leader}"),
            ])
            .ok()
            .then_some(())
    });
    c.reconnect(lonely);
    eventually(Duration::from_secs(20), "minority catches up", || {
        let ls = node_ls(c.node(lonely))?;
        ls.iter()
            .any(|v| field(v, "Spec.Labels.side") == "majority")
            .then_some(())
    });
}
