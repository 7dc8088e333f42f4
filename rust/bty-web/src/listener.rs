//! Accepting and serving HTTP/1.1 connections, with a limit
//! on how long a connection may sit idle.
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

use std::future::Future;
use std::io;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tower::ServiceExt;

/// Serve `app` on `listener` until `shutdown` resolves, then stop accepting,
/// let requests in flight finish and close idle connections.
/// `idle_timeout` also bounds how long a client may take to send a request's
/// headers.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    idle_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) {
    // HTTP/1.1 only: iPXE, agents and browsers (HTTP/2 needs TLS there) all
    // speak it, and guessing the protocol would wait on a silent connection
    // before the idle timer even starts.
    let mut builder = Builder::new(TokioExecutor::new()).http1_only();
    builder.http1().timer(TokioTimer::new()).header_read_timeout(idle_timeout);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
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
        let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            let app = app.clone();
            // The router never fails (`Infallible`): errors are responses.
            app.oneshot(req.map(axum::body::Body::new))
        });
        let conn = builder.serve_connection(TokioIo::new(stream), service).into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::trace!("connection from {peer}: {e}");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
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
