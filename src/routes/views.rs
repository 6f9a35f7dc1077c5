//! JSON shapes the existing clients read. Field names and types are the contract (SPEC §2).

use crate::domain::texts;
use entity::{
    image::Model,
    status::{CompressStatus, SlimStatus},
};
use sea_orm::ActiveEnum;
use serde::Serialize;
use utoipa::ToSchema;

/// The flat object of upload and merge responses (no nested values).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FlatImage {
    pub image_id: String,
    pub file_name: String,
    pub upload_time: String,
    pub user_id: String,
    pub storage_medium: String,
    pub slim_status: i32,
    pub check_status: i32,
    pub msg: String,
    /// Extra: lower-case hex SHA-256 of the image, when known already (single uploads).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// `checkStatus` of an upload's or a merge's answer (SPEC section 2, the original's meaning):
/// 0, the check was queued. (The original's 1, it could not be, does not happen here: the
/// check is a durable job queued with the image.)
const CHECK_QUEUED: i32 = 0;

impl From<&Model> for FlatImage {
    fn from(m: &Model) -> Self {
        FlatImage {
            image_id: m.id.clone(),
            file_name: m.file_name.clone(),
            upload_time: m.upload_time.clone(),
            user_id: m.user_id.clone(),
            storage_medium: m.bucket.clone(),
            slim_status: m.slim_status.to_value(),
            check_status: CHECK_QUEUED,
            msg: texts::CHECK_IN_PROGRESS.to_string(),
            sha256: recorded_sha256(m),
        }
    }
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageView {
    pub image_id: String,
    pub file_name: String,
    pub user_id: String,
    pub upload_time: String,
    pub storage_medium: String,
    pub slim_status: i32,
    pub check_status_response: CheckStatusResponse,
    pub compress_info: CompressInfo,
    /// Extra: the stored image's length in bytes, as a number.
    pub size: i64,
    /// Extra: lower-case hex SHA-256 of the bytes served, as recorded when they were stored
    /// (empty until known: a merged image's is computed by its first check).
    pub sha256: String,
    /// Extra: lower-case hex MD5 of the image as uploaded (before any slim).
    pub original_checksum: String,
    /// Extra: lower-case hex SHA-256 of the image as uploaded (before any slim).
    pub original_sha256: String,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckStatusResponse {
    pub status: i32,
    pub msg: String,
    pub check_info: CheckInfo,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckInfo {
    /// MD5 of the bytes served, as the last check read them.
    pub checksum: String,
    /// Extra: SHA-256 of the bytes served, as the last check read them.
    pub sha256: String,
    pub check_result: i32,
    pub image_info: ImageInfo,
}

#[derive(Serialize, ToSchema)]
pub struct ImageInfo {
    #[serde(rename = "image-end-offset")]
    pub image_end_offset: String,
    #[serde(rename = "check-errors")]
    pub check_errors: String,
    pub format: String,
    pub filename: String,
    /// GiB, three decimals.
    pub virtual_size: f64,
    /// Bytes, as a string of digits.
    pub disk_size: String,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CompressInfo {
    pub compress_status: i32,
    pub compress_msg: String,
    pub compress_rate: f64,
}

impl From<&Model> for ImageView {
    fn from(m: &Model) -> Self {
        ImageView {
            image_id: m.id.clone(),
            file_name: m.file_name.clone(),
            user_id: m.user_id.clone(),
            upload_time: m.upload_time.clone(),
            storage_medium: m.bucket.clone(),
            slim_status: m.slim_status.to_value(),
            check_status_response: CheckStatusResponse {
                status: m.check_status.to_value(),
                msg: m.check_msg.clone(),
                check_info: CheckInfo {
                    checksum: m.checksum.clone().unwrap_or_default(),
                    sha256: m.sha256.clone().unwrap_or_default(),
                    check_result: m.check_result,
                    image_info: ImageInfo {
                        image_end_offset: m.image_end_offset.clone().unwrap_or_default(),
                        check_errors: m.check_errors.clone().unwrap_or_default(),
                        format: m.format.clone().unwrap_or_default(),
                        filename: m.file_name.clone(),
                        virtual_size: (m.virtual_size.unwrap_or(0.0) * 1000.0).round() / 1000.0,
                        disk_size: served_size(m).to_string(),
                    },
                },
            },
            compress_info: CompressInfo {
                // Never slimmed reads as 0, as it always has (`slimStatus` 0 says it was not).
                compress_status: m
                    .compress_status
                    .unwrap_or(CompressStatus::Completed)
                    .to_value(),
                compress_msg: m.compress_msg.clone().unwrap_or_default(),
                compress_rate: m.compress_rate.unwrap_or(0.0),
            },
            size: served_size(m),
            sha256: recorded_sha256(m).unwrap_or_default(),
            original_checksum: m
                .original_md5
                .clone()
                .or_else(|| {
                    (m.slim_status != SlimStatus::Slimmed)
                        .then(|| m.checksum.clone())
                        .flatten()
                })
                .unwrap_or_default(),
            original_sha256: m.original_sha256.clone().unwrap_or_default(),
        }
    }
}

/// SHA-256 of the bytes downloads serve, as recorded when they were stored (else as last
/// checked).
fn recorded_sha256(m: &Model) -> Option<String> {
    let recorded = match (m.slim_status, &m.slim_object_key) {
        (SlimStatus::Slimmed, Some(_)) => m.slim_sha256.clone(),
        _ => m.original_sha256.clone(),
    };
    recorded.or_else(|| m.sha256.clone())
}

/// Length of the bytes downloads serve: the slimmed copy once there is one.
fn served_size(m: &Model) -> i64 {
    match (m.slim_status, m.slim_size_bytes) {
        (SlimStatus::Slimmed, Some(s)) => s,
        _ => m.size_bytes,
    }
}
