//! Adding images to a local `catalog.toml` without editing it by hand: the
//! rules for a new entry (its name as the catalog validates names, no
//! duplicates, an http(s) URL with its SHA-256), the rewrite of the file
//! (the other entries and comments kept; written to a temporary file, synced
//! and renamed, so a reader sees the old file or the new one), and uploads
//! streamed into the images directory with their SHA-256, size and format
//! computed on the way. Nothing here knows about HTTP; the API and the UI
//! share it.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bty_core::catalog::{self, Catalog};
use bty_core::format::{self, ImageFormat};
use bty_core::source::{parse_sha256_hex, Source};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::catalog::CatalogStore;

/// Why an entry was not added. Nothing was changed in any case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EditError {
    /// A field of the request is wrong.
    Field { field: &'static str, reason: String },
    /// The name is taken, in the catalog or in the images directory.
    Duplicate(String),
    /// The catalog cannot be edited from here (fetched over HTTP, or a file
    /// with problems the operator must fix first).
    NotEditable(String),
    /// The upload is larger than `[limits] max_upload_bytes`.
    TooLarge(u64),
    /// Reading or writing a file failed.
    Io(String),
}

impl fmt::Display for EditError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EditError::Field { field, reason } => write!(f, "{field}: {reason}"),
            EditError::Duplicate(m) | EditError::NotEditable(m) | EditError::Io(m) => f.write_str(m),
            EditError::TooLarge(max) => write!(
                f,
                "the upload is larger than {max} bytes, the limit set by [limits] max_upload_bytes \
                 (BTY_LIMITS_MAX_UPLOAD_BYTES)"
            ),
        }
    }
}

impl std::error::Error for EditError {}

fn field(field: &'static str, reason: impl Into<String>) -> EditError {
    EditError::Field { field, reason: reason.into() }
}

/// A new `[[images]]` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewEntry {
    pub name: String,
    /// An http(s) URL, or a file name in the images directory.
    pub src: String,
    pub sha256: Option<String>,
    pub format: Option<ImageFormat>,
    pub size_bytes: Option<u64>,
    pub description: Option<String>,
}

/// The name, as every catalog name is checked ([`catalog::valid_image_name`]).
pub fn check_name(name: &str) -> Result<(), EditError> {
    catalog::valid_image_name(name).map_err(|r| field("name", r))
}

/// An `http://` or `https://` URL with a host, or an `oras://` reference.
pub fn check_url(url: &str) -> Result<(), EditError> {
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    if url.is_empty() {
        return Err(field("url", "is required"));
    }
    if !(lower.starts_with("http://") || lower.starts_with("https://") || lower.starts_with("oras://")) {
        return Err(field(
            "url",
            "must be an http:// or https:// URL (e.g. https://example.org/disk.img.zst) or an OCI reference \
             (oras://REGISTRY/REPOSITORY:TAG)",
        ));
    }
    match Source::parse(url) {
        Ok(Source::Http(_) | Source::Oci(_)) => Ok(()),
        Ok(Source::File(_)) => Err(field("url", "must be an http:// or https:// URL")),
        Err(e) => Err(field("url", e.message().to_string())),
    }
}

/// 64 hexadecimal digits (a `sha256:` prefix and capitals are accepted);
/// the digest in lower case.
pub fn check_sha256(sha256: &str) -> Result<String, EditError> {
    let s = sha256.trim();
    if s.is_empty() {
        return Err(field(
            "sha256",
            "is required: the SHA-256 of the file at the URL, 64 hexadecimal digits",
        ));
    }
    parse_sha256_hex(s).ok_or_else(|| {
        field("sha256", format!("must be 64 hexadecimal digits (this has {} characters)", s.chars().count()))
    })
}

/// An entry for an image at `url`, checked field by field.
pub fn url_entry(name: &str, url: &str, sha256: &str, description: &str) -> Result<NewEntry, EditError> {
    check_name(name)?;
    check_url(url)?;
    let sha256 = check_sha256(sha256)?;
    let description = description.trim();
    Ok(NewEntry {
        name: name.to_string(),
        src: url.to_string(),
        sha256: Some(sha256),
        // From the URL's name, as for any entry without a format.
        format: None,
        size_bytes: None,
        description: (!description.is_empty()).then(|| description.to_string()),
    })
}

/// The catalog file's text and its parsed entries; an absent file is empty.
fn read_catalog(path: &Path) -> Result<(String, Catalog), EditError> {
    let text = match std::fs::read(path) {
        Ok(b) if b.len() as u64 > catalog::MAX_CATALOG_BYTES => {
            return Err(EditError::NotEditable(format!(
                "{} is larger than {} bytes; shorten it by hand",
                path.display(),
                catalog::MAX_CATALOG_BYTES
            )))
        }
        Ok(b) => String::from_utf8(b).map_err(|_| {
            EditError::NotEditable(format!("{} is not UTF-8 text; fix it by hand", path.display()))
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((String::new(), Catalog::empty())),
        Err(e) => return Err(EditError::Io(format!("cannot read {}: {e}", path.display()))),
    };
    let parsed = Catalog::parse(&text).map_err(|mut e| {
        e.location = path.display().to_string();
        EditError::NotEditable(format!(
            "{e}\nNothing was added: fix the file first, then add the image again."
        ))
    })?;
    Ok((text, parsed))
}

fn duplicate_in_catalog(path: &Path, name: &str) -> EditError {
    EditError::Duplicate(format!(
        "the catalog {} already has an image named {name}; choose another name (or remove that entry \
         from the file first)",
        path.display()
    ))
}

fn toml_table(e: &NewEntry) -> toml_edit::Table {
    let mut t = toml_edit::Table::new();
    t["name"] = toml_edit::value(e.name.as_str());
    t["src"] = toml_edit::value(e.src.as_str());
    if let Some(d) = &e.sha256 {
        t["sha256"] = toml_edit::value(d.as_str());
    }
    if let Some(f) = e.format {
        t["format"] = toml_edit::value(f.as_str());
    }
    if let Some(n) = e.size_bytes {
        t["size_bytes"] = toml_edit::value(i64::try_from(n).unwrap_or(i64::MAX));
    }
    if let Some(d) = &e.description {
        t["description"] = toml_edit::value(d.as_str());
    }
    t
}

const NEW_FILE_HEADER: &str = "# The images this bty-web offers (bty-web's Images page adds entries here).\n\
                               # Each [[images]] has a name and a src: an http(s) URL, or a file name in\n\
                               # the images directory; sha256, format, size_bytes, arch and description\n\
                               # are optional.\n";

/// `text` with `entry` appended as an `[[images]]` table, everything else
/// (entries, comments, layout) left as it was.
pub fn append_entry(text: &str, entry: &NewEntry) -> Result<String, EditError> {
    let mut doc: toml_edit::DocumentMut = if text.trim().is_empty() {
        let fresh = format!("{NEW_FILE_HEADER}version = {}\n", catalog::CATALOG_VERSION);
        fresh.parse().expect("a new catalog's text is TOML")
    } else {
        text.parse().map_err(|e| EditError::NotEditable(format!("the catalog is not TOML: {e}")))?
    };
    let images = doc.entry("images").or_insert(toml_edit::Item::ArrayOfTables(Default::default()));
    match images {
        toml_edit::Item::ArrayOfTables(a) => a.push(toml_table(entry)),
        toml_edit::Item::Value(toml_edit::Value::Array(a)) => a.push(toml_table(entry).into_inline_table()),
        _ => {
            return Err(EditError::NotEditable(
                "the catalog's `images` is not an array of tables ([[images]])".into(),
            ))
        }
    }
    Ok(doc.to_string())
}

/// A file-system failure; one that says the place is not writable (a
/// catalog or images directory kept read-only by a package or a
/// configuration manager) is not the server's fault.
fn fs_error(what: String, e: std::io::Error) -> EditError {
    let read_only = e.kind() == std::io::ErrorKind::PermissionDenied || e.raw_os_error() == Some(libc::EROFS);
    if read_only {
        EditError::NotEditable(format!(
            "{what}: {e}; it cannot be changed from here, change it where it is managed"
        ))
    } else {
        EditError::Io(format!("{what}: {e}"))
    }
}

/// Replace `path` with `text`: a temporary file beside it, synced, renamed
/// over it, and the directory synced. The file keeps its permissions.
pub fn write_atomic(path: &Path, text: &str) -> Result<(), EditError> {
    let io = |what: &str, p: &Path, e: std::io::Error| fs_error(format!("cannot {what} {}", p.display()), e);
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let base = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "catalog".into());
    let tmp = dir.join(format!(".{base}.{}.tmp", &crate::secret::random_secret()[..8]));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| io("create", &tmp, e))?;
        if let Ok(meta) = std::fs::metadata(path) {
            f.set_permissions(meta.permissions()).map_err(|e| io("set the mode of", &tmp, e))?;
        }
        f.write_all(text.as_bytes()).map_err(|e| io("write", &tmp, e))?;
        f.sync_all().map_err(|e| io("sync", &tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| io("replace", path, e))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return result;
    }
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Append `entry` to the catalog file at `path` and return the new catalog.
/// The result is validated as any catalog is before it replaces the file.
pub fn add_to_file(path: &Path, entry: &NewEntry) -> Result<Catalog, EditError> {
    check_name(&entry.name)?;
    let (text, current) = read_catalog(path)?;
    if current.get(&entry.name).is_some() {
        return Err(duplicate_in_catalog(path, &entry.name));
    }
    let new_text = append_entry(&text, entry)?;
    let index = current.images.len();
    let parsed =
        Catalog::parse(&new_text).map_err(|e| match e.problems.iter().find(|p| p.index == Some(index)) {
            Some(p) => {
                let f = match p.field.as_str() {
                    "name" => "name",
                    "src" if entry.src.contains("://") => "url",
                    "src" => "file",
                    "sha256" => "sha256",
                    "description" => "description",
                    "format" => "format",
                    _ => "entry",
                };
                field(f, p.reason.clone())
            }
            None => EditError::NotEditable(e.to_string()),
        })?;
    write_atomic(path, &new_text)?;
    Ok(parsed)
}

/// Before anything is read or written: can `name` be added to this
/// catalog (and, for an upload, to `images_dir`)? Checked again when the
/// entry is added.
pub fn precheck(store: &CatalogStore, name: &str, images_dir: Option<&Path>) -> Result<(), EditError> {
    check_name(name)?;
    editable(store)?;
    let path = Path::new(store.location());
    let (_, current) = read_catalog(path)?;
    if current.get(name).is_some() {
        return Err(duplicate_in_catalog(path, name));
    }
    if let Some(dir) = images_dir {
        file_free(dir, name)?;
    }
    Ok(())
}

fn editable(store: &CatalogStore) -> Result<(), EditError> {
    if store.is_remote() {
        return Err(EditError::NotEditable(format!(
            "the catalog is read from {}, so it is edited there, not here; add the entry to that file",
            store.location()
        )));
    }
    Ok(())
}

fn file_free(dir: &Path, name: &str) -> Result<(), EditError> {
    let p = dir.join(name);
    match std::fs::symlink_metadata(&p) {
        Ok(_) => Err(EditError::Duplicate(format!(
            "{} already exists in the images directory; choose another name (a file there is never \
             replaced by an upload)",
            p.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(EditError::Io(format!("cannot check {}: {e}", p.display()))),
    }
}

/// Add `entry` to the catalog and reload it: one edit at a time. With an
/// `upload`, its file is moved into place first and removed again if the
/// entry cannot be added.
pub async fn add(
    store: &CatalogStore,
    entry: NewEntry,
    upload: Option<Uploaded>,
) -> Result<Arc<Catalog>, EditError> {
    let _turn = store.edits.lock().await;
    editable(store)?;
    check_name(&entry.name)?;
    let path = PathBuf::from(store.location());
    let mut placed = None;
    if let Some(mut u) = upload {
        file_free(&u.dir, &entry.name)?;
        let final_path = u.dir.join(&entry.name);
        tokio::fs::rename(&u.partial, &final_path)
            .await
            .map_err(|e| EditError::Io(format!("cannot move the upload to {}: {e}", final_path.display())))?;
        u.placed = true;
        if let Ok(d) = std::fs::File::open(&u.dir) {
            let _ = d.sync_all();
        }
        placed = Some(final_path);
    }
    let written = {
        let entry = entry.clone();
        let path = path.clone();
        tokio::task::spawn_blocking(move || add_to_file(&path, &entry))
            .await
            .unwrap_or_else(|e| Err(EditError::Io(format!("the catalog edit failed: {e}"))))
    };
    if let Err(e) = written {
        if let Some(p) = placed {
            let _ = tokio::fs::remove_file(p).await;
        }
        return Err(e);
    }
    store.reload().await.map_err(|e| {
        EditError::Io(format!(
            "{} was written with {}, but did not load again: {e}",
            path.display(),
            entry.name
        ))
    })
}

/// An image upload on its way into the images directory: a hidden partial
/// file there, its SHA-256, size, first and last bytes. Dropped before
/// [`add`] has moved it into place (an error, a client gone mid-way), the
/// partial file is removed.
pub struct ImageUpload {
    file: tokio::fs::File,
    inner: Uploaded,
    hasher: Sha256,
    head: Vec<u8>,
    tail: Vec<u8>,
    max: u64,
}

/// A complete upload, not yet in place.
pub struct Uploaded {
    dir: PathBuf,
    partial: PathBuf,
    /// The entry's name, which is also the file's.
    pub name: String,
    pub sha256: String,
    pub size_bytes: u64,
    pub format: Option<ImageFormat>,
    placed: bool,
}

impl Drop for Uploaded {
    fn drop(&mut self) {
        if !self.placed {
            let _ = std::fs::remove_file(&self.partial);
        }
    }
}

impl ImageUpload {
    /// Start an upload of `name` into `images_dir`, refused beyond `max` bytes.
    pub async fn begin(images_dir: &Path, name: &str, max: u64) -> Result<ImageUpload, EditError> {
        check_name(name)?;
        tokio::fs::create_dir_all(images_dir)
            .await
            .map_err(|e| fs_error(format!("cannot create {}", images_dir.display()), e))?;
        let tag = &crate::secret::random_secret()[..8];
        let partial = images_dir.join(format!(".{name}.{tag}.partial"));
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&partial)
            .await
            .map_err(|e| fs_error(format!("cannot create {}", partial.display()), e))?;
        Ok(ImageUpload {
            file,
            inner: Uploaded {
                dir: images_dir.to_path_buf(),
                partial,
                name: name.to_string(),
                sha256: String::new(),
                size_bytes: 0,
                format: None,
                placed: false,
            },
            hasher: Sha256::new(),
            head: Vec::with_capacity(format::MAGIC_LEN),
            tail: Vec::with_capacity(2 * format::TAIL_LEN),
            max,
        })
    }

    /// The next bytes. Over the limit, the upload fails (and its partial
    /// file goes when it is dropped).
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), EditError> {
        let size = self.inner.size_bytes + chunk.len() as u64;
        if size > self.max {
            return Err(EditError::TooLarge(self.max));
        }
        self.inner.size_bytes = size;
        self.hasher.update(chunk);
        if self.head.len() < format::MAGIC_LEN {
            let n = (format::MAGIC_LEN - self.head.len()).min(chunk.len());
            self.head.extend_from_slice(&chunk[..n]);
        }
        let keep = format::TAIL_LEN;
        if chunk.len() >= keep {
            self.tail.clear();
            self.tail.extend_from_slice(&chunk[chunk.len() - keep..]);
        } else {
            self.tail.extend_from_slice(chunk);
            if self.tail.len() > keep {
                self.tail.drain(..self.tail.len() - keep);
            }
        }
        let p = &self.inner.partial;
        self.file
            .write_all(chunk)
            .await
            .map_err(|e| EditError::Io(format!("cannot write {}: {e}", p.display())))
    }

    /// The whole upload has arrived: sync it and tell what it is. An image
    /// bty would refuse to flash (a tarball, a format it does not decode, a
    /// name promising another format) is refused here already.
    pub async fn finish(mut self) -> Result<Uploaded, EditError> {
        let p = self.inner.partial.clone();
        self.file.sync_all().await.map_err(|e| EditError::Io(format!("cannot sync {}: {e}", p.display())))?;
        if self.inner.size_bytes == 0 {
            return Err(field("file", "is empty"));
        }
        // As for a local file: the tail matters only for what looks raw.
        let whole = (format::MAGIC_LEN + format::TAIL_LEN) as u64;
        let tail: &[u8] = if self.inner.size_bytes >= whole { &self.tail } else { &[] };
        let detected = format::detect_with_tail(&self.head, tail, &self.inner.name)
            .map_err(|e| field("file", e.to_string()))?;
        self.inner.sha256 = hex::encode(std::mem::take(&mut self.hasher).finalize());
        self.inner.format = Some(detected);
        // Move the record out; `self` has nothing left to clean up.
        let placeholder = Uploaded {
            dir: PathBuf::new(),
            partial: PathBuf::new(),
            name: String::new(),
            sha256: String::new(),
            size_bytes: 0,
            format: None,
            placed: true,
        };
        Ok(std::mem::replace(&mut self.inner, placeholder))
    }
}

impl Uploaded {
    /// The catalog entry for this file.
    pub fn entry(&self, description: &str) -> NewEntry {
        let description = description.trim();
        NewEntry {
            name: self.name.clone(),
            src: self.name.clone(),
            sha256: Some(self.sha256.clone()),
            format: self.format,
            size_bytes: Some(self.size_bytes),
            description: (!description.is_empty()).then(|| description.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMMENTED: &str =
        "# our images\nversion = 1\n\n# the first one\n[[images]]\nname = \"a\"\nsrc = \"a.img\" # local\n";

    fn url(name: &str) -> NewEntry {
        url_entry(name, "https://example.org/x.img.zst", &"ab".repeat(32), "X").unwrap()
    }

    #[test]
    fn appending_keeps_entries_and_comments() {
        let text = append_entry(COMMENTED, &url("b")).unwrap();
        assert!(text.starts_with(COMMENTED), "{text}");
        assert!(text.contains("# the first one") && text.contains("# local"), "{text}");
        let c = Catalog::parse(&text).unwrap();
        assert_eq!(c.images.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        let b = c.get("b").unwrap();
        assert_eq!(b.sha256.as_deref(), Some("ab".repeat(32).as_str()));
        assert_eq!(b.format, Some(ImageFormat::Zstd));
        assert_eq!(b.description.as_deref(), Some("X"));
        // Inline arrays take an inline table.
        let inline = "version = 1\nimages = [{ name = \"a\", src = \"a.img\" }]\n";
        let c = Catalog::parse(&append_entry(inline, &url("b")).unwrap()).unwrap();
        assert_eq!(c.images.len(), 2);
    }

    #[test]
    fn a_new_file_is_a_valid_catalog() {
        let text = append_entry("", &url("first")).unwrap();
        assert!(text.starts_with("# The images"), "{text}");
        let c = Catalog::parse(&text).unwrap();
        assert_eq!(c.images.len(), 1);
    }

    #[test]
    fn the_file_is_replaced_whole_and_duplicates_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("catalog.toml");
        std::fs::write(&p, COMMENTED).unwrap();
        let c = add_to_file(&p, &url("b")).unwrap();
        assert_eq!(c.images.len(), 2);
        let after = std::fs::read_to_string(&p).unwrap();
        assert!(after.starts_with(COMMENTED));
        assert!(matches!(add_to_file(&p, &url("b")), Err(EditError::Duplicate(_))));
        assert!(matches!(add_to_file(&p, &url("a")), Err(EditError::Duplicate(_))));
        assert_eq!(std::fs::read_to_string(&p).unwrap(), after);
        // No temporary files left beside it.
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["catalog.toml"]);
        // A missing file is created.
        let fresh = dir.path().join("new.toml");
        assert_eq!(add_to_file(&fresh, &url("x")).unwrap().images.len(), 1);
        // A broken file is not touched.
        std::fs::write(&p, "version = 2\n").unwrap();
        assert!(matches!(add_to_file(&p, &url("c")), Err(EditError::NotEditable(_))));
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "version = 2\n");
    }

    #[test]
    fn fields_are_checked_by_name() {
        let sha = "ab".repeat(32);
        let f = |r: Result<NewEntry, EditError>| match r {
            Err(EditError::Field { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(f(url_entry("../etc", "https://h/x", &sha, "")), "name");
        assert_eq!(f(url_entry(".hidden", "https://h/x", &sha, "")), "name");
        assert_eq!(f(url_entry("a/b", "https://h/x", &sha, "")), "name");
        assert_eq!(f(url_entry("", "https://h/x", &sha, "")), "name");
        assert_eq!(f(url_entry("ok", "ftp://h/x", &sha, "")), "url");
        assert_eq!(f(url_entry("ok", "/etc/passwd", &sha, "")), "url");
        assert_eq!(f(url_entry("ok", "https://", &sha, "")), "url");
        assert_eq!(f(url_entry("ok", "https://h/x", "abc", "")), "sha256");
        assert_eq!(f(url_entry("ok", "https://h/x", "", "")), "sha256");
        assert_eq!(f(url_entry("ok", "https://h/x", &"g".repeat(64), "")), "sha256");
        assert!(url_entry("ok", "HTTPS://h/x.img", &format!("sha256:{}", sha.to_uppercase()), "").is_ok());
    }

    #[tokio::test]
    async fn uploads_are_hashed_detected_and_cleaned_up() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let mut u = ImageUpload::begin(dir.path(), "disk.img", 1 << 20).await.unwrap();
        for c in data.chunks(777) {
            u.write(c).await.unwrap();
        }
        let done = u.finish().await.unwrap();
        assert_eq!(done.sha256, hex::encode(Sha256::digest(&data)));
        assert_eq!(done.size_bytes, 5000);
        assert_eq!(done.format, Some(ImageFormat::Raw));
        drop(done);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "a dropped upload leaves nothing");

        let mut u = ImageUpload::begin(dir.path(), "big.img", 1000).await.unwrap();
        assert_eq!(u.write(&data).await, Err(EditError::TooLarge(1000)));
        drop(u);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

        // Named zstd but raw bytes: bty would refuse it, so the upload is refused.
        let mut u = ImageUpload::begin(dir.path(), "disk.img.zst", 1 << 20).await.unwrap();
        u.write(&data).await.unwrap();
        assert!(matches!(u.finish().await, Err(EditError::Field { field: "file", .. })));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        assert!(ImageUpload::begin(dir.path(), "../x", 10).await.is_err());
    }
}
