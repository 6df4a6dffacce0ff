//! Random histories of networks, services and tasks: after every written
//! pass, no two holders share an address, every address is a usable one of
//! its subnet, and an allocator rebuilt from the store knows what the
//! incremental one knows.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use proptest::prelude::*;
use swarm_proto::v1 as pb;
use swarm_proto::v1::TaskState as S;

use super::tests::{Env, network, service, task};
use super::*;

#[derive(Debug, Clone)]
enum Op {
    /// A network; small subnets so they run out.
    Network(Option<u8>),
    /// A service on some of the networks, maybe publishing a port.
    Service(Vec<usize>, bool),
    /// New tasks for a service.
    Tasks(usize, usize),
    /// A task moves on (RUNNING) or ends (FAILED).
    Report(usize, bool),
    RemoveTask(usize),
    RemoveService(usize),
    /// The service's networks change.
    Reattach(usize, Vec<usize>),
    Pass,
    /// A pass whose writes are lost (a proposal that failed).
    LostPass,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => prop::option::of(27u8..=29).prop_map(Op::Network),
        1 => (prop::collection::vec(0usize..4, 0..3), any::<bool>()).prop_map(|(n, p)| Op::Service(n, p)),
        3 => (0usize..4, 1usize..6).prop_map(|(s, n)| Op::Tasks(s, n)),
        2 => (0usize..64, any::<bool>()).prop_map(|(t, ok)| Op::Report(t, ok)),
        1 => (0usize..64).prop_map(Op::RemoveTask),
        1 => (0usize..4).prop_map(Op::RemoveService),
        1 => (0usize..4, prop::collection::vec(0usize..4, 0..3)).prop_map(|(s, n)| Op::Reattach(s, n)),
        3 => Just(Op::Pass),
        1 => Just(Op::LostPass),
    ]
}

fn ids<T: StoreObject>(e: &Env) -> Vec<String> {
    e.view()
        .list::<T>()
        .map(|o| id_of(&*o).to_owned())
        .collect()
}

fn pick(v: &[String], i: usize) -> Option<String> {
    (!v.is_empty()).then(|| v[i % v.len()].clone())
}

fn check(e: &Env, a: &Allocator) -> Result<(), TestCaseError> {
    let view = e.view();
    let mut subnets = HashMap::new();
    for n in view.list::<pb::Network>() {
        if let Some(s) = ipam::allocated_subnet(&n) {
            subnets.insert(id_of(&*n).to_owned(), s);
        }
    }
    let mut owners: HashMap<(String, Ipv4Addr), String> = HashMap::new();
    let mut claim = |net: &str, addr: &str, who: String| -> Result<(), TestCaseError> {
        let ip = ipam::parse_cidr_addr(addr).ok_or_else(|| TestCaseError::fail(addr.to_owned()))?;
        let (subnet, gw) = subnets[net];
        prop_assert!(subnet.contains(&ip), "{who}: {ip} outside {subnet}");
        prop_assert!(
            ip != subnet.network() && ip != subnet.broadcast() && ip != gw,
            "{who}: {ip} is not usable in {subnet} (gateway {gw})"
        );
        prop_assert_eq!(addr, ipam::cidr(ip, &subnet));
        if let Some(other) = owners.insert((net.to_owned(), ip), who.clone()) {
            prop_assert!(false, "{who} and {other} share {ip} on {net}");
        }
        Ok(())
    };
    for s in view.list::<pb::Service>() {
        for v in s.endpoint.iter().flat_map(|e| &e.virtual_ips) {
            claim(&v.network_id, &v.addr, format!("service {}", id_of(&*s)))?;
        }
    }
    for t in view.list::<pb::Task>() {
        let st = task_state(&t);
        if st > S::Running as i32 {
            continue;
        }
        if st == S::New as i32 && is_wanted(&t) {
            // Left NEW only with a reason.
            prop_assert!(!t.status.as_ref().unwrap().err.is_empty(), "{:?}", t);
        }
        for n in &t.networks {
            for addr in &n.addresses {
                claim(&n.network_id, addr, format!("task {}", id_of(&*t)))?;
            }
        }
    }
    // What the allocator knows once it has seen the view its writes made
    // is what a new leader would rebuild from it.
    let mut seen = a.clone();
    seen.observe(&view);
    prop_assert_eq!(seen.facts(), Allocator::from_view(&view).facts());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn addresses_are_unique_usable_and_rebuildable(ops in prop::collection::vec(op(), 1..60)) {
        let mut e = Env::new();
        e.write(|tx| tx.create(super::tests::ingress()));
        let mut a = Allocator::from_view(&e.view());
        let mut n = 0;
        for op in ops {
            n += 1;
            let id = format!("x{n:03}");
            match op {
                Op::Network(prefix) => {
                    // Subnets from a range the default pool never carves
                    // from first, so user and pool subnets mix.
                    let subnet = prefix.map(|p| format!("10.200.{}.0/{p}", n % 250));
                    let clash = subnet.as_ref().is_some_and(|s| {
                        let s = ipam::parse_subnet(s).unwrap();
                        e.view().list::<pb::Network>().any(|n| ipam::network_subnet(&n).is_some_and(|o| o.contains(&s.network()) || s.contains(&o.network())))
                    });
                    if !clash {
                        e.write(|tx| tx.create(network(&id, subnet.as_deref())));
                    }
                }
                Op::Service(nets, publish) => {
                    let all = ids::<pb::Network>(&e);
                    let mut chosen: Vec<String> = nets.iter().filter_map(|i| pick(&all, *i)).filter(|n| n != "ingress").collect();
                    chosen.dedup();
                    let refs: Vec<&str> = chosen.iter().map(String::as_str).collect();
                    let ports: &[(u32, u32)] = if publish { &[(0, 80)] } else { &[] };
                    e.write(|tx| tx.create(service(&id, &refs, ports)));
                }
                Op::Tasks(s, count) => {
                    if let Some(sid) = pick(&ids::<pb::Service>(&e), s) {
                        let svc = (*e.service(&sid)).clone();
                        e.write(|tx| (0..count).try_for_each(|i| tx.create(task(&format!("{id}-{i}"), &svc))));
                    }
                }
                Op::Report(t, ok) => {
                    if let Some(tid) = pick(&ids::<pb::Task>(&e), t) {
                        let cur = task_state(&e.task(&tid));
                        let to = if ok { S::Running } else { S::Failed };
                        if cur >= S::Pending as i32 && cur < to as i32 {
                            e.set_state(&tid, to);
                        }
                    }
                }
                Op::RemoveTask(t) => {
                    if let Some(tid) = pick(&ids::<pb::Task>(&e), t) {
                        e.write(|tx| tx.remove::<pb::Task>(&tid));
                    }
                }
                Op::RemoveService(s) => {
                    if let Some(sid) = pick(&ids::<pb::Service>(&e), s) {
                        let tasks = e.view().tasks_by_service(&sid);
                        e.write(|tx| {
                            tx.remove::<pb::Service>(&sid)?;
                            for t in tasks {
                                let mut t = (*t).clone();
                                t.desired_state = S::Remove.into();
                                tx.update(t)?;
                            }
                            Ok(())
                        });
                    }
                }
                Op::Reattach(s, nets) => {
                    if let Some(sid) = pick(&ids::<pb::Service>(&e), s) {
                        let all = ids::<pb::Network>(&e);
                        let mut svc = (*e.service(&sid)).clone();
                        let mut chosen: Vec<String> = nets.iter().filter_map(|i| pick(&all, *i)).filter(|n| n != "ingress").collect();
                        chosen.dedup();
                        svc.spec.as_mut().unwrap().task.as_mut().unwrap().networks = chosen
                            .into_iter()
                            .map(|target| pb::NetworkAttachmentConfig { target, ..Default::default() })
                            .collect();
                        e.write(|tx| tx.update(svc));
                    }
                }
                Op::Pass => {
                    e.pass(&mut a);
                    check(&e, &a)?;
                }
                Op::LostPass => {
                    let _ = a.pass(&e.view(), e.now);
                }
            }
        }
        // Passes settle: addresses freed by one pass's writes (a VIP the
        // service gave up) go to waiting tasks in the next; then nothing
        // is left to do.
        let mut settled = false;
        for _ in 0..3 {
            let out = e.pass(&mut a);
            check(&e, &a)?;
            if out.is_empty() {
                settled = true;
                break;
            }
        }
        prop_assert!(settled, "passes do not settle");
    }
}
