//! `/events`: the audit log and its tripwires.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;

use crate::audit::{self, EventQuery};
use crate::error::{ApiError, ApiJson};
use crate::state::AppState;

pub const DEFAULT_LIMIT: u32 = 50;
pub const MAX_LIMIT: u32 = 1000;

#[derive(Deserialize)]
pub struct ListQuery {
    kind: Option<String>,
    /// A subject id; MACs are matched in any spelling.
    subject: Option<String>,
    unacked: Option<String>,
    limit: Option<u32>,
    before_id: Option<i64>,
}

#[derive(serde::Serialize)]
pub struct EventPage {
    events: Vec<audit::Event>,
    /// Pass as `before_id` for the next (older) page; absent on the last page.
    next_before_id: Option<i64>,
}

pub async fn list(
    State(app): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<EventPage>, ApiError> {
    let unacked_only = match q.unacked.as_deref() {
        None | Some("") | Some("0") | Some("false") => false,
        Some("1") | Some("true") => true,
        Some(other) => return Err(ApiError::field("unacked", format!("{other:?}: use 1 or 0"))),
    };
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(ApiError::field("limit", format!("must be 1..={MAX_LIMIT}")));
    }
    let subject = q.subject.as_deref().and_then(audit::subject_filter);
    let query = EventQuery {
        kind: q.kind.filter(|k| !k.is_empty()),
        subject,
        unacked_only,
        before_id: q.before_id,
        limit,
    };
    let events = app.db.read(move |c| audit::query(c, &query)).await?;
    let next_before_id = if events.len() as u32 == limit { events.last().map(|e| e.id) } else { None };
    Ok(Json(EventPage { events, next_before_id }))
}

pub async fn ack(State(app): State<AppState>, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    let id: i64 = id.parse().map_err(|_| ApiError::BadRequest(format!("{id:?} is not an event id")))?;
    if app.db.write(move |c| audit::acknowledge(c, id)).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no event {id}")))
    }
}

/// `POST /events/ack`: acknowledge every unacknowledged event matching the
/// filter (`kind`, exact or a `prefix.*`; `subject`); an empty filter
/// acknowledges them all.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AckFilter {
    kind: Option<String>,
    subject: Option<String>,
}

pub async fn ack_matching(
    State(app): State<AppState>,
    ApiJson(f): ApiJson<AckFilter>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let query = EventQuery {
        kind: f.kind.filter(|k| !k.is_empty()),
        subject: f.subject.as_deref().and_then(audit::subject_filter),
        unacked_only: true,
        before_id: None,
        limit: 0,
    };
    let n = app.db.write(move |c| audit::acknowledge_matching(c, &query)).await?;
    Ok(Json(serde_json::json!({ "acknowledged": n })))
}
