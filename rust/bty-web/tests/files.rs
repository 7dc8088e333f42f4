//! Boot artifacts and image bytes: Range, traversal, uploads, proxying.

mod common;

use axum::body::{Body, Bytes};
use axum::routing::get;
use common::{pattern, TestServer};
use futures_util::stream;
use serde_json::Value;

const REMOTE_LEN: usize = 300_000;

/// A tiny image origin: a good file (with Range), one that dies mid-stream
/// with and without Content-Length, and a 404.
async fn origin() -> (String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("full.img");
    std::fs::write(&file, pattern(REMOTE_LEN)).unwrap();
    // The failure comes after a pause so the headers and first bytes are
    // already on the wire, as with a real origin dying mid-transfer.
    let broken = || {
        let steps = stream::unfold(0u8, |step| async move {
            match step {
                0 => Some((Ok(Bytes::from(pattern(50_000))), 1)),
                1 => {
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    Some((Err(std::io::Error::other("origin died")), 2))
                }
                _ => None,
            }
        });
        Body::from_stream(steps)
    };
    let app = axum::Router::new()
        .route_service("/full.img", tower_http::services::ServeFile::new(file))
        .route(
            "/drop.img",
            get(move || async move {
                axum::response::Response::builder()
                    .header("content-length", REMOTE_LEN.to_string())
                    .body(broken())
                    .unwrap()
            }),
        )
        .route("/drop-chunked.img", get(move || async move { broken() }))
        .route("/missing.img", get(|| async { (axum::http::StatusCode::NOT_FOUND, "gone") }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, dir)
}

async fn with_remote_catalog() -> (TestServer, tempfile::TempDir) {
    let (origin, origin_dir) = origin().await;
    let dir = tempfile::tempdir().unwrap();
    let catalog = format!(
        "version = 1\n{}\n[[images]]\nname = \"remote\"\nsrc = \"{origin}/full.img\"\n\
         [[images]]\nname = \"drop\"\nsrc = \"{origin}/drop.img\"\n\
         [[images]]\nname = \"drop-chunked\"\nsrc = \"{origin}/drop-chunked.img\"\n\
         [[images]]\nname = \"missing\"\nsrc = \"{origin}/missing.img\"\n",
        common::CATALOG.trim_start_matches("version = 1\n")
    );
    std::fs::write(dir.path().join("catalog.toml"), catalog).unwrap();
    (TestServer::start_in(dir, |_| {}).await, origin_dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boot_files_with_ranges() {
    let s = TestServer::start().await;
    let boot = s.state_dir().join("boot");
    std::fs::create_dir_all(&boot).unwrap();
    std::fs::write(boot.join("vmlinuz"), pattern(10_000)).unwrap();
    let c = reqwest::Client::new();
    let r = c.get(s.url("/boot/vmlinuz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["accept-ranges"], "bytes");
    assert_eq!(r.bytes().await.unwrap().to_vec(), pattern(10_000));

    let r = c.get(s.url("/boot/vmlinuz")).header("range", "bytes=100-199").send().await.unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["content-range"], "bytes 100-199/10000");
    assert_eq!(r.bytes().await.unwrap().to_vec(), pattern(10_000)[100..200].to_vec());

    let r = c.get(s.url("/boot/vmlinuz")).header("range", "bytes=9990-").send().await.unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap().len(), 10);

    let r = c.get(s.url("/boot/vmlinuz")).header("range", "bytes=20000-").send().await.unwrap();
    assert_eq!(r.status(), 416);
    assert_eq!(r.headers()["content-range"], "bytes */10000");

    let r = c.head(s.url("/boot/vmlinuz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], "10000");
    assert!(r.bytes().await.unwrap().is_empty());

    let r = c.get(s.url("/boot/initrd.gz")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.text().await.unwrap().contains("PUT /boot/initrd.gz"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traversal_never_leaves_the_directory() {
    let s = TestServer::start().await;
    let boot = s.state_dir().join("boot");
    std::fs::create_dir_all(&boot).unwrap();
    std::fs::write(s.state_dir().join("secret"), "TOP-SECRET").unwrap();
    std::fs::write(boot.join(".hidden"), "TOP-SECRET").unwrap();
    let c = reqwest::Client::new();
    let attempts = [
        "/boot/..%2Fsecret",
        "/boot/..%2fsecret",
        "/boot/%2e%2e%2fsecret",
        "/boot/..%2F..%2F..%2Fetc%2Fpasswd",
        "/boot/%2Fetc%2Fpasswd",
        "/boot/%2F..%2Fsecret",
        "/boot/..%5Csecret",
        "/boot/.hidden",
        "/boot/%2ehidden",
        "/boot/..",
        "/boot/%2e%2e",
        "/boot/secret%00",
        "/boot/boot%2F..%2F..%2Fsecret",
        "/images/..%2Fcatalog.toml",
        "/images/%2e%2e%2fstate.db",
        "/images/..%2F..%2Fsecret",
    ];
    for a in attempts {
        let r = c.get(s.url(a)).send().await.unwrap();
        let code = r.status().as_u16();
        let body = r.text().await.unwrap();
        assert!(code == 400 || code == 404, "{a} answered {code}");
        assert!(!body.contains("TOP-SECRET") && !body.contains("root:"), "{a} leaked: {body}");
    }
    // `..` segments that clients normalise away must not reach outside either.
    let raw = tokio::net::TcpStream::connect(s.url.trim_start_matches("http://")).await.unwrap();
    let (mut rd, mut wr) = raw.into_split();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    wr.write_all(b"GET /boot/../secret HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut resp = String::new();
    rd.read_to_string(&mut resp).await.unwrap();
    assert!(!resp.contains("TOP-SECRET"), "{resp}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_are_atomic_authenticated_and_bounded() {
    let s = TestServer::start_with(|c| c.limits.max_upload_bytes = 64 * 1024).await;
    let token = s.token().await;
    let c = reqwest::Client::new();
    let url = s.url("/boot/ipxe.efi");
    let r = c.put(&url).body(pattern(1000)).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = c.put(&url).bearer_auth(&token).body(pattern(40_000)).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["size_bytes"], 40_000);
    assert_eq!(c.get(&url).send().await.unwrap().bytes().await.unwrap().to_vec(), pattern(40_000));
    let r = c.put(&url).bearer_auth(&token).body(pattern(50_000)).send().await.unwrap();
    assert_eq!(r.status(), 200);

    // Over the limit, declared or streamed: 413, and the old file is untouched.
    let r = c.put(&url).bearer_auth(&token).body(pattern(70_000)).send().await.unwrap();
    assert_eq!(r.status(), 413);
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (0..10).map(|_| Ok(pattern(10_000))).collect();
    let r =
        c.put(&url).bearer_auth(&token).body(reqwest::Body::wrap_stream(stream::iter(chunks))).send().await;
    if let Ok(r) = r {
        assert_eq!(r.status(), 413);
    }
    assert_eq!(c.get(&url).send().await.unwrap().bytes().await.unwrap().len(), 50_000);
    let leftovers: Vec<String> = std::fs::read_dir(s.state_dir().join("boot"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(leftovers, ["ipxe.efi"]);
    let r = c.put(s.url("/boot/.sneaky")).bearer_auth(&token).body("x").send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(s.events(&token, "boot.uploaded").await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_images_stream_with_ranges() {
    let s = TestServer::start().await;
    let c = reqwest::Client::new();
    let r = c.get(s.url("/images/local-img")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().to_vec(), pattern(1 << 20));
    let r = c.get(s.url("/images/local-img")).header("range", "bytes=1000-1999").send().await.unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["content-range"], "bytes 1000-1999/1048576");
    assert_eq!(r.bytes().await.unwrap().to_vec(), pattern(1 << 20)[1000..2000].to_vec());
    let r = c.get(s.url("/images/local-img")).header("range", "bytes=2000000-").send().await.unwrap();
    assert_eq!(r.status(), 416);
    let r = c.head(s.url("/images/local-img")).send().await.unwrap();
    assert_eq!(r.headers()["content-length"], "1048576");
    let r = c.get(s.url("/images/unknown")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = c.get(s.url("/images/other-img")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.text().await.unwrap().contains("does not exist"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_origins_are_proxied_as_streams() {
    let (s, _origin) = with_remote_catalog().await;
    let c = reqwest::Client::new();
    let r = c.get(s.url("/images/remote")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], REMOTE_LEN.to_string());
    assert_eq!(r.bytes().await.unwrap().to_vec(), pattern(REMOTE_LEN));

    let r = c.get(s.url("/images/remote")).header("range", "bytes=10-19").send().await.unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["content-range"], format!("bytes 10-19/{REMOTE_LEN}"));
    assert_eq!(r.bytes().await.unwrap().to_vec(), pattern(REMOTE_LEN)[10..20].to_vec());
    let r = c.get(s.url("/images/remote")).header("range", "bytes=999999999-").send().await.unwrap();
    assert_eq!(r.status(), 416);
    let r = c.head(s.url("/images/remote")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], REMOTE_LEN.to_string());

    let r = c.get(s.url("/images/missing")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert!(r.text().await.unwrap().contains("HTTP 404"));

    // An origin dying mid-stream must never look like a complete download.
    for name in ["drop", "drop-chunked"] {
        let r = c.get(s.url(&format!("/images/{name}"))).send().await.unwrap();
        assert_eq!(r.status(), 200, "{name}");
        match r.bytes().await {
            Err(_) => {}
            Ok(b) => panic!("{name}: got a clean end after {} bytes", b.len()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_listing_points_back_at_this_server() {
    let (s, _origin) = with_remote_catalog().await;
    let (code, list) = s.get_json("/images").await;
    assert_eq!(code, 200);
    let remote = list.as_array().unwrap().iter().find(|e| e["name"] == "remote").unwrap().clone();
    assert_eq!(remote["url"], format!("{}/images/remote", s.url));
    assert_eq!(remote["source"], "http");
    assert_eq!(remote["format"], "raw");
    let (code, toml) = s.get_text("/catalog.toml").await;
    assert_eq!(code, 200);
    let parsed = bty_core::catalog::Catalog::parse(&toml).unwrap();
    assert_eq!(parsed.images.len(), 6);
    assert!(parsed.images.iter().all(|e| e.src == format!("{}/images/{}", s.url, e.name)));
}
