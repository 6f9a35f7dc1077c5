//! The OpenAPI document (`GET /openapi.json`). Paths come from the `#[utoipa::path]` attribute
//! on each handler, registered together with the route itself (`utoipa_axum::routes!`), so a
//! route cannot exist without its documentation. The types here only describe request bodies
//! the handlers read field by field.

use utoipa::{
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme},
    OpenApi, ToSchema,
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "file-system",
        description = "S3-backed store for virtual-machine images, compatible with the EdgeGallery \
                       file-system API. Form fields may also be sent as query parameters or as an \
                       url-encoded body."
    ),
    tags(
        (name = "images", description = "Upload, query, download, delete and slim images"),
        (name = "chunks", description = "Chunked (resumable) uploads"),
        (name = "quotas", description = "Per-user quotas (FS_QUOTA_BYTES, FS_QUOTA_IMAGES) and usage"),
        (name = "operations", description = "Health, readiness, metrics and this document")
    )
)]
pub struct ApiDoc;

/// Declares the bearer credential (`FS_AUTH`) in `doc`: a `bearerAuth` scheme, asked for by
/// every API operation and by `/metrics`, which may all answer 401. Both `{}` (no credential:
/// authentication off, the default) and `bearerAuth` are listed, since which one applies is
/// the deployment's choice. Every API operation may also answer 503 (the database or the
/// store unreachable, or for an upload every upload slot taken), with `Retry-After`.
pub fn add_bearer_security(doc: &mut utoipa::openapi::OpenApi) {
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "bearerAuth",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "With FS_AUTH on: a static API token (FS_AUTH_TOKENS_FILE) or a JWT. A \
                     missing or refused credential is 401 UNAUTHORIZED with \
                     WWW-Authenticate: Bearer. /metrics takes FS_METRICS_TOKEN when it is set.",
                ))
                .build(),
        ),
    );
    let unauthorized = error_response(
        "UNAUTHORIZED: authentication is on and the bearer credential is missing or refused",
    );
    let unavailable = error_response(
        "DATABASE_UNAVAILABLE or STORAGE_UNAVAILABLE: the database or the object store cannot \
         be reached; SERVICE_BUSY (an upload or a chunk): every upload slot stayed taken for \
         FS_UPLOAD_QUEUE_TIMEOUT_SECS. Retry after the Retry-After header's seconds",
    );
    for (path, item) in doc.paths.paths.iter_mut() {
        let api = path.starts_with(super::BASE);
        if !(api || path == "/metrics") {
            continue;
        }
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.head,
            &mut item.patch,
        ];
        for op in operations.into_iter().flatten() {
            op.security = Some(vec![
                SecurityRequirement::default(),
                SecurityRequirement::new("bearerAuth", Vec::<String>::new()),
            ]);
            let responses = &mut op.responses.responses;
            responses
                .entry("401".into())
                .or_insert(unauthorized.clone().into());
            if api {
                responses
                    .entry("503".into())
                    .or_insert(unavailable.clone().into());
            }
        }
    }
}

/// A response of `description` whose body is the JSON [`ErrorBody`].
fn error_response(description: &str) -> utoipa::openapi::Response {
    utoipa::openapi::ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            utoipa::openapi::ContentBuilder::new()
                .schema(Some(utoipa::openapi::Ref::from_schema_name("ErrorBody")))
                .build(),
        )
        .build()
}

/// Every error code (`crate::domain::Code`) as the values of a string.
fn error_codes() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(crate::domain::Code::ALL.iter().map(|c| c.as_str())))
        .description(Some(
            "Stable machine-readable code (README: Error codes); the message is for people",
        ))
        .examples(["INVALID_PARAMETER"])
        .build()
}

/// The JSON body of every error response.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ErrorBody {
    /// Stable machine-readable code, one of the list of `crate::domain::Code` (the README's
    /// "Error codes").
    #[schema(schema_with = error_codes)]
    code: String,
    /// Human-readable text (the original's texts where clients compare them).
    message: String,
}

/// The 403 of a request whose `userId` names another user than the caller (authentication on).
#[derive(utoipa::IntoResponses)]
#[response(
    status = 403,
    description = "userId names another user and the caller is not an admin (FORBIDDEN; authentication on)"
)]
#[allow(dead_code)]
pub struct ForAnotherUser(ErrorBody);

/// The 408 of an upload whose client stopped sending the body (`FS_BODY_IDLE_TIMEOUT_SECS`)
/// or sent it too slowly (`FS_BODY_MIN_BYTES_PER_SEC`).
#[derive(utoipa::IntoResponses)]
#[response(
    status = 408,
    description = "The client stopped sending the body (REQUEST_TIMEOUT)"
)]
#[allow(dead_code)]
pub struct BodyTimedOut(ErrorBody);

/// The 400 of a malformed query string: a name or value that is not UTF-8 once
/// percent-decoded, or more than 200 parameters.
#[derive(utoipa::IntoResponses)]
#[response(
    status = 400,
    description = "A malformed query string: a value not UTF-8 once percent-decoded, or more than 200 parameters (INVALID_PARAMETER)"
)]
#[allow(dead_code)]
pub struct BadQuery(ErrorBody);

/// The refusals every write of image bytes shares (an upload, a chunk, a merge):
/// 403 for another user's `userId`, 408 for a body that stopped coming
/// (`FS_BODY_IDLE_TIMEOUT_SECS`), 413 for an image too large or past a quota, 507 for a full
/// store or scratch space.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum WriteRefused {
    #[response(
        status = 403,
        description = "userId names another user and the caller is not an admin (FORBIDDEN; authentication on)"
    )]
    ForAnotherUser(ErrorBody),
    #[response(
        status = 408,
        description = "The client stopped sending the body (REQUEST_TIMEOUT)"
    )]
    BodyTimedOut(ErrorBody),
    #[response(
        status = 413,
        description = "Larger than FS_MAX_IMAGE_BYTES (FILE_TOO_LARGE), or past the quota of the image's user (QUOTA_EXCEEDED): the request adds nothing (a single upload stops at the bytes that cross the limit), and chunks held before are kept (a zipped upload whose image does not fit is dropped at its merge)"
    )]
    TooLarge(ErrorBody),
    #[response(
        status = 507,
        description = "The store, the scratch space or the metadata database is full (INSUFFICIENT_STORAGE); nothing of the request is kept"
    )]
    StorageFull(ErrorBody),
}

/// The 404 of a request for an image that does not exist (or that the caller may not see).
#[derive(utoipa::IntoResponses)]
#[response(status = 404, description = "No such image")]
#[allow(dead_code)]
pub struct NoSuchImage(ErrorBody);

/// `POST /images`: the image (or a zip holding one image in a folder) and its owner.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct UploadForm {
    /// The file; its name must end in an image extension or `.zip`.
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
    #[schema(rename = "userId")]
    user_id: Option<String>,
    /// Storage tier; missing or empty means 0.
    priority: Option<String>,
    /// The file's checksum as sent (for a `.zip`, the archive's): `md5:<hex>` or
    /// `sha256:<hex>`; a mismatch is 400 `CHECKSUM_MISMATCH` and nothing is recorded.
    #[schema(pattern = r"^(md5|sha256):[0-9a-fA-F]+$")]
    checksum: Option<String>,
}

/// `POST /images/upload`: one chunk.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ChunkForm {
    /// The chunk; its multipart file name is `"{n}.part"`, n = 1..10000.
    #[schema(value_type = String, format = Binary)]
    part: Vec<u8>,
    /// Chosen by the client, shared by all chunks of one file: 1..128 of `[A-Za-z0-9._-]`.
    #[schema(pattern = r"^[A-Za-z0-9._-]{1,128}$")]
    identifier: String,
    /// Overrides the number in the part's file name.
    #[schema(rename = "chunkNumber", minimum = 1, maximum = 10000)]
    chunk_number: Option<u32>,
    priority: Option<String>,
    /// Bytes of the whole upload (simple-uploader.js / resumable.js); recorded, and the merge
    /// must cover it exactly (400 `SIZE_MISMATCH`).
    #[schema(rename = "totalSize", minimum = 0)]
    total_size: Option<u64>,
    /// How many chunks the upload has; a chunk above it is 400, a merge missing one is 400
    /// `MISSING_CHUNKS`.
    #[schema(rename = "totalChunks", minimum = 1, maximum = 10000)]
    total_chunks: Option<u32>,
    /// The client's nominal chunk size in bytes (accepted, not enforced).
    #[schema(rename = "chunkSize", minimum = 1)]
    chunk_size: Option<u64>,
    /// Bytes of this chunk; a body of another length is 400 `SIZE_MISMATCH`, nothing stored.
    #[schema(rename = "currentChunkSize", minimum = 0)]
    current_chunk_size: Option<u64>,
    /// This chunk's checksum: `md5:<hex>`, `sha256:<hex>` or `crc32c:<hex>` (also accepted
    /// as the headers Content-MD5, Repr-Digest, Content-Digest, Digest); a mismatch is 400
    /// `CHECKSUM_MISMATCH`, nothing stored.
    #[schema(
        rename = "chunkChecksum",
        pattern = r"^(md5|sha256|crc32c):[0-9a-fA-F]+$"
    )]
    chunk_checksum: Option<String>,
}

/// `POST /images/merge`: assembles the chunks of `identifier` into an image.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct MergeForm {
    #[schema(pattern = r"^[A-Za-z0-9._-]{1,128}$")]
    identifier: String,
    /// The original file name: an image extension or `.zip`, at most 128 characters.
    #[schema(pattern = r"^.+\.(qcow2|img|iso|zip)$", max_length = 128)]
    filename: String,
    #[schema(rename = "userId")]
    user_id: Option<String>,
    priority: Option<String>,
    /// The whole file's checksum: `md5:<hex>` or `sha256:<hex>`; a mismatch is 400
    /// `CHECKSUM_MISMATCH`, the chunks are kept.
    #[schema(pattern = r"^(md5|sha256):[0-9a-fA-F]+$")]
    checksum: Option<String>,
    /// As on the chunks: the merge refuses chunks that do not cover them exactly.
    #[schema(rename = "totalSize", minimum = 0)]
    total_size: Option<u64>,
    #[schema(rename = "totalChunks", minimum = 1, maximum = 10000)]
    total_chunks: Option<u32>,
}

/// `GET /ready`: what was checked.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Readiness {
    #[schema(example = "ok")]
    database: String,
    #[schema(example = "ok")]
    storage: String,
}
