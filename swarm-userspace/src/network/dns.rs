//! The embedded DNS server: every task's resolver, docker's 127.0.0.11.
//!
//! Owns service discovery by name: [`DnsTable`] (pure: which names a task
//! may resolve and to what) and [`DnsServer`] (one UDP and one TCP socket
//! on 127.0.0.11:53 inside each attached task's network namespace).
//! A name is answered only on networks the asking task is attached to;
//! every other query is relayed unchanged to the node's own resolvers,
//! from the daemon's network namespace. Must never answer a name from a
//! network the asker does not share, never write the DNS wire format by
//! hand (hickory-proto does), and never move a runtime thread into another
//! namespace ([`run_in_netns`] uses a thread of its own).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use super::netns::run_in_netns;

use hickory_proto::op::{Edns, Header, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, PTR};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::BinDecodable;
use rand::Rng;
use rand::seq::SliceRandom;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio_util::sync::{CancellationToken, DropGuard};

/// Where every task finds its resolver, as in docker.
pub const DNS_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 11)), 53);

/// TTL of the answers we make, in seconds. Task addresses change whenever
/// a task is rescheduled or a dnsrr service scales, and clients (glibc
/// callers with nscd, the JVM, language runtimes) cache for the TTL:
/// docker's 600 s would keep them calling dead tasks for ten minutes. 5 s
/// (Kubernetes' cluster DNS uses the same) bounds that window while still
/// letting a client that resolves per request reuse its answer.
pub const TTL: u32 = 5;

/// How long one upstream resolver has to answer a forwarded query.
pub const DEFAULT_FORWARD_TIMEOUT: Duration = Duration::from_secs(2);

/// The EDNS payload size we advertise and the largest UDP answer we send
/// (the DNS flag day 2020 value: fits every path MTU without fragments).
const MAX_UDP_PAYLOAD: u16 = 1232;
/// Queries are small; anything longer than this over UDP is not DNS.
const UDP_RECV_BUF: usize = 4096;
/// Queries of one task answered at once; more are dropped (the client
/// retries), so a flooding task cannot make the daemon spawn without bound.
const MAX_INFLIGHT_QUERIES: usize = 256;
/// Open TCP connections of one task.
const MAX_TCP_CONNECTIONS: usize = 32;
/// A TCP connection idle this long is closed (RFC 7766 suggests seconds).
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// How a service is reached by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceEndpoint {
    /// One virtual IP on this network, load-balanced by the data plane.
    Vip(Ipv4Addr),
    /// DNS round robin: the name resolves to the task addresses.
    Dnsrr,
}

/// A service on one network (a service on two networks has two records).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRecord {
    pub service_id: String,
    pub name: String,
    pub network_id: String,
    pub aliases: Vec<String>,
    pub endpoint: ServiceEndpoint,
}

/// A task's address on one network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRecord {
    pub task_id: String,
    pub service_id: String,
    /// docker's task name: "<service>.<slot>.<task id>" (or
    /// "<service>.<node id>.<task id>" for global services).
    pub name: String,
    pub network_id: String,
    pub addr: Ipv4Addr,
    pub aliases: Vec<String>,
}

/// The names of the cluster, indexed by network for lookups. Immutable:
/// the server swaps in a new table when the cluster changes.
#[derive(Debug, Default, Clone)]
pub struct DnsTable {
    /// network ID → name → addresses, for service names, service aliases
    /// and `tasks.<name>`. Service names win over task names.
    services: HashMap<String, HashMap<String, Vec<Ipv4Addr>>>,
    /// network ID → name → addresses, for task names and task aliases
    /// (an alias shared by several tasks resolves to all of them).
    tasks: HashMap<String, HashMap<String, Vec<Ipv4Addr>>>,
    /// network ID → address → name, for PTR queries.
    reverse: HashMap<String, HashMap<Ipv4Addr, String>>,
    /// network name → network ID, for docker's `<name>.<network>` form.
    network_names: HashMap<String, String>,
    /// network ID → network name, for PTR answers.
    network_ids: HashMap<String, String>,
}

/// Names are compared case-insensitively and without the root dot.
fn normalize(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

impl DnsTable {
    /// Indexes the records. Addresses keep the order of `tasks`; answers
    /// shuffle them.
    pub fn new(services: Vec<ServiceRecord>, tasks: Vec<TaskRecord>) -> Self {
        let mut table = DnsTable::default();
        let mut by_service: HashMap<(&str, &str), Vec<Ipv4Addr>> = HashMap::new();
        for task in &tasks {
            by_service
                .entry((task.service_id.as_str(), task.network_id.as_str()))
                .or_default()
                .push(task.addr);
        }
        for svc in &services {
            let task_addrs = by_service
                .get(&(svc.service_id.as_str(), svc.network_id.as_str()))
                .cloned()
                .unwrap_or_default();
            let addrs = match svc.endpoint {
                ServiceEndpoint::Vip(vip) => vec![vip],
                ServiceEndpoint::Dnsrr => task_addrs.clone(),
            };
            let names = table.services.entry(svc.network_id.clone()).or_default();
            for name in std::iter::once(&svc.name).chain(&svc.aliases) {
                let name = normalize(name);
                if name.is_empty() {
                    continue;
                }
                names.insert(format!("tasks.{name}"), task_addrs.clone());
                names.insert(name, addrs.clone());
            }
            if let ServiceEndpoint::Vip(vip) = svc.endpoint {
                table
                    .reverse
                    .entry(svc.network_id.clone())
                    .or_default()
                    .insert(vip, normalize(&svc.name));
            }
        }
        for task in &tasks {
            let names = table.tasks.entry(task.network_id.clone()).or_default();
            for name in std::iter::once(&task.name).chain(&task.aliases) {
                let name = normalize(name);
                if name.is_empty() {
                    continue;
                }
                let addrs = names.entry(name).or_default();
                if !addrs.contains(&task.addr) {
                    addrs.push(task.addr);
                }
            }
            table
                .reverse
                .entry(task.network_id.clone())
                .or_default()
                .insert(task.addr, normalize(&task.name));
        }
        table
    }

    /// Network names (ID, name), so that `<name>.<network name>` resolves
    /// too and PTR answers end with the network name, as in docker.
    pub fn with_network_names(mut self, names: impl IntoIterator<Item = (String, String)>) -> Self {
        for (id, name) in names {
            self.network_names.insert(normalize(&name), id.clone());
            self.network_ids.insert(id, normalize(&name));
        }
        self
    }

    fn get(&self, network: &str, name: &str) -> Option<&[Ipv4Addr]> {
        self.services
            .get(network)
            .and_then(|names| names.get(name))
            .or_else(|| self.tasks.get(network).and_then(|names| names.get(name)))
            .map(Vec::as_slice)
    }

    /// The IPv4 addresses of `name` for a task attached to `networks`, or
    /// `None` if the name is not a cluster name on any of them (then it is
    /// forwarded). As docker, the first of the asker's networks that knows
    /// the name answers. `Some(&[])` is a known name without addresses (a
    /// dnsrr service with no tasks yet).
    pub fn lookup(&self, name: &str, networks: &[String]) -> Option<&[Ipv4Addr]> {
        let name = normalize(name);
        if let Some(found) = networks.iter().find_map(|net| self.get(net, &name)) {
            return Some(found);
        }
        // `<name>.<network name>`: the network part may itself hold dots.
        name.match_indices('.').find_map(|(i, _)| {
            let network = self.network_names.get(&name[i + 1..])?;
            if !networks.contains(network) {
                return None;
            }
            self.get(network, &name[..i])
        })
    }

    /// The name of `addr` (a task address or a VIP) on one of `networks`:
    /// as docker, `<task or service name>.<network name>`, or the bare name
    /// when the network's name is not known.
    pub fn reverse(&self, addr: Ipv4Addr, networks: &[String]) -> Option<String> {
        networks.iter().find_map(|net| {
            let name = self.reverse.get(net)?.get(&addr)?;
            Some(match self.network_ids.get(net) {
                Some(network) => format!("{name}.{network}"),
                None => name.clone(),
            })
        })
    }
}

/// What to do with one query.
#[derive(Debug)]
pub enum Decision {
    /// We answer it ourselves.
    Answer(Message),
    /// Not a cluster name for this asker: ask the node's resolvers.
    Forward,
}

/// Decides a parsed query from a task attached to `networks`. Pure but
/// for `rng`, which orders multi-address answers.
pub fn decide(
    table: &DnsTable,
    networks: &[String],
    req: &Message,
    rng: &mut impl Rng,
) -> Decision {
    if req.op_code() != OpCode::Query {
        return Decision::Answer(reply(req, ResponseCode::NotImp));
    }
    let [query] = req.queries() else {
        return Decision::Answer(reply(req, ResponseCode::FormErr));
    };
    if query.query_class() != DNSClass::IN {
        return Decision::Forward;
    }
    let qname = query.name();
    if query.query_type() == RecordType::PTR {
        let Some(addr) = arpa_v4(qname) else {
            return Decision::Forward;
        };
        let Some(name) = table.reverse(addr, networks) else {
            return Decision::Forward;
        };
        // Cluster names are single labels or dotted docker task names;
        // both make valid absolute names. One that does not (a stray
        // byte in a name) is better forwarded than answered wrong.
        let Ok(target) = Name::from_ascii(format!("{name}.")) else {
            return Decision::Forward;
        };
        let mut resp = reply(req, ResponseCode::NoError);
        resp.set_authoritative(true);
        resp.add_answer(Record::from_rdata(
            qname.clone(),
            TTL,
            RData::PTR(PTR(target)),
        ));
        return Decision::Answer(resp);
    }
    let Some(addrs) = table.lookup(&qname.to_ascii(), networks) else {
        return Decision::Forward;
    };
    let mut resp = reply(req, ResponseCode::NoError);
    resp.set_authoritative(true);
    // Only A has data; any other type of a known name is NODATA (NOERROR
    // and no answer), never NXDOMAIN: resolvers that ask A and AAAA
    // together give up on the name if either says it does not exist.
    if matches!(query.query_type(), RecordType::A | RecordType::ANY) {
        let mut addrs = addrs.to_vec();
        addrs.shuffle(rng);
        for addr in addrs {
            // The asked name as asked (case too): 0x20-randomizing
            // resolvers compare it byte for byte.
            resp.add_answer(Record::from_rdata(qname.clone(), TTL, RData::A(A(addr))));
        }
    }
    Decision::Answer(resp)
}

/// The IPv4 address of an `in-addr.arpa` name for a single host.
fn arpa_v4(name: &Name) -> Option<Ipv4Addr> {
    let mut name = name.clone();
    // parse_arpa_name wants an absolute name; queries always are, but a
    // name built by a caller may not be.
    name.set_fqdn(true);
    match name.parse_arpa_name().ok()? {
        ipnet::IpNet::V4(net) if net.prefix_len() == 32 => Some(net.addr()),
        _ => None,
    }
}

/// An empty response to `req` with its ID, question, flags and EDNS.
fn reply(req: &Message, code: ResponseCode) -> Message {
    let mut resp = Message::error_msg(req.id(), req.op_code(), code);
    resp.set_recursion_desired(req.recursion_desired())
        .set_recursion_available(true)
        .set_checking_disabled(req.checking_disabled());
    resp.add_queries(req.queries().iter().cloned());
    if req.extensions().is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(MAX_UDP_PAYLOAD);
        resp.set_edns(edns);
    }
    resp
}

/// How a query arrived, which bounds the size of its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// The largest answer `req` may get over `transport`: 512 bytes over UDP
/// without EDNS, the client's EDNS size (at most ours) with it.
fn size_limit(req: &Message, transport: Transport) -> usize {
    match transport {
        Transport::Tcp => usize::from(u16::MAX),
        Transport::Udp => match req.extensions() {
            Some(edns) => usize::from(edns.max_payload().clamp(512, MAX_UDP_PAYLOAD)),
            None => 512,
        },
    }
}

/// Encodes `resp`, dropping answers that do not fit in `limit` bytes and
/// setting TC if any were dropped (the client then asks again over TCP;
/// one that cannot still gets the addresses that fit).
pub fn encode(mut resp: Message, limit: usize) -> Result<Vec<u8>, DnsError> {
    let mut bytes = resp.to_vec()?;
    if bytes.len() <= limit {
        return Ok(bytes);
    }
    resp.set_truncated(true);
    let mut answers = resp.take_answers();
    // Answers are equal in size here (A or one PTR): estimate how many
    // fit, then correct by one at a time.
    let per = (bytes.len() / answers.len().max(1)).max(1);
    answers.truncate(limit / per);
    loop {
        resp.answers_mut().clone_from(&answers);
        bytes = resp.to_vec()?;
        if bytes.len() <= limit || answers.is_empty() {
            return Ok(bytes);
        }
        answers.pop();
    }
}

/// Errors of the DNS server.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error(
        "cannot open the DNS server's sockets on {addr} in network namespace {}: {source}; \
         check that the namespace exists and its loopback interface is up",
        netns.display()
    )]
    Bind {
        netns: PathBuf,
        addr: SocketAddr,
        source: io::Error,
    },
    #[error("cannot encode a DNS message: {0}")]
    Encode(#[from] hickory_proto::ProtoError),
    #[error("cannot read the node's resolver configuration {}: {source}", path.display())]
    ResolvConf { path: PathBuf, source: io::Error },
    #[error("DNS server for task {task_id} stopped before it started: {reason}")]
    Start { task_id: String, reason: String },
}

/// The nameservers of a resolv.conf text, port 53. Scoped IPv6 addresses
/// (`fe80::1%eth0`) are skipped: they name an interface of their own
/// namespace. Lines that do not parse are skipped, as glibc does.
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let line = line.split(['#', ';']).next().unwrap_or("");
            let mut words = line.split_whitespace();
            if words.next() != Some("nameserver") {
                return None;
            }
            let addr: IpAddr = words.next()?.parse().ok()?;
            Some(SocketAddr::new(addr, 53))
        })
        .collect()
}

/// The node's resolvers, from its resolv.conf (normally /etc/resolv.conf).
pub fn read_resolv_conf(path: &Path) -> Result<Vec<SocketAddr>, DnsError> {
    std::fs::read_to_string(path)
        .map(|text| parse_resolv_conf(&text))
        .map_err(|source| DnsError::ResolvConf {
            path: path.to_owned(),
            source,
        })
}

/// Binds a UDP socket and a TCP listener on `addr` inside the network
/// namespace at `netns`, both nonblocking, ready for tokio's `from_std`.
pub fn bind_in_netns(
    netns: &Path,
    addr: SocketAddr,
) -> io::Result<(std::net::UdpSocket, std::net::TcpListener)> {
    run_in_netns(netns, move || {
        let udp = std::net::UdpSocket::bind(addr)?;
        udp.set_nonblocking(true)?;
        let tcp = std::net::TcpListener::bind(addr)?;
        tcp.set_nonblocking(true)?;
        Ok((udp, tcp))
    })
}

/// The state every attachment's server shares.
struct Resolver {
    table: RwLock<Arc<DnsTable>>,
    upstreams: Vec<SocketAddr>,
    forward_timeout: Duration,
}

/// Query outcomes, for the metrics.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    Answered,
    Forwarded,
    NxDomain,
    ServFail,
    Invalid,
}

fn count(outcome: Outcome) {
    let result = match outcome {
        Outcome::Answered => "answered",
        Outcome::Forwarded => "forwarded",
        Outcome::NxDomain => "nxdomain",
        Outcome::ServFail => "servfail",
        Outcome::Invalid => "invalid",
    };
    crate::metrics::metrics()
        .dns_queries
        .get_or_create(&crate::metrics::ResultLabel {
            result: result.into(),
        })
        .inc();
}

impl Resolver {
    fn table(&self) -> Arc<DnsTable> {
        self.table
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The answer to one query from a task attached to `networks`, or
    /// `None` if nothing should be sent back (not a query, or unreadable).
    async fn handle(
        &self,
        query: &[u8],
        networks: &[String],
        transport: Transport,
    ) -> Option<Vec<u8>> {
        let req = match Message::from_vec(query) {
            Ok(req) => req,
            Err(e) => {
                tracing::debug!(error = %e, "dns: unreadable query");
                count(Outcome::Invalid);
                // Answer FORMERR if at least the header is readable, so the
                // client does not wait for its timeout.
                let header = Header::from_bytes(query).ok()?;
                if header.message_type() != MessageType::Query {
                    return None;
                }
                let resp = Message::error_msg(header.id(), header.op_code(), ResponseCode::FormErr);
                return resp.to_vec().ok();
            }
        };
        if req.message_type() != MessageType::Query {
            return None;
        }
        let decision = decide(&self.table(), networks, &req, &mut rand::rng());
        let resp = match decision {
            Decision::Answer(resp) => {
                count(Outcome::Answered);
                resp
            }
            Decision::Forward => match self.forward(query, req.id(), transport).await {
                Some((bytes, code)) => {
                    count(if code == ResponseCode::NXDomain {
                        Outcome::NxDomain
                    } else {
                        Outcome::Forwarded
                    });
                    return Some(bytes);
                }
                None => {
                    count(Outcome::ServFail);
                    reply(&req, ResponseCode::ServFail)
                }
            },
        };
        match encode(resp, size_limit(&req, transport)) {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                tracing::warn!(error = %e, "dns: cannot encode an answer");
                None
            }
        }
    }

    /// Asks the upstreams in order; the first answer is relayed as it came
    /// (same ID, same bytes). Over UDP first; a truncated answer is
    /// fetched again over TCP when the client came over TCP (a UDP client
    /// gets the truncated answer and comes back over TCP itself).
    async fn forward(
        &self,
        query: &[u8],
        id: u16,
        transport: Transport,
    ) -> Option<(Vec<u8>, ResponseCode)> {
        for &upstream in &self.upstreams {
            let udp = match forward_udp(upstream, query, id, self.forward_timeout).await {
                Ok(answer) => answer,
                Err(e) => {
                    tracing::debug!(%upstream, error = %e, "dns: upstream did not answer over UDP");
                    continue;
                }
            };
            if !(udp.1.truncated() && transport == Transport::Tcp) {
                return Some((udp.0, udp.1.response_code()));
            }
            match forward_tcp(upstream, query, id, self.forward_timeout).await {
                Ok((bytes, header)) => return Some((bytes, header.response_code())),
                Err(e) => {
                    tracing::debug!(%upstream, error = %e, "dns: upstream did not answer over TCP");
                    // The truncated answer still holds what fitted.
                    return Some((udp.0, udp.1.response_code()));
                }
            }
        }
        None
    }
}

/// Checks that `bytes` is a response to query `id` and returns its header.
fn check_response(bytes: &[u8], id: u16) -> io::Result<Header> {
    let header = Header::from_bytes(bytes)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    if header.id() != id || header.message_type() != MessageType::Response {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a response to our query",
        ));
    }
    Ok(header)
}

/// One query over UDP from a fresh socket (a random source port per query,
/// against spoofed answers), in the daemon's own network namespace.
async fn forward_udp(
    upstream: SocketAddr,
    query: &[u8],
    id: u16,
    timeout: Duration,
) -> io::Result<(Vec<u8>, Header)> {
    let local: SocketAddr = match upstream {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let exchange = async {
        let sock = UdpSocket::bind(local).await?;
        // Connected: the kernel drops datagrams from any other source.
        sock.connect(upstream).await?;
        sock.send(query).await?;
        let mut buf = vec![0u8; usize::from(u16::MAX)];
        loop {
            let n = sock.recv(&mut buf).await?;
            // A stray or late datagram for another ID: keep waiting.
            if let Ok(header) = check_response(&buf[..n], id) {
                buf.truncate(n);
                return Ok((buf, header));
            }
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer in time"))?
}

/// One query over TCP (RFC 1035 4.2.2 framing: a 2-byte length first).
async fn forward_tcp(
    upstream: SocketAddr,
    query: &[u8],
    id: u16,
    timeout: Duration,
) -> io::Result<(Vec<u8>, Header)> {
    let len = u16::try_from(query.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "query too long"))?;
    let exchange = async {
        let mut stream = TcpStream::connect(upstream).await?;
        let mut framed = Vec::with_capacity(query.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(query);
        stream.write_all(&framed).await?;
        let n = stream.read_u16().await?;
        let mut buf = vec![0u8; usize::from(n)];
        stream.read_exact(&mut buf).await?;
        let header = check_response(&buf, id)?;
        Ok((buf, header))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer in time"))?
}

/// The networks of one attached task; the servers read them per query.
type Networks = Arc<RwLock<Arc<Vec<String>>>>;

fn read_networks(networks: &Networks) -> Arc<Vec<String>> {
    networks
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone()
}

struct Attachment {
    networks: Networks,
    /// Dropping it (detach, re-attach, server dropped) stops the servers.
    _stop: DropGuard,
}

struct Inner {
    resolver: Arc<Resolver>,
    attachments: Mutex<HashMap<String, Attachment>>,
}

/// The node's DNS server: one resolver (table, upstreams) serving every
/// attached task's namespace. Cheap to clone; the servers stop when the
/// last clone is dropped.
#[derive(Clone)]
pub struct DnsServer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for DnsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsServer")
            .field("upstreams", &self.inner.resolver.upstreams)
            .field("attached", &self.attached())
            .finish()
    }
}

impl DnsServer {
    /// A server that forwards names it does not own to `upstreams` (the
    /// node's resolvers, see [`read_resolv_conf`]); none means SERVFAIL.
    pub fn new(upstreams: Vec<SocketAddr>) -> Self {
        Self::with_forward_timeout(upstreams, DEFAULT_FORWARD_TIMEOUT)
    }

    /// As [`DnsServer::new`], with the time each upstream has to answer.
    pub fn with_forward_timeout(upstreams: Vec<SocketAddr>, forward_timeout: Duration) -> Self {
        DnsServer {
            inner: Arc::new(Inner {
                resolver: Arc::new(Resolver {
                    table: RwLock::new(Arc::new(DnsTable::default())),
                    upstreams,
                    forward_timeout,
                }),
                attachments: Mutex::new(HashMap::new()),
            }),
        }
    }

    fn attachments(&self) -> std::sync::MutexGuard<'_, HashMap<String, Attachment>> {
        self.inner
            .attachments
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Replaces every name at once; queries in flight finish on the old
    /// table.
    pub fn set_table(&self, table: DnsTable) {
        *self
            .inner
            .resolver
            .table
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(table);
    }

    /// Binds 127.0.0.11:53 (UDP and TCP) inside the network namespace at
    /// `netns` (a bind-mounted nsfs file) and serves the task's queries
    /// until detach/drop. The namespace's loopback must be up. Attaching a
    /// task again replaces its previous servers.
    pub async fn attach(
        &self,
        task_id: &str,
        netns: &Path,
        networks: Vec<String>,
    ) -> Result<(), DnsError> {
        self.detach(task_id);
        let path = netns.to_owned();
        let bind_err = |source| DnsError::Bind {
            netns: netns.to_owned(),
            addr: DNS_ADDR,
            source,
        };
        let mut attempt = 0;
        let (udp, tcp) = loop {
            let path = path.clone();
            let bound = tokio::task::spawn_blocking(move || bind_in_netns(&path, DNS_ADDR))
                .await
                .map_err(|e| DnsError::Start {
                    task_id: task_id.to_owned(),
                    reason: e.to_string(),
                })?;
            match bound {
                Ok(sockets) => break sockets,
                // A previous server of this task may still be closing its
                // sockets (its tasks end on their next poll).
                Err(e) if e.kind() == io::ErrorKind::AddrInUse && attempt < 20 => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => return Err(bind_err(e)),
            }
        };
        let udp = Arc::new(UdpSocket::from_std(udp).map_err(bind_err)?);
        let tcp = TcpListener::from_std(tcp).map_err(bind_err)?;
        let stop = CancellationToken::new();
        let networks: Networks = Arc::new(RwLock::new(Arc::new(networks)));
        let resolver = &self.inner.resolver;
        tokio::spawn(serve_udp(
            udp,
            resolver.clone(),
            networks.clone(),
            stop.clone(),
        ));
        tokio::spawn(serve_tcp(
            tcp,
            resolver.clone(),
            networks.clone(),
            stop.clone(),
        ));
        tracing::debug!(task_id, netns = %netns.display(), "dns: serving");
        self.attachments().insert(
            task_id.to_owned(),
            Attachment {
                networks,
                _stop: stop.drop_guard(),
            },
        );
        Ok(())
    }

    /// Changes the networks an attached task resolves names on (it was
    /// connected to or disconnected from a network). No-op if not attached.
    pub fn set_networks(&self, task_id: &str, networks: Vec<String>) {
        if let Some(att) = self.attachments().get(task_id) {
            *att.networks
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(networks);
        }
    }

    /// Stops serving the task's namespace (its sockets close).
    pub fn detach(&self, task_id: &str) {
        self.attachments().remove(task_id);
    }

    /// The attached tasks, sorted.
    pub fn attached(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.attachments().keys().cloned().collect();
        ids.sort();
        ids
    }
}

async fn serve_udp(
    sock: Arc<UdpSocket>,
    resolver: Arc<Resolver>,
    networks: Networks,
    stop: CancellationToken,
) {
    let inflight = Arc::new(Semaphore::new(MAX_INFLIGHT_QUERIES));
    let mut buf = vec![0u8; UDP_RECV_BUF];
    loop {
        let (n, peer) = tokio::select! {
            () = stop.cancelled() => return,
            received = sock.recv_from(&mut buf) => match received {
                Ok(received) => received,
                Err(e) => {
                    tracing::debug!(error = %e, "dns: UDP receive failed");
                    continue;
                }
            },
        };
        let Ok(permit) = inflight.clone().try_acquire_owned() else {
            continue;
        };
        let query = buf[..n].to_vec();
        let (sock, resolver, networks, stop) = (
            sock.clone(),
            resolver.clone(),
            read_networks(&networks),
            stop.clone(),
        );
        tokio::spawn(async move {
            let _permit = permit;
            tokio::select! {
                () = stop.cancelled() => {}
                answer = resolver.handle(&query, &networks, Transport::Udp) => {
                    if let Some(answer) = answer
                        && let Err(e) = sock.send_to(&answer, peer).await
                    {
                        tracing::debug!(error = %e, "dns: UDP send failed");
                    }
                }
            }
        });
    }
}

async fn serve_tcp(
    listener: TcpListener,
    resolver: Arc<Resolver>,
    networks: Networks,
    stop: CancellationToken,
) {
    let connections = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    loop {
        let stream = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::debug!(error = %e, "dns: TCP accept failed");
                    // Out of descriptors and the like: do not spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            continue;
        };
        let (resolver, networks, stop) = (resolver.clone(), networks.clone(), stop.clone());
        tokio::spawn(async move {
            let _permit = permit;
            tokio::select! {
                () = stop.cancelled() => {}
                () = serve_connection(stream, &resolver, &networks) => {}
            }
        });
    }
}

/// Queries on one TCP connection, answered in turn until the client
/// closes it or stays idle.
async fn serve_connection(mut stream: TcpStream, resolver: &Resolver, networks: &Networks) {
    loop {
        let Ok(Ok(len)) = tokio::time::timeout(TCP_IDLE_TIMEOUT, stream.read_u16()).await else {
            return;
        };
        let mut query = vec![0u8; usize::from(len)];
        let Ok(Ok(_)) = tokio::time::timeout(TCP_IDLE_TIMEOUT, stream.read_exact(&mut query)).await
        else {
            return;
        };
        let networks = read_networks(networks);
        let Some(answer) = resolver.handle(&query, &networks, Transport::Tcp).await else {
            continue;
        };
        let Ok(len) = u16::try_from(answer.len()) else {
            return;
        };
        let mut framed = Vec::with_capacity(answer.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(&answer);
        if stream.write_all(&framed).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn nets(ids: &[&str]) -> Vec<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    fn service(id: &str, name: &str, net: &str, endpoint: ServiceEndpoint) -> ServiceRecord {
        ServiceRecord {
            service_id: id.into(),
            name: name.into(),
            network_id: net.into(),
            aliases: vec![],
            endpoint,
        }
    }

    fn task(id: &str, service_id: &str, name: &str, net: &str, addr: &str) -> TaskRecord {
        TaskRecord {
            task_id: id.into(),
            service_id: service_id.into(),
            name: name.into(),
            network_id: net.into(),
            addr: ip(addr),
            aliases: vec![],
        }
    }

    /// web: vip on net1 (10.0.1.2) and net2 (10.0.2.2), 2 tasks on each.
    /// db: dnsrr on net1, 2 tasks, alias "database".
    /// secret: vip on net3 only.
    fn table() -> DnsTable {
        let mut db = service("s-db", "db", "net1", ServiceEndpoint::Dnsrr);
        db.aliases = vec!["Database".into()];
        let mut t1 = task("t1", "s-web", "web.1.t1", "net1", "10.0.1.10");
        t1.aliases = vec!["web-one".into()];
        DnsTable::new(
            vec![
                service("s-web", "web", "net1", ServiceEndpoint::Vip(ip("10.0.1.2"))),
                service("s-web", "web", "net2", ServiceEndpoint::Vip(ip("10.0.2.2"))),
                db,
                service(
                    "s-sec",
                    "secret",
                    "net3",
                    ServiceEndpoint::Vip(ip("10.0.3.2")),
                ),
            ],
            vec![
                t1,
                task("t2", "s-web", "web.2.t2", "net1", "10.0.1.11"),
                task("t1", "s-web", "web.1.t1", "net2", "10.0.2.10"),
                task("t2", "s-web", "web.2.t2", "net2", "10.0.2.11"),
                task("t3", "s-db", "db.1.t3", "net1", "10.0.1.20"),
                task("t4", "s-db", "db.2.t4", "net1", "10.0.1.21"),
                task("t5", "s-sec", "secret.1.t5", "net3", "10.0.3.10"),
            ],
        )
        .with_network_names([
            ("net1".into(), "front".into()),
            ("net3".into(), "back".into()),
        ])
    }

    fn sorted(addrs: Option<&[Ipv4Addr]>) -> Option<Vec<Ipv4Addr>> {
        addrs.map(|a| {
            let mut a = a.to_vec();
            a.sort();
            a
        })
    }

    #[test]
    fn vip_service_resolves_to_the_vip_of_the_first_shared_network() {
        let t = table();
        assert_eq!(
            t.lookup("web", &nets(&["net1"])),
            Some(&[ip("10.0.1.2")][..])
        );
        assert_eq!(
            t.lookup("web", &nets(&["net2"])),
            Some(&[ip("10.0.2.2")][..])
        );
        assert_eq!(
            t.lookup("web", &nets(&["net2", "net1"])),
            Some(&[ip("10.0.2.2")][..])
        );
    }

    #[test]
    fn dnsrr_service_resolves_to_its_tasks() {
        let t = table();
        let want = Some(vec![ip("10.0.1.20"), ip("10.0.1.21")]);
        assert_eq!(sorted(t.lookup("db", &nets(&["net1"]))), want);
        assert_eq!(sorted(t.lookup("database", &nets(&["net1"]))), want);
        assert_eq!(sorted(t.lookup("tasks.db", &nets(&["net1"]))), want);
        assert_eq!(sorted(t.lookup("tasks.database", &nets(&["net1"]))), want);
    }

    #[test]
    fn tasks_name_gives_task_addresses_in_vip_mode() {
        let t = table();
        assert_eq!(
            sorted(t.lookup("tasks.web", &nets(&["net2"]))),
            Some(vec![ip("10.0.2.10"), ip("10.0.2.11")])
        );
    }

    #[test]
    fn task_names_and_aliases() {
        let t = table();
        assert_eq!(
            t.lookup("web.1.t1", &nets(&["net1"])),
            Some(&[ip("10.0.1.10")][..])
        );
        assert_eq!(
            t.lookup("web.1.t1", &nets(&["net2"])),
            Some(&[ip("10.0.2.10")][..])
        );
        assert_eq!(
            t.lookup("web-one", &nets(&["net1"])),
            Some(&[ip("10.0.1.10")][..])
        );
        // The alias is the task's on net1 only.
        assert_eq!(t.lookup("web-one", &nets(&["net2"])), None);
    }

    #[test]
    fn names_are_case_insensitive_and_may_end_with_a_dot() {
        let t = table();
        assert_eq!(
            t.lookup("WEB.", &nets(&["net1"])),
            Some(&[ip("10.0.1.2")][..])
        );
        assert_eq!(
            t.lookup("Web.1.T1.", &nets(&["net1"])),
            Some(&[ip("10.0.1.10")][..])
        );
        assert!(t.lookup("DataBase.", &nets(&["net1"])).is_some());
    }

    #[test]
    fn names_on_networks_the_asker_does_not_share_are_unknown() {
        let t = table();
        assert_eq!(t.lookup("secret", &nets(&["net1", "net2"])), None);
        assert_eq!(t.lookup("tasks.secret", &nets(&["net1"])), None);
        assert_eq!(t.lookup("secret.1.t5", &nets(&["net1"])), None);
        assert_eq!(t.lookup("db", &nets(&["net2"])), None);
        assert_eq!(t.lookup("web", &[]), None);
        assert_eq!(t.reverse(ip("10.0.3.10"), &nets(&["net1"])), None);
        assert_eq!(t.lookup("secret.back", &nets(&["net1"])), None);
    }

    #[test]
    fn name_dot_network_name_as_docker() {
        let t = table();
        assert_eq!(
            t.lookup("web.front", &nets(&["net1"])),
            Some(&[ip("10.0.1.2")][..])
        );
        assert_eq!(
            t.lookup("web.1.t1.front.", &nets(&["net1", "net2"])),
            Some(&[ip("10.0.1.10")][..])
        );
        assert_eq!(
            t.lookup("secret.BACK", &nets(&["net3"])),
            Some(&[ip("10.0.3.2")][..])
        );
    }

    #[test]
    fn reverse_names_tasks_and_vips() {
        let t = table();
        assert_eq!(
            t.reverse(ip("10.0.1.10"), &nets(&["net1"])).as_deref(),
            Some("web.1.t1.front")
        );
        // net2's name is not known.
        assert_eq!(
            t.reverse(ip("10.0.2.2"), &nets(&["net2"])).as_deref(),
            Some("web")
        );
        assert_eq!(t.reverse(ip("10.0.2.2"), &nets(&["net1"])), None);
    }

    #[test]
    fn service_names_win_over_task_aliases() {
        let mut t = task("t9", "s-x", "x.1.t9", "net1", "10.0.1.99");
        t.aliases = vec!["web".into()];
        let table = DnsTable::new(
            vec![service(
                "s-web",
                "web",
                "net1",
                ServiceEndpoint::Vip(ip("10.0.1.2")),
            )],
            vec![t],
        );
        assert_eq!(
            table.lookup("web", &nets(&["net1"])),
            Some(&[ip("10.0.1.2")][..])
        );
    }

    #[test]
    fn dnsrr_service_without_tasks_is_known_but_empty() {
        let table = DnsTable::new(
            vec![service("s", "lonely", "n", ServiceEndpoint::Dnsrr)],
            vec![],
        );
        assert_eq!(table.lookup("lonely", &nets(&["n"])), Some(&[][..]));
        assert_eq!(table.lookup("tasks.lonely", &nets(&["n"])), Some(&[][..]));
    }

    fn query(name: &str, qtype: RecordType) -> Message {
        let mut m = Message::new();
        m.set_id(4242)
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Query)
            .set_recursion_desired(true);
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        m
    }

    fn answer(req: &Message, networks: &[&str]) -> Option<Message> {
        let mut rng = StdRng::seed_from_u64(7);
        match decide(&table(), &nets(networks), req, &mut rng) {
            Decision::Answer(m) => Some(m),
            Decision::Forward => None,
        }
    }

    fn a_records(m: &Message) -> Vec<Ipv4Addr> {
        m.answers()
            .iter()
            .filter_map(|r| match r.data() {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_query_is_answered_with_id_question_and_short_ttl() {
        let req = query("Web.", RecordType::A);
        let resp = answer(&req, &["net1"]).unwrap();
        assert_eq!(resp.id(), 4242);
        assert_eq!(resp.message_type(), MessageType::Response);
        assert_eq!(resp.response_code(), ResponseCode::NoError);
        assert!(resp.recursion_desired() && resp.recursion_available());
        assert_eq!(resp.queries(), req.queries());
        assert_eq!(a_records(&resp), vec![ip("10.0.1.2")]);
        assert_eq!(resp.answers()[0].ttl(), TTL);
        // The name as asked, case included.
        assert_eq!(resp.answers()[0].name().to_ascii(), "Web.");
    }

    #[test]
    fn aaaa_of_a_known_name_is_nodata_not_nxdomain() {
        let resp = answer(&query("web.", RecordType::AAAA), &["net1"]).unwrap();
        assert_eq!(resp.response_code(), ResponseCode::NoError);
        assert!(resp.answers().is_empty());
        let resp = answer(&query("db.", RecordType::MX), &["net1"]).unwrap();
        assert_eq!(resp.response_code(), ResponseCode::NoError);
        assert!(resp.answers().is_empty());
    }

    #[test]
    fn ptr_of_a_shared_address_is_answered_others_forwarded() {
        let resp = answer(
            &query("10.1.0.10.in-addr.arpa.", RecordType::PTR),
            &["net1"],
        )
        .unwrap();
        match resp.answers()[0].data() {
            RData::PTR(name) => assert_eq!(name.0.to_ascii(), "web.1.t1.front."),
            other => panic!("not a PTR: {other:?}"),
        }
        assert!(
            answer(
                &query("10.3.0.10.in-addr.arpa.", RecordType::PTR),
                &["net1"]
            )
            .is_none()
        );
        assert!(
            answer(
                &query("1.1.168.192.in-addr.arpa.", RecordType::PTR),
                &["net1"]
            )
            .is_none()
        );
    }

    #[test]
    fn unknown_and_unshared_names_are_forwarded() {
        assert!(answer(&query("example.com.", RecordType::A), &["net1"]).is_none());
        assert!(answer(&query("secret.", RecordType::A), &["net1", "net2"]).is_none());
        assert!(answer(&query("secret.", RecordType::AAAA), &["net1"]).is_none());
        assert!(answer(&query("secret.", RecordType::A), &["net3"]).is_some());
    }

    #[test]
    fn dnsrr_answers_are_shuffled() {
        let tasks: Vec<TaskRecord> = (0..20)
            .map(|i| {
                task(
                    &format!("t{i}"),
                    "s",
                    &format!("rr.{i}.t{i}"),
                    "n",
                    &format!("10.9.0.{i}"),
                )
            })
            .collect();
        let table = DnsTable::new(vec![service("s", "rr", "n", ServiceEndpoint::Dnsrr)], tasks);
        let mut rng = StdRng::seed_from_u64(1);
        let mut orders = std::collections::HashSet::new();
        for _ in 0..5 {
            let Decision::Answer(resp) = decide(
                &table,
                &nets(&["n"]),
                &query("rr.", RecordType::A),
                &mut rng,
            ) else {
                panic!("forwarded")
            };
            let addrs = a_records(&resp);
            assert_eq!(addrs.len(), 20);
            orders.insert(addrs);
        }
        assert!(orders.len() > 1, "the same order every time");
    }

    #[test]
    fn malformed_questions_get_errors() {
        let mut req = query("web.", RecordType::A);
        req.add_query(Query::query(
            Name::from_ascii("db.").unwrap(),
            RecordType::A,
        ));
        assert_eq!(
            answer(&req, &["net1"]).unwrap().response_code(),
            ResponseCode::FormErr
        );
        let mut req = query("web.", RecordType::A);
        req.set_op_code(OpCode::Status);
        assert_eq!(
            answer(&req, &["net1"]).unwrap().response_code(),
            ResponseCode::NotImp
        );
    }

    fn big_answer(n: u8) -> (Message, Message) {
        let mut req = query("big.", RecordType::A);
        let mut resp = reply(&req, ResponseCode::NoError);
        for i in 0..n {
            resp.add_answer(Record::from_rdata(
                Name::from_ascii("big.").unwrap(),
                TTL,
                RData::A(A(Ipv4Addr::new(10, 0, 0, i))),
            ));
        }
        req.set_id(1);
        (req, resp)
    }

    #[test]
    fn udp_answers_over_512_bytes_are_truncated_with_tc() {
        let (req, resp) = big_answer(100);
        let bytes = encode(resp.clone(), size_limit(&req, Transport::Udp)).unwrap();
        assert!(bytes.len() <= 512);
        let got = Message::from_vec(&bytes).unwrap();
        assert!(got.truncated());
        assert!(!got.answers().is_empty(), "as many answers as fit");
        // Over TCP it all fits.
        let bytes = encode(resp, size_limit(&req, Transport::Tcp)).unwrap();
        let got = Message::from_vec(&bytes).unwrap();
        assert!(!got.truncated());
        assert_eq!(got.answers().len(), 100);
    }

    #[test]
    fn edns_raises_the_udp_limit() {
        let (mut req, _) = big_answer(0);
        let mut edns = Edns::new();
        edns.set_max_payload(4096);
        req.set_edns(edns);
        assert_eq!(
            size_limit(&req, Transport::Udp),
            usize::from(MAX_UDP_PAYLOAD)
        );
        let mut resp = reply(&req, ResponseCode::NoError);
        for i in 0..50 {
            resp.add_answer(Record::from_rdata(
                Name::from_ascii("big.").unwrap(),
                TTL,
                RData::A(A(Ipv4Addr::new(10, 0, 0, i))),
            ));
        }
        let got =
            Message::from_vec(&encode(resp, size_limit(&req, Transport::Udp)).unwrap()).unwrap();
        assert!(!got.truncated());
        assert_eq!(got.answers().len(), 50);
        assert!(got.extensions().is_some(), "EDNS answered with EDNS");
    }

    #[test]
    fn resolv_conf_nameservers() {
        let text = "# generated\n\
            search example.com corp\n\
            nameserver 10.0.0.2\n\
            nameserver   192.168.1.1  # home\n\
            ;nameserver 1.1.1.1\n\
            nameserver 2001:db8::53\n\
            nameserver fe80::1%eth0\n\
            nameserver not-an-address\n\
            nameserver\n\
            options ndots:2\n";
        assert_eq!(
            parse_resolv_conf(text),
            vec![
                "10.0.0.2:53".parse().unwrap(),
                "192.168.1.1:53".parse().unwrap(),
                "[2001:db8::53]:53".parse().unwrap(),
            ]
        );
        assert!(parse_resolv_conf("").is_empty());
    }

    proptest::proptest! {
        /// Whatever the records, an asker only ever gets addresses of the
        /// networks it is attached to. Network `n` holds only 10.n.x.y.
        #[test]
        fn answers_stay_on_shared_networks(
            services in proptest::collection::vec((0u8..4, 0u8..6, proptest::bool::ANY), 0..12),
            tasks in proptest::collection::vec((0u8..4, 0u8..6, 0u8..4, 0u8..250), 0..40),
            asker in proptest::collection::vec(0u8..4, 0..3),
        ) {
            let names = ["a", "b", "c", "d", "e", "f"];
            let services: Vec<ServiceRecord> = services
                .iter()
                .map(|&(net, n, vip)| ServiceRecord {
                    service_id: format!("s{n}"),
                    name: names[usize::from(n)].into(),
                    network_id: format!("n{net}"),
                    aliases: vec![format!("alias-{}", names[usize::from(n)])],
                    endpoint: if vip {
                        ServiceEndpoint::Vip(Ipv4Addr::new(10, net, 0, n))
                    } else {
                        ServiceEndpoint::Dnsrr
                    },
                })
                .collect();
            let tasks: Vec<TaskRecord> = tasks
                .iter()
                .map(|&(net, n, slot, host)| TaskRecord {
                    task_id: format!("t{host}"),
                    service_id: format!("s{n}"),
                    name: format!("{}.{slot}.t{host}", names[usize::from(n)]),
                    network_id: format!("n{net}"),
                    addr: Ipv4Addr::new(10, net, 1, host),
                    aliases: vec![format!("task-{slot}")],
                })
                .collect();
            let table = DnsTable::new(services, tasks.clone());
            let asker: Vec<String> = asker.iter().map(|n| format!("n{n}")).collect();
            let shared = |addr: &Ipv4Addr| asker.contains(&format!("n{}", addr.octets()[1]));
            let mut queries: Vec<String> = names
                .iter()
                .flat_map(|n| [n.to_string(), format!("tasks.{n}"), format!("alias-{n}")])
                .collect();
            queries.extend(tasks.iter().map(|t| t.name.clone()));
            queries.extend((0..4).map(|s| format!("task-{s}")));
            for q in &queries {
                if let Some(addrs) = table.lookup(q, &asker) {
                    proptest::prop_assert!(addrs.iter().all(shared), "{q} -> {addrs:?} for {asker:?}");
                }
            }
            for t in &tasks {
                if table.reverse(t.addr, &asker).is_some() {
                    proptest::prop_assert!(shared(&t.addr));
                }
            }
        }
    }
}

/// The server on real sockets, inside throwaway network namespaces (root).
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod server_tests {
    use super::*;
    use hickory_proto::op::Query;
    use std::process::Command;
    use std::time::Instant;

    /// A network namespace with its loopback up, deleted on drop (panics too).
    struct TestNetns {
        name: String,
    }

    impl TestNetns {
        /// `None` when not root (the test is skipped).
        fn new() -> Option<Self> {
            if !nix::unistd::geteuid().is_root() {
                eprintln!("skipping: network namespaces need root");
                return None;
            }
            let ns = TestNetns {
                name: format!("swarm-dnstest-{:08x}", rand::random::<u32>()),
            };
            ns.ip(&["netns", "add", &ns.name]);
            ns.ip(&["netns", "exec", &ns.name, "ip", "link", "set", "lo", "up"]);
            Some(ns)
        }

        fn ip(&self, args: &[&str]) {
            let status = Command::new("ip").args(args).status().unwrap();
            assert!(status.success(), "ip {args:?} failed");
        }

        fn path(&self) -> PathBuf {
            PathBuf::from(format!("/run/netns/{}", self.name))
        }
    }

    impl Drop for TestNetns {
        fn drop(&mut self) {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.name])
                .status();
        }
    }

    fn query(name: &str, qtype: RecordType) -> Message {
        let mut m = Message::new();
        m.set_id(rand::random())
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Query)
            .set_recursion_desired(true);
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        m
    }

    /// Sends `bytes` to 127.0.0.11:53 over UDP from inside `ns`; the raw
    /// answer, or `None` after `wait`.
    async fn udp_raw(ns: &TestNetns, bytes: &[u8], wait: Duration) -> Option<Vec<u8>> {
        let sock = run_in_netns(&ns.path(), || {
            let s = std::net::UdpSocket::bind("127.0.0.1:0")?;
            s.set_nonblocking(true)?;
            Ok(s)
        })
        .unwrap();
        let sock = UdpSocket::from_std(sock).unwrap();
        sock.send_to(bytes, DNS_ADDR).await.unwrap();
        let mut buf = vec![0u8; 65535];
        let (n, _) = tokio::time::timeout(wait, sock.recv_from(&mut buf))
            .await
            .ok()?
            .ok()?;
        buf.truncate(n);
        Some(buf)
    }

    async fn udp_ask(ns: &TestNetns, req: &Message) -> Message {
        let raw = udp_raw(ns, &req.to_vec().unwrap(), Duration::from_secs(5))
            .await
            .unwrap();
        let resp = Message::from_vec(&raw).unwrap();
        assert_eq!(resp.id(), req.id());
        resp
    }

    fn tcp_connect(ns: &TestNetns) -> io::Result<TcpStream> {
        let s = run_in_netns(&ns.path(), || {
            let s = std::net::TcpStream::connect(DNS_ADDR)?;
            s.set_nonblocking(true)?;
            Ok(s)
        })?;
        TcpStream::from_std(s)
    }

    async fn tcp_exchange(stream: &mut TcpStream, req: &Message) -> Message {
        let bytes = req.to_vec().unwrap();
        stream
            .write_u16(u16::try_from(bytes.len()).unwrap())
            .await
            .unwrap();
        stream.write_all(&bytes).await.unwrap();
        let n = stream.read_u16().await.unwrap();
        let mut buf = vec![0u8; usize::from(n)];
        stream.read_exact(&mut buf).await.unwrap();
        let resp = Message::from_vec(&buf).unwrap();
        assert_eq!(resp.id(), req.id());
        resp
    }

    fn a_records(m: &Message) -> Vec<Ipv4Addr> {
        let mut v: Vec<Ipv4Addr> = m
            .answers()
            .iter()
            .filter_map(|r| match r.data() {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect();
        v.sort();
        v
    }

    fn cluster() -> DnsTable {
        let tasks = (0..40u8)
            .map(|i| TaskRecord {
                task_id: format!("t{i}"),
                service_id: "s-db".into(),
                name: format!("db.{i}.t{i}"),
                network_id: "net1".into(),
                addr: Ipv4Addr::new(10, 0, 1, 100 + i),
                aliases: vec![],
            })
            .collect();
        DnsTable::new(
            vec![
                ServiceRecord {
                    service_id: "s-web".into(),
                    name: "web".into(),
                    network_id: "net1".into(),
                    aliases: vec![],
                    endpoint: ServiceEndpoint::Vip(Ipv4Addr::new(10, 0, 1, 2)),
                },
                ServiceRecord {
                    service_id: "s-db".into(),
                    name: "db".into(),
                    network_id: "net1".into(),
                    aliases: vec![],
                    endpoint: ServiceEndpoint::Dnsrr,
                },
            ],
            tasks,
        )
    }

    #[tokio::test]
    async fn serves_cluster_names_over_udp_and_tcp_in_the_task_namespace() {
        let Some(ns) = TestNetns::new() else { return };
        // No upstream: anything forwarded fails fast with SERVFAIL.
        let server = DnsServer::new(vec![]);
        server.set_table(cluster());
        server
            .attach("task-a", &ns.path(), vec!["net1".into()])
            .await
            .unwrap();
        assert_eq!(server.attached(), vec!["task-a".to_string()]);

        let resp = udp_ask(&ns, &query("WEB.", RecordType::A)).await;
        assert_eq!(a_records(&resp), vec![Ipv4Addr::new(10, 0, 1, 2)]);
        assert!(resp.authoritative());
        let answered = crate::metrics::metrics()
            .dns_queries
            .get_or_create(&crate::metrics::ResultLabel {
                result: "answered".into(),
            })
            .get();
        assert!(answered >= 1);

        let resp = udp_ask(&ns, &query("web.", RecordType::AAAA)).await;
        assert_eq!(resp.response_code(), ResponseCode::NoError);
        assert!(resp.answers().is_empty());

        let resp = udp_ask(&ns, &query("2.1.0.10.in-addr.arpa.", RecordType::PTR)).await;
        assert_eq!(resp.answers().len(), 1);

        // 40 dnsrr addresses do not fit 512 bytes: TC over UDP, all over TCP.
        let resp = udp_ask(&ns, &query("db.", RecordType::A)).await;
        assert!(resp.truncated());
        assert!(resp.answers().len() < 40);
        let mut stream = tcp_connect(&ns).unwrap();
        let resp = tcp_exchange(&mut stream, &query("db.", RecordType::A)).await;
        assert!(!resp.truncated());
        assert_eq!(a_records(&resp).len(), 40);
        // Several queries on one connection.
        let resp = tcp_exchange(&mut stream, &query("tasks.db.", RecordType::A)).await;
        assert_eq!(a_records(&resp).len(), 40);

        // Garbage gets no answer, and the server keeps serving.
        assert!(
            udp_raw(&ns, b"\x01\x02", Duration::from_millis(200))
                .await
                .is_none()
        );
        let resp = udp_ask(&ns, &query("web.", RecordType::A)).await;
        assert_eq!(a_records(&resp).len(), 1);

        // Off the network: the name is no longer ours, and with no upstream
        // that is SERVFAIL.
        server.set_networks("task-a", vec![]);
        let resp = udp_ask(&ns, &query("web.", RecordType::A)).await;
        assert_eq!(resp.response_code(), ResponseCode::ServFail);

        // A new table is used at once.
        server.set_networks("task-a", vec!["net1".into()]);
        server.set_table(DnsTable::default());
        let resp = udp_ask(&ns, &query("web.", RecordType::A)).await;
        assert_eq!(resp.response_code(), ResponseCode::ServFail);

        server.detach("task-a");
        assert!(server.attached().is_empty());
        let deadline = Instant::now() + Duration::from_secs(2);
        while tcp_connect(&ns).is_ok() {
            assert!(Instant::now() < deadline, "still listening after detach");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The same namespace can be served again.
        server
            .attach("task-a", &ns.path(), vec!["net1".into()])
            .await
            .unwrap();
        server
            .attach("task-a", &ns.path(), vec!["net1".into()])
            .await
            .unwrap();
        server.set_table(cluster());
        let resp = udp_ask(&ns, &query("web.", RecordType::A)).await;
        assert_eq!(a_records(&resp).len(), 1);
    }

    #[tokio::test]
    async fn attach_fails_clearly_without_the_namespace() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let server = DnsServer::new(vec![]);
        let err = server
            .attach("t", Path::new("/run/netns/swarm-dnstest-missing"), vec![])
            .await
            .unwrap_err();
        assert!(matches!(err, DnsError::Bind { .. }), "{err}");
        assert!(server.attached().is_empty());
    }

    /// A fake upstream resolver on 127.0.0.1 (the daemon's namespace):
    /// answers every query with one A record, over UDP with TC set when
    /// `truncate_udp`, and in full over TCP on the same port. Sends the
    /// bytes of each UDP answer to the returned channel.
    async fn fake_upstream(
        truncate_udp: bool,
    ) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let (udp, tcp) = loop {
            let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            if let Ok(tcp) = TcpListener::bind(udp.local_addr().unwrap()).await {
                break (udp, tcp);
            }
        };
        let addr = udp.local_addr().unwrap();
        fn answer(query: &[u8], truncated: bool) -> Vec<u8> {
            let req = Message::from_vec(query).unwrap();
            let mut resp = Message::error_msg(req.id(), req.op_code(), ResponseCode::NoError);
            resp.add_queries(req.queries().iter().cloned());
            resp.set_recursion_available(true);
            if truncated {
                resp.set_truncated(true);
            } else {
                resp.add_answer(Record::from_rdata(
                    req.queries()[0].name().clone(),
                    300,
                    RData::A(A(Ipv4Addr::new(192, 0, 2, 1))),
                ));
            }
            resp.to_vec().unwrap()
        }
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let (n, peer) = udp.recv_from(&mut buf).await.unwrap();
                let bytes = answer(&buf[..n], truncate_udp);
                udp.send_to(&bytes, peer).await.unwrap();
                let _ = tx.send(bytes);
            }
        });
        tokio::spawn(async move {
            loop {
                let (mut s, _) = tcp.accept().await.unwrap();
                let n = s.read_u16().await.unwrap();
                let mut q = vec![0u8; usize::from(n)];
                s.read_exact(&mut q).await.unwrap();
                let bytes = answer(&q, false);
                s.write_u16(u16::try_from(bytes.len()).unwrap())
                    .await
                    .unwrap();
                s.write_all(&bytes).await.unwrap();
            }
        });
        (addr, rx)
    }

    #[tokio::test]
    async fn other_names_are_relayed_unchanged_from_the_upstream() {
        let Some(ns) = TestNetns::new() else { return };
        let (upstream, mut sent) = fake_upstream(false).await;
        let server = DnsServer::new(vec![upstream]);
        server.set_table(cluster());
        server
            .attach("t", &ns.path(), vec!["net1".into()])
            .await
            .unwrap();

        let req = query("example.com.", RecordType::A);
        let raw = udp_raw(&ns, &req.to_vec().unwrap(), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(raw, sent.recv().await.unwrap(), "relayed byte for byte");
        let resp = Message::from_vec(&raw).unwrap();
        assert_eq!(resp.id(), req.id());
        assert_eq!(a_records(&resp), vec![Ipv4Addr::new(192, 0, 2, 1)]);

        // Cluster names never reach the upstream.
        let resp = udp_ask(&ns, &query("web.", RecordType::A)).await;
        assert_eq!(a_records(&resp), vec![Ipv4Addr::new(10, 0, 1, 2)]);
        assert!(sent.try_recv().is_err());
    }

    #[tokio::test]
    async fn truncated_upstream_answers_are_fetched_again_over_tcp_for_tcp_clients() {
        let Some(ns) = TestNetns::new() else { return };
        let (upstream, _sent) = fake_upstream(true).await;
        let server = DnsServer::new(vec![upstream]);
        server.attach("t", &ns.path(), vec![]).await.unwrap();

        // A UDP client gets the truncated answer and would retry over TCP.
        let resp = udp_ask(&ns, &query("big.example.", RecordType::A)).await;
        assert!(resp.truncated());
        assert!(resp.answers().is_empty());
        // A TCP client gets the full answer.
        let mut stream = tcp_connect(&ns).unwrap();
        let resp = tcp_exchange(&mut stream, &query("big.example.", RecordType::A)).await;
        assert!(!resp.truncated());
        assert_eq!(a_records(&resp), vec![Ipv4Addr::new(192, 0, 2, 1)]);
    }

    #[tokio::test]
    async fn a_dead_upstream_gives_servfail_within_the_timeout() {
        let Some(ns) = TestNetns::new() else { return };
        // Bound but silent: queries vanish, as with an unreachable resolver.
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let timeout = Duration::from_millis(300);
        let server = DnsServer::with_forward_timeout(vec![silent.local_addr().unwrap()], timeout);
        server.attach("t", &ns.path(), vec![]).await.unwrap();

        let start = Instant::now();
        let resp = udp_ask(&ns, &query("example.com.", RecordType::A)).await;
        let took = start.elapsed();
        assert_eq!(resp.response_code(), ResponseCode::ServFail);
        assert_eq!(resp.queries().len(), 1);
        // Generous upper bound: the machine is shared and may be loaded.
        assert!(
            took >= timeout && took < timeout + Duration::from_secs(3),
            "took {took:?}"
        );
    }

    #[tokio::test]
    async fn dropping_the_server_stops_serving() {
        let Some(ns) = TestNetns::new() else { return };
        let server = DnsServer::new(vec![]);
        server.attach("t", &ns.path(), vec![]).await.unwrap();
        let clone = server.clone();
        drop(server);
        assert_eq!(clone.attached(), vec!["t".to_string()]);
        drop(clone);
        let deadline = Instant::now() + Duration::from_secs(2);
        while tcp_connect(&ns).is_ok() {
            assert!(Instant::now() < deadline, "still listening after drop");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
