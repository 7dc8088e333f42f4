//! `/backups`: back up now, list, download, delete, the schedule; and the
//! scheduler task that makes the scheduled ones.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::json;

use crate::accounts::Principal;
use crate::audit::{self, Actor, NewEvent};
use crate::backup::{self, BackupInfo, Cadence, Schedule};
use crate::clock;
use crate::error::{decode_json, ApiError};
use crate::state::AppState;

/// Make one backup, recording `backup.created` or the `backup.failed` tripwire.
pub async fn run(app: &AppState, actor: Actor) -> Result<BackupInfo, ApiError> {
    let Ok(_permit) = app.backups.clone().try_acquire_owned() else {
        return Err(ApiError::Conflict(format!(
            "{} backup(s) already running ([tuning] backup_max_parallel); try again when it ends",
            app.config.tuning.backup_max_parallel
        )));
    };
    let db = app.db.path().to_path_buf();
    let dir = app.config.paths.backup_dir.clone();
    let made = tokio::task::spawn_blocking(move || backup::create(&db, &dir))
        .await
        .map_err(|e| ApiError::internal(format!("backup task failed: {e}")))?;
    match made {
        Ok(info) => {
            let e = NewEvent::new(
                "backup.created",
                actor,
                format!("backup {} ({} bytes)", info.name, info.bytes),
            )
            .subject("backup", info.name.clone())
            .details(json!({"dir": app.config.paths.backup_dir.join(&info.name), "files": info.files}));
            audit::record(&app.db, e).await?;
            Ok(info)
        }
        Err(err) => {
            let msg = format!("{err:#}");
            tracing::error!(error = %msg, "backup failed");
            let e = NewEvent::new("backup.failed", actor, format!("backup failed: {msg}"))
                .subject("backup", app.config.paths.backup_dir.display().to_string());
            let _ = audit::record(&app.db, e).await;
            Err(ApiError::Internal(format!(
                "backup failed: {msg}; check free space and permissions in {}",
                app.config.paths.backup_dir.display()
            )))
        }
    }
}

async fn prune(app: &AppState, keep: u32, actor: Actor) {
    let dir = app.config.paths.backup_dir.clone();
    match tokio::task::spawn_blocking(move || backup::prune(&dir, keep)).await {
        Ok(Ok(gone)) if !gone.is_empty() => {
            let e = NewEvent::new(
                "backup.pruned",
                actor,
                format!("pruned {} old backup(s), keeping the {keep} newest", gone.len()),
            )
            .subject("backup", app.config.paths.backup_dir.display().to_string())
            .details(json!({"deleted": gone, "keep": keep}));
            let _ = audit::record(&app.db, e).await;
        }
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::error!(error = %format!("{e:#}"), "cannot prune backups"),
        Err(e) => tracing::error!(error = %e, "prune task failed"),
    }
}

pub async fn list(State(app): State<AppState>) -> Result<Response, ApiError> {
    let dir = app.config.paths.backup_dir.clone();
    let rows = tokio::task::spawn_blocking(move || backup::list(&dir))
        .await
        .map_err(ApiError::internal)?
        .map_err(|e| ApiError::internal(format!("{e:#}")))?;
    Ok(Json(rows).into_response())
}

pub async fn create(
    State(app): State<AppState>,
    Extension(who): Extension<Principal>,
) -> Result<Response, ApiError> {
    let info = run(&app, who.actor()).await?;
    Ok((StatusCode::CREATED, Json(info)).into_response())
}

pub async fn download(
    State(app): State<AppState>,
    Path((name, file)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let Some(path) = backup::file_path(&app.config.paths.backup_dir, &name, &file) else {
        return Err(ApiError::not_found(format!(
            "no file {file:?} in backup {name:?} (GET /backups lists them)"
        )));
    };
    let f = tokio::fs::File::open(&path)
        .await
        .map_err(|e| ApiError::internal(format!("cannot open {file}: {e}")))?;
    let len = f.metadata().await.map(|m| m.len()).unwrap_or(0);
    let kind = if file.ends_with(".json") { "application/json" } else { "application/vnd.sqlite3" };
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(f));
    Ok((
        [
            (header::CONTENT_TYPE, kind.to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"bty-{name}-{file}\"")),
        ],
        body,
    )
        .into_response())
}

pub async fn remove(
    State(app): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let dir = app.config.paths.backup_dir.clone();
    let n = name.clone();
    let gone = tokio::task::spawn_blocking(move || backup::remove(&dir, &n))
        .await
        .map_err(ApiError::internal)?
        .map_err(|e| ApiError::internal(format!("{e:#}")))?;
    if !gone {
        return Err(ApiError::not_found(format!("no backup {name:?}")));
    }
    let e = NewEvent::new("backup.deleted", who.actor(), format!("backup {name} deleted"))
        .subject("backup", name);
    audit::record(&app.db, e).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn schedule_get(State(app): State<AppState>) -> Result<Response, ApiError> {
    let s = app.db.read(backup::load_schedule).await?;
    Ok(Json(s).into_response())
}

/// `{"cadence": "daily"|"weekly"|"manual", "keep": N}`; takes effect on the
/// scheduler's next tick, no restart.
pub async fn schedule_put(
    State(app): State<AppState>,
    Extension(who): Extension<Principal>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let v: serde_json::Value = decode_json(&headers, &body)?;
    let cadence = v
        .get("cadence")
        .and_then(|c| c.as_str())
        .and_then(Cadence::parse)
        .ok_or_else(|| ApiError::field("cadence", "must be \"daily\", \"weekly\" or \"manual\""))?;
    let keep = match v.get("keep") {
        None => backup::DEFAULT_KEEP,
        Some(k) => k.as_u64().filter(|k| *k <= 10_000).ok_or_else(|| {
            ApiError::field("keep", "must be a whole number 0..=10000 (0 keeps every backup)")
        })? as u32,
    };
    let s = Schedule { cadence, keep };
    store_schedule(&app, &who, s).await?;
    Ok(Json(s).into_response())
}

/// Save the schedule with its audit event (API and browser UI).
pub async fn store_schedule(app: &AppState, who: &Principal, s: Schedule) -> Result<(), ApiError> {
    let actor = who.actor();
    let Schedule { cadence, keep } = s;
    app.db
        .write(move |c| {
            backup::save_schedule(c, &s)?;
            audit::insert(
                c,
                &NewEvent::new(
                    "settings.updated",
                    actor,
                    format!("backup schedule: {cadence:?}, keep {keep}"),
                )
                .subject("settings", "backup")
                .details(json!(s)),
            )
        })
        .await?;
    Ok(())
}

/// Every `[tuning] backup_tick_seconds` (60 by default): if the schedule is
/// due — no backup newer than its period — make one and prune. The schedule
/// is re-read each tick, so a change applies without a restart.
pub async fn scheduler(app: AppState) {
    let tick = Duration::from_secs(app.config.tuning.backup_tick_seconds.max(1));
    loop {
        tokio::time::sleep(tick).await;
        let schedule = match app.db.read(backup::load_schedule).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the backup schedule");
                continue;
            }
        };
        let Some(period) = schedule.cadence.period_secs() else { continue };
        let dir = app.config.paths.backup_dir.clone();
        let newest = tokio::task::spawn_blocking(move || backup::list(&dir))
            .await
            .ok()
            .and_then(Result::ok)
            .and_then(|l| l.into_iter().next())
            .and_then(|b| clock::parse_dir_stamp(&b.name));
        if newest.is_some_and(|t| clock::unix_now() - t < period) {
            continue;
        }
        if run(&app, Actor::System).await.is_ok() {
            prune(&app, schedule.keep, Actor::System).await;
        }
    }
}
