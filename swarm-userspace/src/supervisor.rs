//! Owns a node's control loops and their lifetime.
//!
//! Every long-running part of a node is a [`ControlLoop`]: a struct whose
//! `run(self, shutdown)` returns only when `shutdown` fires or the loop
//! fails. The supervisor starts them, and treats any loop that ends on its
//! own, with or without an error, as fatal for the node: a half-working
//! daemon is worse than a dead one that its init system restarts. Shutdown
//! has a deadline; a loop that overstays it is abandoned and reported.
//! The supervisor never does a loop's work and never retries a loop.
use std::{future::Future, pin::Pin, time::Duration};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Error a control loop returns; boxed so loops keep their own error enums.
pub type LoopError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A long-running part of a node.
pub trait ControlLoop: Send + 'static {
    /// Short name for logs and errors, e.g. "api".
    fn name(&self) -> &'static str;
    /// Runs until `shutdown` is cancelled (then returns `Ok`) or fails.
    fn run(self, shutdown: CancellationToken)
    -> impl Future<Output = Result<(), LoopError>> + Send;
}

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("control loop {name:?} failed: {source}")]
    LoopFailed {
        name: &'static str,
        #[source]
        source: LoopError,
    },
    #[error("control loop {name:?} exited unexpectedly without an error")]
    LoopExited { name: &'static str },
    #[error("control loop {name:?} panicked")]
    LoopPanicked { name: &'static str },
    #[error("shutdown deadline of {deadline:?} passed; still running: {still_running:?}")]
    ShutdownTimedOut {
        deadline: Duration,
        still_running: Vec<&'static str>,
    },
}

type Outcome = (&'static str, Result<(), LoopError>);

/// Runs control loops; see the module docs for the failure policy.
pub struct Supervisor {
    loops: JoinSet<Outcome>,
    names: Vec<(tokio::task::Id, &'static str)>,
    shutdown: CancellationToken,
    deadline: Duration,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("loops", &self.names)
            .field("deadline", &self.deadline)
            .finish()
    }
}

impl Supervisor {
    /// `deadline` bounds how long shutdown waits for the loops.
    pub fn new(deadline: Duration) -> Self {
        Supervisor {
            loops: JoinSet::new(),
            names: Vec::new(),
            shutdown: CancellationToken::new(),
            deadline,
        }
    }

    /// The token every loop watches; cancel it to stop the node.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    pub fn spawn<L: ControlLoop>(&mut self, l: L) {
        let name = l.name();
        let token = self.shutdown.child_token();
        let fut: Pin<Box<dyn Future<Output = Result<(), LoopError>> + Send>> =
            Box::pin(l.run(token));
        let handle = self.loops.spawn(async move { (name, fut.await) });
        self.names.push((handle.id(), name));
        tracing::debug!(loop_name = name, "control loop started");
    }

    fn name_of(&self, id: tokio::task::Id) -> &'static str {
        self.names
            .iter()
            .find(|(i, _)| *i == id)
            .map_or("unknown", |(_, n)| n)
    }

    /// Runs until `stop` resolves (a clean shutdown) or a loop ends on its
    /// own (fatal). Either way every loop is then asked to stop and given
    /// until the deadline. Returns the first fatal error, if any.
    pub async fn run_until(
        mut self,
        stop: impl Future<Output = ()>,
    ) -> Result<(), SupervisorError> {
        let mut fatal = None;
        tokio::select! {
            () = stop => {
                tracing::info!("shutting down");
            }
            () = self.shutdown.cancelled() => {
                tracing::info!("shutdown requested");
            }
            Some(res) = self.loops.join_next_with_id() => {
                let err = match res {
                    Ok((_, (name, Ok(())))) => SupervisorError::LoopExited { name },
                    Ok((_, (name, Err(source)))) => SupervisorError::LoopFailed { name, source },
                    Err(e) => SupervisorError::LoopPanicked { name: self.name_of(e.id()) },
                };
                tracing::error!(error = %err, "fatal: stopping the node");
                fatal = Some(err);
            }
        }
        self.shutdown.cancel();
        let mut done: Vec<&'static str> = Vec::new();
        let deadline = tokio::time::sleep(self.deadline);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                next = self.loops.join_next_with_id() => match next {
                    None => break,
                    Some(Ok((_, (name, Ok(()))))) => {
                        done.push(name);
                        tracing::debug!(loop_name = name, "control loop stopped");
                    }
                    Some(Ok((_, (name, Err(source))))) => {
                        done.push(name);
                        tracing::warn!(loop_name = name, error = %source, "control loop failed while stopping");
                        fatal.get_or_insert(SupervisorError::LoopFailed { name, source });
                    }
                    Some(Err(e)) => {
                        let name = self.name_of(e.id());
                        done.push(name);
                        tracing::warn!(loop_name = name, "control loop panicked while stopping");
                        fatal.get_or_insert(SupervisorError::LoopPanicked { name });
                    }
                },
                () = &mut deadline => {
                    // Names may repeat (two loops of one kind), so strike
                    // finished ones out one at a time.
                    let mut still_running: Vec<&'static str> = self.names.iter().map(|(_, n)| *n).collect();
                    for d in &done {
                        if let Some(pos) = still_running.iter().position(|n| n == d) {
                            still_running.remove(pos);
                        }
                    }
                    self.loops.abort_all();
                    let err = SupervisorError::ShutdownTimedOut { deadline: self.deadline, still_running };
                    tracing::error!(error = %err, "abandoning control loops");
                    return Err(fatal.unwrap_or(err));
                }
            }
        }
        fatal.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Polite;
    impl ControlLoop for Polite {
        fn name(&self) -> &'static str {
            "polite"
        }
        async fn run(self, shutdown: CancellationToken) -> Result<(), LoopError> {
            shutdown.cancelled().await;
            Ok(())
        }
    }

    struct Quitter(Option<&'static str>);
    impl ControlLoop for Quitter {
        fn name(&self) -> &'static str {
            "quitter"
        }
        async fn run(self, _shutdown: CancellationToken) -> Result<(), LoopError> {
            tokio::time::sleep(Duration::from_secs(3)).await;
            match self.0 {
                Some(msg) => Err(msg.into()),
                None => Ok(()),
            }
        }
    }

    struct Stubborn;
    impl ControlLoop for Stubborn {
        fn name(&self) -> &'static str {
            "stubborn"
        }
        async fn run(self, _shutdown: CancellationToken) -> Result<(), LoopError> {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(())
        }
    }

    struct Panicky;
    impl ControlLoop for Panicky {
        fn name(&self) -> &'static str {
            "panicky"
        }
        async fn run(self, _shutdown: CancellationToken) -> Result<(), LoopError> {
            tokio::time::sleep(Duration::from_millis(10)).await;
            panic!("boom")
        }
    }

    #[tokio::test(start_paused = true)]
    async fn clean_stop_waits_for_every_loop() {
        let mut s = Supervisor::new(Duration::from_secs(5));
        s.spawn(Polite);
        s.spawn(Polite);
        let res = s
            .run_until(tokio::time::sleep(Duration::from_secs(10)))
            .await;
        assert!(res.is_ok(), "{res:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_loop_is_fatal_and_stops_the_others() {
        let mut s = Supervisor::new(Duration::from_secs(5));
        s.spawn(Polite);
        s.spawn(Quitter(Some("disk on fire")));
        let start = tokio::time::Instant::now();
        let res = s.run_until(std::future::pending()).await;
        match res {
            Err(SupervisorError::LoopFailed { name, source }) => {
                assert_eq!(name, "quitter");
                assert_eq!(source.to_string(), "disk on fire");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(start.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_loop_that_returns_ok_early_is_still_fatal() {
        let mut s = Supervisor::new(Duration::from_secs(5));
        s.spawn(Quitter(None));
        let res = s.run_until(std::future::pending()).await;
        assert!(matches!(
            res,
            Err(SupervisorError::LoopExited { name: "quitter" })
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_loop_is_reported_by_name() {
        let mut s = Supervisor::new(Duration::from_secs(5));
        s.spawn(Polite);
        s.spawn(Panicky);
        let res = s.run_until(std::future::pending()).await;
        assert!(
            matches!(res, Err(SupervisorError::LoopPanicked { name: "panicky" })),
            "{res:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_has_a_deadline() {
        let mut s = Supervisor::new(Duration::from_secs(2));
        s.spawn(Polite);
        s.spawn(Stubborn);
        let start = tokio::time::Instant::now();
        let res = s
            .run_until(tokio::time::sleep(Duration::from_secs(1)))
            .await;
        match res {
            Err(SupervisorError::ShutdownTimedOut { still_running, .. }) => {
                assert_eq!(still_running, vec!["stubborn"]);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(start.elapsed(), Duration::from_secs(3));
    }
}
