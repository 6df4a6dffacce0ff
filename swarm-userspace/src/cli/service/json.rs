//! Services as `docker service inspect` shows them: field names, nesting,
//! units (durations in nanoseconds) and omitted empty fields follow
//! docker's API types, so scripts written against docker keep working.
//! Pure conversions, like the rest of [`crate::cli::json`].
use std::collections::BTreeMap;

use serde::Serialize;
use swarm_proto::v1::{self as pb, service_spec::Mode};

use crate::cli::json::{duration_nanos, timestamp};

fn is_false(b: &bool) -> bool {
    !*b
}
fn is_zero_i64(n: &i64) -> bool {
    *n == 0
}
fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}
fn is_zero_u32(n: &u32) -> bool {
    *n == 0
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Service {
    #[serde(rename = "ID")]
    id: String,
    version: Version,
    created_at: String,
    updated_at: String,
    spec: ServiceSpec,
    #[serde(skip_serializing_if = "Option::is_none")]
    previous_spec: Option<ServiceSpec>,
    endpoint: Endpoint,
    #[serde(skip_serializing_if = "Option::is_none")]
    update_status: Option<UpdateStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    service_status: Option<ServiceStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    job_status: Option<JobStatus>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct Version {
    index: u64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceSpec {
    name: String,
    labels: BTreeMap<String, String>,
    task_template: TaskTemplate,
    mode: ModeJson,
    #[serde(skip_serializing_if = "Option::is_none")]
    update_config: Option<UpdateConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rollback_config: Option<UpdateConfig>,
    endpoint_spec: EndpointSpec,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct TaskTemplate {
    container_spec: ContainerSpec,
    resources: Resources,
    #[serde(skip_serializing_if = "Option::is_none")]
    restart_policy: Option<RestartPolicy>,
    placement: Placement,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    networks: Vec<NetworkAttachment>,
    force_update: u64,
    runtime: &'static str,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct ContainerSpec {
    image: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    command: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    args: Vec<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    hostname: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    env: Vec<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    dir: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    user: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    groups: Vec<String>,
    #[serde(rename = "TTY", skip_serializing_if = "is_false")]
    tty: bool,
    #[serde(skip_serializing_if = "is_false")]
    open_stdin: bool,
    #[serde(skip_serializing_if = "is_false")]
    read_only: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    mounts: Vec<Mount>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop_grace_period: Option<i64>,
    #[serde(skip_serializing_if = "String::is_empty")]
    stop_signal: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    healthcheck: Option<Healthcheck>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    sysctls: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    capability_add: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    capability_drop: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    ulimits: Vec<Ulimit>,
    init: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct Mount {
    #[serde(rename = "Type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "String::is_empty")]
    source: String,
    target: String,
    #[serde(skip_serializing_if = "is_false")]
    read_only: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    bind_options: Option<BindOptions>,
    #[serde(skip_serializing_if = "Option::is_none")]
    volume_options: Option<VolumeOptions>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tmpfs_options: Option<TmpfsOptions>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct BindOptions {
    propagation: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct VolumeOptions {
    #[serde(skip_serializing_if = "is_false")]
    no_copy: bool,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    driver_config: Option<DriverConfig>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct DriverConfig {
    #[serde(skip_serializing_if = "String::is_empty")]
    name: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    options: BTreeMap<String, String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct TmpfsOptions {
    #[serde(skip_serializing_if = "is_zero_i64")]
    size_bytes: i64,
    #[serde(skip_serializing_if = "is_zero_u32")]
    mode: u32,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct Healthcheck {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    test: Vec<String>,
    #[serde(skip_serializing_if = "is_zero_i64")]
    interval: i64,
    #[serde(skip_serializing_if = "is_zero_i64")]
    timeout: i64,
    #[serde(skip_serializing_if = "is_zero_i64")]
    start_period: i64,
    #[serde(skip_serializing_if = "is_zero_i64")]
    retries: i64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct Ulimit {
    name: String,
    hard: i64,
    soft: i64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct Resources {
    limits: Limits,
    reservations: Reservations,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct Limits {
    #[serde(rename = "NanoCPUs", skip_serializing_if = "is_zero_i64")]
    nano_cpus: i64,
    #[serde(skip_serializing_if = "is_zero_i64")]
    memory_bytes: i64,
    #[serde(skip_serializing_if = "is_zero_i64")]
    pids: i64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct Reservations {
    #[serde(rename = "NanoCPUs", skip_serializing_if = "is_zero_i64")]
    nano_cpus: i64,
    #[serde(skip_serializing_if = "is_zero_i64")]
    memory_bytes: i64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct RestartPolicy {
    condition: &'static str,
    delay: i64,
    max_attempts: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    window: Option<i64>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct Placement {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    constraints: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    preferences: Vec<Preference>,
    #[serde(skip_serializing_if = "is_zero_u64")]
    max_replicas: u64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct Preference {
    spread: Spread,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct Spread {
    spread_descriptor: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct NetworkAttachment {
    target: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    aliases: Vec<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct ModeJson {
    #[serde(skip_serializing_if = "Option::is_none")]
    replicated: Option<Replicated>,
    #[serde(skip_serializing_if = "Option::is_none")]
    global: Option<Empty>,
    #[serde(skip_serializing_if = "Option::is_none")]
    replicated_job: Option<ReplicatedJob>,
    #[serde(skip_serializing_if = "Option::is_none")]
    global_job: Option<Empty>,
}

#[derive(Debug, Serialize)]
struct Empty {}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct Replicated {
    replicas: u64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct ReplicatedJob {
    max_concurrent: u64,
    total_completions: u64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct UpdateConfig {
    parallelism: u64,
    #[serde(skip_serializing_if = "is_zero_i64")]
    delay: i64,
    failure_action: &'static str,
    #[serde(skip_serializing_if = "is_zero_i64")]
    monitor: i64,
    max_failure_ratio: f32,
    order: &'static str,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct EndpointSpec {
    mode: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    ports: Vec<Port>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Port {
    #[serde(skip_serializing_if = "String::is_empty")]
    name: String,
    protocol: &'static str,
    target_port: u32,
    #[serde(skip_serializing_if = "is_zero_u32")]
    published_port: u32,
    publish_mode: &'static str,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct Endpoint {
    spec: EndpointSpecMaybe,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    ports: Vec<Port>,
    #[serde(rename = "VirtualIPs", skip_serializing_if = "Vec::is_empty")]
    virtual_ips: Vec<VirtualIp>,
}

/// Docker shows `"Spec": {}` until the allocator has run.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct EndpointSpecMaybe {
    #[serde(skip_serializing_if = "Option::is_none")]
    mode: Option<&'static str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    ports: Vec<Port>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct VirtualIp {
    #[serde(rename = "NetworkID")]
    network_id: String,
    addr: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct UpdateStatus {
    state: &'static str,
    started_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    completed_at: Option<String>,
    message: String,
}

/// Task counts, as docker's API adds them for `service ls`.
#[derive(Debug, Serialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceStatus {
    pub running_tasks: u64,
    pub desired_tasks: u64,
    pub completed_tasks: u64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct JobStatus {
    job_iteration: Version,
    last_execution: String,
}

pub fn restart_condition(c: pb::RestartCondition) -> &'static str {
    match c {
        pb::RestartCondition::Any => "any",
        pb::RestartCondition::OnFailure => "on-failure",
        pb::RestartCondition::None => "none",
    }
}

pub fn failure_action(a: pb::UpdateFailureAction) -> &'static str {
    match a {
        pb::UpdateFailureAction::Pause => "pause",
        pb::UpdateFailureAction::Continue => "continue",
        pb::UpdateFailureAction::Rollback => "rollback",
    }
}

pub fn order(o: pb::UpdateOrder) -> &'static str {
    match o {
        pb::UpdateOrder::StopFirst => "stop-first",
        pb::UpdateOrder::StartFirst => "start-first",
    }
}

pub fn endpoint_mode(m: pb::EndpointMode) -> &'static str {
    match m {
        pb::EndpointMode::Vip => "vip",
        pb::EndpointMode::Dnsrr => "dnsrr",
    }
}

pub fn publish_mode(m: pb::PublishMode) -> &'static str {
    match m {
        pb::PublishMode::Ingress => "ingress",
        pb::PublishMode::Host => "host",
    }
}

pub fn protocol(p: pb::PortProtocol) -> &'static str {
    crate::controlapi::service::protocol_name(p)
}

pub fn mount_type(t: pb::MountType) -> &'static str {
    match t {
        pb::MountType::Bind => "bind",
        pb::MountType::Volume => "volume",
        pb::MountType::Tmpfs => "tmpfs",
    }
}

fn update_state(s: pb::UpdateState) -> &'static str {
    match s {
        pb::UpdateState::Unknown => "",
        pb::UpdateState::Updating => "updating",
        pb::UpdateState::Paused => "paused",
        pb::UpdateState::Completed => "completed",
        pb::UpdateState::RollbackStarted => "rollback_started",
        pb::UpdateState::RollbackPaused => "rollback_paused",
        pb::UpdateState::RollbackCompleted => "rollback_completed",
    }
}

pub fn port(p: &pb::PortConfig) -> Port {
    Port {
        name: p.name.clone(),
        protocol: protocol(p.protocol()),
        target_port: p.target_port,
        published_port: p.published_port,
        publish_mode: publish_mode(p.publish_mode()),
    }
}

fn mount(m: &pb::Mount) -> Mount {
    let ty = m.r#type();
    let driver = m.volume_driver.clone().unwrap_or_default();
    Mount {
        kind: mount_type(ty),
        source: m.source.clone(),
        target: m.target.clone(),
        read_only: m.read_only,
        bind_options: (ty == pb::MountType::Bind && !m.bind_propagation.is_empty()).then(|| {
            BindOptions {
                propagation: m.bind_propagation.clone(),
            }
        }),
        volume_options: (ty == pb::MountType::Volume
            && (m.volume_nocopy || !m.volume_labels.is_empty() || m.volume_driver.is_some()))
        .then(|| VolumeOptions {
            no_copy: m.volume_nocopy,
            labels: m.volume_labels.clone(),
            driver_config: m.volume_driver.is_some().then(|| DriverConfig {
                name: driver.name.clone(),
                options: driver.options.clone(),
            }),
        }),
        tmpfs_options: (ty == pb::MountType::Tmpfs
            && (m.tmpfs_size_bytes != 0 || m.tmpfs_mode != 0))
            .then_some(TmpfsOptions {
                size_bytes: m.tmpfs_size_bytes,
                mode: m.tmpfs_mode,
            }),
    }
}

fn update_config(u: &pb::UpdateConfig) -> UpdateConfig {
    UpdateConfig {
        parallelism: u.parallelism,
        delay: duration_nanos(u.delay.as_ref()),
        failure_action: failure_action(u.failure_action()),
        monitor: duration_nanos(u.monitor.as_ref()),
        max_failure_ratio: u.max_failure_ratio,
        order: order(u.order()),
    }
}

pub fn spec(s: &pb::ServiceSpec) -> ServiceSpec {
    let annotations = s.annotations.clone().unwrap_or_default();
    let task = s.task.clone().unwrap_or_default();
    let c = task.container.clone().unwrap_or_default();
    let resources = task.resources.unwrap_or_default();
    let limits = resources.limits.unwrap_or_default();
    let reservations = resources.reservations.unwrap_or_default();
    let placement = task.placement.clone().unwrap_or_default();
    let endpoint = s.endpoint.clone().unwrap_or_default();
    let mode = match &s.mode {
        None | Some(Mode::Replicated(_)) => ModeJson {
            replicated: Some(Replicated {
                replicas: match &s.mode {
                    Some(Mode::Replicated(r)) => r.replicas,
                    _ => 0,
                },
            }),
            global: None,
            replicated_job: None,
            global_job: None,
        },
        Some(Mode::Global(_)) => ModeJson {
            replicated: None,
            global: Some(Empty {}),
            replicated_job: None,
            global_job: None,
        },
        Some(Mode::ReplicatedJob(j)) => ModeJson {
            replicated: None,
            global: None,
            replicated_job: Some(ReplicatedJob {
                max_concurrent: j.max_concurrent,
                total_completions: j.total_completions,
            }),
            global_job: None,
        },
        Some(Mode::GlobalJob(_)) => ModeJson {
            replicated: None,
            global: None,
            replicated_job: None,
            global_job: Some(Empty {}),
        },
    };
    ServiceSpec {
        name: annotations.name,
        labels: annotations.labels,
        task_template: TaskTemplate {
            container_spec: ContainerSpec {
                image: c.image.clone(),
                labels: c.labels.clone(),
                command: c.command.clone(),
                args: c.args.clone(),
                hostname: c.hostname.clone(),
                env: c.env.clone(),
                dir: c.dir.clone(),
                user: c.user.clone(),
                groups: c.groups.clone(),
                tty: c.tty,
                open_stdin: c.open_stdin,
                read_only: c.read_only,
                mounts: c.mounts.iter().map(mount).collect(),
                stop_grace_period: c
                    .stop_grace_period
                    .as_ref()
                    .map(|d| duration_nanos(Some(d))),
                stop_signal: c.stop_signal.clone(),
                healthcheck: c.healthcheck.as_ref().map(|h| Healthcheck {
                    test: h.test.clone(),
                    interval: duration_nanos(h.interval.as_ref()),
                    timeout: duration_nanos(h.timeout.as_ref()),
                    start_period: duration_nanos(h.start_period.as_ref()),
                    retries: i64::from(h.retries),
                }),
                sysctls: c.sysctls.clone(),
                capability_add: c.capability_add.clone(),
                capability_drop: c.capability_drop.clone(),
                ulimits: c
                    .ulimits
                    .iter()
                    .map(|u| Ulimit {
                        name: u.name.clone(),
                        hard: u.hard,
                        soft: u.soft,
                    })
                    .collect(),
                init: c.init,
            },
            resources: Resources {
                limits: Limits {
                    nano_cpus: limits.nano_cpus,
                    memory_bytes: limits.memory_bytes,
                    pids: limits.pids,
                },
                reservations: Reservations {
                    nano_cpus: reservations.nano_cpus,
                    memory_bytes: reservations.memory_bytes,
                },
            },
            restart_policy: task.restart.as_ref().map(|r| RestartPolicy {
                condition: restart_condition(r.condition()),
                delay: duration_nanos(r.delay.as_ref()),
                max_attempts: r.max_attempts,
                window: r.window.as_ref().map(|w| duration_nanos(Some(w))),
            }),
            placement: Placement {
                constraints: placement.constraints.clone(),
                preferences: placement
                    .preferences
                    .iter()
                    .filter_map(|p| p.preference.as_ref())
                    .map(
                        |pb::placement_preference::Preference::Spread(s)| Preference {
                            spread: Spread {
                                spread_descriptor: s.spread_descriptor.clone(),
                            },
                        },
                    )
                    .collect(),
                max_replicas: placement.max_replicas,
            },
            networks: task
                .networks
                .iter()
                .map(|n| NetworkAttachment {
                    target: n.target.clone(),
                    aliases: n.aliases.clone(),
                })
                .collect(),
            force_update: task.force_update,
            runtime: "container",
        },
        mode,
        update_config: s.update.as_ref().map(update_config),
        rollback_config: s.rollback.as_ref().map(update_config),
        endpoint_spec: EndpointSpec {
            mode: endpoint_mode(endpoint.mode()),
            ports: endpoint.ports.iter().map(port).collect(),
        },
    }
}

/// A service as `service inspect` shows it; `status` adds docker's
/// `ServiceStatus` (as `service ls --format json` does).
pub fn service(s: &pb::Service, status: Option<ServiceStatus>) -> Service {
    let meta = s.meta.clone().unwrap_or_default();
    let endpoint = s.endpoint.clone().unwrap_or_default();
    Service {
        id: meta.id.clone(),
        version: Version {
            index: meta.version,
        },
        created_at: timestamp(meta.created_at.as_ref()),
        updated_at: timestamp(meta.updated_at.as_ref()),
        spec: spec(&s.spec.clone().unwrap_or_default()),
        previous_spec: s.previous_spec.as_ref().map(spec),
        endpoint: Endpoint {
            spec: EndpointSpecMaybe {
                mode: endpoint.spec.as_ref().map(|e| endpoint_mode(e.mode())),
                ports: endpoint
                    .spec
                    .as_ref()
                    .map(|e| e.ports.iter().map(port).collect())
                    .unwrap_or_default(),
            },
            ports: endpoint.ports.iter().map(port).collect(),
            virtual_ips: endpoint
                .virtual_ips
                .iter()
                .map(|v| VirtualIp {
                    network_id: v.network_id.clone(),
                    addr: v.addr.clone(),
                })
                .collect(),
        },
        update_status: s.update_status.as_ref().map(|u| UpdateStatus {
            state: update_state(u.state()),
            started_at: timestamp(u.started_at.as_ref()),
            completed_at: u.completed_at.as_ref().map(|t| timestamp(Some(t))),
            message: u.message.clone(),
        }),
        service_status: status,
        job_status: s.job_status.as_ref().map(|j| JobStatus {
            job_iteration: Version {
                index: j.job_iteration,
            },
            last_execution: timestamp(j.last_execution.as_ref()),
        }),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::controlapi::service::fill_defaults;

    pub(crate) fn service_fixture(id: &str, name: &str, replicas: u64) -> pb::Service {
        let mut spec = pb::ServiceSpec {
            annotations: Some(pb::Annotations {
                name: name.into(),
                labels: BTreeMap::new(),
            }),
            task: Some(pb::TaskSpec {
                container: Some(pb::ContainerSpec {
                    image: "nginx:latest".into(),
                    args: vec!["nginx".into(), "-g".into()],
                    env: vec!["A=1".into()],
                    ..Default::default()
                }),
                ..Default::default()
            }),
            mode: Some(Mode::Replicated(pb::ReplicatedService { replicas })),
            endpoint: Some(pb::EndpointSpec {
                mode: 0,
                ports: vec![pb::PortConfig {
                    target_port: 80,
                    published_port: 8080,
                    ..Default::default()
                }],
            }),
            ..Default::default()
        };
        fill_defaults(&mut spec);
        pb::Service {
            meta: Some(pb::Meta {
                id: id.into(),
                version: 12,
                created_at: Some(prost_types::Timestamp {
                    seconds: 1_466_117_564,
                    nanos: 0,
                }),
                updated_at: Some(prost_types::Timestamp {
                    seconds: 1_466_117_565,
                    nanos: 0,
                }),
            }),
            spec: Some(spec),
            ..Default::default()
        }
    }

    fn to_json(v: impl Serialize) -> Value {
        serde_json::to_value(v).unwrap()
    }

    #[test]
    fn inspect_has_dockers_shape_and_defaults() {
        let v = to_json(service(&service_fixture("sid", "web", 3), None));
        assert_eq!(
            v,
            json!({
                "ID": "sid",
                "Version": { "Index": 12 },
                "CreatedAt": "2016-06-16T22:52:44Z",
                "UpdatedAt": "2016-06-16T22:52:45Z",
                "Spec": {
                    "Name": "web",
                    "Labels": {},
                    "TaskTemplate": {
                        "ContainerSpec": {
                            "Image": "nginx:latest",
                            "Args": ["nginx", "-g"],
                            "Env": ["A=1"],
                            "StopGracePeriod": 10_000_000_000_i64,
                            "Init": false,
                        },
                        "Resources": { "Limits": {}, "Reservations": {} },
                        "RestartPolicy": { "Condition": "any", "Delay": 5_000_000_000_i64, "MaxAttempts": 0 },
                        "Placement": {},
                        "ForceUpdate": 0,
                        "Runtime": "container",
                    },
                    "Mode": { "Replicated": { "Replicas": 3 } },
                    "UpdateConfig": {
                        "Parallelism": 1, "FailureAction": "pause", "Monitor": 5_000_000_000_i64,
                        "MaxFailureRatio": 0.0, "Order": "stop-first",
                    },
                    "RollbackConfig": {
                        "Parallelism": 1, "FailureAction": "pause", "Monitor": 5_000_000_000_i64,
                        "MaxFailureRatio": 0.0, "Order": "stop-first",
                    },
                    "EndpointSpec": {
                        "Mode": "vip",
                        "Ports": [{ "Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8080, "PublishMode": "ingress" }],
                    },
                },
                "Endpoint": { "Spec": {} },
            })
        );
    }

    #[test]
    fn inspect_shows_every_setting() {
        let mut s = service_fixture("sid", "web", 1);
        let spec = s.spec.as_mut().unwrap();
        spec.mode = Some(Mode::Global(pb::GlobalService {}));
        let task = spec.task.as_mut().unwrap();
        task.placement = Some(pb::Placement {
            constraints: vec!["node.role==worker".into()],
            preferences: vec![pb::PlacementPreference {
                preference: Some(pb::placement_preference::Preference::Spread(
                    pb::SpreadOver {
                        spread_descriptor: "node.labels.zone".into(),
                    },
                )),
            }],
            max_replicas: 2,
            platforms: vec![],
        });
        task.resources = Some(pb::ResourceRequirements {
            limits: Some(pb::Limits {
                nano_cpus: 500_000_000,
                memory_bytes: 1 << 30,
                pids: 10,
            }),
            reservations: Some(pb::Resources {
                nano_cpus: 0,
                memory_bytes: 512 << 20,
            }),
        });
        let c = task.container.as_mut().unwrap();
        c.mounts = vec![pb::Mount {
            r#type: pb::MountType::Bind as i32,
            source: "/a".into(),
            target: "/b".into(),
            read_only: true,
            ..Default::default()
        }];
        c.healthcheck = Some(pb::HealthConfig {
            test: vec!["CMD-SHELL".into(), "true".into()],
            interval: Some(prost_types::Duration {
                seconds: 2,
                nanos: 0,
            }),
            retries: 3,
            ..Default::default()
        });
        c.ulimits = vec![pb::Ulimit {
            name: "nofile".into(),
            soft: 1,
            hard: 2,
        }];
        s.previous_spec = Some(s.spec.clone().unwrap());
        s.update_status = Some(pb::UpdateStatus {
            state: pb::UpdateState::RollbackStarted as i32,
            message: "manually requested rollback".into(),
            ..Default::default()
        });
        let v = to_json(service(
            &s,
            Some(ServiceStatus {
                running_tasks: 1,
                desired_tasks: 2,
                completed_tasks: 0,
            }),
        ));
        let tt = &v["Spec"]["TaskTemplate"];
        assert_eq!(v["Spec"]["Mode"], json!({ "Global": {} }));
        assert_eq!(tt["Placement"]["Constraints"], json!(["node.role==worker"]));
        assert_eq!(
            tt["Placement"]["Preferences"],
            json!([{ "Spread": { "SpreadDescriptor": "node.labels.zone" } }])
        );
        assert_eq!(tt["Placement"]["MaxReplicas"], 2);
        assert_eq!(
            tt["Resources"],
            json!({ "Limits": { "NanoCPUs": 500_000_000, "MemoryBytes": 1_073_741_824, "Pids": 10 }, "Reservations": { "MemoryBytes": 536_870_912 } })
        );
        assert_eq!(
            tt["ContainerSpec"]["Mounts"],
            json!([{ "Type": "bind", "Source": "/a", "Target": "/b", "ReadOnly": true }])
        );
        assert_eq!(
            tt["ContainerSpec"]["Healthcheck"],
            json!({ "Test": ["CMD-SHELL", "true"], "Interval": 2_000_000_000_i64, "Retries": 3 })
        );
        assert_eq!(
            tt["ContainerSpec"]["Ulimits"],
            json!([{ "Name": "nofile", "Hard": 2, "Soft": 1 }])
        );
        assert_eq!(v["PreviousSpec"]["Name"], "web");
        assert_eq!(v["UpdateStatus"]["State"], "rollback_started");
        assert_eq!(
            v["ServiceStatus"],
            json!({ "RunningTasks": 1, "DesiredTasks": 2, "CompletedTasks": 0 })
        );
        let jobs = {
            let mut s = service_fixture("j", "job", 1);
            s.spec.as_mut().unwrap().mode = Some(Mode::ReplicatedJob(pb::ReplicatedJob {
                max_concurrent: 2,
                total_completions: 4,
            }));
            s
        };
        assert_eq!(
            to_json(service(&jobs, None))["Spec"]["Mode"],
            json!({ "ReplicatedJob": { "MaxConcurrent": 2, "TotalCompletions": 4 } })
        );
    }

    #[test]
    fn inspect_keeps_dockers_field_order() {
        let s = serde_json::to_string(&service(&service_fixture("sid", "web", 1), None)).unwrap();
        assert!(
            s.starts_with(r#"{"ID":"sid","Version":{"Index":12},"CreatedAt":"#),
            "{s}"
        );
        assert!(
            s.contains(
                r#""Spec":{"Name":"web","Labels":{},"TaskTemplate":{"ContainerSpec":{"Image":"#
            ),
            "{s}"
        );
    }

    #[test]
    fn empty_service_converts_without_panicking() {
        let v = to_json(service(&pb::Service::default(), None));
        assert_eq!(v["ID"], "");
        assert_eq!(
            v["Spec"]["Mode"],
            json!({ "Replicated": { "Replicas": 0 } })
        );
    }
}
