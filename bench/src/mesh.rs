//! `mesh`: what the routing mesh (the eBPF load balancer) costs next to
//! no load balancer, an nftables DNAT and a userspace proxy, for short
//! HTTP requests and for small UDP datagrams (issue 7: mesh adds < 10%
//! latency over direct access and costs less CPU per request than
//! nftables DNAT; small-UDP packets per second through the eBPF path vs an
//! XDP_PASS baseline).
//!
//! Topology (`swarm_harness::overlay_lab`): a router, three node
//! namespaces on their own routed /24s and one outside client host.
//! Nodes A and B each run an `EbpfDataplane` (in-process) with the
//! overlay and the mesh on `eth0`, and the ingress network 4200
//! (10.255.0.0/24). Backend containers: 10.255.0.5 on B, 10.255.0.6 on A,
//! each running the same HTTP responder (hyper, one thread, a 3-byte
//! body) and one UDP counter per UDP path ([`udp::UdpCounter`]). Node C
//! runs no eBPF: only kernel forwarding, nftables and the userspace proxy.
//! Frontends: published 8000 (TCP → 8080, UDP → 9001) to the backend on
//! B, published 8001 (TCP → 8080, UDP → 9002) to the backend on A.
//!
//! HTTP paths, all driven by `wrk` (keep-alive connections) in the client
//! host:
//! - mesh, remote backend: client → A:8000 → (TC, VXLAN) → backend on
//!   B, replies tunnelled back through A;
//! - mesh, local backend: client → A:8001 → backend on A;
//! - direct: client → 10.255.0.5:8080, routed by the router to B and by
//!   B's kernel onto the container's veth (a /32 route, no translation):
//!   the "no load balancer" path;
//! - nftables DNAT: client → C:8000, DNAT to 10.255.0.5:8080 plus
//!   masquerade (kernel conntrack), through the router and B;
//! - nftables DNAT over VXLAN: client → C:8003, the same DNAT and
//!   masquerade, then a kernel VXLAN device on C to B's overlay (docker's
//!   routing mesh: NAT on the ingress node, overlay to the backend);
//! - userspace proxy: client → C:8002, a tokio proxy ([`Proxy`]) in C
//!   copying to 10.255.0.5:8080.
//!
//! UDP paths (after the HTTP ones), driven by [`udp::blast`] in the client
//! host: 18-byte datagrams (64-byte frames) from 64 source ports, as fast
//! as one thread with `sendmmsg` can, one way (the counters do not answer):
//! - mesh, remote backend: client → A:8000/udp → (TC, VXLAN) → counter
//!   at 10.255.0.5:9001 on B;
//! - mesh, local backend: client → A:8001/udp → counter at
//!   10.255.0.6:9002 on A;
//! - baseline "XDP_PASS + kernel routing": client → 10.255.0.5:9003, the
//!   direct path above (router, B's /32 route, no translation).
//!
//! "XDP path" here: for the UDP phase only, the data plane's own XDP
//! program (`swarm_xdp_ingress`: counts the frame, returns XDP_PASS; with
//! the TC egress counter that `Dataplane::attach` adds) is attached to
//! `eth0` of A and B, as `swarm daemon --dataplane-interface eth0` does,
//! so every UDP path enters every node through the same XDP_PASS hook.
//! The mesh translation itself is not XDP: it is `swarm_lb_mesh_ingress`
//! at TC ingress of `eth0`, after XDP and after the kernel builds the skb.
//! B's `eth0` carries that TC program for the baseline too (B runs the
//! mesh as every node does); for a packet not addressed to B it parses the
//! headers and passes. So the baseline is XDP_PASS + the mesh's early
//! exit + kernel routing, and mesh vs baseline is the cost of the
//! translation, conntrack and (other node) the VXLAN hop and second
//! router crossing. The HTTP phase runs without XDP attached, as before.
//!
//! Rounds alternate the paths (HTTP and UDP each); the median round is
//! reported. CPU: the busy time of the whole machine (`/proc/stat`)
//! during each run, per 100k requests (HTTP) or per million datagrams
//! delivered (UDP); it includes the load generator and the backend (the
//! same for every path) and anything else running on the machine.
//!
//! Owns its namespaces (unique `swt-<pid>-` names), server threads and
//! UDP sockets: gone when the run ends, also on error or Ctrl-C.
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use swarm::dataplane::{
    Backend, Counter, CounterId, Dataplane, LocalEndpoint, PortMapping, Proto, ServiceFrontend,
    XdpMode, container_mac, ebpf::EbpfDataplane, overlay::DEFAULT_VXLAN_PORT,
};
use swarm_harness::Netns;
use swarm_harness::overlay_lab::OverlayLab;

use crate::report::{Better, Report, Row, RunInfo};
use crate::stats::median;

pub mod udp;

use udp::{UdpCounter, UdpRun};

const VNI: u32 = 4200;
const SUBNET: &str = "10.255.0.0/24";
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 255, 0, 1);
/// Backend container on node B (index 1).
const REMOTE_BACKEND: Ipv4Addr = Ipv4Addr::new(10, 255, 0, 5);
/// Backend container on node A (index 0).
const LOCAL_BACKEND: Ipv4Addr = Ipv4Addr::new(10, 255, 0, 6);
const TARGET: u16 = 8080;
const PUBLISHED_REMOTE: u16 = 8000;
const PUBLISHED_LOCAL: u16 = 8001;
const NFT_PORT: u16 = 8000;
const PROXY_PORT: u16 = 8002;
/// nftables DNAT into a kernel VXLAN overlay, on C.
const NFT_VXLAN_PORT: u16 = 8003;
/// C's address on its kernel VXLAN device (the masquerade source there).
const NFT_VXLAN_ADDR: Ipv4Addr = Ipv4Addr::new(10, 255, 0, 250);
/// Marks the connections of the VXLAN path on C, for its routing table.
const NFT_VXLAN_MARK: u32 = 0x5342;
/// UDP targets (published ports as TCP: 8000/udp, 8001/udp): one counter
/// per path, so each path's count is its own.
const UDP_TARGET_REMOTE: u16 = 9001;
const UDP_TARGET_LOCAL: u16 = 9002;
const UDP_TARGET_DIRECT: u16 = 9003;
/// Node indices in the lab.
const A: usize = 0;
const B: usize = 1;
const C: usize = 2;

#[derive(Clone, Debug)]
pub struct MeshOpts {
    /// Seconds per wrk run and per UDP run.
    pub seconds: u32,
    /// Runs per path (alternating).
    pub rounds: usize,
    /// wrk connections (one thread).
    pub connections: usize,
}

impl MeshOpts {
    /// 5 s × 3 rounds, 16 connections; `--quick`: 2 s × 1.
    #[must_use]
    pub fn new(
        quick: bool,
        seconds: Option<u32>,
        rounds: Option<usize>,
        connections: Option<usize>,
    ) -> Self {
        let (s, r) = if quick { (2, 1) } else { (5, 3) };
        MeshOpts {
            seconds: seconds.unwrap_or(s).max(1),
            rounds: rounds.unwrap_or(r).max(1),
            connections: connections.unwrap_or(16).max(1),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum PathKind {
    MeshRemote,
    MeshLocal,
    Direct,
    NftDnat,
    NftVxlan,
    Proxy,
}

impl PathKind {
    const ALL: [PathKind; 6] = [
        PathKind::MeshRemote,
        PathKind::MeshLocal,
        PathKind::Direct,
        PathKind::NftDnat,
        PathKind::NftVxlan,
        PathKind::Proxy,
    ];

    fn label(self) -> &'static str {
        match self {
            PathKind::MeshRemote => "mesh, backend on other node",
            PathKind::MeshLocal => "mesh, backend on same node",
            PathKind::Direct => "direct (routed, no LB)",
            PathKind::NftDnat => "nftables DNAT + masq",
            PathKind::NftVxlan => "nftables DNAT + masq over kernel VXLAN",
            PathKind::Proxy => "userspace proxy (tokio)",
        }
    }

    fn target(self, lab: &OverlayLab) -> SocketAddr {
        match self {
            PathKind::MeshRemote => SocketAddr::from((lab.nodes[A].addr, PUBLISHED_REMOTE)),
            PathKind::MeshLocal => SocketAddr::from((lab.nodes[A].addr, PUBLISHED_LOCAL)),
            PathKind::Direct => SocketAddr::from((REMOTE_BACKEND, TARGET)),
            PathKind::NftDnat => SocketAddr::from((lab.nodes[C].addr, NFT_PORT)),
            PathKind::NftVxlan => SocketAddr::from((lab.nodes[C].addr, NFT_VXLAN_PORT)),
            PathKind::Proxy => SocketAddr::from((lab.nodes[C].addr, PROXY_PORT)),
        }
    }
}

/// What one wrk run printed, plus the CPU the machine spent meanwhile.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct WrkRun {
    pub requests: u64,
    pub seconds: f64,
    pub requests_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Socket errors (connect, read, write, timeout) and non-2xx answers.
    pub errors: u64,
    /// Busy CPU seconds of the whole machine during the run.
    pub machine_cpu_s: f64,
    /// CPU seconds of wrk and of this process (backends, proxy) only.
    pub our_cpu_s: f64,
}

impl WrkRun {
    fn cpu_per_100k(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.machine_cpu_s / self.requests as f64 * 1e5)
    }
}

/// A wrk duration such as `283.00us`, `1.23ms`, `2.00s`, `1.00m`, in ms.
fn parse_duration_ms(s: &str) -> Option<f64> {
    let s = s.trim();
    let split = s.find(|c: char| c.is_ascii_alphabetic())?;
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let factor = match unit {
        "us" => 1e-3,
        "ms" => 1.0,
        "s" => 1e3,
        "m" => 60e3,
        "h" => 3600e3,
        _ => return None,
    };
    Some(n * factor)
}

/// Parses `wrk --latency` output (CPU fields left at zero).
pub fn parse_wrk(out: &str) -> anyhow::Result<WrkRun> {
    let mut r = WrkRun::default();
    let (mut p50, mut p99, mut rps, mut total) = (None, None, None, None);
    for line in out.lines() {
        let l = line.trim();
        if let Some(rest) = l.strip_prefix("50%") {
            p50 = parse_duration_ms(rest);
        } else if let Some(rest) = l.strip_prefix("99%") {
            p99 = parse_duration_ms(rest);
        } else if let Some(rest) = l.strip_prefix("Requests/sec:") {
            rps = rest.trim().parse::<f64>().ok();
        } else if let Some(rest) = l.strip_prefix("Socket errors:") {
            r.errors += rest
                .split(',')
                .filter_map(|f| f.split_whitespace().last()?.parse::<u64>().ok())
                .sum::<u64>();
        } else if let Some(rest) = l.strip_prefix("Non-2xx or 3xx responses:") {
            r.errors += rest.trim().parse::<u64>().unwrap_or(0);
        } else if let Some((n, rest)) = l.split_once(" requests in ") {
            let secs = rest
                .split(',')
                .next()
                .and_then(parse_duration_ms)
                .map(|ms| ms / 1e3);
            total = n.trim().parse::<u64>().ok().zip(secs);
        }
    }
    let (Some(p50), Some(p99), Some(rps), Some((requests, seconds))) = (p50, p99, rps, total)
    else {
        bail!("unexpected wrk output:\n{out}");
    };
    r.p50_ms = p50;
    r.p99_ms = p99;
    r.requests_per_s = rps;
    r.requests = requests;
    r.seconds = seconds;
    Ok(r)
}

/// Busy (non-idle, non-iowait) jiffies of all CPUs, from `/proc/stat`.
fn machine_busy_ticks() -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    parse_busy_ticks(&stat).context("no cpu line in /proc/stat")
}

/// `cpu  user nice system idle iowait irq softirq steal guest guest_nice`:
/// everything but idle and iowait (guest time is already inside user).
pub fn parse_busy_ticks(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    let get = |i: usize| f.get(i).copied().unwrap_or(0);
    Some(get(0) + get(1) + get(2) + get(5) + get(6) + get(7))
}

/// utime + stime + cutime + cstime of this process, in jiffies.
fn own_ticks() -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").context("reading /proc/self/stat")?;
    // Fields after the command name (which may hold spaces), from field 3.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("odd /proc/self/stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime is field 14, i.e. index 11 after the command name.
    let sum = (11..15).filter_map(|i| f.get(i)?.parse::<u64>().ok()).sum();
    Ok(sum)
}

fn ticks_per_s() -> f64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(t)) if t > 0 => t as f64,
        _ => 100.0,
    }
}

/// One wrk run from the client host to `to`.
fn wrk(client: &Netns, to: SocketAddr, seconds: u32, connections: usize) -> anyhow::Result<WrkRun> {
    let (m0, o0) = (machine_busy_ticks()?, own_ticks()?);
    let out = client
        .command("wrk")
        .args([
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "--latency",
            &format!("http://{to}/"),
        ])
        .output()
        .context("running wrk (apt-get install wrk)")?;
    let (m1, o1) = (machine_busy_ticks()?, own_ticks()?);
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "wrk to {to} failed ({}): {text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut r = parse_wrk(&text).with_context(|| format!("wrk to {to}"))?;
    let hz = ticks_per_s();
    r.machine_cpu_s = m1.saturating_sub(m0) as f64 / hz;
    r.our_cpu_s = o1.saturating_sub(o0) as f64 / hz;
    Ok(r)
}

/// A server on its own thread, inside a namespace, on a one-thread tokio
/// runtime; stops on drop.
struct NsServer {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for NsServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl NsServer {
    /// Binds `addr` in `ns`, then serves every connection with `serve` on a
    /// thread that entered `ns` (so outgoing connections start there too).
    fn start<F, Fut>(ns: &Netns, addr: SocketAddr, serve: F) -> anyhow::Result<NsServer>
    where
        F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + 'static,
    {
        let listener = ns
            .run(|| TcpListener::bind(addr))
            .with_context(|| format!("binding {addr} in {}", ns.name()))?;
        listener.set_nonblocking(true)?;
        let path: PathBuf = ns.path().to_path_buf();
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let setup = || -> anyhow::Result<tokio::runtime::Runtime> {
                let file = std::fs::File::open(&path)?;
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)?;
                Ok(tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?)
            };
            let rt = match setup() {
                Ok(rt) => {
                    let _ = ready_tx.send(Ok(()));
                    rt
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let local = tokio::task::LocalSet::new();
            local.block_on(&rt, async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                loop {
                    tokio::select! {
                        _ = &mut rx => return,
                        conn = listener.accept() => {
                            if let Ok((conn, _)) = conn {
                                let _ = conn.set_nodelay(true);
                                tokio::task::spawn_local(serve(conn));
                            }
                        }
                    }
                }
            });
        });
        ready_rx
            .recv()
            .context("server thread died")?
            .context("starting a server thread")?;
        Ok(NsServer {
            stop: Some(tx),
            thread: Some(thread),
        })
    }
}

/// The backend: `200 OK` with body `ok\n` to every request (HTTP/1.1,
/// keep-alive), served by hyper.
fn http_backend(ns: &Netns, addr: SocketAddr) -> anyhow::Result<NsServer> {
    NsServer::start(ns, addr, |conn| async move {
        let service = hyper::service::service_fn(|_req| async {
            Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(
                &b"ok\n"[..],
            )))
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(conn), service)
            .await;
    })
}

/// A userspace TCP proxy: every connection to its address is copied both
/// ways to `backend` (what a proxy-based load balancer does per byte).
/// Stops on drop.
pub struct Proxy {
    _server: NsServer,
}

impl Proxy {
    pub fn start(ns: &Netns, addr: SocketAddr, backend: SocketAddr) -> anyhow::Result<Proxy> {
        NsServer::start(ns, addr, move |mut conn| async move {
            let Ok(mut up) = tokio::net::TcpStream::connect(backend).await else {
                return;
            };
            let _ = up.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut conn, &mut up).await;
        })
        .map(|s| Proxy { _server: s })
    }
}

fn run_ok(ns: &Netns, program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = ns.exec(program, args);
    if !out.ok() {
        bail!("{program} {} in {}: {out}", args.join(" "), ns.name());
    }
    Ok(())
}

/// A frontend on the ingress network: `published`/tcp → the HTTP
/// backend, `published`/udp → `udp_target` (a UDP counter).
fn frontend(id: &str, vip: Ipv4Addr, published: u16, udp_target: u16) -> ServiceFrontend {
    let ports = vec![
        PortMapping {
            proto: Proto::Tcp,
            port: published,
            target: TARGET,
        },
        PortMapping {
            proto: Proto::Udp,
            port: published,
            target: udp_target,
        },
    ];
    ServiceFrontend {
        id: id.into(),
        vni: VNI,
        vip: Some(vip),
        ports: ports.clone(),
        published: ports,
    }
}

#[derive(Debug, Serialize)]
struct PathResult {
    path: PathKind,
    label: &'static str,
    target: String,
    runs: Vec<WrkRun>,
    median_requests_per_s: Option<f64>,
    median_p50_ms: Option<f64>,
    median_p99_ms: Option<f64>,
    median_cpu_s_per_100k: Option<f64>,
    median_our_cpu_s_per_100k: Option<f64>,
}

impl PathResult {
    fn of(path: PathKind, target: SocketAddr, runs: Vec<WrkRun>) -> PathResult {
        let m = |f: &dyn Fn(&WrkRun) -> Option<f64>| {
            median(&runs.iter().filter_map(f).collect::<Vec<_>>())
        };
        PathResult {
            path,
            label: path.label(),
            target: target.to_string(),
            median_requests_per_s: m(&|r| Some(r.requests_per_s)),
            median_p50_ms: m(&|r| Some(r.p50_ms)),
            median_p99_ms: m(&|r| Some(r.p99_ms)),
            median_cpu_s_per_100k: m(&|r| r.cpu_per_100k()),
            median_our_cpu_s_per_100k: m(&|r| {
                (r.requests > 0).then(|| r.our_cpu_s / r.requests as f64 * 1e5)
            }),
            runs,
        }
    }
}

#[derive(Debug, Serialize)]
struct Details {
    paths: Vec<PathResult>,
    wrk: String,
    udp: UdpDetails,
    mesh_counters: serde_json::Value,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum UdpPath {
    MeshRemote,
    MeshLocal,
    XdpPass,
}

impl UdpPath {
    const ALL: [UdpPath; 3] = [UdpPath::MeshRemote, UdpPath::MeshLocal, UdpPath::XdpPass];

    fn label(self) -> &'static str {
        match self {
            UdpPath::MeshRemote => PathKind::MeshRemote.label(),
            UdpPath::MeshLocal => PathKind::MeshLocal.label(),
            UdpPath::XdpPass => "XDP_PASS + kernel routing",
        }
    }

    /// Where the client sends.
    fn target(self, lab: &OverlayLab) -> SocketAddr {
        match self {
            UdpPath::MeshRemote => PathKind::MeshRemote.target(lab),
            UdpPath::MeshLocal => PathKind::MeshLocal.target(lab),
            UdpPath::XdpPass => SocketAddr::from((REMOTE_BACKEND, UDP_TARGET_DIRECT)),
        }
    }

    /// Where the datagrams arrive: this path's own counter.
    fn counter(self) -> SocketAddr {
        match self {
            UdpPath::MeshRemote => SocketAddr::from((REMOTE_BACKEND, UDP_TARGET_REMOTE)),
            UdpPath::MeshLocal => SocketAddr::from((LOCAL_BACKEND, UDP_TARGET_LOCAL)),
            UdpPath::XdpPass => SocketAddr::from((REMOTE_BACKEND, UDP_TARGET_DIRECT)),
        }
    }
}

#[derive(Debug, Serialize)]
struct UdpPathResult {
    path: UdpPath,
    label: &'static str,
    target: String,
    counter: String,
    runs: Vec<UdpRun>,
    median_received_per_s: Option<f64>,
    median_sent_per_s: Option<f64>,
    median_loss_pct: Option<f64>,
    median_cpu_s_per_million: Option<f64>,
    /// XDP-counted frames on eth0 of A and B per datagram sent: which
    /// nodes' XDP hook the path went through.
    median_xdp_a_per_sent: Option<f64>,
    median_xdp_b_per_sent: Option<f64>,
}

impl UdpPathResult {
    fn of(path: UdpPath, target: SocketAddr, runs: Vec<UdpRun>) -> UdpPathResult {
        let m = |f: &dyn Fn(&UdpRun) -> Option<f64>| {
            median(&runs.iter().filter_map(f).collect::<Vec<_>>())
        };
        let per_sent = |n: u64, r: &UdpRun| (r.sent > 0).then(|| n as f64 / r.sent as f64);
        UdpPathResult {
            path,
            label: path.label(),
            target: target.to_string(),
            counter: path.counter().to_string(),
            median_received_per_s: m(&|r| Some(r.received_per_s)),
            median_sent_per_s: m(&|r| Some(r.sent_per_s)),
            median_loss_pct: m(&|r| Some(r.loss_pct)),
            median_cpu_s_per_million: m(&|r| r.cpu_s_per_million()),
            median_xdp_a_per_sent: m(&|r| per_sent(r.xdp_frames_a, r)),
            median_xdp_b_per_sent: m(&|r| per_sent(r.xdp_frames_b, r)),
            runs,
        }
    }
}

#[derive(Debug, Serialize)]
struct UdpDetails {
    paths: Vec<UdpPathResult>,
    payload_bytes: usize,
    frame_bytes: usize,
    source_ports: usize,
    send_batch: usize,
    /// How the XDP program was attached to eth0 of A and B
    /// (`xdp-native` or `xdp-generic`).
    xdp_modes: Vec<String>,
}

/// UDP frames the XDP program counted arriving on `iface` (counter keys
/// as `swarm-ebpf-common` names them: direction `ingress`, class
/// `ipv4_udp`; only the XDP program counts ingress).
fn xdp_udp_frames(counters: &BTreeMap<CounterId, Counter>, iface: &str) -> u64 {
    counters
        .iter()
        .filter(|((i, dir, class), _)| i == iface && *dir == "ingress" && *class == "ipv4_udp")
        .map(|(_, c)| c.packets)
        .sum()
}

/// UDP frames counted by XDP on eth0 of A and B so far.
fn xdp_frames(dps: &[EbpfDataplane]) -> anyhow::Result<[u64; 2]> {
    let mut out = [0; 2];
    for (o, dp) in out.iter_mut().zip(dps) {
        *o = xdp_udp_frames(&dp.status()?.counters, "eth0");
    }
    Ok(out)
}

/// One UDP run: `seconds` of sending to `path`'s target, counted at its
/// counter until the count settles, with the machine's CPU and the XDP
/// counters of A and B around it.
fn udp_run(
    lab: &OverlayLab,
    dps: &[EbpfDataplane],
    counter: &UdpCounter,
    path: UdpPath,
    seconds: f64,
) -> anyhow::Result<UdpRun> {
    let client = &lab.hosts[0].ns;
    let (x0, m0, r0) = (xdp_frames(dps)?, machine_busy_ticks()?, counter.received());
    let blast = udp::blast(client, path.target(lab), Duration::from_secs_f64(seconds))?;
    let r1 = counter.settled(Duration::from_secs(1));
    let (m1, x1) = (machine_busy_ticks()?, xdp_frames(dps)?);
    let cpu = m1.saturating_sub(m0) as f64 / ticks_per_s();
    let mut run = UdpRun::new(&blast, r1.saturating_sub(r0), cpu);
    run.xdp_frames_a = x1[0].saturating_sub(x0[0]);
    run.xdp_frames_b = x1[1].saturating_sub(x0[1]);
    Ok(run)
}

/// The UDP phase: attaches the XDP program to eth0 of A and B, starts a
/// counter per path, checks every path delivers, then runs alternating
/// rounds. Detaches XDP again at the end (on an error, dropping the data
/// planes does).
fn udp_phase(
    dps: &mut [EbpfDataplane],
    lab: &OverlayLab,
    opts: &MeshOpts,
) -> anyhow::Result<UdpDetails> {
    let mut xdp_modes = Vec::new();
    for (i, dp) in [A, B].into_iter().zip(dps.iter_mut()) {
        lab.nodes[i]
            .ns
            .run(|| dp.attach("eth0"))
            .with_context(|| format!("attaching XDP to eth0 of {}", lab.nodes[i].ns.name()))?;
        let mode = dp
            .status()?
            .interfaces
            .into_iter()
            .filter(|a| a.name == "eth0")
            .flat_map(|a| a.programs)
            .find(|p| p.kind == "xdp")
            .map_or_else(|| "unknown".into(), |p| p.attach_mode);
        xdp_modes.push(mode);
    }
    let counters = UdpPath::ALL
        .iter()
        .map(|p| {
            let at = p.counter();
            let c = lab
                .containers
                .iter()
                .find(|c| SocketAddr::from((c.addr, at.port())) == at)
                .with_context(|| format!("no container holds {at}"))?;
            UdpCounter::start(&c.ns, at)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;

    // Warm-up: every path delivers (neighbours, conntrack entries of the
    // 64 flows in place) before anything is measured.
    for (p, c) in UdpPath::ALL.iter().zip(&counters) {
        crate::stop::check()?;
        let r = udp_run(lab, dps, c, *p, 0.5)
            .with_context(|| format!("UDP warm-up of {}", p.label()))?;
        if r.received == 0 {
            bail!("UDP: {} delivers nothing: {r:?}", p.label());
        }
    }
    let mut runs: Vec<Vec<UdpRun>> = vec![Vec::new(); UdpPath::ALL.len()];
    for round in 0..opts.rounds {
        for (i, (p, c)) in UdpPath::ALL.iter().zip(&counters).enumerate() {
            crate::stop::check()?;
            eprintln!(
                "mesh bench: UDP round {}/{}: {}",
                round + 1,
                opts.rounds,
                p.label()
            );
            let r = udp_run(lab, dps, c, *p, f64::from(opts.seconds))?;
            if r.refused > 0 {
                eprintln!(
                    "mesh bench: UDP {}: {} sends refused (ICMP port unreachable)",
                    p.label(),
                    r.refused
                );
            }
            runs[i].push(r);
        }
    }
    drop(counters);
    for dp in dps.iter_mut() {
        dp.detach("eth0");
    }
    Ok(UdpDetails {
        paths: UdpPath::ALL
            .into_iter()
            .zip(runs)
            .map(|(p, r)| UdpPathResult::of(p, p.target(lab), r))
            .collect(),
        payload_bytes: udp::PAYLOAD_BYTES,
        frame_bytes: udp::FRAME_BYTES,
        source_ports: udp::SOURCE_PORTS,
        send_batch: udp::SEND_BATCH,
        xdp_modes,
    })
}

/// Builds the lab: eBPF on A and B, backends, routes for the direct path,
/// nftables on C. Returns the data planes (A, B) and the lab.
fn build() -> anyhow::Result<(Vec<EbpfDataplane>, OverlayLab)> {
    let mut lab = OverlayLab::new(3, true).context("building the namespaces")?;
    lab.add_outside_host().context("adding the client host")?;
    let mut dps = Vec::new();
    let mut mtu = None;
    for i in [A, B] {
        let node = &lab.nodes[i];
        let (dp, info) = node.ns.run(|| -> anyhow::Result<_> {
            let mut dp = EbpfDataplane::load(XdpMode::Auto)?;
            let info = dp.overlay_start(DEFAULT_VXLAN_PORT)?;
            dp.mesh_start("eth0", node.addr)?;
            dp.set_overlay_network(VNI, SUBNET.parse()?, GATEWAY)?;
            Ok((dp, info))
        })?;
        dps.push(dp);
        mtu = Some(info.container_mtu);
    }
    let mtu = mtu.context("no nodes")?;
    let remote = lab.add_container(B, REMOTE_BACKEND, 24, GATEWAY, mtu)?;
    let local = lab.add_container(A, LOCAL_BACKEND, 24, GATEWAY, mtu)?;
    for (i, dp) in [A, B].into_iter().zip(dps.iter_mut()) {
        for c in [remote, local] {
            let c = &lab.containers[c];
            let node_ip = lab.nodes[c.node].addr;
            let ep = LocalEndpoint {
                vni: VNI,
                addr: c.addr,
                host_ifindex: c.host_ifindex,
                container_mac: container_mac(c.addr),
            };
            lab.nodes[i].ns.run(|| {
                if c.node == i {
                    dp.set_local_endpoint(ep)
                } else {
                    dp.set_remote_endpoint(VNI, c.addr, node_ip)
                }
            })?;
        }
        lab.nodes[i].ns.run(|| -> anyhow::Result<()> {
            let b = |addr| Backend {
                addr,
                draining: false,
            };
            dp.set_service(frontend(
                "remote/ingress",
                Ipv4Addr::new(10, 255, 0, 100),
                PUBLISHED_REMOTE,
                UDP_TARGET_REMOTE,
            ))?;
            dp.set_backends("remote/ingress", &[b(REMOTE_BACKEND)])?;
            dp.set_service(frontend(
                "local/ingress",
                Ipv4Addr::new(10, 255, 0, 101),
                PUBLISHED_LOCAL,
                UDP_TARGET_LOCAL,
            ))?;
            dp.set_backends("local/ingress", &[b(LOCAL_BACKEND)])?;
            Ok(())
        })?;
    }

    // Direct path: the router sends the ingress subnet to B, whose kernel
    // routes the backend's address onto its veth (static neighbour: no
    // ARP through the overlay programs).
    let b_addr = lab.nodes[B].addr.to_string();
    run_ok(&lab.router, "ip", &["route", "add", SUBNET, "via", &b_addr])?;
    let bns = &lab.nodes[B].ns;
    bns.sysctl("net.ipv4.ip_forward", "1")?;
    let c = &lab.containers[remote];
    let backend = REMOTE_BACKEND.to_string();
    run_ok(
        bns,
        "ip",
        &[
            "route",
            "add",
            &format!("{backend}/32"),
            "dev",
            &c.host_veth,
        ],
    )?;
    run_ok(
        bns,
        "ip",
        &[
            "neigh",
            "replace",
            &backend,
            "lladdr",
            &swarm_harness::overlay_lab::mac_string(c.mac),
            "dev",
            &c.host_veth,
            "nud",
            "permanent",
        ],
    )?;

    // nftables DNAT on C (no eBPF there), masquerading so replies come
    // back through it.
    let cns = &lab.nodes[C].ns;
    cns.sysctl("net.ipv4.ip_forward", "1")?;
    let c_addr = lab.nodes[C].addr.to_string();
    let nft = |args: &[&str]| run_ok(cns, "nft", args);
    nft(&["add", "table", "ip", "swbench"])?;
    nft(&[
        "add",
        "chain",
        "ip",
        "swbench",
        "pre",
        "{ type nat hook prerouting priority dstnat; policy accept; }",
    ])?;
    nft(&[
        "add",
        "chain",
        "ip",
        "swbench",
        "post",
        "{ type nat hook postrouting priority srcnat; policy accept; }",
    ])?;
    nft(&[
        "add",
        "rule",
        "ip",
        "swbench",
        "pre",
        "ip",
        "daddr",
        &c_addr,
        "tcp",
        "dport",
        &NFT_PORT.to_string(),
        "dnat",
        "to",
        &format!("{backend}:{TARGET}"),
    ])?;
    nft(&[
        "add",
        "rule",
        "ip",
        "swbench",
        "post",
        "ip",
        "daddr",
        &backend,
        "tcp",
        "dport",
        &TARGET.to_string(),
        "masquerade",
    ])?;

    // The same DNAT into a kernel VXLAN overlay (docker's routing mesh:
    // DNAT and SNAT on the ingress node, then the overlay to the backend's
    // node), for the like-for-like comparison: the routed nft path above
    // needs an underlay that routes container addresses, which the
    // product does not have. C's device sends to B's overlay port, where
    // B's programs deliver to the backend; B tunnels replies to C's device
    // address back to C. C's device takes the backend veth's host MAC,
    // the inner destination MAC B's frames carry (B answers neighbour
    // resolution locally, never through the tunnel). Only connections
    // marked by the DNAT rule take the device: the routed path keeps its
    // route.
    let vx = "swbench-vx";
    let mark = NFT_VXLAN_MARK.to_string();
    run_ok(
        cns,
        "ip",
        &[
            "link",
            "add",
            vx,
            "type",
            "vxlan",
            "id",
            &VNI.to_string(),
            "dstport",
            &DEFAULT_VXLAN_PORT.to_string(),
            "remote",
            &b_addr,
            "local",
            &c_addr,
            "nolearning",
        ],
    )?;
    let gw_mac = swarm_harness::overlay_lab::mac_string(
        bns.run(|| swarm::dataplane::netlink::mac_of(&c.host_veth))?,
    );
    run_ok(cns, "ip", &["link", "set", vx, "address", &gw_mac, "up"])?;
    run_ok(
        cns,
        "ip",
        &["addr", "add", &format!("{NFT_VXLAN_ADDR}/32"), "dev", vx],
    )?;
    run_ok(
        cns,
        "ip",
        &[
            "neigh",
            "replace",
            &backend,
            "lladdr",
            &swarm_harness::overlay_lab::mac_string(c.mac),
            "dev",
            vx,
            "nud",
            "permanent",
        ],
    )?;
    run_ok(cns, "ip", &["rule", "add", "fwmark", &mark, "table", "42"])?;
    // The DNAT chain sees a connection's first packet only: the rest get
    // the mark back from the connection.
    nft(&[
        "add",
        "chain",
        "ip",
        "swbench",
        "mangle",
        "{ type filter hook prerouting priority mangle; policy accept; }",
    ])?;
    nft(&[
        "add", "rule", "ip", "swbench", "mangle", "ct", "mark", &mark, "meta", "mark", "set", "ct",
        "mark",
    ])?;
    run_ok(
        cns,
        "ip",
        &["route", "add", SUBNET, "dev", vx, "table", "42"],
    )?;
    nft(&[
        "add",
        "rule",
        "ip",
        "swbench",
        "pre",
        "ip",
        "daddr",
        &c_addr,
        "tcp",
        "dport",
        &NFT_VXLAN_PORT.to_string(),
        "meta",
        "mark",
        "set",
        &mark,
        "ct",
        "mark",
        "set",
        &mark,
        "dnat",
        "to",
        &format!("{backend}:{TARGET}"),
    ])?;
    let c_node = lab.nodes[C].addr;
    lab.nodes[B]
        .ns
        .run(|| dps[B].set_remote_endpoint(VNI, NFT_VXLAN_ADDR, c_node))?;
    Ok((dps, lab))
}

pub fn run(opts: &MeshOpts, quick: bool) -> anyhow::Result<Report> {
    let started = Instant::now();
    let mut info = RunInfo::begin(quick);
    swarm_harness::cleanup::sweep_stale_once();
    let wrk_version = std::process::Command::new("wrk")
        .arg("-v")
        .output()
        .map(|o| {
            let s = String::from_utf8_lossy(&o.stdout);
            let first = s.lines().next().unwrap_or("");
            first
                .split(" Copyright")
                .next()
                .unwrap_or(first)
                .to_string()
        })
        .context("wrk is not installed (apt-get install wrk)")?;
    let (mut dps, lab) = build()?;
    let remote_ns = &lab.containers[0].ns;
    let local_ns = &lab.containers[1].ns;
    let backends = [
        http_backend(remote_ns, SocketAddr::from((REMOTE_BACKEND, TARGET)))?,
        http_backend(local_ns, SocketAddr::from((LOCAL_BACKEND, TARGET)))?,
    ];
    let proxy = Proxy::start(
        &lab.nodes[C].ns,
        SocketAddr::from((lab.nodes[C].addr, PROXY_PORT)),
        SocketAddr::from((REMOTE_BACKEND, TARGET)),
    )?;
    let client = &lab.hosts[0].ns;

    // Warm-up: every path answers (and neighbours, conntrack, caches are
    // in place) before anything is measured.
    for p in PathKind::ALL {
        crate::stop::check()?;
        let r = wrk(client, p.target(&lab), 1, opts.connections)
            .with_context(|| format!("warm-up of {}", p.label()))?;
        if r.requests == 0 || r.errors > 0 {
            bail!("{} does not work: {r:?}", p.label());
        }
    }
    let mut runs: Vec<Vec<WrkRun>> = vec![Vec::new(); PathKind::ALL.len()];
    for round in 0..opts.rounds {
        for (i, p) in PathKind::ALL.iter().enumerate() {
            crate::stop::check()?;
            eprintln!(
                "mesh bench: round {}/{}: {}",
                round + 1,
                opts.rounds,
                p.label()
            );
            let r = wrk(client, p.target(&lab), opts.seconds, opts.connections)?;
            if r.errors > 0 {
                eprintln!("mesh bench: {} had {} errors", p.label(), r.errors);
            }
            runs[i].push(r);
        }
    }
    let udp = udp_phase(&mut dps, &lab, opts)?;
    let status = dps
        .iter()
        .map(|dp| dp.status().map(|s| s.lb))
        .collect::<Result<Vec<_>, _>>()?;
    let new_flows = status[0]
        .actions
        .get("mesh_new_flow")
        .map_or(0, |c| c.packets);
    drop(proxy);
    drop(backends);
    let targets: Vec<SocketAddr> = PathKind::ALL.iter().map(|p| p.target(&lab)).collect();
    drop(dps);
    drop(lab);
    if new_flows == 0 {
        bail!("node A's mesh saw no new flow: the mesh paths did not go through it");
    }

    let paths: Vec<PathResult> = PathKind::ALL
        .into_iter()
        .zip(runs)
        .zip(targets)
        .map(|((p, r), t)| PathResult::of(p, t, r))
        .collect();
    let get = |k: PathKind| paths.iter().find(|p| p.path == k);
    let (Some(mesh), Some(local), Some(direct), Some(nft), Some(nft_vx), Some(proxy)) = (
        get(PathKind::MeshRemote),
        get(PathKind::MeshLocal),
        get(PathKind::Direct),
        get(PathKind::NftDnat),
        get(PathKind::NftVxlan),
        get(PathKind::Proxy),
    ) else {
        bail!("a path is missing");
    };
    let uget = |k: UdpPath| udp.paths.iter().find(|p| p.path == k);
    let (Some(umesh), Some(ulocal), Some(ubase)) = (
        uget(UdpPath::MeshRemote),
        uget(UdpPath::MeshLocal),
        uget(UdpPath::XdpPass),
    ) else {
        bail!("a UDP path is missing");
    };
    let mut rows = vec![
        Row::new(
            "requests/s, mesh (other node) vs direct",
            "req/s",
            mesh.median_requests_per_s,
            direct.median_requests_per_s,
            Better::Higher,
        ),
        Row::new(
            "latency p50, mesh (other node) vs direct",
            "ms",
            mesh.median_p50_ms,
            direct.median_p50_ms,
            Better::Lower,
        ),
        Row::new(
            "latency p99, mesh (other node) vs direct",
            "ms",
            mesh.median_p99_ms,
            direct.median_p99_ms,
            Better::Lower,
        ),
        Row::new(
            "requests/s, mesh (same node) vs direct",
            "req/s",
            local.median_requests_per_s,
            direct.median_requests_per_s,
            Better::Higher,
        ),
        Row::new(
            "latency p50, mesh (same node) vs direct",
            "ms",
            local.median_p50_ms,
            direct.median_p50_ms,
            Better::Lower,
        ),
        Row::new(
            "CPU/100k req, mesh (other node) vs direct",
            "s",
            mesh.median_cpu_s_per_100k,
            direct.median_cpu_s_per_100k,
            Better::Lower,
        ),
        Row::new(
            "CPU/100k req, mesh (other node) vs nft DNAT",
            "s",
            mesh.median_cpu_s_per_100k,
            nft.median_cpu_s_per_100k,
            Better::Lower,
        ),
        Row::new(
            "latency p50, mesh (other node) vs nft DNAT",
            "ms",
            mesh.median_p50_ms,
            nft.median_p50_ms,
            Better::Lower,
        ),
        Row::new(
            "CPU/100k req, mesh (other node) vs nft DNAT over VXLAN",
            "s",
            mesh.median_cpu_s_per_100k,
            nft_vx.median_cpu_s_per_100k,
            Better::Lower,
        ),
        Row::new(
            "latency p50, mesh (other node) vs nft DNAT over VXLAN",
            "ms",
            mesh.median_p50_ms,
            nft_vx.median_p50_ms,
            Better::Lower,
        ),
        Row::new(
            "requests/s, mesh (other node) vs userspace proxy",
            "req/s",
            mesh.median_requests_per_s,
            proxy.median_requests_per_s,
            Better::Higher,
        ),
        Row::new(
            "CPU/100k req, mesh (other node) vs userspace proxy",
            "s",
            mesh.median_cpu_s_per_100k,
            proxy.median_cpu_s_per_100k,
            Better::Lower,
        ),
    ];
    for (u, which) in [(umesh, "other node"), (ulocal, "same node")] {
        rows.push(Row::new(
            format!("UDP rx pkt/s, mesh ({which}) vs XDP_PASS"),
            "pkt/s",
            u.median_received_per_s,
            ubase.median_received_per_s,
            Better::Higher,
        ));
        rows.push(Row::new(
            format!("UDP CPU/1M, mesh ({which}) vs XDP_PASS"),
            "s",
            u.median_cpu_s_per_million,
            ubase.median_cpu_s_per_million,
            Better::Lower,
        ));
    }
    let mut notes = vec![
        "goals (issue 7): mesh adds < 10% latency over direct access; mesh costs less CPU per request than nftables DNAT".into(),
        format!(
            "all paths side by side (median of {} run(s) of {} s, {wrk_version}, -t1 -c{} keep-alive, GET / → 200 \"ok\\n\"):",
            opts.rounds, opts.seconds, opts.connections
        ),
        format!(
            "  {:<40} {:>9} {:>8} {:>8} {:>11} {:>11} {:>11}",
            "path", "req/s", "p50 ms", "p99 ms", "CPU s/100k", "Δ direct", "ours/100k"
        ),
    ];
    let fmt =
        |x: Option<f64>, prec: usize| x.map_or_else(|| "n/a".into(), |v| format!("{v:.prec$}"));
    for p in &paths {
        let delta = p
            .median_cpu_s_per_100k
            .zip(direct.median_cpu_s_per_100k)
            .map(|(a, b)| a - b);
        notes.push(format!(
            "  {:<40} {:>9} {:>8} {:>8} {:>11} {:>11} {:>11}",
            p.label,
            fmt(p.median_requests_per_s, 0),
            fmt(p.median_p50_ms, 3),
            fmt(p.median_p99_ms, 3),
            fmt(p.median_cpu_s_per_100k, 2),
            fmt(delta, 2),
            fmt(p.median_our_cpu_s_per_100k, 2),
        ));
    }
    let pct = |a: Option<f64>, b: Option<f64>| {
        a.zip(b)
            .filter(|(_, b)| *b > 0.0)
            .map(|(a, b)| (a / b - 1.0) * 100.0)
    };
    let verdict = |x: Option<f64>, limit: f64| match x {
        Some(v) if v < limit => "met",
        Some(_) => "NOT met",
        None => "n/a",
    };
    let lat = pct(mesh.median_p50_ms, direct.median_p50_ms);
    let lat_local = pct(local.median_p50_ms, direct.median_p50_ms);
    let cpu = pct(mesh.median_cpu_s_per_100k, nft.median_cpu_s_per_100k);
    let cpu_vx = pct(mesh.median_cpu_s_per_100k, nft_vx.median_cpu_s_per_100k);
    let lat_vx = pct(mesh.median_p50_ms, nft_vx.median_p50_ms);
    notes.push(format!(
        "goal check: mesh p50 over direct {} (other node; {} same node) → {}; mesh CPU/100k vs nft DNAT routed {} → {}, vs nft DNAT over VXLAN {} → {} (p50 {})",
        fmt(lat, 1) + "%",
        fmt(lat_local, 1) + "%",
        verdict(lat, 10.0),
        fmt(cpu, 1) + "%",
        verdict(cpu, 0.0),
        fmt(cpu_vx, 1) + "%",
        verdict(cpu_vx, 0.0),
        fmt(lat_vx, 1) + "%",
    ));
    notes.extend([
        "CPU s/100k: busy CPU time of the whole machine (/proc/stat) during the run per 100k requests; includes wrk and the backend (the same on every path) and anything else running on this shared machine; Δ direct removes the common part; ours/100k: wrk + this process (backends, proxy) only, without softirq time charged elsewhere".into(),
        "direct: client → router → node B's kernel (a /32 route onto the container veth), no translation; nft: node C (no eBPF) DNAT + masquerade to the same backend, routed (the router knows the container subnet is behind B: an underlay the product does not assume); nft over VXLAN: the same rules, sent through a kernel VXLAN device on C to B's overlay (docker's routing mesh shape: NAT on the ingress node, overlay to the backend's node); proxy: tokio copy_bidirectional on node C; mesh: TC ingress on node A's eth0, VXLAN to B, replies tunnelled back (HTTP runs without the XDP program attached)".into(),
        "hops: mesh (other node), both nft paths and proxy cross the router twice (client → A or C → B); direct and mesh (same node) once: the mesh (other node) vs direct rows include that extra hop, vs nft/proxy they do not".into(),
        "p99 is scheduling noise when the machine is loaded (2 CPUs shared with builds): read it with the load below".into(),
    ]);
    notes.push(format!(
        "UDP, after the HTTP paths (median of {} run(s) of {} s): {} B datagrams ({} B frames), one sender thread, sendmmsg × {} over {} source ports, one way; a recvmmsg counter per path; XDP program ({}) on eth0 of A and B for this phase only:",
        opts.rounds,
        opts.seconds,
        udp.payload_bytes,
        udp.frame_bytes,
        udp.send_batch,
        udp.source_ports,
        udp.xdp_modes.join(", "),
    ));
    notes.push(format!(
        "  {:<30} {:>10} {:>10} {:>7} {:>9} {:>11} {:>9}",
        "path", "sent pkt/s", "recv pkt/s", "loss %", "CPU s/1M", "Δ XDP_PASS", "XDP A/B"
    ));
    for p in &udp.paths {
        let delta = p
            .median_cpu_s_per_million
            .zip(ubase.median_cpu_s_per_million)
            .map(|(a, b)| a - b);
        notes.push(format!(
            "  {:<30} {:>10} {:>10} {:>7} {:>9} {:>11} {:>9}",
            p.label,
            fmt(p.median_sent_per_s, 0),
            fmt(p.median_received_per_s, 0),
            fmt(p.median_loss_pct, 1),
            fmt(p.median_cpu_s_per_million, 2),
            fmt(delta, 2),
            format!(
                "{}/{}",
                fmt(p.median_xdp_a_per_sent, 2),
                fmt(p.median_xdp_b_per_sent, 2)
            ),
        ));
    }
    notes.extend([
        "UDP 'XDP path': the data plane's XDP program only counts and returns XDP_PASS, on every UDP path alike; the mesh translation is swarm_lb_mesh_ingress at TC ingress of A's eth0. So mesh vs XDP_PASS is the TC translation and conntrack (other node: plus VXLAN to B and a second router crossing) over kernel routing; the baseline also passes B's mesh TC program, which lets a packet not addressed to B through after parsing its headers".into(),
        "UDP same node: the mesh hands the translated packet straight into the container (bpf_redirect_peer), skipping the kernel forwarding the baseline goes through on B, so it can beat the baseline".into(),
        "UDP CPU s/1M: busy CPU of the whole machine per million datagrams delivered (sender and counter included, the same on every path); the sender spins one CPU and the path's kernel work runs mostly in its softirq, so pkt/s is what one CPU gets through the path and a costlier path shows as fewer pkt/s as well as more CPU; XDP A/B: UDP frames counted by XDP on eth0 of A and B per datagram sent (which nodes a path crossed; < 1 where frames were lost before)".into(),
    ]);
    let busiest = udp
        .paths
        .iter()
        .flat_map(|p| &p.runs)
        .filter(|r| r.seconds > 0.0)
        .map(|r| r.machine_cpu_s / r.seconds)
        .fold(0.0, f64::max);
    if info.cpus > 0 && busiest >= 0.95 * info.cpus as f64 {
        notes.push(format!(
            "UDP: the machine was saturated during the UDP runs (up to {busiest:.2} of {} CPUs busy, other work included): CPU s/1M then only restates pkt/s",
            info.cpus
        ));
    }
    info.end(started);
    Ok(Report {
        name: "mesh".into(),
        title: "routing mesh (eBPF LB) vs direct, nftables DNAT, userspace proxy: HTTP and small UDP".into(),
        candidate: "client → node A published port → routing mesh → backend on node B (or A: 'same node')".into(),
        baseline: "client → backend directly (UDP: with XDP_PASS on the nodes' eth0; rows marked 'vs nft DNAT' / 'vs userspace proxy' compare with those paths)".into(),
        rows,
        notes,
        run: info,
        details: serde_json::to_value(Details {
            paths,
            wrk: wrk_version,
            udp,
            mesh_counters: serde_json::to_value(&status)?,
        })?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK: &str = "Running 5s test @ http://10.255.0.5:8080/
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   300.51us  100.26us   3.07ms   80.00%
    Req/Sec    30.00k     1.00k   33.00k    70.00%
  Latency Distribution
     50%  283.00us
     75%  337.00us
     90%  412.00us
     99%    1.69ms
  150000 requests in 5.00s, 12.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 5
Requests/sec:  30000.12
Transfer/sec:      2.40MB
";

    #[test]
    fn parses_wrk_latency_output() {
        let r = parse_wrk(WRK).unwrap();
        assert_eq!(r.requests, 150_000);
        assert!((r.seconds - 5.0).abs() < 1e-9);
        assert!((r.requests_per_s - 30000.12).abs() < 1e-9);
        assert!((r.p50_ms - 0.283).abs() < 1e-9);
        assert!((r.p99_ms - 1.69).abs() < 1e-9);
        assert_eq!(r.errors, 8);
    }

    #[test]
    fn refuses_output_without_numbers() {
        assert!(parse_wrk("unable to connect to 1.2.3.4:80 Connection refused").is_err());
    }

    #[test]
    fn durations_in_every_unit() {
        assert_eq!(parse_duration_ms("2.00s"), Some(2000.0));
        assert_eq!(parse_duration_ms("1.00m"), Some(60000.0));
        assert_eq!(parse_duration_ms("12ms"), Some(12.0));
        assert_eq!(parse_duration_ms("abc"), None);
    }

    #[test]
    fn xdp_udp_frames_are_the_ingress_udp_count_of_one_interface() {
        let c = |packets| Counter { packets, bytes: 0 };
        let counters: BTreeMap<CounterId, Counter> = [
            (("eth0".to_string(), "ingress", "ipv4_udp"), c(7)),
            (("eth0".to_string(), "ingress", "ipv4_tcp"), c(100)),
            (("eth0".to_string(), "egress", "ipv4_udp"), c(50)),
            (("eth1".to_string(), "ingress", "ipv4_udp"), c(9)),
        ]
        .into_iter()
        .collect();
        assert_eq!(xdp_udp_frames(&counters, "eth0"), 7);
        assert_eq!(xdp_udp_frames(&counters, "eth2"), 0);
    }

    #[test]
    fn udp_paths_count_at_their_own_receivers() {
        let mut at: Vec<SocketAddr> = UdpPath::ALL.iter().map(|p| p.counter()).collect();
        at.sort();
        at.dedup();
        assert_eq!(at.len(), UdpPath::ALL.len());
    }

    #[test]
    fn udp_path_medians_per_sent_datagram() {
        let run = |sent, xa, xb| UdpRun {
            sent,
            received: sent,
            xdp_frames_a: xa,
            xdp_frames_b: xb,
            ..UdpRun::default()
        };
        let r = UdpPathResult::of(
            UdpPath::XdpPass,
            SocketAddr::from((REMOTE_BACKEND, UDP_TARGET_DIRECT)),
            vec![run(100, 0, 100), run(200, 0, 190), run(0, 0, 0)],
        );
        assert_eq!(r.median_xdp_a_per_sent, Some(0.0));
        // The empty run has no ratio: the median of 1.0 and 0.95.
        assert_eq!(r.median_xdp_b_per_sent, Some(0.975));
        assert_eq!(r.median_cpu_s_per_million, Some(0.0));
    }

    #[test]
    fn busy_ticks_leave_out_idle_and_iowait() {
        let stat = "cpu  10 1 5 1000 7 2 3 4 0 0\ncpu0 1 1 1 1 1 1 1 1 0 0\n";
        assert_eq!(parse_busy_ticks(stat), Some(10 + 1 + 5 + 2 + 3 + 4));
    }
}
