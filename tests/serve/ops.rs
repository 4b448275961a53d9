//! The operator's endpoints of the front: `POST /v1/cache/invalidate` (by body, by
//! namespace; who may), the admin key in front of `/health`, `/stats` and `/metrics`, and the
//! figures `/stats` gives the dashboard (upstream calls saved, embeddings).

use crate::front::{self, PROVIDER_KEY};
use crate::support::redis::RedisServer;
use crate::support::served::Served;
use crate::support::upstream::MockUpstream;
use crate::{KEY_A1, KEY_ADMIN, KEY_B1, cache_status, chat, post};

use serde_json::{Value, json};

const ADMIN_KEY: &str = "adm-ops-SECRET-0123456789";

/// POST `body` to the invalidation endpoint with `Authorization: Bearer <key>`.
async fn invalidate(front: &Served, key: Option<&str>, body: &Value) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .post(format!("{}/cache/invalidate", front.v1()))
        .json(body);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn embed(front: &Served, key: &str, input: Value) -> String {
    let response = reqwest::Client::new()
        .post(format!("{}/embeddings", front.v1()))
        .bearer_auth(key)
        .json(&json!({"model": "text-embedding-3-small", "input": input}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    cache_status(&response)
}

async fn status_of(front: &Served, key: Option<&str>, body: &Value) -> String {
    let response = post(front, key, body, &[]).await;
    assert_eq!(response.status(), 200);
    cache_status(&response)
}

#[tokio::test]
async fn a_caller_key_with_allow_invalidate_removes_answers_of_its_own_namespace_only() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let (_cache, front) = front::keyed(&mock, Some(&redis.url())).await;
    let question = chat("what changed?");
    for key in [KEY_A1, KEY_B1] {
        assert_eq!(status_of(&front, Some(key), &question).await, "miss");
        assert_eq!(status_of(&front, Some(key), &question).await, "hit-l1");
    }
    let by_body = json!({"chat": question});

    // No key, a key without the permission, a bad body: refused, nothing removed.
    let (status, e) = invalidate(&front, None, &by_body).await;
    assert_eq!(
        (status, &e["error"]["code"]),
        (401, &json!("missing_api_key"))
    );
    let (status, e) = invalidate(&front, Some(KEY_A1), &by_body).await;
    assert_eq!(status, 403, "{e}");
    assert_eq!(e["error"]["code"], "invalidation_not_allowed");
    let (status, e) = invalidate(&front, Some(KEY_ADMIN), &json!({"namespace": "team-b"})).await;
    assert_eq!(status, 400, "{e}");
    assert_eq!(e["error"]["code"], "invalid_invalidation");
    let as_text = reqwest::Client::new()
        .post(format!("{}/cache/invalidate", front.v1()))
        .bearer_auth(KEY_ADMIN)
        .header("content-type", "text/plain")
        .body(by_body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(as_text.status(), 415);
    assert_eq!(status_of(&front, Some(KEY_A1), &question).await, "hit-l1");

    // By body (the streamed form of the same request has the same key): team-a's answer
    // is gone from both tiers, team-b's stays.
    let mut streamed = question.clone();
    streamed["stream"] = json!(true);
    let (status, done) = invalidate(&front, Some(KEY_ADMIN), &json!({"chat": streamed})).await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["invalidated"], "chat");
    assert_eq!(status_of(&front, Some(KEY_A1), &question).await, "miss");
    assert_eq!(status_of(&front, Some(KEY_B1), &question).await, "hit-l1");

    // Embeddings: only the inputs named.
    assert_eq!(
        embed(&front, KEY_A1, json!(["alpha", "beta"])).await,
        "miss"
    );
    let (status, done) = invalidate(
        &front,
        Some(KEY_ADMIN),
        &json!({"embeddings": {"model": "text-embedding-3-small", "input": "alpha"}}),
    )
    .await;
    assert_eq!((status, &done["inputs"]), (200, &json!(1)), "{done}");
    assert_eq!(
        embed(&front, KEY_A1, json!(["alpha", "beta"])).await,
        "partial"
    );

    // Stored bodies: both the JSON and the streamed answer of a Responses API body, and a
    // completions body; team-b's stays.
    let body_status = |key: &'static str, tail: &'static str, body: Value| {
        let front = &front;
        async move {
            let response = reqwest::Client::new()
                .post(format!("{}/{tail}", front.v1()))
                .bearer_auth(key)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            let status = cache_status(&response);
            response.bytes().await.unwrap();
            status
        }
    };
    let ask = json!({"model": "gpt-4.1-mini", "input": "forget me"});
    let mut ask_streamed = ask.clone();
    ask_streamed["stream"] = json!(true);
    let complete = json!({"model": "gpt-3.5-turbo-instruct", "prompt": "forget me too"});
    for (key, tail, body) in [
        (KEY_A1, "responses", &ask),
        (KEY_A1, "responses", &ask_streamed),
        (KEY_B1, "responses", &ask),
        (KEY_A1, "completions", &complete),
    ] {
        // Stored by the time its body has ended (a stream's once the flight is done).
        assert_eq!(body_status(key, tail, body.clone()).await, "miss");
        assert_eq!(body_status(key, tail, body.clone()).await, "hit-l1");
    }
    let (status, done) = invalidate(&front, Some(KEY_ADMIN), &json!({"responses": ask})).await;
    assert_eq!(
        (status, &done["invalidated"]),
        (200, &json!("responses")),
        "{done}"
    );
    let (status, done) =
        invalidate(&front, Some(KEY_ADMIN), &json!({"completions": complete})).await;
    assert_eq!(
        (status, &done["invalidated"]),
        (200, &json!("completions")),
        "{done}"
    );
    assert_eq!(body_status(KEY_A1, "responses", ask.clone()).await, "miss");
    assert_eq!(
        body_status(KEY_A1, "responses", ask_streamed.clone()).await,
        "miss"
    );
    assert_eq!(
        body_status(KEY_A1, "completions", complete.clone()).await,
        "miss"
    );
    assert_eq!(
        body_status(KEY_B1, "responses", ask.clone()).await,
        "hit-l1"
    );
    let background = json!({"responses": {"model": "m", "input": "x", "background": true}});
    let (status, e) = invalidate(&front, Some(KEY_ADMIN), &background).await;
    assert_eq!(
        (status, &e["error"]["code"]),
        (400, &json!("invalid_invalidation"))
    );

    // The namespace: every answer of team-a, none of team-b's.
    let other = chat("another question");
    assert_eq!(status_of(&front, Some(KEY_A1), &other).await, "miss");
    let (status, done) = invalidate(&front, Some(KEY_ADMIN), &json!({"namespace": true})).await;
    assert_eq!((status, &done["invalidated"]), (200, &json!("namespace")));
    assert_eq!(status_of(&front, Some(KEY_A1), &question).await, "miss");
    assert_eq!(status_of(&front, Some(KEY_A1), &other).await, "miss");
    assert_eq!(embed(&front, KEY_A1, json!("beta")).await, "miss");
    assert_eq!(status_of(&front, Some(KEY_B1), &question).await, "hit-l1");
}

#[tokio::test]
async fn an_open_front_invalidates_only_with_its_admin_key() {
    let mock = MockUpstream::start().await;
    let open = |admin: Option<&str>| {
        let mock = &mock;
        let admin = admin.map(str::to_string);
        async move {
            let cache = front::cache_on(mock, None).await;
            let mut app = llm_cache::serve::builder(cache)
                .upstream_url(mock.base_url())
                .upstream_key(PROVIDER_KEY);
            if let Some(key) = admin {
                app = app.admin_key(key);
            }
            Served::start(app.build().unwrap()).await
        }
    };
    let question = chat("open question");
    let by_body = json!({"chat": question});

    // Without an admin key nobody invalidates (a web page could reach an open front).
    let front = open(None).await;
    assert_eq!(status_of(&front, None, &question).await, "miss");
    let (status, e) = invalidate(&front, None, &by_body).await;
    assert_eq!(
        (status, &e["error"]["code"]),
        (403, &json!("invalidation_disabled"))
    );
    assert_eq!(status_of(&front, None, &question).await, "hit-l1");

    let front = open(Some(ADMIN_KEY)).await;
    assert_eq!(status_of(&front, None, &question).await, "miss");
    let (status, e) = invalidate(&front, None, &by_body).await;
    assert_eq!(
        (status, &e["error"]["code"]),
        (401, &json!("missing_admin_key"))
    );
    let (status, e) = invalidate(&front, Some("adm-wrong"), &by_body).await;
    assert_eq!(
        (status, &e["error"]["code"]),
        (401, &json!("invalid_admin_key"))
    );
    assert!(!e.to_string().contains("adm-"), "{e}");
    assert_eq!(status_of(&front, None, &question).await, "hit-l1");
    let (status, done) = invalidate(&front, Some(ADMIN_KEY), &by_body).await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(status_of(&front, None, &question).await, "miss");
}

#[tokio::test]
async fn pass_through_callers_invalidate_their_own_entries_and_the_namespace_needs_the_admin_key() {
    let mock = MockUpstream::start().await;
    let cache = front::cache_on(&mock, None).await;
    let app = llm_cache::serve::builder(cache)
        .upstream_url(mock.base_url())
        .pass_through_credentials(true)
        .admin_key(ADMIN_KEY)
        .build()
        .unwrap();
    let front = Served::start(app).await;
    let (x, y) = ("sk-provider-X-0123456789", "sk-provider-Y-0123456789");
    let question = chat("whose answer?");
    for key in [x, y] {
        assert_eq!(status_of(&front, Some(key), &question).await, "miss");
    }
    let (status, done) = invalidate(&front, Some(x), &json!({"chat": question})).await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(status_of(&front, Some(x), &question).await, "miss");
    assert_eq!(status_of(&front, Some(y), &question).await, "hit-l1");

    // The namespace holds every caller's entries: the admin key only.
    let (status, e) = invalidate(&front, Some(x), &json!({"namespace": true})).await;
    assert_eq!(
        (status, &e["error"]["code"]),
        (401, &json!("invalid_admin_key"))
    );
    let (status, _) = invalidate(&front, Some(ADMIN_KEY), &json!({"namespace": true})).await;
    assert_eq!(status, 200);
    assert_eq!(status_of(&front, Some(y), &question).await, "miss");
    assert_eq!(mock.calls_to("/v1/chat/completions"), 4);
}

#[tokio::test]
async fn the_admin_key_guards_health_stats_and_metrics_and_the_page_is_served() {
    let mock = MockUpstream::start().await;
    let cache = front::cache_on(&mock, None).await;
    let builder = llm_cache::serve::builder(cache)
        .upstream_url(mock.base_url())
        .upstream_key(PROVIDER_KEY)
        .admin_key(ADMIN_KEY);
    let shown = format!("{builder:?}");
    assert!(!shown.contains(ADMIN_KEY), "{shown}");
    let front = Served::start(builder.build().unwrap()).await;
    let http = reqwest::Client::new();
    for path in ["/health", "/stats", "/metrics"] {
        let url = format!("{}{path}", front.url());
        let refused = http.get(&url).send().await.unwrap();
        assert_eq!(refused.status(), 401, "{path}");
        let e: Value = refused.json().await.unwrap();
        assert_eq!(e["error"]["code"], "missing_admin_key", "{path}");
        let wrong = http.get(&url).bearer_auth("adm-nope").send().await.unwrap();
        assert_eq!(wrong.status(), 401, "{path}");
        let right = http.get(&url).bearer_auth(ADMIN_KEY).send().await.unwrap();
        // /metrics is 404 without a Prometheus handle, but only past the key.
        let want = if path == "/metrics" { 404 } else { 200 };
        assert_eq!(right.status(), want, "{path}");
    }
    // The liveness probe a load balancer calls needs no key, and says nothing but that
    // the process answers.
    let live = http
        .get(format!("{}/livez", front.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
    assert_eq!(live.json::<Value>().await.unwrap(), json!({"ok": true}));
    let health: Value = http
        .get(format!("{}/health", front.url()))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (&health["l2"], &health["breaker"]),
        (&json!("disabled"), &json!("disabled"))
    );

    // The page holds no numbers: anyone gets it, with a policy that loads nothing else.
    let page = http
        .get(format!("{}/dashboard", front.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let policy = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(policy.contains("default-src 'none'") && policy.contains("connect-src 'self'"));
    assert!(page.text().await.unwrap().contains(r#"id="hit-ratio""#));
}

#[tokio::test]
async fn stats_count_the_upstream_calls_saved_and_the_embeddings() {
    let mock = MockUpstream::start().await;
    let (cache, front) = front::keyed(&mock, None).await;
    let question = chat("how many saved?");
    assert_eq!(status_of(&front, Some(KEY_A1), &question).await, "miss");
    assert_eq!(status_of(&front, Some(KEY_A1), &question).await, "hit-l1");
    assert_eq!(status_of(&front, Some(KEY_A1), &question).await, "hit-l1");
    assert_eq!(embed(&front, KEY_A1, json!(["a", "b"])).await, "miss");
    assert_eq!(embed(&front, KEY_A1, json!(["b", "a"])).await, "hit-l1");
    assert_eq!(embed(&front, KEY_A1, json!(["a", "c"])).await, "partial");
    // A stored body (the Responses API): a miss, then a hit.
    let responses = |front: &Served| {
        reqwest::Client::new()
            .post(format!("{}/responses", front.v1()))
            .bearer_auth(KEY_A1)
            .json(&json!({"model": "gpt-4.1-mini", "input": "saved?"}))
            .send()
    };
    for expected in ["miss", "hit-l1"] {
        let response = responses(&front).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(cache_status(&response), expected);
    }
    let stats = cache.stats();
    assert_eq!(stats.embeddings.requests, 3);
    assert_eq!(stats.embeddings.requests_from_cache, 1);
    assert_eq!((stats.embeddings.hits_l1, stats.embeddings.fetched), (3, 3));
    assert_eq!((stats.bodies.l1_hits, stats.bodies.fetches), (1, 1));
    // Two chat answers, one embeddings request and one stored body cost no call; four
    // calls were made.
    assert_eq!(stats.upstream_calls_saved, 4);
    assert_eq!(stats.upstream_calls, 4);
    assert_eq!(
        stats.upstream_calls,
        mock.calls_to("/v1/chat/completions") as u64
            + mock.calls_to("/v1/embeddings") as u64
            + mock.calls_to("/v1/responses") as u64
    );
    let json: Value = front::get_json(&front, "/stats").await;
    assert_eq!(json["upstream_calls_saved"], 4, "{json}");
    assert_eq!(json["bodies"]["l1_hits"], 1, "{json}");
    assert_eq!(json["embeddings"]["requests_from_cache"], 1, "{json}");
}
