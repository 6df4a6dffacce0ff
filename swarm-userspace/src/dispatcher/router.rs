//! Fans store commits out to node sessions: one store watch for all of
//! them, and each change sent only to the sessions it concerns, so the
//! leader's cost per commit grows with the commit, not with the number of
//! connected nodes.
//!
//! Owns: the subscriber lists, which nodes are on which overlay network,
//! and the routing rule (task events go to the nodes the task is or was on;
//! events of tasks, services and networks on an overlay network to the
//! nodes on that network; node events to that node; changes to the manager
//! list or the cluster object to every session). Must never write the
//! store or talk to nodes itself.
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use swarm_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::store::{Event, MemoryStore, Object, ReadTx, WatchItem};

/// What a subscriber receives.
#[derive(Debug, Clone)]
pub enum Routed {
    /// Task events of one commit that concern the subscriber's node.
    Tasks { version: u64, events: Vec<Event> },
    /// Events of tasks, services and networks on overlay networks the
    /// subscriber's node is on: for its overlay state.
    Net { version: u64, events: Vec<Event> },
    /// The node's own object changed, or something every session shows
    /// (the manager list, the cluster's settings): send a fresh session
    /// message.
    Refresh,
    /// The router missed commits or the store was restored: rebuild from
    /// this view.
    Resync(ReadTx),
}

type Subscribers = HashMap<String, Vec<(u64, mpsc::UnboundedSender<Routed>)>>;

/// network ID → node ID → how many of the node's tasks are attached to it.
type Membership = HashMap<String, HashMap<String, u32>>;

/// Who is on which overlay network. Every node is on the ingress network.
#[derive(Default)]
struct Members {
    by_network: Membership,
    ingress: Option<String>,
}

/// Cheap to clone; one per dispatcher.
#[derive(Clone, Default)]
pub struct Router {
    subs: Arc<Mutex<Subscribers>>,
    members: Arc<Mutex<Members>>,
    next_id: Arc<AtomicU64>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router").finish_non_exhaustive()
    }
}

/// A subscription; dropping it unsubscribes.
pub struct Subscription {
    router: Router,
    node_id: String,
    id: u64,
    pub rx: mpsc::UnboundedReceiver<Routed>,
    /// Everything up to this version is in the view returned with the
    /// subscription; routed commits at or below it are repeats.
    pub from_version: u64,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut subs = self.router.lock();
        if let Some(list) = subs.get_mut(&self.node_id) {
            list.retain(|(id, _)| *id != self.id);
            if list.is_empty() {
                subs.remove(&self.node_id);
            }
        }
    }
}

/// Whether an event changes what every session shows: a manager joined,
/// left or moved, or the cluster object changed.
fn is_global(e: &Event) -> bool {
    let managerish = |o: &Object| match o {
        Object::Node(n) => n.manager_status.is_some() || n.role == pb::NodeRole::Manager as i32,
        Object::Cluster(_) => true,
        _ => false,
    };
    managerish(&e.object) || e.old.as_ref().is_some_and(managerish)
}

/// The nodes a task event concerns: where the task is and where it was.
fn task_nodes(e: &Event) -> [Option<&str>; 2] {
    fn on(o: &Object) -> Option<&str> {
        o.as_task()
            .map(|t| t.node_id.as_str())
            .filter(|n| !n.is_empty())
    }
    let now = on(&e.object);
    let before = e.old.as_ref().and_then(on).filter(|b| Some(*b) != now);
    [now, before]
}

/// The overlay networks an object is on, as far as the object itself says.
fn networks_of(o: &Object) -> Vec<&str> {
    match o {
        Object::Task(t) => super::netstate::task_network_ids(t).collect(),
        Object::Service(s) => {
            let mut out: Vec<&str> = s
                .endpoint
                .iter()
                .flat_map(|e| e.virtual_ips.iter().map(|v| v.network_id.as_str()))
                .collect();
            if let Some(t) = s.spec.as_ref().and_then(|s| s.task.as_ref()) {
                out.extend(t.networks.iter().map(|a| a.target.as_str()));
            }
            out
        }
        Object::Network(n) => vec![n.meta.as_ref().map_or("", |m| m.id.as_str())],
        _ => Vec::new(),
    }
}

fn count_task(members: &mut Membership, o: &Object, add: bool) {
    let Some(t) = o.as_task().filter(|t| !t.node_id.is_empty()) else {
        return;
    };
    for net in super::netstate::task_network_ids(t) {
        let nodes = members.entry(net.to_owned()).or_default();
        let n = nodes.entry(t.node_id.clone()).or_default();
        if add {
            *n += 1;
        } else {
            *n = n.saturating_sub(1);
            if *n == 0 {
                nodes.remove(&t.node_id);
            }
        }
        if nodes.is_empty() {
            members.remove(net);
        }
    }
}

fn membership(view: &ReadTx) -> Members {
    let mut m = Membership::new();
    for t in view.list::<pb::Task>() {
        count_task(&mut m, &Object::Task(t), true);
    }
    Members {
        by_network: m,
        ingress: crate::allocator::ingress_network(view)
            .and_then(|n| n.meta.as_ref().map(|m| m.id.clone())),
    }
}

fn is_ingress(o: &Object) -> Option<&str> {
    match o {
        Object::Network(n) if n.spec.as_ref().is_some_and(|s| s.ingress) => {
            n.meta.as_ref().map(|m| m.id.as_str())
        }
        _ => None,
    }
}

impl Router {
    fn lock(&self) -> std::sync::MutexGuard<'_, Subscribers> {
        self.subs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Subscribes to what concerns `node_id`; returns the view the
    /// subscription starts from. Nothing committed after that view is
    /// missed (commits already in it may come again: see
    /// [`Subscription::from_version`]).
    pub fn subscribe(&self, store: &MemoryStore, node_id: &str) -> (ReadTx, Subscription) {
        let (tx, rx) = mpsc::unbounded_channel();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        // Registered under the lock the router holds while routing a
        // commit: commits applied after this view are routed to us.
        let view = {
            let mut subs = self.lock();
            subs.entry(node_id.to_owned()).or_default().push((id, tx));
            store.view()
        };
        let from_version = view.version();
        (
            view,
            Subscription {
                router: self.clone(),
                node_id: node_id.to_owned(),
                id,
                rx,
                from_version,
            },
        )
    }

    fn route(&self, item: &WatchItem) {
        let mut subs = self.lock();
        let mut members = self.members.lock().unwrap_or_else(PoisonError::into_inner);
        match item {
            WatchItem::Resync { view, .. } => {
                *members = membership(view);
                for list in subs.values() {
                    for (_, tx) in list {
                        let _ = tx.send(Routed::Resync(view.clone()));
                    }
                }
            }
            WatchItem::Commit { version, events } => {
                let mut tasks: HashMap<&str, Vec<Event>> = HashMap::new();
                let mut refresh: Vec<&str> = Vec::new();
                let mut global = false;
                for e in events {
                    match &e.object {
                        Object::Task(_) => {
                            for n in task_nodes(e).into_iter().flatten() {
                                tasks.entry(n).or_default().push(e.clone());
                            }
                        }
                        Object::Node(n) => {
                            global |= is_global(e);
                            if let Some(m) = &n.meta {
                                refresh.push(m.id.as_str());
                            }
                        }
                        Object::Cluster(_) => global = true,
                        _ => {}
                    }
                }
                // Overlay: membership first, so a node that joins a network
                // in this commit also hears of the rest of the commit.
                for e in events {
                    if let Object::Task(_) = &e.object {
                        if let Some(old) = &e.old {
                            count_task(&mut members.by_network, old, false);
                        }
                        if e.kind != crate::store::EventKind::Removed {
                            count_task(&mut members.by_network, &e.object, true);
                        }
                    }
                    if let Some(id) = is_ingress(&e.object) {
                        members.ingress =
                            (e.kind != crate::store::EventKind::Removed).then(|| id.to_owned());
                    }
                }
                let mut net: HashMap<&str, Vec<Event>> = HashMap::new();
                for e in events {
                    let mut nets: BTreeSet<&str> = networks_of(&e.object).into_iter().collect();
                    if let Some(old) = &e.old {
                        nets.extend(networks_of(old));
                    }
                    // A publishing service concerns the mesh, i.e. everyone.
                    let publishing = [Some(&e.object), e.old.as_ref()]
                        .into_iter()
                        .flatten()
                        .any(|o| matches!(o, Object::Service(s) if super::netstate::publishes(s)));
                    if publishing && let Some(i) = members.ingress.as_deref() {
                        nets.insert(i);
                    }
                    let mut nodes: BTreeSet<&str> = BTreeSet::new();
                    for n in nets {
                        if members.ingress.as_deref() == Some(n) {
                            nodes.extend(subs.keys().map(String::as_str));
                        } else if let Some(on) = members.by_network.get(n) {
                            nodes.extend(on.keys().map(String::as_str));
                        }
                    }
                    for n in nodes {
                        net.entry(n).or_default().push(e.clone());
                    }
                }
                for (node, events) in net {
                    if let Some(list) = subs.get(node) {
                        for (_, tx) in list {
                            let _ = tx.send(Routed::Net {
                                version: *version,
                                events: events.clone(),
                            });
                        }
                    }
                }
                for (node, events) in tasks {
                    if let Some(list) = subs.get(node) {
                        for (_, tx) in list {
                            let _ = tx.send(Routed::Tasks {
                                version: *version,
                                events: events.clone(),
                            });
                        }
                    }
                }
                let send_refresh = |list: &Vec<(u64, mpsc::UnboundedSender<Routed>)>| {
                    for (_, tx) in list {
                        let _ = tx.send(Routed::Refresh);
                    }
                };
                if global {
                    subs.values().for_each(send_refresh);
                } else {
                    for node in refresh {
                        if let Some(list) = subs.get(node) {
                            send_refresh(list);
                        }
                    }
                }
            }
        }
        // Forget subscribers whose receiver is gone.
        subs.retain(|_, list| {
            list.retain(|(_, tx)| !tx.is_closed());
            !list.is_empty()
        });
    }

    /// Routes every commit of `store` until `shutdown`.
    pub async fn run(self, store: MemoryStore, shutdown: CancellationToken) {
        let (view, mut watch) = store.watch();
        *self.members.lock().unwrap_or_else(PoisonError::into_inner) = membership(&view);
        loop {
            let item = tokio::select! {
                () = shutdown.cancelled() => return,
                item = watch.recv() => match item {
                    Some(i) => i,
                    None => return,
                },
            };
            self.route(&item);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{EventKind, testutil};

    fn task_event(version: u64, id: &str, node: &str, old_node: Option<&str>) -> Event {
        Event {
            kind: EventKind::Updated,
            version,
            object: Object::Task(Arc::new(testutil::task(id, "s", 1, node))),
            old: old_node.map(|o| Object::Task(Arc::new(testutil::task(id, "s", 1, o)))),
        }
    }

    #[tokio::test]
    async fn overlay_events_reach_the_nodes_on_the_network() {
        let on_net = |id: &str, node: &str| {
            let mut t = testutil::task(id, "s", 1, node);
            t.networks.push(pb::NetworkAttachment {
                network_id: "net1".into(),
                addresses: vec!["10.0.1.3/24".into()],
                ..Default::default()
            });
            Arc::new(t)
        };
        let store = MemoryStore::new();
        let r = Router::default();
        let (_, mut a) = r.subscribe(&store, "a");
        let (_, mut b) = r.subscribe(&store, "b");
        let (_, mut c) = r.subscribe(&store, "c");
        let created = |t: Arc<pb::Task>| Event {
            kind: EventKind::Created,
            version: 5,
            object: Object::Task(t),
            old: None,
        };
        // a joins net1, then b's task on net1 appears: a hears of it as an
        // overlay event, b as its own task, c (on no network) not at all.
        r.route(&WatchItem::Commit {
            version: 5,
            events: vec![created(on_net("t1", "a"))],
        });
        r.route(&WatchItem::Commit {
            version: 6,
            events: vec![created(on_net("t2", "b"))],
        });
        let mut a_net = Vec::new();
        while let Ok(m) = a.rx.try_recv() {
            if let Routed::Net { events, .. } = m {
                a_net.extend(events.iter().map(|e| e.object.id().to_owned()));
            }
        }
        assert_eq!(a_net, vec!["t1", "t2"]);
        assert!(matches!(b.rx.try_recv(), Ok(Routed::Net { .. })));
        assert!(c.rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn task_events_reach_only_the_nodes_they_concern() {
        let store = MemoryStore::new();
        let r = Router::default();
        let (_, mut a) = r.subscribe(&store, "a");
        let (_, mut b) = r.subscribe(&store, "b");
        let (_, mut c) = r.subscribe(&store, "c");
        r.route(&WatchItem::Commit {
            version: 5,
            events: vec![
                task_event(5, "t1", "a", None),
                // Moved from b to a: both hear of it.
                task_event(5, "t2", "a", Some("b")),
            ],
        });
        let Ok(Routed::Tasks { events, version }) = a.rx.try_recv() else {
            panic!("a should get its tasks");
        };
        assert_eq!((version, events.len()), (5, 2));
        let Ok(Routed::Tasks { events, .. }) = b.rx.try_recv() else {
            panic!("b should hear that t2 left");
        };
        assert_eq!(events.len(), 1);
        assert!(c.rx.try_recv().is_err(), "c is not concerned");
    }

    #[tokio::test]
    async fn manager_changes_refresh_every_session_and_worker_changes_only_their_own() {
        let store = MemoryStore::new();
        let r = Router::default();
        let (_, mut a) = r.subscribe(&store, "a");
        let (_, mut b) = r.subscribe(&store, "b");
        let worker = testutil::node("a", "a");
        r.route(&WatchItem::Commit {
            version: 2,
            events: vec![Event {
                kind: EventKind::Updated,
                version: 2,
                object: Object::Node(Arc::new(worker)),
                old: None,
            }],
        });
        assert!(matches!(a.rx.try_recv(), Ok(Routed::Refresh)));
        assert!(b.rx.try_recv().is_err());
        let mut manager = testutil::node("m", "m");
        manager.manager_status = Some(pb::ManagerStatus::default());
        r.route(&WatchItem::Commit {
            version: 3,
            events: vec![Event {
                kind: EventKind::Updated,
                version: 3,
                object: Object::Node(Arc::new(manager)),
                old: None,
            }],
        });
        assert!(matches!(a.rx.try_recv(), Ok(Routed::Refresh)));
        assert!(matches!(b.rx.try_recv(), Ok(Routed::Refresh)));
    }

    #[tokio::test]
    async fn dropping_a_subscription_unsubscribes() {
        let store = MemoryStore::new();
        let r = Router::default();
        let (_, s) = r.subscribe(&store, "a");
        assert_eq!(r.lock().len(), 1);
        drop(s);
        assert!(r.lock().is_empty());
    }
}
