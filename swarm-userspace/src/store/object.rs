//! The kinds of stored objects, and what the store needs to know about each:
//! its meta, its name, and how it travels in a [`pb::StoreAction`].

use std::fmt;
use std::sync::Arc;

use swarm_proto::v1 as pb;
use swarm_proto::v1::store_action::Target;

use super::tables::{Indexed, Table, Tables};

/// The kinds of objects the store holds, one table each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObjectKind {
    Cluster,
    Node,
    Service,
    Task,
    Network,
    Secret,
    Config,
}

impl ObjectKind {
    /// Every kind, in the order of [`pb::StoreSnapshot`]'s fields.
    pub const ALL: [ObjectKind; 7] = [
        ObjectKind::Cluster,
        ObjectKind::Node,
        ObjectKind::Service,
        ObjectKind::Task,
        ObjectKind::Network,
        ObjectKind::Secret,
        ObjectKind::Config,
    ];

    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::Cluster => "cluster",
            ObjectKind::Node => "node",
            ObjectKind::Service => "service",
            ObjectKind::Task => "task",
            ObjectKind::Network => "network",
            ObjectKind::Secret => "secret",
            ObjectKind::Config => "config",
        }
    }
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stored object of any kind. Objects are shared, never copied, between
/// the store, its snapshots and watch events: treat them as immutable and
/// clone the inner value to change it.
#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    Cluster(Arc<pb::Cluster>),
    Node(Arc<pb::Node>),
    Service(Arc<pb::Service>),
    Task(Arc<pb::Task>),
    Network(Arc<pb::Network>),
    Secret(Arc<pb::Secret>),
    Config(Arc<pb::Config>),
}

macro_rules! each_object {
    ($obj:expr, $o:ident => $body:expr) => {
        match $obj {
            Object::Cluster($o) => $body,
            Object::Node($o) => $body,
            Object::Service($o) => $body,
            Object::Task($o) => $body,
            Object::Network($o) => $body,
            Object::Secret($o) => $body,
            Object::Config($o) => $body,
        }
    };
}

impl Object {
    #[must_use]
    pub fn kind(&self) -> ObjectKind {
        each_object!(self, o => kind_of(&**o))
    }

    #[must_use]
    pub fn id(&self) -> &str {
        each_object!(self, o => o.id())
    }

    /// Raft index of the batch that last wrote this object.
    #[must_use]
    pub fn version(&self) -> u64 {
        each_object!(self, o => o.version())
    }

    #[must_use]
    pub fn meta(&self) -> Option<&pb::Meta> {
        each_object!(self, o => StoreObject::meta(&**o))
    }

    /// The object if it is a `T`.
    #[must_use]
    pub fn get<T: StoreObject>(&self) -> Option<&Arc<T>> {
        T::from_object(self)
    }

    /// The task, if this is one: watchers of tasks look at these most.
    #[must_use]
    pub fn as_task(&self) -> Option<&pb::Task> {
        match self {
            Object::Task(t) => Some(t),
            _ => None,
        }
    }
}

fn kind_of<T: StoreObject>(_: &T) -> ObjectKind {
    T::KIND
}

/// An object type the store can hold: one of the seven in [`ObjectKind`].
/// Sealed: the store's tables are fixed.
pub trait StoreObject:
    Clone + Default + PartialEq + fmt::Debug + Send + Sync + 'static + Indexed
{
    const KIND: ObjectKind;
    /// Whether no two objects of this kind may share a name. Nodes are
    /// indexed by name but not unique: hostnames can repeat, as in docker.
    const UNIQUE_NAME: bool;

    fn meta(&self) -> Option<&pb::Meta>;
    fn meta_mut(&mut self) -> &mut pb::Meta;

    /// The name the name index uses; `None` for kinds without names (tasks).
    fn name(&self) -> Option<&str>;

    fn id(&self) -> &str {
        self.meta().map_or("", |m| m.id.as_str())
    }

    fn version(&self) -> u64 {
        self.meta().map_or(0, |m| m.version)
    }

    fn into_object(this: Arc<Self>) -> Object;
    fn from_object(obj: &Object) -> Option<&Arc<Self>>;
    fn into_target(self) -> Target;
}

/// The key names are indexed and compared under: ASCII case folded, as
/// swarmkit does (`Web` and `web` conflict, and either finds the other).
/// ASCII only, so the result never depends on a Unicode table that could
/// differ between two managers' builds.
pub(crate) fn name_key(name: &str) -> String {
    name.to_ascii_lowercase()
}

fn annotated_name(a: Option<&pb::Annotations>) -> Option<&str> {
    a.map(|a| a.name.as_str())
}

macro_rules! store_object {
    ($ty:ident, $field:ident, unique: $unique:expr, name: |$o:ident| $name:expr) => {
        impl StoreObject for pb::$ty {
            const KIND: ObjectKind = ObjectKind::$ty;
            const UNIQUE_NAME: bool = $unique;

            fn meta(&self) -> Option<&pb::Meta> {
                self.meta.as_ref()
            }
            fn meta_mut(&mut self) -> &mut pb::Meta {
                self.meta.get_or_insert_with(Default::default)
            }
            fn name(&self) -> Option<&str> {
                let $o = self;
                $name
            }
            fn into_object(this: Arc<Self>) -> Object {
                Object::$ty(this)
            }
            fn from_object(obj: &Object) -> Option<&Arc<Self>> {
                match obj {
                    Object::$ty(o) => Some(o),
                    _ => None,
                }
            }
            fn into_target(self) -> Target {
                Target::$ty(Box::new(self))
            }
        }

        impl Indexed for pb::$ty {
            fn table(t: &Tables) -> &Table<Self> {
                &t.$field
            }
            fn table_mut(t: &mut Tables) -> &mut Table<Self> {
                &mut t.$field
            }
        }
    };
}

store_object!(Cluster, clusters, unique: true,
    name: |o| annotated_name(o.spec.as_ref().and_then(|s| s.annotations.as_ref())));
store_object!(Service, services, unique: true,
    name: |o| annotated_name(o.spec.as_ref().and_then(|s| s.annotations.as_ref())));
store_object!(Network, networks, unique: true,
    name: |o| annotated_name(o.spec.as_ref().and_then(|s| s.annotations.as_ref())));
store_object!(Secret, secrets, unique: true,
    name: |o| annotated_name(o.spec.as_ref().and_then(|s| s.annotations.as_ref())));
store_object!(Config, configs, unique: true,
    name: |o| annotated_name(o.spec.as_ref().and_then(|s| s.annotations.as_ref())));
// A node's name is the one `node update` gave it, else its hostname.
store_object!(Node, nodes, unique: false,
name: |o| {
    let given = annotated_name(o.spec.as_ref().and_then(|s| s.annotations.as_ref()))
        .filter(|n| !n.is_empty());
    given.or_else(|| o.description.as_ref().map(|d| d.hostname.as_str()))
});

impl StoreObject for pb::Task {
    const KIND: ObjectKind = ObjectKind::Task;
    const UNIQUE_NAME: bool = false;

    fn meta(&self) -> Option<&pb::Meta> {
        self.meta.as_ref()
    }
    fn meta_mut(&mut self) -> &mut pb::Meta {
        self.meta.get_or_insert_with(Default::default)
    }
    fn name(&self) -> Option<&str> {
        None
    }
    fn into_object(this: Arc<Self>) -> Object {
        Object::Task(this)
    }
    fn from_object(obj: &Object) -> Option<&Arc<Self>> {
        match obj {
            Object::Task(o) => Some(o),
            _ => None,
        }
    }
    fn into_target(self) -> Target {
        Target::Task(Box::new(self))
    }
}
