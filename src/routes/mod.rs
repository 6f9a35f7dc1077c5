//! HTTP layer: every route in one place. Handlers only extract, call the domain and shape the
//! response; this is the only module that knows axum.

pub mod error;
pub mod extract;
pub mod images;
pub mod views;

use crate::domain::Service;
use axum::{
    extract::{DefaultBodyLimit, State},
    http::{header, HeaderName, HeaderValue, Method, Request, StatusCode},
    routing::{get, post},
    Json, Router,
};
use error::ApiError;
use std::time::Duration;
use tower_http::{
    cors::{AllowOrigin, Any, CorsLayer},
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    trace::{DefaultOnResponse, TraceLayer},
};
use tracing::Level;

pub const BASE: &str = "/image-management/v1";

pub fn router(svc: Service) -> Router {
    let api = Router::new()
        .route("/images", post(images::upload).get(images::list))
        .route(
            "/images/upload",
            post(images::upload_chunk)
                .delete(images::cancel_upload)
                .get(images::upload_query),
        )
        .route("/images/merge", post(images::merge))
        .route(
            "/images/{image_id}",
            get(images::get_image).delete(images::delete_image),
        )
        .route("/images/{image_id}/action/download", get(images::download))
        .route("/images/{image_id}/action/slim", post(images::slim));
    let request_id = HeaderName::from_static("x-request-id");
    Router::new()
        .nest(BASE, api)
        .route("/health", get(|| async { "ok" }))
        .route("/ready", get(ready))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(svc.clone())
        // Bodies are streamed and their limits enforced by the domain.
        .layer(DefaultBodyLimit::disable())
        .layer(cors(&svc))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request<_>| {
                    let id = req
                        .headers()
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %id)
                })
                .on_request(())
                .on_response(DefaultOnResponse::new().level(Level::INFO).latency_unit(tower_http::LatencyUnit::Millis)),
        )
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
}

fn cors(svc: &Service) -> CorsLayer {
    let layer = CorsLayer::new()
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::DELETE,
            Method::PUT,
            Method::OPTIONS,
            Method::HEAD,
        ])
        .allow_headers(Any)
        .expose_headers([
            header::CONTENT_DISPOSITION,
            header::CONTENT_RANGE,
            header::CONTENT_LENGTH,
        ])
        .max_age(Duration::from_secs(3600));
    match &svc.config().cors_origins {
        None => layer.allow_origin(Any),
        Some(list) => layer.allow_origin(AllowOrigin::list(
            list.iter().filter_map(|o| HeaderValue::from_str(o).ok()),
        )),
    }
}

async fn ready(State(svc): State<Service>) -> Result<Json<serde_json::Value>, ApiError> {
    use sea_orm::ConnectionTrait;
    if let Err(e) = svc.db().execute_unprepared("SELECT 1").await {
        tracing::warn!(error = %e, "readiness: database unreachable");
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "DATABASE_UNAVAILABLE",
            "database unreachable",
        ));
    }
    if let Err(e) = svc.store().ping(&svc.config().tiers[&0].bucket).await {
        tracing::warn!(error = %e, "readiness: storage unreachable");
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "STORAGE_UNAVAILABLE",
            "storage unreachable",
        ));
    }
    Ok(Json(
        serde_json::json!({ "database": "ok", "storage": "ok" }),
    ))
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", "no such resource")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "METHOD_NOT_ALLOWED",
        "method not allowed on this resource",
    )
}
