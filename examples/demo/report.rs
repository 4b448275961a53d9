//! The tally of outcomes and the report made of it: hits per tier, coalescing, latency
//! by status, dollars saved, as text or JSON. It only reads the cache's statistics.

use std::collections::HashSet;
use std::time::Duration;

use llm_cache::{CacheStatus, LlmCache, LlmStats};
use serde_json::{Value, json};

use crate::args::Args;
use crate::{Answer, Outcome};

#[derive(Default)]
pub(crate) struct Tally {
    pub(crate) miss: Vec<Duration>,
    pub(crate) l1: Vec<Duration>,
    pub(crate) l2: Vec<Duration>,
    pub(crate) coalesced: Vec<Duration>,
    /// Time to first token, by status as in `STATUSES` (streamed runs only).
    pub(crate) ttft: [Vec<Duration>; 4],
    /// Errors, mismatches included.
    pub(crate) errors: u64,
    /// Answers whose text differs from their prompt's reference.
    pub(crate) mismatches: u64,
    pub(crate) first_error: Option<String>,
    /// Per prompt, the text a non-streamed request gets: the stub's answer, or (from a
    /// real upstream) the first answer of this run, which every other must equal.
    pub(crate) reference: Vec<Option<String>>,
    pub(crate) tokens_saved: u64,
    /// `None` once an answer could not be priced (unknown model or missing usage).
    pub(crate) cost_without: Option<f64>,
    pub(crate) cost_with: Option<f64>,
    pub(crate) distinct_used: HashSet<usize>,
}

/// The statuses the report breaks latencies down by, in its order.
pub(crate) const STATUSES: [&str; 4] = ["miss", "l1", "l2", "coalesced"];

impl Tally {
    pub(crate) fn new(reference: Vec<Option<String>>) -> Self {
        Tally {
            cost_without: Some(0.0),
            cost_with: Some(0.0),
            reference,
            ..Default::default()
        }
    }

    pub(crate) fn add(&mut self, o: Outcome, cache: &LlmCache, model: &str) {
        self.distinct_used.insert(o.prompt);
        let Answer {
            status,
            usage,
            text,
            ttft,
        } = match o.answer {
            Ok(answer) => answer,
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert(e);
                return;
            }
        };
        match &mut self.reference[o.prompt] {
            Some(expected) if *expected != text => {
                self.errors += 1;
                self.mismatches += 1;
                let at = expected
                    .bytes()
                    .zip(text.bytes())
                    .take_while(|(a, b)| a == b)
                    .count();
                self.first_error.get_or_insert_with(|| {
                    format!(
                        "prompt {}: the answer ({}, {} bytes) differs from the one a \
                         non-streamed request gets ({} bytes) from byte {at} on",
                        o.prompt,
                        status.as_str(),
                        text.len(),
                        expected.len()
                    )
                });
                return;
            }
            Some(_) => {}
            unseen @ None => *unseen = Some(text),
        }
        let cost = usage.as_ref().and_then(|u| cache.prices().cost(model, u));
        let paid = !status.is_hit();
        self.cost_without = self.cost_without.zip(cost).map(|(a, c)| a + c);
        if paid {
            self.cost_with = self.cost_with.zip(cost).map(|(a, c)| a + c);
        } else if let Some(u) = &usage {
            self.tokens_saved += u.prompt_tokens + u.completion_tokens;
        }
        let [ttft_miss, ttft_l1, ttft_l2, ttft_coalesced] = &mut self.ttft;
        let (latencies, ttfts) = match status {
            CacheStatus::HitL1 => (&mut self.l1, ttft_l1),
            CacheStatus::HitL2 => (&mut self.l2, ttft_l2),
            CacheStatus::Coalesced => (&mut self.coalesced, ttft_coalesced),
            // Misses; `Bypass` cannot happen here (no temperature rule, no bypass control)
            // and would be an upstream call too.
            _ => (&mut self.miss, ttft_miss),
        };
        latencies.push(o.latency);
        ttfts.extend(ttft);
    }

    pub(crate) fn served(&self) -> usize {
        self.miss.len() + self.l1.len() + self.l2.len() + self.coalesced.len()
    }

    pub(crate) fn hits(&self) -> usize {
        self.l1.len() + self.l2.len() + self.coalesced.len()
    }

    pub(crate) fn hit_ratio(&self) -> f64 {
        match self.served() {
            0 => 0.0,
            n => self.hits() as f64 / n as f64,
        }
    }
}

pub(crate) struct Percentiles {
    pub(crate) count: usize,
    pub(crate) p50_ms: Option<f64>,
    pub(crate) p99_ms: Option<f64>,
}

pub(crate) fn percentiles(samples: &mut [Duration]) -> Percentiles {
    samples.sort_unstable();
    let at = |p: f64| -> Option<f64> {
        let n = samples.len();
        // Nearest rank: the smallest sample with at least p% of the samples at or below it.
        let rank = ((p / 100.0) * n as f64).ceil() as usize;
        samples
            .get(rank.clamp(1, n.max(1)) - 1)
            .map(|d| d.as_secs_f64() * 1000.0)
    };
    Percentiles {
        count: samples.len(),
        p50_ms: at(50.0),
        p99_ms: at(99.0),
    }
}

pub(crate) struct Report<'a> {
    pub(crate) args: &'a Args,
    pub(crate) tally: Tally,
    pub(crate) stats: LlmStats,
    pub(crate) wall: Duration,
    pub(crate) bursts: usize,
    pub(crate) stub_calls: Option<u64>,
}

impl Report<'_> {
    pub(crate) fn latencies(&mut self) -> [(&'static str, Percentiles); 4] {
        let t = &mut self.tally;
        [
            ("miss", percentiles(&mut t.miss)),
            ("l1", percentiles(&mut t.l1)),
            ("l2", percentiles(&mut t.l2)),
            ("coalesced", percentiles(&mut t.coalesced)),
        ]
    }

    /// Time to first token by status; `None` unless the run streamed.
    pub(crate) fn ttfts(&mut self) -> Option<[(&'static str, Percentiles); 4]> {
        let ttft = &mut self.tally.ttft;
        self.args
            .stream
            .then(|| std::array::from_fn(|i| (STATUSES[i], percentiles(&mut ttft[i]))))
    }

    pub(crate) fn json(mut self) -> Value {
        let by_status = |ps: [(&str, Percentiles); 4]| -> Value {
            ps.into_iter()
                .map(|(name, p)| {
                    let (p50, p99) = (p.p50_ms.map(micros), p.p99_ms.map(micros));
                    let v = json!({"p50": p50, "p99": p99, "count": p.count});
                    (name.to_string(), v)
                })
                .collect::<serde_json::Map<_, _>>()
                .into()
        };
        let latency = by_status(self.latencies());
        let ttft = self.ttfts().map(by_status);
        let (t, s, c) = (&self.tally, &self.stats, &self.stats.cache);
        let stats = json!({
            "l1_hits": c.l1_hits,
            "l2_hits": c.l2_hits,
            "misses": c.misses,
            "coalesced": c.coalesced,
            "fetches": c.fetches,
            "fetch_errors": c.fetch_errors,
            "l2_errors": c.l2_errors,
            "l2_timeouts": c.l2_timeouts,
            "l2_skipped": c.l2_skipped,
            "corrupt_entries": c.corrupt_entries,
            "l2_writes": c.l2_writes,
            "dropped_writes": c.dropped_writes,
            "oversized": c.oversized,
            "waiter_timeouts": c.waiter_timeouts,
            "inflight": c.inflight,
            "breaker": format!("{:?}", c.breaker),
            "l1_entries": c.l1_entries,
            "l1_bytes": c.l1_bytes,
            "bypassed": s.bypassed,
            "upstream_calls": s.upstream_calls,
            "tokens_saved": s.tokens_saved,
            "cost_saved_usd": nanos(s.cost_saved_usd),
        });
        json!({
            "requests": self.args.requests,
            "l1_hits": t.l1.len(),
            "l2_hits": t.l2.len(),
            "coalesced": t.coalesced.len(),
            "misses": t.miss.len(),
            "upstream_calls": s.upstream_calls,
            "errors": t.errors,
            "mismatches": t.mismatches,
            "hit_ratio": t.hit_ratio(),
            "stream": self.args.stream,
            "latency_ms": latency,
            "ttft_ms": ttft,
            "cost_without_usd": t.cost_without.map(nanos),
            "cost_with_usd": t.cost_with.map(nanos),
            "tokens_saved": t.tokens_saved,
            "distinct": self.args.distinct,
            "distinct_used": t.distinct_used.len(),
            "redis": self.args.redis.is_some(),
            "wall_ms": micros(self.wall.as_secs_f64() * 1000.0),
            "model": self.args.model,
            "seed": self.args.seed,
            "concurrency": self.args.concurrency,
            "bursts": self.bursts,
            "stub_calls": self.stub_calls,
            "first_error": t.first_error,
            "stats": stats,
        })
    }

    pub(crate) fn print(mut self) {
        let latencies = self.latencies();
        let ttfts = self.ttfts();
        let (t, s, c) = (&self.tally, &self.stats, &self.stats.cache);
        let n = self.args.requests as u64;
        let share = |k: usize| format!("{:5.1}%", 100.0 * k as f64 / n.max(1) as f64);
        println!("Results");
        let mismatches = if t.mismatches > 0 {
            format!(
                " ({} answers differ from the non-streamed ones)",
                t.mismatches
            )
        } else {
            String::new()
        };
        println!(
            "  requests        {:>9}   errors {}{mismatches}",
            group(n),
            t.errors
        );
        println!(
            "  L1 hits         {:>9}   {}",
            group(t.l1.len() as u64),
            share(t.l1.len())
        );
        println!(
            "  L2 hits         {:>9}   {}",
            group(t.l2.len() as u64),
            share(t.l2.len())
        );
        println!(
            "  coalesced       {:>9}   {}   (joined a call already in flight)",
            group(t.coalesced.len() as u64),
            share(t.coalesced.len())
        );
        println!(
            "  misses          {:>9}   {}",
            group(t.miss.len() as u64),
            share(t.miss.len())
        );
        let stub = self
            .stub_calls
            .map_or(String::new(), |k| format!("   (the stub saw {k})"));
        println!("  upstream calls  {:>9}{stub}", group(s.upstream_calls));
        println!("  hit ratio       {:>8.1}%", 100.0 * t.hit_ratio());
        let secs = self.wall.as_secs_f64();
        println!(
            "  wall time       {:>9}   {} requests/s",
            duration_ms(secs * 1000.0),
            group((n as f64 / secs.max(1e-9)).round() as u64)
        );
        if let Some(e) = &t.first_error {
            println!("  first error     {e}");
        }

        // Every table of the report has the same columns; `width` is its first one's.
        let table = |title: &str, width: usize, rows: &[(&str, Percentiles)]| {
            println!();
            println!("{title:<width$}      count        p50        p99");
            for (name, p) in rows {
                let show = |v: Option<f64>| v.map_or("-".to_string(), duration_ms);
                println!(
                    "  {name:<w$} {:>10} {:>10} {:>10}",
                    group(p.count as u64),
                    show(p.p50_ms),
                    show(p.p99_ms),
                    w = width - 2
                );
            }
        };
        match &ttfts {
            Some(ttfts) => {
                table("Latency (whole stream)", 22, &latencies);
                table("Time to first token", 22, ttfts);
            }
            None => table("Latency", 11, &latencies),
        }

        println!();
        println!("Cost ({})", self.args.model);
        println!("  tokens saved    {:>11}", group(t.tokens_saved));
        match (t.cost_without, t.cost_with) {
            (Some(without), Some(with)) => {
                println!("  without cache   {:>11}", dollars(without));
                let saved = without - with;
                let pct = if without > 0.0 {
                    100.0 * saved / without
                } else {
                    0.0
                };
                println!(
                    "  with cache      {:>11}   saved {} ({pct:.1}%)",
                    dollars(with),
                    dollars(saved)
                );
            }
            _ => println!(
                "  not estimated: no price for `{}` in the table (or answers without usage)",
                self.args.model
            ),
        }

        println!();
        println!("cache.stats()");
        println!(
            "  l1 {} hits, l2 {} hits, {} misses, {} coalesced, {} fetches ({} failed)",
            group(c.l1_hits),
            group(c.l2_hits),
            group(c.misses),
            group(c.coalesced),
            group(c.fetches),
            group(c.fetch_errors)
        );
        println!(
            "  l1 {} entries, {}; upstream calls {}, bypassed {}",
            group(c.l1_entries),
            bytes(c.l1_bytes),
            group(s.upstream_calls),
            group(s.bypassed)
        );
        if self.args.redis.is_some() {
            println!(
                "  l2 {} writes, {} dropped, {} errors, {} timeouts, {} skipped, {} corrupt; breaker {:?}",
                group(c.l2_writes),
                group(c.dropped_writes),
                group(c.l2_errors),
                group(c.l2_timeouts),
                group(c.l2_skipped),
                group(c.corrupt_entries),
                c.breaker
            );
        }
        println!(
            "  tokens saved {}, {} saved by the price table",
            group(s.tokens_saved),
            dollars(s.cost_saved_usd)
        );

        println!();
        match &self.args.redis {
            Some(url) if c.l2_writes == 0 && c.misses > 0 => println!(
                "Redis at {} took no write ({} errors, {} timeouts, breaker {:?}): check that \
                 it runs and the URL's password; this run was L1-only.",
                redis_host_port(url),
                c.l2_errors,
                c.l2_timeouts,
                c.breaker
            ),
            Some(_) if t.l2.is_empty() => println!(
                "Run it again with the same Redis and seed: a new process starts with an empty \
                 L1 and is answered from Redis."
            ),
            Some(_) => {}
            None => println!(
                "L1-only run. Add Redis (REDIS_URL=redis://host:port or --redis URL) and run \
                 twice to see a second process answered from L2."
            ),
        }
    }
}

/// Milliseconds to the microsecond, so the JSON carries no float noise.
pub(crate) fn micros(ms: f64) -> f64 {
    (ms * 1e3).round() / 1e3
}

/// Dollars to the nano-dollar, the crate's own resolution.
pub(crate) fn nanos(usd: f64) -> f64 {
    (usd * 1e9).round() / 1e9
}

/// `1234567` -> `1,234,567`.
pub(crate) fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

pub(crate) fn duration_ms(ms: f64) -> String {
    if ms < 1.0 {
        format!("{:.0} µs", ms * 1000.0)
    } else if ms < 1000.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{:.2} s", ms / 1000.0)
    }
}

pub(crate) fn dollars(usd: f64) -> String {
    if usd.abs() < 1.0 {
        format!("${usd:.4}")
    } else {
        format!("${usd:.2}")
    }
}

pub(crate) fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / f64::from(1 << 20)),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / f64::from(1 << 10)),
        n => format!("{n} B"),
    }
}

/// Only `host:port` of a Redis URL: it may carry a password.
pub(crate) fn redis_host_port(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("redis", url));
    if scheme.contains("unix") {
        return "a unix socket".into();
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    if host_port.is_empty() {
        "127.0.0.1:6379".into()
    } else if host_port.ends_with(']') || !host_port.contains(':') {
        format!("{host_port}:6379")
    } else {
        host_port.into()
    }
}

/// A base URL without credentials, query or fragment.
pub(crate) fn shown_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => {
            let host = u.host_str().unwrap_or_default();
            let port = u.port().map_or(String::new(), |p| format!(":{p}"));
            format!("{}://{host}{port}{}", u.scheme(), u.path())
        }
        Err(_) => "OPENAI_BASE_URL (not a valid URL)".into(),
    }
}
