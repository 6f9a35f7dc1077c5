//! Request fields from multipart bodies, url-encoded bodies and the query string, with every
//! rejection in the service's JSON error shape.

use super::error::ApiError;
use crate::domain::{
    self,
    caller::Caller,
    form::{Field, Fields, FilePart, FormPart, FormReader, FormSource, NoParts},
};
use async_trait::async_trait;
use axum::{
    extract::{FromRequest, Request},
    http::header::{self, CONTENT_TYPE},
};
use futures::{StreamExt, TryStreamExt};
use std::io;

/// Largest text field or url-encoded body accepted.
const TEXT_LIMIT: usize = 64 * 1024;

/// A request's query parameters by name (one the service reads has one value: [`parse_query`]
/// refuses it sent twice with different values): those the HTTP layer reads itself
/// (`isZip`, `limit`, ...) and, through [`Query::fields`], the use cases' [`Fields`].
#[derive(Debug, Clone, Default)]
pub struct Query(Vec<(String, String)>);

impl Query {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The use cases' fields among the parameters.
    pub fn fields(&self) -> Fields {
        Fields::from_pairs(self.0.iter().cloned())
    }
}

/// The request's query string, parsed ([`parse_query`]); a malformed one is a 400.
impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Query {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        parse_query(parts.uri.query())
    }
}

/// Parses a query string (`None`: no query). Errors: it is malformed, or holds more than
/// [`MAX_FIELDS`] parameters.
fn parse_query(q: Option<&str>) -> Result<Query, ApiError> {
    let pairs = urlencoded_pairs(q.unwrap_or("").as_bytes())
        .map_err(|e| ApiError::bad_request(format!("malformed query string: {e}")))?;
    Ok(Query(pairs))
}

/// The name-value pairs of `application/x-www-form-urlencoded` text (a query string or a
/// form body), parsed as the WHATWG URL standard's urlencoded parser does (`&` separates
/// pairs, the first `=` the name from the value, `+` is a space, `%XX` a byte), but strictly:
/// a name or value that is not UTF-8 once decoded is an error, not text with replacement
/// characters (a user id such as `%FF%FE` would otherwise name another user, `"\u{fffd}\u{fffd}"`).
/// Errors also past [`MAX_FIELDS`] pairs, and for a parameter the service reads sent twice
/// with different values (`identifier=a&identifier=b`): which one it meant is not known, and
/// a proxy that reads the first would see another request than the service.
fn urlencoded_pairs(input: &[u8]) -> Result<Vec<(String, String)>, String> {
    let decode = |raw: &[u8]| {
        let spaced: Vec<u8> = raw
            .iter()
            .map(|&b| if b == b'+' { b' ' } else { b })
            .collect();
        let bytes: Vec<u8> = percent_encoding::percent_decode(&spaced).collect();
        String::from_utf8(bytes).map_err(|_| {
            let shown = String::from_utf8_lossy(raw);
            format!("{shown:?} is not UTF-8 once percent-decoded")
        })
    };
    let mut pairs = vec![];
    for pair in input.split(|&b| b == b'&').filter(|p| !p.is_empty()) {
        if pairs.len() == MAX_FIELDS {
            return Err(format!("more than {MAX_FIELDS} parameters"));
        }
        let (name, value) = match pair.iter().position(|&b| b == b'=') {
            Some(at) => (&pair[..at], &pair[at + 1..]),
            None => (pair, &[][..]),
        };
        let (name, value) = (decode(name)?, decode(value)?);
        let read = Field::from_name(&name).is_some() || READ_HERE.contains(&name.as_str());
        if read && pairs.iter().any(|(n, v)| *n == name && *v != value) {
            return Err(format!(
                "the parameter {name} is sent more than once, with different values"
            ));
        }
        pairs.push((name, value));
    }
    Ok(pairs)
}

/// The query parameters the HTTP layer reads itself (the use cases' are [`Field`]s).
const READ_HERE: [&str; 3] = ["isZip", "limit", "offset"];

/// Most fields (and parts) one request may carry: clients send a handful; each is held until
/// the request is handled.
pub const MAX_FIELDS: usize = 200;

fn too_many_fields() -> domain::Error {
    domain::Error::InvalidInput(format!("more than {MAX_FIELDS} form fields"))
}

/// Parts of a `multipart/form-data` body, read as they arrive.
pub struct MultipartParts {
    parts: multer::Multipart<'static>,
    /// Parts read so far.
    seen: usize,
}

/// Whether an error, or one of its causes, is the request body's idle timeout.
fn is_body_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        if let Some(io) = err.downcast_ref::<io::Error>() {
            if io.kind() == io::ErrorKind::TimedOut {
                return true;
            }
            if io.get_ref().is_some_and(|inner| is_body_timeout(inner)) {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

/// A failed multipart stream as an I/O error of the body: `TimedOut` when the client went
/// silent, `InvalidData` otherwise.
fn body_io_error(e: multer::Error) -> io::Error {
    if is_body_timeout(&e) {
        return io::Error::new(
            io::ErrorKind::TimedOut,
            "the client sent no data for too long",
        );
    }
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("malformed multipart body: {e}"),
    )
}

/// Reads a small body whole (a urlencoded form, a JSON document) of at most `limit` bytes.
///
/// Errors, as for every other body: the client went silent (`FS_BODY_IDLE_TIMEOUT_SECS`):
/// 408 `REQUEST_TIMEOUT`; a broken stream (a bad chunk size, a reset): 400 `BAD_BODY`; more
/// than `limit` bytes: 400 `INVALID_PARAMETER`.
pub async fn small_body(body: axum::body::Body, limit: usize) -> Result<bytes::Bytes, ApiError> {
    let mut data = body.into_data_stream();
    let mut read = bytes::BytesMut::new();
    while let Some(frame) = data.next().await {
        let frame = frame.map_err(|e| match is_body_timeout(&e) {
            true => domain::Error::BodyTimeout,
            false => domain::Error::BadBody(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unreadable body: {e}"),
            )),
        })?;
        if read.len() + frame.len() > limit {
            return Err(ApiError::bad_request(format!(
                "the body is longer than {limit} bytes"
            )));
        }
        read.extend_from_slice(&frame);
    }
    Ok(read.freeze())
}

fn bad_multipart(e: multer::Error) -> domain::Error {
    if is_body_timeout(&e) {
        return domain::Error::BodyTimeout;
    }
    // A refusal of the body stream itself (e.g. a header past its bound) says why.
    let why = match std::error::Error::source(&e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    };
    domain::Error::BadBody(io::Error::new(
        io::ErrorKind::InvalidData,
        format!("malformed multipart body: {why}"),
    ))
}

#[async_trait]
impl FormSource for MultipartParts {
    /// The next file part, or text field the use cases read ([`Field::from_name`]); every
    /// other text field is still read, bounded and checked to be UTF-8, then passed over.
    async fn next_part(&mut self) -> domain::Result<Option<FormPart>> {
        loop {
            let Some(mut field) = self.parts.next_field().await.map_err(bad_multipart)? else {
                return Ok(None);
            };
            self.seen += 1;
            if self.seen > MAX_FIELDS {
                return Err(too_many_fields());
            }
            let headers = field.headers();
            if headers.get_all(header::CONTENT_DISPOSITION).iter().count() > 1 {
                return Err(domain::Error::InvalidInput(
                    "a part has two Content-Disposition headers (RFC 7578 4.2: one); send one"
                        .into(),
                ));
            }
            let disposition = headers
                .get(header::CONTENT_DISPOSITION)
                .map(|v| v.as_bytes());
            if let Some(key) = disposition.and_then(repeated_parameter) {
                return Err(domain::Error::InvalidInput(format!(
                    "a part's Content-Disposition names {key:?} twice (RFC 6266 4.1); send it once"
                )));
            }
            // The part's name as the file name is read: parameter names in any case, and
            // `name=` inside a quoted value is part of that value (RFC 7578 4.2).
            let name = disposition
                .and_then(disposition_name)
                .or_else(|| field.name().map(str::to_string))
                .unwrap_or_default();
            let file_name = disposition
                .and_then(disposition_file_name)
                .or_else(|| field.file_name().map(str::to_string));
            let part = FilePart::from_name(&name);
            if file_name.is_some() || part.is_some() {
                let body = field.map_err(body_io_error).boxed();
                return Ok(Some(FormPart::File {
                    part,
                    file_name,
                    body,
                }));
            }
            let mut value = Vec::new();
            while let Some(chunk) = field.chunk().await.map_err(bad_multipart)? {
                if value.len() + chunk.len() > TEXT_LIMIT {
                    return Err(domain::Error::InvalidInput(format!(
                        "field {name:?} is longer than {TEXT_LIMIT} bytes"
                    )));
                }
                value.extend_from_slice(&chunk);
            }
            let value = String::from_utf8(value)
                .map_err(|_| domain::Error::InvalidInput(format!("field {name:?} is not UTF-8")))?;
            if let Some(field) = Field::from_name(&name) {
                return Ok(Some(FormPart::Text { field, value }));
            }
        }
    }
}

/// The file name of a part's `Content-Disposition` header: the RFC 5987 / RFC 7578
/// `filename*=charset'lang'pct-encoded` form when present and decodable (UTF-8 or ISO-8859-1),
/// as Go's mime/multipart (the original's parser) prefers it, else `filename=` (quoted or a
/// token). `None` when the header names no file.
pub fn disposition_file_name(header: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(header);
    let params = disposition_params(&text);
    let extended = params
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("filename*"))
        .and_then(|(_, v)| decode_ext_value(v));
    extended.or_else(|| {
        params
            .into_iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("filename"))
            .map(|(_, v)| v)
    })
}

/// The `name` parameter of a part's `Content-Disposition` header.
fn disposition_name(header: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(header);
    disposition_params(&text)
        .into_iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("name"))
        .map(|(_, v)| v)
}

/// A parameter named twice in a part's `Content-Disposition` (`filename="a.img";
/// filename="b.txt"`), which parsers read differently (the first, the last, or an error in Go's
/// `mime` of the original): the one a proxy or scanner checked might not be the one stored.
fn repeated_parameter(header: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(header);
    let mut keys: Vec<String> = disposition_params(&text)
        .into_iter()
        .map(|(k, _)| k.to_ascii_lowercase())
        .collect();
    keys.sort();
    keys.windows(2).find(|w| w[0] == w[1]).map(|w| w[0].clone())
}

/// The `key=value` parameters after the disposition type; quoted values are unquoted.
fn disposition_params(text: &str) -> Vec<(String, String)> {
    let mut out = vec![];
    let mut rest = text.split_once(';').map_or("", |(_, r)| r);
    while let Some((key, after)) = rest.split_once('=') {
        let key = key.trim().trim_start_matches(';').trim().to_string();
        let after = after.trim_start();
        let (value, tail) = match after.strip_prefix('"') {
            Some(q) => unquote(q),
            None => match after.split_once(';') {
                Some((v, t)) => (v.trim().to_string(), t),
                None => (after.trim().to_string(), ""),
            },
        };
        out.push((key, value));
        rest = tail;
    }
    out
}

/// A quoted string (after its opening quote): its value and what follows its closing quote.
fn unquote(q: &str) -> (String, &str) {
    let mut value = String::new();
    let mut chars = q.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            // A backslash escapes only a special character (RFC 2045 tspecials, as Go's
            // mime parser of the original reads it): `C:\Windows\a.img` as sent unescaped by
            // old browsers keeps its backslashes (and the base name is `a.img`).
            '\\' => match q[i + 1..].chars().next() {
                Some(n) if "()<>@,;:\\\"/[]?=".contains(n) => {
                    value.push(n);
                    chars.next();
                }
                _ => value.push('\\'),
            },
            '"' => return (value, &q[i + 1..]),
            c => value.push(c),
        }
    }
    (value, "")
}

/// Decodes an RFC 5987 `ext-value`: `charset'language'pct-encoded`; `None` when a `%` is not
/// followed by two hex digits (the plain `filename` is used then).
fn decode_ext_value(v: &str) -> Option<String> {
    let mut it = v.splitn(3, '\'');
    let (charset, _lang, encoded) = (it.next()?, it.next()?, it.next()?);
    let escapes_ok = encoded.match_indices('%').all(|(i, _)| {
        encoded
            .get(i + 1..i + 3)
            .is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
    });
    if !escapes_ok {
        return None;
    }
    let bytes: Vec<u8> = percent_encoding::percent_decode_str(encoded).collect();
    match charset.to_ascii_lowercase().as_str() {
        "utf-8" => String::from_utf8(bytes).ok(),
        "iso-8859-1" => Some(bytes.into_iter().map(char::from).collect()),
        _ => None,
    }
}

/// A request's fields: query parameters plus the body's fields and file parts.
/// The most a multipart upload's body holds beyond its image (bytes): every text field at its
/// limit, and room for the parts' headers and boundaries.
const FORM_OVERHEAD: u64 = (MAX_FIELDS * TEXT_LIMIT) as u64 + (1 << 20);

/// Refuses an upload or a chunk whose declared `Content-Length` is more than
/// `FS_MAX_IMAGE_BYTES` plus [`FORM_OVERHEAD`] (413 `FILE_TOO_LARGE`) before a byte of its
/// body is read: a client that sent `Expect: 100-continue` (curl does for large bodies) is
/// answered at once instead of sending the whole file first. A body without a declared
/// length is bounded as it streams, as before.
pub struct WithinImageLimit {
    /// The declared `Content-Length` (bytes), when there is one.
    declared: Option<u64>,
}

impl WithinImageLimit {
    /// The least the image in the body can be (bytes): its declared length less the most a
    /// form holds beyond its image; `None` without a declared length.
    pub fn least_image_bytes(&self) -> Option<u64> {
        self.declared.map(|len| len.saturating_sub(FORM_OVERHEAD))
    }
}

impl axum::extract::FromRequestParts<crate::domain::Service> for WithinImageLimit {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        svc: &crate::domain::Service,
    ) -> Result<Self, Self::Rejection> {
        let declared = parts
            .headers
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let limit = svc.config().max_image_bytes.saturating_add(FORM_OVERHEAD);
        match declared {
            Some(len) if len > limit => Err(ApiError::from(domain::Error::TooLarge)),
            _ => Ok(WithinImageLimit { declared }),
        }
    }
}

pub struct Form {
    /// Query parameters, overlaid with url-encoded body fields (which win).
    pub fields: Fields,
    pub parts: Box<dyn FormSource>,
}

impl<S: Send + Sync> FromRequest<S> for Form {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let mut fields = parse_query(req.uri().query())?.fields();
        let ct = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let mime = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let parts: Box<dyn FormSource> = match mime.as_str() {
            "multipart/form-data" => {
                let boundary = multer::parse_boundary(&ct).map_err(|e| {
                    ApiError::of(
                        crate::domain::Code::BadBody,
                        format!("malformed multipart body: {e}"),
                    )
                })?;
                let body =
                    super::bounded::bound_headers(req.into_body().into_data_stream(), &boundary);
                Box::new(MultipartParts {
                    parts: multer::Multipart::new(body, boundary),
                    seen: 0,
                })
            }
            "application/x-www-form-urlencoded" => {
                let bytes = small_body(req.into_body(), TEXT_LIMIT).await?;
                let pairs = urlencoded_pairs(&bytes)
                    .map_err(|e| ApiError::bad_request(format!("malformed form body: {e}")))?;
                fields.overlay(Fields::from_pairs(pairs));
                Box::new(NoParts)
            }
            _ => Box::new(NoParts),
        };
        Ok(Form { fields, parts })
    }
}

/// Text fields only (merge, cancel, delete): file parts are read past and ignored.
/// The request's [`Caller`], as the authentication layer (`routes::auth`) recorded it in the
/// request's extensions; [`Caller::Anonymous`] when authentication is off.
pub struct Authenticated(pub Caller);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Authenticated {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Authenticated(
            parts
                .extensions
                .get::<Caller>()
                .cloned()
                .unwrap_or(Caller::Anonymous),
        ))
    }
}

pub struct FormFields(pub Fields);

impl<S: Send + Sync> FromRequest<S> for FormFields {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let Form {
            mut fields,
            mut parts,
        } = Form::from_request(req, state).await?;
        let body = FormReader::new(parts.as_mut(), Fields::default())
            .finish()
            .await?;
        fields.overlay(body);
        Ok(FormFields(fields))
    }
}

#[cfg(test)]
mod tests {
    use super::disposition_file_name as f;

    #[test]
    fn part_names_are_read_as_file_names_are() {
        let n = |h: &str| super::disposition_name(h.as_bytes());
        assert_eq!(n(r#"form-data; NAME="file""#).as_deref(), Some("file"));
        let quoted = r#"form-data; filename="e\"; name=\"nofile"; name="file""#;
        assert_eq!(n(quoted).as_deref(), Some("file"));
        assert_eq!(f(quoted.as_bytes()).as_deref(), Some(r#"e"; name="nofile"#));
        // A broken percent escape in filename*: the plain filename.
        let broken = r#"form-data; name="file"; filename="a.img"; filename*=UTF-8''%ZZ.img"#;
        assert_eq!(f(broken.as_bytes()).as_deref(), Some("a.img"));
    }

    #[test]
    fn repeated_disposition_parameters_are_found() {
        let r = |h: &str| super::repeated_parameter(h.as_bytes());
        assert_eq!(r(r#"form-data; name="file"; filename="a.img""#), None);
        let both = r#"form-data; name="file"; filename="a.img"; filename*=UTF-8''b.img"#;
        assert_eq!(r(both), None, "filename and filename* are two parameters");
        let twice = r#"form-data; name="file"; filename="a.img"; FileName="b.txt""#;
        assert_eq!(r(twice).as_deref(), Some("filename"));
        assert_eq!(
            r(r#"form-data; name="a"; name="b""#).as_deref(),
            Some("name")
        );
        // A quoted value holding `; filename=` is one parameter.
        assert_eq!(
            r(r#"form-data; name="f"; filename="x; filename=y.img""#),
            None
        );
    }

    #[test]
    fn urlencoded_pairs_are_decoded_strictly() {
        let ok = |s: &str| super::urlencoded_pairs(s.as_bytes()).unwrap();
        let pair = |n: &str, v: &str| (n.to_string(), v.to_string());
        assert_eq!(ok(""), vec![]);
        assert_eq!(
            ok("userId=a+b%20c&&isZip&x=1=2"),
            vec![pair("userId", "a b c"), pair("isZip", ""), pair("x", "1=2")]
        );
        assert_eq!(ok("n=%E9%95%9C"), vec![pair("n", "\u{955c}")]);
        // A stray % is kept as it is (WHATWG).
        assert_eq!(
            ok("n=100%&m=%zz"),
            vec![pair("n", "100%"), pair("m", "%zz")]
        );
        for bad in ["userId=%FF%FE", "%C3=x", "a=%E9%95"] {
            let err = super::urlencoded_pairs(bad.as_bytes()).unwrap_err();
            assert!(err.contains("not UTF-8"), "{bad}: {err}");
        }
        let many = vec!["a=1"; super::MAX_FIELDS + 1].join("&");
        assert!(super::urlencoded_pairs(many.as_bytes()).is_err());
        assert!(super::urlencoded_pairs(&many.as_bytes()[4..]).is_ok());
    }

    #[test]
    fn file_names_of_parts() {
        let cases: &[(&[u8], Option<&str>)] = &[
            (
                b"form-data; name=\"file\"; filename=\"a.qcow2\"",
                Some("a.qcow2"),
            ),
            (
                b"form-data; name=\"file\"; filename*=UTF-8''%E9%95%9C%E5%83%8F.qcow2",
                Some("\u{955c}\u{50cf}.qcow2"),
            ),
            (
                b"form-data; name=file; filename=\"x.img\"; filename*=utf-8''y%20z.img",
                Some("y z.img"),
            ),
            (
                b"form-data; filename*=iso-8859-1'en'caf%E9.iso; name=\"file\"",
                Some("caf\u{e9}.iso"),
            ),
            (
                b"form-data; name=\"f\"; filename=\"a\\\"b;c.iso\"",
                Some("a\"b;c.iso"),
            ),
            (b"form-data; name=\"userId\"", None),
            // Undecodable extended value: the plain one is used.
            (
                b"form-data; filename=\"p.img\"; filename*=UTF-8''%FF.img",
                Some("p.img"),
            ),
        ];
        for (header, want) in cases {
            let header_text = String::from_utf8_lossy(header);
            assert_eq!(f(header).as_deref(), *want, "{header_text}");
        }
    }
}
