//! A user's own limits (set by an admin), and the row that serialises the user's reservations.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "quotas")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub user_id: String,
    /// Bytes the user may hold (images and chunks); `None` = the configured default,
    /// 0 = unlimited.
    pub max_bytes: Option<i64>,
    /// Images the user may hold; `None` = the configured default, 0 = unlimited.
    pub max_images: Option<i64>,
    /// Bumped by every reservation: the update takes the row's lock.
    pub revision: i64,
    /// Unix seconds.
    pub updated_at: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
