//! `swarm service logs` and `swarm task logs`: a subscription to the
//! leader's log broker, printed like docker's `service logs`
//! (`web.1.abcdef123456@node1    | line`), stdout lines on stdout and
//! stderr lines on stderr. Names in the prefix are looked up here through
//! the Control API, as docker's CLI does; the broker sends IDs.
use std::{
    collections::HashMap,
    io::Write,
    time::{Duration, SystemTime},
};

use anyhow::Context;
use clap::{Args, Subcommand};
use swarm_proto::v1 as pb;

use super::parse_duration;
use crate::api::client::Client;

#[derive(Debug, Subcommand)]
pub enum TaskCommand {
    /// Fetch the logs of a task.
    Logs(LogsArgs),
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Follow log output.
    #[arg(short, long)]
    pub follow: bool,
    /// Number of lines to show from the end of each task's log, or "all".
    #[arg(long, default_value = "all", value_parser = parse_tail)]
    pub tail: Tail,
    /// Show timestamps (RFC 3339 with nanoseconds).
    #[arg(short, long)]
    pub timestamps: bool,
    /// Show logs since a timestamp (e.g. 2013-01-02T13:23:37Z) or relative
    /// (e.g. 42m for 42 minutes).
    #[arg(long)]
    pub since: Option<String>,
    /// Do not include task IDs in output.
    #[arg(long)]
    pub no_task_ids: bool,
    /// Do not truncate output.
    #[arg(long)]
    pub no_trunc: bool,
    /// Do not neatly format logs (no task prefix).
    #[arg(long)]
    pub raw: bool,
    /// Service name, ID or ID prefix, or a task ID (prefix).
    #[arg(value_name = "SERVICE|TASK")]
    pub target: String,
}

/// `--tail`: `None` for all lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tail(pub Option<u64>);

/// docker's rule: a number, or "all"; anything else (a negative number, a
/// word) also means all.
fn parse_tail(s: &str) -> Result<Tail, String> {
    Ok(Tail(s.parse::<u64>().ok()))
}

/// `--since`: a duration back from `now`, an RFC 3339 time, or Unix
/// seconds.
fn parse_since(s: &str, now: SystemTime) -> anyhow::Result<prost_types::Timestamp> {
    let at = if let Ok(d) = parse_duration(s) {
        now.checked_sub(d).unwrap_or(SystemTime::UNIX_EPOCH)
    } else if let Ok(t) =
        time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
    {
        SystemTime::from(t)
    } else if let Ok(secs) = s.parse::<f64>()
        && secs >= 0.0
    {
        SystemTime::UNIX_EPOCH + Duration::from_secs_f64(secs)
    } else {
        anyhow::bail!(
            "invalid --since {s:?}: give a time (2013-01-02T13:23:37Z), Unix seconds, or a duration back from now (42m)"
        );
    };
    Ok(prost_types::Timestamp::from(at))
}

/// How to print lines.
#[derive(Clone, Copy, Debug, Default)]
pub struct Style {
    pub timestamps: bool,
    pub no_task_ids: bool,
    pub no_trunc: bool,
    pub raw: bool,
    /// Digits of the highest slot, so replicas' prefixes line up.
    pub slot_width: usize,
}

fn digits(n: u64) -> usize {
    n.to_string().len()
}

/// docker's context: `web.1.abcdef123456@node1` plus padding to line up
/// slots of different widths.
pub fn prefix(service: &str, task: &pb::Task, hostname: &str, style: &Style) -> String {
    let id = task.meta.as_ref().map_or("", |m| m.id.as_str());
    let mut name = format!("{service}.{}", task.slot);
    if !style.no_task_ids {
        let shown = if style.no_trunc {
            id
        } else {
            &id[..id.len().min(12)]
        };
        name.push('.');
        name.push_str(shown);
    }
    let pad = style.slot_width.saturating_sub(digits(task.slot));
    format!("{name}@{hostname}{}", " ".repeat(pad))
}

/// RFC 3339 in UTC with all nine digits of nanoseconds, so lines align.
pub fn timestamp(ts: &prost_types::Timestamp) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(ts.seconds)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        ts.nanos.clamp(0, 999_999_999)
    )
}

/// One output line: `[time ][context    | ]text\n`.
pub fn format_line(context: Option<&str>, m: &pb::LogMessage, style: &Style) -> Vec<u8> {
    let mut out = Vec::with_capacity(m.data.len() + 64);
    if style.timestamps {
        out.extend_from_slice(timestamp(&m.timestamp.unwrap_or_default()).as_bytes());
        out.push(b' ');
    }
    if !style.raw
        && let Some(c) = context
    {
        out.extend_from_slice(c.as_bytes());
        out.extend_from_slice(b"    | ");
    }
    out.extend_from_slice(&m.data);
    if !out.ends_with(b"\n") {
        out.push(b'\n');
    }
    out
}

/// docker's words for a stream that misses some nodes' logs.
pub fn incomplete_warning(reasons: &[String]) -> String {
    format!(
        "warning: incomplete log stream. some logs could not be retrieved for the following reasons: {}",
        reasons.join(", ")
    )
}

/// Names for prefixes, fetched once and again when an unknown task shows
/// up (a follow subscription gains tasks).
struct Names {
    services: HashMap<String, String>,
    tasks: HashMap<String, pb::Task>,
    nodes: HashMap<String, String>,
}

impl Names {
    async fn load(client: &Client) -> anyhow::Result<Names> {
        let mut control = client.control();
        let services = control
            .list_services(pb::ListServicesRequest::default())
            .await
            .map_err(|s| client.rpc_error(s))?
            .into_inner()
            .services
            .into_iter()
            .map(|s| {
                let id = s.meta.as_ref().map(|m| m.id.clone()).unwrap_or_default();
                let name = s
                    .spec
                    .as_ref()
                    .and_then(|s| s.annotations.as_ref())
                    .map(|a| a.name.clone())
                    .unwrap_or_default();
                (id, name)
            })
            .collect();
        let tasks = control
            .list_tasks(pb::ListTasksRequest::default())
            .await
            .map_err(|s| client.rpc_error(s))?
            .into_inner()
            .tasks
            .into_iter()
            .map(|t| (super::task::task_id(&t).to_string(), t))
            .collect();
        let nodes = control
            .list_nodes(pb::ListNodesRequest::default())
            .await
            .map_err(|s| client.rpc_error(s))?
            .into_inner()
            .nodes
            .into_iter()
            .map(|n| {
                let id = n.meta.as_ref().map(|m| m.id.clone()).unwrap_or_default();
                let host = n
                    .description
                    .as_ref()
                    .map(|d| d.hostname.clone())
                    .filter(|h| !h.is_empty())
                    .unwrap_or_else(|| id.clone());
                (id, host)
            })
            .collect();
        Ok(Names {
            services,
            tasks,
            nodes,
        })
    }

    fn context(&self, c: &pb::LogContext, style: &Style) -> Option<String> {
        let task = self.tasks.get(&c.task_id)?;
        let service = self
            .services
            .get(&c.service_id)
            .cloned()
            .unwrap_or_else(|| c.service_id.clone());
        let host = self
            .nodes
            .get(&c.node_id)
            .cloned()
            .unwrap_or_else(|| c.node_id.clone());
        Some(prefix(&service, task, &host, style))
    }
}

/// What `target` names: a service (for `service logs`) or else a task.
async fn selector(
    client: &Client,
    target: &str,
    tasks_only: bool,
    names: &Names,
) -> anyhow::Result<(pb::LogSelector, usize)> {
    if !tasks_only {
        match client
            .control()
            .get_service(pb::GetServiceRequest {
                service_ref: target.to_string(),
            })
            .await
        {
            Ok(r) => {
                let s = r.into_inner().service.unwrap_or_default();
                let id = s.meta.as_ref().map(|m| m.id.clone()).unwrap_or_default();
                let width = match s.spec.as_ref().and_then(|s| s.mode.as_ref()) {
                    Some(pb::service_spec::Mode::Replicated(r)) => digits(r.replicas),
                    _ => 1,
                };
                return Ok((
                    pb::LogSelector {
                        service_ids: vec![id],
                        ..Default::default()
                    },
                    width,
                ));
            }
            Err(s) if s.code() == tonic::Code::NotFound => {}
            Err(s) => return Err(client.rpc_error(s).into()),
        }
    }
    let found: Vec<&pb::Task> = match names.tasks.get(target) {
        Some(t) => vec![t],
        None => names
            .tasks
            .values()
            .filter(|t| super::task::task_id(t).starts_with(target))
            .collect(),
    };
    match found.as_slice() {
        [t] => Ok((
            pb::LogSelector {
                task_ids: vec![super::task::task_id(t).to_string()],
                ..Default::default()
            },
            digits(t.slot),
        )),
        [] if tasks_only => anyhow::bail!("no such task: {target}"),
        [] => anyhow::bail!("no such task or service: {target}"),
        many => anyhow::bail!(
            "task {target} is ambiguous ({} matches): use a longer ID prefix",
            many.len()
        ),
    }
}

pub async fn run(client: &Client, a: &LogsArgs, tasks_only: bool) -> anyhow::Result<()> {
    let mut names = Names::load(client).await?;
    let (selector, slot_width) = selector(client, &a.target, tasks_only, &names).await?;
    let style = Style {
        timestamps: a.timestamps,
        no_task_ids: a.no_task_ids,
        no_trunc: a.no_trunc,
        raw: a.raw,
        slot_width,
    };
    let since = a
        .since
        .as_deref()
        .map(|s| parse_since(s, SystemTime::now()))
        .transpose()?;
    let mut stream = client
        .logs()
        .subscribe_logs(pb::SubscribeLogsRequest {
            selector: Some(selector),
            options: Some(pb::LogSubscriptionOptions {
                follow: a.follow,
                tail: a.tail.0,
                since,
            }),
        })
        .await
        .map_err(|s| client.rpc_error(s))?
        .into_inner();
    let mut incomplete: Vec<String> = Vec::new();
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    while let Some(msg) = stream.message().await.map_err(|s| client.rpc_error(s))? {
        let unknown = msg.messages.iter().any(|m| {
            m.context
                .as_ref()
                .is_some_and(|c| !names.tasks.contains_key(&c.task_id))
        });
        if unknown && !style.raw {
            names = Names::load(client).await?;
        }
        let (mut out, mut err) = (stdout.lock(), stderr.lock());
        for m in &msg.messages {
            let ctx = m.context.as_ref().and_then(|c| names.context(c, &style));
            let line = format_line(ctx.as_deref(), m, &style);
            let w: &mut dyn Write = if m.stream == pb::LogStream::Stderr as i32 {
                &mut err
            } else {
                &mut out
            };
            w.write_all(&line).context("writing logs")?;
        }
        out.flush().context("writing logs")?;
        if a.follow && !msg.incomplete.is_empty() {
            // While following, say it at once: the stream may never end.
            writeln!(err, "{}", incomplete_warning(&msg.incomplete)).context("writing logs")?;
        } else {
            incomplete.extend(msg.incomplete);
        }
    }
    if !incomplete.is_empty() {
        eprintln!("{}", incomplete_warning(&incomplete));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str, slot: u64) -> pb::Task {
        pb::Task {
            meta: Some(pb::Meta {
                id: id.into(),
                ..Default::default()
            }),
            slot,
            ..Default::default()
        }
    }

    #[test]
    fn prefixes_look_like_dockers() {
        let t = task("abcdef1234567890xyz", 3);
        let s = Style::default();
        assert_eq!(prefix("web", &t, "node1", &s), "web.3.abcdef123456@node1");
        let s = Style {
            no_trunc: true,
            ..Style::default()
        };
        assert_eq!(
            prefix("web", &t, "node1", &s),
            "web.3.abcdef1234567890xyz@node1"
        );
        let s = Style {
            no_task_ids: true,
            slot_width: 2,
            ..Style::default()
        };
        // Slot 3 of 10 replicas is padded to line up with slot 10.
        assert_eq!(prefix("web", &t, "n", &s), "web.3@n ");
    }

    #[test]
    fn lines_carry_time_context_and_one_newline() {
        let m = pb::LogMessage {
            timestamp: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 1_000,
            }),
            data: b"hello".to_vec(),
            ..Default::default()
        };
        let plain = Style::default();
        assert_eq!(
            format_line(Some("web.1.x@n"), &m, &plain),
            b"web.1.x@n    | hello\n"
        );
        let ts = Style {
            timestamps: true,
            raw: true,
            ..Style::default()
        };
        assert_eq!(
            String::from_utf8(format_line(Some("web.1.x@n"), &m, &ts)).unwrap(),
            "2023-11-14T22:13:20.000001000Z hello\n"
        );
        let m = pb::LogMessage {
            data: b"done\n".to_vec(),
            ..m
        };
        assert_eq!(format_line(None, &m, &plain), b"done\n");
    }

    #[test]
    fn tail_and_since_parse_like_docker() {
        assert_eq!(parse_tail("all"), Ok(Tail(None)));
        assert_eq!(parse_tail("5"), Ok(Tail(Some(5))));
        assert_eq!(parse_tail("-1"), Ok(Tail(None)));
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(10_000);
        assert_eq!(parse_since("10m", now).unwrap().seconds, 9_400);
        assert_eq!(
            parse_since("2023-11-14T22:13:20Z", now).unwrap().seconds,
            1_700_000_000
        );
        assert_eq!(parse_since("1700000000.5", now).unwrap().nanos, 500_000_000);
        assert!(parse_since("yesterday", now).is_err());
    }

    #[test]
    fn warning_names_every_reason() {
        assert_eq!(
            incomplete_warning(&[
                "node a is not available".into(),
                "node b is not available".into()
            ]),
            "warning: incomplete log stream. some logs could not be retrieved for the following reasons: node a is not available, node b is not available"
        );
    }
}
