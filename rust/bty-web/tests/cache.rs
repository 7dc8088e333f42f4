//! The image cache behind `/images/{name}`: one upstream download for many
//! readers, ranges mid-fill, integrity (a corrupted or changing origin never
//! yields a complete-looking image), resumes, eviction, restarts, `kill -9`.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use common::{pattern, TestServer};
use sha2::{Digest, Sha256};

/// An image origin with knobs: pace, a first response cut short, a
/// corrupted byte, an ETag that changes.
#[derive(Default)]
struct Knobs {
    /// Delay between 64 KiB chunks.
    pace_ms: AtomicUsize,
    /// Cut the next full (non-Range) response after this many bytes (0: no).
    cut_first_at: AtomicUsize,
    corrupt: AtomicBool,
    /// Appended to the ETag (a "new version").
    version: AtomicUsize,
    /// A cut response publishes a new version (the ETag changes before the
    /// client can resume).
    new_version_on_cut: AtomicBool,
    gets: AtomicUsize,
    ranges: Mutex<Vec<String>>,
}

struct Origin {
    base: String,
    knobs: Arc<Knobs>,
}

async fn origin(files: Vec<(&'static str, Vec<u8>)>) -> Origin {
    let knobs = Arc::new(Knobs::default());
    let mut app = axum::Router::new();
    for (name, data) in files {
        let data = Bytes::from(data);
        let k = knobs.clone();
        app = app.route(
            &format!("/{name}"),
            get(move |h: HeaderMap| {
                let (data, k) = (data.clone(), k.clone());
                async move { serve(&data, &k, &h) }
            }),
        );
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Origin { base, knobs }
}

fn serve(data: &Bytes, k: &Knobs, h: &HeaderMap) -> Response {
    k.gets.fetch_add(1, Ordering::SeqCst);
    let etag = format!("\"v{}\"", k.version.load(Ordering::SeqCst));
    let mut data = data.to_vec();
    if k.corrupt.load(Ordering::SeqCst) {
        let n = data.len();
        data[n - 10] ^= 0xff;
    }
    let len = data.len();
    let range = h.get("range").and_then(|v| v.to_str().ok()).map(str::to_string);
    let if_range_ok = h.get("if-range").is_none_or(|v| v.to_str().ok() == Some(etag.as_str()));
    let (status, start, cut) = match range.filter(|_| if_range_ok) {
        Some(r) => {
            k.ranges.lock().unwrap().push(r.clone());
            let a: usize = r.trim_start_matches("bytes=").trim_end_matches('-').parse().unwrap();
            (StatusCode::PARTIAL_CONTENT, a, len)
        }
        None => {
            let cut = k.cut_first_at.swap(0, Ordering::SeqCst);
            if cut > 0 && k.new_version_on_cut.load(Ordering::SeqCst) {
                k.version.fetch_add(1, Ordering::SeqCst);
            }
            (StatusCode::OK, 0, if cut > 0 { cut } else { len })
        }
    };
    let pace = k.pace_ms.load(Ordering::SeqCst) as u64;
    let body: Vec<u8> = data[start..].to_vec();
    let chunks: Vec<Result<Bytes, std::io::Error>> = body
        .chunks(64 << 10)
        .scan(start, |at, c| {
            let from = *at;
            *at += c.len();
            Some((from, Bytes::copy_from_slice(c)))
        })
        .filter(|(from, _)| *from < cut)
        .map(|(from, c)| Ok(c.slice(..c.len().min(cut - from))))
        .chain((cut < len).then(|| Err(std::io::Error::other("origin cut"))))
        .collect();
    let stream = futures_util::stream::iter(chunks).then(move |c| async move {
        if pace > 0 {
            tokio::time::sleep(Duration::from_millis(pace)).await;
        }
        c
    });
    let mut r = Response::builder()
        .status(status)
        .header("etag", etag)
        .header("content-length", len - start)
        .header("accept-ranges", "bytes");
    if status == StatusCode::PARTIAL_CONTENT {
        r = r.header("content-range", format!("bytes {start}-{}/{len}", len - 1));
    }
    r.body(Body::from_stream(stream)).unwrap().into_response()
}

use futures_util::StreamExt;

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn catalog(entries: &[(&str, String, &[u8])]) -> String {
    let mut s = common::CATALOG.to_string();
    for (name, src, data) in entries {
        s += &format!("\n[[images]]\nname = \"{name}\"\nsrc = \"{src}\"\nsha256 = \"{}\"\n", sha(data));
    }
    s
}

async fn server(
    entries: &[(&str, String, &[u8])],
    tweak: impl FnOnce(&mut bty_web::config::Config),
) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("catalog.toml"), catalog(entries)).unwrap();
    TestServer::start_in(dir, tweak).await
}

async fn fetch(s: &TestServer, name: &str) -> Result<Vec<u8>, String> {
    let r = TestServer::client()
        .get(s.url(&format!("/images/{name}")))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if r.status() != 200 {
        return Err(format!("HTTP {}", r.status()));
    }
    r.bytes().await.map(|b| b.to_vec()).map_err(|e| e.to_string())
}

async fn metric(s: &TestServer, name: &str) -> u64 {
    let (_, text) = s.get_text("/metrics").await;
    text.lines().find_map(|l| l.strip_prefix(&format!("{name} "))?.parse().ok()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_readers_of_a_cold_slow_image_cause_one_upstream_download() {
    let image = pattern(3 << 20);
    let o = origin(vec![("disk.img", image.clone())]).await;
    o.knobs.pace_ms.store(20, Ordering::SeqCst);
    let s = Arc::new(server(&[("disk", format!("{}/disk.img", o.base), &image)], |_| {}).await);
    let mut readers = Vec::new();
    for i in 0..20 {
        let s = s.clone();
        readers.push(tokio::spawn(async move {
            // Arriving over the whole fill, not all at once.
            tokio::time::sleep(Duration::from_millis(30 * i)).await;
            fetch(&s, "disk").await
        }));
    }
    for r in readers {
        assert!(r.await.unwrap().unwrap() == image);
    }
    assert_eq!(o.knobs.gets.load(Ordering::SeqCst), 1, "one upstream GET");
    assert_eq!(metric(&s, "bty_cache_misses_total").await, 1);
    assert_eq!(metric(&s, "bty_cache_hits_total").await, 19);
    assert_eq!(metric(&s, "bty_cache_upstream_bytes_total").await, image.len() as u64);
    // Warm: from disk, Range served, still no upstream request.
    let r = TestServer::client()
        .get(s.url("/images/disk"))
        .header("Range", "bytes=100-199")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["x-bty-cache"], "hit");
    assert!(r.bytes().await.unwrap() == image[100..200]);
    assert_eq!(o.knobs.gets.load(Ordering::SeqCst), 1);
    let token = s.token().await;
    let list = s.authed_json(&token, "/cache").await;
    let e = &list.as_array().unwrap()[0];
    assert_eq!((e["name"].as_str(), e["state"].as_str()), (Some("disk"), Some("complete")), "{list}");
    assert_eq!(e["hits"], 20, "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_is_served_mid_fill_once_its_bytes_are_there() {
    let image = pattern(4 << 20);
    let o = origin(vec![("disk.img", image.clone())]).await;
    o.knobs.pace_ms.store(40, Ordering::SeqCst);
    let s = Arc::new(server(&[("disk", format!("{}/disk.img", o.base), &image)], |_| {}).await);
    let whole = {
        let s = s.clone();
        tokio::spawn(async move { fetch(&s, "disk").await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    let r = TestServer::client()
        .get(s.url("/images/disk"))
        .header("Range", "bytes=1000-1999")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert!(r.bytes().await.unwrap() == image[1000..2000]);
    let early = started.elapsed();
    assert!(!whole.is_finished(), "the range came before the fill ended ({early:?})");
    let r = TestServer::client()
        .get(s.url("/images/disk"))
        .header("Range", format!("bytes={}-", image.len() - 10))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert!(r.bytes().await.unwrap() == image[image.len() - 10..], "the tail, once filled and verified");
    assert!(whole.await.unwrap().unwrap() == image);
    assert_eq!(o.knobs.gets.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_origin_aborts_every_reader_and_leaves_no_entry() {
    let image = pattern(2 << 20);
    let o = origin(vec![("disk.img", image.clone())]).await;
    o.knobs.corrupt.store(true, Ordering::SeqCst);
    o.knobs.pace_ms.store(10, Ordering::SeqCst);
    let s = Arc::new(server(&[("disk", format!("{}/disk.img", o.base), &image)], |_| {}).await);
    let mut readers = Vec::new();
    for _ in 0..4 {
        let s = s.clone();
        readers.push(tokio::spawn(async move { fetch(&s, "disk").await }));
    }
    for r in readers {
        let got = r.await.unwrap();
        assert!(got.is_err(), "a reader got a complete body of a corrupted image");
    }
    let token = s.token().await;
    let failed = s.events(&token, "cache.fill.failed").await;
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(failed[0]["summary"].as_str().unwrap().contains("digest mismatch"), "{failed:?}");
    let list = s.authed_json(&token, "/cache").await;
    assert_eq!(list[0]["state"], "failed", "{list}");
    // Fixed at the origin: the next request fills again, correctly.
    o.knobs.corrupt.store(false, Ordering::SeqCst);
    assert!(fetch(&s, "disk").await.unwrap() == image);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_upstream_stream_is_resumed_and_a_changed_origin_is_refused() {
    let image = pattern(2 << 20);
    let other = pattern(1 << 20).into_iter().rev().collect::<Vec<u8>>();
    let o = origin(vec![("disk.img", image.clone()), ("other.img", other.clone())]).await;
    o.knobs.cut_first_at.store(700_000, Ordering::SeqCst);
    let s = server(
        &[
            ("disk", format!("{}/disk.img", o.base), &image),
            ("other", format!("{}/other.img", o.base), &other),
        ],
        |_| {},
    )
    .await;
    assert!(fetch(&s, "disk").await.unwrap() == image);
    let ranges = o.knobs.ranges.lock().unwrap().clone();
    assert!(
        ranges.iter().any(|r| r.starts_with("bytes=") && r != "bytes=0-"),
        "resumed with Range: {ranges:?}"
    );

    // The origin publishes a new version between the break and the resume.
    o.knobs.cut_first_at.store(300_000, Ordering::SeqCst);
    o.knobs.new_version_on_cut.store(true, Ordering::SeqCst);
    // Paced, so that the cache holds some bytes when the stream breaks.
    o.knobs.pace_ms.store(20, Ordering::SeqCst);
    let got = fetch(&s, "other").await;
    assert!(
        got.is_err(),
        "a mix of two versions was served as complete: {:?} {:?}",
        got.map(|b| b.len()),
        o.knobs.ranges.lock().unwrap()
    );
    let token = s.token().await;
    let failed = s.events(&token, "cache.fill.failed").await;
    assert!(
        failed.iter().any(|e| e["summary"].as_str().unwrap().contains("changed under a resume")),
        "{failed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_keeps_the_cache_under_its_size_and_spares_bound_images() {
    let imgs: Vec<Vec<u8>> = (0..3).map(|i| pattern((1 << 20) + i)).collect();
    let o = origin(vec![("a.img", imgs[0].clone()), ("b.img", imgs[1].clone()), ("c.img", imgs[2].clone())])
        .await;
    let entries: Vec<(&str, String, &[u8])> = vec![
        ("a", format!("{}/a.img", o.base), &imgs[0]),
        ("b", format!("{}/b.img", o.base), &imgs[1]),
        ("c", format!("{}/c.img", o.base), &imgs[2]),
    ];
    let s = server(&entries, |c| {
        c.cache.max_bytes = (2 << 20) + (1 << 19);
        c.cache.min_free_bytes = 0;
    })
    .await;
    let token = s.token().await;
    // a is bound to a machine that will flash it: never evicted.
    let (code, body) = s
        .put_machine(
            &token,
            "52:54:00:00:00:0a",
            serde_json::json!({"policy": "flash", "image": "a", "target_disk_serial": "disk0"}),
        )
        .await;
    assert!(code == 200 || code == 201, "{body}");
    for _ in 0..50 {
        if s.authed_json(&token, "/cache").await.as_array().unwrap().iter().any(|e| e["state"] == "complete")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let list = s.authed_json(&token, "/cache").await;
    assert!(
        list.as_array().unwrap().iter().any(|e| e["name"] == "a" && e["state"] == "complete"),
        "prefetched on bind: {list}"
    );
    assert!(fetch(&s, "b").await.unwrap() == imgs[1]);
    assert!(fetch(&s, "c").await.unwrap() == imgs[2]);
    let list = s.authed_json(&token, "/cache").await;
    let names: Vec<&str> = list.as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert!(
        names.contains(&"a") && names.contains(&"c") && !names.contains(&"b"),
        "b evicted, a pinned: {list}"
    );
    assert_eq!(metric(&s, "bty_cache_evictions_total").await, 1);
    // Evicted by hand, and filled again on the next request.
    let digest = list.as_array().unwrap().iter().find(|e| e["name"] == "c").unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let r = TestServer::client()
        .delete(s.url(&format!("/cache/{digest}")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let gets = o.knobs.gets.load(Ordering::SeqCst);
    assert!(fetch(&s, "c").await.unwrap() == imgs[2]);
    assert_eq!(o.knobs.gets.load(Ordering::SeqCst), gets + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_mid_fill_resumes_and_never_serves_the_partial_as_complete() {
    let image = pattern(4 << 20);
    let o = origin(vec![("disk.img", image.clone())]).await;
    o.knobs.pace_ms.store(30, Ordering::SeqCst);
    let s = server(&[("disk", format!("{}/disk.img", o.base), &image)], |_| {}).await;
    let url = s.url("/images/disk");
    let reader = tokio::spawn(async move {
        let r = TestServer::client().get(url).send().await.unwrap();
        r.bytes().await.map(|b| b.len())
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    let dir = s.stop().await;
    let _ = reader.await;
    let partial = dir.path().join("cache/partial").join(sha(&image));
    let had = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
    assert!(had > 0 && had < image.len() as u64, "a partial file is left: {had}");
    o.knobs.pace_ms.store(0, Ordering::SeqCst);
    let s = TestServer::start_in(dir, |_| {}).await;
    let token = s.token().await;
    let list = s.authed_json(&token, "/cache").await;
    assert_eq!(list[0]["state"], "partial", "{list}");
    assert!(fetch(&s, "disk").await.unwrap() == image);
    let ranges = o.knobs.ranges.lock().unwrap().clone();
    assert!(
        ranges
            .iter()
            .any(|r| r.trim_start_matches("bytes=").trim_end_matches('-').parse::<u64>().unwrap() > 0),
        "resumed after the partial: {ranges:?}"
    );
}

/// Start the real binary on `dir`; its port once it listens.
fn spawn_binary(dir: &std::path::Path) -> (std::process::Child, u16) {
    let (child, port, lines) = common::spawn_binary(dir);
    // Keep draining its log so that it never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    (child, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_fill_resumes_the_partial_after_a_restart() {
    let image = pattern(4 << 20);
    let o = origin(vec![("disk.img", image.clone())]).await;
    o.knobs.pace_ms.store(30, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("catalog.toml"),
        catalog(&[("disk", format!("{}/disk.img", o.base), &image)]),
    )
    .unwrap();
    let (mut child, port) = {
        let d = dir.path().to_path_buf();
        tokio::task::spawn_blocking(move || spawn_binary(&d)).await.unwrap()
    };
    let url = format!("http://127.0.0.1:{port}/images/disk");
    let reader = tokio::spawn({
        let url = url.clone();
        async move { TestServer::client().get(url).send().await.unwrap().bytes().await.map(|b| b.len()) }
    });
    tokio::time::sleep(Duration::from_millis(1000)).await;
    child.kill().unwrap(); // SIGKILL: no shutdown path runs
    child.wait().unwrap();
    let got = reader.await.unwrap();
    assert!(got.map_or(true, |n| n < image.len()), "a killed server served a whole image");
    let partial = dir.path().join("cache/partial").join(sha(&image));
    let had = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
    assert!(had > 0 && had < image.len() as u64, "a partial file is left: {had}");

    o.knobs.pace_ms.store(0, Ordering::SeqCst);
    let (mut child, port) = {
        let d = dir.path().to_path_buf();
        tokio::task::spawn_blocking(move || spawn_binary(&d)).await.unwrap()
    };
    let url = format!("http://127.0.0.1:{port}/images/disk");
    let r = TestServer::client().get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body = r.bytes().await.unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(body == image, "the image after the restart is whole and right");
    let ranges = o.knobs.ranges.lock().unwrap().clone();
    let resumed_at: Vec<u64> = ranges
        .iter()
        .map(|r| r.trim_start_matches("bytes=").trim_end_matches('-').parse().unwrap())
        .collect();
    assert!(resumed_at.iter().any(|&a| a > 0 && a <= had), "resumed after the partial ({had}): {ranges:?}");
    assert_eq!(o.knobs.gets.load(Ordering::SeqCst), 2, "one request before the kill, one resume after");
    assert!(dir.path().join("cache/sha256").join(sha(&image)).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_images_page_shows_the_cache_and_evicts_and_prefetches() {
    let image = pattern(1 << 20);
    let o = origin(vec![("disk.img", image.clone())]).await;
    let s = server(&[("disk", format!("{}/disk.img", o.base), &image)], |_| {}).await;
    let (c, csrf) = s.login().await;
    let page = |c: reqwest::Client| {
        let url = s.url("/ui/images");
        async move { c.get(url).send().await.unwrap().text().await.unwrap() }
    };
    assert!(page(c.clone()).await.contains("not cached yet"));
    assert!(fetch(&s, "disk").await.unwrap() == image);
    let html = page(c.clone()).await;
    assert!(html.contains("cached, 1.0 MiB") || html.contains("cached, 1 MiB"), "{html}");
    assert!(html.contains("1 filled from the origin"), "{html}");
    let digest = sha(&image);
    let form = |c: &reqwest::Client, path: String| {
        c.post(s.url(&path))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("csrf_token={csrf}"))
    };
    // Without the CSRF token: refused.
    let r = c
        .post(s.url(&format!("/ui/cache/{digest}/evict")))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("csrf_token=x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = form(&c, format!("/ui/cache/{digest}/evict")).send().await.unwrap();
    assert_eq!(r.status(), 200, "followed to the page");
    let html = r.text().await.unwrap();
    assert!(html.contains("Evicted from the cache") && html.contains("not cached yet"), "{html}");
    let token = s.token().await;
    assert_eq!(s.events(&token, "cache.evicted").await.len(), 1);
    let r = form(&c, "/ui/images/disk/prefetch".into()).send().await.unwrap();
    assert_eq!(r.status(), 200);
    for _ in 0..100 {
        if s.authed_json(&token, "/cache").await[0]["state"] == "complete" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(page(c).await.contains("cached, "), "prefetched");
    assert_eq!(o.knobs.gets.load(Ordering::SeqCst), 2);
}
