//! Flashing: plan → validate → execute.
//!
//! [`plan`] probes the source and the target without writing anything and
//! lists every problem; [`execute`] re-checks the target and streams
//! read → decompress → hash → write with bounded buffers, then syncs, moves
//! the GPT backup header, re-reads the partition table and optionally reads
//! everything back. Nothing is reported as done unless every check passed.

mod pipeline;
pub mod progress;
pub mod target;
pub mod writer;

use std::path::PathBuf;

pub use pipeline::execute;
pub use progress::{Phase, Progress};
pub use target::{TargetInfo, TargetKind};

use crate::bmap::Bmap;
use crate::digest::{Digests, Expected};
use crate::error::{Error, Result};
use crate::format::{self, ImageFormat};
use crate::source::Source;

/// What the operator asked for.
#[derive(Debug, Clone)]
pub struct FlashRequest {
    pub source: Source,
    pub target: PathBuf,
    pub expected: Expected,
    pub bmap: Option<Bmap>,
    pub verify: bool,
    /// Format named by a catalog, used only when magic bytes are inconclusive.
    pub format_hint: Option<ImageFormat>,
}

/// A validated description of the write, printed by `--dry-run`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Plan {
    pub source: String,
    pub name: String,
    pub format: ImageFormat,
    /// Size of the published bytes (compressed size for compressed formats).
    pub published_size: Option<u64>,
    /// Bytes that land on the target, when knowable up front.
    pub virtual_size: Option<u64>,
    pub virtual_size_source: String,
    /// False when `virtual_size` is a lower bound (the first of possibly
    /// several zstd frames); the stream's own framing then proves completeness.
    pub virtual_size_exact: bool,
    pub target: TargetInfo,
    pub expected: Expected,
    pub sidecar_sha256: Option<String>,
    pub bmap: Option<BmapSummary>,
    pub verify: bool,
    pub notes: Vec<String>,
    /// Things that do not stop the write but that the operator must see (a
    /// qcow2 image qemu marked corrupt).
    pub warnings: Vec<String>,
    /// Reasons not to write. Empty means the plan may be executed.
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct BmapSummary {
    pub image_size: u64,
    pub mapped_bytes: u64,
    pub ranges: usize,
}

impl Plan {
    pub fn is_valid(&self) -> bool {
        self.problems.is_empty()
    }

    /// Human-readable plan for terminals.
    pub fn human(&self) -> String {
        use crate::disks::human_size;
        let size =
            |s: Option<u64>| s.map(|b| format!("{} ({b} bytes)", human_size(b))).unwrap_or("unknown".into());
        let mut out = String::new();
        out += &format!("source:  {}\n", self.source);
        out += &format!("format:  {}\n", self.format);
        let on_disk = match self.virtual_size {
            Some(_) if !self.virtual_size_exact => {
                format!("at least {} on disk, from the {}", size(self.virtual_size), self.virtual_size_source)
            }
            Some(_) => format!("{} on disk, from the {}", size(self.virtual_size), self.virtual_size_source),
            None => format!("size on disk {}", self.virtual_size_source),
        };
        out += &format!("size:    {} published; {on_disk}\n", size(self.published_size));
        let t = &self.target;
        let what = match t.kind {
            TargetKind::BlockDevice => format!(
                "block device, {}{}{}",
                size(t.size_bytes),
                t.model.as_deref().map(|m| format!(", {m}")).unwrap_or_default(),
                t.serial.as_deref().map(|s| format!(", serial {s}")).unwrap_or_default()
            ),
            TargetKind::Partition => format!(
                "partition {} of {}, {}",
                t.partition_of.as_ref().map(|p| p.1).unwrap_or(0),
                t.partition_of.as_ref().map(|p| p.0.display().to_string()).unwrap_or_default(),
                size(t.size_bytes)
            ),
            TargetKind::File if t.exists => "regular file (overwritten)".into(),
            TargetKind::File => "regular file (created)".into(),
        };
        out += &format!("target:  {} ({what})\n", t.path.display());
        let mut checks = Vec::new();
        if let Some(s) = &self.expected.sha256 {
            checks.push(format!("SHA-256 {s}"));
        }
        if let Some(s) = &self.expected.blake3 {
            checks.push(format!("BLAKE3 {s}"));
        }
        if self.verify {
            checks.push("read-back verification".into());
        }
        out += &format!(
            "checks:  {}\n",
            if checks.is_empty() {
                "none (pass --sha256 to verify the download)".into()
            } else {
                checks.join(", ")
            }
        );
        if let Some(b) = &self.bmap {
            out += &format!(
                "bmap:    {} ranges, {} mapped of {}\n",
                b.ranges,
                human_size(b.mapped_bytes),
                human_size(b.image_size)
            );
        }
        for n in &self.notes {
            out += &format!("note:    {n}\n");
        }
        for w in &self.warnings {
            out += &format!("WARNING: {w}\n");
        }
        for p in &self.problems {
            out += &format!("PROBLEM: {p}\n");
        }
        out
    }
}

/// How `written_checksum` is computed: XXH3-128 over the XXH3-128 of each
/// 4 MiB chunk written (in order, each sum little-endian). Not a digest of
/// the image: it guards the read-back against failing media.
pub const WRITTEN_CHECKSUM_ALGORITHM: &str = "xxh3-128-chunks";

/// Outcome of a successful flash.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FlashSummary {
    pub source: String,
    pub target: String,
    pub format: ImageFormat,
    /// Digests of the published stream (what catalogs publish).
    pub published: Option<Digests>,
    /// Checksum of what was written, compared by the read-back (`--verify`);
    /// its algorithm is [`WRITTEN_CHECKSUM_ALGORITHM`], named beside it in
    /// `written_checksum_algorithm`.
    pub written_checksum: Option<String>,
    /// [`WRITTEN_CHECKSUM_ALGORITHM`] when `written_checksum` is set.
    pub written_checksum_algorithm: Option<&'static str>,
    pub bytes_read: u64,
    pub image_bytes: u64,
    pub bytes_written: u64,
    /// Bytes not transferred: holes in a file, device-zeroed runs, unmapped bmap ranges.
    pub bytes_skipped: u64,
    pub verified: bool,
    pub gpt_backup_moved: bool,
    pub partition_table_reread: Option<bool>,
    pub seconds: Timings,
    /// Image bytes per second over the whole run.
    pub throughput_bps: f64,
    /// What the operator should know about a flash that succeeded (zero
    /// padding ignored after a compressed stream).
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Timings {
    pub write: f64,
    pub sync: f64,
    pub verify: f64,
    pub total: f64,
}

/// Probe source and target and validate; writes nothing.
pub fn plan(req: &FlashRequest) -> Result<Plan> {
    plan_onto(req, TargetInfo::probe(&req.target)?)
}

/// [`plan`] for partition `number` of the disk `req.target` (an A/B slot),
/// written through its block device `node`; never the whole disk.
pub fn plan_partition(req: &FlashRequest, node: &std::path::Path, number: u32) -> Result<Plan> {
    plan_onto(req, TargetInfo::probe_partition(node, &req.target, number)?)
}

fn plan_onto(req: &FlashRequest, target: TargetInfo) -> Result<Plan> {
    let name = req.source.name();
    let head = req.source.read_at(0, format::MAGIC_LEN)?;
    let fmt = match format::detect_source(&req.source, &head) {
        Ok(ImageFormat::Raw) if req.format_hint.is_some() && format::from_name(&name).is_none() => {
            req.format_hint.unwrap()
        }
        other => other?,
    };
    if let Some(hint) = req.format_hint {
        if hint != fmt && fmt != ImageFormat::Raw {
            return Err(Error::integrity(format!(
                "{name} is declared as {hint} but its bytes are {fmt}; the catalog entry or the image is wrong"
            )));
        }
    }
    let published_size = req.source.len()?;
    let (virtual_size, virtual_size_source, virtual_size_exact) = match fmt {
        // Proving a zstd file is one frame means walking every block header,
        // which on a cold cache reads the whole image before writing starts.
        // The first frame's declared size is a lower bound; zstd itself checks
        // each frame's size and completeness while decoding.
        ImageFormat::Zstd => match zstd::zstd_safe::get_frame_content_size(&head) {
            Ok(Some(n)) => (Some(n), "first zstd frame header".to_string(), false),
            _ => (None, "unknown: the first zstd frame does not record its size".to_string(), false),
        },
        _ => {
            let (v, s) = crate::inspect::virtual_size(&req.source, fmt, &head)?;
            (v, s, true)
        }
    };
    let mut notes = Vec::new();
    let mut problems = target.problems(virtual_size);

    let mut warnings = Vec::new();
    if fmt == ImageFormat::Qcow2 {
        if let Source::File(_) = &req.source {
            let first = crate::qcow2::parse_header(&head)?.cluster_size() as usize;
            warnings.extend(crate::qcow2::parse_header(&req.source.read_at(0, first)?)?.warnings());
        }
    }
    if let Some(b) = &req.bmap {
        notes.extend(crate::bmap::notes(b));
    }
    if fmt == ImageFormat::Qcow2 && !req.source.is_local() {
        problems.push(
            "qcow2 images need random access and are read from local files only; download it first, or \
             publish it as .img.zst"
                .into(),
        );
    }
    if let Source::File(p) = &req.source {
        if target.is_same_file(p) {
            problems.push("the source and the target are the same file".into());
        }
    }
    if virtual_size.is_none() {
        notes.push(format!(
            "image size unknown before writing ({virtual_size_source}); the write stops with an error if the \
             image turns out larger than the target"
        ));
    }
    let sidecar_sha256 = req.source.sidecar_sha256().unwrap_or_else(|e| {
        notes.push(format!("ignoring sidecar: {e}"));
        None
    });
    let mut expected = req.expected.clone();
    if expected.sha256.is_none() {
        if let Some(s) = &sidecar_sha256 {
            notes.push("SHA-256 taken from the .sha256 sidecar".into());
            expected.sha256 = Some(s.clone());
        }
    } else if let (Some(given), Some(side)) = (&expected.sha256, &sidecar_sha256) {
        if given != side {
            notes.push(format!(
                "the .sha256 sidecar says {side}; checking against the given --sha256 {given}"
            ));
        }
    }
    let bmap = req.bmap.as_ref().map(|b| BmapSummary {
        image_size: b.image_size,
        mapped_bytes: b
            .ranges
            .iter()
            .map(|r| ((r.last_block + 1) * b.block_size).min(b.image_size) - r.first_block * b.block_size)
            .sum(),
        ranges: b.ranges.len(),
    });
    if let (Some(b), Some(v)) = (&req.bmap, virtual_size) {
        if b.image_size != v && (virtual_size_exact || b.image_size < v) {
            problems.push(format!(
                "the block map describes a {}-byte image but this image is {v} bytes; use the .bmap made for this image",
                b.image_size
            ));
        }
    }
    if req.bmap.is_some() && target.kind == TargetKind::File {
        notes.push("unmapped ranges become holes in the target file".into());
    }
    if target.kind == TargetKind::BlockDevice {
        if let (Some(cap), Some(img)) = (target.size_bytes, virtual_size) {
            if cap > img {
                notes.push(format!(
                    "the disk is {} larger than the image; a GPT backup header is moved to the disk's end",
                    crate::disks::human_size(cap - img)
                ));
            }
        }
    }
    Ok(Plan {
        source: req.source.display(),
        name,
        format: fmt,
        published_size,
        virtual_size,
        virtual_size_source,
        virtual_size_exact,
        target,
        expected,
        sidecar_sha256,
        bmap,
        verify: req.verify,
        notes,
        warnings,
        problems,
    })
}
