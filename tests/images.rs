//! Images on a node: `swarm image pull|ls|rm|load|prune` against the
//! cluster registry, layer sharing on disk, merged root filesystems, and
//! failures that must leave nothing partial behind.
use std::{
    collections::BTreeSet,
    fs,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::Path,
    process::Command,
    sync::Arc,
    thread,
    time::Instant,
};

use serde_json::{Value, json};
use swarm::image::ImageStore;
use swarm_harness::{
    Cluster, Node,
    cluster::{NET_A, REGISTRY_PORT},
    images::{self, MULTILAYER_IMAGE, TestImages, check_multilayer_rootfs},
};

fn registry() -> String {
    format!("{}.{}.{}.1:{REGISTRY_PORT}", NET_A[0], NET_A[1], NET_A[2])
}

/// One node that may pull from the cluster registry (and from a fake one
/// on its own loopback, port `fake`) over plain HTTP.
fn cluster(fake: Option<u16>) -> Cluster {
    Cluster::builder()
        .nodes(1)
        .daemon_args(move |_| {
            let mut a = vec!["--insecure-registry".into(), registry()];
            if let Some(p) = fake {
                a.extend(["--insecure-registry".into(), format!("127.0.0.1:{p}")]);
            }
            a
        })
        .start()
}

fn store(n: &Node) -> ImageStore {
    ImageStore::open(n.data_root().join("images")).expect("open the node's image store")
}

fn dir_entries(p: &Path) -> BTreeSet<String> {
    fs::read_dir(p)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn layers_on_disk(n: &Node) -> BTreeSet<String> {
    dir_entries(&n.data_root().join("images/layers"))
}

fn ls(n: &Node) -> Vec<Value> {
    n.swarm(&["image", "ls", "--format", "json"])
        .success()
        .json()
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn names(rows: &[Value]) -> BTreeSet<String> {
    rows.iter()
        .map(|r| {
            format!(
                "{}:{}",
                r["Repository"].as_str().unwrap_or(""),
                r["Tag"].as_str().unwrap_or("")
            )
        })
        .collect()
}

/// Nothing in flight is left: `tmp/` is empty and every blob's content
/// matches its name.
fn assert_nothing_partial(n: &Node) {
    let root = n.data_root().join("images");
    let tmp = dir_entries(&root.join("tmp"));
    assert!(tmp.is_empty(), "temp files left behind: {tmp:?}");
    for name in dir_entries(&root.join("blobs/sha256")) {
        let p = root.join("blobs/sha256").join(&name);
        let out = Command::new("sha256sum")
            .arg(&p)
            .output()
            .expect("sha256sum");
        let sum = String::from_utf8_lossy(&out.stdout);
        assert!(
            sum.starts_with(&name),
            "blob {name} does not match its digest: {sum}"
        );
    }
}

#[test]
fn pull_list_share_layers_mount_remove_and_prune() {
    let c = cluster(None);
    let n = c.node(1);
    c.registry_addr(); // start it outside the timed pull

    let started = Instant::now();
    let out = n.swarm(&["image", "pull", &c.image("bb:1")]).success();
    let took = started.elapsed();
    eprintln!("image pull bb:1 took {:.0} ms", took.as_secs_f64() * 1000.0);
    let bb1 = c.image("bb:1");
    eprintln!("{}", out.stdout);
    assert!(out.stdout.contains("1: Pulling from"), "{}", out.stdout);
    assert!(out.stdout.contains("Pull complete"), "{}", out.stdout);
    assert!(
        out.stdout
            .contains(&format!("Status: Downloaded newer image for {bb1}")),
        "{}",
        out.stdout
    );
    assert_eq!(out.stdout.lines().last(), Some(bb1.as_str()));
    let again = n.swarm(&["image", "pull", &bb1]).success();
    assert!(
        again.stdout.contains("Image is up to date"),
        "{}",
        again.stdout
    );

    let out = n.swarm(&["image", "pull", &c.image("bb:2")]).success();
    assert!(
        out.stdout.contains("Already exists"),
        "bb:2 reuses bb:1's base layer: {}",
        out.stdout
    );
    n.swarm(&["image", "pull", &c.image(MULTILAYER_IMAGE)])
        .success();

    let rows = ls(n);
    let want: BTreeSet<String> =
        [c.image("bb:1"), c.image("bb:2"), c.image(MULTILAYER_IMAGE)].into();
    assert_eq!(names(&rows), want);
    for r in &rows {
        assert_eq!(r["ID"].as_str().map(str::len), Some(12), "{r}");
        assert!(r["Size"].as_str().is_some_and(|s| s.ends_with('B')), "{r}");
        assert!(
            r["CreatedSince"]
                .as_str()
                .is_some_and(|s| s.ends_with(" ago")),
            "{r}"
        );
    }
    let table = n.swarm(&["image", "ls"]).success().stdout;
    eprintln!("{table}");
    assert!(table.starts_with("REPOSITORY"), "{table}");
    for col in ["TAG", "IMAGE ID", "CREATED", "SIZE"] {
        assert!(table.lines().next().unwrap_or("").contains(col), "{table}");
    }
    assert_eq!(
        n.swarm(&["image", "ls", "-q"])
            .success()
            .stdout
            .lines()
            .count(),
        3
    );

    // bb:1 and bb:2 share their base layer: one directory on disk.
    let s = store(n);
    let l1 = s.inspect(&c.image("bb:1")).unwrap().layers;
    let l2 = s.inspect(&c.image("bb:2")).unwrap().layers;
    let ml = s.inspect(&c.image(MULTILAYER_IMAGE)).unwrap().layers;
    assert_eq!(l1.len(), 2);
    assert_eq!(l1[0].diff_id, l2[0].diff_id, "same base layer");
    assert_ne!(l1[1].diff_id, l2[1].diff_id);
    assert_eq!(ml.len(), images::MULTILAYER_LAYERS);
    let all: BTreeSet<String> = l1
        .iter()
        .chain(&l2)
        .chain(&ml)
        .map(|l| l.diff_id.hex().to_owned())
        .collect();
    assert_eq!(layers_on_disk(n), all, "one directory per distinct layer");

    // The merged rootfs of multilayer:1 is exactly what its layers say.
    let target = n.data_root().join("test-rootfs/ml");
    let m = s
        .prepare_rootfs(&c.image(MULTILAYER_IMAGE), &target, "test-ml")
        .expect("mount multilayer's rootfs");
    check_multilayer_rootfs(&target).unwrap_or_else(|e| panic!("{e}"));
    let bb = n.data_root().join("test-rootfs/bb");
    let mb = s.prepare_rootfs(&c.image("bb:2"), &bb, "test-bb").unwrap();
    assert_eq!(
        fs::read_to_string(bb.join("etc/bb-version")).unwrap(),
        "bb:2\n"
    );
    assert!(bb.join("bin/busybox").is_file());
    let ls_json = ls(n);
    let used: Vec<&Value> = ls_json.iter().filter(|r| r["Containers"] == "1").collect();
    assert_eq!(used.len(), 2, "{ls_json:?}");

    // An image in use needs --force; its layers survive a prune.
    let busy = n
        .swarm(&["image", "rm", &c.image(MULTILAYER_IMAGE)])
        .failure();
    assert!(
        busy.stderr
            .contains("in use by the root filesystem of container(s) test-ml"),
        "{}",
        busy.stderr
    );
    mb.release().unwrap();

    let rm = n
        .swarm(&[
            "image",
            "rm",
            &c.image("bb:1"),
            &c.image("bb:2"),
            "--force",
            &c.image(MULTILAYER_IMAGE),
        ])
        .success();
    assert!(
        rm.stdout
            .contains(&format!("Untagged: {}", c.image("bb:1"))),
        "{}",
        rm.stdout
    );
    assert_eq!(
        rm.stdout.matches("Deleted: sha256:").count(),
        3,
        "{}",
        rm.stdout
    );
    assert!(ls(n).is_empty());
    assert_eq!(layers_on_disk(n), all, "rm keeps layers until prune");

    let pruned = n.swarm(&["image", "prune", "-f"]).success();
    eprintln!("{}{}", rm.stdout, pruned.stdout);
    assert!(
        pruned.stdout.contains("Total reclaimed space: "),
        "{}",
        pruned.stdout
    );
    let ml_dirs: BTreeSet<String> = ml.iter().map(|l| l.diff_id.hex().to_owned()).collect();
    assert_eq!(
        layers_on_disk(n),
        ml_dirs,
        "only the mounted rootfs's layers stay"
    );
    check_multilayer_rootfs(&target).unwrap_or_else(|e| panic!("still mounted: {e}"));

    m.release().unwrap();
    n.swarm(&["image", "prune", "-f"]).success();
    assert!(layers_on_disk(n).is_empty());
    assert!(dir_entries(&n.data_root().join("images/blobs/sha256")).is_empty());
    assert_nothing_partial(n);
}

fn tar_dir(dir: &Path, out: &Path) {
    let st = Command::new("tar")
        .args(["--create", "--file"])
        .arg(out)
        .arg("--directory")
        .arg(dir)
        .arg(".")
        .status()
        .expect("run tar");
    assert!(st.success(), "tar of {}", dir.display());
}

/// A `docker save` archive of `image` from the OCI layout: uncompressed
/// layer tars in `<n>/layer.tar`, the config as `<hex>.json`, and
/// manifest.json naming `tag`.
fn docker_save(imgs: &TestImages, image: &str, tag: &str, out: &Path) {
    let dir = out.with_extension("d");
    fs::create_dir_all(&dir).expect("test fixture");
    let m = imgs.manifest(image).expect("test fixture");
    let config = m["config"]["digest"].as_str().expect("test fixture");
    let config_name = format!("{}.json", config.trim_start_matches("sha256:"));
    fs::copy(
        imgs.blob_path(config).expect("test fixture"),
        dir.join(&config_name),
    )
    .expect("test fixture");
    let mut layers = Vec::new();
    for (i, l) in m["layers"]
        .as_array()
        .expect("test fixture")
        .iter()
        .enumerate()
    {
        let blob = imgs
            .blob_path(l["digest"].as_str().expect("test fixture"))
            .expect("test fixture");
        let name = format!("l{i}/layer.tar");
        fs::create_dir_all(dir.join(format!("l{i}"))).expect("test fixture");
        let out = Command::new("gzip")
            .arg("-dc")
            .arg(&blob)
            .output()
            .expect("gzip");
        assert!(out.status.success());
        fs::write(dir.join(&name), out.stdout).expect("test fixture");
        layers.push(name);
    }
    let manifest = json!([{"Config": config_name, "RepoTags": [tag], "Layers": layers}]);
    fs::write(dir.join("manifest.json"), manifest.to_string()).expect("test fixture");
    tar_dir(&dir, out);
}

#[test]
fn load_docker_save_and_oci_layout_archives() {
    let c = Cluster::builder().nodes(1).start();
    let n = c.node(1);
    let imgs = images::ensure_built();

    let save = n.dir().join("bb1-save.tar");
    docker_save(imgs, "bb:1", "saved/bb:1", &save);
    let out = n
        .swarm(&["image", "load", "-i", save.to_str().unwrap()])
        .success();
    assert_eq!(out.trimmed(), "Loaded image: saved/bb:1");

    let layout = n.dir().join("layout.tar");
    tar_dir(&imgs.layout(), &layout);
    // Streamed through stdin, like `docker load < file`.
    let mut cmd = n.swarm_command(&["image", "load"]);
    cmd.stdin(fs::File::open(&layout).unwrap());
    let out = cmd.output().expect("run swarm image load");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for name in ["bb-1:latest", "bb-2:latest", "multilayer-1:latest"] {
        assert!(
            stdout.contains(&format!("Loaded image: {name}")),
            "{stdout}"
        );
    }

    let rows = ls(n);
    let got = names(&rows);
    for name in [
        "saved/bb:1",
        "bb-1:latest",
        "bb-2:latest",
        "multilayer-1:latest",
    ] {
        assert!(got.contains(name), "{got:?}");
    }
    // The docker save copy and the layout copy of bb:1 are one image.
    let s = store(n);
    assert_eq!(
        s.inspect("saved/bb:1").unwrap().id,
        s.inspect("bb-1").unwrap().id
    );
    assert_eq!(layers_on_disk(n).len(), 3 + images::MULTILAYER_LAYERS);

    let target = n.data_root().join("test-rootfs/ml");
    let m = s.prepare_rootfs("multilayer-1", &target, "ml").unwrap();
    check_multilayer_rootfs(&target).unwrap_or_else(|e| panic!("{e}"));
    m.release().unwrap();
    let target = n.data_root().join("test-rootfs/saved");
    let m = s.prepare_rootfs("saved/bb:1", &target, "saved").unwrap();
    assert_eq!(
        fs::read_to_string(target.join("etc/bb-version")).unwrap(),
        "bb:1\n"
    );
    m.release().unwrap();

    // Not an image archive: one clear line.
    let junk = n.dir().join("junk.tar");
    tar_dir(&imgs.layout().join("blobs"), &junk);
    let err = n
        .swarm(&["image", "load", "-i", junk.to_str().unwrap()])
        .failure();
    assert!(
        err.stderr.contains("neither a `docker save` archive"),
        "{}",
        err.stderr
    );
    assert_nothing_partial(n);
}

/// A registry that serves `image` from the test layout, but whose layer
/// downloads (all but the first layer) stop halfway: the connection closes
/// after half the promised bytes.
struct DyingRegistry;

impl DyingRegistry {
    fn start(n: &Node, imgs: &'static TestImages, image: &'static str) {
        let listener = n
            .in_netns(|| TcpListener::bind(("127.0.0.1", FAKE_PORT)))
            .expect("bind in the node's netns");
        let manifest = Arc::new(imgs.manifest(image).expect("test fixture"));
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let manifest = manifest.clone();
                thread::spawn(move || serve(conn, imgs, image, &manifest));
            }
        });
    }
}

fn serve(mut conn: TcpStream, imgs: &TestImages, image: &str, manifest: &Value) {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match conn.read(&mut b) {
            Ok(1) => head.push(b[0]),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&head);
    let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
    let (repo, tag) = image.split_once(':').expect("test fixture");
    let respond = |conn: &mut TcpStream, ctype: &str, body: &[u8], send: usize| {
        let _ = write!(
            conn,
            "HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let _ = conn.write_all(&body[..send]);
        let _ = conn.flush();
    };
    if path == "/v2/" {
        respond(&mut conn, "application/json", b"{}", 2);
    } else if path == format!("/v2/{repo}/manifests/{tag}") {
        let index: Value = serde_json::from_slice(
            &fs::read(imgs.layout().join("index.json")).expect("test fixture"),
        )
        .expect("test fixture");
        let want = images::layout_tag(image);
        let digest = index["manifests"]
            .as_array()
            .expect("test fixture")
            .iter()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == want.as_str())
            .and_then(|m| m["digest"].as_str())
            .expect("test fixture")
            .to_owned();
        let body = fs::read(imgs.blob_path(&digest).expect("test fixture")).expect("test fixture");
        respond(
            &mut conn,
            "application/vnd.oci.image.manifest.v1+json",
            &body,
            body.len(),
        );
    } else if let Some(digest) = path.strip_prefix(&format!("/v2/{repo}/blobs/")) {
        let body = fs::read(imgs.blob_path(digest).expect("test fixture")).expect("test fixture");
        let first_layer = manifest["layers"][0]["digest"] == digest;
        let is_layer = manifest["layers"]
            .as_array()
            .expect("test fixture")
            .iter()
            .any(|l| l["digest"] == digest);
        let send = if is_layer && !first_layer {
            body.len() / 2
        } else {
            body.len()
        };
        respond(&mut conn, "application/octet-stream", &body, send);
    } else {
        let _ = conn
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    }
}

/// The fake registry's port on each node's own loopback (a namespace per
/// node, so no other test can hold it).
const FAKE_PORT: u16 = 5999;

#[test]
fn failed_pulls_explain_themselves_and_leave_nothing_partial() {
    let imgs = images::ensure_built();
    let c = cluster(Some(FAKE_PORT));
    let n = c.node(1);
    DyingRegistry::start(n, imgs, MULTILAYER_IMAGE);

    // Layer downloads break off halfway.
    let fake = format!("127.0.0.1:{FAKE_PORT}/{MULTILAYER_IMAGE}");
    let err = n.swarm(&["image", "pull", &fake]).failure();
    eprintln!("{}", err.stderr);
    assert!(
        err.stderr.contains(&format!("pulling {fake}")),
        "{}",
        err.stderr
    );
    assert!(err.stderr.contains("was interrupted"), "{}", err.stderr);
    assert!(
        err.stderr.contains("Nothing partial was kept"),
        "{}",
        err.stderr
    );
    assert_eq!(err.stderr.lines().count(), 1, "{}", err.stderr);
    assert!(ls(n).is_empty(), "no image record for a failed pull");
    assert_nothing_partial(n);
    // At most the one complete layer stays (verified); none of the broken.
    let m = imgs.manifest(MULTILAYER_IMAGE).unwrap();
    let config: Value = serde_json::from_slice(
        &fs::read(
            imgs.blob_path(m["config"]["digest"].as_str().unwrap())
                .unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    let diff_ids: Vec<String> = config["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().trim_start_matches("sha256:").to_owned())
        .collect();
    let on_disk = layers_on_disk(n);
    assert!(
        on_disk.iter().all(|l| *l == diff_ids[0]),
        "only the completely served layer may stay: {on_disk:?}"
    );

    // The real registry completes the image, reusing what is there.
    n.swarm(&["image", "pull", &c.image(MULTILAYER_IMAGE)])
        .success();
    assert_eq!(layers_on_disk(n), diff_ids.iter().cloned().collect());

    // An image the registry does not have.
    let missing = c.image("nope:1");
    let err = n.swarm(&["image", "pull", &missing]).failure();
    eprintln!("{}", err.stderr);
    assert!(
        err.stderr
            .contains(&format!("pulling {missing}: the registry {}", registry())),
        "{}",
        err.stderr
    );
    assert!(
        err.stderr.contains("does the image exist?"),
        "{}",
        err.stderr
    );

    // Nobody listening, over HTTPS: says so and suggests the flag.
    let err = n.swarm(&["image", "pull", "127.0.0.1:5998/x:1"]).failure();
    eprintln!("{}", err.stderr);
    assert!(
        err.stderr
            .contains("cannot connect to the registry 127.0.0.1:5998"),
        "{}",
        err.stderr
    );
    assert!(
        err.stderr.contains("--insecure-registry 127.0.0.1:5998"),
        "{}",
        err.stderr
    );

    // A bad reference.
    let err = n.swarm(&["image", "pull", "http://x/y"]).failure();
    assert!(
        err.stderr.contains("invalid image reference"),
        "{}",
        err.stderr
    );
    assert_nothing_partial(n);
}
