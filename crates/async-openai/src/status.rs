//! The cache status where async-openai's typed API cannot show it. `client.chat().create(..)`
//! returns the parsed answer and drops the response headers, so `x-llm-cache` and `age`
//! never reach the caller's code. Two supported ways give them back:
//!
//! - [`observe`]: run a future (one or more async-openai calls) and get, beside its output,
//!   the [`CacheOutcome`] of every request the layer answered while it ran, in order;
//! - [`AsyncOpenAiLayerBuilder::on_outcome`](crate::AsyncOpenAiLayerBuilder::on_outcome): a
//!   hook called with each outcome (for logs or metrics of your own).
//!
//! Both see what the `x-llm-cache` and `age` headers say, for every request the layer
//! answered: hits, misses, coalesced waits, `partial` embeddings, `bypass`. Requests the
//! layer passes through untouched (other methods and paths, uncacheable bodies) and
//! requests that fail before an answer have no outcome.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use llm_cache_core::CacheStatus;
use llm_cache_core::integrations::headers::HEADER_STATUS;
use llm_cache_core::tiered::sync::lock;

/// Where one answer of the layer came from: `x-llm-cache` and `age` as a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheOutcome {
    /// Where the answer came from (`HitL1`, `HitL2`, `Miss`, `Coalesced`, `Partial`...).
    pub status: CacheStatus,
    /// How long ago the answer was stored (zero for a miss).
    pub age: Duration,
    /// The answer is a stream of server-sent events (a live or replayed stream).
    pub streamed: bool,
}

impl CacheOutcome {
    /// The outcome an answer's headers state, when they carry `x-llm-cache`.
    pub(crate) fn of(response: &reqwest::Response) -> Option<CacheOutcome> {
        let headers = response.headers();
        let label = headers.get(HEADER_STATUS)?.to_str().ok()?;
        let status = CacheStatus::ALL
            .iter()
            .copied()
            .find(|s| s.header_value() == label)?;
        let age = headers
            .get(reqwest::header::AGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map_or(Duration::ZERO, Duration::from_secs);
        let streamed = headers
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        Some(CacheOutcome {
            status,
            age,
            streamed,
        })
    }
}

/// The outcomes of the requests the layer answered inside one [`observe`], in the order
/// their answers were made.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    outcomes: Vec<CacheOutcome>,
}

impl Observed {
    /// Every outcome, oldest first.
    pub fn outcomes(&self) -> &[CacheOutcome] {
        &self.outcomes
    }

    /// The outcome of the last answer (the one to look at after a single call).
    pub fn last(&self) -> Option<CacheOutcome> {
        self.outcomes.last().copied()
    }

    /// The status of the last answer.
    pub fn status(&self) -> Option<CacheStatus> {
        self.last().map(|o| o.status)
    }
}

tokio::task_local! {
    static OBSERVED: Arc<Mutex<Vec<CacheOutcome>>>;
}

/// Run `future` and return its output with the [`CacheOutcome`] of every request the
/// layer answered while it ran.
///
/// ```no_run
/// # async fn run(client: async_openai::Client<async_openai::config::OpenAIConfig>,
/// #              request: async_openai::types::chat::CreateChatCompletionRequest)
/// #              -> Result<(), Box<dyn std::error::Error>> {
/// let (answer, seen) = llm_cache_async_openai::observe(client.chat().create(request)).await;
/// let answer = answer?;
/// println!("{:?} ({:?} old)", seen.status(), seen.last().map(|o| o.age));
/// # Ok(()) }
/// ```
///
/// The outcomes are those of requests made by `future` itself, in its own task: a call
/// inside a task that `future` spawns is not seen (observe inside that task instead).
/// Observations nest: an inner `observe` sees its own calls, the outer one does not see
/// them again.
pub async fn observe<F: Future>(future: F) -> (F::Output, Observed) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let output = OBSERVED.scope(Arc::clone(&seen), future).await;
    let outcomes = std::mem::take(&mut *lock(&seen));
    (output, Observed { outcomes })
}

/// The hook of [`AsyncOpenAiLayerBuilder::on_outcome`](crate::AsyncOpenAiLayerBuilder::on_outcome).
pub(crate) type Hook = Arc<dyn Fn(&CacheOutcome) + Send + Sync>;

/// Hand `response`'s outcome to the enclosing [`observe`] and to the hook, if any.
pub(crate) fn report(hook: Option<&Hook>, response: &reqwest::Response) {
    let Some(outcome) = CacheOutcome::of(response) else {
        return;
    };
    let _ = OBSERVED.try_with(|seen| lock(seen).push(outcome));
    if let Some(hook) = hook {
        hook(&outcome);
    }
}
