//! Operations: backups over the API and on the command line, restore,
//! export/import, and what survives load, `kill -9` and a full disk.

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::TestServer;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_bty-web");

fn mac(i: u32) -> String {
    format!("52:54:{:02x}:{:02x}:{:02x}:{:02x}", (i >> 24) as u8, (i >> 16) as u8, (i >> 8) as u8, i as u8)
}

fn count_machines(db: &Path) -> i64 {
    rusqlite::Connection::open(db)
        .unwrap()
        .query_row("SELECT count(*) FROM machines", [], |r| r.get(0))
        .unwrap()
}

fn macs_in(db: &Path) -> HashSet<String> {
    let c = rusqlite::Connection::open(db).unwrap();
    let mut s = c.prepare("SELECT mac FROM machines").unwrap();
    let rows = s.query_map([], |r| r.get::<_, String>(0)).unwrap();
    rows.map(Result::unwrap).collect()
}

fn integrity_ok(db: &Path) {
    bty_web::backup::integrity_check(db).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_now_list_download_delete_and_schedule() {
    let s = TestServer::start_with(|c| c.tuning.backup_tick_seconds = 1).await;
    let token = s.token().await;
    for i in 0..3 {
        assert_eq!(s.put_machine(&token, &mac(i), json!({"policy": "local"})).await.0, 201);
    }
    let http = reqwest::Client::new();
    let r = http.post(s.url("/backups")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let made: Value = r.json().await.unwrap();
    let name = made["name"].as_str().unwrap().to_string();
    assert_eq!(made["files"], json!(["inventory.json", "state.db"]));

    let list = s.authed_json(&token, "/backups").await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    let db = http.get(s.url(&format!("/backups/{name}/state.db"))).bearer_auth(&token).send().await.unwrap();
    assert_eq!(db.status(), 200);
    let bytes = db.bytes().await.unwrap();
    let copy = s.state_dir().join("downloaded.db");
    std::fs::write(&copy, &bytes).unwrap();
    integrity_ok(&copy);
    assert_eq!(count_machines(&copy), 3);
    let inv = s.authed_json(&token, &format!("/backups/{name}/inventory.json")).await;
    assert_eq!(inv["bty_export_version"], 3);
    assert_eq!(inv["machines"].as_array().unwrap().len(), 3);
    // No way out of the backup directory.
    for bad in ["/backups/..%2F/state.db", &format!("/backups/{name}/..%2Fstate.db"), "/backups/x/state.db"] {
        let r = http.get(s.url(bad)).bearer_auth(&token).send().await.unwrap();
        assert!(r.status() == 404 || r.status() == 400, "{bad}: {}", r.status());
    }
    assert!(!s.events(&token, "backup.created").await.is_empty());

    // A daily schedule with nothing recent enough... is already satisfied by
    // the backup just made; keep=1 only prunes after a scheduled run. Make the
    // existing backup look old so the scheduler runs within a tick or two.
    let old = "2020-01-01T00-00-00Z";
    std::fs::rename(s.state_dir().join("backups").join(&name), s.state_dir().join("backups").join(old))
        .unwrap();
    let r = http
        .put(s.url("/backups/schedule"))
        .bearer_auth(&token)
        .json(&json!({"cadence": "daily", "keep": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let bad = http
        .put(s.url("/backups/schedule"))
        .bearer_auth(&token)
        .json(&json!({"cadence": "hourly"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 422);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let l = s.authed_json(&token, "/backups").await;
        let names: Vec<&str> = l.as_array().unwrap().iter().map(|b| b["name"].as_str().unwrap()).collect();
        if names.len() == 1 && names[0] != old {
            break;
        }
        assert!(Instant::now() < deadline, "scheduled backup + prune did not happen: {names:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The prune is recorded after the directories are gone.
    while s.events(&token, "backup.pruned").await.is_empty() {
        assert!(Instant::now() < deadline, "no backup.pruned event after the prune");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let newest = s.authed_json(&token, "/backups").await[0]["name"].as_str().unwrap().to_string();
    let r = http.delete(s.url(&format!("/backups/{newest}"))).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert!(s.authed_json(&token, "/backups").await.as_array().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_under_write_load_holds_every_acknowledged_write() {
    let s = Arc::new(TestServer::start().await);
    let token = s.token().await;
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..16u32 {
        let (s, token, acked, stop) = (s.clone(), token.clone(), acked.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut i = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let m = mac(w << 20 | i);
                let (status, _) =
                    s.put_machine(&token, &m, json!({"policy": "local", "labels": ["load"]})).await;
                assert_eq!(status, 201);
                acked.lock().unwrap().push(m);
                i += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before_backup: Vec<String> = acked.lock().unwrap().clone();
    let t0 = Instant::now();
    let r = reqwest::Client::new().post(s.url("/backups")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let took = t0.elapsed();
    let name = r.json::<Value>().await.unwrap()["name"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let total = acked.lock().unwrap().len();
    let rate = total as f64 / 1.8;
    println!("write load: {total} PUT /machines in ~1.8 s ({rate:.0}/s); backup took {took:?} under load");
    assert!(rate > 100.0, "load too light to mean anything: {rate:.0}/s");
    let db = s.state_dir().join("backups").join(&name).join("state.db");
    integrity_ok(&db);
    let have = macs_in(&db);
    let missing: Vec<&String> = before_backup.iter().filter(|m| !have.contains(*m)).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged writes missing from the backup: {:?}",
        missing.len(),
        &missing[..3.min(missing.len())]
    );
}

/// The real binary on a free loopback port; returns it and its base URL.
fn spawn_server(state: &Path) -> (Child, String) {
    let mut child = Command::new(BIN)
        .env("BTY_PATHS_STATE_DIR", state)
        .env("BTY_SERVER_HOST", "127.0.0.1")
        .env("BTY_SERVER_PORT", "0")
        .env("BTY_ADMIN_PASSWORD", "ops-test")
        .env("NO_COLOR", "1")
        .env("BTY_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    for line in out.lines() {
        let line = line.unwrap();
        if let Some(rest) = line.split("listening on 127.0.0.1:").nth(1) {
            let port: String = rest.chars().take_while(char::is_ascii_digit).collect();
            return (child, format!("http://127.0.0.1:{port}"));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("bty-web did not start on {}", state.display());
}

#[test]
fn kill_9_during_writes_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.db");
    let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let mut acked: Vec<String> = Vec::new();
    let mut n = 0u32;
    let mut rng = 0x9e3779b9u32;
    const TRIALS: u32 = 50;
    for trial in 0..TRIALS {
        let (mut child, base) = spawn_server(dir.path());
        // Writers: first contacts (each an insert plus its audit event) from
        // four threads, until the process dies under them.
        let start = Arc::new(Mutex::new(n));
        let got: Arc<Mutex<Vec<String>>> = Arc::default();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (base, http, next, got) = (base.clone(), http.clone(), start.clone(), got.clone());
                std::thread::spawn(move || loop {
                    let m = {
                        let mut g = next.lock().unwrap();
                        *g += 1;
                        mac(0x0100_0000 | *g)
                    };
                    match http.get(format!("{base}/pxe/{m}")).send() {
                        Ok(r) if r.status() == 200 => match r.text() {
                            Ok(t) if t.starts_with("#!ipxe") => got.lock().unwrap().push(m),
                            _ => return,
                        },
                        _ => return,
                    }
                })
            })
            .collect();
        rng ^= rng << 13;
        rng ^= rng >> 17;
        rng ^= rng << 5;
        std::thread::sleep(Duration::from_millis(50 + (rng % 400) as u64));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        for t in threads {
            t.join().unwrap();
        }
        n = *start.lock().unwrap() + 1;
        acked.extend(got.lock().unwrap().drain(..));
        integrity_ok(&db);
        let have = macs_in(&db);
        let missing = acked.iter().filter(|m| !have.contains(*m)).count();
        assert_eq!(missing, 0, "trial {trial}: {missing} acknowledged discoveries lost after kill -9");
    }
    // And it still serves after all that.
    let (mut child, base) = spawn_server(dir.path());
    let r = http.get(format!("{base}/healthz")).send().unwrap();
    assert_eq!(r.status(), 200);
    child.kill().unwrap();
    child.wait().unwrap();
    println!(
        "kill -9: {TRIALS} trials, {} acknowledged writes, none lost, integrity_check ok each time",
        acked.len()
    );
    assert!(acked.len() > TRIALS as usize, "too few writes to mean anything: {}", acked.len());
}

#[test]
fn command_line_backup_restore_export_import() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let run = |args: &[&str], state: &Path| {
        let out = Command::new(BIN).args(args).env("BTY_PATHS_STATE_DIR", state).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // A server discovers two machines and gets an inventory for one, then stops.
    let (mut child, base) = spawn_server(&state);
    let http = reqwest::blocking::Client::new();
    let mut scripts = Vec::new();
    for i in 0..2 {
        let r = http.get(format!("{base}/pxe/{}", mac(i))).send().unwrap();
        assert_eq!(r.status(), 200);
        scripts.push(r.text().unwrap());
    }
    let offer_token = common::offer_token(&scripts[0]).unwrap();
    let inv = json!({"disks": [{"path": "/dev/vda", "size_bytes": 1u64 << 30, "serial": "S0"}],
                     "hardware": {"cpu_threads": 2, "memory_bytes": 1u64 << 30, "nics": [], "dmi": {}, "arch": "x86_64"}});
    assert_eq!(
        http.post(format!("{base}/pxe/{}/inventory", mac(0)))
            .header("x-bty-offer-token", &offer_token)
            .json(&inv)
            .send()
            .unwrap()
            .status(),
        204
    );

    // Backup while it runs.
    let (ok, out, err) = run(&["backup"], &state);
    assert!(ok, "{err}");
    let backup_dir = std::path::PathBuf::from(out.trim());
    assert!(backup_dir.join("state.db").is_file() && backup_dir.join("inventory.json").is_file());
    // Restore refuses while the server runs.
    let (ok, _, err) = run(&["restore", backup_dir.to_str().unwrap(), "--force"], &state);
    assert!(!ok && err.contains("already running"), "{err}");
    child.kill().unwrap();
    child.wait().unwrap();

    // Restore into a fresh state directory; then refuses to overwrite without --force.
    let fresh = dir.path().join("fresh");
    let (ok, out, err) = run(&["restore", backup_dir.to_str().unwrap()], &fresh);
    assert!(ok, "{err}");
    assert!(out.contains("2 machines"), "{out}");
    assert_eq!(macs_in(&fresh.join("state.db")), macs_in(&state.join("state.db")));
    let (ok, _, err) = run(&["restore", backup_dir.to_str().unwrap()], &fresh);
    assert!(!ok && err.contains("--force"), "{err}");

    // Export, and import into another fresh directory.
    let bundle = dir.path().join("bundle");
    let (ok, out, err) = run(&["export", bundle.to_str().unwrap()], &state);
    assert!(ok && out.contains("2 machine"), "{out}{err}");
    let other = dir.path().join("other");
    let (ok, out, err) = run(&["import", bundle.to_str().unwrap()], &other);
    assert!(ok && out.contains("2 new"), "{out}{err}");
    let c = rusqlite::Connection::open(other.join("state.db")).unwrap();
    let (policy, disks): (String, String) = c
        .query_row("SELECT policy, inventory FROM machines WHERE mac = ?1", [mac(0)], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(policy, "inventory");
    assert!(disks.contains("\"S0\""), "{disks}");
    // A bundle of another version is refused, saying which one is accepted.
    std::fs::write(bundle.join("inventory.json"), r#"{"bty_export_version": 2, "machines": []}"#).unwrap();
    let (ok, _, err) = run(&["import", bundle.to_str().unwrap()], &other);
    assert!(!ok && err.contains("bty_export_version 3"), "{err}");
}

#[test]
fn restore_refuses_anything_but_a_whole_bty_database() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let state_db = state.join("state.db");
    drop(bty_web::db::Db::open(&state_db).unwrap());
    rusqlite::Connection::open(&state_db)
        .unwrap()
        .execute("INSERT INTO machines (mac, created_at, updated_at) VALUES (?1, 't', 't')", [mac(7)])
        .unwrap();
    let backups = dir.path().join("backups");
    let good = backups.join(bty_web::backup::create(&state_db, &backups).unwrap().name).join("state.db");
    let before = std::fs::read(&state_db).unwrap();

    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let variant = |name: &str, sql: &str| {
        let p = src.join(name);
        std::fs::copy(&good, &p).unwrap();
        rusqlite::Connection::open(&p).unwrap().execute_batch(sql).unwrap();
        p
    };
    let text = src.join("notes.txt");
    std::fs::write(&text, "machines: 52:54:00:00:00:01\n").unwrap();
    let foreign = src.join("foreign.db");
    rusqlite::Connection::open(&foreign).unwrap().execute_batch("CREATE TABLE photos (id INTEGER)").unwrap();
    let other_app = variant("other-app.db", "PRAGMA application_id = 305419896");
    let newer = variant("newer.db", &format!("PRAGMA user_version = {}", bty_web::db::SCHEMA_VERSION + 1));
    let no_schema = variant("no-schema.db", "PRAGMA user_version = 0");
    let partial = src.join("partial.db");
    let c = rusqlite::Connection::open(&partial).unwrap();
    c.execute_batch(
        "CREATE TABLE machines (mac TEXT); CREATE TABLE events (id INTEGER); PRAGMA user_version = 2",
    )
    .unwrap();
    drop(c);
    let truncated = src.join("truncated.db");
    let bytes = std::fs::read(&good).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();

    let newest = format!("schema version {}", bty_web::db::SCHEMA_VERSION + 1);
    let cases: [(&Path, &str); 7] = [
        (&text, "not an SQLite database"),
        (&foreign, "not a bty state database"),
        (&other_app, "application_id 0x12345678"),
        (&newer, &newest),
        (&no_schema, "has no bty schema version (user_version 0)"),
        (
            &partial,
            "lacks the bty table(s) settings, users, sessions, api_tokens, flash_history, machine_labels",
        ),
        (&truncated, "truncated"),
    ];
    for (bad, why) in cases {
        let out = Command::new(BIN)
            .args(["restore", bad.to_str().unwrap(), "--force"])
            .env("BTY_PATHS_STATE_DIR", &state)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{} was restored", bad.display());
        assert!(err.contains(why) && err.contains(bad.to_str().unwrap()), "{}: {err}", bad.display());
        let untouched = format!("The state database {} is untouched", state_db.display());
        assert!(err.contains(&untouched), "{err}");
        assert_eq!(std::fs::read(&state_db).unwrap(), before, "{} changed state.db", bad.display());
    }
    let mut left: Vec<String> = std::fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert!(
        left.iter().all(|n| n.starts_with("state.db") && !n.contains("pre-restore") || n == "bty-web.lock"),
        "{left:?}"
    );

    // Stamped as from schema 3 on, or unstamped at schemas 1-2: both are bty's.
    let stamped = variant("stamped.db", &format!("PRAGMA application_id = {}", bty_web::db::APPLICATION_ID));
    for ok in [&good, &stamped] {
        let out = Command::new(BIN)
            .args(["restore", ok.to_str().unwrap(), "--force"])
            .env("BTY_PATHS_STATE_DIR", &state)
            .output()
            .unwrap();
        let (o, e) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{}: {e}", ok.display());
        assert!(o.contains("1 machines") && o.contains("pre-restore"), "{o}");
    }
}

#[test]
fn import_refuses_a_running_server_and_loose_bundles() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let bundle = dir.path().join("bundle.json");
    let machine = |mac: &str| json!({"mac": mac, "hardware": null, "hw_lshw": null, "known_disks": []});
    let write = |v: &Value| std::fs::write(&bundle, serde_json::to_vec(v).unwrap()).unwrap();
    let import = || {
        let out = Command::new(BIN)
            .args(["import", bundle.to_str().unwrap()])
            .env("BTY_PATHS_STATE_DIR", &state)
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    write(&json!({"bty_export_version": 3, "exported_at": "t", "exported_by": "x",
                  "machines": [machine(&mac(1)), machine(&mac(2))]}));

    let (mut child, _base) = spawn_server(&state);
    let (ok, err) = import();
    let pid = child.id();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!ok, "imported while the server ran");
    assert!(
        err.contains("bty-web is running on this state directory") && err.contains("stop it first"),
        "{err}"
    );
    assert!(err.contains(&format!("pid {pid}")) && err.contains("Nothing was imported"), "{err}");
    assert_eq!(count_machines(&state.join("state.db")), 0);

    // Stopped, it imports.
    let (ok, err) = import();
    assert!(ok, "{err}");
    assert_eq!(count_machines(&state.join("state.db")), 2);

    let mut extra = machine(&mac(3));
    extra["colour"] = json!("red");
    let loose = [
        (
            json!({"bty_export_version": "3", "exported_at": "t", "exported_by": "x", "machines": []}),
            "bty_export_version must be an integer such as 3, not the string \"3\"",
        ),
        (
            json!({"bty_export_version": 3.0, "exported_at": "t", "exported_by": "x", "machines": []}),
            "bty_export_version must be an integer such as 3, not the number 3.0",
        ),
        (
            json!({"bty_export_version": 3, "exported_at": "t", "exported_by": "x", "note": "hi", "machines": []}),
            "note: unknown field",
        ),
        (
            json!({"bty_export_version": 3, "exported_at": "t", "exported_by": "x",
                "machines": [machine(&mac(3)), machine(&mac(4)), extra]}),
            "machines[2].colour: unknown field",
        ),
        (
            json!({"bty_export_version": 3, "exported_at": "t", "exported_by": "x",
                "machines": [machine(&mac(3)), machine(&mac(4)), machine("52:54:00:zz:00:01")]}),
            "machines[2].mac \"52:54:00:zz:00:01\": not a MAC address",
        ),
    ];
    for (v, want) in loose {
        write(&v);
        let (ok, err) = import();
        assert!(!ok && err.contains(want) && err.contains(bundle.to_str().unwrap()), "{want}: {err}");
        assert_eq!(count_machines(&state.join("state.db")), 2, "{want}: something was imported");
    }
}

/// The real binary under a given umask; its base URL and the log lines up to
/// the one saying where it listens.
fn spawn_server_umask(state: &Path, umask: libc::mode_t) -> (Child, String, Vec<String>) {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(BIN);
    cmd.env("BTY_PATHS_STATE_DIR", state)
        .env("BTY_SERVER_HOST", "127.0.0.1")
        .env("BTY_SERVER_PORT", "0")
        .env("NO_COLOR", "1")
        .env("BTY_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    // SAFETY: umask is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::umask(umask);
            Ok(())
        })
    };
    let mut child = cmd.spawn().unwrap();
    let mut seen = Vec::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(rest) = line.split("listening on 127.0.0.1:").nth(1) {
            let port: String = rest.chars().take_while(char::is_ascii_digit).collect();
            return (child, format!("http://127.0.0.1:{port}"), seen);
        }
        seen.push(line);
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("bty-web did not start on {}: {seen:?}", state.display());
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).permissions().mode()
        & 0o7777
}

#[test]
fn state_is_owner_only_whatever_the_umask() {
    use std::os::unix::process::CommandExt;
    for umask in [0o022, 0o000] {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("var/state");
        let (mut child, base, _) = spawn_server_umask(&state, umask);
        let http = reqwest::blocking::Client::new();
        assert_eq!(http.get(format!("{base}/pxe/{}", mac(1))).send().unwrap().status(), 200);
        let run = |args: &[&str]| {
            let mut cmd = Command::new(BIN);
            cmd.args(args).env("BTY_PATHS_STATE_DIR", &state);
            // SAFETY: as above.
            unsafe {
                cmd.pre_exec(move || {
                    libc::umask(umask);
                    Ok(())
                })
            };
            let out = cmd.output().unwrap();
            assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        let backup = std::path::PathBuf::from(run(&["backup"]));
        let export = state.join("export");
        run(&["export", export.to_str().unwrap()]);
        child.kill().unwrap(); // -wal and -shm stay behind
        child.wait().unwrap();

        let expect = [
            (state.clone(), 0o700),
            (state.join("state.db"), 0o600),
            (state.join("state.db-wal"), 0o600),
            (state.join("state.db-shm"), 0o600),
            (state.join("bty-web.lock"), 0o600),
            (state.join("boot"), 0o700),
            (state.join("backups"), 0o700),
            (backup.clone(), 0o700),
            (backup.join("state.db"), 0o600),
            (backup.join("inventory.json"), 0o600),
            (export.clone(), 0o700),
            (export.join("inventory.json"), 0o600),
        ];
        for (p, want) in expect {
            assert_eq!(mode(&p), want, "umask {umask:03o}: {}", p.display());
        }
    }

    // A state directory and database left open to others are tightened, saying so.
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (mut child, _, _) = spawn_server_umask(&state, 0o022);
    child.kill().unwrap();
    child.wait().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(state.join("state.db"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let (mut child, _, log) = spawn_server_umask(&state, 0o022);
    child.kill().unwrap();
    child.wait().unwrap();
    // Group traversal stays (a group may be let through to images/); nothing else.
    assert_eq!((mode(&state), mode(&state.join("state.db"))), (0o710, 0o600));
    for (p, was) in [(state.clone(), "0755"), (state.join("state.db"), "0644")] {
        let said = format!("{} was mode {was}", p.display());
        assert!(log.iter().any(|l| l.contains("WARN") && l.contains(&said)), "{said} not in {log:?}");
    }
}

/// A full state disk: writes fail saying so, nothing stored is lost, and the
/// server recovers once space returns. Needs root for a small tmpfs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_state_disk_fails_clearly_and_recovers() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP full_state_disk_fails_clearly_and_recovers: needs root to mount a small tmpfs");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let ok =
        Command::new("mount").args(["-t", "tmpfs", "-o", "size=3m", "tmpfs"]).arg(&mnt).status().unwrap();
    assert!(ok.success(), "mount tmpfs");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _guard = Unmount(mnt.clone());
    let state = tempfile::tempdir_in(&mnt).unwrap();
    let s = TestServer::start_in(state, |_| {}).await;
    let token = s.token().await;
    for i in 0..5 {
        assert_eq!(s.put_machine(&token, &mac(i), json!({"policy": "local"})).await.0, 201);
    }
    // Take the rest of the space.
    let filler = mnt.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0x5au8; 64 << 10];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
    }
    let mut failure = None;
    for i in 100..5000 {
        let (status, body) = s
            .put_machine(
                &token,
                &mac(i),
                json!({"policy": "local", "labels": ["a-long-label-to-fill-pages-quickly"]}),
            )
            .await;
        if status != 201 {
            failure = Some((status, body));
            break;
        }
    }
    let (status, body) = failure.expect("writes kept succeeding on a full disk");
    let msg = body["error"].as_str().unwrap_or_default().to_string();
    assert_eq!(status, 507, "{body}");
    assert!(
        msg.contains("full") && msg.to_lowercase().contains("free space"),
        "the error says what failed and what to do: {msg}"
    );
    for i in 0..5 {
        let m = s.authed_json(&token, &format!("/machines/{}", mac(i))).await;
        assert_eq!(m["policy"], "local");
    }
    std::fs::remove_file(&filler).unwrap();
    let (status, _) = s.put_machine(&token, &mac(9999), json!({"policy": "local"})).await;
    assert_eq!(status, 201, "recovers once space returns");
    drop(s);
}
