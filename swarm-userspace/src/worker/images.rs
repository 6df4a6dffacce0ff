//! Where a task's image and root filesystem come from: the node's image
//! store and registry client ([`StoreImages`]), or nothing at all for
//! simulated nodes ([`SimulatedImages`], with the fake executor).
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use crate::executor::ImageConfig;
use crate::image::{ImageError, ImageStore, Puller, RootfsMount};
use crate::metrics::metrics;

use super::WorkerError;

/// An image the node has: its ID and its config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedImage {
    /// `sha256:...`; mounts use it, so a tag moving meanwhile changes
    /// nothing.
    pub id: String,
    pub config: ImageConfig,
}

/// A mounted root filesystem. Dropped without [`Rootfs::keep`] (e.g. a
/// task manager aborted mid-prepare), it is unmounted again.
#[derive(Debug)]
pub struct Rootfs {
    pub path: PathBuf,
    mount: Option<RootfsMount>,
}

impl Rootfs {
    /// A path with nothing to unmount (simulated nodes, tests).
    pub fn unmounted(path: PathBuf) -> Rootfs {
        Rootfs { path, mount: None }
    }

    /// The container now uses it: it stays until released by container ID.
    pub fn keep(self) {
        if let Some(m) = self.mount {
            m.keep();
        }
    }
}

#[async_trait::async_trait]
pub trait Images: Send + Sync {
    /// The image, if the node has it. Never pulls.
    async fn local(&self, reference: &str) -> Option<ResolvedImage>;

    /// The image, pulled first if the node does not have it.
    async fn ensure(&self, reference: &str) -> Result<ResolvedImage, WorkerError>;

    /// Mounts container `container_id`'s rootfs of image `image_id`.
    async fn mount(&self, image_id: &str, container_id: &str) -> Result<Rootfs, WorkerError>;

    /// Unmounts it and deletes its writable layer; nothing to do if none.
    async fn release(&self, container_id: &str) -> Result<(), WorkerError>;

    /// Container IDs with a mounted rootfs.
    async fn mounted(&self) -> Result<Vec<String>, WorkerError>;
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ImageError> + Send + 'static,
) -> Result<T, WorkerError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| WorkerError::Blocking(e.to_string()))?
        .map_err(WorkerError::Image)
}

/// The node's image store and registry client.
pub struct StoreImages {
    store: ImageStore,
    puller: Arc<Puller>,
    /// One pull per reference at a time: tasks of one service arriving
    /// together share the first one's pull.
    pulls: tokio::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for StoreImages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreImages")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl StoreImages {
    pub fn new(store: ImageStore, puller: Arc<Puller>) -> StoreImages {
        StoreImages {
            store,
            puller,
            pulls: Default::default(),
        }
    }

    fn resolve(store: &ImageStore, reference: &str) -> Result<ResolvedImage, ImageError> {
        let rec = store.inspect(reference)?;
        let config = store.image_config(&rec.id)?;
        Ok(ResolvedImage {
            id: rec.id.to_string(),
            config,
        })
    }
}

#[async_trait::async_trait]
impl Images for StoreImages {
    async fn local(&self, reference: &str) -> Option<ResolvedImage> {
        let (store, r) = (self.store.clone(), reference.to_owned());
        blocking(move || StoreImages::resolve(&store, &r))
            .await
            .ok()
    }

    async fn ensure(&self, reference: &str) -> Result<ResolvedImage, WorkerError> {
        if let Some(i) = self.local(reference).await {
            return Ok(i);
        }
        let lock = self
            .pulls
            .lock()
            .await
            .entry(reference.to_owned())
            .or_default()
            .clone();
        let _one = lock.lock().await;
        if let Some(i) = self.local(reference).await {
            return Ok(i);
        }
        let started = Instant::now();
        tracing::info!(image = reference, "pulling the image of a task");
        let out = self
            .store
            .pull(&self.puller, reference, Arc::new(|_| {}))
            .await?;
        let m = metrics();
        m.agent_image_pull_seconds
            .observe(started.elapsed().as_secs_f64());
        m.agent_image_pull_bytes.inc_by(out.downloaded);
        tracing::info!(image = reference, id = %out.id, bytes = out.downloaded, "image pulled");
        let store = self.store.clone();
        let id = out.id.to_string();
        blocking(move || StoreImages::resolve(&store, &id)).await
    }

    async fn mount(&self, image_id: &str, container_id: &str) -> Result<Rootfs, WorkerError> {
        let store = self.store.clone();
        let (image, id) = (image_id.to_owned(), container_id.to_owned());
        let mount = blocking(move || {
            let target = store.rootfs_target(&id);
            store.prepare_rootfs(&image, &target, &id)
        })
        .await?;
        Ok(Rootfs {
            path: mount.target().to_path_buf(),
            mount: Some(mount),
        })
    }

    async fn release(&self, container_id: &str) -> Result<(), WorkerError> {
        let store = self.store.clone();
        let id = container_id.to_owned();
        blocking(move || store.release(&id)).await
    }

    async fn mounted(&self) -> Result<Vec<String>, WorkerError> {
        let store = self.store.clone();
        let users = blocking(move || store.rootfs_users()).await?;
        Ok(users.into_iter().map(|(c, _)| c).collect())
    }
}

/// No images: for the fake executor, whose containers need no rootfs.
/// Every reference "exists", with a command so specs without one are valid.
#[derive(Clone, Debug, Default)]
pub struct SimulatedImages;

#[async_trait::async_trait]
impl Images for SimulatedImages {
    async fn local(&self, reference: &str) -> Option<ResolvedImage> {
        Some(ResolvedImage {
            id: format!("simulated:{reference}"),
            config: ImageConfig {
                cmd: vec!["simulated".into()],
                ..Default::default()
            },
        })
    }

    async fn ensure(&self, reference: &str) -> Result<ResolvedImage, WorkerError> {
        self.local(reference)
            .await
            .ok_or_else(|| WorkerError::Image(ImageError::NotFound(reference.to_owned())))
    }

    async fn mount(&self, _image_id: &str, _container_id: &str) -> Result<Rootfs, WorkerError> {
        Ok(Rootfs::unmounted(PathBuf::from("/nonexistent")))
    }

    async fn release(&self, _container_id: &str) -> Result<(), WorkerError> {
        Ok(())
    }

    async fn mounted(&self) -> Result<Vec<String>, WorkerError> {
        Ok(Vec::new())
    }
}
