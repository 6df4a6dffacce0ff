//! Spread trees: placement preferences (`--placement-pref
//! spread=node.labels.zone`) split the nodes by label value, level by
//! level; each task goes to the branch with the fewest tasks of its service,
//! then down to the best node of the leaf it reaches.
//!
//! Owns: the tree and the order in which it offers nodes. The caller decides
//! what a placement does to a node and whether the node can take another.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use swarm_proto::v1 as pb;

use super::constraint::{
    ENGINE_LABEL_PREFIX, NODE_LABEL_PREFIX, engine_label, node_label, strip_prefix_fold,
};

/// A node's rank for one task group, smallest first: recent failures (only
/// once they reach the limit), then tasks of the service, then all tasks,
/// then position (node ID order) so ties break the same way every time.
pub type NodeKey = (u64, u64, u64, usize);

/// One level of spreading: what a node's value is at this level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Spread {
    NodeLabel(String),
    EngineLabel(String),
}

impl Spread {
    /// The supported preferences of a placement, in order. Descriptors
    /// other than node and engine labels are ignored, as in swarmkit.
    #[must_use]
    pub fn of(placement: Option<&pb::Placement>) -> Vec<Spread> {
        placement
            .map(|p| p.preferences.as_slice())
            .unwrap_or_default()
            .iter()
            .filter_map(|p| match &p.preference {
                Some(pb::placement_preference::Preference::Spread(s)) => {
                    let d = s.spread_descriptor.as_str();
                    strip_prefix_fold(d, NODE_LABEL_PREFIX)
                        .map(|l| Spread::NodeLabel(l.to_owned()))
                        .or_else(|| {
                            strip_prefix_fold(d, ENGINE_LABEL_PREFIX)
                                .map(|l| Spread::EngineLabel(l.to_owned()))
                        })
                }
                None => None,
            })
            .collect()
    }

    /// The node's value at this level; nodes without the label share the
    /// empty value, so they form a branch of their own.
    fn value<'a>(&self, node: &'a pb::Node) -> &'a str {
        match self {
            Spread::NodeLabel(l) => node_label(node, l),
            Spread::EngineLabel(l) => engine_label(node, l),
        }
        .unwrap_or("")
    }
}

/// Nodes arranged for one task group.
#[derive(Debug)]
pub enum Tree {
    /// Nodes that can take a task now, best first.
    Leaf(BinaryHeap<Reverse<NodeKey>>),
    /// Children by value (in value order), and a heap of (tasks of the
    /// service under the child, child index).
    Branch {
        children: Vec<Tree>,
        heap: BinaryHeap<Reverse<(u64, usize)>>,
    },
}

/// What the tree needs to know about node `i`.
pub trait NodeView {
    fn node(&self, i: usize) -> &pb::Node;
    /// Tasks of the service on node `i`.
    fn service_tasks(&self, i: usize) -> u64;
    /// `Some(rank)` if node `i` can take a task of the group now.
    fn eligible(&self, i: usize) -> Option<NodeKey>;
}

impl Tree {
    /// A tree over `nodes` (indices for `view`). Every node counts towards
    /// its branch's tasks, eligible or not, so spreading sees tasks on
    /// paused nodes too; only eligible nodes can be picked.
    pub fn build(levels: &[Spread], nodes: &[usize], view: &impl NodeView) -> Tree {
        let Some((level, rest)) = levels.split_first() else {
            return Tree::Leaf(
                nodes
                    .iter()
                    .filter_map(|&i| view.eligible(i))
                    .map(Reverse)
                    .collect(),
            );
        };
        let mut by_value: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for &i in nodes {
            by_value
                .entry(level.value(view.node(i)))
                .or_default()
                .push(i);
        }
        let mut children = Vec::with_capacity(by_value.len());
        let mut heap = BinaryHeap::with_capacity(by_value.len());
        for (c, members) in by_value.values().enumerate() {
            let tasks = members.iter().map(|&i| view.service_tasks(i)).sum();
            children.push(Tree::build(rest, members, view));
            heap.push(Reverse((tasks, c)));
        }
        Tree::Branch { children, heap }
    }

    /// Places one task: finds the best node, calls `assign(i)`, which
    /// commits the task there and returns the node's new rank if it can
    /// take another task of the group. Returns the node, or `None` when no
    /// node below can take the task.
    pub fn place(&mut self, assign: &mut impl FnMut(usize) -> Option<NodeKey>) -> Option<usize> {
        match self {
            Tree::Leaf(heap) => {
                let Reverse(key) = heap.pop()?;
                let i = key.3;
                if let Some(next) = assign(i) {
                    heap.push(Reverse(next));
                }
                Some(i)
            }
            Tree::Branch { children, heap } => {
                while let Some(Reverse((tasks, c))) = heap.pop() {
                    if let Some(i) = children[c].place(assign) {
                        heap.push(Reverse((tasks + 1, c)));
                        return Some(i);
                    }
                    // Nothing left under this child: it stays out.
                }
                None
            }
        }
    }
}
