//! swarm's benchmarks, run through `cargo xtask bench` (which builds this
//! crate and the `swarm` binary with the release profile first).
//!
//! Every benchmark compares a candidate with a baseline measured in the
//! same run, prints a table (candidate, baseline, ratio) with the machine's
//! load before and after, and writes the same as JSON to
//! `<target>/bench/<name>.json` ([`report`]) and as a chart to
//! `<target>/bench/<name>.png` ([`chart`]).
//!
//! - [`containers`]: one container from nothing to running (rootfs mount,
//!   libcontainer create, start) one at a time and many at once on one
//!   node; baseline is a plain fork/exec of the same command.
//! - [`failover`]: leader `kill -9` to the first accepted write, on a
//!   3-manager swarm of real daemons in network namespaces; baseline is
//!   docker's Raft timing.
//! - [`mesh`]: short HTTP requests (wrk) and small UDP datagrams through
//!   the routing mesh of the eBPF load balancer; baselines are direct
//!   access to the backend (for UDP with an XDP_PASS program on the
//!   nodes), nftables DNAT and a userspace proxy.
//! - [`overlay`]: TCP throughput and round trips between containers on two
//!   nodes over the eBPF/VXLAN overlay; baseline is the same nodes talking
//!   over the plain underlay.
//! - [`raft`]: Raft write throughput and latency on 3 in-process managers
//!   in network namespaces over mutual TLS; baseline is one manager.
//! - [`scale`]: simulated nodes (`swarm simulate`) joining a 3-manager
//!   swarm, the leader's heartbeat CPU, placement throughput, memory per
//!   task; baselines are the idle leader and the in-process scheduler.
//! - [`store`]: the store's write path for a placement (creates,
//!   assignments, status reports) in this process, applied as every
//!   manager applies it and prepared as the leader does; baseline is a
//!   plain `BTreeMap` of tasks.
//! - [`services`]: service create, scale, rolling update and removal with
//!   real containers on 3 nodes; baseline is the fake executor.
//!
//! Benchmarks are not tests: they never run in `scripts/test.sh` (only the
//! unit tests of the helpers here do). Everything they create (namespaces,
//! daemons, temp dirs, threads) is gone when they return, also on error or
//! Ctrl-C ([`stop`]).

pub mod chart;
pub mod containers;
pub mod failover;
pub mod mesh;
pub mod overlay;
pub mod raft;
pub mod report;
pub mod scale;
pub mod services;
pub mod stats;
pub mod stop;
pub mod store;
