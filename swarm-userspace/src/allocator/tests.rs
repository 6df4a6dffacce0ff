use std::sync::Arc;
use std::time::{Duration, SystemTime};

use swarm_proto::v1 as pb;
use swarm_proto::v1::TaskState as S;

use super::*;
use crate::store::{MemoryStore, defaults};

/// A store the tests write to as a leader would: one batch per change.
pub(super) struct Env {
    pub store: MemoryStore,
    index: u64,
    pub now: SystemTime,
}

pub(super) fn at(s: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + s)
}

impl Env {
    pub fn new() -> Env {
        Env::with_cluster(defaults::cluster("c", "default"))
    }

    pub fn with_cluster(c: pb::Cluster) -> Env {
        let mut e = Env {
            store: MemoryStore::new(),
            index: 0,
            now: at(0),
        };
        e.write(|tx| tx.create(c));
        e
    }

    pub fn write(&mut self, f: impl FnOnce(&mut WriteTx) -> Result<(), StoreError>) {
        let actions = self.store.prepare(f).unwrap();
        if actions.is_empty() {
            return;
        }
        self.index += 1;
        let batch = pb::StoreBatch {
            timestamp: Some(self.now.into()),
            actions,
        };
        self.store.apply(self.index, batch).unwrap();
    }

    /// One pass, written.
    pub fn pass(&mut self, a: &mut Allocator) -> Allocations {
        let view = self.store.view();
        let out = a.pass(&view, self.now);
        self.write(|tx| out.write(tx));
        out
    }

    pub fn view(&self) -> ReadTx {
        self.store.view()
    }

    pub fn network(&self, id: &str) -> Arc<pb::Network> {
        self.view().get::<pb::Network>(id).unwrap()
    }

    pub fn service(&self, id: &str) -> Arc<pb::Service> {
        self.view().get::<pb::Service>(id).unwrap()
    }

    pub fn task(&self, id: &str) -> Arc<pb::Task> {
        self.view().get::<pb::Task>(id).unwrap()
    }

    pub fn set_state(&mut self, id: &str, s: S) {
        let mut t = (*self.task(id)).clone();
        t.status.get_or_insert_with(Default::default).state = s.into();
        self.write(|tx| tx.update(t));
    }
}

pub(super) fn meta(id: &str) -> Option<pb::Meta> {
    Some(pb::Meta {
        id: id.into(),
        ..Default::default()
    })
}

pub(super) fn network(id: &str, subnet: Option<&str>) -> pb::Network {
    pb::Network {
        meta: meta(id),
        spec: Some(pb::NetworkSpec {
            annotations: Some(pb::Annotations {
                name: format!("net-{id}"),
                ..Default::default()
            }),
            driver_config: Some(pb::Driver {
                name: OVERLAY.into(),
                ..Default::default()
            }),
            ipam: subnet.map(|s| pb::IpamOptions {
                driver: None,
                configs: vec![pb::IpamConfig {
                    subnet: s.into(),
                    ..Default::default()
                }],
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(super) fn ingress() -> pb::Network {
    let mut n = network("ingress", None);
    let spec = n.spec.as_mut().unwrap();
    spec.annotations.as_mut().unwrap().name = INGRESS_NAME.into();
    spec.ingress = true;
    n
}

pub(super) fn service(id: &str, networks: &[&str], ports: &[(u32, u32)]) -> pb::Service {
    pb::Service {
        meta: meta(id),
        spec: Some(pb::ServiceSpec {
            annotations: Some(pb::Annotations {
                name: format!("svc-{id}"),
                ..Default::default()
            }),
            task: Some(pb::TaskSpec {
                networks: networks
                    .iter()
                    .map(|n| pb::NetworkAttachmentConfig {
                        target: (*n).into(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }),
            endpoint: Some(pb::EndpointSpec {
                mode: pb::EndpointMode::Vip.into(),
                ports: ports
                    .iter()
                    .map(|(published, target)| pb::PortConfig {
                        target_port: *target,
                        published_port: *published,
                        ..Default::default()
                    })
                    .collect(),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(super) fn task(id: &str, svc: &pb::Service) -> pb::Task {
    let spec = svc.spec.as_ref().unwrap();
    pb::Task {
        meta: meta(id),
        spec: spec.task.clone(),
        service_id: svc.meta.as_ref().unwrap().id.clone(),
        service_annotations: spec.annotations.clone(),
        status: Some(pb::TaskStatus {
            state: S::New.into(),
            message: "created".into(),
            ..Default::default()
        }),
        desired_state: S::Running.into(),
        ..Default::default()
    }
}

fn subnet_of(n: &pb::Network) -> (String, String) {
    let c = &n.ipam.as_ref().unwrap().configs[0];
    (c.subnet.clone(), c.gateway.clone())
}

fn state(t: &pb::Task) -> S {
    S::try_from(t.status.as_ref().unwrap().state).unwrap()
}

fn addrs(t: &pb::Task) -> Vec<(String, Vec<String>)> {
    t.networks
        .iter()
        .map(|n| (n.network_id.clone(), n.addresses.clone()))
        .collect()
}

#[test]
fn networks_get_subnets_from_the_pool_in_order() {
    let mut e = Env::new();
    e.write(|tx| {
        tx.create(ingress())?;
        tx.create(network("a", None))?;
        tx.create(network("b", Some("10.0.1.0/24")))?;
        tx.create(network("c", None))
    });
    let mut a = Allocator::from_view(&e.view());
    let out = e.pass(&mut a);
    assert_eq!(out.networks.len(), 4);
    // IDs sort "a", "b", "c", "ingress": b's own subnet is skipped.
    assert_eq!(
        subnet_of(&e.network("a")),
        ("10.0.0.0/24".into(), "10.0.0.1".into())
    );
    assert_eq!(
        subnet_of(&e.network("b")),
        ("10.0.1.0/24".into(), "10.0.1.1".into())
    );
    assert_eq!(subnet_of(&e.network("c")).0, "10.0.2.0/24");
    assert_eq!(subnet_of(&e.network("ingress")).0, "10.0.3.0/24");
    let vnis: Vec<u32> = ["a", "b", "c", "ingress"].map(|n| e.network(n).vni).into();
    assert_eq!(vnis, [4096, 4097, 4098, 4099]);
    let a_net = e.network("a");
    let opts = &a_net.driver_state.as_ref().unwrap().options;
    assert_eq!(opts[VXLAN_ID_OPTION], "4096");
    // Nothing left to do.
    assert!(e.pass(&mut a).is_empty());
}

#[test]
fn a_custom_pool_and_gateway_are_used() {
    let mut c = defaults::cluster("c", "default");
    c.default_address_pool = vec!["172.30.0.0/16".into()];
    c.subnet_size = 26;
    let mut e = Env::with_cluster(c);
    let mut gw = network("g", Some("192.168.5.0/24"));
    gw.spec.as_mut().unwrap().ipam.as_mut().unwrap().configs[0].gateway = "192.168.5.254".into();
    e.write(|tx| {
        tx.create(network("a", None))?;
        tx.create(network("b", None))?;
        tx.create(gw)
    });
    let mut a = Allocator::from_view(&e.view());
    e.pass(&mut a);
    assert_eq!(subnet_of(&e.network("a")).0, "172.30.0.0/26");
    assert_eq!(subnet_of(&e.network("b")).0, "172.30.0.64/26");
    assert_eq!(
        subnet_of(&e.network("g")),
        ("192.168.5.0/24".into(), "192.168.5.254".into())
    );
}

#[test]
fn plan_network_agrees_with_the_allocator() {
    let mut e = Env::new();
    e.write(|tx| tx.create(network("a", Some("10.0.0.0/23"))));
    let (subnet, vni) = plan_network(&e.view(), &pb::NetworkSpec::default()).unwrap();
    assert_eq!((subnet.to_string(), vni), ("10.0.2.0/24".into(), 4096));
    let n = allocated_network(&network("b", None), subnet, vni);
    assert_eq!(subnet_of(&n), ("10.0.2.0/24".into(), "10.0.2.1".into()));
}

#[test]
fn vip_services_get_a_virtual_ip_per_network_and_ingress_when_publishing() {
    let mut e = Env::new();
    e.write(|tx| {
        tx.create(ingress())?;
        tx.create(network("a", Some("10.1.0.0/24")))?;
        tx.create(service("web", &["a"], &[(8080, 80), (0, 443)]))?;
        let mut dns = service("dns", &["a"], &[]);
        dns.spec.as_mut().unwrap().endpoint.as_mut().unwrap().mode = pb::EndpointMode::Dnsrr.into();
        tx.create(dns)?;
        tx.create(service("plain", &[], &[]))
    });
    let mut a = Allocator::from_view(&e.view());
    e.pass(&mut a);
    let web = e.service("web");
    let ep = web.endpoint.as_ref().unwrap();
    let vips: Vec<(&str, &str)> = ep
        .virtual_ips
        .iter()
        .map(|v| (v.network_id.as_str(), v.addr.as_str()))
        .collect();
    assert_eq!(vips, [("ingress", "10.0.0.2/24"), ("a", "10.1.0.2/24")]);
    let published: Vec<u32> = ep.ports.iter().map(|p| p.published_port).collect();
    assert_eq!(published, [8080, 30000]);
    assert_eq!(ep.spec, web.spec.as_ref().unwrap().endpoint);
    assert!(
        e.service("dns")
            .endpoint
            .as_ref()
            .unwrap()
            .virtual_ips
            .is_empty()
    );
    assert!(
        e.service("plain")
            .endpoint
            .as_ref()
            .unwrap()
            .virtual_ips
            .is_empty()
    );
    assert!(e.pass(&mut a).is_empty());

    // Leaving a network frees its VIP once the change is written; the
    // dynamic port stays.
    let mut web = (*e.service("web")).clone();
    web.spec
        .as_mut()
        .unwrap()
        .task
        .as_mut()
        .unwrap()
        .networks
        .clear();
    e.write(|tx| tx.update(web));
    e.pass(&mut a);
    let ep = e.service("web").endpoint.clone().unwrap();
    assert_eq!(ep.virtual_ips.len(), 1);
    assert_eq!(ep.ports[1].published_port, 30000);
    assert_eq!(a.nets["a"].subnet.free(), 252);
    assert!(e.pass(&mut a).is_empty());
    assert_eq!(a.nets["a"].subnet.free(), 253);
}

#[test]
fn new_tasks_get_an_address_per_network_and_become_pending() {
    let mut e = Env::new();
    let svc = service("web", &["a", "net-b"], &[(8080, 80)]);
    e.write(|tx| {
        tx.create(ingress())?;
        tx.create(network("a", Some("10.1.0.0/24")))?;
        tx.create(network("b", Some("10.2.0.0/24")))?;
        tx.create(svc.clone())?;
        tx.create(task("t1", &svc))?;
        tx.create(task("t2", &svc))
    });
    let mut a = Allocator::from_view(&e.view());
    e.now = at(5);
    let out = e.pass(&mut a);
    assert_eq!(out.tasks.len(), 2);
    let t1 = e.task("t1");
    assert_eq!(state(&t1), S::Pending);
    let status = t1.status.as_ref().unwrap();
    assert_eq!(status.message, PENDING_MESSAGE);
    assert_eq!(status.timestamp, Some(at(5).into()));
    // Ingress first; the VIPs took the first addresses.
    assert_eq!(
        addrs(&t1),
        [
            ("ingress".to_string(), vec!["10.0.0.3/24".to_string()]),
            ("a".into(), vec!["10.1.0.3/24".into()]),
            ("b".into(), vec!["10.2.0.3/24".into()]),
        ]
    );
    assert_eq!(t1.networks[1].aliases, ["svc-web"]);
    assert!(t1.networks[0].aliases.is_empty());
    assert_eq!(
        e.task("t2").networks[1].addresses,
        ["10.1.0.4/24".to_string()]
    );
    // The task carries the service's allocated endpoint.
    assert_eq!(t1.endpoint, e.service("web").endpoint);
    assert!(e.pass(&mut a).is_empty());
}

#[test]
fn tasks_without_networks_just_become_pending() {
    let mut e = Env::new();
    let svc = service("web", &[], &[]);
    e.write(|tx| {
        tx.create(svc.clone())?;
        tx.create(task("t1", &svc))
    });
    let mut a = Allocator::from_view(&e.view());
    e.pass(&mut a);
    let t = e.task("t1");
    assert_eq!(state(&t), S::Pending);
    assert!(t.networks.is_empty());
    assert!(e.pass(&mut a).is_empty());
}

#[test]
fn an_exhausted_subnet_leaves_tasks_new_with_the_reason_until_addresses_free_up() {
    let mut e = Env::new();
    // A /29: 5 usable addresses, one for the VIP, 4 for tasks.
    let svc = service("web", &["a"], &[]);
    e.write(|tx| {
        tx.create(network("a", Some("10.1.0.0/29")))?;
        tx.create(svc.clone())?;
        for i in 1..=5 {
            tx.create(task(&format!("t{i}"), &svc))?;
        }
        Ok(())
    });
    let mut a = Allocator::from_view(&e.view());
    e.pass(&mut a);
    let stuck = e.task("t5");
    assert_eq!(state(&stuck), S::New);
    let err = &stuck.status.as_ref().unwrap().err;
    assert!(
        err.contains("no IP address left on network net-a (10.1.0.0/29)"),
        "{err}"
    );
    // Said once: the next pass does not rewrite it.
    assert!(e.pass(&mut a).is_empty());
    // A task that ends frees its address, even though it stays in the store.
    e.set_state("t2", S::Failed);
    e.pass(&mut a);
    let t5 = e.task("t5");
    assert_eq!(state(&t5), S::Pending);
    assert_eq!(t5.networks[0].addresses, e.task("t2").networks[0].addresses);
}

#[test]
fn a_missing_network_or_ingress_is_the_tasks_error() {
    let mut e = Env::new();
    let svc = service("web", &["gone"], &[]);
    let publishing = service("pub", &[], &[(80, 80)]);
    e.write(|tx| {
        tx.create(svc.clone())?;
        tx.create(publishing.clone())?;
        tx.create(task("t1", &svc))?;
        tx.create(task("t2", &publishing))
    });
    let mut a = Allocator::from_view(&e.view());
    e.pass(&mut a);
    let err = |id| e.task(id).status.as_ref().unwrap().err.clone();
    assert!(
        err("t1").contains("network gone not found"),
        "{}",
        err("t1")
    );
    assert!(
        err("t2").contains("ingress network is missing"),
        "{}",
        err("t2")
    );
    assert_eq!(state(&e.task("t1")), S::New);
}

#[test]
fn removed_tasks_and_services_free_their_addresses() {
    let mut e = Env::new();
    let svc = service("web", &["a"], &[]);
    e.write(|tx| {
        tx.create(network("a", Some("10.1.0.0/24")))?;
        tx.create(svc.clone())?;
        tx.create(task("t1", &svc))
    });
    let mut a = Allocator::from_view(&e.view());
    e.pass(&mut a);
    assert_eq!(a.nets["a"].subnet.free(), 251);
    e.write(|tx| tx.remove::<pb::Task>("t1"));
    e.pass(&mut a);
    assert_eq!(a.nets["a"].subnet.free(), 252);
    e.write(|tx| tx.remove::<pb::Service>("web"));
    e.pass(&mut a);
    assert_eq!(a.nets["a"].subnet.free(), 253);
    assert_eq!(a.facts(), Allocator::from_view(&e.view()).facts());
}

#[test]
fn unwanted_new_tasks_are_left_alone() {
    let mut e = Env::new();
    let svc = service("web", &[], &[]);
    let mut t = task("t1", &svc);
    t.desired_state = S::Remove.into();
    e.write(|tx| {
        tx.create(svc.clone())?;
        tx.create(t)
    });
    let mut a = Allocator::from_view(&e.view());
    assert!(e.pass(&mut a).tasks.is_empty());
}

#[test]
fn writes_skip_objects_that_changed_and_the_next_pass_gives_the_same_address() {
    let mut e = Env::new();
    let svc = service("web", &["a"], &[]);
    e.write(|tx| {
        tx.create(network("a", Some("10.1.0.0/24")))?;
        tx.create(svc.clone())?;
        tx.create(task("t1", &svc))
    });
    let mut a = Allocator::from_view(&e.view());
    let view = e.view();
    let out = a.pass(&view, e.now);
    let planned = addrs(&out.tasks[0]);
    // Someone else writes the task meanwhile.
    let mut t = (*e.task("t1")).clone();
    t.status.as_mut().unwrap().message = "touched".into();
    e.write(|tx| tx.update(t));
    e.write(|tx| out.write(tx));
    assert_eq!(state(&e.task("t1")), S::New);
    assert!(e.service("web").endpoint.is_some());
    e.pass(&mut a);
    assert_eq!(addrs(&e.task("t1")), planned);
    assert_eq!(state(&e.task("t1")), S::Pending);
}

#[test]
fn a_new_leader_rebuilds_the_same_memory() {
    let mut e = Env::new();
    let svc = service("web", &["a"], &[(0, 80)]);
    e.write(|tx| {
        tx.create(ingress())?;
        tx.create(network("a", None))?;
        tx.create(svc.clone())?;
        for i in 0..20 {
            tx.create(task(&format!("t{i:02}"), &svc))?;
        }
        Ok(())
    });
    let mut a = Allocator::from_view(&e.view());
    e.pass(&mut a);
    e.set_state("t03", S::Complete);
    e.write(|tx| tx.remove::<pb::Task>("t04"));
    e.pass(&mut a);
    let rebuilt = Allocator::from_view(&e.view());
    assert_eq!(a.facts(), rebuilt.facts());
    // And the rebuilt one has nothing to do.
    let mut rebuilt = rebuilt;
    assert!(rebuilt.pass(&e.view(), e.now).is_empty());
}

/// Timing: run with `cargo test --release -p swarm allocator::tests::timing
/// -- --ignored --nocapture`.
#[test]
#[ignore = "timing; run in release mode"]
fn timing_100k_tasks() {
    use std::time::Instant;
    let mut e = Env::new();
    let svc = service("big", &["a"], &[(0, 80)]);
    e.write(|tx| {
        tx.create(ingress())?;
        tx.create(network("a", Some("10.128.0.0/14")))?;
        tx.create(svc.clone())
    });
    let mut ingress_net = (*e.network("ingress")).clone();
    ingress_net.spec.as_mut().unwrap().ipam = Some(pb::IpamOptions {
        driver: None,
        configs: vec![pb::IpamConfig {
            subnet: "10.0.0.0/14".into(),
            ..Default::default()
        }],
    });
    e.write(|tx| tx.update(ingress_net));
    e.write(|tx| {
        for i in 0..100_000 {
            tx.create(task(&format!("t{i:06}"), &svc))?;
        }
        Ok(())
    });
    let view = e.view();
    let started = Instant::now();
    let mut a = Allocator::from_view(&view);
    let rebuild_empty = started.elapsed();
    let started = Instant::now();
    let out = a.pass(&view, e.now);
    let first = started.elapsed();
    assert_eq!(out.tasks.len(), 100_000);
    assert!(out.tasks.iter().all(|t| t.networks.len() == 2));
    e.write(|tx| out.write(tx));
    let view = e.view();
    let started = Instant::now();
    let again = a.pass(&view, e.now);
    let steady = started.elapsed();
    assert!(again.is_empty());
    let started = Instant::now();
    let rebuilt = Allocator::from_view(&view);
    let rebuild = started.elapsed();
    assert_eq!(rebuilt.facts(), a.facts());
    println!(
        "100k tasks on 2 networks: rebuild (nothing allocated) {rebuild_empty:?}, first pass {first:?}, steady pass {steady:?}, rebuild {rebuild:?}"
    );
    assert!(first < Duration::from_secs(1), "first pass took {first:?}");
}
