//! The OpenAPI document (`GET /openapi.json`). Paths come from the `#[utoipa::path]` attribute
//! on each handler, registered together with the route itself (`utoipa_axum::routes!`), so a
//! route cannot exist without its documentation. The types here only describe request bodies
//! the handlers read field by field.

use utoipa::{OpenApi, ToSchema};

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
        (name = "operations", description = "Health, readiness, metrics and this document")
    )
)]
pub struct ApiDoc;

/// The JSON body of every error response.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ErrorBody {
    /// Stable machine-readable code, e.g. `INVALID_PARAMETER`, `IMAGE_NOT_FOUND`.
    #[schema(example = "INVALID_PARAMETER")]
    code: String,
    /// Human-readable text (the original's texts where clients compare them).
    message: String,
}

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
