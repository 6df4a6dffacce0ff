//! `service create` and `service update` flags, and the service specs they
//! make: a new spec from `create`'s flags, or `update`'s flags merged into
//! the current spec (the `-add`/`-rm` variants included).
//!
//! Settings no flag touched are left unset (as docker's CLI does): the
//! manager fills docker's defaults. Pure: no I/O except `-e KEY`, which
//! reads this shell's environment while parsing, as docker does.
use std::time::Duration;

use clap::{Args, ValueEnum};
use swarm_proto::v1::{self as pb, service_spec::Mode};

use super::flags::{
    env_key, parse_capability, parse_env, parse_kv, parse_mem_bytes, parse_mount, parse_nano_cpus,
    parse_placement_pref, parse_publish, parse_ulimit, parse_words,
};
use crate::{cli::parse_duration, store::defaults};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ServiceMode {
    Replicated,
    Global,
    ReplicatedJob,
    GlobalJob,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RestartCondition {
    None,
    OnFailure,
    Any,
}

impl From<RestartCondition> for pb::RestartCondition {
    fn from(c: RestartCondition) -> Self {
        match c {
            RestartCondition::None => pb::RestartCondition::None,
            RestartCondition::OnFailure => pb::RestartCondition::OnFailure,
            RestartCondition::Any => pb::RestartCondition::Any,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FailureAction {
    Pause,
    Continue,
    Rollback,
}

impl From<FailureAction> for pb::UpdateFailureAction {
    fn from(a: FailureAction) -> Self {
        match a {
            FailureAction::Pause => pb::UpdateFailureAction::Pause,
            FailureAction::Continue => pb::UpdateFailureAction::Continue,
            FailureAction::Rollback => pb::UpdateFailureAction::Rollback,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum UpdateOrder {
    StopFirst,
    StartFirst,
}

impl From<UpdateOrder> for pb::UpdateOrder {
    fn from(o: UpdateOrder) -> Self {
        match o {
            UpdateOrder::StopFirst => pb::UpdateOrder::StopFirst,
            UpdateOrder::StartFirst => pb::UpdateOrder::StartFirst,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum EndpointMode {
    Vip,
    Dnsrr,
}

impl From<EndpointMode> for pb::EndpointMode {
    fn from(m: EndpointMode) -> Self {
        match m {
            EndpointMode::Vip => pb::EndpointMode::Vip,
            EndpointMode::Dnsrr => pb::EndpointMode::Dnsrr,
        }
    }
}

/// A command line split into words (`--args "sh -c 'echo hi'"`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Words(pub Vec<String>);

/// Settings `create` and `update` share: each is applied only when given.
#[derive(Debug, Args, Default, Clone, PartialEq)]
pub struct SpecFlags {
    /// Number of tasks (replicated modes).
    #[arg(long)]
    pub replicas: Option<u64>,
    /// Number of job tasks that can run at once (replicated-job mode).
    #[arg(long)]
    pub max_concurrent: Option<u64>,
    /// Maximum number of tasks per node (0 = unlimited).
    #[arg(long)]
    pub replicas_max_per_node: Option<u64>,

    /// Reserve CPUs (e.g. 0.5).
    #[arg(long, value_parser = parse_nano_cpus, value_name = "CPUS")]
    pub reserve_cpu: Option<i64>,
    /// Reserve memory (e.g. 512M).
    #[arg(long, value_parser = parse_mem_bytes, value_name = "BYTES")]
    pub reserve_memory: Option<i64>,
    /// Limit CPUs.
    #[arg(long, value_parser = parse_nano_cpus, value_name = "CPUS")]
    pub limit_cpu: Option<i64>,
    /// Limit memory.
    #[arg(long, value_parser = parse_mem_bytes, value_name = "BYTES")]
    pub limit_memory: Option<i64>,
    /// Limit the number of processes (0 = unlimited).
    #[arg(long, value_name = "N")]
    pub limit_pids: Option<i64>,

    /// Container hostname.
    #[arg(long)]
    pub hostname: Option<String>,
    /// Username or UID (format: <name|uid>[:<group|gid>]).
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Working directory inside the container.
    #[arg(short = 'w', long)]
    pub workdir: Option<String>,
    /// Mount the container's root filesystem as read only.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub read_only: Option<bool>,

    /// Restart when condition is met.
    #[arg(long, value_enum)]
    pub restart_condition: Option<RestartCondition>,
    /// Delay between restart attempts (ns|us|ms|s|m|h).
    #[arg(long, value_parser = parse_duration)]
    pub restart_delay: Option<Duration>,
    /// Maximum number of restarts before giving up (0 = unlimited).
    #[arg(long)]
    pub restart_max_attempts: Option<u64>,
    /// Window used to evaluate the restart policy.
    #[arg(long, value_parser = parse_duration)]
    pub restart_window: Option<Duration>,

    /// Maximum number of tasks updated simultaneously (0 to update all at once).
    #[arg(long)]
    pub update_parallelism: Option<u64>,
    /// Delay between updates.
    #[arg(long, value_parser = parse_duration)]
    pub update_delay: Option<Duration>,
    /// Action on update failure.
    #[arg(long, value_enum)]
    pub update_failure_action: Option<FailureAction>,
    /// Duration after each task update to monitor for failure.
    #[arg(long, value_parser = parse_duration)]
    pub update_monitor: Option<Duration>,
    /// Failure rate to tolerate during an update (0 to 1).
    #[arg(long)]
    pub update_max_failure_ratio: Option<f32>,
    /// Update order.
    #[arg(long, value_enum)]
    pub update_order: Option<UpdateOrder>,

    /// Maximum number of tasks rolled back simultaneously (0 to roll back all at once).
    #[arg(long)]
    pub rollback_parallelism: Option<u64>,
    /// Delay between task rollbacks.
    #[arg(long, value_parser = parse_duration)]
    pub rollback_delay: Option<Duration>,
    /// Action on rollback failure (pause or continue).
    #[arg(long, value_enum)]
    pub rollback_failure_action: Option<FailureAction>,
    /// Duration after each task rollback to monitor for failure.
    #[arg(long, value_parser = parse_duration)]
    pub rollback_monitor: Option<Duration>,
    /// Failure rate to tolerate during a rollback (0 to 1).
    #[arg(long)]
    pub rollback_max_failure_ratio: Option<f32>,
    /// Rollback order.
    #[arg(long, value_enum)]
    pub rollback_order: Option<UpdateOrder>,

    /// Command to run to check health (run by the container's shell).
    #[arg(long)]
    pub health_cmd: Option<String>,
    /// Time between running the check.
    #[arg(long, value_parser = parse_duration)]
    pub health_interval: Option<Duration>,
    /// Maximum time to allow one check to run.
    #[arg(long, value_parser = parse_duration)]
    pub health_timeout: Option<Duration>,
    /// Consecutive failures needed to report unhealthy.
    #[arg(long)]
    pub health_retries: Option<i32>,
    /// Start period for the container to initialize before counting retries towards unstable.
    #[arg(long, value_parser = parse_duration)]
    pub health_start_period: Option<Duration>,
    /// Disable any container-specified HEALTHCHECK.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub no_healthcheck: Option<bool>,

    /// Time to wait before force killing a container.
    #[arg(long, value_parser = parse_duration)]
    pub stop_grace_period: Option<Duration>,
    /// Signal to stop the container.
    #[arg(long)]
    pub stop_signal: Option<String>,
    /// Endpoint mode.
    #[arg(long, value_enum)]
    pub endpoint_mode: Option<EndpointMode>,

    /// Exit immediately instead of waiting for the service to converge.
    #[arg(short, long)]
    pub detach: bool,
    /// Suppress progress output.
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Debug, Args, Clone)]
pub struct CreateArgs {
    /// Service name.
    #[arg(long)]
    pub name: Option<String>,
    /// Service mode.
    #[arg(long, value_enum, default_value_t = ServiceMode::Replicated)]
    pub mode: ServiceMode,
    /// Set environment variables (KEY=VALUE, or KEY to pass this shell's value).
    #[arg(short, long, value_parser = parse_env)]
    pub env: Vec<String>,
    /// Service labels.
    #[arg(short, long, value_parser = parse_kv, value_name = "KEY[=VALUE]")]
    pub label: Vec<(String, String)>,
    /// Container labels.
    #[arg(long, value_parser = parse_kv, value_name = "KEY[=VALUE]")]
    pub container_label: Vec<(String, String)>,
    /// Placement constraints (e.g. node.labels.zone==a).
    #[arg(long)]
    pub constraint: Vec<String>,
    /// Placement preferences (spread=node.labels.zone).
    #[arg(long, value_parser = parse_placement_pref)]
    pub placement_pref: Vec<pb::PlacementPreference>,
    /// Attach a filesystem mount (type=bind|volume|tmpfs,source=,target=[,readonly]).
    #[arg(long, value_parser = parse_mount)]
    pub mount: Vec<pb::Mount>,
    /// Publish a port: published:target[/protocol], or published=,target=,protocol=,mode=.
    #[arg(short, long, value_parser = parse_publish)]
    pub publish: Vec<Vec<pb::PortConfig>>,
    /// Network attachments (name or ID).
    #[arg(long)]
    pub network: Vec<String>,
    /// Add Linux capabilities.
    #[arg(long, value_parser = parse_capability)]
    pub cap_add: Vec<String>,
    /// Drop Linux capabilities.
    #[arg(long, value_parser = parse_capability)]
    pub cap_drop: Vec<String>,
    /// Sysctl options (name=value).
    #[arg(long, value_parser = parse_kv)]
    pub sysctl: Vec<(String, String)>,
    /// Ulimit options (name=soft[:hard]).
    #[arg(long, value_parser = parse_ulimit)]
    pub ulimit: Vec<pb::Ulimit>,
    #[command(flatten)]
    pub common: SpecFlags,
    /// The image, then the command and its arguments (passed to the
    /// image's entrypoint).
    #[arg(
        value_name = "IMAGE [COMMAND] [ARG...]",
        required = true,
        num_args = 1..,
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub image_and_args: Vec<String>,
}

#[derive(Debug, Args, Clone, Default, PartialEq)]
pub struct UpdateArgs {
    /// Service image tag.
    #[arg(long)]
    pub image: Option<String>,
    /// Service command args (a shell-quoted string).
    #[arg(long, value_parser = parse_words)]
    pub args: Option<Words>,
    /// Add or update environment variables.
    #[arg(long, value_parser = parse_env)]
    pub env_add: Vec<String>,
    /// Remove environment variables.
    #[arg(long)]
    pub env_rm: Vec<String>,
    /// Add or update service labels.
    #[arg(long, value_parser = parse_kv, value_name = "KEY[=VALUE]")]
    pub label_add: Vec<(String, String)>,
    /// Remove service labels.
    #[arg(long)]
    pub label_rm: Vec<String>,
    /// Add or update container labels.
    #[arg(long, value_parser = parse_kv, value_name = "KEY[=VALUE]")]
    pub container_label_add: Vec<(String, String)>,
    /// Remove container labels.
    #[arg(long)]
    pub container_label_rm: Vec<String>,
    /// Add or update a placement constraint.
    #[arg(long)]
    pub constraint_add: Vec<String>,
    /// Remove a placement constraint.
    #[arg(long)]
    pub constraint_rm: Vec<String>,
    /// Add a placement preference.
    #[arg(long, value_parser = parse_placement_pref)]
    pub placement_pref_add: Vec<pb::PlacementPreference>,
    /// Remove a placement preference.
    #[arg(long, value_parser = parse_placement_pref)]
    pub placement_pref_rm: Vec<pb::PlacementPreference>,
    /// Add or update a mount (replaces a mount with the same target).
    #[arg(long, value_parser = parse_mount)]
    pub mount_add: Vec<pb::Mount>,
    /// Remove a mount by its target path.
    #[arg(long)]
    pub mount_rm: Vec<String>,
    /// Add or update a published port.
    #[arg(long, value_parser = parse_publish)]
    pub publish_add: Vec<Vec<pb::PortConfig>>,
    /// Remove a published port by its target port ([published:]target[/protocol]).
    #[arg(long, value_parser = parse_publish)]
    pub publish_rm: Vec<Vec<pb::PortConfig>>,
    /// Add a network.
    #[arg(long)]
    pub network_add: Vec<String>,
    /// Remove a network (by the ID `service inspect` shows).
    #[arg(long)]
    pub network_rm: Vec<String>,
    /// Add Linux capabilities.
    #[arg(long, value_parser = parse_capability)]
    pub cap_add: Vec<String>,
    /// Drop Linux capabilities.
    #[arg(long, value_parser = parse_capability)]
    pub cap_drop: Vec<String>,
    /// Add or update a sysctl option.
    #[arg(long, value_parser = parse_kv)]
    pub sysctl_add: Vec<(String, String)>,
    /// Remove a sysctl option.
    #[arg(long)]
    pub sysctl_rm: Vec<String>,
    /// Add or update a ulimit option.
    #[arg(long, value_parser = parse_ulimit)]
    pub ulimit_add: Vec<pb::Ulimit>,
    /// Remove a ulimit option.
    #[arg(long)]
    pub ulimit_rm: Vec<String>,
    /// Force the update even if no changes require it (replaces every task).
    #[arg(long)]
    pub force: bool,
    /// Roll back to the previous specification.
    #[arg(long)]
    pub rollback: bool,
    #[command(flatten)]
    pub common: SpecFlags,
    /// Service name, ID or ID prefix.
    #[arg(value_name = "SERVICE")]
    pub service: String,
}

fn dur(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

fn is_job(spec: &pb::ServiceSpec) -> bool {
    matches!(spec.mode, Some(Mode::ReplicatedJob(_) | Mode::GlobalJob(_)))
}

fn task(spec: &mut pb::ServiceSpec) -> &mut pb::TaskSpec {
    spec.task.get_or_insert_with(Default::default)
}

fn container(spec: &mut pb::ServiceSpec) -> &mut pb::ContainerSpec {
    task(spec).container.get_or_insert_with(Default::default)
}

fn placement(spec: &mut pb::ServiceSpec) -> &mut pb::Placement {
    task(spec).placement.get_or_insert_with(Default::default)
}

fn ports(spec: &mut pb::ServiceSpec) -> &mut Vec<pb::PortConfig> {
    &mut spec.endpoint.get_or_insert_with(Default::default).ports
}

/// The spec `service create` sends.
pub fn build_spec(a: &CreateArgs) -> Result<pb::ServiceSpec, String> {
    let mut parts = a.image_and_args.iter();
    let image = parts
        .next()
        .cloned()
        .ok_or("no image given: service create [OPTIONS] IMAGE [COMMAND] [ARG...]")?;
    let args: Vec<String> = parts.cloned().collect();
    let replicas = a.common.replicas;
    let mode = match a.mode {
        ServiceMode::Replicated => Mode::Replicated(pb::ReplicatedService {
            replicas: replicas.unwrap_or(1),
        }),
        ServiceMode::ReplicatedJob => {
            let total = replicas.unwrap_or(1);
            Mode::ReplicatedJob(pb::ReplicatedJob {
                max_concurrent: a.common.max_concurrent.unwrap_or(total),
                total_completions: total,
            })
        }
        ServiceMode::Global => Mode::Global(pb::GlobalService {}),
        ServiceMode::GlobalJob => Mode::GlobalJob(pb::GlobalJob {}),
    };
    let mut spec = pb::ServiceSpec {
        annotations: Some(pb::Annotations {
            name: a.name.clone().unwrap_or_default(),
            labels: a.label.iter().cloned().collect(),
        }),
        task: Some(pb::TaskSpec {
            container: Some(pb::ContainerSpec {
                image,
                args,
                env: a.env.clone(),
                labels: a.container_label.iter().cloned().collect(),
                mounts: a.mount.clone(),
                capability_add: a.cap_add.clone(),
                capability_drop: a.cap_drop.clone(),
                sysctls: a.sysctl.iter().cloned().collect(),
                ulimits: a.ulimit.clone(),
                ..Default::default()
            }),
            placement: Some(pb::Placement {
                constraints: a.constraint.clone(),
                preferences: a.placement_pref.clone(),
                ..Default::default()
            }),
            networks: a
                .network
                .iter()
                .map(|n| pb::NetworkAttachmentConfig {
                    target: n.clone(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
        mode: Some(mode),
        endpoint: Some(pb::EndpointSpec {
            mode: pb::EndpointMode::Vip as i32,
            ports: a.publish.iter().flatten().cloned().collect(),
        }),
        ..Default::default()
    };
    apply_common(&mut spec, &a.common)?;
    Ok(spec)
}

/// Applies the shared flags that were given.
pub fn apply_common(spec: &mut pb::ServiceSpec, f: &SpecFlags) -> Result<(), String> {
    if let Some(n) = f.replicas {
        match spec.mode.as_mut() {
            Some(Mode::Replicated(r)) => r.replicas = n,
            Some(Mode::ReplicatedJob(j)) => j.total_completions = n,
            _ => {
                return Err(
                    "replicas can only be used with replicated or replicated-job mode".into(),
                );
            }
        }
    }
    if let Some(n) = f.max_concurrent {
        match spec.mode.as_mut() {
            Some(Mode::ReplicatedJob(j)) => j.max_concurrent = n,
            _ => return Err("max-concurrent can only be used with replicated-job mode".into()),
        }
    }
    if let Some(n) = f.replicas_max_per_node {
        if matches!(spec.mode, Some(Mode::Global(_) | Mode::GlobalJob(_))) {
            return Err(
                "replicas-max-per-node can only be used with replicated or replicated-job mode"
                    .into(),
            );
        }
        placement(spec).max_replicas = n;
    }

    let any_resource = f.reserve_cpu.is_some()
        || f.reserve_memory.is_some()
        || f.limit_cpu.is_some()
        || f.limit_memory.is_some()
        || f.limit_pids.is_some();
    if any_resource {
        let r = task(spec).resources.get_or_insert_with(Default::default);
        let res = r.reservations.get_or_insert_with(Default::default);
        if let Some(v) = f.reserve_cpu {
            res.nano_cpus = v;
        }
        if let Some(v) = f.reserve_memory {
            res.memory_bytes = v;
        }
        let lim = r.limits.get_or_insert_with(Default::default);
        if let Some(v) = f.limit_cpu {
            lim.nano_cpus = v;
        }
        if let Some(v) = f.limit_memory {
            lim.memory_bytes = v;
        }
        if let Some(v) = f.limit_pids {
            lim.pids = v;
        }
    }

    if let Some(v) = &f.hostname {
        container(spec).hostname = v.clone();
    }
    if let Some(v) = &f.user {
        container(spec).user = v.clone();
    }
    if let Some(v) = &f.workdir {
        container(spec).dir = v.clone();
    }
    if let Some(v) = f.read_only {
        container(spec).read_only = v;
    }

    let any_restart = f.restart_condition.is_some()
        || f.restart_delay.is_some()
        || f.restart_max_attempts.is_some()
        || f.restart_window.is_some();
    if any_restart {
        let job = is_job(spec);
        let r = task(spec)
            .restart
            .get_or_insert_with(|| defaults::restart_policy(job));
        if let Some(c) = f.restart_condition {
            r.condition = pb::RestartCondition::from(c) as i32;
        }
        if let Some(d) = f.restart_delay {
            r.delay = Some(dur(d));
        }
        if let Some(n) = f.restart_max_attempts {
            r.max_attempts = n;
        }
        if let Some(d) = f.restart_window {
            r.window = Some(dur(d));
        }
    }

    apply_update_config(
        &mut spec.update,
        f.update_parallelism,
        f.update_delay,
        f.update_failure_action,
        f.update_monitor,
        f.update_max_failure_ratio,
        f.update_order,
    );
    apply_update_config(
        &mut spec.rollback,
        f.rollback_parallelism,
        f.rollback_delay,
        f.rollback_failure_action,
        f.rollback_monitor,
        f.rollback_max_failure_ratio,
        f.rollback_order,
    );

    apply_health(container(spec), f)?;

    if let Some(d) = f.stop_grace_period {
        container(spec).stop_grace_period = Some(dur(d));
    }
    if let Some(s) = &f.stop_signal {
        container(spec).stop_signal = s.clone();
    }
    if let Some(m) = f.endpoint_mode {
        spec.endpoint.get_or_insert_with(Default::default).mode = pb::EndpointMode::from(m) as i32;
    }
    Ok(())
}

fn apply_update_config(
    cfg: &mut Option<pb::UpdateConfig>,
    parallelism: Option<u64>,
    delay: Option<Duration>,
    action: Option<FailureAction>,
    monitor: Option<Duration>,
    ratio: Option<f32>,
    order: Option<UpdateOrder>,
) {
    let any = parallelism.is_some()
        || delay.is_some()
        || action.is_some()
        || monitor.is_some()
        || ratio.is_some()
        || order.is_some();
    if !any {
        return;
    }
    let c = cfg.get_or_insert_with(defaults::update_config);
    if let Some(p) = parallelism {
        c.parallelism = p;
    }
    if let Some(d) = delay {
        c.delay = Some(dur(d));
    }
    if let Some(a) = action {
        c.failure_action = pb::UpdateFailureAction::from(a) as i32;
    }
    if let Some(m) = monitor {
        c.monitor = Some(dur(m));
    }
    if let Some(r) = ratio {
        c.max_failure_ratio = r;
    }
    if let Some(o) = order {
        c.order = pb::UpdateOrder::from(o) as i32;
    }
}

fn apply_health(c: &mut pb::ContainerSpec, f: &SpecFlags) -> Result<(), String> {
    let any = f.health_cmd.is_some()
        || f.health_interval.is_some()
        || f.health_timeout.is_some()
        || f.health_retries.is_some()
        || f.health_start_period.is_some();
    match f.no_healthcheck {
        Some(true) if any => {
            return Err("--no-healthcheck conflicts with --health-* options".into());
        }
        Some(true) => {
            c.healthcheck = Some(pb::HealthConfig {
                test: vec!["NONE".into()],
                ..Default::default()
            });
            return Ok(());
        }
        Some(false) => {
            if let Some(h) = c.healthcheck.as_mut()
                && h.test == ["NONE"]
            {
                h.test.clear();
            }
        }
        None => {}
    }
    if !any {
        return Ok(());
    }
    let h = c.healthcheck.get_or_insert_with(Default::default);
    if h.test == ["NONE"] {
        h.test.clear();
    }
    if let Some(cmd) = &f.health_cmd {
        h.test = if cmd.is_empty() {
            Vec::new()
        } else {
            vec!["CMD-SHELL".into(), cmd.clone()]
        };
    }
    if let Some(d) = f.health_interval {
        h.interval = Some(dur(d));
    }
    if let Some(d) = f.health_timeout {
        h.timeout = Some(dur(d));
    }
    if let Some(n) = f.health_retries {
        h.retries = n;
    }
    if let Some(d) = f.health_start_period {
        h.start_period = Some(dur(d));
    }
    Ok(())
}

/// Merges `service update` flags into `spec`, in docker's order: additions
/// first, then removals; `--force` bumps the force counter so every task is
/// replaced.
pub fn merge_update(spec: &mut pb::ServiceSpec, a: &UpdateArgs) -> Result<(), String> {
    if let Some(image) = &a.image {
        container(spec).image = image.clone();
    }
    if let Some(Words(args)) = &a.args {
        container(spec).args = args.clone();
    }

    let env = &mut container(spec).env;
    for e in &a.env_add {
        match env.iter_mut().find(|x| env_key(x) == env_key(e)) {
            Some(x) => *x = e.clone(),
            None => env.push(e.clone()),
        }
    }
    env.retain(|x| !a.env_rm.iter().any(|k| env_key(k) == env_key(x)));

    let labels = &mut spec.annotations.get_or_insert_with(Default::default).labels;
    labels.extend(a.label_add.iter().cloned());
    for k in &a.label_rm {
        labels.remove(k);
    }
    let labels = &mut container(spec).labels;
    labels.extend(a.container_label_add.iter().cloned());
    for k in &a.container_label_rm {
        labels.remove(k);
    }

    if !a.constraint_add.is_empty() || !a.constraint_rm.is_empty() {
        let p = placement(spec);
        for c in &a.constraint_add {
            if !p.constraints.contains(c) {
                p.constraints.push(c.clone());
            }
        }
        p.constraints.retain(|c| !a.constraint_rm.contains(c));
        // Sorted, as docker does, so the same constraints never read as a change.
        p.constraints.sort();
    }
    if !a.placement_pref_add.is_empty() || !a.placement_pref_rm.is_empty() {
        let p = placement(spec);
        p.preferences.retain(|x| !a.placement_pref_rm.contains(x));
        p.preferences.extend(a.placement_pref_add.iter().cloned());
    }

    let mounts = &mut container(spec).mounts;
    for m in &a.mount_add {
        match mounts.iter_mut().find(|x| x.target == m.target) {
            Some(x) => *x = m.clone(),
            None => mounts.push(m.clone()),
        }
    }
    mounts.retain(|m| !a.mount_rm.contains(&m.target));

    if !a.publish_add.is_empty() || !a.publish_rm.is_empty() {
        let ports = ports(spec);
        let rm: Vec<&pb::PortConfig> = a.publish_rm.iter().flatten().collect();
        ports.retain(|p| {
            !rm.iter().any(|r| {
                r.target_port == p.target_port
                    && r.protocol == p.protocol
                    && r.publish_mode == p.publish_mode
            })
        });
        for p in a.publish_add.iter().flatten() {
            if ports.contains(p) {
                continue;
            }
            // A port published again with another target replaces the old one.
            ports.retain(|x| {
                !(p.published_port != 0
                    && x.published_port == p.published_port
                    && x.protocol == p.protocol)
            });
            ports.push(p.clone());
        }
    }

    let nets = &mut task(spec).networks;
    for n in &a.network_add {
        if !nets.iter().any(|x| &x.target == n) {
            nets.push(pb::NetworkAttachmentConfig {
                target: n.clone(),
                ..Default::default()
            });
        }
    }
    nets.retain(|x| !a.network_rm.contains(&x.target));

    let c = container(spec);
    for cap in &a.cap_add {
        c.capability_drop.retain(|x| x != cap);
        if !c.capability_add.contains(cap) {
            c.capability_add.push(cap.clone());
        }
    }
    for cap in &a.cap_drop {
        c.capability_add.retain(|x| x != cap);
        if !c.capability_drop.contains(cap) {
            c.capability_drop.push(cap.clone());
        }
    }
    c.sysctls.extend(a.sysctl_add.iter().cloned());
    for k in &a.sysctl_rm {
        c.sysctls.remove(k);
    }
    for u in &a.ulimit_add {
        match c.ulimits.iter_mut().find(|x| x.name == u.name) {
            Some(x) => *x = u.clone(),
            None => c.ulimits.push(u.clone()),
        }
    }
    c.ulimits.retain(|u| !a.ulimit_rm.contains(&u.name));

    if a.force {
        let t = task(spec);
        t.force_update = t.force_update.wrapping_add(1);
    }
    apply_common(spec, &a.common)
}

/// Whether `update` was given anything besides `--rollback`, `--detach`
/// and `--quiet` (docker refuses to combine them).
#[must_use]
pub fn changes_spec(a: &UpdateArgs) -> bool {
    let mut probe = a.clone();
    probe.common.detach = false;
    probe.common.quiet = false;
    let bare = UpdateArgs {
        rollback: a.rollback,
        service: a.service.clone(),
        ..Default::default()
    };
    probe != bare
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use clap::Parser;

    use super::*;
    use crate::{
        cli::{Cli, Command, service::ServiceCommand},
        controlapi::service::{fill_defaults, validate_spec},
    };

    fn parse(args: &[&str]) -> ServiceCommand {
        let mut argv = vec!["swarm", "service"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv) {
            Ok(Cli {
                command: Command::Service(cmd),
                ..
            }) => cmd,
            Ok(other) => panic!("parsed as {other:?}"),
            Err(e) => panic!("{e}"),
        }
    }

    fn create(args: &[&str]) -> Result<pb::ServiceSpec, String> {
        let mut argv = vec!["create"];
        argv.extend_from_slice(args);
        match parse(&argv) {
            ServiceCommand::Create(a) => build_spec(&a),
            other => panic!("parsed as {other:?}"),
        }
    }

    fn update(spec: &mut pb::ServiceSpec, args: &[&str]) -> Result<(), String> {
        let mut argv = vec!["update"];
        argv.extend_from_slice(args);
        argv.push("web");
        match parse(&argv) {
            ServiceCommand::Update(a) => merge_update(spec, &a),
            other => panic!("parsed as {other:?}"),
        }
    }

    fn parse_err(args: &[&str]) -> String {
        let mut argv = vec!["swarm", "service"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv)
            .expect_err("should not parse")
            .to_string()
    }

    fn c(spec: &pb::ServiceSpec) -> &pb::ContainerSpec {
        spec.task.as_ref().unwrap().container.as_ref().unwrap()
    }

    fn t(spec: &pb::ServiceSpec) -> &pb::TaskSpec {
        spec.task.as_ref().unwrap()
    }

    #[test]
    fn a_bare_create_leaves_defaults_to_the_manager() {
        let mut s = create(&["--name", "web", "nginx"]).unwrap();
        assert_eq!(s.annotations.as_ref().unwrap().name, "web");
        assert_eq!(c(&s).image, "nginx");
        assert!(c(&s).args.is_empty());
        assert_eq!(
            s.mode,
            Some(Mode::Replicated(pb::ReplicatedService { replicas: 1 }))
        );
        assert!(s.update.is_none() && s.rollback.is_none());
        assert!(t(&s).restart.is_none());
        assert!(c(&s).stop_grace_period.is_none());
        assert_eq!(s.endpoint.as_ref().unwrap().mode(), pb::EndpointMode::Vip);
        // What the manager makes of it: docker's defaults.
        fill_defaults(&mut s);
        validate_spec(&s).unwrap();
        let u = s.update.unwrap();
        assert_eq!(
            (
                u.parallelism,
                u.monitor.unwrap().seconds,
                u.failure_action(),
                u.order()
            ),
            (
                1,
                5,
                pb::UpdateFailureAction::Pause,
                pb::UpdateOrder::StopFirst
            )
        );
        let r = s.task.as_ref().unwrap().restart.unwrap();
        assert_eq!(
            (r.condition(), r.delay.unwrap().seconds),
            (pb::RestartCondition::Any, 5)
        );
    }

    #[test]
    fn create_flags_fill_the_spec() {
        let s = create(&[
            "--name",
            "web",
            "--replicas",
            "3",
            "-e",
            "A=1",
            "--env",
            "B=2",
            "-l",
            "tier=front",
            "--container-label",
            "c=d",
            "--constraint",
            "node.role==worker",
            "--constraint",
            "node.labels.zone==a",
            "--placement-pref",
            "spread=node.labels.zone",
            "--replicas-max-per-node",
            "2",
            "--reserve-cpu",
            "0.5",
            "--reserve-memory",
            "256M",
            "--limit-cpu",
            "1",
            "--limit-memory",
            "1G",
            "--limit-pids",
            "100",
            "--mount",
            "type=bind,source=/data,target=/data,readonly",
            "--hostname",
            "h",
            "-u",
            "1000:1000",
            "-w",
            "/srv",
            "--read-only",
            "--cap-add",
            "net_admin",
            "--cap-drop",
            "CAP_CHOWN",
            "--sysctl",
            "net.core.somaxconn=1024",
            "--ulimit",
            "nofile=1024:2048",
            "--restart-condition",
            "on-failure",
            "--restart-delay",
            "10s",
            "--restart-max-attempts",
            "3",
            "--restart-window",
            "1m",
            "--update-parallelism",
            "2",
            "--update-delay",
            "10s",
            "--update-failure-action",
            "rollback",
            "--update-monitor",
            "30s",
            "--update-max-failure-ratio",
            "0.25",
            "--update-order",
            "start-first",
            "--rollback-parallelism",
            "0",
            "--rollback-failure-action",
            "continue",
            "--health-cmd",
            "curl -f localhost",
            "--health-interval",
            "5s",
            "--health-timeout",
            "2s",
            "--health-retries",
            "4",
            "--health-start-period",
            "1m",
            "--stop-grace-period",
            "30s",
            "--stop-signal",
            "SIGINT",
            "-p",
            "8080:80",
            "--publish",
            "published=53,target=53,protocol=udp,mode=host",
            "--network",
            "backend",
            "--endpoint-mode",
            "vip",
            "-d",
            "-q",
            "nginx:1.25",
            "nginx",
            "-g",
            "daemon off;",
        ])
        .unwrap();
        let a = s.annotations.as_ref().unwrap();
        assert_eq!(a.labels, BTreeMap::from([("tier".into(), "front".into())]));
        assert_eq!(
            s.mode,
            Some(Mode::Replicated(pb::ReplicatedService { replicas: 3 }))
        );
        let c = c(&s);
        assert_eq!(c.image, "nginx:1.25");
        assert_eq!(c.args, ["nginx", "-g", "daemon off;"]);
        assert_eq!(c.env, ["A=1", "B=2"]);
        assert_eq!(c.labels.get("c").map(String::as_str), Some("d"));
        assert_eq!(c.mounts.len(), 1);
        assert!(c.mounts[0].read_only);
        assert_eq!(
            (c.hostname.as_str(), c.user.as_str(), c.dir.as_str()),
            ("h", "1000:1000", "/srv")
        );
        assert!(c.read_only);
        assert_eq!(c.capability_add, ["CAP_NET_ADMIN"]);
        assert_eq!(c.capability_drop, ["CAP_CHOWN"]);
        assert_eq!(
            c.sysctls.get("net.core.somaxconn").map(String::as_str),
            Some("1024")
        );
        assert_eq!(c.ulimits[0].hard, 2048);
        assert_eq!(c.stop_grace_period.unwrap().seconds, 30);
        assert_eq!(c.stop_signal, "SIGINT");
        let h = c.healthcheck.as_ref().unwrap();
        assert_eq!(h.test, ["CMD-SHELL", "curl -f localhost"]);
        assert_eq!(
            (
                h.interval.unwrap().seconds,
                h.timeout.unwrap().seconds,
                h.retries,
                h.start_period.unwrap().seconds
            ),
            (5, 2, 4, 60)
        );
        let task = t(&s);
        let p = task.placement.as_ref().unwrap();
        assert_eq!(p.constraints, ["node.role==worker", "node.labels.zone==a"]);
        assert_eq!(p.preferences.len(), 1);
        assert_eq!(p.max_replicas, 2);
        let r = task.resources.unwrap();
        assert_eq!(
            r.reservations.unwrap(),
            pb::Resources {
                nano_cpus: 500_000_000,
                memory_bytes: 256 << 20
            }
        );
        assert_eq!(
            r.limits.unwrap(),
            pb::Limits {
                nano_cpus: 1_000_000_000,
                memory_bytes: 1 << 30,
                pids: 100
            }
        );
        let rp = task.restart.unwrap();
        assert_eq!(rp.condition(), pb::RestartCondition::OnFailure);
        assert_eq!(
            (
                rp.delay.unwrap().seconds,
                rp.max_attempts,
                rp.window.unwrap().seconds
            ),
            (10, 3, 60)
        );
        assert_eq!(task.networks[0].target, "backend");
        let u = s.update.unwrap();
        assert_eq!(u.parallelism, 2);
        assert_eq!(u.delay.unwrap().seconds, 10);
        assert_eq!(u.failure_action(), pb::UpdateFailureAction::Rollback);
        assert_eq!(u.monitor.unwrap().seconds, 30);
        assert_eq!(u.max_failure_ratio, 0.25);
        assert_eq!(u.order(), pb::UpdateOrder::StartFirst);
        let rb = s.rollback.unwrap();
        // Flags not given keep docker's defaults.
        assert_eq!(rb.parallelism, 0);
        assert_eq!(rb.failure_action(), pb::UpdateFailureAction::Continue);
        assert_eq!(rb.monitor.unwrap().seconds, 5);
        assert_eq!(rb.order(), pb::UpdateOrder::StopFirst);
        let e = s.endpoint.unwrap();
        assert_eq!(e.ports.len(), 2);
        assert_eq!(e.ports[1].publish_mode(), pb::PublishMode::Host);
        let ServiceCommand::Create(args) = parse(&["create", "-d", "-q", "nginx"]) else {
            panic!()
        };
        assert!(args.common.detach && args.common.quiet);
    }

    #[test]
    fn modes_and_their_flags() {
        let s = create(&["--name", "g", "--mode", "global", "nginx"]).unwrap();
        assert_eq!(s.mode, Some(Mode::Global(pb::GlobalService {})));
        assert!(
            create(&["--mode", "global", "--replicas", "2", "nginx"])
                .unwrap_err()
                .contains("replicas can only")
        );
        assert!(
            create(&["--mode", "global", "--replicas-max-per-node", "2", "nginx"])
                .unwrap_err()
                .contains("replicas-max-per-node")
        );
        assert!(
            create(&["--max-concurrent", "2", "nginx"])
                .unwrap_err()
                .contains("max-concurrent")
        );
        let s = create(&[
            "--mode",
            "replicated-job",
            "--replicas",
            "5",
            "--max-concurrent",
            "2",
            "busybox",
        ])
        .unwrap();
        assert_eq!(
            s.mode,
            Some(Mode::ReplicatedJob(pb::ReplicatedJob {
                max_concurrent: 2,
                total_completions: 5
            }))
        );
        let s = create(&["--mode", "replicated-job", "--replicas", "4", "busybox"]).unwrap();
        assert_eq!(
            s.mode,
            Some(Mode::ReplicatedJob(pb::ReplicatedJob {
                max_concurrent: 4,
                total_completions: 4
            }))
        );
        let s = create(&["--mode", "global-job", "--restart-delay", "1s", "busybox"]).unwrap();
        assert_eq!(s.mode, Some(Mode::GlobalJob(pb::GlobalJob {})));
        // A job's restart policy starts from on-failure.
        assert_eq!(
            t(&s).restart.unwrap().condition(),
            pb::RestartCondition::OnFailure
        );
        assert!(parse_err(&["create", "--mode", "daemon", "nginx"]).contains("daemon"));
    }

    #[test]
    fn create_flag_errors() {
        assert!(parse_err(&["create", "--name", "web"]).contains("IMAGE"));
        assert!(
            parse_err(&["create", "--reserve-memory", "lots", "nginx"]).contains("invalid size")
        );
        assert!(parse_err(&["create", "--limit-cpu", "-1", "nginx"]).contains("limit-cpu"));
        assert!(parse_err(&["create", "-p", "80:http", "nginx"]).contains("port"));
        assert!(
            parse_err(&["create", "--mount", "source=/a", "nginx"]).contains("target is required")
        );
        assert!(parse_err(&["create", "--update-delay", "5", "nginx"]).contains("missing unit"));
        assert!(
            parse_err(&["create", "--restart-condition", "always", "nginx"]).contains("always")
        );
        assert!(
            parse_err(&["create", "--update-failure-action", "retry", "nginx"]).contains("retry")
        );
        assert!(parse_err(&["create", "--update-order", "random", "nginx"]).contains("random"));
        assert!(parse_err(&["create", "--endpoint-mode", "nat", "nginx"]).contains("nat"));
        assert!(
            parse_err(&["create", "--placement-pref", "pack=x", "nginx"]).contains("only spread")
        );
        assert!(parse_err(&["create", "--ulimit", "nofile=2:1", "nginx"]).contains("soft limit"));
        assert!(
            create(&["--no-healthcheck", "--health-cmd", "true", "nginx"])
                .unwrap_err()
                .contains("conflicts")
        );
        let s = create(&["--no-healthcheck", "nginx"]).unwrap();
        assert_eq!(c(&s).healthcheck.as_ref().unwrap().test, ["NONE"]);
    }

    #[test]
    fn flags_after_the_image_belong_to_the_command() {
        let s = create(&["--name", "x", "busybox", "sh", "-c", "--replicas 3"]).unwrap();
        assert_eq!(c(&s).args, ["sh", "-c", "--replicas 3"]);
        assert_eq!(
            s.mode,
            Some(Mode::Replicated(pb::ReplicatedService { replicas: 1 }))
        );
        let s = create(&["busybox", "--replicas", "3"]).unwrap();
        assert_eq!(c(&s).args, ["--replicas", "3"]);
        // --read-only takes no separate value, so the image is not eaten.
        let s = create(&["--read-only", "busybox"]).unwrap();
        assert!(c(&s).read_only);
        assert_eq!(c(&s).image, "busybox");
    }

    fn existing() -> pb::ServiceSpec {
        let mut s = create(&[
            "--name",
            "web",
            "--replicas",
            "3",
            "-e",
            "A=1",
            "-e",
            "B=2",
            "-l",
            "keep=1",
            "-l",
            "drop=1",
            "--constraint",
            "node.role==worker",
            "--mount",
            "type=volume,source=v1,target=/v1",
            "--mount",
            "type=tmpfs,target=/t",
            "-p",
            "8080:80",
            "-p",
            "9090:90",
            "--cap-add",
            "NET_ADMIN",
            "--sysctl",
            "a=1",
            "--ulimit",
            "nofile=1",
            "nginx",
        ])
        .unwrap();
        fill_defaults(&mut s);
        s
    }

    #[test]
    fn update_adds_and_removes() {
        let mut s = existing();
        update(
            &mut s,
            &[
                "--image",
                "nginx:2",
                "--args",
                "nginx -g 'daemon off;'",
                "--env-add",
                "A=10",
                "--env-add",
                "C=3",
                "--env-rm",
                "B",
                "--label-add",
                "new=1",
                "--label-rm",
                "drop",
                "--container-label-add",
                "x=y",
                "--constraint-add",
                "node.labels.zone==a",
                "--constraint-rm",
                "node.role==worker",
                "--placement-pref-add",
                "spread=node.labels.zone",
                "--mount-add",
                "type=volume,source=v2,target=/v1",
                "--mount-rm",
                "/t",
                "--publish-add",
                "7070:70",
                "--publish-rm",
                "90",
                "--cap-drop",
                "net_admin",
                "--sysctl-add",
                "b=2",
                "--sysctl-rm",
                "a",
                "--ulimit-add",
                "nofile=5:10",
                "--ulimit-add",
                "nproc=7",
                "--network-add",
                "n1",
                "--replicas",
                "5",
            ],
        )
        .unwrap();
        let ct = c(&s);
        assert_eq!(ct.image, "nginx:2");
        assert_eq!(ct.args, ["nginx", "-g", "daemon off;"]);
        assert_eq!(ct.env, ["A=10", "C=3"]);
        assert_eq!(ct.labels.get("x").map(String::as_str), Some("y"));
        assert_eq!(ct.mounts.len(), 1);
        assert_eq!(
            (ct.mounts[0].source.as_str(), ct.mounts[0].target.as_str()),
            ("v2", "/v1")
        );
        assert!(ct.capability_add.is_empty());
        assert_eq!(ct.capability_drop, ["CAP_NET_ADMIN"]);
        assert_eq!(ct.sysctls, BTreeMap::from([("b".into(), "2".into())]));
        assert_eq!(
            ct.ulimits
                .iter()
                .map(|u| (u.name.as_str(), u.soft, u.hard))
                .collect::<Vec<_>>(),
            [("nofile", 5, 10), ("nproc", 7, 7)]
        );
        let labels = &s.annotations.as_ref().unwrap().labels;
        assert_eq!(labels.keys().collect::<Vec<_>>(), ["keep", "new"]);
        let p = t(&s).placement.as_ref().unwrap();
        assert_eq!(p.constraints, ["node.labels.zone==a"]);
        assert_eq!(p.preferences.len(), 1);
        let ports: Vec<(u32, u32)> = s
            .endpoint
            .as_ref()
            .unwrap()
            .ports
            .iter()
            .map(|p| (p.published_port, p.target_port))
            .collect();
        assert_eq!(ports, [(8080, 80), (7070, 70)]);
        assert_eq!(t(&s).networks[0].target, "n1");
        assert_eq!(
            s.mode,
            Some(Mode::Replicated(pb::ReplicatedService { replicas: 5 }))
        );
        validate_spec(&s).unwrap();
    }

    #[test]
    fn update_changes_only_what_is_given() {
        let before = existing();
        let mut s = before.clone();
        update(&mut s, &[]).unwrap();
        assert_eq!(s, before);
        update(
            &mut s,
            &["--update-parallelism", "4", "--restart-delay", "1s"],
        )
        .unwrap();
        let u = s.update.unwrap();
        assert_eq!(u.parallelism, 4);
        assert_eq!(u.monitor.unwrap().seconds, 5);
        assert_eq!(t(&s).restart.unwrap().delay.unwrap().seconds, 1);
        assert_eq!(
            t(&s).restart.unwrap().condition(),
            pb::RestartCondition::Any
        );
        let mut s = before.clone();
        update(&mut s, &["--force"]).unwrap();
        update(&mut s, &["--force"]).unwrap();
        assert_eq!(t(&s).force_update, 2);
        let mut s = before.clone();
        update(&mut s, &["--read-only"]).unwrap();
        assert!(c(&s).read_only);
        update(&mut s, &["--read-only=false"]).unwrap();
        assert!(!c(&s).read_only);
        update(&mut s, &["--no-healthcheck"]).unwrap();
        assert_eq!(c(&s).healthcheck.as_ref().unwrap().test, ["NONE"]);
        update(&mut s, &["--health-cmd", "true"]).unwrap();
        assert_eq!(
            c(&s).healthcheck.as_ref().unwrap().test,
            ["CMD-SHELL", "true"]
        );
        // Publishing a port again with another target replaces it.
        let mut s = before.clone();
        update(&mut s, &["--publish-add", "8080:81"]).unwrap();
        let ports: Vec<(u32, u32)> = s
            .endpoint
            .as_ref()
            .unwrap()
            .ports
            .iter()
            .map(|p| (p.published_port, p.target_port))
            .collect();
        assert_eq!(ports, [(9090, 90), (8080, 81)]);
        let mut global = before.clone();
        global.mode = Some(Mode::Global(pb::GlobalService {}));
        assert!(
            update(&mut global, &["--replicas", "2"])
                .unwrap_err()
                .contains("replicas can only")
        );
    }

    #[test]
    fn rollback_alone_is_detected() {
        let ServiceCommand::Update(a) = parse(&["update", "--rollback", "-d", "-q", "web"]) else {
            panic!()
        };
        assert!(a.rollback && !changes_spec(&a));
        let ServiceCommand::Update(a) = parse(&["update", "--rollback", "--replicas", "2", "web"])
        else {
            panic!()
        };
        assert!(changes_spec(&a));
        let ServiceCommand::Update(a) = parse(&["update", "--env-add", "A=1", "web"]) else {
            panic!()
        };
        assert!(changes_spec(&a));
    }
}
