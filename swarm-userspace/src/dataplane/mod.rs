//! The node's packet path, behind the [`Dataplane`] seam.
//!
//! Owns what is attached to which interface and the counters it keeps,
//! and the overlay data path ([`overlay`]: one collect-metadata VXLAN
//! device per node, TC programs on it and on every task's host veth).
//! Implementations: [`ebpf::EbpfDataplane`] (XDP + TC programs loaded with
//! aya). An IPVS fallback will implement the same trait. This module must
//! never decide policy (which services exist, where tasks run): callers tell
//! it what to program.
#[cfg(test)]
pub mod conformance;
pub mod ebpf;
pub mod lb;
#[cfg(test)]
mod lb_tests;
pub mod netlink;
pub mod overlay;
#[cfg(test)]
mod overlay_tests;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

pub use lb::{Backend, LbStatus, PortMapping, Proto, ServiceFrontend};
pub use overlay::{LocalEndpoint, OverlayInfo, OverlayStatus, container_mac};

use serde::Serialize;

/// How to attach XDP programs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpMode {
    /// Native (driver) mode where the driver supports it, generic otherwise.
    #[default]
    Auto,
    /// Driver mode only; attaching fails if the driver lacks XDP support.
    Native,
    /// Generic (skb) mode: works on every interface, slower.
    Generic,
}

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error(
        "no network interface named {0:?} in this node's network namespace; check --dataplane-interface"
    )]
    NoSuchInterface(String),
    #[error(
        "loading the eBPF object failed: {0}; the kernel needs BPF and BTF support, and the daemon needs root (CAP_BPF, CAP_NET_ADMIN)"
    )]
    Load(String),
    #[error("attaching {program} to {interface} failed: {reason}")]
    Attach {
        program: &'static str,
        interface: String,
        reason: String,
    },
    #[error("interface {0:?} is already attached")]
    AlreadyAttached(String),
    #[error("reading map {map} failed: {reason}")]
    MapRead { map: &'static str, reason: String },
    #[error("updating map {map} failed: {reason}")]
    MapWrite { map: &'static str, reason: String },
    #[error("netlink: {op} failed: {reason}")]
    Netlink { op: &'static str, reason: String },
    #[error(
        "no network interface with index {0} in this node's network namespace; was the veth deleted, or created in another namespace?"
    )]
    NoSuchIfindex(u32),
    #[error("overlay request refused: {0}")]
    InvalidOverlay(String),
    #[error("service request refused: {0}")]
    InvalidService(String),
    #[error(
        "pinning at {path} failed: {reason}; the data root must be on a filesystem where a bpffs can be mounted (the daemon needs root)"
    )]
    Pin { path: String, reason: String },
}

/// One program on one interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AttachedProgram {
    pub name: String,
    pub kind: String,
    pub attach_mode: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AttachedInterface {
    pub name: String,
    pub ifindex: u32,
    pub programs: Vec<AttachedProgram>,
}

/// Counter identity: interface name, direction, traffic class.
pub type CounterId = (String, &'static str, &'static str);

/// Packets and bytes, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// How full one BPF map is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MapUsage {
    pub name: String,
    pub entries: u64,
    pub capacity: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DataplaneStatus {
    pub backend: String,
    pub interfaces: Vec<AttachedInterface>,
    pub counters: BTreeMap<CounterId, Counter>,
    pub maps: Vec<MapUsage>,
    /// The overlay networks' device and counters.
    pub overlay: OverlayStatus,
    /// Service load balancing and the routing mesh.
    pub lb: LbStatus,
}

/// What a connection tracking sweep did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CtGcReport {
    /// Entries before the sweep (two per balanced connection).
    pub entries: u64,
    pub expired: u64,
    pub capacity: u32,
}

/// What [`Dataplane::adoption_done`] removed: state a previous agent left
/// that this one did not claim again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AdoptionReport {
    pub endpoints: usize,
    pub networks: usize,
    pub frontends: usize,
    pub links: usize,
}

/// A node's packet path. Calls are quick (map updates and reads); callers
/// may hold a lock across them.
pub trait Dataplane: Send + Sync {
    /// Short backend name: "ebpf", "ipvs".
    fn backend(&self) -> &'static str;
    /// Attaches the node's programs to `interface`.
    fn attach(&mut self, interface: &str) -> Result<(), DataplaneError>;
    /// Detaches everything from `interface`; unknown interfaces are a no-op.
    fn detach(&mut self, interface: &str);
    /// What is attached, and the counters.
    fn status(&self) -> Result<DataplaneStatus, DataplaneError>;

    /// Finds or creates the node's collect-metadata VXLAN device on UDP
    /// `vxlan_port` and attaches the decapsulation program to it.
    /// Idempotent; a second call with another port replaces the device.
    fn overlay_start(&mut self, vxlan_port: u16) -> Result<OverlayInfo, DataplaneError>;
    /// Adds or updates overlay network `vni` (24 bits) with its subnet and
    /// gateway. Subnets of different networks must not overlap.
    fn set_overlay_network(
        &mut self,
        vni: u32,
        subnet: ipnet::Ipv4Net,
        gateway: Ipv4Addr,
    ) -> Result<(), DataplaneError>;
    /// Removes network `vni` and every endpoint on it (detaching from local
    /// veths). Unknown networks are a no-op.
    fn remove_overlay_network(&mut self, vni: u32) -> Result<(), DataplaneError>;
    /// Adds or updates a task attachment on this node and attaches the
    /// veth program to its host veth (in the calling thread's network
    /// namespace). The network must be set first.
    fn set_local_endpoint(&mut self, ep: LocalEndpoint) -> Result<(), DataplaneError>;
    /// Adds or updates an endpoint running on the node with underlay
    /// address `node`. Replaces a local endpoint of the same address (the
    /// task moved), detaching from its veth.
    fn set_remote_endpoint(
        &mut self,
        vni: u32,
        addr: Ipv4Addr,
        node: Ipv4Addr,
    ) -> Result<(), DataplaneError>;
    /// Removes an endpoint; detaches from its veth if it was local.
    /// Unknown addresses are a no-op.
    fn remove_endpoint(&mut self, addr: Ipv4Addr) -> Result<(), DataplaneError>;

    /// Adds or updates a service frontend (one service on one network: its
    /// VIP ports and, on the ingress network, its published ports). Its
    /// backends are kept across updates.
    fn set_service(&mut self, frontend: ServiceFrontend) -> Result<(), DataplaneError>;
    /// Replaces a frontend's backends (addresses on its network; each must
    /// also be an overlay endpoint). New connections spread over the ones
    /// not draining by consistent hashing; established connections keep
    /// their backend while it exists.
    fn set_backends(&mut self, id: &str, backends: &[Backend]) -> Result<(), DataplaneError>;
    /// Removes a frontend; unknown ids are a no-op. Its established
    /// connections stop with it.
    fn remove_service(&mut self, id: &str) -> Result<(), DataplaneError>;
    /// Starts the routing mesh: published ports answer on `node_addr`
    /// arriving at `interface` (the node's external interface). Idempotent;
    /// another interface or address moves it.
    fn mesh_start(&mut self, interface: &str, node_addr: Ipv4Addr) -> Result<(), DataplaneError>;
    /// Removes expired connection tracking entries (see
    /// [`lb::ct_timeout`]); call every few seconds.
    fn ct_gc(&mut self) -> Result<CtGcReport, DataplaneError>;
    /// After a restart that adopted a previous agent's state, once every
    /// network, endpoint and service has been set again: removes what was
    /// not. A no-op when nothing was adopted.
    fn adoption_done(&mut self) -> Result<AdoptionReport, DataplaneError>;
}
