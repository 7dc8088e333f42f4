//! The route table. The router is built from [`ROUTES`] and the auth guard
//! reads the same table, so a route's access level is declared exactly once
//! and anything not marked [`Access::Open`] requires a login.

use axum::http::Method;
use axum::routing::{delete, get, post, put, MethodRouter};
use axum::Router;
use tower_http::limit::RequestBodyLimitLayer;

use crate::handlers::{auth, backups, events, files, machines, netboot, pxe, system};
use crate::state::AppState;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Firmware, live agents and monitoring cannot log in.
    Open,
    /// Needs a session cookie (plus CSRF token for writes) or an API token.
    Operator,
}

#[derive(Debug)]
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    pub access: Access,
}

const fn route(method: Method, path: &'static str, access: Access) -> Route {
    Route { method, path, access }
}

use Access::{Open, Operator};

/// Every route the server answers. `GET` routes answer `HEAD` too.
pub static ROUTES: &[Route] = &[
    route(Method::GET, "/healthz", Open),
    route(Method::GET, "/version", Open),
    route(Method::GET, "/metrics", Open),
    route(Method::GET, "/pxe-bootstrap.ipxe", Open),
    route(Method::GET, "/pxe/{mac}", Open),
    route(Method::GET, "/pxe/{mac}/plan", Open),
    route(Method::POST, "/pxe/{mac}/done", Open),
    route(Method::POST, "/pxe/{mac}/status", Open),
    route(Method::POST, "/pxe/{mac}/inventory", Open),
    route(Method::GET, "/boot/{name}", Open),
    route(Method::PUT, "/boot/{name}", Operator),
    route(Method::GET, "/images", Open),
    route(Method::GET, "/images/{name}", Open),
    route(Method::GET, "/catalog.toml", Open),
    route(Method::POST, "/catalog/reload", Operator),
    route(Method::GET, "/machines", Operator),
    route(Method::GET, "/machines/{mac}", Operator),
    route(Method::PUT, "/machines/{mac}", Operator),
    route(Method::DELETE, "/machines/{mac}", Operator),
    route(Method::GET, "/machines/{mac}/lshw.json", Operator),
    route(Method::GET, "/machines/{mac}/flashes", Operator),
    route(Method::GET, "/events", Operator),
    route(Method::POST, "/events/{id}/ack", Operator),
    route(Method::GET, "/backups", Operator),
    route(Method::POST, "/backups", Operator),
    route(Method::GET, "/backups/schedule", Operator),
    route(Method::PUT, "/backups/schedule", Operator),
    route(Method::GET, "/backups/{name}/{file}", Operator),
    route(Method::DELETE, "/backups/{name}", Operator),
    route(Method::GET, "/netboot", Operator),
    route(Method::GET, "/netboot/fetch", Operator),
    route(Method::POST, "/netboot/fetch", Operator),
    route(Method::DELETE, "/netboot/fetch", Operator),
    route(Method::POST, "/auth/login", Open),
    route(Method::POST, "/auth/logout", Operator),
    route(Method::GET, "/auth/me", Operator),
    route(Method::PUT, "/auth/password", Operator),
    route(Method::GET, "/auth/tokens", Operator),
    route(Method::POST, "/auth/tokens", Operator),
    route(Method::DELETE, "/auth/tokens/{id}", Operator),
];

/// Access of a matched route; unknown combinations are operator-only.
pub fn access(method: &Method, path: &str) -> Access {
    let method = if method == Method::HEAD { &Method::GET } else { method };
    ROUTES.iter().find(|r| r.path == path && r.method == *method).map(|r| r.access).unwrap_or(Operator)
}

/// Routes that stream their own bodies and enforce their own size limit.
fn streams_body(r: &Route) -> bool {
    r.method == Method::PUT && r.path == "/boot/{name}"
}

fn endpoint(r: &Route) -> MethodRouter<AppState> {
    match (r.method.as_str(), r.path) {
        ("GET", "/healthz") => get(system::healthz),
        ("GET", "/version") => get(system::version),
        ("GET", "/metrics") => get(system::metrics),
        ("GET", "/pxe-bootstrap.ipxe") => get(pxe::bootstrap),
        ("GET", "/pxe/{mac}") => get(pxe::script),
        ("GET", "/pxe/{mac}/plan") => get(pxe::plan),
        ("POST", "/pxe/{mac}/done") => post(pxe::done),
        ("POST", "/pxe/{mac}/status") => post(pxe::status),
        ("POST", "/pxe/{mac}/inventory") => post(pxe::inventory),
        ("GET", "/boot/{name}") => get(files::boot_get),
        ("PUT", "/boot/{name}") => put(files::boot_put),
        ("GET", "/images") => get(files::images_list),
        ("GET", "/images/{name}") => get(files::image_get),
        ("GET", "/catalog.toml") => get(files::catalog_toml),
        ("POST", "/catalog/reload") => post(files::catalog_reload),
        ("GET", "/machines") => get(machines::list),
        ("GET", "/machines/{mac}") => get(machines::show),
        ("PUT", "/machines/{mac}") => put(machines::replace),
        ("DELETE", "/machines/{mac}") => delete(machines::remove),
        ("GET", "/machines/{mac}/lshw.json") => get(machines::lshw),
        ("GET", "/machines/{mac}/flashes") => get(machines::flashes),
        ("GET", "/events") => get(events::list),
        ("POST", "/events/{id}/ack") => post(events::ack),
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
        ("POST", "/auth/login") => post(auth::login),
        ("POST", "/auth/logout") => post(auth::logout),
        ("GET", "/auth/me") => get(auth::me),
        ("PUT", "/auth/password") => put(auth::change_password),
        ("GET", "/auth/tokens") => get(auth::list_tokens),
        ("POST", "/auth/tokens") => post(auth::create_token),
        ("DELETE", "/auth/tokens/{id}") => delete(auth::revoke_token),
        (m, p) => panic!("route {m} {p} is listed in ROUTES but has no handler"),
    }
}

/// Build the router from [`ROUTES`] with the auth guard and metrics on every route.
pub fn router(state: AppState) -> Router {
    let limit = usize::try_from(state.config.limits.max_body_bytes).unwrap_or(usize::MAX);
    let mut router = Router::new();
    let mut seen = std::collections::HashSet::new();
    for path in ROUTES.iter().map(|r| r.path).filter(|p| seen.insert(*p)) {
        let mut methods: MethodRouter<AppState> = MethodRouter::new();
        for r in ROUTES.iter().filter(|r| r.path == path) {
            let ep = if streams_body(r) {
                endpoint(r)
            } else {
                endpoint(r).layer(RequestBodyLimitLayer::new(limit))
            };
            methods = methods.merge(ep);
        }
        router = router.route(path, methods);
    }
    router
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), crate::auth::require_auth))
        .route_layer(axum::middleware::from_fn_with_state(state.metrics.clone(), crate::metrics::track))
        .fallback(system::not_found)
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}
