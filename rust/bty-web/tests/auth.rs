//! Authentication and authorisation over a real server.

mod common;

use common::{TestServer, MAC};
use reqwest::Method;
use serde_json::{json, Value};

fn concrete(path: &str) -> String {
    path.replace("{mac}", MAC).replace("{name}", "vmlinuz").replace("{id}", "1").replace("{file}", "ui.css")
}

/// Every route not explicitly open answers 401 without credentials (and with
/// bogus ones), before its handler looks at the body. Walks the same table the
/// router is built from, so a new route cannot be left open by accident.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_protected_route_requires_login() {
    use bty_web::route_table::{Access, ROUTES};
    let s = TestServer::start().await;
    let mut open: Vec<String> = ROUTES
        .iter()
        .filter(|r| r.access == Access::Open)
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    open.sort();
    // Changing this list is a security decision: PRODUCT.md §5 lists what may be open.
    assert_eq!(
        open,
        [
            "GET /",
            "GET /boot/{name}",
            "GET /catalog.toml",
            "GET /healthz",
            "GET /images",
            "GET /images/{name}",
            "GET /metrics",
            "GET /pxe-bootstrap.ipxe",
            "GET /pxe/{mac}",
            "GET /pxe/{mac}/plan",
            // The offline workflow of a flash, only with its offer token.
            "GET /pxe/{mac}/workflow",
            "GET /ui/assets/{file}",
            "GET /ui/login",
            "GET /version",
            "POST /auth/login",
            "POST /pxe/{mac}/cijoe",
            "POST /pxe/{mac}/done",
            "POST /pxe/{mac}/inventory",
            "POST /pxe/{mac}/status",
            "POST /ui/login",
        ]
    );
    let c = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let mut checked = 0;
    for r in ROUTES.iter().filter(|r| r.access == Access::Operator) {
        let url = s.url(&concrete(r.path));
        let method = Method::from_bytes(r.method.as_str().as_bytes()).unwrap();
        let mut variants = vec![
            c.request(method.clone(), &url),
            c.request(method.clone(), &url).header("cookie", "bty_session=forged"),
            c.request(method.clone(), &url).bearer_auth("bty_forged"),
            c.request(method.clone(), &url).header("authorization", "Basic YnR5OmJ0eQ=="),
        ];
        if method == Method::GET {
            variants.push(c.request(Method::HEAD, &url));
        }
        // Browser pages send the browser to the login page instead of a 401.
        let ui = r.path == "/ui" || r.path.starts_with("/ui/");
        for v in variants {
            let resp = v.header("content-type", "application/json").body("{}").send().await.unwrap();
            if ui {
                assert_eq!(resp.status(), 303, "{} {} answered {}", r.method, r.path, resp.status());
                let to = resp.headers()["location"].to_str().unwrap();
                assert!(to.starts_with("/ui/login"), "{} {} redirected to {to}", r.method, r.path);
            } else {
                assert_eq!(resp.status(), 401, "{} {} answered {}", r.method, r.path, resp.status());
            }
            checked += 1;
        }
    }
    assert!(checked > 50);
    // Routes that exist only as other methods are not open either.
    let r = c.post(s.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    // And the open ones really are.
    for r in ROUTES.iter().filter(|r| r.access == Access::Open && r.method == reqwest::Method::GET) {
        let resp = c.get(s.url(&concrete(r.path))).send().await.unwrap();
        assert_ne!(resp.status(), 401, "{}", r.path);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_session_and_logout() {
    let s = TestServer::start().await;
    let token = s.token().await;
    let c = reqwest::Client::new();
    let r = c
        .post(s.url("/auth/login"))
        .json(&json!({"username": "bty", "password": "wrong"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .post(s.url("/auth/login"))
        .json(&json!({"username": "nobody", "password": "bty"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Failed logins from one address fold into one tripwire with a count.
    let failed = s.events(&token, "auth.login.failed").await;
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["count"], 2);
    assert_eq!(failed[0]["acknowledged"], false);

    let r = c
        .post(s.url("/auth/login"))
        .json(&json!({"username": "bty", "password": "bty"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(cookie.starts_with("bty_session="), "{cookie}");
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age="] {
        assert!(cookie.contains(attr), "{cookie}");
    }
    let value = cookie.split(';').next().unwrap().to_string();
    let body: Value = r.json().await.unwrap();
    let csrf = body["csrf_token"].as_str().unwrap().to_string();
    assert_eq!(body["default_password_in_use"], true);

    let me: Value =
        c.get(s.url("/auth/me")).header("cookie", &value).send().await.unwrap().json().await.unwrap();
    assert_eq!(me["username"], "bty");
    assert_eq!(me["auth"], "session");
    assert_eq!(me["csrf_token"], csrf.as_str());
    assert_eq!(me["default_password_in_use"], true);
    let (_, health) = s.get_json("/healthz").await;
    assert_eq!(health["details"]["default_password_in_use"], true);

    let r = c
        .post(s.url("/auth/logout"))
        .header("cookie", &value)
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert!(r.headers()["set-cookie"].to_str().unwrap().contains("Max-Age=0"));
    // The old cookie is dead server-side, not just forgotten by the browser.
    let r = c.get(s.url("/auth/me")).header("cookie", &value).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(s.events(&token, "auth.logout").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_expire() {
    let s = TestServer::start().await;
    let (c, _) = s.login().await;
    assert_eq!(c.get(s.url("/auth/me")).send().await.unwrap().status(), 200);
    let db = rusqlite::Connection::open(s.state_dir().join("state.db")).unwrap();
    db.execute("UPDATE sessions SET expires_at = strftime('%s','now') - 1", []).unwrap();
    assert_eq!(c.get(s.url("/auth/me")).send().await.unwrap().status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_writes_need_the_csrf_token() {
    let s = TestServer::start().await;
    let (c, csrf) = s.login().await;
    let url = s.url(&format!("/machines/{MAC}"));
    let body = json!({"policy": "local"});
    let r = c.put(&url).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("CSRF"));
    let r = c.put(&url).header("x-csrf-token", "wrong").json(&body).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let r = c.put(&url).header("x-csrf-token", &csrf).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 201);
    // Reads need no token.
    assert_eq!(c.get(&url).send().await.unwrap().status(), 200);
    // Browser forms send it as a field.
    let r = c
        .post(s.url("/auth/logout"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("a=1&csrf_token=wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = c
        .post(s.url("/auth/logout"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("csrf_token={csrf}&a=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_tokens_work_until_revoked() {
    let s = TestServer::start().await;
    let (c, csrf) = s.login().await;
    let r = c
        .post(s.url("/auth/tokens"))
        .header("x-csrf-token", &csrf)
        .json(&json!({"name": "ci"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let created: Value = r.json().await.unwrap();
    let token = created["token"].as_str().unwrap();
    assert!(token.starts_with("bty_"));
    let id = created["id"].as_i64().unwrap();

    // Bearer writes need no CSRF token.
    let (code, _) = s.put_machine(token, MAC, json!({"policy": "local"})).await;
    assert_eq!(code, 201);
    let me = s.authed_json(token, "/auth/me").await;
    assert_eq!(me["auth"], "token");
    assert_eq!(me["token"]["name"], "ci");

    let list: Value = c.get(s.url("/auth/tokens")).send().await.unwrap().json().await.unwrap();
    let row = &list.as_array().unwrap()[0];
    assert_eq!(row["name"], "ci");
    assert!(row["last_used_at"].is_string());
    assert!(row.get("token").is_none() && row.get("token_hash").is_none(), "secrets never listed: {row}");
    let db = rusqlite::Connection::open(s.state_dir().join("state.db")).unwrap();
    let stored: String = db.query_row("SELECT token_hash FROM api_tokens", [], |r| r.get(0)).unwrap();
    assert_ne!(stored, token);

    let r =
        c.delete(s.url(&format!("/auth/tokens/{id}"))).header("x-csrf-token", &csrf).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let r = reqwest::Client::new().get(s.url("/machines")).bearer_auth(token).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = c.delete(s.url("/auth/tokens/999")).header("x-csrf-token", &csrf).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(s.events(&token_for(&s).await, "auth.token.revoked").await.len(), 1);
}

async fn token_for(s: &TestServer) -> String {
    s.token().await
}

/// A client whose connections come from `ip` (any of 127/8 reaches the
/// server on 127.0.0.1).
fn from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder().local_address(ip.parse::<std::net::IpAddr>().unwrap()).build().unwrap()
}

async fn login_as(s: &TestServer, c: &reqwest::Client, user: &str, pass: &str) -> reqwest::Response {
    c.post(s.url("/auth/login")).json(&json!({"username": user, "password": pass})).send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_is_rate_limited() {
    let s = TestServer::start_with(|c| c.auth.login_attempts_per_minute = 3).await;
    let attacker = from("127.0.0.1");
    for _ in 0..3 {
        assert_eq!(login_as(&s, &attacker, "bty", "x").await.status(), 401);
    }
    let r = login_as(&s, &attacker, "bty", "bty").await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "60");
    let msg = r.json::<Value>().await.unwrap()["error"].as_str().unwrap().to_string();
    assert!(msg.contains("\"bty\" from 127.0.0.1") && msg.contains("wait a minute"), "{msg}");

    // The operator on another address is not held up by it...
    assert_eq!(login_as(&s, &from("127.0.0.2"), "bty", "bty").await.status(), 200);
    // ...and neither is another username from the same one.
    assert_eq!(login_as(&s, &attacker, "someone", "x").await.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hammering_a_wrong_username_does_not_lock_the_operator_out() {
    let s = TestServer::start_with(|c| c.auth.login_attempts_per_minute = 3).await;
    let shared = from("127.0.0.3");
    for i in 0..20 {
        let want = if i < 3 { 401 } else { 429 };
        assert_eq!(login_as(&s, &shared, "admin", "guess").await.status(), want, "attempt {i}");
    }
    // The operator behind the same address logs in with the right name.
    assert_eq!(login_as(&s, &shared, "bty", "bty").await.status(), 200);
    // A success resets: two typos, a login, then three more tries before 429.
    for _ in 0..2 {
        assert_eq!(login_as(&s, &shared, "bty", "typo").await.status(), 401);
    }
    assert_eq!(login_as(&s, &shared, "bty", "bty").await.status(), 200);
    for _ in 0..3 {
        assert_eq!(login_as(&s, &shared, "bty", "typo").await.status(), 401);
    }
    assert_eq!(login_as(&s, &shared, "bty", "bty").await.status(), 429);
    // The browser's login page says the same.
    let page = shared.get(s.url("/ui/login")).send().await.unwrap();
    let cookie = page.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string();
    let html = page.text().await.unwrap();
    let token = html.split("name=\"login_token\" value=\"").nth(1).unwrap().split('"').next().unwrap();
    let r = shared
        .post(s.url("/ui/login"))
        .header("cookie", cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("login_token={token}&username=bty&password=bty"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.text().await.unwrap().contains("wait a minute"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_change_ends_other_sessions() {
    let s = TestServer::start().await;
    let (a, csrf) = s.login().await;
    let (b, _) = s.login().await;
    let url = s.url("/auth/password");
    let r = a
        .put(&url)
        .header("x-csrf-token", &csrf)
        .json(&json!({"current_password": "nope", "new_password": "long enough"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    assert_eq!(r.json::<Value>().await.unwrap()["field"], "current_password");
    let r = a
        .put(&url)
        .header("x-csrf-token", &csrf)
        .json(&json!({"current_password": "bty", "new_password": "short"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["field"], "new_password");
    let r = a
        .put(&url)
        .header("x-csrf-token", &csrf)
        .json(&json!({"current_password": "bty", "new_password": "long enough"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(a.get(s.url("/auth/me")).send().await.unwrap().status(), 200);
    assert_eq!(b.get(s.url("/auth/me")).send().await.unwrap().status(), 401);
    let me: Value = a.get(s.url("/auth/me")).send().await.unwrap().json().await.unwrap();
    assert_eq!(me["default_password_in_use"], false);
    let c = reqwest::Client::new();
    let r = c
        .post(s.url("/auth/login"))
        .json(&json!({"username": "bty", "password": "bty"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .post(s.url("/auth/login"))
        .json(&json!({"username": "bty", "password": "long enough"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_change_revokes_every_api_token() {
    let s = TestServer::start().await;
    let (a, csrf) = s.login().await;
    let (b, _) = s.login().await;
    let mut tokens = Vec::new();
    for name in ["ci", "backup-script"] {
        let r =
            a.post(s.url("/auth/tokens")).header("x-csrf-token", &csrf).json(&json!({"name": name})).send();
        let v: Value = r.await.unwrap().json().await.unwrap();
        tokens.push(v["token"].as_str().unwrap().to_string());
    }
    for t in &tokens {
        s.authed_json(t, "/auth/me").await;
    }
    // The account page says what a change will do...
    let page = a.get(s.url("/ui/account")).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("ends every other session of this account and revokes every API token"), "{page}");

    // ...the browser form makes it...
    let form = format!(
        "csrf_token={csrf}&current_password=bty&new_password=long+enough&confirm_password=long+enough"
    );
    let r = a
        .post(s.url("/ui/account/password"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "followed the redirect");
    assert!(r.url().as_str().ends_with("/ui/account?notice=password"), "{}", r.url());
    let page = r.text().await.unwrap();
    assert!(page.contains("every API token was revoked"), "...and says what it did: {page}");

    // ...and it is so: the tokens and the other session are gone, this one stays.
    for t in &tokens {
        let r = reqwest::Client::new().get(s.url("/auth/me")).bearer_auth(t).send().await.unwrap();
        assert_eq!(r.status(), 401);
    }
    assert_eq!(b.get(s.url("/auth/me")).send().await.unwrap().status(), 401);
    assert_eq!(a.get(s.url("/auth/me")).send().await.unwrap().status(), 200);
    let list: Value = a.get(s.url("/auth/tokens")).send().await.unwrap().json().await.unwrap();
    assert!(list.as_array().unwrap().iter().all(|t| t["revoked_at"].is_string()), "{list}");

    // A token made afterwards works, and the JSON API's change revokes it too.
    let r = a.post(s.url("/auth/tokens")).header("x-csrf-token", &csrf).json(&json!({"name": "new"})).send();
    let fresh = r.await.unwrap().json::<Value>().await.unwrap()["token"].as_str().unwrap().to_string();
    s.authed_json(&fresh, "/auth/me").await;
    let r = a
        .put(s.url("/auth/password"))
        .header("x-csrf-token", &csrf)
        .json(&json!({"current_password": "long enough", "new_password": "longer still"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = reqwest::Client::new().get(s.url("/auth/me")).bearer_auth(&fresh).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r =
        a.post(s.url("/auth/tokens")).header("x-csrf-token", &csrf).json(&json!({"name": "audit"})).send();
    let reader = r.await.unwrap().json::<Value>().await.unwrap()["token"].as_str().unwrap().to_string();
    let changes = s.events(&reader, "auth.password.changed").await;
    assert_eq!(changes.len(), 2);
    assert_eq!(changes[0]["details"]["tokens_revoked"], 1);
    assert_eq!(changes[1]["details"]["tokens_revoked"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_admin_password_replaces_the_default() {
    let s = TestServer::start_with(|c| {
        c.admin.password = "from-the-environment".into();
        c.admin.password_is_default = false;
    })
    .await;
    let c = reqwest::Client::new();
    let r = c
        .post(s.url("/auth/login"))
        .json(&json!({"username": "bty", "password": "bty"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .post(s.url("/auth/login"))
        .json(&json!({"username": "bty", "password": "from-the-environment"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["default_password_in_use"], false);
    let (_, health) = s.get_json("/healthz").await;
    assert_eq!(health["details"]["default_password_in_use"], false);
}
