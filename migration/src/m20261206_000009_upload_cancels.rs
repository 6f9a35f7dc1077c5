//! `upload_cancels`: one row per cancel of a chunked upload (`DELETE /images/upload`), so that
//! a chunk whose request began before the cancel, and was still in transfer when it came, is
//! refused instead of opening the upload again (or joining the upload a client started anew
//! under the same identifier). `id` grows with every cancel (a sequence on PostgreSQL,
//! `AUTOINCREMENT` on SQLite, never reused): a chunk notes the highest `id` when its request
//! begins, and a row for its identifier above that mark is a cancel it must yield to. Rows
//! older than the upload TTL are pruned by the sweep of abandoned uploads.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum UploadCancels {
    Table,
    Id,
    Identifier,
    CancelledAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(UploadCancels::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(UploadCancels::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(UploadCancels::Identifier)
                            .string_len(256)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(UploadCancels::CancelledAt)
                            .big_integer()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_upload_cancels_identifier")
                    .table(UploadCancels::Table)
                    .col(UploadCancels::Identifier)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(UploadCancels::Table).to_owned())
            .await
    }
}
