//! The swarm orchestrator: daemon, local API and command-line client.
//!
//! Map (see ARCHITECTURE.md): `daemon` wires a node together and owns its
//! lifetime; `supervisor` runs the node's control loops; `api` is the
//! node-local gRPC API on a unix socket (server and client); `dataplane` is
//! the packet path behind the [`dataplane::Dataplane`] seam; `cli` is the
//! command line. `store` is the cluster store, the Raft state machine every
//! manager holds. Other manager parts (`raft`, `ca`, `controlapi`,
//! `orchestrator`, `scheduler`, `allocator`, `dispatcher`) and agent parts
//! (`worker`, `executor`, `runtime`) join as they land.

pub mod agent;
pub mod allocator;
pub mod api;
pub mod ca;
pub mod cli;
pub mod controlapi;
pub mod daemon;
pub mod dataplane;
pub mod dispatcher;
pub mod executor;
pub mod host;
pub mod image;
pub mod logbroker;
pub mod logging;
pub mod manager;
pub mod metrics;
pub mod network;
pub mod node;
pub mod orchestrator;
pub mod raft;
pub mod runtime;
pub mod scheduler;
pub mod simulation;
pub mod store;
pub mod supervisor;
pub mod version;
pub mod worker;
