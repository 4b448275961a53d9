//! When [`OpenAiCompatible`] tries a failed call again ([`RetryPolicy`], `Retry-After`),
//! and what it counts while doing so ([`UpstreamStats`] and its `metrics` series). A retry
//! must never undercut the delay the upstream asked for.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use crate::tiered::stats::Published;
use reqwest::StatusCode;
use reqwest::header::{self, HeaderMap};

use super::OpenAiCompatible;
use crate::error::{Error, Result};

/// When and how often [`OpenAiCompatible`] tries a failed call again.
///
/// Connect errors, timeouts and HTTP 429, 500, 502, 503 and 504 are retried; every other
/// status (400, 401, 404, ...) and a 2xx body that is not a chat completion are not.
/// Between attempts it waits a "full jitter" backoff, a random delay in
/// `0..=min(max_delay, base_delay * 2^n)` for the n-th retry (n from 0). When the upstream
/// sends `Retry-After` (delta-seconds or an HTTP date; also `retry-after-ms`), that delay
/// replaces the backoff and is never undercut; if it is longer than `max_retry_after` the
/// call gives up at once rather than retry sooner than asked, and the error carries the
/// delay ([`Error::retry_after`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub(super) max_attempts: u32,
    base_delay: Duration,
    max_delay: Duration,
    max_retry_after: Duration,
}

impl Default for RetryPolicy {
    /// 3 attempts, 200 ms base delay, 10 s max delay, `Retry-After` honoured up to 30 s.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
            max_retry_after: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The default policy (see [`RetryPolicy::default`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// One attempt, no retries.
    pub fn none() -> Self {
        Self::default().max_attempts(1)
    }

    crate::tiered::setters! {
        /// Attempts in all, the first included (default 3; must be at least 1).
        #[must_use]
        pub fn max_attempts(n: u32) { max_attempts = n }

        /// The backoff bound of the first retry, doubled for each later one (default 200 ms).
        #[must_use]
        pub fn base_delay(d: Duration) { base_delay = d }

        /// The largest backoff bound (default 10 s).
        #[must_use]
        pub fn max_delay(d: Duration) { max_delay = d }

        /// The longest `Retry-After` the client waits for; a longer one ends the call with
        /// the error (default 30 s).
        #[must_use]
        pub fn max_retry_after(d: Duration) { max_retry_after = d }
    }

    /// The jittered delay before retry `n` (0 for the first retry).
    fn backoff(&self, n: u32) -> Duration {
        let bound = self
            .base_delay
            .saturating_mul(2u32.saturating_pow(n))
            .min(self.max_delay);
        let nanos = u64::try_from(bound.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rand::random_range(0..=nanos))
    }
}

/// Counters of one [`OpenAiCompatible`] client; take a handle with
/// [`OpenAiCompatible::stats`] before handing the client to the cache.
#[derive(Debug)]
pub struct UpstreamStats {
    pub(super) calls: AtomicU64,
    // These three publish `ai_upstream_requests_total{outcome}` (`retried`, `error`, `ok`)
    // from their counts when a call ends.
    pub(super) retries: Published,
    pub(super) errors: Published,
    ok: Published,
}

impl Default for UpstreamStats {
    fn default() -> Self {
        crate::upstream::describe_series();
        let outcome = |o: &'static str| {
            Published::new(metrics::counter!(crate::upstream::UPSTREAM_REQUESTS, "outcome" => o))
        };
        UpstreamStats {
            calls: AtomicU64::new(0),
            retries: outcome("retried"),
            errors: outcome("error"),
            ok: outcome("ok"),
        }
    }
}

impl UpstreamStats {
    /// HTTP requests sent, retries included.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// HTTP requests that were retries of a failed attempt.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// `chat` and `chat_stream` calls that ended in an error, after all their attempts
    /// (for a stream, also one cut off or failing after it started).
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Count a call's end in `outcome` (`ok` or `errors`), and publish the series.
    pub(super) fn ended(&self, outcome: &AtomicU64) {
        outcome.fetch_add(1, Ordering::Relaxed);
        for series in [&self.retries, &self.errors, &self.ok] {
            series.publish();
        }
    }
}

impl OpenAiCompatible {
    /// Run `attempt` under the retry policy, counting calls, retries and errors.
    pub(super) async fn with_retries<T, F, Fut>(&self, mut attempt: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let policy = self.retry;
        let mut n: u32 = 1;
        loop {
            self.stats.calls.fetch_add(1, Ordering::Relaxed);
            if n > 1 {
                self.stats.retries.fetch_add(1, Ordering::Relaxed);
            }
            let failure = match attempt().await {
                Ok(answer) => {
                    self.stats.ended(&self.stats.ok);
                    tracing::Span::current().record("upstream_attempts", n);
                    return Ok(answer);
                }
                Err(failure) => failure,
            };
            let delay = match failure.retry_after {
                _ if !failure.retryable || n >= policy.max_attempts => None,
                Some(after) if after > policy.max_retry_after => None,
                Some(after) => Some(after),
                None => Some(policy.backoff(n - 1)),
            };
            let Some(delay) = delay else {
                self.stats.ended(&self.stats.errors);
                tracing::Span::current().record("upstream_attempts", n);
                return Err(failure.error);
            };
            tracing::debug!(
                attempt = n,
                delay_ms = delay.as_millis() as u64,
                error = %failure.error,
                "upstream call failed; retrying"
            );
            tokio::time::sleep(delay).await;
            n += 1;
        }
    }
}

/// One failed attempt, and whether another may follow.
pub(super) struct Failure {
    pub(super) error: Error,
    pub(super) retryable: bool,
    pub(super) retry_after: Option<Duration>,
}

impl Failure {
    pub(super) fn fatal(error: Error) -> Self {
        Failure {
            error,
            retryable: false,
            retry_after: None,
        }
    }
}

pub(super) fn retryable_status(status: StatusCode) -> bool {
    matches!(status.as_u16(), 429 | 500 | 502 | 503 | 504)
}

/// The delay the upstream asked for: `retry-after-ms`, else `Retry-After` as
/// delta-seconds or an HTTP date (a date in the past means "now").
pub(super) fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let text = |name: &str| headers.get(name)?.to_str().ok().map(str::trim);
    if let Some(d) = text("retry-after-ms")
        .and_then(|v| v.parse::<f64>().ok())
        .and_then(|ms| Duration::try_from_secs_f64(ms / 1000.0).ok())
    {
        return Some(d);
    }
    let value = text(header::RETRY_AFTER.as_str())?;
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    if let Some(d) = value
        .parse::<f64>()
        .ok()
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
    {
        return Some(d);
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn backoff_is_full_jitter_within_the_exponential_bound() {
        let p = RetryPolicy::default()
            .base_delay(Duration::from_millis(100))
            .max_delay(Duration::from_millis(350));
        for _ in 0..200 {
            assert!(p.backoff(0) <= Duration::from_millis(100));
            assert!(p.backoff(1) <= Duration::from_millis(200));
            assert!(p.backoff(2) <= Duration::from_millis(350));
            assert!(p.backoff(40) <= Duration::from_millis(350));
        }
        // Full jitter: the delays spread over the whole range, not just near the top.
        let low = (0..200)
            .filter(|_| p.backoff(2) < Duration::from_millis(100))
            .count();
        assert!(low > 0, "full jitter should sometimes pick short delays");
        assert_eq!(
            RetryPolicy::default().base_delay(Duration::ZERO).backoff(3),
            Duration::ZERO
        );
    }

    #[test]
    fn retry_after_reads_seconds_dates_and_milliseconds() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let headers = |pairs: &[(&'static str, String)]| {
            let mut h = HeaderMap::new();
            for (n, v) in pairs {
                h.insert(*n, HeaderValue::from_str(v).unwrap());
            }
            h
        };
        let secs = |v: &str| retry_after(&headers(&[("retry-after", v.to_string())]), now);
        assert_eq!(secs("1"), Some(Duration::from_secs(1)));
        assert_eq!(secs(" 120 "), Some(Duration::from_secs(120)));
        assert_eq!(secs("1.5"), Some(Duration::from_millis(1500)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(7));
        assert_eq!(secs(&later), Some(Duration::from_secs(7)));
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(7));
        assert_eq!(secs(&earlier), Some(Duration::ZERO));
        assert_eq!(secs("soon"), None);
        assert_eq!(secs("-3"), None);
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
        let ms = headers(&[
            ("retry-after-ms", "250".to_string()),
            ("retry-after", "9".to_string()),
        ]);
        assert_eq!(retry_after(&ms, now), Some(Duration::from_millis(250)));
    }
}
