//! Android sparse images (`img2simg`, magic 0xED26FF3A), read as a stream.
//!
//! A 28-byte file header, then chunks, each a 12-byte header and its data:
//! raw (blocks copied), fill (a 4-byte pattern repeated), don't care (no
//! data) and CRC32 (the CRC-32 of everything decoded so far). Don't-care
//! blocks are produced as zeros, as `simg2img` leaves them: the writer turns
//! zero runs into holes in file targets and zeroes them on disks, exactly as
//! it does for unallocated qcow2 clusters. Every count and size in the
//! headers is checked against the data, so a truncated or inconsistent
//! image is an integrity error, never a short disk.

use std::io::{self, Read};

use crate::error::{Error, Result};

pub const MAGIC: u32 = 0xED26_FF3A;
const FILE_HEADER: usize = 28;
const CHUNK_HEADER: usize = 12;
const RAW: u16 = 0xCAC1;
const FILL: u16 = 0xCAC2;
const DONT_CARE: u16 = 0xCAC3;
const CRC32: u16 = 0xCAC4;

/// The sparse file header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub block_size: u32,
    pub total_blocks: u32,
    pub total_chunks: u32,
    /// CRC-32 of the whole decoded image; 0 when the writer did not set it.
    pub image_checksum: u32,
    header_len: usize,
    chunk_header_len: usize,
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
}
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

impl Header {
    /// Parse and check the file header (`head` holds at least its 28 bytes).
    pub fn parse(head: &[u8]) -> Result<Header> {
        let bad =
            |what: String| Error::integrity(format!("the Android sparse image header is invalid: {what}"));
        if head.len() < FILE_HEADER {
            return Err(bad("the file is shorter than the 28-byte header".into()));
        }
        if le32(head, 0) != MAGIC {
            return Err(bad("no sparse image magic".into()));
        }
        let (major, minor) = (le16(head, 4), le16(head, 6));
        if major != 1 {
            return Err(Error::usage(format!(
                "this Android sparse image is version {major}.{minor}; bty reads version 1: \
                 convert it with `simg2img IMAGE disk.img` and flash disk.img"
            )));
        }
        let header_len = usize::from(le16(head, 8));
        let chunk_header_len = usize::from(le16(head, 10));
        let block_size = le32(head, 12);
        if header_len < FILE_HEADER || chunk_header_len < CHUNK_HEADER {
            return Err(bad(format!("header sizes {header_len}/{chunk_header_len} are too small")));
        }
        if block_size == 0 || block_size % 4 != 0 {
            return Err(bad(format!("block size {block_size} is not a positive multiple of 4")));
        }
        Ok(Header {
            block_size,
            total_blocks: le32(head, 16),
            total_chunks: le32(head, 20),
            image_checksum: le32(head, 24),
            header_len,
            chunk_header_len,
        })
    }

    /// Size of the decoded image.
    pub fn virtual_size(&self) -> u64 {
        u64::from(self.block_size) * u64::from(self.total_blocks)
    }
}

/// One parsed chunk header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chunk {
    Raw { blocks: u32 },
    Fill { blocks: u32 },
    DontCare { blocks: u32 },
    Crc32,
}

/// Parse a chunk header (its first 12 bytes) and check its sizes agree.
pub(crate) fn parse_chunk(h: &Header, b: &[u8], index: u32) -> Result<Chunk> {
    let kind = le16(b, 0);
    let blocks = le32(b, 4);
    let total = u64::from(le32(b, 8));
    let hdr = h.chunk_header_len as u64;
    let data = u64::from(blocks) * u64::from(h.block_size);
    let (chunk, want) = match kind {
        RAW => (Chunk::Raw { blocks }, hdr + data),
        FILL => (Chunk::Fill { blocks }, hdr + 4),
        DONT_CARE => (Chunk::DontCare { blocks }, hdr),
        CRC32 => (Chunk::Crc32, hdr + 4),
        other => {
            return Err(Error::integrity(format!(
            "chunk {index} of the Android sparse image has unknown type {other:#06x}; the image is damaged"
        )))
        }
    };
    if total != want {
        return Err(Error::integrity(format!(
            "chunk {index} of the Android sparse image says it is {total} bytes long, its type and \
             block count make it {want}; the image is damaged"
        )));
    }
    Ok(chunk)
}

enum Out {
    /// Copy this many bytes from the input.
    Raw(u64),
    /// Repeat the pattern (phase: bytes of this chunk already produced).
    Fill {
        pattern: [u8; 4],
        left: u64,
        phase: u64,
    },
    Zeros(u64),
    None,
}

/// Decodes a sparse image stream into the disk image it describes.
pub struct Reader<R: Read> {
    r: R,
    header: Option<Header>,
    chunks: u32,
    blocks: u64,
    out: Out,
    crc: crc32fast::Hasher,
    done: bool,
    read_in: u64,
}

impl<R: Read> Reader<R> {
    pub fn new(r: R) -> Self {
        Reader {
            r,
            header: None,
            chunks: 0,
            blocks: 0,
            out: Out::None,
            crc: crc32fast::Hasher::new(),
            done: false,
            read_in: 0,
        }
    }

    fn exact(&mut self, buf: &mut [u8], what: &str) -> io::Result<()> {
        let mut got = 0;
        while got < buf.len() {
            match self.r.read(&mut buf[got..]) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                        "the Android sparse image ends inside {what} (after {} bytes): the file is truncated",
                        self.read_in + got as u64
                    ),
                    ))
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.read_in += got as u64;
        Ok(())
    }

    /// Read chunk headers until one produces output; `false` at the end.
    fn next_chunk(&mut self) -> io::Result<bool> {
        if self.header.is_none() {
            let mut b = [0u8; FILE_HEADER];
            self.exact(&mut b, "the file header")?;
            let h = Header::parse(&b).map_err(Error::into_io)?;
            let mut extra = vec![0u8; h.header_len - FILE_HEADER];
            self.exact(&mut extra, "the file header")?;
            self.header = Some(h);
        }
        let h = self.header.expect("parsed above");
        loop {
            if self.chunks == h.total_chunks {
                return self.finish(&h).map(|()| false);
            }
            let mut b = vec![0u8; h.chunk_header_len];
            self.exact(&mut b, &format!("the header of chunk {}", self.chunks))?;
            let chunk = parse_chunk(&h, &b, self.chunks).map_err(Error::into_io)?;
            self.chunks += 1;
            let bytes = |blocks: u32| u64::from(blocks) * u64::from(h.block_size);
            let blocks = match chunk {
                Chunk::Raw { blocks } => {
                    self.out = Out::Raw(bytes(blocks));
                    blocks
                }
                Chunk::Fill { blocks } => {
                    let mut pattern = [0u8; 4];
                    self.exact(&mut pattern, "a fill chunk")?;
                    self.out = Out::Fill { pattern, left: bytes(blocks), phase: 0 };
                    blocks
                }
                Chunk::DontCare { blocks } => {
                    self.out = Out::Zeros(bytes(blocks));
                    blocks
                }
                Chunk::Crc32 => {
                    let mut want = [0u8; 4];
                    self.exact(&mut want, "a CRC32 chunk")?;
                    let want = u32::from_le_bytes(want);
                    let got = self.crc.clone().finalize();
                    if got != want {
                        return Err(Error::integrity(format!(
                            "the Android sparse image fails its CRC32 chunk {} (CRC-32 {got:08x} of the first \
                             {} blocks, the image says {want:08x}); the image is damaged",
                            self.chunks - 1,
                            self.blocks
                        ))
                        .into_io());
                    }
                    0
                }
            };
            self.blocks += u64::from(blocks);
            if self.blocks > u64::from(h.total_blocks) {
                return Err(Error::integrity(format!(
                    "the Android sparse image's chunks describe more than the {} blocks its header declares; \
                     the image is damaged",
                    h.total_blocks
                ))
                .into_io());
            }
            if blocks > 0 {
                return Ok(true);
            }
        }
    }

    fn finish(&mut self, h: &Header) -> io::Result<()> {
        self.done = true;
        if self.blocks != u64::from(h.total_blocks) {
            return Err(Error::integrity(format!(
                "the Android sparse image's {} chunks describe {} blocks, its header declares {}; the image is damaged",
                h.total_chunks, self.blocks, h.total_blocks
            ))
            .into_io());
        }
        if h.image_checksum != 0 && self.crc.clone().finalize() != h.image_checksum {
            return Err(Error::integrity(
                "the Android sparse image does not match the CRC-32 in its header; the image is damaged",
            )
            .into_io());
        }
        let mut extra = [0u8; 1];
        if self.r.read(&mut extra)? > 0 {
            return Err(Error::integrity(format!(
                "data follows the last of the {} chunks the Android sparse image declares; the image is damaged",
                h.total_chunks
            ))
            .into_io());
        }
        Ok(())
    }
}

impl<R: Read> Read for Reader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let n = match &mut self.out {
                Out::None => {
                    if self.done || !self.next_chunk()? {
                        return Ok(0);
                    }
                    continue;
                }
                Out::Raw(left) => {
                    let want = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                    let n = match self.r.read(&mut buf[..want]) {
                        Ok(0) => {
                            return Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                format!(
                                    "the Android sparse image ends inside raw chunk {} (after {} bytes): \
                                     the file is truncated",
                                    self.chunks - 1,
                                    self.read_in
                                ),
                            ))
                        }
                        Ok(n) => n,
                        Err(e) => return Err(e),
                    };
                    self.read_in += n as u64;
                    *left -= n as u64;
                    if *left == 0 {
                        self.out = Out::None;
                    }
                    n
                }
                Out::Fill { pattern, left, phase } => {
                    let n = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                    for (i, b) in buf[..n].iter_mut().enumerate() {
                        *b = pattern[((*phase + i as u64) % 4) as usize];
                    }
                    *left -= n as u64;
                    *phase += n as u64;
                    if *left == 0 {
                        self.out = Out::None;
                    }
                    n
                }
                Out::Zeros(left) => {
                    let n = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                    buf[..n].fill(0);
                    *left -= n as u64;
                    if *left == 0 {
                        self.out = Out::None;
                    }
                    n
                }
            };
            self.crc.update(&buf[..n]);
            return Ok(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BS: u32 = 4096;

    fn header(blocks: u32, chunks: u32) -> Vec<u8> {
        let mut v = MAGIC.to_le_bytes().to_vec();
        v.extend(1u16.to_le_bytes());
        v.extend(0u16.to_le_bytes());
        v.extend(28u16.to_le_bytes());
        v.extend(12u16.to_le_bytes());
        v.extend(BS.to_le_bytes());
        v.extend(blocks.to_le_bytes());
        v.extend(chunks.to_le_bytes());
        v.extend(0u32.to_le_bytes());
        v
    }

    fn chunk(kind: u16, blocks: u32, data: &[u8]) -> Vec<u8> {
        let mut v = kind.to_le_bytes().to_vec();
        v.extend([0, 0]);
        v.extend(blocks.to_le_bytes());
        v.extend((12 + data.len() as u32).to_le_bytes());
        v.extend(data);
        v
    }

    /// raw(2) fill(3) dont-care(4) crc raw(1): 10 blocks.
    fn image() -> (Vec<u8>, Vec<u8>) {
        let raw: Vec<u8> = (0..2 * BS as usize).map(|i| (i % 253) as u8).collect();
        let mut want = raw.clone();
        want.extend([0xDE, 0xAD, 0xBE, 0xEF].repeat(3 * BS as usize / 4));
        want.extend(vec![0u8; 4 * BS as usize]);
        let crc = crc32fast::hash(&want);
        let tail: Vec<u8> = vec![7u8; BS as usize];
        want.extend(&tail);
        let mut v = header(10, 5);
        v.extend(chunk(RAW, 2, &raw));
        v.extend(chunk(FILL, 3, &[0xDE, 0xAD, 0xBE, 0xEF]));
        v.extend(chunk(DONT_CARE, 4, &[]));
        v.extend(chunk(CRC32, 0, &crc.to_le_bytes()));
        v.extend(chunk(RAW, 1, &tail));
        (v, want)
    }

    fn decode(v: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        Reader::new(v).read_to_end(&mut out)?;
        Ok(out)
    }

    fn kind(e: io::Error) -> crate::ErrorKind {
        match Error::from_io(e) {
            Ok(e) => e.kind(),
            Err(e) => {
                assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
                crate::ErrorKind::Integrity
            }
        }
    }

    #[test]
    fn every_chunk_type() {
        let (v, want) = image();
        assert_eq!(Header::parse(&v).unwrap().virtual_size(), 10 * u64::from(BS));
        assert_eq!(decode(&v).unwrap(), want);
    }

    #[test]
    fn truncation_at_any_point_fails() {
        let (v, _) = image();
        for cut in [0, 10, 28, 30, 40, 28 + 12 + 100, v.len() - BS as usize - 12, v.len() - 1] {
            let e = decode(&v[..cut]).unwrap_err();
            assert_eq!(kind(e), crate::ErrorKind::Integrity, "cut at {cut}");
        }
    }

    #[test]
    fn inconsistent_headers_fail() {
        let (v, _) = image();
        let mut more_blocks = v.clone();
        more_blocks[16] = 11;
        assert!(decode(&more_blocks).unwrap_err().to_string().contains("declares 11"));
        let mut fewer_blocks = v.clone();
        fewer_blocks[16] = 9;
        assert!(decode(&fewer_blocks).unwrap_err().to_string().contains("more than the 9 blocks"));
        let mut fewer_chunks = v.clone();
        fewer_chunks[20] = 4;
        assert!(decode(&fewer_chunks).is_err());
        let mut bad_total = v.clone();
        bad_total[28 + 8] ^= 1;
        assert!(decode(&bad_total).unwrap_err().to_string().contains("bytes long"));
        let mut bad_type = v.clone();
        bad_type[28] = 0x55;
        assert!(decode(&bad_type).unwrap_err().to_string().contains("unknown type"));
        let mut trailing = v.clone();
        trailing.push(0);
        assert!(decode(&trailing).unwrap_err().to_string().contains("data follows"));
        let mut bs = v.clone();
        bs[12] = 3;
        assert_eq!(Header::parse(&bs).unwrap_err().kind(), crate::ErrorKind::Integrity);
        let mut version = v.clone();
        version[4] = 2;
        assert_eq!(Header::parse(&version).unwrap_err().kind(), crate::ErrorKind::Usage);
    }

    #[test]
    fn checksums_are_verified() {
        let (v, want) = image();
        // Flip a raw byte before the CRC32 chunk: the chunk catches it.
        let mut flipped = v.clone();
        flipped[28 + 12 + 5] ^= 1;
        assert!(decode(&flipped).unwrap_err().to_string().contains("CRC32 chunk"));
        // The header's whole-image CRC, when set.
        let mut with_crc = v.clone();
        with_crc[24..28].copy_from_slice(&crc32fast::hash(&want).to_le_bytes());
        assert_eq!(decode(&with_crc).unwrap(), want);
        with_crc[v.len() - 1] ^= 1;
        assert!(decode(&with_crc).unwrap_err().to_string().contains("header"));
    }
}
