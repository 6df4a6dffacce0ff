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
    // Every manager converges on the same view: same IDs, roles, and all
    // three managers reachable (a freshly joined one is briefly unknown).
    let rows = |i: usize| -> Option<Vec<(String, String, String)>> {
        let ls = node_ls(c.node(i))?;
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
        Some(rows)
    };
    for i in 1..=3 {
        wait_all_ready(c.node(i), 5);
    }
    let view = eventually(Duration::from_secs(15), "managers agree", || {
        let views: Vec<_> = (1..=3).map(rows).collect::<Option<_>>()?;
        let reachable = views[0]
            .iter()
            .filter(|r| r.2 == "manager/reachable")
            .count();
        (views.windows(2).all(|w| w[0] == w[1]) && reachable == 3).then(|| views[0].clone())
    });
    let managers = view.iter().filter(|r| r.2.starts_with("manager")).count();
    assert_eq!(managers, 3, "{view:?}");

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
    eprintln!("failover: kill -9 of the leader to first accepted write: {took:?}");
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
    assert!(out.stderr.contains("no quorum"), "{}", out.stderr);
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

fn role_of(c: &swarm_harness::Cluster, on: usize, host: &str) -> Option<String> {
    let ls = node_ls(c.node(on))?;
    ls.iter().find(|v| hostname_of(v) == host).map(|v| {
        field(v, "Spec.Role")
            .as_str()
            .unwrap_or_default()
            .to_string()
    })
}

#[test]
fn demoting_the_leader_and_promoting_a_worker_keep_the_swarm_working() {
    let c = cluster(4, Topology::Bridge);
    form(&c, 3, 1);
    let ls = wait_all_ready(c.node(1), 4);
    let leader = leader_index(&ls);
    let other = (1..=3).find(|i| *i != leader).expect("a follower");

    // Demote the leader: another manager takes over.
    c.node(other)
        .swarm(&["node", "demote", &format!("node-{leader}")])
        .success();
    eventually(
        Duration::from_secs(20),
        "a new leader among the others",
        || {
            let ls = node_ls(c.node(other))?;
            let l = ls.iter().find(|v| is_leader(v))?;
            (hostname_of(l) != format!("node-{leader}")).then_some(())
        },
    );
    // The demoted node becomes a worker: it holds no cluster state.
    eventually(Duration::from_secs(20), "demoted node is a worker", || {
        let out = c.node(leader).swarm(&["node", "ls"]);
        (!out.ok() && out.stderr.contains("not a swarm manager")).then_some(())
    });

    // Promote the worker: it becomes a manager that answers node ls.
    c.node(other)
        .swarm(&["node", "promote", "node-4"])
        .success();
    // Its first answer already holds its own promotion: a manager serves
    // reads only once its store has applied its admission.
    let ls = eventually(
        Duration::from_secs(30),
        "promoted node serves node ls",
        || {
            let ls = node_ls(c.node(4))?;
            (ls.len() == 4).then_some(ls)
        },
    );
    let managers = ls
        .iter()
        .filter(|v| field(v, "Spec.Role") == "manager")
        .count();
    assert_eq!(managers, 3, "{ls:?}");
    assert_eq!(
        role_of(&c, 4, &format!("node-{leader}")).as_deref(),
        Some("worker")
    );
    // And the swarm still writes, from the new manager too.
    eventually(
        Duration::from_secs(10),
        "write via the promoted manager",
        || {
            c.node(4)
                .swarm(&["node", "update", "--label-add", "promoted=yes", "node-4"])
                .ok()
                .then_some(())
        },
    );
}

#[test]
fn force_new_cluster_recovers_a_swarm_that_lost_its_majority() {
    let c = cluster(4, Topology::Bridge);
    form(&c, 3, 1);
    wait_all_ready(c.node(1), 4);
    c.node(1)
        .swarm(&["node", "update", "--label-add", "keep=me", "node-4"])
        .success();
    c.node(2).kill9();
    c.node(3).kill9();
    let out = eventually(
        Duration::from_secs(15),
        "writes refused without quorum",
        || {
            let out = c
                .node(1)
                .swarm(&["node", "update", "--label-add", "lost=quorum", "node-4"]);
            (!out.ok()).then_some(out)
        },
    );
    assert!(
        out.stderr.contains("quorum") || out.stderr.contains("leader"),
        "{}",
        out.stderr
    );

    let n1 = c.node(1);
    n1.swarm(&[
        "init",
        "--force-new-cluster",
        "--advertise-addr",
        &n1.addr().to_string(),
    ])
    .success();
    eventually(Duration::from_secs(15), "writes work again", || {
        n1.swarm(&["node", "update", "--label-add", "back=yes", "node-4"])
            .ok()
            .then_some(())
    });
    let ls = node_ls(n1).expect("node ls");
    assert_eq!(ls.len(), 4, "every node is still known: {ls:?}");
    let w = ls
        .iter()
        .find(|v| hostname_of(v) == "node-4")
        .expect("node-4");
    assert_eq!(field(w, "Spec.Labels.keep"), "me");
    let managers = ls
        .iter()
        .filter(|v| field(v, "Spec.Role") == "manager")
        .count();
    assert_eq!(managers, 1, "only the forcing manager remains a manager");
    // The worker is still served by the new single-manager swarm.
    eventually(Duration::from_secs(15), "worker ready", || {
        let ls = node_ls(n1)?;
        ls.iter()
            .any(|v| hostname_of(v) == "node-4" && state_of(v) == "ready")
            .then_some(())
    });
}

#[test]
fn five_managers_survive_losing_two_including_the_leader() {
    let c = cluster(5, Topology::Bridge);
    form(&c, 5, 0);
    let ls = wait_all_ready(c.node(1), 5);
    let leader = leader_index(&ls);
    let other = (1..=5).find(|i| *i != leader).expect("a follower");
    c.node(leader).kill9();
    c.node(other).kill9();
    let alive: Vec<usize> = (1..=5).filter(|i| *i != leader && *i != other).collect();
    eventually(
        Duration::from_secs(10),
        "a write with 3 of 5 managers",
        || {
            c.node(alive[0])
                .swarm(&[
                    "node",
                    "update",
                    "--label-add",
                    "ha=5",
                    &format!("node-{}", alive[0]),
                ])
                .ok()
                .then_some(())
        },
    );
    // The survivors agree, and see the two dead managers as unreachable.
    eventually(Duration::from_secs(15), "survivors agree", || {
        let views: Vec<Vec<serde_json::Value>> = alive
            .iter()
            .map(|i| node_ls(c.node(*i)))
            .collect::<Option<_>>()?;
        let unreachable = views[0]
            .iter()
            .filter(|v| field(v, "ManagerStatus.Reachability") == "unreachable")
            .count();
        let same = views.windows(2).all(|w| w[0] == w[1]);
        (same && unreachable == 2).then_some(())
    });
}

#[test]
fn snapshots_follow_the_snapshot_interval_and_restore_after_restart() {
    let c = cluster(1, Topology::Bridge);
    let n = c.node(1);
    n.swarm(&[
        "init",
        "--advertise-addr",
        &n.addr().to_string(),
        "--snapshot-interval",
        "10",
    ])
    .success();
    wait_all_ready(n, 1);
    for i in 0..30 {
        n.swarm(&[
            "node",
            "update",
            "--label-add",
            &format!("k{i}=v{i}"),
            "self",
        ])
        .success();
    }
    let snaps = n.data_root().join("swarm/raft/snapshots");
    eventually(Duration::from_secs(10), "a snapshot file", || {
        let count = std::fs::read_dir(&snaps)
            .ok()?
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("snapshot-"))
            .count();
        // --max-snapshots 0: only the newest is kept.
        (count == 1).then_some(())
    });
    n.kill9();
    n.start();
    let ls = wait_all_ready(n, 1);
    assert_eq!(field(&ls[0], "Spec.Labels.k29"), "v29");
    assert_eq!(field(&ls[0], "Spec.Labels.k0"), "v0");
    // node ps works (no services yet: just the header).
    let ps = n.swarm(&["node", "ps"]).success();
    assert!(ps.stdout.starts_with("ID "), "{}", ps.stdout);
    let info = n.swarm(&["info"]).success();
    assert!(info.stdout.contains("Is Manager: true"), "{}", info.stdout);
}
