//! The incremental `text/event-stream` parser. Bytes in, events out, however the bytes are
//! cut. Its memory must stay bounded, and it must never panic, whatever an upstream sends.

use crate::error::{Error, ErrorKind, Result};

/// The default bound of [`SseParser`]: the longest line, and the most data one event may
/// carry (8 MiB).
pub const DEFAULT_MAX_EVENT_BYTES: usize = 8 << 20;

/// One dispatched server-sent event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    /// The `event:` field; `None` when absent or empty (the spec's default, `message`).
    pub event: Option<String>,
    /// The `data:` lines, joined with `\n`. Never empty.
    pub data: String,
    /// The last event id seen on the stream, as the spec defines it: an `id:` field sets
    /// it for this and every later event; an empty `id:` clears it (`None`).
    pub id: Option<String>,
}

/// An incremental `text/event-stream` parser (WHATWG HTML, "Server-sent events").
///
/// Feed it bytes as they arrive, split anywhere (even inside a UTF-8 character or between
/// the CR and LF of one line ending): the events are the same as for the whole stream at
/// once. Where it departs from or narrows the spec:
///
/// - An event whose data is empty (no `data:` field, or only empty ones) is not dispatched:
///   a chat stream has nothing to say with it. (The spec dispatches the latter.)
/// - `retry:` and unknown fields are ignored.
/// - Invalid UTF-8 becomes U+FFFD, as the spec's decoder does; it is not an error.
/// - Memory is bounded: a line, or the data of one event, longer than the limit
///   ([`DEFAULT_MAX_EVENT_BYTES`] unless [`SseParser::with_limit`]) is an error, after which
///   the parser only returns that error.
#[derive(Debug, Clone)]
pub struct SseParser {
    /// The bytes of the line not yet terminated.
    line: Vec<u8>,
    /// The last byte seen was a CR: an LF right after it ends nothing.
    after_cr: bool,
    /// No line has been processed yet (the one that may start with a BOM).
    at_start: bool,
    data: String,
    event: String,
    last_id: String,
    limit: usize,
    failed: Option<Error>,
}

impl Default for SseParser {
    fn default() -> Self {
        Self::new()
    }
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

impl SseParser {
    /// A parser bounded by [`DEFAULT_MAX_EVENT_BYTES`].
    pub fn new() -> Self {
        Self::with_limit(DEFAULT_MAX_EVENT_BYTES)
    }

    /// A parser whose longest line, and most data per event, is `max_bytes`.
    pub fn with_limit(max_bytes: usize) -> Self {
        SseParser {
            line: Vec::new(),
            after_cr: false,
            at_start: true,
            data: String::new(),
            event: String::new(),
            last_id: String::new(),
            limit: max_bytes,
            failed: None,
        }
    }

    /// Parse the next bytes of the stream and return the events they complete.
    ///
    /// On error the events completed by `bytes` before the offending line are lost; use
    /// [`SseParser::push_into`] to keep them.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>> {
        let mut out = Vec::new();
        self.push_into(bytes, &mut out)?;
        Ok(out)
    }

    /// Parse the next bytes of the stream and append the events they complete to `out`.
    /// On error, `out` holds every event that came before the offending line.
    pub fn push_into(&mut self, bytes: &[u8], out: &mut Vec<SseEvent>) -> Result<()> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let result = self.consume(bytes, out);
        if let Err(e) = &result {
            self.failed = Some(e.clone());
            self.line = Vec::new();
            self.data = String::new();
        }
        result
    }

    fn consume(&mut self, mut bytes: &[u8], out: &mut Vec<SseEvent>) -> Result<()> {
        while let Some((&first, rest)) = bytes.split_first() {
            if std::mem::take(&mut self.after_cr) && first == b'\n' {
                bytes = rest;
                continue;
            }
            let Some(end) = bytes.iter().position(|&b| b == b'\n' || b == b'\r') else {
                if self.line.len() + bytes.len() > self.limit {
                    return Err(self.too_long("line"));
                }
                self.line.extend_from_slice(bytes);
                return Ok(());
            };
            self.after_cr = bytes[end] == b'\r';
            if self.line.is_empty() {
                self.process_line(&bytes[..end], out)?;
            } else {
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(&bytes[..end]);
                self.process_line(&line, out)?;
                // Keep the buffer for the next line, unless one long line inflated it.
                if line.capacity() <= 64 << 10 {
                    line.clear();
                    self.line = line;
                }
            }
            bytes = &bytes[end + 1..];
        }
        Ok(())
    }

    fn process_line(&mut self, line: &[u8], out: &mut Vec<SseEvent>) -> Result<()> {
        if line.len() > self.limit {
            return Err(self.too_long("line"));
        }
        let line = if std::mem::take(&mut self.at_start) {
            line.strip_prefix(BOM).unwrap_or(line)
        } else {
            line
        };
        if line.is_empty() {
            out.extend(self.take_event());
            return Ok(());
        }
        if line[0] == b':' {
            return Ok(()); // a comment: keep-alives
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &[][..]),
        };
        match name {
            b"data" => {
                let value = String::from_utf8_lossy(value);
                if self.data.len() + value.len() + 1 > self.limit {
                    return Err(self.too_long("event's data"));
                }
                self.data.push_str(&value);
                self.data.push('\n');
            }
            b"event" => self.event = String::from_utf8_lossy(value).into_owned(),
            b"id" if !value.contains(&0) => {
                self.last_id = String::from_utf8_lossy(value).into_owned();
            }
            _ => {}
        }
        Ok(())
    }

    /// The event buffered so far, resetting the buffers as dispatch does.
    fn take_event(&mut self) -> Option<SseEvent> {
        let event = std::mem::take(&mut self.event);
        self.data.pop(); // the `\n` after the last data line, when there is one
        if self.data.is_empty() {
            return None;
        }
        Some(SseEvent {
            event: (!event.is_empty()).then_some(event),
            data: std::mem::take(&mut self.data),
            id: (!self.last_id.is_empty()).then(|| self.last_id.clone()),
        })
    }

    fn too_long(&self, what: &str) -> Error {
        Error::new(
            ErrorKind::Upstream,
            format!("event stream: a {what} is longer than {} bytes", self.limit),
        )
    }

    /// End of stream. Per the spec an event not closed by a blank line is discarded, and
    /// it is never dispatched here either: `Some` is that cut-off event (with an
    /// unterminated last line read as a line), returned only so the caller can tell a
    /// truncated stream from a clean end. `None` after a clean end or an error.
    pub fn finish(mut self) -> Option<SseEvent> {
        if self.failed.is_some() {
            return None;
        }
        let line = std::mem::take(&mut self.line);
        let mut out = Vec::new();
        if !line.is_empty() && self.process_line(&line, &mut out).is_err() {
            return None;
        }
        out.pop().or_else(|| self.take_event())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(bytes: &[u8]) -> Vec<SseEvent> {
        let mut parser = SseParser::new();
        let events = parser.push(bytes).unwrap();
        assert_eq!(parser.finish(), None, "stream should end cleanly");
        events
    }

    fn data(d: &str) -> SseEvent {
        SseEvent {
            data: d.into(),
            ..SseEvent::default()
        }
    }

    /// Every way of cutting `bytes` in two, and byte by byte, gives `parse_all(bytes)`.
    fn assert_split_invariant(bytes: &[u8]) -> Vec<SseEvent> {
        let whole = parse_all(bytes);
        for cut in 0..=bytes.len() {
            let mut parser = SseParser::new();
            let mut events = parser.push(&bytes[..cut]).unwrap();
            events.extend(parser.push(&bytes[cut..]).unwrap());
            assert_eq!(events, whole, "cut at {cut}");
        }
        let mut parser = SseParser::new();
        let mut events = Vec::new();
        for b in bytes {
            parser
                .push_into(std::slice::from_ref(b), &mut events)
                .unwrap();
        }
        assert_eq!(events, whole, "byte by byte");
        whole
    }

    #[test]
    fn sse_line_endings_and_fields() {
        let events = assert_split_invariant(
            b"\xEF\xBB\xBFdata: a\r\n\r\n: keep-alive\n\ndata:b\rdata:  c\r\revent: x\nid: 7\ndata\n\ndata: d\n\n",
        );
        // `data` without a colon is an empty data field: that event has no data, so it is
        // not dispatched and its type does not leak into the next one.
        let d = SseEvent {
            id: Some("7".into()),
            ..data("d")
        };
        assert_eq!(events, [data("a"), data("b\n c"), d]);
    }

    #[test]
    fn sse_event_ids_persist_and_reset() {
        let events = assert_split_invariant(
            b"id: 1\ndata: a\n\ndata: b\n\nid: x\0y\ndata: c\n\nid\ndata: d\n\n",
        );
        let ids: Vec<_> = events.iter().map(|e| e.id.as_deref()).collect();
        assert_eq!(ids, [Some("1"), Some("1"), Some("1"), None]);
    }

    #[test]
    fn sse_empty_data_and_unknown_fields_are_not_events() {
        let events = assert_split_invariant(
            b"event: ping\n\ndata:\n\nretry: 10\nfoo: bar\n\n:comment\n\ndata:\ndata:\n\n",
        );
        // Two empty data lines are one line break of data; a lone one is nothing.
        assert_eq!(events, [data("\n")]);
        // The event type of an undispatched event does not leak into the next.
        assert_eq!(parse_all(b"event: ping\n\ndata: x\n\n"), [data("x")]);
    }

    #[test]
    fn sse_cr_lf_across_pushes_is_one_line_ending() {
        let mut parser = SseParser::new();
        assert_eq!(parser.push(b"data: a\r").unwrap(), []);
        assert_eq!(parser.push(b"\n").unwrap(), []);
        assert_eq!(parser.push(b"\r").unwrap(), [data("a")]);
        assert_eq!(parser.push(b"\ndata: b\r\r").unwrap(), [data("b")]);
    }

    #[test]
    fn sse_utf8_split_anywhere_and_invalid_bytes_replaced() {
        let stream = "data: héllo 世界 🎉\n\ndata: e\u{301}\n\n".as_bytes();
        let events = assert_split_invariant(stream);
        assert_eq!(events, [data("héllo 世界 🎉"), data("e\u{301}")]);
        let events = assert_split_invariant(b"data: a\xFF\xE4\xB8\n\n");
        assert_eq!(events, [data("a\u{FFFD}\u{FFFD}")]);
        // A BOM is skipped only at the very start, even when it arrives byte by byte.
        let mut parser = SseParser::new();
        for b in b"\xEF\xBB\xBFdata: x\n\n\xEF\xBB\xBFdata: y\n\n" {
            let got = parser.push(&[*b]).unwrap();
            assert!(got.is_empty() || got == [data("x")], "{got:?}");
        }
    }

    #[test]
    fn sse_memory_is_bounded() {
        let mut parser = SseParser::with_limit(16);
        assert_eq!(parser.push(b"data: 0123456789").unwrap(), []);
        let e = parser.push(b"abcdef").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Upstream);
        assert!(e.message().contains("longer than 16"), "{e}");
        // Poisoned: the same error from then on.
        assert!(parser.push(b"\n\n").is_err());
        assert_eq!(parser.finish(), None);

        // Many short data lines still add up to one too-large event.
        let mut parser = SseParser::with_limit(16);
        let mut out = Vec::new();
        let e = parser
            .push_into(
                b"data: ok\n\ndata: 12345\ndata: 12345\ndata: 12345\n",
                &mut out,
            )
            .unwrap_err();
        assert!(e.message().contains("data"), "{e}");
        assert_eq!(out, [data("ok")], "events before the error are kept");
    }

    #[test]
    fn sse_finish_reports_a_cut_off_event_without_dispatching_it() {
        let mut parser = SseParser::new();
        assert_eq!(
            parser.push(b"data: a\n\ndata: b\ndata: c").unwrap(),
            [data("a")]
        );
        assert_eq!(parser.finish(), Some(data("b\nc")));
        let mut parser = SseParser::new();
        parser.push(b"data: a\n\n: bye").unwrap();
        assert_eq!(parser.finish(), None);
    }
}
