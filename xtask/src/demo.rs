//! `cargo xtask demo`: a swarm on this machine, built from the same harness
//! the integration tests use, so the demo cannot drift from what is tested.
//!
//! Shows what works today and nothing that does not: daemons in their own
//! network namespaces on two routed subnets, formed into a swarm (`init`,
//! a second manager and a worker joining with tokens over mutual TLS), the
//! eBPF data plane attached to each node, traffic from a client outside the
//! swarm, and the CLI's view of it. Grows with the product.
use std::{process::Command, time::Duration};

use anyhow::{Context, bail};
use nix::sys::signal::SigSet;
use swarm_harness::{Cluster, Topology, paths::swarm_bin};

fn say(s: &str) {
    println!("\n\x1b[1m==> {s}\x1b[0m");
}

pub fn run(nodes: usize, wait_for: Option<SigSet>) -> anyhow::Result<()> {
    // Node names in `node ls` are the harness's, not this host's.
    if nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    let bin = swarm_bin();
    say(&format!(
        "starting {nodes} swarm daemons, each in its own network namespace"
    ));
    let mut cluster = Cluster::builder()
        .nodes(nodes)
        .topology(Topology::RoutedSubnets)
        .daemon_args(|i| {
            vec![
                "--dataplane-interface".into(),
                "eth0".into(),
                "--hostname".into(),
                format!("node-{i}"),
            ]
        })
        .start();
    let client = cluster.add_client_host().index();

    for n in cluster.nodes() {
        println!(
            "  node {}  netns {:<22} addr {:<15} api {}",
            n.index(),
            n.netns(),
            n.addr(),
            n.host_arg()
        );
    }

    say("each daemon answers its own API (swarm version)");
    let v = cluster.node(1).swarm(&["version"]).success();
    print!("{}", v.stdout);

    say("node 1: swarm init (a Raft group of one, a new root CA, join tokens)");
    let n1 = cluster.node(1);
    let init = n1
        .swarm(&["init", "--advertise-addr", &n1.addr().to_string()])
        .success();
    print!("{}", init.stdout);
    let token = |role: &str| {
        n1.swarm(&["join-token", "-q", role])
            .success()
            .stdout
            .trim()
            .to_string()
    };
    let (worker_token, manager_token) = (token("worker"), token("manager"));
    let manager_addr = format!("{}:2377", n1.addr());
    for n in cluster.nodes().iter().skip(1) {
        let (role, tok) = if n.index() == 2 {
            ("manager", &manager_token)
        } else {
            ("worker", &worker_token)
        };
        say(&format!("node {}: swarm join as a {role}", n.index()));
        let out = n
            .swarm(&[
                "join",
                "--token",
                tok,
                "--advertise-addr",
                &n.addr().to_string(),
                &manager_addr,
            ])
            .success();
        print!("{}", out.stdout);
    }
    // Sessions open and heartbeats start within a second or two.
    let ready = (0..100).any(|_| {
        let ls = n1.swarm(&["node", "ls", "--format", "json"]);
        let all_ready = ls.ok()
            && ls.json().as_array().is_some_and(|a| {
                a.len() == nodes
                    && a.iter().all(|v| {
                        v["Status"]["State"].as_str() == Some("ready")
                            && (v["ManagerStatus"].is_null()
                                || v["ManagerStatus"]["Reachability"].as_str() == Some("reachable"))
                    })
            });
        if !all_ready {
            std::thread::sleep(Duration::from_millis(100));
        }
        all_ready
    });
    if !ready {
        cluster.dump_logs();
        bail!("the nodes did not all become ready");
    }
    say("swarm node ls (on node 1, a manager)");
    print!("{}", n1.swarm(&["node", "ls"]).success().stdout);

    say("a client outside the swarm pings every node; XDP and TC count it");
    let client_host = cluster.host(client);
    for n in cluster.nodes() {
        let ok = client_host.ping(n.addr());
        println!(
            "  client {} -> node {} ({}): {}",
            client_host.addr(),
            n.index(),
            n.addr(),
            if ok { "reply" } else { "NO REPLY" }
        );
        if !ok {
            cluster.dump_logs();
            bail!("node {} did not answer the client", n.index());
        }
    }
    // Node-to-node traffic across the router.
    if nodes > 1 {
        let (a, b) = (cluster.node(1), cluster.node(2));
        let ok = a.ping(b.addr());
        println!(
            "  node 1 -> node 2 across subnets: {}",
            if ok { "reply" } else { "NO REPLY" }
        );
    }

    for n in cluster.nodes() {
        say(&format!("node {}: swarm dataplane status", n.index()));
        let out = n.swarm(&["dataplane", "status"]).success();
        print!("{}", out.stdout);
        let json = n
            .swarm(&["dataplane", "status", "--format", "json"])
            .success()
            .json();
        if json["Backend"] != "ebpf" {
            bail!("node {} runs without the eBPF data plane", n.index());
        }
    }

    let Some(signals) = wait_for else {
        say("done (--no-wait): tearing down");
        return Ok(());
    };
    say("the swarm is running; try:");
    println!("  {} -H {} node ls", bin.display(), n1.host_arg());
    println!("  {} -H {} info", bin.display(), n1.host_arg());
    println!("  {} -H {} dataplane status", bin.display(), n1.host_arg());
    println!(
        "  {} -H {} version --format json",
        bin.display(),
        n1.host_arg()
    );
    println!(
        "  ip netns exec {} ping -c3 {}",
        client_host.netns(),
        n1.addr()
    );
    println!("  less {}", n1.log_path().display());
    println!("\nCtrl-C stops the demo and removes every namespace, process and file it made.");

    // Keep an eye on the daemons while waiting: a crash ends the demo loudly.
    let waiter = std::thread::spawn(move || signals.wait());
    loop {
        if waiter.is_finished() {
            break;
        }
        for n in cluster.nodes() {
            if n.pid().is_none() {
                cluster.dump_logs();
                bail!("node {} exited unexpectedly", n.index());
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let sig = waiter
        .join()
        .map_err(|_| anyhow::anyhow!("signal waiter panicked"))?
        .context("waiting for a signal")?;
    say(&format!("{sig}: tearing down"));
    drop(cluster);
    // Show that nothing is left behind.
    let left = Command::new("ip").args(["netns", "list"]).output()?;
    let left = String::from_utf8_lossy(&left.stdout);
    if left
        .lines()
        .any(|l| l.starts_with(swarm_harness::NAME_PREFIX))
    {
        println!("warning: namespaces still present:\n{left}");
    }
    Ok(())
}
