//! The usage chunk of a streamed legacy completion (`/completions` with `"stream": true`),
//! for the integrations that store such a stream as the upstream's bytes (the async-openai
//! layer; the HTTP front). The key ignores `stream_options`, so one stored stream answers
//! callers who asked for usage and callers who did not: a miss always asks the upstream
//! for it ([`ask_for_usage`]), and a caller who did not ask gets the stream without its
//! last, usage-only event ([`without_usage_chunk`]), as the upstream would have sent it.
//! (The chat stream needs none of this: it is replayed from the assembled completion.)

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use serde_json::Value;

/// Whether a request body asks for the usage chunk (`stream_options.include_usage: true`).
pub fn asks_for_usage(body: &Value) -> bool {
    body.get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        == Some(true)
}

/// `body` as sent upstream on a miss: `stream_options.include_usage` set to `true`, its
/// other options kept (a `stream_options` that is not an object is replaced).
pub fn ask_for_usage(body: &mut Value) {
    if let Some(map) = body.as_object_mut() {
        let options = map.entry("stream_options").or_insert(Value::Null);
        *options = with_usage(options.take());
    }
}

/// `stream_options` with `include_usage: true`, its other options kept (one that is not an
/// object is replaced): what [`ask_for_usage`] and the chat streams sent upstream ask.
#[doc(hidden)]
pub fn with_usage(options: Value) -> Value {
    let mut options = match options {
        Value::Object(options) => options,
        _ => serde_json::Map::new(),
    };
    options.insert("include_usage".into(), Value::Bool(true));
    Value::Object(options)
}

/// Whether one raw event (its lines, without the blank line that ends it) is the usage
/// chunk: a JSON `data` whose `choices` is empty and whose `usage` is set.
fn is_usage_chunk(event: &[u8]) -> bool {
    // Cheap first: an event that does not name `usage` is never it.
    if !event.windows(7).any(|w| w == b"\"usage\"") {
        return false;
    }
    let mut data = Vec::new();
    for line in event.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(rest) = line.strip_prefix(b"data:") {
            if !data.is_empty() {
                data.push(b'\n');
            }
            data.extend_from_slice(rest.strip_prefix(b" ").unwrap_or(rest));
        }
    }
    let Ok(Value::Object(chunk)) = serde_json::from_slice::<Value>(&data) else {
        return false;
    };
    let no_choices = chunk
        .get("choices")
        .and_then(Value::as_array)
        .is_some_and(Vec::is_empty);
    no_choices && chunk.get("usage").is_some_and(|u| !u.is_null())
}

/// Where the first event in `buf` ends: the index just past its blank line.
fn event_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i + 1 < buf.len() {
        match (buf[i], buf[i + 1]) {
            (b'\n', b'\n') => return Some(i + 2),
            (b'\r', b'\n') if buf[i + 2..].starts_with(b"\r\n") => return Some(i + 4),
            _ => {}
        }
        i += 1;
    }
    None
}

/// Whether a stored stream has a usage chunk.
pub fn has_usage_chunk(stream: &[u8]) -> bool {
    let mut rest = stream;
    while let Some(end) = event_end(rest) {
        if is_usage_chunk(&rest[..end]) {
            return true;
        }
        rest = &rest[end..];
    }
    !rest.is_empty() && is_usage_chunk(rest)
}

/// `events` (an event stream's bytes, in parts cut anywhere) without its usage chunk; every
/// other byte is handed on as it came, each event once it is complete. An error ends it
/// after the events before it.
pub fn without_usage_chunk<S, E>(events: S) -> impl Stream<Item = Result<Bytes, E>> + Send
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: Send + 'static,
{
    let events = Box::pin(events);
    futures_util::stream::unfold(
        (events, BytesMut::new(), false),
        |(mut events, mut buf, mut ended)| async move {
            loop {
                if ended {
                    return None;
                }
                let mut out = BytesMut::new();
                while let Some(end) = event_end(&buf) {
                    let event = buf.split_to(end);
                    if !is_usage_chunk(&event) {
                        out.extend_from_slice(&event);
                    }
                }
                if !out.is_empty() {
                    return Some((Ok(out.freeze()), (events, buf, ended)));
                }
                match events.next().await {
                    Some(Ok(part)) => buf.extend_from_slice(&part),
                    Some(Err(e)) => {
                        ended = true;
                        return Some((Err(e), (events, buf, ended)));
                    }
                    None => {
                        ended = true;
                        // A last event with no blank line after it.
                        if !buf.is_empty() && !is_usage_chunk(&buf) {
                            let rest = buf.split().freeze();
                            return Some((Ok(rest), (events, buf, ended)));
                        }
                    }
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const WITH: &str = "data: {\"choices\":[{\"text\":\"a\"}],\"usage\":null}\n\n\
        data: {\"choices\":[],\"usage\":{\"total_tokens\":5}}\n\n\
        data: [DONE]\n\n";

    async fn filtered(parts: Vec<&'static [u8]>) -> Vec<u8> {
        let events = futures_util::stream::iter(parts.into_iter().map(|p| Ok::<_, ()>(p.into())));
        let out: Vec<_> = without_usage_chunk(events).collect().await;
        out.into_iter().flat_map(|p| p.unwrap().to_vec()).collect()
    }

    #[tokio::test]
    async fn the_usage_chunk_goes_wherever_the_parts_are_cut() {
        let expected = "data: {\"choices\":[{\"text\":\"a\"}],\"usage\":null}\n\ndata: [DONE]\n\n";
        let bytes = WITH.as_bytes();
        for cut in 0..bytes.len() {
            let (a, b) = bytes.split_at(cut);
            let a: &'static [u8] = a.to_vec().leak();
            let b: &'static [u8] = b.to_vec().leak();
            assert_eq!(
                filtered(vec![a, b]).await,
                expected.as_bytes(),
                "cut at {cut}"
            );
        }
        // CRLF events, and a last event without its blank line.
        let crlf = b"data: {\"choices\":[],\"usage\":{\"t\":1}}\r\n\r\ndata: [DONE]";
        assert_eq!(filtered(vec![crlf]).await, b"data: [DONE]");
        // A stream without one is unchanged, byte for byte.
        let plain = b"data: {\"choices\":[{\"text\":\"a\"}]}\n\ndata: [DONE]\n\n";
        assert_eq!(filtered(vec![plain]).await, plain);
    }

    #[test]
    fn what_is_a_usage_chunk_and_asking_for_it() {
        assert!(has_usage_chunk(WITH.as_bytes()));
        assert!(!has_usage_chunk(
            b"data: {\"choices\":[{\"text\":\"a\"}],\"usage\":{\"t\":1}}\n\n"
        ));
        assert!(!has_usage_chunk(
            b"data: {\"choices\":[],\"usage\":null}\n\n"
        ));
        let mut body = serde_json::json!({"stream": true, "stream_options": {"x": 1}});
        assert!(!asks_for_usage(&body));
        ask_for_usage(&mut body);
        assert_eq!(
            body["stream_options"],
            serde_json::json!({"x": 1, "include_usage": true})
        );
        assert!(asks_for_usage(&body));
        let mut odd = serde_json::json!({"stream_options": "no"});
        ask_for_usage(&mut odd);
        assert!(asks_for_usage(&odd));
    }
}
