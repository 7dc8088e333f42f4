//! Image formats: detection from magic bytes first, file name second.

use crate::error::{Error, Result};

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
}

impl ImageFormat {
    pub const ALL: [ImageFormat; 6] = [
        ImageFormat::Raw,
        ImageFormat::Zstd,
        ImageFormat::Xz,
        ImageFormat::Gzip,
        ImageFormat::Bzip2,
        ImageFormat::Qcow2,
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
            _ => return None,
        })
    }

    pub fn is_compressed(self) -> bool {
        matches!(self, ImageFormat::Zstd | ImageFormat::Xz | ImageFormat::Gzip | ImageFormat::Bzip2)
    }
}

impl std::fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How many leading bytes [`detect`] wants to see.
pub const MAGIC_LEN: usize = 512;

const TAR_SUFFIXES: &[&str] =
    &[".tar", ".tar.gz", ".tar.xz", ".tar.bz2", ".tar.zst", ".tgz", ".txz", ".tbz2", ".tbz", ".tzst"];

fn tarball_error(name: &str) -> Error {
    Error::usage(format!(
        "{name} is a tar archive, not a disk image: extract the disk image from it first \
         (for example `tar -xf {name}`) and flash the extracted .img/.img.zst/.qcow2 file"
    ))
}

/// Format from the file name alone (most specific suffix first).
pub fn from_name(name: &str) -> Option<ImageFormat> {
    let lower = name.to_ascii_lowercase();
    let base = lower.rsplit('/').next().unwrap_or(&lower);
    let base = base.split(['?', '#']).next().unwrap_or(base);
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
        (".img", ImageFormat::Raw),
        (".raw", ImageFormat::Raw),
        (".iso", ImageFormat::Raw),
        (".bin", ImageFormat::Raw),
    ];
    table.iter().find(|(s, _)| base.ends_with(s)).map(|(_, f)| *f)
}

fn is_tar_header(head: &[u8]) -> bool {
    // POSIX ustar magic at offset 257.
    head.len() >= 262 && &head[257..262] == b"ustar"
}

/// Detect the format of an image from its first bytes (`head`, ideally
/// [`MAGIC_LEN`] bytes) and its name. Magic bytes win; the name decides only
/// for data without a recognised signature (raw disk images have none).
/// Tarballs, compressed or not, are refused with an "extract first" message.
pub fn detect(head: &[u8], name: &str) -> Result<ImageFormat> {
    // Skippable frames (0x184D2A50..=0x184D2A5F, little-endian) lead pzstd output.
    let zstd_skippable = head.len() >= 4 && head[1..4] == [0x2A, 0x4D, 0x18] && head[0] & 0xF0 == 0x50;
    let by_magic = if head.starts_with(&[0x28, 0xB5, 0x2F, 0xFD]) || zstd_skippable {
        Some(ImageFormat::Zstd)
    } else if head.starts_with(&[0xFD, b'7', b'z', b'X', b'Z', 0x00]) {
        Some(ImageFormat::Xz)
    } else if head.starts_with(&[0x1F, 0x8B]) {
        Some(ImageFormat::Gzip)
    } else if head.starts_with(b"BZh") && head.len() > 3 && (b'1'..=b'9').contains(&head[3]) {
        Some(ImageFormat::Bzip2)
    } else if head.starts_with(b"QFI\xfb") {
        Some(ImageFormat::Qcow2)
    } else {
        None
    };
    let lower = name.to_ascii_lowercase();
    if TAR_SUFFIXES.iter().any(|s| lower.split(['?', '#']).next().unwrap_or("").ends_with(s)) {
        return Err(tarball_error(name));
    }
    if is_tar_header(head) {
        return Err(tarball_error(name));
    }
    match by_magic {
        Some(f) => Ok(f),
        None => match from_name(name) {
            // A name promising compression over bytes without that signature is
            // a lie we must not stream to a disk as if it were raw.
            Some(f) if f.is_compressed() || f == ImageFormat::Qcow2 => Err(Error::usage(format!(
                "{name} is named like a {f} image but does not start with the {f} signature; \
                 the file is damaged or misnamed"
            ))),
            Some(f) => Ok(f),
            None => Ok(ImageFormat::Raw),
        },
    }
}

/// Inner-stream check for compressed tarballs (`foo.img.gz` that is really a
/// `.tar.gz`): called on the first decompressed bytes.
pub fn refuse_inner_tarball(decompressed_head: &[u8], name: &str) -> Result<()> {
    if is_tar_header(decompressed_head) {
        Err(tarball_error(name))
    } else {
        Ok(())
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

/// Wrap a published byte stream in the decompressor its format needs.
/// Multi-member/multi-frame streams (concatenated gzip, pzstd, pixz output)
/// are read to the end. qcow2 is not a stream format: see [`crate::qcow2`].
pub fn decoder(
    format: ImageFormat,
    r: Box<dyn std::io::Read + Send>,
) -> Result<Box<dyn std::io::Read + Send>> {
    decoder_with_padding(format, r, &crate::concat::Padding::default())
}

/// [`decoder`], counting into `padding` the zero bytes a gzip or bzip2 file
/// carries after its last member (see [`crate::concat`]).
pub fn decoder_with_padding(
    format: ImageFormat,
    r: Box<dyn std::io::Read + Send>,
    padding: &crate::concat::Padding,
) -> Result<Box<dyn std::io::Read + Send>> {
    use crate::concat::{Kind, Members};
    use std::io::BufReader;
    Ok(match format {
        ImageFormat::Raw => r,
        ImageFormat::Zstd => {
            let mut d = zstd::stream::read::Decoder::with_buffer(BufReader::with_capacity(1 << 20, r))
                .map_err(|e| Error::io("cannot start zstd decoder", e))?;
            // Images made with `zstd --long` need a window above the default limit.
            d.window_log_max(31).map_err(|e| Error::io("cannot configure zstd decoder", e))?;
            Box::new(d)
        }
        ImageFormat::Xz => {
            Box::new(xz2::read::XzDecoder::new_multi_decoder(BufReader::with_capacity(1 << 20, r)))
        }
        ImageFormat::Gzip => {
            Box::new(Members::new(Kind::Gzip, BufReader::with_capacity(1 << 20, r), padding.clone()))
        }
        ImageFormat::Bzip2 => {
            Box::new(Members::new(Kind::Bzip2, BufReader::with_capacity(1 << 20, r), padding.clone()))
        }
        ImageFormat::Qcow2 => {
            return Err(Error::usage("qcow2 images need random access and cannot be decoded as a stream"))
        }
    })
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
}
