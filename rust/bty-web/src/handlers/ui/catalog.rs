//! `/ui/images` (the catalog) and `/ui/netboot` (boot artifacts).

use axum::extract::Query;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{Ctx, PageMeta, UiError};
use crate::handlers::files;
use crate::health::{self, human_bytes};
use crate::images;
use crate::state::ClientIp;

#[derive(Deserialize, Default)]
pub struct NoticeQuery {
    notice: Option<String>,
}

pub async fn images(ctx: Ctx, Query(q): Query<NoticeQuery>) -> Result<Response, UiError> {
    let catalog = ctx.app.catalog.get();
    let rows: Vec<Value> = catalog
        .images
        .iter()
        .map(|e| {
            let i = images::info(e, "");
            let digest = i.sha256.map(|d| format!("{}…", &d[..d.len().min(12)]));
            json!({
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
    let data = json!({
        "location": ctx.app.catalog.location(),
        "count": rows.len(),
        "images": rows,
        "error": ctx.app.catalog.last_error(),
    });
    let meta =
        PageMeta { name: "images", title: "Images".into(), nav: "images", notice: q.notice.as_deref() };
    ctx.page(StatusCode::OK, meta, data)
}

pub async fn reload(ctx: Ctx, ip: ClientIp) -> Result<Response, UiError> {
    let code = match files::reload_catalog(&ctx.app, &ctx.who, ip).await? {
        Ok(_) => "reloaded",
        Err(_) => "reload-failed",
    };
    Ok(Redirect::to(&format!("/ui/images?notice={code}")).into_response())
}

pub async fn netboot(ctx: Ctx) -> Result<Response, UiError> {
    let boot = &ctx.app.config.boot;
    let mut roles = vec![(boot.kernel.clone(), "live kernel"), (boot.initrd.clone(), "live initrd")];
    if let Some(s) = &boot.squashfs {
        roles.push((s.clone(), "live root squashfs"));
    }
    let dir = ctx.app.config.paths.boot_dir.clone();
    let mut names: Vec<String> = roles.iter().map(|(n, _)| n.clone()).collect();
    if let Ok(entries) = std::fs::read_dir(&dir) {
        let mut others: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            // Hidden files are uploads in progress.
            .filter(|n| !n.starts_with('.') && !names.contains(n))
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
            json!({
                "name": n,
                "role": role,
                "present": meta.is_some(),
                "size": meta.as_ref().map(|m| human_bytes(m.len())),
                "modified": modified,
            })
        })
        .collect();
    let data = json!({
        "boot_dir": dir.display().to_string(),
        "files": files,
        "version": health::boot_version(&ctx.app),
        "wanted": health::wanted_boot_version(&ctx.app),
    });
    ctx.page(
        StatusCode::OK,
        PageMeta { name: "netboot", title: "Netboot".into(), nav: "netboot", notice: None },
        data,
    )
}
