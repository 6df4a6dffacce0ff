//! The dispatcher: node sessions with the leader.
//!
//! Owns the leader's view of which nodes are alive: a node opens a session,
//! heartbeats within the period it is given, receives its assignments as a
//! stream and reports task status. A node that misses
//! [`MISSED_HEARTBEATS`] periods is marked DOWN in the store; one that opens
//! a session is marked READY. The period handed out grows with the number
//! of sessions ([`node_period`]), so the leader's heartbeat load stays
//! bounded however many nodes there are; a heartbeat itself only touches
//! the session map, never the store. It also keeps the managers' status (leader,
//! reachability) current in the store, so every manager shows the same
//! `node ls`. Runs only on the leader: on other managers every call answers
//! FAILED_PRECONDITION naming the leader. Decisions about what to do with a
//! down node's tasks belong to the orchestrators, not here.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use swarm_proto::v1::{self as pb, dispatcher_server};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

pub mod netstate;
pub mod router;

use crate::manager::leader::MAX_ACTIONS_PER_PROPOSAL;
use crate::{
    ca::{self, NodeIdentity},
    manager::{Manager, caserver::manager_addrs},
    store::{WriteTx, new_id},
};
use router::{Routed, Router};

/// Default heartbeat period: a dead node is marked down within
/// `period × MISSED_HEARTBEATS` plus one check, about 4 s (docker: 15 s).
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(1);
/// Periods a node may miss before it is marked down.
pub const MISSED_HEARTBEATS: u32 = 3;
/// Status updates one combined write takes at most: the reports that
/// arrived meanwhile are taken until they reach this many updates (a report
/// is never split). Bounded so that one write never holds the write lock
/// for long; it goes out as proposals of at most
/// [`MAX_ACTIONS_PER_PROPOSAL`] actions, several in Raft at once.
pub const MAX_UPDATES_PER_WRITE: usize = 4 * MAX_ACTIONS_PER_PROPOSAL;

/// Heartbeats per second the leader takes from all nodes together before it
/// lengthens every node's period (as Nomad's `max_heartbeats_per_second`):
/// up to this many nodes the configured period holds; with more, the
/// period grows with the node count, so 10,000 nodes heartbeat every 5 s
/// (docker's default period) and are marked down after about 15 s.
pub const HEARTBEATS_PER_SECOND: u32 = 2000;
/// Each period handed out is longer by a random part of up to this
/// fraction, so nodes that connected together drift apart instead of
/// heartbeating in bursts.
pub const HEARTBEAT_JITTER: f64 = 0.1;

/// The period to give one node: the configured one, or longer when
/// `sessions` nodes at that period would exceed [`HEARTBEATS_PER_SECOND`];
/// plus `jitter` (0 to 1) times [`HEARTBEAT_JITTER`] of it.
#[must_use]
pub fn node_period(configured: Duration, sessions: usize, jitter: f64) -> Duration {
    #[allow(clippy::cast_precision_loss)]
    let spread = Duration::from_secs_f64(sessions as f64 / f64::from(HEARTBEATS_PER_SECOND));
    let base = configured.max(spread);
    base + base.mul_f64(HEARTBEAT_JITTER * jitter.clamp(0.0, 1.0))
}

/// Whether a node without a session still has time to open one: `grace`
/// counts from when this manager began to lead or, for a node that joined
/// later, from its join (a simulator or a busy node may take a while
/// between its join and its first session).
#[must_use]
pub fn awaiting_session(
    since_leading: Duration,
    since_joined: Option<Duration>,
    grace: Duration,
) -> bool {
    since_joined.map_or(since_leading, |j| j.min(since_leading)) <= grace
}

/// How long ago the node joined (its creation in the store), if known.
fn joined_ago(node: &pb::Node, now: std::time::SystemTime) -> Option<Duration> {
    let created = node.meta.as_ref()?.created_at?;
    let created = std::time::SystemTime::try_from(created).ok()?;
    // A clock that went back counts as "just joined".
    Some(now.duration_since(created).unwrap_or_default())
}

/// What the leader's periodic check does with one node.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Keep,
    /// Silent past its grace: mark it down and end its session.
    Down,
    /// Marked down, yet its session is alive: the down write and the
    /// opening of its new session crossed (the session's "ready" was
    /// judged against the view before the "down" committed).
    Ready,
}

/// `session`: whether the node's session is alive, if it has one;
/// `awaiting`: whether a node without one still has time to open one.
fn verdict(session: Option<bool>, awaiting: impl FnOnce() -> bool, state: i32) -> Verdict {
    let down = state == pb::NodeState::Down as i32;
    match session {
        Some(true) if down => Verdict::Ready,
        Some(true) => Verdict::Keep,
        Some(false) => Verdict::Down,
        None if down || awaiting() => Verdict::Keep,
        None => Verdict::Down,
    }
}

/// The status reports of one combined write that would change something,
/// newest per task: task ID → (node, status). `task` looks a task up in
/// the current view. A report is dropped if its task is gone or on
/// another node, if it goes back (states only move forward), or if it is
/// the status the task already has: a node resends every status on a new
/// session, and after a failover that is every task in the swarm. Records
/// the scheduling delay of tasks that reach RUNNING.
fn reports_to_write<'a, T: std::ops::Deref<Target = pb::Task>>(
    task: impl Fn(&str) -> Option<T>,
    reports: impl Iterator<
        Item = (
            &'a str,
            &'a [pb::update_task_status_request::TaskStatusUpdate],
        ),
    >,
) -> HashMap<&'a str, (&'a str, &'a pb::TaskStatus)> {
    let mut latest: HashMap<&str, (&str, &pb::TaskStatus)> = HashMap::new();
    for (node_id, updates) in reports {
        for u in updates {
            let Some(t) = task(&u.task_id) else {
                continue; // Removed meanwhile: nothing to report to.
            };
            // Moved to another node meanwhile: not this node's to report.
            if t.node_id != node_id {
                continue;
            }
            let Some(status) = u.status.as_ref() else {
                continue;
            };
            let known = (latest.get(u.task_id.as_str()).map(|(_, s)| *s)).or(t.status.as_ref());
            let current = known.map_or(0, |s| s.state);
            if status.state < current || known == Some(status) {
                continue;
            }
            if status.state >= pb::TaskState::Running as i32
                && current < pb::TaskState::Running as i32
                && let Some(created) = t.meta.as_ref().and_then(|m| m.created_at)
                && let Ok(created) = std::time::SystemTime::try_from(created)
                && let Ok(delay) = std::time::SystemTime::now().duration_since(created)
            {
                crate::metrics::metrics()
                    .dispatcher_scheduling_delay
                    .observe(delay.as_secs_f64());
            }
            latest.insert(u.task_id.as_str(), (node_id, status));
        }
    }
    latest
}

/// How long a node given `period` may stay silent before it is marked down.
#[must_use]
pub fn grace(period: Duration) -> Duration {
    period * MISSED_HEARTBEATS
}
/// Metadata key carrying the leader's address on a redirect.
pub const LEADER_ADDR_KEY: &str = "swarm-leader-addr";

struct Session {
    id: String,
    /// The session is being opened: its node cannot heartbeat before it
    /// has the session's ID, which goes out once the node's READY is
    /// written. That write can take longer than the grace on a busy
    /// leader (7 s against 3 s after an election during a 100,000-task
    /// placement); judged by `last_seen` meanwhile, such sessions were
    /// ended before their first beat, hundreds of nodes opened new ones
    /// every 7 s, and none ever stayed. See [`Opening`].
    opening: bool,
    last_seen: Instant,
    /// Silence allowed after `last_seen`: the grace of the period this node
    /// was last given.
    grace: Duration,
    /// Cancelled when the session is dropped (replaced, or leadership
    /// lost): ends the session's streams.
    ended: CancellationToken,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.ended.cancel();
    }
}

fn publish_sessions(n: usize) {
    crate::metrics::metrics()
        .dispatcher_sessions
        .set(i64::try_from(n).unwrap_or(i64::MAX));
}

impl Session {
    fn alive(&self, now: Instant) -> bool {
        self.opening || now.saturating_duration_since(self.last_seen) <= self.grace
    }
}

/// A session being opened: dropped before [`Opening::opened`] (the node's
/// write failed, the call was abandoned), it removes the session, which
/// would otherwise never be judged dead.
struct Opening {
    sessions: Arc<Mutex<HashMap<String, Session>>>,
    node_id: String,
    session_id: String,
    done: bool,
}

impl Opening {
    /// Puts `session` (opening) in place of any other session of
    /// `node_id`. Returns how many sessions there are now.
    fn begin(
        sessions: &Arc<Mutex<HashMap<String, Session>>>,
        node_id: &str,
        mut session: Session,
    ) -> (Opening, usize) {
        session.opening = true;
        let opening = Opening {
            sessions: Arc::clone(sessions),
            node_id: node_id.to_owned(),
            session_id: session.id.clone(),
            done: false,
        };
        let mut map = sessions.lock().unwrap_or_else(PoisonError::into_inner);
        map.insert(node_id.to_owned(), session);
        (opening, map.len())
    }

    /// The session is open: its grace counts from now. `false` if it was
    /// replaced or dropped meanwhile.
    fn opened(mut self) -> bool {
        self.done = true;
        let mut sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        match sessions.get_mut(&self.node_id) {
            Some(s) if s.id == self.session_id => {
                s.opening = false;
                s.last_seen = Instant::now();
                true
            }
            _ => false,
        }
    }
}

impl Drop for Opening {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let open = {
            let mut sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
            if sessions
                .get(&self.node_id)
                .is_some_and(|s| s.id == self.session_id)
            {
                sessions.remove(&self.node_id);
            }
            sessions.len()
        };
        publish_sessions(open);
    }
}

#[derive(Clone)]
pub struct Dispatcher {
    m: Manager,
    sessions: Arc<Mutex<HashMap<String, Session>>>,
    /// When this manager last became leader: nodes get a grace period
    /// from then to reconnect before they are marked down.
    leader_since: Arc<Mutex<Option<Instant>>>,
    router: Router,
    /// Task status reports waiting for the next combined write.
    reports: mpsc::UnboundedSender<Report>,
    reports_rx: Arc<Mutex<Option<mpsc::UnboundedReceiver<Report>>>>,
    /// Node states of opening sessions waiting for the next combined write.
    node_writes: mpsc::UnboundedSender<NodeWrite>,
    node_writes_rx: Arc<Mutex<Option<mpsc::UnboundedReceiver<NodeWrite>>>>,
    /// The manager list of the last session message, by store version and
    /// leader: thousands of sessions refreshing at once compute it once.
    managers: Arc<Mutex<Option<ManagersAt>>>,
}

/// One node's `UpdateTaskStatus` call, waiting for its write.
struct Report {
    node_id: String,
    updates: Vec<pb::update_task_status_request::TaskStatusUpdate>,
    done: tokio::sync::oneshot::Sender<Result<(), Status>>,
}

/// One opening session's node write, waiting for the next combined write.
struct NodeWrite {
    node_id: String,
    state: pb::NodeState,
    message: String,
    description: Option<pb::NodeDescription>,
    addr: Option<String>,
    done: tokio::sync::oneshot::Sender<Result<(), Status>>,
}

/// Node writes one combined write takes at most.
const MAX_NODE_WRITES: usize = crate::manager::leader::MAX_ACTIONS_PER_PROPOSAL;

struct ManagersAt {
    version: u64,
    leader: Option<String>,
    addrs: Vec<String>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Dispatcher")
    }
}

/// The cluster's configured heartbeat period (`--dispatcher-heartbeat`).
fn heartbeat_period(m: &Manager) -> Duration {
    m.cluster()
        .as_deref()
        .and_then(|c| c.spec.as_ref())
        .and_then(|s| s.dispatcher.as_ref())
        .and_then(|d| d.heartbeat_period)
        .and_then(|p| Duration::try_from(p).ok())
        .filter(|p| !p.is_zero())
        .unwrap_or(DEFAULT_HEARTBEAT)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Dispatcher {
    pub fn new(m: Manager) -> Self {
        let (reports_tx, reports_rx) = mpsc::unbounded_channel();
        let (nodes_tx, nodes_rx) = mpsc::unbounded_channel();
        Dispatcher {
            node_writes: nodes_tx,
            node_writes_rx: Arc::new(Mutex::new(Some(nodes_rx))),
            m,
            sessions: Arc::new(Mutex::new(HashMap::new())),
            leader_since: Arc::new(Mutex::new(None)),
            router: Router::default(),
            reports: reports_tx,
            reports_rx: Arc::new(Mutex::new(Some(reports_rx))),
            managers: Arc::new(Mutex::new(None)),
        }
    }

    fn managers(&self) -> Vec<String> {
        let version = self.m.store.version();
        let leader = self.m.proposer.leader_addr();
        let mut cache = self.managers.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = cache.as_ref()
            && c.version == version
            && c.leader == leader
        {
            return c.addrs.clone();
        }
        let addrs = manager_addrs(&self.m);
        *cache = Some(ManagersAt {
            version,
            leader,
            addrs: addrs.clone(),
        });
        addrs
    }

    pub fn into_server(self) -> dispatcher_server::DispatcherServer<Self> {
        dispatcher_server::DispatcherServer::new(self)
    }

    /// One heartbeat from `node_id`'s session: the node is alive, and is
    /// told the period to keep.
    fn beat(&self, node_id: &str, session_id: &str) -> Result<pb::HeartbeatResponse, Status> {
        if !self.m.is_leader() {
            return Err(self.not_leader());
        }
        let period = self.period_now();
        self.check_session(node_id, session_id, Some(period))?;
        crate::metrics::metrics().dispatcher_heartbeats.inc();
        Ok(pb::HeartbeatResponse {
            period_ms: millis(period),
        })
    }

    fn not_leader(&self) -> Status {
        let leader = self.m.proposer.leader_addr();
        let msg = match &leader {
            Some(a) => format!("this manager is not the leader; the leader is at {a}"),
            None => "this manager is not the leader and no leader is known".to_string(),
        };
        let mut s = Status::failed_precondition(msg);
        if let Some(a) = leader
            && let Ok(v) = a.parse()
        {
            s.metadata_mut().insert(LEADER_ADDR_KEY, v);
        }
        s
    }

    fn caller<T>(&self, req: &Request<T>) -> Result<NodeIdentity, Status> {
        ca::peer_identity(req)
            .cloned()
            .ok_or_else(|| Status::unauthenticated("sessions need a node certificate"))
    }

    /// The period to give the next node that asks, for the sessions open now.
    fn period_now(&self) -> Duration {
        let sessions = self
            .sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        node_period(heartbeat_period(&self.m), sessions, rand::random())
    }

    /// Checks the session and notes the node alive; with `period`, the
    /// node was just given that period.
    fn check_session(
        &self,
        node_id: &str,
        session_id: &str,
        period: Option<Duration>,
    ) -> Result<(), Status> {
        let mut s = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        match s.get_mut(node_id) {
            Some(sess) if sess.id == session_id => {
                sess.last_seen = Instant::now();
                if let Some(p) = period {
                    sess.grace = grace(p);
                }
                Ok(())
            }
            _ => Err(Status::not_found(
                "session not found (the leader changed or the session expired); open a new session",
            )),
        }
    }

    /// Writes the node's status; `description` and `addr` when given.
    /// Waits for the next combined write: when thousands of nodes open
    /// sessions at once (a new leader, a join storm), one Raft entry each
    /// kept commits seconds behind, sessions timed out and were opened
    /// again, each with another write.
    async fn set_node_state(
        &self,
        node_id: &str,
        state: pb::NodeState,
        message: &str,
        description: Option<pb::NodeDescription>,
        addr: Option<String>,
    ) -> Result<(), Status> {
        let (done, result) = tokio::sync::oneshot::channel();
        self.node_writes
            .send(NodeWrite {
                node_id: node_id.to_string(),
                state,
                message: message.to_string(),
                description,
                addr,
                done,
            })
            .map_err(|_| Status::unavailable("the dispatcher is shutting down"))?;
        result
            .await
            .map_err(|_| Status::unavailable("the dispatcher is shutting down"))?
    }

    /// Writes opening sessions' node states: everything that queued up
    /// while the previous write was in flight goes out together.
    async fn write_nodes(
        self,
        mut rx: mpsc::UnboundedReceiver<NodeWrite>,
        shutdown: CancellationToken,
    ) {
        while let Some(batch) = next_batch(&mut rx, &shutdown, MAX_NODE_WRITES, |_| 1).await {
            let results = self.write_node_batch(&batch).await;
            for (w, r) in batch.into_iter().zip(results) {
                let _ = w.done.send(r);
            }
        }
    }

    /// One result per write, in order.
    async fn write_node_batch(&self, batch: &[NodeWrite]) -> Vec<Result<(), Status>> {
        if !self.m.is_leader() {
            return batch.iter().map(|_| Err(self.not_leader())).collect();
        }
        let _w = self.m.write_lock().await;
        let view = self.m.store.view();
        let mut results = Vec::with_capacity(batch.len());
        // Node ID → (as stored, as written).
        let mut nodes: HashMap<&str, (Arc<pb::Node>, pb::Node)> = HashMap::new();
        for w in batch {
            let Some(node) = view.get::<pb::Node>(&w.node_id) else {
                results.push(Some(Status::permission_denied(
                    "this node is not part of the swarm",
                )));
                continue;
            };
            results.push(None);
            let (_, n) = nodes
                .entry(w.node_id.as_str())
                .or_insert_with(|| (node.clone(), (*node).clone()));
            apply_node_write(n, w);
        }
        drop(view);
        // Nothing new is not written: every write bumps the version and
        // makes a concurrent `node update` retry.
        let changed: Vec<pb::Node> = nodes
            .into_values()
            .filter(|(old, n)| **old != *n)
            .map(|(_, n)| n)
            .collect();
        let written = if changed.is_empty() {
            Ok(())
        } else {
            self.update_nodes(changed).await
        };
        results
            .into_iter()
            .map(|own| match own {
                Some(e) => Err(e),
                None => written.clone(),
            })
            .collect()
    }

    fn session_message(
        &self,
        node_id: &str,
        session_id: &str,
        period: Duration,
    ) -> pb::SessionMessage {
        pb::SessionMessage {
            session_id: session_id.to_string(),
            node: self
                .m
                .store
                .view()
                .get::<pb::Node>(node_id)
                .map(|n| (*n).clone()),
            managers: self.managers(),
            heartbeat_period_ms: millis(period),
        }
    }

    /// The leader's periodic duties: mark silent nodes down, keep manager
    /// status current. Runs on every manager, acts only while leader.
    pub async fn run_leader_duties(self, shutdown: CancellationToken) {
        let routing = tokio::spawn(
            self.router
                .clone()
                .run(self.m.store.clone(), shutdown.clone()),
        );
        let rx = self
            .reports_rx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let writing = rx.map(|rx| tokio::spawn(self.clone().write_reports(rx, shutdown.clone())));
        let rx = self
            .node_writes_rx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let node_writing =
            rx.map(|rx| tokio::spawn(self.clone().write_nodes(rx, shutdown.clone())));
        self.leader_duties(shutdown).await;
        // Ends every session's streams: their connections may outlive the
        // cluster port's server.
        self.sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        let _ = routing.await;
        for w in [writing, node_writing].into_iter().flatten() {
            let _ = w.await;
        }
    }

    /// Writes task status reports: everything that arrived while the
    /// previous write was in flight goes out as one write (group commit),
    /// so thousands of nodes reporting at once cost a few Raft entries, not
    /// one each. One write at a time: reports carry no version, so several
    /// could be in Raft at once, but 3 at once placed 100,000 tasks on
    /// 1,000 nodes no faster within this machine's noise.
    async fn write_reports(
        self,
        mut rx: mpsc::UnboundedReceiver<Report>,
        shutdown: CancellationToken,
    ) {
        while let Some(batch) =
            next_batch(&mut rx, &shutdown, MAX_UPDATES_PER_WRITE, report_size).await
        {
            let updates: usize = batch.iter().map(|r| r.updates.len()).sum();
            let started = Instant::now();
            let result = self.write_batch(&batch).await;
            tracing::debug!(
                reports = batch.len(),
                updates,
                ms = started.elapsed().as_millis(),
                ok = result.is_ok(),
                "task status write"
            );
            for r in batch {
                let _ = r.done.send(result.clone());
            }
        }
    }

    async fn write_batch(&self, batch: &[Report]) -> Result<(), Status> {
        if !self.m.is_leader() {
            return Err(self.not_leader());
        }
        // The view only filters out reports that would change nothing; the
        // lock keeps it in step with the leader loops' writes.
        let _w = self.m.write_lock().await;
        let view = self.m.store.view();
        let latest = reports_to_write(
            |id| view.get::<pb::Task>(id),
            batch
                .iter()
                .map(|r| (r.node_id.as_str(), r.updates.as_slice())),
        );
        if latest.is_empty() {
            return Ok(());
        }
        let mut actions: Vec<pb::StoreAction> = latest
            .into_iter()
            .map(|(task, (node, status))| crate::store::status_report(task, node, status.clone()))
            .collect();
        drop(view);
        let mut chunks = Vec::new();
        while !actions.is_empty() {
            let rest = actions.split_off(crate::manager::leader::proposal_len(&actions));
            chunks.push(std::mem::replace(&mut actions, rest));
        }
        self.m
            .proposer
            .propose_pipelined(chunks)
            .await
            .map_err(crate::manager::caserver::propose_status)?;
        Ok(())
    }

    async fn leader_duties(&self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if !self.m.is_leader() {
                *self
                    .leader_since
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = None;
                self.sessions
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clear();
                publish_sessions(0);
                continue;
            }
            let since = *self
                .leader_since
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get_or_insert_with(Instant::now);
            if let Err(e) = self.reconcile(since).await {
                tracing::debug!(error = %e, "dispatcher duties: will retry");
            }
        }
    }

    async fn reconcile(&self, leader_since: Instant) -> Result<(), Status> {
        let now = Instant::now();
        let wall_now = std::time::SystemTime::now();
        let metrics = self.m.raft.metrics().borrow().clone();
        let leader_raft = metrics.current_leader;
        let voters: Vec<u64> = metrics.membership_config.membership().voter_ids().collect();
        let view = self.m.store.view();
        // A node without a session since this manager leads may have been
        // given the longest period by the previous leader: the one for
        // every node in the store.
        let no_session_grace = grace(node_period(
            heartbeat_period(&self.m),
            view.count::<pb::Node>(),
            1.0,
        ));
        let mut updates = Vec::new();
        {
            let mut sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
            let open_before = sessions.len();
            // Runs every 500 ms over every node: nodes are copied only to
            // be changed (copying all 10,000 took a sixth of the leader's
            // heartbeat-time CPU).
            for node in view.list::<pb::Node>() {
                let id = node.meta.as_ref().map_or("", |m| m.id.as_str());
                let mut changed: Option<pb::Node> = None;
                let session = sessions.get(id).map(|s| s.alive(now));
                let awaiting = || {
                    awaiting_session(
                        now.saturating_duration_since(leader_since),
                        joined_ago(&node, wall_now),
                        no_session_grace,
                    )
                };
                let state = node.status.as_ref().map_or(0, |s| s.state);
                match verdict(session, awaiting, state) {
                    Verdict::Keep => {}
                    Verdict::Down => {
                        // Its session ends with it: the node must open a
                        // new one (and resend its statuses) to be ready
                        // again, as in swarmkit.
                        sessions.remove(id);
                        if state != pb::NodeState::Down as i32 {
                            let n = changed.get_or_insert_with(|| (*node).clone());
                            let st = n.status.get_or_insert_with(Default::default);
                            st.state = pb::NodeState::Down as i32;
                            st.message = "heartbeat failure".into();
                            tracing::info!(node_id = %id, "node marked down: heartbeat failure");
                        }
                    }
                    Verdict::Ready => {
                        let n = changed.get_or_insert_with(|| (*node).clone());
                        let st = n.status.get_or_insert_with(Default::default);
                        st.state = pb::NodeState::Ready as i32;
                        st.message.clear();
                        tracing::info!(node_id = %id, "node ready again: its session is alive");
                    }
                }
                if let Some(ms) = node.manager_status.as_ref() {
                    let leader = Some(ms.raft_id) == leader_raft;
                    let reachable = leader
                        || (voters.contains(&ms.raft_id)
                            && self.m.proposer.peer_reachable(ms.raft_id));
                    let r = if reachable {
                        pb::Reachability::Reachable
                    } else {
                        pb::Reachability::Unreachable
                    } as i32;
                    if ms.leader != leader || ms.reachability != r {
                        tracing::info!(
                            node_id = %id,
                            leader,
                            reachable,
                            "manager status changed"
                        );
                        let n = changed.get_or_insert_with(|| (*node).clone());
                        if let Some(ms) = n.manager_status.as_mut() {
                            ms.leader = leader;
                            ms.reachability = r;
                        }
                    }
                }
                updates.extend(changed);
            }
            if sessions.len() != open_before {
                publish_sessions(sessions.len());
            }
        }
        if updates.is_empty() {
            return Ok(());
        }
        // After a leader change, thousands of nodes may come back at once:
        // in bounded entries.
        let _w = self.m.write_lock().await;
        self.update_nodes(updates).await
    }

    /// Writes `nodes` in bounded entries. The caller holds the write lock.
    async fn update_nodes(&self, nodes: Vec<pb::Node>) -> Result<(), Status> {
        crate::manager::leader::propose_chunked(&self.m, |tx: &mut WriteTx| {
            for n in nodes {
                tx.update(n)?;
            }
            Ok::<(), crate::store::StoreError>(())
        })
        .await
        .map(|_| ())
        .map_err(update_status)
    }
}

type SessionStream = ReceiverStream<Result<pb::SessionMessage, Status>>;
type AssignmentsStream = ReceiverStream<Result<pb::AssignmentsMessage, Status>>;
type HeartbeatsStream = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = Result<pb::HeartbeatResponse, Status>> + Send>,
>;

#[tonic::async_trait]
impl dispatcher_server::Dispatcher for Dispatcher {
    type SessionStream = SessionStream;
    type AssignmentsStream = AssignmentsStream;
    type HeartbeatsStream = HeartbeatsStream;

    async fn session(
        &self,
        req: Request<pb::SessionRequest>,
    ) -> Result<Response<SessionStream>, Status> {
        if !self.m.is_leader() {
            return Err(self.not_leader());
        }
        let who = self.caller(&req)?;
        let remote = req
            .extensions()
            .get::<ca::PeerInfo>()
            .map(|p| p.remote_addr.ip().to_string());
        let r = req.into_inner();
        let session_id = new_id();
        let stop = CancellationToken::new();
        let period = self.period_now();
        let (opening, open) = Opening::begin(
            &self.sessions,
            &who.node_id,
            Session {
                id: session_id.clone(),
                opening: true,
                last_seen: Instant::now(),
                grace: grace(period),
                ended: stop.clone(),
            },
        );
        publish_sessions(open);
        self.set_node_state(
            &who.node_id,
            pb::NodeState::Ready,
            "",
            r.description,
            remote,
        )
        .await?;
        if !opening.opened() {
            return Err(Status::aborted(
                "the session was replaced while it opened (the node opened another, or \
                 the leader changed); open a new session",
            ));
        }
        tracing::info!(node_id = %who.node_id, %session_id, "session opened");

        let (tx, rx) = mpsc::channel(4);
        let first = self.session_message(&who.node_id, &session_id, period);
        let this = self.clone();
        let node_id = who.node_id.clone();
        let (_, mut sub) = self.router.subscribe(&self.m.store, &who.node_id);
        tokio::spawn(async move {
            let mut last = first.clone();
            if tx.send(Ok(first)).await.is_err() {
                return;
            }
            // No timer per session: losing leadership drops every session
            // (see `leader_duties`), which cancels `stop`.
            loop {
                tokio::select! {
                    () = stop.cancelled() => {
                        if !this.m.is_leader() {
                            let _ = tx.send(Err(this.not_leader())).await;
                        }
                        return;
                    }
                    () = tx.closed() => return,
                    item = sub.rx.recv() => match item {
                        None => return,
                        // Task changes go out on the assignments stream.
                        Some(Routed::Tasks { .. } | Routed::Net { .. }) => continue,
                        Some(Routed::Refresh | Routed::Resync(_)) => {}
                    },
                }
                let msg = this.session_message(&node_id, &session_id, period);
                if msg != last {
                    last = msg.clone();
                    if tx.send(Ok(msg)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn heartbeats(
        &self,
        req: Request<tonic::Streaming<pb::HeartbeatRequest>>,
    ) -> Result<Response<HeartbeatsStream>, Status> {
        if !self.m.is_leader() {
            return Err(self.not_leader());
        }
        let Some(who) = ca::peer_identity(&req) else {
            return Err(Status::unauthenticated("sessions need a node certificate"));
        };
        let node_id = who.node_id.to_string();
        // The stream lives as long as the node's session: it ends when the
        // session is replaced or dropped (leadership lost, the manager
        // stopping), even if its connection outlives the server.
        let ended = self
            .sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&node_id)
            .map(|s| s.ended.clone())
            .ok_or_else(|| Status::not_found("no session: open a session first"))?;
        let this = self.clone();
        // Answered in line as each beat arrives: no task or channel per
        // stream. The first error (a lost session, leadership gone) ends it.
        let answers = futures_util::StreamExt::map(req.into_inner(), move |beat| {
            this.beat(&node_id, &beat?.session_id)
        });
        let answers = futures_util::StreamExt::take_until(answers, ended.cancelled_owned());
        Ok(Response::new(Box::pin(answers)))
    }

    async fn assignments(
        &self,
        req: Request<pb::AssignmentsRequest>,
    ) -> Result<Response<AssignmentsStream>, Status> {
        if !self.m.is_leader() {
            return Err(self.not_leader());
        }
        let who = self.caller(&req)?;
        self.check_session(&who.node_id, &req.get_ref().session_id, None)?;
        let (tx, rx) = mpsc::channel(16);
        let node_id = who.node_id;
        let (view, mut sub) = self.router.subscribe(&self.m.store, &node_id);
        let store = self.m.store.clone();
        tokio::spawn(async move {
            let mut net = netstate::NodeNetState::new(&node_id);
            let full = |net: &mut netstate::NodeNetState, view: &crate::store::ReadTx| {
                let mut m = pb::AssignmentsMessage {
                    r#type: pb::assignments_message::Type::Full as i32,
                    updated_tasks: view
                        .tasks_by_node(&node_id)
                        .iter()
                        .filter(|t| is_assigned(t))
                        .map(|t| (**t).clone())
                        .collect(),
                    ..Default::default()
                };
                net.reset();
                net.sync_all(view, &mut m);
                m
            };
            if tx.send(Ok(full(&mut net, &view))).await.is_err() {
                return;
            }
            let from = sub.from_version;
            let mut next: Option<Routed> = None;
            loop {
                let item = match next.take() {
                    Some(i) => i,
                    None => tokio::select! {
                        () = tx.closed() => return,
                        item = sub.rx.recv() => match item {
                            Some(i) => i,
                            None => return,
                        },
                    },
                };
                let item = match item {
                    Routed::Tasks {
                        version,
                        mut events,
                    } if version > from => {
                        next = take_queued_tasks(&mut sub.rx, from, &mut events);
                        Routed::Tasks { version, events }
                    }
                    other => other,
                };
                let msg = match item {
                    Routed::Refresh => continue,
                    // Already in the full set sent first.
                    Routed::Tasks { version, .. } | Routed::Net { version, .. }
                        if version <= from =>
                    {
                        continue;
                    }
                    Routed::Resync(view) => full(&mut net, &view),
                    Routed::Net { events, .. } => {
                        let mut m = pb::AssignmentsMessage {
                            r#type: pb::assignments_message::Type::Incremental as i32,
                            ..Default::default()
                        };
                        net.sync(&store.view(), &events, false, &mut m);
                        if is_empty(&m) {
                            continue;
                        }
                        m
                    }
                    Routed::Tasks { events, .. } => {
                        let mut m = pb::AssignmentsMessage {
                            r#type: pb::assignments_message::Type::Incremental as i32,
                            ..Default::default()
                        };
                        task_changes(&node_id, &events, &mut m);
                        let on_networks = events.iter().any(|e| {
                            [Some(&e.object), e.old.as_ref()]
                                .into_iter()
                                .flatten()
                                .any(|o| {
                                    o.as_task().is_some_and(|t| {
                                        netstate::task_network_ids(t).next().is_some()
                                    })
                                })
                        });
                        if on_networks {
                            net.sync(&store.view(), &events, true, &mut m);
                        }
                        if is_empty(&m) {
                            continue;
                        }
                        m
                    }
                };
                if tx.send(Ok(msg)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn update_task_status(
        &self,
        req: Request<pb::UpdateTaskStatusRequest>,
    ) -> Result<Response<pb::UpdateTaskStatusResponse>, Status> {
        if !self.m.is_leader() {
            return Err(self.not_leader());
        }
        let who = self.caller(&req)?;
        self.check_session(&who.node_id, &req.get_ref().session_id, None)?;
        // A task on another node is refused at once; the rest waits for
        // the next combined write.
        let view = self.m.store.view();
        for u in &req.get_ref().updates {
            if let Some(t) = view.get::<pb::Task>(&u.task_id)
                && t.node_id != who.node_id
            {
                return Err(Status::permission_denied(format!(
                    "task {} is not assigned to this node",
                    u.task_id
                )));
            }
        }
        drop(view);
        let (done, wait) = tokio::sync::oneshot::channel();
        self.reports
            .send(Report {
                node_id: who.node_id,
                updates: req.into_inner().updates,
                done,
            })
            .map_err(|_| Status::unavailable("the dispatcher is shutting down"))?;
        wait.await
            .map_err(|_| Status::unavailable("the dispatcher is shutting down"))??;
        Ok(Response::new(pb::UpdateTaskStatusResponse {}))
    }
}

/// Task events one assignments message takes at most (the commits that
/// queued up are merged until they reach it; a commit is never split).
const MAX_EVENTS_PER_MESSAGE: usize = 2000;

/// Task commits that queued up behind one go out with it, as one message:
/// while the scheduler commits 100,000 assignments in chunks, every chunk
/// has a task or two for each of a thousand nodes, and a message per chunk
/// and node costs the leader a frame, a TLS record and a write each.
/// Appends the queued commits' events (newer than `from`) to `events`
/// until [`MAX_EVENTS_PER_MESSAGE`]; returns the item that stopped it, if
/// it was not a task commit, to be handled next.
fn take_queued_tasks(
    rx: &mut mpsc::UnboundedReceiver<Routed>,
    from: u64,
    events: &mut Vec<crate::store::Event>,
) -> Option<Routed> {
    while events.len() < MAX_EVENTS_PER_MESSAGE {
        match rx.try_recv() {
            Ok(Routed::Tasks {
                version,
                events: more,
            }) => {
                if version > from {
                    events.extend(more);
                }
            }
            Ok(other) => return Some(other),
            Err(_) => break,
        }
    }
    None
}

/// Adds what `events` (commits in order) change for `node_id` to `m`: the
/// newest version of each task of the node with a change worth sending,
/// and the tasks it lost (removed, or moved to another node).
fn task_changes(node_id: &str, events: &[crate::store::Event], m: &mut pb::AssignmentsMessage) {
    // Task ID → (worth sending, newest version; None: gone from the node),
    // in the order the tasks first appear.
    let mut order: Vec<&str> = Vec::new();
    let mut latest: HashMap<&str, (bool, Option<&pb::Task>)> = HashMap::new();
    for e in events {
        let Some(t) = e.object.as_task() else {
            continue;
        };
        let id = t.meta.as_ref().map_or("", |m| m.id.as_str());
        let removed = matches!(e.kind, crate::store::EventKind::Removed) || t.node_id != node_id;
        if !removed && !is_assigned(t) {
            // Not the node's yet (a global task still being allocated).
            continue;
        }
        let worth = removed || worth_sending(e.old.as_ref().and_then(|o| o.as_task()), t);
        let now = (!removed).then_some(t);
        latest
            .entry(id)
            .and_modify(|(w, newest)| {
                *w |= worth;
                *newest = now;
            })
            .or_insert_with(|| {
                order.push(id);
                (worth, now)
            });
    }
    for id in order {
        match latest.get(id) {
            Some((true, Some(t))) => m.updated_tasks.push((*t).clone()),
            Some((true, None)) => m.removed_task_ids.push(id.to_string()),
            _ => {}
        }
    }
}

/// Sets what `w` says on `n`.
fn apply_node_write(n: &mut pb::Node, w: &NodeWrite) {
    let status = n.status.get_or_insert_with(Default::default);
    status.state = w.state as i32;
    status.message.clone_from(&w.message);
    if let Some(a) = &w.addr {
        status.addr.clone_from(a);
    }
    if let Some(d) = &w.description {
        n.description = Some(d.clone());
    }
}

fn report_size(r: &Report) -> usize {
    r.updates.len()
}

/// Waits for the next item (`None` on shutdown, or once every sender is
/// gone), then [`gather`]s what else is queued.
async fn next_batch<T>(
    rx: &mut mpsc::UnboundedReceiver<T>,
    shutdown: &CancellationToken,
    limit: usize,
    weight: impl Fn(&T) -> usize,
) -> Option<Vec<T>> {
    let first = tokio::select! {
        () = shutdown.cancelled() => return None,
        item = rx.recv() => item?,
    };
    Some(gather(first, rx, limit, weight))
}

/// `first` and what is queued behind it, in order, until their `weight`
/// reaches `limit` (an item is never split, so one above it goes alone).
fn gather<T>(
    first: T,
    rx: &mut mpsc::UnboundedReceiver<T>,
    limit: usize,
    weight: impl Fn(&T) -> usize,
) -> Vec<T> {
    let mut total = weight(&first);
    let mut batch = vec![first];
    while total < limit
        && let Ok(item) = rx.try_recv()
    {
        total += weight(&item);
        batch.push(item);
    }
    batch
}

fn update_status(e: crate::manager::UpdateError) -> Status {
    match e {
        crate::manager::UpdateError::Store(e) => Status::internal(e.to_string()),
        crate::manager::UpdateError::Propose(e) => crate::manager::caserver::propose_status(e),
    }
}

/// Whether a task on a node is the node's to run: the scheduler (or, for
/// global tasks, which carry their node from the start, the allocator and
/// scheduler) is done with it. Until then it has no addresses yet.
fn is_assigned(t: &pb::Task) -> bool {
    t.status.as_ref().map_or(0, |s| s.state) >= pb::TaskState::Assigned as i32
}

/// Whether a node must hear of a task's new version (swarmkit's rule): not
/// when only its status and meta moved past ASSIGNED, which is the node's
/// own report coming back. Statuses up to ASSIGNED come from the managers
/// and are always sent.
fn worth_sending(old: Option<&pb::Task>, new: &pb::Task) -> bool {
    let Some(old) = old else {
        return true;
    };
    let state = new.status.as_ref().map_or(0, |s| s.state);
    state <= pb::TaskState::Assigned as i32 || !same_but_status(old, new)
}

/// Whether two versions of a task differ at most in meta and status.
/// Every other field is named, so a new field has to be decided on here.
fn same_but_status(a: &pb::Task, b: &pb::Task) -> bool {
    let pb::Task {
        meta: _,
        status: _,
        spec,
        service_id,
        slot,
        node_id,
        service_version,
        service_annotations,
        desired_state,
        networks,
        endpoint,
        job_iteration,
    } = a;
    *desired_state == b.desired_state
        && *slot == b.slot
        && *service_version == b.service_version
        && *job_iteration == b.job_iteration
        && *node_id == b.node_id
        && *service_id == b.service_id
        && *networks == b.networks
        && *endpoint == b.endpoint
        && *service_annotations == b.service_annotations
        && *spec == b.spec
}

/// Whether an incremental message carries nothing.
fn is_empty(m: &pb::AssignmentsMessage) -> bool {
    m.updated_tasks.is_empty()
        && m.removed_task_ids.is_empty()
        && !crate::network::view::has_overlay_state(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(node: &str, updates: usize) -> Report {
        Report {
            node_id: node.into(),
            updates: vec![Default::default(); updates],
            done: tokio::sync::oneshot::channel().0,
        }
    }

    #[test]
    fn the_check_ends_silent_sessions_and_revives_nodes_with_live_ones() {
        let (down, ready) = (pb::NodeState::Down as i32, pb::NodeState::Ready as i32);
        let never = || -> bool { panic!("only asked without a session") };
        assert_eq!(verdict(Some(true), never, ready), Verdict::Keep);
        assert_eq!(verdict(Some(true), never, down), Verdict::Ready);
        assert_eq!(verdict(Some(false), never, ready), Verdict::Down);
        // A dead session of a node already down still ends.
        assert_eq!(verdict(Some(false), never, down), Verdict::Down);
        assert_eq!(verdict(None, || true, ready), Verdict::Keep);
        assert_eq!(verdict(None, || false, ready), Verdict::Down);
        assert_eq!(verdict(None, || false, down), Verdict::Keep);
    }

    #[test]
    fn a_node_without_a_session_gets_the_grace_from_its_join_if_later() {
        let s = Duration::from_secs;
        let grace = s(3);
        // Joined long before this manager led: counted from leadership.
        assert!(awaiting_session(s(2), Some(s(100)), grace));
        assert!(!awaiting_session(s(4), Some(s(100)), grace));
        // Joined after: counted from the join.
        assert!(awaiting_session(s(60), Some(s(1)), grace));
        assert!(!awaiting_session(s(60), Some(s(4)), grace));
        // No join time known: leadership alone.
        assert!(!awaiting_session(s(4), None, grace));

        let mut node = crate::store::testutil::node("n", "n");
        let now = std::time::SystemTime::UNIX_EPOCH + s(1000);
        assert_eq!(joined_ago(&node, now), None);
        node.meta.get_or_insert_with(Default::default).created_at =
            Some((std::time::SystemTime::UNIX_EPOCH + s(990)).into());
        assert_eq!(joined_ago(&node, now), Some(s(10)));
        // Created "in the future" (clocks differ): just joined.
        assert_eq!(
            joined_ago(&node, std::time::SystemTime::UNIX_EPOCH),
            Some(Duration::ZERO)
        );
    }

    /// `t` in state `s`, one version on.
    fn with_state(t: &pb::Task, s: pb::TaskState) -> pb::Task {
        let mut t = t.clone();
        t.status = Some(pb::TaskStatus {
            state: s as i32,
            ..Default::default()
        });
        t.meta.get_or_insert_with(Default::default).version += 1;
        t
    }

    #[test]
    fn a_nodes_own_status_report_is_not_sent_back_to_it() {
        let base = crate::store::testutil::task("t", "s", 1, "n");
        let assigned = with_state(&base, pb::TaskState::Assigned);
        let running = with_state(&assigned, pb::TaskState::Running);
        // A new task, and the scheduler's assignment: sent.
        assert!(worth_sending(None, &assigned));
        assert!(worth_sending(Some(&base), &assigned));
        // The agent's own report: not sent back.
        assert!(!worth_sending(Some(&assigned), &running));
        // Anything else the managers change: sent.
        let mut stop = running.clone();
        stop.desired_state = pb::TaskState::Shutdown as i32;
        assert!(worth_sending(Some(&running), &stop));
        let mut moved = running.clone();
        moved.networks.push(Default::default());
        assert!(worth_sending(Some(&running), &moved));
        let mut respec = running.clone();
        respec.spec = Some(pb::TaskSpec {
            force_update: 1,
            ..Default::default()
        });
        assert!(worth_sending(Some(&running), &respec));
    }

    #[test]
    fn only_reports_that_change_a_task_are_written() {
        use pb::update_task_status_request::TaskStatusUpdate;
        let base = crate::store::testutil::task("t", "s", 1, "n");
        let running = std::sync::Arc::new(with_state(&base, pb::TaskState::Running));
        let tasks = [("t", running.clone())];
        let lookup = |id: &str| tasks.iter().find(|(k, _)| *k == id).map(|(_, t)| t.clone());
        let update = |id: &str, s: pb::TaskState| TaskStatusUpdate {
            task_id: id.into(),
            status: Some(pb::TaskStatus {
                state: s as i32,
                ..Default::default()
            }),
        };
        let resend = TaskStatusUpdate {
            task_id: "t".into(),
            status: running.status.clone(),
        };
        let check = |node: &str, updates: &[TaskStatusUpdate]| {
            reports_to_write(lookup, std::iter::once((node, updates)))
                .into_iter()
                .map(|(t, (n, s))| (t.to_string(), n.to_string(), s.state))
                .collect::<Vec<_>>()
        };
        // The status the task has (a resend to a new leader), one that goes
        // back, another node's, an unknown task's: nothing to write.
        let none: Vec<(String, String, i32)> = Vec::new();
        assert_eq!(check("n", std::slice::from_ref(&resend)), none);
        assert_eq!(check("n", &[update("t", pb::TaskState::Starting)]), none);
        assert_eq!(check("other", &[update("t", pb::TaskState::Failed)]), none);
        assert_eq!(check("n", &[update("gone", pb::TaskState::Failed)]), none);
        // A change is written, the newest of the batch.
        assert_eq!(
            check(
                "n",
                &[
                    resend.clone(),
                    update("t", pb::TaskState::Complete),
                    update("t", pb::TaskState::Failed),
                ]
            ),
            [(
                "t".to_string(),
                "n".to_string(),
                pb::TaskState::Failed as i32
            )]
        );
        // The same state with something else changed (its message) is a change.
        let mut said = resend.clone();
        if let Some(s) = said.status.as_mut() {
            s.message = "restarted probe".into();
        }
        assert_eq!(check("n", &[said]).len(), 1);
    }

    /// Two sessions of one node in one combined write: the later one's
    /// state wins; what it does not say is kept from the earlier one.
    #[test]
    fn node_writes_of_one_batch_compose_in_order() {
        let w = |state, desc: Option<&str>, addr: Option<&str>| NodeWrite {
            node_id: "n".into(),
            state,
            message: String::new(),
            description: desc.map(|h| pb::NodeDescription {
                hostname: h.into(),
                ..Default::default()
            }),
            addr: addr.map(str::to_string),
            done: tokio::sync::oneshot::channel().0,
        };
        let mut n = pb::Node::default();
        n.status.get_or_insert_with(Default::default).message = "heartbeat failure".into();
        apply_node_write(
            &mut n,
            &w(pb::NodeState::Ready, Some("a"), Some("10.0.0.1")),
        );
        apply_node_write(&mut n, &w(pb::NodeState::Ready, None, None));
        let st = n.status.as_ref().unwrap();
        assert_eq!(st.state, pb::NodeState::Ready as i32);
        assert!(st.message.is_empty());
        assert_eq!(st.addr, "10.0.0.1");
        assert_eq!(n.description.unwrap().hostname, "a");
    }

    /// Commits merged into one message: each task once, as it is now.
    #[test]
    fn merged_commits_send_each_task_once_in_its_newest_version() {
        use crate::store::{Event, EventKind, Object};
        let ev = |kind, old: Option<&pb::Task>, new: &pb::Task| Event {
            kind,
            version: 1,
            object: Object::Task(std::sync::Arc::new(new.clone())),
            old: old.map(|o| Object::Task(std::sync::Arc::new(o.clone()))),
        };
        let t = |id| crate::store::testutil::task(id, "s", 1, "n");
        let (a, b, c, d, e) = (t("a"), t("b"), t("c"), t("d"), t("e"));
        let a1 = with_state(&a, pb::TaskState::Assigned);
        let a2 = with_state(&a1, pb::TaskState::Running);
        let b1 = with_state(&b, pb::TaskState::Running);
        let b2 = with_state(&b1, pb::TaskState::Running);
        let c1 = with_state(&c, pb::TaskState::Assigned);
        let mut d1 = with_state(&d, pb::TaskState::Assigned);
        let mut d2 = d1.clone();
        d2.node_id = "other".into();
        d1.node_id = "n".into();
        let mut e1 = with_state(&e, pb::TaskState::Pending);
        e1.node_id = "n".into();
        let events = vec![
            ev(EventKind::Updated, Some(&a), &a1),
            ev(EventKind::Updated, Some(&b1), &b2),
            ev(EventKind::Updated, Some(&c), &c1),
            ev(EventKind::Updated, Some(&d), &d1),
            ev(EventKind::Created, None, &e1),
            // The next commits.
            ev(EventKind::Updated, Some(&a1), &a2),
            ev(EventKind::Removed, None, &c1),
            ev(EventKind::Updated, Some(&d1), &d2),
        ];
        let mut m = pb::AssignmentsMessage::default();
        task_changes("n", &events, &mut m);
        // a: assigned, then its own report; sent once, as it is now. b: only
        // its own report. e: not assigned yet.
        assert_eq!(m.updated_tasks, vec![a2]);
        // c removed, d moved away; in the order they first changed.
        assert_eq!(m.removed_task_ids, vec!["c".to_string(), "d".to_string()]);
    }

    #[test]
    fn a_combined_status_write_is_bounded_and_keeps_the_order() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        for i in 0..5 {
            tx.send(report(&format!("n{i}"), 3000)).ok();
        }
        let nodes = |b: &[Report]| b.iter().map(|r| r.node_id.clone()).collect::<Vec<_>>();
        // 3 × 3,000 reaches the bound: the third report is taken whole.
        let gather = |first, rx: &mut _| gather(first, rx, MAX_UPDATES_PER_WRITE, report_size);
        let b = gather(report("first", 0), &mut rx);
        assert_eq!(nodes(&b), ["first", "n0", "n1", "n2"]);
        let Ok(next) = rx.try_recv() else {
            panic!("the rest should still wait");
        };
        let b = gather(next, &mut rx);
        assert_eq!(nodes(&b), ["n3", "n4"]);
        // A single report above the bound still goes out, alone.
        tx.send(report("small", 1)).ok();
        let b = gather(report("big", MAX_UPDATES_PER_WRITE + 1), &mut rx);
        assert_eq!(nodes(&b), ["big"]);
    }

    #[test]
    fn the_configured_period_holds_until_the_heartbeat_budget_is_reached() {
        let one = Duration::from_secs(1);
        assert_eq!(node_period(one, 0, 0.0), one);
        assert_eq!(node_period(one, 2000, 0.0), one);
        // 10,000 nodes share 2,000 heartbeats a second: every 5 s each.
        assert_eq!(node_period(one, 10_000, 0.0), Duration::from_secs(5));
        // A longer configured period is never shortened.
        let ten = Duration::from_secs(10);
        assert_eq!(node_period(ten, 10_000, 0.0), ten);
    }

    #[test]
    fn jitter_lengthens_the_period_by_at_most_a_tenth() {
        let one = Duration::from_secs(1);
        assert_eq!(node_period(one, 10, 1.0), Duration::from_millis(1100));
        assert_eq!(node_period(one, 10, 0.5), Duration::from_millis(1050));
        // Out-of-range draws are clamped.
        assert_eq!(node_period(one, 10, 7.0), Duration::from_millis(1100));
        assert_eq!(node_period(one, 10, -1.0), one);
    }

    #[test]
    fn the_heartbeat_rate_stays_within_the_budget_for_any_node_count() {
        for nodes in [1usize, 100, 1000, 2000, 5000, 10_000, 50_000] {
            let p = node_period(DEFAULT_HEARTBEAT, nodes, 0.0);
            #[allow(clippy::cast_precision_loss)]
            let rate = nodes as f64 / p.as_secs_f64();
            assert!(
                rate <= f64::from(HEARTBEATS_PER_SECOND) + 1e-6,
                "{nodes} nodes: {rate}/s"
            );
        }
    }

    #[test]
    fn a_session_is_alive_for_missed_heartbeats_of_its_own_period() {
        let token = CancellationToken::new();
        let p = Duration::from_secs(5);
        let s = Session {
            id: "s".into(),
            opening: false,
            last_seen: Instant::now(),
            grace: grace(p),
            ended: token.clone(),
        };
        let t0 = s.last_seen;
        assert!(s.alive(t0 + Duration::from_secs(15)));
        assert!(!s.alive(t0 + Duration::from_millis(15_001)));
        // Dropping the session (replaced, or leadership lost) ends its
        // stream.
        assert!(!token.is_cancelled());
        drop(s);
        assert!(token.is_cancelled());
    }

    fn opening(sessions: &Arc<Mutex<HashMap<String, Session>>>, id: &str) -> Opening {
        let session = Session {
            id: id.into(),
            opening: true,
            last_seen: Instant::now(),
            grace: grace(Duration::from_secs(1)),
            ended: CancellationToken::new(),
        };
        Opening::begin(sessions, "n", session).0
    }

    #[test]
    fn a_session_lives_while_it_opens_and_its_grace_counts_from_then() {
        let sessions = Arc::new(Mutex::new(HashMap::new()));
        let o = opening(&sessions, "s1");
        let t0 = Instant::now();
        // However long the node's write takes, the check does not end it.
        assert!(sessions.lock().unwrap()["n"].alive(t0 + Duration::from_secs(60)));
        assert!(o.opened());
        let map = sessions.lock().unwrap();
        let s = &map["n"];
        assert!(!s.opening);
        assert!(s.last_seen >= t0);
        assert!(!s.alive(s.last_seen + Duration::from_millis(3_001)));
    }

    #[test]
    fn an_abandoned_or_replaced_opening_leaves_no_session_behind() {
        let sessions = Arc::new(Mutex::new(HashMap::new()));
        // Abandoned (its write failed or the call was dropped): removed.
        drop(opening(&sessions, "s1"));
        assert!(sessions.lock().unwrap().is_empty());
        // Replaced by a newer session meanwhile: not open, and the newer
        // one stays.
        let old = opening(&sessions, "s1");
        let newer = opening(&sessions, "s2");
        drop(old);
        assert_eq!(sessions.lock().unwrap()["n"].id, "s2");
        let old = opening(&sessions, "s3");
        // s3 replaced s2, whose opening now fails and leaves s3 alone.
        assert!(!newer.opened());
        assert_eq!(sessions.lock().unwrap()["n"].id, "s3");
        assert!(old.opened());
    }
}
