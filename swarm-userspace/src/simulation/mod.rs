//! Simulated worker nodes: many nodes in one process, each a real member
//! of the swarm (its own key, a certificate the swarm's CA signed for its
//! own node ID, its own mutual-TLS session with the leader's dispatcher and
//! its own heartbeats and assignments), whose tasks run on the fake
//! executor. What the managers see is indistinguishable from real workers,
//! which is what the scale benchmarks need (`swarm simulate`, run by
//! `cargo xtask bench scale`).
//!
//! Owns: joining N nodes with a worker token, and running their agents
//! and workers (fake executor, no images) until shutdown. Keeps nothing on disk. Must never run real containers or
//! touch the kernel beyond its sockets.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use swarm_proto::v1 as pb;
use swarm_proto::v1::node_ca_client::NodeCaClient;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::agent::{Agent, AgentEvents, Credentials};
use crate::ca::{self, ClientTls, JoinToken, NodeCert, NodeKey, Role, RootCert, TlsIdentity};
use crate::executor::fake::FakeExecutor;
use crate::manager::MtlsChannels;
use crate::supervisor::ControlLoop;
use crate::worker::{Worker, images::SimulatedImages};

#[derive(Debug, thiserror::Error)]
pub enum SimulationError {
    #[error("the join token is not valid: {0}")]
    Token(String),
    #[error("cannot fetch the swarm's root CA from {addr}: {message}")]
    RootCa { addr: SocketAddr, message: String },
    #[error("cannot connect to the manager at {addr}: {message}")]
    Connect { addr: SocketAddr, message: String },
    #[error("simulated node {index} could not join: {message}")]
    Join { index: usize, message: String },
    #[error("cannot start the simulated workers' runtime: {0}")]
    Runtime(std::io::Error),
}

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimulationConfig {
    /// Any manager; joins go there, sessions follow the leader.
    pub manager: SocketAddr,
    /// A worker join token.
    pub token: String,
    pub count: usize,
    /// Hostnames are `<prefix>-<i>`.
    pub hostname_prefix: String,
    /// Joins in flight at once.
    pub join_concurrency: usize,
    /// Resources each node reports.
    pub nano_cpus: i64,
    pub memory_bytes: i64,
}

/// One joined simulated node.
struct Joined {
    node_id: String,
    cert: NodeCert,
    identity: TlsIdentity,
    managers: Vec<String>,
}

/// Simulated nodes need no reaction to manager list or role changes: they
/// keep following the leader through redirects.
struct NoEvents;

impl AgentEvents for NoEvents {
    fn managers_changed(&self, _: &[String]) {}
    fn role_changed(&self, _: Role) {}
}

fn description(cfg: &SimulationConfig, i: usize) -> pb::NodeDescription {
    let mut d = crate::node::describe(&format!("{}-{i}", cfg.hostname_prefix));
    d.resources = Some(pb::Resources {
        nano_cpus: cfg.nano_cpus,
        memory_bytes: cfg.memory_bytes,
    });
    d
}

/// Attempts at one node's join: a manager that cannot commit the join in
/// time (thousands of joins at once on a loaded machine) answers "retry",
/// and one failed node must not end the other 2,499 of its process. Should
/// a timed-out join commit after all, its node stays down in the swarm,
/// as a real `swarm join` retried by hand would leave it.
const JOIN_ATTEMPTS: u32 = 5;

/// Whether a failed join may work when tried again: the managers could not
/// take it now (no leader, no quorum, a write not committed in time, a
/// connection lost), as opposed to a refused token or request.
fn join_retryable(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::FailedPrecondition
            | tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Unknown
            | tonic::Code::ResourceExhausted
            | tonic::Code::Aborted
    )
}

async fn join_retrying(
    cfg: &SimulationConfig,
    i: usize,
    root: &RootCert,
    ca_channel: Channel,
) -> Result<Joined, String> {
    let mut attempt = 1;
    loop {
        match join_one(cfg, i, root, ca_channel.clone()).await {
            Ok(j) => return Ok(j),
            Err(JoinFailure::Rpc(s)) if join_retryable(s.code()) && attempt < JOIN_ATTEMPTS => {
                tracing::debug!(node = i, attempt, error = %s.message(), "join failed; retrying");
                tokio::time::sleep(Duration::from_millis(500) * attempt).await;
                attempt += 1;
            }
            Err(JoinFailure::Rpc(s)) => return Err(format!("{:?}: {}", s.code(), s.message())),
            Err(JoinFailure::Local(m)) => return Err(m),
        }
    }
}

enum JoinFailure {
    /// The manager's answer.
    Rpc(tonic::Status),
    /// Keys, certificates: nothing a retry would change.
    Local(String),
}

async fn join_one(
    cfg: &SimulationConfig,
    i: usize,
    root: &RootCert,
    ca_channel: Channel,
) -> Result<Joined, JoinFailure> {
    let local = |e: &dyn std::fmt::Display| JoinFailure::Local(e.to_string());
    let key = NodeKey::generate().map_err(|e| local(&e))?;
    let csr = key.generate_csr(None).map_err(|e| local(&e))?;
    let resp = NodeCaClient::new(ca_channel)
        .issue_node_certificate(pb::IssueNodeCertificateRequest {
            token: cfg.token.clone(),
            csr_pem: csr.into_bytes(),
            advertise_addr: String::new(),
            description: Some(description(cfg, i)),
            raft_id: 0,
            availability: pb::NodeAvailability::Active as i32,
        })
        .await
        .map_err(JoinFailure::Rpc)?
        .into_inner();
    let cert = NodeCert::from_pem(&String::from_utf8_lossy(&resp.certificate_pem))
        .map_err(|e| local(&e))?;
    let identity = TlsIdentity::new(root, &cert, &key).map_err(|e| local(&e))?;
    let mut managers = resp.managers;
    if managers.is_empty() {
        managers.push(cfg.manager.to_string());
    }
    Ok(Joined {
        node_id: resp.node_id,
        cert,
        identity,
        managers,
    })
}

/// Joins `cfg.count` nodes and runs their agents until `shutdown`.
/// `on_joined` is called once with the time all joins took.
pub async fn run(
    cfg: SimulationConfig,
    shutdown: CancellationToken,
    on_joined: impl FnOnce(Duration),
) -> Result<(), SimulationError> {
    let token = JoinToken::parse(&cfg.token).map_err(|e| SimulationError::Token(e.to_string()))?;
    let root = ca::fetch_pinned_root_ca(cfg.manager, &token)
        .await
        .map_err(|e| SimulationError::RootCa {
            addr: cfg.manager,
            message: e.to_string(),
        })?;
    let connect_err = |e: ca::TlsError| SimulationError::Connect {
        addr: cfg.manager,
        message: e.to_string(),
    };
    let ca_channel = ca::connect(cfg.manager, ClientTls::pinned(&root).map_err(connect_err)?)
        .await
        .map_err(connect_err)?;

    // The nodes' workers (their task managers, the fake executor) run on a
    // runtime of their own. On one, a thousand nodes' share of a hundred
    // thousand new tasks queued the agents' heartbeats for seconds, and
    // the leader marked nodes down that real machines, each with its own
    // CPUs, would have kept alive.
    let tasks_rt = BackgroundRuntime(Some(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("swarm-sim-tasks")
            .enable_all()
            .build()
            .map_err(SimulationError::Runtime)?,
    ));
    let mut workers = JoinSet::new();
    let mut agents = JoinSet::new();

    let started = Instant::now();
    let cfg = Arc::new(cfg);
    let mut joins = JoinSet::new();
    let mut next = 0;
    let mut joined = 0;
    while joined < cfg.count {
        while next < cfg.count && joins.len() < cfg.join_concurrency.max(1) {
            let (cfg, root, ch) = (cfg.clone(), root.clone(), ca_channel.clone());
            let i = next;
            joins.spawn(async move { (i, join_retrying(&cfg, i, &root, ch).await) });
            next += 1;
        }
        let (index, j) = match joins.join_next().await {
            Some(Ok((index, Ok(j)))) => (index, j),
            Some(Ok((index, Err(message)))) => {
                return Err(SimulationError::Join { index, message });
            }
            Some(Err(e)) => {
                return Err(SimulationError::Join {
                    index: next,
                    message: e.to_string(),
                });
            }
            None => break,
        };
        joined += 1;
        // A real node opens its session the moment its join returns. Holding
        // every agent back until the last join would make all of them dial
        // the leader in the same instant: a storm of handshakes no real
        // swarm sees on a join, which timed connections out by the thousand
        // at 10,000 nodes.
        let channels =
            MtlsChannels::for_agent(&root, &j.identity).map_err(|e| SimulationError::Join {
                index,
                message: e.to_string(),
            })?;
        let (worker, worker_loop) =
            Worker::new(Arc::new(FakeExecutor::new()), Arc::new(SimulatedImages));
        let agent = Agent::new(
            j.node_id,
            description(&cfg, index),
            Arc::new(channels),
            j.managers,
            worker,
            Arc::new(NoEvents),
            Credentials {
                root: root.clone(),
                cert: j.cert,
                identity: j.identity,
                // Never written: certificates live for 90 days, longer than
                // any simulation.
                dir: std::env::temp_dir().join("swarm-simulation"),
                raft_id: 0,
                advertise_addr: String::new(),
            },
        );
        let stop = shutdown.clone();
        agents.spawn(async move {
            if let Err(e) = agent.run(stop).await {
                tracing::warn!(error = %e, "a simulated node's agent stopped");
            }
        });
        let stop = shutdown.clone();
        workers.spawn_on(
            async move {
                if let Err(e) = worker_loop.run(stop).await {
                    tracing::warn!(error = %e, "a simulated node's worker stopped");
                }
            },
            tasks_rt.handle(),
        );
    }
    on_joined(started.elapsed());
    shutdown.cancelled().await;
    while agents.join_next().await.is_some() {}
    while workers.join_next().await.is_some() {}
    Ok(())
}

/// A runtime owned by a task of another runtime, where dropping it as
/// usual would panic (it blocks): it shuts down in the background instead,
/// on every way out.
struct BackgroundRuntime(Option<tokio::runtime::Runtime>);

impl BackgroundRuntime {
    fn handle(&self) -> &tokio::runtime::Handle {
        match &self.0 {
            Some(rt) => rt.handle(),
            None => unreachable!("taken only on drop"),
        }
    }
}

impl Drop for BackgroundRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_busy_or_leaderless_swarm_is_retried() {
        for c in [
            tonic::Code::FailedPrecondition,
            tonic::Code::Unavailable,
            tonic::Code::DeadlineExceeded,
        ] {
            assert!(join_retryable(c), "{c:?}");
        }
        for c in [
            tonic::Code::InvalidArgument,
            tonic::Code::PermissionDenied,
            tonic::Code::Unauthenticated,
        ] {
            assert!(!join_retryable(c), "{c:?}");
        }
    }
}
