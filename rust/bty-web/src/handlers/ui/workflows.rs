//! `/ui/workflows`: the CIJOE workflows, each viewable in full; add or
//! replace one (checked as `PUT /workflows/{name}` checks it, the reason
//! shown next to the field), delete one no machine uses.

use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{field_errors, Ctx, Fields, PageMeta, UiError};
use crate::error::ApiError;
use crate::handlers::workflows;
use crate::state::ClientIp;

#[derive(Deserialize, Default)]
pub struct PageQuery {
    notice: Option<String>,
}

pub async fn page(ctx: Ctx, Query(q): Query<PageQuery>) -> Result<Response, UiError> {
    render(&ctx, StatusCode::OK, q.notice.as_deref(), json!({}), json!({})).await
}

async fn render(
    ctx: &Ctx,
    status: StatusCode,
    notice: Option<&str>,
    form: Value,
    errors: Value,
) -> Result<Response, UiError> {
    let store = workflows::store(&ctx.app);
    let dir = store.dir().display().to_string();
    let all =
        tokio::task::spawn_blocking(move || store.all()).await.map_err(|e| UiError(ApiError::internal(e)))?;
    let rows: Vec<Value> = all
        .iter()
        .map(|w| {
            json!({
                "name": w.info.name,
                "doc": w.info.doc,
                "steps": w.info.steps,
                "updated": ctx.time(w.info.updated_at.as_deref()),
                "task": w.task,
                "config": w.config,
            })
        })
        .collect();
    let id = ctx.app.online.identity();
    let data = json!({"workflows": rows, "dir": dir, "form": form, "errors": errors,
                      "ssh": {"public": id.public, "fingerprint": id.fingerprint}});
    ctx.page(
        status,
        PageMeta { name: "workflows", title: "Workflows".into(), nav: "workflows", notice },
        data,
    )
}

/// `POST /ui/workflows`: add or replace a workflow.
pub async fn save(ctx: Ctx, ip: ClientIp, Form(f): Form<Vec<(String, String)>>) -> Result<Response, UiError> {
    let f = Fields(f);
    let (name, task, config) = (
        f.get("name").trim().to_string(),
        f.get("task").replace("\r\n", "\n"),
        f.get("config").replace("\r\n", "\n"),
    );
    let config = (!config.trim().is_empty()).then_some(config);
    match workflows::save(&ctx.app, &ctx.who, ip, name.clone(), task.clone(), Some(config.clone())).await {
        Ok(_) => Ok(Redirect::to("/ui/workflows?notice=workflow-saved").into_response()),
        Err(ApiError::Unprocessable { field, reason }) => {
            let form = json!({"name": name, "task": task, "config": config});
            render(&ctx, StatusCode::UNPROCESSABLE_ENTITY, None, form, field_errors(&field, &reason)).await
        }
        Err(e) => Err(e.into()),
    }
}

/// `POST /ui/workflows/{name}/delete`.
pub async fn delete(ctx: Ctx, ip: ClientIp, Path(name): Path<String>) -> Result<Response, UiError> {
    workflows::remove(&ctx.app, &ctx.who, ip, name).await?;
    Ok(Redirect::to("/ui/workflows?notice=workflow-deleted").into_response())
}
