//! `l1_max_bytes` bounds the process's memory, not only a count of bytes: an `LlmCache`
//! filled far past its bound grows the process by at most 1.2 times the bound, for answers
//! from about 70 bytes to 50 KB, and in OpenAI's own shape (whose extra fields each cost a
//! map node in memory).
//!
//! Each fill runs in a child process of its own (this test binary again, running only
//! `fill_child`), so that nothing else allocates beside it and each starts from a fresh
//! heap. The child reports its growth; the parent checks it. Memory is what the kernel says
//! the process holds (resident set, and its peak), with the allocator as a user gets it
//! (read from /proc: Linux only).

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use llm_cache::{BoxFuture, ChatMessage, ChatRequest, ChatResponse, LlmCache, Result, Upstream};
use serde_json::json;

const BOUND: u64 = 16 << 20;
/// Answers go in until L1 is full, then this many times as many in all: most are evicted.
const FILL: u64 = 3;
const FILL_ENV: &str = "LLM_CACHE_L1_MEMORY_FILL";
/// One caller: with several, how much the allocator keeps but cannot reuse depends on how
/// the threads interleave (3 to 15% of the bound, now and then a third), which makes the
/// check a lottery on a loaded machine; the weights allow for 1/16.
const CALLERS: u64 = 1;

/// The answers of one fill.
#[derive(Clone, Copy, Debug)]
enum Shape {
    /// Only a short text: about 70 bytes of JSON.
    Tiny,
    /// The fields a provider sends, and `text_len` bytes of text.
    Plain { text_len: usize },
    /// OpenAI's full shape: `refusal`, `annotations`, `logprobs`, token details,
    /// `service_tier`: five more maps than `Plain`.
    OpenAi { text_len: usize },
}

const SHAPES: [(&str, Shape); 4] = [
    ("tiny", Shape::Tiny),
    ("plain-1k", Shape::Plain { text_len: 1_000 }),
    ("openai-2k", Shape::OpenAi { text_len: 2_000 }),
    ("plain-50k", Shape::Plain { text_len: 50_000 }),
];

/// Where an answer's number goes in its shape's JSON text: each answer differs there.
const NUMBER: &str = "NNNNNNNNNNNN";

/// The JSON text of a shape's answers, with [`NUMBER`] where each has its own number.
fn template(shape: Shape) -> Vec<u8> {
    let text = |len: usize| {
        let mut s = format!("answer {NUMBER}: ");
        while s.len() < len {
            s.push_str("the carrier pays the demurrage when the delay is its own. ");
        }
        s.truncate(len);
        s
    };
    let body = match shape {
        Shape::Tiny => json!({"choices": [{"message": {"role": "assistant", "content": NUMBER}}]}),
        Shape::Plain { text_len } => json!({
            "id": format!("chatcmpl-{NUMBER}"), "object": "chat.completion",
            "created": 1_767_225_600, "model": "gpt-4.1",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text(text_len)},
                "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 240, "completion_tokens": 480, "total_tokens": 720},
            "system_fingerprint": "fp_0123456789",
        }),
        Shape::OpenAi { text_len } => json!({
            "id": format!("chatcmpl-{NUMBER}"), "object": "chat.completion",
            "created": 1_767_225_600, "model": "gpt-4.1-2025-04-14",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text(text_len),
                "refusal": null, "annotations": []}, "logprobs": null, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 240, "completion_tokens": 480, "total_tokens": 720,
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                    "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}},
            "service_tier": "default", "system_fingerprint": "fp_0123456789",
        }),
    };
    serde_json::to_vec(&body).unwrap()
}

/// Answers each call with the next answer, decoded from its JSON like a provider's.
struct Answers {
    template: Vec<u8>,
    /// Where [`NUMBER`] stands in the template.
    numbers: Vec<usize>,
    calls: AtomicU64,
}

impl Answers {
    fn new(shape: Shape) -> Self {
        let template = template(shape);
        let numbers = (0..template.len())
            .filter(|&at| template[at..].starts_with(NUMBER.as_bytes()))
            .collect();
        Answers {
            template,
            numbers,
            calls: AtomicU64::new(0),
        }
    }
}

impl Upstream for Answers {
    fn chat<'a>(&'a self, _: &'a ChatRequest) -> BoxFuture<'a, Result<ChatResponse>> {
        let n = format!("{:012}", self.calls.fetch_add(1, Relaxed));
        let mut text = self.template.clone();
        for &at in &self.numbers {
            text[at..at + NUMBER.len()].copy_from_slice(n.as_bytes());
        }
        Box::pin(async move { Ok(serde_json::from_slice(&text).unwrap()) })
    }
}

/// Bytes resident now, and at the peak, from /proc/self/status.
fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib = |field: &str| -> u64 {
        let line = status.lines().find(|l| l.starts_with(field)).unwrap();
        line.split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap()
            * 1024
    };
    (kib("VmRSS:"), kib("VmHWM:"))
}

/// What a child reports: growth at the end, growth at the peak, entries held, their weight,
/// the JSON length of one answer.
struct Report {
    growth: u64,
    peak_growth: u64,
    entries: u64,
    weight: u64,
    json_len: u64,
}

/// Ask for the answers to questions `from..to`, `CALLERS` at a time.
async fn chats(cache: &LlmCache, from: u64, to: u64) {
    let callers: Vec<_> = (0..CALLERS)
        .map(|first| {
            let cache = cache.clone();
            tokio::spawn(async move {
                let mut i = from + first;
                while i < to {
                    let request = ChatRequest::new("gpt-4.1")
                        .message(ChatMessage::user(format!("question {i}")));
                    cache.chat(&request).await.unwrap();
                    i += CALLERS;
                }
            })
        })
        .collect();
    for caller in callers {
        caller.await.unwrap();
    }
}

/// One fill, in this process: run only in a child (see `fill_child`).
fn fill(shape: Shape) -> Report {
    // One thread, so that nothing allocates beside the fill: on the multi-thread runtime
    // each worker's fetches land in that worker's malloc arena, and how much the arenas
    // keep but cannot reuse depends on which worker ran what (50 KB answers grew the
    // process by 1.0 to 1.4 times the bound from run to run). The docs of `l1_max_bytes`
    // say what many threads cost.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let cache = LlmCache::builder()
            .upstream(Answers::new(shape))
            .l1_max_bytes(BOUND)
            .build()
            .await
            .unwrap();
        // Warm the runtime, the allocator and the cache's own structures on a few entries.
        chats(&cache, 1 << 40, (1 << 40) + 64).await;
        cache.tiers().run_pending_tasks().await;
        let (before, _) = memory();
        let json_len = template(shape).len() as u64;
        // Fill to the bound, then go on for FILL - 1 times as many answers.
        let mut i = 0;
        while cache.tiers().stats().l1_bytes < BOUND - BOUND / 20 {
            chats(&cache, i, i + 1024).await;
            i += 1024;
            assert!(i < 10_000_000, "L1 never reached its bound");
        }
        chats(&cache, i, i * FILL).await;
        cache.tiers().run_pending_tasks().await;
        let (after, peak) = memory();
        let stats = cache.stats().cache;
        Report {
            growth: after.saturating_sub(before),
            peak_growth: peak.saturating_sub(before),
            entries: stats.l1_entries,
            weight: stats.l1_bytes,
            json_len,
        }
    })
}

/// The child's side: runs a fill when the parent asks for one, else nothing.
#[test]
fn fill_child() {
    let Ok(name) = std::env::var(FILL_ENV) else {
        return;
    };
    let (_, shape) = SHAPES.iter().find(|(n, _)| *n == name).unwrap();
    let r = fill(*shape);
    println!(
        "fill-report {} {} {} {} {}",
        r.growth, r.peak_growth, r.entries, r.weight, r.json_len
    );
}

/// Start the fill `name` in a child process.
fn start_child(name: &str) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "l1_memory::fill_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(FILL_ENV, name)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// What the child running the fill `name` reported.
fn report(name: &str, child: std::process::Child) -> Report {
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the {name} fill failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("fill-report ").map(|(_, r)| r))
        .unwrap_or_else(|| panic!("no report from the {name} fill: {stdout}"));
    let n: Vec<u64> = line.split(' ').map(|x| x.parse().unwrap()).collect();
    Report {
        growth: n[0],
        peak_growth: n[1],
        entries: n[2],
        weight: n[3],
        json_len: n[4],
    }
}

#[test]
fn filled_far_past_its_bound_the_process_grows_by_at_most_1_2_times_the_bound() {
    let limit = BOUND + BOUND / 5;
    let mut failures = Vec::new();
    // The children run side by side: each measures only itself.
    let children: Vec<_> = SHAPES
        .iter()
        .map(|(name, _)| (name, start_child(name)))
        .collect();
    for (name, child) in children {
        let r = report(name, child);
        let per_entry = r.growth / r.entries.max(1);
        println!(
            "{name}: answers of {} JSON bytes; {} entries held, weighing {} B each; the process \
             grew {:.1} MiB (peak {:.1} MiB), {per_entry} B per entry held; bound {} MiB",
            r.json_len,
            r.entries,
            r.weight / r.entries.max(1),
            r.growth as f64 / 1048576.0,
            r.peak_growth as f64 / 1048576.0,
            BOUND >> 20,
        );
        // The fill really reached the bound: otherwise the check below proves nothing.
        if r.weight < BOUND * 8 / 10 {
            failures.push(format!(
                "{name}: L1 holds only {} bytes of weight",
                r.weight
            ));
        }
        if r.peak_growth > limit {
            failures.push(format!(
                "{name}: the process grew by {} bytes at its peak, over 1.2 x {BOUND}",
                r.peak_growth
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
