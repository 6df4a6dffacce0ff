//! The node-local faces of cluster membership and control, on the unix
//! socket: `Swarm` (init, join, leave, info) drives the node; `Control` is
//! answered by this node's manager, or refused on a worker with docker's
//! message.
use swarm_proto::v1::{self as pb, control_server, swarm_server};
use tonic::{Request, Response, Status};

use crate::{controlapi::ControlApi, node::NodeHandle};

#[derive(Clone, Debug)]
pub struct LocalSwarm(pub NodeHandle);

#[tonic::async_trait]
impl swarm_server::Swarm for LocalSwarm {
    async fn init(
        &self,
        r: Request<pb::InitRequest>,
    ) -> Result<Response<pb::InitResponse>, Status> {
        self.0.init(r.into_inner()).await.map(Response::new)
    }
    async fn join(
        &self,
        r: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::JoinResponse>, Status> {
        self.0.join(r.into_inner()).await.map(Response::new)
    }
    async fn leave(
        &self,
        r: Request<pb::LeaveRequest>,
    ) -> Result<Response<pb::LeaveResponse>, Status> {
        self.0
            .leave(r.into_inner())
            .await
            .map(|()| Response::new(pb::LeaveResponse {}))
    }
    async fn info(
        &self,
        _r: Request<pb::InfoRequest>,
    ) -> Result<Response<pb::InfoResponse>, Status> {
        Ok(Response::new(self.0.info()))
    }
}

#[derive(Clone, Debug)]
pub struct LocalControl(pub NodeHandle);

pub const NOT_A_MANAGER: &str = "This node is not a swarm manager. Worker nodes can't be used to view or modify cluster state. Please run this command on a manager node or promote the current node to a manager.";
pub const NOT_IN_SWARM: &str = "This node is not a swarm manager. Use \"swarm init\" or \"swarm join\" to connect this node to swarm and try again.";

impl LocalControl {
    fn api(&self) -> Result<ControlApi, Status> {
        if let Some(m) = self.0.manager() {
            return Ok(ControlApi::new(m));
        }
        if self.0.info().node_id.is_empty() {
            Err(Status::failed_precondition(NOT_IN_SWARM))
        } else {
            Err(Status::failed_precondition(NOT_A_MANAGER))
        }
    }
}

use control_server::Control;

#[tonic::async_trait]
impl Control for LocalControl {
    async fn get_node(
        &self,
        r: Request<pb::GetNodeRequest>,
    ) -> Result<Response<pb::GetNodeResponse>, Status> {
        self.api()?.get_node(r).await
    }
    async fn list_nodes(
        &self,
        r: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        self.api()?.list_nodes(r).await
    }
    async fn update_node(
        &self,
        r: Request<pb::UpdateNodeRequest>,
    ) -> Result<Response<pb::UpdateNodeResponse>, Status> {
        self.api()?.update_node(r).await
    }
    async fn remove_node(
        &self,
        r: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::RemoveNodeResponse>, Status> {
        self.api()?.remove_node(r).await
    }
    async fn create_service(
        &self,
        r: Request<pb::CreateServiceRequest>,
    ) -> Result<Response<pb::CreateServiceResponse>, Status> {
        self.api()?.create_service(r).await
    }
    async fn get_service(
        &self,
        r: Request<pb::GetServiceRequest>,
    ) -> Result<Response<pb::GetServiceResponse>, Status> {
        self.api()?.get_service(r).await
    }
    async fn list_services(
        &self,
        r: Request<pb::ListServicesRequest>,
    ) -> Result<Response<pb::ListServicesResponse>, Status> {
        self.api()?.list_services(r).await
    }
    async fn update_service(
        &self,
        r: Request<pb::UpdateServiceRequest>,
    ) -> Result<Response<pb::UpdateServiceResponse>, Status> {
        self.api()?.update_service(r).await
    }
    async fn remove_service(
        &self,
        r: Request<pb::RemoveServiceRequest>,
    ) -> Result<Response<pb::RemoveServiceResponse>, Status> {
        self.api()?.remove_service(r).await
    }
    async fn list_tasks(
        &self,
        r: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        self.api()?.list_tasks(r).await
    }
    async fn create_network(
        &self,
        r: Request<pb::CreateNetworkRequest>,
    ) -> Result<Response<pb::CreateNetworkResponse>, Status> {
        self.api()?.create_network(r).await
    }
    async fn get_network(
        &self,
        r: Request<pb::GetNetworkRequest>,
    ) -> Result<Response<pb::GetNetworkResponse>, Status> {
        self.api()?.get_network(r).await
    }
    async fn list_networks(
        &self,
        r: Request<pb::ListNetworksRequest>,
    ) -> Result<Response<pb::ListNetworksResponse>, Status> {
        self.api()?.list_networks(r).await
    }
    async fn remove_network(
        &self,
        r: Request<pb::RemoveNetworkRequest>,
    ) -> Result<Response<pb::RemoveNetworkResponse>, Status> {
        self.api()?.remove_network(r).await
    }
    async fn get_cluster(
        &self,
        r: Request<pb::GetClusterRequest>,
    ) -> Result<Response<pb::GetClusterResponse>, Status> {
        self.api()?.get_cluster(r).await
    }
    async fn rotate_join_token(
        &self,
        r: Request<pb::RotateJoinTokenRequest>,
    ) -> Result<Response<pb::RotateJoinTokenResponse>, Status> {
        self.api()?.rotate_join_token(r).await
    }
}
