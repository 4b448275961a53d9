//! `rediss://` (feature `tls`) against real `redis-server` processes that speak only TLS,
//! with a CA and certificates made for the test: an L2 round trip between two instances on
//! one server, with mutual TLS, through a Sentinel and across a Cluster; a plain URL to the
//! TLS port, an untrusted server certificate and a missing client certificate fail open
//! (requests succeed, `health()` says why, no password shown); bad TLS knobs are named.

use llm_cache_test_support as support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use llm_cache::engine::CacheStatus;
use llm_cache::{Digest, Error, L2Health, TieredCache, TieredCacheBuilder};
use support::eventually;
use support::tls::{MASTER_NAME, Pki, TlsCluster, TlsRedis};

const WAIT: Duration = Duration::from_secs(10);
const PASSWORD: &str = "tls-s3cret-pw";

fn builder() -> TieredCacheBuilder<String> {
    TieredCache::<String>::builder()
        // TLS handshakes on a loaded 2-core CI machine: keep the deadline generous.
        .l2_deadline(Duration::from_millis(500))
        .breaker_cooldown(Duration::from_millis(200))
}

async fn build(b: TieredCacheBuilder<String>) -> TieredCache<String> {
    b.build().await.expect("build")
}

/// Give `server` an ACL user `cache` with [`PASSWORD`], over a TLS connection of the test's own.
fn add_user(server: &TlsRedis) {
    let mut conn = server.conn();
    let _: () = redis::cmd("ACL")
        .arg(
            &[
                "SETUSER",
                "cache",
                "on",
                &format!(">{PASSWORD}"),
                "~*",
                "&*",
                "+@all",
            ][..],
        )
        .query(&mut conn)
        .expect("ACL SETUSER");
}

/// `rediss://cache:<password>@127.0.0.1:<port>`.
fn url_with_password(server: &TlsRedis) -> String {
    format!("rediss://cache:{PASSWORD}@127.0.0.1:{}", server.port())
}

/// Wait until `cache` has its TLS connection (a handshake on a loaded machine may take
/// longer than `build()` waits), so the round trip's write cannot miss it.
async fn wait_up(cache: &TieredCache<String>) {
    let start = std::time::Instant::now();
    loop {
        let health = cache.health().await;
        if health.l2 == L2Health::Up {
            return;
        }
        assert!(
            start.elapsed() < WAIT,
            "redis never came up over TLS: {health}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Set `key` through `writer` (a miss), wait for its L2 write, and read it through `reader`
/// (a second instance on the same Redis): an L2 hit, not a fetch.
async fn round_trip(writer: &TieredCache<String>, reader: &TieredCache<String>, key: &str) {
    wait_up(writer).await;
    wait_up(reader).await;
    let digest = Digest::of(key);
    let value = format!("value of {key}");
    let writes = writer.stats().l2_writes;
    let first = writer
        .get_or_fetch(digest, {
            let value = value.clone();
            || async move { Ok(value) }
        })
        .await
        .expect("the writer's fetch");
    assert_eq!(first.status(), CacheStatus::Miss);
    eventually("the write to reach Redis over TLS", WAIT, || {
        writer.stats().l2_writes > writes
    })
    .await;
    let got = reader
        .get_or_fetch(digest, || async {
            Err(Error::fetch_msg("must be an L2 hit, not a fetch"))
        })
        .await
        .expect("an L2 hit over TLS");
    assert_eq!(got.status(), CacheStatus::HitL2);
    assert_eq!(got.value(), &value);
}

/// Requests are served with L2 unusable, and `health()` tells why without the password.
async fn fails_open(cache: &TieredCache<String>, why: &str) -> String {
    let calls = Arc::new(AtomicUsize::new(0));
    for i in 0..3 {
        let calls = Arc::clone(&calls);
        let got = cache
            .get_or_fetch(Digest::of(format!("{why} {i}")), || async move {
                calls.fetch_add(1, Ordering::SeqCst);
                Ok("served without L2".to_string())
            })
            .await
            .unwrap_or_else(|e| panic!("{why}: a request failed: {e}"));
        assert_eq!(got.value(), "served without L2");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3, "{why}");
    assert_eq!(cache.stats().l2_writes, 0, "{why}: nothing reached Redis");
    assert_eq!(cache.stats().l2_hits, 0, "{why}");
    // Operations never wait for a connect: until the background attempt has failed, the
    // last error only says "not connected". Wait for the attempt's own error.
    let started = std::time::Instant::now();
    let health = loop {
        let health = cache.health().await;
        let known = health
            .last_error
            .as_deref()
            .is_some_and(|e| !e.contains("not connected"));
        if known || started.elapsed() > Duration::from_secs(10) {
            break health;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(
        matches!(health.l2, L2Health::Down | L2Health::BreakerOpen),
        "{why}: {health}"
    );
    let last = health
        .last_error
        .clone()
        .unwrap_or_else(|| panic!("{why}: no last error in {health}"));
    let shown = format!("{health} {health:?}");
    assert!(!shown.contains(PASSWORD), "{why}: password leaked: {shown}");
    let redis = health.redis.clone().expect("the redis address");
    assert!(redis.contains("***"), "{why}: {redis}");
    last
}

#[tokio::test]
async fn round_trip_over_tls_between_two_instances() {
    let pki = Pki::generate();
    let server = TlsRedis::start(&pki, false, &[]);
    add_user(&server);
    let url = url_with_password(&server);
    let a = build(builder().redis(&url).redis_tls_root_ca(pki.ca())).await;
    let b = build(builder().redis(&url).redis_tls_root_ca(pki.ca())).await;
    round_trip(&a, &b, "over tls").await;

    let health = a.health().await;
    assert_eq!(health.l2, L2Health::Up, "{health}");
    let shown = health.redis.clone().unwrap();
    assert!(
        shown.starts_with("rediss://cache:***@127.0.0.1:") && !shown.contains(PASSWORD),
        "{shown}"
    );
    // What the cache wrote is in the server, under the cache's prefix.
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("ai:cache:*")
        .query(&mut server.conn())
        .unwrap();
    // The entry, and the generations record the cache made when it first loaded it.
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(
        keys.contains(&"ai:cache:generations".to_owned()),
        "{keys:?}"
    );
}

#[tokio::test]
async fn insecure_url_accepts_a_certificate_nobody_vouches_for() {
    // `#insecure` checks nothing: no CA given, and the system's roots do not know ours.
    let pki = Pki::generate();
    let server = TlsRedis::start(&pki, false, &[]);
    let url = format!("{}/#insecure", server.url());
    let a = build(builder().redis(&url)).await;
    let b = build(builder().redis(&url)).await;
    round_trip(&a, &b, "insecure").await;
}

#[tokio::test]
async fn plain_url_to_the_tls_port_fails_open() {
    let pki = Pki::generate();
    let server = TlsRedis::start(&pki, false, &[]);
    let url = format!("redis://cache:{PASSWORD}@127.0.0.1:{}", server.port());
    let cache = build(builder().redis(&url)).await;
    fails_open(&cache, "plain TCP to a TLS port").await;
}

#[tokio::test]
async fn untrusted_server_certificate_fails_open() {
    let pki = Pki::generate();
    let server = TlsRedis::start(&pki, false, &[]);
    add_user(&server);
    let url = url_with_password(&server);
    // The system's roots, then a CA that did not sign the server's certificate.
    for (why, b) in [
        ("system roots", builder().redis(&url)),
        (
            "another CA",
            builder().redis(&url).redis_tls_root_ca(pki.other_ca()),
        ),
    ] {
        let cache = build(b).await;
        let last = fails_open(&cache, why).await;
        assert!(
            last.to_lowercase().contains("certificate"),
            "{why}: the error should say the certificate is the problem: {last}"
        );
    }
}

#[tokio::test]
async fn mutual_tls_needs_the_client_certificate() {
    let pki = Pki::generate();
    let server = TlsRedis::start(&pki, true, &[]);
    add_user(&server);
    let url = url_with_password(&server);
    let with_cert = || {
        builder()
            .redis(&url)
            .redis_tls_root_ca(pki.ca())
            .redis_tls_client_cert(pki.client_cert(), pki.client_key())
    };
    let a = build(with_cert()).await;
    let b = build(with_cert()).await;
    round_trip(&a, &b, "mutual tls").await;

    let without = build(builder().redis(&url).redis_tls_root_ca(pki.ca())).await;
    fails_open(&without, "no client certificate").await;
}

#[tokio::test]
async fn sentinel_and_its_master_over_tls() {
    let pki = Pki::generate();
    let master = TlsRedis::start(&pki, false, &[]);
    let sentinel = TlsRedis::sentinel(&pki, master.port());
    let sentinels = [sentinel.url()];
    let instance = || {
        builder()
            .sentinel(MASTER_NAME, sentinels.clone())
            .redis_tls_root_ca(pki.ca())
    };
    let a = build(instance()).await;
    let b = build(instance()).await;
    round_trip(&a, &b, "through a tls sentinel").await;
    assert_eq!(a.health().await.l2, L2Health::Up);
    // The entry is on the master the sentinel named, reached over TLS.
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("ai:cache:*")
        .query(&mut master.conn())
        .unwrap();
    // The entry, and the generations record the cache made when it first loaded it.
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(
        keys.contains(&"ai:cache:generations".to_owned()),
        "{keys:?}"
    );
    // Invalidation subscribes on the master over TLS too.
    eventually("the invalidation subscription", WAIT, || {
        a.invalidation_subscribed()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_over_tls() {
    let pki = Pki::generate();
    let cluster = TlsCluster::start(&pki);
    let instance = || {
        builder()
            .cluster(cluster.urls())
            .redis_tls_root_ca(pki.ca())
    };
    let a = build(instance()).await;
    let b = build(instance()).await;
    for i in 0..12 {
        round_trip(&a, &b, &format!("cluster key {i}")).await;
    }
    assert_eq!(a.health().await.l2, L2Health::Up);
    // Keys spread over the TLS nodes, and INFO/SCAN reach every primary over TLS.
    let per_node: Vec<u64> = cluster
        .nodes
        .iter()
        .map(|n| redis::cmd("DBSIZE").query(&mut n.conn()).unwrap())
        .collect();
    // Twelve entries and the generations record.
    assert_eq!(per_node.iter().sum::<u64>(), 13, "{per_node:?}");
    assert!(
        per_node.iter().filter(|n| **n > 0).count() >= 2,
        "{per_node:?}"
    );
    let stats = a.redis_stats().await.expect("redis_stats over TLS");
    assert_eq!(stats.keys, 12);
    eventually("the invalidation subscription", WAIT, || {
        a.invalidation_subscribed()
    })
    .await;
}

#[tokio::test]
async fn bad_tls_knobs_are_named_and_keys_never_shown() {
    let pki = Pki::generate();
    let rediss = "rediss://cache:hunter2@127.0.0.1:1";
    let key = String::from_utf8(pki.client_key()).unwrap();
    let key_body = key.lines().nth(1).unwrap().to_string();
    let cases: Vec<(&str, &str, TieredCacheBuilder<String>)> = vec![
        (
            "redis_tls_root_ca",
            "BEGIN CERTIFICATE",
            builder().redis(rediss).redis_tls_root_ca("not pem"),
        ),
        (
            "redis_tls_client_cert",
            "do not go together",
            builder()
                .redis(rediss)
                .redis_tls_client_cert(pki.server_cert(), pki.client_key()),
        ),
        (
            "redis_tls_client_cert",
            "private key",
            builder()
                .redis(rediss)
                .redis_tls_client_cert(pki.client_cert(), "garbage"),
        ),
        (
            "redis_tls_root_ca",
            "BEGIN CERTIFICATE",
            builder()
                .cluster(["rediss://127.0.0.1:1", "rediss://127.0.0.1:2"])
                .redis_tls_root_ca(pki.client_key()),
        ),
        (
            "redis_tls_root_ca",
            "no Redis address uses TLS",
            builder()
                .redis("redis://127.0.0.1:1")
                .redis_tls_root_ca(pki.ca()),
        ),
        (
            "cluster",
            "mix TLS and plain",
            builder().cluster(["rediss://127.0.0.1:1", "redis://127.0.0.1:2"]),
        ),
        (
            "sentinel",
            "mix TLS and plain",
            builder().sentinel(
                MASTER_NAME,
                ["rediss://127.0.0.1:1", "rediss://127.0.0.1:2/#insecure"],
            ),
        ),
    ];
    for (knob, why, b) in cases {
        let shown_builder = format!("{b:?}");
        assert!(
            !shown_builder.contains(&key_body) && !shown_builder.contains("hunter2"),
            "{shown_builder}"
        );
        let e = b
            .build()
            .await
            .err()
            .unwrap_or_else(|| panic!("{knob}: built"));
        let shown = format!("{e} {e:?}");
        assert!(e.is_config(), "{shown}");
        assert!(shown.contains(&format!("`{knob}`")), "{knob}: {shown}");
        assert!(shown.contains(why), "{knob}: {shown}");
        assert!(
            !shown.contains(&key_body) && !shown.contains("hunter2"),
            "secret leaked: {shown}"
        );
    }
}
