//! Map keys and values shared by the eBPF programs and the agent.
//!
//! Every type that crosses the kernel boundary is defined here exactly once,
//! `#[repr(C)]` with explicit padding so both sides agree on the layout. This
//! crate must stay `no_std` and dependency-free on the eBPF side: no logic
//! beyond constants and plain data.
#![no_std]

/// Name of the per-CPU map of packet counters (see [`CounterKey`]).
pub const COUNTERS_MAP: &str = "SWARM_COUNTERS";
/// Program name of the XDP ingress counter, as exported in the object.
pub const XDP_INGRESS_PROG: &str = "swarm_xdp_ingress";
/// Program name of the TC egress counter, as exported in the object.
pub const TC_EGRESS_PROG: &str = "swarm_tc_egress";
/// Capacity of [`COUNTERS_MAP`]: interfaces × directions × classes with room
/// to spare. Full maps drop new keys, never old ones.
pub const COUNTERS_MAX_ENTRIES: u32 = 4096;

/// Which way a packet crossed the interface.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    /// Received on the interface (XDP).
    Ingress = 0,
    /// Sent from the interface (TC egress).
    Egress = 1,
}

impl Direction {
    pub const ALL: [Direction; 2] = [Direction::Ingress, Direction::Egress];

    pub const fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }

    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Direction::Ingress),
            1 => Some(Direction::Egress),
            _ => None,
        }
    }
}

/// Coarse traffic class of a packet, decided from its L2/L3 headers.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TrafficClass {
    Ipv4Tcp = 0,
    Ipv4Udp = 1,
    Ipv4Icmp = 2,
    Ipv4Other = 3,
    Ipv6 = 4,
    Arp = 5,
    Other = 6,
    /// Too short to carry the headers it claims (counted, then passed on so
    /// the kernel's own accounting sees it too).
    Malformed = 7,
}

impl TrafficClass {
    pub const ALL: [TrafficClass; 8] = [
        TrafficClass::Ipv4Tcp,
        TrafficClass::Ipv4Udp,
        TrafficClass::Ipv4Icmp,
        TrafficClass::Ipv4Other,
        TrafficClass::Ipv6,
        TrafficClass::Arp,
        TrafficClass::Other,
        TrafficClass::Malformed,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            TrafficClass::Ipv4Tcp => "ipv4_tcp",
            TrafficClass::Ipv4Udp => "ipv4_udp",
            TrafficClass::Ipv4Icmp => "ipv4_icmp",
            TrafficClass::Ipv4Other => "ipv4_other",
            TrafficClass::Ipv6 => "ipv6",
            TrafficClass::Arp => "arp",
            TrafficClass::Other => "other",
            TrafficClass::Malformed => "malformed",
        }
    }

    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(TrafficClass::Ipv4Tcp),
            1 => Some(TrafficClass::Ipv4Udp),
            2 => Some(TrafficClass::Ipv4Icmp),
            3 => Some(TrafficClass::Ipv4Other),
            4 => Some(TrafficClass::Ipv6),
            5 => Some(TrafficClass::Arp),
            6 => Some(TrafficClass::Other),
            7 => Some(TrafficClass::Malformed),
            _ => None,
        }
    }
}

/// Key of [`COUNTERS_MAP`]: one entry per interface, direction and class.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CounterKey {
    pub ifindex: u32,
    /// A [`Direction`] as `u8`.
    pub direction: u8,
    /// A [`TrafficClass`] as `u8`.
    pub class: u8,
    /// Explicit padding: the kernel hashes every byte of the key.
    pub _pad: [u8; 2],
}

impl CounterKey {
    pub const fn new(ifindex: u32, direction: Direction, class: TrafficClass) -> Self {
        CounterKey {
            ifindex,
            direction: direction as u8,
            class: class as u8,
            _pad: [0; 2],
        }
    }
}

/// Value of [`COUNTERS_MAP`], one per CPU; userspace sums the CPUs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketCounter {
    pub packets: u64,
    pub bytes: u64,
}

// ---------------------------------------------------------------------------
// Overlay networks (VXLAN, filled from maps; see swarm-ebpf's `overlay`).
//
// Addresses are IPv4 octets in network order (`[u8; 4]`, as on the wire), so
// the programs compare them with packet bytes without swapping and the LPM
// trie matches prefixes bit by bit.

/// Hash map of every overlay endpoint this node knows: [`Ipv4Key`] →
/// [`EndpointValue`].
pub const OVERLAY_ENDPOINTS_MAP: &str = "SWARM_OVL_ENDPOINTS";
/// Hash map of the host-side veths of local endpoints: ifindex (`u32`) →
/// [`IfaceValue`].
pub const OVERLAY_IFACES_MAP: &str = "SWARM_OVL_IFACES";
/// LPM trie of overlay subnets: `Key<[u8; 4]>` → [`SubnetValue`].
pub const OVERLAY_SUBNETS_MAP: &str = "SWARM_OVL_SUBNETS";
/// One-entry array: the node's overlay settings ([`OverlayConfig`]).
pub const OVERLAY_CONFIG_MAP: &str = "SWARM_OVL_CONFIG";
/// Per-CPU array of [`PacketCounter`]s indexed by [`OverlayCounter`].
pub const OVERLAY_COUNTERS_MAP: &str = "SWARM_OVL_COUNTERS";
/// TC ingress program of every host-side veth (traffic leaving a container).
pub const OVERLAY_VETH_PROG: &str = "swarm_ovl_veth_ingress";
/// TC ingress program of the collect-metadata VXLAN device (decapsulated
/// frames from other nodes).
pub const OVERLAY_VXLAN_PROG: &str = "swarm_ovl_vxlan_ingress";

/// Capacity of [`OVERLAY_ENDPOINTS_MAP`]: tasks on all overlay networks this
/// node takes part in (docker's default /24s hold 254 each).
pub const OVERLAY_ENDPOINTS_MAX: u32 = 65536;
/// Capacity of [`OVERLAY_IFACES_MAP`]: local endpoints.
pub const OVERLAY_IFACES_MAX: u32 = 4096;
/// Capacity of [`OVERLAY_SUBNETS_MAP`]: overlay networks.
pub const OVERLAY_SUBNETS_MAX: u32 = 4096;

/// Key of [`OVERLAY_ENDPOINTS_MAP`]: an endpoint's overlay address.
pub type Ipv4Key = [u8; 4];

/// Where one overlay address lives.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointValue {
    /// VXLAN network identifier of the endpoint's network.
    pub vni: u32,
    /// Underlay address of the node running it; all zero if it runs here.
    pub node_ip: [u8; 4],
    /// Host-side veth of a local endpoint (0 for a remote one).
    pub ifindex: u32,
    /// The container's MAC (local endpoints: destination of delivered
    /// frames).
    pub mac: [u8; 6],
    /// MAC of the host-side veth (local endpoints: source of delivered
    /// frames, the address the container's ARP cache holds for every peer).
    pub host_mac: [u8; 6],
}

impl EndpointValue {
    pub const fn is_local(&self) -> bool {
        u32::from_ne_bytes(self.node_ip) == 0
    }
}

/// Which network and endpoint a host-side veth belongs to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfaceValue {
    pub vni: u32,
    /// The container's own overlay address.
    pub addr: [u8; 4],
    /// The container's MAC.
    pub mac: [u8; 6],
    /// This veth's own MAC: ARP answers carry it (see the veth program).
    pub host_mac: [u8; 6],
}

/// An overlay subnet's network.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SubnetValue {
    pub vni: u32,
    /// The network's gateway address (answered to ARP, never an endpoint).
    pub gateway: [u8; 4],
}

/// The node's overlay settings, entry 0 of [`OVERLAY_CONFIG_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OverlayConfig {
    /// The collect-metadata VXLAN device; 0 until the overlay is started
    /// (then frames to remote endpoints are dropped, counted).
    pub vxlan_ifindex: u32,
    pub _pad: u32,
}

/// Index of [`OVERLAY_COUNTERS_MAP`]: what the overlay did with a frame.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OverlayCounter {
    /// Delivered to a container on this node, from a container on this node.
    LocalForward = 0,
    /// Sent to another node through the VXLAN device.
    Encapsulated = 1,
    /// Received from another node and delivered to a local container.
    Decapsulated = 2,
    /// ARP request answered locally.
    ArpAnswered = 3,
    /// Not for an overlay subnet: left to the host stack.
    PassedToHost = 4,
    /// Dropped: destination on another overlay network (or a VNI mismatch).
    DropIsolation = 5,
    /// Dropped: no such endpoint in the network's subnet.
    DropUnknownEndpoint = 6,
    /// Dropped: a frame on the VXLAN device without tunnel metadata.
    DropNoTunnelKey = 7,
    /// Dropped: ARP this node does not answer (other networks, unknown
    /// targets, replies, gratuitous ARP, ARP arriving through the tunnel).
    DropArp = 8,
    /// Dropped: the veth is not (or no longer) a known endpoint.
    DropUnknownInterface = 9,
    /// Dropped: too short for the headers it claims.
    DropMalformed = 10,
    /// Dropped: a remote destination before the VXLAN device exists.
    DropNoTunnelDevice = 11,
    /// Dropped: a helper (store, tunnel key, redirect) failed.
    DropHelperFailed = 12,
    /// Dropped: a protocol the overlay does not carry (IPv6, …) on its way
    /// through the tunnel.
    DropUnsupported = 13,
}

impl OverlayCounter {
    /// Number of counters: the size of [`OVERLAY_COUNTERS_MAP`].
    pub const COUNT: u32 = 14;

    pub const ALL: [OverlayCounter; Self::COUNT as usize] = [
        OverlayCounter::LocalForward,
        OverlayCounter::Encapsulated,
        OverlayCounter::Decapsulated,
        OverlayCounter::ArpAnswered,
        OverlayCounter::PassedToHost,
        OverlayCounter::DropIsolation,
        OverlayCounter::DropUnknownEndpoint,
        OverlayCounter::DropNoTunnelKey,
        OverlayCounter::DropArp,
        OverlayCounter::DropUnknownInterface,
        OverlayCounter::DropMalformed,
        OverlayCounter::DropNoTunnelDevice,
        OverlayCounter::DropHelperFailed,
        OverlayCounter::DropUnsupported,
    ];

    /// Whether this counts dropped frames (the rest count what was done).
    pub const fn is_drop(self) -> bool {
        (self as u32) >= (OverlayCounter::DropIsolation as u32)
    }

    /// Metric-friendly name: the action, or the drop reason.
    pub const fn as_str(self) -> &'static str {
        match self {
            OverlayCounter::LocalForward => "local_forward",
            OverlayCounter::Encapsulated => "encapsulated",
            OverlayCounter::Decapsulated => "decapsulated",
            OverlayCounter::ArpAnswered => "arp_answered",
            OverlayCounter::PassedToHost => "passed_to_host",
            OverlayCounter::DropIsolation => "isolation",
            OverlayCounter::DropUnknownEndpoint => "unknown_endpoint",
            OverlayCounter::DropNoTunnelKey => "no_tunnel_key",
            OverlayCounter::DropArp => "arp_unanswered",
            OverlayCounter::DropUnknownInterface => "unknown_interface",
            OverlayCounter::DropMalformed => "malformed",
            OverlayCounter::DropNoTunnelDevice => "no_tunnel_device",
            OverlayCounter::DropHelperFailed => "helper_failed",
            OverlayCounter::DropUnsupported => "unsupported_protocol",
        }
    }
}

// ---------------------------------------------------------------------------
// Service load balancing (VIPs) and the routing mesh (published ports); see
// swarm-ebpf's `lb`.
//
// Ports are in network order (`[u8; 2]`, as on the wire), like addresses.

/// Hash map of service frontends: [`FrontendKey`] → [`FrontendValue`].
pub const LB_FRONTENDS_MAP: &str = "SWARM_LB_FRONTENDS";
/// Array of Maglev lookup tables, [`LB_MAGLEV_SIZE`] entries per service
/// slot: entry `slot * LB_MAGLEV_SIZE + i` is a backend address (`[u8; 4]`,
/// all zero when the service has no backend taking new flows).
pub const LB_MAGLEV_MAP: &str = "SWARM_LB_MAGLEV";
/// Hash map of every VIP on this node: address (`[u8; 4]`) → VNI (`u32`);
/// the overlay answers ARP for them.
pub const LB_VIPS_MAP: &str = "SWARM_LB_VIPS";
/// LRU hash map of connection tracking entries: [`CtKey`] → [`CtValue`].
pub const LB_CT_MAP: &str = "SWARM_LB_CT";
/// One-entry array: the routing mesh's settings ([`MeshConfig`]).
pub const LB_CONFIG_MAP: &str = "SWARM_LB_CONFIG";
/// Per-CPU array of [`PacketCounter`]s indexed by [`LbCounter`].
pub const LB_COUNTERS_MAP: &str = "SWARM_LB_COUNTERS";
/// Per-CPU array of [`PacketCounter`]s per service slot and direction:
/// index `slot * 2 + direction` (0 towards backends, 1 replies).
pub const LB_SERVICE_COUNTERS_MAP: &str = "SWARM_LB_SVC_COUNTERS";
/// TC ingress program of the node's external interface (routing mesh).
pub const LB_MESH_PROG: &str = "swarm_lb_mesh_ingress";

/// Maglev table size per service: a prime well above the backends a service
/// has (Maglev's spread stays within a few percent for M ≥ 100 × backends).
pub const LB_MAGLEV_SIZE: u32 = 4099;
/// Service slots (service × network frontends): [`LB_MAGLEV_MAP`] holds
/// `LB_MAX_SERVICES * LB_MAGLEV_SIZE` addresses (8 MiB).
pub const LB_MAX_SERVICES: u32 = 512;
/// Capacity of [`LB_FRONTENDS_MAP`]: VIP ports and published ports.
pub const LB_FRONTENDS_MAX: u32 = 8192;
/// Capacity of [`LB_CT_MAP`]: two entries per balanced connection.
pub const LB_CT_MAX: u32 = 131_072;

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// Key of [`LB_FRONTENDS_MAP`]: a VIP's port, or (address all zero) a port
/// published on the node's own address through the routing mesh.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FrontendKey {
    pub addr: [u8; 4],
    pub port: [u8; 2],
    pub proto: u8,
    pub _pad: u8,
}

/// `flags` of [`FrontendValue`]: the frontend is a published (mesh) port.
pub const FRONTEND_MESH: u16 = 1;

/// A frontend's service.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrontendValue {
    /// Service slot: which Maglev table.
    pub slot: u32,
    /// The backends' port (network order).
    pub target_port: [u8; 2],
    pub flags: u16,
    /// Network of the VIP and backends: only containers on it reach a VIP.
    pub vni: u32,
}

/// A connection as seen in one direction (addresses and ports as on the
/// wire).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub proto: u8,
    pub _pad: [u8; 3],
}

impl CtKey {
    /// The same connection seen from the other end.
    pub const fn reversed(&self) -> CtKey {
        CtKey {
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
            proto: self.proto,
            _pad: [0; 3],
        }
    }
}

/// What a [`CtValue`] tells the programs to do.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CtKind {
    /// Container → VIP: destination becomes the backend (`nat`).
    VipForward = 1,
    /// Backend → container: source becomes the VIP (`nat`) on delivery.
    VipReply = 2,
    /// Mesh client → node address: destination becomes the backend.
    MeshForward = 3,
    /// Backend → mesh client, on the ingress node: source becomes the node
    /// address and published port (`nat`), out the external interface.
    MeshReply = 4,
    /// Backend → mesh client, on the backend's node when the client came in
    /// through another node: tunnel it back to that node (`node`, `vni`).
    MeshTunnelBack = 5,
}

impl CtKind {
    pub const fn from_u8(v: u8) -> Option<CtKind> {
        match v {
            1 => Some(CtKind::VipForward),
            2 => Some(CtKind::VipReply),
            3 => Some(CtKind::MeshForward),
            4 => Some(CtKind::MeshReply),
            5 => Some(CtKind::MeshTunnelBack),
            _ => None,
        }
    }

    /// Whether the entry's key is the connection's original direction.
    pub const fn is_forward(self) -> bool {
        matches!(self, CtKind::VipForward | CtKind::MeshForward)
    }
}

/// [`CtValue::flags`]: TCP FIN seen from the connection's initiator.
pub const CT_FIN_ORIG: u8 = 1;
/// TCP FIN seen from the responder.
pub const CT_FIN_REPLY: u8 = 2;
/// TCP RST seen either way.
pub const CT_RST: u8 = 4;
/// A packet of the reply direction has been seen.
pub const CT_REPLIED: u8 = 8;
/// The programs refresh `last_seen` at most this often (ns): fewer writes
/// to shared entries, and far below every timeout.
pub const CT_REFRESH_NS: u64 = 1_000_000_000;

/// A tracked connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtValue {
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) of the last packet; 0 for a
    /// reply entry no packet has hit yet.
    pub last_seen_ns: u64,
    /// A [`CtKind`].
    pub kind: u8,
    /// `CT_*` bits.
    pub flags: u8,
    /// Translated port (network order): see [`CtKind`].
    pub nat_port: [u8; 2],
    /// Translated address: see [`CtKind`].
    pub nat_addr: [u8; 4],
    /// [`CtKind::MeshTunnelBack`]: the ingress node's underlay address.
    pub node: [u8; 4],
    /// [`CtKind::MeshTunnelBack`]: the network to tunnel on.
    pub vni: u32,
    /// Service slot (counters).
    pub slot: u32,
    pub _pad: u32,
}

/// The routing mesh's settings, entry 0 of [`LB_CONFIG_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MeshConfig {
    /// The node's address on its external interface; all zero until the
    /// mesh is started.
    pub node_addr: [u8; 4],
    pub ext_ifindex: u32,
}

/// Index of [`LB_COUNTERS_MAP`]: what the load balancer did with a packet.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LbCounter {
    /// A new connection got a backend (from a container to a VIP).
    VipNewFlow = 0,
    /// A packet to a VIP translated to its connection's backend.
    VipForward = 1,
    /// A reply's source translated back to the VIP.
    VipReply = 2,
    /// A new connection through the routing mesh got a backend.
    MeshNewFlow = 3,
    /// A mesh packet translated and sent to its backend.
    MeshForward = 4,
    /// A mesh reply translated back and sent out the external interface.
    MeshReply = 5,
    /// A mesh reply tunnelled back to the node the client came in through.
    MeshTunnelBack = 6,
    /// A tracked entry was missing mid-connection (expired or evicted: map
    /// pressure); the packet was balanced as a new flow.
    CtMissMidFlow = 7,
    /// A tracked connection's backend is gone (its task was removed): the
    /// packet was balanced afresh, so a datagram flow moves on and a TCP
    /// client gets a reset instead of silence.
    CtBackendGone = 8,
    /// Dropped: the service has no backend taking new connections.
    DropNoBackend = 9,
    /// Dropped: a VIP of another network.
    DropIsolation = 10,
    /// Dropped: the connection tracking table refused the entry.
    DropCtFull = 11,
    /// Dropped: a checksum or header rewrite failed.
    DropRewrite = 12,
    /// Dropped: no route or neighbour for a mesh reply.
    DropNoRoute = 13,
    /// Dropped: the chosen backend is not an overlay endpoint here.
    DropUnknownBackend = 14,
}

impl LbCounter {
    pub const COUNT: u32 = 15;

    pub const ALL: [LbCounter; Self::COUNT as usize] = [
        LbCounter::VipNewFlow,
        LbCounter::VipForward,
        LbCounter::VipReply,
        LbCounter::MeshNewFlow,
        LbCounter::MeshForward,
        LbCounter::MeshReply,
        LbCounter::MeshTunnelBack,
        LbCounter::CtMissMidFlow,
        LbCounter::CtBackendGone,
        LbCounter::DropNoBackend,
        LbCounter::DropIsolation,
        LbCounter::DropCtFull,
        LbCounter::DropRewrite,
        LbCounter::DropNoRoute,
        LbCounter::DropUnknownBackend,
    ];

    pub const fn is_drop(self) -> bool {
        (self as u32) >= (LbCounter::DropNoBackend as u32)
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            LbCounter::VipNewFlow => "vip_new_flow",
            LbCounter::VipForward => "vip_forward",
            LbCounter::VipReply => "vip_reply",
            LbCounter::MeshNewFlow => "mesh_new_flow",
            LbCounter::MeshForward => "mesh_forward",
            LbCounter::MeshReply => "mesh_reply",
            LbCounter::MeshTunnelBack => "mesh_tunnel_back",
            LbCounter::CtMissMidFlow => "ct_miss_mid_flow",
            LbCounter::CtBackendGone => "ct_backend_gone",
            LbCounter::DropNoBackend => "no_backend",
            LbCounter::DropIsolation => "isolation",
            LbCounter::DropCtFull => "ct_full",
            LbCounter::DropRewrite => "rewrite_failed",
            LbCounter::DropNoRoute => "no_route",
            LbCounter::DropUnknownBackend => "unknown_backend",
        }
    }
}

/// Bumped when a pinned map's key or value changes meaning without
/// changing size (a size change alone already gives new pinned maps): the
/// agent then starts with empty maps instead of misreading old ones.
pub const MAP_LAYOUT_VERSION: u32 = 1;

/// Every map of the object, for pinning.
pub const ALL_MAPS: [&str; 13] = [
    COUNTERS_MAP,
    OVERLAY_ENDPOINTS_MAP,
    OVERLAY_IFACES_MAP,
    OVERLAY_SUBNETS_MAP,
    OVERLAY_CONFIG_MAP,
    OVERLAY_COUNTERS_MAP,
    LB_FRONTENDS_MAP,
    LB_VIPS_MAP,
    LB_MAGLEV_MAP,
    LB_CT_MAP,
    LB_CONFIG_MAP,
    LB_COUNTERS_MAP,
    LB_SERVICE_COUNTERS_MAP,
];

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain `#[repr(C)]` data with explicit padding and no pointers;
    // every bit pattern is a valid value.
    unsafe impl aya::Pod for super::CounterKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PacketCounter {}
    // SAFETY: as above (all fields are integers or byte arrays, no implicit
    // padding: see `overlay_layouts_are_fixed`).
    unsafe impl aya::Pod for super::EndpointValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::IfaceValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SubnetValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::OverlayConfig {}
    // SAFETY: as above (see `lb_layouts_are_fixed`).
    unsafe impl aya::Pod for super::FrontendKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FrontendValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::CtKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::CtValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::MeshConfig {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_are_fixed() {
        assert_eq!(core::mem::size_of::<CounterKey>(), 8);
        assert_eq!(core::mem::align_of::<CounterKey>(), 4);
        assert_eq!(core::mem::size_of::<PacketCounter>(), 16);
    }

    #[test]
    fn overlay_layouts_are_fixed() {
        // Sizes equal the sum of the fields: no implicit padding the kernel
        // would hash or copy uninitialised.
        assert_eq!(core::mem::size_of::<EndpointValue>(), 24);
        assert_eq!(core::mem::size_of::<IfaceValue>(), 20);
        assert_eq!(core::mem::size_of::<SubnetValue>(), 8);
        assert_eq!(core::mem::size_of::<OverlayConfig>(), 8);
    }

    #[test]
    fn lb_layouts_are_fixed() {
        assert_eq!(core::mem::size_of::<FrontendKey>(), 8);
        assert_eq!(core::mem::size_of::<FrontendValue>(), 12);
        assert_eq!(core::mem::size_of::<CtKey>(), 16);
        assert_eq!(core::mem::size_of::<CtValue>(), 32);
        assert_eq!(core::mem::size_of::<MeshConfig>(), 8);
        for (i, c) in LbCounter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
        }
        for k in 1..=5 {
            assert_eq!(CtKind::from_u8(k).map(|k| k as u8), Some(k));
        }
    }

    #[test]
    fn overlay_counters_are_dense() {
        for (i, c) in OverlayCounter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
        }
        assert!(!OverlayCounter::PassedToHost.is_drop());
        assert!(OverlayCounter::DropIsolation.is_drop());
    }

    #[test]
    fn enums_round_trip() {
        for c in TrafficClass::ALL {
            assert_eq!(TrafficClass::from_u8(c as u8), Some(c));
        }
        for d in Direction::ALL {
            assert_eq!(Direction::from_u8(d as u8), Some(d));
        }
        assert_eq!(TrafficClass::from_u8(200), None);
    }
}
