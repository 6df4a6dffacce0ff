//! `raft`: how many store writes per second Raft commits and applies, and
//! how long each takes, with 1 and 64 concurrent clients.
//!
//! Candidate: 3 real manager stacks in this process, as `swarm daemon`
//! wires them: `swarm::raft::start` with the store as state machine
//! (`StoreFsm` over a `MemoryStore`), the redb log fsync'ed on every
//! append, and the Raft gRPC service behind mutual TLS and the cluster
//! port's authorization layer. Each manager lives in its own network
//! namespace (a thread that `setns()`es, then builds a tokio runtime whose
//! threads inherit it) and the three talk over veths and a bridge. Baseline:
//! one manager alone (same storage, same process, no replication), so the
//! ratio is what replication over mTLS costs.
//!
//! Clients call `Proposer::propose` on the leader, exactly as the control
//! API does, each creating new Secrets (fresh IDs and names) so batches
//! never conflict. A write counts once `propose` returns: committed by a
//! majority and applied to the leader's store.
//!
//! Owns its namespaces (a harness cluster without daemons), its Raft data
//! directories (inside the cluster's temp dir) and its threads; all are
//! gone when [`run`] returns.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use nix::sched::{CloneFlags, setns};
use openraft::BasicNode;
use serde::Serialize;
use serde_json::json;
use swarm::ca::{
    AuthzLayer, NODE_CERT_VALIDITY, NoRevocations, NodeKey, RevocationList, Role, RootCa, RootCert,
    ServerTls, TlsIdentity, TlsIncoming,
};
use swarm::manager::{MtlsChannels, Proposer, cluster_policy, fsm::StoreFsm};
use swarm::raft::{Raft, RaftId, RaftSettings, network::Contacts, service::RaftService};
use swarm::store::{MemoryStore, new_id};
use swarm_harness::{Cluster, Topology};
use swarm_proto::v1 as pb;
use tokio_util::sync::CancellationToken;

use crate::report::{Better, Report, Row, RunInfo};
use crate::stats::Summary;
use crate::stop;

/// The cluster port, as in production.
const PORT: u16 = 2377;
/// Bytes of secret data per write: a small object, so the numbers are about
/// Raft and not about copying payloads.
const PAYLOAD: usize = 64;
/// Worker threads per manager runtime: what `swarm daemon` gets on this
/// 2-core machine (tokio's default is one per core).
const MANAGER_THREADS: usize = 2;

#[derive(Clone, Debug)]
pub struct RaftOpts {
    /// Measured time per (managers, clients) point, after the warm-up.
    pub duration: Duration,
    pub warmup: Duration,
    pub clients: Vec<usize>,
    /// Times every point is measured. Candidate and baseline alternate
    /// which goes first, so a change in the machine's load hits both.
    pub rounds: usize,
}

impl RaftOpts {
    /// 3 rounds of 10 s points; `--quick`: 1 round of 3 s.
    pub fn new(
        quick: bool,
        seconds: Option<f64>,
        clients: Option<Vec<usize>>,
        rounds: Option<usize>,
    ) -> Self {
        let duration = seconds.map_or(
            Duration::from_secs(if quick { 3 } else { 10 }),
            Duration::from_secs_f64,
        );
        RaftOpts {
            duration,
            warmup: Duration::from_secs(1),
            clients: clients.unwrap_or_else(|| vec![1, 64]),
            rounds: rounds.unwrap_or(if quick { 1 } else { 3 }),
        }
    }
}

/// One measured point.
#[derive(Debug, Serialize)]
struct Point {
    round: usize,
    managers: usize,
    clients: usize,
    seconds: f64,
    /// Writes that completed inside the measured window.
    writes: u64,
    writes_per_s: f64,
    /// Latency of writes started inside the window, milliseconds.
    latency_ms: Option<Summary>,
    /// The samples behind `latency_ms`, pooled across rounds.
    #[serde(skip)]
    latencies_ms: Vec<f64>,
    errors: u64,
    /// Whether every manager had applied everything the leader had, within
    /// 10 s of the end (a replication sanity check).
    replicas_caught_up: bool,
}

/// All rounds of one (managers, clients) point.
#[derive(Debug, Serialize)]
struct Aggregate {
    managers: usize,
    clients: usize,
    /// Over rounds: the table shows the median.
    writes_per_s: Option<Summary>,
    /// Over every write of every round.
    latency_ms: Option<Summary>,
}

fn aggregate(points: &[Point], managers: usize, clients: usize) -> Aggregate {
    let of = || {
        points
            .iter()
            .filter(move |p| p.managers == managers && p.clients == clients)
    };
    let rates: Vec<f64> = of().map(|p| p.writes_per_s).collect();
    let latencies: Vec<f64> = of().flat_map(|p| p.latencies_ms.iter().copied()).collect();
    Aggregate {
        managers,
        clients,
        writes_per_s: Summary::of(&rates),
        latency_ms: Summary::of(&latencies),
    }
}

pub fn run(opts: &RaftOpts, quick: bool) -> anyhow::Result<Report> {
    if opts.clients.is_empty() || opts.clients.contains(&0) {
        bail!("--clients needs at least one count, each at least 1");
    }
    if opts.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let started = Instant::now();
    let mut info = RunInfo::begin(quick);
    // Namespaces, veths and a bridge, but no daemons: the managers run here.
    let cluster = Cluster::builder()
        .nodes(3)
        .topology(Topology::Bridge)
        .no_daemons()
        .start();
    let ca = RootCa::generate().context("generating a root CA")?;
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("bench-client")
        .build()
        .context("building the client runtime")?;

    let mut points = Vec::new();
    for round in 1..=opts.rounds {
        let order = if round % 2 == 1 { [3, 1] } else { [1, 3] };
        for managers in order {
            stop::check()?;
            println!("raft: round {round}/{}, {managers} manager(s)", opts.rounds);
            let group = Group::start(&cluster, &ca, managers, &client_rt)?;
            let measured = measure_all(&group, round, opts, &client_rt);
            group.stop(&client_rt);
            points.extend(measured?);
        }
    }
    drop(client_rt);
    drop(cluster);
    info.end(started);

    let mut rows = Vec::new();
    let mut aggregates = Vec::new();
    for &clients in &opts.clients {
        let c = aggregate(&points, 3, clients);
        let b = aggregate(&points, 1, clients);
        let lat = |a: &Aggregate, f: fn(&Summary) -> f64| a.latency_ms.as_ref().map(f);
        let rate = |a: &Aggregate, f: fn(&Summary) -> f64| a.writes_per_s.as_ref().map(f);
        rows.push(Row::new(
            format!("{clients} client(s): throughput"),
            "writes/s",
            rate(&c, |s| s.p50),
            rate(&b, |s| s.p50),
            Better::Higher,
        ));
        if opts.rounds > 1 {
            rows.push(Row::new(
                format!("{clients} client(s): slowest round"),
                "writes/s",
                rate(&c, |s| s.min),
                rate(&b, |s| s.min),
                Better::Higher,
            ));
        }
        rows.push(Row::new(
            format!("{clients} client(s): latency p50"),
            "ms",
            lat(&c, |s| s.p50),
            lat(&b, |s| s.p50),
            Better::Lower,
        ));
        rows.push(Row::new(
            format!("{clients} client(s): latency p99"),
            "ms",
            lat(&c, |s| s.p99),
            lat(&b, |s| s.p99),
            Better::Lower,
        ));
        aggregates.push(c);
        aggregates.push(b);
    }
    let mut notes = vec![
        format!(
            "each point: {:.0} s measured after a {:.0} s warm-up, {} round(s) alternating which \
             side goes first; throughput is the median over rounds, latencies pool every write; \
             a write is one StoreBatch creating one Secret ({PAYLOAD} B of data) through \
             Proposer::propose on the leader, counted when committed and applied there",
            opts.duration.as_secs_f64(),
            opts.warmup.as_secs_f64(),
            opts.rounds
        ),
        format!(
            "every manager: own network namespace, own tokio runtime ({MANAGER_THREADS} threads), \
             redb log fsync'ed per append, Raft over gRPC with mutual TLS; all share this \
             machine's CPUs and disk, and the clients run here too"
        ),
        "Raft settings are swarm's defaults (snapshot every 10000 entries, so longer runs \
         include snapshots)"
            .into(),
        "writes wait for fsyncs on a disk shared with this machine's other work: while that \
         is busy, rounds can differ several-fold (each round is printed above and kept in the \
         JSON)"
            .into(),
    ];
    let errors: u64 = points.iter().map(|p| p.errors).sum();
    if errors > 0 {
        notes.push(format!("{errors} writes failed (see the JSON)"));
    }
    if points.iter().any(|p| !p.replicas_caught_up) {
        notes.push("a follower had not caught up 10 s after a run (see the JSON)".into());
    }
    Ok(Report {
        name: "raft".into(),
        title: "Raft write throughput and latency (committed + applied)".into(),
        candidate: "3 managers, replicated over mutual TLS between network namespaces".into(),
        baseline: "1 manager, no replication (same storage, same process)".into(),
        rows,
        notes,
        run: info,
        details: json!({ "aggregates": aggregates, "points": points }),
    })
}

/// Every client count of one round on a started group.
fn measure_all(
    group: &Group,
    round: usize,
    opts: &RaftOpts,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<Vec<Point>> {
    let mut points = Vec::new();
    for &clients in &opts.clients {
        stop::check()?;
        let p = rt.block_on(measure(group, round, clients, opts))?;
        println!(
            "  {clients:>3} client(s): {:>8.0} writes/s, p50 {:.2} ms, p99 {:.2} ms{}",
            p.writes_per_s,
            p.latency_ms.as_ref().map_or(f64::NAN, |s| s.p50),
            p.latency_ms.as_ref().map_or(f64::NAN, |s| s.p99),
            if p.errors > 0 {
                format!(", {} errors", p.errors)
            } else {
                String::new()
            }
        );
        points.push(p);
    }
    Ok(points)
}

/// Runs `clients` writers against the leader for warm-up + duration.
async fn measure(
    group: &Group,
    round: usize,
    clients: usize,
    opts: &RaftOpts,
) -> anyhow::Result<Point> {
    let leader = group.leader();
    let start = Instant::now();
    let window_start = start + opts.warmup;
    let window_end = window_start + opts.duration;
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let proposer = leader.proposer.clone();
            let store = leader.store.clone();
            tokio::spawn(client(proposer, store, window_start, window_end))
        })
        .collect();
    let mut writes = 0;
    let mut errors = 0;
    let mut latencies = Vec::new();
    let mut first_error = None;
    for t in tasks {
        let r = t.await.context("a client task panicked")?;
        writes += r.writes;
        errors += r.errors;
        latencies.extend(r.latencies_ms);
        first_error = first_error.or(r.first_error);
    }
    if let Some(e) = &first_error {
        eprintln!("raft: {errors} write(s) failed; first: {e}");
    }
    let replicas_caught_up = group.wait_caught_up(Duration::from_secs(10)).await;
    let seconds = opts.duration.as_secs_f64();
    #[allow(clippy::cast_precision_loss)]
    Ok(Point {
        round,
        managers: group.nodes.len(),
        clients,
        seconds,
        writes,
        writes_per_s: writes as f64 / seconds,
        latency_ms: Summary::of(&latencies),
        latencies_ms: latencies,
        errors,
        replicas_caught_up,
    })
}

struct ClientResult {
    writes: u64,
    errors: u64,
    latencies_ms: Vec<f64>,
    first_error: Option<String>,
}

/// One writer: proposes new Secrets back to back until `window_end`.
async fn client(
    proposer: Proposer,
    store: MemoryStore,
    window_start: Instant,
    window_end: Instant,
) -> ClientResult {
    let mut r = ClientResult {
        writes: 0,
        errors: 0,
        latencies_ms: Vec::new(),
        first_error: None,
    };
    loop {
        let started = Instant::now();
        if started >= window_end || stop::requested() {
            return r;
        }
        let id = new_id();
        let secret = pb::Secret {
            meta: Some(pb::Meta {
                id: id.clone(),
                ..Default::default()
            }),
            spec: Some(pb::SecretSpec {
                annotations: Some(pb::Annotations {
                    name: format!("bench-{id}"),
                    ..Default::default()
                }),
                data: vec![0x5a; PAYLOAD],
                ..Default::default()
            }),
            internal: false,
        };
        let result = match store.prepare(|tx| tx.create(secret)) {
            Ok(actions) => proposer.propose(actions).await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let done = Instant::now();
        match result {
            Ok(_) => {
                if done >= window_start && done <= window_end {
                    r.writes += 1;
                }
                if started >= window_start {
                    r.latencies_ms.push((done - started).as_secs_f64() * 1000.0);
                }
            }
            Err(e) => {
                r.errors += 1;
                r.first_error.get_or_insert(e);
                // Do not spin on a broken cluster.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// A manager running on its own thread, in its own namespace.
struct Member {
    raft: Raft,
    proposer: Proposer,
    store: MemoryStore,
    stop: CancellationToken,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
}

/// 1 or 3 managers of one Raft group, started and with a leader.
struct Group {
    nodes: Vec<Member>,
}

struct MemberSpec {
    id: RaftId,
    netns: PathBuf,
    addr: SocketAddr,
    dir: PathBuf,
    root: RootCert,
    identity: TlsIdentity,
}

impl Group {
    fn start(
        cluster: &Cluster,
        ca: &RootCa,
        managers: usize,
        rt: &tokio::runtime::Runtime,
    ) -> anyhow::Result<Group> {
        let cluster_id = new_id();
        let run = new_id();
        let mut nodes = Vec::new();
        let mut members = BTreeMap::new();
        for i in 1..=managers {
            let n = cluster.node(i);
            let addr = SocketAddr::from((n.addr(), PORT));
            let id = u64::try_from(i).context("node index")?;
            members.insert(id, BasicNode::new(addr.to_string()));
            let spec = MemberSpec {
                id,
                netns: n.ns().path().to_path_buf(),
                addr,
                // A fresh directory per group: the baseline starts empty too.
                dir: cluster.dir().join(format!("raft-{run}-n{i}")),
                root: ca.cert().clone(),
                identity: manager_identity(ca, &new_id(), &cluster_id)?,
            };
            match start_member(spec) {
                Ok(m) => nodes.push(m),
                Err(e) => {
                    Group { nodes }.stop(rt);
                    return Err(e);
                }
            }
        }
        let group = Group { nodes };
        let ready = rt.block_on(async {
            group.nodes[0]
                .raft
                .initialize(members)
                .await
                .map_err(|e| anyhow!("initializing Raft: {e}"))?;
            group.wait_ready(Duration::from_secs(30)).await
        });
        if let Err(e) = ready {
            group.stop(rt);
            return Err(e);
        }
        Ok(group)
    }

    /// The member that leads (after [`Group::wait_ready`]).
    fn leader(&self) -> &Member {
        self.nodes
            .iter()
            .find(|m| m.proposer.is_leader())
            .unwrap_or(&self.nodes[0])
    }

    /// Until one member leads and reaches every other.
    async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            stop::check()?;
            if let Some(l) = self.nodes.iter().find(|m| m.proposer.is_leader()) {
                let (reachable, voters) = l.proposer.reachability();
                if voters == self.nodes.len() && reachable == voters {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "no leader reaching all {} managers after {timeout:?}",
                    self.nodes.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether every member's store reaches the leader's version in time.
    async fn wait_caught_up(&self, timeout: Duration) -> bool {
        let target = self.leader().store.version();
        let deadline = Instant::now() + timeout;
        while self.nodes.iter().any(|m| m.store.version() < target) {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// Stops every member and joins its thread (errors are printed: the
    /// measurements are already taken).
    fn stop(self, rt: &tokio::runtime::Runtime) {
        for m in &self.nodes {
            m.stop.cancel();
        }
        for mut m in self.nodes {
            // Raft first, so followers do not campaign while the others stop.
            let _ = rt.block_on(m.raft.shutdown());
            if let Some(t) = m.thread.take() {
                match t.join() {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => eprintln!("raft: a manager stopped with an error: {e:#}"),
                    Err(_) => eprintln!("raft: a manager thread panicked"),
                }
            }
        }
    }
}

/// A manager certificate and key for `node_id`, issued in-process.
fn manager_identity(ca: &RootCa, node_id: &str, cluster_id: &str) -> anyhow::Result<TlsIdentity> {
    let key = NodeKey::generate().context("generating a node key")?;
    let csr = key.generate_csr(Some(node_id)).context("making a CSR")?;
    let cert = ca
        .issue(&csr, node_id, Role::Manager, cluster_id, NODE_CERT_VALIDITY)
        .context("issuing a manager certificate")?;
    TlsIdentity::new(ca.cert(), &cert, &key).context("building the TLS identity")
}

type Started = anyhow::Result<(Raft, Proposer, MemoryStore)>;

/// Starts one manager on a new thread inside `spec.netns` and returns once
/// it serves (or failed to start).
fn start_member(spec: MemberSpec) -> anyhow::Result<Member> {
    let stop = CancellationToken::new();
    let (tx, rx) = std::sync::mpsc::sync_channel::<Started>(1);
    let thread_stop = stop.clone();
    let name = format!("manager-{}", spec.id);
    let thread = std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || member_thread(spec, thread_stop, tx))
        .with_context(|| format!("starting thread {name}"))?;
    match rx.recv() {
        Ok(Ok((raft, proposer, store))) => Ok(Member {
            raft,
            proposer,
            store,
            stop,
            thread: Some(thread),
        }),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => match thread.join() {
            Ok(Err(e)) => Err(e),
            _ => Err(anyhow!("{name} ended before it started")),
        },
    }
}

fn member_thread(
    spec: MemberSpec,
    stop: CancellationToken,
    started: std::sync::mpsc::SyncSender<Started>,
) -> anyhow::Result<()> {
    enter_netns(&spec.netns)?;
    // Built after setns: its worker threads are spawned from this thread
    // and inherit the namespace, so every socket Raft opens lives there.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(MANAGER_THREADS)
        .enable_all()
        .thread_name(format!("manager-{}-rt", spec.id))
        .build()
        .context("building a manager runtime")?;
    rt.block_on(async move {
        let serving = match serve(&spec).await {
            Ok(s) => s,
            Err(e) => {
                let _ = started.send(Err(anyhow!("{e:#}")));
                return Err(e);
            }
        };
        let (raft, proposer, store, incoming, authz) = serving;
        let _ = started.send(Ok((raft.clone(), proposer, store)));
        let served = tonic::transport::Server::builder()
            .layer(authz)
            .add_service(RaftService::new(raft.clone()).into_server())
            .serve_with_incoming_shutdown(incoming, stop.cancelled())
            .await;
        let _ = raft.shutdown().await;
        served.context("serving the cluster port")
    })
}

fn enter_netns(path: &Path) -> anyhow::Result<()> {
    let ns = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    setns(&ns, CloneFlags::CLONE_NEWNET).with_context(|| format!("setns into {}", path.display()))
}

type Serving = (Raft, Proposer, MemoryStore, TlsIncoming, AuthzLayer);

/// Opens storage, starts Raft and binds the cluster port, as
/// `manager::Manager::start` does; the caller mounts only the Raft service.
async fn serve(spec: &MemberSpec) -> anyhow::Result<Serving> {
    let settings = RaftSettings::default();
    let store = MemoryStore::new();
    let channels = Arc::new(MtlsChannels::new(&spec.root, &spec.identity)?);
    let contacts = Contacts::default();
    let (raft, _storage) = swarm::raft::start(
        spec.id,
        &spec.dir,
        &settings,
        "bench",
        Arc::new(StoreFsm(store.clone())),
        channels,
        contacts.clone(),
    )
    .await?;
    let proposer = Proposer::new(raft.clone(), contacts, settings.election_timeout_max * 2);
    let listener = tokio::net::TcpListener::bind(spec.addr)
        .await
        .with_context(|| format!("binding {} (inside the node's namespace)", spec.addr))?;
    let revocations: Arc<dyn RevocationList> = Arc::new(NoRevocations);
    let tls = ServerTls::new(&spec.root, &spec.identity, revocations.clone())?;
    let incoming = TlsIncoming::new(listener, &tls);
    let authz = AuthzLayer::new(cluster_policy()?, revocations);
    Ok((raft, proposer, store, incoming, authz))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(round: usize, managers: usize, rate: f64, lat: &[f64]) -> Point {
        Point {
            round,
            managers,
            clients: 1,
            seconds: 1.0,
            writes: 0,
            writes_per_s: rate,
            latency_ms: Summary::of(lat),
            latencies_ms: lat.to_vec(),
            errors: 0,
            replicas_caught_up: true,
        }
    }

    #[test]
    fn rounds_aggregate_to_the_median_rate_and_pooled_latencies() {
        let points = [
            point(1, 3, 100.0, &[1.0]),
            point(1, 1, 50.0, &[9.0]),
            point(2, 3, 300.0, &[2.0, 3.0]),
            point(3, 3, 200.0, &[4.0]),
        ];
        let a = aggregate(&points, 3, 1);
        assert_eq!(a.writes_per_s.unwrap().p50, 200.0);
        let lat = a.latency_ms.unwrap();
        assert_eq!((lat.n, lat.min, lat.max), (4, 1.0, 4.0));
        assert!(aggregate(&points, 3, 64).writes_per_s.is_none());
    }

    #[test]
    fn options_default_to_1_and_64_clients() {
        let o = RaftOpts::new(false, None, None, None);
        assert_eq!(o.clients, vec![1, 64]);
        assert_eq!((o.duration, o.rounds), (Duration::from_secs(10), 3));
        let q = RaftOpts::new(true, None, None, None);
        assert!(q.duration < o.duration && q.rounds < o.rounds);
        assert_eq!(
            RaftOpts::new(true, Some(0.5), None, None).duration,
            Duration::from_millis(500)
        );
    }
}
