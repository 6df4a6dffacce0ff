//! The `swarm` command line: argument parsing and the commands themselves.
//!
//! This is the binary's edge: it turns flags into library calls and library
//! errors into one-line messages and exit codes. Every command except
//! `daemon` is a client of a daemon's node-local API; none of them touch
//! node state directly.
mod dataplane;
mod image;
mod info;
mod json;
mod logs;
mod network;
mod node;
mod output;
mod service;
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
    /// Manage the swarm's services (run on a manager).
    #[command(subcommand)]
    Service(service::ServiceCommand),
    /// Work with the swarm's tasks (run on a manager).
    #[command(subcommand)]
    Task(logs::TaskCommand),
    /// Manage the swarm's overlay networks (run on a manager).
    #[command(subcommand)]
    Network(network::NetworkCommand),
    /// Inspect the node's data plane.
    #[command(subcommand)]
    Dataplane(DataplaneCommand),
    /// Manage the images on this node.
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// For benchmarks: run many simulated worker nodes in this process
    /// (real sessions with the swarm, fake containers).
    #[command(hide = true)]
    Simulate(SimulateArgs),
    /// Internal: the container runtime's helper processes (run by the
    /// daemon, never by users).
    #[command(subcommand, hide = true)]
    RuntimeHelper(crate::runtime::helper::HelperCommand),
}

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// A worker join token.
    #[arg(long)]
    pub token: String,
    /// How many nodes to simulate.
    #[arg(long, default_value_t = 100)]
    pub nodes: usize,
    /// Hostnames are PREFIX-<n>.
    #[arg(long, default_value = "sim")]
    pub hostname_prefix: String,
    /// Joins in flight at once.
    #[arg(long, default_value_t = 32)]
    pub join_concurrency: usize,
    /// CPUs each simulated node reports.
    #[arg(long, default_value_t = 8)]
    pub cpus: i64,
    /// Memory each simulated node reports, in GiB.
    #[arg(long, default_value_t = 32)]
    pub memory_gib: i64,
    /// Log level or filter, to stderr: warnings name sessions that failed
    /// (heartbeat timeouts), which a run at scale should show.
    #[arg(long, default_value = "warn")]
    pub log_level: String,
    /// A manager's cluster address (HOST:PORT).
    pub manager: std::net::SocketAddr,
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
    /// Where to serve Prometheus metrics (`/metrics`), or "none". Loopback
    /// by default: metrics describe the cluster, so exposing them is a
    /// choice (e.g. `--metrics-addr 0.0.0.0:9323` for a remote Prometheus).
    #[arg(long, default_value = "127.0.0.1:9323", value_parser = parse_metrics_addr)]
    pub metrics_addr: MetricsAddr,
    /// Name this node reports in `node ls` (default: the OS hostname).
    #[arg(long)]
    pub hostname: Option<String>,
    /// How long shutdown may take before remaining work is abandoned.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
    /// A registry (HOST:PORT, as in image references) to pull from over
    /// plain HTTP instead of HTTPS. Repeat for several.
    #[arg(long = "insecure-registry", value_name = "HOST:PORT", value_parser = image::parse_registry)]
    pub insecure_registries: Vec<String>,
    /// Cgroup (in every hierarchy) under which containers get theirs:
    /// `/<parent>/<container id>`.
    #[arg(long, default_value = "swarm")]
    pub cgroup_parent: String,
    /// What runs tasks: real containers, or a fake for simulated nodes (tasks
    /// reach running without containers).
    #[arg(long, value_enum, default_value_t = ExecutorKind::Runtime)]
    pub executor: ExecutorKind,
    /// Raft heartbeat interval (default 250ms). Hidden: for benchmarks and
    /// experiments, e.g. `cargo xtask bench failover` runs docker's timing
    /// (1s) as its baseline. Every manager of a swarm should use the same.
    #[arg(long, hide = true, value_name = "DURATION", value_parser = parse_duration)]
    pub raft_heartbeat: Option<Duration>,
    /// Raft election timeout range MIN-MAX, e.g. 1250ms-2500ms (the default);
    /// each election timer picks a random value in it. Hidden, like
    /// --raft-heartbeat.
    #[arg(long, hide = true, value_name = "MIN-MAX", value_parser = parse_duration_range)]
    pub raft_election_timeout: Option<DurationRange>,
}

impl DaemonArgs {
    /// The Raft timing: defaults, overridden by the hidden flags. Checked
    /// here, so a bad combination fails before the daemon starts anything.
    pub fn raft_settings(&self) -> Result<crate::raft::RaftSettings, String> {
        let mut s = crate::raft::RaftSettings::default();
        if let Some(h) = self.raft_heartbeat {
            s.heartbeat = h;
        }
        if let Some(r) = self.raft_election_timeout {
            s.election_timeout_min = r.min;
            s.election_timeout_max = r.max;
        }
        s.openraft_config("flags").map_err(|e| {
            format!(
                "{e}: --raft-heartbeat ({:?}) must be shorter than the election timeout's minimum ({:?}), and the minimum shorter than the maximum ({:?})",
                s.heartbeat, s.election_timeout_min, s.election_timeout_max
            )
        })?;
        Ok(s)
    }
}

/// A `MIN-MAX` pair of durations, e.g. `10s-20s`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DurationRange {
    pub min: Duration,
    pub max: Duration,
}

/// Parses `MIN-MAX` (each as [`parse_duration`]); MIN must be below MAX.
pub fn parse_duration_range(s: &str) -> Result<DurationRange, String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("invalid range {s:?}: expected MIN-MAX, e.g. 500ms-1s"))?;
    let (min, max) = (parse_duration(a)?, parse_duration(b)?);
    if min >= max {
        return Err(format!(
            "invalid range {s:?}: the minimum must be below the maximum"
        ));
    }
    Ok(DurationRange { min, max })
}

pub use crate::daemon::ExecutorKind;

/// `--metrics-addr`: an address, or "none" to serve no metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetricsAddr(pub Option<std::net::SocketAddr>);

fn parse_metrics_addr(s: &str) -> Result<MetricsAddr, String> {
    if s.is_empty() || s == "none" {
        return Ok(MetricsAddr(None));
    }
    s.parse()
        .map(|a| MetricsAddr(Some(a)))
        .map_err(|e| format!("invalid --metrics-addr {s:?}: {e} (use IP:PORT or none)"))
}

/// Parses durations the way docker's flags take them (Go's
/// `time.ParseDuration`): "500ms", "10s", "1h30m", "1.5h", "0"; units ns,
/// us (µs), ms, s, m, h. Negative durations are refused.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    if t.is_empty() {
        return Err("invalid duration \"\": use a number with a unit, e.g. 10s".into());
    }
    if t.starts_with('-') {
        return Err(format!(
            "invalid duration {s:?}: durations cannot be negative"
        ));
    }
    let mut rest = t.strip_prefix('+').unwrap_or(t);
    let mut total: u128 = 0;
    let bad_number = |num: &str| format!("invalid duration {s:?}: {num:?} is not a number");
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("invalid duration {s:?}: missing unit (ns, us, ms, s, m, h)"))?;
        let (num, after) = rest.split_at(num_end);
        let unit_end = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_end);
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => {
                return Err(format!(
                    "invalid duration {s:?}: unknown unit {unit:?} (use ns, us, ms, s, m, h)"
                ));
            }
        };
        // Exact decimal arithmetic, as Go's: "0.1s" is 100ms, not a
        // float's approximation of it.
        let (int, frac) = num.split_once('.').unwrap_or((num, ""));
        if (int.is_empty() && frac.is_empty()) || frac.contains('.') {
            return Err(bad_number(num));
        }
        let int: u128 = if int.is_empty() {
            0
        } else {
            int.parse().map_err(|_| bad_number(num))?
        };
        let mut part = int
            .checked_mul(unit_nanos)
            .ok_or_else(|| format!("invalid duration {s:?}: out of range"))?;
        let mut scale = unit_nanos;
        for d in frac.chars().filter_map(|c| c.to_digit(10)) {
            scale /= 10;
            part += u128::from(d) * scale;
        }
        total = total
            .checked_add(part)
            .ok_or_else(|| format!("invalid duration {s:?}: out of range"))?;
        rest = next;
    }
    let secs = u64::try_from(total / 1_000_000_000)
        .map_err(|_| format!("invalid duration {s:?}: out of range"))?;
    // The remainder of a division by 1e9 fits in u32.
    #[allow(clippy::cast_possible_truncation)]
    Ok(Duration::new(secs, (total % 1_000_000_000) as u32))
}

/// Runs the command line; returns the process exit code.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Daemon(args) => {
            let raft = args.raft_settings().map_err(anyhow::Error::msg)?;
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
                raft,
                metrics_addr: args.metrics_addr.0,
                insecure_registries: args.insecure_registries,
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
        Command::Service(cmd) => service::run(&Client::connect(&cli.host).await?, &cmd).await,
        Command::Task(logs::TaskCommand::Logs(a)) => {
            logs::run(&Client::connect(&cli.host).await?, &a, true).await
        }
        Command::Network(cmd) => network::run(&Client::connect(&cli.host).await?, &cmd).await,
        Command::Image(cmd) => image::run(&Client::connect(&cli.host).await?, cmd).await,
        Command::Simulate(args) => simulate(args).await,
        Command::RuntimeHelper(_) => {
            anyhow::bail!("runtime-helper must run before the async runtime starts (see main.rs)")
        }
    }
}

/// Runs simulated nodes until SIGINT or SIGTERM; prints one line when they
/// have all joined.
async fn simulate(args: SimulateArgs) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    logging::init(&args.log_level, LogFormat::Text)?;
    let limit = crate::daemon::raise_open_files_limit()?;
    if u64::try_from(args.nodes).unwrap_or(u64::MAX) * 2 > limit {
        anyhow::bail!(
            "{} nodes need about {} open files; this process may have {limit}: raise the hard limit (ulimit -Hn)",
            args.nodes,
            args.nodes * 2
        );
    }
    let shutdown = tokio_util::sync::CancellationToken::new();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let stop = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        stop.cancel();
    });
    let nodes = args.nodes;
    crate::simulation::run(
        crate::simulation::SimulationConfig {
            manager: args.manager,
            token: args.token,
            count: args.nodes,
            hostname_prefix: args.hostname_prefix,
            join_concurrency: args.join_concurrency,
            nano_cpus: args.cpus.saturating_mul(1_000_000_000),
            memory_bytes: args.memory_gib.saturating_mul(1 << 30),
        },
        shutdown,
        |took| println!("joined {nodes} nodes in {:.3} s", took.as_secs_f64()),
    )
    .await?;
    Ok(())
}

/// How often a read-modify-write is tried when the object changed under it
/// (managers update node status and service update status concurrently).
pub(crate) const UPDATE_ATTEMPTS: u32 = 8;

/// Waits before re-reading after a version conflict, doubling from 50 ms.
/// A follower serves the read from its own store, which learns of a commit
/// up to a Raft heartbeat (150 ms) after the leader: retrying at once read
/// the same stale version again and again.
pub(crate) async fn conflict_backoff(attempt: u32) {
    let ms = 50u64 << attempt.clamp(1, 6).saturating_sub(1);
    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn conflict_retries_wait_longer_each_time_and_span_a_few_heartbeats() {
        let start = tokio::time::Instant::now();
        let mut waits = Vec::new();
        for attempt in 1..UPDATE_ATTEMPTS {
            let t = tokio::time::Instant::now();
            conflict_backoff(attempt).await;
            waits.push(t.elapsed().as_millis());
        }
        assert_eq!(waits, [50, 100, 200, 400, 800, 1600, 1600]);
        // Long enough for a follower to catch up many times over, short
        // enough that a real conflict still fails in seconds.
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn durations_parse_like_docker() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("tens").is_err());
        assert!(parse_duration("5y").is_err());
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1m30.5s"), Ok(Duration::from_millis(90_500)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("100ns"), Ok(Duration::from_nanos(100)));
        assert!(parse_duration("-5s").unwrap_err().contains("negative"));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("1h30").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn duration_ranges_parse_and_must_increase() {
        assert_eq!(
            parse_duration_range("10s-20s"),
            Ok(DurationRange {
                min: Duration::from_secs(10),
                max: Duration::from_secs(20)
            })
        );
        assert_eq!(
            parse_duration_range("500ms-1s").map(|r| r.max),
            Ok(Duration::from_secs(1))
        );
        assert!(parse_duration_range("1s").is_err());
        assert!(parse_duration_range("1s-1s").is_err());
        assert!(parse_duration_range("2s-1s").is_err());
        assert!(parse_duration_range("1s-x").is_err());
    }

    fn daemon(args: &[&str]) -> DaemonArgs {
        let argv = ["swarm", "daemon"].iter().chain(args);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Daemon(d) => d,
            other => panic!("parsed {other:?}"),
        }
    }

    #[test]
    fn raft_timing_flags_override_the_defaults() {
        let d = daemon(&[]).raft_settings().unwrap();
        let def = crate::raft::RaftSettings::default();
        assert_eq!(d.heartbeat, def.heartbeat);
        assert_eq!(d.election_timeout_min, def.election_timeout_min);
        assert_eq!(d.election_timeout_max, def.election_timeout_max);

        let docker = daemon(&[
            "--raft-heartbeat",
            "1s",
            "--raft-election-timeout",
            "10s-20s",
        ])
        .raft_settings()
        .unwrap();
        assert_eq!(docker.heartbeat, Duration::from_secs(1));
        assert_eq!(docker.election_timeout_min, Duration::from_secs(10));
        assert_eq!(docker.election_timeout_max, Duration::from_secs(20));
        assert_eq!(docker.snapshot_interval, def.snapshot_interval);
    }

    #[test]
    fn a_heartbeat_slower_than_elections_is_refused() {
        let err = daemon(&[
            "--raft-heartbeat",
            "2s",
            "--raft-election-timeout",
            "500ms-1s",
        ])
        .raft_settings()
        .unwrap_err();
        assert!(err.contains("--raft-heartbeat"), "{err}");
    }

    #[test]
    fn raft_timing_flags_are_hidden() {
        use clap::CommandFactory;
        let mut cmd = Cli::command();
        let help = cmd
            .find_subcommand_mut("daemon")
            .unwrap()
            .render_long_help()
            .to_string();
        assert!(!help.contains("raft"), "{help}");
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
