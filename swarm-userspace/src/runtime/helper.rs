//! `swarm runtime-helper ...`: the hidden subcommands that call libcontainer,
//! each in a short-lived, single-threaded process of its own (the same
//! binary re-executed). libcontainer `chdir()`s the whole process and clones
//! with raw `clone3`, so it must never run beside tokio's threads; the agent
//! only ever talks to it through these processes.
//!
//! Protocol: a helper prints one JSON line on stdout on success (when it has
//! something to say), writes errors on stderr and exits non-zero. The shim is
//! the exception: it reports on stdout once the container is created, then
//! stays (see `shim.rs`).
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use libcontainer::container::Container;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use nix::sys::wait::{WaitStatus, waitpid};
use serde::{Deserialize, Serialize};

use super::layout::Paths;
use super::reaper::PidFd;
use crate::executor::health::{MAX_OUTPUT, ProbeResult};

/// Where a helper finds the container.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// The container's directory (`<data-root>/containers/<id>`).
    #[arg(long)]
    pub dir: PathBuf,
    #[arg(long)]
    pub id: String,
}

impl Target {
    pub fn paths(&self) -> Paths {
        Paths {
            id: self.id.clone(),
            dir: self.dir.clone(),
        }
    }
}

/// Internal: the container runtime's helper processes. Not for users.
#[derive(Debug, clap::Subcommand)]
pub enum HelperCommand {
    /// Create the container and stay as its parent: log its output and record
    /// its exit status.
    Shim(Target),
    /// Start a created container.
    Start(Target),
    /// Send a signal to the container's init (or, with --all, to every
    /// process in its cgroup).
    Kill {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        signal: i32,
        #[arg(long)]
        all: bool,
    },
    /// Delete the container (killing it first): cgroups and state.
    Delete(Target),
    /// Run a command inside the container's namespaces and cgroup, print its
    /// exit code and output as JSON.
    Exec {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        timeout_ms: u64,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum HelperError {
    #[error("{0}")]
    Libcontainer(#[from] libcontainer::error::LibcontainerError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Other(String),
}

pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> HelperError {
    let what = what.into();
    move |source| HelperError::Io { what, source }
}

/// The entry point of `swarm runtime-helper`: runs without an async runtime.
pub fn run(cmd: HelperCommand) -> ExitCode {
    // libcontainer reports details through tracing, to our stderr (which
    // the agent captures, or, for the shim, shim.log). Through a copy of the
    // fd, not fd 2 itself: the container's processes are clones of this one
    // and log from it after fd 2 became the container's stderr, which must
    // hold only the container's own output.
    let filter = std::env::var("SWARM_HELPER_LOG").unwrap_or_else(|_| "warn".into());
    if let Ok(log) = io::stderr().as_fd().try_clone_to_owned() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::sync::Mutex::new(std::fs::File::from(log)))
            .with_ansi(false)
            .try_init();
    }
    let res = match cmd {
        HelperCommand::Shim(t) => return super::shim::run(&t),
        HelperCommand::Start(t) => start(&t),
        HelperCommand::Kill {
            target,
            signal,
            all,
        } => kill(&target, signal, all),
        HelperCommand::Delete(t) => delete(&t),
        HelperCommand::Exec {
            target,
            timeout_ms,
            command,
        } => exec(&target, Duration::from_millis(timeout_ms), command),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// While alive, SIGPIPE has its default action, which processes cloned by
/// libcontainer inherit. Rust programs ignore SIGPIPE, and an ignored signal
/// stays ignored across exec: without this, every container would ignore it.
pub(crate) struct DefaultSigpipe(libc::sighandler_t);

impl DefaultSigpipe {
    pub(crate) fn new() -> DefaultSigpipe {
        // SAFETY: signal(2) with SIG_DFL installs no handler code; helpers
        // are single-threaded.
        DefaultSigpipe(unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) })
    }
}

impl Drop for DefaultSigpipe {
    fn drop(&mut self) {
        // SAFETY: restores the disposition saved in `new`.
        unsafe { libc::signal(libc::SIGPIPE, self.0) };
    }
}

fn load(t: &Target) -> Result<Container, HelperError> {
    Ok(Container::load(t.paths().state_root().join(&t.id))?)
}

fn start(t: &Target) -> Result<(), HelperError> {
    load(t)?.start()?;
    Ok(())
}

fn kill(t: &Target, signal: i32, all: bool) -> Result<(), HelperError> {
    let sig = libcontainer::signal::Signal::try_from(signal)
        .map_err(|e| HelperError::Other(e.to_string()))?;
    let mut c = load(t)?;
    match c.kill(sig, all) {
        // Already gone: what a kill wants.
        Err(libcontainer::error::LibcontainerError::IncorrectStatus(_)) => Ok(()),
        other => Ok(other?),
    }
}

fn delete(t: &Target) -> Result<(), HelperError> {
    let state = t.paths().state_root().join(&t.id);
    if !state.exists() {
        return Ok(());
    }
    load(t)?.delete(true)?;
    Ok(())
}

/// What `exec` prints.
#[derive(Debug, Serialize, Deserialize)]
pub struct ExecReport {
    pub exit_code: i32,
    pub output: String,
    pub timed_out: bool,
}

impl ExecReport {
    pub fn into_probe(self, start: SystemTime, timeout: Duration) -> ProbeResult {
        let output = if self.timed_out {
            format!("Health check exceeded timeout ({timeout:?})")
        } else {
            self.output
        };
        ProbeResult {
            start,
            end: SystemTime::now(),
            exit_code: if self.timed_out { -1 } else { self.exit_code },
            output,
        }
    }
}

/// The init process's user, group and working directory, from the bundle.
fn init_process(bundle: &Path) -> Result<(u32, u32, Vec<u32>, PathBuf), HelperError> {
    let spec = oci_spec::runtime::Spec::load(bundle.join("config.json"))
        .map_err(|e| HelperError::Other(format!("reading the container's spec: {e}")))?;
    let p = spec
        .process()
        .clone()
        .ok_or_else(|| HelperError::Other("the container's spec has no process".into()))?;
    let u = p.user();
    Ok((
        u.uid(),
        u.gid(),
        u.additional_gids().clone().unwrap_or_default(),
        p.cwd().clone(),
    ))
}

fn exec(t: &Target, timeout: Duration, command: Vec<String>) -> Result<(), HelperError> {
    let paths = t.paths();
    let (uid, gid, gids, cwd) = init_process(&paths.bundle())?;
    let (out_r, out_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| io_err("pipe")(e.into()))?;
    let err_w: OwnedFd = out_w.try_clone().map_err(io_err("dup"))?;
    let devnull: OwnedFd = std::fs::File::open("/dev/null")
        .map_err(io_err("/dev/null"))?
        .into();
    let sigpipe = DefaultSigpipe::new();
    let pid = ContainerBuilder::new(t.id.clone(), SyscallType::default())
        .with_root_path(paths.state_root())?
        .with_stdin(devnull)
        .with_stdout(out_w)
        .with_stderr(err_w)
        .validate_id()?
        .as_tenant()
        .with_container_args(command)
        .with_env(HashMap::new())
        .with_cwd(Some(cwd))
        .with_user(Some(uid))
        .with_group(Some(gid))
        .with_additional_gids(gids)
        .with_detach(true)
        .build()?;
    drop(sigpipe);
    let raw_pid = pid.as_raw();
    let proc = PidFd::open(raw_pid.unsigned_abs()).map_err(io_err("pidfd_open"))?;
    let deadline = Instant::now() + timeout;
    let mut out_file = std::fs::File::from(out_r);
    let mut output = Vec::new();
    let mut pipe_open = true;
    let mut timed_out = false;
    loop {
        let now = Instant::now();
        if now >= deadline && !proc.exited() {
            timed_out = true;
            let _ = proc.signal(libc::SIGKILL);
        }
        if proc.exited() && !pipe_open {
            break;
        }
        let wait_ms = if timed_out {
            100
        } else {
            deadline
                .saturating_duration_since(now)
                .as_millis()
                .clamp(1, 1000)
        };
        let mut fds = vec![nix::poll::PollFd::new(
            proc.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        if pipe_open {
            fds.push(nix::poll::PollFd::new(
                out_file.as_fd(),
                nix::poll::PollFlags::POLLIN,
            ));
        }
        let _ = nix::poll::poll(
            &mut fds,
            nix::poll::PollTimeout::try_from(wait_ms as i32).unwrap_or(nix::poll::PollTimeout::MAX),
        );
        if pipe_open {
            let pipe_ready = fds
                .get(1)
                .and_then(|f| f.revents())
                .is_some_and(|r| !r.is_empty());
            if pipe_ready {
                let mut buf = [0u8; 4096];
                match out_file.read(&mut buf) {
                    Ok(0) => pipe_open = false,
                    Ok(n) => {
                        let room = MAX_OUTPUT.saturating_sub(output.len());
                        output.extend_from_slice(&buf[..n.min(room)]);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => pipe_open = false,
                }
            } else if proc.exited() && timed_out {
                // A killed probe's children may hold the pipe: stop reading.
                pipe_open = false;
            }
        }
    }
    let exit_code = match waitpid(nix::unistd::Pid::from_raw(raw_pid), None) {
        Ok(WaitStatus::Exited(_, code)) => code,
        Ok(WaitStatus::Signaled(_, sig, _)) => 128 + sig as i32,
        _ => -1,
    };
    let report = ExecReport {
        exit_code,
        output: String::from_utf8_lossy(&output).into_owned(),
        timed_out,
    };
    let line = serde_json::to_string(&report).map_err(|e| HelperError::Other(e.to_string()))?;
    let mut stdout = io::stdout();
    writeln!(stdout, "{line}").map_err(io_err("stdout"))?;
    Ok(())
}
