//! Connection handling: idle keep-alive connections are closed after
//! `[server] idle_timeout_s` (network boot clients abandon theirs), while
//! long responses and connections in use are left alone.

mod common;

use std::time::{Duration, Instant};

use common::{TestServer, MAC};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const IDLE: Duration = Duration::from_secs(1);

async fn server() -> TestServer {
    TestServer::start_with(|c| c.server.idle_timeout = IDLE).await
}

/// One keep-alive GET on `conn`; the response head and body as text.
async fn get(conn: &mut TcpStream, path: &str) -> String {
    let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
    conn.write_all(req.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "the server closed the connection mid-response: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some(head_end) = text.find("\r\n\r\n") {
            let len: usize = text[..head_end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap())
                })
                .expect("a content-length");
            if got.len() >= head_end + 4 + len {
                return text;
            }
        }
    }
}

/// Seconds until the server closes `conn` (reads EOF), at most `limit`.
async fn closed_after(conn: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 64];
    match tokio::time::timeout(limit, conn.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => Some(start.elapsed()),
        Ok(Ok(n)) => panic!("unexpected bytes on an idle connection: {:?}", &buf[..n]),
        Err(_) => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed() {
    let s = server().await;
    let addr = s.url.trim_start_matches("http://").to_string();

    // As iPXE does: fetch the bootstrap and the machine's script on one
    // connection, then vanish without closing it.
    let mut conn = TcpStream::connect(&addr).await.unwrap();
    assert!(get(&mut conn, "/pxe-bootstrap.ipxe").await.starts_with("HTTP/1.1 200"));
    // Reused within the idle time: still open.
    tokio::time::sleep(IDLE / 2).await;
    let script = get(&mut conn, &format!("/pxe/{}", MAC.replace(':', "-"))).await;
    assert!(script.starts_with("HTTP/1.1 200") && script.contains("#!ipxe"), "{script}");
    let waited = closed_after(&mut conn, IDLE * 5).await.expect("the server closes the idle connection");
    assert!(waited >= IDLE / 2, "closed too early: after {waited:?}");

    // A connection that never sends a request is closed the same way.
    let mut silent = TcpStream::connect(&addr).await.unwrap();
    assert!(closed_after(&mut silent, IDLE * 5).await.is_some(), "a silent connection is closed");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_stream_outlasts_the_idle_timeout() {
    let s = server().await;
    let token = s.token().await;
    let c = reqwest::Client::new();
    let mut stream = c.get(s.url("/ui/machines/stream")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(stream.status(), 200);
    // Longer than the idle timeout with nothing to say...
    tokio::time::sleep(IDLE * 3).await;
    // ...and the stream still delivers.
    reqwest::get(s.url(&format!("/pxe/{MAC}"))).await.unwrap();
    let mut seen = String::new();
    while !seen.contains("data-mac") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), stream.chunk())
            .await
            .expect("the stream delivers after the idle time")
            .unwrap()
            .expect("the stream is still open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(seen.contains(MAC), "{seen}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_closes_after_a_boot_file() {
    // Long idle timeout: the close below is the server's own, not the idle one.
    let s = TestServer::start_with(|c| c.server.idle_timeout = Duration::from_secs(60)).await;
    let boot = s.state_dir().join("boot");
    std::fs::create_dir_all(&boot).unwrap();
    std::fs::write(boot.join("vmlinuz"), common::pattern(100_000)).unwrap();
    let addr = s.url.trim_start_matches("http://").to_string();

    let mut conn = TcpStream::connect(&addr).await.unwrap();
    // The script before it keeps the connection for the next file...
    assert!(get(&mut conn, "/pxe-bootstrap.ipxe").await.starts_with("HTTP/1.1 200"));
    // ...the kernel ends it.
    let resp = get(&mut conn, "/boot/vmlinuz").await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{}", &resp[..resp.len().min(300)]);
    assert!(resp.to_ascii_lowercase().contains("\r\nconnection: close\r\n"), "{}", &resp[..300]);
    assert!(closed_after(&mut conn, Duration::from_secs(5)).await.is_some(), "closed after the boot file");
    s.stop().await;
}
