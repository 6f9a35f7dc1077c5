//! A download in flight that holds its object against a delete (see the `object_reads`
//! migration).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "object_reads")]
pub struct Model {
    /// A UUID, one per download.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub bucket: String,
    /// The object read (as `images.object_key`, without the store's prefix).
    pub object_key: String,
    /// End of the lease in Unix seconds; renewed while the download streams.
    pub expires_at: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
