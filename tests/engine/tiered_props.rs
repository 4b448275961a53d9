//! Property tests of the engine without Redis: L1 stays within its byte bound after any
//! sequence of inserts, and concurrent callers cost one fetch per distinct key.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use llm_cache::{Digest, FetchOptions, TieredCache};
use proptest::prelude::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

const BOUND: u64 = 64 * 1024;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn l1_weighted_size_stays_within_bound(
        ops in prop::collection::vec((0u16..300, 0usize..9000), 1..400)
    ) {
        let rt = runtime();
        rt.block_on(async {
            let c = TieredCache::<String>::builder().l1_max_bytes(BOUND).build().await.unwrap();
            for (k, len) in &ops {
                c.insert(Digest::of(k.to_be_bytes()), "x".repeat(*len), &FetchOptions::new())
                    .await
                    .unwrap();
            }
            c.run_pending_tasks().await;
            let s = c.stats();
            prop_assert!(s.l1_bytes <= BOUND, "l1 bytes {} > bound {}", s.l1_bytes, BOUND);
            Ok(())
        })?;
    }

    #[test]
    fn one_fetch_per_distinct_key(keys in prop::collection::vec(0u8..12, 1..120)) {
        let rt = runtime();
        rt.block_on(async {
            let c = TieredCache::<String>::builder().build().await.unwrap();
            let calls = Arc::new(AtomicUsize::new(0));
            let gate = Arc::new(tokio::sync::Semaphore::new(0));
            let distinct: HashSet<u8> = keys.iter().copied().collect();
            let handles: Vec<_> = keys.iter().map(|&k| {
                let (c, calls, gate) = (c.clone(), Arc::clone(&calls), Arc::clone(&gate));
                tokio::spawn(async move {
                    c.get_or_fetch(Digest::of([k]), move || async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        let _p = gate.acquire().await.unwrap();
                        Ok(format!("v{k}"))
                    }).await
                })
            }).collect();
            // Everyone is either a flight leader or attached to one before any fetch ends.
            while c.stats().coalesced + (calls.load(Ordering::SeqCst) as u64) < keys.len() as u64 {
                tokio::task::yield_now().await;
            }
            gate.add_permits(keys.len());
            for (h, k) in handles.into_iter().zip(&keys) {
                let v = h.await.unwrap().unwrap();
                prop_assert_eq!(v.value(), &format!("v{k}"));
            }
            prop_assert_eq!(calls.load(Ordering::SeqCst), distinct.len());
            prop_assert_eq!(c.inflight(), 0);
            Ok(())
        })?;
    }
}
