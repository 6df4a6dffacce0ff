//! The node's view of its overlay networks, as the dispatcher sends it in
//! the assignments stream: the networks, every peer on them, the services
//! on them. Pure: applying messages and deriving what the data path and
//! DNS need.
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use ipnet::Ipv4Net;
use swarm_proto::v1 as pb;

/// See the module docs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NetView {
    /// This node's ID, learnt from its assigned tasks.
    pub own_node: Option<String>,
    /// The cluster's VXLAN port, once known (0 until then).
    pub data_path_port: u32,
    /// This node's underlay address as the managers know it.
    pub node_addr: Option<Ipv4Addr>,
    pub networks: BTreeMap<String, pb::Network>,
    /// By (task ID, network ID).
    pub peers: BTreeMap<(String, String), pb::NetworkPeer>,
    pub services: HashMap<String, pb::ServiceEndpoints>,
}

/// A node address as the store holds it ("198.51.100.11" or with a port).
pub fn parse_node_addr(s: &str) -> Option<Ipv4Addr> {
    match s.parse::<IpAddr>() {
        Ok(IpAddr::V4(a)) => Some(a),
        Ok(IpAddr::V6(_)) => None,
        Err(_) => match s.parse::<SocketAddr>().ok()?.ip() {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(_) => None,
        },
    }
}

/// Whether a peer's task is (or may soon be) up: assigned, wanted running,
/// not ended.
pub fn is_live(p: &pb::NetworkPeer) -> bool {
    p.desired_state <= pb::TaskState::Running as i32 && holds_address(p)
}

/// Whether a peer's task still holds its address: not ended, whatever its
/// desired state. A task that is being stopped keeps its endpoint (and its
/// established connections) until it has stopped; the allocator frees the
/// address only then.
pub fn holds_address(p: &pb::NetworkPeer) -> bool {
    p.state <= pb::TaskState::Running as i32
}

/// Whether an assignments message carries overlay state (as opposed to
/// tasks only).
pub fn has_overlay_state(m: &pb::AssignmentsMessage) -> bool {
    !(m.updated_networks.is_empty()
        && m.removed_network_ids.is_empty()
        && m.updated_peers.is_empty()
        && m.removed_peers.is_empty()
        && m.updated_services.is_empty()
        && m.removed_service_ids.is_empty())
}

impl NetView {
    /// The VXLAN port: the cluster's, else docker's default.
    pub fn vxlan_port(&self) -> u16 {
        u16::try_from(self.data_path_port)
            .ok()
            .filter(|p| *p != 0)
            .unwrap_or(super::DEFAULT_VXLAN_PORT)
    }

    pub fn apply(&mut self, m: &pb::AssignmentsMessage) {
        if let Some(t) = m.updated_tasks.iter().find(|t| !t.node_id.is_empty()) {
            self.own_node = Some(t.node_id.clone());
        }
        if m.data_path_port != 0 {
            self.data_path_port = m.data_path_port;
        }
        if let Some(a) = parse_node_addr(&m.node_addr) {
            self.node_addr = Some(a);
        }
        if m.r#type == pb::assignments_message::Type::Full as i32 {
            self.networks.clear();
            self.peers.clear();
            self.services.clear();
        }
        for id in &m.removed_network_ids {
            self.networks.remove(id);
        }
        for n in &m.updated_networks {
            let id = n.meta.as_ref().map_or("", |m| m.id.as_str()).to_owned();
            self.networks.insert(id, n.clone());
        }
        for k in &m.removed_peers {
            self.peers
                .remove(&(k.task_id.clone(), k.network_id.clone()));
        }
        for p in &m.updated_peers {
            self.peers
                .insert((p.task_id.clone(), p.network_id.clone()), p.clone());
        }
        for id in &m.removed_service_ids {
            self.services.remove(id);
        }
        for s in &m.updated_services {
            self.services.insert(s.service_id.clone(), s.clone());
        }
    }

    /// Allocated networks by VNI: subnet and gateway.
    pub fn overlay_networks(&self) -> BTreeMap<u32, (Ipv4Net, Ipv4Addr)> {
        self.networks
            .values()
            .filter(|n| n.vni != 0)
            .filter_map(|n| Some((n.vni, crate::allocator::ipam::allocated_subnet(n)?)))
            .collect()
    }

    /// Endpoints on other nodes: address → (VNI, node underlay address).
    /// Tasks being stopped stay until they have stopped (their connections
    /// drain); a peer holding the address wins over an ended one that held
    /// it before.
    pub fn remote_endpoints(&self) -> BTreeMap<Ipv4Addr, (u32, Ipv4Addr)> {
        let mut out: BTreeMap<Ipv4Addr, (u32, Ipv4Addr, bool)> = BTreeMap::new();
        for p in self.peers.values() {
            if self.own_node.as_deref() == Some(p.node_id.as_str()) {
                continue;
            }
            let Some(vni) = self.networks.get(&p.network_id).map(|n| n.vni) else {
                continue;
            };
            let (Some(addr), Some(node)) = (
                crate::allocator::ipam::parse_cidr_addr(&p.addr),
                parse_node_addr(&p.node_addr),
            ) else {
                continue;
            };
            let live = holds_address(p);
            match out.get(&addr) {
                Some((_, _, true)) if !live => {}
                _ => {
                    out.insert(addr, (vni, node, live));
                }
            }
        }
        out.into_iter()
            .filter(|(_, (_, _, live))| *live)
            .map(|(a, (v, n, _))| (a, (v, n)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(id: &str, vni: u32, subnet: &str) -> pb::Network {
        pb::Network {
            meta: Some(pb::Meta {
                id: id.into(),
                ..Default::default()
            }),
            vni,
            ipam: Some(pb::IpamOptions {
                configs: vec![pb::IpamConfig {
                    subnet: subnet.into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn peer(
        task: &str,
        node: &str,
        node_addr: &str,
        addr: &str,
        state: pb::TaskState,
    ) -> pb::NetworkPeer {
        pb::NetworkPeer {
            task_id: task.into(),
            network_id: "n1".into(),
            addr: addr.into(),
            node_id: node.into(),
            node_addr: node_addr.into(),
            state: state as i32,
            desired_state: pb::TaskState::Running as i32,
            ..Default::default()
        }
    }

    fn own_task() -> pb::Task {
        pb::Task {
            meta: Some(pb::Meta {
                id: "mine".into(),
                ..Default::default()
            }),
            node_id: "me".into(),
            ..Default::default()
        }
    }

    #[test]
    fn remote_endpoints_leave_out_this_node_and_ended_tasks_but_keep_draining_ones() {
        let mut v = NetView::default();
        v.apply(&pb::AssignmentsMessage {
            r#type: pb::assignments_message::Type::Full as i32,
            updated_tasks: vec![own_task()],
            updated_networks: vec![net("n1", 4097, "10.0.1.0/24")],
            updated_peers: vec![
                peer(
                    "mine",
                    "me",
                    "198.51.100.11",
                    "10.0.1.3/24",
                    pb::TaskState::Running,
                ),
                peer(
                    "a",
                    "other",
                    "203.0.113.12",
                    "10.0.1.4/24",
                    pb::TaskState::Running,
                ),
                // Ended, and its address reused by a live task elsewhere.
                peer(
                    "b",
                    "other",
                    "203.0.113.12:4789",
                    "10.0.1.5/24",
                    pb::TaskState::Failed,
                ),
                peer(
                    "c",
                    "third",
                    "198.51.100.13",
                    "10.0.1.5/24",
                    pb::TaskState::Starting,
                ),
                // Being stopped (draining): still reachable.
                pb::NetworkPeer {
                    desired_state: pb::TaskState::Shutdown as i32,
                    ..peer(
                        "d",
                        "third",
                        "198.51.100.13",
                        "10.0.1.6/24",
                        pb::TaskState::Running,
                    )
                },
                // Stopped: gone.
                pb::NetworkPeer {
                    desired_state: pb::TaskState::Shutdown as i32,
                    ..peer(
                        "e",
                        "third",
                        "198.51.100.13",
                        "10.0.1.7/24",
                        pb::TaskState::Shutdown,
                    )
                },
            ],
            ..Default::default()
        });
        let r = v.remote_endpoints();
        assert_eq!(
            r.into_iter().collect::<Vec<_>>(),
            vec![
                (
                    "10.0.1.4".parse().expect("ip"),
                    (4097, "203.0.113.12".parse().expect("ip"))
                ),
                (
                    "10.0.1.5".parse().expect("ip"),
                    (4097, "198.51.100.13".parse().expect("ip"))
                ),
                (
                    "10.0.1.6".parse().expect("ip"),
                    (4097, "198.51.100.13".parse().expect("ip"))
                ),
            ]
        );
        assert_eq!(
            v.overlay_networks()
                .get(&4097)
                .map(|(s, g)| (s.to_string(), g.to_string())),
            Some(("10.0.1.0/24".into(), "10.0.1.1".into()))
        );
    }

    #[test]
    fn incremental_messages_update_and_remove_and_full_ones_replace() {
        let mut v = NetView::default();
        v.apply(&pb::AssignmentsMessage {
            r#type: pb::assignments_message::Type::Full as i32,
            updated_networks: vec![net("n1", 4097, "10.0.1.0/24")],
            updated_peers: vec![peer(
                "a",
                "x",
                "1.2.3.4",
                "10.0.1.4/24",
                pb::TaskState::Running,
            )],
            ..Default::default()
        });
        v.apply(&pb::AssignmentsMessage {
            r#type: pb::assignments_message::Type::Incremental as i32,
            removed_peers: vec![pb::NetworkPeerKey {
                task_id: "a".into(),
                network_id: "n1".into(),
            }],
            updated_services: vec![pb::ServiceEndpoints {
                service_id: "s".into(),
                ..Default::default()
            }],
            ..Default::default()
        });
        assert!(v.peers.is_empty());
        assert_eq!(v.services.len(), 1);
        v.apply(&pb::AssignmentsMessage {
            r#type: pb::assignments_message::Type::Full as i32,
            ..Default::default()
        });
        assert!(v.networks.is_empty() && v.services.is_empty());
    }
}
