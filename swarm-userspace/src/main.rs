//! `swarm`: one binary, the daemon and its client. See `swarm --help`.
use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = swarm::cli::Cli::parse();
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
