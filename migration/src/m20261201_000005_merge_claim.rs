//! A merge records who runs it and what it was asked, so that a merge whose process died is
//! finished by another (a restarted replica, or a repeated merge request) within seconds:
//! `merge_token` names the current merger (a fresh value per claim; every write of the merge
//! is conditional on it), `merge_file_name` and `merge_user_id` are the merge request's
//! `filename` and `userId`; `merge_unpacked` (JSON: fileName, size, crc32) names the image a
//! zipped upload's archive is about to be replaced by, so that a merge interrupted after the
//! replacement knows the object is that image.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum UploadSessions {
    Table,
    MergeToken,
    MergeFileName,
    MergeUserId,
    MergeUnpacked,
}

const COLUMNS: [UploadSessions; 4] = [
    UploadSessions::MergeToken,
    UploadSessions::MergeFileName,
    UploadSessions::MergeUserId,
    UploadSessions::MergeUnpacked,
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite alters one at a time.
        for column in COLUMNS {
            manager
                .alter_table(
                    Table::alter()
                        .table(UploadSessions::Table)
                        .add_column(ColumnDef::new(column).string().null())
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in COLUMNS {
            manager
                .alter_table(
                    Table::alter()
                        .table(UploadSessions::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}
