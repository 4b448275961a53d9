//! [`StoredAnswer`]: the form a chat answer has while the tiers hold it (issue 26, item 5).
//!
//! A decoded `ChatResponse` costs its structs (a `ChatResponse` and each `Choice` are 208
//! bytes), and an allocation, with its header and rounding, for every string: about 370
//! bytes beyond its JSON for a 2 KB answer. The common shape of an answer (one choice, a
//! text message without a name, tool calls or tool call id) is held instead as one arena of
//! its strings with their ends, and its fields that the cache does not read (each `extra`
//! map) as their JSON text in the same arena. A hit turns it into the public
//! `ChatResponse` with one allocation per string, which is cheap next to a decode (a
//! decode of 2.5 KB of JSON takes about 3 µs, this about 0.6 µs). Any other answer is held
//! as it came, behind an `Arc`, and a hit hands out that `Arc` as before.

use std::fmt;
use std::io::Write as _;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::request::{ChatMessage, ChatResponse, Choice, Content, Extra, Usage};

/// A chat answer as the tiers hold it ([`LlmCache::tiers`](crate::LlmCache::tiers) is a
/// `TieredCache<StoredAnswer>`): compact when the answer has the common shape, as it came
/// otherwise. It is written to Redis and read back as the answer's JSON, exactly as a
/// `ChatResponse` is, so entries stay readable by every instance and version.
pub struct StoredAnswer(Form, Fresh);

/// The decoded answer a compact form was made from, until its first
/// [`response`](StoredAnswer::response) takes it: the caller of the fetch or the read that
/// made the entry gets it without a second copy. Not weighed: it is gone at the first
/// answer handed out, which follows the fill on every path of `LlmCache`.
struct Fresh(Mutex<Option<Arc<ChatResponse>>>);

impl Clone for StoredAnswer {
    fn clone(&self) -> Self {
        StoredAnswer(self.0.clone(), Fresh(Mutex::new(None)))
    }
}

impl PartialEq for StoredAnswer {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

#[derive(Clone, PartialEq)]
enum Form {
    Compact(Compact),
    Whole(Arc<ChatResponse>),
}

/// The strings of the answer, in this order, in one arena.
const ID: usize = 0;
const OBJECT: usize = 1;
const MODEL: usize = 2;
const FINGERPRINT: usize = 3;
const ROLE: usize = 4;
const CONTENT: usize = 5;
const FINISH: usize = 6;
/// The JSON text of the `extra` maps (empty for an empty map).
const EXTRA: usize = 7;
const CHOICE_EXTRA: usize = 8;
const MESSAGE_EXTRA: usize = 9;
const USAGE_EXTRA: usize = 10;
const PARTS: usize = 11;

/// Which of the optional parts are there.
const HAS_FINGERPRINT: u8 = 1;
const HAS_CONTENT: u8 = 2;
const HAS_FINISH: u8 = 4;
const HAS_USAGE: u8 = 8;

#[derive(Clone, PartialEq)]
struct Compact {
    arena: Box<str>,
    ends: [u32; PARTS],
    created: u64,
    usage: [u64; 3],
    index: u32,
    has: u8,
}

impl StoredAnswer {
    /// The answer as a `ChatResponse`, without taking the fresh one.
    fn peek(&self) -> ChatResponse {
        match &self.0 {
            Form::Whole(whole) => (**whole).clone(),
            Form::Compact(c) => c.expand(),
        }
    }

    /// The answer, as a `ChatResponse`: the `Arc` an answer held whole came in; for the
    /// compact form, the first time the answer it was made from, then one built from it
    /// (one allocation per string).
    pub fn response(&self) -> Arc<ChatResponse> {
        match &self.0 {
            Form::Whole(whole) => Arc::clone(whole),
            Form::Compact(c) => {
                let fresh = crate::tiered::sync::lock(&self.1.0).take();
                fresh.unwrap_or_else(|| Arc::new(c.expand()))
            }
        }
    }

    /// The length of the answer's texts (its encoding is about as long, and more).
    pub(crate) fn text_len(&self) -> usize {
        match &self.0 {
            Form::Whole(whole) => whole
                .choices
                .iter()
                .map(|c| match &c.message.content {
                    Some(Content::Text(t)) => t.len(),
                    _ => 0,
                })
                .sum(),
            Form::Compact(c) => c.arena.len(),
        }
    }

    /// Append the answer's JSON to `out`: the very bytes `serde_json` writes for its
    /// `ChatResponse` (and what the tiers write to Redis), written from the compact form
    /// without building one.
    ///
    /// # Errors
    ///
    /// Only what `serde_json` would return for the `ChatResponse` of an answer held whole.
    pub fn write_json(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        match &self.0 {
            Form::Whole(whole) => serde_json::to_writer(out, &**whole),
            Form::Compact(c) => {
                c.write_json(out);
                Ok(())
            }
        }
    }

    /// True when the answer is held in the compact form.
    pub fn is_compact(&self) -> bool {
        matches!(self.0, Form::Compact(_))
    }

    /// The bytes it holds in memory, its `Arc` allocation included (`LlmCache`'s weigher);
    /// for an answer held whole, what [`weigh`](super::weight::weigh) counts.
    pub(crate) fn weight(&self) -> u32 {
        match &self.0 {
            Form::Whole(whole) => super::weight::weigh(whole, 0)
                .saturating_add(crate::tiered::codec::heap_bytes(std::mem::size_of::<Self>())),
            Form::Compact(c) => crate::tiered::codec::heap_bytes(16 + std::mem::size_of::<Self>())
                .saturating_add(crate::tiered::codec::heap_bytes(c.arena.len())),
        }
    }
}

impl From<ChatResponse> for StoredAnswer {
    /// Compact when the answer has the common shape and its parts fit the arena's `u32`
    /// ends; whole otherwise, without the spare capacity of its strings and vectors (serde
    /// leaves a vector of one choice room for four; an assembled stream's text has room to
    /// grow), which it would hold for as long as L1 keeps it.
    fn from(mut response: ChatResponse) -> Self {
        match Compact::of(&response) {
            Some(c) => StoredAnswer(
                Form::Compact(c),
                Fresh(Mutex::new(Some(Arc::new(response)))),
            ),
            None => {
                super::weight::compact(&mut response);
                StoredAnswer(Form::Whole(Arc::new(response)), Fresh(Mutex::new(None)))
            }
        }
    }
}

impl fmt::Debug for StoredAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredAnswer")
            .field("compact", &self.is_compact())
            .field("response", &self.peek())
            .finish()
    }
}

/// Written as the answer's JSON, exactly as its `ChatResponse` is.
impl Serialize for StoredAnswer {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            Form::Whole(whole) => whole.serialize(serializer),
            Form::Compact(c) => c.expand().serialize(serializer),
        }
    }
}

/// Read as a `ChatResponse`, then held compact when it can be.
impl<'de> Deserialize<'de> for StoredAnswer {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        ChatResponse::deserialize(deserializer).map(StoredAnswer::from)
    }
}

impl Compact {
    fn of(r: &ChatResponse) -> Option<Compact> {
        let [choice] = r.choices.as_slice() else {
            return None;
        };
        let m = &choice.message;
        let content = match &m.content {
            Some(Content::Text(text)) => Some(text.as_str()),
            None => None,
            Some(_) => return None,
        };
        if m.name.is_some() || m.tool_calls.is_some() || m.tool_call_id.is_some() {
            return None;
        }
        let extras = [
            map_text(&r.extra)?,
            map_text(&choice.extra)?,
            map_text(&m.extra)?,
            r.usage
                .as_ref()
                .map_or(Some(String::new()), |u| map_text(&u.extra))?,
        ];
        let parts: [&str; PARTS] = [
            &r.id,
            &r.object,
            &r.model,
            r.system_fingerprint.as_deref().unwrap_or(""),
            &m.role,
            content.unwrap_or(""),
            choice.finish_reason.as_deref().unwrap_or(""),
            &extras[0],
            &extras[1],
            &extras[2],
            &extras[3],
        ];
        let total: usize = parts.iter().map(|p| p.len()).sum();
        u32::try_from(total).ok()?;
        let mut arena = String::with_capacity(total);
        let mut ends = [0u32; PARTS];
        for (end, part) in ends.iter_mut().zip(parts) {
            arena.push_str(part);
            *end = arena.len() as u32;
        }
        let has = [
            (r.system_fingerprint.is_some(), HAS_FINGERPRINT),
            (content.is_some(), HAS_CONTENT),
            (choice.finish_reason.is_some(), HAS_FINISH),
            (r.usage.is_some(), HAS_USAGE),
        ]
        .into_iter()
        .fold(
            0,
            |has, (present, flag)| if present { has | flag } else { has },
        );
        let usage = r.usage.as_ref().map_or([0; 3], |u| {
            [u.prompt_tokens, u.completion_tokens, u.total_tokens]
        });
        Some(Compact {
            arena: arena.into_boxed_str(),
            ends,
            created: r.created,
            usage,
            index: choice.index,
            has,
        })
    }

    fn part(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.arena[start..self.ends[i] as usize]
    }

    fn string(&self, i: usize) -> String {
        self.part(i).to_owned()
    }

    fn opt(&self, flag: u8, i: usize) -> Option<String> {
        (self.has & flag != 0).then(|| self.string(i))
    }

    /// The JSON text of a map that [`map_text`] wrote (it parsed once already).
    fn map(&self, i: usize) -> Extra {
        let text = self.part(i);
        if text.is_empty() {
            return Extra::new();
        }
        serde_json::from_str(text).unwrap_or_default()
    }

    /// The JSON of [`expand`](Self::expand)'s answer, field by field in the order and with
    /// the omissions of the `ChatResponse` derive (`skip_serializing_if` on empty strings,
    /// a zero `created` and absent options; each `extra` map flattened last).
    fn write_json(&self, out: &mut Vec<u8>) {
        let mut w = Writer::object(out);
        w.text_if("id", self.part(ID), !self.part(ID).is_empty());
        w.text_if("object", self.part(OBJECT), !self.part(OBJECT).is_empty());
        if self.created != 0 {
            w.key("created");
            w.number(self.created);
        }
        w.text_if("model", self.part(MODEL), !self.part(MODEL).is_empty());
        w.key("choices");
        w.out.push(b'[');
        let mut choice = Writer::object(&mut *w.out);
        choice.key("index");
        choice.number(u64::from(self.index));
        choice.key("message");
        let mut message = Writer::object(&mut *choice.out);
        message.text_if("role", self.part(ROLE), true);
        message.text_if("content", self.part(CONTENT), self.has & HAS_CONTENT != 0);
        message.close(self.part(MESSAGE_EXTRA));
        choice.text_if(
            "finish_reason",
            self.part(FINISH),
            self.has & HAS_FINISH != 0,
        );
        choice.close(self.part(CHOICE_EXTRA));
        w.out.push(b']');
        if self.has & HAS_USAGE != 0 {
            w.key("usage");
            let mut usage = Writer::object(&mut *w.out);
            for (name, n) in ["prompt_tokens", "completion_tokens", "total_tokens"]
                .into_iter()
                .zip(self.usage)
            {
                usage.key(name);
                usage.number(n);
            }
            usage.close(self.part(USAGE_EXTRA));
        }
        let fingerprint = self.has & HAS_FINGERPRINT != 0;
        w.text_if("system_fingerprint", self.part(FINGERPRINT), fingerprint);
        w.close(self.part(EXTRA));
    }

    fn expand(&self) -> ChatResponse {
        let message = ChatMessage {
            role: self.string(ROLE),
            content: self.opt(HAS_CONTENT, CONTENT).map(Content::Text),
            name: None,
            tool_calls: None,
            tool_call_id: None,
            extra: self.map(MESSAGE_EXTRA),
        };
        let choice = Choice {
            index: self.index,
            message,
            finish_reason: self.opt(HAS_FINISH, FINISH),
            extra: self.map(CHOICE_EXTRA),
        };
        let [prompt_tokens, completion_tokens, total_tokens] = self.usage;
        ChatResponse {
            id: self.string(ID),
            object: self.string(OBJECT),
            created: self.created,
            model: self.string(MODEL),
            choices: vec![choice],
            usage: (self.has & HAS_USAGE != 0).then(|| Usage {
                prompt_tokens,
                completion_tokens,
                total_tokens,
                extra: self.map(USAGE_EXTRA),
            }),
            system_fingerprint: self.opt(HAS_FINGERPRINT, FINGERPRINT),
            extra: self.map(EXTRA),
        }
    }
}

/// One JSON object being written, as `serde_json`'s compact formatter writes it.
struct Writer<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> Writer<'a> {
    /// An object opened at the end of `out`.
    fn object(out: &'a mut Vec<u8>) -> Self {
        out.push(b'{');
        Writer { out, first: true }
    }

    fn key(&mut self, name: &str) {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        self.string(name);
        self.out.push(b':');
    }

    fn string(&mut self, s: &str) {
        // Writing a `str` into a `Vec` cannot fail.
        let _ = serde_json::to_writer(&mut *self.out, s);
    }

    fn number(&mut self, n: u64) {
        // Writing into a `Vec` cannot fail.
        let _ = write!(self.out, "{n}");
    }

    fn text_if(&mut self, name: &str, value: &str, present: bool) {
        if present {
            self.key(name);
            self.string(value);
        }
    }

    /// Close the object after the entries of `extra` (a map's JSON text, or empty), which
    /// a flattened map writes last.
    fn close(&mut self, extra: &str) {
        if let Some(inner) = extra.strip_prefix('{').and_then(|e| e.strip_suffix('}'))
            && !inner.is_empty()
        {
            if !self.first {
                self.out.push(b',');
            }
            self.out.extend_from_slice(inner.as_bytes());
        }
        self.out.push(b'}');
    }
}

/// A map's JSON text, empty for an empty map; `None` (hold the answer whole) in the
/// unlikely case it does not serialise. The text reads back as the same map: keys in the
/// map's order, strings escaped losslessly, numbers as written (`float_roundtrip`).
fn map_text(map: &Extra) -> Option<String> {
    if map.is_empty() {
        return Some(String::new());
    }
    serde_json::to_string(map).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn answer(body: Value) -> ChatResponse {
        serde_json::from_value(body).unwrap()
    }

    fn real() -> Value {
        json!({
            "id": "chatcmpl-AbC", "object": "chat.completion", "created": 1_733_000_000u64,
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [{"index": 0, "finish_reason": "stop", "logprobs": null,
                "message": {"role": "assistant", "content": "héllo \"there\"\n",
                    "refusal": null, "annotations": []}}],
            "usage": {"prompt_tokens": 20, "completion_tokens": 12, "total_tokens": 32,
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0}},
            "service_tier": "default", "system_fingerprint": "fp_0123"
        })
    }

    #[test]
    fn the_common_shape_is_compact_and_comes_back_the_same_answer_and_json() {
        let bare = json!({"choices": [{"message": {"role": "assistant"}}]});
        let scores = json!({"id": "x", "choices": [{"index": 2, "message": {"role": "assistant",
            "content": ""}}], "usage": {"prompt_tokens": 1, "completion_tokens": 2,
            "total_tokens": 3}, "score": 0.1_f64 + 0.2_f64, "big": 18_446_744_073_709_551_615u64,
            "neg": -9_223_372_036_854_775_808i64, "tiny": 5e-324, "nested": {"z": [1, {"a": "\u{1F600}\n\"\\"}], "a": null},
            "unicode": "é\u{0}\u{7f}\u{2028}"});
        for body in [real(), bare, scores] {
            let response = answer(body.clone());
            let stored = StoredAnswer::from(response.clone());
            assert!(stored.is_compact(), "{body}");
            assert_eq!(*stored.response(), response, "{body}");
            assert_eq!(
                serde_json::to_vec(&stored).unwrap(),
                serde_json::to_vec(&response).unwrap()
            );
            let mut written = Vec::new();
            stored.write_json(&mut written).unwrap();
            assert_eq!(
                String::from_utf8(written).unwrap(),
                serde_json::to_string(&response).unwrap(),
                "{body}"
            );
            let back: StoredAnswer = serde_json::from_value(body.clone()).unwrap();
            assert_eq!(back, stored);
        }
    }

    #[test]
    fn the_answer_a_compact_form_was_made_from_is_handed_out_once_then_built() {
        let stored = StoredAnswer::from(answer(real()));
        let (first, second) = (stored.response(), stored.response());
        assert!(!Arc::ptr_eq(&first, &second));
        assert_eq!(first, second);
        assert_eq!(*first, answer(real()));
        // A clone, a read back or a `Debug` never holds or takes it.
        let clone = StoredAnswer::from(answer(real())).clone();
        assert_eq!(*clone.response(), answer(real()));
        assert!(format!("{stored:?}").contains("chatcmpl-AbC"));
    }

    #[test]
    fn any_other_shape_is_held_whole_and_hands_out_the_same_arc() {
        let tool = json!({"choices": [{"index": 0, "message": {"role": "assistant",
            "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f",
            "arguments": "{}"}}]}}]});
        let two = json!({"choices": [{"message": {"role": "assistant", "content": "a"}},
            {"message": {"role": "assistant", "content": "b"}}]});
        let parts = json!({"choices": [{"message": {"role": "assistant",
            "content": [{"type": "text", "text": "a"}]}}]});
        let named = json!({"choices": [{"message": {"role": "assistant", "name": "n",
            "content": "a"}}]});
        for body in [tool, two, parts, named] {
            let response = answer(body.clone());
            let stored = StoredAnswer::from(response.clone());
            assert!(!stored.is_compact(), "{body}");
            assert!(Arc::ptr_eq(&stored.response(), &stored.response()));
            assert_eq!(*stored.response(), response);
            assert_eq!(
                serde_json::to_vec(&stored).unwrap(),
                serde_json::to_vec(&response).unwrap()
            );
        }
    }

    #[test]
    fn the_compact_form_weighs_less_than_the_answer_decoded() {
        let mut body = real();
        body["choices"][0]["message"]["content"] = json!("lorem ipsum ".repeat(170));
        let response = answer(body);
        let whole = super::super::weight::weigh(&response, 0);
        let compact = StoredAnswer::from(response.clone());
        let json = serde_json::to_vec(&response).unwrap().len() as u32;
        assert!(compact.is_compact());
        assert!(compact.weight() < whole, "{} vs {whole}", compact.weight());
        // What the compact form holds beyond the answer's JSON: its structs and rounding.
        assert!(
            compact.weight().saturating_sub(json) < 150,
            "{} beyond {json}",
            compact.weight()
        );
    }
}
