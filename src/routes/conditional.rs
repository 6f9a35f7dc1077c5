//! Conditional requests (RFC 9110 section 13): `If-Match`, `If-None-Match`,
//! `If-Modified-Since`, `If-Unmodified-Since` and `If-Range`, evaluated in the order of
//! section 13.2.2 against a representation's strong entity tag and modification time.

use axum::http::{header, HeaderMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What the preconditions of a GET or HEAD decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Serve the representation; `range` says whether a `Range` may be honoured (no
    /// `If-Range`, or one that matches).
    Serve { range: bool },
    /// 304 Not Modified.
    NotModified,
    /// 412 Precondition Failed.
    Failed,
}

/// A representation's validators.
pub struct Validators<'a> {
    /// The strong entity tag, quoted.
    pub etag: &'a str,
    /// Unix seconds.
    pub last_modified: i64,
    /// Whether `last_modified` is strong: the representation did not change twice in that
    /// second (RFC 9110 section 8.8.2.2). `If-Range` matches a date only then.
    pub last_modified_strong: bool,
}

impl Validators<'_> {
    pub fn last_modified_time(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.last_modified.max(0) as u64)
    }
}

/// Evaluates the preconditions of a GET or HEAD request.
pub fn evaluate(headers: &HeaderMap, v: &Validators<'_>) -> Outcome {
    let text = |name: &header::HeaderName| -> Option<String> {
        let values: Vec<&str> = headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap_or("\u{fffd}"))
            .collect();
        (!values.is_empty()).then(|| values.join(","))
    };
    // A date field is a single value: sent more than once, it is ignored (RFC 9110 13.1.3).
    let date = |name: &header::HeaderName| -> Option<SystemTime> {
        let mut all = headers.get_all(name).iter();
        let (Some(v), None) = (all.next(), all.next()) else {
            return None;
        };
        v.to_str()
            .ok()
            .and_then(|s| httpdate::parse_http_date(s.trim()).ok())
    };
    let modified = v.last_modified_time();
    // 1, 2: If-Match, else If-Unmodified-Since.
    if let Some(list) = text(&header::IF_MATCH) {
        if !matches_any(&list, v.etag, Comparison::Strong) {
            return Outcome::Failed;
        }
    } else if let Some(since) = date(&header::IF_UNMODIFIED_SINCE) {
        if modified > since {
            return Outcome::Failed;
        }
    }
    // 3, 4: If-None-Match, else If-Modified-Since.
    if let Some(list) = text(&header::IF_NONE_MATCH) {
        if matches_any(&list, v.etag, Comparison::Weak) {
            return Outcome::NotModified;
        }
    } else if let Some(since) = date(&header::IF_MODIFIED_SINCE) {
        // A date later than the server's clock is invalid, so ignored (RFC 2616 14.25, as
        // Apache does): it cannot vouch for a copy taken from this server.
        if modified <= since && since <= SystemTime::now() {
            return Outcome::NotModified;
        }
    }
    // 5: If-Range (section 13.1.5): an entity tag compared strongly, or the exact date of a
    // strong Last-Modified.
    // If-Range is one validator: several lines cannot match one representation.
    let if_range: Vec<_> = headers.get_all(header::IF_RANGE).iter().collect();
    let range = match if_range.first().map(|h| h.to_str()) {
        None => true,
        Some(_) if if_range.len() > 1 => false,
        Some(Ok(value)) => {
            let value = value.trim();
            if value.starts_with('"') || value.starts_with("W/") {
                // Exactly our strong tag: a weak one, or a list (`"a", "b"`), matches nothing.
                value == v.etag
            } else {
                v.last_modified_strong
                    && httpdate::parse_http_date(value).is_ok_and(|d| d == modified)
            }
        }
        Some(Err(_)) => false,
    };
    Outcome::Serve { range }
}

/// An HTTP-date (`Last-Modified`) for Unix seconds.
pub fn http_date(secs: i64) -> String {
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64))
}

#[derive(Clone, Copy)]
enum Comparison {
    Strong,
    Weak,
}

#[derive(Debug, PartialEq, Eq)]
struct Tag<'a> {
    weak: bool,
    opaque: &'a str,
}

impl<'a> Tag<'a> {
    fn parse(s: &'a str) -> Self {
        let s = s.trim();
        match s.strip_prefix("W/") {
            Some(rest) => Tag {
                weak: true,
                opaque: rest,
            },
            None => Tag {
                weak: false,
                opaque: s,
            },
        }
    }
}

/// The entity tags of a list (`"a", W/"b"`); commas inside quotes stay in their tag.
fn tags(list: &str) -> impl Iterator<Item = Tag<'_>> {
    let mut items = vec![];
    let (mut start, mut quoted) = (0, false);
    for (i, c) in list.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                items.push(&list[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&list[start..]);
    items
        .into_iter()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(Tag::parse)
}

/// Whether `list` (`*` or entity tags) matches the strong tag `etag`.
fn matches_any(list: &str, etag: &str, how: Comparison) -> bool {
    if list.trim() == "*" {
        return true;
    }
    let ours = Tag::parse(etag);
    tags(list).any(|t| {
        t.opaque == ours.opaque
            && match how {
                Comparison::Strong => !t.weak,
                Comparison::Weak => true,
            }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(pairs: &[(&str, &str)]) -> Outcome {
        outcome_with(pairs, true)
    }

    fn outcome_with(pairs: &[(&str, &str)], last_modified_strong: bool) -> Outcome {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        evaluate(
            &h,
            &Validators {
                etag: "\"abc\"",
                last_modified: 1_700_000_000,
                last_modified_strong,
            },
        )
    }

    #[test]
    fn if_range_matches_a_date_only_when_it_is_strong() {
        let at = http_date(1_700_000_000);
        let pairs = [("if-range", at.as_str())];
        assert_eq!(outcome_with(&pairs, true), Outcome::Serve { range: true });
        // Changed twice in that second (a slim ending in the second of its upload): the
        // date cannot tell the two apart, so the whole representation is sent.
        assert_eq!(outcome_with(&pairs, false), Outcome::Serve { range: false });
        assert_eq!(
            outcome_with(&[("if-range", "\"abc\"")], false),
            Outcome::Serve { range: true }
        );
    }

    #[test]
    fn rfc_9110_order() {
        let at = http_date(1_700_000_000);
        let before = http_date(1_699_999_999);
        let serve = Outcome::Serve { range: true };
        assert_eq!(outcome(&[]), serve);
        assert_eq!(outcome(&[("if-match", "\"abc\"")]), serve);
        assert_eq!(outcome(&[("if-match", "\"x\", \"abc\"")]), serve);
        assert_eq!(outcome(&[("if-match", "*")]), serve);
        assert_eq!(outcome(&[("if-match", "W/\"abc\"")]), Outcome::Failed);
        assert_eq!(outcome(&[("if-match", "\"x\"")]), Outcome::Failed);
        assert_eq!(
            outcome(&[("if-unmodified-since", &before)]),
            Outcome::Failed
        );
        assert_eq!(outcome(&[("if-unmodified-since", &at)]), serve);
        // If-Match wins over If-Unmodified-Since.
        assert_eq!(
            outcome(&[("if-match", "\"abc\""), ("if-unmodified-since", &before)]),
            serve
        );
        assert_eq!(
            outcome(&[("if-none-match", "W/\"abc\"")]),
            Outcome::NotModified
        );
        assert_eq!(outcome(&[("if-none-match", "*")]), Outcome::NotModified);
        assert_eq!(outcome(&[("if-none-match", "\"a,b\", \"x\"")]), serve);
        assert_eq!(outcome(&[("if-modified-since", &at)]), Outcome::NotModified);
        assert_eq!(outcome(&[("if-modified-since", &before)]), serve);
        assert_eq!(outcome(&[("if-modified-since", "garbage")]), serve);
        // If-None-Match wins over If-Modified-Since.
        assert_eq!(
            outcome(&[("if-none-match", "\"x\""), ("if-modified-since", &at)]),
            serve
        );
        assert_eq!(outcome(&[("if-range", "\"abc\"")]), serve);
        assert_eq!(outcome(&[("if-range", &at)]), serve);
        let whole = Outcome::Serve { range: false };
        assert_eq!(outcome(&[("if-range", "\"old\"")]), whole);
        assert_eq!(outcome(&[("if-range", "W/\"abc\"")]), whole);
        assert_eq!(outcome(&[("if-range", &before)]), whole);
        assert_eq!(outcome(&[("if-range", "garbage")]), whole);
        // A list on one line is not one validator, even when it names ours first.
        assert_eq!(outcome(&[("if-range", "\"abc\", \"x\"")]), whole);
        assert_eq!(outcome(&[("if-range", "\"abc\",")]), whole);
        // A date past the server's clock is ignored (a later one would hide any change).
        let future = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(86_400));
        assert_eq!(outcome(&[("if-modified-since", &future)]), serve);
        // Fields that must be single, sent twice.
        assert_eq!(
            outcome(&[("if-range", "\"abc\""), ("if-range", "\"x\"")]),
            whole
        );
        assert_eq!(
            outcome(&[("if-modified-since", &at), ("if-modified-since", &before)]),
            serve
        );
    }
}
