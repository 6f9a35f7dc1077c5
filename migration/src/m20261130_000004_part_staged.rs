//! Each upload part records whether it is held as a staging object (to be packed at merge) or
//! went to the store as a multipart part of its own. Parts staged before this column existed
//! are recognised by their ETag, which the S3 store marks with `staged:`.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum UploadParts {
    Table,
    Staged,
    Etag,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(UploadParts::Table)
                    .add_column(
                        ColumnDef::new(UploadParts::Staged)
                            .boolean()
                            .not_null()
                            .default(false),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .exec_stmt(
                Query::update()
                    .table(UploadParts::Table)
                    .value(UploadParts::Staged, true)
                    .and_where(Expr::col(UploadParts::Etag).like("staged:%"))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(UploadParts::Table)
                    .drop_column(UploadParts::Staged)
                    .to_owned(),
            )
            .await
    }
}
