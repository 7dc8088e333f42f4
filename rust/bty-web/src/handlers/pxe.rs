//! Routes machines use without logging in: iPXE scripts, the agent's plan
//! and its reports.

use std::sync::atomic::Ordering;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bty_core::wire::{FlashStatus, InventoryReport, StatusReport};

use super::MacParam;
use crate::error::{decode_json, ApiError, ApiJson};
use crate::ipxe::ScriptInput;
use crate::pxe::{self, ReportOutcome, OFFER_TOKEN_HEADER};
use crate::state::{AppState, ClientIp};

fn ipxe(script: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8"), (header::CACHE_CONTROL, "no-store")], script)
        .into_response()
}

pub async fn bootstrap(State(app): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let base = app.base_url(&headers)?;
    Ok(ipxe(app.ipxe.bootstrap(&base)))
}

pub async fn script(
    State(app): State<AppState>,
    ip: ClientIp,
    headers: HeaderMap,
    MacParam(mac): MacParam,
) -> Result<Response, ApiError> {
    let base = app.base_url(&headers)?;
    let catalog = app.catalog.get();
    let minted = pxe::MintedToken::new();
    let contact = app.db.write(move |c| pxe::contact(c, mac, ip.string().as_deref(), &catalog, minted)).await;
    let mac_s = mac.to_string();
    let c = match contact {
        Ok(c) => c,
        Err(e) => {
            // Firmware cannot read a JSON error; give it a script that says
            // what happened and tries again, never a local boot.
            tracing::error!(%mac, error = %e, "PXE decision failed");
            return Ok(ipxe(app.ipxe.unavailable(&base, &mac_s, "database error (see the server log)")));
        }
    };
    app.machine_changed(mac);
    if c.discovered {
        app.metrics.discovered.fetch_add(1, Ordering::Relaxed);
    }
    let policy = c.machine.policy();
    app.metrics.offer(policy.as_str(), c.decision.offer.as_str());
    Ok(ipxe(app.ipxe.pxe(&ScriptInput {
        base: &base,
        mac: &mac_s,
        policy,
        offer: c.decision.offer,
        reason: c.decision.reason,
        sanboot_drive: c.machine.sanboot_drive.as_deref(),
        token: c.token.as_deref(),
    })))
}

/// `HEAD /pxe/{mac}` and `HEAD /pxe/{mac}/plan`: what a GET would answer
/// with, minus the body and every side effect (no record, no offer, no
/// token, no event). Link checkers and monitors probe with HEAD.
pub async fn head_script(MacParam(_mac): MacParam) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8"), (header::CACHE_CONTROL, "no-store")])
        .into_response()
}

pub async fn head_plan(MacParam(_mac): MacParam) -> Response {
    ([(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "no-store")]).into_response()
}

pub async fn plan(
    State(app): State<AppState>,
    ip: ClientIp,
    headers: HeaderMap,
    MacParam(mac): MacParam,
) -> Result<Response, ApiError> {
    let base = app.base_url(&headers)?;
    let catalog = app.catalog.get();
    let cat = catalog.clone();
    let d = app.db.write(move |c| pxe::plan(c, mac, ip.string().as_deref(), &cat)).await?;
    app.machine_changed(mac);
    Ok(Json(pxe::build_plan(&d, &base, &catalog)).into_response())
}

/// The offer token a report carries, if any.
pub fn offer_token(headers: &HeaderMap) -> Option<String> {
    headers.get(OFFER_TOKEN_HEADER).and_then(|v| v.to_str().ok()).map(|t| t.trim().to_string())
}

fn answer(app: &AppState, mac: bty_core::mac::MacAddr, outcome: ReportOutcome) -> Result<(), ApiError> {
    match outcome {
        ReportOutcome::Accepted => {
            app.machine_changed(mac);
            Ok(())
        }
        ReportOutcome::Refused(why) => {
            app.metrics.reports_refused.fetch_add(1, Ordering::Relaxed);
            Err(ApiError::Forbidden(why))
        }
    }
}

async fn report(
    app: &AppState,
    ip: ClientIp,
    mac: bty_core::mac::MacAddr,
    token: Option<String>,
    r: StatusReport,
) -> Result<StatusCode, ApiError> {
    if let Err((field, reason)) = r.validate() {
        return Err(ApiError::field(field, reason));
    }
    let status = r.status;
    let outcome =
        app.db.write(move |c| pxe::status(c, mac, ip.string().as_deref(), token.as_deref(), &r)).await?;
    answer(app, mac, outcome)?;
    if status == FlashStatus::Done {
        // A cijoe-online machine is provisioned once its new system is up.
        let m = app.db.read(move |c| bty_control::machines::get(c, mac)).await?;
        if m.is_some_and(|m| m.provisioning_mode == "cijoe-online" && m.workflow.is_some()) {
            if let Err(e) = app.online.start(mac, bty_control::audit::Actor::System, "after the flash").await
            {
                tracing::warn!(%mac, "cannot queue the online run: {e}");
            }
        }
    }
    match status {
        FlashStatus::Done => app.metrics.flashes_done.fetch_add(1, Ordering::Relaxed),
        FlashStatus::Failed => app.metrics.flashes_failed.fetch_add(1, Ordering::Relaxed),
    };
    Ok(StatusCode::NO_CONTENT)
}

/// `done` with no body, or a status report whose status is `done`.
pub async fn done(
    State(app): State<AppState>,
    ip: ClientIp,
    MacParam(mac): MacParam,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let r = if body.iter().all(u8::is_ascii_whitespace) {
        StatusReport { status: FlashStatus::Done, reason: None, duration_s: None, bytes_written: None }
    } else {
        let r: StatusReport = decode_json(&headers, &body)?;
        if r.status != FlashStatus::Done {
            return Err(ApiError::field(
                "status",
                "POST /pxe/{mac}/done only reports success; use /status for failures",
            ));
        }
        r
    };
    report(&app, ip, mac, offer_token(&headers), r).await
}

pub async fn status(
    State(app): State<AppState>,
    ip: ClientIp,
    MacParam(mac): MacParam,
    headers: HeaderMap,
    ApiJson(r): ApiJson<StatusReport>,
) -> Result<StatusCode, ApiError> {
    report(&app, ip, mac, offer_token(&headers), r).await
}

/// Inventories are bounded by `[limits] max_inventory_bytes` (the route's
/// body limit in `routes`), before the body is parsed.
pub async fn inventory(
    State(app): State<AppState>,
    ip: ClientIp,
    MacParam(mac): MacParam,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let r: InventoryReport = decode_json(&headers, &body)?;
    if let Err((field, reason)) = r.validate() {
        return Err(ApiError::field(field, reason));
    }
    let token = offer_token(&headers);
    let outcome =
        app.db.write(move |c| pxe::inventory(c, mac, ip.string().as_deref(), token.as_deref(), &r)).await?;
    answer(&app, mac, outcome)?;
    app.metrics.inventories.fetch_add(1, Ordering::Relaxed);
    Ok(StatusCode::NO_CONTENT)
}
