//! Where image bytes come from: a local file, an `http(s)://` URL, or an
//! `oras://` reference to an OCI artifact in a registry ([`crate::oci`]).
//!
//! Every reader returned here enforces its declared length: a stream that ends
//! before `Content-Length` (or the file size taken at open time) yields an
//! [`std::io::ErrorKind::UnexpectedEof`] error, never a silent short image.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, ErrorKind, Result};
use crate::oci::{OciSource, Reference};

/// An image source as given on a command line or in a catalog entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    Http(String),
    /// Resolved once (manifest, layer) and shared by clones.
    Oci(Arc<OciSource>),
}

/// An open byte stream plus what is known of its length.
pub struct OpenedSource {
    pub reader: Box<dyn Read + Send>,
    /// Length of the published bytes (file size, `Content-Length`), if known.
    pub len: Option<u64>,
}

impl Source {
    /// Parse a source string: `http://` / `https://` URLs, `file://` URLs and
    /// plain paths. Other schemes are refused with the list of supported ones.
    pub fn parse(s: &str) -> Result<Source> {
        let lower = s.to_ascii_lowercase();
        if lower.starts_with("http://") || lower.starts_with("https://") {
            let rest = &s[s.find("://").unwrap() + 3..];
            if rest.is_empty() || rest.starts_with('/') {
                return Err(Error::usage(format!("{s}: URL has no host")));
            }
            return Ok(Source::Http(s.to_string()));
        }
        if lower.starts_with("file:") {
            return file_url(s);
        }
        if lower.starts_with("oras://") {
            return Ok(Source::Oci(Arc::new(OciSource::new(Reference::parse(s)?, None))));
        }
        if let Some((scheme, _)) = s.split_once("://") {
            return Err(Error::usage(format!(
                "{s}: unsupported source scheme `{scheme}://`; use a local path, file://, http://, https:// or oras://"
            )));
        }
        if s.is_empty() {
            return Err(Error::usage("empty image source"));
        }
        Ok(Source::File(PathBuf::from(s)))
    }

    /// The name used for format detection and display (file or URL basename).
    pub fn name(&self) -> String {
        match self {
            Source::File(p) => p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            Source::Http(u) => {
                let path = u.split(['?', '#']).next().unwrap_or(u);
                path.rsplit('/').next().unwrap_or(path).to_string()
            }
            // The layer's title annotation names the file (and so its format).
            Source::Oci(o) => match (&o.title, o.resolved()) {
                (Some(t), _) => t.clone(),
                (None, Ok(r)) => r.file_name(),
                (None, Err(_)) => o.reference.repository.rsplit('/').next().unwrap_or_default().to_string(),
            },
        }
    }

    pub fn display(&self) -> String {
        match self {
            Source::File(p) => p.display().to_string(),
            Source::Http(u) => u.clone(),
            Source::Oci(o) => match &o.title {
                None => o.reference.canonical(),
                Some(t) => format!("{} (layer {t})", o.reference.canonical()),
            },
        }
    }

    pub fn is_local(&self) -> bool {
        matches!(self, Source::File(_))
    }

    /// Open the whole stream from the start.
    pub fn open(&self) -> Result<OpenedSource> {
        match self {
            Source::File(p) => {
                let f = open_file(p)?;
                let len =
                    f.metadata().map_err(|e| Error::io(format!("cannot stat {}", p.display()), e))?.len();
                Ok(OpenedSource {
                    reader: Box::new(ExactLen::new(f, len, p.display().to_string())),
                    len: Some(len),
                })
            }
            Source::Http(url) => http_get(url, None),
            Source::Oci(o) => {
                let (reader, len) = o.open()?;
                Ok(OpenedSource { reader: Box::new(reader), len: Some(len) })
            }
        }
    }

    /// Read up to `n` bytes from `offset` (fewer only at the end of the data).
    /// HTTP sources use a Range request; a server that ignores Range is handled
    /// by skipping, so this stays correct (if slower) everywhere.
    pub fn read_at(&self, offset: u64, n: usize) -> Result<Vec<u8>> {
        match self {
            Source::File(p) => {
                let mut f = open_file(p)?;
                f.seek(SeekFrom::Start(offset))
                    .map_err(|e| Error::io(format!("cannot seek {}", p.display()), e))?;
                read_up_to(&mut f, n).map_err(|e| Error::io(format!("cannot read {}", p.display()), e))
            }
            Source::Http(url) => {
                let end = offset + n as u64 - 1;
                let opened = http_get(url, Some((offset, end)))?;
                let mut r = opened.reader;
                read_up_to(&mut r, n).map_err(|e| Error::io(format!("cannot read {url}"), e))
            }
            Source::Oci(o) => o.read_at(offset, n),
        }
    }

    /// Total published length, without reading the data.
    pub fn len(&self) -> Result<Option<u64>> {
        match self {
            Source::File(p) => Ok(Some(
                std::fs::metadata(p).map_err(|e| Error::io(format!("cannot stat {}", p.display()), e))?.len(),
            )),
            Source::Http(url) => http_len(url),
            Source::Oci(o) => Ok(o.layer()?.map(|l| l.size)),
        }
    }

    /// The source with `suffix` appended (sidecar files such as `.sha256`, `.bmap`).
    pub fn sibling(&self, suffix: &str) -> Source {
        match self {
            Source::File(p) => {
                let mut s = p.clone().into_os_string();
                s.push(suffix);
                Source::File(s.into())
            }
            Source::Http(u) => {
                let (path, query) = match u.find(['?', '#']) {
                    Some(i) => (&u[..i], &u[i..]),
                    None => (u.as_str(), ""),
                };
                Source::Http(format!("{path}{suffix}{query}"))
            }
            // Sidecars travel as layers of the same manifest, titled after the image.
            Source::Oci(o) => {
                let title = format!("{}{suffix}", self.name());
                Source::Oci(Arc::new(OciSource::new(o.reference.clone(), Some(title))))
            }
        }
    }

    /// The source with its last file-name extension taken off
    /// (`disk.img.xz` → `disk.img`), or `None` when the name has none.
    pub fn without_extension(&self) -> Option<Source> {
        match self {
            Source::File(p) => {
                use std::os::unix::ffi::OsStrExt;
                let name = p.file_name()?.as_bytes();
                let dot = name.iter().rposition(|&b| b == b'.').filter(|&i| i > 0)?;
                let all = p.as_os_str().as_bytes();
                let kept = &all[..all.len() - (name.len() - dot)];
                Some(Source::File(PathBuf::from(std::ffi::OsStr::from_bytes(kept))))
            }
            Source::Http(u) => {
                let (path, query) = match u.find(['?', '#']) {
                    Some(i) => (&u[..i], &u[i..]),
                    None => (u.as_str(), ""),
                };
                let name = path.rsplit('/').next().unwrap_or(path);
                let dot = name.rfind('.').filter(|&i| i > 0)?;
                let cut = name.len() - dot;
                Some(Source::Http(format!("{}{query}", &path[..path.len() - cut])))
            }
            Source::Oci(_) => None,
        }
    }

    /// Read a small auxiliary file completely (sidecars, catalogs), capped at
    /// `max` bytes. `Ok(None)` when it does not exist (404 / ENOENT).
    pub fn read_small(&self, max: u64) -> Result<Option<Vec<u8>>> {
        let opened = match self {
            Source::File(p) if !p.exists() => return Ok(None),
            Source::Oci(o) if o.layer()?.is_none() => return Ok(None),
            Source::Http(url) => match http_get(url, None) {
                Ok(o) => o,
                Err(e) if e.message().contains("HTTP 404") => return Ok(None),
                Err(e) => return Err(e),
            },
            _ => self.open()?,
        };
        if let Some(len) = opened.len {
            if len > max {
                return Err(Error::failure(format!("{} is larger than {max} bytes", self.display())));
            }
        }
        let mut buf = Vec::new();
        opened
            .reader
            .take(max + 1)
            .read_to_end(&mut buf)
            .map_err(|e| Error::io(format!("cannot read {}", self.display()), e))?;
        if buf.len() as u64 > max {
            return Err(Error::failure(format!("{} is larger than {max} bytes", self.display())));
        }
        Ok(Some(buf))
    }

    /// The `.sha256` sidecar next to the image, if present: bare hex or a
    /// `sha256sum` line. Returns the lowercase hex digest.
    pub fn sidecar_sha256(&self) -> Result<Option<String>> {
        if let Source::Oci(o) = self {
            // The layer digest is the SHA-256 of the published bytes.
            if o.title.is_none() {
                return Ok(o.resolved()?.sha256());
            }
        }
        let side = self.sibling(".sha256");
        let Some(bytes) = side.read_small(64 * 1024)? else { return Ok(None) };
        let text = String::from_utf8_lossy(&bytes);
        let name = self.name();
        for line in text.lines() {
            let mut parts = line.split_whitespace();
            let Some(hex) = parts.next() else { continue };
            let file = parts.next().map(|f| f.trim_start_matches('*'));
            if file.is_some_and(|f| !f.ends_with(&name)) {
                continue;
            }
            if let Some(d) = parse_sha256_hex(hex) {
                return Ok(Some(d));
            }
        }
        Err(Error::failure(format!(
            "{} exists but holds no SHA-256 digest for {name}; fix or remove the sidecar",
            side.display()
        )))
    }
}

/// `file:` URLs in the forms RFC 8089 allows for local files: `file:///abs`,
/// `file:/abs` (what bmaptool's tests use) and `file://localhost/abs`, with
/// `%XX` escapes. A URL naming another host is refused rather than read as a
/// path on this one.
fn file_url(s: &str) -> Result<Source> {
    let rest = &s["file:".len()..];
    let path = match rest.strip_prefix("//") {
        Some(auth) => {
            let (host, path) = auth.split_at(auth.find('/').unwrap_or(auth.len()));
            if !host.is_empty() && !host.eq_ignore_ascii_case("localhost") {
                return Err(Error::usage(format!(
                    "{s}: the file is on host `{host}`, and bty reads only local files: copy the image \
                     here (then use file:///PATH or a plain path), or serve it over http(s)://"
                )));
            }
            path
        }
        None => rest,
    };
    if !path.starts_with('/') {
        return Err(Error::usage(format!(
            "{s}: a file: URL needs an absolute path (file:///path/to/image); for a relative path give \
             the path alone"
        )));
    }
    let mut bytes = Vec::with_capacity(path.len());
    let mut it = path.bytes();
    while let Some(b) = it.next() {
        if b != b'%' {
            bytes.push(b);
            continue;
        }
        let hex = [it.next(), it.next()];
        let v = match hex {
            [Some(h), Some(l)] => {
                std::str::from_utf8(&[h, l]).ok().and_then(|t| u8::from_str_radix(t, 16).ok())
            }
            _ => None,
        };
        let Some(v) = v else {
            return Err(Error::usage(format!("{s}: a `%` in a file: URL must start a %XX escape")));
        };
        bytes.push(v);
    }
    use std::os::unix::ffi::OsStringExt;
    Ok(Source::File(PathBuf::from(std::ffi::OsString::from_vec(bytes))))
}

/// The published length of an http(s) image. Only a success describes the
/// image: an origin that answers HEAD with 405 or 501 still sends the
/// Content-Length of its error page. Then a one-byte ranged GET asks again
/// (206 carries the total in Content-Range, 200 the whole length); anything
/// else leaves the size unknown, and the download's own length decides.
fn http_len(url: &str) -> Result<Option<u64>> {
    let resp = agent().head(url).call().map_err(|e| http_error(url, e))?;
    if resp.status().is_success() {
        if let Some(n) = content_length(&resp) {
            return Ok(Some(n));
        }
    }
    let resp = agent().get(url).header("Range", "bytes=0-0").call().map_err(|e| http_error(url, e))?;
    // The body is not read: dropping the response closes the connection.
    Ok(match resp.status().as_u16() {
        206 => resp
            .headers()
            .get(ureq::http::header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit_once('/'))
            .and_then(|(_, total)| total.trim().parse().ok()),
        200 => content_length(&resp),
        _ => None,
    })
}

pub use crate::digest::parse_sha256_hex;

fn open_file(p: &Path) -> Result<File> {
    File::open(p).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            // A path that names nothing is a wrong invocation, not a failure.
            Error::io(format!("image {} does not exist", p.display()), e).with_kind(ErrorKind::Usage)
        } else {
            Error::io(format!("cannot open image {}", p.display()), e)
        }
    })
}

fn read_up_to(r: &mut dyn Read, n: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; n];
    let mut got = 0;
    while got < n {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(got);
    Ok(buf)
}

/// HTTP client shared by every request the engine makes. No automatic
/// decompression (image bytes must arrive as published) and no retries (a
/// retried GET restarts at byte 0 in the middle of a write).
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(15)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        .timeout_recv_body(None)
        .http_status_as_error(false)
        .user_agent(format!("bty/{}", crate::VERSION))
        .build()
        .into()
}

fn http_error(url: &str, e: ureq::Error) -> Error {
    // ureq prefixes its variants ("io: ", "timeout: "); the operator needs the cause.
    let cause = match &e {
        ureq::Error::Io(io) => io.to_string(),
        ureq::Error::Timeout(t) => format!("timed out ({t})"),
        ureq::Error::HostNotFound => "host not found (check the name, or DNS)".to_string(),
        ureq::Error::ConnectionFailed => "cannot connect".to_string(),
        other => other.to_string(),
    };
    Error::new(ErrorKind::Failure, format!("cannot fetch {url}: {cause}"))
}

fn content_length(resp: &ureq::http::Response<ureq::Body>) -> Option<u64> {
    resp.headers()
        .get(ureq::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

fn http_get(url: &str, range: Option<(u64, u64)>) -> Result<OpenedSource> {
    let mut req = agent().get(url);
    if let Some((a, b)) = range {
        req = req.header("Range", format!("bytes={a}-{b}"));
    }
    let resp = req.call().map_err(|e| http_error(url, e))?;
    let status = resp.status().as_u16();
    if !(200..300).contains(&status) {
        return Err(Error::failure(format!("cannot fetch {url}: HTTP {status}")));
    }
    let len = content_length(&resp);
    let reader = resp.into_body().into_reader();
    let mut reader: Box<dyn Read + Send> = match len {
        Some(n) => Box::new(ExactLen::new(reader, n, url.to_string())),
        None => Box::new(reader),
    };
    if let (Some((a, _)), 200) = (range, status) {
        // Server ignored the Range header: skip to the offset ourselves.
        io::copy(&mut (&mut reader).take(a), &mut io::sink())
            .map_err(|e| Error::io(format!("cannot read {url}"), e))?;
        return Ok(OpenedSource { reader, len: len.map(|l| l.saturating_sub(a)) });
    }
    Ok(OpenedSource { reader, len })
}

/// A reader that must deliver exactly `len` bytes: ending early is an
/// `UnexpectedEof` error naming the source and how much arrived.
pub struct ExactLen<R> {
    inner: R,
    remaining: u64,
    len: u64,
    what: String,
}

impl<R> ExactLen<R> {
    pub fn new(inner: R, len: u64, what: String) -> Self {
        ExactLen { inner, remaining: len, len, what }
    }
}

impl<R: Read> Read for ExactLen<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let cap = buf.len().min(self.remaining.min(usize::MAX as u64) as usize);
        let n = self.inner.read(&mut buf[..cap])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{} ended after {} of {} bytes (truncated download or file)",
                    self.what,
                    self.len - self.remaining,
                    self.len
                ),
            ));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_sources() {
        assert_eq!(Source::parse("/a/b.img").unwrap(), Source::File("/a/b.img".into()));
        assert_eq!(Source::parse("file:///a/b.img").unwrap(), Source::File("/a/b.img".into()));
        assert_eq!(Source::parse("file:/a/b.img").unwrap(), Source::File("/a/b.img".into()));
        assert_eq!(Source::parse("FILE://localhost/a/b.img").unwrap(), Source::File("/a/b.img".into()));
        assert_eq!(Source::parse("file:///a/my%20disk.img").unwrap(), Source::File("/a/my disk.img".into()));
        let e = Source::parse("file://nas/a/b.img").unwrap_err();
        assert!(e.to_string().contains("host `nas`") && e.to_string().contains("local files"), "{e}");
        assert_eq!(e.kind(), ErrorKind::Usage);
        assert!(Source::parse("file:a/b.img").unwrap_err().to_string().contains("absolute path"));
        assert!(Source::parse("file:///a%zz").unwrap_err().to_string().contains("%XX"));
        assert!(matches!(Source::parse("https://h/x.img.zst").unwrap(), Source::Http(_)));
        assert!(Source::parse("ftp://h/x").unwrap_err().to_string().contains("unsupported"));
        assert!(Source::parse("http:///x").is_err());
        assert_eq!(Source::parse("http://h/d/x.img.xz?sig=1").unwrap().name(), "x.img.xz");
        assert_eq!(
            Source::parse("/d/x.img.xz").unwrap().without_extension(),
            Some(Source::File("/d/x.img".into()))
        );
        assert_eq!(Source::parse("/d.x/img").unwrap().without_extension(), None);
        assert_eq!(Source::parse("/d/.hidden").unwrap().without_extension(), None);
        assert_eq!(
            Source::parse("http://h/x.img.gz?a=1").unwrap().without_extension(),
            Some(Source::Http("http://h/x.img?a=1".into()))
        );
        assert_eq!(
            Source::parse("http://h/x.img?a=1").unwrap().sibling(".sha256"),
            Source::Http("http://h/x.img.sha256?a=1".into())
        );
    }

    #[test]
    fn exact_len_detects_truncation() {
        let mut r = ExactLen::new(&b"abc"[..], 5, "test".into());
        let mut out = Vec::new();
        let err = r.read_to_end(&mut out).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(err.to_string().contains("3 of 5"));
    }

    #[test]
    fn a_refused_connection_names_its_cause_without_prefixes() {
        // A port nothing listens on: bound, then closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let url = format!("http://127.0.0.1:{port}/disk.img");
        let e = Source::parse(&url).unwrap().open().map(|_| ()).unwrap_err();
        let text = e.to_string();
        assert!(text.starts_with(&format!("cannot fetch {url}: ")), "{text}");
        assert!(text.to_ascii_lowercase().contains("refused"), "{text}");
        assert!(!text.contains("io:"), "{text}");
    }

    #[test]
    fn sha_hex() {
        let h = "A".repeat(64);
        assert_eq!(parse_sha256_hex(&format!("sha256:{h}")), Some("a".repeat(64)));
        assert_eq!(parse_sha256_hex("abc"), None);
    }
}
