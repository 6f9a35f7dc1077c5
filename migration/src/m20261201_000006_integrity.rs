//! What integrity checks need to remember:
//! - `upload_sessions.total_size` / `total_chunks`: the totals a resumable-upload client declared
//!   with its chunks (`totalSize`, `totalChunks`), so that a merge refuses chunks that do not
//!   cover them; `merge_checksum`: the whole-image checksum a merge was asked to verify
//!   (`md5:<hex>` | `sha256:<hex>`), kept so that a merge taken over verifies it too.
//! - `upload_parts.checksum`: the checksum the object store verified when it took the part
//!   (`FS_S3_CHECKSUM`; S3 wants it back at completion).
//! - `images.original_md5` / `original_sha256`: hex digests of the image as it was received
//!   (computed while a single upload streamed in, or by a merged image's first check);
//!   `slim_md5` / `slim_sha256` of its slimmed copy; `sha256` of the bytes served, as the last
//!   check found them (next to the MD5 in `checksum`); `slimmed_at`: Unix seconds when the
//!   slimmed copy started to be served (the download's `Last-Modified`).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden, Clone, Copy)]
enum UploadSessions {
    Table,
    TotalSize,
    TotalChunks,
    MergeChecksum,
}

#[derive(DeriveIden, Clone, Copy)]
enum UploadParts {
    Table,
    Checksum,
}

#[derive(DeriveIden, Clone, Copy)]
enum Images {
    Table,
    OriginalMd5,
    OriginalSha256,
    SlimMd5,
    SlimSha256,
    Sha256,
    SlimmedAt,
}

fn additions() -> Vec<(DynIden, ColumnDef)> {
    let s = |c: UploadSessions| -> DynIden { SeaRc::new(c) };
    let i = |c: Images| -> DynIden { SeaRc::new(c) };
    vec![
        (
            SeaRc::new(UploadParts::Table),
            ColumnDef::new(UploadParts::Checksum)
                .string()
                .null()
                .to_owned(),
        ),
        (
            s(UploadSessions::Table),
            ColumnDef::new(UploadSessions::TotalSize)
                .big_integer()
                .null()
                .to_owned(),
        ),
        (
            s(UploadSessions::Table),
            ColumnDef::new(UploadSessions::TotalChunks)
                .integer()
                .null()
                .to_owned(),
        ),
        (
            s(UploadSessions::Table),
            ColumnDef::new(UploadSessions::MergeChecksum)
                .string()
                .null()
                .to_owned(),
        ),
        (
            i(Images::Table),
            ColumnDef::new(Images::OriginalMd5)
                .string()
                .null()
                .to_owned(),
        ),
        (
            i(Images::Table),
            ColumnDef::new(Images::OriginalSha256)
                .string()
                .null()
                .to_owned(),
        ),
        (
            i(Images::Table),
            ColumnDef::new(Images::SlimMd5).string().null().to_owned(),
        ),
        (
            i(Images::Table),
            ColumnDef::new(Images::SlimSha256)
                .string()
                .null()
                .to_owned(),
        ),
        (
            i(Images::Table),
            ColumnDef::new(Images::Sha256).string().null().to_owned(),
        ),
        (
            i(Images::Table),
            ColumnDef::new(Images::SlimmedAt)
                .big_integer()
                .null()
                .to_owned(),
        ),
    ]
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite alters one at a time.
        for (table, mut column) in additions() {
            manager
                .alter_table(
                    Table::alter()
                        .table(table)
                        .add_column(&mut column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for (table, column) in additions() {
            manager
                .alter_table(
                    Table::alter()
                        .table(table)
                        .drop_column(SeaRc::new(Alias::new(column.get_column_name())))
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}
