//! `/images/{name}` for `oras://` catalog entries: the image layer read from a
//! real registry (Debian's docker-registry on loopback) through the engine's
//! client, with HEAD and Range, and a corrupted blob cut short mid-body.

mod common;

#[path = "../../bty/tests/common/oci_registry.rs"]
mod oci_registry;

use std::sync::Arc;

use common::{pattern, TestServer};
use oci_registry::{artifact_manifest, sha256, Registry, Reply, Seen, StandIn, OCI_MANIFEST};

async fn with_catalog(entries: &[(&str, String, String)]) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let mut catalog = common::CATALOG.to_string();
    for (name, src, digest) in entries {
        catalog += &format!(
            "\n[[images]]\nname = \"{name}\"\nsrc = \"{src}\"\nsha256 = \"{}\"\n",
            digest.trim_start_matches("sha256:")
        );
    }
    std::fs::write(dir.path().join("catalog.toml"), catalog).unwrap();
    TestServer::start_in(dir, |_| {}).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oras_entry_is_served_from_the_registry_with_head_and_range() {
    let image = pattern(700_000);
    let reg = tokio::task::spawn_blocking(Registry::start).await.unwrap();
    let (reg, digest) = tokio::task::spawn_blocking(move || {
        let img = pattern(700_000);
        reg.push("lab/img", "v1", &[("application/vnd.oci.image.layer.v1.tar", "disk.img", &img[..])]);
        (reg, sha256(&img))
    })
    .await
    .unwrap();
    let s = with_catalog(&[("lab", format!("oras://{}/lab/img:v1", reg.addr), digest.clone())]).await;
    let c = TestServer::client();

    let r = c.head(s.url("/images/lab")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], "700000");

    let r = c.get(s.url("/images/lab")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.unwrap() == image);
    // Verified and complete now: the strong validator is given.
    let r = c.head(s.url("/images/lab")).send().await.unwrap();
    assert_eq!(r.headers()["etag"].to_str().unwrap(), format!("\"{digest}\""));

    let r = c.get(s.url("/images/lab")).header("Range", "bytes=1000-1999").send().await.unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["content-range"], "bytes 1000-1999/700000");
    assert!(r.bytes().await.unwrap() == image[1000..2000]);
    let r = c.get(s.url("/images/lab")).header("Range", "bytes=800000-").send().await.unwrap();
    assert_eq!(r.status(), 416);

    let (code, list) = s.get_json("/images").await;
    assert_eq!(code, 200);
    let e = list.as_array().unwrap().iter().find(|e| e["name"] == "lab").unwrap().clone();
    assert_eq!(e["source"], "oci", "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_layer_never_looks_like_a_complete_image() {
    let blob = pattern(600_000);
    let digest = sha256(&blob);
    let mut bad = blob.clone();
    bad[599_000] ^= 0xff;
    let manifest = artifact_manifest(
        &sha256(b"{}"),
        &[serde_json::json!({"mediaType": "application/octet-stream", "digest": digest, "size": blob.len(),
            "annotations": {"org.opencontainers.image.title": "disk.img"}})],
    );
    let reg = StandIn::start(
        "127.0.0.1",
        Arc::new(move |s: &Seen| {
            if s.path.contains("/manifests/") {
                Reply::Send(200, vec![("Content-Type".into(), OCI_MANIFEST.into())], manifest.clone())
            } else {
                Reply::Send(200, vec![], bad.clone())
            }
        }),
    );
    let missing = StandIn::start("127.0.0.1", Arc::new(|_: &Seen| Reply::Send(404, vec![], b"{}".to_vec())));
    let s = with_catalog(&[
        ("bad", format!("oras://{}/lab/img:v1", reg.addr), digest.clone()),
        ("gone", format!("oras://{}/lab/img:v1", missing.addr), digest.clone()),
    ])
    .await;
    let c = TestServer::client();
    let r = c.get(s.url("/images/bad")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    match r.bytes().await {
        Err(_) => {}
        Ok(b) => panic!("a clean end after {} bytes of a corrupted layer", b.len()),
    }
    let r = c.get(s.url("/images/gone")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert!(r.text().await.unwrap().contains("no such manifest"));
}
