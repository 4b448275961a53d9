//! What one input's entry holds, and its compact encoding: the vector as little-endian
//! bytes (4 per value for f32, 8 for the rare upstream whose values an f32 cannot hold),
//! the input's share of the tokens its upstream call was charged, and the model name the
//! upstream answered with. A 1,536-dimension f32 vector is 6,144 bytes plus about 30,
//! where its JSON text is about 30 KB.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::request::embeddings::Values;
use crate::tiered::Codec;

/// One input's cached vector.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct StoredEmbedding {
    pub values: Arc<Values>,
    /// This input's share of its upstream call's `prompt_tokens` (see usage.rs).
    pub tokens: u32,
    /// The model the upstream said made the vector.
    pub model: Box<str>,
}

/// The first byte of every payload: the format's version.
const VERSION: u8 = 1;
const KIND_F32: u8 = 0;
const KIND_F64: u8 = 1;
/// version, kind, tokens (u32), dimensions (u32), model length (u16).
const HEADER: usize = 1 + 1 + 4 + 4 + 2;

/// The codec of the embeddings tier (see the module docs).
pub(crate) struct EmbeddingCodec;

impl Codec<StoredEmbedding> for EmbeddingCodec {
    fn encode(&self, value: &StoredEmbedding) -> Result<Vec<u8>> {
        let model = value.model.as_bytes();
        let model_len = u16::try_from(model.len())
            .map_err(|_| Error::codec("model name longer than 65,535 bytes"))?;
        let (kind, width) = match &*value.values {
            Values::F32(_) => (KIND_F32, 4),
            Values::F64(_) => (KIND_F64, 8),
        };
        let mut out = Vec::with_capacity(HEADER + model.len() + width * value.values.len());
        out.push(VERSION);
        out.push(kind);
        out.extend_from_slice(&value.tokens.to_le_bytes());
        let dims = u32::try_from(value.values.len())
            .map_err(|_| Error::codec("vector longer than u32::MAX values"))?;
        out.extend_from_slice(&dims.to_le_bytes());
        out.extend_from_slice(&model_len.to_le_bytes());
        out.extend_from_slice(model);
        match &*value.values {
            Values::F32(v) => v
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            Values::F64(v) => v
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        }
        Ok(out)
    }

    fn decode(&self, bytes: &[u8]) -> Result<StoredEmbedding> {
        if bytes.len() < HEADER || bytes[0] != VERSION {
            return Err(Error::codec("not an embedding payload (length or version)"));
        }
        let kind = bytes[1];
        let tokens = u32::from_le_bytes([bytes[2], bytes[3], bytes[4], bytes[5]]);
        let dims = u32::from_le_bytes([bytes[6], bytes[7], bytes[8], bytes[9]]) as usize;
        let model_len = usize::from(u16::from_le_bytes([bytes[10], bytes[11]]));
        let rest = &bytes[HEADER..];
        if rest.len() < model_len {
            return Err(Error::codec(
                "embedding payload cut short in the model name",
            ));
        }
        let model = std::str::from_utf8(&rest[..model_len])
            .map_err(|_| Error::codec("embedding payload's model name is not UTF-8"))?;
        let numbers = &rest[model_len..];
        // Collected from whole 4-byte (8-byte) arrays: an iterator of known length, so one
        // allocation, never zeroed first, and a loop that compiles to a bulk copy.
        let values = match kind {
            KIND_F32 if numbers.len() == dims.saturating_mul(4) => {
                let (whole, _) = numbers.as_chunks::<4>();
                Values::F32(whole.iter().map(|b| f32::from_le_bytes(*b)).collect())
            }
            KIND_F64 if numbers.len() == dims.saturating_mul(8) => {
                let (whole, _) = numbers.as_chunks::<8>();
                Values::F64(whole.iter().map(|b| f64::from_le_bytes(*b)).collect())
            }
            _ => {
                return Err(Error::codec(
                    "embedding payload's values do not match its dimensions",
                ));
            }
        };
        if values.len() == 0 {
            return Err(Error::codec("embedding payload holds no value"));
        }
        Ok(StoredEmbedding {
            values: Arc::new(values),
            tokens,
            model: model.into(),
        })
    }
}

/// What an entry holds in memory: the `Arc`ed values (their slice and the `Arc`), the
/// model name and the entry's own struct.
pub(crate) fn weigh(value: &StoredEmbedding, _encoded_len: usize) -> u32 {
    use crate::tiered::codec::heap_bytes;
    let values = match &*value.values {
        Values::F32(v) => v.len() * 4,
        Values::F64(v) => v.len() * 8,
    };
    heap_bytes(16 + size_of::<StoredEmbedding>())
        .saturating_add(heap_bytes(16 + size_of::<Values>()))
        .saturating_add(heap_bytes(values))
        .saturating_add(heap_bytes(value.model.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(values: Values) -> StoredEmbedding {
        StoredEmbedding {
            values: Arc::new(values),
            tokens: 7,
            model: "text-embedding-3-small".into(),
        }
    }

    #[test]
    fn payloads_round_trip_and_are_compact() {
        let f32s = entry(Values::F32((0..1536).map(|i| i as f32 / 7.0).collect()));
        let bytes = EmbeddingCodec.encode(&f32s).unwrap();
        assert_eq!(bytes.len(), HEADER + 22 + 1536 * 4);
        assert!(EmbeddingCodec.decode(&bytes).unwrap() == f32s);
        let f64s = entry(Values::F64(vec![0.1, -2.5e-300].into()));
        let bytes = EmbeddingCodec.encode(&f64s).unwrap();
        assert!(EmbeddingCodec.decode(&bytes).unwrap() == f64s);
    }

    #[test]
    fn cut_or_foreign_payloads_are_codec_errors() {
        let bytes = EmbeddingCodec
            .encode(&entry(Values::F32(vec![1.0, 2.0].into())))
            .unwrap();
        for cut in 0..bytes.len() {
            assert!(
                EmbeddingCodec.decode(&bytes[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        assert!(EmbeddingCodec.decode(br#"{"json":1}"#).is_err());
    }
}
