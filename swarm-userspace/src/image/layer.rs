//! Unpacks one layer tar (gzip, zstd or plain) into a directory overlayfs
//! can use as a lower layer.
//!
//! OCI whiteouts become overlayfs whiteouts (`.wh.NAME` → a 0:0 character
//! device `NAME`; `.wh..wh..opq` → `trusted.overlay.opaque=y` on the
//! directory). Ownership, modes, times, symlinks, hard links, devices and
//! `SCHILY.xattr.*` extended attributes are kept.
//!
//! Must never write outside the destination: entries with `..` or absolute
//! names and hard links to such names are refused, parent directories are
//! resolved with `openat2(RESOLVE_IN_ROOT)` (a symlink in the layer can
//! never lead out of it), and the last component is always created with
//! `O_EXCL`/`O_NOFOLLOW` semantics after removing what was there. Symlinks
//! are stored, never followed. xattrs in the `trusted.overlay.` namespace
//! are dropped: only whiteouts may produce them.
use std::{
    ffi::{OsStr, OsString},
    io::{self, BufRead, BufReader, Read, Write},
    os::{
        fd::{AsFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::{Component, Path, PathBuf},
};

use rustix::{
    fs::{
        AtFlags, FileType, Gid, Mode, OFlags, ResolveFlags, Timespec, Timestamps, Uid, XattrFlags,
    },
    io::Errno,
};

use super::{Digest, ImageError, digest::HashingReader};

/// What unpacking a layer found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerStats {
    /// sha256 of the uncompressed tar: the layer's diff_id.
    pub diff_id: Digest,
    /// Size of the uncompressed tar in bytes.
    pub size: u64,
}

const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

/// Unpacks the layer `blob` into `dest`, an existing empty directory. The
/// compression is detected from the first bytes. `name` names the layer
/// in errors. Blocking. On error `dest` holds a partial tree: the caller
/// owns removing it.
pub fn unpack_layer(blob: impl Read, dest: &Path, name: &str) -> Result<LayerStats, ImageError> {
    let bad = |reason: String| ImageError::BadLayer {
        layer: name.to_owned(),
        reason,
    };
    let mut buf = BufReader::with_capacity(256 * 1024, blob);
    let head = buf
        .fill_buf()
        .map_err(|e| bad(format!("reading it: {e}")))?;
    let tar: Box<dyn Read> = if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::bufread::MultiGzDecoder::new(buf))
    } else if is_zstd(head) {
        Box::new(ZstdReader::new(buf))
    } else {
        Box::new(buf)
    };
    let mut hashing = HashingReader::new(tar);
    {
        let root = rustix::fs::open(
            dest,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io_err(format!("opening {}", dest.display()), e))?;
        // A layer without a "./" entry still needs a usable root: overlayfs
        // shows the topmost layer's root attributes as the rootfs root.
        rustix::fs::fchown(&root, Some(Uid::ROOT), Some(Gid::ROOT))
            .map_err(|e| io_err(format!("chown {}", dest.display()), e))?;
        rustix::fs::fchmod(&root, Mode::from_raw_mode(0o755))
            .map_err(|e| io_err(format!("chmod {}", dest.display()), e))?;
        let mut unpacker = Unpacker {
            root,
            dest,
            layer: name,
            dirs: Vec::new(),
        };
        let mut archive = tar::Archive::new(&mut hashing);
        let entries = archive
            .entries()
            .map_err(|e| bad(format!("reading the archive: {e}")))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| bad(format!("reading an entry header: {e}")))?;
            unpacker.apply(&mut entry)?;
        }
        unpacker.finish()?;
    }
    // The diff_id covers the whole tar, including the end-of-archive
    // blocks and any padding the tar reader did not need.
    io::copy(&mut hashing, &mut io::sink()).map_err(|e| bad(format!("reading its end: {e}")))?;
    let (diff_id, size) = hashing.finish();
    Ok(LayerStats { diff_id, size })
}

fn is_zstd(head: &[u8]) -> bool {
    head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd])
        // A skippable frame first (zstd:chunked puts metadata in them).
        || (head.len() >= 4 && head[0] & 0xf0 == 0x50 && head[1..4] == [0x2a, 0x4d, 0x18])
}

fn io_err(context: String, e: Errno) -> ImageError {
    ImageError::Io {
        context,
        source: e.into(),
    }
}

struct Unpacker<'a> {
    root: OwnedFd,
    dest: &'a Path,
    layer: &'a str,
    /// Directories and their mtimes, set last: creating children changes
    /// a directory's mtime.
    dirs: Vec<(PathBuf, u64)>,
}

/// Ownership, mode and time of an entry.
struct Meta {
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: u64,
}

impl Unpacker<'_> {
    fn unsafe_entry(&self, path: &Path, reason: &str) -> ImageError {
        ImageError::UnsafeEntry {
            layer: self.layer.to_owned(),
            path: path.display().to_string(),
            reason: reason.to_owned(),
        }
    }

    fn bad(&self, path: &Path, reason: impl std::fmt::Display) -> ImageError {
        ImageError::BadLayer {
            layer: self.layer.to_owned(),
            reason: format!("entry {:?}: {reason}", path.display().to_string()),
        }
    }

    fn io(&self, path: &Path, what: &str, e: Errno) -> ImageError {
        io_err(
            format!(
                "unpacking layer {}: {what} {}",
                self.layer,
                self.dest.join(path).display()
            ),
            e,
        )
    }

    /// The entry's name as normal components; refuses `..` and absolute
    /// names.
    fn clean(&self, raw: &Path) -> Result<Vec<OsString>, ImageError> {
        let mut out = Vec::new();
        for c in raw.components() {
            match c {
                Component::Normal(n) => out.push(n.to_owned()),
                Component::CurDir => {}
                Component::ParentDir => return Err(self.unsafe_entry(raw, "contains '..'")),
                Component::RootDir | Component::Prefix(_) => {
                    return Err(self.unsafe_entry(raw, "is an absolute path"));
                }
            }
        }
        Ok(out)
    }

    fn meta<R: Read>(&self, path: &Path, entry: &tar::Entry<'_, R>) -> Result<Meta, ImageError> {
        let h = entry.header();
        let field =
            |r: io::Result<u64>, what: &str| r.map_err(|e| self.bad(path, format!("{what}: {e}")));
        let id = |v: u64, what: &str| {
            u32::try_from(v).map_err(|_| self.bad(path, format!("{what} {v} is out of range")))
        };
        Ok(Meta {
            uid: id(field(h.uid(), "uid")?, "uid")?,
            gid: id(field(h.gid(), "gid")?, "gid")?,
            mode: h.mode().map_err(|e| self.bad(path, format!("mode: {e}")))? & 0o7777,
            mtime: field(h.mtime(), "mtime")?,
        })
    }

    fn apply<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), ImageError> {
        let raw: PathBuf = entry
            .path()
            .map_err(|e| ImageError::BadLayer {
                layer: self.layer.to_owned(),
                reason: format!("an entry name is unreadable: {e}"),
            })?
            .into_owned();
        let comps = self.clean(&raw)?;
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            tar::EntryType::XGlobalHeader
                | tar::EntryType::XHeader
                | tar::EntryType::GNULongName
                | tar::EntryType::GNULongLink
        ) {
            return Ok(());
        }
        let meta = self.meta(&raw, entry)?;
        let xattrs = self.xattrs(&raw, entry)?;

        let Some((name, parent)) = comps.split_last() else {
            // "./": the layer root itself.
            if kind.is_dir() {
                self.set_meta(&self.root, &raw, &meta, &xattrs)?;
                self.dirs.push((PathBuf::new(), meta.mtime));
            }
            return Ok(());
        };
        let rel: PathBuf = comps.iter().collect();
        let dir = self.ensure_dir(parent, &raw)?;

        if let Some(rest) = name.as_bytes().strip_prefix(WHITEOUT_PREFIX) {
            return self.whiteout(&dir, parent, OsStr::from_bytes(rest), &raw);
        }

        match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                self.clear_slot(&dir, name, false, &rel)?;
                let fd = rustix::fs::openat(
                    &dir,
                    name.as_os_str(),
                    OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::WRONLY
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(|e| self.io(&rel, "creating", e))?;
                let mut file = std::fs::File::from(fd);
                self.copy_body(entry, &mut file, &rel)?;
                self.set_meta(&file, &rel, &meta, &xattrs)?;
                set_times(&file, meta.mtime).map_err(|e| self.io(&rel, "setting times of", e))?;
            }
            tar::EntryType::Directory => {
                if !self.clear_slot(&dir, name, true, &rel)? {
                    mkdirat_ok_if_exists(&dir, name)
                        .map_err(|e| self.io(&rel, "creating directory", e))?;
                }
                let fd = rustix::fs::openat(
                    &dir,
                    name.as_os_str(),
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| self.io(&rel, "opening directory", e))?;
                self.set_meta(&fd, &rel, &meta, &xattrs)?;
                self.dirs.push((rel, meta.mtime));
            }
            tar::EntryType::Symlink => {
                let target = self.link_target(entry, &raw)?;
                self.clear_slot(&dir, name, false, &rel)?;
                rustix::fs::symlinkat(target.as_os_str(), &dir, name.as_os_str())
                    .map_err(|e| self.io(&rel, "creating symlink", e))?;
                self.set_meta_at(&dir, name, &rel, &meta, false)?;
            }
            tar::EntryType::Link => {
                let target = self.link_target(entry, &raw)?;
                let tcomps = self.clean(&target).map_err(|_| {
                    self.unsafe_entry(
                        &raw,
                        &format!("is a hard link to {target:?}, outside the layer"),
                    )
                })?;
                let Some((tname, tparent)) = tcomps.split_last() else {
                    return Err(self.unsafe_entry(&raw, "is a hard link to the layer root"));
                };
                if tcomps == comps {
                    return Ok(());
                }
                let tdir = self.resolve_dir(tparent).map_err(|e| {
                    self.bad(
                        &raw,
                        format!("hard link target {target:?} is missing ({e})"),
                    )
                })?;
                self.clear_slot(&dir, name, false, &rel)?;
                rustix::fs::linkat(
                    &tdir,
                    tname.as_os_str(),
                    &dir,
                    name.as_os_str(),
                    AtFlags::empty(),
                )
                .map_err(|e| self.io(&rel, &format!("hard-linking to {target:?} as"), e))?;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let h = entry.header();
                let dev_part = |r: io::Result<Option<u32>>| {
                    r.map(Option::unwrap_or_default)
                        .map_err(|e| self.bad(&raw, format!("device number: {e}")))
                };
                let (ftype, dev) = match kind {
                    tar::EntryType::Char => (
                        FileType::CharacterDevice,
                        rustix::fs::makedev(
                            dev_part(h.device_major())?,
                            dev_part(h.device_minor())?,
                        ),
                    ),
                    tar::EntryType::Block => (
                        FileType::BlockDevice,
                        rustix::fs::makedev(
                            dev_part(h.device_major())?,
                            dev_part(h.device_minor())?,
                        ),
                    ),
                    _ => (FileType::Fifo, 0),
                };
                self.clear_slot(&dir, name, false, &rel)?;
                rustix::fs::mknodat(
                    &dir,
                    name.as_os_str(),
                    ftype,
                    Mode::from_raw_mode(0o600),
                    dev,
                )
                .map_err(|e| self.io(&rel, "creating device node", e))?;
                self.set_meta_at(&dir, name, &rel, &meta, true)?;
            }
            other => {
                tracing::debug!(layer = self.layer, path = %raw.display(), kind = ?other, "skipping tar entry of unsupported type");
            }
        }
        Ok(())
    }

    fn whiteout(
        &self,
        dir: &OwnedFd,
        parent: &[OsString],
        target: &OsStr,
        raw: &Path,
    ) -> Result<(), ImageError> {
        let rel: PathBuf = parent.iter().collect();
        if target.as_bytes() == &OPAQUE_MARKER[WHITEOUT_PREFIX.len()..] {
            // The directory itself is opaque: hides every lower entry.
            let fd = self
                .open_dir_rw(parent)
                .map_err(|e| self.io(&rel, "opening directory", e))?;
            rustix::fs::fsetxattr(&fd, OPAQUE_XATTR, b"y", XattrFlags::empty())
                .map_err(|e| self.io(&rel, "marking opaque", e))?;
            return Ok(());
        }
        if target.as_bytes().starts_with(WHITEOUT_PREFIX) {
            // Other `.wh..wh.` names are aufs bookkeeping with no meaning
            // for overlayfs.
            return Ok(());
        }
        if target.is_empty() || target == "." || target == ".." {
            return Err(self.unsafe_entry(raw, "is a whiteout with an invalid name"));
        }
        let rel = rel.join(target);
        self.clear_slot(dir, target, false, &rel)?;
        rustix::fs::mknodat(
            dir,
            target,
            FileType::CharacterDevice,
            Mode::empty(),
            rustix::fs::makedev(0, 0),
        )
        .map_err(|e| self.io(&rel, "creating whiteout", e))
    }

    fn link_target<R: Read>(
        &self,
        entry: &tar::Entry<'_, R>,
        raw: &Path,
    ) -> Result<PathBuf, ImageError> {
        match entry.link_name() {
            Ok(Some(t)) => Ok(t.into_owned()),
            Ok(None) => Err(self.bad(raw, "link without a target")),
            Err(e) => Err(self.bad(raw, format!("unreadable link target: {e}"))),
        }
    }

    fn copy_body<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        file: &mut std::fs::File,
        rel: &Path,
    ) -> Result<(), ImageError> {
        let mut buf = vec![0u8; 128 * 1024];
        loop {
            let n = match entry.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.bad(rel, format!("reading its content: {e}"))),
            };
            file.write_all(&buf[..n]).map_err(|e| ImageError::Io {
                context: format!(
                    "unpacking layer {}: writing {}",
                    self.layer,
                    self.dest.join(rel).display()
                ),
                source: e,
            })?;
        }
    }

    fn xattrs<R: Read>(
        &self,
        raw: &Path,
        entry: &mut tar::Entry<'_, R>,
    ) -> Result<Vec<(String, Vec<u8>)>, ImageError> {
        let mut out = Vec::new();
        let Some(exts) = entry
            .pax_extensions()
            .map_err(|e| self.bad(raw, format!("PAX header: {e}")))?
        else {
            return Ok(out);
        };
        for ext in exts {
            let ext = ext.map_err(|e| self.bad(raw, format!("PAX header: {e}")))?;
            let Ok(key) = ext.key() else { continue };
            let Some(name) = key.strip_prefix("SCHILY.xattr.") else {
                continue;
            };
            // Overlay metadata could redirect lookups or hide files; only
            // whiteouts may create it. SELinux labels are the runtime's.
            if name.starts_with("trusted.overlay.") || name == "security.selinux" {
                continue;
            }
            out.push((name.to_owned(), ext.value_bytes().to_vec()));
        }
        Ok(out)
    }

    fn set_meta(
        &self,
        fd: impl AsFd,
        rel: &Path,
        meta: &Meta,
        xattrs: &[(String, Vec<u8>)],
    ) -> Result<(), ImageError> {
        rustix::fs::fchown(
            &fd,
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
        )
        .map_err(|e| self.io(rel, "chown", e))?;
        // After chown, which clears set-id bits.
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(meta.mode))
            .map_err(|e| self.io(rel, "chmod", e))?;
        for (name, value) in xattrs {
            match rustix::fs::fsetxattr(&fd, name.as_str(), value, XattrFlags::empty()) {
                Ok(()) => {}
                Err(Errno::NOTSUP) => {
                    tracing::warn!(layer = self.layer, path = %rel.display(), xattr = %name, "the filesystem does not support this extended attribute; skipped");
                }
                Err(e) => return Err(self.io(rel, &format!("setting xattr {name} on"), e)),
            }
        }
        Ok(())
    }

    /// Ownership, mode (unless a symlink) and times of `name` in `dir`,
    /// without following it.
    fn set_meta_at(
        &self,
        dir: &OwnedFd,
        name: &OsStr,
        rel: &Path,
        meta: &Meta,
        chmod: bool,
    ) -> Result<(), ImageError> {
        rustix::fs::chownat(
            dir,
            name,
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| self.io(rel, "chown", e))?;
        if chmod {
            rustix::fs::chmodat(dir, name, Mode::from_raw_mode(meta.mode), AtFlags::empty())
                .map_err(|e| self.io(rel, "chmod", e))?;
        }
        rustix::fs::utimensat(
            dir,
            name,
            &timestamps(meta.mtime),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| self.io(rel, "setting times of", e))
    }

    /// An `O_PATH` handle on the directory `comps` below the root,
    /// creating missing directories (root-owned, 0755) on the way.
    fn ensure_dir(&self, comps: &[OsString], raw: &Path) -> Result<OwnedFd, ImageError> {
        match self.resolve_dir(comps) {
            Ok(fd) => return Ok(fd),
            Err(Errno::NOENT) => {}
            Err(Errno::NOTDIR) => {
                return Err(self.bad(raw, "a parent of it is not a directory"));
            }
            Err(e) => return Err(self.io(&comps.iter().collect::<PathBuf>(), "opening", e)),
        }
        let mut cur = self
            .resolve_dir(&[])
            .map_err(|e| self.io(Path::new(""), "opening", e))?;
        for i in 0..comps.len() {
            let rel: PathBuf = comps[..=i].iter().collect();
            cur = match self.resolve_dir(&comps[..=i]) {
                Ok(fd) => fd,
                Err(Errno::NOENT) => {
                    match rustix::fs::mkdirat(
                        &cur,
                        comps[i].as_os_str(),
                        Mode::from_raw_mode(0o755),
                    ) {
                        Ok(()) => {}
                        // Something is there but did not resolve to a
                        // directory: a symlink leading nowhere in the layer.
                        // Never follow it.
                        Err(Errno::EXIST) => {
                            return Err(self.bad(
                                raw,
                                "a parent of it is a symlink that leads nowhere inside the layer",
                            ));
                        }
                        Err(e) => return Err(self.io(&rel, "creating directory", e)),
                    }
                    let fd = rustix::fs::openat(
                        &cur,
                        comps[i].as_os_str(),
                        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::empty(),
                    )
                    .map_err(|e| self.io(&rel, "opening", e))?;
                    // Explicit: the process umask must not shape the tree.
                    rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o755))
                        .map_err(|e| self.io(&rel, "chmod", e))?;
                    self.resolve_dir(&comps[..=i])
                        .map_err(|e| self.io(&rel, "opening", e))?
                }
                Err(Errno::NOTDIR) => {
                    return Err(self.bad(raw, "a parent of it is not a directory"));
                }
                Err(e) => return Err(self.io(&rel, "opening", e)),
            };
        }
        Ok(cur)
    }

    /// Opens an existing directory below the root. Symlinks on the way
    /// resolve as if the layer root were `/`, so they cannot lead out.
    fn resolve_dir(&self, comps: &[OsString]) -> Result<OwnedFd, Errno> {
        let rel: PathBuf = comps.iter().collect();
        let path: &Path = if comps.is_empty() {
            Path::new(".")
        } else {
            &rel
        };
        rustix::fs::openat2(
            &self.root,
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        )
    }

    fn open_dir_rw(&self, comps: &[OsString]) -> Result<OwnedFd, Errno> {
        let rel: PathBuf = comps.iter().collect();
        let path: &Path = if comps.is_empty() {
            Path::new(".")
        } else {
            &rel
        };
        rustix::fs::openat2(
            &self.root,
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        )
    }

    /// Makes room for a new entry `name` in `dir`: whatever is there goes,
    /// except a directory when a directory is wanted (tar semantics: later
    /// entries win, directories merge). Returns whether a directory was
    /// kept.
    fn clear_slot(
        &self,
        dir: &OwnedFd,
        name: &OsStr,
        want_dir: bool,
        rel: &Path,
    ) -> Result<bool, ImageError> {
        let st = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => return Ok(false),
            Err(e) => return Err(self.io(rel, "inspecting", e)),
        };
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            if want_dir {
                return Ok(true);
            }
            remove_tree(dir, name).map_err(|e| self.io(rel, "replacing", e))?;
        } else {
            rustix::fs::unlinkat(dir, name, AtFlags::empty())
                .map_err(|e| self.io(rel, "replacing", e))?;
        }
        Ok(false)
    }

    fn finish(&mut self) -> Result<(), ImageError> {
        let dirs = std::mem::take(&mut self.dirs);
        for (rel, mtime) in dirs.into_iter().rev() {
            let comps: Vec<OsString> = rel.iter().map(ToOwned::to_owned).collect();
            // A later entry may have replaced the directory; then there is
            // nothing to do.
            if let Ok(fd) = self.open_dir_rw(&comps) {
                set_times(&fd, mtime).map_err(|e| self.io(&rel, "setting times of", e))?;
            }
        }
        Ok(())
    }
}

fn timestamps(mtime: u64) -> Timestamps {
    let t = Timespec {
        tv_sec: i64::try_from(mtime).unwrap_or(i64::MAX),
        tv_nsec: 0,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

fn set_times(fd: impl AsFd, mtime: u64) -> Result<(), Errno> {
    rustix::fs::futimens(fd, &timestamps(mtime))
}

fn mkdirat_ok_if_exists(dir: &OwnedFd, name: &OsStr) -> Result<(), Errno> {
    match rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o700)) {
        Ok(()) | Err(Errno::EXIST) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Removes the directory `name` in `dir` and everything below it, never
/// following symlinks.
fn remove_tree(dir: &OwnedFd, name: &OsStr) -> Result<(), Errno> {
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut children = Vec::new();
    for entry in rustix::fs::Dir::read_from(&fd)? {
        let entry = entry?;
        let n = entry.file_name().to_bytes();
        if n == b"." || n == b".." {
            continue;
        }
        children.push(OsStr::from_bytes(n).to_owned());
    }
    for child in children {
        let st = rustix::fs::statat(&fd, child.as_os_str(), AtFlags::SYMLINK_NOFOLLOW)?;
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            remove_tree(&fd, &child)?;
        } else {
            rustix::fs::unlinkat(&fd, child.as_os_str(), AtFlags::empty())?;
        }
    }
    rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)
}

/// A zstd stream of any number of frames (skippable ones included); the
/// decoder underneath reads one frame at a time.
struct ZstdReader<R: BufRead> {
    src: R,
    dec: ruzstd::decoding::FrameDecoder,
    in_frame: bool,
}

impl<R: BufRead> ZstdReader<R> {
    fn new(src: R) -> Self {
        ZstdReader {
            src,
            dec: ruzstd::decoding::FrameDecoder::new(),
            in_frame: false,
        }
    }
}

impl<R: BufRead> Read for ZstdReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use ruzstd::decoding::{
            BlockDecodingStrategy,
            errors::{FrameDecoderError, ReadFrameHeaderError},
        };
        loop {
            if self.in_frame {
                while self.dec.can_collect() == 0 && !self.dec.is_finished() {
                    self.dec
                        .decode_blocks(&mut self.src, BlockDecodingStrategy::UptoBlocks(1))
                        .map_err(io::Error::other)?;
                }
                let n = self.dec.read(buf)?;
                if n > 0 || buf.is_empty() {
                    return Ok(n);
                }
                self.in_frame = false;
            }
            if self.src.fill_buf()?.is_empty() {
                return Ok(0);
            }
            match self.dec.reset(&mut self.src) {
                Ok(()) => self.in_frame = true,
                Err(FrameDecoderError::ReadFrameHeaderError(ReadFrameHeaderError::SkipFrame {
                    length,
                    ..
                })) => {
                    io::copy(
                        &mut (&mut self.src).take(u64::from(length)),
                        &mut io::sink(),
                    )?;
                }
                Err(e) => return Err(io::Error::other(e)),
            }
        }
    }
}

/// Whether this process may create device nodes and trusted xattrs (the
/// tests that need them skip otherwise).
#[cfg(test)]
pub(crate) fn privileged() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Builders for layer tars in tests: entries with any name (also ones
/// `tar::Builder` would refuse), so unsafe archives can be made.
#[cfg(test)]
pub(crate) mod testtar {
    use tar::{EntryType, Header};

    pub struct Tar(tar::Builder<Vec<u8>>);

    impl Tar {
        pub fn new() -> Tar {
            Tar(tar::Builder::new(Vec::new()))
        }

        fn header(name: &str, kind: EntryType, mode: u32, size: u64) -> Header {
            let mut h = Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1_700_000_000);
            h.set_size(size);
            let raw = &mut h.as_old_mut().name;
            assert!(name.len() < raw.len(), "test names must be short");
            raw[..name.len()].copy_from_slice(name.as_bytes());
            h
        }

        pub fn dir(mut self, name: &str, mode: u32) -> Tar {
            let mut h = Self::header(name, EntryType::Directory, mode, 0);
            h.set_cksum();
            self.0.append(&h, std::io::empty()).unwrap();
            self
        }

        pub fn file(self, name: &str, content: &str) -> Tar {
            self.file_owned(name, content, 0o644, 0, 0)
        }

        pub fn file_owned(
            mut self,
            name: &str,
            content: &str,
            mode: u32,
            uid: u64,
            gid: u64,
        ) -> Tar {
            let mut h = Self::header(name, EntryType::Regular, mode, content.len() as u64);
            h.set_uid(uid);
            h.set_gid(gid);
            h.set_cksum();
            self.0.append(&h, content.as_bytes()).unwrap();
            self
        }

        pub fn link(mut self, name: &str, kind: EntryType, target: &str) -> Tar {
            let mut h = Self::header(name, kind, 0o777, 0);
            let raw = &mut h.as_old_mut().linkname;
            raw[..target.len()].copy_from_slice(target.as_bytes());
            h.set_cksum();
            self.0.append(&h, std::io::empty()).unwrap();
            self
        }

        pub fn fifo(mut self, name: &str) -> Tar {
            let mut h = Self::header(name, EntryType::Fifo, 0o600, 0);
            h.set_cksum();
            self.0.append(&h, std::io::empty()).unwrap();
            self
        }

        pub fn finish(self) -> Vec<u8> {
            self.0.into_inner().unwrap()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        fs,
        os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt},
    };

    use tar::EntryType;

    use super::{testtar::Tar, *};

    fn unpack(tar: &[u8]) -> (tempfile::TempDir, Result<LayerStats, ImageError>) {
        let dir = tempfile::tempdir().unwrap();
        let res = unpack_layer(tar, dir.path(), "test");
        (dir, res)
    }

    #[test]
    fn whiteouts_become_overlay_whiteouts() {
        if !privileged() {
            eprintln!("skipped: needs root (mknod, trusted xattrs)");
            return;
        }
        let tar = Tar::new()
            .dir("a/", 0o755)
            .file("a/.wh.gone", "")
            .file("a/.wh..wh..opq", "")
            .file("b/.wh..wh.plnk", "")
            .file("a/keep", "kept\n")
            .finish();
        let (dir, res) = unpack(&tar);
        res.unwrap();
        let a = dir.path().join("a");
        let gone = fs::symlink_metadata(a.join("gone")).unwrap();
        assert!(gone.file_type().is_char_device());
        assert_eq!(gone.rdev(), 0, "a whiteout is device 0:0");
        let opaque = rustix::fs::getxattr(&a, OPAQUE_XATTR, &mut [0u8; 8][..]).unwrap();
        assert_eq!(opaque, 1);
        assert!(!a.join(".wh..wh..opq").exists());
        assert!(
            !dir.path().join("b/.wh..wh.plnk").exists(),
            "aufs metadata is dropped"
        );
        assert_eq!(fs::read_to_string(a.join("keep")).unwrap(), "kept\n");
    }

    #[test]
    fn keeps_ownership_modes_links_and_special_files() {
        if !privileged() {
            eprintln!("skipped: needs root (chown, mknod)");
            return;
        }
        let tar = Tar::new()
            .file_owned("etc/shadow", "secret\n", 0o4640, 1000, 42)
            .link("etc/link", EntryType::Symlink, "/etc/shadow")
            .link("etc/hard", EntryType::Link, "etc/shadow")
            .fifo("run/fifo")
            .dir("tmp/", 0o1777)
            .finish();
        let (dir, res) = unpack(&tar);
        res.unwrap();
        let root = dir.path();
        let shadow = fs::metadata(root.join("etc/shadow")).unwrap();
        assert_eq!((shadow.uid(), shadow.gid()), (1000, 42));
        assert_eq!(
            shadow.permissions().mode() & 0o7777,
            0o4640,
            "set-id bits survive chown"
        );
        assert_eq!(shadow.mtime(), 1_700_000_000);
        assert_eq!(
            fs::read_link(root.join("etc/link")).unwrap(),
            Path::new("/etc/shadow")
        );
        assert_eq!(
            fs::metadata(root.join("etc/hard")).unwrap().ino(),
            shadow.ino()
        );
        assert!(
            fs::symlink_metadata(root.join("run/fifo"))
                .unwrap()
                .file_type()
                .is_fifo()
        );
        assert_eq!(
            fs::metadata(root.join("tmp")).unwrap().permissions().mode() & 0o7777,
            0o1777
        );
        // Implicit parents are created 0755; the root is 0755 without "./".
        assert_eq!(
            fs::metadata(root.join("run")).unwrap().permissions().mode() & 0o777,
            0o755
        );
        assert_eq!(
            fs::metadata(root).unwrap().permissions().mode() & 0o777,
            0o755
        );
    }

    #[test]
    fn path_traversal_is_refused() {
        for (what, tar) in [
            ("dotdot", Tar::new().file("a/../../evil", "x").finish()),
            ("absolute", Tar::new().file("/evil", "x").finish()),
            (
                "hard link out",
                Tar::new()
                    .link("a", EntryType::Link, "../../etc/passwd")
                    .finish(),
            ),
            (
                "absolute hard link",
                Tar::new()
                    .link("a", EntryType::Link, "/etc/passwd")
                    .finish(),
            ),
        ] {
            let (dir, res) = unpack(&tar);
            assert!(
                matches!(res, Err(ImageError::UnsafeEntry { .. })),
                "{what}: {res:?}"
            );
            assert!(
                !dir.path().parent().unwrap().join("evil").exists(),
                "{what}"
            );
        }
    }

    #[test]
    fn symlinks_in_the_layer_never_lead_out() {
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().to_str().unwrap().to_owned();
        // A symlink to a host directory, then a file "through" it, then a
        // relative escape: all writes must stay below the layer root.
        let mode_before = fs::metadata(outside.path()).unwrap().permissions().mode();
        let tar = Tar::new()
            .dir(&format!("{}/", target.trim_start_matches('/')), 0o700)
            .link("esc", EntryType::Symlink, &target)
            .file("esc/pwned", "x")
            .link("up", EntryType::Symlink, "../../../../../..")
            .file("up/pwned2", "x")
            .finish();
        let (dir, res) = unpack(&tar);
        res.unwrap();
        assert!(!outside.path().join("pwned").exists());
        assert!(
            dir.path()
                .join(target.trim_start_matches('/'))
                .join("pwned")
                .exists(),
            "resolved inside the root, as the container would see it"
        );
        assert!(dir.path().join("pwned2").exists());
        // The symlinks themselves are kept as they were.
        assert_eq!(
            fs::read_link(dir.path().join("esc")).unwrap(),
            Path::new(&target)
        );

        // A symlink to a directory the layer lacks: refused, and the host
        // directory it names is left alone.
        let tar = Tar::new()
            .link("esc", EntryType::Symlink, &target)
            .file("esc/pwned", "x")
            .finish();
        let (_dir, res) = unpack(&tar);
        assert!(matches!(res, Err(ImageError::BadLayer { .. })), "{res:?}");
        assert!(!outside.path().join("pwned").exists());
        assert_eq!(
            fs::metadata(outside.path()).unwrap().permissions().mode(),
            mode_before
        );
    }

    #[test]
    fn later_entries_replace_earlier_ones() {
        let tar = Tar::new()
            .file("x", "file")
            .dir("x/", 0o755)
            .file("x/y", "inner")
            .file("x", "file again")
            .link("l", EntryType::Symlink, "x")
            .file("l", "not through the link")
            .finish();
        let (dir, res) = unpack(&tar);
        res.unwrap();
        assert_eq!(
            fs::read_to_string(dir.path().join("x")).unwrap(),
            "file again"
        );
        assert!(
            !fs::symlink_metadata(dir.path().join("l"))
                .unwrap()
                .is_symlink()
        );
    }

    #[test]
    fn diff_id_is_the_uncompressed_digest_whatever_the_compression() {
        let tar = Tar::new().dir("d/", 0o755).file("d/f", "hello\n").finish();
        let want = Digest::of(&tar);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let gz = gz.finish().unwrap();
        let zst = ruzstd::encoding::compress_to_vec(
            &tar[..],
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        // Two zstd frames and a skippable frame in front, as zstd:chunked
        // writes them.
        let half = tar.len() / 2;
        let mut multi = vec![0x50, 0x2a, 0x4d, 0x18, 3, 0, 0, 0, 1, 2, 3];
        multi.extend(ruzstd::encoding::compress_to_vec(
            &tar[..half],
            ruzstd::encoding::CompressionLevel::Fastest,
        ));
        multi.extend(ruzstd::encoding::compress_to_vec(
            &tar[half..],
            ruzstd::encoding::CompressionLevel::Fastest,
        ));
        for (what, blob) in [
            ("plain", &tar),
            ("gzip", &gz),
            ("zstd", &zst),
            ("zstd frames", &multi),
        ] {
            let (dir, res) = unpack(blob);
            let stats = res.unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(stats.diff_id, want, "{what}");
            assert_eq!(stats.size, tar.len() as u64, "{what}");
            assert_eq!(
                fs::read_to_string(dir.path().join("d/f")).unwrap(),
                "hello\n",
                "{what}"
            );
        }
    }

    #[test]
    fn garbage_is_a_bad_layer() {
        let (_dir, res) = unpack(b"this is not a tar archive, not even close to one........");
        assert!(matches!(res, Err(ImageError::BadLayer { .. })), "{res:?}");
    }
}
