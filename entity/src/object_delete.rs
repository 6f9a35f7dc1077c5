//! An object whose image is gone, still to be deleted once no download reads it (see the
//! `object_reads` migration).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "object_deletes")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub bucket: String,
    /// As `images.object_key`, without the store's prefix.
    #[sea_orm(primary_key, auto_increment = false)]
    pub object_key: String,
    /// When its image was deleted, in Unix seconds.
    pub requested_at: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
