use super::*;
use crate::store::{MemoryStore, testutil};

fn attached(mut t: pb::Task, net: &str, addr: &str) -> pb::Task {
    t.networks.push(pb::NetworkAttachment {
        network_id: net.into(),
        addresses: vec![addr.into()],
        ..Default::default()
    });
    t.service_annotations = Some(pb::Annotations {
        name: "web".into(),
        ..Default::default()
    });
    t
}

fn node(id: &str, addr: &str) -> pb::Node {
    let mut n = testutil::node(id, id);
    n.status = Some(pb::NodeStatus {
        addr: addr.into(),
        ..Default::default()
    });
    n
}

/// n1 (198.51.100.11) runs t1, n2 (203.0.113.12) runs t2 on net1; t3 on
/// n2 has no network; n3 runs nothing. Service s1 is on net1 (by name).
fn store() -> MemoryStore {
    let store = MemoryStore::new();
    let mut s1 = testutil::service("s1", "web");
    s1.spec
        .as_mut()
        .expect("test service has a spec")
        .task
        .get_or_insert_default()
        .networks
        .push(pb::NetworkAttachmentConfig {
            target: "front".into(),
            aliases: vec!["www".into()],
            ..Default::default()
        });
    let mut net1 = testutil::network("net1", "front");
    net1.vni = 4097;
    store
        .apply(
            1,
            testutil::batch(
                1,
                vec![
                    testutil::create(node("n1", "198.51.100.11")),
                    testutil::create(node("n2", "203.0.113.12")),
                    testutil::create(node("n3", "198.51.100.13")),
                    testutil::create(net1),
                    testutil::create(s1),
                    testutil::create(attached(
                        testutil::task("t1", "s1", 1, "n1"),
                        "net1",
                        "10.0.1.3/24",
                    )),
                    testutil::create(attached(
                        testutil::task("t2", "s1", 2, "n2"),
                        "net1",
                        "10.0.1.4/24",
                    )),
                    testutil::create(testutil::task("t3", "s1", 3, "n2")),
                ],
            ),
        )
        .expect("batch applies");
    store
}

fn full(store: &MemoryStore, node: &str) -> (NodeNetState, pb::AssignmentsMessage) {
    let mut st = NodeNetState::new(node);
    let mut m = pb::AssignmentsMessage::default();
    st.sync_all(&store.view(), &mut m);
    (st, m)
}

#[test]
fn a_node_gets_its_networks_with_everyone_on_them() {
    let store = store();
    let (_, m) = full(&store, "n1");
    assert_eq!(m.updated_networks.len(), 1);
    assert_eq!(m.updated_networks[0].vni, 4097);
    let mut peers: Vec<(String, String, String)> = m
        .updated_peers
        .iter()
        .map(|p| (p.task_id.clone(), p.addr.clone(), p.node_addr.clone()))
        .collect();
    peers.sort();
    assert_eq!(
        peers,
        vec![
            ("t1".into(), "10.0.1.3/24".into(), "198.51.100.11".into()),
            ("t2".into(), "10.0.1.4/24".into(), "203.0.113.12".into()),
        ]
    );
    let t1 = m.updated_peers.iter().find(|p| p.task_id == "t1");
    assert_eq!(t1.map(|p| p.task_name.as_str()), Some("web.1.t1"));
    assert_eq!(m.updated_services.len(), 1);
    // The service's attachment names the network by ID on the node side.
    assert_eq!(m.updated_services[0].networks[0].target, "net1");
    assert_eq!(m.updated_services[0].name, "web");
}

#[test]
fn a_node_without_attached_tasks_gets_nothing() {
    let store = store();
    let (_, m) = full(&store, "n3");
    assert!(m.updated_networks.is_empty() && m.updated_peers.is_empty());
    assert!(m.updated_services.is_empty());
}

#[test]
fn a_changed_peer_is_sent_once_and_a_removed_one_is_removed() {
    let store = store();
    let (mut st, _) = full(&store, "n1");
    let mut t2 = testutil::read::<pb::Task>(&store, "t2");
    t2.status = Some(pb::TaskStatus {
        state: pb::TaskState::Running.into(),
        ..Default::default()
    });
    let events = store
        .apply(2, testutil::batch(2, vec![testutil::update(t2)]))
        .expect("update applies");
    let mut m = pb::AssignmentsMessage::default();
    st.sync(&store.view(), &events, false, &mut m);
    assert_eq!(m.updated_peers.len(), 1);
    assert_eq!(m.updated_peers[0].state, pb::TaskState::Running as i32);
    // The same events again (a repeat) send nothing.
    let mut again = pb::AssignmentsMessage::default();
    st.sync(&store.view(), &events, false, &mut again);
    assert_eq!(again, pb::AssignmentsMessage::default());

    let events = store
        .apply(
            3,
            testutil::batch(3, vec![testutil::remove::<pb::Task>("t2")]),
        )
        .expect("remove applies");
    let mut m = pb::AssignmentsMessage::default();
    st.sync(&store.view(), &events, false, &mut m);
    assert_eq!(
        m.removed_peers,
        vec![pb::NetworkPeerKey {
            task_id: "t2".into(),
            network_id: "net1".into()
        }]
    );
}

#[test]
fn losing_the_last_attached_task_drops_the_network_and_what_was_on_it() {
    let store = store();
    let (mut st, _) = full(&store, "n1");
    let events = store
        .apply(
            2,
            testutil::batch(2, vec![testutil::remove::<pb::Task>("t1")]),
        )
        .expect("remove applies");
    let mut m = pb::AssignmentsMessage::default();
    st.sync(&store.view(), &events, true, &mut m);
    assert_eq!(m.removed_network_ids, vec!["net1".to_string()]);
    let mut removed: Vec<String> = m.removed_peers.iter().map(|k| k.task_id.clone()).collect();
    removed.sort();
    assert_eq!(removed, vec!["t1".to_string(), "t2".to_string()]);
    assert_eq!(m.removed_service_ids, vec!["s1".to_string()]);
    assert!(!st.has_network("net1"));
}

#[test]
fn joining_a_network_sends_everyone_already_on_it() {
    let store = store();
    let (mut st, first) = full(&store, "n3");
    assert!(first.updated_peers.is_empty());
    let events = store
        .apply(
            2,
            testutil::batch(
                2,
                vec![testutil::create(attached(
                    testutil::task("t4", "s1", 4, "n3"),
                    "net1",
                    "10.0.1.5/24",
                ))],
            ),
        )
        .expect("create applies");
    let mut m = pb::AssignmentsMessage::default();
    st.sync(&store.view(), &events, true, &mut m);
    assert_eq!(m.updated_networks.len(), 1);
    let mut ids: Vec<String> = m.updated_peers.iter().map(|p| p.task_id.clone()).collect();
    ids.sort();
    assert_eq!(ids, vec!["t1", "t2", "t4"]);
    assert_eq!(m.updated_services.len(), 1);
}

#[test]
fn every_node_is_on_the_ingress_network_with_everyone_publishing() {
    let store = store();
    let mut ingress = testutil::network("ing", "ingress");
    ingress.vni = 4096;
    ingress
        .spec
        .as_mut()
        .expect("test network has a spec")
        .ingress = true;
    // s1 publishes a port: the allocator gave it a VIP on ingress.
    let mut s1 = testutil::read::<pb::Service>(&store, "s1");
    s1.endpoint = Some(pb::Endpoint {
        virtual_ips: vec![pb::VirtualIp {
            network_id: "ing".into(),
            addr: "10.0.0.2/24".into(),
        }],
        ..Default::default()
    });
    store
        .apply(
            2,
            testutil::batch(
                2,
                vec![
                    testutil::create(ingress),
                    testutil::update(s1),
                    testutil::create(attached(
                        testutil::task("t9", "s1", 9, "n1"),
                        "ing",
                        "10.0.0.5/24",
                    )),
                ],
            ),
        )
        .expect("batch applies");
    // n3 runs nothing, yet gets ingress and the task publishing on it.
    let (_, m) = full(&store, "n3");
    let nets: Vec<u32> = m.updated_networks.iter().map(|n| n.vni).collect();
    assert_eq!(nets, vec![4096]);
    assert_eq!(m.updated_peers.len(), 1);
    assert_eq!(m.updated_peers[0].task_id, "t9");
}
