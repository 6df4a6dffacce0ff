//! Overlay networks end to end on real daemons and containers: three nodes
//! whose underlay addresses are on different routed subnets (node 2 is
//! alone on 203.0.113.0/24, so its traffic to the others must be
//! encapsulated), tasks talking across nodes by address and by name over
//! TCP and UDP, the embedded DNS (vip, dnsrr, `tasks.<name>`), isolation
//! between networks, a replaced task reachable at its new address, and
//! 1400-byte payloads crossing without fragmentation.
mod support;

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::*;
use swarm_harness::cmd::{self, CmdOutput};
use swarm_harness::{Cluster, Topology};

/// A running task: its ID, the node (1-based) it runs on, its address.
#[derive(Clone, Debug)]
struct Placed {
    id: String,
    node: usize,
    addr: String,
}

fn node_index(c: &Cluster, node_id: &str) -> usize {
    let ls = node_ls(c.node(1)).expect("node ls");
    let host = ls
        .iter()
        .find(|v| v["ID"] == node_id)
        .map(hostname_of)
        .expect("the task's node is listed");
    host.trim_start_matches("node-").parse().expect("node-<i>")
}

/// The service's running tasks, once `count` run, with their address on
/// its first network.
fn running(c: &Cluster, service: &str, count: usize) -> Vec<Placed> {
    let tasks = eventually(
        Duration::from_secs(60),
        &format!("{count} running tasks of {service}"),
        || {
            let ts: Vec<Value> = service_ps(c.node(1), service)
                .into_iter()
                .filter(|t| t["DesiredState"] == "running" && t["Status"]["State"] == "running")
                .collect();
            (ts.len() == count).then_some(ts)
        },
    );
    tasks
        .iter()
        .map(|t| Placed {
            id: t["ID"].as_str().unwrap_or_default().to_owned(),
            node: node_index(c, t["NodeID"].as_str().unwrap_or_default()),
            addr: t["NetworksAttachments"][0]["Addresses"][0]
                .as_str()
                .unwrap_or_default()
                .split('/')
                .next()
                .unwrap_or_default()
                .to_owned(),
        })
        .collect()
}

/// A process of the task's container (from its cgroup).
fn pid_of(c: &Cluster, t: &Placed) -> u32 {
    eventually(Duration::from_secs(10), "the container's pid", || {
        container_pid(c, t.node, &t.id)
    })
}

/// `GET /` to `host` from inside a container, with busybox nc (busybox's
/// static wget crashes in a rootfs without glibc's NSS modules).
fn http_get(host: &str, timeout_s: u32) -> String {
    format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w {timeout_s} {host} 80")
}

/// Runs a shell command inside the task's container (its mount and
/// network namespaces: its own busybox, /etc/resolv.conf and interfaces).
fn in_container(c: &Cluster, t: &Placed, script: &str) -> CmdOutput {
    let pid = pid_of(c, t).to_string();
    cmd::run(
        Command::new("nsenter").args(["-t", &pid, "-m", "-n", "--", "/bin/sh", "-c", script]),
        Duration::from_secs(20),
    )
}

/// Runs a host program (python3) in the task's network namespace only.
fn in_netns(c: &Cluster, t: &Placed, program: &[&str]) -> CmdOutput {
    let ns = c.node(t.node).data_root().join("netns").join(&t.id);
    cmd::run(
        Command::new("nsenter")
            .arg(format!("--net={}", ns.display()))
            .arg("--")
            .args(program),
        Duration::from_secs(20),
    )
}

fn page_host(out: &CmdOutput) -> String {
    out.stdout
        .lines()
        .find_map(|l| l.strip_prefix("hostname="))
        .unwrap_or_default()
        .to_owned()
}

/// The A records `nslookup NAME` printed (busybox format), sorted.
fn lookup(c: &Cluster, from: &Placed, name: &str) -> Vec<String> {
    let out = in_container(c, from, &format!("nslookup {name}"));
    let mut addrs: Vec<String> = out
        .stdout
        .split("Name:")
        .skip(1)
        .flat_map(|block| {
            block
                .lines()
                .filter_map(|l| l.trim().strip_prefix("Address:"))
                .map(|a| a.trim().split(' ').next().unwrap_or_default().to_owned())
                .collect::<Vec<_>>()
        })
        .filter(|a| a.parse::<std::net::Ipv4Addr>().is_ok())
        .collect();
    addrs.sort();
    addrs
}

const UDP_ECHO: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 9999))
s.settimeout(15)
data, peer = s.recvfrom(4096)
s.sendto(data, peer)
"#;

const UDP_SEND: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
# Don't fragment: the datagram must fit the overlay MTU as it is.
s.setsockopt(socket.IPPROTO_IP, 10, 2)  # IP_MTU_DISCOVER = IP_PMTUDISC_DO
s.settimeout(2)
payload = bytes(range(256)) * 6
payload = payload[: int(sys.argv[2])]
for _ in range(5):
    s.sendto(payload, (sys.argv[1], 9999))
    try:
        data, _ = s.recvfrom(4096)
    except socket.timeout:
        continue
    print("echoed", len(data), data == payload)
    break
"#;

#[test]
fn tasks_on_an_overlay_talk_across_routed_nodes_by_address_and_name() {
    let mut c = cluster(3, Topology::RoutedSubnets);
    let outside = c.add_client_host().addr();
    let c = c;
    form(&c, 1, 2);
    let n1 = c.node(1);
    wait_all_ready(n1, 3);
    let image = c.image("bb:1");
    n1.swarm(&["network", "create", "-d", "overlay", "front"])
        .success();
    n1.swarm(&["network", "create", "-d", "overlay", "back"])
        .success();
    for args in [
        vec![
            "--name",
            "web",
            "--network",
            "front",
            "--replicas",
            "3",
            "--replicas-max-per-node",
            "1",
        ],
        vec![
            "--name",
            "rr",
            "--network",
            "front",
            "--endpoint-mode",
            "dnsrr",
            "--replicas",
            "2",
        ],
        vec!["--name", "probe", "--network", "front", "--mode", "global"],
        vec!["--name", "iso", "--network", "back", "--mode", "global"],
        vec!["--name", "both", "--network", "front", "--network", "back"],
    ] {
        let mut argv = vec!["service", "create", "--detach"];
        argv.extend(args);
        argv.push(&image);
        n1.swarm(&argv).success();
    }
    let web = running(&c, "web", 3);
    let probes = running(&c, "probe", 3);
    let isos = running(&c, "iso", 3);
    let rr = running(&c, "rr", 2);
    let probe_on = |i: usize| {
        probes
            .iter()
            .find(|p| p.node == i)
            .cloned()
            .expect("a probe per node")
    };

    // TCP by address, from every node to every web replica: node 2's
    // traffic crosses the router, so it is really encapsulated.
    for p in &probes {
        for w in &web {
            let out = in_container(&c, p, &http_get(&w.addr, 5));
            if !(out.ok() && out.stdout.contains("hostname=")) {
                let pid = pid_of(&c, p).to_string();
                let ns = c.node(p.node).data_root().join("netns").join(&p.id);
                let dbg = cmd::run(
                    Command::new("sh").arg("-c").arg(format!(
                        "readlink /proc/{pid}/ns/net; stat -L -c %i {ns}; cat /proc/{pid}/cmdline; echo; nsenter --net={ns} ip addr; ip netns identify {pid}",
                        ns = ns.display()
                    )),
                    Duration::from_secs(5),
                );
                panic!(
                    "probe on node {} → web on node {}: {out}\n{dbg}",
                    p.node, w.node
                );
            }
            assert_eq!(
                page_host(&out),
                w.id.chars().take(12).collect::<String>(),
                "{out}"
            );
        }
    }

    // The container resolves through the embedded server only.
    let resolv = in_container(&c, &probes[0], "cat /etc/resolv.conf").success();
    assert!(
        resolv.stdout.starts_with("nameserver 127.0.0.11\n"),
        "{resolv}"
    );

    // DNS: vip mode answers the VIP, dnsrr the task addresses,
    // tasks.<name> the task addresses in both modes.
    let svc: Value = n1.swarm(&["service", "inspect", "web"]).success().json();
    let vip = svc[0]["Endpoint"]["VirtualIPs"]
        .as_array()
        .and_then(|v| v.first())
        .and_then(|v| v["Addr"].as_str())
        .map(|a| a.split('/').next().unwrap_or_default().to_owned())
        .expect("web has a VIP");
    let p1 = probe_on(1);
    assert_eq!(lookup(&c, &p1, "web"), vec![vip.clone()]);
    let mut web_addrs: Vec<String> = web.iter().map(|w| w.addr.clone()).collect();
    web_addrs.sort();
    assert_eq!(lookup(&c, &p1, "tasks.web"), web_addrs);
    let mut rr_addrs: Vec<String> = rr.iter().map(|w| w.addr.clone()).collect();
    rr_addrs.sort();
    assert_eq!(lookup(&c, &p1, "rr"), rr_addrs);
    assert_eq!(lookup(&c, &p1, "tasks.rr"), rr_addrs);

    // TCP by name, across nodes: dnsrr needs no load balancer.
    let p2 = probe_on(2);
    let out = in_container(&c, &p2, &http_get("rr", 5));
    assert!(out.ok(), "{out}");
    let host = page_host(&out);
    assert!(rr.iter().any(|t| t.id.starts_with(&host)), "{out}");

    // Names are only visible on shared networks: iso (on `back`) does not
    // see web, and cannot reach web's addresses.
    let iso1 = isos
        .iter()
        .find(|t| t.node == 1)
        .cloned()
        .expect("iso on node 1");
    assert!(lookup(&c, &iso1, "tasks.web").is_empty());
    for w in &web {
        let out = in_container(&c, &iso1, &http_get(&w.addr, 2));
        assert!(
            !out.stdout.contains("hostname="),
            "isolation broken: iso reached web on node {}: {out}",
            w.node
        );
    }

    // A container on both networks reaches both.
    let both = running(&c, "both", 1).remove(0);
    for (what, t) in [("web", &web[0]), ("iso", &isos[0])] {
        let out = in_container(&c, &both, &http_get(&t.addr, 5));
        assert!(out.stdout.contains("hostname="), "both → {what}: {out}");
    }

    // UDP both ways across the router, with 1400-byte datagrams that may
    // not be fragmented.
    let w2 = web
        .iter()
        .find(|w| w.node == 2)
        .cloned()
        .expect("web on node 2");
    for size in ["64", "1400"] {
        let server = {
            let (c2, w) = (c.node(2).data_root().join("netns").join(&w2.id), w2.clone());
            std::thread::spawn(move || {
                let _ = w;
                cmd::run(
                    Command::new("nsenter")
                        .arg(format!("--net={}", c2.display()))
                        .args(["--", "python3", "-c", UDP_ECHO]),
                    Duration::from_secs(20),
                )
            })
        };
        std::thread::sleep(Duration::from_millis(500));
        let out = in_netns(&c, &p1, &["python3", "-c", UDP_SEND, &w2.addr, size]);
        let _ = server.join();
        assert!(
            out.stdout.contains(&format!("echoed {size} True")),
            "UDP {size} bytes node 1 → node 2: {out}"
        );
    }

    // The data path's counters are in Prometheus: node 2 decapsulated what
    // the others sent it, node 1 dropped iso's attempts.
    assert!(
        metric(
            c.node(2),
            "swarm_overlay_packets_total{action=\"decapsulated\"}"
        ) > 0.0
    );
    assert!(
        metric(
            c.node(1),
            "swarm_overlay_packets_total{action=\"encapsulated\"}"
        ) > 0.0
    );
    assert!(metric(c.node(1), "swarm_overlay_drops_total{reason=\"isolation\"}") > 0.0);

    // Containers reach hosts outside the swarm, masqueraded to their
    // node's address (docker's gwbridge behaviour).
    let listener = c
        .host(1)
        .in_netns(|| std::net::TcpListener::bind((outside, 7070)).expect("bind outside"));
    let seen = std::thread::spawn(move || {
        use std::io::Write;
        let (mut s, peer) = listener.accept().expect("accept");
        let _ = s.write_all(b"hello from outside\n");
        peer
    });
    let out = in_container(&c, &p2, &format!("echo hi | nc -w 5 {outside} 7070"));
    assert!(out.stdout.contains("hello from outside"), "{out}");
    let peer = seen.join().expect("the outside server ran");
    assert_eq!(
        peer.ip(),
        std::net::IpAddr::V4(c.node(2).addr()),
        "masqueraded to node 2"
    );

    // A replaced task is reachable at its new address, and its name follows.
    n1.swarm(&["service", "update", "--force", "--detach", "rr"])
        .success();
    let new_rr = eventually(Duration::from_secs(60), "rr's tasks replaced", || {
        let now = running(&c, "rr", 2);
        now.iter()
            .all(|t| rr.iter().all(|o| o.id != t.id))
            .then_some(now)
    });
    let mut new_addrs: Vec<String> = new_rr.iter().map(|t| t.addr.clone()).collect();
    new_addrs.sort();
    eventually(
        Duration::from_secs(10),
        "tasks.rr follows the new tasks",
        || (lookup(&c, &p1, "tasks.rr") == new_addrs).then_some(()),
    );
    for t in &new_rr {
        let out = in_container(&c, &p2, &http_get(&t.addr, 5));
        assert!(out.ok(), "new rr task on node {}: {out}", t.node);
    }
}

/// A worker's daemon dies (kill -9) and comes back: its containers keep
/// their namespaces and addresses, and once the new daemon has adopted
/// them (re-attaching the data path and the DNS server), they are reachable
/// across the router again and resolve names.
#[test]
fn overlay_tasks_are_reachable_again_after_their_daemon_restarts() {
    let c = cluster(2, Topology::RoutedSubnets);
    form(&c, 1, 1);
    let n1 = c.node(1);
    wait_all_ready(n1, 2);
    let image = c.image("bb:1");
    n1.swarm(&["network", "create", "-d", "overlay", "front"])
        .success();
    n1.swarm(&[
        "service",
        "create",
        "--detach",
        "--name",
        "web",
        "--network",
        "front",
        "--mode",
        "global",
        &image,
    ])
    .success();
    let web = running(&c, "web", 2);
    let on = |i: usize| {
        web.iter()
            .find(|t| t.node == i)
            .cloned()
            .expect("a task per node")
    };
    let (w1, w2) = (on(1), on(2));
    let reach = |from: &Placed, to: &Placed| {
        let out = in_container(&c, from, &http_get(&to.addr, 3));
        out.ok() && out.stdout.contains("hostname=")
    };
    assert!(reach(&w1, &w2), "node 1 → node 2 before the restart");

    let n2 = c.node(2);
    n2.kill9();
    n2.start();
    swarm_harness::wait_until(
        Duration::from_secs(30),
        "node 2 adopts its container",
        || n2.log().contains("adopted the task's container"),
    );
    eventually(
        Duration::from_secs(20),
        "node 1 → node 2 after the restart",
        || reach(&w1, &w2).then_some(()),
    );
    assert!(reach(&w2, &w1), "node 2 → node 1 after the restart");
    // Same task, same address: adopted, not replaced.
    let again = running(&c, "web", 2);
    assert!(
        again.iter().any(|t| t.id == w2.id && t.addr == w2.addr),
        "{again:?}"
    );
    eventually(
        Duration::from_secs(10),
        "node 2's task resolves names again",
        || (lookup(&c, &w2, "tasks.web").len() == 2).then_some(()),
    );
}
