//! Daemon lifecycle handling, against `fake-swarm` (this crate's stand-in
//! for the real binary): start and readiness, the CLI wrapper, stop, kill -9,
//! restart, log capture, cleanup of what daemons leave behind, and the
//! cluster registry.

use std::time::Duration;

use swarm_harness::cluster::{Cluster, Topology};
use swarm_harness::http;
use swarm_harness::images::Registry;
use swarm_harness::wait_until;

const FAKE: &str = env!("CARGO_BIN_EXE_fake-swarm");

fn is_dead(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s[s.rfind(')').map_or(0, |i| i + 2)..].starts_with('Z'))
        .unwrap_or(true)
}

/// The pid of the `sleep` child the fake daemon logged most recently.
fn last_child(log: &str) -> u32 {
    log.lines()
        .rev()
        .find_map(|l| l.strip_prefix("fake-swarm child pid "))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no child pid in log:\n{log}"))
}

#[test]
fn daemons_start_stop_crash_restart_and_are_cleaned_up() {
    let c = Cluster::builder()
        .nodes(2)
        .swarm_bin(FAKE)
        .daemon_args(|i| vec!["--node-name".into(), format!("n{i}")])
        .start();
    let n1 = c.node(1);

    // Started inside its own namespace, with the harness's flags first.
    let pid = n1.pid().expect("node1's daemon runs");
    let ns_of = |pid: u32| {
        std::fs::metadata(format!("/proc/{pid}/ns/net")).map(|m| {
            use std::os::unix::fs::MetadataExt;
            (m.dev(), m.ino())
        })
    };
    assert_eq!(
        ns_of(pid).expect("daemon ns"),
        n1.ns().id().expect("node ns")
    );
    let log = n1.log();
    for want in [
        "\"daemon\", \"--data-root\"",
        &format!("\"unix://{}\"", n1.socket().display()),
        "\"--log-level\", \"debug\", \"--log-format\", \"text\"",
        // Container cgroups go under the cluster's prefix, swept at teardown.
        "\"--cgroup-parent\", \"swt-",
        "\"--node-name\", \"n1\"",
    ] {
        assert!(log.contains(want), "{want} not in log:\n{log}");
    }
    assert!(n1.data_root().is_dir());
    assert_eq!(n1.host_arg(), format!("unix://{}", n1.socket().display()));

    // The CLI wrapper and its helpers.
    let out = n1.swarm(&["node", "ls"]).success();
    let v = out.json();
    assert_eq!(v["args"], serde_json::json!(["node", "ls"]));
    assert_eq!(v["daemon"]["pid"], pid);

    // kill -9: the daemon dies, its child survives (as after a crash).
    let child1 = last_child(&n1.log());
    n1.kill9();
    assert_eq!(n1.pid(), None);
    assert!(is_dead(pid));
    assert!(
        !is_dead(child1),
        "a crash leaves the daemon's children running"
    );
    n1.swarm(&["info"]).failure();

    // Restart with the same data root; the log is appended to.
    n1.start();
    let pid2 = n1.pid().expect("restarted");
    assert_ne!(pid, pid2);
    assert_eq!(n1.log().matches("----- harness: starting node1").count(), 2);
    assert!(n1.log().contains("fake-swarm daemon pid"), "{}", n1.log());
    n1.swarm(&["info"]).success();

    n1.restart();
    let pid3 = n1.pid().expect("restarted again");
    assert!(is_dead(pid2));
    n1.stop();
    assert_eq!(n1.pid(), None);
    assert!(is_dead(pid3));

    // Everything the daemons left is killed at teardown.
    let child2 = last_child(&c.node(2).log());
    let node2 = c.node(2).pid().expect("node2 runs");
    drop(c);
    wait_until(
        Duration::from_secs(5),
        "daemons and their children are dead",
        || is_dead(child1) && is_dead(child2) && is_dead(node2),
    );
}

#[test]
fn a_daemon_that_never_listens_fails_the_start_with_its_log() {
    // `true` exits at once: start must fail fast, naming the exit and log.
    let result = std::panic::catch_unwind(|| {
        Cluster::builder()
            .nodes(1)
            .swarm_bin("/bin/true")
            .ready_timeout(Duration::from_secs(5))
            .start()
    });
    let err = result.expect_err("start must panic");
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("daemon exited with exit status: 0"), "{msg}");
    assert!(msg.contains("----- harness: starting node1"), "{msg}");
}

#[test]
fn the_cluster_registry_serves_test_images_to_every_subnet() {
    let mut c = Cluster::builder()
        .nodes(2)
        .topology(Topology::RoutedSubnets)
        .no_daemons()
        .start();
    assert_eq!(c.image("bb:1"), "198.51.100.1:5000/bb:1");
    let addr = c.registry_addr();
    let reg_pid = c.registry_pid().expect("started");
    c.add_client_host();
    for ns in [c.node(1).ns(), c.node(2).ns(), c.host(1).ns()] {
        let tags = ns.run(|| http::get(addr, "/v2/bb/tags/list", Duration::from_secs(5)));
        let tags = tags.unwrap_or_else(|e| panic!("from {}: {e}", ns.name()));
        assert_eq!(tags.status, 200, "{tags:?}");
        let v: serde_json::Value = serde_json::from_str(&tags.body).expect("JSON");
        let mut got: Vec<&str> = v["tags"]
            .as_array()
            .expect("tags")
            .iter()
            .filter_map(|t| t.as_str())
            .collect();
        got.sort();
        assert_eq!(got, ["1", "2"]);
    }
    // It saw each client's own address (routed by the fabric, no NAT).
    let log = c.registry_logs().expect("registry log");
    for who in [c.node(1).addr(), c.node(2).addr(), c.host(1).addr()] {
        assert!(log.contains(&format!("{who} - - ")), "{who} not in:\n{log}");
    }
    // (Never probe a cluster address from the root namespace: on this
    // machine the root namespace's default route leads off the machine.)
    drop(c);
    assert!(is_dead(reg_pid));
}

#[test]
fn a_standalone_registry_serves_the_catalog_read_only() {
    let ns = swarm_harness::Netns::create_unique("reg").expect("netns");
    let addr = "127.0.0.1:5000".parse().expect("addr");
    let reg = Registry::serve_test_images(addr, Some(&ns)).expect("registry");
    let catalog = ns
        .run(|| http::get(addr, "/v2/_catalog", Duration::from_secs(5)))
        .expect("catalog");
    assert_eq!(catalog.status, 200);
    assert!(
        catalog.body.contains("\"bb\"") && catalog.body.contains("\"multilayer\""),
        "{catalog:?}"
    );
    // Read-only: starting an upload is refused.
    let refused = ns.exec(
        "curl",
        &[
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "POST",
            "http://127.0.0.1:5000/v2/bb/blobs/uploads/",
        ],
    );
    assert_eq!(
        refused.trimmed(),
        "405",
        "uploads must be refused: {refused}"
    );
    let pid = reg.pid();
    reg.stop();
    assert!(is_dead(pid));
}
