//! L1 invalidation across instances over the `{prefix}:invalidate` channel, losing and
//! regaining the subscription, and namespace generations. Real redis-server, real HTTP.

use llm_cache_test_support as support;

use std::time::Duration;

use llm_cache::{
    CacheControl, CacheStatus, ChatMessage, ChatRequest, LlmCache, OpenAiCompatible, RetryPolicy,
};
use support::eventually;
use support::proxy::Proxy;
use support::redis::RedisServer;
use support::topology::eventually_async;
use support::upstream::{MockUpstream, expected_content};

const WAIT: Duration = Duration::from_secs(10);

fn request(prompt: &str) -> ChatRequest {
    ChatRequest::new("gpt-4.1")
        .message(ChatMessage::system("You are terse."))
        .message(ChatMessage::user(prompt))
}

async fn instance(mock: &MockUpstream, redis: &RedisServer) -> LlmCache {
    let cache = LlmCache::builder()
        .upstream(OpenAiCompatible::new(mock.base_url()).retry(RetryPolicy::none()))
        .redis(redis.url())
        .l2_deadline(Duration::from_millis(250))
        .build()
        .await
        .expect("build");
    assert!(
        cache.tiers().invalidation_subscribed(),
        "build() waits for the subscription when Redis is up"
    );
    cache
}

/// Fill every instance's L1 with `req` (the first from upstream, the others from L2).
async fn fill(caches: &[LlmCache], req: &ChatRequest, control: &CacheControl) {
    let writes = caches[0].stats().cache.l2_writes;
    let first = caches[0].chat_with(req, control).await.unwrap();
    assert_eq!(first.status(), CacheStatus::Miss);
    eventually("the L2 write", WAIT, || {
        caches[0].stats().cache.l2_writes > writes
    })
    .await;
    for c in caches {
        let out = c.chat_with(req, control).await.unwrap();
        assert!(out.status().is_hit(), "{:?}", out.status());
        assert_eq!(
            c.chat_with(req, control).await.unwrap().status(),
            CacheStatus::HitL1
        );
    }
}

async fn in_l1(cache: &LlmCache, req: &ChatRequest, control: &CacheControl) -> bool {
    let digest = cache.digest_with(req, control);
    cache.tiers().get(&digest).await.is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invalidate_on_one_instance_empties_the_l1_of_all_four() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let mut caches = Vec::new();
    for _ in 0..4 {
        caches.push(instance(&mock, &redis).await);
    }
    let req = request("What is a cache?");
    let global = CacheControl::new();
    fill(&caches, &req, &global).await;
    assert_eq!(mock.calls(), 1);

    caches[1].invalidate(&req).await.unwrap();
    for (i, c) in caches.iter().enumerate() {
        eventually_async(&format!("instance {i} to drop the entry"), WAIT, || {
            let c = c.clone();
            let req = req.clone();
            async move { !in_l1(&c, &req, &CacheControl::new()).await }
        })
        .await;
    }
    // Gone from L2 too: the next request anywhere is a miss, and then shared again.
    let flights = caches[3].tiers().inflight();
    let again = caches[3].chat(&req).await.unwrap();
    assert_eq!(
        again.status(),
        CacheStatus::Miss,
        "flights before: {flights}"
    );
    assert_eq!(again.text().unwrap(), expected_content(&req));
    assert_eq!(mock.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_subscription_clears_l1_and_resubscribes() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let caches = vec![instance(&mock, &redis).await, instance(&mock, &redis).await];
    let req = request("Subscriptions can die");
    let global = CacheControl::new();
    fill(&caches, &req, &global).await;
    for c in &caches {
        assert_eq!(c.tiers().invalidation_subscriptions(), 1);
    }
    // Three subscriptions per instance: its answers' tier, its vectors' (embeddings) and
    // its stored bodies' (`/responses`, `/completions`).
    let channel = "ai:cache:invalidate";
    assert_eq!(
        redis.redis_cli(&["PUBSUB", "NUMSUB", channel]),
        format!("{channel}\n6")
    );

    redis.redis_cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    for (i, c) in caches.iter().enumerate() {
        eventually(&format!("instance {i} to resubscribe"), WAIT, || {
            c.tiers().invalidation_subscriptions() == 2 && c.tiers().invalidation_subscribed()
        })
        .await;
        assert!(
            !in_l1(c, &req, &global).await,
            "instance {i} must clear its L1 once it is back: it may have missed messages"
        );
    }
    eventually("every tier of both instances to resubscribe", WAIT, || {
        redis.redis_cli(&["PUBSUB", "NUMSUB", channel]) == format!("{channel}\n6")
    })
    .await;

    // Refilled from L2 (no upstream call), and invalidations reach the new subscription.
    let refill = caches[1].chat(&req).await.unwrap();
    assert_eq!(refill.status(), CacheStatus::HitL2);
    assert!(in_l1(&caches[1], &req, &global).await);
    caches[0].invalidate(&req).await.unwrap();
    eventually_async("the resubscribed instance to drop the entry", WAIT, || {
        let c = caches[1].clone();
        let req = req.clone();
        async move { !in_l1(&c, &req, &CacheControl::new()).await }
    })
    .await;
    assert_eq!(mock.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invalidate_namespace_orphans_one_tenant_on_every_instance() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let caches = vec![instance(&mock, &redis).await, instance(&mock, &redis).await];
    let req = request("Tenant data");
    let a = CacheControl::new().namespace("tenant-a");
    let b = CacheControl::new().namespace("tenant-b");
    fill(&caches, &req, &a).await;
    fill(&caches, &req, &b).await;
    assert_eq!(mock.calls(), 2);
    let old_digest = caches[1].digest_with(&req, &a);
    let old_key = caches[1].tiers().l2_key(&old_digest);

    caches[0].invalidate_namespace("tenant-a").await.unwrap();
    eventually(
        "the other instance to learn the new generation",
        WAIT,
        || caches[1].digest_with(&req, &a) != old_digest,
    )
    .await;
    assert_eq!(
        caches[0].digest_with(&req, &a),
        caches[1].digest_with(&req, &a)
    );
    // Tenant A is fetched anew; tenant B is untouched (still in L1).
    assert_eq!(
        caches[1].chat_with(&req, &a).await.unwrap().status(),
        CacheStatus::Miss
    );
    assert_eq!(
        caches[1].chat_with(&req, &b).await.unwrap().status(),
        CacheStatus::HitL1
    );
    assert_eq!(mock.calls(), 3);
    // The old entry is orphaned, not deleted: it expires by its TTL.
    assert_eq!(redis.redis_cli(&["EXISTS", &old_key]), "1");

    // An instance that starts after the bump reads the generation from Redis: it never
    // sees the old entry (its first read is the entry written after the bump).
    eventually("the post-bump write", WAIT, || {
        caches[1].stats().cache.l2_writes >= 1
    })
    .await;
    let late = instance(&mock, &redis).await;
    assert_eq!(late.digest_with(&req, &a), caches[0].digest_with(&req, &a));
    let got = late.chat_with(&req, &a).await.unwrap();
    assert_eq!(got.status(), CacheStatus::HitL2);
    assert_eq!(mock.calls(), 3);

    // Without Redis the bump fails loudly, and this instance stops serving its L1.
    drop(redis);
    let err = caches[1]
        .invalidate_namespace("tenant-b")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), llm_cache::ErrorKind::Redis, "{err}");
    assert!(!in_l1(&caches[1], &req, &b).await);
}

/// An instance that starts cut off from Redis keeps what it fetches in L1 (nobody can reach
/// it to invalidate); once it hears invalidations it clears L1, since something may have
/// been invalidated meanwhile: the first time after start as after a lost subscription.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_starts_cut_off_clears_its_l1_when_it_first_hears() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let proxy = Proxy::start(redis.addr().parse().unwrap());
    proxy.stall(true);
    let late = LlmCache::builder()
        .upstream(OpenAiCompatible::new(mock.base_url()).retry(RetryPolicy::none()))
        .redis(proxy.url())
        .l2_deadline(Duration::from_millis(100))
        .build()
        .await
        .expect("build with Redis unreachable");
    assert!(!late.tiers().invalidation_subscribed());
    let other = instance(&mock, &redis).await;
    let req = request("fetched while cut off");
    let plain = CacheControl::new();
    assert_eq!(late.chat(&req).await.unwrap().status(), CacheStatus::Miss);
    assert_eq!(late.chat(&req).await.unwrap().status(), CacheStatus::HitL1);
    // Meanwhile the answer is invalidated where `late` cannot hear it.
    other.chat(&req).await.unwrap();
    other.invalidate(&req).await.unwrap();
    proxy.stall(false);
    eventually("late hears invalidations", WAIT, || {
        late.tiers().invalidation_subscribed()
    })
    .await;
    assert!(
        !in_l1(&late, &req, &plain).await,
        "L1 was cleared when it first became current"
    );
}

/// With Redis wholly away nobody can invalidate: L1 keeps serving past `unsynced_grace`
/// (it is what holds the upstream bill down during an outage).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_wholly_away_l1_keeps_serving_past_the_grace() {
    let mut redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let grace = Duration::from_millis(200);
    let c = LlmCache::builder()
        .upstream(OpenAiCompatible::new(mock.base_url()).retry(RetryPolicy::none()))
        .redis(redis.url())
        .l2_deadline(Duration::from_millis(100))
        .unsynced_grace(grace)
        .build()
        .await
        .unwrap();
    let req = request("kept through the outage");
    c.chat(&req).await.unwrap();
    assert_eq!(c.chat(&req).await.unwrap().status(), CacheStatus::HitL1);
    redis.kill();
    eventually("the subscription is lost", WAIT, || {
        !c.tiers().invalidation_subscribed()
    })
    .await;
    // An L2 operation finds Redis gone (a miss of another key), then the grace passes.
    c.chat(&request("another")).await.unwrap();
    tokio::time::sleep(grace * 2).await;
    let calls = mock.calls();
    for _ in 0..3 {
        assert_eq!(c.chat(&req).await.unwrap().status(), CacheStatus::HitL1);
    }
    assert_eq!(mock.calls(), calls);
    assert_eq!(c.stats().cache.unsynced_skips, 0);
}

/// How the generations record goes away.
#[derive(Clone, Copy, Debug)]
enum Loss {
    /// `DEL`, then every subscription killed: the old instances reconnect and reload.
    Del,
    /// `FLUSHALL`: entries and record alike (a restart without persistence).
    FlushAll,
    /// Evicted under `allkeys-lfu` with a small `maxmemory`, the entries kept.
    Eviction,
}

const GENERATIONS: &str = "ai:cache:generations";

/// Keep the pre-purge entries hot and make the record the coldest key (as a record
/// nobody read for a while is), then fill Redis past `maxmemory` until the record is
/// evicted; then lift the limit so nothing else is evicted.
async fn evict_the_record(redis: &RedisServer, keep: &[String]) {
    let mut c = redis.conn().await;
    let restore = async |c: &mut redis::aio::MultiplexedConnection, key: &str, freq: u32| {
        let ttl: i64 = redis::cmd("PTTL").arg(key).query_async(c).await.unwrap();
        let dump: Vec<u8> = redis::cmd("DUMP").arg(key).query_async(c).await.unwrap();
        redis::cmd("RESTORE")
            .arg(key)
            .arg(ttl.max(0))
            .arg(dump)
            .arg("REPLACE")
            .arg("FREQ")
            .arg(freq)
            .query_async::<()>(c)
            .await
            .unwrap();
    };
    for key in keep {
        restore(&mut c, key, 200).await;
    }
    let info = redis.redis_cli(&["INFO", "memory"]);
    let used: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let limit = (used + (1 << 20)).to_string();
    redis.redis_cli(&["CONFIG", "SET", "maxmemory", &limit]);
    let mut evicted = false;
    for round in 0..50 {
        if redis.redis_cli(&["HEXISTS", GENERATIONS, "tenant-a"]) == "0" {
            evicted = true;
            break;
        }
        restore(&mut c, GENERATIONS, 0).await;
        let mut pipe = redis::pipe();
        for i in 0..300 {
            pipe.cmd("SET")
                .arg(format!("filler:{round}:{i}"))
                .arg(vec![b'x'; 8 << 10])
                .ignore();
        }
        pipe.query_async::<()>(&mut c).await.unwrap();
    }
    redis.redis_cli(&["CONFIG", "SET", "maxmemory", "0"]);
    assert!(evicted, "the generations record was never evicted");
}

/// After `invalidate_namespace`, the generations record is lost (`DEL`, `FLUSHALL`,
/// eviction): no instance, new or old, serves a purged answer; they converge on one key
/// space, and an invalidation on one reaches the others' L1 again.
async fn a_lost_record_never_brings_purged_answers_back(loss: Loss) {
    let redis = match loss {
        Loss::Eviction => RedisServer::start_with_args(&["--maxmemory-policy", "allkeys-lfu"]),
        _ => RedisServer::start(),
    };
    let mock = MockUpstream::start().await;
    let (a, b) = (instance(&mock, &redis).await, instance(&mock, &redis).await);
    let tenant = CacheControl::new().namespace("tenant-a");
    let prompts: Vec<ChatRequest> = (0..6)
        .map(|i| request(&format!("purged answer {i}")))
        .collect();
    for p in &prompts {
        fill(&[a.clone(), b.clone()], p, &tenant).await;
    }
    let purged: Vec<String> = prompts
        .iter()
        .map(|p| a.tiers().l2_key(&a.digest_with(p, &tenant)))
        .collect();
    let before = b.digest_with(&prompts[0], &tenant);
    a.invalidate_namespace("tenant-a").await.unwrap();
    eventually("b to learn the new generation", WAIT, || {
        b.digest_with(&prompts[0], &tenant) != before
    })
    .await;

    match loss {
        Loss::Del => {
            redis.redis_cli(&["DEL", GENERATIONS]);
            redis.redis_cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
        }
        Loss::FlushAll => {
            redis.redis_cli(&["FLUSHALL"]);
        }
        Loss::Eviction => evict_the_record(&redis, &purged).await,
    }
    if !matches!(loss, Loss::FlushAll) {
        let kept = purged
            .iter()
            .filter(|k| redis.redis_cli(&["EXISTS", k]) == "1")
            .count();
        assert!(
            kept > 0,
            "{loss:?}: the purged entries must still be in Redis"
        );
    }

    // Every first ask after the loss, on a new instance and on both old ones, is fetched.
    let c = instance(&mock, &redis).await;
    let calls = mock.calls();
    for (i, p) in prompts.iter().enumerate() {
        let (name, who) = [("new", &c), ("a", &a), ("b", &b)][i % 3];
        let got = who.chat_with(p, &tenant).await.unwrap();
        assert_eq!(
            got.status(),
            CacheStatus::Miss,
            "{loss:?}: instance {name} served purged answer {i}"
        );
    }
    assert_eq!(mock.calls(), calls + prompts.len());

    // One view again: the same keys on every instance, shared through L2, and an
    // invalidation on one leaves the others' L1.
    eventually("every instance to use one key space", WAIT, || {
        let d = c.digest_with(&prompts[0], &tenant);
        a.digest_with(&prompts[0], &tenant) == d && b.digest_with(&prompts[0], &tenant) == d
    })
    .await;
    let shared = request(&format!("shared after {loss:?}"));
    fill(&[c.clone(), a.clone(), b.clone()], &shared, &tenant).await;
    c.invalidate_with(&shared, &tenant).await.unwrap();
    for (name, who) in [("a", &a), ("b", &b)] {
        eventually_async(&format!("{loss:?}: {name} drops the entry"), WAIT, || {
            let (who, shared, tenant) = (who.clone(), shared.clone(), tenant.clone());
            async move { !in_l1(&who, &shared, &tenant).await }
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deleted_generations_record_never_brings_purged_answers_back() {
    a_lost_record_never_brings_purged_answers_back(Loss::Del).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flushed_generations_record_never_brings_purged_answers_back() {
    a_lost_record_never_brings_purged_answers_back(Loss::FlushAll).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_evicted_generations_record_never_brings_purged_answers_back() {
    a_lost_record_never_brings_purged_answers_back(Loss::Eviction).await;
}

/// At 60 ms round trip (past the 50 ms request deadline) the generations still load: the
/// instance becomes current, and L1 keeps serving past `unsynced_grace`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generations_load_over_a_slow_link() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let proxy = Proxy::start(redis.addr().parse().unwrap());
    proxy.latency(Duration::from_millis(30));
    let grace = Duration::from_millis(200);
    let c = LlmCache::builder()
        .upstream(OpenAiCompatible::new(mock.base_url()).retry(RetryPolicy::none()))
        .redis(proxy.url())
        .unsynced_grace(grace)
        .build()
        .await
        .unwrap();
    eventually("the generations to load over a 60 ms link", WAIT, || {
        c.tiers().invalidation_subscribed()
    })
    .await;
    let req = request("asked over a slow link");
    assert_eq!(c.chat(&req).await.unwrap().status(), CacheStatus::Miss);
    tokio::time::sleep(grace * 2).await;
    assert_eq!(c.chat(&req).await.unwrap().status(), CacheStatus::HitL1);
    assert_eq!(mock.calls(), 1);
}

/// An instance that does not subscribe still reads the generations record, so it shares
/// the fleet's keys (the record's incarnation is part of every key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_does_not_subscribe_shares_the_fleets_keys() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let a = instance(&mock, &redis).await;
    let quiet = LlmCache::builder()
        .upstream(OpenAiCompatible::new(mock.base_url()).retry(RetryPolicy::none()))
        .redis(redis.url())
        .l2_deadline(Duration::from_millis(250))
        .subscribe_invalidations(false)
        .build()
        .await
        .unwrap();
    let req = request("shared with a quiet instance");
    let plain = CacheControl::new();
    eventually("the quiet instance to read the record", WAIT, || {
        quiet.digest_with(&req, &plain) == a.digest_with(&req, &plain)
    })
    .await;
    fill(&[a.clone(), quiet.clone()], &req, &plain).await;
    assert_eq!(mock.calls(), 1);
}
