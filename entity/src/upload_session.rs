//! An open (or finished) chunked upload: one per client `identifier`.

use crate::status::SessionState;
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "upload_sessions")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    #[sea_orm(unique)]
    pub identifier: String,
    pub priority: i32,
    pub bucket: String,
    /// The image id is fixed when the session opens, so the object never moves.
    pub image_id: String,
    pub object_key: String,
    /// Multipart upload id in the object store.
    pub upload_id: String,
    pub state: SessionState,
    /// Legacy, no longer read or written: sessions once switched all their chunks to packing.
    /// Each part now records whether it is staged (`upload_part::staged`).
    pub packed: bool,
    /// Names the current merger while `merging` (a fresh value per claim); `None` otherwise.
    pub merge_token: Option<String>,
    /// The merge request's `filename`, kept so that another process can finish the merge.
    pub merge_file_name: Option<String>,
    /// The merge request's `userId`, kept for the same reason.
    pub merge_user_id: Option<String>,
    /// A zipped upload's merge: the image (JSON `{"fileName", "size", "crc32"}`) that is
    /// about to replace the archive in the store, recorded before the replacement.
    pub merge_unpacked: Option<String>,
    /// The whole upload's length in bytes, as the client declared it (`totalSize`).
    pub total_size: Option<i64>,
    /// How many chunks the upload has, as the client declared it (`totalChunks`).
    pub total_chunks: Option<i32>,
    /// The whole-image checksum the merge verifies (`md5:<hex>` or `sha256:<hex>`).
    pub merge_checksum: Option<String>,
    /// The user the session belongs to (its chunks count against this user's quota); `None`
    /// for sessions without one.
    pub owner: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(has_many = "super::upload_part::Entity")]
    Parts,
}

impl Related<super::upload_part::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Parts.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
