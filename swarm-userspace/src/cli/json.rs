//! JSON views of cluster objects, shaped like docker's inspect output.
//!
//! Owns the one mapping from protobuf messages to the JSON the CLI prints
//! (`node ls --format json`, `node inspect`, `info --format json`), and the
//! lower-case names docker uses for enum values. Field names follow docker's
//! API types (`ID`, `Spec.Availability`, `Status.State`...) so scripts
//! written against docker keep working. Pure conversions: no I/O here.
use std::collections::BTreeMap;

use serde::Serialize;
use swarm_proto::v1 as pb;

pub fn role(r: pb::NodeRole) -> &'static str {
    match r {
        pb::NodeRole::Worker => "worker",
        pb::NodeRole::Manager => "manager",
    }
}

pub fn availability(a: pb::NodeAvailability) -> &'static str {
    match a {
        pb::NodeAvailability::Active => "active",
        pb::NodeAvailability::Pause => "pause",
        pb::NodeAvailability::Drain => "drain",
    }
}

pub fn node_state(s: pb::NodeState) -> &'static str {
    match s {
        pb::NodeState::Unknown => "unknown",
        pb::NodeState::Down => "down",
        pb::NodeState::Ready => "ready",
        pb::NodeState::Disconnected => "disconnected",
    }
}

pub fn reachability(r: pb::Reachability) -> &'static str {
    match r {
        pb::Reachability::Unknown => "unknown",
        pb::Reachability::Unreachable => "unreachable",
        pb::Reachability::Reachable => "reachable",
    }
}

/// RFC 3339 with as many fraction digits as needed, as Go's RFC3339Nano
/// prints; an absent timestamp is Go's zero time, as docker shows it.
pub fn timestamp(ts: Option<&prost_types::Timestamp>) -> String {
    match utc(ts) {
        Some(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}{}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            fraction(t.nanosecond())
        ),
        None => "0001-01-01T00:00:00Z".to_string(),
    }
}

/// Go's `time.Time.String()` form, which `docker node inspect --pretty`
/// prints ("2017-05-12 10:13:46.6497434 +0000 UTC").
pub fn timestamp_human(ts: Option<&prost_types::Timestamp>) -> String {
    match utc(ts) {
        Some(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}{} +0000 UTC",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            fraction(t.nanosecond())
        ),
        None => "0001-01-01 00:00:00 +0000 UTC".to_string(),
    }
}

fn utc(ts: Option<&prost_types::Timestamp>) -> Option<time::OffsetDateTime> {
    let ts = ts?;
    let nanos = i128::from(ts.seconds) * 1_000_000_000 + i128::from(ts.nanos);
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()
}

fn fraction(nanos: u32) -> String {
    if nanos == 0 {
        return String::new();
    }
    let digits = format!("{nanos:09}");
    format!(".{}", digits.trim_end_matches('0'))
}

/// Nanoseconds, the unit of docker's JSON durations.
pub fn duration_nanos(d: Option<&prost_types::Duration>) -> i64 {
    d.map_or(0, |d| {
        d.seconds
            .saturating_mul(1_000_000_000)
            .saturating_add(i64::from(d.nanos))
    })
}

/// A node as `docker node inspect` shows it, fields in docker's order.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Node {
    #[serde(rename = "ID")]
    id: String,
    version: Version,
    created_at: String,
    updated_at: String,
    spec: NodeSpec,
    description: NodeDescription,
    status: NodeStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    manager_status: Option<ManagerStatus>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct Version {
    index: u64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct NodeSpec {
    #[serde(skip_serializing_if = "String::is_empty")]
    name: String,
    labels: BTreeMap<String, String>,
    role: &'static str,
    availability: &'static str,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct NodeDescription {
    hostname: String,
    platform: Platform,
    resources: Resources,
    engine: Engine,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct Platform {
    architecture: String,
    #[serde(rename = "OS")]
    os: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct Resources {
    #[serde(rename = "NanoCPUs")]
    nano_cpus: i64,
    memory_bytes: i64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct Engine {
    engine_version: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    labels: BTreeMap<String, String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct NodeStatus {
    state: &'static str,
    #[serde(skip_serializing_if = "String::is_empty")]
    message: String,
    addr: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct ManagerStatus {
    // Omitted unless true, as docker does.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    leader: bool,
    reachability: &'static str,
    addr: String,
}

fn version(meta: &pb::Meta) -> Version {
    Version {
        index: meta.version,
    }
}

pub fn node(n: &pb::Node) -> Node {
    let meta = n.meta.clone().unwrap_or_default();
    let spec = n.spec.clone().unwrap_or_default();
    let annotations = spec.annotations.clone().unwrap_or_default();
    let desc = n.description.clone().unwrap_or_default();
    let platform = desc.platform.unwrap_or_default();
    let resources = desc.resources.unwrap_or_default();
    let engine = desc.engine.unwrap_or_default();
    let status = n.status.clone().unwrap_or_default();
    Node {
        id: meta.id.clone(),
        version: version(&meta),
        created_at: timestamp(meta.created_at.as_ref()),
        updated_at: timestamp(meta.updated_at.as_ref()),
        spec: NodeSpec {
            name: annotations.name,
            labels: annotations.labels,
            role: role(spec.desired_role()),
            availability: availability(spec.availability()),
        },
        description: NodeDescription {
            hostname: desc.hostname,
            platform: Platform {
                architecture: platform.architecture,
                os: platform.os,
            },
            resources: Resources {
                nano_cpus: resources.nano_cpus,
                memory_bytes: resources.memory_bytes,
            },
            engine: Engine {
                engine_version: engine.engine_version,
                labels: engine.labels,
            },
        },
        status: NodeStatus {
            state: node_state(status.state()),
            message: status.message,
            addr: status.addr,
        },
        manager_status: n.manager_status.as_ref().map(|m| ManagerStatus {
            leader: m.leader,
            reachability: reachability(m.reachability()),
            addr: m.addr.clone(),
        }),
    }
}

/// A cluster as docker's `info` shows it under `Swarm.Cluster`. Join tokens
/// and key material are left out on purpose: this view is for display and
/// must not leak credentials into logs.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Cluster {
    #[serde(rename = "ID")]
    id: String,
    version: Version,
    created_at: String,
    updated_at: String,
    spec: ClusterSpec,
    #[serde(rename = "TLSInfo")]
    tls_info: TlsInfo,
    root_rotation_in_progress: bool,
    default_addr_pool: Vec<String>,
    subnet_size: u32,
    data_path_port: u32,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct ClusterSpec {
    name: String,
    labels: BTreeMap<String, String>,
    orchestration: Orchestration,
    raft: Raft,
    dispatcher: Dispatcher,
    #[serde(rename = "CAConfig")]
    ca_config: CaConfig,
    encryption_config: EncryptionConfig,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct Orchestration {
    task_history_retention_limit: i64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct Raft {
    snapshot_interval: u64,
    keep_old_snapshots: u64,
    log_entries_for_slow_followers: u64,
    election_tick: u32,
    heartbeat_tick: u32,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct Dispatcher {
    heartbeat_period: i64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct CaConfig {
    node_cert_expiry: i64,
    force_rotate: u64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct EncryptionConfig {
    auto_lock_managers: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct TlsInfo {
    trust_root: String,
}

pub fn cluster(c: &pb::Cluster) -> Cluster {
    let meta = c.meta.clone().unwrap_or_default();
    let spec = c.spec.clone().unwrap_or_default();
    let annotations = spec.annotations.unwrap_or_default();
    let raft = spec.raft.unwrap_or_default();
    let ca = spec.ca_config.unwrap_or_default();
    let root_ca = c.root_ca.clone().unwrap_or_default();
    Cluster {
        id: meta.id.clone(),
        version: version(&meta),
        created_at: timestamp(meta.created_at.as_ref()),
        updated_at: timestamp(meta.updated_at.as_ref()),
        spec: ClusterSpec {
            name: annotations.name,
            labels: annotations.labels,
            orchestration: Orchestration {
                task_history_retention_limit: spec
                    .orchestration
                    .unwrap_or_default()
                    .task_history_retention_limit,
            },
            raft: Raft {
                snapshot_interval: raft.snapshot_interval,
                keep_old_snapshots: raft.keep_old_snapshots,
                log_entries_for_slow_followers: raft.log_entries_for_slow_followers,
                election_tick: raft.election_tick,
                heartbeat_tick: raft.heartbeat_tick,
            },
            dispatcher: Dispatcher {
                heartbeat_period: duration_nanos(
                    spec.dispatcher
                        .unwrap_or_default()
                        .heartbeat_period
                        .as_ref(),
                ),
            },
            ca_config: CaConfig {
                node_cert_expiry: duration_nanos(ca.node_cert_expiry.as_ref()),
                force_rotate: ca.force_rotate,
            },
            encryption_config: EncryptionConfig {
                auto_lock_managers: spec
                    .encryption_config
                    .unwrap_or_default()
                    .auto_lock_managers,
            },
        },
        tls_info: TlsInfo {
            trust_root: String::from_utf8_lossy(&root_ca.ca_cert_pem).into_owned(),
        },
        root_rotation_in_progress: root_ca.root_rotation.is_some(),
        default_addr_pool: c.default_address_pool.clone(),
        subnet_size: c.subnet_size,
        data_path_port: c.vxlan_udp_port,
    }
}

/// The Swarm section of docker's `info`, plus this node's role and Raft
/// view (`RaftState`, `RaftTerm`, `LeaderNodeID`), which docker lacks.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Info {
    #[serde(rename = "NodeID")]
    node_id: String,
    node_addr: String,
    local_node_state: String,
    control_available: bool,
    error: String,
    remote_managers: Vec<RemoteManager>,
    nodes: u32,
    managers: usize,
    #[serde(rename = "ClusterID")]
    cluster_id: String,
    role: &'static str,
    raft_state: String,
    raft_term: u64,
    #[serde(rename = "LeaderNodeID")]
    leader_node_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster: Option<Cluster>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct RemoteManager {
    #[serde(rename = "NodeID")]
    node_id: String,
    addr: String,
}

pub fn info(i: &pb::InfoResponse, cluster_info: Option<&pb::Cluster>) -> Info {
    Info {
        node_id: i.node_id.clone(),
        node_addr: i.node_addr.clone(),
        local_node_state: i.local_node_state.clone(),
        control_available: i.is_manager,
        error: i.error.clone(),
        remote_managers: i
            .managers
            .iter()
            .map(|m| RemoteManager {
                node_id: m.node_id.clone(),
                addr: m.addr.clone(),
            })
            .collect(),
        nodes: i.nodes,
        managers: i.managers.len(),
        cluster_id: i.cluster_id.clone(),
        role: role(i.role()),
        raft_state: i.raft_state.clone(),
        raft_term: i.raft_term,
        leader_node_id: i.leader_node_id.clone(),
        cluster: cluster_info.map(cluster),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn to_json(v: impl Serialize) -> Value {
        serde_json::to_value(v).unwrap()
    }

    pub(crate) fn node_fixture(
        id: &str,
        hostname: &str,
        state: pb::NodeState,
        manager: Option<(bool, pb::Reachability)>,
    ) -> pb::Node {
        pb::Node {
            meta: Some(pb::Meta {
                id: id.into(),
                version: 42,
                created_at: Some(prost_types::Timestamp {
                    seconds: 1_466_117_564,
                    nanos: 991_066_200,
                }),
                updated_at: None,
            }),
            spec: Some(pb::NodeSpec {
                annotations: Some(pb::Annotations {
                    name: String::new(),
                    labels: BTreeMap::from([("zone".into(), "a".into())]),
                }),
                desired_role: if manager.is_some() {
                    pb::NodeRole::Manager as i32
                } else {
                    pb::NodeRole::Worker as i32
                },
                availability: pb::NodeAvailability::Drain as i32,
            }),
            description: Some(pb::NodeDescription {
                hostname: hostname.into(),
                platform: Some(pb::Platform {
                    os: "linux".into(),
                    architecture: "x86_64".into(),
                }),
                resources: Some(pb::Resources {
                    nano_cpus: 2_000_000_000,
                    memory_bytes: 8_272_748_544,
                }),
                engine: Some(pb::EngineDescription {
                    engine_version: "0.1.0".into(),
                    labels: BTreeMap::new(),
                }),
            }),
            status: Some(pb::NodeStatus {
                state: state as i32,
                message: String::new(),
                addr: "10.0.0.5".into(),
            }),
            manager_status: manager.map(|(leader, r)| pb::ManagerStatus {
                raft_id: 1,
                addr: "10.0.0.5:2377".into(),
                leader,
                reachability: r as i32,
            }),
            role: if manager.is_some() {
                pb::NodeRole::Manager as i32
            } else {
                pb::NodeRole::Worker as i32
            },
            certificate: None,
            attachments: vec![],
        }
    }

    #[test]
    fn node_json_has_dockers_shape() {
        let n = node_fixture(
            "abc",
            "m1",
            pb::NodeState::Ready,
            Some((true, pb::Reachability::Reachable)),
        );
        let v = to_json(node(&n));
        assert_eq!(
            v,
            json!({
                "ID": "abc",
                "Version": { "Index": 42 },
                "CreatedAt": "2016-06-16T22:52:44.9910662Z",
                "UpdatedAt": "0001-01-01T00:00:00Z",
                "Spec": { "Labels": { "zone": "a" }, "Role": "manager", "Availability": "drain" },
                "Description": {
                    "Hostname": "m1",
                    "Platform": { "Architecture": "x86_64", "OS": "linux" },
                    "Resources": { "NanoCPUs": 2_000_000_000_i64, "MemoryBytes": 8_272_748_544_i64 },
                    "Engine": { "EngineVersion": "0.1.0" },
                },
                "Status": { "State": "ready", "Addr": "10.0.0.5" },
                "ManagerStatus": { "Leader": true, "Reachability": "reachable", "Addr": "10.0.0.5:2377" },
            })
        );
    }

    #[test]
    fn node_json_keeps_dockers_field_order() {
        let n = node_fixture("abc", "m1", pb::NodeState::Ready, None);
        let s = serde_json::to_string(&node(&n)).unwrap();
        assert!(
            s.starts_with(r#"{"ID":"abc","Version":{"Index":42},"CreatedAt":"#),
            "{s}"
        );
    }

    #[test]
    fn info_json_names_fields_like_docker() {
        let i = pb::InfoResponse {
            local_node_state: "active".into(),
            node_id: "n1".into(),
            is_manager: true,
            managers: vec![pb::RemoteManager {
                node_id: "n1".into(),
                addr: "10.0.0.1:2377".into(),
            }],
            ..Default::default()
        };
        let v = to_json(info(&i, None));
        assert_eq!(v["NodeID"], "n1");
        assert_eq!(v["ControlAvailable"], true);
        assert_eq!(v["Managers"], 1);
        assert_eq!(v["RemoteManagers"][0]["Addr"], "10.0.0.1:2377");
        assert!(v.get("Cluster").is_none());
        let v = to_json(info(&i, Some(&pb::Cluster::default())));
        assert_eq!(v["Cluster"]["Spec"]["CAConfig"]["NodeCertExpiry"], 0);
    }

    #[test]
    fn worker_json_has_no_manager_status_and_shows_a_message() {
        let mut n = node_fixture("w", "w1", pb::NodeState::Down, None);
        if let Some(s) = n.status.as_mut() {
            s.message = "heartbeat failure".into();
        }
        let v = to_json(node(&n));
        assert!(v.get("ManagerStatus").is_none());
        assert_eq!(v["Spec"]["Role"], "worker");
        assert_eq!(v["Status"]["State"], "down");
        assert_eq!(v["Status"]["Message"], "heartbeat failure");
    }

    #[test]
    fn follower_json_omits_leader() {
        let n = node_fixture(
            "f",
            "m2",
            pb::NodeState::Ready,
            Some((false, pb::Reachability::Unreachable)),
        );
        let v = to_json(node(&n));
        assert!(v["ManagerStatus"].get("Leader").is_none());
        assert_eq!(v["ManagerStatus"]["Reachability"], "unreachable");
    }

    #[test]
    fn empty_node_converts_without_panicking() {
        let v = to_json(node(&pb::Node::default()));
        assert_eq!(v["ID"], "");
        assert_eq!(v["Status"]["State"], "unknown");
        assert_eq!(v["Spec"]["Labels"], json!({}));
    }

    #[test]
    fn timestamps_print_like_go() {
        let ts = |seconds, nanos| Some(prost_types::Timestamp { seconds, nanos });
        assert_eq!(timestamp(ts(0, 0).as_ref()), "1970-01-01T00:00:00Z");
        assert_eq!(
            timestamp(ts(1_466_117_564, 500_000_000).as_ref()),
            "2016-06-16T22:52:44.5Z"
        );
        assert_eq!(
            timestamp_human(ts(1_466_117_564, 1).as_ref()),
            "2016-06-16 22:52:44.000000001 +0000 UTC"
        );
        assert_eq!(timestamp(None), "0001-01-01T00:00:00Z");
    }

    #[test]
    fn cluster_json_shows_config_in_docker_units_without_tokens() {
        let c = pb::Cluster {
            meta: Some(pb::Meta {
                id: "cid".into(),
                ..Default::default()
            }),
            spec: Some(pb::ClusterSpec {
                dispatcher: Some(pb::DispatcherConfig {
                    heartbeat_period: Some(prost_types::Duration {
                        seconds: 1,
                        nanos: 0,
                    }),
                }),
                ..Default::default()
            }),
            root_ca: Some(pb::RootCa {
                join_tokens: Some(pb::JoinTokens {
                    worker: "SWMTKN-1-secret".into(),
                    manager: "SWMTKN-1-secret2".into(),
                }),
                ..Default::default()
            }),
            default_address_pool: vec!["10.0.0.0/8".into()],
            subnet_size: 24,
            ..Default::default()
        };
        let v = to_json(cluster(&c));
        assert_eq!(v["ID"], "cid");
        assert_eq!(
            v["Spec"]["Dispatcher"]["HeartbeatPeriod"],
            1_000_000_000_i64
        );
        assert_eq!(v["DefaultAddrPool"], json!(["10.0.0.0/8"]));
        assert!(!v.to_string().contains("SWMTKN"));
    }
}
