//! Lingering close, for every route: a request answered before its body was read (a bad name,
//! an unknown priority, over the size limit, a malformed form, a 404 or 405, ...) has the rest
//! of its body read and discarded before the answer goes out, so the connection stays usable.
//!
//! Without it the connection is closed while the client is still sending: clients that write
//! the whole body before reading (Java's `HttpURLConnection`) fail with "Error writing to
//! server" instead of reading the 400 or 413, and a reverse proxy (nginx) answers 502 and
//! takes the replica out of its upstream group. Like Go's net/http and nginx's lingering close,
//! the drain is bounded, in bytes and in time, and gives up on a client silent for the body idle
//! timeout; past a bound (or when the body fails) the answer is sent with `Connection: close`. A request that sent `Expect: 100-continue` and whose body
//! was never asked for is not drained: its client has not sent the body (hyper sends the 100
//! only when the body is first read), so the answer goes out at once, with `Connection: close`.

use axum::{
    body::{Body, Bytes},
    extract::{Request, State},
    http::{header, HeaderMap, HeaderValue, Version},
    middleware::Next,
    response::Response,
};
use http_body::{Body as _, Frame, SizeHint};
use std::{
    future::poll_fn,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    task::{Context, Poll},
    time::Duration,
};

/// How much of an unread request body is read and discarded before answering.
#[derive(Debug, Clone, Copy)]
pub struct DrainLimits {
    /// Bytes read at most (`FS_DRAIN_MAX_BYTES`).
    pub max_bytes: u64,
    /// How long the whole drain may take (`FS_DRAIN_TIMEOUT_SECS`).
    pub timeout: Duration,
    /// How long the client may send nothing (`FS_BODY_IDLE_TIMEOUT_SECS`, as for a body being
    /// read): a client that went silent is answered then, not at the end of `timeout`.
    pub idle: Duration,
}

/// The request body and what became of it, shared by the handler's end and the middleware.
struct BodyState {
    body: Body,
    /// Someone asked for a frame (hyper then sent `100 Continue`, if it was expected).
    polled: bool,
    /// The body ended, or failed: nothing more will come.
    done: bool,
}

impl BodyState {
    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        self.polled = true;
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            self.done = true;
        }
        polled
    }

    fn finished(&self) -> bool {
        self.done || self.body.is_end_stream()
    }
}

/// A request body whose inner body outlives the handler's end of it.
#[derive(Clone)]
struct SharedBody(Arc<Mutex<BodyState>>);

impl SharedBody {
    fn lock(&self) -> MutexGuard<'_, BodyState> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl http_body::Body for SharedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        self.lock().poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.lock().finished()
    }

    fn size_hint(&self) -> SizeHint {
        self.lock().body.size_hint()
    }
}

/// How a drain ended.
#[derive(Debug, PartialEq, Eq)]
enum Drained {
    /// The body ended after this many more bytes.
    All(u64),
    /// More than the byte bound remains (known from its length, or read so far).
    TooLarge(u64),
    TimedOut,
    /// The client sent nothing for the idle timeout.
    Idle,
    Failed,
}

/// Reads and discards what remains of the body, within the limits.
async fn drain(body: &SharedBody, limits: DrainLimits) -> Drained {
    let known = body.lock().body.size_hint().lower();
    if known > limits.max_bytes {
        return Drained::TooLarge(known);
    }
    let read = async {
        let mut read = 0u64;
        loop {
            let frame = poll_fn(|cx| body.lock().poll_frame(cx));
            let Ok(frame) = tokio::time::timeout(limits.idle, frame).await else {
                return Drained::Idle;
            };
            match frame {
                None => return Drained::All(read),
                Some(Err(_)) => return Drained::Failed,
                Some(Ok(frame)) => {
                    read += frame.data_ref().map_or(0, |d| d.len() as u64);
                    if read > limits.max_bytes {
                        return Drained::TooLarge(read);
                    }
                }
            }
        }
    };
    tokio::time::timeout(limits.timeout, read)
        .await
        .unwrap_or(Drained::TimedOut)
}

fn expects_continue(headers: &HeaderMap) -> bool {
    headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

fn close(resp: &mut Response) {
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
}

/// Middleware (outermost): once the inner service has answered, drains what it left of the
/// request body, or marks the answer `Connection: close` when it cannot. HTTP/1 only: HTTP/2
/// ends a stream on its own (hyper resets it with NO_ERROR), the connection goes on.
pub async fn linger(State(limits): State<DrainLimits>, req: Request, next: Next) -> Response {
    if !matches!(
        req.version(),
        Version::HTTP_09 | Version::HTTP_10 | Version::HTTP_11
    ) {
        return next.run(req).await;
    }
    let continue_expected = expects_continue(req.headers());
    let (parts, body) = req.into_parts();
    let (method, uri) = (parts.method.clone(), parts.uri.clone());
    let shared = SharedBody(Arc::new(Mutex::new(BodyState {
        body,
        polled: false,
        done: false,
    })));
    let mut resp = next
        .run(Request::from_parts(parts, Body::new(shared.clone())))
        .await;
    let (polled, finished) = {
        let s = shared.lock();
        (s.polled, s.finished())
    };
    if finished {
        return resp;
    }
    // A client that never sent the body (100-continue), or that went silent (the body idle
    // timeout answered 408): nothing to wait for.
    if (continue_expected && !polled) || resp.status() == axum::http::StatusCode::REQUEST_TIMEOUT {
        close(&mut resp);
        return resp;
    }
    match drain(&shared, limits).await {
        Drained::All(bytes) => {
            tracing::debug!(%method, %uri, bytes, "drained the unread rest of the request body")
        }
        outcome => {
            tracing::info!(%method, %uri, ?outcome, status = resp.status().as_u16(),
                "request body left unread: closing the connection after the answer");
            close(&mut resp);
        }
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::{http::StatusCode, middleware, routing::post, Router};
    use futures::StreamExt;
    use std::time::Instant;
    use tokio::{
        io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
        net::TcpStream,
    };

    const LIMITS: DrainLimits = DrainLimits {
        max_bytes: 8 << 20,
        timeout: Duration::from_secs(10),
        idle: Duration::from_secs(10),
    };
    const MIB: usize = 1 << 20;

    /// A server behind `linger`: `/reject` answers 400 without reading the body, `/peek` 413
    /// after one frame, `/read` 200 with the body's length after all of it; others 404.
    async fn serve(limits: DrainLimits) -> String {
        async fn peek(body: Body) -> StatusCode {
            let _ = body.into_data_stream().next().await;
            StatusCode::PAYLOAD_TOO_LARGE
        }
        async fn read(body: Body) -> String {
            let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
            bytes.len().to_string()
        }
        let app = Router::new()
            .route("/reject", post(|| async { StatusCode::BAD_REQUEST }))
            .route("/peek", post(peek))
            .route("/read", post(read))
            .layer(middleware::from_fn_with_state(limits, linger));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr.to_string()
    }

    async fn connect(addr: &str) -> BufReader<TcpStream> {
        BufReader::new(TcpStream::connect(addr).await.unwrap())
    }

    fn head(path: &str, len: usize, extra: &str) -> String {
        format!("POST {path} HTTP/1.1\r\nhost: t\r\ncontent-length: {len}\r\n{extra}\r\n")
    }

    /// Reads one response (an interim 100 too): status, headers (lowercase), body.
    async fn response(r: &mut (impl AsyncBufRead + Unpin)) -> (u16, String, String) {
        let mut status = String::new();
        r.read_line(&mut status).await.unwrap();
        let code = status
            .split(' ')
            .nth(1)
            .expect("a status line")
            .parse()
            .unwrap();
        let mut headers = String::new();
        loop {
            let mut line = String::new();
            r.read_line(&mut line).await.unwrap();
            if line == "\r\n" || line.is_empty() {
                break;
            }
            headers.push_str(&line.to_ascii_lowercase());
        }
        let len = headers
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .map_or(0, |n| n.trim().parse().unwrap());
        let mut body = vec![0; len];
        r.read_exact(&mut body).await.unwrap();
        (code, headers, String::from_utf8(body).unwrap())
    }

    #[tokio::test]
    async fn an_unread_body_is_drained_and_the_connection_kept() {
        let addr = serve(LIMITS).await;
        let mut s = connect(&addr).await;
        for (path, expected) in [("/reject", 400), ("/peek", 413), ("/nowhere", 404)] {
            // The whole body goes through: the server reads what the handler left.
            s.write_all(head(path, 4 * MIB, "").as_bytes())
                .await
                .unwrap();
            s.write_all(&vec![7; 4 * MIB]).await.unwrap();
            let (status, headers, _) = response(&mut s).await;
            assert_eq!(status, expected, "{path}");
            assert!(!headers.contains("connection: close"), "{path}: {headers}");
        }
        // The same connection serves the next request.
        s.write_all(head("/read", 2 * MIB, "").as_bytes())
            .await
            .unwrap();
        s.write_all(&vec![7; 2 * MIB]).await.unwrap();
        let (status, headers, body) = response(&mut s).await;
        assert_eq!((status, body.as_str()), (200, "2097152"));
        assert!(!headers.contains("connection: close"), "{headers}");
    }

    #[tokio::test]
    async fn past_the_byte_bound_the_answer_closes_the_connection() {
        let addr = serve(DrainLimits {
            max_bytes: MIB as u64,
            ..LIMITS
        })
        .await;
        // A length over the bound is known at once: answered without reading.
        let mut s = connect(&addr).await;
        s.write_all(head("/reject", 4 * MIB, "").as_bytes())
            .await
            .unwrap();
        let (status, headers, _) = response(&mut s).await;
        assert_eq!(status, 400);
        assert!(headers.contains("connection: close"), "{headers}");
        // A chunked body is found too long while it is read.
        let (r, mut w) = TcpStream::connect(&addr).await.unwrap().into_split();
        let chunks = tokio::spawn(async move {
            w.write_all(b"POST /reject HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n")
                .await?;
            for _ in 0..64 {
                w.write_all(b"10000\r\n").await?;
                w.write_all(&[7; 0x10000]).await?;
                w.write_all(b"\r\n").await?;
            }
            w.write_all(b"0\r\n\r\n").await
        });
        let (status, headers, _) = response(&mut BufReader::new(r)).await;
        assert_eq!(status, 400);
        assert!(headers.contains("connection: close"), "{headers}");
        let _ = chunks.await;
    }

    /// A stalled body is given up after the drain's timeout, or sooner when the client has
    /// been silent for the body idle timeout.
    #[tokio::test]
    async fn a_stalled_body_is_given_up_after_either_timeout() {
        let short = Duration::from_millis(300);
        let stalled_whole = DrainLimits {
            timeout: short,
            ..LIMITS
        };
        let silent = DrainLimits {
            idle: short,
            ..LIMITS
        };
        for limits in [stalled_whole, silent] {
            let addr = serve(limits).await;
            let mut s = connect(&addr).await;
            s.write_all(head("/reject", 100_000, "").as_bytes())
                .await
                .unwrap();
            s.write_all(&[7; 5000]).await.unwrap();
            let started = Instant::now();
            let answer = tokio::time::timeout(Duration::from_secs(5), response(&mut s)).await;
            let (status, headers, _) = answer.expect("answered once the drain gave up");
            assert_eq!(status, 400, "{limits:?}");
            assert!(headers.contains("connection: close"), "{headers}");
            assert!(
                started.elapsed() >= Duration::from_millis(250),
                "{limits:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_body_expected_with_100_continue_is_never_asked_for() {
        let addr = serve(LIMITS).await;
        // Never read: the answer comes at once, without a 100, and the connection closes.
        let mut s = connect(&addr).await;
        let expect = "expect: 100-continue\r\n";
        s.write_all(head("/reject", 4 * MIB, expect).as_bytes())
            .await
            .unwrap();
        let (status, headers, _) = tokio::time::timeout(Duration::from_secs(5), response(&mut s))
            .await
            .expect("answered without the body");
        assert_eq!(status, 400);
        assert!(headers.contains("connection: close"), "{headers}");
        // Read in part: the client got its 100 and sent the body, the rest of which is drained.
        let mut s = connect(&addr).await;
        s.write_all(head("/peek", 2 * MIB, expect).as_bytes())
            .await
            .unwrap();
        assert_eq!(response(&mut s).await.0, 100);
        s.write_all(&vec![7; 2 * MIB]).await.unwrap();
        let (status, headers, _) = response(&mut s).await;
        assert_eq!(status, 413);
        assert!(!headers.contains("connection: close"), "{headers}");
    }
}
