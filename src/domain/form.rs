//! Request fields and file parts, independent of the HTTP library that parsed them.
//!
//! Fields arrive as multipart parts, url-encoded bodies or query parameters; a body field wins
//! over a query parameter of the same name.

use super::Result;
use crate::storage::ByteStream;
use async_trait::async_trait;
use std::collections::HashMap;

/// A request field the use cases read, by what it means. [`Field::name`] is the one table of
/// the names the original EdgeGallery clients send (resumable.js's among them); the HTTP layer
/// maps what arrives onto these (`routes::extract`), and nothing else looks fields up by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    /// `identifier`: the chunked upload a request is about.
    Identifier,
    /// `chunkNumber`: the chunk's number, from 1.
    ChunkNumber,
    /// `totalChunks`: how many chunks the whole file has.
    TotalChunks,
    /// `totalSize`: the whole file's size, in bytes.
    TotalSize,
    /// `chunkSize`: the size of every chunk but the last, in bytes.
    ChunkSize,
    /// `currentChunkSize`: this chunk's size, in bytes.
    CurrentChunkSize,
    /// `chunkChecksum`: `md5:`, `sha256:` or `crc32c:` and the hex digest of this chunk.
    ChunkChecksum,
    /// `checksum`: `md5:` or `sha256:` and the hex digest of the whole file.
    Checksum,
    /// `filename`: the merged image's file name.
    FileName,
    /// `userId`: the user an image or upload belongs to.
    UserId,
    /// `priority`: the storage tier.
    Priority,
}

impl Field {
    const ALL: [Field; 11] = [
        Field::Identifier,
        Field::ChunkNumber,
        Field::TotalChunks,
        Field::TotalSize,
        Field::ChunkSize,
        Field::CurrentChunkSize,
        Field::ChunkChecksum,
        Field::Checksum,
        Field::FileName,
        Field::UserId,
        Field::Priority,
    ];

    /// The name clients send the field under (and messages call it by).
    pub fn name(self) -> &'static str {
        match self {
            Field::Identifier => "identifier",
            Field::ChunkNumber => "chunkNumber",
            Field::TotalChunks => "totalChunks",
            Field::TotalSize => "totalSize",
            Field::ChunkSize => "chunkSize",
            Field::CurrentChunkSize => "currentChunkSize",
            Field::ChunkChecksum => "chunkChecksum",
            Field::Checksum => "checksum",
            Field::FileName => "filename",
            Field::UserId => "userId",
            Field::Priority => "priority",
        }
    }

    /// The field sent under `name` (exact, as the original matched it); `None` for a name no
    /// use case reads.
    pub fn from_name(name: &str) -> Option<Field> {
        Field::ALL.into_iter().find(|f| f.name() == name)
    }
}

impl std::fmt::Display for Field {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A file part the use cases read, by what it carries: `file` (an image, or a chunk) or
/// `part` (a chunk, as some uploaders name it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilePart {
    File,
    Part,
}

impl FilePart {
    /// The file part sent under `name`; `None` for any other name.
    pub fn from_name(name: &str) -> Option<FilePart> {
        match name {
            "file" => Some(FilePart::File),
            "part" => Some(FilePart::Part),
            _ => None,
        }
    }
}

/// The fields of one request the use cases read.
#[derive(Debug, Clone, Default)]
pub struct Fields(HashMap<Field, String>);

impl Fields {
    /// The known fields among `(name, value)` pairs (later values win); other names are
    /// dropped.
    pub fn from_pairs(pairs: impl IntoIterator<Item = (String, String)>) -> Self {
        Fields(
            pairs
                .into_iter()
                .filter_map(|(n, v)| Some((Field::from_name(&n)?, v)))
                .collect(),
        )
    }

    /// Sets a field (later values win).
    pub fn set(&mut self, field: Field, value: String) {
        self.0.insert(field, value);
    }

    /// Adds all of `other`, which wins over what is here.
    pub fn overlay(&mut self, other: Fields) {
        self.0.extend(other.0);
    }

    pub fn get(&self, field: Field) -> Option<&str> {
        self.0.get(&field).map(String::as_str)
    }
}

/// One part of a form body.
pub enum FormPart {
    /// A text field a use case reads (the form's other text fields are not handed out).
    Text { field: Field, value: String },
    /// A file part; `part` is `None` for a name no use case reads (it is drained).
    File {
        part: Option<FilePart>,
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
    /// The names of the file part handed out (`file`, or `file` and `part` for a chunk): a
    /// second part of one of them is refused, never ignored (the client would believe both
    /// stored).
    taken: Vec<FilePart>,
    /// The fields the form itself sent so far: one sent again with another value is refused
    /// (a body field only wins over a query parameter).
    sent: Vec<Field>,
}

impl<'a> FormReader<'a> {
    /// Starts reading `form`; `query` holds the fields known before it (query parameters).
    pub fn new(form: &'a mut dyn FormSource, query: Fields) -> Self {
        FormReader {
            form,
            fields: query,
            taken: Vec::new(),
            sent: Vec::new(),
        }
    }

    /// The fields read so far (only those sent before the current part).
    pub fn fields(&self) -> &Fields {
        &self.fields
    }

    /// Reads on to the first file part that is one of `parts`: its file name and body, which
    /// must be consumed (or dropped) before the form is read on. `None` when the form ends
    /// first. Other file parts on the way are drained.
    ///
    /// Errors: the body cannot be read or is not a well-formed form; a second part of the
    /// name already handed out, or a field sent again with another value (`InvalidInput`).
    pub async fn file(
        &mut self,
        parts: &[FilePart],
    ) -> Result<Option<(Option<String>, ByteStream)>> {
        while let Some(part) = self.form.next_part().await? {
            match part {
                FormPart::Text { field, value } => {
                    let again = self.sent.contains(&field);
                    if again && self.fields.get(field) != Some(value.as_str()) {
                        return Err(super::Error::InvalidInput(format!(
                            "the field {field} is sent more than once, with different values"
                        )));
                    }
                    self.sent.push(field);
                    self.fields.set(field, value);
                }
                FormPart::File { part: Some(p), .. } if self.taken.contains(&p) => {
                    return Err(super::Error::InvalidInput(
                        "the form has more than one file part: send one file per request"
                            .to_string(),
                    ));
                }
                FormPart::File {
                    part: Some(part),
                    file_name,
                    body,
                } if parts.contains(&part) => {
                    self.taken = parts.to_vec();
                    return Ok(Some((file_name, body)));
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every field is found by its name and by nothing else: names are exact (case included,
    /// as the original matched them).
    #[test]
    fn fields_are_found_by_their_exact_names() {
        for f in Field::ALL {
            assert_eq!(Field::from_name(f.name()), Some(f));
            assert_eq!(Field::from_name(&f.name().to_uppercase()), None);
        }
        for other in ["", "isZip", "file", "part", "identifier "] {
            assert_eq!(Field::from_name(other), None, "{other:?}");
        }
        assert_eq!(FilePart::from_name("file"), Some(FilePart::File));
        assert_eq!(FilePart::from_name("part"), Some(FilePart::Part));
        assert_eq!(FilePart::from_name("File"), None);
    }

    /// Pairs keep the known fields, the last value of a repeated one winning; an overlay wins.
    #[test]
    fn pairs_keep_known_fields_last_wins() {
        let pair = |n: &str, v: &str| (n.to_string(), v.to_string());
        let mut fields = Fields::from_pairs([
            pair("identifier", "a"),
            pair("limit", "3"),
            pair("identifier", "b"),
            pair("userId", "u"),
        ]);
        assert_eq!(fields.get(Field::Identifier), Some("b"));
        assert_eq!(fields.get(Field::UserId), Some("u"));
        assert_eq!(fields.get(Field::Priority), None);
        fields.overlay(Fields::from_pairs([pair("userId", "w")]));
        assert_eq!(fields.get(Field::UserId), Some("w"));
        assert_eq!(fields.get(Field::Identifier), Some("b"));
    }
}
