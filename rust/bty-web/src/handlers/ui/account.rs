//! Login, logout and the account page (password, API tokens).

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{AppendHeaders, IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;
use serde_json::{json, Value};
use subtle::ConstantTimeEq;

use super::{field_errors, html_response, local_target, Ctx, Fields, PageMeta, UiError};
use crate::accounts;
use crate::auth;
use crate::error::ApiError;
use crate::handlers::auth as api;
use crate::state::{AppState, ClientIp};

/// A random value in a cookie and in the login form: a login can only be
/// posted from the page this server gave out (no login CSRF).
const LOGIN_COOKIE: &str = "bty_login";
/// The new API token, carried across the redirect after creating it and
/// cleared when shown, so it is on screen once and not in any URL.
const NEW_TOKEN_COOKIE: &str = "bty_new_token";

#[derive(Deserialize, Default)]
pub struct LoginQuery {
    next: Option<String>,
    notice: Option<String>,
}

fn login_page(
    app: &AppState,
    status: StatusCode,
    next: &str,
    username: &str,
    error: Option<&str>,
    notice: Option<&str>,
) -> Result<Response, UiError> {
    let token = crate::secret::random_secret();
    let data = json!({
        "base": {
            "title": "Log in",
            "css": app.ui.css_url(),
            "js": app.ui.js_url(),
            "version": crate::VERSION,
            "zone": "UTC",
            "notice": notice.and_then(super::notice),
        },
        "login_token": token,
        "next": local_target(next).unwrap_or(""),
        "username": username,
        "error": error,
    });
    let mut resp = html_response(status, app.ui.render("login", &data)?);
    let cookie = format!("{LOGIN_COOKIE}={token}; Path=/ui/login; HttpOnly; SameSite=Strict; Max-Age=3600");
    resp.headers_mut().append(header::SET_COOKIE, cookie.parse().map_err(ApiError::internal)?);
    Ok(resp)
}

pub async fn login_form(
    State(app): State<AppState>,
    Query(q): Query<LoginQuery>,
) -> Result<Response, UiError> {
    login_page(&app, StatusCode::OK, q.next.as_deref().unwrap_or(""), "", None, q.notice.as_deref())
}

pub async fn login(
    State(app): State<AppState>,
    ip: ClientIp,
    headers: HeaderMap,
    Form(f): Form<Vec<(String, String)>>,
) -> Result<Response, UiError> {
    let f = Fields(f);
    let (username, next) = (f.get("username").to_string(), f.get("next").to_string());
    let expected = auth::cookie_value(&headers, LOGIN_COOKIE).unwrap_or("");
    let sent = f.get("login_token");
    if expected.is_empty() || !bool::from(expected.as_bytes().ct_eq(sent.as_bytes())) {
        let msg = "The login form expired (or cookies are off). Try again.";
        return login_page(&app, StatusCode::FORBIDDEN, &next, &username, Some(msg), None);
    }
    match api::start_session(&app, ip, username.clone(), f.get("password").to_string()).await {
        Ok(s) => {
            let ttl = api::session_ttl(&app);
            let to = local_target(&next).unwrap_or("/ui/").to_string();
            Ok((
                AppendHeaders([
                    (header::SET_COOKIE, auth::session_cookie(&s.token, ttl.as_secs())),
                    (header::SET_COOKIE, format!("{LOGIN_COOKIE}=; Path=/ui/login; Max-Age=0")),
                ]),
                Redirect::to(&to),
            )
                .into_response())
        }
        Err(ApiError::Unauthorized(m)) => {
            login_page(&app, StatusCode::UNAUTHORIZED, &next, &username, Some(&m), None)
        }
        Err(ApiError::TooManyRequests(m)) => {
            login_page(&app, StatusCode::TOO_MANY_REQUESTS, &next, &username, Some(&m), None)
        }
        Err(e) => Err(e.into()),
    }
}

pub async fn logout(ctx: Ctx, ip: ClientIp) -> Result<Response, UiError> {
    api::end_session(&ctx.app, ip, &ctx.who).await?;
    Ok(([(header::SET_COOKIE, auth::clear_cookie())], Redirect::to("/ui/login?notice=bye")).into_response())
}

#[derive(Deserialize, Default)]
pub struct AccountQuery {
    notice: Option<String>,
}

async fn account_page(
    ctx: &Ctx,
    status: StatusCode,
    notice: Option<&str>,
    errors: Value,
    token_name: &str,
    new_token: Option<Value>,
) -> Result<Response, UiError> {
    let tokens = ctx.app.db.read(accounts::list_tokens).await?;
    let tokens: Vec<Value> = tokens
        .iter()
        .map(|t| {
            json!({
                "id": t.id,
                "name": t.name,
                "created_by": t.created_by,
                "created_at": ctx.time(Some(&t.created_at)),
                "last_used_at": t.last_used_at.as_deref().map(|x| ctx.time(Some(x))),
                "revoked_at": t.revoked_at.as_deref().map(|x| ctx.time(Some(x))),
            })
        })
        .collect();
    ctx.page(
        status,
        PageMeta { name: "account", title: "Account".into(), nav: "account", notice },
        json!({"tokens": tokens, "errors": errors, "token_name": token_name, "new_token": new_token}),
    )
}

pub async fn account(
    ctx: Ctx,
    headers: HeaderMap,
    Query(q): Query<AccountQuery>,
) -> Result<Response, UiError> {
    // `id:name:token`; shown once, then the cookie is cleared.
    let new_token = auth::cookie_value(&headers, NEW_TOKEN_COOKIE).and_then(|v| {
        let mut parts = v.splitn(2, ':');
        let name = auth::percent_decode(parts.next()?);
        let token = parts.next()?.to_string();
        Some(json!({"name": name, "token": token}))
    });
    let mut resp =
        account_page(&ctx, StatusCode::OK, q.notice.as_deref(), json!({}), "", new_token.clone()).await?;
    if new_token.is_some() {
        let clear = format!("{NEW_TOKEN_COOKIE}=; Path=/ui/account; HttpOnly; SameSite=Strict; Max-Age=0");
        resp.headers_mut().append(header::SET_COOKIE, clear.parse().map_err(ApiError::internal)?);
    }
    Ok(resp)
}

pub async fn change_password(
    ctx: Ctx,
    ip: ClientIp,
    Form(f): Form<Vec<(String, String)>>,
) -> Result<Response, UiError> {
    let f = Fields(f);
    let (current, new) = (f.get("current_password").to_string(), f.get("new_password").to_string());
    if new != f.get("confirm_password") {
        let errors = field_errors("confirm_password", "does not match the new password");
        return account_page(&ctx, StatusCode::UNPROCESSABLE_ENTITY, None, errors, "", None).await;
    }
    match api::set_own_password(&ctx.app, ip, &ctx.who, current, new).await {
        Ok(()) => Ok(Redirect::to("/ui/account?notice=password").into_response()),
        Err(ApiError::Unprocessable { field, reason }) => {
            let errors = field_errors(&field, &reason);
            account_page(&ctx, StatusCode::UNPROCESSABLE_ENTITY, None, errors, "", None).await
        }
        Err(e) => Err(e.into()),
    }
}

pub async fn create_token(
    ctx: Ctx,
    ip: ClientIp,
    Form(f): Form<Vec<(String, String)>>,
) -> Result<Response, UiError> {
    let f = Fields(f);
    let name = f.get("name");
    match api::issue_token(&ctx.app, ip, &ctx.who, name).await {
        Ok((_, token, _)) => {
            let cookie = format!(
                "{NEW_TOKEN_COOKIE}={}:{token}; Path=/ui/account; HttpOnly; SameSite=Strict; Max-Age=300",
                super::encode(name.trim())
            );
            Ok(([(header::SET_COOKIE, cookie)], Redirect::to("/ui/account")).into_response())
        }
        Err(ApiError::Unprocessable { field, reason }) => {
            let errors = field_errors(&field, &reason);
            account_page(&ctx, StatusCode::UNPROCESSABLE_ENTITY, None, errors, name, None).await
        }
        Err(e) => Err(e.into()),
    }
}

pub async fn revoke_token(ctx: Ctx, ip: ClientIp, Path(id): Path<String>) -> Result<Response, UiError> {
    let id: i64 = id.parse().map_err(|_| ApiError::BadRequest(format!("{id:?} is not a token id")))?;
    if !api::revoke(&ctx.app, ip, &ctx.who, id).await? {
        return Err(ApiError::not_found(format!("no API token {id}")).into());
    }
    Ok(Redirect::to("/ui/account?notice=revoked").into_response())
}
