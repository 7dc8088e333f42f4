//! What a client can make the server do with oversized or junk input: one
//! JSON 413 for every body over the limit, a bounded metrics label set,
//! machine labels refused before any work that grows faster than the input.

mod common;

use std::time::{Duration, Instant};

use common::{TestServer, MAC};
use reqwest::Method;
use serde_json::{json, Value};

const LIMIT: u64 = 1024;

/// A 413 in the one shape: JSON naming the limit and the key that sets it.
async fn assert_json_413(what: &str, r: reqwest::Response) {
    assert_eq!(r.status(), 413, "{what}");
    // The unread rest of the body means the connection ends: clients must
    // not reuse it.
    assert_eq!(r.headers().get("connection").map(|v| v.as_bytes()), Some(&b"close"[..]), "{what}");
    let kind = r.headers().get("content-type").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    assert!(kind.starts_with("application/json"), "{what}: content-type {kind:?}");
    let v: Value = r.json().await.unwrap();
    let msg = v["error"].as_str().unwrap_or_default();
    assert!(msg.contains("1024 bytes") && msg.contains("[limits] max_body_bytes"), "{what}: {v}");
}

fn streamed(len: usize) -> reqwest::Body {
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = vec![Ok(b"{\"a\": \"".to_vec()), Ok(vec![b'x'; len])];
    reqwest::Body::wrap_stream(futures_util::stream::iter(chunks))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_oversized_body_gets_the_same_json_413() {
    let s = TestServer::start_with(|c| c.limits.max_body_bytes = LIMIT).await;
    let token = s.token().await;
    let c = reqwest::Client::new();
    let big_json = json!({"policy": "tui", "labels": vec!["x".repeat(60); 40]}).to_string();
    let big_form = format!("mac=52:54:00:00:00:01&pad={}", "x".repeat(2000));
    // (method, path, content type, bearer): open routes and operator routes,
    // read as JSON (`ApiJson`), raw bytes (`Bytes`) and forms (`Form`).
    let cases: Vec<(Method, String, &str, bool)> = vec![
        (Method::POST, format!("/pxe/{MAC}/status"), "application/json", false),
        (Method::POST, format!("/pxe/{MAC}/done"), "application/json", false),
        (Method::POST, format!("/pxe/{MAC}/inventory"), "application/json", false),
        (Method::POST, "/auth/login".into(), "application/json", false),
        (Method::POST, "/ui/login".into(), "application/x-www-form-urlencoded", false),
        (Method::PUT, format!("/machines/{MAC}"), "application/json", true),
        (Method::POST, "/auth/tokens".into(), "application/json", true),
        (Method::PUT, "/backups/schedule".into(), "application/json", true),
        (Method::POST, "/ui/machines".into(), "application/x-www-form-urlencoded", true),
        (Method::POST, "/ui/settings".into(), "application/x-www-form-urlencoded", true),
    ];
    for (method, path, kind, authed) in &cases {
        let body = if kind.contains("json") { big_json.clone() } else { big_form.clone() };
        for declared in [true, false] {
            let mut req = c.request(method.clone(), s.url(path)).header("content-type", *kind);
            if *authed {
                req = req.bearer_auth(&token);
            }
            req = if declared { req.body(body.clone()) } else { req.body(streamed(2000)) };
            let what = format!("{method} {path} ({})", if declared { "Content-Length" } else { "chunked" });
            assert_json_413(&what, req.send().await.unwrap()).await;
        }
    }
    // A browser form with the session cookie: the CSRF check reads the body
    // first, and answers the same.
    let (browser, _) = s.login().await;
    let r = browser
        .post(s.url("/ui/machines"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(big_form.clone())
        .send()
        .await
        .unwrap();
    assert_json_413("POST /ui/machines (session)", r).await;

    // Under the limit the same routes work, with bodies larger than the
    // extractors' own 2 MB default when the limit allows it.
    let r = c.post(s.url(&format!("/pxe/{MAC}/done"))).send().await.unwrap();
    assert_ne!(r.status(), 413);
    s.stop().await;

    let s = TestServer::start_with(|c| c.limits.max_body_bytes = 4 << 20).await;
    let token = s.token().await;
    let padded = format!("{{\"policy\": \"tui\"{}}}", " ".repeat(3 << 20));
    let r = c
        .put(s.url(&format!("/machines/{MAC}")))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(padded)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "a 3 MB body under a 4 MB limit is read");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_have_their_own_limit_and_the_same_shape() {
    let s = TestServer::start_with(|c| {
        c.limits.max_body_bytes = LIMIT;
        c.limits.max_upload_bytes = 4096;
    })
    .await;
    let token = s.token().await;
    let c = reqwest::Client::new();
    // Over max_body_bytes but under max_upload_bytes: an upload is fine.
    let r = c.put(s.url("/boot/vmlinuz")).bearer_auth(&token).body(vec![1u8; 3000]).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let r = c.put(s.url("/boot/vmlinuz")).bearer_auth(&token).body(vec![1u8; 5000]).send().await.unwrap();
    assert_eq!(r.status(), 413);
    let v: Value = r.json().await.unwrap();
    assert!(v["error"].as_str().unwrap().contains("[limits] max_upload_bytes"), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_labels_come_from_a_closed_set() {
    let s = TestServer::start().await;
    let c = reqwest::Client::new();
    for path in ["/healthz", "/version", "/metrics"] {
        c.get(s.url(path)).send().await.unwrap();
    }
    c.get(s.url("/nope")).send().await.unwrap();
    let before = c.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();

    // 2,000 made-up methods and 2,000 random paths.
    let jobs = (0..4000).map(|i| {
        let c = c.clone();
        let url = if i % 2 == 0 { s.url("/healthz") } else { s.url(&format!("/scan/{i:x}/wp-login.php")) };
        async move {
            let method = Method::from_bytes(format!("X{i}").as_bytes()).unwrap();
            let method = if i % 2 == 0 { method } else { Method::GET };
            c.request(method, url).send().await.unwrap().status().as_u16()
        }
    });
    use futures_util::StreamExt;
    let codes: Vec<u16> = futures_util::stream::iter(jobs).buffer_unordered(16).collect().await;
    assert!(codes.iter().all(|c| *c == 404 || *c == 405 || *c == 401), "{codes:?}");

    let after = c.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(
        after.len() < before.len() + 1024,
        "/metrics grew from {} to {} bytes:\n{after}",
        before.len(),
        after.len()
    );
    for line in after.lines().filter(|l| l.starts_with("bty_http_requests_total{")) {
        let method = line.split("method=\"").nth(1).unwrap().split('"').next().unwrap();
        assert!(
            ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "other"].contains(&method),
            "{line}"
        );
        let route = line.split("route=\"").nth(1).unwrap().split('"').next().unwrap();
        assert!(route == "other" || bty_web::route_table::ROUTES.iter().any(|r| r.path == route), "{line}");
    }
    let junk = |route: &str, method: &str| {
        after
            .lines()
            .find(|l| l.contains(&format!("method=\"{method}\",route=\"{route}\"")))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert!(junk("/healthz", "other") >= 2000, "made-up methods are counted, as one: {after}");
}

fn flood(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("label-{i:06}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_labels_is_refused_fast() {
    let s = TestServer::start().await;
    let token = s.token().await;
    let c = reqwest::Client::new();
    let labels = flood(130_000);
    let body = json!({"policy": "tui", "labels": labels}).to_string();
    assert!(body.len() > 1_900_000, "{}", body.len());
    let started = Instant::now();
    let r = c
        .put(s.url(&format!("/machines/{MAC}")))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(r.status(), 422);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["field"], "labels", "{v}");
    assert!(v["reason"].as_str().unwrap().contains("at most 32"), "{v}");
    assert!(took < Duration::from_millis(900), "refused in {took:?}");

    // The same through the browser form.
    let (code, _) = s.put_machine(&token, MAC, json!({"policy": "tui"})).await;
    assert_eq!(code, 201);
    let form = format!("csrf_token=&policy=tui&labels={}", labels.join("+"));
    let started = Instant::now();
    let r = c
        .post(s.url(&format!("/ui/machines/{MAC}")))
        .bearer_auth(&token)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(r.status(), 422);
    assert!(r.text().await.unwrap().contains("at most 32"));
    assert!(took < Duration::from_millis(900), "refused in {took:?}");

    // Duplicates still fold, and 32 distinct labels are fine.
    let ok = flood(32);
    let (code, m) = s.put_machine(&token, MAC, json!({"policy": "tui", "labels": ok})).await;
    assert_eq!(code, 200, "{m}");
    assert_eq!(m["labels"].as_array().unwrap().len(), 32);
    let (code, m) = s.put_machine(&token, MAC, json!({"policy": "tui", "labels": ["b", "a", "b"]})).await;
    assert_eq!(code, 200);
    assert_eq!(m["labels"], json!(["a", "b"]));
}
