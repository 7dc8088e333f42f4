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
    let c = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
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
        // `/boot/..` reaches the server as `/`, which sends browsers to the UI.
        let to_ui = code == 303 && r.headers()["location"] == "/ui/" && r.url().path() == "/";
        let body = r.text().await.unwrap();
        assert!(code == 400 || code == 404 || to_ui, "{a} answered {code}");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boot_files_are_regular_files_inside_the_boot_directory() {
    let s = TestServer::start().await;
    let boot = s.state_dir().join("boot");
    std::fs::create_dir_all(boot.join("sub")).unwrap();
    std::fs::write(boot.join("vmlinuz"), pattern(1000)).unwrap();
    std::fs::write(s.state_dir().join("secret"), "TOP-SECRET").unwrap();
    std::os::unix::fs::symlink("vmlinuz", boot.join("kernel")).unwrap();
    std::os::unix::fs::symlink("sub/../vmlinuz", boot.join("dotted")).unwrap();
    std::os::unix::fs::symlink(s.state_dir().join("secret"), boot.join("out")).unwrap();
    std::os::unix::fs::symlink("../secret", boot.join("up")).unwrap();
    std::os::unix::fs::symlink("../state.db", boot.join("db")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", boot.join("passwd")).unwrap();
    std::os::unix::fs::symlink("loop", boot.join("loop")).unwrap();
    std::os::unix::fs::symlink("sub", boot.join("subdir-link")).unwrap();
    let fifo = std::ffi::CString::new(boot.join("fifo").to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let c = reqwest::Client::builder().timeout(std::time::Duration::from_secs(10)).build().unwrap();

    // Links that stay inside are served like the file.
    for name in ["kernel", "dotted"] {
        let r = c.get(s.url(&format!("/boot/{name}"))).send().await.unwrap();
        assert_eq!(r.status(), 200, "{name}");
        assert_eq!(r.bytes().await.unwrap().to_vec(), pattern(1000), "{name}");
    }
    // Links out, loops, directories and FIFOs are a JSON 404, never a leak,
    // a dropped connection or a hang.
    for name in ["out", "up", "db", "passwd", "loop", "sub", "subdir-link", "fifo"] {
        for method in [reqwest::Method::GET, reqwest::Method::HEAD] {
            let r = c.request(method.clone(), s.url(&format!("/boot/{name}"))).send().await.unwrap();
            assert_eq!(r.status(), 404, "{method} {name}");
            if method == reqwest::Method::GET {
                let v: Value = r.json().await.unwrap();
                let e = v["error"].as_str().unwrap();
                assert!(e.contains(name) && !e.contains("TOP-SECRET") && !e.contains("root:"), "{name}: {e}");
            }
        }
    }
    let r = c.get(s.url("/boot/out")).send().await.unwrap();
    assert!(r.text().await.unwrap().contains("links outside"));

    // A name the file system cannot hold is the client's mistake: 400, in JSON.
    let long = "k".repeat(300);
    let r = c.get(s.url(&format!("/boot/{long}"))).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert!(v["error"].as_str().unwrap().contains("300"), "{v}");
    // One that fits is uploaded and served, although its partial's usual name would not fit.
    let token = s.token().await;
    let fits = "f".repeat(250);
    let r = c.put(s.url(&format!("/boot/{fits}"))).bearer_auth(&token).body("x").send().await.unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    assert_eq!(c.get(s.url(&format!("/boot/{fits}"))).send().await.unwrap().text().await.unwrap(), "x");
}

#[test]
fn a_boot_link_out_of_the_directory_is_logged() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("boot")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", dir.path().join("boot/vmlinuz")).unwrap();
    let (mut child, port, lines) = common::spawn_binary(dir.path());
    let r = reqwest::blocking::get(format!("http://127.0.0.1:{port}/boot/vmlinuz")).unwrap();
    assert_eq!(r.status(), 404);
    let logged = lines.map_while(Result::ok).find(|l| l.contains("symlink out of the boot directory"));
    let _ = child.kill();
    let _ = child.wait();
    let logged = logged.expect("the refusal is logged");
    assert!(logged.contains("/etc/passwd") && logged.contains("WARN"), "{logged}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_images_never_leave_the_images_directory() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir_all(images.join("store/a-dir")).unwrap();
    std::fs::write(images.join("store/real.img"), pattern(4096)).unwrap();
    std::fs::write(dir.path().join("secret"), "TOP-SECRET").unwrap();
    let link = |target: &str, name: &str| std::os::unix::fs::symlink(target, images.join(name)).unwrap();
    link("store/real.img", "inside.img");
    link("../secret", "outside.img");
    let catalog = format!(
        "{}\n[[images]]\nname = \"inside\"\nsrc = \"inside.img\"\n\
         [[images]]\nname = \"outside\"\nsrc = \"outside.img\"\n\
         [[images]]\nname = \"a-dir\"\nsrc = \"store/a-dir\"\n",
        common::CATALOG
    );
    std::fs::write(dir.path().join("catalog.toml"), catalog).unwrap();
    let s = TestServer::start_in(dir, |_| {}).await;
    let c = reqwest::Client::new();
    let r = c.get(s.url("/images/inside")).header("range", "bytes=0-9").send().await.unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap().to_vec(), pattern(10));
    for name in ["outside", "a-dir"] {
        let r = c.get(s.url(&format!("/images/{name}"))).send().await.unwrap();
        assert_eq!(r.status(), 404, "{name}");
        let body = r.text().await.unwrap();
        assert!(!body.contains("TOP-SECRET"), "{name}: {body}");
        assert!(
            body.contains(if name == "outside" { "links outside" } else { "not a regular file" }),
            "{body}"
        );
    }
}

async fn expect(r: reqwest::Response, status: u16, content_range: Option<&str>, body: &[u8]) {
    assert_eq!(r.status(), status);
    let got = r.headers().get("content-range").map(|v| v.to_str().unwrap().to_string());
    assert_eq!(got.as_deref(), content_range);
    assert_eq!(r.bytes().await.unwrap().to_vec(), body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_and_validators_per_rfc_9110() {
    let s = TestServer::start().await;
    let boot = s.state_dir().join("boot");
    std::fs::create_dir_all(&boot).unwrap();
    std::fs::write(boot.join("initrd"), pattern(100)).unwrap();
    let c = reqwest::Client::new();
    let url = s.url("/boot/initrd");
    let get = |headers: &[(&str, &str)]| {
        let mut r = c.get(&url);
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.send()
    };
    let full = get(&[]).await.unwrap();
    let etag = full.headers()["etag"].to_str().unwrap().to_string();
    let modified = full.headers()["last-modified"].to_str().unwrap().to_string();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
    assert!(httpdate::parse_http_date(&modified).is_ok(), "{modified}");

    let whole = pattern(100);
    // If-Range matching the current version: the range.
    expect(
        get(&[("range", "bytes=10-19"), ("if-range", &etag)]).await.unwrap(),
        206,
        Some("bytes 10-19/100"),
        &whole[10..20],
    )
    .await;
    expect(
        get(&[("range", "bytes=10-19"), ("if-range", &modified)]).await.unwrap(),
        206,
        Some("bytes 10-19/100"),
        &whole[10..20],
    )
    .await;
    // Not matching (another tag, a weak tag, another date, garbage): the whole file.
    let weak = format!("W/{etag}");
    for other in ["\"something-else\"", weak.as_str(), "Sun, 06 Nov 1994 08:49:37 GMT", "yesterday"] {
        expect(get(&[("range", "bytes=10-19"), ("if-range", other)]).await.unwrap(), 200, None, &whole).await;
    }
    // A suffix longer than the file is all of it, as a range.
    expect(get(&[("range", "bytes=-99999")]).await.unwrap(), 206, Some("bytes 0-99/100"), &whole).await;
    expect(get(&[("range", "bytes=-10")]).await.unwrap(), 206, Some("bytes 90-99/100"), &whole[90..]).await;
    expect(get(&[("range", "bytes=95-1000")]).await.unwrap(), 206, Some("bytes 95-99/100"), &whole[95..])
        .await;
    // Another unit is ignored.
    expect(get(&[("range", "items=0-5")]).await.unwrap(), 200, None, &whole).await;
    // Unchanged: several ranges, and ranges outside the file, are 416 with the size.
    for bad in ["bytes=0-1,5-6", "bytes=100-", "bytes=-0", "bytes=7-3"] {
        let r = get(&[("range", bad)]).await.unwrap();
        assert_eq!(r.status(), 416, "{bad}");
        assert_eq!(r.headers()["content-range"], "bytes */100", "{bad}");
        let v: Value = r.json().await.unwrap();
        assert!(v["error"].as_str().unwrap().contains("100 bytes"), "{v}");
    }
    // Conditional requests.
    let r = get(&[("if-none-match", &etag)]).await.unwrap();
    assert_eq!(r.status(), 304);
    assert_eq!(r.headers()["etag"], etag.as_str());
    assert_eq!(get(&[("if-modified-since", &modified)]).await.unwrap().status(), 304);
    assert_eq!(get(&[("if-match", "\"nope\"")]).await.unwrap().status(), 412);
    assert_eq!(get(&[("if-unmodified-since", "Sun, 06 Nov 1994 08:49:37 GMT")]).await.unwrap().status(), 412);
    expect(
        get(&[("if-match", &etag), ("range", "bytes=0-0")]).await.unwrap(),
        206,
        Some("bytes 0-0/100"),
        &whole[..1],
    )
    .await;
    // HEAD describes the whole file whatever the Range.
    let r = c.head(&url).header("range", "bytes=0-9").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], "100");
    assert_eq!(r.headers()["etag"], etag.as_str());

    // A new version (as an upload renames into place) changes the validators,
    // so an If-Range from the old one gets the whole new file.
    std::fs::write(boot.join(".next"), pattern(120)).unwrap();
    std::fs::rename(boot.join(".next"), boot.join("initrd")).unwrap();
    let r = get(&[("range", "bytes=10-19"), ("if-range", &etag)]).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_ne!(r.headers()["etag"], etag.as_str());
    assert_eq!(r.bytes().await.unwrap().len(), 120);
}
