//! Running short-lived commands to completion with a deadline.
//!
//! Owns: [`CmdOutput`] and [`run`]. Never used for long-running processes
//! (those are [`crate::Process`]); never leaves a timed-out command running:
//! it is killed and reaped before the panic.

use std::fmt;
use std::io::Read;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How long a command may take by default. Generous: the machine has two
/// cores and tests run side by side, but a hung CLI must still fail the test
/// instead of hanging CI.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// What a finished command printed and how it exited.
#[derive(Debug, Clone)]
pub struct CmdOutput {
    /// The command line, for messages.
    pub cmdline: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CmdOutput {
    /// Whether the command exited with status 0.
    pub fn ok(&self) -> bool {
        self.status.success()
    }

    /// The exit code, `None` if killed by a signal.
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Returns `self` if the command succeeded, else panics showing its output.
    #[track_caller]
    pub fn success(self) -> Self {
        if !self.ok() {
            panic!("command failed: {self}");
        }
        self
    }

    /// Returns `self` if the command failed, else panics showing its output.
    #[track_caller]
    pub fn failure(self) -> Self {
        if self.ok() {
            panic!("command unexpectedly succeeded: {self}");
        }
        self
    }

    /// Stdout parsed as JSON; panics with the output if it is not JSON.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        match serde_json::from_str(&self.stdout) {
            Ok(v) => v,
            Err(e) => panic!("stdout is not JSON ({e}): {self}"),
        }
    }

    /// Stdout with surrounding whitespace removed.
    pub fn trimmed(&self) -> &str {
        self.stdout.trim()
    }
}

impl fmt::Display for CmdOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` exited with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.cmdline, self.status, self.stdout, self.stderr
        )
    }
}

/// A printable rendering of a command line.
pub fn cmdline(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` to completion (stdin from /dev/null, output captured) and
/// returns its output. Panics if it cannot be started or runs past `timeout`
/// (after killing it), since either means the environment is broken.
#[track_caller]
pub fn run(cmd: &mut Command, timeout: Duration) -> CmdOutput {
    let line = cmdline(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start `{line}`: {e}"));

    // Drain both pipes on threads: a command that fills one pipe while we
    // wait on the other would deadlock.
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());

    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "`{line}` did not finish within {timeout:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                    out.take(),
                    err.take()
                );
            }
            Err(e) => panic!("waiting for `{line}`: {e}"),
        }
    };
    CmdOutput {
        cmdline: line,
        status,
        stdout: out.finish(),
        stderr: err.finish(),
    }
}

/// Output collected from a pipe by a background thread.
struct Drain {
    buf: Arc<Mutex<Vec<u8>>>,
    thread: Option<thread::JoinHandle<()>>,
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> Drain {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let thread = pipe.map(|mut pipe| {
        let buf = Arc::clone(&buf);
        thread::spawn(move || {
            let mut chunk = [0u8; 8192];
            loop {
                match pipe.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .extend_from_slice(&chunk[..n]),
                }
            }
        })
    });
    Drain { buf, thread }
}

impl Drain {
    /// What was read so far.
    fn take(&self) -> String {
        let buf = self.buf.lock().unwrap_or_else(|p| p.into_inner());
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// Waits briefly for EOF, then returns what was read. The wait is bounded
    /// because a command may leave a background child holding the pipe open;
    /// the reader thread is then left to finish on its own.
    fn finish(mut self) -> String {
        if let Some(t) = self.thread.take() {
            let deadline = Instant::now() + Duration::from_secs(2);
            while !t.is_finished() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(2));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
        self.take()
    }
}
