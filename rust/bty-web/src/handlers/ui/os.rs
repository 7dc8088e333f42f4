//! `/ui/os`: the appliance's slots, versions and boot counters, a failed
//! update's tripwire, the latest release, and download / apply buttons (the
//! same jobs as `POST /os/download` and `POST /os/apply`).

use axum::extract::{Form, Query};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use serde_json::json;

use super::{Ctx, PageMeta, UiError};
use crate::error::ApiError;
use crate::handlers::os::{self, JobBody};

#[derive(Deserialize, Default)]
pub struct PageQuery {
    notice: Option<String>,
    /// Show the latest release (fetched and verified on request only).
    check: Option<String>,
}

pub async fn page(ctx: Ctx, Query(q): Query<PageQuery>) -> Result<Response, UiError> {
    let mut data = os::status_value(&ctx.app).await?;
    if let Some(kind) = q.check.as_deref() {
        let kind =
            bty_core::osupdate::ReleaseType::parse(kind).unwrap_or(bty_core::osupdate::ReleaseType::Os);
        data["latest"] = match os::release_manifest(&ctx.app, kind, None).await {
            Ok(v) => v,
            Err(ApiError::Conflict(m)) => json!({"error": m}),
            Err(e) => return Err(UiError(e)),
        };
    }
    let running = data["job"]["state"] == "running";
    data["running"] = json!(running);
    let status = StatusCode::OK;
    ctx.page(
        status,
        PageMeta { name: "os", title: "Appliance".into(), nav: "os", notice: q.notice.as_deref() },
        data,
    )
}

#[derive(Deserialize)]
pub struct JobForm {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    force: Option<String>,
}

async fn start(ctx: Ctx, action: &'static str, f: JobForm) -> Result<Response, UiError> {
    let body = JobBody {
        kind: f.kind,
        version: f.version.map(|v| v.trim().to_string()).filter(|v| !v.is_empty()),
        force: f.force.is_some(),
    };
    os::start(&ctx.app, &ctx.who, action, body).map_err(UiError)?;
    Ok(Redirect::to(&format!("/ui/os?notice=os-{action}")).into_response())
}

pub async fn download(ctx: Ctx, Form(f): Form<JobForm>) -> Result<Response, UiError> {
    start(ctx, "download", f).await
}

pub async fn apply(ctx: Ctx, Form(f): Form<JobForm>) -> Result<Response, UiError> {
    start(ctx, "apply", f).await
}
