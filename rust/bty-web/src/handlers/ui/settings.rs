//! `/ui/settings`: runtime settings (edited) and the startup configuration
//! with each key's source (read-only).

use axum::extract::Query;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{field_errors, Ctx, Fields, PageMeta, UiError};
use crate::audit::{self, NewEvent};
use crate::backup::{self, Cadence, Schedule};
use crate::handlers::backups::store_schedule;
use crate::settings;
use crate::state::ClientIp;

#[derive(Deserialize, Default)]
pub struct SettingsQuery {
    notice: Option<String>,
}

struct Values {
    zone: String,
    cadence: String,
    keep: String,
}

async fn settings_page(
    ctx: &Ctx,
    status: StatusCode,
    notice: Option<&str>,
    submitted: Option<Values>,
    errors: Value,
) -> Result<Response, UiError> {
    let schedule = ctx.app.db.read(backup::load_schedule).await?;
    let v = submitted.unwrap_or_else(|| Values {
        zone: ctx.zone.label(),
        cadence: cadence_name(schedule.cadence).into(),
        keep: schedule.keep.to_string(),
    });
    let cadences: Vec<Value> = ["manual", "daily", "weekly"]
        .iter()
        .map(|c| json!({"value": c, "text": c, "selected": *c == v.cadence}))
        .collect();
    let config: Vec<Value> = ctx
        .app
        .config
        .shown()
        .into_iter()
        .map(|k| {
            let value = match k.value {
                None | Some(Value::Null) => "(unset)".to_string(),
                Some(Value::String(s)) => s,
                Some(other) => other.to_string(),
            };
            json!({"key": k.key, "value": value, "source": k.source, "help": k.help})
        })
        .collect();
    let services: Vec<Value> = ctx
        .app
        .boot_services
        .health()
        .into_iter()
        .map(|h| {
            let on = h.state != crate::health::ServiceState::Off;
            json!({"name": h.name, "field": h.field, "on": on, "state": h.state, "detail": h.detail,
                   "failed": h.state == crate::health::ServiceState::Failed})
        })
        .collect();
    let catalog = &ctx.app.catalog;
    let remote = catalog.remote_status();
    let catalog = json!({
        "location": catalog.location(),
        "remote": catalog.is_remote(),
        "images": catalog.get().images.len(),
        "error": catalog.last_error(),
        "etag": remote.etag,
        "fetched_at": remote.fetched_at.as_deref().map(|t| ctx.zone.format(t)),
        "checked_at": remote.checked_at.as_deref().map(|t| ctx.zone.format(t)),
        "from_copy": remote.from_copy,
        "refresh_minutes": ctx.app.config.paths.catalog_refresh.map(|d| d.as_secs().div_ceil(60)),
    });
    let data = json!({
        "catalog": catalog,
        "services": services,
        "form": {"display_timezone": v.zone, "cadences": cadences, "backup_keep": v.keep},
        "errors": errors,
        "config": config,
        "config_file": ctx.app.config.file.as_ref().map(|p| p.display().to_string()),
    });
    ctx.page(status, PageMeta { name: "settings", title: "Settings".into(), nav: "settings", notice }, data)
}

fn cadence_name(c: Cadence) -> &'static str {
    match c {
        Cadence::Manual => "manual",
        Cadence::Daily => "daily",
        Cadence::Weekly => "weekly",
    }
}

pub async fn page(ctx: Ctx, Query(q): Query<SettingsQuery>) -> Result<Response, UiError> {
    settings_page(&ctx, StatusCode::OK, q.notice.as_deref(), None, json!({})).await
}

pub async fn save(ctx: Ctx, ip: ClientIp, Form(f): Form<Vec<(String, String)>>) -> Result<Response, UiError> {
    let f = Fields(f);
    let v = Values {
        zone: f.get("display_timezone").to_string(),
        cadence: f.get("backup_cadence").to_string(),
        keep: f.get("backup_keep").trim().to_string(),
    };
    let zone = settings::validate_zone(&v.zone).map_err(|e| (e.field, e.reason));
    let cadence = Cadence::parse(&v.cadence)
        .ok_or_else(|| ("backup_cadence".to_string(), "choose manual, daily or weekly".to_string()));
    let keep = v.keep.parse::<u32>().ok().filter(|k| *k <= 10_000).ok_or_else(|| {
        ("backup_keep".to_string(), "a whole number 0..=10000 (0 keeps every backup)".to_string())
    });
    let (zone, cadence, keep) = match (zone, cadence, keep) {
        (Ok(z), Ok(c), Ok(k)) => (z, c, k),
        (Err((field, reason)), _, _) | (_, Err((field, reason)), _) | (_, _, Err((field, reason))) => {
            let errors = field_errors(&field, &reason);
            return settings_page(&ctx, StatusCode::UNPROCESSABLE_ENTITY, None, Some(v), errors).await;
        }
    };
    if zone != ctx.zone {
        let actor = ctx.who.actor();
        ctx.app
            .db
            .write(move |c| {
                settings::set_display_zone(c, zone)?;
                audit::insert(
                    c,
                    &NewEvent::new("settings.updated", actor, format!("display time zone: {}", zone.label()))
                        .subject("settings", "display")
                        .ip(ip.string())
                        .details(json!({"display_timezone": zone.label()})),
                )
            })
            .await?;
    }
    let schedule = Schedule { cadence, keep };
    if ctx.app.db.read(backup::load_schedule).await? != schedule {
        store_schedule(&ctx.app, &ctx.who, schedule).await?;
    }
    Ok(Redirect::to("/ui/settings?notice=settings").into_response())
}

/// `POST /ui/settings/services`: `service=tftp|proxy_dhcp`, `enabled=on|off`.
pub async fn switch_service(
    ctx: Ctx,
    ip: ClientIp,
    Form(f): Form<Vec<(String, String)>>,
) -> Result<Response, UiError> {
    let f = Fields(f);
    let service = crate::handlers::netboot::service_named(f.get("service"))?;
    let on = match f.get("enabled") {
        "on" => true,
        "off" => false,
        _ => return Err(UiError(crate::error::ApiError::field("enabled", "must be on or off"))),
    };
    crate::handlers::netboot::switch_service(&ctx.app, &ctx.who, ip.string(), service, on).await?;
    Ok(Redirect::to("/ui/settings?notice=services").into_response())
}

/// "Fetch latest catalog": the same reload as the Images page and
/// `POST /catalog/reload`, back to Settings with the outcome.
pub async fn fetch_catalog(ctx: Ctx, ip: ClientIp) -> Result<Response, UiError> {
    let code = match crate::handlers::files::reload_catalog(&ctx.app, &ctx.who, ip).await? {
        Ok(_) => "catalog-fetched",
        Err(_) => "catalog-failed",
    };
    Ok(Redirect::to(&format!("/ui/settings?notice={code}")).into_response())
}
