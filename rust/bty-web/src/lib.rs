//! `bty-web`: the provisioning server's HTTP front. Machines PXE-boot, the
//! server records them and answers each boot according to the machine's
//! policy; operators manage bindings over a JSON API and the browser UI.
//! The rules and the state behind every answer are `bty-control`'s; this
//! crate is the listener, the route table, the middleware (authentication,
//! CSRF, limits), the handlers, the UI and the wiring.
//!
//! The binary is [`serve`] plus argument parsing; tests build the same server
//! with [`App::prepare`] and [`App::serve`] on a loopback listener.

pub use bty_control::accounts;
pub use bty_control::audit;
pub mod auth;
pub mod boot_services;
pub use bty_control::backup;
pub use bty_control::bundle;
pub use bty_control::catalog;
pub use bty_control::catalog_edit;
pub use bty_control::cijoe;
pub use bty_control::clock;
pub use bty_control::config;
pub use bty_control::db;
pub mod error;
pub mod fileserve;
pub mod handlers;
pub use bty_control::health;
pub mod images;
pub use bty_control::ipxe;
pub mod listener;
pub use bty_control::machines;
pub mod metrics;
pub use bty_control::netboot;
pub use bty_control::password;
pub use bty_control::policy;
pub use bty_control::pxe;
pub use bty_control::runs;
pub mod route_table;
pub mod routes;
pub use bty_control::secret;
pub use bty_control::settings;
pub mod state;
pub mod views;
pub use bty_control::workflows;

use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use serde_json::json;
use tokio::net::TcpListener;

use crate::audit::{Actor, NewEvent};
use crate::config::Config;
use crate::state::{AppParts, AppState};

pub use crate::routes::router;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// A server ready to accept connections.
pub struct App {
    pub state: AppState,
}

impl App {
    /// Open the state, apply migrations, make sure the admin account exists
    /// and load the catalog. Everything here is quick (no network) except a
    /// catalog URL, which loads in the background.
    pub async fn prepare(config: Config) -> anyhow::Result<App> {
        let started = Instant::now();
        let config = Arc::new(config);
        let state_dir = &config.paths.state_dir;
        for warning in backup::secure_state_dir(state_dir)? {
            tracing::warn!("{warning}");
        }
        for dir in [&config.paths.boot_dir, &config.paths.images_dir] {
            // Created so operators see where files go; a read-only mount is
            // fine as long as it already holds the files.
            if let Err(e) = std::fs::create_dir_all(dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot create directory");
            }
        }
        bty_core::oci::configure(images::oci_settings(&config.oci)?);
        let state_lock = backup::lock_state_dir(state_dir)?;
        let state_db = state_dir.join(backup::DB_FILE);
        if !state_db.exists() {
            backup::create_private(&state_db)?;
        }
        let (db, reset) = db::Db::open(&state_db)?;
        if let Some(r) = &reset {
            let found = r.found_version.map(|v| v.to_string()).unwrap_or_else(|| "none".into());
            let archived = r.archived_to.display().to_string();
            tracing::warn!(%found, %archived, "state database was archived and replaced by a fresh one");
            let summary = format!(
                "state.db had schema version {found}, which this bty-web ({VERSION}) cannot use; it was archived \
                 to {archived} and a fresh database created. Machines re-register on their next PXE boot; \
                 bindings must be re-entered."
            );
            let details = json!({"found_version": r.found_version, "schema_version": db::SCHEMA_VERSION,
                                 "archived_to": archived});
            db.write(move |c| {
                audit::insert(
                    c,
                    &NewEvent::new("system.schema.reset", Actor::System, summary)
                        .subject("system", "state.db")
                        .details(details),
                )
            })
            .await?;
        }
        let admin = config.admin.clone();
        // Hashing on the writer thread is fine here: nothing is served yet.
        let default_password = db.write(move |c| accounts::ensure_admin(c, &admin)).await?;
        if default_password {
            tracing::warn!(
                user = %config.admin.username,
                "the admin password is the default `bty`: change it (PUT /auth/password) or set BTY_ADMIN_PASSWORD"
            );
        }
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(15))
            .user_agent(format!("bty-web/{VERSION}"))
            .build()
            .context("cannot build the HTTP client")?;
        let metrics = Arc::new(metrics::Metrics::default());
        let shutdown = tokio_util::sync::CancellationToken::new();
        let cache = if config.cache.enabled {
            // A stalled origin must not hold a fill (and its readers) forever.
            let upstream = reqwest::Client::builder()
                .connect_timeout(std::time::Duration::from_secs(15))
                .read_timeout(std::time::Duration::from_secs(60))
                .user_agent(format!("bty-web/{VERSION}"))
                .build()
                .context("cannot build the HTTP client")?;
            let c = bty_control::cache::ImageCache::new(
                bty_control::cache::CacheConfig {
                    dir: config.paths.cache_dir.clone(),
                    max_bytes: config.cache.max_bytes,
                    min_free_bytes: config.cache.min_free_bytes,
                },
                db.clone(),
                upstream,
                shutdown.clone(),
            )
            .with_context(|| {
                format!("cannot create the image cache in {}", config.paths.cache_dir.display())
            })?;
            c.reconcile().await;
            Some(c)
        } else {
            None
        };
        let changes = tokio::sync::broadcast::channel(256).0;
        let notify = changes.clone();
        let online = bty_control::online::OnlineRunner::new(
            db.clone(),
            config.clone(),
            Box::new(move |mac| {
                let _ = notify.send(mac);
            }),
        )
        .await
        .context("cannot prepare online provisioning (the server's SSH key)")?;
        let boot_services = Arc::new(boot_services::BootServices::new(
            config.clone(),
            db.clone(),
            metrics.clone(),
            changes.clone(),
        ));
        let state = AppState::new(AppParts {
            catalog: Arc::new(
                catalog::CatalogStore::new(config.paths.catalog.clone())
                    .keeping_copy_in(&config.paths.state_dir),
            ),
            ipxe: Arc::new(ipxe::Templates::new(config.boot.clone())),
            metrics,
            logins: Arc::new(accounts::LoginLimiter::new(config.auth.login_attempts_per_minute)),
            default_password: Arc::new(AtomicBool::new(default_password)),
            http,
            db,
            backups: Arc::new(tokio::sync::Semaphore::new(config.tuning.backup_max_parallel)),
            state_lock: Arc::new(state_lock),
            netboot: netboot::Fetcher::new(),
            config: config.clone(),
            started,
            changes,
            shutdown,
            ui: Arc::new(views::Views::new()),
            boot_services,
            cache,
            online,
            os_jobs: Default::default(),
        });
        if state.catalog.is_remote() {
            let s = state.clone();
            tokio::spawn(async move { refresh_remote_catalog(&s).await });
        } else {
            load_catalog(&state).await;
        }
        let file = config.file.as_ref().map(|p| p.display().to_string());
        state
            .db
            .write(move |c| {
                audit::insert(
                    c,
                    &NewEvent::new("system.started", Actor::System, format!("bty-web {VERSION} started"))
                        .subject("system", "bty-web")
                        .details(json!({"version": VERSION, "config_file": file})),
                )
            })
            .await?;
        // An update that failed its health checks shows as a tripwire once.
        let os = config.os.clone();
        if let Ok(Ok(app)) =
            tokio::task::spawn_blocking(move || bty_control::appliance_os::appliance(&os)).await
        {
            bty_control::appliance_os::note_failed_update(&state.db, &app.status()).await?;
        }
        Ok(App { state })
    }

    /// Serve until `shutdown` resolves, then finish in-flight requests.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        // The scheduler holds the state (and so the state directory's lock):
        // it ends with the server.
        let scheduler = tokio::spawn(handlers::backups::scheduler(self.state.clone()));
        let retention = tokio::spawn(retention(self.state.clone()));
        let streams = self.state.shutdown.clone();
        let shutdown = async move {
            shutdown.await;
            streams.cancel();
        };
        // ProxyDHCP names bty-web's real port in the URLs it hands out.
        if let Ok(at) = listener.local_addr() {
            self.state.boot_services.set_http_port(at.port());
        }
        self.state.boot_services.apply().await;
        let services = self.state.boot_services.clone();
        let server = &self.state.config.server;
        let fds = listener::fd_limit();
        let limits = listener::Limits {
            idle_timeout: server.idle_timeout,
            body_timeout: server.body_timeout,
            max_connections: listener::connection_cap(server.max_connections, fds),
        };
        tracing::info!(
            max_connections = limits.max_connections,
            open_file_limit = fds,
            "connections served at once"
        );
        listener::serve(listener, router(self.state), limits, shutdown).await;
        services.stop().await;
        scheduler.abort();
        retention.abort();
        let _ = scheduler.await;
        let _ = retention.await;
        Ok(())
    }
}

/// How often aged-out history is pruned.
const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(300);

/// Age out what PXE clients cause ([`audit::prune`]): shortly after start,
/// then every few minutes.
async fn retention(state: AppState) {
    tokio::time::sleep(std::time::Duration::from_secs(20)).await;
    loop {
        let a = state.config.audit;
        match audit::prune(&state.db, a.pxe_history_days, a.pxe_events_per_machine).await {
            Ok(p) if p.events + p.flash_history > 0 => {
                tracing::info!(events = p.events, flash_history = p.flash_history, "pruned aged-out history")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "pruning aged-out history failed; retrying later"),
        }
        tokio::time::sleep(PRUNE_EVERY).await;
    }
}

/// Fetch a remote catalog at start, then every `[paths]
/// catalog_refresh_seconds` until the server stops. A failure is a tripwire
/// once per distinct reason, not once per attempt; a catalog that changed is
/// recorded, a 304 is not.
async fn refresh_remote_catalog(state: &AppState) {
    load_catalog(state).await;
    let Some(every) = state.config.paths.catalog_refresh else { return };
    let mut reported = state.catalog.last_error();
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let before = state.catalog.remote_status().etag;
        let location = state.catalog.location().to_string();
        let event = match state.catalog.reload().await {
            Ok(c) => {
                let after = state.catalog.remote_status().etag;
                reported = None;
                if before == after && after.is_some() {
                    continue;
                }
                let n = c.images.len();
                NewEvent::new("catalog.reloaded", Actor::System, format!("catalog fetched: {n} image(s)"))
                    .subject("catalog", location.clone())
                    .details(json!({"images": n, "location": location, "etag": after}))
            }
            Err(e) => {
                let why = state.catalog.last_error();
                if why == reported {
                    continue;
                }
                reported = why.clone();
                tracing::warn!("{}", why.as_deref().unwrap_or_default());
                NewEvent::new("catalog.failed", Actor::System, why.unwrap_or_else(|| e.to_string()))
                    .subject("catalog", location.clone())
                    .details(json!({"location": location, "problems": e.problems}))
            }
        };
        let _ = state.db.write(move |c| audit::insert(c, &event)).await;
    }
}

async fn load_catalog(state: &AppState) {
    let location = state.catalog.location().to_string();
    match state.catalog.reload().await {
        Ok(c) => tracing::info!(%location, images = c.images.len(), "catalog loaded"),
        Err(e) => {
            // With a remote catalog this says whether a kept copy is in use.
            let summary = state.catalog.last_error().unwrap_or_else(|| e.to_string());
            tracing::error!("{summary}");
            let details = json!({"location": location, "problems": e.problems});
            let _ = state
                .db
                .write(move |c| {
                    audit::insert(
                        c,
                        &NewEvent::new("catalog.failed", Actor::System, summary)
                            .subject("catalog", location)
                            .details(details),
                    )
                })
                .await;
        }
    }
}

/// Bind `[server] host:port` first (so a port clash fails at once and early
/// connections queue), then prepare and serve.
pub async fn serve(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    if let Err(e) = listener::raise_fd_limit() {
        tracing::warn!(error = %e, "cannot read the open-file limit");
    }
    let addr = format!("{}:{}", config.server.host, config.server.port);
    let listener = TcpListener::bind(&addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (set BTY_SERVER_HOST / BTY_SERVER_PORT)"))?;
    let local = listener.local_addr()?;
    let app = App::prepare(config).await?;
    let urls = match &app.state.config.server.public_url {
        Some(u) => vec![u.trim_end_matches('/').to_string()],
        None => listener::reachable_urls(local, &listener::host_addresses()),
    };
    let ui = urls.first().map(|u| format!("{u}/ui/")).unwrap_or_default();
    tracing::info!(
        "bty-web {VERSION} serving on {} (listening on {local}, state in {}); browser UI at {ui}",
        urls.join(", "),
        app.state.config.paths.state_dir.display()
    );
    app.serve(listener, shutdown).await
}
