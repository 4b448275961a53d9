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

use std::borrow::Cow;
use std::fmt;

use serde_json::{Map, Number, Value};
use sha2::{Digest as _, Sha256};

use crate::request::{ChatMessage, ChatRequest, Content, FunctionCall, ToolCall};
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

    /// Trim leading and trailing whitespace from message text. Off by default.
    #[must_use]
    pub fn trim(mut self, on: bool) -> Self {
        self.trim = on;
        self
    }

    /// Turn every run of whitespace in message text into one space. Off by default.
    #[must_use]
    pub fn collapse_whitespace(mut self, on: bool) -> Self {
        self.collapse_whitespace = on;
        self
    }

    /// Lowercase message text. Off by default: case can change meaning (`US` vs `us`,
    /// code, names), so only turn it on where a wrong shared answer is acceptable.
    #[must_use]
    pub fn lowercase(mut self, on: bool) -> Self {
        self.lowercase = on;
        self
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

fn put_framed(buf: &mut Vec<u8>, bytes: &[u8]) {
    buf.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
    buf.extend_from_slice(bytes);
}

/// Where an object sits in a request; decides which nulls and fields are dropped and
/// which members get request-aware treatment.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Level {
    Request,
    Message,
    ToolCall,
    Function,
    /// Anything deeper: plain JSON, nulls kept.
    Data,
}

/// A named field of a typed struct, to be merged with its `extra` map in key order.
enum Member<'a> {
    Str(&'a str),
    Num(f64),
    Messages(&'a [ChatMessage]),
    Content(&'a Content),
    ToolCalls(&'a [ToolCall]),
    Function(&'a FunctionCall),
}

/// An array or object [`Canon::value`] is in the middle of writing, and whether its
/// first member is still to come.
enum Open<'a> {
    Array(std::slice::Iter<'a, Value>, bool),
    Object(SortedEntries<'a>, bool),
}

struct Canon<'a> {
    out: &'a mut Vec<u8>,
    options: &'a KeyOptions,
}

impl Canon<'_> {
    fn request(&mut self, r: &ChatRequest) {
        // Named fields in key order; `stream` and `stream_options` are never written.
        let named = [
            ("messages", Some(Member::Messages(&r.messages))),
            ("model", Some(Member::Str(&r.model))),
            ("temperature", r.temperature.map(Member::Num)),
        ];
        self.object(Level::Request, &named, &r.extra);
    }

    fn message(&mut self, m: &ChatMessage) {
        let named = [
            ("content", m.content.as_ref().map(Member::Content)),
            ("name", m.name.as_deref().map(Member::Str)),
            ("role", Some(Member::Str(&m.role))),
            ("tool_call_id", m.tool_call_id.as_deref().map(Member::Str)),
            ("tool_calls", m.tool_calls.as_deref().map(Member::ToolCalls)),
        ];
        self.object(Level::Message, &named, &m.extra);
    }

    fn tool_call(&mut self, c: &ToolCall) {
        let named = [
            ("function", Some(Member::Function(&c.function))),
            ("id", Some(Member::Str(&c.id))),
            ("type", Some(Member::Str(&c.kind))),
        ];
        self.object(Level::ToolCall, &named, &c.extra);
    }

    fn function(&mut self, f: &FunctionCall) {
        let named = [
            ("arguments", Some(Member::Str(&f.arguments))),
            ("name", Some(Member::Str(&f.name))),
        ];
        self.object(Level::Function, &named, &f.extra);
    }

    fn member(&mut self, m: &Member<'_>) {
        match *m {
            Member::Str(s) => self.string(s),
            Member::Num(x) => self.float(x),
            Member::Messages(ms) => self.array(ms, Self::message),
            Member::Content(Content::Text(s)) => self.text(s),
            Member::Content(Content::Parts(parts)) => self.parts(parts),
            Member::ToolCalls(calls) => self.array(calls, Self::tool_call),
            Member::Function(f) => self.function(f),
        }
    }

    /// Writes `{...}` from `named` (sorted by key, `None` = absent) merged with `extra`,
    /// dropping what `level` says to drop. On a key present in both (only possible for a
    /// request built in code), both are written: a miss, never a wrong answer.
    fn object(
        &mut self,
        level: Level,
        named: &[(&str, Option<Member<'_>>)],
        extra: &Map<String, Value>,
    ) {
        let options = self.options;
        let keep = |key: &str| level != Level::Request || !options.drops_top_level(key);
        let mut named = named
            .iter()
            .filter_map(|(k, m)| Some((*k, m.as_ref()?)))
            .filter(|(k, _)| keep(k))
            .peekable();
        self.out.push(b'{');
        let mut first = true;
        for (key, value) in sorted_entries(extra) {
            if !keep(key) || (value.is_null() && level != Level::Data) {
                continue;
            }
            while let Some((k, m)) = named.next_if(|(k, _)| *k <= key) {
                self.key(&mut first, k);
                self.member(m);
            }
            self.key(&mut first, key);
            self.json_member(level, key, value);
        }
        for (k, m) in named {
            self.key(&mut first, k);
            self.member(m);
        }
        self.out.push(b'}');
    }

    fn key(&mut self, first: &mut bool, key: &str) {
        if !std::mem::take(first) {
            self.out.push(b',');
        }
        self.string(key);
        self.out.push(b':');
    }

    /// A member given as JSON: the same request-aware rules the typed fields get.
    fn json_member(&mut self, level: Level, key: &str, value: &Value) {
        match (level, key, value) {
            (Level::Request, "messages", Value::Array(ms)) => self.array(ms, |c, m| match m {
                Value::Object(map) => c.object(Level::Message, &[], map),
                other => c.value(other),
            }),
            (Level::Message, "content", Value::String(s)) => self.text(s),
            (Level::Message, "content", Value::Array(parts)) => self.parts(parts),
            (Level::Message, "tool_calls", Value::Array(calls)) => {
                self.array(calls, |c, v| match v {
                    Value::Object(map) => c.object(Level::ToolCall, &[], map),
                    other => c.value(other),
                })
            }
            (Level::ToolCall, "function", Value::Object(map)) => {
                self.object(Level::Function, &[], map)
            }
            _ => self.value(value),
        }
    }

    /// Content parts: one plain text part is the same as a string; `text` parts get
    /// text normalization; every other part is written as it is.
    fn parts(&mut self, parts: &[Value]) {
        if let [only] = parts
            && let Some(text) = plain_text_part(only)
        {
            return self.text(text);
        }
        self.array(parts, |c, part| match part {
            Value::Object(map) if map.get("type").and_then(Value::as_str) == Some("text") => {
                c.out.push(b'{');
                let mut first = true;
                for (key, value) in sorted_entries(map) {
                    c.key(&mut first, key);
                    match (key, value) {
                        ("text", Value::String(s)) => c.text(s),
                        _ => c.value(value),
                    }
                }
                c.out.push(b'}');
            }
            other => c.value(other),
        });
    }

    fn array<T>(&mut self, items: &[T], mut write: impl FnMut(&mut Self, &T)) {
        self.out.push(b'[');
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                self.out.push(b',');
            }
            write(self, item);
        }
        self.out.push(b']');
    }

    /// Plain JSON: sorted keys, canonical numbers, nulls kept. Walked with an explicit
    /// stack of the open arrays and objects, not by recursion: [`derive`] and
    /// [`canonical_value`] are public and may be given a value that was never validated,
    /// and no depth may exhaust the thread's stack (that aborts the process).
    fn value(&mut self, v: &Value) {
        let mut open: Vec<Open<'_>> = Vec::new();
        let mut next = Some(v);
        loop {
            match next.take() {
                Some(Value::Null) => self.out.extend_from_slice(b"null"),
                Some(Value::Bool(true)) => self.out.extend_from_slice(b"true"),
                Some(Value::Bool(false)) => self.out.extend_from_slice(b"false"),
                Some(Value::Number(n)) => self.number(n),
                Some(Value::String(s)) => self.string(s),
                Some(Value::Array(items)) => {
                    self.out.push(b'[');
                    open.push(Open::Array(items.iter(), true));
                }
                Some(Value::Object(map)) => {
                    self.out.push(b'{');
                    open.push(Open::Object(sorted_entries(map), true));
                }
                None => {}
            }
            let Some(top) = open.last_mut() else {
                return;
            };
            match top {
                Open::Array(items, first) => match items.next() {
                    Some(item) => {
                        if !std::mem::take(first) {
                            self.out.push(b',');
                        }
                        next = Some(item);
                    }
                    None => {
                        self.out.push(b']');
                        open.pop();
                    }
                },
                Open::Object(entries, first) => match entries.next() {
                    Some((key, value)) => {
                        self.key(first, key);
                        next = Some(value);
                    }
                    None => {
                        self.out.push(b'}');
                        open.pop();
                    }
                },
            }
        }
    }

    fn number(&mut self, n: &Number) {
        if let Some(u) = n.as_u64() {
            put_u64(self.out, u);
        } else if let Some(i) = n.as_i64() {
            // as_u64 failed, so i < 0.
            self.out.push(b'-');
            put_u64(self.out, i.unsigned_abs());
        } else if let Some(x) = n.as_f64() {
            self.float(x);
        }
    }

    fn float(&mut self, x: f64) {
        const TWO_63: f64 = 9_223_372_036_854_775_808.0;
        const TWO_64: f64 = 18_446_744_073_709_551_616.0;
        if !x.is_finite() {
            // Only reachable from a typed field set in code; JSON has no such numbers.
            self.out.extend_from_slice(b"null");
        } else if x.trunc() == x && (-TWO_63..TWO_64).contains(&x) {
            // Exact: an integral f64 in range converts without rounding (and -0 is 0).
            if x >= 0.0 {
                put_u64(self.out, x as u64);
            } else {
                self.out.push(b'-');
                put_u64(self.out, (x as i64).unsigned_abs());
            }
        } else {
            let abs = x.abs();
            // Both forms are std's shortest round-trip digits.
            let _ = if (1e-6..1e21).contains(&abs) {
                fmt::Write::write_fmt(&mut VecWriter(self.out), format_args!("{x}"))
            } else {
                fmt::Write::write_fmt(&mut VecWriter(self.out), format_args!("{x:e}"))
            };
        }
    }

    /// Message text, with the normalization the options ask for.
    fn text(&mut self, s: &str) {
        if !self.options.normalizes_text() {
            return self.string(s);
        }
        let s = if self.options.trim { s.trim() } else { s };
        let s = if self.options.collapse_whitespace {
            collapse_whitespace(s)
        } else {
            Cow::Borrowed(s)
        };
        let s = if self.options.lowercase && !is_lowercase_ascii(&s) {
            Cow::Owned(s.to_lowercase())
        } else {
            s
        };
        self.string(&s);
    }

    /// A JSON string: `"` and `\` escaped, control characters escaped, the rest as UTF-8.
    fn string(&mut self, s: &str) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let out = &mut *self.out;
        out.reserve(s.len() + 2);
        out.push(b'"');
        let bytes = s.as_bytes();
        let mut start = 0;
        let mut i = 0;
        while i < bytes.len() {
            // Eight bytes at a time while none needs escaping: prompts are long and almost
            // never do, and this runs on every request, L1 hits included.
            while let Some(word) = bytes.get(i..).and_then(|rest| rest.first_chunk::<8>())
                && !needs_escape(u64::from_le_bytes(*word))
            {
                i += 8;
            }
            let Some(&b) = bytes.get(i) else {
                break;
            };
            let class = ESCAPE[b as usize];
            i += 1;
            if class == 0 {
                continue;
            }
            out.extend_from_slice(&bytes[start..i - 1]);
            start = i;
            if class == b'u' {
                let hex = [HEX[(b >> 4) as usize], HEX[(b & 0xf) as usize]];
                out.extend_from_slice(b"\\u00");
                out.extend_from_slice(&hex);
            } else {
                out.extend_from_slice(&[b'\\', class]);
            }
        }
        out.extend_from_slice(&bytes[start..]);
        out.push(b'"');
    }
}

/// True when one of the eight bytes of `word` is a control character, `"` or `\` (the
/// bytes [`ESCAPE`] escapes). Exact: the borrows of the subtraction tricks can only mark a
/// byte above one that really matches.
#[inline]
fn needs_escape(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let has_zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let control = word.wrapping_sub(ONES * 0x20) & !word & HIGH;
    let quote = has_zero(word ^ (ONES * u64::from(b'"')));
    let backslash = has_zero(word ^ (ONES * u64::from(b'\\')));
    control | quote | backslash != 0
}

/// For each byte: 0 when it is written as it is, else the letter after the backslash
/// (`u` for `\u00XX`). The table keeps the scan to one load and one branch per byte.
static ESCAPE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = b'u';
        b += 1;
    }
    table[0x08] = b'b';
    table[0x09] = b't';
    table[0x0a] = b'n';
    table[0x0c] = b'f';
    table[0x0d] = b'r';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table
};

/// `part`'s text when it is exactly `{"type":"text","text":<string>}`.
fn plain_text_part(part: &Value) -> Option<&str> {
    let map = part.as_object()?;
    if map.len() != 2 || map.get("type")?.as_str()? != "text" {
        return None;
    }
    map.get("text")?.as_str()
}

/// The map's entries in key order. serde_json's `preserve_order` feature can be switched
/// on by any crate in the build (feature unification), so the order is checked, not
/// assumed; with the default BTreeMap the check is all it costs.
fn sorted_entries(map: &Map<String, Value>) -> SortedEntries<'_> {
    if map.keys().is_sorted() {
        SortedEntries::InOrder(map.iter())
    } else {
        let mut entries: Vec<_> = map.iter().collect();
        entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
        SortedEntries::Resorted(entries.into_iter())
    }
}

/// [`sorted_entries`]: a type that can be named, so [`Open`] can hold it.
enum SortedEntries<'a> {
    InOrder(serde_json::map::Iter<'a>),
    Resorted(std::vec::IntoIter<(&'a String, &'a Value)>),
}

impl<'a> Iterator for SortedEntries<'a> {
    type Item = (&'a str, &'a Value);

    fn next(&mut self) -> Option<Self::Item> {
        let (key, value) = match self {
            SortedEntries::InOrder(entries) => entries.next()?,
            SortedEntries::Resorted(entries) => entries.next()?,
        };
        Some((key.as_str(), value))
    }
}

fn collapse_whitespace(s: &str) -> Cow<'_, str> {
    let mut prev_ws = false;
    let needed = s.chars().any(|c| {
        let ws = c.is_whitespace();
        let change = ws && (prev_ws || c != ' ');
        prev_ws = ws;
        change
    });
    if !needed {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    prev_ws = false;
    for c in s.chars() {
        if c.is_whitespace() {
            if !prev_ws {
                out.push(' ');
            }
            prev_ws = true;
        } else {
            out.push(c);
            prev_ws = false;
        }
    }
    Cow::Owned(out)
}

fn is_lowercase_ascii(s: &str) -> bool {
    s.is_ascii() && !s.bytes().any(|b| b.is_ascii_uppercase())
}

fn put_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

struct VecWriter<'a>(&'a mut Vec<u8>);

impl fmt::Write for VecWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
