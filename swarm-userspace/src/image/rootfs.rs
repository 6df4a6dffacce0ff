//! Container root filesystems: an overlayfs mount of an image's layers
//! (read-only, shared) under a writable layer of the container's own.
//!
//! The writable layer lives in the store (`containers/<id>/{upper,work}`)
//! and a record (`mounts/<id>.json`) keeps the layers from being pruned
//! while the rootfs exists, also across daemon restarts.
use std::{
    fs,
    os::unix::fs::{DirBuilderExt, PermissionsExt},
    path::{Path, PathBuf},
};

use rustix::{
    io::Errno,
    mount::{FsMountFlags, FsOpenFlags, MountAttrFlags, MountFlags, MoveMountFlags, UnmountFlags},
};

use super::{
    ImageError, ImageStore,
    store::{MountRecord, resolve, write_atomic},
};

/// A mounted container rootfs. Dropping it unmounts it and deletes its
/// writable layer, unless [`RootfsMount::keep`] was called.
#[derive(Debug)]
pub struct RootfsMount {
    store: ImageStore,
    container_id: String,
    target: PathBuf,
    armed: bool,
}

impl RootfsMount {
    /// Where the merged rootfs is mounted.
    pub fn target(&self) -> &Path {
        &self.target
    }

    pub fn container_id(&self) -> &str {
        &self.container_id
    }

    /// Unmounts and deletes the writable layer, reporting errors.
    pub fn release(mut self) -> Result<(), ImageError> {
        self.armed = false;
        self.store.release(&self.container_id)
    }

    /// Leaves the rootfs mounted past this value (e.g. for a container
    /// that outlives the call); [`ImageStore::release`] removes it later.
    pub fn keep(mut self) {
        self.armed = false;
    }
}

impl Drop for RootfsMount {
    fn drop(&mut self) {
        if self.armed
            && let Err(e) = self.store.release(&self.container_id)
        {
            tracing::warn!(container = %self.container_id, error = %e, "releasing a container rootfs failed");
        }
    }
}

fn check_container_id(id: &str) -> Result<(), ImageError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(ImageError::InvalidContainerId(id.to_owned()))
    }
}

impl ImageStore {
    /// A place for container `container_id`'s rootfs inside the store, next
    /// to its writable layer, so [`ImageStore::release`] removes it too.
    pub fn rootfs_target(&self, container_id: &str) -> PathBuf {
        self.containers_dir().join(container_id).join("rootfs")
    }

    /// The `config` object of image `id` (entrypoint, cmd, env, ...), what
    /// a container of it needs besides its rootfs.
    pub fn image_config(
        &self,
        id: &super::Digest,
    ) -> Result<crate::executor::ImageConfig, ImageError> {
        let path = self.blob_path(id);
        let bytes = fs::read(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                ImageError::Missing {
                    image: id.to_string(),
                    what: "the image config".into(),
                }
            } else {
                ImageError::Io {
                    context: format!("reading {}", path.display()),
                    source: e,
                }
            }
        })?;
        #[derive(serde::Deserialize)]
        struct Outer {
            #[serde(default)]
            config: Option<crate::executor::ImageConfig>,
        }
        let outer: Outer =
            serde_json::from_slice(&bytes).map_err(|e| ImageError::CorruptIndex {
                path: path.clone(),
                reason: format!("invalid image config: {e}"),
            })?;
        Ok(outer.config.unwrap_or_default())
    }

    /// Mounts the root filesystem of container `container_id` from image
    /// `image_ref` on `target` (created if missing): overlayfs with the
    /// image's layers as lower directories and a fresh writable layer.
    /// Blocking (a few syscalls).
    pub fn prepare_rootfs(
        &self,
        image_ref: &str,
        target: &Path,
        container_id: &str,
    ) -> Result<RootfsMount, ImageError> {
        check_container_id(container_id)?;
        let record_path = self.mounts_dir().join(format!("{container_id}.json"));
        let cdir = self.containers_dir().join(container_id);
        let (upper, work) = (cdir.join("upper"), cdir.join("work"));
        let lowers = {
            let _lock = self.lock()?;
            if record_path.exists() {
                return Err(ImageError::RootfsExists(container_id.to_owned()));
            }
            let ix = self.read_index()?;
            let (image, _) = resolve(&ix, image_ref)?;
            let mut lowers = Vec::new();
            // overlayfs wants the topmost layer first.
            for l in image.layers.iter().rev() {
                let p = self.layer_path(&l.diff_id);
                if !p.is_dir() {
                    return Err(ImageError::Missing {
                        image: image_ref.to_owned(),
                        what: format!("layer {}", l.diff_id),
                    });
                }
                lowers.push(p);
            }
            let rec = MountRecord {
                image: image.id.clone(),
                layers: image.layers.iter().map(|l| l.diff_id.clone()).collect(),
                target: target.to_path_buf(),
            };
            let bytes = serde_json::to_vec_pretty(&rec).map_err(|e| ImageError::CorruptIndex {
                path: record_path.clone(),
                reason: e.to_string(),
            })?;
            write_atomic(&record_path, &bytes)?;
            lowers
        };
        let mount = RootfsMount {
            store: self.clone(),
            container_id: container_id.to_owned(),
            target: target.to_path_buf(),
            armed: true,
        };
        // From here on, dropping `mount` undoes whatever was done.
        if lowers.is_empty() {
            // overlayfs needs a lower layer; an image without layers gets an
            // empty one of its own.
            let empty = cdir.join("empty");
            mkdir(&empty, 0o755)?;
            return self.finish_mount(mount, vec![empty], &cdir, &upper, &work);
        }
        self.finish_mount(mount, lowers, &cdir, &upper, &work)
    }

    fn finish_mount(
        &self,
        mount: RootfsMount,
        lowers: Vec<PathBuf>,
        cdir: &Path,
        upper: &Path,
        work: &Path,
    ) -> Result<RootfsMount, ImageError> {
        let target = mount.target.clone();
        mkdir(cdir, 0o700)?;
        // The upper root's attributes become the rootfs root's.
        mkdir(upper, 0o755)?;
        mkdir(work, 0o700)?;
        fs::create_dir_all(&target)
            .map_err(ImageError::io(format!("creating {}", target.display())))?;
        let fail = |reason: String| ImageError::Mount {
            container: mount.container_id.clone(),
            target: target.clone(),
            reason,
        };
        mount_overlay(&lowers, upper, work, &target).map_err(fail)?;
        Ok(mount)
    }

    /// Unmounts container `container_id`'s rootfs and deletes its writable
    /// layer and record. Succeeds if there is nothing to release.
    pub fn release(&self, container_id: &str) -> Result<(), ImageError> {
        check_container_id(container_id)?;
        let _lock = self.lock()?;
        let record_path = self.mounts_dir().join(format!("{container_id}.json"));
        let target = match fs::read(&record_path) {
            Ok(bytes) => serde_json::from_slice::<MountRecord>(&bytes)
                .map(|r| r.target)
                .map_err(|e| ImageError::CorruptIndex {
                    path: record_path.clone(),
                    reason: e.to_string(),
                })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                return Err(ImageError::Io {
                    context: format!("reading {}", record_path.display()),
                    source: e,
                });
            }
        };
        unmount(&target).map_err(|e| ImageError::Mount {
            container: container_id.to_owned(),
            target: target.clone(),
            reason: format!("unmounting: {e}"),
        })?;
        let cdir = self.containers_dir().join(container_id);
        match fs::remove_dir_all(&cdir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(ImageError::Io {
                    context: format!("removing {}", cdir.display()),
                    source: e,
                });
            }
        }
        fs::remove_file(&record_path).map_err(ImageError::io(format!(
            "removing {}",
            record_path.display()
        )))?;
        Ok(())
    }
}

fn mkdir(p: &Path, mode: u32) -> Result<(), ImageError> {
    match fs::DirBuilder::new().mode(mode).create(p) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(ImageError::Io {
                context: format!("creating {}", p.display()),
                source: e,
            });
        }
    }
    fs::set_permissions(p, fs::Permissions::from_mode(mode))
        .map_err(ImageError::io(format!("chmod {}", p.display())))
}

/// Mounts overlayfs with the new mount API, adding lower layers one by one
/// (`lowerdir+`, Linux 6.8+: no length limit, no escaping); older kernels
/// get a classic `mount(2)` with a joined option string.
fn mount_overlay(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<(), String> {
    match mount_overlay_fsconfig(lowers, upper, work, target) {
        Ok(()) => Ok(()),
        Err((Errno::INVAL | Errno::NOSYS, _)) => mount_overlay_legacy(lowers, upper, work, target),
        Err((_, msg)) => Err(msg),
    }
}

fn mount_overlay_fsconfig(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<(), (Errno, String)> {
    use rustix::mount::{fsconfig_create, fsconfig_set_string, fsmount, fsopen, move_mount};
    let fs = fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)
        .map_err(|e| (e, format!("fsopen(overlay): {e}")))?;
    for l in lowers {
        fsconfig_set_string(&fs, "lowerdir+", l)
            .map_err(|e| (e, format!("lower layer {}: {e}", l.display())))?;
    }
    fsconfig_set_string(&fs, "upperdir", upper)
        .map_err(|e| (Errno::IO, format!("upperdir {}: {e}", upper.display())))?;
    fsconfig_set_string(&fs, "workdir", work)
        .map_err(|e| (Errno::IO, format!("workdir {}: {e}", work.display())))?;
    // Layers are shared between mounts: no inode index tying a lower
    // layer to one upper.
    let _ = fsconfig_set_string(&fs, "index", "off");
    fsconfig_create(&fs).map_err(|e| (Errno::IO, format!("creating the overlay: {e}")))?;
    let mnt = fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, MountAttrFlags::empty())
        .map_err(|e| (Errno::IO, format!("fsmount: {e}")))?;
    move_mount(
        &mnt,
        "",
        rustix::fs::CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(|e| (Errno::IO, format!("attaching at {}: {e}", target.display())))
}

fn mount_overlay_legacy(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<(), String> {
    let mut parts = Vec::new();
    for p in lowers {
        let s = p
            .to_str()
            .ok_or_else(|| format!("{} is not UTF-8", p.display()))?;
        if s.contains([':', ',']) {
            return Err(format!("layer path {s} contains ':' or ','"));
        }
        parts.push(s.to_owned());
    }
    let data = format!(
        "lowerdir={},upperdir={},workdir={},index=off",
        parts.join(":"),
        upper.display(),
        work.display()
    );
    let data = std::ffi::CString::new(data).map_err(|e| e.to_string())?;
    rustix::mount::mount(
        "overlay",
        target,
        "overlay",
        MountFlags::empty(),
        data.as_c_str(),
    )
    .map_err(|e| format!("mount(overlay) on {}: {e}", target.display()))
}

fn unmount(target: &Path) -> Result<(), Errno> {
    match rustix::mount::unmount(target, UnmountFlags::empty()) {
        // Not mounted (already released, or the mount never happened).
        Ok(()) | Err(Errno::INVAL | Errno::NOENT) => Ok(()),
        // Something still uses it: detach now, the kernel finishes later.
        Err(Errno::BUSY) => rustix::mount::unmount(target, UnmountFlags::DETACH),
        Err(e) => Err(e),
    }
}
