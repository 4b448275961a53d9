//! An entry answers only for its own key, signed entries cannot be forged, and caches with
//! different key prefixes never share a Redis key: real redis-server, mock upstream.

use llm_cache_test_support as support;

use std::time::Duration;

use llm_cache::envelope::{self, MacKeys};
use llm_cache::{
    CacheControl, CacheStatus, ChatMessage, ChatRequest, ErrorKind, LlmCache, OpenAiCompatible,
    RetryPolicy,
};
use redis::AsyncCommands;
use support::eventually;
use support::redis::RedisServer;
use support::upstream::{MockUpstream, expected_content};

const WAIT: Duration = Duration::from_secs(10);
const SECRET_A: &[u8] = b"secret A: 32 random bytes here!!";
const SECRET_B: &[u8] = b"secret B: 32 random bytes here!!";

fn request(prompt: &str) -> ChatRequest {
    ChatRequest::new("gpt-4.1").message(ChatMessage::user(prompt))
}

fn tenant(name: &str) -> CacheControl {
    CacheControl::new().namespace(name)
}

async fn cache_with(
    mock: &MockUpstream,
    redis: &RedisServer,
    prefix: &str,
    secrets: &[&[u8]],
) -> LlmCache {
    let mut b = LlmCache::builder()
        .upstream(
            OpenAiCompatible::new(mock.base_url())
                .api_key("sk-test")
                .retry(RetryPolicy::none()),
        )
        .redis(redis.url())
        .key_prefix(prefix)
        .l2_deadline(Duration::from_millis(250))
        .waiter_deadline(Duration::from_secs(2));
    if !secrets.is_empty() {
        b = b.mac_secrets(secrets.iter().copied());
    }
    b.build().await.expect("build")
}

async fn cache(mock: &MockUpstream, redis: &RedisServer) -> LlmCache {
    cache_with(mock, redis, "ai:cache", &[]).await
}

/// The Redis key of `request` in `control`'s namespace.
fn redis_key(cache: &LlmCache, request: &ChatRequest, control: &CacheControl) -> String {
    cache.tiers().l2_key(&cache.digest_with(request, control))
}

#[tokio::test]
async fn an_entry_copied_under_another_key_is_a_miss_that_gets_refetched() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let writer = cache(&mock, &redis).await;
    let (x, y, z) = (
        request("question x"),
        request("question y"),
        request("question z"),
    );
    let t1 = tenant("t1");
    writer.chat_with(&x, &t1).await.unwrap();
    writer.chat(&y).await.unwrap();
    eventually("two L2 writes", WAIT, || {
        writer.stats().cache.l2_writes == 2
    })
    .await;
    let mut conn = redis.conn().await;
    let x_bytes: Vec<u8> = conn.get(redis_key(&writer, &x, &t1)).await.unwrap();

    // X's bytes placed under: another request (Y, stored), a request never asked (Z), and
    // the same request in another tenant's namespace.
    let places = [
        ("another request", y.clone(), CacheControl::new()),
        ("a request never asked", z.clone(), CacheControl::new()),
        ("another tenant", x.clone(), tenant("t2")),
    ];
    let reader = cache(&mock, &redis).await;
    for (i, (what, req, control)) in places.iter().enumerate() {
        let key = redis_key(&reader, req, control);
        let _: () = conn.set(&key, x_bytes.clone()).await.unwrap();
        let calls = mock.calls();
        let got = reader.chat_with(req, control).await.unwrap();
        assert_eq!(got.status(), CacheStatus::Miss, "{what}");
        assert_eq!(got.text().unwrap(), expected_content(req), "{what}");
        assert_eq!(mock.calls(), calls + 1, "{what}: refetched");
        assert_eq!(
            reader.stats().cache.corrupt_entries,
            i as u64 + 1,
            "{what}: counted as corrupt"
        );
        // Removed, then overwritten by the refetched answer, which answers for its key.
        eventually("the refetched answer is written", WAIT, || {
            reader.stats().cache.l2_writes == i as u64 + 1
        })
        .await;
        let third = cache(&mock, &redis).await;
        let again = third.chat_with(req, control).await.unwrap();
        assert_eq!(again.status(), CacheStatus::HitL2, "{what}");
        assert_eq!(again.text().unwrap(), expected_content(req), "{what}");
    }
    // X itself, in its own tenant, still answers from L2.
    let fresh = cache(&mock, &redis).await;
    let own = fresh.chat_with(&x, &t1).await.unwrap();
    assert_eq!(own.status(), CacheStatus::HitL2);
    assert_eq!(own.text().unwrap(), expected_content(&x));
}

#[tokio::test]
async fn entries_of_the_previous_envelope_version_are_misses() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let c = cache(&mock, &redis).await;
    let req = request("old entry");
    let key = redis_key(&c, &req, &CacheControl::new());
    // A well-formed version-1 entry (26-byte header, xxh3 trailer) holding a wrong answer.
    let payload = br#"{"id":"x","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"stale"},"finish_reason":"stop"}]}"#;
    let mut v1 = b"LLMC\x01\x00".to_vec();
    v1.extend_from_slice(&llm_cache_now_ms().to_le_bytes());
    v1.extend_from_slice(&86_400_000u64.to_le_bytes());
    v1.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    v1.extend_from_slice(payload);
    let sum = xxhash_rust::xxh3::xxh3_64(&v1);
    v1.extend_from_slice(&sum.to_le_bytes());
    let mut conn = redis.conn().await;
    let _: () = conn.set(&key, v1).await.unwrap();
    let got = c.chat(&req).await.unwrap();
    assert_eq!(got.status(), CacheStatus::Miss);
    assert_eq!(got.text().unwrap(), expected_content(&req));
    assert_eq!(c.stats().cache.corrupt_entries, 1);
}

fn llm_cache_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A forged answer for `request`, sealed as this crate would (checksum and key right),
/// signed with `keys` (none: unsigned).
fn forged(cache: &LlmCache, request: &ChatRequest, keys: &MacKeys) -> Vec<u8> {
    let payload = br#"{"id":"forged","object":"chat.completion","created":1,"model":"gpt-4.1","choices":[{"index":0,"message":{"role":"assistant","content":"FORGED"},"finish_reason":"stop"}]}"#;
    let key = envelope::Binding::of_key(&redis_key(cache, request, &CacheControl::new()));
    envelope::encode(payload, &key, llm_cache_now_ms(), 86_400_000, 1024, keys)
}

#[tokio::test]
async fn with_a_secret_forged_entries_are_misses_and_secrets_rotate() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let mut conn = redis.conn().await;

    // Without a secret, anyone who can write to Redis can forge an entry: the documented
    // limit of the unsigned mode.
    let open = cache(&mock, &redis).await;
    let req = request("what is 2+2?");
    let key = redis_key(&open, &req, &CacheControl::new());
    let _: () = conn
        .set(&key, forged(&open, &req, &MacKeys::none()))
        .await
        .unwrap();
    let served = open.chat(&req).await.unwrap();
    assert_eq!(served.text().unwrap(), "FORGED");

    // With one, the same forgery (and one signed with another secret) is a miss.
    let signed = cache_with(&mock, &redis, "ai:cache", &[SECRET_A]).await;
    for (n, (what, bytes)) in [
        ("unsigned", forged(&signed, &req, &MacKeys::none())),
        (
            "signed with another secret",
            forged(&signed, &req, &MacKeys::new([SECRET_B]).unwrap()),
        ),
    ]
    .into_iter()
    .enumerate()
    {
        signed.tiers().clear_l1();
        let _: () = conn.set(&key, bytes).await.unwrap();
        let calls = mock.calls();
        let got = signed.chat(&req).await.unwrap();
        assert_eq!(got.status(), CacheStatus::Miss, "{what}");
        assert_eq!(got.text().unwrap(), expected_content(&req), "{what}");
        assert_eq!(mock.calls(), calls + 1, "{what}");
        // The signed answer is written behind the reply: before the next forgery, or it
        // would overwrite it.
        eventually("the signed answer is written", WAIT, || {
            signed.stats().cache.l2_writes > n as u64
        })
        .await;
    }
    assert_eq!(signed.stats().cache.corrupt_entries, 2);

    // Rotation: an instance that signs with B and still verifies A reads A's entries; one
    // with B only sees them as misses; one without a secret refuses signed entries.
    let rotated = cache_with(&mock, &redis, "ai:cache", &[SECRET_B, SECRET_A]).await;
    let hit = rotated.chat(&req).await.unwrap();
    assert_eq!(hit.status(), CacheStatus::HitL2);
    assert_eq!(hit.text().unwrap(), expected_content(&req));
    let b_only = cache_with(&mock, &redis, "ai:cache", &[SECRET_B]).await;
    let calls = mock.calls();
    assert_eq!(b_only.chat(&req).await.unwrap().status(), CacheStatus::Miss);
    assert_eq!(mock.calls(), calls + 1);
    eventually("B's entry is written", WAIT, || {
        b_only.stats().cache.l2_writes == 1
    })
    .await;
    let unsigned = cache(&mock, &redis).await;
    assert_eq!(
        unsigned.chat(&req).await.unwrap().status(),
        CacheStatus::Miss
    );
    assert_eq!(unsigned.stats().cache.corrupt_entries, 1);
}

#[tokio::test]
async fn secrets_are_never_shown() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let c = cache_with(&mock, &redis, "ai:cache", &[SECRET_A, SECRET_B]).await;
    let shown = format!("{c:?} {:?}", c.tiers());
    for secret in [SECRET_A, SECRET_B] {
        let secret = std::str::from_utf8(secret).unwrap();
        assert!(!shown.contains(secret), "{shown}");
        assert!(!shown.contains(&secret[..12]), "{shown}");
    }
    let short = LlmCache::builder()
        .upstream(OpenAiCompatible::new(mock.base_url()))
        .mac_secrets([b"too-short".as_slice()])
        .build()
        .await
        .unwrap_err();
    assert_eq!(short.kind(), ErrorKind::Config);
    let text = format!("{short} {short:?}");
    assert!(text.contains("mac_secrets"), "{text}");
    assert!(!text.contains("too-short"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_that_extends_another_shares_no_key_with_it() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    // Under the old layout `p:lease:{hex}` was both p's lease and p:lease's entry.
    let p = cache_with(&mock, &redis, "p", &[]).await;
    let p_lease = cache_with(&mock, &redis, "p:lease", &[]).await;
    let x = request("shared question");

    // p fetches X and holds its lease (a marker in X's entry key) while the upstream answers
    // slowly; p:lease looks X up meanwhile and must neither take p's lease for a corrupt
    // entry nor delete it.
    mock.hold_answers();
    let leader = tokio::spawn({
        let (p, x) = (p.clone(), x.clone());
        async move { p.chat(&x).await }
    });
    mock.wait_for_calls(1).await;
    let lease = redis_key(&p, &x, &CacheControl::new());
    let mut conn = redis.conn().await;
    let marker: Vec<u8> = conn.get(&lease).await.unwrap();
    assert!(
        marker.starts_with(b"LLMC\xfe") && marker.len() == 21,
        "{marker:?}"
    );
    let other = tokio::spawn({
        let (c, x) = (p_lease.clone(), x.clone());
        async move { c.chat(&x).await }
    });
    mock.wait_for_calls(2).await;
    assert_eq!(p_lease.stats().cache.corrupt_entries, 0);
    assert_eq!(
        conn.get::<_, Vec<u8>>(&lease).await.unwrap(),
        marker,
        "p's lease survived p:lease's lookup"
    );
    mock.release_all();
    assert_eq!(leader.await.unwrap().unwrap().status(), CacheStatus::Miss);
    assert_eq!(other.await.unwrap().unwrap().status(), CacheStatus::Miss);
    eventually("both entries are written", WAIT, || {
        p.stats().cache.l2_writes == 1 && p_lease.stats().cache.l2_writes == 1
    })
    .await;

    // p:lease's entry for Y must not read as a held lease to p: p fetches Y at once
    // instead of waiting out the waiter deadline.
    let y = request("another question");
    p_lease.chat(&y).await.unwrap();
    eventually("Y is written", WAIT, || {
        p_lease.stats().cache.l2_writes == 2
    })
    .await;
    let fresh_p = cache_with(&mock, &redis, "p", &[]).await;
    let got = fresh_p
        .chat(&y)
        .await
        .expect("no wait on a lease nobody holds");
    assert_eq!(got.status(), CacheStatus::Miss);
    assert_eq!(fresh_p.stats().cache.waiter_timeouts, 0);
    assert_eq!(fresh_p.stats().cache.corrupt_entries, 0);

    // Each counts its own entries, and no leases once the fetches are done.
    eventually("Y is written by p too", WAIT, || {
        fresh_p.stats().cache.l2_writes == 1
    })
    .await;
    for (c, entries) in [(&p, 2), (&p_lease, 2)] {
        let stats = c.redis_stats().await.unwrap();
        assert_eq!(stats.keys, entries, "{stats:?}");
        assert_eq!(stats.leases, 0, "{stats:?}");
        assert!(stats.keys_exact);
    }
}

#[tokio::test]
async fn redis_stats_counts_leases_and_the_generations_hash_apart() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let c = cache(&mock, &redis).await;
    c.chat(&request("one")).await.unwrap();
    c.invalidate_namespace("t1").await.unwrap();
    eventually("the entry is written", WAIT, || {
        c.stats().cache.l2_writes == 1
    })
    .await;
    mock.hold_answers();
    let held = tokio::spawn({
        let c = c.clone();
        async move { c.chat(&request("two")).await }
    });
    mock.wait_for_calls(2).await;
    let stats = c.redis_stats().await.unwrap();
    assert_eq!(
        (stats.keys, stats.leases, stats.generations_key),
        (1, 1, true),
        "{stats:?}"
    );
    assert_eq!(stats.db_keys, 3, "{stats:?}");
    mock.release_all();
    held.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_prefix_with_braces_is_refused_naming_the_knob() {
    let mock = MockUpstream::start().await;
    for prefix in ["tenant{1}", "a}b", "{x"] {
        let e = LlmCache::builder()
            .upstream(OpenAiCompatible::new(mock.base_url()))
            .key_prefix(prefix)
            .build()
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config, "{prefix}");
        assert!(e.to_string().contains("key_prefix"), "{e}");
        assert!(e.to_string().contains("brace"), "{e}");
    }
}

#[tokio::test]
async fn an_entry_copied_to_another_prefix_is_a_miss_and_removed() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let mut conn = redis.conn().await;
    // Unsigned, and both caches signing with the same secret: the MAC alone cannot tell
    // svc-a's entries from svc-b's, so the key space must be inside what it covers.
    for (what, secrets) in [("no secret", &[][..]), ("same secret", &[SECRET_A][..])] {
        let a = cache_with(&mock, &redis, "svc-a", secrets).await;
        let b = cache_with(&mock, &redis, "svc-b", secrets).await;
        let req = request(&format!("copied across prefixes, {what}"));
        a.chat(&req).await.unwrap();
        eventually("svc-a's entry is written", WAIT, || {
            a.stats().cache.l2_writes == 1
        })
        .await;
        let (from, to) = (
            redis_key(&a, &req, &CacheControl::new()),
            redis_key(&b, &req, &CacheControl::new()),
        );
        assert_ne!(from, to);
        let copied: bool = redis::cmd("COPY")
            .arg(&from)
            .arg(&to)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(copied, "{what}");
        let calls = mock.calls();
        let got = b.chat(&req).await.unwrap();
        assert_eq!(
            got.status(),
            CacheStatus::Miss,
            "{what}: served across prefixes"
        );
        assert_eq!(mock.calls(), calls + 1, "{what}: refetched");
        assert_eq!(
            b.stats().cache.corrupt_entries,
            1,
            "{what}: counted as corrupt"
        );
        // Removed, then replaced by svc-b's own answer, which svc-b then serves.
        eventually("svc-b's own entry is written", WAIT, || {
            b.stats().cache.l2_writes == 1
        })
        .await;
        let fresh_b = cache_with(&mock, &redis, "svc-b", secrets).await;
        assert_eq!(
            fresh_b.chat(&req).await.unwrap().status(),
            CacheStatus::HitL2,
            "{what}"
        );
        // And the original still answers under svc-a.
        let fresh_a = cache_with(&mock, &redis, "svc-a", secrets).await;
        assert_eq!(
            fresh_a.chat(&req).await.unwrap().status(),
            CacheStatus::HitL2,
            "{what}"
        );
    }
}
