//! The per-container shim (`swarm runtime-helper shim`): creates the
//! container with libcontainer, then stays as its parent for its whole life,
//! like containerd's shim or conmon.
//!
//! Why a process per container: the agent may be killed and restarted at any
//! time. The container's stdout and stderr are pipes; if the agent held their
//! read ends, a restart would break them (the next write gets SIGPIPE). The
//! container's exit status goes to its parent; if the agent were the parent,
//! a status would be lost while it is down. The shim holds both: it writes
//! the output to the rotated log file and the exit status to `exit.json`,
//! then exits. It runs in its own session (so a signal to the agent's process
//! group does not reach it) and is a child subreaper.
//!
//! Single-threaded on purpose: libcontainer is not thread-safe, and the shim
//! `setns()`es its only thread to bring up a new namespace's loopback.
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::helper::{HelperError, Target, io_err};
use super::layout::{self, ExitRecord, Paths, Record, ShimRecord};
use super::oom;
use super::reaper::{self, PidFd, ProcId};
use crate::executor::ExitStatus;
use crate::executor::logs::{self, LineSplitter, Stream, Writer};

/// What the shim reports on stdout once, after creating the container.
#[derive(Debug, Serialize, Deserialize)]
pub struct ShimReport {
    /// The container's init process, when created.
    pub pid: Option<u32>,
    pub error: Option<String>,
}

/// How long output may keep flowing after the container's init exited
/// (processes outside its pid namespace could hold the pipes forever).
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

pub fn run(t: &Target) -> ExitCode {
    // The report channel is our stdout as the agent gave it; stdout itself
    // goes to /dev/null so nothing else can write into the report.
    let report = match take_stdout() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("shim: cannot set up stdout: {e}");
            return ExitCode::FAILURE;
        }
    };
    match create(t) {
        Ok(created) => {
            send(
                report,
                &ShimReport {
                    pid: Some(created.init.pid()),
                    error: None,
                },
            );
            supervise(&t.paths(), created);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("shim: creating container {}: {e}", t.id);
            send(
                report,
                &ShimReport {
                    pid: None,
                    error: Some(e.to_string()),
                },
            );
            ExitCode::FAILURE
        }
    }
}

fn take_stdout() -> io::Result<File> {
    let report = io::stdout().as_fd().try_clone_to_owned()?;
    let devnull = File::options().write(true).open("/dev/null")?;
    nix::unistd::dup2_stdout(&devnull).map_err(io::Error::from)?;
    Ok(File::from(report))
}

fn send(mut report: File, r: &ShimReport) {
    let line = serde_json::to_string(r).unwrap_or_else(|_| "{}".into());
    if let Err(e) = writeln!(report, "{line}") {
        eprintln!("shim: cannot report to the agent: {e}");
    }
}

struct Created {
    init: PidFd,
    /// The container's `linux.cgroupsPath`, where its OOM kills are counted.
    cgroups_path: Option<String>,
    stdout: File,
    stderr: File,
    writer: Writer,
}

fn pipe() -> Result<(OwnedFd, OwnedFd), HelperError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| io_err("pipe")(e.into()))
}

fn create(t: &Target) -> Result<Created, HelperError> {
    let paths = t.paths();
    // Our own session: the agent's process group signals do not reach us,
    // and the agent's reaper can tell us from its Command children.
    nix::unistd::setsid().map_err(|e| io_err("setsid")(e.into()))?;
    reaper::become_subreaper().map_err(io_err("PR_SET_CHILD_SUBREAPER"))?;
    let record: Record = layout::read_json(&paths.record())
        .map_err(io_err("reading the container record"))?
        .ok_or_else(|| HelperError::Other(format!("{} is missing", paths.record().display())))?;
    let writer = Writer::open(&paths.log(), record.log).map_err(io_err("opening the log file"))?;
    let cgroups_path = cgroups_path(&paths.bundle().join("config.json"));

    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let devnull: OwnedFd = File::open("/dev/null").map_err(io_err("/dev/null"))?.into();
    let _pipe = super::helper::DefaultSigpipe::new();
    let container = ContainerBuilder::new(t.id.clone(), SyscallType::default())
        .with_root_path(paths.state_root())?
        .with_stdin(devnull)
        .with_stdout(out_w)
        .with_stderr(err_w)
        .validate_id()?
        .as_init(paths.bundle())
        .with_systemd(false)
        .with_detach(true)
        .build()?;
    let pid = container
        .pid()
        .ok_or_else(|| HelperError::Other("libcontainer reported no init pid".into()))?
        .as_raw()
        .unsigned_abs();
    let init = PidFd::open(pid).map_err(io_err("pidfd_open of the container"))?;
    let fail = |e: HelperError| {
        // Leave nothing half-made running: the agent deletes the rest.
        let _ = init.signal(libc::SIGKILL);
        e
    };
    if record.isolated_network {
        loopback_up(pid)
            .map_err(io_err(
                "bringing up lo in the container's network namespace",
            ))
            .map_err(fail)?;
    }
    let shim_id = ProcId::of(std::process::id())
        .ok_or_else(|| HelperError::Other("cannot read our own start time".into()))
        .map_err(fail)?;
    let init_id = ProcId::of(pid)
        .ok_or_else(|| HelperError::Other("the container exited while being created".into()))
        .map_err(fail)?;
    layout::write_json(
        &paths.shim(),
        &ShimRecord {
            shim: shim_id,
            init: init_id,
        },
    )
    .map_err(io_err("writing shim.json"))
    .map_err(fail)?;
    Ok(Created {
        init,
        cgroups_path,
        stdout: File::from(out_r),
        stderr: File::from(err_r),
        writer,
    })
}

/// Sets `lo` up in the network namespace of `pid`, then returns to ours.
fn loopback_up(pid: u32) -> io::Result<()> {
    use nix::sched::{CloneFlags, setns};
    let ours = File::open("/proc/self/ns/net")?;
    let theirs = File::open(format!("/proc/{pid}/ns/net"))?;
    setns(&theirs, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
    let res = set_up("lo");
    setns(&ours, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
    res
}

fn set_up(name: &str) -> io::Result<()> {
    // SAFETY: a plain socket(2) call; the fd is owned right below.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh fd that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the ifreq we own.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) != 0 {
            return Err(io::Error::last_os_error());
        }
        ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Copies output to the log until the container exits and its output ends;
/// records the exit status.
fn supervise(paths: &Paths, mut c: Created) {
    let mut splitters = [
        LineSplitter::new(Stream::Stdout),
        LineSplitter::new(Stream::Stderr),
    ];
    let mut open = [true, true];
    let mut exited_at: Option<Instant> = None;
    let mut status: Option<(ExitStatus, SystemTime)> = None;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if exited_at.is_some_and(|t| t.elapsed() > DRAIN_AFTER_EXIT)
            || (exited_at.is_some() && open == [false, false])
        {
            break;
        }
        let (revents, init_ready) = {
            let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(3);
            let mut which = Vec::with_capacity(3);
            if open[0] {
                fds.push(PollFd::new(c.stdout.as_fd(), PollFlags::POLLIN));
                which.push(0);
            }
            if open[1] {
                fds.push(PollFd::new(c.stderr.as_fd(), PollFlags::POLLIN));
                which.push(1);
            }
            if exited_at.is_none() {
                fds.push(PollFd::new(c.init.as_fd(), PollFlags::POLLIN));
                which.push(2);
            }
            match poll(&mut fds, PollTimeout::from(500u16)) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    eprintln!("shim: poll: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            let mut ready = [false; 3];
            for (f, w) in fds.iter().zip(&which) {
                ready[*w] = f.revents().is_some_and(|r| !r.is_empty());
            }
            (ready, ready[2])
        };
        for (i, file) in [&mut c.stdout, &mut c.stderr].into_iter().enumerate() {
            if !open[i] || !revents[i] {
                continue;
            }
            match file.read(&mut buf) {
                Ok(0) => {
                    open[i] = false;
                    if let Some(e) = splitters[i].finish(logs::now()) {
                        write_entry(&mut c.writer, &e);
                    }
                }
                Ok(n) => {
                    for e in splitters[i].push(&buf[..n], logs::now()) {
                        write_entry(&mut c.writer, &e);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    eprintln!("shim: reading the container's output: {e}");
                    open[i] = false;
                }
            }
        }
        if init_ready && exited_at.is_none() {
            // Read now: the cgroup is deleted with the container, maybe
            // right after the exit is recorded.
            let oom_killed = c.cgroups_path.as_deref().is_some_and(oom_killed);
            let exit = collect(c.init.pid()).with_oom_killed(oom_killed);
            status = Some((exit, SystemTime::now()));
            exited_at = Some(Instant::now());
        }
    }
    for s in &mut splitters {
        if let Some(e) = s.finish(logs::now()) {
            write_entry(&mut c.writer, &e);
        }
    }
    // Recorded only now, after the output is in the log: whoever sees the
    // exit sees all of the output too.
    let (status, at) = status.unwrap_or_else(|| (ExitStatus::lost(), SystemTime::now()));
    if let Err(e) = layout::write_json(&paths.exit(), &ExitRecord { status, at }) {
        eprintln!("shim: writing exit.json: {e}");
    }
    reap_orphans();
}

fn write_entry(w: &mut Writer, e: &logs::Entry) {
    if let Err(err) = w.write(e) {
        eprintln!("shim: writing the log: {err}");
    }
}

/// The spec's `linux.cgroupsPath`; `None` (and no OOM detection) if the
/// spec cannot be read, which libcontainer would have refused anyway.
fn cgroups_path(spec: &Path) -> Option<String> {
    match oci_spec::runtime::Spec::load(spec) {
        Ok(spec) => spec
            .linux()
            .as_ref()
            .and_then(|l| l.cgroups_path().as_ref())
            .map(|p| p.to_string_lossy().into_owned()),
        Err(e) => {
            eprintln!("shim: reading {}: {e}", spec.display());
            None
        }
    }
}

fn oom_killed(cgroups_path: &str) -> bool {
    oom::killed(Path::new(oom::CGROUP_ROOT), cgroups_path).unwrap_or_else(|e| {
        eprintln!("shim: reading the OOM kill count: {e}");
        false
    })
}

/// The init's exit status (it is our child).
fn collect(pid: u32) -> ExitStatus {
    let Ok(raw) = i32::try_from(pid) else {
        return ExitStatus::lost();
    };
    loop {
        match waitpid(Pid::from_raw(raw), Some(WaitPidFlag::__WALL)) {
            Ok(WaitStatus::Exited(_, code)) => return ExitStatus::code(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => return ExitStatus::signaled(sig as i32),
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                eprintln!("shim: waiting for the container's init {pid}: {e}");
                return ExitStatus::lost();
            }
        }
    }
}

/// Processes of the container's pid namespace re-parented to us when its
/// init died.
fn reap_orphans() {
    while let Ok(status) = waitpid(
        Pid::from_raw(-1),
        Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL),
    ) {
        if status == WaitStatus::StillAlive {
            break;
        }
    }
}

/// Spawns the shim for the container at `dir`; used by the executor.
pub(super) fn command(helper: &Path, paths: &Paths) -> std::process::Command {
    let mut cmd = std::process::Command::new(helper);
    cmd.arg("runtime-helper")
        .arg("shim")
        .arg("--dir")
        .arg(&paths.dir)
        .arg("--id")
        .arg(&paths.id);
    cmd
}
