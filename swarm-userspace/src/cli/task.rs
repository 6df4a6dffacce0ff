//! Task listings shared by `node ps` (and `service ps` later): docker's
//! columns, names and state wording.
use std::collections::HashMap;

use swarm_proto::v1 as pb;

use super::{json, output::table};

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

fn task_id(t: &pb::Task) -> &str {
    t.meta.as_ref().map_or("", |m| m.id.as_str())
}

/// The `ps` table; `hostnames` maps node IDs to hostnames.
pub fn ps_table(tasks: &[pb::Task], hostnames: &HashMap<String, String>, no_trunc: bool) -> String {
    let rows: Vec<Vec<String>> = tasks
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
            vec![
                id.to_string(),
                task_name(t),
                image,
                hostnames
                    .get(&t.node_id)
                    .cloned()
                    .unwrap_or_else(|| t.node_id.clone()),
                state_name(t.desired_state),
                format!(
                    "{} {}",
                    state_name(status.state),
                    json::timestamp_human(status.timestamp.as_ref())
                )
                .trim()
                .to_string(),
                status.err.clone(),
                String::new(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_states_read_like_docker() {
        let t = pb::Task {
            meta: Some(pb::Meta {
                id: "abcdefghijklmnopqrstuvwxy".into(),
                ..Default::default()
            }),
            service_annotations: Some(pb::Annotations {
                name: "web".into(),
                ..Default::default()
            }),
            slot: 3,
            node_id: "n1".into(),
            desired_state: pb::TaskState::Running as i32,
            ..Default::default()
        };
        assert_eq!(task_name(&t), "web.3");
        assert_eq!(state_name(pb::TaskState::Running as i32), "Running");
        let hosts = HashMap::from([("n1".to_string(), "node-1".to_string())]);
        let out = ps_table(&[t], &hosts, false);
        assert!(out.starts_with("ID "), "{out}");
        assert!(out.contains("abcdefghijkl "), "{out}");
        assert!(out.contains("web.3"), "{out}");
        assert!(out.contains("node-1"), "{out}");
    }
}
