//! Unit tests of the store's rules, one group per rule.

use swarm_proto::v1 as pb;

use super::testutil::*;
use super::*;

fn store_with(actions: Vec<pb::StoreAction>) -> MemoryStore {
    let store = MemoryStore::new();
    store
        .apply(1, batch(100, actions))
        .expect("setup batch applies");
    store
}

// --- create -----------------------------------------------------------------

#[test]
fn create_stamps_version_and_times_from_the_batch() {
    let store = MemoryStore::new();
    let events = store
        .apply(7, batch(1234, vec![create(service("s1", "web"))]))
        .unwrap();
    let s = store.view().get::<pb::Service>("s1").unwrap();
    let meta = s.meta.as_ref().unwrap();
    assert_eq!(meta.version, 7);
    assert_eq!(meta.created_at, Some(ts(1234)));
    assert_eq!(meta.updated_at, Some(ts(1234)));
    assert_eq!(store.version(), 7);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, EventKind::Created);
    assert_eq!(events[0].version, 7);
    assert_eq!(events[0].object, Object::Service(s));
    assert_eq!(events[0].old, None);
}

#[test]
fn create_ignores_meta_sent_by_the_proposer() {
    let store = MemoryStore::new();
    let mut s = service("s1", "web");
    let meta = s.meta.as_mut().unwrap();
    meta.version = 99;
    meta.created_at = Some(ts(1));
    store.apply(3, batch(50, vec![create(s)])).unwrap();
    let meta = store
        .view()
        .get::<pb::Service>("s1")
        .unwrap()
        .meta
        .clone()
        .unwrap();
    assert_eq!((meta.version, meta.created_at), (3, Some(ts(50))));
}

#[test]
fn create_of_existing_id_fails() {
    let store = store_with(vec![create(service("s1", "web"))]);
    let err = store
        .apply(2, batch(200, vec![create(service("s1", "api"))]))
        .unwrap_err();
    assert_eq!(
        err,
        StoreError::AlreadyExists {
            kind: ObjectKind::Service,
            id: "s1".into()
        }
    );
}

#[test]
fn objects_need_an_id() {
    let store = MemoryStore::new();
    let err = store
        .apply(1, batch(1, vec![create(service("", "web"))]))
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::InvalidObject {
                kind: ObjectKind::Service,
                ..
            }
        ),
        "{err}"
    );
    let mut no_meta = task("t", "s", 1, "");
    no_meta.meta = None;
    let err = store.apply(1, batch(1, vec![create(no_meta)])).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::InvalidObject {
                kind: ObjectKind::Task,
                ..
            }
        ),
        "{err}"
    );
}

// --- update -----------------------------------------------------------------

#[test]
fn update_at_the_read_version_succeeds_and_keeps_created_at() {
    let store = store_with(vec![create(service("s1", "web"))]);
    let mut s: pb::Service = read(&store, "s1");
    let old = Object::Service(store.view().get("s1").unwrap());
    s.spec.as_mut().unwrap().mode =
        Some(pb::service_spec::Mode::Replicated(pb::ReplicatedService {
            replicas: 3,
        }));
    // A proposer cannot move created_at.
    s.meta.as_mut().unwrap().created_at = Some(ts(5));
    let events = store.apply(4, batch(400, vec![update(s)])).unwrap();

    let got = store.view().get::<pb::Service>("s1").unwrap();
    let meta = got.meta.as_ref().unwrap();
    assert_eq!(meta.version, 4);
    assert_eq!(meta.created_at, Some(ts(100)));
    assert_eq!(meta.updated_at, Some(ts(400)));
    assert_eq!(events[0].kind, EventKind::Updated);
    assert_eq!(events[0].old, Some(old));
    assert_eq!(events[0].object, Object::Service(got));
}

#[test]
fn update_at_a_stale_version_is_out_of_sequence() {
    let store = store_with(vec![create(service("s1", "web"))]);
    let stale: pb::Service = read(&store, "s1");
    let mut fresh = stale.clone();
    fresh
        .spec
        .as_mut()
        .unwrap()
        .annotations
        .as_mut()
        .unwrap()
        .labels
        .insert("a".into(), "b".into());
    store.apply(2, batch(200, vec![update(fresh)])).unwrap();

    let err = store.apply(3, batch(300, vec![update(stale)])).unwrap_err();
    assert_eq!(
        err,
        StoreError::OutOfSequence {
            kind: ObjectKind::Service,
            id: "s1".into(),
            read: 1,
            stored: 2
        }
    );
    assert!(err.to_string().contains("re-read"), "{err}");
    assert_eq!(store.version(), 2);
}

#[test]
fn update_of_missing_object_fails() {
    let store = MemoryStore::new();
    let err = store
        .apply(1, batch(1, vec![update(node("n1", "h"))]))
        .unwrap_err();
    assert_eq!(
        err,
        StoreError::NotFound {
            kind: ObjectKind::Node,
            id: "n1".into()
        }
    );
}

#[test]
fn versions_inside_a_batch_are_those_before_it() {
    // An update carries the version its proposer read: 0 for an object the
    // batch created, the pre-batch version for one it already updated.
    let store = store_with(vec![create(task("t0", "s1", 1, ""))]);
    let mut t1 = task("t1", "s1", 2, "");
    t1.node_id = "n1".into();
    let mut t0: pb::Task = read(&store, "t0");
    t0.node_id = "n1".into();
    let mut t0_again = t0.clone();
    t0_again.desired_state = pb::TaskState::Shutdown.into();
    let actions = vec![
        create(task("t1", "s1", 2, "")),
        update(t1),
        update(t0),
        update(t0_again),
    ];
    store.apply(5, batch(5, actions)).unwrap();
    let view = store.view();
    assert_eq!(view.tasks_by_node("n1").len(), 2);
    let t0 = view.get::<pb::Task>("t0").unwrap();
    assert_eq!(t0.desired_state(), pb::TaskState::Shutdown);
    assert_eq!(t0.meta.as_ref().unwrap().version, 5);

    // The batch's own index is not a version anyone read.
    let mut t2 = task("t2", "s1", 3, "");
    t2.meta.as_mut().unwrap().version = 6;
    let actions = vec![create(task("t2", "s1", 3, "")), update(t2)];
    let err = store.apply(6, batch(6, actions)).unwrap_err();
    assert_eq!(
        err,
        StoreError::OutOfSequence {
            kind: ObjectKind::Task,
            id: "t2".into(),
            read: 6,
            stored: 0
        }
    );

    // Re-created after a removal in the same batch: new again, version 0.
    let t0: pb::Task = read(&store, "t0");
    let mut t0_new = task("t0", "s2", 1, "");
    t0_new.node_id = "n2".into();
    let actions = vec![
        update(t0),
        remove::<pb::Task>("t0"),
        create(task("t0", "s2", 1, "")),
        update(t0_new),
    ];
    store.apply(7, batch(7, actions)).unwrap();
    assert_eq!(store.view().get::<pb::Task>("t0").unwrap().node_id, "n2");
}

// --- status reports ---------------------------------------------------------

fn state(s: pb::TaskState) -> pb::TaskStatus {
    pb::TaskStatus {
        state: s.into(),
        message: format!("{s:?}"),
        ..Default::default()
    }
}

fn state_of(store: &MemoryStore, id: &str) -> (i32, u64) {
    let t = store.view().get::<pb::Task>(id).unwrap();
    (t.status.as_ref().map_or(0, |s| s.state), t.version())
}

#[test]
fn a_status_report_sets_the_status_and_stamps_the_task() {
    use pb::TaskState as S;
    let store = store_with(vec![create(task("t1", "s", 1, "n1"))]);
    let events = store
        .apply(
            2,
            batch(200, vec![status_report("t1", "n1", state(S::Running))]),
        )
        .unwrap();
    let t = store.view().get::<pb::Task>("t1").unwrap();
    assert_eq!(t.status, Some(state(S::Running)));
    let meta = t.meta.as_ref().unwrap();
    assert_eq!(meta.version, 2);
    assert_eq!(meta.created_at, Some(ts(100)));
    assert_eq!(meta.updated_at, Some(ts(200)));
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, EventKind::Updated);
    assert_eq!(events[0].object, Object::Task(t));
    assert_eq!(
        events[0]
            .old
            .as_ref()
            .and_then(|o| o.as_task())
            .map(|t| t.version()),
        Some(1)
    );
    // The task-state index follows.
    let counts: Vec<(i32, usize)> = store.view().task_state_counts().collect();
    assert_eq!(counts, [(S::Running as i32, 1)]);
}

#[test]
fn a_late_foreign_or_repeated_report_changes_nothing_and_the_batch_still_applies() {
    use pb::TaskState as S;
    let store = store_with(vec![
        create(task("t1", "s", 1, "n1")),
        create(task("t2", "s", 2, "n1")),
    ]);
    store
        .apply(
            2,
            batch(200, vec![status_report("t1", "n1", state(S::Running))]),
        )
        .unwrap();
    let events = store
        .apply(
            3,
            batch(
                300,
                vec![
                    // Goes back: dropped.
                    status_report("t1", "n1", state(S::Starting)),
                    // Another node's task: dropped.
                    status_report("t2", "n2", state(S::Running)),
                    // Gone: dropped.
                    status_report("gone", "n1", state(S::Running)),
                    // What t1 already has (a resend): dropped.
                    status_report("t1", "n1", state(S::Running)),
                    // Applies.
                    status_report("t2", "n1", state(S::Failed)),
                ],
            ),
        )
        .unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(state_of(&store, "t1"), (S::Running as i32, 2));
    assert_eq!(state_of(&store, "t2"), (S::Failed as i32, 3));
    assert_eq!(store.version(), 3);
}

#[test]
fn a_report_is_an_update_only_and_must_carry_a_status() {
    let store = store_with(vec![create(task("t1", "s", 1, "n1"))]);
    let mut create_kind = status_report("t1", "n1", state(pb::TaskState::Running));
    create_kind.kind = pb::StoreActionKind::Create.into();
    let mut no_status = status_report("t1", "n1", state(pb::TaskState::Running));
    if let Some(pb::store_action::Target::TaskStatus(r)) = &mut no_status.target {
        r.status = None;
    }
    for bad in [create_kind, no_status] {
        let err = store.apply(2, batch(200, vec![bad])).unwrap_err();
        assert!(matches!(err, StoreError::InvalidAction { .. }), "{err}");
    }
    assert_eq!(store.version(), 1);
}

fn pending(id: &str, node_id: &str) -> pb::StoreAction {
    let mut t = task(id, "s", 1, node_id);
    t.status = Some(state(pb::TaskState::Pending));
    create(t)
}

fn assigned() -> pb::TaskStatus {
    state(pb::TaskState::Assigned)
}

#[test]
fn an_assignment_places_a_pending_task_in_a_small_action() {
    let store = store_with(vec![pending("t1", "")]);
    let actions = store
        .prepare(|tx| {
            assert!(tx.assign("t1", "n1", assigned())?);
            // The transaction reads its own write: placed, not pending.
            assert!(!awaits_node(&tx.get::<pb::Task>("t1").unwrap()));
            Ok::<_, StoreError>(())
        })
        .unwrap();
    assert_eq!(actions.len(), 1);
    let Some(pb::store_action::Target::TaskAssignment(a)) = &actions[0].target else {
        panic!("not an assignment: {:?}", actions[0]);
    };
    assert_eq!((a.task_id.as_str(), a.node_id.as_str()), ("t1", "n1"));
    let events = store.apply(2, batch(200, actions)).unwrap();
    let t = store.view().get::<pb::Task>("t1").unwrap();
    assert_eq!(t.node_id, "n1");
    assert_eq!(t.status, Some(assigned()));
    let meta = t.meta.as_ref().unwrap();
    assert_eq!(meta.version, 2);
    assert_eq!(meta.created_at, Some(ts(100)));
    assert_eq!(meta.updated_at, Some(ts(200)));
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].object, Object::Task(Arc::clone(&t)));
    // The node's task index follows.
    assert_eq!(store.view().tasks_by_node("n1"), vec![t]);
    let counts: Vec<(i32, usize)> = store.view().task_state_counts().collect();
    assert_eq!(counts, [(pb::TaskState::Assigned as i32, 1)]);
}

#[test]
fn an_assignment_of_a_task_that_no_longer_waits_changes_nothing() {
    use pb::TaskState as S;
    let mut unwanted = task("unwanted", "s", 2, "");
    unwanted.status = Some(state(S::Pending));
    unwanted.desired_state = S::Shutdown.into();
    let store = store_with(vec![
        pending("t1", ""),
        pending("global", "n2"),
        create(unwanted),
        pending("placed", ""),
    ]);
    let actions = store
        .prepare(|tx| tx.assign("placed", "n1", assigned()).map(|_| ()))
        .unwrap();
    store.apply(2, batch(200, actions)).unwrap();
    // Proposed against a view that no longer holds: nothing is recorded.
    let again = store
        .prepare(|tx| tx.assign("placed", "n3", assigned()).map(|_| ()))
        .unwrap();
    assert!(again.is_empty());
    let to = |id: &str, node: &str| assignment(id, node, assigned());
    let events = store
        .apply(
            3,
            batch(
                300,
                vec![
                    // Already placed: dropped.
                    to("placed", "n3"),
                    // A global task stays on its node: dropped.
                    to("global", "n1"),
                    // No longer wanted: dropped.
                    to("unwanted", "n1"),
                    // Gone: dropped.
                    to("gone", "n1"),
                    // Applies, and so does its own node for a global task.
                    to("t1", "n1"),
                    to("global", "n2"),
                ],
            ),
        )
        .unwrap();
    assert_eq!(events.len(), 2);
    let view = store.view();
    let placed = view.get::<pb::Task>("placed").unwrap();
    assert_eq!((placed.node_id.as_str(), placed.version()), ("n1", 2));
    assert_eq!(view.get::<pb::Task>("t1").unwrap().node_id, "n1");
    assert_eq!(state_of(&store, "global"), (S::Assigned as i32, 3));
    assert_eq!(state_of(&store, "unwanted"), (S::Pending as i32, 1));
}

#[test]
fn an_assignment_is_an_update_only_and_names_a_node_and_a_status() {
    let store = store_with(vec![pending("t1", "")]);
    let mut create_kind = assignment("t1", "n1", assigned());
    create_kind.kind = pb::StoreActionKind::Create.into();
    let mut no_status = assignment("t1", "n1", assigned());
    if let Some(pb::store_action::Target::TaskAssignment(a)) = &mut no_status.target {
        a.status = None;
    }
    for bad in [create_kind, no_status, assignment("t1", "", assigned())] {
        let err = store.apply(2, batch(200, vec![bad])).unwrap_err();
        assert!(matches!(err, StoreError::InvalidAction { .. }), "{err}");
    }
    assert_eq!(store.version(), 1);
}

#[test]
fn an_update_after_a_report_in_one_batch_carries_the_version_before_it() {
    use pb::TaskState as S;
    let store = store_with(vec![create(task("t1", "s", 1, "n1"))]);
    let mut t = (*store.view().get::<pb::Task>("t1").unwrap()).clone();
    t.desired_state = S::Shutdown.into();
    store
        .apply(
            2,
            batch(
                200,
                vec![status_report("t1", "n1", state(S::Running)), update(t)],
            ),
        )
        .unwrap();
    let t = store.view().get::<pb::Task>("t1").unwrap();
    assert_eq!(t.desired_state, S::Shutdown as i32);
    // The full update wrote the task as it was read, status included.
    assert_eq!(t.version(), 2);
}

// --- remove -----------------------------------------------------------------

#[test]
fn remove_drops_the_object_and_its_index_entries() {
    let store = store_with(vec![
        create(service("s1", "web")),
        create(task("t1", "s1", 1, "n1")),
    ]);
    let events = store
        .apply(
            2,
            batch(
                200,
                vec![remove::<pb::Task>("t1"), remove::<pb::Service>("s1")],
            ),
        )
        .unwrap();
    assert_eq!(events.len(), 2);
    assert!(
        events
            .iter()
            .all(|e| e.kind == EventKind::Removed && e.old.is_none())
    );
    assert_eq!(events[0].object.id(), "t1");
    let view = store.view();
    assert!(view.get::<pb::Service>("s1").is_none());
    assert!(view.get_by_name::<pb::Service>("web").is_none());
    assert!(view.tasks_by_service("s1").is_empty());
    assert!(view.tasks_by_node("n1").is_empty());
    assert!(view.tasks_by_slot("s1", 1).is_empty());
}

#[test]
fn remove_of_missing_object_fails() {
    let store = MemoryStore::new();
    let err = store
        .apply(1, batch(1, vec![remove::<pb::Secret>("x")]))
        .unwrap_err();
    assert_eq!(
        err,
        StoreError::NotFound {
            kind: ObjectKind::Secret,
            id: "x".into()
        }
    );
}

// --- names ------------------------------------------------------------------

#[test]
fn names_are_unique_per_kind_ignoring_ascii_case() {
    let store = store_with(vec![create(service("s1", "web"))]);
    let err = store
        .apply(2, batch(2, vec![create(service("s2", "WEB"))]))
        .unwrap_err();
    assert_eq!(
        err,
        StoreError::NameConflict {
            kind: ObjectKind::Service,
            name: "WEB".into(),
            existing_id: "s1".into()
        }
    );
    // Other kinds have their own namespace.
    store
        .apply(
            2,
            batch(
                2,
                vec![
                    create(network("w1", "web")),
                    create(secret("x1", "web")),
                    create(config("c1", "web")),
                ],
            ),
        )
        .unwrap();
    // Lookups fold case the same way.
    assert_eq!(
        store.view().get_by_name::<pb::Service>("Web").unwrap().id(),
        "s1"
    );
    assert_eq!(
        store.view().get_by_name::<pb::Network>("WEB").unwrap().id(),
        "w1"
    );
}

#[test]
fn rename_checks_the_new_name_and_frees_the_old() {
    let store = store_with(vec![
        create(service("s1", "web")),
        create(service("s2", "api")),
    ]);
    let mut s2: pb::Service = read(&store, "s2");
    s2.spec.as_mut().unwrap().annotations.as_mut().unwrap().name = "web".into();
    let err = store
        .apply(2, batch(2, vec![update(s2.clone())]))
        .unwrap_err();
    assert!(matches!(err, StoreError::NameConflict { .. }), "{err}");

    // Keeping one's own name, or changing its case, is fine.
    let mut s1: pb::Service = read(&store, "s1");
    s1.spec.as_mut().unwrap().annotations.as_mut().unwrap().name = "Web".into();
    store.apply(2, batch(2, vec![update(s1)])).unwrap();

    s2.spec.as_mut().unwrap().annotations.as_mut().unwrap().name = "backend".into();
    store.apply(3, batch(3, vec![update(s2)])).unwrap();
    let view = store.view();
    assert!(view.get_by_name::<pb::Service>("api").is_none());
    assert_eq!(
        view.get_by_name::<pb::Service>("backend").unwrap().id(),
        "s2"
    );
    // The freed name can be taken.
    store
        .apply(4, batch(4, vec![create(service("s3", "api"))]))
        .unwrap();
}

#[test]
fn a_removed_objects_name_is_free_in_the_same_batch() {
    let store = store_with(vec![create(secret("x1", "db-pass"))]);
    store
        .apply(
            2,
            batch(
                2,
                vec![remove::<pb::Secret>("x1"), create(secret("x2", "db-pass"))],
            ),
        )
        .unwrap();
    assert_eq!(
        store
            .view()
            .get_by_name::<pb::Secret>("db-pass")
            .unwrap()
            .id(),
        "x2"
    );
}

#[test]
fn named_kinds_need_a_name() {
    let store = MemoryStore::new();
    let err = store
        .apply(1, batch(1, vec![create(service("s1", ""))]))
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidObject { .. }), "{err}");
}

#[test]
fn node_names_may_repeat() {
    let store = store_with(vec![
        create(node("n2", "worker")),
        create(node("n1", "worker")),
    ]);
    let view = store.view();
    let ids: Vec<_> = view
        .find_by_name::<pb::Node>("WORKER")
        .iter()
        .map(|n| n.id().to_owned())
        .collect();
    assert_eq!(ids, ["n1", "n2"]);
    assert_eq!(view.get_by_name::<pb::Node>("worker").unwrap().id(), "n1");

    // A name given with `node update` wins over the hostname.
    let mut n2: pb::Node = read(&store, "n2");
    n2.spec = Some(pb::NodeSpec {
        annotations: Some(pb::Annotations {
            name: "edge".into(),
            ..Default::default()
        }),
        ..Default::default()
    });
    store.apply(2, batch(2, vec![update(n2)])).unwrap();
    let view = store.view();
    assert_eq!(view.find_by_name::<pb::Node>("worker").len(), 1);
    assert_eq!(view.get_by_name::<pb::Node>("edge").unwrap().id(), "n2");
}

// --- lookups ----------------------------------------------------------------

#[test]
fn task_indexes_follow_updates() {
    let store = store_with(vec![
        create(service("s1", "web")),
        create(service("s2", "api")),
        create(task("t1", "s1", 1, "")),
        create(task("t2", "s1", 2, "n1")),
        create(task("t3", "s1", 1, "n2")),
        create(task("t4", "s2", 1, "n1")),
    ]);
    let ids =
        |v: Vec<std::sync::Arc<pb::Task>>| v.iter().map(|t| t.id().to_owned()).collect::<Vec<_>>();
    let view = store.view();
    // By slot, then ID.
    assert_eq!(ids(view.tasks_by_service("s1")), ["t1", "t3", "t2"]);
    assert_eq!(ids(view.tasks_by_service("s")), Vec::<String>::new());
    assert_eq!(ids(view.tasks_by_node("n1")), ["t2", "t4"]);
    assert_eq!(ids(view.tasks_by_node("")), Vec::<String>::new());
    assert_eq!(ids(view.tasks_by_slot("s1", 1)), ["t1", "t3"]);
    assert_eq!(ids(view.tasks_by_slot("s2", 1)), ["t4"]);

    // The scheduler assigns t1; t2 moves.
    let mut t1: pb::Task = read(&store, "t1");
    t1.node_id = "n2".into();
    let mut t2: pb::Task = read(&store, "t2");
    t2.node_id = "n2".into();
    store
        .apply(2, batch(2, vec![update(t1), update(t2)]))
        .unwrap();
    let view = store.view();
    assert_eq!(ids(view.tasks_by_node("n1")), ["t4"]);
    assert_eq!(ids(view.tasks_by_node("n2")), ["t1", "t2", "t3"]);
}

#[test]
fn task_updates_move_only_the_index_entries_that_changed() {
    let store = store_with(vec![
        create(service("s1", "web")),
        create(task("t1", "s1", 1, "n1")),
        create(task("t2", "s1", 2, "n1")),
    ]);
    let ids =
        |v: Vec<std::sync::Arc<pb::Task>>| v.iter().map(|t| t.id().to_owned()).collect::<Vec<_>>();
    let running = |mut t: pb::Task| {
        t.status = Some(pb::TaskStatus {
            state: pb::TaskState::Running as i32,
            ..Default::default()
        });
        t
    };
    // Only the observed state changes (a status report): the state counts
    // move, the node and slot entries stay.
    let t1 = running(read(&store, "t1"));
    store.apply(2, batch(2, vec![update(t1)])).unwrap();
    let view = store.view();
    let counts: Vec<(i32, usize)> = view.task_state_counts().collect();
    assert_eq!(counts, [(0, 1), (pb::TaskState::Running as i32, 1)]);
    assert_eq!(ids(view.tasks_by_node("n1")), ["t1", "t2"]);
    assert_eq!(ids(view.tasks_by_slot("s1", 1)), ["t1"]);
    assert_eq!(view.get::<pb::Task>("t1").unwrap().version(), 2);

    // Nothing an index holds changes: every index stays as it was.
    let mut t2: pb::Task = read(&store, "t2");
    t2.desired_state = pb::TaskState::Shutdown as i32;
    store.apply(3, batch(3, vec![update(t2)])).unwrap();
    let view = store.view();
    assert_eq!(ids(view.tasks_by_node("n1")), ["t1", "t2"]);
    assert_eq!(ids(view.tasks_by_service("s1")), ["t1", "t2"]);
    assert_eq!(view.task_state_counts().count(), 2);

    // Slot and node change together, twice in one batch.
    let mut t1: pb::Task = read(&store, "t1");
    t1.slot = 3;
    t1.node_id = String::new();
    let mut again = t1.clone();
    again.node_id = "n2".into();
    store
        .apply(4, batch(4, vec![update(t1), update(again)]))
        .unwrap();
    let view = store.view();
    assert_eq!(ids(view.tasks_by_node("n1")), ["t2"]);
    assert_eq!(ids(view.tasks_by_node("n2")), ["t1"]);
    assert!(view.tasks_by_slot("s1", 1).is_empty());
    assert_eq!(ids(view.tasks_by_slot("s1", 3)), ["t1"]);
    assert_eq!(ids(view.tasks_by_service("s1")), ["t2", "t1"]);
}

#[test]
fn list_count_and_id_prefix() {
    let store = store_with(vec![
        create(task("abc1", "s", 1, "")),
        create(task("abd2", "s", 2, "")),
        create(task("b", "s", 3, "")),
        create(cluster("c", "default")),
    ]);
    let view = store.view();
    let listed: Vec<_> = view.list::<pb::Task>().map(|t| t.id().to_owned()).collect();
    assert_eq!(listed, ["abc1", "abd2", "b"]);
    assert_eq!(view.count::<pb::Task>(), 3);
    assert_eq!(view.find_by_id_prefix::<pb::Task>("ab").len(), 2);
    assert_eq!(view.find_by_id_prefix::<pb::Task>("abc").len(), 1);
    assert_eq!(view.find_by_id_prefix::<pb::Task>("z").len(), 0);
    assert_eq!(
        store.counts(),
        [
            (ObjectKind::Cluster, 1),
            (ObjectKind::Node, 0),
            (ObjectKind::Service, 0),
            (ObjectKind::Task, 3),
            (ObjectKind::Network, 0),
            (ObjectKind::Secret, 0),
            (ObjectKind::Config, 0),
        ]
    );
}

#[test]
fn a_view_does_not_change_under_later_writes() {
    let store = store_with(vec![create(service("s1", "web"))]);
    let before = store.view();
    store
        .apply(
            2,
            batch(
                2,
                vec![create(service("s2", "api")), remove::<pb::Service>("s1")],
            ),
        )
        .unwrap();
    assert_eq!(before.version(), 1);
    assert!(before.get::<pb::Service>("s1").is_some());
    assert!(before.get::<pb::Service>("s2").is_none());
    let after = store.view();
    assert_eq!(after.version(), 2);
    assert!(after.get::<pb::Service>("s1").is_none());
}

// --- batches ----------------------------------------------------------------

#[test]
fn a_failed_batch_changes_nothing() {
    let store = store_with(vec![
        create(service("s1", "web")),
        create(task("t1", "s1", 1, "n1")),
    ]);
    let before = store.snapshot_bytes();
    let (_, mut watch) = store.watch();
    let mut t1: pb::Task = read(&store, "t1");
    t1.node_id = "n9".into();
    let err = store
        .apply(
            2,
            batch(
                2,
                vec![
                    update(t1),
                    create(task("t2", "s1", 2, "n1")),
                    remove::<pb::Service>("s1"),
                    // Fails last, after three good actions.
                    create(task("t1", "s1", 1, "")),
                ],
            ),
        )
        .unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists { .. }), "{err}");
    assert_eq!(store.snapshot_bytes(), before);
    assert_eq!(store.version(), 1);
    assert!(store.view().tasks_by_node("n9").is_empty());
    assert!(watch.try_recv().is_none(), "no events from a failed batch");
    // The same index can then carry a good batch.
    store.apply(2, batch(2, vec![])).unwrap();
}

#[test]
fn batch_indexes_only_move_forward() {
    let store = store_with(vec![]);
    store.apply(5, batch(5, vec![])).unwrap();
    for index in [0, 1, 5] {
        let err = store.apply(index, batch(9, vec![])).unwrap_err();
        assert_eq!(err, StoreError::StaleIndex { index, version: 5 });
    }
    // Gaps are fine: other Raft entries use those indexes.
    store.apply(9, batch(9, vec![])).unwrap();
    assert_eq!(store.version(), 9);
}

#[test]
fn malformed_batches_are_refused() {
    let store = MemoryStore::new();
    let no_time = pb::StoreBatch {
        timestamp: None,
        actions: vec![create(service("s1", "web"))],
    };
    assert_eq!(
        store.apply(1, no_time).unwrap_err(),
        StoreError::MissingTimestamp { index: 1 }
    );

    let no_target = pb::StoreAction {
        kind: pb::StoreActionKind::Create.into(),
        target: None,
    };
    let unknown_kind = pb::StoreAction {
        kind: 42,
        ..create(service("s1", "web"))
    };
    let kind_unknown = pb::StoreAction {
        kind: pb::StoreActionKind::Unknown.into(),
        ..create(service("s1", "web"))
    };
    for a in [no_target, unknown_kind, kind_unknown] {
        let err = store.apply(1, batch(1, vec![a])).unwrap_err();
        assert!(matches!(err, StoreError::InvalidAction { .. }), "{err}");
    }
    assert_eq!(store.version(), 0);
}

// --- prepare ----------------------------------------------------------------

#[test]
fn prepare_checks_against_the_current_view() {
    let store = store_with(vec![create(service("s1", "web"))]);
    let err = store
        .prepare(|tx| tx.create(service("s2", "web")))
        .unwrap_err();
    assert!(matches!(err, StoreError::NameConflict { .. }), "{err}");
    let err = store
        .prepare(|tx| tx.remove::<pb::Task>("nope"))
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
    // Nothing was written.
    assert_eq!(store.version(), 1);
    assert_eq!(store.view().count::<pb::Service>(), 1);
}

#[test]
fn prepare_reads_its_own_writes_and_its_batch_applies() {
    let store = store_with(vec![
        create(service("s1", "web")),
        create(task("t0", "s1", 1, "")),
    ]);
    let actions = store
        .prepare(|tx| {
            tx.create(task("t1", "s1", 2, ""))?;
            // Read back what was just created and assign it.
            let mut t1 = pb::Task::clone(&tx.get::<pb::Task>("t1").unwrap());
            assert_eq!(t1.meta.as_ref().unwrap().version, 0);
            t1.node_id = "n1".into();
            tx.update(t1)?;
            // Update an existing task twice.
            let mut t0 = pb::Task::clone(&tx.get::<pb::Task>("t0").unwrap());
            t0.node_id = "n1".into();
            tx.update(t0)?;
            let mut t0 = pb::Task::clone(&tx.get::<pb::Task>("t0").unwrap());
            assert_eq!(t0.meta.as_ref().unwrap().version, 1);
            t0.desired_state = pb::TaskState::Shutdown.into();
            tx.update(t0)?;
            assert_eq!(tx.tasks_by_node("n1").len(), 2);
            // A short-lived object.
            tx.create(task("tmp", "s1", 3, ""))?;
            tx.remove::<pb::Task>("tmp")?;
            Ok::<_, StoreError>(())
        })
        .unwrap();

    let kinds: Vec<_> = actions
        .iter()
        .map(|a| (a.kind(), a.target.as_ref().map(target_id)))
        .collect();
    use pb::StoreActionKind::{Create, Remove, Update};
    assert_eq!(
        kinds,
        [
            (Create, Some("t1".to_owned())),
            (Update, Some("t1".to_owned())),
            (Update, Some("t0".to_owned())),
            (Update, Some("t0".to_owned())),
            (Create, Some("tmp".to_owned())),
            (Remove, Some("tmp".to_owned())),
        ]
    );
    store.apply(2, batch(2, actions)).unwrap();
    let view = store.view();
    assert_eq!(view.tasks_by_node("n1").len(), 2);
    assert_eq!(
        view.get::<pb::Task>("t0").unwrap().desired_state(),
        pb::TaskState::Shutdown
    );
    assert!(view.get::<pb::Task>("tmp").is_none());
}

fn target_id(t: &pb::store_action::Target) -> String {
    use pb::store_action::Target;
    match t {
        Target::Cluster(o) => o.id().to_owned(),
        Target::Node(o) => o.id().to_owned(),
        Target::Service(o) => o.id().to_owned(),
        Target::Task(o) => o.id().to_owned(),
        Target::Network(o) => o.id().to_owned(),
        Target::Secret(o) => o.id().to_owned(),
        Target::Config(o) => o.id().to_owned(),
        Target::TaskStatus(r) => r.task_id.clone(),
        Target::TaskAssignment(a) => a.task_id.clone(),
    }
}

#[test]
fn prepare_keeps_every_write_in_order() {
    let store = store_with(vec![create(secret("x1", "a")), create(secret("x2", "b"))]);
    let actions = store
        .prepare(|tx| {
            let mut x1 = pb::Secret::clone(&tx.get::<pb::Secret>("x1").unwrap());
            x1.spec.as_mut().unwrap().data = b"new".to_vec();
            tx.update(x1)?;
            tx.remove::<pb::Secret>("x1")?;
            tx.remove::<pb::Secret>("x2")?;
            tx.create(secret("x2", "b"))
        })
        .unwrap();
    let kinds: Vec<_> = actions
        .iter()
        .map(|a| (a.kind(), a.target.as_ref().map(target_id)))
        .collect();
    use pb::StoreActionKind::{Create, Remove, Update};
    assert_eq!(
        kinds,
        [
            (Update, Some("x1".to_owned())),
            (Remove, Some("x1".to_owned())),
            (Remove, Some("x2".to_owned())),
            (Create, Some("x2".to_owned())),
        ]
    );
    store.apply(2, batch(2, actions)).unwrap();
    let x2 = store.view().get::<pb::Secret>("x2").unwrap();
    assert_eq!(x2.meta.as_ref().unwrap().created_at, Some(ts(2)));
    assert!(store.view().get::<pb::Secret>("x1").is_none());
}

#[test]
fn prepare_keeps_a_name_freed_before_it_is_reused() {
    // Found by the property test when writes to one object were folded into
    // one action: the rename then moved ahead of the removal that freed the
    // name.
    let store = store_with(vec![
        create(secret("x0", "name3")),
        create(secret("x1", "name0")),
    ]);
    let actions = store
        .prepare(|tx| {
            tx.create(secret("x2", "name1"))?;
            tx.remove::<pb::Secret>("x0")?;
            let mut x2 = pb::Secret::clone(&tx.get::<pb::Secret>("x2").unwrap());
            x2.spec.as_mut().unwrap().annotations.as_mut().unwrap().name = "name3".into();
            tx.update(x2)
        })
        .unwrap();
    store.apply(2, batch(2, actions)).unwrap();
    let got = store.view().get_by_name::<pb::Secret>("name3").unwrap();
    assert_eq!(got.id(), "x2");
}

#[test]
fn a_batch_prepared_on_an_old_view_can_still_fail_at_apply() {
    let store = store_with(vec![create(node("n1", "h1"))]);
    let prepare_drain = || {
        store
            .prepare(|tx| {
                let mut n = pb::Node::clone(&tx.get::<pb::Node>("n1").unwrap());
                n.spec.get_or_insert_with(Default::default).availability =
                    pb::NodeAvailability::Drain.into();
                tx.update(n)
            })
            .unwrap()
    };
    let first = prepare_drain();
    let second = prepare_drain();
    store.apply(2, batch(2, first)).unwrap();
    let err = store.apply(3, batch(3, second)).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::OutOfSequence {
                read: 1,
                stored: 2,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn a_closure_error_is_returned_as_is() {
    #[derive(Debug, PartialEq)]
    struct Mine;
    let store = MemoryStore::new();
    assert_eq!(store.prepare(|_| Err(Mine)), Err(Mine));
}

// --- watch ------------------------------------------------------------------

#[test]
fn watch_starts_exactly_after_its_view() {
    let store = store_with(vec![create(service("s1", "web"))]);
    let (view, mut watch) = store.watch();
    assert_eq!(view.version(), 1);
    assert!(watch.try_recv().is_none());
    store
        .apply(2, batch(2, vec![create(task("t1", "s1", 1, ""))]))
        .unwrap();
    store
        .apply(3, batch(3, vec![remove::<pb::Task>("t1")]))
        .unwrap();
    let Some(WatchItem::Commit { version, events }) = watch.try_recv() else {
        panic!("expected commit 2");
    };
    assert_eq!(
        (version, events.len(), events[0].kind),
        (2, 1, EventKind::Created)
    );
    let Some(WatchItem::Commit { version, events }) = watch.try_recv() else {
        panic!("expected commit 3");
    };
    assert_eq!((version, events[0].kind), (3, EventKind::Removed));
    assert!(watch.try_recv().is_none());
}

#[test]
fn watch_is_atomic_with_its_view_under_concurrent_writes() {
    let store = MemoryStore::new();
    let writer = {
        let store = store.clone();
        std::thread::spawn(move || {
            for i in 1..=2000u64 {
                let id = format!("t{i}");
                store
                    .apply(i, batch(1, vec![create(task(&id, "s", i, ""))]))
                    .unwrap();
            }
        })
    };
    let mut checked = 0;
    while !writer.is_finished() || checked == 0 {
        let (view, mut watch) = store.watch();
        // The next commit, when it comes, is the one right after the view.
        loop {
            match watch.try_recv() {
                Some(WatchItem::Commit { version, .. }) => {
                    assert_eq!(version, view.version() + 1);
                    checked += 1;
                    break;
                }
                Some(other) => panic!("unexpected {other:?}"),
                None if writer.is_finished() => break,
                None => std::thread::yield_now(),
            }
        }
        if writer.is_finished() {
            break;
        }
    }
    writer.join().unwrap();
    assert!(checked > 0);
}

#[test]
fn watch_filters_by_kind_and_node() {
    let store = store_with(vec![
        create(service("s1", "web")),
        create(task("t1", "s1", 1, "n1")),
    ]);
    let (_, kinds) = store.watch();
    let mut services = kinds.kinds(&[ObjectKind::Service]);
    let (_, on_node) = store.watch();
    let mut n1 = on_node.tasks_on_node("n1");

    // t1 moves from n1 to n2: n1 must hear of it (the task left it).
    let mut t1: pb::Task = read(&store, "t1");
    t1.node_id = "n2".into();
    store.apply(2, batch(2, vec![update(t1)])).unwrap();
    store
        .apply(3, batch(3, vec![create(task("t2", "s1", 2, "n3"))]))
        .unwrap();
    store
        .apply(4, batch(4, vec![create(task("t3", "s1", 3, "n1"))]))
        .unwrap();
    let mut s1: pb::Service = read(&store, "s1");
    s1.pending_delete = true;
    store
        .apply(
            5,
            batch(5, vec![update(s1), create(task("t4", "s1", 4, "n1"))]),
        )
        .unwrap();

    let mut seen = Vec::new();
    while let Some(WatchItem::Commit { version, events }) = n1.try_recv() {
        seen.extend(events.iter().map(|e| (version, e.object.id().to_owned())));
    }
    assert_eq!(seen, [(2, "t1".into()), (4, "t3".into()), (5, "t4".into())]);

    let Some(WatchItem::Commit { version, events }) = services.try_recv() else {
        panic!("expected the service update");
    };
    assert_eq!(
        (version, events.len(), events[0].object.kind()),
        (5, 1, ObjectKind::Service)
    );
    assert!(services.try_recv().is_none());
}

#[test]
fn a_lagging_watcher_resyncs_from_a_fresh_view() {
    let store = MemoryStore::with_watch_capacity(4);
    let (_, mut watch) = store.watch();
    for i in 1..=10u64 {
        store
            .apply(
                i,
                batch(1, vec![create(task(&format!("t{i:02}"), "s", i, ""))]),
            )
            .unwrap();
    }
    let Some(WatchItem::Resync { view, reason }) = watch.try_recv() else {
        panic!("expected a resync");
    };
    assert_eq!(reason, ResyncReason::Lagged);
    assert_eq!(view.version(), 10);
    assert_eq!(view.count::<pb::Task>(), 10);
    // The stream continues right after the fresh view.
    assert!(watch.try_recv().is_none());
    store
        .apply(11, batch(1, vec![remove::<pb::Task>("t01")]))
        .unwrap();
    let Some(WatchItem::Commit { version, .. }) = watch.try_recv() else {
        panic!("expected commit 11");
    };
    assert_eq!(version, 11);
}

#[tokio::test(start_paused = true)]
async fn a_slow_watcher_never_blocks_apply() {
    let store = MemoryStore::with_watch_capacity(2);
    let (_, mut never_read) = store.watch();
    for i in 1..=100u64 {
        store.apply(i, batch(1, vec![])).unwrap();
    }
    assert_eq!(store.version(), 100);
    assert!(matches!(
        never_read.recv().await,
        Some(WatchItem::Resync {
            reason: ResyncReason::Lagged,
            ..
        })
    ));
}

#[tokio::test(start_paused = true)]
async fn recv_waits_for_the_next_commit_and_ends_with_the_store() {
    let store = MemoryStore::new();
    let (_, mut watch) = store.watch();
    let writer = store.clone();
    let task = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        writer
            .apply(1, batch(1, vec![create(service("s1", "web"))]))
            .unwrap();
    });
    let Some(WatchItem::Commit { version, .. }) = watch.recv().await else {
        panic!("expected a commit");
    };
    assert_eq!(version, 1);
    task.await.unwrap();
    drop(store);
    assert!(watch.recv().await.is_none());
}

// --- snapshot and restore ---------------------------------------------------

fn populated() -> MemoryStore {
    let store = store_with(vec![
        create(cluster("c1", "default")),
        create(node("n1", "h1")),
        create(service("s1", "web")),
        create(task("t1", "s1", 1, "n1")),
        create(network("w1", "ingress")),
        create(secret("x1", "pw")),
        create(config("c1", "conf")),
    ]);
    let mut s1: pb::Service = read(&store, "s1");
    s1.spec
        .as_mut()
        .unwrap()
        .annotations
        .as_mut()
        .unwrap()
        .labels
        .insert("b".into(), "2".into());
    s1.spec
        .as_mut()
        .unwrap()
        .annotations
        .as_mut()
        .unwrap()
        .labels
        .insert("a".into(), "1".into());
    store.apply(2, batch(200, vec![update(s1)])).unwrap();
    store
}

#[test]
fn snapshot_restores_to_an_identical_store() {
    let src = populated();
    let dst = MemoryStore::new();
    dst.restore_bytes(&src.snapshot_bytes()).unwrap();
    assert_eq!(dst.snapshot_bytes(), src.snapshot_bytes());
    assert_eq!(dst.version(), 2);
    assert_eq!(dst.counts(), src.counts());
    let view = dst.view();
    assert_eq!(
        view.get_by_name::<pb::Service>("web")
            .unwrap()
            .meta
            .as_ref()
            .unwrap()
            .version,
        2
    );
    assert_eq!(view.tasks_by_node("n1").len(), 1);
    // And it carries on applying from there.
    dst.apply(3, batch(300, vec![remove::<pb::Task>("t1")]))
        .unwrap();
}

#[test]
fn restore_replaces_everything_and_resyncs_watchers() {
    let store = store_with(vec![create(service("old", "old"))]);
    let (_, mut watch) = store.watch();
    store.restore(populated().snapshot()).unwrap();
    assert!(store.view().get::<pb::Service>("old").is_none());
    assert!(store.view().get_by_name::<pb::Service>("web").is_some());
    let Some(WatchItem::Resync { view, reason }) = watch.try_recv() else {
        panic!("expected a resync");
    };
    assert_eq!(reason, ResyncReason::Restored);
    assert_eq!(view.version(), 2);
    assert_eq!(view.snapshot(), store.snapshot());
}

#[test]
fn an_inconsistent_snapshot_is_refused_whole() {
    let store = populated();
    let before = store.snapshot_bytes();
    let mut bad = store.snapshot();
    bad.services.push(service("s2", "WEB"));
    let err = store.restore(bad).unwrap_err();
    assert!(
        matches!(&err, StoreError::InvalidSnapshot(e) if matches!(**e, StoreError::NameConflict { .. })),
        "{err}"
    );
    let mut bad = store.snapshot();
    bad.tasks.push(bad.tasks[0].clone());
    assert!(store.restore(bad).is_err());
    assert!(matches!(
        store.restore_bytes(b"\xff\xff"),
        Err(StoreError::Decode(_))
    ));
    assert_eq!(store.snapshot_bytes(), before);
}

// --- scale ------------------------------------------------------------------

/// Run by hand: `cargo test --release -p swarm store::tests::apply_scale -- --ignored --nocapture`.
#[test]
#[ignore = "timing; run by hand in release mode"]
fn apply_scale() {
    let store = MemoryStore::new();
    let mut index = 0;
    let next_batch = |n: usize, base: usize| {
        (0..n)
            .map(|i| {
                create(task(
                    &new_id(),
                    &format!("svc{}", (base + i) % 100),
                    (base + i) as u64,
                    &format!("node{}", (base + i) % 1000),
                ))
            })
            .collect::<Vec<_>>()
    };
    for b in 0..100 {
        index += 1;
        store
            .apply(index, batch(1, next_batch(1000, b * 1000)))
            .unwrap();
    }
    assert_eq!(store.view().count::<pb::Task>(), 100_000);
    let (_, mut watch) = store.watch();
    let mut times = Vec::new();
    for b in 100..110 {
        let actions = next_batch(1000, b * 1000);
        index += 1;
        let start = std::time::Instant::now();
        store.apply(index, batch(1, actions)).unwrap();
        times.push(start.elapsed());
    }
    let start = std::time::Instant::now();
    let view = store.view();
    let view_time = start.elapsed();
    let start = std::time::Instant::now();
    let n = view.tasks_by_service("svc7").len();
    let by_service_time = start.elapsed();
    let start = std::time::Instant::now();
    let snap = store.snapshot_bytes();
    let snapshot_time = start.elapsed();
    times.sort();
    println!(
        "apply 1000 task creates into 100k-110k tasks: min {:?}, median {:?}, max {:?}; \
         view {view_time:?}; tasks_by_service ({n}) {by_service_time:?}; snapshot {} bytes in {snapshot_time:?}",
        times[0],
        times[times.len() / 2],
        times[times.len() - 1],
        snap.len(),
    );
    assert!(watch.try_recv().is_some());
    assert!(times[times.len() - 1] < std::time::Duration::from_millis(50));
}
