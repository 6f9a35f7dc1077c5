//! A background job (image check or slim), claimed by one replica at a time through a lease.

use crate::status::{JobKind, JobState};
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "jobs")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub kind: JobKind,
    pub image_id: String,
    pub state: JobState,
    pub attempts: i32,
    /// Not to be started before (unix seconds): retries back off.
    pub run_after: i64,
    /// The worker holding the job, and until when (unix seconds).
    pub lease_owner: Option<String>,
    pub lease_until: Option<i64>,
    pub progress: f64,
    pub error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
