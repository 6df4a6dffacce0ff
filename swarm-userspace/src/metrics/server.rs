//! The `/metrics` endpoint (`--metrics-addr`), refreshing state metrics
//! from their owners on every scrape.
use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{PoisonError, atomic::Ordering},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use swarm_proto::v1 as pb;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{
    ActionLabel, DatapathLabels, FrontendLabels, KindLabel, MapLabel, ReasonLabel, StateLabel,
    WhereLabel, metrics,
};
use crate::{
    api::server::SharedDataplane,
    node::NodeHandle,
    supervisor::{ControlLoop, LoopError},
};

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot serve metrics on {addr}: {source}; choose another --metrics-addr")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

pub struct MetricsServer {
    listener: TcpListener,
    node: NodeHandle,
    dataplane: Option<SharedDataplane>,
}

impl std::fmt::Debug for MetricsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MetricsServer")
    }
}

impl MetricsServer {
    pub async fn bind(
        addr: SocketAddr,
        node: NodeHandle,
        dataplane: Option<SharedDataplane>,
    ) -> Result<Self, MetricsError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| MetricsError::Bind { addr, source })?;
        Ok(MetricsServer {
            listener,
            node,
            dataplane,
        })
    }
}

/// Reads the state metrics from the node's manager and data plane.
pub fn refresh(node: &NodeHandle, dataplane: Option<&SharedDataplane>) {
    let m = metrics();
    if let Some(mgr) = node.manager() {
        let r = mgr.raft.metrics().borrow().clone();
        m.raft_term
            .set(i64::try_from(r.current_term).unwrap_or(i64::MAX));
        m.raft_is_leader
            .set(i64::from(r.current_leader == Some(r.id)));
        m.raft_last_log_index
            .set(i64::try_from(r.last_log_index.unwrap_or(0)).unwrap_or(i64::MAX));
        m.raft_last_applied_index
            .set(i64::try_from(r.last_applied.map_or(0, |l| l.index)).unwrap_or(i64::MAX));
        if let Ok(n) = mgr.storage.log.len() {
            m.raft_log_entries.set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        m.raft_snapshots
            .set(i64::try_from(mgr.storage.state_machine.snapshot_count()).unwrap_or(i64::MAX));
        let (reachable, voters) = mgr.proposer.reachability();
        m.raft_managers
            .set(i64::try_from(voters).unwrap_or(i64::MAX));
        m.raft_managers_reachable
            .set(i64::try_from(reachable).unwrap_or(i64::MAX));

        let view = mgr.store.view();
        for (kind, n) in view.counts() {
            m.store_objects
                .get_or_create(&KindLabel {
                    kind: kind.as_str().to_string(),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        // One pass over the nodes, and the store's per-state task counts:
        // a scrape must stay cheap with 10,000 nodes and 100,000 tasks.
        let mut nodes_by_state = std::collections::BTreeMap::<i32, i64>::new();
        for x in view.list::<pb::Node>() {
            *nodes_by_state
                .entry(x.status.as_ref().map_or(0, |st| st.state))
                .or_default() += 1;
        }
        for s in [
            pb::NodeState::Unknown,
            pb::NodeState::Down,
            pb::NodeState::Ready,
            pb::NodeState::Disconnected,
        ] {
            m.manager_nodes
                .get_or_create(&StateLabel {
                    state: state_label(s.as_str_name(), "NODE_STATE_"),
                })
                .set(nodes_by_state.get(&(s as i32)).copied().unwrap_or(0));
        }
        let by_state: std::collections::BTreeMap<i32, i64> = view
            .task_state_counts()
            .map(|(s, n)| (s, i64::try_from(n).unwrap_or(i64::MAX)))
            .collect();
        for s in [
            pb::TaskState::New,
            pb::TaskState::Pending,
            pb::TaskState::Assigned,
            pb::TaskState::Accepted,
            pb::TaskState::Preparing,
            pb::TaskState::Ready,
            pb::TaskState::Starting,
            pb::TaskState::Running,
            pb::TaskState::Complete,
            pb::TaskState::Shutdown,
            pb::TaskState::Failed,
            pb::TaskState::Rejected,
            pb::TaskState::Remove,
            pb::TaskState::Orphaned,
        ] {
            m.manager_tasks
                .get_or_create(&StateLabel {
                    state: state_label(s.as_str_name(), "TASK_STATE_"),
                })
                .set(by_state.get(&(s as i32)).copied().unwrap_or(0));
        }
    } else {
        m.raft_is_leader.set(0);
    }

    let counts = node.worker().task_counts();
    for s in [
        pb::TaskState::Assigned,
        pb::TaskState::Accepted,
        pb::TaskState::Preparing,
        pb::TaskState::Ready,
        pb::TaskState::Starting,
        pb::TaskState::Running,
        pb::TaskState::Complete,
        pb::TaskState::Shutdown,
        pb::TaskState::Failed,
        pb::TaskState::Rejected,
    ] {
        let state = state_label(s.as_str_name(), "TASK_STATE_");
        let n = counts.get(&state).copied().unwrap_or(0);
        m.agent_tasks.get_or_create(&StateLabel { state }).set(n);
    }

    if let Some(dp) = dataplane {
        let dp = dp.lock().unwrap_or_else(PoisonError::into_inner);
        match dp.status() {
            Ok(status) => {
                for ((iface, dir, class), c) in &status.counters {
                    let labels = DatapathLabels {
                        interface: iface.clone(),
                        direction: (*dir).to_string(),
                        class: (*class).to_string(),
                    };
                    m.datapath_packets
                        .get_or_create(&labels)
                        .inner()
                        .store(c.packets, Ordering::Relaxed);
                    m.datapath_bytes
                        .get_or_create(&labels)
                        .inner()
                        .store(c.bytes, Ordering::Relaxed);
                }
                for map in &status.maps {
                    let label = MapLabel {
                        map_name: map.name.clone(),
                    };
                    m.datapath_map_entries
                        .get_or_create(&label)
                        .set(i64::try_from(map.entries).unwrap_or(i64::MAX));
                    m.datapath_map_capacity
                        .get_or_create(&label)
                        .set(i64::from(map.capacity));
                }
                overlay_metrics(&status.overlay);
                lb_metrics(&status.lb);
            }
            Err(e) => tracing::warn!(error = %e, "reading data plane counters for metrics"),
        }
    }
}

fn state_label(name: &str, prefix: &str) -> String {
    name.trim_start_matches(prefix).to_ascii_lowercase()
}

fn render(node: &NodeHandle, dataplane: Option<&SharedDataplane>) -> Response<Full<Bytes>> {
    refresh(node, dataplane);
    let mut out = String::new();
    match prometheus_client::encoding::text::encode(&mut out, &metrics().registry) {
        Ok(()) => Response::builder()
            .header(
                "content-type",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )
            .body(Full::new(Bytes::from(out)))
            .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()))),
        Err(e) => {
            let mut r = Response::new(Full::new(Bytes::from(format!("encoding failed: {e}"))));
            *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            r
        }
    }
}

impl ControlLoop for MetricsServer {
    fn name(&self) -> &'static str {
        "metrics"
    }

    async fn run(self, shutdown: CancellationToken) -> Result<(), LoopError> {
        if let Ok(a) = self.listener.local_addr() {
            tracing::info!(addr = %a, "serving Prometheus metrics on /metrics");
        }
        loop {
            let (stream, _) = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                r = self.listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::debug!(error = %e, "metrics accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let node = self.node.clone();
            let dp = self.dataplane.clone();
            let stop = shutdown.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let node = node.clone();
                    let dp = dp.clone();
                    async move {
                        let resp = if req.uri().path() == "/metrics" {
                            render(&node, dp.as_ref())
                        } else {
                            let mut r = Response::new(Full::new(Bytes::from_static(
                                b"not found: metrics are on /metrics\n",
                            )));
                            *r.status_mut() = StatusCode::NOT_FOUND;
                            r
                        };
                        Ok::<_, Infallible>(resp)
                    }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc);
                tokio::select! {
                    _ = conn => {}
                    () = stop.cancelled() => {}
                }
            });
        }
    }
}

/// The overlay's counters and endpoint counts.
fn overlay_metrics(o: &crate::dataplane::OverlayStatus) {
    let m = metrics();
    for (action, c) in &o.actions {
        let l = ActionLabel {
            action: (*action).to_string(),
        };
        m.overlay_packets
            .get_or_create(&l)
            .inner()
            .store(c.packets, Ordering::Relaxed);
        m.overlay_bytes
            .get_or_create(&l)
            .inner()
            .store(c.bytes, Ordering::Relaxed);
    }
    for (reason, c) in &o.drops {
        m.overlay_drops
            .get_or_create(&ReasonLabel {
                reason: (*reason).to_string(),
            })
            .inner()
            .store(c.packets, Ordering::Relaxed);
    }
    for (location, n) in [("local", o.local_endpoints), ("remote", o.remote_endpoints)] {
        m.overlay_endpoints
            .get_or_create(&WhereLabel {
                location: location.to_string(),
            })
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
}

/// The load balancer's counters and table sizes.
fn lb_metrics(lb: &crate::dataplane::LbStatus) {
    let m = metrics();
    for (action, c) in &lb.actions {
        m.lb_packets
            .get_or_create(&ActionLabel {
                action: (*action).to_string(),
            })
            .inner()
            .store(c.packets, Ordering::Relaxed);
    }
    for (reason, c) in &lb.drops {
        m.lb_drops
            .get_or_create(&ReasonLabel {
                reason: (*reason).to_string(),
            })
            .inner()
            .store(c.packets, Ordering::Relaxed);
    }
    for (frontend, (to, back)) in &lb.per_service {
        for (direction, c) in [("to_backend", to), ("reply", back)] {
            let l = FrontendLabels {
                frontend: frontend.clone(),
                direction: direction.to_string(),
            };
            m.lb_service_packets
                .get_or_create(&l)
                .inner()
                .store(c.packets, Ordering::Relaxed);
            m.lb_service_bytes
                .get_or_create(&l)
                .inner()
                .store(c.bytes, Ordering::Relaxed);
        }
    }
    m.lb_conntrack_entries
        .set(i64::try_from(lb.ct_entries).unwrap_or(i64::MAX));
    m.lb_conntrack_capacity.set(i64::from(lb.ct_capacity));
    m.lb_conntrack_expired
        .inner()
        .store(lb.ct_expired_total, Ordering::Relaxed);
    m.lb_backends
        .set(i64::try_from(lb.backends).unwrap_or(i64::MAX));
}
