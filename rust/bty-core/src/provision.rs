//! Offline provisioning in the live environment (`cijoe-offline`): after a
//! verified flash, find the written root filesystem, mount it with `/dev`,
//! `/proc` and `/sys` bound inside, run the machine's CIJOE workflow against
//! it with a timeout, unmount, and pack cijoe's output for the server.
//!
//! The server judges the run from the archive (cijoe's `task.state`) and
//! the exit status; this side only says what it ran and why it could not.

use std::ffi::CString;
use std::fs::File;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::cijoe::{bty_config, BtyValues};
use crate::error::{Error, Result};
use crate::partition::{self, TableKind};
use crate::wire::PlanWorkflow;

/// Where the live environment mounts the written root filesystem.
pub const TARGET_ROOT: &str = "/run/bty/target";

/// GPT partition types of a root filesystem (the Discoverable Partitions
/// Specification), this machine's architecture first.
const GPT_ROOT_TYPES: &[(&str, &str)] = &[
    ("4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709", "x86_64"),
    ("B921B045-1DF0-41C3-AF44-4C6F280D3FAE", "aarch64"),
    ("44479540-F297-41B2-9AF7-D131D5F0458A", "x86"),
    ("69DAD710-2CE4-4E3C-B16C-21A1D49ABED3", "arm"),
    ("72EC70A6-CF74-40E6-BD49-4BDA08E8F224", "riscv64"),
];

/// The filesystem chosen as the target's root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootChoice {
    /// Partition number (0: the disk holds a filesystem with no table).
    pub partition: u32,
    pub start_bytes: u64,
    pub size_bytes: u64,
    /// The type `mount(2)` is given.
    pub fstype: &'static str,
    /// Why this one, in words (console and report).
    pub why: String,
}

/// Which Linux filesystem starts at `offset`, from its superblock magic.
fn probe_fs(disk: &File, offset: u64) -> Option<&'static str> {
    let mut buf = vec![0u8; 0x10040 + 8];
    let mut got = 0;
    while got < buf.len() {
        match disk.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(_) => break,
        }
    }
    let buf = &buf[..got];
    let at = |o: usize, magic: &[u8]| buf.get(o..o + magic.len()) == Some(magic);
    if at(1080, &[0x53, 0xEF]) {
        Some("ext4")
    } else if at(0, b"XFSB") {
        Some("xfs")
    } else if at(0x10040, b"_BHRfS_M") {
        Some("btrfs")
    } else {
        None
    }
}

fn human(bytes: u64) -> String {
    crate::disks::human_size(bytes)
}

/// Choose the root filesystem of a written disk (or an image file): the
/// partition with the GPT root type of this architecture (then any root
/// type), else the largest Linux filesystem; a disk with no partition table
/// that holds a filesystem is its own root.
pub fn choose_root(disk: &Path) -> Result<RootChoice> {
    let f = File::open(disk).map_err(|e| Error::io(format!("cannot open {}", disk.display()), e))?;
    let mut head = vec![0u8; 1 << 20];
    let mut got = 0;
    while got < head.len() {
        match f.read_at(&mut head[got..], got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) => return Err(Error::io(format!("cannot read {}", disk.display()), e)),
        }
    }
    head.truncate(got);
    let Some(table) = partition::read_table(&head)? else {
        return match probe_fs(&f, 0) {
            Some(fstype) => Ok(RootChoice {
                partition: 0,
                start_bytes: 0,
                size_bytes: f.metadata().map(|m| m.len()).unwrap_or(0),
                fstype,
                why: format!("{} has no partition table and holds one {fstype} filesystem", disk.display()),
            }),
            None => Err(Error::failure(format!(
                "{} has no partition table and no Linux filesystem (ext4, xfs, btrfs): nothing to provision",
                disk.display()
            ))),
        };
    };
    let found: Vec<(&partition::Partition, Option<&'static str>)> =
        table.partitions.iter().map(|p| (p, probe_fs(&f, p.start_bytes))).collect();
    let choice = |p: &partition::Partition, fstype: &'static str, why: String| RootChoice {
        partition: p.number,
        start_bytes: p.start_bytes,
        size_bytes: p.size_bytes,
        fstype,
        why,
    };
    if table.kind == TableKind::Gpt {
        let arch = std::env::consts::ARCH;
        let mut types: Vec<&(&str, &str)> = GPT_ROOT_TYPES.iter().collect();
        types.sort_by_key(|(_, a)| *a != arch);
        for (guid, a) in types {
            if let Some((p, fs)) = found.iter().find(|(p, _)| p.type_id.eq_ignore_ascii_case(guid)) {
                let Some(fstype) = fs else {
                    return Err(Error::failure(format!(
                        "partition {} has the GPT root type ({a}) but no filesystem bty can mount (ext4, xfs, btrfs)",
                        p.number
                    )));
                };
                let why = format!(
                    "partition {} ({fstype}, {}): the GPT root partition type ({a})",
                    p.number,
                    human(p.size_bytes)
                );
                return Ok(choice(p, fstype, why));
            }
        }
    }
    let largest = found
        .iter()
        .filter_map(|(p, fs)| fs.map(|fs| (*p, fs)))
        .max_by_key(|(p, _)| (p.size_bytes, std::cmp::Reverse(p.number)));
    match largest {
        Some((p, fstype)) => {
            let others = found.iter().filter(|(_, fs)| fs.is_some()).count() - 1;
            let why = format!(
                "partition {} ({fstype}, {}): no partition has the GPT root type, and it is the largest Linux filesystem{}",
                p.number,
                human(p.size_bytes),
                if others > 0 { format!(" of {}", others + 1) } else { String::new() }
            );
            Ok(choice(p, fstype, why))
        }
        None => Err(Error::failure(format!(
            "no partition of {} holds a Linux filesystem (ext4, xfs, btrfs); partitions: {}",
            disk.display(),
            table
                .partitions
                .iter()
                .map(|p| format!("{} {}", p.number, p.type_name.as_deref().unwrap_or(&p.type_id)))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// The block device a chosen root is mounted from.
#[derive(Debug)]
pub struct RootDevice {
    pub path: PathBuf,
    /// How it was found, in words.
    pub how: String,
    /// A loop device over the partition's bytes stays attached while this
    /// is open, and detaches itself once the last user (the mount) is gone.
    hold: Option<File>,
}

impl RootDevice {
    /// Once the filesystem is mounted, the mount holds the device.
    pub fn release(&mut self) {
        self.hold = None;
    }
}

/// The block device of partition `number` of `disk`: the kernel's own
/// (from sysfs; it waits a little for the table re-read after the flash,
/// and makes the node where no devtmpfs or udev does), else, on a kernel
/// that shows no partitions of the disk (no partition-table support, or a
/// loop device without partition scanning), a loop device over the
/// partition's bytes.
pub fn partition_device(disk: &Path, number: u32, start: u64, size: u64) -> Result<RootDevice> {
    if number == 0 {
        return Ok(RootDevice { path: disk.to_path_buf(), how: "the whole disk".into(), hold: None });
    }
    let real = std::fs::canonicalize(disk).unwrap_or_else(|_| disk.to_path_buf());
    let name = real.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let sys = Path::new("/sys/class/block").join(&name);
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        for entry in std::fs::read_dir(&sys).into_iter().flatten().flatten() {
            let p = entry.path();
            let n = std::fs::read_to_string(p.join("partition")).ok();
            if n.as_deref().map(str::trim) != Some(&number.to_string()) {
                continue;
            }
            let part = entry.file_name().to_string_lossy().into_owned();
            let node = Path::new("/dev").join(&part);
            let how = format!("the kernel's partition device {part}");
            if node.exists() {
                return Ok(RootDevice { path: node, how, hold: None });
            }
            if let Some(dev) = std::fs::read_to_string(p.join("dev")).ok().and_then(|d| parse_dev(&d)) {
                let own = Path::new("/run/bty").join(&part);
                make_node(&own, dev)?;
                return Ok(RootDevice { path: own, how, hold: None });
            }
        }
        if Instant::now() >= deadline {
            return loop_over(disk, start, size).map_err(|e| {
                Error::failure(format!(
                    "the kernel shows no partition {number} of {} and a loop device over it failed: {e}",
                    disk.display()
                ))
            });
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `struct loop_info64` of `<linux/loop.h>`.
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

const LOOP_SET_FD: libc::c_ulong = 0x4C00;
const LOOP_CLR_FD: libc::c_ulong = 0x4C01;
const LOOP_SET_STATUS64: libc::c_ulong = 0x4C04;
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
const LOOP_MAJOR: u32 = 7;

/// Attach a free loop device to `size` bytes of `disk` at `start`, set to
/// detach itself when its last user goes.
fn loop_over(disk: &Path, start: u64, size: u64) -> Result<RootDevice> {
    use std::os::fd::AsRawFd;
    let ctl = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")
        .map_err(|e| Error::io("cannot open /dev/loop-control", e))?;
    // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a number.
    let n = unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE as _) };
    if n < 0 {
        return Err(os_err("no free loop device".into()));
    }
    let path = PathBuf::from(format!("/dev/loop{n}"));
    if !path.exists() {
        make_node(&path, (LOOP_MAJOR, n as u32))?;
    }
    let backing = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk)
        .map_err(|e| Error::io(format!("cannot open {}", disk.display()), e))?;
    let lo = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(format!("cannot open {}", path.display()), e))?;
    // SAFETY: LOOP_SET_FD takes the backing file's descriptor.
    if unsafe { libc::ioctl(lo.as_raw_fd(), LOOP_SET_FD as _, backing.as_raw_fd()) } != 0 {
        return Err(os_err(format!("cannot attach {} to {}", disk.display(), path.display())));
    }
    // SAFETY: all-zero is a valid loop_info64.
    let mut info: LoopInfo64 = unsafe { std::mem::zeroed() };
    info.lo_offset = start;
    info.lo_sizelimit = size;
    info.lo_flags = LO_FLAGS_AUTOCLEAR;
    let name = disk.as_os_str().as_bytes();
    let k = name.len().min(63);
    info.lo_file_name[..k].copy_from_slice(&name[..k]);
    // SAFETY: a pointer to a live loop_info64 for the call's duration.
    if unsafe { libc::ioctl(lo.as_raw_fd(), LOOP_SET_STATUS64 as _, &info as *const LoopInfo64) } != 0 {
        let e = os_err(format!("cannot set the offset of {}", path.display()));
        // SAFETY: detaches what was just attached.
        unsafe { libc::ioctl(lo.as_raw_fd(), LOOP_CLR_FD as _, 0) };
        return Err(e);
    }
    let how = format!(
        "{} over bytes {start}..{} of {} (the kernel shows no partitions of it)",
        path.display(),
        start + size,
        disk.display()
    );
    Ok(RootDevice { path, how, hold: Some(lo) })
}

fn parse_dev(s: &str) -> Option<(u32, u32)> {
    let (a, b) = s.trim().split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

fn make_node(path: &Path, (major, minor): (u32, u32)) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
    }
    let c = cpath(path)?;
    // SAFETY: a valid NUL-terminated path; mknod takes no other pointers.
    let rc = unsafe { libc::mknod(c.as_ptr(), libc::S_IFBLK | 0o600, libc::makedev(major, minor)) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::AlreadyExists {
            return Err(Error::io(format!("cannot create the device node {}", path.display()), e));
        }
    }
    Ok(())
}

fn cpath(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| Error::failure(format!("{} holds a NUL", p.display())))
}

fn os_err(what: String) -> Error {
    Error::io(what, std::io::Error::last_os_error())
}

/// The root filesystem mounted at `root` with `/dev`, `/proc` and `/sys`
/// bound inside; unmounted (in reverse) by [`Mounted::unmount`], or at
/// worst detached when dropped.
#[derive(Debug)]
pub struct Mounted {
    root: PathBuf,
    /// Mounted paths, in mount order.
    mounts: Vec<PathBuf>,
}

impl Mounted {
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Mount `device` (a `fstype` filesystem) read-write at `root`.
    pub fn mount(device: &Path, fstype: &str, root: &Path) -> Result<Mounted> {
        std::fs::create_dir_all(root)
            .map_err(|e| Error::io(format!("cannot create {}", root.display()), e))?;
        let mut m = Mounted { root: root.to_path_buf(), mounts: vec![] };
        let (src, dst) = (cpath(device)?, cpath(root)?);
        let ty = CString::new(fstype).map_err(|_| Error::failure("bad filesystem type"))?;
        // SAFETY: valid NUL-terminated strings; no data argument.
        let rc = unsafe { libc::mount(src.as_ptr(), dst.as_ptr(), ty.as_ptr(), 0, std::ptr::null()) };
        if rc != 0 {
            return Err(os_err(format!(
                "cannot mount {} ({fstype}) at {}",
                device.display(),
                root.display()
            )));
        }
        m.mounts.push(root.to_path_buf());
        for sub in ["dev", "proc", "sys"] {
            let at = root.join(sub);
            if !at.is_dir() {
                std::fs::create_dir_all(&at).map_err(|e| {
                    Error::io(format!("cannot create {} for the bind mount", at.display()), e)
                })?;
            }
            let (s, d) = (cpath(&Path::new("/").join(sub))?, cpath(&at)?);
            // SAFETY: as above; a recursive bind takes no type or data.
            let rc = unsafe {
                libc::mount(
                    s.as_ptr(),
                    d.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REC,
                    std::ptr::null(),
                )
            };
            if rc != 0 {
                return Err(os_err(format!("cannot bind /{sub} into {}", root.display())));
            }
            m.mounts.push(at);
        }
        Ok(m)
    }

    /// Unmount everything, binds first; the root is flushed and unmounted
    /// cleanly (retried while a straggling process holds it).
    pub fn unmount(mut self) -> Result<()> {
        self.release(false)
    }

    fn release(&mut self, detach_all: bool) -> Result<()> {
        let mut first_err = None;
        while let Some(at) = self.mounts.pop() {
            let Ok(c) = cpath(&at) else { continue };
            let is_root = self.mounts.is_empty();
            if !is_root || detach_all {
                // SAFETY: a valid path; recursive binds are detached whole.
                if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 && first_err.is_none() {
                    first_err = Some(os_err(format!("cannot unmount {}", at.display())));
                }
                continue;
            }
            // SAFETY: sync takes nothing.
            unsafe { libc::sync() };
            let mut done = false;
            for _ in 0..25 {
                // SAFETY: a valid path.
                if unsafe { libc::umount2(c.as_ptr(), 0) } == 0 {
                    done = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            if !done {
                let e = os_err(format!("{} stayed busy; it was detached instead", at.display()));
                // SAFETY: a valid path.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = self.release(true);
    }
}

/// How cijoe ended, as the agent saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CijoeExit {
    /// Its exit status (None: it never ran, was killed or timed out).
    pub code: Option<i32>,
    /// Why it could not run or finish, when it could not.
    pub reason: Option<String>,
}

/// What an offline run needs besides the workflow.
#[derive(Debug, Clone)]
pub struct OfflineRun {
    /// The cijoe executable.
    pub command: String,
    /// An empty or absent directory for the task, configs, output and log.
    pub work: PathBuf,
    pub values: BtyValues,
}

/// Run `wf` with cijoe: `cijoe TASK -c [WORKFLOW_CONFIG] -c BTY -o work/out
/// --monitor`, stdout and stderr in `out/bty-cijoe.log`, the whole process
/// group killed at the timeout. The output directory always exists after.
pub fn run_cijoe(wf: &PlanWorkflow, run: &OfflineRun) -> CijoeExit {
    let fail = |why: String| CijoeExit { code: None, reason: Some(why) };
    let work = &run.work;
    let out = work.join("out");
    if let Err(e) = std::fs::create_dir_all(work) {
        return fail(format!("cannot create {}: {e}", work.display()));
    }
    let task = work.join("task.yaml");
    let bty = work.join("bty.toml");
    let mut configs = vec![];
    let written = std::fs::write(&task, &wf.task).and_then(|_| {
        if let Some(c) = &wf.config {
            let p = work.join("config.toml");
            std::fs::write(&p, c)?;
            configs.push(p);
        }
        std::fs::write(&bty, bty_config(&run.values, None))?;
        configs.push(bty.clone());
        Ok(())
    });
    if let Err(e) = written {
        return fail(format!("cannot write the workflow into {}: {e}", work.display()));
    }
    let log_path = work.join("cijoe.log");
    let exit = match File::create(&log_path).and_then(|l| Ok((l.try_clone()?, l))) {
        Err(e) => fail(format!("cannot create {}: {e}", log_path.display())),
        Ok((l1, l2)) => {
            let mut cmd = Command::new(&run.command);
            cmd.arg(&task);
            for c in &configs {
                cmd.arg("-c").arg(c);
            }
            cmd.arg("-o").arg(&out).arg("--monitor").current_dir(work);
            cmd.stdin(Stdio::null()).stdout(l1).stderr(l2).process_group(0);
            match cmd.spawn() {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => fail(format!(
                    "cijoe is not installed in this live environment ({:?} was not found)",
                    run.command
                )),
                Err(e) => fail(format!("cannot start {}: {e}", run.command)),
                Ok(child) => wait_bounded(child, Duration::from_secs(wf.timeout_s.max(1))),
            }
        }
    };
    let _ = std::fs::create_dir_all(&out);
    let _ = std::fs::copy(&log_path, out.join("bty-cijoe.log"));
    exit
}

fn wait_bounded(mut child: std::process::Child, timeout: Duration) -> CijoeExit {
    let pid = child.id() as i32;
    let kill_group = || {
        // SAFETY: a signal to the process group this run started.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
    };
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(st)) => {
                // A step may have left children behind in the group.
                kill_group();
                return match st.code() {
                    Some(c) => CijoeExit { code: Some(c), reason: None },
                    None => CijoeExit { code: None, reason: Some(format!("cijoe was killed ({st})")) },
                };
            }
            Ok(None) if Instant::now() >= deadline => {
                kill_group();
                let _ = child.wait();
                return CijoeExit {
                    code: None,
                    reason: Some(format!(
                        "timed out after {} s; the workflow was stopped",
                        timeout.as_secs()
                    )),
                };
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => {
                kill_group();
                return CijoeExit { code: None, reason: Some(format!("cannot wait for cijoe: {e}")) };
            }
        }
    }
}

/// Pack `dir` as `archive` (`tar.gz`, paths relative to `dir`).
pub fn pack(dir: &Path, archive: &Path) -> Result<()> {
    let f =
        File::create(archive).map_err(|e| Error::io(format!("cannot create {}", archive.display()), e))?;
    let gz = flate2::write::GzEncoder::new(f, flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    tar.follow_symlinks(false);
    tar.append_dir_all(".", dir).map_err(|e| Error::io(format!("cannot pack {}", dir.display()), e))?;
    let gz = tar.into_inner().map_err(|e| Error::io("cannot finish the report archive", e))?;
    let mut f = gz.finish().map_err(|e| Error::io("cannot finish the report archive", e))?;
    f.flush().map_err(|e| Error::io("cannot write the report archive", e))?;
    Ok(())
}

/// Write a note into the report's directory (what bty chose and did).
pub fn note(out: &Path, text: &str) {
    let _ = std::fs::create_dir_all(out);
    let _ = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(out.join("bty-offline.txt"))
        .and_then(|mut f| writeln!(f, "{text}"));
}

#[cfg(test)]
mod tests {
    use super::*;

    use gpt::partition_types::{Type, EFI as ESP, LINUX_FS as LINUX, LINUX_ROOT_X64 as ROOT_X86_64};

    /// A GPT disk image of partitions (`size` MiB, type); `ext` puts an
    /// ext4 superblock magic into the partition.
    fn gpt_image(dir: &Path, parts: &[(Type, u64, bool)]) -> PathBuf {
        let total: u64 = parts.iter().map(|p| p.1).sum::<u64>() + 2;
        let mut dev = std::io::Cursor::new(vec![0u8; (total << 20) as usize]);
        gpt::mbr::ProtectiveMBR::with_lb_size(u32::try_from((total << 20) / 512 - 1).unwrap())
            .overwrite_lba0(&mut dev)
            .unwrap();
        let mut disk = gpt::GptConfig::new().writable(true).create_from_device(&mut dev, None).unwrap();
        for (i, (ty, mib, _)) in parts.iter().enumerate() {
            disk.add_partition(&format!("p{}", i + 1), mib << 20, ty.clone(), 0, None).unwrap();
        }
        let starts: Vec<(u32, u64)> =
            disk.partitions().iter().map(|(n, p)| (*n, p.first_lba * 512)).collect();
        disk.write().unwrap();
        let mut image = dev.into_inner();
        for (n, start) in starts {
            if parts[n as usize - 1].2 {
                let at = (start + 1080) as usize;
                image[at..at + 2].copy_from_slice(&[0x53, 0xEF]);
            }
        }
        let path = dir.join(format!("disk-{}.img", parts.len()));
        std::fs::write(&path, image).unwrap();
        path
    }

    #[test]
    fn the_gpt_root_type_wins_over_a_larger_filesystem() {
        let d = tempfile::tempdir().unwrap();
        let img = gpt_image(d.path(), &[(ESP, 2, false), (LINUX, 8, true), (ROOT_X86_64, 4, true)]);
        let c = choose_root(&img).unwrap();
        assert_eq!((c.partition, c.fstype), (3, "ext4"), "{c:?}");
        assert!(c.why.contains("GPT root partition type"), "{}", c.why);
    }

    #[test]
    fn without_a_root_type_the_largest_linux_filesystem() {
        let d = tempfile::tempdir().unwrap();
        let img =
            gpt_image(d.path(), &[(ESP, 2, false), (LINUX, 3, true), (LINUX, 6, true), (LINUX, 9, false)]);
        let c = choose_root(&img).unwrap();
        assert_eq!(c.partition, 3, "{c:?}");
        assert!(c.why.contains("largest Linux filesystem of 2"), "{}", c.why);
    }

    #[test]
    fn no_linux_filesystem_is_an_error_that_lists_the_partitions() {
        let d = tempfile::tempdir().unwrap();
        let img = gpt_image(d.path(), &[(ESP, 2, false), (LINUX, 3, false)]);
        let e = choose_root(&img).unwrap_err().to_string();
        assert!(e.contains("no partition") && e.contains("1 ") && e.contains("2 "), "{e}");
        let img2 = gpt_image(d.path(), &[(ROOT_X86_64, 3, false)]);
        let e = choose_root(&img2).unwrap_err().to_string();
        assert!(e.contains("GPT root type"), "{e}");
    }

    #[test]
    fn a_bare_filesystem_is_its_own_root() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("fs.img");
        let f = File::create(&p).unwrap();
        f.set_len(4 << 20).unwrap();
        f.write_at(b"XFSB", 0).unwrap();
        let c = choose_root(&p).unwrap();
        assert_eq!((c.partition, c.fstype), (0, "xfs"));
    }

    #[test]
    fn a_missing_cijoe_is_a_reason_and_the_output_directory_exists() {
        let d = tempfile::tempdir().unwrap();
        let wf = PlanWorkflow {
            name: "w".into(),
            task: "steps: []\n".into(),
            config: None,
            timeout_s: 5,
            image: None,
            digest: None,
        };
        let run = OfflineRun {
            command: "/nonexistent/cijoe".into(),
            work: d.path().join("w"),
            values: BtyValues::default(),
        };
        let exit = run_cijoe(&wf, &run);
        assert_eq!(exit.code, None);
        assert!(exit.reason.unwrap().contains("not installed"));
        assert!(run.work.join("out").is_dir());
        pack(&run.work.join("out"), &d.path().join("r.tar.gz")).unwrap();
    }

    #[test]
    fn a_timeout_kills_the_whole_group() {
        let d = tempfile::tempdir().unwrap();
        let script = d.path().join("fake-cijoe");
        // A stand-in that leaves a grandchild behind; the timeout must take both.
        std::fs::write(
            &script,
            format!("#!/bin/sh\n(sleep 300; touch {}/late) &\nsleep 300\n", d.path().display()),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let wf = PlanWorkflow {
            name: "w".into(),
            task: "steps: []\n".into(),
            config: None,
            timeout_s: 1,
            image: None,
            digest: None,
        };
        let run = OfflineRun {
            command: script.display().to_string(),
            work: d.path().join("w"),
            values: BtyValues::default(),
        };
        let t = Instant::now();
        let exit = run_cijoe(&wf, &run);
        assert!(t.elapsed() < Duration::from_secs(10));
        assert!(exit.reason.unwrap().contains("timed out after 1 s"));
    }
}
