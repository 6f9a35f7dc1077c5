//! Request and response bodies that count their bytes for `/metrics`, and record the request
//! (route, status, duration) when the response body is done. Size hints pass through untouched,
//! so responses keep their `Content-Length`.

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

struct Counted {
    inner: Body,
    svc: Service,
    direction: Direction,
    /// Set on the response body: recorded when the body is dropped (sent, or the client left).
    done: Option<(RequestLabels, Instant)>,
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                match self.direction {
                    Direction::In => self.svc.metrics().received(data.len()),
                    Direction::Out => self.svc.metrics().sent(data.len()),
                }
            }
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
        if let Some((labels, started)) = self.done.take() {
            self.svc.metrics().request_done(labels, started.elapsed());
        }
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

/// Middleware: counts body bytes both ways and records every request once its response body
/// is done.
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
    resp.map(|inner| {
        Body::new(Counted {
            inner,
            svc,
            direction: Direction::Out,
            done: Some((labels, started)),
        })
    })
}
