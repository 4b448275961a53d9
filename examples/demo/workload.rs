//! The requests the demo sends: Zipf-popular support questions and bursts of identical
//! concurrent ones, the same for the same seed.

use std::sync::Arc;

use llm_cache::{ChatMessage, ChatRequest};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::args::Args;

/// A share of the workload's jobs that are bursts of identical concurrent requests.
pub(crate) const BURST_PROBABILITY: f64 = 0.02;
/// Copies of one prompt in a burst (never more than the concurrency).
pub(crate) const BURST_COPIES: std::ops::RangeInclusive<usize> = 5..=20;
/// Cap on the answer length the demo asks for (keeps a real upstream cheap).
pub(crate) const MAX_TOKENS: u64 = 400;

pub(crate) const SYSTEM_PROMPT: &str = "You are the support assistant of an online bookshop. Answer in \
at most three sentences, in plain language, without markdown. If the question is about an \
order, remind the customer that order details are in their account page. Never invent \
policies: when unsure, say that a human agent will follow up within one business day. Be \
friendly but brief; customers read these answers on their phones.";

pub(crate) const QUESTIONS: &[&str] = &[
    "How do I return",
    "What is the shipping time for",
    "Can I get a refund for",
    "Is there a discount on",
    "How do I track",
    "Can I change the delivery address of",
    "Why was I charged twice for",
    "Do you ship internationally",
    "Can I gift-wrap",
    "What happens if I cancel",
];

pub(crate) const SUBJECTS: &[&str] = &[
    "a damaged paperback",
    "an e-book bundle",
    "a pre-ordered hardcover",
    "a box set",
    "a signed first edition",
    "a used textbook",
    "an audiobook subscription",
    "a gift card",
    "a children's picture book",
    "a bulk school order",
    "a magazine subscription",
    "a rare map",
    "a cookbook",
    "a comic series",
    "a language course",
    "a calendar",
    "a puzzle book",
    "a travel guide",
    "a poetry collection",
    "a graphic novel",
];

/// Draws prompt ranks with probability proportional to `1 / (rank + 1)^s`.
pub(crate) struct Zipf {
    pub(crate) cumulative: Vec<f64>,
}

impl Zipf {
    pub(crate) fn new(n: usize, s: f64) -> Self {
        let mut total = 0.0;
        let cumulative = (1..=n)
            .map(|k| {
                total += (k as f64).powf(-s);
                total
            })
            .collect();
        Zipf { cumulative }
    }

    pub(crate) fn sample(&self, rng: &mut impl Rng) -> usize {
        let total = *self.cumulative.last().expect("at least one prompt");
        let u = rng.random::<f64>() * total;
        // The first rank whose cumulative weight exceeds u.
        self.cumulative
            .partition_point(|&c| c <= u)
            .min(self.cumulative.len() - 1)
    }
}

/// One unit of the workload: `copies` identical requests for prompt `prompt`, sent at once.
pub(crate) struct Job {
    pub(crate) prompt: usize,
    pub(crate) copies: usize,
}

pub(crate) struct Workload {
    pub(crate) requests: Vec<Arc<ChatRequest>>,
    pub(crate) jobs: Vec<Job>,
    pub(crate) bursts: usize,
}

pub(crate) fn prompt_text(i: usize) -> String {
    let q = QUESTIONS[i % QUESTIONS.len()];
    let s = SUBJECTS[(i / QUESTIONS.len()) % SUBJECTS.len()];
    let round = i / (QUESTIONS.len() * SUBJECTS.len());
    if round == 0 {
        format!("{q} {s}?")
    } else {
        format!("{q} {s} (order group {round})?")
    }
}

pub(crate) fn workload(args: &Args) -> Workload {
    let requests = (0..args.distinct)
        .map(|i| {
            let mut request = ChatRequest::new(args.model.clone())
                .message(ChatMessage::system(SYSTEM_PROMPT))
                .message(ChatMessage::user(prompt_text(i)))
                .temperature(0.0)
                .param("max_tokens", MAX_TOKENS);
            if args.stream {
                // Transport fields: not in the key, so streamed and non-streamed requests
                // share their answers. The usage chunk prices each answer.
                request.stream = Some(true);
                request.stream_options = Some(json!({"include_usage": true}));
            }
            Arc::new(request)
        })
        .collect();
    let zipf = Zipf::new(args.distinct, args.zipf);
    let mut rng = StdRng::seed_from_u64(args.seed);
    let (mut jobs, mut sent, mut bursts) = (Vec::new(), 0, 0);
    while sent < args.requests {
        let left = args.requests - sent;
        let job = if rng.random_bool(BURST_PROBABILITY) {
            // A burst is something suddenly hot: any prompt, not only the popular ones.
            bursts += 1;
            let copies = rng.random_range(BURST_COPIES);
            Job {
                prompt: rng.random_range(0..args.distinct),
                copies: copies.min(args.concurrency).min(left),
            }
        } else {
            Job {
                prompt: zipf.sample(&mut rng),
                copies: 1,
            }
        };
        sent += job.copies;
        jobs.push(job);
    }
    Workload {
        requests,
        jobs,
        bursts,
    }
}
