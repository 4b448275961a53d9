//! The engine's hooks against a real redis-server: a value codec of the caller's own (f32
//! vectors, little-endian) round-trips through L2 between two instances, and a weigher
//! decides what L1 holds.

use llm_cache_test_support as support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use llm_cache::engine::CacheStatus;
use llm_cache::{Codec, Digest, Error, ErrorKind, FetchOptions, Result, TieredCache};
use redis::AsyncCommands;
use support::eventually;
use support::redis::RedisServer;

const WAIT: Duration = Duration::from_secs(10);

/// A vector of f32, 4 little-endian bytes each: what embeddings will store.
struct F32Le {
    encoded: Arc<AtomicUsize>,
    decoded: Arc<AtomicUsize>,
}

impl F32Le {
    fn new() -> Self {
        F32Le {
            encoded: Arc::default(),
            decoded: Arc::default(),
        }
    }
}

impl Codec<Vec<f32>> for F32Le {
    fn encode(&self, value: &Vec<f32>) -> Result<Vec<u8>> {
        self.encoded.fetch_add(1, Ordering::SeqCst);
        Ok(value.iter().flat_map(|x| x.to_le_bytes()).collect())
    }

    fn decode(&self, bytes: &[u8]) -> Result<Vec<f32>> {
        self.decoded.fetch_add(1, Ordering::SeqCst);
        if !bytes.len().is_multiple_of(4) {
            return Err(Error::new(ErrorKind::Codec, "not a whole number of f32"));
        }
        Ok(bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }
}

async fn f32_cache(server: &RedisServer, codec: F32Le) -> TieredCache<Vec<f32>> {
    TieredCache::<Vec<f32>>::builder()
        .redis(server.url())
        .l2_deadline(Duration::from_millis(250))
        .codec(codec)
        .build()
        .await
        .expect("build")
}

fn must_not_fetch() -> std::future::Ready<Result<Vec<f32>>> {
    std::future::ready(Err(Error::fetch_msg("must not fetch")))
}

#[tokio::test]
async fn a_custom_codec_round_trips_through_l2_between_instances() {
    let server = RedisServer::start();
    let writer_codec = F32Le::new();
    let (encoded, writer_decoded) = (
        Arc::clone(&writer_codec.encoded),
        Arc::clone(&writer_codec.decoded),
    );
    let a = f32_cache(&server, writer_codec).await;
    let reader_codec = F32Le::new();
    let reader_decoded = Arc::clone(&reader_codec.decoded);
    let b = f32_cache(&server, reader_codec).await;

    // Odd values on purpose: JSON would round them through text, these bytes do not.
    let vector = vec![0.1_f32, -3.5e-8, f32::MAX, 1.0 / 3.0, -0.0];
    let key = Digest::of("embedding:hello");
    let v = vector.clone();
    let first = a
        .get_or_fetch(key, move || std::future::ready(Ok(v)))
        .await
        .unwrap();
    assert_eq!(first.status(), CacheStatus::Miss);
    eventually("the background L2 write", WAIT, || a.stats().l2_writes >= 1).await;
    assert_eq!(encoded.load(Ordering::SeqCst), 1);

    // The stored payload is the codec's: 4 bytes a float (plus the envelope), not JSON.
    let mut redis = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let stored: Vec<u8> = redis.get(a.l2_key(&key)).await.unwrap();
    let as_le: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
    assert!(
        stored.windows(as_le.len()).any(|w| w == as_le.as_slice()),
        "the f32 bytes are not in the stored entry"
    );

    let got = b.get_or_fetch(key, must_not_fetch).await.unwrap();
    assert_eq!(got.status(), CacheStatus::HitL2);
    assert_eq!(
        got.value().iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
        vector.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
        "bit for bit"
    );
    assert_eq!(reader_decoded.load(Ordering::SeqCst), 1);

    // L1 hits never call the codec.
    for _ in 0..10 {
        let hit = a.get_or_fetch(key, must_not_fetch).await.unwrap();
        assert_eq!(hit.status(), CacheStatus::HitL1);
        let hit = b.get_or_fetch(key, must_not_fetch).await.unwrap();
        assert_eq!(hit.status(), CacheStatus::HitL1);
    }
    assert_eq!(encoded.load(Ordering::SeqCst), 1);
    assert_eq!(writer_decoded.load(Ordering::SeqCst), 0);
    assert_eq!(reader_decoded.load(Ordering::SeqCst), 1);

    // An instance with the default (JSON) codec sees the entry as corrupt: a miss.
    let json = TieredCache::<Vec<f32>>::builder()
        .redis(server.url())
        .l2_deadline(Duration::from_millis(250))
        .build()
        .await
        .unwrap();
    let again = json
        .get_or_fetch(key, || std::future::ready(Ok(vec![9.0])))
        .await
        .unwrap();
    assert_eq!(again.status(), CacheStatus::Miss);
    assert_eq!(json.stats().corrupt_entries, 1);
}

#[tokio::test]
async fn a_codec_that_fails_to_encode_stores_nothing() {
    struct Refuses;
    impl Codec<Vec<f32>> for Refuses {
        fn encode(&self, _: &Vec<f32>) -> Result<Vec<u8>> {
            Err(Error::new(ErrorKind::Codec, "refused"))
        }
        fn decode(&self, _: &[u8]) -> Result<Vec<f32>> {
            unreachable!("nothing was stored")
        }
    }
    let c = TieredCache::<Vec<f32>>::builder()
        .codec(Refuses)
        .build()
        .await
        .unwrap();
    // A fetched value is served, not stored.
    let served = c
        .get_or_fetch(Digest::of("k"), || std::future::ready(Ok(vec![1.0])))
        .await
        .unwrap();
    assert_eq!(served.value(), &vec![1.0]);
    assert!(c.get(&Digest::of("k")).await.is_none());
    let e = c
        .insert(Digest::of("k"), vec![2.0], &FetchOptions::default())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Codec, "{e}");
    assert!(c.get(&Digest::of("k")).await.is_none());
}

#[tokio::test]
async fn a_weigher_decides_what_l1_holds() {
    let weighed = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&weighed);
    // Every entry weighs 4000 of 10 000: L1 holds at most two, though each encodes to a few bytes.
    let c = TieredCache::<Vec<f32>>::builder()
        .l1_max_bytes(10_000)
        .weigher(move |_: &Vec<f32>, _encoded_len| {
            counted.fetch_add(1, Ordering::SeqCst);
            4000
        })
        .build()
        .await
        .unwrap();
    for i in 0..10 {
        let v = vec![i as f32];
        c.get_or_fetch(Digest::of(format!("k{i}")), move || {
            std::future::ready(Ok(v))
        })
        .await
        .unwrap();
    }
    c.run_pending_tasks().await;
    let stats = c.stats();
    assert!(
        (1..=2).contains(&stats.l1_entries),
        "{} entries in L1",
        stats.l1_entries
    );
    assert!(stats.l1_bytes <= 10_000, "{} bytes in L1", stats.l1_bytes);
    assert_eq!(weighed.load(Ordering::SeqCst), 10);

    // The same values under the default weight all fit.
    let plain = TieredCache::<Vec<f32>>::builder()
        .l1_max_bytes(10_000)
        .build()
        .await
        .unwrap();
    for i in 0..4 {
        let v = vec![i as f32];
        plain
            .get_or_fetch(Digest::of(format!("k{i}")), move || {
                std::future::ready(Ok(v))
            })
            .await
            .unwrap();
    }
    plain.run_pending_tasks().await;
    assert_eq!(plain.stats().l1_entries, 4);
}
