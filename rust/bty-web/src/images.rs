//! The bytes behind `/images/{name}`: local files from the images directory
//! (served by [`crate::fileserve`]), or an http(s) origin proxied as a
//! stream (no temporary file; Range passed through). The catalog itself is
//! [`bty_control::catalog`].

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::TryStreamExt;

use crate::error::ApiError;

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
