//! `bty os apply` on a real A/B disk (a loop device with the appliance's GPT
//! layout and a vfat ESP, as root): the update lands in the slot not booted
//! with its entry last; `kill -9` at every stage leaves the running slot the
//! default and the state partition byte-identical; `--force`; a mounted
//! (running) slot is refused; a damaged release writes nothing.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{code, sha256_file, stderr, stdout, Keys};

fn sh(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{:?}: {}", cmd, String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn keys(dir: &Path) -> Keys {
    common::minisign_keys(dir, "r")
}

/// A signed os release `version` under `base`; returns the raw root image.
fn release(base: &Path, k: &Keys, version: &str, seed: u64) -> Vec<u8> {
    let dir = base.join(version);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(base.join("latest"), format!("{version}\n")).unwrap();
    let raw = common::image_bytes(6 << 20, seed);
    std::fs::write(dir.join("root.img"), &raw).unwrap();
    let zst = common::compress(&dir.join("root.img"), "zst");
    std::fs::rename(&zst, dir.join("root.img.zst")).unwrap();
    std::fs::remove_file(dir.join("root.img")).unwrap();
    std::fs::write(dir.join("bty.efi"), format!("UKI {version}")).unwrap();
    let file = |role: &str, name: &str| {
        let p = dir.join(name);
        serde_json::json!({"role": role, "name": name, "url": name, "sha256": sha256_file(&p),
                           "size": std::fs::metadata(&p).unwrap().len()})
    };
    let m = serde_json::json!({"version": version, "arch": "x86_64", "type": "os",
                               "files": [file("root", "root.img.zst"), file("uki", "bty.efi")]});
    std::fs::write(dir.join("manifest.json"), serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    common::minisign_sign(k, &dir.join("manifest.json"), &format!("version={version} type=os"));
    raw
}

/// The appliance disk: a loop device with ESP, bty-a, bty-b, bty-secrets
/// and bty-state; the ESP formatted and mounted through a loop device over
/// its bytes (the kernel here may show no partitions of a loop device, so
/// nothing relies on it). Undone on drop.
struct Disk {
    dev: String,
    esp_dev: String,
    esp: PathBuf,
    /// (start, size) in bytes of partitions 1..=5.
    parts: Vec<(u64, u64)>,
}

impl Drop for Disk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.esp).status();
        let _ = Command::new("losetup").arg("-d").arg(&self.esp_dev).status();
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

impl Disk {
    fn read(&self, n: usize, len: usize) -> Vec<u8> {
        use std::io::{Read, Seek};
        let (start, size) = self.parts[n - 1];
        let mut f = std::fs::File::open(&self.dev).unwrap();
        f.seek(std::io::SeekFrom::Start(start)).unwrap();
        let mut buf = vec![0u8; len.min(size as usize)];
        f.read_exact(&mut buf).unwrap();
        buf
    }

    fn write(&self, n: usize, data: &[u8]) {
        use std::io::{Seek, Write};
        let (start, size) = self.parts[n - 1];
        assert!(data.len() as u64 <= size);
        let mut f = std::fs::OpenOptions::new().write(true).open(&self.dev).unwrap();
        f.seek(std::io::SeekFrom::Start(start)).unwrap();
        f.write_all(data).unwrap();
        f.sync_all().unwrap();
    }

    fn hash(&self, n: usize) -> String {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(self.read(n, usize::MAX)))
    }

    /// The kernel's own node for partition `n`, when it shows partitions.
    fn kernel_part(&self, n: usize) -> Option<String> {
        let name = Path::new(&self.dev).file_name()?.to_string_lossy().into_owned();
        let p = format!("{}p{n}", self.dev);
        Path::new(&format!("/sys/block/{name}/{name}p{n}"))
            .exists()
            .then_some(p)
            .filter(|p| Path::new(p).exists())
    }
}

fn disk(dir: &Path) -> Option<Disk> {
    if !common::is_root() {
        eprintln!("skipping loop-device test: needs root");
        return None;
    }
    for tool in ["sgdisk", "mkfs.vfat", "minisign", "zstd", "losetup"] {
        if !common::have(tool) {
            eprintln!("skipping: {tool} is not installed (checks/deps.sh installs it)");
            return None;
        }
    }
    let backing = dir.join("appliance.img");
    std::fs::File::create(&backing).unwrap().set_len(96 << 20).unwrap();
    sh(Command::new("sgdisk")
        .args(["-o", "-n1:2048:+24M", "-t1:ef00", "-c1:ESP", "-n2:0:+16M", "-t2:8304", "-c2:bty-a"])
        .args(["-n3:0:+16M", "-t3:8304", "-c3:bty-b", "-n4:0:+1M", "-t4:8300", "-c4:bty-secrets"])
        .args(["-n5:0:0", "-t5:8300", "-c5:bty-state"])
        .arg(&backing));
    let table = bty_core::slots::read_layout(&backing).unwrap();
    let mut parts = vec![];
    for p in [&table.esp, &table.a, &table.b, table.secrets.as_ref().unwrap(), table.state.as_ref().unwrap()]
    {
        parts.push((p.start_bytes, p.size_bytes));
    }
    let dev = sh(Command::new("losetup").args(["-f", "--show", "-P"]).arg(&backing)).trim().to_string();
    let (start, size) = parts[0];
    let esp_dev = sh(Command::new("losetup")
        .args(["-f", "--show", "-o", &start.to_string(), "--sizelimit", &size.to_string()])
        .arg(&backing))
    .trim()
    .to_string();
    let d = Disk { dev, esp_dev, esp: dir.join("esp"), parts };
    // vfat as on a real ESP where this kernel has it; bty only needs a mounted directory.
    let vfat = std::fs::read_to_string("/proc/filesystems").unwrap_or_default().contains("vfat")
        || Command::new("modprobe")
            .arg("vfat")
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    if vfat {
        sh(Command::new("mkfs.vfat").arg(&d.esp_dev));
    } else {
        eprintln!("this kernel has no vfat: the ESP is ext4 here");
        sh(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&d.esp_dev));
    }
    // The state partition: bytes an update must never change.
    d.write(5, &common::image_bytes(8 << 20, 99));
    std::fs::create_dir_all(&d.esp).unwrap();
    sh(Command::new("mount").arg(&d.esp_dev).arg(&d.esp));
    std::fs::create_dir_all(d.esp.join("EFI/Linux")).unwrap();
    Some(d)
}

fn state_hash(d: &Disk) -> String {
    d.hash(5)
}

fn esp_entries(d: &Disk) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(d.esp.join("EFI/Linux"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn reset_esp(d: &Disk, entries: &[&str]) {
    let linux = d.esp.join("EFI/Linux");
    std::fs::remove_dir_all(&linux).unwrap();
    std::fs::create_dir_all(&linux).unwrap();
    for e in entries {
        std::fs::write(linux.join(e), format!("uki {e}")).unwrap();
    }
}

fn apply_on(d: &Disk, booted: &str, base: &Path, k: &Keys, extra: &[&str]) -> Command {
    let mut c = common::bty();
    c.args(["os", "apply", "os", "--source"]).arg(base).arg("--pubkey").arg(&k.public);
    c.args(["--disk", &d.dev, "--esp"]).arg(&d.esp).args(["--booted-slot", booted]).args(extra);
    c
}

fn apply_cmd(d: &Disk, base: &Path, k: &Keys, extra: &[&str]) -> Command {
    apply_on(d, "a", base, k, extra)
}

fn next_boot(d: &Disk) -> String {
    let o = common::run(&[
        "os",
        "status",
        "--json",
        "--disk",
        &d.dev,
        "--esp",
        &d.esp.display().to_string(),
        "--booted-slot",
        "a",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    v["next_boot"]["entry"].as_str().unwrap_or("").to_string()
}

fn slot_prefix(d: &Disk, n: usize, len: usize) -> Vec<u8> {
    d.read(n, len)
}

#[test]
fn an_update_lands_in_the_other_slot_with_its_entry_last() {
    let t = tempfile::tempdir().unwrap();
    let Some(d) = disk(t.path()) else { return };
    let k = keys(t.path());
    let base = t.path().join("rel");
    let raw = release(&base, &k, "1.2.0", 12);
    reset_esp(&d, &["bty-a_1.1.0.efi", "bty-b_1.0.0.efi"]);
    let state = state_hash(&d);
    let slot_a = d.hash(2);

    // --dry-run writes nothing.
    let o = apply_cmd(&d, &base, &k, &["--dry-run"]).output().unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        stdout(&o).contains("slot b gets 1.2.0") && stdout(&o).contains("removes old entry bty-b_1.0.0.efi")
    );
    assert_eq!(esp_entries(&d), ["bty-a_1.1.0.efi", "bty-b_1.0.0.efi"]);

    let o = apply_cmd(&d, &base, &k, &[]).output().unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(esp_entries(&d), ["bty-a_1.1.0.efi", "bty-b_1.2.0+3.efi"]);
    assert_eq!(std::fs::read(d.esp.join("EFI/Linux/bty-b_1.2.0+3.efi")).unwrap(), b"UKI 1.2.0");
    assert_eq!(slot_prefix(&d, 3, raw.len()), raw, "slot b holds the root image");
    assert_eq!(d.hash(2), slot_a, "the booted slot is untouched");
    assert_eq!(state_hash(&d), state, "the state partition is untouched");
    assert_eq!(next_boot(&d), "bty-b_1.2.0+3.efi");

    // Booted slot b now (the new one passed): the same version again is nothing to do...
    let again = |extra: &[&str]| apply_on(&d, "b", &base, &k, extra).output().unwrap();
    let o = again(&[]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).contains("already runs 1.2.0"), "{}", stdout(&o));
    // ... and --force writes it to slot a.
    let o = again(&["--force"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(esp_entries(&d), ["bty-a_1.2.0+3.efi", "bty-b_1.2.0+3.efi"]);
    assert_eq!(slot_prefix(&d, 2, raw.len()), raw);

    // A downgrade needs --force.
    release(&base, &k, "1.0.0", 10);
    reset_esp(&d, &["bty-a_1.1.0.efi"]);
    let o = apply_cmd(&d, &base, &k, &[]).output().unwrap();
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(stderr(&o).contains("older than the running 1.1.0"), "{}", stderr(&o));
    assert_eq!(esp_entries(&d), ["bty-a_1.1.0.efi"]);
    let o = apply_cmd(&d, &base, &k, &["--force"]).output().unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(esp_entries(&d), ["bty-a_1.1.0.efi", "bty-b_1.0.0+3.efi"]);
    assert_eq!(state_hash(&d), state);
}

#[test]
fn a_damaged_release_or_a_mounted_slot_changes_nothing() {
    let t = tempfile::tempdir().unwrap();
    let Some(d) = disk(t.path()) else { return };
    let k = keys(t.path());
    let base = t.path().join("rel");
    release(&base, &k, "1.2.0", 12);
    reset_esp(&d, &["bty-a_1.1.0.efi", "bty-b_1.0.0.efi"]);
    d.write(3, b"old slot b");
    let before = (d.hash(3), state_hash(&d));

    // A root image whose digest is not the manifest's: exit 4, nothing written.
    let root = base.join("1.2.0/root.img.zst");
    let good = std::fs::read(&root).unwrap();
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x55;
    std::fs::write(&root, &bad).unwrap();
    let o = apply_cmd(&d, &base, &k, &[]).output().unwrap();
    assert_eq!(code(&o), 4, "{}", stderr(&o));
    assert!(stderr(&o).contains("nothing was written"), "{}", stderr(&o));
    assert_eq!(esp_entries(&d), ["bty-a_1.1.0.efi", "bty-b_1.0.0.efi"]);
    assert_eq!((d.hash(3), state_hash(&d)), before);
    std::fs::write(&root, &good).unwrap();

    // Another key: refused before anything is read.
    let other = {
        let dir = t.path().join("other");
        std::fs::create_dir_all(&dir).unwrap();
        keys(&dir)
    };
    let o = apply_cmd(&d, &base, &other, &[]).output().unwrap();
    assert_eq!(code(&o), 4, "{}", stderr(&o));
    assert_eq!(esp_entries(&d), ["bty-a_1.1.0.efi", "bty-b_1.0.0.efi"]);

    // No booted slot given and none to detect here: refused, nothing written.
    let o = common::bty()
        .args(["os", "apply", "os", "--source"])
        .arg(&base)
        .arg("--pubkey")
        .arg(&k.public)
        .args(["--disk", &d.dev, "--esp"])
        .arg(&d.esp)
        .output()
        .unwrap();
    if !std::fs::read_to_string("/proc/cmdline").unwrap_or_default().contains("bty.slot=") {
        assert_eq!(code(&o), 1, "{}", stderr(&o));
        assert!(stderr(&o).contains("--booted-slot"), "{}", stderr(&o));
    }

    // The slot apply would write is mounted (it runs the system, whatever
    // --booted-slot says). Needs the kernel's own partition devices.
    if let Some(part) = d.kernel_part(3) {
        sh(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&part));
        let mnt = t.path().join("slot-b");
        std::fs::create_dir_all(&mnt).unwrap();
        sh(Command::new("mount").arg(&part).arg(&mnt));
        let o = apply_cmd(&d, &base, &k, &[]).output().unwrap();
        let _ = Command::new("umount").arg(&mnt).status();
        assert_ne!(code(&o), 0);
        assert!(stderr(&o).contains("mounted"), "{}", stderr(&o));
    } else {
        eprintln!("the kernel shows no partitions of {}: the mounted-slot case is not checked here", d.dev);
    }
    assert!(!esp_entries(&d).iter().any(|e| e.contains("1.2.0")), "{:?}", esp_entries(&d));
    assert_eq!(state_hash(&d), before.1);
}

/// Wait until `pid` is stopped (it raised SIGSTOP at its stage), or exited.
fn wait_stopped(child: &mut std::process::Child) -> bool {
    for _ in 0..600 {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", child.id())).unwrap_or_default();
        let state = stat.rsplit_once(')').map(|(_, r)| r.trim_start().chars().next()).unwrap_or(None);
        if state == Some('T') {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    false
}

#[test]
fn kill_9_at_every_stage_leaves_the_running_slot_the_default() {
    let t = tempfile::tempdir().unwrap();
    let Some(d) = disk(t.path()) else { return };
    let k = keys(t.path());
    let base = t.path().join("rel");
    let raw = release(&base, &k, "1.2.0", 12);
    let state = state_hash(&d);
    for stage in ["staged", "cleared", "writing", "written", "installed"] {
        reset_esp(&d, &["bty-a_1.1.0.efi", "bty-b_1.0.0.efi"]);
        let mut child = apply_cmd(&d, &base, &k, &[])
            .env("BTY_OS_PAUSE_AT", stage)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        assert!(wait_stopped(&mut child), "apply never reached {stage}");
        child.kill().unwrap();
        child.wait().unwrap();
        let next = next_boot(&d);
        if stage == "installed" {
            assert_eq!(next, "bty-b_1.2.0+3.efi", "killed after {stage}");
        } else {
            assert_eq!(next, "bty-a_1.1.0.efi", "killed after {stage}: {:?}", esp_entries(&d));
            assert!(!esp_entries(&d).contains(&"bty-b_1.2.0+3.efi".to_string()), "{stage}");
        }
        assert_eq!(state_hash(&d), state, "killed after {stage}: the state partition changed");
        // The next apply finishes the job and clears what the killed one left.
        let o = apply_cmd(&d, &base, &k, &[]).output().unwrap();
        assert_eq!(code(&o), 0, "after {stage}: {}", stderr(&o));
        assert_eq!(esp_entries(&d), ["bty-a_1.1.0.efi", "bty-b_1.2.0+3.efi"], "after {stage}");
        assert_eq!(slot_prefix(&d, 3, raw.len()), raw);
    }
}
