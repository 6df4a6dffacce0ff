//! Service load balancing: VIPs (east-west, at the client container's host
//! veth) and the routing mesh (published ports, at the node's external
//! interface), with connection tracking so established connections keep
//! their backend.
//!
//! Owns per-packet translation only: which backend a new connection gets
//! (the service's Maglev table, filled by the agent), the connection
//! tracking entries that remember it, and the address and port rewrites
//! with their checksum updates. Never decides which backends exist or
//! expires entries (the agent's GC does, by the timeouts it documents).
//!
//! Routing mesh and the client's address: the ingress node translates only
//! the destination (client → backend) and carries the packet unchanged
//! through the overlay, so the backend sees the real client. The backend's
//! node remembers which node the connection came in through (from the
//! tunnel key) and tunnels the replies back there, where the source becomes
//! the node's address and published port again.
use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_OK, TC_ACT_SHOT},
    helpers::generated::{bpf_ktime_get_ns, bpf_redirect_neigh},
    macros::{classifier, map},
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::TcContext,
};
use swarm_ebpf_common::{
    CT_FIN_ORIG, CT_FIN_REPLY, CT_REFRESH_NS, CT_REPLIED, CT_RST, CtKey, CtKind, CtValue,
    EndpointValue, FRONTEND_MESH, FrontendKey, FrontendValue, IPPROTO_TCP, IPPROTO_UDP, LB_CT_MAX,
    LB_FRONTENDS_MAX, LB_MAGLEV_SIZE, LB_MAX_SERVICES, LbCounter, MeshConfig, OverlayCounter,
    PacketCounter,
};

use crate::overlay;

#[map(name = "SWARM_LB_FRONTENDS")]
static FRONTENDS: HashMap<FrontendKey, FrontendValue> =
    HashMap::with_max_entries(LB_FRONTENDS_MAX, 0);

#[map(name = "SWARM_LB_VIPS")]
static VIPS: HashMap<[u8; 4], u32> = HashMap::with_max_entries(LB_FRONTENDS_MAX, 0);

#[map(name = "SWARM_LB_MAGLEV")]
static MAGLEV: Array<[u8; 4]> = Array::with_max_entries(LB_MAX_SERVICES * LB_MAGLEV_SIZE, 0);

#[map(name = "SWARM_LB_CT")]
static CT: LruHashMap<CtKey, CtValue> = LruHashMap::with_max_entries(LB_CT_MAX, 0);

#[map(name = "SWARM_LB_CONFIG")]
static CONFIG: Array<MeshConfig> = Array::with_max_entries(1, 0);

#[map(name = "SWARM_LB_COUNTERS")]
static COUNTERS: PerCpuArray<PacketCounter> = PerCpuArray::with_max_entries(LbCounter::COUNT, 0);

#[map(name = "SWARM_LB_SVC_COUNTERS")]
static SVC_COUNTERS: PerCpuArray<PacketCounter> =
    PerCpuArray::with_max_entries(LB_MAX_SERVICES * 2, 0);

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const IP_CSUM: usize = ETH_HLEN + 10;
const IP_SRC: usize = ETH_HLEN + 12;
const IP_DST: usize = ETH_HLEN + 16;
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

#[inline(always)]
fn bump(c: &PerCpuArray<PacketCounter>, idx: u32, len: u32) {
    if let Some(c) = c.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot of an array map, valid for this run.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += u64::from(len);
        }
    }
}

#[inline(always)]
fn count(what: LbCounter, len: u32) {
    bump(&COUNTERS, what as u32, len);
}

/// Per-service counter: `reply` false towards backends, true back.
#[inline(always)]
fn count_service(slot: u32, reply: bool, len: u32) {
    bump(&SVC_COUNTERS, slot * 2 + u32::from(reply), len);
}

#[inline(always)]
fn drop_pkt(why: LbCounter, len: u32) -> i32 {
    count(why, len);
    TC_ACT_SHOT
}

#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: plain helper call.
    unsafe { bpf_ktime_get_ns() }
}

/// Whether `addr` is a VIP of network `vni` (the overlay answers ARP for
/// it: containers see VIPs on-link).
#[inline(always)]
pub fn is_vip(addr: [u8; 4], vni: u32) -> bool {
    // SAFETY: value pointer from a lookup, valid for this run.
    VIPS.get_ptr(addr).is_some_and(|v| unsafe { *v } == vni)
}

/// The TCP/UDP header fields the balancer works with.
pub struct L4 {
    pub key: CtKey,
    pub l4_off: usize,
    pub tcp_flags: u8,
}

impl L4 {
    fn csum_off(&self) -> usize {
        if self.key.proto == IPPROTO_TCP {
            self.l4_off + 16
        } else {
            self.l4_off + 6
        }
    }

    fn is_tcp_syn(&self) -> bool {
        self.key.proto == IPPROTO_TCP && self.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
    }

    /// CT flags this packet adds, in its direction.
    fn ct_flags(&self, reply: bool) -> u8 {
        let mut f = if reply { CT_REPLIED } else { 0 };
        if self.key.proto == IPPROTO_TCP {
            if self.tcp_flags & TCP_FIN != 0 {
                f |= if reply { CT_FIN_REPLY } else { CT_FIN_ORIG };
            }
            if self.tcp_flags & TCP_RST != 0 {
                f |= CT_RST;
            }
        }
        f
    }
}

/// Parses an IPv4 TCP or UDP packet that is not a fragment; `None` for
/// everything else (left to the overlay's plain routing).
#[inline(always)]
pub fn parse_l4(ctx: &TcContext) -> Option<L4> {
    let vihl: u8 = ctx.load(ETH_HLEN).ok()?;
    if vihl >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(vihl & 0x0f) * 4;
    if ihl < 20 {
        return None;
    }
    let frag: [u8; 2] = ctx.load(ETH_HLEN + 6).ok()?;
    // Offset or more-fragments set: ports only in the first piece.
    if u16::from_be_bytes(frag) & 0x3fff != 0 {
        return None;
    }
    let proto: u8 = ctx.load(ETH_HLEN + 9).ok()?;
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return None;
    }
    let src: [u8; 4] = ctx.load(IP_SRC).ok()?;
    let dst: [u8; 4] = ctx.load(IP_DST).ok()?;
    let l4_off = ETH_HLEN + ihl;
    let ports: [u8; 4] = ctx.load(l4_off).ok()?;
    let tcp_flags = if proto == IPPROTO_TCP {
        ctx.load::<u8>(l4_off + 13).ok()?
    } else {
        0
    };
    Some(L4 {
        key: CtKey {
            src,
            dst,
            sport: [ports[0], ports[1]],
            dport: [ports[2], ports[3]],
            proto,
            _pad: [0; 3],
        },
        l4_off,
        tcp_flags,
    })
}

/// Rewrites the destination (`dst`) or source address and port, keeping the
/// IPv4 and TCP/UDP checksums right (a zero UDP checksum stays zero).
#[inline(always)]
fn rewrite(ctx: &TcContext, l4: &L4, dst: bool, addr: [u8; 4], port: [u8; 2]) -> bool {
    let (addr_off, port_off, old_addr, old_port) = if dst {
        (IP_DST, l4.l4_off + 2, l4.key.dst, l4.key.dport)
    } else {
        (IP_SRC, l4.l4_off, l4.key.src, l4.key.sport)
    };
    let mangled = if l4.key.proto == IPPROTO_UDP {
        u64::from(BPF_F_MARK_MANGLED_0)
    } else {
        0
    };
    let csum = l4.csum_off();
    let (oa, na) = (
        u64::from(u32::from_ne_bytes(old_addr)),
        u64::from(u32::from_ne_bytes(addr)),
    );
    if old_addr != addr
        && (ctx
            .l4_csum_replace(csum, oa, na, u64::from(BPF_F_PSEUDO_HDR) | mangled | 4)
            .is_err()
            || ctx.l3_csum_replace(IP_CSUM, oa, na, 4).is_err()
            || ctx.store(addr_off, &addr, 0).is_err())
    {
        return false;
    }
    if old_port != port {
        let (op, np) = (
            u64::from(u16::from_ne_bytes(old_port)),
            u64::from(u16::from_ne_bytes(port)),
        );
        if ctx.l4_csum_replace(csum, op, np, mangled | 2).is_err()
            || ctx.store(port_off, &port, 0).is_err()
        {
            return false;
        }
    }
    true
}

#[inline(always)]
fn fmix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// Hash of a connection's original direction: picks its Maglev entry.
#[inline(always)]
fn flow_hash(k: &CtKey) -> u32 {
    let mut h = fmix(u32::from_ne_bytes(k.src) ^ 0x9e37_79b9);
    h = fmix(h ^ u32::from_ne_bytes(k.dst));
    h = fmix(h ^ u32::from_ne_bytes([k.sport[0], k.sport[1], k.dport[0], k.dport[1]]));
    fmix(h ^ u32::from(k.proto))
}

/// The backend a new connection of service `slot` goes to.
#[inline(always)]
fn pick(slot: u32, k: &CtKey) -> Option<[u8; 4]> {
    if slot >= LB_MAX_SERVICES {
        return None;
    }
    let idx = slot * LB_MAGLEV_SIZE + flow_hash(k) % LB_MAGLEV_SIZE;
    let b = *MAGLEV.get(idx)?;
    if u32::from_ne_bytes(b) == 0 {
        None
    } else {
        Some(b)
    }
}

/// Refreshes an entry a packet hit (at most once per [`CT_REFRESH_NS`]
/// unless flags change: fewer writes to a shared cache line).
#[inline(always)]
fn touch(e: *mut CtValue, flags: u8) {
    let now = now_ns();
    // SAFETY: value pointer from a lookup, valid for this run; racing
    // writers store equivalent values.
    unsafe {
        if now.wrapping_sub((*e).last_seen_ns) > CT_REFRESH_NS || (*e).flags & flags != flags {
            (*e).last_seen_ns = now;
            (*e).flags |= flags;
        }
    }
}

/// The backend of a connection to service `fe` and its overlay endpoint:
/// the tracked one while its endpoint exists, or a new pick recorded both
/// ways. `reply_nat` is what replies' source becomes.
#[inline(always)]
fn backend_for(
    l4: &L4,
    fe: &FrontendValue,
    fwd_kind: CtKind,
    reply_kind: CtKind,
    reply_nat: ([u8; 4], [u8; 2]),
    new_flow: LbCounter,
    len: u32,
) -> Result<([u8; 4], EndpointValue), i32> {
    if let Some(e) = CT.get_ptr_mut(l4.key) {
        // SAFETY: value pointer from a lookup, valid for this run.
        let (kind, addr) = unsafe { ((*e).kind, (*e).nat_addr) };
        if kind == fwd_kind as u8 && !l4.is_tcp_syn() {
            // A draining backend keeps its endpoint (and its connections)
            // until its task is gone; after that, staying pinned would
            // black-hole the flow until it idles out, which a datagram
            // flow that keeps sending never does.
            if let Some(ep) = overlay::endpoint(addr) {
                touch(e, l4.ct_flags(false));
                return Ok((addr, ep));
            }
            count(LbCounter::CtBackendGone, len);
        }
        // A new connection reusing an old tuple: balance it afresh.
    } else if l4.key.proto == IPPROTO_TCP && !l4.is_tcp_syn() {
        count(LbCounter::CtMissMidFlow, len);
    }
    let Some(backend) = pick(fe.slot, &l4.key) else {
        return Err(drop_pkt(LbCounter::DropNoBackend, len));
    };
    let Some(ep) = overlay::endpoint(backend) else {
        return Err(drop_pkt(LbCounter::DropUnknownBackend, len));
    };
    let now = now_ns();
    let fwd = CtValue {
        last_seen_ns: now,
        kind: fwd_kind as u8,
        flags: l4.ct_flags(false),
        nat_port: fe.target_port,
        nat_addr: backend,
        node: [0; 4],
        vni: fe.vni,
        slot: fe.slot,
        _pad: 0,
    };
    let rev_key = CtKey {
        src: backend,
        dst: l4.key.src,
        sport: fe.target_port,
        dport: l4.key.sport,
        proto: l4.key.proto,
        _pad: [0; 3],
    };
    let rev = CtValue {
        last_seen_ns: 0,
        kind: reply_kind as u8,
        flags: 0,
        nat_port: reply_nat.1,
        nat_addr: reply_nat.0,
        node: [0; 4],
        vni: fe.vni,
        slot: fe.slot,
        _pad: 0,
    };
    // Reply entry first: a reply never finds a forward entry without it.
    if CT.insert(rev_key, rev, 0).is_err() || CT.insert(l4.key, fwd, 0).is_err() {
        return Err(drop_pkt(LbCounter::DropCtFull, len));
    }
    count(new_flow, len);
    Ok((backend, ep))
}

/// Container → VIP, at the client's host veth: translates the destination
/// to the connection's backend. `Ok(None)`: not a VIP (route as is);
/// `Ok(Some(backend's endpoint))`: translated; `Err(verdict)`: dropped.
#[inline(always)]
pub fn vip_forward(
    ctx: &TcContext,
    vni: u32,
    l4: &L4,
    len: u32,
) -> Result<Option<EndpointValue>, i32> {
    let fk = FrontendKey {
        addr: l4.key.dst,
        port: l4.key.dport,
        proto: l4.key.proto,
        _pad: 0,
    };
    // The exact port, else the VIP's every-port frontend (port 0).
    let exact = FRONTENDS.get_ptr(fk);
    let any = FrontendKey { port: [0, 0], ..fk };
    let Some(fe) = exact.or_else(|| FRONTENDS.get_ptr(any)) else {
        return Ok(None);
    };
    // SAFETY: value pointer from a lookup, valid for this run.
    let mut fe = unsafe { *fe };
    if fe.flags & FRONTEND_MESH != 0 {
        return Ok(None);
    }
    if fe.target_port == [0, 0] {
        fe.target_port = l4.key.dport;
    }
    if fe.vni != vni {
        return Err(drop_pkt(LbCounter::DropIsolation, len));
    }
    let (backend, ep) = backend_for(
        l4,
        &fe,
        CtKind::VipForward,
        CtKind::VipReply,
        (l4.key.dst, l4.key.dport),
        LbCounter::VipNewFlow,
        len,
    )?;
    if !rewrite(ctx, l4, true, backend, fe.target_port) {
        return Err(drop_pkt(LbCounter::DropRewrite, len));
    }
    count(LbCounter::VipForward, len);
    count_service(fe.slot, false, len);
    Ok(Some(ep))
}

/// A container's packet straight to another container's address (no VIP):
/// a VIP reply entry under the same tuple is left over from an earlier
/// connection through the VIP from the same client port, and would give
/// this connection's replies the VIP as their source. New connections only
/// (TCP SYN, any datagram): established ones already removed it.
#[inline(always)]
pub fn direct_flow(l4: &L4) {
    if l4.key.proto == IPPROTO_TCP && !l4.is_tcp_syn() {
        return;
    }
    let rev = l4.key.reversed();
    if let Some(e) = CT.get_ptr(rev)
        // SAFETY: value pointer from a lookup, valid for this run.
        && unsafe { (*e).kind } == CtKind::VipReply as u8
    {
        let _ = CT.remove(rev);
    }
}

/// Backend → container, just before delivery into the container: a reply
/// of a VIP connection gets the VIP back as its source. `Err(verdict)`:
/// dropped.
#[inline(always)]
pub fn vip_reply(ctx: &TcContext, len: u32) -> Result<(), i32> {
    let Some(l4) = parse_l4(ctx) else {
        return Ok(());
    };
    let Some(e) = CT.get_ptr_mut(l4.key) else {
        return Ok(());
    };
    // SAFETY: value pointer from a lookup, valid for this run.
    let v = unsafe { *e };
    if v.kind != CtKind::VipReply as u8 {
        return Ok(());
    }
    touch(e, l4.ct_flags(true));
    if !rewrite(ctx, &l4, false, v.nat_addr, v.nat_port) {
        return Err(drop_pkt(LbCounter::DropRewrite, len));
    }
    count(LbCounter::VipReply, len);
    count_service(v.slot, true, len);
    Ok(())
}

/// Sends a translated mesh reply out of the node's external interface; the
/// kernel picks the next hop and fills the MACs from its neighbour table.
/// (`bpf_fib_lookup` would need forwarding enabled on the node, which the
/// mesh does not otherwise require.)
#[inline(always)]
fn send_out(ext_ifindex: u32, len: u32) -> i32 {
    if ext_ifindex == 0 {
        return drop_pkt(LbCounter::DropNoRoute, len);
    }
    count(LbCounter::MeshReply, len);
    // SAFETY: no parameters: the kernel resolves the next hop itself.
    unsafe { bpf_redirect_neigh(ext_ifindex, core::ptr::null_mut(), 0, 0) as i32 }
}

/// Backend → client outside the swarm: a reply of a mesh connection. On the
/// ingress node the source becomes the node's address and published port
/// and the packet leaves by the external interface; on the backend's node
/// (`from_tunnel` false) it is tunnelled back to the ingress node. `None`:
/// not a mesh reply.
#[inline(always)]
pub fn mesh_reply(ctx: &TcContext, l4: &L4, from_tunnel: bool, len: u32) -> Option<i32> {
    let e = CT.get_ptr_mut(l4.key)?;
    // SAFETY: value pointer from a lookup, valid for this run.
    let v = unsafe { *e };
    if v.kind == CtKind::MeshReply as u8 {
        touch(e, l4.ct_flags(true));
        let cfg = CONFIG.get(0).copied().unwrap_or_default();
        if !rewrite(ctx, l4, false, v.nat_addr, v.nat_port) {
            return Some(drop_pkt(LbCounter::DropRewrite, len));
        }
        count_service(v.slot, true, len);
        return Some(send_out(cfg.ext_ifindex, len));
    }
    if v.kind == CtKind::MeshTunnelBack as u8 && !from_tunnel {
        touch(e, l4.ct_flags(true));
        count(LbCounter::MeshTunnelBack, len);
        return Some(overlay::tunnel_to(ctx, v.vni, v.node, len));
    }
    None
}

/// On the backend's node, a mesh packet arriving through the tunnel from
/// ingress node `node` (source outside every overlay subnet): remember to
/// send the replies back through that node.
///
/// The packet itself is the truth about the way its connection came in: a
/// reply entry of any other kind or node under the same tuple is left over
/// from an earlier connection (clients reuse a port towards another node's
/// address) and is replaced. Keeping it would send this connection's
/// replies out through the wrong node, where the client drops them.
#[inline(always)]
pub fn mesh_remember_ingress(l4: &L4, node: [u8; 4], vni: u32) {
    let rev = l4.key.reversed();
    if let Some(e) = CT.get_ptr_mut(rev) {
        // SAFETY: value pointer from a lookup, valid for this run.
        let old = unsafe { *e };
        if old.kind == CtKind::MeshTunnelBack as u8 && old.node == node && !l4.is_tcp_syn() {
            touch(e, l4.ct_flags(false));
            return;
        }
        if old.kind == CtKind::MeshReply as u8 {
            // The earlier connection came in through this node: its
            // forward entry goes too, so that a datagram flow through this
            // node again is balanced afresh and sets its own reply entry.
            let fwd = CtKey {
                src: rev.dst,
                dst: old.nat_addr,
                sport: rev.dport,
                dport: old.nat_port,
                proto: rev.proto,
                _pad: [0; 3],
            };
            let _ = CT.remove(fwd);
        }
    }
    let v = CtValue {
        last_seen_ns: now_ns(),
        kind: CtKind::MeshTunnelBack as u8,
        flags: l4.ct_flags(false),
        nat_port: [0; 2],
        nat_addr: [0; 4],
        node,
        vni,
        slot: 0,
        _pad: 0,
    };
    // Best effort: without it the replies are lost and the client retries.
    let _ = CT.insert(rev, v, 0);
}

/// TC ingress of the node's external interface: connections to a published
/// port on the node's address go to a backend of the service, on this node
/// or through the overlay; everything else is left to the host.
#[classifier]
pub fn swarm_lb_mesh_ingress(ctx: TcContext) -> i32 {
    // SAFETY: ctx.skb is the kernel's __sk_buff for this run.
    let len = unsafe { (*ctx.skb.skb).len };
    match ctx.load::<[u8; 2]>(12) {
        Ok(t) if u16::from_be_bytes(t) == ETH_P_IP => {}
        _ => return TC_ACT_OK,
    }
    let Some(cfg) = CONFIG.get(0).copied() else {
        return TC_ACT_OK;
    };
    let Some(l4) = parse_l4(&ctx) else {
        return TC_ACT_OK;
    };
    if u32::from_ne_bytes(cfg.node_addr) == 0 || l4.key.dst != cfg.node_addr {
        return TC_ACT_OK;
    }
    let fk = FrontendKey {
        addr: [0; 4],
        port: l4.key.dport,
        proto: l4.key.proto,
        _pad: 0,
    };
    let Some(fe) = FRONTENDS.get_ptr(fk) else {
        return TC_ACT_OK;
    };
    // SAFETY: value pointer from a lookup, valid for this run.
    let fe = unsafe { *fe };
    let (backend, ep) = match backend_for(
        &l4,
        &fe,
        CtKind::MeshForward,
        CtKind::MeshReply,
        (cfg.node_addr, l4.key.dport),
        LbCounter::MeshNewFlow,
        len,
    ) {
        Ok(b) => b,
        Err(v) => return v,
    };
    if !rewrite(&ctx, &l4, true, backend, fe.target_port) {
        return drop_pkt(LbCounter::DropRewrite, len);
    }
    count(LbCounter::MeshForward, len);
    count_service(fe.slot, false, len);
    if ep.is_local() {
        overlay::deliver_local(&ctx, &ep, OverlayCounter::LocalForward, len)
    } else {
        overlay::tunnel_to(&ctx, ep.vni, ep.node_ip, len)
    }
}
