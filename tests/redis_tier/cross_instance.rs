//! Single-flight across instances: leases in Redis. Instances in one process (each with its
//! own connections), instances as separate OS processes (this test binary runs itself as
//! the child), a leader that dies mid-fetch, and Redis down (one call per instance, no stall).

use llm_cache_test_support as support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use llm_cache::{
    CacheControl, CacheStatus, ChatMessage, ChatRequest, LlmCache, OpenAiCompatible, RetryPolicy,
};
use support::eventually;
use support::redis::RedisServer;
use support::upstream::{MockUpstream, expected_content};
use tokio::io::{AsyncBufReadExt, BufReader};

const WAIT: Duration = Duration::from_secs(10);
const LEASE_TTL: Duration = Duration::from_secs(1);

fn request(prompt: &str) -> ChatRequest {
    ChatRequest::new("gpt-4.1")
        .message(ChatMessage::system("You are terse."))
        .message(ChatMessage::user(prompt))
}

async fn instance(upstream_url: &str, redis_url: &str) -> LlmCache {
    LlmCache::builder()
        .upstream(OpenAiCompatible::new(upstream_url).retry(RetryPolicy::none()))
        .redis(redis_url)
        .l2_deadline(Duration::from_millis(250))
        .lease_ttl(LEASE_TTL)
        .build()
        .await
        .expect("build")
}

/// An instance whose lease lives a minute: no renewal runs while a test holds a fetch, so
/// the commands it counts are the lookup's and the write's only.
async fn long_lease_instance(mock: &MockUpstream, redis: &RedisServer) -> LlmCache {
    LlmCache::builder()
        .upstream(OpenAiCompatible::new(mock.base_url()).retry(RetryPolicy::none()))
        .redis(redis.url())
        .lease_ttl(Duration::from_secs(60))
        .build()
        .await
        .expect("build")
}

/// `n` concurrent identical requests on `cache`, spawned now.
fn burst(
    cache: &LlmCache,
    req: &ChatRequest,
    n: usize,
) -> Vec<tokio::task::JoinHandle<llm_cache::Result<llm_cache::Cached<llm_cache::ChatResponse>>>> {
    (0..n)
        .map(|_| {
            let (c, r) = (cache.clone(), req.clone());
            tokio::spawn(async move { c.chat(&r).await })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_instances_with_a_hundred_concurrent_requests_each_make_one_upstream_call() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let mut caches = Vec::new();
    for _ in 0..4 {
        caches.push(instance(&mock.base_url(), &redis.url()).await);
    }
    let req = request("One call for the whole fleet");
    mock.hold_answers();
    let mut calls = Vec::new();
    for c in &caches {
        calls.extend(burst(c, &req, 100));
    }
    mock.wait_for_calls(1).await;
    for (i, c) in caches.iter().enumerate() {
        eventually(&format!("instance {i} to have its flight"), WAIT, || {
            c.tiers().inflight() == 1
        })
        .await;
    }
    mock.release_all();
    let mut statuses = Vec::new();
    for call in calls {
        let out = call.await.unwrap().expect("every request succeeds");
        assert_eq!(out.text().unwrap(), expected_content(&req));
        statuses.push(out.status());
    }
    let stats: Vec<_> = caches.iter().map(|c| c.stats().cache).collect();
    assert_eq!(
        mock.calls(),
        1,
        "one upstream call for 4 x 100 requests: {statuses:?} {stats:#?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == CacheStatus::Miss).count(),
        1
    );
    assert!(
        statuses
            .iter()
            .all(|s| *s == CacheStatus::Miss || s.is_hit())
    );
    let l2_hits: u64 = caches.iter().map(|c| c.stats().cache.l2_hits).sum();
    assert_eq!(
        l2_hits, 3,
        "the other three instances got the value from L2"
    );
    // The lease is gone once the value is written (the value replaced it).
    eventually("the lease to be released", WAIT, || {
        redis.leases_held("ai:cache") == 0
    })
    .await;
}

/// The child side of [`four_processes_with_a_hundred_concurrent_requests_each_make_one_upstream_call`]:
/// does nothing unless the parent set `LLM_CACHE_CHILD_REDIS`.
#[test]
fn child_process_instance() {
    let (Ok(redis_url), Ok(upstream_url), Ok(prompt)) = (
        std::env::var("LLM_CACHE_CHILD_REDIS"),
        std::env::var("LLM_CACHE_CHILD_UPSTREAM"),
        std::env::var("LLM_CACHE_CHILD_PROMPT"),
    ) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let cache = instance(&upstream_url, &redis_url).await;
        let req = request(&prompt);
        let calls = burst(&cache, &req, 100);
        eventually("this process's flight", WAIT, || {
            cache.tiers().inflight() == 1
        })
        .await;
        println!("child: started");
        let (mut ok, mut misses, mut l2) = (0, 0, 0);
        for call in calls {
            let out = call.await.unwrap().expect("request succeeds");
            assert_eq!(out.text().unwrap(), expected_content(&req));
            ok += 1;
            match out.status() {
                CacheStatus::Miss => misses += 1,
                CacheStatus::HitL2 => l2 += 1,
                _ => {}
            }
        }
        println!("child: done ok={ok} misses={misses} l2={l2}");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_with_a_hundred_concurrent_requests_each_make_one_upstream_call() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let prompt = "One call across processes";
    mock.hold_answers();
    let exe = std::env::current_exe().expect("test binary path");
    let mut children = Vec::new();
    for _ in 0..4 {
        let mut child = tokio::process::Command::new(&exe)
            .args([
                "--exact",
                "cross_instance::child_process_instance",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env("LLM_CACHE_CHILD_REDIS", redis.url())
            .env("LLM_CACHE_CHILD_UPSTREAM", mock.base_url())
            .env("LLM_CACHE_CHILD_PROMPT", prompt)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn child test process");
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        children.push((child, lines));
    }
    // Every child's flight is running before the one upstream call may answer.
    for (i, (_, lines)) in children.iter_mut().enumerate() {
        let line = next_child_line(lines).await;
        assert_eq!(line, "child: started", "child {i}");
    }
    mock.wait_for_calls(1).await;
    mock.release_all();
    let (mut ok, mut misses, mut l2) = (0, 0, 0);
    for (i, (child, lines)) in children.iter_mut().enumerate() {
        let line = next_child_line(lines).await;
        let fields: Vec<u32> = line
            .strip_prefix("child: done ")
            .unwrap_or_else(|| panic!("child {i}: {line}"))
            .split(' ')
            .map(|kv| kv.split_once('=').unwrap().1.parse().unwrap())
            .collect();
        ok += fields[0];
        misses += fields[1];
        l2 += fields[2];
        let status = tokio::time::timeout(WAIT, child.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(status.success(), "child {i} exited with {status}");
    }
    assert_eq!(ok, 400);
    assert_eq!(
        mock.calls(),
        1,
        "one upstream call for 4 processes x 100 requests"
    );
    assert_eq!(misses, 1);
    assert_eq!(l2, 3, "the three other processes read the value from L2");
}

async fn next_child_line(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
) -> String {
    loop {
        let line = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .expect("child output in time")
            .expect("read child output")
            .expect("child ended early");
        // libtest writes "test <name> ... " without a newline before the test's output.
        if let Some(at) = line.find("child: ") {
            return line[at..].to_owned();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_that_dies_costs_exactly_one_more_call_after_its_lease_expires() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let req = request("The leader hangs");
    mock.hold_answers();

    // The leader lives in its own runtime, so it can die the way a process does: all its
    // tasks (the flight and its lease renewal) stop at once.
    let doomed = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (upstream_url, redis_url, leader_req) = (mock.base_url(), redis.url(), req.clone());
    let _leader = doomed.spawn(async move {
        let cache = instance(&upstream_url, &redis_url).await;
        cache.chat(&leader_req).await
    });
    mock.wait_for_calls(1).await;

    let others = vec![
        instance(&mock.base_url(), &redis.url()).await,
        instance(&mock.base_url(), &redis.url()).await,
    ];
    let mut calls = Vec::new();
    for c in &others {
        calls.extend(burst(c, &req, 10));
    }
    for c in &others {
        eventually("the waiting flights", WAIT, || c.tiers().inflight() == 1).await;
    }
    // Waiting on a live leader's lease costs nothing, however long it takes.
    assert_eq!(mock.calls(), 1);

    let died = Instant::now();
    doomed.shutdown_background();
    mock.wait_for_calls(2).await;
    let second = mock.requests()[1].at;
    assert!(
        second.duration_since(died) >= LEASE_TTL / 2,
        "the takeover waited for the lease to expire ({:?} after the death)",
        second.duration_since(died)
    );
    mock.release_all();
    for call in calls {
        let out = call.await.unwrap().expect("everyone gets the answer");
        assert_eq!(out.text().unwrap(), expected_content(&req));
    }
    assert_eq!(
        mock.calls(),
        2,
        "exactly one more call after the leader died"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_redis_down_single_flight_falls_back_to_one_call_per_instance() {
    let mut redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let mut caches = Vec::new();
    for _ in 0..4 {
        caches.push(instance(&mock.base_url(), &redis.url()).await);
    }
    redis.kill();
    let req = request("Redis is down");
    mock.hold_answers();
    let started = Instant::now();
    let mut calls = Vec::new();
    for c in &caches {
        calls.extend(burst(c, &req, 100));
    }
    mock.wait_for_calls(4).await;
    mock.release_all();
    for call in calls {
        let out = call
            .await
            .unwrap()
            .expect("every request succeeds without Redis");
        assert_eq!(out.text().unwrap(), expected_content(&req));
    }
    assert_eq!(mock.calls(), 4, "one call per instance");
    assert!(started.elapsed() < Duration::from_secs(5), "no stall");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refresh_and_no_store_never_wait_on_another_instances_lease() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let a = instance(&mock.base_url(), &redis.url()).await;
    let b = instance(&mock.base_url(), &redis.url()).await;
    let req = request("Refresh me");
    mock.hold_answers();
    let leader = burst(&a, &req, 1);
    mock.wait_for_calls(1).await;

    // A refresh asks anew; it does not take the answer of a call that started before it.
    let refresh = {
        let (b, req) = (b.clone(), req.clone());
        tokio::spawn(async move { b.chat_with(&req, &CacheControl::new().refresh(true)).await })
    };
    mock.wait_for_calls(2).await;
    mock.release_all();
    assert_eq!(refresh.await.unwrap().unwrap().status(), CacheStatus::Miss);
    for call in leader {
        assert_eq!(call.await.unwrap().unwrap().status(), CacheStatus::Miss);
    }

    // A no-store flight takes no lease, so others do not wait for a value it never writes.
    let other = request("Do not store me");
    mock.hold_answers();
    let quiet = {
        let (a, other) = (a.clone(), other.clone());
        tokio::spawn(async move {
            a.chat_with(&other, &CacheControl::new().no_store(true))
                .await
        })
    };
    mock.wait_for_calls(3).await;
    let normal = burst(&b, &other, 1);
    mock.wait_for_calls(4).await;
    mock.release_all();
    assert_eq!(quiet.await.unwrap().unwrap().status(), CacheStatus::Miss);
    for call in normal {
        assert_eq!(call.await.unwrap().unwrap().status(), CacheStatus::Miss);
    }
}

/// A miss with leases costs one Redis command before the fetch (the lookup that takes the
/// lease in the entry's key) and one after it, off the caller's path (the value's `SET`,
/// which replaces the lease: no release script). An L2 hit from another instance is one
/// command too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miss_costs_one_redis_command_before_the_fetch_and_one_after() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let (a, b) = (
        long_lease_instance(&mock, &redis).await,
        long_lease_instance(&mock, &redis).await,
    );
    let req = request("what does a miss cost");
    redis.redis_cli(&["CONFIG", "RESETSTAT"]);
    mock.hold_answers();
    let first = tokio::spawn({
        let (a, req) = (a.clone(), req.clone());
        async move { a.chat(&req).await }
    });
    mock.wait_for_calls(1).await;
    assert_eq!(redis.data_commands(), ["set=1"], "before the fetch");
    assert_eq!(redis.leases_held("ai:cache"), 1);
    mock.release_all();
    assert_eq!(first.await.unwrap().unwrap().status(), CacheStatus::Miss);
    eventually("the value is written", WAIT, || {
        a.stats().cache.l2_writes == 1
    })
    .await;
    assert_eq!(
        redis.data_commands(),
        ["set=2"],
        "the write released the lease"
    );
    assert_eq!(redis.leases_held("ai:cache"), 0);

    let hit = b.chat(&req).await.unwrap();
    assert_eq!(hit.status(), CacheStatus::HitL2);
    assert_eq!(redis.data_commands(), ["set=3"], "an L2 hit is one command");
    assert_eq!(mock.calls(), 1);
}

/// A failed fetch stores nothing and frees the lease at once (compare-and-delete), so the
/// next flight on another instance leads without waiting out the lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fetch_frees_its_lease_for_the_next_flight() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let (a, b) = (
        long_lease_instance(&mock, &redis).await,
        long_lease_instance(&mock, &redis).await,
    );
    let req = request("this one fails first");
    mock.push_reply(support::upstream::MockReply::status(500));
    assert!(a.chat(&req).await.is_err());
    eventually("the lease is freed", WAIT, || {
        redis.leases_held("ai:cache") == 0
    })
    .await;
    assert_eq!(a.stats().cache.l2_writes, 0, "nothing stored");
    let out = b.chat(&req).await.unwrap();
    assert_eq!(out.status(), CacheStatus::Miss);
    assert_eq!(mock.calls(), 2);
}

/// While nearly every L2 lookup hits, lookups send a plain `GET` first (hits cost what a
/// `GET` does) and a miss then costs two commands before its fetch; once misses are common
/// again, the lookup takes the lease in the same round trip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_follow_the_hit_ratio() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let cache = LlmCache::builder()
        .upstream(OpenAiCompatible::new(mock.base_url()).retry(RetryPolicy::none()))
        .redis(redis.url())
        .l1_max_bytes(0)
        .lease_ttl(Duration::from_secs(60))
        .build()
        .await
        .unwrap();
    assert!(!cache.tiers().lookups_get_first(), "a fresh instance");
    let warm: Vec<ChatRequest> = (0..10).map(|i| request(&format!("warm {i}"))).collect();
    for r in &warm {
        cache.chat(r).await.unwrap();
    }
    eventually("the entries are written", WAIT, || {
        cache.stats().cache.l2_writes == 10
    })
    .await;
    // Hits only, until the next retuning has seen them.
    let mut n = 0;
    while !cache.tiers().lookups_get_first() {
        assert_eq!(
            cache.chat(&warm[n % 10]).await.unwrap().status(),
            CacheStatus::HitL2
        );
        n += 1;
        assert!(n < 1_000_000, "lookups never switched to GET first");
        if n.is_multiple_of(100) {
            tokio::task::yield_now().await;
        }
    }
    redis.redis_cli(&["CONFIG", "RESETSTAT"]);
    mock.hold_answers();
    let miss = tokio::spawn({
        let cache = cache.clone();
        async move { cache.chat(&request("a rare miss")).await }
    });
    mock.wait_for_calls(11).await;
    assert_eq!(
        redis.data_commands(),
        ["get=1", "set=1"],
        "GET first, then the lookup that takes the lease"
    );
    mock.release_all();
    assert_eq!(miss.await.unwrap().unwrap().status(), CacheStatus::Miss);

    // Misses only: lookups take the lease in one round trip again.
    let mut i = 0;
    while cache.tiers().lookups_get_first() {
        let batch: Vec<ChatRequest> = (0..20).map(|k| request(&format!("new {i} {k}"))).collect();
        for out in cache.batch(&batch, 20).await {
            assert_eq!(out.unwrap().status(), CacheStatus::Miss);
        }
        i += 1;
        assert!(i < 100_000, "lookups never went back to taking the lease");
    }
}

/// An instance with the default lease (its holder renews it every third of it).
async fn default_lease_instance(upstream_url: &str, redis_url: &str) -> LlmCache {
    LlmCache::builder()
        .upstream(OpenAiCompatible::new(upstream_url).retry(RetryPolicy::none()))
        .redis(redis_url)
        .l2_deadline(Duration::from_millis(250))
        .waiter_deadline(Duration::from_secs(30))
        .build()
        .await
        .expect("build")
}

/// Generous bound on what a waiter may wait once a holder can no longer keep its lease:
/// the default lease (2 s) and a margin for a loaded machine. It used to be the whole
/// 10 s lease (or the 300 s waiter deadline for a marker without expiry).
const AT_MOST: Duration = Duration::from_secs(5);

/// From `lost` (the holder could no longer renew or release) to the waiter's own upstream
/// call, the second the mock saw.
fn extra_wait(mock: &MockUpstream, lost: Instant) -> Duration {
    mock.requests()[1].at.saturating_duration_since(lost)
}

/// A holder whose link to Redis stalls (nothing forwarded either way: it can neither renew
/// nor write nor release) loses its lease within one lease, and a waiter on a healthy link
/// fetches itself then.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_holder_whose_link_stalls_loses_its_lease_within_one_lease() {
    let redis = RedisServer::start();
    let proxy = support::proxy::Proxy::start(redis.addr().parse().unwrap());
    let mock = MockUpstream::start().await;
    let holder = default_lease_instance(&mock.base_url(), &proxy.url()).await;
    let waiter = default_lease_instance(&mock.base_url(), &redis.url()).await;
    let req = request("the holder's link stalls");
    mock.hold_answers();
    let held = {
        let (c, r) = (holder.clone(), req.clone());
        tokio::spawn(async move { c.chat(&r).await })
    };
    mock.wait_for_calls(1).await;
    assert_eq!(redis.leases_held("ai:cache"), 1, "the holder has the lease");
    proxy.stall(true);
    let lost = Instant::now();
    let waited = {
        let (c, r) = (waiter.clone(), req.clone());
        tokio::spawn(async move { c.chat(&r).await })
    };
    mock.wait_for_calls(2).await;
    let extra = extra_wait(&mock, lost);
    mock.release_all();
    let out = waited.await.unwrap().expect("the waiter fetches itself");
    assert_eq!(out.status(), CacheStatus::Miss);
    proxy.stall(false);
    held.await.unwrap().expect("the holder is answered too");
    println!("stalled holder: the waiter waited {extra:?}");
    assert!(extra < AT_MOST, "waited {extra:?}");
}

/// A holder whose ACL user may not run scripts still releases its lease when its fetch
/// fails (a plain read and delete instead of the compare-and-delete script), so a waiter
/// takes over at once, not after the lease (10 s here).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_holder_without_eval_still_releases_after_a_failed_fetch() {
    let redis = RedisServer::start();
    redis.redis_cli(&[
        "ACL",
        "SETUSER",
        "noeval",
        "on",
        ">pw",
        "~*",
        "&*",
        "+@all",
        "-eval",
        "-evalsha",
        "-eval_ro",
        "-evalsha_ro",
        "-fcall",
        "-fcall_ro",
    ]);
    let mock = MockUpstream::start().await;
    let with_lease = |url: String| {
        let upstream = mock.base_url();
        async move {
            LlmCache::builder()
                .upstream(OpenAiCompatible::new(upstream).retry(RetryPolicy::none()))
                .redis(url)
                .l2_deadline(Duration::from_millis(250))
                .lease_ttl(Duration::from_secs(10))
                .build()
                .await
                .expect("build")
        }
    };
    let holder = with_lease(format!("redis://noeval:pw@{}", redis.addr())).await;
    let waiter = with_lease(redis.url()).await;
    let req = request("the holder cannot run scripts");
    mock.set_delay(Duration::from_millis(300));
    mock.push_reply(support::upstream::MockReply::status(500));
    let held = {
        let (c, r) = (holder.clone(), req.clone());
        tokio::spawn(async move { c.chat(&r).await })
    };
    mock.wait_for_calls(1).await;
    let waited = {
        let (c, r) = (waiter.clone(), req.clone());
        tokio::spawn(async move { c.chat(&r).await })
    };
    assert!(held.await.unwrap().is_err(), "the holder's fetch fails");
    let lost = Instant::now();
    mock.wait_for_calls(2).await;
    let extra = extra_wait(&mock, lost);
    let out = waited.await.unwrap().expect("the waiter fetches itself");
    assert_eq!(out.text().unwrap(), expected_content(&req));
    println!("holder without EVAL: the waiter waited {extra:?} after the failed fetch");
    assert!(extra < AT_MOST, "waited {extra:?}");
    assert_eq!(redis.leases_held("ai:cache"), 0);
}

/// A holder whose ACL user may not run scripts renews its lease all the same (`GET` and
/// `PEXPIRE GT` instead of the script) while a fetch outlasts the lease several times, so a
/// waiter never fetches a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_holder_without_eval_keeps_its_lease_while_it_fetches() {
    let redis = RedisServer::start();
    redis.redis_cli(&[
        "ACL",
        "SETUSER",
        "noeval",
        "on",
        ">pw",
        "~*",
        "&*",
        "+@all",
        "-eval",
        "-evalsha",
        "-eval_ro",
        "-evalsha_ro",
    ]);
    let mock = MockUpstream::start().await;
    const LEASE: Duration = Duration::from_secs(1);
    let short_lease = |url: String| {
        let upstream = mock.base_url();
        async move {
            LlmCache::builder()
                .upstream(OpenAiCompatible::new(upstream).retry(RetryPolicy::none()))
                .redis(url)
                .l2_deadline(Duration::from_millis(250))
                .lease_ttl(LEASE)
                .build()
                .await
                .expect("build")
        }
    };
    let holder = short_lease(format!("redis://noeval:pw@{}", redis.addr())).await;
    let waiter = short_lease(redis.url()).await;
    let req = request("a long fetch without scripts");
    mock.hold_answers();
    let held = {
        let (c, r) = (holder.clone(), req.clone());
        tokio::spawn(async move { c.chat(&r).await })
    };
    mock.wait_for_calls(1).await;
    let waited = {
        let (c, r) = (waiter.clone(), req.clone());
        tokio::spawn(async move { c.chat(&r).await })
    };
    eventually("the waiter waits", WAIT, || waiter.tiers().inflight() == 1).await;
    // More than two lease lives pass while the holder renews without scripts: the lease
    // stays alive all along, and nobody else fetches.
    let mut conn = redis.conn().await;
    let key = holder
        .tiers()
        .l2_key(&holder.digest_with(&req, &CacheControl::default()));
    let since = Instant::now();
    while since.elapsed() < LEASE * 2 + LEASE / 4 {
        let pttl: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(pttl > 0, "the lease is alive while the holder renews it");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(mock.calls(), 1, "the waiter did not take the lease over");
    mock.release_all();
    held.await.unwrap().expect("the holder's answer");
    let out = waited.await.unwrap().expect("the waiter's answer");
    assert!(out.status().is_hit(), "{:?}", out.status());
    assert_eq!(mock.calls(), 1);
}

/// The child side of [`a_killed_holder_costs_a_waiter_one_lease_at_most`]: takes a lease
/// and holds it (the mock holds its answer) until the parent kills the process. Does
/// nothing unless the parent set `LLM_CACHE_HOLDER_REDIS`.
#[test]
fn child_lease_holder() {
    let (Ok(redis_url), Ok(upstream_url), Ok(prompt)) = (
        std::env::var("LLM_CACHE_HOLDER_REDIS"),
        std::env::var("LLM_CACHE_HOLDER_UPSTREAM"),
        std::env::var("LLM_CACHE_HOLDER_PROMPT"),
    ) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let cache = default_lease_instance(&upstream_url, &redis_url).await;
        let req = request(&prompt);
        let call = {
            let c = cache.clone();
            tokio::spawn(async move { c.chat(&req).await })
        };
        eventually("this process's flight", WAIT, || {
            cache.tiers().inflight() == 1
        })
        .await;
        println!("child: started");
        let _ = call.await;
    });
}

/// A process killed while it holds a lease leaves a marker nobody renews: the next asker
/// waits one lease at most (it used to be the whole 10 s lease).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_holder_costs_a_waiter_one_lease_at_most() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let prompt = "the holder is killed";
    mock.hold_answers();
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "cross_instance::child_lease_holder",
            "--nocapture",
        ])
        .env("LLM_CACHE_HOLDER_REDIS", redis.url())
        .env("LLM_CACHE_HOLDER_UPSTREAM", mock.base_url())
        .env("LLM_CACHE_HOLDER_PROMPT", prompt)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the holder process");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(next_child_line(&mut lines).await, "child: started");
    mock.wait_for_calls(1).await;
    assert_eq!(
        redis.leases_held("ai:cache"),
        1,
        "the child holds the lease"
    );
    child.kill().await.expect("kill the holder");
    let lost = Instant::now();
    let waiter = default_lease_instance(&mock.base_url(), &redis.url()).await;
    let req = request(prompt);
    let waited = {
        let (c, r) = (waiter.clone(), req.clone());
        tokio::spawn(async move { c.chat(&r).await })
    };
    mock.wait_for_calls(2).await;
    let extra = extra_wait(&mock, lost);
    mock.release_all();
    let out = waited.await.unwrap().expect("the waiter fetches itself");
    assert_eq!(out.status(), CacheStatus::Miss);
    println!("killed holder: the next asker waited {extra:?}");
    assert!(extra < AT_MOST, "waited {extra:?}");
}

/// A marker that no holder of this cache would leave (written without an expiry, or
/// living far longer than a lease) holds a waiter up one lease at most: the waiter gives
/// it an end, then fetches. It used to wait the whole waiter deadline and fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_marker_without_expiry_or_longer_than_a_lease_is_treated_as_expired() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let cache = default_lease_instance(&mock.base_url(), &redis.url()).await;
    let mut conn = redis.conn().await;
    let mut marker = b"LLMC\xfe".to_vec();
    marker.extend_from_slice(&[7u8; 16]);
    for (case, expiry) in [("no expiry", None), ("an hour", Some(3_600_000u64))] {
        let req = request(&format!("a stray marker: {case}"));
        let key = cache
            .tiers()
            .l2_key(&cache.digest_with(&req, &CacheControl::default()));
        let mut set = redis::cmd("SET");
        set.arg(&key).arg(&marker);
        if let Some(ms) = expiry {
            set.arg("PX").arg(ms);
        }
        let () = set.query_async(&mut conn).await.unwrap();
        let started = Instant::now();
        let out = cache
            .chat(&req)
            .await
            .unwrap_or_else(|e| panic!("{case}: {e}"));
        let waited = started.elapsed();
        assert_eq!(out.status(), CacheStatus::Miss, "{case}");
        println!("stray marker ({case}): the caller waited {waited:?}");
        assert!(waited < AT_MOST, "{case}: waited {waited:?}");
    }
    assert_eq!(cache.tiers().stats().stale_leases_expired, 2);
}
