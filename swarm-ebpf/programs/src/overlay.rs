//! Overlay networks: one collect-metadata VXLAN device per node, routing
//! between containers decided from maps.
//!
//! Owns the per-frame work of the overlay only: answer ARP, deliver to a
//! local container, encapsulate to another node, deliver what arrives from
//! one, drop what crosses networks. Which endpoints exist and where they run
//! is the agent's business (it fills the maps); nothing here learns from
//! traffic. Every verdict is counted in `SWARM_OVL_COUNTERS`.
//!
//! MACs: every ARP answer names the asking container's own host-side veth
//! (proxy ARP), so a container's neighbour cache holds one MAC for all its
//! peers and its gateway. Frames it sends are therefore addressed to that
//! veth, which is also what lets the host stack accept the frames passed
//! to it (traffic leaving the overlay) without any rewrite. Frames
//! delivered to a container get the container's MAC as destination and
//! its host veth's MAC as source: exactly what its own ARP cache says.
//!
//! Delivery into a container uses `bpf_redirect_peer` on the destination's
//! host veth: the frame goes straight to the container-side ingress,
//! skipping the host veth's egress queue and a second softirq pass (the
//! helper works from TC ingress, which both programs here are). ARP answers
//! go back with plain `bpf_redirect` to the veth's egress: rare, and the
//! simplest path.
use crate::lb;
use aya_ebpf::{
    bindings::{
        BPF_F_ZERO_CSUM_TX, TC_ACT_OK, TC_ACT_SHOT, bpf_tunnel_key, bpf_tunnel_key__bindgen_ty_1,
        bpf_tunnel_key__bindgen_ty_2, bpf_tunnel_key__bindgen_ty_3,
    },
    helpers::generated::{
        bpf_redirect, bpf_redirect_peer, bpf_skb_get_tunnel_key, bpf_skb_set_tunnel_key,
    },
    macros::{classifier, map},
    maps::{Array, HashMap, LpmTrie, PerCpuArray, lpm_trie::Key},
    programs::TcContext,
};
use swarm_ebpf_common::{
    EndpointValue, IfaceValue, Ipv4Key, OVERLAY_ENDPOINTS_MAX, OVERLAY_IFACES_MAX,
    OVERLAY_SUBNETS_MAX, OverlayConfig, OverlayCounter, PacketCounter, SubnetValue,
};

#[map(name = "SWARM_OVL_ENDPOINTS")]
static ENDPOINTS: HashMap<Ipv4Key, EndpointValue> =
    HashMap::with_max_entries(OVERLAY_ENDPOINTS_MAX, 0);

#[map(name = "SWARM_OVL_IFACES")]
static IFACES: HashMap<u32, IfaceValue> = HashMap::with_max_entries(OVERLAY_IFACES_MAX, 0);

#[map(name = "SWARM_OVL_SUBNETS")]
static SUBNETS: LpmTrie<[u8; 4], SubnetValue> = LpmTrie::with_max_entries(OVERLAY_SUBNETS_MAX, 0);

#[map(name = "SWARM_OVL_CONFIG")]
static CONFIG: Array<OverlayConfig> = Array::with_max_entries(1, 0);

#[map(name = "SWARM_OVL_COUNTERS")]
static COUNTERS: PerCpuArray<PacketCounter> =
    PerCpuArray::with_max_entries(OverlayCounter::COUNT, 0);

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;
const ARP_HTYPE_ETHER: u16 = 1;
const ARP_OP_REQUEST: u16 = 1;
const ARP_OP_REPLY: u16 = 2;
/// Offsets in an Ethernet/IPv4 ARP packet, from the start of the frame.
const ARP_OP: usize = ETH_HLEN + 6;
const ARP_SHA: usize = ETH_HLEN + 8;
const ARP_SPA: usize = ETH_HLEN + 14;
const ARP_TPA: usize = ETH_HLEN + 24;
const IP_DST: usize = ETH_HLEN + 16;
const IP_MIN_END: usize = ETH_HLEN + 20;
/// Outer TTL of encapsulated frames.
const TUNNEL_TTL: u8 = 64;

#[inline(always)]
fn count(what: OverlayCounter, len: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(what as u32) {
        // SAFETY: per-CPU slot of an array map: only this CPU writes it, and
        // the pointer is valid for this program run.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += u64::from(len);
        }
    }
}

#[inline(always)]
fn drop_frame(why: OverlayCounter, len: u32) -> i32 {
    count(why, len);
    TC_ACT_SHOT
}

/// (ifindex, len) of the frame.
#[inline(always)]
fn skb_meta(ctx: &TcContext) -> (u32, u32) {
    // SAFETY: ctx.skb is the kernel's __sk_buff for this run.
    unsafe { ((*ctx.skb.skb).ifindex, (*ctx.skb.skb).len) }
}

/// The overlay endpoint with address `addr`, if any.
#[inline(always)]
pub fn endpoint(addr: [u8; 4]) -> Option<EndpointValue> {
    ENDPOINTS.get_ptr(addr).map(|ep| {
        // SAFETY: value pointer from a lookup, valid for this run.
        unsafe { *ep }
    })
}

/// The overlay subnet `addr` belongs to, if any.
#[inline(always)]
pub fn subnet_of(addr: [u8; 4]) -> Option<SubnetValue> {
    SUBNETS.get(Key::new(32, addr)).copied()
}

/// Rewrites the MACs for delivery to local endpoint `ep` and hands the
/// frame to its container.
#[inline(always)]
pub fn deliver_local(ctx: &TcContext, ep: &EndpointValue, what: OverlayCounter, len: u32) -> i32 {
    // Replies of VIP connections get their VIP back as the source.
    if let Err(verdict) = lb::vip_reply(ctx, len) {
        return verdict;
    }
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(&ep.mac);
    macs[6..].copy_from_slice(&ep.host_mac);
    if ctx.store(0, &macs, 0).is_err() {
        return drop_frame(OverlayCounter::DropHelperFailed, len);
    }
    count(what, len);
    // SAFETY: plain helper call; the verdict it returns is ours.
    unsafe { bpf_redirect_peer(ep.ifindex, 0) as i32 }
}

/// TC ingress of a host-side veth: every frame a container sends.
#[classifier]
pub fn swarm_ovl_veth_ingress(ctx: TcContext) -> i32 {
    let (ifindex, len) = skb_meta(&ctx);
    let Some(iface) = IFACES.get_ptr(ifindex) else {
        // Attached but not (or no longer) an endpoint: isolate it.
        return drop_frame(OverlayCounter::DropUnknownInterface, len);
    };
    // SAFETY: value pointer from a lookup, valid for this run.
    let iface = unsafe { *iface };
    let Ok(ethertype) = ctx.load::<[u8; 2]>(12) else {
        return drop_frame(OverlayCounter::DropMalformed, len);
    };
    match u16::from_be_bytes(ethertype) {
        ETH_P_ARP => answer_arp(&ctx, ifindex, &iface, len),
        ETH_P_IP => route_ipv4(&ctx, &iface, len),
        _ => {
            // Not carried by the overlay (IPv6, …): the host decides.
            count(OverlayCounter::PassedToHost, len);
            TC_ACT_OK
        }
    }
}

/// Turns an ARP request for the gateway or a same-network endpoint into
/// the reply and sends it back to the container; drops every other ARP.
#[inline(always)]
fn answer_arp(ctx: &TcContext, ifindex: u32, iface: &IfaceValue, len: u32) -> i32 {
    let (Ok(head), Ok(op), Ok(sha), Ok(spa), Ok(tpa)) = (
        ctx.load::<[u8; 6]>(ETH_HLEN),
        ctx.load::<[u8; 2]>(ARP_OP),
        ctx.load::<[u8; 6]>(ARP_SHA),
        ctx.load::<[u8; 4]>(ARP_SPA),
        ctx.load::<[u8; 4]>(ARP_TPA),
    ) else {
        return drop_frame(OverlayCounter::DropMalformed, len);
    };
    let is_eth_ipv4 = u16::from_be_bytes([head[0], head[1]]) == ARP_HTYPE_ETHER
        && u16::from_be_bytes([head[2], head[3]]) == ETH_P_IP
        && head[4] == 6
        && head[5] == 4;
    // Gratuitous ARP and probes (target = own address) have no answer.
    if !is_eth_ipv4 || u16::from_be_bytes(op) != ARP_OP_REQUEST || tpa == iface.addr {
        return drop_frame(OverlayCounter::DropArp, len);
    }
    let Some(subnet) = subnet_of(tpa) else {
        return drop_frame(OverlayCounter::DropArp, len);
    };
    let answerable = subnet.vni == iface.vni
        && (tpa == subnet.gateway
            || ENDPOINTS
                .get_ptr(tpa)
                // SAFETY: value pointer from a lookup, valid for this run.
                .is_some_and(|ep| unsafe { (*ep).vni } == iface.vni)
            || lb::is_vip(tpa, iface.vni));
    if !answerable {
        return drop_frame(OverlayCounter::DropArp, len);
    }
    // Ethernet: back to the asker, from its host veth.
    let mut eth = [0u8; 12];
    eth[..6].copy_from_slice(&sha);
    eth[6..].copy_from_slice(&iface.host_mac);
    // ARP body from the operation on: op, sha, spa, tha, tpa.
    let mut arp = [0u8; 22];
    arp[..2].copy_from_slice(&ARP_OP_REPLY.to_be_bytes());
    arp[2..8].copy_from_slice(&iface.host_mac);
    arp[8..12].copy_from_slice(&tpa);
    arp[12..18].copy_from_slice(&sha);
    arp[18..22].copy_from_slice(&spa);
    if ctx.store(0, &eth, 0).is_err() || ctx.store(ARP_OP, &arp, 0).is_err() {
        return drop_frame(OverlayCounter::DropHelperFailed, len);
    }
    count(OverlayCounter::ArpAnswered, len);
    // SAFETY: plain helper call; the verdict it returns is ours.
    unsafe { bpf_redirect(ifindex, 0) as i32 }
}

#[inline(always)]
fn route_ipv4(ctx: &TcContext, iface: &IfaceValue, len: u32) -> i32 {
    if (len as usize) < IP_MIN_END {
        return drop_frame(OverlayCounter::DropMalformed, len);
    }
    let Ok(dst) = ctx.load::<[u8; 4]>(IP_DST) else {
        return drop_frame(OverlayCounter::DropMalformed, len);
    };
    let mut balanced = None;
    if let Some(l4) = lb::parse_l4(ctx) {
        match lb::vip_forward(ctx, iface.vni, &l4, len) {
            Err(verdict) => return verdict,
            Ok(Some(ep)) => balanced = Some(ep),
            Ok(None) => {
                if subnet_of(dst).is_none() {
                    // A backend answering a client that came in through
                    // the routing mesh.
                    if let Some(verdict) = lb::mesh_reply(ctx, &l4, false, len) {
                        return verdict;
                    }
                } else {
                    lb::direct_flow(&l4);
                }
            }
        }
    }
    let ep = balanced.or_else(|| {
        ENDPOINTS.get_ptr(dst).map(|ep| {
            // SAFETY: value pointer from a lookup, valid for this run.
            unsafe { *ep }
        })
    });
    if let Some(ep) = ep {
        if ep.vni != iface.vni {
            return drop_frame(OverlayCounter::DropIsolation, len);
        }
        if ep.is_local() {
            return deliver_local(ctx, &ep, OverlayCounter::LocalForward, len);
        }
        return tunnel_to(ctx, ep.vni, ep.node_ip, len);
    }
    match subnet_of(dst) {
        // Outside every overlay: the host stack (and its NAT) decides.
        None => {
            count(OverlayCounter::PassedToHost, len);
            TC_ACT_OK
        }
        Some(s) if s.vni != iface.vni => drop_frame(OverlayCounter::DropIsolation, len),
        // The gateway itself has no endpoint: let the host answer (or not).
        Some(s) if s.gateway == dst => {
            count(OverlayCounter::PassedToHost, len);
            TC_ACT_OK
        }
        Some(_) => drop_frame(OverlayCounter::DropUnknownEndpoint, len),
    }
}

/// Sends the frame to the node with underlay address `node` on network
/// `vni`.
#[inline(always)]
pub fn tunnel_to(ctx: &TcContext, vni: u32, node: [u8; 4], len: u32) -> i32 {
    let vxlan = CONFIG.get(0).map_or(0, |c| c.vxlan_ifindex);
    if vxlan == 0 {
        return drop_frame(OverlayCounter::DropNoTunnelDevice, len);
    }
    let mut key = bpf_tunnel_key {
        tunnel_id: vni,
        __bindgen_anon_1: bpf_tunnel_key__bindgen_ty_1 {
            // The helper takes host byte order.
            remote_ipv4: u32::from_be_bytes(node),
        },
        tunnel_tos: 0,
        tunnel_ttl: TUNNEL_TTL,
        __bindgen_anon_2: bpf_tunnel_key__bindgen_ty_2 { tunnel_ext: 0 },
        tunnel_label: 0,
        // Zero: the kernel picks the source address by route lookup.
        __bindgen_anon_3: bpf_tunnel_key__bindgen_ty_3 { local_ipv4: 0 },
    };
    // No outer UDP checksum, as the kernel's own IPv4 VXLAN does by default:
    // the inner packet carries its own.
    // SAFETY: key is a valid, fully initialised bpf_tunnel_key of the size
    // passed.
    let r = unsafe {
        bpf_skb_set_tunnel_key(
            ctx.skb.skb,
            &mut key,
            core::mem::size_of::<bpf_tunnel_key>() as u32,
            u64::from(BPF_F_ZERO_CSUM_TX),
        )
    };
    if r != 0 {
        return drop_frame(OverlayCounter::DropHelperFailed, len);
    }
    count(OverlayCounter::Encapsulated, len);
    // SAFETY: plain helper call; the verdict it returns is ours.
    unsafe { bpf_redirect(vxlan, 0) as i32 }
}

/// TC ingress of the VXLAN device: frames decapsulated from other nodes.
/// Only a local endpoint of the frame's own VNI receives it.
#[classifier]
pub fn swarm_ovl_vxlan_ingress(ctx: TcContext) -> i32 {
    let (_, len) = skb_meta(&ctx);
    // SAFETY: all-zero is a valid bpf_tunnel_key (plain integers).
    let mut key: bpf_tunnel_key = unsafe { core::mem::zeroed() };
    // SAFETY: key is writable and of the size passed.
    let r = unsafe {
        bpf_skb_get_tunnel_key(
            ctx.skb.skb,
            &mut key,
            core::mem::size_of::<bpf_tunnel_key>() as u32,
            0,
        )
    };
    if r != 0 {
        return drop_frame(OverlayCounter::DropNoTunnelKey, len);
    }
    let Ok(ethertype) = ctx.load::<[u8; 2]>(12) else {
        return drop_frame(OverlayCounter::DropMalformed, len);
    };
    match u16::from_be_bytes(ethertype) {
        ETH_P_IP => {}
        // Neighbour resolution never crosses the tunnel (every node answers
        // its own containers).
        ETH_P_ARP => return drop_frame(OverlayCounter::DropArp, len),
        _ => return drop_frame(OverlayCounter::DropUnsupported, len),
    }
    if (len as usize) < IP_MIN_END {
        return drop_frame(OverlayCounter::DropMalformed, len);
    }
    let Ok(dst) = ctx.load::<[u8; 4]>(IP_DST) else {
        return drop_frame(OverlayCounter::DropMalformed, len);
    };
    let l4 = lb::parse_l4(&ctx);
    let Some(ep) = ENDPOINTS.get_ptr(dst) else {
        // A mesh reply on its way back to the client, through the node
        // the client came in by.
        if let Some(l4) = &l4
            && subnet_of(dst).is_none()
            && let Some(verdict) = lb::mesh_reply(&ctx, l4, true, len)
        {
            return verdict;
        }
        return drop_frame(OverlayCounter::DropUnknownEndpoint, len);
    };
    // SAFETY: value pointer from a lookup, valid for this run.
    let ep = unsafe { *ep };
    if !ep.is_local() {
        return drop_frame(OverlayCounter::DropUnknownEndpoint, len);
    }
    if ep.vni != key.tunnel_id {
        return drop_frame(OverlayCounter::DropIsolation, len);
    }
    if let Some(l4) = &l4
        && subnet_of(l4.key.src).is_none()
    {
        // SAFETY: reading the union member the helper filled for IPv4.
        let node = unsafe { key.__bindgen_anon_1.remote_ipv4 }.to_be_bytes();
        lb::mesh_remember_ingress(l4, node, key.tunnel_id);
    }
    deliver_local(&ctx, &ep, OverlayCounter::Decapsulated, len)
}
