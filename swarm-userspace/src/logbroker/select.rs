//! Pure decisions of the broker: which tasks a selector means and on which
//! nodes they run, and when a subscription is complete. No I/O, no clock.
use std::collections::{BTreeMap, BTreeSet};

use swarm_proto::v1 as pb;
use tonic::Status;

use crate::store::ReadTx;

/// A selector with every reference resolved to an ID.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resolved {
    pub services: BTreeSet<String>,
    pub nodes: BTreeSet<String>,
    pub tasks: BTreeSet<String>,
}

/// Task IDs per node ID.
pub type Placement = BTreeMap<String, BTreeSet<String>>;

fn one<T>(kind: &str, r: &str, mut found: Vec<T>) -> Result<T, Status> {
    match found.len() {
        0 => Err(Status::not_found(format!("no such {kind}: {r}"))),
        1 => Ok(found.remove(0)),
        n => Err(Status::invalid_argument(format!(
            "{kind} {r} is ambiguous ({n} matches): use a longer ID prefix"
        ))),
    }
}

fn id_of(meta: Option<&pb::Meta>) -> String {
    meta.map(|m| m.id.clone()).unwrap_or_default()
}

/// Resolves services (ID, name, unique ID prefix), nodes (ID, hostname,
/// unique ID prefix) and tasks (ID, unique ID prefix) against `view`.
pub fn resolve(view: &ReadTx, sel: &pb::LogSelector) -> Result<Resolved, Status> {
    if sel.service_ids.is_empty() && sel.node_ids.is_empty() && sel.task_ids.is_empty() {
        return Err(Status::invalid_argument(
            "no service, task or node given: say whose logs to show",
        ));
    }
    let mut out = Resolved::default();
    for r in &sel.service_ids {
        let s = match view.get::<pb::Service>(r) {
            Some(s) => s,
            None => match view.get_by_name::<pb::Service>(r) {
                Some(s) => s,
                None => one("service", r, view.find_by_id_prefix::<pb::Service>(r))?,
            },
        };
        out.services.insert(id_of(s.meta.as_ref()));
    }
    for r in &sel.node_ids {
        let n = match view.get::<pb::Node>(r) {
            Some(n) => n,
            None => {
                let by_host: Vec<_> = view
                    .list::<pb::Node>()
                    .filter(|n| n.description.as_ref().is_some_and(|d| d.hostname == *r))
                    .collect();
                if by_host.is_empty() {
                    one("node", r, view.find_by_id_prefix::<pb::Node>(r))?
                } else {
                    one("node", r, by_host)?
                }
            }
        };
        out.nodes.insert(id_of(n.meta.as_ref()));
    }
    for r in &sel.task_ids {
        let t = match view.get::<pb::Task>(r) {
            Some(t) => t,
            None => one("task", r, view.find_by_id_prefix::<pb::Task>(r))?,
        };
        out.tasks.insert(id_of(t.meta.as_ref()));
    }
    Ok(out)
}

/// Where the selected tasks run now: every selected task that has been
/// assigned to a node, by node. Tasks that ended are included: their logs
/// stay on the node until the task is removed.
pub fn placement(view: &ReadTx, sel: &Resolved) -> Placement {
    let mut out = Placement::new();
    let mut add = |t: &pb::Task| {
        if !t.node_id.is_empty() {
            out.entry(t.node_id.clone())
                .or_default()
                .insert(id_of(t.meta.as_ref()));
        }
    };
    for s in &sel.services {
        view.tasks_by_service(s).iter().for_each(|t| add(t));
    }
    for n in &sel.nodes {
        view.tasks_by_node(n).iter().for_each(|t| add(t));
    }
    for id in &sel.tasks {
        if let Some(t) = view.get::<pb::Task>(id) {
            add(&t);
        }
    }
    out
}

/// The nodes whose task sets grew or appeared from `old` to `new`, with
/// their new sets: what to (re)send. Tasks never leave a subscription (a
/// finished task's logs are still wanted), so `new` is merged into `old`.
pub fn grow(old: &mut Placement, new: Placement) -> Placement {
    let mut changed = Placement::new();
    for (node, tasks) in new {
        let cur = old.entry(node.clone()).or_default();
        let before = cur.len();
        cur.extend(tasks);
        if cur.len() != before {
            changed.insert(node, cur.clone());
        }
    }
    changed
}

/// Where one node stands in a subscription.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeState {
    /// Sent (or waiting for the node to listen); no answer yet.
    Waiting,
    /// The node opened its publish stream.
    Answering,
    /// The node sent everything.
    Done,
    /// No logs will come from it, and why.
    Failed(String),
}

/// Tracks which nodes of a subscription have finished.
#[derive(Clone, Debug, Default)]
pub struct Progress {
    nodes: BTreeMap<String, NodeState>,
}

impl Progress {
    /// Adds a node (no-op if known).
    pub fn add(&mut self, node: &str) {
        self.nodes
            .entry(node.to_string())
            .or_insert(NodeState::Waiting);
    }

    pub fn answering(&mut self, node: &str) {
        if let Some(s) = self.nodes.get_mut(node)
            && *s == NodeState::Waiting
        {
            *s = NodeState::Answering;
        }
    }

    pub fn done(&mut self, node: &str) {
        if let Some(s) = self.nodes.get_mut(node)
            && !matches!(s, NodeState::Failed(_))
        {
            *s = NodeState::Done;
        }
    }

    /// Marks a node failed unless it already finished.
    pub fn fail(&mut self, node: &str, why: String) {
        if let Some(s) = self.nodes.get_mut(node)
            && matches!(s, NodeState::Waiting | NodeState::Answering)
        {
            *s = NodeState::Failed(why);
        }
    }

    /// Nodes that have not answered at all.
    pub fn waiting(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|(_, s)| **s == NodeState::Waiting)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Every node finished or failed.
    pub fn complete(&self) -> bool {
        self.nodes
            .values()
            .all(|s| matches!(s, NodeState::Done | NodeState::Failed(_)))
    }

    /// Why the logs are incomplete, one reason per failed node.
    pub fn incomplete(&self) -> Vec<String> {
        self.nodes
            .values()
            .filter_map(|s| match s {
                NodeState::Failed(why) => Some(why.clone()),
                _ => None,
            })
            .collect()
    }

    pub fn state(&self, node: &str) -> Option<&NodeState> {
        self.nodes.get(node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{MemoryStore, WriteTx, new_batch};

    fn meta(id: &str) -> Option<pb::Meta> {
        Some(pb::Meta {
            id: id.into(),
            ..Default::default()
        })
    }

    fn store() -> MemoryStore {
        let s = MemoryStore::new();
        let actions = s
            .prepare(|tx: &mut WriteTx| {
                for (id, host) in [("nodeaaa", "node1"), ("nodebbb", "node2")] {
                    tx.create(pb::Node {
                        meta: meta(id),
                        description: Some(pb::NodeDescription {
                            hostname: host.into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    })?;
                }
                for (id, name) in [("svcweb", "web"), ("svcdb", "db")] {
                    tx.create(pb::Service {
                        meta: meta(id),
                        spec: Some(pb::ServiceSpec {
                            annotations: Some(pb::Annotations {
                                name: name.into(),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }),
                        ..Default::default()
                    })?;
                }
                for (id, svc, node) in [
                    ("taskw1", "svcweb", "nodeaaa"),
                    ("taskw2", "svcweb", "nodebbb"),
                    ("taskw3", "svcweb", ""),
                    ("taskd1", "svcdb", "nodebbb"),
                ] {
                    tx.create(pb::Task {
                        meta: meta(id),
                        service_id: svc.into(),
                        node_id: node.into(),
                        ..Default::default()
                    })?;
                }
                Ok::<(), crate::store::StoreError>(())
            })
            .unwrap();
        s.apply(1, new_batch(actions)).unwrap();
        s
    }

    fn sel(services: &[&str], nodes: &[&str], tasks: &[&str]) -> pb::LogSelector {
        let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect();
        pb::LogSelector {
            service_ids: v(services),
            node_ids: v(nodes),
            task_ids: v(tasks),
        }
    }

    fn set(ids: &[&str]) -> BTreeSet<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn resolves_names_prefixes_and_hostnames() {
        let view = store().view();
        let r = resolve(&view, &sel(&["web", "svcd"], &["node2"], &["taskd"])).unwrap();
        assert_eq!(r.services, set(&["svcweb", "svcdb"]));
        assert_eq!(r.nodes, set(&["nodebbb"]));
        assert_eq!(r.tasks, set(&["taskd1"]));
        let e = resolve(&view, &sel(&["nope"], &[], &[])).unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound);
        assert!(e.message().contains("no such service: nope"));
        let e = resolve(&view, &sel(&[], &[], &["taskw"])).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(resolve(&view, &sel(&[], &[], &[])).is_err());
    }

    #[test]
    fn placement_groups_assigned_tasks_by_node() {
        let view = store().view();
        let r = resolve(&view, &sel(&["web"], &[], &[])).unwrap();
        let p = placement(&view, &r);
        assert_eq!(p.len(), 2);
        assert_eq!(p["nodeaaa"], set(&["taskw1"]));
        assert_eq!(p["nodebbb"], set(&["taskw2"]));
        let r = resolve(&view, &sel(&[], &["node2"], &["taskw1"])).unwrap();
        let p = placement(&view, &r);
        assert_eq!(p["nodeaaa"], set(&["taskw1"]));
        assert_eq!(p["nodebbb"], set(&["taskw2", "taskd1"]));
    }

    #[test]
    fn grow_reports_only_nodes_with_new_tasks() {
        let mut cur = Placement::new();
        cur.insert("a".into(), set(&["t1"]));
        let mut new = Placement::new();
        new.insert("a".into(), set(&["t1"]));
        new.insert("b".into(), set(&["t2"]));
        let changed = grow(&mut cur, new);
        assert_eq!(changed.len(), 1);
        assert_eq!(changed["b"], set(&["t2"]));
        let mut new = Placement::new();
        new.insert("a".into(), set(&["t3"]));
        let changed = grow(&mut cur, new);
        // The old task stays: its logs are still wanted.
        assert_eq!(changed["a"], set(&["t1", "t3"]));
        assert_eq!(cur["b"], set(&["t2"]));
    }

    #[test]
    fn progress_completes_when_every_node_is_done_or_failed() {
        let mut p = Progress::default();
        assert!(p.complete());
        p.add("a");
        p.add("b");
        assert!(!p.complete());
        assert_eq!(p.waiting(), ["a", "b"]);
        p.answering("a");
        assert_eq!(p.waiting(), ["b"]);
        p.done("a");
        p.fail("a", "late".into());
        assert_eq!(p.state("a"), Some(&NodeState::Done));
        assert!(!p.complete());
        p.fail("b", "node b is not available".into());
        p.done("b");
        assert!(p.complete());
        assert_eq!(p.incomplete(), ["node b is not available"]);
    }
}
