use oci_spec::runtime::{LinuxNamespaceType, PosixRlimitType};

use super::*;
use crate::executor::{ContainerConfig, ImageConfig, NetworkMode};

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
    web:x:1000:1000:Web:/home/web:/bin/sh\n\
    # a comment\n\
    broken line\n\
    nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
const GROUP: &str =
    "root:x:0:\nweb:x:1000:\nstaff:x:50:web,other\naudio:x:29:web\nnogroup:x:65534:\n";

fn users() -> UserDb {
    UserDb::parse(PASSWD, GROUP)
}

fn image() -> ImageConfig {
    ImageConfig {
        env: vec!["PATH=/usr/bin:/bin".into(), "A=image".into()],
        entrypoint: vec!["/sbin/tini".into(), "--".into()],
        cmd: vec!["/bin/httpd".into(), "-f".into()],
        working_dir: "/www".into(),
        ..Default::default()
    }
}

fn config() -> ContainerConfig {
    ContainerConfig {
        id: "0123456789abcdef".into(),
        rootfs: "/var/lib/swarm/rootfs/x".into(),
        image: image(),
        spec: pb::ContainerSpec::default(),
        resources: None,
        network: NetworkMode::Isolated,
        addresses: Vec::new(),
        nameserver: None,
    }
}

fn build_with(config: &ContainerConfig) -> Result<oci_spec::runtime::Spec, SpecError> {
    let volumes = BTreeMap::from([("/data".to_string(), PathBuf::from("/vol/data"))]);
    let etc = EtcFiles {
        hostname: "/c/hostname".into(),
        hosts: "/c/hosts".into(),
        resolv_conf: "/c/resolv.conf".into(),
    };
    build(&SpecInput {
        config,
        users: &users(),
        cgroups_path: "/swarm/0123456789abcdef",
        etc_files: Some(&etc),
        volumes: &volumes,
        init_binary: Some(Path::new("/usr/bin/tini-static")),
    })
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn command_follows_docker_rules() {
    let img = image();
    let mut spec = pb::ContainerSpec::default();
    assert_eq!(
        command(&img, &spec).unwrap(),
        ["/sbin/tini", "--", "/bin/httpd", "-f"]
    );
    spec.args = strings(&["sleep", "5"]);
    assert_eq!(
        command(&img, &spec).unwrap(),
        ["/sbin/tini", "--", "sleep", "5"]
    );
    spec.command = strings(&["/bin/sh", "-c"]);
    spec.args = strings(&["exit 3"]);
    assert_eq!(command(&img, &spec).unwrap(), ["/bin/sh", "-c", "exit 3"]);
    // A task command drops the image's cmd.
    spec.args.clear();
    assert_eq!(command(&img, &spec).unwrap(), ["/bin/sh", "-c"]);
    assert_eq!(
        command(&ImageConfig::default(), &pb::ContainerSpec::default()),
        Err(SpecError::NoCommand)
    );
}

#[test]
fn environment_merges_in_order() {
    let env = environment(
        &strings(&["PATH=/bin", "A=image", "B=image"]),
        &strings(&["A=task", "C=task", "B", "D=x=y"]),
        "web-1",
        "/root",
    )
    .unwrap();
    assert_eq!(
        env,
        [
            "HOSTNAME=web-1",
            "PATH=/bin",
            "A=task",
            "C=task",
            "D=x=y",
            "HOME=/root"
        ]
    );
    let env = environment(&[], &[], "h", "/home/web").unwrap();
    assert_eq!(
        env,
        [
            "HOSTNAME=h".to_string(),
            format!("PATH={DEFAULT_PATH}"),
            "HOME=/home/web".to_string()
        ]
    );
    // The task may override HOSTNAME and HOME.
    let env = environment(&[], &strings(&["HOSTNAME=x", "HOME=/h"]), "h", "/root").unwrap();
    assert!(env.contains(&"HOSTNAME=x".to_string()) && env.contains(&"HOME=/h".to_string()));
    assert!(environment(&[], &strings(&["=v"]), "h", "/").is_err());
}

#[test]
fn users_resolve_like_docker() {
    let db = users();
    let root = db.resolve("", &[]).unwrap();
    assert_eq!((root.uid, root.gid, root.home.as_str()), (0, 0, "/root"));
    let web = db.resolve("web", &[]).unwrap();
    assert_eq!(
        web,
        ResolvedUser {
            uid: 1000,
            gid: 1000,
            additional_gids: vec![29, 50],
            home: "/home/web".into()
        }
    );
    let explicit = db.resolve("web:staff", &[]).unwrap();
    assert_eq!(
        (explicit.gid, explicit.additional_gids.clone()),
        (50, vec![])
    );
    let numeric = db.resolve("4242:99", &[]).unwrap();
    assert_eq!(
        (numeric.uid, numeric.gid, numeric.home.as_str()),
        (4242, 99, "/")
    );
    let known_numeric = db.resolve("65534", &[]).unwrap();
    assert_eq!((known_numeric.uid, known_numeric.gid), (65534, 65534));
    let added = db.resolve("nobody", &strings(&["audio", "7"])).unwrap();
    assert_eq!(added.additional_gids, vec![7, 29]);
    assert!(matches!(
        db.resolve("ghost", &[]),
        Err(SpecError::User { .. })
    ));
    assert!(matches!(
        db.resolve("web:ghosts", &[]),
        Err(SpecError::User { .. })
    ));
    assert!(matches!(
        db.resolve("web", &strings(&["ghosts"])),
        Err(SpecError::User { .. })
    ));
}

#[test]
fn capabilities_add_and_drop() {
    let default = capabilities(&[], &[]).unwrap();
    assert_eq!(default.len(), DEFAULT_CAPABILITIES.len());
    assert!(default.contains(&Capability::NetBindService));
    assert!(!default.contains(&Capability::NetAdmin));

    let c = capabilities(
        &strings(&["net_admin", "CAP_SYS_TIME"]),
        &strings(&["CAP_CHOWN", "mknod"]),
    )
    .unwrap();
    assert!(c.contains(&Capability::NetAdmin) && c.contains(&Capability::SysTime));
    assert!(!c.contains(&Capability::Chown) && !c.contains(&Capability::Mknod));

    let all = capabilities(&strings(&["ALL"]), &strings(&["SYS_ADMIN"])).unwrap();
    assert!(all.contains(&Capability::SysModule));
    assert!(!all.contains(&Capability::SysAdmin));

    let none = capabilities(&strings(&["NET_BIND_SERVICE"]), &strings(&["all"])).unwrap();
    assert_eq!(none, HashSet::from([Capability::NetBindService]));

    assert_eq!(
        capabilities(&strings(&["FLY"]), &[]),
        Err(SpecError::Capability("FLY".into()))
    );
}

#[test]
fn ulimits_map_to_rlimits() {
    let u = |name: &str, soft, hard| pb::Ulimit {
        name: name.into(),
        soft,
        hard,
    };
    let r = rlimits(&[u("nofile", 1024, 4096), u("core", -1, -1)]).unwrap();
    assert_eq!(r[0].typ(), PosixRlimitType::RlimitNofile);
    assert_eq!((r[0].soft(), r[0].hard()), (1024, 4096));
    assert_eq!((r[1].soft(), r[1].hard()), (u64::MAX, u64::MAX));
    assert!(rlimits(&[u("nofile", 10, 5)]).is_err());
    assert!(rlimits(&[u("bogus", 1, 1)]).is_err());
    assert!(rlimits(&[u("nproc", 1, 1), u("nproc", 2, 2)]).is_err());
    assert!(rlimits(&[u("nproc", -2, 1)]).is_err());
}

#[test]
fn only_namespaced_sysctls() {
    let s = |k: &str| BTreeMap::from([(k.to_string(), "1".to_string())]);
    for ok in [
        "net.ipv4.ip_forward",
        "kernel.shmmax",
        "fs.mqueue.msg_max",
        "kernel.sem",
    ] {
        assert!(sysctls(&s(ok), &NetworkMode::Isolated).is_ok(), "{ok}");
    }
    assert!(sysctls(&s("net.ipv4.ip_forward"), &NetworkMode::Host).is_err());
    for bad in ["kernel.hostname", "vm.swappiness", "kernel.pid_max"] {
        assert!(sysctls(&s(bad), &NetworkMode::Isolated).is_err(), "{bad}");
    }
}

#[test]
fn resources_become_cgroup_limits() {
    let req = pb::ResourceRequirements {
        limits: Some(pb::Limits {
            nano_cpus: 500_000_000,
            memory_bytes: 64 << 20,
            pids: 50,
        }),
        reservations: Some(pb::Resources {
            nano_cpus: 100_000_000,
            memory_bytes: 32 << 20,
        }),
    };
    let r = resources(Some(&req)).unwrap();
    let mem = r.memory().unwrap();
    assert_eq!(mem.limit(), Some(64 << 20));
    assert_eq!(mem.reservation(), Some(32 << 20));
    let cpu = r.cpu().as_ref().unwrap();
    assert_eq!(
        (cpu.quota(), cpu.period()),
        (Some(50_000), Some(CPU_PERIOD_US))
    );
    assert_eq!(r.pids().unwrap().limit(), 50);
    let devices = r.devices().as_ref().unwrap();
    assert!(!devices[0].allow(), "deny all first");
    assert!(
        devices
            .iter()
            .any(|d| d.allow() && d.major() == Some(1) && d.minor() == Some(3))
    );

    let none = resources(None).unwrap();
    assert!(none.memory().is_none() && none.cpu().is_none() && none.pids().is_none());

    let tiny = pb::ResourceRequirements {
        limits: Some(pb::Limits {
            memory_bytes: 1 << 20,
            ..Default::default()
        }),
        reservations: None,
    };
    assert!(matches!(
        resources(Some(&tiny)),
        Err(SpecError::Resources(_))
    ));
    let upside_down = pb::ResourceRequirements {
        limits: Some(pb::Limits {
            memory_bytes: 16 << 20,
            ..Default::default()
        }),
        reservations: Some(pb::Resources {
            memory_bytes: 32 << 20,
            nano_cpus: 0,
        }),
    };
    assert!(resources(Some(&upside_down)).is_err());
    let tiny_cpu = pb::ResourceRequirements {
        limits: Some(pb::Limits {
            nano_cpus: 1,
            ..Default::default()
        }),
        reservations: None,
    };
    assert_eq!(
        resources(Some(&tiny_cpu))
            .unwrap()
            .cpu()
            .as_ref()
            .unwrap()
            .quota(),
        Some(1000)
    );
}

fn m(t: pb::MountType, source: &str, target: &str) -> pb::Mount {
    pb::Mount {
        r#type: t as i32,
        source: source.into(),
        target: target.into(),
        ..Default::default()
    }
}

fn find<'a>(spec: &'a oci_spec::runtime::Spec, dest: &str) -> &'a oci_spec::runtime::Mount {
    spec.mounts()
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.destination() == Path::new(dest))
        .unwrap_or_else(|| panic!("no mount at {dest}"))
}

#[test]
fn task_mounts_are_translated_and_ordered() {
    let mut c = config();
    let mut bind = m(pb::MountType::Bind, "/srv/site", "/www/site");
    bind.read_only = true;
    bind.bind_propagation = "rslave".into();
    let mut tmp = m(pb::MountType::Tmpfs, "", "/run/cache/");
    tmp.tmpfs_size_bytes = 1 << 20;
    tmp.tmpfs_mode = 0o700;
    c.spec.mounts = vec![
        bind,
        m(pb::MountType::Volume, "data", "/data"),
        tmp,
        m(pb::MountType::Bind, "/srv", "/www"),
    ];
    let spec = build_with(&c).unwrap();

    let b = find(&spec, "/www/site");
    assert_eq!(b.typ().as_deref(), Some("bind"));
    assert_eq!(b.source().as_deref(), Some(Path::new("/srv/site")));
    assert_eq!(
        b.options().clone().unwrap(),
        strings(&["rbind", "rslave", "ro"])
    );
    let v = find(&spec, "/data");
    assert_eq!(v.source().as_deref(), Some(Path::new("/vol/data")));
    let t = find(&spec, "/run/cache");
    assert_eq!(t.typ().as_deref(), Some("tmpfs"));
    assert_eq!(
        t.options().clone().unwrap(),
        strings(&["nosuid", "nodev", "noexec", "size=1048576", "mode=700"])
    );
    // /www is mounted before /www/site.
    let order: Vec<String> = spec
        .mounts()
        .as_ref()
        .unwrap()
        .iter()
        .map(|m| m.destination().display().to_string())
        .collect();
    let pos = |d: &str| order.iter().position(|o| o == d).unwrap();
    assert!(pos("/www") < pos("/www/site"));
    assert!(pos("/proc") < pos("/www"));
    // The /etc files are there.
    assert_eq!(
        find(&spec, "/etc/hosts").source().as_deref(),
        Some(Path::new("/c/hosts"))
    );
}

#[test]
fn bad_mounts_are_refused() {
    let cases = [
        m(pb::MountType::Bind, "relative", "/x"),
        m(pb::MountType::Bind, "/x", "relative"),
        m(pb::MountType::Bind, "/x", "/"),
        m(pb::MountType::Bind, "/x", "/a/../b"),
        m(pb::MountType::Bind, "/x", "/proc"),
        m(pb::MountType::Volume, "unprepared", "/elsewhere"),
        pb::Mount {
            bind_propagation: "sideways".into(),
            ..m(pb::MountType::Bind, "/x", "/y")
        },
        pb::Mount {
            tmpfs_mode: 0o17777,
            ..m(pb::MountType::Tmpfs, "", "/t")
        },
        pb::Mount {
            r#type: 42,
            ..m(pb::MountType::Bind, "/x", "/y")
        },
    ];
    for bad in cases {
        let mut c = config();
        c.spec.mounts = vec![bad.clone()];
        assert!(
            matches!(build_with(&c), Err(SpecError::Mount { .. })),
            "{bad:?}"
        );
    }
    let mut c = config();
    c.spec.mounts = vec![
        m(pb::MountType::Bind, "/a", "/x"),
        m(pb::MountType::Tmpfs, "", "/x/"),
    ];
    assert!(matches!(build_with(&c), Err(SpecError::Mount { .. })));
}

#[test]
fn whole_spec() {
    let mut c = config();
    c.spec.env = strings(&["A=task"]);
    c.spec.user = "web".into();
    c.spec.read_only = true;
    c.spec.labels = BTreeMap::from([("app".into(), "web".into())]);
    let spec = build_with(&c).unwrap();
    assert_eq!(spec.hostname().as_deref(), Some("0123456789ab"));
    let root = spec.root().as_ref().unwrap();
    assert_eq!(root.path(), Path::new("/var/lib/swarm/rootfs/x"));
    assert_eq!(root.readonly(), Some(true));
    let p = spec.process().as_ref().unwrap();
    assert_eq!(
        p.args().clone().unwrap(),
        ["/sbin/tini", "--", "/bin/httpd", "-f"]
    );
    assert_eq!(p.cwd(), Path::new("/www"));
    assert_eq!((p.user().uid(), p.user().gid()), (1000, 1000));
    let env = p.env().clone().unwrap();
    assert!(env.contains(&"A=task".to_string()));
    assert!(env.contains(&"HOME=/home/web".to_string()));
    assert!(env.contains(&"HOSTNAME=0123456789ab".to_string()));
    assert_eq!(p.terminal(), Some(false));
    let linux = spec.linux().as_ref().unwrap();
    assert_eq!(
        linux.cgroups_path().as_deref(),
        Some(Path::new("/swarm/0123456789abcdef"))
    );
    let ns: Vec<LinuxNamespaceType> = linux
        .namespaces()
        .as_ref()
        .unwrap()
        .iter()
        .map(|n| n.typ())
        .collect();
    assert!(ns.contains(&LinuxNamespaceType::Network) && ns.contains(&LinuxNamespaceType::Pid));
    assert!(!ns.contains(&LinuxNamespaceType::User));
    // Read-only rootfs: the /etc files are read-only too.
    assert!(
        find(&spec, "/etc/hostname")
            .options()
            .as_ref()
            .unwrap()
            .contains(&"ro".to_string())
    );
    assert_eq!(spec.annotations().as_ref().unwrap()["app"], "web");

    // The spec round-trips through JSON, as libcontainer reads it.
    let json = serde_json::to_string(&spec).unwrap();
    let back: oci_spec::runtime::Spec = serde_json::from_str(&json).unwrap();
    assert_eq!(back, spec);
}

#[test]
fn network_modes() {
    let ns_of = |network: NetworkMode| {
        let mut c = config();
        c.network = network;
        let spec = build_with(&c).unwrap();
        spec.linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .find(|n| n.typ() == LinuxNamespaceType::Network)
            .map(|n| n.path().clone())
    };
    assert_eq!(ns_of(NetworkMode::Host), None);
    assert_eq!(ns_of(NetworkMode::Isolated), Some(None));
    assert_eq!(
        ns_of(NetworkMode::Namespace("/run/netns/t1".into())),
        Some(Some(PathBuf::from("/run/netns/t1")))
    );
}

#[test]
fn init_tty_and_workdir() {
    let mut c = config();
    c.spec.init = true;
    let spec = build_with(&c).unwrap();
    let args = spec.process().as_ref().unwrap().args().clone().unwrap();
    assert_eq!(&args[..3], [INIT_PATH, "--", "/sbin/tini"]);
    assert_eq!(
        find(&spec, INIT_PATH).source().as_deref(),
        Some(Path::new("/usr/bin/tini-static"))
    );
    let volumes = BTreeMap::new();
    let no_init = build(&SpecInput {
        config: &c,
        users: &users(),
        cgroups_path: "/x",
        etc_files: None,
        volumes: &volumes,
        init_binary: None,
    });
    assert_eq!(no_init, Err(SpecError::NoInit));

    let mut c = config();
    c.spec.tty = true;
    assert_eq!(build_with(&c), Err(SpecError::Tty));

    let mut c = config();
    c.spec.dir = "relative".into();
    assert!(matches!(build_with(&c), Err(SpecError::RelativeWorkdir(_))));

    let mut c = config();
    c.spec.hostname = "web-1".into();
    assert_eq!(build_with(&c).unwrap().hostname().as_deref(), Some("web-1"));
}

#[test]
fn hosts_and_resolv_conf() {
    let hosts = hosts_file(
        "web-1",
        &["10.0.0.5".parse().unwrap()],
        &strings(&["10.1.1.1 db db.local", "cache:10.1.1.2", "garbage"]),
    );
    assert!(hosts.starts_with("127.0.0.1\tlocalhost\n"));
    assert!(hosts.contains("10.0.0.5\tweb-1\n"));
    assert!(hosts.contains("10.1.1.1\tdb db.local\n"));
    assert!(hosts.contains("10.1.1.2\tcache\n"));
    assert!(!hosts.contains("garbage"));

    let host = "# generated\nnameserver 127.0.0.53\nnameserver 192.0.2.53\nsearch corp.example\noptions edns0\n";
    assert_eq!(
        resolv_conf(None, host),
        "nameserver 192.0.2.53\nsearch corp.example\noptions edns0\n"
    );
    let dns = pb::DnsConfig {
        nameservers: strings(&["198.51.100.53"]),
        search: strings(&["svc.local"]),
        options: vec![],
    };
    assert_eq!(
        resolv_conf(Some(&dns), host),
        "nameserver 198.51.100.53\nsearch svc.local\n"
    );
}

#[test]
fn containers_on_networks_resolve_through_the_embedded_server_only() {
    let host = "nameserver 127.0.0.53\nnameserver 192.0.2.53\nsearch corp.example\noptions edns0 ndots:2\n";
    let ns: std::net::IpAddr = "127.0.0.11".parse().expect("ip");
    assert_eq!(
        super::embedded_resolv_conf(ns, None, host),
        "nameserver 127.0.0.11\nsearch corp.example\noptions ndots:0 edns0\n"
    );
}
