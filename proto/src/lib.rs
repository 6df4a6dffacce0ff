//! Generated protobuf types and gRPC stubs of every swarm API.
//!
//! Only generated code and the constants that version it live here; no
//! behaviour. The .proto files next to this crate are the source of truth.

/// Version of the API this build speaks; bumped on incompatible changes.
pub const API_VERSION: &str = "1.0";

pub mod v1 {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("swarm.v1");
}
