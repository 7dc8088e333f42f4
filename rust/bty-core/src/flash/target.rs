//! Flash targets: a whole-disk block device, a regular file, or one
//! partition of a disk (an appliance's A/B slot, written by `bty os apply`;
//! `bty flash` never takes a partition).
//!
//! Probing is read-only; [`TargetInfo::problems`] lists every reason the
//! target must not be written, and [`TargetInfo::recheck`] repeats the probe
//! just before writing so a disk swapped or mounted in between is caught.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::disks;
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetKind {
    BlockDevice,
    File,
    /// One partition of a disk; the rest of the disk is never written.
    Partition,
}

/// What was found at the target path.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TargetInfo {
    pub path: PathBuf,
    pub kind: TargetKind,
    /// False for a regular file that will be created.
    pub exists: bool,
    /// Capacity of a block device; `None` for files (they grow).
    pub size_bytes: Option<u64>,
    pub logical_block_size: u64,
    pub read_only: bool,
    pub mountpoints: Vec<String>,
    pub holds_running_system: bool,
    pub model: Option<String>,
    pub serial: Option<String>,
    /// The kernel can zero ranges without transferring zeros (WRITE ZEROES).
    pub zeroes_offload: bool,
    /// Device number (block) or inode identity (file): what "the same target" means.
    #[serde(skip)]
    identity: (u64, u64),
    /// For a partition: its disk and number (a re-probe looks it up again).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition_of: Option<(PathBuf, u32)>,
}

impl TargetInfo {
    pub fn probe(path: &Path) -> Result<TargetInfo> {
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if path.starts_with("/dev") {
                    return Err(Error::failure(format!(
                        "{} does not exist; run `bty disks` to list the disks on this machine",
                        path.display()
                    )));
                }
                let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
                if !parent.is_dir() {
                    return Err(Error::failure(format!(
                        "cannot create {}: directory {} does not exist",
                        path.display(),
                        parent.display()
                    )));
                }
                return Ok(TargetInfo::new_file(path, false, (0, 0)));
            }
            Err(e) => return Err(Error::io(format!("cannot inspect target {}", path.display()), e)),
        };
        let ft = meta.file_type();
        if ft.is_file() {
            return Ok(TargetInfo::new_file(path, true, (meta.dev(), meta.ino())));
        }
        if ft.is_dir() {
            return Err(Error::failure(format!(
                "{} is a directory; name a whole disk such as /dev/sdX, or a file to write the image into \
                 (for example {})",
                path.display(),
                path.join("disk.img").display()
            )));
        }
        if !ft.is_block_device() {
            return Err(Error::failure(format!(
                "{} is neither a block device nor a regular file; name a whole disk such as /dev/sdX, \
                 or a file to write the image into",
                path.display()
            )));
        }
        let disk = disks::disk_for_path(path)?.ok_or_else(|| {
            Error::failure(format!("{} is a block device but was not found in /sys/block", path.display()))
        })?;
        Ok(TargetInfo {
            path: path.to_path_buf(),
            kind: TargetKind::BlockDevice,
            exists: true,
            size_bytes: Some(disk.size_bytes),
            logical_block_size: disk.logical_block_size.max(512),
            read_only: disk.read_only,
            mountpoints: disk.mountpoints.clone(),
            holds_running_system: disk.holds_running_system,
            model: disk.model.clone(),
            serial: disk.serial.clone(),
            zeroes_offload: write_zeroes_supported(&disk.name),
            identity: (meta.rdev(), 0),
            partition_of: None,
        })
    }

    /// The block device `node` holding partition `number` of `disk` (the
    /// kernel's partition device, or a loop device over its bytes), as a
    /// target of its own: refused while it is mounted or holds the running
    /// system, whatever the rest of the disk holds.
    pub fn probe_partition(node: &Path, disk: &Path, number: u32) -> Result<TargetInfo> {
        let meta = std::fs::metadata(node)
            .map_err(|e| Error::io(format!("cannot inspect {}", node.display()), e))?;
        if !meta.file_type().is_block_device() {
            return Err(Error::failure(format!("{} is not a block device", node.display())));
        }
        let devnum = format!("{}:{}", libc::major(meta.rdev()), libc::minor(meta.rdev()));
        let sys = Path::new("/sys/dev/block").join(&devnum);
        let read = |f: &str| std::fs::read_to_string(sys.join(f)).ok().map(|s| s.trim().to_string());
        let size = read("size").and_then(|s| s.parse::<u64>().ok()).map(|s| s * 512).ok_or_else(|| {
            Error::failure(format!("{} ({devnum}) has no size in /sys/dev/block", node.display()))
        })?;
        let queue = if sys.join("partition").exists() { sys.join("../queue") } else { sys.join("queue") };
        let lbs = std::fs::read_to_string(queue.join("logical_block_size"))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(512);
        let mountpoints = disks::SystemView::host().mountpoints_of(&devnum);
        let name = std::fs::canonicalize(&sys)
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_default();
        Ok(TargetInfo {
            path: node.to_path_buf(),
            kind: TargetKind::Partition,
            exists: true,
            size_bytes: Some(size),
            logical_block_size: lbs.max(512),
            read_only: read("ro").as_deref() == Some("1"),
            holds_running_system: mountpoints.iter().any(|m| m == "/" || m == "/usr"),
            mountpoints,
            model: None,
            serial: None,
            zeroes_offload: write_zeroes_supported(&name),
            identity: (meta.rdev(), 0),
            partition_of: Some((disk.to_path_buf(), number)),
        })
    }

    fn new_file(path: &Path, exists: bool, identity: (u64, u64)) -> TargetInfo {
        TargetInfo {
            path: path.to_path_buf(),
            kind: TargetKind::File,
            exists,
            size_bytes: None,
            logical_block_size: 4096,
            read_only: false,
            mountpoints: Vec::new(),
            holds_running_system: false,
            model: None,
            serial: None,
            zeroes_offload: false,
            identity,
            partition_of: None,
        }
    }

    pub fn is_block_device(&self) -> bool {
        matches!(self.kind, TargetKind::BlockDevice | TargetKind::Partition)
    }

    /// Every reason this target must not receive an image of `image_size` bytes.
    pub fn problems(&self, image_size: Option<u64>) -> Vec<String> {
        let mut out = Vec::new();
        let p = self.path.display();
        if self.holds_running_system {
            out.push(format!("{p} holds the running system; refusing to overwrite it"));
        }
        if !self.mountpoints.is_empty() {
            out.push(format!(
                "{p} is in use (mounted at {}); unmount it first, bty never unmounts for you",
                self.mountpoints.join(", ")
            ));
        }
        if self.read_only {
            out.push(format!("{p} is read-only (write-protect switch or `blockdev --setro`)"));
        }
        if let (Some(cap), Some(img)) = (self.size_bytes, image_size) {
            if img > cap {
                out.push(format!(
                    "{p} is too small: the image needs {} but the disk holds {}",
                    disks::human_size(img),
                    disks::human_size(cap)
                ));
            }
        }
        out
    }

    /// Probe again and fail with [`crate::ErrorKind::TargetChanged`] if the
    /// target is no longer the one that was planned, or became unsafe.
    pub fn recheck(&self, image_size: Option<u64>) -> Result<TargetInfo> {
        let now = match &self.partition_of {
            Some((disk, n)) => TargetInfo::probe_partition(&self.path, disk, *n),
            None => TargetInfo::probe(&self.path),
        }
        .map_err(|e| Error::target_changed(format!("target changed since planning: {e}")))?;
        if now.kind != self.kind
            || (self.exists && now.identity != self.identity)
            || now.size_bytes != self.size_bytes
        {
            return Err(Error::target_changed(format!(
                "{} is not the device that was planned (replaced or resized); re-run the command",
                self.path.display()
            )));
        }
        let problems = now.problems(image_size);
        if !problems.is_empty() {
            return Err(Error::target_changed(format!(
                "{} changed since planning: {}",
                self.path.display(),
                problems.join("; ")
            )));
        }
        Ok(now)
    }

    /// Open for writing. Block devices are opened `O_EXCL` (the kernel refuses
    /// while anything holds the device: a mount, device-mapper, md) and, for
    /// the returned primary handle, `O_DIRECT` so the page cache cannot shadow
    /// what reached the disk.
    pub fn open_for_write(&self) -> Result<TargetHandles> {
        let p = &self.path;
        let perm_hint = |e: std::io::Error| {
            if e.kind() == std::io::ErrorKind::PermissionDenied {
                Error::io(format!("writing to {} needs root; run bty with sudo", p.display()), e)
            } else if e.raw_os_error() == Some(libc::EBUSY) {
                Error::target_changed(format!(
                    "{} is busy (mounted or held by another device); unmount it and retry",
                    p.display()
                ))
            } else {
                Error::io(format!("cannot open {} for writing", p.display()), e)
            }
        };
        match self.kind {
            TargetKind::BlockDevice | TargetKind::Partition => {
                let direct = OpenOptions::new()
                    .write(true)
                    .read(true)
                    .custom_flags(libc::O_DIRECT | libc::O_EXCL)
                    .open(p)
                    .map_err(perm_hint)?;
                let buffered = OpenOptions::new().write(true).read(true).open(p).map_err(perm_hint)?;
                Ok(TargetHandles { direct, buffered, direct_io: true })
            }
            TargetKind::File => {
                let f = OpenOptions::new()
                    .write(true)
                    .read(true)
                    .create(true)
                    .truncate(true)
                    .open(p)
                    .map_err(perm_hint)?;
                let buffered = f.try_clone().map_err(|e| Error::io("cannot duplicate target handle", e))?;
                Ok(TargetHandles { direct: f, buffered, direct_io: false })
            }
        }
    }

    /// True when `other` is this very file (flashing an image onto itself).
    pub fn is_same_file(&self, other: &Path) -> bool {
        self.kind == TargetKind::File
            && self.exists
            && std::fs::metadata(other).map(|m| (m.dev(), m.ino()) == self.identity).unwrap_or(false)
    }
}

/// Write handles on one target: `direct` for aligned bulk writes, `buffered`
/// for the unaligned tail and metadata fix-ups.
pub struct TargetHandles {
    pub direct: File,
    pub buffered: File,
    pub direct_io: bool,
}

fn write_zeroes_supported(name: &str) -> bool {
    std::fs::read_to_string(format!("/sys/block/{name}/queue/write_zeroes_max_bytes"))
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .is_some_and(|n| n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_target_is_called_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let e = TargetInfo::probe(dir.path()).map(|_| ()).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("is a directory"), "{text}");
        assert!(!text.contains("neither"), "{text}");
        assert!(text.contains(&dir.path().join("disk.img").display().to_string()), "{text}");
    }
}
