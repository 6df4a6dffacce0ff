//! The swarm's public-key infrastructure and its mutual-TLS gRPC transport.
//!
//! Owns: the root CA and how node certificates are issued from CSRs
//! ([`cert`]), join tokens ([`token`]), a node's credentials on disk
//! ([`store`]), TLS configuration and certificate verification ([`tls`]),
//! accepting TLS connections for tonic ([`incoming`]) and per-method
//! authorization on the cluster port ([`authz`]).
//!
//! Must never: let a private key leave the node that generated it (the CA
//! signs CSRs), trust a CA a joining node has not checked against its join
//! token, or serve a cluster method to a peer whose certificate was not
//! verified against the root CA. It does not run the CA's gRPC service, and
//! it does not decide where the CA's signing key is kept: key material goes
//! in and out as PEM.
//!
//! A node certificate names the random node ID (CN), the role (OU
//! `swarm-manager` or `swarm-worker`) and the cluster ID (O), as Docker's do.

pub mod authz;
pub mod cert;
pub mod incoming;
pub mod store;
pub mod tls;
pub mod token;

#[cfg(test)]
mod transport_tests;

pub use authz::{Access, AuthzLayer, Policy, PolicyError, peer_identity};
pub use cert::{
    CertError, IssuedCert, MIN_NODE_CERT_VALIDITY, NODE_CERT_VALIDITY, NodeCert, NodeIdentity,
    NodeKey, ROOT_CA_VALIDITY, Role, RootCa, RootCert, renewal_deadline,
};
pub use incoming::{IncomingConfig, PeerInfo, TlsConnection, TlsIncoming};
pub use store::{NodeCredentials, StoreError};
pub use tls::{
    ClientTls, NoRevocations, RevocationList, RevokedNodes, ServerTls, TlsError, TlsIdentity,
    connect, connect_lazy, fetch_pinned_root_ca, fetch_pinned_root_ca_with_timeout,
};
pub use token::{Digest, JoinToken, JoinTokens, TokenError, new_id};
