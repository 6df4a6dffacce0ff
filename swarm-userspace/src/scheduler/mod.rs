//! The scheduler: chooses a node for every pending task (swarmkit's
//! `manager/scheduler`).
//!
//! Owns: the decision only. Nodes are filtered ([`filter`]: ready and
//! active, resources, constraints, platform, host-mode ports, max replicas
//! per node), then ranked: spread preferences first ([`spread`]), then
//! fewest tasks of the service, then fewest tasks overall; a node where the
//! service version failed [`MAX_RECENT_FAILURES`] times in the last five
//! minutes ranks below nodes with fewer failures. Tasks left pending get
//! docker's "no suitable node (...)" reason.
//!
//! Must never: read the store, a clock or the network, or write anything.
//! [`schedule`] takes a [`NodeSet`], the pending tasks, a
//! [`FailureHistory`] and `now`, and returns [`Decisions`]; the leader loop
//! turns them into one store batch ([`Decisions::write`]).

pub mod constraint;
mod failures;
pub mod filter;
mod nodeset;
pub mod spread;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use std::borrow::Borrow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use swarm_proto::v1 as pb;

use crate::store::{ReadTx, StoreError, WriteTx};

pub use constraint::{
    Constraint, ConstraintError, Op, node_matches, parse_constraints, validate_constraints,
};
pub use failures::{FAILURE_WINDOW, FailureHistory, MAX_RECENT_FAILURES};
pub use filter::{Explanation, Failure, Needs};
pub use nodeset::{Available, NodeInfo, NodeSet};
use spread::{NodeKey, NodeView, Spread, Tree};

/// The status message of a task the scheduler assigned.
pub const ASSIGNED_MESSAGE: &str = "scheduler assigned task to node";

/// A task placed on a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub task_id: String,
    pub node_id: String,
}

/// A task that stays PENDING, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unplaced {
    pub task_id: String,
    pub reason: String,
}

/// Tasks of one node that a pass writes one after another at most: see
/// [`Decisions::steps`]. The dispatcher sends a node one message per commit
/// that concerns it, and a big pass goes out as many commits; written in
/// the order spreading decides (round-robin over the nodes), every commit
/// would concern every node. Runs of 25 send a node its share of a 100,000
/// task pass on 1,000 nodes in 4 messages instead of one per commit (50),
/// while every node still gets its first tasks in the first quarter of the
/// pass, so real workers start pulling and starting early.
pub const NODE_RUN: usize = 25;

/// What one scheduling pass decided, in the order it decided it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decisions {
    pub assigned: Vec<Assignment>,
    pub unplaced: Vec<Unplaced>,
}

/// The order in which to write `assigned`: runs of up to `run` tasks of one
/// node. Round `r` holds each node's tasks `r × run` up to `(r + 1) × run`
/// in the order they were decided, nodes in the order they first got a
/// task; rounds go in order. So a node's tasks keep their order, and
/// consecutive writes concern few nodes.
fn in_node_runs(assigned: &[Assignment], run: usize) -> Vec<usize> {
    let run = run.max(1);
    let mut seen: HashMap<&str, (usize, usize)> = HashMap::new();
    let mut keys: Vec<(usize, usize, usize)> = Vec::with_capacity(assigned.len());
    for (i, a) in assigned.iter().enumerate() {
        let next_rank = seen.len();
        let (rank, count) = seen.entry(a.node_id.as_str()).or_insert((next_rank, 0));
        keys.push((*count / run, *rank, i));
        *count += 1;
    }
    keys.sort_unstable();
    keys.into_iter().map(|(_, _, i)| i).collect()
}

impl Decisions {
    /// Adds the decisions to a batch being prepared: assigned tasks move to
    /// ASSIGNED on their node, tasks left pending get their reason. A task
    /// that is gone or no longer schedulable in `tx`'s view (it changed
    /// since the pass) is skipped; the next pass sees it afresh.
    pub fn write(&self, tx: &mut WriteTx, now: SystemTime) -> Result<(), StoreError> {
        self.steps().try_for_each(|s| s.write(tx, now))
    }

    /// The decisions one by one, in the order [`write`](Self::write) writes
    /// them, for a writer that proposes them as it goes: assignments in
    /// runs of up to [`NODE_RUN`] per node, then the tasks left pending.
    pub fn steps(&self) -> impl Iterator<Item = Step<'_>> + Send {
        in_node_runs(&self.assigned, NODE_RUN)
            .into_iter()
            .map(|i| Step::Assign(&self.assigned[i]))
            .chain(self.unplaced.iter().map(Step::Unplaced))
    }
}

/// One decision of a pass, see [`Decisions::steps`].
#[derive(Debug, Clone, Copy)]
pub enum Step<'a> {
    Assign(&'a Assignment),
    Unplaced(&'a Unplaced),
}

impl Step<'_> {
    /// Adds this decision to a batch being prepared, as
    /// [`Decisions::write`] does.
    pub fn write(self, tx: &mut WriteTx, now: SystemTime) -> Result<(), StoreError> {
        match self {
            Step::Assign(a) => {
                tx.assign(&a.task_id, &a.node_id, assigned_status(now))?;
            }
            Step::Unplaced(u) => {
                if let Some(t) = tx.get::<pb::Task>(&u.task_id).filter(|t| is_schedulable(t))
                    && let Some(t) = unplaced_task(&t, &u.reason, now)
                {
                    tx.update(t)?;
                }
            }
        }
        Ok(())
    }
}

/// Whether the scheduler acts on `task`: the store's rule for an
/// assignment ([`awaits_node`](crate::store::awaits_node)). Tasks with a
/// node already (global services) are checked against that node only.
#[must_use]
pub fn is_schedulable(task: &pb::Task) -> bool {
    crate::store::awaits_node(task)
}

/// Every task in the view the scheduler should look at.
#[must_use]
pub fn pending_tasks(view: &ReadTx) -> Vec<Arc<pb::Task>> {
    view.list::<pb::Task>()
        .filter(|t| is_schedulable(t))
        .collect()
}

/// The status of a task the scheduler placed: ASSIGNED at `now`.
#[must_use]
pub fn assigned_status(now: SystemTime) -> pb::TaskStatus {
    pb::TaskStatus {
        timestamp: Some(now.into()),
        state: pb::TaskState::Assigned.into(),
        message: ASSIGNED_MESSAGE.to_owned(),
        ..Default::default()
    }
}

/// `task` with `reason` recorded in its status error, or `None` if it
/// already says so (no write needed).
#[must_use]
pub fn unplaced_task(task: &pb::Task, reason: &str, now: SystemTime) -> Option<pb::Task> {
    if task.status.as_ref().is_some_and(|s| s.err == reason) {
        return None;
    }
    let mut t = task.clone();
    let status = t.status.get_or_insert_with(Default::default);
    status.err = reason.to_owned();
    status.timestamp = Some(now.into());
    Some(t)
}

/// Decides nodes for `pending` (tasks that are not [`is_schedulable`] are
/// skipped) on a copy of `nodes`; see [`NodeSet::place`].
#[must_use]
pub fn schedule<T: Borrow<pb::Task>>(
    nodes: &NodeSet,
    pending: &[T],
    failures: &FailureHistory,
    now: SystemTime,
) -> Decisions {
    nodes.clone().place(pending, failures, now)
}

/// Tasks that share a service version, needs and preferences: placed
/// together, with one filter pass and one tree.
struct Group<'a> {
    needs: Needs,
    spread: Vec<Spread>,
    service_version: u64,
    tasks: Vec<&'a pb::Task>,
}

impl NodeSet {
    /// Decides nodes for `pending` and counts each placement on the node
    /// before the next task is placed, so the set afterwards reflects the
    /// decisions (keep it only if they are committed). Tasks already naming
    /// a node are checked against that node first; the others are placed
    /// by group.
    pub fn place<T: Borrow<pb::Task>>(
        &mut self,
        pending: &[T],
        failures: &FailureHistory,
        now: SystemTime,
    ) -> Decisions {
        let mut decisions = Decisions::default();
        let mut preassigned = Vec::new();
        let mut groups: Vec<Group<'_>> = Vec::new();
        let mut group_index: HashMap<(&str, u64), Vec<usize>> = HashMap::new();
        for task in pending {
            let task = task.borrow();
            if !is_schedulable(task) {
                continue;
            }
            if !task.node_id.is_empty() {
                preassigned.push(task);
                continue;
            }
            let needs = Needs::of(task);
            let spread = Spread::of(task.spec.as_ref().and_then(|s| s.placement.as_ref()));
            let candidates = group_index
                .entry((task.service_id.as_str(), task.service_version))
                .or_default();
            match candidates
                .iter()
                .find(|&&g| groups[g].needs == needs && groups[g].spread == spread)
            {
                Some(&g) => groups[g].tasks.push(task),
                None => {
                    candidates.push(groups.len());
                    groups.push(Group {
                        needs,
                        spread,
                        service_version: task.service_version,
                        tasks: vec![task],
                    });
                }
            }
        }
        for task in preassigned {
            self.place_preassigned(task, &mut decisions);
        }
        for group in &groups {
            self.place_group(group, failures, now, &mut decisions);
        }
        decisions
    }

    fn place_preassigned(&mut self, task: &pb::Task, decisions: &mut Decisions) {
        let Some(i) = self.position(&task.node_id) else {
            decisions.unplaced.push(Unplaced {
                task_id: task_id(task).to_owned(),
                reason: format!("node {} is not part of the swarm", task.node_id),
            });
            return;
        };
        let service_tasks = self.tasks_of_service(&task.node_id, &task.service_id);
        match Needs::of(task).check(&self.nodes[i], service_tasks) {
            Ok(()) => {
                self.add_task(i, task);
                decisions.assigned.push(Assignment {
                    task_id: task_id(task).to_owned(),
                    node_id: task.node_id.clone(),
                });
            }
            // swarmkit gives the bare explanation for a task bound to one
            // node.
            Err(f) => decisions.unplaced.push(Unplaced {
                task_id: task_id(task).to_owned(),
                reason: f.explain(1),
            }),
        }
    }

    fn place_group(
        &mut self,
        group: &Group<'_>,
        failures: &FailureHistory,
        now: SystemTime,
        decisions: &mut Decisions,
    ) {
        let n = self.nodes.len();
        let needs = &group.needs;
        let mut service_tasks = vec![0u64; n];
        if let Some(counts) = self.by_service.get(&needs.service_id) {
            for (&i, &c) in counts {
                service_tasks[i] = c;
            }
        }
        let mut penalty = vec![0u64; n];
        if let Some(by_node) = failures.nodes_of(&needs.service_id, group.service_version) {
            for (node_id, times) in by_node {
                let recent = failures::count_recent(times, now);
                if let (Some(i), true) = (self.position(node_id), recent >= MAX_RECENT_FAILURES) {
                    penalty[i] = recent as u64;
                }
            }
        }

        let mut ranked = Ranked {
            set: self,
            needs,
            service_tasks,
            penalty,
        };
        let all: Vec<usize> = (0..n).collect();
        let mut tree = Tree::build(&group.spread, &all, &ranked);
        let mut tasks = group.tasks.iter();
        for task in tasks.by_ref() {
            let placed = tree.place(&mut |i| {
                ranked.set.add_task(i, task);
                ranked.service_tasks[i] += 1;
                decisions.assigned.push(Assignment {
                    task_id: task_id(task).to_owned(),
                    node_id: ranked.set.nodes[i].id().to_owned(),
                });
                ranked.eligible(i)
            });
            if placed.is_none() {
                let reason = ranked.explain().no_suitable_node();
                decisions.unplaced.push(Unplaced {
                    task_id: task_id(task).to_owned(),
                    reason: reason.clone(),
                });
                for rest in tasks.by_ref() {
                    decisions.unplaced.push(Unplaced {
                        task_id: task_id(rest).to_owned(),
                        reason: reason.clone(),
                    });
                }
                break;
            }
        }
    }
}

/// The node set seen by one task group.
struct Ranked<'s, 'n> {
    set: &'s mut NodeSet,
    needs: &'n Needs,
    service_tasks: Vec<u64>,
    penalty: Vec<u64>,
}

impl Ranked<'_, '_> {
    fn explain(&self) -> Explanation {
        let mut e = Explanation::default();
        for (i, info) in self.set.nodes.iter().enumerate() {
            if let Err(f) = self.needs.check(info, self.service_tasks[i]) {
                e.add(f);
            }
        }
        e
    }
}

impl NodeView for Ranked<'_, '_> {
    fn node(&self, i: usize) -> &pb::Node {
        &self.set.nodes[i].node
    }

    fn service_tasks(&self, i: usize) -> u64 {
        self.service_tasks[i]
    }

    fn eligible(&self, i: usize) -> Option<NodeKey> {
        let info = &self.set.nodes[i];
        self.needs.check(info, self.service_tasks[i]).ok()?;
        Some((self.penalty[i], self.service_tasks[i], info.active_tasks, i))
    }
}

fn task_id(task: &pb::Task) -> &str {
    task.meta.as_ref().map_or("", |m| m.id.as_str())
}
