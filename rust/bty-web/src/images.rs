//! The bytes behind `/images/{name}`: local files from the images directory
//! (served by [`crate::fileserve`]), an http(s) origin proxied as a stream
//! (no temporary file; Range passed through), or an OCI artifact's image
//! layer read through the engine's registry client ([`bty_core::oci`]). The
//! catalog itself is [`bty_control::catalog`].

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::TryStreamExt;

use std::collections::HashSet;

use bty_control::cache::{CacheError, Upstream, Wanted};
use bty_core::catalog::{CatalogEntry, ImageSrc};
use bty_core::oci::OciSource;
use bty_core::source::Source;

use crate::error::ApiError;
use crate::fileserve::{range, Ranged};
use crate::state::AppState;

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

/// The engine's registry settings from `[oci]`: a credentials file that
/// cannot be read or parsed stops the start, so a typo is not found only
/// when a machine fails to flash.
pub fn oci_settings(c: &bty_control::config::OciConfig) -> anyhow::Result<bty_core::oci::Settings> {
    let credentials = match &c.credentials_file {
        None => Default::default(),
        Some(p) => {
            let raw = std::fs::read(p)
                .map_err(|e| anyhow::anyhow!("cannot read [oci] credentials_file {}: {e}", p.display()))?;
            bty_core::oci::parse_docker_config(&raw)
                .map_err(|e| anyhow::anyhow!("[oci] credentials_file {}: {e}", p.display()))?
        }
    };
    Ok(bty_core::oci::Settings { plain_http: c.plain_http.clone(), credentials })
}

/// Chunks handed from the blocking registry read to the response body.
const OCI_CHUNK: usize = 256 << 10;

/// Serve an `oras://` entry's image layer: HEAD and GET with one Range. The
/// registry is spoken to by the engine's blocking client on the blocking
/// pool; a whole-image GET is checked against the layer digest as it
/// streams, and a mismatch or a registry that fails for good cuts the
/// response short, so a reader never sees a complete-looking wrong image.
pub async fn oci(src: &str, method: Method, headers: &HeaderMap) -> Response {
    let source = match Source::parse(src) {
        Ok(Source::Oci(o)) => o,
        Ok(_) => return ApiError::internal("not an oras:// source").into_response(),
        Err(e) => return ApiError::BadGateway(e.message().to_string()).into_response(),
    };
    let o = source.clone();
    let layer = match tokio::task::spawn_blocking(move || o.layer()).await {
        Ok(Ok(Some(l))) => l,
        Ok(Ok(None)) => return ApiError::internal("no image layer").into_response(),
        Ok(Err(e)) => return ApiError::BadGateway(e.message().to_string()).into_response(),
        Err(e) => return ApiError::internal(e).into_response(),
    };
    let len = layer.size;
    let etag = format!("\"{}\"", layer.digest);
    let wanted = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        // If-Range against anything but this layer's digest: the whole image.
        Some(_) if headers.get(header::IF_RANGE).is_some_and(|v| v.as_bytes() != etag.as_bytes()) => {
            Ranged::Whole
        }
        Some(v) => range(v, len),
        None => Ranged::Whole,
    };
    let (status, first, last) = match wanted {
        Ranged::Whole => (StatusCode::OK, 0, len.saturating_sub(1)),
        Ranged::Part(a, b) => (StatusCode::PARTIAL_CONTENT, a, b),
        Ranged::Unsatisfiable(why) => {
            return Response::builder()
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::CONTENT_RANGE, format!("bytes */{len}"))
                .body(Body::from(format!("{why}\n")))
                .unwrap_or_else(|e| ApiError::internal(e).into_response());
        }
    };
    let count = if len == 0 { 0 } else { last - first + 1 };
    let mut resp = Response::builder()
        .status(status)
        .header(header::CONTENT_LENGTH, count)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::ETAG, etag)
        .header(header::CONTENT_TYPE, "application/octet-stream");
    if status == StatusCode::PARTIAL_CONTENT {
        resp = resp.header(header::CONTENT_RANGE, format!("bytes {first}-{last}/{len}"));
    }
    if method == Method::HEAD || count == 0 {
        return resp.body(Body::empty()).unwrap_or_else(|e| ApiError::internal(e).into_response());
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Vec<u8>>>(4);
    tokio::task::spawn_blocking(move || stream_layer(&source, first, count, &tx));
    let body = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
    resp.body(Body::from_stream(body)).unwrap_or_else(|e| ApiError::internal(e).into_response())
}

fn stream_layer(
    source: &OciSource,
    first: u64,
    count: u64,
    tx: &tokio::sync::mpsc::Sender<std::io::Result<Vec<u8>>>,
) {
    use std::io::Read;
    let mut reader = match source.open_at(first) {
        Ok(r) => r.take(count),
        Err(e) => {
            tracing::warn!(image = %source.reference.canonical(), "registry read failed: {e}");
            let _ = tx.blocking_send(Err(e.into_io()));
            return;
        }
    };
    let mut sent = 0u64;
    while sent < count {
        let mut chunk = vec![0u8; OCI_CHUNK.min((count - sent) as usize)];
        match read_full(&mut reader, &mut chunk) {
            Ok(0) => {
                let _ = tx.blocking_send(Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("the registry sent {sent} of {count} bytes"),
                )));
                return;
            }
            Ok(n) => {
                chunk.truncate(n);
                sent += n as u64;
                if tx.blocking_send(Ok(chunk)).is_err() {
                    return; // the client went away
                }
            }
            Err(e) => {
                tracing::warn!(image = %source.reference.canonical(), "registry read failed: {e}");
                let _ = tx.blocking_send(Err(e));
                return;
            }
        }
    }
}

fn read_full(r: &mut impl std::io::Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// What the cache needs to hold a catalog entry: `None` for local files and
/// for http(s) entries without a SHA-256 (the cache never keeps bytes it
/// cannot check; those are proxied as before). For `oras://` the layer's
/// digest is the SHA-256, and must agree with the catalog's when both exist.
pub async fn wanted(entry: &CatalogEntry) -> Result<Option<Wanted>, String> {
    match entry.src() {
        ImageSrc::Local(_) => Ok(None),
        ImageSrc::Url(url) => Ok(entry.sha256.clone().map(|sha256| Wanted {
            name: entry.name.clone(),
            src: url.to_string(),
            upstream: Upstream::Http(url.to_string()),
            sha256,
            size: entry.size_bytes,
        })),
        ImageSrc::Oci(src) => {
            let Ok(Source::Oci(o)) = Source::parse(src) else {
                return Err(format!("{src}: not an oras:// reference"));
            };
            let resolved = o.clone();
            let layer = tokio::task::spawn_blocking(move || resolved.layer())
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.message().to_string())?
                .ok_or_else(|| format!("{src}: no image layer"))?;
            let digest = bty_core::source::parse_sha256_hex(&layer.digest)
                .ok_or_else(|| format!("{src}: the layer digest {} is not sha256", layer.digest))?;
            if let Some(want) = &entry.sha256 {
                if *want != digest {
                    return Err(format!(
                        "{src}: the registry's layer is sha256:{digest}, the catalog entry says {want}; fix the \
                         entry's sha256 or pin the reference by digest"
                    ));
                }
            }
            Ok(Some(Wanted {
                name: entry.name.clone(),
                src: o.reference.canonical(),
                upstream: Upstream::Oci(o),
                sha256: digest,
                size: Some(layer.size),
            }))
        }
    }
}

/// Digests eviction must keep: images bound to machines whose policy will
/// flash them.
pub async fn pinned(app: &AppState) -> HashSet<String> {
    match &app.cache {
        Some(c) => c.pinned(&app.catalog.get()).await,
        None => HashSet::new(),
    }
}

/// Serve a remote entry through the cache; `None` when the cache does not
/// hold this kind of entry (or has no room), so the caller proxies it.
pub async fn cached(
    app: &AppState,
    entry: &CatalogEntry,
    method: Method,
    headers: &HeaderMap,
) -> Option<Response> {
    let cache = app.cache.as_ref()?;
    let w = match wanted(entry).await {
        Ok(Some(w)) => w,
        Ok(None) => return None,
        Err(e) => return Some(ApiError::BadGateway(e).into_response()),
    };
    let opened = match cache.open(&w, &pinned(app).await).await {
        Ok(o) => o,
        Err(e @ CacheError::NoRoom { .. }) => {
            tracing::warn!(image = %entry.name, "{e}; serving it from the origin uncached");
            return None;
        }
        Err(CacheError::Failed(e)) => {
            return Some(ApiError::BadGateway(format!("image {}: {e}", entry.name)).into_response())
        }
    };
    let len = opened.size;
    let etag = format!("\"sha256:{}\"", w.sha256);
    // The strong validator is only given, and only honoured, for a complete
    // (verified) entry: a range resumed across fills could join the bytes of
    // a failed one to a good one's end.
    let if_range_ok = |v: &header::HeaderValue| opened.hit && v.as_bytes() == etag.as_bytes();
    let wanted_range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(_) if headers.get(header::IF_RANGE).is_some_and(|v| !if_range_ok(v)) => Ranged::Whole,
        Some(v) => range(v, len),
        None => Ranged::Whole,
    };
    let (status, first, last) = match wanted_range {
        Ranged::Whole => (StatusCode::OK, 0, len.saturating_sub(1)),
        Ranged::Part(a, b) => (StatusCode::PARTIAL_CONTENT, a, b),
        Ranged::Unsatisfiable(why) => {
            return Some(
                Response::builder()
                    .status(StatusCode::RANGE_NOT_SATISFIABLE)
                    .header(header::CONTENT_RANGE, format!("bytes */{len}"))
                    .body(Body::from(format!("{why}\n")))
                    .unwrap_or_else(|e| ApiError::internal(e).into_response()),
            )
        }
    };
    let count = if len == 0 { 0 } else { last - first + 1 };
    let mut resp = Response::builder()
        .status(status)
        .header(header::CONTENT_LENGTH, count)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header("x-bty-cache", if opened.hit { "hit" } else { "miss" });
    if opened.hit {
        resp = resp.header(header::ETAG, etag);
    }
    if status == StatusCode::PARTIAL_CONTENT {
        resp = resp.header(header::CONTENT_RANGE, format!("bytes {first}-{last}/{len}"));
    }
    if method == Method::HEAD || count == 0 {
        return Some(resp.body(Body::empty()).unwrap_or_else(|e| ApiError::internal(e).into_response()));
    }
    let body = opened.range(first, last).map_err(std::io::Error::other);
    Some(resp.body(Body::from_stream(body)).unwrap_or_else(|e| ApiError::internal(e).into_response()))
}

/// Start filling the cache with a catalog image (a machine was bound to
/// it), in the background; what happens is in the cache's entry and, on a
/// failure, its tripwire.
pub fn prefetch(app: &AppState, name: &str) {
    let (Some(cache), Some(entry)) = (app.cache.clone(), app.catalog.get().get(name).cloned()) else {
        return;
    };
    let app = app.clone();
    tokio::spawn(async move {
        match wanted(&entry).await {
            Ok(Some(w)) => {
                if let Err(e) = cache.prefetch(&w, &pinned(&app).await).await {
                    tracing::warn!(image = %entry.name, "prefetch not started: {e}");
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(image = %entry.name, "prefetch not started: {e}"),
        }
    });
}
