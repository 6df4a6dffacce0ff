//! A throwaway overlay topology for data plane tests and benchmarks: a
//! router namespace, "node" namespaces each on its own routed underlay
//! subnet (so traffic between nodes really needs a tunnel), and "container"
//! namespaces attached to a node by a veth pair the way the node side
//! attaches tasks (container side `eth0` with a `02:42:<ip>` MAC, the
//! overlay MTU and a default route via the gateway; host side up without an
//! address).
//!
//! Owns namespaces and links only; programs nothing (the caller loads a
//! data plane into each node). Everything is deleted on drop, also when a
//! test panics: the namespaces go, and their links with them.
//!
//! Also small socket helpers (echo servers, a bulk receiver) that run on
//! threads inside a namespace and stop on drop.
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::Netns;

/// Underlay of node `i` (0-based): its /24, its own address, the router's.
fn underlay(i: usize) -> anyhow::Result<(Ipv4Addr, Ipv4Addr)> {
    // Documentation ranges, then private ones: distinct routed subnets.
    const NETS: [[u8; 3]; 4] = [[198, 51, 100], [203, 0, 113], [192, 0, 2], [198, 18, 0]];
    let Some(n) = NETS.get(i) else {
        bail!("the overlay lab has at most {} nodes", NETS.len());
    };
    Ok((
        Ipv4Addr::new(n[0], n[1], n[2], 2),
        Ipv4Addr::new(n[0], n[1], n[2], 1),
    ))
}

/// One simulated node.
#[derive(Debug)]
pub struct LabNode {
    pub ns: Netns,
    /// The node's underlay address (on its `eth0`).
    pub addr: Ipv4Addr,
}

/// One simulated container attached to a node.
#[derive(Debug)]
pub struct LabContainer {
    pub ns: Netns,
    pub addr: Ipv4Addr,
    pub mac: [u8; 6],
    /// Which node (index into [`OverlayLab::nodes`]).
    pub node: usize,
    /// Host-side veth, in the node's namespace.
    pub host_veth: String,
    pub host_ifindex: u32,
}

/// Router + nodes + containers (+ hosts outside the swarm).
#[derive(Debug)]
pub struct OverlayLab {
    // Containers first: dropped before the nodes they hang off.
    pub containers: Vec<LabContainer>,
    pub nodes: Vec<LabNode>,
    /// Machines outside the swarm (routing mesh clients), each on its own
    /// routed subnet `100.64.<i>.0/24`.
    pub hosts: Vec<LabNode>,
    pub router: Netns,
    /// Whether veths keep their checksum/segmentation offloads (`false`:
    /// `ethtool -K tx off`, which exposes checksum bugs offload would hide).
    offload: bool,
}

fn ethtool_tx_off(ns: &Netns, dev: &str) -> anyhow::Result<()> {
    let out = ns.exec("ethtool", &["-K", dev, "tx", "off"]);
    if !out.ok() {
        bail!("ethtool -K {dev} tx off in {}: {out}", ns.name());
    }
    Ok(())
}

fn ip(ns: &Netns, args: &[&str]) -> anyhow::Result<()> {
    let out = ns.ip(args);
    if !out.ok() {
        bail!("ip {} in {}: {out}", args.join(" "), ns.name());
    }
    Ok(())
}

/// `aa:bb:..` form of a MAC.
pub fn mac_string(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl OverlayLab {
    /// A router and `nodes` nodes, each node on its own /24 behind the
    /// router with a default route through it.
    pub fn new(nodes: usize, offload: bool) -> anyhow::Result<OverlayLab> {
        let router = Netns::create_unique("ovr")?;
        router
            .sysctl("net.ipv4.ip_forward", "1")
            .context("enabling forwarding in the router")?;
        let mut lab = OverlayLab {
            containers: Vec::new(),
            nodes: Vec::new(),
            hosts: Vec::new(),
            router,
            offload,
        };
        for i in 0..nodes {
            let (addr, gw) = underlay(i)?;
            let ns = Netns::create_unique(&format!("ovn{i}"))?;
            lab.wire(&ns, &format!("rn{i}"), addr, gw)?;
            lab.nodes.push(LabNode { ns, addr });
        }
        Ok(lab)
    }

    /// Connects `ns` to the router: a veth (`rdev` on the router, `eth0`
    /// in `ns`), `addr`/24 with the router at `gw`, default route via it.
    fn wire(&self, ns: &Netns, rdev: &str, addr: Ipv4Addr, gw: Ipv4Addr) -> anyhow::Result<()> {
        ip(
            &self.router,
            &[
                "link",
                "add",
                rdev,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns.name(),
            ],
        )?;
        ip(
            &self.router,
            &["addr", "add", &format!("{gw}/24"), "dev", rdev],
        )?;
        ip(&self.router, &["link", "set", rdev, "up"])?;
        ip(ns, &["addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
        ip(ns, &["link", "set", "eth0", "up"])?;
        ip(ns, &["route", "add", "default", "via", &gw.to_string()])?;
        if !self.offload {
            ethtool_tx_off(&self.router, rdev)?;
            ethtool_tx_off(ns, "eth0")?;
        }
        Ok(())
    }

    /// Adds a host outside the swarm behind the router (address
    /// `100.64.<i>.2`, router `100.64.<i>.1`). Returns its index in
    /// [`Self::hosts`].
    pub fn add_outside_host(&mut self) -> anyhow::Result<usize> {
        let i = self.hosts.len();
        let Ok(third) = u8::try_from(i) else {
            bail!("too many outside hosts");
        };
        let (addr, gw) = (
            Ipv4Addr::new(100, 64, third, 2),
            Ipv4Addr::new(100, 64, third, 1),
        );
        let ns = Netns::create_unique(&format!("ovh{i}"))?;
        self.wire(&ns, &format!("rh{i}"), addr, gw)?;
        self.hosts.push(LabNode { ns, addr });
        Ok(i)
    }

    /// Attaches a container with `addr`/`prefix` to node `node`, the way
    /// the node side does it. Returns its index in [`Self::containers`].
    pub fn add_container(
        &mut self,
        node: usize,
        addr: Ipv4Addr,
        prefix: u8,
        gateway: Ipv4Addr,
        mtu: u32,
    ) -> anyhow::Result<usize> {
        let n = self.containers.len();
        let Some(host) = self.nodes.get(node) else {
            bail!("no node {node} in the lab");
        };
        let ns = Netns::create_unique(&format!("ovc{n}"))?;
        let host_veth = format!("vh{n}");
        let [a, b, c, d] = addr.octets();
        let mac = [0x02, 0x42, a, b, c, d];
        ip(
            &host.ns,
            &[
                "link",
                "add",
                &host_veth,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns.name(),
            ],
        )?;
        ip(&host.ns, &["link", "set", &host_veth, "up"])?;
        ip(&ns, &["link", "set", "eth0", "address", &mac_string(mac)])?;
        ip(&ns, &["link", "set", "eth0", "mtu", &mtu.to_string()])?;
        ip(
            &ns,
            &["addr", "add", &format!("{addr}/{prefix}"), "dev", "eth0"],
        )?;
        ip(&ns, &["link", "set", "eth0", "up"])?;
        ip(
            &ns,
            &["route", "add", "default", "via", &gateway.to_string()],
        )?;
        if !self.offload {
            ethtool_tx_off(&host.ns, &host_veth)?;
            ethtool_tx_off(&ns, "eth0")?;
        }
        let name = host_veth.clone();
        let host_ifindex = host
            .ns
            .run(move || nix::net::if_::if_nametoindex(name.as_str()))?;
        self.containers.push(LabContainer {
            ns,
            addr,
            mac,
            node,
            host_veth,
            host_ifindex,
        });
        Ok(n)
    }
}

/// A TCP or UDP echo server on a thread inside a namespace; stops on drop.
#[derive(Debug)]
pub struct EchoServer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

const POLL: Duration = Duration::from_millis(20);

impl EchoServer {
    /// Echoes every TCP connection on `addr:port` (one at a time).
    pub fn tcp(ns: &Netns, addr: Ipv4Addr, port: u16) -> anyhow::Result<EchoServer> {
        let listener = ns.run(|| TcpListener::bind((addr, port)))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        let _ = conn.set_nonblocking(false);
                        let _ = conn.set_read_timeout(Some(POLL));
                        let mut buf = [0u8; 65536];
                        while !s.load(Ordering::SeqCst) {
                            match conn.read(&mut buf) {
                                Ok(0) => break,
                                Ok(n) => {
                                    if conn.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                                Err(e)
                                    if matches!(
                                        e.kind(),
                                        std::io::ErrorKind::WouldBlock
                                            | std::io::ErrorKind::TimedOut
                                    ) => {}
                                Err(_) => break,
                            }
                        }
                    }
                    Err(_) => std::thread::sleep(POLL),
                }
            }
        });
        Ok(EchoServer {
            addr: SocketAddr::from((addr, port)),
            stop,
            thread: Some(thread),
        })
    }

    /// Echoes every UDP datagram on `addr:port` back to its sender.
    pub fn udp(ns: &Netns, addr: Ipv4Addr, port: u16) -> anyhow::Result<EchoServer> {
        let sock = ns.run(|| UdpSocket::bind((addr, port)))?;
        sock.set_read_timeout(Some(POLL))?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            while !s.load(Ordering::SeqCst) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(&buf[..n], from);
                }
            }
        });
        Ok(EchoServer {
            addr: SocketAddr::from((addr, port)),
            stop,
            thread: Some(thread),
        })
    }
}

/// Sends `payload` over TCP from namespace `ns` to `to` and returns what
/// comes back (the same length), within `timeout`.
pub fn tcp_echo(
    ns: &Netns,
    to: SocketAddr,
    payload: &[u8],
    timeout: Duration,
) -> anyhow::Result<Vec<u8>> {
    let mut conn = ns
        .run(|| TcpStream::connect_timeout(&to, timeout))
        .with_context(|| format!("connecting to {to} from {}", ns.name()))?;
    conn.set_read_timeout(Some(timeout))?;
    conn.write_all(payload)?;
    let mut back = vec![0u8; payload.len()];
    conn.read_exact(&mut back)
        .with_context(|| format!("reading the echo from {to}"))?;
    Ok(back)
}

/// Sends one UDP datagram from `ns` to `to` with the don't-fragment bit set
/// (`IP_PMTUDISC_DO`) and returns the echo, within `timeout`.
pub fn udp_echo(
    ns: &Netns,
    to: SocketAddr,
    payload: &[u8],
    timeout: Duration,
) -> anyhow::Result<Vec<u8>> {
    let sock = ns.run(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))?;
    let val: libc::c_int = libc::IP_PMTUDISC_DO;
    // SAFETY: valid socket and a c_int option value of the size passed.
    let r = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&sock),
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            (&raw const val).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        bail!("IP_MTU_DISCOVER: {}", std::io::Error::last_os_error());
    }
    sock.set_read_timeout(Some(timeout))?;
    sock.send_to(payload, to)
        .with_context(|| format!("sending {} bytes to {to}", payload.len()))?;
    let mut buf = vec![0u8; 65536];
    let (n, _) = sock
        .recv_from(&mut buf)
        .with_context(|| format!("no echo from {to} within {timeout:?}"))?;
    buf.truncate(n);
    Ok(buf)
}

/// A TCP sink on a thread inside a namespace: accepts one connection and
/// counts the bytes it reads; stops on drop.
#[derive(Debug)]
pub struct TcpSink {
    pub addr: SocketAddr,
    pub bytes: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for TcpSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl TcpSink {
    pub fn start(ns: &Netns, addr: Ipv4Addr, port: u16) -> anyhow::Result<TcpSink> {
        let listener = ns.run(|| TcpListener::bind((addr, port)))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let bytes = Arc::new(AtomicU64::new(0));
        let (s, b) = (stop.clone(), bytes.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let Ok((mut conn, _)) = listener.accept() else {
                    std::thread::sleep(POLL);
                    continue;
                };
                let _ = conn.set_nonblocking(false);
                let _ = conn.set_read_timeout(Some(POLL));
                let mut buf = vec![0u8; 1 << 18];
                while !s.load(Ordering::SeqCst) {
                    match conn.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            b.fetch_add(n as u64, Ordering::Relaxed);
                        }
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ) => {}
                        Err(_) => break,
                    }
                }
            }
        });
        Ok(TcpSink {
            addr: SocketAddr::from((addr, port)),
            bytes,
            stop,
            thread: Some(thread),
        })
    }
}

/// A TCP server that tells who it is and who it sees: every connection
/// first gets the line `"<server address> <peer address:port>\n"`, then
/// an echo of what it sends. One thread per connection; stops on drop.
#[derive(Debug)]
pub struct WhoamiServer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for WhoamiServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl WhoamiServer {
    pub fn tcp(ns: &Netns, addr: Ipv4Addr, port: u16) -> anyhow::Result<WhoamiServer> {
        let listener = ns.run(|| TcpListener::bind((addr, port)))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut conns = Vec::new();
            while !s.load(Ordering::SeqCst) {
                let Ok((mut conn, peer)) = listener.accept() else {
                    std::thread::sleep(POLL);
                    continue;
                };
                let s = s.clone();
                conns.push(std::thread::spawn(move || {
                    let _ = conn.set_nonblocking(false);
                    let _ = conn.set_read_timeout(Some(POLL));
                    if conn
                        .write_all(format!("{addr} {peer}\n").as_bytes())
                        .is_err()
                    {
                        return;
                    }
                    let mut buf = [0u8; 65536];
                    while !s.load(Ordering::SeqCst) {
                        match conn.read(&mut buf) {
                            Ok(0) => break,
                            Ok(n) => {
                                if conn.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                            Err(e)
                                if matches!(
                                    e.kind(),
                                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                                ) => {}
                            Err(_) => break,
                        }
                    }
                }));
            }
            for c in conns {
                let _ = c.join();
            }
        });
        Ok(WhoamiServer {
            addr: SocketAddr::from((addr, port)),
            stop,
            thread: Some(thread),
        })
    }
}

/// An open connection to a [`WhoamiServer`] (possibly through a VIP or the
/// routing mesh): which server answered and which peer it saw.
#[derive(Debug)]
pub struct WhoamiConn {
    pub server: Ipv4Addr,
    pub peer: SocketAddr,
    conn: TcpStream,
}

impl WhoamiConn {
    pub fn open(ns: &Netns, to: SocketAddr, timeout: Duration) -> anyhow::Result<WhoamiConn> {
        let conn = ns
            .run(|| TcpStream::connect_timeout(&to, timeout))
            .with_context(|| format!("connecting to {to} from {}", ns.name()))?;
        Self::greeted(conn, to, timeout)
    }

    /// [`WhoamiConn::open`] from a fixed local port (`SO_REUSEADDR`, so the
    /// port can be reused towards another destination while an earlier
    /// connection from it is in TIME_WAIT).
    pub fn open_from(
        ns: &Netns,
        local_port: u16,
        to: SocketAddr,
        timeout: Duration,
    ) -> anyhow::Result<WhoamiConn> {
        use socket2::{Domain, Protocol, SockAddr, Socket, Type};
        let conn = ns
            .run(|| -> std::io::Result<TcpStream> {
                let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
                s.set_reuse_address(true)?;
                s.bind(&SockAddr::from(SocketAddr::from((
                    std::net::Ipv4Addr::UNSPECIFIED,
                    local_port,
                ))))?;
                s.connect_timeout(&SockAddr::from(to), timeout)?;
                Ok(s.into())
            })
            .with_context(|| format!("connecting to {to} from {}:{local_port}", ns.name()))?;
        Self::greeted(conn, to, timeout)
    }

    fn greeted(conn: TcpStream, to: SocketAddr, timeout: Duration) -> anyhow::Result<WhoamiConn> {
        conn.set_read_timeout(Some(timeout))?;
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        let mut c = &conn;
        while line.len() < 128 {
            c.read_exact(&mut byte)
                .with_context(|| format!("reading the greeting of {to}"))?;
            if byte[0] == b'\n' {
                break;
            }
            line.push(byte[0]);
        }
        let line = String::from_utf8(line)?;
        let (server, peer) = line
            .split_once(' ')
            .with_context(|| format!("bad greeting {line:?}"))?;
        Ok(WhoamiConn {
            server: server.parse()?,
            peer: peer.parse()?,
            conn,
        })
    }

    /// Sends `payload` and reads its echo.
    pub fn echo(&mut self, payload: &[u8]) -> anyhow::Result<Vec<u8>> {
        self.conn.write_all(payload)?;
        let mut back = vec![0u8; payload.len()];
        self.conn.read_exact(&mut back)?;
        Ok(back)
    }
}
