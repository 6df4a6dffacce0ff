//! A node's TLS credentials on disk: `<dir>/swarm-root-ca.crt`,
//! `<dir>/swarm-node.crt` and `<dir>/swarm-node.key`.
//!
//! Owns the file layout, permissions (the key 0600, the directory 0700) and
//! crash safety: every file is replaced atomically (temporary file, fsync,
//! rename, fsync of the directory), so a crash leaves the old file or the
//! new one, never a torn one.
//!
//! Must never: write a key with wider permissions than 0600, even for an
//! instant. Blocking I/O: call from `spawn_blocking` in async code.
use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use rand::RngCore;

use super::cert::{CertError, NodeCert, NodeKey, RootCert};

pub const ROOT_CA_FILE: &str = "swarm-root-ca.crt";
pub const NODE_CERT_FILE: &str = "swarm-node.crt";
pub const NODE_KEY_FILE: &str = "swarm-node.key";

const KEY_MODE: u32 = 0o600;
const CERT_MODE: u32 = 0o644;
const DIR_MODE: u32 = 0o700;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the certificate directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is damaged: {source}; leave the swarm and join it again")]
    Invalid {
        path: PathBuf,
        #[source]
        source: CertError,
    },
    #[error(
        "the node credentials in {dir} are incomplete ({missing} is missing); leave the swarm and join it again"
    )]
    Incomplete { dir: PathBuf, missing: &'static str },
    #[error(
        "{key} does not belong to {cert} (interrupted certificate renewal?); leave the swarm and join it again"
    )]
    KeyMismatch { key: PathBuf, cert: PathBuf },
}

/// Everything a node needs to speak mutual TLS.
#[derive(Debug)]
pub struct NodeCredentials {
    pub root: RootCert,
    pub cert: NodeCert,
    pub key: NodeKey,
}

/// Writes the root CA certificate (e.g. right after the pinned bootstrap,
/// before the node has its own certificate).
pub fn save_root(dir: &Path, root: &RootCert) -> Result<(), StoreError> {
    ensure_dir(dir)?;
    write_atomic(&dir.join(ROOT_CA_FILE), root.to_pem().as_bytes(), CERT_MODE)
}

/// Writes the node's certificate and key (after joining or renewing). The
/// key goes first: a crash between the two leaves a key that does not match
/// the certificate, which [`load`] reports rather than uses.
pub fn save_node(dir: &Path, cert: &NodeCert, key: &NodeKey) -> Result<(), StoreError> {
    ensure_dir(dir)?;
    write_atomic(&dir.join(NODE_KEY_FILE), key.to_pem().as_bytes(), KEY_MODE)?;
    write_atomic(
        &dir.join(NODE_CERT_FILE),
        cert.to_pem().as_bytes(),
        CERT_MODE,
    )
}

/// Writes all three files.
pub fn save(dir: &Path, creds: &NodeCredentials) -> Result<(), StoreError> {
    save_root(dir, &creds.root)?;
    save_node(dir, &creds.cert, &creds.key)
}

/// Reads the root CA certificate, if there is one.
pub fn load_root(dir: &Path) -> Result<Option<RootCert>, StoreError> {
    let path = dir.join(ROOT_CA_FILE);
    let Some(pem) = read_optional(&path)? else {
        return Ok(None);
    };
    RootCert::from_pem(&pem)
        .map(Some)
        .map_err(|source| StoreError::Invalid { path, source })
}

/// Reads the node's credentials: `None` when the node has none (it never
/// joined, or left), an error when they are partial, damaged or do not
/// belong together.
pub fn load(dir: &Path) -> Result<Option<NodeCredentials>, StoreError> {
    let root_path = dir.join(ROOT_CA_FILE);
    let cert_path = dir.join(NODE_CERT_FILE);
    let key_path = dir.join(NODE_KEY_FILE);
    let root = read_optional(&root_path)?;
    let cert = read_optional(&cert_path)?;
    let key = read_optional(&key_path)?;
    let (root, cert, key) = match (root, cert, key) {
        (None, None, None) => return Ok(None),
        (Some(r), Some(c), Some(k)) => (r, c, k),
        (r, c, _) => {
            let missing = if r.is_none() {
                ROOT_CA_FILE
            } else if c.is_none() {
                NODE_CERT_FILE
            } else {
                NODE_KEY_FILE
            };
            return Err(StoreError::Incomplete {
                dir: dir.to_owned(),
                missing,
            });
        }
    };
    warn_if_exposed(&key_path);
    let root = RootCert::from_pem(&root).map_err(|source| StoreError::Invalid {
        path: root_path,
        source,
    })?;
    let cert = NodeCert::from_pem(&cert).map_err(|source| StoreError::Invalid {
        path: cert_path.clone(),
        source,
    })?;
    let key = NodeKey::from_pem(&key).map_err(|source| StoreError::Invalid {
        path: key_path.clone(),
        source,
    })?;
    if !cert.matches_key(&key) {
        return Err(StoreError::KeyMismatch {
            key: key_path,
            cert: cert_path,
        });
    }
    Ok(Some(NodeCredentials { root, cert, key }))
}

/// Removes the node's credentials (`swarm leave`). Missing files are fine.
pub fn remove(dir: &Path) -> Result<(), StoreError> {
    for name in [NODE_KEY_FILE, NODE_CERT_FILE, ROOT_CA_FILE] {
        let path = dir.join(name);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(StoreError::Write { path, source }),
        }
    }
    sync_dir(dir).map_err(|source| StoreError::Write {
        path: dir.to_owned(),
        source,
    })
}

fn ensure_dir(dir: &Path) -> Result<(), StoreError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(|source| StoreError::CreateDir {
            path: dir.to_owned(),
            source,
        })
}

fn read_optional(path: &Path) -> Result<Option<String>, StoreError> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StoreError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

fn warn_if_exposed(key_path: &Path) {
    if let Ok(meta) = fs::metadata(key_path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %key_path.display(),
                mode = format!("{mode:o}"),
                "the node's private key is readable by other users; run chmod 600 on it"
            );
        }
    }
}

/// Replaces `path` with `contents`: a temporary file created with `mode`
/// from the start, fsynced, renamed over `path`, and the directory fsynced
/// so the rename survives a crash.
fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), StoreError> {
    let err = |source| StoreError::Write {
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{:016x}", rand::rng().next_u64()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask may have narrowed the mode; never widen it past `mode`
        // but make it exact so a cert is readable as intended.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(contents)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(err)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::cert::{NODE_CERT_VALIDITY, Role, RootCa};

    fn creds() -> (RootCa, NodeCredentials) {
        let ca = RootCa::generate().unwrap();
        let key = NodeKey::generate().unwrap();
        let cert = ca
            .issue(
                &key.generate_csr(None).unwrap(),
                "n1",
                Role::Worker,
                "c1",
                NODE_CERT_VALIDITY,
            )
            .unwrap();
        let root = ca.cert().clone();
        (ca, NodeCredentials { root, cert, key })
    }

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn save_and_load_round_trip_with_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("certificates");
        assert!(load(&dir).unwrap().is_none());
        let (_ca, c) = creds();
        save(&dir, &c).unwrap();
        assert_eq!(mode(&dir.join(NODE_KEY_FILE)), 0o600);
        assert_eq!(mode(&dir.join(NODE_CERT_FILE)), 0o644);
        assert_eq!(mode(&dir.join(ROOT_CA_FILE)), 0o644);
        assert_eq!(mode(&dir), 0o700);
        let loaded = load(&dir).unwrap().unwrap();
        assert_eq!(loaded.root, c.root);
        assert_eq!(loaded.cert, c.cert);
        assert_eq!(loaded.key.to_pem(), c.key.to_pem());
        assert_eq!(load_root(&dir).unwrap().unwrap(), c.root);
        // No temporary files are left behind.
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
    }

    #[test]
    fn overwriting_a_loose_key_tightens_it() {
        let tmp = tempfile::tempdir().unwrap();
        let key_path = tmp.path().join(NODE_KEY_FILE);
        fs::write(&key_path, "old").unwrap();
        fs::set_permissions(&key_path, fs::Permissions::from_mode(0o644)).unwrap();
        let (_ca, c) = creds();
        save_node(tmp.path(), &c.cert, &c.key).unwrap();
        assert_eq!(mode(&key_path), 0o600);
    }

    #[test]
    fn partial_and_mismatched_credentials_are_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let (_ca, c) = creds();
        save_root(tmp.path(), &c.root).unwrap();
        let err = load(tmp.path()).unwrap_err();
        assert!(matches!(err, StoreError::Incomplete { .. }), "{err}");
        assert!(err.to_string().contains("join it again"), "{err}");

        let (_ca2, other) = creds();
        save_node(tmp.path(), &c.cert, &other.key).unwrap();
        let err = load(tmp.path()).unwrap_err();
        assert!(matches!(err, StoreError::KeyMismatch { .. }), "{err}");

        fs::write(tmp.path().join(NODE_CERT_FILE), "garbage").unwrap();
        let err = load(tmp.path()).unwrap_err();
        assert!(matches!(err, StoreError::Invalid { .. }), "{err}");

        remove(tmp.path()).unwrap();
        assert!(load(tmp.path()).unwrap().is_none());
        remove(tmp.path()).unwrap();
    }
}
