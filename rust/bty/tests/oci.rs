//! `oras://` sources end to end: `bty flash` and `bty inspect` against a real
//! registry (Debian's docker-registry on loopback), and against a stand-in
//! for what real registries and their blob stores do at the edges: bearer
//! tokens, redirects to another host, streams cut short, corrupted blobs.

mod common;

use std::sync::Arc;

use common::oci_registry::*;
use common::*;

const MIB: usize = 1 << 20;

fn zstd_image(dir: &std::path::Path) -> (Vec<u8>, Vec<u8>) {
    let raw = dir.join("disk.img");
    let data = image_bytes(3 * MIB + 4096, 11);
    write_file(&raw, &data);
    let zst = std::fs::read(compress(&raw, "zst")).unwrap();
    (data, zst)
}

#[test]
fn flash_and_inspect_from_a_real_registry_by_tag_and_by_digest() {
    let dir = tempfile::tempdir().unwrap();
    let (data, zst) = zstd_image(dir.path());
    let reg = Registry::start();
    let sidecar = format!("{}  disk.img.zst\n", sha256(&zst).trim_start_matches("sha256:"));
    let manifest = reg.push(
        "lab/debian",
        "13",
        &[
            // A signature larger than the image and a checksum sidecar: neither is the image.
            ("application/vnd.dev.cosign.simplesigning.v1+json", "signature", &vec![b'x'; 4 * MIB][..]),
            ("application/vnd.oci.image.layer.v1.tar", "disk.img.zst.sha256", sidecar.as_bytes()),
            ("application/vnd.oci.image.layer.v1.tar+zstd", "disk.img.zst", &zst[..]),
        ],
    );
    let by_tag = format!("oras://{}/lab/debian:13", reg.addr);
    let o = run(&["inspect", &by_tag]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("zstd") && text.contains("disk.img.zst"), "{text}");

    for src in [by_tag.clone(), format!("oras://{}/lab/debian@{manifest}", reg.addr)] {
        let out = dir.path().join("out.img");
        let o = run(&["flash", &src, out.to_str().unwrap(), "--yes", "--verify"]);
        assert_eq!(code(&o), 0, "{src}: {}{}", stdout(&o), stderr(&o));
        assert!(std::fs::read(&out).unwrap() == data, "{src}: different bytes");
        std::fs::remove_file(&out).unwrap();
    }

    // A pinned digest the registry does not hold, and a tag it does not have.
    let out = dir.path().join("never.img");
    let o = run(&[
        "flash",
        &format!("oras://{}/lab/debian@sha256:{}", reg.addr, "0".repeat(64)),
        out.to_str().unwrap(),
        "--yes",
    ]);
    assert_ne!(code(&o), 0);
    assert!(stderr(&o).contains("no such manifest"), "{}", stderr(&o));
    let o = run(&["flash", &format!("oras://{}/lab/debian:14", reg.addr), out.to_str().unwrap(), "--yes"]);
    assert!(stderr(&o).contains("no such manifest") && stderr(&o).contains(":14"), "{}", stderr(&o));
    assert!(
        !out.exists() || std::fs::metadata(&out).unwrap().len() == 0,
        "nothing written for a missing image"
    );
    // A malformed reference is a usage error that says what the form is.
    let o = run(&["flash", "oras://reg/UPPER:1", out.to_str().unwrap(), "--yes"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("oras://REGISTRY/REPOSITORY:TAG"), "{}", stderr(&o));
}

/// The stand-in's manifest for one layer.
fn manifest_for(layer: &[u8], digest: &str) -> Vec<u8> {
    artifact_manifest(
        &sha256(b"{}"),
        &[serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd", "digest": digest,
            "size": layer.len(), "annotations": {"org.opencontainers.image.title": "disk.img.zst"}})],
    )
}

#[test]
fn bearer_token_redirect_to_another_host_and_a_broken_stream_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let (data, zst) = zstd_image(dir.path());
    let digest = sha256(&zst);
    let blob = Arc::new(zst.clone());

    // Blob storage on another loopback address: the first GET breaks halfway.
    let cdn_blob = blob.clone();
    let cdn = StandIn::start(
        "127.0.0.2",
        Arc::new(move |s: &Seen| {
            let len = cdn_blob.len();
            match requested_range(s, len) {
                Some((a, b)) => Reply::Send(
                    206,
                    vec![("Content-Range".into(), format!("bytes {a}-{b}/{len}"))],
                    cdn_blob[a..=b].to_vec(),
                ),
                None => Reply::Cut(200, vec![], cdn_blob.to_vec(), len / 2),
            }
        }),
    );
    let cdn_addr = cdn.addr.clone();
    let manifest = manifest_for(&zst, &digest);
    let registry = StandIn::start(
        "127.0.0.1",
        Arc::new(move |s: &Seen| {
            let me = s.headers.get("host").cloned().unwrap_or_default();
            if s.path.starts_with("/token") {
                return Reply::Send(200, vec![], br#"{"token":"T-1"}"#.to_vec());
            }
            if s.headers.get("authorization").map(String::as_str) != Some("Bearer T-1") {
                let challenge = format!(
                    r#"Bearer realm="http://{me}/token",service="stand-in",scope="repository:lab/disk:pull""#
                );
                return Reply::Send(401, vec![("WWW-Authenticate".into(), challenge)], vec![]);
            }
            if s.path.contains("/manifests/") {
                return Reply::Send(
                    200,
                    vec![("Content-Type".into(), OCI_MANIFEST.into())],
                    manifest.clone(),
                );
            }
            Reply::Send(
                307,
                vec![("Location".into(), format!("http://{cdn_addr}/blob?sig=expires-soon"))],
                vec![],
            )
        }),
    );
    // Credentials as `docker login` stores them: sent to the token service only.
    let docker = dir.path().join("docker");
    std::fs::create_dir(&docker).unwrap();
    std::fs::write(
        docker.join("config.json"),
        format!(r#"{{"auths":{{"{}":{{"auth":"dXNlcjpzM2NyZXQ="}}}}}}"#, registry.addr),
    )
    .unwrap();

    let out = dir.path().join("out.img");
    let src = format!("oras://{}/lab/disk:v1", registry.addr);
    let o = bty()
        .args(["flash", &src, out.to_str().unwrap(), "--yes"])
        .env("DOCKER_CONFIG", &docker)
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    assert!(std::fs::read(&out).unwrap() == data);

    let reg_seen = registry.requests();
    let token = reg_seen.iter().find(|s| s.path.starts_with("/token")).expect("a token request");
    assert!(
        token.path.contains("scope=repository%3Alab%2Fdisk%3Apull")
            || token.path.contains("scope=repository:lab/disk:pull"),
        "{}",
        token.path
    );
    assert_eq!(token.headers.get("authorization").map(String::as_str), Some("Basic dXNlcjpzM2NyZXQ="));
    let cdn_seen = cdn.requests();
    assert!(
        cdn_seen.iter().all(|s| !s.headers.contains_key("authorization")),
        "Authorization crossed hosts: {cdn_seen:?}"
    );
    let resumed = cdn_seen.iter().filter_map(|s| requested_range(s, zst.len())).collect::<Vec<_>>();
    assert!(resumed.iter().any(|(a, _)| *a > 0 && *a <= zst.len() / 2), "resumed with Range: {cdn_seen:?}");
    // The resume asked the registry again (an expired redirect gets renewed).
    assert!(reg_seen.iter().filter(|s| s.path.contains("/blobs/")).count() >= 2, "{reg_seen:?}");
}

#[test]
fn a_corrupted_blob_fails_the_flash_with_the_digest_named() {
    let dir = tempfile::tempdir().unwrap();
    let (_, zst) = zstd_image(dir.path());
    let digest = sha256(&zst);
    let mut bad = zst.clone();
    let at = bad.len() - 100;
    bad[at] ^= 0xff;
    let manifest = manifest_for(&zst, &digest);
    let registry = StandIn::start(
        "127.0.0.1",
        Arc::new(move |s: &Seen| {
            if s.path.contains("/manifests/") {
                Reply::Send(200, vec![("Content-Type".into(), OCI_MANIFEST.into())], manifest.clone())
            } else {
                Reply::Send(200, vec![], bad.clone())
            }
        }),
    );
    let out = dir.path().join("out.img");
    let o = run(&["flash", &format!("oras://{}/lab/disk:v1", registry.addr), out.to_str().unwrap(), "--yes"]);
    assert_ne!(code(&o), 0, "{}", stdout(&o));
    let err = stderr(&o);
    assert!(err.contains("digest mismatch") || err.contains("SHA-256"), "{err}");
    assert!(!stdout(&o).contains("verified"), "{}", stdout(&o));
}

#[test]
fn a_registry_that_wants_credentials_says_where_to_put_them() {
    let registry = StandIn::start(
        "127.0.0.1",
        Arc::new(|_: &Seen| {
            Reply::Send(401, vec![("WWW-Authenticate".into(), r#"Basic realm="lab""#.into())], vec![])
        }),
    );
    let dir = tempfile::tempdir().unwrap();
    let o = bty()
        .args(["inspect", &format!("oras://{}/lab/disk:v1", registry.addr)])
        .env("DOCKER_CONFIG", dir.path())
        .output()
        .unwrap();
    assert_ne!(code(&o), 0);
    assert!(
        stderr(&o).contains("wants credentials") && stderr(&o).contains("docker/oras login"),
        "{}",
        stderr(&o)
    );
}
