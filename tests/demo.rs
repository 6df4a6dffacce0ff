//! The README's first command ends in `cargo xtask demo`; this runs the same
//! demo (without waiting for Ctrl-C) so a broken demo fails the test run.
use std::process::Command;

use swarm_harness::paths::swarm_bin;

#[test]
fn the_demo_runs_end_to_end_and_leaves_nothing_behind() {
    let xtask = swarm_bin().with_file_name("xtask");
    assert!(
        xtask.exists(),
        "{} missing: build it first (cargo build --bins)",
        xtask.display()
    );
    let child = Command::new(&xtask)
        .args(["demo", "--no-wait"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run xtask demo");
    // Everything the harness creates in that process is named after its pid.
    let marker = format!("{}{}-", swarm_harness::NAME_PREFIX, child.id());
    let out = child.wait_with_output().expect("wait for xtask demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    assert_eq!(stdout.matches("Backend: ebpf").count(), 3, "{stdout}");
    assert!(!stdout.contains("NO REPLY"), "{stdout}");
    assert!(
        stdout.contains(&marker),
        "demo names its namespaces: {stdout}"
    );
    let netns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let netns = String::from_utf8_lossy(&netns.stdout);
    assert!(
        !netns.contains(&marker),
        "demo left namespaces behind: {netns}"
    );
}
