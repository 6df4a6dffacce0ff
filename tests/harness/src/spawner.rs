//! Spawns long-running children from one thread that lives as long as the
//! process, with `PR_SET_PDEATHSIG` = SIGKILL.
//!
//! Why a dedicated thread: the kernel sends the parent-death signal when the
//! *thread* that forked the child exits, not the process. Test threads come
//! and go (a cluster kept in a `static` outlives the test that made it), so
//! forking from them would kill daemons at surprising times. Forking from a
//! thread that never exits ties the children's lifetime to the test process:
//! a test binary killed by a timeout takes its daemons with it, even though
//! no `Drop` runs. Grandchildren (containers) are not covered; the stale
//! sweep in [`crate::cleanup`] handles those.
//!
//! Never used for short commands ([`crate::cmd::run`] waits for those).

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::thread;

type Request = (Command, mpsc::Sender<io::Result<Child>>);

static SPAWNER: OnceLock<mpsc::Sender<Request>> = OnceLock::new();

/// Spawns `cmd` so that it is SIGKILLed if this process dies.
pub(crate) fn spawn(mut cmd: Command) -> io::Result<Child> {
    let parent = std::process::id();
    // SAFETY: the closure only makes async-signal-safe syscalls (prctl,
    // getppid, sigemptyset, sigprocmask) between fork and exec, and allocates nothing (errors are
    // built from raw errno values).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl; then the
            // signal never comes, so refuse to run orphaned.
            if libc::getppid() as u32 != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            // A runner that blocks signals to clean up on Ctrl-C (the
            // benchmarks) must not pass that mask on: children would
            // ignore SIGTERM.
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            if libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let tx = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        thread::Builder::new()
            .name("harness-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("cannot start the harness spawner thread");
        tx
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    tx.send((cmd, reply_tx))
        .map_err(|_| io::Error::other("harness spawner thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| io::Error::other("harness spawner thread dropped the request"))?
}
