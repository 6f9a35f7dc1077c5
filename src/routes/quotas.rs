//! Handlers of `/image-management/v1/quotas/{userId}` and `/image-management/v1/usage`.

use super::{
    audit::Audit,
    error::ApiError,
    extract::{Authenticated, Query},
};
use crate::domain::{
    quota::{QuotaChange, QuotaView, UsageView},
    Service,
};
use axum::{
    body::Body,
    extract::{rejection::PathRejection, Path, State},
    Json,
};

type ApiResult<T> = Result<T, ApiError>;

/// Largest `PUT /quotas/{userId}` body accepted.
const BODY_LIMIT: usize = 4096;

fn user_path(path: Result<Path<String>, PathRejection>) -> ApiResult<String> {
    path.map(|Path(u)| u)
        .map_err(|e| ApiError::bad_request(format!("bad userId in the path: {e}")))
}

/// A user's quota: its effective limits and its own overrides (a user may read its own;
/// an admin anyone's).
#[utoipa::path(get, path = "/quotas/{user_id}", tag = "quotas",
    params(("user_id" = String, Path, description = "The user")),
    responses(
        (status = 200, body = QuotaView),
        (status = 400, description = "The userId of the path is not UTF-8 once percent-decoded, or holds NUL (INVALID_PARAMETER)", body = super::docs::ErrorBody),
        (status = 403, description = "A user asking for another user's quota (FORBIDDEN)", body = super::docs::ErrorBody),
    ))]
pub async fn get_quota(
    State(svc): State<Service>,
    Authenticated(caller): Authenticated,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<QuotaView>> {
    let user = user_path(path)?;
    Ok(Json(svc.quota(&caller, &user).await?))
}

/// Sets a user's own limits (an admin only, when authentication is on). `null` (or absent)
/// means the configured default (`FS_QUOTA_BYTES`, `FS_QUOTA_IMAGES`), 0 unlimited. Lowering
/// a limit below what the user holds removes nothing: the user cannot store more until it is
/// below the limit again.
#[utoipa::path(put, path = "/quotas/{user_id}", tag = "quotas",
    params(("user_id" = String, Path, description = "The user")),
    request_body(content = QuotaChange, content_type = "application/json"),
    responses(
        (status = 200, description = "The user's quota now", body = QuotaView),
        (status = 400, description = "Not a JSON object of non-negative integers or nulls, or an unknown field (INVALID_PARAMETER)", body = super::docs::ErrorBody),
        (status = 403, description = "The caller is not an admin (FORBIDDEN)", body = super::docs::ErrorBody),
        super::docs::BodyTimedOut,
    ))]
pub async fn set_quota(
    State(svc): State<Service>,
    audit: Audit,
    path: Result<Path<String>, PathRejection>,
    body: Body,
) -> ApiResult<Json<QuotaView>> {
    let user = user_path(path)?;
    if let Err(e) = svc.may_set_quotas(audit.caller()) {
        let e = ApiError::from(e);
        audit.record("quota.set").owner(&user).error(&e);
        return Err(e);
    }
    let bytes = super::extract::small_body(body, BODY_LIMIT).await?;
    let bad = |e: &dyn std::fmt::Display| {
        ApiError::bad_request(format!(
            "the body must be a JSON object {{\"maxBytes\": n|null, \"maxImages\": n|null}} \
             with non-negative integers: {e}"
        ))
    };
    // An object only (serde would also take an array for the struct).
    let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| bad(&e))?;
    if !value.is_object() {
        return Err(bad(&"not an object"));
    }
    // From the bytes, not the value: a key sent twice is then refused ("duplicate field"),
    // not the last one taken.
    let change: QuotaChange = serde_json::from_slice(&bytes).map_err(|e| bad(&e))?;
    let limit = |v: Option<u64>| v.map_or("default".to_string(), |n| n.to_string());
    let detail = format!(
        "max_bytes={} max_images={}",
        limit(change.max_bytes),
        limit(change.max_images)
    );
    let result = svc
        .set_quota(audit.caller(), &user, change)
        .await
        .map_err(ApiError::from);
    let event = audit.record("quota.set").owner(&user).detail(&detail);
    match &result {
        Ok(_) => event.success(),
        Err(e) => event.error(e),
    }
    Ok(Json(result?))
}

/// What a user holds and may hold: the caller itself, or (an admin, or anyone with
/// authentication off) the user named by `userId` (with authentication off, no `userId`
/// means the user "").
#[utoipa::path(get, path = "/usage", tag = "quotas",
    params(("userId" = Option<String>, Query, description = "The user (an admin, or with authentication off)")),
    responses(
        (status = 200, body = UsageView),
        super::docs::BadQuery,
        super::docs::ForAnotherUser,
    ))]
pub async fn usage(
    State(svc): State<Service>,
    Authenticated(caller): Authenticated,
    fields: Query,
) -> ApiResult<Json<UsageView>> {
    let asked =
        crate::domain::validate::user_id(fields.get("userId")).map_err(ApiError::bad_request)?;
    Ok(Json(svc.usage(&caller, Some(&asked)).await?))
}
