//! `image load`: imports an OCI image layout tar or a `docker save` tar,
//! so air-gapped clusters can get images without a registry.
//!
//! The archive is indexed once (member name → offset and size) and members
//! are read in place; every blob is checked against its digest (OCI
//! layout) and every layer against its config's diff_id before it is
//! kept, exactly as for a pull.
use std::{
    collections::HashMap,
    fs::File,
    io::{self, Read},
    os::unix::fs::FileExt,
    path::{Component, Path, PathBuf},
};

use serde::Deserialize;

use super::{
    Digest, ImageError, ImageRecord, ImageStore, LayerRef, Platform,
    digest::HashingReader,
    manifest::{self, ImageConfig, Manifest},
    reference,
};

const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
const NAME_ANNOTATION: &str = "io.containerd.image.name";
const REF_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// What a load added.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadOutcome {
    /// Each image loaded: its ID and the canonical names it got.
    pub images: Vec<(Digest, Vec<String>)>,
}

impl ImageStore {
    /// Loads every image in the archive at `path` (an OCI image layout or
    /// `docker save` tar). Names in the archive replace the same names on
    /// other images.
    pub async fn load(&self, path: &Path) -> Result<LoadOutcome, ImageError> {
        let _gc = self.gc_shared().read().await;
        let store = self.clone();
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || store.load_blocking(&path))
            .await
            .map_err(|e| ImageError::Load(format!("the load task failed: {e}")))?
    }

    /// [`ImageStore::load`] without the prune lock: for callers that know
    /// no prune runs concurrently. Blocking.
    pub fn load_blocking(&self, path: &Path) -> Result<LoadOutcome, ImageError> {
        let archive = Archive::open(path)?;
        if archive.has("manifest.json") {
            self.load_docker_save(&archive)
        } else if archive.has("index.json") {
            self.load_oci_layout(&archive)
        } else {
            Err(ImageError::Load(format!(
                "{} is neither a `docker save` archive (no manifest.json) nor an OCI image layout (no index.json); create one with `docker save -o FILE IMAGE` or `skopeo copy ... oci-archive:FILE`",
                path.display()
            )))
        }
    }

    fn load_docker_save(&self, archive: &Archive) -> Result<LoadOutcome, ImageError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Entry {
            config: String,
            #[serde(default)]
            repo_tags: Option<Vec<String>>,
            layers: Vec<String>,
        }
        let entries: Vec<Entry> = serde_json::from_slice(&archive.read_all("manifest.json")?)
            .map_err(|e| ImageError::Load(format!("manifest.json is invalid: {e}")))?;
        let mut out = LoadOutcome::default();
        for e in entries {
            let config_bytes = archive.read_all(&e.config)?;
            let id = Digest::of(&config_bytes);
            let config = parse_config(&config_bytes, &e.config)?;
            config
                .check_platform(&Platform::current())
                .map_err(|err| ImageError::Load(format!("image {}: {err}", id.short())))?;
            let diff_ids = config.diff_ids()?;
            if diff_ids.len() != e.layers.len() {
                return Err(ImageError::Load(format!(
                    "image {}: manifest.json lists {} layers but its config {} diff_ids",
                    id.short(),
                    e.layers.len(),
                    diff_ids.len()
                )));
            }
            let mut layers = Vec::new();
            for (member, diff_id) in e.layers.iter().zip(&diff_ids) {
                let blob = self.import_layer(archive, member, None, diff_id)?;
                layers.push(LayerRef {
                    diff_id: diff_id.clone(),
                    blob,
                    media_type: DOCKER_LAYER.into(),
                });
            }
            self.write_blob(&id, &config_bytes)?;
            let tags = e
                .repo_tags
                .unwrap_or_default()
                .iter()
                .map(|t| reference::normalize_reference(t))
                .collect::<Result<Vec<_>, _>>()?;
            self.record_image(ImageRecord {
                id: id.clone(),
                tags: tags.clone(),
                repo_digests: Vec::new(),
                manifest: None,
                index: None,
                layers,
                platform: config.platform(),
                created: config.created.clone(),
                size: 0,
            })?;
            out.images.push((id, tags));
        }
        Ok(out)
    }

    fn load_oci_layout(&self, archive: &Archive) -> Result<LoadOutcome, ImageError> {
        let index = archive.read_all("index.json")?;
        let Manifest::Index(index) = manifest::parse_manifest(&index)
            .map_err(|e| ImageError::Load(format!("index.json: {e}")))?
        else {
            return Err(ImageError::Load("index.json is not an image index".into()));
        };
        let platform = Platform::current();
        let mut out = LoadOutcome::default();
        for top in &index.manifests {
            let name = top
                .annotations
                .get(NAME_ANNOTATION)
                .or_else(|| top.annotations.get(REF_ANNOTATION))
                .map(|n| reference::normalize_reference(n))
                .transpose()?;
            let top_digest = Digest::parse(&top.digest)?;
            let top_bytes = archive.read_blob(&top_digest)?;
            let (manifest_digest, manifest_bytes, nested_index) =
                match manifest::parse_manifest(&top_bytes)
                    .map_err(|e| ImageError::Load(format!("{top_digest}: {e}")))?
                {
                    Manifest::Image(_) => (top_digest.clone(), top_bytes, None),
                    Manifest::Index(ix) => {
                        let chosen = ix.choose(&platform).map_err(|e| {
                            ImageError::Load(format!(
                                "{}: {e}",
                                name.as_deref().unwrap_or(top_digest.as_str())
                            ))
                        })?;
                        let d = Digest::parse(&chosen.digest)?;
                        let b = archive.read_blob(&d)?;
                        (d, b, Some((top_digest.clone(), top_bytes)))
                    }
                };
            let Manifest::Image(m) = manifest::parse_manifest(&manifest_bytes)
                .map_err(|e| ImageError::Load(format!("{manifest_digest}: {e}")))?
            else {
                return Err(ImageError::Load(format!(
                    "{manifest_digest}: nested indexes are not supported"
                )));
            };
            let id = Digest::parse(&m.config.digest)?;
            let config_bytes = archive.read_blob(&id)?;
            let config = parse_config(&config_bytes, id.as_str())?;
            config
                .check_platform(&platform)
                .map_err(|e| ImageError::Load(format!("image {}: {e}", id.short())))?;
            let diff_ids = config.diff_ids()?;
            if diff_ids.len() != m.layers.len() {
                return Err(ImageError::Load(format!(
                    "image {}: the manifest lists {} layers but its config {} diff_ids",
                    id.short(),
                    m.layers.len(),
                    diff_ids.len()
                )));
            }
            let mut layers = Vec::new();
            for (l, diff_id) in m.layers.iter().zip(&diff_ids) {
                let blob = Digest::parse(&l.digest)?;
                let member = blob_member(&blob);
                self.import_layer(archive, &member, Some(&blob), diff_id)?;
                layers.push(LayerRef {
                    diff_id: diff_id.clone(),
                    blob: Some(blob),
                    media_type: l.media_type.clone(),
                });
            }
            self.write_blob(&id, &config_bytes)?;
            self.write_blob(&manifest_digest, &manifest_bytes)?;
            if let Some((d, b)) = &nested_index {
                self.write_blob(d, b)?;
            }
            let repo_digests = match (&name, reference::parse(name.as_deref().unwrap_or(""))) {
                (Some(_), Ok(r)) => vec![format!("{}@{}", reference::repository(&r), top_digest)],
                _ => Vec::new(),
            };
            let tags: Vec<String> = name.into_iter().collect();
            self.record_image(ImageRecord {
                id: id.clone(),
                tags: tags.clone(),
                repo_digests,
                manifest: Some(manifest_digest),
                index: nested_index.map(|(d, _)| d),
                layers,
                platform: config.platform(),
                created: config.created.clone(),
                size: 0,
            })?;
            out.images.push((id, tags));
        }
        Ok(out)
    }

    /// Copies archive member `member` into the blob store (checking it
    /// against `expected` if given) and unpacks it as layer `diff_id`.
    /// Returns the blob's digest, or `None` when the layer was already
    /// here and the member was not read.
    fn import_layer(
        &self,
        archive: &Archive,
        member: &str,
        expected: Option<&Digest>,
        diff_id: &Digest,
    ) -> Result<Option<Digest>, ImageError> {
        if self.has_layer(diff_id) {
            return Ok(expected.cloned());
        }
        let blob = match expected {
            Some(d) if self.has_blob(d) => d.clone(),
            _ => {
                let mut tmp = self.temp_file()?;
                let mut reader = HashingReader::new(archive.member(member)?);
                io::copy(&mut reader, tmp.as_file_mut())
                    .and_then(|_| tmp.as_file().sync_all())
                    .map_err(ImageError::io(format!(
                        "copying {member} out of the archive"
                    )))?;
                let (actual, _) = reader.finish();
                if let Some(want) = expected
                    && *want != actual
                {
                    return Err(ImageError::Load(format!(
                        "{member} has digest {actual}, not {want}: the archive is corrupt"
                    )));
                }
                if !self.has_blob(&actual) {
                    self.commit_blob(tmp, &actual)?;
                }
                actual
            }
        };
        self.commit_layer(&self.blob_path(&blob), diff_id, blob.short())?;
        Ok(Some(blob))
    }
}

fn parse_config(bytes: &[u8], name: &str) -> Result<ImageConfig, ImageError> {
    ImageConfig::parse(bytes).map_err(|e| ImageError::Load(format!("{name}: {e}")))
}

fn blob_member(d: &Digest) -> String {
    format!("blobs/sha256/{}", d.hex())
}

/// A tar archive indexed by member name, read in place.
struct Archive {
    file: File,
    path: PathBuf,
    members: HashMap<String, Member>,
}

enum Member {
    File { offset: u64, size: u64 },
    Symlink(String),
}

impl Archive {
    fn open(path: &Path) -> Result<Archive, ImageError> {
        let file =
            File::open(path).map_err(ImageError::io(format!("opening {}", path.display())))?;
        let bad = |e: io::Error| {
            ImageError::Load(format!(
                "{} is not a readable tar archive: {e}",
                path.display()
            ))
        };
        let mut members = HashMap::new();
        {
            let mut ar = tar::Archive::new(&file);
            for entry in ar.entries_with_seek().map_err(bad)? {
                let entry = entry.map_err(bad)?;
                let Some(name) = entry.path().ok().and_then(|p| normalize(&p)) else {
                    continue;
                };
                let kind = entry.header().entry_type();
                if kind.is_file() {
                    members.insert(
                        name,
                        Member::File {
                            offset: entry.raw_file_position(),
                            size: entry.size(),
                        },
                    );
                } else if kind.is_symlink()
                    && let Ok(Some(target)) = entry.link_name()
                {
                    // docker save (25+) links legacy layer paths to blobs.
                    let base = Path::new(&name).parent().unwrap_or(Path::new(""));
                    if let Some(t) = normalize(&base.join(target)) {
                        members.insert(name, Member::Symlink(t));
                    }
                }
            }
        }
        Ok(Archive {
            file,
            path: path.to_path_buf(),
            members,
        })
    }

    fn has(&self, name: &str) -> bool {
        self.members.contains_key(name)
    }

    fn member(&self, name: &str) -> Result<MemberReader<'_>, ImageError> {
        let mut cur = normalize(Path::new(name)).unwrap_or_default();
        for _ in 0..8 {
            match self.members.get(&cur) {
                Some(Member::File { offset, size }) => {
                    return Ok(MemberReader {
                        file: &self.file,
                        pos: *offset,
                        end: offset + size,
                    });
                }
                Some(Member::Symlink(t)) => cur = t.clone(),
                None => break,
            }
        }
        Err(ImageError::Load(format!(
            "{} has no member {name:?} that its manifest refers to: the archive is incomplete",
            self.path.display()
        )))
    }

    fn read_all(&self, name: &str) -> Result<Vec<u8>, ImageError> {
        let mut out = Vec::new();
        self.member(name)?
            .read_to_end(&mut out)
            .map_err(ImageError::io(format!(
                "reading {name} in {}",
                self.path.display()
            )))?;
        Ok(out)
    }

    /// A small blob (manifest, config), checked against its digest.
    fn read_blob(&self, d: &Digest) -> Result<Vec<u8>, ImageError> {
        let bytes = self.read_all(&blob_member(d))?;
        let actual = Digest::of(&bytes);
        if &actual != d {
            return Err(ImageError::Load(format!(
                "blob {d} has digest {actual}: the archive is corrupt"
            )));
        }
        Ok(bytes)
    }
}

/// `./a/b` → `a/b`; `None` for names leaving the archive root.
fn normalize(p: &Path) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => parts.push(n.to_str()?),
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(parts.join("/"))
}

/// Reads one member's bytes with positioned reads (no shared cursor).
struct MemberReader<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for MemberReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.end.saturating_sub(self.pos);
        if left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the archive ends inside a member",
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}
