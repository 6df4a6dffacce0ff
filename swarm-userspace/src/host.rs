//! Where a client finds its daemon: the `-H/--host` address.
//!
//! Parses and prints daemon addresses; never connects (see `api::client`).
use std::{fmt, path::PathBuf, str::FromStr};

/// Default API socket of a daemon, as docker's /var/run/docker.sock.
pub const DEFAULT_SOCKET: &str = "/run/swarm/swarm.sock";
/// Environment variable that sets `-H/--host`.
pub const HOST_ENV: &str = "SWARM_HOST";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HostError {
    #[error("invalid host {0:?}: expected unix:///path/to/swarm.sock")]
    Invalid(String),
    #[error(
        "unsupported host scheme in {0:?}: only unix:// sockets are served; the daemon's API is node-local"
    )]
    UnsupportedScheme(String),
}

/// A daemon API address. Only unix sockets: remote access to a node goes
/// through the cluster's mTLS API, never an unauthenticated TCP port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    Unix(PathBuf),
}

impl Host {
    pub fn unix_path(&self) -> &std::path::Path {
        match self {
            Host::Unix(p) => p,
        }
    }
}

impl Default for Host {
    fn default() -> Self {
        Host::Unix(PathBuf::from(DEFAULT_SOCKET))
    }
}

impl FromStr for Host {
    type Err = HostError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("unix://") {
            if path.is_empty() || !path.starts_with('/') {
                return Err(HostError::Invalid(s.into()));
            }
            return Ok(Host::Unix(PathBuf::from(path)));
        }
        if s.starts_with('/') {
            // A bare absolute path is unambiguous; accept it as docker does.
            return Ok(Host::Unix(PathBuf::from(s)));
        }
        if s.contains("://") {
            return Err(HostError::UnsupportedScheme(s.into()));
        }
        Err(HostError::Invalid(s.into()))
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Unix(p) => write!(f, "unix://{}", p.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_unix_urls_and_paths() {
        assert_eq!(
            "unix:///tmp/a.sock".parse::<Host>(),
            Ok(Host::Unix("/tmp/a.sock".into()))
        );
        assert_eq!(
            "/tmp/a.sock".parse::<Host>(),
            Ok(Host::Unix("/tmp/a.sock".into()))
        );
        assert_eq!(
            Host::default().to_string(),
            format!("unix://{DEFAULT_SOCKET}")
        );
    }

    #[test]
    fn rejects_everything_else() {
        assert!(matches!(
            "tcp://1.2.3.4:2375".parse::<Host>(),
            Err(HostError::UnsupportedScheme(_))
        ));
        assert!(matches!(
            "unix://relative".parse::<Host>(),
            Err(HostError::Invalid(_))
        ));
        assert!(matches!("".parse::<Host>(), Err(HostError::Invalid(_))));
    }
}
