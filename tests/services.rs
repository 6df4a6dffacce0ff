//! Services through the CLI on real daemons: create with docker's
//! defaults, inspect, list, update, scale, roll back and remove, and the
//! refusals (duplicate names, taken ports, bad constraints, workers).
//! Nothing orchestrates tasks yet, so every change is made with --detach.
mod support;

use serde_json::Value;
use support::*;
use swarm_harness::{Node, Topology};

fn inspect(n: &Node, service: &str) -> Value {
    let v = n.swarm(&["service", "inspect", service]).success().json();
    assert_eq!(v.as_array().map(Vec::len), Some(1), "{v}");
    v[0].clone()
}

fn version(v: &Value) -> u64 {
    field(v, "Version.Index").as_u64().expect("a version")
}

fn replicas(v: &Value) -> u64 {
    field(v, "Spec.Mode.Replicated.Replicas")
        .as_u64()
        .expect("replicated")
}

#[test]
fn a_service_is_created_inspected_changed_rolled_back_and_removed() {
    let c = cluster(1, Topology::Bridge);
    form(&c, 1, 0);
    let n1 = c.node(1);

    let out = n1
        .swarm(&[
            "service",
            "create",
            "--detach",
            "--name",
            "web",
            "--replicas",
            "3",
            "-p",
            "8080:80",
            "nginx:1.25",
        ])
        .success();
    let id = out.trimmed().to_string();
    assert_eq!(id.len(), 25, "prints the service ID: {}", out.stdout);

    // Docker's defaults, filled by the manager.
    let v = inspect(n1, "web");
    assert_eq!(v["ID"], id.as_str());
    let spec = &v["Spec"];
    assert_eq!(spec["Name"], "web");
    assert_eq!(spec["Mode"]["Replicated"]["Replicas"], 3);
    assert_eq!(spec["TaskTemplate"]["ContainerSpec"]["Image"], "nginx:1.25");
    assert_eq!(
        spec["TaskTemplate"]["ContainerSpec"]["StopGracePeriod"],
        10_000_000_000_i64
    );
    assert_eq!(
        spec["TaskTemplate"]["RestartPolicy"],
        serde_json::json!({ "Condition": "any", "Delay": 5_000_000_000_i64, "MaxAttempts": 0 })
    );
    let defaults = serde_json::json!({
        "Parallelism": 1,
        "FailureAction": "pause",
        "Monitor": 5_000_000_000_i64,
        "MaxFailureRatio": 0.0,
        "Order": "stop-first",
    });
    assert_eq!(spec["UpdateConfig"], defaults);
    assert_eq!(spec["RollbackConfig"], defaults);
    assert_eq!(
        spec["EndpointSpec"],
        serde_json::json!({
            "Mode": "vip",
            "Ports": [{ "Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8080, "PublishMode": "ingress" }],
        })
    );
    assert!(v.get("PreviousSpec").is_none(), "{v}");
    let created = version(&v);

    // Lists: JSON with docker's task counts, and the table.
    let ls = n1
        .swarm(&["service", "ls", "--format", "json"])
        .success()
        .json();
    let ls = ls.as_array().expect("an array");
    assert_eq!(ls.len(), 1);
    assert_eq!(ls[0]["Spec"]["Name"], "web");
    assert_eq!(ls[0]["ServiceStatus"]["DesiredTasks"], 3);
    assert_eq!(ls[0]["ServiceStatus"]["RunningTasks"], 0);
    let table = n1.swarm(&["service", "ls"]).success().stdout;
    let row = table.lines().nth(1).unwrap_or_default().to_string();
    for want in [
        &id[..12],
        "web",
        "replicated",
        "0/3",
        "nginx:1.25",
        "*:8080->80/tcp",
    ] {
        assert!(row.contains(want), "{want} in {table}");
    }
    assert_eq!(
        n1.swarm(&["service", "ls", "-q", "--filter", "name=we"])
            .success()
            .trimmed(),
        id
    );
    assert_eq!(
        n1.swarm(&["service", "ls", "-q", "--filter", "mode=global"])
            .success()
            .trimmed(),
        ""
    );
    // No orchestrator yet: no tasks, but the table is there.
    let ps = n1.swarm(&["service", "ps", "web"]).success().stdout;
    assert!(ps.starts_with("ID "), "{ps}");

    // Refusals, each saying why.
    let dup = n1
        .swarm(&["service", "create", "-d", "--name", "WEB", "nginx"])
        .failure();
    assert!(dup.stderr.contains("already in use"), "{}", dup.stderr);
    let port = n1
        .swarm(&[
            "service", "create", "-d", "--name", "api", "-p", "8080:81", "nginx",
        ])
        .failure();
    assert!(
        port.stderr
            .contains("port 8080/tcp is already in use by service web"),
        "{}",
        port.stderr
    );
    let bad = n1
        .swarm(&[
            "service",
            "create",
            "-d",
            "--name",
            "api",
            "--constraint",
            "node.zone==a",
            "nginx",
        ])
        .failure();
    assert!(
        bad.stderr.contains("invalid constraint \"node.zone==a\"")
            && bad.stderr.contains("unknown key"),
        "{}",
        bad.stderr
    );
    let nameless = n1.swarm(&["service", "create", "-d", "nginx"]).failure();
    assert!(nameless.stderr.contains("--name"), "{}", nameless.stderr);
    let no_previous = n1.swarm(&["service", "rollback", "-d", "web"]).failure();
    assert!(
        no_previous.stderr.contains("no previous spec"),
        "{}",
        no_previous.stderr
    );
    assert_eq!(
        version(&inspect(n1, "web")),
        created,
        "refusals change nothing"
    );

    // update and scale change the spec and bump the version.
    let out = n1
        .swarm(&["service", "update", "--detach", "--replicas", "5", "web"])
        .success();
    assert_eq!(out.trimmed(), "web");
    let v = inspect(n1, "web");
    assert_eq!(replicas(&v), 5);
    assert_eq!(field(&v, "PreviousSpec.Mode.Replicated.Replicas"), 3);
    let updated = version(&v);
    assert!(updated > created, "{updated} > {created}");

    let out = n1.swarm(&["service", "scale", "-d", "web=2"]).success();
    assert_eq!(out.trimmed(), "web scaled to 2");
    let v = inspect(n1, &id[..8]);
    assert_eq!(replicas(&v), 2);
    assert_eq!(field(&v, "PreviousSpec.Mode.Replicated.Replicas"), 5);
    let scaled = version(&v);
    assert!(scaled > updated);

    // Rollback swaps the spec and the previous one.
    let both = n1
        .swarm(&["service", "update", "--rollback", "--replicas", "3", "web"])
        .failure();
    assert!(
        both.stderr
            .contains("other flags may not be combined with --rollback"),
        "{}",
        both.stderr
    );
    n1.swarm(&["service", "rollback", "-d", "web"]).success();
    let v = inspect(n1, "web");
    assert_eq!(replicas(&v), 5);
    assert_eq!(field(&v, "PreviousSpec.Mode.Replicated.Replicas"), 2);
    assert_eq!(field(&v, "UpdateStatus.State"), "rollback_started");
    assert!(version(&v) > scaled);
    n1.swarm(&["service", "update", "-d", "--rollback", "web"])
        .success();
    assert_eq!(replicas(&inspect(n1, "web")), 2);

    let pretty = n1
        .swarm(&["service", "inspect", "--pretty", "web"])
        .success()
        .stdout;
    assert!(
        pretty.contains("Service Mode:           Replicated"),
        "{pretty}"
    );

    // Removed: gone from the list, its name free again.
    assert_eq!(
        n1.swarm(&["service", "rm", "web"]).success().trimmed(),
        "web"
    );
    assert_eq!(n1.swarm(&["service", "ls", "-q"]).success().trimmed(), "");
    let gone = n1.swarm(&["service", "inspect", "web"]).failure();
    assert!(gone.stderr.contains("not found"), "{}", gone.stderr);
    n1.swarm(&[
        "service", "create", "-d", "--name", "web", "-p", "8080:80", "nginx",
    ])
    .success();
}

#[test]
fn a_follower_forwards_service_writes_and_a_worker_refuses_them() {
    let c = cluster(3, Topology::Bridge);
    form(&c, 2, 1);
    let ls = wait_all_ready(c.node(1), 3);
    let leader = leader_index(&ls);
    let follower = if leader == 1 { 2 } else { 1 };
    let id = c
        .node(follower)
        .swarm(&["service", "create", "-d", "--name", "db", "redis"])
        .success()
        .trimmed()
        .to_string();
    // Committed through the leader, so every manager has it.
    for i in [1, 2] {
        eventually(
            std::time::Duration::from_secs(10),
            "the service on every manager",
            || {
                let out = c.node(i).swarm(&["service", "ls", "-q"]);
                (out.ok() && out.trimmed() == id).then_some(())
            },
        );
    }
    c.node(follower)
        .swarm(&["service", "scale", "-d", "db=4"])
        .success();
    assert_eq!(replicas(&inspect(c.node(leader), "db")), 4);

    for args in [
        vec!["service", "ls"],
        vec!["service", "create", "-d", "--name", "x", "nginx"],
        vec!["service", "rm", "db"],
    ] {
        let out = c.node(3).swarm(&args).failure();
        assert!(
            out.stderr.contains("not a swarm manager"),
            "{args:?}: {}",
            out.stderr
        );
    }
}
