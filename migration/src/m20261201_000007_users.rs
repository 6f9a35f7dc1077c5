//! What users, ownership and quotas need to remember:
//! - `upload_sessions.owner`: the user a chunked upload belongs to (and whose quota its chunks
//!   count against); NULL for sessions opened before this migration or without a user.
//! - `quotas`: one row per user that has a limit of its own, or whose usage was ever reserved:
//!   `max_bytes` / `max_images` (NULL = the configured default, 0 = unlimited) and `revision`,
//!   bumped by every reservation so that the row serialises them (the row lock on PostgreSQL,
//!   the write lock on SQLite): two replicas cannot together overrun a quota.
//! - `quota_reservations`: bytes and images that requests in flight hold against their user's
//!   quota (a single upload as its bytes arrive, a chunk, a merge's new image), until the image
//!   or chunk they become is recorded. Each has a lease (`expires_at`, Unix seconds), so that a
//!   request lost with its replica stops counting.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum UploadSessions {
    Table,
    Owner,
}

#[derive(DeriveIden)]
enum Quotas {
    Table,
    UserId,
    MaxBytes,
    MaxImages,
    Revision,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum QuotaReservations {
    Table,
    Id,
    UserId,
    Bytes,
    Images,
    ExpiresAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(UploadSessions::Table)
                    .add_column(ColumnDef::new(UploadSessions::Owner).string().null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_upload_sessions_owner")
                    .table(UploadSessions::Table)
                    .col(UploadSessions::Owner)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Quotas::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(Quotas::UserId)
                            .string()
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(Quotas::MaxBytes).big_integer().null())
                    .col(ColumnDef::new(Quotas::MaxImages).big_integer().null())
                    .col(
                        ColumnDef::new(Quotas::Revision)
                            .big_integer()
                            .not_null()
                            .default(0),
                    )
                    .col(ColumnDef::new(Quotas::UpdatedAt).big_integer().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(QuotaReservations::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(QuotaReservations::Id)
                            .string_len(36)
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(QuotaReservations::UserId)
                            .string()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(QuotaReservations::Bytes)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(QuotaReservations::Images)
                            .integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(QuotaReservations::ExpiresAt)
                            .big_integer()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_quota_reservations_user_id")
                    .table(QuotaReservations::Table)
                    .col(QuotaReservations::UserId)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(QuotaReservations::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(Quotas::Table).to_owned())
            .await?;
        manager
            .drop_index(
                Index::drop()
                    .name("idx_upload_sessions_owner")
                    .table(UploadSessions::Table)
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(UploadSessions::Table)
                    .drop_column(UploadSessions::Owner)
                    .to_owned(),
            )
            .await
    }
}
