//! How the engine turns a value into the payload it stores in Redis and back (`Codec`), and
//! what an L1 entry costs (`Weigher`). Both are hooks set on `TieredCacheBuilder`; they are
//! called only when a value is stored or read from L2, never on an L1 hit.

use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::l1::ENTRY_OVERHEAD;

/// Encodes a value into the payload of its L2 entry, and decodes it back.
///
/// The payload is wrapped in the engine's envelope (digest binding, checksum or MAC, TTL,
/// compression), so a codec only has to round-trip the value: `decode(encode(v)) == v`.
/// Every instance sharing a key prefix must use the same codec; an entry another codec
/// wrote is a payload that does not decode, counted as corrupt, removed and fetched anew.
/// Its length also bounds what is stored (`max_entry_bytes`) and, by default, stands for
/// the heap the value holds in L1 (see [`Weigher`]).
///
/// ## Behavior
///
/// - Called on a fill (once per fetched value) and on an L2 hit, never on an L1 hit.
/// - An `encode` error stores nothing: a fetched value is still served (and the error
///   logged), [`TieredCache::insert`](crate::TieredCache::insert) returns it. A `decode`
///   error makes the entry a miss, counted as corrupt and removed. Build errors with
///   [`Error::new`]`(`[`ErrorKind::Codec`](crate::ErrorKind::Codec)`, ...)`.
///
/// ```
/// use llm_cache_engine::{Codec, Error, ErrorKind, Result};
///
/// /// A vector of f32, little-endian, 4 bytes each.
/// struct F32Le;
///
/// impl Codec<Vec<f32>> for F32Le {
///     fn encode(&self, value: &Vec<f32>) -> Result<Vec<u8>> {
///         Ok(value.iter().flat_map(|x| x.to_le_bytes()).collect())
///     }
///
///     fn decode(&self, bytes: &[u8]) -> Result<Vec<f32>> {
///         if !bytes.len().is_multiple_of(4) {
///             return Err(Error::new(ErrorKind::Codec, "not a whole number of f32"));
///         }
///         Ok(bytes
///             .chunks_exact(4)
///             .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
///             .collect())
///     }
/// }
///
/// let v = vec![1.5, -2.0];
/// assert_eq!(F32Le.decode(&F32Le.encode(&v)?)?, v);
/// # Ok::<(), llm_cache_engine::Error>(())
/// ```
pub trait Codec<V>: Send + Sync + 'static {
    /// The payload stored in L2 for `value`.
    ///
    /// # Errors
    ///
    /// When `value` cannot be encoded: it is not stored (see above).
    fn encode(&self, value: &V) -> Result<Vec<u8>>;

    /// The value a payload stands for.
    ///
    /// # Errors
    ///
    /// When `bytes` are not a payload of this codec: the entry is treated as corrupt.
    fn decode(&self, bytes: &[u8]) -> Result<V>;
}

/// The default [`Codec`]: the value as JSON, with serde_json.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonCodec;

impl<V> Codec<V> for JsonCodec
where
    V: Serialize + DeserializeOwned,
{
    fn encode(&self, value: &V) -> Result<Vec<u8>> {
        serde_json::to_vec(value)
            .map_err(|e| Error::codec(format!("value does not serialize: {e}")))
    }

    fn decode(&self, bytes: &[u8]) -> Result<V> {
        serde_json::from_slice(bytes)
            .map_err(|e| Error::codec(format!("not JSON of the value's type: {e}")))
    }
}

/// What a value costs the process while L1 holds it, in bytes, from the value and the
/// length of its encoded payload: the value's own allocation behind its `Arc`
/// (`size_of::<V>()` plus 16) and everything it owns on the heap, each allocation as the
/// allocator holds it (glibc's malloc: the capacity plus 8, rounded up to 16, at least 32
/// bytes). The engine adds what the entry itself costs (key, moka's per-entry structures:
/// about 380 bytes) and 1/16 for the allocator's fragmentation, and charges the sum against
/// [`l1_max_bytes`](crate::TieredCacheBuilder::l1_max_bytes), so the bound holds as a bound
/// on memory only as far as the weigher is honest. Set with
/// [`TieredCacheBuilder::weigher`](crate::TieredCacheBuilder::weigher); by default
/// [`default_weight`].
pub type Weigher<V> = Arc<dyn Fn(&V, usize) -> u32 + Send + Sync>;

/// The default [`Weigher`]: the value's `Arc` allocation plus its encoded length, a fair
/// measure of the heap a value holds when its encoding is about as long as its contents (a
/// string, a vector of numbers). Saturates at `u32::MAX`.
pub fn default_weight<V>(_value: &V, encoded_len: usize) -> u32 {
    heap_bytes(16 + size_of::<V>()).saturating_add(u32::try_from(encoded_len).unwrap_or(u32::MAX))
}

/// What an allocation of `len` bytes costs the process: none for 0; otherwise `len` plus
/// an 8-byte header, rounded up to 16 and at least 32 (glibc's malloc, which other
/// general-purpose allocators' size classes approach). Saturates at `u32::MAX`.
#[doc(hidden)]
pub fn heap_bytes(len: usize) -> u32 {
    if len == 0 {
        return 0;
    }
    let chunk = len.saturating_add(8 + 15) & !15;
    u32::try_from(chunk.max(32)).unwrap_or(u32::MAX)
}

/// The codec and weigher a cache uses.
#[doc(hidden)]
pub struct Hooks<V> {
    pub codec: Arc<dyn Codec<V>>,
    /// `None`: [`default_weight`], without a call through a pointer.
    pub weigher: Option<Weigher<V>>,
}

impl<V> Hooks<V> {
    /// The weight of an L1 entry holding `value`, encoded in `encoded_len` bytes: what the
    /// value costs and what the entry costs beside it, plus 1/16 for what the allocator
    /// keeps but cannot reuse while L1 evicts and fills (glibc with a multi-threaded
    /// runtime: 3 to 15% of what L1 holds, in tests/engine/l1_memory.rs).
    pub fn weigh(&self, value: &V, encoded_len: usize) -> u32 {
        let value_bytes = match &self.weigher {
            Some(w) => w(value, encoded_len),
            None => default_weight(value, encoded_len),
        };
        let held = value_bytes.saturating_add(ENTRY_OVERHEAD);
        held.saturating_add(held / 16)
    }
}

impl<V> Default for Hooks<V>
where
    V: Serialize + DeserializeOwned + 'static,
{
    fn default() -> Self {
        Hooks {
            codec: Arc::new(JsonCodec),
            weigher: None,
        }
    }
}
