//! The envelope's unit tests: round trips, every rejected shape, bindings and MACs.

use super::*;

const T0: u64 = 1_700_000_000_000;
const DAY: u64 = 86_400_000;

fn d() -> Binding {
    Binding::of_key("ai:cache:{the key}")
}

fn none() -> MacKeys {
    MacKeys::none()
}

fn enc(payload: &[u8], created: u64, ttl: u64, threshold: usize) -> Vec<u8> {
    encode(payload, &d(), created, ttl, threshold, &none())
}

fn dec(bytes: &[u8]) -> Result<Envelope<'_>, EnvelopeError> {
    decode(bytes, &d(), &none())
}

/// Re-seal `bytes` (unsigned) after editing its header or payload.
fn reseal(mut bytes: Vec<u8>) -> Vec<u8> {
    bytes.truncate(bytes.len() - TRAILER_LEN);
    seal(&mut bytes, &none());
    bytes
}

fn compressible(len: usize) -> Vec<u8> {
    b"the quick brown fox jumps over the lazy dog. "
        .iter()
        .copied()
        .cycle()
        .take(len)
        .collect()
}

#[test]
fn layout_is_pinned() {
    // A storage format: changing these bytes breaks every entry already in Redis.
    let key = Binding::from_bytes([0xab; 32]);
    let bytes = encode(
        b"hi",
        &key,
        0x0102_0304_0506_0708,
        0x1112_1314_1516_1718,
        usize::MAX,
        &none(),
    );
    let mut expected = Vec::new();
    expected.extend_from_slice(b"LLMC");
    expected.push(3);
    expected.push(0);
    expected.extend_from_slice(&[0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01]);
    expected.extend_from_slice(&[0x18, 0x17, 0x16, 0x15, 0x14, 0x13, 0x12, 0x11]);
    expected.extend_from_slice(&[0xab; 32]);
    expected.extend_from_slice(&[2, 0, 0, 0]);
    expected.extend_from_slice(b"hi");
    let sum = xxh3_64(&expected);
    expected.extend_from_slice(&sum.to_le_bytes());
    assert_eq!(bytes, expected);
    assert_eq!(bytes.len(), HEADER_LEN + 2 + TRAILER_LEN);
}

#[test]
fn signed_layout_is_pinned() {
    let keys = MacKeys::new([b"0123456789abcdef0123456789abcdef"]).unwrap();
    let key = Binding::from_bytes([0xab; 32]);
    let bytes = encode(b"hi", &key, 1, 2, usize::MAX, &keys);
    let body = &bytes[..HEADER_LEN + 2];
    assert_eq!(body[FLAGS_AT], Flags::SIGNED.bits());
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(b"0123456789abcdef0123456789abcdef").unwrap();
    mac.update(body);
    let tag: [u8; 32] = mac.finalize().into_bytes().into();
    assert_eq!(&bytes[HEADER_LEN + 2..HEADER_LEN + 2 + MAC_LEN], &tag);
    let sum = xxh3_64(&bytes[..bytes.len() - TRAILER_LEN]);
    assert_eq!(&bytes[bytes.len() - TRAILER_LEN..], &sum.to_le_bytes());
}

#[test]
fn raw_round_trip_borrows() {
    let bytes = enc(b"hello", T0, DAY, 1024);
    let env = dec(&bytes).unwrap();
    assert_eq!(env.flags, Flags::RAW);
    assert!(matches!(env.payload, Cow::Borrowed(b"hello")));
    assert_eq!((env.created_at_ms, env.ttl_ms), (T0, DAY));
}

#[test]
fn an_entry_answers_only_for_its_own_key_name() {
    for threshold in [0, usize::MAX] {
        let bytes = enc(&compressible(2048), T0, DAY, threshold);
        assert!(dec(&bytes).is_ok());
        // Another digest, and the same digest under another prefix.
        for other in [
            "ai:cache:{another key}",
            "svc-b:{the key}",
            "ai:cache:{the key}:",
        ] {
            assert_eq!(
                decode(&bytes, &Binding::of_key(other), &none()),
                Err(EnvelopeError::WrongKey),
                "{other}"
            );
        }
    }
}

#[test]
fn a_signed_entry_is_bound_to_its_prefix_under_the_mac() {
    // Two caches sharing a secret: the MAC alone would accept each other's entries.
    let keys = MacKeys::new([b"shared secret, 16+ bytes"]).unwrap();
    let (a, b) = (Binding::of_key("svc-a:{h}"), Binding::of_key("svc-b:{h}"));
    let bytes = encode(b"answer", &a, T0, DAY, usize::MAX, &keys);
    assert!(decode(&bytes, &a, &keys).is_ok());
    assert_eq!(decode(&bytes, &b, &keys), Err(EnvelopeError::WrongKey));
    // Rewriting the key field (and the checksum) to svc-b's breaks the MAC.
    let mut moved = bytes.clone();
    moved[KEY_AT..LEN_AT].copy_from_slice(b.as_bytes());
    moved.truncate(moved.len() - TRAILER_LEN);
    let sum = xxh3_64(&moved);
    moved.extend_from_slice(&sum.to_le_bytes());
    assert_eq!(decode(&moved, &b, &keys), Err(EnvelopeError::Mac));
}

#[test]
fn secrets_sign_verify_and_rotate() {
    let old = MacKeys::new([b"old secret, 16+ bytes".as_slice()]).unwrap();
    let rotated = MacKeys::new([
        b"new secret, 16+ bytes".as_slice(),
        b"old secret, 16+ bytes",
    ])
    .unwrap();
    let new_only = MacKeys::new([b"new secret, 16+ bytes"]).unwrap();
    for threshold in [0, usize::MAX] {
        let by_old = encode(&compressible(3000), &d(), T0, DAY, threshold, &old);
        let by_new = encode(&compressible(3000), &d(), T0, DAY, threshold, &rotated);
        assert_eq!(
            decode(&by_old, &d(), &old).unwrap().payload,
            compressible(3000)
        );
        // Rotation: the new first secret signs; the old one still verifies.
        assert!(decode(&by_old, &d(), &rotated).is_ok());
        assert!(decode(&by_new, &d(), &rotated).is_ok());
        assert!(decode(&by_new, &d(), &new_only).is_ok());
        // Another secret, or none, or no MAC where one is required: a miss.
        assert_eq!(decode(&by_old, &d(), &new_only), Err(EnvelopeError::Mac));
        assert_eq!(decode(&by_old, &d(), &none()), Err(EnvelopeError::Mac));
        let unsigned = enc(&compressible(3000), T0, DAY, threshold);
        assert_eq!(decode(&unsigned, &d(), &old), Err(EnvelopeError::Mac));
        // A forger who rewrites the payload and the checksum cannot fix the MAC.
        let mut forged = by_old.clone();
        forged[HEADER_LEN + 10] ^= 1;
        let forged = reseal(forged);
        assert_eq!(decode(&forged, &d(), &old), Err(EnvelopeError::Mac));
        // Nor move a signed entry to another key.
        assert_eq!(
            decode(&by_old, &Binding::of_key("other"), &old),
            Err(EnvelopeError::WrongKey)
        );
    }
}

#[test]
fn short_secrets_are_refused_without_showing_them() {
    let err = MacKeys::new([b"0123456789abcdef".as_slice(), b"tiny-secret"]).unwrap_err();
    assert!(err.contains("#2") && !err.contains("tiny-secret"), "{err}");
    assert!(
        !format!("{:?}", MacKeys::new([b"0123456789abcdef"]).unwrap()).contains("0123456789abcdef")
    );
}

#[test]
fn compressible_payload_is_compressed() {
    let payload = compressible(4096);
    let bytes = enc(&payload, T0, DAY, 256);
    assert!(bytes.len() < payload.len() / 4, "{} bytes", bytes.len());
    let env = dec(&bytes).unwrap();
    assert!(env.flags.is_compressed());
    assert_eq!(&*env.payload, &payload[..]);
}

#[test]
fn below_threshold_stays_raw() {
    let payload = compressible(4096);
    let bytes = enc(&payload, T0, DAY, 4097);
    assert_eq!(bytes.len(), HEADER_LEN + payload.len() + TRAILER_LEN);
    assert_eq!(dec(&bytes).unwrap().flags, Flags::RAW);
}

#[test]
fn incompressible_payload_stays_raw() {
    // xorshift noise does not compress; storing it raw must win.
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let payload: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let bytes = enc(&payload, T0, DAY, 0);
    let env = dec(&bytes).unwrap();
    assert_eq!(env.flags, Flags::RAW);
    assert_eq!(&*env.payload, &payload[..]);
    assert_eq!(bytes.len(), HEADER_LEN + payload.len() + TRAILER_LEN);
}

#[test]
fn empty_payload_with_zero_threshold() {
    let bytes = enc(b"", T0, DAY, 0);
    let env = dec(&bytes).unwrap();
    assert_eq!(env.flags, Flags::RAW);
    assert!(env.payload.is_empty());
}

#[test]
fn errors_name_the_problem() {
    let good = enc(b"payload", T0, DAY, usize::MAX);
    assert_eq!(dec(&good[..HEADER_LEN - 1]), Err(EnvelopeError::Truncated));
    assert_eq!(dec(&good[..good.len() - 1]), Err(EnvelopeError::Truncated));

    let mut longer = good.clone();
    longer.push(0);
    assert_eq!(dec(&longer), Err(EnvelopeError::LengthMismatch));

    let mut magic = good.clone();
    magic[0] = b'X';
    assert_eq!(dec(&magic), Err(EnvelopeError::BadMagic));

    // The previous layouts (versions 1 and 2) are misses, whatever follows.
    for old in [1, 2] {
        let mut version = good.clone();
        version[VERSION_AT] = old;
        assert_eq!(dec(&version), Err(EnvelopeError::UnsupportedVersion(old)));
    }

    let mut body = good.clone();
    body[HEADER_LEN] ^= 0x20;
    assert_eq!(dec(&body), Err(EnvelopeError::Checksum));

    // The key is inside the checksum: editing it is corruption.
    let mut key = good.clone();
    key[KEY_AT] ^= 1;
    assert_eq!(dec(&key), Err(EnvelopeError::Checksum));

    // A newer writer's flag, correctly sealed.
    let mut flags = good.clone();
    flags[FLAGS_AT] = 0x04;
    assert_eq!(dec(&reseal(flags)), Err(EnvelopeError::UnknownFlags(0x04)));
}

#[test]
fn the_size_bound_is_checked_before_hashing() {
    // A header that declares 100 MB: refused from the header alone, before the
    // checksum (which would otherwise read all of it) and whatever the bytes hold.
    let mut bytes = enc(b"x", T0, DAY, usize::MAX);
    bytes[LEN_AT..HEADER_LEN].copy_from_slice(&(100u32 << 20).to_le_bytes());
    assert_eq!(dec(&bytes), Err(EnvelopeError::TooLarge));
    let payload = compressible(10_000);
    let raw = enc(&payload, T0, DAY, usize::MAX);
    let mut wrong_sum = raw.clone();
    let last = wrong_sum.len() - 1;
    wrong_sum[last] ^= 1;
    assert_eq!(
        decode_with_limit(&wrong_sum, &d(), &none(), 9_999),
        Err(EnvelopeError::TooLarge),
        "the bound comes first"
    );
}

#[test]
fn lying_lz4_is_refused() {
    let lz4 = |bytes: Vec<u8>| {
        let mut bytes = bytes;
        bytes[FLAGS_AT] = Flags::LZ4.bits();
        reseal(bytes)
    };
    // Raw bytes sealed with the lz4 flag: not a valid block of the declared size.
    let bytes = lz4(enc(b"\x05\x00\x00\x00garbage", T0, DAY, usize::MAX));
    assert_eq!(dec(&bytes), Err(EnvelopeError::Decompress));

    // Too short for the size prefix.
    let bytes = lz4(enc(b"\x05", T0, DAY, usize::MAX));
    assert_eq!(dec(&bytes), Err(EnvelopeError::Decompress));

    // A tiny block claiming 60 MiB is refused before anything is allocated.
    let bytes = lz4(enc(&(60u32 << 20).to_le_bytes(), T0, DAY, usize::MAX));
    assert_eq!(dec(&bytes), Err(EnvelopeError::Decompress));
}

#[test]
fn limit_applies_to_decompressed_and_raw_sizes() {
    let payload = compressible(10_000);
    let compressed = enc(&payload, T0, DAY, 0);
    assert!(compressed.len() < 1000);
    assert_eq!(
        decode_with_limit(&compressed, &d(), &none(), 9_999),
        Err(EnvelopeError::TooLarge)
    );
    assert!(decode_with_limit(&compressed, &d(), &none(), 10_000).is_ok());

    let raw = enc(&payload, T0, DAY, usize::MAX);
    assert_eq!(
        decode_with_limit(&raw, &d(), &none(), 9_999),
        Err(EnvelopeError::TooLarge)
    );
    assert!(decode_with_limit(&raw, &d(), &none(), 10_000).is_ok());
}

#[test]
fn remaining_ttl() {
    let env = dec(&enc(b"", T0, 1_000, 0)).unwrap().into_owned();
    assert_eq!(env.remaining_ttl_ms(T0), 1_000);
    assert_eq!(env.remaining_ttl_ms(T0 + 400), 600);
    assert_eq!(env.remaining_ttl_ms(T0 + 1_000), 0);
    assert_eq!(env.remaining_ttl_ms(T0 + 5_000), 0);
    // Reader clock behind the writer's: never more than the ttl given.
    assert_eq!(env.remaining_ttl_ms(T0 - 10_000), 1_000);
    // No overflow at the edges.
    let forever = dec(&enc(b"", u64::MAX, u64::MAX, 0)).unwrap().into_owned();
    assert_eq!(forever.remaining_ttl_ms(0), u64::MAX);
}
