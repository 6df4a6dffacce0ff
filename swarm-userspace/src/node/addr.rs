//! Address rules for `init` and `join`, as docker applies them: default
//! port 2377, advertise address taken from the listen address or the one
//! non-loopback IPv4 address of this host.
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};

use tonic::Status;

use super::DEFAULT_PORT;

/// `--listen-addr`: "ip:port", "ip" or empty (0.0.0.0:2377).
pub fn listen_addr(s: &str) -> Result<SocketAddr, Status> {
    if s.is_empty() {
        return Ok(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            DEFAULT_PORT,
        ));
    }
    parse_with_default_port(s).ok_or_else(|| {
        Status::invalid_argument(format!("invalid --listen-addr {s:?}: use IP[:PORT]"))
    })
}

fn parse_with_default_port(s: &str) -> Option<SocketAddr> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Some(a);
    }
    s.parse::<IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, DEFAULT_PORT))
}

/// A manager to join: "host[:port]", resolved now.
pub fn remote_addr(s: &str) -> Result<SocketAddr, Status> {
    if let Some(a) = parse_with_default_port(s) {
        return Ok(a);
    }
    let with_port = if s.contains(':') {
        s.to_string()
    } else {
        format!("{s}:{DEFAULT_PORT}")
    };
    with_port
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| {
            Status::invalid_argument(format!(
                "cannot resolve the manager address {s:?}: use HOST[:PORT] of a manager"
            ))
        })
}

/// `--advertise-addr`: explicit "ip[:port]", else the listen IP when it is
/// specific, else the host's only non-loopback IPv4 address. The port
/// defaults to the listen port.
pub fn advertise_addr(s: &str, listen: SocketAddr) -> Result<String, Status> {
    if !s.is_empty() {
        if let Ok(a) = s.parse::<SocketAddr>() {
            return Ok(a.to_string());
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, listen.port()).to_string());
        }
        return Err(Status::invalid_argument(format!(
            "invalid --advertise-addr {s:?}: use IP[:PORT]"
        )));
    }
    if !listen.ip().is_unspecified() {
        return Ok(listen.to_string());
    }
    let candidates: Vec<Ipv4Addr> = nix::ifaddrs::getifaddrs()
        .map_err(|e| Status::internal(format!("listing this host's addresses: {e}")))?
        .filter_map(|i| i.address.and_then(|a| a.as_sockaddr_in().map(|s| s.ip())))
        .filter(|ip| !ip.is_loopback() && !ip.is_link_local())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    match candidates.as_slice() {
        [one] => Ok(SocketAddr::new(IpAddr::V4(*one), listen.port()).to_string()),
        [] => Err(Status::invalid_argument(
            "could not find an address to advertise: this host has no non-loopback IPv4 address; use --advertise-addr",
        )),
        many => Err(Status::invalid_argument(format!(
            "could not choose an IP address to advertise since this system has multiple addresses ({}); use --advertise-addr",
            many.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_docker() {
        assert_eq!(listen_addr("").unwrap().to_string(), "0.0.0.0:2377");
        assert_eq!(
            listen_addr("10.1.2.3").unwrap().to_string(),
            "10.1.2.3:2377"
        );
        assert_eq!(
            remote_addr("127.0.0.1").unwrap().to_string(),
            "127.0.0.1:2377"
        );
        assert_eq!(
            remote_addr("127.0.0.1:4000").unwrap().to_string(),
            "127.0.0.1:4000"
        );
        let l = listen_addr("0.0.0.0:3000").unwrap();
        assert_eq!(advertise_addr("192.0.2.7", l).unwrap(), "192.0.2.7:3000");
        assert_eq!(advertise_addr("192.0.2.7:9", l).unwrap(), "192.0.2.7:9");
        assert!(advertise_addr("nope", l).is_err());
        assert_eq!(
            advertise_addr("", listen_addr("192.0.2.8").unwrap()).unwrap(),
            "192.0.2.8:2377"
        );
    }
}
