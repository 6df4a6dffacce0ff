//! The load-balancing part of [`EbpfDataplane`]: frontends, Maglev tables,
//! the routing mesh's program on the external interface, connection
//! tracking GC and the balancer's counters.
//!
//! Order of every change, as in the overlay: check in the book, write the
//! kernel, record. A frontend's table is written before the frontend that
//! points at it, and a removed frontend's table is cleared after it.
use std::collections::{BTreeSet, HashSet};
use std::net::Ipv4Addr;

use aya::maps::{Array, HashMap, MapData, PerCpuArray};
use swarm_ebpf_common::{
    CtKey, CtValue, FRONTEND_MESH, FrontendKey, FrontendValue, LB_CONFIG_MAP, LB_COUNTERS_MAP,
    LB_CT_MAP, LB_CT_MAX, LB_FRONTENDS_MAP, LB_FRONTENDS_MAX, LB_MAGLEV_MAP, LB_MAGLEV_SIZE,
    LB_MESH_PROG, LB_SERVICE_COUNTERS_MAP, LB_VIPS_MAP, LbCounter, MeshConfig, PacketCounter,
};

use super::overlay::{map_mut, remove_quietly, write_err};
use super::{Adopted, EbpfDataplane, HeldLink, error_chain, ifindex_of};
use crate::dataplane::{
    Backend, Counter, CtGcReport, DataplaneError, MapUsage, ServiceFrontend,
    lb::{FrontKey, LbStatus, ct_sweep, service_table},
};

/// The routing mesh as started.
pub(super) struct Mesh {
    pub interface: String,
    pub ifindex: u32,
    pub addr: Ipv4Addr,
    pub link: HeldLink,
}

/// CLOCK_MONOTONIC in ns: the clock `bpf_ktime_get_ns` stamps entries with.
pub(crate) fn monotonic_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

fn kernel_key(k: &FrontKey) -> FrontendKey {
    FrontendKey {
        addr: k.addr.octets(),
        port: k.port.to_be_bytes(),
        proto: k.proto.number(),
        _pad: 0,
    }
}

fn frontends(
    ebpf: &mut aya::Ebpf,
) -> Result<HashMap<&mut MapData, FrontendKey, FrontendValue>, DataplaneError> {
    HashMap::try_from(map_mut(ebpf, LB_FRONTENDS_MAP)?).map_err(write_err(LB_FRONTENDS_MAP))
}

fn vips(ebpf: &mut aya::Ebpf) -> Result<HashMap<&mut MapData, [u8; 4], u32>, DataplaneError> {
    HashMap::try_from(map_mut(ebpf, LB_VIPS_MAP)?).map_err(write_err(LB_VIPS_MAP))
}

fn maglev(ebpf: &mut aya::Ebpf) -> Result<Array<&mut MapData, [u8; 4]>, DataplaneError> {
    Array::try_from(map_mut(ebpf, LB_MAGLEV_MAP)?).map_err(write_err(LB_MAGLEV_MAP))
}

fn ct(ebpf: &mut aya::Ebpf) -> Result<HashMap<&mut MapData, CtKey, CtValue>, DataplaneError> {
    HashMap::try_from(map_mut(ebpf, LB_CT_MAP)?).map_err(write_err(LB_CT_MAP))
}

/// Writes `table` into `slot`, skipping entries equal to `previous`.
fn write_table(
    ebpf: &mut aya::Ebpf,
    slot: u32,
    table: &[Ipv4Addr],
    previous: Option<&[Ipv4Addr]>,
) -> Result<(), DataplaneError> {
    let mut m = maglev(ebpf)?;
    for i in 0..LB_MAGLEV_SIZE {
        let new = table
            .get(i as usize)
            .copied()
            .unwrap_or(Ipv4Addr::UNSPECIFIED);
        let old = previous.map(|p| p.get(i as usize).copied().unwrap_or(Ipv4Addr::UNSPECIFIED));
        if old == Some(new) {
            continue;
        }
        m.set(slot * LB_MAGLEV_SIZE + i, new.octets(), 0)
            .map_err(write_err(LB_MAGLEV_MAP))?;
    }
    Ok(())
}

fn zero_service_counters(ebpf: &mut aya::Ebpf, slot: u32) -> Result<(), DataplaneError> {
    let err = write_err(LB_SERVICE_COUNTERS_MAP);
    let mut a: PerCpuArray<_, PacketCounter> =
        PerCpuArray::try_from(map_mut(ebpf, LB_SERVICE_COUNTERS_MAP)?).map_err(&err)?;
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| DataplaneError::MapWrite {
        map: LB_SERVICE_COUNTERS_MAP,
        reason: format!("counting CPUs: {e}"),
    })?;
    for idx in [slot * 2, slot * 2 + 1] {
        let zero = aya::maps::PerCpuValues::try_from(vec![PacketCounter::default(); cpus])
            .map_err(|e| DataplaneError::MapWrite {
                map: LB_SERVICE_COUNTERS_MAP,
                reason: e.to_string(),
            })?;
        a.set(idx, zero, 0).map_err(&err)?;
    }
    Ok(())
}

/// Frontends and VIPs a previous agent left, and the slots they use.
pub(super) struct AdoptedFrontends {
    pub keys: Vec<FrontendKey>,
    pub vips: Vec<[u8; 4]>,
    pub slots: BTreeSet<u32>,
}

pub(super) fn adopted_frontends(ebpf: &mut aya::Ebpf) -> Result<AdoptedFrontends, DataplaneError> {
    let adopted_vips = vips(ebpf)?
        .keys()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| DataplaneError::MapRead {
            map: LB_VIPS_MAP,
            reason: error_chain(&e),
        })?;
    let mut keys = Vec::new();
    let mut slots = BTreeSet::new();
    for entry in frontends(ebpf)?.iter() {
        let (k, v) = entry.map_err(|e| DataplaneError::MapRead {
            map: LB_FRONTENDS_MAP,
            reason: error_chain(&e),
        })?;
        keys.push(k);
        slots.insert(v.slot);
    }
    Ok(AdoptedFrontends {
        keys,
        vips: adopted_vips,
        slots,
    })
}

/// Removes adopted frontends the new agent did not set again.
pub(super) fn sweep_adopted(dp: &mut EbpfDataplane, a: &Adopted) -> Result<usize, DataplaneError> {
    let kept: HashSet<FrontendKey> = dp
        .lb
        .services()
        .flat_map(|s| s.frontend.keys())
        .map(|(k, _, _)| kernel_key(&k))
        .collect();
    let mut removed = 0;
    let mut map = frontends(&mut dp.ebpf)?;
    for k in &a.frontends {
        if !kept.contains(k) {
            remove_quietly(&mut map, k, LB_FRONTENDS_MAP)?;
            removed += 1;
        }
    }
    let kept_vips: HashSet<[u8; 4]> = dp
        .lb
        .services()
        .filter_map(|s| s.frontend.vip.map(|v| v.octets()))
        .collect();
    let mut map = vips(&mut dp.ebpf)?;
    for v in &a.vips {
        if !kept_vips.contains(v) {
            remove_quietly(&mut map, v, LB_VIPS_MAP)?;
        }
    }
    Ok(removed)
}

impl EbpfDataplane {
    pub(super) fn set_service_impl(&mut self, fe: ServiceFrontend) -> Result<(), DataplaneError> {
        if let Some(dev) = &self.overlay
            && fe
                .published
                .iter()
                .any(|p| p.proto == crate::dataplane::Proto::Udp && p.port == dev.info.port)
        {
            return Err(DataplaneError::InvalidService(format!(
                "service {}: UDP port {} carries this node's overlay traffic (--data-path-port) and cannot be published",
                fe.id, dev.info.port
            )));
        }
        let keys = fe.keys();
        let known = self.lb.service(&fe.id).is_some();
        // After a restart, keep the slot the previous agent gave this
        // frontend: its table already spreads the same backends.
        let preferred = if known || self.adopted.is_none() {
            None
        } else {
            let map = frontends(&mut self.ebpf)?;
            keys.iter()
                .find_map(|(k, _, _)| map.get(&kernel_key(k), 0).ok())
                .map(|v| v.slot)
        };
        let (slot, removed) = self.lb.check_service(&fe, preferred)?;
        if !known && preferred != Some(slot) {
            // A fresh slot: no backends until they are set, and counters
            // that start from zero.
            write_table(&mut self.ebpf, slot, &[], None)?;
            zero_service_counters(&mut self.ebpf, slot)?;
        }
        let mut map = frontends(&mut self.ebpf)?;
        for (k, target, mesh) in &keys {
            map.insert(
                kernel_key(k),
                FrontendValue {
                    slot,
                    target_port: target.to_be_bytes(),
                    flags: if *mesh { FRONTEND_MESH } else { 0 },
                    vni: fe.vni,
                },
                0,
            )
            .map_err(write_err(LB_FRONTENDS_MAP))?;
        }
        for k in &removed {
            remove_quietly(&mut map, &kernel_key(k), LB_FRONTENDS_MAP)?;
        }
        let old_vip = self.lb.service(&fe.id).and_then(|s| s.frontend.vip);
        let mut vip_map = vips(&mut self.ebpf)?;
        if let Some(vip) = fe.vip {
            vip_map
                .insert(vip.octets(), fe.vni, 0)
                .map_err(write_err(LB_VIPS_MAP))?;
        }
        if let Some(old) = old_vip
            && Some(old) != fe.vip
        {
            remove_quietly(&mut vip_map, &old.octets(), LB_VIPS_MAP)?;
        }
        tracing::debug!(id = %fe.id, slot, frontends = keys.len(), "service frontend set");
        self.lb.record_service(fe, slot);
        Ok(())
    }

    pub(super) fn set_backends_impl(
        &mut self,
        id: &str,
        backends: &[Backend],
    ) -> Result<(), DataplaneError> {
        let slot = self.lb.check_backends(id, backends)?;
        let table = service_table(backends);
        // Only entries that change are written when the previous table is
        // known (not after adoption: then all of them).
        let previous = self
            .lb
            .service(id)
            .filter(|s| !s.backends.is_empty() || self.adopted.is_none())
            .map(|s| service_table(&s.backends));
        write_table(&mut self.ebpf, slot, &table, previous.as_deref())?;
        self.lb.record_backends(id, backends.to_vec());
        tracing::debug!(id, slot, backends = backends.len(), "service backends set");
        Ok(())
    }

    pub(super) fn remove_service_impl(&mut self, id: &str) -> Result<(), DataplaneError> {
        let Some(s) = self.lb.service(id).cloned() else {
            return Ok(());
        };
        let mut map = frontends(&mut self.ebpf)?;
        for (k, _, _) in s.frontend.keys() {
            remove_quietly(&mut map, &kernel_key(&k), LB_FRONTENDS_MAP)?;
        }
        if let Some(vip) = s.frontend.vip {
            remove_quietly(&mut vips(&mut self.ebpf)?, &vip.octets(), LB_VIPS_MAP)?;
        }
        write_table(&mut self.ebpf, s.slot, &[], None)?;
        self.lb.record_removed(id);
        tracing::debug!(id, "service frontend removed");
        Ok(())
    }

    pub(super) fn mesh_start_impl(
        &mut self,
        interface: &str,
        node_addr: Ipv4Addr,
    ) -> Result<(), DataplaneError> {
        let ifindex = ifindex_of(interface)?;
        if let Some(m) = &self.mesh
            && m.interface == interface
            && m.ifindex == ifindex
            && m.addr == node_addr
        {
            return Ok(());
        }
        Array::<_, MeshConfig>::try_from(map_mut(&mut self.ebpf, LB_CONFIG_MAP)?)
            .and_then(|mut a| {
                a.set(
                    0,
                    MeshConfig {
                        node_addr: node_addr.octets(),
                        ext_ifindex: ifindex,
                    },
                    0,
                )
            })
            .map_err(write_err(LB_CONFIG_MAP))?;
        if let Some(old) = self.mesh.take()
            && old.ifindex != ifindex
        {
            old.link.release();
        }
        let link = self.attach_tc(LB_MESH_PROG, interface, "mesh")?;
        tracing::info!(interface, %node_addr, "routing mesh started");
        self.mesh = Some(Mesh {
            interface: interface.into(),
            ifindex,
            addr: node_addr,
            link,
        });
        Ok(())
    }

    /// [`Dataplane::ct_gc`](crate::dataplane::Dataplane::ct_gc) as of
    /// `now_ns` (CLOCK_MONOTONIC).
    pub fn ct_gc_at(&mut self, now_ns: u64) -> Result<CtGcReport, DataplaneError> {
        let mut map = ct(&mut self.ebpf)?;
        let mut entries = Vec::new();
        for entry in map.iter() {
            match entry {
                Ok(kv) => entries.push(kv),
                // An entry deleted while iterating: skip it.
                Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => {
                    return Err(DataplaneError::MapRead {
                        map: LB_CT_MAP,
                        reason: error_chain(&e),
                    });
                }
            }
        }
        let expired = ct_sweep(&entries, now_ns);
        for k in &expired {
            remove_quietly(&mut map, k, LB_CT_MAP)?;
        }
        let report = CtGcReport {
            entries: entries.len() as u64,
            expired: expired.len() as u64,
            capacity: LB_CT_MAX,
        };
        self.ct_last = report;
        self.ct_expired_total += report.expired;
        Ok(report)
    }

    pub(super) fn lb_status(&self) -> Result<LbStatus, DataplaneError> {
        let read_err = |map: &'static str| {
            move |e: aya::maps::MapError| DataplaneError::MapRead {
                map,
                reason: error_chain(&e),
            }
        };
        let get = |name: &'static str| {
            self.ebpf.map(name).ok_or(DataplaneError::MapRead {
                map: name,
                reason: "missing from the object".into(),
            })
        };
        let sum = |per_cpu: aya::maps::PerCpuValues<PacketCounter>| {
            per_cpu.iter().fold(Counter::default(), |acc, v| Counter {
                packets: acc.packets + v.packets,
                bytes: acc.bytes + v.bytes,
            })
        };
        let counters: PerCpuArray<_, PacketCounter> =
            PerCpuArray::try_from(get(LB_COUNTERS_MAP)?).map_err(read_err(LB_COUNTERS_MAP))?;
        let mut status = LbStatus {
            services: self.lb.services().count(),
            backends: self.lb.services().map(|s| s.backends.len()).sum(),
            mesh: self.mesh.as_ref().map(|m| (m.interface.clone(), m.addr)),
            ct_entries: self.ct_last.entries,
            ct_capacity: LB_CT_MAX,
            ct_expired_total: self.ct_expired_total,
            ..LbStatus::default()
        };
        for c in LbCounter::ALL {
            let total = sum(counters
                .get(&(c as u32), 0)
                .map_err(read_err(LB_COUNTERS_MAP))?);
            if c.is_drop() {
                status.drops.insert(c.as_str(), total);
            } else {
                status.actions.insert(c.as_str(), total);
            }
        }
        let per_svc: PerCpuArray<_, PacketCounter> =
            PerCpuArray::try_from(get(LB_SERVICE_COUNTERS_MAP)?)
                .map_err(read_err(LB_SERVICE_COUNTERS_MAP))?;
        for s in self.lb.services() {
            let fwd = sum(per_svc
                .get(&(s.slot * 2), 0)
                .map_err(read_err(LB_SERVICE_COUNTERS_MAP))?);
            let back = sum(per_svc
                .get(&(s.slot * 2 + 1), 0)
                .map_err(read_err(LB_SERVICE_COUNTERS_MAP))?);
            status
                .per_service
                .insert(s.frontend.id.clone(), (fwd, back));
        }
        Ok(status)
    }

    pub(super) fn lb_maps(&self) -> Vec<MapUsage> {
        let frontends: usize = self.lb.services().map(|s| s.frontend.keys().len()).sum();
        vec![
            MapUsage {
                name: LB_FRONTENDS_MAP.into(),
                entries: frontends as u64,
                capacity: LB_FRONTENDS_MAX,
            },
            MapUsage {
                name: LB_CT_MAP.into(),
                entries: self.ct_last.entries,
                capacity: LB_CT_MAX,
            },
        ]
    }
}
