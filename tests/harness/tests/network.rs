//! The cluster network without daemons: addressing, routing, fault
//! injection, client hosts, and that teardown leaves nothing behind.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

use swarm_harness::cluster::{Cluster, Topology};
use swarm_harness::{cleanup, wait_until};

/// What a torn-down cluster with this prefix could have left behind.
fn leftovers(prefix: &str) -> Vec<String> {
    let mut found = Vec::new();
    let with_prefix = |dir: &Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.path())
                    .filter(|p| {
                        p.file_name()
                            .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{prefix}-")))
                    })
                    .map(|p| p.display().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    found.extend(with_prefix(Path::new("/run/netns")));
    found.extend(with_prefix(&std::env::temp_dir()));
    found.extend(
        cleanup::find_cgroups(&|n| n.contains(&format!("{prefix}-")))
            .into_iter()
            .map(|p| p.display().to_string()),
    );
    found
}

fn is_dead(pid: u32) -> bool {
    // Gone, or a zombie waiting for whoever adopted it.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s[s.rfind(')').map_or(0, |i| i + 2)..].starts_with('Z'))
        .unwrap_or(true)
}

/// Packets dropped so far by the fabric's cut rule of `family`.
fn drops(c: &Cluster, family: &str) -> u64 {
    let out = c
        .fabric()
        .exec("nft", &["list", "table", family, "swarm_harness"])
        .success();
    let after = out
        .stdout
        .split("counter packets ")
        .nth(1)
        .unwrap_or_else(|| panic!("no counter in {out}"));
    after
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("bad counter in {out}"))
}

#[test]
fn routed_subnets_connect_cut_heal_isolate_reconnect() {
    let mut c = Cluster::builder()
        .nodes(3)
        .topology(Topology::RoutedSubnets)
        .no_daemons()
        .start();
    let (n1, n2, n3) = (c.node(1), c.node(2), c.node(3));
    assert_eq!(n1.addr(), Ipv4Addr::new(198, 51, 100, 11));
    assert_eq!(n2.addr(), Ipv4Addr::new(203, 0, 113, 12));
    assert_eq!(n3.addr(), Ipv4Addr::new(198, 51, 100, 13));
    assert_eq!(n1.iface(), "eth0");

    // Odd and even nodes are in different subnets, with no shared L2.
    let route = n1
        .exec("ip", &["route", "get", &n2.addr().to_string()])
        .success();
    assert!(route.stdout.contains("via 198.51.100.1"), "{route}");
    let link = n1
        .exec("ip", &["-o", "addr", "show", "dev", "eth0"])
        .success();
    assert!(link.stdout.contains("198.51.100.11/24"), "{link}");
    assert!(!link.stdout.contains("inet6"), "IPv6 must be off: {link}");

    assert!(n1.ping(n2.addr()), "node1 -> node2 across the router");
    assert!(n2.ping(n3.addr()), "node2 -> node3 across the router");
    assert!(n1.ping(n3.addr()), "node1 -> node3 on the same bridge");

    // A routed cut: only that pair, both directions.
    c.cut(1, 2);
    assert!(!n1.ping(n2.addr()));
    assert!(!n2.ping(n1.addr()));
    assert!(
        n1.ping(n3.addr()) && n2.ping(n3.addr()),
        "others unaffected"
    );
    assert!(drops(&c, "ip") > 0, "the routed path dropped them");
    c.heal(1, 2);
    assert!(n1.ping(n2.addr()) && n2.ping(n1.addr()));

    // A bridged cut (same subnet).
    c.cut(3, 1);
    assert!(!n1.ping(n3.addr()) && !n3.ping(n1.addr()));
    assert!(n3.ping(n2.addr()));
    assert!(drops(&c, "bridge") > 0, "the bridged path dropped them");
    c.heal_all();
    assert!(n1.ping(n3.addr()));

    // Isolation: node2 loses everything, including its gateway.
    c.isolate(2);
    assert!(!n1.ping(n2.addr()));
    assert!(!n3.ping(n2.addr()));
    assert!(!n2.ping(n2.gateway()));
    c.reconnect(2);
    wait_until(Duration::from_secs(10), "node2 is reachable again", || {
        n1.ping(n2.addr())
    });
    assert!(n2.ping(n3.addr()));

    // A client host reaches nodes in both subnets, and they see its real
    // address (routed, not NATed).
    let host_addr = c.add_client_host().addr();
    assert_eq!(host_addr, Ipv4Addr::new(192, 0, 2, 11));
    let (host, n1, n2) = (c.host(1), c.node(1), c.node(2));
    assert!(host.ping(n1.addr()) && host.ping(n2.addr()));
    let listener = n2.in_netns(|| TcpListener::bind((n2.addr(), 8080)).expect("bind in node2"));
    let server = std::thread::spawn(move || {
        let (mut s, peer) = listener.accept().expect("accept");
        let mut buf = String::new();
        s.read_to_string(&mut buf).expect("read");
        (peer, buf)
    });
    host.in_netns(|| {
        let mut s = TcpStream::connect((n2.addr(), 8080)).expect("connect from the client host");
        s.write_all(b"hello").expect("write");
    });
    let (peer, got) = server.join().expect("server thread");
    assert_eq!(peer.ip(), host.addr());
    assert_eq!(got, "hello");

    // Sockets from in_netns really live in the node's namespace.
    let err = n1.in_netns(|| TcpListener::bind((n2.addr(), 8081)).map(drop));
    assert!(err.is_err(), "node1 must not own node2's address");
}

#[test]
fn bridge_topology_puts_everyone_on_one_segment() {
    let c = Cluster::builder().nodes(2).no_daemons().start();
    assert_eq!(c.topology(), Topology::Bridge);
    let (n1, n2) = (c.node(1), c.node(2));
    assert_eq!(n2.addr(), Ipv4Addr::new(198, 51, 100, 12));
    let route = n1
        .exec("ip", &["route", "get", &n2.addr().to_string()])
        .success();
    assert!(
        !route.stdout.contains("via"),
        "same subnet, no router: {route}"
    );
    assert!(n1.ping(n2.addr()));
    c.cut(1, 2);
    assert!(!n1.ping(n2.addr()));
    assert!(n1.ping(n1.gateway()), "the fabric itself stays reachable");
    c.heal(1, 2);
    assert!(n1.ping(n2.addr()));
    // Nothing of ours in the root namespace.
    let root_links = std::process::Command::new("ip")
        .args(["-o", "link"])
        .output()
        .expect("ip link");
    let root_links = String::from_utf8_lossy(&root_links.stdout);
    assert!(
        !root_links.contains(": n1@") && !root_links.contains(": br0:"),
        "{root_links}"
    );
}

#[test]
fn teardown_removes_namespaces_processes_cgroups_mounts_and_dirs() {
    let mut c = Cluster::builder()
        .nodes(2)
        .topology(Topology::RoutedSubnets)
        .no_daemons()
        .start();
    c.add_client_host();
    let prefix = c.prefix().to_owned();
    let dir = c.dir().to_path_buf();

    // A stray process inside node1's namespace, not our child (its shell
    // exits), like a container a daemon left behind.
    let out = c
        .node(1)
        .exec("sh", &["-c", "sleep 1000 >/dev/null 2>&1 & echo $!"])
        .success();
    let stray: u32 = out.trimmed().parse().expect("a pid");
    assert!(!is_dead(stray));

    // A stray in the root namespace but in a cgroup named with the
    // cluster's cgroup prefix, in a v1 hierarchy and in cgroup2.
    let out = std::process::Command::new("sh")
        .args(["-c", "sleep 1000 >/dev/null 2>&1 & echo $!"])
        .output()
        .expect("sh");
    let in_cgroup: u32 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("a pid");
    let mut cgroups = Vec::new();
    for h in ["pids", "unified"] {
        let base = Path::new("/sys/fs/cgroup").join(h);
        if !base.join("cgroup.procs").exists() {
            continue;
        }
        let cg = base
            .join(format!("{}ctr1", c.cgroup_prefix()))
            .join("inner");
        std::fs::create_dir_all(&cg).expect("creating a test cgroup");
        std::fs::write(cg.join("cgroup.procs"), in_cgroup.to_string()).expect("joining it");
        cgroups.push(cg);
    }
    assert!(!cgroups.is_empty(), "no cgroup hierarchy to test with");

    // A mount inside the cluster's dir.
    let mnt = dir.join("n1/mnt");
    std::fs::create_dir_all(&mnt).expect("mkdir");
    nix::mount::mount(
        Some("tmpfs"),
        &mnt,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .expect("mounting a tmpfs");
    assert!(!cleanup::mounts_under(&dir).is_empty());

    assert!(leftovers(&prefix).len() >= 5, "{:?}", leftovers(&prefix));
    drop(c);

    assert_eq!(leftovers(&prefix), Vec::<String>::new());
    assert!(cleanup::mounts_under(&dir).is_empty());
    assert!(!dir.exists());
    wait_until(Duration::from_secs(5), "the strays are dead", || {
        is_dead(stray) && is_dead(in_cgroup)
    });
}

#[test]
fn teardown_after_a_panic_leaves_nothing() {
    let builder = Cluster::builder().nodes(2).no_daemons();
    let prefix = builder.prefix().to_owned();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let c = builder.start();
        assert!(c.node(1).ping(c.node(2).addr()));
        panic!("deliberate panic inside a test using a cluster");
    }));
    assert!(result.is_err());
    assert_eq!(leftovers(&prefix), Vec::<String>::new());
}

#[test]
fn stale_sweep_removes_what_a_dead_test_process_left() {
    // Let this process's own once-only sweep (run by the first cluster) happen
    // now, not in the middle of this test.
    cleanup::sweep_stale_once();
    // A pid that existed and is now gone: the "killed test process".
    let mut child = std::process::Command::new("true").spawn().expect("true");
    let dead = child.id();
    child.wait().expect("reap");
    assert!(is_dead(dead));
    let prefix = format!("swt-{dead}-1");

    // A namespace with a process inside, named as if made by the dead pid.
    // The process exists before the name does (`unshare` then `ip netns
    // attach`): other test processes sweep concurrently and may remove
    // these leftovers first, which must not break the setup.
    let ns = format!("{prefix}-n1");
    let out = std::process::Command::new("sh")
        .args(["-c", "unshare --net sleep 1000 >/dev/null 2>&1 & echo $!"])
        .output()
        .expect("sh");
    let stray: u32 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("a pid");
    // Killed whatever happens, so that a failing test leaks nothing.
    struct KillOnDrop(u32);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            cleanup::kill_pids(&[self.0]);
        }
    }
    let _guard = KillOnDrop(stray);
    wait_until(
        Duration::from_secs(5),
        "the stray has its own netns",
        || cleanup::netns_id_of(stray) != cleanup::netns_id_of(std::process::id()),
    );
    let _ = std::process::Command::new("ip")
        .args(["netns", "attach", &ns, &stray.to_string()])
        .status();
    let tmp = std::env::temp_dir().join(format!("{prefix}-abc"));
    let _ = std::fs::create_dir_all(tmp.join("x"));
    let cg = Path::new("/sys/fs/cgroup/pids").join(format!("{prefix}-ctr"));
    let made_cg = std::fs::create_dir(&cg).is_ok();

    cleanup::sweep_stale();

    assert!(!Path::new("/run/netns").join(&ns).exists());
    assert!(!tmp.exists());
    if made_cg {
        assert!(!cg.exists());
    }
    wait_until(Duration::from_secs(5), "the stray is dead", || {
        is_dead(stray)
    });
}
