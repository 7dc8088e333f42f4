//! A real bty-web on a loopback port with a temporary state directory.
#![allow(dead_code)]

use std::path::PathBuf;

use bty_web::config::Config;
use bty_web::App;
use serde_json::{json, Value};
use tokio::net::TcpListener;

pub const MAC: &str = "52:54:00:12:34:56";

pub struct TestServer {
    pub url: String,
    pub dir: tempfile::TempDir,
    pub app: bty_web::state::AppState,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// A catalog with one local image (`local-img`, 1 MiB of patterned bytes).
pub const CATALOG: &str = r#"version = 1

[[images]]
name = "local-img"
src = "local.img"
sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
size_bytes = 1048576
description = "test image"

[[images]]
name = "other-img"
src = "other.img.zst"
"#;

/// The `bty.token=` of an iPXE script, if it has one.
pub fn offer_token(script: &str) -> Option<String> {
    script.split_whitespace().find_map(|w| w.strip_prefix("bty.token=")).map(str::to_string)
}

/// `script` with its offer token replaced by `T`, for comparing scripts.
pub fn without_token(script: &str) -> String {
    match offer_token(script) {
        Some(t) => script.replace(&format!("bty.token={t}"), "bty.token=T"),
        None => script.to_string(),
    }
}

pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, tweak).await
    }

    /// Start on an existing state directory (restarts, pre-made databases).
    pub async fn start_in(dir: tempfile::TempDir, tweak: impl FnOnce(&mut Config)) -> TestServer {
        let state = dir.path().to_path_buf();
        if !state.join("catalog.toml").exists() {
            std::fs::write(state.join("catalog.toml"), CATALOG).unwrap();
        }
        if !state.join("images/local.img").exists() {
            std::fs::create_dir_all(state.join("images")).unwrap();
            std::fs::write(state.join("images/local.img"), pattern(1 << 20)).unwrap();
        }
        let mut config = Config::for_state_dir(&state);
        tweak(&mut config);
        let app = App::prepare(config).await.expect("server prepares");
        let state_handle = app.state.clone();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            app.serve(listener, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        TestServer { url, dir, app: state_handle, stop: Some(tx), task: Some(task) }
    }

    /// Stop serving and hand back the state directory.
    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
        let dir = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.dir, dir)
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    pub fn client() -> reqwest::Client {
        reqwest::Client::builder().cookie_store(true).build().unwrap()
    }

    /// A logged-in client and its CSRF token.
    pub async fn login(&self) -> (reqwest::Client, String) {
        let c = Self::client();
        let r = c
            .post(self.url("/auth/login"))
            .json(&json!({"username": "bty", "password": "bty"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "login: {}", r.text().await.unwrap());
        let body: Value = r.json().await.unwrap();
        (c, body["csrf_token"].as_str().unwrap().to_string())
    }

    /// An API token for Bearer requests.
    pub async fn token(&self) -> String {
        let (c, csrf) = self.login().await;
        let r = c
            .post(self.url("/auth/tokens"))
            .header("x-csrf-token", csrf)
            .json(&json!({"name": "tests"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        r.json::<Value>().await.unwrap()["token"].as_str().unwrap().to_string()
    }

    pub async fn get_text(&self, path: &str) -> (u16, String) {
        let r = reqwest::get(self.url(path)).await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let r = reqwest::get(self.url(path)).await.unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    /// Authenticated PUT /machines/{mac} with a Bearer token.
    pub async fn put_machine(&self, token: &str, mac: &str, body: Value) -> (u16, Value) {
        let r = reqwest::Client::new()
            .put(self.url(&format!("/machines/{mac}")))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn authed_json(&self, token: &str, path: &str) -> Value {
        let r = reqwest::Client::new().get(self.url(path)).bearer_auth(token).send().await.unwrap();
        let status = r.status();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 200, "{path}: {body}");
        body
    }

    pub async fn post_json(&self, path: &str, body: Value) -> u16 {
        reqwest::Client::new().post(self.url(path)).json(&body).send().await.unwrap().status().as_u16()
    }

    /// A live environment's report: POST with the offer token it was booted with.
    pub async fn report(&self, path: &str, offer_token: &str, body: Value) -> (u16, Value) {
        let r = reqwest::Client::new()
            .post(self.url(path))
            .header("x-bty-offer-token", offer_token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    /// PXE-boot `mac`: the script's offer and the offer token it carries.
    pub async fn pxe_boot(&self, mac: &str) -> (String, Option<String>) {
        let (code, text) = self.get_text(&format!("/pxe/{mac}")).await;
        assert_eq!(code, 200, "{text}");
        let offer = text.lines().nth(1).and_then(|l| l.split("offer=").nth(1)).unwrap_or("?").to_string();
        (offer, offer_token(&text))
    }

    /// Events (newest first) of one kind.
    pub async fn events(&self, token: &str, kind: &str) -> Vec<Value> {
        let v = self.authed_json(token, &format!("/events?kind={kind}&limit=1000")).await;
        v["events"].as_array().unwrap().clone()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// The real `bty-web` binary on state directory `dir` (loopback, a free
/// port, its log on stdout): the child, its port, and the rest of its log.
pub fn spawn_binary(
    dir: &std::path::Path,
) -> (std::process::Child, u16, std::io::Lines<std::io::BufReader<std::process::ChildStdout>>) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_bty-web"))
        .env("BTY_PATHS_STATE_DIR", dir)
        .env("BTY_SERVER_HOST", "127.0.0.1")
        .env("BTY_SERVER_PORT", "0")
        .env("NO_COLOR", "1")
        .env("BTY_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let port = loop {
        let line = lines.next().expect("bty-web started").unwrap();
        if let Some(rest) = line.split("listening on 127.0.0.1:").nth(1) {
            break rest.chars().take_while(char::is_ascii_digit).collect::<String>().parse().unwrap();
        }
    };
    (child, port, lines)
}
