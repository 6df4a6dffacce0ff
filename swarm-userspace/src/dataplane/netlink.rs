//! The few link operations the overlay needs: the node's collect-metadata
//! VXLAN device, the underlay MTU, a link's name and MAC.
//!
//! Every call works in the network namespace of the calling thread (the
//! netlink socket is opened on a helper thread spawned from it, which
//! inherits its namespace), so callers that `setns()` a thread get that
//! namespace. Never touches links it did not create, except to read them.
use std::ffi::{CStr, CString};
use std::future::Future;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use rtnetlink::{
    Handle, LinkMessageBuilder, LinkUnspec, LinkVxlan, RouteMessageBuilder,
    packet_route::{
        link::{InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage},
        route::{RouteAttribute, RouteHeader},
    },
};
use tokio_stream::StreamExt;

use super::DataplaneError;

/// What the node's VXLAN device is, as found or created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VxlanDevice {
    pub ifindex: u32,
    pub mtu: u32,
}

fn nl_err(op: &'static str) -> impl Fn(rtnetlink::Error) -> DataplaneError {
    move |e| DataplaneError::Netlink {
        op,
        reason: e.to_string(),
    }
}

/// Runs `f` with a fresh netlink handle on a helper thread in the calling
/// thread's network namespace, on a runtime of its own (so it works from
/// inside and outside tokio alike).
fn with_netlink<T, F, Fut>(op: &'static str, f: F) -> Result<T, DataplaneError>
where
    T: Send,
    F: FnOnce(Handle) -> Fut + Send,
    Fut: Future<Output = Result<T, DataplaneError>>,
{
    let io = |reason: std::io::Error| DataplaneError::Netlink {
        op,
        reason: reason.to_string(),
    };
    std::thread::scope(|s| {
        let worker = s.spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
                .map_err(io)?;
            rt.block_on(async move {
                let (conn, handle, _) = rtnetlink::new_connection().map_err(io)?;
                let conn = tokio::spawn(conn);
                let r = f(handle).await;
                conn.abort();
                r
            })
        });
        worker.join().unwrap_or_else(|_| {
            Err(DataplaneError::Netlink {
                op,
                reason: "the netlink helper thread panicked".into(),
            })
        })
    })
}

async fn link_by_name(handle: &Handle, name: &str) -> Result<Option<LinkMessage>, DataplaneError> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.next().await {
        None => Ok(None),
        Some(Ok(m)) => Ok(Some(m)),
        // ENODEV: no such link.
        Some(Err(rtnetlink::Error::NetlinkError(e))) if e.raw_code().abs() == libc::ENODEV => {
            Ok(None)
        }
        Some(Err(e)) => Err(nl_err("reading link")(e)),
    }
}

async fn link_by_index(handle: &Handle, index: u32) -> Result<LinkMessage, DataplaneError> {
    let mut links = handle.link().get().match_index(index).execute();
    match links.next().await {
        Some(Ok(m)) => Ok(m),
        Some(Err(e)) => Err(nl_err("reading link")(e)),
        None => Err(DataplaneError::Netlink {
            op: "reading link",
            reason: format!("no link with index {index}"),
        }),
    }
}

fn link_mtu(m: &LinkMessage) -> Option<u32> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::Mtu(mtu) => Some(*mtu),
        _ => None,
    })
}

/// Whether `m` is a collect-metadata VXLAN device on UDP port `port`.
fn is_external_vxlan_on(m: &LinkMessage, port: u16) -> bool {
    let Some(infos) = m.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(i) => Some(i),
        _ => None,
    }) else {
        return false;
    };
    let vxlan = infos
        .iter()
        .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Vxlan)));
    let data = infos.iter().find_map(|i| match i {
        LinkInfo::Data(InfoData::Vxlan(d)) => Some(d),
        _ => None,
    });
    let Some(data) = data else {
        return false;
    };
    vxlan
        && data
            .iter()
            .any(|d| matches!(d, InfoVxlan::CollectMetadata(true)))
        && data
            .iter()
            .any(|d| matches!(d, InfoVxlan::Port(p) if *p == port))
}

/// MTU of the device the default IPv4 route leaves through: what one
/// encapsulated frame may be. `None` without a default route.
async fn default_route_mtu(handle: &Handle) -> Result<Option<u32>, DataplaneError> {
    let mut routes = handle
        .route()
        .get(RouteMessageBuilder::<std::net::Ipv4Addr>::new().build())
        .execute();
    let mut oif = None;
    while let Some(r) = routes.next().await {
        let r = r.map_err(nl_err("listing routes"))?;
        if r.header.destination_prefix_length != 0 || r.header.table != RouteHeader::RT_TABLE_MAIN {
            continue;
        }
        if let Some(i) = r.attributes.iter().find_map(|a| match a {
            RouteAttribute::Oif(i) => Some(*i),
            _ => None,
        }) {
            oif = Some(i);
        }
    }
    let Some(oif) = oif else {
        return Ok(None);
    };
    Ok(link_mtu(&link_by_index(handle, oif).await?))
}

/// Finds or creates the collect-metadata VXLAN device `name` on UDP `port`
/// with the underlay's MTU (`default_mtu` if there is no default route),
/// and brings it up. A device of that name with other settings is replaced.
pub fn ensure_vxlan(
    name: &str,
    port: u16,
    default_mtu: u32,
) -> Result<VxlanDevice, DataplaneError> {
    with_netlink("creating the VXLAN device", |handle| async move {
        let mtu = default_route_mtu(&handle).await?.unwrap_or(default_mtu);
        if let Some(existing) = link_by_name(&handle, name).await? {
            let index = existing.header.index;
            if is_external_vxlan_on(&existing, port) {
                let up = existing.header.flags.contains(LinkFlags::Up);
                if !up || link_mtu(&existing) != Some(mtu) {
                    handle
                        .link()
                        .set(LinkUnspec::new_with_index(index).mtu(mtu).up().build())
                        .execute()
                        .await
                        .map_err(nl_err("setting the VXLAN device up"))?;
                }
                tracing::info!(
                    device = name,
                    ifindex = index,
                    port,
                    mtu,
                    "adopted the overlay VXLAN device"
                );
                return Ok(VxlanDevice {
                    ifindex: index,
                    mtu,
                });
            }
            tracing::warn!(
                device = name,
                port,
                "replacing a link with the overlay device's name but other settings"
            );
            handle
                .link()
                .del(index)
                .execute()
                .await
                .map_err(nl_err("deleting the stale VXLAN device"))?;
        }
        handle
            .link()
            .add(
                LinkMessageBuilder::<LinkVxlan>::new(name)
                    .port(port)
                    .collect_metadata(true)
                    .learning(false)
                    .mtu(mtu)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(|e| DataplaneError::Netlink {
                op: "creating the VXLAN device",
                reason: format!(
                    "{e}; another collect-metadata VXLAN device may already use UDP port {port}"
                ),
            })?;
        let created = link_by_name(&handle, name)
            .await?
            .ok_or(DataplaneError::Netlink {
                op: "creating the VXLAN device",
                reason: format!("{name} vanished right after it was created"),
            })?;
        tracing::info!(
            device = name,
            ifindex = created.header.index,
            port,
            mtu,
            "created the overlay VXLAN device"
        );
        Ok(VxlanDevice {
            ifindex: created.header.index,
            mtu,
        })
    })
}

/// Name of the link with index `ifindex` in the calling thread's namespace.
pub fn name_of(ifindex: u32) -> Result<String, DataplaneError> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf has IF_NAMESIZE bytes, as the call requires.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return Err(DataplaneError::NoSuchIfindex(ifindex));
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    Ok(unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned())
}

/// The MAC of link `name` (SIOCGIFHWADDR, in the calling thread's
/// namespace).
pub fn mac_of(name: &str) -> Result<[u8; 6], DataplaneError> {
    let fail = |e: std::io::Error| DataplaneError::Netlink {
        op: "reading a link's MAC",
        reason: format!("{name}: {e}"),
    };
    let cname = CString::new(name).map_err(|_| DataplaneError::NoSuchInterface(name.into()))?;
    let bytes = cname.as_bytes_with_nul();
    if bytes.len() > libc::IFNAMSIZ {
        return Err(DataplaneError::NoSuchInterface(name.into()));
    }
    // SAFETY: plain socket call; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(fail(std::io::Error::last_os_error()));
    }
    // SAFETY: fd is a fresh descriptor we own.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: all-zero is a valid ifreq.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: req is a valid ifreq with a NUL-terminated name; the kernel
    // writes the hardware address into it.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) };
    if r < 0 {
        return Err(fail(std::io::Error::last_os_error()));
    }
    // SAFETY: SIOCGIFHWADDR filled ifru_hwaddr.
    let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
    let mut mac = [0u8; 6];
    for (d, s) in mac.iter_mut().zip(data.iter()) {
        *d = *s as u8;
    }
    Ok(mac)
}
