//! `store`: the replicated store's write path in this process, without Raft
//! or network. The writes of a placement (task creates, the scheduler's
//! assignments, status reports up to RUNNING) are applied in committed
//! batches as every manager applies them, and prepared as the leader's
//! trial transaction prepares them before it proposes. Baseline: the same
//! writes to a plain `BTreeMap` of tasks (copy-on-write values, but no
//! persistent tables, no indexes, no write rules).
//!
//! It isolates what the scale benchmark cannot: the placement there is CPU
//! bound on every manager, and this is the part every manager pays for
//! each task, measured alone, on one core, with little noise.
//!
//! Owns nothing outside this process; reads no clock but its own timers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use anyhow::{Context as _, bail};
use serde::Serialize;
use swarm::manager::leader::MAX_ACTIONS_PER_PROPOSAL;
use swarm::orchestrator::{Context, NodeMap, SlotKey, new_task};
use swarm::scheduler::assigned_status;
use swarm::store::{self, MemoryStore, StoreObject, WriteTx};
use swarm_proto::v1 as pb;

use crate::report::{Better, Report, Row, RunInfo};
use crate::stats::median;
use crate::stop;

/// How a run is shaped.
#[derive(Clone, Debug, Serialize)]
pub struct StoreOpts {
    pub tasks: usize,
    pub nodes: usize,
    /// Rounds, each measuring the candidate then the baseline.
    pub rounds: usize,
}

impl StoreOpts {
    #[must_use]
    pub fn new(
        quick: bool,
        tasks: Option<usize>,
        nodes: Option<usize>,
        rounds: Option<usize>,
    ) -> StoreOpts {
        StoreOpts {
            tasks: tasks.unwrap_or(if quick { 20_000 } else { 100_000 }),
            nodes: nodes.unwrap_or(1000),
            rounds: rounds.unwrap_or(if quick { 1 } else { 5 }),
        }
    }
}

/// The phases, in the order a placement writes them.
const PHASES: [Phase; 5] = [
    Phase::PrepareCreate,
    Phase::ApplyCreate,
    Phase::PrepareAssign,
    Phase::ApplyAssign,
    Phase::ApplyStatus,
];

#[derive(Clone, Copy, Debug)]
enum Phase {
    PrepareCreate,
    ApplyCreate,
    PrepareAssign,
    ApplyAssign,
    ApplyStatus,
}

impl Phase {
    fn label(self) -> &'static str {
        match self {
            Phase::PrepareCreate => "leader's trial: create",
            Phase::ApplyCreate => "apply: create",
            Phase::PrepareAssign => "leader's trial: assign",
            Phase::ApplyAssign => "apply: assign",
            Phase::ApplyStatus => "apply: status report (RUNNING)",
        }
    }
}

/// Seconds per phase, one round of one side.
type Timings = BTreeMap<&'static str, f64>;

#[derive(Debug, Default, Serialize)]
struct Samples {
    candidate: Vec<Timings>,
    baseline: Vec<Timings>,
}

/// What is written: a service like the scale benchmark's, its tasks as the
/// orchestrator makes them, the nodes they go to.
struct Workload {
    tasks: Vec<pb::Task>,
    nodes: Vec<String>,
}

impl Workload {
    fn new(opts: &StoreOpts) -> Workload {
        let service = pb::Service {
            meta: Some(pb::Meta {
                id: store::new_id(),
                version: 12,
                ..Default::default()
            }),
            spec: Some(pb::ServiceSpec {
                annotations: Some(pb::Annotations {
                    name: "scale".into(),
                    ..Default::default()
                }),
                task: Some(pb::TaskSpec {
                    container: Some(pb::ContainerSpec {
                        image: "127.0.0.1:5000/busybox:latest@sha256:\
                                3fbc632167424a6d997e74f52b878d7cc478225cffac6bc977eedfe51c7f4e79"
                            .into(),
                        ..Default::default()
                    }),
                    placement: Some(pb::Placement {
                        constraints: vec!["node.role==worker".into()],
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let nodes = NodeMap::new();
        let ctx = Context {
            now: SystemTime::now(),
            nodes: &nodes,
            cluster: None,
        };
        let tasks = (1..=opts.tasks as u64)
            .map(|slot| new_task(&ctx, &service, &SlotKey::Replica(slot)))
            .collect();
        Workload {
            tasks,
            nodes: (0..opts.nodes.max(1)).map(|_| store::new_id()).collect(),
        }
    }

    fn node_of(&self, i: usize) -> &str {
        &self.nodes[i % self.nodes.len()]
    }
}

fn status(state: pb::TaskState, message: &str) -> pb::TaskStatus {
    pb::TaskStatus {
        timestamp: Some(SystemTime::now().into()),
        state: state.into(),
        message: message.into(),
        ..Default::default()
    }
}

/// Times `f` and hands back what it produced.
fn timed<T>(f: impl FnOnce() -> T) -> (f64, T) {
    let t0 = Instant::now();
    let out = f();
    (t0.elapsed().as_secs_f64(), out)
}

/// Writes `actions` through `write`, taking a proposal's worth at a time:
/// the leader's trial transaction, as `propose_streamed` drives it.
fn prepare_in_chunks<I>(
    store: &MemoryStore,
    items: impl IntoIterator<Item = I>,
    mut write: impl FnMut(&mut WriteTx, I) -> Result<(), store::StoreError>,
) -> anyhow::Result<Vec<Vec<pb::StoreAction>>> {
    let mut tx = store.write_tx();
    let mut chunks = Vec::new();
    for item in items {
        write(&mut tx, item).context("a trial write failed")?;
        if tx.len() >= MAX_ACTIONS_PER_PROPOSAL {
            chunks.push(tx.take_actions());
        }
    }
    if !tx.is_empty() {
        chunks.push(tx.take_actions());
    }
    Ok(chunks)
}

/// Applies each chunk as one committed batch, as a follower does.
fn apply_chunks(
    store: &MemoryStore,
    index: &mut u64,
    chunks: Vec<Vec<pb::StoreAction>>,
) -> anyhow::Result<()> {
    for actions in chunks {
        *index += 1;
        store
            .apply(*index, store::new_batch(actions))
            .context("applying a batch failed")?;
    }
    Ok(())
}

fn candidate(w: &Workload) -> anyhow::Result<Timings> {
    let store = MemoryStore::new();
    let mut index = 0;
    let mut t = Timings::new();

    // The orchestrator hands its new tasks over: copying them is not timed.
    let owned = w.tasks.clone();
    let (s, creates) = timed(|| prepare_in_chunks(&store, owned, |tx, task| tx.create(task)));
    t.insert(Phase::PrepareCreate.label(), s);
    let creates = creates?;
    let (s, r) = timed(|| apply_chunks(&store, &mut index, creates));
    t.insert(Phase::ApplyCreate.label(), s);
    r?;

    let assigned = assigned_status(SystemTime::now());
    let (s, assigns) = timed(|| {
        prepare_in_chunks(&store, w.tasks.iter().enumerate(), |tx, (i, task)| {
            tx.assign(task.id(), w.node_of(i), assigned.clone())
                .map(|_| ())
        })
    });
    t.insert(Phase::PrepareAssign.label(), s);
    let assigns = assigns?;
    if assigns.iter().map(Vec::len).sum::<usize>() != w.tasks.len() {
        bail!("the trial assigned fewer tasks than it was given");
    }
    let (s, r) = timed(|| apply_chunks(&store, &mut index, assigns));
    t.insert(Phase::ApplyAssign.label(), s);
    r?;

    let running = status(pb::TaskState::Running, "started");
    let reports: Vec<Vec<pb::StoreAction>> = w
        .tasks
        .chunks(MAX_ACTIONS_PER_PROPOSAL)
        .enumerate()
        .map(|(c, chunk)| {
            chunk
                .iter()
                .enumerate()
                .map(|(k, task)| {
                    let node = w.node_of(c * MAX_ACTIONS_PER_PROPOSAL + k);
                    store::status_report(task.id(), node, running.clone())
                })
                .collect()
        })
        .collect();
    let (s, r) = timed(|| apply_chunks(&store, &mut index, reports));
    t.insert(Phase::ApplyStatus.label(), s);
    r?;

    let view = store.view();
    let on_a_node = view
        .tasks_by_node(w.node_of(0))
        .iter()
        .filter(|t| t.status.as_ref().map(|s| s.state) == Some(pb::TaskState::Running as i32))
        .count();
    if on_a_node != w.tasks.len().div_ceil(w.nodes.len()) {
        bail!("the store does not show the first node's tasks running ({on_a_node})");
    }
    Ok(t)
}

/// The same writes to a plain ordered map of copy-on-write tasks. The
/// "trial" phases do the same work as the applies: a map has no trial.
fn baseline(w: &Workload) -> Timings {
    let mut t = Timings::new();
    let mut map: BTreeMap<String, Arc<pb::Task>> = BTreeMap::new();
    let (s, ()) = timed(|| {
        for task in &w.tasks {
            map.insert(task.id().to_owned(), Arc::new(task.clone()));
        }
    });
    t.insert(Phase::PrepareCreate.label(), s);
    t.insert(Phase::ApplyCreate.label(), s);
    let assigned = assigned_status(SystemTime::now());
    let (s, ()) = timed(|| {
        for (i, task) in w.tasks.iter().enumerate() {
            if let Some(old) = map.get_mut(task.id()) {
                let mut new = pb::Task::clone(old);
                new.node_id = w.node_of(i).to_owned();
                new.status = Some(assigned.clone());
                *old = Arc::new(new);
            }
        }
    });
    t.insert(Phase::PrepareAssign.label(), s);
    t.insert(Phase::ApplyAssign.label(), s);
    let running = status(pb::TaskState::Running, "started");
    let (s, ()) = timed(|| {
        for task in &w.tasks {
            if let Some(old) = map.get_mut(task.id()) {
                let mut new = pb::Task::clone(old);
                new.status = Some(running.clone());
                *old = Arc::new(new);
            }
        }
    });
    t.insert(Phase::ApplyStatus.label(), s);
    let (s, ()) = timed(|| drop(map));
    for v in t.values_mut() {
        // Freeing is part of every write path above; spread it evenly.
        *v += s / PHASES.len() as f64;
    }
    t
}

/// Runs the benchmark.
pub fn run(opts: &StoreOpts, quick: bool) -> anyhow::Result<Report> {
    if opts.tasks == 0 || opts.rounds == 0 {
        bail!("--tasks and --rounds must be at least 1");
    }
    let started = Instant::now();
    let mut info = RunInfo::begin(quick);
    let w = Workload::new(opts);
    let mut samples = Samples::default();
    for round in 1..=opts.rounds {
        stop::check()?;
        println!("store: round {round}/{}", opts.rounds);
        samples.candidate.push(candidate(&w)?);
        samples.baseline.push(baseline(&w));
    }
    info.end(started);
    Ok(report(opts, &samples, info))
}

#[allow(clippy::cast_precision_loss)]
fn report(opts: &StoreOpts, s: &Samples, run: RunInfo) -> Report {
    let per_s = |side: &[Timings], label: &str| {
        let secs: Vec<f64> = side.iter().filter_map(|t| t.get(label).copied()).collect();
        median(&secs).map(|sec| opts.tasks as f64 / sec)
    };
    let mut rows: Vec<Row> = PHASES
        .iter()
        .map(|p| {
            Row::new(
                format!("{} {} tasks", p.label(), opts.tasks),
                "tasks/s",
                per_s(&s.candidate, p.label()),
                per_s(&s.baseline, p.label()),
                Better::Higher,
            )
        })
        .collect();
    // What one manager spends per task: a follower applies the three
    // writes; the leader also runs two trials.
    let per_task = |side: &[Timings], phases: &[Phase]| {
        let totals: Vec<f64> = side
            .iter()
            .map(|t| phases.iter().filter_map(|p| t.get(p.label())).sum::<f64>())
            .collect();
        median(&totals).map(|sec| sec * 1e6 / opts.tasks as f64)
    };
    let apply = [Phase::ApplyCreate, Phase::ApplyAssign, Phase::ApplyStatus];
    rows.push(Row::new(
        "a follower's store work per task (three applies)",
        "µs",
        per_task(&s.candidate, &apply),
        per_task(&s.baseline, &apply),
        Better::Lower,
    ));
    rows.push(Row::new(
        "the leader's store work per task (applies and trials)",
        "µs",
        per_task(&s.candidate, &PHASES),
        per_task(&s.baseline, &PHASES),
        Better::Lower,
    ));
    Report {
        name: "store".into(),
        title: "store: the write path of a placement, in one process".into(),
        candidate: "MemoryStore: persistent tables, indexes, the store's rules".into(),
        baseline: "a plain BTreeMap of copy-on-write tasks".into(),
        rows,
        notes: vec![
            format!(
                "{} tasks as the orchestrator creates them (one service, spec with an image \
                 and a constraint) on {} nodes, in batches of {} actions (a proposal); \
                 median of {} rounds, candidate then baseline in each",
                opts.tasks, opts.nodes, MAX_ACTIONS_PER_PROPOSAL, opts.rounds
            ),
            "apply: MemoryStore::apply of committed batches, as every manager does; \
             leader's trial: the WriteTx the leader checks each write in before proposing"
                .into(),
            "baseline: one insert or copy-and-replace per write, no batches, no indexes; \
             its trial rows repeat its apply rows"
                .into(),
            "one thread: the allocator behaves otherwise than in a daemon, where tasks are \
             decoded, applied and freed on different threads (mimalloc and a boxed task \
             spec were faster here and slower in `scale`); confirm a change with `scale`"
                .into(),
        ],
        run,
        details: serde_json::to_value(s).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_run_writes_every_phase_and_reports_each() {
        let opts = StoreOpts {
            tasks: 300,
            nodes: 7,
            rounds: 1,
        };
        let w = Workload::new(&opts);
        let c = candidate(&w).expect("the candidate runs");
        let b = baseline(&w);
        for p in PHASES {
            assert!(
                c.contains_key(p.label()) && b.contains_key(p.label()),
                "{p:?}"
            );
        }
        let r = report(
            &opts,
            &Samples {
                candidate: vec![c],
                baseline: vec![b],
            },
            RunInfo::begin(true),
        );
        assert_eq!(r.rows.len(), PHASES.len() + 2);
        assert!(r.rows.iter().all(|row| row.candidate.is_some()));
    }
}
