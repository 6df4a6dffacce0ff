//! Task listings shared by `node ps` and `service ps`: docker's columns,
//! names, order (a slot's newest task first, older ones indented under it
//! as ` \_ web.1`), state wording and error column.
use std::{cmp::Ordering, collections::HashMap, time::SystemTime};

use swarm_proto::v1 as pb;

use super::{
    json,
    output::{human_duration, natural_cmp, table},
};

/// Docker's error column width before truncation.
const MAX_ERR_LEN: usize = 30;

/// "RUNNING" → "Running", as docker prints task states.
pub fn state_name(s: i32) -> String {
    let name = pb::TaskState::try_from(s)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("TASK_STATE_")
                .to_string()
        })
        .unwrap_or_else(|_| format!("state {s}"));
    super::output::capitalize(&name.to_ascii_lowercase())
}

/// `web.3` for a replicated task, `web.<node id>` for a global one.
pub fn task_name(t: &pb::Task) -> String {
    let service = t
        .service_annotations
        .as_ref()
        .map(|a| a.name.clone())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| t.service_id.clone());
    if t.slot > 0 {
        format!("{service}.{}", t.slot)
    } else {
        format!("{service}.{}", t.node_id)
    }
}

pub fn task_id(t: &pb::Task) -> &str {
    t.meta.as_ref().map_or("", |m| m.id.as_str())
}

/// What went wrong with a task: its error, or the scheduler's "no suitable
/// node (...)" explanation while it waits for a node.
pub fn task_error(t: &pb::Task) -> String {
    let st = t.status.clone().unwrap_or_default();
    if !st.err.is_empty() {
        st.err
    } else if st.message.contains("no suitable node") {
        st.message
    } else {
        String::new()
    }
}

fn created(t: &pb::Task) -> (i64, i32) {
    t.meta
        .as_ref()
        .and_then(|m| m.created_at)
        .map_or((0, 0), |c| (c.seconds, c.nanos))
}

/// Docker's order: by task name (service, then slot or node), newest first
/// within a name.
pub fn sort_tasks(tasks: &mut [pb::Task]) {
    tasks.sort_by(|a, b| {
        natural_cmp(&task_name(a), &task_name(b))
            .then_with(|| created(b).cmp(&created(a)))
            .then_with(|| task_id(a).cmp(task_id(b)))
    });
}

fn since(ts: Option<&prost_types::Timestamp>, now: SystemTime) -> String {
    let Some(ts) = ts else {
        return String::new();
    };
    let at = SystemTime::UNIX_EPOCH
        + std::time::Duration::new(
            u64::try_from(ts.seconds).unwrap_or(0),
            u32::try_from(ts.nanos).unwrap_or(0),
        );
    match now.duration_since(at) {
        Ok(d) => format!("{} ago", human_duration(d)),
        // A manager's clock ahead of ours.
        Err(_) => "Less than a second ago".into(),
    }
}

fn host_ports(t: &pb::Task) -> String {
    t.status
        .as_ref()
        .map(|s| {
            s.ports
                .iter()
                .map(|p| {
                    format!(
                        "*:{}->{}/{}",
                        p.published_port,
                        p.target_port,
                        crate::controlapi::service::protocol_name(p.protocol())
                    )
                })
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

/// The `ps` table. `tasks` are shown in [`sort_tasks`] order; `hostnames`
/// maps node IDs to hostnames; ages are relative to `now`.
pub fn ps_table(
    tasks: &[pb::Task],
    hostnames: &HashMap<String, String>,
    no_trunc: bool,
    now: SystemTime,
) -> String {
    let mut sorted = tasks.to_vec();
    sort_tasks(&mut sorted);
    let mut prev_name = String::new();
    let rows: Vec<Vec<String>> = sorted
        .iter()
        .map(|t| {
            let id = task_id(t);
            let id = if no_trunc {
                id
            } else {
                &id[..id.len().min(12)]
            };
            let status = t.status.clone().unwrap_or_default();
            let image = t
                .spec
                .as_ref()
                .and_then(|s| s.container.as_ref())
                .map(|c| c.image.clone())
                .unwrap_or_default();
            let name = task_name(t);
            let shown = if name == prev_name {
                format!(" \\_ {name}")
            } else {
                name.clone()
            };
            prev_name = name;
            let mut err = task_error(t);
            if !no_trunc && err.chars().count() > MAX_ERR_LEN {
                err = err.chars().take(MAX_ERR_LEN - 1).collect::<String>() + "…";
            }
            if !err.is_empty() {
                err = format!("\"{err}\"");
            }
            vec![
                id.to_string(),
                shown,
                image,
                hostnames
                    .get(&t.node_id)
                    .cloned()
                    .unwrap_or_else(|| t.node_id.clone()),
                state_name(t.desired_state),
                format!(
                    "{} {}",
                    state_name(status.state),
                    since(status.timestamp.as_ref(), now)
                )
                .trim()
                .to_string(),
                err,
                host_ports(t),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "NAME",
            "IMAGE",
            "NODE",
            "DESIRED STATE",
            "CURRENT STATE",
            "ERROR",
            "PORTS",
        ],
        &rows,
    )
}

/// A task for `ps --format json`, with docker's field names.
pub fn task_json(t: &pb::Task) -> serde_json::Value {
    let status = t.status.clone().unwrap_or_default();
    serde_json::json!({
        "ID": task_id(t),
        "Name": task_name(t),
        "ServiceID": t.service_id,
        "NodeID": t.node_id,
        "Slot": t.slot,
        "Image": t.spec.as_ref().and_then(|s| s.container.as_ref()).map_or("", |c| c.image.as_str()),
        "DesiredState": state_name(t.desired_state).to_ascii_lowercase(),
        "Status": {
            "Timestamp": json::timestamp(status.timestamp.as_ref()),
            "State": state_name(status.state).to_ascii_lowercase(),
            "Message": status.message,
            "Err": status.err,
        },
        // Docker's name for the task's addresses on its networks.
        "NetworksAttachments": t.networks.iter().map(|n| serde_json::json!({
            "Network": { "ID": n.network_id },
            "Addresses": n.addresses,
            "Aliases": n.aliases,
        })).collect::<Vec<_>>(),
    })
}

/// Orders tasks for JSON output the way the table does.
pub fn cmp_tasks(a: &pb::Task, b: &pb::Task) -> Ordering {
    natural_cmp(&task_name(a), &task_name(b)).then_with(|| created(b).cmp(&created(a)))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn task(id: &str, slot: u64, created: i64, state: pb::TaskState) -> pb::Task {
        pb::Task {
            meta: Some(pb::Meta {
                id: id.into(),
                created_at: Some(prost_types::Timestamp {
                    seconds: created,
                    nanos: 0,
                }),
                ..Default::default()
            }),
            service_annotations: Some(pb::Annotations {
                name: "web".into(),
                ..Default::default()
            }),
            spec: Some(pb::TaskSpec {
                container: Some(pb::ContainerSpec {
                    image: "nginx".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            slot,
            node_id: "n1".into(),
            desired_state: pb::TaskState::Running as i32,
            status: Some(pb::TaskStatus {
                state: state as i32,
                timestamp: Some(prost_types::Timestamp {
                    seconds: created,
                    nanos: 0,
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn names_and_states_read_like_docker() {
        let t = task("abcdefghijklmnopqrstuvwxy", 3, 0, pb::TaskState::Running);
        assert_eq!(task_name(&t), "web.3");
        assert_eq!(state_name(pb::TaskState::Running as i32), "Running");
        let hosts = HashMap::from([("n1".to_string(), "node-1".to_string())]);
        let out = ps_table(&[t], &hosts, false, SystemTime::UNIX_EPOCH);
        assert!(out.starts_with("ID "), "{out}");
        assert!(out.contains("abcdefghijkl "), "{out}");
        assert!(out.contains("web.3"), "{out}");
        assert!(out.contains("node-1"), "{out}");
    }

    #[test]
    fn ps_groups_a_slots_history_under_its_newest_task() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let mut old = task("old", 1, 400, pb::TaskState::Failed);
        old.desired_state = pb::TaskState::Shutdown as i32;
        old.status.as_mut().unwrap().err = "task: non-zero exit (1): the process crashed".into();
        let mut pending = task("pend", 2, 990, pb::TaskState::Pending);
        pending.node_id = String::new();
        pending.status.as_mut().unwrap().err =
            "no suitable node (scheduling constraints not satisfied on 1 node)".into();
        let mut host = task("host", 10, 999, pb::TaskState::Running);
        host.status.as_mut().unwrap().ports = vec![pb::PortConfig {
            published_port: 8080,
            target_port: 80,
            publish_mode: pb::PublishMode::Host as i32,
            ..Default::default()
        }];
        let tasks = vec![
            host,
            pending,
            old,
            task("new", 1, 940, pb::TaskState::Running),
        ];
        let hosts = HashMap::from([("n1".to_string(), "node-1".to_string())]);
        assert_eq!(
            ps_table(&tasks, &hosts, false, now),
            "\
ID     NAME        IMAGE   NODE     DESIRED STATE   CURRENT STATE                ERROR                              PORTS
new    web.1       nginx   node-1   Running         Running About a minute ago
old     \\_ web.1   nginx   node-1   Shutdown        Failed 10 minutes ago        \"task: non-zero exit (1): the …\"
pend   web.2       nginx            Running         Pending 10 seconds ago       \"no suitable node (scheduling …\"
host   web.10      nginx   node-1   Running         Running 1 second ago                                            *:8080->80/tcp
"
        );
        let full = ps_table(&tasks, &hosts, true, now);
        assert!(
            full.contains("\"no suitable node (scheduling constraints not satisfied on 1 node)\""),
            "{full}"
        );
    }

    #[test]
    fn json_names_fields_like_docker() {
        let v = task_json(&task("t1", 1, 0, pb::TaskState::Pending));
        assert_eq!(v["Name"], "web.1");
        assert_eq!(v["DesiredState"], "running");
        assert_eq!(v["Status"]["State"], "pending");
        assert_eq!(v["Image"], "nginx");
        assert_eq!(v["NetworksAttachments"], serde_json::json!([]));
        let mut t = task("t1", 1, 0, pb::TaskState::Pending);
        t.networks.push(pb::NetworkAttachment {
            network_id: "n1".into(),
            addresses: vec!["10.0.1.3/24".into()],
            aliases: vec!["web".into()],
            ..Default::default()
        });
        assert_eq!(
            task_json(&t)["NetworksAttachments"],
            serde_json::json!([{
                "Network": { "ID": "n1" },
                "Addresses": ["10.0.1.3/24"],
                "Aliases": ["web"],
            }])
        );
    }
}
