//! Who may call which gRPC method on the cluster port.
//!
//! Owns the decision, given as data: rules mapping a whole service
//! (`/swarm.v1.Raft/`) or one method (`/swarm.v1.CA/IssueNodeCertificate`)
//! to an [`Access`] level; the most specific rule wins and a method no rule
//! covers is refused. A caller without a certificate reaches only
//! [`Access::Anyone`] methods (the CA's bootstrap method, which checks the
//! join token itself); a removed node reaches nothing; a worker reaches no
//! [`Access::Manager`] method. On success the caller's [`NodeIdentity`] is
//! in the request's extensions (see [`peer_identity`]).
//!
//! Must never: allow by default, or trust anything about the caller that
//! did not come from the verified TLS handshake ([`PeerInfo`]).
use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use tonic::{
    Status,
    codegen::http::{Request, Response},
};
use tower::{Layer, Service};

use super::{
    cert::{MANAGER_OU, NodeIdentity, Role},
    incoming::PeerInfo,
    tls::RevocationList,
};

/// Who may call a method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Also callers without a certificate: the method checks its own
    /// credentials (a join token).
    Anyone,
    /// Any node of the swarm, worker or manager.
    AnyNode,
    /// Managers only.
    Manager,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error(
        "invalid access rule {0:?}: a rule names a service (\"/package.Service/\") or a method (\"/package.Service/Method\")"
    )]
    BadPattern(String),
    #[error("access rule {0:?} is given twice")]
    Duplicate(String),
}

#[derive(Clone, Debug)]
struct Rule {
    pattern: String,
    access: Access,
}

impl Rule {
    fn is_service(&self) -> bool {
        self.pattern.ends_with('/')
    }

    fn matches(&self, path: &str) -> bool {
        if self.is_service() {
            path.starts_with(&self.pattern)
        } else {
            path == self.pattern
        }
    }
}

/// Access rules for the cluster port; anything they do not cover is denied.
#[derive(Clone, Debug)]
pub struct Policy {
    rules: Vec<Rule>,
}

impl Policy {
    pub fn new<I, S>(rules: I) -> Result<Self, PolicyError>
    where
        I: IntoIterator<Item = (S, Access)>,
        S: Into<String>,
    {
        let mut out: Vec<Rule> = Vec::new();
        for (pattern, access) in rules {
            let pattern = pattern.into();
            if !valid_pattern(&pattern) {
                return Err(PolicyError::BadPattern(pattern));
            }
            if out.iter().any(|r| r.pattern == pattern) {
                return Err(PolicyError::Duplicate(pattern));
            }
            out.push(Rule { pattern, access });
        }
        Ok(Self { rules: out })
    }

    /// The access level for a gRPC path: a method rule over its service's
    /// rule; `None` when no rule covers it.
    pub fn access_for(&self, path: &str) -> Option<Access> {
        let method = self
            .rules
            .iter()
            .find(|r| !r.is_service() && r.matches(path));
        method
            .or_else(|| {
                self.rules
                    .iter()
                    .find(|r| r.is_service() && r.matches(path))
            })
            .map(|r| r.access)
    }

    /// Decides one call. `peer` is the verified certificate's identity.
    pub fn authorize(
        &self,
        path: &str,
        peer: Option<&NodeIdentity>,
        revocations: &dyn RevocationList,
    ) -> Result<(), Status> {
        if let Some(id) = peer
            && revocations.is_revoked(&id.node_id)
        {
            return Err(Status::unauthenticated(format!(
                "node {} has been removed from the swarm and its certificate is no longer accepted; \
                 leave the swarm on that node and join it again",
                id.node_id
            )));
        }
        let Some(access) = self.access_for(path) else {
            return Err(Status::permission_denied(format!(
                "{path} is not available on the cluster port"
            )));
        };
        match (access, peer) {
            (Access::Anyone, _) => Ok(()),
            (Access::AnyNode | Access::Manager, None) => Err(Status::unauthenticated(format!(
                "{path} requires a swarm node certificate; join the swarm first"
            ))),
            (Access::AnyNode, Some(_)) => Ok(()),
            (Access::Manager, Some(id)) if id.role == Role::Manager => Ok(()),
            (Access::Manager, Some(id)) => Err(Status::permission_denied(format!(
                "{path} is for managers only (role {MANAGER_OU}); node {} is a {}",
                id.node_id, id.role
            ))),
        }
    }
}

fn valid_pattern(p: &str) -> bool {
    let Some(rest) = p.strip_prefix('/') else {
        return false;
    };
    let Some((service, method)) = rest.split_once('/') else {
        return false;
    };
    !service.is_empty()
        && !method.contains('/')
        && service
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_'))
        && method
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The caller's verified identity, inside a handler behind [`AuthzLayer`].
/// `None` for callers without a certificate (only on [`Access::Anyone`]
/// methods).
pub fn peer_identity<T>(req: &tonic::Request<T>) -> Option<&NodeIdentity> {
    req.extensions().get::<NodeIdentity>()
}

/// A tower layer enforcing a [`Policy`] on every request. Use with
/// `Server::builder().layer(AuthzLayer::new(..))` and the TLS incoming
/// stream of [`super::incoming`], which supplies [`PeerInfo`].
#[derive(Clone)]
pub struct AuthzLayer {
    policy: Arc<Policy>,
    revocations: Arc<dyn RevocationList>,
}

impl fmt::Debug for AuthzLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthzLayer")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl AuthzLayer {
    pub fn new(policy: Policy, revocations: Arc<dyn RevocationList>) -> Self {
        Self {
            policy: Arc::new(policy),
            revocations,
        }
    }
}

impl<S> Layer<S> for AuthzLayer {
    type Service = Authz<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authz {
            inner,
            policy: self.policy.clone(),
            revocations: self.revocations.clone(),
        }
    }
}

/// The service [`AuthzLayer`] produces.
#[derive(Clone)]
pub struct Authz<S> {
    inner: S,
    policy: Arc<Policy>,
    revocations: Arc<dyn RevocationList>,
}

impl<S> fmt::Debug for Authz<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authz").finish_non_exhaustive()
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, RB> Service<Request<B>> for Authz<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // Only what the TLS handshake established counts; a request cannot
        // bring its own identity.
        req.extensions_mut().remove::<NodeIdentity>();
        let identity = req
            .extensions()
            .get::<PeerInfo>()
            .and_then(|p| p.identity.clone());
        match self
            .policy
            .authorize(req.uri().path(), identity.as_ref(), &*self.revocations)
        {
            Ok(()) => {
                if let Some(id) = identity {
                    req.extensions_mut().insert(id);
                }
                Box::pin(self.inner.call(req))
            }
            Err(status) => {
                tracing::debug!(
                    path = req.uri().path(),
                    node_id = identity.as_ref().map(|i| i.node_id.as_str()),
                    code = ?status.code(),
                    "refused a call on the cluster port"
                );
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::tls::{NoRevocations, RevokedNodes};
    use tonic::Code;

    fn id(node: &str, role: Role) -> NodeIdentity {
        NodeIdentity {
            node_id: node.into(),
            role,
            cluster_id: "c".into(),
        }
    }

    fn policy() -> Policy {
        Policy::new([
            ("/swarm.v1.Raft/", Access::Manager),
            ("/swarm.v1.Dispatcher/", Access::AnyNode),
            ("/swarm.v1.CA/", Access::AnyNode),
            ("/swarm.v1.CA/IssueNodeCertificate", Access::Anyone),
        ])
        .unwrap()
    }

    #[test]
    fn most_specific_rule_wins() {
        let p = policy();
        assert_eq!(
            p.access_for("/swarm.v1.CA/IssueNodeCertificate"),
            Some(Access::Anyone)
        );
        assert_eq!(
            p.access_for("/swarm.v1.CA/NodeCertificateStatus"),
            Some(Access::AnyNode)
        );
        assert_eq!(p.access_for("/swarm.v1.Raft/Append"), Some(Access::Manager));
        // A method rule is exact: no prefix tricks.
        assert_eq!(
            p.access_for("/swarm.v1.CA/IssueNodeCertificateX"),
            Some(Access::AnyNode)
        );
        assert_eq!(p.access_for("/swarm.v1.RaftX/Append"), None);
        assert_eq!(p.access_for("/other.Service/M"), None);
        assert_eq!(p.access_for(""), None);
    }

    #[test]
    fn decisions() {
        let p = policy();
        let none = NoRevocations;
        let m = id("m1", Role::Manager);
        let w = id("w1", Role::Worker);
        assert!(
            p.authorize("/swarm.v1.Raft/Append", Some(&m), &none)
                .is_ok()
        );
        let e = p
            .authorize("/swarm.v1.Raft/Append", Some(&w), &none)
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied);
        assert!(
            e.message().contains("/swarm.v1.Raft/Append"),
            "{}",
            e.message()
        );
        assert!(e.message().contains("managers only"), "{}", e.message());
        assert!(
            p.authorize("/swarm.v1.Dispatcher/Session", Some(&w), &none)
                .is_ok()
        );
        let e = p
            .authorize("/swarm.v1.Dispatcher/Session", None, &none)
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
        assert!(
            p.authorize("/swarm.v1.CA/IssueNodeCertificate", None, &none)
                .is_ok()
        );
        let e = p.authorize("/unknown.S/M", Some(&m), &none).unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied);

        let revoked = RevokedNodes::new();
        revoked.revoke("w1");
        let e = p
            .authorize("/swarm.v1.CA/IssueNodeCertificate", Some(&w), &revoked)
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
        assert!(
            p.authorize("/swarm.v1.Raft/Append", Some(&m), &revoked)
                .is_ok()
        );
    }

    #[test]
    fn bad_rules_are_refused() {
        for bad in [
            "",
            "/",
            "swarm.v1.Raft/",
            "/swarm.v1.Raft",
            "//M",
            "/a/b/c",
            "/a b/",
        ] {
            assert_eq!(
                Policy::new([(bad, Access::Anyone)]).unwrap_err(),
                PolicyError::BadPattern(bad.into()),
                "{bad:?}"
            );
        }
        assert_eq!(
            Policy::new([("/a.B/", Access::Anyone), ("/a.B/", Access::Manager)]).unwrap_err(),
            PolicyError::Duplicate("/a.B/".into())
        );
    }
}
