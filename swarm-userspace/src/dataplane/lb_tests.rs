//! The eBPF load balancer for real (root, kernel with BPF, TCX, VXLAN): the
//! conformance suite, then agent death and adoption of pinned state.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use swarm_harness::overlay_lab::WhoamiConn;

use super::conformance::{self, Fixture, TIMEOUT, VIP};
use super::{Dataplane, PortMapping, Proto, ServiceFrontend, XdpMode, ebpf::EbpfDataplane};

/// A bpffs per node under a temp dir, unmounted on drop (which also
/// releases every pinned map and link in it).
struct Bpffs {
    dir: tempfile::TempDir,
}

impl Bpffs {
    fn new() -> Bpffs {
        Bpffs {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    fn node(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("node{i}"))
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        for i in 0..2 {
            let _ = rustix::mount::unmount(self.node(i), rustix::mount::UnmountFlags::DETACH);
        }
    }
}

fn load(fx: Option<&Fixture>, i: usize, dir: &Path) -> Box<dyn Dataplane> {
    let load = || EbpfDataplane::load_pinned(XdpMode::Auto, dir).expect("loading pinned");
    let dp = match fx {
        Some(fx) => fx.lab.nodes[i].ns.run(load),
        None => load(),
    };
    Box::new(dp)
}

#[test]
fn load_balancer_conformance_and_agent_restart() {
    let bpffs = Bpffs::new();
    let mut dps: Vec<Box<dyn Dataplane>> = (0..2).map(|i| load(None, i, &bpffs.node(i))).collect();
    let fx = conformance::run(&mut dps);

    // A frontend the next agent will not claim again.
    let stale = ServiceFrontend {
        id: "stale/app-net".into(),
        vni: conformance::VNI_APP,
        vip: Some(std::net::Ipv4Addr::new(10, 0, 1, 200)),
        ports: vec![PortMapping {
            proto: Proto::Tcp,
            port: 80,
            target: 80,
        }],
        published: vec![],
    };
    dps[0].set_service(stale).expect("stale service");

    // Connections open across the agent's death.
    let mut vip_conn = WhoamiConn::open(
        &fx.lab.containers[0].ns,
        SocketAddr::from((VIP, 80)),
        TIMEOUT,
    )
    .expect("VIP connection");
    let mut mesh_conn = conformance::mesh_conn(&fx, 0);

    // The agents die: nothing is detached, the pinned state keeps working.
    drop(dps);
    assert_eq!(vip_conn.echo(b"agent down").unwrap(), b"agent down");
    assert_eq!(mesh_conn.echo(b"agent down").unwrap(), b"agent down");
    assert!(!conformance::spread(&fx, 6).is_empty());
    let mut fresh = conformance::mesh_conn(&fx, 0);
    conformance::assert_mesh(&fx, &mut fresh);

    // New agents adopt the pinned maps and links, set everything again and
    // sweep what they did not claim.
    // Node 1's next agent is an upgrade whose maps have another layout:
    // its pinned maps are set aside (renamed to a layout no build has).
    let maps_dir = |i: usize| -> Vec<std::ffi::OsString> {
        std::fs::read_dir(bpffs.node(i))
            .expect("bpffs dir")
            .flatten()
            .map(|e| e.file_name())
            .filter(|n| n.to_string_lossy().starts_with("maps-"))
            .collect()
    };
    let current = maps_dir(1);
    assert_eq!(current.len(), 1, "{current:?}");
    std::fs::rename(
        bpffs.node(1).join(&current[0]),
        bpffs.node(1).join("maps-000000000000"),
    )
    .expect("renaming node 1's pinned maps");

    let mut reloaded: Vec<EbpfDataplane> = Vec::new();
    for i in 0..2 {
        let mut dp = fx.lab.nodes[i]
            .ns
            .run(|| EbpfDataplane::load_pinned(XdpMode::Auto, &bpffs.node(i)).expect("reloading"));
        assert!(dp.is_adopting(), "node {i} adopted nothing");
        conformance::program_node(&fx, i, &mut dp);
        // Traffic flows mid-reconciliation.
        assert_eq!(vip_conn.echo(b"adopting").unwrap(), b"adopting");
        let report = dp.adoption_done().expect("adoption done");
        assert_eq!(report.endpoints, 0, "node {i}: {report:?}");
        assert_eq!(report.links, 0, "node {i}: {report:?}");
        assert_eq!(
            report.frontends,
            usize::from(i == 0),
            "node {i}: {report:?}"
        );
        reloaded.push(dp);
    }
    assert_eq!(
        maps_dir(1),
        current,
        "node 1: the old layout's maps are gone, this build's are pinned"
    );
    assert_eq!(vip_conn.echo(b"adopted").unwrap(), b"adopted");
    assert_eq!(mesh_conn.echo(b"adopted").unwrap(), b"adopted");
    let mut fresh = conformance::mesh_conn(&fx, 1);
    conformance::assert_mesh(&fx, &mut fresh);
    assert!(
        WhoamiConn::open(
            &fx.lab.containers[0].ns,
            SocketAddr::from((std::net::Ipv4Addr::new(10, 0, 1, 200), 80)),
            std::time::Duration::from_millis(500)
        )
        .is_err(),
        "the unclaimed frontend was swept"
    );

    // Connection tracking GC far in the future expires every entry; open
    // connections then miss their entry mid-flow, are counted, and are
    // balanced again, to the same backend while the tables are unchanged.
    for (i, dp) in reloaded.iter_mut().enumerate() {
        let far = super::ebpf::monotonic_now_ns() + 6 * 24 * 3600 * 1_000_000_000;
        let gc = dp.ct_gc_at(far).expect("ct gc");
        assert!(
            gc.entries > 0 && gc.expired == gc.entries,
            "node {i}: {gc:?}"
        );
    }
    assert_eq!(vip_conn.echo(b"after gc").unwrap(), b"after gc");
    assert_eq!(mesh_conn.echo(b"after gc").unwrap(), b"after gc");
    let s0 = reloaded[0].status().unwrap().lb;
    assert!(s0.actions["ct_miss_mid_flow"].packets > 0, "{s0:?}");
    assert!(s0.ct_expired_total > 0, "{s0:?}");
    let mut dps: Vec<Box<dyn Dataplane>> = reloaded
        .into_iter()
        .map(|d| Box::new(d) as Box<dyn Dataplane>)
        .collect();

    conformance::finish(&fx, &mut dps);
    drop((vip_conn, mesh_conn, fresh));
    drop(dps);
    drop(fx);
    drop(bpffs);
}

/// Request/response round trips (64 bytes, one connection) through the
/// VIP and the mesh against the backend directly. Not a gate: prints
/// numbers. (New-connection rates would measure the lab server's 20 ms
/// accept poll, not the data path.)
/// `cargo test -p swarm --lib -- --ignored lb_rates --nocapture`
#[test]
#[ignore = "measurement, not a check"]
fn lb_rates() {
    let mut dps: Vec<Box<dyn Dataplane>> = (0..2)
        .map(|_| Box::new(EbpfDataplane::load(XdpMode::Auto).expect("load")) as Box<dyn Dataplane>)
        .collect();
    let fx = conformance::run(&mut dps);
    let rate = |ns: &swarm_harness::Netns, to: SocketAddr| {
        let mut c = WhoamiConn::open(ns, to, TIMEOUT).expect("connection");
        let n = 5000;
        let t = std::time::Instant::now();
        for _ in 0..n {
            c.echo(&[7u8; 64]).expect("round trip");
        }
        f64::from(n) / t.elapsed().as_secs_f64()
    };
    let client = &fx.lab.containers[0].ns;
    let host = &fx.lab.hosts[0].ns;
    println!(
        "client container: direct to b2 {:.0}/s, via VIP {:.0}/s",
        rate(
            client,
            SocketAddr::from((conformance::B2, conformance::TARGET))
        ),
        rate(client, SocketAddr::from((VIP, 80)))
    );
    println!(
        "outside host: mesh via the backend's node {:.0}/s, via the other node {:.0}/s",
        rate(
            host,
            SocketAddr::from((fx.lab.nodes[1].addr, conformance::PUBLISHED))
        ),
        rate(
            host,
            SocketAddr::from((fx.lab.nodes[0].addr, conformance::PUBLISHED))
        )
    );
    drop(dps);
    drop(fx);
}
