//! The browser UI in a real headless Chromium against a real bty-web:
//! log in with the keyboard, assign a machine, watch its row change live
//! when it PXE-boots, acknowledge the failure, log out. Every page is
//! checked for basic accessibility and saved as a screenshot, at desktop
//! and phone widths, under `target/ui-screenshots/`.

mod common;
#[path = "common/webdriver.rs"]
mod webdriver;

use std::path::PathBuf;

use common::{TestServer, MAC};
use serde_json::{json, Value};
use webdriver::{Browser, ENTER, TAB};

const SERIAL: &str = "S3Z9NB0K123456";

fn shots_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../target")));
    target.join("ui-screenshots")
}

/// One h1, a label for every control, a name for every button, a language.
const A11Y: &str = r#"
const problems = [];
const h1 = document.querySelectorAll('h1').length;
if (h1 !== 1) problems.push(`${h1} h1 elements`);
if (!document.documentElement.lang) problems.push('no lang on <html>');
for (const el of document.querySelectorAll('input:not([type=hidden]), select, textarea')) {
  const byFor = el.id && document.querySelector(`label[for="${CSS.escape(el.id)}"]`);
  if (!byFor && !el.closest('label') && !el.getAttribute('aria-label') && !el.getAttribute('aria-labelledby'))
    problems.push('unlabelled control: ' + el.outerHTML.slice(0, 120));
}
for (const b of document.querySelectorAll('button, a')) {
  if (!b.textContent.trim() && !b.getAttribute('aria-label')) problems.push('control without a name: ' + b.outerHTML.slice(0, 120));
  if (b.tabIndex < 0) problems.push('not reachable by keyboard: ' + b.outerHTML.slice(0, 120));
}
return problems;
"#;

async fn check_page(b: &Browser, name: &str) {
    let problems = b.run(A11Y, json!([])).await;
    assert_eq!(problems, json!([]), "accessibility problems on {name} ({})", b.url().await);
    b.screenshot(&shots_dir().join(format!("{name}.png"))).await;
}

async fn pxe_client_reports(s: &TestServer) {
    let (_, offer_token) = s.pxe_boot(MAC).await;
    let c = reqwest::Client::new();
    let inventory = json!({
        "disks": [
            {"path": "/dev/nvme0n1", "size_bytes": 512110190592u64, "model": "Samsung SSD 970 EVO Plus", "serial": SERIAL, "transport": "nvme"},
            {"path": "/dev/sda", "size_bytes": 32017047552u64, "model": "SanDisk Cruzer", "serial": "4C530001", "transport": "usb", "removable": true},
        ],
        "hardware": {"cpu_model": "AMD Ryzen 5 5600G", "cpu_threads": 12, "memory_bytes": 34359738368u64,
                     "nics": [{"name": "enp3s0", "mac": MAC, "speed_mbps": 1000}], "dmi": {"sys_vendor": "ASRock", "product_name": "DeskMini X300"},
                     "arch": "x86_64"},
    });
    let r = c
        .post(s.url(&format!("/pxe/{MAC}/inventory")))
        .header("x-bty-offer-token", offer_token.unwrap())
        .json(&inventory)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204, "{}", r.text().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_ui_end_to_end() {
    let s = TestServer::start().await;
    pxe_client_reports(&s).await;
    let b = Browser::start().await;
    println!("screenshots in {}", shots_dir().display());

    // Not logged in: a page sends the browser to the login form, which
    // brings it back afterwards. Logged in with the keyboard only.
    b.goto(&s.url("/ui/machines")).await;
    assert!(b.url().await.contains("/ui/login?next="), "{}", b.url().await);
    check_page(&b, "login").await;
    let user = b.find("#username").await;
    b.click(&user).await;
    b.keys(&format!("bty{TAB}bty{ENTER}")).await;
    b.wait_text("h1", "Machines", 10).await;
    assert!(b.url().await.ends_with("/ui/machines"), "{}", b.url().await);

    // Assign policy, image and disk; a flash policy without a disk is refused
    // with the reason next to the field.
    b.goto(&s.url(&format!("/ui/machines/{MAC}"))).await;
    b.wait_text("h1", MAC, 5).await;
    b.click(&b.find("#policy option[value='flash-once']").await).await;
    b.click(&b.find("#image option[value='local-img']").await).await;
    b.click(&b.find("#target_disk_serial option[value='']").await).await;
    b.click(&b.find("form.assign button[type=submit]").await).await;
    let err = b.wait_text("#target_disk_serial-error", "serial", 5).await;
    assert!(err.contains("needs the serial"), "{err}");
    check_page(&b, "machine-invalid").await;
    assert_eq!(b.run("return document.querySelector('#policy').value", json!([])).await, "flash-once");
    b.click(&b.find(&format!("#target_disk_serial option[value='{SERIAL}']")).await).await;
    let labels = b.find("#labels").await;
    b.clear(&labels).await;
    b.type_into(&labels, "rack1 ci").await;
    b.click(&b.find("form.assign button[type=submit]").await).await;
    b.wait_text("main .callout.ok", "Saved", 5).await;
    check_page(&b, "machine").await;

    // The list shows it.
    b.goto(&s.url("/ui/machines")).await;
    let row = format!("tr[data-mac='{MAC}']");
    let text = b.wait_text(&row, "pending flash", 5).await;
    assert!(text.contains("flash-once") && text.contains("local-img") && text.contains("rack1"), "{text}");

    // The machine PXE-boots: its row changes without a reload.
    b.run("window.notReloaded = true", json!([])).await;
    b.find("tbody[data-connected]").await;
    let c = reqwest::Client::new();
    let (_, offer_token) = s.pxe_boot(MAC).await;
    b.wait_text(&row, "live env running; awaiting flash", 10).await;
    let r = c
        .post(s.url(&format!("/pxe/{MAC}/status")))
        .header("x-bty-offer-token", offer_token.unwrap())
        .json(&json!({"status": "failed", "reason": "sha256 mismatch"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let text = b.wait_text(&row, "flash failed", 10).await;
    assert!(text.contains("sha256 mismatch"), "{text}");
    assert_eq!(b.run("return window.notReloaded === true", json!([])).await, true, "the page was reloaded");
    // A machine booting for the first time joins the list.
    let newcomer = "52:54:00:00:00:01";
    assert_eq!(c.get(s.url(&format!("/pxe/{newcomer}"))).send().await.unwrap().status(), 200);
    let first = b.wait_text("tbody tr:first-child", newcomer, 10).await;
    assert!(first.contains("interactive flasher"), "{first}");
    assert_eq!(b.run("return window.notReloaded === true", json!([])).await, true, "the page was reloaded");
    check_page(&b, "machines").await;

    // The failure is a tripwire on the dashboard; acknowledge it there.
    b.goto(&s.url("/ui/")).await;
    let trip = b.wait_text(".tripwires", "sha256 mismatch", 5).await;
    assert!(trip.contains("flash"), "{trip}");
    check_page(&b, "dashboard").await;
    let before = unacked(&s).await;
    let ack = b.find(".tripwires li:first-child button").await;
    b.click(&ack).await;
    b.wait_text("main .callout.ok", "Acknowledged", 5).await;
    assert_eq!(unacked(&s).await, before - 1);

    // Upload a boot file from the Netboot page (the script PUTs it like the API).
    b.goto(&s.url("/ui/netboot")).await;
    let upload_dir = tempfile::tempdir().unwrap();
    let kernel = upload_dir.path().join("vmlinuz");
    std::fs::write(&kernel, vec![7u8; 4096]).unwrap();
    b.type_into(&b.find("#upload-file").await, kernel.to_str().unwrap()).await;
    b.click(&b.find("#upload button[type=submit]").await).await;
    let listed = b.wait_text("main table", "4.0 KiB", 10).await;
    assert!(listed.contains("vmlinuz"), "{listed}");
    assert_eq!(std::fs::read(s.state_dir().join("boot/vmlinuz")).unwrap(), vec![7u8; 4096]);

    // Deleting asks first; declining keeps the machine.
    b.goto(&s.url(&format!("/ui/machines/{newcomer}"))).await;
    b.click(&b.find(".danger-zone button").await).await;
    b.dismiss_alert().await;
    assert!(b.url().await.ends_with(&format!("/ui/machines/{newcomer}")));
    b.click(&b.find(".danger-zone button").await).await;
    b.accept_alert().await;
    b.wait_text("main .callout.ok", "Machine deleted", 5).await;
    assert!(b.find_all(&format!("tr[data-mac='{newcomer}']")).await.is_empty());

    // Every other page renders, labelled, with one h1.
    for (path, name) in [
        ("/ui/images", "images"),
        ("/ui/netboot", "netboot"),
        ("/ui/events", "events"),
        ("/ui/backups", "backups"),
        ("/ui/settings", "settings"),
        ("/ui/account", "account"),
    ] {
        b.goto(&s.url(path)).await;
        b.find("h1").await;
        check_page(&b, name).await;
    }

    // Phone width.
    b.set_viewport(390, 844, true).await;
    for (path, name) in [("/ui/", "phone-dashboard"), ("/ui/machines", "phone-machines")] {
        b.goto(&s.url(path)).await;
        b.find("h1").await;
        check_page(&b, name).await;
    }
    b.goto(&s.url(&format!("/ui/machines/{MAC}"))).await;
    check_page(&b, "phone-machine").await;
    b.color_scheme("dark").await;
    b.goto(&s.url("/ui/machines")).await;
    let bg = b.run("return getComputedStyle(document.body).backgroundColor", json!([])).await;
    assert_eq!(bg, "rgb(17, 20, 24)", "dark colours follow prefers-color-scheme");
    check_page(&b, "phone-machines-dark").await;
    b.color_scheme("light").await;
    b.set_viewport(1280, 1000, false).await;

    // Log out; the pages refuse the browser after that.
    b.goto(&s.url("/ui/")).await;
    b.click(&b.find("form.logout button").await).await;
    b.wait_text("main", "Logged out", 5).await;
    b.goto(&s.url("/ui/machines")).await;
    assert!(b.url().await.contains("/ui/login"), "{}", b.url().await);
    b.find("#username").await;
}

async fn unacked(s: &TestServer) -> usize {
    let token = s.token().await;
    let v: Value = s.authed_json(&token, "/events?unacked=1").await;
    // The token's own creation is history, not a tripwire.
    v["events"].as_array().map(|a| a.len()).unwrap_or(0)
}

/// A first hour: the server's root leads to the UI, the dashboard says the
/// catalog is missing and where to add images, and the Images page adds an
/// uploaded file and a URL without anyone editing catalog.toml.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_images_from_the_images_page() {
    let s = TestServer::start_with(|c| {
        c.paths.catalog = c.paths.state_dir.join("fresh-catalog.toml").to_string_lossy().into_owned();
    })
    .await;
    let catalog = s.state_dir().join("fresh-catalog.toml");
    let b = Browser::start().await;

    b.goto(&s.url("/")).await;
    b.find("#username").await;
    assert!(b.url().await.contains("/ui/login"), "{}", b.url().await);
    b.click(&b.find("#username").await).await;
    b.keys(&format!("bty{TAB}bty{ENTER}")).await;
    let health = b.wait_text(".checks", "Catalog", 10).await;
    assert!(health.contains("missing") && health.contains("Images page"), "{health}");
    assert!(!health.contains('`'), "{health}");
    let nav = b.text(&b.find("a[href='/ui/account']").await).await;
    assert_eq!(nav, "Account");

    // Upload a file: stored in the images directory, hashed, listed.
    b.goto(&s.url("/ui/images")).await;
    b.wait_text("main table", "does not exist", 5).await;
    check_page(&b, "images-empty").await;
    let upload_dir = tempfile::tempdir().unwrap();
    let file = upload_dir.path().join("tiny.img");
    let data: Vec<u8> = (0..10_000u32).map(|i| (i % 241) as u8).collect();
    std::fs::write(&file, &data).unwrap();
    b.type_into(&b.find("#image-file").await, file.to_str().unwrap()).await;
    b.type_into(&b.find("#image-name").await, "tiny-raw.img").await;
    b.type_into(&b.find("#image-description").await, "A tiny disk").await;
    b.click(&b.find("#image-upload button[type=submit]").await).await;
    b.wait_text("main .callout.ok", "Image added", 10).await;
    let table = b.wait_text("main table", "tiny-raw.img", 5).await;
    assert!(table.contains("A tiny disk") && table.contains("raw") && table.contains("9.8 KiB"), "{table}");
    assert_eq!(std::fs::read(s.state_dir().join("images/tiny-raw.img")).unwrap(), data);
    assert!(catalog.exists(), "the catalog file was created");

    // The same name again: refused, said on the page, nothing replaced.
    b.goto(&s.url("/ui/images")).await;
    b.type_into(&b.find("#image-file").await, file.to_str().unwrap()).await;
    b.type_into(&b.find("#image-name").await, "tiny-raw.img").await;
    b.click(&b.find("#image-upload button[type=submit]").await).await;
    let said = b.wait_text("#image-upload-status", "409", 10).await;
    assert!(said.contains("already has an image named tiny-raw.img"), "{said}");

    // Register a URL; a bad digest is answered next to its field first.
    let br = &b;
    let fill = |sha: &'static str| async move {
        for (id, value) in
            [("#name", "debian-13"), ("#url", "https://example.org/debian-13.img.xz"), ("#sha256", sha)]
        {
            let e = br.find(id).await;
            br.clear(&e).await;
            br.type_into(&e, value).await;
        }
        br.click(&br.find("#image-url button[type=submit]").await).await;
    };
    fill("12345").await;
    let err = b.wait_text("#sha256-error", "64 hexadecimal digits", 5).await;
    assert!(!err.is_empty());
    check_page(&b, "images-invalid").await;
    fill("5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef").await;
    b.wait_text("main .callout.ok", "Image added", 10).await;
    let table = b.wait_text("main table", "debian-13", 5).await;
    assert!(table.contains("xz") && table.contains("https://example.org/debian-13.img.xz"), "{table}");
    check_page(&b, "images").await;

    let text = std::fs::read_to_string(&catalog).unwrap();
    let parsed = bty_core::catalog::Catalog::parse(&text).unwrap();
    let names: Vec<&str> = parsed.images.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["tiny-raw.img", "debian-13"]);

    // The dashboard is content now.
    b.goto(&s.url("/ui/")).await;
    let health = b.wait_text(".checks", "Catalog", 5).await;
    assert!(health.contains("2 image(s)"), "{health}");
}

/// A workflow added on the Workflows page, an offline run reported for a
/// machine bound to it (the real cijoe's output), the run on the machine
/// page, its steps and output on the run page, its archive downloaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflows_runs_and_their_reports_in_the_browser() {
    let s = TestServer::start().await;
    let b = Browser::start().await;
    b.goto(&s.url("/ui/workflows")).await;
    b.click(&b.find("#username").await).await;
    b.keys(&format!("bty{TAB}bty{ENTER}")).await;
    b.wait_text("main", "No workflows yet", 10).await;
    check_page(&b, "workflows-empty").await;
    b.type_into(&b.find("#name").await, "motd").await;
    b.type_into(&b.find("#task").await, "doc: Write the motd\nsteps:\n- name: motd\n  run: echo hello\n- name: broken\n  run: sh -c 'echo disk full >&2; exit 1'\n").await;
    b.click(&b.find("#workflow-form button[type=submit]").await).await;
    b.wait_text("main .callout.ok", "Workflow saved", 10).await;
    let page = b.wait_text("main", "Write the motd", 5).await;
    assert!(page.contains("motd") && page.contains("broken"), "{page}");
    check_page(&b, "workflows").await;

    // A machine bound to it flashes and reports the run (as the live environment does).
    let t = s.token().await;
    let (code, v) = s
        .put_machine(
            &t,
            MAC,
            json!({"policy": "flash-once", "image": "local-img", "target_disk_serial": SERIAL,
            "provisioning_mode": "cijoe-offline", "workflow": "motd"}),
        )
        .await;
    assert!(code == 200 || code == 201, "{v}");
    let (_, token) = s.pxe_boot(MAC).await;
    let work = tempfile::tempdir().unwrap();
    let cijoe = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../checks/out/cijoe/bin/cijoe");
    assert!(cijoe.exists(), "checks/deps.sh installs cijoe into checks/out/cijoe/");
    std::fs::write(
        work.path().join("task.yaml"),
        std::fs::read(s.state_dir().join("workflows/motd.yaml")).unwrap(),
    )
    .unwrap();
    let out = work.path().join("out");
    std::fs::write(work.path().join("bty.toml"), "[bty]\nmac = \"x\"\n").unwrap();
    let st = std::process::Command::new(&cijoe)
        .arg(work.path().join("task.yaml"))
        .arg("-c")
        .arg(work.path().join("bty.toml"))
        .arg("-o")
        .arg(&out)
        .current_dir(work.path())
        .output()
        .unwrap();
    assert_eq!(st.status.code(), Some(5), "{}", String::from_utf8_lossy(&st.stderr));
    let tar = work.path().join("r.tar.gz");
    assert!(std::process::Command::new("tar")
        .arg("czf")
        .arg(&tar)
        .arg("-C")
        .arg(&out)
        .arg(".")
        .status()
        .unwrap()
        .success());
    let r = reqwest::Client::new()
        .post(s.url(&format!("/pxe/{MAC}/cijoe?exit=5")))
        .header("x-bty-offer-token", token.unwrap())
        .body(std::fs::read(&tar).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let id = r.json::<Value>().await.unwrap()["run"].as_i64().unwrap();

    b.goto(&s.url(&format!("/ui/machines/{MAC}"))).await;
    let runs = b.wait_text("section[aria-labelledby=runs-h]", "failed", 5).await;
    assert!(
        runs.contains("motd") && runs.contains("step broken failed") && runs.contains("1 of 2"),
        "{runs}"
    );
    b.click(&b.find(&format!("a[href='/ui/runs/{id}']")).await).await;
    let page = b.wait_text("main", "Download the whole report", 5).await;
    assert!(page.contains("disk full"), "the failed step's output is open: {page}");
    check_page(&b, "run").await;
    let got = b
        .run(
            "const x = new XMLHttpRequest(); x.open('GET', arguments[0], false); x.send(); \
             return [x.status, x.getResponseHeader('content-type'), x.getResponseHeader('content-disposition')];",
            json!([format!("/runs/{id}/report")]),
        )
        .await;
    assert_eq!(got[0], 200, "{got}");
    assert_eq!(got[1], "application/gzip", "{got}");
    assert!(got[2].as_str().unwrap().contains(&format!("bty-run-{id}")), "{got}");

    // Online: the key to authorise is on the Workflows page; a run started
    // from the machine page waits for SSH (nothing listens) until cancelled.
    b.goto(&s.url("/ui/workflows")).await;
    let key = b.wait_text("#ssh-public-key", "ssh-ed25519 ", 5).await;
    assert!(key.contains("bty-web@"), "{key}");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (code, v) = s
        .put_machine(
            &t,
            MAC,
            json!({"policy": "local", "provisioning_mode": "cijoe-online", "workflow": "motd",
                   "ssh_host": "127.0.0.1", "ssh_port": closed}),
        )
        .await;
    assert!(code == 200 || code == 201, "{v}");
    b.goto(&s.url(&format!("/ui/machines/{MAC}"))).await;
    let runs = b.wait_text("section[aria-labelledby=runs-h]", "Online runs reach", 5).await;
    assert!(runs.contains(&format!("root@127.0.0.1:{closed}")), "{runs}");
    b.click(&b.find(&format!("form[action='/ui/machines/{MAC}/runs'] button")).await).await;
    let page = b.wait_text("main", "Cancel the run", 10).await;
    assert!(page.contains("running") || page.contains("queued"), "{page}");
    b.click(&b.find("form[action$='/cancel'] button").await).await;
    let page = b.wait_text("main", "cancelled by an operator", 10).await;
    assert!(!page.contains("Cancel the run"), "{page}");
}
