//! Three in-process Raft nodes over real gRPC on loopback (no TLS: the
//! transport is tested in `ca`), with a tiny deterministic state machine.
use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use openraft::BasicNode;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

use super::{network::ChannelProvider, service::RaftService, *};

/// Appends payload bytes to a list; `restore` replaces it.
#[derive(Default)]
struct ListFsm(Mutex<Vec<(u64, Vec<u8>)>>);

impl Fsm for ListFsm {
    fn apply(&self, index: u64, p: &Proposal) -> ApplyResult {
        if p.payload == b"reject" {
            return ApplyResult::Rejected {
                reason: "asked to".into(),
            };
        }
        self.0.lock().unwrap().push((index, p.payload.clone()));
        ApplyResult::Applied { index }
    }
    fn snapshot(&self) -> Vec<u8> {
        postcard::to_allocvec(&*self.0.lock().unwrap()).unwrap()
    }
    fn restore(&self, data: &[u8]) -> Result<(), String> {
        *self.0.lock().unwrap() = postcard::from_bytes(data).map_err(|e| e.to_string())?;
        Ok(())
    }
}

impl ListFsm {
    fn payloads(&self) -> Vec<Vec<u8>> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(_, p)| p.clone())
            .collect()
    }
}

#[derive(Default)]
struct Plain(Mutex<HashMap<String, Channel>>);

impl ChannelProvider for Plain {
    fn channel(&self, addr: &str) -> Result<Channel, String> {
        let mut m = self.0.lock().unwrap();
        if let Some(c) = m.get(addr) {
            return Ok(c.clone());
        }
        let c = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| e.to_string())?
            .connect_timeout(Duration::from_millis(300))
            .connect_lazy();
        m.insert(addr.into(), c.clone());
        Ok(c)
    }
}

struct TestNode {
    id: RaftId,
    raft: Raft,
    fsm: Arc<ListFsm>,
    storage: RaftStorage,
    stop: CancellationToken,
    server: tokio::task::JoinHandle<()>,
}

fn fast_settings() -> RaftSettings {
    RaftSettings {
        heartbeat: Duration::from_millis(50),
        election_timeout_min: Duration::from_millis(300),
        election_timeout_max: Duration::from_millis(600),
        snapshot_interval: 20,
        keep_old_snapshots: 1,
    }
}

async fn start_node(id: RaftId, dir: &std::path::Path, addr: SocketAddr) -> TestNode {
    let fsm = Arc::new(ListFsm::default());
    let (raft, storage) = start(
        id,
        dir,
        &fast_settings(),
        "test",
        fsm.clone(),
        Arc::new(Plain::default()),
        network::Contacts::default(),
    )
    .await
    .unwrap();
    let stop = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let svc = RaftService::new(raft.clone()).into_server();
    let s = stop.clone();
    let server = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                s.cancelled(),
            )
            .await;
    });
    TestNode {
        id,
        raft,
        fsm,
        storage,
        stop,
        server,
    }
}

impl TestNode {
    async fn shutdown(self) {
        self.stop.cancel();
        let _ = self.raft.shutdown().await;
        let _ = self.server.await;
    }
}

fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn prop(b: &[u8]) -> Proposal {
    Proposal {
        timestamp_nanos: 1,
        payload: b.to_vec(),
    }
}

async fn leader_of(nodes: &[&TestNode]) -> RaftId {
    for _ in 0..100 {
        for n in nodes {
            if let Some(l) = n.raft.current_leader().await
                && nodes.iter().any(|x| x.id == l)
            {
                return l;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no leader elected");
}

async fn wait_applied(n: &TestNode, count: usize) {
    for _ in 0..100 {
        if n.fsm.payloads().len() >= count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("node {} applied {:?}", n.id, n.fsm.payloads().len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_fail_over_and_recover_from_disk() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let addrs: Vec<SocketAddr> = (0..3).map(|_| free_addr()).collect();
    let ids = [11_u64, 22, 33];
    let mut nodes = Vec::new();
    for i in 0..3 {
        nodes.push(Some(start_node(ids[i], dirs[i].path(), addrs[i]).await));
    }
    let members: BTreeMap<RaftId, BasicNode> = (0..3)
        .map(|i| (ids[i], BasicNode::new(addrs[i].to_string())))
        .collect();
    nodes[0]
        .as_ref()
        .unwrap()
        .raft
        .initialize(members)
        .await
        .unwrap();

    let live: Vec<&TestNode> = nodes.iter().flatten().collect();
    let leader = leader_of(&live).await;
    let l = live.iter().find(|n| n.id == leader).unwrap();
    for i in 0..50_u32 {
        let r = l.raft.client_write(prop(&i.to_be_bytes())).await.unwrap();
        assert!(matches!(r.data, ApplyResult::Applied { .. }));
    }
    // A rejected proposal is committed but changes nothing, everywhere.
    let r = l.raft.client_write(prop(b"reject")).await.unwrap();
    assert!(matches!(r.data, ApplyResult::Rejected { .. }));
    for n in &live {
        wait_applied(n, 50).await;
        assert_eq!(n.fsm.payloads().len(), 50);
    }
    // Snapshots were taken (interval 20) and old ones pruned (keep 1 + newest).
    let snaps = l.storage.state_machine.snapshot_count();
    assert!((1..=2).contains(&snaps), "{snaps} snapshots");

    // Kill the leader: the other two elect a new one and keep writing.
    let li = ids.iter().position(|i| *i == leader).unwrap();
    nodes[li].take().unwrap().shutdown().await;
    let live: Vec<&TestNode> = nodes.iter().flatten().collect();
    let started = std::time::Instant::now();
    let new_leader = leader_of(&live).await;
    assert_ne!(new_leader, leader);
    let nl = live.iter().find(|n| n.id == new_leader).unwrap();
    nl.raft.client_write(prop(b"after")).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));

    // Restart the old leader from its directory: it recovers its state from
    // snapshot + log and catches up.
    nodes[li] = Some(start_node(ids[li], dirs[li].path(), addrs[li]).await);
    let back = nodes[li].as_ref().unwrap();
    wait_applied(back, 51).await;
    assert_eq!(back.fsm.payloads().last().unwrap(), b"after");
    let expected = nodes.iter().flatten().next().unwrap().fsm.payloads();
    for n in nodes.iter().flatten() {
        wait_applied(n, 51).await;
        assert_eq!(n.fsm.payloads(), expected);
    }
    for n in nodes.into_iter().flatten() {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_leader_no_longer_says_it_leads() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let node = start_node(7, dir.path(), addr).await;
    let members: BTreeMap<RaftId, BasicNode> = [(7, BasicNode::new(addr.to_string()))].into();
    node.raft.initialize(members).await.unwrap();
    assert_eq!(leader_of(&[&node]).await, 7);
    let proposer = crate::manager::Proposer::new(
        node.raft.clone(),
        network::Contacts::default(),
        Duration::from_secs(1),
    );
    assert!(proposer.is_leader());
    // Raft's metrics still name this node the leader after shutdown.
    let raft = node.raft.clone();
    node.shutdown().await;
    assert_eq!(raft.metrics().borrow().current_leader, Some(7));
    assert!(!proposer.is_leader());
}
