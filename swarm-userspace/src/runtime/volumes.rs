//! Named volumes on a node: `<data-root>/volumes/<name>/_data` (docker's
//! local driver layout), created on first use and, as docker does, filled
//! with what the image has at the mount target when they are empty
//! (unless `volume_nocopy`).
//!
//! Never follows a symlink: the image is untrusted, and a link in it must
//! not make the runtime copy host files into a volume.
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt, lchown, symlink};
use std::path::{Component, Path, PathBuf};

/// `rootfs` joined with the absolute `target`, if no component of it below
/// the rootfs is a symlink (else `None`: nothing to copy from).
pub fn path_in_rootfs(rootfs: &Path, target: &str) -> Option<PathBuf> {
    let mut p = rootfs.to_path_buf();
    for c in Path::new(target).components() {
        match c {
            Component::RootDir | Component::CurDir => continue,
            Component::Normal(n) => p.push(n),
            Component::ParentDir | Component::Prefix(_) => return None,
        }
        let meta = fs::symlink_metadata(&p).ok()?;
        if meta.file_type().is_symlink() {
            return None;
        }
    }
    Some(p)
}

fn is_empty(dir: &Path) -> io::Result<bool> {
    Ok(fs::read_dir(dir)?.next().is_none())
}

/// Copies the tree at `src` into the existing directory `dst`, keeping
/// modes, owners and symlinks; device nodes, fifos and sockets are skipped.
pub fn copy_tree(src: &Path, dst: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(src)?;
    fs::set_permissions(dst, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    lchown(dst, Some(meta.uid()), Some(meta.gid()))?;
    for entry in fs::read_dir(src)? {
        let entry = entry?;
        let from = entry.path();
        let to = dst.join(entry.file_name());
        let m = fs::symlink_metadata(&from)?;
        let t = m.file_type();
        if t.is_symlink() {
            symlink(fs::read_link(&from)?, &to)?;
        } else if t.is_dir() {
            fs::create_dir(&to)?;
            copy_tree(&from, &to)?;
            continue; // copy_tree set the mode and owner
        } else if t.is_file() {
            fs::copy(&from, &to)?;
            fs::set_permissions(&to, fs::Permissions::from_mode(m.mode() & 0o7777))?;
        } else {
            continue;
        }
        lchown(&to, Some(m.uid()), Some(m.gid()))?;
    }
    Ok(())
}

/// Creates the volume's data directory if needed; when it is empty and
/// `copy` is set, fills it from `rootfs` at `target`. Returns the data dir.
pub fn prepare(
    volumes: &Path,
    name: &str,
    rootfs: &Path,
    target: &str,
    copy: bool,
) -> io::Result<PathBuf> {
    let data = volumes.join(name).join("_data");
    fs::create_dir_all(&data)?;
    if copy
        && is_empty(&data)?
        && let Some(src) = path_in_rootfs(rootfs, target)
        && fs::symlink_metadata(&src).is_ok_and(|m| m.is_dir())
    {
        copy_tree(&src, &data)?;
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_image_content_into_an_empty_volume_once() {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("rootfs");
        let volumes = dir.path().join("volumes");
        fs::create_dir_all(rootfs.join("var/lib/app/sub")).unwrap();
        fs::write(rootfs.join("var/lib/app/seed.txt"), "seed").unwrap();
        fs::set_permissions(
            rootfs.join("var/lib/app/seed.txt"),
            fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        fs::set_permissions(
            rootfs.join("var/lib/app"),
            fs::Permissions::from_mode(0o750),
        )
        .unwrap();
        symlink("seed.txt", rootfs.join("var/lib/app/link")).unwrap();

        let data = prepare(&volumes, "v1", &rootfs, "/var/lib/app", true).unwrap();
        assert_eq!(fs::read_to_string(data.join("seed.txt")).unwrap(), "seed");
        assert!(data.join("sub").is_dir());
        assert_eq!(
            fs::read_link(data.join("link")).unwrap(),
            Path::new("seed.txt")
        );
        let mode = |p: &Path| fs::metadata(p).unwrap().mode() & 0o7777;
        assert_eq!(mode(&data.join("seed.txt")), 0o600);
        assert_eq!(mode(&data), 0o750);

        // Not empty any more: what the container wrote stays.
        fs::write(data.join("seed.txt"), "changed").unwrap();
        prepare(&volumes, "v1", &rootfs, "/var/lib/app", true).unwrap();
        assert_eq!(
            fs::read_to_string(data.join("seed.txt")).unwrap(),
            "changed"
        );

        // nocopy, or nothing at the target: an empty volume.
        let d2 = prepare(&volumes, "v2", &rootfs, "/var/lib/app", false).unwrap();
        assert!(is_empty(&d2).unwrap());
        let d3 = prepare(&volumes, "v3", &rootfs, "/missing", true).unwrap();
        assert!(is_empty(&d3).unwrap());
    }

    #[test]
    fn never_follows_links_out_of_the_rootfs() {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("rootfs");
        let outside = dir.path().join("host-secrets");
        fs::create_dir_all(&rootfs).unwrap();
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("key"), "secret").unwrap();
        symlink(&outside, rootfs.join("data")).unwrap();
        let data = prepare(&dir.path().join("v"), "v", &rootfs, "/data", true).unwrap();
        assert!(is_empty(&data).unwrap());
        assert_eq!(path_in_rootfs(&rootfs, "/data"), None);
        assert_eq!(path_in_rootfs(&rootfs, "/a/../b"), None);
    }
}
