//! The test images really work: `bb` serves its page from a chroot in a
//! throwaway namespace and stops on SIGTERM; `multilayer` unpacks to the
//! documented tree and really contains whiteouts; the cache is shared.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::Duration;

use swarm_harness::images::{
    self, BB_PORT, BbPage, MULTILAYER_ABSENT, MULTILAYER_IMAGE, MULTILAYER_LAYERS,
};
use swarm_harness::{Netns, Process, cleanup, http, wait_until};

/// The entry point + command the image config declares (umoci writes them
/// into the unpacked bundle's runtime config as `process.args`).
fn image_args(bundle: &std::path::Path) -> Vec<String> {
    let spec: serde_json::Value = serde_json::from_slice(
        &std::fs::read(bundle.join("config.json")).expect("bundle config.json"),
    )
    .expect("JSON");
    spec["process"]["args"]
        .as_array()
        .expect("process.args")
        .iter()
        .map(|a| a.as_str().expect("string arg").to_owned())
        .collect()
}

fn serve_and_fetch(image: &str) {
    let built = images::ensure_built();
    let tmp = tempfile::Builder::new()
        .prefix(&format!("{}-img-", swarm_harness::unique_prefix()))
        .tempdir()
        .expect("tempdir");
    let bundle = tmp.path().join("bundle");
    let rootfs = built.unpack(image, &bundle).expect("unpack");
    let args = image_args(&bundle);
    assert_eq!(args[..2], ["/sbin/tini", "--"], "tini is the entry point");

    // Like a container: own network namespace (only loopback), own UTS
    // (hostname) and PID namespace (tini is PID 1), rootfs via chroot.
    let ns = Netns::create_unique("img").expect("netns");
    let log_path = tmp.path().join("server.log");
    let log = std::fs::File::create(&log_path).expect("log");
    let mut cmd = ns.command("unshare");
    cmd.args(["--uts", "--pid", "--fork", "--kill-child", "--", "sh", "-c"])
        .arg(r#"hostname bb-test-host && exec chroot "$0" "$@""#)
        .arg(&rootfs)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup"))
        .stderr(log);
    let mut server = Process::spawn(format!("{image} server"), cmd).expect("start the server");

    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, BB_PORT));
    let mut page = None;
    wait_until(Duration::from_secs(10), "the server answers", || {
        assert!(
            server.is_running(),
            "server exited: {}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        page = ns
            .run(|| http::get(addr, "/", Duration::from_secs(2)))
            .ok()
            .filter(|r| r.status == 200);
        page.is_some()
    });
    let page = page.expect("fetched");
    assert_eq!(page.header("content-type"), Some("text/plain"));
    let parsed = BbPage::parse(&page.body).unwrap_or_else(|| panic!("not a bb page: {page:?}"));
    assert_eq!(parsed.image, image);
    assert_eq!(parsed.hostname, "bb-test-host");
    assert_eq!(parsed.client, IpAddr::from(Ipv4Addr::LOCALHOST));

    // The request is in the server's log with the client's address.
    wait_until(Duration::from_secs(5), "the request is logged", || {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        images::bb_log_clients(&log)
            .iter()
            .any(|c| c.ip() == parsed.client && c.port() == parsed.client_port)
    });

    // SIGTERM to tini (PID 1 inside) stops everything promptly.
    let tini = cleanup::descendants(&[server.pid()])
        .into_iter()
        .find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "tini")
        })
        .expect("tini runs under unshare");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(tini as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("kill -TERM tini");
    let status = server.wait_timeout(Duration::from_secs(5));
    assert!(status.is_some(), "the server ignored SIGTERM");
}

#[test]
fn bb_1_serves_its_page_from_a_chroot() {
    serve_and_fetch("bb:1");
}

#[test]
fn bb_2_serves_its_page_from_a_chroot() {
    serve_and_fetch("bb:2");
}

#[test]
fn bb_images_share_their_base_layer() {
    let built = images::ensure_built();
    let layers = |image: &str| -> Vec<String> {
        built.manifest(image).expect("manifest")["layers"]
            .as_array()
            .expect("layers")
            .iter()
            .map(|l| l["digest"].as_str().expect("digest").to_owned())
            .collect()
    };
    let (l1, l2) = (layers("bb:1"), layers("bb:2"));
    assert_eq!(l1.len(), 2);
    assert_eq!(l1[0], l2[0], "same base layer");
    assert_ne!(l1[1], l2[1], "different version layer");
}

#[test]
fn multilayer_unpacks_to_the_documented_tree() {
    let built = images::ensure_built();
    let tmp = tempfile::Builder::new()
        .prefix(&format!("{}-ml-", swarm_harness::unique_prefix()))
        .tempdir()
        .expect("tempdir");
    let rootfs = built
        .unpack(MULTILAYER_IMAGE, &tmp.path().join("bundle"))
        .expect("unpack");
    images::check_multilayer_rootfs(&rootfs).unwrap_or_else(|e| panic!("{e}"));
    for p in MULTILAYER_ABSENT {
        assert!(!rootfs.join(p.trim_start_matches('/')).exists(), "{p}");
    }
    // The checker does catch a difference.
    std::fs::write(rootfs.join("ml/keep.txt"), "changed\n").expect("write");
    std::fs::write(rootfs.join("ml/.wh.extra"), "").expect("write");
    let err = images::check_multilayer_rootfs(&rootfs).expect_err("must differ");
    assert!(
        err.contains("/ml/keep.txt") && err.contains("/ml/.wh.extra"),
        "{err}"
    );
}

#[test]
fn multilayer_layers_really_contain_whiteouts() {
    let built = images::ensure_built();
    let manifest = built.manifest(MULTILAYER_IMAGE).expect("manifest");
    let layers = manifest["layers"].as_array().expect("layers");
    assert_eq!(layers.len(), MULTILAYER_LAYERS);
    let listings: Vec<String> = layers
        .iter()
        .map(|l| {
            let blob = built
                .blob_path(l["digest"].as_str().expect("digest"))
                .expect("blob path");
            let out = Command::new("tar")
                .arg("-tzf")
                .arg(&blob)
                .output()
                .expect("tar");
            assert!(out.status.success());
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
        .collect();
    let has = |i: usize, entry: &str| listings[i].lines().any(|l| l == entry);
    assert!(has(1, "ml/.wh.deleted.txt"), "{}", listings[1]);
    assert!(has(1, "ml/.wh.gone-dir"), "{}", listings[1]);
    assert!(has(2, "ml/opaque-dir/.wh..wh..opq"), "{}", listings[2]);
    assert!(has(2, "ml/.wh.removed-in-3.txt"), "{}", listings[2]);
    // The config runs something that lists the merged tree.
    let config: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            built
                .blob_path(
                    manifest["config"]["digest"]
                        .as_str()
                        .expect("config digest"),
                )
                .expect("config path"),
        )
        .expect("config blob"),
    )
    .expect("JSON");
    assert_eq!(config["config"]["Entrypoint"][0], "/sbin/tini");
}

#[test]
fn concurrent_builds_share_one_cache_entry() {
    let a = std::thread::spawn(images::build_or_reuse);
    let b = std::thread::spawn(images::build_or_reuse);
    let a = a.join().expect("thread").expect("build");
    let b = b.join().expect("thread").expect("build");
    assert_eq!(a.dir(), b.dir());
    assert!(a.dir().join("done").exists());
    assert!(
        a.registry_storage()
            .join("docker/registry/v2/repositories/bb")
            .is_dir()
    );
}
