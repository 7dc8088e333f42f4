//! lz4 streams: the frame format (`lz4`, magic 04 22 4D 18) with its
//! block and content checksums, concatenated and skippable frames, and the
//! legacy format (`lz4 -l`, magic 02 21 4C 18).
//!
//! The frame layer is ours; blocks are decoded by `lz4_flex` (pure Rust,
//! bounds-checked `safe-decode` + `checked-decode`, maintained, no C
//! toolchain). Its own `FrameDecoder` is not used: it treats the end of the
//! input at a block boundary as the end of the data, so a file cut there
//! would flash "successfully", and it rejects skippable frames.

use std::io::{self, BufRead, Read};

use xxhash_rust::xxh32::{xxh32, Xxh32};

use crate::source::Source;

pub(crate) const LZ4_FRAME_MAGIC: u32 = 0x184D_2204;
pub(crate) const LZ4_LEGACY_MAGIC: u32 = 0x184C_2102;

/// Skippable frames (0x184D2A50..=0x184D2A5F): the lz4 frame format defines
/// them and zstd shares the range, so format detection asks here for both.
pub(crate) fn is_skippable(magic: u32) -> bool {
    magic & 0xFFFF_FFF0 == 0x184D_2A50
}

/// Legacy blocks decode to at most 8 MiB each.
const LEGACY_BLOCK: usize = 8 << 20;
/// LZ4_compressBound(8 MiB): a legacy block size above it is the next
/// frame's magic number (the only way a legacy frame ends before EOF).
const LEGACY_BOUND: u32 = (LEGACY_BLOCK + LEGACY_BLOCK / 255 + 16) as u32;
/// Linked blocks may refer back this far into earlier blocks.
const WINDOW: usize = 64 << 10;

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// A parsed frame descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FrameHeader {
    pub independent: bool,
    pub block_checksums: bool,
    pub content_size: Option<u64>,
    pub content_checksum: bool,
    pub block_max: usize,
    /// Bytes after the magic number.
    pub len: usize,
}

/// Parse the descriptor that follows the frame magic (`d` starts at FLG).
/// `Ok(None)`: `d` is too short to tell.
pub(crate) fn parse_frame_header(d: &[u8]) -> io::Result<Option<FrameHeader>> {
    if d.len() < 2 {
        return Ok(None);
    }
    let (flg, bd) = (d[0], d[1]);
    if flg >> 6 != 0b01 {
        return Err(bad(format!("lz4 frame version {} is not 1", flg >> 6)));
    }
    if flg & 0b10 != 0 || bd & 0x8F != 0 {
        return Err(bad("lz4 frame descriptor has reserved bits set"));
    }
    let block_max = match (bd >> 4) & 7 {
        4 => 64 << 10,
        5 => 256 << 10,
        6 => 1 << 20,
        7 => 4 << 20,
        n => return Err(bad(format!("lz4 frame block size code {n} is invalid"))),
    };
    let has_size = flg & 0x08 != 0;
    let has_dict = flg & 0x01 != 0;
    let len = 2 + if has_size { 8 } else { 0 } + if has_dict { 4 } else { 0 } + 1;
    if d.len() < len {
        return Ok(None);
    }
    let hc = (xxh32(&d[..len - 1], 0) >> 8) as u8;
    if hc != d[len - 1] {
        return Err(bad("lz4 frame descriptor fails its header checksum"));
    }
    if has_dict {
        return Err(crate::Error::usage(
            "this lz4 frame needs a dictionary (dictionary ID set), which bty does not have: \
             decompress it with `lz4 -d -D DICT` and flash the result",
        )
        .into_io());
    }
    Ok(Some(FrameHeader {
        independent: flg & 0x20 != 0,
        block_checksums: flg & 0x10 != 0,
        content_size: has_size.then(|| u64::from_le_bytes(d[2..10].try_into().unwrap())),
        content_checksum: flg & 0x04 != 0,
        block_max,
        len,
    }))
}

enum State {
    /// Between frames: the next thing is a magic number or the end.
    Boundary,
    Frame {
        h: FrameHeader,
        hasher: Option<Xxh32>,
        produced: u64,
    },
    Legacy,
    Done,
}

/// Streaming decoder over the whole lz4 file.
pub struct Decoder<R: BufRead> {
    r: R,
    state: State,
    frames: u64,
    /// Compressed input of the current block.
    src: Vec<u8>,
    /// Decoded bytes not yet handed out: `out[pos..]`.
    out: Vec<u8>,
    pos: usize,
    /// The last [`WINDOW`] bytes of output, for linked blocks.
    dict: Vec<u8>,
    read_in: u64,
}

impl<R: BufRead> Decoder<R> {
    pub fn new(r: R) -> Self {
        Decoder {
            r,
            state: State::Boundary,
            frames: 0,
            src: Vec::new(),
            out: Vec::new(),
            pos: 0,
            dict: Vec::new(),
            read_in: 0,
        }
    }

    /// Fill `buf` completely; `Ok(false)` when the input ended first
    /// (with `buf` partly filled: the caller decides whether that is damage).
    fn fill(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut got = 0;
        while got < buf.len() {
            match self.r.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.read_in += got as u64;
        Ok(got)
    }

    fn exact(&mut self, buf: &mut [u8], what: &str) -> io::Result<()> {
        let n = self.fill(buf)?;
        if n < buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "the lz4 data ends inside {what} (after {} compressed bytes): the file is truncated",
                    self.read_in
                ),
            ));
        }
        Ok(())
    }

    fn u32(&mut self, what: &str) -> io::Result<u32> {
        let mut b = [0u8; 4];
        self.exact(&mut b, what)?;
        Ok(u32::from_le_bytes(b))
    }

    /// Handle a magic number read at a frame boundary.
    fn start(&mut self, magic: u32) -> io::Result<()> {
        if magic == LZ4_FRAME_MAGIC {
            let mut d = [0u8; 15];
            self.exact(&mut d[..3], "a frame header")?;
            let need = match parse_frame_header(&d[..3])? {
                Some(h) => h.len,
                None => 2 + if d[0] & 0x08 != 0 { 8 } else { 0 } + if d[0] & 1 != 0 { 4 } else { 0 } + 1,
            };
            if need > 3 {
                let (_, rest) = d.split_at_mut(3);
                self.exact(&mut rest[..need - 3], "a frame header")?;
            }
            let h = parse_frame_header(&d[..need])?.expect("whole descriptor read");
            self.dict.clear();
            let hasher = h.content_checksum.then(|| Xxh32::new(0));
            self.state = State::Frame { h, hasher, produced: 0 };
        } else if magic == LZ4_LEGACY_MAGIC {
            self.state = State::Legacy;
        } else if is_skippable(magic) {
            let len = self.u32("a skippable frame")?;
            let skipped = io::copy(&mut (&mut self.r).take(u64::from(len)), &mut io::sink())?;
            self.read_in += skipped;
            if skipped < u64::from(len) {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the lz4 data ends inside a skippable frame: the file is truncated",
                ));
            }
        } else if self.frames == 0 {
            return Err(bad("not an lz4 stream: no lz4 magic number at the start"));
        } else {
            return Err(bad(format!(
                "bytes after lz4 frame {} (at compressed byte {}) are not an lz4 frame; the file is damaged",
                self.frames,
                self.read_in - 4
            )));
        }
        Ok(())
    }

    /// Decode the next block into `out`; `Ok(false)` at the end of the data.
    fn next_block(&mut self) -> io::Result<bool> {
        loop {
            match &mut self.state {
                State::Done => return Ok(false),
                State::Boundary => {
                    let mut b = [0u8; 4];
                    match self.fill(&mut b)? {
                        0 if self.frames > 0 => {
                            self.state = State::Done;
                            return Ok(false);
                        }
                        0 => return Err(bad("the lz4 file is empty")),
                        4 => self.start(u32::from_le_bytes(b))?,
                        _ => {
                            return Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "the lz4 data ends inside a frame magic number: the file is truncated",
                            ))
                        }
                    }
                }
                State::Legacy => {
                    let mut b = [0u8; 4];
                    let size = match self.fill(&mut b)? {
                        0 => {
                            self.frames += 1;
                            self.state = State::Done;
                            return Ok(false);
                        }
                        4 => u32::from_le_bytes(b),
                        _ => {
                            return Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "the legacy lz4 data ends inside a block size: the file is truncated",
                            ))
                        }
                    };
                    if size > LEGACY_BOUND {
                        self.frames += 1;
                        self.start(size)?;
                        continue;
                    }
                    let mut src = std::mem::take(&mut self.src);
                    src.resize(size as usize, 0);
                    self.exact(&mut src, "a legacy block")?;
                    self.out.resize(LEGACY_BLOCK, 0);
                    let n = lz4_flex::block::decompress_into(&src, &mut self.out)
                        .map_err(|e| bad(format!("legacy lz4 block is corrupt: {e}")))?;
                    self.src = src;
                    self.out.truncate(n);
                    self.pos = 0;
                    return Ok(true);
                }
                State::Frame { .. } => {
                    let size = self.u32("a block header (the frame has no end mark)")?;
                    let State::Frame { h, .. } = &self.state else { unreachable!() };
                    let h = h.clone();
                    if size == 0 {
                        self.end_frame(&h)?;
                        continue;
                    }
                    let stored = size & 0x8000_0000 != 0;
                    let len = (size & 0x7FFF_FFFF) as usize;
                    if len > h.block_max {
                        return Err(bad(format!(
                            "lz4 block of {len} bytes exceeds the frame's {}-byte maximum; the file is damaged",
                            h.block_max
                        )));
                    }
                    let mut src = std::mem::take(&mut self.src);
                    src.resize(len, 0);
                    self.exact(&mut src, "a block")?;
                    if h.block_checksums {
                        let want = self.u32("a block checksum")?;
                        if xxh32(&src, 0) != want {
                            return Err(bad("an lz4 block fails its checksum; the file is damaged"));
                        }
                    }
                    if stored {
                        std::mem::swap(&mut self.out, &mut src);
                    } else {
                        self.out.resize(h.block_max, 0);
                        let r = if h.independent || self.dict.is_empty() {
                            lz4_flex::block::decompress_into(&src, &mut self.out)
                        } else {
                            lz4_flex::block::decompress_into_with_dict(&src, &mut self.out, &self.dict)
                        };
                        let n = r.map_err(|e| bad(format!("lz4 block is corrupt: {e}")))?;
                        self.out.truncate(n);
                    }
                    self.src = src;
                    if !h.independent {
                        self.dict.extend_from_slice(&self.out);
                        if self.dict.len() > WINDOW {
                            self.dict.drain(..self.dict.len() - WINDOW);
                        }
                    }
                    if let State::Frame { hasher, produced, .. } = &mut self.state {
                        if let Some(x) = hasher {
                            x.update(&self.out);
                        }
                        *produced += self.out.len() as u64;
                    }
                    self.pos = 0;
                    return Ok(true);
                }
            }
        }
    }

    fn end_frame(&mut self, h: &FrameHeader) -> io::Result<()> {
        let State::Frame { hasher, produced, .. } = std::mem::replace(&mut self.state, State::Boundary)
        else {
            unreachable!()
        };
        if let Some(want) = h.content_size {
            if want != produced {
                return Err(bad(format!(
                    "lz4 frame {} declares {want} bytes but holds {produced}; the file is damaged",
                    self.frames + 1
                )));
            }
        }
        if let Some(x) = hasher {
            let want = self.u32("the content checksum")?;
            if x.digest() != want {
                return Err(bad(format!(
                    "lz4 frame {} fails its content checksum; the file is damaged",
                    self.frames + 1
                )));
            }
        }
        self.frames += 1;
        Ok(())
    }
}

impl<R: BufRead> Read for Decoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.out.len() {
            if buf.is_empty() || !self.next_block()? {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.out.len() - self.pos);
        buf[..n].copy_from_slice(&self.out[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// The decoded size of a local lz4 file, from frame headers and block
/// headers (a 4-byte read per block, nothing decoded). `Err` says why it is
/// unknown. Remote files get only the first frame's size, as a hint.
pub(crate) fn decoded_size(src: &Source, head: &[u8]) -> crate::Result<(Option<u64>, String, Option<u64>)> {
    let first = (head.len() >= 4 && u32::from_le_bytes(head[..4].try_into().unwrap()) == LZ4_FRAME_MAGIC)
        .then(|| parse_frame_header(&head[4..]).ok().flatten().and_then(|h| h.content_size))
        .flatten();
    let Source::File(path) = src else {
        let why = "unknown: a remote lz4 file may hold several frames; the first frame's size is only a hint";
        return Ok((None, why.into(), first));
    };
    let f = std::fs::File::open(path)
        .map_err(|e| crate::Error::io(format!("cannot open {}", path.display()), e))?;
    let len = f.metadata().map_err(|e| crate::Error::io(format!("cannot stat {}", path.display()), e))?.len();
    match walk(&f, len).map_err(|e| crate::Error::io(format!("cannot read {}", path.display()), e))? {
        Ok((total, 1)) => Ok((Some(total), "lz4 frame header".into(), None)),
        Ok((total, n)) => Ok((Some(total), format!("lz4 frame headers ({n} frames)"), None)),
        Err(why) => Ok((None, format!("unknown: {why}"), first)),
    }
}

fn walk(f: &std::fs::File, len: u64) -> io::Result<Result<(u64, usize), String>> {
    use std::os::unix::fs::FileExt;
    let read = |at: u64, n: usize| -> io::Result<Vec<u8>> {
        let mut b = vec![0u8; n.min(len.saturating_sub(at) as usize)];
        f.read_exact_at(&mut b, at)?;
        Ok(b)
    };
    let le = |b: &[u8]| u32::from_le_bytes(b[..4].try_into().unwrap());
    let (mut pos, mut total, mut frames) = (0u64, 0u64, 0usize);
    while pos < len {
        let m = read(pos, 4)?;
        if m.len() < 4 {
            return Ok(Err(format!("lz4 data is truncated at byte {pos}")));
        }
        let magic = le(&m);
        if is_skippable(magic) {
            let s = read(pos + 4, 4)?;
            if s.len() < 4 {
                return Ok(Err(format!("lz4 data is truncated at byte {pos}")));
            }
            pos += 8 + u64::from(le(&s));
            continue;
        }
        if magic == LZ4_LEGACY_MAGIC {
            return Ok(Err("legacy lz4 does not record it".into()));
        }
        if magic != LZ4_FRAME_MAGIC {
            return Ok(Err(format!("bytes at offset {pos} are not an lz4 frame")));
        }
        let d = read(pos + 4, 15)?;
        let h = match parse_frame_header(&d) {
            Ok(Some(h)) => h,
            Ok(None) => return Ok(Err(format!("lz4 data is truncated at byte {pos}"))),
            Err(e) => return Ok(Err(e.to_string())),
        };
        let Some(size) = h.content_size else {
            return Ok(Err("lz4 frame without content size".into()));
        };
        pos += 4 + h.len as u64;
        loop {
            let b = read(pos, 4)?;
            if b.len() < 4 {
                return Ok(Err(format!("lz4 data is truncated at byte {pos}")));
            }
            let bs = le(&b);
            pos += 4;
            if bs == 0 {
                break;
            }
            pos += u64::from(bs & 0x7FFF_FFFF) + if h.block_checksums { 4 } else { 0 };
        }
        if h.content_checksum {
            pos += 4;
        }
        let Some(sum) = total.checked_add(size) else {
            return Ok(Err("the lz4 frames' content sizes add up to more than 2^64 bytes".into()));
        };
        total = sum;
        frames += 1;
    }
    if pos != len {
        return Ok(Err(format!(
            "lz4 data is truncated: the last frame needs {pos} bytes, the file has {len}"
        )));
    }
    if frames == 0 {
        return Ok(Err("the file holds no lz4 frame".into()));
    }
    Ok(Ok((total, frames)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(data: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        Decoder::new(io::BufReader::new(data)).read_to_end(&mut out)?;
        Ok(out)
    }

    /// A frame of stored (uncompressed) blocks, with the flags asked for.
    fn frame(data: &[u8], block: usize, size: bool, block_sums: bool, content_sum: bool) -> Vec<u8> {
        let mut flg = 0x40 | 0x20;
        if block_sums {
            flg |= 0x10;
        }
        if size {
            flg |= 0x08;
        }
        if content_sum {
            flg |= 0x04;
        }
        let mut desc = vec![flg, 4 << 4];
        if size {
            desc.extend((data.len() as u64).to_le_bytes());
        }
        let hc = (xxh32(&desc, 0) >> 8) as u8;
        let mut v = LZ4_FRAME_MAGIC.to_le_bytes().to_vec();
        v.extend(&desc);
        v.push(hc);
        for c in data.chunks(block) {
            // Alternate compressed and stored blocks.
            let packed = lz4_flex::block::compress(c);
            if packed.len() < c.len() && v.len() % 2 == 0 {
                v.extend((packed.len() as u32).to_le_bytes());
                v.extend(&packed);
                if block_sums {
                    v.extend(xxh32(&packed, 0).to_le_bytes());
                }
            } else {
                v.extend((c.len() as u32 | 0x8000_0000).to_le_bytes());
                v.extend(c);
                if block_sums {
                    v.extend(xxh32(c, 0).to_le_bytes());
                }
            }
        }
        v.extend([0u8; 4]);
        if content_sum {
            v.extend(xxh32(data, 0).to_le_bytes());
        }
        v
    }

    fn sample(n: usize) -> Vec<u8> {
        (0..n).map(|i| if i % 3000 < 1500 { 0 } else { (i * 7 % 251) as u8 }).collect()
    }

    #[test]
    fn frames_with_every_checksum() {
        let data = sample(300_000);
        for (size, bs, cs) in [(true, true, true), (false, false, false), (true, false, true)] {
            let f = frame(&data, 65536, size, bs, cs);
            assert_eq!(decode(&f).unwrap(), data, "{size} {bs} {cs}");
        }
    }

    #[test]
    fn concatenated_and_skippable_frames() {
        let data = sample(200_000);
        let mut v = vec![0x5A, 0x2A, 0x4D, 0x18, 3, 0, 0, 0, 1, 2, 3];
        v.extend(frame(&data[..70_000], 65536, true, false, true));
        v.extend([0x50, 0x2A, 0x4D, 0x18, 0, 0, 0, 0]);
        v.extend(frame(&data[70_000..], 65536, false, true, false));
        assert_eq!(decode(&v).unwrap(), data);
    }

    #[test]
    fn damage_is_an_error() {
        let data = sample(300_000);
        let f = frame(&data, 65536, true, true, true);
        // Cut at every block boundary and inside blocks: never a clean end.
        for cut in [f.len() - 1, f.len() - 4, f.len() - 8, 7, 11, f.len() / 2] {
            assert!(decode(&f[..cut]).is_err(), "cut at {cut} of {}", f.len());
        }
        let mut flipped = f.clone();
        let at = flipped.len() / 2;
        flipped[at] ^= 0x01;
        assert!(decode(&flipped).is_err());
        let mut hdr = f.clone();
        hdr[6] ^= 0x01;
        assert!(decode(&hdr).unwrap_err().to_string().contains("header checksum"));
        let mut trailing = f.clone();
        trailing.extend(b"junk");
        assert!(decode(&trailing).unwrap_err().to_string().contains("not an lz4 frame"));
        // Content checksum without block checksums still catches a flipped byte.
        let g = frame(&data, 65536, false, false, true);
        let mut flipped = g.clone();
        let at = g.len() - 100;
        flipped[at] ^= 0x80;
        assert!(decode(&flipped).is_err());
    }

    #[test]
    fn legacy_blocks() {
        let data = sample(LEGACY_BLOCK + 12345);
        let mut v = LZ4_LEGACY_MAGIC.to_le_bytes().to_vec();
        for c in data.chunks(LEGACY_BLOCK) {
            let p = lz4_flex::block::compress(c);
            v.extend((p.len() as u32).to_le_bytes());
            v.extend(&p);
        }
        assert_eq!(decode(&v).unwrap(), data);
        assert!(decode(&v[..v.len() - 10]).is_err());
        // A legacy frame followed by a modern one.
        let mut both = v.clone();
        both.extend(frame(b"tail", 65536, true, false, false));
        let mut want = data.clone();
        want.extend(b"tail");
        assert_eq!(decode(&both).unwrap(), want);
    }

    #[test]
    fn dictionary_frames_are_refused() {
        let desc = [0x60 | 0x01, 0x40, 1, 2, 3, 4];
        let mut v = LZ4_FRAME_MAGIC.to_le_bytes().to_vec();
        v.extend(desc);
        v.push((xxh32(&desc, 0) >> 8) as u8);
        let err = decode(&v).unwrap_err();
        let e = crate::Error::from_io(err).expect("an engine error");
        assert_eq!(e.kind(), crate::ErrorKind::Usage);
    }

    /// Frame headers whose content sizes add up past 2^64 make the size
    /// unknown, not an overflow (fuzz/regressions/format/lz4-sizes-past-2-pow-64).
    #[test]
    fn content_sizes_past_2_pow_64_are_unknown() {
        let desc = [0x40 | 0x20 | 0x08, 0x40, 0, 0, 0, 0, 0, 0, 0, 0x80];
        let mut frame = LZ4_FRAME_MAGIC.to_le_bytes().to_vec();
        frame.extend(desc);
        frame.push((xxh32(&desc, 0) >> 8) as u8);
        frame.extend([0u8; 4]);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.img.lz4");
        std::fs::write(&p, [&frame[..], &frame[..]].concat()).unwrap();
        let (size, how, first) = decoded_size(&Source::File(p), &frame).unwrap();
        assert_eq!(size, None);
        assert!(how.contains("more than 2^64"), "{how}");
        assert_eq!(first, Some(1 << 63));
    }
}
