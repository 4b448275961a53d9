//! The dashboard (`GET /dashboard`) in a real browser: Debian's Chromium, headless, loads the
//! page from a live front (real Redis, the mock upstream, an admin key given in the URL
//! fragment) after some traffic, and the numbers it renders must be those of `/stats` and
//! `/health` read at the same point. Chromium comes from `scripts/chromium.sh`, run here
//! when it is missing (it fails loudly, never skips).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::front::PROVIDER_KEY;
use crate::support::redis::RedisServer;
use crate::support::served::Served;
use crate::support::upstream::MockUpstream;
use crate::{cache_status, chat, post};

use llm_cache::serve::CallerKeys;
use serde_json::{Value, json};

const ADMIN_KEY: &str = "adm-dashboard-SECRET-42";
const KEY: &str = "sk-dashboard-caller-0123";

/// The browser, installed by the script when missing.
fn chromium() -> PathBuf {
    if let Some(path) = which("chromium") {
        return path;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/chromium.sh");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()
        .expect("run scripts/chromium.sh");
    assert!(
        out.status.success(),
        "scripts/chromium.sh failed: {}",
        out.status
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    PathBuf::from(
        stdout
            .lines()
            .last()
            .expect("the script prints the path")
            .trim(),
    )
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// The page's DOM after its script ran (`--dump-dom`): virtual time lets the first refresh
/// finish (the fetches are real; virtual time waits for them), the outer bound is generous.
async fn rendered(url: &str) -> String {
    let profile = tempdir();
    let child = tokio::process::Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--virtual-time-budget=3000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start chromium");
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("chromium did not finish within 120 s")
        .expect("chromium ran");
    let _ = std::fs::remove_dir_all(&profile);
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && dom.contains("</html>"),
        "chromium failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    dom
}

fn tempdir() -> PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("chromium-profile-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The text of the element with `id` in `dom` (a leaf: its text up to the next tag).
fn text(dom: &str, id: &str) -> String {
    let at = dom
        .find(&format!(r#"id="{id}""#))
        .unwrap_or_else(|| panic!("no element #{id} in the page:\n{dom}"));
    let rest = &dom[at..];
    let start = rest.find('>').unwrap() + 1;
    let end = rest[start..].find('<').unwrap() + start;
    rest[start..end].trim().to_string()
}

fn count(dom: &str, id: &str) -> u64 {
    let shown = text(dom, id);
    shown
        .parse()
        .unwrap_or_else(|_| panic!("#{id} shows {shown:?}, not a count"))
}

/// A share shown as `12.3%`, checked against `part / whole` to the shown precision.
fn assert_share(dom: &str, id: &str, part: u64, whole: u64) {
    let shown = text(dom, id);
    let value: f64 = shown
        .strip_suffix('%')
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("#{id} shows {shown:?}, not a percentage"));
    let want = 100.0 * part as f64 / whole as f64;
    assert!(
        (value - want).abs() <= 0.051,
        "#{id} shows {shown}, /stats gives {want}"
    );
}

/// Dollars shown as `$0.000123`, checked against `/stats` to the shown precision.
fn assert_dollars(dom: &str, id: &str, want: f64) {
    let shown = text(dom, id);
    let value: f64 = shown
        .strip_prefix('$')
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("#{id} shows {shown:?}, not dollars"));
    assert!(
        (value - want).abs() <= 0.000_000_51,
        "#{id} shows {shown}, /stats gives {want}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_renders_the_numbers_of_stats_in_headless_chromium() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let cache = crate::front::cache_on(&mock, Some(&redis.url())).await;
    let app = llm_cache::serve::builder(cache.clone())
        .upstream_url(mock.base_url())
        .upstream_key(PROVIDER_KEY)
        .callers(CallerKeys::parse(&format!("team {KEY}")).unwrap())
        .admin_key(ADMIN_KEY)
        .build()
        .unwrap();
    let front = Served::start(app).await;

    // Traffic: misses for two models, L1 hits, an L2 hit, embeddings (a miss, a hit).
    let mut second = chat("which model?");
    second["model"] = json!("gpt-4o-mini");
    for (body, want) in [
        (chat("first"), "miss"),
        (chat("first"), "hit-l1"),
        (chat("first"), "hit-l1"),
        (second.clone(), "miss"),
    ] {
        assert_eq!(
            cache_status(&post(&front, Some(KEY), &body, &[]).await),
            want
        );
    }
    cache.flush(Duration::from_secs(30)).await.unwrap();
    cache.clear_l1();
    assert_eq!(
        cache_status(&post(&front, Some(KEY), &second, &[]).await),
        "hit-l2"
    );
    for want in ["miss", "hit-l1"] {
        let response = reqwest::Client::new()
            .post(format!("{}/embeddings", front.v1()))
            .bearer_auth(KEY)
            .json(&json!({"model": "text-embedding-3-small", "input": ["x", "y"]}))
            .send()
            .await
            .unwrap();
        assert_eq!(cache_status(&response), want);
    }
    cache.flush(Duration::from_secs(30)).await.unwrap();

    // Without the key the page says so and shows no numbers.
    let locked = rendered(&format!("{}/dashboard", front.url())).await;
    assert_eq!(text(&locked, "state"), "admin key needed");
    assert_eq!(text(&locked, "l1-hits"), "-");

    let dom = rendered(&format!("{}/dashboard#key={ADMIN_KEY}", front.url())).await;
    let admin = reqwest::Client::new();
    let read = |path: &'static str| {
        let request = admin
            .get(format!("{}{path}", front.url()))
            .bearer_auth(ADMIN_KEY);
        async move { request.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let (stats, health) = (read("/stats").await, read("/health").await);
    assert_eq!(
        text(&dom, "state"),
        "live",
        "the page did not load its data:\n{dom}"
    );
    assert!(!dom.contains(ADMIN_KEY), "the key stays out of the page");

    let c = &stats["cache"];
    let n = |v: &Value| v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"));
    let (l1, l2, coalesced, misses) = (
        n(&c["l1_hits"]),
        n(&c["l2_hits"]),
        n(&c["coalesced"]),
        n(&c["misses"]),
    );
    assert_eq!((l1, l2, misses), (2, 1, 2), "the traffic above: {stats}");
    let lookups = l1 + l2 + coalesced + misses;
    for (id, want) in [
        ("l1-hits", l1),
        ("l2-hits", l2),
        ("coalesced", coalesced),
        ("misses", misses),
        ("lookups", lookups),
        ("calls-saved", n(&stats["upstream_calls_saved"])),
        ("upstream-calls", n(&stats["upstream_calls"])),
        ("tokens-saved", n(&stats["tokens_saved"])),
        ("bypassed", n(&stats["bypassed"])),
        ("semantic-hits", n(&stats["semantic"]["hits"])),
        ("emb-l1", n(&stats["embeddings"]["hits_l1"])),
        ("emb-fetched", n(&stats["embeddings"]["fetched"])),
        ("emb-requests", n(&stats["embeddings"]["requests"])),
        ("breaker-openings", n(&c["breaker_openings"])),
        ("l2-errors", n(&c["l2_errors"])),
        // Not `l1-entries`: moka's count is approximate and may settle between two reads.
    ] {
        assert_eq!(count(&dom, id), want, "#{id} against /stats {stats}");
    }
    assert_eq!(
        n(&stats["upstream_calls_saved"]),
        4,
        "3 chat hits, 1 embeddings request"
    );
    assert_share(&dom, "hit-ratio", l1 + l2 + coalesced, lookups);
    assert_share(&dom, "l1-share", l1, lookups);
    assert_share(&dom, "l2-share", l2, lookups);
    assert_share(&dom, "miss-share", misses, lookups);
    let e = &stats["embeddings"];
    let inputs = n(&e["hits_l1"]) + n(&e["hits_l2"]) + n(&e["coalesced"]) + n(&e["fetched"]);
    assert_share(&dom, "emb-l1-share", n(&e["hits_l1"]), inputs);
    assert_dollars(
        &dom,
        "cost-saved",
        stats["cost_saved_usd"].as_f64().unwrap(),
    );
    assert!(
        stats["cost_saved_usd"].as_f64().unwrap() > 0.0,
        "priced models: {stats}"
    );
    assert_eq!(text(&dom, "breaker"), c["breaker"].as_str().unwrap());
    assert_eq!(text(&dom, "breaker"), "closed");
    assert_eq!(text(&dom, "l2-state"), health["l2"].as_str().unwrap());
    assert_eq!(text(&dom, "l2-state"), "up");

    // Top models by hits (then name): gpt-4.1-mini and text-embedding-3-small (2 each), then
    // gpt-4o-mini (1).
    let per_model = stats["per_model"].as_object().unwrap();
    let mut models: Vec<(&String, &Value)> = per_model.iter().collect();
    models.sort_by(|a, b| n(&b.1["hits"]).cmp(&n(&a.1["hits"])).then(a.0.cmp(b.0)));
    assert_eq!(models[0].0, "gpt-4.1-mini");
    for (i, (name, m)) in models.iter().take(5).enumerate() {
        assert_eq!(&text(&dom, &format!("model-{i}-name")), *name);
        assert_eq!(count(&dom, &format!("model-{i}-hits")), n(&m["hits"]));
        assert_eq!(count(&dom, &format!("model-{i}-misses")), n(&m["misses"]));
        assert_dollars(
            &dom,
            &format!("model-{i}-saved"),
            m["cost_saved_usd"].as_f64().unwrap(),
        );
    }
}
