//! `/auth/*`: login, logout, password change, API tokens.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::json;

use crate::accounts::{self, Principal, Via};
use crate::audit::{self, Actor, NewEvent};
use crate::auth;
use crate::clock;
use crate::error::{ApiError, ApiJson};
use crate::password;
use crate::state::{AppState, ClientIp};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Login {
    username: String,
    password: String,
}

/// Verify credentials without holding a database connection during the hash.
async fn check(app: &AppState, username: String, pass: String) -> Result<bool, ApiError> {
    let stored = app.db.read(move |c| accounts::stored_hash(c, &username)).await?;
    tokio::task::spawn_blocking(move || accounts::verify_stored(&pass, stored.as_deref()))
        .await
        .map_err(ApiError::internal)
}

/// Check credentials (rate-limited per source IP and username), audit the attempt and
/// open a session: the one login path for the API and the browser UI.
pub async fn start_session(
    app: &AppState,
    ip: ClientIp,
    username: String,
    pass: String,
) -> Result<accounts::NewSession, ApiError> {
    if let Some(addr) = ip.0 {
        if !app.logins.allow(addr, &username) {
            let shown: String = username.chars().take(64).collect();
            return Err(ApiError::TooManyRequests(format!(
                "too many login attempts as {shown:?} from {addr}: wait a minute and try again \
                 ([auth] login_attempts_per_minute = {}); other addresses and other usernames are not held up",
                app.config.auth.login_attempts_per_minute
            )));
        }
    }
    let ttl = session_ttl(app);
    let src = ip.string();
    let who = username.clone();
    let ok = check(app, username.clone(), pass).await?;
    let session = app
        .db
        .write(move |c| {
            if !ok {
                audit::insert(
                    c,
                    &NewEvent::new(
                        "auth.login.failed",
                        Actor::System,
                        format!("failed login as {username:?}"),
                    )
                    .subject("user", username.chars().take(64).collect::<String>())
                    .aggregate(src.as_deref().unwrap_or("unknown"))
                    .ip(src),
                )?;
                return Ok(None);
            }
            let s = accounts::create_session(c, &username, ttl)?;
            audit::insert(
                c,
                &NewEvent::new("auth.login.succeeded", Actor::Operator(username.clone()), "logged in")
                    .subject("user", username.clone())
                    .ip(src),
            )?;
            Ok::<_, rusqlite::Error>(Some(s))
        })
        .await?;
    let session = session.ok_or_else(|| ApiError::Unauthorized("wrong username or password".into()))?;
    if let Some(addr) = ip.0 {
        app.logins.succeeded(addr, &who);
    }
    Ok(session)
}

pub fn session_ttl(app: &AppState) -> Duration {
    Duration::from_secs(app.config.auth.session_ttl_hours * 3600)
}

pub async fn login(
    State(app): State<AppState>,
    ip: ClientIp,
    ApiJson(body): ApiJson<Login>,
) -> Result<Response, ApiError> {
    let username = body.username.clone();
    let s = match start_session(&app, ip, body.username, body.password).await {
        Ok(s) => s,
        Err(e @ ApiError::TooManyRequests(_)) => {
            let mut resp = e.into_response();
            resp.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("60"));
            return Ok(resp);
        }
        Err(e) => return Err(e),
    };
    let body = json!({
        "username": username,
        "csrf_token": s.csrf_token,
        "expires_at": clock::from_unix(s.expires_at),
        "default_password_in_use": app.default_password.load(Ordering::Relaxed),
    });
    let ttl = session_ttl(&app);
    Ok(([(header::SET_COOKIE, auth::session_cookie(&s.token, ttl.as_secs()))], Json(body)).into_response())
}

/// End the caller's session (a token caller just records the logout).
pub async fn end_session(app: &AppState, ip: ClientIp, who: &Principal) -> Result<(), ApiError> {
    let actor = who.actor();
    let hash = match &who.via {
        Via::Session { token_hash, .. } => Some(token_hash.clone()),
        Via::Token { .. } => None,
    };
    let user = who.username.clone();
    app.db
        .write(move |c| {
            if let Some(h) = &hash {
                accounts::delete_session(c, h)?;
            }
            audit::insert(
                c,
                &NewEvent::new("auth.logout", actor, "logged out").subject("user", user).ip(ip.string()),
            )
        })
        .await?;
    Ok(())
}

pub async fn logout(
    State(app): State<AppState>,
    ip: ClientIp,
    Extension(who): Extension<Principal>,
) -> Result<Response, ApiError> {
    end_session(&app, ip, &who).await?;
    Ok((StatusCode::NO_CONTENT, [(header::SET_COOKIE, auth::clear_cookie())]).into_response())
}

pub async fn me(
    State(app): State<AppState>,
    Extension(who): Extension<Principal>,
) -> Json<serde_json::Value> {
    let default_password_in_use = app.default_password.load(Ordering::Relaxed);
    Json(match &who.via {
        Via::Session { csrf_token, expires_at, .. } => json!({
            "username": who.username,
            "auth": "session",
            "csrf_token": csrf_token,
            "expires_at": clock::from_unix(*expires_at),
            "default_password_in_use": default_password_in_use,
        }),
        Via::Token { id, name } => json!({
            "username": who.username,
            "auth": "token",
            "token": {"id": id, "name": name},
            "default_password_in_use": default_password_in_use,
        }),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasswordChange {
    current_password: String,
    new_password: String,
}

/// Change the caller's password; other sessions end and every API token is
/// revoked (see [`accounts::set_password`]). Field errors name
/// `current_password` or `new_password`.
pub async fn set_own_password(
    app: &AppState,
    ip: ClientIp,
    who: &Principal,
    current: String,
    new: String,
) -> Result<(), ApiError> {
    if new.chars().count() < accounts::MIN_PASSWORD_LEN {
        return Err(ApiError::field(
            "new_password",
            format!("must be at least {} characters", accounts::MIN_PASSWORD_LEN),
        ));
    }
    let keep = match &who.via {
        Via::Session { token_hash, .. } => Some(token_hash.clone()),
        Via::Token { .. } => None,
    };
    if !check(app, who.username.clone(), current).await? {
        return Err(ApiError::field("current_password", "is wrong"));
    }
    let hash = tokio::task::spawn_blocking(move || password::hash(&new)).await.map_err(ApiError::internal)?;
    let actor = who.actor();
    let user = who.username.clone();
    app.db
        .write(move |c| {
            let revoked = accounts::set_password(c, &user, &hash, keep.as_deref())?;
            audit::insert(
                c,
                &NewEvent::new(
                    "auth.password.changed",
                    actor,
                    format!("password changed; other sessions ended, {revoked} API token(s) revoked"),
                )
                .subject("user", user.clone())
                .ip(ip.string())
                .details(json!({"tokens_revoked": revoked})),
            )
        })
        .await?;
    app.default_password.store(false, Ordering::Relaxed);
    Ok(())
}

pub async fn change_password(
    State(app): State<AppState>,
    ip: ClientIp,
    Extension(who): Extension<Principal>,
    ApiJson(body): ApiJson<PasswordChange>,
) -> Result<StatusCode, ApiError> {
    set_own_password(&app, ip, &who, body.current_password, body.new_password).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn list_tokens(State(app): State<AppState>) -> Result<Json<Vec<accounts::TokenInfo>>, ApiError> {
    Ok(Json(app.db.read(accounts::list_tokens).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    name: String,
}

/// A new API token: `(id, plain token, created_at)`; the plain token exists
/// only in this answer.
pub async fn issue_token(
    app: &AppState,
    ip: ClientIp,
    who: &Principal,
    name: &str,
) -> Result<(i64, String, String), ApiError> {
    let name = name.trim().to_string();
    if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
        return Err(ApiError::field("name", "must be 1-64 printable characters"));
    }
    let actor = who.actor();
    let user = who.username.clone();
    Ok(app
        .db
        .write(move |c| {
            let (id, token, at) = accounts::create_token(c, &name, &user)?;
            audit::insert(
                c,
                &NewEvent::new("auth.token.created", actor, format!("API token {name:?} created"))
                    .subject("token", id.to_string())
                    .ip(ip.string())
                    .details(json!({"name": name})),
            )?;
            Ok::<_, rusqlite::Error>((id, token, at))
        })
        .await?)
}

pub async fn create_token(
    State(app): State<AppState>,
    ip: ClientIp,
    Extension(who): Extension<Principal>,
    ApiJson(body): ApiJson<NewToken>,
) -> Result<Response, ApiError> {
    let (id, token, created_at) = issue_token(&app, ip, &who, &body.name).await?;
    let body = json!({
        "id": id,
        "name": body.name.trim(),
        "token": token,
        "created_at": created_at,
        "note": "shown once: store it now; send it as `Authorization: Bearer <token>`",
    });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// Revoke a token; `false` if there is no such token.
pub async fn revoke(app: &AppState, ip: ClientIp, who: &Principal, id: i64) -> Result<bool, ApiError> {
    let actor = who.actor();
    Ok(app
        .db
        .write(move |c| {
            let name = accounts::revoke_token(c, id)?;
            if let Some(n) = &name {
                audit::insert(
                    c,
                    &NewEvent::new("auth.token.revoked", actor, format!("API token {n:?} revoked"))
                        .subject("token", id.to_string())
                        .ip(ip.string()),
                )?;
            }
            Ok::<_, rusqlite::Error>(name.is_some())
        })
        .await?)
}

pub async fn revoke_token(
    State(app): State<AppState>,
    ip: ClientIp,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id: i64 = id.parse().map_err(|_| ApiError::BadRequest(format!("{id:?} is not a token id")))?;
    if revoke(&app, ip, &who, id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no API token {id}")))
    }
}
