//! `/ui/`: the fleet by policy and state, the health checklist, tripwires
//! and recent activity.

use std::sync::atomic::Ordering;

use axum::extract::Query;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{Ctx, PageMeta, UiError};
use crate::audit::{self, EventQuery};
use crate::policy::{self, BootState, Policy};
use crate::{health, machines};

#[derive(Deserialize, Default)]
pub struct DashQuery {
    notice: Option<String>,
}

pub async fn page(ctx: Ctx, Query(q): Query<DashQuery>) -> Result<Response, UiError> {
    let (fleet, tripwires, recent, unacked) = ctx
        .app
        .db
        .read(|c| {
            let fleet = machines::count_by_policy_state(c)?;
            let trip = audit::query(c, &EventQuery { unacked_only: true, limit: 10, ..Default::default() })?;
            let recent = audit::query(c, &EventQuery { limit: 15, ..Default::default() })?;
            Ok::<_, rusqlite::Error>((fleet, trip, recent, audit::unacknowledged_count(c)?))
        })
        .await?;
    let total: i64 = fleet.iter().map(|(_, _, n)| n).sum();
    let fleet: Vec<Value> = fleet
        .iter()
        .map(|(p, s, n)| {
            let words = match Policy::parse(p) {
                Some(policy) => policy::describe(policy, BootState::parse_or_pending(s)),
                None => "unknown policy",
            };
            json!({"policy": p, "state": s, "words": words, "count": n})
        })
        .collect();
    let checks = health::checklist(
        &ctx.app.config,
        &ctx.app.catalog,
        ctx.app.default_password.load(Ordering::Relaxed),
        &ctx.app.boot_services.health(),
    );
    let data = json!({
        "total": total,
        "fleet": fleet,
        "checks": checks,
        "tripwires": tripwires.iter().map(|e| ctx.event_row(e)).collect::<Vec<_>>(),
        "unacked": unacked,
        "recent": recent.iter().map(|e| ctx.event_row(e)).collect::<Vec<_>>(),
    });
    let meta = PageMeta {
        name: "dashboard",
        title: "Dashboard".into(),
        nav: "dashboard",
        notice: q.notice.as_deref(),
    };
    ctx.page(StatusCode::OK, meta, data)
}
