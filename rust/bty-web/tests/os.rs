//! The appliance's own updates in bty-web: `GET /os` on a server that is not
//! an A/B appliance and on one that is (slots, versions, counters, the
//! failed-update tripwire raised once), the latest release verified, an
//! efisys apply run as a background job from the API and from the page's
//! form, and a second job refused while one runs.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::TestServer;
use serde_json::{json, Value};

fn have(tool: &str) -> bool {
    Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output().is_ok_and(|o| o.status.success())
}

fn sh(cmd: &mut Command) {
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&o.stderr));
}

fn sha256(p: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(p).unwrap()))
}

/// An appliance disk image (GPT: ESP, bty-a, bty-b, bty-state), an ESP
/// directory whose slot B ran out of tries on 1.3.0 (so A runs 1.2.0),
/// and a signed efisys release 2.0.0.
struct Appliance {
    disk: PathBuf,
    esp: PathBuf,
    source: PathBuf,
    pubkey: PathBuf,
}

fn appliance(dir: &Path) -> Appliance {
    let disk = dir.join("disk.img");
    std::fs::File::create(&disk).unwrap().set_len(40 << 20).unwrap();
    sh(Command::new("sgdisk")
        .args(["-o", "-n1:2048:+8M", "-t1:ef00", "-c1:ESP", "-n2:0:+8M", "-t2:8304", "-c2:bty-a"])
        .args(["-n3:0:+8M", "-t3:8304", "-c3:bty-b", "-n4:0:0", "-t4:8300", "-c4:bty-state"])
        .arg(&disk));
    let esp = dir.join("esp");
    std::fs::create_dir_all(esp.join("EFI/Linux")).unwrap();
    std::fs::create_dir_all(esp.join("EFI/BOOT")).unwrap();
    std::fs::write(esp.join("EFI/Linux/bty-a_1.2.0.efi"), b"uki 1.2.0").unwrap();
    std::fs::write(esp.join("EFI/Linux/bty-b_1.3.0+0-3.efi"), b"uki 1.3.0").unwrap();
    std::fs::write(esp.join("EFI/BOOT/BOOTX64.EFI"), b"loader 1").unwrap();

    let (pubkey, seckey) = (dir.join("r.pub"), dir.join("r.sec"));
    sh(Command::new("minisign").args(["-G", "-W", "-f", "-p"]).arg(&pubkey).arg("-s").arg(&seckey));
    let source = dir.join("rel");
    let v = source.join("2.0.0");
    std::fs::create_dir_all(&v).unwrap();
    std::fs::write(source.join("latest"), "2.0.0\n").unwrap();
    std::fs::write(v.join("BOOTX64.EFI"), b"loader 2").unwrap();
    let m = json!({"version": "2.0.0", "arch": "x86_64", "type": "efisys", "files": [
        {"role": "esp", "name": "BOOTX64.EFI", "url": "BOOTX64.EFI", "sha256": sha256(&v.join("BOOTX64.EFI")),
         "size": 8, "path": "EFI/BOOT/BOOTX64.EFI"}]});
    std::fs::write(v.join("manifest.json"), serde_json::to_vec(&m).unwrap()).unwrap();
    sh(Command::new("minisign")
        .args(["-S", "-s"])
        .arg(&seckey)
        .arg("-m")
        .arg(v.join("manifest.json"))
        .args(["-t", "version=2.0.0 type=efisys"]));
    Appliance { disk, esp, source, pubkey }
}

async fn wait_job(s: &TestServer, token: &str) -> Value {
    for _ in 0..100 {
        let v = s.authed_json(token, "/os").await;
        if v["job"]["state"] != "running" {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the job did not end");
}

#[tokio::test]
async fn a_server_on_an_ordinary_disk_says_it_is_not_an_appliance() {
    let s = TestServer::start_with(|c| {
        c.os.disk = Some(PathBuf::from("/nonexistent/disk"));
    })
    .await;
    let t = s.token().await;
    let v = s.authed_json(&t, "/os").await;
    assert_eq!(v["appliance"], Value::Null);
    assert!(v["reason"].as_str().unwrap().contains("/nonexistent/disk"), "{v}");
    let (c, _) = s.login().await;
    let html = c.get(s.url("/ui/os")).send().await.unwrap().text().await.unwrap();
    assert!(html.contains("Not an A/B appliance"), "{html}");
    assert!(html.contains("No release source"), "{html}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_the_failed_update_tripwire_and_an_efisys_apply() {
    if !have("sgdisk") || !have("minisign") {
        eprintln!("skipping: sgdisk and minisign are needed (checks/deps.sh installs them)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let a = appliance(dir.path());
    let (disk, esp, source, pubkey) = (a.disk.clone(), a.esp.clone(), a.source.clone(), a.pubkey.clone());
    let s = TestServer::start_with(move |c| {
        c.os.disk = Some(disk);
        c.os.esp = Some(esp);
        c.os.source = Some(source.display().to_string());
        c.os.pubkey = Some(pubkey);
    })
    .await;
    let t = s.token().await;

    let v = s.authed_json(&t, "/os").await;
    let ap = &v["appliance"];
    assert_eq!(ap["slots"][0]["version"], "1.2.0", "{v}");
    assert_eq!(ap["slots"][1]["tries_left"], 0, "{v}");
    assert_eq!(ap["next_boot"]["entry"], "bty-a_1.2.0.efi");
    assert_eq!(ap["failed_update"]["message"], "update to 1.3.0 failed its health checks; running 1.2.0");
    s.authed_json(&t, "/os").await;
    let tripwires = s.events(&t, "os.update.failed").await;
    assert_eq!(tripwires.len(), 1, "raised once: {tripwires:?}");
    assert_eq!(tripwires[0]["acknowledged"], false);

    let latest = s.authed_json(&t, "/os/releases/latest?type=efisys").await;
    assert_eq!(latest["manifest"]["version"], "2.0.0", "{latest}");
    assert_eq!(latest["verified"], true);

    let c = reqwest::Client::new();
    let r = c.post(s.url("/os/apply")).bearer_auth(&t).json(&json!({"type": "efisys"})).send().await.unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    let v = wait_job(&s, &t).await;
    assert_eq!(v["job"]["state"], "done", "{v}");
    assert_eq!(std::fs::read(a.esp.join("EFI/BOOT/BOOTX64.EFI")).unwrap(), b"loader 2");
    assert_eq!(v["appliance"]["efisys"], "2.0.0");
    assert_eq!(s.events(&t, "os.applied").await.len(), 1);

    // Bad input: a version that is not one, an unknown type.
    let r = c.post(s.url("/os/apply")).bearer_auth(&t).json(&json!({"version": "two"})).send().await.unwrap();
    assert_eq!(r.status(), 422);
    let r =
        c.post(s.url("/os/download")).bearer_auth(&t).json(&json!({"type": "kernel"})).send().await.unwrap();
    assert_eq!(r.status(), 422);

    // The page: slots, the tripwire, the job; its form downloads the release.
    let (b, csrf) = s.login().await;
    let html = b.get(s.url("/ui/os?check=efisys")).send().await.unwrap().text().await.unwrap();
    assert!(html.contains("update to 1.3.0 failed its health checks; running 1.2.0"), "{html}");
    assert!(html.contains("no tries left"), "{html}");
    assert!(html.contains("Latest <strong>efisys 2.0.0</strong>"), "{html}");
    let r = b
        .post(s.url("/ui/os/download"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("csrf_token={csrf}&type=efisys&version="))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let v = wait_job(&s, &t).await;
    assert_eq!(v["job"]["state"], "done", "{v}");
    assert!(s.state_dir().join("os-releases/efisys-2.0.0/manifest.json.minisig").exists());
    // Without the CSRF token the form is refused.
    let r = b
        .post(s.url("/ui/os/apply"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("type=efisys")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}
