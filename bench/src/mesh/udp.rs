//! Small-UDP packets per second for the `mesh` benchmark: a sender that
//! pushes 18-byte datagrams (64-byte Ethernet frames counting the FCS) as
//! fast as it can from [`SOURCE_PORTS`] source ports with `sendmmsg`, and
//! counters that receive with `recvmmsg` and count what arrives.
//!
//! Owns sockets and threads only: it knows nothing of the topology (the
//! caller says which namespace and address), and never decides what a
//! number means beyond the per-run arithmetic in [`UdpRun::new`]. Counters
//! stop on drop; the sender returns when its time is up.
use std::io;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use swarm_harness::Netns;

/// UDP payload: with 8 bytes of UDP, 20 of IPv4 and 14 of Ethernet header
/// the frame is 60 bytes on the wire, 64 with the FCS (the minimum
/// Ethernet frame, the usual "small packet" of pps figures).
pub const PAYLOAD_BYTES: usize = 18;
/// [`PAYLOAD_BYTES`] plus UDP, IPv4 and Ethernet headers and the FCS.
pub const FRAME_BYTES: usize = PAYLOAD_BYTES + 8 + 20 + 14 + 4;
/// Sockets the sender spreads its datagrams over, one source port each:
/// the mesh and conntrack see that many flows, not one.
pub const SOURCE_PORTS: usize = 64;
/// Datagrams per `sendmmsg` call (one flow per call, flows in turn).
pub const SEND_BATCH: usize = 32;
/// Datagrams per `recvmmsg` call at most.
const RECV_BATCH: usize = 64;
/// Receive buffer of a counter (`SO_RCVBUFFORCE`): about 10k small
/// datagrams, so a receiver descheduled for a few milliseconds on a busy
/// machine does not turn into loss that has nothing to do with the path.
const RECV_BUFFER: libc::c_int = 8 << 20;
/// How long a counter blocks before it looks at its stop flag.
const POLL: Duration = Duration::from_millis(20);

/// What one sender run did.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Blast {
    /// Datagrams the kernel accepted from `sendmmsg`.
    pub sent: u64,
    /// From the first call to the last.
    pub seconds: f64,
    /// Calls that sent nothing because the socket's send buffer was full
    /// (`EAGAIN`/`ENOBUFS`).
    pub would_block: u64,
    /// Calls refused by an ICMP port unreachable (`ECONNREFUSED`): nothing
    /// listened at the target at some point.
    pub refused: u64,
}

/// Sends small datagrams from namespace `ns` to `to` for `duration`, from
/// [`SOURCE_PORTS`] sockets in turn, [`SEND_BATCH`] per call. Runs on a
/// thread of its own inside `ns` and returns when the time is up.
pub fn blast(ns: &Netns, to: SocketAddr, duration: Duration) -> anyhow::Result<Blast> {
    ns.run(|| -> anyhow::Result<Blast> {
        let socks = (0..SOURCE_PORTS)
            .map(|_| {
                let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
                s.connect(to)?;
                Ok(s)
            })
            .collect::<io::Result<Vec<_>>>()
            .with_context(|| format!("opening {SOURCE_PORTS} UDP sockets towards {to}"))?;
        send_for(&socks, duration).with_context(|| format!("sending UDP to {to}"))
    })
    .with_context(|| format!("UDP sender in {}", ns.name()))
}

fn send_for(socks: &[UdpSocket], duration: Duration) -> io::Result<Blast> {
    let payload = *b"swarm-bench-udp-64";
    const _: () = assert!(b"swarm-bench-udp-64".len() == PAYLOAD_BYTES);
    let mut iov = libc::iovec {
        // The kernel only reads a datagram being sent.
        iov_base: payload.as_ptr().cast_mut().cast(),
        iov_len: PAYLOAD_BYTES,
    };
    // SAFETY: mmsghdr is a plain C struct; all zeroes is a valid value
    // (null pointers, zero lengths).
    let mut hdrs: [libc::mmsghdr; SEND_BATCH] = unsafe { std::mem::zeroed() };
    for h in &mut hdrs {
        // Connected sockets: no destination address per message.
        h.msg_hdr.msg_iov = &raw mut iov;
        h.msg_hdr.msg_iovlen = 1;
    }
    let mut out = Blast::default();
    let start = Instant::now();
    let deadline = start + duration;
    'outer: loop {
        for s in socks {
            if Instant::now() >= deadline {
                break 'outer;
            }
            // SAFETY: `hdrs` has SEND_BATCH entries, each pointing at `iov`
            // and through it at `payload`, all alive and unmoved for the
            // call; the kernel writes only `msg_len`.
            let n = unsafe {
                libc::sendmmsg(
                    s.as_raw_fd(),
                    hdrs.as_mut_ptr(),
                    SEND_BATCH as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if let Ok(n) = u64::try_from(n) {
                out.sent += n;
                continue;
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN | libc::ENOBUFS) => out.would_block += 1,
                Some(libc::ECONNREFUSED) => out.refused += 1,
                Some(libc::EINTR) => {}
                _ => return Err(e),
            }
        }
    }
    out.seconds = start.elapsed().as_secs_f64();
    Ok(out)
}

/// A UDP socket in a namespace that counts the datagrams it receives, on
/// its own thread; stops on drop.
#[derive(Debug)]
pub struct UdpCounter {
    pub addr: SocketAddr,
    received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for UdpCounter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl UdpCounter {
    /// Binds `addr` in `ns` with a large receive buffer and starts
    /// counting.
    pub fn start(ns: &Netns, addr: SocketAddr) -> anyhow::Result<UdpCounter> {
        let sock = ns
            .run(|| UdpSocket::bind(addr))
            .with_context(|| format!("binding UDP {addr} in {}", ns.name()))?;
        set_int_opt(&sock, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, RECV_BUFFER)
            .with_context(|| format!("SO_RCVBUFFORCE on UDP {addr}"))?;
        sock.set_read_timeout(Some(POLL))?;
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicU64::new(0));
        let (s, r) = (stop.clone(), received.clone());
        let thread = std::thread::Builder::new()
            .name(format!("udp-count-{}", addr.port()))
            .spawn(move || count_until(&sock, &s, &r))
            .context("starting a UDP counter thread")?;
        Ok(UdpCounter {
            addr,
            received,
            stop,
            thread: Some(thread),
        })
    }

    /// Datagrams received so far.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// The count once it has stopped growing (datagrams still in flight or
    /// queued in the socket have been counted): unchanged over two polls,
    /// or after `max`.
    pub fn settled(&self, max: Duration) -> u64 {
        let until = Instant::now() + max;
        let mut last = self.received();
        let mut quiet = 0;
        while quiet < 2 && Instant::now() < until {
            std::thread::sleep(POLL);
            let now = self.received();
            quiet = if now == last { quiet + 1 } else { 0 };
            last = now;
        }
        last
    }
}

fn count_until(sock: &UdpSocket, stop: &AtomicBool, received: &AtomicU64) {
    // Only counted: a datagram longer than the buffer is truncated, which
    // is fine.
    let mut bufs = vec![[0u8; 64]; RECV_BATCH];
    let mut iovs: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        })
        .collect();
    let mut hdrs: Vec<libc::mmsghdr> = iovs
        .iter_mut()
        .map(|iov| {
            // SAFETY: mmsghdr is a plain C struct; all zeroes is valid.
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_iov = iov;
            h.msg_hdr.msg_iovlen = 1;
            h
        })
        .collect();
    while !stop.load(Ordering::Relaxed) {
        // MSG_WAITFORONE: block (up to SO_RCVTIMEO) for the first datagram,
        // then take what is queued without waiting.
        // SAFETY: `hdrs` has RECV_BATCH entries pointing at `iovs` and
        // `bufs`, which stay alive and unmoved (their heap storage is never
        // reallocated) for the call; no addresses are asked for.
        let n = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                hdrs.as_mut_ptr(),
                RECV_BATCH as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        match u64::try_from(n) {
            Ok(n) => {
                received.fetch_add(n, Ordering::Relaxed);
            }
            Err(_) => match io::Error::last_os_error().raw_os_error() {
                Some(libc::EAGAIN | libc::EINTR) => {}
                // Nothing sensible to do on a broken socket but stop
                // counting: the run then shows the loss.
                _ => return,
            },
        }
    }
}

fn set_int_opt(
    sock: &UdpSocket,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: a valid socket and a c_int option value of the size passed.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One measured UDP run of one path.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct UdpRun {
    pub sent: u64,
    /// Datagrams the path's counter received from the start of the run
    /// until its count settled after the sender stopped.
    pub received: u64,
    /// The sender's time: both rates are over it.
    pub seconds: f64,
    pub sent_per_s: f64,
    pub received_per_s: f64,
    /// Share of the sent datagrams that did not arrive, in percent.
    pub loss_pct: f64,
    pub would_block: u64,
    pub refused: u64,
    /// Busy CPU seconds of the whole machine during the run.
    pub machine_cpu_s: f64,
    /// UDP frames counted by the XDP program on eth0 of node A and node B
    /// during the run (which nodes' XDP hook the datagrams went through).
    pub xdp_frames_a: u64,
    pub xdp_frames_b: u64,
}

impl UdpRun {
    /// The rates and loss of a run from its raw counts (XDP counts left at
    /// zero).
    #[must_use]
    pub fn new(blast: &Blast, received: u64, machine_cpu_s: f64) -> UdpRun {
        let rate = |n: u64| {
            if blast.seconds > 0.0 {
                n as f64 / blast.seconds
            } else {
                0.0
            }
        };
        UdpRun {
            sent: blast.sent,
            received,
            seconds: blast.seconds,
            sent_per_s: rate(blast.sent),
            received_per_s: rate(received),
            loss_pct: loss_pct(blast.sent, received),
            would_block: blast.would_block,
            refused: blast.refused,
            machine_cpu_s,
            xdp_frames_a: 0,
            xdp_frames_b: 0,
        }
    }

    /// Busy CPU seconds of the machine per million datagrams delivered.
    pub fn cpu_s_per_million(&self) -> Option<f64> {
        (self.received > 0).then(|| self.machine_cpu_s / self.received as f64 * 1e6)
    }
}

/// Percentage of `sent` that was not `received`; 0 when nothing was sent,
/// and never negative (a stray datagram from an earlier run is not a gain).
pub fn loss_pct(sent: u64, received: u64) -> f64 {
    if sent == 0 {
        return 0.0;
    }
    sent.saturating_sub(received) as f64 / sent as f64 * 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_the_ethernet_minimum() {
        assert_eq!(FRAME_BYTES, 64);
    }

    #[test]
    fn loss_is_a_share_of_what_was_sent() {
        assert_eq!(loss_pct(1000, 750), 25.0);
        assert_eq!(loss_pct(1000, 1000), 0.0);
        assert_eq!(loss_pct(1000, 1003), 0.0);
        assert_eq!(loss_pct(0, 0), 0.0);
        assert_eq!(loss_pct(4, 0), 100.0);
    }

    #[test]
    fn run_rates_are_over_the_senders_time() {
        let b = Blast {
            sent: 2_000_000,
            seconds: 2.0,
            would_block: 3,
            refused: 0,
        };
        let r = UdpRun::new(&b, 1_500_000, 3.0);
        assert_eq!(r.sent_per_s, 1_000_000.0);
        assert_eq!(r.received_per_s, 750_000.0);
        assert_eq!(r.loss_pct, 25.0);
        assert_eq!(r.would_block, 3);
        // 3 CPU seconds for 1.5M delivered datagrams.
        assert_eq!(r.cpu_s_per_million(), Some(2.0));
    }

    #[test]
    fn an_empty_run_has_no_rates_and_no_cpu_per_datagram() {
        let r = UdpRun::new(&Blast::default(), 0, 1.0);
        assert_eq!(
            (r.sent_per_s, r.received_per_s, r.loss_pct),
            (0.0, 0.0, 0.0)
        );
        assert_eq!(r.cpu_s_per_million(), None);
    }

    proptest::proptest! {
        #[test]
        fn loss_stays_within_0_and_100(sent in 0u64..1 << 40, received in 0u64..1 << 40) {
            let l = loss_pct(sent, received);
            proptest::prop_assert!((0.0..=100.0).contains(&l));
        }
    }

    /// Sender and counter over loopback in a throwaway namespace (needs
    /// root, as the harness does): datagrams go out and are counted, and
    /// the count never exceeds what was sent.
    #[test]
    fn sender_and_counter_agree_over_loopback() {
        let ns = Netns::create_unique("udpt").unwrap();
        let to = SocketAddr::from((Ipv4Addr::LOCALHOST, 9500));
        let c = UdpCounter::start(&ns, to).unwrap();
        let b = blast(&ns, to, Duration::from_millis(200)).unwrap();
        let got = c.settled(Duration::from_secs(1));
        assert!(b.sent > 0, "{b:?}");
        assert!(got > 0 && got <= b.sent, "{got} of {b:?}");
    }
}
