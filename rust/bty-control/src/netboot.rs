//! Netboot artifacts (the live environment's kernel, initrd, squashfs, iPXE
//! binaries) fetched from a release: `<base>/<tag>/SHA256SUMS` lists them.
//!
//! Every file is downloaded to a hidden temporary file in the boot directory
//! and checked (length against Content-Length, SHA-256 against the manifest)
//! before anything is renamed into place, and only when every file passed are
//! they all renamed: a bad or cut-off download leaves the artifacts that were
//! there untouched, never a mix of two releases. `netboot.json` records which
//! release is installed, so the server can say whether it matches its own
//! version.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::clock;

pub const MANIFEST: &str = "SHA256SUMS";
pub const INSTALLED: &str = "netboot.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    pub name: String,
    pub sha256: String,
}

/// `sha256sum` output: `<64 hex>  <name>` (or ` *<name>`) per line.
pub fn parse_manifest(text: &str) -> anyhow::Result<Vec<ManifestEntry>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (hash, name) = line
            .split_once(char::is_whitespace)
            .with_context(|| format!("{MANIFEST} line {}: expected `<sha256>  <name>`", i + 1))?;
        let name = name.trim_start().trim_start_matches('*');
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            anyhow::bail!("{MANIFEST} line {}: {hash:?} is not a SHA-256", i + 1);
        }
        if name.is_empty()
            || name.starts_with('.')
            || name.contains(['/', '\\'])
            || name.chars().any(char::is_control)
        {
            anyhow::bail!("{MANIFEST} line {}: {name:?} is not a plain file name", i + 1);
        }
        out.push(ManifestEntry { name: name.to_string(), sha256: hash.to_ascii_lowercase() });
    }
    if out.is_empty() {
        anyhow::bail!("{MANIFEST} lists no files");
    }
    Ok(out)
}

/// What `netboot.json` says about the installed release.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Installed {
    pub tag: String,
    pub base_url: String,
    pub fetched_at: String,
    pub files: Vec<ManifestEntry>,
}

pub fn installed(boot_dir: &Path) -> Option<Installed> {
    serde_json::from_slice(&std::fs::read(boot_dir.join(INSTALLED)).ok()?).ok()
}

/// Progress of the current (or last) fetch, for the API and the UI.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FetchStatus {
    /// idle | running | done | failed | cancelled
    pub state: &'static str,
    pub tag: Option<String>,
    pub file: Option<String>,
    pub bytes: u64,
    pub total: Option<u64>,
    pub error: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
}

#[derive(Default)]
pub struct Fetcher {
    status: Mutex<FetchStatus>,
    cancel: AtomicBool,
}

impl Fetcher {
    pub fn new() -> Arc<Fetcher> {
        let f = Fetcher::default();
        f.status.lock().unwrap().state = "idle";
        Arc::new(f)
    }

    pub fn status(&self) -> FetchStatus {
        self.status.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn update(&self, f: impl FnOnce(&mut FetchStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Claim the fetcher for a new run; `false` if one is running.
    pub fn begin(&self, tag: &str) -> bool {
        let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
        if s.state == "running" {
            return false;
        }
        *s = FetchStatus {
            state: "running",
            tag: Some(tag.to_string()),
            started_at: Some(clock::now_rfc3339()),
            ..FetchStatus::default()
        };
        self.cancel.store(false, Ordering::SeqCst);
        true
    }

    pub fn cancel(&self) -> bool {
        let running = self.status().state == "running";
        if running {
            self.cancel.store(true, Ordering::SeqCst);
        }
        running
    }

    fn end(&self, result: &anyhow::Result<Installed>) {
        let cancelled = self.cancel.load(Ordering::SeqCst);
        self.update(|s| {
            s.finished_at = Some(clock::now_rfc3339());
            match result {
                Ok(_) => s.state = "done",
                Err(_) if cancelled => s.state = "cancelled",
                Err(e) => {
                    s.state = "failed";
                    s.error = Some(format!("{e:#}"));
                }
            }
        });
    }
}

fn release_url(base: &str, tag: &str, name: &str) -> String {
    format!("{}/{tag}/{name}", base.trim_end_matches('/'))
}

async fn download(
    client: &reqwest::Client,
    url: &str,
    dest: &Path,
    fetcher: &Fetcher,
) -> anyhow::Result<(u64, String)> {
    let resp = client.get(url).send().await.with_context(|| format!("cannot reach {url}"))?;
    if !resp.status().is_success() {
        anyhow::bail!("{url} answered {}", resp.status());
    }
    let declared = resp.content_length();
    fetcher.update(|s| {
        s.bytes = 0;
        s.total = declared;
    });
    let mut file =
        tokio::fs::File::create(dest).await.with_context(|| format!("cannot create {}", dest.display()))?;
    let mut hasher = Sha256::new();
    let mut n = 0u64;
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        if fetcher.cancel.load(Ordering::SeqCst) {
            anyhow::bail!("cancelled");
        }
        let chunk = chunk.with_context(|| format!("the download of {url} broke off after {n} bytes"))?;
        hasher.update(&chunk);
        file.write_all(&chunk).await.with_context(|| format!("cannot write {}", dest.display()))?;
        n += chunk.len() as u64;
        fetcher.update(|s| s.bytes = n);
    }
    if let Some(want) = declared {
        if n != want {
            anyhow::bail!("{url} is truncated: {n} of {want} bytes arrived");
        }
    }
    file.sync_all().await.with_context(|| format!("cannot sync {}", dest.display()))?;
    Ok((n, hex::encode(hasher.finalize())))
}

/// Fetch release `tag` from `base` into `boot_dir`; see the module docs.
pub async fn fetch(
    client: &reqwest::Client,
    base: &str,
    tag: &str,
    boot_dir: &Path,
    fetcher: &Fetcher,
) -> anyhow::Result<Installed> {
    let result = fetch_inner(client, base, tag, boot_dir, fetcher).await;
    fetcher.end(&result);
    result
}

async fn fetch_inner(
    client: &reqwest::Client,
    base: &str,
    tag: &str,
    boot_dir: &Path,
    fetcher: &Fetcher,
) -> anyhow::Result<Installed> {
    if tag.is_empty() || tag.contains(['/', '\\']) || tag.starts_with('.') {
        anyhow::bail!("release tag {tag:?} is not a plain name");
    }
    tokio::fs::create_dir_all(boot_dir)
        .await
        .with_context(|| format!("cannot create boot directory {}", boot_dir.display()))?;
    let manifest_url = release_url(base, tag, MANIFEST);
    fetcher.update(|s| s.file = Some(MANIFEST.into()));
    let resp =
        client.get(&manifest_url).send().await.with_context(|| format!("cannot reach {manifest_url}"))?;
    if !resp.status().is_success() {
        anyhow::bail!("{manifest_url} answered {}: is the release tag {tag:?} right?", resp.status());
    }
    let text = resp.text().await.with_context(|| format!("cannot read {manifest_url}"))?;
    let entries = parse_manifest(&text).with_context(|| format!("bad manifest at {manifest_url}"))?;

    let run = crate::secret::random_secret();
    let temp = |name: &str| boot_dir.join(format!(".{name}.{}.partial", &run[..8]));
    let mut done: Vec<PathBuf> = Vec::new();
    let outcome = async {
        for e in &entries {
            fetcher.update(|s| s.file = Some(e.name.clone()));
            let url = release_url(base, tag, &e.name);
            let tmp = temp(&e.name);
            done.push(tmp.clone());
            let (_, got) = download(client, &url, &tmp, fetcher).await?;
            if got != e.sha256 {
                anyhow::bail!(
                    "{} has SHA-256 {got}, the release's {MANIFEST} says {}: the download is corrupt or the \
                     release was altered; nothing was replaced",
                    e.name,
                    e.sha256
                );
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = outcome {
        for p in &done {
            let _ = tokio::fs::remove_file(p).await;
        }
        return Err(e).context("nothing was replaced: the artifacts in place are untouched");
    }
    for e in &entries {
        let dest = boot_dir.join(&e.name);
        tokio::fs::rename(temp(&e.name), &dest)
            .await
            .with_context(|| format!("cannot move {} into place", dest.display()))?;
    }
    let installed = Installed {
        tag: tag.to_string(),
        base_url: base.to_string(),
        fetched_at: clock::now_rfc3339(),
        files: entries,
    };
    let tmp = boot_dir.join(format!(".{INSTALLED}.partial"));
    tokio::fs::write(&tmp, serde_json::to_vec_pretty(&installed)?).await?;
    tokio::fs::rename(&tmp, boot_dir.join(INSTALLED)).await?;
    Ok(installed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_lines() {
        let h = "a".repeat(64);
        let m = parse_manifest(&format!("# release\n{h}  vmlinuz\n{h} *initrd.gz\n")).unwrap();
        assert_eq!(m.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), ["vmlinuz", "initrd.gz"]);
        assert!(parse_manifest(&format!("{h}  ../etc/passwd\n")).is_err());
        assert!(parse_manifest("abc  vmlinuz\n").is_err());
        assert!(parse_manifest("\n").is_err());
    }
}
