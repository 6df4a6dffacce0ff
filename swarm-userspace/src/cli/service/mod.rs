//! `swarm service create|update|rm|ls|ps|inspect|logs|scale|rollback`.
//!
//! Clients of the Control API, shaped like docker's `service` commands.
//! Service references (ID, name, ID prefix) are resolved by the manager.
//! Spec changes are read-modify-write with the version read, retried on a
//! concurrent change, so a flag is never lost to another writer. Changes
//! wait for convergence with a progress display unless `--detach`; the
//! decisions of that display live in [`progress`], the polling here.
//!
//! `service logs` lives in `cli/logs.rs`, shared with `task logs`.
mod flags;
mod json;
mod progress;
mod spec;
mod view;

use std::{collections::HashMap, io::IsTerminal, io::Write};

use anyhow::Context;
use clap::{Args, Subcommand};
use swarm_proto::v1::{self as pb, service_spec::Mode};

use self::{
    flags::{LsFilter, PsFilter, parse_ls_filter, parse_ps_filter, parse_scale},
    progress::{Outcome, POLL_INTERVAL, Screen, Snapshot, Tracker},
    spec::{CreateArgs, UpdateArgs, build_spec, changes_spec, merge_update},
    view::{service_id, service_name},
};
use super::{
    UPDATE_ATTEMPTS, conflict_backoff,
    output::Format,
    task::{cmp_tasks, ps_table, task_id, task_json, task_name},
};
use crate::api::client::Client;

#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Create a new service.
    Create(Box<CreateArgs>),
    /// Update a service.
    Update(Box<UpdateArgs>),
    /// Remove one or more services.
    #[command(visible_alias = "remove")]
    Rm(RefsArgs),
    /// List services.
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// List the tasks of one or more services.
    Ps(PsArgs),
    /// Display detailed information on one or more services.
    Inspect(InspectArgs),
    /// Fetch the logs of a service or task.
    Logs(super::logs::LogsArgs),
    /// Scale one or multiple replicated services (SERVICE=REPLICAS...).
    Scale(ScaleArgs),
    /// Revert changes to a service's configuration.
    Rollback(RollbackArgs),
}

#[derive(Debug, Args)]
pub struct RefsArgs {
    /// Service name, ID or ID prefix.
    #[arg(value_name = "SERVICE", required = true)]
    pub services: Vec<String>,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Output format: "table" (default) or "json" (an array of services as
    /// `service inspect` shows them, with docker's ServiceStatus counts).
    #[arg(long, default_value = "table")]
    pub format: Format,
    /// Only display IDs.
    #[arg(short, long)]
    pub quiet: bool,
    /// Filter output: id=, name= (prefix), label=KEY[=VALUE], mode=.
    #[arg(short, long, value_name = "FILTER", value_parser = parse_ls_filter)]
    pub filter: Vec<LsFilter>,
}

#[derive(Debug, Args)]
pub struct PsArgs {
    /// Output format: "table" (default) or "json".
    #[arg(long, default_value = "table")]
    pub format: Format,
    /// Only display task IDs.
    #[arg(short, long)]
    pub quiet: bool,
    /// Do not truncate output.
    #[arg(long)]
    pub no_trunc: bool,
    /// Filter output: desired-state=running|shutdown|..., node=, id=, name=.
    #[arg(short, long, value_name = "FILTER", value_parser = parse_ps_filter)]
    pub filter: Vec<PsFilter>,
    /// Service name, ID or ID prefix.
    #[arg(value_name = "SERVICE", required = true)]
    pub services: Vec<String>,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Print the information in a human friendly format.
    #[arg(long)]
    pub pretty: bool,
    /// Service name, ID or ID prefix.
    #[arg(value_name = "SERVICE", required = true)]
    pub services: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ScaleArgs {
    /// Exit immediately instead of waiting for the services to converge.
    #[arg(short, long)]
    pub detach: bool,
    /// SERVICE=REPLICAS.
    #[arg(value_name = "SERVICE=REPLICAS", required = true, value_parser = parse_scale)]
    pub scales: Vec<(String, u64)>,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// Exit immediately instead of waiting for the service to converge.
    #[arg(short, long)]
    pub detach: bool,
    /// Suppress progress output.
    #[arg(short, long)]
    pub quiet: bool,
    /// Service name, ID or ID prefix.
    #[arg(value_name = "SERVICE")]
    pub service: String,
}

pub async fn run(client: &Client, cmd: &ServiceCommand) -> anyhow::Result<()> {
    match cmd {
        ServiceCommand::Create(a) => create(client, a).await,
        ServiceCommand::Update(a) => update(client, a).await,
        ServiceCommand::Rm(a) => rm(client, a).await,
        ServiceCommand::Ls(a) => ls(client, a).await,
        ServiceCommand::Ps(a) => ps(client, a).await,
        ServiceCommand::Inspect(a) => inspect(client, a).await,
        ServiceCommand::Logs(a) => super::logs::run(client, a, false).await,
        ServiceCommand::Scale(a) => scale(client, a).await,
        ServiceCommand::Rollback(a) => rollback(client, &a.service, a.detach, a.quiet).await,
    }
}

async fn create(client: &Client, a: &CreateArgs) -> anyhow::Result<()> {
    let spec = build_spec(a).map_err(anyhow::Error::msg)?;
    let svc = client
        .control()
        .create_service(pb::CreateServiceRequest { spec: Some(spec) })
        .await
        .map_err(|s| client.rpc_error(s))?
        .into_inner()
        .service
        .context("the manager returned no service")?;
    println!("{}", service_id(&svc));
    if a.common.detach {
        return Ok(());
    }
    wait(client, &svc, false, a.common.quiet).await
}

/// Reads the service, applies `change` to its spec and writes it with the
/// version read; on a version conflict reads again and re-applies.
async fn modify_spec(
    client: &Client,
    service_ref: &str,
    change: impl Fn(&mut pb::ServiceSpec) -> anyhow::Result<()>,
) -> anyhow::Result<pb::Service> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let svc = get_service(client, service_ref).await?;
        let mut spec = svc.spec.clone().unwrap_or_default();
        change(&mut spec)?;
        match client
            .control()
            .update_service(pb::UpdateServiceRequest {
                service_ref: service_id(&svc).to_string(),
                service_version: svc.meta.as_ref().map_or(0, |m| m.version),
                spec: Some(spec),
                rollback: false,
            })
            .await
        {
            Ok(r) => {
                return r
                    .into_inner()
                    .service
                    .context("the manager returned no service");
            }
            Err(s) if s.code() == tonic::Code::Aborted && attempt < UPDATE_ATTEMPTS => {
                conflict_backoff(attempt).await;
            }
            Err(s) => return Err(client.rpc_error(s).into()),
        }
    }
}

async fn update(client: &Client, a: &UpdateArgs) -> anyhow::Result<()> {
    if a.rollback {
        if changes_spec(a) {
            anyhow::bail!("other flags may not be combined with --rollback");
        }
        return rollback(client, &a.service, a.common.detach, a.common.quiet).await;
    }
    let svc = modify_spec(client, &a.service, |spec| {
        merge_update(spec, a).map_err(anyhow::Error::msg)
    })
    .await?;
    // Docker echoes the reference as given.
    println!("{}", a.service);
    if a.common.detach {
        return Ok(());
    }
    wait(client, &svc, false, a.common.quiet).await
}

async fn rollback(
    client: &Client,
    service_ref: &str,
    detach: bool,
    quiet: bool,
) -> anyhow::Result<()> {
    let mut attempt = 0;
    let svc = loop {
        attempt += 1;
        let svc = get_service(client, service_ref).await?;
        match client
            .control()
            .update_service(pb::UpdateServiceRequest {
                service_ref: service_id(&svc).to_string(),
                service_version: svc.meta.as_ref().map_or(0, |m| m.version),
                spec: None,
                rollback: true,
            })
            .await
        {
            Ok(r) => {
                break r
                    .into_inner()
                    .service
                    .context("the manager returned no service")?;
            }
            Err(s) if s.code() == tonic::Code::Aborted && attempt < UPDATE_ATTEMPTS => {
                conflict_backoff(attempt).await;
            }
            Err(s) => return Err(client.rpc_error(s).into()),
        }
    };
    println!("{service_ref}");
    if detach {
        return Ok(());
    }
    if !quiet {
        println!("rollback: manually requested rollback");
    }
    wait(client, &svc, true, quiet).await
}

async fn scale(client: &Client, a: &ScaleArgs) -> anyhow::Result<()> {
    let mut errors = Vec::new();
    let mut scaled = Vec::new();
    for (name, n) in &a.scales {
        let n = *n;
        let result = modify_spec(client, name, |spec| {
            match spec.mode.as_mut() {
                Some(Mode::Replicated(r)) => r.replicas = n,
                Some(Mode::ReplicatedJob(j)) => j.total_completions = n,
                _ => anyhow::bail!("scale can only be used with replicated or replicated-job mode"),
            }
            Ok(())
        })
        .await;
        match result {
            Ok(svc) => {
                println!("{name} scaled to {n}");
                scaled.push(svc);
            }
            Err(e) => errors.push(format!("{name}: {e:#}")),
        }
    }
    if !a.detach {
        for svc in &scaled {
            if let Err(e) = wait(client, svc, false, false).await {
                errors.push(format!("{}: {e:#}", service_name(svc)));
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(anyhow::anyhow!(errors.join("; ")))
    }
}

async fn rm(client: &Client, a: &RefsArgs) -> anyhow::Result<()> {
    let mut errors = Vec::new();
    for r in &a.services {
        match client
            .control()
            .remove_service(pb::RemoveServiceRequest {
                service_ref: r.clone(),
            })
            .await
        {
            Ok(_) => println!("{r}"),
            Err(s) => errors.push(format!("{:#}", anyhow::Error::from(client.rpc_error(s)))),
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(anyhow::anyhow!(errors.join("; ")))
    }
}

fn ls_request(filters: &[LsFilter]) -> pb::ListServicesRequest {
    let mut req = pb::ListServicesRequest::default();
    for f in filters {
        match f {
            LsFilter::Id(v) => req.id_prefixes.push(v.clone()),
            LsFilter::Name(v) => req.name_prefixes.push(v.clone()),
            LsFilter::Label(v) => req.labels.push(v.clone()),
            LsFilter::Mode(v) => req.modes.push(v.clone()),
        }
    }
    req
}

async fn list_tasks(client: &Client, req: pb::ListTasksRequest) -> anyhow::Result<Vec<pb::Task>> {
    Ok(client
        .control()
        .list_tasks(req)
        .await
        .map_err(|s| client.rpc_error(s))?
        .into_inner()
        .tasks)
}

async fn list_nodes(client: &Client) -> anyhow::Result<Vec<pb::Node>> {
    Ok(client
        .control()
        .list_nodes(pb::ListNodesRequest { role: None })
        .await
        .map_err(|s| client.rpc_error(s))?
        .into_inner()
        .nodes)
}

async fn ls(client: &Client, a: &LsArgs) -> anyhow::Result<()> {
    let mut services = client
        .control()
        .list_services(ls_request(&a.filter))
        .await
        .map_err(|s| client.rpc_error(s))?
        .into_inner()
        .services;
    view::sort_services(&mut services);
    if a.quiet {
        for s in &services {
            println!("{}", service_id(s));
        }
        return Ok(());
    }
    let tasks = if services.is_empty() {
        Vec::new()
    } else {
        list_tasks(
            client,
            pb::ListTasksRequest {
                service_ids: services.iter().map(|s| service_id(s).to_string()).collect(),
                ..Default::default()
            },
        )
        .await?
    };
    match a.format {
        Format::Json => {
            let by = view::tasks_by_service(&tasks);
            let v: Vec<_> = services
                .iter()
                .map(|s| {
                    let st = view::status(
                        s,
                        by.get(service_id(s)).map(Vec::as_slice).unwrap_or_default(),
                    );
                    json::service(s, Some(st))
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Format::Table => print!("{}", view::ls_table(&services, &tasks)),
    }
    Ok(())
}

/// Whether a task passes `service ps` filters (desired state is filtered
/// by the manager).
fn ps_keep(t: &pb::Task, filters: &[PsFilter], nodes: &[pb::Node]) -> bool {
    let node_filters: Vec<&String> = filters
        .iter()
        .filter_map(|f| match f {
            PsFilter::Node(n) => Some(n),
            _ => None,
        })
        .collect();
    let node_ok = node_filters.is_empty()
        || node_filters.iter().any(|want| {
            nodes.iter().any(|n| {
                let id = n.meta.as_ref().map_or("", |m| m.id.as_str());
                let host = n.description.as_ref().map_or("", |d| d.hostname.as_str());
                id == t.node_id && (id.starts_with(want.as_str()) || host == want.as_str())
            })
        });
    let id_ok = filters
        .iter()
        .filter_map(|f| match f {
            PsFilter::Id(v) => Some(v),
            _ => None,
        })
        .fold(None, |acc: Option<bool>, v| {
            Some(acc.unwrap_or(false) || task_id(t).starts_with(v.as_str()))
        })
        .unwrap_or(true);
    let name_ok = filters
        .iter()
        .filter_map(|f| match f {
            PsFilter::Name(v) => Some(v),
            _ => None,
        })
        .fold(None, |acc: Option<bool>, v| {
            Some(acc.unwrap_or(false) || task_name(t).starts_with(v.as_str()))
        })
        .unwrap_or(true);
    node_ok && id_ok && name_ok
}

async fn ps(client: &Client, a: &PsArgs) -> anyhow::Result<()> {
    let mut ids = Vec::new();
    for r in &a.services {
        ids.push(service_id(&get_service(client, r).await?).to_string());
    }
    let desired_states = a
        .filter
        .iter()
        .filter_map(|f| match f {
            PsFilter::DesiredState(s) => Some(*s as i32),
            _ => None,
        })
        .collect();
    let tasks = list_tasks(
        client,
        pb::ListTasksRequest {
            service_ids: ids,
            desired_states,
            ..Default::default()
        },
    )
    .await?;
    let nodes = list_nodes(client).await?;
    let mut tasks: Vec<pb::Task> = tasks
        .into_iter()
        .filter(|t| ps_keep(t, &a.filter, &nodes))
        .collect();
    tasks.sort_by(cmp_tasks);
    if a.quiet {
        for t in &tasks {
            println!("{}", task_id(t));
        }
        return Ok(());
    }
    match a.format {
        Format::Json => {
            let v: Vec<serde_json::Value> = tasks.iter().map(task_json).collect();
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Format::Table => {
            let hostnames: HashMap<String, String> = nodes
                .iter()
                .map(|n| {
                    (
                        n.meta.as_ref().map(|m| m.id.clone()).unwrap_or_default(),
                        n.description
                            .as_ref()
                            .map(|d| d.hostname.clone())
                            .unwrap_or_default(),
                    )
                })
                .collect();
            print!(
                "{}",
                ps_table(&tasks, &hostnames, a.no_trunc, std::time::SystemTime::now())
            );
        }
    }
    Ok(())
}

async fn inspect(client: &Client, a: &InspectArgs) -> anyhow::Result<()> {
    let mut found = Vec::new();
    let mut errors = Vec::new();
    for r in &a.services {
        match get_service(client, r).await {
            Ok(s) => found.push(s),
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    // As docker: print what was found, then fail naming what was not.
    if a.pretty {
        let texts: Vec<String> = found.iter().map(view::pretty).collect();
        print!("{}", texts.join("\n\n"));
    } else {
        let v: Vec<_> = found.iter().map(|s| json::service(s, None)).collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(anyhow::anyhow!(errors.join("; ")))
    }
}

async fn get_service(client: &Client, r: &str) -> anyhow::Result<pb::Service> {
    client
        .control()
        .get_service(pb::GetServiceRequest {
            service_ref: r.to_string(),
        })
        .await
        .map_err(|s| client.rpc_error(s))?
        .into_inner()
        .service
        .with_context(|| format!("the daemon returned no service for {r:?}"))
}

/// Polls until the change converges or fails, showing progress unless
/// `quiet`.
async fn wait(
    client: &Client,
    written: &pb::Service,
    rollback: bool,
    quiet: bool,
) -> anyhow::Result<()> {
    let id = service_id(written).to_string();
    let global = matches!(
        written.spec.as_ref().and_then(|s| s.mode.as_ref()),
        Some(Mode::Global(_) | Mode::GlobalJob(_))
    );
    let mut tracker = Tracker::new(written, rollback);
    let mut screen = Screen::new(std::io::stdout().is_terminal());
    let start = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    loop {
        tick.tick().await;
        let service = match client
            .control()
            .get_service(pb::GetServiceRequest {
                service_ref: id.clone(),
            })
            .await
        {
            Ok(r) => r.into_inner().service,
            Err(s) if s.code() == tonic::Code::NotFound => None,
            Err(s) => return Err(client.rpc_error(s).into()),
        };
        let tasks = list_tasks(
            client,
            pb::ListTasksRequest {
                service_ids: vec![id.clone()],
                ..Default::default()
            },
        )
        .await?;
        let nodes = if global {
            list_nodes(client).await?
        } else {
            Vec::new()
        };
        let frame = tracker.observe(
            Snapshot {
                service: service.as_ref(),
                tasks: &tasks,
                nodes: &nodes,
            },
            start.elapsed(),
        );
        if !quiet {
            let mut out = std::io::stdout().lock();
            out.write_all(screen.render(&frame.lines).as_bytes())?;
            out.flush()?;
        }
        match frame.outcome {
            Outcome::Waiting => {}
            Outcome::Converged => return Ok(()),
            Outcome::Failed(why) => anyhow::bail!(why),
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

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

    #[test]
    fn commands_parse_like_dockers() {
        let ServiceCommand::Scale(a) = parse(&["scale", "web=10", "api=3", "-d"]) else {
            panic!()
        };
        assert_eq!(a.scales, [("web".to_string(), 10), ("api".to_string(), 3)]);
        assert!(a.detach);
        let ServiceCommand::Ls(a) = parse(&[
            "ls",
            "-q",
            "-f",
            "name=web",
            "--filter",
            "label=a=b",
            "-f",
            "mode=global",
        ]) else {
            panic!()
        };
        assert!(a.quiet);
        assert_eq!(
            ls_request(&a.filter),
            pb::ListServicesRequest {
                name_prefixes: vec!["web".into()],
                id_prefixes: vec![],
                labels: vec!["a=b".into()],
                modes: vec!["global".into()],
            }
        );
        let ServiceCommand::Ps(a) = parse(&[
            "ps",
            "--no-trunc",
            "-q",
            "--filter",
            "desired-state=running",
            "web",
            "api",
        ]) else {
            panic!()
        };
        assert!(a.no_trunc && a.quiet);
        assert_eq!(a.services, ["web", "api"]);
        assert_eq!(a.filter, [PsFilter::DesiredState(pb::TaskState::Running)]);
        assert!(
            matches!(parse(&["remove", "a", "b"]), ServiceCommand::Rm(RefsArgs { services }) if services.len() == 2)
        );
        assert!(matches!(parse(&["list"]), ServiceCommand::Ls(_)));
        assert!(matches!(
            parse(&["inspect", "--pretty", "web"]),
            ServiceCommand::Inspect(InspectArgs { pretty: true, .. })
        ));
        assert!(matches!(
            parse(&["rollback", "-d", "web"]),
            ServiceCommand::Rollback(RollbackArgs { detach: true, .. })
        ));
        for bad in [
            vec!["swarm", "service", "scale", "web"],
            vec!["swarm", "service", "scale"],
            vec!["swarm", "service", "rm"],
            vec!["swarm", "service", "ps"],
            vec!["swarm", "service", "inspect"],
            vec!["swarm", "service", "update"],
            vec!["swarm", "service", "logs"],
        ] {
            assert!(Cli::try_parse_from(&bad).is_err(), "{bad:?}");
        }
        let ServiceCommand::Logs(a) = parse(&["logs", "-f", "--tail", "5", "-t", "web"]) else {
            panic!("logs")
        };
        assert!(a.follow && a.timestamps && a.target == "web");
        assert_eq!(a.tail, super::super::logs::Tail(Some(5)));
    }

    #[test]
    fn ps_filters_by_node_id_or_hostname_and_task() {
        let node = pb::Node {
            meta: Some(pb::Meta {
                id: "nodeid1".into(),
                ..Default::default()
            }),
            description: Some(pb::NodeDescription {
                hostname: "node-1".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let t = pb::Task {
            meta: Some(pb::Meta {
                id: "task1".into(),
                ..Default::default()
            }),
            node_id: "nodeid1".into(),
            slot: 2,
            service_annotations: Some(pb::Annotations {
                name: "web".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let nodes = [node];
        assert!(ps_keep(&t, &[], &nodes));
        assert!(ps_keep(&t, &[PsFilter::Node("node-1".into())], &nodes));
        assert!(ps_keep(&t, &[PsFilter::Node("nodeid".into())], &nodes));
        assert!(!ps_keep(&t, &[PsFilter::Node("node-2".into())], &nodes));
        assert!(ps_keep(
            &t,
            &[PsFilter::Id("ta".into()), PsFilter::Id("x".into())],
            &nodes
        ));
        assert!(!ps_keep(&t, &[PsFilter::Id("x".into())], &nodes));
        assert!(ps_keep(&t, &[PsFilter::Name("web.2".into())], &nodes));
        assert!(!ps_keep(&t, &[PsFilter::Name("web.3".into())], &nodes));
    }
}
