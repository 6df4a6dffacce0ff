//! Overlay networks through the CLI on real daemons: the ingress network
//! `swarm init` creates, `network create|ls|inspect|rm` through any manager
//! (followers forward), subnets from the default address pools, and the
//! refusals (overlaps, other drivers, duplicate names, networks in use,
//! services naming a network that does not exist).
mod support;

use serde_json::Value;
use support::*;
use swarm_harness::{Node, Topology};

fn inspect(n: &Node, network: &str) -> Value {
    let v = n.swarm(&["network", "inspect", network]).success().json();
    assert_eq!(v.as_array().map(Vec::len), Some(1), "{v}");
    v[0].clone()
}

/// (subnet, gateway) of a network's first IPAM config.
fn subnet(v: &Value) -> (String, String) {
    let c = &v["IPAM"]["Config"][0];
    (
        c["Subnet"].as_str().unwrap_or_default().to_string(),
        c["Gateway"].as_str().unwrap_or_default().to_string(),
    )
}

fn names(n: &Node, args: &[&str]) -> Vec<String> {
    let mut argv = vec!["network", "ls", "--format", "json"];
    argv.extend_from_slice(args);
    n.swarm(&argv)
        .success()
        .json()
        .as_array()
        .expect("an array")
        .iter()
        .map(|v| v["Name"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn networks_are_created_listed_inspected_and_removed_through_any_manager() {
    let c = cluster(3, Topology::Bridge);
    form(&c, 3, 0);
    let ls = wait_all_ready(c.node(1), 3);
    let leader = leader_index(&ls);
    let follower = if leader == 1 { 2 } else { 1 };
    let (l, f) = (c.node(leader), c.node(follower));

    // `swarm init` made the routing mesh's network, as docker's.
    let ingress = inspect(l, "ingress");
    assert_eq!(ingress["Ingress"], true, "{ingress}");
    assert_eq!(ingress["Driver"], "overlay");
    assert_eq!(ingress["Scope"], "swarm");
    assert_eq!(
        subnet(&ingress),
        ("10.0.0.0/24".to_string(), "10.0.0.1".to_string())
    );

    // A follower forwards the create; the subnet is the pool's next.
    let id = f
        .swarm(&["network", "create", "-d", "overlay", "web-net"])
        .success()
        .trimmed()
        .to_string();
    assert_eq!(id.len(), 25, "prints the network ID: {id}");
    for i in 1..=3 {
        eventually(
            std::time::Duration::from_secs(10),
            "the network on every manager",
            || {
                let out = c.node(i).swarm(&["network", "ls", "-q", "--no-trunc"]);
                (out.ok() && out.stdout.lines().any(|l| l == id)).then_some(())
            },
        );
    }
    let web = inspect(f, "web-net");
    assert_eq!(web["Id"], id.as_str());
    assert_eq!(
        subnet(&web),
        ("10.0.1.0/24".to_string(), "10.0.1.1".to_string())
    );
    assert_eq!(inspect(l, &id[..8])["Name"], "web-net");

    // Docker's table.
    let table = l.swarm(&["network", "ls"]).success().stdout;
    let mut lines = table.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NETWORK", "ID", "NAME", "DRIVER", "SCOPE"],
        "{table}"
    );
    let row = lines
        .find(|r| r.contains("web-net"))
        .unwrap_or_else(|| panic!("web-net listed: {table}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells, [&id[..12], "web-net", "overlay", "swarm"]);

    // Explicit subnet, gateway, labels, options.
    let mine = f
        .swarm(&[
            "network",
            "create",
            "--subnet",
            "192.168.50.0/24",
            "--gateway",
            "192.168.50.254",
            "--attachable",
            "--label",
            "env=prod",
            "--opt",
            "encrypted",
            "mine",
        ])
        .success();
    assert!(mine.ok());
    let v = inspect(l, "mine");
    assert_eq!(
        subnet(&v),
        ("192.168.50.0/24".to_string(), "192.168.50.254".to_string())
    );
    assert_eq!(v["Attachable"], true);
    assert_eq!(v["Labels"]["env"], "prod");
    assert!(v["Options"].get("encrypted").is_some(), "{v}");
    assert_eq!(names(l, &["--filter", "name=web"]), ["web-net"]);
    assert_eq!(names(l, &["--filter", "label=env=prod"]), ["mine"]);
    assert_eq!(names(l, &[]), ["ingress", "mine", "web-net"]);

    // Refusals, with what to do.
    for (args, want) in [
        (
            vec!["network", "create", "--subnet", "10.0.1.128/25", "x"],
            "overlaps network web-net (10.0.1.0/24)",
        ),
        (
            vec!["network", "create", "-d", "bridge", "x"],
            "overlay driver",
        ),
        (vec!["network", "create", "web-net"], "already exists"),
        (
            vec!["network", "create", "--subnet", "10.7.0.1/16", "x"],
            "did you mean 10.7.0.0/16",
        ),
        (
            vec![
                "network",
                "create",
                "--subnet",
                "10.7.0.0/16",
                "--gateway",
                "10.8.0.1",
                "x",
            ],
            "not a usable address",
        ),
        (vec!["network", "inspect", "nope"], "network nope not found"),
        (
            vec![
                "service",
                "create",
                "-d",
                "--name",
                "x",
                "--network",
                "nope",
                "nginx",
            ],
            "network nope not found",
        ),
    ] {
        let out = f.swarm(&args).failure();
        assert!(out.stderr.contains(want), "{args:?}: {}", out.stderr);
    }

    // A service on the network keeps it; its spec holds the network's ID.
    l.swarm(&[
        "service",
        "create",
        "-d",
        "--name",
        "web",
        "--network",
        "web-net",
        "-p",
        "8080:80",
        "nginx",
    ])
    .success();
    let svc = l.swarm(&["service", "inspect", "web"]).success().json();
    assert_eq!(
        svc[0]["Spec"]["TaskTemplate"]["Networks"][0]["Target"],
        id.as_str(),
        "{svc}"
    );
    let out = f.swarm(&["network", "rm", "web-net"]).failure();
    assert!(
        out.stderr
            .contains("network web-net is in use by service web"),
        "{}",
        out.stderr
    );
    let out = f.swarm(&["network", "rm", "ingress"]).failure();
    assert!(
        out.stderr.contains("service web depends on it"),
        "{}",
        out.stderr
    );
    l.swarm(&["service", "rm", "web"]).success();
    // The service's tasks hold their addresses until they have stopped
    // and are deleted (docker: "network has active endpoints").
    let out = eventually(
        std::time::Duration::from_secs(15),
        "web's tasks gone",
        || {
            let out = f.swarm(&["network", "rm", "web-net"]);
            out.ok().then_some(out)
        },
    );
    assert_eq!(out.stdout.trim(), "web-net");
    let out = f.swarm(&["network", "rm", "mine"]).success();
    assert_eq!(out.stdout.trim(), "mine");
    assert_eq!(names(l, &[]), ["ingress"]);

    // Without ingress, ports can't be published through the mesh until
    // one is created again.
    f.swarm(&["network", "rm", "ingress"]).success();
    let out = l
        .swarm(&[
            "service", "create", "-d", "--name", "p", "-p", "80:80", "nginx",
        ])
        .failure();
    assert!(out.stderr.contains("ingress network"), "{}", out.stderr);
    f.swarm(&[
        "network",
        "create",
        "--ingress",
        "--subnet",
        "10.255.0.0/16",
        "mesh",
    ])
    .success();
    assert_eq!(inspect(l, "mesh")["Ingress"], true);
    l.swarm(&[
        "service", "create", "-d", "--name", "p", "-p", "80:80", "nginx",
    ])
    .success();
}

#[test]
fn init_address_pools_and_data_path_port_are_used() {
    let c = cluster(1, Topology::Bridge);
    let n1 = c.node(1);
    let bad = n1
        .swarm(&[
            "init",
            "--advertise-addr",
            &n1.addr().to_string(),
            "--default-addr-pool",
            "10.20.0.0/16",
            "--default-addr-pool-mask-length",
            "12",
        ])
        .failure();
    assert!(bad.stderr.contains("mask length"), "{}", bad.stderr);
    n1.swarm(&[
        "init",
        "--advertise-addr",
        &n1.addr().to_string(),
        "--default-addr-pool",
        "10.20.0.0/16",
        "--default-addr-pool-mask-length",
        "26",
        "--data-path-port",
        "7789",
    ])
    .success();
    assert_eq!(subnet(&inspect(n1, "ingress")).0, "10.20.0.0/26");
    n1.swarm(&["network", "create", "a"]).success();
    n1.swarm(&["network", "create", "b"]).success();
    assert_eq!(
        subnet(&inspect(n1, "a")),
        ("10.20.0.64/26".to_string(), "10.20.0.65".to_string())
    );
    assert_eq!(subnet(&inspect(n1, "b")).0, "10.20.0.128/26");
    let info = n1.swarm(&["info", "--format", "json"]).success().json();
    let cluster = &info["Cluster"];
    assert_eq!(cluster["DefaultAddrPool"][0], "10.20.0.0/16", "{info}");
    assert_eq!(cluster["SubnetSize"], 26, "{info}");
    assert_eq!(cluster["DataPathPort"], 7789, "{info}");
}

#[test]
fn a_service_on_a_network_gets_virtual_ips_and_its_tasks_addresses() {
    use std::net::Ipv4Addr;
    use std::time::Duration;

    let c = cluster(1, Topology::Bridge);
    form(&c, 1, 0);
    let n1 = c.node(1);
    let image = c.image("bb:1");
    n1.swarm(&["network", "create", "--subnet", "10.9.0.0/24", "app"])
        .success();
    let app = inspect(n1, "app")["Id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let ingress = inspect(n1, "ingress")["Id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    n1.swarm(&[
        "service",
        "create",
        "--detach",
        "--name",
        "web",
        "--replicas",
        "3",
        "--network",
        "app",
        "-p",
        "8080:80",
        &image,
    ])
    .success();

    // One VIP per network: ingress (it publishes a port) and app.
    let vips = eventually(Duration::from_secs(10), "the service's VIPs", || {
        let v = n1.swarm(&["service", "inspect", "web"]).success().json();
        let vips = v[0]["Endpoint"]["VirtualIPs"].as_array()?.clone();
        (vips.len() == 2).then_some(vips)
    });
    let vip_on = |net: &str| {
        vips.iter()
            .find(|v| v["NetworkID"] == net)
            .and_then(|v| v["Addr"].as_str())
            .unwrap_or_default()
            .to_string()
    };
    assert!(vip_on(&app).starts_with("10.9.0."), "{vips:?}");
    assert!(vip_on(&ingress).starts_with("10.0.0."), "{vips:?}");

    // Every task: an address on each network, all different, none the
    // gateway or a VIP.
    let tasks = eventually(Duration::from_secs(10), "3 tasks with addresses", || {
        let tasks = service_ps(n1, "web");
        let with: Vec<Value> = tasks
            .into_iter()
            .filter(|t| {
                t["NetworksAttachments"]
                    .as_array()
                    .is_some_and(|a| a.len() == 2)
            })
            .collect();
        (with.len() == 3).then_some(with)
    });
    let mut seen = vec![vip_on(&app), vip_on(&ingress)];
    for t in &tasks {
        assert_ne!(t["Status"]["State"], "new", "{t}");
        for a in t["NetworksAttachments"].as_array().into_iter().flatten() {
            let addr = a["Addresses"][0].as_str().unwrap_or_default().to_string();
            let ip: Ipv4Addr = addr
                .split('/')
                .next()
                .unwrap_or_default()
                .parse()
                .expect("an address");
            assert!(ip.octets()[3] > 1, "not the network or gateway: {addr}");
            assert!(!seen.contains(&addr), "{addr} handed out twice");
            seen.push(addr);
        }
    }

    // The network is in use while the service is there.
    let out = n1.swarm(&["network", "rm", "app"]).failure();
    assert!(
        out.stderr.contains("in use by service web"),
        "{}",
        out.stderr
    );
}
