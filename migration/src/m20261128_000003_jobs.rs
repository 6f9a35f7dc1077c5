//! The background job queue (image checks and slims) and where a slimmed image lives.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Jobs {
    Table,
    Id,
    Kind,
    ImageId,
    State,
    Attempts,
    RunAfter,
    LeaseOwner,
    LeaseUntil,
    Progress,
    Error,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Images {
    Table,
    SlimObjectKey,
    SlimSizeBytes,
    SlimCrc32,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Jobs::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(Jobs::Id)
                            .string_len(36)
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(Jobs::Kind).string_len(16).not_null())
                    .col(ColumnDef::new(Jobs::ImageId).string_len(36).not_null())
                    .col(ColumnDef::new(Jobs::State).string_len(16).not_null())
                    .col(
                        ColumnDef::new(Jobs::Attempts)
                            .integer()
                            .not_null()
                            .default(0),
                    )
                    .col(ColumnDef::new(Jobs::RunAfter).big_integer().not_null())
                    .col(ColumnDef::new(Jobs::LeaseOwner).string_len(64).null())
                    .col(ColumnDef::new(Jobs::LeaseUntil).big_integer().null())
                    .col(
                        ColumnDef::new(Jobs::Progress)
                            .double()
                            .not_null()
                            .default(0.0),
                    )
                    .col(ColumnDef::new(Jobs::Error).string_len(1024).null())
                    .col(ColumnDef::new(Jobs::CreatedAt).big_integer().not_null())
                    .col(ColumnDef::new(Jobs::UpdatedAt).big_integer().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_jobs_due")
                    .table(Jobs::Table)
                    .col(Jobs::State)
                    .col(Jobs::RunAfter)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_jobs_image")
                    .table(Jobs::Table)
                    .col(Jobs::ImageId)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        for col in [
            ColumnDef::new(Images::SlimObjectKey)
                .string_len(1024)
                .null()
                .to_owned(),
            ColumnDef::new(Images::SlimSizeBytes)
                .big_integer()
                .null()
                .to_owned(),
            ColumnDef::new(Images::SlimCrc32)
                .big_integer()
                .null()
                .to_owned(),
        ] {
            let mut col = col;
            manager
                .alter_table(
                    Table::alter()
                        .table(Images::Table)
                        .add_column(&mut col)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for col in [
            Images::SlimObjectKey,
            Images::SlimSizeBytes,
            Images::SlimCrc32,
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Images::Table)
                        .drop_column(col)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .drop_table(Table::drop().table(Jobs::Table).to_owned())
            .await
    }
}
