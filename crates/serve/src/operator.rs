//! The operator's key: an optional admin key that guards `/health`, `/stats`, `/metrics`
//! (the dashboard's data) and, without caller keys, invalidation (all of it in open mode, a
//! namespace in pass-through mode). Only its SHA-256 is kept, and
//! requests are compared by digest; it must never be logged, shown or sent upstream.

use std::fmt;

use axum::http::{HeaderMap, StatusCode, header};

use super::access::digest;
use super::errors::ApiError;
use crate::error::{Error, Result};

/// The admin key of [`ServeBuilder::admin_key`](crate::ServeBuilder::admin_key), by its
/// SHA-256 only. `Debug` shows `***`.
#[derive(Clone)]
pub(crate) struct AdminKey {
    digest: [u8; 32],
}

impl fmt::Debug for AdminKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminKey(***)")
    }
}

impl AdminKey {
    /// The key `text` (surrounding whitespace ignored).
    ///
    /// # Errors
    ///
    /// A `Config` error naming `admin_key` when it is empty or cannot travel in a header.
    pub(crate) fn new(text: &str) -> Result<Self> {
        let key = text.trim();
        if key.is_empty() {
            return Err(Error::config("admin_key", "is empty"));
        }
        if !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::config(
                "admin_key",
                "must be visible ASCII without spaces (it travels as `Authorization: Bearer <key>`)",
            ));
        }
        Ok(AdminKey {
            digest: digest(key),
        })
    }

    /// Whether `headers` carry this key as `Authorization: Bearer <key>`.
    pub(crate) fn admits(&self, headers: &HeaderMap) -> bool {
        bearer(headers).is_some_and(|key| digest(key) == self.digest)
    }

    /// `Ok` when `headers` carry the key, else a 401 that says what to send.
    pub(crate) fn check(&self, headers: &HeaderMap) -> std::result::Result<(), ApiError> {
        if self.admits(headers) {
            return Ok(());
        }
        let (message, code) = match bearer(headers) {
            None => (
                "this endpoint needs the admin key: send `Authorization: Bearer <admin key>`",
                "missing_admin_key",
            ),
            Some(_) => (
                "the admin key sent is not this front's admin key",
                "invalid_admin_key",
            ),
        };
        Err(ApiError::new(StatusCode::UNAUTHORIZED, message)
            .kind("invalid_request_error")
            .code(code))
    }
}

/// The key of `Authorization: Bearer <key>`, if the header is there and says so.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .trim()
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|k| !k.is_empty())
}

/// `Ok` when no admin key is set, or `headers` carry it.
pub(super) fn guard(
    key: Option<&AdminKey>,
    headers: &HeaderMap,
) -> std::result::Result<(), ApiError> {
    key.map_or(Ok(()), |key| key.check(headers))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_checked_by_digest_and_never_shown() {
        let key = AdminKey::new("  adm-SECRET-1 \n").unwrap();
        assert_eq!(format!("{key:?}"), "AdminKey(***)");
        let mut h = HeaderMap::new();
        let e = key.check(&h).unwrap_err();
        assert_eq!(e.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(e.body()["error"]["code"], "missing_admin_key");
        h.insert(header::AUTHORIZATION, "Bearer adm-wrong".parse().unwrap());
        let e = key.check(&h).unwrap_err();
        assert_eq!(e.body()["error"]["code"], "invalid_admin_key");
        assert!(!e.body().to_string().contains("adm-"), "{}", e.body());
        h.insert(
            header::AUTHORIZATION,
            "Bearer adm-SECRET-1".parse().unwrap(),
        );
        assert!(key.check(&h).is_ok());
        assert!(guard(None, &HeaderMap::new()).is_ok());
        for bad in ["", "  ", "two words"] {
            let e = AdminKey::new(bad).unwrap_err().to_string();
            assert!(e.contains("admin_key"), "{e}");
        }
    }
}
