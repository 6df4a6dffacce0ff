//! Root CA, node keys, CSRs and node certificates.
//!
//! Owns what a node certificate says and how long it lives: CN = node ID,
//! OU = `swarm-manager` or `swarm-worker`, O = cluster ID, SANs naming the
//! node ID and the role, server and client authentication, backdated one
//! hour for clock skew, at least 30 minutes long, never outliving the root.
//!
//! Must never: copy a requested subject, SAN or extension from a CSR (only
//! its public key is used; the CA decides the rest), or write key material
//! anywhere itself — keys go in and out as PEM/DER, and the caller decides
//! where they are kept.
use std::{
    fmt,
    str::FromStr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use rand::{Rng, RngCore};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
    SanType, SerialNumber,
};
use rustls::pki_types::CertificateDer;
use time::OffsetDateTime;
use x509_parser::{certificate::X509Certificate, x509::AttributeTypeAndValue};

use super::token::Digest;

/// How long a new root CA is valid (Docker: 20 years).
pub const ROOT_CA_VALIDITY: Duration = Duration::from_secs(20 * 365 * 24 * 3600);
/// Default node certificate validity (Docker's `--cert-expiry 2160h`).
pub const NODE_CERT_VALIDITY: Duration = Duration::from_secs(2160 * 3600);
/// Shortest node certificate validity the CA signs.
pub const MIN_NODE_CERT_VALIDITY: Duration = Duration::from_secs(30 * 60);
/// Certificates start this long before they are signed, for clock skew.
pub const BACKDATE: Duration = Duration::from_secs(3600);
/// Longest validity accepted anywhere: beyond this, times stop being
/// representable in some peers' certificate parsers.
const MAX_VALIDITY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
const ROOT_CA_CN: &str = "swarm-ca";

pub const MANAGER_OU: &str = "swarm-manager";
pub const WORKER_OU: &str = "swarm-worker";

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot generate a key pair: {0}")]
    KeyGeneration(#[source] rcgen::Error),
    #[error("cannot sign the certificate: {0}")]
    Signing(#[source] rcgen::Error),
    #[error(
        "the certificate signing request is invalid ({0}); the node must send a PEM CERTIFICATE REQUEST signed with its own key"
    )]
    InvalidCsr(#[source] rcgen::Error),
    #[error("the {what} is not valid PEM: {reason}")]
    Pem { what: &'static str, reason: String },
    #[error("cannot parse the {what}: {reason}")]
    Parse { what: &'static str, reason: String },
    #[error("the {what} is unusable: {source}")]
    InvalidKey {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
    #[error("the root CA certificate is not a CA certificate (it lacks basic constraints CA:TRUE)")]
    NotACa,
    #[error("the {what} does not match its certificate")]
    KeyMismatch { what: &'static str },
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidId {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error(
        "certificate validity of {}s is too short: the minimum is {}s (30 minutes); raise --cert-expiry",
        requested.as_secs(),
        MIN_NODE_CERT_VALIDITY.as_secs()
    )]
    ValidityTooShort { requested: Duration },
    #[error(
        "certificate validity of {}s is too long: the maximum is 100 years",
        requested.as_secs()
    )]
    ValidityTooLong { requested: Duration },
    #[error(
        "the root CA expires at {expires}, too soon to sign a certificate valid for 30 minutes; rotate the CA (`swarm ca --rotate`)"
    )]
    CaExpiresTooSoon { expires: String },
    #[error("not a swarm node certificate: {0}")]
    NotANodeCert(String),
}

/// A node's role, as its certificate's OU names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Manager,
    Worker,
}

impl Role {
    /// The certificate OU (and SAN) naming this role.
    pub fn ou(self) -> &'static str {
        match self {
            Role::Manager => MANAGER_OU,
            Role::Worker => WORKER_OU,
        }
    }

    pub fn from_ou(ou: &str) -> Option<Self> {
        match ou {
            MANAGER_OU => Some(Role::Manager),
            WORKER_OU => Some(Role::Worker),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Manager => "manager",
            Role::Worker => "worker",
        })
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "manager" | MANAGER_OU => Ok(Role::Manager),
            "worker" | WORKER_OU => Ok(Role::Worker),
            _ => Err(format!("unknown role {s:?}: expected manager or worker")),
        }
    }
}

/// Who a node certificate names.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NodeIdentity {
    pub node_id: String,
    pub role: Role,
    pub cluster_id: String,
}

impl NodeIdentity {
    /// Reads the identity from a DER certificate. It does not verify the
    /// certificate: do that first (the TLS verifiers in `ca::tls` do).
    pub fn from_der(der: &[u8]) -> Result<Self, CertError> {
        let (_, x509) = x509_parser::parse_x509_certificate(der).map_err(|e| CertError::Parse {
            what: "node certificate",
            reason: e.to_string(),
        })?;
        identity_of(&x509)
    }
}

fn identity_of(x509: &X509Certificate<'_>) -> Result<NodeIdentity, CertError> {
    let subject = x509.subject();
    let node_id = single("common name (node ID)", subject.iter_common_name())?;
    let ou = single(
        "organizational unit (role)",
        subject.iter_organizational_unit(),
    )?;
    let cluster_id = single("organization (cluster ID)", subject.iter_organization())?;
    let role = Role::from_ou(&ou).ok_or_else(|| {
        CertError::NotANodeCert(format!(
            "unknown role {ou:?} in the organizational unit (expected {MANAGER_OU} or {WORKER_OU})"
        ))
    })?;
    Ok(NodeIdentity {
        node_id,
        role,
        cluster_id,
    })
}

/// The one text value of a subject attribute; a node certificate has
/// exactly one CN, one OU and one O.
fn single<'a, 'b: 'a>(
    what: &str,
    mut values: impl Iterator<Item = &'a AttributeTypeAndValue<'b>>,
) -> Result<String, CertError> {
    let first = values
        .next()
        .ok_or_else(|| CertError::NotANodeCert(format!("the subject has no {what}")))?;
    if values.next().is_some() {
        return Err(CertError::NotANodeCert(format!(
            "the subject has more than one {what}"
        )));
    }
    let value = first
        .as_str()
        .map_err(|_| CertError::NotANodeCert(format!("the subject's {what} is not text")))?;
    if value.is_empty() {
        return Err(CertError::NotANodeCert(format!(
            "the subject's {what} is empty"
        )));
    }
    Ok(value.to_owned())
}

/// The root CA certificate (no key): what every node trusts.
#[derive(Clone, PartialEq, Eq)]
pub struct RootCert {
    der: CertificateDer<'static>,
    not_after: SystemTime,
}

impl RootCert {
    /// Parses and checks a DER certificate: it must be a CA certificate.
    pub fn from_der(der: impl Into<Vec<u8>>) -> Result<Self, CertError> {
        let der: Vec<u8> = der.into();
        let not_after = {
            let (_, x509) =
                x509_parser::parse_x509_certificate(&der).map_err(|e| CertError::Parse {
                    what: "root CA certificate",
                    reason: e.to_string(),
                })?;
            if !x509.is_ca() {
                return Err(CertError::NotACa);
            }
            asn1_to_system(x509.validity().not_after.timestamp())
        };
        Ok(Self {
            der: CertificateDer::from(der),
            not_after,
        })
    }

    /// Parses the first certificate of a PEM file.
    pub fn from_pem(pem: &str) -> Result<Self, CertError> {
        Self::from_der(pem_block(pem, "CERTIFICATE", "root CA certificate")?)
    }

    pub fn der(&self) -> &CertificateDer<'static> {
        &self.der
    }

    pub fn to_pem(&self) -> String {
        to_pem("CERTIFICATE", &self.der)
    }

    /// SHA-256 of the DER certificate: what join tokens name.
    pub fn digest(&self) -> Digest {
        Digest::of(&self.der)
    }

    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }
}

impl fmt::Debug for RootCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RootCert")
            .field("digest", &self.digest())
            .field("not_after", &fmt_time(self.not_after))
            .finish()
    }
}

/// The root CA: its certificate and signing key.
pub struct RootCa {
    cert: RootCert,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for RootCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RootCa")
            .field("cert", &self.cert)
            .finish_non_exhaustive()
    }
}

impl RootCa {
    /// A new root CA (ECDSA P-256) valid for [`ROOT_CA_VALIDITY`].
    pub fn generate() -> Result<Self, CertError> {
        Self::generate_with_validity(ROOT_CA_VALIDITY)
    }

    pub fn generate_with_validity(validity: Duration) -> Result<Self, CertError> {
        if validity > MAX_VALIDITY {
            return Err(CertError::ValidityTooLong {
                requested: validity,
            });
        }
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(CertError::KeyGeneration)?;
        let now = SystemTime::now();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, ROOT_CA_CN);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = to_offset(backdated(now))?;
        params.not_after = to_offset(add(now, validity)?)?;
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key).map_err(CertError::Signing)?;
        Self::from_parts(RootCert::from_der(cert.der().to_vec())?, key)
    }

    /// Loads a CA from its PEM certificate and PEM (PKCS#8) private key,
    /// checking that the two belong together.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CertError> {
        let cert = RootCert::from_pem(cert_pem)?;
        let key = KeyPair::from_pem(key_pem).map_err(|source| CertError::InvalidKey {
            what: "root CA private key",
            source,
        })?;
        Self::from_parts(cert, key)
    }

    fn from_parts(cert: RootCert, key: KeyPair) -> Result<Self, CertError> {
        let (_, x509) =
            x509_parser::parse_x509_certificate(&cert.der).map_err(|e| CertError::Parse {
                what: "root CA certificate",
                reason: e.to_string(),
            })?;
        if x509.public_key().subject_public_key.data.as_ref() != key.der_bytes() {
            return Err(CertError::KeyMismatch {
                what: "root CA private key",
            });
        }
        let issuer = Issuer::from_ca_cert_der(&cert.der, key).map_err(|e| CertError::Parse {
            what: "root CA certificate",
            reason: e.to_string(),
        })?;
        Ok(Self { cert, issuer })
    }

    pub fn cert(&self) -> &RootCert {
        &self.cert
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert.der
    }

    pub fn cert_pem(&self) -> String {
        self.cert.to_pem()
    }

    /// The signing key as PKCS#8 PEM, to keep in the replicated store.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    pub fn digest(&self) -> Digest {
        self.cert.digest()
    }

    /// Signs a node certificate for the public key in `csr_pem`. Only the
    /// CSR's key is used (its signature proves the node holds the private
    /// key); everything the certificate says comes from the arguments.
    /// `validity` counts from now; the certificate also starts
    /// [`BACKDATE`] early and never outlives the root CA.
    pub fn issue(
        &self,
        csr_pem: &str,
        node_id: &str,
        role: Role,
        cluster_id: &str,
        validity: Duration,
    ) -> Result<NodeCert, CertError> {
        check_node_id(node_id)?;
        check_cluster_id(cluster_id)?;
        if validity < MIN_NODE_CERT_VALIDITY {
            return Err(CertError::ValidityTooShort {
                requested: validity,
            });
        }
        if validity > MAX_VALIDITY {
            return Err(CertError::ValidityTooLong {
                requested: validity,
            });
        }
        let csr =
            CertificateSigningRequestParams::from_pem(csr_pem).map_err(CertError::InvalidCsr)?;

        let now = SystemTime::now();
        let not_after = add(now, validity)?.min(self.cert.not_after);
        if not_after < add(now, MIN_NODE_CERT_VALIDITY)? {
            return Err(CertError::CaExpiresTooSoon {
                expires: fmt_time(self.cert.not_after),
            });
        }

        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, cluster_id);
        dn.push(DnType::OrganizationalUnitName, role.ou());
        dn.push(DnType::CommonName, node_id);
        params.distinguished_name = dn;
        params.subject_alt_names = vec![
            SanType::DnsName(ia5(node_id)?),
            SanType::DnsName(ia5(role.ou())?),
        ];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = to_offset(backdated(now))?;
        params.not_after = to_offset(not_after)?;
        params.serial_number = Some(random_serial());
        let cert = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(CertError::Signing)?;
        NodeCert::from_der(cert.der().to_vec())
    }
}

/// What [`RootCa::issue`] returns.
pub type IssuedCert = NodeCert;

/// A node certificate with what it says already parsed.
#[derive(Clone, PartialEq, Eq)]
pub struct NodeCert {
    der: CertificateDer<'static>,
    identity: NodeIdentity,
    not_before: SystemTime,
    not_after: SystemTime,
}

impl NodeCert {
    pub fn from_der(der: impl Into<Vec<u8>>) -> Result<Self, CertError> {
        let der: Vec<u8> = der.into();
        let (identity, not_before, not_after) = {
            let (_, x509) =
                x509_parser::parse_x509_certificate(&der).map_err(|e| CertError::Parse {
                    what: "node certificate",
                    reason: e.to_string(),
                })?;
            if x509.is_ca() {
                return Err(CertError::NotANodeCert("it is a CA certificate".into()));
            }
            let v = x509.validity();
            (
                identity_of(&x509)?,
                asn1_to_system(v.not_before.timestamp()),
                asn1_to_system(v.not_after.timestamp()),
            )
        };
        Ok(Self {
            der: CertificateDer::from(der),
            identity,
            not_before,
            not_after,
        })
    }

    pub fn from_pem(pem: &str) -> Result<Self, CertError> {
        Self::from_der(pem_block(pem, "CERTIFICATE", "node certificate")?)
    }

    pub fn der(&self) -> &CertificateDer<'static> {
        &self.der
    }

    pub fn to_pem(&self) -> String {
        to_pem("CERTIFICATE", &self.der)
    }

    pub fn identity(&self) -> &NodeIdentity {
        &self.identity
    }

    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Whether `key` is this certificate's private key.
    pub fn matches_key(&self, key: &NodeKey) -> bool {
        match x509_parser::parse_x509_certificate(&self.der) {
            Ok((_, x509)) => {
                x509.public_key().subject_public_key.data.as_ref() == key.key.der_bytes()
            }
            Err(_) => false,
        }
    }

    /// When to renew: see [`renewal_deadline`].
    pub fn renewal_deadline<R: Rng + ?Sized>(&self, rng: &mut R) -> SystemTime {
        renewal_deadline(self.not_before, self.not_after, rng)
    }
}

impl fmt::Debug for NodeCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeCert")
            .field("identity", &self.identity)
            .field("not_before", &fmt_time(self.not_before))
            .field("not_after", &fmt_time(self.not_after))
            .finish()
    }
}

/// A node's private key. It is generated on the node and never sent
/// anywhere: the CA gets a CSR.
pub struct NodeKey {
    key: KeyPair,
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NodeKey(<redacted>)")
    }
}

impl NodeKey {
    /// A new ECDSA P-256 key.
    pub fn generate() -> Result<Self, CertError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(CertError::KeyGeneration)?;
        Ok(Self { key })
    }

    pub fn from_pem(pem: &str) -> Result<Self, CertError> {
        let key = KeyPair::from_pem(pem).map_err(|source| CertError::InvalidKey {
            what: "node private key",
            source,
        })?;
        Ok(Self { key })
    }

    /// PKCS#8 PEM.
    pub fn to_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// PKCS#8 DER.
    pub fn to_der(&self) -> Vec<u8> {
        self.key.serialize_der()
    }

    /// A PEM certificate signing request for this key. The CA ignores its
    /// subject; the node ID only helps someone reading the CSR.
    pub fn generate_csr(&self, node_id: Option<&str>) -> Result<String, CertError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        if let Some(id) = node_id {
            check_node_id(id)?;
            dn.push(DnType::CommonName, id);
        }
        params.distinguished_name = dn;
        params
            .serialize_request(&self.key)
            .and_then(|csr| csr.pem())
            .map_err(CertError::Signing)
    }
}

/// When to renew a certificate valid from `not_before` to `not_after`: a
/// uniformly random point between 50% and 80% of its life, so that nodes
/// given certificates together do not all renew together. A certificate
/// whose life is empty or negative is due at `not_before`.
pub fn renewal_deadline<R: Rng + ?Sized>(
    not_before: SystemTime,
    not_after: SystemTime,
    rng: &mut R,
) -> SystemTime {
    let Ok(life) = not_after.duration_since(not_before) else {
        return not_before;
    };
    let nanos = life.as_nanos();
    // Rounded inwards so the draw never leaves [50%, 80%].
    let lo = nanos.div_ceil(2);
    let hi = (nanos * 4 / 5).max(lo);
    let pick = rng.random_range(lo..=hi);
    let offset = Duration::from_nanos(u64::try_from(pick).unwrap_or(u64::MAX));
    not_before.checked_add(offset).unwrap_or(not_after)
}

fn check_node_id(id: &str) -> Result<(), CertError> {
    let err = |reason| CertError::InvalidId {
        what: "node ID",
        value: id.chars().take(80).collect(),
        reason,
    };
    if id.is_empty() || id.len() > 63 {
        return Err(err("it must be 1 to 63 characters long"));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(err("it may contain only a-z, 0-9 and '-'"));
    }
    if id.starts_with('-') || id.ends_with('-') {
        return Err(err("it must not start or end with '-'"));
    }
    if Role::from_ou(id).is_some() {
        return Err(err("it must not be a role name"));
    }
    Ok(())
}

fn check_cluster_id(id: &str) -> Result<(), CertError> {
    let err = |reason| CertError::InvalidId {
        what: "cluster ID",
        value: id.chars().take(80).collect(),
        reason,
    };
    if id.is_empty() || id.len() > 64 {
        return Err(err("it must be 1 to 64 characters long"));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(err("it may contain only letters, digits, '-', '_' and '.'"));
    }
    Ok(())
}

fn ia5(s: &str) -> Result<rcgen::string::Ia5String, CertError> {
    rcgen::string::Ia5String::try_from(s).map_err(CertError::Signing)
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 20];
    rand::rng().fill_bytes(&mut bytes);
    // Positive, and still at most 20 bytes once DER-encoded (RFC 5280).
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

fn backdated(now: SystemTime) -> SystemTime {
    now.checked_sub(BACKDATE).unwrap_or(now)
}

fn add(t: SystemTime, d: Duration) -> Result<SystemTime, CertError> {
    t.checked_add(d)
        .ok_or(CertError::ValidityTooLong { requested: d })
}

fn to_offset(t: SystemTime) -> Result<OffsetDateTime, CertError> {
    let secs = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    };
    OffsetDateTime::from_unix_timestamp(secs).map_err(|e| CertError::Parse {
        what: "certificate time",
        reason: e.to_string(),
    })
}

fn asn1_to_system(ts: i64) -> SystemTime {
    if ts >= 0 {
        UNIX_EPOCH + Duration::from_secs(ts.unsigned_abs())
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::from_secs(ts.unsigned_abs()))
            .unwrap_or(UNIX_EPOCH)
    }
}

/// RFC 3339 in UTC, for messages.
pub(crate) fn fmt_time(t: SystemTime) -> String {
    match to_offset(t) {
        Ok(dt) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            dt.year(),
            u8::from(dt.month()),
            dt.day(),
            dt.hour(),
            dt.minute(),
            dt.second()
        ),
        Err(_) => format!("{t:?}"),
    }
}

/// The contents of the first PEM block, which must have tag `tag`.
pub(crate) fn pem_block(pem: &str, tag: &str, what: &'static str) -> Result<Vec<u8>, CertError> {
    let block = pem::parse(pem).map_err(|e| CertError::Pem {
        what,
        reason: e.to_string(),
    })?;
    if block.tag() != tag {
        return Err(CertError::Pem {
            what,
            reason: format!("found a {:?} block where {tag:?} was expected", block.tag()),
        });
    }
    Ok(block.into_contents())
}

pub(crate) fn to_pem(tag: &str, der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new(tag, der),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{SeedableRng, rngs::StdRng};
    use x509_parser::extensions::GeneralName;

    fn issue(ca: &RootCa, role: Role, validity: Duration) -> Result<NodeCert, CertError> {
        let key = NodeKey::generate().unwrap();
        let csr = key.generate_csr(Some("node1")).unwrap();
        ca.issue(
            &csr,
            "abcdefghijklmnopqrstuvwxy",
            role,
            "cluster9",
            validity,
        )
    }

    #[test]
    fn root_ca_round_trips_through_pem() {
        let ca = RootCa::generate().unwrap();
        let again = RootCa::from_pem(&ca.cert_pem(), &ca.key_pem()).unwrap();
        assert_eq!(again.cert(), ca.cert());
        assert_eq!(again.digest(), ca.digest());
        assert_eq!(ca.digest(), Digest::of(ca.cert_der()));
        // The loaded CA signs certificates that name it as issuer.
        let key = NodeKey::generate().unwrap();
        let cert = again
            .issue(
                &key.generate_csr(None).unwrap(),
                "n1",
                Role::Worker,
                "c1",
                NODE_CERT_VALIDITY,
            )
            .unwrap();
        let (_, x) = x509_parser::parse_x509_certificate(cert.der()).unwrap();
        let (_, root) = x509_parser::parse_x509_certificate(ca.cert_der()).unwrap();
        assert_eq!(x.issuer(), root.subject());
        x.verify_signature(Some(root.public_key())).unwrap();
    }

    #[test]
    fn root_ca_lives_twenty_years_and_is_a_ca() {
        let ca = RootCa::generate().unwrap();
        let (_, x) = x509_parser::parse_x509_certificate(ca.cert_der()).unwrap();
        assert!(x.is_ca());
        let life = x.validity().not_after.timestamp() - x.validity().not_before.timestamp();
        assert_eq!(life, (ROOT_CA_VALIDITY + BACKDATE).as_secs() as i64);
    }

    #[test]
    fn root_ca_refuses_a_foreign_key() {
        let ca = RootCa::generate().unwrap();
        let other = RootCa::generate().unwrap();
        let err = RootCa::from_pem(&ca.cert_pem(), &other.key_pem()).unwrap_err();
        assert!(matches!(err, CertError::KeyMismatch { .. }), "{err}");
        assert!(RootCa::from_pem("garbage", &ca.key_pem()).is_err());
        assert!(RootCa::from_pem(&ca.cert_pem(), "garbage").is_err());
        // A leaf is not a root.
        let leaf = issue(&ca, Role::Worker, NODE_CERT_VALIDITY).unwrap();
        assert!(matches!(
            RootCert::from_pem(&leaf.to_pem()).unwrap_err(),
            CertError::NotACa
        ));
    }

    #[test]
    fn issued_certificate_fields() {
        let ca = RootCa::generate().unwrap();
        let before = SystemTime::now();
        let cert = issue(&ca, Role::Manager, NODE_CERT_VALIDITY).unwrap();
        assert_eq!(
            cert.identity(),
            &NodeIdentity {
                node_id: "abcdefghijklmnopqrstuvwxy".into(),
                role: Role::Manager,
                cluster_id: "cluster9".into(),
            }
        );
        assert_eq!(
            NodeIdentity::from_der(cert.der()).unwrap(),
            *cert.identity()
        );

        let (_, x) = x509_parser::parse_x509_certificate(cert.der()).unwrap();
        let attr = |it: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue<'_>>| {
            it.map(|a| a.as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            attr(&mut x.subject().iter_common_name()),
            ["abcdefghijklmnopqrstuvwxy"]
        );
        assert_eq!(
            attr(&mut x.subject().iter_organizational_unit()),
            ["swarm-manager"]
        );
        assert_eq!(attr(&mut x.subject().iter_organization()), ["cluster9"]);

        let san = x.subject_alternative_name().unwrap().unwrap();
        let names: Vec<_> = san
            .value
            .general_names
            .iter()
            .map(|n| match n {
                GeneralName::DNSName(d) => d.to_string(),
                other => panic!("unexpected SAN {other:?}"),
            })
            .collect();
        assert_eq!(names, ["abcdefghijklmnopqrstuvwxy", "swarm-manager"]);

        let eku = x.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        assert!(!x.is_ca());
        let bc = x.basic_constraints().unwrap().unwrap().value;
        assert!(!bc.ca);

        // Backdated one hour; 90 days from issue.
        let nb = cert.not_before();
        let backdate = before.duration_since(nb).unwrap();
        assert!(
            backdate >= BACKDATE - Duration::from_secs(2)
                && backdate <= BACKDATE + Duration::from_secs(2),
            "{backdate:?}"
        );
        let life = cert.not_after().duration_since(nb).unwrap();
        assert!(
            life.abs_diff(NODE_CERT_VALIDITY + BACKDATE) <= Duration::from_secs(2),
            "{life:?}"
        );
    }

    #[test]
    fn worker_certificate_names_worker() {
        let ca = RootCa::generate().unwrap();
        let cert = issue(&ca, Role::Worker, MIN_NODE_CERT_VALIDITY).unwrap();
        assert_eq!(cert.identity().role, Role::Worker);
    }

    #[test]
    fn validity_floor_is_thirty_minutes() {
        let ca = RootCa::generate().unwrap();
        let err = issue(&ca, Role::Worker, Duration::from_secs(29 * 60)).unwrap_err();
        assert!(matches!(err, CertError::ValidityTooShort { .. }));
        assert!(err.to_string().contains("minimum"), "{err}");
        assert!(issue(&ca, Role::Worker, MIN_NODE_CERT_VALIDITY).is_ok());
        assert!(matches!(
            issue(&ca, Role::Worker, Duration::from_secs(u64::MAX)).unwrap_err(),
            CertError::ValidityTooLong { .. }
        ));
    }

    #[test]
    fn node_cert_never_outlives_root() {
        let ca = RootCa::generate_with_validity(Duration::from_secs(3 * 3600)).unwrap();
        let cert = issue(&ca, Role::Worker, NODE_CERT_VALIDITY).unwrap();
        assert_eq!(cert.not_after(), ca.cert().not_after());
        let dying = RootCa::generate_with_validity(Duration::from_secs(10 * 60)).unwrap();
        assert!(matches!(
            issue(&dying, Role::Worker, NODE_CERT_VALIDITY).unwrap_err(),
            CertError::CaExpiresTooSoon { .. }
        ));
    }

    #[test]
    fn csr_subject_is_ignored_and_bad_csrs_are_refused() {
        let ca = RootCa::generate().unwrap();
        let key = NodeKey::generate().unwrap();
        // The CSR claims another node; the CA decides.
        let csr = key.generate_csr(Some("someone-else")).unwrap();
        let cert = ca
            .issue(&csr, "me", Role::Worker, "c", NODE_CERT_VALIDITY)
            .unwrap();
        assert_eq!(cert.identity().node_id, "me");
        assert!(cert.matches_key(&key));
        assert!(!cert.matches_key(&NodeKey::generate().unwrap()));

        let err = ca
            .issue("not a csr", "me", Role::Worker, "c", NODE_CERT_VALIDITY)
            .unwrap_err();
        assert!(matches!(err, CertError::InvalidCsr(_)), "{err}");
        // A CSR whose signature does not verify.
        let mut der = pem::parse(&csr).unwrap().into_contents();
        let last = der.len() - 1;
        der[last] ^= 0x55;
        let tampered = to_pem("CERTIFICATE REQUEST", &der);
        assert!(matches!(
            ca.issue(&tampered, "me", Role::Worker, "c", NODE_CERT_VALIDITY)
                .unwrap_err(),
            CertError::InvalidCsr(_)
        ));
    }

    #[test]
    fn ids_are_checked() {
        let ca = RootCa::generate().unwrap();
        let csr = NodeKey::generate().unwrap().generate_csr(None).unwrap();
        for bad in [
            "",
            "UPPER",
            "a b",
            "-a",
            "a-",
            "swarm-manager",
            &"a".repeat(64),
        ] {
            assert!(
                matches!(
                    ca.issue(&csr, bad, Role::Worker, "c", NODE_CERT_VALIDITY),
                    Err(CertError::InvalidId { .. })
                ),
                "{bad:?}"
            );
        }
        for bad in ["", "a/b", "x\ny", &"c".repeat(65)] {
            assert!(
                matches!(
                    ca.issue(&csr, "n", Role::Worker, bad, NODE_CERT_VALIDITY),
                    Err(CertError::InvalidId { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn node_key_and_cert_round_trip_through_pem() {
        let ca = RootCa::generate().unwrap();
        let key = NodeKey::generate().unwrap();
        let cert = ca
            .issue(
                &key.generate_csr(None).unwrap(),
                "n",
                Role::Worker,
                "c",
                NODE_CERT_VALIDITY,
            )
            .unwrap();
        let key2 = NodeKey::from_pem(&key.to_pem()).unwrap();
        let cert2 = NodeCert::from_pem(&cert.to_pem()).unwrap();
        assert_eq!(cert2, cert);
        assert!(cert2.matches_key(&key2));
        assert!(!format!("{key:?}").contains("PRIVATE"));
        assert!(
            NodeCert::from_pem(&ca.cert_pem()).is_err(),
            "a CA is not a node"
        );
        assert!(matches!(
            NodeCert::from_pem(&key.to_pem()).unwrap_err(),
            CertError::Pem { .. }
        ));
    }

    #[test]
    fn identity_needs_a_known_role() {
        // A certificate without our subject layout (the root CA's) is refused.
        let ca = RootCa::generate().unwrap();
        let err = NodeIdentity::from_der(ca.cert_der()).unwrap_err();
        assert!(matches!(err, CertError::NotANodeCert(_)), "{err}");
        assert!(NodeIdentity::from_der(b"\x30\x03junk").is_err());
    }

    #[test]
    fn renewal_of_an_empty_life_is_immediate() {
        let t = SystemTime::now();
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(renewal_deadline(t, t, &mut rng), t);
        assert_eq!(renewal_deadline(t, t - Duration::from_secs(5), &mut rng), t);
    }

    #[test]
    fn renewal_draws_spread_over_the_window() {
        let nb = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let na = nb + Duration::from_secs(1000);
        let mut rng = StdRng::seed_from_u64(7);
        let draws: Vec<u64> = (0..2000)
            .map(|_| {
                renewal_deadline(nb, na, &mut rng)
                    .duration_since(nb)
                    .unwrap()
                    .as_secs()
            })
            .collect();
        assert!(draws.iter().all(|&s| (500..=800).contains(&s)));
        // Uniform enough that both ends of the window get used.
        assert!(draws.iter().any(|&s| s < 530));
        assert!(draws.iter().any(|&s| s >= 770));
    }

    proptest! {
        #[test]
        fn renewal_is_between_half_and_four_fifths(
            start in 0u64..4_000_000_000,
            life in 1u64..(200 * 365 * 24 * 3600),
            seed in any::<u64>(),
        ) {
            let nb = UNIX_EPOCH + Duration::from_secs(start);
            let na = nb + Duration::from_secs(life);
            let mut rng = StdRng::seed_from_u64(seed);
            for _ in 0..16 {
                let d = renewal_deadline(nb, na, &mut rng);
                let offset = d.duration_since(nb).unwrap().as_nanos();
                let total = Duration::from_secs(life).as_nanos();
                prop_assert!(offset * 2 >= total, "{offset} < half of {total}");
                prop_assert!(offset * 5 <= total * 4, "{offset} > 4/5 of {total}");
            }
        }
    }
}
