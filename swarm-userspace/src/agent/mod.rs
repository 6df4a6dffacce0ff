//! The agent: a node's side of its session with the leader.
//!
//! Owns finding the leader (trying the managers it knows, following
//! redirects), keeping the session alive with heartbeats, following the
//! manager list the leader sends, handing assignments to the worker and
//! shipping the worker's task statuses back (batched, one call in flight),
//! and renewing the node's certificate (at a random point between 50% and
//! 80% of its life, and at once when the managers changed the node's
//! role). Running the assigned tasks is the worker's job; this module must
//! never touch containers itself.
use std::{sync::Arc, time::Duration};

use swarm_proto::v1::{self as pb, dispatcher_client::DispatcherClient};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::{
    ca::{self, NodeCert, NodeKey, Role, RootCert, TlsIdentity},
    dispatcher::LEADER_ADDR_KEY,
    raft::network::ChannelProvider,
    supervisor::{ControlLoop, LoopError},
    worker::{Worker, status::MAX_BATCH},
};

/// What the agent learns that the node should act on or remember.
pub trait AgentEvents: Send + Sync + 'static {
    /// The leader sent a new list of manager addresses (leader first).
    fn managers_changed(&self, managers: &[String]);
    /// A renewed certificate carries a different role (promote/demote).
    fn role_changed(&self, role: Role);
}

/// The node's certificate and where it lives, for renewal.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub root: RootCert,
    pub cert: NodeCert,
    pub identity: TlsIdentity,
    pub dir: std::path::PathBuf,
    /// Sent with renewals, used if the renewal makes this node a manager.
    pub raft_id: u64,
    pub advertise_addr: String,
}

pub struct Agent {
    node_id: String,
    creds: Credentials,
    /// When the certificate is due for renewal.
    renew_at: tokio::time::Instant,
    description: pb::NodeDescription,
    channels: Arc<dyn ChannelProvider>,
    managers: Vec<String>,
    events: Arc<dyn AgentEvents>,
    worker: Worker,
    /// The heartbeat period of the session in progress, once the leader
    /// answered its first beat; taken when the session ends.
    up: Option<Duration>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("node_id", &self.node_id)
            .finish()
    }
}

enum SessionEnd {
    Shutdown,
    /// Go to this address next (the leader, as a follower told us).
    Redirect(String),
    Failed(String),
}

impl Agent {
    pub fn new(
        node_id: String,
        description: pb::NodeDescription,
        channels: Arc<dyn ChannelProvider>,
        managers: Vec<String>,
        worker: Worker,
        events: Arc<dyn AgentEvents>,
        creds: Credentials,
    ) -> Self {
        let renew_at = renewal_instant(&creds.cert);
        Agent {
            node_id,
            creds,
            renew_at,
            description,
            channels,
            managers,
            events,
            worker,
            up: None,
        }
    }

    async fn session(&mut self, addr: &str, shutdown: &CancellationToken) -> SessionEnd {
        let channel = match self.channels.channel(addr) {
            Ok(c) => c,
            Err(e) => return SessionEnd::Failed(e),
        };
        let mut client = DispatcherClient::new(channel.clone());
        let req = pb::SessionRequest {
            description: Some(self.description.clone()),
            session_id: String::new(),
        };
        let mut stream = match client.session(req).await {
            Ok(s) => s.into_inner(),
            Err(s) => return redirect_or_fail(&s),
        };
        let first = match stream.message().await {
            Ok(Some(m)) => m,
            Ok(None) => return SessionEnd::Failed("session closed at once".into()),
            Err(s) => return redirect_or_fail(&s),
        };
        let session_id = first.session_id.clone();
        self.apply_session_message(&first);
        tracing::info!(manager = addr, %session_id, "session with the leader established");
        let mut beat = Beat::new(first.heartbeat_period_ms);

        let mut assignments = match client
            .assignments(pb::AssignmentsRequest {
                session_id: session_id.clone(),
            })
            .await
        {
            Ok(s) => s.into_inner(),
            Err(s) => return redirect_or_fail(&s),
        };

        // Heartbeats go as messages on one stream; its answers come back
        // on the same stream, one per beat. The first beat goes with the
        // stream's opening: tonic returns from the call only once the
        // leader's response headers arrive, which its server sends with
        // the first answer.
        let (beats_tx, beats_rx) = tokio::sync::mpsc::channel(1);
        // Room for one, and nothing sent yet: cannot fail.
        let _ = beats_tx.try_send(pb::HeartbeatRequest {
            session_id: session_id.clone(),
        });
        let deadline = tokio::time::Instant::now() + beat.patience();
        let opened = tokio::time::timeout_at(
            deadline,
            client.heartbeats(tokio_stream::wrappers::ReceiverStream::new(beats_rx)),
        )
        .await;
        let mut answers = match opened {
            Ok(Ok(s)) => s.into_inner(),
            Ok(Err(s)) => return redirect_or_fail(&s),
            Err(_) => return SessionEnd::Failed("heartbeat timed out".into()),
        };
        match next_answer(&mut answers, deadline).await {
            Ok(period_ms) => beat.answered(period_ms),
            Err(end) => return end,
        }
        self.up = Some(beat.period);

        // A new leader may have missed any earlier report.
        self.worker.statuses().resend_all();
        let mut sending = InFlight(None);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return SessionEnd::Shutdown,
                () = tokio::time::sleep_until(self.renew_at) => {
                    if let Err(e) = self.renew(&channel).await {
                        tracing::warn!(error = %e, "certificate renewal failed; retrying in 5 s");
                        self.renew_at = tokio::time::Instant::now() + Duration::from_secs(5);
                    }
                }
                () = beat.due() => {
                    let hb = pb::HeartbeatRequest { session_id: session_id.clone() };
                    // The previous beat was answered, so the stream took it
                    // and there is room: this does not wait.
                    if beats_tx.send(hb).await.is_err() {
                        return SessionEnd::Failed("the leader ended the heartbeat stream".into());
                    }
                    let deadline = tokio::time::Instant::now() + beat.patience();
                    match next_answer(&mut answers, deadline).await {
                        Ok(period_ms) => beat.answered(period_ms),
                        Err(end) => return end,
                    }
                    self.up = Some(beat.period);
                }
                msg = stream.message() => match msg {
                    Ok(Some(m)) => self.apply_session_message(&m),
                    Ok(None) => return SessionEnd::Failed("the leader ended the session".into()),
                    Err(s) => return redirect_or_fail(&s),
                },
                msg = assignments.message() => match msg {
                    Ok(Some(m)) => self.worker.assign(m),
                    Ok(None) => return SessionEnd::Failed("the assignment stream ended".into()),
                    Err(s) => return redirect_or_fail(&s),
                },
                // Everything that changed since the last call goes in the
                // next one; one call at a time.
                () = self.worker.statuses().changed(), if sending.0.is_none() => {
                    let updates = self.worker.statuses().take(MAX_BATCH);
                    if !updates.is_empty() {
                        let req = pb::UpdateTaskStatusRequest { session_id: session_id.clone(), updates };
                        let mut c = client.clone();
                        sending.0 = Some(tokio::spawn(async move { c.update_task_status(req).await.map(|_| ()) }));
                    }
                }
                res = sending.finished() => match res {
                    Ok(()) => {}
                    // The new session sends every status again.
                    Err(s) => return redirect_or_fail(&s),
                },
            }
        }
    }

    fn apply_session_message(&mut self, m: &pb::SessionMessage) {
        if !m.managers.is_empty() && m.managers != self.managers {
            self.managers = m.managers.clone();
            self.events.managers_changed(&self.managers);
        }
        // The managers changed our role: renew now to get a certificate
        // that says so.
        if let Some(node) = &m.node {
            let want = if node.role == pb::NodeRole::Manager as i32 {
                Role::Manager
            } else {
                Role::Worker
            };
            if want != self.creds.cert.identity().role {
                tracing::info!(
                    ?want,
                    "role changed by the managers; renewing the certificate"
                );
                self.renew_at = tokio::time::Instant::now();
            }
        }
    }

    /// Gets a new certificate for a new key from the manager at `addr`.
    async fn renew(&mut self, client: &Channel) -> Result<(), String> {
        let key = NodeKey::generate().map_err(|e| e.to_string())?;
        let csr = key
            .generate_csr(Some(&self.node_id))
            .map_err(|e| e.to_string())?;
        let resp = pb::node_ca_client::NodeCaClient::new(client.clone())
            .renew_node_certificate(pb::RenewNodeCertificateRequest {
                csr_pem: csr.into_bytes(),
                raft_id: self.creds.raft_id,
                advertise_addr: self.creds.advertise_addr.clone(),
            })
            .await
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
            .into_inner();
        let cert = NodeCert::from_pem(&String::from_utf8_lossy(&resp.certificate_pem))
            .map_err(|e| e.to_string())?;
        if !cert.matches_key(&key) {
            return Err("the renewed certificate is not for our key".into());
        }
        let dir = self.creds.dir.clone();
        let (c2, k2) = (
            cert.clone(),
            NodeKey::from_pem(&key.to_pem()).map_err(|e| e.to_string())?,
        );
        tokio::task::spawn_blocking(move || ca::store::save_node(&dir, &c2, &k2))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        self.creds
            .identity
            .replace(&self.creds.root, &cert, &key)
            .map_err(|e| e.to_string())?;
        let old_role = self.creds.cert.identity().role;
        let new_role = cert.identity().role;
        self.creds.cert = cert;
        self.renew_at = renewal_instant(&self.creds.cert);
        tracing::info!(role = ?new_role, "node certificate renewed");
        if old_role != new_role {
            self.events.role_changed(new_role);
        }
        Ok(())
    }
}

/// The leader's answer to the beat just sent, by `deadline`: the period to
/// keep, or how the session ends.
async fn next_answer(
    answers: &mut tonic::Streaming<pb::HeartbeatResponse>,
    deadline: tokio::time::Instant,
) -> Result<u64, SessionEnd> {
    match tokio::time::timeout_at(deadline, answers.message()).await {
        Ok(Ok(Some(r))) => Ok(r.period_ms),
        Ok(Ok(None)) => Err(SessionEnd::Failed(
            "the leader ended the heartbeat stream".into(),
        )),
        Ok(Err(s)) => Err(redirect_or_fail(&s)),
        Err(_) => Err(SessionEnd::Failed("heartbeat timed out".into())),
    }
}

/// When the next heartbeat is due: one period (the one the leader gave
/// last) after the previous answer, as swarmkit's agent does. The leader
/// marks a node down only after it missed several periods, and it may
/// lengthen the period as the swarm grows, so every answer resets it.
#[derive(Debug)]
struct Beat {
    period: Duration,
    next: tokio::time::Instant,
}

impl Beat {
    /// Shortest period taken from a leader, against a zero or tiny value.
    const MIN_PERIOD: Duration = Duration::from_millis(100);

    fn new(period_ms: u64) -> Self {
        let period = Duration::from_millis(period_ms).max(Self::MIN_PERIOD);
        Beat {
            period,
            next: tokio::time::Instant::now() + period,
        }
    }

    /// How long to wait for the leader's answer before giving the session
    /// up: as long as the leader waits before it marks this node down.
    /// A busy leader answers late (seconds, while it sends out a hundred
    /// thousand assignments); giving up sooner only adds a new session,
    /// its resync and its status resend to what it has to do.
    fn patience(&self) -> Duration {
        crate::dispatcher::grace(self.period)
    }

    async fn due(&self) {
        tokio::time::sleep_until(self.next).await;
    }

    /// The leader answered, giving `period_ms` until the next heartbeat.
    fn answered(&mut self, period_ms: u64) {
        self.period = Duration::from_millis(period_ms).max(Self::MIN_PERIOD);
        self.next = tokio::time::Instant::now() + self.period;
    }
}

/// The UpdateTaskStatus call in flight, if any; aborted with the session.
struct InFlight(Option<tokio::task::JoinHandle<Result<(), tonic::Status>>>);

impl InFlight {
    /// Resolves when the call in flight ends (never if there is none).
    async fn finished(&mut self) -> Result<(), tonic::Status> {
        let Some(h) = self.0.as_mut() else {
            return std::future::pending().await;
        };
        let res = h.await;
        self.0 = None;
        res.unwrap_or_else(|e| {
            Err(tonic::Status::internal(format!(
                "the status report task failed: {e}"
            )))
        })
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            h.abort();
        }
    }
}

/// A random point between 50% and 80% of the certificate's life, as a
/// tokio instant (now, if that point has passed).
fn renewal_instant(cert: &NodeCert) -> tokio::time::Instant {
    let at = cert.renewal_deadline(&mut rand::rng());
    let wait = at
        .duration_since(std::time::SystemTime::now())
        .unwrap_or(Duration::ZERO);
    tokio::time::Instant::now() + wait
}

/// The pause after the first failed session attempt; it doubles with each
/// further failure, up to [`MAX_SESSION_BACKOFF`].
const INITIAL_SESSION_BACKOFF: Duration = Duration::from_millis(100);
/// The longest pause between two failed session attempts.
const MAX_SESSION_BACKOFF: Duration = Duration::from_secs(1);

/// The pause before reconnecting after a session that was up ended: a part
/// `unit` (in [0, 1)) of its heartbeat period. When a leader dies, every
/// node loses its session in the same instant; the leader sized the period
/// it gave so that all its nodes' calls together stay within what it takes
/// each second ([`crate::dispatcher::HEARTBEATS_PER_SECOND`]), so spreading
/// the reconnects over one period brings them to the next leader at that
/// rate. Dialing at once, 10,000 simulated nodes' handshakes outran their
/// connect timeouts and were redone, four or five failed attempts per
/// node. A node is silent for at most one period more than a heartbeat
/// would leave it, well within the three the new leader allows.
fn reconnect_pause(period: Duration, unit: f64) -> Duration {
    period.mul_f64(unit.clamp(0.0, 1.0))
}

/// The pause before the next session attempt: `backoff` scaled by a factor
/// in [0.5, 1.5) drawn from `unit` (in [0, 1)). Every node of a swarm loses
/// its session in the same instant when the leader goes; without the
/// spread they would all dial the new leader in step, retry in step after
/// the handshakes that timed out, and keep the storm going.
fn jittered(backoff: Duration, unit: f64) -> Duration {
    backoff.mul_f64(0.5 + unit.clamp(0.0, 1.0))
}

/// The manager to try next, in turn (`next` counts the turns), but never
/// the one whose session just `failed` when there is another: the leader
/// that died is the manager a node is most likely to pick again, and a
/// machine that is gone (no reset, only silence) costs a whole connect
/// timeout each time.
fn next_manager<'a>(
    managers: &'a [String],
    next: &mut usize,
    failed: Option<&str>,
) -> Option<&'a String> {
    if managers.is_empty() {
        return None;
    }
    let mut pick = &managers[*next % managers.len()];
    *next = next.wrapping_add(1);
    if managers.len() > 1 && failed == Some(pick.as_str()) {
        pick = &managers[*next % managers.len()];
        *next = next.wrapping_add(1);
    }
    Some(pick)
}

fn redirect_or_fail(s: &tonic::Status) -> SessionEnd {
    if s.code() == tonic::Code::FailedPrecondition
        && let Some(addr) = s
            .metadata()
            .get(LEADER_ADDR_KEY)
            .and_then(|v| v.to_str().ok())
    {
        return SessionEnd::Redirect(addr.to_string());
    }
    SessionEnd::Failed(format!("{}: {}", s.code(), s.message()))
}

impl ControlLoop for Agent {
    fn name(&self) -> &'static str {
        "agent"
    }

    async fn run(mut self, shutdown: CancellationToken) -> Result<(), LoopError> {
        let mut next: usize = 0;
        let mut hint: Option<String> = None;
        let mut failed: Option<String> = None;
        let mut backoff = INITIAL_SESSION_BACKOFF;
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            let addr = match hint.take() {
                Some(a) => a,
                None => next_manager(&self.managers, &mut next, failed.as_deref())
                    .ok_or("this node knows no manager; rejoin the swarm")?
                    .clone(),
            };
            let end = self.session(&addr, &shutdown).await;
            failed = matches!(end, SessionEnd::Failed(_)).then(|| addr.clone());
            let was_up = self.up.take();
            match end {
                SessionEnd::Shutdown => return Ok(()),
                SessionEnd::Redirect(leader) => {
                    tracing::debug!(from = %addr, to = %leader, "redirected to the leader");
                    hint = Some(leader);
                    if was_up.is_none() {
                        continue;
                    }
                }
                SessionEnd::Failed(why) => {
                    tracing::warn!(manager = %addr, reason = %why, "session lost; trying the next manager");
                }
            }
            let pause = match was_up {
                Some(period) => {
                    backoff = INITIAL_SESSION_BACKOFF;
                    reconnect_pause(period, rand::random())
                }
                None => {
                    let p = jittered(backoff, rand::random());
                    backoff = (backoff * 2).min(MAX_SESSION_BACKOFF);
                    p
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(pause) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manager_that_just_failed_is_tried_last() {
        let m: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let mut next = 0;
        let mut picks =
            |failed: Option<&str>| next_manager(&m, &mut next, failed).map(String::as_str);
        assert_eq!(picks(None), Some("a"));
        assert_eq!(picks(Some("b")), Some("c"));
        assert_eq!(picks(Some("c")), Some("a"));
        assert_eq!(picks(None), Some("b"));
        // One manager: it is the only one to try.
        let one = vec!["a".to_string()];
        assert_eq!(
            next_manager(&one, &mut 0, Some("a")).map(String::as_str),
            Some("a")
        );
        assert_eq!(next_manager(&[], &mut 0, None), None);
    }

    #[test]
    fn reconnects_after_a_lost_session_spread_over_one_period() {
        let period = Duration::from_secs(5);
        assert_eq!(reconnect_pause(period, 0.0), Duration::ZERO);
        assert_eq!(reconnect_pause(period, 0.5), Duration::from_millis(2500));
        assert_eq!(reconnect_pause(period, 3.0), period);
        assert_eq!(reconnect_pause(period, -3.0), Duration::ZERO);
        // Within the grace the next leader gives a node without a session.
        assert!(reconnect_pause(period, 1.0) < crate::dispatcher::grace(period));
    }

    #[test]
    fn reconnects_spread_around_the_backoff() {
        let b = Duration::from_millis(400);
        assert_eq!(jittered(b, 0.0), Duration::from_millis(200));
        assert_eq!(jittered(b, 0.5), b);
        assert!(jittered(b, 0.999_999) < Duration::from_millis(600));
        // Out-of-range draws stay inside the band.
        assert_eq!(jittered(b, -1.0), Duration::from_millis(200));
        assert_eq!(jittered(b, 7.0), Duration::from_millis(600));
        // A thousand nodes that failed together come back over the whole
        // band, not in one instant.
        let pauses: std::collections::BTreeSet<_> = (0..1000)
            .map(|_| jittered(MAX_SESSION_BACKOFF, rand::random()).as_millis() / 100)
            .collect();
        assert_eq!(
            pauses.len(),
            10,
            "every 100 ms slice of 0.5-1.5 s is used: {pauses:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeats_once_per_period_and_follow_the_period_the_leader_gives() {
        let start = tokio::time::Instant::now();
        let mut beat = Beat::new(1000);
        beat.due().await;
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        // The swarm grew: the leader asks for a beat every 5 s.
        beat.answered(5000);
        assert_eq!(beat.period, Duration::from_secs(5));
        let t = tokio::time::Instant::now();
        beat.due().await;
        assert_eq!(t.elapsed(), Duration::from_secs(5));
    }

    #[test]
    fn the_agent_waits_for_an_answer_as_long_as_the_leader_waits_for_a_beat() {
        let mut beat = Beat::new(1000);
        assert_eq!(beat.patience(), crate::dispatcher::grace(beat.period));
        assert_eq!(beat.patience(), Duration::from_secs(3));
        beat.answered(5000);
        assert_eq!(beat.patience(), Duration::from_secs(15));
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_period_does_not_make_the_agent_spin() {
        let mut beat = Beat::new(0);
        assert_eq!(beat.period, Beat::MIN_PERIOD);
        beat.answered(0);
        let t = tokio::time::Instant::now();
        beat.due().await;
        assert_eq!(t.elapsed(), Beat::MIN_PERIOD);
    }
}
