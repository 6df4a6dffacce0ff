//! Helpers shared by the swarm-level integration tests: forming a swarm
//! through the CLI exactly as a user would, and reading `node ls`.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use serde_json::Value;
use swarm_harness::{Cluster, Node, Topology};

/// Every node reports its harness name as hostname, so `node ls` and node
/// references are readable.
pub fn hostname_args(i: usize) -> Vec<String> {
    vec![
        "--hostname".into(),
        format!("node-{i}"),
        "--insecure-registry".into(),
        registry(),
    ]
}

/// The cluster's test registry (plain HTTP), which every node may pull
/// from: see [`Cluster::image`].
pub fn registry() -> String {
    use swarm_harness::cluster::{NET_A, REGISTRY_PORT};
    format!("{}.{}.{}.1:{REGISTRY_PORT}", NET_A[0], NET_A[1], NET_A[2])
}

/// `service ps SERVICE --format json`, one value per task.
pub fn service_ps(n: &Node, service: &str) -> Vec<Value> {
    match n
        .swarm(&["service", "ps", service, "--format", "json"])
        .success()
        .json()
    {
        Value::Array(tasks) => tasks,
        other => panic!("service ps printed {other}"),
    }
}

/// Tasks that are meant to run (desired state running), by node ID.
pub fn running_by_node(tasks: &[Value]) -> std::collections::BTreeMap<String, usize> {
    let mut by = std::collections::BTreeMap::new();
    for t in tasks.iter().filter(|t| t["DesiredState"] == "running") {
        *by.entry(t["NodeID"].as_str().unwrap_or("").to_owned())
            .or_insert(0) += 1;
    }
    by
}

pub fn cluster(nodes: usize, topology: Topology) -> Cluster {
    Cluster::builder()
        .nodes(nodes)
        .topology(topology)
        .daemon_args(hostname_args)
        .start()
}

pub fn cluster_addr(n: &Node) -> String {
    format!("{}:2377", n.addr())
}

/// `swarm init` on node 1, then `managers - 1` managers and `workers`
/// workers join, in that order. Returns the worker and manager tokens.
pub fn form(c: &Cluster, managers: usize, workers: usize) -> (String, String) {
    let n1 = c.node(1);
    n1.swarm(&["init", "--advertise-addr", &n1.addr().to_string()])
        .success();
    let wt = n1
        .swarm(&["join-token", "-q", "worker"])
        .success()
        .trimmed()
        .to_string();
    let mt = n1
        .swarm(&["join-token", "-q", "manager"])
        .success()
        .trimmed()
        .to_string();
    for i in 2..=managers {
        join(c, i, &mt);
    }
    for i in managers + 1..=managers + workers {
        join(c, i, &wt);
    }
    (wt, mt)
}

pub fn join(c: &Cluster, i: usize, token: &str) {
    let n = c.node(i);
    n.swarm(&[
        "join",
        "--token",
        token,
        "--advertise-addr",
        &n.addr().to_string(),
        &cluster_addr(c.node(1)),
    ])
    .success();
}

/// `node ls --format json` on `n`, or `None` while it fails.
pub fn node_ls(n: &Node) -> Option<Vec<Value>> {
    let out = n.swarm(&["node", "ls", "--format", "json"]);
    if !out.ok() {
        return None;
    }
    out.json().as_array().cloned()
}

pub fn field<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(v, |v, k| &v[k])
}

pub fn state_of(v: &Value) -> String {
    field(v, "Status.State")
        .as_str()
        .unwrap_or_default()
        .to_ascii_lowercase()
}

pub fn hostname_of(v: &Value) -> String {
    field(v, "Description.Hostname")
        .as_str()
        .unwrap_or_default()
        .to_string()
}

pub fn is_leader(v: &Value) -> bool {
    field(v, "ManagerStatus.Leader").as_bool() == Some(true)
}

/// Polls `f` until it returns `Some`, or panics after `timeout` with `what`.
pub fn eventually<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until `n` lists `count` nodes, all ready, with exactly one leader.
pub fn wait_all_ready(n: &Node, count: usize) -> Vec<Value> {
    eventually(
        Duration::from_secs(30),
        "all nodes ready with one leader",
        || {
            let ls = node_ls(n)?;
            let ready = ls.iter().filter(|v| state_of(v) == "ready").count();
            let leaders = ls.iter().filter(|v| is_leader(v)).count();
            (ls.len() == count && ready == count && leaders == 1).then_some(ls)
        },
    )
}

/// The index (1-based) of the node whose hostname is the leader's.
pub fn leader_index(ls: &[Value]) -> usize {
    let v = ls.iter().find(|v| is_leader(v)).expect("a leader");
    hostname_of(v)
        .strip_prefix("node-")
        .and_then(|i| i.parse().ok())
        .expect("hostname node-N")
}

/// The value of one series in node `n`'s Prometheus metrics (its default
/// `--metrics-addr`, 127.0.0.1:9323 in the node's namespace); 0 if absent.
pub fn metric(n: &Node, series: &str) -> f64 {
    n.in_netns(|| {
        let addr: std::net::SocketAddr = "127.0.0.1:9323".parse().expect("addr");
        swarm_harness::http::get(addr, "/metrics", Duration::from_secs(3))
    })
    .map(|r| r.body)
    .unwrap_or_default()
    .lines()
    .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
    .unwrap_or(0.0)
}

/// The node (1-based) whose data root holds task `task_id`'s network
/// namespace, i.e. where a task on an overlay network runs.
pub fn netns_node(c: &Cluster, task_id: &str) -> Option<usize> {
    (1..=c.nodes().len()).find(|&i| c.node(i).data_root().join("netns").join(task_id).exists())
}

/// A process of task `task_id`'s container on node `node` (from its pids
/// cgroup under the node's `--cgroup-parent`).
pub fn container_pid(c: &Cluster, node: usize, task_id: &str) -> Option<u32> {
    std::fs::read_to_string(
        std::path::Path::new(swarm_harness::cleanup::CGROUP_ROOT)
            .join("pids")
            .join(format!("{}n{node}", c.cgroup_prefix()))
            .join(task_id)
            .join("cgroup.procs"),
    )
    .ok()?
    .lines()
    .next()?
    .trim()
    .parse()
    .ok()
}
