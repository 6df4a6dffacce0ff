//! Global services: one task on every eligible node (swarmkit's global
//! orchestrator).
//!
//! A node is eligible unless it is down, drained, or fails the service's
//! constraints; tasks on nodes that stop being eligible are shut down and
//! not replaced. A paused node keeps its task but gets no new one. Tasks
//! are created bound to their node (slot 0); the scheduler still checks
//! the node's readiness and resources before assigning them.

use std::sync::Arc;

use swarm_proto::v1 as pb;
use swarm_proto::v1::TaskState as S;

use super::instance::{self, Instance, Opts};
use super::plan::{Ix, Plan};
use super::task::{is_live, new_task};
use super::{Action, Context, SlotKey};
use crate::scheduler::{Constraint, node_matches, parse_constraints};

/// The actions that give every eligible node exactly one wanted task of a
/// global service. `tasks` are all the service's tasks.
#[must_use]
pub fn reconcile(ctx: &Context<'_>, service: &pb::Service, tasks: &[Arc<pb::Task>]) -> Vec<Action> {
    let mut plan = Plan::new(tasks);
    stage(ctx, service, &mut plan, None);
    plan.into_actions()
}

/// The service's constraints; ones that do not parse (the control API
/// rejects them) constrain nothing, as in swarmkit.
pub(crate) fn constraints_of(service: &pb::Service) -> Vec<Constraint> {
    service
        .spec
        .as_ref()
        .and_then(|s| s.task.as_ref())
        .and_then(|t| t.placement.as_ref())
        .and_then(|p| parse_constraints(&p.constraints).ok())
        .unwrap_or_default()
}

/// Whether a node should run the service at all.
pub(crate) fn eligible(node: &pb::Node, constraints: &[Constraint]) -> bool {
    let down = node
        .status
        .as_ref()
        .is_some_and(|s| s.state == pb::NodeState::Down as i32);
    let drained = node
        .spec
        .as_ref()
        .is_some_and(|s| s.availability == pb::NodeAvailability::Drain as i32);
    !down && !drained && node_matches(constraints, node)
}

pub(crate) fn paused(node: &pb::Node) -> bool {
    node.spec
        .as_ref()
        .is_some_and(|s| s.availability == pb::NodeAvailability::Pause as i32)
}

/// One task per eligible node. `job_iteration` is set for global jobs:
/// only tasks of that iteration count, and completed ones stay completed.
pub(crate) fn stage(
    ctx: &Context<'_>,
    service: &pb::Service,
    plan: &mut Plan,
    job_iteration: Option<u64>,
) {
    let job = job_iteration.is_some();
    let counts = |t: &pb::Task| job_iteration.is_none_or(|i| t.job_iteration == i);
    let constraints = constraints_of(service);
    let unbound: Vec<Ix> = plan
        .tasks()
        .filter(|(_, t)| counts(t) && t.node_id.is_empty())
        .map(|(i, _)| i)
        .collect();
    for i in unbound {
        plan.set_desired(i, S::Remove);
    }
    let by_node = plan.group_by(|t| {
        (counts(t) && !t.node_id.is_empty()).then(|| SlotKey::Node(t.node_id.clone()))
    });
    for (node_id, node) in ctx.nodes {
        let key = SlotKey::Node(node_id.clone());
        let ixs = by_node.get(&key);
        if !eligible(node, &constraints) {
            for &i in ixs {
                if plan.get(i).is_some_and(is_live) {
                    plan.set_desired(i, S::Shutdown);
                }
            }
            continue;
        }
        let opts = Opts {
            key,
            job,
            allow_new: !paused(node),
        };
        if instance::reconcile(ctx, service, plan, &opts, ixs) == Instance::Free && opts.allow_new {
            plan.create(new_task(ctx, service, &opts.key));
        }
    }
    // Tasks on nodes that were removed from the swarm: nothing will ever
    // report on them again.
    for (key, ixs) in by_node.iter() {
        if let SlotKey::Node(node_id) = key
            && !ctx.nodes.contains_key(node_id)
        {
            for &i in ixs {
                plan.remove(i);
            }
        }
    }
}
