//! Processes of the runtime: pidfds that name one process for good (no pid
//! reuse races), the process's identity on disk (pid + start time), and the
//! child subreaper that collects exit statuses of orphaned container
//! processes.
//!
//! Who reaps what: each container's shim is the container's parent and reaps
//! it (see `shim.rs`). The agent is a child subreaper, so if a shim dies
//! while its container runs, the container is re-parented to the agent; the
//! reaper thread collects such orphans and keeps their statuses. It only
//! ever reaps zombie children in *another session* than ours (shims, the
//! container processes and healthcheck processes all call `setsid`), so it
//! never steals the status of a `std`/`tokio` `Command` child, which stays in
//! our session.
use std::collections::{HashMap, VecDeque};
use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;

use crate::executor::ExitStatus;

/// Makes this process a child subreaper: orphaned descendants are
/// re-parented to it instead of to PID 1.
pub fn become_subreaper() -> io::Result<()> {
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes one integer argument
    // and touches no memory of ours.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A process's start time in clock ticks since boot (field 22 of
/// `/proc/<pid>/stat`): with the pid, it names a process uniquely.
pub fn start_time(pid: u32) -> Option<u64> {
    stat_fields(pid).and_then(|f| f.get(19)?.parse().ok())
}

/// The fields of `/proc/<pid>/stat` after the command name (field 3 on).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: cut at the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(String::from).collect())
}

/// A process, identified on disk by pid and start time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcId {
    pub pid: u32,
    pub start_time: u64,
}

impl ProcId {
    /// The identity of the live process `pid`.
    pub fn of(pid: u32) -> Option<ProcId> {
        Some(ProcId {
            pid,
            start_time: start_time(pid)?,
        })
    }
}

/// An open pidfd: refers to one process even after its pid is reused.
#[derive(Debug)]
pub struct PidFd {
    pid: u32,
    fd: OwnedFd,
}

impl PidFd {
    /// Opens `pid`.
    pub fn open(pid: u32) -> io::Result<PidFd> {
        let raw = i32::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, raw, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = RawFd::try_from(fd).map_err(io::Error::other)?;
        // SAFETY: the kernel just returned this fd to us; nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(PidFd { pid, fd })
    }

    /// Opens the process `id` names, or `None` if that process is gone
    /// (exited, or its pid now belongs to another process).
    pub fn open_id(id: ProcId) -> Option<PidFd> {
        let fd = PidFd::open(id.pid).ok()?;
        // Checked after opening: from here on the fd pins this process.
        (start_time(id.pid) == Some(id.start_time)).then_some(fd)
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether the process has exited (a zombie counts as exited).
    pub fn exited(&self) -> bool {
        let mut fds = [nix::poll::PollFd::new(
            self.fd.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        matches!(
            nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO),
            Ok(n) if n > 0
        )
    }

    /// Resolves when the process exits.
    pub async fn wait_exit(&self) -> io::Result<()> {
        let owned = self.fd.try_clone()?;
        // SAFETY: `owned` is a fresh fd the AsyncFd owns for its whole life.
        let fd = unsafe { AsyncFd::register_with_interest(owned, tokio::io::Interest::READABLE) }
            .map_err(|e| io::Error::other(e.to_string()))?;
        let _ready = fd.readable().await?;
        Ok(())
    }

    /// Sends `signal` to the process (never to a process that reused its pid).
    pub fn signal(&self, signal: i32) -> io::Result<()> {
        // SAFETY: pidfd_send_signal(fd, sig, NULL, 0): no memory is passed.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// How many reaped statuses are remembered.
const REMEMBERED: usize = 1024;
const SWEEP_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Default)]
struct Reaped {
    statuses: HashMap<u32, ExitStatus>,
    order: VecDeque<u32>,
}

fn reaped() -> &'static Mutex<Reaped> {
    static R: OnceLock<Mutex<Reaped>> = OnceLock::new();
    R.get_or_init(Default::default)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Held while spawning a process whose pidfd is opened right after: the
/// reaper does not sweep meanwhile, so the pid cannot be reaped and reused
/// before the pidfd pins it.
pub fn spawn_guard() -> MutexGuard<'static, ()> {
    static G: Mutex<()> = Mutex::new(());
    lock(&G)
}

/// Starts the reaper thread (once per process). Call after
/// [`become_subreaper`].
pub fn start() {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        let spawned = std::thread::Builder::new()
            .name("swarm-reaper".into())
            .spawn(|| {
                loop {
                    sweep();
                    std::thread::sleep(SWEEP_INTERVAL);
                }
            });
        if let Err(e) = spawned {
            tracing::error!(
                "cannot start the reaper thread: {e}; orphaned containers will stay zombies"
            );
        }
    });
}

/// The status of `pid` if the reaper collected it.
pub fn reaped_status(pid: u32) -> Option<ExitStatus> {
    lock(reaped()).statuses.get(&pid).copied()
}

fn children() -> Vec<u32> {
    let me = std::process::id();
    let mut out = Vec::new();
    let Ok(tasks) = fs::read_dir(format!("/proc/{me}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        if let Ok(list) = fs::read_to_string(t.path().join("children")) {
            out.extend(
                list.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
    out
}

/// Reaps every zombie child outside our session.
fn sweep() {
    let _guard = spawn_guard();
    // SAFETY: getsid(0) reads our own session id.
    let our_session = unsafe { libc::getsid(0) };
    for pid in children() {
        let Some(fields) = stat_fields(pid) else {
            continue;
        };
        // fields[0] is the state, fields[3] the session.
        let zombie = fields.first().is_some_and(|s| s == "Z");
        let session: Option<i32> = fields.get(3).and_then(|s| s.parse().ok());
        if !zombie || session == Some(our_session) {
            continue;
        }
        let Ok(raw) = i32::try_from(pid) else {
            continue;
        };
        let status = match waitpid(Pid::from_raw(raw), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => ExitStatus::code(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => ExitStatus::signaled(sig as i32),
            _ => continue,
        };
        let mut r = lock(reaped());
        r.statuses.insert(pid, status);
        r.order.push_back(pid);
        while r.order.len() > REMEMBERED {
            if let Some(old) = r.order.pop_front() {
                r.statuses.remove(&old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_and_pidfd_of_self() {
        let me = std::process::id();
        let id = ProcId::of(me).unwrap();
        assert!(id.start_time > 0);
        let fd = PidFd::open_id(id).unwrap();
        assert!(!fd.exited());
        assert!(
            PidFd::open_id(ProcId {
                pid: me,
                start_time: id.start_time + 1
            })
            .is_none()
        );
    }

    #[tokio::test]
    async fn pidfd_sees_exit_and_signals() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let fd = PidFd::open(child.id()).unwrap();
        assert!(!fd.exited());
        fd.signal(libc::SIGKILL).unwrap();
        fd.wait_exit().await.unwrap();
        assert!(fd.exited());
        // Our own session: the reaper leaves it to us.
        sweep();
        assert!(reaped_status(child.id()).is_none());
        assert!(child.wait().is_ok());
    }
}
