//! The eBPF implementation of [`Dataplane`]: XDP on ingress, TC on egress,
//! and the overlay's TC programs (see [`overlay`]).
//!
//! Loads the object built from `swarm-ebpf` (embedded at compile time),
//! attaches its programs to the interfaces it is given, and reads the
//! per-CPU counter maps. Loading attaches nothing: a node may use the
//! overlay without any `--dataplane-interface`.
//!
//! Lifetime: loaded with [`EbpfDataplane::load`], programs stay attached
//! exactly as long as this value lives. Loaded with
//! [`EbpfDataplane::load_pinned`], the maps and the TC links of the overlay
//! and the load balancer are pinned in a bpffs and outlive the process:
//! traffic keeps flowing while the agent is down, and the next agent adopts
//! the maps and replaces the programs in the links atomically, then
//! reconciles ([`Dataplane::adoption_done`]). (The XDP/TC counters of
//! `--dataplane-interface` are not pinned: they only count.)
//!
//! Upgrades: pinned maps live in a directory named for the layout of the
//! object's maps ([`maps_dir_name`]). An agent whose programs expect other
//! maps starts with empty ones (and removes the old), never handing its
//! programs maps of another shape; its links still get the new programs
//! atomically, and tracked connections are balanced again to the same
//! backends while the backend sets are unchanged.
mod lb;
mod overlay;

#[cfg(test)]
pub(crate) use lb::monotonic_now_ns;

use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::CString,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::PerCpuHashMap,
    programs::{
        SchedClassifier, TcAttachType, Xdp, XdpMode as AyaXdpMode,
        links::{FdLink, PinnedLink},
        tc::{SchedClassifierLink, SchedClassifierLinkId},
        xdp::XdpLinkId,
    },
};
use swarm_ebpf_common::{
    ALL_MAPS, COUNTERS_MAP, COUNTERS_MAX_ENTRIES, CounterKey, Direction, MAP_LAYOUT_VERSION,
    OVERLAY_VETH_PROG, OVERLAY_VXLAN_PROG, PacketCounter, TC_EGRESS_PROG, TrafficClass,
    XDP_INGRESS_PROG,
};

use super::{
    AdoptionReport, AttachedInterface, AttachedProgram, Backend, Counter, CtGcReport, Dataplane,
    DataplaneError, DataplaneStatus, LocalEndpoint, MapUsage, OverlayInfo, ServiceFrontend,
    XdpMode,
    lb::LbBook,
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

/// A TCX link this data plane holds. Dropping it detaches the program
/// unless the link is pinned; [`HeldLink::release`] always detaches.
pub(super) struct HeldLink {
    link: FdLink,
    pin: Option<PathBuf>,
}

impl HeldLink {
    fn release(self) {
        if let Some(p) = &self.pin
            && let Err(e) = std::fs::remove_file(p)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %p.display(), error = %e, "unpinning a link failed");
        }
        drop(self.link);
    }
}

/// Where pinned state lives: `<root>/maps/<MAP>`, `<root>/links/<name>`.
#[derive(Clone, Debug)]
struct PinDirs {
    maps: PathBuf,
    links: PathBuf,
}

/// What a previous agent left in the pinned maps, until
/// [`Dataplane::adoption_done`] removes what was not claimed again.
#[derive(Debug, Default)]
struct Adopted {
    endpoints: Vec<[u8; 4]>,
    ifaces: Vec<u32>,
    subnets: Vec<(u32, [u8; 4])>,
    frontends: Vec<swarm_ebpf_common::FrontendKey>,
    vips: Vec<[u8; 4]>,
}

pub struct EbpfDataplane {
    ebpf: Ebpf,
    pins: Option<PinDirs>,
    adopted: Option<Adopted>,
    lb: LbBook,
    mesh: Option<lb::Mesh>,
    ct_last: CtGcReport,
    ct_expired_total: u64,
    xdp_mode: XdpMode,
    attached: BTreeMap<String, Attachment>,
    /// Name the overlay's VXLAN device gets.
    vxlan_name: String,
    overlay: Option<overlay::OverlayDevice>,
    book: OverlayBook,
    /// Host veths with the overlay program attached, by ifindex.
    veth_links: BTreeMap<u32, HeldLink>,
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

/// The directory name of pinned maps for `object`: `maps-` and a digest
/// of every pinned map's name, type, key and value sizes, capacity and
/// flags, plus [`MAP_LAYOUT_VERSION`] for changes of meaning at the same
/// sizes. Builds with the same maps share it (and their state survives
/// the upgrade); any other change gets fresh maps.
fn maps_dir_name(object: &[u8]) -> Result<String, DataplaneError> {
    use sha2::{Digest, Sha256};
    let obj = aya_obj::Object::parse(object)
        .map_err(|e| DataplaneError::Load(format!("parsing the eBPF object: {e}")))?;
    let mut maps: Vec<String> = obj
        .maps
        .iter()
        .filter(|(name, _)| ALL_MAPS.contains(&name.as_str()))
        .map(|(name, m)| {
            format!(
                "{name} {} {} {} {} {}",
                m.map_type(),
                m.key_size(),
                m.value_size(),
                m.max_entries(),
                m.map_flags()
            )
        })
        .collect();
    maps.sort();
    let mut h = Sha256::new();
    h.update(MAP_LAYOUT_VERSION.to_le_bytes());
    for m in &maps {
        h.update(m.as_bytes());
        h.update(b"\n");
    }
    let digest: String = h.finalize()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(format!("maps-{digest}"))
}

/// Removes pinned maps of other layouts under `bpffs_dir` (an upgrade or
/// a downgrade changed them). Programs still running on them keep them
/// alive until their links get this build's programs.
fn remove_other_map_dirs(bpffs_dir: &Path, keep: &Path) {
    let Ok(dir) = std::fs::read_dir(bpffs_dir) else {
        return;
    };
    for entry in dir.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        // "maps": before layouts had names. (A fresh bpffs also holds the
        // kernel's own "maps.debug".)
        let is_maps = name == "maps" || name.starts_with("maps-");
        if is_maps && path != keep && path.is_dir() {
            match std::fs::remove_dir_all(&path) {
                Ok(()) => tracing::info!(
                    dir = %path.display(),
                    "pinned maps of another layout removed: this build starts with empty ones"
                ),
                Err(e) => tracing::warn!(
                    dir = %path.display(),
                    error = %e,
                    "cannot remove pinned maps of another layout"
                ),
            }
        }
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
    /// Loads and verifies the programs; attaches nothing yet. Nothing
    /// outlives the returned value.
    pub fn load(xdp_mode: XdpMode) -> Result<Self, DataplaneError> {
        Self::load_inner(xdp_mode, None)
    }

    /// Like [`Self::load`], with maps and links pinned under `bpffs_dir`
    /// (mounted as a bpffs there if it is not one: `ip netns exec` hides
    /// `/sys/fs/bpf`). Maps a previous agent pinned there are adopted with
    /// their contents, and its links get the new programs as they are set
    /// again; call [`Dataplane::adoption_done`] once everything is.
    pub fn load_pinned(xdp_mode: XdpMode, bpffs_dir: &Path) -> Result<Self, DataplaneError> {
        ensure_bpffs(bpffs_dir)?;
        let pins = PinDirs {
            maps: bpffs_dir.join(maps_dir_name(OBJECT)?),
            links: bpffs_dir.join("links"),
        };
        remove_other_map_dirs(bpffs_dir, &pins.maps);
        for d in [&pins.maps, &pins.links] {
            std::fs::create_dir_all(d).map_err(|e| pin_err(d, &e))?;
        }
        Self::load_inner(xdp_mode, Some(pins))
    }

    /// Whether this data plane adopted a previous agent's pinned state and
    /// [`Dataplane::adoption_done`] has not run yet.
    pub fn is_adopting(&self) -> bool {
        self.adopted.is_some()
    }

    fn load_inner(xdp_mode: XdpMode, pins: Option<PinDirs>) -> Result<Self, DataplaneError> {
        let mut loader = EbpfLoader::new();
        let mut adopting = false;
        let paths: Vec<(&str, PathBuf)> = pins
            .as_ref()
            .map(|p| ALL_MAPS.iter().map(|m| (*m, p.maps.join(m))).collect())
            .unwrap_or_default();
        for (name, path) in &paths {
            adopting |= path.exists();
            loader.map_pin_path(name, path.as_path());
        }
        // Links without maps: a previous agent of another map layout. Its
        // links are taken over (and the unclaimed ones swept) all the same.
        adopting |= pins
            .as_ref()
            .and_then(|p| std::fs::read_dir(&p.links).ok())
            .is_some_and(|mut d| d.next().is_some());
        let mut ebpf = loader
            .load(OBJECT)
            .map_err(|e| DataplaneError::Load(error_chain(&e)))?;
        let xdp: &mut Xdp = program(&mut ebpf, XDP_INGRESS_PROG)?;
        xdp.load()
            .map_err(|e| DataplaneError::Load(format!("{XDP_INGRESS_PROG}: {e}")))?;
        for name in [
            TC_EGRESS_PROG,
            OVERLAY_VETH_PROG,
            OVERLAY_VXLAN_PROG,
            swarm_ebpf_common::LB_MESH_PROG,
        ] {
            let tc: &mut SchedClassifier = program(&mut ebpf, name)?;
            tc.load()
                .map_err(|e| DataplaneError::Load(format!("{name}: {}", error_chain(&e))))?;
        }
        let mut dp = EbpfDataplane {
            ebpf,
            pins,
            adopted: None,
            lb: LbBook::default(),
            mesh: None,
            ct_last: CtGcReport::default(),
            ct_expired_total: 0,
            xdp_mode,
            attached: BTreeMap::new(),
            vxlan_name: DEFAULT_VXLAN_DEVICE.into(),
            overlay: None,
            book: OverlayBook::default(),
            veth_links: BTreeMap::new(),
        };
        if adopting {
            dp.adopt()?;
        }
        Ok(dp)
    }

    /// Attaches TC program `prog_name` to `interface`'s ingress. With
    /// pinning, the link is pinned as `pin_name`, and a link already pinned
    /// there (a previous agent's) gets the program swapped in atomically
    /// instead: its traffic never sees the hook empty.
    fn attach_tc(
        &mut self,
        prog_name: &'static str,
        interface: &str,
        pin_name: &str,
    ) -> Result<HeldLink, DataplaneError> {
        let pin = self.pins.as_ref().map(|p| p.links.join(pin_name));
        let prog: &mut SchedClassifier = program(&mut self.ebpf, prog_name)?;
        let attach_err = |reason: String| DataplaneError::Attach {
            program: prog_name,
            interface: interface.into(),
            reason,
        };
        if let Some(path) = &pin
            && path.exists()
        {
            let adopted = PinnedLink::from_pin(path)
                .map_err(|e| error_chain(&e))
                .and_then(|old| {
                    SchedClassifierLink::try_from(FdLink::from(old)).map_err(|e| error_chain(&e))
                })
                .and_then(|l| prog.attach_to_link(l).map_err(|e| error_chain(&e)));
            match adopted {
                Ok(id) => {
                    let link = prog
                        .take_link(id)
                        .map_err(|e| attach_err(error_chain(&e)))?;
                    let link = FdLink::try_from(link).map_err(|e| attach_err(error_chain(&e)))?;
                    tracing::debug!(interface, pin_name, "adopted a pinned link");
                    return Ok(HeldLink { link, pin });
                }
                Err(reason) => {
                    // Its interface is gone, or the pin is not a TC link:
                    // start afresh.
                    tracing::debug!(interface, pin_name, %reason, "not adopting a pinned link");
                    let _ = std::fs::remove_file(path);
                }
            }
        }
        let id = prog
            .attach(interface, TcAttachType::Ingress)
            .map_err(|e| attach_err(error_chain(&e)))?;
        let link = prog
            .take_link(id)
            .map_err(|e| attach_err(error_chain(&e)))?;
        let link = FdLink::try_from(link).map_err(|e| {
            attach_err(format!(
                "not a TCX link ({}); the kernel needs TCX (6.6 or newer)",
                error_chain(&e)
            ))
        })?;
        match pin {
            Some(path) => {
                let pinned = link.pin(&path).map_err(|e| pin_err(&path, &e))?;
                Ok(HeldLink {
                    link: pinned.into(),
                    pin: Some(path),
                })
            }
            None => Ok(HeldLink { link, pin: None }),
        }
    }

    /// Reads what a previous agent left, so [`Dataplane::adoption_done`]
    /// can remove what is not set again.
    fn adopt(&mut self) -> Result<(), DataplaneError> {
        let mut a = overlay::adopted_overlay(&mut self.ebpf)?;
        let f = lb::adopted_frontends(&mut self.ebpf)?;
        a.frontends = f.keys;
        a.vips = f.vips;
        self.lb.reserve_slots(f.slots);
        tracing::info!(
            endpoints = a.endpoints.len(),
            frontends = a.frontends.len(),
            "adopting the data plane state a previous agent pinned"
        );
        self.adopted = Some(a);
        Ok(())
    }

    fn adoption_done_impl(&mut self) -> Result<AdoptionReport, DataplaneError> {
        let Some(a) = self.adopted.take() else {
            return Ok(AdoptionReport::default());
        };
        let mut report = overlay::sweep_adopted(self, &a)?;
        report.frontends = lb::sweep_adopted(self, &a)?;
        self.lb.clear_reserved();
        if let Some(p) = &self.pins {
            let mut held: BTreeSet<PathBuf> = self
                .veth_links
                .values()
                .filter_map(|l| l.pin.clone())
                .collect();
            held.extend(self.overlay.as_ref().and_then(|o| o.link.pin.clone()));
            held.extend(self.mesh.as_ref().and_then(|m| m.link.pin.clone()));
            if let Ok(dir) = std::fs::read_dir(&p.links) {
                for entry in dir.flatten() {
                    let path = entry.path();
                    if !held.contains(&path) && std::fs::remove_file(&path).is_ok() {
                        report.links += 1;
                    }
                }
            }
        }
        tracing::info!(?report, "adoption done: unclaimed state removed");
        Ok(report)
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

fn pin_err(path: &Path, e: &dyn std::error::Error) -> DataplaneError {
    DataplaneError::Pin {
        path: path.display().to_string(),
        reason: error_chain(e),
    }
}

/// `BPF_FS_MAGIC` from linux/magic.h.
const BPF_FS_MAGIC: u64 = 0xcafe_4a11;

/// Makes `dir` a bpffs: mounts one there unless it already is.
fn ensure_bpffs(dir: &Path) -> Result<(), DataplaneError> {
    std::fs::create_dir_all(dir).map_err(|e| pin_err(dir, &e))?;
    let st = rustix::fs::statfs(dir).map_err(|e| pin_err(dir, &e))?;
    #[allow(clippy::useless_conversion, clippy::unnecessary_cast)]
    if st.f_type as u64 == BPF_FS_MAGIC {
        return Ok(());
    }
    rustix::mount::mount("bpf", dir, "bpf", rustix::mount::MountFlags::empty(), None)
        .map_err(|e| pin_err(dir, &e))?;
    tracing::info!(dir = %dir.display(), "mounted a bpffs for pinned data plane state");
    Ok(())
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
        maps.extend(self.lb_maps());
        Ok(DataplaneStatus {
            backend: self.backend().into(),
            interfaces,
            counters,
            maps,
            overlay,
            lb: self.lb_status()?,
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

    fn set_service(&mut self, frontend: ServiceFrontend) -> Result<(), DataplaneError> {
        self.set_service_impl(frontend)
    }

    fn set_backends(&mut self, id: &str, backends: &[Backend]) -> Result<(), DataplaneError> {
        self.set_backends_impl(id, backends)
    }

    fn remove_service(&mut self, id: &str) -> Result<(), DataplaneError> {
        self.remove_service_impl(id)
    }

    fn mesh_start(&mut self, interface: &str, node_addr: Ipv4Addr) -> Result<(), DataplaneError> {
        self.mesh_start_impl(interface, node_addr)
    }

    fn ct_gc(&mut self) -> Result<CtGcReport, DataplaneError> {
        self.ct_gc_at(lb::monotonic_now_ns())
    }

    fn adoption_done(&mut self) -> Result<AdoptionReport, DataplaneError> {
        self.adoption_done_impl()
    }
}
