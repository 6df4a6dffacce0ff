//! Builders shared by the store's tests.

use prost_types::Timestamp;
use swarm_proto::v1 as pb;

use super::StoreObject;

pub fn ts(seconds: i64) -> Timestamp {
    Timestamp { seconds, nanos: 0 }
}

pub fn batch(seconds: i64, actions: Vec<pb::StoreAction>) -> pb::StoreBatch {
    pb::StoreBatch {
        timestamp: Some(ts(seconds)),
        actions,
    }
}

fn meta(id: &str, version: u64) -> Option<pb::Meta> {
    Some(pb::Meta {
        id: id.to_owned(),
        version,
        ..Default::default()
    })
}

fn annotations(name: &str) -> Option<pb::Annotations> {
    Some(pb::Annotations {
        name: name.to_owned(),
        ..Default::default()
    })
}

pub fn service(id: &str, name: &str) -> pb::Service {
    pb::Service {
        meta: meta(id, 0),
        spec: Some(pb::ServiceSpec {
            annotations: annotations(name),
            mode: Some(pb::service_spec::Mode::Replicated(pb::ReplicatedService {
                replicas: 1,
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn task(id: &str, service_id: &str, slot: u64, node_id: &str) -> pb::Task {
    pb::Task {
        meta: meta(id, 0),
        service_id: service_id.to_owned(),
        slot,
        node_id: node_id.to_owned(),
        desired_state: pb::TaskState::Running.into(),
        ..Default::default()
    }
}

pub fn node(id: &str, hostname: &str) -> pb::Node {
    pb::Node {
        meta: meta(id, 0),
        description: Some(pb::NodeDescription {
            hostname: hostname.to_owned(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn network(id: &str, name: &str) -> pb::Network {
    pb::Network {
        meta: meta(id, 0),
        spec: Some(pb::NetworkSpec {
            annotations: annotations(name),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn secret(id: &str, name: &str) -> pb::Secret {
    pb::Secret {
        meta: meta(id, 0),
        spec: Some(pb::SecretSpec {
            annotations: annotations(name),
            data: b"s3cr3t".to_vec(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn config(id: &str, name: &str) -> pb::Config {
    pb::Config {
        meta: meta(id, 0),
        spec: Some(pb::ConfigSpec {
            annotations: annotations(name),
            data: b"k=v".to_vec(),
            ..Default::default()
        }),
    }
}

pub fn cluster(id: &str, name: &str) -> pb::Cluster {
    pb::Cluster {
        meta: meta(id, 0),
        spec: Some(pb::ClusterSpec {
            annotations: annotations(name),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn create<T: StoreObject>(obj: T) -> pb::StoreAction {
    pb::StoreAction {
        kind: pb::StoreActionKind::Create.into(),
        target: Some(obj.into_target()),
    }
}

pub fn update<T: StoreObject>(obj: T) -> pb::StoreAction {
    pb::StoreAction {
        kind: pb::StoreActionKind::Update.into(),
        target: Some(obj.into_target()),
    }
}

pub fn remove<T: StoreObject>(id: &str) -> pb::StoreAction {
    let mut stub = T::default();
    stub.meta_mut().id = id.to_owned();
    pb::StoreAction {
        kind: pb::StoreActionKind::Remove.into(),
        target: Some(stub.into_target()),
    }
}

/// `obj` as stored, ready to be changed and written back.
pub fn read<T: StoreObject>(store: &super::MemoryStore, id: &str) -> T {
    T::clone(&store.view().get::<T>(id).expect("object exists"))
}
