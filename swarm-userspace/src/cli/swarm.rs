//! `swarm init`, `swarm join`, `swarm leave` and `swarm join-token`.
//!
//! Turns docker's `swarm` flags into Swarm and Control API requests and
//! prints docker's messages. Owns the client-side defaults (port 2377, the
//! cluster spec `init` proposes); never decides what the daemon decides,
//! such as which address to advertise when none is given or whether leaving
//! is safe.
use std::{collections::BTreeMap, net::Ipv6Addr, time::Duration};

use anyhow::Context;
use clap::Args;
use swarm_proto::v1 as pb;

use super::{
    node::{Availability, Role},
    parse_duration,
};
use crate::api::client::Client;

/// Port of the cluster API when an address has none, as docker's.
pub const DEFAULT_PORT: u16 = 2377;

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Address other nodes reach this one at (ip or interface, optional
    /// port; default: chosen by the daemon, port from --listen-addr).
    #[arg(long, value_name = "ADDR[:PORT]", value_parser = parse_advertise_addr)]
    pub advertise_addr: Option<String>,
    /// Address to listen on for cluster traffic (ip or interface, optional
    /// port).
    #[arg(long, value_name = "ADDR[:PORT]", default_value = "0.0.0.0:2377", value_parser = parse_listen_addr)]
    pub listen_addr: String,
    /// Validity period of node certificates.
    #[arg(long, value_name = "DURATION", default_value = "2160h", value_parser = parse_duration)]
    pub cert_expiry: Duration,
    /// Heartbeat period of the dispatcher; a node is marked down after
    /// missing about three.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub dispatcher_heartbeat: Duration,
    /// Number of log entries between Raft snapshots.
    #[arg(long, value_name = "N", default_value_t = 10000)]
    pub snapshot_interval: u64,
    /// Number of additional Raft snapshots to retain.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub max_snapshots: u64,
    /// Finished tasks kept per slot (negative: keep all).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 5,
        allow_hyphen_values = true
    )]
    pub task_history_limit: i64,
    /// Make this node the only manager of a new cluster built from its
    /// current state (recovery after losing quorum).
    #[arg(long)]
    pub force_new_cluster: bool,
    /// Address pool(s) overlay subnets are carved from (default 10.0.0.0/8).
    /// Repeat or separate with commas.
    #[arg(long = "default-addr-pool", value_name = "CIDR", value_delimiter = ',', value_parser = parse_cidr)]
    pub default_addr_pools: Vec<String>,
    /// Prefix length of the subnets carved from the default address pools.
    #[arg(long, value_name = "BITS", default_value_t = 24, value_parser = clap::value_parser!(u32).range(1..=32))]
    pub default_addr_pool_mask_length: u32,
    /// UDP port of the VXLAN traffic of overlay networks between nodes.
    #[arg(long, value_name = "PORT", default_value_t = 4789, value_parser = clap::value_parser!(u32).range(1024..=49151))]
    pub data_path_port: u32,
    /// Availability of this node.
    #[arg(long, value_enum, default_value_t = Availability::Active)]
    pub availability: Availability,
}

impl InitArgs {
    pub fn to_request(&self) -> anyhow::Result<pb::InitRequest> {
        let duration = |d: Duration, flag: &str| {
            prost_types::Duration::try_from(d).with_context(|| format!("--{flag} is out of range"))
        };
        Ok(pb::InitRequest {
            listen_addr: self.listen_addr.clone(),
            advertise_addr: self.advertise_addr.clone().unwrap_or_default(),
            force_new_cluster: self.force_new_cluster,
            spec: Some(pb::ClusterSpec {
                annotations: Some(pb::Annotations {
                    name: "default".into(),
                    labels: BTreeMap::new(),
                }),
                orchestration: Some(pb::OrchestrationConfig {
                    task_history_retention_limit: self.task_history_limit,
                }),
                // Ticks and the slow-follower window are swarmkit's defaults;
                // docker has no flags for them.
                raft: Some(pb::RaftConfig {
                    snapshot_interval: self.snapshot_interval,
                    keep_old_snapshots: self.max_snapshots,
                    log_entries_for_slow_followers: 500,
                    heartbeat_tick: 1,
                    election_tick: 10,
                }),
                dispatcher: Some(pb::DispatcherConfig {
                    heartbeat_period: Some(duration(
                        self.dispatcher_heartbeat,
                        "dispatcher-heartbeat",
                    )?),
                }),
                ca_config: Some(pb::CaConfig {
                    node_cert_expiry: Some(duration(self.cert_expiry, "cert-expiry")?),
                    ..Default::default()
                }),
                encryption_config: Some(pb::EncryptionConfig::default()),
                task_defaults: None,
            }),
            availability: pb::NodeAvailability::from(self.availability) as i32,
            default_address_pool: self.default_addr_pools.clone(),
            subnet_size: self.default_addr_pool_mask_length,
            data_path_port: self.data_path_port,
        })
    }
}

#[derive(Debug, Args)]
pub struct JoinArgs {
    /// Token for entry into the swarm (`swarm join-token` on a manager).
    #[arg(long, required = true)]
    pub token: String,
    /// Address other nodes reach this one at (ip or interface, optional
    /// port).
    #[arg(long, value_name = "ADDR[:PORT]", value_parser = parse_advertise_addr)]
    pub advertise_addr: Option<String>,
    /// Address to listen on for cluster traffic (ip or interface, optional
    /// port).
    #[arg(long, value_name = "ADDR[:PORT]", default_value = "0.0.0.0:2377", value_parser = parse_listen_addr)]
    pub listen_addr: String,
    /// Availability of this node.
    #[arg(long, value_enum, default_value_t = Availability::Active)]
    pub availability: Availability,
    /// A manager of the swarm (port 2377 when omitted).
    #[arg(value_name = "HOST[:PORT]", value_parser = parse_remote_addr)]
    pub remote: String,
}

impl JoinArgs {
    pub fn to_request(&self) -> pb::JoinRequest {
        pb::JoinRequest {
            token: self.token.clone(),
            remote_addr: self.remote.clone(),
            listen_addr: self.listen_addr.clone(),
            advertise_addr: self.advertise_addr.clone().unwrap_or_default(),
            availability: pb::NodeAvailability::from(self.availability) as i32,
        }
    }
}

#[derive(Debug, Args)]
pub struct LeaveArgs {
    /// Leave even if this is a manager whose departure may break quorum.
    #[arg(short, long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct JoinTokenArgs {
    /// Only print the token.
    #[arg(short, long)]
    pub quiet: bool,
    /// Replace the token with a new one; the old one stops working.
    #[arg(long)]
    pub rotate: bool,
    /// Which token: for workers or for managers.
    #[arg(value_enum)]
    pub role: Role,
}

pub async fn init(client: &Client, args: &InitArgs) -> anyhow::Result<()> {
    let resp = client
        .swarm()
        .init(args.to_request()?)
        .await
        .map_err(|s| client.rpc_error(s))?
        .into_inner();
    let addr = join_addr(&resp.advertise_addr, &args.listen_addr);
    print!("{}", init_message(&resp.node_id, &resp.worker_token, &addr));
    Ok(())
}

pub async fn join(client: &Client, args: &JoinArgs) -> anyhow::Result<()> {
    let resp = client
        .swarm()
        .join(args.to_request())
        .await
        .map_err(|s| client.rpc_error(s))?
        .into_inner();
    println!(
        "This node joined a swarm as a {}.",
        super::json::role(resp.role())
    );
    Ok(())
}

pub async fn leave(client: &Client, args: &LeaveArgs) -> anyhow::Result<()> {
    client
        .swarm()
        .leave(pb::LeaveRequest { force: args.force })
        .await
        .map_err(|s| client.rpc_error(s))?;
    println!("Node left the swarm.");
    Ok(())
}

pub async fn join_token(client: &Client, args: &JoinTokenArgs) -> anyhow::Result<()> {
    let manager = args.role == Role::Manager;
    let role_name = super::json::role(args.role.into());
    let rotated = if args.rotate {
        let resp = client
            .control()
            .rotate_join_token(pb::RotateJoinTokenRequest {
                worker: !manager,
                manager,
            })
            .await
            .map_err(|s| client.rpc_error(s))?
            .into_inner();
        if !args.quiet {
            println!("Successfully rotated {role_name} join token.\n");
        }
        resp.cluster
    } else {
        None
    };
    let cluster = match rotated {
        Some(c) => c,
        None => client
            .control()
            .get_cluster(pb::GetClusterRequest {})
            .await
            .map_err(|s| client.rpc_error(s))?
            .into_inner()
            .cluster
            .context("the daemon returned no cluster object")?,
    };
    let tokens = cluster
        .root_ca
        .and_then(|ca| ca.join_tokens)
        .context("the cluster has no join tokens yet; retry once the swarm is initialized")?;
    let token = if manager {
        tokens.manager
    } else {
        tokens.worker
    };
    if args.quiet {
        println!("{token}");
        return Ok(());
    }
    let info = client
        .swarm()
        .info(pb::InfoRequest {})
        .await
        .map_err(|s| client.rpc_error(s))?
        .into_inner();
    print!(
        "{}",
        join_command_message(args.role, &token, &manager_addr(&info))
    );
    Ok(())
}

fn init_message(node_id: &str, worker_token: &str, addr: &str) -> String {
    format!(
        "Swarm initialized: current node ({node_id}) is now a manager.\n\n{}To add a manager to this swarm, run 'swarm join-token manager' and follow the instructions.\n\n",
        join_command_message(Role::Worker, worker_token, addr)
    )
}

fn join_command_message(role: Role, token: &str, addr: &str) -> String {
    format!(
        "To add a {} to this swarm, run the following command:\n\n    swarm join --token {token} {addr}\n\n",
        super::json::role(role.into())
    )
}

/// The address joiners should dial: the advertised one, with the listen
/// port when the daemon reported an address without one.
fn join_addr(advertise: &str, listen: &str) -> String {
    match split_host_port(advertise) {
        Ok((host, None)) => {
            let port = split_host_port(listen)
                .ok()
                .and_then(|(_, p)| p)
                .unwrap_or(DEFAULT_PORT);
            join_host_port(&host, port)
        }
        _ => advertise.to_string(),
    }
}

/// This manager's cluster address as its swarm info reports it: its own
/// entry among the managers (host:port, as docker's ManagerStatus.Addr),
/// else the node address with the default port.
fn manager_addr(info: &pb::InfoResponse) -> String {
    if let Some(m) = info.managers.iter().find(|m| m.node_id == info.node_id) {
        return m.addr.clone();
    }
    join_addr(&info.node_addr, "")
}

/// Splits "host", "host:port", "[v6]", "[v6]:port" or a bare IPv6 address.
fn split_host_port(s: &str) -> Result<(String, Option<u16>), String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty address".into());
    }
    let port = |p: &str| {
        p.parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("invalid port {p:?} in {s:?}: use 1-65535"))
    };
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("invalid address {s:?}: missing ']'"))?;
        host.parse::<Ipv6Addr>()
            .map_err(|_| format!("invalid IPv6 address {host:?} in {s:?}"))?;
        return match after {
            "" => Ok((host.to_string(), None)),
            _ => match after.strip_prefix(':') {
                Some(p) => Ok((host.to_string(), Some(port(p)?))),
                None => Err(format!("invalid address {s:?}: expected [ADDR]:PORT")),
            },
        };
    }
    if s.parse::<Ipv6Addr>().is_ok() {
        return Ok((s.to_string(), None));
    }
    match s.split_once(':') {
        None => Ok((s.to_string(), None)),
        Some((host, p)) if !host.is_empty() && !p.contains(':') => {
            Ok((host.to_string(), Some(port(p)?)))
        }
        Some(_) => Err(format!(
            "invalid address {s:?}: expected ADDR[:PORT] (write IPv6 as [ADDR]:PORT)"
        )),
    }
}

fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// An address with port 2377 filled in when it has none, as docker's
/// `--listen-addr` and the join address take them.
fn with_default_port(s: &str) -> Result<String, String> {
    let (host, port) = split_host_port(s)?;
    Ok(join_host_port(&host, port.unwrap_or(DEFAULT_PORT)))
}

fn parse_listen_addr(s: &str) -> Result<String, String> {
    with_default_port(s)
}

fn parse_remote_addr(s: &str) -> Result<String, String> {
    with_default_port(s)
}

/// Checked but kept as given: without a port the daemon advertises its
/// listen port.
fn parse_advertise_addr(s: &str) -> Result<String, String> {
    split_host_port(s)?;
    Ok(s.trim().to_string())
}

fn parse_cidr(s: &str) -> Result<String, String> {
    let s = s.trim();
    let (addr, bits) = s
        .split_once('/')
        .ok_or_else(|| format!("invalid address pool {s:?}: expected CIDR, e.g. 10.0.0.0/8"))?;
    let addr: std::net::IpAddr = addr
        .parse()
        .map_err(|_| format!("invalid address pool {s:?}: {addr:?} is not an IP address"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    match bits.parse::<u8>() {
        Ok(b) if b <= max => Ok(s.to_string()),
        _ => Err(format!(
            "invalid address pool {s:?}: prefix length must be 0-{max}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn parse(args: &[&str]) -> Command {
        let mut argv = vec!["swarm"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv) {
            Ok(cli) => cli.command,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn addresses_get_the_default_port() {
        assert_eq!(
            with_default_port("10.0.0.1").as_deref(),
            Ok("10.0.0.1:2377")
        );
        assert_eq!(
            with_default_port("10.0.0.1:4000").as_deref(),
            Ok("10.0.0.1:4000")
        );
        assert_eq!(with_default_port("eth0").as_deref(), Ok("eth0:2377"));
        assert_eq!(
            with_default_port("manager1").as_deref(),
            Ok("manager1:2377")
        );
        assert_eq!(with_default_port("::1").as_deref(), Ok("[::1]:2377"));
        assert_eq!(with_default_port("[::1]").as_deref(), Ok("[::1]:2377"));
        assert_eq!(
            with_default_port("[fe80::1]:7").as_deref(),
            Ok("[fe80::1]:7")
        );
        assert!(with_default_port("").is_err());
        assert!(with_default_port("host:").is_err());
        assert!(with_default_port("host:0").is_err());
        assert!(with_default_port("host:70000").is_err());
        assert!(with_default_port(":2377").is_err());
        assert!(with_default_port("[::1").is_err());
        assert!(with_default_port("a:b:c").is_err());
    }

    #[test]
    fn advertise_addr_keeps_a_missing_port_missing() {
        assert_eq!(parse_advertise_addr("10.0.0.1").as_deref(), Ok("10.0.0.1"));
        assert_eq!(
            parse_advertise_addr(" eth0:2377 ").as_deref(),
            Ok("eth0:2377")
        );
        assert!(parse_advertise_addr("x:y").is_err());
    }

    #[test]
    fn cidrs_are_checked() {
        assert_eq!(parse_cidr("10.0.0.0/8").as_deref(), Ok("10.0.0.0/8"));
        assert!(parse_cidr("fd00::/64").is_ok());
        assert!(parse_cidr("10.0.0.0").is_err());
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("ten/8").is_err());
    }

    #[test]
    fn init_defaults_are_dockers_with_a_1s_heartbeat() {
        let Command::Init(args) = parse(&["init"]) else {
            panic!("not init")
        };
        let req = args.to_request().unwrap();
        assert_eq!(req.listen_addr, "0.0.0.0:2377");
        assert_eq!(req.advertise_addr, "");
        assert!(!req.force_new_cluster);
        assert_eq!(req.availability(), pb::NodeAvailability::Active);
        assert!(req.default_address_pool.is_empty());
        assert_eq!(req.subnet_size, 24);
        assert_eq!(req.data_path_port, 4789);
        let spec = req.spec.unwrap();
        let raft = spec.raft.unwrap();
        assert_eq!(
            (raft.snapshot_interval, raft.keep_old_snapshots),
            (10000, 0)
        );
        assert_eq!(spec.orchestration.unwrap().task_history_retention_limit, 5);
        assert_eq!(
            spec.dispatcher.unwrap().heartbeat_period,
            Some(prost_types::Duration {
                seconds: 1,
                nanos: 0
            })
        );
        assert_eq!(
            spec.ca_config.unwrap().node_cert_expiry,
            Some(prost_types::Duration {
                seconds: 2160 * 3600,
                nanos: 0
            })
        );
    }

    #[test]
    fn init_flags_fill_the_request() {
        let Command::Init(args) = parse(&[
            "init",
            "--advertise-addr",
            "192.168.1.10",
            "--listen-addr",
            "192.168.1.10",
            "--cert-expiry",
            "1h",
            "--dispatcher-heartbeat",
            "500ms",
            "--snapshot-interval",
            "100",
            "--max-snapshots",
            "2",
            "--task-history-limit",
            "-1",
            "--force-new-cluster",
            "--default-addr-pool",
            "10.10.0.0/16,10.20.0.0/16",
            "--default-addr-pool",
            "10.30.0.0/16",
            "--default-addr-pool-mask-length",
            "26",
            "--data-path-port",
            "7789",
            "--availability",
            "drain",
        ]) else {
            panic!("not init")
        };
        let req = args.to_request().unwrap();
        assert_eq!(req.listen_addr, "192.168.1.10:2377");
        assert_eq!(req.advertise_addr, "192.168.1.10");
        assert!(req.force_new_cluster);
        assert_eq!(req.availability(), pb::NodeAvailability::Drain);
        assert_eq!(
            req.default_address_pool,
            ["10.10.0.0/16", "10.20.0.0/16", "10.30.0.0/16"]
        );
        assert_eq!(req.subnet_size, 26);
        assert_eq!(req.data_path_port, 7789);
        let spec = req.spec.unwrap();
        assert_eq!(spec.raft.unwrap().keep_old_snapshots, 2);
        assert_eq!(spec.orchestration.unwrap().task_history_retention_limit, -1);
        assert_eq!(
            spec.dispatcher.unwrap().heartbeat_period,
            Some(prost_types::Duration {
                seconds: 0,
                nanos: 500_000_000
            })
        );
    }

    #[test]
    fn join_takes_a_manager_with_the_default_port() {
        let Command::Join(args) = parse(&["join", "--token", "SWMTKN-1-a-b", "10.0.0.1"]) else {
            panic!("not join")
        };
        let req = args.to_request();
        assert_eq!(req.remote_addr, "10.0.0.1:2377");
        assert_eq!(req.token, "SWMTKN-1-a-b");
        assert_eq!(req.listen_addr, "0.0.0.0:2377");
        let mut argv = vec!["swarm", "join", "10.0.0.1"];
        assert!(
            Cli::try_parse_from(argv.clone()).is_err(),
            "--token is required"
        );
        argv.extend(["--token", "t", "--availability", "pause"]);
        let Ok(Cli {
            command: Command::Join(args),
            ..
        }) = Cli::try_parse_from(argv)
        else {
            panic!("not join")
        };
        assert_eq!(
            args.to_request().availability(),
            pb::NodeAvailability::Pause
        );
    }

    #[test]
    fn join_token_takes_a_role() {
        let Command::JoinToken(args) = parse(&["join-token", "-q", "--rotate", "manager"]) else {
            panic!("not join-token")
        };
        assert!(args.quiet && args.rotate);
        assert_eq!(args.role, Role::Manager);
        assert!(Cli::try_parse_from(["swarm", "join-token", "admin"]).is_err());
        assert!(Cli::try_parse_from(["swarm", "join-token"]).is_err());
    }

    #[test]
    fn init_prints_dockers_message() {
        assert_eq!(
            init_message("n1", "SWMTKN-1-x-y", "10.0.0.1:2377"),
            "Swarm initialized: current node (n1) is now a manager.\n\n\
             To add a worker to this swarm, run the following command:\n\n    \
             swarm join --token SWMTKN-1-x-y 10.0.0.1:2377\n\n\
             To add a manager to this swarm, run 'swarm join-token manager' and follow the instructions.\n\n"
        );
    }

    #[test]
    fn join_address_falls_back_to_the_listen_port() {
        assert_eq!(join_addr("10.0.0.1:2377", "0.0.0.0:4000"), "10.0.0.1:2377");
        assert_eq!(join_addr("10.0.0.1", "0.0.0.0:4000"), "10.0.0.1:4000");
        assert_eq!(join_addr("fe80::1", ""), "[fe80::1]:2377");
        let info = pb::InfoResponse {
            node_id: "me".into(),
            node_addr: "10.0.0.1".into(),
            managers: vec![
                pb::RemoteManager {
                    node_id: "other".into(),
                    addr: "10.0.0.2:2377".into(),
                },
                pb::RemoteManager {
                    node_id: "me".into(),
                    addr: "10.0.0.1:4000".into(),
                },
            ],
            ..Default::default()
        };
        assert_eq!(manager_addr(&info), "10.0.0.1:4000");
        let info = pb::InfoResponse {
            managers: vec![],
            ..info
        };
        assert_eq!(manager_addr(&info), "10.0.0.1:2377");
    }
}
