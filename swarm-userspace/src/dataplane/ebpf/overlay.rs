//! The overlay part of [`EbpfDataplane`]: fills the overlay maps from the
//! checked [`OverlayBook`] and attaches the TC programs (TCX on this kernel)
//! to the VXLAN device and to host veths.
//!
//! Order of every change: check in the book, write the kernel (maps, then
//! attachments), record in the book. Entries a packet may meet are written
//! before the program that meets them is attached, and removed after it is
//! detached.
use std::net::Ipv4Addr;

use aya::maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, lpm_trie::Key};
use ipnet::Ipv4Net;
use swarm_ebpf_common::{
    EndpointValue, IfaceValue, OVERLAY_CONFIG_MAP, OVERLAY_COUNTERS_MAP, OVERLAY_ENDPOINTS_MAP,
    OVERLAY_ENDPOINTS_MAX, OVERLAY_IFACES_MAP, OVERLAY_IFACES_MAX, OVERLAY_SUBNETS_MAP,
    OVERLAY_SUBNETS_MAX, OVERLAY_VETH_PROG, OVERLAY_VXLAN_PROG, OverlayConfig, OverlayCounter,
    PacketCounter, SubnetValue,
};

use super::{Adopted, EbpfDataplane, HeldLink, error_chain};
use crate::dataplane::{
    AdoptionReport, Counter, DataplaneError, MapUsage,
    netlink::{self, VxlanDevice},
    overlay::{
        Endpoint, FALLBACK_UNDERLAY_MTU, LocalEndpoint, OverlayInfo, OverlayStatus, Place,
        VXLAN_OVERHEAD,
    },
};

/// The VXLAN device and its program link.
pub(super) struct OverlayDevice {
    pub info: OverlayInfo,
    pub link: HeldLink,
}

pub(super) fn map_mut<'a>(
    ebpf: &'a mut aya::Ebpf,
    name: &'static str,
) -> Result<&'a mut aya::maps::Map, DataplaneError> {
    ebpf.map_mut(name).ok_or(DataplaneError::MapWrite {
        map: name,
        reason: "missing from the object".into(),
    })
}

pub(super) fn write_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> DataplaneError {
    move |e| DataplaneError::MapWrite {
        map,
        reason: error_chain(&e),
    }
}

fn endpoints(
    ebpf: &mut aya::Ebpf,
) -> Result<HashMap<&mut MapData, [u8; 4], EndpointValue>, DataplaneError> {
    HashMap::try_from(map_mut(ebpf, OVERLAY_ENDPOINTS_MAP)?)
        .map_err(write_err(OVERLAY_ENDPOINTS_MAP))
}

fn ifaces(ebpf: &mut aya::Ebpf) -> Result<HashMap<&mut MapData, u32, IfaceValue>, DataplaneError> {
    HashMap::try_from(map_mut(ebpf, OVERLAY_IFACES_MAP)?).map_err(write_err(OVERLAY_IFACES_MAP))
}

fn subnets(
    ebpf: &mut aya::Ebpf,
) -> Result<LpmTrie<&mut MapData, [u8; 4], SubnetValue>, DataplaneError> {
    LpmTrie::try_from(map_mut(ebpf, OVERLAY_SUBNETS_MAP)?).map_err(write_err(OVERLAY_SUBNETS_MAP))
}

fn subnet_key(net: Ipv4Net) -> Key<[u8; 4]> {
    Key::new(u32::from(net.prefix_len()), net.network().octets())
}

/// Removes `key` from a hash map; a missing key is fine.
pub(super) fn remove_quietly<K: aya::Pod, V: aya::Pod>(
    map: &mut HashMap<&mut MapData, K, V>,
    key: &K,
    name: &'static str,
) -> Result<(), DataplaneError> {
    match map.remove(key) {
        Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(aya::maps::MapError::SyscallError(e))
            if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        Err(e) => Err(write_err(name)(e)),
    }
}

impl EbpfDataplane {
    pub(super) fn overlay_start_impl(&mut self, port: u16) -> Result<OverlayInfo, DataplaneError> {
        if let Some(dev) = &self.overlay
            && dev.info.port == port
            && netlink::name_of(dev.info.ifindex).is_ok_and(|n| n == dev.info.device)
        {
            return Ok(dev.info.clone());
        }
        if let Some(old) = self.overlay.take() {
            old.link.release();
        }
        let name = self.vxlan_name.clone();
        let VxlanDevice { ifindex, mtu } =
            netlink::ensure_vxlan(&name, port, FALLBACK_UNDERLAY_MTU)?;
        Array::<_, OverlayConfig>::try_from(map_mut(&mut self.ebpf, OVERLAY_CONFIG_MAP)?)
            .and_then(|mut a| {
                a.set(
                    0,
                    OverlayConfig {
                        vxlan_ifindex: ifindex,
                        _pad: 0,
                    },
                    0,
                )
            })
            .map_err(write_err(OVERLAY_CONFIG_MAP))?;
        let link = self.attach_tc(OVERLAY_VXLAN_PROG, &name, "vxlan")?;
        let info = OverlayInfo {
            device: name,
            ifindex,
            port,
            underlay_mtu: mtu,
            container_mtu: mtu.saturating_sub(VXLAN_OVERHEAD),
        };
        self.overlay = Some(OverlayDevice {
            info: info.clone(),
            link,
        });
        Ok(info)
    }

    pub(super) fn set_network_impl(
        &mut self,
        vni: u32,
        subnet: Ipv4Net,
        gateway: Ipv4Addr,
    ) -> Result<(), DataplaneError> {
        let replaced = self.book.check_network(vni, subnet, gateway)?;
        let subnet = subnet.trunc();
        let mut trie = subnets(&mut self.ebpf)?;
        trie.insert(
            &subnet_key(subnet),
            SubnetValue {
                vni,
                gateway: gateway.octets(),
            },
            0,
        )
        .map_err(write_err(OVERLAY_SUBNETS_MAP))?;
        if let Some(old) = replaced {
            let _ = trie.remove(&subnet_key(old));
        }
        self.book.record_network(vni, subnet, gateway);
        tracing::debug!(vni, %subnet, %gateway, "overlay network set");
        Ok(())
    }

    pub(super) fn remove_network_impl(&mut self, vni: u32) -> Result<(), DataplaneError> {
        let Some(network) = self.book.network(vni).copied() else {
            return Ok(());
        };
        for (addr, _) in self.book.endpoints_of(vni) {
            self.remove_endpoint_impl(addr)?;
        }
        let mut trie = subnets(&mut self.ebpf)?;
        match trie.remove(&subnet_key(network.subnet)) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
            Err(e) => return Err(write_err(OVERLAY_SUBNETS_MAP)(e)),
        }
        self.book.record_network_removed(vni);
        tracing::debug!(vni, "overlay network removed");
        Ok(())
    }

    pub(super) fn set_local_impl(&mut self, ep: LocalEndpoint) -> Result<(), DataplaneError> {
        let previous = self.book.check_local(&ep)?;
        let name = netlink::name_of(ep.host_ifindex)?;
        let host_mac = netlink::mac_of(&name)?;
        let addr = ep.addr.octets();
        ifaces(&mut self.ebpf)?
            .insert(
                ep.host_ifindex,
                IfaceValue {
                    vni: ep.vni,
                    addr,
                    mac: ep.container_mac,
                    host_mac,
                },
                0,
            )
            .map_err(write_err(OVERLAY_IFACES_MAP))?;
        endpoints(&mut self.ebpf)?
            .insert(
                addr,
                EndpointValue {
                    vni: ep.vni,
                    node_ip: [0; 4],
                    ifindex: ep.host_ifindex,
                    mac: ep.container_mac,
                    host_mac,
                },
                0,
            )
            .map_err(write_err(OVERLAY_ENDPOINTS_MAP))?;
        if let Some(old) = previous {
            self.detach_veth(old)?;
        }
        if !self.veth_links.contains_key(&ep.host_ifindex) {
            match self.attach_tc(
                OVERLAY_VETH_PROG,
                &name,
                &format!("veth-{}", ep.host_ifindex),
            ) {
                Ok(link) => {
                    self.veth_links.insert(ep.host_ifindex, link);
                }
                Err(e) => {
                    // Leave the kernel as the book says it is: the veth
                    // entry goes; so does the address unless it was known
                    // (then it keeps pointing at this veth, harmlessly:
                    // nothing the veth sends is routed without the program).
                    let _ = remove_quietly(
                        &mut ifaces(&mut self.ebpf)?,
                        &ep.host_ifindex,
                        OVERLAY_IFACES_MAP,
                    );
                    if self.book.endpoint(ep.addr).is_none() {
                        let _ = remove_quietly(
                            &mut endpoints(&mut self.ebpf)?,
                            &addr,
                            OVERLAY_ENDPOINTS_MAP,
                        );
                    }
                    return Err(e);
                }
            }
        }
        self.book.record_endpoint(
            ep.addr,
            Endpoint {
                vni: ep.vni,
                place: Place::Local {
                    ifindex: ep.host_ifindex,
                    mac: ep.container_mac,
                },
            },
        );
        tracing::debug!(vni = ep.vni, addr = %ep.addr, veth = %name, "local overlay endpoint set");
        Ok(())
    }

    pub(super) fn set_remote_impl(
        &mut self,
        vni: u32,
        addr: Ipv4Addr,
        node: Ipv4Addr,
    ) -> Result<(), DataplaneError> {
        let previous = self.book.check_remote(vni, addr, node)?;
        endpoints(&mut self.ebpf)?
            .insert(
                addr.octets(),
                EndpointValue {
                    vni,
                    node_ip: node.octets(),
                    ..EndpointValue::default()
                },
                0,
            )
            .map_err(write_err(OVERLAY_ENDPOINTS_MAP))?;
        if let Some(old) = previous {
            self.detach_veth(old)?;
        }
        self.book.record_endpoint(
            addr,
            Endpoint {
                vni,
                place: Place::Remote { node },
            },
        );
        tracing::debug!(vni, %addr, %node, "remote overlay endpoint set");
        Ok(())
    }

    pub(super) fn remove_endpoint_impl(&mut self, addr: Ipv4Addr) -> Result<(), DataplaneError> {
        let Some(ep) = self.book.endpoint(addr).copied() else {
            return Ok(());
        };
        if let Place::Local { ifindex, .. } = ep.place {
            self.detach_veth(ifindex)?;
        }
        remove_quietly(
            &mut endpoints(&mut self.ebpf)?,
            &addr.octets(),
            OVERLAY_ENDPOINTS_MAP,
        )?;
        self.book.record_endpoint_removed(addr);
        tracing::debug!(%addr, "overlay endpoint removed");
        Ok(())
    }

    /// Detaches the veth program from `ifindex` and forgets the veth. The
    /// veth may be gone already (its link then went with it).
    fn detach_veth(&mut self, ifindex: u32) -> Result<(), DataplaneError> {
        if let Some(link) = self.veth_links.remove(&ifindex) {
            link.release();
        }
        remove_quietly(&mut ifaces(&mut self.ebpf)?, &ifindex, OVERLAY_IFACES_MAP)
    }

    pub(super) fn overlay_status(&self) -> Result<(OverlayStatus, Vec<MapUsage>), DataplaneError> {
        let read_err = |e: aya::maps::MapError| DataplaneError::MapRead {
            map: OVERLAY_COUNTERS_MAP,
            reason: error_chain(&e),
        };
        let map = self
            .ebpf
            .map(OVERLAY_COUNTERS_MAP)
            .ok_or(DataplaneError::MapRead {
                map: OVERLAY_COUNTERS_MAP,
                reason: "missing from the object".into(),
            })?;
        let counters: PerCpuArray<_, PacketCounter> =
            PerCpuArray::try_from(map).map_err(read_err)?;
        let mut status = OverlayStatus {
            device: self.overlay.as_ref().map(|d| d.info.clone()),
            networks: self.book.networks().count(),
            ..OverlayStatus::default()
        };
        (status.local_endpoints, status.remote_endpoints) = self.book.endpoint_counts();
        for c in OverlayCounter::ALL {
            let per_cpu = counters.get(&(c as u32), 0).map_err(read_err)?;
            let total = per_cpu.iter().fold(Counter::default(), |acc, v| Counter {
                packets: acc.packets + v.packets,
                bytes: acc.bytes + v.bytes,
            });
            if c.is_drop() {
                status.drops.insert(c.as_str(), total);
            } else {
                status.actions.insert(c.as_str(), total);
            }
        }
        let (local, remote) = self.book.endpoint_counts();
        let maps = vec![
            MapUsage {
                name: OVERLAY_ENDPOINTS_MAP.into(),
                entries: (local + remote) as u64,
                capacity: OVERLAY_ENDPOINTS_MAX,
            },
            MapUsage {
                name: OVERLAY_IFACES_MAP.into(),
                entries: local as u64,
                capacity: OVERLAY_IFACES_MAX,
            },
            MapUsage {
                name: OVERLAY_SUBNETS_MAP.into(),
                entries: status.networks as u64,
                capacity: OVERLAY_SUBNETS_MAX,
            },
        ];
        Ok((status, maps))
    }
}

/// The overlay entries a previous agent left in adopted maps.
pub(super) fn adopted_overlay(ebpf: &mut aya::Ebpf) -> Result<Adopted, DataplaneError> {
    let read = |map: &'static str| {
        move |e: aya::maps::MapError| DataplaneError::MapRead {
            map,
            reason: error_chain(&e),
        }
    };
    let endpoints = endpoints(ebpf)?
        .keys()
        .collect::<Result<Vec<_>, _>>()
        .map_err(read(OVERLAY_ENDPOINTS_MAP))?;
    let ifaces = ifaces(ebpf)?
        .keys()
        .collect::<Result<Vec<_>, _>>()
        .map_err(read(OVERLAY_IFACES_MAP))?;
    let subnets = subnets(ebpf)?
        .keys()
        .map(|k| k.map(|k| (k.prefix_len(), k.data())))
        .collect::<Result<Vec<_>, _>>()
        .map_err(read(OVERLAY_SUBNETS_MAP))?;
    Ok(Adopted {
        endpoints,
        ifaces,
        subnets,
        ..Adopted::default()
    })
}

/// Removes adopted overlay entries the new agent did not set again.
pub(super) fn sweep_adopted(
    dp: &mut EbpfDataplane,
    a: &Adopted,
) -> Result<AdoptionReport, DataplaneError> {
    let mut report = AdoptionReport::default();
    for addr in &a.endpoints {
        if dp.book.endpoint(Ipv4Addr::from(*addr)).is_none() {
            remove_quietly(&mut endpoints(&mut dp.ebpf)?, addr, OVERLAY_ENDPOINTS_MAP)?;
            report.endpoints += 1;
        }
    }
    for ifindex in &a.ifaces {
        if !dp.veth_links.contains_key(ifindex) {
            remove_quietly(&mut ifaces(&mut dp.ebpf)?, ifindex, OVERLAY_IFACES_MAP)?;
        }
    }
    let kept: Vec<Ipv4Net> = dp.book.networks().map(|(_, n)| n.subnet).collect();
    for (len, net) in &a.subnets {
        let claimed = kept
            .iter()
            .any(|n| u32::from(n.prefix_len()) == *len && n.network().octets() == *net);
        if !claimed {
            let _ = subnets(&mut dp.ebpf)?.remove(&Key::new(*len, *net));
            report.networks += 1;
        }
    }
    Ok(report)
}
