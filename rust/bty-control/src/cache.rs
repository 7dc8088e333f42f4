//! The image cache: one upstream download per image for the whole fleet.
//!
//! Entries are keyed by the image's SHA-256 (the catalog's, or an OCI
//! layer's digest) and stored as `<cache_dir>/sha256/<hex>`; a fill in
//! progress is `<cache_dir>/partial/<hex>`. The metadata (state, hits, last
//! use) is the `cache_entries` table.
//!
//! - **Single flight.** The first reader of a missing entry starts one fill;
//!   every reader, arriving at any time, tails the partial file as it grows,
//!   at its own speed ([`Tail`]). A range is served once its bytes are there.
//! - **Never a complete-looking wrong image.** The last byte of an entry is
//!   handed out only after the digest matched; on a mismatch, or an origin
//!   that changes under a resume (`If-Range` answered 200), every reader's
//!   stream ends in an error short of its length, the partial is deleted and
//!   a tripwire names the image.
//! - **Resumes.** A broken upstream stream is resumed with `Range` a bounded
//!   number of times; a fill that gives up, a restart or `kill -9` leave the
//!   partial file, and the next fill re-hashes it and resumes after it.
//! - **Eviction.** Least recently used first, to stay under `max_bytes` and
//!   above a free-space floor; never an entry being read or one the caller
//!   pins (images bound to machines with a flash policy).

use std::collections::{HashMap, HashSet};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bty_core::oci::OciSource;
use futures_util::StreamExt;
use rusqlite::{params, OptionalExtension};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::audit::{self, Actor, NewEvent};
use crate::clock;
use crate::db::Db;

/// Upstream attempts of one fill before it gives up (the partial is kept).
const ATTEMPTS: u32 = 5;
/// How long a reader waits for bytes that do not come before it gives up.
const STALL: Duration = Duration::from_secs(60);
/// Bytes a reader reads from the file at a time.
const CHUNK: usize = 256 << 10;
/// File reads in flight at once, over all readers (page-cache reads of a
/// chunk take tens of microseconds; more would only grow the blocking pool).
const PARALLEL_READS: usize = 4;

#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub dir: PathBuf,
    pub max_bytes: u64,
    /// Free space kept on the cache's filesystem.
    pub min_free_bytes: u64,
}

/// Where an image's bytes come from.
#[derive(Clone)]
pub enum Upstream {
    Http(String),
    Oci(Arc<OciSource>),
}

/// An image the cache can hold: its catalog name, its canonical source and
/// the SHA-256 its bytes must have.
#[derive(Clone)]
pub struct Wanted {
    pub name: String,
    pub src: String,
    pub upstream: Upstream,
    /// Lowercase hex.
    pub sha256: String,
    /// Size from the catalog or the OCI descriptor, when known.
    pub size: Option<u64>,
}

#[derive(Debug, Clone, Default)]
struct Progress {
    size: Option<u64>,
    /// Bytes a reader may take: all that is written, less the last byte
    /// until the digest has matched.
    visible: u64,
    outcome: Option<Result<(), String>>,
}

struct Fill {
    progress: watch::Sender<Progress>,
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    upstream_bytes: AtomicU64,
    evictions: AtomicU64,
}

/// The counters `/metrics` shows.
#[derive(Debug, Clone, Copy, Default)]
pub struct CacheCounters {
    pub hits: u64,
    pub misses: u64,
    pub upstream_bytes: u64,
    pub evictions: u64,
}

struct Inner {
    config: CacheConfig,
    db: Db,
    http: reqwest::Client,
    fills: Mutex<HashMap<String, Arc<Fill>>>,
    /// Digest → open readers.
    readers: Mutex<HashMap<String, usize>>,
    counters: Counters,
    /// Cancelled when the server stops: fills end, readers' streams with them.
    stop: CancellationToken,
    /// File reads of all readers in flight at once.
    reads: Arc<tokio::sync::Semaphore>,
}

#[derive(Clone)]
pub struct ImageCache {
    inner: Arc<Inner>,
}

/// A row of the Images page and `GET /cache`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EntryInfo {
    pub digest: String,
    pub name: String,
    pub src: String,
    pub size: Option<u64>,
    /// `filling` (with `filled` bytes so far), `complete` or `failed`.
    pub state: String,
    pub filled: Option<u64>,
    pub error: Option<String>,
    pub hits: u64,
    pub upstream_bytes: u64,
    pub last_access: Option<String>,
    pub readers: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// Not enough room even after evicting what may be evicted.
    #[error("the cache has no room for {name} ({need} bytes): {why}")]
    NoRoom { name: String, need: u64, why: String },
    #[error("{0}")]
    Failed(String),
}

/// An entry opened for reading: its size and a way to read any range of it.
pub struct Opened {
    inner: Arc<Inner>,
    digest: String,
    /// Counts this reader until it is dropped (eviction skips read entries).
    guard: ReaderGuard,
    pub size: u64,
    /// Served from a complete entry (a hit) or while filling.
    pub hit: bool,
    progress: watch::Receiver<Progress>,
}

impl ImageCache {
    /// `stop`: cancelled when the server shuts down; running fills end
    /// (keeping their partial files) so that readers do not hold it up.
    pub fn new(
        config: CacheConfig,
        db: Db,
        http: reqwest::Client,
        stop: CancellationToken,
    ) -> std::io::Result<ImageCache> {
        std::fs::create_dir_all(config.dir.join("sha256"))?;
        std::fs::create_dir_all(config.dir.join("partial"))?;
        Ok(ImageCache {
            inner: Arc::new(Inner {
                config,
                db,
                http,
                fills: Mutex::new(HashMap::new()),
                readers: Mutex::new(HashMap::new()),
                counters: Counters::default(),
                stop,
                reads: Arc::new(tokio::sync::Semaphore::new(PARALLEL_READS)),
            }),
        })
    }

    pub fn counters(&self) -> CacheCounters {
        let c = &self.inner.counters;
        CacheCounters {
            hits: c.hits.load(Ordering::Relaxed),
            misses: c.misses.load(Ordering::Relaxed),
            upstream_bytes: c.upstream_bytes.load(Ordering::Relaxed),
            evictions: c.evictions.load(Ordering::Relaxed),
        }
    }

    /// Bytes on disk: complete entries and partial files.
    pub fn held_bytes(&self) -> u64 {
        ["sha256", "partial"]
            .iter()
            .filter_map(|d| std::fs::read_dir(self.inner.config.dir.join(d)).ok())
            .flatten()
            .filter_map(|e| e.ok()?.metadata().ok())
            .filter(|m| m.is_file())
            .map(|m| m.len())
            .sum()
    }

    fn blob(&self, sha: &str) -> PathBuf {
        self.inner.config.dir.join("sha256").join(sha)
    }

    /// Open `w` for reading: at once from a complete entry, else from the
    /// fill (started now unless one runs). `pinned`: digests eviction must
    /// keep (it may run to make room).
    pub async fn open(&self, w: &Wanted, pinned: &HashSet<String>) -> Result<Opened, CacheError> {
        let (rx, hit) = self.start(w, pinned, true).await?;
        let mut rx = rx;
        // The size is known once the origin has answered.
        let size = loop {
            let p = rx.borrow_and_update().clone();
            if let Some(s) = p.size {
                break s;
            }
            if let Some(Err(e)) = p.outcome {
                return Err(CacheError::Failed(e));
            }
            if tokio::time::timeout(STALL, rx.changed()).await.map(|r| r.is_err()).unwrap_or(true) {
                return Err(CacheError::Failed(format!("{}: the origin did not answer", w.name)));
            }
        };
        *self.inner.readers.lock().unwrap_or_else(|e| e.into_inner()).entry(w.sha256.clone()).or_default() +=
            1;
        let guard = ReaderGuard { inner: self.inner.clone(), digest: w.sha256.clone() };
        Ok(Opened { inner: self.inner.clone(), digest: w.sha256.clone(), guard, size, hit, progress: rx })
    }

    /// Fill `w` with no reader waiting (a machine was just bound to it).
    pub async fn prefetch(&self, w: &Wanted, pinned: &HashSet<String>) -> Result<(), CacheError> {
        self.start(w, pinned, false).await.map(|_| ())
    }

    /// The progress of `w`'s entry, starting a fill when it is missing.
    async fn start(
        &self,
        w: &Wanted,
        pinned: &HashSet<String>,
        count: bool,
    ) -> Result<(watch::Receiver<Progress>, bool), CacheError> {
        let blob = self.blob(&w.sha256);
        if let Ok(m) = tokio::fs::metadata(&blob).await {
            if count {
                self.inner.counters.hits.fetch_add(1, Ordering::Relaxed);
                self.touch(&w.sha256, true).await;
            }
            let done = Progress { size: Some(m.len()), visible: m.len(), outcome: Some(Ok(())) };
            return Ok((watch::channel(done).1, true));
        }
        let joined = self
            .inner
            .fills
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&w.sha256)
            .map(|f| f.progress.subscribe());
        if let Some(rx) = joined {
            if count {
                self.inner.counters.hits.fetch_add(1, Ordering::Relaxed);
                self.touch(&w.sha256, true).await;
            }
            return Ok((rx, false));
        }
        if let Some(need) = w.size {
            self.make_room(need, pinned, Some(&w.sha256)).await.map_err(|why| CacheError::NoRoom {
                name: w.name.clone(),
                need,
                why,
            })?;
        }
        let (tx, rx) = watch::channel(Progress::default());
        {
            let mut fills = self.inner.fills.lock().unwrap_or_else(|e| e.into_inner());
            // Another request may have started it meanwhile.
            if let Some(f) = fills.get(&w.sha256) {
                return Ok((f.progress.subscribe(), false));
            }
            fills.insert(w.sha256.clone(), Arc::new(Fill { progress: tx.clone() }));
        }
        if count {
            self.inner.counters.misses.fetch_add(1, Ordering::Relaxed);
        }
        self.record_start(w).await;
        let cache = self.clone();
        let (w, pinned) = (w.clone(), pinned.clone());
        tokio::spawn(async move {
            let result = tokio::select! {
                r = cache.fill(&w, &pinned, &tx) => r,
                () = cache.inner.stop.cancelled() => {
                    // The partial stays, and so does the row's `filling`
                    // state: the next start resumes it. No tripwire.
                    tx.send_modify(|p| p.outcome = Some(Err("the server is shutting down".into())));
                    cache.inner.fills.lock().unwrap_or_else(|e| e.into_inner()).remove(&w.sha256);
                    return;
                }
            };
            cache.finish(&w, &tx, result).await;
        });
        Ok((rx, false))
    }

    async fn record_start(&self, w: &Wanted) {
        let (sha, name, src, size) = (w.sha256.clone(), w.name.clone(), w.src.clone(), w.size);
        let _ = self
            .inner
            .db
            .write(move |c| {
                c.execute(
                    "INSERT INTO cache_entries (digest, name, src, size, state, created_at, last_access, access_ms)
                     VALUES (?1, ?2, ?3, ?4, 'filling', ?5, ?5, ?6)
                     ON CONFLICT(digest) DO UPDATE SET name = ?2, src = ?3, size = coalesce(?4, size),
                       state = 'filling', error = NULL, last_access = ?5, access_ms = ?6",
                    params![sha, name, src, size.map(|s| s as i64), clock::now_rfc3339(), now_ms()],
                )
                .map(|_| ())
            })
            .await
            .map_err(|e: rusqlite::Error| tracing::warn!(error = %e, "cache: cannot record a fill"));
    }

    async fn touch(&self, sha: &str, hit: bool) {
        let sha = sha.to_string();
        let _ = self
            .inner
            .db
            .write(move |c| {
                c.execute(
                    "UPDATE cache_entries SET hits = hits + ?2, last_access = ?3, access_ms = ?4 WHERE digest = ?1",
                    params![sha, hit as i64, clock::now_rfc3339(), now_ms()],
                )
                .map(|_| ())
            })
            .await
            .map_err(|e: rusqlite::Error| tracing::warn!(error = %e, "cache: cannot record a hit"));
    }

    /// Download `w` into its partial file, resuming after what is there.
    async fn fill(
        &self,
        w: &Wanted,
        pinned: &HashSet<String>,
        tx: &watch::Sender<Progress>,
    ) -> Result<(), String> {
        let partial = self.inner.config.dir.join("partial").join(&w.sha256);
        let (mut file, mut hasher, mut have) = {
            let p = partial.clone();
            tokio::task::spawn_blocking(move || reopen_partial(&p))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("cannot open {}: {e}", partial.display()))?
        };
        if have > 0 {
            tracing::info!(image = %w.name, bytes = have, "cache: resuming a partial fill");
        }
        let mut size = w.size;
        // Readers learn the size at once when the catalog has it (a partial
        // already whole ends the loop before any upstream answer).
        if size.is_some() {
            tx.send_modify(|p| p.size = size);
        }
        let mut validator: Option<String> = None;
        let mut attempt = 0;
        loop {
            if let Some(s) = size {
                if have >= s {
                    break;
                }
            }
            attempt += 1;
            let opened = open_upstream(&self.inner.http, &w.upstream, have, validator.as_deref()).await;
            let (total, mut body, v) = match opened {
                Ok(o) => o,
                Err(Upstream_::Whole(t)) if t == have => {
                    size = Some(t);
                    tx.send_modify(|p| p.size = size);
                    break;
                }
                Err(Upstream_::Whole(t)) => return Err(format!("the origin has {t} bytes, {have} are held")),
                Err(Upstream_::Fatal(e)) => return Err(e),
                Err(Upstream_::Retry(e)) if attempt < ATTEMPTS => {
                    tracing::warn!(image = %w.name, attempt, "cache: upstream failed, retrying: {e}");
                    tokio::time::sleep(Duration::from_millis(250 << attempt.min(5))).await;
                    continue;
                }
                Err(Upstream_::Retry(e)) => return Err(format!("gave up after {ATTEMPTS} attempts: {e}")),
            };
            if validator.is_none() {
                validator = v;
            }
            match (size, total) {
                (Some(s), Some(t)) if s != t => {
                    return Err(format!("the origin has {t} bytes, the catalog says {s}"));
                }
                (None, Some(t)) => {
                    // The catalog did not say: room is made now the origin has.
                    self.make_room(t.saturating_sub(have), pinned, Some(&w.sha256))
                        .await
                        .map_err(|why| format!("the cache has no room for its {t} bytes: {why}"))?;
                    size = Some(t)
                }
                _ => {}
            }
            let Some(total) = size else {
                return Err("the origin does not say how large the image is (no Content-Length)".into());
            };
            tx.send_modify(|p| p.size = Some(total));
            let mut broke = None;
            while let Some(chunk) = body.next().await {
                match chunk {
                    Ok(bytes) => {
                        if have + bytes.len() as u64 > total {
                            return Err(format!("the origin sent more than {total} bytes"));
                        }
                        let (f, b) = (file, bytes);
                        let r = tokio::task::spawn_blocking(move || {
                            let mut f = f;
                            f.write_all(&b).map(|_| (f, b))
                        })
                        .await
                        .map_err(|e| e.to_string())?;
                        let (f, b) = r.map_err(|e| format!("cannot write the cache file: {e}"))?;
                        file = f;
                        hasher.update(&b);
                        have += b.len() as u64;
                        self.inner.counters.upstream_bytes.fetch_add(b.len() as u64, Ordering::Relaxed);
                        let visible = have.min(total.saturating_sub(1));
                        tx.send_modify(|p| p.visible = visible);
                    }
                    Err(e) => {
                        broke = Some(e);
                        break;
                    }
                }
            }
            if have >= total {
                break;
            }
            let why = broke.unwrap_or_else(|| format!("the stream ended after {have} of {total} bytes"));
            if attempt >= ATTEMPTS {
                return Err(format!("gave up after {ATTEMPTS} attempts: {why}"));
            }
            tracing::warn!(image = %w.name, at = have, "cache: upstream stream broke, resuming: {why}");
            tokio::time::sleep(Duration::from_millis(250 << attempt.min(5))).await;
        }
        let got = hex::encode(hasher.finalize());
        if got != w.sha256 {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(format!(
                "digest mismatch: the bytes from {} hash to {got}, the catalog says {}; the origin holds a \
                 different or damaged file",
                w.src, w.sha256
            ));
        }
        let blob = self.blob(&w.sha256);
        tokio::task::spawn_blocking(move || {
            file.sync_all()?;
            std::fs::rename(&partial, &blob)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot commit the cache file: {e}"))?;
        Ok(())
    }

    /// End a fill: the record first, then the readers' last word, then the
    /// fill's slot. In that order, whoever has read a whole image finds its
    /// entry complete in `GET /cache` and on the Images page.
    async fn finish(&self, w: &Wanted, tx: &watch::Sender<Progress>, result: Result<(), String>) {
        let (sha, name, err) = (w.sha256.clone(), w.name.clone(), result.as_ref().err().cloned());
        let size = tx.borrow().size;
        let _ = self
            .inner
            .db
            .write(move |c| {
                let now = clock::now_rfc3339();
                match &err {
                    None => c.execute(
                        "UPDATE cache_entries SET state = 'complete', error = NULL, size = coalesce(?2, size),
                           completed_at = ?3, upstream_bytes = upstream_bytes + coalesce(?2, 0) WHERE digest = ?1",
                        params![sha, size.map(|s| s as i64), now],
                    )?,
                    Some(e) => {
                        audit::insert(
                            c,
                            &NewEvent::new("cache.fill.failed", Actor::System, format!("image {name}: {e}"))
                                .subject("image", name.clone())
                                .details(serde_json::json!({"digest": sha, "error": e})),
                        )?;
                        c.execute(
                            "UPDATE cache_entries SET state = 'failed', error = ?2 WHERE digest = ?1",
                            params![sha, e],
                        )?
                    }
                };
                Ok(())
            })
            .await
            .map_err(|e: rusqlite::Error| tracing::warn!(error = %e, "cache: cannot record a fill's end"));
        match &result {
            Ok(()) => {
                tx.send_modify(|p| {
                    p.visible = p.size.unwrap_or(p.visible);
                    p.outcome = Some(Ok(()));
                });
                tracing::info!(image = %w.name, "cache: filled");
            }
            Err(e) => {
                tx.send_modify(|p| p.outcome = Some(Err(e.clone())));
                tracing::warn!(image = %w.name, "cache: fill failed: {e}");
            }
        }
        self.inner.fills.lock().unwrap_or_else(|e| e.into_inner()).remove(&w.sha256);
    }

    /// Evict least recently used complete entries until `need` more bytes
    /// fit under `max_bytes` and above the free-space floor.
    async fn make_room(&self, need: u64, pinned: &HashSet<String>, keep: Option<&str>) -> Result<(), String> {
        let max = self.inner.config.max_bytes;
        if need > max {
            return Err(format!("it is larger than [cache] max_bytes ({max})"));
        }
        let rows: Vec<(String, i64)> = self
            .inner
            .db
            .read(|c| {
                let mut st = c.prepare(
                    "SELECT digest, coalesce(size, 0) FROM cache_entries WHERE state = 'complete'
                     ORDER BY access_ms",
                )?;
                let rows =
                    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<rusqlite::Result<Vec<_>>>();
                rows
            })
            .await
            .map_err(|e: rusqlite::Error| e.to_string())?;
        let filling: u64 = self
            .inner
            .fills
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter_map(|f| f.progress.borrow().size)
            .sum();
        let mut used: u64 = rows.iter().map(|(_, s)| *s as u64).sum::<u64>() + filling;
        let floor = self.inner.config.min_free_bytes;
        let mut free = free_bytes(&self.inner.config.dir).unwrap_or(u64::MAX);
        for (sha, size) in rows {
            if used + need <= max && free.saturating_sub(need) >= floor {
                return Ok(());
            }
            let busy =
                self.inner.readers.lock().unwrap_or_else(|e| e.into_inner()).get(&sha).copied().unwrap_or(0)
                    > 0;
            if busy || pinned.contains(&sha) || keep == Some(sha.as_str()) {
                continue;
            }
            if self.remove(&sha).await {
                used = used.saturating_sub(size as u64);
                free = free.saturating_add(size as u64);
                self.inner.counters.evictions.fetch_add(1, Ordering::Relaxed);
                tracing::info!(digest = %sha, bytes = size, "cache: evicted (least recently used)");
            }
        }
        if used + need <= max && free.saturating_sub(need) >= floor {
            Ok(())
        } else if used + need > max {
            Err(format!(
                "{used} of [cache] max_bytes {max} are held by entries being read or bound to machines with a flash policy"
            ))
        } else {
            Err(format!("the cache's filesystem has {free} bytes free and [cache] min_free_bytes is {floor}"))
        }
    }

    async fn remove(&self, sha: &str) -> bool {
        let removed = tokio::fs::remove_file(self.blob(sha)).await.is_ok();
        let _ = tokio::fs::remove_file(self.inner.config.dir.join("partial").join(sha)).await;
        let s = sha.to_string();
        let _ = self
            .inner
            .db
            .write(move |c| c.execute("DELETE FROM cache_entries WHERE digest = ?1", [s]).map(|_| ()))
            .await
            .map_err(|e: rusqlite::Error| tracing::warn!(error = %e, "cache: cannot forget an entry"));
        removed
    }

    /// Evict one entry by hand. Refused while it is being read or filled.
    pub async fn evict(&self, sha: &str) -> Result<bool, CacheError> {
        if self.inner.fills.lock().unwrap_or_else(|e| e.into_inner()).contains_key(sha) {
            return Err(CacheError::Failed("it is being filled; evict it once the fill ends".into()));
        }
        if self.inner.readers.lock().unwrap_or_else(|e| e.into_inner()).get(sha).copied().unwrap_or(0) > 0 {
            return Err(CacheError::Failed("machines are reading it; evict it once they are done".into()));
        }
        let known = self.blob(sha).exists() || self.inner.config.dir.join("partial").join(sha).exists();
        self.remove(sha).await;
        if known {
            self.inner.counters.evictions.fetch_add(1, Ordering::Relaxed);
        }
        Ok(known)
    }

    /// Every entry the database knows, most recently used first.
    pub async fn entries(&self) -> Vec<EntryInfo> {
        let rows = self
            .inner
            .db
            .read(|c| {
                let mut st = c.prepare(
                    "SELECT digest, name, src, size, state, error, hits, upstream_bytes, last_access
                     FROM cache_entries ORDER BY access_ms DESC",
                )?;
                let rows = st
                    .query_map([], |r| {
                        Ok(EntryInfo {
                            digest: r.get(0)?,
                            name: r.get(1)?,
                            src: r.get(2)?,
                            size: r.get::<_, Option<i64>>(3)?.map(|s| s as u64),
                            state: r.get(4)?,
                            filled: None,
                            error: r.get(5)?,
                            hits: r.get::<_, i64>(6)? as u64,
                            upstream_bytes: r.get::<_, i64>(7)? as u64,
                            last_access: r.get(8)?,
                            readers: 0,
                        })
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>();
                rows
            })
            .await
            .unwrap_or_else(|e: rusqlite::Error| {
                tracing::warn!(error = %e, "cache: cannot list entries");
                Vec::new()
            });
        let fills = self.inner.fills.lock().unwrap_or_else(|e| e.into_inner());
        let readers = self.inner.readers.lock().unwrap_or_else(|e| e.into_inner());
        rows.into_iter()
            .map(|mut e| {
                e.readers = readers.get(&e.digest).copied().unwrap_or(0);
                if let Some(f) = fills.get(&e.digest).filter(|f| f.progress.borrow().outcome.is_none()) {
                    e.state = "filling".into();
                    e.filled = Some(f.progress.borrow().visible);
                } else if fills.contains_key(&e.digest) {
                    // Ended a moment ago: the row says how.
                } else if e.state == "filling" {
                    // Not running: a fill interrupted by a restart (or one that
                    // gave up); its partial is resumed by the next request.
                    e.state = "partial".into();
                    e.filled = std::fs::metadata(self.inner.config.dir.join("partial").join(&e.digest))
                        .ok()
                        .map(|m| m.len());
                } else if e.state == "complete" && !self.blob(&e.digest).exists() {
                    e.state = "missing".into();
                }
                e
            })
            .collect()
    }

    /// The entry for one digest, if the database knows it.
    pub async fn entry(&self, sha: &str) -> Option<EntryInfo> {
        self.entries().await.into_iter().find(|e| e.digest == sha)
    }

    /// Digests eviction must keep: the images of machines whose policy will
    /// flash them. An `oras://` entry without a digest in the catalog (its
    /// tag decides) is found by name among the entries.
    pub async fn pinned(&self, catalog: &bty_core::catalog::Catalog) -> HashSet<String> {
        let names: Vec<String> = self
            .inner
            .db
            .read(|c| {
                let mut st = c.prepare(
                    "SELECT DISTINCT image FROM machines WHERE image IS NOT NULL AND policy IN ('flash', 'flash-once')",
                )?;
                let rows = st.query_map([], |r| r.get::<_, String>(0))?.collect::<rusqlite::Result<Vec<_>>>();
                rows
            })
            .await
            .unwrap_or_else(|e: rusqlite::Error| {
                tracing::warn!(error = %e, "cache: cannot read the bound images");
                Vec::new()
            });
        let mut pinned: HashSet<String> =
            names.iter().filter_map(|n| catalog.get(n)?.sha256.clone()).collect();
        let by_name: Vec<String> =
            names.into_iter().filter(|n| catalog.get(n).is_some_and(|e| e.sha256.is_none())).collect();
        if !by_name.is_empty() {
            let found = self
                .inner
                .db
                .read(move |c| {
                    let mut st = c.prepare("SELECT digest FROM cache_entries WHERE name = ?1")?;
                    let mut out = Vec::new();
                    for n in &by_name {
                        out.extend(
                            st.query_map([n], |r| r.get::<_, String>(0))?
                                .collect::<rusqlite::Result<Vec<_>>>()?,
                        );
                    }
                    Ok(out)
                })
                .await
                .unwrap_or_else(|e: rusqlite::Error| {
                    tracing::warn!(error = %e, "cache: cannot read pinned entries");
                    Vec::new()
                });
            pinned.extend(found);
        }
        pinned
    }

    /// Forget rows whose files are gone (deleted by hand) and mark complete
    /// rows without a blob; run at start.
    pub async fn reconcile(&self) {
        let dir = self.inner.config.dir.clone();
        let _ = self
            .inner
            .db
            .write(move |c| {
                let gone: Vec<String> = {
                    let mut st = c.prepare("SELECT digest FROM cache_entries WHERE state = 'complete'")?;
                    let all =
                        st.query_map([], |r| r.get::<_, String>(0))?.collect::<rusqlite::Result<Vec<_>>>()?;
                    all.into_iter().filter(|d| !dir.join("sha256").join(d).exists()).collect()
                };
                for d in gone {
                    c.execute("DELETE FROM cache_entries WHERE digest = ?1", [d])?;
                }
                let _: Option<i64> = c.query_row("SELECT 1", [], |r| r.get(0)).optional()?;
                Ok(())
            })
            .await
            .map_err(|e: rusqlite::Error| tracing::warn!(error = %e, "cache: cannot reconcile"));
    }
}

fn now_ms() -> i64 {
    (clock::now().unix_timestamp_nanos() / 1_000_000) as i64
}

/// The partial file opened for appending, its bytes hashed again.
fn reopen_partial(p: &Path) -> std::io::Result<(std::fs::File, Sha256, u64)> {
    let mut f = std::fs::OpenOptions::new().create(true).read(true).append(true).open(p)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut have = 0u64;
    f.seek(SeekFrom::Start(0))?;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        have += n as u64;
    }
    Ok((f, hasher, have))
}

fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and a zeroed statvfs to fill.
    (unsafe { libc::statvfs(c.as_ptr(), &mut s) } == 0).then(|| s.f_bavail as u64 * s.f_frsize as u64)
}

#[allow(non_camel_case_types)]
enum Upstream_ {
    /// Worth another attempt (network, 5xx).
    Retry(String),
    /// Another attempt would not help (404, a changed origin, no Range).
    Fatal(String),
    /// A resume answered 416 with this total: nothing is left to fetch when
    /// it is what is held.
    Whole(u64),
}

type ByteStream = futures_util::stream::BoxStream<'static, Result<bytes::Bytes, String>>;

/// Open the upstream at `offset`: the total size, the body, and a validator
/// (`ETag`, else `Last-Modified`) for resuming with `If-Range`.
async fn open_upstream(
    http: &reqwest::Client,
    up: &Upstream,
    offset: u64,
    validator: Option<&str>,
) -> Result<(Option<u64>, ByteStream, Option<String>), Upstream_> {
    match up {
        Upstream::Http(url) => {
            let mut req = http.get(url);
            if offset > 0 {
                req = req.header("Range", format!("bytes={offset}-"));
                if let Some(v) = validator {
                    req = req.header("If-Range", v);
                }
            }
            let resp = req.send().await.map_err(|e| Upstream_::Retry(format!("cannot reach {url}: {e}")))?;
            let status = resp.status().as_u16();
            let header = |n: &str| resp.headers().get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
            let v = header("etag").or_else(|| header("last-modified"));
            let total = match status {
                200 if offset > 0 => {
                    return Err(Upstream_::Fatal(if validator.is_some() {
                        "the origin changed under a resume (If-Range answered with the whole file)".into()
                    } else {
                        "the origin cannot resume (it ignores Range)".into()
                    }))
                }
                200 => resp.content_length(),
                416 if offset > 0 => {
                    let t = header("content-range").and_then(|r| r.strip_prefix("bytes */")?.parse().ok());
                    return Err(match t {
                        Some(t) => Upstream_::Whole(t),
                        None => Upstream_::Fatal(format!("{url} answered HTTP 416 to a resume at {offset}")),
                    });
                }
                206 => {
                    header("content-range").and_then(|r| r.rsplit_once('/').and_then(|(_, t)| t.parse().ok()))
                }
                s @ 500..=599 | s @ 429 | s @ 408 => {
                    return Err(Upstream_::Retry(format!("{url} answered HTTP {s}")))
                }
                s => return Err(Upstream_::Fatal(format!("{url} answered HTTP {s}"))),
            };
            let u = url.clone();
            let body =
                resp.bytes_stream().map(move |r| r.map_err(|e| format!("the stream from {u} broke: {e}")));
            Ok((total, body.boxed(), v))
        }
        Upstream::Oci(source) => {
            let src = source.clone();
            let layer = tokio::task::spawn_blocking(move || src.layer())
                .await
                .map_err(|e| Upstream_::Retry(e.to_string()))?
                .map_err(|e| Upstream_::Retry(e.to_string()))?
                .ok_or_else(|| Upstream_::Fatal("the manifest has no image layer".into()))?;
            let total = layer.size;
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, String>>(8);
            let src = source.clone();
            // The engine's registry client is blocking: it runs on the
            // blocking pool and hands chunks over.
            tokio::task::spawn_blocking(move || {
                let mut r = match src.open_at(offset) {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e.to_string()));
                        return;
                    }
                };
                let mut left = total - offset;
                while left > 0 {
                    let mut buf = vec![0u8; CHUNK.min(left as usize)];
                    match r.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            buf.truncate(n);
                            left -= n as u64;
                            if tx.blocking_send(Ok(buf.into())).is_err() {
                                return;
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            let _ = tx.blocking_send(Err(e.to_string()));
                            return;
                        }
                    }
                }
            });
            let body =
                futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
            Ok((Some(total), body.boxed(), None))
        }
    }
}

impl Opened {
    /// Bytes `first..=last` as they become available. The stream ends in an
    /// error, short of the range, when the fill fails or stalls.
    pub fn range(self, first: u64, last: u64) -> ByteStream {
        let path_done = self.inner.config.dir.join("sha256").join(&self.digest);
        let path_partial = self.inner.config.dir.join("partial").join(&self.digest);
        let guard = self.guard;
        let end = last + 1;
        let state = (self.progress, None::<std::fs::File>, first, guard);
        let reads = self.inner.reads.clone();
        futures_util::stream::unfold(state, move |(mut rx, mut file, pos, guard)| {
            let (done_p, partial_p) = (path_done.clone(), path_partial.clone());
            let reads = reads.clone();
            async move {
                if pos >= end {
                    return None;
                }
                loop {
                    let p = rx.borrow_and_update().clone();
                    // A failed fill serves nothing more, not even bytes it had.
                    if let Some(Err(e)) = p.outcome {
                        return Some((Err(e), (rx, None, end, guard)));
                    }
                    let ready = if p.outcome == Some(Ok(())) { p.size.unwrap_or(0) } else { p.visible };
                    if pos < ready.min(end) {
                        let want = (ready.min(end) - pos).min(CHUNK as u64) as usize;
                        let f = file.take();
                        // A few reads at a time, whatever the number of
                        // readers: each one holds a blocking-pool thread, and
                        // every thread the pool grows keeps allocator memory.
                        let Ok(_permit) = reads.acquire().await else { return None };
                        // Allocated here, on the runtime's threads, where
                        // hyper frees it once sent.
                        let mut buf = vec![0u8; want];
                        let read = tokio::task::spawn_blocking(move || {
                            let f = match f {
                                Some(f) => f,
                                // The partial is renamed when complete; the
                                // handle follows it, a fresh open may not.
                                None => std::fs::File::open(&partial_p)
                                    .or_else(|_| std::fs::File::open(&done_p))?,
                            };
                            std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, pos)?;
                            Ok::<_, std::io::Error>((f, buf))
                        })
                        .await;
                        return match read {
                            Ok(Ok((f, buf))) => {
                                let n = buf.len() as u64;
                                Some((Ok(bytes::Bytes::from(buf)), (rx, Some(f), pos + n, guard)))
                            }
                            Ok(Err(e)) => Some((
                                Err(format!("cannot read the cache file: {e}")),
                                (rx, None, end, guard),
                            )),
                            Err(e) => Some((Err(e.to_string()), (rx, None, end, guard))),
                        };
                    }
                    if let Some(Err(e)) = p.outcome {
                        return Some((Err(e), (rx, None, end, guard)));
                    }
                    match tokio::time::timeout(STALL, rx.changed()).await {
                        Ok(Ok(())) => {}
                        // The fill ended without a last word, or stalled.
                        _ => {
                            let last = rx.borrow().clone();
                            if last.outcome == Some(Ok(())) {
                                continue;
                            }
                            return Some((
                                Err("the cache fill stopped before these bytes arrived".to_string()),
                                (rx, None, end, guard),
                            ));
                        }
                    }
                }
            }
        })
        .boxed()
    }
}

struct ReaderGuard {
    inner: Arc<Inner>,
    digest: String,
}

impl Drop for ReaderGuard {
    fn drop(&mut self) {
        let mut r = self.inner.readers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = r.get_mut(&self.digest) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                r.remove(&self.digest);
            }
        }
    }
}
