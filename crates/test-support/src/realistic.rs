//! The mock upstream's realistic mode ([`MockUpstream::start_realistic`]), for the demo:
//! answers that take as long as a model's and are as long as one's, all fixed by the prompt
//! (FNV-1a of the last user message), so a run is repeatable and the caller can tell in
//! advance what each request gets ([`Realistic::reply`]).
//!
//! A chat answer takes a latency in the configured range and has 40 to 399 completion
//! tokens (capped by `max_tokens`); longer answers take longer. Streamed, it sends the role
//! chunk and the first piece after [`FIRST_CHUNK_SHARE`] of the latency, the other pieces of
//! [`WORDS_PER_CHUNK`] words evenly over the rest, the finish chunk at the latency, then the
//! usage chunk when `stream_options.include_usage` is set. `/v1/embeddings` answers the
//! default vectors after a third of the minimum latency. Scripted replies, faults, gates and
//! `set_delay` work as in the default mode.
//!
//! [`MockUpstream::start_realistic`]: crate::upstream::MockUpstream::start_realistic

use std::sync::Arc;
use std::time::Duration;

use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};

use crate::embeddings::tokens_of;
use crate::fnv1a;
use crate::upstream::{self as mock, Ending, Shared};

/// Share of the latency before the first chunk of a streamed answer.
pub const FIRST_CHUNK_SHARE: f64 = 0.3;
/// Words per content chunk of a streamed answer (a real model sends about one token).
pub const WORDS_PER_CHUNK: usize = 3;

/// The realistic mode's latency range; see the module docs.
#[derive(Debug, Clone, Copy)]
pub struct Realistic {
    min: Duration,
    max: Duration,
}

/// What the realistic mode answers to one chat request, streamed or not.
#[derive(Debug, Clone, PartialEq)]
pub struct RealisticReply {
    /// The answer's text.
    pub text: String,
    /// Tokens charged for the messages.
    pub prompt_tokens: u64,
    /// Tokens charged for the answer.
    pub completion_tokens: u64,
    /// How long the whole answer takes (streamed: until its finish chunk).
    pub latency: Duration,
}

impl Realistic {
    /// Answers that take `min` to `max` each. Panics when `min > max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        assert!(min <= max, "Realistic::new: min {min:?} > max {max:?}");
        Realistic { min, max }
    }

    /// What the mock answers to `request` (a chat request as the client sends it).
    pub fn reply(&self, request: &impl Serialize) -> RealisticReply {
        self.reply_to(&mock::as_sent(request))
    }

    /// How long an `/embeddings` call takes.
    pub(crate) fn embeddings_latency(&self) -> Duration {
        self.min / 3
    }

    fn reply_to(&self, request: &Value) -> RealisticReply {
        let prompt = mock::last_user_text(request);
        let h = fnv1a(prompt.as_bytes());
        let max_tokens = request["max_tokens"].as_u64().unwrap_or(u64::MAX).max(1);
        // Longer answers take longer, as they do from a real model.
        let completion_tokens = (40 + h % 360).min(max_tokens);
        let latency = self.min + (self.max - self.min) * (h % 360) as u32 / 359;
        let messages = request["messages"].as_array().map(Vec::as_slice);
        let prompt_tokens = 3 + messages
            .unwrap_or_default()
            .iter()
            .map(|m| 4 + tokens_of(&json!(mock::message_text(m))))
            .sum::<u64>();
        RealisticReply {
            text: answer_text(&prompt, h, completion_tokens),
            prompt_tokens,
            completion_tokens,
            latency,
        }
    }

    /// The mock's answer to `request`: whole after its latency, or streamed over it.
    pub(crate) async fn answer(
        &self,
        shared: &Arc<Shared>,
        request: &Value,
        call: usize,
    ) -> Response {
        let reply = self.reply_to(request);
        if !mock::streams(request) {
            tokio::time::sleep(reply.latency).await;
            let answer = mock::completion(request, call, &reply.text, reply.usage());
            return axum::Json(answer).into_response();
        }
        let pieces = reply.pieces();
        let due = reply.schedule(pieces.len(), mock::include_usage(request));
        let chunks = mock::text_chunks(request, call, pieces, reply.usage());
        mock::sse_response(shared, chunks, Ending::Done, due)
    }
}

impl RealisticReply {
    /// The `usage` object of the answer.
    pub fn usage(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens
        })
    }

    /// The content pieces of the stream: [`WORDS_PER_CHUNK`] words each.
    fn pieces(&self) -> Vec<String> {
        let words: Vec<&str> = self.text.split_inclusive(' ').collect();
        words
            .chunks(WORDS_PER_CHUNK)
            .map(<[&str]>::concat)
            .collect()
    }

    /// When each chunk of the stream is due after the answer starts: the role chunk and the
    /// first piece at [`FIRST_CHUNK_SHARE`] of the latency, the other `pieces - 1` evenly
    /// over the rest, the finish chunk (and the usage chunk, when `usage`) at the latency.
    fn schedule(&self, pieces: usize, usage: bool) -> Vec<Duration> {
        let first = self.latency.mul_f64(FIRST_CHUNK_SHARE);
        let streaming = self.latency - first;
        let n = pieces.max(1) as u32;
        let mut due = vec![first];
        due.extend((0..pieces as u32).map(|i| first + streaming * i / n));
        due.push(self.latency);
        if usage {
            due.push(self.latency);
        }
        due
    }
}

/// An answer about `tokens` tokens long, its words drawn from `h`.
fn answer_text(prompt: &str, h: u64, tokens: u64) -> String {
    const WORDS: &[&str] = &[
        "your", "order", "can", "be", "returned", "within", "thirty", "days", "from", "the",
        "account", "page", "and", "a", "human", "agent", "will", "follow", "up", "soon",
    ];
    let mut text = format!("(mock answer to \"{prompt}\")");
    let target = usize::try_from(tokens * 4).unwrap_or(usize::MAX);
    let mut i = h as usize;
    while text.len() < target {
        text.push(' ');
        text.push_str(WORDS[i % WORDS.len()]);
        i = i.wrapping_mul(31).wrapping_add(7);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_is_fixed_by_its_prompt_and_streams_over_its_latency() {
        let mode = Realistic::new(Duration::from_millis(300), Duration::from_millis(1500));
        let mut latencies = std::collections::HashSet::new();
        for i in 0..50 {
            let r = json!({"messages": [{"role": "user", "content": format!("question {i}")}]});
            let reply = mode.reply_to(&r);
            assert_eq!(reply, mode.reply_to(&r));
            assert!((mode.min..=mode.max).contains(&reply.latency), "{reply:?}");
            assert!((40..400).contains(&reply.completion_tokens), "{reply:?}");
            assert!(
                reply.text.len() as u64 >= 4 * reply.completion_tokens,
                "{reply:?}"
            );
            latencies.insert(reply.latency);
            let pieces = reply.pieces();
            assert_eq!(pieces.concat(), reply.text);
            // Role chunk, pieces, finish chunk, usage chunk.
            let due = reply.schedule(pieces.len(), true);
            assert_eq!(due.len(), pieces.len() + 3);
            assert_eq!(due[0], reply.latency.mul_f64(FIRST_CHUNK_SHARE));
            assert!(due.windows(2).all(|w| w[0] <= w[1]), "{due:?}");
            assert_eq!(due.last(), Some(&reply.latency));
        }
        assert!(
            latencies.len() > 10,
            "latencies vary by prompt: {latencies:?}"
        );
        let capped = json!({"max_tokens": 5, "messages": [{"role": "user", "content": "q"}]});
        assert_eq!(mode.reply_to(&capped).completion_tokens, 5);
    }
}
