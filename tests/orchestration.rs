//! The leader loops on real daemons, end to end with real containers:
//! services' tasks are created by the orchestrator, placed by the scheduler
//! and run by the workers; they follow scale changes, rolling updates (and
//! automatic rollbacks), dead and drained nodes, restart policies and jobs,
//! and a new leader carries on after a failover.
mod support;

use std::time::Duration;

use serde_json::Value;
use support::*;
use swarm_harness::Topology;

/// Desired-running tasks per node, sorted, once every one of them is placed.
fn placed_counts(tasks: &[Value]) -> Option<Vec<usize>> {
    let by = running_by_node(tasks);
    if by.contains_key("") {
        return None;
    }
    let mut counts: Vec<usize> = by.into_values().collect();
    counts.sort_unstable();
    Some(counts)
}

#[test]
fn replicas_are_placed_spread_over_the_nodes_and_follow_scale() {
    let c = cluster(3, Topology::Bridge);
    form(&c, 1, 2);
    let n1 = c.node(1);
    wait_all_ready(n1, 3);
    let image = c.image("bb:1");
    n1.swarm(&[
        "service",
        "create",
        "--detach",
        "--name",
        "web",
        "--replicas",
        "5",
        &image,
    ])
    .success();
    eventually(RUN_TIMEOUT, "5 tasks running, spread 1/2/2", || {
        let tasks = service_ps(n1, "web");
        (running_counts(&tasks)? == [1, 2, 2]).then_some(())
    });

    n1.swarm(&["service", "scale", "--detach", "web=9"])
        .success();
    let nine = eventually(RUN_TIMEOUT, "9 tasks running, spread 3/3/3", || {
        let tasks = service_ps(n1, "web");
        (running_counts(&tasks)? == [3, 3, 3]).then_some(tasks)
    });

    n1.swarm(&["service", "scale", "--detach", "web=2"])
        .success();
    eventually(Duration::from_secs(10), "2 tasks on 2 nodes", || {
        let tasks = service_ps(n1, "web");
        (placed_counts(&tasks)? == [1, 1]).then_some(())
    });
    // The survivors are tasks that ran before, untouched (which slots
    // survive depends on the placement, as in docker: one per node).
    let before: std::collections::BTreeSet<&str> =
        nine.iter().filter_map(|t| t["ID"].as_str()).collect();
    let after = service_ps(n1, "web");
    for t in after.iter().filter(|t| desired_running(t)) {
        assert!(
            before.contains(t["ID"].as_str().unwrap_or_default()),
            "a new task after scaling down: {t}"
        );
    }
}

#[test]
fn a_global_service_has_one_task_per_node_including_nodes_that_join_later() {
    let c = cluster(3, Topology::Bridge);
    let (worker_token, _) = form(&c, 1, 1);
    let n1 = c.node(1);
    wait_all_ready(n1, 2);
    n1.swarm(&[
        "service",
        "create",
        "--detach",
        "--mode",
        "global",
        "--name",
        "agent",
        &c.image("bb:1"),
    ])
    .success();
    eventually(
        Duration::from_secs(10),
        "one task on each of 2 nodes",
        || (placed_counts(&service_ps(n1, "agent"))? == [1, 1]).then_some(()),
    );
    join(&c, 3, &worker_token);
    eventually(
        Duration::from_secs(10),
        "one task on each of 3 nodes",
        || (placed_counts(&service_ps(n1, "agent"))? == [1, 1, 1]).then_some(()),
    );
    // And it runs there.
    eventually(RUN_TIMEOUT, "one task running on each of 3 nodes", || {
        (running_counts(&service_ps(n1, "agent"))? == [1, 1, 1]).then_some(())
    });
}

#[test]
fn a_new_leader_carries_on_orchestrating() {
    let c = cluster(3, Topology::Bridge);
    form(&c, 3, 0);
    let n1 = c.node(1);
    wait_all_ready(n1, 3);
    n1.swarm(&[
        "service",
        "create",
        "--detach",
        "--name",
        "web",
        "--replicas",
        "3",
        &c.image("bb:1"),
    ])
    .success();
    eventually(Duration::from_secs(10), "3 tasks placed", || {
        (placed_counts(&service_ps(n1, "web"))?.iter().sum::<usize>() == 3).then_some(())
    });

    // Stop the leader (node 1, which initialised the swarm); the others
    // elect a new one, which must scale the service.
    n1.stop();
    let n2 = c.node(2);
    eventually(
        Duration::from_secs(15),
        "scale through the new leader",
        || {
            n2.swarm(&["service", "scale", "--detach", "web=6"])
                .status
                .success()
                .then_some(())
        },
    );
    eventually(Duration::from_secs(10), "6 tasks placed", || {
        let tasks = service_ps(n2, "web");
        let by = running_by_node(&tasks);
        (!by.contains_key("") && by.values().sum::<usize>() == 6).then_some(())
    });
    // And they run, node 1's replaced once it is marked down.
    eventually(RUN_TIMEOUT, "6 tasks running", || {
        let tasks = service_ps(n2, "web");
        (running_counts(&tasks)?.iter().sum::<usize>() == 6).then_some(())
    });
}

// ---------------------------------------------------------------------------
// End to end with real containers: every task below runs as a container
// pulled from the cluster's registry.

const RUN_TIMEOUT: Duration = Duration::from_secs(60);

fn state(t: &Value) -> &str {
    t["Status"]["State"].as_str().unwrap_or_default()
}

fn desired_running(t: &Value) -> bool {
    t["DesiredState"] == "running"
}

/// Tasks that are meant to run and do.
fn running(tasks: &[Value]) -> Vec<&Value> {
    tasks
        .iter()
        .filter(|t| desired_running(t) && state(t) == "running")
        .collect()
}

/// RUNNING tasks per node, sorted, once exactly the desired-running tasks
/// run (nothing pending, starting or on its way out).
fn running_counts(tasks: &[Value]) -> Option<Vec<usize>> {
    let r = running(tasks);
    if r.len() != tasks.iter().filter(|t| desired_running(t)).count() {
        return None;
    }
    let mut by = std::collections::BTreeMap::new();
    for t in r {
        *by.entry(t["NodeID"].as_str().unwrap_or_default().to_owned())
            .or_insert(0_usize) += 1;
    }
    let mut counts: Vec<usize> = by.into_values().collect();
    counts.sort_unstable();
    Some(counts)
}

/// The node ID of the node with hostname `node-i`.
fn node_id(n: &swarm_harness::Node, i: usize) -> String {
    let ls = node_ls(n).expect("node ls");
    let v = ls
        .iter()
        .find(|v| hostname_of(v) == format!("node-{i}"))
        .unwrap_or_else(|| panic!("no node-{i} in {ls:?}"));
    v["ID"].as_str().expect("node ID").to_owned()
}

/// Containers whose cgroup still holds processes on node `i`.
fn live_containers(c: &swarm_harness::Cluster, i: usize) -> Vec<String> {
    let dir = std::path::Path::new(swarm_harness::cleanup::CGROUP_ROOT)
        .join("pids")
        .join(format!("{}n{i}", c.cgroup_prefix()));
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| {
            std::fs::read_to_string(e.path().join("cgroup.procs"))
                .is_ok_and(|p| !p.trim().is_empty())
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

fn three_nodes() -> swarm_harness::Cluster {
    let c = cluster(3, Topology::Bridge);
    form(&c, 1, 2);
    wait_all_ready(c.node(1), 3);
    c
}

/// `service create` without `--detach`, as a user types it.
fn create_and_wait(n: &swarm_harness::Node, args: &[&str]) -> swarm_harness::CmdOutput {
    let mut all = vec!["service", "create"];
    all.extend_from_slice(args);
    n.swarm_timeout(&all, RUN_TIMEOUT)
}

#[test]
fn create_waits_for_five_running_replicas_spread_2_2_1() {
    let c = three_nodes();
    let n1 = c.node(1);
    let image = c.image("bb:1");
    let started = std::time::Instant::now();
    let out = create_and_wait(n1, &["--name", "web", "--replicas", "5", &image]).success();
    eprintln!("create converged in {:?}", started.elapsed());
    let text = format!("{}{}", out.stdout, out.stderr);
    eprintln!("{text}");
    assert!(
        text.contains("overall progress: 5 out of 5 tasks"),
        "{text}"
    );
    assert!(text.contains("1/5: running"), "{text}");
    assert!(text.contains("verify: Service converged"), "{text}");
    // The command returns once the tasks run, not before.
    let tasks = service_ps(n1, "web");
    assert_eq!(running_counts(&tasks), Some(vec![1, 2, 2]), "{tasks:?}");
}

#[test]
fn scale_up_to_20_and_down_to_2_stops_the_other_containers() {
    let c = three_nodes();
    let n1 = c.node(1);
    let image = c.image("bb:1");
    n1.swarm(&["service", "create", "--detach", "--name", "web", &image])
        .success();
    let started = std::time::Instant::now();
    n1.swarm_timeout(&["service", "scale", "web=20"], RUN_TIMEOUT)
        .success();
    eprintln!("scale to 20 converged in {:?}", started.elapsed());
    let tasks = service_ps(n1, "web");
    assert_eq!(running(&tasks).len(), 20, "{tasks:?}");
    let live: usize = (1..=3).map(|i| live_containers(&c, i).len()).sum();
    assert_eq!(live, 20, "containers with processes");

    n1.swarm(&["service", "scale", "--detach", "web=2"])
        .success();
    eventually(
        Duration::from_secs(30),
        "2 running, the others shut down and their containers gone",
        || {
            let tasks = service_ps(n1, "web");
            let stopping = tasks
                .iter()
                .filter(|t| !desired_running(t))
                .filter(|t| !matches!(state(t), "shutdown" | "complete" | "failed"))
                .count();
            let live: usize = (1..=3).map(|i| live_containers(&c, i).len()).sum();
            (running_counts(&tasks)?.iter().sum::<usize>() == 2 && stopping == 0 && live == 2)
                .then_some(())
        },
    );
    eprintln!("scale to 2 converged in {:?}", started.elapsed());
    let tasks = service_ps(n1, "web");
    assert_eq!(running(&tasks).len(), 2, "{tasks:?}");
}

#[test]
fn a_rolling_update_never_has_more_than_parallelism_replicas_down() {
    let c = three_nodes();
    let n1 = c.node(1);
    let (bb1, bb2) = (c.image("bb:1"), c.image("bb:2"));
    const REPLICAS: u64 = 6;
    create_and_wait(
        n1,
        &[
            "--name",
            "web",
            "--replicas",
            &REPLICAS.to_string(),
            "--update-parallelism",
            "2",
            // Each stop takes the whole grace period (the command ignores
            // SIGTERM), so every batch keeps its slots down for a second
            // and the sampling sees each of them.
            "--stop-grace-period",
            "1s",
            &bb1,
            "sh",
            "-c",
            "trap '' TERM; while true; do sleep 0.2; done",
        ],
    )
    .success();

    let started = std::time::Instant::now();
    n1.swarm(&["service", "update", "--detach", "--image", &bb2, "web"])
        .success();
    let mut worst = 0;
    let mut samples = 0;
    loop {
        let tasks = service_ps(n1, "web");
        samples += 1;
        let up: std::collections::BTreeSet<u64> = running(&tasks)
            .iter()
            .filter_map(|t| t["Slot"].as_u64())
            .collect();
        let down = (1..=REPLICAS).filter(|s| !up.contains(s)).count();
        worst = worst.max(down);
        assert!(
            down <= 2,
            "{down} replicas not running at once during the update: {tasks:#?}"
        );
        let done = running(&tasks)
            .iter()
            .filter(|t| t["Image"] == bb2.as_str())
            .count();
        if done == REPLICAS as usize && running_counts(&tasks).is_some() {
            break;
        }
        assert!(
            started.elapsed() < RUN_TIMEOUT,
            "update not done: {tasks:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "update done in {:?}; {samples} samples, at most {worst} replicas down",
        started.elapsed()
    );
    assert!(worst > 0, "the sampling never saw the update happen");
    // Completed once the last replacements have run for --update-monitor
    // (5 s by default).
    eventually(Duration::from_secs(10), "update status completed", || {
        let v = n1.swarm(&["service", "inspect", "web"]).success().json();
        (v[0]["UpdateStatus"]["State"] == "completed").then_some(())
    });

    // start-first: the replacement runs before the old task stops, so no
    // replica is ever down.
    n1.swarm(&[
        "service",
        "update",
        "--detach",
        "--update-order",
        "start-first",
        "--image",
        &bb1,
        "web",
    ])
    .success();
    let started = std::time::Instant::now();
    loop {
        let tasks = service_ps(n1, "web");
        let up: std::collections::BTreeSet<u64> = running(&tasks)
            .iter()
            .filter_map(|t| t["Slot"].as_u64())
            .collect();
        assert_eq!(
            up.len(),
            REPLICAS as usize,
            "a replica down during a start-first update: {tasks:#?}"
        );
        let done = running(&tasks)
            .iter()
            .filter(|t| t["Image"] == bb1.as_str())
            .count();
        let stopping = tasks
            .iter()
            .filter(|t| !desired_running(t) && state(t) == "running")
            .count();
        if done == REPLICAS as usize && stopping == 0 {
            break;
        }
        assert!(
            started.elapsed() < RUN_TIMEOUT,
            "start-first update not done: {tasks:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("start-first update done in {:?}", started.elapsed());
}

#[test]
fn a_failing_update_rolls_back_by_itself() {
    let c = three_nodes();
    let n1 = c.node(1);
    let bb1 = c.image("bb:1");
    create_and_wait(
        n1,
        &[
            "--name",
            "web",
            "--replicas",
            "3",
            "--update-failure-action",
            "rollback",
            "--update-monitor",
            "2s",
            "--update-max-failure-ratio",
            "0",
            &bb1,
        ],
    )
    .success();

    let started = std::time::Instant::now();
    n1.swarm(&[
        "service",
        "update",
        "--detach",
        "--image",
        &c.image("bb:no-such-tag"),
        "web",
    ])
    .success();
    let inspect = eventually(RUN_TIMEOUT, "rollback completed", || {
        let v = n1.swarm(&["service", "inspect", "web"]).success().json();
        (v[0]["UpdateStatus"]["State"] == "rollback_completed").then_some(v)
    });
    eprintln!(
        "rolled back in {:?}: {}",
        started.elapsed(),
        inspect[0]["UpdateStatus"]
    );
    assert_eq!(
        inspect[0]["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"],
        bb1.as_str(),
        "{inspect}"
    );
    eventually(
        Duration::from_secs(30),
        "3 replicas of bb:1 running",
        || {
            let tasks = service_ps(n1, "web");
            let r = running(&tasks);
            (running_counts(&tasks)?.iter().sum::<usize>() == 3
                && r.iter().all(|t| t["Image"] == bb1.as_str()))
            .then_some(())
        },
    );
    let tasks = service_ps(n1, "web");
    assert!(
        tasks.iter().any(|t| state(t) == "rejected"),
        "the new image was tried: {tasks:#?}"
    );

    // Again with a command that fails at once: its task runs, then fails
    // within the monitor period.
    let first = inspect[0]["UpdateStatus"]["StartedAt"].clone();
    // Without --detach the command follows the update, sees the rollback
    // and fails as docker's does.
    let out = n1
        .swarm_timeout(
            &["service", "update", "--args", "sh -c 'exit 1'", "web"],
            RUN_TIMEOUT,
        )
        .failure();
    let status =
        n1.swarm(&["service", "inspect", "web"]).success().json()[0]["UpdateStatus"].clone();
    let tasks = n1
        .swarm(&["service", "ps", "--no-trunc", "web"])
        .success()
        .stdout;
    assert!(
        out.stderr.contains("service rolled back"),
        "{out}\nupdate status then: {status}\n{tasks}"
    );
    let inspect = eventually(RUN_TIMEOUT, "second rollback completed", || {
        let v = n1.swarm(&["service", "inspect", "web"]).success().json();
        (v[0]["UpdateStatus"]["State"] == "rollback_completed"
            && v[0]["UpdateStatus"]["StartedAt"] != first)
            .then_some(v)
    });
    let cs = &inspect[0]["Spec"]["TaskTemplate"]["ContainerSpec"];
    assert!(cs["Args"].is_null(), "args rolled back: {inspect}");
    eventually(Duration::from_secs(30), "3 replicas running again", || {
        (running_counts(&service_ps(n1, "web"))?
            .iter()
            .sum::<usize>()
            == 3)
            .then_some(())
    });
    let tasks = service_ps(n1, "web");
    assert!(
        tasks
            .iter()
            .any(|t| t["Status"]["Err"] == "task: non-zero exit (1)"),
        "the failing command was tried: {tasks:#?}"
    );
}

#[test]
fn tasks_of_a_killed_worker_run_elsewhere_within_10s() {
    let c = three_nodes();
    let n1 = c.node(1);
    create_and_wait(n1, &["--name", "web", "--replicas", "6", &c.image("bb:1")]).success();
    let n3 = node_id(n1, 3);
    let on_n3 = running(&service_ps(n1, "web"))
        .iter()
        .filter(|t| t["NodeID"] == n3.as_str())
        .count();
    assert_eq!(on_n3, 2, "spread before the kill");

    c.node(3).kill9();
    let killed = std::time::Instant::now();
    eventually(
        Duration::from_secs(10),
        "6 replicas running on nodes 1 and 2",
        || {
            let tasks = service_ps(n1, "web");
            let r = running(&tasks);
            (r.len() == 6 && r.iter().all(|t| t["NodeID"] != n3.as_str())).then_some(())
        },
    );
    eprintln!("tasks moved {:?} after the kill", killed.elapsed());
    let ls = node_ls(n1).expect("node ls");
    let down = ls.iter().find(|v| hostname_of(v) == "node-3").map(state_of);
    assert_eq!(down.as_deref(), Some("down"));

    // Its containers kept running meanwhile; when its daemon comes back
    // they are no longer assigned to it, and it stops them.
    assert_eq!(live_containers(&c, 3).len(), 2, "orphans while it is down");
    c.node(3).start();
    wait_all_ready(n1, 3);
    eventually(Duration::from_secs(30), "node-3 stops its orphans", || {
        live_containers(&c, 3).is_empty().then_some(())
    });
    let tasks = service_ps(n1, "web");
    assert_eq!(running(&tasks).len(), 6, "{tasks:#?}");
}

#[test]
fn draining_a_node_moves_its_tasks() {
    let c = three_nodes();
    let n1 = c.node(1);
    create_and_wait(n1, &["--name", "web", "--replicas", "4", &c.image("bb:1")]).success();
    let n2 = node_id(n1, 2);
    let started = std::time::Instant::now();
    n1.swarm(&["node", "update", "--availability", "drain", "node-2"])
        .success();
    eventually(
        RUN_TIMEOUT,
        "4 running, none meant to run on node-2",
        || {
            let tasks = service_ps(n1, "web");
            let on_n2 = tasks
                .iter()
                .filter(|t| desired_running(t) && t["NodeID"] == n2.as_str())
                .count();
            (on_n2 == 0 && running_counts(&tasks)? == [2, 2]).then_some(())
        },
    );
    eprintln!("drained in {:?}", started.elapsed());
    eventually(
        Duration::from_secs(30),
        "node-2's containers stopped",
        || live_containers(&c, 2).is_empty().then_some(()),
    );
}

#[test]
fn a_replicated_job_completes_once() {
    let c = three_nodes();
    let n1 = c.node(1);
    let started = std::time::Instant::now();
    let out = create_and_wait(
        n1,
        &[
            "--name",
            "job",
            "--mode",
            "replicated-job",
            "--replicas",
            "3",
            &c.image("bb:1"),
            "sh",
            "-c",
            "exit 0",
        ],
    )
    .success();
    eprintln!("job done in {:?}: {}", started.elapsed(), out.stdout);
    let complete = |tasks: &[Value]| tasks.iter().filter(|t| state(t) == "complete").count();
    let tasks = eventually(Duration::from_secs(30), "3 tasks complete", || {
        let tasks = service_ps(n1, "job");
        (complete(&tasks) == 3).then_some(tasks)
    });
    assert_eq!(tasks.len(), 3, "{tasks:#?}");
    std::thread::sleep(Duration::from_secs(3));
    let tasks = service_ps(n1, "job");
    assert_eq!(
        (tasks.len(), complete(&tasks)),
        (3, 3),
        "a completed job is not restarted: {tasks:#?}"
    );
}

#[test]
fn on_failure_restarts_wait_for_the_restart_delay() {
    let c = cluster(1, Topology::Bridge);
    form(&c, 1, 0);
    let n1 = c.node(1);
    wait_all_ready(n1, 1);
    n1.swarm(&[
        "service",
        "create",
        "--detach",
        "--name",
        "crash",
        "--restart-condition",
        "on-failure",
        "--restart-delay",
        "2s",
        &c.image("bb:1"),
        "sh",
        "-c",
        "exit 1",
    ])
    .success();
    // First failure, then watch: a restart every ~2 s, not a tight loop.
    eventually(RUN_TIMEOUT, "the first task fails", || {
        service_ps(n1, "crash")
            .iter()
            .any(|t| state(t) == "failed")
            .then_some(())
    });
    let first = std::time::Instant::now();
    let mut seen = std::collections::BTreeSet::new();
    while first.elapsed() < Duration::from_secs(7) {
        for t in service_ps(n1, "crash") {
            seen.insert(t["ID"].as_str().unwrap_or_default().to_owned());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let tasks = service_ps(n1, "crash");
    eprintln!("{} tasks seen in 7 s after the first failure", seen.len());
    // The failed task plus one restart per 2 s (plus the time to fail).
    assert!(
        (3..=5).contains(&seen.len()),
        "{} tasks in 7 s: {tasks:#?}",
        seen.len()
    );
    assert!(
        tasks
            .iter()
            .filter(|t| state(t) == "failed")
            .all(|t| t["Status"]["Err"] == "task: non-zero exit (1)"),
        "{tasks:#?}"
    );
}

#[test]
fn a_task_that_fits_no_node_stays_pending_with_dockers_reason() {
    let c = three_nodes();
    let n1 = c.node(1);
    n1.swarm(&[
        "service",
        "create",
        "--detach",
        "--name",
        "nowhere",
        "--constraint",
        "node.labels.zone==nowhere",
        &c.image("bb:1"),
    ])
    .success();
    let t = eventually(
        Duration::from_secs(10),
        "a pending task with a reason",
        || {
            service_ps(n1, "nowhere")
                .into_iter()
                .find(|t| state(t) == "pending" && t["Status"]["Err"] != "")
        },
    );
    let err = t["Status"]["Err"].as_str().unwrap_or_default();
    assert!(
        err.starts_with("no suitable node (scheduling constraints not satisfied on 3 nodes"),
        "{t}"
    );
    std::thread::sleep(Duration::from_secs(2));
    let tasks = service_ps(n1, "nowhere");
    assert_eq!(tasks.len(), 1, "{tasks:#?}");
    assert_eq!(state(&tasks[0]), "pending");
    let table = n1.swarm(&["service", "ps", "nowhere"]).success();
    assert!(
        table.stdout.contains("no suitable node"),
        "{}",
        table.stdout
    );

    // A node that gets the label takes the task.
    n1.swarm(&["node", "update", "--label-add", "zone=nowhere", "node-3"])
        .success();
    let n3 = node_id(n1, 3);
    eventually(RUN_TIMEOUT, "the task runs on node-3", || {
        let tasks = service_ps(n1, "nowhere");
        let r = running(&tasks);
        (r.len() == 1 && r[0]["NodeID"] == n3.as_str()).then_some(())
    });
}

#[test]
fn scaling_down_during_a_rolling_update_finishes_with_the_new_count() {
    let c = three_nodes();
    let n1 = c.node(1);
    let bb2 = c.image("bb:2");
    create_and_wait(
        n1,
        &[
            "--name",
            "web",
            "--replicas",
            "6",
            "--stop-grace-period",
            "1s",
            &c.image("bb:1"),
            "sh",
            "-c",
            "trap '' TERM; while true; do sleep 0.2; done",
        ],
    )
    .success();
    n1.swarm(&["service", "update", "--detach", "--image", &bb2, "web"])
        .success();
    eventually(Duration::from_secs(20), "the update under way", || {
        service_ps(n1, "web")
            .iter()
            .any(|t| t["Image"] == bb2.as_str())
            .then_some(())
    });
    n1.swarm(&["service", "scale", "--detach", "web=3"])
        .success();
    let started = std::time::Instant::now();
    eventually(
        RUN_TIMEOUT,
        "3 replicas of bb:2 and the update done",
        || {
            let v = n1.swarm(&["service", "inspect", "web"]).success().json();
            let tasks = service_ps(n1, "web");
            let r = running(&tasks);
            (v[0]["UpdateStatus"]["State"] == "completed"
                && running_counts(&tasks)?.iter().sum::<usize>() == 3
                && r.iter().all(|t| t["Image"] == bb2.as_str()))
            .then_some(())
        },
    );
    eprintln!("scaled and updated {:?} after the scale", started.elapsed());
    eventually(Duration::from_secs(30), "3 containers left", || {
        let live: usize = (1..=3).map(|i| live_containers(&c, i).len()).sum();
        (live == 3).then_some(())
    });
}

// ---------------------------------------------------------------------------
// Beyond the list: the default failure action, manual rollback, per-node
// limits, global services on drained nodes, containers killed behind the
// worker's back.

#[test]
fn a_failing_update_pauses_by_default_and_service_rollback_restores_the_spec() {
    let c = three_nodes();
    let n1 = c.node(1);
    let bb1 = c.image("bb:1");
    create_and_wait(n1, &["--name", "web", "--replicas", "3", &bb1]).success();

    let out = n1
        .swarm_timeout(
            &[
                "service",
                "update",
                "--image",
                &c.image("bb:no-such-tag"),
                "web",
            ],
            RUN_TIMEOUT,
        )
        .failure();
    assert!(out.stderr.contains("service update paused"), "{out}");
    let v = n1.swarm(&["service", "inspect", "web"]).success().json();
    assert_eq!(v[0]["UpdateStatus"]["State"], "paused", "{v}");
    let msg = v[0]["UpdateStatus"]["Message"].as_str().unwrap_or_default();
    assert!(
        msg.starts_with("update paused due to failure or early termination of task"),
        "{v}"
    );
    // Paused: one slot tried the new image, the other two still run bb:1.
    std::thread::sleep(Duration::from_secs(1));
    let tasks = service_ps(n1, "web");
    let old = running(&tasks)
        .iter()
        .filter(|t| t["Image"] == bb1.as_str())
        .count();
    assert_eq!(old, 2, "{tasks:#?}");

    let started = std::time::Instant::now();
    n1.swarm_timeout(&["service", "rollback", "web"], RUN_TIMEOUT)
        .success();
    eprintln!("rollback took {:?}", started.elapsed());
    let v = n1.swarm(&["service", "inspect", "web"]).success().json();
    assert_eq!(v[0]["UpdateStatus"]["State"], "rollback_completed", "{v}");
    assert_eq!(
        v[0]["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"],
        bb1.as_str()
    );
    let tasks = service_ps(n1, "web");
    assert_eq!(
        running_counts(&tasks).map(|c| c.iter().sum::<usize>()),
        Some(3)
    );
    assert!(running(&tasks).iter().all(|t| t["Image"] == bb1.as_str()));
}

#[test]
fn replicas_max_per_node_leaves_the_rest_pending() {
    let c = three_nodes();
    let n1 = c.node(1);
    n1.swarm(&[
        "service",
        "create",
        "--detach",
        "--name",
        "web",
        "--replicas",
        "5",
        "--replicas-max-per-node",
        "1",
        &c.image("bb:1"),
    ])
    .success();
    let tasks = eventually(RUN_TIMEOUT, "3 running, 2 pending", || {
        let tasks = service_ps(n1, "web");
        let pending = tasks.iter().filter(|t| state(t) == "pending").count();
        (running(&tasks).len() == 3 && pending == 2).then_some(tasks)
    });
    let mut nodes: Vec<&str> = running(&tasks)
        .iter()
        .filter_map(|t| t["NodeID"].as_str())
        .collect();
    nodes.sort_unstable();
    nodes.dedup();
    assert_eq!(nodes.len(), 3, "one per node: {tasks:#?}");
    let p = tasks
        .iter()
        .find(|t| state(t) == "pending")
        .expect("a pending task");
    assert_eq!(
        p["Status"]["Err"], "no suitable node (max replicas per node limit exceed)",
        "{p}"
    );
}

#[test]
fn a_drained_node_loses_its_global_task_and_gets_it_back_when_active() {
    let c = three_nodes();
    let n1 = c.node(1);
    create_and_wait(
        n1,
        &["--name", "agent", "--mode", "global", &c.image("bb:1")],
    )
    .success();
    let n2 = node_id(n1, 2);
    n1.swarm(&["node", "update", "--availability", "drain", "node-2"])
        .success();
    eventually(Duration::from_secs(30), "no global task on node-2", || {
        let tasks = service_ps(n1, "agent");
        let on_n2 = tasks
            .iter()
            .any(|t| desired_running(t) && t["NodeID"] == n2.as_str());
        (!on_n2 && running_counts(&tasks)? == [1, 1] && live_containers(&c, 2).is_empty())
            .then_some(())
    });
    n1.swarm(&["node", "update", "--availability", "active", "node-2"])
        .success();
    eventually(
        Duration::from_secs(30),
        "a global task on node-2 again",
        || {
            let tasks = service_ps(n1, "agent");
            let on_n2 = running(&tasks).iter().any(|t| t["NodeID"] == n2.as_str());
            (on_n2 && running_counts(&tasks)? == [1, 1, 1]).then_some(())
        },
    );
}

#[test]
fn a_container_killed_behind_the_workers_back_is_restarted_after_the_delay() {
    let c = cluster(1, Topology::Bridge);
    form(&c, 1, 0);
    let n1 = c.node(1);
    wait_all_ready(n1, 1);
    create_and_wait(
        n1,
        &["--name", "web", "--restart-delay", "1s", &c.image("bb:1")],
    )
    .success();
    let before = running(&service_ps(n1, "web"))[0]["ID"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let procs = std::path::Path::new(swarm_harness::cleanup::CGROUP_ROOT)
        .join("pids")
        .join(format!("{}n1", c.cgroup_prefix()))
        .join(&before)
        .join("cgroup.procs");
    let pids = std::fs::read_to_string(&procs).expect("container cgroup");
    for pid in pids.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        // SAFETY: kill(2) on a pid we just read; no memory is involved.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let killed = std::time::Instant::now();
    let tasks = eventually(Duration::from_secs(30), "a new task running", || {
        let tasks = service_ps(n1, "web");
        let r = running(&tasks);
        (r.len() == 1 && r[0]["ID"] != before.as_str()).then_some(tasks)
    });
    eprintln!("replaced {:?} after the kill", killed.elapsed());
    assert!(killed.elapsed() >= Duration::from_secs(1), "restart delay");
    let old = tasks
        .iter()
        .find(|t| t["ID"] == before.as_str())
        .expect("the killed task in the history");
    assert_eq!(state(old), "failed", "{old}");
    assert_eq!(old["Status"]["Err"], "task: non-zero exit (137)", "{old}");
}

#[test]
fn restart_max_attempts_and_condition_none_bound_restarts() {
    let c = cluster(1, Topology::Bridge);
    form(&c, 1, 0);
    let n1 = c.node(1);
    wait_all_ready(n1, 1);
    let image = c.image("bb:1");
    for (name, extra) in [
        ("twice", vec!["--restart-max-attempts", "2"]),
        ("never", vec!["--restart-condition", "none"]),
    ] {
        let mut args = vec![
            "service",
            "create",
            "--detach",
            "--name",
            name,
            "--restart-delay",
            "200ms",
        ];
        args.extend(extra);
        args.extend([image.as_str(), "sh", "-c", "exit 2"]);
        n1.swarm(&args).success();
    }
    let failed = |name: &str| {
        service_ps(n1, name)
            .iter()
            .filter(|t| state(t) == "failed")
            .count()
    };
    eventually(RUN_TIMEOUT, "3 failed tasks (1 + 2 attempts)", || {
        (failed("twice") == 3).then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    let twice = service_ps(n1, "twice");
    let never = service_ps(n1, "never");
    assert_eq!(twice.len(), 3, "{twice:#?}");
    assert_eq!((never.len(), failed("never")), (1, 1), "{never:#?}");
}

#[test]
fn force_update_runs_a_job_again() {
    let c = three_nodes();
    let n1 = c.node(1);
    create_and_wait(
        n1,
        &[
            "--name",
            "job",
            "--mode",
            "replicated-job",
            "--replicas",
            "2",
            &c.image("bb:1"),
            "sh",
            "-c",
            "exit 0",
        ],
    )
    .success();
    let complete = |tasks: &[Value]| tasks.iter().filter(|t| state(t) == "complete").count();
    eventually(Duration::from_secs(30), "2 complete", || {
        (complete(&service_ps(n1, "job")) == 2).then_some(())
    });
    n1.swarm_timeout(&["service", "update", "--force", "job"], RUN_TIMEOUT)
        .success();
    let tasks = eventually(Duration::from_secs(30), "4 complete", || {
        let t = service_ps(n1, "job");
        (complete(&t) == 4).then_some(t)
    });
    assert_eq!(tasks.len(), 4, "{tasks:#?}");
}

#[test]
fn a_global_service_rolls_out_an_update_node_by_node() {
    let c = three_nodes();
    let n1 = c.node(1);
    let bb2 = c.image("bb:2");
    create_and_wait(
        n1,
        &["--name", "agent", "--mode", "global", &c.image("bb:1")],
    )
    .success();
    n1.swarm_timeout(
        &["service", "update", "--image", &bb2, "agent"],
        RUN_TIMEOUT,
    )
    .success();
    let tasks = service_ps(n1, "agent");
    assert_eq!(running_counts(&tasks), Some(vec![1, 1, 1]), "{tasks:#?}");
    assert!(running(&tasks).iter().all(|t| t["Image"] == bb2.as_str()));
}

#[test]
fn a_rolling_update_survives_a_leader_change() {
    let c = cluster(3, Topology::Bridge);
    form(&c, 3, 0);
    let n1 = c.node(1);
    wait_all_ready(n1, 3);
    let bb2 = c.image("bb:2");
    create_and_wait(
        n1,
        &[
            "--name",
            "web",
            "--replicas",
            "6",
            "--update-delay",
            "1s",
            &c.image("bb:1"),
        ],
    )
    .success();
    n1.swarm(&["service", "update", "--detach", "--image", &bb2, "web"])
        .success();
    // Wait until the update is under way, then stop the leader.
    eventually(Duration::from_secs(20), "one replica updated", || {
        running(&service_ps(n1, "web"))
            .iter()
            .any(|t| t["Image"] == bb2.as_str())
            .then_some(())
    });
    let stopped = std::time::Instant::now();
    n1.stop();
    eprintln!("leader stopped in {:?}", stopped.elapsed());
    // Other nodes' sessions with it do not hold its shutdown.
    assert!(
        stopped.elapsed() < Duration::from_secs(5),
        "the leader took {:?} to stop",
        stopped.elapsed()
    );
    let n2 = c.node(2);
    eventually(RUN_TIMEOUT, "update completed by the new leader", || {
        let out = n2.swarm(&["service", "inspect", "web"]);
        if !out.ok() {
            return None;
        }
        let v = out.json();
        let tasks = service_ps(n2, "web");
        let new = running(&tasks)
            .iter()
            .filter(|t| t["Image"] == bb2.as_str())
            .count();
        (v[0]["UpdateStatus"]["State"] == "completed" && new == 6).then_some(())
    });
    eprintln!(
        "update completed {:?} after the leader stopped",
        stopped.elapsed()
    );
}

#[test]
fn a_worker_that_leaves_hands_its_tasks_over() {
    let c = three_nodes();
    let n1 = c.node(1);
    create_and_wait(n1, &["--name", "web", "--replicas", "6", &c.image("bb:1")]).success();
    let n3 = node_id(n1, 3);
    let started = std::time::Instant::now();
    c.node(3).swarm(&["leave"]).success();
    eventually(RUN_TIMEOUT, "6 replicas running on nodes 1 and 2", || {
        let tasks = service_ps(n1, "web");
        let r = running(&tasks);
        (running_counts(&tasks)?.iter().sum::<usize>() == 6
            && r.iter().all(|t| t["NodeID"] != n3.as_str()))
        .then_some(())
    });
    eprintln!("moved {:?} after the leave", started.elapsed());
    assert!(
        live_containers(&c, 3).is_empty(),
        "leave removes its containers"
    );
}
