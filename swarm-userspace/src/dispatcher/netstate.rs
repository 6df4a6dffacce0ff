//! Overlay state for one node's assignment stream: the networks the node's
//! tasks are attached to, every task attached to them anywhere in the
//! cluster (its address and its node's underlay address: the VXLAN tunnel
//! endpoint) and the services on them (names, VIPs), which the node's data
//! path and DNS need.
//!
//! Owns: what one session has been sent, so that each change is sent once,
//! as the current truth (level-triggered: a touched object is read again
//! from the newest view, so late or repeated events cannot regress it).
//! Must never write the store.
use std::collections::{BTreeMap, BTreeSet, HashMap};

use swarm_proto::v1 as pb;

use crate::store::{Event, Object, ReadTx};

fn id<T: crate::store::StoreObject>(o: &T) -> &str {
    o.id()
}

/// The overlay networks a task is attached to (with an address).
pub fn task_network_ids(t: &pb::Task) -> impl Iterator<Item = &str> {
    t.networks
        .iter()
        .filter(|n| !n.addresses.is_empty())
        .map(|n| n.network_id.as_str())
}

/// The networks a service is on: where it has VIPs and what its task
/// template attaches to (by ID or name).
pub fn service_network_ids(view: &ReadTx, s: &pb::Service) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = s
        .endpoint
        .as_ref()
        .map(|e| e.virtual_ips.iter().map(|v| v.network_id.clone()).collect())
        .unwrap_or_default();
    let atts = s
        .spec
        .as_ref()
        .and_then(|s| s.task.as_ref())
        .map(|t| t.networks.as_slice())
        .unwrap_or_default();
    for a in atts {
        let net = view
            .get::<pb::Network>(&a.target)
            .or_else(|| view.get_by_name::<pb::Network>(&a.target));
        if let Some(n) = net {
            out.insert(id(&*n).to_owned());
        }
    }
    if publishes(s)
        && let Some(ingress) = crate::allocator::ingress_network(view)
    {
        out.insert(id(&*ingress).to_owned());
    }
    out
}

/// Whether a service publishes ports (either mode): its tasks are on the
/// ingress network.
pub fn publishes(s: &pb::Service) -> bool {
    s.spec
        .as_ref()
        .and_then(|s| s.endpoint.as_ref())
        .is_some_and(|e| !e.ports.is_empty())
}

/// docker's task name: `<service>.<slot>.<task id>`, or the node ID in
/// place of the slot for global services.
pub fn task_name(t: &pb::Task) -> String {
    let service = t
        .service_annotations
        .as_ref()
        .map(|a| a.name.as_str())
        .filter(|n| !n.is_empty())
        .unwrap_or(t.service_id.as_str());
    let task_id = t.meta.as_ref().map_or("", |m| m.id.as_str());
    if t.slot > 0 {
        format!("{service}.{}.{task_id}", t.slot)
    } else {
        format!("{service}.{}.{task_id}", t.node_id)
    }
}

/// The peer record of `t` on `network`, if `t` is assigned to a node and
/// has an address there.
pub fn peer(view: &ReadTx, t: &pb::Task, network: &str) -> Option<pb::NetworkPeer> {
    if t.node_id.is_empty() {
        return None;
    }
    let att = t
        .networks
        .iter()
        .find(|n| n.network_id == network && !n.addresses.is_empty())?;
    let node_addr = view
        .get::<pb::Node>(&t.node_id)
        .and_then(|n| n.status.as_ref().map(|s| s.addr.clone()))
        .unwrap_or_default();
    Some(pb::NetworkPeer {
        task_id: id(t).to_owned(),
        network_id: network.to_owned(),
        addr: att.addresses[0].clone(),
        node_id: t.node_id.clone(),
        node_addr,
        service_id: t.service_id.clone(),
        service_name: t
            .service_annotations
            .as_ref()
            .map(|a| a.name.clone())
            .unwrap_or_default(),
        task_name: task_name(t),
        aliases: att.aliases.clone(),
        state: t.status.as_ref().map_or(0, |s| s.state),
        desired_state: t.desired_state,
    })
}

/// The endpoints record of a service.
pub fn service_endpoints(view: &ReadTx, s: &pb::Service) -> pb::ServiceEndpoints {
    let spec = s.spec.clone().unwrap_or_default();
    let networks = spec
        .task
        .as_ref()
        .map(|t| t.networks.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|mut a| {
            // Name → ID, so the node can match attachments to networks.
            if let Some(n) = view
                .get::<pb::Network>(&a.target)
                .or_else(|| view.get_by_name::<pb::Network>(&a.target))
            {
                a.target = id(&*n).to_owned();
            }
            a
        })
        .collect();
    let endpoint = s.endpoint.clone().unwrap_or_default();
    pb::ServiceEndpoints {
        service_id: id(s).to_owned(),
        name: spec.annotations.map(|a| a.name).unwrap_or_default(),
        mode: spec.endpoint.map_or(0, |e| e.mode),
        virtual_ips: endpoint.virtual_ips,
        networks,
        ports: endpoint.ports,
    }
}

/// What one session has been sent.
#[derive(Debug, Default)]
pub struct NodeNetState {
    node_id: String,
    networks: BTreeMap<String, pb::Network>,
    /// Sent peers by task, then network.
    peers: HashMap<String, BTreeMap<String, pb::NetworkPeer>>,
    services: HashMap<String, pb::ServiceEndpoints>,
}

impl NodeNetState {
    pub fn new(node_id: &str) -> Self {
        NodeNetState {
            node_id: node_id.to_owned(),
            ..Default::default()
        }
    }

    /// Whether this node is on `network`.
    pub fn has_network(&self, network: &str) -> bool {
        self.networks.contains_key(network)
    }

    /// Forgets what was sent: the next [`sync`](Self::sync) sends
    /// everything (for a FULL message).
    pub fn reset(&mut self) {
        let node = std::mem::take(&mut self.node_id);
        *self = NodeNetState::new(&node);
    }

    /// Brings the node up to `view` for the objects `events` touched, and
    /// for its network membership; appends the changes to `msg`.
    /// `own_tasks_changed` says whether the node's own task set may have
    /// changed (which can add or drop networks).
    pub fn sync(
        &mut self,
        view: &ReadTx,
        events: &[Event],
        own_tasks_changed: bool,
        msg: &mut pb::AssignmentsMessage,
    ) {
        if own_tasks_changed {
            self.sync_membership(view, msg);
        }
        for e in events {
            match &e.object {
                Object::Task(t) => self.sync_task(view, id(&**t), msg),
                Object::Service(s) => self.sync_service(view, id(&**s), msg),
                Object::Network(n) => {
                    let nid = id(&**n);
                    if self.networks.contains_key(nid)
                        && let Some(cur) = view.get::<pb::Network>(nid)
                        && self.networks.get(nid) != Some(&*cur)
                    {
                        self.networks.insert(nid.to_owned(), (*cur).clone());
                        msg.updated_networks.push((*cur).clone());
                    }
                }
                _ => {}
            }
        }
    }

    /// Everything, from scratch (after [`reset`](Self::reset)).
    pub fn sync_all(&mut self, view: &ReadTx, msg: &mut pb::AssignmentsMessage) {
        self.sync_membership(view, msg);
    }

    fn sync_membership(&mut self, view: &ReadTx, msg: &mut pb::AssignmentsMessage) {
        msg.node_addr = view
            .get::<pb::Node>(&self.node_id)
            .and_then(|n| n.status.as_ref().map(|s| s.addr.clone()))
            .unwrap_or_default();
        msg.data_path_port = view
            .list::<pb::Cluster>()
            .next()
            .map_or(0, |c| c.vxlan_udp_port);
        let mut want: BTreeSet<String> = view
            .tasks_by_node(&self.node_id)
            .iter()
            .flat_map(|t| task_network_ids(t).map(str::to_owned).collect::<Vec<_>>())
            .collect();
        // Every node is on the routing mesh's network: a published port
        // answers on nodes that run no task of the service too.
        if let Some(ingress) = crate::allocator::ingress_network(view) {
            want.insert(id(&*ingress).to_owned());
        }
        let gone: Vec<String> = self
            .networks
            .keys()
            .filter(|n| !want.contains(*n))
            .cloned()
            .collect();
        for nid in &gone {
            self.networks.remove(nid);
            msg.removed_network_ids.push(nid.clone());
            for (task, nets) in &mut self.peers {
                if nets.remove(nid).is_some() {
                    msg.removed_peers.push(pb::NetworkPeerKey {
                        task_id: task.clone(),
                        network_id: nid.clone(),
                    });
                }
            }
        }
        self.peers.retain(|_, nets| !nets.is_empty());
        let new: Vec<String> = want
            .into_iter()
            .filter(|n| !self.networks.contains_key(n))
            .collect();
        for nid in &new {
            let Some(n) = view.get::<pb::Network>(nid) else {
                continue;
            };
            self.networks.insert(nid.clone(), (*n).clone());
            msg.updated_networks.push((*n).clone());
        }
        if !new.is_empty() {
            // A network joined: everyone on it, found through the services
            // on it (tasks are indexed by service, not by network), so the
            // cost is the services plus their tasks, never every task.
            for s in view.list::<pb::Service>() {
                let nets = service_network_ids(view, &s);
                if !new.iter().any(|n| nets.contains(n)) {
                    continue;
                }
                for t in view.tasks_by_service(id(&*s)) {
                    if task_network_ids(&t).any(|n| new.iter().any(|x| x == n)) {
                        self.sync_task(view, id(&*t), msg);
                    }
                }
            }
        }
        if !new.is_empty() || !gone.is_empty() {
            for s in view.list::<pb::Service>() {
                self.sync_service(view, id(&*s), msg);
            }
            let stale: Vec<String> = self
                .services
                .keys()
                .filter(|sid| view.get::<pb::Service>(sid).is_none())
                .cloned()
                .collect();
            for sid in stale {
                self.sync_service(view, &sid, msg);
            }
        }
    }

    fn sync_task(&mut self, view: &ReadTx, task_id: &str, msg: &mut pb::AssignmentsMessage) {
        let cur = view.get::<pb::Task>(task_id);
        let want: BTreeMap<String, pb::NetworkPeer> = cur
            .as_deref()
            .map(|t| {
                task_network_ids(t)
                    .filter(|n| self.networks.contains_key(*n))
                    .filter_map(|n| Some((n.to_owned(), peer(view, t, n)?)))
                    .collect()
            })
            .unwrap_or_default();
        let sent = self.peers.remove(task_id).unwrap_or_default();
        for (nid, p) in &want {
            if sent.get(nid) != Some(p) {
                msg.updated_peers.push(p.clone());
            }
        }
        for nid in sent.keys().filter(|n| !want.contains_key(*n)) {
            msg.removed_peers.push(pb::NetworkPeerKey {
                task_id: task_id.to_owned(),
                network_id: nid.clone(),
            });
        }
        if !want.is_empty() {
            self.peers.insert(task_id.to_owned(), want);
        }
    }

    fn sync_service(&mut self, view: &ReadTx, service_id: &str, msg: &mut pb::AssignmentsMessage) {
        let want = view.get::<pb::Service>(service_id).and_then(|s| {
            service_network_ids(view, &s)
                .iter()
                .any(|n| self.networks.contains_key(n))
                .then(|| service_endpoints(view, &s))
        });
        match want {
            Some(e) => {
                if self.services.get(service_id) != Some(&e) {
                    self.services.insert(service_id.to_owned(), e.clone());
                    msg.updated_services.push(e);
                }
            }
            None => {
                if self.services.remove(service_id).is_some() {
                    msg.removed_service_ids.push(service_id.to_owned());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
