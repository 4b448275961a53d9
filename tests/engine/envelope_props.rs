//! Properties of the Redis envelope: what goes in comes out, and no corruption, truncation
//! or garbage gets past the decoder or makes it panic.

use llm_cache::envelope::{
    self, Binding, EnvelopeError, Flags, HEADER_LEN, MAC_LEN, MacKeys, TRAILER_LEN,
};
use proptest::prelude::*;
use xxhash_rust::xxh3::xxh3_64;

/// The key every envelope here is written for.
fn key() -> Binding {
    Binding::of_key("ai:cache:{the key}")
}

fn decode(bytes: &[u8]) -> Result<envelope::Envelope<'_>, EnvelopeError> {
    envelope::decode(bytes, &key(), &MacKeys::none())
}

/// Payloads from noise to highly repetitive, up to `max` bytes.
fn payload(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..max),
        // A short pattern repeated: compresses well.
        (prop::collection::vec(any::<u8>(), 1..24), 0..max).prop_map(|(pattern, len)| pattern
            .into_iter()
            .cycle()
            .take(len)
            .collect()),
        // Long runs of a few byte values, like padded JSON.
        prop::collection::vec((any::<u8>(), 1..512usize), 0..(max / 256).max(1)).prop_map(
            move |runs| {
                let mut out: Vec<u8> = runs
                    .into_iter()
                    .flat_map(|(b, n)| std::iter::repeat_n(b, n))
                    .collect();
                out.truncate(max);
                out
            }
        ),
    ]
}

fn threshold() -> impl Strategy<Value = usize> {
    prop_oneof![Just(0), Just(usize::MAX), 0..70_000usize]
}

/// An encoded envelope, raw or compressed, of a payload up to `max` bytes.
fn encoded(max: usize) -> impl Strategy<Value = Vec<u8>> {
    (payload(max), any::<u64>(), any::<u64>(), threshold()).prop_map(|(p, created, ttl, t)| {
        envelope::encode(&p, &key(), created, ttl, t, &MacKeys::none())
    })
}

/// Append a valid checksum, so the decoder's later stages see the bytes.
fn sealed(mut bytes: Vec<u8>) -> Vec<u8> {
    let sum = xxh3_64(&bytes);
    bytes.extend_from_slice(&sum.to_le_bytes());
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(192))]

    #[test]
    fn round_trip(
        payload in payload(64 << 10),
        created in any::<u64>(),
        ttl in any::<u64>(),
        threshold in threshold(),
    ) {
        let bytes = envelope::encode(&payload, &key(), created, ttl, threshold, &MacKeys::none());
        let env = decode(&bytes).unwrap();
        prop_assert_eq!(&*env.payload, &payload[..]);
        prop_assert_eq!(env.created_at_ms, created);
        prop_assert_eq!(env.ttl_ms, ttl);
        if env.flags.is_compressed() {
            prop_assert!(payload.len() >= threshold);
            prop_assert!(bytes.len() < HEADER_LEN + payload.len() + TRAILER_LEN);
        } else {
            prop_assert_eq!(env.flags, Flags::RAW);
            prop_assert_eq!(bytes.len(), HEADER_LEN + payload.len() + TRAILER_LEN);
        }
    }

    #[test]
    fn every_truncation_is_an_error(bytes in encoded(8 << 10)) {
        for len in 0..bytes.len() {
            prop_assert!(decode(&bytes[..len]).is_err(), "prefix of {} bytes decoded", len);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        let _ = decode(&bytes);
    }

    /// Garbage behind a valid header and checksum reaches the decompressor.
    #[test]
    fn sealed_garbage_never_panics(
        flags in prop_oneof![Just(0u8), Just(1u8), any::<u8>()],
        created in any::<u64>(),
        ttl in any::<u64>(),
        body in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..2048),
            // A plausible size prefix in front of garbage.
            (0u32..100_000, prop::collection::vec(any::<u8>(), 0..2048)).prop_map(|(n, rest)| {
                let mut v = n.to_le_bytes().to_vec();
                v.extend(rest);
                v
            }),
        ],
        limit in prop_oneof![Just(envelope::DEFAULT_MAX_DECOMPRESSED), 0..200_000usize],
    ) {
        // Never the signed flag: a MAC cannot be made up, and is tested below.
        let flags = flags & !Flags::SIGNED.bits();
        let mut bytes = b"LLMC\x03".to_vec();
        bytes.push(flags);
        bytes.extend_from_slice(&created.to_le_bytes());
        bytes.extend_from_slice(&ttl.to_le_bytes());
        bytes.extend_from_slice(key().as_bytes());
        bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&body);
        let bytes = sealed(bytes);
        match envelope::decode_with_limit(&bytes, &key(), &MacKeys::none(), limit) {
            Ok(env) => prop_assert!(env.payload.len() <= limit),
            Err(EnvelopeError::UnknownFlags(f)) => prop_assert_eq!(f, flags),
            Err(e) => prop_assert!(
                matches!(e, EnvelopeError::Decompress | EnvelopeError::TooLarge),
                "{:?}", e
            ),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// An entry read under any other key is a miss, signed or not, whatever it holds.
    #[test]
    fn an_entry_never_answers_for_another_key(
        payload in payload(4 << 10),
        threshold in threshold(),
        other in any::<[u8; 32]>(),
        signed in any::<bool>(),
    ) {
        let other = Binding::from_bytes(other);
        prop_assume!(other != key());
        let keys = if signed {
            MacKeys::new([b"a secret of 16+ bytes".as_slice()]).unwrap()
        } else {
            MacKeys::none()
        };
        let bytes = envelope::encode(&payload, &key(), 1, 2, threshold, &keys);
        prop_assert!(envelope::decode(&bytes, &key(), &keys).is_ok());
        prop_assert_eq!(envelope::decode(&bytes, &other, &keys), Err(EnvelopeError::WrongKey));
    }

    /// The same digest under two distinct key prefixes: the entry of one is a miss under
    /// the other, signed (one secret for both) or not.
    #[test]
    fn an_entry_never_answers_under_another_prefix(
        a in "[a-z:_-]{0,12}",
        b in "[a-z:_-]{0,12}",
        hex in "[0-9a-f]{64}",
        signed in any::<bool>(),
    ) {
        prop_assume!(a != b);
        let keys = if signed {
            MacKeys::new([b"one secret for both".as_slice()]).unwrap()
        } else {
            MacKeys::none()
        };
        let (in_a, in_b) = (format!("{a}:{{{hex}}}"), format!("{b}:{{{hex}}}"));
        let bytes = envelope::encode(b"answer", &Binding::of_key(&in_a), 1, 2, usize::MAX, &keys);
        prop_assert!(envelope::decode(&bytes, &Binding::of_key(&in_a), &keys).is_ok());
        prop_assert_eq!(
            envelope::decode(&bytes, &Binding::of_key(&in_b), &keys),
            Err(EnvelopeError::WrongKey)
        );
    }

    /// With secrets, any change to a signed entry that keeps its checksum valid (a
    /// forger recomputes xxh3) is refused, and so is an entry signed with another secret.
    #[test]
    fn signed_entries_cannot_be_forged(
        payload in payload(2 << 10),
        threshold in threshold(),
        pos in any::<prop::sample::Index>(),
        xor in 1u8..=255,
    ) {
        let keys = MacKeys::new([b"the secret, 16+ bytes".as_slice()]).unwrap();
        let bytes = envelope::encode(&payload, &key(), 1, 2, threshold, &keys);
        prop_assert_eq!(bytes.len(), envelope::encode(&payload, &key(), 1, 2, threshold, &MacKeys::none()).len() + MAC_LEN);
        let body = bytes.len() - TRAILER_LEN;
        let at = pos.index(body);
        let mut forged = bytes[..body].to_vec();
        forged[at] ^= xor;
        let forged = sealed(forged);
        prop_assert!(envelope::decode(&forged, &key(), &keys).is_err(), "byte {} forged", at);
        let other = MacKeys::new([b"another secret, 16+ b".as_slice()]).unwrap();
        prop_assert_eq!(envelope::decode(&bytes, &key(), &other), Err(EnvelopeError::Mac));
    }
}

proptest! {
    // Each case decodes the envelope once per byte; keep envelopes small.
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn every_single_byte_corruption_is_detected(
        bytes in encoded(2 << 10),
        xors in prop::collection::vec(1u8..=255, 64),
    ) {
        let mut corrupt = bytes.clone();
        for pos in 0..bytes.len() {
            let xor = xors[pos % xors.len()];
            corrupt[pos] ^= xor;
            prop_assert!(
                decode(&corrupt).is_err(),
                "byte {} xor {:#04x} of {} went undetected", pos, xor, bytes.len()
            );
            corrupt[pos] = bytes[pos];
        }
    }
}
