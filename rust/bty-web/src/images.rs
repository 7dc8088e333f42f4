//! The image catalog the server offers and the bytes behind `/images/{name}`:
//! local files from the images directory (served by [`crate::fileserve`]), or
//! an http(s) origin proxied as a stream (no temporary file; Range passed
//! through).

use std::path::Path;
use std::sync::{Arc, RwLock};

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bty_core::catalog::{Catalog, CatalogEntry, CatalogError, ImageSrc};
use futures_util::TryStreamExt;

use crate::error::ApiError;

/// The current catalog, swapped whole on reload so readers never see a mix.
pub struct CatalogStore {
    current: RwLock<Arc<Catalog>>,
    last_error: RwLock<Option<String>>,
    location: String,
    /// Taken by [`crate::catalog_edit::add`]: one edit of the file at a time.
    pub(crate) edits: tokio::sync::Mutex<()>,
}

impl CatalogStore {
    pub fn new(location: String) -> Self {
        CatalogStore {
            current: RwLock::new(Arc::new(Catalog::empty())),
            last_error: RwLock::new(None),
            location,
            edits: tokio::sync::Mutex::new(()),
        }
    }

    pub fn location(&self) -> &str {
        &self.location
    }

    pub fn get(&self) -> Arc<Catalog> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Why the last reload failed (the previous catalog is still served).
    pub fn last_error(&self) -> Option<String> {
        self.last_error.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A catalog fetched over HTTP (loaded in the background at startup).
    pub fn is_remote(&self) -> bool {
        let l = self.location.to_ascii_lowercase();
        l.starts_with("http://") || l.starts_with("https://")
    }

    /// A local catalog whose file does not exist (yet): an empty catalog.
    pub fn is_missing(&self) -> bool {
        !self.is_remote() && !Path::new(&self.location).exists()
    }

    /// Re-read the catalog. A missing local file is an empty catalog (a fresh
    /// server has none yet); any other problem keeps the previous catalog.
    pub async fn reload(&self) -> Result<Arc<Catalog>, CatalogError> {
        let location = self.location.clone();
        let missing_local = !self.is_remote() && !Path::new(&location).exists();
        let result = if missing_local {
            Ok(Catalog::empty())
        } else {
            tokio::task::spawn_blocking(move || Catalog::load(&location)).await.unwrap_or_else(|e| {
                Err(CatalogError {
                    location: self.location.clone(),
                    problems: vec![bty_core::catalog::CatalogProblem {
                        index: None,
                        name: None,
                        field: "source".into(),
                        reason: format!("loading failed: {e}"),
                    }],
                })
            })
        };
        *self.last_error.write().unwrap_or_else(|e| e.into_inner()) =
            result.as_ref().err().map(|e| e.to_string());
        let loaded = Arc::new(result?);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = loaded.clone();
        Ok(loaded)
    }
}

/// `GET /images` row.
#[derive(Debug, serde::Serialize)]
pub struct ImageInfo<'a> {
    pub name: &'a str,
    /// Where machines fetch it: always this server.
    pub url: String,
    /// The origin, with any `user:password@` blanked (the listing is open).
    pub src: String,
    pub source: &'static str,
    pub sha256: Option<&'a str>,
    pub format: Option<&'static str>,
    pub size_bytes: Option<u64>,
    pub arch: Option<&'a str>,
    pub description: Option<&'a str>,
}

pub fn info<'a>(e: &'a CatalogEntry, base: &str) -> ImageInfo<'a> {
    ImageInfo {
        name: &e.name,
        url: format!("{base}/images/{}", e.name),
        src: redact_userinfo(&e.src),
        source: match e.src() {
            ImageSrc::Url(_) => "http",
            ImageSrc::Local(_) => "local",
        },
        sha256: e.sha256.as_deref(),
        format: e.format.map(|f| f.as_str()),
        size_bytes: e.size_bytes,
        arch: e.arch.as_deref(),
        description: e.description.as_deref(),
    }
}

fn redact_userinfo(src: &str) -> String {
    let Some((scheme, rest)) = src.split_once("://") else {
        return src.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => src.to_string(),
    }
}

/// The catalog as this server re-publishes it: every `src` points back here,
/// so a `bty` pointed at this catalog streams through the server too.
pub fn republish(catalog: &Catalog, base: &str) -> String {
    let mut out = catalog.clone();
    for e in &mut out.images {
        e.src = format!("{base}/images/{}", e.name);
    }
    out.to_toml()
}

const PASSED_REQUEST_HEADERS: [header::HeaderName; 2] = [header::RANGE, header::IF_RANGE];
const PASSED_RESPONSE_HEADERS: [header::HeaderName; 6] = [
    header::CONTENT_LENGTH,
    header::CONTENT_RANGE,
    header::ACCEPT_RANGES,
    header::LAST_MODIFIED,
    header::ETAG,
    header::CONTENT_TYPE,
];

/// Proxy an http(s) origin. The body is streamed; if the origin dies mid-way
/// the error propagates and the client's connection is cut short, so a client
/// never mistakes a truncated image for a complete one.
pub async fn proxy(client: &reqwest::Client, url: &str, method: Method, headers: &HeaderMap) -> Response {
    let mut req = client
        .request(if method == Method::HEAD { reqwest::Method::HEAD } else { reqwest::Method::GET }, url);
    for name in PASSED_REQUEST_HEADERS {
        if let Some(v) = headers.get(&name) {
            req = req.header(name.as_str(), v.as_bytes());
        }
    }
    let upstream = match req.send().await {
        Ok(r) => r,
        Err(e) => {
            return ApiError::BadGateway(format!("cannot reach the image origin {url}: {e}")).into_response();
        }
    };
    let status = upstream.status().as_u16();
    if !matches!(status, 200 | 206 | 304 | 416) {
        return ApiError::BadGateway(format!(
            "the image origin {url} answered HTTP {status}; check the catalog entry's src"
        ))
        .into_response();
    }
    let mut resp =
        Response::builder().status(StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY));
    for name in PASSED_RESPONSE_HEADERS {
        if let Some(v) = upstream.headers().get(name.as_str()) {
            if let Ok(v) = HeaderValue::from_bytes(v.as_bytes()) {
                resp = resp.header(name, v);
            }
        }
    }
    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        Body::from_stream(
            upstream.bytes_stream().map_err(|e| std::io::Error::other(format!("image origin failed: {e}"))),
        )
    };
    resp.body(body).unwrap_or_else(|e| ApiError::internal(e).into_response())
}

#[cfg(test)]
mod tests {
    #[test]
    fn credentials_are_not_listed() {
        assert_eq!(super::redact_userinfo("https://u:p@h.example/a@b.img"), "https://***@h.example/a@b.img");
        assert_eq!(super::redact_userinfo("https://h.example/a@b.img"), "https://h.example/a@b.img");
        assert_eq!(super::redact_userinfo("local.img"), "local.img");
    }
}
