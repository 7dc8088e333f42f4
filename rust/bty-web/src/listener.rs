//! Accepting and serving HTTP/1.1 connections: how long a connection may sit
//! idle, how long a request body may take, and how many connections are
//! served at once.
//!
//! `axum::serve` keeps an idle keep-alive connection open for as long as the
//! client does, and network-booted machines often never close theirs: the
//! live agent's pooled connection dies with `reboot -f`, and a machine that
//! loses power or is reset mid-keep-alive says nothing either. Without a
//! limit every such boot leaves a dead connection (and a file descriptor)
//! behind for good. Here a connection that has not started a request within
//! `[server] idle_timeout_s` (default 60, about what web servers use) is
//! closed; requests in progress and long responses (image streams, live
//! pages) are not affected, and clients reconnect on their next request.
//!
//! A client can also start a request and then send its body slowly or not
//! at all. A body must arrive within `[server] body_timeout_s` (default 30);
//! a streamed upload (a route that calls [`BodyClock::streaming`]) instead
//! may take as long as it likes while bytes keep coming, and is cut only
//! after that long without any. Either way the answer is 408 and the
//! connection is closed.
//!
//! Every connection holds a file descriptor, and so do the database, the
//! files being served and the sockets to image origins. At most
//! `[server] max_connections` connections are served at once (by default,
//! and at most, the open-file limit minus [`FD_RESERVE`]); at the cap the
//! server stops accepting until one closes, so new clients (PXE firmware
//! among them) wait in the kernel's listen queue instead of the server
//! failing to open a database file or accept at all.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::{ConnectInfo, Request};
use axum::http::{header, HeaderValue};
use axum::response::IntoResponse;
use axum::Router;
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

use crate::error::ApiError;

/// File descriptors kept back from connections: the database and its WAL,
/// backups, boot files and images being served, sockets to image origins.
pub const FD_RESERVE: u64 = 64;

/// How the server treats connections (`[server]`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Also bounds how long a client may take to send a request's headers.
    pub idle_timeout: Duration,
    pub body_timeout: Duration,
    pub max_connections: usize,
}

/// Raise the soft open-file limit to the hard one (systemd's default soft
/// limit, 1024, is a few hundred boot clients) and return the soft limit in
/// force afterwards.
pub fn raise_fd_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let before = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            let e = io::Error::last_os_error();
            tracing::warn!(soft = before, hard = lim.rlim_max, error = %e, "cannot raise the open-file limit");
            return Ok(before);
        }
        tracing::info!(
            from = before,
            to = lim.rlim_cur,
            "raised the open-file limit (soft) to the hard limit"
        );
    } else {
        tracing::info!(limit = before, "open-file limit");
    }
    Ok(lim.rlim_cur)
}

/// The soft open-file limit now.
pub fn fd_limit() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit only writes the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    lim.rlim_cur
}

/// Connections to serve at once: `configured`, but never more than the
/// open-file limit leaves after [`FD_RESERVE`] (a cap the descriptors cannot
/// back would fail the way no cap does).
pub fn connection_cap(configured: Option<u64>, fd_limit: u64) -> usize {
    let ceiling = fd_limit.saturating_sub(FD_RESERVE).clamp(1, 1 << 20);
    let cap = match configured {
        Some(n) if n > ceiling => {
            tracing::warn!(
                "[server] max_connections = {n} is more than the open-file limit ({fd_limit}) minus {FD_RESERVE} \
                 kept for the database, files and upstream sockets; serving at most {ceiling} connections \
                 (raise LimitNOFILE / ulimit -n for more)"
            );
            ceiling
        }
        Some(n) => n,
        None => ceiling,
    };
    cap as usize
}

/// Serve `app` on `listener` until `shutdown` resolves, then stop accepting,
/// let requests in flight finish and close idle connections.
pub async fn serve(listener: TcpListener, app: Router, limits: Limits, shutdown: impl Future<Output = ()>) {
    // HTTP/1.1 only: iPXE, agents and browsers (HTTP/2 needs TLS there) all
    // speak it, and guessing the protocol would wait on a silent connection
    // before the idle timer even starts.
    let mut builder = Builder::new(TokioExecutor::new()).http1_only();
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.idle_timeout);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut shutdown = std::pin::pin!(shutdown);
    let mut warned: Option<Instant> = None;
    loop {
        let slot = match slots.clone().try_acquire_owned() {
            Ok(s) => s,
            Err(_) => {
                // Once a minute at most: a saturated server would otherwise
                // log a line per connection.
                if warned.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                    warned = Some(Instant::now());
                    tracing::warn!(
                        "all {} connections in use ([server] max_connections); new ones wait until one closes",
                        limits.max_connections
                    );
                }
                tokio::select! {
                    s = slots.clone().acquire_owned() => s.expect("the semaphore is never closed"),
                    () = &mut shutdown => break,
                }
            }
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Small responses (iPXE scripts, JSON) go out at once.
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let body_timeout = limits.body_timeout;
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let clock = BodyClock::default();
            let mut req = req.map(|body| {
                if body.is_end_stream() {
                    axum::body::Body::new(body)
                } else {
                    axum::body::Body::new(TimedBody::new(body, body_timeout, clock.clone()))
                }
            });
            req.extensions_mut().insert(ConnectInfo(peer));
            req.extensions_mut().insert(clock.clone());
            // The router never fails (`Infallible`): errors are responses.
            let answer = app.clone().oneshot(req);
            async move {
                let resp = answer.await?;
                if !clock.0.timed_out.load(Ordering::Relaxed) {
                    return Ok::<_, std::convert::Infallible>(resp);
                }
                // Whatever the handler made of the failed read, the client
                // hears why, and the connection, its body half-read, ends.
                tracing::info!(%peer, "request body too slow: answered 408, connection closed");
                Ok(body_timeout_response(body_timeout, clock.0.streaming.load(Ordering::Relaxed)))
            }
        });
        let conn = builder.serve_connection(TokioIo::new(stream), service).into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::trace!("connection from {peer}: {e}");
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

fn body_timeout_response(limit: Duration, streaming: bool) -> axum::response::Response {
    let secs = limit.as_secs();
    let msg = if streaming {
        format!(
            "no bytes of the request body arrived for {secs} s ([server] body_timeout_s); the connection is closed"
        )
    } else {
        format!(
            "the request body did not arrive within {secs} s ([server] body_timeout_s); the connection is \
             closed. Send the whole body at once"
        )
    };
    let mut resp = ApiError::RequestTimeout(msg).into_response();
    resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// Shared by a request's body and the connection serving it (a request
/// extension).
#[derive(Clone, Default)]
pub struct BodyClock(Arc<ClockState>);

#[derive(Default)]
struct ClockState {
    streaming: AtomicBool,
    timed_out: AtomicBool,
}

impl BodyClock {
    /// The route streams its body (uploads): it may take as long as it
    /// takes, and only `body_timeout_s` without a byte ends it.
    pub fn streaming(&self) {
        self.0.streaming.store(true, Ordering::Relaxed);
    }
}

/// Why reading a request body failed: it took too long.
#[derive(Debug)]
pub struct BodyTimedOut(Duration);

impl fmt::Display for BodyTimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the request body did not arrive within {} s", self.0.as_secs())
    }
}

impl StdError for BodyTimedOut {}

/// A request body with a deadline: the whole body by `limit` after the
/// request began, or, once the route says it streams, no gap between bytes
/// longer than `limit`. The timer is created only when a read has to wait,
/// so a body that came with its headers costs nothing.
struct TimedBody {
    inner: Incoming,
    limit: Duration,
    deadline: Instant,
    timer: Option<Pin<Box<Sleep>>>,
    clock: BodyClock,
}

impl TimedBody {
    fn new(inner: Incoming, limit: Duration, clock: BodyClock) -> Self {
        TimedBody { inner, limit, deadline: Instant::now() + limit, timer: None, clock }
    }
}

impl Body for TimedBody {
    type Data = Bytes;
    type Error = Box<dyn StdError + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if this.clock.0.streaming.load(Ordering::Relaxed) {
                    this.deadline = Instant::now() + this.limit;
                    if let Some(t) = &mut this.timer {
                        t.as_mut().reset(this.deadline);
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let deadline = this.deadline;
                let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        this.clock.0.timed_out.store(true, Ordering::Relaxed);
                        Poll::Ready(Some(Err(Box::new(BodyTimedOut(this.limit)))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Too many open files and the like: say so and give connections a moment
/// to close instead of spinning. A connection the client gave up on before
/// it was accepted is not worth a word.
async fn accept_failed(e: io::Error) {
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!("cannot accept connections: {e}");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// The addresses of this host's network interfaces (empty if they cannot be read).
pub fn host_addresses() -> Vec<std::net::IpAddr> {
    match if_addrs::get_if_addrs() {
        Ok(ifs) => ifs.into_iter().map(|i| i.ip()).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the network interfaces' addresses");
            Vec::new()
        }
    }
}

/// The URLs a client can reach a listener on `local` at: its own address,
/// or for a wildcard bind each of `host` addresses that it covers (`::`
/// covers IPv4 too), others' first and loopback last. IPv6 link-local
/// addresses are left out: a URL cannot carry their interface.
pub fn reachable_urls(local: std::net::SocketAddr, host: &[std::net::IpAddr]) -> Vec<String> {
    use std::net::IpAddr;
    let url = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => format!("http://{v4}:{}", local.port()),
        IpAddr::V6(v6) => format!("http://[{v6}]:{}", local.port()),
    };
    if !local.ip().is_unspecified() {
        return vec![url(local.ip())];
    }
    let covered = |ip: &IpAddr| match (local.ip(), ip) {
        (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), _) => true,
        (IpAddr::V4(_), IpAddr::V6(_)) => false,
    };
    let link_local_v6 = |ip: &IpAddr| matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80);
    let mut ips: Vec<IpAddr> = host.iter().copied().filter(|ip| covered(ip) && !link_local_v6(ip)).collect();
    // Others' reachable addresses first, IPv4 before IPv6, loopback last.
    ips.sort_by_key(|ip| (ip.is_loopback(), ip.is_ipv6()));
    ips.dedup();
    if ips.is_empty() {
        // No interface list: the wildcard's own loopback still answers.
        ips.push(match local.ip() {
            IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        });
    }
    ips.into_iter().map(url).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_descriptors_for_the_rest() {
        assert_eq!(connection_cap(None, 1024), 960);
        assert_eq!(connection_cap(Some(100), 1024), 100);
        assert_eq!(connection_cap(Some(5000), 1024), 960);
        assert_eq!(connection_cap(None, 10), 1);
        assert_eq!(connection_cap(None, u64::MAX), 1 << 20);
    }

    #[test]
    fn wildcard_binds_name_every_usable_address() {
        let ips: Vec<std::net::IpAddr> =
            ["127.0.0.1", "10.0.0.2", "::1", "fe80::1", "2001:db8::2", "192.168.1.9"]
                .iter()
                .map(|s| s.parse().unwrap())
                .collect();
        let v4 = reachable_urls("0.0.0.0:8080".parse().unwrap(), &ips);
        assert_eq!(v4, ["http://10.0.0.2:8080", "http://192.168.1.9:8080", "http://127.0.0.1:8080"]);
        let v6 = reachable_urls("[::]:8080".parse().unwrap(), &ips);
        assert_eq!(
            v6,
            [
                "http://10.0.0.2:8080",
                "http://192.168.1.9:8080",
                "http://[2001:db8::2]:8080",
                "http://127.0.0.1:8080",
                "http://[::1]:8080"
            ]
        );
        assert_eq!(reachable_urls("10.0.0.2:9000".parse().unwrap(), &ips), ["http://10.0.0.2:9000"]);
        assert_eq!(reachable_urls("0.0.0.0:8080".parse().unwrap(), &[]), ["http://127.0.0.1:8080"]);
    }
}
