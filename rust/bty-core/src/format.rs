//! Image formats: detection from magic bytes first, file name second, and the
//! table of formats bty recognises but does not decode. Those are refused by
//! name with what to do instead, never written to a disk as if they were raw.

use std::io::{BufReader, Read};

use crate::error::{Error, Result};
use crate::lz4::{is_skippable, LZ4_FRAME_MAGIC, LZ4_LEGACY_MAGIC};
use crate::source::Source;

/// The container/compression format of a published image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    Raw,
    Zstd,
    Xz,
    Gzip,
    Bzip2,
    Qcow2,
    /// The lz4 frame format, and the legacy format `lz4 -l` writes.
    Lz4,
    /// LZMA-alone (`.lzma`, as `xz --format=lzma` and `lzma` write).
    Lzma,
    /// A zip archive holding one disk image (stored or deflated).
    Zip,
    /// An Android sparse image (`img2simg`).
    Simg,
}

impl ImageFormat {
    pub const ALL: [ImageFormat; 10] = [
        ImageFormat::Raw,
        ImageFormat::Zstd,
        ImageFormat::Xz,
        ImageFormat::Gzip,
        ImageFormat::Bzip2,
        ImageFormat::Qcow2,
        ImageFormat::Lz4,
        ImageFormat::Lzma,
        ImageFormat::Zip,
        ImageFormat::Simg,
    ];

    /// Short name used on the wire, in `catalog.toml` and in `--json` output.
    pub fn as_str(self) -> &'static str {
        match self {
            ImageFormat::Raw => "raw",
            ImageFormat::Zstd => "zstd",
            ImageFormat::Xz => "xz",
            ImageFormat::Gzip => "gzip",
            ImageFormat::Bzip2 => "bzip2",
            ImageFormat::Qcow2 => "qcow2",
            ImageFormat::Lz4 => "lz4",
            ImageFormat::Lzma => "lzma",
            ImageFormat::Zip => "zip",
            ImageFormat::Simg => "simg",
        }
    }

    /// Parse a format name as written in catalogs. Accepts the short names and
    /// the file-suffix spellings the Python bty used (`img.zst`, `img.gz`, ...).
    pub fn parse(name: &str) -> Option<ImageFormat> {
        Some(match name.trim().to_ascii_lowercase().as_str() {
            "raw" | "img" => ImageFormat::Raw,
            "zstd" | "zst" | "img.zst" => ImageFormat::Zstd,
            "xz" | "img.xz" => ImageFormat::Xz,
            "gzip" | "gz" | "img.gz" => ImageFormat::Gzip,
            "bzip2" | "bz2" | "img.bz2" => ImageFormat::Bzip2,
            "qcow2" => ImageFormat::Qcow2,
            "lz4" | "img.lz4" => ImageFormat::Lz4,
            "lzma" | "img.lzma" => ImageFormat::Lzma,
            "zip" | "img.zip" => ImageFormat::Zip,
            "simg" | "android-sparse" | "sparse" => ImageFormat::Simg,
            _ => return None,
        })
    }

    /// Stream compressors: their decoded bytes are a file that may itself be
    /// packed, unlike qcow2 and simg whose decoded bytes are the disk.
    pub fn is_compressed(self) -> bool {
        matches!(
            self,
            ImageFormat::Zstd
                | ImageFormat::Xz
                | ImageFormat::Gzip
                | ImageFormat::Bzip2
                | ImageFormat::Lz4
                | ImageFormat::Lzma
        )
    }

    /// What the decoded bytes are checked against: a zip or a compressed
    /// stream holding another compressed file or a container would otherwise
    /// put that file's bytes on the disk.
    fn wraps_a_file(self) -> bool {
        self.is_compressed() || self == ImageFormat::Zip
    }

    fn describe(self) -> &'static str {
        match self {
            ImageFormat::Raw => "a raw disk image",
            ImageFormat::Zstd => "a zstd-compressed file",
            ImageFormat::Xz => "an xz-compressed file",
            ImageFormat::Gzip => "a gzip-compressed file",
            ImageFormat::Bzip2 => "a bzip2-compressed file",
            ImageFormat::Qcow2 => "a qcow2 disk",
            ImageFormat::Lz4 => "an lz4-compressed file",
            ImageFormat::Lzma => "an lzma-compressed file",
            ImageFormat::Zip => "a zip archive",
            ImageFormat::Simg => "an Android sparse image",
        }
    }
}

impl std::fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How many leading bytes [`detect`] wants to see.
pub const MAGIC_LEN: usize = 512;
/// How many trailing bytes [`detect_with_tail`] wants to see (VHD footer, dmg trailer).
pub const TAIL_LEN: usize = 512;

const TAR_SUFFIXES: &[&str] = &[
    ".tar", ".tar.gz", ".tar.xz", ".tar.bz2", ".tar.zst", ".tar.lz4", ".tgz", ".txz", ".tbz2", ".tbz",
    ".tzst",
];

fn tarball_error(name: &str) -> Error {
    Error::usage(format!(
        "{name} is a tar archive, not a disk image: extract the disk image from it first \
         (for example `tar -xf {name}`) and flash the extracted .img/.img.zst/.qcow2 file"
    ))
}

fn base_name(name: &str) -> String {
    let lower = name.to_ascii_lowercase();
    let base = lower.rsplit('/').next().unwrap_or(&lower);
    base.split(['?', '#']).next().unwrap_or(base).to_string()
}

/// Format from the file name alone (most specific suffix first).
pub fn from_name(name: &str) -> Option<ImageFormat> {
    let base = base_name(name);
    if TAR_SUFFIXES.iter().any(|s| base.ends_with(s)) {
        return None;
    }
    let table: &[(&str, ImageFormat)] = &[
        (".zst", ImageFormat::Zstd),
        (".zstd", ImageFormat::Zstd),
        (".xz", ImageFormat::Xz),
        (".gz", ImageFormat::Gzip),
        (".bz2", ImageFormat::Bzip2),
        (".qcow2", ImageFormat::Qcow2),
        (".lz4", ImageFormat::Lz4),
        (".lzma", ImageFormat::Lzma),
        (".zip", ImageFormat::Zip),
        (".simg", ImageFormat::Simg),
        (".img", ImageFormat::Raw),
        (".raw", ImageFormat::Raw),
        (".iso", ImageFormat::Raw),
        (".bin", ImageFormat::Raw),
        // A VMDK "flat" extent is the raw disk; its descriptor is the .vmdk beside it.
        ("-flat.vmdk", ImageFormat::Raw),
    ];
    table.iter().find(|(s, _)| base.ends_with(s)).map(|(_, f)| *f)
}

fn is_tar_header(head: &[u8]) -> bool {
    // POSIX ustar magic at offset 257.
    head.len() >= 262 && &head[257..262] == b"ustar"
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().unwrap()))
}

fn le64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().unwrap()))
}

const ZSTD_MAGIC: u32 = 0xFD2F_B528;

/// A stream starting with skippable frames belongs to the first real frame
/// after them; beyond `head`, the name decides (zstd unless it says lz4).
fn skippable_owner(head: &[u8], name: &str) -> ImageFormat {
    let mut pos = 0usize;
    while le32(head, pos).is_some_and(is_skippable) {
        let Some(len) = le32(head, pos + 4) else { break };
        pos = pos.saturating_add(8).saturating_add(len as usize);
    }
    match le32(head, pos) {
        Some(ZSTD_MAGIC) => ImageFormat::Zstd,
        Some(LZ4_FRAME_MAGIC | LZ4_LEGACY_MAGIC) => ImageFormat::Lz4,
        _ if base_name(name).ends_with(".lz4") => ImageFormat::Lz4,
        _ => ImageFormat::Zstd,
    }
}

/// The 13-byte LZMA-alone header: properties byte, dictionary size, and
/// the uncompressed size (all ones when unknown). `strict` is for data
/// without a `.lzma` name: it also wants the default properties (lc=3 lp=0
/// pb=2, what every encoder writes) and the range coder's first byte, which
/// is always zero, so a raw disk is not mistaken for one.
pub(crate) fn lzma_header(head: &[u8], strict: bool) -> Option<Option<u64>> {
    let props = *head.first()?;
    let dict = le32(head, 1)?;
    let size = le64(head, 5)?;
    if props >= 9 * 5 * 5 || (strict && (props != 0x5D || head.get(13) != Some(&0))) {
        return None;
    }
    // liblzma writes 2^n or 2^n + 2^(n-1) dictionaries (or UINT32_MAX).
    let hi = if dict == 0 { 0 } else { 1u32 << (31 - dict.leading_zeros()) };
    let dict_ok = dict == u32::MAX || (dict >= 4096 && (dict == hi || dict == hi + hi / 2));
    // liblzma refuses known sizes of 256 GiB and more in the same check.
    let size_ok = size == u64::MAX || size < 1 << 38;
    (dict_ok && size_ok).then_some((size != u64::MAX).then_some(size))
}

fn zlib_header(head: &[u8]) -> bool {
    head.len() >= 2
        && head[0] == 0x78
        && matches!(head[1], 0x01 | 0x5E | 0x9C | 0xDA)
        && (u16::from(head[0]) << 8 | u16::from(head[1])) % 31 == 0
}

/// Whether the start of a zlib stream inflates without error. Raw disks
/// can begin with `78 9C` by chance; random bytes after it fail to inflate
/// within a few dozen bytes.
fn inflates(head: &[u8]) -> bool {
    let mut d = flate2::Decompress::new(true);
    let mut out = vec![0u8; 256 << 10];
    d.decompress(head, &mut out, flate2::FlushDecompress::None).is_ok() && d.total_out() > 0
}

/// A format bty recognises and refuses: how to tell it, and what to do.
struct Refused {
    what: &'static str,
    suffixes: &'static [&'static str],
    head: fn(&[u8]) -> bool,
    tail: fn(&[u8]) -> bool,
    /// `IMAGE` is replaced by the image's name.
    advice: &'static str,
}

fn never(_: &[u8]) -> bool {
    false
}

const REFUSED: &[Refused] = &[
    Refused {
        what: "an lzop-compressed image",
        suffixes: &[".lzo"],
        head: |h| h.starts_with(b"\x89LZO\0\r\n\x1a\n"),
        tail: never,
        advice: "bty does not decode lzo: decompress it with `lzop -d IMAGE` first, or recompress the image with zstd",
    },
    Refused {
        what: "a 7-Zip archive",
        suffixes: &[".7z"],
        head: |h| h.starts_with(b"7z\xBC\xAF\x27\x1C"),
        tail: never,
        advice: "bty does not read 7z archives: extract the disk image with `7z x IMAGE` and flash that",
    },
    Refused {
        what: "a RAR archive",
        suffixes: &[".rar"],
        head: |h| h.starts_with(b"Rar!\x1a\x07\x00") || h.starts_with(b"Rar!\x1a\x07\x01\x00"),
        tail: never,
        advice: "bty does not read RAR archives: extract the disk image with `unrar x IMAGE` (or `7z x IMAGE`) and flash that",
    },
    Refused {
        what: "a Hyper-V VHDX disk",
        suffixes: &[".vhdx"],
        head: |h| h.starts_with(b"vhdxfile"),
        tail: never,
        advice: "bty does not read VHDX: convert it with `qemu-img convert -f vhdx -O raw IMAGE disk.img` and flash disk.img",
    },
    Refused {
        what: "a Virtual PC VHD disk",
        suffixes: &[".vhd", ".vpc"],
        // Dynamic VHDs start with a copy of the footer; fixed ones have it
        // only at the end (512 bytes, 511 from old writers).
        head: |h| h.starts_with(b"conectix"),
        tail: |t| t.starts_with(b"conectix") || t.get(1..9) == Some(b"conectix"),
        advice: "bty does not read VHD (its footer would land on the disk): convert it with \
                 `qemu-img convert -f vpc -O raw IMAGE disk.img` and flash disk.img",
    },
    Refused {
        what: "a VMware VMDK disk",
        suffixes: &[".vmdk"],
        head: |h| h.starts_with(b"KDMV") || h.starts_with(b"COWD") || h.starts_with(b"# Disk DescriptorFile"),
        tail: never,
        advice: "bty does not read VMDK: convert it with `qemu-img convert -f vmdk -O raw IMAGE disk.img` and flash disk.img",
    },
    Refused {
        what: "a VirtualBox VDI disk",
        suffixes: &[".vdi"],
        head: |h| le32(h, 0x40) == Some(0xBEDA_107F),
        tail: never,
        advice: "bty does not read VDI: convert it with `qemu-img convert -f vdi -O raw IMAGE disk.img` \
                 (or `VBoxManage clonemedium IMAGE disk.img --format RAW`) and flash disk.img",
    },
    Refused {
        what: "a QED disk",
        suffixes: &[".qed"],
        head: |h| h.starts_with(b"QED\0"),
        tail: never,
        advice: "bty does not read QED: convert it with `qemu-img convert -f qed -O raw IMAGE disk.img` and flash disk.img",
    },
    Refused {
        what: "an Apple disk image (UDIF .dmg)",
        suffixes: &[".dmg"],
        head: never,
        tail: |t| t.starts_with(b"koly"),
        advice: "bty does not read dmg: convert it with `qemu-img convert -f dmg -O raw IMAGE disk.img` \
                 (or `dmg2img IMAGE disk.img`) and flash disk.img",
    },
    Refused {
        what: "a xar archive",
        suffixes: &[".xar", ".pkg"],
        head: |h| h.starts_with(b"xar!"),
        tail: never,
        advice: "bty does not read xar archives: extract it with `xar -xf IMAGE` and flash the disk image inside",
    },
    Refused {
        what: "a squashfs filesystem, not a whole-disk image",
        suffixes: &[".squashfs", ".sqfs", ".sfs"],
        head: |h| h.starts_with(b"hsqs") || h.starts_with(b"sqsh"),
        tail: never,
        advice: "bty writes whole disks: write a filesystem onto a partition (for example with dd), \
                 or flash a disk image that contains it",
    },
    Refused {
        what: "an lzip-compressed image",
        suffixes: &[".lz"],
        head: |h| h.starts_with(b"LZIP"),
        tail: never,
        advice: "bty does not decode lzip: decompress it with `lzip -d IMAGE` first, or recompress the image with zstd",
    },
    Refused {
        what: "an lrzip-compressed image",
        suffixes: &[".lrz"],
        head: |h| h.starts_with(b"LRZI"),
        tail: never,
        advice: "bty does not decode lrzip: decompress it with `lrzip -d IMAGE` first, or recompress the image with zstd",
    },
    Refused {
        what: "a compress(1) (.Z) file",
        suffixes: &[".z"],
        head: |h| h.starts_with(b"\x1f\x9d"),
        tail: never,
        advice: "bty does not decode LZW: decompress it with `uncompress IMAGE` (or `gzip -d`) first, \
                 or recompress the image with zstd",
    },
    Refused {
        what: "a zlib stream",
        suffixes: &[".zlib", ".zz"],
        head: |h| zlib_header(h) && inflates(h),
        tail: never,
        advice: "bty does not decode bare zlib streams: decompress it first (for example \
                 `zlib-flate -uncompress < IMAGE > disk.img` or `pigz -dz IMAGE`), or recompress the image with zstd",
    },
    Refused {
        what: "an empty zip archive",
        suffixes: &[],
        head: |h| h.starts_with(b"PK\x05\x06"),
        tail: never,
        advice: "it holds no disk image",
    },
    Refused {
        what: "one part of a split zip archive",
        suffixes: &[".z01"],
        head: |h| h.starts_with(b"PK\x07\x08") || h.starts_with(b"PK00"),
        tail: never,
        advice: "join the parts first (`zip -s 0 IMAGE --out whole.zip`) and flash whole.zip",
    },
    Refused {
        what: "a cpio archive",
        suffixes: &[".cpio"],
        head: |h| h.starts_with(b"070701") || h.starts_with(b"070702") || h.starts_with(b"070707"),
        tail: never,
        advice: "it is not a disk image: extract it with `cpio -idv < IMAGE` and flash the disk image inside",
    },
    Refused {
        what: "an ar archive (such as a .deb package)",
        suffixes: &[".deb", ".ar"],
        head: |h| h.starts_with(b"!<arch>\n"),
        tail: never,
        advice: "it is not a disk image: extract it with `ar x IMAGE` and flash the disk image inside",
    },
];

fn refusal(r: &Refused, name: &str, by_name_only: bool) -> Error {
    let shown = if name.is_empty() { "the image" } else { name };
    let advice = r.advice.replace("IMAGE", shown);
    if by_name_only {
        Error::usage(format!(
            "{shown} is named like {} (its bytes do not show the signature, so it may also be damaged); {advice}",
            r.what
        ))
    } else {
        Error::usage(format!("{shown} is {}; {advice}", r.what))
    }
}

/// What a head of bytes is, when it is anything but raw data: decoded
/// formats by magic, then the refused ones.
fn by_magic(head: &[u8], name: &str) -> Option<ImageFormat> {
    let magic = le32(head, 0);
    if magic == Some(ZSTD_MAGIC) {
        Some(ImageFormat::Zstd)
    } else if magic.is_some_and(is_skippable) {
        Some(skippable_owner(head, name))
    } else if magic == Some(LZ4_FRAME_MAGIC) || magic == Some(LZ4_LEGACY_MAGIC) {
        Some(ImageFormat::Lz4)
    } else if head.starts_with(&[0xFD, b'7', b'z', b'X', b'Z', 0x00]) {
        Some(ImageFormat::Xz)
    } else if head.starts_with(&[0x1F, 0x8B]) {
        Some(ImageFormat::Gzip)
    } else if head.starts_with(b"BZh") && head.len() > 3 && (b'1'..=b'9').contains(&head[3]) {
        Some(ImageFormat::Bzip2)
    } else if head.starts_with(b"QFI\xfb") {
        Some(ImageFormat::Qcow2)
    } else if magic == Some(crate::simg::MAGIC) {
        Some(ImageFormat::Simg)
    } else if head.starts_with(b"PK\x03\x04") {
        Some(ImageFormat::Zip)
    } else if lzma_header(head, true).is_some()
        || (base_name(name).ends_with(".lzma") && lzma_header(head, false).is_some())
    {
        Some(ImageFormat::Lzma)
    } else {
        None
    }
}

/// Detect the format of an image from its first bytes (`head`, ideally
/// [`MAGIC_LEN`] bytes) and its name. Magic bytes win; the name decides only
/// for data without a recognised signature (raw disk images have none).
/// Tarballs and the formats bty does not decode are refused by name.
pub fn detect(head: &[u8], name: &str) -> Result<ImageFormat> {
    detect_with_tail(head, &[], name)
}

/// [`detect`] with the last [`TAIL_LEN`] bytes too, for the formats whose
/// signature is a trailer (fixed VHD, dmg). `tail` may be empty.
pub fn detect_with_tail(head: &[u8], tail: &[u8], name: &str) -> Result<ImageFormat> {
    let base = base_name(name);
    if TAR_SUFFIXES.iter().any(|s| base.ends_with(s)) || is_tar_header(head) {
        return Err(tarball_error(name));
    }
    if let Some(f) = by_magic(head, name) {
        return Ok(f);
    }
    if let Some(r) = REFUSED.iter().find(|r| (r.head)(head) || (r.tail)(tail)) {
        return Err(refusal(r, name, false));
    }
    if let Some(f) = from_name(name) {
        return match f {
            ImageFormat::Raw => Ok(f),
            // A name promising a format over bytes without its signature is
            // a damaged (or misnamed) file we must not stream to a disk as raw.
            _ => Err(Error::integrity(format!(
                "{name} is named like a {f} image but does not start with the {f} signature; \
                 the file is damaged or misnamed"
            ))),
        };
    }
    if let Some(r) = REFUSED.iter().find(|r| r.suffixes.iter().any(|s| base.ends_with(s))) {
        // .zlib/.zz with a valid header is zlib whatever the first block says.
        let header_only = r.suffixes.contains(&".zz") && zlib_header(head);
        return Err(refusal(r, name, !header_only));
    }
    Ok(ImageFormat::Raw)
}

/// [`detect`] for a source: for local files whose head says raw, the tail
/// is read too (fixed VHDs and dmg files end in their signature). Remote
/// tails are not fetched: a server without Range support would send the
/// whole image for it, so remote `.vhd`/`.dmg` are refused by name only.
pub fn detect_source(src: &Source, head: &[u8]) -> Result<ImageFormat> {
    let name = src.name();
    let f = detect(head, &name)?;
    if f != ImageFormat::Raw || !src.is_local() {
        return Ok(f);
    }
    let len = src.len()?.unwrap_or(0);
    if len < (MAGIC_LEN + TAIL_LEN) as u64 {
        return Ok(f);
    }
    let tail = src.read_at(len - TAIL_LEN as u64, TAIL_LEN)?;
    detect_with_tail(head, &tail, &name)
}

/// Check the first decoded bytes: a tarball inside a compressed stream, or
/// a compressed file or a container inside a zip or a compressed stream
/// (`disk.img.xz` zipped, `disk.qcow2.gz`), is refused rather than written.
pub fn refuse_inner(decoded_head: &[u8], name: &str, outer: ImageFormat) -> Result<()> {
    if is_tar_header(decoded_head) {
        return Err(tarball_error(name));
    }
    if !outer.wraps_a_file() {
        return Ok(());
    }
    let inner = match by_magic(decoded_head, "") {
        Some(f) => Some(f.describe()),
        None => REFUSED.iter().find(|r| (r.head)(decoded_head)).map(|r| r.what),
    };
    match inner {
        None => Ok(()),
        Some(what) => Err(Error::usage(format!(
            "{name} is {} holding {what}, not a disk image; bty unpacks one layer: unpack the outer one \
             first and flash the file inside (or publish the disk image with a single compression)",
            outer.describe()
        ))),
    }
}

/// Architecture hint from the file name; for display only, never gates a flash.
pub fn arch_hint(name: &str) -> Option<&'static str> {
    let lower = name.to_ascii_lowercase();
    let table: &[(&str, &str)] = &[
        ("x86_64", "x86_64"),
        ("x86-64", "x86_64"),
        ("amd64", "x86_64"),
        ("aarch64", "aarch64"),
        ("arm64", "aarch64"),
        ("armhf", "arm"),
        ("armv7", "arm"),
        ("riscv64", "riscv64"),
        ("ppc64le", "ppc64le"),
        ("s390x", "s390x"),
        ("i686", "i686"),
        ("i386", "i686"),
    ];
    table.iter().find(|(t, _)| lower.contains(t)).map(|(_, a)| *a)
}

/// Wrap a published byte stream in the decoder its format needs.
/// Multi-member/multi-frame streams (concatenated gzip, pzstd, pixz output)
/// are read to the end. qcow2 is not a stream format: see [`crate::qcow2`].
/// `src` is where the stream comes from: a local zip's central directory is
/// read from it.
pub fn decoder(
    format: ImageFormat,
    r: Box<dyn std::io::Read + Send>,
    src: &Source,
) -> Result<Box<dyn std::io::Read + Send>> {
    decoder_with_padding(format, r, src, &crate::concat::Padding::default())
}

/// [`decoder`], counting into `padding` the zero bytes a gzip or bzip2 file
/// carries after its last member (see [`crate::concat`]).
pub fn decoder_with_padding(
    format: ImageFormat,
    r: Box<dyn std::io::Read + Send>,
    src: &Source,
    padding: &crate::concat::Padding,
) -> Result<Box<dyn std::io::Read + Send>> {
    use crate::concat::{Kind, Members};
    let buffered = |r| BufReader::with_capacity(1 << 20, r);
    Ok(match format {
        ImageFormat::Raw => r,
        ImageFormat::Zstd => {
            let mut d = zstd::stream::read::Decoder::with_buffer(buffered(r))
                .map_err(|e| Error::io("cannot start zstd decoder", e))?;
            // Images made with `zstd --long` need a window above the default limit.
            d.window_log_max(31).map_err(|e| Error::io("cannot configure zstd decoder", e))?;
            Box::new(d)
        }
        ImageFormat::Xz => Box::new(xz2::read::XzDecoder::new_multi_decoder(buffered(r))),
        ImageFormat::Gzip => Box::new(Members::new(Kind::Gzip, buffered(r), padding.clone())),
        ImageFormat::Bzip2 => Box::new(Members::new(Kind::Bzip2, buffered(r), padding.clone())),
        ImageFormat::Lz4 => Box::new(crate::lz4::Decoder::new(buffered(r))),
        ImageFormat::Lzma => Box::new(LzmaDecoder::new(buffered(r))?),
        ImageFormat::Zip => {
            let expected = match src {
                Source::File(_) => Some(crate::zip::single_entry(src)?),
                Source::Http(_) | Source::Oci(_) => None,
            };
            Box::new(crate::zip::EntryReader::new(buffered(r), expected))
        }
        ImageFormat::Simg => Box::new(crate::simg::Reader::new(buffered(r))),
        ImageFormat::Qcow2 => {
            return Err(Error::usage("qcow2 images need random access and cannot be decoded as a stream"))
        }
    })
}

/// LZMA-alone through liblzma's `lzma_alone_decoder`, which requires the
/// end-of-payload marker or the header's size, so a truncated file is an
/// error. The format has no framing after its end: anything there is damage.
struct LzmaDecoder<R: std::io::BufRead> {
    inner: xz2::bufread::XzDecoder<R>,
    done: bool,
}

impl<R: std::io::BufRead> LzmaDecoder<R> {
    fn new(r: R) -> Result<Self> {
        let stream = xz2::stream::Stream::new_lzma_decoder(u64::MAX)
            .map_err(|e| Error::failure(format!("cannot start the lzma decoder: {e}")))?;
        Ok(LzmaDecoder { inner: xz2::bufread::XzDecoder::new_stream(r, stream), done: false })
    }
}

impl<R: std::io::BufRead> Read for LzmaDecoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.done {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.done = true;
            let mut rest = [0u8; 4096];
            let extra = self.inner.get_mut().read(&mut rest)?;
            if extra > 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "data follows the end of the lzma stream (after {} compressed bytes)",
                        self.inner.total_in()
                    ),
                ));
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_beats_name() {
        assert_eq!(detect(&[0x28, 0xB5, 0x2F, 0xFD, 0], "disk.img").unwrap(), ImageFormat::Zstd);
        assert_eq!(detect(b"\x1f\x8b\x08\x00", "disk.img").unwrap(), ImageFormat::Gzip);
        assert_eq!(detect(b"QFI\xfb\0\0\0\x03", "x.raw").unwrap(), ImageFormat::Qcow2);
        assert_eq!(detect(b"BZh91AY", "x").unwrap(), ImageFormat::Bzip2);
        assert_eq!(detect(b"\xfd7zXZ\0\0", "x").unwrap(), ImageFormat::Xz);
        assert_eq!(detect(b"\x50\x2a\x4d\x18\x04\0\0\0", "x.img.zst").unwrap(), ImageFormat::Zstd);
    }

    #[test]
    fn raw_by_default_and_by_name() {
        assert_eq!(detect(&[0u8; 512], "disk.img").unwrap(), ImageFormat::Raw);
        assert_eq!(detect(&[0u8; 512], "noext").unwrap(), ImageFormat::Raw);
    }

    #[test]
    fn compressed_name_without_magic_is_refused() {
        let err = detect(&[0u8; 512], "disk.img.zst").unwrap_err();
        assert!(err.to_string().contains("signature"), "{err}");
    }

    #[test]
    fn tarballs_are_refused() {
        for n in ["a.tar.gz", "a.tgz", "A.TAR.ZST", "x.tar"] {
            let err = detect(b"\x1f\x8b", n).unwrap_err();
            assert!(err.to_string().contains("extract"), "{n}: {err}");
        }
        let mut head = vec![0u8; 512];
        head[257..262].copy_from_slice(b"ustar");
        assert!(detect(&head, "disk.img").is_err());
    }

    #[test]
    fn names() {
        assert_eq!(from_name("https://h/x/debian.img.xz?x=1"), Some(ImageFormat::Xz));
        assert_eq!(from_name("a.qcow2"), Some(ImageFormat::Qcow2));
        assert_eq!(ImageFormat::parse("img.zst"), Some(ImageFormat::Zstd));
        assert_eq!(arch_hint("debian-13-arm64.img"), Some("aarch64"));
    }

    fn refused_message(head: &[u8], tail: &[u8], name: &str) -> String {
        let err = detect_with_tail(head, tail, name).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Usage, "{name}: {err}");
        err.to_string()
    }

    fn at(offset: usize, bytes: &[u8]) -> Vec<u8> {
        let mut v = vec![0u8; 512];
        v[offset..offset + bytes.len()].copy_from_slice(bytes);
        v
    }

    #[test]
    fn new_decoded_formats_by_magic() {
        assert_eq!(detect(b"\x04\x22\x4d\x18\x64\x70\xb9", "x.img").unwrap(), ImageFormat::Lz4);
        assert_eq!(detect(b"\x02\x21\x4c\x18\0\0\0\0", "x").unwrap(), ImageFormat::Lz4);
        assert_eq!(detect(b"\x3a\xff\x26\xed\x01\0\0\0", "system.img").unwrap(), ImageFormat::Simg);
        assert_eq!(detect(b"PK\x03\x04\x14\0", "x.bin").unwrap(), ImageFormat::Zip);
        // LZMA-alone: default properties, 8 MiB dictionary, unknown size, zero first byte.
        let lzma = b"\x5d\0\0\x80\0\xff\xff\xff\xff\xff\xff\xff\xff\0\x12";
        assert_eq!(detect(lzma, "disk").unwrap(), ImageFormat::Lzma);
        let mut odd = lzma.to_vec();
        odd[0] = 0x2C;
        assert_eq!(detect(&odd, "disk.img.lzma").unwrap(), ImageFormat::Lzma);
        assert_eq!(detect(&odd, "disk.img").unwrap(), ImageFormat::Raw);
        // A skippable frame belongs to the frame after it.
        let mut skip = vec![0x50, 0x2A, 0x4D, 0x18, 2, 0, 0, 0, 9, 9];
        skip.extend(LZ4_FRAME_MAGIC.to_le_bytes());
        assert_eq!(detect(&skip, "x").unwrap(), ImageFormat::Lz4);
        assert_eq!(detect(&skip[..8], "x.img.lz4").unwrap(), ImageFormat::Lz4);
        assert_eq!(detect(&skip[..8], "x").unwrap(), ImageFormat::Zstd);
        assert_eq!(from_name("a.img.zip"), Some(ImageFormat::Zip));
        assert_eq!(ImageFormat::parse("simg"), Some(ImageFormat::Simg));
    }

    #[test]
    fn signature_table() {
        let cases: &[(&[u8], &str, &str)] = &[
            (b"\x89LZO\0\r\n\x1a\n\x10", "lzop -d", "lzop-compressed"),
            (b"7z\xbc\xaf\x27\x1c\0\x04", "7z x", "7-Zip"),
            (b"Rar!\x1a\x07\x00", "unrar x", "RAR"),
            (b"Rar!\x1a\x07\x01\x00", "unrar x", "RAR"),
            (b"vhdxfile", "qemu-img convert -f vhdx", "VHDX"),
            (b"conectix\0\0\0\x02", "qemu-img convert -f vpc", "VHD"),
            (b"KDMV\x01\0\0\0", "qemu-img convert -f vmdk", "VMDK"),
            (b"# Disk DescriptorFile\nversion=1", "-f vmdk", "VMDK"),
            (b"COWD\x01\0\0\0", "-f vmdk", "VMDK"),
            (b"QED\0", "-f qed", "QED"),
            (b"xar!\0\x1c", "xar -xf", "xar"),
            (b"hsqs\0\0\0\0", "partition", "squashfs"),
            (b"LZIP\x01", "lzip -d", "lzip"),
            (b"LRZI\0\x06", "lrzip -d", "lrzip"),
            (b"\x1f\x9d\x90", "uncompress", "compress(1)"),
            (b"PK\x05\x06\0\0\0\0", "no disk image", "empty zip"),
            (b"070701000001", "cpio -idv", "cpio"),
            (b"!<arch>\ndebian-binary", "ar x", "ar archive"),
        ];
        for (head, advice, what) in cases {
            let msg = refused_message(head, &[], "image.img");
            assert!(msg.contains(advice) && msg.contains(what), "{what}: {msg}");
            assert!(msg.starts_with("image.img is "), "{msg}");
        }
        let vdi = at(0x40, &0xBEDA_107Fu32.to_le_bytes());
        assert!(refused_message(&vdi, &[], "x").contains("VDI"));
        // Trailers: a fixed VHD's footer, a dmg's koly block.
        let raw = vec![0u8; 512];
        assert!(refused_message(&raw, b"conectix\0\0\0\x02", "d.img").contains("VHD"));
        assert!(refused_message(&raw, b"\0conectix", "d.img").contains("VHD"));
        assert!(refused_message(&raw, b"koly\0\0\0\x04", "d.img").contains("dmg"));
        // By name alone, saying the signature is missing.
        let msg = refused_message(&raw, &raw, "disk.vhd");
        assert!(msg.contains("named like") && msg.contains("qemu-img"), "{msg}");
        assert!(refused_message(&raw, &[], "x.img.lzo").contains("lzop -d"));
        // An ISO is a raw image; a VMDK flat extent too.
        let iso = at(0x1, b"CD001");
        assert_eq!(detect(&iso, "debian.iso").unwrap(), ImageFormat::Raw);
        assert_eq!(detect(&raw, "disk-flat.vmdk").unwrap(), ImageFormat::Raw);
    }

    #[test]
    fn zlib_needs_a_valid_stream_or_its_name() {
        // 78 01, one stored final block holding "bty!", then the Adler-32.
        let z = b"\x78\x01\x01\x04\x00\xfb\xffbty!\x03\xfb\x01\x71";
        assert!(refused_message(z, &[], "disk.img").contains("zlib stream"));
        // The same two bytes before garbage are a raw disk that happens to start so.
        let mut junk = b"\x78\x9c".to_vec();
        junk.extend((0..510u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 | 0xC0));
        assert_eq!(detect(&junk, "disk.img").unwrap(), ImageFormat::Raw);
        assert!(refused_message(&junk, &[], "disk.zz").contains("zlib stream"));
        assert!(refused_message(&[0u8; 64], &[], "disk.zlib").contains("named like"));
    }

    #[test]
    fn damaged_or_misnamed_is_an_integrity_failure() {
        for name in ["a.img.lz4", "a.zip", "a.simg", "a.img.zst"] {
            let err = detect(&[0u8; 512], name).unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::Integrity, "{name}");
        }
    }

    #[test]
    fn packed_files_inside_wrappers_are_refused() {
        let xz = b"\xfd7zXZ\0\0\x04";
        let err = refuse_inner(xz, "disk.zip", ImageFormat::Zip).unwrap_err();
        assert!(err.to_string().contains("a zip archive holding an xz-compressed file"), "{err}");
        assert!(refuse_inner(b"QFI\xfb\0\0\0\x03", "d.qcow2.gz", ImageFormat::Gzip).is_err());
        assert!(refuse_inner(b"\x89LZO\0\r\n\x1a\n", "d.img.zst", ImageFormat::Zstd).is_err());
        // The decoded disk of a qcow2 or simg may start with anything.
        assert!(refuse_inner(b"PK\x03\x04", "d.qcow2", ImageFormat::Qcow2).is_ok());
        assert!(refuse_inner(&[0u8; 512], "d.zip", ImageFormat::Zip).is_ok());
    }
}
