//! Room for a chunked upload's identifier as it is stored: with authentication on, the
//! client's identifier (at most 128 characters) is kept with a suffix naming its user (33
//! more), which `upload_sessions.identifier` and `images.source_identifier` (`varchar(128)`)
//! could not hold on PostgreSQL (a 500 for every chunk of a long identifier). Both become
//! `varchar(256)`. SQLite does not enforce a `varchar` length and cannot alter a column's
//! type, so nothing changes there.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The columns that hold a stored identifier: (table, column).
const COLUMNS: [(&str, &str); 2] = [
    ("upload_sessions", "identifier"),
    ("images", "source_identifier"),
];

/// The length both columns take (characters).
const LEN: u32 = 256;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() == DbBackend::Sqlite {
            return Ok(());
        }
        for (table, column) in COLUMNS {
            manager
                .alter_table(
                    Table::alter()
                        .table(Alias::new(table))
                        .modify_column(ColumnDef::new(Alias::new(column)).string_len(LEN))
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    /// Nothing to undo: a narrower column could not hold the identifiers stored since.
    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        Ok(())
    }
}
