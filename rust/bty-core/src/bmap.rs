//! Block maps in bmaptool's XML format (`.bmap` files, format versions 1.x
//! and 2.x): which blocks of an image hold data, so a flash can skip the rest,
//! with an optional SHA-256 per mapped range.
//!
//! Only SHA-256 checksums are accepted. Old bmaps carry SHA-1 (or MD5)
//! digests; rather than silently flashing without the integrity check they
//! promise, they are refused with a pointer to regenerate them.

use quick_xml::events::Event;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

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
}

/// An inclusive range of mapped blocks.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BmapRange {
    pub first_block: u64,
    pub last_block: u64,
    /// Lowercase hex SHA-256 of the range's bytes (clipped to the image size).
    pub sha256: Option<String>,
}

impl BmapRange {
    /// `(offset, length)` in bytes; the last block of an image whose size is
    /// not a multiple of the block size is clipped to the image's end.
    pub fn byte_range(&self, block_size: u64, image_size: u64) -> (u64, u64) {
        let start = self.first_block * block_size;
        let end = ((self.last_block + 1) * block_size).min(image_size);
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
    /// The file carried a `BmapFileChecksum` and it matched.
    pub file_checksum_verified: bool,
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

fn bad(line: usize, what: impl std::fmt::Display) -> Error {
    Error::usage(format!("invalid block map (line {line}): {what}"))
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
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut stack: Vec<String> = Vec::new();
    let mut version: Option<String> = None;
    // Scalar fields directly under <bmap>: name, text, line.
    let mut fields: Vec<(String, String, usize)> = Vec::new();
    let mut ranges: Vec<RawRange> = Vec::new();
    let mut saw_root = false;
    let mut saw_block_map = false;

    loop {
        let pos = reader.buffer_position() as usize;
        let ev = reader.read_event().map_err(|e| {
            bad(line_of(xml, reader.error_position() as usize), format!("malformed XML: {e}"))
        })?;
        let line = line_of(xml, pos + 1);
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
        return Err(Error::usage(format!(
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

    // Versions before 1.4 name the digest by its tags; later ones declare it.
    let (checksum_type, file_checksum) = if major == 1 && minor < 4 {
        let sha1 = field("BmapFileSHA1");
        let any_range = ranges.iter().any(|r| r.checksum.is_some());
        ((sha1.is_some() || any_range).then_some(ChecksumType::Sha1), sha1)
    } else {
        let ty = match field("ChecksumType") {
            Some((_, text, line)) => Some(ChecksumType::parse(text.trim()).ok_or_else(|| {
                bad(*line, format!("<ChecksumType> \"{}\" is unknown (expected sha256)", text.trim()))
            })?),
            None => None,
        };
        (ty, field("BmapFileChecksum"))
    };
    let has_checksums = file_checksum.is_some() || ranges.iter().any(|r| r.checksum.is_some());
    if has_checksums {
        match checksum_type {
            Some(ChecksumType::Sha256) => {}
            Some(other) => {
                return Err(Error::usage(format!(
                    "the block map uses {} checksums; bty verifies SHA-256 only: regenerate it with \
                     `bmaptool create IMAGE > IMAGE.bmap` (bmaptool 3.x writes SHA-256)",
                    other.as_str()
                )))
            }
            None => return Err(bad(1, "the block map has checksums but no <ChecksumType>")),
        }
    }

    let mut file_checksum_verified = false;
    if let Some((_, text, line)) = file_checksum {
        let want = text.trim();
        if want.len() != 64 || !want.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad(*line, format!("<BmapFileChecksum> \"{want}\" is not a SHA-256 digest")));
        }
        // bmaptool hashes the file with the digest's own text replaced by zeros.
        let zeroed = xml.replace(want, &"0".repeat(want.len()));
        let got = hex::encode(Sha256::digest(zeroed.as_bytes()));
        if !got.eq_ignore_ascii_case(want) {
            return Err(Error::integrity(format!(
                "the block map's own checksum does not match (BmapFileChecksum {want}, computed {got}): the .bmap \
                 file was modified or damaged; download it again or regenerate it with `bmaptool create`"
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
        let sha256 = match r.checksum {
            Some(c) if c.len() == 64 && c.bytes().all(|b| b.is_ascii_hexdigit()) => {
                Some(c.to_ascii_lowercase())
            }
            Some(c) => return Err(bad(r.line, format!("<Range> checksum \"{c}\" is not a SHA-256 digest"))),
            None => None,
        };
        out.push(BmapRange { first_block: first, last_block: last, sha256 });
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
        ranges: out,
    })
}

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
        template.replace("FILESUM", &hex::encode(Sha256::digest(zeroed.as_bytes())))
    }

    #[test]
    fn parses_v2_with_file_checksum() {
        let b = parse(&sign(V2)).unwrap();
        assert_eq!(b.version, "2.0");
        assert_eq!((b.image_size, b.block_size, b.blocks_count, b.mapped_blocks_count), (10000, 4096, 3, 2));
        assert_eq!(b.checksum_type, Some(ChecksumType::Sha256));
        assert!(b.file_checksum_verified);
        assert_eq!(b.ranges.len(), 2);
        assert_eq!(b.ranges[0].sha256.as_deref(), Some("a".repeat(64).as_str()));
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
        assert_eq!(b.ranges, vec![BmapRange { first_block: 0, last_block: 1, sha256: None }]);
    }

    #[test]
    fn refuses_other_digests() {
        let sha1 = r#"<bmap version="1.3">
    <ImageSize> 4096 </ImageSize>
    <BlockSize> 4096 </BlockSize>
    <BlocksCount> 1 </BlocksCount>
    <MappedBlocksCount> 1 </MappedBlocksCount>
    <BlockMap> <Range sha1="da39a3ee5e6b4b0d3255bfef95601890afd80709"> 0 </Range> </BlockMap>
</bmap>"#;
        let err = parse(sha1).unwrap_err();
        assert!(err.to_string().contains("sha1") && err.to_string().contains("bmaptool create"), "{err}");

        let md5 = V2.replace("<ChecksumType> sha256", "<ChecksumType> md5");
        assert!(parse(&md5).unwrap_err().to_string().contains("md5"));
        let odd = V2.replace("<ChecksumType> sha256", "<ChecksumType> crc7");
        let err = parse(&odd).unwrap_err();
        assert!(err.to_string().contains("line 8") && err.to_string().contains("crc7"), "{err}");
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
            let want = hex::encode(Sha256::digest(&data[off as usize..(off + len) as usize]));
            assert_eq!(r.sha256.as_deref(), Some(want.as_str()));
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
}
