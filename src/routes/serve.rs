//! The HTTP server loop: the router on hyper, with the protections `axum::serve` leaves out.
//!
//! `axum::serve` sets no timer, so hyper applies no header timeout: a client that opens a
//! connection and sends its request headers slowly (or never finishes them) holds a
//! connection and a task forever. Here a connection must send its first byte within
//! `header_timeout`, and an HTTP/1 request its complete headers within `header_timeout`
//! after that (hyper's `header_read_timeout`), or the connection is closed;
//! bodies have their own idle timeout (`FS_BODY_IDLE_TIMEOUT_SECS`, in the router).

use axum::{
    body::Body,
    extract::{ConnectInfo, Request},
    Router,
};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto::Builder, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use std::{future::Future, pin::pin, time::Duration};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Serves `app` on `listener` until `shutdown` resolves, then stops accepting and waits for
/// the connections in flight to finish their requests (the caller bounds that wait).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    header_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        // A client that shuts down its sending side once its request is out (`nc -N`,
        // one-shot HTTP/1.0 clients) still gets the answer: hyper would otherwise take the
        // end of input for a closed connection and drop the request unanswered.
        .half_close(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(header_timeout));
    let graceful = GracefulShutdown::new();
    // Connections that have not sent a byte yet are not hyper's: they are dropped at shutdown.
    let stopping = CancellationToken::new();
    let mut shutdown = pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        // Each request carries its peer's address (the audit trail's remote address).
        let peer = stream.peer_addr().ok();
        let (app, builder, watcher) = (app.clone(), builder.clone(), graceful.watcher());
        let stopping = stopping.clone();
        tokio::spawn(async move {
            // Until its first byte, a connection is in hyper's protocol detection, which has
            // no timer: the first byte must come within the header timeout too.
            let mut first = [0u8; 1];
            tokio::select! {
                peeked = tokio::time::timeout(header_timeout, stream.peek(&mut first)) => {
                    if !matches!(peeked, Ok(Ok(n)) if n > 0) {
                        return;
                    }
                }
                () = stopping.cancelled() => return,
            }
            let service =
                TowerToHyperService::new(app.map_request(move |req: Request<Incoming>| {
                    let mut req = req.map(Body::new);
                    if let Some(peer) = peer {
                        req.extensions_mut().insert(ConnectInfo(peer));
                    }
                    req
                }));
            let conn = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .into_owned();
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    stopping.cancel();
    graceful.shutdown().await;
}
