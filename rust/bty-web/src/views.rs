//! How the browser UI answers: the handlebars templates, stylesheet and
//! script compiled into the binary, the error page, redirects that stay
//! inside the UI, and the headers every page carries. Nothing here reads the
//! server state, so the auth guard can answer a browser in the UI's words
//! and the state can hold the compiled templates.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use handlebars::Handlebars;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::ApiError;

const TEMPLATES: &[(&str, &str)] = &[
    ("layout", include_str!("../templates/ui/layout.hbs")),
    ("field", include_str!("../templates/ui/field.hbs")),
    ("select", include_str!("../templates/ui/select.hbs")),
    ("events_table", include_str!("../templates/ui/events_table.hbs")),
    ("machine_row", include_str!("../templates/ui/machine_row.hbs")),
    ("cache_cell", include_str!("../templates/ui/cache_cell.hbs")),
    ("workflows", include_str!("../templates/ui/workflows.hbs")),
    ("run", include_str!("../templates/ui/run.hbs")),
    ("os", include_str!("../templates/ui/os.hbs")),
    ("login", include_str!("../templates/ui/login.hbs")),
    ("account", include_str!("../templates/ui/account.hbs")),
    ("dashboard", include_str!("../templates/ui/dashboard.hbs")),
    ("machines", include_str!("../templates/ui/machines.hbs")),
    ("machine", include_str!("../templates/ui/machine.hbs")),
    ("images", include_str!("../templates/ui/images.hbs")),
    ("netboot", include_str!("../templates/ui/netboot.hbs")),
    ("events", include_str!("../templates/ui/events.hbs")),
    ("settings", include_str!("../templates/ui/settings.hbs")),
    ("backups", include_str!("../templates/ui/backups.hbs")),
];

pub(crate) const CSS: &str = include_str!("../assets/ui.css");
pub(crate) const JS: &str = include_str!("../assets/ui.js");

/// Pages may load only this server's own stylesheet and script.
const CSP: &str = "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'";

pub struct Views {
    hb: Handlebars<'static>,
    css_url: String,
    js_url: String,
}

impl Default for Views {
    fn default() -> Self {
        Self::new()
    }
}

/// Assets are cached for a year; their URL changes with their content.
fn versioned(name: &str, body: &str) -> String {
    let digest = hex::encode(Sha256::digest(body.as_bytes()));
    format!("/ui/assets/{name}?v={}", &digest[..12])
}

/// Operator-facing text for a page: HTML-escaped, with each `quoted` span
/// (the messages' plain-text convention, shared with the API and the CLI) as
/// `<code>`. An unpaired backquote stays as it is.
pub fn prose(text: &str) -> String {
    let parts: Vec<&str> = text.split('`').collect();
    let paired = parts.len() % 2 == 1;
    let mut out = String::with_capacity(text.len() + 16);
    for (i, part) in parts.iter().enumerate() {
        let escaped = handlebars::html_escape(part);
        if i % 2 == 0 {
            out.push_str(&escaped);
        } else if paired || i + 1 < parts.len() {
            out.push_str("<code>");
            out.push_str(&escaped);
            out.push_str("</code>");
        } else {
            out.push_str("&#x60;");
            out.push_str(&escaped);
        }
    }
    out
}

/// `{{prose value}}`: [`prose`] in a template (the helper escapes; its
/// output is written as it is).
fn prose_helper(
    h: &handlebars::Helper<'_>,
    _: &Handlebars<'_>,
    _: &handlebars::Context,
    _: &mut handlebars::RenderContext<'_, '_>,
    out: &mut dyn handlebars::Output,
) -> handlebars::HelperResult {
    let text = match h.param(0).map(|p| p.value()) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    };
    out.write(&prose(&text))?;
    Ok(())
}

impl Views {
    pub fn new() -> Views {
        let mut hb = Handlebars::new();
        hb.register_helper("prose", Box::new(prose_helper));
        for (name, text) in TEMPLATES {
            hb.register_template_string(name, *text).expect("embedded UI templates parse");
        }
        Views { hb, css_url: versioned("ui.css", CSS), js_url: versioned("ui.js", JS) }
    }

    /// The stylesheet's URL, which changes with its content.
    pub fn css_url(&self) -> &str {
        &self.css_url
    }

    /// The script's URL, which changes with its content.
    pub fn js_url(&self) -> &str {
        &self.js_url
    }

    pub fn render(&self, name: &str, ctx: &Value) -> Result<String, UiError> {
        self.hb.render(name, ctx).map_err(|e| UiError(ApiError::internal(format!("rendering {name}: {e}"))))
    }
}

/// Percent-encode for a query value (everything but unreserved characters).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `?a=1&b=x` from the non-empty pairs (empty string when none).
pub fn query(pairs: &[(&str, &str)]) -> String {
    let parts: Vec<String> =
        pairs.iter().filter(|(_, v)| !v.is_empty()).map(|(k, v)| format!("{k}={}", encode(v))).collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

/// Where a form may send the browser back to: a page of this UI only, so a
/// crafted link cannot turn the login or an acknowledgement into a redirect
/// to another site.
pub fn local_target(s: &str) -> Option<&str> {
    let ok =
        s.starts_with("/ui/") && !s.contains("//") && !s.contains('\\') && !s.chars().any(char::is_control);
    ok.then_some(s)
}

/// The login page remembering where the browser wanted to go.
pub fn login_redirect(path_and_query: Option<&str>) -> Response {
    match path_and_query.and_then(local_target) {
        Some(next) => Redirect::to(&format!("/ui/login{}", query(&[("next", next)]))).into_response(),
        None => Redirect::to("/ui/login").into_response(),
    }
}

/// A failed UI request as a page (the API's errors are JSON).
#[derive(Debug)]
pub struct UiError(pub ApiError);

impl From<ApiError> for UiError {
    fn from(e: ApiError) -> Self {
        UiError(e)
    }
}

impl From<rusqlite::Error> for UiError {
    fn from(e: rusqlite::Error) -> Self {
        UiError(e.into())
    }
}

impl From<crate::machines::FieldError> for UiError {
    fn from(e: crate::machines::FieldError) -> Self {
        UiError(e.into())
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let (status, title, message) = match self.0 {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, "Bad request", m),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, "Not found", m),
            ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, "Not allowed", m),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, "Conflict", m),
            ApiError::Unprocessable { field, reason } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "Not accepted", format!("{field}: {reason}"))
            }
            ApiError::Internal(m) => {
                tracing::error!(error = %m, "internal error");
                (StatusCode::INTERNAL_SERVER_ERROR, "Server error", m)
            }
            other => return other.into_response(),
        };
        let html = format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
             <title>{title} · bty</title><link rel=\"stylesheet\" href=\"{css}\"></head>\
             <body><main id=\"main\"><h1>{title}</h1><p class=\"callout error\">{msg}</p>\
             <p><a href=\"/ui/\">Dashboard</a> · <a href=\"/ui/machines\">Machines</a></p></main></body></html>",
            css = versioned("ui.css", CSS),
            msg = prose(&message),
        );
        html_response(status, html)
    }
}

/// A form post whose CSRF token did not match the session: usually a page
/// left open across a new login. Said as a page, with what to do.
pub fn form_refused() -> Response {
    UiError(ApiError::Forbidden(
        "This form belongs to an older login (or another site). Go back, reload the page and submit it again."
            .into(),
    ))
    .into_response()
}

pub fn html_response(status: StatusCode, html: String) -> Response {
    let mut resp = (status, html).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn redirect_targets_stay_in_the_ui() {
        assert_eq!(local_target("/ui/machines?q=a"), Some("/ui/machines?q=a"));
        for bad in
            ["https://evil.example/", "//evil.example/ui/", "/ui//evil", "/healthz", "/ui/\\x", "/ui/\n"]
        {
            assert_eq!(local_target(bad), None, "{bad}");
        }
        assert_eq!(query(&[("q", "a b&c"), ("label", "")]), "?q=a%20b%26c");
        assert_eq!(query(&[("q", "")]), "");
    }

    #[test]
    fn templates_parse_and_assets_are_versioned() {
        let v = Views::new();
        assert!(v.css_url.starts_with("/ui/assets/ui.css?v="));
        let html = v
            .render("machine_row", &json!({"mac": "aa:bb:cc:dd:ee:ff", "labels": ["<x>"], "href": "/ui/m"}))
            .unwrap();
        assert!(html.contains("&lt;x&gt;"), "{html}");
    }

    #[test]
    fn quoted_spans_become_code() {
        assert_eq!(
            prose("the default password `bty` is in use"),
            "the default password <code>bty</code> is in use"
        );
        assert_eq!(prose("`<b>` & `x`"), "<code>&lt;b&gt;</code> &amp; <code>x</code>");
        assert_eq!(prose("one ` left"), "one &#x60; left");
        assert_eq!(prose("plain"), "plain");
        let v = Views::new();
        let html = v.render("field", &json!({"id": "x", "errors": {"x": "use `.` or `-`"}})).unwrap();
        assert!(html.contains("use <code>.</code> or <code>-</code>"), "{html}");
        assert!(!html.contains('`'), "{html}");
    }
}
