//! The image store: pulls images from OCI distribution registries, loads
//! image archives (OCI layouts, `docker save` tars), keeps every layer
//! unpacked once, shared by all images that use it, and mounts container
//! root filesystems over those layers with overlayfs.
//!
//! Owns `<data-root>/images`:
//! - `blobs/sha256/<hex>`: manifests, indexes, configs and layer blobs,
//!   content-addressed, each checked against its digest before it gets
//!   its final name;
//! - `layers/<diff_id hex>/`: unpacked layers (OCI whiteouts turned into
//!   overlayfs whiteouts), checked against the config's diff_ids;
//! - `index.json`: image records (tags → config digest, layers), written
//!   atomically under the `lock` file lock;
//! - `mounts/<container>.json` and `containers/<container>/{upper,work}`:
//!   the root filesystems handed out to containers;
//! - `tmp/`: everything in flight. Nothing ever gets a final name before it
//!   is complete and verified, so a failed or interrupted pull leaves only
//!   `tmp/` entries, which [`ImageStore::recover`] removes at daemon start.
//!
//! Never runs containers, never talks to the cluster, and never trusts
//! content whose digest it has not checked itself or through oci-client.
mod digest;
mod layer;
mod load;
mod manifest;
mod pull;
mod reference;
mod rootfs;
mod store;
#[cfg(test)]
mod tests;

use std::path::PathBuf;

pub use digest::Digest;
pub use layer::{LayerStats, unpack_layer};
pub use load::LoadOutcome;
pub use manifest::{Platform, select_platform};
pub use pull::{PullEvent, PullOutcome, Puller};
pub use reference::{familiar_name, normalize_reference, split_familiar};
pub use rootfs::RootfsMount;
pub use store::{ImageRecord, ImageStore, LayerRef, PruneReport, Removal};

/// Everything that can go wrong in the image store. Messages say what
/// failed, why, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "invalid image reference {reference:?}: {reason}. Use NAME[:TAG] or NAME@sha256:DIGEST, e.g. registry.example:5000/app:1"
    )]
    InvalidReference { reference: String, reason: String },
    #[error("invalid digest {0:?}: expected sha256:<64 lowercase hex digits>")]
    InvalidDigest(String),
    #[error(
        "no such image: {0}. `swarm image ls` lists the images on this node; `swarm image pull` fetches one"
    )]
    NotFound(String),
    #[error(
        "{reference} matches several images ({candidates}): give more of the image ID or a full reference"
    )]
    Ambiguous {
        reference: String,
        candidates: String,
    },
    #[error("pulling {reference}: {message}")]
    Pull { reference: String, message: String },
    #[error("loading the image archive: {0}")]
    Load(String),
    #[error(
        "layer {layer}: its uncompressed content has digest {actual}, but the image config says {expected}. The image is corrupt or was tampered with; nothing was kept. Rebuild or re-push the image, then try again"
    )]
    DiffIdMismatch {
        layer: String,
        expected: Digest,
        actual: Digest,
    },
    #[error(
        "layer {layer} is unsafe: entry {path:?} {reason}. Refusing to unpack it; nothing was kept"
    )]
    UnsafeEntry {
        layer: String,
        path: String,
        reason: String,
    },
    #[error("layer {layer} is not a valid tar archive: {reason}. Nothing was kept")]
    BadLayer { layer: String, reason: String },
    #[error("{0}")]
    Unsupported(String),
    #[error(
        "image {image} is in use by the root filesystem of container(s) {containers}: stop and remove them first, or use --force to remove only the name"
    )]
    InUse { image: String, containers: String },
    #[error(
        "image {image} has several names ({names}): remove them by name, or use --force to remove the image with all its names"
    )]
    MultipleNames { image: String, names: String },
    #[error(
        "invalid container ID {0:?}: use 1 to 128 letters, digits, '_', '-' or '.', not starting with '.'"
    )]
    InvalidContainerId(String),
    #[error("container {0} already has a root filesystem: release it first (ImageStore::release)")]
    RootfsExists(String),
    #[error("mounting the root filesystem of container {container} at {target}: {reason}")]
    Mount {
        container: String,
        target: PathBuf,
        reason: String,
    },
    #[error(
        "the image index {path} is unreadable: {reason}. Move it aside and pull or load the images again"
    )]
    CorruptIndex { path: PathBuf, reason: String },
    #[error(
        "the store is missing {what} of image {image}: it was removed behind swarm's back. Remove the image (`swarm image rm`) and pull it again"
    )]
    Missing { image: String, what: String },
}

impl ImageError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ImageError {
        let context = context.into();
        move |source| ImageError::Io { context, source }
    }
}
