//! `swarm network create|ls|inspect|rm`.
//!
//! Clients of the Control API, shaped like docker's `network` commands for
//! swarm-scoped overlay networks. Network references (ID, name, ID prefix)
//! are resolved by the manager; subnets are checked and chosen there too.
use std::collections::BTreeMap;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde::Serialize;
use swarm_proto::v1 as pb;

use super::{
    json,
    output::{Format, natural_cmp, table},
};
use crate::api::client::Client;

#[derive(Debug, Subcommand)]
pub enum NetworkCommand {
    /// Create an overlay network.
    Create(CreateArgs),
    /// List networks.
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// Display detailed information on one or more networks.
    Inspect(RefsArgs),
    /// Remove one or more networks.
    #[command(visible_alias = "remove")]
    Rm(RefsArgs),
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Driver to manage the network (only overlay).
    #[arg(short, long, default_value = "overlay")]
    pub driver: String,
    /// Subnet in CIDR format (default: the next free one of the swarm's
    /// default address pools).
    #[arg(long, value_name = "CIDR")]
    pub subnet: Option<String>,
    /// Gateway for the subnet (default: its first address).
    #[arg(long, value_name = "IP", requires = "subnet")]
    pub gateway: Option<String>,
    /// Let standalone containers attach to the network.
    #[arg(long)]
    pub attachable: bool,
    /// Create the routing-mesh network (there is one at most).
    #[arg(long)]
    pub ingress: bool,
    /// Restrict external access to the network.
    #[arg(long)]
    pub internal: bool,
    /// Set metadata on the network (key=value).
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub labels: Vec<(String, String)>,
    /// Set driver specific options (key=value).
    #[arg(short, long = "opt", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub opts: Vec<(String, String)>,
    /// Network name.
    #[arg(value_name = "NETWORK")]
    pub name: String,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Output format: "table" (default) or "json" (an array of networks as
    /// `network inspect` shows them).
    #[arg(long, default_value = "table")]
    pub format: Format,
    /// Only display network IDs.
    #[arg(short, long)]
    pub quiet: bool,
    /// Do not truncate the output.
    #[arg(long)]
    pub no_trunc: bool,
    /// Filter output: name=, id=, label=KEY[=VALUE], driver=, scope=swarm.
    #[arg(short, long, value_name = "FILTER", value_parser = parse_filter)]
    pub filter: Vec<Filter>,
}

#[derive(Debug, Args)]
pub struct RefsArgs {
    /// Network name, ID or ID prefix.
    #[arg(value_name = "NETWORK", required = true)]
    pub networks: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Filter {
    Name(String),
    Id(String),
    Label(String),
    Driver(String),
    /// Every network here is swarm-scoped: `scope=swarm` keeps all,
    /// `local` or `global` none.
    Scope(String),
}

fn parse_filter(s: &str) -> Result<Filter, String> {
    let (key, value) = s
        .split_once('=')
        .ok_or_else(|| format!("bad format of filter {s:?} (expected name=value)"))?;
    let v = value.to_string();
    match key {
        "name" => Ok(Filter::Name(v)),
        "id" => Ok(Filter::Id(v)),
        "label" => Ok(Filter::Label(v)),
        "driver" => Ok(Filter::Driver(v)),
        "scope" if ["swarm", "local", "global"].contains(&value) => Ok(Filter::Scope(v)),
        "scope" => Err(format!(
            "invalid filter 'scope={value}': use swarm, local or global"
        )),
        _ => Err(format!(
            "invalid filter {key:?}: use name, id, label, driver or scope"
        )),
    }
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').unwrap_or((s, ""));
    if k.trim().is_empty() {
        return Err(format!("invalid value {s:?}: the key is empty"));
    }
    Ok((k.to_string(), v.to_string()))
}

pub async fn run(client: &Client, cmd: &NetworkCommand) -> anyhow::Result<()> {
    match cmd {
        NetworkCommand::Create(a) => create(client, a).await,
        NetworkCommand::Ls(a) => ls(client, a).await,
        NetworkCommand::Inspect(a) => inspect(client, a).await,
        NetworkCommand::Rm(a) => rm(client, a).await,
    }
}

/// The spec `network create` asks for.
pub fn create_spec(a: &CreateArgs) -> pb::NetworkSpec {
    let ipam = (a.subnet.is_some() || a.gateway.is_some()).then(|| pb::IpamOptions {
        driver: None,
        configs: vec![pb::IpamConfig {
            family: pb::IpFamily::Ipv4 as i32,
            subnet: a.subnet.clone().unwrap_or_default(),
            gateway: a.gateway.clone().unwrap_or_default(),
            ..Default::default()
        }],
    });
    pb::NetworkSpec {
        annotations: Some(pb::Annotations {
            name: a.name.clone(),
            labels: a.labels.iter().cloned().collect(),
        }),
        driver_config: Some(pb::Driver {
            name: a.driver.clone(),
            options: a.opts.iter().cloned().collect(),
        }),
        ipv6_enabled: false,
        internal: a.internal,
        ipam,
        attachable: a.attachable,
        ingress: a.ingress,
    }
}

async fn create(client: &Client, a: &CreateArgs) -> anyhow::Result<()> {
    let n = client
        .control()
        .create_network(pb::CreateNetworkRequest {
            spec: Some(create_spec(a)),
        })
        .await
        .map_err(|s| client.rpc_error(s))?
        .into_inner()
        .network
        .context("the daemon returned no network")?;
    println!("{}", id(&n));
    Ok(())
}

fn id(n: &pb::Network) -> &str {
    n.meta.as_ref().map_or("", |m| m.id.as_str())
}

fn name(n: &pb::Network) -> &str {
    n.spec
        .as_ref()
        .and_then(|s| s.annotations.as_ref())
        .map_or("", |a| a.name.as_str())
}

fn driver(n: &pb::Network) -> &str {
    n.spec
        .as_ref()
        .and_then(|s| s.driver_config.as_ref())
        .map_or("overlay", |d| d.name.as_str())
}

fn ls_request(filters: &[Filter]) -> pb::ListNetworksRequest {
    let mut req = pb::ListNetworksRequest::default();
    for f in filters {
        match f {
            Filter::Name(v) => req.names.push(v.clone()),
            Filter::Id(v) => req.ids.push(v.clone()),
            Filter::Label(v) => req.labels.push(v.clone()),
            Filter::Driver(v) => req.drivers.push(v.clone()),
            Filter::Scope(_) => {}
        }
    }
    req
}

async fn ls(client: &Client, a: &LsArgs) -> anyhow::Result<()> {
    let mut networks = client
        .control()
        .list_networks(ls_request(&a.filter))
        .await
        .map_err(|s| client.rpc_error(s))?
        .into_inner()
        .networks;
    // Every network here is swarm-scoped.
    if a.filter
        .iter()
        .any(|f| matches!(f, Filter::Scope(s) if s != "swarm"))
    {
        networks.clear();
    }
    networks.sort_by(|x, y| natural_cmp(name(x), name(y)));
    if a.quiet {
        for n in &networks {
            println!("{}", short_id(id(n), a.no_trunc));
        }
        return Ok(());
    }
    match a.format {
        Format::Json => {
            let v: Vec<Network> = networks.iter().map(network_json).collect();
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Format::Table => print!("{}", ls_table(&networks, a.no_trunc)),
    }
    Ok(())
}

fn short_id(id: &str, no_trunc: bool) -> &str {
    if no_trunc {
        id
    } else {
        id.get(..12).unwrap_or(id)
    }
}

/// Docker's `network ls` table.
pub fn ls_table(networks: &[pb::Network], no_trunc: bool) -> String {
    let rows: Vec<Vec<String>> = networks
        .iter()
        .map(|n| {
            vec![
                short_id(id(n), no_trunc).to_string(),
                name(n).to_string(),
                driver(n).to_string(),
                "swarm".to_string(),
            ]
        })
        .collect();
    table(&["NETWORK ID", "NAME", "DRIVER", "SCOPE"], &rows)
}

async fn inspect(client: &Client, a: &RefsArgs) -> anyhow::Result<()> {
    let mut found = Vec::new();
    let mut errors = Vec::new();
    for r in &a.networks {
        match client
            .control()
            .get_network(pb::GetNetworkRequest {
                network_ref: r.clone(),
            })
            .await
        {
            Ok(resp) => found.extend(resp.into_inner().network),
            Err(s) => errors.push(format!("{:#}", anyhow::Error::from(client.rpc_error(s)))),
        }
    }
    // As docker: print what was found, then fail naming what was not.
    let v: Vec<Network> = found.iter().map(network_json).collect();
    println!("{}", serde_json::to_string_pretty(&v)?);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(anyhow::anyhow!(errors.join("; ")))
    }
}

async fn rm(client: &Client, a: &RefsArgs) -> anyhow::Result<()> {
    let mut errors = Vec::new();
    for r in &a.networks {
        match client
            .control()
            .remove_network(pb::RemoveNetworkRequest {
                network_ref: r.clone(),
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

/// A network as `docker network inspect` shows a swarm-scoped one.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Network {
    name: String,
    id: String,
    created: String,
    scope: &'static str,
    driver: String,
    #[serde(rename = "EnableIPv6")]
    enable_ipv6: bool,
    #[serde(rename = "IPAM")]
    ipam: Ipam,
    internal: bool,
    attachable: bool,
    ingress: bool,
    options: BTreeMap<String, String>,
    labels: BTreeMap<String, String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct Ipam {
    driver: String,
    options: Option<BTreeMap<String, String>>,
    config: Vec<IpamConfig>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct IpamConfig {
    subnet: String,
    gateway: String,
}

/// The JSON of `network inspect` and `network ls --format json`: docker's
/// fields, with the allocated subnet and the VXLAN ID among the options.
#[must_use]
pub fn network_json(n: &pb::Network) -> Network {
    let spec = n.spec.clone().unwrap_or_default();
    let annotations = spec.annotations.clone().unwrap_or_default();
    let mut options = spec
        .driver_config
        .as_ref()
        .map(|d| d.options.clone())
        .unwrap_or_default();
    if let Some(state) = &n.driver_state {
        options.extend(state.options.clone());
    }
    let ipam = n.ipam.as_ref().or(spec.ipam.as_ref());
    Network {
        name: annotations.name,
        id: id(n).to_string(),
        created: json::timestamp(n.meta.as_ref().and_then(|m| m.created_at.as_ref())),
        scope: "swarm",
        driver: driver(n).to_string(),
        enable_ipv6: spec.ipv6_enabled,
        ipam: Ipam {
            driver: ipam
                .and_then(|i| i.driver.as_ref())
                .map_or("default", |d| d.name.as_str())
                .to_string(),
            options: None,
            config: ipam
                .map(|i| {
                    i.configs
                        .iter()
                        .map(|c| IpamConfig {
                            subnet: c.subnet.clone(),
                            gateway: c.gateway.clone(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
        },
        internal: spec.internal,
        attachable: spec.attachable,
        ingress: spec.ingress,
        options,
        labels: annotations.labels,
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn parse(args: &[&str]) -> Result<NetworkCommand, clap::Error> {
        let argv = ["swarm", "network"].iter().chain(args);
        match Cli::try_parse_from(argv)?.command {
            Command::Network(c) => Ok(c),
            other => panic!("parsed {other:?}"),
        }
    }

    fn net() -> pb::Network {
        pb::Network {
            meta: Some(pb::Meta {
                id: "abcdefghijklmnopqrstuvwxy".into(),
                ..Default::default()
            }),
            spec: Some(pb::NetworkSpec {
                annotations: Some(pb::Annotations {
                    name: "web-net".into(),
                    labels: [("env".to_string(), "prod".to_string())].into(),
                }),
                driver_config: Some(pb::Driver {
                    name: "overlay".into(),
                    options: [("encrypted".to_string(), String::new())].into(),
                }),
                attachable: true,
                ..Default::default()
            }),
            ipam: Some(pb::IpamOptions {
                driver: Some(pb::Driver {
                    name: "default".into(),
                    ..Default::default()
                }),
                configs: vec![pb::IpamConfig {
                    subnet: "10.0.1.0/24".into(),
                    gateway: "10.0.1.1".into(),
                    ..Default::default()
                }],
            }),
            driver_state: Some(pb::Driver {
                name: "overlay".into(),
                options: [(
                    "com.docker.network.driver.overlay.vxlanid_list".to_string(),
                    "4097".to_string(),
                )]
                .into(),
            }),
            vni: 4097,
            ..Default::default()
        }
    }

    #[test]
    fn create_flags_fill_the_spec() {
        let Ok(NetworkCommand::Create(a)) = parse(&[
            "create",
            "-d",
            "overlay",
            "--subnet",
            "10.9.0.0/16",
            "--gateway",
            "10.9.0.254",
            "--attachable",
            "--label",
            "env=prod",
            "--opt",
            "encrypted",
            "web-net",
        ]) else {
            panic!("not create")
        };
        let spec = create_spec(&a);
        assert_eq!(spec.annotations.as_ref().unwrap().name, "web-net");
        assert_eq!(spec.annotations.as_ref().unwrap().labels["env"], "prod");
        let d = spec.driver_config.as_ref().unwrap();
        assert_eq!(
            (d.name.as_str(), d.options["encrypted"].as_str()),
            ("overlay", "")
        );
        let c = &spec.ipam.as_ref().unwrap().configs[0];
        assert_eq!(
            (c.subnet.as_str(), c.gateway.as_str()),
            ("10.9.0.0/16", "10.9.0.254")
        );
        assert!(spec.attachable && !spec.ingress);
        // Without flags: overlay, no IPAM (the manager picks the subnet).
        let Ok(NetworkCommand::Create(a)) = parse(&["create", "n"]) else {
            panic!("not create")
        };
        let spec = create_spec(&a);
        assert_eq!(spec.driver_config.unwrap().name, "overlay");
        assert!(spec.ipam.is_none());
        assert!(parse(&["create", "--gateway", "10.0.0.1", "n"]).is_err());
        assert!(parse(&["create"]).is_err());
    }

    #[test]
    fn filters_parse_like_docker() {
        assert_eq!(parse_filter("name=web"), Ok(Filter::Name("web".into())));
        assert_eq!(parse_filter("label=a=b"), Ok(Filter::Label("a=b".into())));
        assert!(parse_filter("scope=moon").is_err());
        assert!(parse_filter("type=custom").is_err());
        assert!(parse_filter("name").is_err());
        let req = ls_request(&[Filter::Name("a".into()), Filter::Driver("overlay".into())]);
        assert_eq!(
            (req.names, req.drivers),
            (vec!["a".into()], vec!["overlay".into()])
        );
    }

    #[test]
    fn ls_prints_dockers_table() {
        assert_eq!(
            ls_table(&[net()], false),
            "NETWORK ID     NAME      DRIVER    SCOPE\nabcdefghijkl   web-net   overlay   swarm\n"
        );
        assert!(ls_table(&[net()], true).contains("abcdefghijklmnopqrstuvwxy"));
    }

    #[test]
    fn inspect_json_is_dockers() {
        let v = serde_json::to_value(network_json(&net())).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "Name": "web-net",
                "Id": "abcdefghijklmnopqrstuvwxy",
                "Created": "0001-01-01T00:00:00Z",
                "Scope": "swarm",
                "Driver": "overlay",
                "EnableIPv6": false,
                "IPAM": {
                    "Driver": "default",
                    "Options": null,
                    "Config": [{ "Subnet": "10.0.1.0/24", "Gateway": "10.0.1.1" }]
                },
                "Internal": false,
                "Attachable": true,
                "Ingress": false,
                "Options": {
                    "com.docker.network.driver.overlay.vxlanid_list": "4097",
                    "encrypted": ""
                },
                "Labels": { "env": "prod" }
            })
        );
    }
}
