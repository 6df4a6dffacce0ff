//! What `service ls` and `service inspect --pretty` print: docker's columns
//! (REPLICAS as running/desired), mode names, port summaries, and the
//! pretty layout. Pure functions of services and their tasks.
use std::{collections::HashMap, time::Duration};

use swarm_proto::v1::{self as pb, service_spec::Mode};

use super::json::{self as sjson, ServiceStatus};
use crate::cli::{
    json::timestamp_human,
    output::{self, natural_cmp, table},
};

const RUNNING: i32 = pb::TaskState::Running as i32;
const COMPLETE: i32 = pb::TaskState::Complete as i32;

pub fn service_id(s: &pb::Service) -> &str {
    s.meta.as_ref().map_or("", |m| m.id.as_str())
}

pub fn service_name(s: &pb::Service) -> &str {
    s.spec
        .as_ref()
        .and_then(|s| s.annotations.as_ref())
        .map_or("", |a| a.name.as_str())
}

fn state(t: &pb::Task) -> i32 {
    t.status.as_ref().map_or(0, |s| s.state)
}

/// Running, desired and completed task counts, as docker's API reports
/// them: running counts tasks RUNNING that are still meant to run.
pub fn status(s: &pb::Service, tasks: &[&pb::Task]) -> ServiceStatus {
    let spec = s.spec.clone().unwrap_or_default();
    let iteration = s.job_status.as_ref().map_or(0, |j| j.job_iteration);
    let running = tasks
        .iter()
        .filter(|t| state(t) == RUNNING && t.desired_state <= COMPLETE)
        .count() as u64;
    let this_run = || tasks.iter().filter(move |t| t.job_iteration == iteration);
    match &spec.mode {
        None | Some(Mode::Replicated(_)) => ServiceStatus {
            running_tasks: running,
            desired_tasks: match &spec.mode {
                Some(Mode::Replicated(r)) => r.replicas,
                _ => 0,
            },
            completed_tasks: 0,
        },
        Some(Mode::Global(_)) => {
            let mut nodes: Vec<&str> = tasks
                .iter()
                .filter(|t| t.desired_state == RUNNING)
                .map(|t| t.node_id.as_str())
                .collect();
            nodes.sort_unstable();
            nodes.dedup();
            ServiceStatus {
                running_tasks: running,
                desired_tasks: nodes.len() as u64,
                completed_tasks: 0,
            }
        }
        Some(Mode::ReplicatedJob(j)) => {
            let completed = this_run().filter(|t| state(t) == COMPLETE).count() as u64;
            let concurrent = if j.max_concurrent == 0 {
                j.total_completions
            } else {
                j.max_concurrent
            };
            ServiceStatus {
                running_tasks: running,
                desired_tasks: concurrent.min(j.total_completions.saturating_sub(completed)),
                completed_tasks: completed,
            }
        }
        Some(Mode::GlobalJob(_)) => ServiceStatus {
            running_tasks: running,
            desired_tasks: this_run().count() as u64,
            completed_tasks: this_run().filter(|t| state(t) == COMPLETE).count() as u64,
        },
    }
}

/// The REPLICAS column: "2/3", "2/3 (max 1 per node)", "1/2 (3/5 completed)".
pub fn replicas(s: &pb::Service, st: ServiceStatus) -> String {
    let spec = s.spec.clone().unwrap_or_default();
    let base = format!("{}/{}", st.running_tasks, st.desired_tasks);
    let max = spec
        .task
        .as_ref()
        .and_then(|t| t.placement.as_ref())
        .map_or(0, |p| p.max_replicas);
    match &spec.mode {
        Some(Mode::ReplicatedJob(j)) => {
            format!(
                "{base} ({}/{} completed)",
                st.completed_tasks, j.total_completions
            )
        }
        Some(Mode::GlobalJob(_)) => {
            format!(
                "{base} ({}/{} completed)",
                st.completed_tasks, st.desired_tasks
            )
        }
        _ if max > 0 => format!("{base} (max {max} per node)"),
        _ => base,
    }
}

/// "replicated", "global", "replicated job", "global job".
pub fn mode_display(s: &pb::ServiceSpec) -> &'static str {
    match s.mode {
        None | Some(Mode::Replicated(_)) => "replicated",
        Some(Mode::Global(_)) => "global",
        Some(Mode::ReplicatedJob(_)) => "replicated job",
        Some(Mode::GlobalJob(_)) => "global job",
    }
}

/// The image without its digest, as `service ls` shows it.
pub fn short_image(image: &str) -> &str {
    image.split_once('@').map_or(image, |(name, _)| name)
}

/// Published ingress ports, "*:8080->80/tcp": the allocated ones once the
/// allocator has run, the requested ones before.
pub fn ports_summary(s: &pb::Service) -> String {
    let allocated = s
        .endpoint
        .as_ref()
        .map(|e| e.ports.as_slice())
        .unwrap_or_default();
    let requested = s
        .spec
        .as_ref()
        .and_then(|s| s.endpoint.as_ref())
        .map(|e| e.ports.as_slice())
        .unwrap_or_default();
    let ports = if allocated.is_empty() {
        requested
    } else {
        allocated
    };
    ports
        .iter()
        .filter(|p| p.publish_mode == pb::PublishMode::Ingress as i32 && p.published_port != 0)
        .map(|p| {
            format!(
                "*:{}->{}/{}",
                p.published_port,
                p.target_port,
                sjson::protocol(p.protocol())
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Services sorted by name, as docker lists them.
pub fn sort_services(services: &mut [pb::Service]) {
    services.sort_by(|a, b| {
        natural_cmp(service_name(a), service_name(b)).then_with(|| service_id(a).cmp(service_id(b)))
    });
}

/// Tasks grouped by service ID.
pub fn tasks_by_service(tasks: &[pb::Task]) -> HashMap<&str, Vec<&pb::Task>> {
    let mut by: HashMap<&str, Vec<&pb::Task>> = HashMap::new();
    for t in tasks {
        by.entry(t.service_id.as_str()).or_default().push(t);
    }
    by
}

pub fn ls_table(services: &[pb::Service], tasks: &[pb::Task]) -> String {
    let by = tasks_by_service(tasks);
    let rows: Vec<Vec<String>> = services
        .iter()
        .map(|s| {
            let id = service_id(s);
            let spec = s.spec.clone().unwrap_or_default();
            let st = status(s, by.get(id).map(Vec::as_slice).unwrap_or_default());
            let image = spec
                .task
                .as_ref()
                .and_then(|t| t.container.as_ref())
                .map(|c| short_image(&c.image).to_string())
                .unwrap_or_default();
            vec![
                id[..id.len().min(12)].to_string(),
                service_name(s).to_string(),
                mode_display(&spec).to_string(),
                replicas(s, st),
                image,
                ports_summary(s),
            ]
        })
        .collect();
    table(&["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"], &rows)
}

fn dur(d: Option<&prost_types::Duration>) -> String {
    let d = d.copied().unwrap_or_default();
    output::duration(Duration::new(
        u64::try_from(d.seconds).unwrap_or(0),
        u32::try_from(d.nanos).unwrap_or(0),
    ))
}

fn cpus(nano: i64) -> String {
    #[allow(clippy::cast_precision_loss)] // for display
    let v = nano as f64 / 1e9;
    format!("{v}")
}

/// `service inspect --pretty`, laid out as docker's template.
pub fn pretty(s: &pb::Service) -> String {
    let meta = s.meta.clone().unwrap_or_default();
    let spec = s.spec.clone().unwrap_or_default();
    let annotations = spec.annotations.clone().unwrap_or_default();
    let task = spec.task.clone().unwrap_or_default();
    let c = task.container.clone().unwrap_or_default();
    let mut out = String::new();
    let mut kv = |k: &str, v: &str| {
        out.push_str(format!("{k:<24}{v}").trim_end());
        out.push('\n');
    };
    kv("ID:", &meta.id);
    kv("Name:", &annotations.name);
    if !annotations.labels.is_empty() {
        kv("Labels:", "");
        for (k, v) in &annotations.labels {
            kv(&format!(" {k}={v}"), "");
        }
    }
    kv("Created at:", &timestamp_human(meta.created_at.as_ref()));
    kv("Updated at:", &timestamp_human(meta.updated_at.as_ref()));
    match &spec.mode {
        None | Some(Mode::Replicated(_)) => {
            kv("Service Mode:", "Replicated");
            if let Some(Mode::Replicated(r)) = &spec.mode {
                kv(" Replicas:", &r.replicas.to_string());
            }
        }
        Some(Mode::Global(_)) => kv("Service Mode:", "Global"),
        Some(Mode::ReplicatedJob(j)) => {
            kv("Service Mode:", "Replicated job");
            kv(" Max Concurrent:", &j.max_concurrent.to_string());
            kv(" Total Completions:", &j.total_completions.to_string());
        }
        Some(Mode::GlobalJob(_)) => kv("Service Mode:", "Global job"),
    }
    if let Some(u) = &s.update_status {
        kv("UpdateStatus:", "");
        kv(" State:", sjson_update_state(u.state()));
        kv(" Started:", &timestamp_human(u.started_at.as_ref()));
        if u.completed_at.is_some() {
            kv(" Completed:", &timestamp_human(u.completed_at.as_ref()));
        }
        kv(" Message:", &u.message);
    }
    if let Some(p) = &task.placement
        && (!p.constraints.is_empty() || !p.preferences.is_empty() || p.max_replicas > 0)
    {
        kv("Placement:", "");
        if !p.constraints.is_empty() {
            kv(" Constraints:", &format!("[{}]", p.constraints.join(" ")));
        }
        for pref in &p.preferences {
            if let Some(pb::placement_preference::Preference::Spread(sp)) = &pref.preference {
                kv(" Preferences:", &format!("spread={}", sp.spread_descriptor));
            }
        }
        if p.max_replicas > 0 {
            kv(" Max Replicas Per Node:", &p.max_replicas.to_string());
        }
    }
    for (title, cfg, order) in [
        ("UpdateConfig:", &spec.update, " Update order:"),
        ("RollbackConfig:", &spec.rollback, " Rollback order:"),
    ] {
        if let Some(u) = cfg {
            kv(title, "");
            kv(" Parallelism:", &u.parallelism.to_string());
            if u.delay.is_some_and(|d| d.seconds != 0 || d.nanos != 0) {
                kv(" Delay:", &dur(u.delay.as_ref()));
            }
            kv(" On failure:", sjson::failure_action(u.failure_action()));
            kv(" Monitoring Period:", &dur(u.monitor.as_ref()));
            kv(" Max failure ratio:", &u.max_failure_ratio.to_string());
            kv(order, sjson::order(u.order()));
        }
    }
    kv("ContainerSpec:", "");
    kv(" Image:", &c.image);
    if !c.args.is_empty() {
        kv(" Args:", &c.args.join(" "));
    }
    if !c.env.is_empty() {
        kv(" Env:", &c.env.join(" "));
    }
    if !c.dir.is_empty() {
        kv(" Dir:", &c.dir);
    }
    if !c.user.is_empty() {
        kv(" User:", &c.user);
    }
    if !c.hostname.is_empty() {
        kv(" Hostname:", &c.hostname);
    }
    if c.read_only {
        kv(" Read only:", "true");
    }
    if let Some(h) = &c.healthcheck
        && !h.test.is_empty()
    {
        kv(" Healthcheck:", &h.test.join(" "));
    }
    if !c.capability_add.is_empty() {
        kv(" Capability Add:", &c.capability_add.join(", "));
    }
    if !c.capability_drop.is_empty() {
        kv(" Capability Drop:", &c.capability_drop.join(", "));
    }
    if !c.mounts.is_empty() {
        kv("Mounts:", "");
        for m in &c.mounts {
            kv(" Target:", &m.target);
            kv("  Source:", &m.source);
            kv("  ReadOnly:", &m.read_only.to_string());
            kv("  Type:", sjson::mount_type(m.r#type()));
        }
    }
    if let Some(r) = &task.resources {
        let res = r.reservations.unwrap_or_default();
        let lim = r.limits.unwrap_or_default();
        if res != pb::Resources::default() || lim != pb::Limits::default() {
            kv("Resources:", "");
            if res != pb::Resources::default() {
                kv(" Reservations:", "");
                if res.nano_cpus != 0 {
                    kv("  CPU:", &cpus(res.nano_cpus));
                }
                if res.memory_bytes != 0 {
                    kv("  Memory:", &output::bytes_size(res.memory_bytes));
                }
            }
            if lim != pb::Limits::default() {
                kv(" Limits:", "");
                if lim.nano_cpus != 0 {
                    kv("  CPU:", &cpus(lim.nano_cpus));
                }
                if lim.memory_bytes != 0 {
                    kv("  Memory:", &output::bytes_size(lim.memory_bytes));
                }
                if lim.pids != 0 {
                    kv("  PIDs:", &lim.pids.to_string());
                }
            }
        }
    }
    if !task.networks.is_empty() {
        let nets: Vec<&str> = task.networks.iter().map(|n| n.target.as_str()).collect();
        kv("Networks:", &nets.join(" "));
    }
    let endpoint = spec.endpoint.clone().unwrap_or_default();
    kv("Endpoint Mode:", sjson::endpoint_mode(endpoint.mode()));
    if !endpoint.ports.is_empty() {
        kv("Ports:", "");
        for p in &endpoint.ports {
            kv(&format!(" PublishedPort = {}", p.published_port), "");
            kv(
                &format!("  Protocol = {}", sjson::protocol(p.protocol())),
                "",
            );
            kv(&format!("  TargetPort = {}", p.target_port), "");
            kv(
                &format!("  PublishMode = {}", sjson::publish_mode(p.publish_mode())),
                "",
            );
        }
    }
    out
}

fn sjson_update_state(s: pb::UpdateState) -> &'static str {
    match s {
        pb::UpdateState::Unknown => "unknown",
        pb::UpdateState::Updating => "updating",
        pb::UpdateState::Paused => "paused",
        pb::UpdateState::Completed => "completed",
        pb::UpdateState::RollbackStarted => "rollback_started",
        pb::UpdateState::RollbackPaused => "rollback_paused",
        pb::UpdateState::RollbackCompleted => "rollback_completed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::service::json::tests::service_fixture;

    fn task(
        service: &str,
        slot: u64,
        node: &str,
        state: pb::TaskState,
        desired: pb::TaskState,
    ) -> pb::Task {
        pb::Task {
            service_id: service.into(),
            slot,
            node_id: node.into(),
            desired_state: desired as i32,
            status: Some(pb::TaskStatus {
                state: state as i32,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn ls_counts_running_over_desired() {
        use pb::TaskState::*;
        let web = service_fixture("aaaaaaaaaaaaaaaaaaaaaaaaa", "web", 3);
        let mut db = service_fixture("bbbbbbbbbbbbbbbbbbbbbbbbb", "db10", 1);
        db.spec.as_mut().unwrap().endpoint = Some(pb::EndpointSpec::default());
        let mut api = service_fixture("ccccccccccccccccccccccccc", "api", 0);
        {
            let spec = api.spec.as_mut().unwrap();
            spec.mode = Some(Mode::Global(pb::GlobalService {}));
            spec.task
                .as_mut()
                .unwrap()
                .container
                .as_mut()
                .unwrap()
                .image = "registry:5000/api:1@sha256:0123456789abcdef0123456789abcdef".into();
            spec.endpoint.as_mut().unwrap().ports[0].publish_mode = pb::PublishMode::Host as i32;
        }
        let mut db2 = service_fixture("ddddddddddddddddddddddddd", "db2", 2);
        db2.spec.as_mut().unwrap().task.as_mut().unwrap().placement = Some(pb::Placement {
            max_replicas: 1,
            ..Default::default()
        });
        db2.spec.as_mut().unwrap().endpoint = Some(pb::EndpointSpec::default());
        let tasks = vec![
            task("aaaaaaaaaaaaaaaaaaaaaaaaa", 1, "n1", Running, Running),
            task("aaaaaaaaaaaaaaaaaaaaaaaaa", 2, "n1", Running, Running),
            task("aaaaaaaaaaaaaaaaaaaaaaaaa", 3, "", Pending, Running),
            task("aaaaaaaaaaaaaaaaaaaaaaaaa", 2, "n1", Running, Shutdown),
            task("ccccccccccccccccccccccccc", 0, "n1", Running, Running),
            task("ccccccccccccccccccccccccc", 0, "n2", Preparing, Running),
        ];
        let mut services = vec![web, db, api, db2];
        sort_services(&mut services);
        assert_eq!(
            ls_table(&services, &tasks),
            "\
ID             NAME   MODE         REPLICAS               IMAGE                 PORTS
cccccccccccc   api    global       1/2                    registry:5000/api:1
dddddddddddd   db2    replicated   0/2 (max 1 per node)   nginx:latest
bbbbbbbbbbbb   db10   replicated   0/1                    nginx:latest
aaaaaaaaaaaa   web    replicated   2/3                    nginx:latest          *:8080->80/tcp
"
        );
    }

    #[test]
    fn job_replicas_show_completions() {
        use pb::TaskState::*;
        let mut job = service_fixture("j", "job", 1);
        job.spec.as_mut().unwrap().mode = Some(Mode::ReplicatedJob(pb::ReplicatedJob {
            max_concurrent: 2,
            total_completions: 5,
        }));
        job.job_status = Some(pb::JobStatus {
            job_iteration: 1,
            last_execution: None,
        });
        let mut tasks = [
            task("j", 1, "n1", Complete, Complete),
            task("j", 2, "n1", Complete, Complete),
            task("j", 3, "n1", Running, Complete),
            task("j", 4, "n1", Complete, Complete),
        ];
        for t in &mut tasks[..3] {
            t.job_iteration = 1;
        }
        let refs: Vec<&pb::Task> = tasks.iter().collect();
        let st = status(&job, &refs);
        assert_eq!(
            st,
            ServiceStatus {
                running_tasks: 1,
                desired_tasks: 2,
                completed_tasks: 2
            }
        );
        assert_eq!(replicas(&job, st), "1/2 (2/5 completed)");
        assert_eq!(mode_display(job.spec.as_ref().unwrap()), "replicated job");
    }

    #[test]
    fn pretty_lays_out_like_docker() {
        let mut s = service_fixture("sid", "web", 3);
        {
            let spec = s.spec.as_mut().unwrap();
            spec.annotations
                .as_mut()
                .unwrap()
                .labels
                .insert("tier".into(), "front".into());
            let task = spec.task.as_mut().unwrap();
            task.placement.as_mut().unwrap().constraints = vec!["node.role==worker".into()];
            task.resources.as_mut().unwrap().reservations = Some(pb::Resources {
                nano_cpus: 500_000_000,
                memory_bytes: 512 << 20,
            });
        }
        assert_eq!(
            pretty(&s),
            "\
ID:                     sid
Name:                   web
Labels:
 tier=front
Created at:             2016-06-16 22:52:44 +0000 UTC
Updated at:             2016-06-16 22:52:45 +0000 UTC
Service Mode:           Replicated
 Replicas:              3
Placement:
 Constraints:           [node.role==worker]
UpdateConfig:
 Parallelism:           1
 On failure:            pause
 Monitoring Period:     5s
 Max failure ratio:     0
 Update order:          stop-first
RollbackConfig:
 Parallelism:           1
 On failure:            pause
 Monitoring Period:     5s
 Max failure ratio:     0
 Rollback order:        stop-first
ContainerSpec:
 Image:                 nginx:latest
 Args:                  nginx -g
 Env:                   A=1
Resources:
 Reservations:
  CPU:                  0.5
  Memory:               512MiB
Endpoint Mode:          vip
Ports:
 PublishedPort = 8080
  Protocol = tcp
  TargetPort = 80
  PublishMode = ingress
"
        );
    }
}
