//! The image catalog the server offers: the current catalog, swapped whole
//! on reload, and how it is listed and re-published (every `src` pointing
//! back at this server).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use bty_core::catalog::{Catalog, CatalogEntry, CatalogError, Fetched, ImageSrc};

/// The current catalog, swapped whole on reload so readers never see a mix.
pub struct CatalogStore {
    current: RwLock<Arc<Catalog>>,
    last_error: RwLock<Option<String>>,
    location: String,
    /// Where the last good copy of a remote catalog is kept (`None`: not kept).
    copy_dir: Option<PathBuf>,
    remote: Mutex<RemoteStatus>,
    /// Taken by [`crate::catalog_edit::add`]: one edit of the file at a time.
    pub(crate) edits: tokio::sync::Mutex<()>,
}

/// What is known of a remote catalog's fetches.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RemoteStatus {
    /// The `ETag` of the catalog in use (sent back as `If-None-Match`).
    pub etag: Option<String>,
    /// When the catalog in use was fetched (RFC 3339).
    pub fetched_at: Option<String>,
    /// When the server was last asked, whatever it answered.
    pub checked_at: Option<String>,
    /// The catalog in use is the copy kept from an earlier run: the server
    /// has not answered since this one started.
    pub from_copy: bool,
    /// A catalog from the server (or its copy) is in use.
    #[serde(skip)]
    loaded: bool,
}

const COPY_FILE: &str = "catalog.remote.toml";
const COPY_META: &str = "catalog.remote.json";

#[derive(serde::Serialize, serde::Deserialize)]
struct CopyMeta {
    url: String,
    etag: Option<String>,
    fetched_at: String,
}

impl CatalogStore {
    pub fn new(location: String) -> Self {
        CatalogStore {
            current: RwLock::new(Arc::new(Catalog::empty())),
            last_error: RwLock::new(None),
            location,
            copy_dir: None,
            remote: Mutex::new(RemoteStatus::default()),
            edits: tokio::sync::Mutex::new(()),
        }
    }

    /// Keep the last good copy of a remote catalog in `dir`, so a restart
    /// while its server is down still has a catalog.
    pub fn keeping_copy_in(mut self, dir: &Path) -> Self {
        self.copy_dir = Some(dir.to_path_buf());
        self
    }

    pub fn location(&self) -> &str {
        &self.location
    }

    pub fn get(&self) -> Arc<Catalog> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Why the last reload failed (the previous catalog is still served).
    pub fn last_error(&self) -> Option<String> {
        self.last_error.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A catalog fetched over HTTP (loaded in the background at startup).
    pub fn is_remote(&self) -> bool {
        let l = self.location.to_ascii_lowercase();
        l.starts_with("http://") || l.starts_with("https://")
    }

    pub fn remote_status(&self) -> RemoteStatus {
        self.remote.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A local catalog whose file does not exist (yet): an empty catalog.
    pub fn is_missing(&self) -> bool {
        !self.is_remote() && !Path::new(&self.location).exists()
    }

    fn set_error(&self, e: Option<String>) {
        *self.last_error.write().unwrap_or_else(|p| p.into_inner()) = e;
    }

    fn swap(&self, c: Catalog) -> Arc<Catalog> {
        let c = Arc::new(c);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = c.clone();
        c
    }

    /// Re-read the catalog. A missing local file is an empty catalog (a fresh
    /// server has none yet); any other problem keeps the previous catalog.
    /// A remote one is asked with its `ETag` (304 keeps what is in use).
    pub async fn reload(&self) -> Result<Arc<Catalog>, CatalogError> {
        if self.is_remote() {
            return self.fetch().await;
        }
        let location = self.location.clone();
        let result = if !Path::new(&location).exists() {
            Ok(Catalog::empty())
        } else {
            tokio::task::spawn_blocking(move || Catalog::load(&location))
                .await
                .unwrap_or_else(|e| Err(self.failure(format!("loading failed: {e}"))))
        };
        self.set_error(result.as_ref().err().map(|e| e.to_string()));
        Ok(self.swap(result?))
    }

    fn failure(&self, reason: String) -> CatalogError {
        CatalogError {
            location: self.location.clone(),
            problems: vec![bty_core::catalog::CatalogProblem {
                index: None,
                name: None,
                field: "source".into(),
                reason,
            }],
        }
    }

    async fn fetch(&self) -> Result<Arc<Catalog>, CatalogError> {
        let etag = {
            let r = self.remote.lock().unwrap_or_else(|e| e.into_inner());
            r.loaded.then(|| r.etag.clone()).flatten()
        };
        let url = self.location.clone();
        let result = tokio::task::spawn_blocking(move || Catalog::fetch(&url, etag.as_deref()))
            .await
            .unwrap_or_else(|e| Err(self.failure(format!("fetching failed: {e}"))));
        let now = crate::clock::now_rfc3339();
        match result {
            Ok(Fetched::Unchanged) => {
                let mut r = self.remote.lock().unwrap_or_else(|e| e.into_inner());
                r.checked_at = Some(now);
                r.from_copy = false;
                drop(r);
                self.set_error(None);
                Ok(self.get())
            }
            Ok(Fetched::Changed { catalog, text, etag }) => {
                self.keep_copy(&text, etag.as_deref(), &now);
                *self.remote.lock().unwrap_or_else(|e| e.into_inner()) = RemoteStatus {
                    etag,
                    fetched_at: Some(now.clone()),
                    checked_at: Some(now),
                    from_copy: false,
                    loaded: true,
                };
                self.set_error(None);
                Ok(self.swap(catalog))
            }
            Err(e) => {
                let mut r = self.remote.lock().unwrap_or_else(|e| e.into_inner());
                r.checked_at = Some(now);
                let mut why = e.to_string();
                if !r.loaded {
                    match self.read_copy() {
                        Some((catalog, meta)) => {
                            r.etag = meta.etag;
                            r.fetched_at = Some(meta.fetched_at.clone());
                            r.from_copy = true;
                            r.loaded = true;
                            self.swap(catalog);
                            why += &format!("; using the copy fetched at {}", meta.fetched_at);
                        }
                        None => why += "; no earlier copy is kept, so the catalog is empty",
                    }
                } else {
                    why += "; the catalog fetched before stays in use";
                }
                drop(r);
                self.set_error(Some(why));
                Err(e)
            }
        }
    }

    fn keep_copy(&self, text: &str, etag: Option<&str>, now: &str) {
        let Some(dir) = &self.copy_dir else { return };
        let meta =
            CopyMeta { url: self.location.clone(), etag: etag.map(str::to_string), fetched_at: now.into() };
        let write = |name: &str, bytes: &[u8]| -> std::io::Result<()> {
            let tmp = dir.join(format!("{name}.tmp"));
            std::fs::write(&tmp, bytes)?;
            std::fs::rename(&tmp, dir.join(name))
        };
        let r = write(COPY_FILE, text.as_bytes())
            .and_then(|_| write(COPY_META, &serde_json::to_vec(&meta).unwrap_or_default()));
        if let Err(e) = r {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot keep a copy of the remote catalog");
        }
    }

    fn read_copy(&self) -> Option<(Catalog, CopyMeta)> {
        let dir = self.copy_dir.as_ref()?;
        let meta: CopyMeta = serde_json::from_slice(&std::fs::read(dir.join(COPY_META)).ok()?).ok()?;
        if meta.url != self.location {
            return None;
        }
        let text = std::fs::read_to_string(dir.join(COPY_FILE)).ok()?;
        Some((Catalog::parse(&text).ok()?, meta))
    }
}

/// `GET /images` row.
#[derive(Debug, serde::Serialize)]
pub struct ImageInfo<'a> {
    pub name: &'a str,
    /// Where machines fetch it: always this server.
    pub url: String,
    /// The origin, with any `user:password@` blanked (the listing is open).
    pub src: String,
    pub source: &'static str,
    pub sha256: Option<&'a str>,
    pub format: Option<&'static str>,
    pub size_bytes: Option<u64>,
    pub arch: Option<&'a str>,
    pub description: Option<&'a str>,
}

pub fn info<'a>(e: &'a CatalogEntry, base: &str) -> ImageInfo<'a> {
    ImageInfo {
        name: &e.name,
        url: format!("{base}/images/{}", e.name),
        src: redact_userinfo(&e.src),
        source: match e.src() {
            ImageSrc::Url(_) => "http",
            ImageSrc::Oci(_) => "oci",
            ImageSrc::Local(_) => "local",
        },
        sha256: e.sha256.as_deref(),
        format: e.format.map(|f| f.as_str()),
        size_bytes: e.size_bytes,
        arch: e.arch.as_deref(),
        description: e.description.as_deref(),
    }
}

fn redact_userinfo(src: &str) -> String {
    let Some((scheme, rest)) = src.split_once("://") else {
        return src.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => src.to_string(),
    }
}

/// The catalog as this server re-publishes it: every `src` points back here,
/// so a `bty` pointed at this catalog streams through the server too.
pub fn republish(catalog: &Catalog, base: &str) -> String {
    let mut out = catalog.clone();
    for e in &mut out.images {
        e.src = format!("{base}/images/{}", e.name);
    }
    out.to_toml()
}

#[cfg(test)]
mod tests {
    #[test]
    fn credentials_are_not_listed() {
        assert_eq!(super::redact_userinfo("https://u:p@h.example/a@b.img"), "https://***@h.example/a@b.img");
        assert_eq!(super::redact_userinfo("https://h.example/a@b.img"), "https://h.example/a@b.img");
        assert_eq!(super::redact_userinfo("local.img"), "local.img");
    }
}
