//! `catalog.toml`: the list of images a provisioning server offers.
//!
//! ```toml
//! version = 1
//!
//! [[images]]
//! name = "debian-13-amd64"            # unique; letters, digits, `.`, `_`, `-`
//! src = "https://example.org/debian-13-amd64.img.xz"   # or oras://REGISTRY/REPO:TAG, or a file in the images directory
//! sha256 = "…64 hex…"                 # optional; verified by the flasher
//! format = "xz"                       # optional; default from the file name
//! size_bytes = 123456789              # optional
//! arch = "x86_64"                     # optional; default from the name
//! description = "Debian 13 generic cloud image"
//! ```
//!
//! Validation reports every bad entry at once (index, name, field, reason) so
//! an operator fixes the file in one pass instead of one error per restart.

use std::fmt;

use crate::error::Error;
use crate::format::{self, ImageFormat};
use crate::source::{parse_sha256_hex, Source};

/// The only catalog schema version this code reads.
pub const CATALOG_VERSION: i64 = 1;
/// Remote and local catalogs larger than this are refused: a catalog is a
/// short text file, anything bigger is a wrong URL.
pub const MAX_CATALOG_BYTES: u64 = 4 * 1024 * 1024;
pub const MAX_NAME_LEN: usize = 128;
const MAX_DESCRIPTION_LEN: usize = 4096;
const MAX_ARCH_LEN: usize = 32;

/// Where an entry's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSrc<'a> {
    /// An `oras://` reference to an OCI artifact ([`crate::oci`]).
    Oci(&'a str),
    /// An `http://` or `https://` origin.
    Url(&'a str),
    /// A path relative to the server's images directory (validated: no `..`,
    /// not absolute).
    Local(&'a str),
}

/// What [`Catalog::fetch`] found.
#[derive(Debug)]
pub enum Fetched {
    /// 304: the copy held is current.
    Unchanged,
    /// A catalog that parsed, with its text (to keep as the last good copy)
    /// and the server's `ETag`.
    Changed { catalog: Catalog, text: String, etag: Option<String> },
}

/// How long fetching a remote catalog may take, start to end.
pub const CATALOG_FETCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// One validated `[[images]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CatalogEntry {
    pub name: String,
    pub src: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<ImageFormat>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl CatalogEntry {
    pub fn src(&self) -> ImageSrc<'_> {
        if is_http_url(&self.src) {
            ImageSrc::Url(&self.src)
        } else if is_oras(&self.src) {
            ImageSrc::Oci(&self.src)
        } else {
            ImageSrc::Local(&self.src)
        }
    }
}

/// A validated catalog. Entry order is the file's order.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Catalog {
    pub version: i64,
    pub images: Vec<CatalogEntry>,
}

/// One problem in a catalog file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CatalogProblem {
    /// Zero-based position in `[[images]]`; `None` for file-level problems.
    pub index: Option<usize>,
    /// The entry's name, when it has a readable one.
    pub name: Option<String>,
    pub field: String,
    pub reason: String,
}

impl fmt::Display for CatalogProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.index, &self.name) {
            (Some(i), Some(n)) => write!(f, "images[{i}] ({n}): {}: {}", self.field, self.reason),
            (Some(i), None) => write!(f, "images[{i}]: {}: {}", self.field, self.reason),
            _ => write!(f, "{}: {}", self.field, self.reason),
        }
    }
}

/// A catalog that could not be read or did not validate.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CatalogError {
    /// Where the catalog came from (path or URL), empty for [`Catalog::parse`].
    pub location: String,
    pub problems: Vec<CatalogProblem>,
}

impl fmt::Display for CatalogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = if self.location.is_empty() { "catalog".to_string() } else { self.location.clone() };
        let n = self.problems.len();
        write!(f, "{what}: {n} problem{} (fix the file and reload)", if n == 1 { "" } else { "s" })?;
        for p in &self.problems {
            write!(f, "\n  {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for CatalogError {}

impl From<CatalogError> for Error {
    fn from(e: CatalogError) -> Self {
        Error::usage(e.to_string())
    }
}

fn is_http_url(s: &str) -> bool {
    let lower = s.get(..8).unwrap_or(s).to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://")
}

fn is_oras(s: &str) -> bool {
    s.get(..7).is_some_and(|p| p.eq_ignore_ascii_case("oras://"))
}

fn file_problem(field: &str, reason: impl Into<String>) -> CatalogProblem {
    CatalogProblem { index: None, name: None, field: field.into(), reason: reason.into() }
}

/// Is `name` acceptable as a catalog image name (and so as a URL path segment)?
pub fn valid_image_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!("is {} characters long; the limit is {MAX_NAME_LEN}", name.len()));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return Err(format!("contains {c:?}; use only letters, digits, `.`, `_` and `-`"));
    }
    if name.starts_with('.') {
        return Err("must not start with `.`".into());
    }
    Ok(())
}

fn validate_src(src: &str) -> Result<(), String> {
    if src.is_empty() {
        return Err("must not be empty".into());
    }
    if is_http_url(src) || is_oras(src) {
        return Source::parse(src).map(|_| ()).map_err(|e| e.message().to_string());
    }
    if src.to_ascii_lowercase().starts_with("file://") {
        return Err("file:// URLs are not allowed in a catalog; put the image in the server's images \
                    directory and give its file name"
            .into());
    }
    if let Some((scheme, _)) = src.split_once("://") {
        return Err(format!(
            "unsupported scheme `{scheme}://`; use http://, https://, oras:// or a file name"
        ));
    }
    if src.contains('\0') || src.contains('\\') {
        return Err("must not contain NUL or backslashes".into());
    }
    if src.starts_with('/') {
        return Err("absolute paths are not allowed; give a path relative to the images directory".into());
    }
    if src.split('/').any(|seg| seg == ".." || seg.is_empty()) {
        return Err(
            "must be a plain relative path inside the images directory (no `..`, no empty segments)".into()
        );
    }
    Ok(())
}

const ENTRY_KEYS: &[&str] = &["name", "src", "sha256", "format", "size_bytes", "arch", "description"];

fn parse_entry(
    index: usize,
    value: &toml::Value,
    problems: &mut Vec<CatalogProblem>,
) -> Option<CatalogEntry> {
    let Some(table) = value.as_table() else {
        problems.push(CatalogProblem {
            index: Some(index),
            name: None,
            field: "images".into(),
            reason: "each entry must be a table ([[images]])".into(),
        });
        return None;
    };
    let name = table.get("name").and_then(|v| v.as_str()).map(str::to_string);
    let before = problems.len();
    let mut problem = |field: &str, reason: String| {
        problems.push(CatalogProblem { index: Some(index), name: name.clone(), field: field.into(), reason });
    };

    for key in table.keys() {
        if !ENTRY_KEYS.contains(&key.as_str()) {
            problem(key, format!("unknown key; known keys are {}", ENTRY_KEYS.join(", ")));
        }
    }

    let string = |field: &str, problem: &mut dyn FnMut(&str, String)| -> Option<String> {
        match table.get(field) {
            None => None,
            Some(toml::Value::String(s)) => Some(s.clone()),
            Some(other) => {
                problem(field, format!("must be a string, not a {}", other.type_str()));
                None
            }
        }
    };

    let name_v = string("name", &mut problem);
    match &name_v {
        None if !table.contains_key("name") => problem("name", "is required".into()),
        Some(n) => {
            if let Err(r) = valid_image_name(n) {
                problem("name", r);
            }
        }
        None => {}
    }
    let src = string("src", &mut problem);
    match &src {
        None if !table.contains_key("src") => problem("src", "is required".into()),
        Some(s) => {
            if let Err(r) = validate_src(s) {
                problem("src", r);
            }
        }
        None => {}
    }
    let sha256 = string("sha256", &mut problem).and_then(|s| match parse_sha256_hex(&s) {
        Some(d) => Some(d),
        None => {
            problem("sha256", "must be 64 hexadecimal digits".into());
            None
        }
    });
    let format = string("format", &mut problem).and_then(|s| match ImageFormat::parse(&s) {
        Some(f) => Some(f),
        None => {
            let known: Vec<&str> = ImageFormat::ALL.iter().map(|f| f.as_str()).collect();
            problem("format", format!("unknown format {s:?}; known formats are {}", known.join(", ")));
            None
        }
    });
    let size_bytes = match table.get("size_bytes") {
        None => None,
        Some(toml::Value::Integer(n)) if *n >= 0 => Some(*n as u64),
        Some(toml::Value::Integer(_)) => {
            problem("size_bytes", "must not be negative".into());
            None
        }
        Some(other) => {
            problem("size_bytes", format!("must be an integer, not a {}", other.type_str()));
            None
        }
    };
    let arch = string("arch", &mut problem);
    if arch.as_ref().is_some_and(|a| a.is_empty() || a.len() > MAX_ARCH_LEN) {
        problem("arch", format!("must be 1 to {MAX_ARCH_LEN} characters"));
    }
    let description = string("description", &mut problem);
    if description.as_ref().is_some_and(|d| d.len() > MAX_DESCRIPTION_LEN) {
        problem("description", format!("is longer than {MAX_DESCRIPTION_LEN} characters"));
    }

    if problems.len() > before {
        return None;
    }
    let (name, src) = (name_v?, src?);
    let format = format.or_else(|| format::from_name(&src)).or_else(|| format::from_name(&name));
    let arch =
        arch.or_else(|| format::arch_hint(&name).or_else(|| format::arch_hint(&src)).map(str::to_string));
    Some(CatalogEntry { name, src, sha256, format, size_bytes, arch, description })
}

impl Catalog {
    /// An empty catalog (what a server offers before one is configured).
    pub fn empty() -> Self {
        Catalog { version: CATALOG_VERSION, images: Vec::new() }
    }

    /// Parse and validate catalog text, reporting every problem found.
    pub fn parse(text: &str) -> Result<Catalog, CatalogError> {
        let fail = |problems| Err(CatalogError { location: String::new(), problems });
        let doc: toml::Table = match toml::from_str(text) {
            Ok(t) => t,
            Err(e) => return fail(vec![file_problem("toml", e.to_string().trim().to_string())]),
        };
        let mut problems = Vec::new();
        for key in doc.keys() {
            if key != "version" && key != "images" {
                problems.push(file_problem(key, "unknown top-level key; known keys are version, images"));
            }
        }
        match doc.get("version") {
            Some(toml::Value::Integer(CATALOG_VERSION)) => {}
            Some(toml::Value::Integer(v)) => problems.push(file_problem(
                "version",
                format!("version {v} is not supported; this bty reads version {CATALOG_VERSION}"),
            )),
            Some(other) => problems
                .push(file_problem("version", format!("must be an integer, not a {}", other.type_str()))),
            None => {
                problems.push(file_problem("version", format!("is required (version = {CATALOG_VERSION})")))
            }
        }
        let mut images = Vec::new();
        match doc.get("images") {
            None => {}
            Some(toml::Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    if let Some(entry) = parse_entry(i, item, &mut problems) {
                        images.push(entry);
                    }
                }
            }
            Some(other) => problems.push(file_problem(
                "images",
                format!("must be an array of tables ([[images]]), not a {}", other.type_str()),
            )),
        }
        let mut seen = std::collections::HashMap::new();
        for (i, e) in images.iter().enumerate() {
            if let Some(first) = seen.insert(e.name.as_str(), i) {
                problems.push(CatalogProblem {
                    index: Some(i),
                    name: Some(e.name.clone()),
                    field: "name".into(),
                    reason: format!("duplicate name; images[{first}] already uses it"),
                });
            }
        }
        if !problems.is_empty() {
            return fail(problems);
        }
        Ok(Catalog { version: CATALOG_VERSION, images })
    }

    /// Read and validate a catalog from a local path or an `http(s)://` URL
    /// (capped at [`MAX_CATALOG_BYTES`]). Blocking.
    pub fn load(location: &str) -> Result<Catalog, CatalogError> {
        let fail = |reason: String| CatalogError {
            location: location.to_string(),
            problems: vec![file_problem("source", reason)],
        };
        let source = Source::parse(location).map_err(|e| fail(e.message().to_string()))?;
        let bytes = match source.read_small(MAX_CATALOG_BYTES) {
            Ok(Some(b)) => b,
            Ok(None) => return Err(fail("does not exist".into())),
            Err(e) => return Err(fail(e.to_string())),
        };
        let text = String::from_utf8(bytes).map_err(|_| fail("is not UTF-8 text".into()))?;
        Catalog::parse(&text).map_err(|mut e| {
            e.location = location.to_string();
            e
        })
    }

    /// Fetch an `http(s)://` catalog, asking with `If-None-Match: etag` when
    /// a copy is held: at most [`MAX_CATALOG_BYTES`], within
    /// [`CATALOG_FETCH_TIMEOUT`] for the whole exchange. Blocking.
    pub fn fetch(url: &str, etag: Option<&str>) -> Result<Fetched, CatalogError> {
        let fail = |reason: String| CatalogError {
            location: url.to_string(),
            problems: vec![file_problem("source", reason)],
        };
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(CATALOG_FETCH_TIMEOUT))
            .http_status_as_error(false)
            .user_agent(format!("bty/{}", crate::VERSION))
            .build()
            .into();
        let mut req = agent.get(url);
        if let Some(e) = etag {
            req = req.header("If-None-Match", e);
        }
        let resp = req.call().map_err(|e| fail(format!("cannot fetch: {e}")))?;
        let status = resp.status().as_u16();
        if status == 304 && etag.is_some() {
            return Ok(Fetched::Unchanged);
        }
        if status != 200 {
            return Err(fail(format!("the server answered HTTP {status}")));
        }
        let etag = resp.headers().get("etag").and_then(|v| v.to_str().ok()).map(str::to_string);
        let mut body = Vec::new();
        std::io::Read::read_to_end(
            &mut std::io::Read::take(resp.into_body().into_reader(), MAX_CATALOG_BYTES + 1),
            &mut body,
        )
        .map_err(|e| fail(format!("cannot read: {e}")))?;
        if body.len() as u64 > MAX_CATALOG_BYTES {
            return Err(fail(format!("is larger than {MAX_CATALOG_BYTES} bytes")));
        }
        let text = String::from_utf8(body).map_err(|_| fail("is not UTF-8 text".into()))?;
        let catalog = Catalog::parse(&text).map_err(|mut e| {
            e.location = url.to_string();
            e
        })?;
        Ok(Fetched::Changed { catalog, text, etag })
    }

    pub fn get(&self, name: &str) -> Option<&CatalogEntry> {
        self.images.iter().find(|e| e.name == name)
    }

    /// Render as `catalog.toml` text; `parse(to_toml())` gives the same catalog.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a catalog always serialises to TOML")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
version = 1

[[images]]
name = "debian-13-amd64"
src = "https://example.org/img/debian-13-amd64.img.xz"
sha256 = "sha256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
size_bytes = 1024
description = "Debian"

[[images]]
name = "local.raw"
src = "sub/dir/local.img"
format = "img.zst"
arch = "riscv64"
"#;

    #[test]
    fn parses_and_defaults() {
        let c = Catalog::parse(GOOD).unwrap();
        assert_eq!(c.images.len(), 2);
        let d = c.get("debian-13-amd64").unwrap();
        assert_eq!(d.format, Some(ImageFormat::Xz));
        assert_eq!(d.arch.as_deref(), Some("x86_64"));
        assert_eq!(d.sha256.as_deref(), Some("a".repeat(64).as_str()));
        assert_eq!(d.src(), ImageSrc::Url("https://example.org/img/debian-13-amd64.img.xz"));
        let l = c.get("local.raw").unwrap();
        assert_eq!(l.format, Some(ImageFormat::Zstd));
        assert_eq!(l.src(), ImageSrc::Local("sub/dir/local.img"));
        assert_eq!(Catalog::parse(&c.to_toml()).unwrap(), c);
    }

    #[test]
    fn reports_every_problem() {
        let text = r#"
version = 1
extra = true

[[images]]
name = "ok"
src = "ok.img"

[[images]]
name = "bad name"
src = "file:///etc/passwd"
sha256 = "abc"

[[images]]
src = "../escape.img"
format = "rar"
colour = "red"

[[images]]
name = "ok"
src = "/abs.img"
size_bytes = -1
"#;
        let err = Catalog::parse(text).unwrap_err();
        let got: Vec<(Option<usize>, &str)> =
            err.problems.iter().map(|p| (p.index, p.field.as_str())).collect();
        assert_eq!(
            got,
            vec![
                (None, "extra"),
                (Some(1), "name"),
                (Some(1), "src"),
                (Some(1), "sha256"),
                (Some(2), "colour"),
                (Some(2), "name"),
                (Some(2), "src"),
                (Some(2), "format"),
                (Some(3), "src"),
                (Some(3), "size_bytes"),
            ]
        );
        assert!(err.to_string().contains("images[1] (bad name): src: file:// URLs are not allowed"), "{err}");
        assert_eq!(err.problems[1].name.as_deref(), Some("bad name"));
    }

    #[test]
    fn duplicates_and_versions() {
        let dup = "version = 1\n[[images]]\nname='a'\nsrc='a.img'\n[[images]]\nname='a'\nsrc='b.img'\n";
        let err = Catalog::parse(dup).unwrap_err();
        assert_eq!(err.problems[0].index, Some(1));
        assert!(err.problems[0].reason.contains("duplicate"));
        assert!(Catalog::parse("version = 2").unwrap_err().to_string().contains("not supported"));
        assert!(Catalog::parse("").unwrap_err().to_string().contains("version: is required"));
        assert!(Catalog::parse("version = [").is_err());
        assert_eq!(Catalog::parse("version = 1").unwrap().images.len(), 0);
    }

    #[test]
    fn load_from_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("catalog.toml");
        std::fs::write(&p, GOOD).unwrap();
        assert_eq!(Catalog::load(p.to_str().unwrap()).unwrap().images.len(), 2);
        let missing = Catalog::load(dir.path().join("nope.toml").to_str().unwrap()).unwrap_err();
        assert!(missing.to_string().contains("does not exist"), "{missing}");
    }
}
