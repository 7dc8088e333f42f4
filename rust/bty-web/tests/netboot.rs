//! Fetching netboot artifacts from a release on a local HTTP origin: a good
//! release installs; a corrupted or a cut-off artifact fails and leaves the
//! installed artifacts exactly as they were.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::TestServer;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// path -> (declared Content-Length, bytes actually sent before closing).
type Files = HashMap<String, (usize, Vec<u8>)>;

/// A deliberately minimal HTTP/1.1 origin, so a response can promise more
/// bytes than it sends.
async fn origin(files: Files) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let files = Arc::new(files);
    tokio::spawn(async move {
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            let files = files.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = sock.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..n]);
                }
                let line = String::from_utf8_lossy(&got);
                let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
                match files.get(&path) {
                    Some((declared, body)) => {
                        let head = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {declared}\r\nConnection: close\r\n\r\n"
                        );
                        let _ = sock.write_all(head.as_bytes()).await;
                        let _ = sock.write_all(body).await;
                    }
                    None => {
                        let _ = sock
                            .write_all(
                                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                            )
                            .await;
                    }
                }
                let _ = sock.shutdown().await;
            });
        }
    });
    url
}

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn release(files: &mut Files, tag: &str, kernel: &[u8], initrd: &[u8]) {
    let sums = format!("{}  vmlinuz\n{}  initrd.gz\n", sha(kernel), sha(initrd));
    files.insert(format!("/{tag}/SHA256SUMS"), (sums.len(), sums.into_bytes()));
    files.insert(format!("/{tag}/vmlinuz"), (kernel.len(), kernel.to_vec()));
    files.insert(format!("/{tag}/initrd.gz"), (initrd.len(), initrd.to_vec()));
}

async fn fetch(s: &TestServer, token: &str, tag: &str) -> Value {
    let http = reqwest::Client::new();
    let r = http
        .post(s.url("/netboot/fetch"))
        .bearer_auth(token)
        .json(&json!({"tag": tag}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = s.authed_json(token, "/netboot/fetch").await;
        if st["state"] != "running" {
            return st;
        }
        assert!(Instant::now() < deadline, "fetch still running: {st}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_verifies_and_never_half_replaces() {
    let kernel: Vec<u8> = (0..300_000u32).map(|i| (i * 7) as u8).collect();
    let initrd: Vec<u8> = (0..500_000u32).map(|i| (i * 13 + 1) as u8).collect();
    let mut files = Files::new();
    release(&mut files, "v1", &kernel, &initrd);
    // "bad": the kernel served is not the one the manifest lists.
    release(&mut files, "bad", b"other kernel", &initrd);
    files.insert("/bad/vmlinuz".into(), (12, b"evil kernel!".to_vec()));
    // "cut": the initrd promises its full length and stops halfway.
    release(&mut files, "cut", b"new kernel", &initrd);
    files.insert("/cut/initrd.gz".into(), (initrd.len(), initrd[..initrd.len() / 2].to_vec()));
    let base = origin(files).await;

    let b = base.clone();
    let s = TestServer::start_with(move |c| c.netboot.release_base_url = Some(b)).await;
    let token = s.token().await;
    let boot = s.state_dir().join("boot");

    let st = fetch(&s, &token, "v1").await;
    assert_eq!(st["state"], "done", "{st}");
    assert_eq!(std::fs::read(boot.join("vmlinuz")).unwrap(), kernel);
    assert_eq!(std::fs::read(boot.join("initrd.gz")).unwrap(), initrd);
    let nb = s.authed_json(&token, "/netboot").await;
    assert_eq!(nb["installed"]["tag"], "v1");
    assert_eq!(nb["matches_version"], false, "v1 is not this server's release tag: {nb}");
    assert!(nb["files"].as_array().unwrap().iter().all(|f| f["present"] == true), "{nb}");
    // The live environment is served from what was fetched.
    let (status, _) = s.get_text("/boot/vmlinuz").await;
    assert_eq!(status, 200);

    for (tag, why) in [("bad", "SHA-256"), ("cut", "truncated")] {
        let st = fetch(&s, &token, tag).await;
        assert_eq!(st["state"], "failed", "{st}");
        let err = st["error"].as_str().unwrap();
        assert!(err.contains(why) || err.contains("broke off"), "{tag}: {err}");
        assert!(err.contains("untouched"), "{tag}: the error says nothing was replaced: {err}");
        assert_eq!(std::fs::read(boot.join("vmlinuz")).unwrap(), kernel, "{tag}: kernel untouched");
        assert_eq!(std::fs::read(boot.join("initrd.gz")).unwrap(), initrd, "{tag}: initrd untouched");
        let leftovers: Vec<_> = std::fs::read_dir(&boot)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".partial"))
            .collect();
        assert!(leftovers.is_empty(), "{tag}: temporary files left: {leftovers:?}");
        assert_eq!(s.authed_json(&token, "/netboot").await["installed"]["tag"], "v1");
    }
    let failed = s.events(&token, "netboot.fetch_failed").await;
    assert_eq!(failed.len(), 2);
    assert!(failed.iter().all(|e| e["acknowledged"] == false), "fetch failures are tripwires");
    assert_eq!(s.events(&token, "netboot.fetched").await.len(), 1);

    // A missing release says what to check.
    let st = fetch(&s, &token, "v404").await;
    assert!(st["error"].as_str().unwrap().contains("404"), "{st}");
}
