//! The appliance's own releases (`bty os`): the release manifest, its
//! minisign signature (with the version and type repeated in the signed
//! trusted comment), versions, and where releases come from.
//!
//! A release source is a base (`https://…/bty`, a `file:` URL or a local
//! directory) holding `latest` (a version string) and, per version,
//! `<version>/manifest.json` and `<version>/manifest.json.minisig`. File URLs
//! in a manifest are relative to it. Nothing in a manifest is believed before
//! its signature verifies with the release key and its trusted comment
//! agrees with it: a failure is an integrity error (exit 4) and nothing is
//! written.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::io::Read;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::source::Source;

/// The release key built in (minisign, base64): set with `BTY_OS_PUBKEY`
/// when bty is compiled (the Nix build takes it from the flake's
/// `releasePublicKey`); an operator overrides it with `--pubkey FILE` or
/// `[os] pubkey`. A build without one verifies nothing until given a key.
pub const RELEASE_PUBKEY: Option<&str> = option_env!("BTY_OS_PUBKEY");

/// Largest manifest and signature read.
const MAX_MANIFEST_BYTES: u64 = 1 << 20;
const MAX_SIGNATURE_BYTES: u64 = 8 << 10;

/// What a release updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReleaseType {
    /// The root filesystem of the non-booted A/B slot, and its boot entry.
    Os,
    /// The loader files of the EFI system partition.
    Efisys,
}

impl ReleaseType {
    pub fn as_str(self) -> &'static str {
        match self {
            ReleaseType::Os => "os",
            ReleaseType::Efisys => "efisys",
        }
    }

    pub fn parse(s: &str) -> Option<ReleaseType> {
        match s {
            "os" => Some(ReleaseType::Os),
            "efisys" => Some(ReleaseType::Efisys),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseFile {
    /// `root` and `uki` (os), `esp` (efisys).
    pub role: String,
    pub name: String,
    /// Relative to the manifest, or an absolute http(s) URL.
    pub url: String,
    pub sha256: String,
    pub size: u64,
    /// efisys: where in the ESP (`EFI/BOOT/BOOTX64.EFI`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub version: String,
    pub arch: String,
    #[serde(rename = "type")]
    pub kind: ReleaseType,
    pub files: Vec<ReleaseFile>,
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A path inside the ESP: relative, plain components, no `..`.
fn plain_relative(p: &str) -> bool {
    !p.is_empty()
        && !p.starts_with('/')
        && !p.contains('\\')
        && p.split('/').all(|c| !c.is_empty() && c != "." && c != ".." && !c.contains('\0'))
}

impl Manifest {
    /// Parse and check a manifest; the message names what is wrong.
    pub fn parse(bytes: &[u8]) -> Result<Manifest> {
        let m: Manifest = serde_json::from_slice(bytes)
            .map_err(|e| Error::integrity(format!("the release manifest is not valid: {e}")))?;
        m.check()?;
        Ok(m)
    }

    fn check(&self) -> Result<()> {
        let bad =
            |why: String| Err(Error::integrity(format!("the release manifest {}: {why}", self.version)));
        if parse_version(&self.version).is_none() {
            return Err(Error::integrity(format!(
                "the release manifest's version {:?} is not a version (MAJOR.MINOR.PATCH)",
                self.version
            )));
        }
        if self.arch.is_empty() {
            return bad("names no arch".into());
        }
        if self.arch != std::env::consts::ARCH {
            return bad(format!("is for {}, this machine is {}", self.arch, std::env::consts::ARCH));
        }
        if self.files.is_empty() {
            return bad("lists no files".into());
        }
        for f in &self.files {
            if !is_sha256(&f.sha256) {
                return bad(format!("file {:?} has no SHA-256 (64 hex digits)", f.name));
            }
            if f.name.is_empty() || f.name.contains('/') || f.name.starts_with('.') {
                return bad(format!("file name {:?} must be a plain file name", f.name));
            }
            let absolute = f.url.starts_with("https://") || f.url.starts_with("http://");
            // A downloaded release keeps each file under its name beside the manifest, so
            // the copy applies as the original does.
            if !absolute && f.url != f.name {
                return bad(format!(
                    "file {:?} has URL {:?}: a relative URL is the file's name, beside the manifest",
                    f.name, f.url
                ));
            }
            if !absolute && !plain_relative(&f.url) {
                return bad(format!(
                    "file {:?} has URL {:?}: relative to the manifest, or http(s)",
                    f.name, f.url
                ));
            }
        }
        let mut names: Vec<&str> = self.files.iter().map(|f| f.name.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return bad(format!("lists the file name {:?} twice", w[0]));
        }
        let count = |role: &str| self.files.iter().filter(|f| f.role == role).count();
        match self.kind {
            ReleaseType::Os => {
                if count("root") != 1 {
                    return bad("an os release needs exactly one file with role root".into());
                }
                if count("uki") > 1 {
                    return bad("an os release has at most one uki".into());
                }
                if let Some(f) = self.files.iter().find(|f| f.role != "root" && f.role != "uki") {
                    return bad(format!(
                        "file {:?} has role {:?}; an os release has root and uki",
                        f.name, f.role
                    ));
                }
            }
            ReleaseType::Efisys => {
                for f in &self.files {
                    if f.role != "esp" {
                        return bad(format!(
                            "file {:?} has role {:?}; an efisys release has esp files",
                            f.name, f.role
                        ));
                    }
                    match &f.path {
                        Some(p) if plain_relative(p) && p.to_ascii_uppercase().starts_with("EFI/") => {}
                        _ => {
                            return bad(format!(
                                "esp file {:?} needs a path under EFI/ in the ESP (got {:?})",
                                f.name, f.path
                            ))
                        }
                    }
                }
            }
        }
        Ok(())
    }

    pub fn file(&self, role: &str) -> Option<&ReleaseFile> {
        self.files.iter().find(|f| f.role == role)
    }
}

/// A release version: plain `MAJOR.MINOR.PATCH`. No build metadata: `+`
/// separates systemd-boot's boot counter in an entry's name. No
/// pre-release: systemd-boot orders `1.3.0-rc.1` after `1.3.0`, so a slot
/// holding one would stay the default over its release.
pub fn parse_version(v: &str) -> Option<semver::Version> {
    semver::Version::parse(v.trim()).ok().filter(|v| v.pre.is_empty() && v.build.is_empty())
}

/// Order of two versions; unparseable ones sort first.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    match (parse_version(a), parse_version(b)) {
        (Some(x), Some(y)) => x.cmp(&y),
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        (None, None) => a.cmp(b),
    }
}

/// `key=value` words of a trusted comment (spaces or tabs between them).
pub fn trusted_fields(comment: &str) -> BTreeMap<String, String> {
    comment
        .split([' ', '\t'])
        .filter_map(|w| w.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect()
}

/// The release key: `--pubkey FILE` / `[os] pubkey` (a minisign.pub file or
/// its base64 line), else the built-in one.
pub fn public_key(text: Option<&str>) -> Result<minisign_verify::PublicKey> {
    let Some(t) = text.or(RELEASE_PUBKEY).map(str::trim) else {
        return Err(Error::usage(
            "this bty was built without a release key (BTY_OS_PUBKEY): pass --pubkey FILE (minisign.pub)",
        ));
    };
    let parsed = if t.lines().count() > 1 {
        minisign_verify::PublicKey::decode(t)
    } else {
        minisign_verify::PublicKey::from_base64(t)
    };
    parsed.map_err(|e| Error::usage(format!("the release public key is not a minisign public key: {e}")))
}

/// Verify `manifest` with its minisign `signature` and check the signed
/// trusted comment names the same version and type.
pub fn verify(manifest: &[u8], signature: &str, key: &minisign_verify::PublicKey) -> Result<Manifest> {
    let sig = minisign_verify::Signature::decode(signature).map_err(|e| {
        Error::integrity(format!("the manifest's signature is not a minisign signature: {e}"))
    })?;
    key.verify(manifest, &sig, false).map_err(|e| {
        Error::integrity(format!(
            "the manifest's signature does not verify with the release key ({e}): nothing was written"
        ))
    })?;
    let m = Manifest::parse(manifest)?;
    let fields = trusted_fields(sig.trusted_comment());
    let said = |k: &str| fields.get(k).map(String::as_str);
    if said("version") != Some(m.version.as_str()) || said("type") != Some(m.kind.as_str()) {
        return Err(Error::integrity(format!(
            "the signature's trusted comment ({:?}) does not name the manifest's version {} and type {}: \
             nothing was written",
            sig.trusted_comment(),
            m.version,
            m.kind.as_str()
        )));
    }
    Ok(m)
}

/// Where releases come from.
#[derive(Debug, Clone)]
pub struct ReleaseSource {
    base: String,
}

/// A manifest as fetched: verified, with the URL it came from (files are
/// relative to it) and its bytes and signature (for `download`).
#[derive(Debug, Clone)]
pub struct Release {
    pub manifest: Manifest,
    pub manifest_url: String,
    pub manifest_bytes: Vec<u8>,
    pub signature: String,
}

fn read_bounded(url: &str, limit: u64) -> Result<Vec<u8>> {
    let src = Source::parse(url)?;
    let opened = src.open()?;
    let mut buf = Vec::new();
    opened
        .reader
        .take(limit + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Error::io(format!("cannot read {url}"), e))?;
    if buf.len() as u64 > limit {
        return Err(Error::integrity(format!(
            "{url} is larger than {limit} bytes; it is not a release file"
        )));
    }
    Ok(buf)
}

/// `base` joined with a relative path (URLs keep their scheme).
fn join(base: &str, rel: &str) -> String {
    format!("{}/{}", base.trim_end_matches('/'), rel)
}

/// The directory part of a URL or path.
fn parent(url: &str) -> &str {
    url.rsplit_once('/').map(|(d, _)| d).unwrap_or(".")
}

impl ReleaseSource {
    pub fn new(base: &str) -> ReleaseSource {
        ReleaseSource { base: base.trim_end_matches('/').to_string() }
    }

    /// The version `latest` names.
    pub fn latest(&self) -> Result<String> {
        let url = join(&self.base, "latest");
        let v = String::from_utf8_lossy(&read_bounded(&url, 256)?).trim().to_string();
        if parse_version(&v).is_none() {
            return Err(Error::integrity(format!("{url} says {v:?}, which is not a version")));
        }
        Ok(v)
    }

    /// The verified manifest of `version` (default: latest).
    pub fn release(&self, version: Option<&str>, key: &minisign_verify::PublicKey) -> Result<Release> {
        let v = match version {
            Some(v) => v.to_string(),
            None => self.latest()?,
        };
        let r = fetch_manifest(&join(&self.base, &format!("{v}/manifest.json")), key)?;
        if r.manifest.version != v {
            return Err(Error::integrity(format!(
                "{} is version {}, not {v}: nothing was written",
                r.manifest_url, r.manifest.version
            )));
        }
        Ok(r)
    }
}

/// The verified release of `kind` that `bty os` and bty-web's Appliance page
/// ask for: the manifest at `path`, else `version` (default latest) from the
/// release source `source`, checked with the key in the file `pubkey` (else
/// the built-in one). `no_source` says how to name a source when neither is
/// given.
pub fn find_release(
    kind: ReleaseType,
    path: Option<&str>,
    source: Option<&str>,
    version: Option<&str>,
    pubkey: Option<&std::path::Path>,
    no_source: &str,
) -> Result<Release> {
    let key_text = match pubkey {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .map_err(|e| Error::io(format!("cannot read the release key {}", p.display()), e))?,
        ),
        None => None,
    };
    let key = public_key(key_text.as_deref())?;
    let r = match (path, source) {
        (Some(p), _) => fetch_manifest(p, &key)?,
        (None, Some(base)) => ReleaseSource::new(base).release(version, &key)?,
        (None, None) => return Err(Error::usage(format!("no release source: {no_source}"))),
    };
    if r.manifest.kind != kind {
        return Err(Error::usage(format!(
            "{} is an {} release, not {}",
            r.manifest_url,
            r.manifest.kind.as_str(),
            kind.as_str()
        )));
    }
    Ok(r)
}

/// A manifest at `url` (or a local path) with `url.minisig` beside it, verified.
pub fn fetch_manifest(url: &str, key: &minisign_verify::PublicKey) -> Result<Release> {
    let manifest_bytes = read_bounded(url, MAX_MANIFEST_BYTES)?;
    let sig_url = format!("{url}.minisig");
    let signature =
        String::from_utf8(read_bounded(&sig_url, MAX_SIGNATURE_BYTES).map_err(|e| {
            Error::integrity(format!("the manifest's signature {sig_url} cannot be read: {e}"))
        })?)
        .map_err(|_| Error::integrity(format!("{sig_url} is not text")))?;
    let manifest = verify(&manifest_bytes, &signature, key)?;
    Ok(Release { manifest, manifest_url: url.to_string(), manifest_bytes, signature })
}

impl Release {
    /// Where a file of this release is.
    pub fn file_url(&self, f: &ReleaseFile) -> String {
        if f.url.starts_with("https://") || f.url.starts_with("http://") {
            f.url.clone()
        } else {
            join(parent(&self.manifest_url), &f.url)
        }
    }
}

/// The `[os]` keys of the appliance's `bty.toml`, which `bty os` falls back
/// to when a flag is not given: the same file bty-web reads.
#[derive(Debug, Clone, Default)]
pub struct OsSettings {
    pub source: Option<String>,
    pub pubkey: Option<std::path::PathBuf>,
    pub esp: Option<std::path::PathBuf>,
    pub disk: Option<std::path::PathBuf>,
}

/// `[os]` of `$BTY_CONFIG_FILE`, else of `/etc/bty/bty.toml` when it exists;
/// nothing when there is no file.
pub fn os_settings() -> Result<OsSettings> {
    let path = match std::env::var("BTY_CONFIG_FILE").ok().filter(|s| !s.is_empty()) {
        Some(p) => std::path::PathBuf::from(p),
        None => {
            let p = std::path::PathBuf::from("/etc/bty/bty.toml");
            if !p.exists() {
                return Ok(OsSettings::default());
            }
            p
        }
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| {
        Error::usage(format!("{} is not valid TOML: {}", path.display(), e.to_string().trim()))
    })?;
    let os = table.get("os").and_then(|v| v.as_table());
    let text_of = |k: &str| {
        os.and_then(|t| t.get(k)).and_then(|v| v.as_str()).filter(|s| !s.is_empty()).map(str::to_string)
    };
    Ok(OsSettings {
        source: text_of("source"),
        pubkey: text_of("pubkey").map(Into::into),
        esp: text_of("esp").map(Into::into),
        disk: text_of("disk").map(Into::into),
    })
}

/// Download a release into `dir`: every file under a hidden name, checked
/// (size, SHA-256), then renamed; the manifest and its signature last, so a
/// directory with a manifest holds the whole release. On any failure the
/// files of this release already written are removed. `on_file` hears of
/// each file verified.
pub fn download(r: &Release, dir: &std::path::Path, on_file: &mut dyn FnMut(&str, u64)) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
    // An earlier copy stops being a release first: a download that fails half-way must not
    // leave its manifest beside files of another.
    for name in ["manifest.json", "manifest.json.minisig"] {
        match std::fs::remove_file(dir.join(name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::io(format!("cannot replace {}", dir.join(name).display()), e))
            }
            _ => {}
        }
    }
    let mut written: Vec<std::path::PathBuf> = vec![];
    let result = (|| {
        for f in &r.manifest.files {
            let dest = dir.join(&f.name);
            fetch_verified(&r.file_url(f), &dest, f.size, &f.sha256)?;
            written.push(dest);
            on_file(&f.name, f.size);
        }
        for (name, bytes) in [
            ("manifest.json.minisig", r.signature.as_bytes()),
            ("manifest.json", r.manifest_bytes.as_slice()),
        ] {
            let dest = dir.join(name);
            write_atomic(&dest, bytes)?;
            written.push(dest);
        }
        Ok(())
    })();
    if result.is_err() {
        for p in &written {
            let _ = std::fs::remove_file(p);
        }
    }
    result
}

/// Where a file is written before it is checked: a hidden name beside it.
pub fn partial_of(dest: &std::path::Path) -> std::path::PathBuf {
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    dest.with_file_name(format!(".{name}.partial"))
}

/// Fetch `url` into `dest` through a hidden partial file, checking the size
/// and SHA-256 the manifest gives before it is synced and renamed into
/// place. On any failure the partial file is removed and `dest` untouched.
pub fn fetch_verified(url: &str, dest: &std::path::Path, size: u64, sha256: &str) -> Result<()> {
    use sha2::Digest;
    use std::io::Write;
    let partial = partial_of(dest);
    let outcome = (|| {
        let mut reader = Source::parse(url)?.open()?.reader;
        let mut out = std::fs::File::create(&partial)
            .map_err(|e| Error::io(format!("cannot create {}", partial.display()), e))?;
        let mut h = sha2::Sha256::new();
        let mut n = 0u64;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let k = reader.read(&mut buf).map_err(|e| Error::io(format!("cannot read {url}"), e))?;
            if k == 0 {
                break;
            }
            n += k as u64;
            if n > size {
                return Err(Error::integrity(format!("{url} is longer than the manifest's {size} bytes")));
            }
            h.update(&buf[..k]);
            out.write_all(&buf[..k])
                .map_err(|e| Error::io(format!("cannot write {}", partial.display()), e))?;
        }
        if n != size {
            return Err(Error::integrity(format!("{url} ended after {n} of its {size} bytes (truncated)")));
        }
        let got = hex::encode(h.finalize());
        if !got.eq_ignore_ascii_case(sha256) {
            return Err(Error::integrity(format!("{url} has SHA-256 {got}, the manifest says {sha256}")));
        }
        out.sync_all().map_err(|e| Error::io(format!("cannot write {}", partial.display()), e))?;
        std::fs::rename(&partial, dest)
            .map_err(|e| Error::io(format!("cannot rename into {}", dest.display()), e))?;
        sync_parent(dest)
    })();
    if outcome.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    outcome
}

/// Write `bytes` to `dest` through a hidden partial file, synced, renamed.
pub fn write_atomic(dest: &std::path::Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let partial = partial_of(dest);
    let io = |e| Error::io(format!("cannot write {}", dest.display()), e);
    let mut f = std::fs::File::create(&partial).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&partial, dest).map_err(io)?;
    sync_parent(dest)
}

/// Make a rename or removal in `path`'s directory durable.
pub fn sync_parent(path: &std::path::Path) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    match std::fs::File::open(dir).and_then(|d| d.sync_all()) {
        Ok(()) => Ok(()),
        // Some file systems cannot sync a directory handle; their renames are as durable as they get.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(()),
        Err(e) => Err(Error::io(format!("cannot sync {}", dir.display()), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(kind: &str, files: &str) -> String {
        format!(r#"{{"version": "1.2.0", "arch": "x86_64", "type": "{kind}", "files": [{files}]}}"#)
    }
    const SHA: &str = "0000000000000000000000000000000000000000000000000000000000000000";

    #[test]
    fn manifests_are_checked_field_by_field() {
        let root = format!(
            r#"{{"role": "root", "name": "root.img.zst", "url": "root.img.zst", "sha256": "{SHA}", "size": 5}}"#
        );
        let uki = format!(
            r#"{{"role": "uki", "name": "bty.efi", "url": "bty.efi", "sha256": "{SHA}", "size": 5}}"#
        );
        let m = Manifest::parse(manifest("os", &format!("{root}, {uki}")).as_bytes()).unwrap();
        assert_eq!((m.kind, m.file("root").unwrap().size), (ReleaseType::Os, 5));
        for (bad, why) in [
            (manifest("os", &uki), "exactly one file with role root"),
            (manifest("os", &format!("{root}, {root}")), "twice"),
            (manifest("os", ""), "lists no files"),
            (manifest("os", &root.replace("root.img.zst\", \"sha", "../root.img.zst\", \"sha")), "relative"),
            (manifest("os", &root.replace(SHA, "abc")), "SHA-256"),
            (manifest("efisys", &root), "role"),
            (manifest("other", &root), "not valid"),
            (manifest("os", &format!("{root}, {{\"role\": \"root\"}}")), "not valid"),
            (manifest("os", &root).replace("1.2.0", "one"), "not a version"),
        ] {
            let e = Manifest::parse(bad.as_bytes()).unwrap_err();
            assert!(e.to_string().contains(why), "{bad}: {e}");
            assert_eq!(e.kind(), crate::ErrorKind::Integrity);
        }
        let esp = format!(
            r#"{{"role": "esp", "name": "BOOTX64.EFI", "url": "BOOTX64.EFI", "sha256": "{SHA}", "size": 5, "path": "EFI/BOOT/BOOTX64.EFI"}}"#
        );
        Manifest::parse(manifest("efisys", &esp).as_bytes()).unwrap();
        let escape = esp.replace("EFI/BOOT/BOOTX64.EFI\"}", "EFI/../../etc/x\"}");
        assert!(Manifest::parse(manifest("efisys", &escape).as_bytes()).is_err());
    }

    #[test]
    fn versions_compare_as_semver() {
        assert_eq!(compare_versions("1.10.0", "1.9.3"), Ordering::Greater);
        assert!(parse_version("1.2.0-rc.1").is_none() && parse_version("1.2.0+5").is_none());
        assert_eq!(compare_versions("1.2.0", "1.2.0"), Ordering::Equal);
        assert_eq!(compare_versions("junk", "0.0.1"), Ordering::Less);
    }

    #[test]
    fn trusted_comments_split_into_fields() {
        let f = trusted_fields("timestamp:1700000000\tversion=1.2.0 type=os");
        assert_eq!(f.get("version").map(String::as_str), Some("1.2.0"));
        assert_eq!(f.get("type").map(String::as_str), Some("os"));
    }

    #[test]
    fn urls_are_relative_to_the_manifest() {
        let r = Release {
            manifest: Manifest::parse(
                manifest(
                    "os",
                    &format!(
                        r#"{{"role": "root", "name": "r.zst", "url": "r.zst", "sha256": "{SHA}", "size": 1}}"#
                    ),
                )
                .as_bytes(),
            )
            .unwrap(),
            manifest_url: "https://rel.example/bty/1.2.0/manifest.json".into(),
            manifest_bytes: vec![],
            signature: String::new(),
        };
        assert_eq!(r.file_url(&r.manifest.files[0]), "https://rel.example/bty/1.2.0/r.zst");
    }
}
