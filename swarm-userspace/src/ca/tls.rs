//! TLS configuration for the cluster port, certificate verification, and
//! the client side: mTLS channels to managers and the pinned bootstrap a
//! joining node uses to learn the root CA.
//!
//! Owns who is trusted: a server accepts clients with no certificate (a
//! joining node has none yet; the authorization layer limits what they can
//! call) or with a certificate that chains to the root CA and whose node is
//! not revoked; a client accepts only servers whose leaf chains to the root
//! CA and names the `swarm-manager` role. Names and IP addresses in
//! certificates are not checked: nodes are addressed by IP and identified by
//! their certificate's subject. TLS 1.3 only, ALPN `h2`, no session
//! resumption (a resumed session would skip the revocation check).
//!
//! Must never: trust a CA during bootstrap before its digest matched the
//! join token, or use a process-wide default crypto provider (ring is
//! always passed explicitly).
use std::{
    collections::HashSet,
    fmt, io,
    net::SocketAddr,
    sync::{Arc, LazyLock, Mutex, PoisonError, RwLock},
    time::{Duration, UNIX_EPOCH},
};

use hyper_util::rt::TokioIo;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore,
    ServerConfig, SignatureScheme,
    client::{
        ResolvesClientCert, Resumption,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        verify_server_cert_signed_by_trust_anchor,
    },
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime},
    server::{
        ClientHello, NoServerSessionStorage, ParsedCertificate, ResolvesServerCert,
        WebPkiClientVerifier,
        danger::{ClientCertVerified, ClientCertVerifier},
    },
    sign::CertifiedKey,
};
use tokio::{io::AsyncWriteExt, net::TcpStream};
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint, Uri};

use super::{
    cert::{MANAGER_OU, NodeCert, NodeIdentity, NodeKey, Role, RootCert},
    token::{Digest, JoinToken},
};

/// How long a client waits for TCP connect plus TLS handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

static PROVIDER: LazyLock<Arc<CryptoProvider>> =
    LazyLock::new(|| Arc::new(rustls::crypto::ring::default_provider()));

const ALPN_H2: &[u8] = b"h2";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("the node certificate and key cannot be used for TLS: {0}")]
    Identity(String),
    #[error("cannot build the TLS configuration: {0}")]
    Config(String),
    #[error("cannot connect to the manager at {addr}: {detail}")]
    Connect { addr: SocketAddr, detail: String },
    #[error(
        "timed out after {}s connecting to the manager at {addr}; check that it is running and that the port is reachable",
        after.as_secs()
    )]
    Timeout { addr: SocketAddr, after: Duration },
    #[error(
        "the manager at {addr} presented a CA that does not match the join token (a token for another swarm, or a man in the middle)"
    )]
    CaMismatch { addr: SocketAddr },
    #[error(
        "the manager at {addr} presented the swarm's CA, but its own certificate is not valid under it: {reason}"
    )]
    UntrustedManager { addr: SocketAddr, reason: String },
    #[error("TLS handshake with {addr} failed: {detail}")]
    Handshake { addr: SocketAddr, detail: String },
}

/// Which node IDs have been removed from the swarm. Consulted on every TLS
/// handshake and every request, so it must be cheap and must not block.
pub trait RevocationList: Send + Sync {
    fn is_revoked(&self, node_id: &str) -> bool;
}

/// No node is revoked.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoRevocations;

impl RevocationList for NoRevocations {
    fn is_revoked(&self, _node_id: &str) -> bool {
        false
    }
}

/// A revocation list kept in memory, e.g. filled from the store's removed
/// nodes.
#[derive(Debug, Default)]
pub struct RevokedNodes {
    ids: RwLock<HashSet<String>>,
}

impl RevokedNodes {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn revoke(&self, node_id: impl Into<String>) {
        self.ids
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(node_id.into());
    }

    /// Replaces the whole list.
    pub fn set(&self, ids: HashSet<String>) {
        *self.ids.write().unwrap_or_else(PoisonError::into_inner) = ids;
    }
}

impl RevocationList for RevokedNodes {
    fn is_revoked(&self, node_id: &str) -> bool {
        self.ids
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(node_id)
    }
}

/// The certificate and key a node presents, shared by its server and
/// client configurations and replaceable when the certificate is renewed:
/// new handshakes use the new one, established connections are untouched.
#[derive(Clone)]
pub struct TlsIdentity {
    current: Arc<RwLock<(Arc<CertifiedKey>, NodeIdentity)>>,
}

impl fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("identity", &self.identity())
            .finish()
    }
}

impl TlsIdentity {
    /// Checks that `key` belongs to `cert` and that `cert` was issued by
    /// `root`. The chain presented is [node certificate, root CA], so a
    /// joining node sees the CA it must check against its token.
    pub fn new(root: &RootCert, cert: &NodeCert, key: &NodeKey) -> Result<Self, TlsError> {
        Ok(Self {
            current: Arc::new(RwLock::new(certified_key(root, cert, key)?)),
        })
    }

    /// Switches to a renewed certificate (same checks as [`Self::new`]).
    pub fn replace(&self, root: &RootCert, cert: &NodeCert, key: &NodeKey) -> Result<(), TlsError> {
        let next = certified_key(root, cert, key)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = next;
        Ok(())
    }

    /// Who this node currently is.
    pub fn identity(&self) -> NodeIdentity {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .1
            .clone()
    }

    fn certified_key(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .0
            .clone()
    }
}

fn certified_key(
    root: &RootCert,
    cert: &NodeCert,
    key: &NodeKey,
) -> Result<(Arc<CertifiedKey>, NodeIdentity), TlsError> {
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.to_der()));
    let certified = CertifiedKey::from_der(
        vec![cert.der().clone(), root.der().clone()],
        key_der,
        &PROVIDER,
    )
    .map_err(|e| TlsError::Identity(e.to_string()))?;
    // Check the chain at a moment inside the certificate's life, so an
    // expired certificate still loads (it fails at the peer, with a clear
    // error) but a certificate from another CA does not.
    let half_life = cert
        .not_after()
        .duration_since(cert.not_before())
        .unwrap_or_default()
        / 2;
    let mid = cert
        .not_before()
        .checked_add(half_life)
        .unwrap_or(cert.not_before());
    let at = UnixTime::since_unix_epoch(mid.duration_since(UNIX_EPOCH).unwrap_or_default());
    let roots = root_store(root)?;
    let parsed =
        ParsedCertificate::try_from(cert.der()).map_err(|e| TlsError::Identity(e.to_string()))?;
    verify_server_cert_signed_by_trust_anchor(
        &parsed,
        &roots,
        &[],
        at,
        PROVIDER.signature_verification_algorithms.all,
    )
    .map_err(|e| {
        TlsError::Identity(format!(
            "the node certificate was not issued by this swarm's root CA ({e})"
        ))
    })?;
    Ok((Arc::new(certified), cert.identity().clone()))
}

#[derive(Debug)]
struct IdentityResolver(TlsIdentity);

impl ResolvesServerCert for IdentityResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.certified_key())
    }
}

impl ResolvesClientCert for IdentityResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.certified_key())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn root_store(root: &RootCert) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    roots
        .add(root.der().clone())
        .map_err(|e| TlsError::Config(format!("the root CA is not a usable trust anchor: {e}")))?;
    Ok(roots)
}

fn cert_error(message: String) -> rustls::Error {
    #[derive(Debug)]
    struct Msg(String);
    impl fmt::Display for Msg {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(&self.0)
        }
    }
    impl std::error::Error for Msg {}
    rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(Msg(
        message,
    )))))
}

/// Server-side TLS for the cluster port.
#[derive(Clone)]
pub struct ServerTls {
    config: Arc<ServerConfig>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls").finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Presents `identity`; verifies client certificates against `root`
    /// when a client sends one, refusing revoked nodes.
    pub fn new(
        root: &RootCert,
        identity: &TlsIdentity,
        revocations: Arc<dyn RevocationList>,
    ) -> Result<Self, TlsError> {
        let inner = WebPkiClientVerifier::builder_with_provider(
            Arc::new(root_store(root)?),
            PROVIDER.clone(),
        )
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
        let verifier = Arc::new(NodeClientVerifier { inner, revocations });
        let mut config = ServerConfig::builder_with_provider(PROVIDER.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(IdentityResolver(identity.clone())));
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Ok(Self {
            config: Arc::new(config),
        })
    }

    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.clone()
    }
}

/// WebPKI chain verification plus the swarm's own rules: the leaf must be
/// a node certificate, of a node that was not removed.
struct NodeClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    revocations: Arc<dyn RevocationList>,
}

impl fmt::Debug for NodeClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeClientVerifier").finish_non_exhaustive()
    }
}

impl ClientCertVerifier for NodeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let id = NodeIdentity::from_der(end_entity).map_err(|e| cert_error(e.to_string()))?;
        if self.revocations.is_revoked(&id.node_id) {
            tracing::debug!(node_id = %id.node_id, "refused a removed node's certificate");
            return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The leaf chains to `roots` (for server authentication) and is a
/// manager's certificate.
fn verify_manager(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    roots: &RootCertStore,
    now: UnixTime,
) -> Result<NodeIdentity, rustls::Error> {
    let parsed = ParsedCertificate::try_from(end_entity)?;
    verify_server_cert_signed_by_trust_anchor(
        &parsed,
        roots,
        intermediates,
        now,
        PROVIDER.signature_verification_algorithms.all,
    )?;
    let id = NodeIdentity::from_der(end_entity).map_err(|e| cert_error(e.to_string()))?;
    if id.role != Role::Manager {
        return Err(cert_error(format!(
            "the peer {} is a {}, not a manager ({MANAGER_OU})",
            id.node_id, id.role
        )));
    }
    Ok(id)
}

fn verify_tls12(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls12_signature(
        message,
        cert,
        dss,
        &PROVIDER.signature_verification_algorithms,
    )
}

fn verify_tls13(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls13_signature(
        message,
        cert,
        dss,
        &PROVIDER.signature_verification_algorithms,
    )
}

/// Accepts managers of this swarm only.
struct ManagerVerifier {
    roots: RootCertStore,
}

impl fmt::Debug for ManagerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManagerVerifier").finish_non_exhaustive()
    }
}

impl ServerCertVerifier for ManagerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        verify_manager(end_entity, intermediates, &self.roots, now)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        PROVIDER
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Client-side TLS: which root to trust and which certificate (if any) to
/// present. Cheap to clone.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
    connect_timeout: Duration,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field(
                "client_cert",
                &self.config.client_auth_cert_resolver.has_certs(),
            )
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl ClientTls {
    /// Trusts managers whose certificates chain to `root`, presenting
    /// `identity` when given.
    pub fn new(root: &RootCert, identity: Option<&TlsIdentity>) -> Result<Self, TlsError> {
        let verifier = Arc::new(ManagerVerifier {
            roots: root_store(root)?,
        });
        let config = client_config(verifier, identity)?;
        Ok(Self {
            config: Arc::new(config),
            connect_timeout: CONNECT_TIMEOUT,
        })
    }

    /// Root-only trust and no client certificate: for a joining node's
    /// calls, after [`fetch_pinned_root_ca`] gave it the root.
    pub fn pinned(root: &RootCert) -> Result<Self, TlsError> {
        Self::new(root, None)
    }

    /// Limit on TCP connect plus TLS handshake (default [`CONNECT_TIMEOUT`]).
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }
}

fn client_config(
    verifier: Arc<dyn ServerCertVerifier>,
    identity: Option<&TlsIdentity>,
) -> Result<ClientConfig, TlsError> {
    let builder = ClientConfig::builder_with_provider(PROVIDER.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match identity {
        Some(id) => builder.with_client_cert_resolver(Arc::new(IdentityResolver(id.clone()))),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.resumption = Resumption::disabled();
    Ok(config)
}

/// Managers are not addressed by name; SNI carries the role, like Docker's.
fn server_name() -> io::Result<ServerName<'static>> {
    ServerName::try_from(MANAGER_OU).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

fn endpoint(addr: SocketAddr, tls: &ClientTls) -> Result<Endpoint, TlsError> {
    // The scheme only fills the :scheme pseudo-header; TLS comes from the
    // connector below.
    let uri = Uri::try_from(format!("http://{addr}")).map_err(|e| TlsError::Connect {
        addr,
        detail: e.to_string(),
    })?;
    Ok(Endpoint::from(uri)
        .connect_timeout(tls.connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true))
}

fn connector(
    addr: SocketAddr,
    tls: ClientTls,
) -> impl tower::Service<
    Uri,
    Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>,
    Error = io::Error,
    Future = impl Future<Output = io::Result<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>>>
             + Send,
> + Send
+ 'static {
    tower::service_fn(move |_: Uri| {
        let config = tls.config.clone();
        async move {
            let tcp = TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            let stream = TlsConnector::from(config)
                .connect(server_name()?, tcp)
                .await?;
            Ok(TokioIo::new(stream))
        }
    })
}

/// An mTLS channel to the manager at `addr`, connected now.
pub async fn connect(addr: SocketAddr, tls: ClientTls) -> Result<Channel, TlsError> {
    let endpoint = endpoint(addr, &tls)?;
    endpoint
        .connect_with_connector(connector(addr, tls))
        .await
        .map_err(|e| TlsError::Connect {
            addr,
            detail: error_chain(&e),
        })
}

/// An mTLS channel to the manager at `addr` that connects on first use and
/// reconnects after failures, for managers that come and go.
pub fn connect_lazy(addr: SocketAddr, tls: ClientTls) -> Result<Channel, TlsError> {
    let endpoint = endpoint(addr, &tls)?;
    Ok(endpoint.connect_with_connector_lazy(connector(addr, tls)))
}

/// What the bootstrap verifier saw.
enum PinOutcome {
    Trusted(RootCert),
    NoMatchingCa,
    Untrusted(String),
}

/// Trusts nothing until the server's chain contains the CA the join token
/// names; then requires the leaf to be a manager certificate under it.
struct PinVerifier {
    expected: Digest,
    outcome: Mutex<Option<PinOutcome>>,
}

impl fmt::Debug for PinVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinVerifier")
            .field("expected", &self.expected)
            .finish_non_exhaustive()
    }
}

impl PinVerifier {
    fn record(&self, outcome: PinOutcome) {
        *self.outcome.lock().unwrap_or_else(PoisonError::into_inner) = Some(outcome);
    }

    fn take(&self) -> Option<PinOutcome> {
        self.outcome
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(ca) = intermediates
            .iter()
            .find(|c| Digest::of(c).ct_eq(&self.expected))
        else {
            self.record(PinOutcome::NoMatchingCa);
            return Err(cert_error(
                "no certificate in the chain matches the join token".into(),
            ));
        };
        let root = match RootCert::from_der(ca.to_vec()) {
            Ok(root) => root,
            Err(e) => {
                self.record(PinOutcome::Untrusted(e.to_string()));
                return Err(cert_error(e.to_string()));
            }
        };
        let roots = match root_store(&root) {
            Ok(r) => r,
            Err(e) => {
                self.record(PinOutcome::Untrusted(e.to_string()));
                return Err(cert_error(e.to_string()));
            }
        };
        match verify_manager(end_entity, intermediates, &roots, now) {
            Ok(_) => {
                self.record(PinOutcome::Trusted(root));
                Ok(ServerCertVerified::assertion())
            }
            Err(e) => {
                self.record(PinOutcome::Untrusted(e.to_string()));
                Err(e)
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        PROVIDER
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Learns the swarm's root CA from the manager at `addr`, trusting it only
/// if its digest matches `token`. Connects without a client certificate,
/// checks the CA the manager presents in its chain, and requires the
/// manager's own certificate to be valid under that CA (which also proves,
/// through the handshake signature, that the manager holds its key). The
/// returned CA is then used with [`ClientTls::pinned`] for the join call.
pub async fn fetch_pinned_root_ca(
    addr: SocketAddr,
    token: &JoinToken,
) -> Result<RootCert, TlsError> {
    fetch_pinned_root_ca_with_timeout(addr, token, CONNECT_TIMEOUT).await
}

pub async fn fetch_pinned_root_ca_with_timeout(
    addr: SocketAddr,
    token: &JoinToken,
    timeout: Duration,
) -> Result<RootCert, TlsError> {
    let verifier = Arc::new(PinVerifier {
        expected: *token.ca_digest(),
        outcome: Mutex::new(None),
    });
    let config = Arc::new(client_config(verifier.clone(), None)?);
    let handshake = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| TlsError::Connect {
                addr,
                detail: e.to_string(),
            })?;
        let _ = tcp.set_nodelay(true);
        let name = server_name().map_err(|e| TlsError::Config(e.to_string()))?;
        TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| TlsError::Handshake {
                addr,
                detail: error_chain(&e),
            })
    };
    let result = tokio::time::timeout(timeout, handshake)
        .await
        .map_err(|_| TlsError::Timeout {
            addr,
            after: timeout,
        })?;
    match (result, verifier.take()) {
        (Ok(mut stream), Some(PinOutcome::Trusted(root))) => {
            // Nothing more to say on this connection; a failed close does
            // not make the CA any less verified.
            let _ = tokio::time::timeout(Duration::from_secs(1), stream.shutdown()).await;
            Ok(root)
        }
        (_, Some(PinOutcome::NoMatchingCa)) => Err(TlsError::CaMismatch { addr }),
        (_, Some(PinOutcome::Untrusted(reason))) => {
            Err(TlsError::UntrustedManager { addr, reason })
        }
        (Err(e), _) => Err(e),
        (Ok(_), _) => Err(TlsError::Handshake {
            addr,
            detail: "the server's certificate was never checked".into(),
        }),
    }
}

/// An error and its sources, "a: b: c", without repeats (tonic's and
/// hyper's errors nest the same message).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&dyn std::error::Error> = Some(e);
    while let Some(err) = cur {
        let s = err.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = err.source();
    }
    parts.join(": ")
}
