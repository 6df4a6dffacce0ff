//! A conformance suite for the service load balancing of the [`Dataplane`]
//! seam, run against a real kernel in an [`OverlayLab`] (root): any
//! implementation (eBPF today, an IPVS fallback later) must pass it.
//!
//! Owns the lab's service topology and the behaviour every implementation
//! must show: VIP connections spread over backends on both nodes, keep
//! their backend when the set changes, avoid draining backends; the routing
//! mesh answers on every node and shows backends the real client address.
//! Never touches implementation internals (pinning and adoption are checked
//! by the implementation's own tests, on top of [`run`]'s fixture).
use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use swarm_harness::Netns;
use swarm_harness::overlay_lab::{EchoServer, OverlayLab, WhoamiConn, WhoamiServer};

use super::{
    Backend, Dataplane, LbStatus, LocalEndpoint, PortMapping, Proto, ServiceFrontend,
    container_mac, overlay::DEFAULT_VXLAN_PORT,
};

pub const VNI_APP: u32 = 4097;
pub const VNI_INGRESS: u32 = 4200;
pub const GW_APP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 1);
pub const GW_INGRESS: Ipv4Addr = Ipv4Addr::new(10, 255, 0, 1);
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 100);
pub const INGRESS_VIP: Ipv4Addr = Ipv4Addr::new(10, 255, 0, 100);
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 2);
pub const B1: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 3);
pub const B2: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 4);
pub const B3: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 5);
pub const MESH_BACKEND: Ipv4Addr = Ipv4Addr::new(10, 255, 0, 5);
pub const PUBLISHED: u16 = 8000;
pub const TARGET: u16 = 8080;
pub const TIMEOUT: Duration = Duration::from_secs(3);

/// (node, vni, address, gateway) of every container, in lab order.
pub const PLAN: [(usize, u32, Ipv4Addr, Ipv4Addr); 5] = [
    (0, VNI_APP, CLIENT, GW_APP),
    (0, VNI_APP, B1, GW_APP),
    (1, VNI_APP, B2, GW_APP),
    (1, VNI_APP, B3, GW_APP),
    (1, VNI_INGRESS, MESH_BACKEND, GW_INGRESS),
];

/// The lab with its servers, and the backends the app service has now.
pub struct Fixture {
    // Servers first: they stop before their namespaces go.
    pub servers: Vec<WhoamiServer>,
    pub udp: Vec<EchoServer>,
    pub app_backends: Vec<Backend>,
    pub lab: OverlayLab,
}

fn app_frontend() -> ServiceFrontend {
    ServiceFrontend {
        id: "app/app-net".into(),
        vni: VNI_APP,
        vip: Some(VIP),
        ports: vec![
            PortMapping {
                proto: Proto::Tcp,
                port: 80,
                target: TARGET,
            },
            PortMapping {
                proto: Proto::Udp,
                port: 53,
                target: 5353,
            },
        ],
        published: vec![],
    }
}

fn web_frontend() -> ServiceFrontend {
    ServiceFrontend {
        id: "web/ingress".into(),
        vni: VNI_INGRESS,
        vip: Some(INGRESS_VIP),
        ports: vec![PortMapping {
            proto: Proto::Tcp,
            port: PUBLISHED,
            target: TARGET,
        }],
        published: vec![
            PortMapping {
                proto: Proto::Tcp,
                port: PUBLISHED,
                target: TARGET,
            },
            PortMapping {
                proto: Proto::Udp,
                port: PUBLISHED,
                target: 5353,
            },
        ],
    }
}

pub fn backend(addr: Ipv4Addr) -> Backend {
    Backend {
        addr,
        draining: false,
    }
}

/// Runs `f` on node `i`'s data plane from a thread in the node's namespace.
pub fn on<R: Send>(
    lab: &OverlayLab,
    i: usize,
    dp: &mut dyn Dataplane,
    f: impl FnOnce(&mut dyn Dataplane) -> R + Send,
) -> R {
    lab.nodes[i].ns.run(|| f(dp))
}

/// Programs node `i` with the whole topology: overlay, mesh, networks,
/// endpoints, services and backends. Idempotent (used again after an
/// agent restart).
pub fn program_node(fx: &Fixture, i: usize, dp: &mut dyn Dataplane) {
    let lab = &fx.lab;
    let node_addr = lab.nodes[i].addr;
    on(lab, i, dp, |dp| {
        dp.overlay_start(DEFAULT_VXLAN_PORT).expect("overlay_start");
        dp.mesh_start("eth0", node_addr).expect("mesh_start");
        dp.set_overlay_network(VNI_APP, "10.0.1.0/24".parse().unwrap(), GW_APP)
            .expect("app network");
        dp.set_overlay_network(VNI_INGRESS, "10.255.0.0/24".parse().unwrap(), GW_INGRESS)
            .expect("ingress network");
    });
    for (c, (node, vni, addr, _)) in lab.containers.iter().zip(PLAN) {
        if node == i {
            let ep = LocalEndpoint {
                vni,
                addr,
                host_ifindex: c.host_ifindex,
                container_mac: container_mac(addr),
            };
            on(lab, i, dp, |dp| dp.set_local_endpoint(ep)).expect("local endpoint");
        } else {
            let n = lab.nodes[node].addr;
            on(lab, i, dp, |dp| dp.set_remote_endpoint(vni, addr, n)).expect("remote endpoint");
        }
    }
    let app = fx.app_backends.clone();
    on(lab, i, dp, |dp| {
        dp.set_service(app_frontend()).expect("app service");
        dp.set_backends("app/app-net", &app).expect("app backends");
        dp.set_service(web_frontend()).expect("web service");
        dp.set_backends("web/ingress", &[backend(MESH_BACKEND)])
            .expect("web backends");
    });
}

fn client(fx: &Fixture) -> &Netns {
    &fx.lab.containers[0].ns
}

/// Which backend answers `n` new connections from the client to the VIP.
pub fn spread(fx: &Fixture, n: usize) -> Vec<Ipv4Addr> {
    (0..n)
        .map(|_| {
            let c = WhoamiConn::open(client(fx), SocketAddr::from((VIP, 80)), TIMEOUT)
                .expect("connecting to the VIP");
            assert_eq!(
                c.peer.ip(),
                std::net::IpAddr::V4(CLIENT),
                "the backend must see the client's own address"
            );
            c.server
        })
        .collect()
}

/// A new connection through node `node`'s published port, from the
/// outside host.
pub fn mesh_conn(fx: &Fixture, node: usize) -> WhoamiConn {
    let to = SocketAddr::from((fx.lab.nodes[node].addr, PUBLISHED));
    WhoamiConn::open(&fx.lab.hosts[0].ns, to, TIMEOUT)
        .unwrap_or_else(|e| panic!("mesh connection to {to}: {e:#}"))
}

/// Asserts a mesh connection reached the backend, which saw the client.
pub fn assert_mesh(fx: &Fixture, c: &mut WhoamiConn) {
    assert_eq!(c.server, MESH_BACKEND);
    assert_eq!(
        c.peer.ip(),
        std::net::IpAddr::V4(fx.lab.hosts[0].addr),
        "the backend must see the outside client's real address"
    );
    let bulk: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
    assert_eq!(c.echo(&bulk).expect("bulk echo through the mesh"), bulk);
}

fn lb(dp: &dyn Dataplane) -> LbStatus {
    dp.status().expect("status").lb
}

fn action(s: &LbStatus, what: &str) -> u64 {
    s.actions.get(what).map_or(0, |c| c.packets)
}

/// Every node's counters, for failure messages.
fn dump(dps: &[Box<dyn Dataplane>]) -> String {
    dps.iter()
        .enumerate()
        .map(|(i, dp)| match dp.status() {
            Ok(s) => format!(
                "node {i}: lb {:?} drops {:?}; overlay {:?} drops {:?}",
                s.lb.actions, s.lb.drops, s.overlay.actions, s.overlay.drops
            ),
            Err(e) => format!("node {i}: {e}"),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn set_app_backends(fx: &mut Fixture, dps: &mut [Box<dyn Dataplane>], b: Vec<Backend>) {
    fx.app_backends = b.clone();
    for (i, dp) in dps.iter_mut().enumerate() {
        on(&fx.lab, i, dp.as_mut(), |dp| {
            dp.set_backends("app/app-net", &b)
        })
        .expect("setting backends");
    }
}

/// Builds the lab for two freshly loaded data planes (one per node, in
/// order; `dps.len()` must be 2) and runs every check. Returns the fixture
/// for implementation-specific checks to continue with.
pub fn run(dps: &mut [Box<dyn Dataplane>]) -> Fixture {
    assert_eq!(dps.len(), 2, "the suite needs two nodes");
    let mut lab = OverlayLab::new(2, false).expect("building the lab");
    lab.add_outside_host().expect("adding the outside host");
    let mtu = on(&lab, 0, dps[0].as_mut(), |dp| {
        dp.overlay_start(DEFAULT_VXLAN_PORT)
            .expect("overlay_start")
            .container_mtu
    });
    for (node, _, addr, gw) in PLAN {
        lab.add_container(node, addr, 24, gw, mtu)
            .expect("adding a container");
    }
    let mut servers = Vec::new();
    let mut udp = Vec::new();
    for (i, (_, _, addr, _)) in PLAN.iter().enumerate().skip(1) {
        let ns = &lab.containers[i].ns;
        servers.push(WhoamiServer::tcp(ns, *addr, TARGET).expect("whoami server"));
        udp.push(EchoServer::udp(ns, *addr, 5353).expect("udp server"));
    }
    let mut fx = Fixture {
        servers,
        udp,
        app_backends: vec![backend(B1), backend(B2)],
        lab,
    };
    for (i, dp) in dps.iter_mut().enumerate() {
        program_node(&fx, i, dp.as_mut());
    }

    if let Err(e) = WhoamiConn::open(client(&fx), SocketAddr::from((VIP, 80)), TIMEOUT) {
        panic!("first VIP connection: {e:#}\n{}", dump(dps));
    }
    // 1. New connections spread over the backends on both nodes.
    let seen: BTreeSet<Ipv4Addr> = spread(&fx, 24).into_iter().collect();
    assert_eq!(seen, BTreeSet::from([B1, B2]), "backends reached");

    // 2. UDP through the VIP; the reply comes from the VIP (connected
    // socket: anything else would be filtered out).
    let sock = client(&fx)
        .run(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))
        .expect("udp socket");
    sock.connect((VIP, 53)).expect("connect");
    sock.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    sock.send(b"udp via vip").expect("send");
    let mut buf = [0u8; 64];
    let n = sock.recv(&mut buf).expect("udp reply from the VIP");
    assert_eq!(&buf[..n], b"udp via vip");

    // A container on another network does not reach the VIP.
    assert!(
        WhoamiConn::open(
            &fx.lab.containers[4].ns,
            SocketAddr::from((VIP, 80)),
            Duration::from_millis(500)
        )
        .is_err(),
        "a VIP answered a container of another network"
    );

    // 3. Established connections keep their backend when one is added.
    let mut held: Vec<WhoamiConn> = (0..12)
        .map(|_| WhoamiConn::open(client(&fx), SocketAddr::from((VIP, 80)), TIMEOUT).unwrap())
        .collect();
    set_app_backends(&mut fx, dps, vec![backend(B1), backend(B2), backend(B3)]);
    for (i, c) in held.iter_mut().enumerate() {
        assert_eq!(
            c.echo(format!("still {i}").as_bytes())
                .expect("held connection after adding a backend"),
            format!("still {i}").as_bytes()
        );
    }
    let seen: BTreeSet<Ipv4Addr> = spread(&fx, 30).into_iter().collect();
    assert!(
        seen.contains(&B3),
        "the new backend gets new connections: {seen:?}"
    );

    // 4. A draining backend gets no new connections; its established ones
    // continue.
    let mut on_b1 = held
        .into_iter()
        .find(|c| c.server == B1)
        .or_else(|| {
            (0..60)
                .map(|_| {
                    WhoamiConn::open(client(&fx), SocketAddr::from((VIP, 80)), TIMEOUT).unwrap()
                })
                .find(|c| c.server == B1)
        })
        .expect("a connection to b1");
    set_app_backends(
        &mut fx,
        dps,
        vec![
            Backend {
                addr: B1,
                draining: true,
            },
            backend(B2),
            backend(B3),
        ],
    );
    let seen: BTreeSet<Ipv4Addr> = spread(&fx, 30).into_iter().collect();
    assert!(
        !seen.contains(&B1),
        "draining b1 got new connections: {seen:?}"
    );
    assert_eq!(
        on_b1
            .echo(b"draining")
            .expect("b1 connection while draining"),
        b"draining"
    );

    // 4b. A client port used through the VIP and then straight to the
    // backend it got: the direct connection's replies keep the backend's
    // own address.
    let port = 41_003;
    let via_vip = WhoamiConn::open_from(client(&fx), port, SocketAddr::from((VIP, 80)), TIMEOUT)
        .expect("VIP connection from a fixed port");
    let server = via_vip.server;
    drop(via_vip);
    // The server side closes too (no TIME_WAIT there: it closed second).
    std::thread::sleep(Duration::from_millis(300));
    match WhoamiConn::open_from(
        client(&fx),
        port,
        SocketAddr::from((server, TARGET)),
        TIMEOUT,
    ) {
        Ok(c) => assert_eq!(c.server, server),
        Err(e) => panic!(
            "port {port} straight to {server} after the VIP: {e:#}\n{}",
            dump(dps)
        ),
    }

    // 4c. Datagram flows whose backend is removed move on to another
    // backend instead of staying pinned to the one that is gone.
    let flows: Vec<UdpSocket> = (0..16)
        .map(|_| {
            let s = client(&fx)
                .run(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))
                .expect("udp socket");
            s.connect((VIP, 53)).expect("connect");
            s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
            s
        })
        .collect();
    let udp_round = |what: &str, dps: &[Box<dyn Dataplane>]| {
        for (i, s) in flows.iter().enumerate() {
            let msg = format!("{what} {i}");
            s.send(msg.as_bytes()).expect("send");
            let mut buf = [0u8; 64];
            match s.recv(&mut buf) {
                Ok(n) => assert_eq!(&buf[..n], msg.as_bytes()),
                Err(e) => panic!("udp flow {i} {what}: {e}\n{}", dump(dps)),
            }
        }
    };
    udp_round("before", dps);
    let draining_b1 = Backend {
        addr: B1,
        draining: true,
    };
    set_app_backends(&mut fx, dps, vec![draining_b1, backend(B3)]);
    for (i, dp) in dps.iter_mut().enumerate() {
        on(&fx.lab, i, dp.as_mut(), |dp| dp.remove_endpoint(B2)).expect("removing b2");
    }
    udp_round("after b2 went", dps);
    fx.app_backends = vec![draining_b1, backend(B2), backend(B3)];
    for (i, dp) in dps.iter_mut().enumerate() {
        program_node(&fx, i, dp.as_mut());
    }
    drop(flows);

    // 5. The routing mesh answers on both nodes (the backend runs on node
    // 1 only) and the backend sees the outside client's address.
    for node in [0, 1] {
        let to = SocketAddr::from((fx.lab.nodes[node].addr, PUBLISHED));
        if let Err(e) = WhoamiConn::open(&fx.lab.hosts[0].ns, to, TIMEOUT) {
            panic!("mesh via node {node}: {e:#}\n{}", dump(dps));
        }
        let mut c = mesh_conn(&fx, node);
        assert_mesh(&fx, &mut c);
    }
    // A client port used first through the backend's own node and then
    // through the other one (clients reuse ports towards different
    // addresses): the second connection's replies must go back the way
    // it came in, not the way the first one did.
    for (round, port) in [(0, 41_001u16), (1, 41_002)] {
        let (first, second) = if round == 0 { (1, 0) } else { (0, 1) };
        for node in [first, second] {
            let to = SocketAddr::from((fx.lab.nodes[node].addr, PUBLISHED));
            match WhoamiConn::open_from(&fx.lab.hosts[0].ns, port, to, TIMEOUT) {
                Ok(mut c) => assert_mesh(&fx, &mut c),
                Err(e) => panic!(
                    "port {port} through node {node} after node {first}: {e:#}\n{}",
                    dump(dps)
                ),
            }
        }
    }
    // UDP through the mesh, via both nodes; replies come from the node's
    // address and published port (connected socket).
    for node in [0, 1] {
        let sock = fx.lab.hosts[0]
            .ns
            .run(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))
            .expect("udp socket");
        sock.connect((fx.lab.nodes[node].addr, PUBLISHED))
            .expect("connect");
        sock.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        sock.send(b"udp via mesh").expect("send");
        let mut buf = [0u8; 64];
        let n = sock
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("udp via node {node}: {e}\n{}", dump(dps)));
        assert_eq!(&buf[..n], b"udp via mesh");
    }
    // Ports that are not published are left to the node.
    assert!(
        WhoamiConn::open(
            &fx.lab.hosts[0].ns,
            SocketAddr::from((fx.lab.nodes[0].addr, PUBLISHED + 1)),
            Duration::from_millis(500)
        )
        .is_err()
    );

    // 6. Counters.
    let (s0, s1) = (lb(dps[0].as_ref()), lb(dps[1].as_ref()));
    assert!(
        action(&s0, "vip_new_flow") > 0 && action(&s0, "vip_reply") > 0,
        "{s0:?}"
    );
    assert!(
        action(&s0, "mesh_new_flow") > 0 && action(&s0, "mesh_reply") > 0,
        "{s0:?}"
    );
    assert!(action(&s1, "mesh_tunnel_back") > 0, "{s1:?}");
    assert!(action(&s0, "ct_backend_gone") > 0, "{s0:?}");
    for s in [&s0, &s1] {
        for why in ["rewrite_failed", "ct_full", "unknown_backend", "no_route"] {
            assert_eq!(s.drops.get(why).map_or(0, |c| c.packets), 0, "{why}: {s:?}");
        }
        assert_eq!(s.services, 2);
    }
    assert!(s0.per_service["app/app-net"].0.packets > 0, "{s0:?}");
    assert_eq!(s0.mesh, Some(("eth0".to_string(), fx.lab.nodes[0].addr)));

    // 7. Connection tracking GC: everything is fresh, nothing expires.
    let gc = dps[0].ct_gc().expect("ct gc");
    assert!(gc.entries > 0 && gc.expired == 0, "{gc:?}");

    // 8. Requests the seam refuses.
    assert!(dps[0].set_backends("no-such-service", &[]).is_err());
    let mut clash = web_frontend();
    clash.id = "other/ingress".into();
    clash.vip = Some(Ipv4Addr::new(10, 255, 0, 101));
    assert!(
        dps[0].set_service(clash.clone()).is_err(),
        "a published port twice"
    );
    clash.published = vec![PortMapping {
        proto: Proto::Udp,
        port: DEFAULT_VXLAN_PORT,
        target: 53,
    }];
    assert!(
        dps[0].set_service(clash).is_err(),
        "publishing the overlay's own UDP port"
    );
    fx
}

/// Removing a service stops its VIP; run last.
pub fn finish(fx: &Fixture, dps: &mut [Box<dyn Dataplane>]) {
    for (i, dp) in dps.iter_mut().enumerate() {
        on(&fx.lab, i, dp.as_mut(), |dp| {
            dp.remove_service("app/app-net")
        })
        .expect("remove");
        on(&fx.lab, i, dp.as_mut(), |dp| {
            dp.remove_service("app/app-net")
        })
        .expect("remove again");
    }
    assert!(
        WhoamiConn::open(
            client(fx),
            SocketAddr::from((VIP, 80)),
            Duration::from_millis(500)
        )
        .is_err(),
        "the VIP still answers after removal"
    );
    assert_eq!(lb(dps[0].as_ref()).services, 1);
}
