//! The libcontainer runtime against real containers of the `bb:1` test
//! image: network namespaces, the spec applied (hostname, env, args,
//! workdir, user, read-only rootfs, limits in the cgroup files), stop and
//! exit codes, adoption by a new process after the creator was killed, clean
//! removal, log capture and rotation, healthchecks, the executor conformance
//! suite, and create/stop latency.
//!
//! The runtime is driven as a library from this test process; its helper
//! processes are the built `swarm` binary. Containers' cgroups live under a
//! parent named with this process's harness prefix, so the harness cleans up
//! after a test that panicked or was killed.
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use swarm::executor::conformance::{Behaviour, Fixture};
use swarm::executor::logs::{LogOptions, Stream};
use swarm::executor::{
    ContainerConfig, Controller, Executor, ExitStatus, ImageConfig, NetworkMode, Signal, Status,
    WaitOutcome,
};
use swarm::runtime::{LibcontainerExecutor, RuntimeConfig};
use swarm_harness::images::{self, BbPage};
use swarm_harness::{Cluster, Netns, cleanup};
use swarm_proto::v1 as pb;

/// A runtime over a fresh data root, with an unpacked `bb:1` rootfs.
struct Rt {
    prefix: String,
    dir: PathBuf,
    rootfs: PathBuf,
    image: ImageConfig,
    exec: LibcontainerExecutor,
    log: LogOptions,
    n: AtomicUsize,
}

impl Drop for Rt {
    fn drop(&mut self) {
        // Kills whatever a failed test left running, then its files.
        cleanup::remove_cgroups_containing(&self.prefix);
        cleanup::remove_dir_tree(&self.dir);
    }
}

fn image_config(images: &images::TestImages, image: &str) -> ImageConfig {
    let manifest = images.manifest(image).expect("manifest");
    let digest = manifest["config"]["digest"]
        .as_str()
        .expect("config digest");
    let blob: Value = serde_json::from_slice(
        &std::fs::read(images.blob_path(digest).expect("blob path")).expect("config blob"),
    )
    .expect("config JSON");
    serde_json::from_value(blob["config"].clone()).expect("an image config")
}

impl Rt {
    fn new() -> Rt {
        Rt::with_log(LogOptions::default())
    }

    fn with_log(log: LogOptions) -> Rt {
        cleanup::sweep_stale_once();
        let prefix = swarm_harness::unique_prefix();
        let dir = std::env::temp_dir().join(format!("{prefix}-runtime"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let images = images::ensure_built();
        let rootfs = images
            .unpack("bb:1", &dir.join("bb"))
            .expect("unpacking bb:1");
        let image = image_config(images, "bb:1");
        let exec =
            LibcontainerExecutor::new(Rt::runtime_config(&dir, &prefix, log)).expect("a runtime");
        Rt {
            prefix,
            dir,
            rootfs,
            image,
            exec,
            log,
            n: AtomicUsize::new(0),
        }
    }

    fn runtime_config(dir: &Path, prefix: &str, log: LogOptions) -> RuntimeConfig {
        let mut cfg =
            RuntimeConfig::new(&dir.join("data"), &format!("{prefix}-rt")).expect("runtime config");
        cfg.helper = swarm_harness::paths::swarm_bin();
        cfg.log = log;
        cfg
    }

    /// Another runtime over the same data root: the agent after a restart.
    fn restarted(&self) -> LibcontainerExecutor {
        LibcontainerExecutor::new(Rt::runtime_config(&self.dir, &self.prefix, self.log))
            .expect("a runtime")
    }

    fn id(&self, name: &str) -> String {
        format!("{name}-{}", self.n.fetch_add(1, Ordering::Relaxed))
    }

    /// bb:1 as the image defines it (tini + httpd), in its own namespace
    /// with loopback only.
    fn config(&self, id: &str) -> ContainerConfig {
        ContainerConfig {
            id: id.into(),
            rootfs: self.rootfs.clone(),
            image: self.image.clone(),
            spec: pb::ContainerSpec::default(),
            resources: None,
            network: NetworkMode::Isolated,
            addresses: Vec::new(),
            nameserver: None,
        }
    }

    /// bb:1 running `sh -c script` under tini.
    fn shell(&self, id: &str, script: &str) -> ContainerConfig {
        let mut c = self.config(id);
        c.spec.args = vec!["/bin/sh".into(), "-c".into(), script.into()];
        c
    }

    fn cgroup(&self, controller: &str, id: &str) -> PathBuf {
        Path::new("/sys/fs/cgroup")
            .join(controller)
            .join(format!("{}-rt", self.prefix))
            .join(id)
    }
}

async fn run(exec: &LibcontainerExecutor, config: ContainerConfig) -> Box<dyn Controller> {
    let id = config.id.clone();
    let ctl = exec.controller(config).expect("controller");
    ctl.prepare()
        .await
        .unwrap_or_else(|e| panic!("prepare {id}: {e}"));
    ctl.start()
        .await
        .unwrap_or_else(|e| panic!("start {id}: {e}"));
    ctl
}

/// Whether the process `pid`'s network namespace has a TCP listener on
/// `port` (from /proc/<pid>/net/tcp: state 0A is LISTEN).
fn listening(pid: u32, port: u16) -> bool {
    let tcp = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
    let want = format!(":{port:04X}");
    tcp.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.get(1).is_some_and(|a| a.ends_with(&want)) && f.get(3) == Some(&"0A")
    })
}

/// Until bb's httpd listens: by then tini handles SIGTERM (it blocks
/// signals before it starts its child).
async fn wait_serving(ctl: &dyn Controller) {
    let pid = ctl.inspect().await.expect("inspect").pid.expect("a pid");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !listening(pid, images::BB_PORT) {
        assert!(
            Instant::now() < deadline,
            "{} never listened on port 80",
            ctl.id()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn exit_of(ctl: &dyn Controller) -> ExitStatus {
    match tokio::time::timeout(Duration::from_secs(30), ctl.wait()).await {
        Ok(Ok(WaitOutcome::Exited(s))) => s,
        other => panic!("{}: {other:?}", ctl.id()),
    }
}

fn log_text(ctl: &dyn Controller) -> String {
    ctl.log_source()
        .expect("a log")
        .read(None)
        .expect("reading the log")
        .iter()
        .map(|e| e.log.clone())
        .collect()
}

/// Waits until the log has a line containing `needle`.
async fn wait_log(ctl: &dyn Controller, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = log_text(ctl);
        if text.contains(needle) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{needle:?} not in the log of {}:\n{text}",
            ctl.id()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A namespace for a container, wired to the node's namespace by a veth
/// pair: the node is 198.18.0.1/30, the container 198.18.0.2/30.
fn container_netns(cluster: &Cluster, name: &str) -> Netns {
    let node = cluster.node(1);
    let ns = Netns::create(&format!("{}-{name}", cluster.prefix())).expect("container netns");
    node.ns().ip_ok(&[
        "link",
        "add",
        "vc1",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        ns.name(),
    ]);
    node.ns()
        .ip_ok(&["addr", "add", "198.18.0.1/30", "dev", "vc1"]);
    node.ns().ip_ok(&["link", "set", "vc1", "up"]);
    ns.ip_ok(&["addr", "add", "198.18.0.2/30", "dev", "eth0"]);
    ns.ip_ok(&["link", "set", "eth0", "up"]);
    ns
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_http_in_a_prepared_netns() {
    let rt = Rt::new();
    let cluster = Cluster::builder().nodes(1).no_daemons().start();
    let ns = container_netns(&cluster, "c1");
    let mut config = rt.config(&rt.id("web"));
    config.network = NetworkMode::Namespace(ns.path().to_path_buf());
    config.spec.hostname = "web-1".into();
    let ctl = run(&rt.exec, config).await;

    let addr: SocketAddr = "198.18.0.2:80".parse().expect("addr");
    let page = cluster.node(1).in_netns(|| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match swarm_harness::http::get(addr, "/", Duration::from_secs(2)) {
                Ok(r) => return r,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("GET {addr}: {e}"),
            }
        }
    });
    assert_eq!(page.status, 200, "{page:?}");
    let page = BbPage::parse(&page.body).expect("a bb page");
    assert_eq!(page.image, "bb:1");
    assert_eq!(page.hostname, "web-1");
    assert_eq!(page.client.to_string(), "198.18.0.1");

    // The request was logged by httpd on stderr, into the container's log.
    let text = wait_log(ctl.as_ref(), images::BB_LOG_MARKER).await;
    let clients = images::bb_log_clients(&text);
    assert_eq!(clients.len(), 1, "{text}");
    assert_eq!(clients[0].ip().to_string(), "198.18.0.1");
    let entries = ctl.log_source().expect("log").read(None).expect("read");
    assert!(
        entries
            .iter()
            .any(|e| e.stream == Stream::Stderr && e.log.contains(images::BB_LOG_MARKER))
    );

    // The node's own namespace is untouched by an isolated container, and
    // the prepared namespace was joined (same inode as the container's).
    let pid = ctl.inspect().await.expect("inspect").pid.expect("a pid");
    let ns_of_container = std::fs::metadata(format!("/proc/{pid}/ns/net")).expect("ns");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        (ns_of_container.dev(), ns_of_container.ino()),
        ns.id().expect("ns id")
    );
    ctl.remove().await.expect("remove");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_netns_has_loopback_up() {
    let rt = Rt::new();
    // httpd listens on 0.0.0.0:80; wget to 127.0.0.1 inside works only if
    // lo is up.
    let ctl = run(
        &rt.exec,
        rt.shell(
            &rt.id("lo"),
            "httpd -p 127.0.0.1:80 -h /www; sleep 0.2; wget -q -O - http://127.0.0.1/ && echo LO-OK",
        ),
    )
    .await;
    assert_eq!(
        exit_of(ctl.as_ref()).await,
        ExitStatus::code(0),
        "{}",
        log_text(ctl.as_ref())
    );
    let text = log_text(ctl.as_ref());
    assert!(
        text.contains("LO-OK") && text.contains("hostname="),
        "{text}"
    );
    ctl.remove().await.expect("remove");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_is_applied() {
    let rt = Rt::new();
    let id = rt.id("spec");
    let mut c = rt.shell(
        &id,
        "echo \"FOO=$FOO HOME=$HOME PWD=$(pwd) HOST=$(hostname) ARGS=$0,$1\"; \
         cat /proc/self/status; echo x > /tmp/ok && echo TMP-WRITABLE; \
         cat /proc/sys/net/ipv4/ip_forward",
    );
    c.spec.args.extend(["zero".into(), "one".into()]);
    c.spec.env = vec!["FOO=bar".into()];
    c.spec.dir = "/www".into();
    c.spec.user = "nobody".into();
    c.spec.groups = vec!["7".into()];
    c.spec.hostname = "svc-host".into();
    c.spec.sysctls = BTreeMap::from([("net.ipv4.ip_forward".into(), "1".into())]);
    c.spec.mounts = vec![pb::Mount {
        r#type: pb::MountType::Tmpfs as i32,
        target: "/tmp".into(),
        tmpfs_mode: 0o1777,
        ..Default::default()
    }];
    let ctl = run(&rt.exec, c).await;
    assert_eq!(
        exit_of(ctl.as_ref()).await,
        ExitStatus::code(0),
        "{}",
        log_text(ctl.as_ref())
    );
    let text = log_text(ctl.as_ref());
    assert!(
        text.contains("FOO=bar HOME=/nonexistent PWD=/www HOST=svc-host ARGS=zero,one"),
        "{text}"
    );
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.split_whitespace().collect::<Vec<_>>())
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    };
    assert_eq!(field("Uid:")[0], "65534");
    assert_eq!(field("Gid:")[0], "65534");
    assert_eq!(field("Groups:"), ["7"]);
    // SIGPIPE (bit 12) is not ignored: the runtime is Rust, which ignores
    // it, and that must not leak into containers.
    let ign = u64::from_str_radix(field("SigIgn:")[0], 16).expect("hex");
    assert_eq!(ign & (1 << (libc::SIGPIPE - 1)), 0, "SigIgn {ign:x}");
    // Default capabilities: bounding set without CAP_SYS_ADMIN (bit 21).
    let bnd = u64::from_str_radix(field("CapBnd:")[0], 16).expect("hex");
    assert_eq!(bnd & (1 << 21), 0, "CAP_SYS_ADMIN must not be granted");
    assert_ne!(bnd & (1 << 10), 0, "CAP_NET_BIND_SERVICE is granted");
    assert!(text.contains("TMP-WRITABLE"), "{text}");
    assert!(
        text.lines().any(|l| l.trim() == "1"),
        "sysctl applied: {text}"
    );
    ctl.remove().await.expect("remove");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_binds_capabilities_and_ulimits() {
    let rt = Rt::new();
    let host = rt.dir.join("host-dir");
    std::fs::create_dir_all(&host).expect("host dir");
    std::fs::write(host.join("hello.txt"), "from the host\n").expect("host file");
    let mounts = || {
        vec![
            pb::Mount {
                r#type: pb::MountType::Volume as i32,
                source: format!("{}-data", rt.prefix),
                target: "/data".into(),
                ..Default::default()
            },
            pb::Mount {
                r#type: pb::MountType::Bind as i32,
                source: host.display().to_string(),
                target: "/host".into(),
                read_only: true,
                ..Default::default()
            },
        ]
    };
    let mut writer = rt.shell(
        &rt.id("writer"),
        "echo kept > /data/v && cat /host/hello.txt && ls /www/cgi-bin && \
         (echo no > /host/x || echo BIND-READ-ONLY); cat /proc/self/status; cat /proc/self/limits",
    );
    writer.spec.mounts = mounts();
    // A new named volume starts with the image's content at its target.
    writer.spec.mounts.push(pb::Mount {
        r#type: pb::MountType::Volume as i32,
        source: format!("{}-www", rt.prefix),
        target: "/www".into(),
        ..Default::default()
    });
    writer.spec.capability_add = vec!["NET_ADMIN".into()];
    writer.spec.capability_drop = vec!["CHOWN".into()];
    writer.spec.ulimits = vec![pb::Ulimit {
        name: "nofile".into(),
        soft: 321,
        hard: 654,
    }];
    let ctl = run(&rt.exec, writer).await;
    assert_eq!(
        exit_of(ctl.as_ref()).await.code,
        0,
        "{}",
        log_text(ctl.as_ref())
    );
    let text = log_text(ctl.as_ref());
    assert!(
        text.contains("from the host") && text.contains("BIND-READ-ONLY"),
        "{text}"
    );
    assert!(!host.join("x").exists());
    assert!(text.contains("index.cgi"), "image content copied: {text}");
    let bnd = text
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .expect("CapBnd");
    assert_ne!(bnd & (1 << 12), 0, "CAP_NET_ADMIN added");
    assert_eq!(bnd & 1, 0, "CAP_CHOWN dropped");
    let files = text
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("limits");
    assert_eq!(
        files.split_whitespace().collect::<Vec<_>>()[3..5],
        ["321", "654"]
    );
    ctl.remove().await.expect("remove");

    // The named volume outlives the container; the next one sees its data.
    let mut reader = rt.shell(&rt.id("reader"), "cat /data/v");
    reader.spec.mounts = mounts();
    let ctl = run(&rt.exec, reader).await;
    assert_eq!(exit_of(ctl.as_ref()).await.code, 0);
    assert_eq!(log_text(ctl.as_ref()), "kept\n");
    ctl.remove().await.expect("remove");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_rootfs_is_enforced() {
    let rt = Rt::new();
    let mut c = rt.shell(
        &rt.id("ro"),
        "echo x > /www/new-file || echo WRITE-FAILED; echo y > /scratch/f && echo SCRATCH-OK",
    );
    c.spec.read_only = true;
    c.spec.mounts = vec![pb::Mount {
        r#type: pb::MountType::Tmpfs as i32,
        target: "/scratch".into(),
        ..Default::default()
    }];
    let ctl = run(&rt.exec, c).await;
    assert_eq!(exit_of(ctl.as_ref()).await.code, 0);
    let text = log_text(ctl.as_ref());
    assert!(text.contains("Read-only file system"), "{text}");
    assert!(
        text.contains("WRITE-FAILED") && text.contains("SCRATCH-OK"),
        "{text}"
    );
    assert!(!rt.rootfs.join("www/new-file").exists());
    ctl.remove().await.expect("remove");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_in_the_cgroup_and_removed_with_it() {
    let rt = Rt::new();
    let id = rt.id("limits");
    let mut c = rt.config(&id);
    c.resources = Some(pb::ResourceRequirements {
        limits: Some(pb::Limits {
            nano_cpus: 500_000_000,
            memory_bytes: 64 << 20,
            pids: 20,
        }),
        reservations: None,
    });
    let ctl = run(&rt.exec, c).await;
    let read = |ctrl: &str, file: &str| {
        std::fs::read_to_string(rt.cgroup(ctrl, &id).join(file))
            .unwrap_or_else(|e| panic!("{ctrl}/{file}: {e}"))
            .trim()
            .to_string()
    };
    assert_eq!(
        read("memory", "memory.limit_in_bytes"),
        (64u64 << 20).to_string()
    );
    assert_eq!(read("pids", "pids.max"), "20");
    assert_eq!(read("cpu", "cpu.cfs_quota_us"), "50000");
    assert_eq!(read("cpu", "cpu.cfs_period_us"), "100000");
    let pid = ctl.inspect().await.expect("inspect").pid.expect("pid");
    assert!(
        read("pids", "cgroup.procs")
            .lines()
            .any(|l| l == pid.to_string()),
        "the init is in the cgroup"
    );

    ctl.remove().await.expect("remove");
    for ctrl in ["memory", "pids", "cpu", "devices", "freezer"] {
        assert!(!rt.cgroup(ctrl, &id).exists(), "{ctrl} cgroup left behind");
    }
    assert!(!rt.dir.join("data/containers").join(&id).exists());
    assert!(
        cleanup::mounts_under(&rt.dir.join("data")).is_empty(),
        "mounts left behind"
    );
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "process left behind"
    );
}

/// Doubles a string in busybox awk until it holds `mib` MiB (plus the
/// copies made on the way): memory really in use, unlike a pipe of zeros.
fn allocate(mib: u32) -> String {
    format!("awk 'BEGIN{{s=\"x\"; while (length(s) < {mib}*1024*1024) s = s s; print length(s)}}'")
}

fn memory_limit(c: &mut ContainerConfig, bytes: i64) {
    c.resources = Some(pb::ResourceRequirements {
        limits: Some(pb::Limits {
            memory_bytes: bytes,
            ..Default::default()
        }),
        reservations: None,
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oom_kills_are_recorded_as_137_and_oom_killed() {
    let rt = Rt::new();
    let id = rt.id("oom");
    let mut c = rt.shell(&id, &allocate(64));
    memory_limit(&mut c, 16 << 20);
    let ctl = run(&rt.exec, c).await;
    let exit = exit_of(ctl.as_ref()).await;
    assert_eq!(exit.code, 137, "{exit:?}; log: {}", log_text(ctl.as_ref()));
    assert!(exit.oom_killed, "{exit:?}");
    let state = ctl.inspect().await.expect("inspect");
    assert_eq!(state.exit, Some(exit));
    ctl.remove().await.expect("remove");

    // Under its limit: done, and not marked.
    let id = rt.id("fits");
    let mut c = rt.shell(&id, &allocate(1));
    memory_limit(&mut c, 64 << 20);
    let ctl = run(&rt.exec, c).await;
    let exit = exit_of(ctl.as_ref()).await;
    assert_eq!(exit, ExitStatus::code(0), "log: {}", log_text(ctl.as_ref()));
    assert!(!exit.oom_killed);
    assert!(log_text(ctl.as_ref()).contains("1048576"));
    ctl.remove().await.expect("remove");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_quickly_and_exit_codes_are_recorded() {
    let rt = Rt::new();
    let ctl = run(&rt.exec, rt.config(&rt.id("term"))).await;
    assert_eq!(
        ctl.inspect().await.expect("inspect").status,
        Status::Running
    );
    wait_serving(ctl.as_ref()).await;
    let t = Instant::now();
    ctl.shutdown(Duration::from_secs(10), Signal::TERM)
        .await
        .expect("shutdown");
    let took = t.elapsed();
    assert!(took < Duration::from_secs(3), "SIGTERM took {took:?}");
    let s = ctl.inspect().await.expect("inspect");
    // tini forwards SIGTERM to httpd and exits with its status.
    assert_eq!(s.exit, Some(ExitStatus::code(128 + libc::SIGTERM)));
    ctl.remove().await.expect("remove");

    let ctl = run(&rt.exec, rt.shell(&rt.id("three"), "exit 3")).await;
    assert_eq!(exit_of(ctl.as_ref()).await, ExitStatus::code(3));
    ctl.remove().await.expect("remove");

    // Without tini, PID 1 ignores SIGTERM: SIGKILL after the grace period.
    let mut c = rt.config(&rt.id("noinit"));
    c.spec.command = vec!["/bin/sleep".into(), "60".into()];
    let ctl = run(&rt.exec, c).await;
    let t = Instant::now();
    ctl.shutdown(Duration::from_millis(500), Signal::TERM)
        .await
        .expect("shutdown");
    assert!(t.elapsed() >= Duration::from_millis(500));
    assert_eq!(
        exit_of(ctl.as_ref()).await,
        ExitStatus::signaled(libc::SIGKILL)
    );
    ctl.remove().await.expect("remove");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_rotated() {
    let rt = Rt::with_log(LogOptions {
        max_size: 4096,
        max_files: 3,
    });
    let ctl = run(
        &rt.exec,
        rt.shell(
            &rt.id("chatty"),
            "i=0; while [ $i -lt 500 ]; do echo line-$i; i=$((i+1)); done; echo oops >&2",
        ),
    )
    .await;
    assert_eq!(exit_of(ctl.as_ref()).await.code, 0);
    let src = ctl.log_source().expect("log");
    for n in 0..3 {
        let p = swarm::executor::logs::rotated(&src.path, n);
        let len = std::fs::metadata(&p).expect("rotated file").len();
        assert!(len <= 4096, "{} is {len} bytes", p.display());
    }
    assert!(!swarm::executor::logs::rotated(&src.path, 3).exists());
    let entries = src.read(None).expect("read");
    let last = entries.last().expect("entries");
    assert_eq!((last.log.as_str(), last.stream), ("oops\n", Stream::Stderr));
    let lines: Vec<&str> = entries.iter().map(|e| e.log.trim()).collect();
    assert!(lines.contains(&"line-499"));
    assert!(
        !lines.contains(&"line-0"),
        "the oldest lines were rotated away"
    );
    let tail = src.read(Some(3)).expect("tail");
    assert_eq!(tail[1].log, "line-499\n");
    ctl.remove().await.expect("remove");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_healthcheck_marks_unhealthy() {
    let rt = Rt::new();
    let mut c = rt.config(&rt.id("sick"));
    c.spec.healthcheck = Some(pb::HealthConfig {
        // Runs inside the container: /www exists there, /nope does not.
        test: vec!["CMD-SHELL".into(), "ls /www >/dev/null && ls /nope".into()],
        interval: Some(prost_types::Duration {
            seconds: 0,
            nanos: 200_000_000,
        }),
        timeout: Some(prost_types::Duration {
            seconds: 2,
            nanos: 0,
        }),
        retries: 2,
        start_period: None,
    });
    let ctl = run(&rt.exec, c).await;
    let outcome = tokio::time::timeout(Duration::from_secs(30), ctl.wait())
        .await
        .expect("an outcome within 30s")
        .expect("wait");
    let WaitOutcome::Unhealthy(h) = outcome else {
        panic!("expected unhealthy: {outcome:?}");
    };
    assert_eq!(h.failing_streak, 2);
    let last = h.log.last().expect("a probe result");
    assert_ne!(last.exit_code, 0);
    assert!(last.output.contains("nope"), "{last:?}");
    assert_eq!(
        ctl.inspect().await.expect("inspect").status,
        Status::Running
    );
    ctl.remove().await.expect("remove");

    // A probe that outlives its timeout fails.
    let mut c = rt.config(&rt.id("slow"));
    c.spec.healthcheck = Some(pb::HealthConfig {
        test: vec!["CMD".into(), "sleep".into(), "5".into()],
        interval: Some(prost_types::Duration {
            seconds: 0,
            nanos: 100_000_000,
        }),
        timeout: Some(prost_types::Duration {
            seconds: 0,
            nanos: 300_000_000,
        }),
        retries: 1,
        start_period: None,
    });
    let ctl = run(&rt.exec, c).await;
    let outcome = tokio::time::timeout(Duration::from_secs(30), ctl.wait())
        .await
        .expect("an outcome")
        .expect("wait");
    let WaitOutcome::Unhealthy(h) = outcome else {
        panic!("expected unhealthy: {outcome:?}");
    };
    assert!(h.log[0].output.contains("timeout"), "{h:?}");
    ctl.remove().await.expect("remove");
}

const CHILD_ENV: &str = "SWARM_RUNTIME_TEST_CHILD";

/// Not a test of its own: the creator process of
/// `a_new_process_adopts_containers`, which runs this binary again with
/// `CHILD_ENV` set. Without it, it does nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creator_child() {
    let Ok(args) = std::env::var(CHILD_ENV) else {
        return;
    };
    let args: Value = serde_json::from_str(&args).expect("child args");
    let s = |k: &str| args[k].as_str().expect(k).to_string();
    let dir = PathBuf::from(s("dir"));
    let mut cfg = Rt::runtime_config(&dir, &s("prefix"), LogOptions::default());
    cfg.helper = PathBuf::from(s("helper"));
    let exec = LibcontainerExecutor::new(cfg).expect("runtime");
    let image: ImageConfig = serde_json::from_value(args["image"].clone()).expect("image");
    for c in args["containers"].as_array().expect("containers") {
        let config = ContainerConfig {
            id: c["id"].as_str().expect("id").into(),
            rootfs: PathBuf::from(s("rootfs")),
            image: image.clone(),
            spec: pb::ContainerSpec {
                args: serde_json::from_value(c["args"].clone()).expect("args"),
                ..Default::default()
            },
            resources: None,
            network: NetworkMode::Isolated,
            addresses: Vec::new(),
            nameserver: None,
        };
        run(&exec, config).await;
    }
    println!("CHILD-READY");
    tokio::time::sleep(Duration::from_secs(3600)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_process_adopts_containers() {
    let rt = Rt::new();
    let (serve, later, shimless) = (rt.id("serve"), rt.id("later"), rt.id("shimless"));
    let args = serde_json::json!({
        "dir": rt.dir,
        "prefix": rt.prefix,
        "helper": swarm_harness::paths::swarm_bin(),
        "rootfs": rt.rootfs,
        "image": rt.image,
        "containers": [
            {"id": serve, "args": []},
            {"id": later, "args": ["/bin/sh", "-c", "sleep 1; exit 7"]},
            {"id": shimless, "args": ["/bin/sleep", "3600"]},
        ],
    });
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args(["creator_child", "--exact", "--nocapture"])
        .env(CHILD_ENV, args.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawning the creator");
    let stdout = child.stdout.take().expect("stdout");
    let ready = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|l| l.contains("CHILD-READY"))
    });
    assert!(ready.join().expect("reader"), "the creator never got ready");
    // The creating runtime dies without cleaning anything up.
    child.kill().expect("kill -9 the creator");
    child.wait().expect("reap the creator");

    let exec = rt.restarted();
    let list = exec.list().await.expect("list");
    let state = |id: &str| list.iter().find(|c| c.id == id).cloned().expect("listed");
    assert_eq!(state(&serve).status, Status::Running);
    assert_eq!(state(&shimless).status, Status::Running);

    // Exited while no agent watched: its shim recorded the true code.
    let c = exec.adopt(&later).await.expect("adopt");
    assert_eq!(exit_of(c.as_ref()).await, ExitStatus::code(7));
    c.remove().await.expect("remove");

    // Still running, stopped by the new runtime.
    let c = exec.adopt(&serve).await.expect("adopt");
    c.shutdown(Duration::from_secs(10), Signal::TERM)
        .await
        .expect("shutdown");
    assert_eq!(
        exit_of(c.as_ref()).await,
        ExitStatus::code(128 + libc::SIGTERM)
    );
    c.remove().await.expect("remove");

    // A container whose shim died is re-parented to us (the subreaper); its
    // status is still collected, by our reaper.
    let shim: Value = serde_json::from_slice(
        &std::fs::read(
            rt.dir
                .join("data/containers")
                .join(&shimless)
                .join("shim.json"),
        )
        .expect("shim.json"),
    )
    .expect("json");
    let shim_pid = shim["shim"]["pid"].as_i64().expect("pid") as i32;
    // SAFETY: kill(2) on a pid read from the shim record of this test.
    assert_eq!(unsafe { libc::kill(shim_pid, libc::SIGKILL) }, 0);
    let c = exec.adopt(&shimless).await.expect("adopt");
    c.terminate().await.expect("terminate");
    let status = exit_of(c.as_ref()).await;
    assert_eq!(status.code, 137);
    assert!(
        !status.lost,
        "the reaper collected the real status: {status:?}"
    );
    c.remove().await.expect("remove");
    assert!(exec.list().await.expect("list").is_empty());
}

/// `swarm daemon` killed with -9 and started again reports the containers
/// under its data root with their true state (kept running, or how they
/// exited). They are made here, by the library over the daemon's data root,
/// as the daemon's executor makes them: no API creates containers yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_daemon_reports_its_containers() {
    let rt = Rt::new();
    let builder = Cluster::builder().nodes(1);
    let cgroup = format!("{}n1", builder.cgroup_prefix());
    let arg = cgroup.clone();
    let cluster = builder
        .daemon_args(move |_| vec!["--cgroup-parent".into(), arg.clone()])
        .start();
    let node = cluster.node(1);
    let mut cfg = RuntimeConfig::new(node.data_root(), &cgroup).expect("config");
    cfg.helper = swarm_harness::paths::swarm_bin();
    let exec = LibcontainerExecutor::new(cfg).expect("runtime");
    let serve = run(&exec, rt.config(&rt.id("kept"))).await;
    let done = run(&exec, rt.shell(&rt.id("done"), "exit 4")).await;
    assert_eq!(exit_of(done.as_ref()).await, ExitStatus::code(4));

    node.kill9();
    node.start();
    let found = |id: &str, what: &str| {
        node.log().lines().any(|l| {
            l.contains("found a container")
                && l.contains(&format!("container={id} "))
                && l.contains(what)
        })
    };
    swarm_harness::wait_until(
        Duration::from_secs(10),
        "the daemon logs its containers",
        || found(serve.id(), "status=running") && found(done.id(), "exit_code=4"),
    );
    assert_eq!(
        serve.inspect().await.expect("inspect").status,
        Status::Running
    );
    serve.remove().await.expect("remove");
    done.remove().await.expect("remove");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_and_stop_latency() {
    let rt = Rt::new();
    let (mut prepare, mut start, mut up, mut stop, mut remove) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..20 {
        let id = rt.id("lat");
        let c = rt.shell(&id, "echo ready; exec sleep 3600");
        let t = Instant::now();
        let ctl = rt.exec.controller(c).expect("controller");
        ctl.prepare().await.expect("prepare");
        prepare.push(t.elapsed());
        let t1 = Instant::now();
        ctl.start().await.expect("start");
        start.push(t1.elapsed());
        let log = ctl.log_source().expect("log").path;
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("ready")
        {
            assert!(t.elapsed() < Duration::from_secs(10), "no output");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        up.push(t.elapsed());
        let t = Instant::now();
        ctl.shutdown(Duration::from_secs(10), Signal::TERM)
            .await
            .expect("shutdown");
        stop.push(t.elapsed());
        let t1 = Instant::now();
        ctl.remove().await.expect("remove");
        remove.push(t1.elapsed());
        // Stop+delete, as one number.
        let last = stop.len() - 1;
        stop[last] += remove[last];
    }
    let ms = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2].as_secs_f64() * 1e3
    };
    eprintln!(
        "runtime latency (bb:1, median of 20): create+start+first output {:.1} ms \
         (prepare {:.1}, start {:.1}), stop+delete {:.1} ms (delete {:.1})",
        ms(&mut up),
        ms(&mut prepare),
        ms(&mut start),
        ms(&mut stop),
        ms(&mut remove),
    );
    assert!(up[up.len() / 2] < Duration::from_secs(5));
    assert!(stop[stop.len() / 2] < Duration::from_secs(5));
}

/// One runtime, many containers at once: every libcontainer call is in its
/// own helper process, so concurrent operations do not interfere.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_containers() {
    let rt = Rt::new();
    let t = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..12 {
        let exec = rt.exec.clone();
        let config = rt.shell(&rt.id("many"), &format!("echo n={i}; exit {}", i % 4));
        tasks.push(tokio::spawn(async move {
            let ctl = run(&exec, config).await;
            let status = exit_of(ctl.as_ref()).await;
            let text = log_text(ctl.as_ref());
            ctl.remove().await.expect("remove");
            (i, status, text)
        }));
    }
    for task in tasks {
        let (i, status, text) = task.await.expect("task");
        assert_eq!(status, ExitStatus::code(i % 4));
        assert_eq!(text, format!("n={i}\n"));
    }
    eprintln!(
        "12 concurrent containers, create to removed: {:?}",
        t.elapsed()
    );
    assert!(rt.exec.list().await.expect("list").is_empty());
}

/// The executor conformance suite against libcontainer.
mod conformance {
    use super::*;

    struct RtFixture(Rt);

    impl Fixture for RtFixture {
        fn wait_serving<'a>(
            &'a self,
            ctl: &'a dyn Controller,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>> {
            Box::pin(wait_serving(ctl))
        }

        fn executor(&self) -> Arc<dyn Executor> {
            Arc::new(self.0.restarted())
        }

        fn unique_id(&self, name: &str) -> String {
            self.0.id(name)
        }

        fn config(&self, id: &str, b: Behaviour) -> ContainerConfig {
            let check = |cmd: &str| pb::HealthConfig {
                test: vec!["CMD-SHELL".into(), cmd.into()],
                interval: Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 200_000_000,
                }),
                timeout: Some(prost_types::Duration {
                    seconds: 5,
                    nanos: 0,
                }),
                retries: 2,
                start_period: None,
            };
            match b {
                Behaviour::Serve => self.0.config(id),
                Behaviour::Exit(code) => self.0.shell(id, &format!("exit {code}")),
                Behaviour::IgnoreTerm => {
                    // sleep as PID 1, without tini: SIGTERM is ignored.
                    let mut c = self.0.config(id);
                    c.spec.command = vec!["/bin/sleep".into(), "3600".into()];
                    c
                }
                Behaviour::Unhealthy => {
                    let mut c = self.0.config(id);
                    c.spec.healthcheck = Some(check("false"));
                    c
                }
                Behaviour::Healthy => {
                    let mut c = self.0.config(id);
                    c.spec.healthcheck = Some(check("true"));
                    c
                }
            }
        }
    }

    fn fixture() -> RtFixture {
        RtFixture(Rt::new())
    }

    swarm::executor_conformance_tests!(fixture());
}
