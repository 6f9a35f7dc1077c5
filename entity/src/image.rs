//! One stored image and what is known about it (check and slim results).

use crate::status::{CheckStatus, CompressStatus, SlimStatus};
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "images")]
pub struct Model {
    /// UUID v4, 36 characters.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub file_name: String,
    pub user_id: String,
    /// `YYYY-MM-DD HH:MM:SS` UTC, written once at creation.
    pub upload_time: String,
    pub priority: i32,
    /// Bucket (tier) the object lives in.
    pub bucket: String,
    pub object_key: String,
    pub size_bytes: i64,
    /// CRC-32 of the stored bytes, computed while they streamed in (needed by zip downloads).
    pub crc32: Option<i64>,
    /// Chunked-upload identifier this image was merged from, if any.
    pub source_identifier: Option<String>,
    pub slim_status: SlimStatus,
    pub check_status: CheckStatus,
    pub check_msg: String,
    pub check_result: i32,
    pub checksum: Option<String>,
    pub image_end_offset: Option<String>,
    pub check_errors: Option<String>,
    pub format: Option<String>,
    pub virtual_size: Option<f64>,
    /// `None` until the first slim.
    pub compress_status: Option<CompressStatus>,
    pub compress_msg: Option<String>,
    pub compress_rate: Option<f64>,
    pub created_at: i64,
    pub updated_at: i64,
    /// The slimmed copy, served instead of the original once the slim checked consistent.
    pub slim_object_key: Option<String>,
    pub slim_size_bytes: Option<i64>,
    pub slim_crc32: Option<i64>,
    /// Lower-case hex MD5 of the image as received (the upload's stream, or its first check).
    pub original_md5: Option<String>,
    /// Lower-case hex SHA-256 of the image as received.
    pub original_sha256: Option<String>,
    /// Lower-case hex MD5 of the slimmed copy, computed when it was made.
    pub slim_md5: Option<String>,
    /// Lower-case hex SHA-256 of the slimmed copy, computed when it was made.
    pub slim_sha256: Option<String>,
    /// Lower-case hex SHA-256 of the served bytes as the last check read them (the MD5 is
    /// `checksum`).
    pub sha256: Option<String>,
    /// Unix seconds when the slimmed copy started to be served.
    pub slimmed_at: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
