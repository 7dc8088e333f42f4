//! Operator authentication: the admin account, login sessions (cookie),
//! API tokens (Bearer), CSRF for cookie-authenticated writes, login rate
//! limiting, and the one middleware that guards every non-open route.
//!
//! Secrets (session cookies, API tokens) are random and stored only as
//! SHA-256 hashes; comparisons of secrets are constant-time.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rusqlite::{params, Connection, OptionalExtension};
use subtle::ConstantTimeEq;

use crate::audit::Actor;
use crate::clock;
use crate::config::AdminConfig;
use crate::error::ApiError;
use crate::password;
use crate::routes::{self, Access};
use crate::state::AppState;

pub const SESSION_COOKIE: &str = "bty_session";
pub const CSRF_HEADER: &str = "x-csrf-token";
pub const CSRF_FORM_FIELD: &str = "csrf_token";
pub const DEFAULT_PASSWORD: &str = "bty";
pub const MIN_PASSWORD_LEN: usize = 8;
const TOKEN_PREFIX: &str = "bty_";

/// Who is making an authenticated request (a request extension).
#[derive(Debug, Clone)]
pub struct Principal {
    pub username: String,
    pub via: Via,
}

#[derive(Debug, Clone)]
pub enum Via {
    Session { token_hash: String, csrf_token: String, expires_at: i64 },
    Token { id: i64, name: String },
}

impl Principal {
    pub fn actor(&self) -> Actor {
        match &self.via {
            Via::Session { .. } => Actor::Operator(self.username.clone()),
            Via::Token { name, .. } => Actor::Token(name.clone()),
        }
    }
}

pub use bty_control::secret::{random_secret, sha256_hex};

/// Make sure the admin account exists with the configured password.
/// Returns whether the default password is in use. Blocking (hashes).
pub fn ensure_admin(conn: &Connection, admin: &AdminConfig) -> rusqlite::Result<bool> {
    let now = clock::now_rfc3339();
    let stored: Option<String> = conn
        .query_row("SELECT password_hash FROM users WHERE username = ?", [&admin.username], |r| r.get(0))
        .optional()?;
    let store = |hash: String| {
        conn.execute(
            "INSERT INTO users (username, password_hash, created_at, updated_at) VALUES (?1, ?2, ?3, ?3)
             ON CONFLICT (username) DO UPDATE SET password_hash = ?2, updated_at = ?3",
            params![admin.username, hash, now],
        )
    };
    match (stored, admin.password_is_default) {
        (None, _) => {
            store(password::hash(&admin.password))?;
            Ok(admin.password == DEFAULT_PASSWORD)
        }
        // Nobody configured a password: keep whatever the operator set.
        (Some(hash), true) => Ok(password::verify(DEFAULT_PASSWORD, &hash)),
        (Some(hash), false) => {
            if !password::verify(&admin.password, &hash) {
                // A configured password replaces the old one like any
                // password change: old logins end, API tokens are revoked.
                let revoked = set_password(conn, &admin.username, &password::hash(&admin.password), None)?;
                if revoked > 0 {
                    tracing::warn!(
                        revoked,
                        "the configured admin password replaced the stored one: API tokens were revoked"
                    );
                }
            }
            Ok(admin.password == DEFAULT_PASSWORD)
        }
    }
}

/// A hash no password matches, verified when the user does not exist so a
/// failed login takes as long for a wrong name as for a wrong password.
fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| password::hash(&random_secret()))
}

pub fn stored_hash(conn: &Connection, username: &str) -> rusqlite::Result<Option<String>> {
    conn.query_row("SELECT password_hash FROM users WHERE username = ?", [username], |r| r.get(0)).optional()
}

/// Check a password against a stored hash (or the decoy for an unknown user).
/// Blocking and slow by design: run it off the async workers and without
/// holding a database connection.
pub fn verify_stored(pass: &str, stored: Option<&str>) -> bool {
    match stored {
        Some(h) => password::verify(pass, h),
        None => {
            password::verify(pass, decoy_hash());
            false
        }
    }
}

/// Store a new password hash. A password change is what an operator does
/// when a credential may have leaked, so every other session ends and every
/// API token is revoked with it (a token is a credential minted by whoever
/// held the password); only `keep_session`, the one making the change,
/// stays logged in. Returns how many tokens were revoked.
pub fn set_password(
    conn: &Connection,
    username: &str,
    hash: &str,
    keep_session: Option<&str>,
) -> rusqlite::Result<usize> {
    let now = clock::now_rfc3339();
    conn.execute(
        "UPDATE users SET password_hash = ?2, updated_at = ?3 WHERE username = ?1",
        params![username, hash, now],
    )?;
    conn.execute(
        "DELETE FROM sessions WHERE username = ?1 AND token_hash IS NOT ?2",
        params![username, keep_session],
    )?;
    conn.execute("UPDATE api_tokens SET revoked_at = ?1 WHERE revoked_at IS NULL", [now])
}

pub struct NewSession {
    pub token: String,
    pub csrf_token: String,
    pub expires_at: i64,
}

pub fn create_session(conn: &Connection, username: &str, ttl: Duration) -> rusqlite::Result<NewSession> {
    let token = random_secret();
    let csrf_token = random_secret();
    let expires_at = clock::unix_now() + ttl.as_secs() as i64;
    conn.execute("DELETE FROM sessions WHERE expires_at <= ?", [clock::unix_now()])?;
    conn.execute(
        "INSERT INTO sessions (token_hash, username, created_at, expires_at, csrf_token) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![sha256_hex(&token), username, clock::now_rfc3339(), expires_at, csrf_token],
    )?;
    Ok(NewSession { token, csrf_token, expires_at })
}

fn session(conn: &Connection, token_hash: &str) -> rusqlite::Result<Option<Principal>> {
    conn.prepare_cached(
        "SELECT username, csrf_token, expires_at FROM sessions WHERE token_hash = ?1 AND expires_at > ?2",
    )?
    .query_row(params![token_hash, clock::unix_now()], |r| {
        Ok(Principal {
            username: r.get(0)?,
            via: Via::Session {
                token_hash: token_hash.to_string(),
                csrf_token: r.get(1)?,
                expires_at: r.get(2)?,
            },
        })
    })
    .optional()
}

pub fn delete_session(conn: &Connection, token_hash: &str) -> rusqlite::Result<()> {
    conn.execute("DELETE FROM sessions WHERE token_hash = ?", [token_hash])?;
    Ok(())
}

/// Create an API token; the plain token is returned once and never stored.
pub fn create_token(
    conn: &Connection,
    name: &str,
    created_by: &str,
) -> rusqlite::Result<(i64, String, String)> {
    let token = format!("{TOKEN_PREFIX}{}", random_secret());
    let now = clock::now_rfc3339();
    conn.execute(
        "INSERT INTO api_tokens (name, token_hash, created_by, created_at) VALUES (?1, ?2, ?3, ?4)",
        params![name, sha256_hex(&token), created_by, now],
    )?;
    Ok((conn.last_insert_rowid(), token, now))
}

#[derive(Debug, serde::Serialize)]
pub struct TokenInfo {
    pub id: i64,
    pub name: String,
    pub created_by: String,
    pub created_at: String,
    pub last_used_at: Option<String>,
    pub revoked_at: Option<String>,
}

pub fn list_tokens(conn: &Connection) -> rusqlite::Result<Vec<TokenInfo>> {
    let mut stmt = conn.prepare(
        "SELECT id, name, created_by, created_at, last_used_at, revoked_at FROM api_tokens ORDER BY id",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(TokenInfo {
            id: r.get(0)?,
            name: r.get(1)?,
            created_by: r.get(2)?,
            created_at: r.get(3)?,
            last_used_at: r.get(4)?,
            revoked_at: r.get(5)?,
        })
    })?;
    rows.collect()
}

/// Revoke a token; `None` if it does not exist, else its name.
pub fn revoke_token(conn: &Connection, id: i64) -> rusqlite::Result<Option<String>> {
    let name: Option<String> =
        conn.query_row("SELECT name FROM api_tokens WHERE id = ?", [id], |r| r.get(0)).optional()?;
    if name.is_some() {
        conn.execute(
            "UPDATE api_tokens SET revoked_at = coalesce(revoked_at, ?2) WHERE id = ?1",
            params![id, clock::now_rfc3339()],
        )?;
    }
    Ok(name)
}

fn token_principal(conn: &Connection, token: &str) -> rusqlite::Result<Option<Principal>> {
    let found = conn
        .prepare_cached(
            "SELECT id, name, created_by FROM api_tokens WHERE token_hash = ? AND revoked_at IS NULL",
        )?
        .query_row([sha256_hex(token)], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?))
        })
        .optional()?;
    let Some((id, name, created_by)) = found else {
        return Ok(None);
    };
    Ok(Some(Principal { username: created_by, via: Via::Token { id, name } }))
}

fn record_token_use(conn: &Connection, id: i64) -> rusqlite::Result<()> {
    conn.prepare_cached("UPDATE api_tokens SET last_used_at = ?2 WHERE id = ?1")?
        .execute(params![id, clock::now_rfc3339()])
        .map(|_| ())
}

/// Login attempts in fixed one-minute windows per (source IP, username).
///
/// Keyed by both so an attacker guessing one name cannot lock the operator
/// out: not from another address, and not from the same address (a shared
/// NAT, the operator's own machine) under another name. A successful login
/// clears its key, so an operator who mistyped a few times starts afresh.
/// At most [`LOGIN_KEYS`] keys are tracked; beyond that, expired windows go
/// first, then the oldest, so a flood of made-up names costs bounded memory.
pub struct LoginLimiter {
    per_minute: u32,
    max_keys: usize,
    windows: Mutex<HashMap<(IpAddr, String), (Instant, u32)>>,
}

pub const LOGIN_KEYS: usize = 10_000;
const LOGIN_WINDOW: Duration = Duration::from_secs(60);

/// The part of a username a limiter key keeps: enough to tell real names
/// apart, never a megabyte per key.
fn login_key(ip: IpAddr, username: &str) -> (IpAddr, String) {
    (ip, username.chars().take(64).collect())
}

impl LoginLimiter {
    pub fn new(per_minute: u32) -> Self {
        Self::with_max_keys(per_minute, LOGIN_KEYS)
    }

    pub fn with_max_keys(per_minute: u32, max_keys: usize) -> Self {
        LoginLimiter { per_minute, max_keys: max_keys.max(1), windows: Mutex::new(HashMap::new()) }
    }

    /// Count an attempt; `false` when this address has used up its attempts
    /// for this username.
    pub fn allow(&self, ip: IpAddr, username: &str) -> bool {
        let now = Instant::now();
        let key = login_key(ip, username);
        let mut w = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        if !w.contains_key(&key) && w.len() >= self.max_keys {
            w.retain(|_, (start, _)| now.duration_since(*start) < LOGIN_WINDOW);
            if w.len() >= self.max_keys {
                let oldest = w.iter().min_by_key(|(_, (start, _))| *start).map(|(k, _)| k.clone());
                if let Some(k) = oldest {
                    w.remove(&k);
                }
            }
        }
        let entry = w.entry(key).or_insert((now, 0));
        if now.duration_since(entry.0) >= LOGIN_WINDOW {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
        entry.1 <= self.per_minute
    }

    /// A login succeeded: its earlier failures no longer count.
    pub fn succeeded(&self, ip: IpAddr, username: &str) {
        self.windows.lock().unwrap_or_else(|e| e.into_inner()).remove(&login_key(ip, username));
    }

    pub fn tracked(&self) -> usize {
        self.windows.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

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

/// The guard in front of every route: open routes (from [`routes::ROUTES`])
/// pass; everything else needs a session or a token, and cookie-authenticated
/// writes need the session's CSRF token.
pub async fn require_auth(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let path = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string());
    if let Some(path) = &path {
        if routes::access(req.method(), path) == Access::Open {
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
            crate::handlers::ui::login_redirect(wanted.as_deref())
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
        match app.db.read(move |c| token_principal(c, &token)).await {
            Ok(Some(p)) => {
                // Bookkeeping, not part of the request: a token still works
                // (reads above all) when its use cannot be recorded, say on a
                // full disk.
                if let Via::Token { id, .. } = p.via {
                    if let Err(e) = app.db.write(move |c| record_token_use(c, id)).await {
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
        match app.db.read(move |c| session(c, &hash)).await {
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
                    return crate::handlers::ui::form_refused()
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

    #[test]
    fn limiter_counts_per_ip_and_username() {
        let l = LoginLimiter::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(l.allow(a, "bty") && l.allow(a, "bty"));
        assert!(!l.allow(a, "bty"));
        assert!(l.allow(b, "bty"), "another address");
        assert!(l.allow(a, "admin"), "another username");
        l.succeeded(a, "bty");
        assert!(l.allow(a, "bty"), "a success starts afresh");
    }

    #[test]
    fn limiter_memory_is_bounded_and_the_oldest_goes() {
        let l = LoginLimiter::with_max_keys(1, 100);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(l.allow(a, "first"));
        assert!(!l.allow(a, "first"));
        for i in 0..1000 {
            l.allow(a, &format!("made-up-{i}"));
            assert!(l.tracked() <= 100);
        }
        assert!(l.allow(a, "first"), "the oldest key was evicted");
        l.allow(a, &"x".repeat(1 << 20));
        assert!(l.windows.lock().unwrap().keys().all(|(_, name)| name.len() <= 64));
    }
}
