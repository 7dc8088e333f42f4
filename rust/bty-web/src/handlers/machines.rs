//! `/machines`: the operator's view and bindings.

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::json;

use bty_core::mac::MacAddr;

use super::{AnyMacParam, MacParam};
use crate::audit::{self, NewEvent};
use crate::auth::Principal;
use crate::error::{decode_json, ApiError};
use crate::machines::{self, ListFilter, Machine, MachineInput};
use crate::policy::Policy;
use crate::pxe;
use crate::state::{AppState, ClientIp};

#[derive(Deserialize)]
pub struct ListQuery {
    label: Option<String>,
    policy: Option<String>,
    q: Option<String>,
}

/// A machine plus what its next PXE boot would get (for the UI).
#[derive(serde::Serialize)]
struct MachineView {
    #[serde(flatten)]
    machine: Machine,
    next_boot: &'static str,
}

fn view(app: &AppState, machine: Machine) -> MachineView {
    let next_boot = pxe::preview(&machine, &app.catalog.get()).as_str();
    MachineView { machine, next_boot }
}

pub async fn list(State(app): State<AppState>, Query(q): Query<ListQuery>) -> Result<Response, ApiError> {
    let policy = match q.policy.as_deref().filter(|p| !p.is_empty()) {
        None => None,
        Some(p) => {
            Some(Policy::parse(p).ok_or_else(|| ApiError::field("policy", format!("unknown policy {p:?}")))?)
        }
    };
    let filter = ListFilter { label: q.label.filter(|l| !l.is_empty()), policy, q: q.q };
    let rows = app.db.read(move |c| machines::list(c, &filter)).await?;
    let views: Vec<MachineView> = rows.into_iter().map(|m| view(&app, m)).collect();
    Ok(Json(views).into_response())
}

pub async fn show(State(app): State<AppState>, AnyMacParam(mac): AnyMacParam) -> Result<Response, ApiError> {
    match app.db.read(move |c| machines::get(c, mac)).await? {
        Some(m) => Ok(Json(view(&app, m)).into_response()),
        None => Err(ApiError::not_found(format!("no machine {mac}"))),
    }
}

/// Store a validated binding with its audit event and tell live views: the
/// one save path for the API and the browser UI.
pub async fn save(
    app: &AppState,
    who: &Principal,
    ip: ClientIp,
    mac: MacAddr,
    input: MachineInput,
) -> Result<(Machine, bool), ApiError> {
    let actor = who.actor();
    let saved = app
        .db
        .write(move |c| {
            let (m, created) = machines::put(c, mac, &input)?;
            let kind = if created { "machine.created" } else { "machine.updated" };
            audit::insert(
                c,
                &NewEvent::new(kind, actor, format!("{mac}: policy {}", input.policy))
                    .machine(mac)
                    .ip(ip.string())
                    .details(json!({
                        "policy": input.policy.as_str(),
                        "image": input.image,
                        "target_disk_serial": input.target_disk_serial,
                        "sanboot_drive": input.sanboot_drive,
                        "provisioning_mode": input.provisioning_mode,
                        "labels": input.labels,
                        "state": m.state,
                    })),
            )?;
            Ok::<_, rusqlite::Error>((m, created))
        })
        .await?;
    app.machine_changed(mac);
    Ok(saved)
}

/// Delete a machine with its audit event; `false` if there was none.
pub async fn delete_one(
    app: &AppState,
    who: &Principal,
    ip: ClientIp,
    mac: MacAddr,
) -> Result<bool, ApiError> {
    let actor = who.actor();
    let deleted = app
        .db
        .write(move |c| {
            let deleted = machines::delete(c, mac)?;
            if deleted {
                audit::insert(
                    c,
                    &NewEvent::new("machine.deleted", actor, format!("{mac} deleted"))
                        .machine(mac)
                        .ip(ip.string()),
                )?;
            }
            Ok::<_, rusqlite::Error>(deleted)
        })
        .await?;
    if deleted {
        app.machine_changed(mac);
    }
    Ok(deleted)
}

/// Full replace of the operator fields; creates the record if needed and
/// re-arms flash/inventory policies.
pub async fn replace(
    State(app): State<AppState>,
    Extension(who): Extension<Principal>,
    ip: ClientIp,
    MacParam(mac): MacParam,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let value: serde_json::Value = decode_json(&headers, &body)?;
    let input = MachineInput::from_json(&value, &app.catalog.get())?;
    let (m, created) = save(&app, &who, ip, mac, input).await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(view(&app, m))).into_response())
}

pub async fn remove(
    State(app): State<AppState>,
    Extension(who): Extension<Principal>,
    ip: ClientIp,
    AnyMacParam(mac): AnyMacParam,
) -> Result<StatusCode, ApiError> {
    if delete_one(&app, &who, ip, mac).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no machine {mac}")))
    }
}

pub async fn lshw(State(app): State<AppState>, AnyMacParam(mac): AnyMacParam) -> Result<Response, ApiError> {
    match app.db.read(move |c| machines::lshw(c, mac)).await? {
        Some(doc) => Ok((
            [
                (header::CONTENT_TYPE, "application/json".to_string()),
                (
                    header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"{}-lshw.json\"", mac.hyphenated()),
                ),
            ],
            doc,
        )
            .into_response()),
        None => {
            Err(ApiError::not_found(format!("no lshw data for {mac} (it arrives with an inventory report)")))
        }
    }
}

/// Flash attempts, newest first (at most 100).
pub async fn flashes(
    State(app): State<AppState>,
    AnyMacParam(mac): AnyMacParam,
) -> Result<Response, ApiError> {
    let found = app
        .db
        .read(move |c| match machines::get(c, mac)? {
            Some(_) => machines::flashes(c, mac, 100).map(Some),
            None => Ok(None),
        })
        .await?;
    match found {
        Some(rows) => Ok(Json(rows).into_response()),
        None => Err(ApiError::not_found(format!("no machine {mac}"))),
    }
}
