//! Multipart uploads nobody writes to any more (S3 API: ListMultipartUploads, ListParts), for
//! the sweep of uploads a killed process left open.

use super::S3Store;
use crate::storage::{OpenUpload, Result};
use aws_smithy_types::DateTime;
use std::time::{Duration, SystemTime};

impl S3Store {
    /// The multipart uploads under this deployment's key prefix in `bucket` that were opened
    /// more than `idle` ago and took no part since (the newest part's `LastModified`). Keys are
    /// given as the domain names them (without the prefix).
    pub(super) async fn stale_uploads_in(
        &self,
        bucket: &str,
        idle: Duration,
    ) -> Result<Vec<OpenUpload>> {
        let since = DateTime::from(SystemTime::now() - idle);
        let prefix = &self.settings.key_prefix;
        let mut stale = vec![];
        let (mut key_marker, mut id_marker) = (None, None);
        loop {
            let page = self
                .client
                .list_multipart_uploads()
                .bucket(bucket)
                .prefix(prefix)
                .set_key_marker(key_marker)
                .set_upload_id_marker(id_marker)
                .customize()
                .config_override(S3Store::quick())
                .send()
                .await
                .map_err(|e| self.err(e))?;
            for u in page.uploads() {
                let (Some(full), Some(id)) = (u.key(), u.upload_id()) else {
                    continue;
                };
                let Some(key) = full.strip_prefix(prefix.as_str()) else {
                    continue;
                };
                if u.initiated().is_none_or(|t| t.secs() > since.secs())
                    || self.written_since(bucket, full, id, since).await?
                {
                    continue;
                }
                stale.push(OpenUpload {
                    key: key.to_string(),
                    upload_id: id.to_string(),
                });
            }
            if page.is_truncated() != Some(true) {
                return Ok(stale);
            }
            key_marker = page.next_key_marker().map(str::to_string);
            id_marker = page.next_upload_id_marker().map(str::to_string);
            if key_marker.is_none() {
                return Ok(stale);
            }
        }
    }

    /// Whether a part of upload `id` (of `key`, a store key) was written after `since`. An
    /// upload gone meanwhile counts as written (there is nothing to abort).
    async fn written_since(
        &self,
        bucket: &str,
        key: &str,
        id: &str,
        since: DateTime,
    ) -> Result<bool> {
        let mut marker = None;
        loop {
            let page = match self
                .client
                .list_parts()
                .bucket(bucket)
                .key(key)
                .upload_id(id)
                .set_part_number_marker(marker)
                .customize()
                .config_override(S3Store::quick())
                .send()
                .await
                .map_err(|e| self.err(e))
            {
                Ok(page) => page,
                Err(crate::storage::StorageError::NoSuchUpload)
                | Err(crate::storage::StorageError::NotFound) => return Ok(true),
                Err(e) => return Err(e),
            };
            if page
                .parts()
                .iter()
                .any(|p| p.last_modified().is_some_and(|t| t.secs() > since.secs()))
            {
                return Ok(true);
            }
            match page.next_part_number_marker() {
                Some(m) if page.is_truncated() == Some(true) => marker = Some(m.to_string()),
                _ => return Ok(false),
            }
        }
    }
}
