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

/// Reads a form once, in order: text parts into [`Fields`] (over the query's), the first file
/// part of a given name handed out to be consumed, any other file part drained. The one place
/// a form is walked, for every request that takes one.
pub struct FormReader<'a> {
    form: &'a mut dyn FormSource,
    fields: Fields,
}

impl<'a> FormReader<'a> {
    /// Starts reading `form`; `query` holds the fields known before it (query parameters).
    pub fn new(form: &'a mut dyn FormSource, query: Fields) -> Self {
        FormReader {
            form,
            fields: query,
        }
    }

    /// The fields read so far (only those sent before the current part).
    pub fn fields(&self) -> &Fields {
        &self.fields
    }

    /// Reads on to the first file part named one of `names`: its file name and body, which
    /// must be consumed (or dropped) before the form is read on. `None` when the form ends
    /// first. File parts of other names on the way are drained.
    ///
    /// Errors: the body cannot be read or is not a well-formed form.
    pub async fn file(&mut self, names: &[&str]) -> Result<Option<(Option<String>, ByteStream)>> {
        while let Some(part) = self.form.next_part().await? {
            match part {
                FormPart::Text { name, value } => self.fields.set(name, value),
                FormPart::File {
                    name,
                    file_name,
                    body,
                } if names.contains(&name.as_str()) => return Ok(Some((file_name, body))),
                FormPart::File { body, .. } => drain(body).await?,
            }
        }
        Ok(None)
    }

    /// Reads the rest of the form (file parts drained) and returns all its fields.
    pub async fn finish(mut self) -> Result<Fields> {
        self.file(&[]).await?;
        Ok(self.fields)
    }
}

/// Reads a file part's body to its end, keeping nothing.
async fn drain(mut body: ByteStream) -> Result<()> {
    use futures::StreamExt;
    while let Some(chunk) = body.next().await {
        chunk.map_err(super::Error::BadBody)?;
    }
    Ok(())
}
