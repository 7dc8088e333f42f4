//! Trust on the PXE side, over a real server: reports without the current
//! offer's token change nothing, HEAD has no side effects, and what an
//! unauthenticated client can make the server store stays bounded.

mod common;

use std::time::{Duration, Instant};

use common::{offer_token, TestServer, MAC};
use serde_json::{json, Value};

const OTHER: &str = "52:54:00:aa:bb:02";

async fn machine(s: &TestServer, token: &str, mac: &str) -> Value {
    s.authed_json(token, &format!("/machines/{mac}")).await
}

/// Everything a report could change about a machine.
fn observable(m: &Value) -> Value {
    json!({
        "state": m["state"], "next_boot": m["next_boot"], "last_flash_status": m["last_flash_status"],
        "last_flashed_at": m["last_flashed_at"], "inventory": m["inventory"], "has_lshw": m["has_lshw"],
    })
}

async fn post(s: &TestServer, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
    let mut r = reqwest::Client::new().post(s.url(path)).json(&body);
    if let Some(t) = token {
        r = r.header("x-bty-offer-token", t);
    }
    let r = r.send().await.unwrap();
    let code = r.status().as_u16();
    (code, r.json().await.unwrap_or(Value::Null))
}

fn flash_binding() -> Value {
    json!({"policy": "flash-once", "image": "local-img", "target_disk_serial": "S1"})
}

/// Reports without a token, with an earlier offer's, with another machine's,
/// after the offer ended, and with a token of the wrong shape: each is a 403
/// with a reason, and nothing about the machine changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_without_the_current_offers_token_change_nothing() {
    let s = TestServer::start().await;
    let admin = s.token().await;
    s.put_machine(&admin, MAC, flash_binding()).await;
    s.put_machine(&admin, OTHER, flash_binding()).await;
    let (_, old) = s.pxe_boot(MAC).await;
    let (_, current) = s.pxe_boot(MAC).await;
    let (_, other) = s.pxe_boot(OTHER).await;
    let (old, current, other) = (old.unwrap(), current.unwrap(), other.unwrap());
    assert_ne!(old, current, "every offer mints its own token");
    let before = observable(&machine(&s, &admin, MAC).await);
    let inv = json!({"disks": [{"path": "/dev/sda", "serial": "FAKE"}]});
    let cases: [(&str, Option<&str>, &str); 5] = [
        ("no token", None, "no X-Bty-Offer-Token"),
        ("an earlier offer's token", Some(&old), "not 52:54:00:12:34:56's current one"),
        ("another machine's token", Some(&other), "not 52:54:00:12:34:56's current one"),
        ("a made-up token", Some("zz"), "not 52:54:00:12:34:56's current one"),
        ("an empty token", Some(""), "no X-Bty-Offer-Token"),
    ];
    for (what, token, why) in cases {
        for (path, body) in [
            ("done", json!({"status": "done"})),
            ("status", json!({"status": "failed", "reason": "forged"})),
            ("inventory", inv.clone()),
        ] {
            let (code, v) = post(&s, &format!("/pxe/{MAC}/{path}"), token, body).await;
            assert_eq!(code, 403, "{what} /{path}: {v}");
            assert!(v["error"].as_str().unwrap().contains(why), "{what} /{path}: {v}");
        }
    }
    assert_eq!(observable(&machine(&s, &admin, MAC).await), before);
    let flashes = s.authed_json(&admin, &format!("/machines/{MAC}/flashes")).await;
    assert!(flashes.as_array().unwrap().iter().all(|f| f["status"] != "done"), "{flashes}");

    // The real live environment's report still works, once.
    let (code, _) = post(&s, &format!("/pxe/{MAC}/done"), Some(&current), json!({"status": "done"})).await;
    assert_eq!(code, 204);
    let after = machine(&s, &admin, MAC).await;
    assert_eq!(after["state"], "flashed");
    // After the offer ended: refused, and it stays flashed.
    let (code, v) =
        post(&s, &format!("/pxe/{MAC}/status"), Some(&current), json!({"status": "failed"})).await;
    assert_eq!(code, 403);
    assert!(v["error"].as_str().unwrap().contains("no live environment is outstanding"), "{v}");
    assert_eq!(machine(&s, &admin, MAC).await["state"], "flashed");

    // Fifteen refusals from one address fold into one tripwire with a count.
    let refused = s.events(&admin, "pxe.report.refused").await;
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0]["count"], 16);
    assert_eq!(refused[0]["acknowledged"], false);
    let (_, metrics) = s.get_text("/metrics").await;
    assert!(metrics.contains("bty_pxe_reports_refused_total 16"), "{metrics}");
}

/// The four forgeries that used to work with one unauthenticated request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_reports_cannot_change_what_a_machine_boots() {
    let s = TestServer::start().await;
    let admin = s.token().await;

    // 1. A failed status on a flashed flash-once machine would have reflashed it.
    s.put_machine(&admin, MAC, flash_binding()).await;
    let (_, t) = s.pxe_boot(MAC).await;
    assert_eq!(s.report(&format!("/pxe/{MAC}/done"), &t.unwrap(), json!({"status": "done"})).await.0, 204);
    let (code, _) = post(&s, &format!("/pxe/{MAC}/status"), None, json!({"status": "failed"})).await;
    assert_eq!(code, 403);
    assert_eq!(s.pxe_boot(MAC).await.0, "local");

    // 2. A done on a freshly armed machine would have skipped the flash.
    s.put_machine(&admin, MAC, flash_binding()).await;
    let (code, _) = post(&s, &format!("/pxe/{MAC}/done"), None, json!({"status": "done"})).await;
    assert_eq!(code, 403);
    assert_eq!(machine(&s, &admin, MAC).await["state"], "pending");
    let (offer, live) = s.pxe_boot(MAC).await;
    assert_eq!(offer, "flash");

    // 3. A done while the real flash runs, then a power cut, would have
    //    booted a half-written disk.
    let (code, _) =
        post(&s, &format!("/pxe/{MAC}/done"), Some("0".repeat(64).as_str()), json!({"status": "done"})).await;
    assert_eq!(code, 403);
    assert_eq!(s.pxe_boot(MAC).await.0, "flash", "after a power cut the flash starts again");
    // ... and the live environment the power cut killed cannot report either.
    assert_eq!(s.report(&format!("/pxe/{MAC}/done"), &live.unwrap(), json!({"status": "done"})).await.0, 403);

    // 4. A fake inventory would have shown the operator made-up disks.
    s.put_machine(&admin, OTHER, json!({"policy": "inventory"})).await;
    let fake = json!({"disks": [{"path": "/dev/sda", "serial": "EVIL", "size_bytes": 1}]});
    assert_eq!(post(&s, &format!("/pxe/{OTHER}/inventory"), None, fake).await.0, 403);
    assert_eq!(machine(&s, &admin, OTHER).await["inventory"], Value::Null);

    // Re-arming ends the outstanding offer: an old flash's done cannot mark
    // the new binding flashed.
    let (_, t) = s.pxe_boot(OTHER).await;
    s.put_machine(&admin, OTHER, flash_binding()).await;
    let inv = json!({"disks": []});
    assert_eq!(s.report(&format!("/pxe/{OTHER}/inventory"), &t.unwrap(), inv).await.0, 403);
    let (_, t) = s.pxe_boot(OTHER).await;
    s.put_machine(&admin, OTHER, flash_binding()).await;
    assert_eq!(s.report(&format!("/pxe/{OTHER}/done"), &t.unwrap(), json!({"status": "done"})).await.0, 403);
    assert_eq!(machine(&s, &admin, OTHER).await["state"], "pending");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_on_pxe_routes_has_no_side_effects() {
    let s = TestServer::start().await;
    let admin = s.token().await;
    let c = reqwest::Client::new();
    // An unknown MAC is not recorded.
    for path in ["/pxe/52:54:00:00:00:99", "/pxe/52:54:00:00:00:99/plan"] {
        let r = c.head(s.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    let r = c.get(s.url("/machines/52:54:00:00:00:99")).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(r.status(), 404);
    // An armed machine stays armed, and no offer or event is made.
    s.put_machine(&admin, MAC, flash_binding()).await;
    let events_before = s.authed_json(&admin, "/events?limit=1000").await["events"].as_array().unwrap().len();
    for _ in 0..3 {
        assert_eq!(c.head(s.url(&format!("/pxe/{MAC}"))).send().await.unwrap().status(), 200);
    }
    assert_eq!(machine(&s, &admin, MAC).await["state"], "pending");
    let events_after = s.authed_json(&admin, "/events?limit=1000").await["events"].as_array().unwrap().len();
    assert_eq!(events_before, events_after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledge_all_matching() {
    let s = TestServer::start().await;
    let admin = s.token().await;
    // Refusals from one address fold; orphans are their own kind.
    s.put_machine(&admin, MAC, flash_binding()).await;
    for _ in 0..3 {
        post(&s, &format!("/pxe/{MAC}/done"), None, json!({"status": "done"})).await;
        post(&s, &format!("/pxe/{OTHER}/done"), Some("x"), json!({"status": "done"})).await;
    }
    let unacked = s.authed_json(&admin, "/events?unacked=1").await;
    assert_eq!(unacked["events"].as_array().unwrap().len(), 2, "{unacked}");
    let c = reqwest::Client::new();
    let r = c
        .post(s.url("/events/ack"))
        .bearer_auth(&admin)
        .json(&json!({"kind": "pxe.report.*"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["acknowledged"], 1);
    let unacked = s.authed_json(&admin, "/events?unacked=1").await;
    assert_eq!(unacked["events"][0]["kind"], "pxe.client.orphan");
    // After acknowledging, the next refusal starts a new tripwire.
    post(&s, &format!("/pxe/{MAC}/done"), None, json!({"status": "done"})).await;
    let refused = s.events(&admin, "pxe.report.refused").await;
    assert_eq!(refused.len(), 2);
    assert_eq!((refused[0]["count"].as_i64(), refused[0]["acknowledged"].as_bool()), (Some(1), Some(false)));
    let r = c.post(s.url("/events/ack")).bearer_auth(&admin).json(&json!({})).send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["acknowledged"], 2);
    assert!(s.authed_json(&admin, "/events?unacked=1").await["events"].as_array().unwrap().is_empty());
    let r =
        c.post(s.url("/events/ack")).bearer_auth(&admin).json(&json!({"kinds": "x"})).send().await.unwrap();
    assert_eq!(r.status(), 422);
    // Without a login it is refused like every operator route.
    assert_eq!(c.post(s.url("/events/ack")).json(&json!({})).send().await.unwrap().status(), 401);
}

/// Bounded floods of what an unauthenticated client can send: orphan and
/// forged reports, oversized inventories, huge usernames. The server keeps
/// answering PXE and health checks, and what it stores stays small.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_clients_cannot_wear_the_server_down() {
    let s = TestServer::start().await;
    let admin = s.token().await;
    s.put_machine(&admin, MAC, flash_binding()).await;
    let c = reqwest::Client::new();
    let flood = |path: String, token: Option<String>, body: Vec<u8>, n: usize| {
        let c = c.clone();
        let url = s.url(&path);
        tokio::spawn(async move {
            let mut codes = std::collections::BTreeMap::new();
            for _ in 0..n {
                let mut r = c.post(&url).header("content-type", "application/json").body(body.clone());
                if let Some(t) = &token {
                    r = r.header("x-bty-offer-token", t);
                }
                // An oversized body is answered 413 before it is read, and the
                // connection closed: a client still sending may see only the close.
                let code = match r.send().await {
                    Ok(resp) => resp.status().as_u16(),
                    Err(e) if body.len() > 64 * 1024 => {
                        assert!(e.is_request(), "{e}");
                        0
                    }
                    Err(e) => panic!("{e}: {:?}", std::error::Error::source(&e)),
                };
                *codes.entry(code).or_insert(0) += 1;
            }
            codes
        })
    };
    let big_inventory = {
        let disks: Vec<Value> = (0..64).map(|i| json!({"path": format!("/dev/sd{i}")})).collect();
        serde_json::to_vec(&json!({"disks": disks, "lshw": {"blob": "x".repeat(600 * 1024)}})).unwrap()
    };
    let (_, live) = s.pxe_boot(MAC).await;
    let tasks = vec![
        // Orphan reports from many made-up machines.
        flood(
            "/pxe/02:00:00:00:00:01/status".into(),
            Some("x".into()),
            br#"{"status":"done"}"#.to_vec(),
            400,
        ),
        flood(format!("/pxe/{MAC}/done"), None, br#"{"status":"done"}"#.to_vec(), 400),
        // Inventories over the size limit, even with the right token.
        flood(format!("/pxe/{MAC}/inventory"), live.clone(), big_inventory, 50),
    ];
    let long_user = "u".repeat(1 << 20);
    let login = {
        let c = c.clone();
        let url = s.url("/auth/login");
        tokio::spawn(async move {
            for _ in 0..5 {
                let body = json!({"username": long_user, "password": "x"});
                let _ = c.post(&url).json(&body).send().await;
            }
        })
    };
    // PXE and health stay responsive while the floods run.
    let mut worst = Duration::ZERO;
    for i in 0..30 {
        let t = Instant::now();
        assert_eq!(c.get(s.url("/healthz")).send().await.unwrap().status(), 200);
        let (code, _) = s.get_text(&format!("/pxe/02:00:00:00:01:{i:02x}")).await;
        assert_eq!(code, 200);
        worst = worst.max(t.elapsed());
    }
    assert!(worst < Duration::from_secs(2), "a PXE answer took {worst:?} under the flood");
    for t in tasks {
        let codes = t.await.unwrap();
        assert!(codes.keys().all(|c| [0, 403, 413].contains(c)), "{codes:?}");
    }
    login.await.unwrap();
    // The real live environment still reports.
    assert_eq!(s.report(&format!("/pxe/{MAC}/inventory"), &live.unwrap(), json!({"disks": []})).await.0, 204);

    // One aggregated row per kind and source, each text bounded.
    let all = s.authed_json(&admin, "/events?limit=1000").await;
    let events = all["events"].as_array().unwrap();
    let count = |kind: &str| events.iter().filter(|e| e["kind"] == kind).count();
    assert_eq!(count("pxe.client.orphan"), 1);
    assert_eq!(count("pxe.report.refused"), 1);
    assert_eq!(count("auth.login.failed"), 1);
    let total: usize = events.iter().map(|e| e.to_string().len()).sum();
    assert!(total < 256 * 1024, "the event log holds {total} bytes after the flood");
    let failed = events.iter().find(|e| e["kind"] == "auth.login.failed").unwrap();
    assert!(failed["summary"].as_str().unwrap().len() < 1200, "{}", failed["summary"]);
    // The database did not take in the floods.
    let db = std::fs::metadata(s.state_dir().join("state.db")).unwrap().len();
    assert!(db < 4 << 20, "state.db is {db} bytes");
}

/// An inventory is bounded by `[limits] max_inventory_bytes`; the agent's
/// retry without lshw then fits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inventory_size_limit() {
    let s = TestServer::start_with(|c| c.limits.max_inventory_bytes = 8192).await;
    let admin = s.token().await;
    s.put_machine(&admin, MAC, json!({"policy": "inventory"})).await;
    let (_, t) = s.pxe_boot(MAC).await;
    let t = t.unwrap();
    let big = json!({"disks": [], "lshw": {"x": "y".repeat(10_000)}});
    let (code, v) = s.report(&format!("/pxe/{MAC}/inventory"), &t, big).await;
    assert_eq!(code, 413);
    assert!(v["error"].as_str().unwrap().contains("max_inventory_bytes"), "{v}");
    assert_eq!(machine(&s, &admin, MAC).await["state"], "inventorying");
    assert_eq!(s.report(&format!("/pxe/{MAC}/inventory"), &t, json!({"disks": []})).await.0, 204);
    assert_eq!(machine(&s, &admin, MAC).await["state"], "inventoried");
}

/// The live environment's own client sends the token and gets its reports
/// through; without the token it is told why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_client_reports_with_its_offer_token() {
    let s = TestServer::start().await;
    let admin = s.token().await;
    s.put_machine(&admin, MAC, flash_binding()).await;
    let (_, script) = s.get_text(&format!("/pxe/{MAC}")).await;
    let token = offer_token(&script);
    let url = s.url.clone();
    let (without, with) = tokio::task::spawn_blocking(move || {
        let bare = bty_core::agent::ServerClient::new(&url, MAC).unwrap();
        let without = bare.post_done(Some(1.0), Some(1)).unwrap_err().to_string();
        let with = bare.with_offer_token(token).post_done(Some(1.0), Some(1));
        (without, with)
    })
    .await
    .unwrap();
    assert!(without.contains("403") && without.contains("bty.token="), "{without}");
    with.unwrap();
    assert_eq!(machine(&s, &admin, MAC).await["state"], "flashed");
}
