//! `/auth/*`: login, logout, password change, API tokens.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::json;

use crate::audit::{self, Actor, NewEvent};
use crate::auth::{self, Principal, Via};
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
    let stored = app.db.read(move |c| auth::stored_hash(c, &username)).await?;
    tokio::task::spawn_blocking(move || auth::verify_stored(&pass, stored.as_deref()))
        .await
        .map_err(ApiError::internal)
}

pub async fn login(
    State(app): State<AppState>,
    ip: ClientIp,
    ApiJson(body): ApiJson<Login>,
) -> Result<Response, ApiError> {
    if let Some(addr) = ip.0 {
        if !app.logins.allow(addr) {
            let mut resp = ApiError::TooManyRequests(format!(
                "too many login attempts from {addr}; wait a minute ([auth] login_attempts_per_minute = {})",
                app.config.auth.login_attempts_per_minute
            ))
            .into_response();
            resp.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("60"));
            return Ok(resp);
        }
    }
    let ttl = Duration::from_secs(app.config.auth.session_ttl_hours * 3600);
    let username = body.username.clone();
    let src = ip.string();
    let ok = check(&app, body.username.clone(), body.password).await?;
    let session = app
        .db
        .write(move |c| {
            if !ok {
                audit::insert(
                    c,
                    &NewEvent::new(
                        "auth.login.failed",
                        Actor::System,
                        format!("failed login as {:?}", body.username),
                    )
                    .subject("user", body.username.chars().take(64).collect::<String>())
                    .ip(src),
                )?;
                return Ok(None);
            }
            let s = auth::create_session(c, &body.username, ttl)?;
            audit::insert(
                c,
                &NewEvent::new("auth.login.succeeded", Actor::Operator(body.username.clone()), "logged in")
                    .subject("user", body.username.clone())
                    .ip(src),
            )?;
            Ok::<_, rusqlite::Error>(Some(s))
        })
        .await?;
    let Some(s) = session else {
        return Err(ApiError::Unauthorized("wrong username or password".into()));
    };
    let body = json!({
        "username": username,
        "csrf_token": s.csrf_token,
        "expires_at": clock::from_unix(s.expires_at),
        "default_password_in_use": app.default_password.load(Ordering::Relaxed),
    });
    Ok(([(header::SET_COOKIE, auth::session_cookie(&s.token, ttl.as_secs()))], Json(body)).into_response())
}

pub async fn logout(
    State(app): State<AppState>,
    ip: ClientIp,
    Extension(who): Extension<Principal>,
) -> Result<Response, ApiError> {
    let actor = who.actor();
    let hash = match &who.via {
        Via::Session { token_hash, .. } => Some(token_hash.clone()),
        Via::Token { .. } => None,
    };
    let user = who.username.clone();
    app.db
        .write(move |c| {
            if let Some(h) = &hash {
                auth::delete_session(c, h)?;
            }
            audit::insert(
                c,
                &NewEvent::new("auth.logout", actor, "logged out").subject("user", user).ip(ip.string()),
            )
        })
        .await?;
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

pub async fn change_password(
    State(app): State<AppState>,
    ip: ClientIp,
    Extension(who): Extension<Principal>,
    ApiJson(body): ApiJson<PasswordChange>,
) -> Result<StatusCode, ApiError> {
    if body.new_password.chars().count() < auth::MIN_PASSWORD_LEN {
        return Err(ApiError::field(
            "new_password",
            format!("must be at least {} characters", auth::MIN_PASSWORD_LEN),
        ));
    }
    let keep = match &who.via {
        Via::Session { token_hash, .. } => Some(token_hash.clone()),
        Via::Token { .. } => None,
    };
    if !check(&app, who.username.clone(), body.current_password).await? {
        return Err(ApiError::field("current_password", "is wrong"));
    }
    let new = body.new_password;
    let hash = tokio::task::spawn_blocking(move || password::hash(&new)).await.map_err(ApiError::internal)?;
    let actor = who.actor();
    let user = who.username.clone();
    app.db
        .write(move |c| {
            auth::set_password(c, &user, &hash, keep.as_deref())?;
            audit::insert(
                c,
                &NewEvent::new("auth.password.changed", actor, "password changed; other sessions ended")
                    .subject("user", user.clone())
                    .ip(ip.string()),
            )
        })
        .await?;
    app.default_password.store(false, Ordering::Relaxed);
    Ok(StatusCode::NO_CONTENT)
}

pub async fn list_tokens(State(app): State<AppState>) -> Result<Json<Vec<auth::TokenInfo>>, ApiError> {
    Ok(Json(app.db.read(auth::list_tokens).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    name: String,
}

pub async fn create_token(
    State(app): State<AppState>,
    ip: ClientIp,
    Extension(who): Extension<Principal>,
    ApiJson(body): ApiJson<NewToken>,
) -> Result<Response, ApiError> {
    let name = body.name.trim().to_string();
    if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
        return Err(ApiError::field("name", "must be 1-64 printable characters"));
    }
    let actor = who.actor();
    let user = who.username.clone();
    let (id, token, created_at) = app
        .db
        .write(move |c| {
            let (id, token, at) = auth::create_token(c, &name, &user)?;
            audit::insert(
                c,
                &NewEvent::new("auth.token.created", actor, format!("API token {name:?} created"))
                    .subject("token", id.to_string())
                    .ip(ip.string())
                    .details(json!({"name": name})),
            )?;
            Ok::<_, rusqlite::Error>((id, token, at))
        })
        .await?;
    let body = json!({
        "id": id,
        "name": body.name.trim(),
        "token": token,
        "created_at": created_at,
        "note": "shown once: store it now; send it as `Authorization: Bearer <token>`",
    });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

pub async fn revoke_token(
    State(app): State<AppState>,
    ip: ClientIp,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id: i64 = id.parse().map_err(|_| ApiError::BadRequest(format!("{id:?} is not a token id")))?;
    let actor = who.actor();
    let revoked = app
        .db
        .write(move |c| {
            let name = auth::revoke_token(c, id)?;
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
        .await?;
    if revoked {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no API token {id}")))
    }
}
