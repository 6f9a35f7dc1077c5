//! A cancel of a chunked upload, remembered so that a chunk already in transfer when it came
//! does not open the upload again (see the `upload_cancels` migration).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "upload_cancels")]
pub struct Model {
    /// Grows with every cancel and is never reused: the order of cancels and chunk requests.
    #[sea_orm(primary_key)]
    pub id: i64,
    /// The session key of the cancelled upload (as `upload_sessions.identifier`).
    pub identifier: String,
    /// Unix seconds.
    pub cancelled_at: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
