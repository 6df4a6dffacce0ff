//! The client side of the binary: addressing a daemon and failing well.
use std::process::Command;

use swarm_harness::{Cluster, paths::swarm_bin};

#[test]
fn an_unreachable_daemon_is_one_line_naming_the_socket() {
    let out = Command::new(swarm_bin())
        .args(["-H", "unix:///nonexistent/swarm-test.sock", "version"])
        .env_remove("SWARM_HOST")
        .output()
        .expect("run swarm");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line, got: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert!(
        lines[0].contains("unix:///nonexistent/swarm-test.sock"),
        "{stderr}"
    );
    assert!(
        lines[0].contains("swarm daemon"),
        "says how to start one: {stderr}"
    );
    // The client half still prints.
    assert!(String::from_utf8_lossy(&out.stdout).contains("Client:"));
}

#[test]
fn swarm_host_env_selects_the_daemon_and_version_shows_both_sides() {
    let cluster = Cluster::builder().nodes(1).start();
    let n1 = cluster.node(1);
    let out = Command::new(swarm_bin())
        .args(["version", "--format", "json"])
        .env("SWARM_HOST", n1.host_arg())
        .output()
        .expect("run swarm");
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["Client"]["Version"], v["Server"]["Version"]);
    assert_eq!(v["Server"]["Os"], "linux");
    assert!(
        v["Server"]["KernelVersion"]
            .as_str()
            .is_some_and(|k| !k.is_empty())
    );

    let table = n1.swarm(&["version"]).success().stdout;
    assert!(
        table.contains("Client:") && table.contains("Server:"),
        "{table}"
    );
}

#[test]
fn two_daemons_cannot_share_a_data_root_or_a_socket() {
    let cluster = Cluster::builder().nodes(1).start();
    let n1 = cluster.node(1);
    // Same data root, different socket.
    let other_sock = n1.dir().join("other.sock");
    let out = n1.exec(
        &swarm_bin().to_string_lossy(),
        &[
            "daemon",
            "--data-root",
            &n1.data_root().to_string_lossy(),
            "-H",
            &format!("unix://{}", other_sock.display()),
        ],
    );
    assert!(!out.ok());
    assert!(
        out.stderr.contains("in use by another swarm daemon"),
        "{}",
        out.stderr
    );
    // Same socket, different data root.
    let out = n1.exec(
        &swarm_bin().to_string_lossy(),
        &[
            "daemon",
            "--data-root",
            &n1.dir().join("other-root").to_string_lossy(),
            "-H",
            &n1.host_arg(),
        ],
    );
    assert!(!out.ok());
    assert!(out.stderr.contains("already serving"), "{}", out.stderr);
    // The first daemon is unharmed.
    n1.swarm(&["version"]).success();
}
