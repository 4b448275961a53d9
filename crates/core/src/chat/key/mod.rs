//! Request canonicalization and hashing: turns a [`ChatRequest`] and a namespace into the
//! [`Digest`] that names its answer in every tier.
//!
//! The key is the whole request. Only transport fields (`stream`, `stream_options`) and a
//! documented, configurable list ([`KeyOptions::ignore_field`], default `["user"]`) are
//! dropped; everything else that reaches the upstream is in the key, unknown fields too.
//! What does not change the answer must not change the key: JSON key order, insignificant
//! whitespace, `1` vs `1.0` vs `1e0`, content given as a string or as one plain text part.
//!
//! This module must never truncate a key or hash with anything weaker than SHA-256 (a
//! crafted request must not reach another request's answer), and never put a secret into
//! the key: it sees only the request body, never headers or API keys.
//!
//! # Canonical form
//!
//! - Objects: keys sorted by their UTF-8 bytes, no whitespace anywhere.
//! - Numbers: a value that is an integer and fits in `i64` or `u64` is written as that
//!   integer (`1`, `1.0`, `1e0` and `100e-2` all become `1`; integers that serde_json read
//!   as `u64`/`i64` stay exact, however large). Anything else is written in the shortest
//!   form that reads back as the same `f64`: decimal for `1e-6 <= |x| < 1e21`, else
//!   exponent form (`1e-7`, `1.5e300`). Integers past the `u64`/`i64` range are read by
//!   serde_json as `f64` and keyed as that `f64`, which is also what the request sent
//!   upstream carries. The form is produced here with `std`, not by serde_json, so a
//!   dependency upgrade cannot silently change every key.
//! - Nulls: OpenAI treats an explicit `null` as "not set", so a `null` top-level parameter,
//!   message field, tool-call field or tool-call function field is dropped, exactly like
//!   an absent one. Deeper nulls (inside tool schemas, content parts, `response_format`...)
//!   are data and are kept.
//! - Message content: a string and a list holding exactly one `{"type":"text","text":..}`
//!   part (no other fields) are the same and are written as the string. Opt-in text
//!   normalization ([`KeyOptions::trim`], [`KeyOptions::collapse_whitespace`],
//!   [`KeyOptions::lowercase`]) applies to that text and to the `text` of `text` parts,
//!   never to anything else.
//!
//! Bump [`KEY_FORMAT_VERSION`] whenever the canonical form changes, so old Redis entries
//! become unreachable instead of being served for requests they do not answer.

mod canonical;

use serde_json::Value;
use sha2::{Digest as _, Sha256};

use self::canonical::{Canon, Level};
use crate::request::ChatRequest;
use crate::tiered::digest::Digest;

/// The version of the canonical form and digest layout; part of every digest.
pub const KEY_FORMAT_VERSION: u32 = 1;

/// Separates these digests from any other SHA-256 the crate (or a user) computes.
const DOMAIN: &[u8] = b"llm-cache/chat-completions-key";

/// Top-level fields that only say how the answer is delivered; never in the key.
const TRANSPORT_FIELDS: [&str; 2] = ["stream", "stream_options"];

/// What goes into a request's key beyond the request itself: fields to ignore and opt-in
/// text normalization.
///
/// The default ignores `user` and normalizes nothing. `user` is an end-user id sent for
/// the provider's abuse monitoring; it does not change the answer, and keeping it would
/// give every end user a private cache. Tenants are kept apart by the namespace passed
/// to [`derive()`], not by this field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyOptions {
    ignored: Vec<String>,
    trim: bool,
    collapse_whitespace: bool,
    lowercase: bool,
}

impl Default for KeyOptions {
    /// Ignores `user` only, with no text normalization.
    fn default() -> Self {
        KeyOptions {
            ignored: vec!["user".to_string()],
            trim: false,
            collapse_whitespace: false,
            lowercase: false,
        }
    }
}

impl KeyOptions {
    /// Also drop the top-level request field `name` from the key. Only ignore fields that
    /// cannot change the answer: requests that differ only in them share one answer.
    #[must_use]
    pub fn ignore_field(mut self, name: impl Into<String>) -> Self {
        let name = name.into();
        if !self.ignored.contains(&name) {
            self.ignored.push(name);
        }
        self
    }

    /// Also drop each of `names` from the key; see [`KeyOptions::ignore_field`].
    #[must_use]
    pub fn ignore_fields<I>(self, names: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        names.into_iter().fold(self, Self::ignore_field)
    }

    /// Forget every ignored field, `user` included. `stream` and `stream_options` are
    /// still dropped: they are transport, not part of the question.
    #[must_use]
    pub fn clear_ignored_fields(mut self) -> Self {
        self.ignored.clear();
        self
    }

    crate::tiered::setters! {
        /// Trim leading and trailing whitespace from message text. Off by default.
        #[must_use]
        pub fn trim(on: bool) { trim = on }

        /// Turn every run of whitespace in message text into one space. Off by default.
        #[must_use]
        pub fn collapse_whitespace(on: bool) { collapse_whitespace = on }

        /// Lowercase message text. Off by default: case can change meaning (`US` vs `us`,
        /// code, names), so only turn it on where a wrong shared answer is acceptable.
        #[must_use]
        pub fn lowercase(on: bool) { lowercase = on }
    }

    /// The top-level fields dropped from the key, besides `stream` and `stream_options`.
    pub fn ignored_fields(&self) -> impl Iterator<Item = &str> {
        self.ignored.iter().map(String::as_str)
    }

    fn normalizes_text(&self) -> bool {
        self.trim || self.collapse_whitespace || self.lowercase
    }

    fn drops_top_level(&self, name: &str) -> bool {
        TRANSPORT_FIELDS.contains(&name) || self.ignored.iter().any(|f| f == name)
    }
}

/// The canonical JSON of `request`: what its key is computed from. See the module docs
/// for the rules.
pub fn canonical_json(request: &ChatRequest, options: &KeyOptions) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    Canon {
        out: &mut out,
        options,
    }
    .request(request);
    out
}

/// The canonical JSON of any JSON value. An object is read as a request body with the
/// same rules as [`canonical_json`] (and gives the same bytes for a serialized
/// [`ChatRequest`]); anything else is canonicalized as plain JSON. Never panics, and
/// canonicalizing its output again gives the same bytes.
pub fn canonical_value(json: &Value, options: &KeyOptions) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    let mut canon = Canon {
        out: &mut out,
        options,
    };
    match json {
        Value::Object(map) => canon.object(Level::Request, &[], map),
        other => canon.value(other),
    }
    out
}

/// The digest of `request` in `namespace`: SHA-256 over the length-prefixed domain tag,
/// [`KEY_FORMAT_VERSION`], the namespace and the canonical JSON. Different namespaces
/// never give the same digest, the empty namespace included.
pub fn derive(request: &ChatRequest, namespace: &str, options: &KeyOptions) -> Digest {
    let mut buf = Vec::with_capacity(DOMAIN.len() + namespace.len() + 1024);
    put_framed(&mut buf, DOMAIN);
    buf.extend_from_slice(&KEY_FORMAT_VERSION.to_be_bytes());
    put_framed(&mut buf, namespace.as_bytes());
    let len_at = buf.len();
    buf.extend_from_slice(&[0; 8]);
    Canon {
        out: &mut buf,
        options,
    }
    .request(request);
    let json_len = (buf.len() - len_at - 8) as u64;
    buf[len_at..len_at + 8].copy_from_slice(&json_len.to_be_bytes());
    Digest::from_bytes(Sha256::digest(&buf).into())
}

/// Separates the digests of HTTP-level layers (the async-openai layer) from [`derive`]'s:
/// their key holds more than the body, so the two never name one entry.
const SCOPED_DOMAIN: &[u8] = b"llm-cache/http-layer-key";

/// The digest of an HTTP-level request: SHA-256 over the length-prefixed
/// [`SCOPED_DOMAIN`], [`KEY_FORMAT_VERSION`], the namespace, `scope` (what else the key
/// holds: upstream host, path and query, credential scope, framed by the caller) and the
/// body's canonical JSON (from [`canonical_json`] or [`canonical_value`]).
pub(crate) fn derive_scoped(canonical: &[u8], namespace: &str, scope: &[u8]) -> Digest {
    let mut buf = Vec::with_capacity(64 + namespace.len() + scope.len() + canonical.len());
    put_framed(&mut buf, SCOPED_DOMAIN);
    buf.extend_from_slice(&KEY_FORMAT_VERSION.to_be_bytes());
    put_framed(&mut buf, namespace.as_bytes());
    put_framed(&mut buf, scope);
    put_framed(&mut buf, canonical);
    Digest::from_bytes(Sha256::digest(&buf).into())
}

pub(crate) fn put_framed(buf: &mut Vec<u8>, bytes: &[u8]) {
    buf.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
    buf.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::ChatMessage;
    use serde_json::{Map, json};

    fn canon(v: Value) -> String {
        String::from_utf8(canonical_value(&v, &KeyOptions::default())).unwrap()
    }

    fn canon_req(v: Value, options: &KeyOptions) -> String {
        let req: ChatRequest = serde_json::from_value(v).unwrap();
        String::from_utf8(canonical_json(&req, options)).unwrap()
    }

    fn key(v: Value) -> Digest {
        let req: ChatRequest = serde_json::from_value(v).unwrap();
        derive(&req, "", &KeyOptions::default())
    }

    fn num(text: &str) -> String {
        let v: Value = serde_json::from_str(text).unwrap();
        canon(json!([v]))
    }

    #[test]
    fn numbers_have_one_form() {
        for same in ["1", "1.0", "1e0", "10e-1", "0.1e1", "1.000"] {
            assert_eq!(num(same), "[1]", "{same}");
        }
        assert_eq!(num("-0.0"), "[0]");
        assert_eq!(num("-2.0"), "[-2]");
        assert_eq!(num("0.5"), "[0.5]");
        assert_eq!(num("5e-1"), "[0.5]");
        assert_eq!(num("1e-7"), "[1e-7]");
        assert_eq!(num("1.5e300"), "[1.5e300]");
        assert_eq!(num("1e20"), "[100000000000000000000]");
        assert_eq!(num("1e21"), "[1e21]");
        // Big integers stay exact, and an integral float equal to one writes the same.
        assert_eq!(num("18446744073709551615"), "[18446744073709551615]");
        assert_eq!(num("-9223372036854775808"), "[-9223372036854775808]");
        assert_eq!(num("9007199254740993"), "[9007199254740993]");
        assert_eq!(num("9007199254740994.0"), num("9007199254740994"));
        assert_ne!(num("9007199254740993"), num("9007199254740992"));
        // Past u64, serde_json reads an integer as f64: its shortest round-trip digits.
        assert_eq!(num("18446744073709551616"), "[18446744073709552000]");
    }

    #[test]
    fn objects_are_sorted_and_compact() {
        let v: Value =
            serde_json::from_str(r#"{ "b" : [ 1 , {"z":1,"a":null} ], "a": "x\n\"" }"#).unwrap();
        assert_eq!(
            canon(json!([v])),
            r#"[{"a":"x\n\"","b":[1,{"a":null,"z":1}]}]"#
        );
    }

    #[test]
    fn typed_and_json_paths_agree() {
        let body = json!({
            "model": "m", "temperature": 0.7, "top_p": 1.0, "user": "u1",
            "stream": true, "stream_options": {"include_usage": true}, "seed": null,
            "messages": [
                {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
                {"role": "user", "content": [{"type": "text", "text": "a"},
                    {"type": "image_url", "image_url": {"url": "u", "detail": null}}]},
                {"role": "assistant", "content": null, "refusal": null,
                    "tool_calls": [{"id": "c", "type": "function", "x": null,
                        "function": {"name": "f", "arguments": "{}", "y": null}}]},
                {"role": "tool", "tool_call_id": "c", "content": "42"}
            ],
            "tools": [{"type": "function", "function": {"name": "f", "parameters":
                {"type": "object", "properties": {"q": {"default": null}}}}}]
        });
        let req: ChatRequest = serde_json::from_value(body.clone()).unwrap();
        let typed = canonical_json(&req, &KeyOptions::default());
        assert_eq!(typed, canonical_value(&body, &KeyOptions::default()));
        assert_eq!(
            typed,
            canonical_value(&serde_json::to_value(&req).unwrap(), &KeyOptions::default())
        );
        let text = String::from_utf8(typed).unwrap();
        assert_eq!(
            text,
            concat!(
                r#"{"messages":[{"content":"Be brief.","role":"system"},"#,
                r#"{"content":[{"text":"a","type":"text"},{"image_url":{"detail":null,"url":"u"},"type":"image_url"}],"role":"user"},"#,
                r#"{"role":"assistant","tool_calls":[{"function":{"arguments":"{}","name":"f"},"id":"c","type":"function"}]},"#,
                r#"{"content":"42","role":"tool","tool_call_id":"c"}],"#,
                r#""model":"m","temperature":0.7,"#,
                r#""tools":[{"function":{"name":"f","parameters":{"properties":{"q":{"default":null}},"type":"object"}},"type":"function"}],"#,
                r#""top_p":1}"#
            )
        );
    }

    #[test]
    fn content_string_equals_one_plain_text_part() {
        let a = key(json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}));
        let b = key(json!({"model": "m", "messages": [{"role": "user",
            "content": [{"type": "text", "text": "hi"}]}]}));
        assert_eq!(a, b);
        // A part with anything else, or two parts, is not the same question.
        let c = key(json!({"model": "m", "messages": [{"role": "user",
            "content": [{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}]}]}));
        let d = key(json!({"model": "m", "messages": [{"role": "user",
            "content": [{"type": "text", "text": "h"}, {"type": "text", "text": "i"}]}]}));
        assert_ne!(a, c);
        assert_ne!(a, d);
        // Absent content and empty content differ.
        let e = key(json!({"model": "m", "messages": [{"role": "user"}]}));
        let f = key(json!({"model": "m", "messages": [{"role": "user", "content": ""}]}));
        assert_ne!(e, f);
    }

    #[test]
    fn nulls_mean_absent_at_request_and_message_level() {
        let base = key(json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}));
        let nulls = key(json!({"model": "m", "seed": null, "temperature": null,
            "messages": [{"role": "user", "content": "x", "name": null, "refusal": null}]}));
        assert_eq!(base, nulls);
        let tools = |d: Value| {
            key(
                json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
                "tools": [{"type": "function", "function": {"name": "f", "parameters": d}}]}),
            )
        };
        assert_ne!(tools(json!({"default": null})), tools(json!({})));
    }

    #[test]
    fn transport_and_ignored_fields_are_dropped() {
        let base = json!({"model": "m", "messages": [{"role": "user", "content": "x"}]});
        let k = key(base.clone());
        let mut with = base.clone();
        with["stream"] = json!(true);
        with["stream_options"] = json!({"include_usage": true});
        with["user"] = json!("end-user-7");
        assert_eq!(k, key(with.clone()));

        let req: ChatRequest = serde_json::from_value(with).unwrap();
        let keep_user = KeyOptions::default().clear_ignored_fields();
        assert_ne!(derive(&req, "", &keep_user), k);
        // Clearing the list never brings transport fields back.
        let base_req: ChatRequest = serde_json::from_value(base.clone()).unwrap();
        let mut only_user = base;
        only_user["user"] = json!("end-user-7");
        let only_user: ChatRequest = serde_json::from_value(only_user).unwrap();
        assert_eq!(
            derive(&req, "", &keep_user),
            derive(&only_user, "", &keep_user)
        );
        assert_ne!(
            derive(&base_req, "", &keep_user),
            derive(&only_user, "", &keep_user)
        );

        let opts = KeyOptions::default().ignore_fields(["metadata", "store"]);
        assert_eq!(
            opts.ignored_fields().collect::<Vec<_>>(),
            ["user", "metadata", "store"]
        );
        let tagged = base_req
            .clone()
            .param("metadata", json!({"trace": 1}))
            .param("store", true);
        assert_eq!(derive(&tagged, "", &opts), derive(&base_req, "", &opts));
        assert_ne!(
            derive(&tagged, "", &KeyOptions::default()),
            derive(&base_req, "", &KeyOptions::default())
        );
        // A named field can be ignored too.
        let hot = base_req.clone().temperature(0.9);
        let no_temp = KeyOptions::default().ignore_field("temperature");
        assert_eq!(derive(&hot, "", &no_temp), derive(&base_req, "", &no_temp));
    }

    #[test]
    fn scoped_digests_are_their_own_space() {
        let req = ChatRequest::new("m").message(ChatMessage::user("x"));
        let o = KeyOptions::default();
        let canon = canonical_json(&req, &o);
        let a = derive_scoped(&canon, "", b"scope-a");
        assert_ne!(a, derive(&req, "", &o));
        assert_ne!(a, derive_scoped(&canon, "", b"scope-b"));
        assert_ne!(a, derive_scoped(&canon, "t", b"scope-a"));
        // Framing: bytes cannot move between the namespace and the scope.
        assert_ne!(
            derive_scoped(&canon, "ab", b"c"),
            derive_scoped(&canon, "a", b"bc")
        );
        assert_eq!(a, derive_scoped(&canon, "", b"scope-a"));
    }

    #[test]
    fn namespaces_never_collide() {
        let req = ChatRequest::new("m").message(ChatMessage::user("x"));
        let o = KeyOptions::default();
        assert_ne!(derive(&req, "a", &o), derive(&req, "", &o));
        assert_ne!(derive(&req, "tenant-1", &o), derive(&req, "tenant-2", &o));
        assert_eq!(derive(&req, "tenant-1", &o), derive(&req, "tenant-1", &o));
        // The namespace cannot be smuggled into the model name or vice versa.
        let a = ChatRequest::new("ab").message(ChatMessage::user("x"));
        let b = ChatRequest::new("b").message(ChatMessage::user("x"));
        assert_ne!(derive(&a, "", &o), derive(&b, "a", &o));
    }

    #[test]
    fn text_normalization_is_opt_in() {
        let req = |s: &str| ChatRequest::new("m").message(ChatMessage::user(s));
        let o = KeyOptions::default();
        assert_ne!(
            derive(&req("  Hello   World "), "", &o),
            derive(&req("Hello World"), "", &o)
        );
        let tidy = KeyOptions::default().trim(true).collapse_whitespace(true);
        assert_eq!(
            derive(&req("  Hello \t\n  World "), "", &tidy),
            derive(&req("Hello World"), "", &tidy)
        );
        assert_ne!(
            derive(&req("hello world"), "", &tidy),
            derive(&req("Hello World"), "", &tidy)
        );
        let lower = tidy.clone().lowercase(true);
        assert_eq!(
            derive(&req("hello world"), "", &lower),
            derive(&req("Hello World"), "", &lower)
        );
        // Only message text is normalized: not the model, not roles, not tool arguments.
        assert_ne!(
            derive(
                &ChatRequest::new("M").message(ChatMessage::user("x")),
                "",
                &lower
            ),
            derive(
                &ChatRequest::new("m").message(ChatMessage::user("x")),
                "",
                &lower
            )
        );
        let parts = json!({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "text", "text": " A  B "}, {"type": "image_url", "image_url": {"url": " U "}}]}]});
        assert_eq!(
            canon_req(parts, &lower),
            r#"{"messages":[{"content":[{"text":"a b","type":"text"},{"image_url":{"url":" U "},"type":"image_url"}],"role":"user"}],"model":"m"}"#
        );
    }

    #[test]
    fn strings_escape_like_serde_json_at_every_offset() {
        // The word-at-a-time scan must see an escape wherever it falls in a word.
        let specials = ['\0', '\u{1f}', '\n', '"', '\\', ' ', '\u{7f}', 'é', '🧪'];
        for len in [0, 1, 7, 8, 9, 16, 17, 31] {
            for at in 0..len {
                for c in specials {
                    let mut s: String = "abcdefgh".chars().cycle().take(len).collect();
                    s.replace_range(at..at + 1, &c.to_string());
                    assert_eq!(
                        canon(Value::String(s.clone())),
                        serde_json::to_string(&s).unwrap(),
                        "{s:?}"
                    );
                }
            }
        }
        let ascii: String = (0u8..128).map(char::from).collect();
        assert_eq!(
            canon(Value::String(ascii.clone())),
            serde_json::to_string(&ascii).unwrap()
        );
    }

    #[test]
    fn canonical_output_is_a_fixed_point() {
        let all = KeyOptions::default()
            .trim(true)
            .collapse_whitespace(true)
            .lowercase(true);
        let samples = [
            json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "text",
                "text": " ΑΣ  İK\u{0}\u{1f} \u{2028}x "}]}], "n": 1.0, "x": [1e300, -0.0, 1e-9]}),
            json!([{"b": null, "a": "\"\\"}, 18446744073709551616.0, -9223372036854775809.0]),
            json!("plain"),
            json!({"messages": [1, "x", {"content": [], "tool_calls": [null, {"function": 3}]}]}),
        ];
        for opts in [KeyOptions::default(), all] {
            for v in &samples {
                let once = canonical_value(v, &opts);
                let again: Value = serde_json::from_slice(&once).unwrap();
                assert_eq!(
                    canonical_value(&again, &opts),
                    once,
                    "{}",
                    String::from_utf8_lossy(&once)
                );
            }
        }
    }

    #[test]
    fn keying_a_deep_value_does_not_recurse() {
        // Past any validation limit: `derive` and `canonical_value` are public.
        let levels = 100_000;
        // Built by hand: `json!` would serialize `inner` again, recursively.
        let mut deep = (0..levels).fold(json!({"b": 1, "a": null}), |inner, _| {
            let mut map = Map::new();
            map.insert("z".into(), Value::Array(vec![inner]));
            map.insert("a".into(), Value::from(0));
            Value::Object(map)
        });
        let text = canonical_value(&json!(["x"]), &KeyOptions::default());
        assert_eq!(text, br#"["x"]"#);
        let canon = canonical_value(&deep, &KeyOptions::default());
        let mut expected = Vec::new();
        for _ in 0..levels {
            expected.extend_from_slice(br#"{"a":0,"z":["#);
        }
        expected.extend_from_slice(br#"{"a":null,"b":1}"#);
        for _ in 0..levels {
            expected.extend_from_slice(b"]}");
        }
        assert!(canon == expected, "deep canonical form differs");
        let req = ChatRequest::new("m")
            .message(ChatMessage::user("x"))
            .param("deep", deep.take());
        let _ = derive(&req, "", &KeyOptions::default());
        // Taken apart one level at a time: the recursive drop would overflow.
        let mut v = req.extra.into_iter().next().unwrap().1;
        while let Value::Object(mut map) = v {
            v = map
                .remove("z")
                .and_then(|mut z| z.as_array_mut().and_then(|a| a.pop()))
                .unwrap_or(Value::Null);
        }
    }

    #[test]
    fn unknown_and_message_fields_are_in_the_key() {
        let base = || ChatRequest::new("m").message(ChatMessage::user("x"));
        let k = derive(&base(), "", &KeyOptions::default());
        let with_vendor = base().param("vendor_knob", 1);
        assert_ne!(derive(&with_vendor, "", &KeyOptions::default()), k);
        let mut named = base();
        named.messages[0].name = Some("bob".into());
        assert_ne!(derive(&named, "", &KeyOptions::default()), k);
        let mut extra = base();
        extra.messages[0]
            .extra
            .insert("audio".into(), json!({"id": "a"}));
        assert_ne!(derive(&extra, "", &KeyOptions::default()), k);
    }
}
