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

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain `#[repr(C)]` data with explicit padding and no pointers;
    // every bit pattern is a valid value.
    unsafe impl aya::Pod for super::CounterKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PacketCounter {}
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
