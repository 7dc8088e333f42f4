//! Request counting for `GET /metrics`: the middleware on every matched
//! route, labelled by method and route template. The counters themselves
//! are [`bty_control::metrics`].

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;

pub use bty_control::metrics::Metrics;

/// Route templates are interned so the label set stays the route table
/// (plus `other`, should a template ever be missing from it). Paths no route
/// matches (scanners) never get here: [`track`] is a route layer.
fn intern(route: Option<&str>) -> &'static str {
    route
        .and_then(|r| crate::route_table::ROUTES.iter().find(|x| x.path == r))
        .map(|x| x.path)
        .unwrap_or("other")
}

/// Methods HTTP defines for resources, as themselves; anything a client
/// makes up counts as `other`, or every made-up method would be a new
/// series (2,000 of them once made `/metrics` 142 MB).
fn method_label(method: &str) -> &'static str {
    const KNOWN: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"];
    KNOWN.into_iter().find(|m| *m == method).unwrap_or("other")
}

/// Middleware counting every response of a matched route by route template.
pub async fn track(State(metrics): State<std::sync::Arc<Metrics>>, req: Request, next: Next) -> Response {
    let method = method_label(req.method().as_str());
    let route = intern(req.extensions().get::<MatchedPath>().map(|m| m.as_str()));
    let resp = next.run(req).await;
    metrics.request(method, route, resp.status().as_u16());
    resp
}
