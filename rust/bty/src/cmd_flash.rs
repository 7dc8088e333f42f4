use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bty_core::digest::{parse_hex_digest, Expected};
use bty_core::disks::human_size;
use bty_core::flash::{self, FlashRequest, FlashSummary};
use bty_core::source::Source;
use bty_core::{Error, ErrorKind};

use crate::render::ProgressView;

#[derive(clap::Args)]
pub struct Args {
    /// Image: a local file or an http(s):// URL (raw, .zst, .xz, .gz, .bz2, .lz4, .lzma, .zip, .qcow2,
    /// Android sparse).
    source: String,
    /// Whole-disk block device (/dev/sdX, /dev/nvme0n1, /dev/disk/by-id/...) or a file.
    target: PathBuf,
    /// Really write. Without it bty prints the plan and how to confirm.
    #[arg(long, short = 'y')]
    yes: bool,
    /// Print the plan and every validation problem, write nothing (exit 0 valid, 1 invalid).
    #[arg(long)]
    dry_run: bool,
    /// Expected SHA-256 of the image as published (compressed bytes for compressed images).
    #[arg(long, value_name = "HEX")]
    sha256: Option<String>,
    /// Expected BLAKE3 of the image as published.
    #[arg(long, value_name = "HEX")]
    blake3: Option<String>,
    /// bmaptool block map (plain or PGP-clearsigned): write only mapped ranges, checking each
    /// range's SHA-256 or SHA-1. `auto` finds it next to the image as bmaptool does
    /// (IMAGE.bmap, IMAGE.bmap.asc, then with extensions taken off: disk.img.xz -> disk.img.bmap).
    #[arg(long, value_name = "FILE|auto")]
    bmap: Option<PathBuf>,
    /// Use a block map that lacks its own checksum (BmapFileChecksum), which its format defines:
    /// its ranges are then trusted as they are (range checksums, if any, are still checked).
    #[arg(long, requires = "bmap")]
    bmap_unverified: bool,
    /// Read everything back after writing and compare.
    #[arg(long)]
    verify: bool,
    /// Machine-readable output: the plan, NDJSON progress events, a summary.
    #[arg(long)]
    json: bool,
}

fn request(a: &Args) -> Result<FlashRequest, Error> {
    let source = Source::parse(&a.source)?;
    let expected = Expected {
        sha256: a.sha256.as_deref().map(|s| parse_hex_digest("SHA-256", s, 64)).transpose()?,
        blake3: a.blake3.as_deref().map(|s| parse_hex_digest("BLAKE3", s, 64)).transpose()?,
    };
    let found = match &a.bmap {
        None => None,
        Some(p) if p.as_os_str() == "auto" => match bty_core::bmap::find_sidecar(&source)? {
            Some((at, text)) => Some((at.display(), text)),
            None => {
                return Err(Error::failure(format!(
                    "--bmap auto: no block map next to {} (looked for .bmap and .bmap.asc, with and without \
                     its extensions); give its path, or leave --bmap out to write every block",
                    source.display()
                )))
            }
        },
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| {
                let missing = e.kind() == std::io::ErrorKind::NotFound;
                let err = Error::io(format!("cannot read block map {}", p.display()), e);
                if missing {
                    err.with_kind(ErrorKind::Usage)
                } else {
                    err
                }
            })?;
            Some((p.display().to_string(), text))
        }
    };
    let bmap = match found {
        None => None,
        Some((at, text)) => Some(
            bty_core::bmap::load(&text, a.bmap_unverified)
                .map_err(|e| Error::new(e.kind(), format!("{at}: {}", e.message())))?,
        ),
    };
    Ok(FlashRequest { source, target: a.target.clone(), expected, bmap, verify: a.verify, format_hint: None })
}

pub fn run(a: Args) -> i32 {
    let json = a.json;
    let req = match request(&a) {
        Ok(r) => r,
        Err(e) => return crate::report_error(&e, json),
    };
    let plan = match flash::plan(&req) {
        Ok(p) => p,
        Err(e) => return crate::report_error(&e, json),
    };
    if json {
        let v = serde_json::json!({"event": "plan", "valid": plan.is_valid(), "plan": plan});
        println!("{v}");
    } else {
        print!("{}", plan.human());
    }
    if a.dry_run {
        if !json {
            println!(
                "{}",
                if plan.is_valid() {
                    "dry run: the plan is valid; nothing was written"
                } else {
                    "dry run: the plan is NOT valid"
                }
            );
        }
        return if plan.is_valid() { 0 } else { 1 };
    }
    if !plan.is_valid() {
        let e = Error::failure(format!("refusing to flash: {}", plan.problems.join("; ")));
        return crate::report_error(&e, json);
    }
    if !a.yes {
        let e = Error::usage(format!(
            "this overwrites everything on {}; re-run with --yes to write, or --dry-run to only check",
            plan.target.path.display()
        ));
        return crate::report_error(&e, json);
    }

    let cancel = Arc::new(AtomicBool::new(false));
    {
        let cancel = cancel.clone();
        let _ = ctrlc::set_handler(move || cancel.store(true, Ordering::SeqCst));
    }
    let mut view = ProgressView::new(json);
    let result = flash::execute(&plan, &req, &cancel, &mut |p| view.update(p));
    view.finish();
    match result {
        Ok(s) => {
            print_summary(&s, json);
            0
        }
        Err(e) => {
            if e.kind() == ErrorKind::Cancelled && !json {
                eprintln!("bty: flash cancelled");
            }
            crate::report_error(&e, json)
        }
    }
}

fn print_summary(s: &FlashSummary, json: bool) {
    if json {
        let mut v = serde_json::to_value(s).expect("summary serialises");
        v["event"] = "summary".into();
        println!("{v}");
        return;
    }
    println!(
        "flashed {} onto {}: {} in {:.1}s ({}/s){}",
        s.source,
        s.target,
        human_size(s.image_bytes),
        s.seconds.total,
        human_size(s.throughput_bps as u64),
        if s.verified { ", read back and verified" } else { "" }
    );
    if s.bytes_skipped > 0 {
        println!("  skipped {} of zeros/unmapped blocks", human_size(s.bytes_skipped));
    }
    if let Some(d) = &s.published {
        println!("  published sha256 {}", d.sha256);
        println!("  published blake3 {}", d.blake3);
    }
    if s.gpt_backup_moved {
        println!("  GPT backup header moved to the end of the disk");
    }
    if s.partition_table_reread == Some(false) {
        println!("  note: the kernel could not re-read the partition table now; re-plug the disk or reboot");
    }
    for n in &s.notes {
        println!("  note: {n}");
    }
}
