//! The router, built from [`crate::route_table::ROUTES`]: each route's
//! handler, its body limit, and the auth guard and request counters on
//! every route.

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put, MethodRouter};
use axum::Router;

use crate::error::BodyLimit;
use crate::handlers::{
    auth, backups, cache, events, files, machines, netboot, os, pxe, runs, system, ui, workflows,
};
use crate::route_table::{BodyRule, Route, ROUTES};
use crate::state::AppState;

fn endpoint(r: &Route) -> MethodRouter<AppState> {
    match (r.method.as_str(), r.path) {
        ("GET", "/") => get(ui::site_root),
        ("GET", "/healthz") => get(system::healthz),
        ("GET", "/version") => get(system::version),
        ("GET", "/metrics") => get(system::metrics),
        ("GET", "/pxe-bootstrap.ipxe") => get(pxe::bootstrap),
        // Explicit HEAD handlers: a GET handler answering HEAD would make
        // an offer (and a token) that nobody boots.
        ("GET", "/pxe/{mac}") => get(pxe::script).head(pxe::head_script),
        ("GET", "/pxe/{mac}/plan") => get(pxe::plan).head(pxe::head_plan),
        ("POST", "/pxe/{mac}/done") => post(pxe::done),
        ("POST", "/pxe/{mac}/status") => post(pxe::status),
        ("POST", "/pxe/{mac}/inventory") => post(pxe::inventory),
        ("GET", "/boot/{name}") => get(files::boot_get),
        ("PUT", "/boot/{name}") => put(files::boot_put),
        ("GET", "/images") => get(files::images_list),
        ("GET", "/images/{name}") => get(files::image_get),
        ("PUT", "/images/{name}") => put(files::image_put),
        ("POST", "/images/{name}/prefetch") => post(cache::prefetch),
        ("GET", "/cache") => get(cache::list),
        ("POST", "/pxe/{mac}/cijoe") => post(runs::pxe_report),
        ("GET", "/pxe/{mac}/workflow") => get(runs::pxe_workflow),
        ("GET", "/machines/{mac}/runs") => get(runs::list),
        ("GET", "/runs/{id}") => get(runs::get),
        ("GET", "/runs/{id}/report") => get(runs::report),
        ("POST", "/machines/{mac}/runs") => post(runs::create),
        ("DELETE", "/runs/{id}") => delete(runs::cancel),
        ("PUT", "/machines/{mac}/baseline") => put(runs::put_baseline),
        ("DELETE", "/machines/{mac}/ssh-host-key") => delete(runs::delete_host_key),
        ("GET", "/cijoe/ssh-public-key") => get(runs::ssh_public_key),
        ("GET", "/workflows") => get(workflows::list),
        ("GET", "/workflows/{name}") => get(workflows::get),
        ("PUT", "/workflows/{name}") => put(workflows::put),
        ("DELETE", "/workflows/{name}") => delete(workflows::delete),
        ("DELETE", "/cache/{digest}") => delete(cache::evict),
        ("GET", "/catalog.toml") => get(files::catalog_toml),
        ("POST", "/catalog/reload") => post(files::catalog_reload),
        ("POST", "/catalog/images") => post(files::catalog_add),
        ("GET", "/machines") => get(machines::list),
        ("GET", "/machines/{mac}") => get(machines::show),
        ("PUT", "/machines/{mac}") => put(machines::replace),
        ("DELETE", "/machines/{mac}") => delete(machines::remove),
        ("GET", "/machines/{mac}/lshw.json") => get(machines::lshw),
        ("GET", "/machines/{mac}/flashes") => get(machines::flashes),
        ("GET", "/events") => get(events::list),
        ("POST", "/events/{id}/ack") => post(events::ack),
        ("POST", "/events/ack") => post(events::ack_matching),
        ("GET", "/os") => get(os::status),
        ("GET", "/os/releases/latest") => get(os::latest),
        ("POST", "/os/download") => post(os::download),
        ("POST", "/os/apply") => post(os::apply),
        ("GET", "/backups") => get(backups::list),
        ("POST", "/backups") => post(backups::create),
        ("GET", "/backups/schedule") => get(backups::schedule_get),
        ("PUT", "/backups/schedule") => put(backups::schedule_put),
        ("GET", "/backups/{name}/{file}") => get(backups::download),
        ("DELETE", "/backups/{name}") => delete(backups::remove),
        ("GET", "/netboot") => get(netboot::status),
        ("GET", "/netboot/fetch") => get(netboot::fetch_status),
        ("POST", "/netboot/fetch") => post(netboot::fetch),
        ("DELETE", "/netboot/fetch") => delete(netboot::cancel),
        ("GET", "/netboot/services") => get(netboot::services),
        ("PUT", "/netboot/services/{name}") => put(netboot::put_service),
        ("POST", "/auth/login") => post(auth::login),
        ("POST", "/auth/logout") => post(auth::logout),
        ("GET", "/auth/me") => get(auth::me),
        ("PUT", "/auth/password") => put(auth::change_password),
        ("GET", "/auth/tokens") => get(auth::list_tokens),
        ("POST", "/auth/tokens") => post(auth::create_token),
        ("DELETE", "/auth/tokens/{id}") => delete(auth::revoke_token),
        ("GET", "/ui/assets/{file}") => get(ui::asset),
        ("GET", "/ui/login") => get(ui::account::login_form),
        ("POST", "/ui/login") => post(ui::account::login),
        ("POST", "/ui/logout") => post(ui::account::logout),
        ("GET", "/ui") => get(ui::root),
        ("GET", "/ui/") => get(ui::dashboard::page),
        ("GET", "/ui/account") => get(ui::account::account),
        ("POST", "/ui/account/password") => post(ui::account::change_password),
        ("POST", "/ui/account/tokens") => post(ui::account::create_token),
        ("POST", "/ui/account/tokens/{id}/revoke") => post(ui::account::revoke_token),
        ("GET", "/ui/machines") => get(ui::machines::list),
        ("POST", "/ui/machines") => post(ui::machines::add),
        ("GET", "/ui/machines/stream") => get(ui::machines::stream),
        ("GET", "/ui/machines/{mac}") => get(ui::machines::show),
        ("POST", "/ui/machines/{mac}") => post(ui::machines::assign),
        ("POST", "/ui/machines/{mac}/delete") => post(ui::machines::delete),
        ("GET", "/ui/machines/{mac}/inventory.json") => get(ui::machines::inventory_json),
        ("GET", "/ui/images") => get(ui::catalog::images),
        ("POST", "/ui/images/reload") => post(ui::catalog::reload),
        ("POST", "/ui/images/url") => post(ui::catalog::add_url),
        ("POST", "/ui/images/{name}/prefetch") => post(ui::catalog::prefetch),
        ("POST", "/ui/cache/{digest}/evict") => post(ui::catalog::evict),
        ("GET", "/ui/runs/{id}") => get(ui::machines::run_page),
        ("POST", "/ui/machines/{mac}/runs") => post(ui::machines::start_run),
        ("POST", "/ui/runs/{id}/cancel") => post(ui::machines::cancel_run),
        ("POST", "/ui/runs/{id}/baseline") => post(ui::machines::promote_run),
        ("POST", "/ui/machines/{mac}/ssh-host-key/forget") => post(ui::machines::forget_host_key),
        ("GET", "/ui/workflows") => get(ui::workflows::page),
        ("POST", "/ui/workflows") => post(ui::workflows::save),
        ("POST", "/ui/workflows/{name}/delete") => post(ui::workflows::delete),
        ("GET", "/ui/netboot") => get(ui::catalog::netboot),
        ("POST", "/ui/netboot/fetch") => post(ui::catalog::fetch),
        ("POST", "/ui/netboot/cancel") => post(ui::catalog::cancel_fetch),
        ("GET", "/ui/events") => get(ui::events::page),
        ("POST", "/ui/events/ack") => post(ui::events::ack),
        ("GET", "/ui/os") => get(ui::os::page),
        ("POST", "/ui/os/download") => post(ui::os::download),
        ("POST", "/ui/os/apply") => post(ui::os::apply),
        ("GET", "/ui/backups") => get(ui::backups::page),
        ("POST", "/ui/backups") => post(ui::backups::create),
        ("POST", "/ui/backups/{name}/delete") => post(ui::backups::delete),
        ("GET", "/ui/settings") => get(ui::settings::page),
        ("POST", "/ui/settings") => post(ui::settings::save),
        ("POST", "/ui/settings/services") => post(ui::settings::switch_service),
        ("POST", "/ui/settings/catalog") => post(ui::settings::fetch_catalog),
        (m, p) => panic!("route {m} {p} is listed in ROUTES but has no handler"),
    }
}

/// `[limits] max_body_bytes` for every route that does not stream its body,
/// with one answer however the body is read: a declared length over the
/// limit is refused before anything is read, a longer body is cut at the
/// limit, and any 413 the handler's extractor (`Json`, `Form`, `Bytes`, ...)
/// makes of that becomes the same JSON naming the limit and its key.
async fn limit_body(State(limit): State<BodyLimit>, req: Request, next: Next) -> Response {
    let declared =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit.bytes) {
        return crate::error::ApiError::body_over(limit).into_response();
    }
    let cap = usize::try_from(limit.bytes).unwrap_or(usize::MAX);
    let req = req.map(|b| axum::body::Body::new(http_body_util::Limited::new(b, cap)));
    let resp = next.run(req).await;
    if resp.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return crate::error::ApiError::body_over(limit).into_response();
    }
    resp
}

/// An upload may take as long as its bytes keep coming (see `listener`).
async fn streamed_body(req: Request, next: Next) -> Response {
    if let Some(clock) = req.extensions().get::<crate::listener::BodyClock>() {
        clock.streaming();
    }
    next.run(req).await
}

/// Build the router from [`ROUTES`] with the auth guard and metrics on every route.
pub fn router(state: AppState) -> Router {
    let limits = &state.config.limits;
    let limit = BodyLimit { bytes: limits.max_body_bytes, key: "max_body_bytes" };
    // What a PXE client may make the server store is bounded tighter.
    let inventory = if limits.max_inventory_bytes < limit.bytes {
        BodyLimit { bytes: limits.max_inventory_bytes, key: "max_inventory_bytes" }
    } else {
        limit
    };
    let mut router = Router::new();
    let mut seen = std::collections::HashSet::new();
    for path in ROUTES.iter().map(|r| r.path).filter(|p| seen.insert(*p)) {
        let mut methods: MethodRouter<AppState> = MethodRouter::new();
        for r in ROUTES.iter().filter(|r| r.path == path) {
            let ep = match r.body_rule() {
                None => endpoint(r),
                Some(BodyRule::Streamed) => endpoint(r).layer(middleware::from_fn(streamed_body)),
                Some(BodyRule::Inventory) => {
                    endpoint(r).layer(middleware::from_fn_with_state(inventory, limit_body))
                }
                Some(BodyRule::Limited) => {
                    endpoint(r).layer(middleware::from_fn_with_state(limit, limit_body))
                }
            };
            methods = methods.merge(ep);
        }
        router = router.route(path, methods);
    }
    router
        .route_layer(middleware::from_fn_with_state(state.clone(), crate::auth::require_auth))
        .route_layer(middleware::from_fn_with_state(state.metrics.clone(), crate::metrics::track))
        .fallback(system::not_found)
        // Extractors' own 2 MB default would be a second, different limit.
        .layer(DefaultBodyLimit::disable())
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}
