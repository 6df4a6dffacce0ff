//! Builds the OCI runtime spec of a container from the image config, the
//! task's `ContainerSpec` and its resources, the way docker merges them.
//!
//! Pure: every input (the rootfs's /etc/passwd and /etc/group, resolved
//! volume paths, the generated /etc files) is handed in, so each rule is unit
//! tested without a container. Never creates files or directories.
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder,
    LinuxDeviceType, LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType,
    LinuxPidsBuilder, LinuxResourcesBuilder, Mount, MountBuilder, PosixRlimitBuilder,
    PosixRlimitType, ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
    get_default_maskedpaths, get_default_mounts, get_default_readonly_paths,
};
use swarm_proto::v1 as pb;

use super::{ContainerConfig, NetworkMode};

/// Where `--init` finds its init inside the container (docker's path).
pub const INIT_PATH: &str = "/sbin/docker-init";
/// The PATH a container gets when neither the image nor the task sets one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// docker refuses memory limits below this.
pub const MIN_MEMORY: i64 = 6 * 1024 * 1024;
/// The CFS period CPU limits are expressed in (docker's).
pub const CPU_PERIOD_US: u64 = 100_000;

/// The capabilities docker grants by default.
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error(
        "no command to run: the image has no entrypoint or cmd and the task gives no command or args"
    )]
    NoCommand,
    #[error("working directory {0:?} must be an absolute path")]
    RelativeWorkdir(String),
    #[error("user {user:?}: {reason}")]
    User { user: String, reason: String },
    #[error("unknown capability {0:?} (use names such as NET_ADMIN or CAP_NET_ADMIN, or ALL)")]
    Capability(String),
    #[error("ulimit {name}: {reason}")]
    Ulimit { name: String, reason: String },
    #[error("sysctl {key}: {reason}")]
    Sysctl { key: String, reason: String },
    #[error("mount at {target:?}: {reason}")]
    Mount { target: String, reason: String },
    #[error("environment entry {0:?} has an empty name")]
    Env(String),
    #[error("{0}")]
    Resources(String),
    #[error(
        "--init needs an init binary on the node (Debian package tini-static) and none was found"
    )]
    NoInit,
    #[error("--tty is not supported by this runtime yet; run the task without it")]
    Tty,
    #[error("building the OCI spec: {0}")]
    Oci(String),
}

impl From<oci_spec::OciSpecError> for SpecError {
    fn from(e: oci_spec::OciSpecError) -> Self {
        SpecError::Oci(e.to_string())
    }
}

/// Host files bind-mounted over the container's /etc/hostname, /etc/hosts
/// and /etc/resolv.conf (see [`hosts_file`], [`resolv_conf`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcFiles {
    pub hostname: PathBuf,
    pub hosts: PathBuf,
    pub resolv_conf: PathBuf,
}

/// What [`build`] needs besides the container's config.
#[derive(Clone, Debug)]
pub struct SpecInput<'a> {
    pub config: &'a ContainerConfig,
    /// The rootfs's /etc/passwd and /etc/group.
    pub users: &'a UserDb,
    /// `linux.cgroupsPath`, e.g. `/swarm/<id>`.
    pub cgroups_path: &'a str,
    pub etc_files: Option<&'a EtcFiles>,
    /// The host directory of each volume mount, by mount target.
    pub volumes: &'a BTreeMap<String, PathBuf>,
    /// The host's init binary for `--init`.
    pub init_binary: Option<&'a Path>,
}

/// The container's hostname: the task's, else the first 12 characters of
/// the container ID (docker's default).
pub fn hostname(config: &ContainerConfig) -> String {
    if config.spec.hostname.is_empty() {
        config.id.chars().take(12).collect()
    } else {
        config.spec.hostname.clone()
    }
}

/// The OCI spec of `input.config`.
pub fn build(input: &SpecInput<'_>) -> Result<Spec, SpecError> {
    let config = input.config;
    let spec = &config.spec;
    if spec.tty {
        return Err(SpecError::Tty);
    }
    let hostname = hostname(config);
    let user_str = if spec.user.is_empty() {
        &config.image.user
    } else {
        &spec.user
    };
    let user = input.users.resolve(user_str, &spec.groups)?;

    let mut args = command(&config.image, spec)?;
    if spec.init {
        if input.init_binary.is_none() {
            return Err(SpecError::NoInit);
        }
        args.splice(0..0, [INIT_PATH.to_string(), "--".to_string()]);
    }

    let env = environment(&config.image.env, &spec.env, &hostname, &user.home)?;
    let cwd = [&spec.dir, &config.image.working_dir]
        .into_iter()
        .find(|d| !d.is_empty())
        .map_or("/", |d| d.as_str());
    if !cwd.starts_with('/') {
        return Err(SpecError::RelativeWorkdir(cwd.to_string()));
    }

    let caps = capabilities(&spec.capability_add, &spec.capability_drop)?;
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(
            UserBuilder::default()
                .uid(user.uid)
                .gid(user.gid)
                .additional_gids(user.additional_gids.clone())
                .build()?,
        )
        .args(args)
        .env(env)
        .cwd(cwd)
        .capabilities(
            LinuxCapabilitiesBuilder::default()
                .bounding(caps.clone())
                .effective(caps.clone())
                .permitted(caps)
                .inheritable(HashSet::new())
                .ambient(HashSet::new())
                .build()?,
        )
        .rlimits(rlimits(&spec.ulimits)?)
        .no_new_privileges(false)
        .build()?;

    let mut namespaces = vec![
        LinuxNamespaceBuilder::default()
            .typ(LinuxNamespaceType::Pid)
            .build()?,
        LinuxNamespaceBuilder::default()
            .typ(LinuxNamespaceType::Ipc)
            .build()?,
        LinuxNamespaceBuilder::default()
            .typ(LinuxNamespaceType::Uts)
            .build()?,
        LinuxNamespaceBuilder::default()
            .typ(LinuxNamespaceType::Mount)
            .build()?,
    ];
    match &config.network {
        NetworkMode::Host => {}
        NetworkMode::Isolated => namespaces.push(
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Network)
                .build()?,
        ),
        NetworkMode::Namespace(path) => namespaces.push(
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Network)
                .path(path.clone())
                .build()?,
        ),
    }

    let linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .cgroups_path(PathBuf::from(input.cgroups_path))
        .resources(resources(config.resources.as_ref())?)
        .sysctl(sysctls(&spec.sysctls, &config.network)?)
        .masked_paths(get_default_maskedpaths())
        .readonly_paths(get_default_readonly_paths())
        .build()?;

    let mut annotations: std::collections::HashMap<String, String> = spec
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    annotations.insert("org.swarm.container.id".into(), config.id.clone());

    Ok(SpecBuilder::default()
        .version("1.0.2")
        .root(
            RootBuilder::default()
                .path(config.rootfs.clone())
                .readonly(spec.read_only)
                .build()?,
        )
        .hostname(hostname)
        .process(process)
        .mounts(mounts(input)?)
        .linux(linux)
        .annotations(annotations)
        .build()?)
}

/// The command line: docker's rules. A task command replaces the image's
/// entrypoint and drops its cmd; task args replace the image's cmd.
pub fn command(
    image: &super::ImageConfig,
    spec: &pb::ContainerSpec,
) -> Result<Vec<String>, SpecError> {
    let (entrypoint, cmd) = if !spec.command.is_empty() {
        (&spec.command, &spec.args)
    } else if !spec.args.is_empty() {
        (&image.entrypoint, &spec.args)
    } else {
        (&image.entrypoint, &image.cmd)
    };
    let args: Vec<String> = entrypoint.iter().chain(cmd).cloned().collect();
    if args.is_empty() {
        return Err(SpecError::NoCommand);
    }
    Ok(args)
}

/// The environment: `HOSTNAME`, then the image's, then the task's (a later
/// value of the same name replaces the earlier one in place), then `PATH`
/// and `HOME` if still missing. A task entry without `=` removes the name.
pub fn environment(
    image: &[String],
    task: &[String],
    hostname: &str,
    home: &str,
) -> Result<Vec<String>, SpecError> {
    let mut out: Vec<(String, String)> = vec![("HOSTNAME".into(), hostname.into())];
    let mut set = |entry: &str, from_task: bool| -> Result<(), SpecError> {
        let (name, value) = match entry.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (entry, None),
        };
        if name.is_empty() {
            return Err(SpecError::Env(entry.to_string()));
        }
        let pos = out.iter().position(|(n, _)| n == name);
        match (value, pos) {
            (Some(v), Some(i)) => out[i].1 = v.to_string(),
            (Some(v), None) => out.push((name.to_string(), v.to_string())),
            (None, Some(i)) if from_task => {
                out.remove(i);
            }
            (None, _) => {}
        }
        Ok(())
    };
    for e in image {
        set(e, false)?;
    }
    for e in task {
        set(e, true)?;
    }
    if !out.iter().any(|(n, _)| n == "PATH") {
        out.push(("PATH".into(), DEFAULT_PATH.into()));
    }
    if !out.iter().any(|(n, _)| n == "HOME") {
        out.push(("HOME".into(), home.into()));
    }
    Ok(out.into_iter().map(|(n, v)| format!("{n}={v}")).collect())
}

fn parse_capability(name: &str) -> Result<Capability, SpecError> {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    Capability::from_str(bare).map_err(|_| SpecError::Capability(name.to_string()))
}

/// docker's default capability set with `add` and `drop` applied (`ALL` in
/// either means every capability; drop wins over add, except that an
/// explicit add survives `drop ALL`, as in docker).
pub fn capabilities(add: &[String], drop: &[String]) -> Result<HashSet<Capability>, SpecError> {
    let is_all = |s: &String| s.eq_ignore_ascii_case("ALL") || s.eq_ignore_ascii_case("CAP_ALL");
    let all = || -> HashSet<Capability> {
        // Every name the kernel documents; the list is the OCI crate's.
        ALL_CAPABILITIES
            .iter()
            .filter_map(|n| parse_capability(n).ok())
            .collect()
    };
    let mut set: HashSet<Capability> = if add.iter().any(is_all) {
        all()
    } else {
        DEFAULT_CAPABILITIES
            .iter()
            .map(|n| parse_capability(n))
            .collect::<Result<_, _>>()?
    };
    let added: HashSet<Capability> = add
        .iter()
        .filter(|s| !is_all(s))
        .map(|s| parse_capability(s))
        .collect::<Result<_, _>>()?;
    set.extend(added.iter().copied());
    if drop.iter().any(is_all) {
        set = added;
    } else {
        for d in drop {
            set.remove(&parse_capability(d)?);
        }
    }
    Ok(set)
}

/// Every capability name (without `CAP_`) as of Linux 5.9.
const ALL_CAPABILITIES: &[&str] = &[
    "AUDIT_CONTROL",
    "AUDIT_READ",
    "AUDIT_WRITE",
    "BLOCK_SUSPEND",
    "BPF",
    "CHECKPOINT_RESTORE",
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "IPC_LOCK",
    "IPC_OWNER",
    "KILL",
    "LEASE",
    "LINUX_IMMUTABLE",
    "MAC_ADMIN",
    "MAC_OVERRIDE",
    "MKNOD",
    "NET_ADMIN",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_RAW",
    "PERFMON",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_CHROOT",
    "SYS_MODULE",
    "SYS_NICE",
    "SYS_PACCT",
    "SYS_PTRACE",
    "SYS_RAWIO",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "SYSLOG",
    "WAKE_ALARM",
];

fn rlimit_type(name: &str) -> Option<PosixRlimitType> {
    Some(match name {
        "as" => PosixRlimitType::RlimitAs,
        "core" => PosixRlimitType::RlimitCore,
        "cpu" => PosixRlimitType::RlimitCpu,
        "data" => PosixRlimitType::RlimitData,
        "fsize" => PosixRlimitType::RlimitFsize,
        "locks" => PosixRlimitType::RlimitLocks,
        "memlock" => PosixRlimitType::RlimitMemlock,
        "msgqueue" => PosixRlimitType::RlimitMsgqueue,
        "nice" => PosixRlimitType::RlimitNice,
        "nofile" => PosixRlimitType::RlimitNofile,
        "nproc" => PosixRlimitType::RlimitNproc,
        "rss" => PosixRlimitType::RlimitRss,
        "rtprio" => PosixRlimitType::RlimitRtprio,
        "rttime" => PosixRlimitType::RlimitRttime,
        "sigpending" => PosixRlimitType::RlimitSigpending,
        "stack" => PosixRlimitType::RlimitStack,
        _ => return None,
    })
}

/// `--ulimit name=soft:hard`; -1 means unlimited.
pub fn rlimits(ulimits: &[pb::Ulimit]) -> Result<Vec<oci_spec::runtime::PosixRlimit>, SpecError> {
    let mut seen = BTreeSet::new();
    let value = |name: &str, v: i64| -> Result<u64, SpecError> {
        match v {
            -1 => Ok(u64::MAX),
            v => u64::try_from(v).map_err(|_| SpecError::Ulimit {
                name: name.to_string(),
                reason: format!("{v} is negative (use -1 for unlimited)"),
            }),
        }
    };
    ulimits
        .iter()
        .map(|u| {
            let typ = rlimit_type(&u.name).ok_or_else(|| SpecError::Ulimit {
                name: u.name.clone(),
                reason: "unknown name (use core, cpu, nofile, nproc, memlock, stack, ...)".into(),
            })?;
            if !seen.insert(u.name.as_str()) {
                return Err(SpecError::Ulimit {
                    name: u.name.clone(),
                    reason: "given twice".into(),
                });
            }
            let (soft, hard) = (value(&u.name, u.soft)?, value(&u.name, u.hard)?);
            if soft > hard {
                return Err(SpecError::Ulimit {
                    name: u.name.clone(),
                    reason: format!("soft limit {} is above hard limit {}", u.soft, u.hard),
                });
            }
            Ok(PosixRlimitBuilder::default()
                .typ(typ)
                .soft(soft)
                .hard(hard)
                .build()?)
        })
        .collect()
}

/// Only namespaced sysctls may be set (docker's rules): IPC ones, mqueue,
/// and `net.*` unless the container shares the host's network.
pub fn sysctls(
    sysctls: &BTreeMap<String, String>,
    network: &NetworkMode,
) -> Result<std::collections::HashMap<String, String>, SpecError> {
    const IPC: &[&str] = &[
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    ];
    for key in sysctls.keys() {
        let err = |reason: &str| SpecError::Sysctl {
            key: key.clone(),
            reason: reason.to_string(),
        };
        if IPC.contains(&key.as_str()) || key.starts_with("fs.mqueue.") {
            continue;
        }
        if key.starts_with("net.") {
            if *network == NetworkMode::Host {
                return Err(err(
                    "net.* sysctls cannot be set on a container in the host's network namespace",
                ));
            }
            continue;
        }
        if key == "kernel.domainname" {
            continue;
        }
        return Err(err(
            "not a namespaced sysctl (allowed: net.*, fs.mqueue.*, kernel.msg*, kernel.sem, kernel.shm*, kernel.domainname)",
        ));
    }
    Ok(sysctls
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect())
}

/// Memory, CPU and pids limits, and the device cgroup (docker's default
/// allow list).
pub fn resources(
    req: Option<&pb::ResourceRequirements>,
) -> Result<oci_spec::runtime::LinuxResources, SpecError> {
    let limits = req.and_then(|r| r.limits).unwrap_or_default();
    let reservations = req.and_then(|r| r.reservations).unwrap_or_default();
    let mut b = LinuxResourcesBuilder::default().devices(default_device_rules()?);

    let mut memory = LinuxMemoryBuilder::default();
    let mut any_memory = false;
    if limits.memory_bytes < 0 || reservations.memory_bytes < 0 {
        return Err(SpecError::Resources(
            "memory sizes cannot be negative".into(),
        ));
    }
    if limits.memory_bytes > 0 {
        if limits.memory_bytes < MIN_MEMORY {
            return Err(SpecError::Resources(format!(
                "memory limit {} bytes is below the minimum of 6 MiB",
                limits.memory_bytes
            )));
        }
        memory = memory.limit(limits.memory_bytes);
        any_memory = true;
    }
    if reservations.memory_bytes > 0 {
        if limits.memory_bytes > 0 && reservations.memory_bytes > limits.memory_bytes {
            return Err(SpecError::Resources(format!(
                "memory reservation {} is above the limit {}",
                reservations.memory_bytes, limits.memory_bytes
            )));
        }
        memory = memory.reservation(reservations.memory_bytes);
        any_memory = true;
    }
    if any_memory {
        b = b.memory(memory.build()?);
    }
    if limits.nano_cpus < 0 {
        return Err(SpecError::Resources("CPU limit cannot be negative".into()));
    }
    if limits.nano_cpus > 0 {
        let quota = i128::from(limits.nano_cpus) * i128::from(CPU_PERIOD_US) / 1_000_000_000;
        // The kernel's smallest quota is 1 ms.
        let quota = i64::try_from(quota.max(1000))
            .map_err(|_| SpecError::Resources("CPU limit too large".into()))?;
        b = b.cpu(
            LinuxCpuBuilder::default()
                .quota(quota)
                .period(CPU_PERIOD_US)
                .build()?,
        );
    }
    match limits.pids {
        0 => {}
        n if n > 0 => b = b.pids(LinuxPidsBuilder::default().limit(n).build()?),
        _ => return Err(SpecError::Resources("pids limit cannot be negative".into())),
    }
    Ok(b.build()?)
}

fn default_device_rules() -> Result<Vec<oci_spec::runtime::LinuxDeviceCgroup>, SpecError> {
    let rule = |allow: bool, typ, major: Option<i64>, minor: Option<i64>, access: &str| {
        let mut r = LinuxDeviceCgroupBuilder::default()
            .allow(allow)
            .typ(typ)
            .access(access);
        if let Some(m) = major {
            r = r.major(m);
        }
        if let Some(m) = minor {
            r = r.minor(m);
        }
        r.build()
    };
    use LinuxDeviceType::{A, B, C};
    Ok(vec![
        rule(false, A, None, None, "rwm")?,
        rule(true, C, None, None, "m")?,
        rule(true, B, None, None, "m")?,
        rule(true, C, Some(1), Some(3), "rwm")?,    // null
        rule(true, C, Some(1), Some(5), "rwm")?,    // zero
        rule(true, C, Some(1), Some(7), "rwm")?,    // full
        rule(true, C, Some(1), Some(8), "rwm")?,    // random
        rule(true, C, Some(1), Some(9), "rwm")?,    // urandom
        rule(true, C, Some(5), Some(0), "rwm")?,    // tty
        rule(true, C, Some(5), Some(1), "rwm")?,    // console
        rule(true, C, Some(5), Some(2), "rwm")?,    // ptmx
        rule(true, C, Some(136), None, "rwm")?,     // pts
        rule(true, C, Some(10), Some(200), "rwm")?, // tun
    ])
}

fn mount(dest: &str, typ: &str, source: &Path, options: Vec<String>) -> Result<Mount, SpecError> {
    Ok(MountBuilder::default()
        .destination(dest)
        .typ(typ)
        .source(source)
        .options(options)
        .build()?)
}

fn propagation(p: &str, target: &str) -> Result<&'static str, SpecError> {
    Ok(match p {
        "" | "rprivate" => "rprivate",
        "private" => "private",
        "shared" => "shared",
        "rshared" => "rshared",
        "slave" => "slave",
        "rslave" => "rslave",
        other => {
            return Err(SpecError::Mount {
                target: target.to_string(),
                reason: format!(
                    "unknown bind propagation {other:?} (use private, rprivate, shared, rshared, slave, rslave)"
                ),
            });
        }
    })
}

/// The default mounts (proc, dev, sys, ...), the /etc files, `--init`, and
/// the task's mounts, parents before children.
pub fn mounts(input: &SpecInput<'_>) -> Result<Vec<Mount>, SpecError> {
    let spec = &input.config.spec;
    let mut out = get_default_mounts();
    let reserved: Vec<String> = out
        .iter()
        .map(|m| m.destination().display().to_string())
        .collect();

    if let Some(etc) = input.etc_files {
        let mut opts = vec!["rbind".to_string(), "rprivate".to_string()];
        if spec.read_only {
            opts.push("ro".into());
        }
        for (dest, src) in [
            ("/etc/hostname", &etc.hostname),
            ("/etc/hosts", &etc.hosts),
            ("/etc/resolv.conf", &etc.resolv_conf),
        ] {
            // A task mount over the same file wins, as in docker.
            if !spec.mounts.iter().any(|m| m.target == dest) {
                out.push(mount(dest, "bind", src, opts.clone())?);
            }
        }
    }
    if spec.init
        && let Some(init) = input.init_binary
    {
        out.push(mount(
            INIT_PATH,
            "bind",
            init,
            vec!["bind".into(), "ro".into(), "rprivate".into()],
        )?);
    }

    let mut task: Vec<(usize, Mount)> = Vec::new();
    let mut targets = BTreeSet::new();
    for m in &spec.mounts {
        let target = m.target.as_str();
        let err = |reason: String| SpecError::Mount {
            target: target.to_string(),
            reason,
        };
        if !target.starts_with('/') || target == "/" {
            return Err(err(
                "the target must be an absolute path other than /".into()
            ));
        }
        if Path::new(target)
            .components()
            .any(|c| c == std::path::Component::ParentDir)
        {
            return Err(err("the target must not contain ..".into()));
        }
        let clean = target.trim_end_matches('/');
        if !targets.insert(clean.to_string()) {
            return Err(err("two mounts share this target".into()));
        }
        if reserved.iter().any(|r| r == clean) {
            return Err(err("this path is mounted by the runtime".into()));
        }
        let ro = if m.read_only {
            vec!["ro".to_string()]
        } else {
            vec![]
        };
        let built = match pb::MountType::try_from(m.r#type) {
            Ok(pb::MountType::Bind) => {
                if !m.source.starts_with('/') {
                    return Err(err(format!(
                        "bind source {:?} must be an absolute path on the node",
                        m.source
                    )));
                }
                let mut opts = vec![
                    "rbind".to_string(),
                    propagation(&m.bind_propagation, target)?.into(),
                ];
                opts.extend(ro);
                mount(clean, "bind", Path::new(&m.source), opts)?
            }
            Ok(pb::MountType::Volume) => {
                let src = input.volumes.get(target).ok_or_else(|| {
                    err(format!(
                        "volume {:?} was not prepared on the node",
                        m.source
                    ))
                })?;
                let mut opts = vec!["rbind".to_string(), "rprivate".to_string()];
                opts.extend(ro);
                mount(clean, "bind", src, opts)?
            }
            Ok(pb::MountType::Tmpfs) => {
                let mut opts: Vec<String> =
                    ["nosuid", "nodev", "noexec"].map(String::from).to_vec();
                if m.tmpfs_size_bytes < 0 {
                    return Err(err("tmpfs size cannot be negative".into()));
                }
                if m.tmpfs_size_bytes > 0 {
                    opts.push(format!("size={}", m.tmpfs_size_bytes));
                }
                if m.tmpfs_mode != 0 {
                    if m.tmpfs_mode > 0o7777 {
                        return Err(err(format!(
                            "tmpfs mode {:o} is not a file mode",
                            m.tmpfs_mode
                        )));
                    }
                    opts.push(format!("mode={:o}", m.tmpfs_mode));
                }
                opts.extend(ro);
                mount(clean, "tmpfs", Path::new("tmpfs"), opts)?
            }
            Err(_) => return Err(err(format!("unknown mount type {}", m.r#type))),
        };
        task.push((Path::new(clean).components().count(), built));
    }
    // Parents first, so a mount inside another mount's target is not hidden.
    task.sort_by_key(|(depth, _)| *depth);
    out.extend(task.into_iter().map(|(_, m)| m));
    Ok(out)
}

/// A resolved user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub home: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

/// The users and groups of an image (its /etc/passwd and /etc/group).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserDb {
    users: Vec<PasswdEntry>,
    groups: Vec<GroupEntry>,
}

impl UserDb {
    /// Parses the two files; malformed lines are skipped, as libc does.
    pub fn parse(passwd: &str, group: &str) -> UserDb {
        let users = passwd
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .filter_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                Some(PasswdEntry {
                    name: f.first()?.to_string(),
                    uid: f.get(2)?.parse().ok()?,
                    gid: f.get(3)?.parse().ok()?,
                    home: f.get(5).map(|s| s.to_string()).unwrap_or_default(),
                })
            })
            .collect();
        let groups = group
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .filter_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                Some(GroupEntry {
                    name: f.first()?.to_string(),
                    gid: f.get(2)?.parse().ok()?,
                    members: f
                        .get(3)
                        .map(|m| {
                            m.split(',')
                                .filter(|s| !s.is_empty())
                                .map(String::from)
                                .collect()
                        })
                        .unwrap_or_default(),
                })
            })
            .collect();
        UserDb { users, groups }
    }

    /// Reads `<rootfs>/etc/passwd` and `<rootfs>/etc/group`; missing files
    /// are empty (numeric users still work).
    pub fn read(rootfs: &Path) -> UserDb {
        let read = |p: &str| std::fs::read_to_string(rootfs.join(p)).unwrap_or_default();
        UserDb::parse(&read("etc/passwd"), &read("etc/group"))
    }

    fn group_gid(&self, user: &str, g: &str) -> Result<u32, SpecError> {
        if let Ok(n) = g.parse() {
            return Ok(n);
        }
        self.groups
            .iter()
            .find(|e| e.name == g)
            .map(|e| e.gid)
            .ok_or_else(|| SpecError::User {
                user: user.to_string(),
                reason: format!("no group {g:?} in the image's /etc/group"),
            })
    }

    /// Resolves `user`, `uid`, `user:group` or `uid:gid` (empty is root) the
    /// way docker does, plus the extra `groups` of `--group-add`. A numeric
    /// uid need not exist in /etc/passwd.
    pub fn resolve(&self, spec: &str, groups: &[String]) -> Result<ResolvedUser, SpecError> {
        let (u, g) = match spec.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (spec, None),
        };
        let u = if u.is_empty() { "0" } else { u };
        let entry = match u.parse::<u32>() {
            Ok(uid) => self
                .users
                .iter()
                .find(|e| e.uid == uid)
                .cloned()
                .or(Some(PasswdEntry {
                    name: String::new(),
                    uid,
                    gid: 0,
                    home: "/".into(),
                })),
            Err(_) => self.users.iter().find(|e| e.name == u).cloned(),
        }
        .ok_or_else(|| SpecError::User {
            user: spec.to_string(),
            reason: format!("no user {u:?} in the image's /etc/passwd"),
        })?;
        let gid = match g {
            Some(g) if !g.is_empty() => self.group_gid(spec, g)?,
            _ => entry.gid,
        };
        let mut additional: Vec<u32> = Vec::new();
        // Supplementary groups from /etc/group apply only when no group was
        // given explicitly (docker's rule).
        if g.is_none() && !entry.name.is_empty() {
            additional.extend(
                self.groups
                    .iter()
                    .filter(|e| e.members.contains(&entry.name))
                    .map(|e| e.gid),
            );
        }
        for extra in groups {
            additional.push(self.group_gid(spec, extra)?);
        }
        additional.retain(|g| *g != gid);
        additional.sort_unstable();
        additional.dedup();
        let home = if entry.home.is_empty() {
            "/".to_string()
        } else {
            entry.home
        };
        Ok(ResolvedUser {
            uid: entry.uid,
            gid,
            additional_gids: additional,
            home,
        })
    }
}

/// /etc/hosts: loopback, the container's hostname, and the task's extra
/// entries (`IP name...` as swarmkit stores them, or docker's `name:IP`).
pub fn hosts_file(hostname: &str, addresses: &[std::net::IpAddr], extra: &[String]) -> String {
    let mut out = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    for a in addresses {
        out.push_str(&format!("{a}\t{hostname}\n"));
    }
    for e in extra {
        let words: Vec<&str> = e.split_whitespace().collect();
        match words.as_slice() {
            [ip, names @ ..] if !names.is_empty() && ip.parse::<std::net::IpAddr>().is_ok() => {
                out.push_str(&format!("{ip}\t{}\n", names.join(" ")));
            }
            [one] => {
                if let Some((name, ip)) = one.split_once(':')
                    && ip.parse::<std::net::IpAddr>().is_ok()
                {
                    out.push_str(&format!("{ip}\t{name}\n"));
                }
            }
            _ => {}
        }
    }
    out
}

/// /etc/resolv.conf: the task's DNS settings if it has nameservers, else the
/// node's file without loopback nameservers (they mean nothing inside the
/// container's network namespace), with the task's search and options.
pub fn resolv_conf(dns: Option<&pb::DnsConfig>, host: &str) -> String {
    let dns = dns.cloned().unwrap_or_default();
    let mut nameservers: Vec<String> = dns.nameservers.clone();
    let mut search: Vec<String> = dns.search.clone();
    let mut options: Vec<String> = dns.options.clone();
    if nameservers.is_empty() {
        for line in host.lines() {
            let mut w = line.split_whitespace();
            match (w.next(), w.next()) {
                (Some("nameserver"), Some(ns)) => {
                    let loopback = ns
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback());
                    if !loopback {
                        nameservers.push(ns.to_string());
                    }
                }
                (Some("search"), Some(first)) if dns.search.is_empty() => {
                    search.push(first.to_string());
                    search.extend(w.map(String::from));
                }
                (Some("options"), Some(first)) if dns.options.is_empty() => {
                    options.push(first.to_string());
                    options.extend(w.map(String::from));
                }
                _ => {}
            }
        }
    }
    let mut out = String::new();
    for ns in nameservers {
        out.push_str(&format!("nameserver {ns}\n"));
    }
    if !search.is_empty() {
        out.push_str(&format!("search {}\n", search.join(" ")));
    }
    if !options.is_empty() {
        out.push_str(&format!("options {}\n", options.join(" ")));
    }
    out
}

/// /etc/resolv.conf of a container on overlay networks: only the
/// embedded DNS server (which forwards what it does not know to the
/// task's `--dns` servers or the node's), the task's or the node's search
/// domains, and docker's `ndots:0` so single-label service names are
/// asked as they are.
pub fn embedded_resolv_conf(
    nameserver: std::net::IpAddr,
    dns: Option<&pb::DnsConfig>,
    host: &str,
) -> String {
    let mut without_servers = dns.cloned().unwrap_or_default();
    without_servers.nameservers.clear();
    let base = resolv_conf(Some(&without_servers), host);
    let mut out = format!("nameserver {nameserver}\n");
    let mut options = vec!["ndots:0".to_string()];
    for line in base.lines() {
        if line.starts_with("search ") {
            out.push_str(line);
            out.push('\n');
        } else if let Some(rest) = line.strip_prefix("options ") {
            options.extend(
                rest.split_whitespace()
                    .filter(|o| !o.starts_with("ndots:"))
                    .map(String::from),
            );
        }
    }
    out.push_str(&format!("options {}\n", options.join(" ")));
    out
}

#[cfg(test)]
mod tests;
