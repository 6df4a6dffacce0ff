//! Values of `service create/update` flags, parsed as docker's CLI parses
//! them: sizes ("512M", "1.5g"), CPUs ("0.5"), ports (`8080:80/udp` or
//! `published=8080,target=80`), mounts, ulimits, key=value lists.
//!
//! Pure string-to-value functions for clap's `value_parser`; errors are the
//! one-line message clap prints after the flag name.
use swarm_proto::v1 as pb;

/// Memory sizes as docker reads them (go-units `RAMInBytes`): a number with
/// an optional binary unit b, k, m, g, t, p (with or without a trailing
/// "b" or "ib", any case), e.g. "512M", "1.5g", "1024".
pub fn parse_mem_bytes(s: &str) -> Result<i64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?}: use a number with an optional unit (b, k, m, g, t), e.g. 512m or 1g"))?;
    let unit = unit.trim().to_ascii_lowercase();
    let unit = unit
        .strip_suffix("ib")
        .or_else(|| unit.strip_suffix('b').filter(|u| !u.is_empty()))
        .unwrap_or(&unit);
    let mult: f64 = match unit {
        "" | "b" => 1.0,
        "k" => 1024.0,
        "m" => 1024.0 * 1024.0,
        "g" => 1024.0 * 1024.0 * 1024.0,
        "t" => 1024f64.powi(4),
        "p" => 1024f64.powi(5),
        other => {
            return Err(format!(
                "invalid size {s:?}: unknown unit {other:?} (use b, k, m, g, t or p)"
            ));
        }
    };
    let bytes = n * mult;
    if !bytes.is_finite() || bytes > i64::MAX as f64 {
        return Err(format!("invalid size {s:?}: too large"));
    }
    #[allow(clippy::cast_possible_truncation)] // checked above; sizes are whole bytes
    Ok(bytes as i64)
}

/// CPUs as a decimal ("0.5", "2", "1.25") to nano CPUs, exactly: at most
/// nine decimals, as docker's `NanoCPUs`.
pub fn parse_nano_cpus(s: &str) -> Result<i64, String> {
    let t = s.trim();
    let bad = || format!("invalid CPU value {s:?}: use a number of CPUs such as 0.5 or 2");
    let (int, frac) = t.split_once('.').unwrap_or((t, ""));
    if (int.is_empty() && frac.is_empty())
        || !int.chars().all(|c| c.is_ascii_digit())
        || !frac.chars().all(|c| c.is_ascii_digit())
    {
        return Err(bad());
    }
    if frac.len() > 9 {
        return Err(format!(
            "invalid CPU value {s:?}: value is too precise (at most 9 decimals)"
        ));
    }
    let int: i64 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| bad())?
    };
    let frac_n: i64 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<9}").parse().map_err(|_| bad())?
    };
    int.checked_mul(1_000_000_000)
        .and_then(|n| n.checked_add(frac_n))
        .ok_or_else(|| format!("invalid CPU value {s:?}: too large"))
}

/// `-p/--publish`: docker's short form `[published:]target[/protocol]`
/// (ranges `8080-8081:80-81` expand to several ports) or the long form
/// `published=8080,target=80,protocol=udp,mode=host`.
pub fn parse_publish(s: &str) -> Result<Vec<pb::PortConfig>, String> {
    if s.contains('=') {
        return parse_publish_long(s).map(|p| vec![p]);
    }
    let (ports, proto) = match s.split_once('/') {
        Some((p, proto)) => (p, parse_protocol(proto)?),
        None => (s, pb::PortProtocol::Tcp),
    };
    let parts: Vec<&str> = ports.split(':').collect();
    let (published, target) = match parts.as_slice() {
        [t] => (None, *t),
        [p, t] => (Some(*p), *t),
        _ => {
            return Err(format!(
                "invalid port {s:?}: a host IP is not supported for services; use published:target[/protocol]"
            ));
        }
    };
    let target = parse_range(target, s)?;
    let published = published
        .filter(|p| !p.is_empty())
        .map(|p| parse_range(p, s))
        .transpose()?;
    if let Some(p) = &published
        && p.len() != target.len()
    {
        return Err(format!(
            "invalid port {s:?}: the published and target ranges differ in size"
        ));
    }
    Ok(target
        .iter()
        .enumerate()
        .map(|(i, t)| pb::PortConfig {
            protocol: proto as i32,
            target_port: *t,
            published_port: published.as_ref().map_or(0, |p| p[i]),
            publish_mode: pb::PublishMode::Ingress as i32,
            ..Default::default()
        })
        .collect())
}

fn parse_range(r: &str, whole: &str) -> Result<Vec<u32>, String> {
    let port = |p: &str| {
        p.parse::<u32>()
            .ok()
            .filter(|n| (1..=65535).contains(n))
            .ok_or_else(|| format!("invalid port {whole:?}: {p:?} is not a port number (1-65535)"))
    };
    match r.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (port(a)?, port(b)?);
            if b < a {
                return Err(format!("invalid port range {r:?} in {whole:?}"));
            }
            Ok((a..=b).collect())
        }
        None => Ok(vec![port(r)?]),
    }
}

fn parse_protocol(p: &str) -> Result<pb::PortProtocol, String> {
    match p.to_ascii_lowercase().as_str() {
        "tcp" => Ok(pb::PortProtocol::Tcp),
        "udp" => Ok(pb::PortProtocol::Udp),
        "sctp" => Ok(pb::PortProtocol::Sctp),
        other => Err(format!("invalid protocol {other:?}: use tcp, udp or sctp")),
    }
}

fn parse_publish_long(s: &str) -> Result<pb::PortConfig, String> {
    let mut p = pb::PortConfig {
        publish_mode: pb::PublishMode::Ingress as i32,
        ..Default::default()
    };
    for field in csv_fields(s)? {
        let (k, v) = field
            .split_once('=')
            .ok_or_else(|| format!("invalid field {field:?} in {s:?}: must be key=value"))?;
        let num = |v: &str| {
            v.parse::<u32>()
                .ok()
                .filter(|n| (1..=65535).contains(n))
                .ok_or_else(|| format!("invalid {k} port {v:?} in {s:?}: use 1-65535"))
        };
        match k.to_ascii_lowercase().as_str() {
            "mode" => {
                p.publish_mode = match v.to_ascii_lowercase().as_str() {
                    "ingress" => pb::PublishMode::Ingress,
                    "host" => pb::PublishMode::Host,
                    _ => return Err(format!("invalid publish mode {v:?}: use ingress or host")),
                } as i32;
            }
            "target" => p.target_port = num(v)?,
            "published" => p.published_port = num(v)?,
            "protocol" => p.protocol = parse_protocol(v)? as i32,
            _ => {
                return Err(format!(
                    "invalid field key {k:?} in {s:?}: use published, target, protocol or mode"
                ));
            }
        }
    }
    if p.target_port == 0 {
        return Err(format!("missing target port in {s:?}: add target=<port>"));
    }
    Ok(p)
}

/// Splits `a=b,"c=d,e"` on commas outside double quotes, as docker's
/// CSV-based options do; quotes are removed.
fn csv_fields(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in s.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    if quoted {
        return Err(format!("unbalanced quotes in {s:?}"));
    }
    out.push(cur);
    Ok(out.into_iter().filter(|f| !f.is_empty()).collect())
}

fn parse_bool(v: &str, key: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "" | "1" | "true" | "t" | "yes" => Ok(true),
        "0" | "false" | "f" | "no" => Ok(false),
        _ => Err(format!(
            "invalid value for {key}: {v:?} (use true or false)"
        )),
    }
}

/// `--mount type=bind|volume|tmpfs,source=...,target=...[,readonly]...`;
/// the type defaults to volume, as in docker.
pub fn parse_mount(s: &str) -> Result<pb::Mount, String> {
    let mut m = pb::Mount {
        r#type: pb::MountType::Volume as i32,
        ..Default::default()
    };
    let mut volume_opts = false;
    let mut bind_opts = false;
    let mut tmpfs_opts = false;
    for field in csv_fields(s)? {
        let (k, v) = match field.split_once('=') {
            Some((k, v)) => (k.trim().to_ascii_lowercase(), v.trim().to_string()),
            None => (field.trim().to_ascii_lowercase(), String::new()),
        };
        let needs_value = || {
            if v.is_empty() {
                Err(format!(
                    "invalid field {field:?} in --mount {s:?}: must be key=value"
                ))
            } else {
                Ok(())
            }
        };
        match k.as_str() {
            "type" => {
                m.r#type = match v.to_ascii_lowercase().as_str() {
                    "bind" => pb::MountType::Bind,
                    "volume" => pb::MountType::Volume,
                    "tmpfs" => pb::MountType::Tmpfs,
                    _ => {
                        return Err(format!(
                            "invalid mount type {v:?}: use bind, volume or tmpfs"
                        ));
                    }
                } as i32;
            }
            "source" | "src" => m.source = v,
            "target" | "dst" | "destination" => m.target = v,
            "readonly" | "ro" => m.read_only = parse_bool(&v, &k)?,
            "bind-propagation" => {
                needs_value()?;
                bind_opts = true;
                m.bind_propagation = v;
            }
            "volume-nocopy" => {
                volume_opts = true;
                m.volume_nocopy = parse_bool(&v, &k)?;
            }
            "volume-driver" => {
                needs_value()?;
                volume_opts = true;
                m.volume_driver.get_or_insert_with(Default::default).name = v;
            }
            "volume-label" => {
                needs_value()?;
                volume_opts = true;
                let (lk, lv) = v.split_once('=').unwrap_or((&v, ""));
                m.volume_labels.insert(lk.to_string(), lv.to_string());
            }
            "volume-opt" => {
                needs_value()?;
                volume_opts = true;
                let (ok, ov) = v.split_once('=').unwrap_or((&v, ""));
                m.volume_driver
                    .get_or_insert_with(Default::default)
                    .options
                    .insert(ok.to_string(), ov.to_string());
            }
            "tmpfs-size" => {
                needs_value()?;
                tmpfs_opts = true;
                m.tmpfs_size_bytes = parse_mem_bytes(&v)?;
            }
            "tmpfs-mode" => {
                needs_value()?;
                tmpfs_opts = true;
                m.tmpfs_mode = u32::from_str_radix(&v, 8)
                    .map_err(|_| format!("invalid tmpfs-mode {v:?}: use octal, e.g. 1777"))?;
            }
            _ => return Err(format!("unexpected key {k:?} in --mount {s:?}")),
        }
    }
    if m.target.is_empty() {
        return Err(format!("target is required in --mount {s:?}"));
    }
    let ty = pb::MountType::try_from(m.r#type).unwrap_or_default();
    let mixed = |opts: bool, want: pb::MountType, prefix: &str| {
        if opts && ty != want {
            Err(format!(
                "cannot mix '{prefix}-*' options with mount type '{}'",
                ty.as_str_name()
                    .trim_start_matches("MOUNT_TYPE_")
                    .to_ascii_lowercase()
            ))
        } else {
            Ok(())
        }
    };
    mixed(volume_opts, pb::MountType::Volume, "volume")?;
    mixed(bind_opts, pb::MountType::Bind, "bind")?;
    mixed(tmpfs_opts, pb::MountType::Tmpfs, "tmpfs")?;
    Ok(m)
}

/// Resource limits `--ulimit` knows, as docker's go-units.
const ULIMITS: [&str; 15] = [
    "core",
    "cpu",
    "data",
    "fsize",
    "locks",
    "memlock",
    "msgqueue",
    "nice",
    "nofile",
    "nproc",
    "rss",
    "rtprio",
    "rttime",
    "sigpending",
    "stack",
];

/// `--ulimit name=soft[:hard]`.
pub fn parse_ulimit(s: &str) -> Result<pb::Ulimit, String> {
    let (name, limits) = s.split_once('=').ok_or_else(|| {
        format!("invalid ulimit {s:?}: use name=soft[:hard], e.g. nofile=1024:2048")
    })?;
    if !ULIMITS.contains(&name) {
        return Err(format!(
            "invalid ulimit type {name:?}: use one of {}",
            ULIMITS.join(", ")
        ));
    }
    let num = |v: &str| {
        v.parse::<i64>()
            .map_err(|_| format!("invalid ulimit {s:?}: {v:?} is not a number"))
    };
    let (soft, hard) = match limits.split_once(':') {
        Some((a, b)) => (num(a)?, num(b)?),
        None => {
            let n = num(limits)?;
            (n, n)
        }
    };
    if soft > hard {
        return Err(format!(
            "invalid ulimit {s:?}: the soft limit must be less than or equal to the hard limit"
        ));
    }
    Ok(pb::Ulimit {
        name: name.to_string(),
        soft,
        hard,
    })
}

/// `key=value` or `key` (empty value): labels and sysctls.
pub fn parse_kv(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').unwrap_or((s, ""));
    if k.trim().is_empty() {
        return Err(format!("invalid {s:?}: the key is empty"));
    }
    Ok((k.to_string(), v.to_string()))
}

/// `-e KEY=VALUE`, or `-e KEY` to pass this shell's value of KEY (kept as
/// a bare name when it is unset), as docker does.
pub fn parse_env(s: &str) -> Result<String, String> {
    let key = s.split_once('=').map_or(s, |(k, _)| k);
    if key.trim().is_empty() {
        return Err(format!(
            "invalid environment variable {s:?}: the name is empty"
        ));
    }
    if s.contains('=') {
        return Ok(s.to_string());
    }
    Ok(match std::env::var(s) {
        Ok(v) => format!("{s}={v}"),
        Err(_) => s.to_string(),
    })
}

/// The variable name of an `env` entry.
pub fn env_key(e: &str) -> &str {
    e.split_once('=').map_or(e, |(k, _)| k)
}

/// `--placement-pref spread=node.labels.zone`.
pub fn parse_placement_pref(s: &str) -> Result<pb::PlacementPreference, String> {
    let (strategy, arg) = s.split_once('=').ok_or_else(|| {
        "placement preference must be of the format \"<strategy>=<arg>\"".to_string()
    })?;
    if strategy != "spread" {
        return Err(format!(
            "unsupported placement preference {strategy} (only spread is supported)"
        ));
    }
    if arg.is_empty() {
        return Err("spread needs a descriptor, e.g. spread=node.labels.zone".into());
    }
    Ok(pb::PlacementPreference {
        preference: Some(pb::placement_preference::Preference::Spread(
            pb::SpreadOver {
                spread_descriptor: arg.to_string(),
            },
        )),
    })
}

/// `--cap-add net_admin` → `CAP_NET_ADMIN`; `ALL` stays.
pub fn parse_capability(s: &str) -> Result<String, String> {
    let up = s.trim().to_ascii_uppercase();
    if up.is_empty() {
        return Err("empty capability".into());
    }
    if up == "ALL" || up.starts_with("CAP_") {
        Ok(up)
    } else {
        Ok(format!("CAP_{up}"))
    }
}

/// `service scale NAME=REPLICAS`.
pub fn parse_scale(s: &str) -> Result<(String, u64), String> {
    let (name, n) = s.split_once('=').ok_or_else(|| {
        format!("invalid scale specifier {s:?}: use SERVICE=REPLICAS, e.g. web=3")
    })?;
    if name.is_empty() {
        return Err(format!("invalid scale specifier {s:?}: no service named"));
    }
    let n = n
        .parse::<u64>()
        .map_err(|_| format!("invalid replicas value {n:?} in {s:?}: use a whole number"))?;
    Ok((name.to_string(), n))
}

/// Shell-style words (`--args "echo 'a b'"`), as docker splits them.
pub fn parse_words(s: &str) -> Result<super::spec::Words, String> {
    shlex::split(s)
        .map(super::spec::Words)
        .ok_or_else(|| format!("invalid command {s:?}: unbalanced quotes"))
}

/// `service ls --filter key=value`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LsFilter {
    Id(String),
    Name(String),
    Label(String),
    Mode(String),
}

pub fn parse_ls_filter(s: &str) -> Result<LsFilter, String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("bad format of filter {s:?} (expected name=value)"))?;
    match k {
        "id" => Ok(LsFilter::Id(v.into())),
        "name" => Ok(LsFilter::Name(v.into())),
        "label" => Ok(LsFilter::Label(v.into())),
        "mode" => match v {
            "replicated" | "global" | "replicated-job" | "global-job" => {
                Ok(LsFilter::Mode(v.into()))
            }
            _ => Err(format!(
                "invalid filter 'mode={v}': use replicated, global, replicated-job or global-job"
            )),
        },
        _ => Err(format!("invalid filter {k:?}: use id, name, label or mode")),
    }
}

/// `service ps --filter key=value`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PsFilter {
    DesiredState(pb::TaskState),
    Node(String),
    Id(String),
    Name(String),
}

pub fn parse_ps_filter(s: &str) -> Result<PsFilter, String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("bad format of filter {s:?} (expected name=value)"))?;
    match k {
        "desired-state" => {
            let name = format!("TASK_STATE_{}", v.to_ascii_uppercase());
            pb::TaskState::from_str_name(&name)
                .map(PsFilter::DesiredState)
                .ok_or_else(|| {
                    format!(
                        "invalid filter 'desired-state={v}': use running, shutdown, accepted, complete, ..."
                    )
                })
        }
        "node" => Ok(PsFilter::Node(v.into())),
        "id" => Ok(PsFilter::Id(v.into())),
        "name" => Ok(PsFilter::Name(v.into())),
        _ => Err(format!(
            "invalid filter {k:?}: use desired-state, node, id or name"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_like_docker() {
        assert_eq!(parse_mem_bytes("512M"), Ok(512 << 20));
        assert_eq!(parse_mem_bytes("512m"), Ok(512 << 20));
        assert_eq!(parse_mem_bytes("512mb"), Ok(512 << 20));
        assert_eq!(parse_mem_bytes("512MiB"), Ok(512 << 20));
        assert_eq!(parse_mem_bytes("1G"), Ok(1 << 30));
        assert_eq!(parse_mem_bytes("1.5g"), Ok(3 << 29));
        assert_eq!(parse_mem_bytes("64k"), Ok(64 << 10));
        assert_eq!(parse_mem_bytes("2t"), Ok(2 << 40));
        assert_eq!(parse_mem_bytes("1024"), Ok(1024));
        assert_eq!(parse_mem_bytes("1024b"), Ok(1024));
        assert_eq!(parse_mem_bytes("0"), Ok(0));
        for bad in ["", "M", "-1G", "1x", "1.2.3m", "ten"] {
            assert!(parse_mem_bytes(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cpus_parse_exactly() {
        assert_eq!(parse_nano_cpus("0.5"), Ok(500_000_000));
        assert_eq!(parse_nano_cpus("2"), Ok(2_000_000_000));
        assert_eq!(parse_nano_cpus("1.25"), Ok(1_250_000_000));
        assert_eq!(parse_nano_cpus(".1"), Ok(100_000_000));
        assert_eq!(parse_nano_cpus("0.000000001"), Ok(1));
        assert_eq!(parse_nano_cpus("0"), Ok(0));
        assert!(
            parse_nano_cpus("0.0000000001")
                .unwrap_err()
                .contains("too precise")
        );
        for bad in ["", ".", "-1", "1e3", "one", "1.5.2"] {
            assert!(parse_nano_cpus(bad).is_err(), "{bad}");
        }
    }

    fn port(
        published: u32,
        target: u32,
        proto: pb::PortProtocol,
        mode: pb::PublishMode,
    ) -> pb::PortConfig {
        pb::PortConfig {
            published_port: published,
            target_port: target,
            protocol: proto as i32,
            publish_mode: mode as i32,
            ..Default::default()
        }
    }

    #[test]
    fn publish_short_form() {
        use pb::{PortProtocol::*, PublishMode::*};
        assert_eq!(
            parse_publish("8080:80"),
            Ok(vec![port(8080, 80, Tcp, Ingress)])
        );
        assert_eq!(
            parse_publish("53:53/udp"),
            Ok(vec![port(53, 53, Udp, Ingress)])
        );
        assert_eq!(parse_publish("80"), Ok(vec![port(0, 80, Tcp, Ingress)]));
        assert_eq!(
            parse_publish(":80/sctp"),
            Ok(vec![port(0, 80, Sctp, Ingress)])
        );
        assert_eq!(
            parse_publish("8080-8081:80-81"),
            Ok(vec![
                port(8080, 80, Tcp, Ingress),
                port(8081, 81, Tcp, Ingress)
            ])
        );
        assert!(
            parse_publish("127.0.0.1:8080:80")
                .unwrap_err()
                .contains("host IP")
        );
        assert!(parse_publish("8080:0").is_err());
        assert!(parse_publish("8080:70000").is_err());
        assert!(
            parse_publish("8080:80/icmp")
                .unwrap_err()
                .contains("protocol")
        );
        assert!(
            parse_publish("8080-8082:80-81")
                .unwrap_err()
                .contains("differ")
        );
        assert!(parse_publish("x:80").is_err());
    }

    #[test]
    fn publish_long_form() {
        use pb::{PortProtocol::*, PublishMode::*};
        assert_eq!(
            parse_publish("published=8080,target=80"),
            Ok(vec![port(8080, 80, Tcp, Ingress)])
        );
        assert_eq!(
            parse_publish("published=53,target=53,protocol=udp,mode=host"),
            Ok(vec![port(53, 53, Udp, Host)])
        );
        assert_eq!(
            parse_publish("target=80"),
            Ok(vec![port(0, 80, Tcp, Ingress)])
        );
        assert!(
            parse_publish("published=8080")
                .unwrap_err()
                .contains("target")
        );
        assert!(
            parse_publish("target=80,mode=nat")
                .unwrap_err()
                .contains("publish mode")
        );
        assert!(
            parse_publish("target=80,foo=1")
                .unwrap_err()
                .contains("field key")
        );
        assert!(parse_publish("target=80,published=0").is_err());
    }

    #[test]
    fn mounts_parse_every_type() {
        let m = parse_mount("type=bind,source=/data,target=/app,readonly").unwrap();
        assert_eq!(m.r#type(), pb::MountType::Bind);
        assert_eq!(
            (m.source.as_str(), m.target.as_str(), m.read_only),
            ("/data", "/app", true)
        );
        let m = parse_mount("src=vol1,dst=/v,ro=false").unwrap();
        assert_eq!(m.r#type(), pb::MountType::Volume);
        assert_eq!(
            (m.source.as_str(), m.target.as_str(), m.read_only),
            ("vol1", "/v", false)
        );
        let m = parse_mount("type=tmpfs,destination=/t,tmpfs-size=64m,tmpfs-mode=1777").unwrap();
        assert_eq!(m.r#type(), pb::MountType::Tmpfs);
        assert_eq!((m.tmpfs_size_bytes, m.tmpfs_mode), (64 << 20, 0o1777));
        let m = parse_mount(
            "type=volume,source=v,target=/v,volume-driver=local,volume-label=a=b,\"volume-opt=o=x,y\",volume-nocopy",
        )
        .unwrap();
        let d = m.volume_driver.unwrap();
        assert_eq!(d.name, "local");
        assert_eq!(d.options.get("o").map(String::as_str), Some("x,y"));
        assert_eq!(m.volume_labels.get("a").map(String::as_str), Some("b"));
        assert!(m.volume_nocopy);
        let m = parse_mount("type=bind,source=/a,target=/b,bind-propagation=rshared,readonly=1")
            .unwrap();
        assert_eq!(m.bind_propagation, "rshared");
        assert!(m.read_only);

        assert!(
            parse_mount("type=bind,source=/a")
                .unwrap_err()
                .contains("target is required")
        );
        assert!(
            parse_mount("type=nfs,target=/a")
                .unwrap_err()
                .contains("mount type")
        );
        assert!(
            parse_mount("type=bind,target=/a,tmpfs-size=1m")
                .unwrap_err()
                .contains("cannot mix")
        );
        assert!(
            parse_mount("type=tmpfs,target=/a,volume-nocopy")
                .unwrap_err()
                .contains("cannot mix")
        );
        assert!(parse_mount("target=/a,readonly=maybe").is_err());
        assert!(
            parse_mount("target=/a,color=red")
                .unwrap_err()
                .contains("unexpected key")
        );
        assert!(
            parse_mount("target=/a,\"src=x")
                .unwrap_err()
                .contains("quotes")
        );
    }

    #[test]
    fn ulimits_parse() {
        assert_eq!(
            parse_ulimit("nofile=1024:2048"),
            Ok(pb::Ulimit {
                name: "nofile".into(),
                soft: 1024,
                hard: 2048
            })
        );
        assert_eq!(
            parse_ulimit("nproc=64").map(|u| (u.soft, u.hard)),
            Ok((64, 64))
        );
        assert!(parse_ulimit("nofile").is_err());
        assert!(parse_ulimit("files=1").unwrap_err().contains("ulimit type"));
        assert!(
            parse_ulimit("nofile=10:5")
                .unwrap_err()
                .contains("soft limit")
        );
        assert!(parse_ulimit("nofile=a:b").is_err());
    }

    #[test]
    fn small_values_parse() {
        assert_eq!(parse_kv("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert_eq!(parse_kv("flag"), Ok(("flag".into(), String::new())));
        assert!(parse_kv("=x").is_err());
        assert_eq!(parse_env("A=1"), Ok("A=1".into()));
        assert_eq!(parse_env("A="), Ok("A=".into()));
        assert!(parse_env("=1").is_err());
        assert_eq!(
            parse_env("SWARM_TEST_SURELY_UNSET_VAR"),
            Ok("SWARM_TEST_SURELY_UNSET_VAR".into())
        );
        let path = std::env::var("PATH").unwrap_or_default();
        assert_eq!(parse_env("PATH"), Ok(format!("PATH={path}")));
        assert_eq!(env_key("A=1=2"), "A");
        assert_eq!(parse_capability("net_admin"), Ok("CAP_NET_ADMIN".into()));
        assert_eq!(parse_capability("CAP_SYS_TIME"), Ok("CAP_SYS_TIME".into()));
        assert_eq!(parse_capability("all"), Ok("ALL".into()));
        assert_eq!(parse_scale("web=10"), Ok(("web".into(), 10)));
        assert!(parse_scale("web").is_err());
        assert!(parse_scale("web=-1").is_err());
        assert!(parse_scale("=3").is_err());
        assert_eq!(
            parse_words("sh -c 'echo a b'"),
            Ok(super::super::spec::Words(vec![
                "sh".into(),
                "-c".into(),
                "echo a b".into()
            ]))
        );
        assert!(parse_words("'open").is_err());
    }

    #[test]
    fn placement_prefs_parse() {
        let p = parse_placement_pref("spread=node.labels.zone").unwrap();
        assert_eq!(
            p.preference,
            Some(pb::placement_preference::Preference::Spread(
                pb::SpreadOver {
                    spread_descriptor: "node.labels.zone".into()
                }
            ))
        );
        assert!(
            parse_placement_pref("pack=x")
                .unwrap_err()
                .contains("only spread")
        );
        assert!(
            parse_placement_pref("spread")
                .unwrap_err()
                .contains("format")
        );
        assert!(parse_placement_pref("spread=").is_err());
    }

    #[test]
    fn filters_parse() {
        assert_eq!(
            parse_ls_filter("name=web"),
            Ok(LsFilter::Name("web".into()))
        );
        assert_eq!(
            parse_ls_filter("mode=global"),
            Ok(LsFilter::Mode("global".into()))
        );
        assert!(parse_ls_filter("mode=daemon").is_err());
        assert!(parse_ls_filter("color=red").is_err());
        assert!(parse_ls_filter("name").is_err());
        assert_eq!(
            parse_ps_filter("desired-state=running"),
            Ok(PsFilter::DesiredState(pb::TaskState::Running))
        );
        assert_eq!(
            parse_ps_filter("desired-state=Shutdown"),
            Ok(PsFilter::DesiredState(pb::TaskState::Shutdown))
        );
        assert!(parse_ps_filter("desired-state=sleeping").is_err());
        assert_eq!(parse_ps_filter("node=n1"), Ok(PsFilter::Node("n1".into())));
    }
}
