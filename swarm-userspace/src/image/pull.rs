//! Pulling from OCI distribution registries with oci-client.
//!
//! oci-client checks the digest of every manifest and blob it fetches; this
//! module checks diff_ids (through [`ImageStore::commit_layer`]) and turns
//! registry failures into messages a user can act on.
use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use oci_client::{
    Client, Reference,
    client::{ClientConfig, ClientProtocol},
    errors::{OciDistributionError, OciErrorCode},
    secrets::RegistryAuth,
};
use tokio::io::AsyncWrite;

use super::{
    Digest, ImageError, ImageRecord, ImageStore, LayerRef, Platform,
    manifest::{self, ImageConfig, Manifest},
    reference,
};

/// Layers fetched at once, as docker does.
const PARALLEL_LAYERS: usize = 3;
/// How often download progress is reported per layer.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// A registry client for pulls. Holds oci-client's connection pool and
/// token cache, so one per daemon.
pub struct Puller {
    client: Client,
    insecure: Vec<String>,
    platform: Platform,
}

impl std::fmt::Debug for Puller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Puller")
            .field("insecure", &self.insecure)
            .field("platform", &self.platform)
            .finish()
    }
}

impl Puller {
    /// A client speaking HTTPS to every registry except the
    /// `insecure_registries` (`host:port` as in references), which get
    /// plain HTTP.
    pub fn new(insecure_registries: &[String]) -> Result<Puller, ImageError> {
        // reqwest is built without a crypto provider of its own (so
        // aws-lc-rs stays out of the build): ring is the process default.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = ClientConfig {
            protocol: ClientProtocol::HttpsExcept(insecure_registries.to_vec()),
            connect_timeout: Some(Duration::from_secs(10)),
            // Per read, not per download: a stalled registry fails the
            // pull instead of hanging it.
            read_timeout: Some(Duration::from_secs(60)),
            platform_resolver: None,
            user_agent: concat!("swarm/", env!("CARGO_PKG_VERSION")),
            ..ClientConfig::default()
        };
        let client = Client::try_from(config).map_err(|e| ImageError::Pull {
            reference: "-".into(),
            message: format!("cannot set up the registry client: {}", chain(&e)),
        })?;
        Ok(Puller {
            client,
            insecure: insecure_registries.to_vec(),
            platform: Platform::current(),
        })
    }

    /// Pulls for another platform (tests).
    pub fn with_platform(mut self, platform: Platform) -> Puller {
        self.platform = platform;
        self
    }
}

/// Progress of a pull, for display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullEvent {
    /// The manifest was fetched: `layers` will follow.
    Resolved {
        reference: String,
        manifest: Digest,
        layers: Vec<Digest>,
    },
    LayerExists {
        blob: Digest,
    },
    Downloading {
        blob: Digest,
        current: u64,
        total: u64,
    },
    Extracting {
        blob: Digest,
    },
    LayerDone {
        blob: Digest,
    },
}

/// The result of a pull.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullOutcome {
    /// The canonical reference pulled.
    pub reference: String,
    /// The image ID (config digest).
    pub id: Digest,
    /// The digest the reference resolved to (an index for multi-platform
    /// images), as `docker pull` prints it.
    pub digest: Digest,
    /// The store already had this image under this name.
    pub up_to_date: bool,
    /// Bytes downloaded for layers.
    pub downloaded: u64,
}

type Progress = Arc<dyn Fn(PullEvent) + Send + Sync>;

impl ImageStore {
    /// Pulls `reference` into the store. Progress goes to `progress`. On
    /// error nothing partial stays behind (complete, verified layers may).
    pub async fn pull(
        &self,
        puller: &Puller,
        reference: &str,
        progress: Arc<dyn Fn(PullEvent) + Send + Sync>,
    ) -> Result<PullOutcome, ImageError> {
        let r = reference::parse(reference)?;
        let canonical = r.whole();
        let shown = reference::familiar_name(&canonical);
        let fail = |message: String| ImageError::Pull {
            reference: shown.clone(),
            message,
        };
        let registry = r.resolve_registry().to_owned();
        let insecure = puller.insecure.contains(&registry);
        let registry_err =
            |what: &str, e: OciDistributionError| fail(explain(&registry, insecure, what, e));
        let auth = RegistryAuth::Anonymous;

        let _gc = self.gc_shared().read().await;

        let (bytes, digest) = puller
            .client
            .pull_manifest_raw(&r, &auth, manifest::ACCEPTED_MANIFESTS)
            .await
            .map_err(|e| registry_err("the manifest", e))?;
        let top = Digest::parse(&digest).map_err(|e| fail(e.to_string()))?;
        let (image_manifest, manifest_digest, manifest_bytes, index) =
            match manifest::parse_manifest(&bytes).map_err(&fail)? {
                Manifest::Image(m) => (m, top.clone(), bytes.to_vec(), None),
                Manifest::Index(ix) => {
                    let chosen = ix.choose(&puller.platform).map_err(&fail)?;
                    let d = Digest::parse(&chosen.digest).map_err(|e| fail(e.to_string()))?;
                    let (mbytes, _) = puller
                        .client
                        .pull_manifest_raw(
                            &r.clone_with_digest(d.to_string()),
                            &auth,
                            manifest::ACCEPTED_MANIFESTS,
                        )
                        .await
                        .map_err(|e| {
                            registry_err(&format!("the {} manifest", puller.platform), e)
                        })?;
                    match manifest::parse_manifest(&mbytes).map_err(&fail)? {
                        Manifest::Image(m) => {
                            (m, d, mbytes.to_vec(), Some((top.clone(), bytes.to_vec())))
                        }
                        Manifest::Index(_) => {
                            return Err(fail(
                                "the index points to another index; nested indexes are not supported".into(),
                            ));
                        }
                    }
                }
            };
        let layers: Vec<Digest> = image_manifest
            .layers
            .iter()
            .map(|l| Digest::parse(&l.digest))
            .collect::<Result<_, _>>()
            .map_err(|e| fail(e.to_string()))?;
        for l in &image_manifest.layers {
            check_layer_media_type(&l.media_type).map_err(&fail)?;
        }
        progress(PullEvent::Resolved {
            reference: canonical.clone(),
            manifest: manifest_digest.clone(),
            layers: layers.clone(),
        });

        // The config: small, fetched into memory (digest checked by
        // oci-client, and again when stored).
        let config_digest =
            Digest::parse(&image_manifest.config.digest).map_err(|e| fail(e.to_string()))?;
        let config_bytes = if self.has_blob(&config_digest) {
            self.read_blob(&config_digest)?
        } else {
            let mut buf = Vec::new();
            puller
                .client
                .pull_blob(&r, config_digest.as_str(), &mut buf)
                .await
                .map_err(|e| registry_err("the image config", e))?;
            buf
        };
        let config = ImageConfig::parse(&config_bytes).map_err(&fail)?;
        config.check_platform(&puller.platform).map_err(&fail)?;
        let diff_ids = config.diff_ids().map_err(|e| fail(e.to_string()))?;
        if diff_ids.len() != layers.len() {
            return Err(fail(format!(
                "the manifest lists {} layers but the config {} diff_ids: the image is malformed; rebuild it",
                layers.len(),
                diff_ids.len()
            )));
        }

        // Layers, a few at a time; the first failure cancels the rest
        // (their temp files go with them). Unpacks run on blocking threads,
        // which cannot be cancelled: each holds `unpacks` shared, and a
        // failing pull waits for them, so it returns with nothing in flight.
        let sem = Arc::new(tokio::sync::Semaphore::new(PARALLEL_LAYERS));
        let unpacks = Arc::new(tokio::sync::RwLock::new(()));
        let mut tasks = tokio::task::JoinSet::new();
        for (i, (blob, diff_id)) in layers.iter().zip(&diff_ids).enumerate() {
            let store = self.clone();
            let client = puller.client.clone();
            let r = r.clone();
            let blob = blob.clone();
            let diff_id = diff_id.clone();
            let sem = sem.clone();
            let unpacks = unpacks.clone();
            let progress = progress.clone();
            let total = u64::try_from(image_manifest.layers[i].size).unwrap_or(0);
            tasks.spawn(async move {
                let _permit = sem.acquire_owned().await;
                store
                    .fetch_layer(&client, &r, &blob, &diff_id, total, progress, unpacks)
                    .await
            });
        }
        let mut downloaded = 0;
        let mut failure = None;
        while let Some(res) = tasks.join_next().await {
            let err = match res {
                Ok(Ok(n)) => {
                    downloaded += n;
                    continue;
                }
                Ok(Err(LayerFailure::Registry(what, e))) => registry_err(&what, e),
                Ok(Err(LayerFailure::Store(e))) => e,
                Err(e) if e.is_cancelled() => continue,
                Err(e) => fail(format!("a layer download task failed: {e}")),
            };
            if failure.is_none() {
                failure = Some(err);
                tasks.abort_all();
            }
        }
        if let Some(e) = failure {
            let _quiet = unpacks.write().await;
            return Err(e);
        }

        // Only now, with every layer in place, do the documents and the
        // record appear.
        self.write_blob(&config_digest, &config_bytes)?;
        self.write_blob(&manifest_digest, &manifest_bytes)?;
        if let Some((d, b)) = &index {
            self.write_blob(d, b)?;
        }
        let repo_digest = format!("{}@{}", reference::repository(&r), top);
        let tags = if r.digest().is_none() {
            vec![canonical.clone()]
        } else {
            Vec::new()
        };
        let rec = ImageRecord {
            id: config_digest.clone(),
            tags,
            repo_digests: vec![repo_digest],
            manifest: Some(manifest_digest),
            index: index.map(|(d, _)| d),
            layers: image_manifest
                .layers
                .iter()
                .zip(&diff_ids)
                .zip(&layers)
                .map(|((l, diff_id), blob)| LayerRef {
                    diff_id: diff_id.clone(),
                    blob: Some(blob.clone()),
                    media_type: l.media_type.clone(),
                })
                .collect(),
            platform: config.platform(),
            created: config.created.clone(),
            size: 0,
        };
        let up_to_date = self.record_image(rec)? && downloaded == 0;
        Ok(PullOutcome {
            reference: canonical,
            id: config_digest,
            digest: top,
            up_to_date,
            downloaded,
        })
    }

    /// Fetches and unpacks one layer unless it is already here. Returns
    /// the bytes downloaded.
    #[allow(clippy::too_many_arguments)]
    async fn fetch_layer(
        &self,
        client: &Client,
        r: &Reference,
        blob: &Digest,
        diff_id: &Digest,
        total: u64,
        progress: Progress,
        unpacks: Arc<tokio::sync::RwLock<()>>,
    ) -> Result<u64, LayerFailure> {
        let lock = self.layer_lock(diff_id);
        let _guard = lock.lock().await;
        if self.has_layer(diff_id) {
            progress(PullEvent::LayerExists { blob: blob.clone() });
            return Ok(0);
        }
        let mut downloaded = 0;
        if !self.has_blob(blob) {
            let tmp = self.temp_file().map_err(LayerFailure::Store)?;
            let file = tmp
                .as_file()
                .try_clone()
                .map_err(ImageError::io("duplicating a temp file handle"))
                .map_err(LayerFailure::Store)?;
            let writer = ProgressWriter {
                inner: tokio::fs::File::from_std(file),
                written: 0,
                total,
                last: Instant::now(),
                blob: blob.clone(),
                progress: progress.clone(),
            };
            progress(PullEvent::Downloading {
                blob: blob.clone(),
                current: 0,
                total,
            });
            let what = format!("layer {}", blob.short());
            client
                .pull_blob(r, blob.as_str(), writer)
                .await
                .map_err(|e| LayerFailure::Registry(what.clone(), e))?;
            tmp.as_file()
                .sync_all()
                .map_err(ImageError::io(format!("writing {what}")))
                .map_err(LayerFailure::Store)?;
            downloaded = tmp.as_file().metadata().map(|m| m.len()).unwrap_or(0);
            self.commit_blob(tmp, blob).map_err(LayerFailure::Store)?;
        }
        progress(PullEvent::Extracting { blob: blob.clone() });
        let store = self.clone();
        let path = self.blob_path(blob);
        let (diff, name) = (diff_id.clone(), blob.short().to_owned());
        let busy = unpacks.read_owned().await;
        tokio::task::spawn_blocking(move || {
            let res = store.commit_layer(&path, &diff, &name);
            drop(busy);
            res
        })
        .await
        .map_err(|e| {
            LayerFailure::Store(ImageError::Io {
                context: format!("unpacking layer {}", blob.short()),
                source: std::io::Error::other(e),
            })
        })?
        .map_err(LayerFailure::Store)?;
        progress(PullEvent::LayerDone { blob: blob.clone() });
        Ok(downloaded)
    }
}

enum LayerFailure {
    Registry(String, OciDistributionError),
    Store(ImageError),
}

fn check_layer_media_type(mt: &str) -> Result<(), String> {
    let ok = mt.is_empty()
        || mt.starts_with("application/vnd.oci.image.layer.")
        || mt.starts_with("application/vnd.docker.image.rootfs.");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "it has a layer of media type {mt:?}, which is not a container filesystem layer: is this an artifact rather than a container image?"
        ))
    }
}

/// Counts bytes into the temp file and reports progress now and then.
struct ProgressWriter {
    inner: tokio::fs::File,
    written: u64,
    total: u64,
    last: Instant,
    blob: Digest,
    progress: Progress,
}

impl AsyncWrite for ProgressWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let res = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &res {
            this.written += *n as u64;
            if this.last.elapsed() >= PROGRESS_EVERY {
                this.last = Instant::now();
                (this.progress)(PullEvent::Downloading {
                    blob: this.blob.clone(),
                    current: this.written,
                    total: this.total,
                });
            }
        }
        res
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The error and its causes, joined: reqwest hides the useful part
/// ("Connection refused") in the source chain.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let s = c.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = c.source();
    }
    out
}

/// A registry failure in words a user can act on.
fn explain(registry: &str, insecure: bool, what: &str, e: OciDistributionError) -> String {
    let http_hint = if insecure {
        String::new()
    } else {
        format!(
            " If {registry} serves plain HTTP, start the daemon with --insecure-registry {registry}."
        )
    };
    match e {
        OciDistributionError::RegistryError { envelope, .. } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
            let msgs: Vec<String> = envelope
                .errors
                .iter()
                .map(|e| format!("{:?}: {}", e.code, e.message))
                .collect();
            let detail = msgs.join("; ");
            if codes.iter().any(|c| {
                matches!(
                    c,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::BlobUnknown
                        | OciErrorCode::NotFound
                )
            }) {
                format!(
                    "the registry {registry} does not have {what} ({detail}): does the image exist? Check the repository name and tag (the registry lists its repositories at /v2/_catalog)"
                )
            } else if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
            {
                format!(
                    "the registry {registry} refused access to {what} ({detail}): swarm pulls anonymously; make the repository public or load the image with `swarm image load`"
                )
            } else if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::Toomanyrequests))
            {
                format!(
                    "the registry {registry} is rate-limiting pulls ({detail}): wait and try again"
                )
            } else {
                format!("the registry {registry} refused {what}: {detail}")
            }
        }
        OciDistributionError::ServerError { code: 404, .. } => format!(
            "the registry {registry} answered 404 for {what}: does the image exist? Check the repository name and tag (the registry lists its repositories at /v2/_catalog)"
        ),
        OciDistributionError::ServerError { code, message, .. } => format!(
            "the registry {registry} answered HTTP {code} for {what}: {}. Try again later, or check the registry's logs",
            message.trim()
        ),
        OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::AuthenticationFailure(_) => format!(
            "the registry {registry} requires authentication for {what}, which swarm does not support yet: make the repository public for pulls, or load the image with `swarm image load`"
        ),
        OciDistributionError::DigestError(d) => format!(
            "the registry {registry} sent {what} with the wrong content ({d}): a broken registry or proxy. Nothing was kept; try again"
        ),
        OciDistributionError::RequestError(re) => {
            let detail = chain(&re);
            if re.is_connect() {
                format!(
                    "cannot connect to the registry {registry}: {detail}. Is it running and reachable from this node?{http_hint}"
                )
            } else if re.is_timeout() {
                format!(
                    "the registry {registry} stopped answering while sending {what}: {detail}. Nothing partial was kept; check the registry and try again"
                )
            } else if re.is_body() || re.is_decode() {
                format!(
                    "the download of {what} from {registry} was interrupted: {detail}. Nothing partial was kept; pull again"
                )
            } else {
                format!(
                    "talking to the registry {registry} about {what} failed: {detail}.{http_hint}"
                )
            }
        }
        OciDistributionError::IoError(io) => {
            format!(
                "the download of {what} from {registry} failed: {io}. Nothing partial was kept; pull again"
            )
        }
        other => format!("{what} from {registry}: {}", chain(&other)),
    }
}
