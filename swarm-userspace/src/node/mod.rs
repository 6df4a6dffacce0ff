//! A swarm node: whether and how this daemon belongs to a swarm.
//!
//! Owns the node's membership life cycle: `init` (a new swarm with this
//! node as its first manager), `join` (with a token), `leave`, and resuming
//! after a restart from `<data-root>/swarm`. It starts and stops the node's
//! parts (the manager's server, the agent) as child control loops and
//! treats an unexpected exit of one as fatal. Membership commands are
//! handled one at a time. Never serves network traffic itself.
pub mod addr;
pub mod state;

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{Arc, PoisonError, RwLock},
    time::Duration,
};

use openraft::BasicNode;
use swarm_proto::v1::{self as pb, node_ca_client::NodeCaClient};
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::{
    agent::{Agent, AgentEvents},
    ca::{self, ClientTls, JoinToken, JoinTokens, NodeCert, NodeKey, Role, RootCa, TlsIdentity},
    logbroker::agent::{LogAgent, RuntimeLogs},
    manager::{Manager, ManagerConfig, MtlsChannels, caserver::node_cert_validity},
    raft::RaftSettings,
    store::{WriteTx, new_id},
    supervisor::{ControlLoop, LoopError},
    worker::Worker,
};
use state::{NodeRole, NodeState, SwarmDir};

/// Default cluster port, as docker's.
pub const DEFAULT_PORT: u16 = 2377;

/// Node-level settings from the daemon's command line.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub data_root: PathBuf,
    pub hostname: String,
    pub raft: RaftSettings,
    /// Runs the tasks the agent receives; outlives memberships.
    pub worker: Worker,
}

enum Command {
    Init(
        Box<pb::InitRequest>,
        oneshot::Sender<Result<pb::InitResponse, Status>>,
    ),
    Join(
        pb::JoinRequest,
        oneshot::Sender<Result<pb::JoinResponse, Status>>,
    ),
    Leave(pb::LeaveRequest, oneshot::Sender<Result<(), Status>>),
    /// The agent renewed into a certificate with another role.
    RoleChanged(Role),
}

#[derive(Default)]
struct Shared {
    state: Option<NodeState>,
    manager: Option<Manager>,
    /// Docker's LocalNodeState: inactive, pending, active, error.
    local: &'static str,
    error: Option<String>,
}

/// What the API uses to drive and inspect the node. Cheap to clone.
#[derive(Clone)]
pub struct NodeHandle {
    tx: mpsc::Sender<Command>,
    shared: Arc<RwLock<Shared>>,
    worker: Worker,
}

impl std::fmt::Debug for NodeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeHandle")
    }
}

const BUSY: &str = "the node is shutting down";

impl NodeHandle {
    pub async fn init(&self, req: pb::InitRequest) -> Result<pb::InitResponse, Status> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Init(Box::new(req), tx))
            .await
            .map_err(|_| Status::unavailable(BUSY))?;
        rx.await.map_err(|_| Status::unavailable(BUSY))?
    }

    pub async fn join(&self, req: pb::JoinRequest) -> Result<pb::JoinResponse, Status> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Join(req, tx))
            .await
            .map_err(|_| Status::unavailable(BUSY))?;
        rx.await.map_err(|_| Status::unavailable(BUSY))?
    }

    pub async fn leave(&self, req: pb::LeaveRequest) -> Result<(), Status> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Leave(req, tx))
            .await
            .map_err(|_| Status::unavailable(BUSY))?;
        rx.await.map_err(|_| Status::unavailable(BUSY))?
    }

    /// The node's worker (its tasks' containers and logs).
    pub fn worker(&self) -> &Worker {
        &self.worker
    }

    /// The manager, when this node is one.
    pub fn manager(&self) -> Option<Manager> {
        self.shared
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .manager
            .clone()
    }

    pub fn info(&self) -> pb::InfoResponse {
        let s = self.shared.read().unwrap_or_else(PoisonError::into_inner);
        let Some(st) = &s.state else {
            return pb::InfoResponse {
                local_node_state: if s.local.is_empty() {
                    "inactive"
                } else {
                    s.local
                }
                .into(),
                error: s.error.clone().unwrap_or_default(),
                ..Default::default()
            };
        };
        let mut info = pb::InfoResponse {
            local_node_state: s.local.into(),
            node_id: st.node_id.clone(),
            node_addr: st.advertise_addr.clone(),
            cluster_id: st.cluster_id.clone(),
            role: match st.role {
                NodeRole::Manager => pb::NodeRole::Manager,
                NodeRole::Worker => pb::NodeRole::Worker,
            } as i32,
            is_manager: s.manager.is_some(),
            error: s.error.clone().unwrap_or_default(),
            ..Default::default()
        };
        if let Some(m) = &s.manager {
            let metrics = m.raft.metrics().borrow().clone();
            info.raft_state = format!("{:?}", metrics.state);
            info.raft_term = metrics.current_term;
            let view = m.store.view();
            info.nodes = u32::try_from(view.count::<pb::Node>()).unwrap_or(u32::MAX);
            for n in view.list::<pb::Node>() {
                let Some(ms) = &n.manager_status else {
                    continue;
                };
                let id = n.meta.as_ref().map(|m| m.id.clone()).unwrap_or_default();
                if Some(ms.raft_id) == metrics.current_leader {
                    info.leader_node_id = id.clone();
                }
                info.managers.push(pb::RemoteManager {
                    node_id: id,
                    addr: ms.addr.clone(),
                });
            }
        } else {
            info.managers = st
                .managers
                .iter()
                .map(|a| pb::RemoteManager {
                    node_id: String::new(),
                    addr: a.clone(),
                })
                .collect();
        }
        info
    }
}

/// The node as a control loop; see the module docs.
pub struct NodeLoop {
    cfg: NodeConfig,
    dir: SwarmDir,
    tx: mpsc::Sender<Command>,
    rx: mpsc::Receiver<Command>,
    shared: Arc<RwLock<Shared>>,
    children: Option<Children>,
}

impl std::fmt::Debug for NodeLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeLoop").field("dir", &self.dir).finish()
    }
}

struct Children {
    stop: CancellationToken,
    set: JoinSet<(&'static str, Result<(), LoopError>)>,
}

impl Children {
    fn new() -> Self {
        Children {
            stop: CancellationToken::new(),
            set: JoinSet::new(),
        }
    }
    fn spawn<L: ControlLoop>(&mut self, l: L) {
        let name = l.name();
        let token = self.stop.child_token();
        self.set.spawn(async move { (name, l.run(token).await) });
    }
    async fn stop(mut self) {
        self.stop.cancel();
        while self.set.join_next().await.is_some() {}
    }
}

/// Persists the manager list the agent learns, so a restarted node knows
/// where the managers are now, and hands role changes to the node loop.
struct AgentHooks {
    dir: SwarmDir,
    shared: Arc<RwLock<Shared>>,
    tx: mpsc::Sender<Command>,
}

impl AgentEvents for AgentHooks {
    fn role_changed(&self, role: Role) {
        if self.tx.try_send(Command::RoleChanged(role)).is_err() {
            tracing::warn!(
                ?role,
                "cannot hand the role change to the node; it applies at restart"
            );
        }
    }

    fn managers_changed(&self, managers: &[String]) {
        let mut s = self.shared.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(st) = s.state.as_mut() {
            st.managers = managers.to_vec();
            if let Err(e) = self.dir.save(st) {
                tracing::warn!(error = %e, "cannot record the manager list");
            }
        }
    }
}

pub fn new(cfg: NodeConfig) -> (NodeHandle, NodeLoop) {
    let (tx, rx) = mpsc::channel(4);
    let shared = Arc::new(RwLock::new(Shared {
        local: "inactive",
        ..Default::default()
    }));
    let dir = SwarmDir::new(&cfg.data_root);
    (
        NodeHandle {
            tx: tx.clone(),
            shared: shared.clone(),
            worker: cfg.worker.clone(),
        },
        NodeLoop {
            cfg,
            dir,
            tx,
            rx,
            shared,
            children: None,
        },
    )
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

/// What this machine reports about itself.
pub fn describe(hostname: &str) -> pb::NodeDescription {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<i64>().ok())
        })
        .map_or(0, |kb| kb * 1024);
    pb::NodeDescription {
        hostname: hostname.to_string(),
        platform: Some(pb::Platform {
            os: std::env::consts::OS.into(),
            architecture: std::env::consts::ARCH.into(),
        }),
        resources: Some(pb::Resources {
            nano_cpus: i64::try_from(cpus).unwrap_or(1) * 1_000_000_000,
            memory_bytes: memory,
        }),
        engine: Some(pb::EngineDescription {
            engine_version: crate::version::VERSION.into(),
            labels: Default::default(),
        }),
    }
}

/// Applies what `init` asked for over the defaults: every part of the
/// request's spec that is set wins, the rest keeps docker's defaults.
fn overlay_spec(cluster: &mut pb::Cluster, req: &pb::InitRequest) {
    let Some(want) = req.spec.clone() else {
        return;
    };
    let spec = cluster.spec.get_or_insert_with(Default::default);
    if let Some(o) = want.orchestration {
        spec.orchestration = Some(o);
    }
    if let Some(r) = want.raft
        && r.snapshot_interval > 0
    {
        let cur = spec.raft.get_or_insert_with(Default::default);
        cur.snapshot_interval = r.snapshot_interval;
        cur.keep_old_snapshots = r.keep_old_snapshots;
    }
    if let Some(d) = want.dispatcher
        && d.heartbeat_period.is_some()
    {
        spec.dispatcher = Some(d);
    }
    if let Some(c) = want.ca_config
        && c.node_cert_expiry.is_some()
    {
        spec.ca_config = Some(c);
    }
    if !req.default_address_pool.is_empty() {
        cluster.default_address_pool = req.default_address_pool.clone();
    }
    if req.subnet_size > 0 {
        cluster.subnet_size = req.subnet_size;
    }
    if req.data_path_port > 0 {
        cluster.vxlan_udp_port = req.data_path_port;
    }
}

/// Refuses `init`'s network settings docker would refuse: pools that do
/// not parse or overlap, a mask length that does not fit them, a data path
/// port outside 1024-49151.
fn check_network_settings(req: &pb::InitRequest) -> Result<(), Status> {
    crate::allocator::ipam::Pools::parse(&req.default_address_pool, req.subnet_size)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    if req.data_path_port != 0 && !(1024..=49151).contains(&req.data_path_port) {
        return Err(Status::invalid_argument(format!(
            "data path port {} is out of range: use a port between 1024 and 49151 (default 4789)",
            req.data_path_port
        )));
    }
    Ok(())
}

fn new_raft_id() -> u64 {
    loop {
        let id: u64 = rand::random();
        if id != 0 {
            return id;
        }
    }
}

impl NodeLoop {
    fn set_shared(&self, state: Option<NodeState>, manager: Option<Manager>, local: &'static str) {
        let mut s = self.shared.write().unwrap_or_else(PoisonError::into_inner);
        s.state = state;
        s.manager = manager;
        s.local = local;
        s.error = None;
    }

    fn set_error(&self, e: &str) {
        let mut s = self.shared.write().unwrap_or_else(PoisonError::into_inner);
        s.local = "error";
        s.error = Some(e.to_string());
    }

    fn manager_config(&self, st: &NodeState) -> Result<ManagerConfig, Status> {
        Ok(ManagerConfig {
            node_id: st.node_id.clone(),
            cluster_id: st.cluster_id.clone(),
            raft_id: st
                .raft_id
                .ok_or_else(|| Status::internal("manager state without a Raft ID"))?,
            listen_addr: st.listen_addr.parse().map_err(|e| {
                Status::invalid_argument(format!("listen address {}: {e}", st.listen_addr))
            })?,
            advertise_addr: st.advertise_addr.clone(),
            dir: self.dir.clone(),
            raft: self.cfg.raft.clone(),
        })
    }

    /// Starts the node's parts for `st` with the given credentials.
    async fn start_parts(
        &mut self,
        st: &NodeState,
        root: &ca::RootCert,
        cert: &NodeCert,
        identity: TlsIdentity,
    ) -> Result<Option<Manager>, Status> {
        let mut children = Children::new();
        let manager = if st.role == NodeRole::Manager {
            let (m, server) =
                Manager::start(self.manager_config(st)?, root.clone(), identity.clone())
                    .await
                    .map_err(|e| Status::failed_precondition(e.to_string()))?;
            children.spawn(server);
            Some(m)
        } else {
            None
        };
        let channels = Arc::new(MtlsChannels::for_agent(root, &identity).map_err(internal)?);
        children.spawn(self.log_agent(channels.clone()));
        children.spawn(Agent::new(
            st.node_id.clone(),
            describe(&self.cfg.hostname),
            channels,
            st.managers.clone(),
            self.cfg.worker.clone(),
            Arc::new(AgentHooks {
                dir: self.dir.clone(),
                shared: self.shared.clone(),
                tx: self.tx.clone(),
            }),
            crate::agent::Credentials {
                root: root.clone(),
                cert: cert.clone(),
                identity,
                dir: self.dir.certificates(),
                raft_id: st.raft_id.unwrap_or_default(),
                advertise_addr: st.advertise_addr.clone(),
            },
        ));
        self.children = Some(children);
        Ok(manager)
    }

    /// Publishes this node's task logs to the leader's log broker. It
    /// finds managers through the list the agent keeps current.
    fn log_agent(&self, channels: Arc<MtlsChannels>) -> LogAgent {
        let shared = self.shared.clone();
        let managers = Arc::new(move || {
            shared
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .state
                .as_ref()
                .map(|st| st.managers.clone())
                .unwrap_or_default()
        });
        // Container ID = task ID: the runtime's layout says where a task's
        // log is.
        let logs = Arc::new(RuntimeLogs {
            root: self.cfg.data_root.join("containers"),
        });
        LogAgent::new(channels, managers, logs)
    }

    async fn resume(&mut self) -> Result<(), LoopError> {
        let Some(st) = self.dir.load()? else {
            return Ok(());
        };
        let creds = ca::store::load(&self.dir.certificates())?.ok_or_else(|| {
            format!(
                "{} has swarm state but no certificates; leave the swarm (remove the directory) and join again",
                self.dir.root().display()
            )
        })?;
        let identity = TlsIdentity::new(&creds.root, &creds.cert, &creds.key)?;
        tracing::info!(node_id = %st.node_id, role = ?st.role, "resuming swarm membership");
        let manager = self
            .start_parts(&st, &creds.root, &creds.cert, identity)
            .await
            .map_err(|s| s.message().to_string())?;
        self.set_shared(Some(st), manager, "active");
        Ok(())
    }

    fn already_member(&self) -> Result<(), Status> {
        if self
            .shared
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .state
            .is_some()
        {
            return Err(Status::already_exists(
                "This node is already part of a swarm. Use \"swarm leave\" to leave this swarm and join another one.",
            ));
        }
        Ok(())
    }

    async fn init(&mut self, req: pb::InitRequest) -> Result<pb::InitResponse, Status> {
        if req.force_new_cluster {
            return self.force_new_cluster().await;
        }
        self.already_member()?;
        check_network_settings(&req)?;
        let listen = addr::listen_addr(&req.listen_addr)?;
        let advertise = addr::advertise_addr(&req.advertise_addr, listen)?;
        let node_id = new_id();
        let cluster_id = new_id();
        let raft_id = new_raft_id();

        let root = RootCa::generate().map_err(internal)?;
        let mut cluster = crate::store::defaults::cluster(&cluster_id, "default");
        overlay_spec(&mut cluster, &req);
        let validity = node_cert_validity(&cluster);
        let key = NodeKey::generate().map_err(internal)?;
        let csr = key.generate_csr(Some(&node_id)).map_err(internal)?;
        let cert = root
            .issue(&csr, &node_id, Role::Manager, &cluster_id, validity)
            .map_err(internal)?;
        let tokens = JoinTokens::generate(root.cert());
        cluster.root_ca = Some(pb::RootCa {
            ca_cert_pem: root.cert_pem().into_bytes(),
            ca_key_pem: root.key_pem().into_bytes(),
            ca_cert_digest: root.digest().to_string(),
            join_tokens: Some(pb::JoinTokens {
                worker: tokens.worker.to_string(),
                manager: tokens.manager.to_string(),
            }),
            ..Default::default()
        });
        ca::store::save(
            &self.dir.certificates(),
            &ca::NodeCredentials {
                root: root.cert().clone(),
                cert: cert.clone(),
                key: NodeKey::from_pem(&key.to_pem()).map_err(internal)?,
            },
        )
        .map_err(internal)?;
        let identity = TlsIdentity::new(root.cert(), &cert, &key).map_err(internal)?;
        let st = NodeState {
            node_id: node_id.clone(),
            cluster_id: cluster_id.clone(),
            role: NodeRole::Manager,
            raft_id: Some(raft_id),
            listen_addr: listen.to_string(),
            advertise_addr: advertise.clone(),
            managers: vec![advertise.clone()],
        };
        let manager = match self
            .start_parts_manager_first(&st, root.cert(), &cert, identity)
            .await
        {
            Ok(m) => m,
            Err(e) => {
                let _ = self.dir.wipe();
                return Err(e);
            }
        };
        let members: BTreeMap<u64, BasicNode> =
            [(raft_id, BasicNode::new(advertise.clone()))].into();
        manager.raft.initialize(members).await.map_err(internal)?;
        if manager
            .wait_for_leader(Duration::from_secs(10))
            .await
            .is_none()
        {
            return Err(Status::internal(
                "the new single-manager Raft elected no leader",
            ));
        }
        let me = pb::Node {
            meta: Some(pb::Meta {
                id: node_id.clone(),
                ..Default::default()
            }),
            spec: Some(pb::NodeSpec {
                annotations: Some(pb::Annotations::default()),
                desired_role: pb::NodeRole::Manager as i32,
                availability: req.availability,
            }),
            description: Some(describe(&self.cfg.hostname)),
            status: Some(pb::NodeStatus {
                state: pb::NodeState::Ready as i32,
                message: String::new(),
                addr: advertise.split(':').next().unwrap_or_default().to_string(),
            }),
            manager_status: Some(pb::ManagerStatus {
                raft_id,
                addr: advertise.clone(),
                leader: true,
                reachability: pb::Reachability::Reachable as i32,
            }),
            role: pb::NodeRole::Manager as i32,
            certificate: Some(pb::Certificate {
                role: pb::NodeRole::Manager as i32,
                cn: node_id.clone(),
                certificate_pem: cert.to_pem().into_bytes(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let actions = manager.store.prepare(|tx: &mut WriteTx| {
            tx.create(cluster).map_err(internal)?;
            tx.create(me).map_err(internal)?;
            // The routing mesh's network, from the first subnet of the
            // pools just written (docker's 10.0.0.0/24 by default).
            let ingress = crate::controlapi::network::new_network(
                tx,
                crate::controlapi::network::ingress_spec(),
            )?;
            tx.create(ingress).map_err(internal)
        })?;
        manager
            .proposer
            .propose(actions)
            .await
            .map_err(crate::manager::caserver::propose_status)?;
        self.dir.save(&st).map_err(internal)?;
        tracing::info!(%node_id, %cluster_id, %advertise, "swarm initialized");
        self.set_shared(Some(st), Some(manager), "active");
        Ok(pb::InitResponse {
            node_id,
            cluster_id,
            worker_token: tokens.worker.to_string(),
            manager_token: tokens.manager.to_string(),
            advertise_addr: advertise,
        })
    }

    /// `start_parts` for a node whose store is empty until Raft catches up
    /// (a new swarm, or a joining manager).
    async fn start_parts_manager_first(
        &mut self,
        st: &NodeState,
        root: &ca::RootCert,
        cert: &NodeCert,
        identity: TlsIdentity,
    ) -> Result<Manager, Status> {
        self.start_parts(st, root, cert, identity)
            .await?
            .ok_or_else(|| Status::internal("expected a manager"))
    }

    async fn join(&mut self, req: pb::JoinRequest) -> Result<pb::JoinResponse, Status> {
        self.already_member()?;
        let token =
            JoinToken::parse(&req.token).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let remote = addr::remote_addr(&req.remote_addr)?;
        let listen = addr::listen_addr(&req.listen_addr)?;
        let advertise = addr::advertise_addr(&req.advertise_addr, listen)?;
        let root = ca::fetch_pinned_root_ca(remote, &token)
            .await
            .map_err(|e| Status::permission_denied(e.to_string()))?;
        let key = NodeKey::generate().map_err(internal)?;
        let csr = key.generate_csr(None).map_err(internal)?;
        let raft_id = new_raft_id();
        let channel = ca::connect(remote, ClientTls::pinned(&root).map_err(internal)?)
            .await
            .map_err(|e| {
                Status::failed_precondition(format!("cannot reach the manager at {remote}: {e}"))
            })?;
        let resp = NodeCaClient::new(channel)
            .issue_node_certificate(pb::IssueNodeCertificateRequest {
                token: req.token.clone(),
                csr_pem: csr.into_bytes(),
                advertise_addr: advertise.clone(),
                description: Some(describe(&self.cfg.hostname)),
                raft_id,
                availability: req.availability,
            })
            .await
            .map_err(|s| {
                Status::new(
                    s.code(),
                    format!(
                        "the manager at {remote} refused to join this node: {}",
                        s.message()
                    ),
                )
            })?
            .into_inner();
        let cert =
            NodeCert::from_pem(&String::from_utf8_lossy(&resp.certificate_pem)).map_err(|e| {
                Status::internal(format!("the manager sent an unusable certificate: {e}"))
            })?;
        let identity = TlsIdentity::new(&root, &cert, &key).map_err(internal)?;
        let node_cert = cert.clone();
        let role = if resp.role == pb::NodeRole::Manager as i32 {
            NodeRole::Manager
        } else {
            NodeRole::Worker
        };
        ca::store::save(
            &self.dir.certificates(),
            &ca::NodeCredentials {
                root: root.clone(),
                cert,
                key: NodeKey::from_pem(&key.to_pem()).map_err(internal)?,
            },
        )
        .map_err(internal)?;
        let mut managers = resp.managers.clone();
        if managers.is_empty() {
            managers.push(remote.to_string());
        }
        let st = NodeState {
            node_id: resp.node_id.clone(),
            cluster_id: resp.cluster_id.clone(),
            role,
            raft_id: Some(raft_id),
            listen_addr: listen.to_string(),
            advertise_addr: advertise,
            managers,
        };
        self.dir.save(&st).map_err(internal)?;
        let manager = self.start_parts(&st, &root, &node_cert, identity).await?;
        if let Some(m) = &manager {
            // Joined once Raft counts us as a voter.
            let mut rx = m.raft.metrics();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            loop {
                let voter = rx
                    .borrow()
                    .membership_config
                    .membership()
                    .voter_ids()
                    .any(|v| v == raft_id);
                if voter {
                    break;
                }
                if tokio::time::timeout_at(deadline, rx.changed())
                    .await
                    .is_err()
                {
                    self.set_error("timed out waiting to become a Raft voter");
                    return Err(Status::deadline_exceeded(
                        "joined, but the leader did not add this manager to Raft within 60 s; check connectivity to the other managers on the cluster port",
                    ));
                }
            }
        }
        tracing::info!(node_id = %st.node_id, role = ?role, "joined the swarm");
        self.set_shared(Some(st.clone()), manager, "active");
        Ok(pb::JoinResponse {
            node_id: st.node_id,
            role: resp.role,
        })
    }

    async fn leave(&mut self, req: pb::LeaveRequest) -> Result<(), Status> {
        let (st, manager) = {
            let s = self.shared.read().unwrap_or_else(PoisonError::into_inner);
            (s.state.clone(), s.manager.clone())
        };
        let Some(st) = st else {
            return Err(Status::failed_precondition(
                "This node is not part of a swarm",
            ));
        };
        if let Some(m) = &manager {
            let (reachable, managers) = m.proposer.reachability();
            if !req.force {
                return Err(Status::failed_precondition(format!(
                    "You are attempting to leave the swarm on a node that is participating as a manager. Removing this node leaves {} managers out of a possible {managers}. Use `--force` to suppress this message.",
                    managers.saturating_sub(1).min(reachable)
                )));
            }
            // Best effort: a leader takes itself out of Raft first so the
            // rest keep their quorum arithmetic right.
            if m.is_leader() && managers > 1 {
                let me: std::collections::BTreeSet<u64> = [m.config.raft_id].into();
                let _ = tokio::time::timeout(
                    Duration::from_secs(5),
                    m.raft
                        .change_membership(openraft::ChangeMembers::RemoveVoters(me), false),
                )
                .await;
            }
        }
        if let Some(c) = self.children.take() {
            c.stop().await;
        }
        // The agent is gone, so no assignment comes in meanwhile.
        self.cfg.worker.remove_all().await.map_err(internal)?;
        self.dir.wipe().map_err(internal)?;
        tracing::info!(node_id = %st.node_id, "left the swarm");
        self.set_shared(None, None, "inactive");
        Ok(())
    }
}

impl NodeLoop {
    /// `init --force-new-cluster`: this manager keeps the state it has and
    /// becomes the only member of a new Raft group, for a swarm that lost
    /// its majority. Other managers are turned into down workers: they must
    /// leave and join again.
    async fn force_new_cluster(&mut self) -> Result<pb::InitResponse, Status> {
        let (st, manager) = {
            let s = self.shared.read().unwrap_or_else(PoisonError::into_inner);
            (s.state.clone(), s.manager.clone())
        };
        let (Some(mut st), Some(manager)) = (st, manager) else {
            return Err(Status::failed_precondition(
                "--force-new-cluster needs a node that is a manager of a swarm",
            ));
        };
        let snapshot = manager.store.snapshot();
        let me = manager.config.raft_id;
        drop(manager);
        if let Some(c) = self.children.take() {
            c.stop().await;
        }
        let raft_dir = self.dir.raft();
        std::fs::remove_dir_all(&raft_dir)
            .map_err(|e| Status::internal(format!("removing {}: {e}", raft_dir.display())))?;
        let creds = ca::store::load(&self.dir.certificates())
            .map_err(internal)?
            .ok_or_else(|| Status::internal("this manager has no certificates"))?;
        let identity = TlsIdentity::new(&creds.root, &creds.cert, &creds.key).map_err(internal)?;
        st.managers = vec![st.advertise_addr.clone()];
        self.dir.save(&st).map_err(internal)?;
        let m = self
            .start_parts_manager_first(&st, &creds.root, &creds.cert, identity)
            .await?;
        let members: BTreeMap<u64, BasicNode> =
            [(me, BasicNode::new(st.advertise_addr.clone()))].into();
        m.raft.initialize(members).await.map_err(internal)?;
        if m.wait_for_leader(Duration::from_secs(10)).await.is_none() {
            return Err(Status::internal(
                "the new single-manager Raft elected no leader",
            ));
        }
        // Recreate every object; other managers leave the manager set.
        let actions = m
            .store
            .prepare(|tx: &mut WriteTx| {
                for c in snapshot.clusters {
                    tx.create(c)?;
                }
                for mut n in snapshot.nodes {
                    let is_me = n.manager_status.as_ref().is_some_and(|s| s.raft_id == me);
                    if n.manager_status.is_some() && !is_me {
                        n.role = pb::NodeRole::Worker as i32;
                        if let Some(spec) = n.spec.as_mut() {
                            spec.desired_role = pb::NodeRole::Worker as i32;
                        }
                        n.manager_status = None;
                        n.status = Some(pb::NodeStatus {
                            state: pb::NodeState::Down as i32,
                            message:
                                "left the manager set (--force-new-cluster): leave and join again"
                                    .into(),
                            addr: n.status.map(|s| s.addr).unwrap_or_default(),
                        });
                    }
                    tx.create(n)?;
                }
                for x in snapshot.services {
                    tx.create(x)?;
                }
                for x in snapshot.tasks {
                    tx.create(x)?;
                }
                for x in snapshot.networks {
                    tx.create(x)?;
                }
                for x in snapshot.secrets {
                    tx.create(x)?;
                }
                for x in snapshot.configs {
                    tx.create(x)?;
                }
                Ok::<(), crate::store::StoreError>(())
            })
            .map_err(internal)?;
        m.proposer
            .propose(actions)
            .await
            .map_err(crate::manager::caserver::propose_status)?;
        let tokens = m
            .cluster()
            .and_then(|c| c.root_ca.clone())
            .and_then(|r| r.join_tokens)
            .unwrap_or_default();
        tracing::warn!(node_id = %st.node_id, "forced a new single-manager cluster from the existing state");
        let resp = pb::InitResponse {
            node_id: st.node_id.clone(),
            cluster_id: st.cluster_id.clone(),
            worker_token: tokens.worker,
            manager_token: tokens.manager,
            advertise_addr: st.advertise_addr.clone(),
        };
        self.set_shared(Some(st), Some(m), "active");
        Ok(resp)
    }

    /// Restarts the node's parts in its new role: a promoted node starts a
    /// manager (an empty Raft the leader is already adding as a voter); a
    /// demoted one stops its manager and forgets its Raft data.
    async fn role_changed(&mut self, role: Role) -> Result<(), LoopError> {
        let Some(mut st) = self
            .shared
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .state
            .clone()
        else {
            return Ok(());
        };
        let new_role = match role {
            Role::Manager => NodeRole::Manager,
            Role::Worker => NodeRole::Worker,
        };
        if st.role == new_role {
            return Ok(());
        }
        tracing::info!(from = ?st.role, to = ?new_role, "changing role");
        if let Some(c) = self.children.take() {
            c.stop().await;
        }
        if new_role == NodeRole::Worker {
            // A Raft ID is never reused once it has left the membership.
            let raft = self.dir.raft();
            if let Err(e) = std::fs::remove_dir_all(&raft)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                return Err(format!("removing {}: {e}", raft.display()).into());
            }
            st.raft_id = Some(new_raft_id());
        }
        st.role = new_role;
        self.dir.save(&st)?;
        let creds = ca::store::load(&self.dir.certificates())?
            .ok_or("the renewed certificate is missing")?;
        let identity = TlsIdentity::new(&creds.root, &creds.cert, &creds.key)?;
        let manager = self
            .start_parts(&st, &creds.root, &creds.cert, identity)
            .await
            .map_err(|s| s.message().to_string())?;
        self.set_shared(Some(st), manager, "active");
        Ok(())
    }
}

impl ControlLoop for NodeLoop {
    fn name(&self) -> &'static str {
        "node"
    }

    async fn run(mut self, shutdown: CancellationToken) -> Result<(), LoopError> {
        self.resume().await?;
        loop {
            let child = async {
                match self.children.as_mut() {
                    Some(c) => c.set.join_next().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => break,
                cmd = self.rx.recv() => match cmd {
                    None => break,
                    Some(Command::Init(r, tx)) => { let _ = tx.send(self.init(*r).await); }
                    Some(Command::Join(r, tx)) => { let _ = tx.send(self.join(r).await); }
                    Some(Command::Leave(r, tx)) => { let _ = tx.send(self.leave(r).await); }
                    Some(Command::RoleChanged(role)) => self.role_changed(role).await?,
                },
                Some(res) = child => {
                    let msg = match res {
                        Ok((name, Ok(()))) => format!("{name} exited unexpectedly"),
                        Ok((name, Err(e))) => format!("{name} failed: {e}"),
                        Err(e) => format!("a node component panicked: {e}"),
                    };
                    if let Some(c) = self.children.take() { c.stop().await; }
                    return Err(msg.into());
                }
            }
        }
        if let Some(c) = self.children.take() {
            c.stop().await;
        }
        Ok(())
    }
}
