//! The image catalog the server offers: the current catalog, swapped whole
//! on reload, and how it is listed and re-published (every `src` pointing
//! back at this server).

use std::path::Path;
use std::sync::{Arc, RwLock};

use bty_core::catalog::{Catalog, CatalogEntry, CatalogError, ImageSrc};

/// The current catalog, swapped whole on reload so readers never see a mix.
pub struct CatalogStore {
    current: RwLock<Arc<Catalog>>,
    last_error: RwLock<Option<String>>,
    location: String,
    /// Taken by [`crate::catalog_edit::add`]: one edit of the file at a time.
    pub(crate) edits: tokio::sync::Mutex<()>,
}

impl CatalogStore {
    pub fn new(location: String) -> Self {
        CatalogStore {
            current: RwLock::new(Arc::new(Catalog::empty())),
            last_error: RwLock::new(None),
            location,
            edits: tokio::sync::Mutex::new(()),
        }
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

    /// A local catalog whose file does not exist (yet): an empty catalog.
    pub fn is_missing(&self) -> bool {
        !self.is_remote() && !Path::new(&self.location).exists()
    }

    /// Re-read the catalog. A missing local file is an empty catalog (a fresh
    /// server has none yet); any other problem keeps the previous catalog.
    pub async fn reload(&self) -> Result<Arc<Catalog>, CatalogError> {
        let location = self.location.clone();
        let missing_local = !self.is_remote() && !Path::new(&location).exists();
        let result = if missing_local {
            Ok(Catalog::empty())
        } else {
            tokio::task::spawn_blocking(move || Catalog::load(&location)).await.unwrap_or_else(|e| {
                Err(CatalogError {
                    location: self.location.clone(),
                    problems: vec![bty_core::catalog::CatalogProblem {
                        index: None,
                        name: None,
                        field: "source".into(),
                        reason: format!("loading failed: {e}"),
                    }],
                })
            })
        };
        *self.last_error.write().unwrap_or_else(|e| e.into_inner()) =
            result.as_ref().err().map(|e| e.to_string());
        let loaded = Arc::new(result?);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = loaded.clone();
        Ok(loaded)
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
