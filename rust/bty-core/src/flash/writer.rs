//! The write side of the pipeline: aligned buffers and the sink that decides,
//! per block, whether bytes are written, left as a hole, zeroed by the device,
//! or skipped because a block map says they are unmapped.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;

use super::target::TargetHandles;
use crate::bmap::{Bmap, ChecksumType, RangeHasher};
use crate::error::{Error, Result};

/// Bulk I/O unit. Large enough that O_DIRECT writes run at device speed,
/// small enough that the pipeline's buffers stay a few tens of MiB.
pub const CHUNK: usize = 4 << 20;
/// Zero-detection granularity (and the alignment every buffer has).
pub const BLOCK: usize = 4096;
/// Zero runs shorter than this are written rather than offloaded.
const MIN_ZERO_OFFLOAD: usize = 1 << 20;

/// A heap buffer whose usable region starts on a [`BLOCK`] boundary, as
/// O_DIRECT requires; built on a plain `Vec` so no unsafe code is needed.
pub struct AlignedBuf {
    raw: Vec<u8>,
    start: usize,
    pub len: usize,
}

impl AlignedBuf {
    pub fn new(cap: usize) -> Self {
        let raw = vec![0u8; cap + BLOCK];
        let start = raw.as_ptr().align_offset(BLOCK);
        AlignedBuf { raw, start, len: 0 }
    }
    pub fn capacity(&self) -> usize {
        self.raw.len() - BLOCK
    }
    pub fn spare(&mut self) -> &mut [u8] {
        let cap = self.capacity();
        &mut self.raw[self.start + self.len..self.start + cap]
    }
    pub fn data(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }
}

pub fn is_zero(block: &[u8]) -> bool {
    // OR-fold without early exit vectorises well; blocks are small.
    let mut words = block.chunks_exact(8);
    let acc = words.by_ref().fold(0u64, |a, w| a | u64::from_ne_bytes(w.try_into().unwrap()));
    acc == 0 && words.remainder().iter().all(|&b| b == 0)
}

/// (chunk index, XXH3-128 of the bytes written in that chunk), in order.
pub type ChunkSums = Vec<(u64, u128)>;

/// How unwritten regions are handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZeroPolicy {
    /// Write every byte (a disk that may hold old data).
    WriteAll,
    /// Regular file truncated before writing: zero blocks become holes.
    Holes,
    /// Block device with WRITE ZEROES offload: long zero runs are zeroed by the device.
    Offload,
}

/// Counters the sink reports back.
#[derive(Debug, Default, Clone, Copy)]
pub struct SinkStats {
    pub written: u64,
    pub holes: u64,
    pub offloaded: u64,
    pub unmapped: u64,
}

pub struct Sink {
    handles: TargetHandles,
    align: usize,
    zeros: ZeroPolicy,
    bmap: Option<BmapCursor>,
    /// Read-back checksum of what was written. XXH3-128 rather than a
    /// cryptographic hash: it guards against failing media, not adversaries,
    /// and runs at memory speed on both sides of the comparison.
    /// Per-chunk checksums (chunk index, XXH3-128) so the read-back can
    /// check chunks in parallel and in any order.
    verify: Option<ChunkSums>,
    chunk_hash: Option<xxhash_rust::xxh3::Xxh3>,
    pub stats: SinkStats,
}

struct BmapCursor {
    /// (start, end, expected checksum) in bytes, sorted.
    ranges: Vec<(u64, u64, Option<String>)>,
    idx: usize,
    kind: ChecksumType,
    hasher: RangeHasher,
}

impl Sink {
    pub fn new(
        handles: TargetHandles,
        align: u64,
        zeros: ZeroPolicy,
        bmap: Option<&Bmap>,
        verify: bool,
    ) -> Self {
        let bmap = bmap.map(|b| BmapCursor {
            ranges: b
                .ranges
                .iter()
                .map(|r| {
                    let start = r.first_block * b.block_size;
                    let end = ((r.last_block + 1) * b.block_size).min(b.image_size);
                    (start, end, r.checksum.clone())
                })
                .collect(),
            idx: 0,
            kind: b.checksum_type.unwrap_or(ChecksumType::Sha256),
            hasher: RangeHasher::new(b.checksum_type.unwrap_or(ChecksumType::Sha256)),
        });
        Sink {
            handles,
            align: align.max(512) as usize,
            zeros,
            bmap,
            verify: verify.then(Vec::new),
            chunk_hash: None,
            stats: SinkStats::default(),
        }
    }

    /// Accept the image bytes at `offset` (chunks arrive in order, each
    /// starting where the previous ended).
    /// Chunks arrive in order, each [`CHUNK`] bytes at a multiple of
    /// [`CHUNK`] (the last may be shorter).
    pub fn put(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        if self.verify.is_some() {
            self.chunk_hash = Some(xxhash_rust::xxh3::Xxh3::new());
        }
        if self.bmap.is_some() {
            self.put_mapped(offset, data)?;
        } else {
            if let Some(h) = self.chunk_hash.as_mut() {
                h.update(data);
            }
            self.put_region(offset, data)?;
        }
        if let (Some(v), Some(h)) = (self.verify.as_mut(), self.chunk_hash.take()) {
            v.push((offset / CHUNK as u64, h.digest128()));
        }
        Ok(())
    }

    fn put_mapped(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        let end = offset + data.len() as u64;
        let mut pos = offset;
        while pos < end {
            let cur = self.bmap.as_mut().unwrap();
            let Some(&(rs, re, _)) = cur.ranges.get(cur.idx) else {
                self.stats.unmapped += end - pos;
                return Ok(());
            };
            if pos < rs {
                let skip = rs.min(end) - pos;
                self.stats.unmapped += skip;
                pos += skip;
                continue;
            }
            let upto = re.min(end);
            let slice = &data[(pos - offset) as usize..(upto - offset) as usize];
            cur.hasher.update(slice);
            // Read-back covers mapped ranges only: unmapped ones keep old data.
            if let Some(h) = self.chunk_hash.as_mut() {
                h.update(slice);
            }
            let done = upto == re;
            self.write_at(pos, slice)?;
            pos = upto;
            if done {
                let cur = self.bmap.as_mut().unwrap();
                let (rs, re, want) = cur.ranges[cur.idx].clone();
                let got = cur.hasher.finish();
                if let Some(want) = want {
                    if want != got {
                        return Err(Error::integrity(format!(
                            "block map range {rs}-{re} has {} {got}, the .bmap says {want}; \
                             the image and its block map do not match (or the image is corrupt)",
                            cur.kind.as_str().to_ascii_uppercase()
                        )));
                    }
                }
                cur.idx += 1;
            }
        }
        Ok(())
    }

    fn put_region(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        if self.zeros == ZeroPolicy::WriteAll {
            return self.write_at(offset, data);
        }
        // Split into runs of zero / non-zero blocks.
        let mut i = 0;
        while i < data.len() {
            let zero = is_zero(&data[i..(i + BLOCK).min(data.len())]);
            let mut j = (i + BLOCK).min(data.len());
            while j < data.len() && is_zero(&data[j..(j + BLOCK).min(data.len())]) == zero {
                j = (j + BLOCK).min(data.len());
            }
            let run = &data[i..j];
            let at = offset + i as u64;
            match (zero, self.zeros) {
                (true, ZeroPolicy::Holes) => self.stats.holes += run.len() as u64,
                (true, ZeroPolicy::Offload) if run.len() >= MIN_ZERO_OFFLOAD && at % 512 == 0 => {
                    let len = run.len() as u64 / 512 * 512;
                    zero_out(&self.handles.direct, at, len)
                        .map_err(|e| Error::io(format!("cannot zero range at byte {at}"), e))?;
                    self.stats.offloaded += len;
                    if len < run.len() as u64 {
                        self.write_at(at + len, &run[len as usize..])?;
                    }
                }
                _ => self.write_at(at, run)?,
            }
            i = j;
        }
        Ok(())
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        let map = |e: io::Error| {
            if e.raw_os_error() == Some(libc::ENOSPC) {
                Error::io(
                    format!("the target is full at byte {offset}: the image is larger than the target"),
                    e,
                )
            } else {
                Error::io(format!("write failed at byte {offset}"), e)
            }
        };
        if !self.handles.direct_io {
            self.handles.direct.write_all_at(data, offset).map_err(map)?;
        } else {
            let aligned = data.len() / self.align * self.align;
            let direct_ok = offset as usize % self.align == 0 && (data.as_ptr() as usize) % self.align == 0;
            if direct_ok {
                self.handles.direct.write_all_at(&data[..aligned], offset).map_err(map)?;
                if aligned < data.len() {
                    self.handles
                        .buffered
                        .write_all_at(&data[aligned..], offset + aligned as u64)
                        .map_err(map)?;
                }
            } else {
                self.handles.buffered.write_all_at(data, offset).map_err(map)?;
            }
        }
        self.stats.written += data.len() as u64;
        Ok(())
    }

    /// Flush everything written so far to the medium (after a cancel, so
    /// the partial write that is reported is the one the target keeps).
    pub fn sync(&self) -> io::Result<()> {
        self.handles.direct.sync_all()?;
        self.handles.buffered.sync_all()
    }

    /// End of stream: check the block map was fully covered, fix the file
    /// length, and return the handles plus the per-chunk checksums of what was
    /// written (the whole image, or only its mapped ranges with a block map).
    pub fn finish(self, total: u64) -> Result<(TargetHandles, Option<ChunkSums>, SinkStats)> {
        if let Some(cur) = &self.bmap {
            if cur.idx < cur.ranges.len() {
                return Err(Error::integrity(format!(
                    "the image ended at byte {total} but the block map has data up to byte {}; \
                     the image is truncated or the .bmap belongs to another image",
                    cur.ranges.last().map(|r| r.1).unwrap_or(0)
                )));
            }
        }
        if !self.handles.direct_io {
            // Trailing holes still count towards the file's length.
            self.handles
                .buffered
                .set_len(total)
                .map_err(|e| Error::io("cannot set target file length", e))?;
        }
        Ok((self.handles, self.verify, self.stats))
    }
}

/// BLKZEROOUT: the kernel zeroes the range, using the device's WRITE ZEROES
/// when it has one; the range is guaranteed to read back as zeros.
fn zero_out(f: &File, offset: u64, len: u64) -> io::Result<()> {
    const BLKZEROOUT: libc::c_ulong = 0x127f; // _IO(0x12, 127)
    let range: [u64; 2] = [offset, len];
    // SAFETY: BLKZEROOUT reads a `u64[2]` that lives for the duration of the call.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), BLKZEROOUT as _, range.as_ptr()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_buffers() {
        let mut b = AlignedBuf::new(CHUNK);
        assert_eq!(b.spare().as_ptr() as usize % BLOCK, 0);
        assert_eq!(b.spare().len(), CHUNK);
        b.len = 10;
        assert_eq!(b.data().len(), 10);
    }

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[0u8; 4096]));
        let mut v = vec![0u8; 4096];
        v[4095] = 1;
        assert!(!is_zero(&v));
        assert!(!is_zero(&[0, 0, 1]));
        assert!(is_zero(&[]));
    }
}
