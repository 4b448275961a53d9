//! The bytes stored in Redis for one cache entry: a versioned header, the (optionally
//! lz4-compressed) payload and an xxh3 checksum over everything before it. Decoding must
//! never panic and never allocate more than a caller-chosen bound, whatever Redis returns.
//!
//! Layout, version 1, little-endian:
//!
//! ```text
//! offset  size  field
//!      0     4  magic b"LLMC"
//!      4     1  version = 1
//!      5     1  flags (bit 0: payload is lz4 block with a u32 size prefix; others must be 0)
//!      6     8  created_at, unix ms
//!     14     8  ttl, ms (the L2 lifetime given at write)
//!     22     4  payload length (as stored, i.e. compressed length when bit 0 is set)
//!     26     n  payload
//!   26+n     8  xxh3-64 of bytes 0..26+n
//! ```

use std::borrow::Cow;

use xxhash_rust::xxh3::xxh3_64;

/// The first four bytes of every envelope.
pub const MAGIC: [u8; 4] = *b"LLMC";
/// The layout version this build writes and reads.
pub const VERSION: u8 = 1;
/// Bytes before the payload: magic, version, flags, `created_at`, `ttl`, payload length.
pub const HEADER_LEN: usize = 26;
/// Bytes after the payload: the `xxh3-64` checksum.
pub const TRAILER_LEN: usize = 8;
/// The largest payload [`decode`] will return (after decompression): 64 MiB.
pub const DEFAULT_MAX_DECOMPRESSED: usize = 64 << 20;

const MAGIC_AT: usize = 0;
const VERSION_AT: usize = 4;
const FLAGS_AT: usize = 5;
const CREATED_AT: usize = 6;
const TTL_AT: usize = 14;
const LEN_AT: usize = 22;
const _: () = assert!(LEN_AT + 4 == HEADER_LEN);
/// `lz4_flex`'s size-prepended block format starts with the decompressed length as u32 LE.
const LZ4_SIZE_PREFIX: usize = 4;
/// An lz4 block cannot expand more than 255x (one extension byte adds at most 255 to a
/// match length), so a larger declared size is a lie we refuse before allocating it.
const LZ4_MAX_RATIO: usize = 255;

/// The flag byte of an envelope. Only [`Flags::LZ4`] is defined in version 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Flags(u8);

impl Flags {
    /// No flags: the payload is stored as is.
    pub const RAW: Flags = Flags(0);
    /// The payload is an lz4 block prefixed with its decompressed size (u32 LE).
    pub const LZ4: Flags = Flags(1);
    const KNOWN: u8 = Self::LZ4.0;

    /// The flag byte as written.
    #[must_use]
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// Whether the stored payload was lz4-compressed.
    #[must_use]
    pub const fn is_compressed(self) -> bool {
        self.0 & Self::LZ4.0 != 0
    }
}

/// A decoded envelope. The payload is always the original (decompressed) bytes; it borrows
/// from the input when it was stored raw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// How the payload was stored.
    pub flags: Flags,
    /// When the entry was written, unix ms.
    pub created_at_ms: u64,
    /// The L2 lifetime given at write, ms.
    pub ttl_ms: u64,
    /// The original payload bytes.
    pub payload: Cow<'a, [u8]>,
}

impl Envelope<'_> {
    /// Milliseconds this entry has left at `now_ms`, never more than its `ttl_ms` (a reader
    /// whose clock is behind the writer's must not stretch a lifetime) and never negative.
    #[must_use]
    pub fn remaining_ttl_ms(&self, now_ms: u64) -> u64 {
        let expires_at = self.created_at_ms.saturating_add(self.ttl_ms);
        expires_at.saturating_sub(now_ms).min(self.ttl_ms)
    }

    /// Detach the envelope from the input buffer.
    #[must_use]
    pub fn into_owned(self) -> Envelope<'static> {
        Envelope {
            flags: self.flags,
            created_at_ms: self.created_at_ms,
            ttl_ms: self.ttl_ms,
            payload: Cow::Owned(self.payload.into_owned()),
        }
    }
}

/// Why bytes read from Redis are not a usable envelope. Every variant means "treat as a miss".
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// Shorter than its header, or than the length its header declares.
    #[error("envelope truncated")]
    Truncated,
    /// Does not start with `LLMC`: not written by this crate.
    #[error("envelope has bad magic")]
    BadMagic,
    /// Written by a layout version this build cannot read.
    #[error("unsupported envelope version {0}")]
    UnsupportedVersion(u8),
    /// Flag bits this build does not know are set.
    #[error("unknown envelope flags {0:#04x}")]
    UnknownFlags(u8),
    /// Longer than the length its header declares.
    #[error("envelope length does not match its header")]
    LengthMismatch,
    /// The xxh3 checksum does not match: the bytes were corrupted.
    #[error("envelope checksum mismatch")]
    Checksum,
    /// The compressed payload is not a valid lz4 block of its declared size.
    #[error("envelope payload does not decompress")]
    Decompress,
    /// The payload is larger than the decoder's limit.
    #[error("envelope payload exceeds the size limit")]
    TooLarge,
}

/// Encode `payload` into an envelope. The payload is lz4-compressed when it is at least
/// `compress_threshold` bytes long and compression makes it smaller; otherwise it is stored
/// raw. Uses a single allocation.
///
/// # Panics
///
/// If `payload` is 4 GiB or larger (the length fields are u32).
#[must_use]
pub fn encode(
    payload: &[u8],
    created_at_ms: u64,
    ttl_ms: u64,
    compress_threshold: usize,
) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("envelope payload must be smaller than 4 GiB");
    let mut out;
    if payload.len() >= compress_threshold {
        // Room for the worst case so lz4 writes straight into the envelope; if it does not
        // pay off, the raw payload fits in the same buffer.
        let block_at = HEADER_LEN + LZ4_SIZE_PREFIX;
        let block_room = lz4_flex::block::get_maximum_output_size(payload.len());
        out = vec![0u8; block_at + block_room + TRAILER_LEN];
        let block = &mut out[block_at..block_at + block_room];
        if let Ok(n) = lz4_flex::block::compress_into(payload, block)
            && LZ4_SIZE_PREFIX + n < payload.len()
        {
            out[HEADER_LEN..block_at].copy_from_slice(&len.to_le_bytes());
            out.truncate(block_at + n);
            write_header(&mut out, Flags::LZ4, created_at_ms, ttl_ms);
            seal(&mut out);
            return out;
        }
        out.truncate(HEADER_LEN);
    } else {
        out = Vec::with_capacity(HEADER_LEN + payload.len() + TRAILER_LEN);
        out.resize(HEADER_LEN, 0);
    }
    out.extend_from_slice(payload);
    write_header(&mut out, Flags::RAW, created_at_ms, ttl_ms);
    seal(&mut out);
    out
}

/// `out` holds the header space then the stored payload; fill in the header.
fn write_header(out: &mut [u8], flags: Flags, created_at_ms: u64, ttl_ms: u64) {
    // `encode` checked that the original payload fits in u32; a compressed one is shorter.
    let stored_len = (out.len() - HEADER_LEN) as u32;
    out[MAGIC_AT..VERSION_AT].copy_from_slice(&MAGIC);
    out[VERSION_AT] = VERSION;
    out[FLAGS_AT] = flags.bits();
    out[CREATED_AT..TTL_AT].copy_from_slice(&created_at_ms.to_le_bytes());
    out[TTL_AT..LEN_AT].copy_from_slice(&ttl_ms.to_le_bytes());
    out[LEN_AT..HEADER_LEN].copy_from_slice(&stored_len.to_le_bytes());
}

fn seal(out: &mut Vec<u8>) {
    let sum = xxh3_64(out);
    out.extend_from_slice(&sum.to_le_bytes());
}

/// Decode an envelope, refusing payloads larger than [`DEFAULT_MAX_DECOMPRESSED`].
///
/// # Errors
///
/// See [`decode_with_limit`].
pub fn decode(bytes: &[u8]) -> Result<Envelope<'_>, EnvelopeError> {
    decode_with_limit(bytes, DEFAULT_MAX_DECOMPRESSED)
}

/// Decode an envelope, refusing payloads (after decompression) larger than `max_payload`
/// bytes. Never panics, and allocates at most `max_payload` bytes whatever the input.
///
/// # Errors
///
/// An [`EnvelopeError`] naming the first problem found: any error means the bytes are not
/// a usable entry and should be treated as a miss.
pub fn decode_with_limit(bytes: &[u8], max_payload: usize) -> Result<Envelope<'_>, EnvelopeError> {
    let header = bytes
        .first_chunk::<HEADER_LEN>()
        .ok_or(EnvelopeError::Truncated)?;
    if header[MAGIC_AT..VERSION_AT] != MAGIC {
        return Err(EnvelopeError::BadMagic);
    }
    // Before anything else: another version may lay out the rest differently.
    if header[VERSION_AT] != VERSION {
        return Err(EnvelopeError::UnsupportedVersion(header[VERSION_AT]));
    }
    let stored_len =
        usize::try_from(read_u32(header, LEN_AT)).map_err(|_| EnvelopeError::TooLarge)?;
    let total = stored_len
        .checked_add(HEADER_LEN + TRAILER_LEN)
        .ok_or(EnvelopeError::TooLarge)?;
    if bytes.len() < total {
        return Err(EnvelopeError::Truncated);
    }
    if bytes.len() > total {
        return Err(EnvelopeError::LengthMismatch);
    }
    let (sealed, trailer) = bytes.split_at(HEADER_LEN + stored_len);
    let trailer = trailer
        .first_chunk::<TRAILER_LEN>()
        .ok_or(EnvelopeError::Truncated)?;
    // A plain u64 comparison: fuzzers see its operands and can satisfy it.
    if xxh3_64(sealed) != u64::from_le_bytes(*trailer) {
        return Err(EnvelopeError::Checksum);
    }
    // After the checksum: a flag byte we do not know is a newer writer, not corruption.
    let flags = header[FLAGS_AT];
    if flags & !Flags::KNOWN != 0 {
        return Err(EnvelopeError::UnknownFlags(flags));
    }
    let flags = Flags(flags);
    let stored = &sealed[HEADER_LEN..];
    let payload = if flags.is_compressed() {
        Cow::Owned(decompress(stored, max_payload)?)
    } else if stored.len() > max_payload {
        return Err(EnvelopeError::TooLarge);
    } else {
        Cow::Borrowed(stored)
    };
    Ok(Envelope {
        flags,
        created_at_ms: read_u64(header, CREATED_AT),
        ttl_ms: read_u64(header, TTL_AT),
        payload,
    })
}

fn decompress(stored: &[u8], max_payload: usize) -> Result<Vec<u8>, EnvelopeError> {
    let (prefix, block) = stored
        .split_first_chunk::<LZ4_SIZE_PREFIX>()
        .ok_or(EnvelopeError::Decompress)?;
    let size = usize::try_from(u32::from_le_bytes(*prefix)).map_err(|_| EnvelopeError::TooLarge)?;
    if size > max_payload {
        return Err(EnvelopeError::TooLarge);
    }
    if size > block.len().saturating_mul(LZ4_MAX_RATIO) {
        return Err(EnvelopeError::Decompress);
    }
    let mut out = vec![0u8; size];
    match lz4_flex::block::decompress_into(block, &mut out) {
        Ok(n) if n == size => Ok(out),
        _ => Err(EnvelopeError::Decompress),
    }
}

fn read_u32(header: &[u8; HEADER_LEN], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&header[at..at + 4]);
    u32::from_le_bytes(b)
}

fn read_u64(header: &[u8; HEADER_LEN], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&header[at..at + 8]);
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000_000;
    const DAY: u64 = 86_400_000;

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
        let bytes = encode(
            b"hi",
            0x0102_0304_0506_0708,
            0x1112_1314_1516_1718,
            usize::MAX,
        );
        let mut expected = Vec::new();
        expected.extend_from_slice(b"LLMC");
        expected.push(1);
        expected.push(0);
        expected.extend_from_slice(&[0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01]);
        expected.extend_from_slice(&[0x18, 0x17, 0x16, 0x15, 0x14, 0x13, 0x12, 0x11]);
        expected.extend_from_slice(&[2, 0, 0, 0]);
        expected.extend_from_slice(b"hi");
        let sum = xxh3_64(&expected);
        expected.extend_from_slice(&sum.to_le_bytes());
        assert_eq!(bytes, expected);
        assert_eq!(bytes.len(), HEADER_LEN + 2 + TRAILER_LEN);
    }

    #[test]
    fn raw_round_trip_borrows() {
        let bytes = encode(b"hello", T0, DAY, 1024);
        let env = decode(&bytes).unwrap();
        assert_eq!(env.flags, Flags::RAW);
        assert!(matches!(env.payload, Cow::Borrowed(b"hello")));
        assert_eq!((env.created_at_ms, env.ttl_ms), (T0, DAY));
    }

    #[test]
    fn compressible_payload_is_compressed() {
        let payload = compressible(4096);
        let bytes = encode(&payload, T0, DAY, 256);
        assert!(bytes.len() < payload.len() / 4, "{} bytes", bytes.len());
        let env = decode(&bytes).unwrap();
        assert!(env.flags.is_compressed());
        assert_eq!(&*env.payload, &payload[..]);
    }

    #[test]
    fn below_threshold_stays_raw() {
        let payload = compressible(4096);
        let bytes = encode(&payload, T0, DAY, 4097);
        assert_eq!(bytes.len(), HEADER_LEN + payload.len() + TRAILER_LEN);
        assert_eq!(decode(&bytes).unwrap().flags, Flags::RAW);
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
        let bytes = encode(&payload, T0, DAY, 0);
        let env = decode(&bytes).unwrap();
        assert_eq!(env.flags, Flags::RAW);
        assert_eq!(&*env.payload, &payload[..]);
        assert_eq!(bytes.len(), HEADER_LEN + payload.len() + TRAILER_LEN);
    }

    #[test]
    fn empty_payload_with_zero_threshold() {
        let bytes = encode(b"", T0, DAY, 0);
        let env = decode(&bytes).unwrap();
        assert_eq!(env.flags, Flags::RAW);
        assert!(env.payload.is_empty());
    }

    #[test]
    fn errors_name_the_problem() {
        let good = encode(b"payload", T0, DAY, usize::MAX);
        assert_eq!(
            decode(&good[..HEADER_LEN - 1]),
            Err(EnvelopeError::Truncated)
        );
        assert_eq!(
            decode(&good[..good.len() - 1]),
            Err(EnvelopeError::Truncated)
        );

        let mut longer = good.clone();
        longer.push(0);
        assert_eq!(decode(&longer), Err(EnvelopeError::LengthMismatch));

        let mut magic = good.clone();
        magic[0] = b'X';
        assert_eq!(decode(&magic), Err(EnvelopeError::BadMagic));

        let mut version = good.clone();
        version[VERSION_AT] = 2;
        assert_eq!(decode(&version), Err(EnvelopeError::UnsupportedVersion(2)));

        let mut body = good.clone();
        body[HEADER_LEN] ^= 0x20;
        assert_eq!(decode(&body), Err(EnvelopeError::Checksum));

        // A newer writer's flag, correctly sealed.
        let mut flags = good[..good.len() - TRAILER_LEN].to_vec();
        flags[FLAGS_AT] = 0x02;
        seal(&mut flags);
        assert_eq!(decode(&flags), Err(EnvelopeError::UnknownFlags(0x02)));
    }

    #[test]
    fn lying_lz4_is_refused() {
        // Raw bytes sealed with the lz4 flag: not a valid block of the declared size.
        let mut bytes = encode(b"\x05\x00\x00\x00garbage", T0, DAY, usize::MAX);
        bytes.truncate(bytes.len() - TRAILER_LEN);
        bytes[FLAGS_AT] = Flags::LZ4.bits();
        seal(&mut bytes);
        assert_eq!(decode(&bytes), Err(EnvelopeError::Decompress));

        // Too short for the size prefix.
        let mut bytes = encode(b"\x05", T0, DAY, usize::MAX);
        bytes.truncate(bytes.len() - TRAILER_LEN);
        bytes[FLAGS_AT] = Flags::LZ4.bits();
        seal(&mut bytes);
        assert_eq!(decode(&bytes), Err(EnvelopeError::Decompress));

        // A tiny block claiming 60 MiB is refused before anything is allocated.
        let mut bytes = encode(&(60u32 << 20).to_le_bytes(), T0, DAY, usize::MAX);
        bytes.truncate(bytes.len() - TRAILER_LEN);
        bytes[FLAGS_AT] = Flags::LZ4.bits();
        seal(&mut bytes);
        assert_eq!(decode(&bytes), Err(EnvelopeError::Decompress));
    }

    #[test]
    fn limit_applies_to_decompressed_and_raw_sizes() {
        let payload = compressible(10_000);
        let compressed = encode(&payload, T0, DAY, 0);
        assert!(compressed.len() < 1000);
        assert_eq!(
            decode_with_limit(&compressed, 9_999),
            Err(EnvelopeError::TooLarge)
        );
        assert!(decode_with_limit(&compressed, 10_000).is_ok());

        let raw = encode(&payload, T0, DAY, usize::MAX);
        assert_eq!(decode_with_limit(&raw, 9_999), Err(EnvelopeError::TooLarge));
        assert!(decode_with_limit(&raw, 10_000).is_ok());
    }

    #[test]
    fn remaining_ttl() {
        let env = decode(&encode(b"", T0, 1_000, 0)).unwrap().into_owned();
        assert_eq!(env.remaining_ttl_ms(T0), 1_000);
        assert_eq!(env.remaining_ttl_ms(T0 + 400), 600);
        assert_eq!(env.remaining_ttl_ms(T0 + 1_000), 0);
        assert_eq!(env.remaining_ttl_ms(T0 + 5_000), 0);
        // Reader clock behind the writer's: never more than the ttl given.
        assert_eq!(env.remaining_ttl_ms(T0 - 10_000), 1_000);
        // No overflow at the edges.
        let forever = decode(&encode(b"", u64::MAX, u64::MAX, 0))
            .unwrap()
            .into_owned();
        assert_eq!(forever.remaining_ttl_ms(0), u64::MAX);
    }
}
