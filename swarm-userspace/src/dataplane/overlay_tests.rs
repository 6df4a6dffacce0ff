//! The overlay data path end to end, for real (root, kernel with BPF and
//! VXLAN): two nodes on different routed subnets, one [`EbpfDataplane`]
//! each, containers on two overlay networks. Everything lives in namespaces
//! with unique names that are deleted on drop, also when an assertion
//! fails.
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use swarm_harness::Netns;
use swarm_harness::overlay_lab::{EchoServer, OverlayLab, tcp_echo, udp_echo};

use super::{
    Counter, Dataplane, LocalEndpoint, XdpMode, container_mac,
    ebpf::EbpfDataplane,
    overlay::{DEFAULT_VXLAN_PORT, OverlayStatus},
};

const VNI_A: u32 = 4097;
const VNI_B: u32 = 4098;
const TIMEOUT: Duration = Duration::from_secs(3);

fn net_a() -> ipnet::Ipv4Net {
    "10.0.1.0/24".parse().unwrap()
}
fn net_b() -> ipnet::Ipv4Net {
    "10.0.2.0/24".parse().unwrap()
}
const GW_A: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 1);
const GW_B: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 1);

/// Runs `f` on the data plane from a thread inside the node's namespace
/// (netlink and ifindex lookups follow the calling thread's namespace).
fn on<R: Send>(
    ns: &Netns,
    dp: &mut EbpfDataplane,
    f: impl FnOnce(&mut EbpfDataplane) -> R + Send,
) -> R {
    ns.run(|| f(dp))
}

fn overlay(dp: &EbpfDataplane) -> OverlayStatus {
    dp.status().unwrap().overlay
}

fn action(s: &OverlayStatus, what: &str) -> u64 {
    s.actions.get(what).copied().unwrap_or_default().packets
}

fn dropped(s: &OverlayStatus, why: &str) -> u64 {
    s.drops
        .get(why)
        .copied()
        .unwrap_or(Counter::default())
        .packets
}

#[test]
fn overlay_connects_containers_across_nodes_and_isolates_networks() {
    let mut lab = OverlayLab::new(2, false).expect("building the lab");
    let mut dps: Vec<EbpfDataplane> = Vec::new();
    let mut mtu = 0;
    for node in &lab.nodes {
        let (dp, info) = node.ns.run(|| {
            let mut dp = EbpfDataplane::load(XdpMode::Auto).expect("loading the data plane");
            let info = dp
                .overlay_start(DEFAULT_VXLAN_PORT)
                .expect("starting the overlay");
            // Idempotent.
            assert_eq!(dp.overlay_start(DEFAULT_VXLAN_PORT).unwrap(), info);
            (dp, info)
        });
        assert_eq!(info.underlay_mtu, 1500);
        assert_eq!(info.container_mtu, 1450);
        mtu = info.container_mtu;
        dps.push(dp);
    }

    // (node, vni, address): a1 and a3 share node 0, a2 is on node 1; b1 on
    // node 1 is on the other network.
    let a1 = Ipv4Addr::new(10, 0, 1, 2);
    let a2 = Ipv4Addr::new(10, 0, 1, 3);
    let a3 = Ipv4Addr::new(10, 0, 1, 4);
    let b1 = Ipv4Addr::new(10, 0, 2, 2);
    let plan = [
        (0, VNI_A, a1, GW_A),
        (1, VNI_A, a2, GW_A),
        (0, VNI_A, a3, GW_A),
        (1, VNI_B, b1, GW_B),
    ];
    for (node, _, addr, gw) in plan {
        lab.add_container(node, addr, 24, gw, mtu)
            .expect("adding a container");
    }
    for (i, dp) in dps.iter_mut().enumerate() {
        let ns = &lab.nodes[i].ns;
        on(ns, dp, |dp| {
            dp.set_overlay_network(VNI_A, net_a(), GW_A).unwrap();
            dp.set_overlay_network(VNI_B, net_b(), GW_B).unwrap();
        });
        for (c, (node, vni, addr, _)) in lab.containers.iter().zip(plan) {
            if node == i {
                let ep = LocalEndpoint {
                    vni,
                    addr,
                    host_ifindex: c.host_ifindex,
                    container_mac: container_mac(addr),
                };
                on(ns, dp, |dp| dp.set_local_endpoint(ep)).expect("setting a local endpoint");
            } else {
                let node_ip = lab.nodes[node].addr;
                on(ns, dp, |dp| dp.set_remote_endpoint(vni, addr, node_ip))
                    .expect("setting a remote endpoint");
            }
        }
    }
    let ct = |i: usize| &lab.containers[i].ns;

    // Cross-node TCP and UDP, both ways.
    let tcp_a2 = EchoServer::tcp(ct(1), a2, 7000).unwrap();
    let tcp_a1 = EchoServer::tcp(ct(0), a1, 7000).unwrap();
    let udp_a2 = EchoServer::udp(ct(1), a2, 7001).unwrap();
    let udp_a1 = EchoServer::udp(ct(0), a1, 7001).unwrap();
    assert_eq!(
        tcp_echo(ct(0), tcp_a2.addr, b"hello a2", TIMEOUT).unwrap(),
        b"hello a2"
    );
    assert_eq!(
        tcp_echo(ct(1), tcp_a1.addr, b"hello a1", TIMEOUT).unwrap(),
        b"hello a1"
    );
    assert_eq!(
        udp_echo(ct(0), udp_a2.addr, b"udp to a2", TIMEOUT).unwrap(),
        b"udp to a2"
    );
    assert_eq!(
        udp_echo(ct(1), udp_a1.addr, b"udp to a1", TIMEOUT).unwrap(),
        b"udp to a1"
    );

    // A full-MTU datagram (IP 1450 = container MTU) crosses with DF set;
    // so does a bulk TCP exchange of full-size segments.
    let big = vec![0xa5u8; (mtu - 28) as usize];
    assert_eq!(udp_echo(ct(0), udp_a2.addr, &big, TIMEOUT).unwrap(), big);
    assert_eq!(
        udp_echo(ct(0), udp_a2.addr, &big[..1400], TIMEOUT).unwrap(),
        &big[..1400]
    );
    let bulk: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
    assert_eq!(tcp_echo(ct(0), tcp_a2.addr, &bulk, TIMEOUT).unwrap(), bulk);
    let ping = ct(0).exec(
        "ping",
        &[
            "-c1",
            "-W2",
            "-n",
            "-q",
            "-M",
            "do",
            "-s",
            &(mtu - 28).to_string(),
            &a2.to_string(),
        ],
    );
    assert!(ping.ok(), "full-size ping with DF across nodes: {ping}");

    // Same node.
    let tcp_a3 = EchoServer::tcp(ct(2), a3, 7000).unwrap();
    assert_eq!(
        tcp_echo(ct(0), tcp_a3.addr, b"same node", TIMEOUT).unwrap(),
        b"same node"
    );
    assert_eq!(
        tcp_echo(ct(2), tcp_a1.addr, b"and back", TIMEOUT).unwrap(),
        b"and back"
    );

    let n0 = overlay(&dps[0]);
    let n1 = overlay(&dps[1]);
    assert!(
        action(&n0, "encapsulated") > 0 && action(&n1, "encapsulated") > 0,
        "{n0:?} {n1:?}"
    );
    assert!(
        action(&n0, "decapsulated") > 0 && action(&n1, "decapsulated") > 0,
        "{n0:?} {n1:?}"
    );
    assert!(action(&n0, "local_forward") > 0, "{n0:?}");
    assert!(action(&n0, "arp_answered") > 0, "{n0:?}");
    for s in [&n0, &n1] {
        for why in [
            "helper_failed",
            "malformed",
            "no_tunnel_key",
            "unknown_interface",
        ] {
            assert_eq!(dropped(s, why), 0, "{why} drops: {s:?}");
        }
    }
    // Neighbour resolution was answered locally, with the host veth's MAC
    // (proxy ARP) for peers and gateway alike.
    let neigh = ct(0).exec("ip", &["neigh", "show", "dev", "eth0"]);
    assert!(neigh.ok(), "{neigh}");
    let link = lab.nodes[0]
        .ns
        .ip(&["-o", "link", "show", "dev", &lab.containers[0].host_veth]);
    let host_mac = link
        .stdout
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_else(|| panic!("no MAC in {link}"))
        .to_string();
    let a2_line = neigh
        .stdout
        .lines()
        .find(|l| l.starts_with(&format!("{a2} ")))
        .unwrap_or_else(|| panic!("no neighbour entry for a2: {neigh}"));
    assert!(
        a2_line.contains(&host_mac),
        "a2 resolved to {a2_line}, not {host_mac}"
    );
    assert_eq!(n0.local_endpoints, 2);
    assert_eq!(n0.remote_endpoints, 2);
    assert_eq!(n0.networks, 2);

    // Isolation: b1 (other network) reaches neither a2 on its own node nor
    // a1 across nodes; every attempt is counted.
    let before = dropped(&n1, "isolation");
    let short = Duration::from_millis(500);
    assert!(
        tcp_echo(ct(3), tcp_a2.addr, b"x", short).is_err(),
        "b1 reached a2"
    );
    assert!(
        tcp_echo(ct(3), tcp_a1.addr, b"x", short).is_err(),
        "b1 reached a1"
    );
    assert!(
        udp_echo(ct(3), udp_a1.addr, b"x", short).is_err(),
        "b1 reached a1 over UDP"
    );
    let after = dropped(&overlay(&dps[1]), "isolation");
    assert!(after >= before + 3, "isolation drops {before} -> {after}");

    // An unknown address in one's own subnet is dropped, not passed on.
    let unknown = SocketAddr::from((Ipv4Addr::new(10, 0, 1, 99), 7000));
    assert!(udp_echo(ct(0), unknown, b"x", short).is_err());

    // Removing an endpoint detaches it: a1 can no longer send at all.
    on(&lab.nodes[0].ns, &mut dps[0], |dp| dp.remove_endpoint(a1)).unwrap();
    assert!(
        tcp_echo(ct(0), tcp_a2.addr, b"x", short).is_err(),
        "a1 still reaches a2 after removal"
    );
    on(&lab.nodes[0].ns, &mut dps[0], |dp| {
        dp.remove_overlay_network(VNI_A)
    })
    .unwrap();
    let n0 = overlay(&dps[0]);
    assert_eq!(
        (n0.networks, n0.local_endpoints, n0.remote_endpoints),
        (1, 0, 1)
    );

    drop((tcp_a1, tcp_a2, tcp_a3, udp_a1, udp_a2));
    // Programs detach before the namespaces go.
    drop(dps);
    drop(lab);
}
