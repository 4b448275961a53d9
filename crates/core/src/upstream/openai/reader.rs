//! Reading a live event stream: [`ChunkReader`] turns the body's bytes into chunks as they
//! arrive, one read at a time, each read bounded by `request_timeout`. It must never buffer
//! without bound, and every error it yields is counted and masked.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;

use super::credentials::MASKED;
use super::errors::error_chain;
use super::retry::UpstreamStats;
use super::{ERROR_BODY_LIMIT, Ready};
use crate::error::{Error, ErrorKind, Result};
use crate::request::ChatResponse;
use crate::stream::{ChatChunk, SseEvent, SseParser, parse_chunk};

/// What a stream attempt opened.
pub(super) enum Opened {
    /// A 2xx whose body is (presumably) an event stream.
    Events(reqwest::Response),
    /// A 2xx JSON completion from a server that does not stream.
    Answer(ChatResponse),
}

/// Turns an event stream's body into chunks as its bytes arrive, one read at a time.
pub(super) struct ChunkReader {
    pub(super) body: BoxStream<'static, reqwest::Result<Bytes>>,
    pub(super) parser: SseParser,
    /// Events of the last read not yet turned into chunks.
    pub(super) events: VecDeque<SseEvent>,
    /// A parse error that comes after `events`.
    pub(super) parse_error: Option<Error>,
    /// Chunks yielded so far.
    pub(super) chunks: usize,
    /// `[DONE]` or an error was seen: nothing more is read.
    pub(super) finished: bool,
    /// The longest pause between two reads (the client's `request_timeout`).
    pub(super) idle: Duration,
    pub(super) ready: Arc<Ready>,
    pub(super) stats: Arc<UpstreamStats>,
}

impl ChunkReader {
    /// The next chunk; `None` after `[DONE]`; one final `Err` when the stream fails.
    pub(super) async fn next(&mut self) -> Option<Result<ChatChunk>> {
        loop {
            if self.finished {
                return None;
            }
            if let Some(event) = self.events.pop_front() {
                return match parse_chunk(&event.data) {
                    Ok(Some(chunk)) => {
                        self.chunks += 1;
                        Some(Ok(chunk))
                    }
                    Ok(None) => {
                        self.finish();
                        // What follows `[DONE]` is the end of the body: read it in the
                        // background so the connection goes back to the pool, not closed.
                        let body = std::mem::replace(
                            &mut self.body,
                            futures_util::stream::empty().boxed(),
                        );
                        tokio::spawn(drain(body, self.idle));
                        None
                    }
                    Err(e) => {
                        let e = self.chunk_error(&event.data, e);
                        Some(Err(self.fail(e)))
                    }
                };
            }
            if let Some(e) = self.parse_error.take() {
                return Some(Err(self.fail(e)));
            }
            let read = match tokio::time::timeout(self.idle, self.body.next()).await {
                Ok(read) => read,
                Err(_) => {
                    let why = format!(
                        "the stream stalled after {} chunks: no data within request_timeout {:?}",
                        self.chunks, self.idle
                    );
                    return Some(Err(self.fail(self.error(ErrorKind::Timeout, why))));
                }
            };
            match read {
                Some(Ok(bytes)) => {
                    let mut events = Vec::new();
                    if let Err(e) = self.parser.push_into(&bytes, &mut events) {
                        self.parse_error = Some(e);
                    }
                    self.events.extend(events);
                }
                Some(Err(e)) => {
                    let why = format!(
                        "the stream was cut off after {} chunks: {}",
                        self.chunks,
                        error_chain(&e.without_url())
                    );
                    return Some(Err(self.fail(self.error(ErrorKind::Connect, why))));
                }
                None => {
                    let why = format!(
                        "the stream was cut off after {} chunks: the body ended before [DONE]",
                        self.chunks
                    );
                    return Some(Err(self.fail(self.error(ErrorKind::Upstream, why))));
                }
            }
        }
    }

    fn error(&self, kind: ErrorKind, why: String) -> Error {
        Error::new(kind, format!("POST {}: {why}", self.ready.shown))
    }

    /// `parse_chunk` quotes only the start of a bad event, which may cut a credential that
    /// the mask then cannot recognise: parse the masked event again for the message.
    fn chunk_error(&self, data: &str, e: Error) -> Error {
        let mask = &self.ready.mask;
        if !mask.reveals(data) {
            return e;
        }
        match parse_chunk(&mask.apply(data)) {
            Err(masked) => masked,
            // Masking made it a chunk: quote nothing.
            Ok(_) => Error::new(
                e.kind(),
                format!(
                    "stream event is not a chat.completion.chunk (not quoted: it shows {MASKED})"
                ),
            ),
        }
    }

    /// End the stream with `e`, counted and masked.
    fn fail(&mut self, e: Error) -> Error {
        self.finish();
        self.stats.ended(&self.stats.errors);
        self.ready.mask_error(e)
    }

    /// Stop reading, and let the connection go now rather than when the stream is dropped.
    fn finish(&mut self) {
        self.finished = true;
        self.events.clear();
        self.parse_error = None;
        self.body = futures_util::stream::empty().boxed();
    }
}

/// Read what is left of a finished stream's body, a little and not for long.
async fn drain(mut body: BoxStream<'static, reqwest::Result<Bytes>>, idle: Duration) {
    let mut left = ERROR_BODY_LIMIT;
    while let Ok(Some(Ok(bytes))) = tokio::time::timeout(idle, body.next()).await {
        left = match left.checked_sub(bytes.len()) {
            Some(left) => left,
            None => return,
        };
    }
}
