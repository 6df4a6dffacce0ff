//! `swarm node ls|inspect|update|promote|demote|rm`.
//!
//! Clients of the Control API, shaped like docker's `node` commands. Node
//! references (ID, ID prefix, hostname) are resolved by the manager through
//! GetNode; only `self` is resolved here, from Swarm.Info, because only this
//! node's daemon knows which node it is. Spec changes are read-modify-write
//! with the version read, so a concurrent change fails instead of being
//! overwritten.
use std::collections::BTreeMap;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use swarm_proto::v1 as pb;

use super::{
    UPDATE_ATTEMPTS, conflict_backoff, json,
    output::{self, Format, capitalize, natural_cmp, table},
};
use crate::api::client::Client;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Availability {
    Active,
    Pause,
    Drain,
}

impl From<Availability> for pb::NodeAvailability {
    fn from(a: Availability) -> Self {
        match a {
            Availability::Active => pb::NodeAvailability::Active,
            Availability::Pause => pb::NodeAvailability::Pause,
            Availability::Drain => pb::NodeAvailability::Drain,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Role {
    Worker,
    Manager,
}

impl From<Role> for pb::NodeRole {
    fn from(r: Role) -> Self {
        match r {
            Role::Worker => pb::NodeRole::Worker,
            Role::Manager => pb::NodeRole::Manager,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// List the nodes of the swarm.
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// Show one or more nodes in detail.
    Inspect(InspectArgs),
    /// List the tasks running on one or more nodes (default: this node).
    Ps(PsArgs),
    /// Change a node's availability, labels or role.
    Update(UpdateArgs),
    /// Make one or more nodes managers.
    Promote(NodesArgs),
    /// Make one or more managers workers.
    Demote(NodesArgs),
    /// Remove one or more nodes from the swarm.
    #[command(visible_alias = "remove")]
    Rm(RmArgs),
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Output format: "table" (default) or "json" (an array of nodes as
    /// `node inspect` shows them).
    #[arg(long, default_value = "table")]
    pub format: Format,
    /// Only print node IDs.
    #[arg(short, long)]
    pub quiet: bool,
    /// Filter the list: role=manager or role=worker.
    #[arg(short, long, value_name = "FILTER", value_parser = parse_filter)]
    pub filter: Vec<Filter>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filter {
    Role(Role),
}

#[derive(Debug, Args)]
pub struct PsArgs {
    /// Output format: "table" (default) or "json".
    #[arg(long, default_value = "table")]
    pub format: Format,
    /// Only print task IDs.
    #[arg(short, long)]
    pub quiet: bool,
    /// Do not truncate IDs.
    #[arg(long)]
    pub no_trunc: bool,
    /// Nodes (ID, ID prefix, hostname or "self").
    #[arg(default_value = "self")]
    pub nodes: Vec<String>,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Human-readable output instead of JSON.
    #[arg(long)]
    pub pretty: bool,
    /// Node ID, ID prefix, hostname, or "self".
    #[arg(value_name = "NODE", required = true)]
    pub nodes: Vec<String>,
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// Availability of the node.
    #[arg(long, value_enum)]
    pub availability: Option<Availability>,
    /// Add or replace a node label (key=value, or key for an empty value).
    #[arg(long = "label-add", value_name = "KEY[=VALUE]", value_parser = parse_label)]
    pub label_add: Vec<(String, String)>,
    /// Remove a node label.
    #[arg(long = "label-rm", value_name = "KEY")]
    pub label_rm: Vec<String>,
    /// Role of the node.
    #[arg(long, value_enum)]
    pub role: Option<Role>,
    /// Node ID, ID prefix, hostname, or "self".
    #[arg(value_name = "NODE")]
    pub node: String,
}

#[derive(Debug, Args)]
pub struct NodesArgs {
    /// Node ID, ID prefix, hostname, or "self".
    #[arg(value_name = "NODE", required = true)]
    pub nodes: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    /// Remove a node even if it is not down.
    #[arg(short, long)]
    pub force: bool,
    /// Node ID, ID prefix, hostname, or "self".
    #[arg(value_name = "NODE", required = true)]
    pub nodes: Vec<String>,
}

pub async fn run(client: &Client, cmd: &NodeCommand) -> anyhow::Result<()> {
    match cmd {
        NodeCommand::Ls(a) => ls(client, a).await,
        NodeCommand::Inspect(a) => inspect(client, a).await,
        NodeCommand::Ps(a) => ps(client, a).await,
        NodeCommand::Update(a) => update(client, a).await,
        NodeCommand::Promote(a) => set_role(client, &a.nodes, Role::Manager).await,
        NodeCommand::Demote(a) => set_role(client, &a.nodes, Role::Worker).await,
        NodeCommand::Rm(a) => rm(client, a).await,
    }
}

async fn ls(client: &Client, args: &LsArgs) -> anyhow::Result<()> {
    let self_id = self_id(client).await?;
    let mut nodes = client
        .control()
        .list_nodes(pb::ListNodesRequest {
            role: role_filter(&args.filter).map(|r| pb::NodeRole::from(r) as i32),
        })
        .await
        .map_err(|s| client.rpc_error(s))?
        .into_inner()
        .nodes;
    sort_nodes(&mut nodes);
    if args.quiet {
        for n in &nodes {
            println!("{}", node_id(n));
        }
        return Ok(());
    }
    match args.format {
        Format::Json => {
            let v: Vec<_> = nodes.iter().map(json::node).collect();
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Format::Table => print!("{}", ls_table(&nodes, &self_id)),
    }
    Ok(())
}

async fn ps(client: &Client, args: &PsArgs) -> anyhow::Result<()> {
    let refs = resolve_self(client, &args.nodes).await?;
    let mut ids = Vec::new();
    for r in &refs {
        ids.push(node_id(&get_node(client, r).await?).to_string());
    }
    let tasks = client
        .control()
        .list_tasks(pb::ListTasksRequest {
            node_ids: ids,
            ..Default::default()
        })
        .await
        .map_err(|s| client.rpc_error(s))?
        .into_inner()
        .tasks;
    if args.quiet {
        for t in &tasks {
            println!("{}", t.meta.as_ref().map_or("", |m| m.id.as_str()));
        }
        return Ok(());
    }
    match args.format {
        Format::Json => {
            let mut tasks = tasks;
            tasks.sort_by(super::task::cmp_tasks);
            let v: Vec<serde_json::Value> = tasks.iter().map(super::task::task_json).collect();
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Format::Table => {
            let nodes = client
                .control()
                .list_nodes(pb::ListNodesRequest { role: None })
                .await
                .map_err(|s| client.rpc_error(s))?
                .into_inner()
                .nodes;
            let hostnames = nodes
                .iter()
                .map(|n| {
                    (
                        node_id(n).to_string(),
                        n.description
                            .as_ref()
                            .map(|d| d.hostname.clone())
                            .unwrap_or_default(),
                    )
                })
                .collect();
            print!(
                "{}",
                super::task::ps_table(
                    &tasks,
                    &hostnames,
                    args.no_trunc,
                    std::time::SystemTime::now()
                )
            );
        }
    }
    Ok(())
}

async fn inspect(client: &Client, args: &InspectArgs) -> anyhow::Result<()> {
    let refs = resolve_self(client, &args.nodes).await?;
    let mut found = Vec::new();
    let mut errors = Vec::new();
    for r in &refs {
        match get_node(client, r).await {
            Ok(n) => found.push(n),
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    // As docker: print what was found, then fail naming what was not.
    if args.pretty {
        let texts: Vec<String> = found.iter().map(pretty).collect();
        print!("{}", texts.join("\n\n"));
    } else {
        let v: Vec<_> = found.iter().map(json::node).collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(anyhow::anyhow!(errors.join("; ")))
    }
}

async fn update(client: &Client, args: &UpdateArgs) -> anyhow::Result<()> {
    let refs = resolve_self(client, std::slice::from_ref(&args.node)).await?;
    let r = refs.first().context("no node given")?;
    modify_spec(client, r, |spec| {
        merge_update(spec, args).map_err(anyhow::Error::msg)
    })
    .await?;
    // Docker echoes the reference as given.
    println!("{}", args.node);
    Ok(())
}

/// Reads the node, applies `change` to its spec and writes it with the
/// version read; on a version conflict reads again and re-applies, so a
/// change ("add this label") is never lost to a concurrent status update.
async fn modify_spec(
    client: &Client,
    node_ref: &str,
    change: impl Fn(&mut pb::NodeSpec) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let node = get_node(client, node_ref).await?;
        let mut spec = node.spec.clone().unwrap_or_default();
        change(&mut spec)?;
        match client
            .control()
            .update_node(pb::UpdateNodeRequest {
                node_id: node_id(&node).to_string(),
                node_version: node.meta.as_ref().map_or(0, |m| m.version),
                spec: Some(spec),
            })
            .await
        {
            Ok(_) => return Ok(()),
            Err(s) if s.code() == tonic::Code::Aborted && attempt < UPDATE_ATTEMPTS => {
                conflict_backoff(attempt).await;
            }
            Err(s) => return Err(client.rpc_error(s).into()),
        }
    }
}

async fn set_role(client: &Client, nodes: &[String], role: Role) -> anyhow::Result<()> {
    let refs = resolve_self(client, nodes).await?;
    for (given, r) in nodes.iter().zip(&refs) {
        let node = get_node(client, r).await?;
        let spec = node.spec.clone().unwrap_or_default();
        if spec.desired_role() == role.into() {
            println!("Node {given} is already a {}.", json::role(role.into()));
            continue;
        }
        modify_spec(client, r, |spec| {
            spec.desired_role = pb::NodeRole::from(role) as i32;
            Ok(())
        })
        .await?;
        match role {
            Role::Manager => println!("Node {given} promoted to a manager in the swarm."),
            Role::Worker => println!("Manager {given} demoted in the swarm."),
        }
    }
    Ok(())
}

async fn rm(client: &Client, args: &RmArgs) -> anyhow::Result<()> {
    let refs = resolve_self(client, &args.nodes).await?;
    let mut errors = Vec::new();
    for (given, r) in args.nodes.iter().zip(&refs) {
        let removed = async {
            let node = get_node(client, r).await?;
            client
                .control()
                .remove_node(pb::RemoveNodeRequest {
                    node_id: node_id(&node).to_string(),
                    force: args.force,
                })
                .await
                .map_err(|s| client.rpc_error(s))?;
            anyhow::Ok(())
        }
        .await;
        match removed {
            Ok(()) => println!("{given}"),
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(anyhow::anyhow!(errors.join("; ")))
    }
}

/// This node's ID, from its daemon.
async fn self_id(client: &Client) -> anyhow::Result<String> {
    let info = client
        .swarm()
        .info(pb::InfoRequest {})
        .await
        .map_err(|s| client.rpc_error(s))?
        .into_inner();
    if info.node_id.is_empty() {
        anyhow::bail!(
            "this node is not part of a swarm: run `swarm init` or `swarm join` first, or point -H at a manager's socket"
        );
    }
    Ok(info.node_id)
}

/// Replaces "self" with this node's ID, asking the daemon at most once.
async fn resolve_self(client: &Client, refs: &[String]) -> anyhow::Result<Vec<String>> {
    if !refs.iter().any(|r| r == "self") {
        return Ok(refs.to_vec());
    }
    let me = self_id(client).await?;
    Ok(refs
        .iter()
        .map(|r| if r == "self" { me.clone() } else { r.clone() })
        .collect())
}

async fn get_node(client: &Client, node_ref: &str) -> anyhow::Result<pb::Node> {
    client
        .control()
        .get_node(pb::GetNodeRequest {
            node_ref: node_ref.to_string(),
        })
        .await
        .map_err(|s| client.rpc_error(s))?
        .into_inner()
        .node
        .with_context(|| format!("the daemon returned no node for {node_ref:?}"))
}

fn node_id(n: &pb::Node) -> &str {
    n.meta.as_ref().map_or("", |m| m.id.as_str())
}

fn hostname(n: &pb::Node) -> &str {
    n.description.as_ref().map_or("", |d| d.hostname.as_str())
}

/// Docker's order: hostname in natural order, then ID.
fn sort_nodes(nodes: &mut [pb::Node]) {
    nodes.sort_by(|a, b| {
        natural_cmp(hostname(a), hostname(b)).then_with(|| node_id(a).cmp(node_id(b)))
    });
}

fn role_filter(filters: &[Filter]) -> Option<Role> {
    let mut roles = filters.iter().map(|Filter::Role(r)| *r);
    let first = roles.next()?;
    // Several role filters match any of them, as docker's do.
    roles.all(|r| r == first).then_some(first)
}

fn parse_filter(s: &str) -> Result<Filter, String> {
    let (key, value) = s
        .split_once('=')
        .ok_or_else(|| format!("bad format of filter {s:?} (expected name=value)"))?;
    match key {
        "role" => Role::from_str(value, true)
            .map(Filter::Role)
            .map_err(|_| format!("invalid filter 'role={value}': use role=manager or role=worker")),
        _ => Err(format!("invalid filter {key:?}: only role is supported")),
    }
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').unwrap_or((s, ""));
    if k.trim().is_empty() {
        return Err(format!("invalid label {s:?}: the key is empty"));
    }
    Ok((k.to_string(), v.to_string()))
}

/// Applies `node update` flags to a spec in docker's order: role,
/// availability, added labels, removed labels.
fn merge_update(spec: &mut pb::NodeSpec, args: &UpdateArgs) -> Result<(), String> {
    if let Some(r) = args.role {
        spec.desired_role = pb::NodeRole::from(r) as i32;
    }
    if let Some(a) = args.availability {
        spec.availability = pb::NodeAvailability::from(a) as i32;
    }
    let labels = &mut spec.annotations.get_or_insert_with(Default::default).labels;
    for (k, v) in &args.label_add {
        labels.insert(k.clone(), v.clone());
    }
    for k in &args.label_rm {
        if labels.remove(k).is_none() {
            return Err(format!("key {k} doesn't exist in node's labels"));
        }
    }
    Ok(())
}

fn ls_table(nodes: &[pb::Node], self_id: &str) -> String {
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            let id = node_id(n);
            let spec = n.spec.clone().unwrap_or_default();
            let state = n
                .status
                .as_ref()
                .map_or(pb::NodeState::Unknown, pb::NodeStatus::state);
            vec![
                if id == self_id {
                    format!("{id} *")
                } else {
                    id.to_string()
                },
                hostname(n).to_string(),
                capitalize(json::node_state(state)),
                capitalize(json::availability(spec.availability())),
                manager_status(n),
                n.description
                    .as_ref()
                    .and_then(|d| d.engine.as_ref())
                    .map(|e| e.engine_version.clone())
                    .unwrap_or_default(),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "HOSTNAME",
            "STATUS",
            "AVAILABILITY",
            "MANAGER STATUS",
            "ENGINE VERSION",
        ],
        &rows,
    )
}

fn manager_status(n: &pb::Node) -> String {
    match &n.manager_status {
        None => String::new(),
        Some(m) if m.leader => "Leader".into(),
        Some(m) => capitalize(json::reachability(m.reachability())),
    }
}

/// `node inspect --pretty`, laid out as docker's template.
fn pretty(n: &pb::Node) -> String {
    let meta = n.meta.clone().unwrap_or_default();
    let spec = n.spec.clone().unwrap_or_default();
    let annotations = spec.annotations.clone().unwrap_or_default();
    let desc = n.description.clone().unwrap_or_default();
    let platform = desc.platform.unwrap_or_default();
    let resources = desc.resources.unwrap_or_default();
    let engine = desc.engine.unwrap_or_default();
    let status = n.status.clone().unwrap_or_default();

    let mut out = String::new();
    let mut kv = |k: &str, v: &str| {
        out.push_str(format!("{k:<24}{v}").trim_end());
        out.push('\n');
    };
    kv("ID:", &meta.id);
    if !annotations.name.is_empty() {
        kv("Name:", &annotations.name);
    }
    if !annotations.labels.is_empty() {
        kv("Labels:", "");
        labels(&mut kv, &annotations.labels);
    }
    kv("Hostname:", &desc.hostname);
    kv(
        "Joined at:",
        &json::timestamp_human(meta.created_at.as_ref()),
    );
    kv("Status:", "");
    kv(" State:", &capitalize(json::node_state(status.state())));
    if !status.message.is_empty() {
        kv(" Message:", &status.message);
    }
    kv(
        " Availability:",
        &capitalize(json::availability(spec.availability())),
    );
    if !status.addr.is_empty() {
        kv(" Address:", &status.addr);
    }
    if let Some(m) = &n.manager_status {
        kv("Manager Status:", "");
        kv(" Address:", &m.addr);
        kv(
            " Raft Status:",
            &capitalize(json::reachability(m.reachability())),
        );
        kv(" Leader:", if m.leader { "Yes" } else { "No" });
    }
    kv("Platform:", "");
    kv(" Operating System:", &platform.os);
    kv(" Architecture:", &platform.architecture);
    kv("Resources:", "");
    kv(" CPUs:", &(resources.nano_cpus / 1_000_000_000).to_string());
    kv(" Memory:", &output::bytes_size(resources.memory_bytes));
    kv("Engine Version:", &engine.engine_version);
    if !engine.labels.is_empty() {
        kv("Engine Labels:", "");
        labels(&mut kv, &engine.labels);
    }
    out
}

fn labels(kv: &mut impl FnMut(&str, &str), labels: &BTreeMap<String, String>) {
    for (k, v) in labels {
        let item = if v.is_empty() {
            format!(" - {k}")
        } else {
            format!(" - {k}={v}")
        };
        // A list item, not a key: no value column.
        kv(&item, "");
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command, json::tests::node_fixture};

    fn parse_node(args: &[&str]) -> NodeCommand {
        let mut argv = vec!["swarm", "node"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv) {
            Ok(Cli {
                command: Command::Node(cmd),
                ..
            }) => cmd,
            Ok(other) => panic!("parsed as {other:?}"),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn ls_marks_self_sorts_naturally_and_shows_the_leader() {
        let mut nodes = vec![
            node_fixture("w10", "worker10", pb::NodeState::Down, None),
            node_fixture("w2", "worker2", pb::NodeState::Ready, None),
            node_fixture(
                "m1",
                "manager1",
                pb::NodeState::Ready,
                Some((true, pb::Reachability::Reachable)),
            ),
            node_fixture(
                "m2b",
                "manager2",
                pb::NodeState::Unknown,
                Some((false, pb::Reachability::Unreachable)),
            ),
            node_fixture(
                "m2a",
                "manager2",
                pb::NodeState::Disconnected,
                Some((false, pb::Reachability::Reachable)),
            ),
        ];
        if let Some(s) = nodes[1].spec.as_mut() {
            s.availability = pb::NodeAvailability::Active as i32;
        }
        sort_nodes(&mut nodes);
        assert_eq!(
            ls_table(&nodes, "m2a"),
            "\
ID      HOSTNAME   STATUS         AVAILABILITY   MANAGER STATUS   ENGINE VERSION
m1      manager1   Ready          Drain          Leader           0.1.0
m2a *   manager2   Disconnected   Drain          Reachable        0.1.0
m2b     manager2   Unknown        Drain          Unreachable      0.1.0
w2      worker2    Ready          Active                          0.1.0
w10     worker10   Down           Drain                           0.1.0
"
        );
    }

    #[test]
    fn ls_flags_parse() {
        let NodeCommand::Ls(a) = parse_node(&["ls", "-q", "--filter", "role=manager"]) else {
            panic!("not ls")
        };
        assert!(a.quiet);
        assert_eq!(role_filter(&a.filter), Some(Role::Manager));
        let NodeCommand::Ls(a) = parse_node(&[
            "list",
            "--format",
            "json",
            "-f",
            "role=worker",
            "-f",
            "role=manager",
        ]) else {
            panic!("not ls")
        };
        assert_eq!(a.format, Format::Json);
        assert_eq!(role_filter(&a.filter), None);
        assert!(Cli::try_parse_from(["swarm", "node", "ls", "-f", "role=admin"]).is_err());
        assert!(Cli::try_parse_from(["swarm", "node", "ls", "-f", "name=x"]).is_err());
        assert!(Cli::try_parse_from(["swarm", "node", "ls", "-f", "role"]).is_err());
    }

    #[test]
    fn labels_parse_like_docker() {
        assert_eq!(parse_label("zone=a"), Ok(("zone".into(), "a".into())));
        assert_eq!(parse_label("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert_eq!(parse_label("ssd"), Ok(("ssd".into(), String::new())));
        assert!(parse_label("=x").is_err());
        assert!(parse_label("").is_err());
    }

    #[test]
    fn update_merges_flags_into_the_spec() {
        let NodeCommand::Update(args) = parse_node(&[
            "update",
            "--availability",
            "pause",
            "--role",
            "manager",
            "--label-add",
            "zone=b",
            "--label-add",
            "ssd",
            "--label-rm",
            "old",
            "self",
        ]) else {
            panic!("not update")
        };
        assert_eq!(args.node, "self");
        let mut spec = pb::NodeSpec {
            annotations: Some(pb::Annotations {
                name: String::new(),
                labels: BTreeMap::from([("zone".into(), "a".into()), ("old".into(), "1".into())]),
            }),
            ..Default::default()
        };
        merge_update(&mut spec, &args).unwrap();
        assert_eq!(spec.availability(), pb::NodeAvailability::Pause);
        assert_eq!(spec.desired_role(), pb::NodeRole::Manager);
        assert_eq!(
            spec.annotations.unwrap().labels,
            BTreeMap::from([("zone".into(), "b".into()), ("ssd".into(), String::new())])
        );
    }

    #[test]
    fn update_fails_on_removing_a_missing_label_and_leaves_the_rest_alone() {
        let NodeCommand::Update(args) = parse_node(&["update", "--label-rm", "nope", "n1"]) else {
            panic!("not update")
        };
        let mut spec = pb::NodeSpec::default();
        assert_eq!(
            merge_update(&mut spec, &args),
            Err("key nope doesn't exist in node's labels".into())
        );
        let NodeCommand::Update(args) = parse_node(&["update", "n1"]) else {
            panic!("not update")
        };
        let mut spec = pb::NodeSpec {
            desired_role: pb::NodeRole::Manager as i32,
            availability: pb::NodeAvailability::Drain as i32,
            annotations: None,
        };
        merge_update(&mut spec, &args).unwrap();
        assert_eq!(spec.desired_role(), pb::NodeRole::Manager);
        assert_eq!(spec.availability(), pb::NodeAvailability::Drain);
    }

    #[test]
    fn node_commands_take_several_nodes() {
        let NodeCommand::Rm(a) = parse_node(&["rm", "-f", "a", "b"]) else {
            panic!("not rm")
        };
        assert!(a.force);
        assert_eq!(a.nodes, ["a", "b"]);
        assert!(matches!(parse_node(&["remove", "a"]), NodeCommand::Rm(_)));
        assert!(matches!(
            parse_node(&["promote", "a", "b"]),
            NodeCommand::Promote(_)
        ));
        assert!(matches!(
            parse_node(&["demote", "a"]),
            NodeCommand::Demote(_)
        ));
        let NodeCommand::Inspect(a) = parse_node(&["inspect", "--pretty", "self"]) else {
            panic!("not inspect")
        };
        assert!(a.pretty);
        for cmd in ["rm", "promote", "demote", "inspect", "update"] {
            assert!(
                Cli::try_parse_from(["swarm", "node", cmd]).is_err(),
                "{cmd} without a node"
            );
        }
    }

    #[test]
    fn pretty_lays_out_like_docker() {
        let mut n = node_fixture(
            "abc",
            "m1",
            pb::NodeState::Ready,
            Some((true, pb::Reachability::Reachable)),
        );
        if let Some(d) = n.description.as_mut().and_then(|d| d.engine.as_mut()) {
            d.labels.insert("gpu".into(), String::new());
        }
        assert_eq!(
            pretty(&n),
            "\
ID:                     abc
Labels:
 - zone=a
Hostname:               m1
Joined at:              2016-06-16 22:52:44.9910662 +0000 UTC
Status:
 State:                 Ready
 Availability:          Drain
 Address:               10.0.0.5
Manager Status:
 Address:               10.0.0.5:2377
 Raft Status:           Reachable
 Leader:                Yes
Platform:
 Operating System:      linux
 Architecture:          x86_64
Resources:
 CPUs:                  2
 Memory:                7.705GiB
Engine Version:         0.1.0
Engine Labels:
 - gpu
"
        );
    }
}
