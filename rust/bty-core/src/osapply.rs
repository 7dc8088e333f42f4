//! Applying an appliance release (`bty os apply`, and bty-web's OS page).
//!
//! `os` releases go to the slot that is not booted, in an order chosen so a
//! power cut at any moment leaves the running slot the default:
//!
//! 1. `staged`: the release's UKI is fetched into the ESP under a hidden
//!    name (not an entry systemd-boot reads) and checked against the manifest;
//! 2. `cleared`: the target slot's old entries are removed, so a slot being
//!    overwritten is never bootable;
//! 3. `written`: the root image streams through the flash engine onto the
//!    slot's partition, its digest checked inline and read back;
//! 4. `installed`: the staged UKI is renamed to `bty-<slot>_<version>+3.efi`,
//!    the boot entry systemd-boot tries three times before it falls back.
//!
//! `efisys` releases replace loader files in the ESP by write-then-rename,
//! keeping each previous file under `EFI/bty/previous/`.
//!
//! `BTY_OS_PAUSE_AT=<stage>` stops the process (SIGSTOP) once a stage is
//! done (`writing`: after the first MiB reached the slot), so tests can
//! `kill -9` it at each stage.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use serde::Serialize;

use crate::digest::Expected;
use crate::error::{Error, Result};
use crate::flash::{self, FlashRequest, Progress};
use crate::osupdate::{self, compare_versions, Release, ReleaseType};
use crate::slots::{self, Layout, Slot};
use crate::source::Source;

/// Boots a new entry gets to prove itself before systemd-boot falls back.
pub const TRIES: u32 = 3;

/// The appliance this runs on: its disk, where its ESP is mounted, its
/// layout and the slot it booted.
#[derive(Debug, Clone)]
pub struct Appliance {
    pub disk: PathBuf,
    pub esp: PathBuf,
    pub layout: Layout,
    pub booted: Option<Slot>,
}

impl Appliance {
    /// Find the appliance: each part given (rescue, tests) or detected: the
    /// disk with `bty-a` and `bty-b`, the ESP at /efi, /boot or /boot/efi,
    /// the booted slot from the kernel command line or systemd-boot's
    /// `LoaderEntrySelected`.
    pub fn detect(disk: Option<&Path>, esp: Option<&Path>, booted: Option<Slot>) -> Result<Appliance> {
        let disk = match disk {
            Some(d) => d.to_path_buf(),
            None => slots::find_disk()?,
        };
        let layout = slots::read_layout(&disk)?;
        let esp = slots::esp_dir(esp)?;
        let booted = booted.or_else(|| detect_booted(&layout));
        Ok(Appliance { disk, esp, layout, booted })
    }

    fn booted_or_err(&self) -> Result<Slot> {
        self.booted.ok_or_else(|| {
            Error::failure(
                "cannot tell which slot is booted (no bty.slot=, root=PARTLABEL=/PARTUUID= of a slot, or \
                 LoaderEntrySelected): pass --booted-slot a|b",
            )
        })
    }
}

/// One slot as `bty os status` and bty-web's OS page show it.
#[derive(Debug, Clone, Serialize)]
pub struct SlotStatus {
    pub slot: Slot,
    pub partition: u32,
    pub booted: bool,
    pub version: Option<String>,
    pub entry: Option<String>,
    pub tries_left: Option<u32>,
    pub tries_done: Option<u32>,
    pub bootable: Option<bool>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NextBoot {
    pub entry: String,
    pub slot: Slot,
}

/// An update whose slot ran out of tries; systemd-boot went back.
#[derive(Debug, Clone, Serialize)]
pub struct FailedUpdate {
    pub version: String,
    pub running: String,
    pub message: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub disk: PathBuf,
    pub esp: PathBuf,
    pub booted: Option<Slot>,
    pub slots: Vec<SlotStatus>,
    pub next_boot: Option<NextBoot>,
    pub failed_update: Option<FailedUpdate>,
    pub state_partition: Option<u32>,
    pub secrets_partition: Option<u32>,
    /// The efisys release the ESP holds, when one was applied.
    pub efisys: Option<String>,
}

impl Appliance {
    /// The slots, their entries and counters, what boots next, and a failed update.
    pub fn status(&self) -> Status {
        let slot = |s: Slot| {
            let e = slots::slot_entry(&self.esp, s);
            SlotStatus {
                slot: s,
                partition: self.layout.slot(s).number,
                booted: self.booted == Some(s),
                version: e.as_ref().map(|(_, e)| e.version.clone()),
                entry: e.as_ref().map(|(n, _)| n.clone()),
                tries_left: e.as_ref().and_then(|(_, e)| e.tries_left),
                tries_done: e.as_ref().and_then(|(_, e)| e.tries_done),
                bootable: e.as_ref().map(|(_, e)| e.bootable()),
            }
        };
        Status {
            disk: self.disk.clone(),
            esp: self.esp.clone(),
            booted: self.booted,
            slots: vec![slot(Slot::A), slot(Slot::B)],
            next_boot: slots::default_entry(&self.esp).map(|(entry, e)| NextBoot { entry, slot: e.slot }),
            failed_update: slots::failed_update(&self.esp).map(|(version, running)| FailedUpdate {
                message: format!("update to {version} failed its health checks; running {running}"),
                version,
                running,
            }),
            state_partition: self.layout.state.as_ref().map(|p| p.number),
            secrets_partition: self.layout.secrets.as_ref().map(|p| p.number),
            efisys: efisys_version(&self.esp),
        }
    }
}

/// The booted slot from `/proc/cmdline`, else systemd-boot's selected entry.
pub fn detect_booted(layout: &Layout) -> Option<Slot> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    slots::booted_from_cmdline(&cmdline, layout)
        .or_else(|| slots::loader_entry_selected().and_then(|e| slots::booted_from_loader_entry(&e)))
}

/// What an apply will do, printed by `--dry-run`.
#[derive(Debug, Clone, Serialize)]
pub struct OsPlan {
    pub kind: ReleaseType,
    pub version: String,
    /// The version the booted slot (os) or the ESP (efisys) holds now.
    pub running: Option<String>,
    /// False when the release is already there (nothing is written).
    pub write: bool,
    pub why: String,
    pub slot: Option<Slot>,
    pub partition: Option<u32>,
    /// The boot entry installed last.
    pub entry: Option<String>,
    /// The target slot's entries removed before its partition is written.
    pub removes: Vec<String>,
    pub files: Vec<String>,
}

/// A step of an apply, for progress output.
pub enum ApplyEvent<'a> {
    Stage { stage: &'static str, detail: String },
    Flash(&'a Progress),
}

fn pause_at(stage: &str) {
    if std::env::var("BTY_OS_PAUSE_AT").is_ok_and(|s| s == stage) {
        // SAFETY: raising a signal on this process; SIGSTOP cannot be caught.
        unsafe { libc::raise(libc::SIGSTOP) };
    }
}

fn linux_dir(esp: &Path) -> PathBuf {
    esp.join("EFI").join("Linux")
}

/// Plan an `os` release onto the slot that is not booted.
pub fn plan_os(release: &Release, app: &Appliance, force: bool) -> Result<OsPlan> {
    let m = &release.manifest;
    if m.kind != ReleaseType::Os {
        return Err(Error::usage(format!(
            "{} is an {} release, not os",
            release.manifest_url,
            m.kind.as_str()
        )));
    }
    let booted = app.booted_or_err()?;
    let target = booted.other();
    if m.file("uki").is_none() {
        return Err(Error::failure(format!(
            "os release {} has no uki: bty's slot entries are unified kernel images",
            m.version
        )));
    }
    let running = slots::slot_entry(&app.esp, booted).map(|(_, e)| e.version);
    let here = slots::slot_entry(&app.esp, target);
    let (write, why) = match &running {
        Some(r) if !force && r == &m.version => (
            false,
            format!(
                "slot {} already runs {r}; nothing to do (--force writes it to slot {})",
                booted.as_str(),
                target.as_str()
            ),
        ),
        Some(r) if !force && compare_versions(&m.version, r).is_lt() => {
            return Err(Error::failure(format!(
                "{} is older than the running {r}; pass --force to downgrade",
                m.version
            )))
        }
        _ => match &here {
            Some((_, e)) if !force && e.version == m.version && e.tries_left == Some(0) => {
                return Err(Error::failure(format!(
                    "{} already failed its health checks in slot {}; pass --force to try it again",
                    m.version,
                    target.as_str()
                )))
            }
            _ => (true, format!("slot {} gets {} and boots it next", target.as_str(), m.version)),
        },
    };
    let removes =
        slots::entries(&app.esp).into_iter().filter(|(_, e)| e.slot == target).map(|(n, _)| n).collect();
    Ok(OsPlan {
        kind: ReleaseType::Os,
        version: m.version.clone(),
        running,
        write,
        why,
        slot: Some(target),
        partition: Some(app.layout.slot(target).number),
        entry: Some(slots::entry_name(target, &m.version, Some(TRIES))),
        removes,
        files: m.files.iter().map(|f| release.file_url(f)).collect(),
    })
}

/// What an apply did.
#[derive(Debug, Clone, Serialize)]
pub struct Applied {
    pub plan: OsPlan,
    pub flash: Option<flash::FlashSummary>,
}

/// Apply a planned `os` release. Never writes the booted slot.
pub fn apply_os(
    release: &Release,
    app: &Appliance,
    plan: OsPlan,
    cancel: &AtomicBool,
    on_event: &mut dyn FnMut(ApplyEvent),
) -> Result<Applied> {
    if !plan.write {
        return Ok(Applied { plan, flash: None });
    }
    let booted = app.booted_or_err()?;
    let target = booted.other();
    if plan.slot != Some(target) {
        return Err(Error::failure("the booted slot changed since the plan was made"));
    }
    let m = &release.manifest;
    let (root, uki) =
        (m.file("root").expect("checked by plan_os"), m.file("uki").expect("checked by plan_os"));
    let dir = linux_dir(&app.esp);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
    // One apply at a time on this ESP (the CLI and bty-web's job alike).
    let _lock = lock_esp(&app.esp)?;
    // Hidden files a killed apply left behind (staged entries and their partial downloads).
    for e in
        std::fs::read_dir(&dir).map_err(|e| Error::io(format!("cannot read {}", dir.display()), e))?.flatten()
    {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with('.') && n.contains("bty-") && (n.ends_with(".partial") || n.ends_with(".staged")) {
            let _ = std::fs::remove_file(e.path());
        }
    }
    let entry = dir.join(plan.entry.as_deref().expect("os plans name their entry"));
    let staged = dir.join(format!(".{}.staged", plan.entry.as_deref().unwrap_or_default()));
    let _ = std::fs::remove_file(&staged);

    // A local root image is checked before the slot is touched; a remote one
    // is checked inline while it is written (its slot then has no entry).
    let root_url = release.file_url(root);
    let root_source = Source::parse(&root_url)?;
    if root_source.is_local() {
        on_event(ApplyEvent::Stage { stage: "checking", detail: format!("checking {}", root.name) });
        check_local(&root_source, root.size, &root.sha256, &root_url)?;
    }

    // The slot's partition is probed before anything is written: mounted
    // (running the system, whatever the booted slot was said to be),
    // read-only or too small stops the apply here.
    let req = FlashRequest {
        source: root_source.clone(),
        target: app.disk.clone(),
        expected: Expected { sha256: Some(root.sha256.to_ascii_lowercase()), blake3: None },
        bmap: None,
        verify: true,
        format_hint: None,
    };
    let part = app.layout.slot(target);
    use std::os::unix::fs::FileTypeExt;
    if !std::fs::metadata(&app.disk).is_ok_and(|m| m.file_type().is_block_device()) {
        return Err(Error::usage(format!(
            "{} is not a disk: an image file needs `losetup -P` first, then pass the loop device",
            app.disk.display()
        )));
    }
    // Held until the apply ends: a loop device over the slot's bytes, where
    // the kernel shows no partitions of the disk.
    let node = crate::provision::partition_device(&app.disk, part.number, part.start_bytes, part.size_bytes)?;
    let fplan = flash::plan_partition(&req, &node.path, part.number)?;
    // Whatever holds the slot (a mount, device-mapper) refuses an exclusive open: find out
    // before any entry is touched, not when the write starts.
    {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new().read(true).custom_flags(libc::O_EXCL).open(&node.path).map_err(|e| {
            Error::failure(format!(
                "slot {} ({}) is in use (mounted or held by another device): {e}; nothing was written",
                target.as_str(),
                node.path.display()
            ))
        })?;
    }
    if let Some(n) = fplan.published_size.filter(|&n| n != root.size) {
        return Err(Error::integrity(format!(
            "{root_url} is {n} bytes, the manifest says {}: nothing was written",
            root.size
        )));
    }
    if !fplan.is_valid() {
        return Err(Error::failure(format!(
            "refusing to write slot {}: {}",
            target.as_str(),
            fplan.problems.join("; ")
        )));
    }

    let outcome = (|| {
        on_event(ApplyEvent::Stage {
            stage: "staging",
            detail: format!("fetching {} into the ESP", uki.name),
        });
        osupdate::fetch_verified(&release.file_url(uki), &staged, uki.size, &uki.sha256)?;
        pause_at("staged");

        // Listed again now: the plan may be older than the ESP.
        let removes: Vec<String> =
            slots::entries(&app.esp).into_iter().filter(|(_, e)| e.slot == target).map(|(n, _)| n).collect();
        for name in &removes {
            let p = dir.join(name);
            std::fs::remove_file(&p).or_else(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    Ok(())
                } else {
                    Err(Error::io(format!("cannot remove the old entry {}", p.display()), e))
                }
            })?;
        }
        osupdate::sync_parent(&entry)?;
        on_event(ApplyEvent::Stage {
            stage: "cleared",
            detail: format!("slot {}'s old entries removed: {}", target.as_str(), removes.join(", ")),
        });
        pause_at("cleared");

        on_event(ApplyEvent::Stage {
            stage: "writing",
            detail: format!(
                "writing {} onto {} (slot {})",
                root.name,
                fplan.target.path.display(),
                target.as_str()
            ),
        });
        let mut paused = false;
        let summary = flash::execute(&fplan, &req, cancel, &mut |p| {
            if !paused && p.phase == flash::Phase::Write && p.bytes >= 1 << 20 {
                paused = true;
                pause_at("writing");
            }
            on_event(ApplyEvent::Flash(p));
        })?;
        if !summary.verified {
            return Err(Error::integrity("the slot was not read back; no boot entry was installed"));
        }
        on_event(ApplyEvent::Stage {
            stage: "written",
            detail: format!("slot {} written and read back", target.as_str()),
        });
        pause_at("written");

        std::fs::rename(&staged, &entry)
            .map_err(|e| Error::io(format!("cannot install the entry {}", entry.display()), e))?;
        osupdate::sync_parent(&entry)?;
        on_event(ApplyEvent::Stage {
            stage: "installed",
            detail: format!(
                "{} installed: slot {} boots next, {TRIES} tries to pass its health checks",
                entry.file_name().unwrap_or_default().to_string_lossy(),
                target.as_str()
            ),
        });
        pause_at("installed");
        Ok(summary)
    })();
    match outcome {
        Ok(summary) => Ok(Applied { plan, flash: Some(summary) }),
        Err(e) => {
            let _ = std::fs::remove_file(&staged);
            let _ = osupdate::sync_parent(&staged);
            Err(e)
        }
    }
}

fn check_local(src: &Source, size: u64, sha256: &str, url: &str) -> Result<()> {
    use sha2::Digest;
    let opened = src.open()?;
    let mut h = sha2::Sha256::new();
    let n = std::io::copy(&mut opened.reader.take(size + 1), &mut HashWriter(&mut h))
        .map_err(|e| Error::io(format!("cannot read {url}"), e))?;
    if n != size {
        return Err(Error::integrity(format!(
            "{url} is {n} bytes, the manifest says {size} (truncated?): nothing was written"
        )));
    }
    let got = hex::encode(h.finalize());
    if !got.eq_ignore_ascii_case(sha256) {
        return Err(Error::integrity(format!(
            "{url} has SHA-256 {got}, the manifest says {sha256}: nothing was written"
        )));
    }
    Ok(())
}

use std::io::Read;

/// Feeds what is written into a SHA-256.
pub struct HashWriter<'a>(pub &'a mut sha2::Sha256);

impl std::io::Write for HashWriter<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        use sha2::Digest;
        self.0.update(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// An exclusive lock on the ESP for the length of an apply: `flock` on its
/// root directory, released when the handle is dropped (or the process dies).
fn lock_esp(esp: &Path) -> Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(esp).map_err(|e| Error::io(format!("cannot open {}", esp.display()), e))?;
    // SAFETY: flock on a descriptor this function owns.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(Error::failure(format!(
            "another apply is running on {} (bty os apply or bty-web's Appliance page); wait for it",
            esp.display()
        )));
    }
    Ok(f)
}

/// The SHA-256 of a file, or None when it cannot be read.
pub fn file_sha256(p: &Path) -> Option<String> {
    use sha2::Digest;
    let mut f = std::fs::File::open(p).ok()?;
    let mut h = sha2::Sha256::new();
    std::io::copy(&mut f, &mut HashWriter(&mut h)).ok()?;
    Some(hex::encode(h.finalize()))
}

/// The efisys release the ESP holds, as recorded after the last apply.
pub const EFISYS_RECORD: &str = "EFI/bty/efisys.json";

/// The version recorded in the ESP's efisys record.
pub fn efisys_version(esp: &Path) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(esp.join(EFISYS_RECORD)).ok()?).ok()?;
    v["version"].as_str().map(str::to_string)
}

/// Plan an `efisys` release onto the ESP.
pub fn plan_efisys(release: &Release, esp: &Path, force: bool) -> Result<OsPlan> {
    let m = &release.manifest;
    if m.kind != ReleaseType::Efisys {
        return Err(Error::usage(format!(
            "{} is an {} release, not efisys",
            release.manifest_url,
            m.kind.as_str()
        )));
    }
    let running = efisys_version(esp);
    let same_files = m.files.iter().all(|f| {
        file_sha256(&esp.join(f.path.as_deref().unwrap_or(&f.name)))
            .is_some_and(|h| h.eq_ignore_ascii_case(&f.sha256))
    });
    let (write, why) = match &running {
        Some(r) if !force && compare_versions(&m.version, r).is_lt() => {
            return Err(Error::failure(format!(
                "efisys {} is older than the ESP's {r}; pass --force to downgrade",
                m.version
            )))
        }
        _ if !force && same_files => (
            false,
            format!("the ESP already holds efisys {}; nothing to do (--force rewrites it)", m.version),
        ),
        _ => (true, format!("the ESP's loader files are replaced with efisys {}", m.version)),
    };
    Ok(OsPlan {
        kind: ReleaseType::Efisys,
        version: m.version.clone(),
        running,
        write,
        why,
        slot: None,
        partition: None,
        entry: None,
        removes: vec![],
        files: m.files.iter().map(|f| f.path.clone().unwrap_or_default()).collect(),
    })
}

/// Apply a planned `efisys` release: every file staged beside its place and
/// checked first, then each previous file copied to `EFI/bty/previous/` and
/// the new one renamed over it, then the record.
pub fn apply_efisys(
    release: &Release,
    esp: &Path,
    plan: OsPlan,
    on_event: &mut dyn FnMut(ApplyEvent),
) -> Result<Applied> {
    if !plan.write {
        return Ok(Applied { plan, flash: None });
    }
    let m = &release.manifest;
    let _lock = lock_esp(esp)?;
    let mut staged: Vec<(PathBuf, PathBuf, String)> = vec![];
    let outcome = (|| {
        for f in &m.files {
            let rel = f.path.clone().expect("efisys manifests give each file a path");
            let dest = esp.join(&rel);
            if let Some(d) = dest.parent() {
                std::fs::create_dir_all(d)
                    .map_err(|e| Error::io(format!("cannot create {}", d.display()), e))?;
            }
            let tmp = dest.with_file_name(format!(
                ".{}.staged",
                dest.file_name().unwrap_or_default().to_string_lossy()
            ));
            staged.push((tmp.clone(), dest, rel));
            osupdate::fetch_verified(&release.file_url(f), &tmp, f.size, &f.sha256)?;
        }
        on_event(ApplyEvent::Stage {
            stage: "staged",
            detail: format!("{} files staged and checked", staged.len()),
        });
        pause_at("staged");
        for (tmp, dest, rel) in &staged {
            if dest.exists() {
                let keep = esp
                    .join("EFI/bty/previous")
                    .join(rel.trim_start_matches("EFI/").trim_start_matches("efi/"));
                if let Some(d) = keep.parent() {
                    std::fs::create_dir_all(d)
                        .map_err(|e| Error::io(format!("cannot create {}", d.display()), e))?;
                }
                let old = std::fs::read(dest)
                    .map_err(|e| Error::io(format!("cannot read {}", dest.display()), e))?;
                osupdate::write_atomic(&keep, &old)?;
            }
            std::fs::rename(tmp, dest)
                .map_err(|e| Error::io(format!("cannot replace {}", dest.display()), e))?;
            osupdate::sync_parent(dest)?;
            on_event(ApplyEvent::Stage { stage: "replaced", detail: format!("{rel} replaced") });
        }
        let record = serde_json::json!({"version": m.version, "files": plan.files});
        let rec = esp.join(EFISYS_RECORD);
        if let Some(d) = rec.parent() {
            std::fs::create_dir_all(d).map_err(|e| Error::io(format!("cannot create {}", d.display()), e))?;
        }
        osupdate::write_atomic(&rec, record.to_string().as_bytes())?;
        on_event(ApplyEvent::Stage { stage: "installed", detail: format!("efisys {} installed", m.version) });
        Ok(())
    })();
    if let Err(e) = outcome {
        for (tmp, _, _) in &staged {
            let _ = std::fs::remove_file(tmp);
        }
        return Err(e);
    }
    Ok(Applied { plan, flash: None })
}

/// Bless the booted entry (bty's equivalent of systemd-bless-boot): strip
/// its boot counter so systemd-boot keeps it. `counted` is the entry's file
/// name as booted (`LoaderBootCountPath`'s last component when not given).
/// Returns what happened, in words. An entry without a counter (no
/// `LoaderBootCountPath`) is already blessed: nothing to do, not an error,
/// so a health unit that blesses never fails a good boot for it.
pub fn bless(esp: &Path, counted: Option<&str>) -> Result<String> {
    let name = match counted {
        Some(n) => n.to_string(),
        None => match loader_boot_count_path() {
            Some(p) => {
                let (dir, name) = p.rsplit_once(['\\', '/']).unwrap_or(("", p.as_str()));
                let dir = dir.trim_start_matches(['\\', '/']).replace('/', "\\");
                if !dir.eq_ignore_ascii_case("EFI\\Linux") {
                    return Err(Error::failure(format!(
                        "the booted entry {p} is not in EFI/Linux, so not one of bty's: not blessing it"
                    )));
                }
                name.to_string()
            }
            None => return Ok("the booted entry has no boot counter: already blessed".into()),
        },
    };
    let entry = slots::parse_entry(&name)
        .ok_or_else(|| Error::usage(format!("{name:?} is not a bty slot entry (bty-a_VERSION+N.efi)")))?;
    let blessed = slots::entry_name(entry.slot, &entry.version, None);
    if entry.tries_left.is_none() {
        return Ok(format!("{blessed} is already blessed"));
    }
    let dir = linux_dir(esp);
    std::fs::rename(dir.join(&name), dir.join(&blessed))
        .map_err(|e| Error::io(format!("cannot bless {}", dir.join(&name).display()), e))?;
    osupdate::sync_parent(&dir.join(&blessed))?;
    Ok(format!("{name} blessed: now {blessed}"))
}

/// systemd-boot's `LoaderBootCountPath` (efivarfs: 4 attribute bytes, then UTF-16LE).
pub fn loader_boot_count_path() -> Option<String> {
    let raw =
        std::fs::read("/sys/firmware/efi/efivars/LoaderBootCountPath-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f")
            .ok()?;
    let units: Vec<u16> = raw.get(4..)?.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
    Some(String::from_utf16_lossy(&units).trim_end_matches('\0').to_string())
}

/// bty-web's health: `/healthz` answers 200 with `"status": "ok"` (the
/// database opened and migrated) before `timeout` runs out; retried while
/// the server is still starting.
pub fn health(url: &str, timeout: std::time::Duration) -> Result<String> {
    let deadline = std::time::Instant::now() + timeout;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(std::time::Duration::from_secs(5)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut last;
    loop {
        match agent.get(url).call() {
            Ok(mut r) => {
                let code = r.status().as_u16();
                let body = r.body_mut().with_config().limit(1 << 20).read_to_string().unwrap_or_default();
                let status = serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["status"].as_str().map(str::to_string));
                if code == 200 && status.as_deref() == Some("ok") {
                    return Ok(format!("{url} answers: status ok"));
                }
                last = format!("{url} answered {code} ({})", status.unwrap_or_else(|| "no status".into()));
            }
            Err(e) => last = format!("{url}: {e}"),
        }
        if std::time::Instant::now() >= deadline {
            return Err(Error::failure(format!("unhealthy: {last}")));
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blessing_strips_the_counter_and_is_idempotent() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("EFI/Linux")).unwrap();
        std::fs::write(d.path().join("EFI/Linux/bty-b_1.3.0+2-1.efi"), b"uki").unwrap();
        assert!(bless(d.path(), Some("bty-b_1.3.0+2-1.efi")).unwrap().contains("now bty-b_1.3.0.efi"));
        assert!(d.path().join("EFI/Linux/bty-b_1.3.0.efi").exists());
        assert!(bless(d.path(), Some("bty-b_1.3.0.efi")).unwrap().contains("already blessed"));
        assert!(bless(d.path(), Some("vmlinuz.efi")).is_err());
    }
}
