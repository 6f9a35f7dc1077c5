//! Database schema, as ordered migrations. Run at start-up and by `file-system migrate`.

pub use sea_orm_migration::prelude::*;

mod m20261128_000001_initial;
mod m20261128_000002_session_packing;
mod m20261128_000003_jobs;
mod m20261130_000004_part_staged;
mod m20261201_000005_merge_claim;
mod m20261201_000006_integrity;
mod m20261201_000007_users;
mod m20261204_000008_identifier_room;
mod m20261206_000009_upload_cancels;
mod m20261206_000010_object_reads;
mod m20261207_000011_part_writers;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261128_000001_initial::Migration),
            Box::new(m20261128_000002_session_packing::Migration),
            Box::new(m20261128_000003_jobs::Migration),
            Box::new(m20261130_000004_part_staged::Migration),
            Box::new(m20261201_000005_merge_claim::Migration),
            Box::new(m20261201_000006_integrity::Migration),
            Box::new(m20261201_000007_users::Migration),
            Box::new(m20261204_000008_identifier_room::Migration),
            Box::new(m20261206_000009_upload_cancels::Migration),
            Box::new(m20261206_000010_object_reads::Migration),
            Box::new(m20261207_000011_part_writers::Migration),
        ]
    }
}
