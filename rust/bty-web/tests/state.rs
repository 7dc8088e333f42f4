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

/// Every table of the first released schema, filled the way a server in use
/// fills it, comes through the upgrade to the current schema row for row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_row_of_the_first_schema_survives_the_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let tables = [
        "machines",
        "machine_labels",
        "flash_history",
        "events",
        "settings",
        "users",
        "sessions",
        "api_tokens",
    ];
    let dump = |c: &rusqlite::Connection, table: &str| -> Vec<Vec<String>> {
        let mut s = c.prepare(&format!("SELECT * FROM {table} ORDER BY rowid")).unwrap();
        let n = s.column_count();
        let rows = s
            .query_map([], |r| {
                Ok((0..n)
                    .map(|i| match r.get_ref(i).unwrap() {
                        rusqlite::types::ValueRef::Null => "NULL".to_string(),
                        rusqlite::types::ValueRef::Integer(v) => v.to_string(),
                        rusqlite::types::ValueRef::Real(v) => v.to_string(),
                        rusqlite::types::ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
                        rusqlite::types::ValueRef::Blob(b) => hex::encode(b),
                    })
                    .collect::<Vec<_>>())
            })
            .unwrap();
        rows.map(Result::unwrap).collect()
    };
    let before: Vec<Vec<Vec<String>>> = {
        let mut c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch("PRAGMA journal_mode = WAL; PRAGMA foreign_keys = ON;").unwrap();
        let tx = c.transaction().unwrap();
        tx.execute_batch(bty_web::db::MIGRATIONS[0]).unwrap();
        tx.pragma_update(None, "user_version", 1).unwrap();
        tx.execute_batch(
            r#"
            INSERT INTO machines (mac, policy, image, target_disk_serial, sanboot_drive, provisioning_mode, state,
                                  discovered_at, last_seen_at, last_seen_ip, last_flashed_at, last_flash_status,
                                  last_flash_reason, inventory, inventory_at, lshw, created_at, updated_at)
            VALUES
              ('52:54:00:00:00:01', 'flash-once', 'debian-13', 'S3YNX0K123456', '0x80', 'none', 'flashed',
               '2026-01-02T03:04:05Z', '2026-03-01T10:00:00Z', '10.0.0.21', '2026-03-01T10:02:13Z', 'done', NULL,
               '{"disks":[{"path":"/dev/nvme0n1","size_bytes":512110190592,"model":"Samsung SSD 980","serial":"S3YNX0K123456","transport":"nvme","removable":false,"read_only":false}],"hardware":{"cpu_model":"AMD Ryzen 7 5800U","cpu_threads":16,"memory_bytes":33554432000,"nics":[{"name":"enp1s0","mac":"52:54:00:00:00:01"}],"dmi":{"sys_vendor":"LENOVO"},"arch":"x86_64"}}',
               '2026-03-01T10:00:20Z', '{"id":"ryzen","class":"system"}', '2026-01-02T03:04:05Z', '2026-03-01T10:02:13Z'),
              ('52:54:00:00:00:02', 'flash', 'ubuntu-24.04', 'WD-WX12A', NULL, 'cijoe-offline', 'failed',
               '2026-02-01T00:00:00Z', '2026-03-02T11:00:00Z', '10.0.0.22', NULL, 'failed',
               'SHA-256 mismatch for ubuntu-24.04', NULL, NULL, NULL, '2026-02-01T00:00:00Z', '2026-03-02T11:01:00Z'),
              ('52:54:00:00:00:03', 'tui', NULL, NULL, NULL, 'none', 'idle',
               '2026-03-03T00:00:00Z', '2026-03-03T00:00:00Z', '10.0.0.23', NULL, NULL, NULL, NULL, NULL, NULL,
               '2026-03-03T00:00:00Z', '2026-03-03T00:00:00Z');
            INSERT INTO machine_labels VALUES ('52:54:00:00:00:01', 'rack-a'), ('52:54:00:00:00:01', 'ci'),
                                              ('52:54:00:00:00:02', 'rack-b');
            INSERT INTO flash_history (mac, image, started_at, finished_at, status, reason) VALUES
              ('52:54:00:00:00:01', 'debian-13', '2026-03-01T10:00:30Z', '2026-03-01T10:02:13Z', 'done', NULL),
              ('52:54:00:00:00:02', 'ubuntu-24.04', '2026-03-02T11:00:10Z', '2026-03-02T11:01:00Z', 'failed',
               'SHA-256 mismatch for ubuntu-24.04'),
              ('52:54:00:00:00:02', 'ubuntu-24.04', '2026-03-02T10:00:00Z', '2026-03-02T11:00:05Z', 'abandoned',
               'no report before the next PXE boot');
            INSERT INTO events (ts, kind, subject_kind, subject_id, actor, source_ip, summary, details, acknowledged) VALUES
              ('2026-03-01T10:00:00Z', 'pxe.offered', 'machine', '52:54:00:00:00:01', 'pxe-client', '10.0.0.21',
               '52:54:00:00:00:01: flash (armed)', '{"offer":"flash"}', 1),
              ('2026-03-02T11:01:00Z', 'machine.flash_failed', 'machine', '52:54:00:00:00:02', 'pxe-client',
               '10.0.0.22', 'flash failed', '{"reason":"SHA-256 mismatch"}', 0),
              ('2026-03-02T12:00:00Z', 'machine.updated', 'machine', '52:54:00:00:00:02', 'operator:bty',
               '192.168.1.5', 'policy flash', '{}', 1);
            INSERT INTO settings VALUES ('backup.schedule', 'weekly', '2026-02-01T00:00:00Z'),
                                        ('backup.keep', '4', '2026-02-01T00:00:00Z');
            INSERT INTO users VALUES ('alice', 'pbkdf2-sha256$600000$00112233445566778899aabbccddeeff$' ||
                                      '0000000000000000000000000000000000000000000000000000000000000000',
                                      '2026-01-01T00:00:00Z', '2026-02-01T00:00:00Z');
            INSERT INTO sessions VALUES ('aa11', 'alice', '2026-03-02T12:00:00Z', 4102444800, 'csrf123');
            INSERT INTO api_tokens (name, token_hash, created_by, created_at, last_used_at, revoked_at) VALUES
              ('ci', 'bb22', 'alice', '2026-02-10T00:00:00Z', '2026-03-02T09:00:00Z', NULL),
              ('old', 'cc33', 'alice', '2026-01-10T00:00:00Z', NULL, '2026-01-20T00:00:00Z');
            "#,
        )
        .unwrap();
        tx.commit().unwrap();
        tables.iter().map(|t| dump(&c, t)).collect()
    };
    let (db, reset) = bty_web::db::Db::open(&path).unwrap();
    assert!(reset.is_none(), "a first-schema database is upgraded, not archived");
    drop(db);
    let c = rusqlite::Connection::open(&path).unwrap();
    let v: i64 = c.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!(v, bty_web::db::SCHEMA_VERSION);
    for (t, rows) in tables.iter().zip(&before) {
        let after = dump(&c, t);
        assert_eq!(after.len(), rows.len(), "{t}: row count");
        for (a, b) in after.iter().zip(rows) {
            // Later migrations may add columns; every column that was there keeps its value.
            assert_eq!(&a[..b.len()], &b[..], "{t}: a row changed in the upgrade");
        }
    }
    bty_web::backup::integrity_check(&path).unwrap();
    // And the server reads them as what they are.
    let s = TestServer::start_in(dir, |_| {}).await;
    let token = s.token().await;
    let m = s.authed_json(&token, "/machines/52:54:00:00:00:01").await;
    assert_eq!(m["inventory"]["disks"][0]["serial"], "S3YNX0K123456");
    assert_eq!(m["labels"], serde_json::json!(["ci", "rack-a"]));
    let f = s.authed_json(&token, "/machines/52:54:00:00:00:02/flashes").await;
    assert_eq!(f.as_array().unwrap().len(), 2);
    assert_eq!(s.events(&token, "machine.flash_failed").await[0]["acknowledged"], false);
    assert_eq!(s.authed_json(&token, "/backups/schedule").await["cadence"], "weekly");
}

/// Started with its output in a pipe (a file, the journal), the server logs
/// plain text, and says where clients reach it and where its UI is.
#[test]
fn the_log_in_a_pipe_is_plain_and_names_real_addresses() {
    use std::io::{BufRead, BufReader, Read};
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = bty_web()
        .env_remove("NO_COLOR")
        .env("BTY_PATHS_STATE_DIR", dir.path())
        .env("BTY_SERVER_HOST", "0.0.0.0")
        .env("BTY_SERVER_PORT", port.to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut log = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let serving = loop {
        let mut line = Vec::new();
        let n = out.read_until(b'\n', &mut line).unwrap();
        assert!(n > 0, "bty-web ended before serving: {}", String::from_utf8_lossy(&log));
        log.extend_from_slice(&line);
        let text = String::from_utf8_lossy(&line).into_owned();
        if text.contains("serving on") {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no `serving on` line: {}",
            String::from_utf8_lossy(&log)
        );
    };
    // Answering, so its shutdown handler is in place too.
    let health = reqwest::blocking::get(format!("http://127.0.0.1:{port}/healthz")).unwrap();
    assert_eq!(health.status(), 200);
    // SAFETY: signalling the child this test started.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    out.read_to_end(&mut log).unwrap();
    let mut err = Vec::new();
    child.stderr.take().unwrap().read_to_end(&mut err).unwrap();
    child.wait().unwrap();
    log.extend_from_slice(&err);
    let text = String::from_utf8_lossy(&log);
    assert!(!log.contains(&0x1b), "escape codes in a piped log:\n{text}");
    assert!(text.contains("shutting down"), "{text}");
    assert!(!serving.contains("<this-host>"), "{serving}");
    assert!(serving.contains(&format!("http://127.0.0.1:{port}")), "{serving}");
    assert!(serving.contains("/ui/"), "{serving}");
    assert!(serving.contains(&format!("listening on 0.0.0.0:{port}")), "{serving}");
}
