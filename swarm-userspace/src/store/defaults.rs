//! Docker's defaults for a new swarm and for a new service, as objects
//! (proto3 has no field defaults, and a zero often means "unset" rather
//! than the default).

use prost_types::Duration;
use swarm_proto::v1 as pb;

/// `--task-history-limit`.
pub const TASK_HISTORY_RETENTION_LIMIT: i64 = 5;
/// `--snapshot-interval`, in Raft log entries.
pub const SNAPSHOT_INTERVAL: u64 = 10_000;
/// Log entries kept after a snapshot for followers that lag a little.
pub const LOG_ENTRIES_FOR_SLOW_FOLLOWERS: u64 = 500;
/// Raft ticks are one second: heartbeat every tick, election after ten.
pub const HEARTBEAT_TICK: u32 = 1;
pub const ELECTION_TICK: u32 = 10;
/// `--dispatcher-heartbeat`. Docker's is 5 s (a dead node is noticed after
/// about 15 s); ours is 1 s, so a dead node is marked down within 5 s.
pub const DISPATCHER_HEARTBEAT_SECONDS: i64 = 1;
/// `--cert-expiry`: 2160h, 90 days.
pub const NODE_CERT_EXPIRY_SECONDS: i64 = 2160 * 3600;
/// `--default-addr-pool` and its subnet size.
pub const DEFAULT_ADDRESS_POOL: &str = "10.0.0.0/8";
pub const DEFAULT_SUBNET_SIZE: u32 = 24;
/// `--data-path-port`.
pub const VXLAN_UDP_PORT: u32 = 4789;

/// `--update-parallelism` and `--rollback-parallelism`.
pub const UPDATE_PARALLELISM: u64 = 1;
/// `--update-monitor` and `--rollback-monitor`.
pub const UPDATE_MONITOR_SECONDS: i64 = 5;
/// `--restart-delay`.
pub const RESTART_DELAY_SECONDS: i64 = 5;
/// `--stop-grace-period`.
pub const STOP_GRACE_PERIOD_SECONDS: i64 = 10;

/// A service's update (or rollback) config when no flag changes it:
/// parallelism 1, delay 0s, failure action pause, monitor 5s, max failure
/// ratio 0, order stop-first.
#[must_use]
pub fn update_config() -> pb::UpdateConfig {
    pb::UpdateConfig {
        parallelism: UPDATE_PARALLELISM,
        delay: seconds(0),
        failure_action: pb::UpdateFailureAction::Pause as i32,
        monitor: seconds(UPDATE_MONITOR_SECONDS),
        max_failure_ratio: 0.0,
        order: pb::UpdateOrder::StopFirst as i32,
    }
}

/// A task's restart policy when no flag changes it: condition any (on
/// failure for jobs, which would never complete otherwise), delay 5s, no
/// attempt limit, no window.
#[must_use]
pub fn restart_policy(job: bool) -> pb::RestartPolicy {
    pb::RestartPolicy {
        condition: if job {
            pb::RestartCondition::OnFailure as i32
        } else {
            pb::RestartCondition::Any as i32
        },
        delay: seconds(RESTART_DELAY_SECONDS),
        max_attempts: 0,
        window: None,
    }
}

/// `--stop-grace-period`.
#[must_use]
pub fn stop_grace_period() -> Duration {
    Duration {
        seconds: STOP_GRACE_PERIOD_SECONDS,
        nanos: 0,
    }
}

fn seconds(s: i64) -> Option<Duration> {
    Some(Duration {
        seconds: s,
        nanos: 0,
    })
}

/// The spec `swarm init` uses when no flag changes it.
#[must_use]
pub fn cluster_spec(name: &str) -> pb::ClusterSpec {
    pb::ClusterSpec {
        annotations: Some(pb::Annotations {
            name: name.to_owned(),
            ..Default::default()
        }),
        orchestration: Some(pb::OrchestrationConfig {
            task_history_retention_limit: TASK_HISTORY_RETENTION_LIMIT,
        }),
        raft: Some(pb::RaftConfig {
            snapshot_interval: SNAPSHOT_INTERVAL,
            keep_old_snapshots: 0,
            log_entries_for_slow_followers: LOG_ENTRIES_FOR_SLOW_FOLLOWERS,
            heartbeat_tick: HEARTBEAT_TICK,
            election_tick: ELECTION_TICK,
        }),
        dispatcher: Some(pb::DispatcherConfig {
            heartbeat_period: seconds(DISPATCHER_HEARTBEAT_SECONDS),
        }),
        ca_config: Some(pb::CaConfig {
            node_cert_expiry: seconds(NODE_CERT_EXPIRY_SECONDS),
            ..Default::default()
        }),
        encryption_config: Some(pb::EncryptionConfig::default()),
        task_defaults: Some(pb::TaskDefaults::default()),
    }
}

/// A new cluster object with the default spec and address pool; the CA
/// fields are left for the CA to fill.
#[must_use]
pub fn cluster(id: &str, name: &str) -> pb::Cluster {
    pb::Cluster {
        meta: Some(pb::Meta {
            id: id.to_owned(),
            ..Default::default()
        }),
        spec: Some(cluster_spec(name)),
        default_address_pool: vec![DEFAULT_ADDRESS_POOL.to_owned()],
        subnet_size: DEFAULT_SUBNET_SIZE,
        vxlan_udp_port: VXLAN_UDP_PORT,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_docker() {
        let c = cluster("c1", "default");
        let spec = c.spec.as_ref().unwrap();
        assert_eq!(spec.orchestration.unwrap().task_history_retention_limit, 5);
        assert_eq!(spec.raft.unwrap().snapshot_interval, 10_000);
        // Deliberately faster than docker's 5 s.
        assert_eq!(
            spec.dispatcher.unwrap().heartbeat_period.unwrap().seconds,
            1
        );
        let expiry = spec.ca_config.as_ref().unwrap().node_cert_expiry.unwrap();
        assert_eq!(expiry.seconds, 90 * 24 * 3600);
        assert_eq!(c.default_address_pool, ["10.0.0.0/8"]);
        assert_eq!((c.subnet_size, c.vxlan_udp_port), (24, 4789));
        // And the store accepts it.
        let store = super::super::MemoryStore::new();
        store
            .apply(
                1,
                super::super::new_batch(vec![pb::StoreAction {
                    kind: pb::StoreActionKind::Create.into(),
                    target: Some(pb::store_action::Target::Cluster(Box::new(c))),
                }]),
            )
            .unwrap();
        let got = store.view().get_by_name::<pb::Cluster>("default").unwrap();
        assert_eq!(got.spec.as_ref().unwrap().raft.unwrap().election_tick, 10);
    }
}
