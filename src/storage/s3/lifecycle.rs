//! Bucket lifecycle rules that back up the sweeper: incomplete multipart uploads aborted after
//! 2 days, staging objects expired after 3 (S3 API: PutBucketLifecycleConfiguration). Rules of
//! others (other deployments, other prefixes) are kept.

use super::S3Store;
use crate::storage::{Result, StorageError};
use aws_sdk_s3::{
    error::{ProvideErrorMetadata, SdkError},
    types::{
        AbortIncompleteMultipartUpload, BucketLifecycleConfiguration, ExpirationStatus,
        LifecycleExpiration, LifecycleRule, LifecycleRuleFilter,
    },
};

impl S3Store {
    /// Adds (or refreshes) this deployment's lifecycle rules, keeping every other rule.
    pub(super) async fn ensure_lifecycle(&self, bucket: &str) -> Result<()> {
        let c = &self.client;
        let tag = format!(
            "file-system-{:08x}",
            crc32fast::hash(self.settings.key_prefix.as_bytes())
        );
        let mut rules: Vec<LifecycleRule> = match c
            .get_bucket_lifecycle_configuration()
            .bucket(bucket)
            .customize()
            .config_override(Self::quick())
            .send()
            .await
        {
            Ok(out) => out.rules().to_vec(),
            Err(SdkError::ServiceError(se))
                if se.err().code() == Some("NoSuchLifecycleConfiguration") =>
            {
                vec![]
            }
            Err(e) => return Err(self.err(e)),
        };
        rules.retain(|r| !r.id().is_some_and(|id| id.starts_with(&tag)));
        let rule = |name: &str, prefix: &str| {
            LifecycleRule::builder()
                .id(format!("{tag}-{name}"))
                .status(ExpirationStatus::Enabled)
                .filter(
                    LifecycleRuleFilter::builder()
                        .prefix(self.store_key(prefix))
                        .build(),
                )
        };
        let built = [
            rule("abort-incomplete-uploads", "")
                .abort_incomplete_multipart_upload(
                    AbortIncompleteMultipartUpload::builder()
                        .days_after_initiation(2)
                        .build(),
                )
                .build(),
            rule("expire-staging", "staging/")
                .expiration(LifecycleExpiration::builder().days(3).build())
                .build(),
        ];
        for r in built {
            rules.push(r.map_err(|e| StorageError::Io(std::io::Error::other(e.to_string())))?);
        }
        let cfg = BucketLifecycleConfiguration::builder()
            .set_rules(Some(rules))
            .build()
            .map_err(|e| StorageError::Io(std::io::Error::other(e.to_string())))?;
        c.put_bucket_lifecycle_configuration()
            .bucket(bucket)
            .lifecycle_configuration(cfg)
            .customize()
            .config_override(Self::quick())
            .send()
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }
}
