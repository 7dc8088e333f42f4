//! `oras://` sources: disk images stored as OCI artifacts in a container
//! registry (OCI distribution spec), as `oras push` and the Python bty's
//! `withcache` publish them.
//!
//! The client is the engine's synchronous `ureq` with hand-written serde types
//! for the small subset needed (manifest, index, token, blob), not the
//! `oci-client` crate: that one needs tokio and reqwest, and the static `bty`
//! in the live environment has no async runtime and must stay small.
//!
//! What it does, in spec order:
//! - `GET /v2/REPO/manifests/REF` accepting OCI and Docker manifests and
//!   indexes (an index is followed to its linux/amd64 or only manifest); a
//!   `@sha256:` reference names the manifest and is checked against it;
//! - on 401, the `WWW-Authenticate` challenge: `Bearer` fetches a token from
//!   the realm (anonymously, or with the registry's Basic credentials),
//!   `Basic` sends the credentials; credentials come from [`Settings`], never
//!   from the reference;
//! - the image layer: not signatures, SBOMs, attestations, Helm charts or
//!   sidecar files; the largest of the rest; its
//!   `org.opencontainers.image.title` names the file (and so the format);
//! - `GET /v2/REPO/blobs/DIGEST`, redirects followed by hand so that
//!   `Authorization` is never sent to another host (blob storage, a CDN);
//! - the stream is hashed as it is read and must match the layer digest
//!   before it ends; a stream that breaks is resumed with `Range` after
//!   resolving again (redirect URLs expire), a bounded number of times.
//!
//! Registries on loopback addresses are spoken to over plain HTTP (as docker
//! does for 127.0.0.0/8); others need to be listed in [`Settings::plain_http`].

use std::collections::HashMap;
use std::io::{self, Read};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::error::{Error, ErrorKind, Result};

const MANIFEST_TYPES: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";
const INDEX_TYPES: [&str; 2] =
    ["application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json"];
const TITLE: &str = "org.opencontainers.image.title";
/// Manifests are small; a registry sending more is not one.
const MAX_MANIFEST: u64 = 4 << 20;
/// Resumes of one broken blob stream before the read fails.
const RESUMES: u32 = 4;
const MAX_REDIRECTS: u32 = 5;

/// `oras://REGISTRY/REPOSITORY:TAG` or `oras://REGISTRY/REPOSITORY@sha256:HEX`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// `host` or `host:port`, as written.
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    /// `sha256:HEX` of the manifest.
    pub digest: Option<String>,
}

impl Reference {
    pub fn parse(s: &str) -> Result<Reference> {
        let bad = |why: &str| {
            Error::usage(format!(
                "{s}: {why}; an OCI image reference is oras://REGISTRY/REPOSITORY:TAG or \
                 oras://REGISTRY/REPOSITORY@sha256:DIGEST"
            ))
        };
        let rest = s
            .get(..7)
            .filter(|p| p.eq_ignore_ascii_case("oras://"))
            .map(|_| &s[7..])
            .ok_or_else(|| bad("not an oras:// reference"))?;
        let (registry, path) = rest.split_once('/').ok_or_else(|| bad("no repository"))?;
        if registry.is_empty()
            || !registry.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        {
            return Err(bad("the registry must be a host name or address, with an optional :port"));
        }
        let (path, digest) = match path.split_once('@') {
            Some((p, d)) => {
                let hex =
                    d.strip_prefix("sha256:").ok_or_else(|| bad("only sha256 digests are supported"))?;
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(bad("the digest must be sha256: and 64 hex digits"));
                }
                (p, Some(format!("sha256:{}", hex.to_ascii_lowercase())))
            }
            None => (path, None),
        };
        // A colon after the last slash starts the tag.
        let (repository, tag) = match path.rfind(':').filter(|&i| !path[i..].contains('/')) {
            Some(i) => (&path[..i], Some(&path[i + 1..])),
            None => (path, None),
        };
        let component_ok = |c: &str| {
            !c.is_empty()
                && c.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                && c.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        };
        if !repository.split('/').all(component_ok) {
            return Err(bad(&format!(
                "`{repository}` is not a repository name (lowercase letters, digits, `._-`, separated by `/`)"
            )));
        }
        let tag = match tag {
            Some(t)
                if t.is_empty()
                    || t.len() > 128
                    || !t.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) =>
            {
                return Err(bad(&format!("`{t}` is not a tag (letters, digits, `._-`, at most 128)")));
            }
            Some(t) => Some(t.to_string()),
            None if digest.is_none() => Some("latest".to_string()),
            None => None,
        };
        Ok(Reference {
            registry: registry.to_ascii_lowercase(),
            repository: repository.to_string(),
            tag,
            digest,
        })
    }

    /// The reference as it should be shown and compared: `oras://` and the
    /// tag and/or digest.
    pub fn canonical(&self) -> String {
        let mut s = format!("oras://{}/{}", self.registry, self.repository);
        if let Some(t) = &self.tag {
            s.push(':');
            s.push_str(t);
        }
        if let Some(d) = &self.digest {
            s.push('@');
            s.push_str(d);
        }
        s
    }

    /// What the manifest endpoint is asked for: the digest when pinned.
    fn manifest_ref(&self) -> &str {
        self.digest.as_deref().or(self.tag.as_deref()).unwrap_or("latest")
    }
}

fn host_of(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    authority.rsplit_once(':').map_or(authority, |(h, _)| h)
}

/// How registries are reached: which may be spoken to over plain HTTP, and
/// the credentials for those that want them.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// `host:port` (or `host`) of registries reached over plain HTTP besides
    /// loopback ones.
    pub plain_http: Vec<String>,
    /// Registry (`host[:port]`) → (user, password).
    pub credentials: HashMap<String, (String, String)>,
}

impl Settings {
    /// The settings a command-line tool uses: `BTY_OCI_PLAIN_HTTP`
    /// (comma-separated `host:port`) and the credentials `docker login` and
    /// `oras login` store (`$DOCKER_CONFIG/config.json`, else
    /// `~/.docker/config.json`, `auths.REGISTRY.auth`).
    pub fn from_environment() -> Settings {
        let plain_http = std::env::var("BTY_OCI_PLAIN_HTTP")
            .unwrap_or_default()
            .split(',')
            .map(|s| s.trim().to_ascii_lowercase())
            .filter(|s| !s.is_empty())
            .collect();
        let config = std::env::var_os("DOCKER_CONFIG")
            .map(std::path::PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".docker")))
            .map(|d| d.join("config.json"));
        let credentials =
            config.and_then(|p| std::fs::read(p).ok()).map(|b| docker_credentials(&b)).unwrap_or_default();
        Settings { plain_http, credentials }
    }

    fn uses_plain_http(&self, registry: &str) -> bool {
        let host = host_of(registry);
        host.eq_ignore_ascii_case("localhost")
            || host.parse::<IpAddr>().is_ok_and(|a| a.is_loopback())
            || self.plain_http.iter().any(|p| p == registry || p == host)
    }
}

/// `auths` of a docker `config.json`, strictly: every entry must carry a
/// decodable `auth` (bty-web's `[oci] credentials_file`).
pub fn parse_docker_config(json: &[u8]) -> std::result::Result<HashMap<String, (String, String)>, String> {
    let v: serde_json::Value = serde_json::from_slice(json).map_err(|e| format!("not JSON: {e}"))?;
    let auths = v.get("auths").and_then(|a| a.as_object()).ok_or(
        r#"no "auths" object; the format is {"auths": {"REGISTRY": {"auth": "BASE64(user:password)"}}}"#,
    )?;
    let found = docker_credentials(json);
    for registry in auths.keys() {
        let key = normal_registry(registry);
        if !found.contains_key(&key) {
            return Err(format!("auths.{registry}: no \"auth\" holding base64 of user:password"));
        }
    }
    Ok(found)
}

fn normal_registry(r: &str) -> String {
    r.trim_start_matches("https://").trim_start_matches("http://").trim_end_matches('/').to_ascii_lowercase()
}

/// `auths` of a docker `config.json`: `{"auths": {"REGISTRY": {"auth": base64("user:pass")}}}`;
/// entries that cannot be used are left out.
pub fn docker_credentials(json: &[u8]) -> HashMap<String, (String, String)> {
    #[derive(Deserialize)]
    struct Config {
        #[serde(default)]
        auths: HashMap<String, Auth>,
    }
    #[derive(Deserialize)]
    struct Auth {
        auth: Option<String>,
    }
    use base64::Engine as _;
    let Ok(c) = serde_json::from_slice::<Config>(json) else { return HashMap::new() };
    c.auths
        .into_iter()
        .filter_map(|(registry, a)| {
            let raw = base64::engine::general_purpose::STANDARD.decode(a.auth?.trim()).ok()?;
            let (user, pass) =
                String::from_utf8(raw).ok()?.split_once(':').map(|(u, p)| (u.into(), p.into()))?;
            Some((normal_registry(&registry), (user, pass)))
        })
        .collect()
}

static SETTINGS: RwLock<Option<Settings>> = RwLock::new(None);

/// Set how every `oras://` source in this process reaches registries (a
/// server sets this from its config; a command-line tool from the
/// environment, which is also the default).
pub fn configure(settings: Settings) {
    *SETTINGS.write().unwrap_or_else(|e| e.into_inner()) = Some(settings);
}

fn settings() -> Settings {
    if let Some(s) = SETTINGS.read().unwrap_or_else(|e| e.into_inner()).as_ref() {
        return s.clone();
    }
    static FROM_ENV: OnceLock<Settings> = OnceLock::new();
    FROM_ENV.get_or_init(Settings::from_environment).clone()
}

/// A blob as a manifest lists it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default)]
    pub annotations: HashMap<String, String>,
    #[serde(default)]
    pub platform: Option<Platform>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
}

impl Descriptor {
    pub fn title(&self) -> Option<&str> {
        self.annotations.get(TITLE).map(String::as_str).filter(|t| !t.is_empty())
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    #[serde(default)]
    media_type: String,
    #[serde(default)]
    layers: Vec<Descriptor>,
    /// Present on an index.
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

/// The manifest resolved and its image layer chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub reference: Reference,
    /// `sha256:HEX` of the manifest that was used.
    pub manifest_digest: String,
    pub layer: Descriptor,
    /// Every layer of the manifest (sidecars are found among them).
    pub layers: Vec<Descriptor>,
}

impl Resolved {
    /// The layer's file name: its title, else the repository's last part.
    pub fn file_name(&self) -> String {
        self.layer
            .title()
            .map(|t| t.rsplit('/').next().unwrap_or(t).to_string())
            .unwrap_or_else(|| self.reference.repository.rsplit('/').next().unwrap_or_default().to_string())
    }

    /// The layer's digest as lowercase hex (the SHA-256 of its bytes).
    pub fn sha256(&self) -> Option<String> {
        crate::digest::parse_sha256_hex(&self.layer.digest)
    }

    /// A layer of the same manifest titled `name` (a sidecar such as
    /// `disk.img.bmap`).
    pub fn layer_titled(&self, name: &str) -> Option<&Descriptor> {
        self.layers.iter().find(|l| l.title() == Some(name))
    }
}

/// Layers that travel with an image but are not one.
fn is_sidecar(d: &Descriptor) -> bool {
    let mt = d.media_type.to_ascii_lowercase();
    const NOT_IMAGES: [&str; 10] = [
        "application/vnd.oci.empty.v1+json",
        "application/vnd.dev.cosign",
        "application/vnd.dev.sigstore",
        "application/vnd.in-toto",
        "application/vnd.cncf.helm",
        "application/vnd.cyclonedx",
        "application/spdx",
        "application/vnd.syft",
        "application/vnd.cncf.notary",
        "application/pgp-signature",
    ];
    if NOT_IMAGES.iter().any(|p| mt.starts_with(p)) || mt.ends_with("+json") || mt == "application/json" {
        return true;
    }
    let title = d.title().unwrap_or_default().to_ascii_lowercase();
    const SIDECARS: [&str; 12] = [
        ".sha256",
        ".sha512",
        ".sha256sum",
        ".md5",
        ".sig",
        ".asc",
        ".gpg",
        ".json",
        ".bmap",
        ".txt",
        ".sbom",
        ".minisig",
    ];
    SIDECARS.iter().any(|s| title.ends_with(s)) || title == "sha256sums" || title == "sha256sums.gpg"
}

/// The image among a manifest's layers: the largest that is not a sidecar.
pub fn pick_image_layer(layers: &[Descriptor]) -> Option<&Descriptor> {
    layers.iter().filter(|l| !is_sidecar(l)).max_by_key(|l| l.size)
}

/// One registry conversation: the reference, its settings and the token it
/// earned (reused for every request of one source).
pub struct Client {
    reference: Reference,
    settings: Settings,
    agent: ureq::Agent,
    authorization: Mutex<Option<String>>,
}

impl Client {
    pub fn new(reference: Reference) -> Client {
        Client::with_settings(reference, settings())
    }

    pub fn with_settings(reference: Reference, settings: Settings) -> Client {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_connect(Some(std::time::Duration::from_secs(15)))
            .timeout_recv_response(Some(std::time::Duration::from_secs(60)))
            .http_status_as_error(false)
            .max_redirects(0)
            .user_agent(format!("bty/{}", crate::VERSION))
            .build()
            .into();
        Client { reference, settings, agent, authorization: Mutex::new(None) }
    }

    fn base(&self) -> String {
        let scheme = if self.settings.uses_plain_http(&self.reference.registry) { "http" } else { "https" };
        format!("{scheme}://{}/v2/{}", self.reference.registry, self.reference.repository)
    }

    fn what(&self) -> String {
        self.reference.canonical()
    }

    /// Fetch the manifest (following an index) and choose the image layer.
    pub fn resolve(&self) -> Result<Resolved> {
        let (body, digest) = self.manifest(self.reference.manifest_ref(), true)?;
        let mut manifest = parse_manifest(&body, &self.what())?;
        let mut manifest_digest = digest;
        if INDEX_TYPES.contains(&manifest.media_type.as_str()) || !manifest.manifests.is_empty() {
            let m = manifest
                .manifests
                .iter()
                .find(|m| m.platform.as_ref().is_some_and(|p| p.os == "linux" && p.architecture == "amd64"))
                .or_else(|| (manifest.manifests.len() == 1).then(|| &manifest.manifests[0]))
                .ok_or_else(|| {
                    Error::failure(format!(
                        "{}: the index lists {} manifests and none for linux/amd64; name one by digest \
                         (oras://{}/{}@sha256:…)",
                        self.what(),
                        manifest.manifests.len(),
                        self.reference.registry,
                        self.reference.repository
                    ))
                })?
                .digest
                .clone();
            let (body, digest) = self.manifest(&m, false)?;
            if digest != m {
                return Err(Error::integrity(format!(
                    "{}: the registry sent manifest {digest} for {m}",
                    self.what()
                )));
            }
            manifest = parse_manifest(&body, &self.what())?;
            manifest_digest = digest;
        }
        let layer = pick_image_layer(&manifest.layers)
            .ok_or_else(|| {
                let listed: Vec<String> = manifest
                    .layers
                    .iter()
                    .map(|l| format!("{} {}", l.media_type, l.title().unwrap_or("(untitled)")))
                    .collect();
                Error::failure(format!(
                    "{}: no image layer in the manifest (layers: {}); push the disk image as a layer \
                     (oras push REGISTRY/REPO:TAG disk.img.zst)",
                    self.what(),
                    if listed.is_empty() { "none".into() } else { listed.join(", ") }
                ))
            })?
            .clone();
        if crate::digest::parse_sha256_hex(&layer.digest).is_none() {
            return Err(Error::failure(format!(
                "{}: the image layer's digest {} is not sha256; bty verifies sha256 only",
                self.what(),
                layer.digest
            )));
        }
        Ok(Resolved { reference: self.reference.clone(), manifest_digest, layer, layers: manifest.layers })
    }

    /// The manifest body and its digest; a pinned digest is checked.
    fn manifest(&self, reference: &str, check_pin: bool) -> Result<(Vec<u8>, String)> {
        let url = format!("{}/manifests/{reference}", self.base());
        let resp = self.get(&url, &[("Accept", MANIFEST_TYPES)])?;
        let status = resp.status().as_u16();
        if status == 404 {
            return Err(Error::failure(format!(
                "{}: the registry has no such manifest (HTTP 404); check the repository and tag",
                self.what()
            )));
        }
        if status != 200 {
            return Err(Error::failure(format!(
                "{}: the registry answered HTTP {status} for the manifest",
                self.what()
            )));
        }
        let mut body = Vec::new();
        resp.into_body()
            .into_reader()
            .take(MAX_MANIFEST + 1)
            .read_to_end(&mut body)
            .map_err(|e| Error::io(format!("{}: cannot read the manifest", self.what()), e))?;
        if body.len() as u64 > MAX_MANIFEST {
            return Err(Error::failure(format!(
                "{}: the manifest is larger than {MAX_MANIFEST} bytes",
                self.what()
            )));
        }
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&body)));
        if check_pin {
            if let Some(pin) = &self.reference.digest {
                if *pin != digest {
                    return Err(Error::integrity(format!(
                        "{}: the registry sent a manifest whose digest is {digest}",
                        self.what()
                    )));
                }
            }
        }
        Ok((body, digest))
    }

    /// Open a blob from `offset`: the response and whether it starts there
    /// (206) or at byte 0 (200, the registry ignored Range).
    /// `last`: the last byte wanted, if not the end.
    pub fn open_blob(&self, digest: &str, offset: u64, last: Option<u64>) -> Result<(ureq::Body, bool)> {
        let url = format!("{}/blobs/{digest}", self.base());
        let range = format!("bytes={offset}-{}", last.map(|l| l.to_string()).unwrap_or_default());
        let ranged = offset > 0 || last.is_some();
        let headers: &[(&str, &str)] = if ranged { &[("Range", &range)] } else { &[] };
        let resp = self.get(&url, headers)?;
        match resp.status().as_u16() {
            200 => Ok((resp.into_body(), offset == 0)),
            206 => Ok((resp.into_body(), true)),
            404 => {
                Err(Error::failure(format!("{}: the registry has no blob {digest} (HTTP 404)", self.what())))
            }
            s => Err(Error::failure(format!(
                "{}: the registry answered HTTP {s} for blob {digest}",
                self.what()
            ))),
        }
    }

    /// GET with authentication and hand-followed redirects.
    fn get(&self, url: &str, headers: &[(&str, &str)]) -> Result<ureq::http::Response<ureq::Body>> {
        let mut url = url.to_string();
        let mut challenged = false;
        let mut hops = 0;
        loop {
            // Credentials go to the registry only; a redirect elsewhere
            // (blob storage, a CDN) is followed without them.
            let to_registry =
                authority_of(&url).is_some_and(|a| a.eq_ignore_ascii_case(&self.reference.registry));
            let mut req = self.agent.get(&url);
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            if to_registry {
                if let Some(a) = self.authorization.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                    req = req.header("Authorization", a);
                }
            }
            let resp = req.call().map_err(|e| self.http_error(&url, e))?;
            let status = resp.status().as_u16();
            if status == 401 && to_registry && !challenged {
                challenged = true;
                let challenge = resp
                    .headers()
                    .get("www-authenticate")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                let auth = self.answer(&challenge)?;
                *self.authorization.lock().unwrap_or_else(|e| e.into_inner()) = Some(auth);
                continue;
            }
            if status == 401 {
                return Err(Error::failure(format!(
                    "{}: the registry refused the credentials (HTTP 401); check them ({})",
                    self.what(),
                    self.where_credentials()
                )));
            }
            if status == 403 {
                return Err(Error::failure(format!(
                    "{}: access denied (HTTP 403); the credentials may lack pull permission ({})",
                    self.what(),
                    self.where_credentials()
                )));
            }
            if matches!(status, 301 | 302 | 303 | 307 | 308) {
                hops += 1;
                let location =
                    resp.headers().get("location").and_then(|v| v.to_str().ok()).ok_or_else(|| {
                        Error::failure(format!("{}: a redirect without a Location from {url}", self.what()))
                    })?;
                if hops > MAX_REDIRECTS {
                    return Err(Error::failure(format!(
                        "{}: more than {MAX_REDIRECTS} redirects",
                        self.what()
                    )));
                }
                url = join_url(&url, location);
                continue;
            }
            return Ok(resp);
        }
    }

    fn where_credentials(&self) -> &'static str {
        "bty-web: [oci] credentials; the command line: docker/oras login, or $DOCKER_CONFIG/config.json"
    }

    /// The `Authorization` value answering a `WWW-Authenticate` challenge.
    fn answer(&self, challenge: &str) -> Result<String> {
        let creds = self.settings.credentials.get(&self.reference.registry).or_else(|| {
            // docker's config names Docker Hub by its index URL.
            (self.reference.registry == "docker.io" || self.reference.registry == "registry-1.docker.io")
                .then(|| self.settings.credentials.get("index.docker.io/v1"))
                .flatten()
        });
        let basic = creds.map(|(u, p)| {
            use base64::Engine as _;
            format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}")))
        });
        let (scheme, params) = parse_challenge(challenge);
        match scheme.to_ascii_lowercase().as_str() {
            "bearer" => {
                let realm = params.get("realm").ok_or_else(|| {
                    Error::failure(format!("{}: the registry's Bearer challenge names no realm", self.what()))
                })?;
                let scope = params
                    .get("scope")
                    .cloned()
                    .unwrap_or_else(|| format!("repository:{}:pull", self.reference.repository));
                let mut req = self.agent.get(realm).query("scope", &scope);
                if let Some(service) = params.get("service") {
                    req = req.query("service", service);
                }
                if let Some(b) = &basic {
                    req = req.header("Authorization", b);
                }
                let resp = req.call().map_err(|e| self.http_error(realm, e))?;
                let status = resp.status().as_u16();
                if status != 200 {
                    return Err(Error::failure(format!(
                        "{}: the token service {realm} answered HTTP {status}{}",
                        self.what(),
                        if basic.is_none() {
                            format!(" to an anonymous request; the repository may need credentials ({})", self.where_credentials())
                        } else {
                            String::new()
                        }
                    )));
                }
                #[derive(Deserialize)]
                struct Token {
                    token: Option<String>,
                    access_token: Option<String>,
                }
                let mut body = Vec::new();
                resp.into_body()
                    .into_reader()
                    .take(1 << 20)
                    .read_to_end(&mut body)
                    .map_err(|e| Error::io(format!("{}: cannot read the token", self.what()), e))?;
                let t: Token = serde_json::from_slice(&body).map_err(|e| {
                    Error::failure(format!("{}: the token service {realm} sent no JSON token: {e}", self.what()))
                })?;
                let token = t.token.or(t.access_token).filter(|t| !t.is_empty()).ok_or_else(|| {
                    Error::failure(format!("{}: the token service {realm} sent an empty token", self.what()))
                })?;
                Ok(format!("Bearer {token}"))
            }
            "basic" => basic.ok_or_else(|| {
                Error::failure(format!("{}: the registry wants credentials ({})", self.what(), self.where_credentials()))
            }),
            _ => Err(Error::failure(format!(
                "{}: the registry answered 401 with an authentication scheme bty does not speak: `{challenge}`",
                self.what()
            ))),
        }
    }

    fn http_error(&self, url: &str, e: ureq::Error) -> Error {
        let cause = match &e {
            ureq::Error::Io(io) => io.to_string(),
            ureq::Error::Timeout(t) => format!("timed out ({t})"),
            ureq::Error::HostNotFound => "host not found (check the name, or DNS)".to_string(),
            ureq::Error::ConnectionFailed => "cannot connect".to_string(),
            other => other.to_string(),
        };
        let hint = if url.starts_with("https://") && matches!(e, ureq::Error::Tls(_) | ureq::Error::Rustls(_))
        {
            format!(
                " (a registry without TLS must be listed: [oci] plain_http = [\"{}\"], or BTY_OCI_PLAIN_HTTP)",
                self.reference.registry
            )
        } else {
            String::new()
        };
        Error::new(ErrorKind::Failure, format!("{}: cannot fetch {url}: {cause}{hint}", self.what()))
    }
}

fn parse_manifest(body: &[u8], what: &str) -> Result<Manifest> {
    serde_json::from_slice(body).map_err(|e| {
        Error::failure(format!("{what}: the registry sent a manifest that is not valid JSON: {e}"))
    })
}

/// `Bearer realm="…",service="…",scope="…"` → ("Bearer", {realm, service, scope}).
pub fn parse_challenge(header: &str) -> (String, HashMap<String, String>) {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let mut params = HashMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=' && *c != ',')).collect();
        if key.is_empty() {
            break;
        }
        if chars.next() != Some('=') {
            continue;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value =
                std::iter::from_fn(|| chars.next_if(|c| *c != ',')).collect::<String>().trim().to_string();
        }
        params.insert(key.trim().to_ascii_lowercase(), value);
    }
    (scheme.to_string(), params)
}

fn authority_of(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    Some(rest.split(['/', '?', '#']).next().unwrap_or(rest))
}

/// A redirect's Location against the URL it came from.
fn join_url(base: &str, location: &str) -> String {
    if location.contains("://") {
        return location.to_string();
    }
    let (scheme, rest) = base.split_once("://").unwrap_or(("http", base));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    if let Some(l) = location.strip_prefix("//") {
        return format!("{scheme}://{l}");
    }
    if location.starts_with('/') {
        return format!("{scheme}://{authority}{location}");
    }
    let path = rest.split(['?', '#']).next().unwrap_or(rest);
    let dir = path.rsplit_once('/').map_or(path, |(d, _)| d);
    format!("{scheme}://{dir}/{location}")
}

/// A layer's bytes, hashed as they arrive and checked against its digest
/// before the last byte is handed out; a broken stream resumes where it broke.
pub struct BlobReader {
    client: Arc<Client>,
    layer: Descriptor,
    body: Option<Box<dyn Read + Send>>,
    pos: u64,
    hasher: Sha256,
    resumes: u32,
}

impl BlobReader {
    pub fn open(client: Arc<Client>, layer: Descriptor) -> Result<BlobReader> {
        let (body, _) = client.open_blob(&layer.digest, 0, None)?;
        Ok(BlobReader {
            client,
            layer,
            body: Some(Box::new(body.into_reader())),
            pos: 0,
            hasher: Sha256::new(),
            resumes: 0,
        })
    }

    fn what(&self) -> String {
        format!("{} (layer {})", self.client.what(), self.layer.digest)
    }

    /// Start over at `self.pos` after the stream broke: a fresh request
    /// (the registry is asked again, so an expired redirect is renewed).
    fn resume(&mut self, cause: &io::Error) -> io::Result<()> {
        self.resumes += 1;
        if self.resumes > RESUMES {
            return Err(io::Error::new(
                cause.kind(),
                format!(
                    "{}: the download broke {RESUMES} times, last at byte {}: {cause}",
                    self.what(),
                    self.pos
                ),
            ));
        }
        tracing::warn!("{}: resuming at byte {} after: {cause}", self.what(), self.pos);
        std::thread::sleep(std::time::Duration::from_millis(200 << self.resumes.min(4)));
        let (body, from_offset) =
            self.client.open_blob(&self.layer.digest, self.pos, None).map_err(Error::into_io)?;
        let mut body: Box<dyn Read + Send> = Box::new(body.into_reader());
        if !from_offset {
            // Range ignored: skip what was read (not hashed again; a blob that
            // changed shows up as a digest mismatch at the end).
            let skipped = io::copy(&mut (&mut body).take(self.pos), &mut io::sink())?;
            if skipped < self.pos {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{}: shorter on resume", self.what()),
                ));
            }
        }
        self.body = Some(body);
        Ok(())
    }
}

impl Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.layer.size - self.pos;
        if left == 0 {
            return Ok(0);
        }
        let cap = buf.len().min(left.min(usize::MAX as u64) as usize);
        loop {
            let Some(body) = self.body.as_mut() else {
                return Err(io::Error::other(format!("{}: the download failed earlier", self.what())));
            };
            let r = match body.read(&mut buf[..cap]) {
                Ok(0) => Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("ended after {} of {} bytes", self.pos, self.layer.size),
                )),
                other => other,
            };
            match r {
                Ok(n) => {
                    self.hasher.update(&buf[..n]);
                    self.pos += n as u64;
                    if self.pos == self.layer.size {
                        let got = format!("sha256:{}", hex::encode(self.hasher.clone().finalize()));
                        if got != self.layer.digest {
                            self.body = None;
                            return Err(io::Error::new(
                                io::ErrorKind::InvalidData,
                                format!(
                                    "{}: digest mismatch: the bytes hash to {got}; the registry holds a \
                                     corrupted blob, or something between rewrote it",
                                    self.what()
                                ),
                            ));
                        }
                    }
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.body = None;
                    self.resume(&e)?;
                }
            }
        }
    }
}

/// An `oras://` source: the reference, resolved on first use and then
/// remembered, so that format detection, length and opening agree on one
/// manifest.
pub struct OciSource {
    pub reference: Reference,
    /// The layer titled so, instead of the image layer (sidecars).
    pub title: Option<String>,
    client: OnceLock<Arc<Client>>,
    resolved: OnceLock<std::result::Result<Resolved, (ErrorKind, String)>>,
}

impl std::fmt::Debug for OciSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OciSource").field("reference", &self.reference).field("title", &self.title).finish()
    }
}

impl PartialEq for OciSource {
    fn eq(&self, other: &Self) -> bool {
        self.reference == other.reference && self.title == other.title
    }
}
impl Eq for OciSource {}

impl OciSource {
    pub fn new(reference: Reference, title: Option<String>) -> OciSource {
        OciSource { reference, title, client: OnceLock::new(), resolved: OnceLock::new() }
    }

    fn client(&self) -> Arc<Client> {
        self.client.get_or_init(|| Arc::new(Client::new(self.reference.clone()))).clone()
    }

    pub fn resolved(&self) -> Result<&Resolved> {
        self.resolved
            .get_or_init(|| self.client().resolve().map_err(|e| (e.kind(), e.message().to_string())))
            .as_ref()
            .map_err(|(k, m)| Error::new(*k, m.clone()))
    }

    /// The layer this source reads: the image, or the sidecar it names.
    /// `Ok(None)`: no layer has that title.
    pub fn layer(&self) -> Result<Option<Descriptor>> {
        let r = self.resolved()?;
        Ok(match &self.title {
            None => Some(r.layer.clone()),
            Some(t) => r.layer_titled(t).cloned(),
        })
    }

    pub fn open(&self) -> Result<(BlobReader, u64)> {
        let layer = self.layer()?.ok_or_else(|| {
            Error::failure(format!(
                "{}: no layer titled {}",
                self.reference.canonical(),
                self.title.as_deref().unwrap_or_default()
            ))
        })?;
        let size = layer.size;
        Ok((BlobReader::open(self.client(), layer)?, size))
    }

    /// The layer's bytes from `offset` to its end. From 0 the stream is
    /// checked against the digest (and resumes when it breaks); from
    /// elsewhere it cannot be, and is the registry's bytes as sent.
    pub fn open_at(&self, offset: u64) -> Result<Box<dyn Read + Send>> {
        if offset == 0 {
            return Ok(Box::new(self.open()?.0));
        }
        let Some(layer) = self.layer()? else { return Ok(Box::new(io::empty())) };
        let (body, from_offset) = self.client().open_blob(&layer.digest, offset, None)?;
        let mut r: Box<dyn Read + Send> = Box::new(body.into_reader());
        if !from_offset {
            io::copy(&mut (&mut r).take(offset), &mut io::sink())
                .map_err(|e| Error::io(format!("cannot read {}", self.reference.canonical()), e))?;
        }
        Ok(Box::new(r.take(layer.size.saturating_sub(offset))))
    }

    /// `n` bytes from `offset` (for format probes and partition tables).
    pub fn read_at(&self, offset: u64, n: usize) -> Result<Vec<u8>> {
        let Some(layer) = self.layer()? else { return Ok(Vec::new()) };
        if offset >= layer.size || n == 0 {
            return Ok(Vec::new());
        }
        let mut out = Vec::with_capacity(n.min((layer.size - offset) as usize));
        let last = (offset + n as u64).min(layer.size) - 1;
        let (body, from_offset) = self.client().open_blob(&layer.digest, offset, Some(last))?;
        let mut r: Box<dyn Read + Send> = Box::new(body.into_reader());
        if !from_offset {
            io::copy(&mut (&mut r).take(offset), &mut io::sink())
                .map_err(|e| Error::io(format!("cannot read {}", self.reference.canonical()), e))?;
        }
        r.take(n as u64)
            .read_to_end(&mut out)
            .map_err(|e| Error::io(format!("cannot read {}", self.reference.canonical()), e))?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        let r = Reference::parse("oras://ghcr.io/acme/images/debian:12.5").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("ghcr.io", "acme/images/debian", Some("12.5"))
        );
        let r = Reference::parse("oras://127.0.0.1:5000/disk").unwrap();
        assert_eq!((r.registry.as_str(), r.tag.as_deref()), ("127.0.0.1:5000", Some("latest")));
        let d = "a".repeat(64);
        let r = Reference::parse(&format!("ORAS://reg:5000/x/y@sha256:{}", d.to_uppercase())).unwrap();
        assert_eq!(r.digest.as_deref(), Some(format!("sha256:{d}").as_str()));
        assert_eq!(r.tag, None);
        assert_eq!(r.canonical(), format!("oras://reg:5000/x/y@sha256:{d}"));
        for bad in [
            "oras://",
            "oras://reg",
            "oras://reg/",
            "oras://reg/UPPER:1",
            "oras://reg/x:",
            "oras://reg/x@md5:00",
            "oras://reg/x@sha256:abc",
            "oras://re g/x:1",
            "oras://reg/x:t@g",
        ] {
            let e = Reference::parse(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Usage, "{bad}");
            assert!(e.to_string().contains("oras://REGISTRY/REPOSITORY:TAG"), "{e}");
        }
    }

    #[test]
    fn challenges() {
        let (s, p) = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(s, "Bearer");
        assert_eq!(p["realm"], "https://auth.example/token");
        assert_eq!(p["scope"], "repository:a/b:pull,push");
        assert_eq!(p["service"], "registry.example");
        let (s, p) = parse_challenge(r#"Basic realm="Registry Realm""#);
        assert_eq!((s.as_str(), p["realm"].as_str()), ("Basic", "Registry Realm"));
    }

    #[test]
    fn layer_choice_skips_what_is_not_an_image() {
        let d = |mt: &str, title: &str, size| Descriptor {
            media_type: mt.into(),
            digest: format!("sha256:{}", "0".repeat(64)),
            size,
            annotations: [(TITLE.to_string(), title.to_string())].into(),
            platform: None,
        };
        let layers = vec![
            d("application/vnd.dev.cosign.simplesigning.v1+json", "sig", 1 << 30),
            d("application/vnd.oci.image.layer.v1.tar", "disk.img.sha256", 80),
            d("application/vnd.oci.image.layer.v1.tar", "disk.img.bmap", 4000),
            d("application/spdx+json", "sbom", 1 << 31),
            d("application/vnd.oci.image.layer.v1.tar+zstd", "disk.img.zst", 1 << 20),
            d("application/octet-stream", "README.txt", 1 << 21),
        ];
        assert_eq!(pick_image_layer(&layers).unwrap().title(), Some("disk.img.zst"));
    }

    #[test]
    fn plain_http_and_urls() {
        let s = Settings { plain_http: vec!["reg.lan:5000".into()], ..Settings::default() };
        assert!(
            s.uses_plain_http("127.0.0.1:5000")
                && s.uses_plain_http("localhost")
                && s.uses_plain_http("[::1]:5000")
        );
        assert!(
            s.uses_plain_http("reg.lan:5000")
                && !s.uses_plain_http("reg.lan:5001")
                && !s.uses_plain_http("ghcr.io")
        );
        assert_eq!(join_url("http://a:1/v2/x/blobs/d", "/b?sig=1"), "http://a:1/b?sig=1");
        assert_eq!(join_url("http://a:1/v2/x/blobs/d", "https://cdn/b"), "https://cdn/b");
        assert_eq!(join_url("http://a:1/v2/x/blobs/d", "e"), "http://a:1/v2/x/blobs/e");
        assert_eq!(authority_of("http://127.0.0.2:80/x"), Some("127.0.0.2:80"));
    }

    #[test]
    fn docker_config_credentials() {
        let c = docker_credentials(br#"{"auths":{"https://reg.lan:5000/":{"auth":"dXNlcjpwYSQkOndvcmQ="}}}"#);
        assert_eq!(c["reg.lan:5000"], ("user".to_string(), "pa$$:word".to_string()));
        assert!(docker_credentials(b"not json").is_empty());
    }
}
