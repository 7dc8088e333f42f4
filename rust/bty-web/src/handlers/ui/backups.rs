//! `/ui/backups`: back up now, the backups on disk (download, delete), the
//! schedule (edited on the Settings page) and the backup history.

use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{Ctx, PageMeta, UiError};
use crate::audit::{self, EventQuery, NewEvent};
use crate::backup;
use crate::error::ApiError;
use crate::handlers::backups;

#[derive(Deserialize, Default)]
pub struct PageQuery {
    notice: Option<String>,
}

pub async fn page(ctx: Ctx, Query(q): Query<PageQuery>) -> Result<Response, UiError> {
    let dir = ctx.app.config.paths.backup_dir.clone();
    let list = tokio::task::spawn_blocking(move || backup::list(&dir))
        .await
        .map_err(|e| UiError(ApiError::internal(e)))?
        .map_err(|e| UiError(ApiError::internal(format!("{e:#}"))))?;
    let schedule = ctx.app.db.read(backup::load_schedule).await?;
    let history = ctx
        .app
        .db
        .read(|c| {
            audit::query(c, &EventQuery { kind: Some("backup.*".into()), limit: 20, ..Default::default() })
        })
        .await?;
    let rows: Vec<Value> = list
        .iter()
        .map(|b| {
            json!({
                "name": b.name,
                "created": ctx.time(Some(&b.created_at)),
                "size": bty_core::disks::human_size(b.bytes),
                "files": b.files,
            })
        })
        .collect();
    let data = json!({
        "backups": rows,
        "dir": ctx.app.config.paths.backup_dir.display().to_string(),
        "cadence": serde_json::to_value(schedule.cadence).unwrap_or(Value::Null),
        "keep": schedule.keep,
        "events": history.iter().map(|e| ctx.event_row(e)).collect::<Vec<_>>(),
    });
    ctx.page(
        StatusCode::OK,
        PageMeta { name: "backups", title: "Backups".into(), nav: "backups", notice: q.notice.as_deref() },
        data,
    )
}

/// "Back up now": the same run as `POST /backups`.
pub async fn create(ctx: Ctx) -> Result<Response, UiError> {
    backups::run(&ctx.app, ctx.who.actor()).await?;
    Ok(Redirect::to("/ui/backups?notice=backup-created").into_response())
}

pub async fn delete(ctx: Ctx, Path(name): Path<String>) -> Result<Response, UiError> {
    let dir = ctx.app.config.paths.backup_dir.clone();
    let n = name.clone();
    let gone = tokio::task::spawn_blocking(move || backup::remove(&dir, &n))
        .await
        .map_err(|e| UiError(ApiError::internal(e)))?
        .map_err(|e| UiError(ApiError::internal(format!("{e:#}"))))?;
    if !gone {
        return Err(UiError(ApiError::not_found(format!("no backup {name:?}"))));
    }
    let e = NewEvent::new("backup.deleted", ctx.who.actor(), format!("backup {name} deleted"))
        .subject("backup", name);
    audit::record(&ctx.app.db, e).await?;
    Ok(Redirect::to("/ui/backups?notice=backup-deleted").into_response())
}
