//! Properties of request keys over generated requests: what must not change a key
//! (key order, whitespace, number spelling, transport fields, content form) and what must
//! (every part of the question, the namespace).

use llm_cache::ChatRequest;
use llm_cache::key::{KeyOptions, canonical_json, canonical_value, derive};
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{Map, Value, json};

const ROLES: [&str; 5] = ["system", "developer", "user", "assistant", "tool"];

fn config() -> ProptestConfig {
    // 256 keeps the suite fast; PROPTEST_CASES=20000 for a deeper run.
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok());
    ProptestConfig::with_cases(cases.unwrap_or(256))
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "\\PC{0,40}",
        1 => any::<String>(),
        1 => "[ \t\nA-Za-z]{0,20}",
    ]
}

fn content() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => text().prop_map(Value::String),
        1 => text().prop_map(|t| json!([{"type": "text", "text": t}])),
        1 => (text(), "[a-z]{1,10}").prop_map(|(t, url)| json!([
            {"type": "text", "text": t},
            {"type": "image_url", "image_url": {"url": format!("https://x/{url}.png"), "detail": "low"}}
        ])),
    ]
}

fn message() -> impl Strategy<Value = Value> {
    (select(&ROLES[..]), content())
        .prop_map(|(role, content)| json!({"role": role, "content": content}))
}

/// A small JSON value for an unknown vendor field.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (-1e6f64..1e6).prop_map(Value::from),
        "\\PC{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z]{1,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn param(name: &'static str) -> BoxedStrategy<Value> {
    match name {
        "temperature" => (0.0f64..2.0).prop_map(Value::from).boxed(),
        "top_p" => (0.0f64..=1.0).prop_map(Value::from).boxed(),
        "max_tokens" => (1u64..8192).prop_map(Value::from).boxed(),
        "stop" => prop_oneof![
            "\\PC{1,6}".prop_map(Value::from),
            prop::collection::vec("\\PC{1,6}", 1..4).prop_map(Value::from),
        ]
        .boxed(),
        "seed" => any::<i64>().prop_map(Value::from).boxed(),
        "tools" => prop::collection::vec(("[a-z_]{1,10}", "\\PC{0,20}"), 1..3)
            .prop_map(|tools| {
                Value::Array(
                    tools
                        .into_iter()
                        .map(|(name, description)| {
                            json!({"type": "function", "function": {
                                "name": name, "description": description,
                                "parameters": {"type": "object", "properties": {
                                    "q": {"type": "string", "default": null}},
                                    "required": ["q"]}}})
                        })
                        .collect(),
                )
            })
            .boxed(),
        "tool_choice" => prop_oneof![
            select(&["auto", "none", "required"][..]).prop_map(Value::from),
            "[a-z_]{1,10}".prop_map(|n| json!({"type": "function", "function": {"name": n}})),
        ]
        .boxed(),
        "response_format" => prop_oneof![
            Just(json!({"type": "text"})),
            Just(json!({"type": "json_object"})),
            "[a-z]{1,8}".prop_map(|n| json!({"type": "json_schema", "json_schema":
                {"name": n, "strict": true, "schema": {"type": "object"}}})),
        ]
        .boxed(),
        "n" => (1u64..5).prop_map(Value::from).boxed(),
        "presence_penalty" | "frequency_penalty" => prop_oneof![
            (-2.0f64..2.0).prop_map(Value::from),
            (-2i64..=2).prop_map(Value::from),
        ]
        .boxed(),
        "logit_bias" => prop::collection::btree_map("[0-9]{1,6}", -100i64..=100, 1..4)
            .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k, v.into())).collect()))
            .boxed(),
        _ => json_value().boxed(),
    }
}

const PARAMS: [&str; 13] = [
    "temperature",
    "top_p",
    "max_tokens",
    "stop",
    "seed",
    "tools",
    "tool_choice",
    "response_format",
    "n",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "x_vendor_knob",
];

/// A request body: a model, 1-5 messages and a random subset of the parameters.
fn request_body() -> impl Strategy<Value = Value> {
    let params: Vec<_> = PARAMS
        .iter()
        .map(|&p| prop::option::of(param(p)).prop_map(move |v| (p, v)))
        .collect();
    (
        "[a-z0-9][a-z0-9.-]{0,15}",
        prop::collection::vec(message(), 1..=5),
        params,
    )
        .prop_map(|(model, messages, params)| {
            let mut body = Map::new();
            body.insert("model".into(), model.into());
            body.insert("messages".into(), messages.into());
            for (name, value) in params {
                if let Some(v) = value {
                    body.insert(name.into(), v);
                }
            }
            Value::Object(body)
        })
}

fn parse(body: &Value) -> ChatRequest {
    serde_json::from_value(body.clone()).expect("generated bodies are requests")
}

fn key_of(body: &Value) -> llm_cache::Digest {
    derive(&parse(body), "", &KeyOptions::default())
}

/// A tiny deterministic RNG so one proptest seed drives a whole re-emission.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Writes `v` as JSON text with shuffled object keys, random insignificant whitespace
/// and, when `respell` is set, integers spelled as `N.0`, `Ne0` or `N0e-1`.
fn emit(v: &Value, rng: &mut SplitMix, respell: bool, out: &mut String) {
    const WS: [&str; 5] = ["", " ", "\n", "\t", "\r\n  "];
    let ws = |rng: &mut SplitMix, out: &mut String| out.push_str(WS[rng.below(WS.len())]);
    ws(rng, out);
    match v {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            for i in (1..entries.len()).rev() {
                entries.swap(i, rng.below(i + 1));
            }
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                ws(rng, out);
                out.push_str(&serde_json::to_string(k).unwrap());
                ws(rng, out);
                out.push(':');
                emit(v, rng, respell, out);
            }
            ws(rng, out);
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                emit(item, rng, respell, out);
            }
            ws(rng, out);
            out.push(']');
        }
        Value::Number(n) if respell && n.as_i64().is_some_and(|i| i.unsigned_abs() < 1 << 53) => {
            let plain = n.to_string();
            match rng.below(4) {
                0 => out.push_str(&plain),
                1 => out.push_str(&format!("{plain}.0")),
                2 => out.push_str(&format!("{plain}e0")),
                _ => out.push_str(&format!("{}e-1", n.as_i64().unwrap() * 10)),
            }
        }
        other => out.push_str(&serde_json::to_string(other).unwrap()),
    }
    ws(rng, out);
}

fn reemit(body: &Value, seed: u64, respell: bool) -> ChatRequest {
    let mut text = String::new();
    emit(body, &mut SplitMix(seed), respell, &mut text);
    ChatRequest::from_json(text.as_bytes()).expect("re-emitted body parses")
}

/// Appends to the text of message `i`, whatever form its content has.
fn append_text(body: &mut Value, i: usize, extra: &str) {
    let content = &mut body["messages"][i]["content"];
    match content {
        Value::String(s) => s.push_str(extra),
        Value::Array(parts) => match parts[0]["text"].as_str() {
            Some(t) => parts[0]["text"] = format!("{t}{extra}").into(),
            None => unreachable!("generated parts start with text"),
        },
        _ => *content = extra.into(),
    }
}

/// One change to the question; `pick` chooses which, `salt` varies it.
fn mutate(body: &mut Value, pick: usize, salt: u64) -> String {
    let n = body["messages"].as_array().unwrap().len();
    let which = pick % (6 + PARAMS.len());
    match which {
        0 => {
            let i = salt as usize % n;
            append_text(body, i, "!");
            format!("content of message {i}")
        }
        1 => {
            let i = salt as usize % n;
            let old = body["messages"][i]["role"].as_str().unwrap().to_string();
            let new = ROLES.iter().find(|r| **r != old).unwrap();
            body["messages"][i]["role"] = (*new).into();
            format!("role of message {i}")
        }
        2 => {
            if body["messages"][0]["role"] == "system" {
                append_text(body, 0, " Be terse.");
            } else {
                let messages = body["messages"].as_array_mut().unwrap();
                messages.insert(0, json!({"role": "system", "content": "Be terse."}));
            }
            "system prompt".into()
        }
        3 => {
            // An earlier turn: any message but the last (or the only one).
            let i = if n > 1 { salt as usize % (n - 1) } else { 0 };
            let messages = body["messages"].as_array_mut().unwrap();
            if salt.is_multiple_of(2) {
                messages.insert(i, json!({"role": "user", "content": "earlier"}));
            } else {
                append_text(body, i, " (edited)");
            }
            format!("earlier turn {i}")
        }
        4 => {
            let m = body["model"].as_str().unwrap();
            body["model"] = format!("{m}-mini").into();
            "model".into()
        }
        5 => {
            let i = salt as usize % n;
            body["messages"][i]["name"] = "alice".into();
            format!("name of message {i}")
        }
        p => {
            let name = PARAMS[p - 6];
            let old = body.get(name).cloned();
            let new = match (name, old) {
                (_, None) => match name {
                    "temperature" | "top_p" => json!(0.5),
                    "stop" => json!(["END"]),
                    "tools" => json!([{"type": "function", "function": {"name": "f"}}]),
                    "tool_choice" => json!("auto"),
                    "response_format" => json!({"type": "json_object"}),
                    "logit_bias" => json!({"50256": -100}),
                    "x_vendor_knob" => json!({"on": true}),
                    _ => json!(3),
                },
                ("temperature" | "top_p", Some(v)) => json!(v.as_f64().unwrap() + 0.125),
                ("max_tokens" | "n", Some(v)) => json!(v.as_u64().unwrap() + 1),
                ("seed", Some(v)) => json!(v.as_i64().unwrap() ^ 1),
                ("presence_penalty" | "frequency_penalty", Some(v)) => {
                    json!(v.as_f64().unwrap() - 0.25)
                }
                ("stop", Some(Value::String(s))) => format!("{s}!").into(),
                ("tools", Some(mut v)) => {
                    let tool = &mut v[0]["function"]["name"];
                    *tool = format!("{}_v2", tool.as_str().unwrap()).into();
                    v
                }
                ("tool_choice", Some(v)) if v == "none" => json!("auto"),
                ("tool_choice", Some(_)) => json!("none"),
                ("response_format", Some(v)) if v["type"] == "text" => {
                    json!({"type": "json_object"})
                }
                ("response_format", Some(_)) => json!({"type": "text"}),
                // stop arrays, logit_bias and the vendor field: a value that holds the old one.
                (_, Some(v)) => json!({"was": v}),
            };
            body[name] = new;
            name.into()
        }
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn key_order_whitespace_and_number_spelling_do_not_matter(
        body in request_body(), seed in any::<u64>(), respell in any::<bool>(),
    ) {
        let req = parse(&body);
        let again = reemit(&body, seed, respell);
        let o = KeyOptions::default();
        prop_assert_eq!(canonical_json(&again, &o), canonical_json(&req, &o));
        prop_assert_eq!(derive(&again, "ns", &o), derive(&req, "ns", &o));
    }

    #[test]
    fn transport_fields_do_not_matter(
        body in request_body(),
        stream in prop::option::of(any::<bool>()),
        include_usage in prop::option::of(any::<bool>()),
    ) {
        let k = key_of(&body);
        let mut with = body.clone();
        if let Some(s) = stream {
            with["stream"] = s.into();
        }
        if let Some(u) = include_usage {
            with["stream_options"] = json!({"include_usage": u});
        }
        prop_assert_eq!(key_of(&with), k);
    }

    #[test]
    fn every_part_of_the_question_matters(
        body in request_body(), pick in any::<usize>(), salt in any::<u64>(),
    ) {
        let mut changed = body.clone();
        let what = mutate(&mut changed, pick, salt);
        prop_assert_ne!(key_of(&changed), key_of(&body), "changing {} kept the key", what);
    }

    #[test]
    fn namespaces_separate_answers(body in request_body(), a in "\\PC{0,12}", b in "\\PC{0,12}") {
        prop_assume!(a != b);
        let req = parse(&body);
        let o = KeyOptions::default();
        prop_assert_ne!(derive(&req, &a, &o), derive(&req, &b, &o));
    }

    #[test]
    fn a_string_is_one_plain_text_part(body in request_body()) {
        let mut parts = body.clone();
        for m in parts["messages"].as_array_mut().unwrap() {
            if let Value::String(s) = &m["content"] {
                m["content"] = json!([{"type": "text", "text": s}]);
            }
        }
        prop_assert_eq!(key_of(&parts), key_of(&body));
    }

    #[test]
    fn canonical_json_is_a_fixed_point(body in request_body()) {
        let all = KeyOptions::default().trim(true).collapse_whitespace(true).lowercase(true);
        for o in [KeyOptions::default(), all] {
            let req = parse(&body);
            let canon = canonical_json(&req, &o);
            prop_assert_eq!(&canonical_value(&body, &o), &canon);
            let back: Value = serde_json::from_slice(&canon).expect("canonical JSON is JSON");
            prop_assert_eq!(canonical_value(&back, &o), canon);
        }
    }

    #[test]
    fn normalization_is_opt_in(
        words in prop::collection::vec("[A-Za-z0-9é]{1,8}", 1..6),
        gaps in prop::collection::vec("[ \t\n]{1,4}", 6),
        pad in ("[ \t\n]{0,3}", "[ \t\n]{0,3}"),
    ) {
        let tidy: String = words.join(" ");
        let mut messy = pad.0.clone();
        for (i, w) in words.iter().enumerate() {
            if i > 0 {
                messy.push_str(&gaps[i]);
            }
            messy.push_str(w);
        }
        messy.push_str(&pad.1);
        let req = |s: &str| parse(&json!({"model": "m", "messages": [{"role": "user", "content": s}]}));
        let ws = KeyOptions::default().trim(true).collapse_whitespace(true);
        prop_assert_eq!(derive(&req(&messy), "", &ws), derive(&req(&tidy), "", &ws));
        if messy != tidy {
            prop_assert_ne!(
                derive(&req(&messy), "", &KeyOptions::default()),
                derive(&req(&tidy), "", &KeyOptions::default())
            );
        }
        let lower = tidy.to_lowercase();
        if lower != tidy {
            prop_assert_ne!(derive(&req(&lower), "", &ws), derive(&req(&tidy), "", &ws));
        }
        let low = ws.clone().lowercase(true);
        prop_assert_eq!(derive(&req(&messy), "", &low), derive(&req(&lower), "", &low));
    }
}

/// Any JSON, numbers of every magnitude included, sometimes shaped like a request.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<u64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        any::<String>().prop_map(Value::String),
    ];
    let value = leaf.prop_recursive(4, 32, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(
                select(&["content", "text", "type", "tool_calls", "function", "x"][..]),
                inner,
                0..5,
            )
            .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.into(), v)).collect())),
        ]
    });
    prop_oneof![
        value.clone(),
        (value.clone(), prop::collection::vec(value, 0..4)).prop_map(|(v, messages)| {
            json!({"model": v, "messages": messages, "stream": true, "user": null})
        }),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_json_canonicalizes_to_a_fixed_point(v in any_json(), opts in 0u8..8) {
        let o = KeyOptions::default()
            .trim(opts & 1 != 0)
            .collapse_whitespace(opts & 2 != 0)
            .lowercase(opts & 4 != 0);
        let canon = canonical_value(&v, &o);
        let back: Value = serde_json::from_slice(&canon).expect("canonical JSON is JSON");
        prop_assert_eq!(canonical_value(&back, &o), canon);
    }
}

#[test]
fn hello_world_normalizes_only_when_asked() {
    let req = |s: &str| parse(&json!({"model": "m", "messages": [{"role": "user", "content": s}]}));
    let tidy = KeyOptions::default().trim(true).collapse_whitespace(true);
    assert_eq!(
        derive(&req("  Hello   World "), "", &tidy),
        derive(&req("Hello World"), "", &tidy)
    );
    assert_ne!(
        derive(&req("  Hello   World "), "", &KeyOptions::default()),
        derive(&req("Hello World"), "", &KeyOptions::default())
    );
    assert_ne!(
        derive(&req("hello world"), "", &tidy),
        derive(&req("Hello World"), "", &tidy)
    );
    let lower = tidy.lowercase(true);
    assert_eq!(
        derive(&req("  HELLO   World "), "", &lower),
        derive(&req("hello world"), "", &lower)
    );
}
