//! Prometheus metrics of a node: control plane and data plane.
//!
//! Owns the metric families (one process-wide registry, [`metrics()`]) and
//! the `/metrics` HTTP endpoint ([`server::MetricsServer`]). Event metrics
//! (latencies, counters) are recorded where the event happens; state
//! metrics (objects, nodes by state, Raft position, BPF counters) are read
//! from their owners at scrape time, so they are never stale. Names follow
//! Prometheus and SwarmKit conventions (`swarm_<subsystem>_<name>`, units
//! in the name, `_total` on counters). Must never block a scrape on the
//! cluster: everything read here is local memory or a local BPF map.
pub mod server;

use std::sync::LazyLock;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::{Registry, Unit},
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DatapathLabels {
    pub interface: String,
    pub direction: String,
    pub class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FrontendLabels {
    pub frontend: String,
    pub direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabel {
    pub action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WhereLabel {
    /// "local" or "remote".
    pub location: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MapLabel {
    pub map_name: String,
}

/// Every metric family of the node.
pub struct Metrics {
    pub registry: Registry,
    // Raft and store: events.
    pub raft_proposal_latency: Histogram,
    pub raft_apply_latency: Histogram,
    pub store_write_tx_latency: Histogram,
    pub raft_proposals_failed: Counter,
    // Raft and manager: state, refreshed at scrape.
    pub raft_term: Gauge,
    pub raft_is_leader: Gauge,
    pub raft_last_log_index: Gauge,
    pub raft_last_applied_index: Gauge,
    pub raft_log_entries: Gauge,
    pub raft_snapshots: Gauge,
    pub raft_managers: Gauge,
    pub raft_managers_reachable: Gauge,
    pub store_objects: Family<KindLabel, Gauge>,
    pub manager_nodes: Family<StateLabel, Gauge>,
    pub manager_tasks: Family<StateLabel, Gauge>,
    // Dispatcher.
    pub dispatcher_sessions: Gauge,
    pub dispatcher_heartbeats: Counter,
    pub dispatcher_scheduling_delay: Histogram,
    // Agent (worker): events, and tasks by state refreshed at scrape.
    pub agent_container_start_seconds: Histogram,
    pub agent_image_pull_seconds: Histogram,
    pub agent_image_pull_bytes: Counter,
    pub agent_tasks: Family<StateLabel, Gauge>,
    // Embedded DNS server: queries by result.
    pub dns_queries: Family<ResultLabel, Counter>,
    // Data plane, read from per-CPU BPF maps at scrape.
    /// Monotonic counters mirrored from the BPF maps at scrape time.
    pub datapath_packets: Family<DatapathLabels, Counter>,
    pub datapath_bytes: Family<DatapathLabels, Counter>,
    pub datapath_map_entries: Family<MapLabel, Gauge>,
    pub datapath_map_capacity: Family<MapLabel, Gauge>,
    /// Overlay frames by what the programs did with them.
    pub overlay_packets: Family<ActionLabel, Counter>,
    pub overlay_bytes: Family<ActionLabel, Counter>,
    /// Overlay frames dropped, by reason.
    pub overlay_drops: Family<ReasonLabel, Counter>,
    pub overlay_endpoints: Family<WhereLabel, Gauge>,
    /// Load balancer: packets by action and drops by reason.
    pub lb_packets: Family<ActionLabel, Counter>,
    pub lb_drops: Family<ReasonLabel, Counter>,
    /// Per frontend ("<service id>/<vni>") and direction.
    pub lb_service_packets: Family<FrontendLabels, Counter>,
    pub lb_service_bytes: Family<FrontendLabels, Counter>,
    pub lb_conntrack_entries: Gauge,
    pub lb_conntrack_capacity: Gauge,
    pub lb_conntrack_expired: Counter,
    pub lb_backends: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// Latency buckets from 0.25 ms to about 8 s.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

impl Metrics {
    fn new() -> Self {
        let mut r = Registry::with_prefix("swarm");
        let m = Metrics {
            raft_proposal_latency: latency(),
            raft_apply_latency: latency(),
            store_write_tx_latency: latency(),
            raft_proposals_failed: Counter::default(),
            raft_term: Gauge::default(),
            raft_is_leader: Gauge::default(),
            raft_last_log_index: Gauge::default(),
            raft_last_applied_index: Gauge::default(),
            raft_log_entries: Gauge::default(),
            raft_snapshots: Gauge::default(),
            raft_managers: Gauge::default(),
            raft_managers_reachable: Gauge::default(),
            store_objects: Family::default(),
            manager_nodes: Family::default(),
            manager_tasks: Family::default(),
            dispatcher_sessions: Gauge::default(),
            dispatcher_heartbeats: Counter::default(),
            dispatcher_scheduling_delay: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
            // 10 ms to about 80 s.
            agent_container_start_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
            // 50 ms to about 15 min.
            agent_image_pull_seconds: Histogram::new(exponential_buckets(0.05, 2.0, 15)),
            agent_image_pull_bytes: Counter::default(),
            agent_tasks: Family::default(),
            dns_queries: Family::default(),
            datapath_packets: Family::default(),
            datapath_bytes: Family::default(),
            datapath_map_entries: Family::default(),
            datapath_map_capacity: Family::default(),
            overlay_packets: Family::default(),
            overlay_bytes: Family::default(),
            overlay_drops: Family::default(),
            overlay_endpoints: Family::default(),
            lb_packets: Family::default(),
            lb_drops: Family::default(),
            lb_service_packets: Family::default(),
            lb_service_bytes: Family::default(),
            lb_conntrack_entries: Gauge::default(),
            lb_conntrack_capacity: Gauge::default(),
            lb_conntrack_expired: Counter::default(),
            lb_backends: Gauge::default(),
            registry: Registry::default(),
        };
        r.register_with_unit(
            "raft_proposal_latency",
            "Time from proposing a store batch to it being applied on the leader",
            Unit::Seconds,
            m.raft_proposal_latency.clone(),
        );
        r.register_with_unit(
            "raft_apply_latency",
            "Time to apply one committed entry to the state machine",
            Unit::Seconds,
            m.raft_apply_latency.clone(),
        );
        r.register_with_unit(
            "store_write_tx_latency",
            "Time to apply one store batch in memory",
            Unit::Seconds,
            m.store_write_tx_latency.clone(),
        );
        r.register(
            "raft_proposals_failed",
            "Store batches that were rejected or could not be committed",
            m.raft_proposals_failed.clone(),
        );
        r.register("raft_term", "Current Raft term", m.raft_term.clone());
        r.register(
            "manager_leader",
            "1 if this manager is the Raft leader",
            m.raft_is_leader.clone(),
        );
        r.register(
            "raft_last_log_index",
            "Index of the last entry in this manager's log",
            m.raft_last_log_index.clone(),
        );
        r.register(
            "raft_last_applied_index",
            "Index of the last entry applied to the store",
            m.raft_last_applied_index.clone(),
        );
        r.register(
            "raft_log_entries",
            "Entries in the on-disk log (shrinks when a snapshot compacts it)",
            m.raft_log_entries.clone(),
        );
        r.register(
            "raft_snapshots",
            "Snapshot files on disk",
            m.raft_snapshots.clone(),
        );
        r.register(
            "raft_managers",
            "Voting managers in the Raft membership",
            m.raft_managers.clone(),
        );
        r.register(
            "raft_managers_reachable",
            "Voting managers this manager reached recently (itself included)",
            m.raft_managers_reachable.clone(),
        );
        r.register(
            "store_objects",
            "Objects in the cluster store by kind",
            m.store_objects.clone(),
        );
        r.register(
            "manager_nodes",
            "Nodes by state, as the managers see them",
            m.manager_nodes.clone(),
        );
        r.register(
            "manager_tasks",
            "Tasks by current state",
            m.manager_tasks.clone(),
        );
        r.register(
            "dispatcher_sessions",
            "Open node sessions on this dispatcher",
            m.dispatcher_sessions.clone(),
        );
        r.register(
            "dispatcher_heartbeats",
            "Heartbeats received",
            m.dispatcher_heartbeats.clone(),
        );
        r.register_with_unit(
            "dispatcher_scheduling_delay",
            "Time from a task's creation to its RUNNING report",
            Unit::Seconds,
            m.dispatcher_scheduling_delay.clone(),
        );
        r.register_with_unit(
            "agent_container_start",
            "Time from starting to make a task's container (rootfs mount) to it running",
            Unit::Seconds,
            m.agent_container_start_seconds.clone(),
        );
        r.register_with_unit(
            "agent_image_pull",
            "Time to pull the image of a task that the node did not have",
            Unit::Seconds,
            m.agent_image_pull_seconds.clone(),
        );
        r.register_with_unit(
            "agent_image_pull",
            "Layer bytes downloaded for tasks' images",
            Unit::Bytes,
            m.agent_image_pull_bytes.clone(),
        );
        r.register(
            "agent_tasks",
            "Tasks this node's worker manages, by state",
            m.agent_tasks.clone(),
        );
        r.register(
            "dns_queries",
            "Queries to the embedded DNS server by result (answered, forwarded, nxdomain from upstream, servfail, invalid)",
            m.dns_queries.clone(),
        );
        r.register(
            "datapath_packets",
            "Packets seen by the eBPF programs, by interface, direction and class",
            m.datapath_packets.clone(),
        );
        r.register_with_unit(
            "datapath",
            "Bytes seen by the eBPF programs, by interface, direction and class",
            Unit::Bytes,
            m.datapath_bytes.clone(),
        );
        r.register(
            "datapath_map_entries",
            "Entries in each BPF map",
            m.datapath_map_entries.clone(),
        );
        r.register(
            "datapath_map_capacity",
            "Maximum entries of each BPF map (pressure = entries / capacity)",
            m.datapath_map_capacity.clone(),
        );
        r.register(
            "overlay_packets",
            "Overlay frames handled by the eBPF programs, by action (local_forward, encapsulated, decapsulated, arp_answered, passed_to_host)",
            m.overlay_packets.clone(),
        );
        r.register_with_unit(
            "overlay",
            "Overlay bytes handled by the eBPF programs, by action",
            Unit::Bytes,
            m.overlay_bytes.clone(),
        );
        r.register(
            "overlay_drops",
            "Overlay frames dropped by the eBPF programs, by reason (isolation, unknown_endpoint, ...)",
            m.overlay_drops.clone(),
        );
        r.register(
            "overlay_endpoints",
            "Overlay endpoints in the data path's map, local or remote",
            m.overlay_endpoints.clone(),
        );
        r.register(
            "lb_packets",
            "Packets the eBPF load balancer handled, by action (vip_forward, mesh_forward, mesh_reply, ...)",
            m.lb_packets.clone(),
        );
        r.register(
            "lb_drops",
            "Packets the eBPF load balancer dropped, by reason",
            m.lb_drops.clone(),
        );
        r.register(
            "lb_service_packets",
            "Packets per service frontend (service/VNI) and direction (to_backend, reply)",
            m.lb_service_packets.clone(),
        );
        r.register_with_unit(
            "lb_service",
            "Bytes per service frontend and direction",
            Unit::Bytes,
            m.lb_service_bytes.clone(),
        );
        r.register(
            "lb_conntrack_entries",
            "Tracked connection entries at the last sweep (two per connection)",
            m.lb_conntrack_entries.clone(),
        );
        r.register(
            "lb_conntrack_capacity",
            "Capacity of the connection table (pressure = entries / capacity; LRU eviction beyond it)",
            m.lb_conntrack_capacity.clone(),
        );
        r.register(
            "lb_conntrack_expired",
            "Connection entries the sweeps removed as expired",
            m.lb_conntrack_expired.clone(),
        );
        r.register(
            "lb_backends",
            "Backends programmed in the load balancer",
            m.lb_backends.clone(),
        );
        Metrics { registry: r, ..m }
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_conventions() {
        let m = metrics();
        m.dispatcher_heartbeats.inc();
        m.raft_proposal_latency.observe(0.002);
        m.manager_nodes
            .get_or_create(&StateLabel {
                state: "ready".into(),
            })
            .set(3);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &m.registry).unwrap();
        assert!(out.contains("swarm_dispatcher_heartbeats_total 1"), "{out}");
        assert!(
            out.contains("swarm_raft_proposal_latency_seconds_bucket"),
            "{out}"
        );
        assert!(
            out.contains("swarm_manager_nodes{state=\"ready\"} 3"),
            "{out}"
        );
        assert!(out.contains("swarm_manager_leader"), "{out}");
        m.agent_image_pull_bytes.inc_by(10);
        m.agent_container_start_seconds.observe(0.1);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &m.registry).unwrap();
        assert!(out.contains("swarm_agent_image_pull_bytes_total"), "{out}");
        assert!(
            out.contains("swarm_agent_image_pull_seconds_bucket"),
            "{out}"
        );
        assert!(
            out.contains("swarm_agent_container_start_seconds_bucket"),
            "{out}"
        );
        assert!(out.contains("# EOF"), "{out}");
    }
}
