//! `service logs` and `task logs` through real daemons: the unix socket,
//! a manager's proxy to the leader over mTLS (also from a follower), the
//! refusals. Lines from real containers need the worker and the leader's
//! orchestration loops; until they run, services have no assigned tasks and
//! their logs are empty.
mod support;

use support::*;
use swarm_harness::Topology;

#[test]
fn logs_go_through_the_leader_and_refuse_what_is_not_there() {
    let c = cluster(3, Topology::Bridge);
    form(&c, 2, 1);
    let (n1, n2, n3) = (c.node(1), c.node(2), c.node(3));
    n1.swarm(&["service", "create", "--detach", "--name", "web", "bb:1"])
        .success();

    // Nothing is assigned yet: an empty stream that ends, from the leader
    // and through a follower.
    for n in [n1, n2] {
        let out = n.swarm(&["service", "logs", "web"]).success();
        assert_eq!(out.stdout, "", "{out}");
        assert_eq!(out.stderr, "", "{out}");
    }
    n2.swarm(&["service", "logs", "--tail", "1", "-t", "web"])
        .success();

    let missing = n1.swarm(&["service", "logs", "nosuch"]).failure();
    assert!(
        missing.stderr.contains("no such task or service: nosuch"),
        "{missing}"
    );
    let missing = n2.swarm(&["task", "logs", "nosuch"]).failure();
    assert!(missing.stderr.contains("no such task: nosuch"), "{missing}");

    let worker = n3.swarm(&["service", "logs", "web"]).failure();
    assert!(
        worker.stderr.contains("This node is not a swarm manager"),
        "{worker}"
    );
}
