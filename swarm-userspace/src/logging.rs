//! Process-wide tracing setup for the daemon and the CLI. Called once, from
//! the binary's edge; libraries only emit events.
use std::{io::IsTerminal, str::FromStr};

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error(
        "invalid log level {0:?}: use error, warn, info, debug, trace or a filter like swarm=debug"
    )]
    Level(String),
    #[error("logging was already initialised")]
    AlreadyInit,
}

/// Libraries whose debug output drowns ours (every Raft step, every HTTP/2
/// frame). A bare level keeps them at info; a filter is taken as written.
const NOISY: &[&str] = &[
    "openraft",
    "h2",
    "hyper",
    "hyper_util",
    "tonic",
    "tower",
    "rustls",
];

fn directives(level: &str) -> String {
    let bare = !level.contains('=') && !level.contains(',');
    let verbose = matches!(level, "debug" | "trace");
    if bare && verbose {
        let mut d = level.to_string();
        for n in NOISY {
            d.push_str(&format!(",{n}=info"));
        }
        return d;
    }
    level.to_string()
}

/// Installs a stderr subscriber. `level` is a level or an `EnvFilter`
/// directive; `RUST_LOG`, when set, wins so operators can debug one module.
pub fn init(level: &str, format: LogFormat) -> Result<(), LoggingError> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => EnvFilter::from_str(&v),
        _ => EnvFilter::from_str(&directives(level)),
    }
    .map_err(|_| LoggingError::Level(level.into()))?;
    let registry = tracing_subscriber::registry().with(filter);
    let res = match format {
        LogFormat::Text => registry
            .with(
                fmt::layer()
                    .with_writer(std::io::stderr)
                    // Colour codes only for a person watching, never in log files.
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_target(true),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    res.map_err(|_| LoggingError::AlreadyInit)
}
