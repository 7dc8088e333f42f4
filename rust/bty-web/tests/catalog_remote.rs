//! A catalog at an http(s) URL: fetched with its ETag on a schedule (a 304
//! changes nothing and records nothing), a change picked up, a failing server
//! one tripwire however often it fails, the last good copy kept across a
//! restart, a size cap, and the Settings page's "Fetch latest catalog".

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use common::TestServer;

#[derive(Default)]
struct Origin {
    /// (status, body, etag)
    answer: Mutex<(u16, String, String)>,
    requests: AtomicUsize,
    conditional: AtomicUsize,
    not_modified: AtomicUsize,
}

fn catalog(names: &[&str]) -> String {
    let mut s = "version = 1\n".to_string();
    for n in names {
        s += &format!("[[images]]\nname = \"{n}\"\nsrc = \"https://example.org/{n}.img.zst\"\n");
    }
    s
}

async fn origin() -> (String, Arc<Origin>) {
    let o = Arc::new(Origin::default());
    *o.answer.lock().unwrap() = (200, catalog(&["one"]), "\"v1\"".into());
    let state = o.clone();
    let app = axum::Router::new().route(
        "/catalog.toml",
        get(move |h: HeaderMap| {
            let o = state.clone();
            async move {
                o.requests.fetch_add(1, Ordering::SeqCst);
                let (status, body, etag) = o.answer.lock().unwrap().clone();
                let sent = h.get("if-none-match").and_then(|v| v.to_str().ok()).map(str::to_string);
                if sent.is_some() {
                    o.conditional.fetch_add(1, Ordering::SeqCst);
                }
                if status == 200 && sent.as_deref() == Some(etag.as_str()) {
                    o.not_modified.fetch_add(1, Ordering::SeqCst);
                    return (StatusCode::NOT_MODIFIED, [("etag", etag)], String::new()).into_response();
                }
                (StatusCode::from_u16(status).unwrap(), [("etag", etag)], body).into_response()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/catalog.toml", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, o)
}

async fn images(s: &TestServer) -> Vec<String> {
    let (_, list) = s.get_json("/images").await;
    list.as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap().to_string()).collect()
}

async fn until(what: &str, mut f: impl AsyncFnMut() -> bool) {
    for _ in 0..100 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_catalog_is_refreshed_with_its_etag_and_survives_its_server() {
    let (url, o) = origin().await;
    let u = url.clone();
    let s = TestServer::start_with(move |c| {
        c.paths.catalog = u;
        c.paths.catalog_refresh = Some(Duration::from_millis(150));
    })
    .await;
    until("the first fetch", async || images(&s).await == ["one"]).await;
    let token = s.token().await;

    // Unchanged: asked with If-None-Match, answered 304, nothing recorded.
    until("two 304s", async || o.not_modified.load(Ordering::SeqCst) >= 2).await;
    assert_eq!(images(&s).await, ["one"]);
    assert_eq!(s.events(&token, "catalog.reloaded").await.len(), 0, "a 304 is not an event");

    // Changed at the origin: picked up by the schedule and recorded once.
    *o.answer.lock().unwrap() = (200, catalog(&["one", "two"]), "\"v2\"".into());
    until("the new catalog", async || images(&s).await == ["one", "two"]).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let reloaded = s.events(&token, "catalog.reloaded").await;
    assert_eq!(reloaded.len(), 1, "{reloaded:?}");
    assert_eq!(reloaded[0]["details"]["etag"], "\"v2\"");

    // The origin fails: the catalog stays; one tripwire, however many tries.
    *o.answer.lock().unwrap() = (500, "boom".into(), "\"x\"".into());
    let before = o.requests.load(Ordering::SeqCst);
    until("three failed tries", async || o.requests.load(Ordering::SeqCst) >= before + 3).await;
    assert_eq!(images(&s).await, ["one", "two"]);
    let failed = s.events(&token, "catalog.failed").await;
    assert_eq!(failed.len(), 1, "{failed:?}");
    let summary = failed[0]["summary"].as_str().unwrap();
    assert!(summary.contains("HTTP 500") && summary.contains("stays in use"), "{summary}");

    // The Settings page says so and fetches on demand.
    let (c, csrf) = s.login().await;
    let page = c.get(s.url("/ui/settings")).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("Fetch latest catalog") && page.contains("HTTP 500"), "{page}");
    assert!(page.contains("ETag <code>&quot;v2&quot;</code>"), "{page}");
    *o.answer.lock().unwrap() = (200, catalog(&["three"]), "\"v3\"".into());
    let r = c
        .post(s.url("/ui/settings/catalog"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("csrf_token={csrf}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let page = r.text().await.unwrap();
    assert!(page.contains("Catalog fetched"), "{page}");
    assert_eq!(images(&s).await, ["three"]);
    // Without the CSRF token the form is refused.
    let r = c
        .post(s.url("/ui/settings/catalog"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("csrf_token=wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    // A restart while the origin is down starts on the kept copy.
    *o.answer.lock().unwrap() = (503, "down".into(), "\"x\"".into());
    let dir = s.stop().await;
    let u = url.clone();
    let s = TestServer::start_in(dir, move |c| {
        c.paths.catalog = u;
        c.paths.catalog_refresh = None;
    })
    .await;
    until("the kept copy", async || images(&s).await == ["three"]).await;
    let token = s.token().await;
    let failed = s.events(&token, "catalog.failed").await;
    assert!(
        failed.iter().any(|e| e["summary"].as_str().unwrap().contains("using the copy fetched at")),
        "{failed:?}"
    );
    // Back up, unchanged since the copy: one conditional request, a 304.
    *o.answer.lock().unwrap() = (200, catalog(&["three"]), "\"v3\"".into());
    let n304 = o.not_modified.load(Ordering::SeqCst);
    let r = TestServer::client().post(s.url("/catalog/reload")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(o.not_modified.load(Ordering::SeqCst), n304 + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_remote_catalog_is_refused() {
    let (url, o) = origin().await;
    *o.answer.lock().unwrap() = (200, format!("version = 1\n#{}\n", "x".repeat(5 << 20)), "\"big\"".into());
    let s = TestServer::start_with(move |c| c.paths.catalog = url).await;
    let token = s.token().await;
    until("the failure", async || !s.events(&token, "catalog.failed").await.is_empty()).await;
    let failed = s.events(&token, "catalog.failed").await;
    assert!(failed[0]["summary"].as_str().unwrap().contains("larger than"), "{failed:?}");
    assert!(images(&s).await.is_empty());
}
