//! What a check of an image found, as its record keeps it (the `check*`, `format`,
//! `virtualSize` and `imageEndOffset` columns): produced by imageops, stored by the metadata
//! layer, both of which use these types from here.

use crate::status::CheckStatus;

/// `checkResult` values (SPEC section 3).
pub mod result {
    /// While a check is queued or running (the number of `checkStatus` in progress).
    pub const IN_PROGRESS: i32 = 4;
    /// `qemu-img check`'s exit code for a corrupted image, also given to one found corrupted
    /// before it ran (a header marked corrupt, an L1 table sharing L2 tables).
    pub const CORRUPTED: i32 = 2;
    pub const NOT_QCOW2: i32 = 63;
    pub const ERROR: i32 = 99;
    pub const TIMEOUT: i32 = 100;
}

/// What a check found.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckReport {
    pub status: CheckStatus,
    pub msg: String,
    /// `qemu-img check` exit code, or 63 / 99 / 100.
    pub check_result: i32,
    pub format: String,
    /// Virtual size in GiB.
    pub virtual_size_gib: f64,
    pub image_end_offset: String,
    pub check_errors: String,
}

impl CheckReport {
    /// A check that could not be done: `checkStatus` failed, `checkResult` 99, `msg` says why.
    pub fn failed(msg: impl Into<String>) -> Self {
        CheckReport {
            status: CheckStatus::Failed,
            msg: msg.into(),
            check_result: result::ERROR,
            format: String::new(),
            virtual_size_gib: 0.0,
            image_end_offset: String::new(),
            check_errors: String::new(),
        }
    }
}
