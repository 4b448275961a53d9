//! The JSON bytes of recently served chat answers, so that an L1 hit, which hands back the
//! same `Arc` as the hit before it, is not serialised again on every request (issue 26,
//! item 1). A fixed table of slots, one answer each, found by the answer's address and
//! checked by identity: a slot holds a `Weak` of the answer it was made from, which keeps
//! that allocation (not the answer) from being reused while the slot holds it, so an equal
//! address is the same, immutable answer. Bounded: at most [`SLOTS`] answers of at most
//! [`MAX_BYTES`] each. Never holds an answer alive, never changes what is sent.

use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;

use crate::request::ChatResponse;

/// Slots in the table (a power of two).
const SLOTS: usize = 1024;
/// Answers longer than this are serialised each time (and not kept): 8 MiB at most in all.
const MAX_BYTES: usize = 8 << 10;

type Slot = Mutex<Option<(Weak<ChatResponse>, Bytes)>>;

/// The table of serialised answers.
pub(crate) struct AnswerBytes {
    slots: Box<[Slot]>,
}

impl AnswerBytes {
    pub(crate) fn new() -> Self {
        Self {
            slots: (0..SLOTS).map(|_| Mutex::new(None)).collect(),
        }
    }

    /// `answer` as JSON: the bytes kept for this very answer, or serialised now (and kept
    /// when `keep` and short enough).
    pub(crate) fn json(&self, answer: &Arc<ChatResponse>, keep: bool) -> serde_json::Result<Bytes> {
        let slot = &self.slots[index(Arc::as_ptr(answer))];
        if let Some((held, bytes)) = &*lock(slot)
            && std::ptr::eq(held.as_ptr(), Arc::as_ptr(answer))
        {
            return Ok(bytes.clone());
        }
        let bytes = Bytes::from(serde_json::to_vec(&**answer)?);
        if keep && bytes.len() <= MAX_BYTES {
            *lock(slot) = Some((Arc::downgrade(answer), bytes.clone()));
        }
        Ok(bytes)
    }
}

fn lock(slot: &Slot) -> std::sync::MutexGuard<'_, Option<(Weak<ChatResponse>, Bytes)>> {
    slot.lock().unwrap_or_else(|e| e.into_inner())
}

/// The slot of an address: Fibonacci hashing of the address without its alignment bits.
fn index(address: *const ChatResponse) -> usize {
    let a = (address as usize as u64) >> 4;
    (a.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - SLOTS.trailing_zeros())) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn answer(content: &str) -> Arc<ChatResponse> {
        Arc::new(
            serde_json::from_value(json!({
                "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "m",
                "choices": [{"index": 0, "finish_reason": "stop",
                    "message": {"role": "assistant", "content": content}}]
            }))
            .unwrap(),
        )
    }

    #[test]
    fn the_same_answer_is_serialised_once_and_another_never_gets_its_bytes() {
        let table = AnswerBytes::new();
        let first = answer("first");
        let bytes = table.json(&first, true).unwrap();
        assert_eq!(&bytes[..], serde_json::to_vec(&*first).unwrap());
        // The same answer again: the very bytes kept, not a new serialisation.
        let again = table.json(&first, true).unwrap();
        assert_eq!(again.as_ptr(), bytes.as_ptr());
        // An equal answer in another allocation is serialised on its own.
        let copy = Arc::new((*first).clone());
        assert_ne!(table.json(&copy, true).unwrap().as_ptr(), bytes.as_ptr());
        // Answers made after the first is dropped (its address free to reuse) are theirs.
        drop(first);
        for n in 0..64 {
            let other = answer(&format!("other {n}"));
            let json = table.json(&other, true).unwrap();
            assert_eq!(&json[..], serde_json::to_vec(&*other).unwrap());
        }
    }

    #[test]
    fn answers_not_kept_or_too_long_are_serialised_each_time() {
        let table = AnswerBytes::new();
        let bypass = answer("not kept");
        let once = table.json(&bypass, false).unwrap();
        assert_ne!(table.json(&bypass, false).unwrap().as_ptr(), once.as_ptr());
        let long = answer(&"x".repeat(MAX_BYTES));
        let once = table.json(&long, true).unwrap();
        assert_eq!(&once[..], serde_json::to_vec(&*long).unwrap());
        assert_ne!(table.json(&long, true).unwrap().as_ptr(), once.as_ptr());
    }
}
