//! The eBPF implementation of [`Dataplane`]: XDP on ingress, TC on egress,
//! and the overlay's TC programs (see [`overlay`]).
//!
//! Loads the object built from `swarm-ebpf` (embedded at compile time),
//! attaches its programs to the interfaces it is given, and reads the
//! per-CPU counter maps. Loading attaches nothing: a node may use the
//! overlay without any `--dataplane-interface`. Programs stay attached exactly as long as this value
//! lives: dropping it detaches them (pinning for restart survival comes with
//! the load balancer).
mod overlay;

use std::{collections::BTreeMap, ffi::CString, net::Ipv4Addr};

use aya::{
    Ebpf,
    maps::PerCpuHashMap,
    programs::{
        SchedClassifier, TcAttachType, Xdp, XdpMode as AyaXdpMode, tc::SchedClassifierLinkId,
        xdp::XdpLinkId,
    },
};
use swarm_ebpf_common::{
    COUNTERS_MAP, COUNTERS_MAX_ENTRIES, CounterKey, Direction, OVERLAY_VETH_PROG,
    OVERLAY_VXLAN_PROG, PacketCounter, TC_EGRESS_PROG, TrafficClass, XDP_INGRESS_PROG,
};

use super::{
    AttachedInterface, AttachedProgram, Counter, Dataplane, DataplaneError, DataplaneStatus,
    LocalEndpoint, MapUsage, OverlayInfo, XdpMode,
    overlay::{DEFAULT_VXLAN_DEVICE, OverlayBook},
};

/// The compiled programs, 8-byte aligned as aya's ELF parser wants.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/swarm-ebpf"));

struct Attachment {
    ifindex: u32,
    xdp: XdpLinkId,
    xdp_mode: &'static str,
    tc: SchedClassifierLinkId,
}

pub struct EbpfDataplane {
    ebpf: Ebpf,
    xdp_mode: XdpMode,
    attached: BTreeMap<String, Attachment>,
    /// Name the overlay's VXLAN device gets.
    vxlan_name: String,
    overlay: Option<overlay::OverlayDevice>,
    book: OverlayBook,
    /// Host veths with the overlay program attached, by ifindex.
    veth_links: BTreeMap<u32, SchedClassifierLinkId>,
}

impl std::fmt::Debug for EbpfDataplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EbpfDataplane")
            .field("xdp_mode", &self.xdp_mode)
            .field("attached", &self.attached.keys().collect::<Vec<_>>())
            .field("vxlan_name", &self.vxlan_name)
            .field("overlay_veths", &self.veth_links.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn ifindex_of(name: &str) -> Result<u32, DataplaneError> {
    let c = CString::new(name).map_err(|_| DataplaneError::NoSuchInterface(name.into()))?;
    // SAFETY: c is a valid NUL-terminated string for the call's duration.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        return Err(DataplaneError::NoSuchInterface(name.into()));
    }
    Ok(idx)
}

impl EbpfDataplane {
    /// Loads and verifies the programs; attaches nothing yet.
    pub fn load(xdp_mode: XdpMode) -> Result<Self, DataplaneError> {
        let mut ebpf = Ebpf::load(OBJECT).map_err(|e| DataplaneError::Load(e.to_string()))?;
        let xdp: &mut Xdp = program(&mut ebpf, XDP_INGRESS_PROG)?;
        xdp.load()
            .map_err(|e| DataplaneError::Load(format!("{XDP_INGRESS_PROG}: {e}")))?;
        for name in [TC_EGRESS_PROG, OVERLAY_VETH_PROG, OVERLAY_VXLAN_PROG] {
            let tc: &mut SchedClassifier = program(&mut ebpf, name)?;
            tc.load()
                .map_err(|e| DataplaneError::Load(format!("{name}: {}", error_chain(&e))))?;
        }
        Ok(EbpfDataplane {
            ebpf,
            xdp_mode,
            attached: BTreeMap::new(),
            vxlan_name: DEFAULT_VXLAN_DEVICE.into(),
            overlay: None,
            book: OverlayBook::default(),
            veth_links: BTreeMap::new(),
        })
    }

    /// Names the overlay's VXLAN device (default `swarm-vx`); takes effect
    /// at the next [`Dataplane::overlay_start`].
    #[must_use]
    pub fn with_vxlan_device(mut self, name: &str) -> Self {
        self.vxlan_name = name.into();
        self
    }

    fn attach_xdp(
        &mut self,
        interface: &str,
        ifindex: u32,
    ) -> Result<(XdpLinkId, &'static str), DataplaneError> {
        let xdp: &mut Xdp = program(&mut self.ebpf, XDP_INGRESS_PROG)?;
        let attach_err = |e: aya::programs::ProgramError| DataplaneError::Attach {
            program: XDP_INGRESS_PROG,
            interface: interface.into(),
            reason: error_chain(&e),
        };
        match self.xdp_mode {
            XdpMode::Native => xdp
                .attach_to_if_index(ifindex, AyaXdpMode::Driver)
                .map(|l| (l, "xdp-native"))
                .map_err(attach_err),
            XdpMode::Generic => xdp
                .attach_to_if_index(ifindex, AyaXdpMode::Skb)
                .map(|l| (l, "xdp-generic"))
                .map_err(attach_err),
            XdpMode::Auto => match xdp.attach_to_if_index(ifindex, AyaXdpMode::Driver) {
                Ok(l) => Ok((l, "xdp-native")),
                Err(e) => {
                    tracing::info!(interface, error = %error_chain(&e), "native XDP unavailable; using generic XDP");
                    xdp.attach_to_if_index(ifindex, AyaXdpMode::Skb)
                        .map(|l| (l, "xdp-generic"))
                        .map_err(attach_err)
                }
            },
        }
    }
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, DataplaneError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let p = ebpf
        .program_mut(name)
        .ok_or_else(|| DataplaneError::Load(format!("program {name} missing from the object")))?;
    p.try_into()
        .map_err(|e: aya::programs::ProgramError| DataplaneError::Load(format!("{name}: {e}")))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

impl Dataplane for EbpfDataplane {
    fn backend(&self) -> &'static str {
        "ebpf"
    }

    fn attach(&mut self, interface: &str) -> Result<(), DataplaneError> {
        if self.attached.contains_key(interface) {
            return Err(DataplaneError::AlreadyAttached(interface.into()));
        }
        let ifindex = ifindex_of(interface)?;
        let (xdp, xdp_mode) = self.attach_xdp(interface, ifindex)?;
        let tc: &mut SchedClassifier = program(&mut self.ebpf, TC_EGRESS_PROG)?;
        let tc_link = match tc.attach(interface, TcAttachType::Egress) {
            Ok(l) => l,
            Err(e) => {
                let reason = error_chain(&e);
                // Leave nothing half-attached.
                if let Ok(x) = program::<Xdp>(&mut self.ebpf, XDP_INGRESS_PROG) {
                    let _ = x.detach(xdp);
                }
                return Err(DataplaneError::Attach {
                    program: TC_EGRESS_PROG,
                    interface: interface.into(),
                    reason,
                });
            }
        };
        tracing::info!(interface, ifindex, xdp_mode, "data plane attached");
        self.attached.insert(
            interface.to_string(),
            Attachment {
                ifindex,
                xdp,
                xdp_mode,
                tc: tc_link,
            },
        );
        Ok(())
    }

    fn detach(&mut self, interface: &str) {
        let Some(a) = self.attached.remove(interface) else {
            return;
        };
        if let Ok(x) = program::<Xdp>(&mut self.ebpf, XDP_INGRESS_PROG)
            && let Err(e) = x.detach(a.xdp)
        {
            tracing::warn!(interface, error = %e, "detaching XDP failed");
        }
        if let Ok(t) = program::<SchedClassifier>(&mut self.ebpf, TC_EGRESS_PROG)
            && let Err(e) = t.detach(a.tc)
        {
            tracing::warn!(interface, error = %e, "detaching TC failed");
        }
        tracing::info!(interface, "data plane detached");
    }

    fn status(&self) -> Result<DataplaneStatus, DataplaneError> {
        let interfaces = self
            .attached
            .iter()
            .map(|(name, a)| AttachedInterface {
                name: name.clone(),
                ifindex: a.ifindex,
                programs: vec![
                    AttachedProgram {
                        name: XDP_INGRESS_PROG.into(),
                        kind: "xdp".into(),
                        attach_mode: a.xdp_mode.into(),
                    },
                    AttachedProgram {
                        name: TC_EGRESS_PROG.into(),
                        kind: "tc".into(),
                        attach_mode: "tcx-egress".into(),
                    },
                ],
            })
            .collect::<Vec<_>>();
        let names: BTreeMap<u32, &str> = self
            .attached
            .iter()
            .map(|(n, a)| (a.ifindex, n.as_str()))
            .collect();

        let map = self.ebpf.map(COUNTERS_MAP).ok_or(DataplaneError::MapRead {
            map: "SWARM_COUNTERS",
            reason: "missing from the object".into(),
        })?;
        let map: PerCpuHashMap<_, CounterKey, PacketCounter> = PerCpuHashMap::try_from(map)
            .map_err(|e| DataplaneError::MapRead {
                map: "SWARM_COUNTERS",
                reason: e.to_string(),
            })?;
        let mut counters = BTreeMap::new();
        let mut entries = 0_u64;
        for entry in map.iter() {
            entries += 1;
            let (key, per_cpu) = entry.map_err(|e| DataplaneError::MapRead {
                map: "SWARM_COUNTERS",
                reason: e.to_string(),
            })?;
            let (Some(dir), Some(class)) = (
                Direction::from_u8(key.direction),
                TrafficClass::from_u8(key.class),
            ) else {
                continue;
            };
            let iface = names
                .get(&key.ifindex)
                .map_or_else(|| format!("if{}", key.ifindex), |n| (*n).to_string());
            let total = per_cpu.iter().fold(Counter::default(), |acc, c| Counter {
                packets: acc.packets + c.packets,
                bytes: acc.bytes + c.bytes,
            });
            let slot: &mut Counter = counters
                .entry((iface, dir.as_str(), class.as_str()))
                .or_default();
            slot.packets += total.packets;
            slot.bytes += total.bytes;
        }
        let (overlay, overlay_maps) = self.overlay_status()?;
        let mut maps = vec![MapUsage {
            name: COUNTERS_MAP.into(),
            entries,
            capacity: COUNTERS_MAX_ENTRIES,
        }];
        maps.extend(overlay_maps);
        Ok(DataplaneStatus {
            backend: self.backend().into(),
            interfaces,
            counters,
            maps,
            overlay,
        })
    }

    fn overlay_start(&mut self, vxlan_port: u16) -> Result<OverlayInfo, DataplaneError> {
        self.overlay_start_impl(vxlan_port)
    }

    fn set_overlay_network(
        &mut self,
        vni: u32,
        subnet: ipnet::Ipv4Net,
        gateway: Ipv4Addr,
    ) -> Result<(), DataplaneError> {
        self.set_network_impl(vni, subnet, gateway)
    }

    fn remove_overlay_network(&mut self, vni: u32) -> Result<(), DataplaneError> {
        self.remove_network_impl(vni)
    }

    fn set_local_endpoint(&mut self, ep: LocalEndpoint) -> Result<(), DataplaneError> {
        self.set_local_impl(ep)
    }

    fn set_remote_endpoint(
        &mut self,
        vni: u32,
        addr: Ipv4Addr,
        node: Ipv4Addr,
    ) -> Result<(), DataplaneError> {
        self.set_remote_impl(vni, addr, node)
    }

    fn remove_endpoint(&mut self, addr: Ipv4Addr) -> Result<(), DataplaneError> {
        self.remove_endpoint_impl(addr)
    }
}
