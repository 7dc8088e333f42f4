//! Per-host secrets of a built appliance image (`bty os personalize`) and
//! their reading at boot (`bty os secrets unpack`).
//!
//! The `bty-secrets` partition holds a plain ustar archive from its first
//! byte, zero-padded to its end: no file system to create or mount (so an
//! image is personalised without root), and an all-zero partition is an
//! empty archive, the state of a freshly built image. Entries are regular
//! files and directories with plain relative paths; everything is stored
//! root-owned, files 0600 and directories 0700, with a zero timestamp.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};

/// The partition's label.
pub const LABEL: &str = "bty-secrets";
const MAX_ENTRIES: usize = 1024;

/// One file of a secrets archive.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SecretFile {
    pub path: String,
    pub size: u64,
}

fn open_compressed(path: &Path) -> Result<Box<dyn Read>> {
    let mut f =
        std::fs::File::open(path).map_err(|e| Error::io(format!("cannot open {}", path.display()), e))?;
    let mut magic = [0u8; 6];
    let n = f.read(&mut magic).map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
    f.seek(SeekFrom::Start(0)).map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
    let r = std::io::BufReader::new(f);
    Ok(match &magic[..n] {
        [0x1f, 0x8b, ..] => Box::new(flate2::read::MultiGzDecoder::new(r)),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => {
            Box::new(zstd::stream::read::Decoder::new(r).map_err(|e| Error::io("cannot start zstd", e))?)
        }
        [0xfd, b'7', b'z', b'X', b'Z', 0] => Box::new(xz2::read::XzDecoder::new(r)),
        _ => Box::new(r),
    })
}

/// A plain relative path: no root, no `..`, no `.` tricks, UTF-8.
fn plain(path: &Path) -> Option<String> {
    let mut parts = vec![];
    for c in path.components() {
        match c {
            Component::Normal(p) => parts.push(p.to_str()?.to_string()),
            Component::CurDir => {}
            _ => return None,
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// Read a secrets tarball (tar, tar.gz, tar.zst or tar.xz) and write it
/// again in the partition's form; fails naming the entry it refuses. The
/// result is at most `capacity` bytes.
pub fn pack(tarball: &Path, capacity: u64) -> Result<(Vec<u8>, Vec<SecretFile>)> {
    let bad = |why: String| Error::usage(format!("{}: {why}", tarball.display()));
    let mut input = tar::Archive::new(open_compressed(tarball)?);
    let mut out = tar::Builder::new(Vec::new());
    out.mode(tar::HeaderMode::Deterministic);
    let mut files = vec![];
    let entries = input.entries().map_err(|e| bad(format!("not a tar archive ({e})")))?;
    for (i, entry) in entries.enumerate() {
        if i >= MAX_ENTRIES {
            return Err(bad(format!("more than {MAX_ENTRIES} entries")));
        }
        let mut entry = entry.map_err(|e| bad(format!("not a readable tar archive ({e})")))?;
        let raw =
            entry.path().map_err(|e| bad(format!("an entry's name is not readable ({e})")))?.into_owned();
        let Some(path) = plain(&raw) else {
            return Err(bad(format!("entry {:?} is not a plain relative path", raw.display())));
        };
        let kind = entry.header().entry_type();
        let mut h = tar::Header::new_ustar();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        if kind.is_dir() {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o700);
            h.set_size(0);
            out.append_data(&mut h, &path, std::io::empty())
                .map_err(|e| bad(format!("entry {path:?}: {e}")))?;
        } else if kind.is_file() {
            let declared = entry.header().size().unwrap_or(u64::MAX);
            if declared > capacity {
                return Err(bad(format!(
                    "entry {path:?} is {declared} bytes but the {LABEL} partition holds {capacity}"
                )));
            }
            let mut data = vec![];
            (&mut entry)
                .take(capacity + 1)
                .read_to_end(&mut data)
                .map_err(|e| bad(format!("entry {path:?} cannot be read ({e})")))?;
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o600);
            h.set_size(data.len() as u64);
            files.push(SecretFile { path: path.clone(), size: data.len() as u64 });
            out.append_data(&mut h, &path, data.as_slice())
                .map_err(|e| bad(format!("entry {path:?}: {e}")))?;
        } else {
            return Err(bad(format!("entry {path:?} is a {kind:?}; only files and directories are secrets")));
        }
    }
    let bytes = out.into_inner().map_err(|e| bad(format!("cannot finish the archive ({e})")))?;
    if bytes.len() as u64 > capacity {
        return Err(bad(format!(
            "the secrets take {} bytes but the {LABEL} partition holds {capacity}",
            bytes.len()
        )));
    }
    Ok((bytes, files))
}

/// What `personalize` wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Personalized {
    pub image: PathBuf,
    pub partition: u32,
    pub files: Vec<SecretFile>,
}

/// Fill the `bty-secrets` partition of the raw appliance image `image`
/// (in place) with `tarball`'s files, or empty it when `tarball` is None.
/// The rest of the partition is zeroed so no earlier secret survives.
pub fn personalize(image: &Path, tarball: Option<&Path>) -> Result<Personalized> {
    let layout = crate::slots::read_layout(image)?;
    let part = layout.secrets.ok_or_else(|| {
        Error::failure(format!("{} has no {LABEL} partition; it was built without one", image.display()))
    })?;
    let (bytes, files) = match tarball {
        Some(t) => pack(t, part.size_bytes)?,
        None => (vec![], vec![]),
    };
    let io = |e| Error::io(format!("cannot write {}", image.display()), e);
    let mut f = std::fs::OpenOptions::new().write(true).open(image).map_err(io)?;
    let len = f.metadata().map_err(io)?.len();
    if part.start_bytes + part.size_bytes > len {
        return Err(Error::integrity(format!(
            "{} ends before its {LABEL} partition does (truncated image?)",
            image.display()
        )));
    }
    f.seek(SeekFrom::Start(part.start_bytes)).map_err(io)?;
    f.write_all(&bytes).map_err(io)?;
    let zeros = vec![0u8; 1 << 20];
    let mut left = part.size_bytes - bytes.len() as u64;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        f.write_all(&zeros[..n]).map_err(io)?;
        left -= n as u64;
    }
    f.sync_all().map_err(io)?;
    Ok(Personalized { image: image.to_path_buf(), partition: part.number, files })
}

/// Unpack the secrets on `device` (the partition, or a file holding its
/// bytes) into `dir`: files 0600, directories 0700. An empty partition
/// unpacks nothing. Returns the files written.
pub fn unpack(device: &Path, dir: &Path) -> Result<Vec<SecretFile>> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let f =
        std::fs::File::open(device).map_err(|e| Error::io(format!("cannot open {}", device.display()), e))?;
    let bad = |why: String| Error::integrity(format!("{}: {why}", device.display()));
    let mut archive = tar::Archive::new(std::io::BufReader::new(f));
    let mut out = vec![];
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
    for (i, entry) in archive.entries().map_err(|e| bad(format!("not a secrets archive ({e})")))?.enumerate()
    {
        if i >= MAX_ENTRIES {
            return Err(bad(format!("more than {MAX_ENTRIES} entries")));
        }
        let mut entry = entry.map_err(|e| bad(format!("not a secrets archive ({e})")))?;
        let raw = entry.path().map_err(|e| bad(format!("unreadable name ({e})")))?.into_owned();
        let path = plain(&raw)
            .ok_or_else(|| bad(format!("entry {:?} is not a plain relative path", raw.display())))?;
        let dest = dir.join(&path);
        // Nothing on the way may be a symbolic link: one planted in `dir` would send the
        // secrets elsewhere.
        let mut at = dir.to_path_buf();
        for part in Path::new(&path).parent().into_iter().flat_map(|p| p.components()) {
            at.push(part);
            if std::fs::symlink_metadata(&at).is_ok_and(|m| !m.is_dir()) {
                return Err(Error::failure(format!(
                    "{} is not a directory (a link?): not unpacking secrets through it",
                    at.display()
                )));
            }
        }
        let kind = entry.header().entry_type();
        let mkdir = |d: &Path| {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(d)
                .map_err(|e| Error::io(format!("cannot create {}", d.display()), e))
        };
        if kind.is_dir() {
            mkdir(&dest)?;
        } else if kind.is_file() {
            if let Some(p) = dest.parent() {
                mkdir(p)?;
            }
            let _ = std::fs::remove_file(&dest);
            let mut w = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&dest)
                .map_err(|e| Error::io(format!("cannot create {}", dest.display()), e))?;
            let n = std::io::copy(&mut entry, &mut w)
                .map_err(|e| Error::io(format!("cannot write {}", dest.display()), e))?;
            out.push(SecretFile { path, size: n });
        } else {
            return Err(bad(format!("entry {path:?} is a {kind:?}, not a file or directory")));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tarball(dir: &Path, entries: &[(&str, &[u8])]) -> PathBuf {
        let p = dir.join("s.tar");
        let mut b = tar::Builder::new(std::fs::File::create(&p).unwrap());
        for (name, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.finish().unwrap();
        p
    }

    #[test]
    fn secrets_round_trip_through_a_partition_and_zeros_are_empty() {
        let d = tempfile::tempdir().unwrap();
        let t = tarball(d.path(), &[("ssh/ssh_host_ed25519_key", b"KEY"), ("bty/admin-password", b"pw\n")]);
        let (bytes, files) = pack(&t, 1 << 20).unwrap();
        assert_eq!(files.len(), 2);
        let part = d.path().join("part");
        let mut padded = bytes.clone();
        padded.resize(1 << 20, 0);
        std::fs::write(&part, &padded).unwrap();
        let out = d.path().join("out");
        let got = unpack(&part, &out).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(std::fs::read(out.join("ssh/ssh_host_ed25519_key")).unwrap(), b"KEY");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(out.join("bty/admin-password")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // The same input gives the same bytes.
        assert_eq!(pack(&t, 1 << 20).unwrap().0, bytes);

        std::fs::write(&part, vec![0u8; 1 << 16]).unwrap();
        assert!(unpack(&part, &d.path().join("empty")).unwrap().is_empty());
        assert!(pack(&t, 512).unwrap_err().to_string().contains("partition holds"));

        // A link planted where a directory of the secrets goes: refused, nothing written through it.
        let planted = d.path().join("planted");
        let elsewhere = d.path().join("elsewhere");
        std::fs::create_dir_all(&planted).unwrap();
        std::fs::create_dir_all(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, planted.join("ssh")).unwrap();
        std::fs::write(&part, &padded).unwrap();
        let e = unpack(&part, &planted).unwrap_err().to_string();
        assert!(e.contains("not a directory"), "{e}");
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
    }

    #[test]
    fn links_and_escaping_names_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("bad.tar");
        {
            let mut b = tar::Builder::new(std::fs::File::create(&p).unwrap());
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            b.append_link(&mut h, "ssh/key", "/etc/shadow").unwrap();
            b.finish().unwrap();
        }
        let e = pack(&p, 1 << 20).unwrap_err().to_string();
        assert!(e.contains("only files and directories"), "{e}");

        let mut raw = vec![0u8; 512];
        raw[..10].copy_from_slice(b"../escaped");
        let mut h = tar::Header::from_byte_slice(&raw).clone();
        h.set_size(1);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        let mut bytes = h.as_bytes().to_vec();
        bytes.extend_from_slice(b"x");
        bytes.resize(1024, 0);
        bytes.extend_from_slice(&[0u8; 1024]);
        std::fs::write(&p, &bytes).unwrap();
        let e = pack(&p, 1 << 20).unwrap_err().to_string();
        assert!(e.contains("plain relative path"), "{e}");
        let e = unpack(&p, &d.path().join("o")).unwrap_err().to_string();
        assert!(e.contains("plain relative path"), "{e}");
        assert!(!d.path().join("escaped").exists());
    }
}
