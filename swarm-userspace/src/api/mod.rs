//! The node-local API: gRPC over the daemon's unix socket.
//!
//! `server` answers it inside the daemon; `client` is what every CLI command
//! uses to reach a daemon. Only node-local concerns are served here; this
//! module must never grow a network listener (cluster traffic is mTLS, in
//! its own modules).
pub mod client;
pub mod images;
pub mod local;
pub mod logs;
pub mod server;
