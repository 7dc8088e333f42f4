//! The browser UI's forms over plain HTTP: CSRF, the login form, redirects
//! that stay inside the UI, tokens shown once, settings validation, bulk
//! acknowledgement, assets, and live streams ending at shutdown.

mod common;

use std::time::Duration;

use common::{TestServer, MAC};
use reqwest::header::{CONTENT_TYPE, LOCATION};
use serde_json::json;

fn browser() -> reqwest::Client {
    reqwest::Client::builder().cookie_store(true).redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

async fn post_form(c: &reqwest::Client, url: String, pairs: &[(&str, &str)]) -> reqwest::Response {
    let body: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={}", encode(v))).collect();
    c.post(url)
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(body.join("&"))
        .send()
        .await
        .unwrap()
}

fn between<'a>(html: &'a str, start: &str, end: &str) -> &'a str {
    let i = html.find(start).unwrap_or_else(|| panic!("no {start:?} in page")) + start.len();
    let j = html[i..].find(end).unwrap() + i;
    &html[i..j]
}

async fn login_token(s: &TestServer, c: &reqwest::Client) -> String {
    let html = c.get(s.url("/ui/login")).send().await.unwrap().text().await.unwrap();
    between(&html, "name=\"login_token\" value=\"", "\"").to_string()
}

/// A browser logged in through the login form, and its CSRF token.
async fn ui_login(s: &TestServer) -> (reqwest::Client, String) {
    let c = browser();
    let token = login_token(s, &c).await;
    let r = post_form(
        &c,
        s.url("/ui/login"),
        &[("username", "bty"), ("password", "bty"), ("login_token", &token), ("next", "/ui/events")],
    )
    .await;
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()[LOCATION], "/ui/events");
    let html = c.get(s.url("/ui/account")).send().await.unwrap().text().await.unwrap();
    let csrf = between(&html, "<meta name=\"csrf-token\" content=\"", "\"").to_string();
    (c, csrf)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_form_is_guarded() {
    let s = TestServer::start().await;
    // No form token (a post from another site): refused before the password is checked.
    let c = browser();
    let r = post_form(&c, s.url("/ui/login"), &[("username", "bty"), ("password", "bty")]).await;
    assert_eq!(r.status(), 403);
    // A wrong password is answered on the form.
    let token = login_token(&s, &c).await;
    let r = post_form(
        &c,
        s.url("/ui/login"),
        &[("username", "bty"), ("password", "nope"), ("login_token", &token)],
    )
    .await;
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("wrong username or password"));
    // `next` outside the UI is ignored.
    let token = login_token(&s, &c).await;
    let r = post_form(
        &c,
        s.url("/ui/login"),
        &[
            ("username", "bty"),
            ("password", "bty"),
            ("login_token", &token),
            ("next", "https://evil.example/"),
        ],
    )
    .await;
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()[LOCATION], "/ui/");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forms_need_the_csrf_token() {
    let s = TestServer::start().await;
    let (c, csrf) = ui_login(&s).await;
    let r = post_form(&c, s.url("/ui/machines"), &[("mac", MAC)]).await;
    assert_eq!(r.status(), 403);
    let r = post_form(&c, s.url("/ui/machines"), &[("mac", MAC), ("csrf_token", "wrong")]).await;
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("reload the page"));
    let r =
        post_form(&c, s.url("/ui/machines"), &[("mac", "52-54-00-12-34-zz"), ("csrf_token", &csrf)]).await;
    assert_eq!(r.status(), 422);
    assert!(r.text().await.unwrap().contains("id=\"mac-error\""));
    let r =
        post_form(&c, s.url("/ui/machines"), &[("mac", "52-54-00-12-34-56"), ("csrf_token", &csrf)]).await;
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()[LOCATION], format!("/ui/machines/{MAC}?notice=added"));
    let token = s.token().await;
    let m = s.authed_json(&token, &format!("/machines/{MAC}")).await;
    assert_eq!(m["policy"], "tui");
    // Errors are pages too.
    let r = c.get(s.url("/ui/machines/52:54:00:99:99:99")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.headers()[CONTENT_TYPE].to_str().unwrap().starts_with("text/html"));
    assert!(r.text().await.unwrap().contains("no machine 52:54:00:99:99:99"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_token_is_shown_once() {
    let s = TestServer::start().await;
    let (c, csrf) = ui_login(&s).await;
    let r = post_form(&c, s.url("/ui/account/tokens"), &[("name", "ci runner"), ("csrf_token", &csrf)]).await;
    assert_eq!(r.status(), 303);
    let first = c.get(s.url("/ui/account")).send().await.unwrap().text().await.unwrap();
    let token = between(&first, "id=\"new-token\" class=\"mono\" readonly value=\"", "\"").to_string();
    assert!(token.starts_with("bty_"), "{token}");
    assert!(first.contains("ci runner"));
    let again = c.get(s.url("/ui/account")).send().await.unwrap().text().await.unwrap();
    assert!(!again.contains(&token));
    // And it works.
    let r = reqwest::Client::new().get(s.url("/machines")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_validate_and_apply() {
    let s = TestServer::start().await;
    let (c, csrf) = ui_login(&s).await;
    let form = |zone: &'static str, keep: &'static str| {
        vec![("display_timezone", zone), ("backup_cadence", "daily"), ("backup_keep", keep)]
    };
    let mut bad = form("Mars/Olympus", "3");
    bad.push(("csrf_token", &csrf));
    let r = post_form(&c, s.url("/ui/settings"), &bad).await;
    assert_eq!(r.status(), 422);
    let html = r.text().await.unwrap();
    assert!(html.contains("id=\"display_timezone-error\""), "{html}");
    assert!(html.contains("value=\"Mars/Olympus\""));
    let mut good = form("+02:00", "3");
    good.push(("csrf_token", &csrf));
    let r = post_form(&c, s.url("/ui/settings"), &good).await;
    assert_eq!(r.status(), 303);
    let html = c.get(s.url("/ui/settings")).send().await.unwrap().text().await.unwrap();
    assert!(html.contains("times in +02:00"));
    let token = s.token().await;
    let sched = s.authed_json(&token, "/backups/schedule").await;
    assert_eq!(sched, json!({"cadence": "daily", "keep": 3}));
}

/// Two tripwires of different kinds: repeats of one kind from one address
/// fold into a single event.
async fn two_tripwires(s: &TestServer) {
    for _ in 0..2 {
        let r = reqwest::Client::new()
            .post(s.url("/auth/login"))
            .json(&json!({"username": "bty", "password": "wrong"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    }
    let r = reqwest::Client::new()
        .post(s.url("/pxe/52:54:00:00:00:42/done"))
        .json(&json!({"status": "done"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_acknowledge() {
    let s = TestServer::start().await;
    two_tripwires(&s).await;
    let token = s.token().await;
    let unacked = s.authed_json(&token, "/events?unacked=1").await;
    let ids: Vec<String> =
        unacked["events"].as_array().unwrap().iter().map(|e| e["id"].to_string()).collect();
    assert_eq!(ids.len(), 2);
    let (c, csrf) = ui_login(&s).await;
    let r = post_form(
        &c,
        s.url("/ui/events/ack"),
        &[("csrf_token", &csrf), ("back", "/ui/events?unacked=1"), ("id", &ids[0]), ("id", &ids[1])],
    )
    .await;
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()[LOCATION], "/ui/events?unacked=1&notice=acked");
    let left = s.authed_json(&token, "/events?unacked=1").await;
    assert_eq!(left["events"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledge_all_matching_from_the_events_page() {
    let s = TestServer::start().await;
    two_tripwires(&s).await;
    let token = s.token().await;
    let (c, csrf) = ui_login(&s).await;
    // The page offers the button with the count of what the filter matches.
    let page = c.get(s.url("/ui/events?kind=auth.*")).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("name=\"all_matching\""), "{page}");
    assert!(page.contains("Acknowledge all 1 unacknowledged matching"), "{page}");
    assert!(page.contains("×2"), "the folded repeat shows its count: {page}");
    let r = post_form(
        &c,
        s.url("/ui/events/ack"),
        &[
            ("csrf_token", &csrf),
            ("back", "/ui/events?kind=auth.*"),
            ("all_matching", "1"),
            ("kind", "auth.*"),
            ("subject", ""),
        ],
    )
    .await;
    assert_eq!(r.status(), 303);
    let left = s.authed_json(&token, "/events?unacked=1").await;
    let kinds: Vec<&str> =
        left["events"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["pxe.client.orphan"], "only the filter's matches were acknowledged");
    // Without the CSRF token nothing is acknowledged.
    let r = post_form(&c, s.url("/ui/events/ack"), &[("all_matching", "1")]).await;
    assert_ne!(r.status(), 303);
    assert_eq!(s.authed_json(&token, "/events?unacked=1").await["events"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assets_and_streams() {
    let s = TestServer::start().await;
    let r = reqwest::get(s.url("/ui/assets/ui.css")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["cache-control"].to_str().unwrap().contains("immutable"));
    assert_eq!(reqwest::get(s.url("/ui/assets/other.js")).await.unwrap().status(), 404);

    // A machine's change arrives on the stream as its rendered row.
    let (c, _) = ui_login(&s).await;
    let mut stream = c.get(s.url("/ui/machines/stream")).send().await.unwrap();
    assert_eq!(stream.status(), 200);
    reqwest::get(s.url(&format!("/pxe/{MAC}"))).await.unwrap();
    let mut seen = String::new();
    while !seen.contains("data-mac") {
        let chunk =
            tokio::time::timeout(Duration::from_secs(10), stream.chunk()).await.unwrap().unwrap().unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(seen.contains("event: machine") && seen.contains(MAC), "{seen}");
    // An open stream does not hold up shutdown.
    tokio::time::timeout(Duration::from_secs(10), s.stop()).await.expect("server stops with a stream open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machine_list_search_sort_and_pages() {
    let s = TestServer::start().await;
    let token = s.token().await;
    for i in 0..55u8 {
        let mac = format!("52:54:00:00:01:{i:02x}");
        let labels = if i % 2 == 0 { json!(["even"]) } else { json!(["odd"]) };
        let (code, _) = s.put_machine(&token, &mac, json!({"policy": "local", "labels": labels})).await;
        assert_eq!(code, 201);
    }
    let (c, _) = ui_login(&s).await;
    let page = |q: &'static str| {
        let c = c.clone();
        let url = s.url(&format!("/ui/machines{q}"));
        async move {
            let html = c.get(url).send().await.unwrap().text().await.unwrap();
            html.match_indices("<tr data-mac=\"")
                .map(|(i, _)| html[i + 14..i + 31].to_string())
                .collect::<Vec<_>>()
        }
    };
    let first = page("").await;
    assert_eq!(first.len(), 50);
    assert_eq!(first[0], "52:54:00:00:01:00");
    let second = page("?page=2").await;
    assert_eq!(
        second,
        [
            "52:54:00:00:01:32",
            "52:54:00:00:01:33",
            "52:54:00:00:01:34",
            "52:54:00:00:01:35",
            "52:54:00:00:01:36"
        ]
    );
    let desc = page("?sort=mac&dir=desc").await;
    assert_eq!(desc[0], "52:54:00:00:01:36");
    let odd = page("?label=odd").await;
    assert_eq!(odd.len(), 27);
    assert!(odd.iter().all(|m| u8::from_str_radix(&m[15..], 16).unwrap() % 2 == 1));
    let found = page("?q=01:2a").await;
    assert_eq!(found, ["52:54:00:00:01:2a"]);
    // The sort links keep the filters.
    let html = c.get(s.url("/ui/machines?label=odd")).send().await.unwrap().text().await.unwrap();
    assert!(
        html.contains("href=\"/ui/machines?label&#x3D;odd&amp;sort&#x3D;policy\""),
        "sort link keeps the filter"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_reload_reports_errors() {
    let s = TestServer::start().await;
    let (c, csrf) = ui_login(&s).await;
    std::fs::write(s.state_dir().join("catalog.toml"), "version = 1\n[[images]]\nname = \"x\"\n").unwrap();
    let r = post_form(&c, s.url("/ui/images/reload"), &[("csrf_token", &csrf)]).await;
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()[LOCATION], "/ui/images?notice=reload-failed");
    let html = c.get(s.url("/ui/images?notice=reload-failed")).send().await.unwrap().text().await.unwrap();
    assert!(html.contains("The last load failed"));
    assert!(html.contains("local-img"), "the previous catalog stays in use");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netboot_release_fetch_from_the_page() {
    use sha2::{Digest, Sha256};
    let (kernel, initrd) = (vec![1u8; 3000], vec![2u8; 5000]);
    let sums = format!(
        "{}  vmlinuz\n{}  initrd.gz\n",
        hex::encode(Sha256::digest(&kernel)),
        hex::encode(Sha256::digest(&initrd))
    );
    let origin = axum::Router::new()
        .route("/v9.9.9/SHA256SUMS", axum::routing::get(move || async move { sums }))
        .route("/v9.9.9/vmlinuz", axum::routing::get(move || async move { kernel }))
        .route("/v9.9.9/initrd.gz", axum::routing::get(move || async move { initrd }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, origin).await.unwrap() });

    let s = TestServer::start().await;
    let (c, csrf) = ui_login(&s).await;
    let r = post_form(
        &c,
        s.url("/ui/netboot/fetch"),
        &[("csrf_token", &csrf), ("base_url", "ftp://x"), ("tag", "")],
    )
    .await;
    assert_eq!(r.status(), 422);
    assert!(r.text().await.unwrap().contains("id=\"base_url-error\""));
    let r = post_form(
        &c,
        s.url("/ui/netboot/fetch"),
        &[("csrf_token", &csrf), ("base_url", &origin_url), ("tag", "v9.9.9")],
    )
    .await;
    assert_eq!(r.status(), 303);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let html = c.get(s.url("/ui/netboot")).send().await.unwrap().text().await.unwrap();
        if html.contains("Installed release: <strong>v9.9.9</strong>") {
            assert!(html.contains("2.9 KiB") && html.contains("4.9 KiB"), "{html}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never installed: {html}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dash = c.get(s.url("/ui/")).send().await.unwrap().text().await.unwrap();
    assert!(dash.contains("v9.9.9 installed; this server expects v"), "the version check sees the release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_up_now_download_and_delete_from_the_page() {
    let s = TestServer::start().await;
    let (c, csrf) = ui_login(&s).await;
    let html = c.get(s.url("/ui/backups")).send().await.unwrap().text().await.unwrap();
    assert!(html.contains("No backups yet") && html.contains("Back up now"), "{html}");
    // Without the CSRF token nothing happens.
    let r = post_form(&c, s.url("/ui/backups"), &[]).await;
    assert_eq!(r.status(), 403);
    let r = post_form(&c, s.url("/ui/backups"), &[("csrf_token", &csrf)]).await;
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()[LOCATION], "/ui/backups?notice=backup-created");
    let html = c.get(s.url("/ui/backups?notice=backup-created")).send().await.unwrap().text().await.unwrap();
    assert!(html.contains("Backup made."), "{html}");
    let name = between(&html, "<td class=\"mono\">", "</td>").to_string();
    // The page's download link works with the browser's session.
    let link = format!("/backups/{name}/state.db");
    assert!(html.contains(&format!("href=\"{link}\"")), "{html}");
    let db = c.get(s.url(&link)).send().await.unwrap();
    assert_eq!(db.status(), 200);
    assert!(db.bytes().await.unwrap().starts_with(b"SQLite format 3\0"));
    assert!(html.contains("backup.created"), "the history lists it: {html}");
    // Delete asks first (data-confirm) and then removes it.
    assert!(html.contains(&format!("data-confirm=\"Delete backup {name}?\"")), "{html}");
    let r = post_form(&c, s.url(&format!("/ui/backups/{name}/delete")), &[("csrf_token", &csrf)]).await;
    assert_eq!(r.status(), 303);
    let html = c.get(s.url("/ui/backups")).send().await.unwrap().text().await.unwrap();
    assert!(html.contains("No backups yet"), "{html}");
    let r = post_form(&c, s.url("/ui/backups/2020-01-01T00-00-00Z/delete"), &[("csrf_token", &csrf)]).await;
    assert_eq!(r.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_site_root_sends_browsers_to_the_ui() {
    let s = TestServer::start().await;
    let c = browser();
    for method in [reqwest::Method::GET, reqwest::Method::HEAD] {
        let r = c.request(method.clone(), s.url("/")).send().await.unwrap();
        assert_eq!(r.status(), 303, "{method}");
        assert_eq!(r.headers()[LOCATION], "/ui/", "{method}");
    }
    // Followed, a browser that is not logged in ends on the login page.
    let r = TestServer::client().get(s.url("/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.url().path().starts_with("/ui/login"), "{}", r.url());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_catalog_is_called_missing_with_what_to_do() {
    let s = TestServer::start_with(|c| {
        c.paths.catalog = c.paths.state_dir.join("no-catalog-yet.toml").to_string_lossy().into_owned();
    })
    .await;
    let (c, _) = ui_login(&s).await;
    let html = c.get(s.url("/ui/")).send().await.unwrap().text().await.unwrap();
    assert!(html.contains("missing:"), "{html}");
    assert!(html.contains("no-catalog-yet.toml does not exist"), "{html}");
    assert!(html.contains("Images"), "{html}");
    assert!(html.contains("The image catalog"), "{html}");
    assert!(!html.contains("but empty"), "{html}");
    // The default-password check shows its quote as code, not backquotes.
    assert!(html.contains("<code>bty</code>"), "{html}");
    assert!(!html.contains('`'), "backquotes on the dashboard");
    let images = c.get(s.url("/ui/images")).send().await.unwrap().text().await.unwrap();
    assert!(images.contains("does not exist"), "{images}");
    assert!(images.contains("id=\"image-url\""), "{images}");
}

/// Names of the files in the images directory, hidden ones included.
fn image_files(s: &TestServer) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(s.state_dir().join("images"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn catalog_text(s: &TestServer) -> String {
    std::fs::read_to_string(s.state_dir().join("catalog.toml")).unwrap()
}

const SHA: &str = "5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registering_a_url_from_the_images_page() {
    let s = TestServer::start().await;
    let (c, csrf) = ui_login(&s).await;
    let before = catalog_text(&s);
    let form = |name: &'static str, url: &'static str, sha: &'static str| {
        vec![("name", name), ("url", url), ("sha256", sha), ("description", "Debian")]
    };
    // Each bad field is answered next to it, and nothing changes.
    let cases: &[(&str, &str, &str, u16, &str, &str)] = &[
        ("../etc", "https://example.org/d.img", SHA, 422, "name-error", "contains"),
        (".etc", "https://example.org/d.img", SHA, 422, "name-error", "must not start with"),
        ("a/b", "https://example.org/d.img", SHA, 422, "name-error", "contains"),
        ("", "https://example.org/d.img", SHA, 422, "name-error", "must not be empty"),
        (
            "local-img",
            "https://example.org/d.img",
            SHA,
            409,
            "name-error",
            "already has an image named local-img",
        ),
        ("debian", "ftp://example.org/d.img", SHA, 422, "url-error", "http"),
        ("debian", "file:///etc/passwd", SHA, 422, "url-error", "http"),
        ("debian", "images/d.img", SHA, 422, "url-error", "http"),
        ("debian", "https://example.org/d.img", "abc", 422, "sha256-error", "64 hexadecimal digits"),
        ("debian", "https://example.org/d.img", "", 422, "sha256-error", "is required"),
    ];
    for (name, url, sha, status, id, reason) in cases {
        let mut f = form(name, url, sha);
        f.push(("csrf_token", &csrf));
        let r = post_form(&c, s.url("/ui/images/url"), &f).await;
        assert_eq!(r.status(), *status, "{name} {url} {sha}");
        let html = r.text().await.unwrap();
        let shown = between(&html, &format!("id=\"{id}\">"), "</p>");
        assert!(shown.contains(reason), "{name} {url} {sha}: {shown}");
        assert!(!shown.contains('`'), "{shown}");
        assert_eq!(catalog_text(&s), before, "{name} {url} {sha} changed the catalog");
    }
    // Without the CSRF token, or without a login: refused.
    let r = post_form(&c, s.url("/ui/images/url"), &form("debian", "https://example.org/d.img", SHA)).await;
    assert_eq!(r.status(), 403);
    let r = post_form(&browser(), s.url("/ui/images/url"), &form("debian", "https://example.org/d.img", SHA))
        .await;
    assert_eq!(r.status(), 303);
    assert!(r.headers()[LOCATION].to_str().unwrap().starts_with("/ui/login"));
    assert_eq!(catalog_text(&s), before);

    let mut f = form("debian", "https://example.org/d.img.zst", SHA);
    f.push(("csrf_token", &csrf));
    let r = post_form(&c, s.url("/ui/images/url"), &f).await;
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()[LOCATION], "/ui/images?notice=image-added");
    let after = catalog_text(&s);
    assert!(after.starts_with(&before), "the existing entries are kept as they were:\n{after}");
    let page = c.get(s.url("/ui/images?notice=image-added")).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("Image added"), "{page}");
    assert!(page.contains("<strong>debian</strong>"), "{page}");
    let listed = s.get_json("/images").await.1;
    let d = listed.as_array().unwrap().iter().find(|e| e["name"] == "debian").unwrap().clone();
    assert_eq!(d["sha256"], SHA);
    assert_eq!(d["format"], "zstd");
    assert_eq!(d["src"], "https://example.org/d.img.zst");
    let token = s.token().await;
    let ev = s.events(&token, "catalog.image.added").await;
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0]["actor"], "operator:bty");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalog_api_adds_urls_and_uploads() {
    let s = TestServer::start_with(|c| c.limits.max_upload_bytes = 8192).await;
    let token = s.token().await;
    let api = reqwest::Client::new();
    let before = catalog_text(&s);
    let files_before = image_files(&s);

    // Without a token: 401, for both routes.
    let r = api.put(s.url("/images/new.img")).body(vec![1u8; 10]).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = api
        .post(s.url("/catalog/images"))
        .json(&json!({"name": "x", "url": "https://example.org/x.img", "sha256": SHA}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // URL registration: field errors name the field.
    for (body, field) in [
        (json!({"name": "x/y", "url": "https://example.org/x.img", "sha256": SHA}), "name"),
        (json!({"name": "x", "url": "gopher://example.org/x.img", "sha256": SHA}), "url"),
        (json!({"name": "x", "url": "https://example.org/x.img", "sha256": "sha256:12"}), "sha256"),
        (json!({"name": "x", "url": "https://example.org/x.img"}), "sha256"),
    ] {
        let r = api.post(s.url("/catalog/images")).bearer_auth(&token).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 422, "{body}");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["field"], field, "{body}: {v}");
    }
    let dup = json!({"name": "other-img", "url": "https://example.org/x.img", "sha256": SHA});
    let r = api.post(s.url("/catalog/images")).bearer_auth(&token).json(&dup).send().await.unwrap();
    assert_eq!(r.status(), 409);
    assert_eq!(catalog_text(&s), before);

    // Uploads: refused names and duplicates before a byte is stored.
    for (name, status) in [("..%2Fescape.img", 422), (".hidden", 422), ("local-img", 409), ("local.img", 409)]
    {
        let r = api
            .put(s.url(&format!("/images/{name}")))
            .bearer_auth(&token)
            .body(vec![1u8; 100])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{name}: {}", r.text().await.unwrap());
    }
    assert!(!s.state_dir().join("escape.img").exists());
    // Over the limit, declared or streamed: 413, and no file, no entry.
    let r = api.put(s.url("/images/big.img")).bearer_auth(&token).body(vec![0u8; 8193]).send().await.unwrap();
    assert_eq!(r.status(), 413);
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (0..16).map(|_| Ok(vec![7u8; 1024])).collect();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let r = api.put(s.url("/images/big.img")).bearer_auth(&token).body(body).send().await;
    if let Ok(r) = r {
        assert_eq!(r.status(), 413);
    }
    // A client that breaks off mid-way leaves nothing either.
    let broken = futures_util::stream::iter(vec![
        Ok(vec![1u8; 1024]),
        Err(std::io::Error::other("the client went away")),
    ]);
    let r = api
        .put(s.url("/images/broken.img"))
        .bearer_auth(&token)
        .body(reqwest::Body::wrap_stream(broken))
        .send()
        .await;
    assert!(r.is_err() || r.unwrap().status().is_client_error());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while image_files(&s) != files_before && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(image_files(&s), files_before, "a partial upload was left behind");
    assert_eq!(catalog_text(&s), before);

    // A good upload: stored under its name, hashed, detected, listed, audited.
    let data: Vec<u8> = (0..6000u32).map(|i| (i % 253) as u8).collect();
    let r = api
        .put(s.url("/images/fresh.img?description=Fresh%20image"))
        .bearer_auth(&token)
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
    let v: serde_json::Value = r.json().await.unwrap();
    use sha2::Digest;
    let digest = hex::encode(sha2::Sha256::digest(&data));
    assert_eq!(v["sha256"], digest.as_str());
    assert_eq!(v["size_bytes"], 6000);
    assert_eq!(v["format"], "raw");
    assert_eq!(v["description"], "Fresh image");
    assert_eq!(std::fs::read(s.state_dir().join("images/fresh.img")).unwrap(), data);
    let served = reqwest::get(s.url("/images/fresh.img")).await.unwrap().bytes().await.unwrap();
    assert_eq!(served.as_ref(), data.as_slice());
    assert!(catalog_text(&s).starts_with(&before));
    // Not twice.
    let r = api.put(s.url("/images/fresh.img")).bearer_auth(&token).body(data.clone()).send().await.unwrap();
    assert_eq!(r.status(), 409);
    // A URL, by the API.
    let ok =
        json!({"name": "remote.img.xz", "url": "https://example.org/r.img.xz", "sha256": SHA.to_uppercase()});
    let r = api.post(s.url("/catalog/images")).bearer_auth(&token).json(&ok).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["sha256"], SHA);
    let ev = s.events(&token, "catalog.image.added").await;
    assert_eq!(ev.len(), 2);
    let names: Vec<String> = image_files(&s);
    assert!(names.iter().all(|n| !n.ends_with(".partial")), "{names:?}");

    // A browser session uploads with the CSRF header, as the page's script does.
    let (c, csrf) = ui_login(&s).await;
    let r = c.put(s.url("/images/from-browser.img")).body(data.clone()).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let r = c
        .put(s.url("/images/from-browser.img"))
        .header("x-csrf-token", &csrf)
        .body(data)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
}
