//! Overlay networks as the data plane sees them: which networks (VNI,
//! subnet, gateway) and which endpoints (local veth or remote node) this
//! node programs, checked before anything reaches the kernel.
//!
//! Owns the bookkeeping and its rules ([`OverlayBook`]: pure, no I/O), the
//! types of the overlay part of the [`Dataplane`](super::Dataplane) API and
//! the MAC convention shared with the node side ([`container_mac`]). Never
//! creates namespaces or veths (the node side does) and never decides
//! which tasks belong where (the allocator and dispatcher do).
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::Serialize;

use super::{Counter, DataplaneError};

/// Name of the node's collect-metadata VXLAN device.
pub const DEFAULT_VXLAN_DEVICE: &str = "swarm-vx";
/// Docker's default `--data-path-port`.
pub const DEFAULT_VXLAN_PORT: u16 = 4789;
/// Outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14) headers:
/// what a container's MTU gives up to the underlay's.
pub const VXLAN_OVERHEAD: u32 = 50;
/// Used when the node has no default route to read the underlay MTU from.
pub const FALLBACK_UNDERLAY_MTU: u32 = 1500;
/// VXLAN network identifiers are 24 bits.
pub const MAX_VNI: u32 = (1 << 24) - 1;

/// The MAC a container gets on an overlay network: `02:42` and its IPv4
/// address (docker's convention), so both sides of a veth agree without
/// telling each other.
#[must_use]
pub fn container_mac(addr: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = addr.octets();
    [0x02, 0x42, a, b, c, d]
}

/// The node's overlay device, as [`overlay_start`](super::Dataplane::overlay_start)
/// found or created it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OverlayInfo {
    /// The collect-metadata VXLAN device.
    pub device: String,
    pub ifindex: u32,
    /// Its UDP destination port (`--data-path-port`).
    pub port: u16,
    /// MTU of the underlay (the default route's device), also the VXLAN
    /// device's.
    pub underlay_mtu: u32,
    /// What container interfaces on overlay networks must use:
    /// underlay − [`VXLAN_OVERHEAD`].
    pub container_mtu: u32,
}

/// A task's attachment to an overlay network on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalEndpoint {
    pub vni: u32,
    /// The container's address on the network.
    pub addr: Ipv4Addr,
    /// Host-side veth of the attachment (in the node's namespace).
    pub host_ifindex: u32,
    /// MAC of the container-side veth (normally [`container_mac`]).
    pub container_mac: [u8; 6],
}

/// What the overlay did, for status and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct OverlayStatus {
    /// `None` until the overlay is started.
    pub device: Option<OverlayInfo>,
    pub networks: usize,
    pub local_endpoints: usize,
    pub remote_endpoints: usize,
    /// Frames handled, by action (`local_forward`, `encapsulated`,
    /// `decapsulated`, `arp_answered`, `passed_to_host`).
    pub actions: BTreeMap<&'static str, Counter>,
    /// Frames dropped, by reason (`isolation`, `unknown_endpoint`, …).
    pub drops: BTreeMap<&'static str, Counter>,
}

/// One overlay network on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Network {
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
}

/// Where an endpoint runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    Local { ifindex: u32, mac: [u8; 6] },
    Remote { node: Ipv4Addr },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub vni: u32,
    pub place: Place,
}

/// The networks and endpoints this node has programmed. Every change is
/// checked here first (`check_*`), applied to the kernel by the caller,
/// then recorded (`record_*`), so a refused or failed change leaves both
/// sides as they were.
#[derive(Clone, Debug, Default)]
pub struct OverlayBook {
    networks: BTreeMap<u32, Network>,
    endpoints: BTreeMap<Ipv4Addr, Endpoint>,
}

fn invalid(what: impl Into<String>) -> DataplaneError {
    DataplaneError::InvalidOverlay(what.into())
}

impl OverlayBook {
    pub fn network(&self, vni: u32) -> Option<&Network> {
        self.networks.get(&vni)
    }

    pub fn endpoint(&self, addr: Ipv4Addr) -> Option<&Endpoint> {
        self.endpoints.get(&addr)
    }

    pub fn networks(&self) -> impl Iterator<Item = (u32, &Network)> {
        self.networks.iter().map(|(v, n)| (*v, n))
    }

    /// Local and remote endpoint counts.
    pub fn endpoint_counts(&self) -> (usize, usize) {
        let local = self
            .endpoints
            .values()
            .filter(|e| matches!(e.place, Place::Local { .. }))
            .count();
        (local, self.endpoints.len() - local)
    }

    /// Endpoints of network `vni`.
    pub fn endpoints_of(&self, vni: u32) -> Vec<(Ipv4Addr, Endpoint)> {
        self.endpoints
            .iter()
            .filter(|(_, e)| e.vni == vni)
            .map(|(a, e)| (*a, *e))
            .collect()
    }

    /// Checks a network before it is programmed. Returns the subnet it
    /// replaces, if the VNI was known with another one.
    pub fn check_network(
        &self,
        vni: u32,
        subnet: Ipv4Net,
        gateway: Ipv4Addr,
    ) -> Result<Option<Ipv4Net>, DataplaneError> {
        if vni == 0 || vni > MAX_VNI {
            return Err(invalid(format!(
                "VXLAN ID {vni} is out of range (1 to {MAX_VNI})"
            )));
        }
        let subnet = subnet.trunc();
        if !subnet.contains(&gateway) {
            return Err(invalid(format!(
                "gateway {gateway} of network {vni} is outside its subnet {subnet}"
            )));
        }
        for (other, n) in &self.networks {
            if *other != vni && (n.subnet.contains(&subnet) || subnet.contains(&n.subnet)) {
                return Err(invalid(format!(
                    "subnet {subnet} of network {vni} overlaps {} of network {other}; remove that network first",
                    n.subnet
                )));
            }
        }
        Ok(self
            .networks
            .get(&vni)
            .map(|n| n.subnet)
            .filter(|old| *old != subnet))
    }

    pub fn record_network(&mut self, vni: u32, subnet: Ipv4Net, gateway: Ipv4Addr) {
        self.networks.insert(
            vni,
            Network {
                subnet: subnet.trunc(),
                gateway,
            },
        );
    }

    /// Forgets network `vni` and its endpoints; returns them (the caller
    /// removes them from the kernel first).
    pub fn record_network_removed(&mut self, vni: u32) -> Option<Network> {
        self.endpoints.retain(|_, e| e.vni != vni);
        self.networks.remove(&vni)
    }

    fn check_member(&self, vni: u32, addr: Ipv4Addr) -> Result<(), DataplaneError> {
        let Some(n) = self.networks.get(&vni) else {
            return Err(invalid(format!(
                "network {vni} is not set on this node; call set_overlay_network first"
            )));
        };
        if !n.subnet.contains(&addr) {
            return Err(invalid(format!(
                "address {addr} is outside subnet {} of network {vni}",
                n.subnet
            )));
        }
        if addr == n.gateway || addr == n.subnet.network() || addr == n.subnet.broadcast() {
            return Err(invalid(format!(
                "address {addr} is the gateway, network or broadcast address of network {vni}"
            )));
        }
        Ok(())
    }

    /// Checks a local endpoint. Returns the veth that served `addr` before
    /// (to detach) if it was another one.
    pub fn check_local(&self, ep: &LocalEndpoint) -> Result<Option<u32>, DataplaneError> {
        self.check_member(ep.vni, ep.addr)?;
        if ep.host_ifindex == 0 {
            return Err(invalid(format!("endpoint {}: host ifindex 0", ep.addr)));
        }
        if ep.container_mac[0] & 1 == 1 {
            return Err(invalid(format!(
                "endpoint {}: container MAC is a multicast address",
                ep.addr
            )));
        }
        if let Some((other, _)) = self.endpoints.iter().find(|(a, e)| {
            **a != ep.addr
                && matches!(e.place, Place::Local { ifindex, .. } if ifindex == ep.host_ifindex)
        }) {
            return Err(invalid(format!(
                "veth ifindex {} already serves endpoint {other}; remove that endpoint first",
                ep.host_ifindex
            )));
        }
        Ok(self
            .previous_veth(ep.addr)
            .filter(|i| *i != ep.host_ifindex))
    }

    /// The host veth that served `addr`, if it was local.
    pub fn previous_veth(&self, addr: Ipv4Addr) -> Option<u32> {
        match self.endpoints.get(&addr)?.place {
            Place::Local { ifindex, .. } => Some(ifindex),
            Place::Remote { .. } => None,
        }
    }

    /// Checks a remote endpoint. Returns the veth that served `addr` before
    /// (the task ran here), to detach.
    pub fn check_remote(
        &self,
        vni: u32,
        addr: Ipv4Addr,
        node: Ipv4Addr,
    ) -> Result<Option<u32>, DataplaneError> {
        self.check_member(vni, addr)?;
        if node.is_unspecified() || node.is_multicast() || node.is_broadcast() {
            return Err(invalid(format!(
                "endpoint {addr}: {node} is not a node's unicast address"
            )));
        }
        Ok(self.previous_veth(addr))
    }

    pub fn record_endpoint(&mut self, addr: Ipv4Addr, ep: Endpoint) {
        self.endpoints.insert(addr, ep);
    }

    pub fn record_endpoint_removed(&mut self, addr: Ipv4Addr) -> Option<Endpoint> {
        self.endpoints.remove(&addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn book() -> OverlayBook {
        let mut b = OverlayBook::default();
        b.check_network(4097, net("10.0.1.0/24"), Ipv4Addr::new(10, 0, 1, 1))
            .unwrap();
        b.record_network(4097, net("10.0.1.0/24"), Ipv4Addr::new(10, 0, 1, 1));
        b
    }

    fn local(addr: [u8; 4], ifindex: u32) -> LocalEndpoint {
        let addr = Ipv4Addr::from(addr);
        LocalEndpoint {
            vni: 4097,
            addr,
            host_ifindex: ifindex,
            container_mac: container_mac(addr),
        }
    }

    #[test]
    fn container_mac_is_02_42_and_the_address() {
        assert_eq!(
            container_mac(Ipv4Addr::new(10, 0, 1, 5)),
            [0x02, 0x42, 10, 0, 1, 5]
        );
    }

    #[test]
    fn networks_must_not_overlap_and_gateways_must_be_inside() {
        let b = book();
        assert!(
            b.check_network(4098, net("10.0.1.128/25"), Ipv4Addr::new(10, 0, 1, 129))
                .is_err()
        );
        assert!(
            b.check_network(4098, net("10.0.0.0/16"), Ipv4Addr::new(10, 0, 0, 1))
                .is_err()
        );
        assert!(
            b.check_network(4098, net("10.0.2.0/24"), Ipv4Addr::new(10, 0, 3, 1))
                .is_err()
        );
        assert!(
            b.check_network(0, net("10.0.2.0/24"), Ipv4Addr::new(10, 0, 2, 1))
                .is_err()
        );
        assert!(
            b.check_network(1 << 24, net("10.0.2.0/24"), Ipv4Addr::new(10, 0, 2, 1))
                .is_err()
        );
        assert_eq!(
            b.check_network(4098, net("10.0.2.0/24"), Ipv4Addr::new(10, 0, 2, 1))
                .unwrap(),
            None
        );
        // The same network again replaces nothing; a new subnet replaces
        // the old one.
        assert_eq!(
            b.check_network(4097, net("10.0.1.0/24"), Ipv4Addr::new(10, 0, 1, 1))
                .unwrap(),
            None
        );
        assert_eq!(
            b.check_network(4097, net("10.0.9.0/24"), Ipv4Addr::new(10, 0, 9, 1))
                .unwrap(),
            Some(net("10.0.1.0/24"))
        );
    }

    #[test]
    fn endpoints_need_their_network_and_a_host_address_in_it() {
        let b = book();
        assert!(b.check_local(&local([10, 0, 1, 5], 7)).is_ok());
        let mut other_net = local([10, 0, 1, 5], 7);
        other_net.vni = 4098;
        assert!(b.check_local(&other_net).is_err());
        assert!(b.check_local(&local([10, 0, 2, 5], 7)).is_err());
        assert!(b.check_local(&local([10, 0, 1, 1], 7)).is_err(), "gateway");
        assert!(b.check_local(&local([10, 0, 1, 255], 7)).is_err());
        assert!(b.check_local(&local([10, 0, 1, 5], 0)).is_err());
        assert!(
            b.check_remote(4097, Ipv4Addr::new(10, 0, 1, 6), Ipv4Addr::UNSPECIFIED)
                .is_err()
        );
        assert_eq!(
            b.check_remote(
                4097,
                Ipv4Addr::new(10, 0, 1, 6),
                Ipv4Addr::new(192, 0, 2, 1)
            )
            .unwrap(),
            None
        );
    }

    #[test]
    fn a_moved_endpoint_names_the_veth_to_detach() {
        let mut b = book();
        let ep = local([10, 0, 1, 5], 7);
        b.record_endpoint(
            ep.addr,
            Endpoint {
                vni: 4097,
                place: Place::Local {
                    ifindex: 7,
                    mac: ep.container_mac,
                },
            },
        );
        assert_eq!(b.check_local(&ep).unwrap(), None, "same veth: update only");
        assert_eq!(b.check_local(&local([10, 0, 1, 5], 9)).unwrap(), Some(7));
        assert_eq!(
            b.check_remote(4097, ep.addr, Ipv4Addr::new(192, 0, 2, 1))
                .unwrap(),
            Some(7)
        );
        // One veth serves one endpoint.
        assert!(b.check_local(&local([10, 0, 1, 6], 7)).is_err());
        assert_eq!(b.endpoint_counts(), (1, 0));
        b.record_network_removed(4097);
        assert_eq!(b.endpoint_counts(), (0, 0));
        assert!(b.network(4097).is_none());
    }
}
