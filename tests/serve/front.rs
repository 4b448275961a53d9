//! The HTTP front (`llm_cache::serve`) as the serve tests set it up: the provider key it
//! holds, the caller keys it accepts, and a cache and front on the mock upstream.

use llm_cache::LlmCache;
use llm_cache::serve::CallerKeys;
use llm_cache_test_support::served::Served;
use llm_cache_test_support::upstream::MockUpstream;

/// The provider key the front holds in the tests.
pub const PROVIDER_KEY: &str = "sk-provider-HELD-0123456789";

/// Caller keys: two for team-a, one for team-b, and team-a's admin allowed every directive.
pub const CALLER_KEYS: &str = "\
# namespace  key                      permissions
team-a       sk-caller-a1-0123456789
team-a       sk-caller-a2-0123456789
team-b       sk-caller-b1-0123456789
team-a       sk-caller-admin-01234567 allow=all
";

/// A cache (Redis when `redis` is given) and a front on `mock` holding [`PROVIDER_KEY`],
/// accepting [`CALLER_KEYS`].
pub async fn keyed(mock: &MockUpstream, redis: Option<&str>) -> (LlmCache, Served) {
    let cache = cache_on(mock, redis).await;
    let app = llm_cache::serve::builder(cache.clone())
        .upstream_url(mock.base_url())
        .upstream_key(PROVIDER_KEY)
        .callers(CallerKeys::parse(CALLER_KEYS).unwrap())
        .build()
        .unwrap();
    (cache, Served::start(app).await)
}

/// A cache on `mock` (with Redis at `redis` when given), default settings otherwise.
pub async fn cache_on(mock: &MockUpstream, redis: Option<&str>) -> LlmCache {
    let mut builder = LlmCache::builder();
    if let Some(url) = redis {
        builder = builder.redis(url);
    }
    builder
        .upstream(llm_cache::OpenAiCompatible::new(mock.base_url()))
        .build()
        .await
        .unwrap()
}

/// `GET path` on `front`, its body as JSON.
pub async fn get_json(front: &Served, path: &str) -> serde_json::Value {
    reqwest::get(format!("{}{path}", front.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}
