//! The control API (`swarm node ...`, `swarm service ...`, `swarm network
//! ...`, `swarm join-token ...`): validates
//! requests, reads from the local store, and turns changes into store
//! batches proposed on the leader. A follower forwards every call that
//! writes to the leader; reads answer from local memory, so they work
//! without quorum.
//!
//! Must never hand out the CA's private key: cluster objects leave the
//! manager scrubbed.
pub mod network;
pub mod service;

use std::sync::Arc;

use swarm_proto::v1::{self as pb, control_client::ControlClient, control_server};
use tonic::{Request, Response, Status};

use crate::{
    ca::JoinToken,
    manager::{Manager, caserver::propose_status},
    store::{StoreError, WriteTx},
};

#[derive(Clone, Debug)]
pub struct ControlApi {
    m: Manager,
}

impl ControlApi {
    pub fn new(m: Manager) -> Self {
        ControlApi { m }
    }
    pub fn into_server(self) -> control_server::ControlServer<Self> {
        control_server::ControlServer::new(self)
    }

    /// Refuses a demotion that would leave no manager or lose quorum;
    /// returns the manager's Raft ID.
    fn check_demotion(&self, node: &pb::Node) -> Result<u64, Status> {
        let id = node
            .meta
            .as_ref()
            .map(|m| m.id.as_str())
            .unwrap_or_default();
        let raft_id = node
            .manager_status
            .as_ref()
            .map(|s| s.raft_id)
            .ok_or_else(|| {
                Status::failed_precondition(format!("node {id} is not a manager yet"))
            })?;
        let managers = self
            .m
            .store
            .view()
            .list::<pb::Node>()
            .filter(|n| n.role == pb::NodeRole::Manager as i32)
            .count();
        if managers <= 1 {
            return Err(Status::failed_precondition(format!(
                "attempting to demote the last manager of the swarm ({id})"
            )));
        }
        let (reachable, voters) = self.m.proposer.reachability();
        let target_counted = usize::from(
            raft_id == self.m.config.raft_id || self.m.proposer.peer_reachable(raft_id),
        );
        let after_reachable = reachable.saturating_sub(target_counted);
        let after_voters = voters.saturating_sub(1);
        if after_reachable * 2 <= after_voters {
            return Err(Status::failed_precondition(format!(
                "can't demote {id}: it would result in a loss of quorum ({after_reachable} of {after_voters} remaining managers reachable)"
            )));
        }
        Ok(raft_id)
    }

    /// A forwarded call that could not reach the leader is the cluster's
    /// problem, not the local daemon's: never UNAVAILABLE to the CLI, and
    /// said in the same words as the leader's own no-quorum refusal.
    fn forwarded<T>(&self, r: Result<Response<T>, Status>) -> Result<Response<T>, Status> {
        r.map_err(|s| {
            if matches!(
                s.code(),
                tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::DeadlineExceeded
            ) {
                let leader = self
                    .m
                    .proposer
                    .leader_addr()
                    .unwrap_or_else(|| "unknown".into());
                let voters = self
                    .m
                    .raft
                    .metrics()
                    .borrow()
                    .membership_config
                    .membership()
                    .voter_ids()
                    .count();
                Status::failed_precondition(format!(
                    "no quorum: this manager cannot reach the leader (at {leader}) of the {voters} managers, so it is cut off from their majority; writes are refused until it is reachable again (reads still work) [{}]",
                    s.message()
                ))
            } else {
                s
            }
        })
    }

    /// Holds a read until this manager's store has caught up with its own
    /// admission to the managers (see [`Manager::caught_up`]); reads are
    /// answered from local memory and would otherwise be older than the
    /// promotion or join that made this node a manager.
    async fn readable(&self) -> Result<(), Status> {
        self.m
            .caught_up(CATCH_UP_WAIT)
            .await
            .map_err(|c| {
                Status::failed_precondition(format!(
                    "this manager is still catching up with the swarm's Raft log (applied up to entry {}, joined at entry {}), so its answers would be out of date; retry in a moment or ask another manager",
                    c.applied, c.joined_at
                ))
            })
    }

    fn leader(&self) -> Result<ControlClient<tonic::transport::Channel>, Status> {
        self.m
            .leader_channel()
            .map(ControlClient::new)
            .map_err(propose_status)
    }
}

/// Finds one node by ID, unique ID prefix or hostname.
pub fn resolve_node(m: &Manager, r: &str) -> Result<Arc<pb::Node>, Status> {
    let view = m.store.view();
    if let Some(n) = view.get::<pb::Node>(r) {
        return Ok(n);
    }
    let by_host: Vec<Arc<pb::Node>> = view
        .list::<pb::Node>()
        .filter(|n| n.description.as_ref().is_some_and(|d| d.hostname == r))
        .collect();
    let by_prefix = view.find_by_id_prefix::<pb::Node>(r);
    let found: Vec<Arc<pb::Node>> = if by_host.is_empty() {
        by_prefix
    } else {
        by_host
    };
    match found.len() {
        0 => Err(Status::not_found(format!("node {r} not found"))),
        1 => Ok(found.into_iter().next().expect("one element")),
        n => Err(Status::invalid_argument(format!(
            "node {r} is ambiguous ({n} matches): use a longer ID prefix"
        ))),
    }
}

/// A cluster object safe to hand to a client: no CA key.
pub fn scrub(c: &pb::Cluster) -> pb::Cluster {
    let mut c = c.clone();
    if let Some(rc) = c.root_ca.as_mut() {
        rc.ca_key_pem.clear();
        if let Some(rot) = rc.root_rotation.as_mut() {
            rot.ca_key_pem.clear();
        }
    }
    if let Some(ca) = c.spec.as_mut().and_then(|s| s.ca_config.as_mut()) {
        ca.signing_ca_key_pem.clear();
    }
    c.unlock_keys.clear();
    c.network_bootstrap_keys.clear();
    c
}

pub fn raft_status(m: &Manager) -> pb::RaftStatus {
    let metrics = m.raft.metrics().borrow().clone();
    let (reachable, managers) = m.proposer.reachability();
    pb::RaftStatus {
        raft_id: metrics.id,
        term: metrics.current_term,
        leader_raft_id: metrics.current_leader.unwrap_or(0),
        state: format!("{:?}", metrics.state),
        last_log_index: metrics.last_log_index.unwrap_or(0),
        last_applied: metrics.last_applied.map_or(0, |l| l.index),
        managers: u32::try_from(managers).unwrap_or(u32::MAX),
        reachable_managers: u32::try_from(reachable).unwrap_or(u32::MAX),
    }
}

fn cluster_of(m: &Manager) -> Result<Arc<pb::Cluster>, Status> {
    m.cluster()
        .ok_or_else(|| Status::failed_precondition("the swarm is still initialising; retry"))
}

/// Finds one service by ID, name, or unique ID prefix (docker's order).
pub fn resolve_service(m: &Manager, r: &str) -> Result<Arc<pb::Service>, Status> {
    let view = m.store.view();
    if r.is_empty() {
        return Err(Status::invalid_argument("no service given"));
    }
    if let Some(s) = view.get::<pb::Service>(r) {
        return Ok(s);
    }
    if let Some(s) = view.get_by_name::<pb::Service>(r) {
        return Ok(s);
    }
    let mut found = view.find_by_id_prefix::<pb::Service>(r);
    match found.len() {
        0 => Err(Status::not_found(format!(
            "service {r} not found: `service ls` lists the services"
        ))),
        1 => Ok(found.remove(0)),
        n => Err(Status::invalid_argument(format!(
            "service {r} is ambiguous ({n} matches): use a longer ID prefix or the name"
        ))),
    }
}

/// A store refusal as the client should see it.
fn store_status(e: StoreError) -> Status {
    match e {
        StoreError::NameConflict { .. } => Status::already_exists(e.to_string()),
        StoreError::OutOfSequence { .. } => Status::aborted(format!(
            "the object changed while this update was in flight; read it again and retry ({e})"
        )),
        other => Status::failed_precondition(other.to_string()),
    }
}

/// Replaces network names (or ID prefixes) in the spec's attachments with
/// network IDs; refuses unknown networks and the ingress network, and
/// ingress-published ports when there is no ingress network.
fn resolve_networks(m: &Manager, spec: &mut pb::ServiceSpec) -> Result<(), Status> {
    let view = m.store.view();
    let publishes_ingress = spec.endpoint.as_ref().is_some_and(|e| {
        e.ports
            .iter()
            .any(|p| p.publish_mode == pb::PublishMode::Ingress as i32)
    });
    if publishes_ingress && crate::allocator::ingress_network(&view).is_none() {
        return Err(Status::failed_precondition(
            "service needs the ingress network to publish ports in ingress mode, but there is none: create it with `network create --ingress ingress`, or publish with mode=host",
        ));
    }
    let Some(task) = spec.task.as_mut() else {
        return Ok(());
    };
    for att in &mut task.networks {
        let net = network::resolve(&view, &att.target).map_err(|e| match e {
            network::NetworkError::NotFound(_) => Status::not_found(format!(
                "network {} not found: attach the service to an existing overlay network (`network ls` lists them)",
                att.target
            )),
            other => other.into(),
        })?;
        if net.spec.as_ref().is_some_and(|s| s.ingress) {
            return Err(Status::invalid_argument(format!(
                "service cannot be explicitly attached to the ingress network {:?}",
                att.target
            )));
        }
        if let Some(meta) = &net.meta {
            att.target = meta.id.clone();
        }
    }
    Ok(())
}

/// Fills docker's defaults, resolves networks and runs every check on a
/// spec about to be stored for service `service_id` (empty for a new one).
fn prepare_spec(
    m: &Manager,
    mut spec: pb::ServiceSpec,
    service_id: &str,
) -> Result<pb::ServiceSpec, Status> {
    service::fill_defaults(&mut spec);
    service::validate_spec(&spec)?;
    resolve_networks(m, &mut spec)?;
    let view = m.store.view();
    let others: Vec<Arc<pb::Service>> = view.list::<pb::Service>().collect();
    service::check_port_conflicts(&spec, service_id, others.iter().map(|s| &**s))?;
    Ok(spec)
}

/// How long a read waits for a manager fresh from its promotion or join
/// to catch up before it is refused.
const CATCH_UP_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

fn now() -> prost_types::Timestamp {
    std::time::SystemTime::now().into()
}

#[tonic::async_trait]
impl control_server::Control for ControlApi {
    async fn get_node(
        &self,
        req: Request<pb::GetNodeRequest>,
    ) -> Result<Response<pb::GetNodeResponse>, Status> {
        self.readable().await?;
        let n = resolve_node(&self.m, &req.get_ref().node_ref)?;
        Ok(Response::new(pb::GetNodeResponse {
            node: Some((*n).clone()),
        }))
    }

    async fn list_nodes(
        &self,
        req: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        self.readable().await?;
        let role = req.get_ref().role;
        let nodes = self
            .m
            .store
            .view()
            .list::<pb::Node>()
            .filter(|n| role.is_none_or(|r| n.role == r))
            .map(|n| (*n).clone())
            .collect();
        Ok(Response::new(pb::ListNodesResponse { nodes }))
    }

    async fn update_node(
        &self,
        req: Request<pb::UpdateNodeRequest>,
    ) -> Result<Response<pb::UpdateNodeResponse>, Status> {
        if !self.m.is_leader() {
            return self.forwarded(self.leader()?.update_node(req.into_inner()).await);
        }
        // Serialized with the leader's other writers (status reports,
        // leader loops), so what is read below is still current when
        // proposed.
        let _w = self.m.write_lock().await;
        let r = req.into_inner();
        let spec = r
            .spec
            .ok_or_else(|| Status::invalid_argument("the update carries no node spec"))?;
        let current = self
            .m
            .store
            .view()
            .get::<pb::Node>(&r.node_id)
            .ok_or_else(|| Status::not_found(format!("node {} not found", r.node_id)))?;
        let version = current.meta.as_ref().map_or(0, |m| m.version);
        if r.node_version != version {
            return Err(Status::aborted(format!(
                "node {} changed since it was read (version {} now, {} read); read it again and retry",
                r.node_id, version, r.node_version
            )));
        }
        let mut node = (*current).clone();
        let mut demoted_raft_id = None;
        if spec.desired_role != node.role {
            if spec.desired_role == pb::NodeRole::Manager as i32 {
                // The node's agent sees the new role, renews its
                // certificate, and the CA adds it to Raft.
                node.role = pb::NodeRole::Manager as i32;
            } else {
                demoted_raft_id = Some(self.check_demotion(&node)?);
                node.role = pb::NodeRole::Worker as i32;
                node.manager_status = None;
            }
        }
        node.spec = Some(spec);
        let id = r.node_id.clone();
        let actions = self
            .m
            .store
            .prepare(|tx: &mut WriteTx| tx.update(node))
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        self.m
            .proposer
            .propose(actions)
            .await
            .map_err(propose_status)?;
        if let Some(raft_id) = demoted_raft_id {
            tokio::spawn(crate::manager::caserver::remove_raft_voter(
                self.m.clone(),
                raft_id,
            ));
        }
        let node = self
            .m
            .store
            .view()
            .get::<pb::Node>(&id)
            .map(|n| (*n).clone());
        Ok(Response::new(pb::UpdateNodeResponse { node }))
    }

    async fn remove_node(
        &self,
        req: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::RemoveNodeResponse>, Status> {
        if !self.m.is_leader() {
            return self.forwarded(self.leader()?.remove_node(req.into_inner()).await);
        }
        // Serialized with the leader's other writers (status reports,
        // leader loops), so what is read below is still current when
        // proposed.
        let _w = self.m.write_lock().await;
        let r = req.into_inner();
        let node = resolve_node(&self.m, &r.node_id)?;
        let id = node.meta.as_ref().map(|m| m.id.clone()).unwrap_or_default();
        if node.role == pb::NodeRole::Manager as i32 || node.manager_status.is_some() {
            return Err(Status::failed_precondition(format!(
                "node {id} is a cluster manager and is a member of the raft cluster. It must be demoted to worker before removal"
            )));
        }
        let state = node.status.as_ref().map_or(0, |s| s.state);
        if !r.force && state != pb::NodeState::Down as i32 {
            return Err(Status::failed_precondition(format!(
                "node {id} is not down and can't be removed: stop it first, or use --force"
            )));
        }
        let mut cluster = (*cluster_of(&self.m)?).clone();
        if !cluster.removed_node_ids.contains(&id) {
            cluster.removed_node_ids.push(id.clone());
        }
        let tasks = self.m.store.view().tasks_by_node(&id);
        let actions = self
            .m
            .store
            .prepare(|tx: &mut WriteTx| {
                tx.remove::<pb::Node>(&id)?;
                tx.update(cluster)?;
                // Its tasks go with it; the orchestrators replace them.
                for t in tasks {
                    if let Some(m) = &t.meta {
                        tx.remove::<pb::Task>(&m.id)?;
                    }
                }
                Ok::<(), crate::store::StoreError>(())
            })
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        self.m
            .proposer
            .propose(actions)
            .await
            .map_err(propose_status)?;
        tracing::info!(node_id = %id, "node removed; its certificate is now refused");
        Ok(Response::new(pb::RemoveNodeResponse {}))
    }

    async fn create_service(
        &self,
        req: Request<pb::CreateServiceRequest>,
    ) -> Result<Response<pb::CreateServiceResponse>, Status> {
        if !self.m.is_leader() {
            return self.forwarded(self.leader()?.create_service(req.into_inner()).await);
        }
        // Serialized with the leader's other writers (status reports,
        // leader loops), so what is read below is still current when
        // proposed.
        let _w = self.m.write_lock().await;
        let spec = req
            .into_inner()
            .spec
            .ok_or_else(|| Status::invalid_argument("the request carries no service spec"))?;
        let spec = prepare_spec(&self.m, spec, "")?;
        let id = crate::store::new_id();
        let job_status = service::is_job(&spec).then(|| pb::JobStatus {
            job_iteration: 0,
            last_execution: Some(now()),
        });
        let svc = pb::Service {
            meta: Some(pb::Meta {
                id: id.clone(),
                ..Default::default()
            }),
            spec: Some(spec),
            job_status,
            ..Default::default()
        };
        let actions = self
            .m
            .store
            .prepare(|tx: &mut WriteTx| tx.create(svc))
            .map_err(store_status)?;
        self.m
            .proposer
            .propose(actions)
            .await
            .map_err(propose_status)?;
        let service = self
            .m
            .store
            .view()
            .get::<pb::Service>(&id)
            .map(|s| (*s).clone());
        tracing::info!(service_id = %id, "service created");
        Ok(Response::new(pb::CreateServiceResponse { service }))
    }

    async fn get_service(
        &self,
        req: Request<pb::GetServiceRequest>,
    ) -> Result<Response<pb::GetServiceResponse>, Status> {
        self.readable().await?;
        let s = resolve_service(&self.m, &req.get_ref().service_ref)?;
        Ok(Response::new(pb::GetServiceResponse {
            service: Some((*s).clone()),
        }))
    }

    async fn list_services(
        &self,
        req: Request<pb::ListServicesRequest>,
    ) -> Result<Response<pb::ListServicesResponse>, Status> {
        self.readable().await?;
        let f = req.into_inner();
        service::validate_filters(&f)?;
        let services = self
            .m
            .store
            .view()
            .list::<pb::Service>()
            .filter(|s| service::matches_filters(s, &f))
            .map(|s| (*s).clone())
            .collect();
        Ok(Response::new(pb::ListServicesResponse { services }))
    }

    async fn update_service(
        &self,
        req: Request<pb::UpdateServiceRequest>,
    ) -> Result<Response<pb::UpdateServiceResponse>, Status> {
        if !self.m.is_leader() {
            return self.forwarded(self.leader()?.update_service(req.into_inner()).await);
        }
        // Serialized with the leader's other writers (status reports,
        // leader loops), so what is read below is still current when
        // proposed.
        let _w = self.m.write_lock().await;
        let r = req.into_inner();
        let current = resolve_service(&self.m, &r.service_ref)?;
        let id = current
            .meta
            .as_ref()
            .map(|m| m.id.clone())
            .unwrap_or_default();
        let version = current.meta.as_ref().map_or(0, |m| m.version);
        if r.service_version != version {
            return Err(Status::aborted(format!(
                "service {} changed since it was read (version {} now, {} read); read it again and retry",
                r.service_ref, version, r.service_version
            )));
        }
        let mut svc = (*current).clone();
        let old_spec = svc.spec.clone().unwrap_or_default();
        if r.rollback {
            let previous = svc.previous_spec.take().ok_or_else(|| {
                Status::failed_precondition(format!(
                    "service {} has no previous spec to roll back to: it was never updated",
                    r.service_ref
                ))
            })?;
            // The previous spec was valid when stored, but another service
            // may have taken one of its ports since.
            let others: Vec<Arc<pb::Service>> = self.m.store.view().list::<pb::Service>().collect();
            service::check_port_conflicts(&previous, &id, others.iter().map(|s| &**s))?;
            svc.spec = Some(previous);
            svc.previous_spec = Some(old_spec);
            svc.update_status = Some(pb::UpdateStatus {
                state: pb::UpdateState::RollbackStarted as i32,
                started_at: Some(now()),
                completed_at: None,
                message: "manually requested rollback".into(),
            });
        } else {
            let spec = r
                .spec
                .ok_or_else(|| Status::invalid_argument("the update carries no service spec"))?;
            let spec = prepare_spec(&self.m, spec, &id)?;
            service::check_update(&old_spec, &spec)?;
            svc.previous_spec = Some(old_spec);
            svc.spec = Some(spec);
            svc.update_status = None;
        }
        if let Some(job) = svc.job_status.as_mut() {
            // Any change to a job runs it again.
            job.job_iteration += 1;
            job.last_execution = Some(now());
        }
        let actions = self
            .m
            .store
            .prepare(|tx: &mut WriteTx| tx.update(svc))
            .map_err(store_status)?;
        self.m
            .proposer
            .propose(actions)
            .await
            .map_err(propose_status)?;
        let service = self
            .m
            .store
            .view()
            .get::<pb::Service>(&id)
            .map(|s| (*s).clone());
        Ok(Response::new(pb::UpdateServiceResponse { service }))
    }

    async fn remove_service(
        &self,
        req: Request<pb::RemoveServiceRequest>,
    ) -> Result<Response<pb::RemoveServiceResponse>, Status> {
        if !self.m.is_leader() {
            return self.forwarded(self.leader()?.remove_service(req.into_inner()).await);
        }
        // Serialized with the leader's other writers (status reports,
        // leader loops), so what is read below is still current when
        // proposed.
        let _w = self.m.write_lock().await;
        let svc = resolve_service(&self.m, &req.get_ref().service_ref)?;
        let id = svc.meta.as_ref().map(|m| m.id.clone()).unwrap_or_default();
        let tasks = self.m.store.view().tasks_by_service(&id);
        // In bounded entries, the service's removal first: 100,000 tasks in
        // one entry (25 MB) were more than an AppendEntries can carry in
        // time. Should a later entry fail, the orchestrator tears down the
        // tasks of a service that is gone all the same.
        crate::manager::leader::propose_chunked(&self.m, |tx: &mut WriteTx| {
            tx.remove::<pb::Service>(&id)?;
            // Its tasks are to be torn down: agents stop them and the
            // task reaper deletes them once they have stopped.
            for t in tasks {
                if t.desired_state < pb::TaskState::Remove as i32 {
                    let mut t = (*t).clone();
                    t.desired_state = pb::TaskState::Remove as i32;
                    tx.update(t)?;
                }
            }
            Ok::<(), StoreError>(())
        })
        .await
        .map_err(|e| match e {
            crate::manager::UpdateError::Store(e) => store_status(e),
            crate::manager::UpdateError::Propose(e) => propose_status(e),
        })?;
        tracing::info!(service_id = %id, "service removed");
        Ok(Response::new(pb::RemoveServiceResponse {}))
    }

    async fn list_tasks(
        &self,
        req: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        self.readable().await?;
        let r = req.into_inner();
        let view = self.m.store.view();
        let candidates: Vec<Arc<pb::Task>> = if !r.node_ids.is_empty() {
            r.node_ids
                .iter()
                .flat_map(|n| view.tasks_by_node(n))
                .collect()
        } else if !r.service_ids.is_empty() {
            r.service_ids
                .iter()
                .flat_map(|s| view.tasks_by_service(s))
                .collect()
        } else {
            view.list::<pb::Task>().collect()
        };
        let tasks = candidates
            .into_iter()
            .filter(|t| r.service_ids.is_empty() || r.service_ids.contains(&t.service_id))
            .filter(|t| r.node_ids.is_empty() || r.node_ids.contains(&t.node_id))
            .filter(|t| r.desired_states.is_empty() || r.desired_states.contains(&t.desired_state))
            .map(|t| (*t).clone())
            .collect();
        Ok(Response::new(pb::ListTasksResponse { tasks }))
    }

    async fn create_network(
        &self,
        req: Request<pb::CreateNetworkRequest>,
    ) -> Result<Response<pb::CreateNetworkResponse>, Status> {
        if !self.m.is_leader() {
            return self.forwarded(self.leader()?.create_network(req.into_inner()).await);
        }
        let mut spec = req
            .into_inner()
            .spec
            .ok_or_else(|| Status::invalid_argument("the request carries no network spec"))?;
        // Serialized with the leader's other deciding writers (the
        // allocator among them), so no two pick the same free subnet.
        let _w = self.m.write_lock().await;
        let view = self.m.store.view();
        network::check_create(&view, &mut spec)?;
        let net = network::new_network(&view, spec)?;
        let id = net.meta.as_ref().map(|m| m.id.clone()).unwrap_or_default();
        let actions = self
            .m
            .store
            .prepare(|tx: &mut WriteTx| tx.create(net))
            .map_err(store_status)?;
        self.m
            .proposer
            .propose(actions)
            .await
            .map_err(propose_status)?;
        let network = self
            .m
            .store
            .view()
            .get::<pb::Network>(&id)
            .map(|n| (*n).clone());
        tracing::info!(network_id = %id, "network created");
        Ok(Response::new(pb::CreateNetworkResponse { network }))
    }

    async fn get_network(
        &self,
        req: Request<pb::GetNetworkRequest>,
    ) -> Result<Response<pb::GetNetworkResponse>, Status> {
        self.readable().await?;
        let n = network::resolve(&self.m.store.view(), &req.get_ref().network_ref)?;
        Ok(Response::new(pb::GetNetworkResponse {
            network: Some((*n).clone()),
        }))
    }

    async fn list_networks(
        &self,
        req: Request<pb::ListNetworksRequest>,
    ) -> Result<Response<pb::ListNetworksResponse>, Status> {
        self.readable().await?;
        let f = req.into_inner();
        let networks = self
            .m
            .store
            .view()
            .list::<pb::Network>()
            .filter(|n| network::matches_filters(n, &f))
            .map(|n| (*n).clone())
            .collect();
        Ok(Response::new(pb::ListNetworksResponse { networks }))
    }

    async fn remove_network(
        &self,
        req: Request<pb::RemoveNetworkRequest>,
    ) -> Result<Response<pb::RemoveNetworkResponse>, Status> {
        if !self.m.is_leader() {
            return self.forwarded(self.leader()?.remove_network(req.into_inner()).await);
        }
        // Serialized with the leader's other deciding writers (the
        // allocator among them), so no two pick the same free subnet.
        let _w = self.m.write_lock().await;
        let view = self.m.store.view();
        let net = network::resolve(&view, &req.get_ref().network_ref)?;
        network::check_remove(&view, &net)?;
        let id = net.meta.as_ref().map(|m| m.id.clone()).unwrap_or_default();
        let actions = self
            .m
            .store
            .prepare(|tx: &mut WriteTx| tx.remove::<pb::Network>(&id))
            .map_err(store_status)?;
        self.m
            .proposer
            .propose(actions)
            .await
            .map_err(propose_status)?;
        tracing::info!(network_id = %id, "network removed");
        Ok(Response::new(pb::RemoveNetworkResponse {}))
    }

    async fn get_cluster(
        &self,
        _req: Request<pb::GetClusterRequest>,
    ) -> Result<Response<pb::GetClusterResponse>, Status> {
        self.readable().await?;
        let c = cluster_of(&self.m)?;
        Ok(Response::new(pb::GetClusterResponse {
            cluster: Some(scrub(&c)),
            raft: Some(raft_status(&self.m)),
        }))
    }

    async fn rotate_join_token(
        &self,
        req: Request<pb::RotateJoinTokenRequest>,
    ) -> Result<Response<pb::RotateJoinTokenResponse>, Status> {
        if !self.m.is_leader() {
            return self.forwarded(self.leader()?.rotate_join_token(req.into_inner()).await);
        }
        let r = req.into_inner();
        let mut cluster = (*cluster_of(&self.m)?).clone();
        let root = self.m.root.clone();
        let rc = cluster
            .root_ca
            .as_mut()
            .ok_or_else(|| Status::internal("the cluster has no root CA"))?;
        let tokens = rc.join_tokens.get_or_insert_with(Default::default);
        if r.worker {
            tokens.worker = JoinToken::generate(&root).to_string();
        }
        if r.manager {
            tokens.manager = JoinToken::generate(&root).to_string();
        }
        let actions = self
            .m
            .store
            .prepare(|tx: &mut WriteTx| tx.update(cluster))
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        self.m
            .proposer
            .propose(actions)
            .await
            .map_err(propose_status)?;
        let c = cluster_of(&self.m)?;
        Ok(Response::new(pb::RotateJoinTokenResponse {
            cluster: Some(scrub(&c)),
        }))
    }
}
