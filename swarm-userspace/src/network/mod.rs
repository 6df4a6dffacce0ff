//! Node side of overlay networks.

pub mod dns;
