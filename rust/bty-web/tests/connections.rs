//! Connection handling: idle keep-alive connections are closed after
//! `[server] idle_timeout_s` (network boot clients abandon theirs), while
//! long responses and connections in use are left alone; request bodies
//! that do not arrive in `[server] body_timeout_s` are answered 408 (uploads
//! only when their bytes stop); beyond `[server] max_connections` new
//! connections wait to be accepted.

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

/// Everything the server sends on `conn` until it closes it (at most `limit`).
async fn read_to_close(conn: &mut TcpStream, limit: Duration) -> String {
    let mut got = Vec::new();
    tokio::time::timeout(limit, conn.read_to_end(&mut got))
        .await
        .expect("the server closes the connection")
        .unwrap();
    String::from_utf8_lossy(&got).to_string()
}

/// Headers and the first part of a body that claims to be longer.
async fn start_slow_post(addr: &str, path: &str) -> TcpStream {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"sta"
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_body_is_answered_408_and_its_connection_closed() {
    let s = TestServer::start_with(|c| {
        c.server.body_timeout = Duration::from_secs(1);
        c.server.idle_timeout = Duration::from_secs(60);
    })
    .await;
    let addr = s.url.trim_start_matches("http://").to_string();
    let token = s.token().await;
    let started = Instant::now();
    // Open routes and operator routes, JSON and form bodies alike.
    let mut slow = Vec::new();
    for i in 0..30 {
        let path = match i % 3 {
            0 => format!("/pxe/{MAC}/status"),
            1 => "/auth/login".to_string(),
            _ => format!("/pxe/{MAC}/done"),
        };
        slow.push(start_slow_post(&addr, &path).await);
    }
    let mut operator = TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "PUT /machines/{MAC} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: 50\r\n\r\n{{"
    );
    operator.write_all(head.as_bytes()).await.unwrap();
    slow.push(operator);

    // Meanwhile everyone else is served at once.
    for _ in 0..5 {
        let t = Instant::now();
        let (code, _) = s.get_text("/healthz").await;
        assert_eq!(code, 200);
        let (code, script) = s.get_text(&format!("/pxe/{MAC}")).await;
        assert!(code == 200 && script.contains("#!ipxe"));
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "healthz and PXE stay responsive: {:?}",
            t.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for mut conn in slow {
        let resp = read_to_close(&mut conn, Duration::from_secs(10)).await;
        assert!(resp.starts_with("HTTP/1.1 408"), "{resp}");
        assert!(resp.to_ascii_lowercase().contains("\r\nconnection: close\r\n"), "{resp}");
        assert!(resp.contains("application/json") && resp.contains("body_timeout_s"), "{resp}");
    }
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(1) && waited < Duration::from_secs(8), "{waited:?}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_is_cut_only_when_its_bytes_stop() {
    let s = TestServer::start_with(|c| {
        c.server.body_timeout = Duration::from_secs(1);
        c.server.idle_timeout = Duration::from_secs(60);
    })
    .await;
    let addr = s.url.trim_start_matches("http://").to_string();
    let token = s.token().await;
    let upload = |name: &str, len: usize| {
        format!(
            "PUT /boot/{name} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {token}\r\n\
             Content-Length: {len}\r\n\r\n"
        )
    };

    // Three seconds of upload, a chunk every 300 ms: three times the body
    // timeout, and never a gap as long.
    let mut conn = TcpStream::connect(&addr).await.unwrap();
    conn.write_all(upload("flowing", 10 * 1000).as_bytes()).await.unwrap();
    let started = Instant::now();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        conn.write_all(&[b'k'; 1000]).await.unwrap();
    }
    assert!(started.elapsed() > Duration::from_secs(2));
    let mut got = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut got)).await.unwrap().unwrap();
    let resp = String::from_utf8_lossy(&got[..n]).to_string();
    assert!(resp.starts_with("HTTP/1.1 201"), "{resp}");
    assert_eq!(std::fs::read(s.state_dir().join("boot/flowing")).unwrap().len(), 10 * 1000);

    // One that stops halfway is cut after the timeout, and nothing is kept.
    let mut conn = TcpStream::connect(&addr).await.unwrap();
    conn.write_all(upload("stalled", 10 * 1000).as_bytes()).await.unwrap();
    conn.write_all(&[b'k'; 5000]).await.unwrap();
    let started = Instant::now();
    let resp = read_to_close(&mut conn, Duration::from_secs(10)).await;
    assert!(resp.starts_with("HTTP/1.1 408"), "{resp}");
    assert!(resp.contains("no bytes of the request body arrived for 1 s"), "{resp}");
    assert!(started.elapsed() >= Duration::from_millis(900), "{:?}", started.elapsed());
    assert!(!s.state_dir().join("boot/stalled").exists());
    let partials: Vec<_> = std::fs::read_dir(s.state_dir().join("boot"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".partial"))
        .collect();
    assert!(partials.is_empty(), "the partial upload is removed");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_wait_and_are_served_once_one_closes() {
    let s = TestServer::start_with(|c| {
        c.server.max_connections = Some(2);
        c.server.idle_timeout = Duration::from_secs(60);
    })
    .await;
    let addr = s.url.trim_start_matches("http://").to_string();
    // Two clients hold every connection the server serves.
    let mut first = TcpStream::connect(&addr).await.unwrap();
    assert!(get(&mut first, "/healthz").await.starts_with("HTTP/1.1 200"));
    let mut second = TcpStream::connect(&addr).await.unwrap();
    assert!(get(&mut second, "/healthz").await.starts_with("HTTP/1.1 200"));

    // A third is not refused: it waits in the listen queue...
    let url = s.url(&format!("/pxe/{MAC}"));
    let third = tokio::spawn(async move {
        let started = Instant::now();
        let r = reqwest::Client::new().get(url).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap(), started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!third.is_finished(), "the third connection is not served while two are open");
    // ...and is served as soon as one of the two closes.
    drop(first);
    let (code, script, waited) =
        tokio::time::timeout(Duration::from_secs(10), third).await.expect("served after a close").unwrap();
    assert_eq!(code, 200);
    assert!(script.contains("#!ipxe"), "{script}");
    assert!(waited >= Duration::from_millis(800), "{waited:?}");
    // The connection still open keeps working.
    assert!(get(&mut second, "/healthz").await.starts_with("HTTP/1.1 200"));
    s.stop().await;
}
