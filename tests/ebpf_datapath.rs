//! The eBPF pipeline end to end: the daemon loads the embedded object,
//! attaches XDP and TC to the interface it is told to use, and the per-CPU
//! counters it reads back change by exactly the packets that crossed.
use std::{net::UdpSocket, time::Duration};

use serde_json::Value;
use swarm_harness::{Cluster, Node, Topology};

/// (packets, bytes) of one counter from `swarm dataplane status --format json`.
fn counter(status: &Value, iface: &str, direction: &str, class: &str) -> (u64, u64) {
    status["Counters"]
        .as_array()
        .expect("Counters is an array")
        .iter()
        .find(|c| c["Interface"] == iface && c["Direction"] == direction && c["Class"] == class)
        .map_or((0, 0), |c| {
            (
                c["Packets"].as_u64().expect("Packets"),
                c["Bytes"].as_u64().expect("Bytes"),
            )
        })
}

fn status(node: &Node) -> Value {
    node.swarm(&["dataplane", "status", "--format", "json"])
        .success()
        .json()
}

/// Node 1 (nodes count from 1) runs with a data plane; the others without.
fn dataplane_on_first_node(i: usize) -> Vec<String> {
    if i == 1 {
        vec!["--dataplane-interface".into(), "eth0".into()]
    } else {
        Vec::new()
    }
}

/// Sends `count` datagrams of `payload` bytes from `from` to `to` and checks
/// every one arrived, so the counters are compared with packets that really
/// crossed the wire.
fn send_and_confirm(from: &UdpSocket, to: &UdpSocket, count: usize, payload: usize) {
    let dest = to.local_addr().expect("receiver address");
    let msg = vec![0x5a_u8; payload];
    to.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    let mut buf = vec![0_u8; payload + 64];
    for i in 0..count {
        from.send_to(&msg, dest).expect("send datagram");
        let (n, _) = to
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("datagram {i} of {count} never arrived: {e}"));
        assert_eq!(n, payload);
    }
}

#[test]
fn per_cpu_counters_change_by_exactly_the_packets_sent() {
    let cluster = Cluster::builder()
        .nodes(2)
        .topology(Topology::Bridge)
        .daemon_args(dataplane_on_first_node)
        .start();
    let (n1, n2) = (cluster.node(1), cluster.node(2));

    let st = status(n1);
    assert_eq!(st["Backend"], "ebpf");
    let progs: Vec<(String, String)> = st["Interfaces"][0]["Programs"]
        .as_array()
        .expect("programs")
        .iter()
        .map(|p| {
            (
                p["Kind"].as_str().unwrap_or_default().to_string(),
                p["AttachMode"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(st["Interfaces"][0]["Name"], "eth0");
    assert!(
        progs
            .iter()
            .any(|(k, m)| k == "xdp" && m.starts_with("xdp-")),
        "{progs:?}"
    );
    assert!(
        progs.contains(&("tc".into(), "tcx-egress".into())),
        "{progs:?}"
    );

    // Sockets are created inside each node's namespace and keep it.
    let a1 = n1.addr();
    let a2 = n2.addr();
    let s1 = n1.in_netns(move || UdpSocket::bind((a1, 0)).expect("bind on node 1"));
    let s2 = n2.in_netns(move || UdpSocket::bind((a2, 0)).expect("bind on node 2"));
    // Warm up neighbour tables so only our datagrams move the UDP counters.
    send_and_confirm(&s2, &s1, 1, 8);
    send_and_confirm(&s1, &s2, 1, 8);

    let before = status(n1);
    const PAYLOAD: usize = 100;
    // Ethernet 14 + IPv4 20 + UDP 8: what XDP and TC see of each frame.
    const FRAME: u64 = 14 + 20 + 8 + PAYLOAD as u64;
    const INBOUND: usize = 23;
    const OUTBOUND: usize = 37;
    send_and_confirm(&s2, &s1, INBOUND, PAYLOAD);
    send_and_confirm(&s1, &s2, OUTBOUND, PAYLOAD);
    let after = status(n1);

    let (rx0, rxb0) = counter(&before, "eth0", "ingress", "ipv4_udp");
    let (rx1, rxb1) = counter(&after, "eth0", "ingress", "ipv4_udp");
    let (tx0, txb0) = counter(&before, "eth0", "egress", "ipv4_udp");
    let (tx1, txb1) = counter(&after, "eth0", "egress", "ipv4_udp");
    assert_eq!(rx1 - rx0, INBOUND as u64, "XDP ingress UDP packets");
    assert_eq!(rxb1 - rxb0, INBOUND as u64 * FRAME, "XDP ingress UDP bytes");
    assert_eq!(tx1 - tx0, OUTBOUND as u64, "TC egress UDP packets");
    assert_eq!(txb1 - txb0, OUTBOUND as u64 * FRAME, "TC egress UDP bytes");

    // Node 2 was given no interface: its data plane is loaded (for overlay
    // networks) but attached nowhere.
    let s2 = status(n2);
    assert_eq!(s2["Backend"], "ebpf", "{s2}");
    assert_eq!(s2["Interfaces"], serde_json::json!([]), "{s2}");
}

#[test]
fn programs_detach_on_shutdown_and_reattach_on_restart() {
    let cluster = Cluster::builder()
        .nodes(1)
        .topology(Topology::Bridge)
        .daemon_args(dataplane_on_first_node)
        .start();
    let n1 = cluster.node(1);
    let link = || {
        n1.exec("ip", &["link", "show", "dev", "eth0"])
            .success()
            .stdout
    };
    assert!(link().contains("xdp"), "XDP should be attached: {}", link());

    n1.stop();
    assert!(
        !link().contains("xdp"),
        "XDP must be gone after SIGTERM: {}",
        link()
    );
    assert!(
        !n1.socket().exists(),
        "the API socket is removed on shutdown"
    );
    assert!(n1.log().contains("swarm daemon stopped"), "{}", n1.log());

    // A stale attachment would make this attach fail (native XDP is exclusive).
    n1.start();
    assert!(link().contains("xdp"));
    assert_eq!(status(n1)["Backend"], "ebpf");
}

#[test]
fn an_unknown_interface_fails_the_daemon_at_start_with_its_name() {
    let cluster = Cluster::builder().nodes(1).no_daemons().start();
    let n1 = cluster.node(1);
    let out = n1.exec(
        &swarm_harness::paths::swarm_bin().to_string_lossy(),
        &[
            "daemon",
            "--data-root",
            &n1.data_root().to_string_lossy(),
            "-H",
            &n1.host_arg(),
            "--dataplane-interface",
            "nosuch0",
        ],
    );
    assert!(!out.ok(), "daemon must refuse to start");
    assert!(out.stderr.contains("\"nosuch0\""), "{}", out.stderr);
    assert!(
        out.stderr.contains("--dataplane-interface"),
        "{}",
        out.stderr
    );
}
