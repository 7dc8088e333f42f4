//! State across restarts and upgrades, and configuration as the binary sees it.

mod common;

use std::process::Command;

use common::{TestServer, MAC};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_database_upgrades_in_place() {
    // A database exactly as schema version 1 left it, with a bound machine.
    let dir = tempfile::tempdir().unwrap();
    {
        let mut c = rusqlite::Connection::open(dir.path().join("state.db")).unwrap();
        let tx = c.transaction().unwrap();
        tx.execute_batch(bty_web::db::MIGRATIONS[0]).unwrap();
        tx.pragma_update(None, "user_version", 1).unwrap();
        tx.execute(
            "INSERT INTO machines (mac, policy, image, target_disk_serial, state, created_at, updated_at)
             VALUES (?1, 'flash-once', 'local-img', 'S1', 'flashed', '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z')",
            [MAC],
        )
        .unwrap();
        tx.commit().unwrap();
    }
    let s = TestServer::start_in(dir, |_| {}).await;
    let token = s.token().await;
    let m = s.authed_json(&token, &format!("/machines/{MAC}")).await;
    assert_eq!((m["policy"].as_str(), m["state"].as_str()), (Some("flash-once"), Some("flashed")));
    let (_, script) = s.get_text(&format!("/pxe/{MAC}")).await;
    assert!(script.contains("offer=local"), "state survived: {script}");
    assert!(s.events(&token, "system.schema.reset").await.is_empty());
    let v: i64 = rusqlite::Connection::open(s.state_dir().join("state.db"))
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, bty_web::db::SCHEMA_VERSION);

    // And it survives a restart of the server.
    let dir = s.stop().await;
    let s = TestServer::start_in(dir, |_| {}).await;
    let token = s.token().await;
    assert_eq!(s.authed_json(&token, "/machines").await.as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_database_is_archived_with_a_tripwire() {
    let dir = tempfile::tempdir().unwrap();
    {
        let c = rusqlite::Connection::open(dir.path().join("state.db")).unwrap();
        c.execute_batch(
            "PRAGMA journal_mode = WAL; CREATE TABLE machines_v9 (mac TEXT); PRAGMA user_version = 9;",
        )
        .unwrap();
        c.execute("INSERT INTO machines_v9 VALUES ('kept')", []).unwrap();
        // Keep the WAL around as a crashed newer server would.
        std::mem::forget(c);
    }
    let s = TestServer::start_in(dir, |_| {}).await;
    let archives: Vec<String> = std::fs::read_dir(s.state_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("state.db.9."))
        .collect();
    assert_eq!(archives.len(), 1, "{archives:?}");
    let name = &archives[0];
    assert!(name.ends_with("Z.bak") && name.len() == "state.db.9.20260101T000000Z.bak".len(), "{name}");
    let old = rusqlite::Connection::open(s.state_dir().join(name)).unwrap();
    let kept: String = old.query_row("SELECT mac FROM machines_v9", [], |r| r.get(0)).unwrap();
    assert_eq!(kept, "kept");

    let token = s.token().await;
    let resets = s.events(&token, "system.schema.reset").await;
    assert_eq!(resets.len(), 1);
    assert_eq!(resets[0]["acknowledged"], false);
    assert_eq!(resets[0]["details"]["found_version"], 9);
    let unacked = s.authed_json(&token, "/events?unacked=1").await;
    assert_eq!(unacked["events"][0]["kind"], "system.schema.reset");
    // The fresh database works.
    assert_eq!(s.get_text(&format!("/pxe/{MAC}")).await.0, 200);
}

fn bty_web() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bty-web"));
    for (k, _) in std::env::vars() {
        if k.starts_with("BTY_") {
            c.env_remove(k);
        }
    }
    c
}

#[test]
fn show_config_names_every_source() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bty.toml");
    std::fs::write(&file, "[server]\nport = 9000\n[boot]\nextra_kernel_args = \"quiet\"\n").unwrap();
    let out = bty_web()
        .args(["show-config", "--json"])
        .env("BTY_CONFIG_FILE", &file)
        .env("BTY_SERVER_PORT", "9100")
        .env("BTY_PATHS_STATE_DIR", dir.path())
        .env("BTY_ADMIN_PASSWORD", "hunter2hunter2")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let get = |k: &str| rows.iter().find(|r| r["key"] == k).unwrap().clone();
    assert_eq!(get("server.port")["value"], 9100);
    assert_eq!(get("server.port")["source"], "env:BTY_SERVER_PORT");
    assert_eq!(get("boot.extra_kernel_args")["source"], format!("file:{}", file.display()));
    assert_eq!(get("server.host")["source"], "default");
    assert_eq!(get("admin.password")["value"], "<redacted>");
    assert_eq!(get("paths.boot_dir")["value"], Value::Null);
    assert_eq!(get("server.public_url")["env"], "BTY_SERVER_PUBLIC_URL");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("hunter2"));

    let text = bty_web()
        .args(["--config", file.to_str().unwrap(), "show-config"])
        .env("BTY_PATHS_STATE_DIR", "/srv/x")
        .output()
        .unwrap();
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.lines().any(|l| l.starts_with("server.port = 9000") && l.contains("# file:")), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("paths.state_dir = \"/srv/x\"") && l.contains("env:BTY_PATHS_STATE_DIR")),
        "{text}"
    );
}

#[test]
fn bad_configuration_fails_at_startup_with_key_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bty.toml");
    std::fs::write(&file, "[server]\nprot = 8080\n").unwrap();
    let out = bty_web().env("BTY_CONFIG_FILE", &file).env("BTY_SERVER_PORT", "eighty").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("server.prot") && err.contains("unknown key"), "{err}");
    assert!(err.contains("server.port (env:BTY_SERVER_PORT): `eighty`"), "{err}");

    let out = bty_web().arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(bty_web::VERSION));
}

/// The binary starts, answers, and stops cleanly on SIGTERM.
#[test]
fn binary_serves_and_shuts_down() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = bty_web()
        .env("BTY_PATHS_STATE_DIR", dir.path())
        .env("BTY_SERVER_HOST", "127.0.0.1")
        .env("BTY_SERVER_PORT", port.to_string())
        .stderr(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let mut ok = false;
    while started.elapsed() < std::time::Duration::from_secs(20) {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::{Read, Write};
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
            let mut resp = String::new();
            let _ = s.read_to_string(&mut resp);
            if resp.starts_with("HTTP/1.1 200") {
                ok = true;
                break;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(ok, "never answered /healthz");
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(dir.path().join("state.db").exists());
}
