//! Bounds on the parts of a `multipart/form-data` body that a parser has to hold in memory.
//!
//! A multipart parser buffers a part's header block until its blank line, and the preamble
//! until the first delimiter (RFC 2046 section 5.1.1): without a bound, a header that never
//! ends makes the service hold the whole body. This stream sits between the request body and
//! the parser and fails as soon as a preamble or a part's headers pass `MAX_HEADER_BYTES`.
//! Part contents pass through untouched; delimiters are found with `memchr::memmem`.

use bytes::Bytes;
use futures::{Stream, StreamExt};
use memchr::memmem::Finder;
use std::io;

/// Largest preamble, and largest header block of one part (bytes). Clients send a few hundred.
pub const MAX_HEADER_BYTES: usize = 16 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the first delimiter, or inside a part's content: looking for a delimiter.
    /// `counted` is whether the bytes count against the bound (the preamble).
    Content { counted: bool },
    /// Just after a delimiter, before the two bytes that tell the close delimiter (`--`).
    Delimited,
    /// After a delimiter: the rest of its line and the part's headers, up to a blank line.
    Headers,
    /// After the close delimiter: the epilogue, which parsers ignore (RFC 2046 section
    /// 5.1.1) and which is not held.
    Epilogue,
}

struct Guard {
    delimiter: Finder<'static>,
    blank_line: Finder<'static>,
    state: State,
    /// Bytes counted in the current preamble or header block.
    held: usize,
    /// The end of the previous chunk, for patterns split across chunks.
    tail: Vec<u8>,
}

impl Guard {
    fn new(boundary: &str) -> Self {
        Guard {
            // The first delimiter may start the body without its CRLF: one is assumed before it.
            delimiter: Finder::new(format!("\r\n--{boundary}").as_bytes()).into_owned(),
            blank_line: Finder::new(b"\r\n\r\n").into_owned(),
            state: State::Content { counted: true },
            held: 0,
            tail: b"\r\n".to_vec(),
        }
    }

    /// Follows one chunk through the states; an error once a bound is passed.
    fn feed(&mut self, chunk: &[u8]) -> io::Result<()> {
        let mut window = std::mem::take(&mut self.tail);
        let carried = window.len();
        window.extend_from_slice(chunk);
        let mut at = 0;
        loop {
            let (finder, next) = match self.state {
                State::Epilogue => break,
                State::Delimited => {
                    let Some(two) = window.get(at..at + 2) else {
                        break;
                    };
                    self.state = match two {
                        b"--" => State::Epilogue,
                        _ => State::Headers,
                    };
                    continue;
                }
                State::Content { .. } => (&self.delimiter, State::Delimited),
                State::Headers => (&self.blank_line, State::Content { counted: false }),
            };
            let found = finder
                .find(&window[at..])
                .map(|i| at + i + finder.needle().len());
            let counted = !matches!(self.state, State::Content { counted: false });
            let end = found.unwrap_or(window.len());
            if counted {
                // Only bytes of this chunk count (carried ones were counted before).
                self.held += end.saturating_sub(at.max(carried));
                if self.held > MAX_HEADER_BYTES {
                    let msg = match self.state {
                        // Before any delimiter: most likely not the boundary Content-Type names.
                        State::Content { .. } | State::Delimited | State::Epilogue => format!(
                            "no delimiter of the boundary named in Content-Type within the first \
                             {MAX_HEADER_BYTES} bytes of the multipart body"
                        ),
                        State::Headers => format!(
                            "a multipart part's header block is longer than {MAX_HEADER_BYTES} bytes"
                        ),
                    };
                    return Err(io::Error::new(io::ErrorKind::InvalidData, msg));
                }
            }
            match found {
                Some(end) => {
                    self.state = next;
                    self.held = 0;
                    at = end;
                }
                None => break,
            }
        }
        if self.state == State::Epilogue {
            return Ok(());
        }
        let keep = self.delimiter.needle().len() - 1;
        let from = window.len().saturating_sub(keep).max(at.min(window.len()));
        self.tail = window[from..].to_vec();
        Ok(())
    }
}

/// Wraps a multipart body so that it fails once a preamble or a part's headers grow past
/// `MAX_HEADER_BYTES`.
pub fn bound_headers<S, E>(body: S, boundary: &str) -> impl Stream<Item = io::Result<Bytes>>
where
    S: Stream<Item = Result<Bytes, E>>,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut guard = Guard::new(boundary);
    let mut failed = false;
    body.map(move |item| {
        if failed {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "body refused"));
        }
        let chunk = item.map_err(io::Error::other)?;
        if let Err(e) = guard.feed(&chunk) {
            failed = true;
            return Err(e);
        }
        Ok(chunk)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_all(boundary: &str, chunks: &[&[u8]]) -> io::Result<()> {
        let mut g = Guard::new(boundary);
        chunks.iter().try_for_each(|c| g.feed(c))
    }

    fn body(header: &str, content: &[u8]) -> Vec<u8> {
        let mut b = format!("--XyZ\r\n{header}\r\n\r\n").into_bytes();
        b.extend_from_slice(content);
        b.extend_from_slice(b"\r\n--XyZ--\r\n");
        b
    }

    #[test]
    fn ordinary_bodies_pass_in_any_split() {
        let b = body(
            "Content-Disposition: form-data; name=\"file\"; filename=\"a.img\"",
            &vec![b'x'; 100_000],
        );
        for step in [1, 2, 3, 7, 64, 4096, b.len()] {
            let chunks: Vec<&[u8]> = b.chunks(step).collect();
            assert!(feed_all("XyZ", &chunks).is_ok(), "step {step}");
        }
    }

    #[test]
    fn content_is_not_counted_however_large() {
        let b = body(
            "Content-Disposition: form-data; name=\"f\"",
            &vec![b'\r'; 1 << 20],
        );
        assert!(feed_all("XyZ", &[&b]).is_ok());
    }

    #[test]
    fn the_epilogue_is_not_held_however_long() {
        // RFC 2046 section 5.1.1: what follows the close delimiter is ignored.
        let mut b = body("Content-Disposition: form-data; name=\"f\"", b"1");
        b.extend_from_slice(&vec![b'e'; 1 << 20]);
        for step in [1, 2, 5, 4096, b.len()] {
            let chunks: Vec<&[u8]> = b.chunks(step).collect();
            assert!(feed_all("XyZ", &chunks).is_ok(), "step {step}");
        }
        // A delimiter followed by anything but `--` still opens a part whose headers count.
        let mut b = body("Content-Disposition: form-data; name=\"f\"", b"1");
        b.truncate(b.len() - 4);
        b.push(b'-');
        b.extend_from_slice(&vec![b'h'; MAX_HEADER_BYTES + 1]);
        for step in [1, 3, b.len()] {
            let chunks: Vec<&[u8]> = b.chunks(step).collect();
            assert!(feed_all("XyZ", &chunks).is_err(), "step {step}");
        }
    }

    #[test]
    fn long_headers_and_preambles_are_refused() {
        let long = format!("X-Pad: {}", "a".repeat(MAX_HEADER_BYTES));
        let b = body(&long, b"data");
        for step in [1000, b.len()] {
            let chunks: Vec<&[u8]> = b.chunks(step).collect();
            assert!(feed_all("XyZ", &chunks).is_err(), "step {step}");
        }
        // A header block that never ends.
        let mut g = Guard::new("XyZ");
        g.feed(b"--XyZ\r\nContent-Disposition: form-data; name=\"f\"")
            .unwrap();
        let endless = vec![b'a'; 4096];
        assert!((0..10).try_for_each(|_| g.feed(&endless)).is_err());
        // No delimiter at all.
        let mut g = Guard::new("XyZ");
        assert!((0..10).try_for_each(|_| g.feed(&endless)).is_err());
        // A second part's long header is caught too.
        let mut b = body("Content-Disposition: form-data; name=\"a\"", b"1");
        b.truncate(b.len() - 4);
        b.extend_from_slice(format!("\r\n{long}\r\n\r\nz\r\n--XyZ--").as_bytes());
        assert!(feed_all("XyZ", &[&b]).is_err());
    }
}
