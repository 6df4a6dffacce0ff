//! The filters a node must pass to take a task, in swarmkit's order, and
//! the "no suitable node (...)" explanation built from the first filter
//! each node fails.
//!
//! Owns: what a task needs from a node ([`Needs`]) and the wording of every
//! reason. Never ranks nodes.

use swarm_proto::v1 as pb;

use super::constraint::{Constraint, parse_constraints};
use super::nodeset::{NodeInfo, host_ports, reservations};

/// The first filter a node failed. Declared in pipeline order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Not READY, or availability PAUSE or DRAIN.
    NotAvailable,
    Memory,
    Cpu,
    Constraints,
    Platform,
    HostPort,
    MaxReplicas,
}

impl Failure {
    const ALL: [Failure; 7] = [
        Failure::NotAvailable,
        Failure::Memory,
        Failure::Cpu,
        Failure::Constraints,
        Failure::Platform,
        Failure::HostPort,
        Failure::MaxReplicas,
    ];

    fn index(self) -> usize {
        self as usize
    }

    /// Docker's wording, for `n` nodes failing this filter (docker says
    /// "insufficient resources" for both memory and CPU; we say which).
    #[must_use]
    pub fn explain(self, n: usize) -> String {
        let nodes = if n == 1 {
            "1 node".to_owned()
        } else {
            format!("{n} nodes")
        };
        match self {
            Failure::NotAvailable => format!("{nodes} not available for new tasks"),
            Failure::Memory => format!("insufficient memory on {nodes}"),
            Failure::Cpu => format!("insufficient CPU on {nodes}"),
            Failure::Constraints => format!("scheduling constraints not satisfied on {nodes}"),
            Failure::Platform => format!("unsupported platform on {nodes}"),
            Failure::HostPort => format!("host-mode port already in use on {nodes}"),
            Failure::MaxReplicas => "max replicas per node limit exceed".to_owned(),
        }
    }
}

/// How many nodes failed each filter.
#[derive(Debug, Clone, Default)]
pub struct Explanation {
    counts: [usize; 7],
}

impl Explanation {
    pub fn add(&mut self, f: Failure) {
        self.counts[f.index()] += 1;
    }

    /// "insufficient memory on 3 nodes; 1 node not available for new
    /// tasks": most frequent first, ties in pipeline order; empty if no node
    /// failed.
    #[must_use]
    pub fn text(&self) -> String {
        let mut failed: Vec<(usize, Failure)> = Failure::ALL
            .iter()
            .map(|f| (self.counts[f.index()], *f))
            .filter(|(n, _)| *n > 0)
            .collect();
        // Stable: equal counts keep pipeline order.
        failed.sort_by_key(|f| std::cmp::Reverse(f.0));
        failed
            .iter()
            .map(|(n, f)| f.explain(*n))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// The reason for a task left pending after trying every node.
    #[must_use]
    pub fn no_suitable_node(&self) -> String {
        let text = self.text();
        if text.is_empty() {
            "no suitable node".to_owned()
        } else {
            format!("no suitable node ({text})")
        }
    }
}

/// Whether a node takes new tasks at all.
#[must_use]
pub fn node_available(node: &pb::Node) -> bool {
    let ready = node
        .status
        .as_ref()
        .is_some_and(|s| s.state == pb::NodeState::Ready as i32);
    let active = node
        .spec
        .as_ref()
        .is_none_or(|s| s.availability == pb::NodeAvailability::Active as i32);
    ready && active
}

/// Docker normalises these architecture names before comparing.
fn normalise_arch(arch: &str) -> &str {
    match arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn platform_supported(wanted: &[pb::Platform], node: &pb::Node) -> bool {
    let Some(have) = node.description.as_ref().and_then(|d| d.platform.as_ref()) else {
        return false;
    };
    wanted.iter().any(|p| {
        (p.architecture.is_empty()
            || normalise_arch(&p.architecture) == normalise_arch(&have.architecture))
            && (p.os.is_empty() || p.os == have.os)
    })
}

/// What a task needs from a node. Tasks of one service version share it,
/// so the scheduler computes it once per group.
#[derive(Debug, Clone, PartialEq)]
pub struct Needs {
    pub service_id: String,
    pub nano_cpus: i64,
    pub memory_bytes: i64,
    pub constraints: Vec<Constraint>,
    pub platforms: Vec<pb::Platform>,
    pub host_ports: Vec<(i32, u32)>,
    /// 0 = unlimited.
    pub max_replicas: u64,
}

impl Needs {
    #[must_use]
    pub fn of(task: &pb::Task) -> Needs {
        let placement = task.spec.as_ref().and_then(|s| s.placement.as_ref());
        let (nano_cpus, memory_bytes) = reservations(task.spec.as_ref());
        Needs {
            service_id: task.service_id.clone(),
            nano_cpus,
            memory_bytes,
            // The control API rejects bad constraints; one that slipped
            // through disables the filter, as in swarmkit.
            constraints: placement
                .and_then(|p| parse_constraints(&p.constraints).ok())
                .unwrap_or_default(),
            platforms: placement.map(|p| p.platforms.clone()).unwrap_or_default(),
            host_ports: host_ports(task).collect(),
            max_replicas: placement.map_or(0, |p| p.max_replicas),
        }
    }

    /// Runs the pipeline on one node; `service_tasks` is the number of
    /// active tasks of this service already there.
    pub fn check(&self, info: &NodeInfo, service_tasks: u64) -> Result<(), Failure> {
        let node = &*info.node;
        if !node_available(node) {
            return Err(Failure::NotAvailable);
        }
        if self.memory_bytes > 0 && self.memory_bytes > info.available.memory_bytes {
            return Err(Failure::Memory);
        }
        if self.nano_cpus > 0 && self.nano_cpus > info.available.nano_cpus {
            return Err(Failure::Cpu);
        }
        if !self.constraints.iter().all(|c| c.matches_node(node)) {
            return Err(Failure::Constraints);
        }
        if !self.platforms.is_empty() && !platform_supported(&self.platforms, node) {
            return Err(Failure::Platform);
        }
        if self.host_ports.iter().any(|p| info.host_ports.contains(p)) {
            return Err(Failure::HostPort);
        }
        if self.max_replicas > 0 && service_tasks >= self.max_replicas {
            return Err(Failure::MaxReplicas);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explanation_orders_by_count_then_pipeline() {
        let mut e = Explanation::default();
        assert_eq!(e.no_suitable_node(), "no suitable node");
        for _ in 0..3 {
            e.add(Failure::Memory);
        }
        for _ in 0..2 {
            e.add(Failure::NotAvailable);
        }
        e.add(Failure::Constraints);
        assert_eq!(
            e.no_suitable_node(),
            "no suitable node (insufficient memory on 3 nodes; 2 nodes not available for new \
             tasks; scheduling constraints not satisfied on 1 node)"
        );
        e.add(Failure::Constraints);
        assert_eq!(
            e.text(),
            "insufficient memory on 3 nodes; 2 nodes not available for new tasks; scheduling \
             constraints not satisfied on 2 nodes"
        );
    }

    #[test]
    fn every_reason_reads_like_docker() {
        assert_eq!(
            Failure::NotAvailable.explain(1),
            "1 node not available for new tasks"
        );
        assert_eq!(Failure::Cpu.explain(4), "insufficient CPU on 4 nodes");
        assert_eq!(
            Failure::Platform.explain(2),
            "unsupported platform on 2 nodes"
        );
        assert_eq!(
            Failure::HostPort.explain(1),
            "host-mode port already in use on 1 node"
        );
        assert_eq!(
            Failure::MaxReplicas.explain(9),
            "max replicas per node limit exceed"
        );
    }

    #[test]
    fn platform_names_are_normalised() {
        let node = pb::Node {
            description: Some(pb::NodeDescription {
                platform: Some(pb::Platform {
                    os: "linux".into(),
                    architecture: "x86_64".into(),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let p = |os: &str, arch: &str| pb::Platform {
            os: os.into(),
            architecture: arch.into(),
        };
        assert!(platform_supported(&[p("linux", "amd64")], &node));
        assert!(platform_supported(&[p("", "")], &node));
        assert!(platform_supported(
            &[p("windows", ""), p("linux", "")],
            &node
        ));
        assert!(!platform_supported(&[p("linux", "arm64")], &node));
        assert!(!platform_supported(&[p("linux", "")], &pb::Node::default()));
    }
}
