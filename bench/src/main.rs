//! `swarm-bench`: the benchmark runner behind `cargo xtask bench`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use swarm_bench::{
    chart, containers, failover, mesh, overlay, raft, report::Report, scale, services, stop, store,
};

#[derive(Debug, Parser)]
#[command(
    name = "swarm-bench",
    about = "swarm's benchmarks; run them with `cargo xtask bench [BENCH] [OPTIONS]`"
)]
struct Cli {
    /// Fewer trials and shorter runs: checks that the benchmarks work, the
    /// numbers are not for quoting.
    #[arg(long, global = true)]
    quick: bool,
    /// Build with the dev profile instead of release (read by `cargo xtask
    /// bench`; results record the profile they were built with).
    #[arg(long, global = true)]
    dev: bool,
    /// Directory for <name>.json and <name>.png (default: <target>/bench, next to the
    /// profile directory this binary is in).
    #[arg(long, global = true, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Which benchmark (default: all).
    #[command(subcommand)]
    bench: Option<Bench>,
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// Every benchmark, with its defaults.
    All,
    /// Leader kill -9 to first accepted write on a 3-manager swarm; baseline
    /// docker's Raft timing.
    Failover {
        /// Trials with swarm's timing (default 10, --quick 3).
        #[arg(long)]
        trials: Option<usize>,
        /// Trials with docker's timing (default 10, --quick 1).
        #[arg(long)]
        baseline_trials: Option<usize>,
    },
    /// Raft write throughput and latency, 3 managers vs 1.
    Raft {
        /// Measured seconds per point (default 10, --quick 3).
        #[arg(long)]
        seconds: Option<f64>,
        /// Concurrent clients, comma-separated (default 1,64).
        #[arg(long, value_delimiter = ',')]
        clients: Option<Vec<usize>>,
        /// Rounds per point, alternating candidate and baseline (default 3,
        /// --quick 1).
        #[arg(long)]
        rounds: Option<usize>,
    },
    /// Service convergence with real containers on 3 nodes (create 10 and
    /// 100, scale 100 → 200, rolling update, removal); baseline the fake
    /// executor.
    Services,
    /// Container create to running on one node (libcontainer executor), one
    /// at a time and many at once; baseline plain fork/exec.
    Containers {
        /// Containers started one at a time (default 20, --quick 5).
        #[arg(long)]
        one: Option<usize>,
        /// Containers started at once (default 50, --quick 10).
        #[arg(long)]
        many: Option<usize>,
    },
    /// Overlay network data path: TCP throughput and round trips between
    /// containers on two nodes (VXLAN, eBPF); baseline the plain underlay.
    Overlay {
        /// Measured seconds per throughput round (default 5, --quick 2).
        #[arg(long)]
        seconds: Option<f64>,
        /// Throughput rounds per path (default 5, --quick 1).
        #[arg(long)]
        rounds: Option<usize>,
    },
    /// Routing mesh (eBPF load balancer) with short HTTP requests from wrk
    /// and small UDP datagrams; baselines direct access (UDP: with
    /// XDP_PASS), nftables DNAT and a userspace proxy.
    Mesh {
        /// Seconds per wrk run and per UDP run (default 5, --quick 2).
        #[arg(long)]
        seconds: Option<u32>,
        /// Runs per path, alternating (default 3, --quick 1).
        #[arg(long)]
        rounds: Option<usize>,
        /// wrk connections (default 16).
        #[arg(long)]
        connections: Option<usize>,
    },
    /// Simulated nodes on a 3-manager swarm: join time, heartbeat CPU,
    /// placement throughput, manager memory per task.
    Scale {
        /// Node counts to reach, comma-separated (default 1000,10000;
        /// --quick 200).
        #[arg(long, value_delimiter = ',')]
        nodes: Option<Vec<usize>>,
        /// Replicas of the placement service (default 100000, --quick 5000).
        #[arg(long)]
        tasks: Option<usize>,
        /// Seconds per CPU window (default 10, --quick 3).
        #[arg(long)]
        window: Option<f64>,
    },
    /// The store's write path for a placement (task creates, assignments,
    /// status reports) in this process, as managers apply it and as the
    /// leader prepares it; baseline a plain BTreeMap of tasks.
    Store {
        /// Tasks written (default 100000, --quick 20000).
        #[arg(long)]
        tasks: Option<usize>,
        /// Nodes the tasks are assigned to (default 1000).
        #[arg(long)]
        nodes: Option<usize>,
        /// Rounds, each candidate then baseline (default 5, --quick 1).
        #[arg(long)]
        rounds: Option<usize>,
    },
}

fn default_out() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("finding this executable")?;
    // <target>/<profile>/swarm-bench -> <target>/bench
    exe.parent()
        .and_then(|profile| profile.parent())
        .map(|target| target.join("bench"))
        .context("this executable is not inside a cargo target directory; pass --out")
}

fn finish(report: &Report, out: &std::path::Path) -> anyhow::Result<()> {
    print!("{}", report.render());
    let path = report.write_json(out)?;
    println!("json: {}", path.display());
    // The chart is a convenience: the table and JSON above are the result.
    match chart::write_png(report, out) {
        Ok(png) => println!("chart: {}", png.display()),
        Err(e) => eprintln!("swarm-bench: no chart for {}: {e:#}", report.name),
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    stop::install()?;
    let cli = Cli::parse();
    let out = match cli.out {
        Some(o) => o,
        None => default_out()?,
    };
    if cli.dev != cfg!(debug_assertions) {
        eprintln!(
            "swarm-bench: note: --dev {} but this binary was built with the {} profile",
            if cli.dev { "given" } else { "not given" },
            if cfg!(debug_assertions) {
                "dev"
            } else {
                "release"
            }
        );
    }
    let quick = cli.quick;
    let failover_opts = |t, b| failover::FailoverOpts::new(quick, t, b);
    let raft_opts = |s, c, r| raft::RaftOpts::new(quick, s, c, r);
    match cli.bench.unwrap_or(Bench::All) {
        Bench::All => {
            finish(&failover::run(&failover_opts(None, None), quick)?, &out)?;
            finish(&raft::run(&raft_opts(None, None, None), quick)?, &out)?;
            finish(
                &services::run(&services::ServicesOpts::new(quick), quick)?,
                &out,
            )?;
            finish(
                &store::run(&store::StoreOpts::new(quick, None, None, None), quick)?,
                &out,
            )?;
            finish(
                &scale::run(&scale::ScaleOpts::new(quick, None, None, None), quick)?,
                &out,
            )?;
            finish(
                &containers::run(&containers::ContainersOpts::new(quick, None, None), quick)?,
                &out,
            )?;
            finish(
                &overlay::run(&overlay::OverlayOpts::new(quick, None, None), quick)?,
                &out,
            )?;
            finish(
                &mesh::run(&mesh::MeshOpts::new(quick, None, None, None), quick)?,
                &out,
            )?;
        }
        Bench::Mesh {
            seconds,
            rounds,
            connections,
        } => finish(
            &mesh::run(
                &mesh::MeshOpts::new(quick, seconds, rounds, connections),
                quick,
            )?,
            &out,
        )?,
        Bench::Overlay { seconds, rounds } => finish(
            &overlay::run(&overlay::OverlayOpts::new(quick, seconds, rounds), quick)?,
            &out,
        )?,
        Bench::Containers { one, many } => finish(
            &containers::run(&containers::ContainersOpts::new(quick, one, many), quick)?,
            &out,
        )?,
        Bench::Services => finish(
            &services::run(&services::ServicesOpts::new(quick), quick)?,
            &out,
        )?,
        Bench::Scale {
            nodes,
            tasks,
            window,
        } => finish(
            &scale::run(&scale::ScaleOpts::new(quick, nodes, tasks, window), quick)?,
            &out,
        )?,
        Bench::Store {
            tasks,
            nodes,
            rounds,
        } => finish(
            &store::run(&store::StoreOpts::new(quick, tasks, nodes, rounds), quick)?,
            &out,
        )?,
        Bench::Failover {
            trials,
            baseline_trials,
        } => finish(
            &failover::run(&failover_opts(trials, baseline_trials), quick)?,
            &out,
        )?,
        Bench::Raft {
            seconds,
            clients,
            rounds,
        } => {
            finish(
                &raft::run(&raft_opts(seconds, clients, rounds), quick)?,
                &out,
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn options_go_after_the_benchmark_too() {
        let cli =
            Cli::try_parse_from(["swarm-bench", "raft", "--quick", "--clients", "1,8"]).unwrap();
        assert!(cli.quick);
        match cli.bench {
            Some(Bench::Raft { clients, .. }) => assert_eq!(clients, Some(vec![1, 8])),
            other => panic!("{other:?}"),
        }
    }
}
