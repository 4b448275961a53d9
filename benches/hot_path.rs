//! The hot path: an L1 hit through `get_or_fetch`, envelope encode/decode, and the cost of
//! joining a flight that is already running.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use futures_util::FutureExt;
use llm_cache::{Digest, FetchOptions, TieredCache, envelope};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A 2 KB answer that looks like text (so compression behaves as on real answers).
fn text(len: usize) -> String {
    let words = [
        "cache ", "answer ", "token ", "latency ", "redis ", "flight ", "the ",
    ];
    let mut s = String::with_capacity(len + 8);
    let mut i = 0usize;
    while s.len() < len {
        s.push_str(words[(i * 7 + i / 3) % words.len()]);
        i += 1;
    }
    s.truncate(len);
    s
}

fn l1_hit(c: &mut Criterion) {
    let rt = runtime();
    let cache = rt.block_on(async { TieredCache::<String>::builder().build().await.unwrap() });
    let digest = Digest::of("hot key");
    rt.block_on(cache.insert(digest, text(2048), &FetchOptions::new()))
        .unwrap();
    c.bench_function("l1_hit_get_or_fetch_2KB", |b| {
        b.to_async(&rt).iter(|| async {
            let hit = cache
                .get_or_fetch(black_box(digest), || async { unreachable!("hit expected") })
                .await
                .unwrap();
            black_box(hit);
        })
    });
}

fn envelope_codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("envelope");
    // Each read and write hashes the entry's Redis key name (its binding): measured with
    // the codec, as the tiers pay it.
    let name = format!("ai:cache:{{{}}}", llm_cache::Digest::of("the key").to_hex());
    let digest = || envelope::Binding::of_key(black_box(&name));
    let none = envelope::MacKeys::none();
    let keys = envelope::MacKeys::new([b"a 32-byte secret for the bench!!"]).unwrap();
    for size in [2 * 1024, 32 * 1024] {
        let payload = serde_json::to_vec(&text(size)).unwrap();
        group.throughput(Throughput::Bytes(payload.len() as u64));
        group.bench_with_input(BenchmarkId::new("encode", size), &payload, |b, p| {
            b.iter(|| {
                black_box(envelope::encode(
                    black_box(p),
                    &digest(),
                    1,
                    60_000,
                    1024,
                    &none,
                ))
            })
        });
        let encoded = envelope::encode(&payload, &digest(), 1, 60_000, 1024, &none);
        group.bench_with_input(BenchmarkId::new("decode", size), &encoded, |b, e| {
            b.iter(|| black_box(envelope::decode(black_box(e), &digest(), &none).unwrap()))
        });
        let signed = envelope::encode(&payload, &digest(), 1, 60_000, 1024, &keys);
        group.bench_with_input(BenchmarkId::new("decode_signed", size), &signed, |b, e| {
            b.iter(|| black_box(envelope::decode(black_box(e), &digest(), &keys).unwrap()))
        });
    }
    group.finish();
}

fn join_flight(c: &mut Criterion) {
    let rt = runtime();
    let cache = rt.block_on(async { TieredCache::<String>::builder().build().await.unwrap() });
    let digest = Digest::of("cold key");
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    // A leader whose fetch stays pending for the whole benchmark.
    let leader = {
        let cache = cache.clone();
        let gate = Arc::clone(&gate);
        rt.spawn(async move {
            cache
                .get_or_fetch(digest, move || async move {
                    let _p = gate.acquire().await;
                    Ok("v".to_string())
                })
                .await
        })
    };
    rt.block_on(async {
        while cache.inflight() == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    // One poll: L1 miss, find the flight, attach a waiter; then the waiter is dropped.
    c.bench_function("join_running_flight", |b| {
        let _guard = rt.enter();
        b.iter(|| {
            let pending = cache
                .get_or_fetch(black_box(digest), || async { unreachable!() })
                .now_or_never();
            assert!(pending.is_none());
        })
    });
    gate.add_permits(1);
    rt.block_on(leader).unwrap().unwrap();
}

criterion_group!(benches, l1_hit, envelope_codec, join_flight);
criterion_main!(benches);
