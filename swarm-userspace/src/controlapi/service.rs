//! Services in the control API: docker's server-side defaults, the checks a
//! service spec must pass before it is stored, published-port conflicts
//! between services, and the filters of `service ls`.
//!
//! Pure functions of a spec (and, for conflicts, of the other services):
//! no store, no clock. Must never accept a spec the scheduler or the
//! orchestrators could misread: everything they parse (constraints, modes,
//! ports, durations) is checked here first.
use std::collections::{BTreeSet, HashSet};

use swarm_proto::v1::{self as pb, service_spec::Mode};

use crate::store::defaults;

/// Why a service spec was refused; the text says what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("invalid service spec: {0}")]
    Invalid(String),
    #[error("{0}")]
    PortInUse(String),
    #[error("{0}")]
    Forbidden(String),
}

impl From<SpecError> for tonic::Status {
    fn from(e: SpecError) -> Self {
        tonic::Status::invalid_argument(e.to_string())
    }
}

fn invalid(msg: impl Into<String>) -> SpecError {
    SpecError::Invalid(msg.into())
}

/// Longest service name: one DNS label.
pub const MAX_NAME_LEN: usize = 63;

/// Constraint keys without a free-form suffix.
pub const CONSTRAINT_KEYS: [&str; 5] = [
    "node.id",
    "node.hostname",
    "node.role",
    "node.platform.os",
    "node.platform.arch",
];
/// Constraint key prefixes followed by a label name.
pub const CONSTRAINT_LABEL_PREFIXES: [&str; 2] = ["node.labels.", "engine.labels."];

/// Docker's name for a service mode, as `service ls` and its `mode=` filter
/// use it.
#[must_use]
pub fn mode_name(spec: &pb::ServiceSpec) -> &'static str {
    match spec.mode {
        None | Some(Mode::Replicated(_)) => "replicated",
        Some(Mode::Global(_)) => "global",
        Some(Mode::ReplicatedJob(_)) => "replicated-job",
        Some(Mode::GlobalJob(_)) => "global-job",
    }
}

#[must_use]
pub fn is_job(spec: &pb::ServiceSpec) -> bool {
    matches!(spec.mode, Some(Mode::ReplicatedJob(_) | Mode::GlobalJob(_)))
}

/// Fills what docker's daemon fills when a client leaves it out: replicated
/// mode with one replica, the update and rollback configs (not for jobs,
/// which are never rolled out), the restart policy, the stop grace period
/// and the endpoint spec (VIP). Within a given update config, an unset
/// delay or monitor gets the default too.
pub fn fill_defaults(spec: &mut pb::ServiceSpec) {
    if spec.mode.is_none() {
        spec.mode = Some(Mode::Replicated(pb::ReplicatedService { replicas: 1 }));
    }
    let job = is_job(spec);
    if !job {
        for cfg in [&mut spec.update, &mut spec.rollback] {
            let cfg = cfg.get_or_insert_with(defaults::update_config);
            let d = defaults::update_config();
            if cfg.delay.is_none() {
                cfg.delay = d.delay;
            }
            if cfg.monitor.is_none() {
                cfg.monitor = d.monitor;
            }
        }
    }
    let task = spec.task.get_or_insert_with(Default::default);
    let restart = task
        .restart
        .get_or_insert_with(|| defaults::restart_policy(job));
    if restart.delay.is_none() {
        restart.delay = defaults::restart_policy(job).delay;
    }
    let container = task.container.get_or_insert_with(Default::default);
    if container.stop_grace_period.is_none() {
        container.stop_grace_period = Some(defaults::stop_grace_period());
    }
    task.resources
        .get_or_insert_with(|| pb::ResourceRequirements {
            limits: Some(pb::Limits::default()),
            reservations: Some(pb::Resources::default()),
        });
    task.placement.get_or_insert_with(Default::default);
    spec.endpoint.get_or_insert_with(Default::default);
}

/// Every check that needs nothing but the spec. Run it after
/// [`fill_defaults`].
pub fn validate_spec(spec: &pb::ServiceSpec) -> Result<(), SpecError> {
    let annotations = spec.annotations.clone().unwrap_or_default();
    validate_name(&annotations.name)?;
    validate_labels("service label", annotations.labels.keys())?;
    validate_mode(spec)?;
    let task = spec
        .task
        .as_ref()
        .ok_or_else(|| invalid("it has no task template"))?;
    validate_task(task, spec)?;
    if let Some(u) = &spec.update {
        validate_update_config("update", u)?;
    }
    if let Some(r) = &spec.rollback {
        validate_update_config("rollback", r)?;
    }
    if let Some(e) = &spec.endpoint {
        validate_endpoint(e)?;
    }
    Ok(())
}

/// A DNS label, as swarmkit requires: letters and digits, with `-` or `_`
/// only between them, at most 63 characters.
pub fn validate_name(name: &str) -> Result<(), SpecError> {
    if name.is_empty() {
        return Err(invalid(
            "the service has no name; give it one with --name (it must be unique in the swarm)",
        ));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(invalid(format!(
            "service name {name:?} is longer than {MAX_NAME_LEN} characters"
        )));
    }
    let bytes = name.as_bytes();
    let alnum = |b: &u8| b.is_ascii_alphanumeric();
    let ok = bytes.first().is_some_and(alnum)
        && bytes.last().is_some_and(alnum)
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_');
    if !ok {
        return Err(invalid(format!(
            "service name {name:?} is not valid as a DNS name component: use letters, digits, '-' and '_', starting and ending with a letter or digit"
        )));
    }
    Ok(())
}

fn validate_labels<'a>(
    what: &str,
    keys: impl Iterator<Item = &'a String>,
) -> Result<(), SpecError> {
    for k in keys {
        if k.trim().is_empty() {
            return Err(invalid(format!("a {what} has an empty key")));
        }
    }
    Ok(())
}

fn validate_mode(spec: &pb::ServiceSpec) -> Result<(), SpecError> {
    let max_replicas = spec
        .task
        .as_ref()
        .and_then(|t| t.placement.as_ref())
        .map_or(0, |p| p.max_replicas);
    match &spec.mode {
        None => Err(invalid("it has no mode")),
        Some(Mode::Global(_) | Mode::GlobalJob(_)) if max_replicas > 0 => Err(invalid(
            "replicas-max-per-node can only be used with replicated or replicated-job mode",
        )),
        Some(Mode::ReplicatedJob(j)) if j.max_concurrent > j.total_completions => {
            Err(invalid(format!(
                "max-concurrent ({}) is larger than the number of completions asked for (--replicas {})",
                j.max_concurrent, j.total_completions
            )))
        }
        Some(_) => Ok(()),
    }
}

fn validate_task(task: &pb::TaskSpec, spec: &pb::ServiceSpec) -> Result<(), SpecError> {
    let c = task
        .container
        .as_ref()
        .ok_or_else(|| invalid("it has no container spec"))?;
    validate_image(&c.image)?;
    validate_labels("container label", c.labels.keys())?;
    for e in &c.env {
        let key = e.split_once('=').map_or(e.as_str(), |(k, _)| k);
        if key.trim().is_empty() {
            return Err(invalid(format!(
                "invalid environment variable {e:?}: the name is empty"
            )));
        }
    }
    validate_duration("stop grace period", c.stop_grace_period.as_ref())?;
    if !c.stop_signal.is_empty() {
        validate_signal(&c.stop_signal)?;
    }
    if let Some(h) = &c.healthcheck {
        validate_health(h)?;
    }
    validate_mounts(&c.mounts)?;
    for cap in c.capability_add.iter().chain(&c.capability_drop) {
        validate_capability(cap)?;
    }
    for k in c.sysctls.keys() {
        if k.trim().is_empty() || k.contains(char::is_whitespace) {
            return Err(invalid(format!("invalid sysctl name {k:?}")));
        }
    }
    let mut seen = HashSet::new();
    for u in &c.ulimits {
        if u.name.is_empty() {
            return Err(invalid("a ulimit has no name"));
        }
        if u.soft < 0 || u.hard < 0 {
            return Err(invalid(format!("ulimit {} is negative", u.name)));
        }
        if u.soft > u.hard {
            return Err(invalid(format!(
                "ulimit {}: the soft limit ({}) must be less than or equal to the hard limit ({})",
                u.name, u.soft, u.hard
            )));
        }
        if !seen.insert(u.name.as_str()) {
            return Err(invalid(format!("ulimit {} is given twice", u.name)));
        }
    }
    if let Some(r) = &task.resources {
        validate_resources(r)?;
    }
    if let Some(r) = &task.restart {
        validate_restart(r, is_job(spec))?;
    }
    if let Some(p) = &task.placement {
        for c in &p.constraints {
            validate_constraint(c)
                .map_err(|why| invalid(format!("invalid constraint {c:?}: {why}")))?;
        }
        for pref in &p.preferences {
            let Some(pb::placement_preference::Preference::Spread(s)) = &pref.preference else {
                return Err(invalid(
                    "a placement preference has no strategy: use spread=<descriptor>",
                ));
            };
            validate_constraint_key(&s.spread_descriptor).map_err(|why| {
                invalid(format!(
                    "invalid placement preference spread={}: {why}",
                    s.spread_descriptor
                ))
            })?;
        }
    }
    let mut nets = HashSet::new();
    for n in &task.networks {
        if n.target.is_empty() {
            return Err(invalid("a network attachment names no network"));
        }
        if !nets.insert(n.target.as_str()) {
            return Err(invalid(format!(
                "network {} is attached more than once",
                n.target
            )));
        }
    }
    Ok(())
}

/// A docker image reference: `[registry[:port]/]path[:tag][@digest]`, with
/// a lower-case path.
pub fn validate_image(image: &str) -> Result<(), SpecError> {
    let bad = |why: &str| {
        invalid(format!(
            "invalid image reference {image:?}: {why}; use a name like nginx, nginx:1.25 or registry:5000/team/app@sha256:<digest>"
        ))
    };
    if image.is_empty() {
        return Err(invalid(
            "the service has no image: give one (e.g. `service create nginx`)",
        ));
    }
    if image.contains(char::is_whitespace) {
        return Err(bad("it contains whitespace"));
    }
    let (rest, digest) = match image.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (image, None),
    };
    if let Some(d) = digest {
        let (algo, hex) = d
            .split_once(':')
            .ok_or_else(|| bad("the digest is not algorithm:hex"))?;
        let algo_ok = !algo.is_empty()
            && algo
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+._-".contains(c));
        if !algo_ok || hex.len() < 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(bad("the digest is not algorithm:hex"));
        }
    }
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(tag) = tag {
        let ok = tag.len() <= 128
            && tag
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
            && tag
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        if !ok {
            return Err(bad("the tag is not valid"));
        }
    }
    let mut parts: Vec<&str> = name.split('/').collect();
    if parts.len() > 1 {
        let first = parts[0];
        if first.contains('.') || first.contains(':') || first == "localhost" {
            let host_ok = first
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c));
            if !host_ok {
                return Err(bad("the registry host is not valid"));
            }
            parts.remove(0);
        }
    }
    for p in parts {
        if p.is_empty() {
            return Err(bad("it has an empty path component"));
        }
        if p.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(bad("repository names must be lowercase"));
        }
        let chars_ok = p
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c));
        let ends_ok = p.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && p.chars().last().is_some_and(|c| c.is_ascii_alphanumeric());
        if !chars_ok || !ends_ok {
            return Err(bad(
                "path components hold lower-case letters, digits and separators (. _ -) between them",
            ));
        }
    }
    Ok(())
}

fn validate_duration(what: &str, d: Option<&prost_types::Duration>) -> Result<(), SpecError> {
    if let Some(d) = d
        && (d.seconds < 0 || d.nanos < 0)
    {
        return Err(invalid(format!(
            "the {what} is negative; durations must be 0 or more"
        )));
    }
    Ok(())
}

fn nanos(d: Option<&prost_types::Duration>) -> i128 {
    d.map_or(0, |d| {
        i128::from(d.seconds) * 1_000_000_000 + i128::from(d.nanos)
    })
}

fn validate_signal(s: &str) -> Result<(), SpecError> {
    let bad = || {
        invalid(format!(
            "invalid stop signal {s:?}: use a signal name (SIGTERM, TERM, SIGRTMIN+3) or number (1-64)"
        ))
    };
    if let Ok(n) = s.parse::<u32>() {
        return if (1..=64).contains(&n) {
            Ok(())
        } else {
            Err(bad())
        };
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper.clone()
    } else {
        format!("SIG{upper}")
    };
    if let Some(off) = name
        .strip_prefix("SIGRTMIN")
        .or_else(|| name.strip_prefix("SIGRTMAX"))
    {
        let ok = off.is_empty()
            || off
                .strip_prefix('+')
                .or_else(|| off.strip_prefix('-'))
                .and_then(|n| n.parse::<u8>().ok())
                .is_some_and(|n| n <= 30);
        return if ok { Ok(()) } else { Err(bad()) };
    }
    name.parse::<nix::sys::signal::Signal>()
        .map(|_| ())
        .map_err(|_| bad())
}

fn validate_health(h: &pb::HealthConfig) -> Result<(), SpecError> {
    if let Some(first) = h.test.first() {
        match first.as_str() {
            "NONE" if h.test.len() == 1 => {}
            "NONE" => return Err(invalid("a NONE healthcheck takes no command")),
            "CMD" | "CMD-SHELL" if h.test.len() > 1 => {}
            other => {
                return Err(invalid(format!(
                    "invalid healthcheck test {other:?}: use [\"CMD\", ...], [\"CMD-SHELL\", \"...\"] or [\"NONE\"]"
                )));
            }
        }
    }
    for (what, d) in [
        ("interval", h.interval.as_ref()),
        ("timeout", h.timeout.as_ref()),
        ("start period", h.start_period.as_ref()),
    ] {
        let n = nanos(d);
        if n < 0 {
            return Err(invalid(format!("the healthcheck {what} is negative")));
        }
        if n != 0 && n < 1_000_000 {
            return Err(invalid(format!(
                "the healthcheck {what} cannot be less than 1ms"
            )));
        }
    }
    if h.retries < 0 {
        return Err(invalid("the healthcheck retries cannot be negative"));
    }
    Ok(())
}

fn validate_mounts(mounts: &[pb::Mount]) -> Result<(), SpecError> {
    let mut targets = HashSet::new();
    for m in mounts {
        if !m.target.starts_with('/') {
            return Err(invalid(format!(
                "invalid mount target {:?}: it must be an absolute path",
                m.target
            )));
        }
        if !targets.insert(m.target.trim_end_matches('/')) {
            return Err(invalid(format!("duplicate mount point {}", m.target)));
        }
        match pb::MountType::try_from(m.r#type) {
            Ok(pb::MountType::Bind) => {
                if m.source.is_empty() {
                    return Err(invalid(format!(
                        "bind mount {}: a source path is required",
                        m.target
                    )));
                }
                if !m.source.starts_with('/') {
                    return Err(invalid(format!(
                        "bind mount {}: the source {:?} must be an absolute path",
                        m.target, m.source
                    )));
                }
            }
            Ok(pb::MountType::Volume) => {
                if m.source.contains('/') {
                    return Err(invalid(format!(
                        "volume mount {}: the source {:?} must be a volume name (use type=bind for a host path)",
                        m.target, m.source
                    )));
                }
            }
            Ok(pb::MountType::Tmpfs) => {
                if !m.source.is_empty() {
                    return Err(invalid(format!(
                        "tmpfs mount {}: a tmpfs takes no source",
                        m.target
                    )));
                }
                if m.tmpfs_size_bytes < 0 {
                    return Err(invalid(format!(
                        "tmpfs mount {}: the size is negative",
                        m.target
                    )));
                }
            }
            Err(_) => {
                return Err(invalid(format!(
                    "mount {}: unknown type {}; use bind, volume or tmpfs",
                    m.target, m.r#type
                )));
            }
        }
    }
    Ok(())
}

fn validate_capability(cap: &str) -> Result<(), SpecError> {
    let body = cap.strip_prefix("CAP_").unwrap_or(cap);
    let ok = cap == "ALL"
        || (cap.starts_with("CAP_")
            && !body.is_empty()
            && body
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'));
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "invalid capability {cap:?}: use a name like CAP_NET_ADMIN, or ALL"
        )))
    }
}

/// Smallest CPU and memory amounts swarmkit accepts.
const MIN_NANO_CPUS: i64 = 1_000_000;
const MIN_MEMORY_BYTES: i64 = 4 * 1024 * 1024;

fn validate_resources(r: &pb::ResourceRequirements) -> Result<(), SpecError> {
    let check = |what: &str, cpus: i64, mem: i64| {
        if cpus < 0 || mem < 0 {
            return Err(invalid(format!("the {what} are negative")));
        }
        if cpus != 0 && cpus < MIN_NANO_CPUS {
            return Err(invalid(format!(
                "invalid {what} CPU value {}: it must be at least 0.001",
                format_cpus(cpus)
            )));
        }
        if mem != 0 && mem < MIN_MEMORY_BYTES {
            return Err(invalid(format!(
                "invalid {what} memory value {mem} bytes: it must be at least 4MiB"
            )));
        }
        Ok(())
    };
    let limits = r.limits.unwrap_or_default();
    let res = r.reservations.unwrap_or_default();
    check("limit", limits.nano_cpus, limits.memory_bytes)?;
    check("reservation", res.nano_cpus, res.memory_bytes)?;
    if limits.pids < 0 {
        return Err(invalid("the pids limit is negative"));
    }
    if limits.memory_bytes != 0 && res.memory_bytes > limits.memory_bytes {
        return Err(invalid(
            "the memory reservation is larger than the memory limit",
        ));
    }
    if limits.nano_cpus != 0 && res.nano_cpus > limits.nano_cpus {
        return Err(invalid("the CPU reservation is larger than the CPU limit"));
    }
    Ok(())
}

fn format_cpus(n: i64) -> String {
    #[allow(clippy::cast_precision_loss)] // for a message
    let v = n as f64 / 1e9;
    format!("{v}")
}

fn validate_restart(r: &pb::RestartPolicy, job: bool) -> Result<(), SpecError> {
    let cond = pb::RestartCondition::try_from(r.condition).map_err(|_| {
        invalid(format!(
            "unknown restart condition {}; use none, on-failure or any",
            r.condition
        ))
    })?;
    if job && cond == pb::RestartCondition::Any {
        return Err(invalid(
            "restart condition any is not allowed for jobs (they would never complete): use on-failure or none",
        ));
    }
    validate_duration("restart delay", r.delay.as_ref())?;
    validate_duration("restart window", r.window.as_ref())?;
    Ok(())
}

fn validate_update_config(which: &str, u: &pb::UpdateConfig) -> Result<(), SpecError> {
    pb::UpdateFailureAction::try_from(u.failure_action).map_err(|_| {
        invalid(format!(
            "unknown {which} failure action {}; use pause, continue or rollback",
            u.failure_action
        ))
    })?;
    if which == "rollback" && u.failure_action == pb::UpdateFailureAction::Rollback as i32 {
        return Err(invalid(
            "the rollback failure action cannot be rollback: use pause or continue",
        ));
    }
    pb::UpdateOrder::try_from(u.order).map_err(|_| {
        invalid(format!(
            "unknown {which} order {}; use stop-first or start-first",
            u.order
        ))
    })?;
    validate_duration(&format!("{which} delay"), u.delay.as_ref())?;
    validate_duration(&format!("{which} monitor period"), u.monitor.as_ref())?;
    if !(0.0..=1.0).contains(&u.max_failure_ratio) {
        return Err(invalid(format!(
            "the {which} max failure ratio {} is out of range: use a number from 0 to 1",
            u.max_failure_ratio
        )));
    }
    Ok(())
}

fn validate_endpoint(e: &pb::EndpointSpec) -> Result<(), SpecError> {
    let mode = pb::EndpointMode::try_from(e.mode).map_err(|_| {
        invalid(format!(
            "unknown endpoint mode {}; use vip or dnsrr",
            e.mode
        ))
    })?;
    let mut published = HashSet::new();
    for p in &e.ports {
        let proto = pb::PortProtocol::try_from(p.protocol).map_err(|_| {
            invalid(format!(
                "port {}: unknown protocol {}; use tcp, udp or sctp",
                p.target_port, p.protocol
            ))
        })?;
        let publish_mode = pb::PublishMode::try_from(p.publish_mode).map_err(|_| {
            invalid(format!(
                "port {}: unknown publish mode {}; use ingress or host",
                p.target_port, p.publish_mode
            ))
        })?;
        if !(1..=65535).contains(&p.target_port) {
            return Err(invalid(format!(
                "target port {} is out of range: use 1-65535",
                p.target_port
            )));
        }
        if p.published_port > 65535 {
            return Err(invalid(format!(
                "published port {} is out of range: use 1-65535, or leave it out to have one chosen",
                p.published_port
            )));
        }
        if mode == pb::EndpointMode::Dnsrr && publish_mode == pb::PublishMode::Ingress {
            return Err(invalid(
                "a port published in ingress mode can't be used with endpoint mode dnsrr: publish it with mode=host or use --endpoint-mode vip",
            ));
        }
        if p.published_port != 0 && !published.insert((p.published_port, proto)) {
            return Err(invalid(format!(
                "published port {}/{} is given twice",
                p.published_port,
                protocol_name(proto)
            )));
        }
    }
    Ok(())
}

#[must_use]
pub fn protocol_name(p: pb::PortProtocol) -> &'static str {
    match p {
        pb::PortProtocol::Tcp => "tcp",
        pb::PortProtocol::Udp => "udp",
        pb::PortProtocol::Sctp => "sctp",
    }
}

/// `key op value` with `==` or `!=`, as docker parses it: the first `==`
/// (else the first `!=`) splits, both sides are trimmed; the key must be
/// one docker knows and the value plain text.
pub fn validate_constraint(expr: &str) -> Result<(), String> {
    let (key, value) = match expr.split_once("==") {
        Some(kv) => kv,
        None => expr
            .split_once("!=")
            .ok_or_else(|| "it has no operator: use key==value or key!=value".to_string())?,
    };
    let (key, value) = (key.trim(), value.trim());
    validate_constraint_key(key)?;
    if value.is_empty() {
        return Err("the value is empty".into());
    }
    let value_ok = value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c.is_whitespace() || "-_.*()?+[]\\^$|/:".contains(c));
    if !value_ok {
        return Err(format!(
            "value {value:?} holds characters a constraint value can't (only letters, digits, whitespace and -_.*()?+[]\\^$|/:)"
        ));
    }
    if key.eq_ignore_ascii_case("node.role")
        && !["manager", "worker"]
            .iter()
            .any(|r| r.eq_ignore_ascii_case(value))
    {
        return Err(format!("node.role is manager or worker, not {value:?}"));
    }
    Ok(())
}

fn validate_constraint_key(key: &str) -> Result<(), String> {
    let lower = key.to_ascii_lowercase();
    if CONSTRAINT_KEYS.contains(&lower.as_str()) {
        return Ok(());
    }
    for prefix in CONSTRAINT_LABEL_PREFIXES {
        if let Some(label) = lower.strip_prefix(prefix) {
            if label.is_empty() {
                return Err(format!("key {key:?} names no label: use {prefix}<label>"));
            }
            return Ok(());
        }
    }
    Err(format!(
        "unknown key {key:?}: use one of {}, node.labels.<label> or engine.labels.<label>",
        CONSTRAINT_KEYS.join(", ")
    ))
}

/// What an update may not change: the name and the mode.
pub fn check_update(old: &pb::ServiceSpec, new: &pb::ServiceSpec) -> Result<(), SpecError> {
    let name = |s: &pb::ServiceSpec| s.annotations.as_ref().map(|a| a.name.clone());
    if name(old) != name(new) {
        return Err(SpecError::Forbidden(
            "renaming services is not supported: create a new service and remove this one".into(),
        ));
    }
    if mode_name(old) != mode_name(new) {
        return Err(SpecError::Forbidden(format!(
            "service mode change is not allowed ({} to {}): create a new service instead",
            mode_name(old),
            mode_name(new)
        )));
    }
    Ok(())
}

/// Docker's rule for published ports: an ingress port is taken by any other
/// service publishing it (ingress or host mode); a host-mode port only
/// conflicts with another service's ingress port (several services may
/// publish one host-mode port: the scheduler places them apart).
pub fn check_port_conflicts<'a>(
    spec: &pb::ServiceSpec,
    service_id: &str,
    others: impl IntoIterator<Item = &'a pb::Service>,
) -> Result<(), SpecError> {
    let Some(endpoint) = &spec.endpoint else {
        return Ok(());
    };
    let key = |p: &pb::PortConfig| (p.published_port, p.protocol);
    let mut ingress = HashSet::new();
    let mut host = HashSet::new();
    for p in endpoint.ports.iter().filter(|p| p.published_port != 0) {
        if p.publish_mode == pb::PublishMode::Host as i32 {
            host.insert(key(p));
        } else {
            ingress.insert(key(p));
        }
    }
    if ingress.is_empty() && host.is_empty() {
        return Ok(());
    }
    for other in others {
        let other_id = other.meta.as_ref().map_or("", |m| m.id.as_str());
        if other_id == service_id {
            continue;
        }
        let name = other
            .spec
            .as_ref()
            .and_then(|s| s.annotations.as_ref())
            .map_or("", |a| a.name.as_str());
        let spec_ports = other
            .spec
            .as_ref()
            .and_then(|s| s.endpoint.as_ref())
            .map(|e| e.ports.as_slice())
            .unwrap_or_default();
        let allocated = other
            .endpoint
            .as_ref()
            .map(|e| e.ports.as_slice())
            .unwrap_or_default();
        for p in spec_ports
            .iter()
            .chain(allocated)
            .filter(|p| p.published_port != 0)
        {
            let proto = protocol_name(pb::PortProtocol::try_from(p.protocol).unwrap_or_default());
            let theirs_host = p.publish_mode == pb::PublishMode::Host as i32;
            let conflict = if theirs_host {
                ingress.contains(&key(p))
            } else {
                ingress.contains(&key(p)) || host.contains(&key(p))
            };
            if conflict {
                let how = if theirs_host {
                    "a host-published port"
                } else {
                    "an ingress port"
                };
                return Err(SpecError::PortInUse(format!(
                    "port {}/{proto} is already in use by service {name} ({other_id}) as {how}: publish another port, or remove or update that service first",
                    p.published_port
                )));
            }
        }
    }
    Ok(())
}

/// Whether a service passes `service ls` filters.
#[must_use]
pub fn matches_filters(s: &pb::Service, f: &pb::ListServicesRequest) -> bool {
    let id = s.meta.as_ref().map_or("", |m| m.id.as_str());
    let spec = s.spec.clone().unwrap_or_default();
    let annotations = spec.annotations.clone().unwrap_or_default();
    let name_ok = f.name_prefixes.is_empty()
        || f.name_prefixes
            .iter()
            .any(|p| annotations.name.starts_with(p.as_str()));
    let id_ok =
        f.id_prefixes.is_empty() || f.id_prefixes.iter().any(|p| id.starts_with(p.as_str()));
    let labels_ok = f.labels.iter().all(|l| match l.split_once('=') {
        Some((k, v)) => annotations.labels.get(k).is_some_and(|have| have == v),
        None => annotations.labels.contains_key(l),
    });
    let mode_ok = f.modes.is_empty() || f.modes.iter().any(|m| m == mode_name(&spec));
    name_ok && id_ok && labels_ok && mode_ok
}

/// Checks `service ls` filter values so a typo is an error, not an empty
/// list.
pub fn validate_filters(f: &pb::ListServicesRequest) -> Result<(), SpecError> {
    const MODES: [&str; 4] = ["replicated", "global", "replicated-job", "global-job"];
    for m in &f.modes {
        if !MODES.contains(&m.as_str()) {
            return Err(invalid(format!(
                "invalid filter mode={m}: use one of {}",
                MODES.join(", ")
            )));
        }
    }
    Ok(())
}

/// Names of the networks a spec attaches to, for resolving them.
#[must_use]
pub fn network_targets(spec: &pb::ServiceSpec) -> BTreeSet<String> {
    spec.task
        .as_ref()
        .map(|t| t.networks.iter().map(|n| n.target.clone()).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn spec(name: &str, image: &str) -> pb::ServiceSpec {
        let mut s = pb::ServiceSpec {
            annotations: Some(pb::Annotations {
                name: name.into(),
                ..Default::default()
            }),
            task: Some(pb::TaskSpec {
                container: Some(pb::ContainerSpec {
                    image: image.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        fill_defaults(&mut s);
        s
    }

    fn err(s: &pb::ServiceSpec) -> String {
        validate_spec(s).expect_err("should be refused").to_string()
    }

    fn container(s: &mut pb::ServiceSpec) -> &mut pb::ContainerSpec {
        s.task.as_mut().unwrap().container.as_mut().unwrap()
    }

    fn task(s: &mut pb::ServiceSpec) -> &mut pb::TaskSpec {
        s.task.as_mut().unwrap()
    }

    fn port(published: u32, target: u32, mode: pb::PublishMode) -> pb::PortConfig {
        pb::PortConfig {
            published_port: published,
            target_port: target,
            publish_mode: mode as i32,
            ..Default::default()
        }
    }

    #[test]
    fn defaults_are_dockers() {
        let s = spec("web", "nginx");
        assert_eq!(
            s.mode,
            Some(Mode::Replicated(pb::ReplicatedService { replicas: 1 }))
        );
        for u in [s.update.unwrap(), s.rollback.unwrap()] {
            assert_eq!(u.parallelism, 1);
            assert_eq!(u.delay.unwrap().seconds, 0);
            assert_eq!(u.failure_action(), pb::UpdateFailureAction::Pause);
            assert_eq!(u.monitor.unwrap().seconds, 5);
            assert_eq!(u.max_failure_ratio, 0.0);
            assert_eq!(u.order(), pb::UpdateOrder::StopFirst);
        }
        let t = s.task.unwrap();
        let r = t.restart.unwrap();
        assert_eq!(r.condition(), pb::RestartCondition::Any);
        assert_eq!(r.delay.unwrap().seconds, 5);
        assert_eq!(r.max_attempts, 0);
        assert_eq!(t.container.unwrap().stop_grace_period.unwrap().seconds, 10);
        assert_eq!(s.endpoint.unwrap().mode(), pb::EndpointMode::Vip);
    }

    #[test]
    fn defaults_keep_what_was_given_and_differ_for_jobs() {
        let mut s = spec("job", "busybox");
        s.mode = Some(Mode::ReplicatedJob(pb::ReplicatedJob {
            max_concurrent: 1,
            total_completions: 1,
        }));
        s.update = None;
        s.rollback = None;
        task(&mut s).restart = None;
        fill_defaults(&mut s);
        assert!(s.update.is_none() && s.rollback.is_none());
        assert_eq!(
            s.task.as_ref().unwrap().restart.unwrap().condition(),
            pb::RestartCondition::OnFailure
        );
        validate_spec(&s).unwrap();

        let mut s = spec("web", "nginx");
        s.update = Some(pb::UpdateConfig {
            parallelism: 3,
            ..Default::default()
        });
        fill_defaults(&mut s);
        let u = s.update.unwrap();
        assert_eq!(u.parallelism, 3);
        assert_eq!(u.monitor.unwrap().seconds, 5);
    }

    #[test]
    fn a_default_spec_is_valid() {
        validate_spec(&spec("web", "nginx")).unwrap();
        validate_spec(&spec(
            "a_b-c9",
            "registry.local:5000/team/app:1.2@sha256:0123456789abcdef0123456789abcdef",
        ))
        .unwrap();
        validate_spec(&spec("x", "localhost/app")).unwrap();
    }

    #[test]
    fn names_must_be_dns_labels() {
        assert!(err(&spec("", "nginx")).contains("--name"));
        for bad in ["-web", "web-", "we b", "web.1", "wéb", &"a".repeat(64)] {
            assert!(validate_spec(&spec(bad, "nginx")).is_err(), "{bad:?}");
        }
        validate_spec(&spec(&"a".repeat(63), "nginx")).unwrap();
    }

    #[test]
    fn images_are_checked() {
        assert!(err(&spec("web", "")).contains("no image"));
        for bad in [
            "Nginx",
            "nginx:",
            "nginx:-x",
            "a//b",
            "nginx@sha256:zz",
            "ng inx",
            "-a/b",
        ] {
            assert!(
                err(&spec("web", bad)).contains("invalid image reference"),
                "{bad}"
            );
        }
        for good in [
            "nginx:1.25-alpine",
            "Registry.Example.com/a/b",
            "a/b/c:latest",
            "my_app",
        ] {
            validate_image(good).unwrap();
        }
    }

    #[test]
    fn constraints_use_known_keys_and_operators() {
        for good in [
            "node.role==manager",
            "node.role != Worker",
            "node.labels.zone == eu-1",
            "engine.labels.gpu==true",
            "node.hostname!=node-1",
            "node.id==abc",
            "node.platform.os==linux",
            "node.platform.arch==x86_64",
        ] {
            validate_constraint(good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        assert!(
            validate_constraint("node.role=manager")
                .unwrap_err()
                .contains("no operator")
        );
        assert!(
            validate_constraint("node.foo==a")
                .unwrap_err()
                .contains("unknown key")
        );
        assert!(
            validate_constraint("node.labels.==a")
                .unwrap_err()
                .contains("names no label")
        );
        assert!(
            validate_constraint("node.role==boss")
                .unwrap_err()
                .contains("manager or worker")
        );
        assert!(
            validate_constraint("node.hostname==")
                .unwrap_err()
                .contains("empty")
        );
        assert!(
            validate_constraint("node.hostname==a==b")
                .unwrap_err()
                .contains("characters")
        );
        let mut s = spec("web", "nginx");
        task(&mut s).placement.as_mut().unwrap().constraints = vec!["zone=a".into()];
        let e = err(&s);
        assert!(e.contains("invalid constraint \"zone=a\""), "{e}");
    }

    #[test]
    fn placement_preferences_name_a_node_attribute() {
        let mut s = spec("web", "nginx");
        task(&mut s).placement.as_mut().unwrap().preferences = vec![pb::PlacementPreference {
            preference: Some(pb::placement_preference::Preference::Spread(
                pb::SpreadOver {
                    spread_descriptor: "node.labels.zone".into(),
                },
            )),
        }];
        validate_spec(&s).unwrap();
        task(&mut s).placement.as_mut().unwrap().preferences[0] = pb::PlacementPreference {
            preference: Some(pb::placement_preference::Preference::Spread(
                pb::SpreadOver {
                    spread_descriptor: "zone".into(),
                },
            )),
        };
        assert!(err(&s).contains("placement preference"));
    }

    #[test]
    fn mode_specific_settings_are_checked() {
        let mut s = spec("web", "nginx");
        s.mode = Some(Mode::Global(pb::GlobalService {}));
        task(&mut s).placement.as_mut().unwrap().max_replicas = 2;
        assert!(err(&s).contains("replicas-max-per-node"));
        let mut s = spec("job", "busybox");
        s.mode = Some(Mode::ReplicatedJob(pb::ReplicatedJob {
            max_concurrent: 5,
            total_completions: 2,
        }));
        task(&mut s).restart.as_mut().unwrap().condition = pb::RestartCondition::OnFailure as i32;
        assert!(err(&s).contains("max-concurrent"));
        let mut s = spec("job", "busybox");
        s.mode = Some(Mode::GlobalJob(pb::GlobalJob {}));
        assert!(err(&s).contains("restart condition any is not allowed for jobs"));
    }

    #[test]
    fn durations_must_not_be_negative() {
        let neg = Some(prost_types::Duration {
            seconds: -1,
            nanos: 0,
        });
        let mut s = spec("web", "nginx");
        s.update.as_mut().unwrap().delay = neg;
        assert!(err(&s).contains("update delay is negative"));
        let mut s = spec("web", "nginx");
        s.rollback.as_mut().unwrap().monitor = neg;
        assert!(err(&s).contains("rollback monitor period is negative"));
        let mut s = spec("web", "nginx");
        task(&mut s).restart.as_mut().unwrap().window = neg;
        assert!(err(&s).contains("restart window"));
        let mut s = spec("web", "nginx");
        container(&mut s).stop_grace_period = neg;
        assert!(err(&s).contains("stop grace period"));
        let mut s = spec("web", "nginx");
        container(&mut s).healthcheck = Some(pb::HealthConfig {
            interval: Some(prost_types::Duration {
                seconds: 0,
                nanos: 10,
            }),
            ..Default::default()
        });
        assert!(err(&s).contains("less than 1ms"));
    }

    #[test]
    fn update_configs_are_checked() {
        let mut s = spec("web", "nginx");
        s.update.as_mut().unwrap().max_failure_ratio = 1.5;
        assert!(err(&s).contains("max failure ratio"));
        let mut s = spec("web", "nginx");
        s.update.as_mut().unwrap().max_failure_ratio = f32::NAN;
        assert!(err(&s).contains("max failure ratio"));
        let mut s = spec("web", "nginx");
        s.update.as_mut().unwrap().failure_action = 7;
        assert!(err(&s).contains("failure action"));
        let mut s = spec("web", "nginx");
        s.rollback.as_mut().unwrap().failure_action = pb::UpdateFailureAction::Rollback as i32;
        assert!(err(&s).contains("rollback failure action"));
        let mut s = spec("web", "nginx");
        s.update.as_mut().unwrap().order = 9;
        assert!(err(&s).contains("order"));
        let mut s = spec("web", "nginx");
        task(&mut s).restart.as_mut().unwrap().condition = 9;
        assert!(err(&s).contains("restart condition"));
    }

    #[test]
    fn ports_are_checked() {
        let mut s = spec("web", "nginx");
        s.endpoint.as_mut().unwrap().ports = vec![port(8080, 0, pb::PublishMode::Ingress)];
        assert!(err(&s).contains("target port 0"));
        s.endpoint.as_mut().unwrap().ports = vec![port(70000, 80, pb::PublishMode::Ingress)];
        assert!(err(&s).contains("published port 70000"));
        s.endpoint.as_mut().unwrap().ports = vec![
            port(8080, 80, pb::PublishMode::Ingress),
            port(8080, 81, pb::PublishMode::Ingress),
        ];
        assert!(err(&s).contains("given twice"));
        let mut udp = port(8080, 81, pb::PublishMode::Ingress);
        udp.protocol = pb::PortProtocol::Udp as i32;
        s.endpoint.as_mut().unwrap().ports = vec![port(8080, 80, pb::PublishMode::Ingress), udp];
        validate_spec(&s).unwrap();
        s.endpoint.as_mut().unwrap().mode = pb::EndpointMode::Dnsrr as i32;
        assert!(err(&s).contains("dnsrr"));
        s.endpoint.as_mut().unwrap().ports = vec![port(8080, 80, pb::PublishMode::Host)];
        validate_spec(&s).unwrap();
        s.endpoint.as_mut().unwrap().ports[0].protocol = 5;
        assert!(err(&s).contains("protocol"));
    }

    type Change = Box<dyn Fn(&mut pb::ContainerSpec)>;

    #[test]
    fn container_settings_are_checked() {
        let cases: Vec<(Change, &str)> = vec![
            (
                Box::new(|c| c.env = vec!["=x".into()]),
                "environment variable",
            ),
            (Box::new(|c| c.stop_signal = "SIGFOO".into()), "stop signal"),
            (Box::new(|c| c.stop_signal = "99".into()), "stop signal"),
            (
                Box::new(|c| c.capability_add = vec!["net_admin".into()]),
                "capability",
            ),
            (
                Box::new(|c| {
                    c.ulimits = vec![pb::Ulimit {
                        name: "nofile".into(),
                        soft: 10,
                        hard: 5,
                    }]
                }),
                "soft limit",
            ),
            (
                Box::new(|c| {
                    c.mounts = vec![pb::Mount {
                        r#type: pb::MountType::Bind as i32,
                        source: "rel".into(),
                        target: "/x".into(),
                        ..Default::default()
                    }]
                }),
                "absolute path",
            ),
            (
                Box::new(|c| {
                    c.mounts = vec![pb::Mount {
                        r#type: pb::MountType::Volume as i32,
                        target: "x".into(),
                        ..Default::default()
                    }]
                }),
                "mount target",
            ),
            (
                Box::new(|c| {
                    c.mounts = vec![pb::Mount {
                        r#type: pb::MountType::Tmpfs as i32,
                        source: "a".into(),
                        target: "/t".into(),
                        ..Default::default()
                    }]
                }),
                "takes no source",
            ),
            (
                Box::new(|c| {
                    let m = pb::Mount {
                        r#type: pb::MountType::Tmpfs as i32,
                        target: "/t".into(),
                        ..Default::default()
                    };
                    c.mounts = vec![m.clone(), m];
                }),
                "duplicate mount point",
            ),
            (
                Box::new(|c| {
                    c.healthcheck = Some(pb::HealthConfig {
                        test: vec!["CMD".into()],
                        ..Default::default()
                    })
                }),
                "healthcheck test",
            ),
        ];
        for (change, want) in cases {
            let mut s = spec("web", "nginx");
            change(container(&mut s));
            let e = err(&s);
            assert!(e.contains(want), "{want}: {e}");
        }
        for ok in ["SIGTERM", "term", "9", "SIGRTMIN+3", "SIGUSR1"] {
            let mut s = spec("web", "nginx");
            container(&mut s).stop_signal = ok.into();
            validate_spec(&s).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
    }

    #[test]
    fn resources_are_checked() {
        let mut s = spec("web", "nginx");
        task(&mut s).resources = Some(pb::ResourceRequirements {
            limits: Some(pb::Limits {
                memory_bytes: 1024,
                ..Default::default()
            }),
            reservations: None,
        });
        assert!(err(&s).contains("at least 4MiB"));
        task(&mut s).resources = Some(pb::ResourceRequirements {
            limits: Some(pb::Limits {
                memory_bytes: 64 << 20,
                nano_cpus: 500_000_000,
                pids: 0,
            }),
            reservations: Some(pb::Resources {
                memory_bytes: 128 << 20,
                nano_cpus: 0,
            }),
        });
        assert!(err(&s).contains("reservation is larger"));
        task(&mut s).resources = Some(pb::ResourceRequirements {
            limits: Some(pb::Limits {
                nano_cpus: 10,
                ..Default::default()
            }),
            reservations: None,
        });
        assert!(err(&s).contains("at least 0.001"));
    }

    #[test]
    fn updates_keep_name_and_mode() {
        let old = spec("web", "nginx");
        let mut new = old.clone();
        container(&mut new).image = "nginx:2".into();
        check_update(&old, &new).unwrap();
        let renamed = spec("web2", "nginx");
        assert!(
            check_update(&old, &renamed)
                .unwrap_err()
                .to_string()
                .contains("renaming")
        );
        let mut global = old.clone();
        global.mode = Some(Mode::Global(pb::GlobalService {}));
        assert!(
            check_update(&old, &global)
                .unwrap_err()
                .to_string()
                .contains("mode change")
        );
    }

    fn service(id: &str, name: &str, ports: Vec<pb::PortConfig>) -> pb::Service {
        let mut s = spec(name, "nginx");
        s.endpoint.as_mut().unwrap().ports = ports;
        pb::Service {
            meta: Some(pb::Meta {
                id: id.into(),
                ..Default::default()
            }),
            spec: Some(s),
            ..Default::default()
        }
    }

    #[test]
    fn published_ports_conflict_as_in_docker() {
        let others = [
            service("s1", "web", vec![port(8080, 80, pb::PublishMode::Ingress)]),
            service("s2", "hosty", vec![port(9000, 90, pb::PublishMode::Host)]),
        ];
        let mine = |p| {
            let mut s = spec("new", "nginx");
            s.endpoint.as_mut().unwrap().ports = vec![p];
            s
        };
        let e = check_port_conflicts(
            &mine(port(8080, 81, pb::PublishMode::Ingress)),
            "new",
            &others,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("port 8080/tcp is already in use by service web (s1)"),
            "{e}"
        );
        assert!(
            check_port_conflicts(&mine(port(8080, 81, pb::PublishMode::Host)), "new", &others)
                .is_err()
        );
        // Host-mode ports may be shared between services.
        check_port_conflicts(&mine(port(9000, 91, pb::PublishMode::Host)), "new", &others).unwrap();
        assert!(
            check_port_conflicts(
                &mine(port(9000, 91, pb::PublishMode::Ingress)),
                "new",
                &others
            )
            .is_err()
        );
        // Another protocol is another port; a service doesn't conflict with itself.
        let mut udp = port(8080, 81, pb::PublishMode::Ingress);
        udp.protocol = pb::PortProtocol::Udp as i32;
        check_port_conflicts(&mine(udp), "new", &others).unwrap();
        check_port_conflicts(
            &mine(port(8080, 80, pb::PublishMode::Ingress)),
            "s1",
            &others,
        )
        .unwrap();
        // Allocated ports count too.
        let mut allocated = service("s3", "alloc", vec![]);
        allocated.endpoint = Some(pb::Endpoint {
            ports: vec![port(30000, 80, pb::PublishMode::Ingress)],
            ..Default::default()
        });
        assert!(
            check_port_conflicts(
                &mine(port(30000, 80, pb::PublishMode::Ingress)),
                "new",
                [&allocated]
            )
            .is_err()
        );
    }

    #[test]
    fn list_filters_match_like_docker() {
        let mut s = service("abc123", "web-front", vec![]);
        s.spec
            .as_mut()
            .unwrap()
            .annotations
            .as_mut()
            .unwrap()
            .labels = [("tier".to_string(), "front".to_string())].into();
        let f = |names: &[&str], ids: &[&str], labels: &[&str], modes: &[&str]| {
            pb::ListServicesRequest {
                name_prefixes: names.iter().map(|s| s.to_string()).collect(),
                id_prefixes: ids.iter().map(|s| s.to_string()).collect(),
                labels: labels.iter().map(|s| s.to_string()).collect(),
                modes: modes.iter().map(|s| s.to_string()).collect(),
            }
        };
        assert!(matches_filters(&s, &f(&[], &[], &[], &[])));
        assert!(matches_filters(&s, &f(&["web"], &[], &[], &[])));
        assert!(matches_filters(&s, &f(&["db", "web"], &[], &[], &[])));
        assert!(!matches_filters(&s, &f(&["front"], &[], &[], &[])));
        assert!(matches_filters(&s, &f(&[], &["abc"], &[], &[])));
        assert!(!matches_filters(&s, &f(&[], &["x"], &[], &[])));
        assert!(matches_filters(&s, &f(&[], &[], &["tier"], &[])));
        assert!(matches_filters(&s, &f(&[], &[], &["tier=front"], &[])));
        assert!(!matches_filters(&s, &f(&[], &[], &["tier=back"], &[])));
        assert!(!matches_filters(&s, &f(&[], &[], &["tier", "x"], &[])));
        assert!(matches_filters(&s, &f(&[], &[], &[], &["replicated"])));
        assert!(!matches_filters(&s, &f(&[], &[], &[], &["global"])));
        assert!(validate_filters(&f(&[], &[], &[], &["replicated-job"])).is_ok());
        assert!(validate_filters(&f(&[], &[], &[], &["daemon"])).is_err());
    }
}
