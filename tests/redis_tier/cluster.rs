//! Redis Cluster: three masters on loopback (`redis-cli --cluster create`), entries spread
//! over all of them, L2 hits from a second instance, invalidation across nodes, and a node
//! killed: only its keys miss, nothing fails.

use llm_cache_test_support as support;

use std::time::Duration;

use llm_cache::{
    BreakerState, CacheStatus, ChatMessage, ChatRequest, LlmCache, OpenAiCompatible, RetryPolicy,
};
use support::eventually;
use support::topology::{RedisCluster, eventually_async};
use support::upstream::{MockUpstream, expected_content};

const WAIT: Duration = Duration::from_secs(10);
const ENTRIES: usize = 30;

fn request(i: usize) -> ChatRequest {
    ChatRequest::new("gpt-4.1").message(ChatMessage::user(format!("cluster question {i}")))
}

/// An instance on the cluster, named with the typed value (`Redis::cluster`); the tests
/// below that build their own use the builder's flat `cluster(..)`.
async fn instance(mock: &MockUpstream, cluster: &RedisCluster, l1: bool) -> LlmCache {
    LlmCache::builder()
        .upstream(OpenAiCompatible::new(mock.base_url()).retry(RetryPolicy::none()))
        .redis(llm_cache::Redis::cluster(cluster.addrs()).expect("cluster addresses"))
        .l1_max_bytes(if l1 { 64 << 20 } else { 0 })
        .l2_deadline(Duration::from_millis(250))
        .build()
        .await
        .expect("build")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn entries_spread_over_three_masters_and_a_dead_node_only_misses_its_own_keys() {
    let mut cluster = RedisCluster::start();
    let mock = MockUpstream::start().await;
    let writer = instance(&mock, &cluster, true).await;
    // L1 off: every request of this instance goes to Redis.
    let reader = instance(&mock, &cluster, false).await;

    let requests: Vec<ChatRequest> = (0..ENTRIES).map(request).collect();
    for r in &requests {
        assert_eq!(writer.chat(r).await.unwrap().status(), CacheStatus::Miss);
    }
    eventually("every L2 write", WAIT, || {
        writer.stats().cache.l2_writes == ENTRIES as u64
    })
    .await;
    let owners: Vec<usize> = requests
        .iter()
        .map(|r| {
            let digest = writer.digest_with(r, &Default::default());
            cluster.owner(&writer.tiers().l2_key(&digest))
        })
        .collect();
    let record = cluster.owner("ai:cache:generations");
    for node in 0..3 {
        let mine = owners.iter().filter(|o| **o == node).count() as u64;
        assert!(mine > 0, "node {node} holds none of the entries");
        // Its entries, and the generations record on its node.
        let expected = mine + u64::from(node == record);
        assert_eq!(cluster.dbsize(node), expected, "node {node}");
    }

    // A second instance finds every entry in L2, on whichever node holds it.
    for r in &requests {
        let out = reader.chat(r).await.unwrap();
        assert_eq!(out.status(), CacheStatus::HitL2);
        assert_eq!(out.text().unwrap(), expected_content(r));
    }
    assert_eq!(mock.calls(), ENTRIES);

    // Invalidation reaches instances subscribed on any node (PUBLISH spans the cluster).
    let watcher = instance(&mock, &cluster, true).await;
    assert!(watcher.tiers().invalidation_subscribed());
    assert_eq!(
        watcher.chat(&requests[0]).await.unwrap().status(),
        CacheStatus::HitL2
    );
    writer.invalidate(&requests[0]).await.unwrap();
    let digest = watcher.digest_with(&requests[0], &Default::default());
    eventually_async("the watcher to drop the invalidated entry", WAIT, || {
        let w = watcher.clone();
        async move { w.tiers().get(&digest).await.is_none() }
    })
    .await;
    // A namespace's new generation (set and published by one script) reaches it too.
    let tenant = llm_cache::CacheControl::new().namespace("tenant");
    let old = watcher.digest_with(&requests[0], &tenant);
    writer.invalidate_namespace("tenant").await.unwrap();
    assert_ne!(writer.digest_with(&requests[0], &tenant), old);
    eventually(
        "the watcher to learn the namespace's new generation",
        WAIT,
        || watcher.digest_with(&requests[0], &tenant) == writer.digest_with(&requests[0], &tenant),
    )
    .await;
    assert_eq!(
        writer.chat(&requests[0]).await.unwrap().status(),
        CacheStatus::Miss
    );
    eventually("the rewrite", WAIT, || {
        writer.stats().cache.l2_writes == ENTRIES as u64 + 1
    })
    .await;
    let calls_before = mock.calls();

    // Statistics sum every primary: the entries, and apart from them the generations hash
    // (leases are gone once their values are written).
    eventually_async(
        "redis_stats to count every entry on the three primaries",
        WAIT,
        || {
            let w = writer.clone();
            async move {
                let stats = w.redis_stats().await.expect("redis_stats");
                stats.keys == ENTRIES as u64
                    && stats.leases == 0
                    && stats.generations_key
                    && stats.keys_exact
            }
        },
    )
    .await;
    assert_eq!(writer.health().await.l2, llm_cache::L2Health::Up);

    // Kill one master: its keys miss (and are fetched), the others keep hitting.
    let dead = owners[1];
    cluster.nodes[dead].kill();
    let before = reader.stats().cache;
    let (mut hits, mut misses) = (0, 0);
    for (r, owner) in requests.iter().zip(&owners) {
        let out = reader
            .chat(r)
            .await
            .expect("nothing fails with a node down");
        assert_eq!(out.text().unwrap(), expected_content(r));
        if *owner == dead {
            assert_eq!(out.status(), CacheStatus::Miss, "a key of the dead node");
            misses += 1;
        } else {
            assert_eq!(out.status(), CacheStatus::HitL2, "a key of a live node");
            hits += 1;
        }
    }
    let after = reader.stats().cache;
    assert_eq!(after.l2_hits - before.l2_hits, hits);
    assert_eq!(mock.calls() - calls_before, misses as usize);
    assert_eq!(
        after.breaker,
        BreakerState::Closed,
        "one dead node never opens the breaker"
    );
    // Health checks during the outage: the tier is degraded (two of three masters answer)
    // and names the dead node, the last error names it too, and checking never opens the
    // breaker for the others.
    let dead_addr = cluster.nodes[dead].addr();
    for _ in 0..8 {
        let h = reader.health().await;
        assert_eq!(h.l2, llm_cache::L2Health::Degraded, "{h}");
        assert_eq!(h.nodes_down, vec![dead_addr.clone()], "{h}");
        assert!(!h.is_ok());
        assert!(h.to_string().contains(&dead_addr), "{h}");
        let last = h.last_error.unwrap_or_default();
        assert!(last.contains("node down"), "{last}");
    }
    assert_eq!(reader.stats().cache.breaker, BreakerState::Closed);
    let live = owners.iter().position(|o| *o != dead).unwrap();
    assert!(
        reader
            .chat(&requests[live])
            .await
            .unwrap()
            .status()
            .is_hit()
    );
    eprintln!(
        "cluster: node {dead} killed: {hits} L2 hits, {misses} misses, {} L2 errors, {} timeouts",
        after.l2_errors - before.l2_errors,
        after.l2_timeouts - before.l2_timeouts
    );
}

/// Requests whose entries (default namespace, or `control`'s) live on a node other than
/// `avoid`.
fn requests_off(
    cache: &LlmCache,
    cluster: &RedisCluster,
    avoid: usize,
    control: &llm_cache::CacheControl,
    n: usize,
) -> Vec<ChatRequest> {
    (1000..)
        .map(request)
        .filter(|r| {
            let digest = cache.digest_with(r, control);
            cluster.owner(&cache.tiers().l2_key(&digest)) != avoid
        })
        .take(n)
        .collect()
}

/// The node that holds the namespace generations is killed under load: instances started
/// before and during the outage keep their subscription (or subscribe on another node),
/// never serve an invalidated answer for longer than `unsynced_grace`, never read entries
/// under generations they do not know, and clear their L1 once they are current again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn losing_the_generations_node_never_stops_invalidation() {
    let mut cluster = RedisCluster::start();
    let mock = MockUpstream::start().await;
    let gen_node = cluster.owner("ai:cache:generations");
    // The generations node first among the seeds: instances subscribe on it.
    let mut seeds = cluster.addrs();
    seeds.swap(0, gen_node);
    let build = || {
        LlmCache::builder()
            .upstream(OpenAiCompatible::new(mock.base_url()).retry(RetryPolicy::none()))
            .cluster(seeds.clone())
            .l2_deadline(Duration::from_millis(250))
            .unsynced_grace(Duration::from_millis(300))
            .build()
    };
    let a = build().await.unwrap();
    let b = build().await.unwrap();
    assert!(a.tiers().invalidation_subscribed() && b.tiers().invalidation_subscribed());
    let tenant = llm_cache::CacheControl::new().namespace("t");
    let plain = llm_cache::CacheControl::new();
    let x = requests_off(&a, &cluster, gen_node, &plain, 1).remove(0);
    // The load never asks for X: a loader refetching X after its invalidation would put a
    // fresh answer in L1, which the check below would take for the invalidated one.
    let load: Vec<ChatRequest> = requests_off(&a, &cluster, gen_node, &plain, 9).split_off(1);
    assert!(!load.contains(&x));

    // Tenant t's answer at generation 0, then retired by a namespace bump: its old entry
    // stays in L2 on a live node.
    let retired = requests_off(&a, &cluster, gen_node, &tenant, 1).remove(0);
    a.chat_with(&retired, &tenant).await.unwrap();
    a.chat(&x).await.unwrap();
    eventually("both writes", WAIT, || a.stats().cache.l2_writes == 2).await;
    let gen0 = a.digest_with(&retired, &tenant);
    a.invalidate_namespace("t").await.unwrap();
    eventually("b learns t's generation", WAIT, || {
        b.digest_with(&retired, &tenant) == a.digest_with(&retired, &tenant)
    })
    .await;
    assert_ne!(a.digest_with(&retired, &tenant), gen0);
    assert_eq!(b.chat(&x).await.unwrap().status(), CacheStatus::HitL2);
    assert_eq!(b.chat(&x).await.unwrap().status(), CacheStatus::HitL1);

    // Load on both instances while the generations node dies (bounded in count).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loaders: Vec<_> = [a.clone(), b.clone()]
        .into_iter()
        .map(|c| {
            let (stop, load) = (stop.clone(), load.clone());
            tokio::spawn(async move {
                for i in 0..20_000 {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    c.chat(&load[i % load.len()])
                        .await
                        .expect("load never fails");
                }
            })
        })
        .collect();
    cluster.nodes[gen_node].kill();

    // An instance started during the outage: subscribed on a live node, generations unknown.
    let c = build().await.unwrap();
    assert!(!c.tiers().invalidation_subscribed(), "generations unknown");
    // It must not read t's entries under a generation it does not know (0 is retired).
    let calls = mock.calls();
    let got = c.chat_with(&retired, &tenant).await.unwrap();
    assert_eq!(
        got.status(),
        CacheStatus::Miss,
        "the retired entry is not served"
    );
    assert_eq!(mock.calls(), calls + 1);
    assert!(c.stats().cache.unsynced_skips >= 1);
    assert_eq!(c.chat(&x).await.unwrap().status(), CacheStatus::Miss);

    // X is invalidated (its node is alive): neither b nor c serves it from L1 for long.
    a.invalidate(&x).await.unwrap();
    for (name, inst) in [("b", &b), ("c", &c)] {
        eventually_async(
            &format!("{name} stops serving the invalidated answer from L1"),
            WAIT,
            || {
                let (inst, x) = (inst.clone(), x.clone());
                async move { inst.chat(&x).await.unwrap().status() != CacheStatus::HitL1 }
            },
        )
        .await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for l in loaders {
        l.await.unwrap();
    }
    assert_eq!(b.stats().cache.breaker, BreakerState::Closed);

    // The node returns (empty: no persistence in tests): every instance becomes current
    // again. (c listened on a live node all along, so its L1 missed nothing.)
    cluster.nodes[gen_node].restart();
    for (name, inst) in [("a", &a), ("b", &b), ("c", &c)] {
        eventually(&format!("{name} is current again"), WAIT, || {
            inst.tiers().invalidation_subscribed()
        })
        .await;
    }
    assert_eq!(b.stats().cache.breaker, BreakerState::Closed);
    eprintln!(
        "generations node killed: b skipped {} cached reads, c {}",
        b.stats().cache.unsynced_skips,
        c.stats().cache.unsynced_skips
    );
}

/// Every master full (`maxmemory` under `noeviction`): writes and leases are refused with
/// `OOM`, an error reply from a node that is up. No node is marked down and the breaker never
/// opens: every entry written before keeps being read from its node.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_cluster_refuses_writes_but_keeps_serving_reads() {
    let cluster = RedisCluster::start();
    let mock = MockUpstream::start().await;
    let writer = instance(&mock, &cluster, true).await;
    let reader = instance(&mock, &cluster, false).await;
    let requests: Vec<ChatRequest> = (0..ENTRIES).map(request).collect();
    for r in &requests {
        writer.chat(r).await.unwrap();
    }
    eventually("every L2 write", WAIT, || {
        writer.stats().cache.l2_writes == ENTRIES as u64
    })
    .await;
    // An empty node already uses about 1 MB: 100 kB is far over.
    for node in &cluster.nodes {
        node.redis_cli(&["CONFIG", "SET", "maxmemory-policy", "noeviction"]);
        node.redis_cli(&["CONFIG", "SET", "maxmemory", "100kb"]);
    }

    let before = reader.stats().cache;
    let new: Vec<ChatRequest> = (ENTRIES..ENTRIES + 10).map(request).collect();
    for out in reader.batch(&new, 10).await {
        assert_eq!(out.unwrap().status(), CacheStatus::Miss);
    }
    for (i, r) in requests.iter().enumerate() {
        let out = reader.chat(r).await.unwrap();
        assert_eq!(
            out.status(),
            CacheStatus::HitL2,
            "entry {i} was written before Redis filled up ({:?})",
            reader.stats().cache
        );
        assert_eq!(out.text(), Some(expected_content(r)));
    }
    eventually("the refused writes are counted", WAIT, || {
        reader.stats().cache.l2_writes_refused - before.l2_writes_refused == 10
    })
    .await;
    let s = reader.stats().cache;
    assert_eq!(s.breaker_openings, before.breaker_openings, "{s:?}");
    assert_eq!(s.breaker, BreakerState::Closed);
    assert_eq!(s.leases_refused - before.leases_refused, 10, "{s:?}");
}

/// On a Cluster the miss path is the same one command before the fetch (the lookup that
/// takes the lease lives in the entry's key, so in its slot), and two instances with
/// concurrent callers make one upstream call for a cold key.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cold_key_costs_one_command_before_the_fetch_and_one_call_across_instances() {
    let cluster = RedisCluster::start();
    let mock = MockUpstream::start().await;
    let (a, b) = (
        instance(&mock, &cluster, true).await,
        instance(&mock, &cluster, true).await,
    );
    let data = || -> Vec<String> {
        let mut all = Vec::new();
        for n in &cluster.nodes {
            all.extend(n.data_commands());
        }
        all
    };
    for n in &cluster.nodes {
        n.redis_cli(&["CONFIG", "RESETSTAT"]);
    }
    let req = request(1_000);
    mock.hold_answers();
    let first = tokio::spawn({
        let (a, req) = (a.clone(), req.clone());
        async move { a.chat(&req).await }
    });
    mock.wait_for_calls(1).await;
    assert_eq!(data(), ["set=1"], "before the fetch");
    // Meanwhile 20 callers on each instance ask for the same cold key.
    let mut others = Vec::new();
    for c in [&a, &b] {
        for _ in 0..20 {
            let (c, req) = (c.clone(), req.clone());
            others.push(tokio::spawn(async move { c.chat(&req).await }));
        }
    }
    mock.release_all();
    assert_eq!(first.await.unwrap().unwrap().status(), CacheStatus::Miss);
    for o in others {
        let out = o.await.unwrap().unwrap();
        assert!(out.status().is_hit(), "{:?}", out.status());
        assert_eq!(out.text(), Some(expected_content(&req)));
    }
    assert_eq!(mock.calls(), 1, "one upstream call across both instances");
    eventually("the value is written", WAIT, || {
        a.stats().cache.l2_writes == 1
    })
    .await;
    let key = a.tiers().l2_key(&a.digest_with(&req, &Default::default()));
    let stored: usize = cluster.nodes[cluster.owner(&key)]
        .redis_cli(&["STRLEN", &key])
        .parse()
        .unwrap();
    assert!(stored > 21, "the value replaced the lease ({stored} bytes)");
}

/// Embeddings on a Cluster: a batch's inputs live on all three masters (each key in its
/// own slot, every command sent to its key's node), an instance without an in-process tier
/// reads them all from Redis, and a cold batch asked of two instances at once costs one
/// upstream call per input.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_of_embeddings_spreads_over_the_masters_and_is_fetched_once() {
    use llm_cache::EmbeddingRequest;
    let mut cluster = RedisCluster::start();
    let mock = MockUpstream::start().await;
    let vectors_instance = |l1: bool| {
        LlmCache::builder()
            .upstream(OpenAiCompatible::new(mock.base_url()).retry(RetryPolicy::none()))
            .cluster(cluster.addrs())
            .embeddings_l1_max_bytes(if l1 { 64 << 20 } else { 0 })
            .l2_deadline(Duration::from_millis(250))
            .build()
    };
    let (writer, reader) = (
        vectors_instance(true).await.unwrap(),
        vectors_instance(false).await.unwrap(),
    );
    let inputs: Vec<String> = (0..ENTRIES).map(|i| format!("cluster chunk {i}")).collect();
    let req = EmbeddingRequest::new("text-embedding-3-small", inputs.clone());
    let written = writer.embeddings(&req).await.unwrap();
    assert_eq!(written.status(), CacheStatus::Miss);
    eventually("every vector written", WAIT, || {
        writer.embedding_stats().cache.l2_writes == ENTRIES as u64
    })
    .await;
    for n in &cluster.nodes {
        n.redis_cli(&["CONFIG", "RESETSTAT"]);
    }
    let out = reader.embeddings(&req).await.unwrap();
    assert_eq!(out.status(), CacheStatus::HitL2);
    assert_eq!(mock.embedding_calls().len(), 1);
    // Each input's own vector at its own index, read with one MGET per slot (here every
    // key has a slot of its own) and nothing else: no GET, no lookup that takes a lease.
    assert_eq!(out.data, written.data);
    let slots: std::collections::BTreeSet<String> = writer
        .embedding_digests_with(&req, &Default::default())
        .unwrap()
        .iter()
        .map(|d| cluster.nodes[0].redis_cli(&["CLUSTER", "KEYSLOT", &writer.tiers().l2_key(d)]))
        .collect();
    let mut mgets = 0;
    for n in &cluster.nodes {
        for c in n.data_commands() {
            match c.strip_prefix("mget=") {
                Some(calls) => mgets += calls.parse::<usize>().unwrap(),
                None => panic!("only MGETs read a cached batch: {c} on {}", n.addr()),
            }
        }
    }
    assert_eq!(mgets, slots.len(), "one MGET per slot");
    let masters: std::collections::BTreeSet<usize> = writer
        .embedding_digests_with(&req, &Default::default())
        .unwrap()
        .iter()
        .map(|d| cluster.owner(&writer.tiers().l2_key(d)))
        .collect();
    assert_eq!(
        masters.len(),
        3,
        "the inputs' keys spread over every master"
    );

    // A cold batch at both instances at once: one call per input in all.
    mock.hold_answers();
    let cold = EmbeddingRequest::new(
        "text-embedding-3-small",
        (0..ENTRIES)
            .map(|i| format!("cold chunk {i}"))
            .collect::<Vec<_>>(),
    );
    let (a, b) = (writer.clone(), reader.clone());
    let (ra, rb) = (cold.clone(), cold.clone());
    let first = tokio::spawn(async move { a.embeddings(&ra).await });
    mock.wait_for_calls(2).await;
    let second = tokio::spawn(async move { b.embeddings(&rb).await });
    support::eventually("the second instance finds the leases", WAIT, || {
        reader.embedding_stats().cache.inflight == ENTRIES as u64
    })
    .await;
    mock.release_all();
    let (first, second) = (
        first.await.unwrap().unwrap(),
        second.await.unwrap().unwrap(),
    );
    assert_eq!(first.data, second.data);
    let sent: usize = mock.embedding_calls()[1..].iter().map(Vec::len).sum();
    assert_eq!(
        sent, ENTRIES,
        "each cold input fetched once across both instances"
    );

    // A batch reads from Redis with one MGET per node: with a master down, only that
    // node's inputs are fetched; the others are still hits from the live masters, and the
    // breaker stays closed.
    let owners: Vec<usize> = writer
        .embedding_digests_with(&req, &Default::default())
        .unwrap()
        .iter()
        .map(|d| cluster.owner(&writer.tiers().l2_key(d)))
        .collect();
    let dead = owners[0];
    cluster.nodes[dead].kill();
    let calls_before = mock.embedding_calls().len();
    let out = reader
        .embeddings(&req)
        .await
        .expect("nothing fails with a node down");
    assert_eq!(out.status(), CacheStatus::Partial);
    for (i, (status, owner)) in out.input_statuses().iter().zip(&owners).enumerate() {
        let expected = if *owner == dead {
            CacheStatus::Miss
        } else {
            CacheStatus::HitL2
        };
        assert_eq!(*status, expected, "input {i} (node {owner}, dead {dead})");
    }
    let fetched: usize = mock.embedding_calls()[calls_before..]
        .iter()
        .map(Vec::len)
        .sum();
    let dead_inputs = owners.iter().filter(|o| **o == dead).count();
    assert_eq!(
        fetched, dead_inputs,
        "only the dead node's inputs are fetched"
    );
    assert_eq!(
        out.data, written.data,
        "the same vectors, each in its place"
    );
    assert_eq!(reader.stats().cache.breaker, BreakerState::Closed);
}

/// One master down: cold keys on the live masters still cost one upstream call across two
/// instances. What a command for the dead node's keys gets back (a connection error, or a
/// `MOVED` the client could not follow once the slot map changed) is no refusal of leases:
/// the lookups of the other keys go on taking them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_a_master_down_cold_keys_on_live_masters_are_fetched_once_across_instances() {
    let mut cluster = RedisCluster::start();
    let mock = MockUpstream::start().await;
    // A short cool-down, so that the dead node is asked again (and again) during the test.
    let with_cooldown = || async {
        LlmCache::builder()
            .upstream(OpenAiCompatible::new(mock.base_url()).retry(RetryPolicy::none()))
            .cluster(cluster.addrs())
            .l2_deadline(Duration::from_millis(250))
            .breaker_cooldown(Duration::from_millis(100))
            .build()
            .await
            .expect("build")
    };
    let (a, b) = (with_cooldown().await, with_cooldown().await);
    // Which keys live where is asked of the cluster before the node dies.
    let dead = 2;
    let control = llm_cache::CacheControl::default();
    let on_dead: Vec<ChatRequest> = (5000..)
        .map(request)
        .filter(|r| cluster.owner(&a.tiers().l2_key(&a.digest_with(r, &control))) == dead)
        .take(6)
        .collect();
    let live = requests_off(&a, &cluster, dead, &control, 6);
    let dead_port = cluster.nodes[dead].port().to_string();
    cluster.nodes[dead].kill();
    // The live masters mark it failed (the one-second node timeout): from then on they
    // answer for its slots with redirections to it.
    let live_node = &cluster.nodes[(dead + 1) % 3];
    eventually_async(
        "the live masters mark the dead one failed",
        WAIT,
        || async {
            live_node
                .redis_cli(&["CLUSTER", "NODES"])
                .lines()
                .any(|l| l.contains(&format!(":{dead_port}@")) && l.contains("fail"))
        },
    )
    .await;
    let mut calls = 0;
    for (round, req) in live.iter().enumerate() {
        // Keys of the dead node first, on both instances: their commands fail or redirect.
        let dead_req = &on_dead[round];
        for c in [&a, &b] {
            let out = c.chat(dead_req).await.expect("a dead node's key is a miss");
            assert_eq!(out.text(), Some(expected_content(dead_req)));
        }
        // Past the cool-down: the dead node is asked again next round.
        tokio::time::sleep(Duration::from_millis(150)).await;
        calls = mock.calls();
        mock.hold_answers();
        let first = tokio::spawn({
            let (a, req) = (a.clone(), req.clone());
            async move { a.chat(&req).await }
        });
        mock.wait_for_calls(calls + 1).await;
        let mut others = Vec::new();
        for c in [&a, &b] {
            for _ in 0..5 {
                let (c, req) = (c.clone(), req.clone());
                others.push(tokio::spawn(async move { c.chat(&req).await }));
            }
        }
        eventually("b waits on a's lease", WAIT, || b.tiers().inflight() == 1).await;
        mock.release_all();
        first.await.unwrap().expect("the holder's answer");
        for o in others {
            let out = o.await.unwrap().expect("every caller is answered");
            assert_eq!(out.text(), Some(expected_content(req)));
        }
        assert_eq!(
            mock.calls(),
            calls + 1,
            "round {round}: one upstream call across both instances for a live node's key"
        );
        calls = mock.calls();
    }
    let (sa, sb) = (a.stats().cache, b.stats().cache);
    assert_eq!(
        (sa.leases_refused, sb.leases_refused),
        (0, 0),
        "{sa:?} {sb:?}"
    );
    assert_eq!(calls, mock.calls());
}
