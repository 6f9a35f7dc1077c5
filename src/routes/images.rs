//! Handlers of `/image-management/v1/images...`: extract, call the domain, shape the response.

use super::{
    audit::{Audit, AuditEvent},
    conditional,
    error::ApiError,
    extract::{Authenticated, Form, FormFields, Query, WithinImageLimit},
    views::{FlatImage, ImageView},
};
use crate::domain::{
    caller::Caller,
    download::{RangeRequest, Representation},
    form::{Field, Fields},
    ids::{ChunkNumber, Identifier, ImageId},
    images::ListQuery,
    integrity::Checksum,
    uploads::ChunkTrace,
    Service,
};
use axum::{
    body::Body,
    extract::{Path, State},
    http::{header, HeaderMap, HeaderValue, Method, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use base64::{engine::general_purpose::STANDARD as B64, Engine};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

type ApiResult<T> = Result<T, ApiError>;

/// The `{image_id}` of a route, as text. An id that is not valid UTF-8 once percent-decoded
/// (axum's `Path` would answer a plain-text 400) is decoded lossily instead, so that it gets
/// the same JSON 404 as every other id that names no image (SPEC section 1).
#[derive(utoipa::IntoParams)]
#[into_params(names("image_id"), parameter_in = Path)]
pub struct ImageIdPath(
    /// The image's id (a UUID)
    pub String,
);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ImageIdPath {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        if let Ok(Path(id)) = Path::<String>::from_request_parts(parts, state).await {
            return Ok(ImageIdPath(id));
        }
        let raw = parts
            .uri
            .path()
            .split_once("/images/")
            .map_or("", |(_, rest)| rest.split('/').next().unwrap_or(""));
        let id = percent_encoding::percent_decode_str(raw).decode_utf8_lossy();
        Ok(ImageIdPath(id.into_owned()))
    }
}

/// Uploads an image (or a zip holding one image in a folder) in one request.
#[utoipa::path(post, path = "/images", tag = "images",
    request_body(content = super::docs::UploadForm, content_type = "multipart/form-data"),
    responses(
        (status = 200, description = "Stored; a check is queued", body = FlatImage),
        (status = 400, description = "No file, a bad name, a bad zip or a bad field", body = super::docs::ErrorBody),
        super::docs::WriteRefused,
    ))]
pub async fn upload(
    State(svc): State<Service>,
    audit: Audit,
    limit: WithinImageLimit,
    Form { fields, mut parts }: Form,
) -> ApiResult<Json<FlatImage>> {
    let least = limit.least_image_bytes();
    let result = svc
        .upload_image(audit.caller(), fields, parts.as_mut(), least)
        .await;
    created(audit.record("image.upload"), &audit, result)
}

/// Ends a request that stored a new image: its audit `event` names the image, its owner (when
/// not the caller) and its size; the answer is the image's record.
fn created(
    event: AuditEvent<'_>,
    audit: &Audit,
    result: crate::domain::Result<entity::image::Model>,
) -> ApiResult<Json<FlatImage>> {
    let result = result.map_err(ApiError::from);
    match &result {
        Ok(img) => owned(event.image(&img.id), audit, &img.user_id)
            .detail(&format!("size_bytes={}", img.size_bytes))
            .success(),
        Err(e) => event.error(e),
    }
    Ok(Json(FlatImage::from(&result?)))
}

/// Names the owner on an audit event when it is not the caller itself (an admin acting for a
/// user, or the `userId` field with authentication off).
fn owned<'a>(event: AuditEvent<'a>, audit: &Audit, owner: &'a str) -> AuditEvent<'a> {
    match audit.caller().id() == Some(owner) {
        true => event,
        false => event.owner(owner),
    }
}

/// Ends an audit event with a request's outcome.
fn outcome<T>(event: AuditEvent<'_>, result: &ApiResult<T>) {
    match result {
        Ok(_) => event.success(),
        Err(e) => event.error(e),
    }
}

/// A request that changes one image, with what its handler needs: the service, the audit
/// context and the `{image_id}` of the path (as [`ImageIdPath`] reads it).
pub struct ImageChange {
    svc: Service,
    audit: Audit,
    id: String,
    /// The id as the audit trail names it: only a well-formed one (the path is the client's
    /// text).
    audited_id: Option<String>,
}

impl axum::extract::FromRequestParts<Service> for ImageChange {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        svc: &Service,
    ) -> Result<Self, Self::Rejection> {
        let Ok(ImageIdPath(id)) = ImageIdPath::from_request_parts(parts, svc).await;
        let Ok(audit) = Audit::from_request_parts(parts, svc).await;
        Ok(ImageChange {
            svc: svc.clone(),
            audit,
            audited_id: ImageId::parse(&id).map(|id| id.to_string()),
            id,
        })
    }
}

impl ImageChange {
    /// Starts the audit event of `action` about this image.
    fn record<'a>(&'a self, action: &'a str) -> AuditEvent<'a> {
        let event = self.audit.record(action);
        match &self.audited_id {
            Some(id) => event.image(id),
            None => event,
        }
    }

    /// Runs `act` (a `Service` use case taking the caller and the path's raw image id) and
    /// records its answer in the audit trail under `action`, with the answer as its detail;
    /// returns it.
    async fn answer(
        self,
        action: &str,
        act: impl AsyncFnOnce(&Service, &Caller, &str) -> crate::domain::Result<&'static str>,
    ) -> ApiResult<&'static str> {
        let result = act(&self.svc, self.audit.caller(), &self.id)
            .await
            .map_err(ApiError::from);
        let event = self.record(action);
        match &result {
            Ok(answer) => event.detail(answer).success(),
            Err(e) => event.error(e),
        }
        result
    }
}

/// The identifier of a request as the audit trail names it: only a valid one.
fn audited_identifier(fields: &Fields) -> Option<String> {
    fields
        .get(Field::Identifier)
        .and_then(|i| Identifier::parse(i).ok())
        .map(|i| i.to_string())
}

/// An event about a chunked upload, when its identifier is valid.
fn about_upload<'a>(event: AuditEvent<'a>, identifier: &'a Option<String>) -> AuditEvent<'a> {
    match identifier {
        Some(i) => event.identifier(i),
        None => event,
    }
}

/// Lists images, newest first.
#[utoipa::path(get, path = "/images", tag = "images",
    params(
        ("userId" = Option<String>, Query, description = "Only this user's images"),
        ("limit" = Option<u64>, Query, description = "At most this many"),
        ("offset" = Option<u64>, Query, description = "Skip this many"),
    ),
    responses(
        (status = 200, body = Vec<ImageView>),
        (status = 400, description = "limit or offset not a number, or a malformed query string: a value not UTF-8 once percent-decoded, more than 200 parameters (INVALID_PARAMETER)", body = super::docs::ErrorBody),
        super::docs::ForAnotherUser,
    ))]
pub async fn list(
    State(svc): State<Service>,
    Authenticated(caller): Authenticated,
    fields: Query,
) -> ApiResult<Json<Vec<ImageView>>> {
    let number = |name: &str| -> ApiResult<Option<u64>> {
        match fields.get(name).map(str::trim).filter(|v| !v.is_empty()) {
            None => Ok(None),
            // Past u64, as many as there are.
            Some(v) => crate::domain::validate::count(v).map(Some).ok_or_else(|| {
                ApiError::bad_request(format!("{name} must be a non-negative integer"))
            }),
        }
    };
    let user_id =
        crate::domain::validate::user_id(fields.get("userId")).map_err(ApiError::bad_request)?;
    let query = ListQuery {
        user_id: Some(user_id).filter(|u| !u.is_empty()),
        limit: number("limit")?,
        offset: number("offset")?,
    };
    let images = svc.list_images(&caller, query).await?;
    Ok(Json(images.iter().map(ImageView::from).collect()))
}

/// One image, with its check and slim state.
#[utoipa::path(get, path = "/images/{image_id}", tag = "images",
    params(ImageIdPath),
    responses(
        (status = 200, body = ImageView),
        super::docs::NoSuchImage,
    ))]
pub async fn get_image(
    State(svc): State<Service>,
    Authenticated(caller): Authenticated,
    ImageIdPath(id): ImageIdPath,
) -> ApiResult<Json<ImageView>> {
    Ok(Json(ImageView::from(&svc.image(&caller, &id).await?)))
}

/// Deletes an image and its stored bytes; work running on it is cancelled.
#[utoipa::path(delete, path = "/images/{image_id}", tag = "images",
    params(ImageIdPath),
    responses(
        (status = 200, description = "`delete success`", body = String, content_type = "text/plain"),
        (status = 400, description = "A form body sent along that cannot be read (BAD_BODY), or that is malformed or over 64 KiB (INVALID_PARAMETER)", body = super::docs::ErrorBody),
        super::docs::NoSuchImage,
        super::docs::BodyTimedOut,
    ))]
pub async fn delete_image(image: ImageChange, _f: FormFields) -> ApiResult<&'static str> {
    let result = image
        .svc
        .delete_image(image.audit.caller(), &image.id)
        .await
        .map_err(ApiError::from);
    let event = image.record("image.delete");
    match &result {
        Ok(true) => event.success(),
        // The answer is the same (SPEC: deleting a missing image succeeds); the trail says
        // that nothing the caller may see was there.
        Ok(false) => event.outcome("not_found"),
        Err(e) => event.error(e),
    }
    result.map(|_| "delete success")
}

/// Queues a slim (compressed qcow2 copy, served once it checks consistent).
#[utoipa::path(post, path = "/images/{image_id}/action/slim", tag = "images",
    params(ImageIdPath),
    responses(
        (status = 200, description = "`compress in progress`, or why no slim is needed or possible", body = String, content_type = "text/plain"),
        (status = 400, description = "Not slimmable: an ISO or raw image, or its check did not find it usable (SLIM_REFUSED)", body = super::docs::ErrorBody),
        super::docs::NoSuchImage,
    ))]
pub async fn slim(image: ImageChange) -> ApiResult<&'static str> {
    image.answer("image.slim", Service::request_slim).await
}

/// Queues a fresh check: the stored bytes' MD5 and SHA-256 are compared with those recorded
/// when they were stored (a mismatch reports the image corrupted), then qemu-img checks it.
#[utoipa::path(post, path = "/images/{image_id}/action/check", tag = "images",
    params(ImageIdPath),
    responses(
        (status = 200, description = "`check in progress`, or that a check is already pending", body = String, content_type = "text/plain"),
        super::docs::NoSuchImage,
    ))]
pub async fn check(image: ImageChange) -> ApiResult<&'static str> {
    image.answer("image.check", Service::request_check).await
}

/// Stores one chunk of a chunked upload (any order, concurrently, re-sent chunks replace).
#[utoipa::path(post, path = "/images/upload", tag = "chunks",
    request_body(content = super::docs::ChunkForm, content_type = "multipart/form-data"),
    responses(
        (status = 200, description = "`ok.`", body = String, content_type = "text/plain"),
        (status = 400, description = "Bad identifier, chunk number, body, totals (SIZE_MISMATCH) or checksum (CHECKSUM_MISMATCH)", body = super::docs::ErrorBody),
        super::docs::WriteRefused,
        (status = 409, description = "The upload is being merged, or was merged", body = super::docs::ErrorBody),
    ))]
pub async fn upload_chunk(
    State(svc): State<Service>,
    audit: Audit,
    headers: HeaderMap,
    limit: WithinImageLimit,
    Form { fields, mut parts }: Form,
) -> ApiResult<&'static str> {
    // A value that is not text fails to parse (never skipped unverified).
    let text: Vec<(&str, std::borrow::Cow<str>)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), String::from_utf8_lossy(v.as_bytes())))
        .collect();
    let declared = Checksum::from_headers(text.iter().map(|(k, v)| (*k, v.as_ref())))
        .map_err(ApiError::bad_request)?;
    let mut trace = ChunkTrace::default();
    let result = svc
        .upload_chunk(
            audit.caller(),
            fields,
            declared,
            parts.as_mut(),
            limit.least_image_bytes(),
            &mut trace,
        )
        .await
        .map_err(ApiError::from);
    // One event per session opened (not per chunk), and one per refused chunk.
    if trace.session_opened {
        let event = about_upload(audit.record("upload.session_opened"), &trace.identifier);
        match &trace.owner {
            Some(owner) => owned(event, &audit, owner).success(),
            None => event.success(),
        }
    }
    if let Err(e) = &result {
        about_upload(audit.record("upload.chunk"), &trace.identifier).error(e);
    }
    result.map(|()| "ok.")
}

/// Drops every chunk received for an identifier.
#[utoipa::path(delete, path = "/images/upload", tag = "chunks",
    params(
        ("identifier" = String, Query, description = "The upload's identifier (also accepted as a form field)"),
        ("priority" = Option<String>, Query, description = "Storage tier"),
    ),
    responses(
        (status = 200, description = "`cancel success`", body = String, content_type = "text/plain"),
        (status = 400, description = "Missing or invalid identifier", body = super::docs::ErrorBody),
        super::docs::ForAnotherUser,
        super::docs::BodyTimedOut,
    ))]
pub async fn cancel_upload(
    State(svc): State<Service>,
    audit: Audit,
    FormFields(fields): FormFields,
) -> ApiResult<&'static str> {
    let identifier = audited_identifier(&fields);
    let result = svc
        .cancel_upload(audit.caller(), fields)
        .await
        .map_err(ApiError::from);
    outcome(
        about_upload(audit.record("upload.cancel"), &identifier),
        &result,
    );
    result.map(|()| "cancel success")
}

/// Assembles the chunks of an identifier into an image (idempotent).
#[utoipa::path(post, path = "/images/merge", tag = "chunks",
    request_body(content = super::docs::MergeForm, content_type = "multipart/form-data"),
    responses(
        (status = 200, description = "The image; a check is queued", body = FlatImage),
        (status = 400, description = "Missing chunks (named), bad name or bad zip", body = super::docs::ErrorBody),
        super::docs::WriteRefused,
        (status = 404, description = "Nothing was uploaded under this identifier", body = super::docs::ErrorBody),
    ))]
pub async fn merge(
    State(svc): State<Service>,
    audit: Audit,
    FormFields(fields): FormFields,
) -> ApiResult<Json<FlatImage>> {
    let identifier = audited_identifier(&fields);
    let result = svc.merge(audit.caller(), fields).await;
    let event = about_upload(audit.record("upload.merge"), &identifier);
    created(event, &audit, result)
}

/// The resume query: the chunks held for an identifier (or the original's greeting without one).
#[utoipa::path(get, path = "/images/upload", tag = "chunks",
    params(
        ("identifier" = Option<String>, Query, description = "The upload's identifier"),
        ("chunkNumber" = Option<u32>, Query, description = "Only whether this chunk is held"),
        ("priority" = Option<String>, Query, description = "Storage tier; when sent, a tier's and the one the upload was started with"),
    ),
    responses(
        (status = 200, description = "The chunks held (JSON); `Upload get request received.` (text) without an identifier; empty when chunkNumber is held",
            content(
                (crate::domain::uploads::UploadStatus = "application/json"),
                (String = "text/plain"),
            )),
        (status = 204, description = "chunkNumber is not held"),
        (status = 400, description = "Bad identifier, chunk number or priority, or a malformed query string (INVALID_PARAMETER)", body = super::docs::ErrorBody),
        super::docs::ForAnotherUser,
    ))]
pub async fn upload_query(
    State(svc): State<Service>,
    Authenticated(caller): Authenticated,
    query: Query,
) -> ApiResult<Response> {
    let fields = query.fields();
    if fields.get(Field::Identifier).is_none() {
        return Ok("Upload get request received.".into_response());
    }
    let status = svc.upload_status(&caller, fields.clone()).await?;
    match fields.get(Field::ChunkNumber) {
        None => Ok(Json(status).into_response()),
        Some(n) => {
            let n = ChunkNumber::parse(Some(n), None)
                .map_err(ApiError::bad_request)?
                .get();
            let present = status.chunks.iter().any(|c| c.number == n);
            Ok(if present {
                StatusCode::OK
            } else {
                StatusCode::NO_CONTENT
            }
            .into_response())
        }
    }
}

/// Downloads the stored bytes (the slimmed ones once slimmed), or a zip of them.
#[utoipa::path(get, path = "/images/{image_id}/action/download", tag = "images",
    params(
        ("image_id" = String, Path, description = "The image's id (a UUID)"),
        ("isZip" = Option<bool>, Query, description = "`true`: a zip holding `{base}/{fileName}`"),
        ("Range" = Option<String>, Header, description = "One `bytes=` range (not with isZip)"),
        ("If-Range" = Option<String>, Header, description = "The ETag or Last-Modified the Range belongs to; other bytes are served whole (200)"),
        ("If-None-Match" = Option<String>, Header, description = "304 when the ETag matches"),
        ("If-Modified-Since" = Option<String>, Header, description = "304 when not modified since"),
        ("If-Match" = Option<String>, Header, description = "412 unless the ETag matches"),
        ("If-Unmodified-Since" = Option<String>, Header, description = "412 when modified since"),
    ),
    responses(
        (status = 200, description = "The bytes, as an attachment, with ETag, Last-Modified and (plain form) Repr-Digest", content_type = "application/octet-stream"),
        (status = 206, description = "The requested range", content_type = "application/octet-stream"),
        (status = 304, description = "Not modified (If-None-Match, If-Modified-Since)"),
        (status = 412, description = "If-Match or If-Unmodified-Since failed", body = super::docs::ErrorBody),
        super::docs::BadQuery,
        super::docs::NoSuchImage,
        (status = 416, description = "Range not satisfiable", body = super::docs::ErrorBody),
    ))]
pub async fn download(
    State(svc): State<Service>,
    Authenticated(caller): Authenticated,
    ImageIdPath(id): ImageIdPath,
    fields: Query,
    method: Method,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let zip = fields
        .get("isZip")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let repr = svc.representation(&caller, &id, zip).await?;
    let validators = conditional::Validators {
        etag: &repr.etag,
        last_modified: repr.last_modified,
        last_modified_strong: repr.last_modified_strong,
    };
    let mut h = validator_headers(&repr);
    let honour_range = match conditional::evaluate(&headers, &validators) {
        conditional::Outcome::Failed => {
            return Err(ApiError::of(
                crate::domain::Code::PreconditionFailed,
                "the image's current representation does not match the request's preconditions",
            ))
        }
        conditional::Outcome::NotModified => {
            let mut resp = StatusCode::NOT_MODIFIED.into_response();
            resp.headers_mut().extend(h);
            return Ok(resp);
        }
        conditional::Outcome::Serve { range } => range,
    };
    let range = requested_range(&headers, repr.ranges && honour_range);
    h.extend(content_headers(&repr));
    let (length, partial, body) = if method == Method::HEAD {
        // The same headers as a GET, and no store read.
        let partial = match range {
            None => None,
            Some(r) => {
                let size = repr.length;
                let r = r
                    .resolve(size)
                    .ok_or(crate::domain::Error::RangeNotSatisfiable { size })?;
                Some((r, size))
            }
        };
        let length = partial.map_or(repr.length, |(r, _)| r.length());
        (length, partial, Body::empty())
    } else {
        let dl = svc.open(repr, range).await?;
        (dl.length, dl.partial, Body::from_stream(dl.body))
    };
    let mut resp = Response::new(body);
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    if let Some((r, size)) = partial {
        *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
        let v = format!("bytes {}-{}/{size}", r.start, r.end);
        h.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&v).expect("ascii"),
        );
    }
    resp.headers_mut().extend(h);
    Ok(resp)
}

/// The validators of a representation (`ETag`, `Last-Modified`) and, when known, its
/// `Repr-Digest` (RFC 9530: the digest of the whole representation, also on a 206).
fn validator_headers(repr: &Representation) -> HeaderMap {
    let mut h = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&repr.etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(
        header::LAST_MODIFIED,
        HeaderValue::from_str(&conditional::http_date(repr.last_modified)).expect("ascii"),
    );
    if let Some(bytes) = repr.sha256.as_deref().and_then(|d| hex::decode(d).ok()) {
        let v = format!("sha-256=:{}:", B64.encode(bytes));
        h.insert("repr-digest", HeaderValue::from_str(&v).expect("base64"));
    }
    h
}

/// `Content-Type`, `Content-Disposition` and, where ranges are served, `Accept-Ranges`.
fn content_headers(repr: &Representation) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(repr.content_type),
    );
    h.insert(
        header::CONTENT_DISPOSITION,
        content_disposition(&repr.file_name),
    );
    if repr.ranges {
        h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    }
    h
}

/// The range a request asks for, when it may be honoured (`honour`: the representation
/// serves ranges and no `If-Range` names other bytes; else the whole representation is sent,
/// RFC 9110 section 13.1.5, never a range that could be spliced onto other bytes). One
/// `Range` field only: several are not a request this service can honour, and are ignored.
fn requested_range(headers: &HeaderMap, honour: bool) -> Option<RangeRequest> {
    let ranges: Vec<_> = headers.get_all(header::RANGE).iter().collect();
    match ranges[..] {
        [one] if honour => one.to_str().ok().and_then(parse_range),
        _ => None,
    }
}

/// Parses a single `bytes=` range. Anything else (other units, several ranges, garbage) is
/// ignored, and the whole object is sent, as RFC 9110 allows.
pub fn parse_range(v: &str) -> Option<RangeRequest> {
    // A range unit is compared case-insensitively (RFC 9110 section 14.1).
    let v = v.trim();
    let spec = v
        .get(..6)
        .filter(|unit| unit.eq_ignore_ascii_case("bytes="))
        .map(|_| v[6..].trim())?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    // Past u64 a position is beyond any representation: a first position unsatisfiable
    // (416), a last one or a suffix the whole (RFC 9110 section 14.1.2).
    let num = crate::domain::validate::count;
    if a.is_empty() {
        return Some(RangeRequest::Suffix(num(b)?));
    }
    let start = num(a)?;
    let end = if b.is_empty() { None } else { Some(num(b)?) };
    if end.is_some_and(|e| e < start) {
        return None;
    }
    Some(RangeRequest::From { start, end })
}

/// RFC 5987 `attr-char`: what may stay unescaped in `filename*`.
const ATTR: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'!')
    .remove(b'#')
    .remove(b'$')
    .remove(b'&')
    .remove(b'+')
    .remove(b'-')
    .remove(b'.')
    .remove(b'^')
    .remove(b'_')
    .remove(b'`')
    .remove(b'|')
    .remove(b'~');

/// `attachment; filename="..."`, plus `filename*=UTF-8''...` for names that are not plain ASCII
/// or hold `"`, `\` or `%` (RFC 6266 appendix D: some user agents percent-decode `filename`,
/// so a `%` there is replaced and the exact name goes in `filename*`, which they prefer).
pub fn content_disposition(name: &str) -> HeaderValue {
    let fallback: String = name
        .chars()
        .map(|c| {
            if (c.is_ascii_graphic() || c == ' ') && !matches!(c, '"' | '\\' | '%') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let v = if fallback == name {
        format!("attachment; filename=\"{name}\"")
    } else {
        format!(
            "attachment; filename=\"{fallback}\"; filename*=UTF-8''{}",
            utf8_percent_encode(name, ATTR)
        )
    };
    HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static("attachment"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(
            parse_range("bytes=0-9"),
            Some(RangeRequest::From {
                start: 0,
                end: Some(9)
            })
        );
        assert_eq!(
            parse_range("bytes=5-"),
            Some(RangeRequest::From {
                start: 5,
                end: None
            })
        );
        assert_eq!(parse_range("bytes=-5"), Some(RangeRequest::Suffix(5)));
        for unit in ["BYTES=0-0", "Bytes=0-0", " bytes=0-0 "] {
            let first = Some(RangeRequest::From {
                start: 0,
                end: Some(0),
            });
            assert_eq!(parse_range(unit), first, "{unit}");
        }
        assert_eq!(parse_range("bytesx0-0"), None);
        assert_eq!(parse_range("é"), None);
        assert_eq!(parse_range("bytes=0-1,3-4"), None);
        assert_eq!(parse_range("items=0-1"), None);
        assert_eq!(parse_range("bytes=9-2"), None);
        assert_eq!(parse_range("bytes=a-b"), None);
        assert_eq!(parse_range("bytes=+1-2"), None);
        let huge = "99999999999999999999";
        assert_eq!(
            parse_range(&format!("bytes={huge}-")),
            Some(RangeRequest::From {
                start: u64::MAX,
                end: None
            })
        );
        assert_eq!(
            parse_range(&format!("bytes=0-{huge}")),
            Some(RangeRequest::From {
                start: 0,
                end: Some(u64::MAX)
            })
        );
        assert_eq!(
            parse_range(&format!("bytes=-{huge}")),
            Some(RangeRequest::Suffix(u64::MAX))
        );
    }

    #[test]
    fn dispositions() {
        assert_eq!(
            content_disposition("a b.qcow2"),
            "attachment; filename=\"a b.qcow2\""
        );
        assert_eq!(
            content_disposition("镜像.iso"),
            "attachment; filename=\"__.iso\"; filename*=UTF-8''%E9%95%9C%E5%83%8F.iso"
        );
        // Read as percent-encoded by some user agents: a%22b.img would be saved as a"b.img.
        assert_eq!(
            content_disposition("a%22b.img"),
            "attachment; filename=\"a_22b.img\"; filename*=UTF-8''a%2522b.img"
        );
    }
}
