//! Request fields and file parts, independent of the HTTP library that parsed them.
//!
//! Fields arrive as multipart parts, url-encoded bodies or query parameters; a body field wins
//! over a query parameter of the same name.

use super::Result;
use crate::storage::ByteStream;
use async_trait::async_trait;
use std::collections::HashMap;

/// Named text fields of one request.
#[derive(Debug, Clone, Default)]
pub struct Fields(HashMap<String, String>);

impl Fields {
    pub fn from_pairs(pairs: impl IntoIterator<Item = (String, String)>) -> Self {
        Fields(pairs.into_iter().collect())
    }

    /// Sets a field (later values win).
    pub fn set(&mut self, name: String, value: String) {
        self.0.insert(name, value);
    }

    /// Adds all of `other`, which wins over what is here.
    pub fn overlay(&mut self, other: Fields) {
        self.0.extend(other.0);
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }
}

/// One part of a form body.
pub enum FormPart {
    Text {
        name: String,
        value: String,
    },
    File {
        name: String,
        file_name: Option<String>,
        body: ByteStream,
    },
}

/// A sequence of form parts read lazily from the request. A file part's body must be consumed
/// (or dropped) before the next part is asked for.
#[async_trait]
pub trait FormSource: Send {
    async fn next_part(&mut self) -> Result<Option<FormPart>>;
}

/// A form with no parts (a request without a multipart body).
pub struct NoParts;

#[async_trait]
impl FormSource for NoParts {
    async fn next_part(&mut self) -> Result<Option<FormPart>> {
        Ok(None)
    }
}
