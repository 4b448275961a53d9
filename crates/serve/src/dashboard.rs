//! `GET /dashboard`: one self-contained page (HTML, CSS and script inline, no external
//! asset) that shows `/stats` and `/health`, refreshed every few seconds. The page holds no
//! numbers and no configuration, so it is served to anyone; the numbers come from `/stats`
//! and `/health`, behind the admin key when one is set (the page sends the key given in its
//! URL fragment, `#key=...`, or typed into it, as `Authorization: Bearer`).

use axum::http::header;
use axum::response::{IntoResponse, Response};

/// The page (`dashboard.html` beside this file).
const PAGE: &str = include_str!("dashboard.html");

/// The page may run its own inline script and style and fetch from its own origin, and
/// nothing else: no external asset can load, and no other site may frame it.
const POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                      connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub(super) async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        PAGE,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        for outside in ["http://", "https://", "src=", "<link", "@import", "url("] {
            assert!(!PAGE.contains(outside), "the page refers to {outside}");
        }
        // Its fetches are relative, so the page works where the router is nested.
        assert!(PAGE.contains(r#"get("stats")"#) && PAGE.contains(r#"get("health")"#));
    }
}
