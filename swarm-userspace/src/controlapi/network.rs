//! Networks in the control API: `network create|ls|inspect|rm`.
//!
//! Owns the checks a network spec passes before it is stored (name,
//! driver, subnet, gateway, overlap with other networks) and the rules for
//! removing one (not while a service or a live task uses it; `ingress` not
//! while a service publishes ports through it). The subnet and VXLAN ID
//! are chosen here, on the leader, with the allocator's functions, so the
//! network is complete when `create` returns.
//!
//! Must never: store a network whose subnet overlaps another's. Callers
//! hold the manager's write lock (`Manager::write_lock`) from reading the
//! view to proposing, so two creates (or a create and an allocator pass)
//! cannot both pick the same free subnet.

use std::sync::Arc;

use swarm_proto::v1 as pb;
use tonic::Status;

use crate::allocator::{self, INGRESS_NAME, OVERLAY, ipam};
use crate::store::ReadTx;

/// Why a network request was refused; the text says what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetworkError {
    #[error("invalid network spec: {0}")]
    Invalid(String),
    #[error(transparent)]
    Ipam(#[from] ipam::IpamError),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    InUse(String),
    #[error("{0}")]
    NotFound(String),
}

impl From<NetworkError> for Status {
    fn from(e: NetworkError) -> Self {
        match e {
            NetworkError::Invalid(_) | NetworkError::Ipam(_) => {
                Status::invalid_argument(e.to_string())
            }
            NetworkError::Conflict(_) => Status::already_exists(e.to_string()),
            NetworkError::InUse(_) => Status::failed_precondition(e.to_string()),
            NetworkError::NotFound(_) => Status::not_found(e.to_string()),
        }
    }
}

fn invalid(msg: impl Into<String>) -> NetworkError {
    NetworkError::Invalid(msg.into())
}

/// A network's name, or "" if it has none.
#[must_use]
pub fn name_of(n: &pb::Network) -> &str {
    n.spec
        .as_ref()
        .and_then(|s| s.annotations.as_ref())
        .map_or("", |a| a.name.as_str())
}

fn id_of(n: &pb::Network) -> &str {
    n.meta.as_ref().map_or("", |m| m.id.as_str())
}

/// Docker's rule for network names: a letter or digit, then letters,
/// digits, `_`, `.` or `-`.
pub fn validate_name(name: &str) -> Result<(), NetworkError> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if name.is_empty() {
        return Err(invalid(
            "the network has no name: give one, e.g. `network create -d overlay my-net`",
        ));
    }
    if !first_ok || !rest_ok || name.len() > 255 {
        return Err(invalid(format!(
            "invalid network name {name:?}: use letters, digits, '_', '.' and '-', starting with a letter or digit"
        )));
    }
    Ok(())
}

/// Fills the driver (overlay) and checks a spec about to be created
/// against the networks of `view`.
pub fn check_create(view: &ReadTx, spec: &mut pb::NetworkSpec) -> Result<(), NetworkError> {
    let name = spec
        .annotations
        .as_ref()
        .map(|a| a.name.clone())
        .unwrap_or_default();
    validate_name(&name)?;
    let driver = spec.driver_config.get_or_insert_with(Default::default);
    if driver.name.is_empty() {
        driver.name = OVERLAY.into();
    }
    if driver.name != OVERLAY {
        return Err(invalid(format!(
            "network driver {:?} is not supported: swarm networks use the overlay driver (-d overlay)",
            driver.name
        )));
    }
    if spec.ipv6_enabled {
        return Err(invalid("IPv6 is not supported yet: leave out --ipv6"));
    }
    if let Some(existing) = view.get_by_name::<pb::Network>(&name) {
        return Err(NetworkError::Conflict(format!(
            "network with name {name} already exists ({}): choose another name",
            id_of(&existing)
        )));
    }
    if spec.ingress
        && let Some(i) = allocator::ingress_network(view)
    {
        return Err(NetworkError::Conflict(format!(
            "an ingress network already exists ({}): remove it first to replace it",
            name_of(&i)
        )));
    }
    let configs = spec
        .ipam
        .as_ref()
        .map(|i| i.configs.as_slice())
        .unwrap_or_default();
    if configs.len() > 1 {
        return Err(invalid(
            "only one --subnet per network is supported: give one subnet",
        ));
    }
    if let Some(c) = configs.first() {
        if c.subnet.is_empty() {
            if !c.gateway.is_empty() {
                return Err(ipam::IpamError::GatewayWithoutSubnet.into());
            }
        } else {
            let subnet = ipam::parse_subnet(&c.subnet)?;
            if !c.gateway.is_empty() {
                ipam::parse_gateway(&c.gateway, &subnet)?;
            }
            if !c.range.is_empty() {
                return Err(invalid("--ip-range is not supported: leave it out"));
            }
            for other in view.list::<pb::Network>() {
                if let Some(o) = ipam::network_subnet(&other)
                    && (o.contains(&subnet.network()) || subnet.contains(&o.network()))
                {
                    return Err(NetworkError::Conflict(format!(
                        "subnet {subnet} overlaps network {} ({o}): choose another --subnet",
                        name_of(&other)
                    )));
                }
            }
        }
    }
    Ok(())
}

/// A new network for `spec` (checked), with its subnet and VXLAN ID.
pub fn new_network(view: &ReadTx, spec: pb::NetworkSpec) -> Result<pb::Network, NetworkError> {
    let (subnet, vni) = allocator::plan_network(view, &spec).map_err(NetworkError::InUse)?;
    let n = pb::Network {
        meta: Some(pb::Meta {
            id: crate::store::new_id(),
            ..Default::default()
        }),
        spec: Some(spec),
        ..Default::default()
    };
    Ok(allocator::allocated_network(&n, subnet, vni))
}

/// The spec of the `ingress` network `swarm init` creates.
#[must_use]
pub fn ingress_spec() -> pb::NetworkSpec {
    pb::NetworkSpec {
        annotations: Some(pb::Annotations {
            name: INGRESS_NAME.into(),
            ..Default::default()
        }),
        driver_config: Some(pb::Driver {
            name: OVERLAY.into(),
            ..Default::default()
        }),
        ingress: true,
        ..Default::default()
    }
}

/// Finds one network by ID, name, or unique ID prefix (docker's order).
pub fn resolve(view: &ReadTx, r: &str) -> Result<Arc<pb::Network>, NetworkError> {
    if r.is_empty() {
        return Err(invalid("no network given"));
    }
    if let Some(n) = view.get::<pb::Network>(r) {
        return Ok(n);
    }
    if let Some(n) = view.get_by_name::<pb::Network>(r) {
        return Ok(n);
    }
    let mut found = view.find_by_id_prefix::<pb::Network>(r);
    match found.len() {
        0 => Err(NetworkError::NotFound(format!(
            "network {r} not found: `network ls` lists the networks"
        ))),
        1 => Ok(found.remove(0)),
        n => Err(invalid(format!(
            "network {r} is ambiguous ({n} matches): use a longer ID prefix or the name"
        ))),
    }
}

fn service_name(s: &pb::Service) -> &str {
    s.spec
        .as_ref()
        .and_then(|s| s.annotations.as_ref())
        .map_or("", |a| a.name.as_str())
}

fn publishes_ingress(s: &pb::ServiceSpec) -> bool {
    s.endpoint.as_ref().is_some_and(|e| {
        e.ports
            .iter()
            .any(|p| p.publish_mode == pb::PublishMode::Ingress as i32)
    })
}

/// Refuses removing `net` while something uses it: a service attached to
/// it (or, for ingress, publishing a port through it), or a task that has
/// not ended and holds an address on it.
pub fn check_remove(view: &ReadTx, net: &pb::Network) -> Result<(), NetworkError> {
    let (id, name) = (id_of(net), name_of(net));
    let ingress = net.spec.as_ref().is_some_and(|s| s.ingress);
    for s in view.list::<pb::Service>() {
        let Some(spec) = s.spec.as_ref() else {
            continue;
        };
        let attached = spec
            .task
            .as_ref()
            .is_some_and(|t| t.networks.iter().any(|a| a.target == id));
        if attached {
            return Err(NetworkError::InUse(format!(
                "network {name} is in use by service {}: remove the service or update it with --network-rm {name} first",
                service_name(&s)
            )));
        }
        if ingress && publishes_ingress(spec) {
            return Err(NetworkError::InUse(format!(
                "ingress network can't be removed because service {} depends on it: remove the service or publish its ports with mode=host first",
                service_name(&s)
            )));
        }
    }
    for t in view.list::<pb::Task>() {
        let ended = t
            .status
            .as_ref()
            .is_some_and(|s| s.state > pb::TaskState::Running as i32);
        if !ended && t.networks.iter().any(|a| a.network_id == id) {
            let service = t
                .service_annotations
                .as_ref()
                .map_or("", |a| a.name.as_str());
            return Err(NetworkError::InUse(format!(
                "network {name} is in use by task {} of service {service}, which is still stopping: retry once it has stopped",
                t.meta.as_ref().map_or("", |m| m.id.as_str())
            )));
        }
    }
    Ok(())
}

/// Whether a network passes `network ls` filters (docker's: name and ID
/// match on a part, labels on key or key=value, driver exactly).
#[must_use]
pub fn matches_filters(n: &pb::Network, f: &pb::ListNetworksRequest) -> bool {
    let labels = n
        .spec
        .as_ref()
        .and_then(|s| s.annotations.as_ref())
        .map(|a| &a.labels);
    let driver = n
        .spec
        .as_ref()
        .and_then(|s| s.driver_config.as_ref())
        .map_or(OVERLAY, |d| d.name.as_str());
    let name = name_of(n);
    (f.names.is_empty() || f.names.iter().any(|p| name.contains(p.as_str())))
        && (f.ids.is_empty() || f.ids.iter().any(|p| id_of(n).contains(p.as_str())))
        && f.labels.iter().all(|l| match l.split_once('=') {
            Some((k, v)) => labels.and_then(|m| m.get(k)).is_some_and(|have| have == v),
            None => labels.is_some_and(|m| m.contains_key(l)),
        })
        && (f.drivers.is_empty() || f.drivers.iter().any(|d| d == driver))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{MemoryStore, StoreObject, WriteTx, defaults, new_batch};

    fn store_with(nets: Vec<pb::Network>) -> MemoryStore {
        let store = MemoryStore::new();
        let actions = store
            .prepare(|tx: &mut WriteTx| {
                tx.create(defaults::cluster("c", "default"))?;
                for n in nets {
                    tx.create(n)?;
                }
                Ok::<_, crate::store::StoreError>(())
            })
            .unwrap();
        store.apply(1, new_batch(actions)).unwrap();
        store
    }

    fn spec(name: &str, subnet: &str, gateway: &str) -> pb::NetworkSpec {
        pb::NetworkSpec {
            annotations: Some(pb::Annotations {
                name: name.into(),
                ..Default::default()
            }),
            ipam: (!subnet.is_empty() || !gateway.is_empty()).then(|| pb::IpamOptions {
                driver: None,
                configs: vec![pb::IpamConfig {
                    subnet: subnet.into(),
                    gateway: gateway.into(),
                    ..Default::default()
                }],
            }),
            ..Default::default()
        }
    }

    fn created(view: &ReadTx, s: pb::NetworkSpec) -> pb::Network {
        let mut s = s;
        check_create(view, &mut s).unwrap();
        new_network(view, s).unwrap()
    }

    fn err(view: &ReadTx, mut s: pb::NetworkSpec) -> String {
        check_create(view, &mut s).unwrap_err().to_string()
    }

    #[test]
    fn new_networks_get_the_overlay_driver_and_a_subnet() {
        let store = store_with(vec![]);
        let view = store.view();
        let ingress = created(&view, ingress_spec());
        assert_eq!(
            ingress.ipam.as_ref().unwrap().configs[0].subnet,
            "10.0.0.0/24"
        );
        assert_eq!(
            ingress.ipam.as_ref().unwrap().configs[0].gateway,
            "10.0.0.1"
        );
        assert_eq!(ingress.vni, 4096);
        let store = store_with(vec![ingress]);
        let n = created(&store.view(), spec("web-net", "", ""));
        assert_eq!(
            n.spec
                .as_ref()
                .unwrap()
                .driver_config
                .as_ref()
                .unwrap()
                .name,
            "overlay"
        );
        assert_eq!(n.ipam.as_ref().unwrap().configs[0].subnet, "10.0.1.0/24");
        assert_eq!(n.vni, 4097);
        let n = created(
            &store.view(),
            spec("mine", "192.168.7.0/24", "192.168.7.100"),
        );
        assert_eq!(n.ipam.as_ref().unwrap().configs[0].gateway, "192.168.7.100");
    }

    #[test]
    fn bad_specs_are_refused_with_what_to_do() {
        let store = store_with(vec![]);
        let view = store.view();
        let taken = created(&view, spec("taken", "10.5.0.0/16", ""));
        let store = store_with(vec![taken, created(&view, ingress_spec())]);
        let view = store.view();
        let e = err(&view, spec("", "", ""));
        assert!(e.contains("no name"), "{e}");
        let e = err(&view, spec("-x", "", ""));
        assert!(e.contains("invalid network name"), "{e}");
        let mut bridge = spec("b", "", "");
        bridge.driver_config = Some(pb::Driver {
            name: "bridge".into(),
            ..Default::default()
        });
        let e = err(&view, bridge);
        assert!(e.contains("overlay driver (-d overlay)"), "{e}");
        let e = err(&view, spec("TAKEN", "", ""));
        assert!(e.contains("network with name TAKEN already exists"), "{e}");
        let e = err(&view, spec("x", "10.5.3.0/24", ""));
        assert!(
            e.contains("subnet 10.5.3.0/24 overlaps network taken (10.5.0.0/16)"),
            "{e}"
        );
        let e = err(&view, spec("x", "10.0.0.0/8", ""));
        assert!(e.contains("overlaps network"), "{e}");
        let e = err(&view, spec("x", "10.9.0.1/24", ""));
        assert!(e.contains("did you mean 10.9.0.0/24"), "{e}");
        let e = err(&view, spec("x", "10.9.0.0/24", "10.8.0.1"));
        assert!(
            e.contains("gateway 10.8.0.1 is not a usable address"),
            "{e}"
        );
        let e = err(&view, spec("x", "", "10.8.0.1"));
        assert!(e.contains("--gateway needs --subnet"), "{e}");
        let mut second = ingress_spec();
        second.annotations.as_mut().unwrap().name = "ingress2".into();
        let e = err(&view, second);
        assert!(e.contains("an ingress network already exists"), "{e}");
    }

    #[test]
    fn networks_in_use_are_not_removed() {
        let store = store_with(vec![]);
        let view = store.view();
        let net = created(&view, spec("web-net", "", ""));
        let ingress = created(&view, spec("ingress", "10.255.0.0/16", ""));
        let mut ingress = ingress;
        ingress.spec.as_mut().unwrap().ingress = true;
        let nid = net.meta.as_ref().unwrap().id.clone();
        let svc = pb::Service {
            meta: Some(pb::Meta {
                id: "s1".into(),
                ..Default::default()
            }),
            spec: Some(pb::ServiceSpec {
                annotations: Some(pb::Annotations {
                    name: "web".into(),
                    ..Default::default()
                }),
                task: Some(pb::TaskSpec {
                    networks: vec![pb::NetworkAttachmentConfig {
                        target: nid.clone(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                endpoint: Some(pb::EndpointSpec {
                    ports: vec![pb::PortConfig {
                        target_port: 80,
                        published_port: 8080,
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let store = store_with(vec![net.clone(), ingress.clone()]);
        assert_eq!(check_remove(&store.view(), &net), Ok(()));
        let actions = store.prepare(|tx: &mut WriteTx| tx.create(svc)).unwrap();
        store.apply(2, new_batch(actions)).unwrap();
        let e = check_remove(&store.view(), &net).unwrap_err().to_string();
        assert_eq!(
            e,
            "network web-net is in use by service web: remove the service or update it with --network-rm web-net first"
        );
        let e = check_remove(&store.view(), &ingress)
            .unwrap_err()
            .to_string();
        assert!(e.contains("service web depends on it"), "{e}");
        assert_eq!(resolve(&store.view(), "WEB-NET").unwrap().id(), nid);
        assert_eq!(resolve(&store.view(), &nid[..6]).unwrap().id(), nid);
        assert!(matches!(
            resolve(&store.view(), "nope"),
            Err(NetworkError::NotFound(_))
        ));
    }

    #[test]
    fn list_filters_match_like_docker() {
        let mut n = created(&store_with(vec![]).view(), spec("my-web-net", "", ""));
        n.spec
            .as_mut()
            .unwrap()
            .annotations
            .as_mut()
            .unwrap()
            .labels = [("env".to_string(), "prod".to_string())].into();
        let f = |names: &[&str], labels: &[&str], drivers: &[&str]| pb::ListNetworksRequest {
            names: names.iter().map(|s| s.to_string()).collect(),
            ids: vec![],
            labels: labels.iter().map(|s| s.to_string()).collect(),
            drivers: drivers.iter().map(|s| s.to_string()).collect(),
        };
        assert!(matches_filters(&n, &f(&[], &[], &[])));
        assert!(matches_filters(&n, &f(&["web"], &[], &[])));
        assert!(!matches_filters(&n, &f(&["db"], &[], &[])));
        assert!(matches_filters(&n, &f(&[], &["env"], &["overlay"])));
        assert!(matches_filters(&n, &f(&[], &["env=prod"], &[])));
        assert!(!matches_filters(&n, &f(&[], &["env=dev"], &[])));
        assert!(!matches_filters(&n, &f(&[], &[], &["bridge"])));
    }
}
