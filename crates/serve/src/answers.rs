//! The JSON bytes of recently served chat answers, so that an L1 hit, served from the same
//! entry as the hit before it, is not serialised again on every request (issue 26, item 1).
//! A fixed table of slots, one answer each, found by the address of the entry the tiers
//! hold (`Cached::stored`) and checked by identity: a slot holds a `Weak` of that entry,
//! which keeps its allocation (not the entry) from being reused while the slot holds it,
//! so an equal address is the same, immutable answer. Bounded: at most [`SLOTS`] answers
//! of at most [`MAX_BYTES`] each. Never holds an entry alive, never changes what is sent.

use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;

use llm_cache_core::StoredAnswer;

use crate::request::ChatResponse;

/// Slots in the table (a power of two).
const SLOTS: usize = 1024;
/// Answers longer than this are serialised each time (and not kept): 8 MiB at most in all.
const MAX_BYTES: usize = 8 << 10;

type Slot = Mutex<Option<(Weak<StoredAnswer>, Bytes)>>;

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

    /// `answer`, served from the entry `stored` (none for an answer the tiers do not
    /// hold), as JSON: the bytes kept for this very entry, or serialised now (and kept when
    /// short enough).
    pub(crate) fn json(
        &self,
        stored: Option<&Arc<StoredAnswer>>,
        answer: &ChatResponse,
    ) -> serde_json::Result<Bytes> {
        let Some(stored) = stored else {
            return serde_json::to_vec(answer).map(Bytes::from);
        };
        let slot = &self.slots[index(Arc::as_ptr(stored))];
        if let Some((held, bytes)) = &*lock(slot)
            && std::ptr::eq(held.as_ptr(), Arc::as_ptr(stored))
        {
            return Ok(bytes.clone());
        }
        let bytes = Bytes::from(serde_json::to_vec(answer)?);
        if bytes.len() <= MAX_BYTES {
            *lock(slot) = Some((Arc::downgrade(stored), bytes.clone()));
        }
        Ok(bytes)
    }
}

fn lock(slot: &Slot) -> std::sync::MutexGuard<'_, Option<(Weak<StoredAnswer>, Bytes)>> {
    slot.lock().unwrap_or_else(|e| e.into_inner())
}

/// The slot of an address: Fibonacci hashing of the address without its alignment bits.
fn index(address: *const StoredAnswer) -> usize {
    let a = (address as usize as u64) >> 4;
    (a.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - SLOTS.trailing_zeros())) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn answer(content: &str) -> Arc<StoredAnswer> {
        Arc::new(
            serde_json::from_value(json!({
                "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "m",
                "choices": [{"index": 0, "finish_reason": "stop",
                    "message": {"role": "assistant", "content": content}}]
            }))
            .unwrap(),
        )
    }

    fn json(table: &AnswerBytes, stored: &Arc<StoredAnswer>) -> Bytes {
        table.json(Some(stored), &stored.response()).unwrap()
    }

    fn plain(stored: &StoredAnswer) -> Vec<u8> {
        serde_json::to_vec(&*stored.response()).unwrap()
    }

    #[test]
    fn the_same_answer_is_serialised_once_and_another_never_gets_its_bytes() {
        let table = AnswerBytes::new();
        let first = answer("first");
        assert!(first.is_compact());
        let bytes = json(&table, &first);
        assert_eq!(&bytes[..], plain(&first));
        // The same entry again: the very bytes kept, not a new serialisation.
        assert_eq!(json(&table, &first).as_ptr(), bytes.as_ptr());
        // An equal entry in another allocation is serialised on its own.
        let copy = Arc::new((*first).clone());
        assert_ne!(json(&table, &copy).as_ptr(), bytes.as_ptr());
        // Entries made after the first is dropped (its address free to reuse) are theirs.
        drop(first);
        for n in 0..64 {
            let other = answer(&format!("other {n}"));
            assert_eq!(&json(&table, &other)[..], plain(&other));
        }
    }

    #[test]
    fn answers_not_kept_or_too_long_are_serialised_each_time() {
        let table = AnswerBytes::new();
        // A bypassed answer has no entry in the tiers.
        let bypass = answer("not kept").response();
        let once = table.json(None, &bypass).unwrap();
        assert_ne!(table.json(None, &bypass).unwrap().as_ptr(), once.as_ptr());
        let long = answer(&"x".repeat(MAX_BYTES));
        let once = json(&table, &long);
        assert_eq!(&once[..], plain(&long));
        assert_ne!(json(&table, &long).as_ptr(), once.as_ptr());
    }
}
