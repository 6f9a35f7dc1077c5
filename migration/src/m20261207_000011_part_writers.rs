//! `part_writers`: which request is storing chunk `part_number` of an upload now. Storing a
//! chunk (the store's part) and recording it (its `upload_parts` row) are two steps; two
//! requests sending the same chunk at once (a client's retry while its first try is still
//! arriving, possibly at another replica) must not interleave them, or the row would describe
//! one request's bytes while the store holds the other's. A request takes the row (insert on
//! the primary key), renews `expires_at` while it stores, and deletes it when done; a row
//! whose lease lapsed (its replica died) is taken over.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum PartWriters {
    Table,
    SessionId,
    PartNumber,
    Token,
    ExpiresAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(PartWriters::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(PartWriters::SessionId)
                            .string_len(64)
                            .not_null(),
                    )
                    .col(ColumnDef::new(PartWriters::PartNumber).integer().not_null())
                    .col(ColumnDef::new(PartWriters::Token).string_len(64).not_null())
                    .col(
                        ColumnDef::new(PartWriters::ExpiresAt)
                            .big_integer()
                            .not_null(),
                    )
                    .primary_key(
                        Index::create()
                            .col(PartWriters::SessionId)
                            .col(PartWriters::PartNumber),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(PartWriters::Table).to_owned())
            .await
    }
}
