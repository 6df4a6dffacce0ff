//! `failover`: how long a 3-manager swarm refuses writes after its leader
//! dies. One trial: `kill -9` the leader's daemon, then from another
//! manager run `swarm node update --label-add` (the CLI, as a user would)
//! every ~50 ms until one is accepted; the time from the kill to that
//! accepted write is the sample. The killed daemon is then restarted and
//! the swarm left to settle (all nodes ready, every manager reachable, all
//! agreeing on the leader) before the next trial kills whoever leads then.
//!
//! Candidate: swarm's default Raft timing. Baseline: the same daemons with
//! docker's timing, set through the hidden `--raft-heartbeat` and
//! `--raft-election-timeout` flags. Each series gets its own cluster of
//! daemons in network namespaces (the test harness), torn down at the end.
//!
//! Owns nothing outside its clusters; never touches the root namespace.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use serde_json::{Value, json};
use swarm::raft::RaftSettings;
use swarm_harness::{Cluster, CmdOutput, Node, Topology};

use crate::report::{Better, Report, Row, RunInfo};
use crate::stats::Summary;
use crate::stop;

/// How often a write is retried after the kill (attempt starts are this far
/// apart unless an attempt itself takes longer).
const RETRY_EVERY: Duration = Duration::from_millis(50);
/// Deadline of one CLI call.
const CLI_TIMEOUT: Duration = Duration::from_secs(30);
/// Writes timed on the healthy swarm before the trials, to show what one
/// CLI write costs when nothing is failing (the floor under every sample).
const HEALTHY_WRITES: usize = 5;

#[derive(Clone, Debug)]
pub struct FailoverOpts {
    pub trials: usize,
    pub baseline_trials: usize,
}

impl FailoverOpts {
    /// 10 trials each; `--quick`: 3 for swarm's timing, 1 for docker's
    /// (each of those takes tens of seconds).
    pub fn new(quick: bool, trials: Option<usize>, baseline_trials: Option<usize>) -> Self {
        FailoverOpts {
            trials: trials.unwrap_or(if quick { 3 } else { 10 }),
            baseline_trials: baseline_trials.unwrap_or(if quick { 1 } else { 10 }),
        }
    }
}

/// One Raft timing under test.
#[derive(Clone, Debug, Serialize)]
struct Timing {
    label: String,
    heartbeat_ms: u128,
    election_timeout_min_ms: u128,
    election_timeout_max_ms: u128,
    /// Extra `swarm daemon` flags that select it.
    daemon_flags: Vec<String>,
}

impl Timing {
    fn describe(&self, trials: usize) -> String {
        format!(
            "{}: heartbeat {} ms, election timeout {}-{} ms; {trials} trial(s)",
            self.label,
            self.heartbeat_ms,
            self.election_timeout_min_ms,
            self.election_timeout_max_ms
        )
    }

    fn election_max(&self) -> Duration {
        Duration::from_millis(u64::try_from(self.election_timeout_max_ms).unwrap_or(u64::MAX))
    }

    fn heartbeat(&self) -> Duration {
        Duration::from_millis(u64::try_from(self.heartbeat_ms).unwrap_or(u64::MAX))
    }
}

/// swarm as shipped: no flags, so the daemon's own defaults are measured.
fn swarm_defaults() -> Timing {
    let d = RaftSettings::default();
    Timing {
        label: "swarm defaults".into(),
        heartbeat_ms: d.heartbeat.as_millis(),
        election_timeout_min_ms: d.election_timeout_min.as_millis(),
        election_timeout_max_ms: d.election_timeout_max.as_millis(),
        daemon_flags: Vec::new(),
    }
}

/// Docker's timing: swarmkit ticks Raft once a second with HeartbeatTick 1
/// and ElectionTick 10, and etcd's raft randomizes each election timeout
/// in [ElectionTick, 2*ElectionTick - 1] ticks: 10-19 s, i.e. 10-20 s here.
fn docker_equivalent() -> Timing {
    Timing {
        label: "docker-equivalent timing".into(),
        heartbeat_ms: 1000,
        election_timeout_min_ms: 10_000,
        election_timeout_max_ms: 20_000,
        daemon_flags: vec![
            "--raft-heartbeat".into(),
            "1s".into(),
            "--raft-election-timeout".into(),
            "10s-20s".into(),
        ],
    }
}

#[derive(Debug, Serialize)]
struct Trial {
    /// Which node was leader and killed, and which one wrote.
    killed: usize,
    writer: usize,
    /// Who led after the accepted write (from the writer's view).
    new_leader: Option<usize>,
    /// Kill to accepted write, seconds; `None` if no write was accepted in
    /// time.
    failover_s: Option<f64>,
    /// Write attempts, the accepted one included.
    attempts: usize,
    /// How long the accepted attempt itself took (it may have been waiting
    /// for the election).
    accepted_attempt_s: Option<f64>,
    /// The last refusal, to show why writes failed meanwhile.
    last_error: Option<String>,
}

#[derive(Debug, Serialize)]
struct Series {
    timing: Timing,
    trials: Vec<Trial>,
    /// Seconds per CLI write on the healthy swarm.
    healthy_write_s: Vec<f64>,
    failover: Option<Summary>,
    healthy_write: Option<Summary>,
}

impl Series {
    fn samples(&self) -> Vec<f64> {
        self.trials.iter().filter_map(|t| t.failover_s).collect()
    }

    fn failed(&self) -> usize {
        self.trials
            .iter()
            .filter(|t| t.failover_s.is_none())
            .count()
    }
}

/// Picks one statistic out of a summary.
type Stat = fn(&Summary) -> f64;

pub fn run(opts: &FailoverOpts, quick: bool) -> anyhow::Result<Report> {
    let started = Instant::now();
    let mut info = RunInfo::begin(quick);
    let ours = swarm_defaults();
    let docker = docker_equivalent();
    println!("failover: {}", ours.describe(opts.trials));
    let cand = run_series(&ours, opts.trials)?;
    println!("failover: {}", docker.describe(opts.baseline_trials));
    let base = run_series(&docker, opts.baseline_trials)?;
    info.end(started);

    let (c, b) = (cand.failover.as_ref(), base.failover.as_ref());
    let stats: [(&str, Stat); 4] = [
        ("median", |s| s.p50),
        ("min", |s| s.min),
        ("p90", |s| s.p90),
        ("max", |s| s.max),
    ];
    let mut rows: Vec<Row> = stats
        .iter()
        .map(|(name, f)| {
            Row::new(
                format!("failover {name}"),
                "s",
                c.map(f),
                b.map(f),
                Better::Lower,
            )
        })
        .collect();
    rows.push(Row::new(
        "healthy CLI write (median)",
        "s",
        cand.healthy_write.as_ref().map(|s| s.p50),
        base.healthy_write.as_ref().map(|s| s.p50),
        Better::Lower,
    ));
    #[allow(clippy::cast_precision_loss)]
    rows.push(Row::new(
        "trials with a sample / run",
        "",
        Some(cand.samples().len() as f64 / cand.trials.len().max(1) as f64),
        Some(base.samples().len() as f64 / base.trials.len().max(1) as f64),
        Better::Higher,
    ));
    let mut notes = vec![
        format!(
            "3 managers, each a `swarm daemon` in its own network namespace on one bridge; \
             samples: candidate {} of {}, baseline {} of {} trials (a trial without a sample \
             found no accepted write within its deadline)",
            cand.samples().len(),
            cand.trials.len(),
            base.samples().len(),
            base.trials.len()
        ),
        "a sample is kill -9 of the leader's daemon (after it is reaped) to the first \
         `swarm node update --label-add` on another manager that exits 0; attempts start every \
         50 ms, so samples include up to ~50 ms of retry granularity and one CLI call (see the \
         healthy CLI write row)"
            .into(),
        "baseline = this same implementation (openraft) with docker's timing: swarmkit ticks \
         once a second, heartbeat every tick, ElectionTick 10, and etcd raft randomizes the \
         election timeout over [10, 19] ticks, hence 10s-20s. It is not a measurement of \
         docker itself."
            .into(),
        "openraft 0.9 followers refuse votes for a leader lease of election_timeout_max after \
         their last heartbeat, so the first candidate is usually refused and the next round \
         wins: expect about max + [min, max], i.e. 1.5-2 s for swarm and 30-40 s for the \
         baseline. etcd raft (docker) grants votes once its own, shorter, election timeout has \
         passed, so docker itself should fail over in about 10-20 s."
            .into(),
    ];
    if cand.failed() + base.failed() > 0 {
        notes.push(format!(
            "trials without a sample: candidate {}, baseline {} (see the JSON for their last errors)",
            cand.failed(),
            base.failed()
        ));
    }
    Ok(Report {
        name: "failover".into(),
        title: "leader kill -9 to first accepted write, 3-manager swarm".into(),
        candidate: ours.describe(opts.trials),
        baseline: docker.describe(opts.baseline_trials),
        rows,
        notes,
        run: info,
        details: json!({ "candidate": cand, "baseline": base }),
    })
}

fn run_series(timing: &Timing, trials: usize) -> anyhow::Result<Series> {
    let flags = timing.daemon_flags.clone();
    let cluster = Cluster::builder()
        .nodes(3)
        .topology(Topology::Bridge)
        .daemon_args(move |i| {
            let mut a = vec!["--hostname".to_string(), format!("node-{i}")];
            a.extend(flags.iter().cloned());
            a
        })
        .start();
    let result = series_on(&cluster, timing, trials);
    if result.is_err() && !stop::requested() {
        cluster.dump_logs();
    }
    result
}

fn series_on(c: &Cluster, timing: &Timing, trials: usize) -> anyhow::Result<Series> {
    // Generous: with docker's timing a restarted manager's agent and the
    // dispatcher take a few heartbeats to agree it is back.
    let settle_timeout = Duration::from_secs(60) + timing.election_max() * 3;
    let write_timeout = Duration::from_secs(20) + timing.election_max() * 4;
    // Let followers hear a couple of heartbeats from the leader they agree
    // on, as in a swarm that has been running a while.
    let settle_pause = (timing.heartbeat() * 3).max(Duration::from_secs(1));

    form(c).context("forming the swarm")?;
    let (leader, _) = wait_healthy(c, settle_timeout)?;
    let writer = other_than(leader);
    let mut healthy = Vec::new();
    for k in 0..HEALTHY_WRITES {
        let t = Instant::now();
        let out = label_write(c.node(writer), &format!("healthy-{k}"));
        if !out.ok() {
            bail!("a write on the healthy swarm failed: {out}");
        }
        healthy.push(t.elapsed().as_secs_f64());
    }

    let mut results = Vec::new();
    for n in 1..=trials {
        stop::check()?;
        let (leader, views) = wait_healthy(c, settle_timeout)
            .with_context(|| format!("waiting for the swarm to settle before trial {n}"))?;
        std::thread::sleep(settle_pause);
        let trial = one_trial(c, leader, &views, n, write_timeout)?;
        match trial.failover_s {
            Some(s) => println!(
                "  trial {n}/{trials}: killed node-{leader}, write on node-{} accepted after {s:.3} s ({} attempts; new leader node-{})",
                trial.writer,
                trial.attempts,
                trial
                    .new_leader
                    .map_or_else(|| "?".into(), |l| l.to_string())
            ),
            None => println!(
                "  trial {n}/{trials}: killed node-{leader}, NO write accepted within {write_timeout:?}: {}",
                trial.last_error.as_deref().unwrap_or("?")
            ),
        }
        results.push(trial);
        c.node(leader).start();
    }
    let series = Series {
        timing: timing.clone(),
        failover: None,
        healthy_write: Summary::of(&healthy),
        healthy_write_s: healthy,
        trials: results,
    };
    Ok(Series {
        failover: Summary::of(&series.samples()),
        ..series
    })
}

fn one_trial(
    c: &Cluster,
    leader: usize,
    views: &[RaftView],
    n: usize,
    timeout: Duration,
) -> anyhow::Result<Trial> {
    let writer = other_than(leader);
    c.node(leader).kill9();
    let killed = Instant::now();
    let mut attempts = 0;
    let mut last_error = None;
    loop {
        stop::check()?;
        let attempt = Instant::now();
        attempts += 1;
        let out = label_write(c.node(writer), &format!("trial-{n}"));
        if out.ok() {
            let failover = killed.elapsed().as_secs_f64();
            let accepted_attempt = attempt.elapsed().as_secs_f64();
            // Who took over, as the writer sees it now: a sanity check that
            // the write did not go to the killed leader's stale identity.
            let new_leader = raft_view(c.node(writer)).ok().and_then(|w| {
                views
                    .iter()
                    .find(|v| v.node_id == w.leader_node_id)
                    .map(|v| v.index)
            });
            if new_leader == Some(leader) {
                bail!(
                    "trial {n}: node-{leader} was killed but still leads; the measurement is broken"
                );
            }
            return Ok(Trial {
                killed: leader,
                writer,
                new_leader,
                failover_s: Some(failover),
                attempts,
                accepted_attempt_s: Some(accepted_attempt),
                last_error,
            });
        }
        last_error = Some(out.stderr.trim().to_string());
        if killed.elapsed() >= timeout {
            return Ok(Trial {
                killed: leader,
                writer,
                new_leader: None,
                failover_s: None,
                attempts,
                accepted_attempt_s: None,
                last_error,
            });
        }
        std::thread::sleep(RETRY_EVERY.saturating_sub(attempt.elapsed()));
    }
}

/// The manager that writes while `leader` is dead: the next one round.
fn other_than(leader: usize) -> usize {
    leader % 3 + 1
}

fn label_write(n: &Node, value: &str) -> CmdOutput {
    n.swarm_timeout(
        &[
            "node",
            "update",
            "--label-add",
            &format!("bench.failover={value}"),
            &format!("node-{}", n.index()),
        ],
        CLI_TIMEOUT,
    )
}

fn swarm_ok(n: &Node, args: &[&str]) -> anyhow::Result<CmdOutput> {
    let out = n.swarm_timeout(args, CLI_TIMEOUT);
    if !out.ok() {
        bail!("{out}");
    }
    Ok(out)
}

/// `swarm init` on node 1; nodes 2 and 3 join as managers.
fn form(c: &Cluster) -> anyhow::Result<()> {
    let n1 = c.node(1);
    swarm_ok(n1, &["init", "--advertise-addr", &n1.addr().to_string()])?;
    let token = swarm_ok(n1, &["join-token", "-q", "manager"])?
        .trimmed()
        .to_string();
    let leader_addr = format!("{}:2377", n1.addr());
    for i in 2..=3 {
        let n = c.node(i);
        swarm_ok(
            n,
            &[
                "join",
                "--token",
                &token,
                "--advertise-addr",
                &n.addr().to_string(),
                &leader_addr,
            ],
        )?;
    }
    Ok(())
}

/// Polls until every manager follows the same leader in the same term and
/// the leader lists all 3 nodes ready and reachable; returns the leader's
/// index.
fn wait_healthy(c: &Cluster, timeout: Duration) -> anyhow::Result<(usize, Vec<RaftView>)> {
    let deadline = Instant::now() + timeout;
    loop {
        stop::check()?;
        let last = match healthy_leader(c) {
            Ok(l) => return Ok(l),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            bail!("the swarm did not settle within {timeout:?}: {last}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// One manager's live Raft view (`swarm info`): unlike `node ls`, whose
/// leader flag is written by the leader's dispatcher a little later, this
/// is never stale.
#[derive(Debug, Clone, PartialEq)]
struct RaftView {
    index: usize,
    node_id: String,
    state: String,
    term: u64,
    leader_node_id: String,
}

fn raft_view(n: &Node) -> Result<RaftView, String> {
    let out = n.swarm_timeout(&["info", "--format", "json"], CLI_TIMEOUT);
    if !out.ok() {
        return Err(format!("info on node-{}: {}", n.index(), out.stderr.trim()));
    }
    let v: Value = serde_json::from_str(&out.stdout)
        .map_err(|e| format!("info on node-{}: {e}", n.index()))?;
    let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    Ok(RaftView {
        index: n.index(),
        node_id: s("NodeID"),
        state: s("RaftState"),
        term: v["RaftTerm"].as_u64().unwrap_or(0),
        leader_node_id: s("LeaderNodeID"),
    })
}

/// The leader every manager follows in the same term, or why there is
/// none yet.
fn agreed_leader(views: &[RaftView]) -> Result<usize, String> {
    let leaders: Vec<&RaftView> = views
        .iter()
        .filter(|v| v.state.eq_ignore_ascii_case("leader"))
        .collect();
    let [leader] = leaders.as_slice() else {
        return Err(format!("{} managers think they lead", leaders.len()));
    };
    for v in views {
        if v.leader_node_id != leader.node_id || v.term != leader.term {
            return Err(format!(
                "node-{} ({}, term {}) does not follow node-{} (term {}) yet",
                v.index, v.state, v.term, leader.index, leader.term
            ));
        }
    }
    Ok(leader.index)
}

fn healthy_leader(c: &Cluster) -> Result<(usize, Vec<RaftView>), String> {
    let views = c
        .nodes()
        .iter()
        .map(raft_view)
        .collect::<Result<Vec<_>, _>>()?;
    let leader = agreed_leader(&views)?;
    let n = c.node(leader);
    let out = n.swarm_timeout(&["node", "ls", "--format", "json"], CLI_TIMEOUT);
    if !out.ok() {
        return Err(format!("node ls on node-{leader}: {}", out.stderr.trim()));
    }
    let ls: Vec<Value> =
        serde_json::from_str(&out.stdout).map_err(|e| format!("node ls on node-{leader}: {e}"))?;
    all_ready(&ls)?;
    Ok((leader, views))
}

/// Whether `node ls` shows all 3 nodes ready and every manager reachable.
fn all_ready(ls: &[Value]) -> Result<(), String> {
    if ls.len() != 3 {
        return Err(format!("{} nodes listed", ls.len()));
    }
    for v in ls {
        let host = v["Description"]["Hostname"].as_str().unwrap_or("?");
        let state = v["Status"]["State"].as_str().unwrap_or("?");
        if !state.eq_ignore_ascii_case("ready") {
            return Err(format!("{host} is {state}"));
        }
        let reach = v["ManagerStatus"]["Reachability"].as_str().unwrap_or("?");
        if reach != "reachable" {
            return Err(format!("{host} is {reach}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(host: &str, state: &str, reach: &str) -> Value {
        json!({
            "Description": { "Hostname": host },
            "Status": { "State": state },
            "ManagerStatus": { "Reachability": reach },
        })
    }

    #[test]
    fn ready_means_every_node_ready_and_reachable() {
        let ls = [
            node("node-1", "ready", "reachable"),
            node("node-2", "ready", "reachable"),
            node("node-3", "ready", "reachable"),
        ];
        assert_eq!(all_ready(&ls), Ok(()));
        let mut down = ls.clone();
        down[0] = node("node-1", "down", "reachable");
        assert!(all_ready(&down).is_err());
        let mut unreachable = ls.clone();
        unreachable[2] = node("node-3", "ready", "unreachable");
        assert!(all_ready(&unreachable).is_err());
        assert!(all_ready(&ls[..2]).is_err());
    }

    fn view(index: usize, state: &str, term: u64, leader: usize) -> RaftView {
        RaftView {
            index,
            node_id: format!("id{index}"),
            state: state.into(),
            term,
            leader_node_id: format!("id{leader}"),
        }
    }

    #[test]
    fn the_leader_is_the_one_everyone_follows_in_its_term() {
        let ok = [
            view(1, "Follower", 4, 2),
            view(2, "Leader", 4, 2),
            view(3, "Follower", 4, 2),
        ];
        assert_eq!(agreed_leader(&ok), Ok(2));
        // A restarted manager that still believes in the old leader.
        let mut stale = ok.clone();
        stale[0] = view(1, "Follower", 3, 1);
        assert!(agreed_leader(&stale).is_err());
        let mut two = ok.clone();
        two[0] = view(1, "Leader", 4, 1);
        assert!(agreed_leader(&two).is_err());
        let none = [view(1, "Candidate", 5, 0), view(2, "Follower", 4, 2)];
        assert!(agreed_leader(&none).is_err());
    }

    #[test]
    fn the_writer_is_never_the_killed_leader() {
        for l in 1..=3 {
            let w = other_than(l);
            assert_ne!(w, l);
            assert!((1..=3).contains(&w));
        }
    }

    #[test]
    fn quick_runs_fewer_baseline_trials() {
        let q = FailoverOpts::new(true, None, None);
        assert!(q.baseline_trials < q.trials);
        let full = FailoverOpts::new(false, None, None);
        assert_eq!((full.trials, full.baseline_trials), (10, 10));
        assert_eq!(FailoverOpts::new(true, Some(7), None).trials, 7);
    }
}
