//! SeaORM entities: the metadata file-system keeps in its database.
//!
//! The schema itself is owned by the `migration` crate; these types only mirror it.

pub mod check;
pub mod image;
pub mod job;
pub mod object_delete;
pub mod object_read;
pub mod part_writer;
pub mod quota;
pub mod quota_reservation;
pub mod status;
pub mod upload_cancel;
pub mod upload_part;
pub mod upload_session;
