//! The allocator: network resources for networks, services and tasks
//! (swarmkit's `manager/allocator`).
//!
//! Owns: overlay network subnets (carved from the cluster's
//! `--default-addr-pool`s, gateway the first address) and VXLAN IDs;
//! service virtual IPs (one per attached network in vip mode, plus
//! `ingress` when the service publishes ports in ingress mode) and the
//! published ports chosen for ingress ports given without one (30000 to
//! 32767); one address per task on each network it attaches to. Tasks
//! enter the allocator in state NEW and leave it PENDING, ready for the
//! scheduler (tasks with nothing to allocate are created PENDING and never
//! come here: [`needs_allocation`]); a task that cannot be allocated stays NEW with `status.err`
//! saying why. Addresses of tasks that are gone or have ended (observed
//! state past RUNNING) are free again.
//!
//! Must never: read the store or a clock itself, or write anything. The
//! leader builds an [`Allocator`] from a view ([`Allocator::from_view`]:
//! everything it needs is in the objects, so a new leader needs no other
//! state), then on each change calls [`Allocator::pass`] with the newest
//! view and its clock, and writes the returned [`Allocations`] in one
//! batch ([`Allocations::write`]). A pass over a view where everything is
//! allocated returns nothing.
//!
//! The control API allocates a new network's subnet itself (so `network
//! inspect` shows it at once) with [`plan_network`], under the manager's
//! write lock; the allocator allocates the networks that reach it without
//! one. Its loop must hold that lock from taking the view to proposing.
//!
//! Writes carry the version they were read at; an object changed in
//! between is skipped ([`Allocations::write`]) and allocated again by the
//! next pass (a task keeps the addresses reserved for it).

pub mod ipam;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::SystemTime;

use ipnet::Ipv4Net;
use swarm_proto::v1 as pb;

use crate::store::{ReadTx, StoreError, StoreObject, WriteTx};
use ipam::{Pools, Subnet, Used};

/// The status message of a task the allocator made ready for the scheduler.
pub const PENDING_MESSAGE: &str = "pending task scheduling";
/// The name of the routing-mesh network `swarm init` creates.
pub const INGRESS_NAME: &str = "ingress";
/// The network driver, the only one.
pub const OVERLAY: &str = "overlay";
/// The driver option docker shows a network's VXLAN ID under.
pub const VXLAN_ID_OPTION: &str = "com.docker.network.driver.overlay.vxlanid_list";

/// What one pass decided: objects to write, each carrying the version it
/// was read at, and problems for the log that have no object to report on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Allocations {
    /// Networks given a subnet and VXLAN ID.
    pub networks: Vec<pb::Network>,
    /// Services whose endpoint (VIPs, published ports) changed.
    pub services: Vec<pb::Service>,
    /// Tasks moved to PENDING with their addresses, or left NEW with a
    /// new `status.err`.
    pub tasks: Vec<pb::Task>,
    /// What could not be allocated for networks and services (which have
    /// no status to carry it), e.g. an exhausted address pool.
    pub problems: Vec<String>,
}

impl Allocations {
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.networks.is_empty() && self.services.is_empty() && self.tasks.is_empty()
    }

    /// Adds the writes to a batch being prepared. An object changed since
    /// the pass's view (its version moved) is skipped: the next pass sees it
    /// afresh (a task gets the same addresses, which stay reserved for it).
    pub fn write(&self, tx: &mut WriteTx) -> Result<(), StoreError> {
        for n in &self.networks {
            write_if_unchanged(tx, n)?;
        }
        for s in &self.services {
            write_if_unchanged(tx, s)?;
        }
        for t in &self.tasks {
            write_if_unchanged(tx, t)?;
        }
        Ok(())
    }
}

fn write_if_unchanged<T: StoreObject + Clone>(tx: &mut WriteTx, obj: &T) -> Result<(), StoreError> {
    let unchanged = tx
        .get::<T>(obj.id())
        .is_some_and(|cur| cur.version() == obj.version());
    if unchanged {
        tx.update(obj.clone())?;
    }
    Ok(())
}

/// An address held on a network.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Held {
    network: String,
    addr: Ipv4Addr,
}

#[derive(Debug, Clone)]
struct Net {
    name: String,
    vni: u32,
    subnet: Subnet,
}

/// Addresses a task or service holds, and the pass that last saw it.
#[derive(Debug, Clone, Default)]
struct Holding {
    held: Vec<Held>,
    seen: u64,
}

/// The allocator's memory: which subnets, VXLAN IDs and addresses are
/// taken, and by whom. Rebuilt from the store at leadership; kept in step
/// by [`pass`](Self::pass).
#[derive(Debug, Clone, Default)]
pub struct Allocator {
    pools: Pools,
    /// Allocated networks by ID.
    nets: HashMap<String, Net>,
    vnis: BTreeSet<u32>,
    tasks: HashMap<String, Holding>,
    services: HashMap<String, Holding>,
    generation: u64,
}

fn id_of<T: StoreObject>(o: &T) -> &str {
    o.id()
}

fn task_state(t: &pb::Task) -> i32 {
    t.status.as_ref().map_or(0, |s| s.state)
}

/// Observed past RUNNING: its addresses are free again.
fn has_ended(t: &pb::Task) -> bool {
    task_state(t) > pb::TaskState::Running as i32
}

/// Still wanted: desired at most COMPLETE (READY, RUNNING, or COMPLETE
/// for jobs).
fn is_wanted(t: &pb::Task) -> bool {
    t.desired_state <= pb::TaskState::Complete as i32
}

/// Whether `held` is exactly the addresses of `networks`, in order.
fn holds_exactly(held: &[Held], networks: &[pb::NetworkAttachment]) -> bool {
    let mut it = held.iter();
    for n in networks {
        for a in &n.addresses {
            match it.next() {
                Some(h)
                    if h.network == n.network_id && ipam::parse_cidr_addr(a) == Some(h.addr) => {}
                _ => return false,
            }
        }
    }
    it.next().is_none()
}

/// Whether an endpoint spec publishes a port through the routing mesh.
fn publishes_ingress(e: Option<&pb::EndpointSpec>) -> bool {
    e.is_some_and(|e| {
        e.ports
            .iter()
            .any(|p| p.publish_mode == pb::PublishMode::Ingress as i32)
    })
}

/// Host-mode ports are served by the node's data plane too (to the local
/// task's address on ingress), so their tasks join ingress as well.
fn publishes_host(e: Option<&pb::EndpointSpec>) -> bool {
    e.is_some_and(|e| {
        e.ports
            .iter()
            .any(|p| p.publish_mode == pb::PublishMode::Host as i32)
    })
}

fn is_vip(e: Option<&pb::EndpointSpec>) -> bool {
    e.is_none_or(|e| e.mode == pb::EndpointMode::Vip as i32)
}

/// Whether tasks of `service` need the allocator: they attach to networks
/// or publish ports (ingress or host mode, which join `ingress`). Tasks of
/// other services have nothing to allocate, so the orchestrator creates
/// them PENDING (with [`PENDING_MESSAGE`]) and they skip a write through
/// Raft; this allocator never sees them.
#[must_use]
pub fn needs_allocation(service: &pb::Service) -> bool {
    let Some(spec) = service.spec.as_ref() else {
        return true;
    };
    let espec = spec.endpoint.as_ref();
    spec.task.as_ref().is_none_or(|t| !t.networks.is_empty())
        || publishes_ingress(espec)
        || publishes_host(espec)
}

/// The ingress network of a view, if there is one.
#[must_use]
pub fn ingress_network(view: &ReadTx) -> Option<Arc<pb::Network>> {
    view.list::<pb::Network>()
        .find(|n| n.spec.as_ref().is_some_and(|s| s.ingress))
}

/// `network` with `subnet` (gateway: the spec's, else the first address)
/// and VXLAN ID `vni` allocated, as the allocator and the control API
/// write it.
#[must_use]
pub fn allocated_network(network: &pb::Network, subnet: Ipv4Net, vni: u32) -> pb::Network {
    let mut n = network.clone();
    let gateway = n
        .spec
        .as_ref()
        .and_then(|s| s.ipam.as_ref())
        .and_then(|i| i.configs.first())
        .and_then(|c| ipam::parse_gateway(&c.gateway, &subnet).ok())
        .unwrap_or_else(|| ipam::default_gateway(&subnet));
    n.ipam = Some(pb::IpamOptions {
        driver: Some(pb::Driver {
            name: "default".into(),
            options: BTreeMap::new(),
        }),
        configs: vec![pb::IpamConfig {
            family: pb::IpFamily::Ipv4 as i32,
            subnet: subnet.to_string(),
            range: String::new(),
            gateway: gateway.to_string(),
            reserved: BTreeMap::new(),
        }],
    });
    n.vni = vni;
    n.driver_state = Some(pb::Driver {
        name: OVERLAY.into(),
        options: [(VXLAN_ID_OPTION.to_owned(), vni.to_string())].into(),
    });
    n
}

/// A subnet and VXLAN ID for a new network, chosen against the networks
/// of `view`: the spec's subnet if it has one, else the first free subnet
/// of the cluster's pools. `Err` says why there is none.
pub fn plan_network(view: &ReadTx, spec: &pb::NetworkSpec) -> Result<(Ipv4Net, u32), String> {
    let nets: Vec<Arc<pb::Network>> = view.list::<pb::Network>().collect();
    let subnets: Vec<Ipv4Net> = nets
        .iter()
        .filter_map(|n| ipam::network_subnet(n))
        .collect();
    let vnis: BTreeSet<u32> = nets.iter().map(|n| n.vni).filter(|v| *v != 0).collect();
    let cluster = view.list::<pb::Cluster>().next();
    let pools = Pools::of_cluster(cluster.as_deref());
    let subnet = match ipam::requested_subnet(spec) {
        Some(s) => s,
        None => pools
            .carve(&Used::of(&subnets))
            .ok_or_else(|| exhausted_pools(&pools))?,
    };
    let vni = ipam::next_vni(&vnis).ok_or("every VXLAN ID is in use: remove unused networks")?;
    Ok((subnet, vni))
}

fn exhausted_pools(pools: &Pools) -> String {
    format!(
        "no subnet left in the default address pools ({}): remove unused networks, or give the network a --subnet outside them",
        pools.describe()
    )
}

impl Allocator {
    /// The allocator's memory rebuilt from `view`: subnets, VXLAN IDs,
    /// VIPs and the addresses of live tasks. Allocates nothing.
    #[must_use]
    pub fn from_view(view: &ReadTx) -> Allocator {
        let mut a = Allocator::default();
        a.observe(view);
        a
    }

    /// One allocation pass over `view` (the newest the leader has); `now`
    /// stamps task status changes. Updates the allocator's memory and
    /// returns the writes to make. Cost: one look at every network, service
    /// and task of the view.
    pub fn pass(&mut self, view: &ReadTx, now: SystemTime) -> Allocations {
        let pending = self.observe(view);
        let mut out = Allocations::default();
        self.allocate_networks(view, &mut out);
        let services = self.allocate_services(view, &mut out);
        let ingress = ingress_network(view).map(|n| id_of(&*n).to_owned());
        for t in pending {
            if let Some(t) = self.allocate_task(view, &t, &services, ingress.as_deref(), now) {
                out.tasks.push(t);
            }
        }
        out
    }

    /// Brings the memory in step with `view`: drops what is gone, adopts
    /// what the view holds. Returns the tasks waiting for allocation.
    fn observe(&mut self, view: &ReadTx) -> Vec<Arc<pb::Task>> {
        self.generation += 1;
        let generation = self.generation;
        self.pools = Pools::of_cluster(view.list::<pb::Cluster>().next().as_deref());

        // Networks: the allocated ones, by subnet. A network that left, or
        // whose subnet changed, takes its holders' addresses with it; they
        // are adopted again below from what the objects say.
        let mut present: HashMap<String, (Ipv4Net, Ipv4Addr, u32, String)> = HashMap::new();
        for n in view.list::<pb::Network>() {
            if let Some((subnet, gw)) = ipam::allocated_subnet(&n) {
                let name = n
                    .spec
                    .as_ref()
                    .and_then(|s| s.annotations.as_ref())
                    .map(|a| a.name.clone())
                    .unwrap_or_default();
                present.insert(id_of(&*n).to_owned(), (subnet, gw, n.vni, name));
            }
        }
        let stale: Vec<String> = self
            .nets
            .iter()
            .filter(|(id, net)| {
                present
                    .get(*id)
                    .is_none_or(|(s, g, _, _)| *s != net.subnet.net() || *g != net.subnet.gateway())
            })
            .map(|(id, _)| id.clone())
            .collect();
        if !stale.is_empty() {
            for id in &stale {
                self.nets.remove(id);
            }
            for h in self.tasks.values_mut().chain(self.services.values_mut()) {
                h.held.retain(|x| !stale.contains(&x.network));
            }
        }
        for (id, (subnet, gw, vni, name)) in present {
            let net = self.nets.entry(id).or_insert_with(|| Net {
                name: name.clone(),
                vni,
                subnet: Subnet::new(subnet, gw),
            });
            net.vni = vni;
            net.name = name;
        }
        self.vnis = view
            .list::<pb::Network>()
            .map(|n| n.vni)
            .filter(|v| *v != 0)
            .collect();

        // Services: the VIPs their endpoints hold.
        for s in view.list::<pb::Service>() {
            let vips: Vec<Held> = s
                .endpoint
                .as_ref()
                .map(|e| {
                    e.virtual_ips
                        .iter()
                        .filter_map(|v| {
                            Some(Held {
                                network: v.network_id.clone(),
                                addr: ipam::parse_cidr_addr(&v.addr)?,
                            })
                        })
                        .collect()
                })
                .unwrap_or_default();
            let id = id_of(&*s).to_owned();
            self.adopt(Kind::Service, &id, vips, generation);
        }

        // Tasks: live ones hold their addresses; ended ones free them.
        let mut pending = Vec::new();
        for t in view.list::<pb::Task>() {
            let id = id_of(&*t);
            let state = task_state(&t);
            if has_ended(&t) || (state == pb::TaskState::New as i32 && !is_wanted(&t)) {
                continue;
            }
            if state == pb::TaskState::New as i32 {
                // Keep what an earlier pass reserved for it (its write may
                // not have landed yet); `allocate_task` reuses it.
                if let Some(h) = self.tasks.get_mut(id) {
                    h.seen = generation;
                }
                pending.push(t);
                continue;
            }
            // The common case, cheaply: nothing changed since last seen.
            if let Some(h) = self.tasks.get_mut(id)
                && holds_exactly(&h.held, &t.networks)
            {
                h.seen = generation;
                continue;
            }
            let held: Vec<Held> = t
                .networks
                .iter()
                .flat_map(|n| {
                    n.addresses.iter().filter_map(|a| {
                        Some(Held {
                            network: n.network_id.clone(),
                            addr: ipam::parse_cidr_addr(a)?,
                        })
                    })
                })
                .collect();
            self.adopt(Kind::Task, id, held, generation);
        }

        // Whatever was not seen is gone (or ended): free it.
        for kind in [Kind::Task, Kind::Service] {
            let map = match kind {
                Kind::Task => &mut self.tasks,
                Kind::Service => &mut self.services,
            };
            let gone: Vec<String> = map
                .iter()
                .filter(|(_, h)| h.seen != generation)
                .map(|(id, _)| id.clone())
                .collect();
            for id in gone {
                if let Some(h) = map.remove(&id) {
                    for x in h.held {
                        if let Some(n) = self.nets.get_mut(&x.network) {
                            n.subnet.release(x.addr);
                        }
                    }
                }
            }
        }
        pending
    }

    /// Records that `id` holds `want` (from the view), freeing what it held
    /// before and no longer does.
    fn adopt(&mut self, kind: Kind, id: &str, mut want: Vec<Held>, generation: u64) {
        want.retain(|h| {
            self.nets
                .get(&h.network)
                .is_some_and(|n| n.subnet.net().contains(&h.addr))
        });
        let map = match kind {
            Kind::Task => &mut self.tasks,
            Kind::Service => &mut self.services,
        };
        if want.is_empty() && !map.contains_key(id) {
            return;
        }
        let h = map.entry(id.to_owned()).or_default();
        h.seen = generation;
        if h.held == want {
            return;
        }
        let old = std::mem::replace(&mut h.held, want.clone());
        for x in old.iter().filter(|x| !want.contains(x)) {
            if let Some(n) = self.nets.get_mut(&x.network) {
                n.subnet.release(x.addr);
            }
        }
        for x in want.iter().filter(|x| !old.contains(x)) {
            if let Some(n) = self.nets.get_mut(&x.network) {
                // Taken already means two holders claim one address, which
                // only a bug writes; it stays taken either way.
                let _ = n.subnet.reserve(x.addr);
            }
        }
    }

    fn allocate_networks(&mut self, view: &ReadTx, out: &mut Allocations) {
        let mut used = Used::of(
            &view
                .list::<pb::Network>()
                .filter_map(|n| ipam::network_subnet(&n))
                .collect::<Vec<_>>(),
        );
        for n in view.list::<pb::Network>() {
            if ipam::allocated_subnet(&n).is_some() {
                continue;
            }
            let requested = n.spec.as_ref().and_then(ipam::requested_subnet);
            let subnet = match requested {
                Some(s) => s,
                None => match self.pools.carve(&used) {
                    Some(s) => s,
                    None => {
                        out.problems.push(format!(
                            "network {}: {}",
                            id_of(&*n),
                            exhausted_pools(&self.pools)
                        ));
                        continue;
                    }
                },
            };
            let vni = if n.vni != 0 {
                n.vni
            } else if let Some(v) = ipam::next_vni(&self.vnis) {
                v
            } else {
                out.problems
                    .push(format!("network {}: every VXLAN ID is in use", id_of(&*n)));
                continue;
            };
            used.insert(&subnet);
            self.vnis.insert(vni);
            let allocated = allocated_network(&n, subnet, vni);
            if let Some((s, gw)) = ipam::allocated_subnet(&allocated) {
                let name = allocated
                    .spec
                    .as_ref()
                    .and_then(|s| s.annotations.as_ref())
                    .map(|a| a.name.clone())
                    .unwrap_or_default();
                self.nets.insert(
                    id_of(&*n).to_owned(),
                    Net {
                        name,
                        vni,
                        subnet: Subnet::new(s, gw),
                    },
                );
            }
            out.networks.push(allocated);
        }
    }

    /// Gives every service the endpoint it should have; returns the
    /// endpoints by service ID, for the service's new tasks.
    fn allocate_services(
        &mut self,
        view: &ReadTx,
        out: &mut Allocations,
    ) -> HashMap<String, pb::Endpoint> {
        let ingress = ingress_network(view).map(|n| id_of(&*n).to_owned());
        // Published ports in use, for choosing dynamic ones.
        let mut ports: BTreeSet<(i32, u32)> = BTreeSet::new();
        for s in view.list::<pb::Service>() {
            let spec_ports = s
                .spec
                .as_ref()
                .and_then(|s| s.endpoint.as_ref())
                .map(|e| e.ports.as_slice())
                .unwrap_or_default();
            let given = s
                .endpoint
                .as_ref()
                .map(|e| e.ports.as_slice())
                .unwrap_or_default();
            for p in spec_ports.iter().chain(given) {
                if p.published_port != 0 {
                    ports.insert((p.protocol, p.published_port));
                }
            }
        }
        let mut endpoints = HashMap::new();
        for s in view.list::<pb::Service>() {
            let id = id_of(&*s).to_owned();
            let spec = s.spec.clone().unwrap_or_default();
            let espec = spec.endpoint.as_ref();
            let mut want: Vec<String> = Vec::new();
            if is_vip(espec) {
                if publishes_ingress(espec)
                    && let Some(i) = &ingress
                {
                    want.push(i.clone());
                }
                for att in spec
                    .task
                    .as_ref()
                    .map(|t| t.networks.as_slice())
                    .unwrap_or_default()
                {
                    if let Some(nid) = self.resolve(view, &att.target)
                        && !want.contains(&nid)
                    {
                        want.push(nid);
                    }
                }
            }
            let mut vips = Vec::new();
            let mut held = Vec::new();
            let have = self
                .services
                .get(&id)
                .map(|h| h.held.clone())
                .unwrap_or_default();
            for nid in &want {
                let Some(net) = self.nets.get_mut(nid) else {
                    out.problems.push(format!(
                        "service {id}: network {nid} has no subnet yet, so no virtual IP on it"
                    ));
                    continue;
                };
                let addr = match have.iter().find(|h| &h.network == nid) {
                    Some(h) => h.addr,
                    None => match net.subnet.allocate() {
                        Some(a) => a,
                        None => {
                            out.problems.push(format!(
                                "service {id}: no address left for a virtual IP on network {} ({})",
                                net.name,
                                net.subnet.net()
                            ));
                            continue;
                        }
                    },
                };
                vips.push(pb::VirtualIp {
                    network_id: nid.clone(),
                    addr: ipam::cidr(addr, &net.subnet.net()),
                });
                held.push(Held {
                    network: nid.clone(),
                    addr,
                });
            }
            // VIPs on networks the service left stay taken until a view
            // shows the service without them: this pass's write may not
            // land, and the address must not meanwhile go to a task.
            let mut keep = held;
            for h in have {
                if !keep.contains(&h) {
                    keep.push(h);
                }
            }
            let holding = self.services.entry(id.clone()).or_default();
            holding.held = keep;
            holding.seen = self.generation;

            let old_ports = s
                .endpoint
                .as_ref()
                .map(|e| e.ports.as_slice())
                .unwrap_or_default();
            let mut new_ports = Vec::new();
            for p in espec.map(|e| e.ports.as_slice()).unwrap_or_default() {
                let mut p = p.clone();
                if p.published_port == 0 && p.publish_mode == pb::PublishMode::Ingress as i32 {
                    let before = old_ports.iter().find(|o| {
                        o.target_port == p.target_port
                            && o.protocol == p.protocol
                            && o.publish_mode == p.publish_mode
                            && o.published_port != 0
                    });
                    if let Some(o) = before {
                        p.published_port = o.published_port;
                    } else if let Some(port) = ipam::next_dynamic_port(&ports, p.protocol) {
                        ports.insert((p.protocol, port));
                        p.published_port = port;
                    } else {
                        out.problems.push(format!(
                            "service {id}: no published port left in {}-{} for target port {}",
                            ipam::DYNAMIC_PORTS.start(),
                            ipam::DYNAMIC_PORTS.end(),
                            p.target_port
                        ));
                    }
                }
                new_ports.push(p);
            }
            let endpoint = pb::Endpoint {
                spec: espec.cloned(),
                ports: new_ports,
                virtual_ips: vips,
            };
            let current = s.endpoint.clone().unwrap_or_default();
            if current != endpoint {
                let mut s = (*s).clone();
                s.endpoint = Some(endpoint.clone());
                out.services.push(s);
            }
            endpoints.insert(id, endpoint);
        }
        endpoints
    }

    /// A network ID for a service's or task's attachment target (an ID;
    /// a name is accepted too), if the network exists.
    fn resolve(&self, view: &ReadTx, target: &str) -> Option<String> {
        if self.nets.contains_key(target) || view.get::<pb::Network>(target).is_some() {
            return Some(target.to_owned());
        }
        view.get_by_name::<pb::Network>(target)
            .map(|n| id_of(&*n).to_owned())
    }

    /// A NEW task with its addresses and PENDING, or with a new
    /// `status.err`; `None` when nothing changes.
    fn allocate_task(
        &mut self,
        view: &ReadTx,
        task: &pb::Task,
        endpoints: &HashMap<String, pb::Endpoint>,
        ingress: Option<&str>,
        now: SystemTime,
    ) -> Option<pb::Task> {
        let id = id_of(task).to_owned();
        let service = view.get::<pb::Service>(&task.service_id);
        let service_name = task
            .service_annotations
            .as_ref()
            .map(|a| a.name.clone())
            .unwrap_or_default();
        let endpoint = endpoints
            .get(&task.service_id)
            .cloned()
            .or_else(|| task.endpoint.clone());
        let espec = service
            .as_ref()
            .and_then(|s| s.spec.as_ref())
            .and_then(|s| s.endpoint.as_ref())
            .or_else(|| task.endpoint.as_ref().and_then(|e| e.spec.as_ref()));

        // (network ID, aliases) in order: ingress first, as docker.
        let mut want: Vec<(String, Vec<String>)> = Vec::new();
        let mut missing = None;
        if publishes_ingress(espec) || publishes_host(espec) {
            match ingress {
                Some(n) => want.push((n.to_owned(), Vec::new())),
                None => {
                    missing = Some(
                        "the service publishes ports but the ingress network is missing: create one with `network create --ingress`".to_owned(),
                    );
                }
            }
        }
        for att in task
            .spec
            .as_ref()
            .map(|s| s.networks.as_slice())
            .unwrap_or_default()
        {
            match self.resolve(view, &att.target) {
                Some(nid) if !want.iter().any(|(w, _)| *w == nid) => {
                    let mut aliases = Vec::new();
                    if !service_name.is_empty() {
                        aliases.push(service_name.clone());
                    }
                    for a in &att.aliases {
                        if !aliases.contains(a) {
                            aliases.push(a.clone());
                        }
                    }
                    want.push((nid, aliases));
                }
                Some(_) => {}
                None => {
                    missing.get_or_insert_with(|| {
                        format!(
                            "network {} not found: it was removed; update the service's --network",
                            att.target
                        )
                    });
                }
            }
        }

        let have = self
            .tasks
            .get(&id)
            .map(|h| h.held.clone())
            .unwrap_or_default();
        let mut held = Vec::new();
        let mut attachments = Vec::new();
        let mut failure = missing;
        if failure.is_none() {
            for (nid, aliases) in &want {
                let Some(net) = self.nets.get_mut(nid) else {
                    failure = Some(format!(
                        "network {nid} has no subnet yet: its address pool may be exhausted"
                    ));
                    break;
                };
                let addr = match have.iter().find(|h| &h.network == nid) {
                    Some(h) => Some(h.addr),
                    None => net.subnet.allocate(),
                };
                let Some(addr) = addr else {
                    failure = Some(format!(
                        "no IP address left on network {} ({}): its {} addresses are in use; give the network a larger --subnet or run fewer tasks on it",
                        net.name,
                        net.subnet.net(),
                        net.subnet.usable()
                    ));
                    break;
                };
                held.push(Held {
                    network: nid.clone(),
                    addr,
                });
                attachments.push(pb::NetworkAttachment {
                    network_id: nid.clone(),
                    addresses: vec![ipam::cidr(addr, &net.subnet.net())],
                    aliases: aliases.clone(),
                    driver_attachment_opts: BTreeMap::new(),
                });
            }
        }

        if let Some(err) = failure {
            // All or nothing: give back what this attempt took.
            for h in held.iter().chain(&have) {
                if let Some(n) = self.nets.get_mut(&h.network) {
                    n.subnet.release(h.addr);
                }
            }
            self.tasks.remove(&id);
            if task.status.as_ref().is_some_and(|s| s.err == err) {
                return None;
            }
            let mut t = task.clone();
            let status = t.status.get_or_insert_with(Default::default);
            status.err = err;
            status.timestamp = Some(now.into());
            return Some(t);
        }
        for h in have.iter().filter(|h| !held.contains(h)) {
            if let Some(n) = self.nets.get_mut(&h.network) {
                n.subnet.release(h.addr);
            }
        }
        if !held.is_empty() {
            self.tasks.insert(
                id,
                Holding {
                    held,
                    seen: self.generation,
                },
            );
        } else {
            self.tasks.remove(&id);
        }
        let mut t = task.clone();
        t.networks = attachments;
        if endpoint.is_some() {
            t.endpoint = endpoint;
        }
        t.status = Some(pb::TaskStatus {
            timestamp: Some(now.into()),
            state: pb::TaskState::Pending.into(),
            message: PENDING_MESSAGE.to_owned(),
            ..Default::default()
        });
        Some(t)
    }

    /// The memory as sorted facts, for comparing a rebuilt allocator with
    /// an incremental one.
    #[cfg(test)]
    fn facts(&self) -> Facts {
        let mut nets: Vec<(String, String, u32, u32)> = self
            .nets
            .iter()
            .map(|(id, n)| {
                (
                    id.clone(),
                    n.subnet.net().to_string(),
                    n.vni,
                    n.subnet.free(),
                )
            })
            .collect();
        nets.sort();
        let holders = |m: &HashMap<String, Holding>| {
            let mut v: Vec<(String, Vec<Held>)> = m
                .iter()
                .filter(|(_, h)| !h.held.is_empty())
                .map(|(id, h)| {
                    let mut held = h.held.clone();
                    held.sort();
                    (id.clone(), held)
                })
                .collect();
            v.sort();
            v
        };
        Facts {
            nets,
            tasks: holders(&self.tasks),
            services: holders(&self.services),
        }
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Task,
    Service,
}

#[cfg(test)]
#[derive(Debug, PartialEq, Eq)]
struct Facts {
    nets: Vec<(String, String, u32, u32)>,
    tasks: Vec<(String, Vec<Held>)>,
    services: Vec<(String, Vec<Held>)>,
}
