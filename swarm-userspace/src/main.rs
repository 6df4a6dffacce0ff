//! `swarm`: one binary, the daemon and its client. See `swarm --help`.
use clap::Parser;

fn main() -> std::process::ExitCode {
    // A mask inherited from whoever started us (a supervisor, a benchmark
    // runner) would pass on to every container: with SIGTERM blocked, every
    // stop would wait out its whole grace period. Start from a clean one.
    if let Err(e) = nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&nix::sys::signal::SigSet::empty()),
        None,
    ) {
        eprintln!("warning: cannot clear the signal mask: {e}");
    }
    let cli = swarm::cli::Cli::parse();
    // The runtime's helpers call libcontainer, which must not share a process
    // with other threads: they run before (and without) the async runtime.
    let cli = match cli.command {
        swarm::cli::Command::RuntimeHelper(cmd) => return swarm::runtime::helper::run(cmd),
        command => swarm::cli::Cli { command, ..cli },
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("swarm")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(swarm::cli::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line: the chain of causes joined, most general first.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
