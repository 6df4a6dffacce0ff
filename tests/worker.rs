//! The worker on real daemons: a service's tasks run as real containers
//! (image pulled from the cluster's registry, rootfs mounted, cgroups under
//! the daemon's `--cgroup-parent`), survive `kill -9` of their daemon (same
//! processes, still RUNNING), and are gone with their cgroups and mounts
//! once the service is removed. Failures read like docker's.
mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use support::*;
use swarm_harness::{Cluster, Topology, cleanup};

fn running_tasks(tasks: &[Value]) -> Vec<Value> {
    tasks
        .iter()
        .filter(|t| t["DesiredState"] == "running" && t["Status"]["State"] == "running")
        .cloned()
        .collect()
}

fn id_of(t: &Value) -> String {
    t["ID"].as_str().unwrap_or_default().to_owned()
}

/// Where a container's cgroup is, in the pids hierarchy.
fn cgroup(c: &Cluster, node: usize, id: &str) -> PathBuf {
    Path::new(cleanup::CGROUP_ROOT)
        .join("pids")
        .join(format!("{}n{node}", c.cgroup_prefix()))
        .join(id)
}

/// The processes of a container, from its cgroup.
fn pids(c: &Cluster, node: usize, id: &str) -> Vec<u32> {
    let mut p: Vec<u32> = std::fs::read_to_string(cgroup(c, node, id).join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    p.sort_unstable();
    p
}

/// The node whose runtime holds container `id`.
fn node_of(c: &Cluster, id: &str) -> Option<usize> {
    (1..=c.nodes().len()).find(|&i| c.node(i).data_root().join("containers").join(id).is_dir())
}

fn rootfs_mounts(c: &Cluster, node: usize) -> Vec<PathBuf> {
    cleanup::mounts_under(&c.node(node).data_root().join("images/containers"))
}

#[test]
fn service_tasks_run_as_containers_survive_a_daemon_crash_and_go_with_the_service() {
    let c = cluster(2, Topology::Bridge);
    form(&c, 1, 1);
    let n1 = c.node(1);
    wait_all_ready(n1, 2);
    let image = c.image("bb:1");
    n1.swarm(&[
        "service",
        "create",
        "--detach",
        "--name",
        "web",
        "--replicas",
        "2",
        &image,
    ])
    .success();
    let tasks = eventually(Duration::from_secs(60), "2 tasks running", || {
        let r = running_tasks(&service_ps(n1, "web"));
        (r.len() == 2).then_some(r)
    });

    // Real containers: one per node (spread), processes in their cgroups,
    // rootfs mounted from the image store.
    let mut placed = Vec::new();
    for t in &tasks {
        let id = id_of(t);
        let node = node_of(&c, &id).unwrap_or_else(|| panic!("no container {id} on any node"));
        let p = pids(&c, node, &id);
        assert!(
            !p.is_empty(),
            "container {id} has no process on node {node}"
        );
        assert!(
            rootfs_mounts(&c, node)
                .iter()
                .any(|m| m.ends_with(format!("{id}/rootfs"))),
            "no rootfs mount for {id}: {:?}",
            rootfs_mounts(&c, node)
        );
        placed.push((id, node, p));
    }
    eprintln!("placed: {placed:?}");
    let mut nodes: Vec<usize> = placed.iter().map(|(_, n, _)| *n).collect();
    nodes.sort_unstable();
    assert_eq!(nodes, [1, 2], "spread over both nodes");

    // The worker's daemon crashes and comes back: the container is
    // adopted, not replaced, and its task stays RUNNING.
    let (wid, _, wpids) = placed
        .iter()
        .find(|(_, n, _)| *n == 2)
        .cloned()
        .expect("a task on node 2");
    let n2 = c.node(2);
    n2.kill9();
    assert_eq!(pids(&c, 2, &wid), wpids, "containers outlive the daemon");
    n2.start();
    swarm_harness::wait_until(
        Duration::from_secs(30),
        "node 2 adopts its container",
        || n2.log().contains("adopted the task's container"),
    );
    wait_all_ready(n1, 2);
    std::thread::sleep(Duration::from_secs(2));
    let after = running_tasks(&service_ps(n1, "web"));
    let mut ids: Vec<String> = after.iter().map(id_of).collect();
    let mut before: Vec<String> = tasks.iter().map(id_of).collect();
    ids.sort();
    before.sort();
    assert_eq!(ids, before, "the same tasks run: {after:?}");
    assert_eq!(pids(&c, 2, &wid), wpids, "the same processes");

    // Removing the service removes the containers, cgroups and mounts.
    n1.swarm(&["service", "rm", "web"]).success();
    swarm_harness::wait_until(
        Duration::from_secs(60),
        "containers, cgroups and rootfs mounts removed",
        || {
            placed.iter().all(|(id, node, _)| {
                !c.node(*node)
                    .data_root()
                    .join("containers")
                    .join(id)
                    .exists()
                    && !cgroup(&c, *node, id).exists()
            }) && rootfs_mounts(&c, 1).is_empty()
                && rootfs_mounts(&c, 2).is_empty()
        },
    );
    for (_, _, p) in &placed {
        for pid in p {
            assert!(
                !Path::new(&format!("/proc/{pid}")).exists(),
                "process {pid} still runs"
            );
        }
    }
}

#[test]
fn failures_read_like_docker() {
    let c = cluster(1, Topology::Bridge);
    form(&c, 1, 0);
    let n1 = c.node(1);
    wait_all_ready(n1, 1);
    let exits = c.image("bb:1");
    n1.swarm(&[
        "service", "create", "--detach", "--name", "exits", &exits, "sh", "-c", "exit 3",
    ])
    .success();
    // 16 MiB of memory, 64 MiB wanted: the OOM killer ends it.
    n1.swarm(&[
        "service",
        "create",
        "--detach",
        "--name",
        "oom",
        "--limit-memory",
        "16M",
        "--restart-condition",
        "none",
        &exits,
        "sh",
        "-c",
        "awk 'BEGIN{s=\"x\"; while (length(s) < 64*1024*1024) s = s s; print length(s)}'",
    ])
    .success();
    let missing = c.image("no-such-image:1");
    n1.swarm(&[
        "service", "create", "--detach", "--name", "missing", &missing,
    ])
    .success();

    let failed = eventually(Duration::from_secs(60), "a task fails", || {
        service_ps(n1, "exits")
            .into_iter()
            .find(|t| t["Status"]["State"] == "failed")
    });
    assert_eq!(
        failed["Status"]["Err"], "task: non-zero exit (3)",
        "{failed}"
    );

    let oom = eventually(Duration::from_secs(60), "a task is OOM killed", || {
        service_ps(n1, "oom")
            .into_iter()
            .find(|t| t["Status"]["State"] == "failed")
    });
    assert_eq!(
        oom["Status"]["Err"], "task: non-zero exit (137): OOM killed",
        "{oom}"
    );
    let table = n1.swarm(&["service", "ps", "--no-trunc", "oom"]).success();
    assert!(table.stdout.contains("OOM killed"), "{table}");

    let rejected = eventually(Duration::from_secs(60), "a task is rejected", || {
        service_ps(n1, "missing")
            .into_iter()
            .find(|t| t["Status"]["State"] == "rejected")
    });
    let err = rejected["Status"]["Err"].as_str().unwrap_or_default();
    eprintln!("rejected: {err}");
    assert!(err.contains("no-such-image"), "{rejected}");

    // A node leaving the swarm takes its task containers along.
    n1.swarm(&["service", "rm", "missing", "oom"]).success();
    n1.swarm(&["leave", "--force"]).success();
    let left = n1.data_root().join("containers");
    let entries = std::fs::read_dir(&left)
        .map(|d| d.count())
        .unwrap_or_default();
    assert_eq!(entries, 0, "containers left in {}", left.display());
    assert!(rootfs_mounts(&c, 1).is_empty());
}
