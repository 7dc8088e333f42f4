//! OCI registries for the `oras://` tests: Debian's `docker-registry`
//! (distribution, the registry most sites run) on loopback with artifacts
//! pushed per the distribution spec, and a stand-in registry that can do what
//! a real one is not made to (a bearer-token service, a redirect to another
//! host, a stream cut short, a corrupted blob).
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const EMPTY_CONFIG: &str = "application/vnd.oci.empty.v1+json";

pub fn sha256(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

/// `docker-registry serve` on a free loopback port with storage in a
/// temporary directory; killed on drop.
pub struct Registry {
    child: Child,
    pub addr: String,
    _dir: tempfile::TempDir,
}

impl Registry {
    /// `None` (with the reason printed) when the package is not installed.
    pub fn start() -> Registry {
        let bin = "/usr/bin/docker-registry";
        assert!(
            std::path::Path::new(bin).exists(),
            "docker-registry is needed for this test: checks/deps.sh installs it (Debian package docker-registry)"
        );
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = format!("127.0.0.1:{port}");
        let cfg = dir.path().join("config.yml");
        std::fs::write(
            &cfg,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: {addr}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new(bin)
            .arg("serve")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start docker-registry");
        let r = Registry { child, addr, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while ureq::get(&format!("http://{}/v2/", r.addr)).call().is_err() {
            assert!(Instant::now() < deadline, "docker-registry did not come up on {}", r.addr);
            std::thread::sleep(Duration::from_millis(50));
        }
        r
    }

    /// Upload one blob (POST then PUT with the digest, the spec's monolithic upload).
    pub fn push_blob(&self, repo: &str, bytes: &[u8]) -> String {
        let digest = sha256(bytes);
        let agent: ureq::Agent =
            ureq::Agent::config_builder().http_status_as_error(false).max_redirects(0).build().into();
        let r = agent.post(&format!("http://{}/v2/{repo}/blobs/uploads/", self.addr)).send_empty().unwrap();
        assert_eq!(r.status().as_u16(), 202, "blob upload start");
        let loc = r.headers().get("location").unwrap().to_str().unwrap().to_string();
        let loc = if loc.starts_with('/') { format!("http://{}{loc}", self.addr) } else { loc };
        let sep = if loc.contains('?') { '&' } else { '?' };
        let r = agent
            .put(&format!("{loc}{sep}digest={digest}"))
            .header("Content-Type", "application/octet-stream")
            .send(bytes)
            .unwrap();
        assert_eq!(r.status().as_u16(), 201, "blob upload end");
        digest
    }

    /// Push an artifact as `oras push` does: an empty config and one layer
    /// per `(media type, title, bytes)`. Returns the manifest's digest.
    pub fn push(&self, repo: &str, tag: &str, layers: &[(&str, &str, &[u8])]) -> String {
        let config = self.push_blob(repo, b"{}");
        let layers: Vec<serde_json::Value> = layers
            .iter()
            .map(|(mt, title, bytes)| {
                let d = self.push_blob(repo, bytes);
                serde_json::json!({"mediaType": mt, "digest": d, "size": bytes.len(),
                    "annotations": {"org.opencontainers.image.title": title}})
            })
            .collect();
        let manifest = artifact_manifest(&config, &layers);
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let r = agent
            .put(&format!("http://{}/v2/{repo}/manifests/{tag}", self.addr))
            .header("Content-Type", OCI_MANIFEST)
            .send(&manifest[..])
            .unwrap();
        assert_eq!(r.status().as_u16(), 201, "manifest PUT");
        sha256(&manifest)
    }
}

pub fn artifact_manifest(config_digest: &str, layers: &[serde_json::Value]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.bty.disk-image",
        "config": {"mediaType": EMPTY_CONFIG, "digest": config_digest, "size": 2},
        "layers": layers,
    }))
    .unwrap()
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A request as the stand-in saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub headers: HashMap<String, String>,
}

/// What the stand-in does with a request.
pub enum Reply {
    /// Status, headers, body.
    Send(u16, Vec<(String, String)>, Vec<u8>),
    /// As `Send`, announcing the whole length, but closing after `cut` bytes.
    Cut(u16, Vec<(String, String)>, Vec<u8>, usize),
}

pub type Handler = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;

/// An HTTP/1.1 server on `ip` answering one request per connection with
/// `handler`; every request is recorded.
pub struct StandIn {
    pub addr: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl StandIn {
    pub fn start(ip: &str, handler: Handler) -> StandIn {
        let listener = TcpListener::bind(format!("{ip}:0")).expect("bind the stand-in (loopback)");
        let addr = listener.local_addr().unwrap().to_string();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (handler, log) = (handler.clone(), log.clone());
                std::thread::spawn(move || serve_one(conn, &*handler, &log));
            }
        });
        StandIn { addr, seen }
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn serve_one(mut conn: TcpStream, handler: &(dyn Fn(&Seen) -> Reply + Send + Sync), log: &Mutex<Vec<Seen>>) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    if let Some(n) = headers.get("content-length").and_then(|v| v.parse::<usize>().ok()) {
        let mut body = vec![0; n];
        let _ = reader.read_exact(&mut body);
    }
    let seen = Seen { path, headers };
    log.lock().unwrap().push(seen.clone());
    let (status, hs, body, cut) = match handler(&seen) {
        Reply::Send(s, h, b) => {
            let n = b.len();
            (s, h, b, n)
        }
        Reply::Cut(s, h, b, cut) => (s, h, b, cut),
    };
    let mut head = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n", body.len());
    for (k, v) in hs {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = conn.write_all(head.as_bytes());
    let _ = conn.write_all(&body[..cut.min(body.len())]);
    let _ = conn.flush();
}

/// `bytes=A-` or `bytes=A-B` of a request, as (A, B inclusive) for `len` bytes.
pub fn requested_range(seen: &Seen, len: usize) -> Option<(usize, usize)> {
    let v = seen.headers.get("range")?.strip_prefix("bytes=")?;
    let (a, b) = v.split_once('-')?;
    let a: usize = a.parse().ok()?;
    let b: usize = if b.is_empty() { len - 1 } else { b.parse::<usize>().ok()?.min(len - 1) };
    Some((a, b))
}
