//! `POST {base}/<tail>` with a body sent as it is, for the endpoints whose answers are
//! stored whole (`/responses`, `/completions`): the same client, headers, retries, error
//! bodies and masking as chat; the 2xx answer's body handed back as it arrives, each read
//! of a stream bounded by `request_timeout`. A non-2xx is the same upstream error chat
//! gives (the provider's status, message, `type`, `code`, `param` and `Retry-After`).

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use reqwest::Url;
use reqwest::header::{self, HeaderValue};

use super::errors::error_chain;
use super::retry::Failure;
use super::{OpenAiCompatible, Ready};
use crate::error::{Error, ErrorKind, Result};

/// A 2xx answer of [`OpenAiCompatible::post_raw`].
pub struct RawAnswer {
    /// The answer's `Content-Type`, when it named one.
    pub content_type: Option<String>,
    /// The body as it arrives; a cut or stalled body ends it with an error.
    pub body: BoxStream<'static, Result<Bytes>>,
}

impl std::fmt::Debug for RawAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawAnswer")
            .field("content_type", &self.content_type)
            .finish_non_exhaustive()
    }
}

/// The endpoint `tail` (`responses`, `completions`) beside the chat endpoint `chat`, with
/// the same query (an `api-version`).
pub(super) fn endpoint(chat: &Url, tail: &str) -> Url {
    let mut url = chat.clone();
    if let Ok(mut segments) = url.path_segments_mut() {
        segments.pop().pop().extend(tail.split('/'));
    }
    url
}

impl OpenAiCompatible {
    /// POST `body` (JSON, sent as it is) to `{base}/{tail}`, asking for an event stream
    /// when `stream`; retried as chat calls are, up to the answer's headers.
    ///
    /// # Errors
    ///
    /// The upstream's non-2xx as an `Upstream` error with its status; `Connect` and
    /// `Timeout` as for chat; a bad configuration as `Config`.
    #[doc(hidden)]
    pub async fn post_raw(&self, tail: &str, body: Bytes, stream: bool) -> Result<RawAnswer> {
        let ready = std::sync::Arc::clone(self.ready()?);
        let url = endpoint(&ready.endpoint, tail);
        let response = self
            .with_retries(|| self.attempt_raw(&ready, &url, body.clone(), stream))
            .await?;
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let idle = self.request_timeout;
        let shown = ready.shown.clone();
        let cut = move |why: String| {
            let message = ready.scrub(&format!("POST {shown}: the answer was cut off: {why}"));
            Error::new(ErrorKind::Connect, message)
        };
        let reads = futures_util::stream::unfold(
            (response.bytes_stream().boxed(), false),
            move |(mut body, done)| {
                let cut = cut.clone();
                async move {
                    if done {
                        return None;
                    }
                    // A stream has no overall deadline: each pause is bounded instead.
                    let next = if stream {
                        match tokio::time::timeout(idle, body.next()).await {
                            Ok(next) => next,
                            Err(_) => {
                                let why = format!("no data within request_timeout {idle:?}");
                                return Some((Err(cut(why)), (body, true)));
                            }
                        }
                    } else {
                        body.next().await
                    };
                    match next? {
                        Ok(part) => Some((Ok(part), (body, false))),
                        Err(e) => Some((Err(cut(error_chain(&e.without_url()))), (body, true))),
                    }
                }
            },
        );
        Ok(RawAnswer {
            content_type,
            body: reads.boxed(),
        })
    }

    pub(super) async fn attempt_raw(
        &self,
        ready: &Ready,
        url: &Url,
        body: Bytes,
        stream: bool,
    ) -> Result<reqwest::Response, Failure> {
        let accept = stream.then(|| HeaderValue::from_static("text/event-stream"));
        // A stream's whole body may take longer than `request_timeout`: only its headers
        // are bounded here (and each read above).
        let timeout = if stream {
            Duration::MAX
        } else {
            self.request_timeout
        };
        let send = ready
            .post_to(url, accept)
            .timeout(timeout)
            .body(body)
            .send();
        self.headers_in_time(ready, send).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_endpoints_sit_beside_chat_and_keep_the_query() {
        let e = |chat: &str, tail| endpoint(&Url::parse(chat).unwrap(), tail).to_string();
        assert_eq!(
            e("https://h/v1/chat/completions", "responses"),
            "https://h/v1/responses"
        );
        assert_eq!(
            e("https://h/d/chat/completions?api-version=1", "completions"),
            "https://h/d/completions?api-version=1"
        );
    }
}
