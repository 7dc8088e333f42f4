//! Where the image list comes from: the local image directory, an optional
//! catalog, and in server mode `GET /images` of bty-web.

use std::path::{Path, PathBuf};

use bty_core::catalog::{Catalog, CatalogEntry, ImageSrc};
use bty_core::format::{self, ImageFormat};
use bty_core::source::Source;

use crate::app::{ImageItem, Origin};

/// Where to look, as given on the command line.
#[derive(Debug, Clone, Default)]
pub struct ImageSources {
    pub root: PathBuf,
    pub catalog: Option<String>,
    /// bty-web base URL (server mode).
    pub server: Option<String>,
}

/// The listing and what the operator should know about how it was made.
pub struct Listing {
    pub images: Vec<ImageItem>,
    pub notices: Vec<String>,
}

/// Largest `GET /images` answer accepted; a catalog listing is small.
const MAX_LISTING_BYTES: u64 = 8 * 1024 * 1024;

impl ImageSources {
    /// Server images first (that is what the machine was booted for), then
    /// catalog entries, then files in the image directory. A source that
    /// fails becomes a notice; the others are still listed.
    pub fn load(&self) -> Listing {
        let mut images = Vec::new();
        let mut notices = Vec::new();
        if let Some(server) = &self.server {
            match server_images(server) {
                Ok(list) => images.extend(list),
                Err(e) => notices.push(format!(
                    "server unreachable: {e}. Local images are still listed; press r to retry."
                )),
            }
        }
        if let Some(cat) = &self.catalog {
            match Catalog::load(cat) {
                Ok(c) => images.extend(c.images.iter().map(|e| catalog_item(e, &self.root))),
                Err(e) => notices.push(e.to_string().lines().next().unwrap_or_default().to_string()),
            }
        }
        match local_images(&self.root) {
            Ok(list) => images.extend(list),
            // A live environment without local images is normal in server mode.
            Err(e) if self.server.is_none() => notices.push(e),
            Err(_) => {}
        }
        Listing { images, notices }
    }
}

/// Image files directly in `root`, by name. Files whose bytes or names are not
/// a recognised image format (sidecars, notes, tarballs) are left out.
pub fn local_images(root: &Path) -> Result<Vec<ImageItem>, String> {
    let entries = std::fs::read_dir(root)
        .map_err(|e| format!("cannot read the image directory {}: {e}", root.display()))?;
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::metadata(&path) else { continue };
        if !meta.is_file() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        if format::from_name(&name).is_none() {
            continue;
        }
        let source = Source::File(path.clone());
        let Ok(head) = source.read_at(0, format::MAGIC_LEN) else { continue };
        let Ok(fmt) = format::detect(&head, &name) else { continue };
        // The engine's own probe: the size a flash will write, or none when
        // only decoding everything would tell (gzip, bzip2, damaged files).
        let disk_size = bty_core::inspect::virtual_size(&source, fmt, &head).ok().and_then(|(v, _)| v);
        out.push(ImageItem {
            arch: format::arch_hint(&name).map(str::to_string),
            name,
            format: Some(fmt),
            disk_size,
            download_size: Some(meta.len()),
            origin: Origin::Local,
            location: path.display().to_string(),
            sha256: None,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn catalog_item(e: &CatalogEntry, root: &Path) -> ImageItem {
    let location = match e.src() {
        ImageSrc::Url(u) | ImageSrc::Oci(u) => u.to_string(),
        // Catalog paths are relative to the image directory, as on the server.
        ImageSrc::Local(rel) => root.join(rel).display().to_string(),
    };
    ImageItem {
        name: e.name.clone(),
        format: e.format.or_else(|| format::from_name(&e.src)),
        arch: e.arch.clone().or_else(|| format::arch_hint(&e.name).map(str::to_string)),
        disk_size: raw_size(e.format.or_else(|| format::from_name(&e.src)), e.size_bytes),
        download_size: e.size_bytes,
        origin: Origin::Catalog,
        location,
        sha256: e.sha256.clone(),
    }
}

/// A `GET /images` row; unknown fields are ignored so a newer server works.
#[derive(serde::Deserialize)]
struct ServerImage {
    name: String,
    #[serde(default)]
    sha256: Option<String>,
    /// The origin, for the format when the catalog does not declare one.
    #[serde(default)]
    src: Option<String>,
    #[serde(default)]
    format: Option<String>,
    #[serde(default)]
    size_bytes: Option<u64>,
    #[serde(default)]
    arch: Option<String>,
}

/// The server's catalog. Bytes are always fetched from this server
/// (`{server}/images/{name}`), which streams or proxies them.
pub fn server_images(server: &str) -> Result<Vec<ImageItem>, String> {
    let base = server_base(server);
    let url = format!("{base}/images");
    let src = Source::parse(&url).map_err(|e| e.to_string())?;
    let body = src
        .read_small(MAX_LISTING_BYTES)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{url} does not exist (is this a bty-web server?)"))?;
    let rows: Vec<ServerImage> =
        serde_json::from_slice(&body).map_err(|e| format!("{url} did not answer an image list: {e}"))?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let format = r
                .format
                .as_deref()
                .and_then(ImageFormat::parse)
                .or_else(|| r.src.as_deref().and_then(format::from_name));
            ImageItem {
                location: format!("{base}/images/{}", r.name),
                format,
                arch: r.arch.or_else(|| format::arch_hint(&r.name).map(str::to_string)),
                name: r.name,
                disk_size: raw_size(format, r.size_bytes),
                download_size: r.size_bytes,
                origin: Origin::Server,
                sha256: r.sha256,
            }
        })
        .collect())
}

/// A catalog's `size_bytes` is the published file's; only for a raw image
/// is that also the size on disk.
fn raw_size(format: Option<ImageFormat>, size: Option<u64>) -> Option<u64> {
    size.filter(|_| format == Some(ImageFormat::Raw))
}

/// `host:port` → `http://host:port`, no trailing slash (as `ServerClient` does).
pub fn server_base(server: &str) -> String {
    let base = server.trim().trim_end_matches('/');
    if base.contains("://") {
        base.to_string()
    } else {
        format!("http://{base}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_only_images_sorted() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b-x86_64.img"), vec![0u8; 4096]).unwrap();
        std::fs::write(dir.path().join("b-x86_64.img.sha256"), "00").unwrap();
        std::fs::write(dir.path().join("README"), "hello").unwrap();
        // One-shot compression records the content size in the frame header.
        let zst = zstd::bulk::compress(&[1u8; 1000], 3).unwrap();
        std::fs::write(dir.path().join("a.img.zst"), zst).unwrap();
        std::fs::create_dir(dir.path().join("sub.img")).unwrap();
        let list = local_images(dir.path()).unwrap();
        let names: Vec<_> = list.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["a.img.zst", "b-x86_64.img"]);
        assert_eq!(list[0].format, Some(ImageFormat::Zstd));
        assert_eq!(list[1].arch.as_deref(), Some("x86_64"));
        assert_eq!((list[1].disk_size, list[1].download_size), (Some(4096), Some(4096)));
        assert_eq!(list[0].disk_size, Some(1000), "the zstd frame says what it expands to");
        assert!(list[0].download_size < Some(1000));
    }

    #[test]
    fn missing_directory_is_a_notice_in_local_mode_only() {
        let s = ImageSources { root: "/nonexistent/bty".into(), ..Default::default() };
        let l = s.load();
        assert!(l.images.is_empty());
        assert!(l.notices[0].contains("/nonexistent/bty"));
    }

    #[test]
    fn unreachable_server_is_a_notice() {
        // Port 9 on loopback: nothing listens, the connection is refused at once.
        let s = ImageSources {
            root: "/nonexistent".into(),
            server: Some("127.0.0.1:9".into()),
            ..Default::default()
        };
        let l = s.load();
        assert_eq!(l.notices.len(), 1);
        assert!(l.notices[0].starts_with("server unreachable"), "{:?}", l.notices);
    }

    #[test]
    fn catalog_paths_are_relative_to_the_image_root() {
        let cat = Catalog::parse(
            "version = 1\n[[images]]\nname = \"deb\"\nsrc = \"deb.img.xz\"\n\
             [[images]]\nname = \"web\"\nsrc = \"https://example.org/w.img.zst\"\n",
        )
        .unwrap();
        let items: Vec<_> = cat.images.iter().map(|e| catalog_item(e, Path::new("/imgs"))).collect();
        assert_eq!(items[0].location, "/imgs/deb.img.xz");
        assert_eq!(items[0].format, Some(ImageFormat::Xz));
        assert_eq!(items[1].location, "https://example.org/w.img.zst");
        assert_eq!(server_base("srv:8080/"), "http://srv:8080");
    }
}
