//! Conversions between async-openai's chat types and the crate's (feature `async-openai`;
//! `llm_cache::async_openai::convert` re-exports this module): from
//! `CreateChatCompletionRequest` / `CreateChatCompletionResponse` to [`ChatRequest`] /
//! [`ChatResponse`] (nothing is lost: the crate's types keep every field they do not name),
//! and back, failing where async-openai's types cannot hold a value: a field they do not
//! have (they keep no unknown fields), a number they store narrower (`f32` where the crate
//! keeps `f64`, `u8` for `n`...), a value outside their enums. The error names the field.
//!
//! An explicit `null` comes back absent (async-openai writes `None` so; OpenAI reads both
//! alike); every other value comes back as it was.
//!
//! Both directions go through the JSON both sides speak, so they agree with what the wire
//! carries; the way back re-serializes async-openai's value and compares it with the
//! crate's, field by field, so a silent loss is an error instead.
//!
//! ```
//! use async_openai::types::chat::CreateChatCompletionRequest;
//! use llm_cache_core::ChatRequest;
//!
//! let ours: ChatRequest = serde_json::from_str(
//!     r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0.5}"#,
//! )?;
//! let theirs = CreateChatCompletionRequest::try_from(ours.clone())?;
//! assert_eq!(ChatRequest::try_from(theirs)?, ours);
//!
//! // f32 cannot hold this temperature: the error names the field.
//! let precise = ours.temperature(0.123456789012);
//! let e = CreateChatCompletionRequest::try_from(precise).unwrap_err();
//! assert!(e.message().contains("`temperature`"), "{e}");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use async_openai::types::chat::{CreateChatCompletionRequest, CreateChatCompletionResponse};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{Error, ErrorKind, Result};
use crate::request::{ChatRequest, ChatResponse};

/// `from` as `T`, through JSON, or an error naming the field `T` could not take or hold.
fn convert<F: Serialize, T: Serialize + DeserializeOwned>(from: &F, to: &str) -> Result<T> {
    let codec = |e: serde_json::Error| Error::new(ErrorKind::Codec, format!("{to}: {e}"));
    let value = serde_json::to_value(from).map_err(codec)?;
    let out: T = serde_path_to_error::deserialize(&value).map_err(|e| {
        let field = e.path().to_string();
        Error::new(
            ErrorKind::Codec,
            format!("`{field}`: {to} cannot take it: {}", e.into_inner()),
        )
    })?;
    let back = serde_json::to_value(&out).map_err(codec)?;
    if let Some(field) = first_loss(&value, &back, String::new()) {
        return Err(Error::new(
            ErrorKind::Codec,
            format!("`{field}`: {to} cannot hold this value (it would be lost or changed)"),
        ));
    }
    Ok(out)
}

/// The path of the first value of `ours` that `theirs` does not hold unchanged; `None`
/// when every one is there. `theirs` may add fields (defaults its types write out) only as
/// `null`. Numbers compare by value (`1` and `1.0` are the same).
fn first_loss(ours: &Value, theirs: &Value, path: String) -> Option<String> {
    let here = || {
        if path.is_empty() {
            ".".to_string()
        } else {
            path.clone()
        }
    };
    match (ours, theirs) {
        (Value::Object(a), Value::Object(b)) => {
            let at = |name: &String| {
                if path.is_empty() {
                    name.clone()
                } else {
                    format!("{path}.{name}")
                }
            };
            for (name, value) in a {
                let at = at(name);
                match b.get(name) {
                    Some(other) => {
                        if let Some(lost) = first_loss(value, other, at) {
                            return Some(lost);
                        }
                    }
                    None if value.is_null() => {}
                    None => return Some(at),
                }
            }
            b.iter()
                .find(|(name, v)| !a.contains_key(*name) && !v.is_null())
                .map(|(name, _)| at(name))
        }
        (Value::Array(a), Value::Array(b)) => {
            if a.len() != b.len() {
                return Some(here());
            }
            a.iter()
                .zip(b)
                .enumerate()
                .find_map(|(i, (x, y))| first_loss(x, y, format!("{path}[{i}]")))
        }
        (Value::Number(a), Value::Number(b)) => {
            let same = match (a.as_i64(), b.as_i64(), a.as_u64(), b.as_u64()) {
                (Some(x), Some(y), _, _) => x == y,
                (_, _, Some(x), Some(y)) => x == y,
                _ => a.as_f64() == b.as_f64(),
            };
            (!same).then(here)
        }
        (a, b) => (a != b).then(here),
    }
}

impl TryFrom<CreateChatCompletionRequest> for ChatRequest {
    type Error = Error;

    /// Every field async-openai's request holds, in the crate's request (fields it does not
    /// name go to `extra`).
    ///
    /// # Errors
    ///
    /// Only if async-openai's value does not serialize (it always does for values its own
    /// client can send).
    fn try_from(request: CreateChatCompletionRequest) -> Result<Self> {
        convert(&request, "ChatRequest")
    }
}

impl TryFrom<ChatRequest> for CreateChatCompletionRequest {
    type Error = Error;

    /// # Errors
    ///
    /// A `Codec` error naming the first field async-openai's request cannot hold.
    fn try_from(request: ChatRequest) -> Result<Self> {
        convert(&request, "async-openai's CreateChatCompletionRequest")
    }
}

impl TryFrom<CreateChatCompletionResponse> for ChatResponse {
    type Error = Error;

    /// Every field async-openai's response holds, in the crate's response.
    ///
    /// # Errors
    ///
    /// Only if async-openai's value does not serialize.
    fn try_from(response: CreateChatCompletionResponse) -> Result<Self> {
        convert(&response, "ChatResponse")
    }
}

impl TryFrom<ChatResponse> for CreateChatCompletionResponse {
    type Error = Error;

    /// # Errors
    ///
    /// A `Codec` error naming the first field async-openai's response cannot hold.
    fn try_from(response: ChatResponse) -> Result<Self> {
        convert(&response, "async-openai's CreateChatCompletionResponse")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn losses_are_found_by_path() {
        let ours = json!({"a": {"b": [1, 2.5]}, "c": "x"});
        assert_eq!(first_loss(&ours, &ours, String::new()), None);
        assert_eq!(
            first_loss(
                &ours,
                &json!({"a": {"b": [1.0, 2.5]}, "c": "x"}),
                String::new()
            ),
            None
        );
        assert_eq!(
            first_loss(
                &ours,
                &json!({"a": {"b": [1, 2.4]}, "c": "x"}),
                String::new()
            ),
            Some("a.b[1]".into())
        );
        assert_eq!(
            first_loss(&ours, &json!({"a": {"b": [1, 2.5]}}), String::new()),
            Some("c".into())
        );
        assert_eq!(
            first_loss(
                &ours,
                &json!({"a": {"b": [1, 2.5]}, "c": "x", "d": null}),
                String::new()
            ),
            None
        );
    }
}
