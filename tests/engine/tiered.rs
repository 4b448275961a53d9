//! The generic two-tier engine against a real redis-server: tiers, expiry, single-flight,
//! cancellation, panics, errors, corrupt entries and Redis faults.

use llm_cache_test_support as support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use llm_cache::engine::CacheStatus;
use llm_cache::{BreakerState, Digest, Error, FetchOptions, TieredCache};
use redis::AsyncCommands;
use support::eventually;
use support::redis::RedisServer;
use tokio::sync::Semaphore;

const WAIT: Duration = Duration::from_secs(10);

async fn cache(server: &RedisServer) -> TieredCache<String> {
    TieredCache::<String>::builder()
        .redis(server.url())
        .l2_deadline(Duration::from_millis(250))
        .breaker_cooldown(Duration::from_millis(200))
        .build()
        .await
        .expect("build")
}

fn key(n: u32) -> Digest {
    Digest::of(format!("key-{n}"))
}

/// A fetch that counts its calls and returns `value`.
fn counted(
    calls: &Arc<AtomicUsize>,
    value: &str,
) -> impl FnOnce() -> std::future::Ready<llm_cache::Result<String>> + Send + 'static {
    let calls = Arc::clone(calls);
    let value = value.to_string();
    move || {
        calls.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Ok(value))
    }
}

async fn wait_l2_writes(c: &TieredCache<String>, n: u64) {
    eventually("background L2 writes", WAIT, || c.stats().l2_writes >= n).await;
}

#[tokio::test]
async fn miss_then_l1_hit() {
    let server = RedisServer::start();
    let c = cache(&server).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let first = c.get_or_fetch(key(1), counted(&calls, "v1")).await.unwrap();
    assert_eq!(first.status(), CacheStatus::Miss);
    assert_eq!(first.value(), "v1");
    let second = c
        .get_or_fetch(key(1), counted(&calls, "other"))
        .await
        .unwrap();
    assert_eq!(second.status(), CacheStatus::HitL1);
    assert_eq!(second.value(), "v1");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let s = c.stats();
    assert_eq!((s.misses, s.l1_hits, s.fetches), (1, 1, 1));
    assert_eq!(s.breaker, BreakerState::Closed);
}

#[tokio::test]
async fn second_cache_on_same_redis_hits_l2() {
    let server = RedisServer::start();
    let a = cache(&server).await;
    let b = cache(&server).await;
    let calls = Arc::new(AtomicUsize::new(0));
    a.get_or_fetch(key(2), counted(&calls, "shared"))
        .await
        .unwrap();
    wait_l2_writes(&a, 1).await;
    let got = b
        .get_or_fetch(key(2), || async { Err(Error::fetch_msg("must not fetch")) })
        .await
        .unwrap();
    assert_eq!(got.status(), CacheStatus::HitL2);
    assert_eq!(got.value(), "shared");
    // Promoted to B's L1.
    assert_eq!(b.get(&key(2)).await.unwrap().value(), "shared");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(b.stats().l2_hits, 1);
}

#[tokio::test]
async fn entries_expire_in_both_tiers_and_l1_never_outlives_l2() {
    let server = RedisServer::start();
    let writer = TieredCache::<String>::builder()
        .redis(server.url())
        .l1_ttl(Duration::from_secs(60))
        .l2_ttl(Duration::from_millis(600))
        .build()
        .await
        .unwrap();
    let reader = TieredCache::<String>::builder()
        .redis(server.url())
        .l1_ttl(Duration::from_secs(60))
        .build()
        .await
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    writer
        .get_or_fetch(key(3), counted(&calls, "short"))
        .await
        .unwrap();
    wait_l2_writes(&writer, 1).await;
    // The reader promotes the L2 entry; its L1 copy must keep the L2 entry's remaining life.
    let hit = reader
        .get_or_fetch(key(3), counted(&calls, "x"))
        .await
        .unwrap();
    assert_eq!(hit.status(), CacheStatus::HitL2);
    let mut conn = server.conn().await;
    let redis_key = writer.l2_key(&key(3));
    let pttl: i64 = conn.pttl(&redis_key).await.unwrap();
    assert!(pttl > 0 && pttl <= 600, "L2 entry has PX ttl, got {pttl}");

    // Time passing is the scenario here, not a synchronisation.
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(writer.get(&key(3)).await.is_none(), "writer L1 outlived L2");
    assert!(reader.get(&key(3)).await.is_none(), "reader L1 outlived L2");
    let exists: bool = conn.exists(&redis_key).await.unwrap();
    assert!(!exists, "redis expired the key");
    let again = reader
        .get_or_fetch(key(3), counted(&calls, "fresh"))
        .await
        .unwrap();
    assert_eq!(again.status(), CacheStatus::Miss);
    assert_eq!(again.value(), "fresh");
}

#[tokio::test]
async fn ttl_override_and_no_store_and_refresh() {
    let server = RedisServer::start();
    let c = cache(&server).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let mut conn = server.conn().await;

    let opts = FetchOptions::new().ttl(Duration::from_secs(5));
    c.get_or_fetch_with(key(4), &opts, counted(&calls, "a"))
        .await
        .unwrap();
    wait_l2_writes(&c, 1).await;
    let pttl: i64 = conn.pttl(c.l2_key(&key(4))).await.unwrap();
    assert!(
        pttl > 0 && pttl <= 5000,
        "ttl override reached redis: {pttl}"
    );

    let opts = FetchOptions::new().no_store(true);
    let r = c
        .get_or_fetch_with(key(5), &opts, counted(&calls, "b"))
        .await
        .unwrap();
    assert_eq!(r.status(), CacheStatus::Miss);
    assert!(c.get(&key(5)).await.is_none(), "no_store kept it in L1");
    let exists: bool = conn.exists(c.l2_key(&key(5))).await.unwrap();
    assert!(!exists, "no_store wrote to redis");

    let opts = FetchOptions::new().refresh(true);
    let r = c
        .get_or_fetch_with(key(4), &opts, counted(&calls, "a2"))
        .await
        .unwrap();
    assert_eq!(r.status(), CacheStatus::Miss, "refresh never reads a tier");
    assert_eq!(r.value(), "a2");
    assert_eq!(c.get(&key(4)).await.unwrap().value(), "a2");
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn invalidate_removes_from_both_tiers() {
    let server = RedisServer::start();
    let c = cache(&server).await;
    c.insert(key(6), "doomed".into(), &FetchOptions::new())
        .await
        .unwrap();
    wait_l2_writes(&c, 1).await;
    let mut conn = server.conn().await;
    let exists: bool = conn.exists(c.l2_key(&key(6))).await.unwrap();
    assert!(exists);
    c.invalidate(&key(6)).await.unwrap();
    assert!(c.get(&key(6)).await.is_none());
    let exists: bool = conn.exists(c.l2_key(&key(6))).await.unwrap();
    assert!(!exists);
    assert!(c.fetch_stored(&key(6)).await.is_none());
}

/// Spawns `n` callers over `keys` digests whose fetch blocks on `gate`; returns their handles.
fn spawn_gated(
    c: &TieredCache<String>,
    n: usize,
    keys: u32,
    gate: &Arc<Semaphore>,
    calls: &Arc<AtomicUsize>,
) -> Vec<tokio::task::JoinHandle<llm_cache::Result<llm_cache::engine::Cached<String>>>> {
    (0..n)
        .map(|i| {
            let c = c.clone();
            let gate = Arc::clone(gate);
            let calls = Arc::clone(calls);
            let k = (i as u32) % keys;
            tokio::spawn(async move {
                c.get_or_fetch(key(100 + k), move || async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    let _p = gate.acquire().await.unwrap();
                    Ok(format!("value-{k}"))
                })
                .await
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_callers_one_fetch() {
    let server = RedisServer::start();
    let c = cache(&server).await;
    let gate = Arc::new(Semaphore::new(0));
    let calls = Arc::new(AtomicUsize::new(0));
    let handles = spawn_gated(&c, 1000, 1, &gate, &calls);
    // Every caller is attached before the fetch may finish.
    eventually("999 callers coalesced", WAIT, || c.stats().coalesced == 999).await;
    gate.add_permits(1000);
    for h in handles {
        assert_eq!(h.await.unwrap().unwrap().value(), "value-0");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(c.inflight(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_callers_over_ten_keys_ten_fetches() {
    let server = RedisServer::start();
    let c = cache(&server).await;
    let gate = Arc::new(Semaphore::new(0));
    let calls = Arc::new(AtomicUsize::new(0));
    let handles = spawn_gated(&c, 1000, 10, &gate, &calls);
    eventually("990 callers coalesced", WAIT, || c.stats().coalesced == 990).await;
    gate.add_permits(1000);
    for (i, h) in handles.into_iter().enumerate() {
        let v = h.await.unwrap().unwrap();
        assert_eq!(v.value(), &format!("value-{}", i % 10));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 10);
    assert_eq!(c.inflight(), 0);
}

#[tokio::test]
async fn aborted_leader_does_not_cancel_the_flight() {
    let server = RedisServer::start();
    let c = cache(&server).await;
    let gate = Arc::new(Semaphore::new(0));
    let calls = Arc::new(AtomicUsize::new(0));
    let leader = spawn_gated(&c, 1, 1, &gate, &calls).pop().unwrap();
    eventually("the fetch started", WAIT, || {
        calls.load(Ordering::SeqCst) == 1
    })
    .await;
    let waiter = spawn_gated(&c, 1, 1, &gate, &calls).pop().unwrap();
    eventually("a waiter joined", WAIT, || c.stats().coalesced == 1).await;
    leader.abort();
    assert!(leader.await.unwrap_err().is_cancelled());
    gate.add_permits(1);
    assert_eq!(waiter.await.unwrap().unwrap().value(), "value-0");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(c.inflight(), 0);

    // A dropped leader future (not a task) behaves the same: the value lands in L1.
    let calls2 = Arc::clone(&calls);
    let gate2 = Arc::new(Semaphore::new(0));
    let g = Arc::clone(&gate2);
    let fut = c.get_or_fetch(key(7), move || async move {
        calls2.fetch_add(1, Ordering::SeqCst);
        let _p = g.acquire().await.unwrap();
        Ok("landed".to_string())
    });
    let timed_out = tokio::time::timeout(Duration::from_millis(50), fut).await;
    assert!(
        timed_out.is_err(),
        "the fetch is gated, so the caller times out"
    );
    gate2.add_permits(1);
    eventually("the dropped caller's flight landed", WAIT, || {
        c.inflight() == 0
    })
    .await;
    assert_eq!(c.get(&key(7)).await.unwrap().value(), "landed");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn leader_cancelled_in_its_lookup_hands_the_flight_to_a_waiter() {
    let server = RedisServer::start();
    // A deadline longer than the test: the lookup waits on the paused server until resumed.
    let c = TieredCache::<String>::builder()
        .redis(server.url())
        .l2_deadline(Duration::from_secs(60))
        .leases(false)
        .build()
        .await
        .expect("build");
    let calls = Arc::new(AtomicUsize::new(0));
    c.get_or_fetch(key(300), counted(&calls, "connected"))
        .await
        .unwrap();
    server.pause();
    let spawn_caller = |value: &str| {
        let (c, fetch) = (c.clone(), counted(&calls, value));
        tokio::spawn(async move { c.get_or_fetch(key(301), fetch).await })
    };
    let leader = spawn_caller("from-leader");
    eventually("the leader's lookup is out", WAIT, || c.inflight() == 1).await;
    let waiter = spawn_caller("from-waiter");
    eventually("a waiter joined", WAIT, || c.stats().coalesced == 1).await;
    leader.abort();
    assert!(leader.await.unwrap_err().is_cancelled());
    eventually("the waiter leads the flight now", WAIT, || {
        c.stats().coalesced == 0 && c.inflight() == 1
    })
    .await;
    server.resume();
    let got = waiter.await.unwrap().expect("the waiter's own flight");
    assert_eq!(
        (got.status(), got.value().as_str()),
        (CacheStatus::Miss, "from-waiter")
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2, "one fetch per key");
    assert_eq!(c.inflight(), 0);
}

#[tokio::test]
async fn a_value_still_being_written_answers_the_next_flight_of_its_instance() {
    let server = RedisServer::start();
    // No L1, so the next flight has to look further; a deadline the paused server outlasts.
    let c = TieredCache::<String>::builder()
        .redis(server.url())
        .l1_max_bytes(0)
        .l2_deadline(Duration::from_secs(2))
        .build()
        .await
        .expect("build");
    let gate = Arc::new(Semaphore::new(0));
    let calls = Arc::new(AtomicUsize::new(0));
    let first = spawn_gated(&c, 1, 1, &gate, &calls).pop().unwrap();
    // The fetch runs: the flight holds the lease, its L2 write comes next.
    eventually("the fetch started", WAIT, || {
        calls.load(Ordering::SeqCst) == 1
    })
    .await;
    server.pause();
    gate.add_permits(1);
    assert_eq!(first.await.unwrap().unwrap().status(), CacheStatus::Miss);
    // The write (and the lease's release) wait on the paused server. The next flight is
    // answered from the value being written: no L2 round trip, no wait on its own lease,
    // no second fetch.
    let again = c
        .get_or_fetch(key(100), counted(&calls, "second fetch"))
        .await
        .unwrap();
    assert_eq!(
        (again.status(), again.value().as_str()),
        (CacheStatus::HitL1, "value-0")
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    server.resume();
}

#[tokio::test]
async fn panicking_fetch_fails_every_waiter_and_is_not_cached() {
    let server = RedisServer::start();
    // A lease far longer than this test waits: the panicked flight must give it back.
    let c = TieredCache::<String>::builder()
        .redis(server.url())
        .lease_ttl(Duration::from_secs(120))
        .build()
        .await
        .expect("build");
    let gate = Arc::new(Semaphore::new(0));
    let started = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for _ in 0..20 {
        let c = c.clone();
        let gate = Arc::clone(&gate);
        let started = Arc::clone(&started);
        handles.push(tokio::spawn(async move {
            c.get_or_fetch(key(8), move || async move {
                started.fetch_add(1, Ordering::SeqCst);
                let _p = gate.acquire().await.unwrap();
                panic!("boom in fetch");
            })
            .await
        }));
    }
    eventually("19 waiters joined", WAIT, || c.stats().coalesced == 19).await;
    gate.add_permits(1);
    for h in handles {
        let e = h.await.unwrap().unwrap_err();
        assert!(e.is_fetch_aborted(), "{e}");
        assert!(e.to_string().contains("boom in fetch"), "{e}");
    }
    assert_eq!(started.load(Ordering::SeqCst), 1);
    assert_eq!(c.inflight(), 0);
    // An entry's lease sits beside it, in the same Cluster slot.
    let lease = format!("{}.lease", c.l2_key(&key(8)));
    let conn = server.conn().await;
    support::topology::eventually_async("the panicked flight's lease is released", WAIT, || {
        let (mut conn, lease) = (conn.clone(), lease.clone());
        async move { !conn.exists::<_, bool>(&lease).await.unwrap() }
    })
    .await;
    let calls = Arc::new(AtomicUsize::new(0));
    let ok = c.get_or_fetch(key(8), counted(&calls, "ok")).await.unwrap();
    assert_eq!(
        (ok.status(), ok.value().as_str()),
        (CacheStatus::Miss, "ok")
    );
}

#[tokio::test]
async fn fetch_error_reaches_every_waiter_and_is_not_cached() {
    let server = RedisServer::start();
    let c = cache(&server).await;
    let gate = Arc::new(Semaphore::new(0));
    let mut handles = Vec::new();
    for _ in 0..10 {
        let c = c.clone();
        let gate = Arc::clone(&gate);
        handles.push(tokio::spawn(async move {
            c.get_or_fetch(key(9), move || async move {
                let _p = gate.acquire().await.unwrap();
                Err(Error::fetch_msg("upstream said no"))
            })
            .await
        }));
    }
    eventually("9 waiters joined", WAIT, || c.stats().coalesced == 9).await;
    gate.add_permits(1);
    for h in handles {
        let e = h.await.unwrap().unwrap_err();
        assert_eq!(e.message(), "upstream said no");
    }
    assert_eq!(c.stats().fetch_errors, 1);
    assert_eq!(c.inflight(), 0);
    let calls = Arc::new(AtomicUsize::new(0));
    let ok = c
        .get_or_fetch(key(9), counted(&calls, "now ok"))
        .await
        .unwrap();
    assert_eq!(ok.status(), CacheStatus::Miss);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn waiter_gives_up_at_its_deadline_while_the_flight_goes_on() {
    let c = TieredCache::<String>::builder()
        .waiter_deadline(Duration::from_millis(100))
        .build()
        .await
        .unwrap();
    let gate = Arc::new(Semaphore::new(0));
    let g = Arc::clone(&gate);
    let e = c
        .get_or_fetch(key(10), move || async move {
            let _p = g.acquire().await.unwrap();
            Ok("late".to_string())
        })
        .await
        .unwrap_err();
    assert!(e.is_timeout(), "{e}");
    assert_eq!(c.stats().waiter_timeouts, 1);
    gate.add_permits(1);
    eventually("the flight landed", WAIT, || c.inflight() == 0).await;
    assert_eq!(c.get(&key(10)).await.unwrap().value(), "late");
}

#[tokio::test]
async fn corrupt_entries_are_misses_that_get_overwritten() {
    let server = RedisServer::start();
    let c = cache(&server).await;
    let mut conn = server.conn().await;

    // A valid envelope to damage in several ways.
    let none = llm_cache::envelope::MacKeys::none();
    let good = llm_cache::envelope::encode(
        &serde_json::to_vec("real").unwrap(),
        &llm_cache::envelope::Binding::of_key(&c.l2_key(&key(200))),
        1,
        u64::MAX / 2,
        usize::MAX,
        &none,
    );
    let mut bad_checksum = good.clone();
    let mid = bad_checksum.len() / 2;
    bad_checksum[mid] ^= 0x40;
    let mut bad_version = good.clone();
    bad_version[4] = 99;
    let corruptions: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", b"definitely not an envelope".to_vec()),
        ("truncated", good[..good.len() - 3].to_vec()),
        ("checksum", bad_checksum),
        ("version", bad_version),
        ("empty", Vec::new()),
    ];
    for (i, (what, bytes)) in corruptions.into_iter().enumerate() {
        let k = key(200 + i as u32);
        let redis_key = c.l2_key(&k);
        let _: () = conn.set(&redis_key, bytes.clone()).await.unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let got = c
            .get_or_fetch(k, counted(&calls, "refetched"))
            .await
            .unwrap();
        assert_eq!(got.status(), CacheStatus::Miss, "{what}");
        assert_eq!(got.value(), "refetched", "{what}");
        assert_eq!(calls.load(Ordering::SeqCst), 1, "{what}");
        assert_eq!(c.stats().corrupt_entries, i as u64 + 1, "{what}");
        eventually("the corrupt key is overwritten", WAIT, || {
            c.stats().l2_writes > i as u64
        })
        .await;
        let stored: Vec<u8> = conn.get(&redis_key).await.unwrap();
        let bound = llm_cache::envelope::Binding::of_key(&redis_key);
        let env =
            llm_cache::envelope::decode(&stored, &bound, &none).expect("a valid envelope now");
        assert_eq!(&*env.payload, br#""refetched""#, "{what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_paused_and_restarted_every_call_succeeds() {
    let mut server = RedisServer::start();
    let c = TieredCache::<String>::builder()
        .redis(server.url())
        .l2_deadline(Duration::from_millis(50))
        .breaker_threshold(3)
        .breaker_cooldown(Duration::from_millis(100))
        .build()
        .await
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let round = |c: TieredCache<String>, calls: Arc<AtomicUsize>, base: u32| async move {
        // A mix of fresh keys and repeats; each answer must be the key's own.
        for i in 0..30u32 {
            let k = base + (i % 20);
            let got = c
                .get_or_fetch(key(k), counted(&calls, &format!("v{k}")))
                .await
                .expect("fail-open: every call succeeds");
            assert_eq!(got.value(), &format!("v{k}"));
        }
    };
    round(c.clone(), Arc::clone(&calls), 1000).await;

    server.kill();
    round(c.clone(), Arc::clone(&calls), 2000).await;
    let s = c.stats();
    assert!(
        s.l2_errors + s.l2_timeouts > 0,
        "the dead redis was noticed: {s:?}"
    );

    server.restart();
    drive_until_l2_write(&server, &c, &calls, 10_000).await;

    server.pause();
    let before = c.stats();
    round(c.clone(), Arc::clone(&calls), 3000).await;
    let during = c.stats();
    assert!(
        during.l2_timeouts > before.l2_timeouts,
        "paused redis timed out: {during:?}"
    );
    assert!(
        during.breaker == BreakerState::Open || during.l2_skipped > before.l2_skipped,
        "the breaker opened and L2 was skipped: {during:?}"
    );
    server.resume();

    // After recovery, a value written now is an L2 hit for a second cache.
    let k = drive_until_l2_write(&server, &c, &calls, 20_000).await;
    let other = cache(&server).await;
    let hit = other
        .get_or_fetch(key(k), || async { Err(Error::fetch_msg("must hit L2")) })
        .await
        .unwrap();
    assert_eq!(hit.status(), CacheStatus::HitL2);
    assert_eq!(hit.value(), &format!("v{k}"));
    assert_eq!(c.inflight(), 0);
}

#[tokio::test]
async fn build_succeeds_with_redis_down_and_uses_it_when_it_appears() {
    let mut server = RedisServer::start();
    server.kill();
    let c = TieredCache::<String>::builder()
        .redis(server.url())
        .breaker_threshold(2)
        .breaker_cooldown(Duration::from_millis(100))
        .build()
        .await
        .expect("build must not need redis");
    let calls = Arc::new(AtomicUsize::new(0));
    for i in 0..5 {
        let v = c
            .get_or_fetch(key(300 + i), counted(&calls, "v"))
            .await
            .unwrap();
        assert_eq!(v.status(), CacheStatus::Miss);
    }
    assert!(c.stats().l2_writes == 0);
    server.restart();
    drive_until_l2_write(&server, &c, &calls, 400).await;
}

/// Keep requesting fresh keys (so the breaker gets its probes) until one lands in L2;
/// returns that key's number. (Writes retried from before may land meanwhile: the key
/// itself is looked for.)
async fn drive_until_l2_write(
    server: &RedisServer,
    c: &TieredCache<String>,
    calls: &Arc<AtomicUsize>,
    base: u32,
) -> u32 {
    let start = std::time::Instant::now();
    let mut conn = server.conn().await;
    for k in base.. {
        c.get_or_fetch(key(k), counted(calls, &format!("v{k}")))
            .await
            .expect("fail-open");
        let name = c.l2_key(&key(k));
        let landed = tokio::time::timeout(Duration::from_millis(500), async {
            while !conn.exists::<_, bool>(&name).await.unwrap_or(false) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        if landed.is_ok() {
            return k;
        }
        assert!(
            start.elapsed() < WAIT,
            "redis never came back into use: {:?}",
            c.stats()
        );
    }
    unreachable!()
}

#[tokio::test]
async fn bad_knobs_are_named_and_urls_redacted() {
    let e = TieredCache::<String>::builder()
        .redis("redis://user:hunter2@/no-host-here:abc")
        .build()
        .await
        .unwrap_err();
    assert!(e.is_config(), "{e}");
    let shown = format!("{e} {e:?}");
    assert!(shown.contains("redis_url"), "{shown}");
    assert!(!shown.contains("hunter2"), "password leaked: {shown}");

    let e = TieredCache::<String>::builder()
        .redis("http://user:hunter2@localhost:1")
        .build()
        .await
        .unwrap_err();
    assert!(!format!("{e} {e:?}").contains("hunter2"));

    let builder = TieredCache::<String>::builder().redis("redis://:hunter2@127.0.0.1:1");
    assert!(!format!("{builder:?}").contains("hunter2"));

    let cases: Vec<(&str, llm_cache::TieredCacheBuilder<String>)> = vec![
        ("l1_ttl", TieredCache::builder().l1_ttl(Duration::ZERO)),
        ("l2_ttl", TieredCache::builder().l2_ttl(Duration::ZERO)),
        (
            "l2_deadline",
            TieredCache::builder().l2_deadline(Duration::ZERO),
        ),
        (
            "l2_deadline",
            TieredCache::builder().l2_deadline(Duration::from_secs(3600)),
        ),
        (
            "breaker_threshold",
            TieredCache::builder().breaker_threshold(0),
        ),
        (
            "breaker_cooldown",
            TieredCache::builder().breaker_cooldown(Duration::ZERO),
        ),
        ("max_entry_bytes", TieredCache::builder().max_entry_bytes(0)),
        (
            "waiter_deadline",
            TieredCache::builder().waiter_deadline(Duration::ZERO),
        ),
        ("key_prefix", TieredCache::builder().key_prefix("")),
        ("key_prefix", TieredCache::builder().key_prefix("has space")),
        ("l1_max_bytes", TieredCache::builder().l1_max_bytes(10)),
        (
            "l2_write_concurrency",
            TieredCache::builder().l2_write_concurrency(0),
        ),
    ];
    for (knob, b) in cases {
        let e = b.build().await.unwrap_err();
        assert!(e.is_config() && e.message().contains(knob), "{knob}: {e}");
    }
}

#[tokio::test]
async fn oversized_values_are_served_not_stored() {
    let c = TieredCache::<String>::builder()
        .max_entry_bytes(64)
        .build()
        .await
        .unwrap();
    let big = "x".repeat(1000);
    let calls = Arc::new(AtomicUsize::new(0));
    let got = c
        .get_or_fetch(key(11), counted(&calls, &big))
        .await
        .unwrap();
    assert_eq!(got.value(), &big);
    assert!(c.get(&key(11)).await.is_none());
    assert_eq!(c.stats().oversized, 1);
    assert_eq!(c.stats().breaker, BreakerState::Disabled);
}

/// An invalidation that overtakes the background write of the value it invalidates (the
/// write task runs on another worker while the invalidation's UNLINK is out) must not leave
/// the entry in Redis: the write is skipped, or undone when it landed after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_overtaking_a_background_write_leaves_no_entry() {
    let server = RedisServer::start();
    let c = cache(&server).await;
    let mut conn = server.conn().await;
    const ROUNDS: u32 = 300;
    for i in 0..ROUNDS {
        let k = key(5_000 + i);
        let calls = Arc::new(AtomicUsize::new(0));
        c.get_or_fetch(k, counted(&calls, "value")).await.unwrap();
        c.invalidate(&k).await.unwrap();
    }
    eventually("every write landed or was cancelled", WAIT, || {
        let s = c.stats();
        s.l2_writes + s.l2_writes_cancelled == u64::from(ROUNDS)
    })
    .await;
    for i in 0..ROUNDS {
        let redis_key = c.l2_key(&key(5_000 + i));
        let exists: bool = conn.exists(&redis_key).await.unwrap();
        assert!(!exists, "round {i}: the invalidated entry came back");
    }
    eprintln!(
        "writes overtaken by their invalidation: {}",
        c.stats().l2_writes_cancelled
    );
}

/// `get_or_fetch_many`: the misses of a call are fetched by one call of the fetch function,
/// repeats answered once, hits (L1, L2, another flight) never fetched, and each key's
/// outcome its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_keys_fetch_their_misses_together_and_answer_each_key_alone() {
    let server = RedisServer::start();
    let (a, b) = (cache(&server).await, cache(&server).await);
    let calls = Arc::new(std::sync::Mutex::new(Vec::<Vec<usize>>::new()));
    let fetch = |calls: &Arc<std::sync::Mutex<Vec<Vec<usize>>>>| {
        let calls = Arc::clone(calls);
        move |positions: Vec<usize>| {
            calls.lock().unwrap().push(positions.clone());
            async move {
                positions
                    .iter()
                    .map(|p| {
                        if *p == 4 {
                            Err(Error::fetch_msg("no value for position 4"))
                        } else {
                            Ok(format!("v{p}"))
                        }
                    })
                    .collect::<Vec<_>>()
            }
        }
    };
    a.get_or_fetch(key(100), counted(&Arc::default(), "v0"))
        .await
        .unwrap();
    let keys = [key(100), key(101), key(102), key(101), key(104)];
    let out = a
        .get_or_fetch_many(&keys, &FetchOptions::new(), fetch(&calls))
        .await;
    assert_eq!(
        *calls.lock().unwrap(),
        vec![vec![1, 2, 4]],
        "one call, misses only"
    );
    let statuses: Vec<_> = out.iter().map(|r| r.as_ref().map(|c| c.status())).collect();
    assert!(matches!(statuses[0], Ok(CacheStatus::HitL1)));
    assert!(matches!(statuses[1], Ok(CacheStatus::Miss)));
    assert!(matches!(statuses[3], Ok(CacheStatus::Coalesced)));
    assert_eq!(out[2].as_ref().unwrap().value(), "v2");
    assert_eq!(out[3].as_ref().unwrap().value(), "v1");
    assert!(
        out[4]
            .as_ref()
            .unwrap_err()
            .to_string()
            .contains("position 4")
    );
    // The other instance: the stored keys from Redis, the failed one fetched again.
    wait_l2_writes(&a, 3).await;
    let out = b
        .get_or_fetch_many(&keys, &FetchOptions::new(), fetch(&calls))
        .await;
    assert_eq!(calls.lock().unwrap()[1], vec![4]);
    assert!(matches!(
        out[1].as_ref().map(|c| c.status()),
        Ok(CacheStatus::HitL2)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_many_key_fetch_that_panics_or_miscounts_fails_every_key_and_stores_nothing() {
    let c = TieredCache::<String>::builder().build().await.unwrap();
    let keys = [key(110), key(111)];
    let out = c
        .get_or_fetch_many(
            &keys,
            &FetchOptions::new(),
            |_positions: Vec<usize>| async { panic!("the fetch broke") },
        )
        .await;
    for r in &out {
        let e = r.as_ref().unwrap_err();
        assert_eq!(e.kind(), llm_cache::ErrorKind::FetchAborted);
        assert!(e.to_string().contains("the fetch broke"), "{e}");
    }
    let out = c
        .get_or_fetch_many(
            &keys,
            &FetchOptions::new(),
            |_positions: Vec<usize>| async { vec![Ok("only one".to_string())] },
        )
        .await;
    assert!(out.iter().all(|r| {
        r.as_ref()
            .unwrap_err()
            .to_string()
            .contains("1 values for 2 keys")
    }));
    assert_eq!(c.inflight(), 0, "no flight left behind");
    assert!(c.get(&key(110)).await.is_none());
}

/// `n` misses on distinct keys at once, each answered at once (the writes pile up behind
/// each other, as in a burst); every call succeeds.
async fn burst_of_misses(c: &TieredCache<String>, n: u32) {
    let calls: Vec<_> = (0..n)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move {
                c.get_or_fetch(key(10_000 + i), move || {
                    std::future::ready(Ok(format!("value {i}")))
                })
                .await
            })
        })
        .collect();
    for call in calls {
        call.await.unwrap().expect("every miss is answered");
    }
}

/// Entries of the default prefix in Redis now, and lease markers among them (a marker is
/// 21 bytes, no entry is that short).
async fn entries_and_markers(server: &RedisServer) -> (usize, usize) {
    let mut conn = server.conn().await;
    let keys: Vec<String> = {
        let mut iter: redis::AsyncIter<String> = conn.scan_match("ai:cache:{*}").await.unwrap();
        let mut keys = Vec::new();
        while let Some(k) = iter.next_item().await {
            keys.push(k.unwrap());
        }
        keys
    };
    let mut pipe = redis::pipe();
    for k in &keys {
        pipe.cmd("STRLEN").arg(k);
    }
    let lens: Vec<usize> = pipe.query_async(&mut conn).await.unwrap();
    let markers = lens.iter().filter(|n| **n == 21).count();
    (keys.len() - markers, markers)
}

/// A burst of single misses larger than the write bound queues its writes instead of
/// dropping them, and they run under the background deadline without opening the breaker:
/// `flush()` returns once they are all in Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_misses_is_written_in_full_and_flush_waits_for_it() {
    let server = RedisServer::start();
    let c = TieredCache::<String>::builder()
        .redis(server.url())
        .l2_write_concurrency(64)
        .build()
        .await
        .expect("build");
    let started = std::time::Instant::now();
    burst_of_misses(&c, 500).await;
    let answered = started.elapsed();
    c.flush(Duration::from_secs(60)).await.expect("flushed");
    println!(
        "burst: answered in {answered:?}, flushed {:?} later",
        started.elapsed() - answered
    );
    let s = c.stats();
    let (entries, markers) = entries_and_markers(&server).await;
    println!(
        "burst: {entries}/500 in redis after flush, {} dropped, {} breaker openings, {} background timeouts",
        s.dropped_writes, s.breaker_openings, s.l2_background_timeouts
    );
    assert_eq!(s.dropped_writes, 0, "{s:?}");
    assert!(entries >= 495, "{entries}/500 written: {s:?}");
    assert_eq!(markers, 0, "every lease was replaced by its value");
}

/// `close()` writes what is pending and releases the leases of fetches still running, so
/// another instance fetches at once; what is left in Redis is the 500 answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_writes_every_pending_answer_and_releases_held_leases() {
    let server = RedisServer::start();
    // A request deadline a loaded machine meets, so the running fetch surely takes its lease.
    let c = TieredCache::<String>::builder()
        .redis(server.url())
        .l2_deadline(Duration::from_millis(250))
        .build()
        .await
        .expect("build");
    // A fetch still running at close: its lease is released, not left to expire.
    let gate = Arc::new(Semaphore::new(0));
    let running = {
        let (c, gate) = (c.clone(), Arc::clone(&gate));
        tokio::spawn(async move {
            c.get_or_fetch(key(1), move || async move {
                let _ = gate.acquire().await;
                Ok("late".to_string())
            })
            .await
        })
    };
    eventually("the running fetch holds its lease", WAIT, || {
        server.leases_held("ai:cache") == 1
    })
    .await;
    let started = std::time::Instant::now();
    burst_of_misses(&c, 500).await;
    let answered = started.elapsed();
    c.close(Duration::from_secs(60)).await.expect("closed");
    println!(
        "close: 500 misses answered in {answered:?}, closed {:?} later: {:?}",
        started.elapsed() - answered,
        c.stats()
    );
    let (entries, markers) = entries_and_markers(&server).await;
    assert_eq!((entries, markers), (500, 0), "{:?}", c.stats());
    // Another instance fetches the running key itself at once.
    let other = cache(&server).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let out = other
        .get_or_fetch(key(1), counted(&calls, "other"))
        .await
        .unwrap();
    assert_eq!(out.status(), CacheStatus::Miss);
    gate.add_permits(1);
    assert_eq!(running.await.unwrap().unwrap().value(), "late");
    drop(c);
}
