//! Healthchecks: which check applies (the image's, overridden by the task's),
//! how results turn into a health status (docker's rules: start period,
//! retries, failing streak), and the probe loop.
//!
//! Owns decisions only. Running the probe command inside the container is the
//! executor's job, handed in as a [`Probe`]; this module never spawns
//! anything itself.
use std::future::Future;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use swarm_proto::v1 as pb;
use tokio::sync::watch;

use super::ExecError;

/// docker's defaults for a healthcheck's timings and retries.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_RETRIES: u32 = 3;
/// How many results [`HealthState::log`] keeps (docker keeps 5).
pub const LOG_ENTRIES: usize = 5;
/// How much of a probe's output is kept (docker keeps 4 KiB).
pub const MAX_OUTPUT: usize = 4096;

/// A docker image config's `Healthcheck` (durations in nanoseconds; zero
/// means "inherit" or "default").
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ImageHealthcheck {
    pub test: Vec<String>,
    pub interval: i64,
    pub timeout: i64,
    pub start_period: i64,
    pub retries: i32,
}

/// The healthcheck a container runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    /// The command, already in argv form (`CMD-SHELL x` is `/bin/sh -c x`).
    pub command: Vec<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub start_period: Duration,
    pub retries: u32,
}

fn nanos(n: i64) -> Option<Duration> {
    u64::try_from(n)
        .ok()
        .filter(|n| *n > 0)
        .map(Duration::from_nanos)
}

fn proto_duration(d: Option<&prost_types::Duration>) -> Option<Duration> {
    d.and_then(|d| Duration::try_from(*d).ok())
        .filter(|d| !d.is_zero())
}

/// The effective healthcheck: the task's test if it has one, else the
/// image's; each timing from the task if set, else the image, else docker's
/// default. `["NONE"]` (in the task or, without a task test, in the image)
/// disables it.
pub fn resolve(
    image: Option<&ImageHealthcheck>,
    task: Option<&pb::HealthConfig>,
) -> Result<Option<HealthCheck>, ExecError> {
    let task_test = task.map(|t| t.test.as_slice()).unwrap_or_default();
    let test = if task_test.is_empty() {
        image.map(|i| i.test.as_slice()).unwrap_or_default()
    } else {
        task_test
    };
    let command = match test.split_first() {
        None => return Ok(None),
        Some((kind, _)) if kind == "NONE" => return Ok(None),
        Some((kind, rest)) if kind == "CMD" && !rest.is_empty() => rest.to_vec(),
        Some((kind, rest)) if kind == "CMD-SHELL" && rest.len() == 1 => {
            vec!["/bin/sh".into(), "-c".into(), rest[0].clone()]
        }
        Some(_) => {
            return Err(ExecError::InvalidSpec(format!(
                "healthcheck test {test:?} must be [\"NONE\"], [\"CMD\", args...] or [\"CMD-SHELL\", command]"
            )));
        }
    };
    let pick = |t: Option<&prost_types::Duration>, i: i64, default: Duration| {
        proto_duration(t).or_else(|| nanos(i)).unwrap_or(default)
    };
    let img = image.cloned().unwrap_or_default();
    let retries = task
        .map(|t| t.retries)
        .filter(|r| *r > 0)
        .or(Some(img.retries).filter(|r| *r > 0))
        .map_or(DEFAULT_RETRIES, |r| r.unsigned_abs());
    Ok(Some(HealthCheck {
        command,
        interval: pick(
            task.and_then(|t| t.interval.as_ref()),
            img.interval,
            DEFAULT_INTERVAL,
        ),
        timeout: pick(
            task.and_then(|t| t.timeout.as_ref()),
            img.timeout,
            DEFAULT_TIMEOUT,
        ),
        start_period: pick(
            task.and_then(|t| t.start_period.as_ref()),
            img.start_period,
            Duration::ZERO,
        ),
        retries,
    }))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HealthStatus {
    /// No verdict yet (docker's "starting").
    Starting,
    Healthy,
    Unhealthy,
}

/// One probe run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeResult {
    pub start: SystemTime,
    pub end: SystemTime,
    /// The command's exit code; -1 if it could not run or timed out.
    pub exit_code: i32,
    /// The start of its output (at most [`MAX_OUTPUT`] bytes), or why it
    /// failed to run.
    pub output: String,
}

/// A container's health, as docker's `State.Health` reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthState {
    pub status: HealthStatus,
    pub failing_streak: u32,
    /// The latest results, oldest first.
    pub log: Vec<ProbeResult>,
}

impl Default for HealthState {
    fn default() -> Self {
        HealthState {
            status: HealthStatus::Starting,
            failing_streak: 0,
            log: Vec::new(),
        }
    }
}

impl HealthState {
    /// Applies one result. During the start period failures do not count
    /// while the container has not been healthy yet; a success ends the
    /// start period's leniency and resets the streak.
    pub fn record(&mut self, result: ProbeResult, in_start_period: bool, retries: u32) {
        if result.exit_code == 0 {
            self.status = HealthStatus::Healthy;
            self.failing_streak = 0;
        } else if !(in_start_period && self.status == HealthStatus::Starting) {
            self.failing_streak += 1;
            if self.failing_streak >= retries.max(1) {
                self.status = HealthStatus::Unhealthy;
            }
        }
        self.log.push(result);
        if self.log.len() > LOG_ENTRIES {
            let extra = self.log.len() - LOG_ENTRIES;
            self.log.drain(..extra);
        }
    }
}

/// Runs a healthcheck command inside a container, within `timeout`.
pub trait Probe: Send + Sync {
    fn run(
        &self,
        command: &[String],
        timeout: Duration,
    ) -> impl Future<Output = ProbeResult> + Send;
}

/// Probes every `interval` (the first after one interval, as docker does)
/// and publishes each new state on `state`, until the receivers are gone.
/// `started` is when the container started (for the start period).
pub async fn run_loop(
    check: HealthCheck,
    probe: impl Probe,
    started: tokio::time::Instant,
    state: watch::Sender<HealthState>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(check.interval) => {}
            _ = state.closed() => return,
        }
        let in_start_period = started.elapsed() < check.start_period;
        let result = probe.run(&check.command, check.timeout).await;
        let mut next = state.borrow().clone();
        next.record(result, in_start_period, check.retries);
        if state.send(next).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn d(secs: i64) -> Option<prost_types::Duration> {
        Some(prost_types::Duration {
            seconds: secs,
            nanos: 0,
        })
    }

    #[test]
    fn task_overrides_image_and_defaults_fill_in() {
        let image = ImageHealthcheck {
            test: vec!["CMD".into(), "true".into()],
            interval: 5_000_000_000,
            retries: 7,
            ..Default::default()
        };
        let hc = resolve(Some(&image), None).unwrap().unwrap();
        assert_eq!(hc.command, ["true"]);
        assert_eq!(hc.interval, Duration::from_secs(5));
        assert_eq!(hc.timeout, DEFAULT_TIMEOUT);
        assert_eq!(hc.start_period, Duration::ZERO);
        assert_eq!(hc.retries, 7);

        let task = pb::HealthConfig {
            test: vec!["CMD-SHELL".into(), "wget -q localhost".into()],
            interval: d(1),
            timeout: d(2),
            retries: 2,
            start_period: d(3),
        };
        let hc = resolve(Some(&image), Some(&task)).unwrap().unwrap();
        assert_eq!(hc.command, ["/bin/sh", "-c", "wget -q localhost"]);
        assert_eq!(
            (hc.interval, hc.timeout, hc.start_period, hc.retries),
            (
                Duration::from_secs(1),
                Duration::from_secs(2),
                Duration::from_secs(3),
                2
            )
        );

        // Timings alone inherit the image's test.
        let task = pb::HealthConfig {
            interval: d(9),
            ..Default::default()
        };
        let hc = resolve(Some(&image), Some(&task)).unwrap().unwrap();
        assert_eq!(hc.command, ["true"]);
        assert_eq!(hc.interval, Duration::from_secs(9));
    }

    #[test]
    fn none_disables_and_bad_tests_are_refused() {
        let image = ImageHealthcheck {
            test: vec!["CMD".into(), "true".into()],
            ..Default::default()
        };
        let none = pb::HealthConfig {
            test: vec!["NONE".into()],
            ..Default::default()
        };
        assert_eq!(resolve(Some(&image), Some(&none)).unwrap(), None);
        assert_eq!(resolve(None, None).unwrap(), None);
        for bad in [vec!["CMD"], vec!["CMD-SHELL", "a", "b"], vec!["true"]] {
            let t = pb::HealthConfig {
                test: bad.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            };
            assert!(resolve(None, Some(&t)).is_err(), "{bad:?}");
        }
    }

    fn result(code: i32) -> ProbeResult {
        ProbeResult {
            start: SystemTime::UNIX_EPOCH,
            end: SystemTime::UNIX_EPOCH,
            exit_code: code,
            output: String::new(),
        }
    }

    #[test]
    fn failures_count_after_retries_and_start_period() {
        let mut s = HealthState::default();
        // Start period: failures do not count while still starting.
        s.record(result(1), true, 2);
        s.record(result(1), true, 2);
        assert_eq!((s.status, s.failing_streak), (HealthStatus::Starting, 0));
        s.record(result(1), false, 2);
        assert_eq!((s.status, s.failing_streak), (HealthStatus::Starting, 1));
        s.record(result(0), false, 2);
        assert_eq!((s.status, s.failing_streak), (HealthStatus::Healthy, 0));
        // Once healthy, failures count even within the start period.
        s.record(result(1), true, 2);
        assert_eq!((s.status, s.failing_streak), (HealthStatus::Healthy, 1));
        s.record(result(1), false, 2);
        assert_eq!((s.status, s.failing_streak), (HealthStatus::Unhealthy, 2));
        for _ in 0..10 {
            s.record(result(1), false, 2);
        }
        assert_eq!(s.log.len(), LOG_ENTRIES);
    }

    struct Scripted(Arc<AtomicUsize>, Vec<i32>);
    impl Probe for Scripted {
        async fn run(&self, _command: &[String], _timeout: Duration) -> ProbeResult {
            let i = self.0.fetch_add(1, Ordering::SeqCst);
            result(*self.1.get(i).unwrap_or(&1))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn loop_turns_unhealthy_after_retries() {
        let check = HealthCheck {
            command: vec!["x".into()],
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            start_period: Duration::ZERO,
            retries: 3,
        };
        let calls = Arc::new(AtomicUsize::new(0));
        let (tx, mut rx) = watch::channel(HealthState::default());
        let started = tokio::time::Instant::now();
        tokio::spawn(run_loop(
            check,
            Scripted(calls.clone(), vec![0, 1, 1, 1]),
            started,
            tx,
        ));
        rx.wait_for(|s| s.status == HealthStatus::Healthy)
            .await
            .unwrap();
        let s = rx
            .wait_for(|s| s.status == HealthStatus::Unhealthy)
            .await
            .unwrap()
            .clone();
        assert_eq!(s.failing_streak, 3);
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        // Four probes, one per interval, the first after one interval.
        assert_eq!(started.elapsed(), Duration::from_secs(4));
    }
}
