//! The network boot services inside bty-web: TFTP switched on and off at
//! runtime (API and Settings page) and serving the boot directory's iPXE
//! binaries to curl, its transfers in `/metrics` and the audit log, its
//! state on the dashboard; a ProxyDHCP that cannot start says why; the
//! switches outlive a restart.

mod common;

use std::time::Duration;

use common::{pattern, TestServer};
use serde_json::{json, Value};

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn tftp_get(port: u16, name: &str) -> Result<Vec<u8>, String> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("got");
    let r = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "3", "-o"])
        .arg(&out)
        .arg(format!("tftp://127.0.0.1:{port}/{name}"))
        .output()
        .await
        .expect("curl");
    if !r.status.success() {
        return Err(String::from_utf8_lossy(&r.stderr).into_owned());
    }
    Ok(std::fs::read(out).unwrap())
}

async fn switch(s: &TestServer, token: &str, name: &str, on: bool) -> (u16, Value) {
    let r = TestServer::client()
        .put(s.url(&format!("/netboot/services/{name}")))
        .bearer_auth(token)
        .json(&json!({"enabled": on}))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tftp_is_switched_at_runtime_serves_the_boot_directory_and_is_counted() {
    let port = free_udp_port();
    let s = TestServer::start_with(|c| {
        c.tftp.address = std::net::Ipv4Addr::LOCALHOST;
        c.tftp.port = port;
    })
    .await;
    let boot = s.state_dir().join("boot");
    std::fs::write(boot.join("snponly.efi"), pattern(300_000)).unwrap();
    let token = s.token().await;

    // Off by default: nothing answers.
    let list = s.authed_json(&token, "/netboot/services").await;
    assert_eq!(list[0]["name"], "TFTP");
    assert_eq!(list[0]["state"], "off");
    assert!(tftp_get(port, "snponly.efi").await.is_err());

    let (status, h) = switch(&s, &token, "tftp", true).await;
    assert_eq!(status, 200, "{h}");
    assert_eq!(h["state"], "listening", "{h}");
    assert_eq!(h["listening"][0], format!("127.0.0.1:{port}"));
    assert_eq!(tftp_get(port, "snponly.efi").await.unwrap(), pattern(300_000));
    // A new file in the boot directory is served without a restart.
    std::fs::write(boot.join("snponly.efi"), pattern(1000)).unwrap();
    assert_eq!(tftp_get(port, "snponly.efi").await.unwrap(), pattern(1000));
    let missing = tftp_get(port, "ipxe.efi").await.unwrap_err();
    // curl's exit code 68 is TFTP's "file not found".
    assert!(missing.contains("(68)"), "{missing}");
    assert!(tftp_get(port, "../state.db").await.is_err());

    let (_, metrics) = s.get_text("/metrics").await;
    assert!(metrics.contains(r#"bty_tftp_requests_total{file="snponly.efi",result="done"} 2"#), "{metrics}");
    assert!(
        metrics.contains(r#"bty_tftp_requests_total{file="ipxe.efi",result="not_found"} 1"#),
        "{metrics}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let served = s.events(&token, "netboot.tftp.served").await;
    assert!(!served.is_empty(), "transfers are in the audit log");
    let failed = s.events(&token, "netboot.tftp.failed").await;
    assert!(failed[0]["summary"].as_str().unwrap().contains("not in the boot directory"), "{failed:?}");

    // The dashboard's health line says where it listens and what it heard.
    let (c, _) = s.login().await;
    let dash = c.get(s.url("/ui/")).send().await.unwrap().text().await.unwrap();
    assert!(dash.contains(&format!("listening on 127.0.0.1:{port}")), "{dash}");

    // Off again, from the Settings page's form.
    let (c, csrf) = s.login().await;
    let r = c
        .post(s.url("/ui/settings/services"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("csrf_token={csrf}&service=tftp&enabled=off"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let page = r.text().await.unwrap();
    assert!(page.contains("Turn TFTP on"), "{page}");
    assert!(tftp_get(port, "snponly.efi").await.is_err(), "off means off");
    let events = s.events(&token, "settings.updated").await;
    assert!(events.iter().any(|e| e["summary"] == "TFTP turned off"), "{events:?}");

    // The switch outlives a restart (and overrides the config's default).
    let dir = s.stop().await;
    let s = TestServer::start_in(dir, |c| {
        c.tftp.enabled = true;
        c.tftp.address = std::net::Ipv4Addr::LOCALHOST;
        c.tftp.port = port;
    })
    .await;
    assert!(tftp_get(port, "snponly.efi").await.is_err(), "still off after a restart");
    let token = s.token().await;
    assert_eq!(switch(&s, &token, "tftp", true).await.1["state"], "listening");
    assert_eq!(tftp_get(port, "snponly.efi").await.unwrap(), pattern(1000));
}

#[tokio::test]
async fn a_service_that_cannot_start_says_why_and_bad_switches_are_refused() {
    // An interface that does not exist (never the host's own: the test
    // must not answer DHCP on a real network).
    let s = TestServer::start_with(|c| c.proxy_dhcp.interface = Some("btynone0".into())).await;
    let token = s.token().await;
    let (status, h) = switch(&s, &token, "proxy_dhcp", true).await;
    assert_eq!(status, 200);
    assert_eq!(h["state"], "failed");
    let detail = h["detail"].as_str().unwrap();
    assert!(detail.contains("btynone0") && detail.contains("does not exist"), "{h}");
    let tripwires = s.events(&token, "netboot.service.failed").await;
    assert_eq!(tripwires.len(), 1);
    // Port 69 as a normal user, or a port taken: the reason in words.
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let s2 = TestServer::start_with(|c| {
        c.tftp.address = std::net::Ipv4Addr::LOCALHOST;
        c.tftp.port = port;
        c.tftp.enabled = true;
    })
    .await;
    let t2 = s2.token().await;
    let list = s2.authed_json(&t2, "/netboot/services").await;
    assert_eq!(list[0]["state"], "failed", "{list}");
    assert!(list[0]["detail"].as_str().unwrap().contains(&format!("port {port} in use")), "{list}");

    let (status, body) = switch(&s, &token, "dns", true).await;
    assert_eq!(status, 404, "{body}");
    let r = TestServer::client()
        .put(s.url("/netboot/services/tftp"))
        .bearer_auth(&token)
        .json(&json!({"enabled": "yes"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    // Open routes do not reach the switches.
    let r = TestServer::client().get(s.url("/netboot/services")).send().await.unwrap();
    assert_eq!(r.status(), 401);
}
