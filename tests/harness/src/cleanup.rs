//! Finding and removing what tests leave behind: processes (by ancestry,
//! network namespace or cgroup), cgroup directories, mounts and temp dirs.
//! Used by [`crate::Cluster`]'s `Drop` for its own resources, and by the
//! stale sweep for those of test processes that died without running `Drop`
//! (e.g. killed by a test timeout).
//!
//! Everything here is best effort and must never panic: it runs inside
//! `Drop`, possibly while a test is already panicking. Failures are logged to
//! stderr and cleanup continues.
//!
//! It only ever touches things whose names carry the harness prefix
//! ([`crate::NAME_PREFIX`]) or processes found inside those things; it never
//! matches processes by command name.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::thread;
use std::time::{Duration, Instant};

use nix::mount::{MntFlags, umount2};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::NAME_PREFIX;
use crate::netns::NETNS_DIR;

/// Where cgroup hierarchies are mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The pids of all processes visible in /proc.
pub fn all_pids() -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// The parent pid of `pid`, from `/proc/<pid>/stat`.
pub fn ppid_of(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces
    // or parentheses itself: parse from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    fields.next()?; // state
    fields.next()?.parse().ok()
}

/// All descendants of `roots` (not including the roots), found by walking
/// parent links. Must run before the roots die: orphans are re-parented.
pub fn descendants(roots: &[u32]) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for pid in all_pids() {
        if let Some(ppid) = ppid_of(pid) {
            children.entry(ppid).or_default().push(pid);
        }
    }
    let mut out = Vec::new();
    let mut stack: Vec<u32> = roots.to_vec();
    let mut seen: HashSet<u32> = roots.iter().copied().collect();
    while let Some(p) = stack.pop() {
        for &c in children.get(&p).map(Vec::as_slice).unwrap_or_default() {
            if seen.insert(c) {
                out.push(c);
                stack.push(c);
            }
        }
    }
    out
}

/// A process identified by pid *and* start time, so that a pid reused by an
/// unrelated process later is never killed by mistake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcId {
    pub pid: u32,
    /// Field 22 of `/proc/<pid>/stat` (clock ticks after boot).
    pub start_time: u64,
}

impl ProcId {
    /// Identifies the live process `pid`.
    pub fn of(pid: u32) -> Option<ProcId> {
        Some(ProcId {
            pid,
            start_time: start_time_of(pid)?,
        })
    }

    /// SIGKILLs the process if it is still the same one.
    pub fn kill_if_same(&self) {
        if start_time_of(self.pid) == Some(self.start_time) {
            kill_pids(&[self.pid]);
        }
    }
}

fn start_time_of(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name start at field 3 (state); start time is
    // field 22, i.e. index 19 here.
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// SIGKILLs each pid (never this process), ignoring ones already gone.
pub fn kill_pids(pids: &[u32]) {
    let me = std::process::id();
    for &pid in pids {
        if pid == me || pid == 0 {
            continue;
        }
        match kill(Pid::from_raw(pid as i32), Signal::SIGKILL) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => eprintln!("harness: kill -9 {pid}: {e}"),
        }
    }
}

/// The (device, inode) of the network namespace of `pid`.
pub fn netns_id_of(pid: u32) -> Option<(u64, u64)> {
    let m = fs::metadata(format!("/proc/{pid}/ns/net")).ok()?;
    Some((m.dev(), m.ino()))
}

/// SIGKILLs every process whose network namespace is one of `ids` (as
/// returned by [`crate::Netns::id`]). Returns the pids killed.
pub fn kill_in_netns(ids: &[(u64, u64)]) -> Vec<u32> {
    if ids.is_empty() {
        return Vec::new();
    }
    let victims: Vec<u32> = all_pids()
        .into_iter()
        .filter(|&p| netns_id_of(p).is_some_and(|id| ids.contains(&id)))
        .collect();
    kill_pids(&victims);
    victims
}

/// The pid that owns a harness name (`...swt-<pid>-<n>...`), if any.
pub fn owner_pid(name: &str) -> Option<u32> {
    let rest = &name[name.find(NAME_PREFIX)? + NAME_PREFIX.len()..];
    let digits = rest.split('-').next()?;
    digits.parse().ok()
}

fn pid_alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// Whether `name` belongs to a test process that no longer exists.
fn owner_dead(name: &str) -> bool {
    owner_pid(name).is_some_and(|p| p != std::process::id() && !pid_alive(p))
}

/// The cgroup hierarchies to search: each mounted controller under
/// /sys/fs/cgroup (v1 or hybrid, including `unified`), or /sys/fs/cgroup
/// itself on a pure cgroup2 system.
fn cgroup_hierarchies() -> Vec<PathBuf> {
    let root = Path::new(CGROUP_ROOT);
    if root.join("cgroup.procs").exists() {
        return vec![root.to_path_buf()];
    }
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    if let Ok(dir) = fs::read_dir(root) {
        for e in dir.flatten() {
            // `cpu` and `cpuacct` are often symlinks to `cpu,cpuacct`:
            // visit each hierarchy once.
            let Ok(real) = fs::canonicalize(e.path()) else {
                continue;
            };
            if real.join("cgroup.procs").exists() && seen.insert(real.clone()) {
                out.push(real);
            }
        }
    }
    out
}

/// The top-most cgroup directories, in every hierarchy, whose name
/// satisfies `matches` (their subtrees are not searched further).
pub fn find_cgroups(matches: &dyn Fn(&str) -> bool) -> Vec<PathBuf> {
    fn walk(dir: &Path, depth: usize, matches: &dyn Fn(&str) -> bool, out: &mut Vec<PathBuf>) {
        if depth > 32 {
            return;
        }
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let path = e.path();
            if e.file_name().to_str().is_some_and(matches) {
                out.push(path);
            } else {
                walk(&path, depth + 1, matches, out);
            }
        }
    }
    let mut out = Vec::new();
    for h in cgroup_hierarchies() {
        walk(&h, 0, matches, &mut out);
    }
    out
}

/// Removes the cgroup `dir` and everything below it, deepest first: thaws
/// and kills the member processes, then rmdirs (retrying while the killed
/// processes finish exiting).
pub fn remove_cgroup_tree(dir: &Path) {
    fn post_order(dir: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(entries) = fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    post_order(&e.path(), out);
                }
            }
        }
        out.push(dir.to_path_buf());
    }
    let mut dirs = Vec::new();
    post_order(dir, &mut dirs);

    for d in &dirs {
        // Frozen processes cannot act on SIGKILL until thawed.
        let _ = fs::write(d.join("freezer.state"), "THAWED");
        let _ = fs::write(d.join("cgroup.freeze"), "0");
        let _ = fs::write(d.join("cgroup.kill"), "1");
        if let Ok(procs) = fs::read_to_string(d.join("cgroup.procs")) {
            let pids: Vec<u32> = procs
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect();
            kill_pids(&pids);
        }
    }
    for d in &dirs {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match fs::remove_dir(d) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    // EBUSY while killed members finish exiting; new members
                    // may also have been forked meanwhile: kill again.
                    if let Ok(procs) = fs::read_to_string(d.join("cgroup.procs")) {
                        let pids: Vec<u32> = procs
                            .lines()
                            .filter_map(|l| l.trim().parse().ok())
                            .collect();
                        kill_pids(&pids);
                    }
                    thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    eprintln!("harness: cannot remove cgroup {}: {e}", d.display());
                    break;
                }
            }
        }
    }
}

/// Removes every cgroup (in every hierarchy) whose name contains `needle`.
pub fn remove_cgroups_containing(needle: &str) {
    for dir in find_cgroups(&|name| name.contains(needle)) {
        remove_cgroup_tree(&dir);
    }
}

/// Decodes the octal escapes (`\040` for space, ...) of /proc/*/mountinfo.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && let Some(o) = b.get(i + 1..i + 4)
            && o.iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = o.iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
            out.push(v as u8);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mount points at or below `dir` in this process's mount namespace, in
/// mountinfo order.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|mp| PathBuf::from(unescape_mountinfo(mp)))
        .filter(|mp| mp.starts_with(dir))
        .collect()
}

/// Unmounts (lazily, `MNT_DETACH`) everything mounted at or below `dir`,
/// deepest first; repeats for mounts stacked on the same point.
pub fn unmount_under(dir: &Path) {
    let dir = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    for _round in 0..10 {
        let mut mounts = mounts_under(&dir);
        if mounts.is_empty() {
            return;
        }
        // Deepest first; among equals, the most recent (top of a stack) first.
        let mut indexed: Vec<(usize, PathBuf)> = mounts.drain(..).enumerate().collect();
        indexed.sort_by(|(ia, a), (ib, b)| {
            b.components()
                .count()
                .cmp(&a.components().count())
                .then(ib.cmp(ia))
        });
        for (_, mp) in indexed {
            // EINVAL/ENOENT: already gone with a parent's lazy unmount.
            if let Err(e) = umount2(&mp, MntFlags::MNT_DETACH)
                && e != nix::errno::Errno::EINVAL
                && e != nix::errno::Errno::ENOENT
            {
                eprintln!("harness: umount {}: {e}", mp.display());
            }
        }
    }
    let left = mounts_under(&dir);
    if !left.is_empty() {
        eprintln!("harness: mounts left under {}: {left:?}", dir.display());
    }
}

/// Unmounts everything under `dir`, then deletes it.
pub fn remove_dir_tree(dir: &Path) {
    if !dir.exists() {
        return;
    }
    unmount_under(dir);
    if let Err(e) = fs::remove_dir_all(dir)
        && e.kind() != io::ErrorKind::NotFound
    {
        eprintln!("harness: cannot remove {}: {e}", dir.display());
    }
}

/// Runs [`sweep_stale`] the first time it is called in this process.
pub fn sweep_stale_once() {
    static ONCE: Once = Once::new();
    ONCE.call_once(sweep_stale);
}

/// Removes what test processes that no longer exist left behind: their
/// network namespaces (killing the processes inside first), cgroups and temp
/// dirs, recognised by the `swt-<pid>-` prefix with a dead pid. Resources of
/// live processes, including this one, are never touched.
pub fn sweep_stale() {
    // Namespaces, and every process still inside one.
    let mut stale_ns = Vec::new();
    if let Ok(dir) = fs::read_dir(NETNS_DIR) {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(NAME_PREFIX) && owner_dead(&name) {
                stale_ns.push(name);
            }
        }
    }
    if !stale_ns.is_empty() {
        eprintln!("harness: removing stale network namespaces {stale_ns:?}");
        let ids: Vec<(u64, u64)> = stale_ns
            .iter()
            .filter_map(|n| fs::metadata(Path::new(NETNS_DIR).join(n)).ok())
            .map(|m| (m.dev(), m.ino()))
            .collect();
        let killed = kill_in_netns(&ids);
        if !killed.is_empty() {
            eprintln!("harness: killed stale processes {killed:?}");
        }
        for n in &stale_ns {
            crate::netns::delete_named(n);
        }
    }

    // Cgroups (killing their members).
    for dir in find_cgroups(&|name| name.contains(NAME_PREFIX) && owner_dead(name)) {
        eprintln!("harness: removing stale cgroup {}", dir.display());
        remove_cgroup_tree(&dir);
    }

    // Temp dirs (unmounting anything left mounted in them first).
    let tmp = std::env::temp_dir();
    if let Ok(dir) = fs::read_dir(&tmp) {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(NAME_PREFIX) && owner_dead(&name) {
                eprintln!("harness: removing stale temp dir {}", e.path().display());
                remove_dir_tree(&e.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_parses_harness_names() {
        assert_eq!(owner_pid("swt-123-4-n1"), Some(123));
        assert_eq!(owner_pid("ctr-swt-77-1-abc"), Some(77));
        assert_eq!(owner_pid("swt-x-1"), None);
        assert_eq!(owner_pid("other"), None);
    }

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_mountinfo(r"/tmp/a\040b"), "/tmp/a b");
        assert_eq!(unescape_mountinfo(r"/plain"), "/plain");
        assert_eq!(unescape_mountinfo(r"/end\"), r"/end\");
    }

    #[test]
    fn descendants_of_this_process_include_a_child() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .expect("spawn sleep");
        let d = descendants(&[std::process::id()]);
        assert!(d.contains(&child.id()), "{d:?} lacks {}", child.id());
        let _ = child.kill();
        let _ = child.wait();
    }
}
