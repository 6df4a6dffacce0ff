//! Store-level tests: commits, loads, removal, prune and rootfs mounts,
//! on archives built here.
use std::{fs, io::Write, path::Path};

use serde_json::json;

use super::{layer::testtar::Tar, *};

fn store() -> (tempfile::TempDir, ImageStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = ImageStore::open(dir.path().join("images")).unwrap();
    (dir, s)
}

fn config(layers: &[&[u8]]) -> Vec<u8> {
    let p = Platform::current();
    serde_json::to_vec(&json!({
        "architecture": p.architecture,
        "os": "linux",
        "created": "2024-05-01T12:00:00Z",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| Digest::of(l).to_string()).collect::<Vec<_>>()},
    }))
    .unwrap()
}

fn add(t: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]) {
    let mut h = tar::Header::new_ustar();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    t.append_data(&mut h, name, data).unwrap();
}

/// A `docker save` archive: `<id>.json`, `<n>/layer.tar`, manifest.json.
/// With `symlinked`, layers live under blobs/ and the legacy paths are
/// symlinks, as docker 25+ writes them.
fn docker_save(images: &[(&[&str], Vec<Vec<u8>>)], symlinked: bool) -> Vec<u8> {
    let mut t = tar::Builder::new(Vec::new());
    let mut manifest = Vec::new();
    for (i, (tags, layers)) in images.iter().enumerate() {
        let refs: Vec<&[u8]> = layers.iter().map(Vec::as_slice).collect();
        let cfg = config(&refs);
        let cfg_name = format!("{}.json", Digest::of(&cfg).hex());
        add(&mut t, &cfg_name, &cfg);
        let mut names = Vec::new();
        for (n, l) in layers.iter().enumerate() {
            let name = format!("layer{i}-{n}/layer.tar");
            if symlinked {
                let blob = format!("blobs/sha256/{}", Digest::of(l).hex());
                add(&mut t, &blob, l);
                let mut h = tar::Header::new_ustar();
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                t.append_link(&mut h, &name, format!("../{blob}")).unwrap();
            } else {
                add(&mut t, &name, l);
            }
            names.push(name);
        }
        manifest.push(json!({"Config": cfg_name, "RepoTags": tags, "Layers": names}));
    }
    add(
        &mut t,
        "manifest.json",
        &serde_json::to_vec(&manifest).unwrap(),
    );
    t.into_inner().unwrap()
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(b).unwrap();
    gz.finish().unwrap()
}

/// An OCI image layout archive with gzip layers, one image per name.
fn oci_layout(images: &[(&str, Vec<Vec<u8>>)]) -> Vec<u8> {
    let mut t = tar::Builder::new(Vec::new());
    add(&mut t, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    let mut index = Vec::new();
    for (name, layers) in images {
        let refs: Vec<&[u8]> = layers.iter().map(Vec::as_slice).collect();
        let cfg = config(&refs);
        let cfg_d = Digest::of(&cfg);
        add(&mut t, &format!("blobs/sha256/{}", cfg_d.hex()), &cfg);
        let mut descs = Vec::new();
        for l in layers {
            let gz = gzip(l);
            let d = Digest::of(&gz);
            add(&mut t, &format!("blobs/sha256/{}", d.hex()), &gz);
            descs.push(json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d.to_string(), "size": gz.len()}));
        }
        let m = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg_d.to_string(), "size": cfg.len()},
            "layers": descs,
        }))
        .unwrap();
        let md = Digest::of(&m);
        add(&mut t, &format!("blobs/sha256/{}", md.hex()), &m);
        index.push(json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md.to_string(), "size": m.len(),
            "annotations": {"org.opencontainers.image.ref.name": name}}));
    }
    add(
        &mut t,
        "index.json",
        &serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": index})).unwrap(),
    );
    t.into_inner().unwrap()
}

fn write_archive(dir: &Path, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.join("archive.tar");
    fs::write(&p, bytes).unwrap();
    p
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn base_layer() -> Vec<u8> {
    Tar::new()
        .dir("etc/", 0o755)
        .file("etc/os", "base\n")
        .finish()
}

#[test]
fn a_diff_id_mismatch_keeps_nothing() {
    let (_d, s) = store();
    let layer = base_layer();
    let blob = s.root().join("blob");
    fs::write(&blob, &layer).unwrap();
    let wrong = Digest::of(b"something else");
    let err = s.commit_layer(&blob, &wrong, "l1").unwrap_err();
    assert!(matches!(err, ImageError::DiffIdMismatch { .. }), "{err}");
    assert!(err.to_string().contains("nothing was kept"), "{err}");
    assert!(entries(&s.root().join("layers")).is_empty());
    assert!(
        entries(&s.tmp_dir()).is_empty(),
        "the temp tree is gone too"
    );

    // The right diff_id commits, once.
    let right = Digest::of(&layer);
    assert!(s.commit_layer(&blob, &right, "l1").unwrap());
    assert!(!s.commit_layer(&blob, &right, "l1").unwrap());
    assert_eq!(
        entries(&s.root().join("layers")),
        vec![right.hex().to_owned()]
    );
}

#[test]
fn an_unsafe_layer_keeps_nothing() {
    let (_d, s) = store();
    let layer = Tar::new().file("ok", "x").file("../evil", "x").finish();
    let blob = s.root().join("blob");
    fs::write(&blob, &layer).unwrap();
    let err = s
        .commit_layer(&blob, &Digest::of(&layer), "l1")
        .unwrap_err();
    assert!(matches!(err, ImageError::UnsafeEntry { .. }), "{err}");
    assert!(entries(&s.root().join("layers")).is_empty());
    assert!(entries(&s.tmp_dir()).is_empty());
}

#[tokio::test]
async fn docker_save_archives_load_with_their_tags() {
    for symlinked in [false, true] {
        let (d, s) = store();
        let base = base_layer();
        let top = Tar::new().file("etc/version", "1\n").finish();
        let archive = docker_save(
            &[
                (
                    &["bb:1", "198.51.100.1:5000/bb:1"],
                    vec![base.clone(), top.clone()],
                ),
                (&[], vec![base.clone()]),
            ],
            symlinked,
        );
        let out = s.load(&write_archive(d.path(), &archive)).await.unwrap();
        assert_eq!(out.images.len(), 2);
        assert_eq!(
            out.images[0].1,
            vec!["docker.io/library/bb:1", "198.51.100.1:5000/bb:1"]
        );
        assert!(out.images[1].1.is_empty());

        let rec = s.inspect("bb:1").unwrap();
        assert_eq!(rec.layers.len(), 2);
        assert_eq!(rec.layers[0].diff_id, Digest::of(&base));
        assert_eq!(rec.size, (base.len() + top.len()) as u64);
        assert_eq!(rec.created.as_deref(), Some("2024-05-01T12:00:00Z"));
        assert_eq!(s.inspect("198.51.100.1:5000/bb:1").unwrap().id, rec.id);
        assert_eq!(s.inspect(&rec.id.hex()[..8]).unwrap().id, rec.id);
        // Shared base layer unpacked once.
        assert_eq!(entries(&s.root().join("layers")).len(), 2);
        assert!(entries(&s.tmp_dir()).is_empty());
        assert_eq!(s.list().unwrap().len(), 2);
    }
}

#[tokio::test]
async fn broken_archives_are_explained() {
    let (d, s) = store();
    let mut t = tar::Builder::new(Vec::new());
    add(&mut t, "hello.txt", b"hi");
    let err = s
        .load(&write_archive(d.path(), &t.into_inner().unwrap()))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("neither a `docker save` archive"),
        "{err}"
    );

    // A layer whose content does not match the config's diff_id.
    let good = base_layer();
    let mut archive = docker_save(&[(&["x:1"], vec![good.clone()])], false);
    let pos = archive.windows(5).position(|w| w == b"base\n").unwrap();
    archive[pos] = b'B';
    let err = s
        .load(&write_archive(d.path(), &archive))
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::DiffIdMismatch { .. }), "{err}");
    assert!(s.list().unwrap().is_empty());
    assert!(entries(&s.root().join("layers")).is_empty());
    assert!(entries(&s.tmp_dir()).is_empty());
}

#[tokio::test]
async fn oci_layouts_load_and_verify_blobs() {
    let (d, s) = store();
    let base = base_layer();
    let archive = oci_layout(&[
        ("198.51.100.1:5000/ml:1", vec![base.clone()]),
        ("bb-1", vec![base.clone()]),
    ]);
    let out = s.load(&write_archive(d.path(), &archive)).await.unwrap();
    assert_eq!(out.images[0].1, vec!["198.51.100.1:5000/ml:1"]);
    assert_eq!(out.images[1].1, vec!["docker.io/library/bb-1:latest"]);
    let rec = s.inspect("198.51.100.1:5000/ml:1").unwrap();
    assert!(rec.manifest.is_some());
    // Same layers, same config: one image with both names.
    assert_eq!(out.images[0].0, out.images[1].0);
    assert_eq!(rec.tags.len(), 2);
    assert_eq!(rec.repo_digests.len(), 2);
    assert!(s.has_layer(&Digest::of(&base)));

    // Flip a byte inside a gzip blob: the blob digest check catches it.
    let (d2, s2) = store();
    let mut bad = oci_layout(&[("x:1", vec![base])]);
    let gz_magic = bad
        .windows(3)
        .position(|w| w == [0x1f, 0x8b, 0x08])
        .unwrap();
    bad[gz_magic + 20] ^= 0xff;
    let err = s2.load(&write_archive(d2.path(), &bad)).await.unwrap_err();
    assert!(err.to_string().contains("corrupt"), "{err}");
    assert!(s2.list().unwrap().is_empty());
    assert!(entries(&s2.tmp_dir()).is_empty());
}

#[tokio::test]
async fn remove_then_prune_frees_layers_and_blobs() {
    let (d, s) = store();
    let base = base_layer();
    let v1 = Tar::new().file("etc/version", "1\n").finish();
    let v2 = Tar::new().file("etc/version", "2\n").finish();
    let archive = oci_layout(&[
        ("bb:1", vec![base.clone(), v1.clone()]),
        ("bb:2", vec![base.clone(), v2.clone()]),
    ]);
    s.load(&write_archive(d.path(), &archive)).await.unwrap();
    assert_eq!(entries(&s.root().join("layers")).len(), 3);

    // Nothing unused yet.
    let r = s.prune(false).await.unwrap();
    assert_eq!(r, PruneReport::default());

    let removed = s.remove("bb:1", false).unwrap();
    // The name, the repo digest (as docker lists both), the image.
    assert_eq!(removed.len(), 3, "{removed:?}");
    assert!(matches!(&removed[0], Removal::Untagged(t) if t == "bb:1"));
    assert!(matches!(&removed[1], Removal::Untagged(t) if t.starts_with("bb@sha256:")));
    assert!(matches!(removed.last(), Some(Removal::Deleted(_))));
    assert!(matches!(s.inspect("bb:1"), Err(ImageError::NotFound(_))));
    let r = s.prune(false).await.unwrap();
    assert_eq!(
        r.layers,
        vec![Digest::of(&v1)],
        "only bb:1's own layer goes"
    );
    assert!(r.blobs >= 3, "its layer blob, config and manifest: {r:?}");
    assert!(r.reclaimed_bytes > 0);
    assert!(s.has_layer(&Digest::of(&base)));

    s.remove("bb:2", false).unwrap();
    s.prune(false).await.unwrap();
    assert!(entries(&s.root().join("layers")).is_empty());
    assert!(entries(&s.root().join("blobs/sha256")).is_empty());
    assert!(matches!(
        s.remove("bb:2", false),
        Err(ImageError::NotFound(_))
    ));
}

#[tokio::test]
async fn tags_move_and_names_are_removed_one_at_a_time() {
    let (d, s) = store();
    let a = Tar::new().file("a", "a").finish();
    let b = Tar::new().file("b", "b").finish();
    s.load(&write_archive(
        d.path(),
        &docker_save(&[(&["app:1", "app:latest"], vec![a])], false),
    ))
    .await
    .unwrap();
    let first = s.inspect("app:1").unwrap().id;
    // By ID, an image with two names needs --force.
    assert!(matches!(
        s.remove(first.hex(), false),
        Err(ImageError::MultipleNames { .. })
    ));
    // A new image taking app:1 leaves the old one with app:latest only.
    s.load(&write_archive(
        d.path(),
        &docker_save(&[(&["app:1"], vec![b])], false),
    ))
    .await
    .unwrap();
    assert_ne!(s.inspect("app:1").unwrap().id, first);
    assert_eq!(s.inspect("app").unwrap().id, first);
    // Removing its last name removes the image.
    let r = s.remove("app:latest", false).unwrap();
    assert_eq!(
        r,
        vec![
            Removal::Untagged("app:latest".into()),
            Removal::Deleted(first)
        ]
    );
    assert_eq!(s.list().unwrap().len(), 1);
}

#[tokio::test]
async fn recover_clears_leftovers() {
    let (_d, s) = store();
    fs::write(s.tmp_dir().join("blob-partial"), b"half").unwrap();
    fs::create_dir_all(s.tmp_dir().join("layer-partial/usr")).unwrap();
    s.recover().unwrap();
    assert!(entries(&s.tmp_dir()).is_empty());
}

#[tokio::test]
async fn rootfs_merges_layers_and_protects_them_from_prune() {
    if !layer::privileged() {
        eprintln!("skipped: needs root (overlayfs)");
        return;
    }
    let (d, s) = store();
    let l1 = Tar::new()
        .dir("ml/", 0o755)
        .file("ml/keep", "1\n")
        .file("ml/gone", "1\n")
        .dir("ml/opq/", 0o755)
        .file("ml/opq/old", "1\n")
        .finish();
    let l2 = Tar::new()
        .file("ml/.wh.gone", "")
        .file("ml/opq/.wh..wh..opq", "")
        .file("ml/opq/new", "2\n")
        .file("ml/keep", "2\n")
        .finish();
    s.load(&write_archive(
        d.path(),
        &oci_layout(&[("ml:1", vec![l1, l2])]),
    ))
    .await
    .unwrap();
    let id = s.inspect("ml:1").unwrap().id;
    assert_eq!(s.image_config(&id).unwrap().cmd, ["/bin/sh"]);
    // Mounted inside the store, by image ID: release takes the mount point too.
    let inside = s.rootfs_target("c2");
    let m2 = s.prepare_rootfs(&id.to_string(), &inside, "c2").unwrap();
    assert_eq!(fs::read_to_string(inside.join("ml/keep")).unwrap(), "2\n");
    m2.release().unwrap();
    assert!(!s.containers_dir().join("c2").exists());
    let target = d.path().join("rootfs");
    let m = s.prepare_rootfs("ml:1", &target, "c1").unwrap();
    let check = || -> Vec<String> {
        let mut v = Vec::new();
        for p in ["ml/keep", "ml/gone", "ml/opq/old", "ml/opq/new"] {
            if let Ok(c) = fs::read_to_string(target.join(p)) {
                v.push(format!("{p}={}", c.trim()));
            }
        }
        v
    };
    assert_eq!(check(), vec!["ml/keep=2", "ml/opq/new=2"]);
    // Writes go to the container's own layer.
    fs::write(target.join("ml/written"), "w").unwrap();
    assert!(s.containers_dir().join("c1/upper/ml/written").exists());
    assert!(matches!(
        s.prepare_rootfs("ml:1", &target, "c1"),
        Err(ImageError::RootfsExists(_))
    ));
    // In use: rm needs --force, and prune keeps the layers.
    assert!(matches!(
        s.remove("ml:1", false),
        Err(ImageError::InUse { .. })
    ));
    s.remove("ml:1", true).unwrap();
    let r = s.prune(true).await.unwrap();
    assert!(r.layers.is_empty(), "{r:?}");
    assert_eq!(check(), vec!["ml/keep=2", "ml/opq/new=2"]);

    m.release().unwrap();
    assert!(!target.join("ml").exists(), "unmounted");
    assert!(entries(&s.mounts_dir()).is_empty());
    assert!(entries(&s.containers_dir()).is_empty());
    let r = s.prune(true).await.unwrap();
    assert_eq!(r.layers.len(), 2);
    // Releasing twice is fine.
    s.release("c1").unwrap();
    assert!(matches!(
        s.prepare_rootfs("ml:1", &target, "../x"),
        Err(ImageError::InvalidContainerId(_))
    ));
}

fn record(id: &[u8], tags: &[&str], digests: &[&str]) -> ImageRecord {
    ImageRecord {
        id: Digest::of(id),
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        repo_digests: digests.iter().map(|t| (*t).to_owned()).collect(),
        manifest: None,
        index: None,
        layers: Vec::new(),
        platform: Platform::current(),
        created: None,
        size: 0,
    }
}

#[tokio::test]
async fn images_that_lose_their_name_dangle_but_digest_pulls_do_not() {
    let (_d, s) = store();
    let d1 = format!("r.example/app@{}", Digest::of(b"m1"));
    let d2 = format!("r.example/app@{}", Digest::of(b"m2"));
    let pinned = format!("r.example/app@{}", Digest::of(b"m3"));
    s.record_image(record(b"old", &["r.example/app:1"], &[&d1]))
        .unwrap();
    s.record_image(record(b"pinned", &[], &[&pinned])).unwrap();
    assert!(
        s.record_image(record(b"old", &["r.example/app:1"], &[&d1]))
            .unwrap(),
        "up to date"
    );
    // app:1 moves to a new image: the old one keeps nothing.
    s.record_image(record(b"new", &["r.example/app:1"], &[&d2]))
        .unwrap();
    let old = s.inspect(Digest::of(b"old").hex()).unwrap();
    assert!(old.is_dangling(), "{old:?}");
    // Removing a digest name of a tagged image only drops that name.
    let r = s.remove(&d2, false).unwrap();
    assert_eq!(r, vec![Removal::Untagged(d2.clone())]);
    assert!(s.inspect("r.example/app:1").is_ok());

    let report = s.prune(false).await.unwrap();
    assert_eq!(report.images, vec![Digest::of(b"old")]);
    assert!(s.inspect(&pinned).is_ok(), "pulled by digest: not dangling");
    let report = s.prune(true).await.unwrap();
    assert_eq!(report.images.len(), 2);
}

#[tokio::test]
async fn a_multi_platform_index_resolves_to_this_platform() {
    let (d, s) = store();
    let mut t = tar::Builder::new(Vec::new());
    add(&mut t, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    let here = Platform::current();
    let mut descs = Vec::new();
    // One image per platform, told apart by a file; "foreign" first.
    for (arch, content) in [
        ("s390x", "foreign\n"),
        (here.architecture.as_str(), "native\n"),
    ] {
        let layer = Tar::new().file("which", content).finish();
        let mut cfg: serde_json::Value = serde_json::from_slice(&config(&[&layer])).unwrap();
        cfg["architecture"] = json!(arch);
        let cfg = serde_json::to_vec(&cfg).unwrap();
        let (ld, cd) = (Digest::of(&layer), Digest::of(&cfg));
        add(&mut t, &format!("blobs/sha256/{}", ld.hex()), &layer);
        add(&mut t, &format!("blobs/sha256/{}", cd.hex()), &cfg);
        let m = serde_json::to_vec(&json!({"schemaVersion": 2,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd.to_string(), "size": cfg.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld.to_string(), "size": layer.len()}]}))
        .unwrap();
        let md = Digest::of(&m);
        add(&mut t, &format!("blobs/sha256/{}", md.hex()), &m);
        descs.push(json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md.to_string(),
            "size": m.len(), "platform": {"os": "linux", "architecture": arch}}));
    }
    let index = serde_json::to_vec(&json!({"schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": descs}))
    .unwrap();
    let id = Digest::of(&index);
    add(&mut t, &format!("blobs/sha256/{}", id.hex()), &index);
    add(
        &mut t,
        "index.json",
        &serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json", "digest": id.to_string(), "size": index.len(),
            "annotations": {"io.containerd.image.name": "r.example/multi:1"}}]}))
        .unwrap(),
    );
    s.load(&write_archive(d.path(), &t.into_inner().unwrap()))
        .await
        .unwrap();
    let rec = s.inspect("r.example/multi:1").unwrap();
    assert_eq!(rec.platform.architecture, here.architecture);
    assert_eq!(rec.index, Some(id.clone()));
    assert_eq!(rec.repo_digests, vec![format!("r.example/multi@{id}")]);
    let layer = s.layer_path(&rec.layers[0].diff_id);
    assert_eq!(fs::read_to_string(layer.join("which")).unwrap(), "native\n");
    assert_eq!(
        entries(&s.root().join("layers")).len(),
        1,
        "the other platform is never unpacked"
    );
}
