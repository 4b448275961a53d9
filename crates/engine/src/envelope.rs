//! The bytes stored in Redis for one cache entry: a versioned header that names the key
//! the entry answers for (a hash of its full Redis key name), the (optionally
//! lz4-compressed) payload, an optional HMAC-SHA256, and an xxh3 checksum over everything
//! before it. Decoding must never panic, never allocate (nor hash) more than a
//! caller-chosen bound, and never accept an entry for another key than the one it was read
//! under: another digest, or the same digest under another prefix.
//!
//! Layout, version 3, little-endian:
//!
//! ```text
//! offset  size  field
//!      0     4  magic b"LLMC"
//!      4     1  version = 3
//!      5     1  flags (bit 0: payload is an lz4 block with a u32 size prefix;
//!                      bit 1: a 32-byte HMAC-SHA256 follows the payload; others must be 0)
//!      6     8  created_at, unix ms
//!     14     8  ttl, ms (the L2 lifetime given at write)
//!     22    32  key: the entry's [`Binding`], SHA-256 of the full Redis key name it is
//!               stored under (the key prefix and the digest both in it)
//!     54     4  payload length (as stored, i.e. compressed length when bit 0 is set)
//!     58     n  payload
//!   58+n    32  HMAC-SHA256 of bytes 0..58+n under the signing secret (bit 1 only)
//!    end-8   8  xxh3-64 of every byte before it
//! ```
//!
//! Version 2 had the same layout with the bare digest at offset 22: its entries did not
//! say which prefix they belonged to, so one copied to another prefix's key was served
//! there. They are misses now, like version 1's.
//!
//! Trust: the checksum catches corruption and the key catches an entry copied or
//! misplaced under another key (of this cache or of another prefix's), but anyone who can
//! write to Redis can compute both. With [`MacKeys`] they cannot forge an entry, and since
//! the key is under the MAC, caches that share a secret still cannot be fed each other's
//! entries; an attacker can still write back an older genuine entry under its own key.
//!
//! **Not a public API, and not covered by semver**: reachable as `llm_cache::envelope`
//! only for the fuzz crate and the tests, and `#[doc(hidden)]`. The format itself is
//! versioned (an entry of another version is a miss); the Rust items may change in any
//! release.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Digest as _;
use sha2::Sha256;
use xxhash_rust::xxh3::xxh3_64;

/// The first four bytes of every envelope.
pub const MAGIC: [u8; 4] = *b"LLMC";
/// The layout version this build writes and reads.
pub const VERSION: u8 = 3;
/// Bytes before the payload: magic, version, flags, `created_at`, `ttl`, key, length.
pub const HEADER_LEN: usize = 58;
/// Bytes of the HMAC-SHA256 that follows the payload of a signed entry.
pub const MAC_LEN: usize = 32;
/// Bytes after the payload (and MAC): the `xxh3-64` checksum.
pub const TRAILER_LEN: usize = 8;
/// The largest payload [`decode`] will return (after decompression): 64 MiB.
pub const DEFAULT_MAX_DECOMPRESSED: usize = 64 << 20;
/// The shortest secret [`MacKeys::new`] accepts.
pub const MIN_SECRET_LEN: usize = 16;

const MAGIC_AT: usize = 0;
const VERSION_AT: usize = 4;
const FLAGS_AT: usize = 5;
const CREATED_AT: usize = 6;
const TTL_AT: usize = 14;
const KEY_AT: usize = 22;
const LEN_AT: usize = 54;
const _: () = assert!(KEY_AT + 32 == LEN_AT && LEN_AT + 4 == HEADER_LEN);
/// `lz4_flex`'s size-prepended block format starts with the decompressed length as u32 LE.
const LZ4_SIZE_PREFIX: usize = 4;
/// An lz4 block cannot expand more than 255x (one extension byte adds at most 255 to a
/// match length), so a larger declared size is a lie we refuse before allocating it.
const LZ4_MAX_RATIO: usize = 255;

/// The flag byte of an envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Flags(u8);

impl Flags {
    /// No flags: the payload is stored as is.
    pub const RAW: Flags = Flags(0);
    /// The payload is an lz4 block prefixed with its decompressed size (u32 LE).
    pub const LZ4: Flags = Flags(1);
    /// A 32-byte HMAC-SHA256 follows the payload.
    pub const SIGNED: Flags = Flags(2);
    const KNOWN: u8 = Self::LZ4.0 | Self::SIGNED.0;

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

    /// Whether the entry carries an HMAC.
    #[must_use]
    pub const fn is_signed(self) -> bool {
        self.0 & Self::SIGNED.0 != 0
    }
}

/// What an entry is bound to: the SHA-256 of the full Redis key name it is stored and read
/// under. The name holds the key prefix and the digest (and whatever else the key space
/// puts in it), so an entry copied to any other name, in this cache's key space or
/// another prefix's, does not decode there.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Binding([u8; 32]);

/// Separates entry bindings from every other SHA-256 the crate makes.
const BINDING_DOMAIN: &[u8] = b"llm-cache/envelope-key\0";

impl Binding {
    /// The binding of the entry stored at the Redis key `name`.
    #[must_use]
    pub fn of_key(name: &str) -> Self {
        let mut h = Sha256::new();
        h.update(BINDING_DOMAIN);
        h.update(name.as_bytes());
        Binding(h.finalize().into())
    }

    /// Binding bytes as they appear in an envelope (for the fuzz checks and tests).
    #[must_use]
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Binding(bytes)
    }

    /// The bytes written at offset 22.
    #[must_use]
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for Binding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Binding(")?;
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "..)")
    }
}

/// The secrets that sign and verify entries (HMAC-SHA256). The first one signs what this
/// instance writes; every one of them verifies what it reads, so a secret can be rotated
/// without emptying the cache: add the new one first, keep the old one until its entries
/// have expired, then drop it. Empty: entries are neither signed nor accepted signed.
/// `Debug` shows how many secrets there are, never the secrets.
#[derive(Clone, Default)]
pub struct MacKeys {
    /// Keyed states, made once: each use clones one instead of hashing the key again.
    keys: Arc<[Hmac<Sha256>]>,
}

impl MacKeys {
    /// No secrets: entries carry no MAC.
    #[must_use]
    pub fn none() -> Self {
        MacKeys::default()
    }

    /// The secrets, the signing one first.
    ///
    /// # Errors
    ///
    /// A secret shorter than [`MIN_SECRET_LEN`] bytes: the message gives its position in
    /// the list, never its bytes.
    pub fn new<I, S>(secrets: I) -> Result<Self, String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<[u8]>,
    {
        let mut keys = Vec::new();
        for (i, secret) in secrets.into_iter().enumerate() {
            let secret = secret.as_ref();
            if secret.len() < MIN_SECRET_LEN {
                return Err(format!(
                    "secret #{} is {} bytes long: give at least {MIN_SECRET_LEN} random bytes",
                    i + 1,
                    secret.len()
                ));
            }
            keys.push(
                <Hmac<Sha256> as KeyInit>::new_from_slice(secret)
                    .map_err(|_| "HMAC refused the secret".to_owned())?,
            );
        }
        Ok(MacKeys { keys: keys.into() })
    }

    /// Whether there are no secrets.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// How many secrets verify (the first of them signs).
    #[must_use]
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    fn sign(&self, bytes: &[u8]) -> Option<[u8; MAC_LEN]> {
        let mut mac = self.keys.first()?.clone();
        mac.update(bytes);
        Some(mac.finalize().into_bytes().into())
    }

    /// Constant-time: true when any of the secrets made `tag`.
    fn verify(&self, bytes: &[u8], tag: &[u8]) -> bool {
        self.keys.iter().any(|key| {
            let mut mac = key.clone();
            mac.update(bytes);
            mac.verify_slice(tag).is_ok()
        })
    }
}

impl fmt::Debug for MacKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MacKeys({} keys, redacted)", self.keys.len())
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
    /// The entry was written for another key: copied or misplaced under this one.
    #[error("envelope belongs to another key")]
    WrongKey,
    /// The HMAC is missing, does not verify with any of this instance's secrets, or the
    /// entry is signed and this instance has no secret.
    #[error("envelope MAC does not verify with this instance's secrets")]
    Mac,
    /// The compressed payload is not a valid lz4 block of its declared size.
    #[error("envelope payload does not decompress")]
    Decompress,
    /// The payload is larger than the decoder's limit.
    #[error("envelope payload exceeds the size limit")]
    TooLarge,
}

/// Encode `payload` as the entry stored under the key `key` binds. The payload is lz4-compressed when it is at
/// least `compress_threshold` bytes long and compression makes it smaller; otherwise it is
/// stored raw. Signed with the first of `keys`, if any. Uses a single allocation.
///
/// # Panics
///
/// If `payload` is 4 GiB or larger (the length fields are u32).
#[must_use]
pub fn encode(
    payload: &[u8],
    key: &Binding,
    created_at_ms: u64,
    ttl_ms: u64,
    compress_threshold: usize,
    keys: &MacKeys,
) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("envelope payload must be smaller than 4 GiB");
    let tail = if keys.is_empty() { 0 } else { MAC_LEN } + TRAILER_LEN;
    let mut flags = if keys.is_empty() {
        Flags::RAW
    } else {
        Flags::SIGNED
    };
    let mut out;
    if payload.len() >= compress_threshold {
        // Room for the worst case so lz4 writes straight into the envelope; if it does not
        // pay off, the raw payload fits in the same buffer.
        let block_at = HEADER_LEN + LZ4_SIZE_PREFIX;
        let block_room = lz4_flex::block::get_maximum_output_size(payload.len());
        out = vec![0u8; block_at + block_room + tail];
        let block = &mut out[block_at..block_at + block_room];
        if let Ok(n) = lz4_flex::block::compress_into(payload, block)
            && LZ4_SIZE_PREFIX + n < payload.len()
        {
            out[HEADER_LEN..block_at].copy_from_slice(&len.to_le_bytes());
            out.truncate(block_at + n);
            flags = Flags(flags.0 | Flags::LZ4.0);
            write_header(&mut out, flags, key, created_at_ms, ttl_ms);
            seal(&mut out, keys);
            return out;
        }
        out.truncate(HEADER_LEN);
    } else {
        out = Vec::with_capacity(HEADER_LEN + payload.len() + tail);
        out.resize(HEADER_LEN, 0);
    }
    out.extend_from_slice(payload);
    write_header(&mut out, flags, key, created_at_ms, ttl_ms);
    seal(&mut out, keys);
    out
}

/// `out` holds the header space then the stored payload; fill in the header.
fn write_header(out: &mut [u8], flags: Flags, key: &Binding, created_at_ms: u64, ttl_ms: u64) {
    // `encode` checked that the original payload fits in u32; a compressed one is shorter.
    let stored_len = (out.len() - HEADER_LEN) as u32;
    out[MAGIC_AT..VERSION_AT].copy_from_slice(&MAGIC);
    out[VERSION_AT] = VERSION;
    out[FLAGS_AT] = flags.bits();
    out[CREATED_AT..TTL_AT].copy_from_slice(&created_at_ms.to_le_bytes());
    out[TTL_AT..KEY_AT].copy_from_slice(&ttl_ms.to_le_bytes());
    out[KEY_AT..LEN_AT].copy_from_slice(key.as_bytes());
    out[LEN_AT..HEADER_LEN].copy_from_slice(&stored_len.to_le_bytes());
}

/// Append the MAC (when there are keys) and the checksum.
fn seal(out: &mut Vec<u8>, keys: &MacKeys) {
    if let Some(tag) = keys.sign(out) {
        out.extend_from_slice(&tag);
    }
    let sum = xxh3_64(out);
    out.extend_from_slice(&sum.to_le_bytes());
}

/// Decode the entry read under the key `key` binds, refusing payloads larger than
/// [`DEFAULT_MAX_DECOMPRESSED`].
///
/// # Errors
///
/// See [`decode_with_limit`].
pub fn decode<'a>(
    bytes: &'a [u8],
    key: &Binding,
    keys: &MacKeys,
) -> Result<Envelope<'a>, EnvelopeError> {
    decode_with_limit(bytes, key, keys, DEFAULT_MAX_DECOMPRESSED)
}

/// Decode the entry read under the key `key` binds, refusing payloads (after decompression) larger than
/// `max_payload` bytes. Never panics; whatever the input, hashes at most `max_payload`
/// bytes (plus the header) and allocates at most `max_payload` bytes. With `keys`, only
/// an entry signed by one of them decodes; without, only an unsigned one.
///
/// # Errors
///
/// An [`EnvelopeError`] naming the first problem found: any error means the bytes are not
/// a usable entry for that key and should be treated as a miss.
pub fn decode_with_limit<'a>(
    bytes: &'a [u8],
    key: &Binding,
    keys: &MacKeys,
    max_payload: usize,
) -> Result<Envelope<'a>, EnvelopeError> {
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
    // Before hashing: a valid entry never stores more than its payload (compression is kept
    // only when it shrinks), so a longer one is refused without reading it.
    if stored_len > max_payload {
        return Err(EnvelopeError::TooLarge);
    }
    // Trusted only once the checksum holds; needed now for the layout.
    let flags = Flags(header[FLAGS_AT]);
    let mac_len = if flags.is_signed() { MAC_LEN } else { 0 };
    let body_len = HEADER_LEN + stored_len;
    let total = body_len + mac_len + TRAILER_LEN;
    if bytes.len() < total {
        return Err(EnvelopeError::Truncated);
    }
    if bytes.len() > total {
        return Err(EnvelopeError::LengthMismatch);
    }
    let (checked, trailer) = bytes.split_at(body_len + mac_len);
    let trailer = trailer
        .first_chunk::<TRAILER_LEN>()
        .ok_or(EnvelopeError::Truncated)?;
    // A plain u64 comparison: fuzzers see its operands and can satisfy it.
    if xxh3_64(checked) != u64::from_le_bytes(*trailer) {
        return Err(EnvelopeError::Checksum);
    }
    // After the checksum: a flag byte we do not know is a newer writer, not corruption.
    if flags.0 & !Flags::KNOWN != 0 {
        return Err(EnvelopeError::UnknownFlags(flags.0));
    }
    if header[KEY_AT..LEN_AT] != key.as_bytes()[..] {
        return Err(EnvelopeError::WrongKey);
    }
    let (body, tag) = checked.split_at(body_len);
    let authentic = if keys.is_empty() {
        !flags.is_signed()
    } else {
        flags.is_signed() && keys.verify(body, tag)
    };
    if !authentic {
        return Err(EnvelopeError::Mac);
    }
    let stored = &body[HEADER_LEN..];
    let payload = if flags.is_compressed() {
        Cow::Owned(decompress(stored, max_payload)?)
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
mod tests;
