//! Redis Sentinel: one master, one replica, three sentinels on loopback. The master is
//! killed under a steady load: every request still succeeds (fail-open during the failover),
//! and after the promotion L2 writes and hits resume on the new master. Also: the scale-out
//! knobs are validated and their passwords never shown.

use llm_cache_test_support as support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use llm_cache::{CacheStatus, ChatMessage, ChatRequest, LlmCache, OpenAiCompatible, RetryPolicy};
use support::topology::{MASTER_NAME, SentinelGroup, command};
use support::upstream::{MockUpstream, expected_content};
use tokio::sync::Mutex;

const WAIT: Duration = Duration::from_secs(20);
const WARM: usize = 20;

fn request(prompt: String) -> ChatRequest {
    ChatRequest::new("gpt-4.1").message(ChatMessage::user(prompt))
}

/// An instance on the group. The one with L1 names the group with the typed value
/// (`Redis::sentinel`), the other with the builder's flat setter: both ways meet the live
/// group, its failover included.
async fn instance(mock: &MockUpstream, group: &SentinelGroup, l1: bool) -> LlmCache {
    let builder = LlmCache::builder()
        .upstream(OpenAiCompatible::new(mock.base_url()).retry(RetryPolicy::none()));
    let builder = if l1 {
        builder.redis(
            llm_cache::Redis::sentinel(MASTER_NAME, group.addrs()).expect("sentinel addresses"),
        )
    } else {
        builder.sentinel(MASTER_NAME, group.addrs())
    };
    builder
        .l1_max_bytes(if l1 { 64 << 20 } else { 0 })
        .l2_deadline(Duration::from_millis(100))
        .breaker_cooldown(Duration::from_millis(200))
        .build()
        .await
        .expect("build")
}

/// What one request of the load saw.
struct Sample {
    /// When the request was made.
    at: Instant,
    ok: bool,
    status: Option<CacheStatus>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn master_killed_under_load_every_request_succeeds_and_l2_resumes_on_the_new_master() {
    let mut group = SentinelGroup::start(1000, 2000);
    let mock = MockUpstream::start().await;
    let writer = instance(&mock, &group, true).await;
    let reader = instance(&mock, &group, false).await;
    assert!(writer.tiers().invalidation_subscribed());

    for i in 0..WARM {
        writer.chat(&request(format!("warm {i}"))).await.unwrap();
    }
    support::eventually("the warm-up writes", WAIT, || {
        writer.stats().cache.l2_writes == WARM as u64
    })
    .await;
    support::eventually("the warm-up to reach the replica", WAIT, || {
        command(group.replica.port(), &["DBSIZE"]).is_some_and(|r| {
            r.trim()
                .trim_start_matches(':')
                .parse::<usize>()
                .unwrap_or(0)
                >= WARM
        })
    })
    .await;

    // Steady load: readers of warm entries (L2 hits normally) and writers of new ones.
    let stop = Arc::new(AtomicBool::new(false));
    let samples = Arc::new(Mutex::new(Vec::<Sample>::new()));
    let fresh = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for worker in 0..4 {
        let (stop, samples, fresh) = (Arc::clone(&stop), Arc::clone(&samples), Arc::clone(&fresh));
        let cache = if worker % 2 == 0 {
            reader.clone()
        } else {
            writer.clone()
        };
        load.push(tokio::spawn(async move {
            let mut i = worker;
            while !stop.load(Ordering::Relaxed) {
                let prompt = if worker % 2 == 0 {
                    format!("warm {}", i % WARM)
                } else {
                    format!("fresh {}", fresh.fetch_add(1, Ordering::Relaxed))
                };
                let req = request(prompt);
                let at = Instant::now();
                let out = cache.chat(&req).await;
                let ok = out
                    .as_ref()
                    .is_ok_and(|c| c.text() == Some(expected_content(&req)));
                let status = out.ok().map(|c| c.status());
                samples.lock().await.push(Sample { at, ok, status });
                i += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }
    let l2_hits_before = reader.stats().cache.l2_hits;
    support::eventually("L2 hits under load", WAIT, || {
        reader.stats().cache.l2_hits >= l2_hits_before + 50
    })
    .await;

    let killed = Instant::now();
    group.master.kill();
    support::eventually("the sentinels to promote the replica", WAIT, || {
        group.promoted()
    })
    .await;
    let promoted = killed.elapsed();
    let writes_at_promotion = writer.stats().cache.l2_writes;
    // L2 hits of requests made after the kill can only come from the new master.
    let resumed = loop {
        let first_hit = samples
            .lock()
            .await
            .iter()
            .find(|s| s.at > killed && s.status == Some(CacheStatus::HitL2))
            .map(|s| s.at);
        if let Some(at) = first_hit {
            break at;
        }
        assert!(
            killed.elapsed() < WAIT,
            "L2 hits did not resume within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    support::eventually("L2 writes on the new master", WAIT, || {
        writer.stats().cache.l2_writes > writes_at_promotion + 20
    })
    .await;
    let hits_after = reader.stats().cache.l2_hits;
    support::eventually("more L2 hits on the new master", WAIT, || {
        reader.stats().cache.l2_hits >= hits_after + 50
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }

    let samples = samples.lock().await;
    let during: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.at > killed && s.at <= resumed)
        .collect();
    let failed = samples.iter().filter(|s| !s.ok).count();
    eprintln!(
        "sentinel failover: promoted after {promoted:?}; L2 hits resumed {:?} after the kill; \
         {} requests during the failover, {} of them failed; {} requests in all, {failed} failed",
        resumed.duration_since(killed),
        during.len(),
        during.iter().filter(|s| !s.ok).count(),
        samples.len()
    );
    assert_eq!(failed, 0, "every request succeeds through the failover");
    assert!(!during.is_empty(), "the load went on during the failover");

    // The new master holds entries written after the promotion.
    let late = request(format!("fresh {}", fresh.load(Ordering::Relaxed) - 1));
    let key = writer
        .tiers()
        .l2_key(&writer.digest_with(&late, &Default::default()));
    support::eventually("the last write on the new master", WAIT, || {
        command(group.replica.port(), &["EXISTS", &key]).is_some_and(|r| r.trim() == ":1")
    })
    .await;
}

#[tokio::test]
async fn bad_scale_out_knobs_are_config_errors_naming_the_knob() {
    let mock = MockUpstream::start().await;
    let base = || {
        LlmCache::builder()
            .upstream(OpenAiCompatible::new(mock.base_url()).retry(RetryPolicy::none()))
    };
    let cases: Vec<(&str, llm_cache::LlmCacheBuilder)> = vec![
        ("sentinel", base().sentinel("", ["127.0.0.1:26380"])),
        ("sentinel", base().sentinel("m", Vec::<String>::new())),
        ("sentinel", base().sentinel("m", ["nohost"])),
        ("sentinel", base().sentinel("m", ["127.0.0.1:0"])),
        (
            "sentinel",
            base()
                .sentinel("m", ["127.0.0.1:26380"])
                .redis("redis://127.0.0.1:1"),
        ),
        (
            "cluster",
            base()
                .cluster(["127.0.0.1:7000"])
                .redis("redis://127.0.0.1:1"),
        ),
        ("cluster", base().cluster(["127.0.0.1:x"])),
        ("sentinel_password", base().sentinel_password("pw")),
        (
            "redis_password",
            base().redis("redis://127.0.0.1:1").redis_password("pw"),
        ),
        (
            "redis_password",
            base().cluster(["127.0.0.1:7000"]).redis_password(""),
        ),
        ("lease_ttl", base().lease_ttl(Duration::from_millis(10))),
        (
            "lease_ttl",
            base()
                .l2_deadline(Duration::from_secs(1))
                .lease_ttl(Duration::from_secs(2)),
        ),
    ];
    for (knob, builder) in cases {
        let err = builder.build().await.expect_err(knob);
        assert!(err.is_config(), "{err}");
        assert!(
            err.message().contains(&format!("`{knob}`")),
            "{knob}: {err}"
        );
    }

    // Passwords never show, in Debug or in errors.
    let b = base()
        .sentinel("m", ["redis://:sentinel-secret@127.0.0.1:notaport"])
        .sentinel_password("other-secret")
        .redis_password("node-secret");
    let shown = format!("{b:?}");
    assert!(!shown.contains("secret"), "{shown}");
    let err = b.build().await.unwrap_err();
    assert!(!err.to_string().contains("secret"), "{err}");
}
