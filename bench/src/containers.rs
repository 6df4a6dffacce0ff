//! `containers`: how long one container takes from nothing to running, and
//! whether many at once on one node serialize (issue 4: median under
//! 100 ms for one; 50 at once not behind a global lock).
//!
//! The runtime is driven in-process as a library, the way the worker
//! drives it: `bb:1` is pulled once from a test registry on 127.0.0.1 into
//! a fresh image store, then every container is `prepare_rootfs` (overlayfs
//! mount) → `Controller::prepare` (libcontainer create, in a `swarm
//! runtime-helper` process) → `Controller::start` → `inspect` until
//! Running. The command is `sleep 3600` under the image's tini, so nothing
//! binds a port and the baseline can run the very same command.
//!
//! Measured: one at a time (`--one`, default 20) with the split per phase,
//! and `--many` (default 50) started at once: the wall time until all run,
//! and that time over `many ×` the single median (≈ 1 when they queue
//! behind each other, ≈ 1/CPUs when CPU-bound and fully parallel).
//!
//! Baseline, same run: the same command (`tini -- busybox sleep 3600`, the
//! host binaries the image was built from) as a plain child process:
//! `fork`+`exec` with no container machinery; 50 at once from 50 threads.
//!
//! Owns a temp dir, a cgroup parent and a registry named with a harness
//! prefix (`swt-<pid>-<n>`): removed when the run ends, also on error or
//! Ctrl-C, and by the harness's stale sweep if the process was killed.
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{SigSet, SigmaskHow, Signal as NixSignal, kill, pthread_sigmask};
use nix::unistd::Pid;
use serde::Serialize;
use swarm::executor::{ContainerConfig, Controller, Executor, ImageConfig, NetworkMode, Status};
use swarm::image::{ImageStore, Puller};
use swarm::runtime::{LibcontainerExecutor, RuntimeConfig};
use swarm_harness::{Registry, cleanup};
use swarm_proto::v1 as pb;

use crate::report::{Better, Report, Row, RunInfo};
use crate::stats::{Summary, median};

/// The image under test and where its binaries came from on the host.
const IMAGE: &str = "bb:1";
const HOST_TINI: &str = "/usr/bin/tini-static";
const HOST_BUSYBOX: &str = "/bin/busybox";
/// How long one container may take to reach Running before the run fails.
const RUNNING_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone, Debug)]
pub struct ContainersOpts {
    /// Containers started one at a time.
    pub one: usize,
    /// Containers started at once.
    pub many: usize,
}

impl ContainersOpts {
    /// 20 one at a time and 50 at once; `--quick`: 5 and 10.
    #[must_use]
    pub fn new(quick: bool, one: Option<usize>, many: Option<usize>) -> Self {
        let (d_one, d_many) = if quick { (5, 10) } else { (20, 50) };
        ContainersOpts {
            one: one.unwrap_or(d_one).max(1),
            many: many.unwrap_or(d_many).max(1),
        }
    }
}

/// Milliseconds of each phase of one container start.
#[derive(Clone, Debug, Default, Serialize)]
struct Phases {
    mount_ms: f64,
    create_ms: f64,
    start_ms: f64,
    total_ms: f64,
}

#[derive(Debug, Serialize)]
struct Details {
    image: String,
    one: Vec<Phases>,
    many: Vec<Phases>,
    many_wall_ms: f64,
    baseline_one_ms: Vec<f64>,
    baseline_many_ms: Vec<f64>,
    baseline_many_wall_ms: f64,
}

/// The run's temp dir and cgroups, removed on drop whatever happened.
struct Cleanup {
    prefix: String,
    dir: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        // Kills whatever is still running in our cgroups, then unmounts
        // the rootfs mounts and deletes the data root.
        cleanup::remove_cgroups_containing(&self.prefix);
        cleanup::remove_dir_tree(&self.dir);
    }
}

/// One node's image store and runtime, over a registry of its own.
struct Node {
    store: ImageStore,
    exec: LibcontainerExecutor,
    image: ImageConfig,
    image_ref: String,
    _registry: Registry,
    // Last: runs after the registry has stopped.
    _cleanup: Cleanup,
}

fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

impl Node {
    async fn start() -> anyhow::Result<Node> {
        cleanup::sweep_stale_once();
        let prefix = swarm_harness::unique_prefix();
        let dir = std::env::temp_dir().join(format!("{prefix}-containers"));
        let guard = Cleanup {
            prefix: prefix.clone(),
            dir: dir.clone(),
        };
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let registry = tokio::task::spawn_blocking(|| {
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
            Registry::serve_test_images(addr, None)
        })
        .await??;
        let host = registry.addr().to_string();
        let store = ImageStore::open(dir.join("data/images")).context("opening the image store")?;
        let mut cfg = RuntimeConfig::new(&dir.join("data"), &format!("{prefix}-containers"))?;
        cfg.helper = swarm_harness::paths::swarm_bin();
        let exec = LibcontainerExecutor::new(cfg)?;
        let image_ref = format!("{host}/{IMAGE}");
        let mut node = Node {
            store,
            exec,
            image: ImageConfig::default(),
            image_ref,
            _registry: registry,
            _cleanup: guard,
        };
        let puller = Puller::new(&[host])?;
        let pulled = node
            .store
            .pull(&puller, &node.image_ref, Arc::new(|_| {}))
            .await
            .with_context(|| format!("pulling {}", node.image_ref))?;
        node.image = node.store.image_config(&pulled.id)?;
        Ok(node)
    }

    fn config(&self, id: &str, rootfs: PathBuf) -> ContainerConfig {
        ContainerConfig {
            id: id.into(),
            rootfs,
            image: self.image.clone(),
            spec: pb::ContainerSpec {
                args: vec!["/bin/sleep".into(), "3600".into()],
                ..Default::default()
            },
            resources: None,
            network: NetworkMode::Isolated,
            addresses: Vec::new(),
            nameserver: None,
        }
    }

    /// Mount, create, start, inspect until Running; timed per phase.
    async fn start_one(&self, id: String) -> anyhow::Result<(Box<dyn Controller>, Phases)> {
        let t0 = Instant::now();
        let (store, image, cid) = (self.store.clone(), self.image_ref.clone(), id.clone());
        let mount = tokio::task::spawn_blocking(move || {
            let target = store.rootfs_target(&cid);
            store.prepare_rootfs(&image, &target, &cid)
        })
        .await??;
        let rootfs = mount.target().to_path_buf();
        // Released explicitly in `remove` (or by the Node's drop).
        mount.keep();
        let t1 = Instant::now();
        let ctl = self.exec.controller(self.config(&id, rootfs))?;
        ctl.prepare()
            .await
            .with_context(|| format!("creating container {id}"))?;
        let t2 = Instant::now();
        ctl.start()
            .await
            .with_context(|| format!("starting container {id}"))?;
        loop {
            let state = ctl.inspect().await?;
            match state.status {
                Status::Running => break,
                Status::Exited => bail!("container {id} exited instead of running: {state:?}"),
                Status::Created => {}
            }
            if t2.elapsed() > RUNNING_TIMEOUT {
                bail!("container {id} not running after {RUNNING_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let t3 = Instant::now();
        let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
        Ok((
            ctl,
            Phases {
                mount_ms: ms(t0, t1),
                create_ms: ms(t1, t2),
                start_ms: ms(t2, t3),
                total_ms: ms(t0, t3),
            },
        ))
    }

    /// Kills (SIGKILL) and deletes the container and releases its rootfs.
    async fn remove(&self, ctl: Box<dyn Controller>) -> anyhow::Result<()> {
        let id = ctl.id().to_string();
        ctl.remove()
            .await
            .with_context(|| format!("removing container {id}"))?;
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.release(&id)).await??;
        Ok(())
    }
}

/// Plain processes, stopped and reaped on drop.
#[derive(Default)]
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        // SIGTERM, not SIGKILL: tini puts its child in a process group of
        // its own, so only tini can pass the signal on; a killed tini would
        // leave `sleep` behind. A SIGTERM that arrives before tini has set
        // up its signals kills it before it forks.
        for c in &self.0 {
            if let Ok(pid) = i32::try_from(c.id()) {
                let _ = kill(Pid::from_raw(pid), NixSignal::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for c in &mut self.0 {
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if matches!(c.try_wait(), Ok(None)) {
                eprintln!("swarm-bench: pid {} ignored SIGTERM; killing it", c.id());
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// `tini -- busybox sleep 3600` as a child; `spawn` returns once the exec
/// succeeded, which is when the process runs the command.
fn spawn_plain() -> anyhow::Result<(Child, f64)> {
    // This process blocks SIGTERM (see `stop`) and children inherit the
    // mask: tini would pass SIGTERM on to a `sleep` that never sees it.
    // Unblocked on this thread only, around the spawn.
    let mut term = SigSet::empty();
    term.add(NixSignal::SIGTERM);
    pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&term), None)
        .context("unblocking SIGTERM for the child")?;
    let t = Instant::now();
    let spawned = Command::new(HOST_TINI)
        .args(["--", HOST_BUSYBOX, "sleep", "3600"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let ms = t.elapsed().as_secs_f64() * 1e3;
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&term), None).context("blocking SIGTERM again")?;
    let child = spawned.with_context(|| {
        format!("starting {HOST_TINI} (Debian's tini-static, installed by scripts/setup.sh)")
    })?;
    Ok((child, ms))
}

fn baseline(opts: &ContainersOpts) -> anyhow::Result<(Vec<f64>, Vec<f64>, f64)> {
    let mut one = Vec::new();
    for _ in 0..opts.one {
        crate::stop::check()?;
        let (child, ms) = spawn_plain()?;
        drop(Children(vec![child]));
        one.push(ms);
    }
    let mut children = Children::default();
    let barrier = Arc::new(Barrier::new(opts.many + 1));
    let threads: Vec<_> = (0..opts.many)
        .map(|_| {
            let b = barrier.clone();
            std::thread::spawn(move || {
                b.wait();
                spawn_plain()
            })
        })
        .collect();
    barrier.wait();
    let t = Instant::now();
    let mut many = Vec::new();
    let mut first_err = None;
    for th in threads {
        match th.join() {
            Ok(Ok((child, ms))) => {
                children.0.push(child);
                many.push(ms);
            }
            Ok(Err(e)) => first_err = first_err.or(Some(e)),
            Err(_) => first_err = first_err.or(Some(anyhow::anyhow!("a spawn thread panicked"))),
        }
    }
    let wall = t.elapsed().as_secs_f64() * 1e3;
    drop(children);
    if let Some(e) = first_err {
        return Err(e);
    }
    Ok((one, many, wall))
}

async fn candidate(
    node: &Arc<Node>,
    opts: &ContainersOpts,
) -> anyhow::Result<(Vec<Phases>, Vec<Phases>, f64)> {
    let mut one = Vec::new();
    for i in 0..opts.one {
        crate::stop::check()?;
        let (ctl, phases) = node.start_one(format!("one-{i}")).await?;
        node.remove(ctl).await?;
        one.push(phases);
    }
    crate::stop::check()?;
    // One task each, as the worker runs one task manager per task.
    let t = Instant::now();
    let mut starts = tokio::task::JoinSet::new();
    for i in 0..opts.many {
        let node = node.clone();
        starts.spawn(async move { node.start_one(format!("many-{i}")).await });
    }
    let mut many = Vec::new();
    let mut ctls = Vec::new();
    let mut first_err = None;
    while let Some(r) = starts.join_next().await {
        match r.context("a container start task failed") {
            Ok(Ok((ctl, p))) => {
                ctls.push(ctl);
                many.push(p);
            }
            Ok(Err(e)) | Err(e) => first_err = first_err.or(Some(e)),
        }
    }
    let wall = t.elapsed().as_secs_f64() * 1e3;
    let mut removals = tokio::task::JoinSet::new();
    for ctl in ctls {
        let node = node.clone();
        removals.spawn(async move { node.remove(ctl).await });
    }
    while let Some(r) = removals.join_next().await {
        if let Err(e) = r.context("a container removal task failed").and_then(|r| r) {
            first_err = first_err.or(Some(e));
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    Ok((one, many, wall))
}

fn summary_rows(rows: &mut Vec<Row>, what: &str, c: &[f64], b: Option<&[f64]>) {
    let (cs, bs) = (Summary::of(c), b.and_then(Summary::of));
    let pick = |s: &Option<Summary>, f: fn(&Summary) -> f64| s.as_ref().map(f);
    for (label, f) in [
        ("p50", (|s: &Summary| s.p50) as fn(&Summary) -> f64),
        ("p90", |s| s.p90),
        ("min", |s| s.min),
        ("max", |s| s.max),
    ] {
        rows.push(Row::new(
            format!("{what}, {label}"),
            "ms",
            pick(&cs, f),
            pick(&bs, f),
            Better::Lower,
        ));
    }
}

/// Runs the benchmark on a runtime of its own.
pub fn run(opts: &ContainersOpts, quick: bool) -> anyhow::Result<Report> {
    let started = Instant::now();
    let mut info = RunInfo::begin(quick);
    for bin in [HOST_TINI, HOST_BUSYBOX] {
        if !std::path::Path::new(bin).is_file() {
            bail!("{bin} is missing: install Debian's tini and busybox-static (scripts/setup.sh)");
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting a tokio runtime")?;
    let (one, many, many_wall) = rt.block_on(async {
        let node = Arc::new(Node::start().await?);
        let res = candidate(&node, opts).await;
        // The node's cleanup blocks (cgroups, unmounts, registry stop).
        tokio::task::spawn_blocking(move || drop(node)).await?;
        res
    })?;
    drop(rt);
    let (b_one, b_many, b_wall) = baseline(opts)?;
    info.end(started);

    let totals: Vec<f64> = one.iter().map(|p| p.total_ms).collect();
    let mut rows = Vec::new();
    summary_rows(
        &mut rows,
        &format!("one of {}: create to running", opts.one),
        &totals,
        Some(&b_one),
    );
    for (label, f) in [
        (
            "rootfs mount",
            (|p: &Phases| p.mount_ms) as fn(&Phases) -> f64,
        ),
        ("create (runtime prepare)", |p| p.create_ms),
        ("start to running", |p| p.start_ms),
    ] {
        let v: Vec<f64> = one.iter().map(f).collect();
        rows.push(Row::new(
            format!("one: {label}, p50"),
            "ms",
            median(&v),
            None,
            Better::Lower,
        ));
    }
    let n = opts.many;
    rows.push(Row::new(
        format!("{n} at once: all running"),
        "ms",
        Some(many_wall),
        Some(b_wall),
        Better::Lower,
    ));
    let many_totals: Vec<f64> = many.iter().map(|p| p.total_ms).collect();
    rows.push(Row::new(
        format!("{n} at once: each, p50"),
        "ms",
        median(&many_totals),
        median(&b_many),
        Better::Lower,
    ));
    // n is small: the cast is exact.
    let serial = |wall: f64, one: Option<f64>| one.map(|m| wall / (n as f64 * m));
    rows.push(Row::new(
        format!("{n} at once / ({n} x one p50)"),
        "x",
        serial(many_wall, median(&totals)),
        serial(b_wall, median(&b_one)),
        Better::Lower,
    ));

    let mut notes = vec![
        format!(
            "candidate: {IMAGE} from a registry on 127.0.0.1 into a fresh image store; each \
             container is an overlayfs rootfs mount, libcontainer create and start (each in a \
             `swarm runtime-helper` process, with a shim), polled with inspect until Running; \
             command `sleep 3600` under the image's tini, own network namespace"
        ),
        format!(
            "baseline: `{HOST_TINI} -- {HOST_BUSYBOX} sleep 3600` (the binaries the image was \
             built from) as a plain child process; timed until spawn returns (exec done)"
        ),
        format!(
            "{n} at once: one tokio task per container (threads for the baseline), all started \
             together; the last row is ~1 if they queue behind each other, ~1/{} at best when \
             CPU-bound on {} CPUs",
            info.cpus, info.cpus
        ),
    ];
    if let Some(m) = median(&totals) {
        notes.push(format!(
            "issue 4 target, median create to running under 100 ms: {} ({m:.1} ms)",
            if m < 100.0 { "met" } else { "NOT met" }
        ));
    }
    Ok(Report {
        name: "containers".into(),
        title: format!(
            "container create to running: {} one at a time, {n} at once on one node",
            opts.one
        ),
        candidate: "libcontainer executor (in-process library, helper processes)".into(),
        baseline: "plain fork/exec of the same command".into(),
        rows,
        notes,
        run: info,
        details: serde_json::to_value(Details {
            image: IMAGE.into(),
            one,
            many,
            many_wall_ms: many_wall,
            baseline_one_ms: b_one,
            baseline_many_ms: b_many,
            baseline_many_wall_ms: b_wall,
        })
        .context("encoding the samples")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_is_smaller_and_flags_win() {
        let full = ContainersOpts::new(false, None, None);
        assert_eq!((full.one, full.many), (20, 50));
        let quick = ContainersOpts::new(true, None, None);
        assert_eq!((quick.one, quick.many), (5, 10));
        let set = ContainersOpts::new(true, Some(3), Some(0));
        assert_eq!((set.one, set.many), (3, 1));
    }

    #[test]
    fn summary_rows_pair_candidate_and_baseline() {
        let mut rows = Vec::new();
        summary_rows(&mut rows, "x", &[1.0, 2.0, 3.0], Some(&[0.5, 1.0, 1.5]));
        assert_eq!(rows.len(), 4);
        assert_eq!(rows[0].metric, "x, p50");
        assert_eq!(
            (rows[0].candidate, rows[0].baseline),
            (Some(2.0), Some(1.0))
        );
        assert_eq!(rows[0].ratio, Some(2.0));
        assert_eq!(rows[3].candidate, Some(3.0));
    }
}
