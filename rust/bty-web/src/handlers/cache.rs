//! `/cache`: the image cache's entries, evicting one, and prefetching a
//! catalog image (`POST /images/{name}/prefetch`). The Images page calls
//! [`start_prefetch`] and [`evict_entry`] too.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::json;

use crate::accounts::Principal;
use crate::audit::{self, NewEvent};
use crate::error::ApiError;
use crate::state::{AppState, ClientIp};

fn cache(app: &AppState) -> Result<&bty_control::cache::ImageCache, ApiError> {
    app.cache
        .as_ref()
        .ok_or_else(|| ApiError::Conflict("the image cache is off ([cache] enabled = false)".into()))
}

pub async fn list(State(app): State<AppState>) -> Result<Response, ApiError> {
    Ok(Json(cache(&app)?.entries().await).into_response())
}

/// Evict the entry for `digest` (hex); an audit event names who did it.
pub async fn evict_entry(
    app: &AppState,
    who: &Principal,
    ip: ClientIp,
    digest: &str,
) -> Result<(), ApiError> {
    let digest = bty_core::source::parse_sha256_hex(digest)
        .ok_or_else(|| ApiError::field("digest", "must be a SHA-256: 64 hexadecimal digits"))?;
    let c = cache(app)?;
    let name = c.entry(&digest).await.map(|e| e.name);
    match c.evict(&digest).await {
        Ok(true) => {}
        Ok(false) => return Err(ApiError::not_found(format!("the cache holds nothing for sha256:{digest}"))),
        Err(e) => return Err(ApiError::Conflict(format!("not evicted: {e}"))),
    }
    let name = name.unwrap_or_else(|| format!("sha256:{digest}"));
    let event = NewEvent::new("cache.evicted", who.actor(), format!("image {name} evicted from the cache"))
        .subject("image", name)
        .details(json!({"digest": digest}))
        .ip(ip.string());
    app.db.write(move |db| audit::insert(db, &event)).await?;
    Ok(())
}

pub async fn evict(
    State(app): State<AppState>,
    Extension(who): Extension<Principal>,
    ip: ClientIp,
    Path(digest): Path<String>,
) -> Result<Response, ApiError> {
    evict_entry(&app, &who, ip, &digest).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Start filling the cache with catalog image `name`; its digest.
pub async fn start_prefetch(app: &AppState, name: &str) -> Result<String, ApiError> {
    let c = cache(app)?;
    let Some(entry) = app.catalog.get().get(name).cloned() else {
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
    c.prefetch(&w, &crate::images::pinned(app).await).await.map_err(|e| ApiError::Conflict(e.to_string()))?;
    Ok(w.sha256)
}

pub async fn prefetch(State(app): State<AppState>, Path(name): Path<String>) -> Result<Response, ApiError> {
    let digest = start_prefetch(&app, &name).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({"image": name, "digest": digest}))).into_response())
}
