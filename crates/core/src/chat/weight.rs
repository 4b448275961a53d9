//! What an answer held whole costs while L1 holds it, for `StoredAnswer`'s weight, and
//! `compact`, which gives back the spare capacity a fetched, assembled or decoded answer
//! carries before L1 keeps it; and `ChatCodec`, the chat tier's codec. Plain functions of a
//! `ChatResponse`: no tiers, no I/O; every walk over JSON values uses an explicit stack, so
//! no nesting can exhaust a thread's stack.
//!
//! Most answers are held in `StoredAnswer`'s compact form, which weighs itself. One held
//! whole (tool calls, several choices, content parts) costs its structs (a `ChatResponse`
//! and each `Choice` are 208 bytes each), every string and vector at its capacity, and
//! every allocation's header and rounding: the weigher counts all of it, and the engine
//! adds the entry's own cost.

use std::mem::size_of;

use serde_json::Value;

use super::StoredAnswer;
use crate::error::{Error, Result};
use crate::request::{ChatMessage, ChatResponse, Choice, Content, Extra, ToolCall};
use crate::tiered::codec::{Codec, JsonCodec, heap_bytes};

/// The bytes `response` holds in memory, its `Arc` allocation included.
pub(crate) fn weigh(response: &ChatResponse, _encoded_len: usize) -> u32 {
    let mut w = Tally::default();
    w.alloc(16 + size_of::<ChatResponse>());
    w.alloc(response.id.capacity());
    w.alloc(response.object.capacity());
    w.alloc(response.model.capacity());
    w.vec::<Choice>(response.choices.capacity());
    for choice in &response.choices {
        w.message(&choice.message);
        w.opt_string(choice.finish_reason.as_ref());
        w.map(&choice.extra);
    }
    if let Some(usage) = &response.usage {
        w.map(&usage.extra);
    }
    w.opt_string(response.system_fingerprint.as_ref());
    w.map(&response.extra);
    w.values();
    u32::try_from(w.bytes).unwrap_or(u32::MAX)
}

/// Drop the spare capacity of `response`'s strings and vectors (serde leaves a vector of
/// one choice room for four; an assembled stream's text has room to grow). A miss or an L2
/// hit pays it once; the answer is then held for as long as L1 keeps it.
pub(crate) fn compact(response: &mut ChatResponse) {
    let mut values = Vec::new();
    exact_vec(&mut response.choices);
    exact_string(&mut response.id);
    exact_string(&mut response.object);
    exact_string(&mut response.model);
    for choice in &mut response.choices {
        let m = &mut choice.message;
        exact_string(&mut m.role);
        match &mut m.content {
            Some(Content::Text(text)) => exact_string(text),
            Some(Content::Parts(parts)) => {
                exact_vec(parts);
                values.extend(parts.iter_mut());
            }
            None => {}
        }
        exact_opt(&mut m.name);
        exact_opt(&mut m.tool_call_id);
        if let Some(calls) = &mut m.tool_calls {
            exact_vec(calls);
            for call in calls {
                exact_string(&mut call.id);
                exact_string(&mut call.kind);
                exact_string(&mut call.function.name);
                exact_string(&mut call.function.arguments);
                values.extend(call.function.extra.values_mut());
                values.extend(call.extra.values_mut());
            }
        }
        values.extend(m.extra.values_mut());
        exact_opt(&mut choice.finish_reason);
        values.extend(choice.extra.values_mut());
    }
    if let Some(usage) = &mut response.usage {
        values.extend(usage.extra.values_mut());
    }
    exact_opt(&mut response.system_fingerprint);
    values.extend(response.extra.values_mut());
    while let Some(value) = values.pop() {
        match value {
            Value::String(s) => exact_string(s),
            Value::Array(items) => {
                exact_vec(items);
                values.extend(items.iter_mut());
            }
            Value::Object(map) => values.extend(map.values_mut()),
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }
}

fn exact_opt(s: &mut Option<String>) {
    if let Some(s) = s {
        exact_string(s);
    }
}

/// `s` in an allocation of its length. A copy, not `shrink_to_fit`: shrinking in place
/// leaves the freed tail as a small hole beside a long-lived allocation, and such holes
/// grew the process by a third under L1's churn; the whole old allocation, freed, is
/// reused by the next answer's.
fn exact_string(s: &mut String) {
    if s.capacity() > s.len() {
        *s = s.as_str().to_owned();
    }
}

/// `v` in an allocation of its length (a copy, as for [`exact_string`]).
fn exact_vec<T>(v: &mut Vec<T>) {
    if v.capacity() > v.len() {
        let mut exact = Vec::with_capacity(v.len());
        exact.append(v);
        *v = exact;
    }
}

/// `LlmCache`'s codec: the answer's JSON, as [`JsonCodec`] writes a `ChatResponse` (entries
/// stay readable by every instance and version), read back into a [`StoredAnswer`].
pub(crate) struct ChatCodec;

impl Codec<StoredAnswer> for ChatCodec {
    /// Into a buffer sized for the answer's text up front: grown by doubling from empty, a
    /// large answer's encoding left a chain of freed buffers behind each fill, which the
    /// allocator could not reuse for the long-lived answers (the process grew by up to
    /// a third more than L1's bound with 50 KB answers).
    fn encode(&self, value: &StoredAnswer) -> Result<Vec<u8>> {
        let text = value.text_len();
        let mut bytes = Vec::with_capacity(text.saturating_add(1024));
        value
            .write_json(&mut bytes)
            .map_err(|e| Error::codec(format!("value does not serialize: {e}")))?;
        Ok(bytes)
    }

    fn decode(&self, bytes: &[u8]) -> Result<StoredAnswer> {
        let response: ChatResponse = JsonCodec.decode(bytes)?;
        Ok(StoredAnswer::from(response))
    }
}

/// Bytes counted so far, and the JSON values still to count.
#[derive(Default)]
struct Tally<'a> {
    bytes: u64,
    pending: Vec<&'a Value>,
}

/// A `serde_json::Map` is a `BTreeMap<String, Value>`: nodes of room for 11 entries, a
/// leaf with a parent pointer and two u16 counts, an internal node with 12 edges besides.
const MAP_LEAF: usize =
    (8 + 11 * (size_of::<String>() + size_of::<Value>()) + 4).next_multiple_of(8);
const MAP_INTERNAL: usize = MAP_LEAF + 12 * 8;

impl<'a> Tally<'a> {
    fn alloc(&mut self, len: usize) {
        self.bytes += u64::from(heap_bytes(len));
    }

    fn vec<T>(&mut self, capacity: usize) {
        self.alloc(capacity.saturating_mul(size_of::<T>()));
    }

    fn opt_string(&mut self, s: Option<&String>) {
        if let Some(s) = s {
            self.alloc(s.capacity());
        }
    }

    /// A map's nodes (one leaf up to 11 entries; beyond, leaves about two thirds full),
    /// its keys, and its values (counted by [`values`](Self::values)).
    fn map(&mut self, map: &'a Extra) {
        let n = map.len();
        if n == 0 {
            return;
        }
        if n <= 11 {
            self.alloc(MAP_LEAF);
        } else {
            let leaves = n.div_ceil(7);
            for _ in 0..leaves {
                self.alloc(MAP_LEAF);
            }
            for _ in 0..leaves.div_ceil(5) {
                self.alloc(MAP_INTERNAL);
            }
        }
        for (key, value) in map {
            self.alloc(key.capacity());
            self.pending.push(value);
        }
    }

    fn message(&mut self, m: &'a ChatMessage) {
        self.alloc(m.role.capacity());
        match &m.content {
            Some(Content::Text(text)) => self.alloc(text.capacity()),
            Some(Content::Parts(parts)) => {
                self.vec::<Value>(parts.capacity());
                self.pending.extend(parts);
            }
            None => {}
        }
        self.opt_string(m.name.as_ref());
        self.opt_string(m.tool_call_id.as_ref());
        if let Some(calls) = &m.tool_calls {
            self.vec::<ToolCall>(calls.capacity());
            for call in calls {
                self.alloc(call.id.capacity());
                self.alloc(call.kind.capacity());
                self.alloc(call.function.name.capacity());
                self.alloc(call.function.arguments.capacity());
                self.map(&call.function.extra);
                self.map(&call.extra);
            }
        }
        self.map(&m.extra);
    }

    /// Every value still pending, and what they hold.
    fn values(&mut self) {
        while let Some(value) = self.pending.pop() {
            match value {
                Value::String(s) => self.alloc(s.capacity()),
                Value::Array(items) => {
                    self.vec::<Value>(items.capacity());
                    self.pending.extend(items);
                }
                Value::Object(map) => self.map(map),
                Value::Null | Value::Bool(_) | Value::Number(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn decoded(body: &Value) -> ChatResponse {
        serde_json::from_slice(&serde_json::to_vec(body).unwrap()).unwrap()
    }

    #[test]
    fn compact_keeps_the_answer_and_drops_spare_capacity() {
        let body = json!({"id": "c1", "choices": [{"message": {"role": "assistant",
            "content": "hi", "annotations": [1, 2, 3, 4, 5]}}], "x": ["a", "b"]});
        let loose = || {
            let mut r = decoded(&body);
            r.choices[0].finish_reason = Some(String::with_capacity(64));
            r
        };
        let mut r = loose();
        assert!(
            r.choices.capacity() > 1,
            "serde leaves room: the case this is for"
        );
        let before = r.clone();
        compact(&mut r);
        assert_eq!(r, before);
        assert_eq!(r.choices.capacity(), 1);
        assert_eq!(r.choices[0].finish_reason.as_ref().unwrap().capacity(), 0);
        let Value::Array(a) = &r.choices[0].message.extra["annotations"] else {
            panic!("annotations")
        };
        assert_eq!(a.capacity(), 5);
        // The finish reason's 64 spare bytes, and at least one spare choice.
        let saved = weigh(&loose(), 0) - weigh(&r, 0);
        assert!(
            saved >= heap_bytes(64) + size_of::<Choice>() as u32,
            "{saved}"
        );
    }

    #[test]
    fn weigh_counts_structs_capacities_and_map_nodes() {
        let empty = ChatResponse::default();
        assert_eq!(weigh(&empty, 0), heap_bytes(16 + size_of::<ChatResponse>()));
        let mut text = decoded(&json!({"choices": [{"message": {"content": "x"}}]}));
        compact(&mut text);
        let plain = weigh(&text, 0);
        assert_eq!(
            plain,
            weigh(&empty, 0) + heap_bytes(size_of::<Choice>()) + heap_bytes(1)
        );
        // One extra field costs a map node (about 640 bytes), its key and its value.
        text.extra.insert("service_tier".into(), json!("default"));
        assert_eq!(
            weigh(&text, 0),
            plain + heap_bytes(MAP_LEAF) + heap_bytes(12) + heap_bytes(7)
        );
        // Many fields: more nodes, each key and value counted.
        for i in 0..100 {
            text.extra.insert(format!("k{i:03}"), json!(i));
        }
        assert!(weigh(&text, 0) > plain + 15 * heap_bytes(MAP_LEAF) + 100 * 32);
    }

    #[test]
    fn deep_values_neither_overflow_nor_abort() {
        let mut deep = Value::from(1);
        for _ in 0..100_000 {
            deep = Value::Array(vec![deep]);
        }
        let mut r = ChatResponse::default();
        r.extra.insert("deep".into(), deep);
        compact(&mut r);
        assert!(weigh(&r, 0) > 100_000 * heap_bytes(size_of::<Value>()));
        // Dropped one level at a time: the recursive drop would overflow the stack.
        let mut v = r.extra.remove("deep").unwrap();
        while let Value::Array(mut items) = v {
            v = items.pop().unwrap_or(Value::Null);
        }
    }

    #[test]
    fn the_codec_writes_plain_json_and_reads_it_compacted() {
        let body = json!({"id": "c", "choices": [{"index": 0,
            "message": {"role": "assistant", "content": "a"}}]});
        let bytes = ChatCodec.encode(&decoded(&body).into()).unwrap();
        assert_eq!(serde_json::from_slice::<Value>(&bytes).unwrap(), body);
        let back = ChatCodec.decode(&bytes).unwrap();
        assert!(back.is_compact());
        assert_eq!(*back.response(), decoded(&body));
        // An answer held whole is compacted before L1 holds it.
        let tools = json!({"choices": [{"index": 0, "message": {"role": "assistant",
            "tool_calls": [{"id": "c", "type": "function",
                "function": {"name": "f", "arguments": "{}"}}]}}]});
        let back = ChatCodec
            .decode(&serde_json::to_vec(&tools).unwrap())
            .unwrap();
        assert!(!back.is_compact());
        assert_eq!(back.response().choices.capacity(), 1);
        assert!(ChatCodec.decode(b"[1]").is_err());
    }
}
