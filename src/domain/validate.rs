//! Rules for what clients may send: file names, identifiers, chunk numbers, image ids.
//!
//! Nothing a client sends ever becomes part of a storage path: objects are keyed by image id.
//! These rules keep names sane for headers, zip entries and logs.

/// Extensions the original accepted (case-sensitive).
pub const IMAGE_EXTENSIONS: [&str; 3] = [".qcow2", ".img", ".iso"];
pub const ZIP_EXTENSION: &str = ".zip";
pub const MAX_NAME_CHARS: usize = 128;
pub const MAX_CHUNK_NUMBER: u32 = 10_000;

/// Reduces a client file name to its last path component (some browsers send full paths).
fn base_name(name: &str) -> &str {
    name.rsplit(['/', '\\']).next().unwrap_or(name)
}

/// Validates an uploaded file name: allowed extension, at most 128 characters, no control
/// characters, a non-empty base. Returns the cleaned name.
pub fn file_name(raw: &str) -> Option<String> {
    let name = base_name(raw.trim());
    let ok_ext = IMAGE_EXTENSIONS
        .iter()
        .chain(std::iter::once(&ZIP_EXTENSION))
        .any(|ext| name.len() > ext.len() && name.ends_with(ext));
    let ok = ok_ext
        && name.chars().count() <= MAX_NAME_CHARS
        && !name.chars().any(char::is_control)
        && !name.starts_with('.');
    ok.then(|| name.to_string())
}

pub fn is_zip(name: &str) -> bool {
    name.ends_with(ZIP_EXTENSION)
}

pub fn is_image_name(name: &str) -> bool {
    IMAGE_EXTENSIONS
        .iter()
        .any(|ext| name.len() > ext.len() && name.ends_with(ext))
}

/// `fileName` without its extension: the folder name inside zip downloads.
pub fn stem(name: &str) -> &str {
    match name.rfind('.') {
        Some(i) if i > 0 => &name[..i],
        _ => name,
    }
}

/// A `userId` as sent (free text, as in the original), but for a NUL character: no client
/// means one, and PostgreSQL cannot store or compare text holding it (a 400, not the
/// database's 500).
pub fn user_id(raw: Option<&str>) -> Result<String, String> {
    let id = raw.unwrap_or("");
    if id.contains('\0') {
        return Err("userId must not hold a NUL character".into());
    }
    Ok(id.to_string())
}

/// 1..128 characters of `[A-Za-z0-9._-]`, not `.` or `..`.
pub fn identifier(id: &str) -> bool {
    (1..=MAX_NAME_CHARS).contains(&id.len())
        && id
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
        && id != "."
        && id != ".."
}

/// The chunk number from an explicit field, else from a `"{n}.part"` file name; 1..=10000.
pub fn chunk_number(explicit: Option<&str>, file_name: Option<&str>) -> Result<u32, String> {
    let raw = match explicit.map(str::trim).filter(|s| !s.is_empty()) {
        Some(n) => n.to_string(),
        None => {
            let name = file_name.map(base_name).unwrap_or("");
            match name.strip_suffix(".part") {
                Some(n) => n.to_string(),
                None => {
                    return Err(format!(
                        "cannot tell the chunk number: part filename {name:?} is not \"{{n}}.part\" and no chunkNumber was sent"
                    ))
                }
            }
        }
    };
    match raw.parse::<u32>() {
        Ok(n) if (1..=MAX_CHUNK_NUMBER).contains(&n) && !raw.starts_with('+') => Ok(n),
        _ => Err(format!(
            "chunk number {raw:?} must be an integer from 1 to {MAX_CHUNK_NUMBER}"
        )),
    }
}

/// A canonical (lower-case) UUID, or `None` when `raw` is not a 36-character UUID.
pub fn image_id(raw: &str) -> Option<String> {
    if raw.len() != 36 {
        return None;
    }
    uuid::Uuid::parse_str(raw)
        .ok()
        .map(|u| u.hyphenated().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names() {
        assert_eq!(file_name("a.qcow2").as_deref(), Some("a.qcow2"));
        assert_eq!(file_name("C:\\x\\disk.img").as_deref(), Some("disk.img"));
        assert_eq!(file_name("../../etc/x.iso").as_deref(), Some("x.iso"));
        assert!(file_name("a.QCOW2").is_none());
        assert!(file_name("a.exe").is_none());
        assert!(file_name(".qcow2").is_none());
        assert!(file_name("a\n.qcow2").is_none());
        let long = format!("{}.qcow2", "a".repeat(123));
        assert_eq!(long.len(), 129);
        assert!(file_name(&long).is_none());
        assert!(file_name(&long[1..]).is_some());
        assert!(file_name(&format!("{}.iso", "é".repeat(124))).is_some());
    }

    #[test]
    fn identifiers() {
        assert!(identifier("abc-1.2_3"));
        assert!(!identifier(""));
        assert!(!identifier("."));
        assert!(!identifier(".."));
        assert!(!identifier("a/b"));
        assert!(!identifier(&"a".repeat(129)));
        assert!(identifier(&"a".repeat(128)));
    }

    #[test]
    fn chunk_numbers() {
        assert_eq!(chunk_number(None, Some("3.part")), Ok(3));
        assert_eq!(chunk_number(Some("7"), Some("3.part")), Ok(7));
        assert!(chunk_number(None, Some("0.part")).is_err());
        assert!(chunk_number(None, Some("10001.part")).is_err());
        assert_eq!(chunk_number(None, Some("10000.part")), Ok(10000));
        assert!(chunk_number(None, Some("x.part")).is_err());
        assert!(chunk_number(None, Some("blob")).is_err());
        assert!(chunk_number(Some("+5"), None).is_err());
    }

    #[test]
    fn image_ids() {
        let id = "0E0C8A52-6B3B-4F8C-9E5D-0F1A2B3C4D5E";
        assert_eq!(image_id(id).unwrap(), id.to_lowercase());
        assert!(image_id("upload").is_none());
        assert!(image_id("0e0c8a526b3b4f8c9e5d0f1a2b3c4d5e").is_none());
    }

    #[test]
    fn stems() {
        assert_eq!(stem("disk.qcow2"), "disk");
        assert_eq!(stem("a.b.iso"), "a.b");
    }
}
