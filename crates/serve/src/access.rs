//! Who may call the front and what each caller may do: the accepted caller keys (by their
//! SHA-256 only), the namespace each is bound to, the directives each may use, and the
//! request's `CacheControl` from its headers. It must never keep, log or show a key.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode, header};
use sha2::{Digest as _, Sha256};

use super::errors::ApiError;
use crate::error::{Error, Result};
use crate::integrations::headers;
use llm_cache_core::chat::CacheControl;
use llm_cache_core::tiered::Digest;

/// The accepted caller keys, each bound to a namespace (see the [format](Self::parse)).
/// Only SHA-256 digests of the keys are kept; `Debug` shows the namespaces, never a key.
#[derive(Clone, Default)]
pub struct CallerKeys {
    by_digest: HashMap<[u8; 32], Arc<CallerKey>>,
}

/// What one caller key may do: its namespace, the directives that spend the upstream
/// budget it may use, and whether it may invalidate its namespace's answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerKey {
    namespace: String,
    refresh: bool,
    bypass: bool,
    no_store: bool,
    invalidate: bool,
}

impl CallerKey {
    /// A key bound to `namespace`, allowed none of `refresh`, `bypass`, `no-store`, nor
    /// invalidation.
    pub fn new(namespace: impl Into<String>) -> Self {
        CallerKey {
            namespace: namespace.into(),
            refresh: false,
            bypass: false,
            no_store: false,
            invalidate: false,
        }
    }

    /// The same, allowed `refresh`, `bypass`, `no-store` and invalidation when `yes`.
    #[must_use]
    pub fn allow_all(self, yes: bool) -> Self {
        CallerKey {
            refresh: yes,
            bypass: yes,
            no_store: yes,
            invalidate: yes,
            ..self
        }
    }

    llm_cache_core::tiered::setters! {
        /// The same, allowed (when `yes`) to invalidate answers of its own namespace through
        /// `POST /v1/cache/invalidate` (`allow=invalidate` in the file).
        #[must_use]
        pub fn allow_invalidate(yes: bool) { invalidate = yes }
    }

    /// Whether the key may invalidate answers of its namespace.
    pub fn may_invalidate(&self) -> bool {
        self.invalidate
    }

    /// The namespace the key's requests are bound to.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }
}

impl fmt::Debug for CallerKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut namespaces: Vec<&str> = self
            .by_digest
            .values()
            .map(|k| k.namespace.as_str())
            .collect();
        namespaces.sort_unstable();
        f.debug_struct("CallerKeys")
            .field("keys", &self.by_digest.len())
            .field("namespaces", &namespaces)
            .finish()
    }
}

impl CallerKeys {
    /// No keys yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Accept `key` for `caller`.
    #[must_use]
    pub fn with(mut self, key: &str, caller: CallerKey) -> Self {
        self.by_digest.insert(digest(key), Arc::new(caller));
        self
    }

    /// How many keys are accepted.
    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    /// No key is accepted.
    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }

    /// Read the accepted keys from `text`, one per line:
    ///
    /// ```text
    /// # namespace   key (or sha256:<64 hex digits>)   [allow=refresh,bypass,no-store,invalidate]
    /// team-a        sk-caller-a1
    /// team-a        sk-caller-a2                       allow=refresh
    /// team-b        sha256:3f0a...e1                   allow=refresh,bypass,no-store
    /// ops           sk-ops-1                           allow=invalidate
    /// ```
    ///
    /// Fields are separated by whitespace; blank lines and lines starting with `#` are
    /// skipped. Keys bound to one namespace share answers; keys of different namespaces
    /// never do. A key may be given as the hex SHA-256 of its text, so the file need not
    /// hold the keys themselves (`printf %s "$KEY" | sha256sum`). The namespace is visible
    /// ASCII. `allow=` lists the directives of `x-llm-cache-control` that spend the upstream
    /// budget which the key may use, and `invalidate`: the key may remove answers of its own
    /// namespace through `POST /v1/cache/invalidate` (default none; `all` for the four).
    /// A key never reaches another namespace's answers, whatever it is allowed.
    ///
    /// # Errors
    ///
    /// A `Config` error naming the line (never quoting a key): a missing field, a bad
    /// digest, an unknown permission, a key given twice.
    pub fn parse(text: &str) -> Result<Self> {
        let mut keys = CallerKeys::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            keys.add_line(line)
                .map_err(|why| Error::config("caller keys", format!("line {}: {why}", n + 1)))?;
        }
        Ok(keys)
    }

    /// [`parse`](Self::parse) the file at `path`.
    ///
    /// # Errors
    ///
    /// A `Config` error when the file cannot be read, or as [`parse`](Self::parse).
    pub fn from_file(path: impl AsRef<std::path::Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::config(
                "caller keys",
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        Self::parse(&text)
    }

    /// Add one line of the [`parse`](Self::parse) format.
    fn add_line(&mut self, line: &str) -> std::result::Result<(), String> {
        let mut fields = line.split_whitespace();
        let namespace = fields.next().ok_or("no namespace")?;
        let key = fields.next().ok_or("no key after the namespace")?;
        if !namespace.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("the namespace must be visible ASCII".into());
        }
        let mut caller = CallerKey::new(namespace);
        for field in fields {
            let Some(list) = field.strip_prefix("allow=") else {
                return Err("a third field must be `allow=<directives>`".into());
            };
            for directive in list.split(',').filter(|d| !d.is_empty()) {
                match directive {
                    "refresh" => caller.refresh = true,
                    "bypass" => caller.bypass = true,
                    "no-store" => caller.no_store = true,
                    "invalidate" => caller.invalidate = true,
                    "all" => caller = caller.allow_all(true),
                    other => {
                        return Err(format!(
                            "unknown permission {other:?} (known: refresh, bypass, no-store, \
                             invalidate, all)"
                        ));
                    }
                }
            }
        }
        let digest = match key.strip_prefix("sha256:") {
            Some(hex) => Digest::from_hex(hex)
                .map(|d| *d.as_bytes())
                .ok_or("`sha256:` must be followed by 64 hex digits")?,
            None => digest(key),
        };
        if self.by_digest.insert(digest, Arc::new(caller)).is_some() {
            return Err("this key is given twice".into());
        }
        Ok(())
    }

    /// The caller `headers` authenticate as (`Authorization: Bearer <key>`).
    pub(super) fn authenticate(
        &self,
        headers: &HeaderMap,
    ) -> std::result::Result<&CallerKey, ApiError> {
        let unauthorized = |message: &str, code: &str| {
            ApiError::new(StatusCode::UNAUTHORIZED, message)
                .kind("invalid_request_error")
                .code(code)
        };
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Err(unauthorized(
                "no caller key: send `Authorization: Bearer <your key for this proxy>`",
                "missing_api_key",
            ));
        };
        let key = value
            .to_str()
            .ok()
            .and_then(|v| v.trim().strip_prefix("Bearer "))
            .map(str::trim)
            .unwrap_or_default();
        // Looked up by digest: the comparison never runs over the key itself.
        self.by_digest
            .get(&digest(key))
            .map(Arc::as_ref)
            .ok_or_else(|| {
                unauthorized(
                    "the caller key is not accepted by this proxy",
                    "invalid_api_key",
                )
            })
    }
}

pub(super) fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.trim().as_bytes()).into()
}

/// The request's `CacheControl`: its control headers, nested inside `bound`, with the
/// budget-spending directives checked against `caller` (`None`: all allowed).
pub(super) fn control(
    request_headers: &HeaderMap,
    bound: &str,
    caller: Option<&CallerKey>,
) -> std::result::Result<CacheControl, ApiError> {
    let mut copy = HeaderMap::new();
    for name in headers::CONTROL_HEADERS {
        for value in request_headers.get_all(name) {
            copy.append(name, value.clone());
        }
    }
    let control = headers::take_controls(&mut copy)
        .map_err(|why| ApiError::new(StatusCode::BAD_REQUEST, why).code("invalid_cache_control"))?;
    if let Some(caller) = caller {
        let refused = [
            ("refresh", control.fetch.refresh && !caller.refresh),
            ("bypass", control.bypass && !caller.bypass),
            ("no-store", control.fetch.no_store && !caller.no_store),
        ];
        if let Some((name, _)) = refused.iter().find(|(_, refused)| *refused) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "`{}: {name}` spends the upstream budget and this caller key is not allowed \
                     it (its line in the caller keys needs `allow={name}`)",
                    headers::HEADER_CONTROL
                ),
            )
            .code("directive_not_allowed"));
        }
    }
    Ok(headers::bind(control, bound))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_format() {
        let hex = "a".repeat(64);
        let keys = CallerKeys::parse(&format!(
            "# comment\n\nteam-a sk-a1\nteam-a  sk-a2  allow=refresh\nteam-b sha256:{hex} allow=all\n"
        ))
        .unwrap();
        assert_eq!(keys.len(), 3);
        let shown = format!("{keys:?}");
        assert!(
            !shown.contains("sk-a1") && shown.contains("team-b"),
            "{shown}"
        );
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Bearer sk-a2".parse().unwrap());
        let caller = keys.authenticate(&h).unwrap();
        assert_eq!(caller.namespace(), "team-a");
        assert!(caller.refresh && !caller.bypass && !caller.may_invalidate());
        let everything =
            CallerKeys::parse("ops sk-o allow=all\nops sk-i allow=invalidate").unwrap();
        for key in ["sk-o", "sk-i"] {
            h.insert(
                header::AUTHORIZATION,
                format!("Bearer {key}").parse().unwrap(),
            );
            assert!(
                everything.authenticate(&h).unwrap().may_invalidate(),
                "{key}"
            );
        }
        h.insert(header::AUTHORIZATION, "Bearer sk-i".parse().unwrap());
        assert!(
            !everything.authenticate(&h).unwrap().refresh,
            "invalidate is not refresh"
        );
        for (bad, what) in [
            ("team-a", "line 1: no key"),
            ("team-a sk-x allow=everything", "unknown permission"),
            ("team-a sha256:zz", "64 hex"),
            (
                "team-a sk-1\nteam-b sk-1",
                "line 2: this key is given twice",
            ),
        ] {
            let e = CallerKeys::parse(bad).unwrap_err().to_string();
            assert!(e.contains(what), "{e}");
            assert!(!e.contains("sk-"), "{e}");
        }
    }

    #[test]
    fn directives_need_the_keys_permission() {
        let mut h = HeaderMap::new();
        h.insert(headers::HEADER_CONTROL, "refresh".parse().unwrap());
        let plain = CallerKey::new("t");
        let e = control(&h, "t", Some(&plain)).unwrap_err();
        assert_eq!(e.status(), StatusCode::FORBIDDEN);
        assert!(control(&h, "t", Some(&plain.clone().allow_all(true))).is_ok());
        assert!(control(&h, "", None).is_ok());
    }
}
