//! The on-disk store: directories, the image index, blob and layer commits,
//! listing, removal and garbage collection.
//!
//! Concurrency: index changes, mount records and prune happen under an
//! exclusive file lock (`<root>/lock`), so several processes (the daemon,
//! a test calling the library) see consistent records. Within the daemon,
//! pulls and loads hold the `gc` lock shared and prune holds it
//! exclusively, so a layer committed by a pull that has not yet recorded
//! its image is never collected; a per-layer mutex keeps two pulls from
//! fetching the same layer twice.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fs::{self, File},
    io::{self, Write},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, Weak},
};

use serde::{Deserialize, Serialize};

use super::{Digest, ImageError, Platform, layer, reference};

/// One image: a config, its ordered layers and the names it goes by.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ImageRecord {
    /// The config digest: the image ID.
    pub id: Digest,
    /// Canonical references with a tag (`registry/repo:tag`).
    #[serde(default)]
    pub tags: Vec<String>,
    /// Canonical `registry/repo@sha256:...` the image was pulled as.
    #[serde(default)]
    pub repo_digests: Vec<String>,
    /// The image manifest (absent for images loaded from `docker save`).
    #[serde(default)]
    pub manifest: Option<Digest>,
    /// The multi-platform index the manifest was chosen from, if any.
    #[serde(default)]
    pub index: Option<Digest>,
    /// Layers, bottom first.
    pub layers: Vec<LayerRef>,
    pub platform: Platform,
    /// The config's `created` (RFC 3339), if it has one.
    #[serde(default)]
    pub created: Option<String>,
    /// Sum of the uncompressed layer sizes (filled in when listing).
    #[serde(skip)]
    pub size: u64,
}

impl ImageRecord {
    /// No name refers to it: neither a tag nor a digest it was pulled by
    /// (docker's "dangling").
    pub fn is_dangling(&self) -> bool {
        self.tags.is_empty() && self.repo_digests.is_empty()
    }
}

/// `registry/repo:tag` → `registry/repo` (a colon before the last `/` is
/// a port).
fn repo_of(tag: &str) -> &str {
    let slash = tag.rfind('/').map_or(0, |i| i + 1);
    match tag[slash..].rfind(':') {
        Some(i) => &tag[..slash + i],
        None => tag,
    }
}

/// A layer of an image.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LayerRef {
    /// sha256 of the uncompressed tar; names the unpacked directory.
    pub diff_id: Digest,
    /// The (usually compressed) blob it came as, if kept.
    #[serde(default)]
    pub blob: Option<Digest>,
    #[serde(default)]
    pub media_type: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LayerInfo {
    /// Uncompressed tar size.
    size: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Index {
    #[serde(default)]
    version: u32,
    #[serde(default)]
    images: BTreeMap<Digest, ImageRecord>,
    #[serde(default)]
    layers: BTreeMap<Digest, LayerInfo>,
}

/// A root filesystem handed out to a container (`mounts/<id>.json`): keeps
/// its layers from being collected even after its image is removed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct MountRecord {
    pub image: Digest,
    pub layers: Vec<Digest>,
    pub target: PathBuf,
}

/// What `remove` did, in docker's words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removal {
    /// A name was removed (familiar form).
    Untagged(String),
    /// An image record was removed.
    Deleted(Digest),
}

/// What `prune` removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    pub images: Vec<Digest>,
    pub layers: Vec<Digest>,
    pub blobs: usize,
    pub reclaimed_bytes: u64,
}

/// The image store rooted at `<data-root>/images`. Cheap to clone.
#[derive(Clone)]
pub struct ImageStore {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    pub(super) gc: tokio::sync::RwLock<()>,
    layer_locks: Mutex<HashMap<Digest, Weak<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for ImageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageStore")
            .field("root", &self.inner.root)
            .finish()
    }
}

const INDEX_VERSION: u32 = 1;

impl ImageStore {
    /// Opens (creating if needed) the store at `root`. Does not touch
    /// anything in flight: see [`ImageStore::recover`].
    pub fn open(root: impl Into<PathBuf>) -> Result<ImageStore, ImageError> {
        let root = root.into();
        for dir in ["blobs/sha256", "layers", "tmp", "mounts", "containers"] {
            let d = root.join(dir);
            fs::create_dir_all(&d).map_err(ImageError::io(format!("creating {}", d.display())))?;
        }
        Ok(ImageStore {
            inner: Arc::new(Inner {
                root,
                gc: tokio::sync::RwLock::new(()),
                layer_locks: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Removes what interrupted pulls and loads left in `tmp/`. Call once
    /// at daemon start, before anything else uses the store (the data-root
    /// lock guarantees no other daemon does).
    pub fn recover(&self) -> Result<(), ImageError> {
        let tmp = self.tmp_dir();
        let entries =
            fs::read_dir(&tmp).map_err(ImageError::io(format!("reading {}", tmp.display())))?;
        for e in entries.flatten() {
            let p = e.path();
            let res = if e.file_type().is_ok_and(|t| t.is_dir()) {
                fs::remove_dir_all(&p)
            } else {
                fs::remove_file(&p)
            };
            match res {
                Ok(()) => {
                    tracing::info!(path = %p.display(), "removed a leftover of an interrupted pull or load")
                }
                Err(e) => {
                    tracing::warn!(path = %p.display(), error = %e, "cannot remove a leftover temp file")
                }
            }
        }
        Ok(())
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.inner.root.join("tmp")
    }

    pub(crate) fn blob_path(&self, d: &Digest) -> PathBuf {
        self.inner.root.join("blobs/sha256").join(d.hex())
    }

    /// The unpacked directory of layer `diff_id` (it may not exist).
    pub fn layer_path(&self, diff_id: &Digest) -> PathBuf {
        self.inner.root.join("layers").join(diff_id.hex())
    }

    pub(crate) fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    pub(crate) fn has_layer(&self, diff_id: &Digest) -> bool {
        self.layer_path(diff_id).is_dir()
    }

    pub(crate) fn gc_shared(&self) -> &tokio::sync::RwLock<()> {
        &self.inner.gc
    }

    /// The mutex serialising work on one layer within this process.
    pub(crate) fn layer_lock(&self, diff_id: &Digest) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self
            .inner
            .layer_locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        locks.retain(|_, w| w.strong_count() > 0);
        if let Some(l) = locks.get(diff_id).and_then(Weak::upgrade) {
            return l;
        }
        let l = Arc::new(tokio::sync::Mutex::new(()));
        locks.insert(diff_id.clone(), Arc::downgrade(&l));
        l
    }

    /// A new temp file in `tmp/`, removed on drop unless persisted.
    pub(crate) fn temp_file(&self) -> Result<tempfile::NamedTempFile, ImageError> {
        tempfile::Builder::new()
            .prefix("blob-")
            .tempfile_in(self.tmp_dir())
            .map_err(ImageError::io(format!(
                "creating a temp file in {}",
                self.tmp_dir().display()
            )))
    }

    /// Stores `bytes` as blob `expected`, checking the digest first.
    pub(crate) fn write_blob(&self, expected: &Digest, bytes: &[u8]) -> Result<(), ImageError> {
        let actual = Digest::of(bytes);
        if &actual != expected {
            return Err(ImageError::Load(format!(
                "blob {expected} has digest {actual}: the content is corrupt"
            )));
        }
        if self.has_blob(expected) {
            return Ok(());
        }
        let mut tmp = self.temp_file()?;
        tmp.write_all(bytes)
            .and_then(|()| tmp.as_file().sync_all())
            .map_err(ImageError::io(format!("writing blob {expected}")))?;
        self.commit_blob(tmp, expected)
    }

    /// Gives a complete, verified temp file its final blob name.
    pub(crate) fn commit_blob(
        &self,
        tmp: tempfile::NamedTempFile,
        digest: &Digest,
    ) -> Result<(), ImageError> {
        let dest = self.blob_path(digest);
        tmp.persist(&dest).map_err(|e| ImageError::Io {
            context: format!("storing blob {}", dest.display()),
            source: e.error,
        })?;
        Ok(())
    }

    pub(crate) fn read_blob(&self, d: &Digest) -> Result<Vec<u8>, ImageError> {
        let p = self.blob_path(d);
        fs::read(&p).map_err(ImageError::io(format!("reading {}", p.display())))
    }

    /// Unpacks the blob file `blob` as layer `diff_id`, unless the layer is
    /// already there. The tree is built in `tmp/` and renamed into place
    /// only once its diff_id matched, so `layers/` never holds a partial or
    /// unverified layer. Returns whether it created the layer. Blocking.
    pub(crate) fn commit_layer(
        &self,
        blob: &Path,
        diff_id: &Digest,
        name: &str,
    ) -> Result<bool, ImageError> {
        let dest = self.layer_path(diff_id);
        if dest.is_dir() {
            return Ok(false);
        }
        let tmp = tempfile::Builder::new()
            .prefix("layer-")
            .tempdir_in(self.tmp_dir())
            .map_err(ImageError::io(format!(
                "creating a temp dir in {}",
                self.tmp_dir().display()
            )))?;
        let file =
            File::open(blob).map_err(ImageError::io(format!("opening {}", blob.display())))?;
        let stats = layer::unpack_layer(file, tmp.path(), name)?;
        if &stats.diff_id != diff_id {
            return Err(ImageError::DiffIdMismatch {
                layer: name.to_owned(),
                expected: diff_id.clone(),
                actual: stats.diff_id,
            });
        }
        let tmp_path = tmp.keep();
        if let Err(e) = fs::rename(&tmp_path, &dest) {
            let _ = fs::remove_dir_all(&tmp_path);
            // Someone else committed the same layer first: same content.
            if dest.is_dir() {
                return Ok(false);
            }
            return Err(ImageError::Io {
                context: format!("moving layer {diff_id} into {}", dest.display()),
                source: e,
            });
        }
        sync_dir(&self.inner.root.join("layers"));
        self.update(|ix| {
            ix.layers
                .insert(diff_id.clone(), LayerInfo { size: stats.size });
            Ok(())
        })?;
        Ok(true)
    }

    // ---- index ----

    fn index_path(&self) -> PathBuf {
        self.inner.root.join("index.json")
    }

    /// Takes the store's file lock (blocking).
    pub(crate) fn lock(&self) -> Result<File, ImageError> {
        let p = self.inner.root.join("lock");
        let f = File::create(&p).map_err(ImageError::io(format!("opening {}", p.display())))?;
        f.lock()
            .map_err(ImageError::io(format!("locking {}", p.display())))?;
        Ok(f)
    }

    pub(crate) fn read_index(&self) -> Result<Index, ImageError> {
        let p = self.index_path();
        match fs::read(&p) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| ImageError::CorruptIndex {
                path: p,
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Index {
                version: INDEX_VERSION,
                ..Index::default()
            }),
            Err(e) => Err(ImageError::Io {
                context: format!("reading {}", p.display()),
                source: e,
            }),
        }
    }

    fn write_index(&self, ix: &Index) -> Result<(), ImageError> {
        let p = self.index_path();
        let bytes = serde_json::to_vec_pretty(ix).map_err(|e| ImageError::CorruptIndex {
            path: p.clone(),
            reason: e.to_string(),
        })?;
        write_atomic(&p, &bytes)
    }

    /// Read-modify-write of the index under the file lock.
    pub(crate) fn update<T>(
        &self,
        f: impl FnOnce(&mut Index) -> Result<T, ImageError>,
    ) -> Result<T, ImageError> {
        let _lock = self.lock()?;
        let mut ix = self.read_index()?;
        let out = f(&mut ix)?;
        ix.version = INDEX_VERSION;
        self.write_index(&ix)?;
        Ok(out)
    }

    /// Records `rec`, moving its tags away from any image that had them.
    /// Returns whether the store already had exactly this (up to date).
    pub(crate) fn record_image(&self, rec: ImageRecord) -> Result<bool, ImageError> {
        self.update(|ix| {
            let up_to_date = ix
                .images
                .get(&rec.id)
                .is_some_and(|old| rec.tags.iter().all(|t| old.tags.contains(t)));
            for (id, other) in ix.images.iter_mut() {
                if *id == rec.id {
                    continue;
                }
                let lost: Vec<String> = other
                    .tags
                    .iter()
                    .filter(|t| rec.tags.contains(t))
                    .cloned()
                    .collect();
                if lost.is_empty() {
                    continue;
                }
                other.tags.retain(|t| !lost.contains(t));
                // The digest it was pulled by went with the name: without
                // a name left in that repository, it is dangling.
                let tags = &other.tags;
                other.repo_digests.retain(|d| {
                    let repo = d.split('@').next().unwrap_or_default();
                    tags.iter().any(|t| repo_of(t) == repo)
                        || !lost.iter().any(|t| repo_of(t) == repo)
                });
            }
            match ix.images.get_mut(&rec.id) {
                Some(old) => {
                    for t in rec.tags {
                        if !old.tags.contains(&t) {
                            old.tags.push(t);
                        }
                    }
                    for d in rec.repo_digests {
                        if !old.repo_digests.contains(&d) {
                            old.repo_digests.push(d);
                        }
                    }
                    old.manifest = old.manifest.take().or(rec.manifest);
                    old.index = old.index.take().or(rec.index);
                    for (o, n) in old.layers.iter_mut().zip(rec.layers) {
                        if o.blob.is_none() {
                            o.blob = n.blob;
                        }
                    }
                }
                None => {
                    ix.images.insert(rec.id.clone(), rec);
                }
            }
            Ok(up_to_date)
        })
    }

    // ---- queries ----

    /// Every image, with its size, ordered by ID.
    pub fn list(&self) -> Result<Vec<ImageRecord>, ImageError> {
        let ix = self.read_index()?;
        Ok(ix
            .images
            .values()
            .map(|r| with_size(&ix, r.clone()))
            .collect())
    }

    /// The image `reference` names: a tag (`bb:1`, full or familiar), a
    /// `repo@digest`, or an image ID or unique ID prefix.
    pub fn inspect(&self, reference: &str) -> Result<ImageRecord, ImageError> {
        let ix = self.read_index()?;
        let (rec, _) = resolve(&ix, reference)?;
        Ok(with_size(&ix, rec.clone()))
    }

    // ---- removal ----

    /// `image rm`: removes a name, or the whole image when named by ID or
    /// by its last name. Layers stay until [`ImageStore::prune`].
    pub fn remove(&self, reference: &str, force: bool) -> Result<Vec<Removal>, ImageError> {
        self.update(|ix| {
            let (rec, by) = resolve(ix, reference)?;
            let id = rec.id.clone();
            let mut out = Vec::new();
            if let Matched::Tag(tag) = &by
                && rec.tags.len() > 1
            {
                let tag = tag.clone();
                if let Some(r) = ix.images.get_mut(&id) {
                    r.tags.retain(|t| *t != tag);
                }
                out.push(Removal::Untagged(reference::familiar_name(&tag)));
                return Ok(out);
            }
            if matches!(by, Matched::Digest) && !rec.tags.is_empty() {
                let full = reference::normalize_reference(reference)?;
                if let Some(r) = ix.images.get_mut(&id) {
                    r.repo_digests.retain(|d| *d != full);
                }
                out.push(Removal::Untagged(reference::familiar_name(&full)));
                return Ok(out);
            }
            if matches!(by, Matched::Id) && rec.tags.len() > 1 && !force {
                return Err(ImageError::MultipleNames {
                    image: id.short().to_owned(),
                    names: rec
                        .tags
                        .iter()
                        .map(|t| reference::familiar_name(t))
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
            let users: Vec<String> = self
                .mount_records()?
                .into_iter()
                .filter(|(_, m)| m.image == id)
                .map(|(c, _)| c)
                .collect();
            if !users.is_empty() && !force {
                return Err(ImageError::InUse {
                    image: reference.to_owned(),
                    containers: users.join(", "),
                });
            }
            if let Some(rec) = ix.images.remove(&id) {
                for t in &rec.tags {
                    out.push(Removal::Untagged(reference::familiar_name(t)));
                }
                for d in &rec.repo_digests {
                    out.push(Removal::Untagged(reference::familiar_name(d)));
                }
                out.push(Removal::Deleted(id));
            }
            Ok(out)
        })
    }

    /// `image prune`: removes dangling images (every image with `all`)
    /// that no container's root filesystem uses, then every layer and blob
    /// no remaining image or root filesystem references.
    pub async fn prune(&self, all: bool) -> Result<PruneReport, ImageError> {
        let _gc = self.inner.gc.write().await;
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.prune_blocking(all))
            .await
            .map_err(|e| ImageError::Io {
                context: "pruning images".into(),
                source: io::Error::other(e),
            })?
    }

    fn prune_blocking(&self, all: bool) -> Result<PruneReport, ImageError> {
        let _lock = self.lock()?;
        let mut ix = self.read_index()?;
        let mounts = self.mount_records()?;
        let mut report = PruneReport::default();

        let mounted_images: BTreeSet<&Digest> = mounts.iter().map(|(_, m)| &m.image).collect();
        let doomed: Vec<Digest> = ix
            .images
            .values()
            .filter(|r| (all || r.is_dangling()) && !mounted_images.contains(&r.id))
            .map(|r| r.id.clone())
            .collect();
        for id in doomed {
            ix.images.remove(&id);
            report.images.push(id);
        }

        let mut live_layers: BTreeSet<Digest> = BTreeSet::new();
        let mut live_blobs: BTreeSet<Digest> = BTreeSet::new();
        for r in ix.images.values() {
            live_blobs.insert(r.id.clone());
            live_blobs.extend(r.manifest.iter().cloned());
            live_blobs.extend(r.index.iter().cloned());
            for l in &r.layers {
                live_layers.insert(l.diff_id.clone());
                live_blobs.extend(l.blob.iter().cloned());
            }
        }
        for (_, m) in &mounts {
            live_layers.extend(m.layers.iter().cloned());
        }
        ix.layers.retain(|d, _| live_layers.contains(d));
        // Records first: a crash halfway through the deletions leaves only
        // unreferenced files, which the next prune collects.
        self.write_index(&ix)?;

        let layers_dir = self.inner.root.join("layers");
        for e in fs::read_dir(&layers_dir)
            .map_err(ImageError::io(format!("reading {}", layers_dir.display())))?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            let Ok(d) = Digest::parse(&format!("sha256:{name}")) else {
                continue;
            };
            if live_layers.contains(&d) {
                continue;
            }
            let size = disk_usage(&e.path());
            fs::remove_dir_all(e.path())
                .map_err(ImageError::io(format!("removing {}", e.path().display())))?;
            report.reclaimed_bytes += size;
            report.layers.push(d);
        }
        let blobs_dir = self.inner.root.join("blobs/sha256");
        for e in fs::read_dir(&blobs_dir)
            .map_err(ImageError::io(format!("reading {}", blobs_dir.display())))?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            let Ok(d) = Digest::parse(&format!("sha256:{name}")) else {
                continue;
            };
            if live_blobs.contains(&d) {
                continue;
            }
            let size = e.metadata().map(|m| m.len()).unwrap_or(0);
            fs::remove_file(e.path())
                .map_err(ImageError::io(format!("removing {}", e.path().display())))?;
            report.reclaimed_bytes += size;
            report.blobs += 1;
        }
        Ok(report)
    }

    // ---- mount records ----

    pub(crate) fn mounts_dir(&self) -> PathBuf {
        self.inner.root.join("mounts")
    }

    pub(crate) fn containers_dir(&self) -> PathBuf {
        self.inner.root.join("containers")
    }

    /// Container root filesystems that exist: (container ID, image ID).
    pub fn rootfs_users(&self) -> Result<Vec<(String, Digest)>, ImageError> {
        Ok(self
            .mount_records()?
            .into_iter()
            .map(|(c, m)| (c, m.image))
            .collect())
    }

    pub(crate) fn mount_records(&self) -> Result<Vec<(String, MountRecord)>, ImageError> {
        let dir = self.mounts_dir();
        let mut out = Vec::new();
        for e in fs::read_dir(&dir)
            .map_err(ImageError::io(format!("reading {}", dir.display())))?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(id) = name.strip_suffix(".json") else {
                continue;
            };
            let bytes = fs::read(e.path())
                .map_err(ImageError::io(format!("reading {}", e.path().display())))?;
            let rec: MountRecord =
                serde_json::from_slice(&bytes).map_err(|err| ImageError::CorruptIndex {
                    path: e.path(),
                    reason: err.to_string(),
                })?;
            out.push((id.to_owned(), rec));
        }
        Ok(out)
    }
}

/// How a reference matched an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Matched {
    Tag(String),
    Digest,
    Id,
}

/// Finds the image `reference` names: first as a name (like docker), then
/// as an ID or ID prefix.
pub(crate) fn resolve<'a>(
    ix: &'a Index,
    reference: &str,
) -> Result<(&'a ImageRecord, Matched), ImageError> {
    let not_found = || ImageError::NotFound(reference.to_owned());
    if let Ok(full) = reference::normalize_reference(reference) {
        for r in ix.images.values() {
            if r.tags.contains(&full) {
                return Ok((r, Matched::Tag(full)));
            }
            if r.repo_digests.contains(&full) {
                return Ok((r, Matched::Digest));
            }
        }
    }
    let hex = reference.strip_prefix("sha256:").unwrap_or(reference);
    if hex.is_empty() || hex.len() > 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(not_found());
    }
    let hex = hex.to_ascii_lowercase();
    let hits: Vec<&ImageRecord> = ix
        .images
        .values()
        .filter(|r| r.id.hex().starts_with(&hex))
        .collect();
    match hits.as_slice() {
        [] => Err(not_found()),
        [one] => Ok((one, Matched::Id)),
        many => Err(ImageError::Ambiguous {
            reference: reference.to_owned(),
            candidates: many
                .iter()
                .map(|r| r.id.short().to_owned())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

fn with_size(ix: &Index, mut r: ImageRecord) -> ImageRecord {
    r.size = r
        .layers
        .iter()
        .filter_map(|l| ix.layers.get(&l.diff_id))
        .map(|l| l.size)
        .sum();
    r
}

/// Writes `path` so readers see the old or the new content, never a mix.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(ImageError::io(format!(
            "creating a temp file in {}",
            dir.display()
        )))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(ImageError::io(format!("writing {}", path.display())))?;
    tmp.persist(path).map_err(|e| ImageError::Io {
        context: format!("replacing {}", path.display()),
        source: e.error,
    })?;
    sync_dir(dir);
    Ok(())
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Bytes used by the files below `path` (hard links counted once per
/// occurrence: good enough for a report).
fn disk_usage(path: &Path) -> u64 {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    fs::read_dir(path)
        .map(|rd| rd.flatten().map(|e| disk_usage(&e.path())).sum())
        .unwrap_or(0)
}
