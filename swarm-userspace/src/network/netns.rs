//! Task network namespaces and their veth pairs, through netlink.
//!
//! Owns: creating a named network namespace (a bind-mounted nsfs file, so
//! it outlives the daemon and a restarted agent finds it), one veth pair
//! per network attachment (the container end created directly inside the
//! namespace, so its name never clashes on the node), addresses, MTU,
//! routes and loopback, and removing all of it. Must never touch an
//! interface or namespace it did not name (`sw…` host ends, files under
//! its own directory).
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use rtnetlink::packet_route::link::{InfoData, InfoVeth};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, RouteMessageBuilder};
use tokio_stream::StreamExt;

/// Why setting up a task's network failed.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{op}: {reason}")]
    Netlink { op: String, reason: String },
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> NetnsError + 'a {
    move |source| NetnsError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

fn nl(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetnsError {
    let op = op.into();
    move |e| NetnsError::Netlink {
        op,
        reason: e.to_string(),
    }
}

/// Runs `f` on a new, short-lived thread that has joined the network
/// namespace at `netns` (a bind-mounted nsfs file), and returns its result.
/// `setns` changes only that thread; sockets `f` opens stay in the
/// namespace after it ends. Blocks the caller until `f` returns: from
/// async code, call it in `spawn_blocking` (a runtime thread never changes
/// namespace).
pub fn run_in_netns<T, F>(netns: &Path, f: F) -> std::io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> std::io::Result<T> + Send + 'static,
{
    let ns = File::open(netns)?;
    std::thread::Builder::new()
        .name("netns".into())
        .spawn(move || {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)?;
            f()
        })?
        .join()
        .map_err(|_| std::io::Error::other("the thread inside the network namespace panicked"))?
}

/// A netlink handle for the namespace at `netns` (the caller's own when
/// `None`); its connection runs on the current tokio runtime.
pub fn netlink(netns: Option<&Path>) -> Result<Handle, NetnsError> {
    let socket = match netns {
        None => rtnetlink::sys::Socket::new(rtnetlink::sys::protocols::NETLINK_ROUTE)
            .map_err(io("opening a netlink socket", Path::new("/")))?,
        Some(p) => {
            let fd = run_in_netns(p, || {
                let s = rtnetlink::sys::Socket::new(rtnetlink::sys::protocols::NETLINK_ROUTE)?;
                Ok(s.into_raw_fd())
            })
            .map_err(io("opening a netlink socket in", p))?;
            // SAFETY: fd was just created by Socket::new and is owned here.
            unsafe { rtnetlink::sys::Socket::from_raw_fd(fd) }
        }
    };
    socket
        .set_non_blocking(true)
        .map_err(io("configuring a netlink socket", Path::new("/")))?;
    // SAFETY: the fd comes from a live netlink socket whose ownership moves
    // into the tokio socket.
    let sock = unsafe { rtnetlink::sys::TokioSocket::from_raw_fd(socket.into_raw_fd()) };
    let (conn, handle, _) = rtnetlink::from_socket(sock);
    tokio::spawn(conn);
    Ok(handle)
}

/// Creates a network namespace bound at `path` (kept if it exists).
pub fn create(path: &Path) -> Result<(), NetnsError> {
    if is_netns(path) {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    }
    File::create(path).map_err(io("creating", path))?;
    let target = path.to_owned();
    let r = std::thread::spawn(move || -> std::io::Result<()> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| std::io::Error::from_raw_os_error(e as i32))?;
        nix::mount::mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| std::io::Error::from_raw_os_error(e as i32))
    })
    .join()
    .map_err(|_| NetnsError::Io {
        op: "creating",
        path: path.to_owned(),
        source: std::io::Error::other("the namespace thread panicked"),
    })?;
    if let Err(e) = r {
        let _ = std::fs::remove_file(path);
        return Err(NetnsError::Io {
            op: "creating the network namespace at",
            path: path.to_owned(),
            source: e,
        });
    }
    Ok(())
}

/// Whether `path` is a bound network namespace.
pub fn is_netns(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
}

/// Unbinds and deletes the namespace at `path`. The kernel frees it (and
/// the container ends of its veths, taking the host ends with them) once
/// no process is left in it.
pub fn remove(path: &Path) {
    if is_netns(path) {
        let _ = nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH);
    }
    let _ = std::fs::remove_file(path);
}

/// One network attachment of a task, as the container sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    /// Host end, in the node's namespace (at most 15 bytes).
    pub host_name: String,
    /// Container end: eth0, eth1, ...
    pub name: String,
    pub mac: [u8; 6],
    pub addr: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub mtu: u32,
    /// Whether the namespace's default route goes through this link.
    pub default_route: bool,
}

/// The host-side name of a task's `index`-th attachment.
pub fn host_name(task_id: &str, index: usize) -> String {
    let short: String = task_id.chars().take(10).collect();
    format!("sw{short}{index}")
}

/// The index of interface `name` in `handle`'s namespace, if it exists.
pub async fn link_index(handle: &Handle, name: &str) -> Result<Option<u32>, NetnsError> {
    let links = handle.link().get().match_name(name.to_owned()).execute();
    let mut links = std::pin::pin!(links);
    match links.next().await {
        Some(Ok(l)) => Ok(Some(l.header.index)),
        None => Ok(None),
        // ENODEV: no such link.
        Some(Err(rtnetlink::Error::NetlinkError(e))) if e.raw_code() == -libc::ENODEV => Ok(None),
        Some(Err(e)) => Err(nl(format!("looking up interface {name}"))(e)),
    }
}

/// Brings loopback up inside a namespace.
pub async fn loopback_up(ns: &Handle) -> Result<(), NetnsError> {
    let lo = link_index(ns, "lo")
        .await?
        .ok_or_else(|| NetnsError::Netlink {
            op: "bringing loopback up".into(),
            reason: "the namespace has no lo".into(),
        })?;
    ns.link()
        .set(LinkUnspec::new_with_index(lo).up().build())
        .execute()
        .await
        .map_err(nl("bringing loopback up"))
}

/// Creates `link`'s veth pair (container end inside `netns`), configures
/// both ends, and returns the host end's ifindex. An existing host end
/// (a restarted agent) is kept as it is.
pub async fn add_link(
    host: &Handle,
    ns: &Handle,
    netns: &Path,
    link: &Link,
) -> Result<u32, NetnsError> {
    if let Some(idx) = link_index(host, &link.host_name).await? {
        return Ok(idx);
    }
    let ns_file = File::open(netns).map_err(io("opening the network namespace", netns))?;
    let ns_fd = OwnedFd::from(ns_file);
    let peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name(link.name.clone())
        .address(link.mac.to_vec())
        .mtu(link.mtu)
        .setns_by_fd(ns_fd.as_raw_fd())
        .build();
    let msg = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(
        rtnetlink::packet_route::link::InfoKind::Veth,
    )
    .name(link.host_name.clone())
    .mtu(link.mtu)
    .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
    .up()
    .build();
    host.link()
        .add(msg)
        .execute()
        .await
        .map_err(nl(format!("creating veth {}", link.host_name)))?;
    drop(ns_fd);
    let host_idx = link_index(host, &link.host_name)
        .await?
        .ok_or_else(|| NetnsError::Netlink {
            op: format!("creating veth {}", link.host_name),
            reason: "the host end vanished right after creation".into(),
        })?;
    let idx = link_index(ns, &link.name)
        .await?
        .ok_or_else(|| NetnsError::Netlink {
            op: format!("creating {} in the task's namespace", link.name),
            reason: "the container end is missing".into(),
        })?;
    ns.address()
        .add(idx, link.addr.addr().into(), link.addr.prefix_len())
        .execute()
        .await
        .map_err(nl(format!("adding {} to {}", link.addr, link.name)))?;
    ns.link()
        .set(LinkUnspec::new_with_index(idx).up().build())
        .execute()
        .await
        .map_err(nl(format!("bringing {} up", link.name)))?;
    if link.default_route {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(link.gateway)
            .output_interface(idx)
            .build();
        ns.route()
            .add(route)
            .execute()
            .await
            .map_err(nl(format!("adding the default route via {}", link.gateway)))?;
    }
    Ok(host_idx)
}

/// Makes the container reachable from the node's own stack (replies to
/// its outbound connections after NAT): a /32 route through its host end
/// and a permanent neighbour entry with its MAC, since the data path
/// answers ARP only for the container's own questions.
pub async fn host_route(
    host: &Handle,
    host_ifindex: u32,
    addr: Ipv4Addr,
    mac: [u8; 6],
) -> Result<(), NetnsError> {
    host.neighbours()
        .add(host_ifindex, addr.into())
        .link_layer_address(&mac)
        .state(rtnetlink::packet_route::neighbour::NeighbourState::Permanent)
        .replace()
        .execute()
        .await
        .map_err(nl(format!("adding the neighbour entry of {addr}")))?;
    let route = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(addr, 32)
        .output_interface(host_ifindex)
        .scope(rtnetlink::packet_route::route::RouteScope::Link)
        .build();
    host.route()
        .add(route)
        .replace()
        .execute()
        .await
        .map_err(nl(format!("adding the host route to {addr}")))
}

/// Deletes a host end (its container end goes with it).
pub async fn del_link(host: &Handle, host_name: &str) -> Result<(), NetnsError> {
    if let Some(idx) = link_index(host, host_name).await? {
        host.link()
            .del(idx)
            .execute()
            .await
            .map_err(nl(format!("deleting veth {host_name}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_fit_in_an_interface_name() {
        let n = host_name("abcdefghijklmnopqrstuvwxy", 3);
        assert_eq!(n, "swabcdefghij3");
        assert!(n.len() <= 15);
    }

    /// A namespace made here gets a veth with an address and a default
    /// route, and is gone after `remove`.
    #[tokio::test]
    async fn a_task_namespace_gets_its_link_and_goes_away() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t1");
        create(&path).expect("create netns");
        assert!(is_netns(&path));
        let host = netlink(None).expect("host netlink");
        let ns = netlink(Some(&path)).expect("netns netlink");
        loopback_up(&ns).await.expect("lo up");
        let name = format!("swt{:08x}", rand::random::<u32>());
        let link = Link {
            host_name: name.clone(),
            name: "eth0".into(),
            mac: [0x02, 0x42, 10, 9, 0, 5],
            addr: "10.9.0.5/24".parse().expect("cidr"),
            gateway: "10.9.0.1".parse().expect("ip"),
            mtu: 1450,
            default_route: true,
        };
        let guard = Cleanup(name.clone(), path.clone());
        let idx = add_link(&host, &ns, &path, &link).await.expect("add link");
        assert!(idx > 0);
        // Idempotent for a restarted agent.
        assert_eq!(
            add_link(&host, &ns, &path, &link).await.expect("again"),
            idx
        );
        let out = std::process::Command::new("nsenter")
            .arg(format!("--net={}", path.display()))
            .args(["ip", "-o", "addr", "show", "dev", "eth0"])
            .output()
            .expect("nsenter runs");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("10.9.0.5/24"), "{text}");
        let out = std::process::Command::new("nsenter")
            .arg(format!("--net={}", path.display()))
            .args(["ip", "route", "show", "default"])
            .output()
            .expect("nsenter runs");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("via 10.9.0.1 dev eth0"), "{text}");
        del_link(&host, &name).await.expect("del");
        assert_eq!(link_index(&host, &name).await.expect("lookup"), None);
        drop(guard);
        assert!(!path.exists());
    }

    /// Deletes the test's veth and namespace even when an assertion fails.
    struct Cleanup(String, PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip")
                .args(["link", "del", &self.0])
                .output();
            remove(&self.1);
        }
    }
}
