//! The node side of the log broker: listens on the leader for the log
//! subscriptions that concern this node's tasks, reads those tasks' log
//! files (the last N lines, then, with follow, lines as they are written,
//! across rotations) and publishes them, one stream per subscription.
//!
//! Finds the leader like the agent does (tries the managers it knows,
//! follows redirects). Reads logs only through [`TaskLogs`]; never starts,
//! stops or inspects containers.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use swarm_proto::v1::{self as pb, log_broker_client::LogBrokerClient};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::{
    dispatcher::LEADER_ADDR_KEY,
    executor::logs::{Entry, FOLLOW_INTERVAL, Follower, LogSource, Stream},
    raft::network::ChannelProvider,
    runtime::layout::{Paths, Record, read_json},
    supervisor::{ControlLoop, LoopError},
};

/// Where a task's log is on this node (the container ID is the task ID).
/// The worker implements it; [`RuntimeLogs`] reads the runtime's layout
/// directly.
pub trait TaskLogs: Send + Sync + 'static {
    fn log_source(&self, task_id: &str) -> Option<LogSource>;
}

/// The libcontainer runtime's logs under `<data-root>/containers`.
#[derive(Clone, Debug)]
pub struct RuntimeLogs {
    pub root: PathBuf,
}

impl TaskLogs for RuntimeLogs {
    fn log_source(&self, task_id: &str) -> Option<LogSource> {
        crate::executor::validate_id(task_id).ok()?;
        let paths = Paths::new(&self.root, task_id);
        let max_files = read_json::<Record>(&paths.record())
            .ok()
            .flatten()
            .map_or_else(
                || crate::executor::logs::LogOptions::default().max_files,
                |r| r.log.max_files,
            );
        Some(LogSource {
            path: paths.log(),
            max_files,
        })
    }
}

/// Where the managers are now (the agent keeps the list current).
pub type Managers = Arc<dyn Fn() -> Vec<String> + Send + Sync>;

/// Most bytes of log lines per published message.
const BATCH_BYTES: usize = 256 * 1024;

pub struct LogAgent {
    channels: Arc<dyn ChannelProvider>,
    managers: Managers,
    logs: Arc<dyn TaskLogs>,
}

impl std::fmt::Debug for LogAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogAgent")
    }
}

enum ListenEnd {
    Shutdown,
    Redirect(String),
    Failed(String),
}

fn redirect_or_fail(s: &tonic::Status) -> ListenEnd {
    if s.code() == tonic::Code::FailedPrecondition
        && let Some(addr) = s
            .metadata()
            .get(LEADER_ADDR_KEY)
            .and_then(|v| v.to_str().ok())
    {
        return ListenEnd::Redirect(addr.to_string());
    }
    ListenEnd::Failed(format!("{}: {}", s.code(), s.message()))
}

struct Running {
    tasks: watch::Sender<BTreeSet<String>>,
    stop: CancellationToken,
}

impl LogAgent {
    pub fn new(
        channels: Arc<dyn ChannelProvider>,
        managers: Managers,
        logs: Arc<dyn TaskLogs>,
    ) -> Self {
        LogAgent {
            channels,
            managers,
            logs,
        }
    }

    async fn listen(&self, addr: &str, shutdown: &CancellationToken) -> ListenEnd {
        let channel = match self.channels.channel(addr) {
            Ok(c) => c,
            Err(e) => return ListenEnd::Failed(e),
        };
        let mut stream = match LogBrokerClient::new(channel.clone())
            .listen_subscriptions(pb::ListenSubscriptionsRequest {})
            .await
        {
            Ok(s) => s.into_inner(),
            Err(s) => return redirect_or_fail(&s),
        };
        tracing::debug!(manager = addr, "listening for log subscriptions");
        let stop = shutdown.child_token();
        let mut running: HashMap<String, Running> = HashMap::new();
        let end = loop {
            tokio::select! {
                () = shutdown.cancelled() => break ListenEnd::Shutdown,
                msg = stream.message() => match msg {
                    Ok(Some(m)) => self.apply(m, &channel, &stop, &mut running),
                    Ok(None) => break ListenEnd::Failed("the leader ended the stream".into()),
                    Err(s) => break redirect_or_fail(&s),
                },
            }
        };
        // Publishers follow the leader they were started for; a new
        // listen gets the subscriptions again.
        stop.cancel();
        end
    }

    fn apply(
        &self,
        m: pb::SubscriptionMessage,
        channel: &Channel,
        stop: &CancellationToken,
        running: &mut HashMap<String, Running>,
    ) {
        if m.close {
            if let Some(r) = running.remove(&m.id) {
                r.stop.cancel();
            }
            return;
        }
        let tasks: BTreeSet<String> = m
            .selector
            .as_ref()
            .map(|s| s.task_ids.iter().cloned().collect())
            .unwrap_or_default();
        if let Some(r) = running.get(&m.id)
            && !r.stop.is_cancelled()
            && r.tasks.send(tasks.clone()).is_ok()
        {
            return;
        }
        let (tx, rx) = watch::channel(tasks);
        let token = stop.child_token();
        running.insert(
            m.id.clone(),
            Running {
                tasks: tx,
                stop: token.clone(),
            },
        );
        let publisher = Publisher {
            id: m.id,
            options: m.options.unwrap_or_default(),
            logs: self.logs.clone(),
        };
        let client = LogBrokerClient::new(channel.clone());
        tokio::spawn(async move {
            let id = publisher.id.clone();
            if let Err(e) = publisher.run(client, rx, token.clone()).await {
                tracing::debug!(subscription = %id, error = %e, "publishing logs stopped");
            }
            token.cancel();
        });
    }
}

impl ControlLoop for LogAgent {
    fn name(&self) -> &'static str {
        "log-agent"
    }

    async fn run(self, shutdown: CancellationToken) -> Result<(), LoopError> {
        let mut next: usize = 0;
        let mut hint: Option<String> = None;
        let mut backoff = Duration::from_millis(100);
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            let addr = match hint.take() {
                Some(a) => a,
                None => {
                    let managers = (self.managers)();
                    if managers.is_empty() {
                        // The agent reports this; wait for it to learn more.
                        tokio::select! {
                            () = shutdown.cancelled() => return Ok(()),
                            () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        }
                    }
                    let a = managers[next % managers.len()].clone();
                    next = next.wrapping_add(1);
                    a
                }
            };
            let started = tokio::time::Instant::now();
            match self.listen(&addr, &shutdown).await {
                ListenEnd::Shutdown => return Ok(()),
                ListenEnd::Redirect(leader) => {
                    hint = Some(leader);
                    continue;
                }
                ListenEnd::Failed(why) => {
                    tracing::debug!(manager = %addr, reason = %why, "log subscriptions: trying the next manager");
                }
            }
            if started.elapsed() > Duration::from_secs(5) {
                backoff = Duration::from_millis(100);
            }
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("reading the log of task {task}: {source}")]
    Read {
        task: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the leader stopped taking logs: {0}")]
    Gone(String),
}

/// One subscription on this node.
struct Publisher {
    id: String,
    options: pb::LogSubscriptionOptions,
    logs: Arc<dyn TaskLogs>,
}

/// An entry as a log message for `task_id` (the leader fills in the rest
/// of the context).
pub fn to_message(task_id: &str, e: Entry) -> pb::LogMessage {
    let nanos = e.time.unix_timestamp_nanos();
    pb::LogMessage {
        context: Some(pb::LogContext {
            task_id: task_id.to_string(),
            ..Default::default()
        }),
        timestamp: Some(prost_types::Timestamp {
            seconds: i64::try_from(nanos.div_euclid(1_000_000_000)).unwrap_or(i64::MAX),
            nanos: i32::try_from(nanos.rem_euclid(1_000_000_000)).unwrap_or(0),
        }),
        stream: match e.stream {
            Stream::Stdout => pb::LogStream::Stdout,
            Stream::Stderr => pb::LogStream::Stderr,
        } as i32,
        data: e.log.into_bytes(),
    }
}

/// Whether an entry is at or after `since`.
fn after(e: &Entry, since: Option<&prost_types::Timestamp>) -> bool {
    let Some(s) = since else {
        return true;
    };
    let at = i128::from(s.seconds) * 1_000_000_000 + i128::from(s.nanos);
    e.time.unix_timestamp_nanos() >= at
}

/// Splits messages into batches of at most [`BATCH_BYTES`] of data.
pub fn batches(messages: Vec<pb::LogMessage>) -> Vec<Vec<pb::LogMessage>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut size = 0;
    for m in messages {
        if !cur.is_empty() && size + m.data.len() > BATCH_BYTES {
            out.push(std::mem::take(&mut cur));
            size = 0;
        }
        size += m.data.len();
        cur.push(m);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

impl Publisher {
    async fn run(
        self,
        mut client: LogBrokerClient<Channel>,
        mut tasks: watch::Receiver<BTreeSet<String>>,
        stop: CancellationToken,
    ) -> Result<(), PublishError> {
        let (tx, rx) = mpsc::channel::<pb::PublishLogsMessage>(8);
        let call = tokio::spawn(async move { client.publish_logs(ReceiverStream::new(rx)).await });
        let send = |messages: Vec<pb::LogMessage>, close: bool| {
            let tx = tx.clone();
            let id = self.id.clone();
            async move {
                tx.send(pb::PublishLogsMessage {
                    subscription_id: id,
                    messages,
                    close,
                })
                .await
                .is_ok()
            }
        };
        // Say we are here at once: the leader waits for every node.
        let mut ok = send(Vec::new(), false).await;
        // `tail` is for the logs there are when the subscription comes; a
        // task whose log shows up later (a replica started while
        // following) has only new lines: all of them are sent.
        let mut tail = self
            .options
            .tail
            .map(|t| usize::try_from(t).unwrap_or(usize::MAX));
        let since = self.options.since;
        let mut followers: BTreeMap<String, Follower> = BTreeMap::new();
        let mut started: BTreeSet<String> = BTreeSet::new();
        let mut result = Ok(());
        while ok {
            let want: Vec<String> = tasks
                .borrow_and_update()
                .iter()
                .filter(|t| !started.contains(*t))
                .cloned()
                .collect();
            for task in want {
                // Not known here yet (the container is still being
                // created): try again on the next round.
                let Some(src) = self.logs.log_source(&task) else {
                    continue;
                };
                started.insert(task.clone());
                let follow = self.options.follow;
                let t = task.clone();
                let read = tokio::task::spawn_blocking(move || {
                    // Position the follower first so nothing written
                    // meanwhile is lost.
                    let f = if follow {
                        Some(Follower::from_end(&src.path)?)
                    } else {
                        None
                    };
                    Ok::<_, std::io::Error>((f, src.read(tail)?))
                })
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))
                .and_then(|r| r);
                let (follower, entries) = match read {
                    Ok(r) => r,
                    Err(source) => {
                        result = Err(PublishError::Read { task: t, source });
                        ok = false;
                        break;
                    }
                };
                let msgs: Vec<_> = entries
                    .into_iter()
                    .filter(|e| after(e, since.as_ref()))
                    .map(|e| to_message(&task, e))
                    .collect();
                for b in batches(msgs) {
                    if !send(b, false).await {
                        ok = false;
                        break;
                    }
                }
                if let Some(f) = follower {
                    followers.insert(task, f);
                }
            }
            if !ok {
                break;
            }
            tail = None;
            if !self.options.follow {
                // Tasks this node does not know are left out, like logs of
                // a container that no longer exists.
                // A failed send shows in the call's result below.
                let _ = send(Vec::new(), true).await;
                break;
            }
            tokio::select! {
                () = stop.cancelled() => break,
                r = tasks.changed() => if r.is_err() { break },
                () = tokio::time::sleep(FOLLOW_INTERVAL) => {}
            }
            let mut moved = std::mem::take(&mut followers);
            let polled = tokio::task::spawn_blocking(move || {
                let mut out = Vec::new();
                for (task, f) in &mut moved {
                    match f.poll() {
                        Ok(entries) => out.extend(entries.into_iter().map(|e| to_message(task, e))),
                        Err(e) => tracing::debug!(%task, error = %e, "following a log"),
                    }
                }
                (moved, out)
            })
            .await;
            match polled {
                Ok((back, msgs)) => {
                    followers = back;
                    for b in batches(msgs) {
                        if !send(b, false).await {
                            ok = false;
                            break;
                        }
                    }
                }
                Err(e) => {
                    result = Err(PublishError::Gone(e.to_string()));
                    break;
                }
            }
        }
        drop(tx);
        match call.await {
            Ok(Ok(_)) => result,
            Ok(Err(s)) => Err(PublishError::Gone(s.message().to_string())),
            Err(e) => Err(PublishError::Gone(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::OffsetDateTime;

    fn entry(text: &str, nanos: i128) -> Entry {
        Entry {
            log: text.into(),
            stream: Stream::Stderr,
            time: OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap(),
        }
    }

    #[test]
    fn entries_become_messages_with_their_time_and_stream() {
        let m = to_message("t1", entry("hi\n", 1_700_000_000_123_456_789));
        assert_eq!(m.context.unwrap().task_id, "t1");
        let ts = m.timestamp.unwrap();
        assert_eq!((ts.seconds, ts.nanos), (1_700_000_000, 123_456_789));
        assert_eq!(m.stream, pb::LogStream::Stderr as i32);
        assert_eq!(m.data, b"hi\n");
    }

    #[test]
    fn since_keeps_entries_at_or_after() {
        let since = prost_types::Timestamp {
            seconds: 10,
            nanos: 5,
        };
        assert!(after(&entry("", 10_000_000_005), Some(&since)));
        assert!(!after(&entry("", 10_000_000_004), Some(&since)));
        assert!(after(&entry("", 0), None));
    }

    #[test]
    fn batches_stay_under_the_limit_and_keep_order() {
        let big = |i: u8| pb::LogMessage {
            data: vec![i; BATCH_BYTES / 2],
            ..Default::default()
        };
        let b = batches((0..5).map(big).collect());
        assert_eq!(b.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 1]);
        assert_eq!(b[2][0].data[0], 4);
        assert!(batches(Vec::new()).is_empty());
        // One oversized line still goes, alone.
        let huge = pb::LogMessage {
            data: vec![0; BATCH_BYTES * 2],
            ..Default::default()
        };
        assert_eq!(batches(vec![huge]).len(), 1);
    }

    #[test]
    fn runtime_logs_point_into_the_container_directory() {
        let r = RuntimeLogs {
            root: PathBuf::from("/data/containers"),
        };
        let s = r.log_source("abc").unwrap();
        assert_eq!(s.path, PathBuf::from("/data/containers/abc/abc-json.log"));
        assert_eq!(s.max_files, 3);
        assert!(r.log_source("../etc").is_none());
    }
}
