//! A manager: the cluster store, Raft, and the services managers offer on
//! the cluster port (2377) over mutual TLS: Raft, the CA, the dispatcher
//! and the control API (for forwarding to the leader).
//!
//! Owns the wiring and lifetime of those parts. The decisions live in
//! their own modules (`controlapi`, `dispatcher`, `store`); this module
//! must not grow business logic.
pub mod caserver;
pub mod channels;
pub mod fsm;
pub mod leader;
pub mod proposer;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use swarm_proto::v1 as pb;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    ca::{self, Access, AuthzLayer, Policy, RevocationList, RootCert, ServerTls, TlsIdentity},
    node::state::SwarmDir,
    raft::{self, Raft, RaftId, RaftSettings, RaftStorage, network::Contacts},
    store::MemoryStore,
    supervisor::{ControlLoop, LoopError},
};

pub use channels::MtlsChannels;
pub use proposer::{ProposeError, Proposer};

#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error(transparent)]
    Raft(#[from] raft::RaftError),
    #[error(
        "cannot listen for cluster traffic on {addr}: {source}; is another swarm daemon using the port? choose another with --listen-addr"
    )]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] ca::TlsError),
    #[error("authorization policy: {0}")]
    Policy(#[from] ca::PolicyError),
}

/// Who this manager is and how it runs.
#[derive(Clone, Debug)]
pub struct ManagerConfig {
    pub node_id: String,
    pub cluster_id: String,
    pub raft_id: RaftId,
    pub listen_addr: SocketAddr,
    pub advertise_addr: String,
    pub dir: SwarmDir,
    pub raft: RaftSettings,
}

/// Refuses removed nodes: the cluster object's `removed_node_ids`.
#[derive(Clone, Debug)]
pub struct ClusterRevocations(pub MemoryStore);

impl RevocationList for ClusterRevocations {
    fn is_revoked(&self, node_id: &str) -> bool {
        self.0
            .view()
            .list::<pb::Cluster>()
            .any(|c| c.removed_node_ids.iter().any(|r| r == node_id))
    }
}

/// Which cluster-port methods need which certificate.
pub fn cluster_policy() -> Result<Policy, ca::PolicyError> {
    Policy::new([
        ("/swarm.v1.Raft/", Access::Manager),
        ("/swarm.v1.Control/", Access::Manager),
        ("/swarm.v1.NodeCa/IssueNodeCertificate", Access::Anyone),
        ("/swarm.v1.NodeCa/RenewNodeCertificate", Access::AnyNode),
        ("/swarm.v1.Dispatcher/", Access::AnyNode),
        ("/swarm.v1.LogBroker/", Access::AnyNode),
        ("/swarm.v1.Logs/", Access::Manager),
    ])
}

/// A running manager's handles; cheap to clone.
#[derive(Clone)]
pub struct Manager {
    pub config: ManagerConfig,
    pub store: MemoryStore,
    pub raft: Raft,
    pub storage: RaftStorage,
    pub proposer: Proposer,
    pub channels: Arc<MtlsChannels>,
    pub identity: TlsIdentity,
    pub root: RootCert,
    /// Serializes the leader's read-decide-propose writes (leader loops,
    /// node writes, task status reports, the control API), as swarmkit's
    /// store update lock does: a batch prepared under it applies without
    /// version conflicts from the others.
    writes: Arc<tokio::sync::Mutex<()>>,
    /// Set once this manager's store has caught up with the swarm (see
    /// [`Manager::caught_up`]); never cleared while it runs.
    caught_up: Arc<std::sync::atomic::AtomicBool>,
}

/// Where a manager that has not caught up stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CatchingUp {
    pub applied: u64,
    /// The index of the membership entry that names this manager.
    pub joined_at: u64,
}

/// Whether a manager has applied its own admission: the leader, or a
/// member whose state machine has applied the membership entry that
/// names it (everything before it, such as its own promotion, with it).
fn admission(m: &crate::raft::RaftMetrics) -> Result<(), CatchingUp> {
    if m.current_leader == Some(m.id) {
        return Ok(());
    }
    let applied = m.last_applied.map_or(0, |l| l.index);
    let joined_at = m.membership_config.log_id().map_or(u64::MAX, |l| l.index);
    let named = m.membership_config.membership().get_node(&m.id).is_some();
    if named && applied >= joined_at {
        Ok(())
    } else {
        Err(CatchingUp {
            applied,
            joined_at: if named { joined_at } else { 0 },
        })
    }
}

/// Why [`Manager::update`] wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Propose(#[from] ProposeError),
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("node_id", &self.config.node_id)
            .field("raft_id", &self.config.raft_id)
            .finish()
    }
}

impl Manager {
    /// Opens the store and Raft from disk (empty on first start) and binds
    /// the cluster port. Serving starts when the returned [`ManagerServer`]
    /// runs.
    pub async fn start(
        config: ManagerConfig,
        root: RootCert,
        identity: TlsIdentity,
    ) -> Result<(Manager, ManagerServer), ManagerError> {
        let store = MemoryStore::new();
        // Snapshots follow the cluster's --snapshot-interval (see
        // `snapshot_policy`), not a fixed Raft setting.
        let mut config = config;
        config.raft.snapshot_interval = 0;
        let channels = Arc::new(MtlsChannels::new(&root, &identity)?);
        let contacts = Contacts::default();
        // Raft's channels are its own, so their connections run on Raft's
        // runtime (see `raft::start`); both sets follow certificate
        // rotations through the shared identity.
        let raft_channels = Arc::new(MtlsChannels::new(&root, &identity)?);
        let (raft, storage) = raft::start(
            config.raft_id,
            &config.dir.raft(),
            &config.raft,
            &config.cluster_id,
            Arc::new(fsm::StoreFsm(store.clone())),
            raft_channels,
            contacts.clone(),
        )
        .await?;
        // A peer counts as reachable if it answered within two election
        // timeouts: long enough to ride out one slow heartbeat.
        let proposer = Proposer::new(raft.clone(), contacts, config.raft.election_timeout_max * 2);
        let listener = TcpListener::bind(config.listen_addr)
            .await
            .map_err(|source| ManagerError::Listen {
                addr: config.listen_addr,
                source,
            })?;
        let revocations: Arc<dyn RevocationList> = Arc::new(ClusterRevocations(store.clone()));
        let server_tls = ServerTls::new(&root, &identity, revocations.clone())?;
        let manager = Manager {
            config,
            store,
            raft,
            storage,
            proposer,
            channels,
            identity,
            root,
            writes: Arc::new(tokio::sync::Mutex::new(())),
            caught_up: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        };
        let server = ManagerServer {
            manager: manager.clone(),
            listener,
            server_tls,
            authz: AuthzLayer::new(cluster_policy()?, revocations),
        };
        Ok((manager, server))
    }

    pub fn is_leader(&self) -> bool {
        self.proposer.is_leader()
    }

    /// Waits (up to `wait`) until this manager's store holds at least what
    /// the swarm held when it became a manager, so reads answered from it
    /// are not older than its own promotion or join. A manager fresh from
    /// a promotion used to list itself as a worker while its store was
    /// still filling from the leader's log. Once caught up, it stays so.
    pub async fn caught_up(&self, wait: Duration) -> Result<(), CatchingUp> {
        use std::sync::atomic::Ordering;
        if self.caught_up.load(Ordering::Relaxed) {
            return Ok(());
        }
        let mut rx = self.raft.metrics();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let state = admission(&rx.borrow_and_update());
            match state {
                Ok(()) => {
                    self.caught_up.store(true, Ordering::Relaxed);
                    return Ok(());
                }
                Err(behind) => {
                    if tokio::time::timeout_at(deadline, rx.changed())
                        .await
                        .map_or(true, |r| r.is_err())
                    {
                        return Err(behind);
                    }
                }
            }
        }
    }

    /// Holds off the other serialized writers (see [`Manager::update`])
    /// while the caller reads a view, decides and proposes.
    pub async fn write_lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.writes.lock().await
    }

    /// Runs `f` on the current view and proposes what it wrote, with the
    /// write lock held so that no other serialized writer's batch lands in
    /// between. Returns the Raft index, or the store's version if `f` wrote
    /// nothing.
    pub async fn update<E>(
        &self,
        f: impl FnOnce(&mut crate::store::WriteTx) -> Result<(), E>,
    ) -> Result<u64, UpdateError>
    where
        UpdateError: From<E>,
    {
        let _w = self.write_lock().await;
        let actions = self.store.prepare(f)?;
        if actions.is_empty() {
            return Ok(self.store.version());
        }
        Ok(self.proposer.propose(actions).await?)
    }

    /// The cluster object (there is exactly one once the swarm exists).
    pub fn cluster(&self) -> Option<Arc<pb::Cluster>> {
        self.store.view().list::<pb::Cluster>().next()
    }

    /// A gRPC channel to the current leader's cluster port.
    pub fn leader_channel(&self) -> Result<tonic::transport::Channel, ProposeError> {
        let addr = self
            .proposer
            .leader_addr()
            .ok_or(ProposeError::NotLeader { leader_addr: None })?;
        use crate::raft::network::ChannelProvider;
        self.channels
            .channel(&addr)
            .map_err(|e| ProposeError::Raft(format!("connecting to the leader at {addr}: {e}")))
    }

    /// Waits until some manager is leader (`timeout` bounds the wait).
    pub async fn wait_for_leader(&self, timeout: Duration) -> Option<RaftId> {
        let mut rx = self.raft.metrics();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(l) = rx.borrow().current_leader {
                return Some(l);
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return None;
            }
        }
    }
}

/// Takes a Raft snapshot (and so compacts the log) whenever the cluster's
/// `--snapshot-interval` entries were applied since the last one. Every
/// manager snapshots on its own; nothing is replicated by this.
async fn snapshot_policy(m: Manager, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let raft_spec = m
            .cluster()
            .and_then(|c| c.spec.clone())
            .and_then(|s| s.raft);
        let interval = raft_spec
            .as_ref()
            .map(|r| r.snapshot_interval)
            .filter(|i| *i > 0)
            .unwrap_or(crate::store::defaults::SNAPSHOT_INTERVAL);
        let keep_old = raft_spec.map_or(0, |r| r.keep_old_snapshots);
        m.storage
            .state_machine
            .set_keep_old(usize::try_from(keep_old).unwrap_or(usize::MAX));
        let metrics = m.raft.metrics().borrow().clone();
        let applied = metrics.last_applied.map_or(0, |l| l.index);
        let snapshot = metrics.snapshot.map_or(0, |l| l.index);
        if applied.saturating_sub(snapshot) >= interval {
            tracing::debug!(applied, snapshot, interval, "taking a Raft snapshot");
            if let Err(e) = m.raft.trigger().snapshot().await {
                tracing::warn!(error = %e, "triggering a snapshot failed");
            }
            // Give the snapshot time to land before checking again.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// Serves the cluster port until shutdown, then stops Raft.
pub struct ManagerServer {
    manager: Manager,
    listener: TcpListener,
    server_tls: ServerTls,
    authz: AuthzLayer,
}

impl std::fmt::Debug for ManagerServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagerServer").finish_non_exhaustive()
    }
}

impl ControlLoop for ManagerServer {
    fn name(&self) -> &'static str {
        "manager"
    }

    async fn run(self, shutdown: CancellationToken) -> Result<(), LoopError> {
        let m = self.manager;
        tracing::info!(
            listen = %m.config.listen_addr,
            advertise = %m.config.advertise_addr,
            node_id = %m.config.node_id,
            raft_id = m.config.raft_id,
            "manager serving the cluster port"
        );
        let incoming = ca::TlsIncoming::new(self.listener, &self.server_tls);
        let raft_svc = crate::raft::service::RaftService::new(m.raft.clone()).into_server();
        let ca_svc = caserver::NodeCaService::new(m.clone()).into_server();
        let control_svc = crate::controlapi::ControlApi::new(m.clone()).into_server();
        let dispatcher = crate::dispatcher::Dispatcher::new(m.clone());
        let dispatcher_svc = dispatcher.clone().into_server();
        let dispatcher_loop = tokio::spawn(dispatcher.run_leader_duties(shutdown.clone()));
        let snapshot_loop = tokio::spawn(snapshot_policy(m.clone(), shutdown.clone()));
        let mut leader_loops = tokio::task::JoinSet::new();
        let orchestrator = leader::OrchestratorLoop::new(m.clone());
        let allocator = leader::AllocatorLoop::new(m.clone());
        let scheduler = leader::SchedulerLoop::new(m.clone());
        leader_loops.spawn(run_named(orchestrator, shutdown.clone()));
        leader_loops.spawn(run_named(allocator, shutdown.clone()));
        leader_loops.spawn(run_named(scheduler, shutdown.clone()));
        let logbroker = crate::logbroker::LogBroker::new(m.store.clone(), Arc::new(m.clone()));
        let server = tonic::transport::Server::builder()
            .layer(self.authz)
            .add_service(raft_svc)
            .add_service(ca_svc)
            .add_service(control_svc)
            .add_service(dispatcher_svc)
            .add_service(logbroker.logs_server())
            .add_service(logbroker.broker_server())
            .serve_with_incoming_shutdown(incoming, shutdown.cancelled());
        let server = drain_then_stop(server, shutdown.clone());
        tokio::pin!(server);
        // A leader loop that ends before shutdown is fatal for the manager,
        // as for any control loop.
        let res = tokio::select! {
            res = &mut server => res.map_err(LoopError::from),
            Some(ended) = leader_loops.join_next() => {
                let (name, why) = match ended {
                    Ok((name, Ok(()))) => (name, "ended".to_owned()),
                    Ok((name, Err(e))) => (name, e.to_string()),
                    Err(e) => ("leader loop", e.to_string()),
                };
                if shutdown.is_cancelled() {
                    server.await.map_err(LoopError::from)
                } else {
                    Err(format!("{name} stopped unexpectedly: {why}").into())
                }
            }
        };
        while leader_loops.join_next().await.is_some() {}
        let _ = dispatcher_loop.await;
        let _ = snapshot_loop.await;
        if let Err(e) = m.raft.shutdown().await {
            tracing::warn!(error = %e, "Raft did not shut down cleanly");
        }
        res
    }
}

/// How long the cluster port keeps serving calls in flight after shutdown.
pub const DRAIN: Duration = Duration::from_secs(1);

/// Runs `serve` until it ends, or until [`DRAIN`] after `shutdown`. A
/// graceful server shutdown waits for every open stream, and the long-lived
/// ones other nodes hold (sessions, assignments, log subscriptions) end only
/// when their server is dropped: waiting for them would hold the daemon's
/// shutdown until its deadline. Dropped, their connections close and those
/// nodes move on to another manager at once.
async fn drain_then_stop<E>(
    serve: impl std::future::Future<Output = Result<(), E>>,
    shutdown: CancellationToken,
) -> Result<(), E> {
    tokio::select! {
        r = serve => r,
        () = async {
            shutdown.cancelled().await;
            tokio::time::sleep(DRAIN).await;
        } => {
            tracing::debug!("cluster port: streams still open after the drain period; closing them");
            Ok(())
        }
    }
}

async fn run_named<L: ControlLoop>(
    l: L,
    shutdown: CancellationToken,
) -> (&'static str, Result<(), LoopError>) {
    let name = l.name();
    (name, l.run(shutdown).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_cluster_port_stops_a_drain_period_after_shutdown_even_with_streams_open() {
        let shutdown = CancellationToken::new();
        let never_drains = std::future::pending::<Result<(), ()>>();
        let stop = shutdown.clone();
        let started = tokio::time::Instant::now();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            stop.cancel();
        });
        assert_eq!(drain_then_stop(never_drains, shutdown).await, Ok(()));
        assert_eq!(started.elapsed(), Duration::from_secs(3) + DRAIN);
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_that_ends_by_itself_gives_its_result() {
        let shutdown = CancellationToken::new();
        let fails = async { Err::<(), _>("bind failed") };
        assert_eq!(drain_then_stop(fails, shutdown).await, Err("bind failed"));
    }
}

#[cfg(test)]
mod admission_tests {
    use std::collections::{BTreeMap, BTreeSet};

    use openraft::{BasicNode, CommittedLeaderId, LogId, Membership, StoredMembership};

    use super::*;

    fn metrics(me: u64, members: &[u64], joined_at: u64, applied: u64) -> crate::raft::RaftMetrics {
        let mut m = crate::raft::RaftMetrics::new_initial(me);
        let voters: BTreeSet<u64> = members.iter().copied().collect();
        let nodes: BTreeMap<u64, BasicNode> =
            voters.iter().map(|id| (*id, BasicNode::new("x"))).collect();
        let log_id = |i| LogId::new(CommittedLeaderId::new(1, 1), i);
        m.membership_config = Arc::new(StoredMembership::new(
            Some(log_id(joined_at)),
            Membership::new(vec![voters], nodes),
        ));
        m.last_applied = Some(log_id(applied));
        m.current_leader = Some(1);
        m
    }

    #[test]
    fn a_new_manager_is_caught_up_once_it_applied_its_own_admission() {
        let behind = admission(&metrics(4, &[1, 2, 4], 30, 20));
        assert_eq!(
            behind,
            Err(CatchingUp {
                applied: 20,
                joined_at: 30
            })
        );
        assert_eq!(admission(&metrics(4, &[1, 2, 4], 30, 30)), Ok(()));
        // Not yet in any membership it has seen: nothing to compare with.
        assert!(admission(&metrics(4, &[1, 2], 10, 25)).is_err());
        // The leader is always current.
        let mut leader = metrics(1, &[1, 2], 30, 5);
        leader.current_leader = Some(1);
        assert_eq!(admission(&leader), Ok(()));
    }
}
