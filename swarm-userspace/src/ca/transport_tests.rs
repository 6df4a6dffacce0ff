//! End-to-end tests of the cluster transport: a tonic server on a loopback
//! ephemeral port behind `TlsIncoming` and `AuthzLayer`, and clients built
//! with `connect`, `connect_lazy` and `fetch_pinned_root_ca`.
use std::{net::SocketAddr, sync::Arc, time::Duration};

use swarm_proto::v1::{
    self as pb,
    system_client::SystemClient,
    system_server::{System, SystemServer},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::oneshot,
    task::JoinHandle,
};
use tonic::{Code, Request, Response, Status, transport::Server};

use super::{
    authz::{Access, AuthzLayer, Policy, peer_identity},
    cert::{NODE_CERT_VALIDITY, NodeCert, NodeKey, Role, RootCa},
    incoming::{IncomingConfig, TlsIncoming},
    tls::{
        ClientTls, NoRevocations, RevocationList, RevokedNodes, ServerTls, TlsError, TlsIdentity,
        connect, connect_lazy, fetch_pinned_root_ca,
    },
    token::JoinToken,
};

const VERSION: &str = "/swarm.v1.System/Version";
const DATAPLANE: &str = "/swarm.v1.System/DataplaneStatus";

/// Answers Version with the caller's node ID, so tests see what the
/// handler saw.
struct EchoSystem;

#[tonic::async_trait]
impl System for EchoSystem {
    async fn version(
        &self,
        req: Request<pb::VersionRequest>,
    ) -> Result<Response<pb::VersionResponse>, Status> {
        let who = peer_identity(&req)
            .map(|id| format!("{}/{}", id.node_id, id.role))
            .unwrap_or_else(|| "anonymous".into());
        Ok(Response::new(pb::VersionResponse {
            version: who,
            ..Default::default()
        }))
    }

    async fn dataplane_status(
        &self,
        _req: Request<pb::DataplaneStatusRequest>,
    ) -> Result<Response<pb::DataplaneStatusResponse>, Status> {
        Ok(Response::new(pb::DataplaneStatusResponse {
            backend: "test".into(),
            ..Default::default()
        }))
    }
}

fn node(ca: &RootCa, id: &str, role: Role) -> (NodeCert, NodeKey) {
    let key = NodeKey::generate().unwrap();
    let csr = key.generate_csr(Some(id)).unwrap();
    let cert = ca
        .issue(&csr, id, role, "cluster1", NODE_CERT_VALIDITY)
        .unwrap();
    (cert, key)
}

fn identity(ca: &RootCa, id: &str, role: Role) -> TlsIdentity {
    let (cert, key) = node(ca, id, role);
    TlsIdentity::new(ca.cert(), &cert, &key).unwrap()
}

/// Version for managers, DataplaneStatus for any node.
fn manager_policy() -> Policy {
    Policy::new([(VERSION, Access::Manager), (DATAPLANE, Access::AnyNode)]).unwrap()
}

/// Version for anyone (like the CA's bootstrap method), the rest of the
/// service for any node.
fn bootstrap_policy() -> Policy {
    Policy::new([
        (VERSION, Access::Anyone),
        ("/swarm.v1.System/", Access::AnyNode),
    ])
    .unwrap()
}

struct TestServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl TestServer {
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), &mut self.task)
            .await
            .expect("server stops")
            .unwrap()
            .unwrap();
    }
}

async fn serve_as(
    ca: &RootCa,
    server_identity: TlsIdentity,
    policy: Policy,
    revocations: Arc<dyn RevocationList>,
    config: IncomingConfig,
    listener: Option<TcpListener>,
) -> TestServer {
    let tls = ServerTls::new(ca.cert(), &server_identity, revocations.clone()).unwrap();
    let listener = match listener {
        Some(l) => l,
        None => TcpListener::bind("127.0.0.1:0").await.unwrap(),
    };
    let addr = listener.local_addr().unwrap();
    let incoming = TlsIncoming::with_config(listener, &tls, config);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(
        Server::builder()
            .layer(AuthzLayer::new(policy, revocations))
            .add_service(SystemServer::new(EchoSystem))
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            }),
    );
    TestServer {
        addr,
        stop: Some(stop),
        task,
    }
}

async fn serve(ca: &RootCa, policy: Policy, revocations: Arc<dyn RevocationList>) -> TestServer {
    serve_as(
        ca,
        identity(ca, "manager0", Role::Manager),
        policy,
        revocations,
        IncomingConfig::default(),
        None,
    )
    .await
}

async fn client(addr: SocketAddr, tls: ClientTls) -> SystemClient<tonic::transport::Channel> {
    SystemClient::new(connect(addr, tls).await.unwrap())
}

async fn version(c: &mut SystemClient<tonic::transport::Channel>) -> Result<String, Status> {
    c.version(pb::VersionRequest {})
        .await
        .map(|r| r.into_inner().version)
}

async fn dataplane(c: &mut SystemClient<tonic::transport::Channel>) -> Result<String, Status> {
    c.dataplane_status(pb::DataplaneStatusRequest {})
        .await
        .map(|r| r.into_inner().backend)
}

/// Connecting and calling Version with `tls` gets nothing back: either the
/// connection or the call fails, and not with an application answer.
async fn assert_refused(addr: SocketAddr, tls: ClientTls) {
    match connect(addr, tls).await {
        Err(_) => {}
        Ok(channel) => {
            let mut c = SystemClient::new(channel);
            let r = tokio::time::timeout(Duration::from_secs(10), version(&mut c))
                .await
                .expect("a refused call fails promptly");
            let status = r.expect_err("a refused client must not get an answer");
            assert!(
                matches!(
                    status.code(),
                    Code::Unavailable | Code::Unknown | Code::Internal
                ),
                "refused at the TLS level, not by a handler: {status:?}"
            );
        }
    }
}

#[tokio::test]
async fn manager_certificate_calls_manager_method() {
    let ca = RootCa::generate().unwrap();
    let server = serve(&ca, manager_policy(), Arc::new(NoRevocations)).await;
    let me = identity(&ca, "manager1", Role::Manager);
    let mut c = client(server.addr, ClientTls::new(ca.cert(), Some(&me)).unwrap()).await;
    // The handler sees the verified identity.
    assert_eq!(version(&mut c).await.unwrap(), "manager1/manager");
    assert_eq!(dataplane(&mut c).await.unwrap(), "test");
    server.stop().await;
}

#[tokio::test]
async fn worker_is_denied_manager_methods_but_reaches_node_methods() {
    let ca = RootCa::generate().unwrap();
    let server = serve(&ca, manager_policy(), Arc::new(NoRevocations)).await;
    let me = identity(&ca, "worker1", Role::Worker);
    let mut c = client(server.addr, ClientTls::new(ca.cert(), Some(&me)).unwrap()).await;
    let status = version(&mut c).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains(VERSION), "{}", status.message());
    assert!(
        status.message().contains("swarm-manager"),
        "{}",
        status.message()
    );
    assert_eq!(dataplane(&mut c).await.unwrap(), "test");
    server.stop().await;
}

#[tokio::test]
async fn no_certificate_reaches_only_anyone_methods() {
    let ca = RootCa::generate().unwrap();
    let server = serve(&ca, manager_policy(), Arc::new(NoRevocations)).await;
    let mut c = client(server.addr, ClientTls::pinned(ca.cert()).unwrap()).await;
    assert_eq!(
        version(&mut c).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let status = dataplane(&mut c).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(
        status.message().contains("join the swarm"),
        "{}",
        status.message()
    );
    server.stop().await;

    let server = serve(&ca, bootstrap_policy(), Arc::new(NoRevocations)).await;
    let mut c = client(server.addr, ClientTls::pinned(ca.cert()).unwrap()).await;
    assert_eq!(version(&mut c).await.unwrap(), "anonymous");
    assert_eq!(
        dataplane(&mut c).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    server.stop().await;
}

#[tokio::test]
async fn certificate_from_another_ca_fails_the_handshake() {
    let ca = RootCa::generate().unwrap();
    let other = RootCa::generate().unwrap();
    let server = serve(&ca, bootstrap_policy(), Arc::new(NoRevocations)).await;

    // A client certificate from another swarm, even on an Anyone method.
    let stranger = identity(&other, "stranger", Role::Manager);
    // The client trusts our root, so only the server can refuse it.
    let (c, k) = node(&other, "stranger", Role::Manager);
    assert!(
        TlsIdentity::new(ca.cert(), &c, &k).is_err(),
        "an identity must chain to the root it is used with"
    );
    let tls = ClientTls::new(ca.cert(), Some(&stranger)).unwrap();
    assert_refused(server.addr, tls).await;

    // A client of another swarm refuses our manager.
    let tls = ClientTls::new(other.cert(), Some(&stranger)).unwrap();
    let err = connect(server.addr, tls).await.unwrap_err();
    assert!(matches!(err, TlsError::Connect { .. }), "{err}");

    // The server is still serving.
    let mut c = client(server.addr, ClientTls::pinned(ca.cert()).unwrap()).await;
    assert_eq!(version(&mut c).await.unwrap(), "anonymous");
    server.stop().await;
}

#[tokio::test]
async fn client_refuses_a_server_that_is_not_a_manager() {
    let ca = RootCa::generate().unwrap();
    let server = serve_as(
        &ca,
        identity(&ca, "worker9", Role::Worker),
        bootstrap_policy(),
        Arc::new(NoRevocations),
        IncomingConfig::default(),
        None,
    )
    .await;
    let err = connect(server.addr, ClientTls::pinned(ca.cert()).unwrap())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not a manager"), "{err}");

    let token = JoinToken::generate(ca.cert());
    let err = fetch_pinned_root_ca(server.addr, &token).await.unwrap_err();
    assert!(matches!(err, TlsError::UntrustedManager { .. }), "{err}");
    server.stop().await;
}

#[tokio::test]
async fn removed_node_cannot_connect_or_call() {
    let ca = RootCa::generate().unwrap();
    let revoked = Arc::new(RevokedNodes::new());
    let server = serve(&ca, manager_policy(), revoked.clone()).await;
    let me = identity(&ca, "worker1", Role::Worker);

    // Connected before removal: the next call is refused by the layer.
    let mut c = client(server.addr, ClientTls::new(ca.cert(), Some(&me)).unwrap()).await;
    assert_eq!(dataplane(&mut c).await.unwrap(), "test");
    revoked.revoke("worker1");
    let status = dataplane(&mut c).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("removed"), "{}", status.message());

    // A new connection with the old certificate fails the handshake.
    assert_refused(server.addr, ClientTls::new(ca.cert(), Some(&me)).unwrap()).await;

    // Other nodes are unaffected.
    let other = identity(&ca, "worker2", Role::Worker);
    let mut c = client(
        server.addr,
        ClientTls::new(ca.cert(), Some(&other)).unwrap(),
    )
    .await;
    assert_eq!(dataplane(&mut c).await.unwrap(), "test");
    server.stop().await;
}

#[tokio::test]
async fn pinned_bootstrap_accepts_the_right_swarm_only() {
    let ca = RootCa::generate().unwrap();
    let server = serve(&ca, bootstrap_policy(), Arc::new(NoRevocations)).await;

    let other = RootCa::generate().unwrap();
    let wrong = JoinToken::generate(other.cert());
    let err = fetch_pinned_root_ca(server.addr, &wrong).await.unwrap_err();
    assert!(matches!(err, TlsError::CaMismatch { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains(&server.addr.to_string()), "{msg}");
    assert!(msg.contains("does not match the join token"), "{msg}");

    let right = JoinToken::parse(&JoinToken::generate(ca.cert()).to_string()).unwrap();
    let root = fetch_pinned_root_ca(server.addr, &right).await.unwrap();
    assert_eq!(&root, ca.cert());
    assert!(right.matches_ca(root.der()));

    // The pinned CA is then enough for the join call.
    let mut c = client(server.addr, ClientTls::pinned(&root).unwrap()).await;
    assert_eq!(version(&mut c).await.unwrap(), "anonymous");
    server.stop().await;
}

#[tokio::test]
async fn bootstrap_to_a_dead_address_fails_cleanly() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let ca = RootCa::generate().unwrap();
    let err = fetch_pinned_root_ca(addr, &JoinToken::generate(ca.cert()))
        .await
        .unwrap_err();
    assert!(matches!(err, TlsError::Connect { .. }), "{err}");
}

#[tokio::test]
async fn slow_and_broken_clients_do_not_block_others() {
    let ca = RootCa::generate().unwrap();
    let config = IncomingConfig {
        handshake_timeout: Duration::from_millis(500),
        ..IncomingConfig::default()
    };
    let server = serve_as(
        &ca,
        identity(&ca, "manager0", Role::Manager),
        bootstrap_policy(),
        Arc::new(NoRevocations),
        config,
        None,
    )
    .await;

    // Several clients that connect and say nothing, and one that says
    // nonsense.
    let mut silent = Vec::new();
    for _ in 0..5 {
        silent.push(TcpStream::connect(server.addr).await.unwrap());
    }
    let mut junk = TcpStream::connect(server.addr).await.unwrap();
    junk.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();

    // A real client is served at once.
    let me = identity(&ca, "worker1", Role::Worker);
    let served = tokio::time::timeout(Duration::from_secs(5), async {
        let mut c = client(server.addr, ClientTls::new(ca.cert(), Some(&me)).unwrap()).await;
        dataplane(&mut c).await
    })
    .await
    .expect("served while others stall");
    assert_eq!(served.unwrap(), "test");

    // The silent ones are cut off after the handshake timeout.
    for mut s in silent {
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("server closes a stalled handshake");
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    }
    let mut buf = [0u8; 64];
    let _ = tokio::time::timeout(Duration::from_secs(5), junk.read(&mut buf))
        .await
        .expect("server drops a client speaking nonsense");

    // And the server still serves.
    let mut c = client(server.addr, ClientTls::pinned(ca.cert()).unwrap()).await;
    assert_eq!(version(&mut c).await.unwrap(), "anonymous");
    server.stop().await;
}

#[tokio::test]
async fn lazy_channel_connects_on_first_use() {
    let ca = RootCa::generate().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let me = identity(&ca, "manager1", Role::Manager);
    // Built before anything serves on the address.
    let channel = connect_lazy(addr, ClientTls::new(ca.cert(), Some(&me)).unwrap()).unwrap();
    let server = serve_as(
        &ca,
        identity(&ca, "manager0", Role::Manager),
        manager_policy(),
        Arc::new(NoRevocations),
        IncomingConfig::default(),
        Some(listener),
    )
    .await;
    let mut c = SystemClient::new(channel);
    assert_eq!(version(&mut c).await.unwrap(), "manager1/manager");
    server.stop().await;

    // Nothing there any more: calls fail as Unavailable, not hang.
    let r = tokio::time::timeout(Duration::from_secs(15), version(&mut c))
        .await
        .expect("fails promptly");
    assert_eq!(r.unwrap_err().code(), Code::Unavailable);
}

#[tokio::test]
async fn renewed_identity_is_used_for_new_connections() {
    let ca = RootCa::generate().unwrap();
    let server = serve(&ca, manager_policy(), Arc::new(NoRevocations)).await;
    let me = identity(&ca, "node1", Role::Worker);
    let tls = ClientTls::new(ca.cert(), Some(&me)).unwrap();
    let mut c = client(server.addr, tls.clone()).await;
    assert_eq!(
        version(&mut c).await.unwrap_err().code(),
        Code::PermissionDenied
    );

    // Promoted: a new certificate for the same node, same TLS config.
    let (cert, key) = node(&ca, "node1", Role::Manager);
    me.replace(ca.cert(), &cert, &key).unwrap();
    assert_eq!(me.identity().role, Role::Manager);
    let mut c = client(server.addr, tls).await;
    assert_eq!(version(&mut c).await.unwrap(), "node1/manager");
    server.stop().await;
}
