//! The mock upstream's `/v1/embeddings`: a deterministic vector per input (a text or a
//! token list), `dimensions` honoured (default [`DEFAULT_DIMS`]), `encoding_format`
//! `float` (f32 values printed as f64, as OpenAI prints them) or `base64` (little-endian
//! f32), and `usage.prompt_tokens` as the sum of [`tokens_of`] over the inputs.

use std::sync::Arc;

use base64::Engine as _;
use serde_json::{Value, json};

/// Dimensions when the request does not say.
pub const DEFAULT_DIMS: usize = 8;

/// Replaces the default embedder for texts: text -> vector.
pub type Embedder = Arc<dyn Fn(&str) -> Vec<f32> + Send + Sync>;

/// The vector the mock answers for `input` (a JSON string or token array) at `dims`.
pub fn expected_embedding(input: &Value, dims: usize) -> Vec<f32> {
    let seed = xxhash_rust::xxh3::xxh3_64(input.to_string().as_bytes());
    (0..dims)
        .map(|k| {
            let h = xxhash_rust::xxh3::xxh3_64_with_seed(&(k as u64).to_le_bytes(), seed);
            // Values in [-1, 1) with all 24 bits of an f32's mantissa in use.
            ((h >> 40) as f32 / (1u64 << 23) as f32) - 1.0
        })
        .collect()
}

/// The tokens the mock charges for one input: a quarter of a text's bytes (rounded up),
/// or a token list's length.
pub fn tokens_of(input: &Value) -> u64 {
    match input {
        Value::String(s) => (s.len() as u64).div_ceil(4).max(1),
        Value::Array(ids) => ids.len() as u64,
        _ => 1,
    }
}

/// The inputs of an `/embeddings` body, in order.
pub fn inputs_of(body: &Value) -> Vec<Value> {
    match &body["input"] {
        Value::Array(items) if items.iter().all(Value::is_number) && !items.is_empty() => {
            vec![body["input"].clone()]
        }
        Value::Array(items) => items.clone(),
        one => vec![one.clone()],
    }
}

/// The mock's answer to an `/embeddings` body.
pub fn answer(body: &Value, embedder: Option<&Embedder>) -> Value {
    let dims = body["dimensions"]
        .as_u64()
        .map_or(DEFAULT_DIMS, |d| d as usize);
    let base64 = body["encoding_format"] == "base64";
    let inputs = inputs_of(body);
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, input)| {
            let v = match (embedder, input) {
                (Some(f), Value::String(s)) => f(s),
                _ => expected_embedding(input, dims),
            };
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v.iter().map(|&x| f64::from(x)).collect::<Vec<f64>>())
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    let tokens: u64 = inputs.iter().map(tokens_of).sum();
    json!({"object": "list", "data": data, "model": body["model"],
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})
}
