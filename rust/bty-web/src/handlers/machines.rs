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
use crate::accounts::Principal;
use crate::audit::{self, NewEvent};
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
    limit: Option<String>,
    after: Option<String>,
    include: Option<String>,
}

/// Machines per page of `GET /machines` unless `?limit=` says otherwise, and
/// the most it may say: one response stays a few megabytes at most (the
/// whole fleet with inventories once made one of 407 MB).
pub const DEFAULT_PAGE: usize = 100;
pub const MAX_PAGE: usize = 1000;

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

/// `GET /machines`: a JSON array of one page in MAC order; a `Link: <...>;
/// rel="next"` header points at the next page while there is one.
pub async fn list(State(app): State<AppState>, Query(q): Query<ListQuery>) -> Result<Response, ApiError> {
    let policy = match q.policy.as_deref().filter(|p| !p.is_empty()) {
        None => None,
        Some(p) => {
            Some(Policy::parse(p).ok_or_else(|| ApiError::field("policy", format!("unknown policy {p:?}")))?)
        }
    };
    let limit = match q.limit.as_deref().filter(|l| !l.is_empty()) {
        None => DEFAULT_PAGE,
        Some(l) => l.parse::<usize>().ok().filter(|n| (1..=MAX_PAGE).contains(n)).ok_or_else(|| {
            ApiError::field(
                "limit",
                format!("{l:?}: machines per page, 1 to {MAX_PAGE} (default {DEFAULT_PAGE})"),
            )
        })?,
    };
    let after = match q.after.as_deref().filter(|a| !a.is_empty()) {
        None => None,
        Some(a) => Some(a.parse::<MacAddr>().map_err(|e| {
            ApiError::field("after", format!("{e}; use the MAC of the last machine of the previous page"))
        })?),
    };
    let with_inventory = match q.include.as_deref().unwrap_or("") {
        "" => false,
        "inventory" => true,
        other => {
            return Err(ApiError::field(
                "include",
                format!("{other:?}: the one thing to include is `inventory`"),
            ))
        }
    };
    let filter = ListFilter { label: q.label.clone().filter(|l| !l.is_empty()), policy, q: q.q.clone() };
    let (rows, more) =
        app.db.read(move |c| machines::list_page(c, &filter, after, limit, with_inventory)).await?;
    let next = match rows.last() {
        Some(last) if more => Some(next_link(&q, limit, last.mac)),
        _ => None,
    };
    let mut views = Vec::with_capacity(rows.len());
    for m in rows {
        let mut v = serde_json::to_value(view(&app, m)).map_err(ApiError::internal)?;
        if !with_inventory {
            if let Some(o) = v.as_object_mut() {
                o.remove("inventory");
            }
        }
        views.push(v);
    }
    let mut resp = Json(views).into_response();
    if let Some(link) = next {
        let value = header::HeaderValue::from_str(&link).map_err(ApiError::internal)?;
        resp.headers_mut().insert(header::LINK, value);
    }
    Ok(resp)
}

/// The `Link` header of the page after the one ending at `last`, with the
/// same filters.
fn next_link(q: &ListQuery, limit: usize, last: MacAddr) -> String {
    let limit = limit.to_string();
    let after = last.to_string();
    let query = crate::views::query(&[
        ("label", q.label.as_deref().unwrap_or("")),
        ("policy", q.policy.as_deref().unwrap_or("")),
        ("q", q.q.as_deref().unwrap_or("")),
        ("include", q.include.as_deref().unwrap_or("")),
        ("limit", &limit),
        ("after", &after),
    ]);
    format!("</machines{query}>; rel=\"next\"")
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
    // A machine that will flash its image: fill the cache now, so its first
    // flash does not wait on the origin.
    let prefetch =
        matches!(input.policy, Policy::Flash | Policy::FlashOnce).then(|| input.image.clone()).flatten();
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
                        "workflow": input.workflow,
                        "ssh_host": input.ssh_host,
                        "ssh_port": input.ssh_port,
                        "ssh_user": input.ssh_user,
                        "labels": input.labels,
                        "state": m.state,
                    })),
            )?;
            Ok::<_, rusqlite::Error>((m, created))
        })
        .await?;
    app.machine_changed(mac);
    if let Some(image) = prefetch {
        crate::images::prefetch(app, &image);
    }
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
        // Its runs' records went with it (ON DELETE CASCADE); their files go too.
        let dir = crate::runs::machine_dir(&app.config.paths.state_dir, mac);
        if let Err(e) = tokio::fs::remove_dir_all(&dir).await {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(%mac, "cannot remove {}: {e}", dir.display());
            }
        }
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
    let input =
        MachineInput::from_json(&value, &app.catalog.get(), &crate::handlers::workflows::store(&app))?;
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
