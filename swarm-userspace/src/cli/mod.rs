//! The `swarm` command line: argument parsing and the commands themselves.
//!
//! This is the binary's edge: it turns flags into library calls and library
//! errors into one-line messages and exit codes. Every command except
//! `daemon` is a client of a daemon's node-local API; none of them touch
//! node state directly.
mod dataplane;
mod info;
mod json;
mod node;
mod output;
mod swarm;
mod task;
mod version;

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::{
    api::client::Client,
    daemon::DaemonConfig,
    dataplane::XdpMode,
    host::{HOST_ENV, Host},
    logging::{self, LogFormat},
};

#[derive(Debug, Parser)]
#[command(
    name = "swarm",
    version = crate::version::VERSION,
    about = "A container orchestrator: Docker swarm mode, with an eBPF data plane",
    disable_version_flag = true
)]
pub struct Cli {
    /// Daemon socket to talk to (or, for `daemon`, to serve).
    #[arg(
        short = 'H',
        long = "host",
        env = HOST_ENV,
        global = true,
        default_value_t = Host::default(),
        value_parser = parse_host
    )]
    pub host: Host,

    #[command(subcommand)]
    pub command: Command,
}

fn parse_host(s: &str) -> Result<Host, String> {
    s.parse::<Host>().map_err(|e| e.to_string())
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a swarm node (manager or worker) in the foreground.
    Daemon(DaemonArgs),
    /// Show the client's and the daemon's versions.
    Version(FormatArgs),
    /// Create a swarm with this node as its first manager.
    Init(swarm::InitArgs),
    /// Join this node to a swarm as a worker or a manager.
    Join(swarm::JoinArgs),
    /// Take this node out of its swarm.
    Leave(swarm::LeaveArgs),
    /// Show or rotate the token nodes join with.
    JoinToken(swarm::JoinTokenArgs),
    /// Show this node's swarm state (docker info's Swarm section).
    Info(FormatArgs),
    /// Manage the swarm's nodes (run on a manager).
    #[command(subcommand)]
    Node(node::NodeCommand),
    /// Inspect the node's data plane.
    #[command(subcommand)]
    Dataplane(DataplaneCommand),
    /// Internal: the container runtime's helper processes (run by the
    /// daemon, never by users).
    #[command(subcommand, hide = true)]
    RuntimeHelper(crate::runtime::helper::HelperCommand),
}

#[derive(Debug, Subcommand)]
pub enum DataplaneCommand {
    /// Attached programs and packet counters of this node.
    Status(FormatArgs),
}

#[derive(Debug, Args)]
pub struct FormatArgs {
    /// Output format: "table" (default) or "json".
    #[arg(long, default_value = "table")]
    pub format: output::Format,
}

#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// Directory for the node's state (certificates, Raft log, images).
    #[arg(long, default_value = "/var/lib/swarm", env = "SWARM_DATA_ROOT")]
    pub data_root: PathBuf,
    /// Log level or filter (error, warn, info, debug, trace, or e.g. swarm=debug).
    #[arg(long, default_value = "info")]
    pub log_level: String,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Network interface the data plane attaches its XDP and TC programs to.
    /// Repeat for several. Without it the node runs with no data plane.
    #[arg(long = "dataplane-interface", value_name = "IFACE")]
    pub dataplane_interfaces: Vec<String>,
    /// XDP attach mode.
    #[arg(long, value_enum, default_value_t = XdpMode::Auto)]
    pub xdp_mode: XdpMode,
    /// Name this node reports in `node ls` (default: the OS hostname).
    #[arg(long)]
    pub hostname: Option<String>,
    /// How long shutdown may take before remaining work is abandoned.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
    /// Cgroup (in every hierarchy) under which containers get theirs:
    /// `/<parent>/<container id>`.
    #[arg(long, default_value = "swarm")]
    pub cgroup_parent: String,
    /// What runs tasks: real containers, or a fake for simulated nodes (tasks
    /// reach running without containers).
    #[arg(long, value_enum, default_value_t = ExecutorKind::Runtime)]
    pub executor: ExecutorKind,
}

pub use crate::daemon::ExecutorKind;

/// Parses durations the way docker's flags take them: "500ms", "10s", "5m", "1h".
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("invalid duration {s:?}: missing unit (ms, s, m, h)"))?;
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: {num:?} is not a number"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => {
            return Err(format!(
                "invalid duration {s:?}: unknown unit {unit:?} (use ms, s, m, h)"
            ));
        }
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("invalid duration {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Runs the command line; returns the process exit code.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Daemon(args) => {
            logging::init(&args.log_level, args.log_format)?;
            crate::daemon::run(DaemonConfig {
                data_root: args.data_root,
                host: cli.host,
                dataplane_interfaces: args.dataplane_interfaces,
                xdp_mode: args.xdp_mode,
                shutdown_timeout: args.shutdown_timeout,
                cgroup_parent: args.cgroup_parent,
                executor: args.executor,
                hostname: args.hostname.unwrap_or_else(|| {
                    nix::unistd::gethostname()
                        .map(|h| h.to_string_lossy().into_owned())
                        .unwrap_or_else(|_| "localhost".into())
                }),
                raft: crate::raft::RaftSettings::default(),
            })
            .await?;
            Ok(())
        }
        Command::Version(fmt) => version::run(&cli.host, fmt.format).await,
        Command::Dataplane(DataplaneCommand::Status(fmt)) => {
            let client = Client::connect(&cli.host).await?;
            dataplane::status(&client, fmt.format).await
        }
        Command::Init(args) => swarm::init(&Client::connect(&cli.host).await?, &args).await,
        Command::Join(args) => swarm::join(&Client::connect(&cli.host).await?, &args).await,
        Command::Leave(args) => swarm::leave(&Client::connect(&cli.host).await?, &args).await,
        Command::JoinToken(args) => {
            swarm::join_token(&Client::connect(&cli.host).await?, &args).await
        }
        Command::Info(fmt) => info::run(&Client::connect(&cli.host).await?, fmt.format).await,
        Command::Node(cmd) => node::run(&Client::connect(&cli.host).await?, &cmd).await,
        Command::RuntimeHelper(_) => {
            anyhow::bail!("runtime-helper must run before the async runtime starts (see main.rs)")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_docker() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("tens").is_err());
        assert!(parse_duration("5y").is_err());
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn host_comes_from_flag() {
        let cli = Cli::try_parse_from(["swarm", "-H", "unix:///tmp/x.sock", "version"]).unwrap();
        assert_eq!(cli.host, Host::Unix("/tmp/x.sock".into()));
        assert!(Cli::try_parse_from(["swarm", "-H", "tcp://x:1", "version"]).is_err());
    }
}
