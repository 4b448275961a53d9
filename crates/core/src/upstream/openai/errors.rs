//! The errors an upstream call ends with: transport failures, timeouts and bodies that are
//! not chat completions, each quoting the provider's message. Every text from the upstream
//! goes through the client's credential mask before it is shortened, so an error must never
//! show the API key or another credential.

use std::time::Duration;

use super::credentials::Mask;
use super::retry::Failure;
use super::{MESSAGE_BYTES, OpenAiCompatible, Ready, SNIPPET_BYTES};
use crate::error::{Error, ErrorKind, Result};
use crate::request::ChatResponse;

impl Ready {
    pub(super) fn transport_error(&self, e: reqwest::Error, client: &OpenAiCompatible) -> Failure {
        // reqwest errors print the URL, whose query may hold a secret: drop it.
        let e = e.without_url();
        let (kind, what) = if e.is_timeout() && e.is_connect() {
            // A caller's client applies its own connect_timeout, which we cannot read.
            let within = match client.http_client {
                Some(_) => "the HTTP client's connect_timeout".to_string(),
                None => format!("connect_timeout {:?}", client.connect_timeout),
            };
            (ErrorKind::Timeout, format!("no connection within {within}"))
        } else if e.is_timeout() {
            (
                ErrorKind::Timeout,
                format!(
                    "no answer within request_timeout {:?}",
                    client.request_timeout
                ),
            )
        } else {
            (ErrorKind::Connect, error_chain(&e))
        };
        let message = self.scrub(&format!("POST {}: {what}", self.shown));
        let error = Error::new(kind, message);
        // The cause prints the same text, unmasked: keep it only when it shows no secret.
        let error = if self.mask.reveals(&error_chain(&e)) {
            error
        } else {
            error.with_source(e)
        };
        Failure {
            error,
            retryable: true,
            retry_after: None,
        }
    }

    /// An attempt that got no answer within `request_timeout`.
    pub(super) fn timeout(&self, request_timeout: Duration) -> Failure {
        let what = format!("no answer within request_timeout {request_timeout:?}");
        Failure {
            error: Error::new(
                ErrorKind::Timeout,
                self.scrub(&format!("POST {}: {what}", self.shown)),
            ),
            retryable: true,
            retry_after: None,
        }
    }

    pub(super) fn scrub(&self, text: &str) -> String {
        self.mask.apply(text).into_owned()
    }

    /// `e`, or the same error with its message masked when it shows a credential.
    pub(super) fn mask_error(&self, e: Error) -> Error {
        if self.mask.reveals(e.message()) {
            Error::new(e.kind(), self.scrub(e.message()))
        } else {
            e
        }
    }
}

/// A 2xx body as a chat completion, or an Upstream error quoting the body, masked.
pub(super) fn parse_answer(bytes: &[u8], mask: &Mask) -> Result<ChatResponse> {
    match serde_json::from_slice::<ChatResponse>(bytes) {
        Ok(response) if !response.choices.is_empty() => Ok(response),
        Ok(_) => Err(Error::new(
            ErrorKind::Upstream,
            match provider_message(bytes, mask) {
                Some(message) => format!("answered 2xx with an error: {message}"),
                None => format!(
                    "answer has no choices; body starts: {}",
                    quote(bytes, mask, SNIPPET_BYTES)
                ),
            },
        )),
        // serde's message may quote a string of the body.
        Err(e) => Err(Error::new(
            ErrorKind::Upstream,
            format!(
                "answer is not a chat completion ({}); body starts: {}",
                mask.apply(&e.to_string()),
                quote(bytes, mask, SNIPPET_BYTES)
            ),
        )),
    }
}

/// What an error quotes of an error body: the provider's message, else the start of the
/// body; `None` for an empty body.
pub(super) fn quote_body(bytes: &[u8], mask: &Mask) -> Option<String> {
    provider_message(bytes, mask)
        .or_else(|| (!bytes.is_empty()).then(|| quote(bytes, mask, SNIPPET_BYTES)))
}

use crate::error::ProviderError;

/// The `type`, `code` and `param` of an OpenAI error body, when it is one; each string
/// masked (a provider may quote a credential anywhere).
pub(super) fn provider_error(bytes: &[u8], mask: &Mask) -> Option<ProviderError> {
    let value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let error = value.get("error")?.as_object()?;
    let masked = |v: &serde_json::Value| match v {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(serde_json::Value::String(quote(
            s.as_bytes(),
            mask,
            SNIPPET_BYTES,
        ))),
        serde_json::Value::Number(_) | serde_json::Value::Bool(_) => Some(v.clone()),
        _ => None,
    };
    let kind = error
        .get("type")
        .and_then(|t| t.as_str())
        .map(|t| quote(t.as_bytes(), mask, SNIPPET_BYTES));
    Some(ProviderError {
        kind,
        code: error.get("code").and_then(masked),
        param: error.get("param").and_then(masked),
    })
}

/// `error.message` of an OpenAI error body (also `error` as a string, or a top-level
/// `message`), masked and shortened.
fn provider_message(bytes: &[u8], mask: &Mask) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let message = match value.get("error") {
        Some(serde_json::Value::String(s)) => s.as_str(),
        Some(error) => error.get("message")?.as_str()?,
        None => value.get("message")?.as_str()?,
    };
    Some(quote(message.as_bytes(), mask, MESSAGE_BYTES))
}

/// Upstream text fit for an error: masked, then shortened to `limit` bytes. Masking first
/// matters: a credential cut by the limit would no longer be recognised.
fn quote(bytes: &[u8], mask: &Mask, limit: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    snippet(mask.apply(&text).as_bytes(), limit)
}

/// The first `limit` bytes of `bytes` as one line of text, `…` when cut.
fn snippet(bytes: &[u8], limit: usize) -> String {
    let cut = bytes.len() > limit;
    let head = &bytes[..bytes.len().min(limit)];
    let mut text: String = String::from_utf8_lossy(head)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if cut {
        // A multi-byte character split by the cut decodes as U+FFFD: drop it.
        while text.ends_with('\u{FFFD}') {
            text.pop();
        }
        text.push('…');
    }
    text.trim().to_string()
}

/// An error and its causes, one line (hyper repeats itself; skip repeats).
#[doc(hidden)]
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "sk-unit-SECRET-0123456789";

    #[test]
    fn provider_messages_and_snippets() {
        let openai = br#"{"error":{"message":"bad `temperature`","type":"invalid_request_error"}}"#;
        assert_eq!(
            provider_message(openai, &Mask::default()).as_deref(),
            Some("bad `temperature`")
        );
        assert_eq!(
            provider_message(br#"{"error":"overloaded"}"#, &Mask::default()).as_deref(),
            Some("overloaded")
        );
        assert_eq!(
            provider_message(br#"{"message":"nope"}"#, &Mask::default()).as_deref(),
            Some("nope")
        );
        assert_eq!(
            provider_message(b"<html>502</html>", &Mask::default()),
            None
        );
        assert_eq!(
            provider_message(br#"{"error":{"code":1}}"#, &Mask::default()),
            None
        );

        assert_eq!(snippet(b"short\nbody", 200), "short body");
        let long = "é".repeat(150); // 300 bytes
        let s = snippet(long.as_bytes(), 201);
        assert!(s.ends_with('…') && !s.contains('\u{FFFD}'), "{s}");
        assert_eq!(s.chars().count(), 101);
    }

    #[test]
    fn two_xx_bodies_must_be_chat_completions() {
        let ok = br#"{"choices":[{"index":0,"message":{"role":"assistant","content":"hi"}}]}"#;
        assert_eq!(
            parse_answer(ok, &Mask::default())
                .unwrap()
                .text()
                .as_deref(),
            Some("hi")
        );
        let e = parse_answer(b"<html>gateway</html>", &Mask::default()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Upstream);
        assert!(e.message().contains("<html>gateway</html>"), "{e}");
        let e = parse_answer(br#"{"error":{"message":"quota"}}"#, &Mask::default()).unwrap_err();
        assert!(e.message().contains("quota"), "{e}");
        let e = parse_answer(b"{}", &Mask::default()).unwrap_err();
        assert!(e.message().contains("no choices"), "{e}");
        assert!(parse_answer(b"", &Mask::default()).is_err());
        assert!(parse_answer(&[0xff, 0xfe, 0x00], &Mask::default()).is_err());
    }

    #[test]
    fn provider_fields_are_kept_masked() {
        let body = br#"{"error":{"message":"m","type":"rate_limit_error","code":"rate_limit_exceeded","param":null}}"#;
        let p = provider_error(body, &Mask::default()).unwrap();
        assert_eq!(p.kind.as_deref(), Some("rate_limit_error"));
        assert_eq!(p.code, Some(serde_json::json!("rate_limit_exceeded")));
        assert_eq!(p.param, None);
        assert_eq!(provider_error(br#"{"error":"x"}"#, &Mask::default()), None);
        assert_eq!(provider_error(b"<html>", &Mask::default()), None);
    }

    #[test]
    pub(super) fn scrub_masks_secrets_in_messages() {
        let c = OpenAiCompatible::new("http://h").api_key(KEY);
        let ready = c.ready().unwrap();
        assert_eq!(
            ready.scrub(&format!("Incorrect API key provided: {KEY}.")),
            "Incorrect API key provided: ***."
        );
        let short = OpenAiCompatible::new("http://h").api_key("x");
        assert_eq!(
            short.ready().unwrap().scrub("max tokens exceeded"),
            "max tokens exceeded"
        );
    }
}
