//! The typed states kept in the database, each mapped to its stored value here and nowhere
//! else. The numbers are the EdgeGallery API's own (SPEC section 3), which the JSON views
//! show as they are stored; the words are this service's.
use sea_orm::entity::prelude::*;

/// `slimStatus` of an image (SPEC section 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "i32", db_type = "Integer")]
pub enum SlimStatus {
    /// 0: never slimmed (or the last slim was reset).
    #[sea_orm(num_value = 0)]
    NotSlimmed,
    /// 1: a slim is queued or running.
    #[sea_orm(num_value = 1)]
    Slimming,
    /// 2: the slimmed copy checked consistent and is served.
    #[sea_orm(num_value = 2)]
    Slimmed,
    /// 3: the last slim failed or was refused; the original is served.
    #[sea_orm(num_value = 3)]
    Failed,
}

/// `checkStatusResponse.status` of an image (SPEC section 3): what its last check found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "i32", db_type = "Integer")]
pub enum CheckStatus {
    /// 0: `qemu-img check` found no error.
    #[sea_orm(num_value = 0)]
    Consistent,
    /// 1: corrupted (or the stored bytes no longer match their recorded digests).
    #[sea_orm(num_value = 1)]
    Corrupted,
    /// 2: leaked clusters only.
    #[sea_orm(num_value = 2)]
    LeakedClusters,
    /// 3: the check could not run or refused the image.
    #[sea_orm(num_value = 3)]
    Failed,
    /// 4: a check is queued or running.
    #[sea_orm(num_value = 4)]
    InProgress,
    /// 5: a type `qemu-img check` does not check (ISO, raw).
    #[sea_orm(num_value = 5)]
    NotCheckedType,
    /// 6: the check timed out.
    #[sea_orm(num_value = 6)]
    TimedOut,
}

/// `compressInfo.compressStatus` of an image (SPEC section 3): how its last slim's conversion
/// went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "i32", db_type = "Integer")]
pub enum CompressStatus {
    /// 0: completed (rate 1.0).
    #[sea_orm(num_value = 0)]
    Completed,
    /// 1: in progress (`compressRate` is the progress, 0.0 to 1.0).
    #[sea_orm(num_value = 1)]
    InProgress,
    /// 2: failed.
    #[sea_orm(num_value = 2)]
    Failed,
    /// 3: not enough scratch space.
    #[sea_orm(num_value = 3)]
    NoSpace,
    /// 4: timed out.
    #[sea_orm(num_value = 4)]
    TimedOut,
}

/// What a background job does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "Text")]
pub enum JobKind {
    /// Verify the stored bytes (digests, `qemu-img check`).
    #[sea_orm(string_value = "check")]
    Check,
    /// Convert the image into a compressed copy, then serve that copy.
    #[sea_orm(string_value = "slim")]
    Slim,
}

/// Where a background job is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "Text")]
pub enum JobState {
    /// Waiting for a worker (or for its `run_after` after a failed attempt).
    #[sea_orm(string_value = "queued")]
    Queued,
    /// Leased by a worker.
    #[sea_orm(string_value = "running")]
    Running,
    /// Finished; its result is on the image.
    #[sea_orm(string_value = "done")]
    Done,
    /// Gave up after its last attempt.
    #[sea_orm(string_value = "failed")]
    Failed,
    /// Its image was deleted, or another job replaced it.
    #[sea_orm(string_value = "cancelled")]
    Cancelled,
}

/// Where a chunked upload session is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "Text")]
pub enum SessionState {
    /// Taking chunks.
    #[sea_orm(string_value = "open")]
    Open,
    /// A merge holds it (until its token's lease lapses).
    #[sea_orm(string_value = "merging")]
    Merging,
    /// Merged into an image.
    #[sea_orm(string_value = "completed")]
    Completed,
}

impl JobKind {
    /// The stored word (`check`, `slim`), as logs and metric labels show it.
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Check => "check",
            JobKind::Slim => "slim",
        }
    }
}

impl JobState {
    /// The stored word, as metric labels show it.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }
}

impl SessionState {
    /// The stored word, as the resume answer shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Open => "open",
            SessionState::Merging => "merging",
            SessionState::Completed => "completed",
        }
    }
}

/// Logs show the stored words.
macro_rules! display_as_str {
    ($($t:ty),*) => {$(
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    )*};
}
display_as_str!(JobKind, JobState, SessionState);

#[cfg(test)]
mod tests {
    use super::*;
    use sea_orm::{ActiveEnum, Iterable};

    /// The words each `as_str` gives are the stored values.
    #[test]
    fn words_are_the_stored_values() {
        for k in JobKind::iter() {
            assert_eq!(k.as_str(), k.to_value());
        }
        for s in JobState::iter() {
            assert_eq!(s.as_str(), s.to_value());
        }
        for s in SessionState::iter() {
            assert_eq!(s.as_str(), s.to_value());
        }
    }

    /// The numbers are SPEC section 3's.
    #[test]
    fn numbers_are_the_specs() {
        assert_eq!(SlimStatus::Slimmed.to_value(), 2);
        assert_eq!(CheckStatus::InProgress.to_value(), 4);
        assert_eq!(CheckStatus::TimedOut.to_value(), 6);
        assert_eq!(CompressStatus::TimedOut.to_value(), 4);
        assert_eq!(CheckStatus::try_from_value(&7).ok(), None);
    }
}
