//! The swarm data plane's kernel side: XDP and TC programs.
//!
//! Owns per-packet work only: classify, count, (later) translate and
//! encapsulate. Never decides policy: everything it needs to know arrives
//! through maps that the agent fills. Every loop is bounded, every packet
//! access is bounds-checked, and any parse failure passes the packet on
//! untouched so the kernel stays the authority on what is valid.
#![no_std]
#![no_main]

mod lb;
mod overlay;

use aya_ebpf::{
    bindings::{TC_ACT_OK, xdp_action},
    macros::{classifier, map, xdp},
    maps::PerCpuHashMap,
    programs::{TcContext, XdpContext},
};
use swarm_ebpf_common::{COUNTERS_MAX_ENTRIES, CounterKey, Direction, PacketCounter, TrafficClass};

/// Packets and bytes per interface, direction and traffic class.
#[map(name = "SWARM_COUNTERS")]
static SWARM_COUNTERS: PerCpuHashMap<CounterKey, PacketCounter> =
    PerCpuHashMap::with_max_entries(COUNTERS_MAX_ENTRIES, 0);

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
/// `BPF_NOEXIST`: insert only if absent, so two CPUs racing on a new key do
/// not overwrite each other's first count.
const BPF_NOEXIST: u64 = 1;

#[inline(always)]
fn count(ifindex: u32, direction: Direction, class: TrafficClass, len: u64) {
    let key = CounterKey::new(ifindex, direction, class);
    for _ in 0..2 {
        if let Some(c) = SWARM_COUNTERS.get_ptr_mut(key) {
            // SAFETY: per-CPU value: no other CPU writes this slot, and the
            // pointer comes from the map lookup, valid for this program run.
            unsafe {
                (*c).packets += 1;
                (*c).bytes += len;
            }
            return;
        }
        let first = PacketCounter {
            packets: 1,
            bytes: len,
        };
        if SWARM_COUNTERS.insert(key, first, BPF_NOEXIST).is_ok() {
            return;
        }
        // Lost the insert race (or the map is full): look up once more.
    }
}

#[inline(always)]
fn classify_l3(ethertype: u16, ip_proto: Option<u8>) -> TrafficClass {
    match ethertype {
        ETH_P_IP => match ip_proto {
            Some(IPPROTO_TCP) => TrafficClass::Ipv4Tcp,
            Some(IPPROTO_UDP) => TrafficClass::Ipv4Udp,
            Some(IPPROTO_ICMP) => TrafficClass::Ipv4Icmp,
            Some(_) => TrafficClass::Ipv4Other,
            None => TrafficClass::Malformed,
        },
        ETH_P_IPV6 => TrafficClass::Ipv6,
        ETH_P_ARP => TrafficClass::Arp,
        _ => TrafficClass::Other,
    }
}

/// Reads a big-endian u16 at `off` from an XDP frame, bounds-checked.
#[inline(always)]
fn xdp_u16(ctx: &XdpContext, off: usize) -> Option<u16> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + 2 > end {
        return None;
    }
    let p = (start + off) as *const [u8; 2];
    // SAFETY: bounds checked against data_end above.
    Some(u16::from_be_bytes(unsafe { *p }))
}

#[inline(always)]
fn xdp_u8(ctx: &XdpContext, off: usize) -> Option<u8> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + 1 > end {
        return None;
    }
    // SAFETY: bounds checked against data_end above.
    Some(unsafe { *((start + off) as *const u8) })
}

fn xdp_classify(ctx: &XdpContext) -> TrafficClass {
    let Some(mut ethertype) = xdp_u16(ctx, 12) else {
        return TrafficClass::Malformed;
    };
    let mut l3 = ETH_HLEN;
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        let Some(inner) = xdp_u16(ctx, 16) else {
            return TrafficClass::Malformed;
        };
        ethertype = inner;
        l3 += 4;
    }
    let proto = if ethertype == ETH_P_IP {
        xdp_u8(ctx, l3 + 9)
    } else {
        Some(0)
    };
    classify_l3(ethertype, proto)
}

/// Counts every frame received on the interface, then passes it on.
#[xdp]
pub fn swarm_xdp_ingress(ctx: XdpContext) -> u32 {
    let class = xdp_classify(&ctx);
    let len = (ctx.data_end() - ctx.data()) as u64;
    // SAFETY: ctx.ctx is the kernel's xdp_md for this run.
    let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    count(ifindex, Direction::Ingress, class, len);
    xdp_action::XDP_PASS
}

fn tc_classify(ctx: &TcContext) -> TrafficClass {
    let Ok(raw) = ctx.load::<[u8; 2]>(12) else {
        return TrafficClass::Malformed;
    };
    let mut ethertype = u16::from_be_bytes(raw);
    let mut l3 = ETH_HLEN;
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        let Ok(inner) = ctx.load::<[u8; 2]>(16) else {
            return TrafficClass::Malformed;
        };
        ethertype = u16::from_be_bytes(inner);
        l3 += 4;
    }
    let proto = if ethertype == ETH_P_IP {
        ctx.load::<u8>(l3 + 9).ok()
    } else {
        Some(0)
    };
    classify_l3(ethertype, proto)
}

/// Counts every frame sent from the interface, then lets it go.
#[classifier]
pub fn swarm_tc_egress(ctx: TcContext) -> i32 {
    let class = tc_classify(&ctx);
    // SAFETY: ctx.skb is the kernel's __sk_buff for this run.
    let (ifindex, len) = unsafe { ((*ctx.skb.skb).ifindex, (*ctx.skb.skb).len) };
    count(ifindex, Direction::Egress, class, len as u64);
    TC_ACT_OK
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
