//! The README's demo, run as the user runs it (the compiled example binary), checked by
//! its JSON report: the numbers add up, every distinct prompt costs one upstream call, and
//! a second process against the same Redis is answered from L2 without any call. With
//! `--stream` the same holds, every answer assembled from its chunks equals the
//! non-streamed one, and time to first token is reported per status. With `--embeddings`
//! only edited chunks reach the upstream and every vector is the mock's. The demo's
//! upstream is test-support's `MockUpstream` in its realistic mode.

use llm_cache_test_support as support;

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;
use support::redis::RedisServer;

/// A small, fast workload: the mock answers in 5-20 ms. A generous L2 deadline keeps a
/// loaded test machine from turning a Redis read into a (legitimate, but flaky) miss.
const WORKLOAD: &[&str] = &[
    "--requests",
    "300",
    "--distinct",
    "40",
    "--concurrency",
    "16",
    "--latency-ms",
    "5:20",
    "--seed",
    "7",
    "--l2-deadline-ms",
    "2000",
    "--json",
];

/// The example binary next to this test's own (`target/<profile>/examples/demo`), built
/// once per test process with the gate's flags, so that it is never older than its source
/// and costs nothing under `scripts/test.sh`.
fn demo_binary() -> PathBuf {
    support::examples::binary("demo")
}

/// Runs the demo with the workload and `extra` arguments; returns its JSON report.
fn run_demo(extra: &[&str]) -> Value {
    let out = Command::new(demo_binary())
        .args(WORKLOAD)
        .args(extra)
        .env_remove("REDIS_URL")
        .env_remove("OPENAI_BASE_URL")
        .env_remove("OPENAI_API_KEY")
        .output()
        .expect("run the demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "demo {extra:?} failed ({}):\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    assert_eq!(
        stdout.trim().lines().count(),
        1,
        "--json prints exactly one line:\n{stdout}"
    );
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("the report is not JSON ({e}):\n{stdout}\nstderr: {stderr}"))
}

fn n(report: &Value, field: &str) -> u64 {
    report[field]
        .as_u64()
        .unwrap_or_else(|| panic!("`{field}` is not a count in {report:#}"))
}

/// What every run must satisfy, whatever the tiers.
fn assert_adds_up(report: &Value, redis: bool) {
    let requests = n(report, "requests");
    assert_eq!(requests, 300, "{report:#}");
    assert_eq!(n(report, "errors"), 0, "{report:#}");
    assert_eq!(n(report, "mismatches"), 0, "{report:#}");
    assert_eq!(report["redis"], Value::Bool(redis), "{report:#}");
    let (l1, l2, coalesced, misses) = (
        n(report, "l1_hits"),
        n(report, "l2_hits"),
        n(report, "coalesced"),
        n(report, "misses"),
    );
    assert_eq!(l1 + l2 + coalesced + misses, requests, "{report:#}");
    let upstream = n(report, "upstream_calls");
    assert_eq!(upstream, misses, "{report:#}");
    assert!(upstream <= n(report, "distinct"), "{report:#}");
    assert!(
        n(report, "distinct_used") <= n(report, "distinct"),
        "{report:#}"
    );
    if let Some(stub) = report["stub_calls"].as_u64() {
        assert_eq!(
            stub, upstream,
            "the stub saw every upstream call: {report:#}"
        );
    }

    for (status, count) in [
        ("miss", misses),
        ("l1", l1),
        ("l2", l2),
        ("coalesced", coalesced),
    ] {
        let lat = &report["latency_ms"][status];
        assert_eq!(lat["count"].as_u64(), Some(count), "{status}: {report:#}");
        if count > 0 {
            let (p50, p99) = (lat["p50"].as_f64().unwrap(), lat["p99"].as_f64().unwrap());
            assert!(0.0 <= p50 && p50 <= p99, "{status}: {report:#}");
        } else {
            assert!(lat["p50"].is_null() && lat["p99"].is_null(), "{report:#}");
        }
    }

    match report["stream"] {
        Value::Bool(true) => assert_ttft_adds_up(report),
        Value::Bool(false) => assert!(report["ttft_ms"].is_null(), "{report:#}"),
        _ => panic!("`stream` is not a bool in {report:#}"),
    }

    let ratio = report["hit_ratio"].as_f64().unwrap();
    let expected = (l1 + l2 + coalesced) as f64 / requests as f64;
    assert!((ratio - expected).abs() < 1e-9, "{report:#}");
    let without = report["cost_without_usd"].as_f64().unwrap();
    let with = report["cost_with_usd"].as_f64().unwrap();
    assert!(with <= without && without > 0.0, "{report:#}");
    assert!(n(report, "tokens_saved") > 0, "{report:#}");
    assert!(report["wall_ms"].as_f64().unwrap() > 0.0, "{report:#}");
}

/// A streamed run's time to first token: one sample per answer, never after its end.
fn assert_ttft_adds_up(report: &Value) {
    let mut samples = 0;
    for status in ["miss", "l1", "l2", "coalesced"] {
        let (ttft, lat) = (&report["ttft_ms"][status], &report["latency_ms"][status]);
        let count = ttft["count"]
            .as_u64()
            .unwrap_or_else(|| panic!("no ttft_ms.{status}.count in {report:#}"));
        assert_eq!(Some(count), lat["count"].as_u64(), "{status}: {report:#}");
        samples += count;
        if count == 0 {
            assert!(ttft["p50"].is_null() && ttft["p99"].is_null(), "{report:#}");
            continue;
        }
        let (p50, p99) = (ttft["p50"].as_f64().unwrap(), ttft["p99"].as_f64().unwrap());
        assert!(0.0 <= p50 && p50 <= p99, "{status}: {report:#}");
        // Each first token comes no later than its stream's end, so neither do the ranks.
        assert!(p50 <= lat["p50"].as_f64().unwrap(), "{status}: {report:#}");
        assert!(p99 <= lat["p99"].as_f64().unwrap(), "{status}: {report:#}");
    }
    assert_eq!(samples, n(report, "requests"), "{report:#}");
}

#[test]
fn without_redis_every_distinct_prompt_costs_one_call() {
    let report = run_demo(&[]);
    assert_adds_up(&report, false);
    assert_eq!(n(&report, "l2_hits"), 0, "{report:#}");
    assert_eq!(
        n(&report, "misses"),
        n(&report, "distinct_used"),
        "{report:#}"
    );
    assert!(n(&report, "l1_hits") > 0, "{report:#}");
}

#[test]
fn a_streamed_run_adds_up_and_reports_time_to_first_token() {
    let report = run_demo(&["--stream"]);
    assert_adds_up(&report, false);
    assert_eq!(report["stream"], Value::Bool(true), "{report:#}");
    assert_eq!(
        n(&report, "misses"),
        n(&report, "distinct_used"),
        "concurrent streams of one prompt share one upstream stream: {report:#}"
    );
    assert!(n(&report, "l1_hits") > 0, "{report:#}");
    // The mock streams its answer after its first chunk: a miss's first token comes well
    // before its end (30% of 5-20 ms, against all of it).
    let (ttft, lat) = (
        report["ttft_ms"]["miss"]["p50"].as_f64().unwrap(),
        report["latency_ms"]["miss"]["p50"].as_f64().unwrap(),
    );
    assert!(ttft < lat, "{report:#}");
}

#[test]
fn a_second_process_is_answered_from_redis() {
    let redis = RedisServer::start();
    let url = redis.url();

    let first = run_demo(&["--redis", &url]);
    assert_adds_up(&first, true);
    assert_eq!(n(&first, "misses"), n(&first, "distinct_used"), "{first:#}");
    assert_eq!(
        first["stats"]["l2_writes"].as_u64(),
        Some(n(&first, "misses")),
        "every fetched answer reached Redis before the demo exited: {first:#}"
    );

    // A new process: empty L1, same seed, so the same prompts, all stored by the first run.
    let second = run_demo(&["--redis", &url]);
    assert_adds_up(&second, true);
    assert_eq!(n(&second, "upstream_calls"), 0, "{second:#}");
    assert!(n(&second, "l2_hits") > 0, "{second:#}");
    assert_eq!(
        n(&second, "l2_hits"),
        n(&first, "distinct_used"),
        "one L2 read per distinct prompt, then L1 or coalesced: {second:#}"
    );
    assert_eq!(second["cost_with_usd"].as_f64(), Some(0.0), "{second:#}");

    // A third one streams: the same key, so the same answers, replayed from L2.
    let third = run_demo(&["--redis", &url, "--stream"]);
    assert_adds_up(&third, true);
    assert_eq!(n(&third, "upstream_calls"), 0, "{third:#}");
    assert_eq!(
        n(&third, "l2_hits"),
        n(&first, "distinct_used"),
        "{third:#}"
    );
}

#[test]
fn a_reindexing_run_sends_only_edited_chunks_and_checks_every_vector() {
    let (documents, chunks) = (4, 10);
    let report = run_demo(&[
        "--embeddings",
        "--documents",
        &documents.to_string(),
        "--chunks",
        &chunks.to_string(),
        "--passes",
        "3",
        "--dims",
        "64",
    ]);
    assert_eq!(report["mode"], "embeddings", "{report:#}");
    assert_eq!(n(&report, "errors"), 0, "{report:#}");
    assert_eq!(n(&report, "vector_mismatches"), 0, "{report:#}");
    let passes = report["passes"].as_array().expect("passes");
    assert_eq!(passes.len(), 3, "{report:#}");
    let (mut requested, mut sent) = (0, 0);
    for (i, pass) in passes.iter().enumerate() {
        requested += n(pass, "inputs_requested");
        sent += n(pass, "inputs_sent");
        assert_eq!(
            n(pass, "inputs_requested"),
            documents * chunks,
            "{report:#}"
        );
        // The first pass embeds everything, in one call per document; later ones only
        // what was edited, in at most one call per document.
        let expected = if i == 0 {
            documents * chunks
        } else {
            n(pass, "chunks_edited")
        };
        assert_eq!(n(pass, "inputs_sent"), expected, "pass {i}: {report:#}");
        assert!(
            n(pass, "upstream_calls") <= documents,
            "pass {i}: {report:#}"
        );
    }
    assert_eq!(n(&passes[0], "upstream_calls"), documents, "{report:#}");
    assert!(sent < requested, "{report:#}");
    assert_eq!(n(&report, "inputs_requested"), requested, "{report:#}");
    assert_eq!(n(&report, "inputs_sent"), sent, "{report:#}");
    assert!(n(&report, "tokens_saved") > 0, "{report:#}");
}

#[test]
fn bad_arguments_exit_with_2_and_name_the_flag() {
    let bin = demo_binary();
    for (args, named) in [
        (&["--requests", "many"][..], "--requests"),
        (&["--latency-ms", "20:5"][..], "--latency-ms"),
        (&["--concurrency", "0"][..], "--concurrency"),
        (&["--bogus"][..], "--bogus"),
        (&["--model"][..], "--model"),
        (&["--stream=yes"][..], "--stream"),
    ] {
        let out = Command::new(&bin)
            .args(args)
            .output()
            .expect("run the demo");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(named), "{args:?}: {stderr}");
    }
    let help = Command::new(&bin)
        .arg("--help")
        .output()
        .expect("run the demo");
    assert!(help.status.success());
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("--latency-ms MIN:MAX"), "{help}");
    assert!(help.contains("--stream"), "{help}");
}
