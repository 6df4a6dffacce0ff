//! Outbound access for containers on overlay networks, as docker's
//! `docker_gwbridge` gives them: traffic from an overlay subnet to an
//! address outside every overlay subnet leaves through the node's own
//! stack, masqueraded to the node's address.
//!
//! Owns: the `ip swarm_egress` nftables table of the node's network
//! namespace (replaced whole on every change) and IPv4 forwarding. Must
//! never touch another table.
use std::io::Write;
use std::process::{Command, Stdio};

use ipnet::Ipv4Net;

const TABLE: &str = "swarm_egress";

#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error(
        "enabling IPv4 forwarding: {0}; containers on overlay networks cannot reach outside the overlay"
    )]
    Forwarding(std::io::Error),
    #[error("running nft: {0}; install nftables (containers cannot reach outside the overlay)")]
    Spawn(std::io::Error),
    #[error("nft refused the egress rules: {0}")]
    Nft(String),
}

/// The ruleset for `subnets`: the table is deleted and defined again in
/// one transaction, so it never half-applies.
pub fn ruleset(subnets: &[Ipv4Net]) -> String {
    let mut out = format!("table ip {TABLE}\ndelete table ip {TABLE}\ntable ip {TABLE} {{\n");
    out.push_str("  set overlay {\n    type ipv4_addr\n    flags interval\n");
    if !subnets.is_empty() {
        let list: Vec<String> = subnets.iter().map(ToString::to_string).collect();
        out.push_str(&format!("    elements = {{ {} }}\n", list.join(", ")));
    }
    out.push_str("  }\n");
    out.push_str(
        "  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n",
    );
    out.push_str("    ip saddr @overlay ip daddr != @overlay masquerade\n  }\n}\n");
    out
}

/// Turns forwarding on and installs the rules for `subnets`.
pub fn apply(subnets: &[Ipv4Net]) -> Result<(), EgressError> {
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(EgressError::Forwarding)?;
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(EgressError::Spawn)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(ruleset(subnets).as_bytes())
            .map_err(EgressError::Spawn)?;
    }
    let out = child.wait_with_output().map_err(EgressError::Spawn)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(EgressError::Nft(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ruleset_masquerades_overlay_sources_leaving_the_overlay() {
        let r = ruleset(&[
            "10.0.1.0/24".parse().expect("cidr"),
            "10.0.2.0/24".parse().expect("cidr"),
        ]);
        assert!(
            r.starts_with("table ip swarm_egress\ndelete table ip swarm_egress\n"),
            "{r}"
        );
        assert!(r.contains("elements = { 10.0.1.0/24, 10.0.2.0/24 }"), "{r}");
        assert!(
            r.contains("ip saddr @overlay ip daddr != @overlay masquerade"),
            "{r}"
        );
        assert!(!ruleset(&[]).contains("elements"));
    }
}
