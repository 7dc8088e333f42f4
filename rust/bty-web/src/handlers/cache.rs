//! `/cache`: the image cache's entries, evicting one, and prefetching a
//! catalog image (`POST /images/{name}/prefetch`).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::error::ApiError;
use crate::state::AppState;

fn cache(app: &AppState) -> Result<&bty_control::cache::ImageCache, ApiError> {
    app.cache
        .as_ref()
        .ok_or_else(|| ApiError::Conflict("the image cache is off ([cache] enabled = false)".into()))
}

pub async fn list(State(app): State<AppState>) -> Result<Response, ApiError> {
    Ok(Json(cache(&app)?.entries().await).into_response())
}

pub async fn evict(State(app): State<AppState>, Path(digest): Path<String>) -> Result<Response, ApiError> {
    let digest = bty_core::source::parse_sha256_hex(&digest)
        .ok_or_else(|| ApiError::field("digest", "must be a SHA-256: 64 hexadecimal digits"))?;
    match cache(&app)?.evict(&digest).await {
        Ok(true) => Ok(StatusCode::NO_CONTENT.into_response()),
        Ok(false) => Err(ApiError::not_found(format!("the cache holds nothing for sha256:{digest}"))),
        Err(e) => Err(ApiError::Conflict(e.to_string())),
    }
}

pub async fn prefetch(State(app): State<AppState>, Path(name): Path<String>) -> Result<Response, ApiError> {
    let c = cache(&app)?;
    let Some(entry) = app.catalog.get().get(&name).cloned() else {
        return Err(ApiError::not_found(format!(
            "no image named {name:?} in the catalog (GET /images lists them)"
        )));
    };
    let w = crate::images::wanted(&entry).await.map_err(ApiError::BadGateway)?.ok_or_else(|| {
        ApiError::Conflict(format!(
            "{name} is not cached: local images are served from the images directory, and http(s) images \
                 need a sha256 in the catalog"
        ))
    })?;
    c.prefetch(&w, &crate::images::pinned(&app).await)
        .await
        .map_err(|e| ApiError::Conflict(e.to_string()))?;
    Ok((StatusCode::ACCEPTED, Json(json!({"image": name, "digest": w.sha256}))).into_response())
}
