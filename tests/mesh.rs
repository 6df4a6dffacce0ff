//! The service load balancer and routing mesh on real daemons and
//! containers: three nodes on routed subnets and a client host outside the
//! swarm. A published port answers on every node (also nodes without a
//! replica) from every replica, backends see the client's real address, a
//! VIP reached from another service's container balances over every
//! replica, scaling and a daemon's kill -9 under steady load fail no
//! request.
mod support;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;
use support::*;
use swarm_harness::cmd;
use swarm_harness::{Cluster, Host, Topology};

/// `GET /` through the routing mesh from the client host: the page's
/// `hostname=` and `client=` lines.
fn get(host: &Host, node: Ipv4Addr, port: u16) -> Option<(String, String)> {
    let r = host
        .in_netns(move || {
            swarm_harness::http::get(SocketAddr::from((node, port)), "/", Duration::from_secs(3))
        })
        .ok()?;
    let line = |k: &str| {
        r.body
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .map(str::to_owned)
    };
    Some((line("hostname=")?, line("client=")?))
}

fn running_ids(c: &Cluster, service: &str) -> Vec<String> {
    service_ps(c.node(1), service)
        .iter()
        .filter(|t| t["DesiredState"] == "running" && t["Status"]["State"] == "running")
        .map(|t| {
            t["ID"]
                .as_str()
                .unwrap_or_default()
                .chars()
                .take(12)
                .collect()
        })
        .collect()
}

fn wait_running(c: &Cluster, service: &str, n: usize) -> BTreeSet<String> {
    eventually(
        Duration::from_secs(60),
        &format!("{n} tasks of {service} running"),
        || {
            let ids = running_ids(c, service);
            (ids.len() == n).then(|| ids.into_iter().collect())
        },
    )
}

/// Requests in a loop from the client host to every node in turn until
/// stopped; counts successes and failures.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<Vec<String>>>,
}

impl Load {
    fn start(host: &Host, nodes: Vec<Ipv4Addr>, port: u16) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let (s, o, f) = (stop.clone(), ok.clone(), failed.clone());
        let ns_path = host.ns().path().to_owned();
        let thread = std::thread::spawn(move || {
            // This thread lives in the client's namespace: plain sockets,
            // a fresh connection per request.
            let ns = std::fs::File::open(&ns_path).expect("the client's namespace");
            // SAFETY: setns on a valid namespace fd changes only this thread.
            let rc = unsafe {
                use std::os::fd::AsRawFd;
                libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET)
            };
            assert_eq!(rc, 0, "setns into the client's namespace");
            let mut errors = Vec::new();
            let mut i = 0usize;
            while !s.load(Ordering::Relaxed) {
                let node = nodes[i % nodes.len()];
                i += 1;
                match swarm_harness::http::get(
                    SocketAddr::from((node, port)),
                    "/",
                    Duration::from_secs(3),
                ) {
                    Ok(r) if r.body.contains("hostname=") => {
                        o.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        f.fetch_add(1, Ordering::Relaxed);
                        errors.push(format!("{node}: {other:?}"));
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            errors
        });
        Load {
            stop,
            ok,
            failed,
            thread: Some(thread),
        }
    }

    /// Stops; returns (succeeded, failed, failure details).
    fn finish(mut self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let errors = self
            .thread
            .take()
            .map(|t| t.join().unwrap_or_default())
            .unwrap_or_default();
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            errors,
        )
    }
}

/// Prints what the load saw; no request may fail.
fn assert_none_failed(what: &str, (ok, failed, errors): (u64, u64, &[String])) {
    eprintln!("{what}: {ok} ok, {failed} failed: {errors:?}");
    assert_eq!(
        failed,
        0,
        "{what}: {failed} of {} failed: {errors:?}",
        ok + failed
    );
}

#[test]
fn published_ports_answer_on_every_node_from_every_replica_with_the_client_address() {
    let mut c = cluster(3, Topology::RoutedSubnets);
    c.add_client_host();
    let c = c;
    form(&c, 1, 2);
    let n1 = c.node(1);
    wait_all_ready(n1, 3);
    let image = c.image("bb:1");
    n1.swarm(&["network", "create", "-d", "overlay", "front"])
        .success();
    // Two replicas on three nodes: node 3 (or another) runs none, and must
    // answer anyway.
    n1.swarm(&[
        "service",
        "create",
        "--detach",
        "--name",
        "web",
        "--network",
        "front",
        "--replicas",
        "2",
        "--replicas-max-per-node",
        "1",
        "-p",
        "8080:80",
        &image,
    ])
    .success();
    n1.swarm(&[
        "service",
        "create",
        "--detach",
        "--name",
        "probe",
        "--network",
        "front",
        &image,
    ])
    .success();
    let replicas = wait_running(&c, "web", 2);
    wait_running(&c, "probe", 1);
    let client = c.host(1);
    let nodes: Vec<Ipv4Addr> = (1..=3).map(|i| c.node(i).addr()).collect();

    // Every node answers, every replica answers, and the backend saw the
    // client's own address.
    let mut seen = BTreeSet::new();
    for &node in &nodes {
        let mut from_node = BTreeSet::new();
        for _ in 0..12 {
            let (host, peer) = eventually(
                Duration::from_secs(15),
                &format!("{node}:8080 answers"),
                || get(client, node, 8080),
            );
            assert_eq!(
                peer,
                client.addr().to_string(),
                "the backend sees the client"
            );
            from_node.insert(host);
        }
        assert!(!from_node.is_empty());
        seen.extend(from_node);
    }
    assert_eq!(seen, replicas, "responses come from every replica");

    // The VIP from another service's container balances over both.
    let probe: Vec<Value> = service_ps(n1, "probe");
    let probe_id = probe[0]["ID"].as_str().unwrap_or_default().to_owned();
    let probe_node = netns_node(&c, &probe_id).expect("the probe's node");
    let mut via_vip = BTreeSet::new();
    // By name, through the embedded DNS and the VIP, inside the container.
    let pid = container_pid(&c, probe_node, &probe_id)
        .map(|p| p.to_string())
        .unwrap_or_default();
    for _ in 0..16 {
        let out = cmd::run(
            Command::new("nsenter").args([
                "-t",
                &pid,
                "-m",
                "-n",
                "--",
                "/bin/sh",
                "-c",
                "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 web 80",
            ]),
            Duration::from_secs(10),
        );
        if let Some(h) = out.stdout.lines().find_map(|l| l.strip_prefix("hostname=")) {
            via_vip.insert(h.to_owned());
        } else {
            panic!("web by name through its VIP: {out}");
        }
    }
    assert_eq!(via_vip, replicas, "the VIP balances over every replica");

    // The balancer's counters are in Prometheus.
    let sum = |series: &str| -> f64 { (1..=3).map(|i| metric(c.node(i), series)).sum() };
    assert!(sum("swarm_lb_packets_total{action=\"mesh_new_flow\"}") >= 36.0);
    assert!(sum("swarm_lb_packets_total{action=\"vip_forward\"}") > 0.0);
    assert!(sum("swarm_lb_conntrack_capacity") > 0.0);

    // Scaling up and down under steady load fails no request.
    let load = Load::start(client, nodes.clone(), 8080);
    std::thread::sleep(Duration::from_secs(1));
    n1.swarm(&["service", "scale", "--detach", "web=3"])
        .success();
    wait_running(&c, "web", 3);
    std::thread::sleep(Duration::from_secs(1));
    n1.swarm(&["service", "scale", "--detach", "web=1"])
        .success();
    wait_running(&c, "web", 1);
    std::thread::sleep(Duration::from_secs(2));
    let (ok, failed, errors) = load.finish();
    assert!(ok > 10, "the load ran: {ok} ok");
    assert_none_failed("while scaling", (ok, failed, &errors));

    // A daemon killed with -9 under load: its node's programs stay
    // attached (pinned), requests keep succeeding, and it comes back.
    let load = Load::start(client, nodes.clone(), 8080);
    std::thread::sleep(Duration::from_secs(1));
    let n2 = c.node(2);
    n2.kill9();
    std::thread::sleep(Duration::from_secs(3));
    n2.start();
    std::thread::sleep(Duration::from_secs(3));
    let (ok, failed, errors) = load.finish();
    assert!(ok > 10, "the load ran: {ok} ok");
    assert_none_failed("while a daemon restarts", (ok, failed, &errors));
}

/// A rolling update under steady load fails no request (tasks leave every
/// node's backend set before they stop), and a backend whose container is
/// killed stops getting new connections as soon as its task is reported
/// failed.
#[test]
fn rolling_updates_and_killed_backends_lose_no_requests() {
    let mut c = cluster(2, Topology::RoutedSubnets);
    c.add_client_host();
    let c = c;
    form(&c, 1, 1);
    let n1 = c.node(1);
    wait_all_ready(n1, 2);
    let (bb1, bb2) = (c.image("bb:1"), c.image("bb:2"));
    n1.swarm(&[
        "service",
        "create",
        "--detach",
        "--name",
        "web",
        "--replicas",
        "2",
        "--restart-delay",
        "1s",
        "-p",
        "8081:80",
        &bb1,
    ])
    .success();
    wait_running(&c, "web", 2);
    let client = c.host(1);
    let nodes: Vec<Ipv4Addr> = (1..=2).map(|i| c.node(i).addr()).collect();
    for &n in &nodes {
        eventually(Duration::from_secs(15), "the mesh answers", || {
            get(client, n, 8081)
        });
    }

    // --publish mode=host: only the node running the task answers.
    n1.swarm(&[
        "service",
        "create",
        "--detach",
        "--name",
        "hostp",
        "--replicas",
        "1",
        "--publish",
        "mode=host,published=8082,target=80",
        &bb1,
    ])
    .success();
    let hostp = wait_running(&c, "hostp", 1);
    let hostp_id = service_ps(n1, "hostp")[0]["ID"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let on = netns_node(&c, &hostp_id).expect("hostp's node");
    let (answered, _) = eventually(Duration::from_secs(15), "the host port answers", || {
        get(client, c.node(on).addr(), 8082)
    });
    assert!(hostp.contains(&answered), "{answered} is hostp's task");
    let other = if on == 1 { 2 } else { 1 };
    assert!(
        get(client, c.node(other).addr(), 8082).is_none(),
        "a node without the task does not answer a host-mode port"
    );

    let load = Load::start(client, nodes.clone(), 8081);
    std::thread::sleep(Duration::from_secs(1));
    n1.swarm(&[
        "service",
        "update",
        "--update-parallelism",
        "1",
        "--update-delay",
        "0s",
        "--image",
        &bb2,
        "web",
    ])
    .success();
    std::thread::sleep(Duration::from_secs(1));
    let (ok, failed, errors) = load.finish();
    assert!(ok > 10, "the load ran: {ok} ok");
    assert_none_failed("during a rolling update", (ok, failed, &errors));

    // Kill one backend's container: once its task is failed, no request
    // goes to it (the replacement starts after the restart delay).
    let tasks = service_ps(n1, "web");
    let victim = tasks
        .iter()
        .find(|t| t["DesiredState"] == "running" && t["Status"]["State"] == "running")
        .expect("a running task");
    let id = victim["ID"].as_str().unwrap_or_default().to_owned();
    let node = netns_node(&c, &id).expect("the task's node");
    let procs = std::path::PathBuf::from(swarm_harness::cleanup::CGROUP_ROOT)
        .join("pids")
        .join(format!("{}n{node}", c.cgroup_prefix()))
        .join(&id)
        .join("cgroup.procs");
    for pid in std::fs::read_to_string(&procs).unwrap_or_default().lines() {
        let _ = Command::new("kill").args(["-9", pid.trim()]).status();
    }
    eventually(Duration::from_secs(10), "the killed task is failed", || {
        service_ps(n1, "web")
            .iter()
            .any(|t| t["ID"] == id.as_str() && t["Status"]["State"] == "failed")
            .then_some(())
    });
    // Give every node's balancer the news, then no request may fail.
    std::thread::sleep(Duration::from_millis(500));
    let load = Load::start(client, nodes, 8081);
    std::thread::sleep(Duration::from_secs(4));
    let (ok, failed, errors) = load.finish();
    assert!(ok >= 3, "the load ran: {ok} ok");
    assert_none_failed("after the backend failed", (ok, failed, &errors));
}
