//! The broker end to end in one process: the broker behind the cluster
//! port's mutual TLS and authorization on a loopback port, two nodes'
//! [`LogAgent`]s with their own certificates reading log files from a
//! temporary directory, and a manager subscribing.
use std::{collections::BTreeMap, path::PathBuf, sync::Arc, time::Duration};

use swarm_proto::v1::{self as pb, logs_client::LogsClient};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{
    Leadership, LogBroker,
    agent::{LogAgent, TaskLogs},
};
use crate::{
    ca::{AuthzLayer, NoRevocations, RootCa, ServerTls, TlsIdentity, TlsIncoming},
    ca::{NODE_CERT_VALIDITY, NodeKey, Role},
    executor::logs::{Entry, LogOptions, LogSource, Stream, Writer},
    manager::{MtlsChannels, cluster_policy},
    raft::network::ChannelProvider,
    store::{MemoryStore, StoreError, WriteTx, new_batch},
    supervisor::ControlLoop,
};

struct Leader;
impl Leadership for Leader {
    fn is_leader(&self) -> bool {
        true
    }
    fn leader_addr(&self) -> Option<String> {
        None
    }
}

/// Logs in a directory, one file per task; like the worker, it knows a
/// task only once its log exists.
struct DirLogs(PathBuf);
impl TaskLogs for DirLogs {
    fn log_source(&self, task_id: &str) -> Option<LogSource> {
        let path = self.0.join(format!("{task_id}.log"));
        path.exists().then_some(LogSource { path, max_files: 3 })
    }
}

fn identity(ca: &RootCa, id: &str, role: Role) -> TlsIdentity {
    let key = NodeKey::generate().unwrap();
    let csr = key.generate_csr(Some(id)).unwrap();
    let cert = ca
        .issue(&csr, id, role, "cluster1", NODE_CERT_VALIDITY)
        .unwrap();
    TlsIdentity::new(ca.cert(), &cert, &key).unwrap()
}

fn meta(id: &str) -> Option<pb::Meta> {
    Some(pb::Meta {
        id: id.into(),
        ..Default::default()
    })
}

fn node(id: &str, host: &str, state: pb::NodeState) -> pb::Node {
    pb::Node {
        meta: meta(id),
        description: Some(pb::NodeDescription {
            hostname: host.into(),
            ..Default::default()
        }),
        status: Some(pb::NodeStatus {
            state: state as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn task(id: &str, node: &str) -> pb::Task {
    pb::Task {
        meta: meta(id),
        service_id: "svcweb".into(),
        node_id: node.into(),
        slot: 1,
        ..Default::default()
    }
}

fn apply(store: &MemoryStore, index: u64, f: impl FnOnce(&mut WriteTx) -> Result<(), StoreError>) {
    let actions = store.prepare(f).unwrap();
    store.apply(index, new_batch(actions)).unwrap();
}

fn write(dir: &std::path::Path, task: &str, lines: &[&str], stream: Stream) {
    let mut w = Writer::open(&dir.join(format!("{task}.log")), LogOptions::default()).unwrap();
    for l in lines {
        w.write(&Entry {
            log: format!("{l}\n"),
            stream,
            time: crate::executor::logs::now(),
        })
        .unwrap();
    }
}

struct Cluster {
    store: MemoryStore,
    dir: tempfile::TempDir,
    client: LogsClient<tonic::transport::Channel>,
    stop: CancellationToken,
}

impl Cluster {
    async fn start(answer_timeout: Duration) -> Cluster {
        let ca = RootCa::generate().unwrap();
        let store = MemoryStore::new();
        apply(&store, 1, |tx| {
            tx.create(node("nodeaaa", "node1", pb::NodeState::Ready))?;
            tx.create(node("nodebbb", "node2", pb::NodeState::Ready))?;
            tx.create(node("nodeccc", "node3", pb::NodeState::Down))?;
            tx.create(node("nodeddd", "node4", pb::NodeState::Ready))?;
            tx.create(pb::Service {
                meta: meta("svcweb"),
                spec: Some(pb::ServiceSpec {
                    annotations: Some(pb::Annotations {
                        name: "web".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            })?;
            tx.create(task("taskw1", "nodeaaa"))?;
            tx.create(task("taskw2", "nodebbb"))
        });
        let broker =
            LogBroker::new(store.clone(), Arc::new(Leader)).with_answer_timeout(answer_timeout);
        let server_id = identity(&ca, "manager0", Role::Manager);
        let revocations = Arc::new(NoRevocations);
        let tls = ServerTls::new(ca.cert(), &server_id, revocations.clone()).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let s = stop.clone();
        tokio::spawn(
            tonic::transport::Server::builder()
                .layer(AuthzLayer::new(cluster_policy().unwrap(), revocations))
                .add_service(broker.logs_server())
                .add_service(broker.broker_server())
                .serve_with_incoming_shutdown(TlsIncoming::new(listener, &tls), async move {
                    s.cancelled().await
                }),
        );
        let dir = tempfile::tempdir().unwrap();
        for n in ["nodeaaa", "nodebbb"] {
            let channels =
                Arc::new(MtlsChannels::new(ca.cert(), &identity(&ca, n, Role::Worker)).unwrap());
            let a = addr.to_string();
            let agent = LogAgent::new(
                channels,
                Arc::new(move || vec![a.clone()]),
                Arc::new(DirLogs(dir.path().to_path_buf())),
            );
            tokio::spawn(agent.run(stop.child_token()));
        }
        let mgr = MtlsChannels::new(ca.cert(), &identity(&ca, "manager1", Role::Manager)).unwrap();
        let client = LogsClient::new(mgr.channel(&addr.to_string()).unwrap());
        Cluster {
            store,
            dir,
            client,
            stop,
        }
    }

    fn request(
        &self,
        selector: pb::LogSelector,
        follow: bool,
        tail: Option<u64>,
    ) -> pb::SubscribeLogsRequest {
        pb::SubscribeLogsRequest {
            selector: Some(selector),
            options: Some(pb::LogSubscriptionOptions {
                follow,
                tail,
                since: None,
            }),
        }
    }

    /// Every line of a non-follow subscription, by task, and the reasons
    /// it is incomplete.
    async fn collect(
        &mut self,
        req: pb::SubscribeLogsRequest,
    ) -> (BTreeMap<String, Vec<String>>, Vec<String>) {
        // The agents may still be connecting: a node that does not listen
        // yet is reported missing, so wait until both are there.
        let mut stream = self.client.subscribe_logs(req).await.unwrap().into_inner();
        let mut lines: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut incomplete = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while let Some(m) = tokio::time::timeout_at(deadline, stream.message())
            .await
            .expect("a non-follow subscription ends")
            .unwrap()
        {
            for l in m.messages {
                let c = l.context.unwrap();
                assert_eq!(c.service_id, "svcweb");
                let stream = if l.stream == pb::LogStream::Stderr as i32 {
                    "err:"
                } else {
                    ""
                };
                lines
                    .entry(format!("{}@{}", c.task_id, c.node_id))
                    .or_default()
                    .push(format!(
                        "{stream}{}",
                        String::from_utf8(l.data).unwrap().trim_end()
                    ));
            }
            incomplete.extend(m.incomplete);
        }
        (lines, incomplete)
    }
}

fn service(name: &str) -> pb::LogSelector {
    pb::LogSelector {
        service_ids: vec![name.into()],
        ..Default::default()
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_logs_gather_every_node_then_end() {
    let mut c = Cluster::start(Duration::from_secs(10)).await;
    write(c.dir.path(), "taskw1", &["one-a", "one-b"], Stream::Stdout);
    write(c.dir.path(), "taskw2", &["two-a"], Stream::Stdout);
    write(c.dir.path(), "taskw2", &["two-err"], Stream::Stderr);
    let (lines, incomplete) = c.collect(c.request(service("web"), false, None)).await;
    assert!(incomplete.is_empty(), "{incomplete:?}");
    assert_eq!(lines["taskw1@nodeaaa"], strings(&["one-a", "one-b"]));
    assert_eq!(lines["taskw2@nodebbb"], strings(&["two-a", "err:two-err"]));

    let (lines, _) = c.collect(c.request(service("web"), false, Some(1))).await;
    assert_eq!(lines["taskw1@nodeaaa"], strings(&["one-b"]));
    assert_eq!(lines["taskw2@nodebbb"], strings(&["err:two-err"]));

    // One task, by ID prefix: only its node is asked.
    let (lines, incomplete) = c
        .collect(c.request(
            pb::LogSelector {
                task_ids: vec!["taskw2".into()],
                ..Default::default()
            },
            false,
            None,
        ))
        .await;
    assert!(incomplete.is_empty());
    assert_eq!(lines.keys().collect::<Vec<_>>(), ["taskw2@nodebbb"]);

    let err = c
        .client
        .subscribe_logs(c.request(service("nope"), false, None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    c.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_nodes_are_named() {
    let mut c = Cluster::start(Duration::from_secs(2)).await;
    write(c.dir.path(), "taskw1", &["one"], Stream::Stdout);
    apply(&c.store, 2, |tx| {
        // A node marked down, and one that is up but never listens.
        tx.create(task("taskw3", "nodeccc"))?;
        tx.create(task("taskw4", "nodeddd"))
    });
    let started = tokio::time::Instant::now();
    let (lines, mut incomplete) = c.collect(c.request(service("web"), false, None)).await;
    incomplete.sort();
    assert_eq!(
        incomplete,
        [
            "node node3 (nodeccc) is not available",
            "node node4 (nodeddd) is not available"
        ]
    );
    assert_eq!(lines["taskw1@nodeaaa"], strings(&["one"]));
    assert!(started.elapsed() < Duration::from_secs(10));
    c.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_gets_new_lines_and_new_tasks() {
    let mut c = Cluster::start(Duration::from_secs(10)).await;
    write(c.dir.path(), "taskw1", &["old"], Stream::Stdout);
    let mut stream = c
        .client
        .subscribe_logs(c.request(service("web"), true, Some(1)))
        .await
        .unwrap()
        .into_inner();
    let mut next_line = async || loop {
        let m = tokio::time::timeout(Duration::from_secs(15), stream.message())
            .await
            .expect("a line arrives")
            .unwrap()
            .expect("the stream goes on");
        assert!(m.incomplete.is_empty(), "{:?}", m.incomplete);
        if let Some(l) = m.messages.into_iter().next() {
            let c = l.context.unwrap();
            return format!(
                "{}@{}: {}",
                c.task_id,
                c.node_id,
                String::from_utf8(l.data).unwrap().trim_end()
            );
        }
    };
    assert_eq!(next_line().await, "taskw1@nodeaaa: old");
    write(c.dir.path(), "taskw1", &["new"], Stream::Stdout);
    assert_eq!(next_line().await, "taskw1@nodeaaa: new");
    // A task assigned later joins the subscription with all its lines,
    // also those written before its node heard of it (--tail is for the
    // logs there were when the subscription came).
    write(
        c.dir.path(),
        "taskw5",
        &["late-1", "late-2"],
        Stream::Stdout,
    );
    apply(&c.store, 2, |tx| tx.create(task("taskw5", "nodebbb")));
    assert_eq!(next_line().await, "taskw5@nodebbb: late-1");
    c.stop.cancel();
}
