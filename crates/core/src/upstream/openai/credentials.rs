//! Which headers carry credentials, and the one [`Mask`] that every error and log line
//! quoting the upstream goes through. Nothing here may hand a credential back: `Mask` has
//! no `Debug` and no way to read its secrets out.

use std::borrow::Cow;

/// What a masked credential reads as.
pub(super) const MASKED: &str = "***";

/// Headers that always carry a credential, compared case-insensitively (also the
/// credential headers of the HTTP-level layers, see DESIGN.md).
#[doc(hidden)]
pub const CREDENTIAL_HEADERS: [&str; 6] = [
    "authorization",
    "proxy-authorization",
    "api-key",
    "x-api-key",
    "openai-organization",
    "openai-project",
];

/// Parts of a header name that say it carries a credential (`x-auth-token`,
/// `x-goog-api-key`, `cookie`, ...).
const CREDENTIAL_WORDS: [&str; 5] = ["auth", "key", "token", "secret", "cookie"];

/// Shorter values are not secrets (a local server takes any key, such as `x`) and are
/// never masked: masking them would garble every message.
const MIN_SECRET_CHARS: usize = 4;

/// Secrets shorter than this are masked only where they stand alone (not inside a longer
/// run of letters, digits, `-` or `_`), so a short key that is also a common word does not
/// garble the words that contain it. Longer ones are masked wherever they appear.
const MASK_INSIDE_WORDS_CHARS: usize = 8;

/// Whether the header `name` carries a credential: one of the credential headers, or a
/// name that says so. Names the user marks are on top of these.
#[doc(hidden)]
pub fn is_credential_header(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    CREDENTIAL_HEADERS.contains(&name.as_str())
        || CREDENTIAL_WORDS.iter().any(|word| name.contains(word))
}

/// Header names that match a credential word but carry none, and must stay out of a key
/// scope: an SDK may send a fresh idempotency key with every request, and scoping by it
/// would make every request a miss. (They are still masked in text.)
const NOT_CREDENTIALS: [&str; 2] = ["idempotency-key", "x-idempotency-key"];

/// Whether the header `name` is part of a request's credential scope: a credential header
/// by [`is_credential_header`]'s rule, except [`NOT_CREDENTIALS`].
#[doc(hidden)]
pub fn is_scoped_credential(name: &str) -> bool {
    is_credential_header(name) && !NOT_CREDENTIALS.contains(&name.to_ascii_lowercase().as_str())
}

/// The secrets a text must never show, and the function that hides them.
#[derive(Default)]
pub(super) struct Mask {
    /// Each secret as it is and JSON-escaped, no duplicates.
    secrets: Vec<String>,
}

impl Mask {
    /// Add a credential as it is sent in a header. Its forms are all secrets: the whole
    /// value; after an auth scheme (`Bearer <token>`, `Basic <base64>`, `Token <token>`,
    /// any scheme), the token alone; and for `Basic`, the decoded `user:password` and the
    /// password, since a server may quote what it decoded. Each also as it reads
    /// JSON-escaped, for a body quoted without being parsed.
    pub(super) fn add_credential(&mut self, value: &str) {
        let value = value.trim();
        self.add(value);
        let Some((scheme, token)) = value.split_once(|c: char| c.is_ascii_whitespace()) else {
            return;
        };
        let token = token.trim();
        if scheme.is_empty() || !scheme.bytes().all(is_token_byte) {
            return;
        }
        self.add(token);
        if scheme.eq_ignore_ascii_case("basic")
            && let Some(decoded) = decode_base64(token).and_then(|b| String::from_utf8(b).ok())
        {
            if let Some((_user, password)) = decoded.split_once(':') {
                self.add(password);
            }
            self.add(&decoded);
        }
    }

    /// Add the credentials a base URL carries. Its userinfo: the password (as written
    /// and percent-decoded), the `user:password` pair and its `Basic` base64 form (reqwest
    /// sends the userinfo as `Authorization: Basic`), or the user name when there is no
    /// password (a token given as the user). Its query: every value (as written and
    /// decoded), since `?key=`, `?code=`, `?sig=` and the like are how many services take
    /// a key, except [`PLAIN_QUERY_NAMES`].
    pub(super) fn add_url_credentials(&mut self, url: &reqwest::Url) {
        let user = percent_decoded(url.username());
        let secret_user = match url.password() {
            Some(password) => {
                self.add(password);
                self.add(&percent_decoded(password));
                format!("{user}:{}", percent_decoded(password))
            }
            None if !user.is_empty() => {
                self.add(url.username());
                self.add(&user);
                format!("{user}:")
            }
            None => String::new(),
        };
        if !secret_user.is_empty() {
            use base64::Engine as _;
            let basic = base64::engine::general_purpose::STANDARD.encode(&secret_user);
            self.add_credential(&format!("Basic {basic}"));
        }
        for pair in url.query().unwrap_or_default().split('&') {
            let (name, raw) = pair.split_once('=').unwrap_or(("", pair));
            let name = percent_decoded(&name.replace('+', " "));
            if PLAIN_QUERY_NAMES
                .iter()
                .any(|plain| name.eq_ignore_ascii_case(plain))
            {
                continue;
            }
            self.add(raw);
            self.add(&percent_decoded(&raw.replace('+', " ")));
        }
    }

    fn add(&mut self, secret: &str) {
        if secret.chars().count() < MIN_SECRET_CHARS {
            return;
        }
        // A JSON body quoted as is shows a secret escaped (`"` and `\`; `/` by some servers).
        let json = serde_json::to_string(secret).unwrap_or_default();
        let escaped = json.trim_matches('"');
        for form in [secret, escaped, &escaped.replace('/', r"\/")] {
            if !self.secrets.iter().any(|s| s == form) {
                self.secrets.push(form.to_string());
            }
        }
    }

    /// `text` with every secret in it replaced by `***` (overlapping ones as one).
    pub(super) fn apply<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let found = self.found(text);
        if found.is_empty() {
            return Cow::Borrowed(text);
        }
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for (start, end) in found {
            out.push_str(&text[at..start]);
            out.push_str(MASKED);
            at = end;
        }
        out.push_str(&text[at..]);
        Cow::Owned(out)
    }

    /// Whether `text` shows a secret.
    pub(super) fn reveals(&self, text: &str) -> bool {
        !self.found(text).is_empty()
    }

    /// The byte ranges of `text` that show a secret, sorted, overlaps merged.
    fn found(&self, text: &str) -> Vec<(usize, usize)> {
        let mut ranges = Vec::new();
        for secret in &self.secrets {
            let anywhere = secret.chars().count() >= MASK_INSIDE_WORDS_CHARS;
            for (start, _) in text.match_indices(secret.as_str()) {
                let end = start + secret.len();
                if anywhere || stands_alone(text, start, end) {
                    ranges.push((start, end));
                }
            }
        }
        ranges.sort_unstable();
        let mut merged: Vec<(usize, usize)> = Vec::with_capacity(ranges.len());
        for (start, end) in ranges {
            match merged.last_mut() {
                Some(last) if start <= last.1 => last.1 = last.1.max(end),
                _ => merged.push((start, end)),
            }
        }
        merged
    }
}

/// Query parameters of a base URL that are no secret and are quoted in errors as they are
/// (an Azure `api-version` such as `2024-06-01`): every other query value is masked.
pub(super) const PLAIN_QUERY_NAMES: [&str; 2] = ["api-version", "api_version"];

/// `%XX` escapes decoded (invalid ones kept as written), lossy UTF-8.
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `text[start..end]` is not part of a longer word.
fn stands_alone(text: &str, start: usize, end: usize) -> bool {
    let word = |c: char| c.is_alphanumeric() || c == '-' || c == '_';
    let before = text[..start].chars().next_back();
    let after = text[end..].chars().next();
    !before.is_some_and(word) && !after.is_some_and(word)
}

/// A byte of an HTTP token (RFC 9110 `tchar`), what an auth scheme is made of.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Standard or URL-safe base64, padding optional; `None` when it is not base64.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let text = text.trim_end_matches('=');
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut bits, mut held) = (0u32, 0u32);
    for b in text.bytes() {
        let sextet = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        bits = (bits << 6) | u32::from(sextet);
        held += 6;
        if held >= 8 {
            held -= 8;
            out.push((bits >> held) as u8);
            bits &= (1 << held) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(credentials: &[&str]) -> Mask {
        let mut mask = Mask::default();
        for c in credentials {
            mask.add_credential(c);
        }
        mask
    }

    #[test]
    fn credential_headers_are_known_whatever_their_case() {
        for name in [
            "Authorization",
            "PROXY-AUTHORIZATION",
            "api-key",
            "X-Api-Key",
            "OpenAI-Organization",
            "openai-project",
            "x-auth-token",
            "x-goog-api-key",
            "Cookie",
        ] {
            assert!(is_credential_header(name), "{name}");
        }
        for name in ["accept", "x-request-id", "user-agent"] {
            assert!(!is_credential_header(name), "{name}");
        }
    }

    #[test]
    fn the_whole_value_and_the_bare_token_are_masked() {
        let m = mask(&["Bearer sk-live-0123456789"]);
        assert_eq!(
            m.apply("sent Bearer sk-live-0123456789, key sk-live-0123456789."),
            "sent ***, key ***."
        );
        let m = mask(&["token abcdefghijkl"]);
        assert_eq!(m.apply("bad abcdefghijkl"), "bad ***");
        // A value without a scheme is the token.
        let m = mask(&["org-0123456789"]);
        assert_eq!(m.apply("org org-0123456789 unknown"), "org *** unknown");
        assert!(m.reveals("xorg-0123456789x") && !m.reveals("org-012345678"));
    }

    #[test]
    fn basic_masks_the_base64_the_pair_and_the_password() {
        // alice:correct-horse-battery-staple-42
        let b64 = "YWxpY2U6Y29ycmVjdC1ob3JzZS1iYXR0ZXJ5LXN0YXBsZS00Mg==";
        let m = mask(&[&format!("Basic {b64}")]);
        assert_eq!(m.apply(&format!("got {b64}")), "got ***");
        assert_eq!(
            m.apply("user alice:correct-horse-battery-staple-42, password correct-horse-battery-staple-42"),
            "user ***, password ***"
        );
        // The user name alone is no secret.
        assert_eq!(m.apply("user alice"), "user alice");
        assert_eq!(
            decode_base64("aGk").as_deref(),
            Some(&b"hi"[..]),
            "unpadded"
        );
        assert_eq!(decode_base64("a b"), None);
    }

    #[test]
    fn short_values_follow_the_documented_rule() {
        // Under 4 characters: never masked.
        let m = mask(&["Bearer x", "abc"]);
        assert_eq!(m.apply("max tokens: x abc"), "max tokens: x abc");
        // 4 to 7: masked where they stand alone only.
        let m = mask(&["test"]);
        assert_eq!(
            m.apply("key test refused (test-case, testing, x_test); \"test\""),
            "key *** refused (test-case, testing, x_test); \"***\""
        );
        // 8 and more: everywhere.
        let m = mask(&["longword"]);
        assert_eq!(m.apply("longwords, xlongword"), "***s, x***");
    }

    #[test]
    fn json_escaped_forms_are_masked_too() {
        let m = mask(&[r#"Bearer ab/cd"ef\gh+ij"#]);
        assert_eq!(
            m.apply(r#"{"detail":"ab/cd\"ef\\gh+ij"}"#),
            r#"{"detail":"***"}"#
        );
        assert_eq!(
            m.apply(r#"{"detail":"ab\/cd\"ef\\gh+ij"}"#),
            r#"{"detail":"***"}"#
        );
    }

    #[test]
    fn a_base_url_masks_its_password_pair_basic_form_and_query_values() {
        let url = reqwest::Url::parse(
            "https://svc:pa%2Fss-0123456789@h/v1/chat/completions?key=k%2Bey-0123456789&api-version=2024-06-01",
        )
        .unwrap();
        let mut m = Mask::default();
        m.add_url_credentials(&url);
        use base64::Engine as _;
        let basic = base64::engine::general_purpose::STANDARD.encode("svc:pa/ss-0123456789");
        for secret in [
            "pa%2Fss-0123456789",
            "pa/ss-0123456789",
            basic.as_str(),
            "k%2Bey-0123456789",
            "k+ey-0123456789",
        ] {
            assert_eq!(m.apply(&format!("[{secret}]")), "[***]", "{secret}");
        }
        // The user name alone and the api-version are no secrets.
        assert_eq!(m.apply("svc 2024-06-01"), "svc 2024-06-01");
        // A token given as the user (no password) is one.
        let mut m = Mask::default();
        m.add_url_credentials(&reqwest::Url::parse("https://tok-0123456789@h/v1").unwrap());
        assert_eq!(m.apply("user tok-0123456789"), "user ***");
        assert_eq!(percent_decoded("a%zz%4"), "a%zz%4");
    }

    #[test]
    fn overlapping_secrets_are_masked_as_one() {
        let m = mask(&["abcdef123456", "123456uvwxyz"]);
        assert_eq!(m.apply("[abcdef123456uvwxyz]"), "[***]");
        assert_eq!(m.apply("no secret here"), "no secret here");
        assert!(matches!(m.apply("plain"), Cow::Borrowed(_)));
    }
}
