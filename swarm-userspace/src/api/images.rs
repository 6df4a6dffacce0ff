//! The Images service on the node-local socket: a thin adapter from gRPC to
//! [`ImageStore`]. Owns no image logic; maps errors to status codes.
use std::{pin::Pin, sync::Arc, time::Instant};

use swarm_proto::v1::{self as pb, images_server::Images};
use tokio::io::AsyncWriteExt;
use tokio_stream::{Stream, StreamExt, wrappers::UnboundedReceiverStream};
use tonic::{Request, Response, Status, Streaming};

use crate::image::{
    ImageError, ImageRecord, ImageStore, PullEvent, Puller, Removal, familiar_name,
};

/// The Images service of one daemon.
#[derive(Clone, Debug)]
pub struct ImagesApi {
    store: ImageStore,
    puller: Arc<Puller>,
}

impl ImagesApi {
    pub fn new(store: ImageStore, puller: Arc<Puller>) -> Self {
        ImagesApi { store, puller }
    }
}

fn status(e: ImageError) -> Status {
    let msg = e.to_string();
    match e {
        ImageError::NotFound(_) => Status::not_found(msg),
        ImageError::InvalidReference { .. }
        | ImageError::InvalidDigest(_)
        | ImageError::Ambiguous { .. }
        | ImageError::InvalidContainerId(_) => Status::invalid_argument(msg),
        ImageError::InUse { .. }
        | ImageError::MultipleNames { .. }
        | ImageError::RootfsExists(_) => Status::failed_precondition(msg),
        ImageError::Pull { .. }
        | ImageError::Load(_)
        | ImageError::DiffIdMismatch { .. }
        | ImageError::UnsafeEntry { .. }
        | ImageError::BadLayer { .. }
        | ImageError::Unsupported(_) => Status::failed_precondition(msg),
        _ => Status::internal(msg),
    }
}

/// Blocking store calls run off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ImageError> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("image store task failed: {e}")))?
        .map_err(status)
}

fn created_unix(rec: &ImageRecord) -> i64 {
    rec.created
        .as_deref()
        .and_then(|c| {
            time::OffsetDateTime::parse(c, &time::format_description::well_known::Rfc3339).ok()
        })
        .map_or(0, time::OffsetDateTime::unix_timestamp)
}

type PullStream = Pin<Box<dyn Stream<Item = Result<pb::PullImageEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Images for ImagesApi {
    async fn list(
        &self,
        _req: Request<pb::ListImagesRequest>,
    ) -> Result<Response<pb::ListImagesResponse>, Status> {
        let store = self.store.clone();
        let (records, mounts) =
            blocking(move || Ok((store.list()?, store.rootfs_users()?))).await?;
        let images = records
            .into_iter()
            .map(|r| pb::Image {
                created_unix: created_unix(&r),
                repo_tags: r.tags.iter().map(|t| familiar_name(t)).collect(),
                repo_digests: r.repo_digests.iter().map(|t| familiar_name(t)).collect(),
                size: r.size,
                layers: r.layers.iter().map(|l| l.diff_id.to_string()).collect(),
                os: r.platform.os.clone(),
                architecture: r.platform.architecture.clone(),
                used_by: mounts
                    .iter()
                    .filter(|(_, img)| *img == r.id)
                    .map(|(c, _)| c.clone())
                    .collect(),
                id: r.id.to_string(),
            })
            .collect();
        Ok(Response::new(pb::ListImagesResponse { images }))
    }

    type PullStream = PullStream;

    async fn pull(
        &self,
        req: Request<pb::PullImageRequest>,
    ) -> Result<Response<Self::PullStream>, Status> {
        let reference = req.into_inner().reference;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let events = tx.clone();
        let progress = Arc::new(move |ev: PullEvent| {
            let event = match ev {
                PullEvent::Resolved {
                    reference,
                    manifest,
                    layers,
                } => pb::pull_image_event::Event::Resolved(pb::PullResolved {
                    reference,
                    manifest_digest: manifest.to_string(),
                    layers: layers.iter().map(ToString::to_string).collect(),
                }),
                PullEvent::LayerExists { blob } => layer(blob, pb::LayerPullState::Exists, 0, 0),
                PullEvent::Downloading {
                    blob,
                    current,
                    total,
                } => layer(blob, pb::LayerPullState::Downloading, current, total),
                PullEvent::Extracting { blob } => layer(blob, pb::LayerPullState::Extracting, 0, 0),
                PullEvent::LayerDone { blob } => layer(blob, pb::LayerPullState::Complete, 0, 0),
            };
            let _ = events.send(Ok(pb::PullImageEvent { event: Some(event) }));
        });
        let store = self.store.clone();
        let puller = self.puller.clone();
        // The pull goes on if the client goes away: it leaves a complete
        // image or nothing, and a second pull of the same image waits for
        // its layers instead of fetching them again.
        tokio::spawn(async move {
            let started = Instant::now();
            let res = store.pull(&puller, &reference, progress).await;
            let msg = match res {
                Ok(o) => {
                    tracing::info!(reference = %o.reference, id = %o.id, bytes = o.downloaded, elapsed_ms = started.elapsed().as_millis() as u64, "image pulled");
                    Ok(pb::PullImageEvent {
                        event: Some(pb::pull_image_event::Event::Done(pb::PullDone {
                            reference: familiar_name(&o.reference),
                            digest: o.digest.to_string(),
                            image_id: o.id.to_string(),
                            up_to_date: o.up_to_date,
                            downloaded_bytes: o.downloaded,
                            elapsed_ms: u64::try_from(started.elapsed().as_millis())
                                .unwrap_or(u64::MAX),
                        })),
                    })
                }
                Err(e) => {
                    tracing::warn!(%reference, error = %e, "image pull failed");
                    Err(status(e))
                }
            };
            let _ = tx.send(msg);
        });
        let stream: PullStream = Box::pin(UnboundedReceiverStream::new(rx));
        Ok(Response::new(stream))
    }

    async fn remove(
        &self,
        req: Request<pb::RemoveImagesRequest>,
    ) -> Result<Response<pb::RemoveImagesResponse>, Status> {
        let req = req.into_inner();
        let store = self.store.clone();
        let resp = blocking(move || {
            let mut resp = pb::RemoveImagesResponse::default();
            for r in &req.references {
                match store.remove(r, req.force) {
                    Ok(removals) => {
                        resp.removals
                            .extend(removals.into_iter().map(|x| pb::ImageRemoval {
                                what: Some(match x {
                                    Removal::Untagged(t) => pb::image_removal::What::Untagged(t),
                                    Removal::Deleted(d) => {
                                        pb::image_removal::What::Deleted(d.to_string())
                                    }
                                }),
                            }))
                    }
                    Err(e) => resp.errors.push(format!("{r}: {e}")),
                }
            }
            Ok(resp)
        })
        .await?;
        Ok(Response::new(resp))
    }

    async fn load(
        &self,
        req: Request<Streaming<pb::LoadImageChunk>>,
    ) -> Result<Response<pb::LoadImageResponse>, Status> {
        let mut stream = req.into_inner();
        // Spooled to the store's tmp/ (removed on drop, and at the next
        // daemon start if the daemon dies): a docker save tar may keep its
        // manifest.json at the end, so the archive is read only when whole.
        let tmp = self.store.temp_file().map_err(status)?;
        let std_file = tmp
            .as_file()
            .try_clone()
            .map_err(|e| Status::internal(format!("spooling the archive: {e}")))?;
        let mut file = tokio::fs::File::from_std(std_file);
        let mut received = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            received += chunk.data.len() as u64;
            file.write_all(&chunk.data).await.map_err(|e| {
                Status::internal(format!(
                    "spooling the archive to {}: {e}",
                    tmp.path().display()
                ))
            })?;
        }
        file.flush()
            .await
            .map_err(|e| Status::internal(format!("spooling the archive: {e}")))?;
        if received == 0 {
            return Err(Status::invalid_argument(
                "the archive is empty: pass a file with -i/--input, or pipe one into stdin",
            ));
        }
        let outcome = self.store.load(tmp.path()).await.map_err(status)?;
        drop(tmp);
        Ok(Response::new(pb::LoadImageResponse {
            images: outcome
                .images
                .into_iter()
                .map(|(id, tags)| pb::LoadedImage {
                    id: id.to_string(),
                    repo_tags: tags.iter().map(|t| familiar_name(t)).collect(),
                })
                .collect(),
        }))
    }

    async fn prune(
        &self,
        req: Request<pb::PruneImagesRequest>,
    ) -> Result<Response<pb::PruneImagesResponse>, Status> {
        let report = self
            .store
            .prune(req.into_inner().all)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::PruneImagesResponse {
            deleted_images: report.images.iter().map(ToString::to_string).collect(),
            deleted_layers: report.layers.iter().map(ToString::to_string).collect(),
            reclaimed_bytes: report.reclaimed_bytes,
        }))
    }
}

fn layer(
    blob: crate::image::Digest,
    state: pb::LayerPullState,
    current: u64,
    total: u64,
) -> pb::pull_image_event::Event {
    pb::pull_image_event::Event::Layer(pb::LayerPullProgress {
        digest: blob.to_string(),
        state: state.into(),
        current_bytes: current,
        total_bytes: total,
    })
}
