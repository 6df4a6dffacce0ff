//! The log broker (swarmkit's `manager/logbroker`): `service logs` and
//! `task logs` gathered from the nodes that run the tasks.
//!
//! Owns, on the leader: the registry of log subscriptions, resolving a
//! selector to tasks and the nodes they are assigned to (`select`), sending
//! each node only its share (`LogBroker.ListenSubscriptions`), taking the
//! lines nodes publish (`LogBroker.PublishLogs`) back to the subscriber
//! (`Logs.SubscribeLogs`), and deciding when a subscription without
//! `--follow` is complete, or incomplete because a node did not answer.
//! With `--follow`, tasks that are assigned later join the subscription.
//! On every node, [`agent::LogAgent`] reads the local log files.
//!
//! Never reads a log file on the manager side and never trusts a node's
//! word about who it is (that comes from its certificate) or which tasks it
//! may publish for (only those it was sent).
pub mod agent;
pub mod select;
#[cfg(test)]
mod tests;

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use swarm_proto::v1::{self as pb, log_broker_server, logs_server};
use tokio::sync::mpsc;
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Request, Response, Status, Streaming};

use crate::{
    ca::{self, NodeIdentity},
    dispatcher::LEADER_ADDR_KEY,
    manager::Manager,
    store::{MemoryStore, ObjectKind, ReadTx, WatchItem, new_id},
};
use select::{Placement, Progress, Resolved};

/// How long a node may take to start answering a subscription before it
/// is reported as not available.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// How often subscriptions and listeners check that this manager still
/// leads.
const LEADER_CHECK: Duration = Duration::from_millis(500);

/// Whether this manager leads, and where the leader is. [`Manager`] is
/// the real one; tests fix it.
pub trait Leadership: Send + Sync + 'static {
    fn is_leader(&self) -> bool;
    fn leader_addr(&self) -> Option<String>;
}

impl Leadership for Manager {
    fn is_leader(&self) -> bool {
        Manager::is_leader(self)
    }
    fn leader_addr(&self) -> Option<String> {
        self.proposer.leader_addr()
    }
}

type Out = mpsc::Sender<Result<pb::SubscribeLogsMessage, Status>>;
type ListenTx = mpsc::Sender<Result<pb::SubscriptionMessage, Status>>;

enum SubEvent {
    Logs(Vec<pb::LogMessage>),
    Answering(String),
    Done(String),
    Failed(String, String),
}

struct Listener {
    generation: u64,
    tx: ListenTx,
}

struct SubEntry {
    options: pb::LogSubscriptionOptions,
    placement: Placement,
    events: mpsc::Sender<SubEvent>,
}

impl SubEntry {
    fn message(&self, id: &str, node: &str) -> Option<pb::SubscriptionMessage> {
        let tasks = self.placement.get(node)?;
        Some(pb::SubscriptionMessage {
            id: id.to_string(),
            selector: Some(pb::LogSelector {
                task_ids: tasks.iter().cloned().collect(),
                ..Default::default()
            }),
            options: Some(self.options),
            close: false,
        })
    }
}

#[derive(Default)]
struct Shared {
    listeners: HashMap<String, Listener>,
    subs: HashMap<String, SubEntry>,
    next_generation: u64,
}

impl Shared {
    /// Hands a subscription message to a node's listener; false if the
    /// node is not listening (or is too far behind to take it).
    fn send(&self, node: &str, msg: pb::SubscriptionMessage) -> bool {
        self.listeners
            .get(node)
            .is_some_and(|l| l.tx.try_send(Ok(msg)).is_ok())
    }
}

/// The broker; cheap to clone. Serves both `Logs` and `LogBroker`.
#[derive(Clone)]
pub struct LogBroker {
    store: MemoryStore,
    lead: Arc<dyn Leadership>,
    shared: Arc<Mutex<Shared>>,
    answer_timeout: Duration,
}

impl std::fmt::Debug for LogBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogBroker")
    }
}

fn node_label(view: &ReadTx, id: &str) -> String {
    match view
        .get::<pb::Node>(id)
        .and_then(|n| n.description.as_ref().map(|d| d.hostname.clone()))
        .filter(|h| !h.is_empty())
    {
        Some(h) => format!("{h} ({id})"),
        None => id.to_string(),
    }
}

fn is_down(view: &ReadTx, id: &str) -> bool {
    view.get::<pb::Node>(id).is_none_or(|n| {
        n.status
            .as_ref()
            .is_some_and(|s| s.state == pb::NodeState::Down as i32)
    })
}

impl LogBroker {
    pub fn new(store: MemoryStore, lead: Arc<dyn Leadership>) -> Self {
        LogBroker {
            store,
            lead,
            shared: Arc::new(Mutex::new(Shared::default())),
            answer_timeout: ANSWER_TIMEOUT,
        }
    }

    /// How long nodes may take to start answering (tests shorten it).
    #[must_use]
    pub fn with_answer_timeout(mut self, t: Duration) -> Self {
        self.answer_timeout = t;
        self
    }

    pub fn logs_server(&self) -> logs_server::LogsServer<Self> {
        logs_server::LogsServer::new(self.clone())
    }

    pub fn broker_server(&self) -> log_broker_server::LogBrokerServer<Self> {
        log_broker_server::LogBrokerServer::new(self.clone())
    }

    fn shared(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn not_leader(&self) -> Status {
        let leader = self.lead.leader_addr();
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
            .ok_or_else(|| Status::unauthenticated("log streams need a node certificate"))
    }

    /// Runs one subscription until it is complete (without follow), the
    /// subscriber goes away, or this manager stops leading.
    async fn drive(
        self,
        id: String,
        resolved: Resolved,
        follow: bool,
        mut events: mpsc::Receiver<SubEvent>,
        out: Out,
    ) {
        let mut progress = Progress::default();
        let mut reported: Vec<String> = Vec::new();
        {
            let view = self.store.view();
            let shared = self.shared();
            if let Some(entry) = shared.subs.get(&id) {
                for node in entry.placement.keys() {
                    progress.add(node);
                    if is_down(&view, node) {
                        progress.fail(
                            node,
                            format!("node {} is not available", node_label(&view, node)),
                        );
                    }
                }
            }
        }
        let mut watch = follow.then(|| self.store.watch().1.kinds(&[ObjectKind::Task]));
        let deadline = tokio::time::Instant::now() + self.answer_timeout;
        let mut timed_out = false;
        let mut tick = tokio::time::interval(LEADER_CHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let incomplete: Vec<String> = progress
                .incomplete()
                .into_iter()
                .filter(|r| !reported.contains(r))
                .collect();
            if !follow && progress.complete() {
                let _ = out
                    .send(Ok(pb::SubscribeLogsMessage {
                        messages: Vec::new(),
                        incomplete,
                    }))
                    .await;
                break;
            }
            if follow && !incomplete.is_empty() {
                reported.extend(incomplete.iter().cloned());
                let msg = pb::SubscribeLogsMessage {
                    messages: Vec::new(),
                    incomplete,
                };
                if out.send(Ok(msg)).await.is_err() {
                    break;
                }
            }
            tokio::select! {
                () = out.closed() => break,
                ev = events.recv() => match ev {
                    None => break,
                    Some(SubEvent::Logs(messages)) => {
                        let msg = pb::SubscribeLogsMessage { messages, incomplete: Vec::new() };
                        if out.send(Ok(msg)).await.is_err() {
                            break;
                        }
                    }
                    Some(SubEvent::Answering(n)) => progress.answering(&n),
                    Some(SubEvent::Done(n)) => progress.done(&n),
                    Some(SubEvent::Failed(n, why)) => progress.fail(&n, why),
                },
                item = async {
                    match watch.as_mut() {
                        Some(w) => w.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    let view = match item {
                        None => break,
                        Some(WatchItem::Commit { .. }) => self.store.view(),
                        Some(WatchItem::Resync { view, .. }) => view,
                    };
                    self.grow(&id, &resolved, &view, &mut progress);
                }
                () = tokio::time::sleep_until(deadline), if !timed_out => {
                    timed_out = true;
                    let view = self.store.view();
                    for n in progress.waiting() {
                        let why = format!("node {} is not available", node_label(&view, &n));
                        progress.fail(&n, why);
                    }
                }
                _ = tick.tick() => {
                    if !self.lead.is_leader() {
                        let _ = out.send(Err(Status::unavailable(
                            "the swarm's leader changed while streaming logs; run the command again",
                        ))).await;
                        break;
                    }
                }
            }
        }
        // Tell every involved node to stop.
        let shared = &mut *self.shared();
        if let Some(entry) = shared.subs.remove(&id) {
            for node in entry.placement.keys() {
                shared.send(
                    node,
                    pb::SubscriptionMessage {
                        id: id.clone(),
                        close: true,
                        ..Default::default()
                    },
                );
            }
        }
    }

    /// Adds newly assigned tasks to a follow subscription and tells their
    /// nodes.
    fn grow(&self, id: &str, resolved: &Resolved, view: &ReadTx, progress: &mut Progress) {
        let now = select::placement(view, resolved);
        let shared = &mut *self.shared();
        let Some(entry) = shared.subs.get_mut(id) else {
            return;
        };
        let changed = select::grow(&mut entry.placement, now);
        let msgs: Vec<(String, pb::SubscriptionMessage)> = changed
            .keys()
            .filter_map(|n| entry.message(id, n).map(|m| (n.clone(), m)))
            .collect();
        for (node, msg) in msgs {
            if progress.state(&node).is_none() {
                progress.add(&node);
                // A node that joins late answers when it can; it is not
                // reported as missing while following.
                progress.answering(&node);
            }
            shared.send(&node, msg);
        }
    }

    /// Handles one node's publish stream for one subscription.
    async fn publish(
        &self,
        node: &str,
        first: pb::PublishLogsMessage,
        mut rest: Streaming<pb::PublishLogsMessage>,
    ) -> Result<(), Status> {
        let sub = first.subscription_id.clone();
        let events = {
            let shared = self.shared();
            let entry = shared
                .subs
                .get(&sub)
                .ok_or_else(|| Status::not_found(format!("log subscription {sub} has ended")))?;
            if !entry.placement.contains_key(node) {
                return Err(Status::permission_denied(format!(
                    "log subscription {sub} does not involve this node"
                )));
            }
            entry.events.clone()
        };
        let gone = || Status::cancelled(format!("log subscription {sub} has ended"));
        events
            .send(SubEvent::Answering(node.to_string()))
            .await
            .map_err(|_| gone())?;
        let mut next = Some(first);
        loop {
            let msg = match next.take() {
                Some(m) => m,
                None => match rest.message().await {
                    Ok(Some(m)) => m,
                    Ok(None) | Err(_) => {
                        let why = format!(
                            "node {} stopped sending logs before the end",
                            node_label(&self.store.view(), node)
                        );
                        let _ = events.send(SubEvent::Failed(node.to_string(), why)).await;
                        return Ok(());
                    }
                },
            };
            if msg.subscription_id != sub {
                return Err(Status::invalid_argument(
                    "one publish stream carries one subscription",
                ));
            }
            let messages = self.stamp(&sub, node, msg.messages);
            if !messages.is_empty() {
                events
                    .send(SubEvent::Logs(messages))
                    .await
                    .map_err(|_| gone())?;
            }
            if msg.close {
                let _ = events.send(SubEvent::Done(node.to_string())).await;
                return Ok(());
            }
        }
    }

    /// Keeps only lines of tasks this node was asked for, with their
    /// context filled in from the store and the node's certificate.
    fn stamp(&self, sub: &str, node: &str, messages: Vec<pb::LogMessage>) -> Vec<pb::LogMessage> {
        let allowed = {
            let shared = self.shared();
            match shared.subs.get(sub).and_then(|e| e.placement.get(node)) {
                Some(t) => t.clone(),
                None => return Vec::new(),
            }
        };
        let view = self.store.view();
        messages
            .into_iter()
            .filter_map(|mut m| {
                let task_id = m.context.as_ref()?.task_id.clone();
                if !allowed.contains(&task_id) {
                    return None;
                }
                let service_id = view
                    .get::<pb::Task>(&task_id)
                    .map(|t| t.service_id.clone())
                    .unwrap_or_default();
                m.context = Some(pb::LogContext {
                    service_id,
                    node_id: node.to_string(),
                    task_id,
                });
                Some(m)
            })
            .collect()
    }
}

type SubscribeStream = Pin<Box<dyn Stream<Item = Result<pb::SubscribeLogsMessage, Status>> + Send>>;

#[tonic::async_trait]
impl logs_server::Logs for LogBroker {
    type SubscribeLogsStream = SubscribeStream;

    async fn subscribe_logs(
        &self,
        req: Request<pb::SubscribeLogsRequest>,
    ) -> Result<Response<SubscribeStream>, Status> {
        if !self.lead.is_leader() {
            return Err(self.not_leader());
        }
        let r = req.into_inner();
        let selector = r.selector.unwrap_or_default();
        let options = r.options.unwrap_or_default();
        let view = self.store.view();
        let resolved = select::resolve(&view, &selector)?;
        let placement = select::placement(&view, &resolved);
        let id = new_id();
        let (events_tx, events_rx) = mpsc::channel(64);
        let (out_tx, out_rx) = mpsc::channel(64);
        {
            let shared = &mut *self.shared();
            let entry = SubEntry {
                options,
                placement,
                events: events_tx,
            };
            for node in entry.placement.keys() {
                if let Some(msg) = entry.message(&id, node) {
                    shared.send(node, msg);
                }
            }
            shared.subs.insert(id.clone(), entry);
        }
        tracing::debug!(subscription = %id, follow = options.follow, "log subscription");
        tokio::spawn(
            self.clone()
                .drive(id, resolved, options.follow, events_rx, out_tx),
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(out_rx))))
    }
}

type ListenStream = ReceiverStream<Result<pb::SubscriptionMessage, Status>>;

#[tonic::async_trait]
impl log_broker_server::LogBroker for LogBroker {
    type ListenSubscriptionsStream = ListenStream;

    async fn listen_subscriptions(
        &self,
        req: Request<pb::ListenSubscriptionsRequest>,
    ) -> Result<Response<ListenStream>, Status> {
        if !self.lead.is_leader() {
            return Err(self.not_leader());
        }
        let node = self.caller(&req)?.node_id;
        let (tx, rx) = mpsc::channel(256);
        let generation = {
            let shared = &mut *self.shared();
            shared.next_generation += 1;
            let generation = shared.next_generation;
            // The node's subscriptions so far, then whatever comes.
            for (id, entry) in &shared.subs {
                if let Some(msg) = entry.message(id, &node) {
                    let _ = tx.try_send(Ok(msg));
                }
            }
            shared.listeners.insert(
                node.clone(),
                Listener {
                    generation,
                    tx: tx.clone(),
                },
            );
            generation
        };
        tracing::debug!(node_id = %node, "node listening for log subscriptions");
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(LEADER_CHECK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = tx.closed() => break,
                    _ = tick.tick() => {
                        if !this.lead.is_leader() {
                            let _ = tx.send(Err(this.not_leader())).await;
                            break;
                        }
                    }
                }
            }
            let shared = &mut *this.shared();
            if shared
                .listeners
                .get(&node)
                .is_some_and(|l| l.generation == generation)
            {
                shared.listeners.remove(&node);
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn publish_logs(
        &self,
        req: Request<Streaming<pb::PublishLogsMessage>>,
    ) -> Result<Response<pb::PublishLogsResponse>, Status> {
        if !self.lead.is_leader() {
            return Err(self.not_leader());
        }
        let node = self.caller(&req)?.node_id;
        let mut stream = req.into_inner();
        let Some(first) = stream.message().await? else {
            return Ok(Response::new(pb::PublishLogsResponse {}));
        };
        self.publish(&node, first, stream).await?;
        Ok(Response::new(pb::PublishLogsResponse {}))
    }
}
