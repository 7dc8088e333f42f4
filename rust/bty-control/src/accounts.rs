//! Operator accounts: the admin account and its password, login sessions,
//! API tokens (storage and verification) and login rate limiting. The HTTP
//! side (cookies, CSRF, the guard in front of every route) is `bty-web`'s.
//!
//! Secrets (session cookies, API tokens) are random and stored only as
//! SHA-256 hashes, so a copy of the database logs nobody in.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OptionalExtension};

use crate::audit::Actor;
use crate::clock;
use crate::config::AdminConfig;
use crate::password;
use crate::secret::{random_secret, sha256_hex};

pub const DEFAULT_PASSWORD: &str = "bty";
pub const MIN_PASSWORD_LEN: usize = 8;
/// What every API token starts with, so a token is recognisable in a
/// secret scanner and a Bearer header is checked before any lookup.
pub const TOKEN_PREFIX: &str = "bty_";

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

/// The live session whose cookie hashes to `token_hash`.
pub fn session(conn: &Connection, token_hash: &str) -> rusqlite::Result<Option<Principal>> {
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

/// Who a (plain) API token belongs to, unless it is unknown or revoked.
pub fn token_principal(conn: &Connection, token: &str) -> rusqlite::Result<Option<Principal>> {
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

/// Bookkeeping for `GET /auth/tokens`: when a token was last used.
pub fn record_token_use(conn: &Connection, id: i64) -> rusqlite::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
