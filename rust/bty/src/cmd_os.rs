//! `bty os`: the appliance's own releases. `show` prints a release's
//! verified manifest; `download` fetches the manifest, its signature and
//! every file into a directory, each checked against the manifest before it
//! is renamed into place. A bad signature, a trusted comment that disagrees
//! with the manifest, a wrong digest or a short file exits 4 and leaves no
//! file of that release behind.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use bty_core::osupdate::{self, Release, ReleaseSource, ReleaseType};
use bty_core::slots::{self, Slot};
use bty_core::source::Source;
use bty_core::Error;
use sha2::Digest;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: OsCommand,
}

#[derive(clap::Subcommand)]
enum OsCommand {
    /// Print a release's manifest, verified: the latest, `--version V`, or `--path manifest.json`.
    Show(ShowArgs),
    /// Download a release (manifest, signature, files) into DIR, every file verified.
    Download(DownloadArgs),
    /// Whether a slot (`os a|b`) or the ESP (`efisys`) holds a release: exit 0 yes, 1 no.
    Check(CheckArgs),
    /// The booted slot, each slot's version and boot counter.
    Status(StatusArgs),
}

#[derive(clap::Args)]
struct Machine {
    /// The appliance disk (default: the disk with partitions bty-a and bty-b).
    #[arg(long, value_name = "DEV")]
    disk: Option<PathBuf>,
    /// The booted slot, instead of detecting it (rescue, tests).
    #[arg(long, value_parser = ["a", "b"])]
    booted_slot: Option<String>,
    /// Where the EFI system partition is mounted (default: /efi, /boot or /boot/efi).
    #[arg(long, value_name = "DIR")]
    esp: Option<PathBuf>,
}

#[derive(clap::Args)]
struct CheckArgs {
    #[command(flatten)]
    which: Which,
    /// os: the slot to check.
    #[arg(value_parser = ["a", "b"])]
    slot: Option<String>,
    #[command(flatten)]
    machine: Machine,
}

#[derive(clap::Args)]
struct StatusArgs {
    #[command(flatten)]
    machine: Machine,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct Which {
    /// `os` (the A/B root slots) or `efisys` (the EFI system partition).
    #[arg(value_parser = ["os", "efisys"])]
    kind: String,
    /// A release version instead of the latest.
    #[arg(long, conflicts_with = "path")]
    version: Option<String>,
    /// A manifest on disk (or a URL), `manifest.json.minisig` beside it.
    #[arg(long)]
    path: Option<String>,
    /// Where releases are: a base with `latest` and `<version>/manifest.json`.
    #[arg(long, env = "BTY_OS_SOURCE")]
    source: Option<String>,
    /// The release public key (a minisign.pub file) instead of the built-in one.
    #[arg(long, value_name = "FILE")]
    pubkey: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct ShowArgs {
    #[command(flatten)]
    which: Which,
}

#[derive(clap::Args)]
struct DownloadArgs {
    #[command(flatten)]
    which: Which,
    /// The directory to download into (made if missing).
    dir: PathBuf,
}

pub fn run(a: Args) -> i32 {
    match a.command {
        OsCommand::Show(s) => {
            let json = s.which.json;
            match release(&s.which) {
                Ok(r) => {
                    show(&r, json);
                    0
                }
                Err(e) => crate::report_error(&e, json),
            }
        }
        OsCommand::Check(c) => {
            let json = c.which.json;
            match check(&c) {
                Ok((holds, what)) => {
                    if json {
                        println!("{}", serde_json::json!({"holds": holds, "detail": what}));
                    } else {
                        println!("{what}");
                    }
                    if holds {
                        0
                    } else {
                        1
                    }
                }
                Err(e) => crate::report_error(&e, json),
            }
        }
        OsCommand::Status(st) => match status(&st) {
            Ok(()) => 0,
            Err(e) => crate::report_error(&e, st.json),
        },
        OsCommand::Download(d) => {
            let json = d.which.json;
            match release(&d.which).and_then(|r| download(&r, &d.dir, json)) {
                Ok(()) => 0,
                Err(e) => crate::report_error(&e, json),
            }
        }
    }
}

/// The verified release `w` names, of the kind asked for.
fn release(w: &Which) -> Result<Release, Error> {
    let key_text = match &w.pubkey {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .map_err(|e| Error::io(format!("cannot read the key {}", p.display()), e))?,
        ),
        None => None,
    };
    let key = osupdate::public_key(key_text.as_deref())?;
    let r = match (&w.path, &w.source) {
        (Some(p), _) => osupdate::fetch_manifest(p, &key)?,
        (None, Some(base)) => ReleaseSource::new(base).release(w.version.as_deref(), &key)?,
        (None, None) => {
            return Err(Error::usage(
                "no release source: pass --source URL (or set BTY_OS_SOURCE), or --path manifest.json",
            ))
        }
    };
    let want = ReleaseType::parse(&w.kind).unwrap_or(ReleaseType::Os);
    if r.manifest.kind != want {
        return Err(Error::usage(format!(
            "{} is an {} release, not {}",
            r.manifest_url,
            r.manifest.kind.as_str(),
            want.as_str()
        )));
    }
    Ok(r)
}

fn show(r: &Release, json: bool) {
    if json {
        let v = serde_json::json!({"manifest": r.manifest, "url": r.manifest_url, "verified": true});
        println!("{}", serde_json::to_string_pretty(&v).expect("a manifest serialises"));
        return;
    }
    let m = &r.manifest;
    println!("{} release {} ({}), signature verified", m.kind.as_str(), m.version, m.arch);
    println!("from {}", r.manifest_url);
    for f in &m.files {
        let at = f.path.as_deref().map(|p| format!(" -> {p}")).unwrap_or_default();
        println!(
            "  {:5} {} ({}, sha256 {}){at}",
            f.role,
            f.name,
            bty_core::disks::human_size(f.size),
            &f.sha256[..16]
        );
    }
}

/// Every file into `dir` under a hidden name, checked (size, SHA-256), then
/// renamed; the manifest and its signature last. On any failure the files
/// of this release already written are removed.
fn download(r: &Release, dir: &Path, json: bool) -> Result<(), Error> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
    let mut written: Vec<PathBuf> = vec![];
    let result = (|| {
        for f in &r.manifest.files {
            let url = r.file_url(f);
            let dest = dir.join(&f.name);
            fetch_verified(&url, &dest, f.size, &f.sha256)?;
            written.push(dest);
            if !json {
                eprintln!("bty: {} verified ({})", f.name, bty_core::disks::human_size(f.size));
            }
        }
        for (name, bytes) in [
            ("manifest.json", r.manifest_bytes.as_slice()),
            ("manifest.json.minisig", r.signature.as_bytes()),
        ] {
            let dest = dir.join(name);
            write_atomic(&dest, bytes)?;
            written.push(dest);
        }
        Ok(())
    })();
    if let Err(e) = result {
        for p in &written {
            let _ = std::fs::remove_file(p);
        }
        return Err(e);
    }
    if json {
        println!("{}", serde_json::json!({"event": "downloaded", "version": r.manifest.version, "dir": dir}));
    } else {
        println!("{} {} downloaded into {}", r.manifest.kind.as_str(), r.manifest.version, dir.display());
    }
    Ok(())
}

fn partial_of(dest: &Path) -> PathBuf {
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    dest.with_file_name(format!(".{name}.partial"))
}

fn fetch_verified(url: &str, dest: &Path, size: u64, sha256: &str) -> Result<(), Error> {
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
            .map_err(|e| Error::io(format!("cannot rename into {}", dest.display()), e))
    })();
    if outcome.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    outcome
}

fn write_atomic(dest: &Path, bytes: &[u8]) -> Result<(), Error> {
    let partial = partial_of(dest);
    let io = |e| Error::io(format!("cannot write {}", dest.display()), e);
    let mut f = std::fs::File::create(&partial).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&partial, dest).map_err(io)
}

fn esp_dir(m: &Machine) -> Result<PathBuf, Error> {
    m.esp.clone().or_else(slots::find_esp).ok_or_else(|| {
        Error::failure("the EFI system partition is not mounted at /efi, /boot or /boot/efi: pass --esp DIR")
    })
}

/// The booted slot: `--booted-slot`, the kernel command line, systemd-boot's entry.
fn booted(m: &Machine, layout: &slots::Layout) -> Option<Slot> {
    if let Some(s) = m.booted_slot.as_deref().and_then(Slot::parse) {
        return Some(s);
    }
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    slots::booted_from_cmdline(&cmdline, layout)
        .or_else(|| slots::loader_entry_selected().and_then(|e| slots::booted_from_loader_entry(&e)))
}

fn status(a: &StatusArgs) -> Result<(), Error> {
    let disk = match &a.machine.disk {
        Some(d) => d.clone(),
        None => slots::find_disk()?,
    };
    let layout = slots::read_layout(&disk)?;
    let esp = esp_dir(&a.machine)?;
    let booted = booted(&a.machine, &layout);
    let slot = |s: Slot| {
        let e = slots::slot_entry(&esp, s);
        serde_json::json!({
            "slot": s.as_str(),
            "partition": layout.slot(s).number,
            "booted": booted == Some(s),
            "version": e.as_ref().map(|(_, e)| e.version.clone()),
            "entry": e.as_ref().map(|(n, _)| n.clone()),
            "tries_left": e.as_ref().and_then(|(_, e)| e.tries_left),
            "tries_done": e.as_ref().and_then(|(_, e)| e.tries_done),
            "bootable": e.as_ref().map(|(_, e)| e.bootable()),
        })
    };
    let v = serde_json::json!({
        "disk": disk, "esp": esp, "booted": booted.map(Slot::as_str),
        "slots": [slot(Slot::A), slot(Slot::B)],
        "state_partition": layout.state.as_ref().map(|p| p.number),
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v).expect("status serialises"));
        return Ok(());
    }
    println!(
        "disk {} (ESP at {}), booted slot {}",
        disk.display(),
        esp.display(),
        booted.map(Slot::as_str).unwrap_or("unknown")
    );
    for s in v["slots"].as_array().into_iter().flatten() {
        let counter = match (s["tries_left"].as_u64(), s["tries_done"].as_u64()) {
            (None, _) => "blessed".to_string(),
            (Some(0), d) => format!("no tries left ({} done): systemd-boot skips it", d.unwrap_or(0)),
            (Some(l), d) => format!("{l} tries left, {} done: not yet blessed", d.unwrap_or(0)),
        };
        println!(
            "  {} (partition {}){}: {}",
            s["slot"].as_str().unwrap_or("?"),
            s["partition"],
            if s["booted"] == true { ", booted" } else { "" },
            match s["version"].as_str() {
                Some(ver) => format!("version {ver}, {counter}"),
                None => "no boot entry".into(),
            }
        );
    }
    Ok(())
}

/// Whether the slot or ESP holds the release `c` names, and in words.
fn check(c: &CheckArgs) -> Result<(bool, String), Error> {
    let r = release(&c.which)?;
    let esp = esp_dir(&c.machine)?;
    match r.manifest.kind {
        ReleaseType::Os => {
            let slot = c
                .slot
                .as_deref()
                .and_then(Slot::parse)
                .ok_or_else(|| Error::usage("bty os check os needs the slot: a or b"))?;
            let want = &r.manifest.version;
            Ok(match slots::slot_entry(&esp, slot) {
                Some((_, e)) if &e.version == want => (true, format!("slot {} holds {want}", slot.as_str())),
                Some((_, e)) => (false, format!("slot {} holds {}, not {want}", slot.as_str(), e.version)),
                None => (false, format!("slot {} has no boot entry, so not {want}", slot.as_str())),
            })
        }
        ReleaseType::Efisys => {
            for f in &r.manifest.files {
                let path = esp.join(f.path.as_deref().unwrap_or(&f.name));
                let same = std::fs::File::open(&path)
                    .and_then(|mut h| {
                        let mut d = sha2::Sha256::new();
                        std::io::copy(&mut h, &mut DigestWriter(&mut d))?;
                        Ok(hex::encode(d.finalize()))
                    })
                    .is_ok_and(|got| got.eq_ignore_ascii_case(&f.sha256));
                if !same {
                    return Ok((
                        false,
                        format!("{} is not the one of efisys {}", path.display(), r.manifest.version),
                    ));
                }
            }
            Ok((true, format!("the ESP holds efisys {}", r.manifest.version)))
        }
    }
}

struct DigestWriter<'a>(&'a mut sha2::Sha256);

impl Write for DigestWriter<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.update(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
