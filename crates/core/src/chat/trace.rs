//! The span of one `chat` / `chat_stream` call. DEBUG, so a subscriber at INFO pays one
//! callsite check per request and nothing is formatted. It carries the short key, the model,
//! status, tier and latency; it must never carry the prompt (nothing in this crate logs a
//! prompt or an API key at INFO or above).

use std::time::Instant;

use super::{CacheControl, LlmCache, Route};
use crate::CacheStatus;
use crate::error::Result;
use crate::request::ChatRequest;
use crate::tiered::digest::Digest;
use crate::tiered::stats::ShortKey;

/// The span of one `chat` / `chat_stream` call; disabled unless DEBUG is on for this crate.
pub(crate) fn request_span(stream: bool, model: &str) -> tracing::Span {
    use tracing::field::Empty;
    if stream {
        tracing::debug_span!(
            "llm_cache.chat_stream",
            key = Empty,
            model,
            status = Empty,
            tier = Empty,
            latency_us = Empty
        )
    } else {
        tracing::debug_span!(
            "llm_cache.chat",
            key = Empty,
            model,
            status = Empty,
            tier = Empty,
            latency_us = Empty
        )
    }
}

/// `answer`, the answer of `request` on `route`, inside the request's span when DEBUG is on
/// for this crate (`stream`: of a `chat_stream` call), its outcome recorded there.
pub(crate) async fn traced<T>(
    cache: &LlmCache,
    stream: bool,
    request: &ChatRequest,
    control: &CacheControl,
    route: &Route,
    answer: impl Future<Output = Result<T>>,
    status: impl FnOnce(&T) -> CacheStatus,
) -> Result<T> {
    let span = request_span(stream, &request.model);
    if span.is_disabled() {
        return answer.await;
    }
    let traced = Traced::start(&span, cache.route_digest(request, control, route));
    let out = tracing::Instrument::instrument(answer, span.clone()).await;
    traced.finish(out.as_ref().map(status));
    out
}

/// Fills a request span's fields once the answer is known.
pub(crate) struct Traced<'a> {
    span: &'a tracing::Span,
    started: Instant,
}

impl<'a> Traced<'a> {
    pub(crate) fn start(span: &'a tracing::Span, digest: Digest) -> Self {
        span.record("key", tracing::field::display(ShortKey(digest)));
        Traced {
            span,
            started: Instant::now(),
        }
    }

    pub(crate) fn finish(self, outcome: Result<CacheStatus, &crate::error::Error>) {
        let (status, tier) = match outcome {
            Ok(CacheStatus::HitL1) => ("hit", "l1"),
            Ok(CacheStatus::HitL2) => ("hit", "l2"),
            Ok(CacheStatus::Coalesced) => ("coalesced", "flight"),
            Ok(CacheStatus::Miss) => ("miss", "upstream"),
            Ok(CacheStatus::Bypass) => ("bypass", "upstream"),
            Ok(CacheStatus::Partial) => ("partial", "upstream"),
            Ok(CacheStatus::HitSemantic) => ("hit", "semantic"),
            Err(_) => ("error", "none"),
        };
        let micros = u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.span.record("status", status);
        self.span.record("tier", tier);
        self.span.record("latency_us", micros);
        match outcome {
            // The kind only: an upstream's error text may quote the request.
            Err(e) => tracing::debug!(parent: self.span, error_kind = ?e.kind(), "request failed"),
            Ok(_) => tracing::debug!(parent: self.span, "answered"),
        }
    }
}
