//! Join tokens (`SWMTKN-1-<root CA digest>-<secret>`) and random IDs.
//!
//! Owns the token format, as Docker writes it: the SHA-256 digest of the
//! root CA certificate (DER) in base36, zero-padded to 50 characters, and a
//! secret of 128 random bits in base36, zero-padded to 25. The digest lets a
//! joining node check the CA a manager shows it before trusting anything;
//! the secret decides which role it may join as.
//!
//! Must never: compare secrets in variable time, or print a secret in
//! `Debug` output or in an error.
use std::{fmt, str::FromStr};

use rand::RngCore;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

use super::cert::{Role, RootCert};

const PREFIX: &str = "SWMTKN";
const VERSION: &str = "1";
/// Base36 digits needed for a 256-bit number (36^50 > 2^256).
const DIGEST_LEN: usize = 50;
/// Base36 digits needed for a 128-bit number (36^25 > 2^128).
const SECRET_LEN: usize = 25;
const ALPHABET: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error(
        "not a swarm join token: must start with SWMTKN-1- (get one with `swarm join-token worker` or `swarm join-token manager` on a manager)"
    )]
    NotAToken,
    #[error(
        "join token version {0:?} is not supported: this swarm understands SWMTKN-1 tokens only"
    )]
    UnsupportedVersion(String),
    #[error(
        "malformed join token: expected SWMTKN-1-<CA digest>-<secret>, found {0} dash-separated parts; copy the whole token"
    )]
    WrongParts(usize),
    #[error(
        "malformed join token: the CA digest must be {DIGEST_LEN} lowercase base36 characters (0-9, a-z); copy the whole token"
    )]
    BadDigest,
    #[error(
        "malformed join token: the secret must be {SECRET_LEN} lowercase base36 characters (0-9, a-z); copy the whole token"
    )]
    BadSecret,
}

/// SHA-256 digest of a root CA certificate's DER encoding.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest([u8; 32]);

impl Digest {
    /// Digest of a DER-encoded certificate.
    pub fn of(der: &[u8]) -> Self {
        Self(Sha256::digest(der).into())
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The form used in join tokens: base36, zero-padded to 50 characters.
    pub fn to_base36(&self) -> String {
        encode_base36(&self.0, DIGEST_LEN)
    }

    /// Parses the base36 form used in join tokens.
    pub fn from_base36(s: &str) -> Option<Self> {
        if s.len() != DIGEST_LEN {
            return None;
        }
        decode_base36::<32>(s).map(Self)
    }

    /// Constant-time comparison, for digests compared against input.
    pub fn ct_eq(&self, other: &Digest) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:")?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A random identifier: 128 bits in base36, 25 characters, as Docker's node
/// and cluster IDs. Valid as a DNS label, so it can name a node in a SAN.
pub fn new_id() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    encode_base36(&bytes, SECRET_LEN)
}

/// A join token. `Display` prints the whole token (secret included), as
/// `swarm join-token` must; `Debug` hides the secret.
#[derive(Clone)]
pub struct JoinToken {
    digest: Digest,
    secret: String,
}

impl JoinToken {
    /// A new token with a fresh random secret for the given root CA.
    pub fn generate(ca: &RootCert) -> Self {
        Self {
            digest: ca.digest(),
            secret: new_id(),
        }
    }

    /// Parses a token as a user typed or pasted it (surrounding whitespace
    /// is ignored).
    pub fn parse(s: &str) -> Result<Self, TokenError> {
        let s = s.trim();
        let parts: Vec<&str> = s.split('-').collect();
        if parts.first() != Some(&PREFIX) || parts.len() < 2 {
            return Err(TokenError::NotAToken);
        }
        if parts[1] != VERSION {
            // Never echo more than the version field: the rest may be secret.
            let version: String = parts[1].chars().take(8).collect();
            return Err(TokenError::UnsupportedVersion(version));
        }
        if parts.len() != 4 {
            return Err(TokenError::WrongParts(parts.len()));
        }
        let digest = if is_base36(parts[2]) {
            Digest::from_base36(parts[2]).ok_or(TokenError::BadDigest)?
        } else {
            return Err(TokenError::BadDigest);
        };
        let secret = parts[3];
        if secret.len() != SECRET_LEN || !is_base36(secret) {
            return Err(TokenError::BadSecret);
        }
        Ok(Self {
            digest,
            secret: secret.to_owned(),
        })
    }

    /// Digest of the root CA this token was made for.
    pub fn ca_digest(&self) -> &Digest {
        &self.digest
    }

    /// Whether `ca_der` is the root CA certificate this token names.
    pub fn matches_ca(&self, ca_der: &[u8]) -> bool {
        self.digest.ct_eq(&Digest::of(ca_der))
    }
}

impl PartialEq for JoinToken {
    /// Constant time in the secret's content: a presented token is input.
    fn eq(&self, other: &Self) -> bool {
        let digest = self.digest.ct_eq(&other.digest);
        let secret: bool = self.secret.as_bytes().ct_eq(other.secret.as_bytes()).into();
        digest & secret
    }
}

impl Eq for JoinToken {}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PREFIX}-{VERSION}-{}-{}",
            self.digest.to_base36(),
            self.secret
        )
    }
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("ca_digest", &self.digest)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl FromStr for JoinToken {
    type Err = TokenError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// The swarm's two join tokens; they differ, so a worker token cannot make
/// a manager.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinTokens {
    pub worker: JoinToken,
    pub manager: JoinToken,
}

impl JoinTokens {
    pub fn generate(ca: &RootCert) -> Self {
        Self {
            worker: JoinToken::generate(ca),
            manager: JoinToken::generate(ca),
        }
    }

    /// The role a presented token grants, if any. Both tokens are always
    /// compared so the time taken does not tell which one was close.
    pub fn role_for(&self, presented: &JoinToken) -> Option<Role> {
        let worker = self.worker == *presented;
        let manager = self.manager == *presented;
        if manager {
            Some(Role::Manager)
        } else if worker {
            Some(Role::Worker)
        } else {
            None
        }
    }
}

fn is_base36(s: &str) -> bool {
    s.bytes()
        .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase())
}

/// Big-endian bytes to base36, left-padded with '0' to at least `width`.
fn encode_base36(bytes: &[u8], width: usize) -> String {
    let mut num = bytes.to_vec();
    let mut digits = Vec::with_capacity(width);
    while num.iter().any(|&b| b != 0) {
        let mut rem = 0u32;
        for b in num.iter_mut() {
            let acc = (rem << 8) | u32::from(*b);
            *b = (acc / 36) as u8;
            rem = acc % 36;
        }
        digits.push(ALPHABET[rem as usize]);
    }
    while digits.len() < width {
        digits.push(b'0');
    }
    digits.reverse();
    digits.into_iter().map(char::from).collect()
}

/// Base36 (0-9, a-z) to `N` big-endian bytes; `None` on a bad digit or if
/// the number does not fit.
fn decode_base36<const N: usize>(s: &str) -> Option<[u8; N]> {
    let mut num = [0u8; N];
    for c in s.bytes() {
        let digit = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'z' => c - b'a' + 10,
            _ => return None,
        };
        let mut carry = u32::from(digit);
        for b in num.iter_mut().rev() {
            let acc = u32::from(*b) * 36 + carry;
            *b = (acc & 0xff) as u8;
            carry = acc >> 8;
        }
        if carry != 0 {
            return None;
        }
    }
    Some(num)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn token_for(digest: [u8; 32]) -> JoinToken {
        JoinToken {
            digest: Digest(digest),
            secret: new_id(),
        }
    }

    #[test]
    fn format_matches_docker_layout() {
        let t = token_for([0xab; 32]).to_string();
        let parts: Vec<&str> = t.split('-').collect();
        assert_eq!(parts.len(), 4, "{t}");
        assert_eq!(parts[0], "SWMTKN");
        assert_eq!(parts[1], "1");
        assert_eq!(parts[2].len(), 50);
        assert_eq!(parts[3].len(), 25);
    }

    #[test]
    fn small_digest_is_zero_padded() {
        let mut d = [0u8; 32];
        d[31] = 35;
        assert_eq!(Digest(d).to_base36(), format!("{}z", "0".repeat(49)));
        assert_eq!(Digest::from_base36(&Digest(d).to_base36()), Some(Digest(d)));
    }

    #[test]
    fn known_values() {
        // Computed independently (Python's int in base 36).
        assert_eq!(
            Digest([0xff; 32]).to_base36(),
            "6dp5qcb22im238nr3wvp0ic7q99w035jmy2iw7i6n43d37jtof"
        );
        // SHA-256 of the empty string.
        assert_eq!(
            Digest::of(b"").to_base36(),
            "5oaq0bjhj6un82wg98mgigso5q7qlhc63je4gw7ivixqqhkd3p"
        );
        assert_eq!(
            Digest::of(b"").to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn round_trip() {
        let t = token_for([7; 32]);
        let parsed = JoinToken::parse(&t.to_string()).unwrap();
        assert_eq!(parsed, t);
        assert_eq!(parsed.to_string(), t.to_string());
        // Pasted with a newline.
        assert_eq!(JoinToken::parse(&format!("  {t}\n")).unwrap(), t);
    }

    #[test]
    fn malformed_tokens_say_what_is_wrong() {
        let good = token_for([1; 32]).to_string();
        let parts: Vec<&str> = good.split('-').collect();
        assert_eq!(JoinToken::parse("").unwrap_err(), TokenError::NotAToken);
        assert_eq!(
            JoinToken::parse("SWMTKN").unwrap_err(),
            TokenError::NotAToken
        );
        assert_eq!(
            JoinToken::parse("hello").unwrap_err().to_string(),
            "not a swarm join token: must start with SWMTKN-1- (get one with `swarm join-token worker` or `swarm join-token manager` on a manager)"
        );
        assert_eq!(
            JoinToken::parse(&good.replacen("SWMTKN-1", "SWMTKN-2", 1)).unwrap_err(),
            TokenError::UnsupportedVersion("2".into())
        );
        assert_eq!(
            JoinToken::parse(&format!("SWMTKN-1-{}", parts[2])).unwrap_err(),
            TokenError::WrongParts(3)
        );
        assert_eq!(
            JoinToken::parse(&format!("{good}-extra")).unwrap_err(),
            TokenError::WrongParts(5)
        );
        assert_eq!(
            JoinToken::parse(&format!("SWMTKN-1-{}-{}", &parts[2][1..], parts[3])).unwrap_err(),
            TokenError::BadDigest
        );
        assert_eq!(
            JoinToken::parse(&format!(
                "SWMTKN-1-{}-{}",
                parts[2].to_uppercase(),
                parts[3]
            ))
            .unwrap_err(),
            TokenError::BadDigest
        );
        // 50 'z's overflow 256 bits.
        assert_eq!(
            JoinToken::parse(&format!("SWMTKN-1-{}-{}", "z".repeat(50), parts[3])).unwrap_err(),
            TokenError::BadDigest
        );
        assert_eq!(
            JoinToken::parse(&format!("SWMTKN-1-{}-{}", parts[2], &parts[3][1..])).unwrap_err(),
            TokenError::BadSecret
        );
        assert_eq!(
            JoinToken::parse(&format!("SWMTKN-1-{}-{}!", parts[2], &parts[3][1..])).unwrap_err(),
            TokenError::BadSecret
        );
    }

    #[test]
    fn debug_hides_the_secret() {
        let t = token_for([3; 32]);
        let secret = t.to_string().rsplit('-').next().unwrap().to_owned();
        assert!(!format!("{t:?}").contains(&secret));
    }

    #[test]
    fn role_for_distinguishes_tokens() {
        let tokens = JoinTokens {
            worker: token_for([9; 32]),
            manager: token_for([9; 32]),
        };
        assert_ne!(tokens.worker, tokens.manager);
        assert_eq!(tokens.role_for(&tokens.worker), Some(Role::Worker));
        assert_eq!(tokens.role_for(&tokens.manager), Some(Role::Manager));
        // Same secret, other CA: refused.
        let mut other = tokens.worker.clone();
        other.digest = Digest([8; 32]);
        assert_eq!(tokens.role_for(&other), None);
        assert_eq!(tokens.role_for(&token_for([9; 32])), None);
    }

    #[test]
    fn ids_are_25_base36_chars() {
        let a = new_id();
        assert_eq!(a.len(), 25);
        assert!(is_base36(&a));
        assert_ne!(a, new_id());
    }

    proptest! {
        #[test]
        fn base36_round_trips(bytes in proptest::array::uniform32(any::<u8>())) {
            let s = Digest(bytes).to_base36();
            prop_assert_eq!(s.len(), 50);
            prop_assert_eq!(Digest::from_base36(&s), Some(Digest(bytes)));
        }

        #[test]
        fn parse_never_panics(s in ".{0,200}") {
            let _ = JoinToken::parse(&s);
        }
    }
}
