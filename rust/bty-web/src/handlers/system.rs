//! Health, version and metrics: open, for monitoring and load balancers.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::audit;
use crate::error::ApiError;
use crate::machines;
use crate::state::AppState;

pub async fn healthz(State(app): State<AppState>) -> Response {
    let db = app.db.read(audit::unacknowledged_count).await;
    let catalog = app.catalog.get();
    let (status, code) =
        if db.is_ok() { ("ok", StatusCode::OK) } else { ("degraded", StatusCode::SERVICE_UNAVAILABLE) };
    let body = json!({
        "status": status,
        "version": crate::VERSION,
        "details": {
            "database": db.as_ref().map(|_| "ok".to_string()).unwrap_or_else(|e| e.to_string()),
            "unacknowledged_events": db.ok(),
            "default_password_in_use": app.default_password.load(Ordering::Relaxed),
            "catalog_images": catalog.images.len(),
            "catalog_error": app.catalog.last_error(),
            "uptime_s": app.started.elapsed().as_secs(),
        }
    });
    (code, Json(body)).into_response()
}

pub async fn version() -> Json<serde_json::Value> {
    Json(json!({ "version": crate::VERSION }))
}

pub async fn metrics(State(app): State<AppState>) -> Result<Response, ApiError> {
    let (by_policy, unacked) = app
        .db
        .read(|c| Ok::<_, rusqlite::Error>((machines::count_by_policy(c)?, audit::unacknowledged_count(c)?)))
        .await?;
    let mut text = app.metrics.render(&by_policy, unacked);
    if let Some(cache) = &app.cache {
        let c = cache.counters();
        for (name, help, v) in [
            (
                "bty_cache_hits_total",
                "Image downloads served from a complete or filling cache entry.",
                c.hits,
            ),
            ("bty_cache_misses_total", "Image downloads that started a cache fill.", c.misses),
            (
                "bty_cache_upstream_bytes_total",
                "Bytes the cache fetched from image origins.",
                c.upstream_bytes,
            ),
            (
                "bty_cache_evictions_total",
                "Cache entries evicted (least recently used, or by hand).",
                c.evictions,
            ),
        ] {
            text.push_str(&format!("# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}\n"));
        }
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response())
}

pub async fn not_found(uri: Uri) -> ApiError {
    ApiError::not_found(format!("no route for {}", uri.path()))
}
