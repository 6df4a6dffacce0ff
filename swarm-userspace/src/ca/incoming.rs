//! Accepting TLS connections on the cluster port, for tonic's
//! `serve_with_incoming_shutdown`.
//!
//! Owns the accept loop: each connection's handshake runs in its own task
//! with a deadline, so a slow or hostile client never holds up the others,
//! and a failed handshake is logged (debug) and dropped, never ending the
//! stream. Each connection carries a [`PeerInfo`] that tonic puts in every
//! request's extensions.
//!
//! Must never: end the stream because of one connection or a transient
//! accept error, or hand tonic a connection whose handshake has not
//! completed.
use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{Semaphore, mpsc},
    task::{JoinHandle, JoinSet},
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_stream::Stream;
use tonic::transport::server::Connected;

use super::{cert::NodeIdentity, tls::ServerTls};

/// Default limit on a client's TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default limit on handshakes in flight; further connections wait in the
/// kernel's accept queue.
pub const MAX_CONCURRENT_HANDSHAKES: usize = 512;
/// Pause after an accept error such as running out of file descriptors, so
/// the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Who is on the other end of a connection. Tonic inserts it into each
/// request's extensions; [`super::authz`] reads it.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    pub remote_addr: SocketAddr,
    pub local_addr: Option<SocketAddr>,
    /// The verified node certificate's identity; `None` when the client
    /// presented no certificate (a node that is joining).
    pub identity: Option<NodeIdentity>,
}

/// Tuning for [`TlsIncoming`].
#[derive(Clone, Debug)]
pub struct IncomingConfig {
    pub handshake_timeout: Duration,
    pub max_concurrent_handshakes: usize,
}

impl Default for IncomingConfig {
    fn default() -> Self {
        Self {
            handshake_timeout: HANDSHAKE_TIMEOUT,
            max_concurrent_handshakes: MAX_CONCURRENT_HANDSHAKES,
        }
    }
}

/// A stream of TLS connections whose handshake completed. Dropping it stops
/// accepting and abandons handshakes in flight.
pub struct TlsIncoming {
    rx: mpsc::Receiver<TlsConnection>,
    accept_task: JoinHandle<()>,
}

impl std::fmt::Debug for TlsIncoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIncoming").finish_non_exhaustive()
    }
}

impl TlsIncoming {
    /// Starts accepting on `listener`. Must be called inside a tokio
    /// runtime.
    pub fn new(listener: TcpListener, tls: &ServerTls) -> Self {
        Self::with_config(listener, tls, IncomingConfig::default())
    }

    pub fn with_config(listener: TcpListener, tls: &ServerTls, config: IncomingConfig) -> Self {
        let (tx, rx) = mpsc::channel(64);
        let acceptor = TlsAcceptor::from(tls.config());
        let accept_task = tokio::spawn(accept_loop(listener, acceptor, tx, config));
        Self { rx, accept_task }
    }
}

impl Drop for TlsIncoming {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

impl Stream for TlsIncoming {
    type Item = Result<TlsConnection, io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|c| c.map(Ok))
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    tx: mpsc::Sender<TlsConnection>,
    config: IncomingConfig,
) {
    let limit = Arc::new(Semaphore::new(config.max_concurrent_handshakes.max(1)));
    // Owned here so that stopping the loop aborts handshakes in flight.
    let mut handshakes = JoinSet::new();
    loop {
        while handshakes.try_join_next().is_some() {}
        let permit = tokio::select! {
            _ = tx.closed() => return,
            permit = limit.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let (tcp, remote) = tokio::select! {
            _ = tx.closed() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) if is_per_connection(&e) => {
                    tracing::debug!(error = %e, "accept failed for one connection");
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot accept connections on the cluster port; retrying");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let tx = tx.clone();
        let timeout = config.handshake_timeout;
        handshakes.spawn(async move {
            let conn = handshake(acceptor, tcp, remote, timeout).await;
            drop(permit);
            if let Some(conn) = conn {
                // Fails only when the server stopped; the connection is
                // dropped with it.
                let _ = tx.send(conn).await;
            }
        });
    }
}

async fn handshake(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    remote: SocketAddr,
    timeout: Duration,
) -> Option<TlsConnection> {
    let _ = tcp.set_nodelay(true);
    let local_addr = tcp.local_addr().ok();
    let stream = match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(%remote, error = %e, "TLS handshake failed");
            return None;
        }
        Err(_) => {
            tracing::debug!(%remote, ?timeout, "TLS handshake timed out");
            return None;
        }
    };
    let identity = match stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
    {
        None => None,
        Some(cert) => match NodeIdentity::from_der(cert) {
            Ok(id) => Some(id),
            Err(e) => {
                // The verifier already parsed it; this cannot differ, but
                // an unidentified peer must never pass as anonymous.
                tracing::debug!(%remote, error = %e, "peer certificate has no node identity");
                return None;
            }
        },
    };
    Some(TlsConnection {
        stream,
        info: PeerInfo {
            remote_addr: remote,
            local_addr,
            identity,
        },
    })
}

/// Errors that concern one connection, not the listener.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// A server-side TLS connection with its peer's identity.
pub struct TlsConnection {
    stream: TlsStream<TcpStream>,
    info: PeerInfo,
}

impl std::fmt::Debug for TlsConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConnection")
            .field("peer", &self.info)
            .finish_non_exhaustive()
    }
}

impl TlsConnection {
    pub fn peer(&self) -> &PeerInfo {
        &self.info
    }
}

impl Connected for TlsConnection {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
