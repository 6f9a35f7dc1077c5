//! A request storing one chunk of an upload now (see the `part_writers` migration).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "part_writers")]
pub struct Model {
    /// The upload session (`upload_sessions.id`).
    #[sea_orm(primary_key, auto_increment = false)]
    pub session_id: String,
    /// The chunk's number (its part number), from 1.
    #[sea_orm(primary_key, auto_increment = false)]
    pub part_number: i32,
    /// A UUID, one per request.
    pub token: String,
    /// End of the lease in Unix seconds; renewed while the chunk is stored.
    pub expires_at: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
