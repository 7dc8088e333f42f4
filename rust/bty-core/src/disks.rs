//! Block-device discovery from sysfs and `/proc/self/mountinfo`: no `lsblk`,
//! no subprocesses. Used by `bty disks`, by the flash safety checks and by the
//! agent's inventory.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Where the kernel's views live; replaceable so tests can use a fake tree.
#[derive(Debug, Clone)]
pub struct SystemView {
    pub sys_root: PathBuf,
    pub mountinfo: PathBuf,
    pub swaps: PathBuf,
    pub dev_root: PathBuf,
}

/// A whole disk.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Disk {
    pub path: String,
    pub name: String,
    pub size_bytes: u64,
    pub logical_block_size: u64,
    pub physical_block_size: u64,
    pub vendor: Option<String>,
    pub model: Option<String>,
    pub serial: Option<String>,
    pub transport: Option<String>,
    pub removable: bool,
    pub read_only: bool,
    pub rotational: bool,
    pub partitions: Vec<PartitionInfo>,
    /// Everything mounted from the disk, its partitions and the devices stacked
    /// on them (device-mapper, md); active swap shows as `[SWAP]`.
    pub mountpoints: Vec<String>,
    pub holders: Vec<String>,
    pub holds_running_system: bool,
    pub backing_file: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PartitionInfo {
    pub path: String,
    pub name: String,
    pub number: u32,
    pub start_bytes: u64,
    pub size_bytes: u64,
    pub mountpoints: Vec<String>,
}

const SYSTEM_MOUNTS: &[&str] = &["/", "/usr", "/boot", "/boot/efi", "/efi", "/var", "[SWAP]"];

impl Disk {
    /// The model as `bty disks` and `bty-tui` show it: the device's model
    /// string, or a loop device's backing file. sysfs `vendor` is no
    /// fallback: for virtio and NVMe disks it holds a PCI vendor id (`0x1af4`).
    pub fn model_label(&self) -> Option<String> {
        self.model.clone().or_else(|| self.backing_file.clone())
    }
}

/// "8.0 GiB"-style sizes for people.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

pub fn list_disks() -> Result<Vec<Disk>> {
    SystemView::host().list_disks()
}

pub fn disk_for_path(path: &Path) -> Result<Option<Disk>> {
    SystemView::host().disk_for_path(path)
}

pub fn find_by_serial(serial: &str) -> Result<Option<Disk>> {
    let want = serial.trim();
    if want.is_empty() {
        return Ok(None);
    }
    Ok(list_disks()?.into_iter().find(|d| d.serial.as_deref().map(str::trim) == Some(want)))
}

fn read_trim(p: &Path) -> Option<String> {
    let s = std::fs::read_to_string(p).ok()?;
    let t = s.trim().trim_matches(char::from(0)).trim();
    (!t.is_empty()).then(|| t.to_string())
}

fn read_u64(p: &Path) -> Option<u64> {
    read_trim(p)?.parse().ok()
}

fn read_flag(p: &Path) -> bool {
    read_u64(p) == Some(1)
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl SystemView {
    pub fn host() -> Self {
        SystemView {
            sys_root: "/sys".into(),
            mountinfo: "/proc/self/mountinfo".into(),
            swaps: "/proc/swaps".into(),
            dev_root: "/dev".into(),
        }
    }

    fn block(&self) -> PathBuf {
        self.sys_root.join("block")
    }

    /// major:minor → mountpoints, from mountinfo (by device number, and by the
    /// source path for filesystems such as btrfs that report anonymous numbers)
    /// and from active swap.
    /// Where the device `major:minor` is mounted (or used as swap).
    pub fn mountpoints_of(&self, devnum: &str) -> Vec<String> {
        self.mounts_by_devnum().remove(devnum).unwrap_or_default()
    }

    fn mounts_by_devnum(&self) -> HashMap<String, Vec<String>> {
        let mut map: HashMap<String, Vec<String>> = HashMap::new();
        if let Ok(text) = std::fs::read_to_string(&self.mountinfo) {
            for line in text.lines() {
                let f: Vec<&str> = line.split(' ').collect();
                if f.len() < 5 {
                    continue;
                }
                let mp = unescape(f[4]);
                map.entry(f[2].to_string()).or_default().push(mp.clone());
                if let Some(sep) = f.iter().position(|x| *x == "-") {
                    if let Some(src) = f.get(sep + 2) {
                        if let Some(num) = self.devnum_of_path(Path::new(&unescape(src))) {
                            if num != f[2] {
                                map.entry(num).or_default().push(mp);
                            }
                        }
                    }
                }
            }
        }
        if let Ok(text) = std::fs::read_to_string(&self.swaps) {
            for line in text.lines().skip(1) {
                if let Some(dev) = line.split_whitespace().next() {
                    if let Some(num) = self.devnum_of_path(Path::new(&unescape(dev))) {
                        map.entry(num).or_default().push("[SWAP]".into());
                    }
                }
            }
        }
        map
    }

    /// "MAJ:MIN" of a device path, via the real device node or, in a fake
    /// tree, via the matching `dev` file in sysfs.
    fn devnum_of_path(&self, p: &Path) -> Option<String> {
        if !p.starts_with("/dev") && !p.starts_with(&self.dev_root) {
            return None;
        }
        let name = p.file_name()?.to_string_lossy().to_string();
        let rel = p.strip_prefix("/dev").ok().unwrap_or(p);
        let real = self.dev_root.join(rel);
        if let Ok(m) = std::fs::metadata(&real) {
            if m.file_type().is_block_device() {
                let rdev = m.rdev();
                return Some(format!("{}:{}", libc::major(rdev), libc::minor(rdev)));
            }
        }
        // Partitions and dm devices by name (mapper names resolve via dm/name).
        self.devnum_by_name(&name)
    }

    fn devnum_by_name(&self, name: &str) -> Option<String> {
        let class = self.sys_root.join("class/block");
        if let Some(d) = read_trim(&class.join(name).join("dev")) {
            return Some(d);
        }
        let entries = std::fs::read_dir(&class).ok()?;
        for e in entries.flatten() {
            if read_trim(&e.path().join("dm/name")).as_deref() == Some(name) {
                return read_trim(&e.path().join("dev"));
            }
        }
        None
    }

    /// Names of devices stacked on `dir` (a disk or partition in sysfs), recursively.
    fn holders_of(&self, dir: &Path, seen: &mut HashSet<String>) -> Vec<String> {
        let mut out = Vec::new();
        if let Ok(rd) = std::fs::read_dir(dir.join("holders")) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if seen.insert(name.clone()) {
                    out.push(name.clone());
                    out.extend(self.holders_of(&self.block().join(&name), seen));
                }
            }
        }
        out
    }

    pub fn list_disks(&self) -> Result<Vec<Disk>> {
        let rd = std::fs::read_dir(self.block())
            .map_err(|e| Error::io(format!("cannot list {}", self.block().display()), e))?;
        let mounts = self.mounts_by_devnum();
        let mut disks = Vec::new();
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if ["ram", "zram", "dm-", "md", "sr", "fd", "nbd"].iter().any(|p| name.starts_with(p)) {
                continue;
            }
            if let Some(d) = self.disk(&name, &mounts) {
                disks.push(d);
            }
        }
        disks.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(disks)
    }

    fn disk(&self, name: &str, mounts: &HashMap<String, Vec<String>>) -> Option<Disk> {
        let dir = self.block().join(name);
        if read_flag(&dir.join("hidden")) {
            return None;
        }
        let backing_file = read_trim(&dir.join("loop/backing_file"));
        if name.starts_with("loop") && backing_file.is_none() {
            return None;
        }
        let size_bytes = read_u64(&dir.join("size")).unwrap_or(0) * 512;
        let dev = dir.join("device");
        let devpath =
            std::fs::canonicalize(&dir).map(|p| p.to_string_lossy().to_string()).unwrap_or_default();
        let transport = if name.starts_with("loop") {
            Some("loop")
        } else if name.starts_with("nvme") || devpath.contains("/nvme") {
            Some("nvme")
        } else if devpath.contains("/usb") {
            Some("usb")
        } else if name.starts_with("mmcblk") || devpath.contains("/mmc") {
            Some("mmc")
        } else if name.starts_with("vd") || devpath.contains("/virtio") {
            Some("virtio")
        } else if devpath.contains("/ata") {
            Some("sata")
        } else if name.starts_with("sd") {
            Some("scsi")
        } else {
            None
        }
        .map(str::to_string);
        let serial =
            read_trim(&dev.join("serial")).or_else(|| read_trim(&dir.join("serial"))).or_else(|| {
                // SCSI/SATA unit serial number page: 4-byte header, then ASCII.
                let raw = std::fs::read(dev.join("vpd_pg80")).ok()?;
                let s = String::from_utf8_lossy(raw.get(4..)?).trim().trim_matches(char::from(0)).to_string();
                (!s.is_empty()).then_some(s)
            });
        let mut seen = HashSet::new();
        let mut holders = self.holders_of(&dir, &mut seen);
        let devnum = read_trim(&dir.join("dev")).unwrap_or_default();
        let mut mountpoints: Vec<String> = mounts.get(&devnum).cloned().unwrap_or_default();
        let mut partitions = Vec::new();
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                let pdir = e.path();
                let Some(number) = read_u64(&pdir.join("partition")) else { continue };
                let pname = e.file_name().to_string_lossy().to_string();
                let pnum = read_trim(&pdir.join("dev")).unwrap_or_default();
                let mut pm = mounts.get(&pnum).cloned().unwrap_or_default();
                let ph = self.holders_of(&pdir, &mut seen);
                for h in &ph {
                    if let Some(n) = read_trim(&self.block().join(h).join("dev")) {
                        pm.extend(mounts.get(&n).cloned().unwrap_or_default());
                    }
                }
                holders.extend(ph);
                mountpoints.extend(pm.iter().cloned());
                partitions.push(PartitionInfo {
                    path: self.dev_root.join(&pname).to_string_lossy().to_string(),
                    name: pname,
                    number: number as u32,
                    start_bytes: read_u64(&pdir.join("start")).unwrap_or(0) * 512,
                    size_bytes: read_u64(&pdir.join("size")).unwrap_or(0) * 512,
                    mountpoints: pm,
                });
            }
        }
        partitions.sort_by_key(|p| p.number);
        for h in &holders {
            if let Some(n) = read_trim(&self.block().join(h).join("dev")) {
                for m in mounts.get(&n).cloned().unwrap_or_default() {
                    if !mountpoints.contains(&m) {
                        mountpoints.push(m);
                    }
                }
            }
        }
        mountpoints.dedup();
        let holds_running_system = mountpoints.iter().any(|m| SYSTEM_MOUNTS.contains(&m.as_str()));
        Some(Disk {
            path: self.dev_root.join(name).to_string_lossy().to_string(),
            name: name.to_string(),
            size_bytes,
            logical_block_size: read_u64(&dir.join("queue/logical_block_size")).unwrap_or(512),
            physical_block_size: read_u64(&dir.join("queue/physical_block_size")).unwrap_or(512),
            vendor: read_trim(&dev.join("vendor")),
            model: read_trim(&dev.join("model")),
            serial,
            transport,
            removable: read_flag(&dir.join("removable")),
            read_only: read_flag(&dir.join("ro")),
            rotational: read_flag(&dir.join("queue/rotational")),
            partitions,
            mountpoints,
            holders,
            holds_running_system,
            backing_file,
        })
    }

    /// The whole disk at `path` (symlinks such as /dev/disk/by-id followed).
    /// A partition is an error that names its disk; a regular file is `None`.
    pub fn disk_for_path(&self, path: &Path) -> Result<Option<Disk>> {
        let real = std::fs::canonicalize(path)
            .map_err(|e| Error::io(format!("cannot resolve {}", path.display()), e))?;
        let meta =
            std::fs::metadata(&real).map_err(|e| Error::io(format!("cannot stat {}", real.display()), e))?;
        if !meta.file_type().is_block_device() {
            return Ok(None);
        }
        let num = format!("{}:{}", libc::major(meta.rdev()), libc::minor(meta.rdev()));
        let sysdir = self.sys_root.join("dev/block").join(&num);
        let sysdir = std::fs::canonicalize(&sysdir).map_err(|e| {
            Error::io(format!("{} ({num}) is not in {}", real.display(), self.sys_root.display()), e)
        })?;
        let name = sysdir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        if sysdir.join("partition").exists() {
            let parent = sysdir.parent().and_then(|p| p.file_name()).map(|n| n.to_string_lossy().to_string());
            return Err(Error::failure(format!(
                "{} is a partition of /dev/{}; flash the whole disk",
                path.display(),
                parent.unwrap_or_default()
            )));
        }
        let mounts = self.mounts_by_devnum();
        match self.disk(&name, &mounts) {
            Some(mut d) => {
                d.path = path.to_string_lossy().to_string();
                Ok(Some(d))
            }
            None => Err(Error::failure(format!(
                "{} is not a disk bty can write (device-mapper, md or an unbound loop device)",
                path.display()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn w(p: &Path, s: &str) {
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, s).unwrap();
    }

    fn fake() -> (tempfile::TempDir, SystemView) {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        let b = r.join("sys/block");
        // sda: sda1 on /, sda2 on /boot
        w(&b.join("sda/size"), "16777216\n");
        w(&b.join("sda/dev"), "8:0\n");
        w(&b.join("sda/device/model"), "Samsung SSD  \n");
        w(&b.join("sda/device/vendor"), "ATA\n");
        w(&b.join("sda/device/serial"), "  S123  \n");
        w(&b.join("sda/queue/rotational"), "0\n");
        w(&b.join("sda/sda1/partition"), "1\n");
        w(&b.join("sda/sda1/dev"), "8:1\n");
        w(&b.join("sda/sda1/start"), "2048\n");
        w(&b.join("sda/sda1/size"), "1000\n");
        w(&b.join("sda/sda2/partition"), "2\n");
        w(&b.join("sda/sda2/dev"), "8:2\n");
        // nvme0n1p1 holds dm-0 mounted at /home
        w(&b.join("nvme0n1/size"), "2048\n");
        w(&b.join("nvme0n1/dev"), "259:0\n");
        w(&b.join("nvme0n1/nvme0n1p1/partition"), "1\n");
        w(&b.join("nvme0n1/nvme0n1p1/dev"), "259:1\n");
        fs::create_dir_all(b.join("nvme0n1/nvme0n1p1/holders/dm-0")).unwrap();
        w(&b.join("dm-0/dev"), "253:0\n");
        // usb stick, read-only, removable
        w(&b.join("sdb/size"), "64\n");
        w(&b.join("sdb/dev"), "8:16\n");
        w(&b.join("sdb/ro"), "1\n");
        w(&b.join("sdb/removable"), "1\n");
        // loop with and without backing file; zram skipped
        w(&b.join("loop0/size"), "8\n");
        w(&b.join("loop0/dev"), "7:0\n");
        w(&b.join("loop0/loop/backing_file"), "/tmp/x.img\n");
        w(&b.join("loop1/size"), "0\n");
        w(&b.join("zram0/size"), "8\n");
        w(&r.join("mountinfo"), "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n23 22 8:2 / /boot rw - vfat /dev/sda2 rw\n30 22 253:0 / /home\\040dir rw - ext4 /dev/mapper/home rw\n");
        w(&r.join("swaps"), "Filename Type Size Used Priority\n");
        let v = SystemView {
            sys_root: r.join("sys"),
            mountinfo: r.join("mountinfo"),
            swaps: r.join("swaps"),
            dev_root: r.join("dev"),
        };
        (t, v)
    }

    #[test]
    fn fake_tree() {
        let (_t, v) = fake();
        let disks = v.list_disks().unwrap();
        let names: Vec<&str> = disks.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["loop0", "nvme0n1", "sda", "sdb"]);
        let sda = &disks[2];
        assert_eq!(sda.size_bytes, 16777216 * 512);
        assert_eq!(sda.serial.as_deref(), Some("S123"));
        assert_eq!(sda.model.as_deref(), Some("Samsung SSD"));
        assert_eq!(sda.partitions.len(), 2);
        assert_eq!(sda.partitions[0].start_bytes, 2048 * 512);
        assert_eq!(sda.mountpoints, ["/", "/boot"]);
        assert!(sda.holds_running_system);
        let nvme = &disks[1];
        assert_eq!(nvme.transport.as_deref(), Some("nvme"));
        assert_eq!(nvme.holders, ["dm-0"]);
        assert_eq!(nvme.mountpoints, ["/home dir"]);
        assert!(!nvme.holds_running_system);
        assert!(disks[3].read_only && disks[3].removable);
        assert_eq!(disks[0].backing_file.as_deref(), Some("/tmp/x.img"));
        assert_eq!(disks[0].transport.as_deref(), Some("loop"));
    }

    #[test]
    fn sizes() {
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(8 << 30), "8.0 GiB");
    }

    #[test]
    fn host_listing_works() {
        list_disks().unwrap();
        assert!(disk_for_path(Path::new("/etc/hostname")).unwrap().is_none());
    }
}
