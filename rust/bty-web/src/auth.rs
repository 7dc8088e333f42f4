//! Operator authentication over HTTP: the session cookie, API tokens as
//! Bearer headers, CSRF for cookie-authenticated writes, and the one
//! middleware that guards every non-open route. Accounts, sessions and
//! tokens themselves (storage, verification, login rate limiting) are
//! [`bty_control::accounts`].
//!
//! Comparisons of secrets are constant-time.

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use crate::accounts::{self, Via, TOKEN_PREFIX};
use crate::error::ApiError;
use crate::route_table::{self, Access};
use crate::secret::sha256_hex;
use crate::state::AppState;
use crate::views;

pub const SESSION_COOKIE: &str = "bty_session";
pub const CSRF_HEADER: &str = "x-csrf-token";
pub const CSRF_FORM_FIELD: &str = "csrf_token";

pub fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

pub fn session_cookie(token: &str, max_age_secs: u64) -> String {
    format!("{SESSION_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_secs}")
}

pub fn clear_cookie() -> String {
    format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

fn unauthorized() -> Response {
    ApiError::Unauthorized(
        "log in first (POST /auth/login) or send an API token as `Authorization: Bearer bty_...`".into(),
    )
    .into_response()
}

fn safe_method(m: &Method) -> bool {
    matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The guard in front of every route: open routes (from [`route_table::ROUTES`])
/// pass; everything else needs a session or a token, and cookie-authenticated
/// writes need the session's CSRF token.
pub async fn require_auth(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let path = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string());
    if let Some(path) = &path {
        if route_table::access(req.method(), path) == Access::Open {
            return next.run(req).await;
        }
    }

    // Browsers asking for a UI page without a login get the login page.
    let is_ui = path.as_deref().is_some_and(|p| p == "/ui" || p.starts_with("/ui/"));
    let wanted: Option<String> = (req.method() == Method::GET)
        .then(|| req.uri().path_and_query().map(|pq| pq.as_str().to_string()))
        .flatten();
    let unauthorized = || {
        if is_ui {
            views::login_redirect(wanted.as_deref())
        } else {
            unauthorized()
        }
    };
    let bearer = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_string);
    let principal = if let Some(auth) = bearer {
        let Some(token) = auth.strip_prefix("Bearer ").map(str::trim).filter(|t| t.starts_with(TOKEN_PREFIX))
        else {
            return unauthorized();
        };
        let token = token.to_string();
        match app.db.read(move |c| accounts::token_principal(c, &token)).await {
            Ok(Some(p)) => {
                // Bookkeeping, not part of the request: a token still works
                // (reads above all) when its use cannot be recorded, say on a
                // full disk.
                if let Via::Token { id, .. } = p.via {
                    if let Err(e) = app.db.write(move |c| accounts::record_token_use(c, id)).await {
                        tracing::warn!(error = %e, token = id, "cannot record the API token's last use");
                    }
                }
                p
            }
            Ok(None) => return unauthorized(),
            Err(e) => return ApiError::from(e).into_response(),
        }
    } else if let Some(cookie) = cookie_value(req.headers(), SESSION_COOKIE) {
        let hash = sha256_hex(cookie);
        match app.db.read(move |c| accounts::session(c, &hash)).await {
            Ok(Some(p)) => p,
            Ok(None) => return unauthorized(),
            Err(e) => return ApiError::from(e).into_response(),
        }
    } else {
        return unauthorized();
    };

    let mut req = req;
    if let Via::Session { csrf_token, .. } = &principal.via {
        if !safe_method(req.method()) {
            match csrf_ok(req, csrf_token, app.config.limits.max_body_bytes).await {
                Ok(r) => req = r,
                Err(resp) if is_ui && resp.status() != axum::http::StatusCode::PAYLOAD_TOO_LARGE => {
                    return views::form_refused()
                }
                Err(resp) => return *resp,
            }
        }
    }
    req.extensions_mut().insert(principal);
    next.run(req).await
}

fn csrf_denied() -> Box<Response> {
    Box::new(
        ApiError::Forbidden(
            "missing or wrong CSRF token: send the csrf_token from POST /auth/login (or GET /auth/me) \
             as the X-CSRF-Token header or a csrf_token form field"
                .into(),
        )
        .into_response(),
    )
}

/// Accept the token from the header, or from a form field (browser forms
/// cannot set headers); the form body is buffered and handed on intact.
async fn csrf_ok(req: Request, want: &str, max_body: u64) -> Result<Request, Box<Response>> {
    let matches = |got: &str| bool::from(got.as_bytes().ct_eq(want.as_bytes()));
    if let Some(got) = req.headers().get(CSRF_HEADER).and_then(|v| v.to_str().ok()) {
        return if matches(got) { Ok(req) } else { Err(csrf_denied()) };
    }
    let is_form = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !is_form {
        return Err(csrf_denied());
    }
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, usize::try_from(max_body).unwrap_or(usize::MAX)).await {
        Ok(b) => b,
        // A body that timed out is answered by the listener; anything else
        // that stops the read here is the size limit.
        Err(_) => return Err(Box::new(ApiError::body_too_large(max_body).into_response())),
    };
    let ok = form_urlencoded_field(&bytes, CSRF_FORM_FIELD).is_some_and(|v| matches(&v));
    if !ok {
        return Err(csrf_denied());
    }
    Ok(Request::from_parts(parts, axum::body::Body::from(bytes)))
}

fn form_urlencoded_field(body: &[u8], name: &str) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    text.split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| percent_decode(v))
}

/// `application/x-www-form-urlencoded` value decoding (`+` is a space).
pub fn percent_decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_and_cookies() {
        assert_eq!(
            form_urlencoded_field(b"a=1&csrf_token=ab%2Bc+d", "csrf_token").as_deref(),
            Some("ab+c d")
        );
        assert_eq!(form_urlencoded_field(b"a=1", "csrf_token"), None);
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, "x=1; bty_session=abc; y=2".parse().unwrap());
        assert_eq!(cookie_value(&h, SESSION_COOKIE), Some("abc"));
    }
}
