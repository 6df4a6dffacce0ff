//! Multi-node test clusters: N `swarm daemon` processes, each in its own
//! network namespace, connected through a per-cluster "fabric" namespace
//! that plays the physical network (bridges, a router, a registry), plus
//! optional client hosts "outside" the swarm.
//!
//! Owns: every namespace, process, temp dir, mount and prefixed cgroup of a
//! cluster, and removes all of them on drop, also while a test panics
//! (after printing the daemon logs). Fault injection (cut, isolate) happens
//! only in the fabric, never inside a node, so it cannot be bypassed by the
//! node's own datapath and does not disturb what the node configures.
//!
//! Never creates anything in the root network namespace, and never touches
//! resources without this cluster's unique prefix.
//!
//! Layout (node `i` counts from 1; `<p>` is [`Cluster::prefix`]):
//! ```text
//!  netns <p>-n1 ── eth0 ═══ n1 ─┐                  netns <p>-fab
//!  netns <p>-n2 ── eth0 ═══ n2 ─┤ br0 198.51.100.1/24 (+ registry :5000)
//!        ...                    │ br1 203.0.113.1/24 (RoutedSubnets only)
//!  netns <p>-c1 ── eth0 ═══ c1 ─┘ brc 192.0.2.1/24 (client hosts)
//! ```
//! - [`Topology::Bridge`]: node `i` is 198.51.100.(10+i)/24, all on br0.
//! - [`Topology::RoutedSubnets`]: odd nodes as above; even nodes are
//!   203.0.113.(10+i)/24 on br1. The fabric routes between the subnets, so
//!   nodes in different subnets share no L2 segment.
//! - Client host `k` is 192.0.2.(10+k)/24 on brc.
//!
//! Everyone's default route points at the fabric; the fabric forwards.

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use crate::cleanup;
use crate::cmd::{self, CmdOutput, DEFAULT_TIMEOUT};
use crate::images::Registry;
use crate::netns::Netns;
use crate::process::Process;

/// How the nodes are wired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// All nodes on one L2 segment, 198.51.100.0/24.
    Bridge,
    /// Odd-numbered nodes on 198.51.100.0/24, even-numbered on
    /// 203.0.113.0/24, routed by the fabric: overlay traffic between them
    /// really has to cross a router.
    RoutedSubnets,
}

/// The first three octets of the subnets (all TEST-NET ranges).
pub const NET_A: [u8; 3] = [198, 51, 100];
pub const NET_B: [u8; 3] = [203, 0, 113];
pub const NET_CLIENTS: [u8; 3] = [192, 0, 2];
/// The port of each cluster's registry, on the fabric's 198.51.100.1.
pub const REGISTRY_PORT: u16 = 5000;
/// How long a daemon may take to open its socket.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long `Node::stop` waits after SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// The nftables table (in the fabric) whose sets hold the cut pairs. Both a
/// `bridge` and an `ip` table: same-subnet traffic is bridged, cross-subnet
/// traffic routed, and each takes a different netfilter path.
const NFT_TABLE: &str = "swarm_harness";

fn addr_in(net: [u8; 3], host: usize) -> Ipv4Addr {
    let host = u8::try_from(host).expect("host part of a test address must fit in one octet");
    Ipv4Addr::new(net[0], net[1], net[2], host)
}

fn gateway(net: [u8; 3]) -> Ipv4Addr {
    addr_in(net, 1)
}

type ArgsFn = Box<dyn Fn(usize) -> Vec<String> + Send + Sync>;

/// Configures and starts a [`Cluster`]. From [`Cluster::builder`].
pub struct ClusterBuilder {
    prefix: String,
    nodes: usize,
    topology: Topology,
    daemons: bool,
    bin: Option<PathBuf>,
    args: Option<ArgsFn>,
    env: Vec<(String, String)>,
    ready_timeout: Duration,
}

impl std::fmt::Debug for ClusterBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterBuilder")
            .field("prefix", &self.prefix)
            .field("nodes", &self.nodes)
            .field("topology", &self.topology)
            .field("daemons", &self.daemons)
            .finish_non_exhaustive()
    }
}

impl ClusterBuilder {
    /// Number of nodes (default 3; at most 200, numbered from 1).
    pub fn nodes(mut self, n: usize) -> Self {
        assert!(
            (1..=200).contains(&n),
            "a cluster has 1 to 200 nodes, not {n}"
        );
        self.nodes = n;
        self
    }

    pub fn topology(mut self, t: Topology) -> Self {
        self.topology = t;
        self
    }

    /// Extra `swarm daemon` arguments for node `i` (counting from 1),
    /// appended after the harness's own
    /// (`--data-root`, `-H`, `--log-level debug`, `--log-format text`, and
    /// `--cgroup-parent <cgroup_prefix>n<i>` unless these args give one).
    pub fn daemon_args(mut self, f: impl Fn(usize) -> Vec<String> + Send + Sync + 'static) -> Self {
        self.args = Some(Box::new(f));
        self
    }

    /// An environment variable for every daemon (`RUST_BACKTRACE=1` and
    /// `NO_COLOR=1` are set by default).
    pub fn daemon_env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Build only the network: no daemons are started (and `Node::start`
    /// panics). For pure network tests; the `swarm` binary is not needed.
    pub fn no_daemons(mut self) -> Self {
        self.daemons = false;
        self
    }

    /// Use this binary instead of [`crate::paths::swarm_bin`] (for daemons
    /// and the CLI alike).
    pub fn swarm_bin(mut self, path: impl Into<PathBuf>) -> Self {
        self.bin = Some(path.into());
        self
    }

    /// How long each daemon may take to accept connections on its socket.
    pub fn ready_timeout(mut self, d: Duration) -> Self {
        self.ready_timeout = d;
        self
    }

    /// The cluster's unique prefix, known before it starts (e.g. to put it
    /// in daemon arguments).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// See [`Cluster::cgroup_prefix`]; known before the cluster starts so
    /// that `daemon_args` can pass it on.
    pub fn cgroup_prefix(&self) -> String {
        format!("{}-", self.prefix)
    }

    /// Creates the network, then starts all daemons in parallel and waits
    /// until each accepts connections. Panics (after cleaning up) on failure.
    pub fn start(self) -> Cluster {
        cleanup::sweep_stale_once();
        // Fail before creating anything if the binary is missing.
        let bin = self
            .daemons
            .then(|| self.bin.clone().unwrap_or_else(crate::paths::swarm_bin));
        let dir = tempfile::Builder::new()
            .prefix(&format!("{}-", self.prefix))
            .tempdir()
            .expect("creating the cluster's temp dir");
        let fabric = Netns::create(&format!("{}-fab", self.prefix))
            .unwrap_or_else(|e| panic!("creating the fabric namespace: {e:#}"));
        let mut cluster = Cluster {
            prefix: self.prefix.clone(),
            topology: self.topology,
            dir_path: dir.path().to_path_buf(),
            dir: Some(dir),
            fabric,
            nodes: Vec::new(),
            hosts: Vec::new(),
            registry: Mutex::new(None),
            cuts: Mutex::new(BTreeSet::new()),
        };
        // From here on a panic drops `cluster`, which cleans up what exists.
        cluster.setup_fabric();
        for i in 1..=self.nodes {
            let node = cluster.create_node(i, &self, bin.as_deref());
            cluster.nodes.push(node);
        }
        if self.daemons {
            for n in &cluster.nodes {
                n.spawn_daemon();
            }
            for n in &cluster.nodes {
                n.wait_ready();
            }
        }
        cluster
    }
}

/// A running test cluster; everything is torn down on drop.
pub struct Cluster {
    prefix: String,
    topology: Topology,
    dir: Option<tempfile::TempDir>,
    dir_path: PathBuf,
    fabric: Netns,
    nodes: Vec<Node>,
    hosts: Vec<Host>,
    registry: Mutex<Option<Registry>>,
    /// Node pairs currently cut, as (lower, higher) address.
    cuts: Mutex<BTreeSet<(Ipv4Addr, Ipv4Addr)>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("prefix", &self.prefix)
            .field("topology", &self.topology)
            .field("dir", &self.dir_path)
            .field("nodes", &self.nodes.len())
            .field("hosts", &self.hosts.len())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves consistent data (each
    // critical section is a single update), so poisoning is ignored.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Cluster {
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder {
            prefix: crate::unique_prefix(),
            nodes: 3,
            topology: Topology::Bridge,
            daemons: true,
            bin: None,
            args: None,
            // NO_COLOR: the log is a file read by people and tests, so no
            // ANSI escapes (tracing-subscriber honours it).
            env: vec![
                ("RUST_BACKTRACE".into(), "1".into()),
                ("NO_COLOR".into(), "1".into()),
            ],
            ready_timeout: DEFAULT_READY_TIMEOUT,
        }
    }

    /// `swt-<pid>-<n>`: starts the name of every namespace and temp dir this
    /// cluster owns.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `swt-<pid>-<n>-`: the daemon should create container cgroups whose
    /// directory name contains this (e.g. `<cgroup_prefix>n1-<container>`);
    /// at teardown every cgroup, in every hierarchy, whose name contains it
    /// is emptied (SIGKILL) and removed, deepest first.
    pub fn cgroup_prefix(&self) -> String {
        format!("{}-", self.prefix)
    }

    pub fn topology(&self) -> Topology {
        self.topology
    }

    /// The cluster's temp dir (node dirs are `<dir>/n<i>`).
    pub fn dir(&self) -> &Path {
        &self.dir_path
    }

    /// The fabric namespace (bridges, router, registry).
    pub fn fabric(&self) -> &Netns {
        &self.fabric
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Node `i`, counting from 1 (as in its name `n<i>` and its address).
    #[track_caller]
    pub fn node(&self, i: usize) -> &Node {
        assert!(
            (1..=self.nodes.len()).contains(&i),
            "no node {i}: nodes are numbered 1..={}",
            self.nodes.len()
        );
        &self.nodes[i - 1]
    }

    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Client host `k`, counting from 1.
    #[track_caller]
    pub fn host(&self, k: usize) -> &Host {
        assert!(
            (1..=self.hosts.len()).contains(&k),
            "no client host {k}: hosts are numbered 1..={}",
            self.hosts.len()
        );
        &self.hosts[k - 1]
    }

    fn bridge_for(&self, i: usize) -> (&'static str, [u8; 3]) {
        match self.topology {
            Topology::RoutedSubnets if i.is_multiple_of(2) => ("br1", NET_B),
            _ => ("br0", NET_A),
        }
    }

    fn add_bridge(&self, name: &str, net: [u8; 3], mac_suffix: u8) {
        let f = &self.fabric;
        // STP off and no forward delay: a port forwards as soon as it is up
        // (also after `reconnect`). A fixed MAC: otherwise a bridge takes the
        // lowest MAC of its ports, and it would change as ports are added,
        // invalidating the nodes' ARP entries for their gateway.
        f.ip_ok(&[
            "link",
            "add",
            name,
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
        ]);
        f.ip_ok(&[
            "link",
            "set",
            name,
            "address",
            &format!("02:00:5e:00:00:{mac_suffix:02x}"),
        ]);
        f.ip_ok(&["addr", "add", &format!("{}/24", gateway(net)), "dev", name]);
        f.ip_ok(&["link", "set", name, "up"]);
    }

    fn setup_fabric(&self) {
        self.fabric
            .sysctl("net.ipv4.ip_forward", "1")
            .expect("enabling forwarding in the fabric");
        self.add_bridge("br0", NET_A, 1);
        if self.topology == Topology::RoutedSubnets {
            self.add_bridge("br1", NET_B, 2);
        }
        let mut rules = String::new();
        for family in ["bridge", "ip"] {
            rules.push_str(&format!(
                "table {family} {NFT_TABLE} {{\n\
                 \x20 set cut {{ type ipv4_addr . ipv4_addr; }}\n\
                 \x20 chain forward {{\n\
                 \x20   type filter hook forward priority 0; policy accept;\n\
                 \x20   ip saddr . ip daddr @cut counter drop\n\
                 \x20 }}\n\
                 }}\n"
            ));
        }
        let file = self.dir_path.join("fabric.nft");
        fs::write(&file, rules).expect("writing the fabric's nftables rules");
        self.fabric
            .exec("nft", &["-f", file.to_str().expect("temp paths are UTF-8")])
            .success();
    }

    fn create_node(&self, i: usize, b: &ClusterBuilder, bin: Option<&Path>) -> Node {
        let (bridge, net) = self.bridge_for(i);
        let netns = Netns::create(&format!("{}-n{i}", self.prefix))
            .unwrap_or_else(|e| panic!("creating node {i}'s namespace: {e:#}"));
        let fabric_if = format!("n{i}");
        let addr = addr_in(net, 10 + i);
        self.plug(&netns, &fabric_if, bridge, addr, gateway(net));

        let dir = self.dir_path.join(format!("n{i}"));
        fs::create_dir_all(&dir).expect("creating the node's dir");
        let daemon = bin.map(|bin| DaemonSpec {
            bin: bin.to_path_buf(),
            cgroup_parent: format!("{}n{i}", self.cgroup_prefix()),
            extra_args: b.args.as_ref().map(|f| f(i)).unwrap_or_default(),
            env: b.env.clone(),
            ready_timeout: b.ready_timeout,
        });
        Node {
            index: i,
            netns,
            addr,
            gateway: gateway(net),
            fabric_if,
            data_root: dir.join("data"),
            socket: dir.join("swarm.sock"),
            log_path: dir.join("daemon.log"),
            dir,
            daemon,
            process: Mutex::new(None),
            orphans: Mutex::new(Vec::new()),
        }
    }

    /// Connects `ns` to the fabric: a veth created directly in both
    /// namespaces (`fabric_if` on the bridge, `eth0` in `ns`), so nothing
    /// ever exists in the root namespace.
    fn plug(&self, ns: &Netns, fabric_if: &str, bridge: &str, addr: Ipv4Addr, gw: Ipv4Addr) {
        let f = &self.fabric;
        f.ip_ok(&[
            "link",
            "add",
            fabric_if,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns.name(),
        ]);
        f.ip_ok(&["link", "set", fabric_if, "master", bridge, "up"]);
        ns.ip_ok(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
        ns.ip_ok(&["link", "set", "eth0", "up"]);
        ns.ip_ok(&["route", "add", "default", "via", &gw.to_string()]);
    }

    /// Adds a client host outside the swarm, on 192.0.2.0/24, routed to the
    /// nodes through the fabric.
    pub fn add_client_host(&mut self) -> &Host {
        let k = self.hosts.len() + 1;
        if k == 1 {
            self.add_bridge("brc", NET_CLIENTS, 3);
        }
        let netns = Netns::create(&format!("{}-c{k}", self.prefix))
            .unwrap_or_else(|e| panic!("creating client host {k}'s namespace: {e:#}"));
        let addr = addr_in(NET_CLIENTS, 10 + k);
        self.plug(&netns, &format!("c{k}"), "brc", addr, gateway(NET_CLIENTS));
        self.hosts.push(Host {
            index: k,
            netns,
            addr,
        });
        self.hosts.last().expect("just pushed")
    }

    fn nft(&self, script: &str) {
        self.fabric.exec("nft", &[script]).success();
    }

    fn cut_elements(a: Ipv4Addr, b: Ipv4Addr) -> String {
        format!("{{ {a} . {b}, {b} . {a} }}")
    }

    /// Drops all traffic between the two addresses, both ways, in the
    /// fabric (silently, like a broken link: senders see timeouts, not
    /// errors). Traffic with everyone else is unaffected.
    pub fn cut_between(&self, a: Ipv4Addr, b: Ipv4Addr) {
        assert_ne!(a, b, "cannot cut an address from itself");
        let key = (a.min(b), a.max(b));
        let mut cuts = lock(&self.cuts);
        if cuts.insert(key) {
            let el = Self::cut_elements(a, b);
            self.nft(&format!(
                "add element bridge {NFT_TABLE} cut {el}; add element ip {NFT_TABLE} cut {el}"
            ));
        }
    }

    /// Undoes [`Cluster::cut_between`] (no-op if not cut).
    pub fn heal_between(&self, a: Ipv4Addr, b: Ipv4Addr) {
        let key = (a.min(b), a.max(b));
        let mut cuts = lock(&self.cuts);
        if cuts.remove(&key) {
            let el = Self::cut_elements(a, b);
            self.nft(&format!(
                "delete element bridge {NFT_TABLE} cut {el}; delete element ip {NFT_TABLE} cut {el}"
            ));
        }
    }

    /// Cuts traffic between nodes `a` and `b` only (see
    /// [`Cluster::cut_between`]).
    #[track_caller]
    pub fn cut(&self, a: usize, b: usize) {
        self.cut_between(self.node(a).addr(), self.node(b).addr());
    }

    /// Restores traffic between nodes `a` and `b`.
    #[track_caller]
    pub fn heal(&self, a: usize, b: usize) {
        self.heal_between(self.node(a).addr(), self.node(b).addr());
    }

    /// Heals every cut.
    pub fn heal_all(&self) {
        let mut cuts = lock(&self.cuts);
        if !cuts.is_empty() {
            self.nft(&format!(
                "flush set bridge {NFT_TABLE} cut; flush set ip {NFT_TABLE} cut"
            ));
            cuts.clear();
        }
    }

    /// Node `a` loses all connectivity (its fabric-side link goes down, as if
    /// unplugged: the node's own `eth0` stays configured but has no carrier).
    #[track_caller]
    pub fn isolate(&self, a: usize) {
        let n = self.node(a);
        self.fabric.ip_ok(&["link", "set", &n.fabric_if, "down"]);
    }

    /// Undoes [`Cluster::isolate`].
    #[track_caller]
    pub fn reconnect(&self, a: usize) {
        let n = self.node(a);
        self.fabric.ip_ok(&["link", "set", &n.fabric_if, "up"]);
    }

    /// The cluster's registry, `198.51.100.1:5000` in the fabric, serving
    /// the test images ([`crate::images`]) read-only. Started on first call
    /// (building the images if needed); reachable from every node and host.
    pub fn registry_addr(&self) -> SocketAddr {
        let mut reg = lock(&self.registry);
        if reg.is_none() {
            let addr = SocketAddr::from((gateway(NET_A), REGISTRY_PORT));
            let r = Registry::serve_test_images(addr, Some(&self.fabric))
                .unwrap_or_else(|e| panic!("starting the cluster registry: {e:#}"));
            *reg = Some(r);
        }
        reg.as_ref().expect("started above").addr()
    }

    /// A pullable reference to a test image, e.g. `image("bb:1")` =
    /// `"198.51.100.1:5000/bb:1"` (starts the registry if needed). Names
    /// outside [`crate::images::ALL_IMAGES`] are allowed, for tests of
    /// failing pulls.
    pub fn image(&self, name: &str) -> String {
        format!("{}/{name}", self.registry_addr())
    }

    /// The registry's pid, if it was started.
    pub fn registry_pid(&self) -> Option<u32> {
        lock(&self.registry).as_ref().map(Registry::pid)
    }

    /// The registry's log, if it was started.
    pub fn registry_logs(&self) -> Option<String> {
        lock(&self.registry).as_ref().map(Registry::logs)
    }

    /// Prints every node's daemon log (and the registry's) to stderr.
    pub fn dump_logs(&self) {
        for n in &self.nodes {
            let log = fs::read_to_string(&n.log_path).unwrap_or_else(|e| format!("<no log: {e}>"));
            eprintln!(
                "===== node{} ({}, netns {}) daemon log {} =====\n{log}\n===== end of node{} log =====",
                n.index,
                n.addr,
                n.netns.name(),
                n.log_path.display(),
                n.index
            );
        }
        if let Ok(reg) = self.registry.try_lock()
            && let Some(r) = reg.as_ref()
        {
            eprintln!(
                "===== registry log =====\n{}\n===== end of registry log =====",
                r.logs()
            );
        }
    }

    fn teardown(&mut self) {
        // The registry first: it lives in the fabric.
        if let Some(r) = lock(&self.registry).take() {
            drop(r);
        }

        // Daemons and everything they started (helpers, containers). The
        // descendants are found before the daemons die: orphans are
        // re-parented and can no longer be traced.
        let roots: Vec<u32> = self.nodes.iter().filter_map(Node::pid).collect();
        let family = cleanup::descendants(&roots);
        for n in &self.nodes {
            if let Some(mut p) = lock(&n.process).take() {
                p.kill();
            }
        }
        cleanup::kill_pids(&family);
        for n in &self.nodes {
            for o in lock(&n.orphans).drain(..) {
                o.kill_if_same();
            }
        }

        // Anything else still inside one of our namespaces.
        let ids: Vec<(u64, u64)> = std::iter::once(&self.fabric)
            .chain(self.nodes.iter().map(|n| &n.netns))
            .chain(self.hosts.iter().map(|h| &h.netns))
            .filter_map(|ns| ns.id().ok())
            .collect();
        cleanup::kill_in_netns(&ids);

        cleanup::remove_cgroups_containing(&self.cgroup_prefix());
        cleanup::unmount_under(&self.dir_path);

        for h in &self.hosts {
            h.netns.delete();
        }
        for n in &self.nodes {
            n.netns.delete();
        }
        self.fabric.delete();

        if let Some(dir) = self.dir.take() {
            let path = dir.keep();
            cleanup::remove_dir_tree(&path);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("harness: test panicked; logs of cluster {}:", self.prefix);
            self.dump_logs();
        }
        // Teardown must not panic (a panic during a panic aborts the whole
        // test binary); everything in it logs and carries on, but guard
        // against a bug anyway.
        let teardown = std::panic::AssertUnwindSafe(|| self.teardown());
        if std::panic::catch_unwind(teardown).is_err() {
            eprintln!("harness: teardown of cluster {} panicked", self.prefix);
        }
    }
}

struct DaemonSpec {
    bin: PathBuf,
    /// `--cgroup-parent`: named with the cluster's cgroup prefix, so
    /// teardown removes containers' cgroups even when a test fails.
    cgroup_parent: String,
    extra_args: Vec<String>,
    env: Vec<(String, String)>,
    ready_timeout: Duration,
}

/// One swarm node: a network namespace with `eth0`, a data dir, and
/// (unless the cluster has no daemons) a `swarm daemon` process.
pub struct Node {
    index: usize,
    netns: Netns,
    addr: Ipv4Addr,
    gateway: Ipv4Addr,
    fabric_if: String,
    dir: PathBuf,
    data_root: PathBuf,
    socket: PathBuf,
    log_path: PathBuf,
    daemon: Option<DaemonSpec>,
    process: Mutex<Option<Process>>,
    /// Processes left behind by daemons killed or stopped mid-test (their
    /// containers and helpers), killed at cluster teardown.
    orphans: Mutex<Vec<cleanup::ProcId>>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("index", &self.index)
            .field("netns", &self.netns.name())
            .field("addr", &self.addr)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// The node's number, from 1.
    pub fn index(&self) -> usize {
        self.index
    }

    /// `node<i>`, for messages.
    pub fn name(&self) -> String {
        format!("node{}", self.index)
    }

    /// The network namespace's name.
    pub fn netns(&self) -> &str {
        self.netns.name()
    }

    /// The network namespace itself.
    pub fn ns(&self) -> &Netns {
        &self.netns
    }

    /// The node's address on `eth0`.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The node's default gateway (the fabric).
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }

    /// The node's interface to the fabric, inside its namespace.
    pub fn iface(&self) -> &str {
        "eth0"
    }

    /// The node's own directory (holds `data/`, `swarm.sock`, `daemon.log`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn data_root(&self) -> &Path {
        &self.data_root
    }

    /// The daemon's API socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `unix:///path/to/swarm.sock`, for `-H`.
    pub fn host_arg(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// The daemon's stdout+stderr, appended across restarts.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The daemon log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    fn bin(&self) -> PathBuf {
        match &self.daemon {
            Some(d) => d.bin.clone(),
            None => crate::paths::swarm_bin(),
        }
    }

    /// A `swarm -H unix://<sock> <args>` command (in the root namespace: the
    /// socket is a file, reachable from anywhere).
    pub fn swarm_command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(self.bin());
        c.arg("-H").arg(self.host_arg()).args(args);
        c
    }

    /// Runs the swarm CLI against this node and waits (60 s at most).
    pub fn swarm(&self, args: &[&str]) -> CmdOutput {
        self.swarm_timeout(args, DEFAULT_TIMEOUT)
    }

    /// [`Node::swarm`] with an explicit deadline.
    pub fn swarm_timeout(&self, args: &[&str], timeout: Duration) -> CmdOutput {
        cmd::run(&mut self.swarm_command(args), timeout)
    }

    /// Runs a command inside the node's network namespace.
    pub fn exec(&self, program: &str, args: &[&str]) -> CmdOutput {
        self.netns.exec(program, args)
    }

    /// Runs `f` on a fresh thread inside the node's network namespace.
    pub fn in_netns<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.netns.run(f)
    }

    /// Whether one ping from this node to `addr` is answered within 1 s.
    pub fn ping(&self, addr: Ipv4Addr) -> bool {
        self.netns.ping(addr)
    }

    /// The daemon's pid, if it is running.
    pub fn pid(&self) -> Option<u32> {
        let mut slot = lock(&self.process);
        let p = slot.as_mut()?;
        p.is_running().then(|| p.pid())
    }

    #[track_caller]
    fn spec(&self) -> &DaemonSpec {
        self.daemon
            .as_ref()
            .unwrap_or_else(|| panic!("{}: the cluster was built with no_daemons()", self.name()))
    }

    /// Starts the daemon (again), with the same data root and arguments,
    /// and waits until it accepts connections.
    #[track_caller]
    pub fn start(&self) {
        self.spawn_daemon();
        self.wait_ready();
    }

    /// SIGTERM, wait up to 10 s for exit, else SIGKILL. Processes the daemon
    /// leaves running (e.g. containers) are left alone, as in production,
    /// and killed at cluster teardown.
    pub fn stop(&self) {
        if let Some(mut p) = self.take_process() {
            p.terminate(STOP_GRACE);
        }
    }

    /// SIGKILL the daemon only (a crash): its children keep running.
    pub fn kill9(&self) {
        if let Some(mut p) = self.take_process() {
            p.kill();
        }
    }

    /// [`Node::stop`] then [`Node::start`].
    #[track_caller]
    pub fn restart(&self) {
        self.stop();
        self.start();
    }

    /// Takes the daemon process out, remembering its descendants so the
    /// cluster can kill them at teardown even after they are re-parented.
    fn take_process(&self) -> Option<Process> {
        let p = lock(&self.process).take();
        if let Some(p) = &p {
            let orphans = cleanup::descendants(&[p.pid()])
                .into_iter()
                .filter_map(cleanup::ProcId::of)
                .collect::<Vec<_>>();
            lock(&self.orphans).extend(orphans);
        }
        p
    }

    #[track_caller]
    fn spawn_daemon(&self) {
        let spec = self.spec();
        let mut slot = lock(&self.process);
        if let Some(p) = slot.as_mut()
            && p.is_running()
        {
            panic!("{}: daemon already running (pid {})", self.name(), p.pid());
        }
        *slot = None;

        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("opening the daemon log");
        let mut command = self.netns.command(&spec.bin);
        command
            .arg("daemon")
            .arg("--data-root")
            .arg(&self.data_root)
            .arg("-H")
            .arg(self.host_arg())
            .args(["--log-level", "debug", "--log-format", "text"]);
        if !spec
            .extra_args
            .iter()
            .any(|a| a.starts_with("--cgroup-parent"))
        {
            command.arg("--cgroup-parent").arg(&spec.cgroup_parent);
        }
        command
            .args(&spec.extra_args)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.dir)
            .stdin(Stdio::null());
        let _ = writeln!(
            log,
            "----- harness: starting {}: {} -----",
            self.name(),
            cmd::cmdline(&command)
        );
        command
            .stdout(log.try_clone().expect("duplicating the log fd"))
            .stderr(log);
        let p = Process::spawn(format!("{} daemon", self.name()), command).unwrap_or_else(|e| {
            panic!("{}: cannot start {}: {e}", self.name(), spec.bin.display())
        });
        *slot = Some(p);
    }

    #[track_caller]
    fn wait_ready(&self) {
        let timeout = self.spec().ready_timeout;
        let deadline = Instant::now() + timeout;
        loop {
            if UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            {
                let mut slot = lock(&self.process);
                match slot.as_mut() {
                    Some(p) => {
                        if let Some(status) = p.try_wait() {
                            panic!(
                                "{}: daemon exited with {status} before accepting connections on {}\n--- log ---\n{}",
                                self.name(),
                                self.socket.display(),
                                self.log()
                            );
                        }
                    }
                    None => panic!("{}: daemon was stopped while starting", self.name()),
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "{}: daemon not accepting connections on {} after {timeout:?}\n--- log ---\n{}",
                    self.name(),
                    self.socket.display(),
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A client machine outside the swarm, on 192.0.2.0/24.
#[derive(Debug)]
pub struct Host {
    index: usize,
    netns: Netns,
    addr: Ipv4Addr,
}

impl Host {
    /// The host's number, from 1.
    pub fn index(&self) -> usize {
        self.index
    }

    pub fn netns(&self) -> &str {
        self.netns.name()
    }

    pub fn ns(&self) -> &Netns {
        &self.netns
    }

    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    pub fn iface(&self) -> &str {
        "eth0"
    }

    /// Runs a command inside the host's network namespace.
    pub fn exec(&self, program: &str, args: &[&str]) -> CmdOutput {
        self.netns.exec(program, args)
    }

    /// Runs `f` on a fresh thread inside the host's network namespace.
    pub fn in_netns<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.netns.run(f)
    }

    /// Whether one ping from this host to `addr` is answered within 1 s.
    pub fn ping(&self, addr: Ipv4Addr) -> bool {
        self.netns.ping(addr)
    }
}
