//! `/ui/images` (the catalog) and `/ui/netboot` (boot artifacts).

use axum::extract::Query;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{field_errors, Ctx, Fields, PageMeta, UiError};
use crate::catalog_edit::{self, EditError};
use crate::error::ApiError;
use crate::handlers::{self, files};
use crate::health::{self, human_bytes};
use crate::state::ClientIp;
use crate::{catalog, netboot};

#[derive(Deserialize, Default)]
pub struct NoticeQuery {
    notice: Option<String>,
}

pub async fn images(ctx: Ctx, Query(q): Query<NoticeQuery>) -> Result<Response, UiError> {
    images_page(&ctx, StatusCode::OK, q.notice.as_deref(), json!({}), json!({}), None).await
}

/// The Images page; after a refused addition, with the submitted `form`, the
/// reasons next to their fields (`errors`) or one for the whole form.
async fn images_page(
    ctx: &Ctx,
    status: StatusCode,
    notice: Option<&str>,
    form: Value,
    errors: Value,
    add_error: Option<String>,
) -> Result<Response, UiError> {
    let catalog = ctx.app.catalog.get();
    let mut cached = match &ctx.app.cache {
        Some(c) => c.entries().await,
        None => Vec::new(),
    };
    let rows: Vec<Value> = catalog
        .images
        .iter()
        .map(|e| {
            let i = catalog::info(e, "");
            let digest = i.sha256.map(|d| format!("{}…", &d[..d.len().min(12)]));
            // By digest; an oras:// entry without one in the catalog by name.
            let at = cached
                .iter()
                .position(|c| i.sha256 == Some(c.digest.as_str()))
                .or_else(|| cached.iter().position(|c| i.sha256.is_none() && c.name == i.name));
            let entry = at.map(|n| cached.remove(n));
            let cacheable =
                ctx.app.cache.is_some() && (i.source == "oci" || (i.source != "local" && i.sha256.is_some()));
            json!({
                "cache": cache_cell(ctx, entry.as_ref(), cacheable, i.source),
                "name": i.name,
                "description": i.description,
                "format": i.format,
                "arch": i.arch,
                "size": i.size_bytes.map(human_bytes),
                "sha256": i.sha256,
                "digest": digest,
                "source": i.source,
                "src": i.src,
            })
        })
        .collect();
    // What the cache holds for images no longer in the catalog (or changed).
    let stale: Vec<Value> = cached
        .iter()
        .map(|e| json!({"name": e.name, "cache": cache_cell(ctx, Some(e), false, "")}))
        .collect();
    let cache_summary = ctx.app.cache.as_ref().map(|c| {
        let k = c.counters();
        let held: u64 = c.held_bytes();
        json!({
            "held": human_bytes(held),
            "max": human_bytes(ctx.app.config.cache.max_bytes),
            "dir": ctx.app.config.paths.cache_dir.display().to_string(),
            "hits": k.hits,
            "misses": k.misses,
            "upstream": human_bytes(k.upstream_bytes),
        })
    });
    let data = json!({
        "location": ctx.app.catalog.location(),
        "count": rows.len(),
        "images": rows,
        "stale": stale,
        "cache": cache_summary,
        "error": ctx.app.catalog.last_error(),
        "missing": ctx.app.catalog.is_missing(),
        "editable": !ctx.app.catalog.is_remote(),
        "images_dir": ctx.app.config.paths.images_dir.display().to_string(),
        "max_upload": human_bytes(ctx.app.config.limits.max_upload_bytes),
        "form": form,
        "errors": errors,
        "add_error": add_error,
    });
    let meta = PageMeta { name: "images", title: "Images".into(), nav: "images", notice };
    ctx.page(status, meta, data)
}

/// The Cache column of one image: its state, use and the buttons that apply.
fn cache_cell(ctx: &Ctx, e: Option<&bty_control::cache::EntryInfo>, cacheable: bool, source: &str) -> Value {
    let Some(e) = e else {
        let why = match source {
            "local" => "served from the images directory",
            _ if ctx.app.cache.is_none() => "the cache is off",
            _ if !cacheable => "not cached: the catalog entry has no sha256",
            _ => "not cached yet",
        };
        return json!({"state": why, "class": "muted", "prefetch": cacheable});
    };
    let size = e.size.map(human_bytes);
    let (state, class) = match e.state.as_str() {
        "complete" => (format!("cached, {}", size.clone().unwrap_or_default()), "ok"),
        "filling" => (
            match (e.filled, e.size) {
                (Some(f), Some(t)) if t > 0 => {
                    format!("filling: {} of {} ({}%)", human_bytes(f), human_bytes(t), f * 100 / t)
                }
                (Some(f), _) => format!("filling: {}", human_bytes(f)),
                _ => "filling".to_string(),
            },
            "warn",
        ),
        "partial" => (
            format!(
                "partial: {} kept, resumed by the next download or Prefetch",
                human_bytes(e.filled.unwrap_or(0))
            ),
            "warn",
        ),
        "failed" => (format!("failed: {}", e.error.clone().unwrap_or_default()), "error"),
        "missing" => ("its file is gone; filled again by the next download".to_string(), "warn"),
        other => (other.to_string(), "muted"),
    };
    json!({
        "state": state,
        "class": class,
        "hits": e.hits,
        "readers": e.readers,
        "last_use": e.last_access.as_ref().map(|t| ctx.zone.format(t)),
        "digest": e.digest,
        "prefetch": cacheable && matches!(e.state.as_str(), "failed" | "partial" | "missing"),
        "evict": e.state != "filling" && e.readers == 0,
    })
}

/// `POST /ui/images/{name}/prefetch`.
pub async fn prefetch(
    ctx: Ctx,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Result<Response, UiError> {
    handlers::cache::start_prefetch(&ctx.app, &name).await?;
    Ok(Redirect::to("/ui/images?notice=prefetching").into_response())
}

/// `POST /ui/cache/{digest}/evict`.
pub async fn evict(
    ctx: Ctx,
    ip: ClientIp,
    axum::extract::Path(digest): axum::extract::Path<String>,
) -> Result<Response, UiError> {
    handlers::cache::evict_entry(&ctx.app, &ctx.who, ip, &digest).await?;
    Ok(Redirect::to("/ui/images?notice=evicted").into_response())
}

/// `POST /ui/images/url`: register an image at an http(s) URL with its SHA-256.
pub async fn add_url(
    ctx: Ctx,
    ip: ClientIp,
    Form(f): Form<Vec<(String, String)>>,
) -> Result<Response, UiError> {
    let f = Fields(f);
    let (name, url, sha256, description) =
        (f.get("name"), f.get("url"), f.get("sha256"), f.get("description"));
    let outcome = match catalog_edit::url_entry(name, url, sha256, description) {
        Ok(entry) => files::add_catalog_entry(&ctx.app, &ctx.who, ip, entry, None).await?,
        Err(e) => Err(e),
    };
    let e = match outcome {
        Ok(_) => return Ok(Redirect::to("/ui/images?notice=image-added").into_response()),
        Err(e) => e,
    };
    let form = json!({"name": name, "url": url, "sha256": sha256, "description": description});
    let (status, errors, whole) = match e {
        EditError::Field { field, reason } => {
            (StatusCode::UNPROCESSABLE_ENTITY, field_errors(field, &reason), None)
        }
        EditError::Duplicate(m) => (StatusCode::CONFLICT, field_errors("name", &m), None),
        EditError::NotEditable(m) => (StatusCode::CONFLICT, json!({}), Some(m)),
        e @ EditError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, json!({}), Some(e.to_string())),
        EditError::Io(m) => {
            tracing::error!(error = %m, "adding a catalog entry failed");
            (StatusCode::INTERNAL_SERVER_ERROR, json!({}), Some(m))
        }
    };
    images_page(&ctx, status, None, form, errors, whole).await
}

pub async fn reload(ctx: Ctx, ip: ClientIp) -> Result<Response, UiError> {
    let code = match files::reload_catalog(&ctx.app, &ctx.who, ip).await? {
        Ok(_) => "reloaded",
        Err(_) => "reload-failed",
    };
    Ok(Redirect::to(&format!("/ui/images?notice={code}")).into_response())
}

#[derive(Deserialize, Default)]
pub struct NetbootQuery {
    notice: Option<String>,
}

pub async fn netboot(ctx: Ctx, Query(q): Query<NetbootQuery>) -> Result<Response, UiError> {
    netboot_page(&ctx, StatusCode::OK, q.notice.as_deref(), None, json!({})).await
}

async fn netboot_page(
    ctx: &Ctx,
    status: StatusCode,
    notice: Option<&str>,
    submitted: Option<(String, String)>,
    errors: Value,
) -> Result<Response, UiError> {
    let boot = &ctx.app.config.boot;
    let mut roles = vec![(boot.kernel.clone(), "live kernel"), (boot.initrd.clone(), "live initrd")];
    if let Some(s) = &boot.squashfs {
        roles.push((s.clone(), "live root squashfs"));
    }
    let dir = ctx.app.config.paths.boot_dir.clone();
    let installed = netboot::installed(&dir);
    let mut names: Vec<String> = roles.iter().map(|(n, _)| n.clone()).collect();
    if let Ok(entries) = std::fs::read_dir(&dir) {
        let mut others: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            // Hidden files are uploads in progress; the record of the release is not an artifact.
            .filter(|n| !n.starts_with('.') && n != netboot::INSTALLED && !names.contains(n))
            .collect();
        others.sort();
        names.extend(others);
    }
    let files: Vec<Value> = names
        .iter()
        .map(|n| {
            let meta = std::fs::metadata(dir.join(n)).ok();
            let role = roles.iter().find(|(r, _)| r == n).map(|(_, role)| *role).unwrap_or("other");
            let modified = meta
                .as_ref()
                .and_then(|m| m.modified().ok())
                .map(|t| crate::clock::rfc3339(time::OffsetDateTime::from(t)))
                .map(|t| ctx.zone.format(&t));
            let sha256 = installed
                .as_ref()
                .and_then(|i| i.files.iter().find(|f| &f.name == n))
                .map(|f| f.sha256.clone());
            json!({
                "name": n,
                "role": role,
                "present": meta.is_some(),
                "size": meta.as_ref().map(|m| human_bytes(m.len())),
                "modified": modified,
                "sha256": sha256,
                "digest": sha256.as_ref().map(|d| format!("{}…", &d[..d.len().min(12)])),
            })
        })
        .collect();
    let f = ctx.app.netboot.status();
    let progress = match (f.bytes, f.total) {
        (0, _) => None,
        (b, Some(t)) if t > 0 => Some(format!("{} of {}", human_bytes(b), human_bytes(t))),
        (b, _) => Some(human_bytes(b)),
    };
    let class = match f.state {
        "done" => "ok",
        "failed" | "cancelled" => "error",
        _ => "warn",
    };
    let wanted = health::wanted_boot_version(&ctx.app.config);
    let (base_url, tag) = submitted.unwrap_or_else(|| {
        (ctx.app.config.netboot.release_base_url.clone().unwrap_or_default(), wanted.clone())
    });
    let data = json!({
        "boot_dir": dir.display().to_string(),
        "files": files,
        "installed_at": installed.as_ref().map(|i| ctx.zone.format(&i.fetched_at)),
        "matches": installed.as_ref().is_some_and(|i| i.tag == wanted),
        "installed": installed,
        "wanted": wanted,
        "fetch": {
            "shown": f.state != "idle",
            "running": f.state == "running",
            "state": f.state,
            "class": class,
            "tag": f.tag,
            "file": f.file,
            "progress": progress,
            "error": f.error,
        },
        "form": {"base_url": base_url, "tag": tag},
        "errors": errors,
    });
    ctx.page(status, PageMeta { name: "netboot", title: "Netboot".into(), nav: "netboot", notice }, data)
}

/// `POST /ui/netboot/fetch`: start a release fetch; the page follows it.
pub async fn fetch(ctx: Ctx, Form(f): Form<Vec<(String, String)>>) -> Result<Response, UiError> {
    let f = Fields(f);
    let (base, tag) = (f.get("base_url").to_string(), f.get("tag").to_string());
    match handlers::netboot::start_fetch(&ctx.app, &ctx.who, Some(base.clone()), Some(tag.clone())) {
        Ok(_) => Ok(Redirect::to("/ui/netboot").into_response()),
        Err(ApiError::Unprocessable { field, reason }) => {
            let errors = field_errors(&field, &reason);
            netboot_page(&ctx, StatusCode::UNPROCESSABLE_ENTITY, None, Some((base, tag)), errors).await
        }
        Err(e) => Err(e.into()),
    }
}

pub async fn cancel_fetch(ctx: Ctx) -> Result<Response, UiError> {
    ctx.app.netboot.cancel();
    Ok(Redirect::to("/ui/netboot").into_response())
}
