//! What the node's load balancer should hold, derived from its [`NetView`]:
//! for each service, its VIP frontends (one per overlay network the node
//! is on) and published ports (routing mesh), each with its backends and
//! which of them take new connections. Pure: the network agent hands the
//! result to the data plane.
//!
//! A backend takes new connections only while its task runs and is meant
//! to; a task that is being stopped, or whose healthcheck failed, stays in
//! the set as draining (its established connections keep working) until it
//! leaves the view.
use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use swarm_proto::v1 as pb;

use super::view::{NetView, holds_address, parse_node_addr};
use crate::allocator::ipam::parse_cidr_addr;
use crate::dataplane::{PortMapping, Proto};

/// The data plane's protocol of a port; SCTP is not balanced.
fn proto_of(p: i32) -> Option<Proto> {
    match pb::PortProtocol::try_from(p) {
        Ok(pb::PortProtocol::Tcp) => Some(Proto::Tcp),
        Ok(pb::PortProtocol::Udp) => Some(Proto::Udp),
        _ => None,
    }
}

/// One backend of a frontend.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Backend {
    pub task_id: String,
    pub addr: Ipv4Addr,
    /// The underlay address of the backend's node; `None` when it runs here.
    pub node: Option<Ipv4Addr>,
    /// Takes no new connections; established ones continue.
    pub draining: bool,
}

/// A published port of the routing mesh.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Published {
    pub proto: Proto,
    pub published: u16,
    pub target: u16,
    /// Host mode: answers only on nodes running a task, to local tasks.
    pub host_mode: bool,
}

impl Published {
    /// As the data plane takes it.
    pub fn mapping(&self) -> PortMapping {
        PortMapping {
            proto: self.proto,
            port: self.published,
            target: self.target,
        }
    }
}

/// A VIP on one network: every port of the VIP goes to the same port of a
/// backend, as docker's VIPs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VipFrontend {
    pub vip: Ipv4Addr,
    pub vni: u32,
    pub backends: Vec<Backend>,
}

/// A service as the load balancer sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceLb {
    pub service_id: String,
    pub name: String,
    pub vips: Vec<VipFrontend>,
    pub published: Vec<Published>,
    /// Backends on the ingress network, for the published ports.
    pub mesh_backends: Vec<Backend>,
    pub ingress_vni: u32,
}

/// Peers by (service, network): one pass over the view for all services.
type PeersBy<'a> = HashMap<(&'a str, &'a str), Vec<&'a pb::NetworkPeer>>;

fn backends(view: &NetView, by: &PeersBy<'_>, service_id: &str, network_id: &str) -> Vec<Backend> {
    let mut out: Vec<Backend> = by
        .get(&(service_id, network_id))
        .into_iter()
        .flatten()
        .filter(|p| holds_address(p))
        .filter_map(|p| {
            let local = view.own_node.as_deref() == Some(p.node_id.as_str());
            Some(Backend {
                task_id: p.task_id.clone(),
                addr: parse_cidr_addr(&p.addr)?,
                node: if local {
                    None
                } else {
                    Some(parse_node_addr(&p.node_addr)?)
                },
                draining: p.state != pb::TaskState::Running as i32
                    || p.desired_state > pb::TaskState::Running as i32,
            })
        })
        .collect();
    out.sort();
    out
}

/// The load balancer state for every service in the view.
pub fn services(view: &NetView) -> Vec<ServiceLb> {
    let ingress = view
        .networks
        .iter()
        .find(|(_, n)| n.spec.as_ref().is_some_and(|s| s.ingress));
    let mut by: PeersBy<'_> = HashMap::new();
    for p in view.peers.values() {
        by.entry((p.service_id.as_str(), p.network_id.as_str()))
            .or_default()
            .push(p);
    }
    let mut out = Vec::new();
    let by_id: BTreeMap<&String, &pb::ServiceEndpoints> = view.services.iter().collect();
    for (id, s) in by_id {
        let mut vips = Vec::new();
        if s.mode == pb::EndpointMode::Vip as i32 {
            for v in &s.virtual_ips {
                let Some(net) = view.networks.get(&v.network_id) else {
                    continue;
                };
                let Some(vip) = parse_cidr_addr(&v.addr) else {
                    continue;
                };
                vips.push(VipFrontend {
                    vip,
                    vni: net.vni,
                    backends: backends(view, &by, id, &v.network_id),
                });
            }
        }
        let published: Vec<Published> = s
            .ports
            .iter()
            .filter(|p| p.published_port != 0)
            .filter_map(|p| {
                Some(Published {
                    proto: proto_of(p.protocol)?,
                    published: u16::try_from(p.published_port).ok()?,
                    target: u16::try_from(p.target_port).ok()?,
                    host_mode: p.publish_mode == pb::PublishMode::Host as i32,
                })
            })
            .collect();
        let (mesh_backends, ingress_vni) = match ingress {
            Some((nid, n)) if !published.is_empty() => (backends(view, &by, id, nid), n.vni),
            _ => (Vec::new(), 0),
        };
        if vips.is_empty() && published.is_empty() {
            continue;
        }
        out.push(ServiceLb {
            service_id: id.clone(),
            name: s.name.clone(),
            vips,
            published,
            mesh_backends,
            ingress_vni,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(id: &str, vni: u32, ingress: bool) -> pb::Network {
        pb::Network {
            meta: Some(pb::Meta {
                id: id.into(),
                ..Default::default()
            }),
            spec: Some(pb::NetworkSpec {
                ingress,
                ..Default::default()
            }),
            vni,
            ..Default::default()
        }
    }

    fn peer(
        task: &str,
        net: &str,
        node: &str,
        addr: &str,
        state: pb::TaskState,
        desired: pb::TaskState,
    ) -> pb::NetworkPeer {
        pb::NetworkPeer {
            task_id: task.into(),
            network_id: net.into(),
            addr: addr.into(),
            node_id: node.into(),
            node_addr: if node == "me" {
                "198.51.100.11"
            } else {
                "203.0.113.12"
            }
            .into(),
            service_id: "s".into(),
            state: state as i32,
            desired_state: desired as i32,
            ..Default::default()
        }
    }

    fn view() -> NetView {
        use pb::TaskState::{Failed, Running, Shutdown, Starting};
        let mut v = NetView {
            own_node: Some("me".into()),
            ..Default::default()
        };
        v.networks.insert("front".into(), net("front", 4097, false));
        v.networks.insert("ing".into(), net("ing", 4096, true));
        for p in [
            peer("a", "front", "me", "10.0.1.3/24", Running, Running),
            peer("b", "front", "other", "10.0.1.4/24", Running, Running),
            // Being stopped by a rolling update: drains.
            peer("c", "front", "other", "10.0.1.5/24", Running, Shutdown),
            // Still starting: not yet a target for new connections.
            peer("d", "front", "other", "10.0.1.6/24", Starting, Running),
            // Ended: gone from the set.
            peer("e", "front", "other", "10.0.1.7/24", Failed, Running),
            peer("a", "ing", "me", "10.0.0.3/24", Running, Running),
        ] {
            v.peers.insert((p.task_id.clone(), p.network_id.clone()), p);
        }
        v.services.insert(
            "s".into(),
            pb::ServiceEndpoints {
                service_id: "s".into(),
                name: "web".into(),
                mode: pb::EndpointMode::Vip as i32,
                virtual_ips: vec![
                    pb::VirtualIp {
                        network_id: "front".into(),
                        addr: "10.0.1.2/24".into(),
                    },
                    pb::VirtualIp {
                        network_id: "ing".into(),
                        addr: "10.0.0.2/24".into(),
                    },
                ],
                ports: vec![pb::PortConfig {
                    protocol: pb::PortProtocol::Tcp as i32,
                    target_port: 80,
                    published_port: 8080,
                    ..Default::default()
                }],
                ..Default::default()
            },
        );
        v
    }

    #[test]
    fn vips_balance_over_running_tasks_and_drain_the_others() {
        let s = services(&view());
        assert_eq!(s.len(), 1);
        let front = s[0].vips.iter().find(|f| f.vni == 4097).expect("front VIP");
        assert_eq!(front.vip, Ipv4Addr::new(10, 0, 1, 2));
        let summary: Vec<(&str, bool, bool)> = front
            .backends
            .iter()
            .map(|b| (b.task_id.as_str(), b.node.is_none(), b.draining))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("a", true, false),
                ("b", false, false),
                ("c", false, true),
                ("d", false, true)
            ]
        );
        assert_eq!(front.backends[1].node, Some(Ipv4Addr::new(203, 0, 113, 12)));
    }

    #[test]
    fn published_ports_use_the_ingress_backends() {
        let s = &services(&view())[0];
        assert_eq!(
            s.published,
            vec![Published {
                proto: Proto::Tcp,
                published: 8080,
                target: 80,
                host_mode: false
            }]
        );
        assert_eq!(s.ingress_vni, 4096);
        assert_eq!(s.mesh_backends.len(), 1);
        assert_eq!(s.mesh_backends[0].addr, Ipv4Addr::new(10, 0, 0, 3));
    }

    #[test]
    fn dnsrr_services_without_ports_need_no_balancing() {
        let mut v = view();
        if let Some(s) = v.services.get_mut("s") {
            s.mode = pb::EndpointMode::Dnsrr as i32;
            s.ports.clear();
        }
        assert!(services(&v).is_empty());
    }
}
