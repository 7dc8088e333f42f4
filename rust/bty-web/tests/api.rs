//! The operator JSON API: machines, validation, events, limits, metrics.

mod common;

use common::{TestServer, MAC};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machine_validation() {
    let s = TestServer::start().await;
    let token = s.token().await;
    let c = reqwest::Client::new();
    for bad in ["zz:zz:zz:zz:zz:zz", "not-a-mac", "aa:bb:cc:dd:ee"] {
        let r = c.get(s.url(&format!("/machines/{bad}"))).bearer_auth(&token).send().await.unwrap();
        assert_eq!(r.status(), 400, "{bad}");
        let v: Value = r.json().await.unwrap();
        assert!(v["error"].as_str().unwrap().contains("aa:bb:cc:dd:ee:ff"), "{v}");
    }
    let cases = [
        (json!({"policy": "bty-flash-always"}), "policy"),
        (json!({"policy": "flash", "image": "local-img"}), "target_disk_serial"),
        (json!({"policy": "flash-once", "target_disk_serial": "S1"}), "image"),
        (json!({"policy": "flash", "image": "nope", "target_disk_serial": "S1"}), "image"),
        (json!({"policy": "local", "sanboot_drive": "C:"}), "sanboot_drive"),
        (json!({"policy": "tui", "boot_mode": "x"}), "boot_mode"),
    ];
    for (body, field) in cases {
        let (code, v) = s.put_machine(&token, MAC, body.clone()).await;
        assert_eq!(code, 422, "{body}");
        assert_eq!(v["field"], field, "{body}: {v}");
        assert!(v["reason"].as_str().is_some_and(|r| !r.is_empty()));
        assert!(v["error"].is_string());
    }
    let r = c.get(s.url(&format!("/machines/{MAC}"))).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 404, "failed PUTs create nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machine_crud_and_filters() {
    let s = TestServer::start().await;
    let token = s.token().await;
    let (code, m) = s
        .put_machine(&token, "AA-BB-CC-00-00-01", json!({"policy": "local", "labels": ["rack-1", "gpu"]}))
        .await;
    assert_eq!(code, 201);
    assert_eq!(m["mac"], "aa:bb:cc:00:00:01");
    assert_eq!(m["labels"], json!(["gpu", "rack-1"]));
    assert_eq!(m["next_boot"], "local");
    assert!(m["discovered_at"].is_null());
    s.put_machine(&token, "aa:bb:cc:00:00:02", json!({"policy": "tui", "labels": ["rack-2"]})).await;
    s.put_machine(
        &token,
        "aa:bb:cc:00:00:03",
        json!({"policy": "flash", "image": "local-img", "target_disk_serial": "WD-123", "labels": ["rack-1"]}),
    )
    .await;
    let macs = |v: Value| -> Vec<String> {
        v.as_array().unwrap().iter().map(|m| m["mac"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(macs(s.authed_json(&token, "/machines").await).len(), 3);
    assert_eq!(
        macs(s.authed_json(&token, "/machines?label=rack-1").await),
        ["aa:bb:cc:00:00:01", "aa:bb:cc:00:00:03"]
    );
    assert_eq!(macs(s.authed_json(&token, "/machines?policy=tui").await), ["aa:bb:cc:00:00:02"]);
    assert_eq!(macs(s.authed_json(&token, "/machines?q=wd-1").await), ["aa:bb:cc:00:00:03"]);
    assert_eq!(macs(s.authed_json(&token, "/machines?q=RACK-2").await), ["aa:bb:cc:00:00:02"]);
    assert_eq!(
        macs(s.authed_json(&token, "/machines?label=rack-1&policy=local").await),
        ["aa:bb:cc:00:00:01"]
    );
    let r =
        reqwest::Client::new().get(s.url("/machines?policy=nope")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 422);

    // PUT is a full replace: omitted fields are cleared.
    let (code, m) = s.put_machine(&token, "aa:bb:cc:00:00:01", json!({"policy": "tui"})).await;
    assert_eq!(code, 200);
    assert_eq!(m["labels"], json!([]));
    let c = reqwest::Client::new();
    let r = c.delete(s.url("/machines/aa:bb:cc:00:00:01")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let r = c.delete(s.url("/machines/aa:bb:cc:00:00:01")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let kinds: Vec<String> = s.authed_json(&token, "/events?kind=machine.*").await["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        kinds,
        ["machine.deleted", "machine.updated", "machine.created", "machine.created", "machine.created"]
    );
    let ev = s.events(&token, "machine.deleted").await;
    assert_eq!(ev[0]["actor"], "token:tests");
    assert_eq!(ev[0]["source_ip"], "127.0.0.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_are_bounded_and_typed() {
    let s = TestServer::start_with(|c| c.limits.max_body_bytes = 2048).await;
    let token = s.token().await;
    let c = reqwest::Client::new();
    let url = s.url(&format!("/machines/{MAC}"));
    let big = json!({"policy": "tui", "labels": vec!["x".repeat(60); 100]});
    let r = c.put(&url).bearer_auth(&token).json(&big).send().await.unwrap();
    assert_eq!(r.status(), 413);
    // Streamed without Content-Length: still cut off.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        vec![Ok(b"{\"disks\": [".to_vec()), Ok(vec![b' '; 4096])];
    let r = c
        .post(s.url(&format!("/pxe/{MAC}/inventory")))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let r = c
        .put(&url)
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("{\"policy\": tui}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert!(v["error"].as_str().unwrap().contains("line 1"), "the parser's message: {v}");
    let r = c
        .put(&url)
        .bearer_auth(&token)
        .header("content-type", "text/plain")
        .body("{\"policy\": \"tui\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    let r = c.put(&url).bearer_auth(&token).body("{\"policy\": \"tui\"}").send().await.unwrap();
    assert_eq!(r.status(), 415);
    let r = c.put(&url).bearer_auth(&token).json(&json!(["policy"])).send().await.unwrap();
    assert_eq!(r.status(), 422);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_filter_page_and_acknowledge() {
    let s = TestServer::start().await;
    let token = s.token().await;
    for i in 0..5 {
        s.get_text(&format!("/pxe/02:00:00:00:00:0{i}")).await;
    }
    s.post_json("/pxe/02:00:00:00:00:09/status", json!({"status": "done"})).await;
    let page = s.authed_json(&token, "/events?kind=pxe.offered&limit=2").await;
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["subject_id"], "02:00:00:00:00:04");
    let before = page["next_before_id"].as_i64().unwrap();
    let next = s.authed_json(&token, &format!("/events?kind=pxe.offered&limit=2&before_id={before}")).await;
    assert_eq!(next["events"][0]["subject_id"], "02:00:00:00:00:02");

    let by_subject = s.authed_json(&token, "/events?subject=02-00-00-00-00-03").await;
    let kinds: Vec<&str> =
        by_subject["events"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["pxe.offered", "machine.discovered"]);

    let unacked = s.authed_json(&token, "/events?unacked=1").await;
    let list = unacked["events"].as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["kind"], "pxe.client.orphan");
    let (_, health) = s.get_json("/healthz").await;
    assert_eq!(health["details"]["unacknowledged_events"], 1);
    let id = list[0]["id"].as_i64().unwrap();
    let c = reqwest::Client::new();
    let r = c.post(s.url(&format!("/events/{id}/ack"))).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert!(s.authed_json(&token, "/events?unacked=1").await["events"].as_array().unwrap().is_empty());
    let r = c.post(s.url("/events/99999/ack")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = c.get(s.url("/events?limit=0")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 422);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_version() {
    let s = TestServer::start().await;
    let token = s.token().await;
    s.put_machine(&token, MAC, json!({"policy": "flash", "image": "local-img", "target_disk_serial": "S"}))
        .await;
    let (_, offer_token) = s.pxe_boot(MAC).await;
    let (code, _) = s
        .report(
            &format!("/pxe/{MAC}/status"),
            &offer_token.unwrap(),
            json!({"status": "failed", "reason": "x"}),
        )
        .await;
    assert_eq!(code, 204);
    s.get_text("/pxe/02:00:00:00:00:01").await;
    let (code, text) = s.get_text("/metrics").await;
    assert_eq!(code, 200);
    for line in [
        "bty_http_requests_total{method=\"GET\",route=\"/pxe/{mac}\",status=\"200\"} 2",
        "bty_http_requests_total{method=\"PUT\",route=\"/machines/{mac}\",status=\"201\"} 1",
        "bty_pxe_offers_total{policy=\"flash\",offer=\"flash\"} 1",
        "bty_pxe_offers_total{policy=\"tui\",offer=\"interactive\"} 1",
        "bty_flashes_total{result=\"failed\"} 1",
        "bty_flashes_total{result=\"done\"} 0",
        "bty_machines{policy=\"flash\"} 1",
        "bty_machines{policy=\"tui\"} 1",
        "bty_events_unacknowledged 1",
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
    }
    let (code, v) = s.get_json("/version").await;
    assert_eq!((code, v["version"].as_str()), (200, Some(bty_web::VERSION)));
    let (code, v) = s.get_json("/healthz").await;
    assert_eq!((code, v["status"].as_str()), (200, Some("ok")));
    assert_eq!(v["details"]["catalog_images"], 2);
    let (code, v) = s.get_json("/no/such/route").await;
    assert_eq!(code, 404);
    assert!(v["error"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_reload_reports_every_problem() {
    let s = TestServer::start().await;
    let token = s.token().await;
    std::fs::write(
        s.state_dir().join("catalog.toml"),
        "version = 1\n[[images]]\nname = \"a b\"\nsrc = \"file:///etc/passwd\"\n[[images]]\nsrc = \"x.img\"\n",
    )
    .unwrap();
    let c = reqwest::Client::new();
    let r = c.post(s.url("/catalog/reload")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 422);
    let v: Value = r.json().await.unwrap();
    let problems: Vec<(i64, &str)> = v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["index"].as_i64().unwrap(), p["field"].as_str().unwrap()))
        .collect();
    assert_eq!(problems, [(0, "name"), (0, "src"), (1, "name")]);
    // The previous catalog stays in use, and the failure is a tripwire.
    let (_, images) = s.get_json("/images").await;
    assert_eq!(images.as_array().unwrap().len(), 2);
    let failed = s.events(&token, "catalog.failed").await;
    assert_eq!(failed[0]["acknowledged"], false);
    let (_, h) = s.get_json("/healthz").await;
    assert!(h["details"]["catalog_error"].as_str().unwrap().contains("images[0] (a b): src"));
}

/// The `rel="next"` target of a `Link` header, if any.
fn next_page(r: &reqwest::Response) -> Option<String> {
    let link = r.headers().get("link")?.to_str().unwrap();
    let target = link.strip_prefix('<')?.split('>').next()?.to_string();
    assert!(link.ends_with("rel=\"next\""), "{link}");
    Some(target)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_machine_list_comes_in_pages() {
    let s = TestServer::start().await;
    let token = s.token().await;
    let c = reqwest::Client::new();
    let get = |path: String| c.get(s.url(&path)).bearer_auth(&token).send();
    // 105 machines, discovered out of MAC order.
    for i in (0..105u32).rev() {
        let (code, _) = s.get_text(&format!("/pxe/52:54:00:00:{:02x}:{:02x}", i / 256, i % 256)).await;
        assert_eq!(code, 200);
    }
    let inventory = json!({"disks": [{"path": "/dev/sda", "serial": "S1", "size_bytes": 1000}]});
    let (_, offer_token) = s.pxe_boot("52:54:00:00:00:00").await;
    let (code, _) = s.report("/pxe/52:54:00:00:00:00/inventory", &offer_token.unwrap(), inventory).await;
    assert_eq!(code, 204);

    // Default: 100, without inventories, and a link to the rest.
    let r = get("/machines".into()).await.unwrap();
    let next = next_page(&r).expect("a next page");
    let page: Vec<Value> = r.json().await.unwrap();
    assert_eq!(page.len(), 100);
    assert_eq!(page[0]["mac"], "52:54:00:00:00:00");
    assert!(page.iter().all(|m| m.get("inventory").is_none()), "{}", page[0]);
    assert_eq!(next, "/machines?limit=100&after=52%3A54%3A00%3A00%3A00%3A63");
    let r = get(next).await.unwrap();
    assert!(next_page(&r).is_none());
    let rest: Vec<Value> = r.json().await.unwrap();
    assert_eq!(rest.len(), 5);
    assert_eq!(rest[0]["mac"], "52:54:00:00:00:64");

    // Walking small pages visits every machine once, in MAC order, keeping
    // the filters; a machine discovered meanwhile behind the cursor shifts nothing.
    let mut seen = Vec::new();
    let mut path = Some("/machines?limit=40&policy=tui".to_string());
    while let Some(p) = path {
        let r = get(p).await.unwrap();
        assert_eq!(r.status(), 200);
        path = next_page(&r);
        if let Some(p) = &path {
            assert!(p.contains("policy=tui") && p.contains("limit=40"), "{p}");
        }
        let page: Vec<Value> = r.json().await.unwrap();
        assert!(page.len() <= 40);
        seen.extend(page.into_iter().map(|m| m["mac"].as_str().unwrap().to_string()));
        if seen.len() == 40 {
            s.get_text("/pxe/02:00:00:00:00:01").await;
        }
    }
    assert_eq!(seen.len(), 105);
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "MAC order, no repeats");

    // Inventories only when asked for.
    let r = get("/machines?limit=1&include=inventory".into()).await.unwrap();
    assert_eq!(
        next_page(&r).as_deref(),
        Some("/machines?include=inventory&limit=1&after=02%3A00%3A00%3A00%3A00%3A01")
    );
    let page: Vec<Value> = r.json().await.unwrap();
    assert!(page[0].get("inventory").is_some_and(Value::is_null), "{}", page[0]);
    let r = get("/machines?limit=1&after=02:00:00:00:00:01&include=inventory".into()).await.unwrap();
    let page: Vec<Value> = r.json().await.unwrap();
    assert_eq!(page[0]["inventory"]["disks"][0]["serial"], "S1");

    // The maximum, and bad parameters, each named.
    let r = get("/machines?limit=1000".into()).await.unwrap();
    assert_eq!(r.json::<Vec<Value>>().await.unwrap().len(), 106);
    for (query, field) in [
        ("limit=1001", "limit"),
        ("limit=0", "limit"),
        ("limit=x", "limit"),
        ("after=nope", "after"),
        ("include=lshw", "include"),
    ] {
        let r = get(format!("/machines?{query}")).await.unwrap();
        assert_eq!(r.status(), 422, "{query}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["field"], field, "{query}: {v}");
    }
}
