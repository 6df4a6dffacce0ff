//! Why a store write was refused.
//!
//! Every variant is a pure function of the store's state and the batch, so
//! every manager that applies the same batch fails it with the same error.

use super::ObjectKind;

/// A write the store refused. A refused batch changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error(
        "cannot create {kind} {id}: an object with this ID already exists; create it with a new ID (store::new_id)"
    )]
    AlreadyExists { kind: ObjectKind, id: String },

    #[error(
        "{kind} {id} not found: it was removed or never created; re-read the store before writing"
    )]
    NotFound { kind: ObjectKind, id: String },

    #[error(
        "update of {kind} {id} out of sequence: it was read at version {read} but the store holds version {stored}; \
         re-read it, reapply the change and retry"
    )]
    OutOfSequence {
        kind: ObjectKind,
        id: String,
        read: u64,
        stored: u64,
    },

    #[error(
        "{kind} name {name:?} is already in use by {kind} {existing_id}; choose another name or remove that {kind} first"
    )]
    NameConflict {
        kind: ObjectKind,
        name: String,
        existing_id: String,
    },

    #[error("invalid {kind}: {reason}")]
    InvalidObject { kind: ObjectKind, reason: String },

    #[error("invalid store action: {reason}; this is a bug in the proposing manager")]
    InvalidAction { reason: String },

    #[error(
        "batch at Raft index {index} is not newer than the store (version {version}): it was already applied; \
         the Raft layer must apply each entry once, in order"
    )]
    StaleIndex { index: u64, version: u64 },

    #[error("batch at Raft index {index} has no timestamp; the proposing leader must set one")]
    MissingTimestamp { index: u64 },

    #[error("cannot restore store snapshot: {0}")]
    InvalidSnapshot(Box<StoreError>),

    #[error(
        "cannot decode store snapshot: {0}; the snapshot is corrupt or from an incompatible version"
    )]
    Decode(#[from] prost::DecodeError),
}
