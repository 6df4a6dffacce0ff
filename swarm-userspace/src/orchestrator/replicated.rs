//! Replicated services: exactly `replicas` slots, each with one wanted task
//! (swarmkit's replicated orchestrator and its restart handling).
//!
//! Scale up fills the lowest free slot numbers from 1; scale down removes
//! the slots whose tasks are least useful: dead or unassigned first, then
//! the extra copies on the nodes that run the most of the service, then
//! tasks not yet running, then the newest. Their tasks get desired REMOVE
//! and the reaper deletes them once stopped.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::SystemTime;

use swarm_proto::v1 as pb;
use swarm_proto::v1::TaskState as S;

use super::instance::{self, Opts, occupied};
use super::plan::{Groups, Ix, Plan};
use super::task::{NodeHealth, created, has_ended, is, is_live, new_task, node_health, state};
use super::{Action, Context, SlotKey};

/// The actions that bring a replicated service's slots in line with its
/// spec; see the [module](self) for the rules. `tasks` are all the
/// service's tasks.
#[must_use]
pub fn reconcile(ctx: &Context<'_>, service: &pb::Service, tasks: &[Arc<pb::Task>]) -> Vec<Action> {
    let mut plan = Plan::new(tasks);
    stage(ctx, service, &mut plan);
    plan.into_actions()
}

pub(crate) fn replicas_of(service: &pb::Service) -> Option<u64> {
    match service.spec.as_ref()?.mode.as_ref()? {
        pb::service_spec::Mode::Replicated(r) => Some(r.replicas),
        _ => None,
    }
}

pub(crate) fn stage(ctx: &Context<'_>, service: &pb::Service, plan: &mut Plan) {
    let Some(replicas) = replicas_of(service) else {
        return;
    };
    // Slot 0 belongs to global services; such tasks here are strays.
    let strays: Vec<Ix> = plan
        .tasks()
        .filter(|(_, t)| t.slot == 0)
        .map(|(i, _)| i)
        .collect();
    for i in strays {
        plan.set_desired(i, S::Remove);
    }
    let slots = plan.group_by(|t| (t.slot > 0).then_some(SlotKey::Replica(t.slot)));
    let mut kept: BTreeSet<u64> = slots
        .iter()
        .filter(|(_, ixs)| occupied(plan, ixs))
        .filter_map(|(k, _)| k.replica())
        .collect();

    let excess = (kept.len() as u64).saturating_sub(replicas);
    if excess > 0 {
        for slot in victims(ctx, plan, &slots, &kept, excess) {
            kept.remove(&slot);
            for &i in slots.get(&SlotKey::Replica(slot)) {
                plan.set_desired(i, S::Remove);
            }
        }
    }

    for &slot in &kept {
        let key = SlotKey::Replica(slot);
        let opts = Opts {
            key,
            job: false,
            allow_new: true,
        };
        instance::reconcile(ctx, service, plan, &opts, slots.get(&opts.key));
    }

    let missing = replicas.saturating_sub(kept.len() as u64);
    let mut next = 1u64;
    for _ in 0..missing {
        while kept.contains(&next) {
            next += 1;
        }
        plan.create(new_task(ctx, service, &SlotKey::Replica(next)));
        kept.insert(next);
    }
}

/// What a slot offers, for choosing which to drop.
struct Candidate {
    slot: u64,
    /// The node of its healthy task, if it has one and it is assigned.
    node: Option<String>,
    healthy: bool,
    running: bool,
    created: SystemTime,
}

/// The `count` slots to remove when scaling down.
fn victims(
    ctx: &Context<'_>,
    plan: &Plan,
    slots: &Groups,
    kept: &BTreeSet<u64>,
    count: u64,
) -> Vec<u64> {
    let mut candidates: Vec<Candidate> = kept
        .iter()
        .map(|&slot| {
            let serving = slots
                .get(&SlotKey::Replica(slot))
                .iter()
                .filter_map(|&i| plan.get(i))
                .filter(|t| is_live(t) && !has_ended(t) && node_health(ctx, t) == NodeHealth::Fine)
                .max_by_key(|t| (is(state(t), S::Running), created(t)));
            Candidate {
                slot,
                node: serving
                    .filter(|t| !t.node_id.is_empty())
                    .map(|t| t.node_id.clone()),
                healthy: serving.is_some(),
                running: serving.is_some_and(|t| is(state(t), S::Running)),
                created: serving.map_or(SystemTime::UNIX_EPOCH, created),
            }
        })
        .collect();

    // Number each node's copies: running before starting, older first, so
    // the highest numbers are the extra, least settled copies.
    let mut copy_index: BTreeMap<u64, usize> = BTreeMap::new();
    let mut by_node: BTreeMap<&str, Vec<&Candidate>> = BTreeMap::new();
    for c in &candidates {
        if let Some(node) = &c.node {
            by_node.entry(node.as_str()).or_default().push(c);
        }
    }
    for copies in by_node.values_mut() {
        copies.sort_by_key(|c| (!c.running, c.created, c.slot));
        for (i, c) in copies.iter().enumerate() {
            copy_index.insert(c.slot, i + 1);
        }
    }

    // Most removable first.
    candidates.sort_by_key(|c| {
        std::cmp::Reverse((
            !c.healthy,
            copy_index.get(&c.slot).copied().unwrap_or(usize::MAX),
            !c.running,
            c.created,
            c.slot,
        ))
    });
    candidates
        .iter()
        .take(usize::try_from(count).unwrap_or(usize::MAX))
        .map(|c| c.slot)
        .collect()
}

impl SlotKey {
    pub(crate) fn replica(&self) -> Option<u64> {
        match self {
            SlotKey::Replica(s) => Some(*s),
            SlotKey::Node(_) => None,
        }
    }
}
