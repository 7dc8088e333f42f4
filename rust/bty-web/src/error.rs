//! HTTP errors as JSON: `{"error": "..."}`, plus `field` and `reason` for
//! validation failures (422). Messages say what failed and what to do.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::machines::FieldError;

#[derive(Debug)]
pub enum ApiError {
    BadRequest(String),
    Unauthorized(String),
    Forbidden(String),
    NotFound(String),
    /// The state directory's disk is full (507).
    InsufficientStorage(String),
    /// The request is fine but clashes with work in progress (409).
    Conflict(String),
    PayloadTooLarge(String),
    /// The request body did not arrive in time (408).
    RequestTimeout(String),
    UnsupportedMediaType(String),
    Unprocessable {
        field: String,
        reason: String,
    },
    /// 422 with a custom body (e.g. every catalog problem).
    UnprocessableBody(serde_json::Value),
    TooManyRequests(String),
    BadGateway(String),
    Internal(String),
}

impl ApiError {
    pub fn field(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ApiError::Unprocessable { field: field.into(), reason: reason.into() }
    }
    pub fn not_found(what: impl Into<String>) -> Self {
        ApiError::NotFound(what.into())
    }
    pub fn internal(what: impl std::fmt::Display) -> Self {
        ApiError::Internal(what.to_string())
    }
    /// The one answer to a body over `[limits] max_body_bytes`, whichever
    /// part of the server noticed.
    pub fn body_too_large(limit: u64) -> Self {
        Self::body_over(BodyLimit { bytes: limit, key: "max_body_bytes" })
    }
    /// A body over a route's own limit (`[limits] <key>`).
    pub fn body_over(limit: BodyLimit) -> Self {
        let BodyLimit { bytes, key } = limit;
        ApiError::PayloadTooLarge(format!(
            "the request body is larger than {bytes} bytes, the limit set by [limits] {key} \
             (BTY_LIMITS_{})",
            key.to_ascii_uppercase()
        ))
    }
}

/// A route's body limit and the `[limits]` key that sets it.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit {
    pub bytes: u64,
    pub key: &'static str,
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        ApiError::Unprocessable { field: e.field, reason: e.reason }
    }
}

impl From<rusqlite::Error> for ApiError {
    fn from(e: rusqlite::Error) -> Self {
        if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) {
            tracing::error!(error = %e, "state database: disk full");
            return ApiError::InsufficientStorage(
                "the disk holding the state directory is full: this change was not saved; nothing already \
                 stored was lost. Free space there (old backups, state.db.*.bak files) and try again"
                    .into(),
            );
        }
        ApiError::Internal(format!("database error: {e}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = match self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, json!({ "error": m })),
            ApiError::Unauthorized(m) => (StatusCode::UNAUTHORIZED, json!({ "error": m })),
            ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, json!({ "error": m })),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, json!({ "error": m })),
            ApiError::InsufficientStorage(m) => (StatusCode::INSUFFICIENT_STORAGE, json!({ "error": m })),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, json!({ "error": m })),
            ApiError::PayloadTooLarge(m) => (StatusCode::PAYLOAD_TOO_LARGE, json!({ "error": m })),
            ApiError::RequestTimeout(m) => (StatusCode::REQUEST_TIMEOUT, json!({ "error": m })),
            ApiError::UnsupportedMediaType(m) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, json!({ "error": m })),
            ApiError::Unprocessable { field, reason } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({ "error": format!("invalid {field}: {reason}"), "field": field, "reason": reason }),
            ),
            ApiError::UnprocessableBody(v) => (StatusCode::UNPROCESSABLE_ENTITY, v),
            ApiError::TooManyRequests(m) => (StatusCode::TOO_MANY_REQUESTS, json!({ "error": m })),
            ApiError::BadGateway(m) => (StatusCode::BAD_GATEWAY, json!({ "error": m })),
            ApiError::Internal(m) => {
                tracing::error!(error = %m, "internal error");
                (StatusCode::INTERNAL_SERVER_ERROR, json!({ "error": m }))
            }
        };
        let mut resp = (status, axum::Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        }
        // The rest of an oversized body is never read, so the connection
        // cannot carry another request: say so, or a client reuses it and
        // its next request fails on the close.
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            resp.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
        }
        resp
    }
}

/// Read a request body, mapping the body-limit layer's error to 413.
pub async fn body_bytes(req: Request) -> Result<Bytes, ApiError> {
    let limit_hit = |e: &axum::Error| {
        let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(s) = src {
            if s.is::<http_body_util::LengthLimitError>() {
                return true;
            }
            src = s.source();
        }
        false
    };
    axum::body::to_bytes(req.into_body(), usize::MAX).await.map_err(|e| {
        if limit_hit(&e) {
            ApiError::PayloadTooLarge("request body is larger than [limits] max_body_bytes".into())
        } else {
            ApiError::BadRequest(format!("cannot read the request body: {e}"))
        }
    })
}

pub fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|m| {
            let m = m.trim().to_ascii_lowercase();
            m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
        })
        .unwrap_or(false)
}

/// The name in a serde message such as "unknown field `x`" or "missing field `y`".
fn field_from_message(msg: &str) -> String {
    for marker in ["unknown field `", "missing field `", "duplicate field `"] {
        if let Some(rest) = msg.split(marker).nth(1) {
            if let Some(name) = rest.split('`').next() {
                return name.to_string();
            }
        }
    }
    String::new()
}

/// Decode JSON: wrong content type → 415, unparsable → 400 with the parser's
/// message, right syntax but wrong shape → 422 naming the field when serde does.
pub fn decode_json<T: DeserializeOwned>(headers: &HeaderMap, bytes: &[u8]) -> Result<T, ApiError> {
    if !is_json(headers) {
        return Err(ApiError::UnsupportedMediaType(
            "send the body as JSON with Content-Type: application/json".into(),
        ));
    }
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| ApiError::BadRequest(format!("malformed JSON: {e}")))?;
    serde_json::from_value(value).map_err(|e| {
        let msg = e.to_string();
        ApiError::Unprocessable { field: field_from_message(&msg), reason: msg }
    })
}

/// `Json<T>` with the error mapping of [`decode_json`].
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let headers = req.headers().clone();
        let bytes = body_bytes(req).await?;
        decode_json(&headers, &bytes).map(ApiJson)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_field_names_are_extracted() {
        assert_eq!(field_from_message("unknown field `oops`, expected one of `a`"), "oops");
        assert_eq!(field_from_message("missing field `status`"), "status");
        assert_eq!(field_from_message("invalid type: string"), "");
    }
}
