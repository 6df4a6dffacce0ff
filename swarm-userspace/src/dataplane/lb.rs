//! Service load balancing as the data plane sees it: frontends (a VIP's
//! ports on one overlay network, ports published through the routing
//! mesh), their backends, the Maglev tables that spread new connections,
//! and the connection tracking timeouts.
//!
//! Owns the pure parts: checks before anything reaches the kernel
//! ([`LbBook`]), the Maglev permutation ([`maglev_table`]) and which
//! tracked connections have expired ([`ct_sweep`]). No I/O here. Never
//! decides which services or tasks exist (the allocator and the node's
//! network agent do).
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;

use serde::Serialize;
use sha2::{Digest, Sha256};
use swarm_ebpf_common::{
    CT_FIN_ORIG, CT_FIN_REPLY, CT_REPLIED, CT_RST, CtKey, CtKind, CtValue, IPPROTO_TCP,
    IPPROTO_UDP, LB_MAGLEV_SIZE, LB_MAX_SERVICES,
};

use super::{Counter, DataplaneError, overlay::MAX_VNI};

/// Transport protocol of a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub const fn number(self) -> u8 {
        match self {
            Proto::Tcp => IPPROTO_TCP,
            Proto::Udp => IPPROTO_UDP,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// `port` of a frontend goes to `target` on the backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct PortMapping {
    pub proto: Proto,
    pub port: u16,
    pub target: u16,
}

/// One service on one overlay network (a VIP-mode service attached to
/// three networks is three frontends; the caller picks the ids).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServiceFrontend {
    /// The caller's key, e.g. `<service id>/<network id>`.
    pub id: String,
    /// Network of the VIP and of the backends' addresses.
    pub vni: u32,
    /// The service's VIP on this network (`None`: no VIP, e.g. dnsrr).
    pub vip: Option<Ipv4Addr>,
    /// Ports answered on the VIP.
    pub ports: Vec<PortMapping>,
    /// Ports published on every node's address through the routing mesh
    /// (only on the frontend of the ingress network).
    pub published: Vec<PortMapping>,
}

/// A task of the service: its address on the frontend's network. Where it
/// runs comes from the overlay's endpoints (set it there too).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Backend {
    pub addr: Ipv4Addr,
    /// Takes no new connections; established ones continue.
    pub draining: bool,
}

/// A frontend's key as the kernel sees it: VIP or (unspecified) the node's
/// own address for a published port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FrontKey {
    pub addr: Ipv4Addr,
    pub proto: Proto,
    pub port: u16,
}

impl ServiceFrontend {
    /// Every kernel frontend of this service, with its target port.
    pub fn keys(&self) -> Vec<(FrontKey, u16, bool)> {
        let mut out = Vec::new();
        if let Some(vip) = self.vip {
            for p in &self.ports {
                out.push((
                    FrontKey {
                        addr: vip,
                        proto: p.proto,
                        port: p.port,
                    },
                    p.target,
                    false,
                ));
            }
        }
        for p in &self.published {
            out.push((
                FrontKey {
                    addr: Ipv4Addr::UNSPECIFIED,
                    proto: p.proto,
                    port: p.port,
                },
                p.target,
                true,
            ));
        }
        out
    }
}

/// What the balancer did, for status and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LbStatus {
    pub services: usize,
    pub backends: usize,
    /// The routing mesh's interface and node address, once started.
    pub mesh: Option<(String, Ipv4Addr)>,
    /// Tracked connection entries at the last GC sweep (two per
    /// connection), and the table's capacity (LRU eviction beyond it).
    pub ct_entries: u64,
    pub ct_capacity: u32,
    /// Entries the last sweeps removed as expired, in total.
    pub ct_expired_total: u64,
    /// Packets by action (`vip_forward`, `mesh_reply`, …).
    pub actions: BTreeMap<&'static str, Counter>,
    /// Packets dropped, by reason.
    pub drops: BTreeMap<&'static str, Counter>,
    /// Per frontend id: (towards backends, replies).
    pub per_service: BTreeMap<String, (Counter, Counter)>,
}

/// One frontend as recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceEntry {
    pub frontend: ServiceFrontend,
    pub slot: u32,
    pub backends: Vec<Backend>,
}

/// The frontends this node has programmed, checked like the overlay's
/// book: `check_*`, write the kernel, `record_*`.
#[derive(Clone, Debug, Default)]
pub struct LbBook {
    services: BTreeMap<String, ServiceEntry>,
    /// Slots a previous agent used (adopted maps) and nobody claimed yet:
    /// not handed out, so its tables stay intact until swept.
    reserved: BTreeSet<u32>,
}

fn invalid(what: impl Into<String>) -> DataplaneError {
    DataplaneError::InvalidService(what.into())
}

impl LbBook {
    pub fn service(&self, id: &str) -> Option<&ServiceEntry> {
        self.services.get(id)
    }

    pub fn services(&self) -> impl Iterator<Item = &ServiceEntry> {
        self.services.values()
    }

    pub fn reserve_slots(&mut self, slots: impl IntoIterator<Item = u32>) {
        self.reserved.extend(slots);
    }

    pub fn clear_reserved(&mut self) -> BTreeSet<u32> {
        std::mem::take(&mut self.reserved)
    }

    /// Checks a frontend. Returns its slot (kept when the id is known;
    /// otherwise `preferred` if free – the slot an adopted kernel entry of
    /// the same VIP already uses – or the lowest free one) and the kernel
    /// keys the update removes.
    pub fn check_service(
        &self,
        fe: &ServiceFrontend,
        preferred: Option<u32>,
    ) -> Result<(u32, Vec<FrontKey>), DataplaneError> {
        if fe.id.is_empty() {
            return Err(invalid("a service frontend needs a non-empty id"));
        }
        if fe.vni == 0 || fe.vni > MAX_VNI {
            return Err(invalid(format!(
                "service {}: VXLAN ID {} is out of range (1 to {MAX_VNI})",
                fe.id, fe.vni
            )));
        }
        if let Some(vip) = fe.vip
            && (vip.is_unspecified() || vip.is_broadcast() || vip.is_multicast())
        {
            return Err(invalid(format!("service {}: {vip} cannot be a VIP", fe.id)));
        }
        if fe.vip.is_none() && !fe.ports.is_empty() {
            return Err(invalid(format!(
                "service {}: VIP ports given without a VIP",
                fe.id
            )));
        }
        for (list, what) in [(&fe.ports, "port"), (&fe.published, "published port")] {
            let mut seen = BTreeSet::new();
            for p in list {
                // VIP port 0 → 0: every port of the VIP, kept (docker's
                // VIPs balance any port).
                let any_port = what == "port" && p.port == 0 && p.target == 0;
                if !any_port && (p.port == 0 || p.target == 0) {
                    return Err(invalid(format!(
                        "service {}: {what} {}:{}/{} uses port 0",
                        fe.id,
                        p.port,
                        p.target,
                        p.proto.as_str()
                    )));
                }
                if !seen.insert((p.proto, p.port)) {
                    return Err(invalid(format!(
                        "service {}: {what} {}/{} is given twice",
                        fe.id,
                        p.port,
                        p.proto.as_str()
                    )));
                }
            }
        }
        if let Some(vip) = fe.vip
            && let Some(other) = self
                .services
                .values()
                .find(|s| s.frontend.id != fe.id && s.frontend.vip == Some(vip))
        {
            return Err(invalid(format!(
                "service {}: VIP {vip} already belongs to service {}",
                fe.id, other.frontend.id
            )));
        }
        let mine: BTreeSet<FrontKey> = fe.keys().into_iter().map(|(k, _, _)| k).collect();
        for other in self.services.values().filter(|s| s.frontend.id != fe.id) {
            for (k, _, mesh) in other.frontend.keys() {
                if mine.contains(&k) {
                    let what = if mesh {
                        format!("port {}/{} is already published", k.port, k.proto.as_str())
                    } else {
                        format!(
                            "{}:{}/{} is already a VIP port",
                            k.addr,
                            k.port,
                            k.proto.as_str()
                        )
                    };
                    return Err(invalid(format!(
                        "service {}: {what} by service {}; remove it there first",
                        fe.id, other.frontend.id
                    )));
                }
            }
        }
        let removed = self
            .services
            .get(&fe.id)
            .map(|s| {
                s.frontend
                    .keys()
                    .into_iter()
                    .map(|(k, _, _)| k)
                    .filter(|k| !mine.contains(k))
                    .collect()
            })
            .unwrap_or_default();
        if let Some(s) = self.services.get(&fe.id) {
            return Ok((s.slot, removed));
        }
        let used: BTreeSet<u32> = self.services.values().map(|s| s.slot).collect();
        let slot = preferred
            .filter(|p| *p < LB_MAX_SERVICES && !used.contains(p))
            .or_else(|| {
                (0..LB_MAX_SERVICES).find(|s| !used.contains(s) && !self.reserved.contains(s))
            })
            .ok_or_else(|| {
                invalid(format!(
                    "service {}: this node already balances {LB_MAX_SERVICES} service frontends, the most it can",
                    fe.id
                ))
            })?;
        Ok((slot, removed))
    }

    pub fn record_service(&mut self, fe: ServiceFrontend, slot: u32) {
        self.reserved.remove(&slot);
        let backends = self
            .services
            .remove(&fe.id)
            .map(|s| s.backends)
            .unwrap_or_default();
        self.services.insert(
            fe.id.clone(),
            ServiceEntry {
                frontend: fe,
                slot,
                backends,
            },
        );
    }

    /// Checks a backend set; returns the service's slot.
    pub fn check_backends(&self, id: &str, backends: &[Backend]) -> Result<u32, DataplaneError> {
        let Some(s) = self.services.get(id) else {
            return Err(invalid(format!(
                "no service frontend {id:?} on this node; set the service before its backends"
            )));
        };
        let mut seen = BTreeSet::new();
        for b in backends {
            if b.addr.is_unspecified() {
                return Err(invalid(format!("service {id}: backend 0.0.0.0")));
            }
            if !seen.insert(b.addr) {
                return Err(invalid(format!(
                    "service {id}: backend {} is given twice",
                    b.addr
                )));
            }
        }
        Ok(s.slot)
    }

    pub fn record_backends(&mut self, id: &str, mut backends: Vec<Backend>) {
        backends.sort();
        if let Some(s) = self.services.get_mut(id) {
            s.backends = backends;
        }
    }

    pub fn record_removed(&mut self, id: &str) -> Option<ServiceEntry> {
        self.services.remove(id)
    }
}

fn name_hash(addr: Ipv4Addr, salt: &[u8]) -> u64 {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(addr.octets());
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_le_bytes(b)
}

/// The Maglev lookup table (Eisenbud et al., NSDI 2016) of a backend set:
/// `size` entries (a prime), each one of `backends`. Every backend gets
/// ⌊size/n⌋ or ⌈size/n⌉ entries, and adding or removing one backend moves
/// little more than the share that must move. Deterministic in the set
/// (order does not matter), so every node and every restart computes the
/// same table. Empty for no backends.
pub fn maglev_table(backends: &[Ipv4Addr], size: u32) -> Vec<Ipv4Addr> {
    let mut backends: Vec<Ipv4Addr> = backends.to_vec();
    backends.sort();
    backends.dedup();
    if backends.is_empty() || size == 0 {
        return Vec::new();
    }
    let m = u64::from(size);
    let perms: Vec<(u64, u64)> = backends
        .iter()
        .map(|b| {
            let offset = name_hash(*b, b"swarm-maglev-offset") % m;
            let skip = name_hash(*b, b"swarm-maglev-skip") % (m - 1).max(1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; backends.len()];
    let mut table: Vec<Option<usize>> = vec![None; size as usize];
    let mut filled = 0usize;
    'fill: loop {
        for (i, (offset, skip)) in perms.iter().enumerate() {
            let mut c = (offset + next[i] * skip) % m;
            while table[c as usize].is_some() {
                next[i] += 1;
                c = (offset + next[i] * skip) % m;
            }
            table[c as usize] = Some(i);
            next[i] += 1;
            filled += 1;
            if filled == size as usize {
                break 'fill;
            }
        }
    }
    table
        .into_iter()
        .map(|e| e.map_or(Ipv4Addr::UNSPECIFIED, |i| backends[i]))
        .collect()
}

/// The table the kernel gets for a backend set: draining backends take no
/// new connections.
pub fn service_table(backends: &[Backend]) -> Vec<Ipv4Addr> {
    let active: Vec<Ipv4Addr> = backends
        .iter()
        .filter(|b| !b.draining)
        .map(|b| b.addr)
        .collect();
    maglev_table(&active, LB_MAGLEV_SIZE)
}

const SEC: u64 = 1_000_000_000;
/// nf_conntrack's `tcp_timeout_established`: 5 days.
pub const CT_TCP_ESTABLISHED_NS: u64 = 5 * 24 * 3600 * SEC;
/// Unanswered TCP (`tcp_timeout_syn_sent`): 120 s.
pub const CT_TCP_SYN_NS: u64 = 120 * SEC;
/// FIN both ways (`tcp_timeout_time_wait`): 120 s.
pub const CT_TCP_CLOSED_NS: u64 = 120 * SEC;
/// After a RST (`tcp_timeout_close`): 10 s.
pub const CT_TCP_RST_NS: u64 = 10 * SEC;
/// UDP without a reply (`udp_timeout`): 30 s.
pub const CT_UDP_NS: u64 = 30 * SEC;
/// UDP with replies (`udp_timeout_stream`): 120 s.
pub const CT_UDP_STREAM_NS: u64 = 120 * SEC;

/// How long a connection in this state lives after its last packet: never
/// shorter than the kernel's own conntrack.
pub const fn ct_timeout(proto: u8, flags: u8) -> u64 {
    if proto == IPPROTO_TCP {
        if flags & CT_RST != 0 {
            CT_TCP_RST_NS
        } else if flags & (CT_FIN_ORIG | CT_FIN_REPLY) == CT_FIN_ORIG | CT_FIN_REPLY {
            CT_TCP_CLOSED_NS
        } else if flags & CT_REPLIED == 0 {
            CT_TCP_SYN_NS
        } else {
            CT_TCP_ESTABLISHED_NS
        }
    } else if flags & CT_REPLIED != 0 {
        CT_UDP_STREAM_NS
    } else {
        CT_UDP_NS
    }
}

/// The reply-direction key of a forward entry.
pub fn reply_key(key: &CtKey, v: &CtValue) -> CtKey {
    CtKey {
        src: v.nat_addr,
        dst: key.src,
        sport: v.nat_port,
        dport: key.sport,
        proto: key.proto,
        _pad: [0; 3],
    }
}

/// Which entries of a connection tracking table have expired at `now_ns`
/// (CLOCK_MONOTONIC, as the programs stamp them). A forward entry and its
/// reply entry are judged together (last packet either way, flags of both)
/// and go together; an entry without its partner is judged alone.
pub fn ct_sweep(entries: &[(CtKey, CtValue)], now_ns: u64) -> Vec<CtKey> {
    let by_key: HashMap<CtKey, &CtValue> = entries.iter().map(|(k, v)| (*k, v)).collect();
    let mut partnered: BTreeSet<[u8; 16]> = BTreeSet::new();
    let mut out = Vec::new();
    let expired =
        |proto: u8, flags: u8, last: u64| now_ns.saturating_sub(last) > ct_timeout(proto, flags);
    for (k, v) in entries {
        let Some(kind) = CtKind::from_u8(v.kind) else {
            out.push(*k);
            continue;
        };
        if !kind.is_forward() {
            continue;
        }
        let rk = reply_key(k, v);
        let (flags, last) = match by_key.get(&rk) {
            Some(r) => {
                partnered.insert(key_bytes(&rk));
                let replied = if r.last_seen_ns != 0 { CT_REPLIED } else { 0 };
                (
                    v.flags | r.flags | replied,
                    v.last_seen_ns.max(r.last_seen_ns),
                )
            }
            None => (v.flags, v.last_seen_ns),
        };
        if expired(k.proto, flags, last) {
            out.push(*k);
            if by_key.contains_key(&rk) {
                out.push(rk);
            }
        }
    }
    for (k, v) in entries {
        let Some(kind) = CtKind::from_u8(v.kind) else {
            continue;
        };
        if kind.is_forward() || partnered.contains(&key_bytes(k)) {
            continue;
        }
        if expired(k.proto, v.flags, v.last_seen_ns) {
            out.push(*k);
        }
    }
    out
}

fn key_bytes(k: &CtKey) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..4].copy_from_slice(&k.src);
    b[4..8].copy_from_slice(&k.dst);
    b[8..10].copy_from_slice(&k.sport);
    b[10..12].copy_from_slice(&k.dport);
    b[12] = k.proto;
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn addrs(n: u32) -> Vec<Ipv4Addr> {
        (0..n).map(|i| Ipv4Addr::from(0x0a00_0002 + i)).collect()
    }

    fn counts(t: &[Ipv4Addr]) -> BTreeMap<Ipv4Addr, usize> {
        let mut c = BTreeMap::new();
        for a in t {
            *c.entry(*a).or_default() += 1;
        }
        c
    }

    #[test]
    fn maglev_spreads_evenly_and_ignores_order() {
        for n in [1u32, 2, 3, 7, 10, 40] {
            let b = addrs(n);
            let t = maglev_table(&b, LB_MAGLEV_SIZE);
            assert_eq!(t.len(), LB_MAGLEV_SIZE as usize);
            let c = counts(&t);
            assert_eq!(c.len(), n as usize);
            let lo = (LB_MAGLEV_SIZE / n) as usize;
            for (a, k) in &c {
                assert!(*k == lo || *k == lo + 1, "{a}: {k} entries of {n} backends");
            }
            let mut rev = b.clone();
            rev.reverse();
            assert_eq!(maglev_table(&rev, LB_MAGLEV_SIZE), t);
        }
        assert!(maglev_table(&[], LB_MAGLEV_SIZE).is_empty());
    }

    fn moved(a: &[Ipv4Addr], b: &[Ipv4Addr]) -> usize {
        a.iter().zip(b).filter(|(x, y)| x != y).count()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Adding one backend to n moves about 1/(n+1) of the table (what
        /// must move) and not much more; removing one moves its own share
        /// and little else.
        #[test]
        fn maglev_disruption_is_near_minimal(n in 2u32..30, seed in 0u32..1000) {
            let base: Vec<Ipv4Addr> =
                (0..n).map(|i| Ipv4Addr::from(0x0a00_0000 + seed * 64 + i)).collect();
            let extra = Ipv4Addr::from(0x0b00_0000 + seed);
            let before = maglev_table(&base, LB_MAGLEV_SIZE);
            let mut grown = base.clone();
            grown.push(extra);
            let after = maglev_table(&grown, LB_MAGLEV_SIZE);
            let m = LB_MAGLEV_SIZE as f64;
            let ideal = m / f64::from(n + 1);
            let add_moved = moved(&before, &after) as f64;
            prop_assert!(add_moved >= ideal.floor() - 1.0);
            prop_assert!(add_moved <= ideal * 1.6 + 20.0, "added: {add_moved} moved, ideal {ideal}");
            // Removal: entries of survivors that change owner.
            let gone = base[0];
            let shrunk = maglev_table(&base[1..], LB_MAGLEV_SIZE);
            let survivors_moved = before
                .iter()
                .zip(&shrunk)
                .filter(|(x, y)| **x != gone && x != y)
                .count() as f64;
            prop_assert!(survivors_moved <= m * 0.08 + 20.0, "removed: {survivors_moved} survivor entries moved");
        }
    }

    fn fe(id: &str, vip: Option<[u8; 4]>, ports: &[u16], published: &[u16]) -> ServiceFrontend {
        let pm = |p: &u16| PortMapping {
            proto: Proto::Tcp,
            port: *p,
            target: 80,
        };
        ServiceFrontend {
            id: id.into(),
            vni: 4096,
            vip: vip.map(Ipv4Addr::from),
            ports: ports.iter().map(pm).collect(),
            published: published.iter().map(pm).collect(),
        }
    }

    #[test]
    fn book_checks_services() {
        let mut book = LbBook::default();
        let a = fe("a", Some([10, 0, 0, 2]), &[80], &[8080]);
        let (slot, removed) = book.check_service(&a, None).unwrap();
        assert_eq!((slot, removed.len()), (0, 0));
        book.record_service(a.clone(), slot);
        // Same published port elsewhere: refused, naming the holder.
        let err = book
            .check_service(&fe("b", Some([10, 0, 0, 3]), &[80], &[8080]), None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("already published") && err.contains("service a"),
            "{err}"
        );
        // Same VIP port elsewhere: refused.
        assert!(
            book.check_service(&fe("b", Some([10, 0, 0, 2]), &[80], &[]), None)
                .is_err()
        );
        // Another service gets the next slot; a preferred free slot wins.
        assert_eq!(
            book.check_service(&fe("b", Some([10, 0, 0, 3]), &[80], &[]), None)
                .unwrap()
                .0,
            1
        );
        assert_eq!(
            book.check_service(&fe("b", Some([10, 0, 0, 3]), &[80], &[]), Some(7))
                .unwrap()
                .0,
            7
        );
        assert_eq!(
            book.check_service(&fe("b", Some([10, 0, 0, 3]), &[80], &[]), Some(0))
                .unwrap()
                .0,
            1
        );
        // Reserved slots are skipped.
        book.reserve_slots([1, 2]);
        assert_eq!(
            book.check_service(&fe("b", Some([10, 0, 0, 3]), &[80], &[]), None)
                .unwrap()
                .0,
            3
        );
        // Updating keeps the slot and reports removed keys.
        let (slot, removed) = book
            .check_service(&fe("a", Some([10, 0, 0, 2]), &[80], &[]), None)
            .unwrap();
        assert_eq!(slot, 0);
        assert_eq!(
            removed,
            vec![FrontKey {
                addr: Ipv4Addr::UNSPECIFIED,
                proto: Proto::Tcp,
                port: 8080
            }]
        );
        // Bad input.
        assert!(book.check_service(&fe("", None, &[], &[]), None).is_err());
        assert!(
            book.check_service(&fe("c", None, &[80], &[]), None)
                .is_err()
        );
        assert!(
            book.check_service(&fe("c", Some([0, 0, 0, 0]), &[80], &[]), None)
                .is_err()
        );
        assert!(
            book.check_service(&fe("c", Some([10, 0, 0, 9]), &[80, 80], &[]), None)
                .is_err()
        );
        assert!(
            book.check_service(&fe("c", Some([10, 0, 0, 9]), &[0], &[]), None)
                .is_err()
        );
        let mut bad_vni = fe("c", None, &[], &[]);
        bad_vni.vni = 0;
        assert!(book.check_service(&bad_vni, None).is_err());
        // Backends.
        let b = |a: [u8; 4]| Backend {
            addr: a.into(),
            draining: false,
        };
        assert!(book.check_backends("zz", &[]).is_err());
        assert!(
            book.check_backends("a", &[b([10, 0, 0, 5]), b([10, 0, 0, 5])])
                .is_err()
        );
        assert!(book.check_backends("a", &[b([0, 0, 0, 0])]).is_err());
        assert_eq!(book.check_backends("a", &[b([10, 0, 0, 5])]).unwrap(), 0);
    }

    #[test]
    fn draining_backends_leave_the_table() {
        let b = |a: u32, draining| Backend {
            addr: Ipv4Addr::from(a),
            draining,
        };
        let t = service_table(&[b(1, false), b(2, true), b(3, false)]);
        let c = counts(&t);
        assert_eq!(
            c.keys().copied().collect::<Vec<_>>(),
            vec![Ipv4Addr::from(1), Ipv4Addr::from(3)]
        );
        assert!(service_table(&[b(2, true)]).is_empty());
    }

    fn key(src: u8, dst: u8, sport: u16, dport: u16, proto: u8) -> CtKey {
        CtKey {
            src: [10, 0, 0, src],
            dst: [10, 0, 0, dst],
            sport: sport.to_be_bytes(),
            dport: dport.to_be_bytes(),
            proto,
            _pad: [0; 3],
        }
    }

    fn val(kind: CtKind, flags: u8, last: u64, nat: (u8, u16)) -> CtValue {
        CtValue {
            last_seen_ns: last,
            kind: kind as u8,
            flags,
            nat_port: nat.1.to_be_bytes(),
            nat_addr: [10, 0, 0, nat.0],
            ..CtValue::default()
        }
    }

    #[test]
    fn ct_timeouts_are_never_shorter_than_the_kernels() {
        assert_eq!(ct_timeout(IPPROTO_TCP, CT_REPLIED), 432_000 * SEC);
        assert_eq!(ct_timeout(IPPROTO_TCP, 0), 120 * SEC);
        assert_eq!(
            ct_timeout(IPPROTO_TCP, CT_REPLIED | CT_FIN_ORIG),
            432_000 * SEC
        );
        assert_eq!(
            ct_timeout(IPPROTO_TCP, CT_REPLIED | CT_FIN_ORIG | CT_FIN_REPLY),
            120 * SEC
        );
        assert_eq!(ct_timeout(IPPROTO_TCP, CT_REPLIED | CT_RST), 10 * SEC);
        assert_eq!(ct_timeout(IPPROTO_UDP, 0), 30 * SEC);
        assert_eq!(ct_timeout(IPPROTO_UDP, CT_REPLIED), 120 * SEC);
        // Longer than IPVS's 900 s idle timeout, by far.
        assert!(ct_timeout(IPPROTO_TCP, CT_REPLIED) > 900 * SEC);
    }

    #[test]
    fn ct_sweep_judges_pairs_together() {
        let t0 = 1_000 * SEC;
        // Client .2:40000 → VIP .100:80, backend .7:8080.
        let fwd = key(2, 100, 40000, 80, IPPROTO_TCP);
        let rev = key(7, 2, 8080, 40000, IPPROTO_TCP);
        let entries = vec![
            (fwd, val(CtKind::VipForward, 0, t0, (7, 8080))),
            (rev, val(CtKind::VipReply, 0, t0 + SEC, (100, 80))),
        ];
        // Replied (reply entry was hit): established, lives for days.
        assert!(ct_sweep(&entries, t0 + 3600 * SEC).is_empty());
        let gone = ct_sweep(&entries, t0 + 6 * 24 * 3600 * SEC);
        assert_eq!(gone.len(), 2);
        // Never replied: a SYN that went nowhere, gone after 120 s.
        let unreplied = vec![
            (fwd, val(CtKind::VipForward, 0, t0, (7, 8080))),
            (rev, val(CtKind::VipReply, 0, 0, (100, 80))),
        ];
        assert!(ct_sweep(&unreplied, t0 + 100 * SEC).is_empty());
        assert_eq!(ct_sweep(&unreplied, t0 + 121 * SEC).len(), 2);
        // FIN both ways: 120 s; RST: 10 s.
        let closed = vec![
            (fwd, val(CtKind::VipForward, CT_FIN_ORIG, t0, (7, 8080))),
            (
                rev,
                val(CtKind::VipReply, CT_FIN_REPLY | CT_REPLIED, t0, (100, 80)),
            ),
        ];
        assert!(ct_sweep(&closed, t0 + 100 * SEC).is_empty());
        assert_eq!(ct_sweep(&closed, t0 + 121 * SEC).len(), 2);
        let reset = vec![
            (fwd, val(CtKind::VipForward, CT_RST, t0, (7, 8080))),
            (rev, val(CtKind::VipReply, CT_REPLIED, t0, (100, 80))),
        ];
        assert_eq!(ct_sweep(&reset, t0 + 11 * SEC).len(), 2);
        // An orphan reply entry (its forward evicted) is judged alone; a
        // tunnel-back entry likewise.
        let orphan = vec![(rev, val(CtKind::VipReply, 0, 0, (100, 80)))];
        assert_eq!(ct_sweep(&orphan, t0), vec![rev]);
        let udp = key(7, 2, 53, 40000, IPPROTO_UDP);
        let back = vec![(udp, val(CtKind::MeshTunnelBack, CT_REPLIED, t0, (0, 0)))];
        assert!(ct_sweep(&back, t0 + 100 * SEC).is_empty());
        assert_eq!(ct_sweep(&back, t0 + 121 * SEC), vec![udp]);
        // Garbage kinds go.
        let junk = vec![(
            udp,
            CtValue {
                kind: 99,
                ..CtValue::default()
            },
        )];
        assert_eq!(ct_sweep(&junk, t0), vec![udp]);
    }
}
