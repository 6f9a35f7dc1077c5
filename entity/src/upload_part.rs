//! One received chunk (= multipart part) of an upload session.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "upload_parts")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub session_id: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub part_number: i32,
    pub size_bytes: i64,
    pub etag: String,
    pub crc32: i64,
    /// Held by the store as a staging object, packed into a part at merge; `false`: sent as
    /// multipart part `part_number` directly.
    pub staged: bool,
    /// The checksum the store verified when it took the part (base64), if one was sent.
    pub checksum: Option<String>,
    pub updated_at: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::upload_session::Entity",
        from = "Column::SessionId",
        to = "super::upload_session::Column::Id",
        on_delete = "Cascade"
    )]
    Session,
}

impl Related<super::upload_session::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Session.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
