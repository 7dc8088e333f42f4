//! Bytes machines download: boot artifacts (`/boot`) and images (`/images`),
//! plus the catalog they are listed in.

use std::path::{Path as FsPath, PathBuf};

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bty_core::catalog::{Catalog, CatalogError, ImageSrc};
use futures_util::StreamExt;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::accounts::Principal;
use crate::audit::{self, NewEvent};
use crate::catalog_edit::{self, EditError, ImageUpload, NewEntry, Uploaded};
use crate::error::{decode_json, ApiError};
use crate::fileserve::{self, Refused};
use crate::state::{AppState, ClientIp};
use crate::{catalog, images};

/// Boot artifacts are addressed by plain file name only: no directories, no
/// hidden files (which includes `..` and in-progress uploads).
fn name_too_long(name: &str, dir: &FsPath) -> ApiError {
    ApiError::BadRequest(format!(
        "a name of {} bytes is longer than the file system of {} can hold; use a shorter name",
        name.len(),
        dir.display()
    ))
}

fn plain_name(name: &str) -> Result<&str, ApiError> {
    if name.len() > 255 {
        return Err(ApiError::BadRequest(format!(
            "a boot file name is at most 255 bytes (this one has {}); use a shorter name",
            name.len()
        )));
    }
    let bad = name.is_empty()
        || name.starts_with('.')
        || name.contains(['/', '\\', '\0'])
        || name.chars().any(char::is_control);
    if bad {
        return Err(ApiError::BadRequest(format!(
            "{name:?} is not a boot file name: use a plain file name such as vmlinuz (no `/`, no leading `.`)"
        )));
    }
    Ok(name)
}

pub async fn boot_get(
    State(app): State<AppState>,
    method: Method,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let name = plain_name(&name)?;
    let dir = &app.config.paths.boot_dir;
    let mut resp = match fileserve::serve(dir, FsPath::new(name), &method, &headers).await {
        Ok(r) => r,
        Err(Refused::Missing | Refused::NotAFile) => {
            return Err(ApiError::not_found(format!(
                "no boot file {name} in {}; upload it with PUT /boot/{name}",
                dir.display()
            )))
        }
        Err(Refused::Outside(target)) => {
            tracing::warn!(name, target = %target.display(), dir = %dir.display(),
                "boot file refused: it is a symlink out of the boot directory");
            return Err(ApiError::not_found(format!(
                "boot file {name} links outside {}, so it is not served; replace the link with the file \
                 (PUT /boot/{name})",
                dir.display()
            )));
        }
        Err(Refused::NameTooLong) => return Err(name_too_long(name, dir)),
        Err(Refused::Io(e)) => {
            return Err(ApiError::internal(format!("cannot read boot file {name} in {}: {e}", dir.display())))
        }
    };
    // The kernel and initrd are the last files a boot loader fetches before
    // it hands the machine over, so the server closes the connection itself,
    // while the loader is still there to answer. Left to the loader, the
    // close races the handover: iPXE's last FIN goes out, the server's reply
    // finds nobody, and the half-closed connection lingers on the server's
    // side. Its next boot can then reuse the same port and sequence number
    // (UEFI iPXE seeds them from a clock that starts at zero); a TCP stack
    // that ignores that SYN, as QEMU's user network does, stalls the boot.
    resp.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
    Ok(resp)
}

/// Upload a boot artifact: streamed to a hidden partial file, synced, then
/// renamed over the old one, so a download never sees half a kernel.
pub async fn boot_put(
    State(app): State<AppState>,
    Extension(who): Extension<Principal>,
    ip: ClientIp,
    Path(name): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let name = plain_name(&name)?.to_string();
    let max = app.config.limits.max_upload_bytes;
    let too_large = || {
        ApiError::PayloadTooLarge(format!("upload is larger than [limits] max_upload_bytes ({max} bytes)"))
    };
    let declared =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(too_large());
    }
    let dir = app.config.paths.boot_dir.clone();
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| ApiError::internal(format!("cannot create boot directory {}: {e}", dir.display())))?;
    let final_path = dir.join(&name);
    let tag = &crate::secret::random_secret()[..8];
    // The partial's name carries the file's so a leftover says what it was,
    // unless that would make it too long where the name itself still fits.
    let partial = if name.len() + 18 <= 255 {
        dir.join(format!(".{name}.{tag}.partial"))
    } else {
        dir.join(format!(".upload.{tag}.partial"))
    };
    let existed = tokio::fs::try_exists(&final_path).await.unwrap_or(false);

    let result = write_stream(req, &partial, max).await;
    let (size, digest) = match result {
        Ok(v) => v,
        Err(e) => {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(match e {
                UploadError::TooLarge => too_large(),
                UploadError::NameTooLong => name_too_long(&name, &dir),
                UploadError::Io(m) => ApiError::internal(m),
                UploadError::Body(m) => ApiError::BadRequest(format!("upload interrupted: {m}")),
            });
        }
    };
    if let Err(e) = tokio::fs::rename(&partial, &final_path).await {
        let _ = tokio::fs::remove_file(&partial).await;
        if e.raw_os_error() == Some(libc::ENAMETOOLONG) {
            return Err(name_too_long(&name, &dir));
        }
        return Err(ApiError::internal(format!(
            "cannot move the upload into place at {}: {e}",
            final_path.display()
        )));
    }
    let actor = who.actor();
    let (n, d) = (name.clone(), digest.clone());
    app.db
        .write(move |c| {
            audit::insert(
                c,
                &NewEvent::new("boot.uploaded", actor, format!("boot file {n} uploaded ({size} bytes)"))
                    .subject("boot", n.clone())
                    .ip(ip.string())
                    .details(json!({"name": n, "size_bytes": size, "sha256": d})),
            )
        })
        .await?;
    let status = if existed { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, Json(json!({"name": name, "size_bytes": size, "sha256": digest}))).into_response())
}

enum UploadError {
    TooLarge,
    NameTooLong,
    Io(String),
    Body(String),
}

async fn write_stream(req: Request, partial: &PathBuf, max: u64) -> Result<(u64, String), UploadError> {
    let io = |what: &str, e: std::io::Error| UploadError::Io(format!("{what} {}: {e}", partial.display()));
    let mut file = tokio::fs::File::create(partial).await.map_err(|e| match e.raw_os_error() {
        Some(libc::ENAMETOOLONG) => UploadError::NameTooLong,
        _ => io("cannot create", e),
    })?;
    let mut stream = req.into_body().into_data_stream();
    let mut size = 0u64;
    let mut hasher = Sha256::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| UploadError::Body(e.to_string()))?;
        size += chunk.len() as u64;
        if size > max {
            return Err(UploadError::TooLarge);
        }
        hasher.update(&chunk);
        file.write_all(&chunk).await.map_err(|e| io("cannot write", e))?;
    }
    file.sync_all().await.map_err(|e| io("cannot sync", e))?;
    Ok((size, hex::encode(hasher.finalize())))
}

pub async fn images_list(State(app): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let base = app.base_url(&headers)?;
    let catalog = app.catalog.get();
    let rows: Vec<catalog::ImageInfo<'_>> = catalog.images.iter().map(|e| catalog::info(e, &base)).collect();
    Ok(Json(rows).into_response())
}

pub async fn image_get(
    State(app): State<AppState>,
    method: Method,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let catalog = app.catalog.get();
    let Some(entry) = catalog.get(&name) else {
        return Err(ApiError::not_found(format!(
            "no image named {name:?} in the catalog (GET /images lists them)"
        )));
    };
    if let Some(r) = images::cached(&app, entry, method.clone(), &headers).await {
        return Ok(r);
    }
    match entry.src() {
        ImageSrc::Url(url) => Ok(images::proxy(&app.http, url, method, &headers).await),
        ImageSrc::Oci(src) => Ok(images::oci(src, method, &headers).await),
        ImageSrc::Local(rel) => {
            let dir = &app.config.paths.images_dir;
            match fileserve::serve(dir, FsPath::new(rel), &method, &headers).await {
                Ok(r) => Ok(r),
                Err(Refused::Missing) => Err(ApiError::not_found(format!(
                    "catalog entry {name} names {}, which does not exist; copy the image there or fix the entry",
                    dir.join(rel).display()
                ))),
                Err(Refused::NotAFile) => Err(ApiError::not_found(format!(
                    "catalog entry {name} names {}, which is not a regular file; point its src at the image file",
                    dir.join(rel).display()
                ))),
                Err(Refused::Outside(target)) => {
                    tracing::warn!(image = %name, target = %target.display(), dir = %dir.display(),
                        "image refused: its file is a symlink out of the images directory");
                    Err(ApiError::not_found(format!(
                        "catalog entry {name} names {}, which links outside the images directory, so it is not \
                         served; move the image into {} instead of linking to it",
                        dir.join(rel).display(),
                        dir.display()
                    )))
                }
                // The catalog is the operator's, not the client's: a server-side fault.
                Err(Refused::NameTooLong) => Err(ApiError::internal(format!(
                    "catalog entry {name} names a path the file system of {} cannot hold; shorten its src",
                    dir.display()
                ))),
                Err(Refused::Io(e)) => Err(ApiError::internal(format!(
                    "cannot read image {name} ({}): {e}",
                    dir.join(rel).display()
                ))),
            }
        }
    }
}

pub async fn catalog_toml(State(app): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let base = app.base_url(&headers)?;
    let text = catalog::republish(&app.catalog.get(), &base);
    Ok(([(header::CONTENT_TYPE, "application/toml; charset=utf-8")], text).into_response())
}

/// Reload the catalog and audit the outcome: the one reload path for the
/// API and the browser UI. `Ok(Err(_))` is a catalog that did not load (the
/// previous one stays in use).
pub async fn reload_catalog(
    app: &AppState,
    who: &Principal,
    ip: ClientIp,
) -> Result<Result<usize, CatalogError>, ApiError> {
    let result = app.catalog.reload().await;
    let actor = who.actor();
    let location = app.catalog.location().to_string();
    let event = match &result {
        Ok(c) => {
            let n = c.images.len();
            NewEvent::new("catalog.reloaded", actor, format!("catalog reloaded: {n} image(s)"))
                .subject("catalog", location.clone())
                .details(json!({"images": n, "location": location}))
        }
        Err(e) => {
            NewEvent::new("catalog.failed", actor, app.catalog.last_error().unwrap_or_else(|| e.to_string()))
                .subject("catalog", location.clone())
                .details(json!({"location": location, "problems": e.problems}))
        }
    };
    let event = event.ip(ip.string());
    app.db.write(move |db| audit::insert(db, &event)).await?;
    Ok(result.map(|c| c.images.len()))
}

pub async fn catalog_reload(
    State(app): State<AppState>,
    Extension(who): Extension<Principal>,
    ip: ClientIp,
) -> Result<Response, ApiError> {
    let location = app.catalog.location().to_string();
    match reload_catalog(&app, &who, ip).await? {
        Ok(n) => Ok(Json(json!({"images": n, "location": location})).into_response()),
        Err(e) => {
            let problems = serde_json::to_value(&e.problems).unwrap_or_default();
            Err(ApiError::UnprocessableBody(json!({
                "error": format!("catalog {location} was not loaded; the previous catalog stays in use"),
                "field": "catalog",
                "reason": e.to_string(),
                "problems": problems,
            })))
        }
    }
}

/// The API's answer to a catalog edit that was refused.
pub fn edit_error(e: EditError) -> ApiError {
    match e {
        EditError::Field { field, reason } => ApiError::field(field, reason),
        EditError::Duplicate(m) | EditError::NotEditable(m) => ApiError::Conflict(m),
        e @ EditError::TooLarge(_) => ApiError::PayloadTooLarge(e.to_string()),
        EditError::Io(m) => ApiError::internal(m),
    }
}

/// Add an entry to the catalog (with its uploaded file, if any), reload it
/// and audit the addition: the one path for the API and the browser UI.
/// `Ok(Err(_))` is an entry that was refused; nothing changed then.
pub async fn add_catalog_entry(
    app: &AppState,
    who: &Principal,
    ip: ClientIp,
    entry: NewEntry,
    upload: Option<Uploaded>,
) -> Result<Result<std::sync::Arc<Catalog>, EditError>, ApiError> {
    let how = if upload.is_some() { "upload" } else { "url" };
    let catalog = match catalog_edit::add(&app.catalog, entry.clone(), upload).await {
        Ok(c) => c,
        Err(e) => return Ok(Err(e)),
    };
    let location = app.catalog.location().to_string();
    let summary = match how {
        "upload" => format!(
            "image {} uploaded ({} bytes) and added to the catalog",
            entry.name,
            entry.size_bytes.unwrap_or(0)
        ),
        _ => format!("image {} ({}) added to the catalog", entry.name, entry.src),
    };
    let event = NewEvent::new("catalog.image.added", who.actor(), summary)
        .subject("catalog", location.clone())
        .ip(ip.string())
        .details(json!({
            "name": entry.name,
            "src": entry.src,
            "sha256": entry.sha256,
            "size_bytes": entry.size_bytes,
            "format": entry.format.map(|f| f.as_str()),
            "via": how,
            "location": location,
            "images": catalog.images.len(),
        }));
    app.db.write(move |db| audit::insert(db, &event)).await?;
    Ok(Ok(catalog))
}

fn added(app: &AppState, headers: &HeaderMap, catalog: &Catalog, name: &str) -> Result<Response, ApiError> {
    let base = app.base_url(headers)?;
    let entry = catalog
        .get(name)
        .ok_or_else(|| ApiError::internal(format!("{name} is not in the reloaded catalog")))?;
    Ok((StatusCode::CREATED, Json(catalog::info(entry, &base))).into_response())
}

#[derive(serde::Deserialize, Default)]
pub struct ImageUploadQuery {
    description: Option<String>,
}

/// `PUT /images/{name}`: upload an image into the images directory and add
/// it to the catalog as `name`. Streamed to a hidden partial file (its
/// SHA-256, size and format computed on the way), moved into place, then
/// the catalog is rewritten; an existing name or file is a 409 and is never
/// replaced. Anything that stops the upload removes the partial file.
pub async fn image_put(
    State(app): State<AppState>,
    Extension(who): Extension<Principal>,
    ip: ClientIp,
    Path(name): Path<String>,
    Query(q): Query<ImageUploadQuery>,
    headers: HeaderMap,
    req: Request,
) -> Result<Response, ApiError> {
    let max = app.config.limits.max_upload_bytes;
    let dir = app.config.paths.images_dir.clone();
    catalog_edit::precheck(&app.catalog, &name, Some(&dir)).map_err(edit_error)?;
    let declared =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(edit_error(EditError::TooLarge(max)));
    }
    let mut upload = ImageUpload::begin(&dir, &name, max).await.map_err(edit_error)?;
    let mut stream = req.into_body().into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadRequest(format!("upload interrupted: {e}")))?;
        upload.write(&chunk).await.map_err(edit_error)?;
    }
    let done = upload.finish().await.map_err(edit_error)?;
    let entry = done.entry(q.description.as_deref().unwrap_or(""));
    let catalog = add_catalog_entry(&app, &who, ip, entry, Some(done)).await?.map_err(edit_error)?;
    added(&app, &headers, &catalog, &name)
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct UrlEntryInput {
    name: String,
    url: String,
    sha256: String,
    #[serde(default)]
    description: Option<String>,
}

/// `POST /catalog/images`: register an image at an http(s) URL with its
/// SHA-256 (`{"name", "url", "sha256", "description"?}`).
pub async fn catalog_add(
    State(app): State<AppState>,
    Extension(who): Extension<Principal>,
    ip: ClientIp,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let input: UrlEntryInput = decode_json(&headers, &body)?;
    let entry = catalog_edit::url_entry(
        &input.name,
        &input.url,
        &input.sha256,
        input.description.as_deref().unwrap_or(""),
    )
    .map_err(edit_error)?;
    let catalog = add_catalog_entry(&app, &who, ip, entry, None).await?.map_err(edit_error)?;
    added(&app, &headers, &catalog, &input.name)
}
