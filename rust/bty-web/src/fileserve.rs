//! One file out of a directory, to clients nobody has logged in: the boot
//! directory's artifacts and the images directory's local images.
//!
//! A name never leads out of its directory: the path is resolved (symlinks
//! included) and must stay inside it, and only regular files are served, so
//! a symlink to `state.db`, a directory or a FIFO someone left there is a 404
//! rather than a leak, a dropped connection or a request that hangs.
//!
//! Range and the conditional headers follow RFC 9110: one byte range, a
//! suffix longer than the file is the whole file, another unit is ignored,
//! and `If-Range` that does not match the current `ETag`/`Last-Modified`
//! gets the whole file (so a resumed download never splices two versions).

use std::fs::Metadata;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

/// Read size for bodies: large enough that a multi-gigabyte image is not a
/// syscall storm, small enough to keep per-download memory modest.
const CHUNK: usize = 128 * 1024;

/// Why a file was not served.
#[derive(Debug)]
pub enum Refused {
    /// Nothing by that name (or the directory itself is missing).
    Missing,
    /// A directory, FIFO, socket or device: only regular files are served.
    NotAFile,
    /// The name resolves, through a symlink, to this path outside the directory.
    Outside(PathBuf),
    /// The file system cannot hold a name this long (`ENAMETOOLONG`).
    NameTooLong,
    Io(std::io::Error),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Missing => write!(f, "no such file"),
            Refused::NotAFile => write!(f, "not a regular file"),
            Refused::Outside(p) => write!(f, "resolves to {}, outside the directory", p.display()),
            Refused::NameTooLong => write!(f, "name too long for the file system"),
            Refused::Io(e) => write!(f, "{e}"),
        }
    }
}

fn classify(e: std::io::Error) -> Refused {
    match e.raw_os_error() {
        // ENOTDIR: a path component is a file. ELOOP: a symlink loop, or
        // (O_NOFOLLOW) the last component turned into a link after it was
        // resolved; neither names a file that can be served.
        Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP) => Refused::Missing,
        Some(libc::ENAMETOOLONG) => Refused::NameTooLong,
        _ => Refused::Io(e),
    }
}

fn open_inside(root: &Path, rel: &Path) -> Result<(std::fs::File, Metadata), Refused> {
    let root = std::fs::canonicalize(root).map_err(classify)?;
    let real = std::fs::canonicalize(root.join(rel)).map_err(classify)?;
    if !real.starts_with(&root) {
        return Err(Refused::Outside(real));
    }
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a
    // writer; on a regular file it changes nothing.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&real)
        .map_err(classify)?;
    let meta = file.metadata().map_err(Refused::Io)?;
    if !meta.is_file() {
        return Err(Refused::NotAFile);
    }
    // A directory on the way could have been swapped for a link between
    // resolving and opening; the kernel knows where the open file really is.
    if let Ok(now) = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())) {
        if !now.starts_with(&root) {
            return Err(Refused::Outside(now));
        }
    }
    Ok((file, meta))
}

/// The validators a client can send back in `If-Range`, `If-None-Match` etc.
struct Validators {
    etag: String,
    /// Whole seconds: HTTP dates have no finer resolution.
    modified: Option<SystemTime>,
}

impl Validators {
    fn of(meta: &Metadata) -> Validators {
        // Inode, size and mtime in nanoseconds: an upload or netboot fetch
        // renames a new file into place, so each version differs in all three.
        let etag =
            format!("\"{:x}-{:x}-{:x}{:09x}\"", meta.ino(), meta.len(), meta.mtime(), meta.mtime_nsec());
        let modified = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| UNIX_EPOCH + Duration::from_secs(d.as_secs()));
        Validators { etag, modified }
    }

    /// Strong comparison (RFC 9110 §8.8.3.2): a weak tag never matches.
    fn strong_match(&self, tag: &str) -> bool {
        !tag.starts_with("W/") && tag == self.etag
    }

    fn weak_match(&self, tag: &str) -> bool {
        tag.strip_prefix("W/").unwrap_or(tag) == self.etag
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &header::HeaderName) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim)
}

fn tags(list: &str) -> impl Iterator<Item = &str> {
    list.split(',').map(str::trim).filter(|t| !t.is_empty())
}

fn date(headers: &HeaderMap, name: &header::HeaderName) -> Option<SystemTime> {
    header_str(headers, name).and_then(|v| httpdate::parse_http_date(v).ok())
}

/// RFC 9110 §13.2.2, steps 1–4: `Some(status)` answers the request without a body.
fn preconditions(headers: &HeaderMap, v: &Validators) -> Option<StatusCode> {
    if let Some(list) = header_str(headers, &header::IF_MATCH) {
        if !(list == "*" || tags(list).any(|t| v.strong_match(t))) {
            return Some(StatusCode::PRECONDITION_FAILED);
        }
    } else if let (Some(since), Some(m)) = (date(headers, &header::IF_UNMODIFIED_SINCE), v.modified) {
        if m > since {
            return Some(StatusCode::PRECONDITION_FAILED);
        }
    }
    if let Some(list) = header_str(headers, &header::IF_NONE_MATCH) {
        if list == "*" || tags(list).any(|t| v.weak_match(t)) {
            return Some(StatusCode::NOT_MODIFIED);
        }
    } else if let (Some(since), Some(m)) = (date(headers, &header::IF_MODIFIED_SINCE), v.modified) {
        if m <= since {
            return Some(StatusCode::NOT_MODIFIED);
        }
    }
    None
}

/// `If-Range` (RFC 9110 §13.1.5): the range applies only to the version the
/// client already holds part of. A date must equal `Last-Modified` exactly;
/// anything unparseable counts as a mismatch.
fn if_range_holds(headers: &HeaderMap, v: &Validators) -> bool {
    let Some(value) = header_str(headers, &header::IF_RANGE) else {
        return true;
    };
    if value.starts_with('"') || value.starts_with("W/") {
        return v.strong_match(value);
    }
    match (httpdate::parse_http_date(value), v.modified) {
        (Ok(d), Some(m)) => d == m,
        _ => false,
    }
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Ranged {
    /// No range to honour: the whole file, 200.
    Whole,
    /// First and last byte, inclusive: 206.
    Part(u64, u64),
    /// 416, with why.
    Unsatisfiable(&'static str),
}

fn position(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Digits beyond u64 are still a position, just past any file's end.
    Some(s.parse().unwrap_or(u64::MAX))
}

/// A `Range` value against a file of `len` bytes (RFC 9110 §14.1.2).
pub(crate) fn range(value: &str, len: u64) -> Ranged {
    let Some((unit, set)) = value.split_once('=') else {
        return Ranged::Whole;
    };
    // Units other than bytes are ignored, not refused (§14.2).
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return Ranged::Whole;
    }
    let specs: Vec<&str> = set.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    let [spec] = specs.as_slice() else {
        return Ranged::Unsatisfiable(if specs.is_empty() {
            "the range has no byte positions"
        } else {
            "more than one range in a request is not served; ask for one range at a time"
        });
    };
    let Some((first, last)) = spec.split_once('-') else {
        return Ranged::Unsatisfiable("the range is not of the form FIRST-LAST, FIRST- or -SUFFIX");
    };
    let (first, last) = (first.trim(), last.trim());
    let outside = Ranged::Unsatisfiable("the range starts at or beyond the end of the file");
    match (position(first), position(last), first.is_empty()) {
        // A suffix longer than the file is the whole file (§14.1.2).
        (None, Some(n), true) if n > 0 && len > 0 => Ranged::Part(len.saturating_sub(n), len - 1),
        (None, Some(_), true) => Ranged::Unsatisfiable("an empty suffix (or file) has no bytes to send"),
        (Some(a), None, false) if last.is_empty() => {
            if a < len {
                Ranged::Part(a, len - 1)
            } else {
                outside
            }
        }
        (Some(a), Some(b), false) if a <= b => {
            if a < len {
                Ranged::Part(a, b.min(len - 1))
            } else {
                outside
            }
        }
        _ => Ranged::Unsatisfiable("the range is not of the form FIRST-LAST, FIRST- or -SUFFIX"),
    }
}

fn content_type(rel: &Path) -> &'static str {
    match rel.extension().and_then(|e| e.to_str()) {
        Some("json") => "application/json",
        Some("ipxe" | "txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// Serve `root/rel` for GET or HEAD, or say why it is not served.
pub async fn serve(
    root: &Path,
    rel: &Path,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Response, Refused> {
    let (r, p) = (root.to_path_buf(), rel.to_path_buf());
    let (file, meta) = tokio::task::spawn_blocking(move || open_inside(&r, &p))
        .await
        .map_err(|e| Refused::Io(std::io::Error::other(e)))??;
    let len = meta.len();
    let v = Validators::of(&meta);
    let mut resp = Response::builder()
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::ETAG, HeaderValue::from_str(&v.etag).expect("hex and quotes"));
    if let Some(m) = v.modified {
        resp = resp.header(header::LAST_MODIFIED, httpdate::fmt_http_date(m));
    }
    if let Some(status) = preconditions(headers, &v) {
        return Ok(resp.status(status).body(Body::empty()).expect("static headers"));
    }
    // Range is defined for GET only (§14.2); HEAD describes the whole file.
    let ranged = match header_str(headers, &header::RANGE) {
        Some(value) if *method == Method::GET && if_range_holds(headers, &v) => range(value, len),
        _ => Ranged::Whole,
    };
    let (status, start, count) = match ranged {
        Ranged::Whole => (StatusCode::OK, 0, len),
        Ranged::Part(a, b) => {
            resp = resp.header(header::CONTENT_RANGE, format!("bytes {a}-{b}/{len}"));
            (StatusCode::PARTIAL_CONTENT, a, b - a + 1)
        }
        Ranged::Unsatisfiable(why) => {
            let body =
                serde_json::json!({ "error": format!("{why} ({len} bytes); Content-Range gives the size") });
            return Ok(resp
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::CONTENT_RANGE, format!("bytes */{len}"))
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.to_string()))
                .expect("static headers"));
        }
    };
    let resp = resp
        .status(status)
        .header(header::CONTENT_TYPE, content_type(rel))
        .header(header::CONTENT_LENGTH, count);
    if *method == Method::HEAD {
        return Ok(resp.body(Body::empty()).expect("static headers"));
    }
    let mut file = tokio::fs::File::from_std(file);
    if start > 0 {
        file.seek(std::io::SeekFrom::Start(start)).await.map_err(Refused::Io)?;
    }
    // A file cut short while it streams ends the body early; with the
    // Content-Length already sent, the client sees a broken transfer.
    let body = Body::from_stream(tokio_util::io::ReaderStream::with_capacity(file.take(count), CHUNK));
    Ok(resp.body(body).expect("static headers"))
}

#[cfg(test)]
mod tests {
    use super::{range, Ranged};

    #[test]
    fn ranges_per_rfc_9110() {
        assert_eq!(range("bytes=0-9", 100), Ranged::Part(0, 9));
        assert_eq!(range("bytes=90-", 100), Ranged::Part(90, 99));
        assert_eq!(range("bytes=90-1000", 100), Ranged::Part(90, 99));
        assert_eq!(range("bytes=-10", 100), Ranged::Part(90, 99));
        assert_eq!(range("bytes=-99999", 100), Ranged::Part(0, 99));
        assert_eq!(range("bytes=0-99999999999999999999999", 100), Ranged::Part(0, 99));
        assert_eq!(range("Bytes = 1-2", 100), Ranged::Part(1, 2));
        assert_eq!(range("items=0-5", 100), Ranged::Whole);
        assert_eq!(range("nonsense", 100), Ranged::Whole);
        for bad in ["bytes=100-", "bytes=5-4", "bytes=-0", "bytes=", "bytes=a-b", "bytes=0-1,5-6", "bytes=1"]
        {
            assert!(matches!(range(bad, 100), Ranged::Unsatisfiable(_)), "{bad}");
        }
        assert!(matches!(range("bytes=-5", 0), Ranged::Unsatisfiable(_)));
        assert!(matches!(range("bytes=0-", 0), Ranged::Unsatisfiable(_)));
    }
}
