//! The canonical JSON writer behind [`canonical_json`](super::canonical_json): sorted
//! keys, one form per number, nulls dropped where OpenAI reads them as absent, opt-in text
//! normalization. It writes bytes as it walks, with its own stack instead of recursion, so
//! it must never overflow on a deep value nor depend on serde_json's output format.

use std::borrow::Cow;
use std::fmt;

use serde_json::{Map, Number, Value};

use super::KeyOptions;
use crate::request::{ChatMessage, ChatRequest, Content, FunctionCall, ToolCall};

/// Where an object sits in a request; decides which nulls and fields are dropped and
/// which members get request-aware treatment.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Level {
    Request,
    Message,
    ToolCall,
    Function,
    /// Anything deeper: plain JSON, nulls kept.
    Data,
}

/// A named field of a typed struct, to be merged with its `extra` map in key order.
pub(super) enum Member<'a> {
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

pub(super) struct Canon<'a> {
    pub(super) out: &'a mut Vec<u8>,
    pub(super) options: &'a KeyOptions,
}

impl Canon<'_> {
    pub(super) fn request(&mut self, r: &ChatRequest) {
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
    pub(super) fn object(
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
    pub(super) fn value(&mut self, v: &Value) {
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
