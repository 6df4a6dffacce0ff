//! Write transactions: how the leader builds a batch to propose.
//!
//! A [`WriteTx`] works on a private copy of a view (cheap: the tables are
//! persistent), checks every write with the same rules as apply, and records
//! the actions in order. Reads through it see its own writes.

use std::sync::Arc;

use swarm_proto::v1 as pb;
use swarm_proto::v1::StoreActionKind as Kind;

use super::error::StoreError;
use super::object::StoreObject;
use super::read::ReadTx;
use super::tables::Stamp;

/// A leader's trial transaction; see [`MemoryStore::prepare`](super::MemoryStore::prepare).
///
/// Versions do not move inside a transaction: an object created here reads
/// back with version 0, an updated one keeps the version it had. So an
/// object read through the transaction can always be written again through
/// it, and the batch applies with the same outcome, action by action (see
/// [`MemoryStore::apply`](super::MemoryStore::apply) for the rule), provided
/// nothing else was committed in between.
pub struct WriteTx {
    view: ReadTx,
    actions: Vec<pb::StoreAction>,
}

impl std::fmt::Debug for WriteTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteTx")
            .field("base_version", &self.view.version())
            .field("actions", &self.actions.len())
            .finish()
    }
}

impl std::ops::Deref for WriteTx {
    type Target = ReadTx;
    fn deref(&self) -> &ReadTx {
        &self.view
    }
}

impl WriteTx {
    pub(super) fn new(view: ReadTx) -> Self {
        WriteTx {
            view,
            actions: Vec::new(),
        }
    }

    /// Creates `obj` (its `meta.id` must be set, see [`new_id`](super::new_id)).
    pub fn create<T: StoreObject>(&mut self, obj: T) -> Result<(), StoreError> {
        Arc::make_mut(&mut self.view.tables).create(obj.clone(), &mut Stamp::Propose)?;
        self.record(Kind::Create, obj);
        Ok(())
    }

    /// Replaces the object with `obj`, which must carry the version it was
    /// read at through this transaction.
    pub fn update<T: StoreObject>(&mut self, obj: T) -> Result<(), StoreError> {
        Arc::make_mut(&mut self.view.tables).update(obj.clone(), &mut Stamp::Propose)?;
        self.record(Kind::Update, obj);
        Ok(())
    }

    /// Removes the `T` with this ID.
    pub fn remove<T: StoreObject>(&mut self, id: &str) -> Result<(), StoreError> {
        Arc::make_mut(&mut self.view.tables).remove::<T>(id, &mut Stamp::Propose)?;
        // Only the ID of a removal travels.
        let mut stub = T::default();
        stub.meta_mut().id = id.to_owned();
        self.record(Kind::Remove, stub);
        Ok(())
    }

    /// Places the task on `node_id` with `status`, written as a
    /// [`pb::TaskAssignment`] (a fraction of the task's size) if the task
    /// still [`awaits_node`](super::awaits_node) there. Whether it did;
    /// nothing is recorded if not.
    pub fn assign(
        &mut self,
        task_id: &str,
        node_id: &str,
        status: pb::TaskStatus,
    ) -> Result<bool, StoreError> {
        let action = super::assignment(task_id, node_id, status);
        let written = Arc::make_mut(&mut self.view.tables)
            .apply_action(action.clone(), &mut Stamp::Propose)?
            .is_some();
        if written {
            self.actions.push(action);
        }
        Ok(written)
    }

    fn record<T: StoreObject>(&mut self, kind: Kind, obj: T) {
        self.actions.push(pb::StoreAction {
            kind: kind.into(),
            target: Some(obj.into_target()),
        });
    }

    /// How many writes the transaction holds.
    #[must_use]
    pub fn len(&self) -> usize {
        self.actions.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }

    /// The batch's actions, in the order they were written.
    #[must_use]
    pub fn into_actions(self) -> Vec<pb::StoreAction> {
        self.actions
    }

    /// The actions written since the last call, in order; the transaction
    /// goes on from its state with them written. For a writer that proposes
    /// a long transaction in pieces while it prepares the rest.
    pub fn take_actions(&mut self) -> Vec<pb::StoreAction> {
        std::mem::take(&mut self.actions)
    }
}
