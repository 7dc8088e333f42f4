//! `/workflows`: the CIJOE workflows machines are provisioned with.
//!
//! `PUT /workflows/{name}` takes either JSON `{"task": YAML, "config": TOML?}`
//! or the task YAML itself as the body (`curl -T task.yaml`, any content type
//! but JSON; a config kept from before is then left as it is).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::json;

use crate::accounts::Principal;
use crate::audit::{self, NewEvent};
use crate::error::{decode_json, is_json, ApiError};
use crate::state::{AppState, ClientIp};
use crate::workflows::{WorkflowError, WorkflowStore};

impl From<WorkflowError> for ApiError {
    fn from(e: WorkflowError) -> Self {
        match e {
            WorkflowError::Invalid { part, reason } => ApiError::field(part, reason),
            e @ WorkflowError::NotFound(_) => ApiError::not_found(format!("{e} (GET /workflows lists them)")),
            WorkflowError::Io(m) => ApiError::Internal(m),
        }
    }
}

pub fn store(app: &AppState) -> WorkflowStore {
    WorkflowStore::new(&app.config.paths.state_dir)
}

pub async fn list(State(app): State<AppState>) -> Result<Response, ApiError> {
    let s = store(&app);
    Ok(Json(tokio::task::spawn_blocking(move || s.list()).await.map_err(ApiError::internal)?).into_response())
}

pub async fn get(State(app): State<AppState>, Path(name): Path<String>) -> Result<Response, ApiError> {
    let s = store(&app);
    let w = tokio::task::spawn_blocking(move || s.get(&name)).await.map_err(ApiError::internal)??;
    Ok(Json(w).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutBody {
    task: String,
    #[serde(default)]
    config: Option<String>,
}

/// Store a workflow; whether it is new. Audited as `workflow.saved`.
pub async fn save(
    app: &AppState,
    who: &Principal,
    ip: ClientIp,
    name: String,
    task: String,
    config: Option<Option<String>>,
) -> Result<bool, ApiError> {
    let s = store(app);
    let n = name.clone();
    let created = tokio::task::spawn_blocking(move || {
        let _edit = crate::workflows::EDITS.lock().unwrap_or_else(|e| e.into_inner());
        // `None`: keep the config there is.
        let config = match config {
            Some(c) => c,
            None => s.get(&n).ok().and_then(|w| w.config),
        };
        s.put(&n, &task, config.as_deref())
    })
    .await
    .map_err(ApiError::internal)??;
    let event = NewEvent::new(
        "workflow.saved",
        who.actor(),
        format!("workflow {name} {}", if created { "added" } else { "replaced" }),
    )
    .subject("workflow", name)
    .ip(ip.string());
    app.db.write(move |db| audit::insert(db, &event)).await?;
    Ok(created)
}

pub async fn put(
    State(app): State<AppState>,
    Extension(who): Extension<Principal>,
    ip: ClientIp,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (task, config) = if is_json(&headers) {
        let b: PutBody = decode_json(&headers, &body)?;
        (b.task, Some(b.config))
    } else {
        let task =
            String::from_utf8(body.to_vec()).map_err(|_| ApiError::field("task", "is not UTF-8 text"))?;
        (task, None)
    };
    let created = save(&app, &who, ip, name.clone(), task, config).await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    let s = store(&app);
    let w = tokio::task::spawn_blocking(move || s.get(&name)).await.map_err(ApiError::internal)??;
    Ok((status, Json(w.info)).into_response())
}

/// Delete a workflow; refused while machines name it.
pub async fn remove(app: &AppState, who: &Principal, ip: ClientIp, name: String) -> Result<(), ApiError> {
    let n = name.clone();
    let users = app.db.read(move |c| crate::machines::using_workflow(c, &n, 5)).await?;
    if !users.is_empty() {
        return Err(ApiError::Conflict(format!(
            "machines use workflow {name} ({}); bind them to another first",
            users.join(", ")
        )));
    }
    let s = store(app);
    let n = name.clone();
    tokio::task::spawn_blocking(move || {
        let _edit = crate::workflows::EDITS.lock().unwrap_or_else(|e| e.into_inner());
        s.delete(&n)
    })
    .await
    .map_err(ApiError::internal)??;
    let event = NewEvent::new("workflow.deleted", who.actor(), format!("workflow {name} deleted"))
        .subject("workflow", name)
        .details(json!({}))
        .ip(ip.string());
    app.db.write(move |db| audit::insert(db, &event)).await?;
    Ok(())
}

pub async fn delete(
    State(app): State<AppState>,
    Extension(who): Extension<Principal>,
    ip: ClientIp,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    remove(&app, &who, ip, name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
