//! Conversions between async-openai's chat types and ours: round trips over fixtures with
//! tools, images, audio, logprobs and reasoning fields, and the errors that name the field
//! async-openai's types cannot hold.

use async_openai::types::chat::{CreateChatCompletionRequest, CreateChatCompletionResponse};
use llm_cache::{ChatRequest, ChatResponse};
use serde_json::{Value, json};

fn request_fixtures() -> Vec<Value> {
    vec![
        // Tools, tool choice, a tool-call turn and its answer.
        json!({
            "model": "gpt-4.1",
            "messages": [
                {"role": "system", "content": "Use tools."},
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1",
                    "type": "function", "function": {"name": "get_weather",
                    "arguments": "{\"city\":\"Paris\"}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "18C"}
            ],
            "tools": [{"type": "function", "function": {"name": "get_weather",
                "description": "Weather now", "parameters": {"type": "object",
                "properties": {"city": {"type": "string"}}, "required": ["city"]},
                "strict": true}}],
            "tool_choice": "auto",
            "parallel_tool_calls": false,
            "temperature": 0.5,
            "seed": 7
        }),
        // Images and input audio as content parts.
        json!({
            "model": "gpt-4o",
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": "What is in this image and this clip?"},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png",
                    "detail": "high"}},
                {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}
            ]}],
            "max_completion_tokens": 300
        }),
        // Audio output, logprobs, reasoning effort.
        json!({
            "model": "gpt-4o-audio-preview",
            "messages": [{"role": "developer", "content": "Speak."},
                {"role": "user", "content": "Say hi"}],
            "modalities": ["text", "audio"],
            "audio": {"voice": "alloy", "format": "mp3"},
            "logprobs": true,
            "top_logprobs": 3,
            "reasoning_effort": "high",
            "n": 2,
            "stop": ["\n\n"],
            "response_format": {"type": "json_object"}
        }),
    ]
}

fn response_fixtures() -> Vec<Value> {
    vec![
        json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1_700_000_000,
            "model": "gpt-4.1", "system_fingerprint": "fp_1", "service_tier": "default",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "logprobs": null,
                "message": {"role": "assistant", "content": null, "refusal": null,
                    "tool_calls": [{"id": "call_1", "type": "function", "function":
                        {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]}}],
            "usage": {"prompt_tokens": 20, "completion_tokens": 10, "total_tokens": 30,
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 4, "audio_tokens": 0,
                    "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}
        }),
        json!({
            "id": "chatcmpl-2", "object": "chat.completion", "created": 1_700_000_001,
            "model": "gpt-4o-audio-preview",
            "choices": [{"index": 0, "finish_reason": "stop",
                "message": {"role": "assistant", "content": null,
                    "audio": {"id": "audio_1", "expires_at": 1_700_003_600,
                        "data": "SUQz", "transcript": "Hi!"}},
                "logprobs": {"content": [{"token": "Hi", "logprob": -0.5,
                    "bytes": [72, 105], "top_logprobs": [{"token": "Hi", "logprob": -0.5,
                    "bytes": [72, 105]}]}], "refusal": null}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
        }),
    ]
}

/// `v` without object members whose value is `null`.
fn without_nulls(v: Value) -> Value {
    match v {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, without_nulls(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(without_nulls).collect()),
        other => other,
    }
}

#[test]
fn requests_round_trip_both_ways() {
    for fixture in request_fixtures() {
        let ours: ChatRequest = serde_json::from_value(fixture.clone()).unwrap();
        let theirs = CreateChatCompletionRequest::try_from(ours.clone())
            .unwrap_or_else(|e| panic!("{e}: {fixture}"));
        let again = ChatRequest::try_from(theirs.clone()).unwrap();
        assert_eq!(
            without_nulls(serde_json::to_value(&again).unwrap()),
            without_nulls(fixture.clone())
        );
        let theirs_again = CreateChatCompletionRequest::try_from(again).unwrap();
        assert_eq!(
            serde_json::to_value(&theirs_again).unwrap(),
            serde_json::to_value(&theirs).unwrap()
        );
    }
}

#[test]
fn responses_round_trip_both_ways() {
    for fixture in response_fixtures() {
        let ours: ChatResponse = serde_json::from_value(fixture.clone()).unwrap();
        let theirs = CreateChatCompletionResponse::try_from(ours.clone())
            .unwrap_or_else(|e| panic!("{e}: {fixture}"));
        let again = ChatResponse::try_from(theirs.clone()).unwrap();
        // async-openai writes an explicit `null` as absent (OpenAI reads them alike):
        // every other value comes back as it was.
        assert_eq!(
            without_nulls(serde_json::to_value(&again).unwrap()),
            without_nulls(fixture.clone())
        );
        let theirs_again = CreateChatCompletionResponse::try_from(again).unwrap();
        assert_eq!(
            serde_json::to_value(&theirs_again).unwrap(),
            serde_json::to_value(&theirs).unwrap()
        );
    }
}

#[test]
fn what_async_openai_cannot_hold_is_an_error_naming_the_field() {
    let base = || -> ChatRequest {
        serde_json::from_value(json!({"model": "m", "messages": [{"role": "user",
            "content": "x"}]}))
        .unwrap()
    };
    let cases: Vec<(ChatRequest, &str)> = vec![
        // f32 where we keep f64.
        (base().temperature(0.123_456_789_012), "`temperature`"),
        // No catch-all field.
        (base().param("vendor_knob", 1), "`vendor_knob`"),
        // A narrower integer (u8).
        (base().param("n", 300), "`n`"),
        // Not one of their enum's values.
        (
            base().param("reasoning_effort", "extreme"),
            "`reasoning_effort`",
        ),
    ];
    for (request, field) in cases {
        let e = CreateChatCompletionRequest::try_from(request).unwrap_err();
        assert!(e.message().contains(field), "{field}: {e}");
    }
    // A provider's reasoning text on the message: async-openai has no field for it.
    let mut with_reasoning = response_fixtures().remove(0);
    with_reasoning["choices"][0]["message"]["reasoning_content"] = json!("thinking...");
    let ours: ChatResponse = serde_json::from_value(with_reasoning).unwrap();
    let e = CreateChatCompletionResponse::try_from(ours).unwrap_err();
    assert!(
        e.message()
            .contains("`choices[0].message.reasoning_content`"),
        "{e}"
    );
}
