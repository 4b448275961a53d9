//! The generic engine without any LLM: `TieredCache<V>` for your own serde type under a
//! key you derive yourself with `Digest::of`. Here, a slow "exchange rate" lookup cached
//! per currency pair. Runs with no network: L1-only, or L1 + Redis when `REDIS_URL` is set.
//!
//! ```text
//! cargo run --example tiered_values
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example tiered_values
//! ```

use std::time::{Duration, Instant};

use llm_cache::{Digest, FetchOptions, Result, TieredCache};
use serde::{Deserialize, Serialize};

/// Any `Serialize + DeserializeOwned + Send + Sync + 'static` value can be cached.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Rate {
    pair: String,
    rate: f64,
    source: String,
}

/// The key: everything that identifies the value, versioned so that a change of meaning
/// never reads old entries. `Digest::of` is SHA-256 of these bytes.
fn rate_key(from: &str, to: &str) -> Digest {
    Digest::of(format!("rates/v1/{from}/{to}"))
}

/// The expensive part the cache saves (a database query, an HTTP call...).
async fn look_up(from: &str, to: &str) -> Result<Rate> {
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok(Rate {
        pair: format!("{from}/{to}"),
        rate: if from == to { 1.0 } else { 1.08 },
        source: "example".into(),
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut builder = TieredCache::<Rate>::builder()
        .key_prefix("example:rates")
        .l1_ttl(Duration::from_secs(60))
        .l2_ttl(Duration::from_secs(3600));
    if let Ok(url) = std::env::var("REDIS_URL") {
        builder = builder.redis(url);
    }
    let cache = builder.build().await?;

    for _ in 0..2 {
        let started = Instant::now();
        let key = rate_key("EUR", "USD");
        let rate = cache.get_or_fetch(key, || look_up("EUR", "USD")).await?;
        println!(
            "{:<9} in {:>9.3?}: {:?}",
            rate.status().as_str(),
            started.elapsed(),
            rate.value()
        );
    }

    // Store a value you already have, and read it without ever fetching.
    let same = Rate {
        pair: "USD/USD".into(),
        rate: 1.0,
        source: "constant".into(),
    };
    cache
        .insert(rate_key("USD", "USD"), same, &FetchOptions::new())
        .await?;
    let got = cache.get(&rate_key("USD", "USD")).await;
    println!("get after insert: {:?}", got.map(|c| c.value().clone()));

    // `invalidate` removes it from both tiers (and every instance's L1, with Redis).
    cache.invalidate(&rate_key("EUR", "USD")).await?;
    let key = rate_key("EUR", "USD");
    let after = cache.get_or_fetch(key, || look_up("EUR", "USD")).await?;
    println!("after invalidate: {}", after.status().as_str());

    let stats = cache.stats();
    println!(
        "L1 hits {}, L2 hits {}, misses {}, fetches {}",
        stats.l1_hits, stats.l2_hits, stats.misses, stats.fetches
    );
    Ok(())
}
