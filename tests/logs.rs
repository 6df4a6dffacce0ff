//! `service logs` and `task logs` through real daemons: the unix socket,
//! a manager's proxy to the leader over mTLS (also from a follower), the
//! refusals, and lines from real containers on two nodes (`--tail`,
//! `--follow`, tasks that start while following).
mod support;

use std::{
    io::{BufRead, BufReader},
    process::Stdio,
    sync::mpsc,
    time::Duration,
};

use support::*;
use swarm_harness::Topology;

#[test]
fn logs_go_through_the_leader_and_refuse_what_is_not_there() {
    let c = cluster(3, Topology::Bridge);
    form(&c, 2, 1);
    let (n1, n2, n3) = (c.node(1), c.node(2), c.node(3));
    // An image no node can pull: its tasks never write a line.
    n1.swarm(&["service", "create", "--detach", "--name", "web", "nosuch:1"])
        .success();

    // Tasks without logs: an empty stream that ends, from the leader and
    // through a follower.
    for n in [n1, n2] {
        let out = n.swarm(&["service", "logs", "web"]).success();
        assert_eq!(out.stdout, "", "{out}");
        assert_eq!(out.stderr, "", "{out}");
    }
    n2.swarm(&["service", "logs", "--tail", "1", "-t", "web"])
        .success();

    let missing = n1.swarm(&["service", "logs", "nosuch"]).failure();
    assert!(
        missing.stderr.contains("no such task or service: nosuch"),
        "{missing}"
    );
    let missing = n2.swarm(&["task", "logs", "nosuch"]).failure();
    assert!(missing.stderr.contains("no such task: nosuch"), "{missing}");

    let worker = n3.swarm(&["service", "logs", "web"]).failure();
    assert!(
        worker.stderr.contains("This node is not a swarm manager"),
        "{worker}"
    );
}

/// `service logs` lines as (prefix, text), stdout only.
fn lines(out: &str) -> Vec<(String, String)> {
    out.lines()
        .filter_map(|l| l.split_once("    | "))
        .map(|(p, t)| (p.to_string(), t.to_string()))
        .collect()
}

#[test]
fn service_logs_show_every_replica_with_dockers_prefix_and_follow() {
    let c = cluster(2, Topology::Bridge);
    form(&c, 1, 1);
    let n1 = c.node(1);
    wait_all_ready(n1, 2);
    let image = c.image("bb:1");
    n1.swarm(&[
        "service",
        "create",
        "--detach",
        "--name",
        "echo",
        "--replicas",
        "2",
        &image,
        "sh",
        "-c",
        "echo hello-$(hostname); echo oops >&2; sleep 1000",
    ])
    .success();
    let out = eventually(Duration::from_secs(60), "both replicas logged", || {
        let out = n1.swarm(&["service", "logs", "echo"]).success();
        let hellos = lines(&out.stdout)
            .iter()
            .filter(|(_, t)| t.starts_with("hello-"))
            .count();
        (hellos == 2).then_some(out)
    });
    let got = lines(&out.stdout);
    let mut prefixes: Vec<&str> = got.iter().map(|(p, _)| p.as_str()).collect();
    prefixes.sort_unstable();
    // echo.<slot>.<12-char task ID>@<hostname>, one task per node.
    assert!(
        prefixes[0].starts_with("echo.1.") && prefixes[1].starts_with("echo.2."),
        "{out}"
    );
    let hosts: Vec<&str> = prefixes
        .iter()
        .map(|p| p.rsplit_once('@').map_or("", |(_, h)| h))
        .collect();
    let mut sorted = hosts.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, ["node-1", "node-2"], "{out}");
    for p in &prefixes {
        let id = p
            .split('.')
            .nth(2)
            .and_then(|s| s.split('@').next())
            .unwrap();
        assert_eq!(id.len(), 12, "{out}");
    }
    // stderr lines go to stderr, with the same prefix.
    assert_eq!(
        out.stderr
            .lines()
            .filter(|l| l.ends_with("    | oops"))
            .count(),
        2,
        "{out}"
    );

    // --tail 1: each task's last line only (its stderr one).
    let out = n1
        .swarm(&["service", "logs", "--tail", "1", "echo"])
        .success();
    assert!(lines(&out.stdout).is_empty(), "{out}");
    assert_eq!(out.stderr.lines().count(), 2, "{out}");

    // One task, by ID, with `task logs` and without prefix.
    let task_id = service_ps(n1, "echo")[0]["ID"]
        .as_str()
        .unwrap()
        .to_string();
    let out = n1.swarm(&["task", "logs", "--raw", &task_id]).success();
    assert!(
        out.stdout.starts_with("hello-") && out.stdout.lines().count() == 1,
        "{out}"
    );

    // --follow: a replica started later shows up in the running stream.
    let mut child = n1
        .swarm_command(&["service", "logs", "--follow", "--tail", "0", "echo"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                return;
            }
        }
    });
    std::thread::sleep(Duration::from_secs(1));
    n1.swarm(&["service", "scale", "--detach", "echo=3"])
        .success();
    let line = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the new replica's line while following");
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        line.starts_with("echo.3.") && line.contains("    | hello-"),
        "{line}"
    );
}
