//! Placement constraints (`--constraint node.labels.zone==a`): parsing with
//! docker's exact grammar, and matching against a node.
//!
//! Owns: the grammar and the meaning of every constraint key. Never decides
//! where a task goes; the filters and the global orchestrator ask
//! [`node_matches`].

use std::net::IpAddr;

use swarm_proto::v1 as pb;

/// Prefix of node label constraints and spread descriptors.
pub const NODE_LABEL_PREFIX: &str = "node.labels.";
/// Prefix of engine label constraints and spread descriptors.
pub const ENGINE_LABEL_PREFIX: &str = "engine.labels.";

/// Operators in the order docker looks for them: an expression containing
/// both uses `==`.
const OPERATORS: [(&str, Op); 2] = [("==", Op::Eq), ("!=", Op::NotEq)];

/// Why a constraint expression is invalid; the texts are docker's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConstraintError {
    #[error("key '{0}' is invalid")]
    InvalidKey(String),
    #[error("value '{0}' is invalid")]
    InvalidValue(String),
    #[error("constraint expected one operator from ==, !=")]
    NoOperator,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    NotEq,
}

/// One parsed `key op value` expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constraint {
    pub key: String,
    pub op: Op,
    pub value: String,
}

/// Parses constraint expressions as docker does: the first operator found
/// splits the expression, both sides are trimmed, the key must look like
/// `[A-Za-z_][A-Za-z0-9._-]+` and the value may hold only letters, digits,
/// whitespace and `:-_.*()?+[]\^$|/`. Unknown keys parse (and then match no
/// node), as in docker.
pub fn parse_constraints<S: AsRef<str>>(exprs: &[S]) -> Result<Vec<Constraint>, ConstraintError> {
    exprs.iter().map(|e| parse_one(e.as_ref())).collect()
}

/// For the control API: `Ok` if every expression parses, else docker's
/// message for the first bad one.
pub fn validate_constraints<S: AsRef<str>>(exprs: &[S]) -> Result<(), String> {
    parse_constraints(exprs)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn parse_one(expr: &str) -> Result<Constraint, ConstraintError> {
    let Some((sep, op)) = OPERATORS.iter().find(|(sep, _)| expr.contains(sep)) else {
        return Err(ConstraintError::NoOperator);
    };
    let (key, value) = expr.split_once(sep).ok_or(ConstraintError::NoOperator)?;
    let key = key.trim();
    if !valid_key(key) {
        return Err(ConstraintError::InvalidKey(key.to_owned()));
    }
    let value = value.trim();
    if !valid_value(value) {
        return Err(ConstraintError::InvalidValue(value.to_owned()));
    }
    Ok(Constraint {
        key: key.to_owned(),
        op: *op,
        value: value.to_owned(),
    })
}

fn valid_key(key: &str) -> bool {
    let mut chars = key.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    let rest = chars.as_str();
    first_ok
        && !rest.is_empty()
        && rest
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn valid_value(value: &str) -> bool {
    !value.is_empty()
        && value.chars().all(|c| {
            c.is_ascii_alphanumeric()
                // Go's \s: tab, newline, form feed, carriage return, space.
                || matches!(c, '\t' | '\n' | '\x0c' | '\r' | ' ')
                || matches!(
                    c,
                    ':' | '-' | '_' | '.' | '*' | '(' | ')' | '?' | '+' | '[' | ']' | '\\' | '^'
                        | '$' | '|' | '/'
                )
        })
}

/// Case-insensitive equality, as Go's `strings.EqualFold` for what
/// constraints can hold.
fn eq_fold(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.eq_ignore_ascii_case(b)
        || a.chars()
            .flat_map(char::to_lowercase)
            .eq(b.chars().flat_map(char::to_lowercase))
}

/// `key` with `prefix` (compared without case) removed, if it has it and
/// something follows.
pub(crate) fn strip_prefix_fold<'a>(key: &'a str, prefix: &str) -> Option<&'a str> {
    let head = key.get(..prefix.len())?;
    let rest = &key[prefix.len()..];
    (head.eq_ignore_ascii_case(prefix) && !rest.is_empty()).then_some(rest)
}

impl Constraint {
    fn matches(&self, what: &str) -> bool {
        let equal = eq_fold(&self.value, what);
        match self.op {
            Op::Eq => equal,
            Op::NotEq => !equal,
        }
    }

    fn matches_ip(&self, addr: &str) -> bool {
        let node_ip = parse_addr(addr);
        let inside = if let Ok(ip) = self.value.parse::<IpAddr>() {
            Some(node_ip == Some(ip))
        } else {
            parse_cidr(&self.value).map(|net| node_ip.is_some_and(|ip| net.contains(ip)))
        };
        // A malformed address or network matches nothing, whatever the
        // operator (docker's rule).
        inside.is_some_and(|inside| inside == (self.op == Op::Eq))
    }

    /// Whether `node` satisfies this constraint.
    #[must_use]
    pub fn matches_node(&self, node: &pb::Node) -> bool {
        let key = self.key.as_str();
        let desc = node.description.as_ref();
        let platform = desc.and_then(|d| d.platform.as_ref());
        if key.eq_ignore_ascii_case("node.id") {
            self.matches(node.meta.as_ref().map_or("", |m| m.id.as_str()))
        } else if key.eq_ignore_ascii_case("node.hostname") {
            self.matches(desc.map_or("", |d| d.hostname.as_str()))
        } else if key.eq_ignore_ascii_case("node.ip") {
            self.matches_ip(node.status.as_ref().map_or("", |s| s.addr.as_str()))
        } else if key.eq_ignore_ascii_case("node.role") {
            self.matches(role_name(node.role()))
        } else if key.eq_ignore_ascii_case("node.platform.os") {
            self.matches(platform.map_or("", |p| p.os.as_str()))
        } else if key.eq_ignore_ascii_case("node.platform.arch") {
            self.matches(platform.map_or("", |p| p.architecture.as_str()))
        } else if let Some(label) = strip_prefix_fold(key, NODE_LABEL_PREFIX) {
            // Label names are case-sensitive; values are not.
            self.matches(node_label(node, label).unwrap_or(""))
        } else if let Some(label) = strip_prefix_fold(key, ENGINE_LABEL_PREFIX) {
            self.matches(engine_label(node, label).unwrap_or(""))
        } else {
            false
        }
    }
}

fn role_name(role: pb::NodeRole) -> &'static str {
    match role {
        pb::NodeRole::Worker => "worker",
        pb::NodeRole::Manager => "manager",
    }
}

pub(crate) fn node_label<'a>(node: &'a pb::Node, label: &str) -> Option<&'a str> {
    node.spec
        .as_ref()
        .and_then(|s| s.annotations.as_ref())
        .and_then(|a| a.labels.get(label))
        .map(String::as_str)
}

pub(crate) fn engine_label<'a>(node: &'a pb::Node, label: &str) -> Option<&'a str> {
    node.description
        .as_ref()
        .and_then(|d| d.engine.as_ref())
        .and_then(|e| e.labels.get(label))
        .map(String::as_str)
}

/// Whether `node` satisfies every constraint.
#[must_use]
pub fn node_matches(constraints: &[Constraint], node: &pb::Node) -> bool {
    constraints.iter().all(|c| c.matches_node(node))
}

/// A node's address may be given with a port.
fn parse_addr(addr: &str) -> Option<IpAddr> {
    addr.parse::<IpAddr>()
        .ok()
        .or_else(|| addr.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
}

struct Cidr {
    net: IpAddr,
    prefix: u32,
}

fn parse_cidr(s: &str) -> Option<Cidr> {
    let (addr, prefix) = s.split_once('/')?;
    let net = addr.parse::<IpAddr>().ok()?;
    let prefix = prefix.parse::<u32>().ok()?;
    let max = if net.is_ipv4() { 32 } else { 128 };
    (prefix <= max).then_some(Cidr { net, prefix })
}

impl Cidr {
    fn contains(&self, ip: IpAddr) -> bool {
        fn masked(bits: u128, width: u32, prefix: u32) -> u128 {
            if prefix == 0 {
                0
            } else {
                bits >> (width - prefix)
            }
        }
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(i)) => {
                masked(u32::from(n).into(), 32, self.prefix)
                    == masked(u32::from(i).into(), 32, self.prefix)
            }
            (IpAddr::V6(n), IpAddr::V6(i)) => {
                masked(u128::from(n), 128, self.prefix) == masked(u128::from(i), 128, self.prefix)
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn node() -> pb::Node {
        pb::Node {
            meta: Some(pb::Meta {
                id: "n1abc".into(),
                ..Default::default()
            }),
            spec: Some(pb::NodeSpec {
                annotations: Some(pb::Annotations {
                    name: String::new(),
                    labels: BTreeMap::from([
                        ("zone".into(), "East".into()),
                        ("Disk".into(), "ssd".into()),
                    ]),
                }),
                ..Default::default()
            }),
            description: Some(pb::NodeDescription {
                hostname: "web-1".into(),
                platform: Some(pb::Platform {
                    os: "linux".into(),
                    architecture: "x86_64".into(),
                }),
                engine: Some(pb::EngineDescription {
                    engine_version: String::new(),
                    labels: BTreeMap::from([("gpu".into(), "yes".into())]),
                }),
                ..Default::default()
            }),
            status: Some(pb::NodeStatus {
                addr: "192.168.1.20".into(),
                ..Default::default()
            }),
            role: pb::NodeRole::Manager.into(),
            ..Default::default()
        }
    }

    fn check(expr: &str) -> bool {
        let c = parse_constraints(&[expr]).unwrap();
        node_matches(&c, &node())
    }

    #[test]
    fn parses_both_operators_and_trims() {
        let c = parse_constraints(&["node.labels.zone == east", "node.role!=worker"]).unwrap();
        assert_eq!(
            c[0],
            Constraint {
                key: "node.labels.zone".into(),
                op: Op::Eq,
                value: "east".into()
            }
        );
        assert_eq!(c[1].op, Op::NotEq);
        assert_eq!(c[1].value, "worker");
    }

    #[test]
    fn rejects_what_docker_rejects_with_docker_messages() {
        let err = |e: &str| validate_constraints(&[e]).unwrap_err();
        assert_eq!(
            err("node.role"),
            "constraint expected one operator from ==, !="
        );
        assert_eq!(err("node.role=manager"), err("node.role"));
        assert_eq!(err("node.role>manager"), err("node.role"));
        assert_eq!(err("==manager"), "key '' is invalid");
        assert_eq!(err("1node==x"), "key '1node' is invalid");
        assert_eq!(err("n==x"), "key 'n' is invalid");
        assert_eq!(err("node role==x"), "key 'node role' is invalid");
        assert_eq!(err("node.role=="), "value '' is invalid");
        assert_eq!(err("node.labels.a==b==c"), "value 'b==c' is invalid");
        assert_eq!(err("node.labels.a==x,y"), "value 'x,y' is invalid");
        // `==` is looked for first.
        assert_eq!(err("a!=b==c"), "key 'a!=b' is invalid");
        // Unknown keys are valid syntax (they just never match).
        assert!(validate_constraints(&["foo.bar==x"]).is_ok());
        assert!(validate_constraints(&["node.labels.x==a b*(c)?+[d]\\^$|/:-_."]).is_ok());
        assert!(validate_constraints::<&str>(&[]).is_ok());
    }

    #[test]
    fn matches_every_key() {
        assert!(check("node.id==n1abc"));
        assert!(check("node.id!=other"));
        assert!(!check("node.id==n1"));
        assert!(check("node.hostname==WEB-1"));
        assert!(check("node.role==manager"));
        assert!(!check("node.role==worker"));
        assert!(check("node.role!=worker"));
        assert!(check("NODE.ROLE==Manager"));
        assert!(check("node.platform.os==linux"));
        assert!(check("node.platform.arch==x86_64"));
        assert!(!check("node.platform.arch==aarch64"));
        assert!(check("node.labels.zone==east"));
        assert!(check("node.labels.zone!=west"));
        // Label names are case-sensitive.
        assert!(!check("node.labels.disk==ssd"));
        assert!(check("node.labels.Disk==ssd"));
        // A missing label matches the empty string: `!=` holds.
        assert!(check("node.labels.rack!=r1"));
        assert!(!check("node.labels.rack==r1"));
        assert!(check("engine.labels.gpu==yes"));
        assert!(!check("engine.labels.gpu!=yes"));
        assert!(!check("foo.bar==x"));
        assert!(!check("foo.bar!=x"));
    }

    #[test]
    fn matches_node_ip_and_networks() {
        assert!(check("node.ip==192.168.1.20"));
        assert!(!check("node.ip!=192.168.1.20"));
        assert!(check("node.ip==192.168.1.0/24"));
        assert!(check("node.ip!=10.0.0.0/8"));
        assert!(check("node.ip==0.0.0.0/0"));
        assert!(!check("node.ip==192.168.2.0/24"));
        // Malformed addresses match nothing.
        assert!(!check("node.ip==bogus"));
        assert!(!check("node.ip!=bogus"));
    }

    #[test]
    fn all_constraints_must_hold() {
        let c = parse_constraints(&["node.role==manager", "node.labels.zone==west"]).unwrap();
        assert!(!node_matches(&c, &node()));
        assert!(node_matches(&[], &node()));
    }

    #[test]
    fn a_node_without_description_matches_empty_values() {
        let bare = pb::Node::default();
        let c = parse_constraints(&["node.hostname!=x", "node.platform.os!=linux"]).unwrap();
        assert!(node_matches(&c, &bare));
        let c = parse_constraints(&["node.hostname==x"]).unwrap();
        assert!(!node_matches(&c, &bare));
    }
}
