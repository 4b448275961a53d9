//! Reading an entry from L2: a plain `GET`, or bytes a lease lookup brought back; decoded
//! and checked, promoted to L1 unless an invalidation overtook the read, and a corrupt
//! entry counted, removed and a miss.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::digest::Digest;
use crate::l2::L2Read;
use crate::stats::Counters;
use crate::{Inner, Landed, Origin, envelope, lease, now_ms};

impl<V> Inner<V>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Read and decode from L2 with a plain `GET`, promoting a hit to L1. Another flight's
    /// lease marker is a miss; a corrupt entry is counted, removed and a miss.
    pub(crate) async fn read_l2(&self, digest: &Digest) -> Option<Landed<V>> {
        let l2 = self.l2.as_ref()?;
        if !self.l2_readable() {
            return None;
        }
        let key = self.l2_key(digest);
        // An invalidation that lands while this read is out must not be undone by it.
        let epoch = self.invalidation.epoch();
        match l2.get(&key).await {
            L2Read::Hit(bytes) if !lease::is_marker(&bytes) => {
                self.accept(digest, &key, &bytes, epoch).await
            }
            _ => None,
        }
    }

    /// Decode the entry bytes read at `key` (not a marker), promoting a hit to L1 unless an
    /// invalidation came after `epoch`. A corrupt entry is counted, removed and `None`.
    pub(crate) async fn accept(
        &self,
        digest: &Digest,
        key: &str,
        bytes: &[u8],
        epoch: u64,
    ) -> Option<Landed<V>> {
        let decoded = envelope::decode_with_limit(
            bytes,
            &envelope::Binding::of_key(key),
            &self.config.mac_keys,
            self.config.max_entry_bytes,
        )
        .map_err(|e| e.to_string())
        .and_then(|env| {
            self.hooks
                .codec
                .decode(&env.payload)
                .map(|v| {
                    let remaining = env.remaining_ttl_ms(now_ms());
                    (v, env.created_at_ms, remaining, env.payload.len())
                })
                .map_err(|e| format!("payload does not decode: {}", e.message()))
        });
        match decoded {
            Ok((_, _, 0, _)) => None,
            Ok((value, created_at_ms, remaining_ms, payload_len)) => {
                Counters::incr(&self.counters.l2_hits);
                // Weighed like a fetched value: from its encoded (uncompressed) size.
                let weight = self.hooks.weigh(&value, payload_len);
                let value = Arc::new(value);
                let ttl = self.config.l1_ttl.min(Duration::from_millis(remaining_ms));
                if self.invalidation.epoch() == epoch {
                    self.fill_l1(*digest, Arc::clone(&value), created_at_ms, ttl, weight)
                        .await;
                }
                Some(Landed::new(value, created_at_ms, Origin::L2))
            }
            Err(why) => {
                Counters::incr(&self.counters.corrupt_entries);
                tracing::warn!(key = %&key[..key.len().min(self.config.key_prefix.len() + 17)], error = %why,
                    "corrupt cache entry in redis: removing it and fetching anew");
                if let Some(l2) = &self.l2 {
                    // Awaited, not in the background: a late UNLINK must not delete the fresh value.
                    l2.unlink(key).await;
                }
                None
            }
        }
    }
}
