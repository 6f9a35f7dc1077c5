//! The service's names for things, as types: an image's id, a chunked upload's identifier,
//! a chunk number and an object key. Each is made only by its parser (from what a client sent)
//! or its constructor, so a value of one of these types has passed its rules; they read as
//! `&str` (or `u32`) where a query or a message needs the plain value.

use std::{fmt, ops::Deref};

/// Derefs a string newtype to `str` and prints it as it is.
macro_rules! reads_as_str {
    ($name:ident) => {
        impl Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

/// An image's id: a canonical UUID (lower case, hyphenated, 36 characters), as the original
/// gave images (`fileId`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageId(String);

impl ImageId {
    /// A new random (version 4) id, for a new image.
    pub fn new() -> Self {
        ImageId(uuid::Uuid::new_v4().hyphenated().to_string())
    }

    /// The canonical form of `raw`, or `None` when `raw` is not a 36-character UUID (in any
    /// case).
    pub fn parse(raw: &str) -> Option<Self> {
        if raw.len() != 36 {
            return None;
        }
        uuid::Uuid::parse_str(raw)
            .ok()
            .map(|u| ImageId(u.hyphenated().to_string()))
    }
}

impl Default for ImageId {
    fn default() -> Self {
        Self::new()
    }
}

reads_as_str!(ImageId);

/// The most characters a name or identifier may hold.
pub const MAX_NAME_CHARS: usize = 128;

/// A chunked upload's `identifier` as the client sent it (resumable.js / the original's
/// `identifier` field): 1 to 128 characters of `[A-Za-z0-9._-]`, not `.` or `..`. It never
/// holds `~`, which separates it from the owner in a session key (`caller::session_key`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identifier(String);

impl Identifier {
    /// Errors: a message for the client saying what an identifier may hold.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let valid = (1..=MAX_NAME_CHARS).contains(&raw.len())
            && raw
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
            && raw != "."
            && raw != "..";
        if valid {
            Ok(Identifier(raw.to_string()))
        } else {
            Err(format!(
                "identifier {:?} must be 1 to 128 characters of A-Z, a-z, 0-9, '.', '_' or '-' (not '.' or '..')",
                super::error::echoed(raw)
            ))
        }
    }
}

reads_as_str!(Identifier);

/// A chunk's number in its upload: 1 to [`ChunkNumber::MAX`], which is also the S3 part
/// number it is stored as (S3 `UploadPart`: part numbers 1 to 10,000).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChunkNumber(u32);

impl ChunkNumber {
    /// The highest chunk number (S3's highest part number).
    pub const MAX: u32 = 10_000;

    /// The number from an explicit `chunkNumber` field, else from a `"{n}.part"` file name
    /// (the original's convention). Errors: a message for the client.
    pub fn parse(explicit: Option<&str>, file_name: Option<&str>) -> Result<Self, String> {
        let raw = match explicit.map(str::trim).filter(|s| !s.is_empty()) {
            Some(n) => n,
            None => {
                let name = file_name.map(super::validate::base_name).unwrap_or("");
                name.strip_suffix(".part").ok_or_else(|| {
                    format!(
                        "cannot tell the chunk number: part filename {:?} is not \"{{n}}.part\" and no chunkNumber was sent",
                        super::error::echoed(name)
                    )
                })?
            }
        };
        match raw.parse::<u32>() {
            Ok(n) if (1..=Self::MAX).contains(&n) && !raw.starts_with('+') => Ok(ChunkNumber(n)),
            _ => Err(format!(
                "chunk number {:?} must be an integer from 1 to {}",
                super::error::echoed(raw),
                Self::MAX
            )),
        }
    }

    /// The number (1 to [`ChunkNumber::MAX`]).
    pub fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Display for ChunkNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An object's key as the service names it: made from an image id only (nothing a client
/// sends becomes part of a key). A store may place it under a prefix of its own; that
/// prefixed key is another type (`storage::s3`'s `StoreKey`), so the two cannot be mixed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectKey(String);

impl ObjectKey {
    /// The key of an image's bytes: `images/{id}`.
    pub fn image(id: &ImageId) -> Self {
        ObjectKey(format!("images/{id}"))
    }

    /// The key of the slimmed copy of the image stored at `original`: `{original}.slim`.
    pub fn slim(original: &str) -> Self {
        ObjectKey(format!("{original}.slim"))
    }

    /// The key as stored in the database.
    pub fn into_string(self) -> String {
        self.0
    }
}

reads_as_str!(ObjectKey);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        assert!(Identifier::parse("abc-1.2_3").is_ok());
        for bad in ["", ".", "..", "a/b", "a~b", "a b", "é"] {
            assert!(Identifier::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Identifier::parse(&"a".repeat(129)).is_err());
        assert_eq!(
            &*Identifier::parse(&"a".repeat(128)).unwrap(),
            "a".repeat(128)
        );
    }

    #[test]
    fn chunk_numbers() {
        let n = |explicit, name| ChunkNumber::parse(explicit, name).map(ChunkNumber::get);
        assert_eq!(n(None, Some("3.part")), Ok(3));
        assert_eq!(n(None, Some("dir/3.part")), Ok(3));
        assert_eq!(n(Some("7"), Some("3.part")), Ok(7));
        assert_eq!(n(Some(" 7 "), None), Ok(7));
        assert!(n(None, Some("0.part")).is_err());
        assert!(n(None, Some("10001.part")).is_err());
        assert_eq!(n(None, Some("10000.part")), Ok(10000));
        assert!(n(None, Some("x.part")).is_err());
        assert!(n(None, Some("blob")).is_err());
        assert!(n(Some("+5"), None).is_err());
        assert!(n(Some("-1"), None).is_err());
        assert!(n(Some("4294967297"), None).is_err());
    }

    #[test]
    fn image_ids() {
        let id = "0E0C8A52-6B3B-4F8C-9E5D-0F1A2B3C4D5E";
        assert_eq!(&*ImageId::parse(id).unwrap(), id.to_lowercase());
        assert!(ImageId::parse("upload").is_none());
        assert!(ImageId::parse("0e0c8a526b3b4f8c9e5d0f1a2b3c4d5e").is_none());
        assert!(ImageId::parse(&ImageId::new()).is_some());
    }

    #[test]
    fn object_keys() {
        let id = ImageId::parse("0e0c8a52-6b3b-4f8c-9e5d-0f1a2b3c4d5e").unwrap();
        let key = ObjectKey::image(&id);
        assert_eq!(&*key, "images/0e0c8a52-6b3b-4f8c-9e5d-0f1a2b3c4d5e");
        assert_eq!(&*ObjectKey::slim(&key), format!("{key}.slim"));
    }
}
