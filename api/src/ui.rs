//! The web dashboard: static ES modules, CSS and the vendored uPlot,
//! embedded in the binary and served at `/` and `/ui/...` without a token
//! (they hold no data; the page asks for a token and calls `/api/v1` with
//! it). These routes are not part of the OpenAPI document.
//!
//! Layout of the sources (repository root `ui/`): `index.html`, `app.js`
//! (router and shell), `api.js` (REST and live stream), `pages/*.js`,
//! `style.css`, `vendor/uplot/`. See docs/dashboard.md.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::error::ApiError;

macro_rules! assets {
    ($($path:literal => $mime:literal),* $(,)?) => {
        &[$(($path, $mime, include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/../ui/", $path)) as &[u8])),*]
    };
}

/// Every file of the dashboard: path under `ui/`, content type, bytes.
pub const ASSETS: &[(&str, &str, &[u8])] = assets! {
    "index.html" => "text/html; charset=utf-8",
    "style.css" => "text/css; charset=utf-8",
    "app.js" => "text/javascript; charset=utf-8",
    "api.js" => "text/javascript; charset=utf-8",
    "util.js" => "text/javascript; charset=utf-8",
    "pages/login.js" => "text/javascript; charset=utf-8",
    "pages/overview.js" => "text/javascript; charset=utf-8",
    "pages/agent.js" => "text/javascript; charset=utf-8",
    "pages/charts.js" => "text/javascript; charset=utf-8",
    "pages/logs.js" => "text/javascript; charset=utf-8",
    "pages/config.js" => "text/javascript; charset=utf-8",
    "pages/events.js" => "text/javascript; charset=utf-8",
    "favicon.svg" => "image/svg+xml",
    "vendor/uplot/uPlot.esm.js" => "text/javascript; charset=utf-8",
    "vendor/uplot/uPlot.min.css" => "text/css; charset=utf-8",
    "vendor/uplot/LICENSE" => "text/plain; charset=utf-8",
};

/// Scripts, styles and connections from this origin only; no framing.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'";

/// `/` and `/ui/{*path}`.
pub fn router() -> Router {
    Router::new()
        .route("/", get(index))
        .route("/ui/", get(index))
        .route("/ui/{*path}", get(asset))
}

async fn index() -> Response {
    serve("index.html")
}

async fn asset(Path(path): Path<String>) -> Response {
    serve(&path)
}

fn serve(path: &str) -> Response {
    let Some((_, mime, body)) = ASSETS.iter().find(|(p, _, _)| *p == path) else {
        return ApiError::not_found("NOT_FOUND", format!("no dashboard file `{path}`"))
            .into_response();
    };
    let mut response = (*body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(mime));
    // Assets change with the binary: always revalidate (they are small).
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::ASSETS;

    /// Every file under `ui/` (but the browser tests) is embedded, so a
    /// new module cannot be forgotten in [`ASSETS`].
    #[test]
    fn every_dashboard_file_is_embedded() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../ui");
        let mut stack = vec![root.clone()];
        let mut missing = Vec::new();
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir:?}: {e}")) {
                let path = entry.map(|e| e.path()).unwrap_or_default();
                let rel = path
                    .strip_prefix(&root)
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if rel == "tests" || rel.ends_with("README.md") {
                    continue;
                }
                if path.is_dir() {
                    stack.push(path);
                } else if !ASSETS.iter().any(|(p, _, _)| *p == rel) {
                    missing.push(rel);
                }
            }
        }
        assert!(
            missing.is_empty(),
            "not embedded in api/src/ui.rs: {missing:?}"
        );
        assert!(ASSETS.len() >= 10);
    }
}
