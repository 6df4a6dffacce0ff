//! What the scheduler knows about each node: the node object, the resources
//! left after the reservations of the tasks already on it, and how many
//! tasks (in total and per service) it runs.
//!
//! Owns: that accounting. Built from a store view or from plain objects;
//! never reads the store by itself.

use std::borrow::Borrow;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use swarm_proto::v1 as pb;

use crate::store::ReadTx;

/// Resources left on a node. Negative if the node is overcommitted (its
/// reported resources shrank under tasks already there).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Available {
    pub nano_cpus: i64,
    pub memory_bytes: i64,
}

/// One node as the scheduler sees it.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub node: Arc<pb::Node>,
    pub available: Available,
    /// Tasks here whose desired state is at most COMPLETE (swarmkit's
    /// active tasks): they rank the node.
    pub active_tasks: u64,
    /// Host-mode published ports in use: (protocol, port).
    pub(crate) host_ports: HashSet<(i32, u32)>,
}

impl NodeInfo {
    #[must_use]
    pub fn id(&self) -> &str {
        self.node.meta.as_ref().map_or("", |m| m.id.as_str())
    }
}

/// Every node and the load on it.
#[derive(Debug, Clone, Default)]
pub struct NodeSet {
    /// Sorted by node ID, so ties break the same way on every run.
    pub(crate) nodes: Vec<NodeInfo>,
    index: HashMap<String, usize>,
    /// Active tasks per service per node index: kept apart from the nodes so
    /// ranking a task group looks the service up once, not once per node.
    pub(crate) by_service: HashMap<String, HashMap<usize, u64>>,
}

pub(crate) fn state_of(t: &pb::Task) -> i32 {
    t.status.as_ref().map_or(0, |s| s.state)
}

/// (nano CPUs, memory bytes) a task reserves.
pub(crate) fn reservations(spec: Option<&pb::TaskSpec>) -> (i64, i64) {
    spec.and_then(|s| s.resources.as_ref())
        .and_then(|r| r.reservations.as_ref())
        .map_or((0, 0), |r| (r.nano_cpus, r.memory_bytes))
}

/// Host-mode ports a task publishes: (protocol, port).
pub(crate) fn host_ports(task: &pb::Task) -> impl Iterator<Item = (i32, u32)> + '_ {
    task.endpoint
        .iter()
        .flat_map(|e| e.ports.iter())
        .filter(|p| p.publish_mode == pb::PublishMode::Host as i32 && p.published_port != 0)
        .map(|p| (p.protocol, p.published_port))
}

impl NodeSet {
    /// The nodes, loaded with the tasks assigned to them that have not yet
    /// ended (observed state ASSIGNED to RUNNING). Tasks on unknown nodes
    /// are ignored.
    pub fn new<N, T>(nodes: N, tasks: T) -> NodeSet
    where
        N: IntoIterator<Item = Arc<pb::Node>>,
        T: IntoIterator,
        T::Item: Borrow<pb::Task>,
    {
        let mut nodes: Vec<NodeInfo> = nodes
            .into_iter()
            .map(|node| {
                let available = node
                    .description
                    .as_ref()
                    .and_then(|d| d.resources.as_ref())
                    .map_or_else(Available::default, |r| Available {
                        nano_cpus: r.nano_cpus,
                        memory_bytes: r.memory_bytes,
                    });
                NodeInfo {
                    node,
                    available,
                    active_tasks: 0,
                    host_ports: HashSet::new(),
                }
            })
            .collect();
        nodes.sort_by(|a, b| a.id().cmp(b.id()));
        let index = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.id().to_owned(), i))
            .collect();
        let mut set = NodeSet {
            nodes,
            index,
            by_service: HashMap::new(),
        };
        for task in tasks {
            let task = task.borrow();
            let state = state_of(task);
            if task.node_id.is_empty()
                || state < pb::TaskState::Assigned as i32
                || state > pb::TaskState::Running as i32
            {
                continue;
            }
            if let Some(&i) = set.index.get(&task.node_id) {
                set.add_task(i, task);
            }
        }
        set
    }

    /// Every node in the view and the tasks on them.
    #[must_use]
    pub fn from_view(view: &ReadTx) -> NodeSet {
        NodeSet::new(view.list::<pb::Node>(), view.list::<pb::Task>())
    }

    /// Counts `task` on the node at `i`.
    pub(crate) fn add_task(&mut self, i: usize, task: &pb::Task) {
        let (cpus, memory) = reservations(task.spec.as_ref());
        let info = &mut self.nodes[i];
        info.available.nano_cpus = info.available.nano_cpus.saturating_sub(cpus);
        info.available.memory_bytes = info.available.memory_bytes.saturating_sub(memory);
        info.host_ports.extend(host_ports(task));
        if task.desired_state <= pb::TaskState::Complete as i32 {
            info.active_tasks += 1;
            *self
                .by_service
                .entry(task.service_id.clone())
                .or_default()
                .entry(i)
                .or_default() += 1;
        }
    }

    pub(crate) fn position(&self, node_id: &str) -> Option<usize> {
        self.index.get(node_id).copied()
    }

    #[must_use]
    pub fn get(&self, node_id: &str) -> Option<&NodeInfo> {
        self.position(node_id).map(|i| &self.nodes[i])
    }

    /// Active tasks of `service_id` on the node.
    #[must_use]
    pub fn tasks_of_service(&self, node_id: &str, service_id: &str) -> u64 {
        self.position(node_id)
            .and_then(|i| self.by_service.get(service_id)?.get(&i).copied())
            .unwrap_or(0)
    }

    /// The nodes, sorted by ID.
    pub fn iter(&self) -> impl Iterator<Item = &NodeInfo> {
        self.nodes.iter()
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}
