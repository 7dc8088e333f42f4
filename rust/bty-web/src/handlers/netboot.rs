//! `/netboot`: which boot artifacts are present, which release they are,
//! fetching a release (progress, cancel), and the network boot services'
//! switches (`/netboot/services`).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::json;

use crate::accounts::Principal;
use crate::audit::{self, NewEvent};
use crate::boot_services;
use crate::error::{decode_json, ApiError};
use crate::health::ServiceHealth;
use crate::netboot;
use crate::settings::{self, Service};
use crate::state::AppState;
use crate::state::ClientIp;

/// Present files, the installed release, and whether it is this server's.
pub async fn status(State(app): State<AppState>) -> Result<Response, ApiError> {
    let boot = app.config.paths.boot_dir.clone();
    let b = app.config.boot.clone();
    let wanted: Vec<String> =
        [Some(b.kernel.clone()), Some(b.initrd.clone()), b.squashfs.clone()].into_iter().flatten().collect();
    let (installed, files) = tokio::task::spawn_blocking(move || {
        let installed = netboot::installed(&boot);
        let mut names: Vec<String> = wanted.clone();
        if let Some(i) = &installed {
            names.extend(i.files.iter().map(|f| f.name.clone()).filter(|n| !wanted.contains(n)));
        }
        let files: Vec<serde_json::Value> = names
            .iter()
            .map(|n| {
                let meta = std::fs::metadata(boot.join(n)).ok().filter(|m| m.is_file());
                json!({
                    "name": n,
                    "present": meta.is_some(),
                    "size_bytes": meta.map(|m| m.len()),
                    "required": wanted.contains(n),
                    "sha256": installed.as_ref().and_then(|i| i.files.iter().find(|f| &f.name == n)).map(|f| f.sha256.clone()),
                })
            })
            .collect();
        (installed, files)
    })
    .await
    .map_err(ApiError::internal)?;
    let expected_tag = app.config.netboot.tag.clone();
    Ok(Json(json!({
        "files": files,
        "installed": installed,
        "expected_tag": expected_tag,
        "matches_version": installed.as_ref().map(|i| i.tag == expected_tag),
        "release_base_url": app.config.netboot.release_base_url,
        "fetch": app.netboot.status(),
    }))
    .into_response())
}

/// Start fetching a release in the background (defaults from `[netboot]`):
/// the one start path for the API and the browser UI. Field errors name
/// `base_url`; a running fetch is a conflict.
pub fn start_fetch(
    app: &AppState,
    who: &Principal,
    base_url: Option<String>,
    tag: Option<String>,
) -> Result<netboot::FetchStatus, ApiError> {
    let base = match base_url.filter(|b| !b.trim().is_empty()) {
        Some(b) => b.trim().to_string(),
        None => app.config.netboot.release_base_url.clone().ok_or_else(|| {
            ApiError::field("base_url", "no release URL given and [netboot] release_base_url is not set")
        })?,
    };
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        return Err(ApiError::field("base_url", "must be an http(s):// URL"));
    }
    let tag =
        tag.map(|t| t.trim().to_string()).filter(|t| !t.is_empty()).unwrap_or(app.config.netboot.tag.clone());
    if !app.netboot.begin(&tag) {
        return Err(ApiError::Conflict(
            "a netboot fetch is already running (DELETE /netboot/fetch cancels it)".into(),
        ));
    }
    let actor = who.actor();
    let a = app.clone();
    tokio::spawn(async move {
        let r = netboot::fetch(&a.http, &base, &tag, &a.config.paths.boot_dir, &a.netboot).await;
        let e = match &r {
            Ok(i) => {
                NewEvent::new("netboot.fetched", actor, format!("netboot artifacts {} installed", i.tag))
                    .subject("netboot", tag.clone())
                    .details(json!({"base_url": base, "files": i.files}))
            }
            Err(err) if a.netboot.status().state == "cancelled" => NewEvent::new(
                "netboot.cancelled",
                actor,
                format!("netboot fetch of {tag} cancelled: {err:#}"),
            )
            .subject("netboot", tag.clone()),
            Err(err) => NewEvent::new(
                "netboot.fetch_failed",
                actor,
                format!("netboot fetch of {tag} failed: {err:#}"),
            )
            .subject("netboot", tag.clone())
            .details(json!({"base_url": base})),
        };
        let _ = audit::record(&a.db, e).await;
    });
    Ok(app.netboot.status())
}

/// Start fetching `{"base_url"?, "tag"?}` (defaults from `[netboot]`); 202,
/// or 409 while another fetch runs.
pub async fn fetch(
    State(app): State<AppState>,
    Extension(who): Extension<Principal>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let v: serde_json::Value =
        if body.iter().all(u8::is_ascii_whitespace) { json!({}) } else { decode_json(&headers, &body)? };
    let text = |k: &str| v.get(k).and_then(|b| b.as_str()).map(str::to_string);
    let status = start_fetch(&app, &who, text("base_url"), text("tag"))?;
    Ok((StatusCode::ACCEPTED, Json(status)).into_response())
}

pub async fn fetch_status(State(app): State<AppState>) -> Json<netboot::FetchStatus> {
    Json(app.netboot.status())
}

pub async fn cancel(State(app): State<AppState>) -> Result<StatusCode, ApiError> {
    if app.netboot.cancel() {
        Ok(StatusCode::ACCEPTED)
    } else {
        Err(ApiError::Conflict("no netboot fetch is running".into()))
    }
}

/// `GET /netboot/services`: TFTP and ProxyDHCP, each with its switch's
/// state, where it listens, its requests and its last error.
pub async fn services(State(app): State<AppState>) -> Json<Vec<ServiceHealth>> {
    Json(app.boot_services.health())
}

/// Turn a network boot service on or off (API and Settings page): the switch
/// is stored (it outlives restarts and overrides `[tftp]`/`[proxy_dhcp]
/// enabled`), the service starts or stops at once, and the answer is its
/// state afterwards (a service that could not start says why).
pub async fn switch_service(
    app: &AppState,
    who: &Principal,
    ip: Option<String>,
    service: Service,
    on: bool,
) -> Result<ServiceHealth, ApiError> {
    let actor = who.actor();
    let word = if on { "on" } else { "off" };
    app.db
        .write(move |c| {
            settings::set_service_switch(c, service, on)?;
            audit::insert(
                c,
                &NewEvent::new("settings.updated", actor, format!("{} turned {word}", service.name()))
                    .subject("settings", service.field())
                    .ip(ip)
                    .details(json!({"service": service.field(), "enabled": on})),
            )
        })
        .await?;
    app.boot_services.apply().await;
    Ok(boot_services::service_health(service, &app.boot_services.status(service).snapshot()))
}

pub fn service_named(name: &str) -> Result<Service, ApiError> {
    Service::ALL
        .into_iter()
        .find(|s| s.field() == name)
        .ok_or_else(|| ApiError::not_found(format!("no service {name:?}: use tftp or proxy_dhcp")))
}

/// `PUT /netboot/services/{name}` with `{"enabled": true|false}`.
pub async fn put_service(
    State(app): State<AppState>,
    Extension(who): Extension<Principal>,
    ip: ClientIp,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let service = service_named(&name)?;
    let v: serde_json::Value = decode_json(&headers, &body)?;
    let on = v
        .get("enabled")
        .and_then(|e| e.as_bool())
        .ok_or_else(|| ApiError::field("enabled", "must be true or false"))?;
    let health = switch_service(&app, &who, ip.string(), service, on).await?;
    Ok(Json(health).into_response())
}
