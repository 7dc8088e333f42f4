//! `/os`: the appliance's own A/B updates. `GET /os` is the slots' status
//! (or why this server is not an A/B appliance) and the current job;
//! `GET /os/releases/latest` the newest verified release; `POST /os/download`
//! and `POST /os/apply` start the one background job. The work is
//! `bty_control::appliance_os`'s.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bty_core::osupdate::ReleaseType;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::accounts::Principal;
use crate::error::ApiError;
use crate::state::AppState;
use bty_control::appliance_os::{self, Request};

/// The status as JSON: `appliance` null with the `reason` on a server that
/// is not an A/B appliance.
pub async fn status_value(app: &AppState) -> Result<Value, ApiError> {
    let os = app.config.os.clone();
    let found = tokio::task::spawn_blocking(move || appliance_os::appliance(&os))
        .await
        .map_err(ApiError::internal)?;
    let (status, reason) = match found {
        Ok(a) => {
            let st = a.status();
            appliance_os::note_failed_update(&app.db, &st).await?;
            (Some(st), None)
        }
        Err(e) => (None, Some(e)),
    };
    Ok(json!({
        "appliance": status,
        "reason": reason,
        "source": app.config.os.source,
        "job": app.os_jobs.current(),
        "version": crate::VERSION,
    }))
}

pub async fn status(State(app): State<AppState>) -> Result<Response, ApiError> {
    Ok(Json(status_value(&app).await?).into_response())
}

#[derive(Deserialize)]
pub struct LatestQuery {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    version: Option<String>,
}

fn kind_of(s: Option<&str>) -> Result<ReleaseType, ApiError> {
    match s {
        None | Some("") => Ok(ReleaseType::Os),
        Some(k) => ReleaseType::parse(k).ok_or_else(|| ApiError::field("type", "must be os or efisys")),
    }
}

/// The verified manifest of a release (default: the latest os release).
pub async fn release_manifest(
    app: &AppState,
    kind: ReleaseType,
    version: Option<String>,
) -> Result<Value, ApiError> {
    let os = app.config.os.clone();
    let r = tokio::task::spawn_blocking(move || appliance_os::release(&os, kind, version.as_deref()))
        .await
        .map_err(ApiError::internal)?
        .map_err(|e| ApiError::Conflict(e.to_string()))?;
    Ok(json!({"manifest": r.manifest, "url": r.manifest_url, "verified": true}))
}

pub async fn latest(State(app): State<AppState>, Query(q): Query<LatestQuery>) -> Result<Response, ApiError> {
    let kind = kind_of(q.kind.as_deref())?;
    Ok(Json(release_manifest(&app, kind, version_of(q.version)?).await?).into_response())
}

/// A requested version: empty means the latest; anything else must be one.
fn version_of(v: Option<String>) -> Result<Option<String>, ApiError> {
    match v.map(|v| v.trim().to_string()).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) if bty_core::osupdate::parse_version(&v).is_some() => Ok(Some(v)),
        Some(v) => Err(ApiError::field("version", format!("{v:?} is not a version (MAJOR.MINOR.PATCH)"))),
    }
}

#[derive(Deserialize, Default)]
pub struct JobBody {
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub force: bool,
}

/// Start a download or an apply; 409 while another job runs.
pub fn start(
    app: &AppState,
    who: &Principal,
    action: &'static str,
    body: JobBody,
) -> Result<Value, ApiError> {
    let kind = kind_of(body.kind.as_deref())?;
    let version = version_of(body.version)?;
    let job = app
        .os_jobs
        .start(
            app.config.os.clone(),
            app.config.paths.state_dir.join("os-releases"),
            app.db.clone(),
            who.actor(),
            Request { action, kind, version, force: body.force },
        )
        .map_err(ApiError::Conflict)?;
    Ok(json!(job))
}

pub async fn download(
    State(app): State<AppState>,
    Extension(who): Extension<Principal>,
    body: Option<Json<JobBody>>,
) -> Result<Response, ApiError> {
    let job = start(&app, &who, "download", body.map(|b| b.0).unwrap_or_default())?;
    Ok((StatusCode::ACCEPTED, Json(job)).into_response())
}

pub async fn apply(
    State(app): State<AppState>,
    Extension(who): Extension<Principal>,
    body: Option<Json<JobBody>>,
) -> Result<Response, ApiError> {
    let job = start(&app, &who, "apply", body.map(|b| b.0).unwrap_or_default())?;
    Ok((StatusCode::ACCEPTED, Json(job)).into_response())
}
