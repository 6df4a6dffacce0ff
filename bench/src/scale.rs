//! `scale`: how a 3-manager swarm copes with many nodes and tasks, using
//! simulated nodes (`swarm simulate`: real joins, certificates, sessions
//! and heartbeats; tasks run on the fake executor).
//!
//! Measures, on one swarm, in this order:
//! - join time: simulators (up to [`NODES_PER_SIMULATOR`] nodes per
//!   process, each in its own client namespace) start, until the leader
//!   counts every node ready;
//! - heartbeat cost: the leader daemon's CPU time over a quiet window with
//!   all nodes connected, against the same window before any node joined
//!   (the baseline, same run);
//! - placement: `service create --replicas T` until the leader counts T
//!   tasks running; baseline: the scheduler's decision alone, in process,
//!   for the same nodes and tasks (what the pipeline adds on top of it);
//! - manager memory: the leader's RSS growth from before the service to
//!   when its tasks run, per 10,000 tasks;
//! - removal: `service rm` until no task is left.
//!
//! Owns nothing outside its cluster; never touches the root namespace.
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use serde::Serialize;
use serde_json::json;
use swarm_harness::{Cluster, Node, Process, Topology};

use crate::report::{Better, Report, Row, RunInfo};
use crate::stop;

/// Nodes one `swarm simulate` process holds.
pub const NODES_PER_SIMULATOR: usize = 2500;

#[derive(Clone, Debug)]
pub struct ScaleOpts {
    /// Node counts to reach, in increasing order (simulators are added to
    /// reach each).
    pub nodes: Vec<usize>,
    pub tasks: usize,
    /// Length of each CPU window.
    pub window: Duration,
}

impl ScaleOpts {
    /// 1,000 then 10,000 nodes, 100,000 tasks, 10 s windows; `--quick`:
    /// 200 nodes, 5,000 tasks, 3 s.
    #[must_use]
    pub fn new(
        quick: bool,
        nodes: Option<Vec<usize>>,
        tasks: Option<usize>,
        window_s: Option<f64>,
    ) -> Self {
        let (n, t, w) = if quick {
            (vec![200], 5_000, 3.0)
        } else {
            (vec![1_000, 10_000], 100_000, 10.0)
        };
        let mut nodes = nodes.unwrap_or(n);
        nodes.sort_unstable();
        nodes.dedup();
        ScaleOpts {
            nodes,
            tasks: tasks.unwrap_or(t),
            window: Duration::from_secs_f64(window_s.unwrap_or(w)),
        }
    }
}

#[derive(Debug, Default, Serialize)]
struct JoinStep {
    nodes: usize,
    join_s: Option<f64>,
    heartbeat_cpu_cores: Option<f64>,
}

#[derive(Debug, Default, Serialize)]
struct Results {
    /// Raft elections (term increases) from the first join to the end.
    elections: Option<u64>,
    /// Which manager (1-3) led at each step, in order.
    leaders: Vec<(String, Option<usize>)>,
    idle_cpu_cores: Option<f64>,
    joins: Vec<JoinStep>,
    placement_s: Option<f64>,
    decision_only_s: Option<f64>,
    rss_before_bytes: Option<u64>,
    rss_after_bytes: Option<u64>,
    removal_s: Option<f64>,
    /// Seconds from `service create` until every task existed and was
    /// assigned a node (the leader's task gauges, polled); until every
    /// task ran is `placement_s`.
    stages: Stages,
    /// CPU seconds each manager (1-3) and all simulators together spent
    /// during placement.
    placement_cpu: PlacementCpu,
    /// The most nodes the leader counted down at once during placement.
    nodes_down_max: Option<u64>,
    /// Simulated nodes' sessions that failed to open or ended other than by
    /// shutdown (heartbeat timeouts, streams ended), over the whole run:
    /// the agents' "session lost" warnings.
    session_failures: Option<u64>,
    /// The leader killed with every node and task in place.
    failover: Failover,
}

/// `kill -9` of the leader while every simulated node holds a session and
/// every task runs: how long until the swarm has a leader again, until
/// every node is back in session with it, and what the workload lost.
#[derive(Debug, Default, Serialize)]
struct Failover {
    /// Which manager (1-3) was killed.
    killed: Option<usize>,
    /// Sessions the old leader held before the kill.
    sessions_before: Option<u64>,
    /// From the kill until one of the other two managers leads.
    new_leader_s: Option<f64>,
    /// From the kill until the new leader holds a session with every node
    /// the old one had, bar the killed manager's own.
    sessions_back_s: Option<f64>,
    /// The fewest tasks the new leader counted running meanwhile (tasks
    /// stop counting as running when their node is marked down).
    tasks_running_min: Option<u64>,
    /// The most nodes the new leader counted down at once meanwhile (the
    /// killed manager included, once it is marked down).
    nodes_down_max: Option<u64>,
    /// "session lost" warnings the simulated nodes logged meanwhile.
    session_failures: Option<u64>,
    /// From the killed manager's restart until the leader holds its
    /// session again (it reloads the store from its snapshot and log).
    restart_s: Option<f64>,
    /// Elections from the kill until every session was back (1 expected).
    elections: Option<u64>,
    /// Raft log entries from the kill until every session was back: what
    /// the reconnecting nodes made the managers write (their statuses,
    /// resent to the new leader, change nothing and should write nothing).
    raft_entries: Option<u64>,
}

#[derive(Debug, Default, Serialize)]
struct Stages {
    created_s: Option<f64>,
    assigned_s: Option<f64>,
}

#[derive(Debug, Default, Serialize)]
struct PlacementCpu {
    managers_s: [Option<f64>; 3],
    simulators_s: Option<f64>,
}

/// The leader daemon's user + system CPU time.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold
    // spaces.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100);
    #[allow(clippy::cast_precision_loss)]
    Some(ticks / hz as f64)
}

fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// CPU cores the process used on average over `window`.
fn cpu_over(pid: u32, window: Duration) -> Option<f64> {
    let before = cpu_seconds(pid)?;
    std::thread::sleep(window);
    Some((cpu_seconds(pid)? - before) / window.as_secs_f64())
}

/// Node `n`'s metrics, in Prometheus text format.
fn scrape(n: &Node) -> Option<String> {
    let addr: SocketAddr = "127.0.0.1:9323".parse().ok()?;
    n.in_netns(|| swarm_harness::http::get(addr, "/metrics", Duration::from_secs(10)))
        .ok()
        .map(|r| r.body)
}

/// One unlabelled series in scraped `metrics`.
fn series_in(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|v| v.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

/// One unlabelled series from node `n`'s metrics.
fn metric_value(n: &Node, series: &str) -> Option<f64> {
    series_in(&scrape(n)?, series)
}

/// One unlabelled series from node `n`'s metrics, as a count.
fn metric_count(n: &Node, series: &str) -> Option<u64> {
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    metric_value(n, series).map(|v| v as u64)
}

/// The manager (1-3) that says it leads, if exactly one does.
fn leader_of(c: &Cluster) -> Option<usize> {
    let leading: Vec<usize> = (1..=3)
        .filter(|&i| metric_value(c.node(i), "swarm_manager_leader") == Some(1.0))
        .collect();
    (leading.len() == 1).then(|| leading[0])
}

/// The highest Raft term any manager reports.
fn term_of(c: &Cluster) -> Option<u64> {
    (1..=3)
        .filter_map(|i| metric_count(c.node(i), "swarm_raft_term"))
        .max()
}

/// CPU cores the leader used over `window`, if one manager led throughout.
fn leader_cpu_over(c: &Cluster, window: Duration) -> Option<f64> {
    let leader = leader_of(c)?;
    let pid = c.node(leader).pid()?;
    let cpu = cpu_over(pid, window)?;
    (leader_of(c) == Some(leader)).then_some(cpu)
}

/// One sample of the leader's `swarm_manager_*{state=...}` gauges.
pub(crate) fn manager_gauge(n: &Node, family: &str, state: &str) -> Option<u64> {
    states_in(&scrape(n)?, family).get(state).copied()
}

/// The sum of the leader's `swarm_manager_{family}` gauge over all states.
pub(crate) fn manager_total(n: &Node, family: &str) -> Option<u64> {
    Some(states_in(&scrape(n)?, family).values().sum())
}

/// Every state of the `swarm_manager_{family}` gauge in scraped `metrics`.
fn states_in(metrics: &str, family: &str) -> std::collections::HashMap<String, u64> {
    let prefix = format!("swarm_manager_{family}{{state=\"");
    metrics
        .lines()
        .filter_map(|l| {
            let (state, v) = l.strip_prefix(prefix.as_str())?.split_once("\"} ")?;
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let v = v.trim().parse::<f64>().ok()? as u64;
            Some((state.to_string(), v))
        })
        .collect()
}

/// Polls until `done` (checked every 100 ms) or `timeout`; returns the
/// seconds from `since`.
pub(crate) fn time_until(
    since: Instant,
    timeout: Duration,
    what: &str,
    mut done: impl FnMut() -> bool,
) -> anyhow::Result<f64> {
    loop {
        stop::check()?;
        if done() {
            return Ok(since.elapsed().as_secs_f64());
        }
        if since.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub(crate) fn swarm_ok(n: &Node, args: &[&str]) -> anyhow::Result<String> {
    let out = n.swarm_timeout(args, Duration::from_secs(120));
    if !out.ok() {
        bail!("{out}");
    }
    Ok(out.stdout)
}

pub fn run(opts: &ScaleOpts, quick: bool) -> anyhow::Result<Report> {
    let started = Instant::now();
    let mut info = RunInfo::begin(quick);
    let mut c = Cluster::builder()
        .nodes(3)
        .topology(Topology::Bridge)
        .daemon_args(|i| vec!["--hostname".to_string(), format!("node-{i}")])
        .start();
    let mut res = Results::default();
    let outcome = measure(&mut c, opts, &mut res);
    if outcome.is_err() && !stop::requested() {
        c.dump_logs();
    }
    outcome?;
    info.end(started);
    Ok(report(opts, &res, info))
}

fn measure(c: &mut Cluster, opts: &ScaleOpts, res: &mut Results) -> anyhow::Result<()> {
    let n1 = c.node(1);
    let addr = format!("{}:2377", n1.addr());
    swarm_ok(n1, &["init", "--advertise-addr", &n1.addr().to_string()])?;
    let token = swarm_ok(n1, &["join-token", "-q", "worker"])?
        .trim()
        .to_string();
    let mtoken = swarm_ok(n1, &["join-token", "-q", "manager"])?
        .trim()
        .to_string();
    for i in 2..=3 {
        let n = c.node(i);
        swarm_ok(
            n,
            &[
                "join",
                "--token",
                &mtoken,
                "--advertise-addr",
                &n.addr().to_string(),
                &addr,
            ],
        )?;
    }
    time_until(
        Instant::now(),
        Duration::from_secs(30),
        "3 managers ready",
        || manager_gauge(c.node(1), "nodes", "ready") == Some(3),
    )?;
    let term_start = term_of(c);
    res.leaders.push(("3 managers up".into(), leader_of(c)));
    res.idle_cpu_cores = leader_cpu_over(c, opts.window);
    println!(
        "scale: 3 managers up; leader idle CPU {:.3} cores",
        res.idle_cpu_cores.unwrap_or(f64::NAN)
    );

    let mut simulators: Vec<Process> = Vec::new();
    let mut sim_logs = Vec::new();
    let mut have = 0;
    for &target in &opts.nodes {
        let t0 = Instant::now();
        while have < target {
            let count = (target - have).min(NODES_PER_SIMULATOR);
            let k = c.add_client_host().index();
            let host = c.host(k);
            let mut cmd = host.ns().command(swarm_harness::paths::swarm_bin());
            cmd.args([
                "simulate",
                "--token",
                &token,
                "--nodes",
                &count.to_string(),
                "--hostname-prefix",
                &format!("sim{k}"),
                &addr,
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(sim_log(c, k))?);
            sim_logs.push(sim_log(c, k));
            simulators.push(Process::spawn(format!("simulate-{k}"), cmd)?);
            have += count;
        }
        let want = u64::try_from(target + 3)?;
        let timeout = Duration::from_secs(60) + Duration::from_millis(30 * target as u64);
        let join_s = time_until(t0, timeout, "simulated nodes ready", || {
            manager_gauge(c.node(leader_of(c).unwrap_or(1)), "nodes", "ready") == Some(want)
        })?;
        res.leaders
            .push((format!("{target} nodes ready"), leader_of(c)));
        println!("scale: {target} simulated nodes ready after {join_s:.2} s");
        // Let the join burst's proposals settle before measuring.
        std::thread::sleep(Duration::from_secs(2));
        let cpu = leader_cpu_over(c, opts.window);
        println!(
            "scale: leader CPU with {target} nodes: {:.3} cores",
            cpu.unwrap_or(f64::NAN)
        );
        res.joins.push(JoinStep {
            nodes: target,
            join_s: Some(join_s),
            heartbeat_cpu_cores: cpu,
        });
    }

    let nodes = opts.nodes.last().copied().unwrap_or(0);
    res.decision_only_s = Some(decision_only(nodes, opts.tasks));
    let leader = leader_of(c).context("no single leader before placement")?;
    let leader_pid = c
        .node(leader)
        .pid()
        .context("the leader's daemon is not running")?;
    res.rss_before_bytes = rss_bytes(leader_pid);
    let t0 = Instant::now();
    let n1 = c.node(leader);
    swarm_ok(
        n1,
        &[
            "service",
            "create",
            "--detach",
            "--name",
            "scale",
            "--replicas",
            &opts.tasks.to_string(),
            "--constraint",
            "node.role==worker",
            "busybox",
        ],
    )?;
    let want = u64::try_from(opts.tasks)?;
    let timeout = Duration::from_secs(120) + Duration::from_millis(opts.tasks as u64);
    let pids: Vec<Option<u32>> = (1..=3).map(|i| c.node(i).pid()).collect();
    let sim_pids: Vec<u32> = simulators.iter().map(Process::pid).collect();
    let cpu_before: Vec<Option<f64>> = pids.iter().map(|p| p.and_then(cpu_seconds)).collect();
    let sims_before: Option<f64> = sim_pids.iter().map(|&p| cpu_seconds(p)).sum();
    let mut down_max = None;
    let placement = time_until(t0, timeout, "every task running", || {
        let Some(metrics) = scrape(c.node(leader_of(c).unwrap_or(leader))) else {
            return false;
        };
        let states = states_in(&metrics, "tasks");
        let at_least = |floor: &str| -> u64 {
            let from = TASK_STATES.iter().position(|s| *s == floor).unwrap_or(0);
            TASK_STATES[from..]
                .iter()
                .filter_map(|s| states.get(*s))
                .sum()
        };
        let now = Some(t0.elapsed().as_secs_f64());
        let stages = &mut res.stages;
        if stages.created_s.is_none() && at_least("new") >= want {
            stages.created_s = now;
        }
        if stages.assigned_s.is_none() && at_least("assigned") >= want {
            stages.assigned_s = now;
        }
        if let Some(&d) = states_in(&metrics, "nodes").get("down") {
            down_max = Some(down_max.map_or(d, |m: u64| m.max(d)));
        }
        states.get("running").copied() == Some(want)
    })?;
    res.placement_s = Some(placement);
    res.nodes_down_max = down_max;
    for (i, (p, b)) in pids.iter().zip(&cpu_before).enumerate() {
        res.placement_cpu.managers_s[i] = p.and_then(cpu_seconds).zip(*b).map(|(a, b)| a - b);
    }
    res.placement_cpu.simulators_s = sim_pids
        .iter()
        .map(|&p| cpu_seconds(p))
        .sum::<Option<f64>>()
        .zip(sims_before)
        .map(|(a, b)| a - b);
    println!(
        "scale: stages (s): created {:?}, assigned {:?}, running {placement:.2}; most nodes down: {:?}",
        res.stages.created_s, res.stages.assigned_s, res.nodes_down_max
    );
    println!(
        "scale: CPU s during placement: managers {:?} (leader {leader}), simulators {:?}",
        res.placement_cpu.managers_s, res.placement_cpu.simulators_s
    );
    // RSS growth means something only if the same manager still leads.
    res.rss_after_bytes = rss_bytes(leader_pid).filter(|_| leader_of(c) == Some(leader));
    res.leaders.push(("tasks running".into(), leader_of(c)));
    println!("scale: {} tasks running after {placement:.2} s", opts.tasks);

    let term_before_kill = term_of(c);
    let leader = failover(c, &sim_logs, want, &mut res.failover)?;
    res.leaders
        .push(("after the failover".into(), Some(leader)));
    let term_after_failover = term_of(c);

    let t0 = Instant::now();
    swarm_ok(c.node(leader), &["service", "rm", "scale"])?;
    res.removal_s = Some(time_until(t0, timeout, "every task removed", || {
        // A manager that does not answer has not shown the removal.
        manager_gauge(c.node(leader_of(c).unwrap_or(leader)), "tasks", "running") == Some(0)
    })?);
    res.leaders.push(("tasks removed".into(), leader_of(c)));
    // The failover's own election is reported with it.
    res.elections = term_start
        .zip(term_before_kill)
        .zip(term_after_failover.zip(term_of(c)))
        .map(|((a, b), (c2, d))| b.saturating_sub(a) + d.saturating_sub(c2));
    println!(
        "scale: Raft elections during the run: {}; leaders: {:?}",
        res.elections
            .map_or_else(|| "unknown".into(), |e| e.to_string()),
        res.leaders
    );
    for mut s in simulators {
        s.terminate(Duration::from_secs(10));
    }
    res.session_failures = session_failures(&sim_logs);
    println!(
        "scale: simulated session failures: {:?}",
        res.session_failures
    );
    Ok(())
}

/// "session lost" warnings in the simulators' logs so far.
fn session_failures(sim_logs: &[std::path::PathBuf]) -> Option<u64> {
    sim_logs
        .iter()
        .map(|p| {
            std::fs::read_to_string(p)
                .ok()
                .map(|l| l.matches("session lost").count() as u64)
        })
        .sum()
}

/// Kills the leader (every task running, `want` of them), measures into
/// `f` until every node is back in session with a new leader, restarts
/// the killed manager and waits for its session too. Returns the new
/// leader.
fn failover(
    c: &Cluster,
    sim_logs: &[std::path::PathBuf],
    want: u64,
    f: &mut Failover,
) -> anyhow::Result<usize> {
    let old = leader_of(c).context("no single leader before the failover")?;
    const SESSIONS: &str = "swarm_dispatcher_sessions";
    let sessions = |i: usize| metric_count(c.node(i), SESSIONS);
    let before = sessions(old).context("the leader reports no session count")?;
    f.killed = Some(old);
    f.sessions_before = Some(before);
    let failures_before = session_failures(sim_logs);
    let term_before = term_of(c);
    let log_index = |i: usize| metric_count(c.node(i), "swarm_raft_last_log_index");
    let index_before = log_index(old);
    // Every node but the killed manager's own comes back.
    let expected = before.saturating_sub(1);
    let timeout = Duration::from_secs(60) + Duration::from_millis(10 * before);

    c.node(old).kill9();
    let t0 = Instant::now();
    let mut leader = None;
    let mut running_min: Option<u64> = None;
    let mut down_max: Option<u64> = None;
    f.sessions_back_s = Some(time_until(
        t0,
        timeout,
        "every session back after the failover",
        || {
            let Some(l) = leader_of(c).filter(|&l| l != old) else {
                return false;
            };
            if leader.is_none() {
                leader = Some(l);
                f.new_leader_s = Some(t0.elapsed().as_secs_f64());
            }
            let Some(metrics) = scrape(c.node(l)) else {
                return false;
            };
            let states = states_in(&metrics, "tasks");
            let running = states.get("running").copied().unwrap_or(0);
            running_min = Some(running_min.map_or(running, |m| m.min(running)));
            if let Some(&d) = states_in(&metrics, "nodes").get("down") {
                down_max = Some(down_max.map_or(d, |m| m.max(d)));
            }
            // From the same scrape: one per poll is load enough on a leader
            // taking 10,000 sessions back.
            series_in(&metrics, SESSIONS).is_some_and(|s| s >= expected as f64) && running == want
        },
    )?);
    let leader = leader.context("the failover ended with no leader")?;
    f.tasks_running_min = running_min;
    f.nodes_down_max = down_max;
    f.session_failures = session_failures(sim_logs)
        .zip(failures_before)
        .map(|(a, b)| a.saturating_sub(b));
    f.elections = term_before
        .zip(term_of(c))
        .map(|(a, b)| b.saturating_sub(a));
    f.raft_entries = index_before
        .zip(log_index(leader))
        .map(|(a, b)| b.saturating_sub(a));
    println!(
        "scale: failover: node-{old} killed; node-{leader} leads after {:.2} s; {expected} sessions back after {:.2} s; \
         fewest tasks running {:?}, most nodes down {:?}, session failures {:?}, Raft entries {:?}",
        f.new_leader_s.unwrap_or(f64::NAN),
        f.sessions_back_s.unwrap_or(f64::NAN),
        f.tasks_running_min,
        f.nodes_down_max,
        f.session_failures,
        f.raft_entries,
    );

    let t0 = Instant::now();
    c.node(old).start();
    f.restart_s = Some(time_until(
        t0,
        timeout,
        "the killed manager back in session",
        || sessions(leader).is_some_and(|s| s >= before),
    )?);
    println!(
        "scale: failover: node-{old} restarted and back in session after {:.2} s",
        f.restart_s.unwrap_or(f64::NAN)
    );
    Ok(leader)
}

/// A row of something that should not happen, counted.
fn count_row(metric: &str, n: Option<u64>) -> Row {
    #[allow(clippy::cast_precision_loss)]
    Row::new(metric, "count", n.map(|n| n as f64), None, Better::Lower)
}

/// Task states in the order tasks move through them, as the
/// `swarm_manager_tasks` gauge labels them.
const TASK_STATES: &[&str] = &[
    "new",
    "pending",
    "assigned",
    "accepted",
    "preparing",
    "ready",
    "starting",
    "running",
    "complete",
    "shutdown",
    "failed",
    "rejected",
    "remove",
    "orphaned",
];

/// Where simulator `k` writes its log (warnings: lost sessions).
fn sim_log(c: &Cluster, k: usize) -> std::path::PathBuf {
    c.dir().join(format!("simulate-{k}.log"))
}

/// The scheduler's decision for `tasks` pending tasks on `nodes` nodes,
/// in process: the floor under the end-to-end placement time.
fn decision_only(nodes: usize, tasks: usize) -> f64 {
    use swarm::scheduler::{FailureHistory, NodeSet, schedule};
    use swarm_proto::v1 as pb;
    let node_objs: Vec<pb::Node> = (0..nodes)
        .map(|i| pb::Node {
            meta: Some(pb::Meta {
                id: format!("node{i}"),
                ..Default::default()
            }),
            description: Some(pb::NodeDescription {
                hostname: format!("sim-{i}"),
                resources: Some(pb::Resources {
                    nano_cpus: 8_000_000_000,
                    memory_bytes: 32 << 30,
                }),
                ..Default::default()
            }),
            status: Some(pb::NodeStatus {
                state: pb::NodeState::Ready as i32,
                ..Default::default()
            }),
            spec: Some(pb::NodeSpec {
                availability: pb::NodeAvailability::Active as i32,
                desired_role: pb::NodeRole::Worker as i32,
                ..Default::default()
            }),
            role: pb::NodeRole::Worker as i32,
            ..Default::default()
        })
        .collect();
    let pending: Vec<pb::Task> = (0..tasks)
        .map(|i| pb::Task {
            meta: Some(pb::Meta {
                id: format!("task{i}"),
                ..Default::default()
            }),
            service_id: "svc".into(),
            slot: i as u64 + 1,
            status: Some(pb::TaskStatus {
                state: pb::TaskState::Pending as i32,
                ..Default::default()
            }),
            desired_state: pb::TaskState::Running as i32,
            spec: Some(pb::TaskSpec::default()),
            ..Default::default()
        })
        .collect();
    let set = NodeSet::new(
        node_objs.into_iter().map(std::sync::Arc::new),
        std::iter::empty::<pb::Task>(),
    );
    let t0 = Instant::now();
    let d = schedule(&set, &pending, &FailureHistory::new(), SystemTime::now());
    let took = t0.elapsed().as_secs_f64();
    if d.assigned.len() != tasks {
        eprintln!(
            "scale: the in-process scheduler placed {} of {tasks} tasks",
            d.assigned.len()
        );
    }
    took
}

#[allow(clippy::cast_precision_loss)]
fn report(opts: &ScaleOpts, r: &Results, run: RunInfo) -> Report {
    let mut rows = Vec::new();
    for j in &r.joins {
        rows.push(Row::new(
            format!("join {} nodes", j.nodes),
            "s",
            j.join_s,
            None,
            Better::Lower,
        ));
        rows.push(Row::new(
            format!("leader CPU, {} nodes heartbeating", j.nodes),
            "cores",
            j.heartbeat_cpu_cores,
            r.idle_cpu_cores,
            Better::Lower,
        ));
        let per_1000 = j
            .heartbeat_cpu_cores
            .zip(r.idle_cpu_cores)
            .map(|(c, idle)| (c - idle).max(0.0) / (j.nodes as f64 / 1000.0));
        rows.push(Row::new(
            format!("heartbeat CPU per 1,000 nodes ({} nodes)", j.nodes),
            "cores",
            per_1000,
            None,
            Better::Lower,
        ));
    }
    let tasks = opts.tasks as f64;
    rows.push(Row::new(
        format!("place + run {} tasks", opts.tasks),
        "tasks/s",
        r.placement_s.map(|s| tasks / s),
        r.decision_only_s.map(|s| tasks / s),
        Better::Higher,
    ));
    rows.push(Row::new(
        format!("place + run {} tasks", opts.tasks),
        "s",
        r.placement_s,
        r.decision_only_s,
        Better::Lower,
    ));
    for (what, at) in [
        ("created", r.stages.created_s),
        ("assigned a node", r.stages.assigned_s),
    ] {
        rows.push(Row::new(
            format!("placement: every task {what} after"),
            "s",
            at,
            None,
            Better::Lower,
        ));
    }
    let leader = r
        .leaders
        .iter()
        .find(|(s, _)| s == "tasks running")
        .and_then(|l| l.1);
    let cpu = &r.placement_cpu;
    let leader_cpu = leader.and_then(|l| cpu.managers_s.get(l.checked_sub(1)?).copied().flatten());
    let followers_cpu: Option<f64> = leader.and_then(|l| {
        (1..=3)
            .filter(|&i| i != l)
            .map(|i| cpu.managers_s[i - 1])
            .sum()
    });
    for (who, v) in [
        ("leader", leader_cpu),
        ("both followers", followers_cpu),
        ("simulators", cpu.simulators_s),
    ] {
        rows.push(Row::new(
            format!("placement CPU: {who}, per 1,000 tasks"),
            "ms",
            v.map(|v| v * 1000.0 / (tasks / 1000.0)),
            None,
            Better::Lower,
        ));
    }
    rows.push(count_row(
        "placement: most nodes marked down at once",
        r.nodes_down_max,
    ));
    let per_10k = r
        .rss_before_bytes
        .zip(r.rss_after_bytes)
        .map(|(b, a)| a.saturating_sub(b) as f64 / (1 << 20) as f64 / (tasks / 10_000.0));
    rows.push(Row::new(
        "leader memory per 10,000 tasks",
        "MiB",
        per_10k,
        None,
        Better::Lower,
    ));
    let f = &r.failover;
    for (what, v) in [
        ("failover: a new leader after", f.new_leader_s),
        (
            "failover: every node back in session after",
            f.sessions_back_s,
        ),
        (
            "failover: killed manager back in session after",
            f.restart_s,
        ),
    ] {
        rows.push(Row::new(what, "s", v, None, Better::Lower));
    }
    rows.push(count_row(
        "failover: tasks that stopped counting as running",
        f.tasks_running_min
            .map(|m| (opts.tasks as u64).saturating_sub(m)),
    ));
    rows.push(count_row(
        "failover: most nodes marked down at once",
        f.nodes_down_max,
    ));
    rows.push(count_row(
        "failover: simulated session failures",
        f.session_failures,
    ));
    rows.push(count_row("failover: elections", f.elections));
    rows.push(count_row(
        "failover: Raft entries until every session was back",
        f.raft_entries,
    ));
    rows.push(Row::new(
        format!("remove {} tasks", opts.tasks),
        "s",
        r.removal_s,
        None,
        Better::Lower,
    ));
    rows.push(count_row(
        "Raft elections during the run, the failover's apart",
        r.elections,
    ));
    rows.push(count_row(
        "simulated session failures (lost, or failed to open)",
        r.session_failures,
    ));
    let notes = vec![
        format!(
            "the leader is found through swarm_manager_leader on every manager at each step \
             (which manager led: {:?}); a CPU or memory figure is left out when leadership \
             moved during its window",
            r.leaders
        ),
        format!(
            "3 managers (real daemons in network namespaces on one bridge) and simulated workers \
             (`swarm simulate`, up to {NODES_PER_SIMULATOR} per process, each process in its own \
             client namespace) on this one machine: the simulators' own CPU competes with the \
             managers'"
        ),
        "heartbeat rows: the leader daemon's CPU (utime+stime from /proc) over a quiet window; \
         baseline = the same leader before any simulated node joined"
            .into(),
        "placement rows: `service create --detach` until the leader's \
         swarm_manager_tasks{state=\"running\"} equals the replicas (orchestrator, scheduler, \
         Raft, dispatch to the agents, fake executor, status reports back through Raft); \
         baseline = the scheduler's decision alone in this process, no I/O"
            .into(),
        "failover rows: `kill -9` of the leader with every node in session and every task \
         running; sessions are the new leader's swarm_dispatcher_sessions (every node's but the \
         killed manager's); then the killed manager is restarted, and the removal runs after \
         it is back in session. Nodes marked down include the killed manager once its grace \
         has passed"
            .into(),
        "targets (issue 8): placement >= 10,000 tasks/s on 1,000 nodes; 10,000 nodes with \
         heartbeats under 25% of one core"
            .into(),
    ];
    Report {
        name: "scale".into(),
        title: "simulated nodes: joins, heartbeats, placement, memory".into(),
        candidate: "3-manager swarm with simulated workers".into(),
        baseline: "idle leader (CPU) / in-process scheduler decision (placement)".into(),
        rows,
        notes,
        run,
        details: serde_json::to_value(r).unwrap_or_else(|e| json!({ "error": e.to_string() })),
    }
}
