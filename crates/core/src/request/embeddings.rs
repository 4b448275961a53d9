//! OpenAI-compatible `/embeddings` types: the request (every `input` shape the API takes,
//! unknown fields kept) and the response, whose vectors hold their values once, as the
//! provider computed them (f32), and are written in the format the caller asked for:
//! `float` (each f32 widened to f64, printed as the shortest text that reads back the
//! same, as OpenAI prints them) or `base64` (the little-endian f32 bytes, byte-identical
//! to OpenAI's). Plain data: no I/O, no keys, no tiers.

use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::de::{self, Deserializer};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Extra, check_extra};
use crate::error::{Error, ErrorKind, Result};

/// The `input` of an embeddings request: one text, many texts, one list of token ids or
/// many. Each text or token list is one input, with its own vector and its own cache
/// entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
#[non_exhaustive]
pub enum EmbeddingInput {
    /// One text.
    Text(String),
    /// Many texts, one vector each.
    Texts(Vec<String>),
    /// One input given as token ids.
    Tokens(Vec<u32>),
    /// Many inputs given as token ids.
    TokenLists(Vec<Vec<u32>>),
}

/// One input of a request, borrowed: a text or a list of token ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum InputItem<'a> {
    /// A text.
    Text(&'a str),
    /// Token ids.
    Tokens(&'a [u32]),
}

impl InputItem<'_> {
    /// What the input weighs when an upstream call's token count is shared among its
    /// inputs: the number of token ids, or the text's length in UTF-8 bytes (at least 1).
    pub fn weight(&self) -> u64 {
        (self.size() as u64).max(1)
    }

    /// The number of token ids, or the text's length in UTF-8 bytes.
    fn size(&self) -> usize {
        match self {
            InputItem::Text(t) => t.len(),
            InputItem::Tokens(t) => t.len(),
        }
    }
}

impl EmbeddingInput {
    /// The inputs, in order.
    pub fn items(&self) -> Vec<InputItem<'_>> {
        match self {
            EmbeddingInput::Text(t) => vec![InputItem::Text(t)],
            EmbeddingInput::Texts(ts) => ts.iter().map(|t| InputItem::Text(t)).collect(),
            EmbeddingInput::Tokens(t) => vec![InputItem::Tokens(t)],
            EmbeddingInput::TokenLists(ts) => ts.iter().map(|t| InputItem::Tokens(t)).collect(),
        }
    }

    /// How many inputs there are.
    pub fn len(&self) -> usize {
        match self {
            EmbeddingInput::Text(_) | EmbeddingInput::Tokens(_) => 1,
            EmbeddingInput::Texts(ts) => ts.len(),
            EmbeddingInput::TokenLists(ts) => ts.len(),
        }
    }

    /// True when there is no input at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The input made of `items`, in the array form (`Texts` or `TokenLists`) whatever
    /// their number; `None` when they mix texts and token lists (no request does).
    pub fn from_items(items: &[InputItem<'_>]) -> Option<EmbeddingInput> {
        let texts: Option<Vec<String>> = items
            .iter()
            .map(|i| match i {
                InputItem::Text(t) => Some((*t).to_string()),
                InputItem::Tokens(_) => None,
            })
            .collect();
        if let Some(texts) = texts {
            return Some(EmbeddingInput::Texts(texts));
        }
        let lists: Option<Vec<Vec<u32>>> = items
            .iter()
            .map(|i| match i {
                InputItem::Tokens(t) => Some(t.to_vec()),
                InputItem::Text(_) => None,
            })
            .collect();
        lists.map(EmbeddingInput::TokenLists)
    }
}

impl From<&str> for EmbeddingInput {
    fn from(text: &str) -> Self {
        EmbeddingInput::Text(text.to_string())
    }
}

impl From<String> for EmbeddingInput {
    fn from(text: String) -> Self {
        EmbeddingInput::Text(text)
    }
}

impl From<Vec<String>> for EmbeddingInput {
    fn from(texts: Vec<String>) -> Self {
        EmbeddingInput::Texts(texts)
    }
}

impl From<Vec<&str>> for EmbeddingInput {
    fn from(texts: Vec<&str>) -> Self {
        EmbeddingInput::Texts(texts.into_iter().map(str::to_string).collect())
    }
}

impl From<Vec<u32>> for EmbeddingInput {
    fn from(tokens: Vec<u32>) -> Self {
        EmbeddingInput::Tokens(tokens)
    }
}

impl From<Vec<Vec<u32>>> for EmbeddingInput {
    fn from(lists: Vec<Vec<u32>>) -> Self {
        EmbeddingInput::TokenLists(lists)
    }
}

/// How vectors are written in a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum EncodingFormat {
    /// A JSON array of numbers (the API's default).
    #[default]
    Float,
    /// A base64 string of the little-endian f32 values (4 bytes each).
    Base64,
}

/// A `/embeddings` request body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingRequest {
    /// The embedding model, e.g. `text-embedding-3-small`.
    #[serde(default)]
    pub model: String,
    /// The inputs.
    pub input: EmbeddingInput,
    /// The number of dimensions to return (models that can shorten their vectors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dimensions: Option<u32>,
    /// How the vectors should be written: not part of any cache key (both formats are
    /// written from the same stored values).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding_format: Option<EncodingFormat>,
    /// The end user, for the provider's abuse monitoring: not part of any cache key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Every other field, kept and sent as it came (and part of the key).
    #[serde(flatten)]
    pub extra: Extra,
}

impl EmbeddingRequest {
    /// A request for `input`'s vectors from `model`.
    pub fn new(model: impl Into<String>, input: impl Into<EmbeddingInput>) -> Self {
        EmbeddingRequest {
            model: model.into(),
            input: input.into(),
            dimensions: None,
            encoding_format: None,
            user: None,
            extra: Extra::new(),
        }
    }

    crate::tiered::setters! {
        /// Ask for `n` dimensions.
        #[must_use]
        pub fn dimensions(n: u32) { dimensions = Some(n) }

        /// Ask for vectors written as `format`.
        #[must_use]
        pub fn encoding_format(format: EncodingFormat) { encoding_format = Some(format) }
    }

    /// Set any other parameter by name.
    #[must_use]
    pub fn param(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        self.extra.insert(name.into(), value.into());
        self
    }

    /// Parse a request from JSON bytes, then [`validate`](Self::validate) it; the error
    /// names what is wrong.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        let req: EmbeddingRequest = serde_json::from_slice(bytes).map_err(|e| {
            Error::invalid_request(
                "body",
                format!(
                    "not an embeddings request ({e}); `input` must be a string, an array of strings, an array of token ids or an array of arrays of token ids"
                ),
            )
        })?;
        req.validate()?;
        Ok(req)
    }

    /// Check what must hold before the request is keyed or sent: unknown fields nesting no
    /// deeper than [`MAX_REQUEST_DEPTH`](crate::MAX_REQUEST_DEPTH), a `model`, at least one
    /// input, no empty input, and `dimensions` above zero.
    pub fn validate(&self) -> Result<()> {
        check_extra(&self.extra, 2, String::new)?;
        if self.model.trim().is_empty() {
            return Err(Error::invalid_request("model", "missing or empty"));
        }
        if self.input.is_empty() {
            return Err(Error::invalid_request("input", "has no input"));
        }
        for (i, item) in self.input.items().iter().enumerate() {
            if item.size() == 0 {
                return Err(Error::invalid_request(
                    &format!("input[{i}]"),
                    "is empty (the API refuses empty inputs)",
                ));
            }
        }
        if self.dimensions == Some(0) {
            return Err(Error::invalid_request("dimensions", "must be at least 1"));
        }
        Ok(())
    }

    /// The format the caller asked for (`float` when unset).
    pub fn format(&self) -> EncodingFormat {
        self.encoding_format.unwrap_or_default()
    }
}

/// The numbers of one vector, as the provider gave them.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum Values {
    /// Every value is an f32 (what OpenAI's models produce): 4 bytes each.
    F32(Box<[f32]>),
    /// Values that an f32 cannot hold exactly (an upstream that computes in f64): kept as
    /// they came, 8 bytes each, so nothing is rounded.
    F64(Box<[f64]>),
}

impl Values {
    /// Numbers as an upstream printed them: f32 when every one is an f32 exactly.
    pub(crate) fn from_f64s(numbers: Vec<f64>) -> Values {
        if numbers.iter().all(|&x| f64::from(x as f32) == x) {
            Values::F32(numbers.iter().map(|&x| x as f32).collect())
        } else {
            Values::F64(numbers.into_boxed_slice())
        }
    }

    /// Little-endian f32 bytes, 4 per value, as the API's `base64` format holds them.
    pub(crate) fn from_le_f32_bytes(bytes: &[u8]) -> Option<Values> {
        if !bytes.len().is_multiple_of(4) {
            return None;
        }
        Some(Values::F32(
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        ))
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            Values::F32(v) => v.len(),
            Values::F64(v) => v.len(),
        }
    }

    fn all_finite(&self) -> bool {
        match self {
            Values::F32(v) => v.iter().all(|x| x.is_finite()),
            Values::F64(v) => v.iter().all(|x| x.is_finite()),
        }
    }

    /// The base64 text of the values as little-endian f32 (f64 values rounded to f32,
    /// which is what the format holds).
    fn base64(&self) -> String {
        let bytes: Vec<u8> = match self {
            Values::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Values::F64(v) => v.iter().flat_map(|&x| (x as f32).to_le_bytes()).collect(),
        };
        BASE64.encode(bytes)
    }
}

/// One embedding vector: its values, held once and shared (cheap to clone), and the
/// format it is written in.
#[derive(Clone, PartialEq)]
pub struct Vector {
    values: Arc<Values>,
    format: EncodingFormat,
}

impl Vector {
    /// A vector of f32 values.
    pub fn from_f32(values: Vec<f32>, format: EncodingFormat) -> Self {
        Self::from_values(Arc::new(Values::F32(values.into_boxed_slice())), format)
    }

    pub(crate) fn from_values(values: Arc<Values>, format: EncodingFormat) -> Self {
        Vector { values, format }
    }

    pub(crate) fn values(&self) -> &Arc<Values> {
        &self.values
    }

    /// The number of dimensions.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// True for a vector without values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The format it is written in.
    pub fn format(&self) -> EncodingFormat {
        self.format
    }

    /// The same values, written in `format`.
    #[must_use]
    pub fn with_format(&self, format: EncodingFormat) -> Self {
        Self::from_values(Arc::clone(&self.values), format)
    }

    /// The values as f32, without a copy, when the provider gave f32 values.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match &*self.values {
            Values::F32(v) => Some(v),
            Values::F64(_) => None,
        }
    }

    /// The values as f32 (f64 values rounded).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        match &*self.values {
            Values::F32(v) => v.to_vec(),
            Values::F64(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }

    /// The values as f64, as the `float` format writes them.
    pub fn to_f64_vec(&self) -> Vec<f64> {
        match &*self.values {
            Values::F32(v) => v.iter().map(|&x| f64::from(x)).collect(),
            Values::F64(v) => v.to_vec(),
        }
    }

    /// The `base64` text of the values (little-endian f32).
    pub fn to_base64(&self) -> String {
        self.values.base64()
    }
}

impl fmt::Debug for Vector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let head: Vec<f64> = self.to_f64_vec().into_iter().take(4).collect();
        f.debug_struct("Vector")
            .field("len", &self.len())
            .field("format", &self.format)
            .field("head", &head)
            .finish()
    }
}

impl Serialize for Vector {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        match (self.format, &*self.values) {
            (EncodingFormat::Base64, values) => serializer.serialize_str(&values.base64()),
            (EncodingFormat::Float, Values::F32(v)) => {
                serializer.collect_seq(v.iter().map(|&x| f64::from(x)))
            }
            (EncodingFormat::Float, Values::F64(v)) => serializer.collect_seq(v.iter()),
        }
    }
}

impl<'de> Deserialize<'de> for Vector {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Wire {
            Numbers(Vec<f64>),
            Base64(String),
        }
        let (values, format) = match Wire::deserialize(deserializer)? {
            Wire::Numbers(n) => (Values::from_f64s(n), EncodingFormat::Float),
            Wire::Base64(text) => {
                let bytes = BASE64
                    .decode(text.as_bytes())
                    .map_err(|e| de::Error::custom(format!("not base64: {e}")))?;
                let values = Values::from_le_f32_bytes(&bytes).ok_or_else(|| {
                    de::Error::custom("base64 vector is not a whole number of f32 values")
                })?;
                (values, EncodingFormat::Base64)
            }
        };
        if !values.all_finite() {
            return Err(de::Error::custom("vector holds a value that is not finite"));
        }
        Ok(Vector {
            values: Arc::new(values),
            format,
        })
    }
}

/// One vector of a response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Embedding {
    /// Always `embedding`.
    #[serde(default = "embedding_object")]
    pub object: String,
    /// The position of its input in the request.
    pub index: usize,
    /// The vector.
    pub embedding: Vector,
}

fn embedding_object() -> String {
    "embedding".to_string()
}

fn list_object() -> String {
    "list".to_string()
}

/// What an embeddings request cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct EmbeddingUsage {
    /// Tokens of the inputs.
    #[serde(default)]
    pub prompt_tokens: u64,
    /// The same (embeddings have no completion).
    #[serde(default)]
    pub total_tokens: u64,
}

/// A `/embeddings` response body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingResponse {
    /// Always `list`.
    #[serde(default = "list_object")]
    pub object: String,
    /// One vector per input, `index` being the input's position.
    pub data: Vec<Embedding>,
    /// The model that made the vectors.
    #[serde(default)]
    pub model: String,
    /// The tokens the upstream charged.
    #[serde(default)]
    pub usage: EmbeddingUsage,
    /// Every other field of the upstream's answer.
    #[serde(flatten)]
    pub extra: Extra,
}

impl EmbeddingResponse {
    /// Check an upstream's answer to a request of `inputs` inputs, and put its vectors in
    /// input order: exactly one vector per index from 0 to `inputs - 1`, none empty. A
    /// duplicate, missing or out-of-range index is an error, never a vector served for the
    /// wrong input.
    pub fn into_ordered(mut self, inputs: usize) -> Result<Self> {
        let bad = |why: String| Error::new(ErrorKind::Upstream, why);
        if self.data.len() != inputs {
            return Err(bad(format!(
                "the upstream answered {} vectors for {inputs} inputs",
                self.data.len()
            )));
        }
        let mut seen = vec![false; inputs];
        for e in &self.data {
            if e.index >= inputs {
                return Err(bad(format!(
                    "the upstream answered index {} for {inputs} inputs",
                    e.index
                )));
            }
            if std::mem::replace(&mut seen[e.index], true) {
                return Err(bad(format!(
                    "the upstream answered index {} twice",
                    e.index
                )));
            }
            if e.embedding.is_empty() {
                return Err(bad(format!(
                    "the upstream answered an empty vector at index {}",
                    e.index
                )));
            }
        }
        self.data.sort_by_key(|e| e.index);
        Ok(self)
    }
}
