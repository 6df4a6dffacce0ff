//! Metrics scraped for real: Debian's Prometheus server, running in a host
//! outside the swarm, scrapes every node's `/metrics`; the test asks
//! Prometheus's HTTP API, not the nodes, what it saw.
mod support;

use std::{net::SocketAddr, process::Stdio, time::Duration};

use serde_json::Value;
use support::*;
use swarm_harness::{Cluster, Process, Topology, http};

fn query(prom: SocketAddr, host: &swarm_harness::Host, q: &str) -> Option<Vec<Value>> {
    let path = format!("/api/v1/query?query={}", urlencode(q));
    let resp = host
        .in_netns(move || http::get(prom, &path, Duration::from_secs(3)))
        .ok()?;
    if resp.status != 200 {
        return None;
    }
    let v: Value = serde_json::from_str(&resp.body).ok()?;
    v["data"]["result"].as_array().cloned()
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The single value of an instant-vector result summed over series.
fn sum(result: &[Value]) -> f64 {
    result
        .iter()
        .filter_map(|r| r["value"][1].as_str()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn prometheus_scrapes_control_plane_and_datapath_metrics_from_every_node() {
    let mut c = Cluster::builder()
        .nodes(3)
        .topology(Topology::Bridge)
        .daemon_args(|i| {
            let mut a = hostname_args(i);
            a.extend([
                "--metrics-addr".into(),
                "0.0.0.0:9323".into(),
                "--dataplane-interface".into(),
                "eth0".into(),
            ]);
            a
        })
        .start();
    form(&c, 3, 0);
    wait_all_ready(c.node(1), 3);
    let targets: Vec<String> = c
        .nodes()
        .iter()
        .map(|n| format!("'{}:9323'", n.addr()))
        .collect();
    let host_index = c.add_client_host().index();
    let host = c.host(host_index);
    let dir = c.dir().join("prometheus");
    std::fs::create_dir_all(&dir).expect("prometheus dir");
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: swarm\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        ),
    )
    .expect("write config");
    let prom: SocketAddr = format!("{}:9090", host.addr()).parse().expect("addr");
    let mut cmd = host.ns().command("prometheus");
    cmd.arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={prom}"))
        .arg("--log.level=warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _prometheus = Process::spawn("prometheus", cmd).expect("start prometheus");

    // All three targets up.
    eventually(Duration::from_secs(30), "3 targets up", || {
        let up = query(prom, host, "up")?;
        (up.len() == 3 && sum(&up) == 3.0).then_some(())
    });
    // Exactly one leader, 3 ready nodes as every manager sees it, 3 voters.
    eventually(Duration::from_secs(15), "control plane series", || {
        let leaders = query(prom, host, "sum(swarm_manager_leader)")?;
        let ready = query(prom, host, "swarm_manager_nodes{state=\"ready\"}")?;
        let voters = query(prom, host, "min(swarm_raft_managers)")?;
        (sum(&leaders) == 1.0
            && ready.len() == 3
            && ready.iter().all(|r| r["value"][1] == "3")
            && sum(&voters) == 3.0)
            .then_some(())
    });
    // Writes move the latency histograms and the store's object counts.
    c.node(1)
        .swarm(&["node", "update", "--label-add", "metrics=yes", "node-3"])
        .success();
    eventually(Duration::from_secs(15), "latency and store series", || {
        let commits = query(prom, host, "sum(swarm_raft_proposal_latency_seconds_count)")?;
        let nodes = query(prom, host, "max(swarm_store_objects{kind=\"node\"})")?;
        let heartbeats = query(prom, host, "sum(swarm_dispatcher_heartbeats_total)")?;
        (sum(&commits) >= 1.0 && sum(&nodes) == 3.0 && sum(&heartbeats) > 0.0).then_some(())
    });
    // A published service answers through node 1's routing mesh and a
    // container asks the embedded DNS: the balancer's, overlay's and DNS
    // series move.
    let n1 = c.node(1);
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
        "-p",
        "8080:80",
        &image,
    ])
    .success();
    let web = eventually(Duration::from_secs(60), "web running", || {
        let ts = service_ps(n1, "web");
        let running: Vec<String> = ts
            .iter()
            .filter(|t| t["Status"]["State"] == "running")
            .filter_map(|t| t["ID"].as_str().map(str::to_owned))
            .collect();
        (running.len() == 3).then_some(running)
    });
    let mesh: SocketAddr = format!("{}:8080", n1.addr()).parse().expect("addr");
    for _ in 0..5 {
        eventually(
            Duration::from_secs(15),
            "the mesh answers on node 1",
            || {
                host.in_netns(move || http::get(mesh, "/", Duration::from_secs(3)))
                    .ok()
                    .filter(|r| r.body.contains("hostname="))
            },
        );
    }
    // Node 1's own task asks: the dashboard check below reads node 1.
    let mine = web
        .iter()
        .find(|id| netns_node(&c, id) == Some(1))
        .expect("web's task on node 1");
    let pid = container_pid(&c, 1, mine)
        .map(|p| p.to_string())
        .expect("its container");
    let out = swarm_harness::cmd::run(
        std::process::Command::new("nsenter").args([
            "-t",
            &pid,
            "-m",
            "-n",
            "--",
            "/bin/sh",
            "-c",
            "nslookup tasks.web",
        ]),
        Duration::from_secs(10),
    );
    assert!(
        out.stdout.contains("Address"),
        "nslookup in a container: {out}"
    );
    eventually(Duration::from_secs(15), "load balancer series", || {
        let flows = query(
            prom,
            host,
            "sum(swarm_lb_packets_total{action=\"mesh_new_flow\"})",
        )?;
        let bytes = query(
            prom,
            host,
            "sum by (direction) (swarm_lb_service_bytes_total)",
        )?;
        let dns = query(prom, host, "sum(swarm_dns_queries_total)")?;
        let endpoints = query(prom, host, "sum(swarm_overlay_endpoints)")?;
        let backends = query(prom, host, "min(swarm_lb_backends)")?;
        (sum(&flows) >= 5.0
            && bytes.len() == 2
            && bytes.iter().all(|r| r["value"][1] != "0")
            && sum(&dns) >= 1.0
            && sum(&endpoints) >= 2.0
            && backends.len() == 1
            && sum(&backends) >= 3.0)
            .then_some(())
    });

    // Every series the shipped Grafana dashboard uses is served.
    let exposed = host
        .in_netns({
            let addr: SocketAddr = format!("{}:9323", c.node(1).addr()).parse().expect("addr");
            move || http::get(addr, "/metrics", Duration::from_secs(3))
        })
        .expect("scrape node 1")
        .body;
    let dashboard = std::fs::read_to_string(
        swarm_harness::paths::workspace_root().join("dashboards/swarm.json"),
    )
    .expect("dashboard");
    let mut used: Vec<String> = dashboard
        .split(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_'))
        .filter(|w| w.starts_with("swarm_"))
        .map(|w| w.to_string())
        .collect();
    used.sort();
    used.dedup();
    assert!(used.len() > 10, "{used:?}");
    for name in used {
        assert!(
            exposed.contains(&format!("\n{name}")) || exposed.contains(&format!("\n{name}{{")),
            "dashboard uses {name}, which node 1 does not serve"
        );
    }
    // Data plane counters come from the per-CPU BPF maps of every node.
    eventually(Duration::from_secs(15), "datapath series", || {
        let tcp = query(
            prom,
            host,
            "swarm_datapath_packets_total{interface=\"eth0\",direction=\"ingress\",class=\"ipv4_tcp\"}",
        )?;
        let pressure = query(
            prom,
            host,
            "max(swarm_datapath_map_entries / swarm_datapath_map_capacity)",
        )?;
        (tcp.len() == 3 && tcp.iter().all(|r| r["value"][1] != "0") && sum(&pressure) > 0.0)
            .then_some(())
    });
}
