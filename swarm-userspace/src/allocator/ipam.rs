//! IP address management: the cluster's address pools, the subnets carved
//! from them, one bitmap of addresses per subnet, VXLAN IDs and dynamic
//! published ports. IPv4 only.
//!
//! Pure data structures: no store, no clock. The checks a user-given
//! subnet and gateway must pass live here too, so the control API and the
//! allocator agree on what a valid subnet is.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use swarm_proto::v1 as pb;

use crate::store::defaults;

/// Smallest subnet prefix (largest subnet) a network may have: a /8 is
/// 16M addresses, a 2 MiB bitmap.
pub const MIN_PREFIX: u8 = 8;
/// Largest prefix: a /30 leaves one address besides the gateway.
pub const MAX_PREFIX: u8 = 30;
/// VXLAN network identifiers start here, as docker's overlay driver.
pub const FIRST_VNI: u32 = 4096;
/// Largest VXLAN network identifier (24 bits).
pub const MAX_VNI: u32 = (1 << 24) - 1;
/// Published ports the allocator chooses for ingress ports published
/// without a number (swarmkit's dynamic range).
pub const DYNAMIC_PORTS: std::ops::RangeInclusive<u32> = 30000..=32767;

/// Why a subnet, gateway or pool was refused; the text says what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    #[error("invalid subnet {0:?}: use CIDR notation, e.g. 10.10.0.0/24")]
    BadSubnet(String),
    #[error("IPv6 subnet {0} is not supported: overlay networks are IPv4 only for now")]
    Ipv6(String),
    #[error("subnet {given} is not a network address: did you mean {suggested}?")]
    HostBits { given: String, suggested: String },
    #[error(
        "subnet {0} has a prefix length outside /{MIN_PREFIX} to /{MAX_PREFIX}: use a subnet of 4 to 16777216 addresses"
    )]
    PrefixLength(String),
    #[error("invalid gateway {0:?}: use an IPv4 address, e.g. 10.10.0.1")]
    BadGateway(String),
    #[error("--gateway needs --subnet: the gateway must be an address of the network's subnet")]
    GatewayWithoutSubnet,
    #[error("gateway {gateway} is not a usable address of subnet {subnet}")]
    GatewayOutside { gateway: String, subnet: String },
    #[error("invalid default address pool {0:?}: use IPv4 CIDR notation, e.g. 10.0.0.0/8")]
    BadPool(String),
    #[error(
        "the default address pool mask length /{size} does not fit pool {pool}: use a length between the pool's /{pool_prefix} and /{MAX_PREFIX}"
    )]
    PoolMask {
        pool: String,
        pool_prefix: u8,
        size: u32,
    },
    #[error("default address pools {a} and {b} overlap: give pools that do not")]
    PoolsOverlap { a: String, b: String },
}

/// A user-given subnet: IPv4, a network address, /8 to /30.
pub fn parse_subnet(s: &str) -> Result<Ipv4Net, IpamError> {
    let t = s.trim();
    if t.parse::<ipnet::Ipv6Net>().is_ok() {
        return Err(IpamError::Ipv6(t.to_owned()));
    }
    let net: Ipv4Net = t.parse().map_err(|_| IpamError::BadSubnet(t.to_owned()))?;
    if net.trunc() != net {
        return Err(IpamError::HostBits {
            given: t.to_owned(),
            suggested: net.trunc().to_string(),
        });
    }
    if !(MIN_PREFIX..=MAX_PREFIX).contains(&net.prefix_len()) {
        return Err(IpamError::PrefixLength(t.to_owned()));
    }
    Ok(net)
}

/// A user-given gateway of `subnet`: an address in it that is neither the
/// network nor the broadcast address.
pub fn parse_gateway(s: &str, subnet: &Ipv4Net) -> Result<Ipv4Addr, IpamError> {
    let g: Ipv4Addr = s
        .trim()
        .parse()
        .map_err(|_| IpamError::BadGateway(s.to_owned()))?;
    if !subnet.contains(&g) || g == subnet.network() || g == subnet.broadcast() {
        return Err(IpamError::GatewayOutside {
            gateway: g.to_string(),
            subnet: subnet.to_string(),
        });
    }
    Ok(g)
}

/// The gateway docker picks: the subnet's first address.
#[must_use]
pub fn default_gateway(subnet: &Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()).saturating_add(1))
}

/// The subnet and gateway a network was allocated (its `ipam`), if any.
#[must_use]
pub fn allocated_subnet(n: &pb::Network) -> Option<(Ipv4Net, Ipv4Addr)> {
    let c = n.ipam.as_ref()?.configs.first()?;
    let net = parse_subnet(&c.subnet).ok()?;
    let gw = parse_gateway(&c.gateway, &net).unwrap_or_else(|_| default_gateway(&net));
    Some((net, gw))
}

/// The subnet a network's spec asks for, if any (and valid).
#[must_use]
pub fn requested_subnet(n: &pb::NetworkSpec) -> Option<Ipv4Net> {
    let c = n.ipam.as_ref()?.configs.first()?;
    parse_subnet(&c.subnet).ok()
}

/// The subnet a network holds or will hold: allocated, else asked for.
#[must_use]
pub fn network_subnet(n: &pb::Network) -> Option<Ipv4Net> {
    allocated_subnet(n)
        .map(|(s, _)| s)
        .or_else(|| n.spec.as_ref().and_then(requested_subnet))
}

/// The address part of "10.0.1.5/24" (or of a bare address).
#[must_use]
pub fn parse_cidr_addr(s: &str) -> Option<Ipv4Addr> {
    s.split('/').next()?.parse().ok()
}

/// `addr` with `subnet`'s prefix length, as task and VIP addresses are
/// stored: "10.0.1.5/24".
#[must_use]
pub fn cidr(addr: Ipv4Addr, subnet: &Ipv4Net) -> String {
    format!("{addr}/{}", subnet.prefix_len())
}

/// The cluster's `--default-addr-pool`s and the prefix length of the
/// subnets carved from them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pools {
    pools: Vec<Ipv4Net>,
    size: u8,
}

impl Default for Pools {
    fn default() -> Self {
        Pools {
            pools: vec![Ipv4Net::new(Ipv4Addr::new(10, 0, 0, 0), 8).unwrap_or_default()],
            size: 24,
        }
    }
}

impl Pools {
    /// Checks `swarm init`'s pools and mask length (empty pools and a zero
    /// size mean docker's defaults).
    pub fn parse(pools: &[String], size: u32) -> Result<Pools, IpamError> {
        let size = if size == 0 {
            defaults::DEFAULT_SUBNET_SIZE
        } else {
            size
        };
        let given: Vec<String> = if pools.is_empty() {
            vec![defaults::DEFAULT_ADDRESS_POOL.to_owned()]
        } else {
            pools.to_vec()
        };
        let mut out: Vec<Ipv4Net> = Vec::new();
        for p in &given {
            let net: Ipv4Net = p
                .trim()
                .parse()
                .map_err(|_| IpamError::BadPool(p.clone()))?;
            let net = net.trunc();
            let fits = u8::try_from(size)
                .is_ok_and(|s| s >= net.prefix_len() && (MIN_PREFIX..=MAX_PREFIX).contains(&s));
            if !fits {
                return Err(IpamError::PoolMask {
                    pool: net.to_string(),
                    pool_prefix: net.prefix_len(),
                    size,
                });
            }
            if let Some(o) = out.iter().find(|o| o.contains(&net) || net.contains(*o)) {
                return Err(IpamError::PoolsOverlap {
                    a: o.to_string(),
                    b: net.to_string(),
                });
            }
            out.push(net);
        }
        Ok(Pools {
            pools: out,
            // Checked above to be within MIN_PREFIX..=MAX_PREFIX.
            size: u8::try_from(size).unwrap_or(24),
        })
    }

    /// The cluster's pools; docker's defaults when it has none or they are
    /// invalid (they were checked at `swarm init`).
    #[must_use]
    pub fn of_cluster(c: Option<&pb::Cluster>) -> Pools {
        c.and_then(|c| Pools::parse(&c.default_address_pool, c.subnet_size).ok())
            .unwrap_or_default()
    }

    /// The first subnet of the pools that overlaps nothing in `used`.
    #[must_use]
    pub fn carve(&self, used: &Used) -> Option<Ipv4Net> {
        let step = 1u64 << (32 - u32::from(self.size));
        for pool in &self.pools {
            let end = u64::from(u32::from(pool.broadcast()));
            let mut start = u64::from(u32::from(pool.network()));
            while start + step - 1 <= end {
                let (lo, hi) = (start, start + step - 1);
                match used.overlapping(lo, hi) {
                    None => {
                        let addr = Ipv4Addr::from(u32::try_from(lo).ok()?);
                        return Ipv4Net::new(addr, self.size).ok();
                    }
                    // Skip past the used range, to the next aligned subnet.
                    Some(used_end) => start = (used_end + 1).div_ceil(step) * step,
                }
            }
        }
        None
    }

    /// "10.0.0.0/8 in /24s", for messages.
    #[must_use]
    pub fn describe(&self) -> String {
        let pools: Vec<String> = self.pools.iter().map(ToString::to_string).collect();
        format!("{} in /{}s", pools.join(", "), self.size)
    }
}

/// Address ranges networks hold, merged: for overlap checks and carving.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Used {
    /// start -> end (inclusive), disjoint and not adjacent-merged (CIDR
    /// blocks are nested or disjoint, so merging overlaps is enough).
    ranges: BTreeMap<u64, u64>,
}

impl Used {
    #[must_use]
    pub fn of<'a>(nets: impl IntoIterator<Item = &'a Ipv4Net>) -> Used {
        let mut u = Used::default();
        for n in nets {
            u.insert(n);
        }
        u
    }

    pub fn insert(&mut self, n: &Ipv4Net) {
        let (mut lo, mut hi) = (
            u64::from(u32::from(n.network())),
            u64::from(u32::from(n.broadcast())),
        );
        while let Some(end) = self.overlapping(lo, hi) {
            let start = self.ranges.range(..=hi).next_back().map_or(lo, |(s, _)| *s);
            self.ranges.remove(&start);
            lo = lo.min(start);
            hi = hi.max(end);
        }
        self.ranges.insert(lo, hi);
    }

    /// The end of a range overlapping `lo..=hi`, if any.
    fn overlapping(&self, lo: u64, hi: u64) -> Option<u64> {
        let (_, end) = self.ranges.range(..=hi).next_back()?;
        (*end >= lo).then_some(*end)
    }

    #[must_use]
    pub fn overlaps(&self, n: &Ipv4Net) -> bool {
        self.overlapping(
            u64::from(u32::from(n.network())),
            u64::from(u32::from(n.broadcast())),
        )
        .is_some()
    }
}

/// The addresses of one subnet: a bit per address, set when taken. The
/// network, broadcast and gateway addresses are taken from the start.
/// Allocation is next-fit from where the last one ended, so an address just
/// released is not handed out again at once (stale ARP and DNS entries).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subnet {
    net: Ipv4Net,
    gateway: Ipv4Addr,
    bits: Vec<u64>,
    size: u32,
    taken: u32,
    cursor: u32,
}

impl Subnet {
    /// A subnet of at least a /30 and at most a /8 (checked by
    /// [`parse_subnet`]); others get no usable address.
    #[must_use]
    pub fn new(net: Ipv4Net, gateway: Ipv4Addr) -> Subnet {
        let prefix = net.prefix_len().clamp(MIN_PREFIX, 32);
        let size = 1u32 << (32 - u32::from(prefix));
        let mut s = Subnet {
            net,
            gateway,
            bits: vec![0; size.div_ceil(64) as usize],
            size,
            taken: 0,
            cursor: 1,
        };
        s.set(0);
        s.set(size - 1);
        let _ = s.reserve(gateway);
        s
    }

    #[must_use]
    pub fn net(&self) -> Ipv4Net {
        self.net
    }

    #[must_use]
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }

    /// Addresses still free.
    #[must_use]
    pub fn free(&self) -> u32 {
        self.size - self.taken
    }

    /// Addresses tasks and VIPs can get: all but network, broadcast and
    /// gateway.
    #[must_use]
    pub fn usable(&self) -> u32 {
        self.size.saturating_sub(3)
    }

    fn offset(&self, a: Ipv4Addr) -> Option<u32> {
        let off = u32::from(a).wrapping_sub(u32::from(self.net.network()));
        (off < self.size).then_some(off)
    }

    fn is_set(&self, off: u32) -> bool {
        self.bits[(off / 64) as usize] & (1 << (off % 64)) != 0
    }

    fn set(&mut self, off: u32) {
        if !self.is_set(off) {
            self.bits[(off / 64) as usize] |= 1 << (off % 64);
            self.taken += 1;
        }
    }

    #[must_use]
    pub fn is_taken(&self, a: Ipv4Addr) -> bool {
        self.offset(a).is_none_or(|o| self.is_set(o))
    }

    /// Takes `a`; false if it is outside the subnet or already taken.
    pub fn reserve(&mut self, a: Ipv4Addr) -> bool {
        match self.offset(a) {
            Some(off) if !self.is_set(off) => {
                self.set(off);
                true
            }
            _ => false,
        }
    }

    /// Frees `a` (never the network, broadcast or gateway address).
    pub fn release(&mut self, a: Ipv4Addr) {
        if a == self.gateway {
            return;
        }
        if let Some(off) = self.offset(a).filter(|o| *o != 0 && *o != self.size - 1)
            && self.is_set(off)
        {
            self.bits[(off / 64) as usize] &= !(1 << (off % 64));
            self.taken -= 1;
        }
    }

    /// The next free address after the last one handed out, wrapping.
    pub fn allocate(&mut self) -> Option<Ipv4Addr> {
        if self.taken >= self.size {
            return None;
        }
        let words = self.bits.len();
        let start = self.cursor.min(self.size - 1);
        let first_word = (start / 64) as usize;
        for i in 0..=words {
            let w = (first_word + i) % words;
            let mut word = self.bits[w];
            if i == 0 {
                // Bits before the cursor count as taken on the first visit.
                word |= (1u64 << (start % 64)) - 1;
            }
            if word == u64::MAX {
                continue;
            }
            let off = (w as u32) * 64 + word.trailing_ones();
            if off >= self.size {
                continue;
            }
            self.set(off);
            self.cursor = (off + 1) % self.size;
            return Some(Ipv4Addr::from(u32::from(self.net.network()) + off));
        }
        None
    }
}

/// The smallest VXLAN ID from [`FIRST_VNI`] not in `used`.
#[must_use]
pub fn next_vni(used: &BTreeSet<u32>) -> Option<u32> {
    let mut want = FIRST_VNI;
    for v in used.range(FIRST_VNI..) {
        if *v != want {
            break;
        }
        want += 1;
    }
    (want <= MAX_VNI).then_some(want)
}

/// The smallest dynamic published port of `protocol` not in `used`.
#[must_use]
pub fn next_dynamic_port(used: &BTreeSet<(i32, u32)>, protocol: i32) -> Option<u32> {
    DYNAMIC_PORTS
        .clone()
        .find(|p| !used.contains(&(protocol, *p)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn subnets_are_checked() {
        assert_eq!(parse_subnet("10.1.0.0/16"), Ok(net("10.1.0.0/16")));
        assert!(matches!(
            parse_subnet("10.1.2.3/24"),
            Err(IpamError::HostBits { suggested, .. }) if suggested == "10.1.2.0/24"
        ));
        assert!(matches!(parse_subnet("fd00::/64"), Err(IpamError::Ipv6(_))));
        assert!(matches!(
            parse_subnet("10.0.0.0"),
            Err(IpamError::BadSubnet(_))
        ));
        assert!(matches!(
            parse_subnet("10.0.0.0/31"),
            Err(IpamError::PrefixLength(_))
        ));
        assert!(matches!(
            parse_subnet("0.0.0.0/0"),
            Err(IpamError::PrefixLength(_))
        ));
        let s = net("10.1.0.0/24");
        assert_eq!(
            parse_gateway("10.1.0.254", &s),
            Ok(Ipv4Addr::new(10, 1, 0, 254))
        );
        for bad in ["10.1.0.0", "10.1.0.255", "10.2.0.1"] {
            assert!(matches!(
                parse_gateway(bad, &s),
                Err(IpamError::GatewayOutside { .. })
            ));
        }
        assert!(matches!(
            parse_gateway("x", &s),
            Err(IpamError::BadGateway(_))
        ));
        assert_eq!(default_gateway(&s), Ipv4Addr::new(10, 1, 0, 1));
    }

    #[test]
    fn pools_are_checked() {
        assert_eq!(Pools::parse(&[], 0), Ok(Pools::default()));
        let p = Pools::parse(&["10.20.0.0/16".into()], 26).unwrap();
        assert_eq!(p.describe(), "10.20.0.0/16 in /26s");
        assert!(matches!(
            Pools::parse(&["10.20.0.0/16".into()], 12),
            Err(IpamError::PoolMask { .. })
        ));
        assert!(matches!(
            Pools::parse(&["10.0.0.0/8".into(), "10.20.0.0/16".into()], 24),
            Err(IpamError::PoolsOverlap { .. })
        ));
        assert!(matches!(
            Pools::parse(&["banana".into()], 24),
            Err(IpamError::BadPool(_))
        ));
    }

    #[test]
    fn carving_skips_used_ranges_and_moves_to_the_next_pool() {
        let p = Pools::parse(&["10.0.0.0/22".into(), "192.168.0.0/23".into()], 24).unwrap();
        let mut used = Used::default();
        let mut got = Vec::new();
        while let Some(s) = p.carve(&used) {
            used.insert(&s);
            got.push(s.to_string());
        }
        assert_eq!(
            got,
            [
                "10.0.0.0/24",
                "10.0.1.0/24",
                "10.0.2.0/24",
                "10.0.3.0/24",
                "192.168.0.0/24",
                "192.168.1.0/24"
            ]
        );
        // A user subnet larger than the pool's subnets is skipped whole; a
        // smaller one takes its whole /24.
        let used = Used::of(&[net("10.0.0.0/23"), net("10.0.2.128/25")]);
        assert_eq!(p.carve(&used), Some(net("10.0.3.0/24")));
        assert!(used.overlaps(&net("10.0.1.0/24")));
        assert!(!used.overlaps(&net("10.0.3.0/24")));
        // Nested ranges merge.
        let used = Used::of(&[net("10.0.1.0/24"), net("10.0.0.0/16")]);
        assert_eq!(used.ranges.len(), 1);
    }

    #[test]
    fn subnet_addresses_skip_network_broadcast_and_gateway() {
        let mut s = Subnet::new(net("10.0.1.0/29"), Ipv4Addr::new(10, 0, 1, 1));
        assert_eq!(s.usable(), 5);
        let got: Vec<String> = std::iter::from_fn(|| s.allocate())
            .map(|a| a.to_string())
            .collect();
        assert_eq!(
            got,
            ["10.0.1.2", "10.0.1.3", "10.0.1.4", "10.0.1.5", "10.0.1.6"]
        );
        assert_eq!(s.free(), 0);
        s.release(Ipv4Addr::new(10, 0, 1, 3));
        s.release(Ipv4Addr::new(10, 0, 1, 1));
        s.release(Ipv4Addr::new(10, 0, 1, 7));
        assert_eq!(s.free(), 1);
        assert_eq!(s.allocate(), Some(Ipv4Addr::new(10, 0, 1, 3)));
        assert_eq!(s.allocate(), None);
    }

    #[test]
    fn released_addresses_are_not_reused_at_once() {
        let mut s = Subnet::new(net("10.0.1.0/24"), Ipv4Addr::new(10, 0, 1, 1));
        let a = s.allocate().unwrap();
        s.release(a);
        assert_ne!(s.allocate(), Some(a));
        // A gateway other than .1 leaves .1 free.
        let mut s = Subnet::new(net("10.0.1.0/24"), Ipv4Addr::new(10, 0, 1, 254));
        assert_eq!(s.allocate(), Some(Ipv4Addr::new(10, 0, 1, 1)));
        assert!(s.is_taken(Ipv4Addr::new(10, 0, 1, 254)));
        assert!(!s.reserve(Ipv4Addr::new(10, 0, 2, 1)));
    }

    #[test]
    fn vnis_and_dynamic_ports_take_the_smallest_free() {
        assert_eq!(next_vni(&BTreeSet::new()), Some(4096));
        assert_eq!(next_vni(&[4096, 4097, 4099].into()), Some(4098));
        let used: BTreeSet<(i32, u32)> = [(0, 30000), (1, 30001)].into();
        assert_eq!(next_dynamic_port(&used, 0), Some(30001));
        assert_eq!(next_dynamic_port(&used, 1), Some(30000));
    }
}
