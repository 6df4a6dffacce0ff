//! Small real OCI test images, built offline from Debian's `busybox-static`
//! and `tini` with umoci, cached on disk, and served by a local registry.
//!
//! Owns: the image recipes (this file: any edit changes the cache key and
//! rebuilds), the cache under [`crate::paths::test_images_dir`], and
//! [`Registry`] processes.
//!
//! Images (registry name:tag):
//! - `bb:1`, `bb:2`: tini + busybox httpd on port 80. `GET /` answers a
//!   plain-text page ([`BbPage`]) naming the image, the container's hostname
//!   and the client's address; each request is logged to stderr as
//!   `bb-httpd: request from <ip>:<port> ...` ([`bb_log_clients`]). The two
//!   share their base layer and differ in one small layer.
//! - `multilayer:1`: three layers exercising a plain whiteout, a directory
//!   whiteout, an opaque directory and overwrites; the merged result is
//!   [`MULTILAYER_EXPECTED`].
//!
//! Never hard-codes digests (they change with every build) and never fetches
//! anything from the network. Builds are serialised across processes with a
//! lock file; a built cache entry is never modified, only replaced whole.

use std::fmt;
use std::fs::{self, File};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};

use crate::cmd::{self, CmdOutput};
use crate::netns::Netns;
use crate::process::Process;

/// All test images, as `name:tag` in the registry.
pub const ALL_IMAGES: &[&str] = &["bb:1", "bb:2", MULTILAYER_IMAGE];
/// The multi-layer image.
pub const MULTILAYER_IMAGE: &str = "multilayer:1";
/// How many layers `multilayer:1` has.
pub const MULTILAYER_LAYERS: usize = 3;
/// The port the `bb` images listen on (TCP, all IPv4 addresses).
pub const BB_PORT: u16 = 80;
/// What starts each request log line of the `bb` images.
pub const BB_LOG_MARKER: &str = "bb-httpd: request from ";

/// Where the static binaries come from (Debian `busybox-static`, `tini`).
const HOST_BUSYBOX: &str = "/bin/busybox";
const HOST_TINI: &str = "/usr/bin/tini-static";

/// Busybox applets linked into the `bb` images: what the server and its CGI
/// script need, plus a few that tests commonly run in a container
/// (`sleep` as a long-running command, `wget`/`nc` to probe the network).
const BB_APPLETS: &[&str] = &[
    "sh", "httpd", "hostname", "cat", "env", "ls", "ps", "sleep", "wget", "nc", "true", "false",
    "nslookup", "ping",
];
/// Applets in `multilayer:1` (its command lists `/ml`, then sleeps).
const ML_APPLETS: &[&str] = &["sh", "cat", "ls", "find", "sort", "sleep"];

/// The CGI script busybox httpd runs for `GET /` (a directory request with
/// no index.html falls back to /cgi-bin/index.cgi). Its stderr goes to the
/// server's stderr, i.e. the container log.
const BB_INDEX_CGI: &str = r#"#!/bin/sh
echo "bb-httpd: request from ${REMOTE_ADDR}:${REMOTE_PORT} ${REQUEST_METHOD} ${REQUEST_URI}" >&2
printf 'Content-Type: text/plain\r\n\r\n'
echo "image=$(cat /etc/bb-version)"
echo "hostname=$(hostname)"
echo "client=${REMOTE_ADDR}"
echo "client_port=${REMOTE_PORT}"
"#;

const ETC_PASSWD: &str =
    "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
const ETC_GROUP: &str = "root:x:0:\nnogroup:x:65534:\n";

/// What a path in a merged rootfs must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    Dir,
    File(&'static str),
}

/// The complete merged contents of `/ml` in `multilayer:1`: every path
/// below it (and no other) must exist, with these types and contents.
///
/// How it comes about:
/// - layer 1 (umoci repack): `keep.txt`, `deleted.txt`, `overwritten.txt`,
///   `opaque-dir/{old-a.txt,sub/old-b.txt}`, `gone-dir/x.txt`, plus busybox.
/// - layer 2 (umoci repack, which writes `.wh.` whiteouts for removals):
///   deletes `deleted.txt` and the whole `gone-dir`, overwrites
///   `overwritten.txt`, adds `added-in-2.txt` and `removed-in-3.txt`.
/// - layer 3 (a hand-made tar): `opaque-dir/.wh..wh..opq` (opaque: hides
///   everything below `opaque-dir` from lower layers) plus a new
///   `opaque-dir/new.txt`, an explicit `.wh.removed-in-3.txt`,
///   `overwritten.txt` again, and `layer3.txt`.
pub const MULTILAYER_EXPECTED: &[(&str, Expect)] = &[
    ("/ml", Expect::Dir),
    ("/ml/added-in-2.txt", Expect::File("layer2\n")),
    ("/ml/keep.txt", Expect::File("layer1\n")),
    ("/ml/layer3.txt", Expect::File("layer3\n")),
    ("/ml/opaque-dir", Expect::Dir),
    ("/ml/opaque-dir/new.txt", Expect::File("layer3\n")),
    ("/ml/overwritten.txt", Expect::File("layer3\n")),
];

/// Paths that exist in some layer of `multilayer:1` but must not in the
/// merged rootfs (implied by [`MULTILAYER_EXPECTED`] being complete; listed
/// for readable assertions).
pub const MULTILAYER_ABSENT: &[&str] = &[
    "/ml/deleted.txt",
    "/ml/gone-dir",
    "/ml/opaque-dir/old-a.txt",
    "/ml/opaque-dir/sub",
    "/ml/removed-in-3.txt",
];

/// Checks that the `/ml` tree under `rootfs` is exactly
/// [`MULTILAYER_EXPECTED`]. The error lists every difference.
pub fn check_multilayer_rootfs(rootfs: &Path) -> Result<(), String> {
    fn walk(root: &Path, rel: &str, out: &mut Vec<(String, Option<String>)>) -> io::Result<()> {
        let path = root.join(rel.trim_start_matches('/'));
        let meta = fs::symlink_metadata(&path)?;
        if meta.is_dir() {
            out.push((rel.to_owned(), None));
            let mut names: Vec<String> = fs::read_dir(&path)?
                .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect::<io::Result<_>>()?;
            names.sort();
            for n in names {
                walk(root, &format!("{rel}/{n}"), out)?;
            }
        } else {
            let content =
                fs::read_to_string(&path).unwrap_or_else(|e| format!("<unreadable: {e}>"));
            out.push((rel.to_owned(), Some(content)));
        }
        Ok(())
    }
    let mut found = Vec::new();
    walk(rootfs, "/ml", &mut found).map_err(|e| format!("reading {}/ml: {e}", rootfs.display()))?;
    let mut problems = Vec::new();
    for (path, want) in MULTILAYER_EXPECTED {
        match (found.iter().find(|(p, _)| p == path), want) {
            (None, _) => problems.push(format!("{path}: missing")),
            (Some((_, None)), Expect::Dir) => {}
            (Some((_, Some(got))), Expect::File(want)) if got == want => {}
            (Some((_, got)), _) => problems.push(format!("{path}: want {want:?}, found {got:?}")),
        }
    }
    for (path, _) in &found {
        if !MULTILAYER_EXPECTED.iter().any(|(p, _)| p == path) {
            problems.push(format!("{path}: present but should not be"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "merged rootfs {} differs from multilayer:1's expected /ml:\n  {}",
            rootfs.display(),
            problems.join("\n  ")
        ))
    }
}

/// The page a `bb` image serves for `GET /`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BbPage {
    /// `bb:1` or `bb:2`.
    pub image: String,
    /// The container's hostname.
    pub hostname: String,
    /// The client address the server saw (REMOTE_ADDR).
    pub client: IpAddr,
    pub client_port: u16,
}

impl BbPage {
    /// Parses a page body; `None` if it is not one.
    pub fn parse(body: &str) -> Option<BbPage> {
        let field = |k: &str| {
            body.lines()
                .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
                .map(str::trim)
        };
        Some(BbPage {
            image: field("image")?.to_owned(),
            hostname: field("hostname")?.to_owned(),
            client: field("client")?.parse().ok()?,
            client_port: field("client_port")?.parse().ok()?,
        })
    }
}

/// The client addresses in a `bb` container's log, one per request, in order.
pub fn bb_log_clients(log: &str) -> Vec<SocketAddr> {
    log.lines()
        .filter_map(|l| {
            let rest = &l[l.find(BB_LOG_MARKER)? + BB_LOG_MARKER.len()..];
            rest.split_whitespace().next()?.parse().ok()
        })
        .collect()
}

/// `bb:1` -> `bb-1`: the tag in the OCI layout (umoci and skopeo split
/// `path:tag` at a colon, so the layout avoids a second one).
pub fn layout_tag(image: &str) -> String {
    image.replace(':', "-")
}

/// The built images: an OCI layout and a registry storage holding the same
/// images, in one cache directory.
#[derive(Debug, Clone)]
pub struct TestImages {
    dir: PathBuf,
}

impl TestImages {
    /// The cache entry directory (`<test-images>/<recipe hash>`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The OCI image layout, tags named by [`layout_tag`].
    pub fn layout(&self) -> PathBuf {
        self.dir.join("oci")
    }

    /// The docker-registry filesystem storage root holding [`ALL_IMAGES`].
    pub fn registry_storage(&self) -> PathBuf {
        self.dir.join("registry")
    }

    /// `layout:tag` as umoci's `--image` wants it.
    pub fn umoci_ref(&self, image: &str) -> String {
        format!("{}:{}", self.layout().display(), layout_tag(image))
    }

    /// Unpacks `image` into the bundle directory `dest` (which must not
    /// exist) with umoci, returning its rootfs. umoci applies whiteouts
    /// itself, so this is the reference for what a merged rootfs should be.
    pub fn unpack(&self, image: &str, dest: &Path) -> anyhow::Result<PathBuf> {
        umoci(&["unpack", "--image", &self.umoci_ref(image), path_str(dest)?])?;
        Ok(dest.join("rootfs"))
    }

    /// The parsed OCI manifest of `image` in the layout.
    pub fn manifest(&self, image: &str) -> anyhow::Result<serde_json::Value> {
        let index: serde_json::Value =
            serde_json::from_slice(&fs::read(self.layout().join("index.json"))?)?;
        let tag = layout_tag(image);
        let digest = index["manifests"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag.as_str())
            .and_then(|m| m["digest"].as_str())
            .with_context(|| format!("{image} ({tag}) not in the layout's index.json"))?;
        Ok(serde_json::from_slice(&fs::read(self.blob_path(digest)?)?)?)
    }

    /// The file holding blob `digest` (`sha256:...`) in the layout.
    pub fn blob_path(&self, digest: &str) -> anyhow::Result<PathBuf> {
        let (alg, hex) = digest
            .split_once(':')
            .with_context(|| format!("bad digest {digest}"))?;
        Ok(self.layout().join("blobs").join(alg).join(hex))
    }
}

/// The images, built on first use in this process (or reused from the
/// cache). Panics if they cannot be built: every test using them would fail.
pub fn ensure_built() -> &'static TestImages {
    static IMAGES: OnceLock<TestImages> = OnceLock::new();
    IMAGES
        .get_or_init(|| build_or_reuse().unwrap_or_else(|e| panic!("building test images: {e:#}")))
}

/// Builds the images unless the cache already holds this recipe's build.
/// Safe to call from several processes at once: they serialise on a lock
/// file and all but the first reuse its result.
pub fn build_or_reuse() -> anyhow::Result<TestImages> {
    let root = crate::paths::test_images_dir();
    fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let key = recipe_key()?;
    let images = TestImages {
        dir: root.join(&key),
    };
    let done = images.dir.join("done");
    if done.exists() {
        return Ok(images); // fast path: built entries are never modified
    }

    let lock = File::create(root.join("lock")).context("creating the image cache lock file")?;
    lock.lock().context("locking the image cache")?;
    // Someone may have built it while we waited for the lock.
    if done.exists() {
        return Ok(images);
    }
    let tmp = root.join(format!("{key}.tmp-{}", std::process::id()));
    crate::cleanup::remove_dir_tree(&tmp);
    fs::create_dir_all(&tmp)?;
    let started = Instant::now();
    if let Err(e) = build_all(&tmp) {
        crate::cleanup::remove_dir_tree(&tmp);
        return Err(e);
    }
    fs::write(tmp.join("done"), format!("{ALL_IMAGES:?}\n"))?;
    crate::cleanup::remove_dir_tree(&images.dir);
    fs::rename(&tmp, &images.dir)?;
    eprintln!(
        "harness: built test images in {:.1}s into {}",
        started.elapsed().as_secs_f64(),
        images.dir.display()
    );

    // Older recipes' builds and abandoned temp builds (we hold the lock, so
    // no one is building right now).
    for e in fs::read_dir(&root)?.flatten() {
        let name = e.file_name();
        if name != "lock" && name.to_string_lossy() != key {
            crate::cleanup::remove_dir_tree(&e.path());
        }
    }
    Ok(images)
}

/// A hash of everything a build depends on: this file (the recipe) and the
/// host binaries copied into the images. FNV-1a, which is stable across Rust
/// versions (unlike `DefaultHasher`).
fn recipe_key() -> anyhow::Result<String> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    feed(include_str!("images.rs").as_bytes());
    for bin in [HOST_BUSYBOX, HOST_TINI] {
        let m = fs::metadata(bin).with_context(|| {
            format!("{bin} is missing: install Debian's busybox-static and tini (scripts/setup.sh)")
        })?;
        feed(format!("{bin}:{}:{}", m.len(), m.mtime()).as_bytes());
    }
    Ok(format!("{h:016x}"))
}

fn path_str(p: &Path) -> anyhow::Result<&str> {
    p.to_str()
        .with_context(|| format!("non-UTF-8 path {}", p.display()))
}

const TOOL_TIMEOUT: Duration = Duration::from_secs(180);

fn tool(program: &str, args: &[&str]) -> anyhow::Result<CmdOutput> {
    let out = cmd::run(Command::new(program).args(args), TOOL_TIMEOUT);
    if !out.ok() {
        bail!("{out}");
    }
    Ok(out)
}

fn umoci(args: &[&str]) -> anyhow::Result<()> {
    tool("umoci", args).map(drop)
}

fn write_file(path: &Path, content: &str, mode: u32) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::write(path, content).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn make_dirs(root: &Path, dirs: &[(&str, u32)]) -> anyhow::Result<()> {
    for (d, mode) in dirs {
        let p = root.join(d);
        fs::create_dir_all(&p)?;
        fs::set_permissions(&p, fs::Permissions::from_mode(*mode))?;
    }
    Ok(())
}

/// busybox with `applets` symlinked in /bin, tini as /sbin/tini, the usual
/// empty mount points, /etc/passwd and /etc/group.
fn populate_base(rootfs: &Path, applets: &[&str]) -> anyhow::Result<()> {
    make_dirs(
        rootfs,
        &[
            ("bin", 0o755),
            ("sbin", 0o755),
            ("etc", 0o755),
            ("dev", 0o755),
            ("proc", 0o755),
            ("sys", 0o755),
            ("root", 0o700),
            ("tmp", 0o1777),
        ],
    )?;
    fs::copy(HOST_BUSYBOX, rootfs.join("bin/busybox")).context("copying busybox")?;
    fs::copy(HOST_TINI, rootfs.join("sbin/tini")).context("copying tini-static")?;
    for a in applets {
        symlink("busybox", rootfs.join("bin").join(a))?;
    }
    write_file(&rootfs.join("etc/passwd"), ETC_PASSWD, 0o644)?;
    write_file(&rootfs.join("etc/group"), ETC_GROUP, 0o644)?;
    Ok(())
}

/// The config flags shared by all images: tini as the entry point, so that
/// PID 1 forwards SIGTERM and the container stops promptly.
fn common_config(image: &str) -> Vec<String> {
    vec![
        "--config.entrypoint=/sbin/tini".into(),
        "--config.entrypoint=--".into(),
        "--config.env=PATH=/usr/sbin:/usr/bin:/sbin:/bin".into(),
        "--config.workingdir=/".into(),
        format!("--config.label=org.swarm.test-image={image}"),
    ]
}

fn umoci_config(image_ref: &str, flags: Vec<String>) -> anyhow::Result<()> {
    let mut args: Vec<&str> = vec!["config", "--image", image_ref];
    args.extend(flags.iter().map(String::as_str));
    umoci(&args)
}

fn build_all(out: &Path) -> anyhow::Result<()> {
    let layout = out.join("oci");
    let work = out.join("work");
    fs::create_dir_all(&work)?;
    umoci(&["init", "--layout", path_str(&layout)?])?;
    let images = TestImages {
        dir: out.to_path_buf(),
    };
    build_bb(&images, &work).context("building bb:1/bb:2")?;
    build_multilayer(&images, &work).context("building multilayer:1")?;
    push_all(&images, &work).context("pushing the images into the registry storage")?;
    crate::cleanup::remove_dir_tree(&work);
    Ok(())
}

fn build_bb(images: &TestImages, work: &Path) -> anyhow::Result<()> {
    // A shared base layer, then one tiny layer per version: pulling both
    // exercises layer reuse.
    let base = images.umoci_ref("bb:base");
    let bundle = work.join("bb-base");
    umoci(&["new", "--image", &base])?;
    umoci(&["unpack", "--image", &base, path_str(&bundle)?])?;
    let rootfs = bundle.join("rootfs");
    populate_base(&rootfs, BB_APPLETS)?;
    write_file(&rootfs.join("www/cgi-bin/index.cgi"), BB_INDEX_CGI, 0o755)?;
    umoci(&["repack", "--image", &base, path_str(&bundle)?])?;

    for image in ["bb:1", "bb:2"] {
        let bundle = work.join(layout_tag(image));
        let tagged = images.umoci_ref(image);
        umoci(&["unpack", "--image", &base, path_str(&bundle)?])?;
        write_file(
            &bundle.join("rootfs/etc/bb-version"),
            &format!("{image}\n"),
            0o644,
        )?;
        umoci(&["repack", "--image", &tagged, path_str(&bundle)?])?;
        let mut flags = common_config(image);
        flags.extend(
            // -f: foreground; -vv: log every request (with the client's
            // address) to stderr; explicit 0.0.0.0 so REMOTE_ADDR is a plain
            // IPv4 address, never an IPv4-mapped IPv6 one.
            ["/bin/httpd", "-f", "-vv", "-p", "0.0.0.0:80", "-h", "/www"]
                .map(|a| format!("--config.cmd={a}")),
        );
        flags.push(format!("--config.exposedports={BB_PORT}/tcp"));
        umoci_config(&tagged, flags)?;
    }
    umoci(&["rm", "--image", &base])?;
    Ok(())
}

fn build_multilayer(images: &TestImages, work: &Path) -> anyhow::Result<()> {
    let image = images.umoci_ref(MULTILAYER_IMAGE);
    let bundle = work.join("multilayer");
    let rootfs = bundle.join("rootfs");
    umoci(&["new", "--image", &image])?;
    umoci(&["unpack", "--image", &image, path_str(&bundle)?])?;

    // Layer 1.
    populate_base(&rootfs, ML_APPLETS)?;
    let ml = rootfs.join("ml");
    write_file(&ml.join("keep.txt"), "layer1\n", 0o644)?;
    write_file(&ml.join("deleted.txt"), "layer1\n", 0o644)?;
    write_file(&ml.join("overwritten.txt"), "layer1\n", 0o644)?;
    write_file(&ml.join("opaque-dir/old-a.txt"), "layer1\n", 0o644)?;
    write_file(&ml.join("opaque-dir/sub/old-b.txt"), "layer1\n", 0o644)?;
    write_file(&ml.join("gone-dir/x.txt"), "layer1\n", 0o644)?;
    // --refresh-bundle: the next repack then diffs against this layer
    // instead of the empty image, so layer 2 holds only the changes.
    umoci(&[
        "repack",
        "--refresh-bundle",
        "--image",
        &image,
        path_str(&bundle)?,
    ])?;

    // Layer 2: umoci turns the removals into whiteout entries.
    fs::remove_file(ml.join("deleted.txt"))?;
    fs::remove_dir_all(ml.join("gone-dir"))?;
    write_file(&ml.join("overwritten.txt"), "layer2\n", 0o644)?;
    write_file(&ml.join("added-in-2.txt"), "layer2\n", 0o644)?;
    write_file(&ml.join("removed-in-3.txt"), "layer2\n", 0o644)?;
    umoci(&[
        "repack",
        "--refresh-bundle",
        "--image",
        &image,
        path_str(&bundle)?,
    ])?;

    // Layer 3: written by hand, because umoci never emits an opaque
    // whiteout (it lists each removed child instead).
    let l3 = work.join("multilayer-l3");
    make_dirs(&l3, &[("ml", 0o755), ("ml/opaque-dir", 0o755)])?;
    write_file(&l3.join("ml/opaque-dir/.wh..wh..opq"), "", 0o644)?;
    write_file(&l3.join("ml/opaque-dir/new.txt"), "layer3\n", 0o644)?;
    write_file(&l3.join("ml/.wh.removed-in-3.txt"), "", 0o644)?;
    write_file(&l3.join("ml/overwritten.txt"), "layer3\n", 0o644)?;
    write_file(&l3.join("ml/layer3.txt"), "layer3\n", 0o644)?;
    let tar = work.join("multilayer-l3.tar");
    tool(
        "tar",
        &[
            "--create",
            "--file",
            path_str(&tar)?,
            "--directory",
            path_str(&l3)?,
            // Plain ustar with sorted, root-owned entries and no "./"
            // prefix: the most portable layer a registry client can meet.
            "--format=ustar",
            "--sort=name",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "--mtime=@0",
            "ml",
        ],
    )?;
    umoci(&["raw", "add-layer", "--image", &image, path_str(&tar)?])?;

    let mut flags = common_config(MULTILAYER_IMAGE);
    flags.extend(
        ["/bin/sh", "-c", "find /ml | sort; exec sleep 3600"].map(|a| format!("--config.cmd={a}")),
    );
    umoci_config(&image, flags)?;
    Ok(())
}

/// Pushes every image into `<dir>/registry` through a short-lived registry
/// on a free loopback port: the registry writes its own storage layout,
/// which later registries serve read-only.
fn push_all(images: &TestImages, work: &Path) -> anyhow::Result<()> {
    let mut last_err = None;
    // A free port can be taken between probing and binding: retry.
    for _ in 0..3 {
        let port = free_port()?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let registry = match Registry::start(addr, &images.registry_storage(), None, false) {
            Ok(r) => r,
            Err(e) => {
                last_err = Some(e);
                continue;
            }
        };
        for image in ALL_IMAGES {
            let src = format!("oci:{}", images.umoci_ref(image));
            let dst = format!("docker://{addr}/{image}");
            let out = cmd::run(
                Command::new("skopeo")
                    .args(["--insecure-policy", "copy", "--quiet"])
                    .args(["--dest-tls-verify=false", &src, &dst])
                    .env("TMPDIR", work),
                TOOL_TIMEOUT,
            );
            if !out.ok() {
                bail!("{out}\n--- registry log ---\n{}", registry.logs());
            }
        }
        return Ok(());
    }
    Err(last_err.unwrap_or_else(|| anyhow::anyhow!("no registry started")))
}

fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// A `docker-registry` (distribution) process serving a filesystem storage,
/// stopped on drop.
pub struct Registry {
    addr: SocketAddr,
    process: Process,
    dir: tempfile::TempDir,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("addr", &self.addr)
            .field("pid", &self.process.pid())
            .field("dir", &self.dir.path())
            .finish()
    }
}

impl Registry {
    /// Starts a registry on `addr` serving `storage` (created if missing),
    /// inside `netns` if given (else in this process's namespace), and waits
    /// until it accepts connections. `read_only` rejects pushes, which keeps
    /// a shared storage safe from tests.
    pub fn start(
        addr: SocketAddr,
        storage: &Path,
        netns: Option<&Netns>,
        read_only: bool,
    ) -> anyhow::Result<Registry> {
        fs::create_dir_all(storage)?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("{}-registry-", crate::unique_prefix()))
            .tempdir()
            .context("creating the registry's temp dir")?;
        let config = dir.path().join("config.yml");
        // Debian's default config listens everywhere with auth on; this one
        // binds exactly `addr`, without auth, TLS or upload purging (which
        // would write into a storage that other registries share).
        fs::write(
            &config,
            format!(
                "version: 0.1\n\
                 log:\n  level: warn\n  fields:\n    service: registry\n\
                 storage:\n  filesystem:\n    rootdirectory: \"{storage}\"\n  \
                 delete:\n    enabled: false\n  maintenance:\n    uploadpurging:\n      enabled: false\n    \
                 readonly:\n      enabled: {read_only}\n\
                 http:\n  addr: \"{addr}\"\n  secret: swarm-harness-test-registry\n",
                storage = storage.display(),
            ),
        )?;
        let log_path = dir.path().join("registry.log");
        let log = File::create(&log_path)?;
        let mut command = match netns {
            Some(ns) => ns.command("docker-registry"),
            None => Command::new("docker-registry"),
        };
        command
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let process = Process::spawn(format!("registry {addr}"), command)
            .context("starting docker-registry (Debian package docker-registry)")?;
        let mut registry = Registry { addr, process, dir };
        registry.wait_ready(netns)?;
        Ok(registry)
    }

    /// A read-only registry on `addr` (inside `netns` if given) serving the
    /// test images (built first if needed).
    pub fn serve_test_images(addr: SocketAddr, netns: Option<&Netns>) -> anyhow::Result<Registry> {
        let images = build_or_reuse()?;
        Registry::start(addr, &images.registry_storage(), netns, true)
    }

    fn wait_ready(&mut self, netns: Option<&Netns>) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr = self.addr;
        let probe = move || TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok();
        loop {
            let up = match netns {
                Some(ns) => ns.run(probe),
                None => probe(),
            };
            if up {
                return Ok(());
            }
            if let Some(status) = self.process.try_wait() {
                bail!("registry on {addr} exited with {status}:\n{}", self.logs());
            }
            ensure!(
                Instant::now() < deadline,
                "registry on {addr} not accepting connections after 20s:\n{}",
                self.logs()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The registry's log file (errors, and one access-log line per request).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    /// The log so far.
    pub fn logs(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_else(|e| format!("<no registry log: {e}>"))
    }

    /// Stops the registry (SIGTERM, then SIGKILL after 5 s).
    pub fn stop(mut self) {
        self.process.terminate(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bb_page_parses() {
        let page =
            BbPage::parse("image=bb:2\nhostname=web.1.abc\nclient=192.0.2.10\nclient_port=40000\n")
                .expect("a valid page");
        assert_eq!(page.image, "bb:2");
        assert_eq!(page.hostname, "web.1.abc");
        assert_eq!(page.client, IpAddr::from([192, 0, 2, 10]));
        assert_eq!(page.client_port, 40000);
        assert_eq!(BbPage::parse("<html>"), None);
    }

    #[test]
    fn bb_log_lines_parse() {
        let log = "127.0.0.1:5: url:/\nbb-httpd: request from 192.0.2.10:4321 GET /\nnoise\n";
        assert_eq!(
            bb_log_clients(log),
            vec![SocketAddr::from(([192, 0, 2, 10], 4321))]
        );
    }

    #[test]
    fn expected_set_and_absent_set_are_disjoint() {
        for a in MULTILAYER_ABSENT {
            assert!(!MULTILAYER_EXPECTED.iter().any(|(p, _)| p == a), "{a}");
        }
    }
}
