//! The route table: every route the server answers, with its access level
//! and how its body is bounded. The router ([`crate::routes`]), the auth
//! guard ([`crate::auth`]) and the request counters ([`crate::metrics`])
//! read this one table, so a route's access level is declared exactly once
//! and anything not marked [`Access::Open`] requires a login.

use axum::http::Method;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Firmware, live agents and monitoring cannot log in.
    Open,
    /// Needs a session cookie (plus CSRF token for writes) or an API token.
    Operator,
}

/// How a route's request body is bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyRule {
    /// `[limits] max_body_bytes`, answered with one JSON 413. The default
    /// for methods that carry a body.
    Limited,
    /// `[limits] max_inventory_bytes`: what a PXE client may make the
    /// server store is bounded tighter.
    Inventory,
    /// Streamed by the handler, which enforces its own limit
    /// (`[limits] max_upload_bytes`); only a stall ends it (see `listener`).
    Streamed,
}

#[derive(Debug)]
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    pub access: Access,
    /// `None`: [`BodyRule::Limited`] for methods with a body, nothing to
    /// bound for `GET` and `DELETE` (their handlers read no body).
    pub body: Option<BodyRule>,
}

const fn route(method: Method, path: &'static str, access: Access) -> Route {
    Route { method, path, access, body: None }
}

const fn route_with_body(method: Method, path: &'static str, access: Access, rule: BodyRule) -> Route {
    Route { method, path, access, body: Some(rule) }
}

impl Route {
    pub fn body_rule(&self) -> Option<BodyRule> {
        self.body.or_else(|| {
            (self.method != Method::GET && self.method != Method::DELETE).then_some(BodyRule::Limited)
        })
    }
}

use Access::{Open, Operator};

/// Every route the server answers. `GET` routes answer `HEAD` too.
pub static ROUTES: &[Route] = &[
    // A browser pointed at the server lands in the UI.
    route(Method::GET, "/", Open),
    route(Method::GET, "/healthz", Open),
    route(Method::GET, "/version", Open),
    route(Method::GET, "/metrics", Open),
    route(Method::GET, "/pxe-bootstrap.ipxe", Open),
    route(Method::GET, "/pxe/{mac}", Open),
    route(Method::GET, "/pxe/{mac}/plan", Open),
    route(Method::POST, "/pxe/{mac}/done", Open),
    route(Method::POST, "/pxe/{mac}/status", Open),
    route_with_body(Method::POST, "/pxe/{mac}/inventory", Open, BodyRule::Inventory),
    route_with_body(Method::POST, "/pxe/{mac}/cijoe", Open, BodyRule::Streamed),
    route(Method::GET, "/pxe/{mac}/workflow", Open),
    route(Method::GET, "/boot/{name}", Open),
    route_with_body(Method::PUT, "/boot/{name}", Operator, BodyRule::Streamed),
    route(Method::GET, "/images", Open),
    route(Method::GET, "/images/{name}", Open),
    route_with_body(Method::PUT, "/images/{name}", Operator, BodyRule::Streamed),
    route(Method::POST, "/images/{name}/prefetch", Operator),
    route(Method::GET, "/machines/{mac}/runs", Operator),
    route(Method::GET, "/runs/{id}", Operator),
    route(Method::GET, "/runs/{id}/report", Operator),
    route(Method::POST, "/machines/{mac}/runs", Operator),
    route(Method::DELETE, "/runs/{id}", Operator),
    route(Method::PUT, "/machines/{mac}/baseline", Operator),
    route(Method::DELETE, "/machines/{mac}/ssh-host-key", Operator),
    route(Method::GET, "/cijoe/ssh-public-key", Operator),
    route(Method::GET, "/workflows", Operator),
    route(Method::GET, "/workflows/{name}", Operator),
    route_with_body(Method::PUT, "/workflows/{name}", Operator, BodyRule::Limited),
    route(Method::DELETE, "/workflows/{name}", Operator),
    route(Method::GET, "/cache", Operator),
    route(Method::DELETE, "/cache/{digest}", Operator),
    route(Method::GET, "/catalog.toml", Open),
    route(Method::POST, "/catalog/reload", Operator),
    route(Method::POST, "/catalog/images", Operator),
    route(Method::GET, "/machines", Operator),
    route(Method::GET, "/machines/{mac}", Operator),
    route(Method::PUT, "/machines/{mac}", Operator),
    route(Method::DELETE, "/machines/{mac}", Operator),
    route(Method::GET, "/machines/{mac}/lshw.json", Operator),
    route(Method::GET, "/machines/{mac}/flashes", Operator),
    route(Method::GET, "/events", Operator),
    route(Method::POST, "/events/{id}/ack", Operator),
    route(Method::POST, "/events/ack", Operator),
    route(Method::GET, "/os", Operator),
    route(Method::GET, "/os/releases/latest", Operator),
    route(Method::POST, "/os/download", Operator),
    route(Method::POST, "/os/apply", Operator),
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
    route(Method::GET, "/netboot/services", Operator),
    route(Method::PUT, "/netboot/services/{name}", Operator),
    route(Method::POST, "/auth/login", Open),
    route(Method::POST, "/auth/logout", Operator),
    route(Method::GET, "/auth/me", Operator),
    route(Method::PUT, "/auth/password", Operator),
    route(Method::GET, "/auth/tokens", Operator),
    route(Method::POST, "/auth/tokens", Operator),
    route(Method::DELETE, "/auth/tokens/{id}", Operator),
    // The browser UI. Unauthenticated requests to operator pages are
    // redirected to the login page instead of answered 401.
    route(Method::GET, "/ui/assets/{file}", Open),
    route(Method::GET, "/ui/login", Open),
    route(Method::POST, "/ui/login", Open),
    route(Method::POST, "/ui/logout", Operator),
    route(Method::GET, "/ui", Operator),
    route(Method::GET, "/ui/", Operator),
    route(Method::GET, "/ui/account", Operator),
    route(Method::POST, "/ui/account/password", Operator),
    route(Method::POST, "/ui/account/tokens", Operator),
    route(Method::POST, "/ui/account/tokens/{id}/revoke", Operator),
    route(Method::GET, "/ui/machines", Operator),
    route(Method::POST, "/ui/machines", Operator),
    route(Method::GET, "/ui/machines/stream", Operator),
    route(Method::GET, "/ui/machines/{mac}", Operator),
    route(Method::POST, "/ui/machines/{mac}", Operator),
    route(Method::POST, "/ui/machines/{mac}/delete", Operator),
    route(Method::GET, "/ui/machines/{mac}/inventory.json", Operator),
    route(Method::GET, "/ui/images", Operator),
    route(Method::POST, "/ui/images/reload", Operator),
    route(Method::POST, "/ui/images/url", Operator),
    route(Method::POST, "/ui/images/{name}/prefetch", Operator),
    route(Method::POST, "/ui/cache/{digest}/evict", Operator),
    route(Method::GET, "/ui/runs/{id}", Operator),
    route(Method::POST, "/ui/machines/{mac}/runs", Operator),
    route(Method::POST, "/ui/runs/{id}/cancel", Operator),
    route(Method::POST, "/ui/runs/{id}/baseline", Operator),
    route(Method::POST, "/ui/machines/{mac}/ssh-host-key/forget", Operator),
    route(Method::GET, "/ui/workflows", Operator),
    route(Method::POST, "/ui/workflows", Operator),
    route(Method::POST, "/ui/workflows/{name}/delete", Operator),
    route(Method::GET, "/ui/netboot", Operator),
    route(Method::POST, "/ui/netboot/fetch", Operator),
    route(Method::POST, "/ui/netboot/cancel", Operator),
    route(Method::GET, "/ui/events", Operator),
    route(Method::POST, "/ui/events/ack", Operator),
    route(Method::GET, "/ui/os", Operator),
    route(Method::POST, "/ui/os/download", Operator),
    route(Method::POST, "/ui/os/apply", Operator),
    route(Method::GET, "/ui/backups", Operator),
    route(Method::POST, "/ui/backups", Operator),
    route(Method::POST, "/ui/backups/{name}/delete", Operator),
    route(Method::GET, "/ui/settings", Operator),
    route(Method::POST, "/ui/settings", Operator),
    route(Method::POST, "/ui/settings/services", Operator),
    route(Method::POST, "/ui/settings/catalog", Operator),
];

/// Access of a matched route; unknown combinations are operator-only.
pub fn access(method: &Method, path: &str) -> Access {
    let method = if method == Method::HEAD { &Method::GET } else { method };
    ROUTES.iter().find(|r| r.path == path && r.method == *method).map(|r| r.access).unwrap_or(Operator)
}
