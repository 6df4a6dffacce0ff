//! Whether the kernel's OOM killer struck a container: the OOM kill count
//! of its memory cgroup, read by the shim when the container's init died
//! and before anyone deletes the cgroup.
//!
//! Owns only reading that counter; must never write to a cgroup (limits
//! are libcontainer's, from the OCI spec).
use std::io;
use std::path::{Path, PathBuf};

/// Where cgroup hierarchies are mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The files that may hold the OOM kill count of the cgroup at
/// `cgroups_path` (the spec's `linux.cgroupsPath`), in the order to try:
/// the cgroup v1 memory controller (what libcontainer uses on a hybrid
/// host), then a unified cgroup2 hierarchy.
pub fn counter_files(root: &Path, cgroups_path: &str) -> [PathBuf; 2] {
    let rel = cgroups_path.trim_start_matches('/');
    [
        root.join("memory").join(rel).join("memory.oom_control"),
        root.join(rel).join("memory.events"),
    ]
}

/// The `oom_kill` value of a flat keyed cgroup file (`key value` lines:
/// v1 `memory.oom_control`, v2 `memory.events`). `None` when absent or
/// unparseable (kernels before 4.13 have no `oom_kill` in v1).
pub fn oom_kills(text: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let mut parts = line.split_whitespace();
        match (parts.next(), parts.next(), parts.next()) {
            (Some("oom_kill"), Some(v), None) => v.parse().ok(),
            _ => None,
        }
    })
}

/// Whether the cgroup at `cgroups_path` counted an OOM kill. Errors only
/// when no counter file could be read at all.
pub fn killed(root: &Path, cgroups_path: &str) -> io::Result<bool> {
    let mut last = io::Error::new(
        io::ErrorKind::NotFound,
        format!("no memory cgroup for {cgroups_path}"),
    );
    for file in counter_files(root, cgroups_path) {
        match std::fs::read_to_string(&file) {
            Ok(text) => {
                return oom_kills(&text).map(|n| n > 0).ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{} has no oom_kill count", file.display()),
                    )
                });
            }
            Err(e) => last = io::Error::new(e.kind(), format!("{}: {e}", file.display())),
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_oom_control_is_parsed() {
        let text = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n";
        assert_eq!(oom_kills(text), Some(2));
        assert_eq!(oom_kills("oom_kill_disable 0\nunder_oom 0\n"), None);
    }

    #[test]
    fn v2_memory_events_are_parsed() {
        let text = "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(oom_kills(text), Some(1));
        assert_eq!(oom_kills("oom_kill 0\n"), Some(0));
    }

    #[test]
    fn similar_keys_and_garbage_are_not_counts() {
        assert_eq!(oom_kills("oom_kill_disable 1\n"), None);
        assert_eq!(oom_kills("oom_group_kill 3\n"), None);
        assert_eq!(oom_kills("oom_kill x\n"), None);
        assert_eq!(oom_kills("oom_kill 1 2\n"), None);
        assert_eq!(oom_kills(""), None);
    }

    #[test]
    fn v1_comes_before_v2() {
        let [v1, v2] = counter_files(Path::new("/sys/fs/cgroup"), "/swarm/abc");
        assert_eq!(
            v1,
            Path::new("/sys/fs/cgroup/memory/swarm/abc/memory.oom_control")
        );
        assert_eq!(v2, Path::new("/sys/fs/cgroup/swarm/abc/memory.events"));
    }

    #[test]
    fn counts_are_read_from_the_first_file_present() {
        let dir = std::env::temp_dir().join(format!("swarm-oom-test-{}", std::process::id()));
        let v2 = dir.join("swarm/c");
        std::fs::create_dir_all(&v2).unwrap();
        std::fs::write(v2.join("memory.events"), "oom 1\noom_kill 1\n").unwrap();
        assert!(killed(&dir, "/swarm/c").unwrap());
        let v1 = dir.join("memory/swarm/c");
        std::fs::create_dir_all(&v1).unwrap();
        std::fs::write(v1.join("memory.oom_control"), "under_oom 0\noom_kill 0\n").unwrap();
        assert!(!killed(&dir, "/swarm/c").unwrap());
        assert!(killed(&dir, "/swarm/none").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
