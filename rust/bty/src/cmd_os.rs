//! `bty os`: the appliance's own releases. `show` prints a release's
//! verified manifest; `download` fetches the manifest, its signature and
//! every file into a directory, each checked against the manifest before it
//! is renamed into place. A bad signature, a trusted comment that disagrees
//! with the manifest, a wrong digest or a short file exits 4 and leaves no
//! file of that release behind.

use std::path::{Path, PathBuf};

use bty_core::osapply::{self, Appliance, ApplyEvent};
use bty_core::osupdate::{self, Release, ReleaseType};
use bty_core::slots::{self, Slot};
use bty_core::Error;
use bty_core::{appliance_secrets, flash};

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
    /// Apply a release: `os` to the slot not booted (its boot entry last, with 3 tries),
    /// `efisys` to the ESP's loader files. Writes without --yes: this is the updater.
    #[command(after_help = APPLY_HELP)]
    Apply(ApplyArgs),
    /// Bless the booted slot's entry (strip its boot counter), as systemd-bless-boot does.
    Bless(BlessArgs),
    /// bty-web's health on this appliance: exit 0 when /healthz answers ok in time, 1 when not.
    Health(HealthArgs),
    /// Fill the bty-secrets partition of a built appliance image with a tarball's files.
    Personalize(PersonalizeArgs),
    /// The per-host secrets at boot: `unpack DIR` from the bty-secrets partition.
    Secrets(SecretsArgs),
}

const APPLY_HELP: &str = "\
Order of an os apply (a power cut at any point leaves the running slot the default):
  staged     the release's UKI fetched into the ESP under a hidden name, checked
  cleared    the target slot's old boot entries removed
  written    the root image written onto the slot's partition, checked and read back
  installed  the UKI renamed to EFI/Linux/bty-<slot>_<version>+3.efi: boots next,
             three tries to pass its health checks before systemd-boot falls back
Exit codes: 0 applied or nothing to do, 1 refused (downgrade without --force, booted slot
unknown), 2 usage, 3 not permitted, 4 bad signature, digest or size (nothing bootable
changed), 5 the slot changed while planned.";

#[derive(clap::Args)]
struct ApplyArgs {
    #[command(flatten)]
    which: Which,
    #[command(flatten)]
    machine: Machine,
    /// Re-apply the same version, or downgrade.
    #[arg(long)]
    force: bool,
    /// Print the plan and write nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(clap::Args)]
struct BlessArgs {
    /// The entry as booted (default: systemd-boot's LoaderBootCountPath).
    #[arg(long, value_name = "NAME")]
    entry: Option<String>,
    /// Where the EFI system partition is mounted (default: /efi, /boot or /boot/efi).
    #[arg(long, value_name = "DIR")]
    esp: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct HealthArgs {
    /// bty-web's health endpoint.
    #[arg(long, default_value = "http://127.0.0.1:8080/healthz")]
    url: String,
    /// How long to wait for it to answer ok, in seconds.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// Then bless the booted entry (for appliances without systemd-bless-boot).
    #[arg(long)]
    bless: bool,
    #[arg(long, value_name = "DIR")]
    esp: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct PersonalizeArgs {
    /// A built appliance image (raw).
    image: PathBuf,
    /// A tarball (tar, tar.gz, tar.zst, tar.xz) of the host's secrets: ssh/ssh_host_*_key,
    /// bty/admin-password, tls/cert.pem, tls/key.pem. Without it the partition is emptied.
    #[arg(long, value_name = "TARBALL")]
    secrets: Option<PathBuf>,
    /// Write a personalised copy here.
    #[arg(
        long,
        short,
        value_name = "FILE",
        required_unless_present = "in_place",
        conflicts_with = "in_place"
    )]
    output: Option<PathBuf>,
    /// Change IMAGE itself.
    #[arg(long)]
    in_place: bool,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct SecretsArgs {
    #[command(subcommand)]
    command: SecretsCommand,
}

#[derive(clap::Subcommand)]
enum SecretsCommand {
    /// Unpack the secrets into DIR (files 0600); an empty partition unpacks nothing.
    Unpack {
        dir: PathBuf,
        /// The partition (or a file with its bytes).
        #[arg(long, default_value = "/dev/disk/by-partlabel/bty-secrets")]
        device: PathBuf,
        #[arg(long)]
        json: bool,
    },
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
        OsCommand::Apply(a) => {
            let json = a.which.json;
            match apply(&a) {
                Ok(()) => 0,
                Err(e) => crate::report_error(&e, json),
            }
        }
        OsCommand::Bless(b) => {
            match esp_with_settings(&b.esp).and_then(|esp| osapply::bless(&esp, b.entry.as_deref())) {
                Ok(what) => {
                    say(b.json, serde_json::json!({"event": "blessed", "detail": what}), &what);
                    0
                }
                Err(e) => crate::report_error(&e, b.json),
            }
        }
        OsCommand::Health(h) => {
            let r = osapply::health(&h.url, std::time::Duration::from_secs(h.timeout)).and_then(|msg| {
                if h.bless {
                    let what = osapply::bless(&esp_with_settings(&h.esp)?, None)?;
                    Ok(format!("{msg}; {what}"))
                } else {
                    Ok(msg)
                }
            });
            match r {
                Ok(msg) => {
                    say(h.json, serde_json::json!({"event": "healthy", "detail": msg}), &msg);
                    0
                }
                Err(e) => crate::report_error(&e, h.json),
            }
        }
        OsCommand::Personalize(p) => match personalize(&p) {
            Ok(done) => {
                let text = format!(
                    "{}: {} secret file(s) in partition {} ({})",
                    done.image.display(),
                    done.files.len(),
                    done.partition,
                    done.files.iter().map(|f| f.path.as_str()).collect::<Vec<_>>().join(", ")
                );
                say(p.json, serde_json::json!({"event": "personalized", "result": done}), &text);
                0
            }
            Err(e) => crate::report_error(&e, p.json),
        },
        OsCommand::Secrets(SecretsArgs { command: SecretsCommand::Unpack { dir, device, json } }) => {
            match appliance_secrets::unpack(&device, &dir) {
                Ok(files) => {
                    let text = format!("{} secret file(s) unpacked into {}", files.len(), dir.display());
                    say(json, serde_json::json!({"event": "unpacked", "files": files}), &text);
                    0
                }
                Err(e) => crate::report_error(&e, json),
            }
        }
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
    let settings = osupdate::os_settings()?;
    osupdate::find_release(
        ReleaseType::parse(&w.kind).unwrap_or(ReleaseType::Os),
        w.path.as_deref(),
        w.source.as_deref().or(settings.source.as_deref()),
        w.version.as_deref(),
        w.pubkey.as_deref().or(settings.pubkey.as_deref()),
        "pass --source URL (or set BTY_OS_SOURCE, or [os] source in bty.toml), or --path manifest.json",
    )
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

fn download(r: &Release, dir: &Path, json: bool) -> Result<(), Error> {
    osupdate::download(r, dir, &mut |name, size| {
        if !json {
            eprintln!("bty: {name} verified ({})", bty_core::disks::human_size(size));
        }
    })?;
    if json {
        println!("{}", serde_json::json!({"event": "downloaded", "version": r.manifest.version, "dir": dir}));
    } else {
        println!("{} {} downloaded into {}", r.manifest.kind.as_str(), r.manifest.version, dir.display());
    }
    Ok(())
}

fn say(json: bool, v: serde_json::Value, text: &str) {
    if json {
        println!("{v}");
    } else {
        println!("{text}");
    }
}

fn esp_dir(m: &Machine) -> Result<PathBuf, Error> {
    esp_with_settings(&m.esp)
}

/// `--esp`, else `[os] esp` of bty.toml, else the usual mount points.
fn esp_with_settings(esp: &Option<PathBuf>) -> Result<PathBuf, Error> {
    match esp {
        Some(e) => Ok(e.clone()),
        None => slots::esp_dir(osupdate::os_settings()?.esp.as_deref()),
    }
}

fn appliance(m: &Machine) -> Result<Appliance, Error> {
    let settings = osupdate::os_settings()?;
    Appliance::detect(
        m.disk.as_deref().or(settings.disk.as_deref()),
        m.esp.as_deref().or(settings.esp.as_deref()),
        m.booted_slot.as_deref().and_then(Slot::parse),
    )
}

fn personalize(p: &PersonalizeArgs) -> Result<appliance_secrets::Personalized, Error> {
    let image = match &p.output {
        Some(out) => {
            if out.exists() {
                return Err(Error::usage(format!(
                    "{} exists; remove it, or personalise an image in place with --in-place",
                    out.display()
                )));
            }
            let tmp = osupdate::partial_of(out);
            std::fs::copy(&p.image, &tmp).map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                Error::io(format!("cannot copy {} to {}", p.image.display(), tmp.display()), e)
            })?;
            let done = match appliance_secrets::personalize(&tmp, p.secrets.as_deref()) {
                Ok(d) => d,
                Err(e) => {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(e);
                }
            };
            std::fs::rename(&tmp, out)
                .map_err(|e| Error::io(format!("cannot rename into {}", out.display()), e))?;
            return Ok(appliance_secrets::Personalized { image: out.clone(), ..done });
        }
        None => p.image.clone(),
    };
    appliance_secrets::personalize(&image, p.secrets.as_deref())
}

fn apply(a: &ApplyArgs) -> Result<(), Error> {
    let r = release(&a.which)?;
    let json = a.which.json;
    let mut events = |ev: ApplyEvent| match ev {
        ApplyEvent::Stage { stage, detail } => {
            if json {
                println!("{}", serde_json::json!({"event": "stage", "stage": stage, "detail": detail}));
            } else {
                eprintln!("bty: {detail}");
            }
        }
        ApplyEvent::Flash(p) => {
            if json {
                println!("{}", serde_json::json!({"event": "progress", "progress": p}));
            }
        }
    };
    let cancel = std::sync::atomic::AtomicBool::new(false);
    let (plan, app) = match r.manifest.kind {
        ReleaseType::Os => {
            let app = appliance(&a.machine)?;
            (osapply::plan_os(&r, &app, a.force)?, Some(app))
        }
        ReleaseType::Efisys => (osapply::plan_efisys(&r, &esp_dir(&a.machine)?, a.force)?, None),
    };
    if a.dry_run || !plan.write {
        if json {
            println!("{}", serde_json::json!({"event": "plan", "plan": plan, "dry_run": a.dry_run}));
        } else {
            println!("{}", plan.why);
            if plan.write {
                if let Some(s) = plan.slot {
                    println!(
                        "  slot {} (partition {}), entry {}",
                        s.as_str(),
                        plan.partition.unwrap_or(0),
                        plan.entry.as_deref().unwrap_or("")
                    );
                }
                for n in &plan.removes {
                    println!("  removes old entry {n}");
                }
                for f in &plan.files {
                    println!("  from {f}");
                }
                println!("dry run: nothing was written");
            }
        }
        return Ok(());
    }
    let done = match (r.manifest.kind, &app) {
        (ReleaseType::Os, Some(app)) => osapply::apply_os(&r, app, plan, &cancel, &mut events)?,
        _ => osapply::apply_efisys(&r, &esp_dir(&a.machine)?, plan, &mut events)?,
    };
    if json {
        println!("{}", serde_json::json!({"event": "applied", "result": done}));
    } else {
        let f: Option<&flash::FlashSummary> = done.flash.as_ref();
        println!(
            "{} {} applied{}",
            done.plan.kind.as_str(),
            done.plan.version,
            f.map(|f| format!(
                " ({} written and read back in {:.1} s)",
                bty_core::disks::human_size(f.image_bytes),
                f.seconds.total
            ))
            .unwrap_or_default()
        );
    }
    Ok(())
}

fn status(a: &StatusArgs) -> Result<(), Error> {
    let st = appliance(&a.machine)?.status();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&st).expect("status serialises"));
        return Ok(());
    }
    println!(
        "disk {} (ESP at {}), booted slot {}",
        st.disk.display(),
        st.esp.display(),
        st.booted.map(Slot::as_str).unwrap_or("unknown")
    );
    for s in &st.slots {
        let counter = match (s.tries_left, s.tries_done) {
            (None, _) => "blessed".to_string(),
            (Some(0), d) => format!("no tries left ({} done): systemd-boot skips it", d.unwrap_or(0)),
            (Some(l), d) => format!("{l} tries left, {} done: not yet blessed", d.unwrap_or(0)),
        };
        println!(
            "  {} (partition {}){}: {}",
            s.slot.as_str(),
            s.partition,
            if s.booted { ", booted" } else { "" },
            match &s.version {
                Some(ver) => format!("version {ver}, {counter}"),
                None => "no boot entry".into(),
            }
        );
    }
    if let Some(n) = &st.next_boot {
        println!("  next boot: {}", n.entry);
    }
    if let Some(f) = &st.failed_update {
        println!("  TRIPWIRE: {}", f.message);
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
                let same = osapply::file_sha256(&path).is_some_and(|got| got.eq_ignore_ascii_case(&f.sha256));
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
