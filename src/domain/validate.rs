//! Rules for what clients may send: file names and user ids (identifiers, chunk numbers and
//! image ids are types of their own, in `ids`).
//!
//! Nothing a client sends ever becomes part of a storage path: objects are keyed by image id.
//! These rules keep names sane for headers, zip entries and logs.

/// Extensions the original accepted (case-sensitive).
pub const IMAGE_EXTENSIONS: [&str; 3] = [".qcow2", ".img", ".iso"];
pub const ZIP_EXTENSION: &str = ".zip";
pub use super::ids::MAX_NAME_CHARS;

/// Reduces a client file name to its last path component (some browsers send full paths).
pub(super) fn base_name(name: &str) -> &str {
    name.rsplit(['/', '\\']).next().unwrap_or(name)
}

/// Whether `c` may stand in a file name or a user id: not a control character, not a Unicode
/// bidirectional formatting character (U+061C, U+200E/F, U+202A-U+202E, U+2066-U+2069: they
/// reorder how a name is shown, so that `x\u{202E}gmi.exe` would read as an image; Unicode
/// TR9), not a line or paragraph separator (U+2028/9: a line break to many log readers), not
/// an invisible character with no use inside a name (U+200B zero width space, U+2060 word
/// joiner, U+FEFF byte order mark: `al\u{200B}ice` shows as `alice`; the joiners U+200C/D,
/// which some scripts need, stay), not U+FFFD (what a name that was not UTF-8 decodes to: not
/// the name the client had).
pub fn name_char(c: char) -> bool {
    !c.is_control()
        && !matches!(
            c,
            '\u{061C}'
                | '\u{200B}'
                | '\u{200E}'
                | '\u{200F}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2060}'
                | '\u{2066}'..='\u{2069}'
                | '\u{FEFF}'
                | '\u{FFFD}'
        )
}

/// Validates an uploaded file name: allowed extension, at most 128 characters, only
/// [`name_char`]s, a non-empty base. Returns the cleaned name.
pub fn file_name(raw: &str) -> Option<String> {
    let name = base_name(raw.trim());
    let ok_ext = IMAGE_EXTENSIONS
        .iter()
        .chain(std::iter::once(&ZIP_EXTENSION))
        .any(|ext| name.len() > ext.len() && name.ends_with(ext));
    let ok = ok_ext
        && name.chars().count() <= MAX_NAME_CHARS
        && name.chars().all(name_char)
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

/// The longest `userId` (bytes): as for a user id from a credential (`auth`), and what every
/// database column holding one takes (PostgreSQL refuses longer text: a 400 here, not the
/// database's 500).
pub const MAX_USER_ID_BYTES: usize = 255;

/// A `userId` as sent (free text, as in the original; missing is ""), within the rules a user
/// id from a credential follows: at most [`MAX_USER_ID_BYTES`] bytes and only [`name_char`]s
/// (no client means a control character, PostgreSQL cannot store a NUL, and a bidirectional
/// formatting character makes one user's id read as another's in the console and logs).
pub fn user_id(raw: Option<&str>) -> Result<String, String> {
    let id = raw.unwrap_or("");
    if !id.chars().all(name_char) {
        return Err(
            "userId must not hold a control or bidirectional formatting character, or U+FFFD"
                .into(),
        );
    }
    if id.len() > MAX_USER_ID_BYTES {
        return Err(format!("userId must be at most {MAX_USER_ID_BYTES} bytes"));
    }
    Ok(id.to_string())
}

/// A decimal count as HTTP and query strings write it (RFC 9110's `1*DIGIT`: ASCII digits
/// only, no sign): its value, or `u64::MAX` past it (the syntax has no bound, so a longer
/// count means "more than anything here"). `None` when it is not digits.
pub fn count(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    Some(text.parse().unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids() {
        assert_eq!(user_id(None), Ok(String::new()));
        assert_eq!(user_id(Some("me")), Ok("me".into()));
        let longest = "u".repeat(MAX_USER_ID_BYTES);
        assert_eq!(user_id(Some(&longest)), Ok(longest.clone()));
        assert!(user_id(Some(&format!("{longest}u"))).is_err());
        // Bytes, not characters: 128 two-byte characters are 256 bytes.
        assert!(user_id(Some(&"é".repeat(128))).is_err());
        // A right-to-left override makes "bob\u{202E}ecila" read as "bobalice".
        for bad in [
            "a\0b",
            "a\u{1}",
            "a\nb",
            "\u{7f}",
            "bob\u{202E}ecila",
            "a\u{2067}b",
            "a\u{200F}",
            "\u{FFFD}",
            "a\u{2028}",
            "a\u{2029}b",
            "al\u{200B}ice",
            "\u{2060}alice",
            "\u{FEFF}alice",
        ] {
            assert!(user_id(Some(bad)).is_err(), "{bad:?}");
            assert!(!crate::auth::usable_user_id(bad), "{bad:?}");
        }
        assert!(crate::auth::usable_user_id("小明"));
        // The joiners some scripts need (Persian ZWNJ here) stay.
        assert!(crate::auth::usable_user_id("می\u{200C}خواهم"));
    }

    #[test]
    fn counts() {
        assert_eq!(count("0"), Some(0));
        assert_eq!(count("0042"), Some(42));
        assert_eq!(count("18446744073709551615"), Some(u64::MAX));
        assert_eq!(count("99999999999999999999999"), Some(u64::MAX));
        for bad in ["", "+1", "-1", " 1", "1.0", "0x10", "1e3"] {
            assert_eq!(count(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn file_names() {
        assert_eq!(file_name("a.qcow2").as_deref(), Some("a.qcow2"));
        assert_eq!(file_name("C:\\x\\disk.img").as_deref(), Some("disk.img"));
        assert_eq!(file_name("../../etc/x.iso").as_deref(), Some("x.iso"));
        assert!(file_name("a.QCOW2").is_none());
        assert!(file_name("a.exe").is_none());
        assert!(file_name(".qcow2").is_none());
        assert!(file_name("a\n.qcow2").is_none());
        for disguised in ["x\u{202E}gmi.exe.img", "a\u{2066}b.qcow2", "a\u{200F}.iso"] {
            assert!(file_name(disguised).is_none(), "{disguised:?}");
        }
        assert!(file_name("\u{FFFD}\u{FFFD}.qcow2").is_none());
        let long = format!("{}.qcow2", "a".repeat(123));
        assert_eq!(long.len(), 129);
        assert!(file_name(&long).is_none());
        assert!(file_name(&long[1..]).is_some());
        assert!(file_name(&format!("{}.iso", "é".repeat(124))).is_some());
    }

    #[test]
    fn stems() {
        assert_eq!(stem("disk.qcow2"), "disk");
        assert_eq!(stem("a.b.iso"), "a.b");
    }
}
