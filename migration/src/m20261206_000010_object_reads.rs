//! `object_reads` and `object_deletes`: a deleted image's objects outlive the downloads that
//! were reading them, on every store.
//!
//! - `object_reads`: one row per download in flight from a store whose reads do not survive a
//!   delete (S3: a streamed download is several ranged GETs). Its lease (`expires_at`, Unix
//!   seconds) is renewed while the download streams; a replica that dies leaves a row that
//!   expires.
//! - `object_deletes`: objects whose image is gone and that are still to be deleted, written
//!   in the transaction that removes the image's record. The delete then removes each object
//!   that no live read holds; the last download to end, or the periodic sweep, removes the
//!   rest. A crash between the record and the objects therefore leaves a to-do, not an orphan.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum ObjectReads {
    Table,
    Id,
    Bucket,
    ObjectKey,
    ExpiresAt,
}

#[derive(DeriveIden)]
enum ObjectDeletes {
    Table,
    Bucket,
    ObjectKey,
    RequestedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(ObjectReads::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(ObjectReads::Id)
                            .string_len(36)
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(ObjectReads::Bucket)
                            .string_len(255)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(ObjectReads::ObjectKey)
                            .string_len(1024)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(ObjectReads::ExpiresAt)
                            .big_integer()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_object_reads_key")
                    .table(ObjectReads::Table)
                    .col(ObjectReads::ObjectKey)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(ObjectDeletes::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(ObjectDeletes::Bucket)
                            .string_len(255)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(ObjectDeletes::ObjectKey)
                            .string_len(1024)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(ObjectDeletes::RequestedAt)
                            .big_integer()
                            .not_null(),
                    )
                    .primary_key(
                        Index::create()
                            .col(ObjectDeletes::Bucket)
                            .col(ObjectDeletes::ObjectKey),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(ObjectDeletes::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(ObjectReads::Table).to_owned())
            .await
    }
}
