//! One named network namespace (`/run/netns/<name>`, the `ip netns` kind)
//! and the two ways to do things inside it: run a command whose child
//! `setns()`es before exec, or run a closure on a fresh thread that has
//! `setns()`ed.
//!
//! Never uses `ip netns exec`: it also unshares the mount namespace and
//! remounts `/sys`, which hides `/sys/fs/bpf` and the cgroup mounts from the
//! command (see PLATFORM.md). `setns(CLONE_NEWNET)` changes only the network.
//!
//! Never switches the namespace of an existing thread of the caller: a
//! thread that has entered a namespace is thrown away afterwards.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use nix::sched::{CloneFlags, setns};

use crate::cmd::{self, CmdOutput, DEFAULT_TIMEOUT};

/// Where `ip netns` keeps its namespace handles.
pub const NETNS_DIR: &str = "/run/netns";

/// A named network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
    path: PathBuf,
    deleted: AtomicBool,
}

impl Netns {
    /// Creates the namespace `name` with loopback up and IPv6 disabled
    /// (IPv6 would add router/neighbour solicitations to every link, which
    /// upsets packet counters in datapath tests).
    pub fn create(name: &str) -> anyhow::Result<Netns> {
        let out = cmd::run(
            Command::new("ip").args(["netns", "add", name]),
            DEFAULT_TIMEOUT,
        );
        if !out.ok() {
            bail!("creating network namespace {name}: {out}");
        }
        let ns = Netns {
            name: name.to_owned(),
            path: Path::new(NETNS_DIR).join(name),
            deleted: AtomicBool::new(false),
        };
        // From here on, an error drops `ns`, which deletes it.
        ns.disable_ipv6()
            .with_context(|| format!("disabling IPv6 in {name}"))?;
        let out = ns.ip(&["link", "set", "lo", "up"]);
        if !out.ok() {
            bail!("bringing up lo in {name}: {out}");
        }
        Ok(ns)
    }

    /// Creates a namespace named `<unique prefix>-<suffix>`; runs the stale
    /// sweep first (once per process), like a cluster does.
    pub fn create_unique(suffix: &str) -> anyhow::Result<Netns> {
        crate::cleanup::sweep_stale_once();
        Netns::create(&format!("{}-{suffix}", crate::unique_prefix()))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`: what `setns` opens.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A `Command` whose child enters this namespace before exec. Add args,
    /// then run it with [`cmd::run`] or [`crate::Process::spawn`].
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(program);
        enter_in_child(&mut c, &self.path);
        c
    }

    /// Runs `program args` inside the namespace and waits for it.
    pub fn exec(&self, program: &str, args: &[&str]) -> CmdOutput {
        self.exec_timeout(program, args, DEFAULT_TIMEOUT)
    }

    /// [`Netns::exec`] with an explicit deadline.
    pub fn exec_timeout(&self, program: &str, args: &[&str], timeout: Duration) -> CmdOutput {
        cmd::run(self.command(program).args(args), timeout)
    }

    /// `ip <args>` inside the namespace (not checked).
    pub fn ip(&self, args: &[&str]) -> CmdOutput {
        self.exec("ip", args)
    }

    /// `ip <args>` inside the namespace; panics if it fails.
    #[track_caller]
    pub fn ip_ok(&self, args: &[&str]) -> CmdOutput {
        self.ip(args).success()
    }

    /// Whether one ICMP echo to `addr` is answered within 1 s
    /// (`ping -c1 -W1`).
    pub fn ping(&self, addr: std::net::Ipv4Addr) -> bool {
        self.exec("ping", &["-c1", "-W1", "-n", "-q", &addr.to_string()])
            .ok()
    }

    /// Runs `f` on a new thread that has entered this namespace, and returns
    /// its result. Sockets opened by `f` live in the namespace (and keep
    /// working after the thread ends). A panic in `f` is passed on.
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        std::thread::scope(|s| {
            let handle = s.spawn(|| {
                let file = File::open(&self.path)
                    .unwrap_or_else(|e| panic!("opening {}: {e}", self.path.display()));
                setns(&file, CloneFlags::CLONE_NEWNET)
                    .unwrap_or_else(|e| panic!("setns into {}: {e}", self.name));
                f()
            });
            match handle.join() {
                Ok(r) => r,
                Err(payload) => std::panic::resume_unwind(payload),
            }
        })
    }

    /// Writes a sysctl of this namespace, e.g. `net.ipv4.ip_forward`.
    pub fn sysctl(&self, key: &str, value: &str) -> io::Result<()> {
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        // /proc/sys/net resolves against the network namespace of the
        // calling thread, so write it from a thread inside the namespace.
        self.run(|| std::fs::write(&path, value))
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
    }

    fn disable_ipv6(&self) -> io::Result<()> {
        if !Path::new("/proc/sys/net/ipv6").exists() {
            return Ok(()); // kernel without IPv6: nothing to silence
        }
        // `default` covers links created later; `all` the ones that exist.
        self.sysctl("net.ipv6.conf.default.disable_ipv6", "1")?;
        self.sysctl("net.ipv6.conf.all.disable_ipv6", "1")
    }

    /// The (device, inode) identifying this namespace; equal to
    /// `stat /proc/<pid>/ns/net` of every process inside it.
    pub fn id(&self) -> io::Result<(u64, u64)> {
        let m = std::fs::metadata(&self.path)?;
        Ok((m.dev(), m.ino()))
    }

    /// Deletes the namespace handle (idempotent). Processes still inside keep
    /// the namespace alive, so callers kill those first
    /// ([`crate::cleanup::kill_in_netns`]).
    pub fn delete(&self) {
        if self.deleted.swap(true, Ordering::SeqCst) {
            return;
        }
        delete_named(&self.name);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.delete();
    }
}

/// `ip netns delete name`, logging failures (used by cleanup, which must not
/// panic).
pub(crate) fn delete_named(name: &str) {
    let out = cmd::run(
        Command::new("ip").args(["netns", "delete", name]),
        DEFAULT_TIMEOUT,
    );
    if !out.ok() && Path::new(NETNS_DIR).join(name).exists() {
        eprintln!("harness: cannot delete netns {name}: {out}");
    }
}

/// Makes the child of `cmd` enter the network namespace at `ns_path` between
/// fork and exec.
pub fn enter_in_child(cmd: &mut Command, ns_path: &Path) {
    // Opened now, in the parent: between fork and exec the child may only
    // make async-signal-safe calls (no allocation, no path lookups we could
    // avoid). O_CLOEXEC (Rust's default) closes it in the child at exec,
    // after setns used it.
    let file = File::open(ns_path).map_err(|e| e.raw_os_error().unwrap_or(libc::ENOENT));
    // SAFETY: the closure makes one syscall and builds errors from raw errno
    // values, which does not allocate.
    unsafe {
        cmd.pre_exec(move || match &file {
            Ok(f) => {
                if libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            }
            Err(errno) => Err(io::Error::from_raw_os_error(*errno)),
        });
    }
}
