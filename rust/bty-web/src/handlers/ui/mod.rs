//! The browser UI under `/ui/`: server-rendered handlebars pages from
//! `templates/ui/`, one stylesheet and one script from `assets/`, all
//! compiled into the binary. Handlers stay thin: they call the same
//! functions as the JSON API (`handlers::machines::save`,
//! `handlers::auth::start_session`, ...) and only shape HTML.
//!
//! Forms post with the session's CSRF token as a hidden `csrf_token` field,
//! which the auth guard checks like the API's header; a valid post redirects
//! (303) to a page, an invalid one is answered with the form again and the
//! reason next to the field.

pub mod account;
pub mod backups;
pub mod catalog;
pub mod dashboard;
pub mod events;
pub mod machines;
pub mod os;
pub mod settings;
pub mod workflows;

use std::sync::atomic::Ordering;

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use serde_json::{json, Map, Value};

use crate::accounts::{Principal, Via};
use crate::audit::{self, Event};
use crate::error::ApiError;
use crate::settings::DisplayZone;
use crate::state::AppState;
pub use crate::views::{
    encode, form_refused, html_response, local_target, login_redirect, prose, query, UiError, Views,
};
use crate::views::{CSS, JS};

/// `GET /ui/assets/{file}`: open, so the login page has its style.
pub async fn asset(Path(file): Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "ui.css" => (CSS, "text/css; charset=utf-8"),
        "ui.js" => (JS, "text/javascript; charset=utf-8"),
        _ => return ApiError::not_found(format!("no asset {file}")).into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// Messages shown after a redirect, by code, so a link cannot put arbitrary
/// text on a page.
fn notice(code: &str) -> Option<&'static str> {
    Some(match code {
        "saved" => "Saved. The machine follows its new assignment from its next PXE boot.",
        "added" => "Machine added with policy tui.",
        "deleted" => "Machine deleted.",
        "reloaded" => "Catalog reloaded.",
        "reload-failed" => "The catalog did not load; the previous one stays in use.",
        "image-added" => "Image added to the catalog. Machines can be assigned it now.",
        "prefetching" => "Filling the cache with the image; its progress is below.",
        "workflow-saved" => "Workflow saved. Machines bound to it run the new version from their next run.",
        "workflow-deleted" => "Workflow deleted.",
        "evicted" => "Evicted from the cache; the next download fills it again.",
        "password" => "Password changed. Other sessions were logged out and every API token was revoked: create new tokens for your scripts.",
        "revoked" => "Token revoked.",
        "settings" => "Settings saved.",
        "services" => "Network boot services switched; their state is below.",
        "catalog-fetched" => "Catalog fetched; it is in use now.",
        "catalog-failed" => "The catalog could not be fetched; the reason is below, and the previous catalog stays in use.",
        "backup-created" => "Backup made.",
        "os-apply" => "Apply started; its progress is below. The new slot boots at the next reboot and has three tries to pass its health checks.",
        "os-download" => "Download started; its progress is below.",
        "backup-deleted" => "Backup deleted.",
        "acked" => "Acknowledged.",
        "bye" => "Logged out.",
        _ => return None,
    })
}

/// Form fields in order, repeated names kept (`id=1&id=2`).
pub struct Fields(pub Vec<(String, String)>);

impl Fields {
    pub fn get(&self, name: &str) -> &str {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).unwrap_or("")
    }
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.0.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str()).collect()
    }
}

/// One validation problem per field, shown next to it.
pub fn field_errors(field: &str, reason: &str) -> Value {
    let mut m = Map::new();
    m.insert(field.to_string(), Value::String(reason.to_string()));
    Value::Object(m)
}

/// What every page needs: who is looking, their CSRF token, how to show times.
pub struct Ctx {
    pub app: AppState,
    pub who: Principal,
    pub zone: DisplayZone,
    unacked: i64,
}

impl FromRequestParts<AppState> for Ctx {
    type Rejection = UiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, Self::Rejection> {
        let who = parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or_else(|| UiError(ApiError::Unauthorized("log in first".into())))?;
        let (zone, unacked) = app
            .db
            .read(|c| {
                Ok::<_, rusqlite::Error>((crate::settings::display_zone(c)?, audit::unacknowledged_count(c)?))
            })
            .await?;
        Ok(Ctx { app: app.clone(), who, zone, unacked })
    }
}

/// A page's title, navigation entry and optional notice code.
pub struct PageMeta<'a> {
    pub name: &'a str,
    pub title: String,
    pub nav: &'a str,
    pub notice: Option<&'a str>,
}

impl Ctx {
    pub fn csrf(&self) -> &str {
        match &self.who.via {
            Via::Session { csrf_token, .. } => csrf_token,
            Via::Token { .. } => "",
        }
    }

    fn base(&self, title: &str, nav: &str, notice_code: Option<&str>) -> Value {
        json!({
            "title": title,
            "nav": nav,
            "user": self.who.username,
            "csrf": self.csrf(),
            "css": self.app.ui.css_url(),
            "js": self.app.ui.js_url(),
            "default_password": self.app.default_password.load(Ordering::Relaxed),
            "unacked": self.unacked,
            "version": crate::VERSION,
            "zone": self.zone.label(),
            "notice": notice_code.and_then(notice),
        })
    }

    pub fn time(&self, t: Option<&str>) -> String {
        self.zone.format_opt(t)
    }

    pub fn page(&self, status: StatusCode, meta: PageMeta<'_>, mut data: Value) -> Result<Response, UiError> {
        if let Value::Object(m) = &mut data {
            m.insert("base".into(), self.base(&meta.title, meta.nav, meta.notice));
        }
        let html = self.app.ui.render(meta.name, &data)?;
        Ok(html_response(status, html))
    }

    pub fn event_row(&self, e: &Event) -> Value {
        let subject_href = match (e.subject_kind.as_deref(), e.subject_id.as_deref()) {
            (Some("machine"), Some(mac)) => Some(format!("/ui/machines/{mac}")),
            _ => None,
        };
        json!({
            "id": e.id,
            "ts": self.zone.format(&e.ts),
            "kind": e.kind,
            "summary": e.summary,
            "subject_id": e.subject_id,
            "subject_href": subject_href,
            "actor": e.actor,
            "source_ip": e.source_ip,
            "acknowledged": e.acknowledged,
            "repeats": (e.count > 1).then_some(e.count),
            "last_ts": e.last_ts.as_deref().map(|t| self.zone.format(t)),
        })
    }
}

/// `GET /ui`: the dashboard lives at `/ui/`.
pub async fn root() -> Redirect {
    Redirect::to("/ui/")
}

/// `GET /`: a browser pointed at the server gets the UI (its login page
/// first, when not logged in).
pub async fn site_root() -> Redirect {
    Redirect::to("/ui/")
}
