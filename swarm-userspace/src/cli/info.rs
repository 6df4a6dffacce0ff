//! `swarm info`: the Swarm section of docker's `info`.
//!
//! Reads the node-local Swarm.Info and, on a manager, the cluster object for
//! its configuration. The cluster part is best effort: `info` is what people
//! run when something is wrong, so a failing control API must not hide the
//! local state.
use std::time::Duration;

use swarm_proto::v1 as pb;

use super::{
    json,
    output::{self, Format},
};
use crate::api::client::Client;

pub async fn run(client: &Client, format: Format) -> anyhow::Result<()> {
    let info = client
        .swarm()
        .info(pb::InfoRequest {})
        .await
        .map_err(|s| client.rpc_error(s))?
        .into_inner();
    let cluster = if info.is_manager {
        Some(
            client
                .control()
                .get_cluster(pb::GetClusterRequest {})
                .await
                .map_err(|s| client.rpc_error(s).to_string())
                .and_then(|r| {
                    r.into_inner()
                        .cluster
                        .ok_or_else(|| "the daemon returned no cluster object".to_string())
                }),
        )
    } else {
        None
    };
    match format {
        Format::Json => {
            let c = cluster.as_ref().and_then(|c| c.as_ref().ok());
            println!("{}", serde_json::to_string_pretty(&json::info(&info, c))?);
        }
        Format::Table => print!("{}", text(&info, cluster.as_ref())),
    }
    Ok(())
}

fn text(info: &pb::InfoResponse, cluster: Option<&Result<pb::Cluster, String>>) -> String {
    let mut out = String::new();
    let mut line = |indent: usize, s: String| {
        out.push_str(&" ".repeat(indent));
        out.push_str(&s);
        out.push('\n');
    };
    line(0, format!("Swarm: {}", info.local_node_state));
    if matches!(info.local_node_state.as_str(), "inactive" | "locked" | "") {
        return out;
    }
    line(1, format!("NodeID: {}", info.node_id));
    if !info.error.is_empty() {
        line(1, format!("Error: {}", info.error));
    }
    line(1, format!("Is Manager: {}", info.is_manager));
    if info.is_manager && info.error.is_empty() && info.local_node_state != "error" {
        line(1, format!("ClusterID: {}", info.cluster_id));
        line(1, format!("Managers: {}", info.managers.len()));
        line(1, format!("Nodes: {}", info.nodes));
        let c = match cluster {
            Some(Ok(c)) => Some(c),
            Some(Err(e)) => {
                line(1, format!("Cluster configuration unavailable: {e}"));
                None
            }
            None => None,
        };
        if let Some(c) = c {
            if !c.default_address_pool.is_empty() {
                line(
                    1,
                    format!("Default Address Pool: {}", c.default_address_pool.join(" ")),
                );
            }
            if c.subnet_size != 0 {
                line(1, format!("SubnetSize: {}", c.subnet_size));
            }
            if c.vxlan_udp_port != 0 {
                line(1, format!("Data Path Port: {}", c.vxlan_udp_port));
            }
        }
        let spec = c.and_then(|c| c.spec.clone()).unwrap_or_default();
        if c.is_some() {
            line(1, "Orchestration:".into());
            let o = spec.orchestration.unwrap_or_default();
            line(
                2,
                format!(
                    "Task History Retention Limit: {}",
                    o.task_history_retention_limit
                ),
            );
        }
        line(1, "Raft:".into());
        line(2, format!("State: {}", info.raft_state));
        line(2, format!("Term: {}", info.raft_term));
        line(2, format!("Leader: {}", info.leader_node_id));
        if c.is_some() {
            let r = spec.raft.unwrap_or_default();
            line(2, format!("Snapshot Interval: {}", r.snapshot_interval));
            line(
                2,
                format!(
                    "Number of Old Snapshots to Retain: {}",
                    r.keep_old_snapshots
                ),
            );
            line(2, format!("Heartbeat Tick: {}", r.heartbeat_tick));
            line(2, format!("Election Tick: {}", r.election_tick));
            let d = spec.dispatcher.unwrap_or_default();
            line(1, "Dispatcher:".into());
            line(
                2,
                format!(
                    "Heartbeat Period: {}",
                    output::duration(std_duration(d.heartbeat_period.as_ref()))
                ),
            );
            let ca = spec.ca_config.unwrap_or_default();
            line(1, "CA Configuration:".into());
            line(
                2,
                format!(
                    "Expiry Duration: {}",
                    output::duration(std_duration(ca.node_cert_expiry.as_ref()))
                ),
            );
            line(2, format!("Force Rotate: {}", ca.force_rotate));
            let e = spec.encryption_config.unwrap_or_default();
            line(1, format!("Autolock Managers: {}", e.auto_lock_managers));
            let rotating = c
                .and_then(|c| c.root_ca.as_ref())
                .is_some_and(|ca| ca.root_rotation.is_some());
            line(1, format!("Root Rotation In Progress: {rotating}"));
        }
    }
    line(1, format!("Node Address: {}", info.node_addr));
    if !info.managers.is_empty() {
        let mut addrs: Vec<&str> = info.managers.iter().map(|m| m.addr.as_str()).collect();
        addrs.sort_unstable();
        line(1, "Manager Addresses:".into());
        for a in addrs {
            line(2, a.to_string());
        }
    }
    out
}

fn std_duration(d: Option<&prost_types::Duration>) -> Duration {
    d.and_then(|d| Duration::try_from(*d).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manager_info() -> pb::InfoResponse {
        pb::InfoResponse {
            local_node_state: "active".into(),
            node_id: "n1".into(),
            node_addr: "10.0.0.1".into(),
            cluster_id: "c1".into(),
            role: pb::NodeRole::Manager as i32,
            is_manager: true,
            managers: vec![
                pb::RemoteManager {
                    node_id: "n2".into(),
                    addr: "10.0.0.2:2377".into(),
                },
                pb::RemoteManager {
                    node_id: "n1".into(),
                    addr: "10.0.0.1:2377".into(),
                },
            ],
            leader_node_id: "n1".into(),
            raft_state: "leader".into(),
            raft_term: 3,
            nodes: 4,
            error: String::new(),
        }
    }

    #[test]
    fn inactive_prints_one_line() {
        let info = pb::InfoResponse {
            local_node_state: "inactive".into(),
            ..Default::default()
        };
        assert_eq!(text(&info, None), "Swarm: inactive\n");
    }

    #[test]
    fn worker_shows_its_managers() {
        let info = pb::InfoResponse {
            is_manager: false,
            role: pb::NodeRole::Worker as i32,
            ..manager_info()
        };
        assert_eq!(
            text(&info, None),
            "Swarm: active\n NodeID: n1\n Is Manager: false\n Node Address: 10.0.0.1\n \
             Manager Addresses:\n  10.0.0.1:2377\n  10.0.0.2:2377\n"
        );
    }

    #[test]
    fn manager_shows_raft_and_cluster_config() {
        let cluster = pb::Cluster {
            spec: Some(pb::ClusterSpec {
                raft: Some(pb::RaftConfig {
                    snapshot_interval: 10000,
                    heartbeat_tick: 1,
                    election_tick: 10,
                    ..Default::default()
                }),
                dispatcher: Some(pb::DispatcherConfig {
                    heartbeat_period: Some(prost_types::Duration {
                        seconds: 1,
                        nanos: 0,
                    }),
                }),
                ca_config: Some(pb::CaConfig {
                    node_cert_expiry: Some(prost_types::Duration {
                        seconds: 2160 * 3600,
                        nanos: 0,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            default_address_pool: vec!["10.0.0.0/8".into()],
            subnet_size: 24,
            vxlan_udp_port: 4789,
            ..Default::default()
        };
        let t = text(&manager_info(), Some(&Ok(cluster)));
        for want in [
            " ClusterID: c1\n Managers: 2\n Nodes: 4\n",
            " Default Address Pool: 10.0.0.0/8\n SubnetSize: 24\n Data Path Port: 4789\n",
            " Raft:\n  State: leader\n  Term: 3\n  Leader: n1\n  Snapshot Interval: 10000\n",
            " Dispatcher:\n  Heartbeat Period: 1s\n",
            "  Expiry Duration: 2160h\n",
            " Node Address: 10.0.0.1\n",
        ] {
            assert!(t.contains(want), "{want:?} missing from\n{t}");
        }
    }

    #[test]
    fn manager_without_cluster_config_says_why() {
        let t = text(&manager_info(), Some(&Err("boom".into())));
        assert!(t.contains(" Cluster configuration unavailable: boom\n"));
        assert!(t.contains(" Raft:\n  State: leader\n"));
        assert!(!t.contains("Dispatcher"));
    }
}
