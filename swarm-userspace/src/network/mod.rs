//! Node side of overlay networks: what the dispatcher sends about the
//! networks this node's tasks are on ([`NetView`]), each task's network
//! namespace (a veth per attachment, addresses, default route, loopback),
//! and keeping the node's overlay data path (through the [`Overlay`] seam)
//! and embedded DNS in step with both.
//!
//! Owns: `<data-root>/netns/<task id>` namespaces and their `sw…` host
//! veths, the overlay map entries of this node's view. Must never decide
//! addresses (the managers' allocator does) or touch a namespace or
//! interface it did not create.
pub mod dns;
pub mod egress;
pub mod glue;
pub mod lb;
pub mod netns;
pub mod view;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use ipnet::Ipv4Net;
use swarm_proto::v1 as pb;

pub use crate::dataplane::overlay::container_mac;
use crate::worker::{PreparedNetwork, TaskNetworks};
pub use view::NetView;

/// VXLAN's IANA port, docker's default `--data-path-port`.
pub const DEFAULT_VXLAN_PORT: u16 = 4789;

/// The embedded DNS server's address inside every task namespace (docker's).
pub const EMBEDDED_DNS: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 11);

/// The node's overlay data path, as the network agent drives it. Calls are
/// idempotent; errors are texts for the task's status.
pub trait Overlay: Send + Sync {
    /// Makes sure the VXLAN device and programs are in place; returns the
    /// MTU containers get.
    fn start(&self, vxlan_port: u16) -> Result<u32, String>;
    fn set_network(&self, vni: u32, subnet: Ipv4Net, gateway: Ipv4Addr) -> Result<(), String>;
    fn remove_network(&self, vni: u32);
    fn set_local(
        &self,
        vni: u32,
        addr: Ipv4Addr,
        host_ifindex: u32,
        mac: [u8; 6],
    ) -> Result<(), String>;
    fn set_remote(&self, vni: u32, addr: Ipv4Addr, node: Ipv4Addr) -> Result<(), String>;
    fn remove_endpoint(&self, addr: Ipv4Addr);
    /// Load balancing: a service's frontend on one network, its backends.
    fn set_service(&self, frontend: crate::dataplane::ServiceFrontend) -> Result<(), String>;
    fn set_backends(&self, id: &str, backends: &[crate::dataplane::Backend]) -> Result<(), String>;
    fn remove_service(&self, id: &str);
    /// Published ports answer on `node_addr` arriving at `interface`.
    fn mesh_start(&self, interface: &str, node_addr: Ipv4Addr) -> Result<(), String>;
    /// Expires finished connections from the balancer's table.
    fn ct_gc(&self);
    /// After a restart: everything has been set again; drop the rest.
    fn adoption_done(&self);
}

/// The embedded DNS server, as the network agent drives it.
#[async_trait::async_trait]
pub trait Names: Send + Sync {
    /// Replaces every name with those of `view`.
    fn set_view(&self, view: &NetView);
    /// Serves the task's namespace; `networks` are the ones it may see.
    async fn attach(
        &self,
        task_id: &str,
        netns: &Path,
        networks: Vec<String>,
    ) -> Result<(), String>;
    fn detach(&self, task_id: &str);
}

/// One attachment of a task to prepare, resolved from the view.
struct Planned {
    network_id: String,
    vni: u32,
    subnet: Ipv4Net,
    gateway: Ipv4Addr,
    addr: Ipv4Net,
}

/// One attachment of a local task.
#[derive(Clone, Debug)]
struct LocalLink {
    host_name: String,
    addr: Ipv4Addr,
}

#[derive(Default)]
struct State {
    view: NetView,
    /// Tasks attached here: their namespace and links.
    local: HashMap<String, Vec<LocalLink>>,
    /// Remote endpoints installed in the data path: address → (vni, node).
    remote: BTreeMap<Ipv4Addr, (u32, Ipv4Addr)>,
    /// Networks installed in the data path, by VNI.
    networks: BTreeSet<u32>,
    /// The overlay subnets the egress rules were last written for.
    egress: Option<Vec<Ipv4Net>>,
    /// Whether leftovers of an earlier run were cleaned (at the first
    /// complete assignment set).
    cleaned: bool,
    /// Load-balancer frontends installed, by id, with their backends.
    lb: BTreeMap<
        String,
        (
            crate::dataplane::ServiceFrontend,
            Vec<crate::dataplane::Backend>,
        ),
    >,
    /// The routing mesh's (interface, address), once started.
    mesh: Option<(String, Ipv4Addr)>,
    /// Local tasks an adopting data plane still waits for (after the
    /// first complete assignment set); `None` once adoption is done.
    adopting: Option<BTreeSet<String>>,
}

/// See the module docs. Cheap to clone.
#[derive(Clone)]
pub struct NetworkAgent {
    dir: PathBuf,
    overlay: Arc<dyn Overlay>,
    names: Option<Arc<dyn Names>>,
    state: Arc<Mutex<State>>,
    /// Serializes namespace work (netlink handles are per call).
    work: Arc<tokio::sync::Mutex<()>>,
    /// Serializes egress syncs: each reads the wanted subnets and installs
    /// them, so an older sync must not install its (stale) set after a
    /// newer one.
    egress: Arc<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for NetworkAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetworkAgent")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error(
        "network {0} is not known on this node yet (its state comes with the assignment); the task will be retried"
    )]
    UnknownNetwork(String),
    #[error("network {0} has no subnet or VXLAN ID allocated")]
    Unallocated(String),
    #[error("invalid address {addr:?} on network {network}")]
    BadAddress { network: String, addr: String },
    #[error("overlay data path: {0}")]
    Overlay(String),
    #[error(transparent)]
    Netns(#[from] netns::NetnsError),
    #[error("embedded DNS: {0}")]
    Dns(String),
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl NetworkAgent {
    /// Namespaces live under `<data_root>/netns`.
    pub fn new(data_root: &Path, overlay: Arc<dyn Overlay>, names: Option<Arc<dyn Names>>) -> Self {
        NetworkAgent {
            dir: data_root.join("netns"),
            overlay,
            names,
            state: Arc::default(),
            work: Arc::default(),
            egress: Arc::default(),
        }
    }

    fn netns_path(&self, task_id: &str) -> PathBuf {
        self.dir.join(task_id)
    }

    /// The current view (for inspection and tests).
    pub fn view(&self) -> NetView {
        lock(&self.state).view.clone()
    }

    /// Brings the data path's networks and remote endpoints in line with
    /// the view.
    fn sync_overlay(&self, st: &mut State) {
        let want_nets: BTreeMap<u32, (Ipv4Net, Ipv4Addr)> = st.view.overlay_networks();
        for (vni, (subnet, gw)) in &want_nets {
            if !st.networks.contains(vni) {
                match self.overlay.set_network(*vni, *subnet, *gw) {
                    Ok(()) => {
                        st.networks.insert(*vni);
                    }
                    Err(e) => tracing::warn!(vni, error = %e, "cannot install an overlay network"),
                }
            }
        }
        let want: BTreeMap<Ipv4Addr, (u32, Ipv4Addr)> = st.view.remote_endpoints();
        let gone: Vec<Ipv4Addr> = st
            .remote
            .keys()
            .filter(|a| !want.contains_key(a))
            .copied()
            .collect();
        for (a, (vni, node)) in want {
            if st.remote.get(&a) == Some(&(vni, node)) {
                continue;
            }
            if st.local.values().flatten().any(|l| l.addr == a) {
                continue;
            }
            match self.overlay.set_remote(vni, a, node) {
                Ok(()) => {
                    st.remote.insert(a, (vni, node));
                }
                Err(e) => tracing::warn!(addr = %a, error = %e, "cannot install a remote endpoint"),
            }
        }
        let stale: Vec<u32> = st
            .networks
            .iter()
            .filter(|v| !want_nets.contains_key(v))
            .copied()
            .collect();
        // Backends first, then endpoints: the balancer must not pick an
        // address the overlay no longer knows (a dropped SYN costs the
        // client a one-second retransmit).
        self.sync_lb(st);
        for a in gone {
            st.remote.remove(&a);
            // A local endpoint may have taken the address over.
            if !st.local.values().flatten().any(|l| l.addr == a) {
                self.overlay.remove_endpoint(a);
            }
        }
        for vni in stale {
            st.networks.remove(&vni);
            self.overlay.remove_network(vni);
        }
    }

    /// Brings the balancer's frontends and backends in line with the view.
    /// Backends whose endpoint the data path does not know yet (a local
    /// task not attached yet) wait for the next sync.
    fn sync_lb(&self, st: &mut State) {
        use crate::dataplane::{Backend, PortMapping, Proto, ServiceFrontend};
        let mut want: BTreeMap<String, (ServiceFrontend, Vec<Backend>)> = BTreeMap::new();
        for s in lb::services(&st.view) {
            for v in &s.vips {
                let id = format!("{}/{}", s.service_id, v.vni);
                let published = if v.vni == s.ingress_vni {
                    s.published
                        .iter()
                        .filter(|p| !p.host_mode)
                        .map(lb::Published::mapping)
                        .collect()
                } else {
                    Vec::new()
                };
                let fe = ServiceFrontend {
                    id: id.clone(),
                    vni: v.vni,
                    vip: Some(v.vip),
                    // Every port of the VIP, kept, as docker's VIPs.
                    ports: [Proto::Tcp, Proto::Udp]
                        .into_iter()
                        .map(|proto| PortMapping {
                            proto,
                            port: 0,
                            target: 0,
                        })
                        .collect(),
                    published,
                };
                let backends: Vec<Backend> = v
                    .backends
                    .iter()
                    .filter(|b| match b.node {
                        None => st.local.values().flatten().any(|l| l.addr == b.addr),
                        Some(_) => st.remote.contains_key(&b.addr),
                    })
                    .map(|b| Backend {
                        addr: b.addr,
                        draining: b.draining,
                    })
                    .collect();
                want.insert(id, (fe, backends));
            }
            // Host-mode ports: only where a task runs, to the local tasks.
            let host: Vec<PortMapping> = s
                .published
                .iter()
                .filter(|p| p.host_mode)
                .map(lb::Published::mapping)
                .collect();
            let local: Vec<Backend> = s
                .mesh_backends
                .iter()
                .filter(|b| b.node.is_none())
                .filter(|b| st.local.values().flatten().any(|l| l.addr == b.addr))
                .map(|b| Backend {
                    addr: b.addr,
                    draining: b.draining,
                })
                .collect();
            if !host.is_empty() && !local.is_empty() && s.ingress_vni != 0 {
                let id = format!("{}/host", s.service_id);
                let fe = ServiceFrontend {
                    id: id.clone(),
                    vni: s.ingress_vni,
                    vip: None,
                    ports: Vec::new(),
                    published: host,
                };
                want.insert(id, (fe, local));
            }
        }
        let gone: Vec<String> = st
            .lb
            .keys()
            .filter(|k| !want.contains_key(*k))
            .cloned()
            .collect();
        for id in gone {
            st.lb.remove(&id);
            self.overlay.remove_service(&id);
        }
        for (id, (fe, backends)) in want {
            let have = st.lb.get(&id);
            let same_frontend = have.map(|(f, _)| f) == Some(&fe);
            if !same_frontend && let Err(e) = self.overlay.set_service(fe.clone()) {
                tracing::warn!(service = %id, error = %e, "cannot install a service frontend");
                continue;
            }
            if !same_frontend || have.map(|(_, b)| b) != Some(&backends) {
                if let Err(e) = self.overlay.set_backends(&id, &backends) {
                    tracing::warn!(service = %id, error = %e, "cannot set a service's backends");
                    continue;
                }
                tracing::debug!(
                    service = %id,
                    backends = ?backends.iter().map(|b| (b.addr, b.draining)).collect::<Vec<_>>(),
                    "load balancer backends set"
                );
            }
            st.lb.insert(id, (fe, backends));
        }
    }

    /// Starts the routing mesh on the interface holding this node's
    /// address, once the managers said which address that is.
    fn sync_mesh(&self, st: &mut State) {
        let Some(addr) = st.view.node_addr else {
            return;
        };
        if st.mesh.as_ref().is_some_and(|(_, a)| *a == addr) {
            return;
        }
        // Replies of mesh connections come back through the VXLAN device
        // even on a node that runs no task: it must be up here too.
        if let Err(e) = self.overlay.start(st.view.vxlan_port()) {
            tracing::warn!(error = %e, "cannot start the overlay for the routing mesh");
            return;
        }
        let Some(iface) = interface_with(addr) else {
            tracing::warn!(%addr, "no interface holds this node's address: published ports will not answer here");
            return;
        };
        match self.overlay.mesh_start(&iface, addr) {
            Ok(()) => {
                tracing::info!(interface = %iface, %addr, "routing mesh started");
                st.mesh = Some((iface, addr));
            }
            Err(e) => tracing::warn!(error = %e, "cannot start the routing mesh"),
        }
    }

    /// One garbage-collection sweep of the balancer's connection table.
    pub fn ct_gc(&self) {
        self.overlay.ct_gc();
    }

    /// Marks a local task as set again; ends adoption once none is left.
    fn adopted_task(&self, st: &mut State, task_id: Option<&str>) {
        if let Some(waiting) = st.adopting.as_mut() {
            if let Some(id) = task_id {
                waiting.remove(id);
            }
            if waiting.is_empty() {
                st.adopting = None;
                self.overlay.adoption_done();
            }
        }
    }

    async fn attach_task(&self, task: &pb::Task) -> Result<Option<PreparedNetwork>, NetworkError> {
        let task_id = task.meta.as_ref().map_or("", |m| m.id.as_str()).to_owned();
        let atts: Vec<&pb::NetworkAttachment> = task
            .networks
            .iter()
            .filter(|n| !n.addresses.is_empty())
            .collect();
        if atts.is_empty() {
            return Ok(None);
        }
        // Resolve everything before touching the kernel.
        let mut plan = Vec::new();
        let port;
        {
            let st = lock(&self.state);
            port = st.view.vxlan_port();
            for a in &atts {
                let net = st
                    .view
                    .networks
                    .get(&a.network_id)
                    .ok_or_else(|| NetworkError::UnknownNetwork(a.network_id.clone()))?;
                let (subnet, gateway) = crate::allocator::ipam::allocated_subnet(net)
                    .ok_or_else(|| NetworkError::Unallocated(a.network_id.clone()))?;
                if net.vni == 0 {
                    return Err(NetworkError::Unallocated(a.network_id.clone()));
                }
                let addr: Ipv4Net =
                    a.addresses[0]
                        .parse()
                        .map_err(|_| NetworkError::BadAddress {
                            network: a.network_id.clone(),
                            addr: a.addresses[0].clone(),
                        })?;
                plan.push(Planned {
                    network_id: a.network_id.clone(),
                    vni: net.vni,
                    subnet,
                    gateway,
                    addr,
                });
            }
        }
        let mtu = self.overlay.start(port).map_err(NetworkError::Overlay)?;
        let _work = self.work.lock().await;
        let path = self.netns_path(&task_id);
        netns::create(&path)?;
        let host = netns::netlink(None)?;
        let ns = netns::netlink(Some(&path))?;
        netns::loopback_up(&ns).await?;
        let mut links = Vec::new();
        for (i, p) in plan.iter().enumerate() {
            let link = netns::Link {
                host_name: netns::host_name(&task_id, i),
                name: format!("eth{i}"),
                mac: container_mac(p.addr.addr()),
                addr: p.addr,
                gateway: p.gateway,
                mtu,
                default_route: i == 0,
            };
            let idx = netns::add_link(&host, &ns, &path, &link).await?;
            netns::host_route(&host, idx, p.addr.addr(), link.mac).await?;
            self.overlay
                .set_network(p.vni, p.subnet, p.gateway)
                .map_err(NetworkError::Overlay)?;
            self.overlay
                .set_local(p.vni, p.addr.addr(), idx, link.mac)
                .map_err(NetworkError::Overlay)?;
            links.push(LocalLink {
                host_name: link.host_name,
                addr: p.addr.addr(),
            });
        }
        {
            let mut st = lock(&self.state);
            for p in &plan {
                st.networks.insert(p.vni);
            }
            for l in &links {
                st.remote.remove(&l.addr);
            }
            st.local.insert(task_id.clone(), links.clone());
            self.sync_lb(&mut st);
            self.adopted_task(&mut st, Some(&task_id));
        }
        self.sync_egress().await;
        let mut nameserver = None;
        if let Some(names) = &self.names {
            let networks: Vec<String> = plan.into_iter().map(|p| p.network_id).collect();
            names
                .attach(&task_id, &path, networks)
                .await
                .map_err(NetworkError::Dns)?;
            nameserver = Some(IpAddr::V4(EMBEDDED_DNS));
        }
        Ok(Some(PreparedNetwork {
            netns: path,
            addresses: links.iter().map(|l| IpAddr::V4(l.addr)).collect(),
            nameserver,
        }))
    }

    async fn detach_task(&self, task_id: &str) {
        if let Some(names) = &self.names {
            names.detach(task_id);
        }
        let links = lock(&self.state).local.remove(task_id);
        let path = self.netns_path(task_id);
        if links.is_none() && !path.exists() {
            return;
        }
        let _work = self.work.lock().await;
        for l in links.iter().flatten() {
            self.overlay.remove_endpoint(l.addr);
        }
        match netns::netlink(None) {
            Ok(host) => {
                // The host ends of an earlier run are found by name.
                let names: Vec<String> = match &links {
                    Some(ls) => ls.iter().map(|l| l.host_name.clone()).collect(),
                    None => (0..8).map(|i| netns::host_name(task_id, i)).collect(),
                };
                for n in names {
                    if let Err(e) = netns::del_link(&host, &n).await {
                        tracing::warn!(task = %task_id, error = %e, "deleting a task's veth failed");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot open netlink to delete a task's veths"),
        }
        netns::remove(&path);
        // Peers that are remote again (an address moved) come back.
        let mut st = lock(&self.state);
        self.sync_overlay(&mut st);
    }

    /// Rewrites the egress rules when the overlay subnets changed. Only
    /// nodes with tasks on overlay networks have any; failures are logged
    /// (the overlay itself works without them).
    async fn sync_egress(&self) {
        // Two syncs racing (a task attaching, a network update) used to
        // install in either order: the older set could win, and a
        // container's subnet went unmasqueraded until the next change.
        let _egress = self.egress.lock().await;
        let want: Vec<Ipv4Net> = {
            let st = lock(&self.state);
            if st.local.is_empty() && st.egress.is_none() {
                return;
            }
            st.view
                .overlay_networks()
                .values()
                .map(|(s, _)| *s)
                .collect()
        };
        if lock(&self.state).egress.as_ref() == Some(&want) {
            return;
        }
        let subnets = want.clone();
        match tokio::task::spawn_blocking(move || egress::apply(&subnets)).await {
            Ok(Ok(())) => lock(&self.state).egress = Some(want),
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot set up egress for overlay networks"),
            Err(e) => tracing::warn!(error = %e, "the egress setup task failed"),
        }
    }

    /// After a restart, at the first complete assignment set: namespaces
    /// of tasks no longer assigned go.
    async fn clean_leftovers(&self, assigned: &BTreeSet<String>) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let leftovers: Vec<String> = entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|id| !assigned.contains(id))
            .collect();
        for id in leftovers {
            tracing::info!(task = %id, "removing the network namespace of a task no longer assigned");
            self.detach_task(&id).await;
        }
    }
}

#[async_trait::async_trait]
impl TaskNetworks for NetworkAgent {
    async fn apply(&self, m: &pb::AssignmentsMessage) {
        let full = m.r#type == pb::assignments_message::Type::Full as i32;
        let first_full = {
            let mut st = lock(&self.state);
            st.view.apply(m);
            // Most messages carry task changes only: the data path, mesh
            // and names follow the overlay state, so they are left alone.
            if full || view::has_overlay_state(m) {
                self.sync_overlay(&mut st);
                self.sync_mesh(&mut st);
                if let Some(names) = &self.names {
                    names.set_view(&st.view);
                }
            }
            let first = full && !st.cleaned;
            if first {
                st.cleaned = true;
                // The local tasks on networks that a restarted data plane
                // must see set again before it drops what was not.
                let waiting: BTreeSet<String> = m
                    .updated_tasks
                    .iter()
                    .filter(|t| t.networks.iter().any(|n| !n.addresses.is_empty()))
                    .filter(|t| t.desired_state <= pb::TaskState::Running as i32)
                    .filter_map(|t| t.meta.as_ref().map(|m| m.id.clone()))
                    .collect();
                st.adopting = Some(waiting);
                self.adopted_task(&mut st, None);
            }
            first
        };
        self.sync_egress().await;
        if first_full {
            let assigned: BTreeSet<String> = m
                .updated_tasks
                .iter()
                .filter_map(|t| t.meta.as_ref().map(|m| m.id.clone()))
                .collect();
            self.clean_leftovers(&assigned).await;
        }
    }

    async fn attach(&self, task: &pb::Task) -> Result<Option<PreparedNetwork>, String> {
        self.attach_task(task).await.map_err(|e| e.to_string())
    }

    async fn detach(&self, task_id: &str) {
        self.detach_task(task_id).await;
    }
}

/// The interface holding `addr` in this network namespace.
fn interface_with(addr: Ipv4Addr) -> Option<String> {
    let addrs = nix::ifaddrs::getifaddrs().ok()?;
    for ifa in addrs {
        let Some(sa) = ifa.address.as_ref().and_then(|a| a.as_sockaddr_in()) else {
            continue;
        };
        if sa.ip() == addr {
            return Some(ifa.interface_name);
        }
    }
    None
}

/// Sweeps the balancer's connection table every few seconds.
pub struct CtGcLoop {
    pub agent: NetworkAgent,
    pub every: std::time::Duration,
}

impl crate::supervisor::ControlLoop for CtGcLoop {
    fn name(&self) -> &'static str {
        "ct-gc"
    }

    async fn run(
        self,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Result<(), crate::supervisor::LoopError> {
        let mut tick = tokio::time::interval(self.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                _ = tick.tick() => {
                    let agent = self.agent.clone();
                    let _ = tokio::task::spawn_blocking(move || agent.ct_gc()).await;
                }
            }
        }
    }
}
