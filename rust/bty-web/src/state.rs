//! What every handler can reach, passed explicitly as axum state.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{ConnectInfo, FromRef, FromRequestParts};
use axum::http::header;
use axum::http::request::Parts;
use axum::http::HeaderMap;
use bty_core::mac::MacAddr;

use crate::accounts::LoginLimiter;
use crate::catalog::CatalogStore;
use crate::config::Config;
use crate::db::Db;
use crate::error::ApiError;
use crate::ipxe::Templates;
use bty_control::metrics::Metrics;

/// Shared server state. One `Arc` underneath: axum clones the state for
/// every extractor and middleware on every request, and cloning a dozen
/// `Arc`s (plus a cancellation token, which takes a lock) showed up as ~6%
/// of the PXE hot path.
#[derive(Clone)]
pub struct AppState(Arc<AppParts>);

impl AppState {
    pub fn new(parts: AppParts) -> Self {
        AppState(Arc::new(parts))
    }
}

impl std::ops::Deref for AppState {
    type Target = AppParts;
    fn deref(&self) -> &AppParts {
        &self.0
    }
}

pub struct AppParts {
    pub config: Arc<Config>,
    pub db: Db,
    pub catalog: Arc<CatalogStore>,
    pub ipxe: Arc<Templates>,
    pub metrics: Arc<Metrics>,
    /// Client for proxying http(s) image origins.
    pub http: reqwest::Client,
    pub logins: Arc<LoginLimiter>,
    /// The admin still has the default password (shown by `/auth/me`, `/healthz`).
    pub default_password: Arc<AtomicBool>,
    /// Permits for backups running at once (`[tuning] backup_max_parallel`).
    pub backups: Arc<tokio::sync::Semaphore>,
    /// Held for the server's lifetime: one bty-web per state directory.
    pub state_lock: Arc<crate::backup::StateLock>,
    /// The netboot artifact fetch: one at a time, with progress and cancel.
    pub netboot: Arc<crate::netboot::Fetcher>,
    pub started: Instant,
    /// MACs whose record changed (PXE contact, report, save, delete), for
    /// the browser UI's live views. Nobody listening costs nothing.
    pub changes: tokio::sync::broadcast::Sender<MacAddr>,
    /// Cancelled when the server starts shutting down, so long-lived
    /// responses (the UI's event streams) end and shutdown does not wait on them.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// The browser UI's templates and assets.
    pub ui: Arc<crate::views::Views>,
    /// TFTP and ProxyDHCP, started and stopped by their switches.
    pub boot_services: Arc<crate::boot_services::BootServices>,
    /// Remote images kept on disk (`None`: `[cache] enabled = false`).
    pub cache: Option<bty_control::cache::ImageCache>,
    /// Online CIJOE runs: the queue, the server's SSH key.
    pub online: Arc<bty_control::online::OnlineRunner>,
    /// The appliance's own download or apply (one at a time).
    pub os_jobs: bty_control::appliance_os::Jobs,
}

impl FromRef<AppState> for Arc<Metrics> {
    fn from_ref(s: &AppState) -> Self {
        s.metrics.clone()
    }
}

fn safe_host(h: &str) -> bool {
    !h.is_empty() && h.len() <= 255 && h.chars().all(|c| c.is_ascii_alphanumeric() || ".-:[]_".contains(c))
}

impl AppState {
    /// Tell live views a machine changed; a lagging or absent listener is fine.
    pub fn machine_changed(&self, mac: MacAddr) {
        let _ = self.changes.send(mac);
    }

    /// The URL machines reach this server at: `[server] public_url`, else the
    /// request's Host header (what the machine itself used to get here).
    /// The Host is checked because it ends up inside iPXE scripts.
    pub fn base_url(&self, headers: &HeaderMap) -> Result<String, ApiError> {
        if let Some(u) = &self.config.server.public_url {
            return Ok(u.clone());
        }
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
        if !safe_host(host) {
            return Err(ApiError::BadRequest(
                "missing or unusable Host header; set [server] public_url (BTY_SERVER_PUBLIC_URL)".into(),
            ));
        }
        Ok(format!("http://{host}"))
    }
}

/// The peer's address (IPv4-mapped IPv6 shown as IPv4), when known.
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub Option<IpAddr>);

impl ClientIp {
    pub fn string(&self) -> Option<String> {
        self.0.map(|ip| ip.to_string())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let ip = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| match c.0.ip() {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6)),
            v4 => v4,
        });
        Ok(ClientIp(ip))
    }
}
