//! Request and response bodies that count their bytes for `/metrics`, and record the request
//! (route, status, duration) and write its access-log line when the response body is done:
//! sent to its end, or dropped because the client went away. The duration covers the whole
//! streamed body, not only the time until the headers went out. Size hints pass through
//! untouched, so responses keep their `Content-Length`.

use crate::{domain::Service, metrics::RequestLabels};
use axum::{
    body::{Body, Bytes},
    extract::{MatchedPath, Request, State},
    middleware::Next,
    response::Response,
};
use http_body::{Frame, SizeHint};
use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Instant,
};

/// Which way a body's bytes go.
#[derive(Clone, Copy)]
enum Direction {
    In,
    Out,
}

/// What the response body records when it is dropped.
struct Done {
    labels: RequestLabels,
    started: Instant,
    /// The request's span (from the trace layer), so the access line carries its fields.
    span: tracing::Span,
    /// Response body bytes handed to the connection so far.
    sent: u64,
    /// The body yielded its end.
    ended: bool,
    /// The body's length when it is known (`Content-Length`).
    length: Option<u64>,
}

struct Counted {
    inner: Body,
    svc: Service,
    direction: Direction,
    /// Set on the response body: recorded when the body is dropped (sent, or the client left).
    done: Option<Done>,
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let len = data.len();
                    match self.direction {
                        Direction::In => self.svc.metrics().received(len),
                        Direction::Out => self.svc.metrics().sent(len),
                    }
                    if let Some(done) = &mut self.done {
                        done.sent += len as u64;
                    }
                }
            }
            Poll::Ready(None) => {
                if let Some(done) = &mut self.done {
                    done.ended = true;
                }
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let Some(done) = self.done.take() else {
            return;
        };
        let elapsed = done.started.elapsed();
        // hyper stops polling a body once it has its known length, or once the body reports
        // its end, without waiting for a last (empty) poll.
        let complete = done.ended
            || done.length == Some(done.sent)
            || http_body::Body::is_end_stream(&self.inner);
        done.span.in_scope(|| {
            tracing::info!(
                status = done.labels.status,
                latency_ms = elapsed.as_millis() as u64,
                sent_bytes = done.sent,
                complete,
                "finished processing request"
            )
        });
        self.svc.metrics().request_done(done.labels, elapsed);
    }
}

/// The method as a metric label: the standard ones by name, any other as `OTHER`, so clients
/// cannot add series at will (the route label is the matched pattern or `unmatched`).
fn method_label(m: &axum::http::Method) -> &'static str {
    use axum::http::Method as M;
    match *m {
        M::GET => "GET",
        M::POST => "POST",
        M::PUT => "PUT",
        M::DELETE => "DELETE",
        M::HEAD => "HEAD",
        M::OPTIONS => "OPTIONS",
        M::PATCH => "PATCH",
        M::TRACE => "TRACE",
        M::CONNECT => "CONNECT",
        _ => "OTHER",
    }
}

/// Middleware: counts body bytes both ways, and records and logs every request once its
/// response body is done.
pub async fn track(State(svc): State<Service>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(req.method()).to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let counter = svc.clone();
    let req = req.map(|inner| {
        Body::new(Counted {
            inner,
            svc: counter,
            direction: Direction::In,
            done: None,
        })
    });
    let resp = next.run(req).await;
    let labels = RequestLabels {
        method,
        route,
        status: resp.status().as_u16(),
    };
    let done = Done {
        labels,
        started,
        span: tracing::Span::current(),
        sent: 0,
        ended: false,
        // A streamed body does not know its length; the handler's Content-Length does.
        length: http_body::Body::size_hint(resp.body()).exact().or_else(|| {
            resp.headers()
                .get(axum::http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse().ok())
        }),
    };
    resp.map(|inner| {
        Body::new(Counted {
            inner,
            svc,
            direction: Direction::Out,
            done: Some(done),
        })
    })
}
