//! Block maps in bmaptool's XML format (`.bmap` files, format versions 1.x
//! and 2.x): which blocks of an image hold data, so a flash can skip the rest,
//! with an optional checksum per mapped range.
//!
//! Range and file checksums are SHA-256 or SHA-1 (formats 1.0–1.3 know only
//! SHA-1; older Yocto and Tizen releases publish those). MD5 maps are refused
//! rather than flashed without the check they promise. Like `bmaptool copy`,
//! a map whose format defines its own checksum (1.3 and later) is used only
//! when that checksum is there and matches ([`load`]); PGP-clearsigned maps
//! (`IMAGE.bmap.asc`) are read with the signature stripped, which bty does
//! not check.

use quick_xml::events::Event;
use sha2::Digest;

use crate::error::{Error, Result};
use crate::source::Source;

/// Digest used for the ranges and the bmap file itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChecksumType {
    Sha256,
    Sha1,
    Md5,
}

impl ChecksumType {
    fn parse(s: &str) -> Option<ChecksumType> {
        match s.to_ascii_lowercase().as_str() {
            "sha256" => Some(ChecksumType::Sha256),
            "sha1" => Some(ChecksumType::Sha1),
            "md5" => Some(ChecksumType::Md5),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ChecksumType::Sha256 => "sha256",
            ChecksumType::Sha1 => "sha1",
            ChecksumType::Md5 => "md5",
        }
    }

    /// Length of the digest in hex digits.
    pub fn hex_len(self) -> usize {
        match self {
            ChecksumType::Sha256 => 64,
            ChecksumType::Sha1 => 40,
            ChecksumType::Md5 => 32,
        }
    }

    /// Lowercase hex digest of `data` (SHA-256 and SHA-1; MD5 maps are
    /// refused by [`parse`] before anything is hashed).
    pub fn hex_digest(self, data: &[u8]) -> String {
        let mut h = RangeHasher::new(self);
        h.update(data);
        h.finish()
    }
}

/// An incremental range checksum of the map's type.
#[derive(Clone)]
pub enum RangeHasher {
    Sha256(sha2::Sha256),
    Sha1(sha1::Sha1),
}

impl RangeHasher {
    pub fn new(ty: ChecksumType) -> Self {
        match ty {
            ChecksumType::Sha1 => RangeHasher::Sha1(sha1::Sha1::new()),
            // Md5 never gets this far; SHA-256 is the safe default for maps without checksums.
            ChecksumType::Sha256 | ChecksumType::Md5 => RangeHasher::Sha256(sha2::Sha256::new()),
        }
    }
    pub fn update(&mut self, data: &[u8]) {
        match self {
            RangeHasher::Sha256(h) => h.update(data),
            RangeHasher::Sha1(h) => h.update(data),
        }
    }
    /// The digest so far in lowercase hex; the hasher starts over.
    pub fn finish(&mut self) -> String {
        match self {
            RangeHasher::Sha256(h) => hex::encode(std::mem::take(h).finalize()),
            RangeHasher::Sha1(h) => hex::encode(std::mem::take(h).finalize()),
        }
    }
}

/// An inclusive range of mapped blocks.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BmapRange {
    pub first_block: u64,
    pub last_block: u64,
    /// Lowercase hex digest (of the map's [`Bmap::checksum_type`]) of the
    /// range's bytes, clipped to the image size.
    pub checksum: Option<String>,
}

impl BmapRange {
    /// `(offset, length)` in bytes; the last block of an image whose size is
    /// not a multiple of the block size is clipped to the image's end.
    pub fn byte_range(&self, block_size: u64, image_size: u64) -> (u64, u64) {
        // A map may describe an image within a block of 2^64 bytes: the end
        // of its last block is past what u64 holds, and is clipped anyway.
        let start = self.first_block.saturating_mul(block_size).min(image_size);
        let end = self.last_block.saturating_add(1).saturating_mul(block_size).min(image_size);
        (start, end.saturating_sub(start))
    }

    pub fn blocks(&self) -> u64 {
        self.last_block - self.first_block + 1
    }
}

/// A parsed and validated block map.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Bmap {
    /// Format version as written (`"2.0"`, `"1.4"`...).
    pub version: String,
    pub image_size: u64,
    pub block_size: u64,
    pub blocks_count: u64,
    pub mapped_blocks_count: u64,
    pub checksum_type: Option<ChecksumType>,
    /// The file carried a `BmapFileChecksum` (`BmapFileSHA1` in 1.3) and it matched.
    pub file_checksum_verified: bool,
    /// The format defines a file checksum (1.3 and later) but this file has none.
    pub file_checksum_missing: bool,
    /// The map came wrapped in a PGP clearsigned message; the signature is not checked.
    pub clearsigned: bool,
    pub ranges: Vec<BmapRange>,
}

impl Bmap {
    /// Every mapped range as `(offset, length)` in bytes.
    pub fn byte_ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges.iter().map(|r| r.byte_range(self.block_size, self.image_size))
    }

    /// Bytes a flash with this map writes.
    pub fn mapped_bytes(&self) -> u64 {
        self.byte_ranges().map(|(_, l)| l).sum()
    }
}

fn line_of(xml: &str, pos: usize) -> usize {
    xml.as_bytes()[..pos.min(xml.len())].iter().filter(|&&b| b == b'\n').count() + 1
}

/// Line numbers of positions that only move forward, counted from the last
/// one: counting from the start for every element made parsing quadratic in
/// the size of the map (minutes for the megabytes of a fragmented image's).
struct Lines<'a> {
    xml: &'a str,
    at: usize,
    line: usize,
}

impl<'a> Lines<'a> {
    fn new(xml: &'a str) -> Self {
        Lines { xml, at: 0, line: 1 }
    }

    fn of(&mut self, pos: usize) -> usize {
        let pos = pos.min(self.xml.len());
        if pos < self.at {
            return line_of(self.xml, pos);
        }
        self.line += self.xml.as_bytes()[self.at..pos].iter().filter(|&&b| b == b'\n').count();
        self.at = pos;
        self.line
    }
}

fn bad(line: usize, what: impl std::fmt::Display) -> Error {
    Error::integrity(format!("invalid block map (line {line}): {what}"))
}

/// A range element as read, before validation.
struct RawRange {
    line: usize,
    text: String,
    checksum: Option<String>,
}

/// Parse and validate a `.bmap` document. Errors name the line and field at
/// fault; a file checksum that does not match is an integrity error.
pub fn parse(xml: &str) -> Result<Bmap> {
    parse_as(xml, false)
}

/// What a clearsigned map adds to every error: a signed file is not called
/// damaged, as bty has not checked the signature that would say so.
const SIGNED_NOTE: &str = "the map is PGP-clearsigned, and bty does not check the signature (`gpg --verify` \
                           does): it checks the map's own checksum and every range's checksum";

fn parse_as(xml: &str, signed: bool) -> Result<Bmap> {
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut stack: Vec<String> = Vec::new();
    let mut version: Option<String> = None;
    // Scalar fields directly under <bmap>: name, text, line.
    let mut fields: Vec<(String, String, usize)> = Vec::new();
    let mut ranges: Vec<RawRange> = Vec::new();
    let mut saw_root = false;
    let mut saw_block_map = false;
    let mut lines = Lines::new(xml);

    loop {
        let pos = reader.buffer_position() as usize;
        let ev = reader.read_event().map_err(|e| {
            bad(line_of(xml, reader.error_position() as usize), format!("malformed XML: {e}"))
        })?;
        let line = lines.of(pos + 1);
        match ev {
            Event::Start(ref e) | Event::Empty(ref e) => {
                let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                let attr = |key: &[&[u8]]| -> Result<Option<String>> {
                    for a in e.attributes() {
                        let a = a.map_err(|err| bad(line, format!("malformed attribute: {err}")))?;
                        if key.contains(&a.key.as_ref()) {
                            let v = a
                                .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                                .map_err(|err| bad(line, format!("malformed attribute: {err}")))?;
                            return Ok(Some(v.trim().to_string()));
                        }
                    }
                    Ok(None)
                };
                match stack.len() {
                    0 if name == "bmap" => {
                        saw_root = true;
                        version = attr(&[b"version"])?;
                    }
                    0 => return Err(bad(line, format!("the root element is <{name}>, expected <bmap>"))),
                    1 if name == "BlockMap" => saw_block_map = true,
                    1 => fields.push((name.clone(), String::new(), line)),
                    2 if name == "Range" && stack[1] == "BlockMap" => {
                        let checksum = attr(&[b"chksum", b"sha1", b"sha256"])?;
                        ranges.push(RawRange { line, text: String::new(), checksum });
                    }
                    _ => {}
                }
                if matches!(ev, Event::Start(_)) {
                    stack.push(name);
                }
            }
            Event::End(_) => {
                stack.pop();
            }
            Event::Text(t) => {
                let text = t.decode().map_err(|e| bad(line, format!("undecodable text: {e}")))?;
                match stack.len() {
                    2 => {
                        if let Some(f) = fields.last_mut().filter(|f| f.0 == stack[1]) {
                            f.1.push_str(&text);
                        }
                    }
                    3 if stack[2] == "Range" => {
                        if let Some(r) = ranges.last_mut() {
                            r.text.push_str(&text);
                        }
                    }
                    _ => {}
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if !saw_root {
        return Err(bad(1, "no <bmap> element; this is not a bmaptool block map"));
    }

    let version = version.ok_or_else(|| bad(1, "<bmap> has no version attribute"))?;
    let (major, minor) = version
        .split_once('.')
        .and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)))
        .ok_or_else(|| bad(1, format!("version \"{version}\" is not MAJOR.MINOR")))?;
    if !(1..=2).contains(&major) {
        return Err(Error::failure(format!(
            "block map format version {version} is not supported (1.x and 2.x are); use a bmap made by bmaptool 3.x"
        )));
    }

    let field = |name: &str| fields.iter().find(|f| f.0 == name);
    let number = |name: &str| -> Result<u64> {
        let (_, text, line) = field(name).ok_or_else(|| bad(1, format!("the <{name}> field is missing")))?;
        text.trim()
            .parse::<u64>()
            .map_err(|_| bad(*line, format!("<{name}> is \"{}\", not a number", text.trim())))
    };
    let image_size = number("ImageSize")?;
    let block_size = number("BlockSize")?;
    let blocks_count = number("BlocksCount")?;
    let mapped_blocks_count = number("MappedBlocksCount")?;
    if block_size == 0 {
        return Err(bad(field("BlockSize").unwrap().2, "<BlockSize> is 0"));
    }
    if blocks_count != image_size.div_ceil(block_size) {
        return Err(bad(
            field("BlocksCount").unwrap().2,
            format!(
                "<BlocksCount> is {blocks_count} but an image of {image_size} bytes in {block_size}-byte blocks has {}",
                image_size.div_ceil(block_size)
            ),
        ));
    }
    if !saw_block_map {
        return Err(bad(1, "the <BlockMap> element is missing"));
    }

    // Versions before 1.4 know only SHA-1 and name it in their tags; later
    // ones declare the digest. 1.3 introduced the file's own checksum.
    let defines_file_checksum = major > 1 || minor >= 3;
    let (checksum_type, file_checksum) = if major == 1 && minor < 4 {
        let sha1 = field("BmapFileSHA1");
        let any_range = ranges.iter().any(|r| r.checksum.is_some());
        ((sha1.is_some() || any_range || minor == 3).then_some(ChecksumType::Sha1), sha1)
    } else {
        let ty = match field("ChecksumType") {
            Some((_, text, line)) => Some(ChecksumType::parse(text.trim()).ok_or_else(|| {
                bad(*line, format!("<ChecksumType> \"{}\" is unknown (expected sha256 or sha1)", text.trim()))
            })?),
            None => None,
        };
        (ty, field("BmapFileChecksum"))
    };
    let has_checksums = file_checksum.is_some() || ranges.iter().any(|r| r.checksum.is_some());
    if has_checksums {
        match checksum_type {
            Some(ChecksumType::Sha256 | ChecksumType::Sha1) => {}
            Some(other) => {
                return Err(Error::failure(format!(
                    "the block map uses {} checksums; bty verifies SHA-256 and SHA-1 only: regenerate it \
                     with `bmaptool create IMAGE > IMAGE.bmap` (bmaptool 3.x writes SHA-256)",
                    other.as_str()
                )))
            }
            None => return Err(bad(1, "the block map has checksums but no <ChecksumType>")),
        }
    }
    let ty = checksum_type.unwrap_or(ChecksumType::Sha256);
    let is_digest = |c: &str| c.len() == ty.hex_len() && c.bytes().all(|b| b.is_ascii_hexdigit());

    let mut file_checksum_verified = false;
    if let Some((_, text, line)) = file_checksum {
        let want = text.trim();
        if !is_digest(want) {
            return Err(bad(
                *line,
                format!("<{}> \"{want}\" is not a {} digest", field_name(major, minor), ty.label()),
            ));
        }
        // bmaptool hashes the file with the digest's own text replaced by zeros.
        let zeroed = xml.replacen(want, &"0".repeat(want.len()), 1);
        let got = ty.hex_digest(zeroed.as_bytes());
        if !got.eq_ignore_ascii_case(want) && signed {
            return Err(Error::integrity(format!(
                "the block map's own checksum does not match its text ({} {want}, computed {got}): the text \
                 inside the signature is not what bmaptool wrote; {SIGNED_NOTE}. Get the map again from its \
                 publisher",
                field_name(major, minor)
            )));
        }
        if !got.eq_ignore_ascii_case(want) {
            return Err(Error::integrity(format!(
                "the block map's own checksum does not match ({} {want}, computed {got}): the .bmap file was \
                 changed after bmaptool wrote it, or damaged; download it again or regenerate it with \
                 `bmaptool create`",
                field_name(major, minor)
            )));
        }
        file_checksum_verified = true;
    }

    let mut out: Vec<BmapRange> = Vec::with_capacity(ranges.len());
    for r in ranges {
        let text = r.text.trim();
        let parse_block = |s: &str| {
            s.trim()
                .parse::<u64>()
                .map_err(|_| bad(r.line, format!("<Range> \"{text}\" is not N or FIRST-LAST")))
        };
        let (first, last) = match text.split_once('-') {
            Some((a, b)) => (parse_block(a)?, parse_block(b)?),
            None => {
                let n = parse_block(text)?;
                (n, n)
            }
        };
        if first > last {
            return Err(bad(r.line, format!("<Range> {first}-{last} runs backwards")));
        }
        if last >= blocks_count {
            return Err(bad(r.line, format!("<Range> {text} lies beyond the image's {blocks_count} blocks")));
        }
        if let Some(prev) = out.last() {
            if first <= prev.last_block {
                return Err(bad(
                    r.line,
                    format!(
                        "<Range> {text} overlaps or precedes the previous range {}-{}; ranges must be sorted \
                         and disjoint",
                        prev.first_block, prev.last_block
                    ),
                ));
            }
        }
        let checksum = match r.checksum {
            Some(c) if is_digest(&c) => Some(c.to_ascii_lowercase()),
            Some(c) => {
                return Err(bad(r.line, format!("<Range> checksum \"{c}\" is not a {} digest", ty.label())))
            }
            None => None,
        };
        out.push(BmapRange { first_block: first, last_block: last, checksum });
    }
    let mapped: u64 = out.iter().map(BmapRange::blocks).sum();
    if mapped != mapped_blocks_count {
        return Err(bad(
            field("MappedBlocksCount").unwrap().2,
            format!("<MappedBlocksCount> is {mapped_blocks_count} but the ranges cover {mapped} blocks"),
        ));
    }

    Ok(Bmap {
        version,
        image_size,
        block_size,
        blocks_count,
        mapped_blocks_count,
        checksum_type,
        file_checksum_verified,
        file_checksum_missing: defines_file_checksum && !file_checksum_verified,
        clearsigned: false,
        ranges: out,
    })
}

fn field_name(major: u32, minor: u32) -> &'static str {
    if major == 1 && minor < 4 {
        "BmapFileSHA1"
    } else {
        "BmapFileChecksum"
    }
}

impl ChecksumType {
    fn label(self) -> &'static str {
        match self {
            ChecksumType::Sha256 => "SHA-256",
            ChecksumType::Sha1 => "SHA-1",
            ChecksumType::Md5 => "MD5",
        }
    }
}

const SIGNED_MESSAGE: &str = "-----BEGIN PGP SIGNED MESSAGE-----";
const SIGNATURE: &str = "-----BEGIN PGP SIGNATURE-----";

/// The message inside a PGP clearsigned text (RFC 4880 §7), or `None` when
/// `text` is not one: armor headers (`Hash: …`) up to the first empty line
/// are dropped, dash-escaped lines (`- -…`) unescaped, and everything from the
/// signature block on is dropped. Each line keeps its line break, as
/// `gpg --decrypt` writes it, which is the text bmaptool checksummed.
pub fn clearsigned_message(text: &str) -> Result<Option<String>> {
    let mut lines = text.split_inclusive('\n');
    match lines.next() {
        Some(first) if first.trim_end() == SIGNED_MESSAGE => {}
        _ => return Ok(None),
    }
    let cut = |what: &str| {
        Error::integrity(format!(
            "the block map is a PGP signed message cut short: {what}; download it again"
        ))
    };
    loop {
        match lines.next() {
            Some(l) if l.trim_end().is_empty() => break,
            Some(_) => {}
            None => return Err(cut("it ends in its armor headers")),
        }
    }
    let mut out = String::new();
    for line in lines {
        if line.trim_end() == SIGNATURE {
            return Ok(Some(out));
        }
        out.push_str(line.strip_prefix("- ").unwrap_or(line));
    }
    Err(cut("it has no signature block"))
}

/// Parse a block map as published: plain or PGP-clearsigned. A map whose
/// format defines its own checksum (1.3 and later) but lacks it is refused
/// unless `allow_unverified` (`bty flash --bmap-unverified`): bmaptool
/// refuses such maps too, and nothing else shows that the ranges are the
/// ones made for the image.
pub fn load(text: &str, allow_unverified: bool) -> Result<Bmap> {
    let bmap = match clearsigned_message(text)? {
        None => parse(text)?,
        Some(msg) => {
            let parsed = parse_as(&msg, true).or_else(|e| match msg.strip_suffix('\n') {
                // The line break before the signature is not part of the
                // signed text (RFC 4880 §7.1); a map written without a final
                // newline was checksummed without it.
                Some(bare) if e.kind() == crate::error::ErrorKind::Integrity => {
                    parse_as(bare, true).map_err(|_| e)
                }
                _ => Err(e),
            });
            let mut b = parsed.map_err(|e| match e.message().contains(SIGNED_NOTE) {
                true => e,
                false => Error::new(e.kind(), format!("{}; {SIGNED_NOTE}", e.message())),
            })?;
            b.clearsigned = true;
            b
        }
    };
    if bmap.file_checksum_missing && !allow_unverified {
        return Err(Error::integrity(format!(
            "the block map (format {}) has no {}, which bmaptool writes into every map of this format: it \
             was edited or cut, and nothing shows its ranges belong to this image. Regenerate it with \
             `bmaptool create IMAGE > IMAGE.bmap`, or pass --bmap-unverified to use it as it is (unmapped \
             blocks are then skipped on the map's word alone; range checksums, where present, are still \
             checked)",
            bmap.version,
            if bmap.version.starts_with("1.") {
                "BmapFileSHA1 or BmapFileChecksum"
            } else {
                "BmapFileChecksum"
            }
        )));
    }
    Ok(bmap)
}

/// What the operator should read about a loaded map (shown with the plan).
pub fn notes(b: &Bmap) -> Vec<String> {
    let mut out = Vec::new();
    if b.clearsigned {
        out.push(
            "the block map is PGP-clearsigned; bty does not check the signature (run `gpg --verify` on it), \
             it checks the map's own checksum and every range's checksum"
                .to_string(),
        );
    }
    if b.file_checksum_missing {
        out.push(
            "the block map has no checksum of its own (--bmap-unverified): its ranges are used as they are"
                .to_string(),
        );
    }
    if b.checksum_type == Some(ChecksumType::Sha1) && b.ranges.iter().any(|r| r.checksum.is_some()) {
        out.push("the block map's ranges are checked with SHA-1 (bmap format before 1.4)".to_string());
    }
    out
}

/// The block map next to `image`, found the way `bmaptool copy` finds one:
/// `IMAGE.bmap`, then with one extension after another taken off
/// (`disk.img.xz` → `disk.img.bmap` → `disk.bmap`). At each step a
/// clearsigned `….bmap.asc` is taken too (what `gpg --clearsign` names its
/// output); an `.asc` that is a detached signature is not a map and is passed
/// over. Returns where it was found and its text.
pub fn find_sidecar(image: &Source) -> Result<Option<(Source, String)>> {
    let mut stem = Some(image.clone());
    while let Some(s) = stem {
        for suffix in [".bmap", ".bmap.asc"] {
            let cand = s.sibling(suffix);
            let Some(bytes) = cand.read_small(MAX_BMAP_BYTES)? else { continue };
            let text = String::from_utf8(bytes).map_err(|_| {
                Error::integrity(format!("{} is not a text file, so not a block map", cand.display()))
            })?;
            if suffix == ".bmap.asc" && clearsigned_message(&text)?.is_none() {
                continue;
            }
            return Ok(Some((cand, text)));
        }
        stem = s.without_extension();
    }
    Ok(None)
}

/// Block maps of multi-terabyte images are a few MiB; anything larger is not one.
pub const MAX_BMAP_BYTES: u64 = 64 << 20;

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::process::Command;

    const V2: &str = r#"<?xml version="1.0" ?>
<!-- a comment -->
<bmap version="2.0">
    <ImageSize> 10000 </ImageSize>
    <BlockSize> 4096 </BlockSize>
    <BlocksCount> 3 </BlocksCount>
    <MappedBlocksCount> 2 </MappedBlocksCount>
    <ChecksumType> sha256 </ChecksumType>
    <BmapFileChecksum> FILESUM </BmapFileChecksum>
    <BlockMap>
        <Range chksum="AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"> 0 </Range>
        <Range chksum="bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"> 2-2 </Range>
    </BlockMap>
</bmap>
"#;

    /// Fill in the file checksum the way bmaptool computes it.
    fn sign(template: &str) -> String {
        let zeroed = template.replace("FILESUM", &"0".repeat(64));
        template.replace("FILESUM", &hex::encode(sha2::Sha256::digest(zeroed.as_bytes())))
    }

    #[test]
    fn parses_v2_with_file_checksum() {
        let b = parse(&sign(V2)).unwrap();
        assert_eq!(b.version, "2.0");
        assert_eq!((b.image_size, b.block_size, b.blocks_count, b.mapped_blocks_count), (10000, 4096, 3, 2));
        assert_eq!(b.checksum_type, Some(ChecksumType::Sha256));
        assert!(b.file_checksum_verified);
        assert_eq!(b.ranges.len(), 2);
        assert_eq!(b.ranges[0].checksum.as_deref(), Some("a".repeat(64).as_str()));
        assert_eq!((b.ranges[1].first_block, b.ranges[1].last_block), (2, 2));
        // The last block is clipped to the image size.
        assert_eq!(b.ranges[1].byte_range(b.block_size, b.image_size), (8192, 10000 - 8192));
        assert_eq!(b.byte_ranges().collect::<Vec<_>>(), vec![(0, 4096), (8192, 1808)]);
        assert_eq!(b.mapped_bytes(), 4096 + 1808);
    }

    #[test]
    fn bad_file_checksum_is_an_integrity_error() {
        let signed = sign(V2);
        let tampered = signed.replace("<BlocksCount> 3 </BlocksCount>", "<BlocksCount>  3 </BlocksCount>");
        let err = parse(&tampered).unwrap_err();
        assert_eq!(err.kind(), crate::error::ErrorKind::Integrity);
        assert!(err.to_string().contains("BmapFileChecksum"), "{err}");
        let err = parse(&V2.replace("FILESUM", "xyz")).unwrap_err();
        assert!(err.to_string().contains("line 9"), "{err}");
    }

    #[test]
    fn parses_v1_4_without_checksums() {
        let xml = r#"<?xml version="1.0" ?>
<bmap version="1.4">
    <ImageSize> 8192 </ImageSize>
    <BlockSize> 4096 </BlockSize>
    <BlocksCount> 2 </BlocksCount>
    <MappedBlocksCount> 2 </MappedBlocksCount>
    <ChecksumType> sha256 </ChecksumType>
    <BlockMap>
        <Range> 0-1 </Range>
    </BlockMap>
</bmap>"#;
        let b = parse(xml).unwrap();
        assert_eq!(b.version, "1.4");
        assert!(!b.file_checksum_verified);
        assert_eq!(b.ranges, vec![BmapRange { first_block: 0, last_block: 1, checksum: None }]);
    }

    /// A 1.3 map as bmaptool 3.0–3.1 wrote them (Yocto, Tizen): SHA-1 per
    /// range under `sha1=`, and the file's own `BmapFileSHA1`.
    fn v1_3(data: &[u8]) -> String {
        let sum = ChecksumType::Sha1.hex_digest(&data[..4096]);
        let t = format!(
            "<?xml version=\"1.0\" ?>\n<bmap version=\"1.3\">\n    <ImageSize> 8192 </ImageSize>\n    \
             <BlockSize> 4096 </BlockSize>\n    <BlocksCount> 2 </BlocksCount>\n    <MappedBlocksCount> 1 \
             </MappedBlocksCount>\n    <BmapFileSHA1> {} </BmapFileSHA1>\n    <BlockMap>\n        \
             <Range sha1=\"{sum}\"> 0 </Range>\n    </BlockMap>\n</bmap>\n",
            "0".repeat(40)
        );
        t.replacen(&"0".repeat(40), &ChecksumType::Sha1.hex_digest(t.as_bytes()), 1)
    }

    #[test]
    fn sha1_maps_are_verified() {
        let data = [0x42u8; 8192];
        let b = load(&v1_3(&data), false).unwrap();
        assert_eq!(b.checksum_type, Some(ChecksumType::Sha1));
        assert!(b.file_checksum_verified && !b.file_checksum_missing);
        let want = hex::encode(<sha1::Sha1 as sha2::Digest>::digest(&data[..4096]));
        assert_eq!(b.ranges[0].checksum.as_deref(), Some(want.as_str()));
        let tampered = v1_3(&data).replace("<BlocksCount> 2", "<BlocksCount>  2");
        let e = load(&tampered, false).unwrap_err();
        assert_eq!(e.kind(), crate::error::ErrorKind::Integrity);
        assert!(e.to_string().contains("BmapFileSHA1"), "{e}");

        // 2.0 with ChecksumType sha1: 40-digit digests, the file hashed with SHA-1.
        let t = V2
            .replace("<ChecksumType> sha256", "<ChecksumType> sha1")
            .replace(&"A".repeat(64), &"a".repeat(40))
            .replace(&"b".repeat(64), &"b".repeat(40));
        let zeroed = t.replace("FILESUM", &"0".repeat(40));
        let v2 = t.replace("FILESUM", &ChecksumType::Sha1.hex_digest(zeroed.as_bytes()));
        let b = load(&v2, false).unwrap();
        assert!(b.file_checksum_verified);
        assert_eq!(b.ranges[1].checksum.as_deref(), Some("b".repeat(40).as_str()));
        let e = parse(&sign(V2).replace("<ChecksumType> sha256", "<ChecksumType> sha1")).unwrap_err();
        assert!(e.to_string().contains("not a SHA-1 digest"), "{e}");
        let one_range = "<bmap version=\"1.2\">\n<ImageSize>4096</ImageSize><BlockSize>4096</BlockSize>\
            <BlocksCount>1</BlocksCount><MappedBlocksCount>1</MappedBlocksCount><BlockMap>\
            <Range sha1=\"da39a3ee5e6b4b0d3255bfef95601890afd80709\"> 0 </Range></BlockMap></bmap>";
        let b = load(one_range, false).unwrap();
        assert!(!b.file_checksum_missing, "1.2 has no file checksum to miss");
        assert_eq!(b.checksum_type, Some(ChecksumType::Sha1));
    }

    #[test]
    fn refuses_other_digests() {
        let md5 = V2.replace("<ChecksumType> sha256", "<ChecksumType> md5");
        let e = parse(&md5).unwrap_err();
        assert!(e.to_string().contains("md5") && e.to_string().contains("bmaptool create"), "{e}");
        let odd = V2.replace("<ChecksumType> sha256", "<ChecksumType> crc7");
        let err = parse(&odd).unwrap_err();
        assert!(err.to_string().contains("line 8") && err.to_string().contains("crc7"), "{err}");
        assert_eq!(err.kind(), crate::error::ErrorKind::Integrity);
    }

    #[test]
    fn a_map_without_its_own_checksum_needs_the_flag() {
        let bare = V2.replace("    <BmapFileChecksum> FILESUM </BmapFileChecksum>\n", "");
        let e = load(&bare, false).unwrap_err();
        assert_eq!(e.kind(), crate::error::ErrorKind::Integrity);
        assert!(
            e.to_string().contains("--bmap-unverified") && e.to_string().contains("BmapFileChecksum"),
            "{e}"
        );
        let b = load(&bare, true).unwrap();
        assert!(b.file_checksum_missing);
        assert!(notes(&b).iter().any(|n| n.contains("no checksum of its own")));
        assert!(load(&sign(V2), false).unwrap().file_checksum_verified);
    }

    /// What `gpg --clearsign IMAGE.bmap` writes: armor headers, the text
    /// with lines that start with `-` escaped as `- -`, the signature.
    fn clearsign(text: &str) -> String {
        let mut out = "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n".to_string();
        for line in text.lines() {
            if line.starts_with('-') {
                out.push_str("- ");
            }
            out.push_str(line);
            out.push('\n');
        }
        out + "-----BEGIN PGP SIGNATURE-----\n\niQEzBAEBCAAdFiEE\n=abcd\n-----END PGP SIGNATURE-----\n"
    }

    #[test]
    fn clearsigned_maps_are_read_without_their_signature() {
        // A line that starts with a dash exercises the unescaping.
        let signed_text = sign(&V2.replace("<!-- a comment -->", "<!-- a comment -->\n--><!-- odd --> "));
        let plain = parse(&signed_text);
        let wrapped = clearsign(&signed_text);
        assert!(wrapped.contains("\n- --><!--"), "{wrapped}");
        let b = load(&wrapped, false).unwrap_or_else(|e| panic!("{e} (plain: {plain:?})"));
        assert!(b.clearsigned && b.file_checksum_verified);
        assert_eq!(b.ranges.len(), 2);
        assert!(notes(&b).iter().any(|n| n.contains("does not check the signature")));

        let broken = wrapped.replace("<BlockSize> 4096", "<BlockSize> 4096 ");
        let e = load(&broken, false).unwrap_err().to_string();
        assert!(e.contains("bty does not check the signature") && !e.contains("damaged"), "{e}");
        let cut = &wrapped[..wrapped.find("-----BEGIN PGP SIGNATURE").unwrap()];
        assert!(load(cut, false).unwrap_err().to_string().contains("no signature block"));
        assert_eq!(clearsigned_message(V2).unwrap(), None);
    }

    #[test]
    fn sidecars_are_found_as_bmaptool_finds_them() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.img.xz");
        std::fs::write(&img, b"x").unwrap();
        let src = Source::File(img.clone());
        assert!(find_sidecar(&src).unwrap().is_none());
        // A detached signature named like a clearsigned map is not a map.
        std::fs::write(dir.path().join("disk.img.bmap.asc"), "-----BEGIN PGP SIGNATURE-----\n").unwrap();
        assert!(find_sidecar(&src).unwrap().is_none());
        std::fs::write(dir.path().join("disk.bmap"), sign(V2)).unwrap();
        let (at, _) = find_sidecar(&src).unwrap().unwrap();
        assert_eq!(at, Source::File(dir.path().join("disk.bmap")));
        std::fs::write(dir.path().join("disk.img.bmap.asc"), clearsign(&sign(V2))).unwrap();
        let (at, text) = find_sidecar(&src).unwrap().unwrap();
        assert_eq!(at, Source::File(dir.path().join("disk.img.bmap.asc")));
        assert!(load(&text, false).unwrap().clearsigned);
        std::fs::write(dir.path().join("disk.img.xz.bmap"), sign(V2)).unwrap();
        assert_eq!(find_sidecar(&src).unwrap().unwrap().0, Source::File(dir.path().join("disk.img.xz.bmap")));
    }

    fn v2(ranges: &str, mapped: u64) -> String {
        format!(
            "<bmap version=\"2.0\">\n<ImageSize>40960</ImageSize>\n<BlockSize>4096</BlockSize>\n\
             <BlocksCount>10</BlocksCount>\n<MappedBlocksCount>{mapped}</MappedBlocksCount>\n\
             <BlockMap>\n{ranges}</BlockMap>\n</bmap>\n"
        )
    }

    #[test]
    fn validates_ranges_and_counts() {
        let ok = parse(&v2("<Range>0-3</Range>\n<Range>5</Range>\n<Range>7-9</Range>\n", 8)).unwrap();
        assert_eq!(ok.ranges.len(), 3);

        let cases = [
            (v2("<Range>0-3</Range>\n<Range>3-5</Range>\n", 7), "line 8", "overlaps"),
            (v2("<Range>5-6</Range>\n<Range>0-1</Range>\n", 4), "line 8", "sorted"),
            (v2("<Range>8-10</Range>\n", 3), "line 7", "beyond"),
            (v2("<Range>4-2</Range>\n", 3), "line 7", "backwards"),
            (v2("<Range>x</Range>\n", 1), "line 7", "not N or FIRST-LAST"),
            (v2("<Range>0-3</Range>\n", 5), "line 5", "MappedBlocksCount"),
            (v2("<Range chksum=\"abc\">0</Range>\n", 1), "line 1", "no <ChecksumType>"),
            (
                v2("<Range chksum=\"abc\">0</Range>\n", 1)
                    .replace("<BlockMap>", "<ChecksumType>sha256</ChecksumType><BlockMap>"),
                "line 7",
                "not a SHA-256",
            ),
            (v2("", 0).replace("<BlocksCount>10", "<BlocksCount>11"), "line 4", "BlocksCount"),
            (v2("", 0).replace("<ImageSize>40960</ImageSize>\n", ""), "", "<ImageSize> field is missing"),
            (v2("", 0).replace("2.0", "3.0"), "", "version 3.0 is not supported"),
            (v2("", 0).replace("<BlockSize>4096", "<BlockSize>4k"), "line 3", "not a number"),
        ];
        for (xml, line, what) in cases {
            let err = parse(&xml).unwrap_err().to_string();
            assert!(err.contains(line) && err.contains(what), "want {line} / {what}, got: {err}\n{xml}");
        }
    }

    #[test]
    fn malformed_xml() {
        let err = parse("<bmap version=\"2.0\">\n<ImageSize>1</BlockSize>\n</bmap>").unwrap_err().to_string();
        assert!(err.contains("malformed XML") && err.contains("line 2"), "{err}");
        assert!(parse("<html></html>").unwrap_err().to_string().contains("expected <bmap>"));
        assert!(parse("just text").unwrap_err().to_string().contains("no <bmap>"));
        assert!(parse("").is_err());
    }

    /// A bmap written by bmaptool itself, for a sparse file.
    #[test]
    fn parses_bmaptool_output() {
        let ok = Command::new("bmaptool").arg("--version").output().is_ok_and(|o| o.status.success());
        if !ok {
            println!("skipping: bmaptool is not installed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("sparse.img");
        let f = std::fs::File::create(&img).unwrap();
        f.set_len(3 << 20).unwrap();
        let mut f = std::io::BufWriter::new(f);
        use std::io::{Seek, SeekFrom};
        f.seek(SeekFrom::Start(40960)).unwrap();
        f.write_all(&[0x5A; 20000]).unwrap();
        f.seek(SeekFrom::Start(2 << 20)).unwrap();
        f.write_all(&[0xA5; 4096]).unwrap();
        drop(f);
        let out = Command::new("bmaptool").arg("create").arg(&img).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let b = parse(&String::from_utf8(out.stdout).unwrap()).unwrap();
        assert_eq!(b.image_size, 3 << 20);
        assert!(b.file_checksum_verified);
        assert_eq!(b.checksum_type, Some(ChecksumType::Sha256));
        let data = std::fs::read(&img).unwrap();
        for (r, (off, len)) in b.ranges.iter().zip(b.byte_ranges()) {
            let want = hex::encode(sha2::Sha256::digest(&data[off as usize..(off + len) as usize]));
            assert_eq!(r.checksum.as_deref(), Some(want.as_str()));
        }
        // Every non-zero byte is mapped.
        let mapped: Vec<(u64, u64)> = b.byte_ranges().collect();
        for (i, &byte) in data.iter().enumerate() {
            if byte != 0 {
                assert!(
                    mapped.iter().any(|&(o, l)| (i as u64) >= o && (i as u64) < o + l),
                    "byte {i} unmapped"
                );
            }
        }
    }

    /// An image within one block of 2^64 bytes: the end of its last block
    /// does not fit in u64 and is clipped to the image size, not overflowed
    /// (fuzz/regressions/bmap/huge-image-size).
    #[test]
    fn ranges_of_an_image_near_2_pow_64_are_clipped() {
        let xml = "<bmap version=\"2.0\"><ImageSize>18446744073709551615</ImageSize>\
                   <BlockSize>9223372036854775808</BlockSize><BlocksCount>2</BlocksCount>\
                   <MappedBlocksCount>2</MappedBlocksCount><BlockMap><Range>0-1</Range></BlockMap></bmap>";
        let b = load(xml, true).unwrap();
        assert_eq!(b.byte_ranges().collect::<Vec<_>>(), vec![(0, u64::MAX)]);
        assert_eq!(b.mapped_bytes(), u64::MAX);
    }

    /// Line numbers are counted as the parser goes, not from the start for
    /// every element: a map with 200,000 ranges (about 6 MiB, what a
    /// fragmented multi-terabyte image gets) parses in well under a second
    /// instead of minutes.
    #[test]
    fn large_maps_parse_in_linear_time() {
        let n = 200_000u64;
        let mut xml = format!(
            "<bmap version=\"2.0\">\n<ImageSize>{}</ImageSize>\n<BlockSize>4096</BlockSize>\n\
             <BlocksCount>{}</BlocksCount>\n<MappedBlocksCount>{n}</MappedBlocksCount>\n<BlockMap>\n",
            2 * n * 4096,
            2 * n
        );
        for i in 0..n {
            xml.push_str(&format!("    <Range> {} </Range>\n", 2 * i));
        }
        xml.push_str("</BlockMap>\n</bmap>\n");
        let started = std::time::Instant::now();
        let b = load(&xml, true).unwrap();
        assert_eq!(b.ranges.len() as u64, n);
        assert!(started.elapsed() < std::time::Duration::from_secs(20), "took {:?}", started.elapsed());
        // Errors still name the right line.
        let bad = xml.replace(&format!("<Range> {} </Range>", 2 * (n - 1)), "<Range> x </Range>");
        let e = parse(&bad).unwrap_err();
        assert!(e.to_string().contains(&format!("line {}", n + 6)), "{e}");
    }
}
