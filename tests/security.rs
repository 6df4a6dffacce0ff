//! Secure by default: who may join and who may call what on the cluster
//! port. Each refusal is checked with the error a user or attacker sees.
mod support;

use std::{net::SocketAddr, time::Duration};

use support::*;
use swarm::ca::{self, ClientTls, TlsIdentity};
use swarm_harness::{Node, Topology};
use swarm_proto::v1::{self as pb, control_client::ControlClient};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// A node's credentials as it stored them.
fn credentials(n: &Node) -> ca::NodeCredentials {
    ca::store::load(&n.data_root().join("swarm/certificates"))
        .expect("readable credentials")
        .expect("the node has credentials")
}

/// Calls Control.ListNodes on `target` from inside `from`'s namespace.
fn list_nodes_as(from: &Node, target: SocketAddr, tls: ClientTls) -> Result<usize, tonic::Status> {
    from.in_netns(move || {
        rt().block_on(async move {
            let ch = ca::connect(target, tls)
                .await
                .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            ControlClient::new(ch)
                .list_nodes(pb::ListNodesRequest { role: None })
                .await
                .map(|r| r.into_inner().nodes.len())
        })
    })
}

#[test]
fn joins_need_this_swarms_current_token() {
    let c = cluster(4, Topology::Bridge);
    let (wt, _) = form(&c, 1, 0);
    let manager = cluster_addr(c.node(1));

    // Right swarm, wrong secret.
    let forged = format!("{}{}", &wt[..wt.len() - 4], "zzzz");
    let out = c
        .node(2)
        .swarm(&["join", "--token", &forged, &manager])
        .failure();
    assert!(out.stderr.contains("invalid join token"), "{}", out.stderr);

    // A token of another swarm: its CA digest does not match ours.
    let other = c.node(3);
    other
        .swarm(&["init", "--advertise-addr", &other.addr().to_string()])
        .success();
    let foreign = other
        .swarm(&["join-token", "-q", "worker"])
        .success()
        .trimmed()
        .to_string();
    let out = c
        .node(2)
        .swarm(&["join", "--token", &foreign, &manager])
        .failure();
    assert!(
        out.stderr.contains("does not match the join token"),
        "{}",
        out.stderr
    );

    // A rotated token stops working; the new one works.
    c.node(1)
        .swarm(&["join-token", "--rotate", "worker"])
        .success();
    let out = c
        .node(2)
        .swarm(&["join", "--token", &wt, &manager])
        .failure();
    assert!(out.stderr.contains("invalid join token"), "{}", out.stderr);
    let fresh = c
        .node(1)
        .swarm(&["join-token", "-q", "worker"])
        .success()
        .trimmed()
        .to_string();
    join(&c, 4, &fresh);
    wait_all_ready(c.node(1), 2);
}

#[test]
fn the_cluster_port_refuses_anonymous_workers_and_removed_nodes() {
    let c = cluster(3, Topology::Bridge);
    form(&c, 1, 2);
    wait_all_ready(c.node(1), 3);
    let target: SocketAddr = cluster_addr(c.node(1)).parse().expect("addr");
    let mgr = credentials(c.node(1));

    // A manager certificate may call the control API.
    let id = TlsIdentity::new(&mgr.root, &mgr.cert, &mgr.key).expect("identity");
    let tls = ClientTls::new(&mgr.root, Some(&id)).expect("tls");
    assert_eq!(
        list_nodes_as(c.node(2), target, tls).expect("manager may list"),
        3
    );

    // No client certificate: nothing but the join method.
    let tls = ClientTls::pinned(&mgr.root).expect("tls");
    let err = list_nodes_as(c.node(2), target, tls).expect_err("anonymous call refused");
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");

    // A worker certificate: not on manager-only methods.
    let w = credentials(c.node(2));
    let wid = TlsIdentity::new(&w.root, &w.cert, &w.key).expect("identity");
    let tls = ClientTls::new(&w.root, Some(&wid)).expect("tls");
    let err = list_nodes_as(c.node(2), target, tls).expect_err("worker refused");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    assert!(err.message().contains("swarm-manager"), "{err}");

    // A removed node's certificate is refused from then on.
    let removed = credentials(c.node(3));
    c.node(3).kill9();
    c.node(1)
        .swarm(&["node", "rm", "--force", "node-3"])
        .success();
    let rid = TlsIdentity::new(&removed.root, &removed.cert, &removed.key).expect("identity");
    let tls = ClientTls::new(&removed.root, Some(&rid))
        .expect("tls")
        .with_connect_timeout(Duration::from_secs(3));
    let err = c.node(3).in_netns(move || {
        rt().block_on(async move {
            let ch = ca::connect(target, tls).await.map_err(|e| e.to_string())?;
            swarm_proto::v1::dispatcher_client::DispatcherClient::new(ch)
                .assignments(pb::AssignmentsRequest {
                    session_id: "x".into(),
                })
                .await
                .map(|_| ())
                .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
        })
    });
    let err = err.expect_err("removed node refused");
    // Refused at the handshake (the transport reports it as a broken or
    // cancelled call) or by the authorization layer: either way before the
    // dispatcher sees it.
    assert!(
        [
            "Unauthenticated",
            "revoked",
            "transport",
            "Cancelled",
            "Unavailable"
        ]
        .iter()
        .any(|s| err.contains(s)),
        "{err}"
    );
    assert!(
        !err.contains("session not found"),
        "must not reach the dispatcher: {err}"
    );
    // And the restarted node cannot get back in.
    c.node(3).start();
    std::thread::sleep(Duration::from_secs(2));
    let ls = node_ls(c.node(1)).expect("node ls");
    assert_eq!(ls.len(), 2, "{ls:?}");
}
