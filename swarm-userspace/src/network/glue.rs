//! The network agent's seams bound to the real things: [`Overlay`] on the
//! node's eBPF data plane, [`Names`] on the embedded DNS server, and the
//! DNS table derived from the node's [`NetView`].
use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::Ipv4Net;
use swarm_proto::v1 as pb;

use super::dns::{DnsServer, DnsTable, ServiceEndpoint, ServiceRecord, TaskRecord};
use super::view::is_live;
use super::{Names, NetView, Overlay};
use crate::api::server::SharedDataplane;
use crate::dataplane::LocalEndpoint;

/// [`Overlay`] on the node's data plane; without one (it failed to load),
/// every call says why.
pub struct DataplaneOverlay {
    dp: Option<SharedDataplane>,
    missing: String,
}

impl DataplaneOverlay {
    pub fn new(dp: Option<SharedDataplane>, missing: impl Into<String>) -> Self {
        DataplaneOverlay {
            dp,
            missing: missing.into(),
        }
    }

    fn with<T>(
        &self,
        f: impl FnOnce(
            &mut dyn crate::dataplane::Dataplane,
        ) -> Result<T, crate::dataplane::DataplaneError>,
    ) -> Result<T, String> {
        let dp = self
            .dp
            .as_ref()
            .ok_or_else(|| format!("this node has no data plane: {}", self.missing))?;
        let mut g = dp.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        f(g.as_mut()).map_err(|e| e.to_string())
    }
}

impl Overlay for DataplaneOverlay {
    fn start(&self, vxlan_port: u16) -> Result<u32, String> {
        self.with(|d| d.overlay_start(vxlan_port))
            .map(|i| i.container_mtu)
    }

    fn set_network(&self, vni: u32, subnet: Ipv4Net, gateway: Ipv4Addr) -> Result<(), String> {
        self.with(|d| d.set_overlay_network(vni, subnet, gateway))
    }

    fn remove_network(&self, vni: u32) {
        if let Err(e) = self.with(|d| d.remove_overlay_network(vni)) {
            tracing::warn!(vni, error = %e, "removing an overlay network failed");
        }
    }

    fn set_local(
        &self,
        vni: u32,
        addr: Ipv4Addr,
        host_ifindex: u32,
        mac: [u8; 6],
    ) -> Result<(), String> {
        self.with(|d| {
            d.set_local_endpoint(LocalEndpoint {
                vni,
                addr,
                host_ifindex,
                container_mac: mac,
            })
        })
    }

    fn set_remote(&self, vni: u32, addr: Ipv4Addr, node: Ipv4Addr) -> Result<(), String> {
        self.with(|d| d.set_remote_endpoint(vni, addr, node))
    }

    fn remove_endpoint(&self, addr: Ipv4Addr) {
        if let Err(e) = self.with(|d| d.remove_endpoint(addr)) {
            tracing::warn!(%addr, error = %e, "removing an overlay endpoint failed");
        }
    }

    fn set_service(&self, frontend: crate::dataplane::ServiceFrontend) -> Result<(), String> {
        self.with(|d| d.set_service(frontend))
    }

    fn set_backends(&self, id: &str, backends: &[crate::dataplane::Backend]) -> Result<(), String> {
        self.with(|d| d.set_backends(id, backends))
    }

    fn remove_service(&self, id: &str) {
        if let Err(e) = self.with(|d| d.remove_service(id)) {
            tracing::warn!(service = %id, error = %e, "removing a service frontend failed");
        }
    }

    fn mesh_start(&self, interface: &str, node_addr: Ipv4Addr) -> Result<(), String> {
        self.with(|d| d.mesh_start(interface, node_addr))
    }

    fn ct_gc(&self) {
        if self.dp.is_none() {
            return;
        }
        match self.with(|d| d.ct_gc()) {
            Ok(r) if r.expired > 0 => {
                tracing::debug!(
                    expired = r.expired,
                    entries = r.entries,
                    "connection table swept"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "sweeping the connection table failed"),
        }
    }

    fn adoption_done(&self) {
        if self.dp.is_none() {
            return;
        }
        match self.with(|d| d.adoption_done()) {
            Ok(r) => tracing::info!(report = ?r, "data plane adoption done"),
            Err(e) => tracing::warn!(error = %e, "finishing the data plane's adoption failed"),
        }
    }
}

/// The cluster names a node's tasks may resolve: services on the networks
/// the view holds (VIP or dnsrr), and running tasks.
pub fn dns_table(view: &NetView) -> DnsTable {
    let mut services = Vec::new();
    for s in view.services.values() {
        for att in &s.networks {
            if !view.networks.contains_key(&att.target) {
                continue;
            }
            let endpoint = if s.mode == pb::EndpointMode::Dnsrr as i32 {
                ServiceEndpoint::Dnsrr
            } else {
                let vip = s
                    .virtual_ips
                    .iter()
                    .find(|v| v.network_id == att.target)
                    .and_then(|v| crate::allocator::ipam::parse_cidr_addr(&v.addr));
                match vip {
                    Some(a) => ServiceEndpoint::Vip(a),
                    // No VIP yet: not resolvable by name until it has one.
                    None => continue,
                }
            };
            services.push(ServiceRecord {
                service_id: s.service_id.clone(),
                name: s.name.clone(),
                network_id: att.target.clone(),
                aliases: att.aliases.clone(),
                endpoint,
            });
        }
    }
    let tasks = view
        .peers
        .values()
        .filter(|p| is_live(p) && p.state == pb::TaskState::Running as i32)
        .filter_map(|p| {
            Some(TaskRecord {
                task_id: p.task_id.clone(),
                service_id: p.service_id.clone(),
                name: p.task_name.clone(),
                network_id: p.network_id.clone(),
                addr: crate::allocator::ipam::parse_cidr_addr(&p.addr)?,
                aliases: p.aliases.clone(),
            })
        })
        .collect();
    let names = view.networks.iter().filter_map(|(id, n)| {
        let name = n.spec.as_ref()?.annotations.as_ref()?.name.clone();
        Some((id.clone(), name))
    });
    DnsTable::new(services, tasks).with_network_names(names)
}

/// [`Names`] on the embedded DNS server.
pub struct EmbeddedDns(pub DnsServer);

#[async_trait::async_trait]
impl Names for EmbeddedDns {
    fn set_view(&self, view: &NetView) {
        self.0.set_table(dns_table(view));
    }

    async fn attach(
        &self,
        task_id: &str,
        netns: &Path,
        networks: Vec<String>,
    ) -> Result<(), String> {
        self.0
            .attach(task_id, netns, networks)
            .await
            .map_err(|e| e.to_string())
    }

    fn detach(&self, task_id: &str) {
        self.0.detach(task_id);
    }
}
