//! The behaviour every [`Executor`] must show, as a suite of async checks.
//!
//! An implementation provides a [`Fixture`] (how to express each
//! [`Behaviour`] as a [`ContainerConfig`] for it, and how to get a fresh
//! executor over the same node, as after an agent restart) and runs the
//! checks, one test each, with [`executor_conformance_tests!`]. The
//! libcontainer executor runs them in `tests/runtime.rs`, the fake one in its
//! unit tests.
//!
//! The checks use only the traits: nothing here knows how containers run.
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{
    ContainerConfig, Controller, ExecError, Executor, ExitStatus, HealthStatus, Signal, Status,
    WaitOutcome,
};

/// What a test container does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// Runs until stopped; exits promptly on SIGTERM.
    Serve,
    /// Exits with this code by itself, right after it starts.
    Exit(i32),
    /// Runs until stopped and ignores SIGTERM: only SIGKILL ends it.
    IgnoreTerm,
    /// Runs; its healthcheck always fails (short interval, 2 retries).
    Unhealthy,
    /// Runs; its healthcheck always passes (short interval).
    Healthy,
}

/// How an implementation runs the suite.
pub trait Fixture: Send + Sync {
    /// An executor over the node's state. Called again, it stands for the
    /// agent after a restart: it must find what the earlier one created.
    fn executor(&self) -> Arc<dyn Executor>;

    /// A container with ID `id` behaving as `behaviour`.
    fn config(&self, id: &str, behaviour: Behaviour) -> ContainerConfig;

    /// A container ID no other check uses.
    fn unique_id(&self, name: &str) -> String;

    /// How long a graceful stop may take (SIGTERM to exit).
    fn stop_budget(&self) -> Duration {
        Duration::from_secs(5)
    }

    /// Until a started [`Behaviour::Serve`] container handles its stop
    /// signal. A process that has not installed its handler yet ignores
    /// SIGTERM as PID 1 (docker has the same race), so a check that stops a
    /// container must not stop it sooner.
    fn wait_serving<'a>(
        &'a self,
        _ctl: &'a dyn Controller,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>> {
        Box::pin(async {})
    }
}

async fn created(
    f: &dyn Fixture,
    name: &str,
    b: Behaviour,
) -> (Arc<dyn Executor>, Box<dyn Controller>) {
    let exec = f.executor();
    let id = f.unique_id(name);
    let ctl = exec
        .controller(f.config(&id, b))
        .unwrap_or_else(|e| panic!("controller for {id}: {e}"));
    ctl.prepare()
        .await
        .unwrap_or_else(|e| panic!("prepare {id}: {e}"));
    (exec, ctl)
}

async fn running(
    f: &dyn Fixture,
    name: &str,
    b: Behaviour,
) -> (Arc<dyn Executor>, Box<dyn Controller>) {
    let (exec, ctl) = created(f, name, b).await;
    ctl.start()
        .await
        .unwrap_or_else(|e| panic!("start {}: {e}", ctl.id()));
    (exec, ctl)
}

async fn exited(ctl: &dyn Controller) -> ExitStatus {
    match tokio::time::timeout(Duration::from_secs(30), ctl.wait()).await {
        Ok(Ok(WaitOutcome::Exited(s))) => s,
        Ok(other) => panic!("wait {}: {other:?}", ctl.id()),
        Err(_) => panic!("{} did not exit within 30s", ctl.id()),
    }
}

async fn status(ctl: &dyn Controller) -> Status {
    ctl.inspect()
        .await
        .unwrap_or_else(|e| panic!("inspect {}: {e}", ctl.id()))
        .status
}

/// prepare → created, start → running, exit 0 recorded, remove → gone.
pub async fn lifecycle(f: &dyn Fixture) {
    let (exec, ctl) = created(f, "life", Behaviour::Exit(0)).await;
    let s = ctl.inspect().await.expect("inspect after prepare");
    assert_eq!(s.status, Status::Created);
    assert_eq!(s.id, ctl.id());
    assert!(s.started_at.is_none());
    assert!(
        exec.list()
            .await
            .expect("list")
            .iter()
            .any(|c| c.id == ctl.id()),
        "list shows a created container"
    );
    ctl.start().await.expect("start");
    assert_eq!(exited(ctl.as_ref()).await, ExitStatus::code(0));
    let s = ctl.inspect().await.expect("inspect after exit");
    assert_eq!(s.status, Status::Exited);
    assert_eq!(s.exit, Some(ExitStatus::code(0)));
    assert!(s.started_at.is_some() && s.finished_at.is_some());
    ctl.remove().await.expect("remove");
    assert!(matches!(ctl.inspect().await, Err(ExecError::NotFound(_))));
    assert!(
        !exec
            .list()
            .await
            .expect("list")
            .iter()
            .any(|c| c.id == ctl.id()),
        "list forgets a removed container"
    );
    ctl.remove().await.expect("removing twice is fine");
}

/// A non-zero exit code is reported as it is.
pub async fn exit_code(f: &dyn Fixture) {
    let (_exec, ctl) = running(f, "exit3", Behaviour::Exit(3)).await;
    assert_eq!(exited(ctl.as_ref()).await, ExitStatus::code(3));
    // wait again: same answer.
    assert_eq!(exited(ctl.as_ref()).await, ExitStatus::code(3));
    ctl.remove().await.expect("remove");
}

/// The stop signal ends a container that handles it, well within the grace
/// period; the exit is recorded.
pub async fn graceful_stop(f: &dyn Fixture) {
    let (_exec, ctl) = running(f, "stop", Behaviour::Serve).await;
    assert_eq!(status(ctl.as_ref()).await, Status::Running);
    f.wait_serving(ctl.as_ref()).await;
    let t = Instant::now();
    ctl.shutdown(Duration::from_secs(30), Signal::TERM)
        .await
        .expect("shutdown");
    assert!(
        t.elapsed() < f.stop_budget(),
        "stopping took {:?}",
        t.elapsed()
    );
    let s = ctl.inspect().await.expect("inspect");
    assert_eq!(s.status, Status::Exited);
    let code = s.exit.expect("an exit status").code;
    assert!(
        code == 0 || code == 128 + libc::SIGTERM,
        "exit code {code} after SIGTERM"
    );
    ctl.shutdown(Duration::from_secs(1), Signal::TERM)
        .await
        .expect("shutting down an exited container is fine");
    ctl.remove().await.expect("remove");
}

/// A container that ignores the stop signal is killed after the grace period.
pub async fn stop_escalates(f: &dyn Fixture) {
    let (_exec, ctl) = running(f, "stubborn", Behaviour::IgnoreTerm).await;
    let grace = Duration::from_millis(700);
    let t = Instant::now();
    ctl.shutdown(grace, Signal::TERM).await.expect("shutdown");
    assert!(t.elapsed() >= grace, "killed before the grace period ended");
    let s = ctl.inspect().await.expect("inspect");
    assert_eq!(s.exit.map(|e| e.code), Some(128 + libc::SIGKILL));
    ctl.remove().await.expect("remove");
}

/// terminate kills at once.
pub async fn terminate(f: &dyn Fixture) {
    let (_exec, ctl) = running(f, "term", Behaviour::IgnoreTerm).await;
    ctl.terminate().await.expect("terminate");
    assert_eq!(exited(ctl.as_ref()).await.code, 128 + libc::SIGKILL);
    ctl.terminate().await.expect("terminate again");
    ctl.remove().await.expect("remove");
}

/// remove on a running (or only created) container kills it first.
pub async fn remove_running(f: &dyn Fixture) {
    let (exec, ctl) = running(f, "rmrun", Behaviour::IgnoreTerm).await;
    ctl.remove().await.expect("remove a running container");
    assert!(matches!(ctl.inspect().await, Err(ExecError::NotFound(_))));
    let (_, created) = created(f, "rmcreated", Behaviour::Serve).await;
    created.remove().await.expect("remove a created container");
    assert!(matches!(
        created.inspect().await,
        Err(ExecError::NotFound(_))
    ));
    let ids: Vec<String> = exec
        .list()
        .await
        .expect("list")
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert!(!ids.contains(&ctl.id().to_string()) && !ids.contains(&created.id().to_string()));
}

/// Two containers with one ID cannot both exist; the first is untouched.
pub async fn duplicate_id(f: &dyn Fixture) {
    let (exec, ctl) = running(f, "dup", Behaviour::Serve).await;
    let again = exec
        .controller(f.config(ctl.id(), Behaviour::Serve))
        .expect("controller");
    assert!(matches!(
        again.prepare().await,
        Err(ExecError::AlreadyExists(_))
    ));
    assert_eq!(status(ctl.as_ref()).await, Status::Running);
    ctl.remove().await.expect("remove");
}

/// Starting an exited container fails; start on a running one is a no-op.
pub async fn start_states(f: &dyn Fixture) {
    let (_exec, ctl) = running(f, "restart", Behaviour::Exit(0)).await;
    exited(ctl.as_ref()).await;
    assert!(matches!(
        ctl.start().await,
        Err(ExecError::WrongState { .. })
    ));
    ctl.remove().await.expect("remove");
    let (_exec, ctl) = running(f, "twice", Behaviour::Serve).await;
    ctl.start().await.expect("start on a running container");
    ctl.remove().await.expect("remove");
}

/// A new executor (an agent restart) lists and adopts running and exited
/// containers, reports their true state, and can stop and remove them.
pub async fn adopt_after_restart(f: &dyn Fixture) {
    let (_old, run) = running(f, "adopt-run", Behaviour::Serve).await;
    f.wait_serving(run.as_ref()).await;
    let (_old2, done) = running(f, "adopt-done", Behaviour::Exit(5)).await;
    exited(done.as_ref()).await;
    let run_id = run.id().to_string();
    let done_id = done.id().to_string();
    let pid = run.inspect().await.expect("inspect").pid;
    // The old agent goes away without stopping anything.
    drop(run);
    drop(done);

    let exec = f.executor();
    let list = exec.list().await.expect("list after restart");
    let find = |id: &str| list.iter().find(|c| c.id == id).cloned();
    let r = find(&run_id).expect("the running container is listed");
    assert_eq!(r.status, Status::Running);
    assert_eq!(r.pid, pid, "the same process");
    let d = find(&done_id).expect("the exited container is listed");
    assert_eq!(d.status, Status::Exited);
    assert_eq!(d.exit, Some(ExitStatus::code(5)));

    let run = exec.adopt(&run_id).await.expect("adopt");
    run.shutdown(Duration::from_secs(30), Signal::TERM)
        .await
        .expect("shutdown an adopted container");
    assert_eq!(status(run.as_ref()).await, Status::Exited);
    run.remove().await.expect("remove");
    let done = exec.adopt(&done_id).await.expect("adopt an exited one");
    assert_eq!(exited(done.as_ref()).await, ExitStatus::code(5));
    done.remove().await.expect("remove");
    assert!(matches!(
        exec.adopt("no-such-container").await,
        Err(ExecError::NotFound(_))
    ));
}

/// A failing healthcheck makes wait report unhealthy while it still runs.
pub async fn unhealthy(f: &dyn Fixture) {
    let (_exec, ctl) = running(f, "sick", Behaviour::Unhealthy).await;
    let outcome = tokio::time::timeout(Duration::from_secs(30), ctl.wait())
        .await
        .expect("unhealthy within 30s")
        .expect("wait");
    let WaitOutcome::Unhealthy(h) = outcome else {
        panic!("expected unhealthy, got {outcome:?}");
    };
    assert_eq!(h.status, HealthStatus::Unhealthy);
    assert!(h.failing_streak >= 2);
    assert!(h.log.iter().all(|r| r.exit_code != 0));
    let s = ctl.inspect().await.expect("inspect");
    assert_eq!(s.status, Status::Running);
    assert_eq!(s.health.map(|h| h.status), Some(HealthStatus::Unhealthy));
    ctl.remove().await.expect("remove");
}

/// A passing healthcheck turns the container healthy.
pub async fn healthy(f: &dyn Fixture) {
    let (_exec, ctl) = running(f, "well", Behaviour::Healthy).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = ctl.inspect().await.expect("inspect");
        let h = s
            .health
            .expect("a container with a healthcheck reports health");
        if h.status == HealthStatus::Healthy {
            assert_eq!(h.failing_streak, 0);
            break;
        }
        assert_ne!(h.status, HealthStatus::Unhealthy, "{h:?}");
        assert!(Instant::now() < deadline, "not healthy after 30s: {h:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ctl.remove().await.expect("remove");
}

/// Expands to one `#[tokio::test]` per check, each with a fresh fixture
/// from `$fixture` (an expression, evaluated per test).
#[macro_export]
macro_rules! executor_conformance_tests {
    ($fixture:expr) => {
        $crate::executor_conformance_tests!(@tests $fixture;
            lifecycle exit_code graceful_stop stop_escalates terminate remove_running
            duplicate_id start_states adopt_after_restart unhealthy healthy);
    };
    (@tests $fixture:expr; $($name:ident)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let fixture = $fixture;
                $crate::executor::conformance::$name(&fixture).await;
            }
        )*
    };
}
