//! `/ui/events`: the audit log with filters and acknowledgement.

use axum::extract::Query;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;
use serde_json::json;

use super::{local_target, query, Ctx, Fields, PageMeta, UiError};
use crate::audit::{self, EventQuery};
use crate::error::ApiError;

const PER_PAGE: u32 = 50;

#[derive(Deserialize, Default)]
pub struct EventsQuery {
    kind: Option<String>,
    subject: Option<String>,
    unacked: Option<String>,
    before: Option<i64>,
    notice: Option<String>,
}

pub async fn page(ctx: Ctx, Query(q): Query<EventsQuery>) -> Result<Response, UiError> {
    let kind = q.kind.unwrap_or_default().trim().to_string();
    let subject = q.subject.unwrap_or_default().trim().to_string();
    let unacked = matches!(q.unacked.as_deref(), Some("1" | "true" | "on"));
    // MACs match in any spelling, as in GET /events.
    let subject_id = audit::subject_filter(&subject);
    let eq = EventQuery {
        kind: Some(kind.clone()).filter(|k| !k.is_empty()),
        subject: subject_id,
        unacked_only: unacked,
        before_id: q.before,
        limit: PER_PAGE,
    };
    let (events, kinds, matching_unacked) = ctx
        .app
        .db
        .read(move |c| {
            let unacked = audit::count_unacked_matching(c, &eq)?;
            Ok::<_, rusqlite::Error>((audit::query(c, &eq)?, audit::kinds(c)?, unacked))
        })
        .await?;
    let unacked_s = if unacked { "1" } else { "" };
    let here = |before: Option<i64>| {
        let b = before.map(|b| b.to_string()).unwrap_or_default();
        format!(
            "/ui/events{}",
            query(&[("kind", &kind), ("subject", &subject), ("unacked", unacked_s), ("before", &b)])
        )
    };
    let older = (events.len() as u32 == PER_PAGE).then(|| here(events.last().map(|e| e.id)));
    let data = json!({
        "kind": kind,
        "subject": subject,
        "unacked": unacked,
        "kinds": kinds,
        "back": here(q.before),
        "any_unacked": events.iter().any(|e| !e.acknowledged),
        "events": events.iter().map(|e| ctx.event_row(e)).collect::<Vec<_>>(),
        "older": older,
        "matching_unacked": matching_unacked,
    });
    let meta =
        PageMeta { name: "events", title: "Events".into(), nav: "events", notice: q.notice.as_deref() };
    ctx.page(StatusCode::OK, meta, data)
}

/// `POST /ui/events/ack`: one event (`only`, a row's button), every
/// checked `id` (the bulk button), or every unacknowledged event matching
/// the filter (`all_matching` with `kind` and `subject`); back to the page
/// the form was on.
pub async fn ack(ctx: Ctx, Form(f): Form<Vec<(String, String)>>) -> Result<Response, UiError> {
    let f = Fields(f);
    let back = local_target(f.get("back")).unwrap_or("/ui/events").to_string();
    let sep = if back.contains('?') { '&' } else { '?' };
    if !f.get("all_matching").is_empty() {
        let q = EventQuery {
            kind: Some(f.get("kind").trim().to_string()).filter(|k| !k.is_empty()),
            subject: audit::subject_filter(f.get("subject")),
            unacked_only: true,
            before_id: None,
            limit: 0,
        };
        ctx.app.db.write(move |c| audit::acknowledge_matching(c, &q)).await?;
        return Ok(Redirect::to(&format!("{back}{sep}notice=acked")).into_response());
    }
    let picked = if f.get("only").is_empty() { f.all("id") } else { vec![f.get("only")] };
    let ids: Vec<i64> = picked
        .iter()
        .map(|s| s.parse().map_err(|_| ApiError::BadRequest(format!("{s:?} is not an event id"))))
        .collect::<Result<_, _>>()?;
    ctx.app.db.write(move |c| audit::acknowledge_many(c, &ids)).await?;
    Ok(Redirect::to(&format!("{back}{sep}notice=acked")).into_response())
}
