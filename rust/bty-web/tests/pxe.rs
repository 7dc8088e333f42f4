//! The PXE contract over a real server: scripts, plans, reports and the
//! policy state machine as machines see it.

mod common;

use common::{without_token, TestServer, MAC};
use serde_json::{json, Value};

fn live(base: &str, mac: &str, policy: &str, offer: &str, reason: &str, interactive: bool) -> String {
    let mode = if interactive { " bty.mode=interactive" } else { "" };
    format!(
        "#!ipxe\n# bty: {mac} policy={policy} offer={offer}\necho bty: {reason}\n\
         kernel {base}/boot/vmlinuz initrd=initrd.gz console=tty0 console=ttyS0,115200 bty.server={base} bty.mac={mac} bty.token=T{mode}\n\
         initrd {base}/boot/initrd.gz\nboot\n"
    )
}

fn local(mac: &str, policy: &str, reason: &str, drive: &str) -> String {
    format!(
        "#!ipxe\n# bty: {mac} policy={policy} offer=local\necho bty: {reason}\n\
         # UEFI: hand back to the firmware, which boots the next entry (the disk). A plain\n\
         # `exit` (status 0) makes some firmware (OVMF) open its setup menu instead.\n\
         iseq ${{platform}} efi && exit 1 || sanboot --no-describe --drive {drive} || exit 1\n"
    )
}

/// The `offer=` of a served script.
fn offer(script: &str) -> String {
    script.lines().nth(1).and_then(|l| l.split("offer=").nth(1)).unwrap_or("?").to_string()
}

async fn boot(s: &TestServer, mac: &str) -> String {
    s.pxe_boot(&mac.replace(':', "-")).await.0
}

/// PXE-boot and return the offer token the live environment would get.
async fn boot_token(s: &TestServer, mac: &str, want_offer: &str) -> String {
    let (offer, token) = s.pxe_boot(mac).await;
    assert_eq!(offer, want_offer);
    token.expect("a live offer carries a token")
}

async fn machine(s: &TestServer, token: &str, mac: &str) -> Value {
    s.authed_json(token, &format!("/machines/{mac}")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_and_unknown_mac_discovery() {
    let s = TestServer::start().await;
    let (code, text) = s.get_text("/pxe-bootstrap.ipxe").await;
    assert_eq!(code, 200);
    assert_eq!(text, format!("#!ipxe\nchain {}/pxe/${{mac:hexhyp}}\n", s.url));

    let (code, text) = s.get_text("/pxe/52-54-00-12-34-56").await;
    assert_eq!(code, 200);
    assert_eq!(
        without_token(&text),
        live(&s.url, MAC, "tui", "interactive", "policy tui: interactive flasher", true)
    );

    let (code, plan) = s.get_json("/pxe/52:54:00:12:34:56/plan").await;
    assert_eq!(code, 200);
    assert_eq!(
        plan,
        json!({"mode": "interactive", "image": null, "target_disk_serial": null, "provisioning_mode": "none",
               "server_version": bty_web::VERSION, "catalog_url": format!("{}/catalog.toml", s.url)})
    );

    let token = s.token().await;
    let m = machine(&s, &token, MAC).await;
    assert_eq!(m["policy"], "tui");
    assert_eq!(m["last_seen_ip"], "127.0.0.1");
    assert!(m["discovered_at"].is_string());
    assert_eq!(s.events(&token, "machine.discovered").await.len(), 1);
    let offered = s.events(&token, "pxe.offered").await;
    assert_eq!(offered.len(), 1);
    assert_eq!(offered[0]["details"]["offer"], "interactive");
    assert_eq!(offered[0]["details"]["policy"], "tui");
    assert_eq!(offered[0]["acknowledged"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_policy_script_and_plan() {
    let s = TestServer::start().await;
    let token = s.token().await;
    let b = &s.url;
    let cases: [(&str, Value); 5] = [
        ("02:00:00:00:00:01", json!({"policy": "tui"})),
        ("02:00:00:00:00:02", json!({"policy": "flash", "image": "local-img", "target_disk_serial": "SER1"})),
        (
            "02:00:00:00:00:03",
            json!({"policy": "flash-once", "image": "local-img", "target_disk_serial": "SER1",
                                     "provisioning_mode": "cijoe-offline", "workflow": "w1"}),
        ),
        ("02:00:00:00:00:04", json!({"policy": "inventory"})),
        ("02:00:00:00:00:05", json!({"policy": "local", "sanboot_drive": "0x81"})),
    ];
    let r = reqwest::Client::new()
        .put(s.url("/workflows/w1"))
        .bearer_auth(&token)
        .body("doc: x\nsteps:\n- name: a\n  run: echo a\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    for (mac, body) in &cases {
        let (code, v) = s.put_machine(&token, mac, body.clone()).await;
        assert_eq!(code, 201, "{v}");
    }
    let want_scripts = [
        live(b, "02:00:00:00:00:01", "tui", "interactive", "policy tui: interactive flasher", true),
        live(b, "02:00:00:00:00:02", "flash", "flash", "flash pending", false),
        live(b, "02:00:00:00:00:03", "flash-once", "flash", "flash pending", false),
        live(b, "02:00:00:00:00:04", "inventory", "inventory", "inventory pending", false),
        local("02:00:00:00:00:05", "local", "policy local: boot the local disk", "0x81"),
    ];
    let image = json!({"name": "local-img", "url": format!("{b}/images/local-img"),
        "sha256": "0".repeat(64), "format": "raw", "size_bytes": 1048576});
    let v = bty_web::VERSION;
    let want_plans = [
        json!({"mode": "interactive", "image": null, "target_disk_serial": null, "provisioning_mode": "none",
               "server_version": v, "catalog_url": format!("{b}/catalog.toml")}),
        json!({"mode": "flash", "image": image, "target_disk_serial": "SER1", "provisioning_mode": "none",
               "server_version": v}),
        json!({"mode": "flash", "image": image, "target_disk_serial": "SER1", "provisioning_mode": "cijoe-offline",
               "server_version": v}),
        json!({"mode": "inventory", "image": null, "target_disk_serial": null, "provisioning_mode": "none",
               "server_version": v}),
        json!({"mode": "local", "image": null, "target_disk_serial": null, "provisioning_mode": "none",
               "server_version": v}),
    ];
    for (i, (mac, _)) in cases.iter().enumerate() {
        let (_, script) = s.get_text(&format!("/pxe/{mac}")).await;
        assert_eq!(without_token(&script), want_scripts[i], "{mac}");
        let (_, plan) = s.get_json(&format!("/pxe/{mac}/plan")).await;
        assert_eq!(plan, want_plans[i], "{mac}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flash_alternates_and_retries_unreported_flashes() {
    let s = TestServer::start().await;
    let token = s.token().await;
    let (code, m) = s
        .put_machine(
            &token,
            MAC,
            json!({"policy": "flash", "image": "local-img", "target_disk_serial": "S1"}),
        )
        .await;
    assert_eq!(code, 201);
    assert_eq!(m["state"], "pending");
    assert_eq!(m["next_boot"], "flash");

    let first = boot_token(&s, MAC, "flash").await;
    assert_eq!(machine(&s, &token, MAC).await["state"], "flashing");
    // Crash / power loss: PXE again without a report → flash again, never local.
    assert_eq!(boot(&s, MAC).await, "flash");
    let (_, script) = s.get_text(&format!("/pxe/{MAC}")).await;
    assert!(script.contains("echo bty: the previous flash never reported done: flashing again"), "{script}");
    // The boot before the last one is gone: its live environment's token is worthless.
    let (code, v) = s.report(&format!("/pxe/{MAC}/done"), &first, json!({"status": "done"})).await;
    assert_eq!(code, 403, "{v}");
    assert_eq!(machine(&s, &token, MAC).await["state"], "flashing");
    let live = common::offer_token(&script).unwrap();

    assert_eq!(
        s.report(&format!("/pxe/{MAC}/done"), &live, json!({"status": "done", "duration_s": 12.5})).await.0,
        204
    );
    let m = machine(&s, &token, MAC).await;
    assert_eq!(m["state"], "flashed");
    assert_eq!(m["last_flash_status"], "done");
    assert!(m["last_flashed_at"].is_string());

    // One report per offer: the same token again changes nothing.
    let (code, _) = s.report(&format!("/pxe/{MAC}/status"), &live, json!({"status": "failed"})).await;
    assert_eq!(code, 403);
    assert_eq!(boot(&s, MAC).await, "local");
    assert_eq!(machine(&s, &token, MAC).await["state"], "pending");
    let t = boot_token(&s, MAC, "flash").await;

    // A failure is retried too, and is a tripwire.
    let (status, _) = s
        .report(&format!("/pxe/{MAC}/status"), &t, json!({"status": "failed", "reason": "disk vanished"}))
        .await;
    assert_eq!(status, 204);
    let m = machine(&s, &token, MAC).await;
    assert_eq!(
        (m["state"].as_str(), m["last_flash_reason"].as_str()),
        (Some("failed"), Some("disk vanished"))
    );
    let failed = s.events(&token, "machine.flash_failed").await;
    assert_eq!(failed[0]["acknowledged"], false);
    let t = boot_token(&s, MAC, "flash").await;
    // Empty-body /done works too.
    let r = reqwest::Client::new()
        .post(s.url(&format!("/pxe/{MAC}/done")))
        .header("x-bty-offer-token", &t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(boot(&s, MAC).await, "local");
    assert_eq!(s.events(&token, "machine.flashed").await.len(), 2);
    let history = s.authed_json(&token, &format!("/machines/{MAC}/flashes")).await;
    let statuses: Vec<&str> =
        history.as_array().unwrap().iter().map(|f| f["status"].as_str().unwrap()).collect();
    // Three offers before the first report: two were abandoned by a re-boot.
    assert_eq!(statuses, ["done", "failed", "done", "abandoned", "abandoned"]);
    assert_eq!(history[1]["reason"], "disk vanished");
    assert_eq!(history[0]["image"], "local-img");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flash_once_stays_local_until_rearmed() {
    let s = TestServer::start().await;
    let token = s.token().await;
    let bind = json!({"policy": "flash-once", "image": "local-img", "target_disk_serial": "S1"});
    s.put_machine(&token, MAC, bind.clone()).await;
    let t = boot_token(&s, MAC, "flash").await;
    assert_eq!(s.report(&format!("/pxe/{MAC}/status"), &t, json!({"status": "done"})).await.0, 204);
    for _ in 0..3 {
        assert_eq!(boot(&s, MAC).await, "local");
    }
    let (_, plan) = s.get_json(&format!("/pxe/{MAC}/plan")).await;
    assert_eq!(plan["mode"], "local");
    // Re-saving the same binding re-arms it.
    let (code, m) = s.put_machine(&token, MAC, bind).await;
    assert_eq!((code, m["state"].as_str()), (200, Some("pending")));
    assert_eq!(boot(&s, MAC).await, "flash");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inventory_then_local() {
    let s = TestServer::start().await;
    let token = s.token().await;
    s.put_machine(&token, MAC, json!({"policy": "inventory"})).await;
    assert_eq!(boot(&s, MAC).await, "inventory");
    let t = boot_token(&s, MAC, "inventory").await;
    let inv = json!({"disks": [{"path": "/dev/sda", "size_bytes": 1000, "serial": "S1", "model": "QEMU"}],
                     "hardware": {"cpus": 2}, "lshw": {"id": "machine"}});
    // An inventory boot takes no flash reports.
    assert_eq!(s.report(&format!("/pxe/{MAC}/done"), &t, json!({"status": "done"})).await.0, 403);
    assert_eq!(s.report(&format!("/pxe/{MAC}/inventory"), &t, inv.clone()).await.0, 204);
    // Its offer ended with the inventory.
    assert_eq!(s.report(&format!("/pxe/{MAC}/inventory"), &t, inv).await.0, 403);
    assert_eq!(boot(&s, MAC).await, "local");
    assert_eq!(boot(&s, MAC).await, "local");
    let m = machine(&s, &token, MAC).await;
    assert_eq!(m["state"], "inventoried");
    assert_eq!(m["inventory"]["disks"][0]["serial"], "S1");
    assert_eq!(m["has_lshw"], true);
    let r = reqwest::Client::new()
        .get(s.url(&format!("/machines/{MAC}/lshw.json")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"id": "machine"}));
    let ev = s.events(&token, "machine.inventory").await;
    assert_eq!(ev[0]["details"]["serials"], json!(["S1"]));
    // Bounded: too many disks is a 422 naming the field.
    let many: Vec<Value> = (0..65).map(|i| json!({"path": format!("/dev/sd{i}")})).collect();
    let r = reqwest::Client::new()
        .post(s.url(&format!("/pxe/{MAC}/inventory")))
        .header("x-bty-offer-token", "x")
        .json(&json!({"disks": many}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    assert_eq!(r.json::<Value>().await.unwrap()["field"], "disks");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tui_records_an_interactive_flash() {
    let s = TestServer::start().await;
    let token = s.token().await;
    let t = boot_token(&s, MAC, "interactive").await;
    let (code, _) = s.report(&format!("/pxe/{MAC}/status"), &t, json!({"status": "failed"})).await;
    assert_eq!(code, 204, "the interactive flasher may fail and try again");
    assert_eq!(s.report(&format!("/pxe/{MAC}/status"), &t, json!({"status": "done"})).await.0, 204);
    let m = machine(&s, &token, MAC).await;
    assert!(m["last_flashed_at"].is_string());
    assert_eq!(m["state"], "idle");
    assert_eq!(boot(&s, MAC).await, "interactive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_image_never_flashes() {
    let s = TestServer::start().await;
    let token = s.token().await;
    s.put_machine(&token, MAC, json!({"policy": "flash", "image": "other-img", "target_disk_serial": "S1"}))
        .await;
    std::fs::write(s.state_dir().join("catalog.toml"), "version = 1\n").unwrap();
    let r = reqwest::Client::new().post(s.url("/catalog/reload")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let (_, script) = s.get_text(&format!("/pxe/{MAC}")).await;
    assert_eq!(offer(&script), "interactive");
    assert!(script.contains("bty.mode=interactive"));
    assert!(script.contains("echo bty: the bound image is not in the catalog"), "{script}");
    let ev = s.events(&token, "pxe.offered").await;
    assert_eq!(ev[0]["details"]["image_missing"], true);
    assert!(ev[0]["details"]["reason"].as_str().unwrap().contains("other-img"));
    let (_, plan) = s.get_json(&format!("/pxe/{MAC}/plan")).await;
    assert_eq!(plan["mode"], "interactive");
    assert!(plan["reason"].as_str().unwrap().contains("other-img"));
    assert_eq!(machine(&s, &token, MAC).await["state"], "pending");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_first_contacts_make_one_record() {
    let s = TestServer::start().await;
    let client = reqwest::Client::new();
    let mut tasks = Vec::new();
    for i in 0..50 {
        let c = client.clone();
        // Different spellings of the same MAC.
        let mac = if i % 2 == 0 { "AA-BB-CC-00-11-22" } else { "aa:bb:cc:00:11:22" };
        let url = s.url(&format!("/pxe/{mac}"));
        tasks.push(tokio::spawn(async move { c.get(url).send().await.unwrap().status().as_u16() }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    let token = s.token().await;
    let all = s.authed_json(&token, "/machines").await;
    assert_eq!(all.as_array().unwrap().len(), 1);
    assert_eq!(s.events(&token, "machine.discovered").await.len(), 1);
    assert_eq!(s.events(&token, "pxe.offered").await.len(), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_from_unknown_machines_are_orphans() {
    let s = TestServer::start().await;
    let token = s.token().await;
    for (path, body) in [
        ("status", json!({"status": "done"})),
        ("done", json!({"status": "done"})),
        ("inventory", json!({"disks": []})),
    ] {
        let r = reqwest::Client::new()
            .post(s.url(&format!("/pxe/{MAC}/{path}")))
            .header("x-bty-offer-token", "0".repeat(64))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{path}");
        assert!(r.text().await.unwrap().contains("PXE-boot from this server first"));
    }
    // Repeats from one source fold into one tripwire with a count.
    let orphans = s.events(&token, "pxe.client.orphan").await;
    assert_eq!(orphans.len(), 1);
    assert_eq!(orphans[0]["count"], 3);
    assert_eq!(orphans[0]["acknowledged"], false);
    assert!(s.authed_json(&token, "/machines").await.as_array().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_macs_and_bad_reports() {
    let s = TestServer::start().await;
    for bad in ["nope", "aa:bb:cc:dd:ee", "aa:bb:cc:dd:ee:gg", "aabbccddeeff00"] {
        let (code, body) = s.get_text(&format!("/pxe/{bad}")).await;
        assert_eq!(code, 400, "{bad}");
        assert!(body.contains("aa:bb:cc:dd:ee:ff"), "{body}");
    }
    s.get_text(&format!("/pxe/{MAC}")).await;
    let c = reqwest::Client::new();
    let status = |body: &'static str| {
        let c = c.clone();
        let url = s.url(&format!("/pxe/{MAC}/status"));
        async move {
            let r = c.post(url).header("content-type", "application/json").body(body).send().await.unwrap();
            let code = r.status().as_u16();
            (code, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (code, v) = status("{\"status\": ").await;
    assert_eq!(code, 400);
    assert!(v["error"].as_str().unwrap().starts_with("malformed JSON"), "{v}");
    let (code, v) = status(r#"{"status": "done", "extra": 1}"#).await;
    assert_eq!((code, v["field"].as_str()), (422, Some("extra")));
    let (code, _) = status(r#"{"status": "maybe"}"#).await;
    assert_eq!(code, 422);
    let long = format!(r#"{{"status": "failed", "reason": "{}"}}"#, "x".repeat(501));
    let r = c
        .post(s.url(&format!("/pxe/{MAC}/status")))
        .header("content-type", "application/json")
        .body(long)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let r = c
        .post(s.url(&format!("/pxe/{MAC}/status")))
        .header("content-type", "text/plain")
        .body("status=done")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    let r =
        c.post(s.url(&format!("/pxe/{MAC}/done"))).json(&json!({"status": "failed"})).send().await.unwrap();
    assert_eq!(r.status(), 422);
}

/// Broadcast, multicast and all-zero addresses name no network card: a
/// request under one is a typo or a forgery, refused wherever a MAC enters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_and_zero_macs_are_refused_where_a_mac_enters() {
    let s = TestServer::start().await;
    let token = s.token().await;
    let c = reqwest::Client::new();
    let bad = [
        ("ff:ff:ff:ff:ff:ff", "broadcast"),
        ("01-00-5e-00-00-fb", "multicast"),
        ("333300000001", "multicast"),
        ("00:00:00:00:00:00", "all zeros"),
    ];
    for (mac, why) in bad {
        let check = |what: String, code: u16, body: String| {
            assert_eq!(code, 400, "{what}: {body}");
            assert!(body.contains(why) && body.contains("a network card's MAC is unicast"), "{what}: {body}");
        };
        for path in ["", "/plan"] {
            let r = c.get(s.url(&format!("/pxe/{mac}{path}"))).send().await.unwrap();
            check(format!("GET /pxe/{mac}{path}"), r.status().as_u16(), r.text().await.unwrap());
        }
        for path in ["/done", "/status", "/inventory"] {
            let r = c
                .post(s.url(&format!("/pxe/{mac}{path}")))
                .json(&json!({"status": "done"}))
                .send()
                .await
                .unwrap();
            check(format!("POST /pxe/{mac}{path}"), r.status().as_u16(), r.text().await.unwrap());
        }
        let r = c
            .put(s.url(&format!("/machines/{mac}")))
            .bearer_auth(&token)
            .json(&json!({"policy": "tui"}))
            .send()
            .await
            .unwrap();
        check(format!("PUT /machines/{mac}"), r.status().as_u16(), r.text().await.unwrap());
        // The browser's add form answers next to the field, like any other
        // MAC it cannot take.
        let r = c
            .post(s.url("/ui/machines"))
            .bearer_auth(&token)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("mac={mac}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 422, "POST /ui/machines {mac}");
        let page = r.text().await.unwrap();
        assert!(page.contains(why) && page.contains("unicast"), "{page}");
    }
    let listed = s.authed_json(&token, "/machines").await;
    assert!(listed.as_array().unwrap().is_empty(), "nothing was recorded: {listed}");

    // Locally administered unicast addresses (QEMU's) are machines like any.
    assert_eq!(boot(&s, "52:54:00:ab:cd:ef").await, "interactive");
    assert_eq!(boot(&s, "02:00:00:00:00:01").await, "interactive");

    // A record stored under a group address before they were refused can
    // still be read and removed.
    let legacy: bty_core::mac::MacAddr = "01:00:5e:00:00:01".parse().unwrap();
    let input = bty_web::machines::MachineInput::from_json(
        &json!({"policy": "local"}),
        &s.app.catalog.get(),
        &bty_web::workflows::WorkflowStore::new(&s.app.config.paths.state_dir),
    )
    .unwrap();
    s.app.db.write(move |c| bty_web::machines::put(c, legacy, &input)).await.unwrap();
    s.authed_json(&token, &format!("/machines/{legacy}")).await;
    let r = c.delete(s.url(&format!("/machines/{legacy}"))).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 204);
}
