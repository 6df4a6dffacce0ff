//! A guard for one long-running child process (a daemon, a registry, a test
//! server).
//!
//! Owns: the child's lifetime. Dropping a [`Process`] SIGKILLs and reaps it,
//! so a panicking test cannot leak it. It never touches processes it did not
//! start; descendants and strays are [`crate::cleanup`]'s job.

use std::io;
use std::process::{Child, Command, ExitStatus};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A running child process, killed and reaped on drop.
#[derive(Debug)]
pub struct Process {
    name: String,
    pid: u32,
    child: Child,
    exit: Option<ExitStatus>,
}

impl Process {
    /// Starts `cmd`. The child gets `PR_SET_PDEATHSIG` = SIGKILL, so it also
    /// dies if this whole test process is killed before any `Drop` runs.
    pub fn spawn(name: impl Into<String>, cmd: Command) -> io::Result<Process> {
        let child = crate::spawner::spawn(cmd)?;
        Ok(Process {
            name: name.into(),
            pid: child.id(),
            child,
            exit: None,
        })
    }

    /// A short name for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The pid (still valid as a number after exit, until reaped and reused).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The exit status if the process has exited (reaping it), else `None`.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            match self.child.try_wait() {
                Ok(status) => self.exit = status,
                Err(e) => eprintln!("harness: waiting for {} ({}): {e}", self.name, self.pid),
            }
        }
        self.exit
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.try_wait().is_none()
    }

    /// Sends `sig` if the process has not been reaped yet (a reaped pid may
    /// already belong to someone else).
    pub fn signal(&mut self, sig: Signal) {
        if self.try_wait().is_none()
            && let Err(e) = kill(Pid::from_raw(self.pid as i32), sig)
        {
            eprintln!("harness: kill -{sig} {} ({}): {e}", self.name, self.pid);
        }
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL and reap. Returns the exit status (a signal death, unless it
    /// had already exited).
    pub fn kill(&mut self) -> Option<ExitStatus> {
        self.signal(Signal::SIGKILL);
        if self.exit.is_none() {
            match self.child.wait() {
                Ok(s) => self.exit = Some(s),
                Err(e) => eprintln!("harness: reaping {} ({}): {e}", self.name, self.pid),
            }
        }
        self.exit
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL. Returns the exit status.
    pub fn terminate(&mut self, grace: Duration) -> Option<ExitStatus> {
        self.signal(Signal::SIGTERM);
        if let Some(s) = self.wait_timeout(grace) {
            return Some(s);
        }
        eprintln!(
            "harness: {} ({}) ignored SIGTERM for {grace:?}; sending SIGKILL",
            self.name, self.pid
        );
        self.kill()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}
