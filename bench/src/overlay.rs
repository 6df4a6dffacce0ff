//! `overlay`: what the overlay data path costs next to the plain underlay
//! (issue 6: overlay TCP throughput ≥ 90% of the underlay's).
//!
//! Topology (`swarm_harness::overlay_lab`): a router namespace and two node
//! namespaces on different routed /24s, one `EbpfDataplane` per node
//! (in-process, loaded from a thread inside the node's namespace), one
//! container namespace per node on VXLAN network 4097 (10.0.1.0/24, MTU
//! underlay − 50). Veths keep their default offloads (TSO/GSO, checksum),
//! as a real node's do.
//!
//! Candidate: container → container on different nodes, through the host
//! veths, the TC programs, VXLAN encapsulation, the router, decapsulation.
//! Baseline, same run: node → node over the same underlay and router, no
//! tunnel (the "same pair of namespaces" one level down: the nodes the
//! containers run on).
//!
//! Measured: TCP throughput (one stream, 256 KiB writes, receiver-side
//! bytes over `--seconds` after 0.5 s of warm-up, rounds alternating
//! candidate and baseline; the median round is reported) and TCP
//! round-trip time (1-byte ping-pong with TCP_NODELAY, in chunks of 100
//! alternating between the paths; median and p99).
//!
//! Owns its namespaces (unique `swt-<pid>-` names): gone when the run
//! ends, also on error or Ctrl-C.
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use swarm::dataplane::{
    Dataplane, LocalEndpoint, XdpMode, container_mac, ebpf::EbpfDataplane,
    overlay::DEFAULT_VXLAN_PORT,
};
use swarm_harness::Netns;
use swarm_harness::overlay_lab::{EchoServer, OverlayLab, TcpSink};

use crate::report::{Better, Report, Row, RunInfo};
use crate::stats::{Summary, median};

const VNI: u32 = 4097;
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 1);
const WARMUP: Duration = Duration::from_millis(500);

#[derive(Clone, Debug)]
pub struct OverlayOpts {
    /// Measured seconds per throughput round.
    pub seconds: f64,
    /// Throughput rounds per path.
    pub rounds: usize,
    /// Round trips per RTT measurement.
    pub pings: usize,
}

impl OverlayOpts {
    /// 5 s × 5 rounds, 5000 pings; `--quick`: 2 s × 1, 500.
    #[must_use]
    pub fn new(quick: bool, seconds: Option<f64>, rounds: Option<usize>) -> Self {
        let (s, r, p) = if quick { (2.0, 1, 500) } else { (5.0, 5, 5000) };
        OverlayOpts {
            seconds: seconds.unwrap_or(s).max(0.5),
            rounds: rounds.unwrap_or(r).max(1),
            pings: p,
        }
    }
}

#[derive(Debug, Serialize)]
struct Details {
    overlay_gbit_s: Vec<f64>,
    underlay_gbit_s: Vec<f64>,
    overlay_rtt_us: Option<Summary>,
    underlay_rtt_us: Option<Summary>,
    container_mtu: u32,
    underlay_mtu: u32,
    overlay_counters: serde_json::Value,
}

/// One stream from `from` to `sink` for `seconds` (after warm-up);
/// returns Gbit/s seen by the receiver.
fn throughput(from: &Netns, sink: &TcpSink, seconds: f64) -> anyhow::Result<f64> {
    let mut conn = from
        .run(|| TcpStream::connect_timeout(&sink.addr, Duration::from_secs(3)))
        .with_context(|| format!("connecting to {}", sink.addr))?;
    let buf = vec![0x5au8; 256 * 1024];
    let end_warmup = Instant::now() + WARMUP;
    let measure = Duration::from_secs_f64(seconds);
    let mut start: Option<(Instant, u64)> = None;
    loop {
        crate::stop::check()?;
        conn.write_all(&buf).context("sending")?;
        let now = Instant::now();
        match start {
            None if now >= end_warmup => start = Some((now, sink.bytes.load(Ordering::Relaxed))),
            Some((t0, b0)) if now - t0 >= measure => {
                let bytes = sink.bytes.load(Ordering::Relaxed) - b0;
                let secs = (Instant::now() - t0).as_secs_f64();
                return Ok(bytes as f64 * 8.0 / secs / 1e9);
            }
            _ => {}
        }
    }
}

/// A TCP connection from `from` to the echo server at `to`, warmed up
/// (neighbour resolution, first-packet costs), for [`round_trips`].
fn ping_conn(from: &Netns, to: SocketAddr) -> anyhow::Result<TcpStream> {
    let mut conn = from
        .run(|| TcpStream::connect_timeout(&to, Duration::from_secs(3)))
        .with_context(|| format!("connecting to {to}"))?;
    conn.set_nodelay(true)?;
    conn.set_read_timeout(Some(Duration::from_secs(3)))?;
    round_trips(&mut conn, 20)?;
    Ok(conn)
}

/// `n` 1-byte round trips on `conn`; each in microseconds.
fn round_trips(conn: &mut TcpStream, n: usize) -> anyhow::Result<Vec<f64>> {
    let mut b = [0u8; 1];
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        conn.write_all(b"x")?;
        conn.read_exact(&mut b).context("reading the echo")?;
        out.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(out)
}

pub fn run(opts: &OverlayOpts, quick: bool) -> anyhow::Result<Report> {
    let started = Instant::now();
    let mut info = RunInfo::begin(quick);
    swarm_harness::cleanup::sweep_stale_once();
    let mut lab = OverlayLab::new(2, true).context("building the namespaces")?;
    let mut dps = Vec::new();
    let mut ovl = None;
    for node in &lab.nodes {
        let (dp, i) = node.ns.run(|| -> anyhow::Result<_> {
            let mut dp = EbpfDataplane::load(XdpMode::Auto)?;
            let i = dp.overlay_start(DEFAULT_VXLAN_PORT)?;
            dp.set_overlay_network(VNI, "10.0.1.0/24".parse()?, GATEWAY)?;
            Ok((dp, i))
        })?;
        dps.push(dp);
        ovl = Some(i);
    }
    let Some(ovl) = ovl else {
        bail!("no nodes");
    };
    let addrs = [Ipv4Addr::new(10, 0, 1, 2), Ipv4Addr::new(10, 0, 1, 3)];
    for (node, addr) in addrs.iter().enumerate() {
        lab.add_container(node, *addr, 24, GATEWAY, ovl.container_mtu)?;
    }
    for (i, dp) in dps.iter_mut().enumerate() {
        for (c, addr) in lab.containers.iter().zip(addrs) {
            let node_ip = lab.nodes[c.node].addr;
            let ep = LocalEndpoint {
                vni: VNI,
                addr,
                host_ifindex: c.host_ifindex,
                container_mac: container_mac(addr),
            };
            lab.nodes[i].ns.run(|| {
                if c.node == i {
                    dp.set_local_endpoint(ep)
                } else {
                    dp.set_remote_endpoint(VNI, addr, node_ip)
                }
            })?;
        }
    }

    let (c0, c1) = (&lab.containers[0].ns, &lab.containers[1].ns);
    let (n0, n1) = (&lab.nodes[0], &lab.nodes[1]);
    let ovl_sink = TcpSink::start(c1, addrs[1], 5201)?;
    let und_sink = TcpSink::start(&n1.ns, n1.addr, 5201)?;
    let mut ovl_tp = Vec::new();
    let mut und_tp = Vec::new();
    for round in 0..opts.rounds {
        eprintln!(
            "overlay bench: throughput round {}/{}",
            round + 1,
            opts.rounds
        );
        ovl_tp.push(throughput(c0, &ovl_sink, opts.seconds)?);
        und_tp.push(throughput(&n0.ns, &und_sink, opts.seconds)?);
    }
    drop((ovl_sink, und_sink));
    eprintln!("overlay bench: round trips");
    let ovl_echo = EchoServer::tcp(c1, addrs[1], 5202)?;
    let und_echo = EchoServer::tcp(&n1.ns, n1.addr, 5202)?;
    // Alternating chunks, so both paths see the same machine load.
    let mut ovl_conn = ping_conn(c0, ovl_echo.addr)?;
    let mut und_conn = ping_conn(&n0.ns, und_echo.addr)?;
    let (mut ovl_rtt, mut und_rtt) = (Vec::new(), Vec::new());
    let chunk = 100;
    for _ in 0..opts.pings.div_ceil(chunk) {
        crate::stop::check()?;
        ovl_rtt.extend(round_trips(&mut ovl_conn, chunk)?);
        und_rtt.extend(round_trips(&mut und_conn, chunk)?);
    }
    drop((ovl_conn, und_conn, ovl_echo, und_echo));

    let counters = dps
        .iter()
        .map(|dp| dp.status().map(|s| s.overlay))
        .collect::<Result<Vec<_>, _>>()?;
    let encapsulated: u64 = counters
        .iter()
        .filter_map(|s| s.actions.get("encapsulated"))
        .map(|c| c.packets)
        .sum();
    if encapsulated == 0 {
        bail!("the overlay encapsulated nothing: the candidate did not take the overlay path");
    }
    drop(dps);
    drop(lab);

    let (ovl_s, und_s) = (Summary::of(&ovl_rtt), Summary::of(&und_rtt));
    let rows = vec![
        Row::new(
            "TCP throughput, 1 stream (median round)",
            "Gbit/s",
            median(&ovl_tp),
            median(&und_tp),
            Better::Higher,
        ),
        Row::new(
            "TCP round trip, median",
            "µs",
            ovl_s.as_ref().map(|s| s.p50),
            und_s.as_ref().map(|s| s.p50),
            Better::Lower,
        ),
        Row::new(
            "TCP round trip, p99",
            "µs",
            ovl_s.as_ref().map(|s| s.p99),
            und_s.as_ref().map(|s| s.p99),
            Better::Lower,
        ),
    ];
    let notes = vec![
        format!(
            "goal (issue 6): overlay throughput ≥ 90% of the underlay's; container MTU {} over an underlay MTU of {}",
            ovl.container_mtu, ovl.underlay_mtu
        ),
        "veth offloads left on (TSO/GSO): both paths carry GSO super-packets end to end (the overlay encapsulates them whole)".into(),
        format!(
            "{} round(s) of {:.1} s per path, alternating; {} round trips each; sender, receiver and the router share this machine's CPUs",
            opts.rounds, opts.seconds, opts.pings
        ),
    ];
    info.end(started);
    Ok(Report {
        name: "overlay".into(),
        title: "overlay (VXLAN, eBPF) vs plain underlay between two nodes".into(),
        candidate: "container → container on another node over the overlay".into(),
        baseline: "node → node over the underlay (same router, no tunnel)".into(),
        rows,
        notes,
        run: info,
        details: serde_json::to_value(Details {
            overlay_gbit_s: ovl_tp,
            underlay_gbit_s: und_tp,
            overlay_rtt_us: ovl_s,
            underlay_rtt_us: und_s,
            container_mtu: ovl.container_mtu,
            underlay_mtu: ovl.underlay_mtu,
            overlay_counters: serde_json::to_value(&counters)?,
        })?,
    })
}
