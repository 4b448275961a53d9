//! Credentials given to `OpenAiCompatible` (the API key, the credential headers, and headers
//! the user marks as credentials) against the mock upstream over real HTTP: they reach the
//! upstream unchanged, and whatever the upstream echoes back never shows them, whole or bare,
//! in an error's `Display` or `Debug`, in the client's `Debug`, or in the logs.

use llm_cache_test_support as support;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures_util::StreamExt;
use llm_cache::{ChatMessage, ChatRequest, Error, LlmCache, OpenAiCompatible, RetryPolicy};
use llm_cache::{ErrorKind, Upstream};
use support::upstream::{MockReply, MockUpstream};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;

/// `alice:correct-horse-battery-staple-42`, as an HTTP Basic credential.
const BASIC: &str = "YWxpY2U6Y29ycmVjdC1ob3JzZS1iYXR0ZXJ5LXN0YXBsZS00Mg==";
const BASIC_PASSWORD: &str = "correct-horse-battery-staple-42";

fn request(text: &str) -> ChatRequest {
    ChatRequest::new("gpt-4.1").message(ChatMessage::user(text))
}

/// One way of giving the client a credential.
struct Case {
    /// What the test calls it in its messages.
    label: &'static str,
    /// The request header that carries it.
    header: &'static str,
    /// The header's value as sent.
    value: String,
    /// The secret inside that value (the value itself when there is no auth scheme).
    token: String,
    client: OpenAiCompatible,
}

/// Every kind of credential, each with a token of its own (`test` keeps them apart between
/// tests, which share one log capture).
fn cases(mock: &MockUpstream, test: &str) -> Vec<Case> {
    let token = |label: &str| format!("tok-{test}-{label}-Q7fK2pX9mZ4w");
    let base = || {
        OpenAiCompatible::new(mock.base_url()).retry(
            RetryPolicy::default()
                .max_attempts(2)
                .base_delay(Duration::ZERO)
                .max_delay(Duration::ZERO),
        )
    };
    let header = |label: &'static str, name: &'static str, scheme: &str| {
        let token = token(label);
        let value = format!("{scheme}{token}");
        Case {
            label,
            header: name,
            client: base().header(name, value.clone()),
            value,
            token,
        }
    };
    let api_key = token("api_key");
    let marked = token("marked");
    vec![
        Case {
            label: "api_key",
            header: "authorization",
            value: format!("Bearer {api_key}"),
            client: base().api_key(api_key.clone()),
            token: api_key,
        },
        header("authorization", "Authorization", "Bearer "),
        header("authorization_token_scheme", "authorization", "token "),
        Case {
            label: "authorization_basic",
            header: "authorization",
            value: format!("Basic {BASIC}"),
            token: BASIC.to_string(),
            client: base().header("Authorization", format!("Basic {BASIC}")),
        },
        header("proxy_authorization", "Proxy-Authorization", "Bearer "),
        header("api_key_header", "api-key", ""),
        header("x_api_key", "X-Api-Key", ""),
        header("openai_organization", "OpenAI-Organization", ""),
        header("openai_project", "OpenAI-Project", ""),
        Case {
            label: "marked",
            header: "x-tenant-pass",
            value: marked.clone(),
            client: base().credential_header("X-Tenant-Pass", marked.clone()),
            token: marked,
        },
    ]
}

/// `shown` must not contain `token`.
#[track_caller]
fn assert_hidden(case: &Case, what: &str, shown: &str) {
    assert!(
        !shown.contains(&case.token),
        "{}: the credential leaked in {what}: {shown}",
        case.label
    );
}

/// Neither the error (`Display`, `Debug`, its causes) nor the client shows the token.
#[track_caller]
fn assert_error_hides(case: &Case, e: &Error) {
    assert_hidden(case, "Display", &format!("{e}"));
    assert_hidden(case, "Debug", &format!("{e:?}"));
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        assert_hidden(case, "a cause", &format!("{cause} {cause:?}"));
        source = cause.source();
    }
    assert_hidden(case, "the client's Debug", &format!("{:?}", case.client));
}

#[tokio::test]
async fn every_credential_reaches_the_upstream_unchanged() {
    let mock = MockUpstream::start().await;
    for case in cases(&mock, "sent") {
        case.client.chat(&request(case.label)).await.unwrap();
        let sent = mock.last_request().unwrap();
        assert_eq!(
            sent.header(case.header),
            Some(case.value.as_str()),
            "{}",
            case.label
        );
        assert_hidden(&case, "the client's Debug", &format!("{:?}", case.client));
    }
}

#[tokio::test]
async fn a_credential_echoed_in_a_json_error_is_never_shown() {
    let mock = MockUpstream::start().await;
    for case in cases(&mock, "json") {
        mock.push_reply(MockReply::EchoCredential {
            code: 401,
            header: case.header.to_string(),
            plain: false,
        });
        let e = case.client.chat(&request(case.label)).await.unwrap_err();
        assert_eq!(e.status(), Some(401), "{}: {e}", case.label);
        // The message is still quoted, with the credential masked.
        assert!(
            e.message().starts_with("Incorrect credential provided in")
                && e.message().contains("***"),
            "{}: {e}",
            case.label
        );
        assert_error_hides(&case, &e);
    }
}

#[tokio::test]
async fn a_credential_echoed_in_a_plain_error_body_is_never_shown() {
    let mock = MockUpstream::start().await;
    for case in cases(&mock, "plain") {
        mock.push_reply(MockReply::EchoCredential {
            code: 403,
            header: case.header.to_string(),
            plain: true,
        });
        let e = case.client.chat(&request(case.label)).await.unwrap_err();
        assert_eq!(e.status(), Some(403), "{}: {e}", case.label);
        assert!(e.message().contains("***"), "{}: {e}", case.label);
        assert_error_hides(&case, &e);
    }
}

#[tokio::test]
async fn a_credential_in_a_2xx_body_that_is_not_a_completion_is_never_shown() {
    let mock = MockUpstream::start().await;
    for case in cases(&mock, "twoxx") {
        let token = &case.token;
        let bodies = [
            format!("<html>gateway refused {token}</html>"),
            format!(r#"{{"error":{{"message":"key {token} was revoked"}}}}"#),
            format!(r#"{{"choices":"{token}"}}"#),
        ];
        for body in bodies {
            mock.push_reply(MockReply::Body(body));
            let e = case.client.chat(&request(case.label)).await.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Upstream, "{}: {e}", case.label);
            assert_error_hides(&case, &e);
        }
    }
}

#[tokio::test]
async fn a_credential_echoed_in_a_stream_is_never_shown() {
    let mock = MockUpstream::start().await;
    for case in cases(&mock, "stream") {
        let token = &case.token;
        let events = [
            format!("data: {{\"error\":{{\"message\":\"key {token} was revoked\"}}}}\n\n"),
            format!("data: not a chunk, and {token} with it\n\n"),
        ];
        for events in events {
            mock.push_reply(MockReply::Sse(events));
            let items: Vec<_> = case
                .client
                .chat_stream(&request(case.label))
                .await
                .expect("the stream starts")
                .collect()
                .await;
            let e = items
                .last()
                .and_then(|item| item.as_ref().err())
                .expect("the stream ends in an error");
            assert_error_hides(&case, e);
        }
        // And an error status before the stream starts.
        mock.push_reply(MockReply::EchoCredential {
            code: 401,
            header: case.header.to_string(),
            plain: false,
        });
        let e = match case.client.chat_stream(&request(case.label)).await {
            Ok(_) => panic!("{}: a 401 starts no stream", case.label),
            Err(e) => e,
        };
        assert_eq!(e.status(), Some(401), "{}: {e}", case.label);
        assert_error_hides(&case, &e);
    }
}

/// Errors quote only the start of a long body. A credential cut by that limit must not
/// leave its first characters behind: the mask runs before the cut.
#[tokio::test]
async fn a_credential_cut_by_the_quote_limit_leaves_no_prefix() {
    let mock = MockUpstream::start().await;
    for case in cases(&mock, "cut") {
        let token = &case.token;
        let prefix = &token[..8];
        let mut errors = Vec::new();
        // Plain bodies are quoted up to 200 bytes, provider messages up to 1024.
        for (filler, json) in [(186, false), (190, false), (1010, true)] {
            let text = format!("{} {token} was refused", "x".repeat(filler));
            let body = if json {
                serde_json::json!({"error": {"message": text}}).to_string()
            } else {
                text
            };
            mock.push_reply(MockReply::Status {
                code: 400,
                body,
                retry_after: None,
            });
            errors.push(case.client.chat(&request(case.label)).await.unwrap_err());
        }
        // A bad stream event is quoted up to 200 bytes too.
        mock.push_reply(MockReply::Sse(format!(
            "data: {} {token}\n\n",
            "x".repeat(186)
        )));
        let items: Vec<_> = case
            .client
            .chat_stream(&request(case.label))
            .await
            .unwrap()
            .collect()
            .await;
        errors.push(items.into_iter().last().unwrap().unwrap_err());

        for e in errors {
            for shown in [format!("{e}"), format!("{e:?}")] {
                assert!(
                    !shown.contains(prefix),
                    "{}: the start of the credential leaked: {shown}",
                    case.label
                );
            }
        }
    }
}

#[tokio::test]
async fn the_decoded_basic_password_is_masked_too() {
    let mock = MockUpstream::start().await;
    let case = cases(&mock, "basic")
        .into_iter()
        .find(|c| c.label == "authorization_basic")
        .unwrap();
    mock.push_reply(MockReply::openai_error(
        401,
        &format!("wrong password {BASIC_PASSWORD} for alice:{BASIC_PASSWORD}"),
    ));
    let e = case.client.chat(&request("basic")).await.unwrap_err();
    for shown in [format!("{e}"), format!("{e:?}")] {
        assert!(!shown.contains(BASIC_PASSWORD), "{shown}");
    }
    assert!(e.message().starts_with("wrong password ***"), "{e}");
}

/// A key in the base URL's query and a password in its userinfo (which reqwest sends as
/// `Authorization: Basic`): echoed back by the upstream in every form, none is shown in
/// the error, the client's `Debug` or the logs.
#[tokio::test]
async fn credentials_in_the_base_url_are_never_shown() {
    use base64::Engine as _;
    let logs = logs();
    let mock = MockUpstream::start().await;
    // Each with an escape, so that both its written and its decoded form are secrets.
    let (key, key_decoded) = ("urlkey-Zq8W%2Bm3Rt6Yp1", "urlkey-Zq8W+m3Rt6Yp1");
    let (password, password_decoded) = ("urlpw-Xk4L%2Fj9Vb2Nc7", "urlpw-Xk4L/j9Vb2Nc7");
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("svc-user:{password_decoded}"));
    let base = mock.base_url();
    let in_query = format!("{base}?key={key}&api-version=2024-06-01");
    let in_userinfo = base.replacen("http://", &format!("http://svc-user:{password}@"), 1);
    let cases = [
        (
            in_query,
            format!("refused key {key} ({key_decoded})"),
            vec![key, key_decoded],
        ),
        (
            in_userinfo,
            format!(
                "refused svc-user:{password_decoded}, password {password} / \
                 {password_decoded}, Authorization: Basic {basic}"
            ),
            vec![password, password_decoded, basic.as_str()],
        ),
    ];
    for (url, echo, secrets) in cases {
        let client = OpenAiCompatible::new(url.clone()).retry(
            RetryPolicy::default()
                .max_attempts(2)
                .base_delay(Duration::ZERO)
                .max_delay(Duration::ZERO),
        );
        let echo = format!("{echo}; url {url}");
        // A retryable echo (logged before the retry), then a final one.
        for code in [500, 401] {
            mock.push_reply(MockReply::openai_error(code, &echo));
        }
        let e = client.chat(&request("url credentials")).await.unwrap_err();
        assert_eq!(e.status(), Some(401), "{e}");
        assert!(
            e.message().starts_with("refused ") && e.message().contains("***"),
            "{e}"
        );
        let mut shown = format!("{e} {e:?} {client:?}");
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            shown.push_str(&format!(" {cause} {cause:?}"));
            source = cause.source();
        }
        for secret in secrets {
            assert!(
                !shown.contains(secret),
                "{secret} leaked from {url}: {shown}"
            );
        }
        if url.contains('@') {
            let sent = mock.last_request().unwrap();
            assert_eq!(
                sent.header("authorization"),
                Some(format!("Basic {basic}").as_str()),
                "the userinfo is sent as Basic"
            );
        }
    }
    let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    for secret in [key, key_decoded, password, password_decoded, basic.as_str()] {
        assert!(!text.contains(secret), "{secret} logged: {text}");
    }
}

/// The rule for short values: under 4 characters a value is no secret (local servers take
/// any key, such as `x`) and is shown as is; under 8 it is masked only where it stands
/// alone, so a common word inside a longer one is not garbled; from 8 on, everywhere.
#[tokio::test]
async fn short_credentials_are_masked_only_where_they_stand_alone() {
    let mock = MockUpstream::start().await;
    let client = |key: &str| {
        OpenAiCompatible::new(mock.base_url())
            .api_key(key)
            .retry(RetryPolicy::none())
    };
    let message_for = |client: OpenAiCompatible, message: &str| {
        mock.push_reply(MockReply::openai_error(401, message));
        async move { client.chat(&request("short")).await.unwrap_err() }
    };

    let e = message_for(client("abc"), "key abc is not abcdef").await;
    assert_eq!(e.message(), "key abc is not abcdef");

    let e = message_for(client("Zq7w"), "key Zq7w refused; see Zq7wiki, x-Zq7w").await;
    assert_eq!(e.message(), "key *** refused; see Zq7wiki, x-Zq7w");

    let e = message_for(client("Zq7w9k2m"), "key Zq7w9k2m refused, xZq7w9k2mx").await;
    assert_eq!(e.message(), "key *** refused, x***x");
}

// ---------------------------------------------------------------------------------------
// Logs
// ---------------------------------------------------------------------------------------

type Buffer = Arc<Mutex<Vec<u8>>>;

/// Everything logged by this test binary, at every level and from every crate, since the
/// first call (one global subscriber: tests run in parallel).
fn logs() -> &'static Buffer {
    static LOGS: OnceLock<Buffer> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Buffer::default();
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(Sink(Arc::clone(&buffer)))
            .with_ansi(false)
            .without_time()
            .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE);
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))
            .expect("no other global subscriber in this binary");
        buffer
    })
}

struct Sink(Buffer);

impl std::io::Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Sink {
    type Writer = Sink;

    fn make_writer(&'a self) -> Sink {
        Sink(Arc::clone(&self.0))
    }
}

#[tokio::test]
async fn logs_never_show_a_credential() {
    let logs = logs();
    let mock = MockUpstream::start().await;
    let cases = cases(&mock, "logs");
    for case in &cases {
        // A retryable echo (logged before the retry), then a final one.
        for code in [500, 401] {
            mock.push_reply(MockReply::EchoCredential {
                code,
                header: case.header.to_string(),
                plain: false,
            });
        }
        let e = case.client.chat(&request(case.label)).await.unwrap_err();
        assert_eq!(e.status(), Some(401), "{}: {e}", case.label);
    }
    // Through the cache too, which logs failed requests.
    let case = cases.into_iter().next().unwrap();
    let cache = LlmCache::builder()
        .upstream(case.client)
        .build()
        .await
        .unwrap();
    mock.push_reply(MockReply::EchoCredential {
        code: 401,
        header: case.header.to_string(),
        plain: false,
    });
    let e = cache.chat(&request("through the cache")).await.unwrap_err();
    assert!(
        !format!("{e} {e:?} {cache:?}").contains(&case.token),
        "{e:?}"
    );

    let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    let retried: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("upstream call failed; retrying"))
        .collect();
    assert!(
        retried.iter().any(|l| l.contains("***")),
        "the retries were logged with the credential masked: {text}"
    );
    for label in [
        "api_key",
        "authorization",
        "authorization_token_scheme",
        "proxy_authorization",
        "api_key_header",
        "x_api_key",
        "openai_organization",
        "openai_project",
        "marked",
    ] {
        let token = format!("tok-logs-{label}-Q7fK2pX9mZ4w");
        assert!(
            !text.contains(&token),
            "{label} leaked in the logs:\n{text}"
        );
    }
    assert!(
        !text.contains(BASIC),
        "the Basic credential leaked:\n{text}"
    );
}
