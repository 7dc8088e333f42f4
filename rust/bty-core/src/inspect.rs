//! What `bty inspect SOURCE` reports about an image: format, published and
//! virtual sizes, architecture hint, partition table and sidecar digest —
//! all without reading (or downloading) the whole image.

use std::io::Read;

use crate::error::{Error, ErrorKind, Result};
use crate::format::{self, ImageFormat};
use crate::partition::{self, PartitionTable};
use crate::qcow2;
use crate::source::Source;

/// How much of the decompressed image is read to find its partition table.
const TABLE_PROBE_LEN: usize = 1 << 20;

/// The report of `bty inspect`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ImageInfo {
    /// The source as given (path or URL).
    pub source: String,
    /// File or URL basename, used for format and architecture detection.
    pub name: String,
    pub format: ImageFormat,
    /// Published size: file size or `Content-Length`.
    pub compressed_size: Option<u64>,
    /// Size of the disk image once decompressed, when known without reading it all.
    pub virtual_size: Option<u64>,
    /// Where `virtual_size` came from, or why it is unknown.
    pub virtual_size_source: String,
    /// A size that is likely but not certain (gzip's ISIZE, the first zstd
    /// frame of a remote image); never used to gate a flash.
    pub virtual_size_hint: Option<u64>,
    pub arch: Option<String>,
    pub partition_table: Option<PartitionTable>,
    /// Why the partition table could not be read, when it could not.
    pub partition_table_error: Option<String>,
    pub sidecar_sha256: Option<String>,
    /// Where `sidecar_sha256` came from: the `.sha256` sidecar, or the OCI
    /// layer's digest.
    pub sha256_from: &'static str,
    /// For an `oras://` source: the layer read and the manifest it is in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oci_layer: Option<String>,
    /// Anything else the operator should know (an unreadable sidecar, an
    /// image bty will refuse to flash).
    pub notes: Vec<String>,
}

/// Inspect an image without reading all of it: a few small reads at its
/// start and end, plus the first MiB of decompressed data.
pub fn inspect(src: &Source) -> Result<ImageInfo> {
    let name = src.name();
    let head = src.read_at(0, format::MAGIC_LEN)?;
    let format = format::detect_source(src, &head)?;
    let compressed_size = src.len()?;
    let mut notes = Vec::new();

    let probe = probe_size(src, format, &head, compressed_size);
    let (virtual_size, virtual_size_source, virtual_size_hint) = match probe {
        Ok(p) => p,
        Err(e) if matches!(format, ImageFormat::Qcow2 | ImageFormat::Zip | ImageFormat::Simg) => {
            return Err(e)
        }
        Err(e) => (None, format!("unknown: {e}"), None),
    };
    if format == ImageFormat::Qcow2 {
        let h = qcow2_header(src, &head)?;
        notes.extend(h.warnings().into_iter().map(|w| format!("warning: {w}")));
        if let Err(e) = h.check_supported() {
            notes.push(format!("bty cannot flash this image: {e}"));
        }
    }

    let (partition_table, partition_table_error) = match decompressed_head(src, format, &name) {
        Ok(bytes) => match partition::read_table(&bytes) {
            Ok(t) => (t, None),
            Err(e) => (None, Some(e.to_string())),
        },
        // Refusals (a tarball inside, a zip of several files) are answers.
        Err(e) if e.kind() == ErrorKind::Usage && format != ImageFormat::Qcow2 => return Err(e),
        Err(e) => (None, Some(e.to_string())),
    };

    let sidecar_sha256 = src.sidecar_sha256().unwrap_or_else(|e| {
        notes.push(format!("ignoring the .sha256 sidecar: {e}"));
        None
    });

    let oci_layer = match src {
        Source::Oci(o) => o.resolved().ok().map(|r| {
            format!(
                "{} ({}, {} bytes) in manifest {}",
                r.file_name(),
                r.layer.media_type,
                r.layer.size,
                r.manifest_digest
            )
        }),
        _ => None,
    };
    Ok(ImageInfo {
        sha256_from: if oci_layer.is_some() { "OCI layer digest" } else { ".sha256 sidecar" },
        oci_layer,
        source: src.display(),
        arch: format::arch_hint(&name).map(str::to_string),
        name,
        format,
        compressed_size,
        virtual_size,
        virtual_size_source,
        virtual_size_hint,
        partition_table,
        partition_table_error,
        sidecar_sha256,
        notes,
    })
}

/// The size of the disk image inside `src` once decompressed, and where that
/// number came from (or why it is unknown), without reading the whole image.
/// `head` is the first [`format::MAGIC_LEN`] bytes. Only certain sizes are
/// returned: the flash pipeline treats a mismatch as a corrupt image.
/// qcow2 images bty cannot read (backing file, encryption...) are refused.
pub fn virtual_size(src: &Source, format: ImageFormat, head: &[u8]) -> Result<(Option<u64>, String)> {
    if format == ImageFormat::Qcow2 {
        if let Source::File(p) = src {
            // Everything qemu checks before use, so a damaged table is refused
            // before writing rather than read as zeros.
            let f =
                std::fs::File::open(p).map_err(|e| Error::io(format!("cannot open {}", p.display()), e))?;
            qcow2::Qcow2Reader::open(f)?;
        } else {
            qcow2::parse_header(head)?.check_supported()?;
        }
    }
    let published = src.len()?;
    let (size, how, _) = probe_size(src, format, head, published)?;
    Ok((size, how))
}

/// The qcow2 header with the names its first cluster holds (backing file,
/// data file, features), read from a local file; only `head` otherwise.
fn qcow2_header(src: &Source, head: &[u8]) -> Result<qcow2::Qcow2Header> {
    let h = qcow2::parse_header(head)?;
    match src {
        Source::File(_) if h.cluster_size() > head.len() as u64 => {
            qcow2::parse_header(&src.read_at(0, h.cluster_size() as usize)?)
        }
        _ => Ok(h),
    }
}

type Probe = (Option<u64>, String, Option<u64>);

fn probe_size(src: &Source, format: ImageFormat, head: &[u8], published: Option<u64>) -> Result<Probe> {
    let unknown = |why: &str| Ok((None, format!("unknown: {why}"), None));
    match format {
        ImageFormat::Raw => match published {
            Some(n) if src.is_local() => Ok((Some(n), "file size".into(), None)),
            Some(n) => Ok((Some(n), "Content-Length".into(), None)),
            None => unknown("the server did not send Content-Length"),
        },
        ImageFormat::Qcow2 => {
            Ok((Some(qcow2::parse_header(head)?.virtual_size), "qcow2 header".into(), None))
        }
        ImageFormat::Zstd => zstd_size(src, head, published),
        ImageFormat::Xz => match published {
            Some(len) => xz_size(src, len),
            None => unknown("xz index not reachable: the server did not send Content-Length"),
        },
        // ISIZE, the file's last four bytes, is the size of the last member
        // modulo 4 GiB, and only if nothing (padding, garbage) follows it.
        // Nothing short of decoding tells whether a file has one member or
        // several (concatenated files, bgzip), so no rule based on it is never
        // wrong: the size is unknown, and the stream's own framing (each
        // member's CRC and ISIZE) proves completeness while it is written.
        ImageFormat::Gzip => unknown("gzip records sizes only per member and modulo 4 GiB"),
        ImageFormat::Bzip2 => unknown("bzip2 does not record it"),
        ImageFormat::Lz4 => crate::lz4::decoded_size(src, head),
        ImageFormat::Lzma => match format::lzma_header(head, false) {
            Some(Some(n)) => Ok((Some(n), "lzma header".into(), None)),
            Some(None) => unknown("the lzma header does not record it"),
            None => Err(Error::integrity("the lzma header is invalid; the file is damaged")),
        },
        ImageFormat::Zip => {
            let (size, how) = crate::zip::decoded_size(src, head)?;
            Ok((size, how, None))
        }
        ImageFormat::Simg => {
            Ok((Some(crate::simg::Header::parse(head)?.virtual_size()), "simg header".into(), None))
        }
    }
}

/// zstd frame magic and the range of skippable-frame magics.
const ZSTD_MAGIC: u32 = 0xFD2F_B528;
const ZSTD_SKIPPABLE: u32 = 0x184D_2A50;

fn zstd_size(src: &Source, head: &[u8], published: Option<u64>) -> Result<Probe> {
    let first = first_zstd_frame_size(head);
    let Source::File(path) = src else {
        // Proving that a remote file is one frame means walking every block
        // header with a Range request each; report the first frame as a hint.
        let why =
            "unknown: a remote zstd file may hold several frames; the first frame's size is only a hint";
        return Ok((None, why.into(), first));
    };
    let Some(len) = published else {
        return Ok((None, "unknown: file size unavailable".into(), first));
    };
    let f = std::fs::File::open(path).map_err(|e| Error::io(format!("cannot open {}", path.display()), e))?;
    match walk_zstd_frames(&f, len).map_err(|e| Error::io(format!("cannot read {}", path.display()), e))? {
        Ok((total, 1)) => Ok((Some(total), "zstd frame header".into(), None)),
        Ok((total, n)) => Ok((Some(total), format!("zstd frame headers ({n} frames)"), None)),
        Err(why) => Ok((None, format!("unknown: {why}"), first)),
    }
}

fn first_zstd_frame_size(head: &[u8]) -> Option<u64> {
    if head.len() < 4 || u32::from_le_bytes(head[..4].try_into().unwrap()) != ZSTD_MAGIC {
        return None;
    }
    zstd::zstd_safe::get_frame_content_size(head).ok().flatten()
}

/// Sum the content sizes of every frame in a local zstd file by following
/// frame and block headers (a few bytes read per 128 KiB block at most).
/// The inner `Err` explains why the size cannot be known.
fn walk_zstd_frames(
    f: &std::fs::File,
    len: u64,
) -> std::io::Result<std::result::Result<(u64, usize), String>> {
    use std::os::unix::fs::FileExt;
    let read = |at: u64, n: usize| -> std::io::Result<Vec<u8>> {
        let mut b = vec![0u8; n.min(len.saturating_sub(at) as usize)];
        f.read_exact_at(&mut b, at)?;
        Ok(b)
    };
    let (mut pos, mut total, mut frames) = (0u64, 0u64, 0usize);
    while pos < len {
        let hdr = read(pos, 18)?;
        if hdr.len() < 8 {
            return Ok(Err(format!("zstd data is truncated at byte {pos}")));
        }
        let magic = u32::from_le_bytes(hdr[..4].try_into().unwrap());
        if magic & 0xFFFF_FFF0 == ZSTD_SKIPPABLE {
            pos += 8 + u64::from(u32::from_le_bytes(hdr[4..8].try_into().unwrap()));
            continue;
        }
        if magic != ZSTD_MAGIC {
            return Ok(Err(format!("bytes at offset {pos} are not a zstd frame")));
        }
        let Some(size) = zstd::zstd_safe::get_frame_content_size(&hdr).ok().flatten() else {
            return Ok(Err("zstd frame without content size".into()));
        };
        let fhd = hdr[4];
        let single_segment = fhd & 0x20 != 0;
        let dict_len = [0u64, 1, 2, 4][(fhd & 3) as usize];
        let fcs_len = match fhd >> 6 {
            0 => u64::from(single_segment),
            1 => 2,
            2 => 4,
            _ => 8,
        };
        pos += 5 + u64::from(!single_segment) + dict_len + fcs_len;
        loop {
            let b = read(pos, 3)?;
            if b.len() < 3 {
                return Ok(Err(format!("zstd data is truncated at byte {pos}")));
            }
            let bh = u32::from(b[0]) | u32::from(b[1]) << 8 | u32::from(b[2]) << 16;
            let block_len = match (bh >> 1) & 3 {
                0 | 2 => u64::from(bh >> 3),
                1 => 1,
                _ => return Ok(Err(format!("zstd block at byte {pos} is invalid"))),
            };
            pos += 3 + block_len;
            if bh & 1 == 1 {
                break;
            }
        }
        if fhd & 0x04 != 0 {
            pos += 4;
        }
        let Some(sum) = total.checked_add(size) else {
            return Ok(Err("the zstd frames' content sizes add up to more than 2^64 bytes".into()));
        };
        total = sum;
        frames += 1;
    }
    if pos != len {
        return Ok(Err(format!(
            "zstd data is truncated: the last frame needs {pos} bytes, the file has {len}"
        )));
    }
    if frames == 0 {
        return Ok(Err("the file holds no zstd frame".into()));
    }
    Ok(Ok((total, frames)))
}

/// Read an xz multibyte integer (7 bits per byte, little end first).
fn xz_varint(b: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for i in 0..9 {
        let byte = *b.get(*pos)?;
        *pos += 1;
        v |= u64::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// Sum the uncompressed sizes recorded in the index of every xz stream,
/// walking from the end of the file: footer → index → stream header → the
/// previous stream (with its padding).
fn xz_size(src: &Source, len: u64) -> Result<Probe> {
    let unknown = |why: String| Ok((None, format!("unknown: {why}"), None));
    let (mut end, mut total, mut streams) = (len, 0u64, 0usize);
    while end > 0 {
        // Stream padding: zero bytes in multiples of four after a stream.
        let tail = src.read_at(end.saturating_sub(4096), (end.min(4096)) as usize)?;
        let zeros = tail.iter().rev().take_while(|&&b| b == 0).count() as u64 / 4 * 4;
        end -= zeros;
        if end < 24 {
            return unknown(format!("xz data is truncated or not a stream at byte {end}"));
        }
        let footer = src.read_at(end - 12, 12)?;
        if footer.len() != 12 || &footer[10..12] != b"YZ" {
            return unknown("the xz stream footer is missing; the file is truncated".into());
        }
        if crc32fast::hash(&footer[4..10]) != u32::from_le_bytes(footer[..4].try_into().unwrap()) {
            return unknown("the xz stream footer fails its CRC32 check".into());
        }
        let index_len = (u64::from(u32::from_le_bytes(footer[4..8].try_into().unwrap())) + 1) * 4;
        if index_len > 64 << 20 || index_len + 24 > end {
            return unknown(format!("the xz index size {index_len} is implausible"));
        }
        let index = src.read_at(end - 12 - index_len, index_len as usize)?;
        let n = index.len();
        if n != index_len as usize || index[0] != 0 {
            return unknown("the xz index is missing".into());
        }
        if crc32fast::hash(&index[..n - 4]) != u32::from_le_bytes(index[n - 4..].try_into().unwrap()) {
            return unknown("the xz index fails its CRC32 check".into());
        }
        let mut pos = 1;
        let Some(records) = xz_varint(&index, &mut pos) else {
            return unknown("the xz index is malformed".into());
        };
        let (mut blocks_len, mut stream_size) = (0u64, 0u64);
        let too_much = || unknown("the xz index describes more data than the file holds".into());
        for _ in 0..records {
            let (Some(unpadded), Some(uncompressed)) =
                (xz_varint(&index, &mut pos), xz_varint(&index, &mut pos))
            else {
                return unknown("the xz index is malformed".into());
            };
            // Index values are 63-bit: sums of them overflow u64 long before
            // they could describe a real file.
            match (blocks_len.checked_add(unpadded.div_ceil(4) * 4), stream_size.checked_add(uncompressed)) {
                (Some(b), Some(s)) => (blocks_len, stream_size) = (b, s),
                _ => return too_much(),
            }
        }
        let Some(start) = (end - 12 - index_len).checked_sub(blocks_len.saturating_add(12)) else {
            return too_much();
        };
        let header = src.read_at(start, 6)?;
        if header != [0xFD, b'7', b'z', b'X', b'Z', 0] {
            return unknown(format!("no xz stream header where the index places it (byte {start})"));
        }
        let Some(sum) = total.checked_add(stream_size) else {
            return unknown("the xz streams' sizes add up to more than 2^64 bytes".into());
        };
        total = sum;
        streams += 1;
        end = start;
        if streams > 10_000 {
            return unknown("more than 10000 xz streams".into());
        }
    }
    let how = if streams == 1 { "xz index".to_string() } else { format!("xz index ({streams} streams)") };
    Ok((Some(total), how, None))
}

/// The first [`TABLE_PROBE_LEN`] bytes of the disk image inside `src`.
fn decompressed_head(src: &Source, format: ImageFormat, name: &str) -> Result<Vec<u8>> {
    let mut out = vec![0u8; TABLE_PROBE_LEN];
    let mut reader: Box<dyn Read> = match (format, src) {
        (ImageFormat::Raw, _) => return src.read_at(0, TABLE_PROBE_LEN),
        (ImageFormat::Qcow2, Source::File(p)) => {
            let f = std::fs::File::open(p).map_err(|e| Error::io(format!("cannot open {}", p.display()), e))?;
            Box::new(qcow2::Qcow2Reader::open(f)?)
        }
        (ImageFormat::Qcow2, Source::Http(_) | Source::Oci(_)) => {
            return Err(Error::failure(
                "not read: qcow2 needs random access, which bty does only on local files; download the image first",
            ))
        }
        (f, _) => format::decoder(f, src.open()?.reader, src)?,
    };
    let mut got = 0;
    while got < out.len() {
        match reader.read(&mut out[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(match Error::from_io(e) {
                    Ok(inner) => inner,
                    Err(e) => Error::io(format!("cannot decompress the start of {name}"), e),
                })
            }
        }
    }
    out.truncate(got);
    format::refuse_inner(&out, name, format)?;
    Ok(out)
}

/// Binary units with one decimal, for people; JSON carries exact bytes.
fn human_size(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn bytes_and_human(n: u64) -> String {
    format!("{n} bytes ({})", human_size(n))
}

impl ImageInfo {
    /// A readable multi-line report, ending in a newline.
    pub fn human(&self) -> String {
        let mut s = String::new();
        let mut line = |k: &str, v: String| s.push_str(&format!("{k:<12}{v}\n"));
        line("source:", self.source.clone());
        if let Some(l) = &self.oci_layer {
            line("layer:", l.clone());
        }
        line("format:", self.format.to_string());
        line("published:", self.compressed_size.map(bytes_and_human).unwrap_or_else(|| "unknown".into()));
        let disk = match (self.virtual_size, self.virtual_size_hint) {
            (Some(v), _) => format!("{} from the {}", bytes_and_human(v), self.virtual_size_source),
            (None, Some(h)) => format!("{}; probably {}", self.virtual_size_source, bytes_and_human(h)),
            (None, None) => self.virtual_size_source.clone(),
        };
        line("disk size:", disk);
        line(
            "arch:",
            self.arch.clone().map(|a| format!("{a} (from the name)")).unwrap_or_else(|| "unknown".into()),
        );
        line(
            "sha256:",
            self.sidecar_sha256
                .clone()
                .map(|d| format!("{d} ({})", self.sha256_from))
                .unwrap_or("none".into()),
        );
        match (&self.partition_table, &self.partition_table_error) {
            (Some(t), _) => {
                let mut desc = format!("{}, {}-byte sectors", t.kind.as_str(), t.sector_size);
                if let Some(g) = &t.disk_guid {
                    desc += &format!(", disk id {g}");
                }
                desc += &format!(", partitions end at {}", bytes_and_human(t.span_bytes()));
                line("partitions:", desc);
                s.push_str(&partition_rows(t));
            }
            (None, Some(e)) => line("partitions:", format!("unreadable: {e}")),
            (None, None) => line("partitions:", "none (no GPT or MBR at the start of the image)".into()),
        }
        for n in &self.notes {
            s.push_str(&format!("note:       {n}\n"));
        }
        s
    }
}

fn partition_rows(t: &PartitionTable) -> String {
    let header = ["#", "start", "size", "type", "name", "flags"].map(String::from);
    let mut rows = vec![header];
    for p in &t.partitions {
        rows.push([
            p.number.to_string(),
            human_size(p.start_bytes),
            human_size(p.size_bytes),
            p.type_name.clone().unwrap_or_else(|| p.type_id.clone()),
            p.label.clone().unwrap_or_default(),
            if p.bootable { "boot".into() } else { String::new() },
        ]);
    }
    let widths: Vec<usize> =
        (0..6).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for r in rows {
        let mut l = String::from("  ");
        for (c, cell) in r.iter().enumerate() {
            // Numbers and sizes right-aligned, text left-aligned.
            if c < 3 {
                l += &format!("{cell:>w$}  ", w = widths[c]);
            } else {
                l += &format!("{cell:<w$}  ", w = widths[c]);
            }
        }
        out += l.trim_end();
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::io::{Cursor, Write};
    use std::path::{Path, PathBuf};
    use std::process::Command;

    const MIB: u64 = 1 << 20;
    const IMG_LEN: u64 = 6 * MIB;

    /// A 6 MiB raw disk with a GPT (ESP + root) and some non-zero data.
    fn gpt_image() -> Vec<u8> {
        let mut dev = Cursor::new(vec![0u8; IMG_LEN as usize]);
        gpt::mbr::ProtectiveMBR::with_lb_size((IMG_LEN / 512 - 1) as u32).overwrite_lba0(&mut dev).unwrap();
        let mut disk = gpt::GptConfig::new().writable(true).create_from_device(&mut dev, None).unwrap();
        disk.add_partition("ESP", MIB, gpt::partition_types::EFI, 0, None).unwrap();
        disk.add_partition("root", 3 * MIB, gpt::partition_types::LINUX_ROOT_X64, 0, None).unwrap();
        disk.write().unwrap();
        let mut v = dev.into_inner();
        for (i, b) in v[2 * MIB as usize..3 * MIB as usize].iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        v
    }

    fn write(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
        let p = dir.join(name);
        File::create(&p).unwrap().write_all(data).unwrap();
        p
    }

    fn check_table(info: &ImageInfo) {
        let t = info
            .partition_table
            .as_ref()
            .unwrap_or_else(|| panic!("no table: {:?}", info.partition_table_error));
        assert_eq!(t.kind, partition::TableKind::Gpt);
        let names: Vec<_> = t.partitions.iter().map(|p| p.type_name.as_deref().unwrap()).collect();
        assert_eq!(names, ["EFI System", "Linux root (x86-64)"]);
        assert_eq!(t.partitions[0].size_bytes, MIB);
        assert!(info.partition_table_error.is_none());
    }

    fn cli(args: &[&str]) -> bool {
        Command::new(args[0]).args(&args[1..]).status().is_ok_and(|s| s.success())
    }

    #[test]
    fn raw_image() {
        let dir = tempfile::tempdir().unwrap();
        let data = gpt_image();
        let p = write(dir.path(), "debian-13-amd64.img", &data);
        let sha = "ab".repeat(32);
        write(dir.path(), "debian-13-amd64.img.sha256", format!("{sha}  debian-13-amd64.img\n").as_bytes());
        let info = inspect(&Source::File(p.clone())).unwrap();
        assert_eq!(info.format, ImageFormat::Raw);
        assert_eq!(info.name, "debian-13-amd64.img");
        assert_eq!(info.source, p.display().to_string());
        assert_eq!((info.compressed_size, info.virtual_size), (Some(IMG_LEN), Some(IMG_LEN)));
        assert_eq!(info.virtual_size_source, "file size");
        assert_eq!(info.arch.as_deref(), Some("x86_64"));
        assert_eq!(info.sidecar_sha256.as_deref(), Some(sha.as_str()));
        check_table(&info);
        let text = info.human();
        for want in [
            "format:     raw",
            "6291456 bytes (6.0 MiB)",
            "EFI System",
            "Linux root (x86-64)",
            "x86_64",
            "gpt",
        ] {
            assert!(text.contains(want), "{want:?} missing from:\n{text}");
        }
        let json = serde_json::to_value(&info).unwrap();
        assert_eq!(json["format"], "raw");
        assert_eq!(json["partition_table"]["kind"], "gpt");
        assert_eq!(json["virtual_size"], IMG_LEN);
    }

    #[test]
    fn zstd_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let data = gpt_image();
        // One frame with its content size (as `zstd` writes files).
        let one = zstd::bulk::compress(&data, 3).unwrap();
        let info = inspect(&Source::File(write(dir.path(), "a.img.zst", &one))).unwrap();
        assert_eq!((info.format, info.virtual_size), (ImageFormat::Zstd, Some(IMG_LEN)));
        assert_eq!(info.virtual_size_source, "zstd frame header");
        assert_eq!(info.compressed_size, Some(one.len() as u64));
        check_table(&info);

        // Several frames with a skippable frame between them.
        let half = data.len() / 2;
        let mut multi = zstd::bulk::compress(&data[..half], 3).unwrap();
        multi.extend([0x50, 0x2A, 0x4D, 0x18, 4, 0, 0, 0, 1, 2, 3, 4]);
        multi.extend(zstd::bulk::compress(&data[half..], 3).unwrap());
        let info = inspect(&Source::File(write(dir.path(), "m.img.zst", &multi))).unwrap();
        assert_eq!(info.virtual_size, Some(IMG_LEN));
        assert_eq!(info.virtual_size_source, "zstd frame headers (2 frames)");

        // A streamed frame has no content size.
        let streamed = zstd::stream::encode_all(&data[..], 3).unwrap();
        let info = inspect(&Source::File(write(dir.path(), "s.img.zst", &streamed))).unwrap();
        assert_eq!(info.virtual_size, None);
        assert_eq!(info.virtual_size_source, "unknown: zstd frame without content size");
        check_table(&info);

        // A truncated file is not given a size.
        let info = inspect(&Source::File(write(dir.path(), "t.img.zst", &one[..one.len() - 100]))).unwrap();
        assert_eq!(info.virtual_size, None);
        assert!(info.virtual_size_source.contains("truncated"), "{}", info.virtual_size_source);

        let raw = write(dir.path(), "cli.img", &data);
        if cli(&["zstd", "-q", "-T2", "-19", raw.to_str().unwrap()]) {
            let info = inspect(&Source::File(dir.path().join("cli.img.zst"))).unwrap();
            assert_eq!(info.virtual_size, Some(IMG_LEN));
            check_table(&info);
        } else {
            println!("skipping the zstd CLI case: zstd is not installed");
        }
    }

    #[test]
    fn xz_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let data = gpt_image();
        let mut enc = xz2::write::XzEncoder::new(Vec::new(), 1);
        enc.write_all(&data).unwrap();
        let one = enc.finish().unwrap();
        let info = inspect(&Source::File(write(dir.path(), "a.img.xz", &one))).unwrap();
        assert_eq!((info.format, info.virtual_size), (ImageFormat::Xz, Some(IMG_LEN)));
        assert_eq!(info.virtual_size_source, "xz index");
        check_table(&info);

        // Two concatenated streams with stream padding between and after.
        let mut two = one.clone();
        two.extend([0u8; 8]);
        two.extend(&one);
        two.extend([0u8; 4]);
        let info = inspect(&Source::File(write(dir.path(), "two.img.xz", &two))).unwrap();
        assert_eq!(info.virtual_size, Some(2 * IMG_LEN));
        assert_eq!(info.virtual_size_source, "xz index (2 streams)");

        let info = inspect(&Source::File(write(dir.path(), "t.img.xz", &one[..one.len() - 5]))).unwrap();
        assert_eq!(info.virtual_size, None);
        assert!(info.virtual_size_source.starts_with("unknown"));

        let raw = write(dir.path(), "cli.img", &data);
        if cli(&["xz", "-q", "-k", "-T2", "--block-size=1MiB", raw.to_str().unwrap()]) {
            let info = inspect(&Source::File(dir.path().join("cli.img.xz"))).unwrap();
            assert_eq!(info.virtual_size, Some(IMG_LEN));
            assert_eq!(info.virtual_size_source, "xz index");
            check_table(&info);
        } else {
            println!("skipping the xz CLI case: xz is not installed");
        }
    }

    #[test]
    fn gzip_and_bzip2_sizes_are_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let data = gpt_image();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&data).unwrap();
        let gz = gz.finish().unwrap();
        let info = inspect(&Source::File(write(dir.path(), "a.img.gz", &gz))).unwrap();
        assert_eq!((info.format, info.virtual_size), (ImageFormat::Gzip, None));
        assert_eq!(info.virtual_size_source, "unknown: gzip records sizes only per member and modulo 4 GiB");
        assert_eq!(info.virtual_size_hint, None);
        check_table(&info);
        assert!(!info.human().contains("probably"), "{}", info.human());
        // Two members, as `cat a.gz b.gz` makes: the last ISIZE (here 4096)
        // says nothing about the whole, so nothing is claimed.
        let mut two = gz.clone();
        let mut tail = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        tail.write_all(&[7u8; 4096]).unwrap();
        two.extend(tail.finish().unwrap());
        let info = inspect(&Source::File(write(dir.path(), "two.img.gz", &two))).unwrap();
        assert_eq!((info.virtual_size, info.virtual_size_hint), (None, None));
        assert!(info.human().contains("unknown"), "{}", info.human());

        let mut bz = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
        bz.write_all(&data).unwrap();
        let bz = bz.finish().unwrap();
        let info = inspect(&Source::File(write(dir.path(), "a.img.bz2", &bz))).unwrap();
        assert_eq!(
            (info.format, info.virtual_size, info.virtual_size_hint),
            (ImageFormat::Bzip2, None, None)
        );
        assert_eq!(info.virtual_size_source, "unknown: bzip2 does not record it");
        check_table(&info);

        let (v, how) =
            virtual_size(&Source::File(dir.path().join("a.img.bz2")), ImageFormat::Bzip2, &bz[..512])
                .unwrap();
        assert_eq!((v, how.as_str()), (None, "unknown: bzip2 does not record it"));
    }

    #[test]
    fn qcow2_image() {
        if !cli(&["qemu-img", "--version"]) {
            println!("skipping: qemu-img is not installed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let raw = write(dir.path(), "d.img", &gpt_image());
        let q = dir.path().join("d.qcow2");
        assert!(cli(&[
            "qemu-img",
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            raw.to_str().unwrap(),
            q.to_str().unwrap()
        ]));
        let info = inspect(&Source::File(q.clone())).unwrap();
        assert_eq!((info.format, info.virtual_size), (ImageFormat::Qcow2, Some(IMG_LEN)));
        assert_eq!(info.virtual_size_source, "qcow2 header");
        check_table(&info);
        assert!(info.notes.is_empty(), "{:?}", info.notes);

        let top = dir.path().join("top.qcow2");
        let (qs, ts) = (q.to_str().unwrap(), top.to_str().unwrap());
        assert!(cli(&["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", qs, ts]));
        let head = std::fs::read(&top).unwrap();
        let err = virtual_size(&Source::File(top.clone()), ImageFormat::Qcow2, &head[..512]).unwrap_err();
        assert!(err.to_string().contains("backing file"), "{err}");
        let info = inspect(&Source::File(top)).unwrap();
        assert!(info.notes[0].contains("backing file"), "{:?}", info.notes);
    }

    #[test]
    fn no_table_and_damaged_table() {
        let dir = tempfile::tempdir().unwrap();
        let info =
            inspect(&Source::File(write(dir.path(), "blank.img", &vec![0u8; 2 * MIB as usize]))).unwrap();
        assert!(info.partition_table.is_none() && info.partition_table_error.is_none());
        assert!(info.human().contains("partitions: none"), "{}", info.human());

        let mut data = gpt_image();
        data[512 + 40] ^= 0xFF;
        let info = inspect(&Source::File(write(dir.path(), "bad.img", &data))).unwrap();
        assert!(info.partition_table.is_none());
        assert!(info.partition_table_error.as_deref().unwrap().contains("GPT header"));
        assert!(info.human().contains("unreadable"));
    }

    #[test]
    fn tarballs_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut tar = vec![0u8; 1024];
        tar[257..262].copy_from_slice(b"ustar");
        let err = inspect(&Source::File(write(dir.path(), "disk.img", &tar))).unwrap_err();
        assert!(err.to_string().contains("extract"), "{err}");
        let err = inspect(&Source::File(write(dir.path(), "disk.tar.gz", b"\x1f\x8b\x08\0"))).unwrap_err();
        assert!(err.to_string().contains("extract"), "{err}");
        // A gzipped tarball disguised by its name.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let err =
            inspect(&Source::File(write(dir.path(), "disk.img.gz", &gz.finish().unwrap()))).unwrap_err();
        assert!(err.to_string().contains("extract"), "{err}");
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(3 << 30), "3.0 GiB");
    }

    /// zstd frames and xz index records whose sizes add up past 2^64 make
    /// the size unknown, not an overflow (fuzz/regressions/format/
    /// zstd-sizes-past-2-pow-64 and xz-index-past-2-pow-64).
    #[test]
    fn sizes_past_2_pow_64_are_unknown() {
        let dir = tempfile::tempdir().unwrap();
        // An 8-byte content size of 2^63 and one empty last raw block.
        let mut frame = ZSTD_MAGIC.to_le_bytes().to_vec();
        frame.push(0xE0);
        frame.extend((1u64 << 63).to_le_bytes());
        frame.extend([1, 0, 0]);
        let p = write(dir.path(), "x.img.zst", &[&frame[..], &frame[..]].concat());
        let (size, how) = virtual_size(&Source::File(p), ImageFormat::Zstd, &frame).unwrap();
        assert_eq!(size, None);
        assert!(how.contains("more than 2^64"), "{how}");

        // A stream header, then an index of three records of 2^63 - 1 bytes.
        let varint = |mut v: u64| {
            let mut out = Vec::new();
            while v >= 0x80 {
                out.push(v as u8 | 0x80);
                v >>= 7;
            }
            out.push(v as u8);
            out
        };
        let mut index = vec![0u8];
        index.extend(varint(3));
        for _ in 0..3 {
            index.extend(varint((1 << 63) - 1));
            index.extend(varint((1 << 63) - 1));
        }
        while index.len() % 4 != 0 {
            index.push(0);
        }
        index.extend(crc32fast::hash(&index).to_le_bytes());
        let mut body = ((index.len() / 4 - 1) as u32).to_le_bytes().to_vec();
        body.extend([0, 1]);
        let mut xz = vec![0xFD, b'7', b'z', b'X', b'Z', 0, 0, 1];
        xz.extend(crc32fast::hash(&[0, 1]).to_le_bytes());
        xz.extend(&index);
        xz.extend(crc32fast::hash(&body).to_le_bytes());
        xz.extend(&body);
        xz.extend(b"YZ");
        let p = write(dir.path(), "x.img.xz", &xz);
        let (size, how) = virtual_size(&Source::File(p), ImageFormat::Xz, &xz).unwrap();
        assert_eq!(size, None);
        assert!(how.contains("more data than the file holds"), "{how}");
    }
}
