//! Zip archives holding one disk image: stored or deflated, ZIP64 sizes,
//! data descriptors, CRC-32 verified.
//!
//! The entry is streamed from its local header like any compressed image;
//! nothing is extracted to a temporary file. Before that, local archives
//! have their central directory read (a few small reads at the end), so an
//! archive of several files, an encrypted entry or an unsupported method is
//! refused with the list of entries before anything is written, and the
//! streamed entry is checked against what the directory records.
//!
//! Remote archives are not asked for their tail first: a server without
//! Range support would send the whole archive for it. They are judged while
//! streaming instead: after the one entry, the next record must be the
//! central directory; a second local header means a second file, and the
//! flash fails (the target then holds the first entry, reported as a
//! partial write). The parser is ours rather than the `zip` crate's, whose
//! reader wants `Seek` for everything and so cannot stream from http.

use std::io::{self, BufRead, Read};

use crate::error::{Error, Result};
use crate::source::Source;

const LOCAL: &[u8; 4] = b"PK\x03\x04";
const CENTRAL: &[u8; 4] = b"PK\x01\x02";
const EOCD: &[u8; 4] = b"PK\x05\x06";
const EOCD64: &[u8; 4] = b"PK\x06\x06";
const EOCD64_LOCATOR: &[u8; 4] = b"PK\x06\x07";
const DESCRIPTOR: &[u8; 4] = b"PK\x07\x08";
const STORED: u16 = 0;
const DEFLATED: u16 = 8;
/// Refuse central directories larger than this (a disk-image zip has a
/// handful of entries; this bounds memory on hostile input).
const MAX_DIRECTORY: u64 = 64 << 20;

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
}
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

fn damaged(what: impl std::fmt::Display) -> Error {
    Error::integrity(format!("the zip archive is damaged: {what}"))
}

/// One entry as the central directory (or a local header) records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub flags: u16,
    pub method: u16,
    pub crc: u32,
    pub compressed: u64,
    pub size: u64,
}

impl Entry {
    pub fn is_dir(&self) -> bool {
        self.name.ends_with('/') && self.size == 0
    }
    fn encrypted(&self) -> bool {
        self.flags & 1 != 0 || self.method == 99
    }
}

/// Apply a ZIP64 extended-information extra field (id 1): the 64-bit values
/// of the 32-bit fields that hold 0xFFFFFFFF, in order.
fn zip64_extra(extra: &[u8], size: &mut u64, compressed: &mut u64, offset: Option<&mut u64>) -> bool {
    let mut i = 0;
    while i + 4 <= extra.len() {
        let (id, len) = (le16(extra, i), usize::from(le16(extra, i + 2)));
        let body = &extra[(i + 4).min(extra.len())..(i + 4 + len).min(extra.len())];
        if id == 1 {
            let mut at = 0;
            let mut take = |v: &mut u64| {
                if *v == 0xFFFF_FFFF && at + 8 <= body.len() {
                    *v = le64(body, at);
                    at += 8;
                }
            };
            take(size);
            take(compressed);
            if let Some(o) = offset {
                take(o);
            }
            return true;
        }
        i += 4 + len;
    }
    false
}

/// Every entry of a zip archive, from its central directory.
pub fn central_directory(src: &Source) -> Result<Vec<Entry>> {
    let len = src.len()?.ok_or_else(|| Error::failure("the size of the zip archive is unknown"))?;
    let tail_len = len.min(22 + 65535 + 20);
    let tail = src.read_at(len - tail_len, tail_len as usize)?;
    // The end record is the last signature whose comment reaches the end
    // exactly; a stray signature inside the comment does not.
    let at = (0..tail.len().saturating_sub(21))
        .rev()
        .filter(|&i| &tail[i..i + 4] == EOCD)
        .find(|&i| i + 22 + usize::from(le16(&tail, i + 20)) == tail.len())
        .ok_or_else(|| damaged("no end of central directory record (the file is truncated or not a zip)"))?;
    let e = &tail[at..];
    let (disk, cd_disk) = (le16(e, 4), le16(e, 6));
    let mut count = u64::from(le16(e, 10));
    let mut cd_size = u64::from(le32(e, 12));
    let mut cd_offset = u64::from(le32(e, 16));
    if (disk != 0 || cd_disk != 0) && disk != 0xFFFF {
        return Err(Error::usage(
            "this zip archive is split over several files; join the parts (`zip -s 0 IMAGE --out whole.zip`) \
             and flash whole.zip",
        ));
    }
    if count == 0xFFFF || cd_size == 0xFFFF_FFFF || cd_offset == 0xFFFF_FFFF {
        let loc = at.checked_sub(20).map(|l| &tail[l..l + 20]);
        let Some(loc) = loc.filter(|l| &l[..4] == EOCD64_LOCATOR) else {
            return Err(damaged("the ZIP64 end of central directory locator is missing"));
        };
        let rec_at = le64(loc, 8);
        let rec = src.read_at(rec_at, 56)?;
        if rec.len() < 56 || &rec[..4] != EOCD64 {
            return Err(damaged("the ZIP64 end of central directory record is missing"));
        }
        count = le64(&rec, 32);
        cd_size = le64(&rec, 40);
        cd_offset = le64(&rec, 48);
    }
    if cd_size > MAX_DIRECTORY || cd_offset.checked_add(cd_size).is_none_or(|end| end > len) {
        return Err(damaged(format!(
            "its central directory ({cd_size} bytes at {cd_offset}) lies outside the file"
        )));
    }
    let cd = src.read_at(cd_offset, cd_size as usize)?;
    if (cd.len() as u64) < cd_size {
        return Err(damaged("the central directory is truncated"));
    }
    let mut entries = Vec::new();
    let mut i = 0usize;
    while entries.len() as u64 != count {
        if i + 46 > cd.len() || &cd[i..i + 4] != CENTRAL {
            return Err(damaged(format!(
                "the central directory holds {} entries where its end record says {count}",
                entries.len()
            )));
        }
        let h = &cd[i..];
        let (name_len, extra_len, comment_len) =
            (usize::from(le16(h, 28)), usize::from(le16(h, 30)), usize::from(le16(h, 32)));
        if 46 + name_len + extra_len + comment_len > h.len() {
            return Err(damaged("a central directory entry runs past its end"));
        }
        let mut entry = Entry {
            name: String::from_utf8_lossy(&h[46..46 + name_len]).into_owned(),
            flags: le16(h, 8),
            method: le16(h, 10),
            crc: le32(h, 16),
            compressed: u64::from(le32(h, 20)),
            size: u64::from(le32(h, 24)),
        };
        let mut offset = u64::from(le32(h, 42));
        zip64_extra(
            &h[46 + name_len..46 + name_len + extra_len],
            &mut entry.size,
            &mut entry.compressed,
            Some(&mut offset),
        );
        entries.push(entry);
        i += 46 + name_len + extra_len + comment_len;
    }
    Ok(entries)
}

/// The one file a local zip may hold, or why the archive is refused.
pub fn single_entry(src: &Source) -> Result<Entry> {
    pick(&central_directory(src)?, &src.name())
}

fn pick(entries: &[Entry], name: &str) -> Result<Entry> {
    let files: Vec<&Entry> = entries.iter().filter(|e| !e.is_dir()).collect();
    match files.as_slice() {
        [] => Err(Error::usage(format!("{name} holds no file, only directories; it contains no disk image"))),
        [one] => {
            check_supported(one, name)?;
            Ok((*one).clone())
        }
        many => {
            let shown: Vec<String> =
                many.iter().take(20).map(|e| format!("{} ({} bytes)", e.name, e.size)).collect();
            let more = if many.len() > 20 { format!(" and {} more", many.len() - 20) } else { String::new() };
            Err(Error::usage(format!(
                "{name} holds {} files: {}{more}; bty flashes a zip of one disk image only: list it with \
                 `unzip -l {name}`, extract the image with `unzip {name} FILE`, and flash that",
                many.len(),
                shown.join(", ")
            )))
        }
    }
}

fn check_supported(e: &Entry, archive: &str) -> Result<()> {
    if e.encrypted() {
        return Err(Error::usage(format!(
            "{} in {archive} is encrypted; bty does not decrypt zip entries: extract it with `unzip {archive}` \
             (which asks for the password) and flash the extracted image",
            e.name
        )));
    }
    if e.method != STORED && e.method != DEFLATED {
        return Err(Error::usage(format!(
            "{} in {archive} is compressed with zip method {}, which bty does not decode (it reads stored and \
             deflated entries): extract it with `unzip` or `7z x` and flash the extracted image",
            e.name, e.method
        )));
    }
    Ok(())
}

/// A local file header, parsed.
#[derive(Debug, Clone)]
struct Local {
    entry: Entry,
    zip64: bool,
}

impl Local {
    fn has_descriptor(&self) -> bool {
        self.entry.flags & 0x08 != 0
    }
}

/// Parse a local header from `b` (starting at its signature). `Ok(None)`:
/// `b` is too short; `Ok(Some((header, length)))` otherwise.
fn parse_local(b: &[u8]) -> Result<Option<(Local, usize)>> {
    if b.len() < 30 {
        return Ok(None);
    }
    if &b[..4] != LOCAL {
        return Err(damaged("no local file header where one should be"));
    }
    let (name_len, extra_len) = (usize::from(le16(b, 26)), usize::from(le16(b, 28)));
    let total = 30 + name_len + extra_len;
    if b.len() < total {
        return Ok(None);
    }
    let mut entry = Entry {
        name: String::from_utf8_lossy(&b[30..30 + name_len]).into_owned(),
        flags: le16(b, 6),
        method: le16(b, 8),
        crc: le32(b, 14),
        compressed: u64::from(le32(b, 18)),
        size: u64::from(le32(b, 22)),
    };
    let zip64 = zip64_extra(&b[30 + name_len..total], &mut entry.size, &mut entry.compressed, None);
    Ok(Some((Local { entry, zip64 }, total)))
}

/// The decoded size of the zip's one entry, for `inspect` and the plan:
/// from the central directory for local files, from the first local header
/// for remote ones (unknown when the writer streamed it with a descriptor).
pub(crate) fn decoded_size(src: &Source, head: &[u8]) -> Result<(Option<u64>, String)> {
    if src.is_local() {
        let e = single_entry(src)?;
        return Ok((Some(e.size), format!("zip entry size ({})", e.name)));
    }
    let mut head = head.to_vec();
    if parse_local(&head)?.is_none() && head.len() >= 30 {
        head = src.read_at(0, 30 + usize::from(le16(&head, 26)) + usize::from(le16(&head, 28)))?;
    }
    match parse_local(&head)? {
        Some((l, _)) if l.entry.is_dir() => {
            Ok((None, "unknown: the archive starts with a directory entry".into()))
        }
        Some((l, _)) => {
            check_supported(&l.entry, &src.name())?;
            if l.has_descriptor() {
                Ok((None, "unknown: the zip entry was written as a stream (sizes after the data)".into()))
            } else {
                Ok((Some(l.entry.size), format!("zip local header ({})", l.entry.name)))
            }
        }
        None => Err(damaged("the first local file header is truncated")),
    }
}

enum State {
    /// Before the entry: reading local headers, skipping directories.
    Start,
    Data {
        local: Local,
        left: u64,
        inflate: Option<Box<flate2::Decompress>>,
        crc: crc32fast::Hasher,
        out: u64,
        consumed: u64,
    },
    Done,
}

/// Streams the one file of a zip archive, verifying it, then reads the rest
/// of the archive (the central directory) so the whole stream is accounted for.
pub struct EntryReader<R: BufRead> {
    r: R,
    expected: Option<Entry>,
    state: State,
    first: Option<Entry>,
}

impl<R: BufRead> EntryReader<R> {
    /// `expected` is the central directory's entry, when it was read.
    pub fn new(r: R, expected: Option<Entry>) -> Self {
        EntryReader { r, expected, state: State::Start, first: None }
    }

    fn exact(&mut self, buf: &mut [u8], what: &str) -> io::Result<()> {
        self.r.read_exact(buf).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                io::Error::new(e.kind(), format!("the zip archive ends inside {what}: the file is truncated"))
            } else {
                e
            }
        })
    }

    /// Read the next record's signature; `None` at the end of the input.
    fn signature(&mut self) -> io::Result<Option<[u8; 4]>> {
        let mut sig = [0u8; 4];
        let mut got = 0;
        while got < 4 {
            match self.r.read(&mut sig[got..])? {
                0 if got == 0 => return Ok(None),
                0 => {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the zip archive is truncated"))
                }
                n => got += n,
            }
        }
        Ok(Some(sig))
    }

    fn local_after(&mut self, sig: [u8; 4]) -> io::Result<Local> {
        let mut b = sig.to_vec();
        b.resize(30, 0);
        self.exact(&mut b[4..], "a local file header")?;
        let more = usize::from(le16(&b, 26)) + usize::from(le16(&b, 28));
        b.resize(30 + more, 0);
        self.exact(&mut b[30..], "a local file header")?;
        let (l, _) = parse_local(&b).map_err(Error::into_io)?.expect("whole header read");
        Ok(l)
    }

    fn begin(&mut self) -> io::Result<()> {
        loop {
            let sig = self.signature()?.ok_or_else(|| damaged("the archive is empty").into_io())?;
            if &sig != LOCAL {
                let e = if &sig == CENTRAL || &sig == EOCD {
                    Error::usage("the zip archive holds no file, only directories; it contains no disk image")
                } else {
                    damaged("the first record is not a local file header")
                };
                return Err(e.into_io());
            }
            let local = self.local_after(sig)?;
            if local.entry.is_dir() {
                self.skip_dir(&local)?;
                continue;
            }
            check_supported(&local.entry, "the archive").map_err(Error::into_io)?;
            let mut local = local;
            if let Some(want) = &self.expected {
                if want.name != local.entry.name {
                    return Err(damaged(format!(
                        "the first file's local header names {}, the central directory {}",
                        local.entry.name, want.name
                    ))
                    .into_io());
                }
                if local.has_descriptor() {
                    local.entry.compressed = want.compressed;
                }
            }
            let left = if local.has_descriptor() && self.expected.is_none() {
                if local.entry.method == STORED {
                    return Err(Error::usage(
                        "this zip's entry is stored with its size after the data, which cannot be streamed: \
                         download the archive first and flash the local file",
                    )
                    .into_io());
                }
                u64::MAX
            } else {
                local.entry.compressed
            };
            let inflate = (local.entry.method == DEFLATED).then(|| Box::new(flate2::Decompress::new(false)));
            self.first = Some(local.entry.clone());
            self.state =
                State::Data { local, left, inflate, crc: crc32fast::Hasher::new(), out: 0, consumed: 0 };
            return Ok(());
        }
    }

    fn skip_dir(&mut self, l: &Local) -> io::Result<()> {
        let skipped = io::copy(&mut (&mut self.r).take(l.entry.compressed), &mut io::sink())?;
        if skipped < l.entry.compressed {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the zip archive is truncated"));
        }
        if l.has_descriptor() {
            self.descriptor(l)?;
        }
        Ok(())
    }

    /// Read a data descriptor: (crc, compressed, size).
    fn descriptor(&mut self, l: &Local) -> io::Result<(u32, u64, u64)> {
        let mut b = [0u8; 4];
        self.exact(&mut b, "a data descriptor")?;
        let crc = if &b == DESCRIPTOR {
            self.exact(&mut b, "a data descriptor")?;
            u32::from_le_bytes(b)
        } else {
            u32::from_le_bytes(b)
        };
        if l.zip64 {
            let mut s = [0u8; 16];
            self.exact(&mut s, "a data descriptor")?;
            Ok((crc, le64(&s, 0), le64(&s, 8)))
        } else {
            let mut s = [0u8; 8];
            self.exact(&mut s, "a data descriptor")?;
            Ok((crc, u64::from(le32(&s, 0)), u64::from(le32(&s, 4))))
        }
    }

    fn read_data(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let State::Data { left, inflate, crc, out, consumed, .. } = &mut self.state else { unreachable!() };
        match inflate {
            None => {
                if *left == 0 {
                    return Ok(0);
                }
                let want = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                let n = self.r.read(&mut buf[..want])?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("the zip archive ends inside its entry, after {out} of its bytes: the file is truncated"),
                    ));
                }
                *left -= n as u64;
                *consumed += n as u64;
                *out += n as u64;
                crc.update(&buf[..n]);
                Ok(n)
            }
            Some(d) => loop {
                let input = self.r.fill_buf()?;
                let input = &input[..input.len().min(usize::try_from(*left).unwrap_or(usize::MAX))];
                let eof = input.is_empty();
                let (in0, out0) = (d.total_in(), d.total_out());
                let status = d.decompress(input, buf, flate2::FlushDecompress::None).map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("the zip entry's deflate data is corrupt: {e}"),
                    )
                })?;
                let used = (d.total_in() - in0) as usize;
                let made = (d.total_out() - out0) as usize;
                self.r.consume(used);
                *left -= used as u64;
                *consumed += used as u64;
                *out += made as u64;
                crc.update(&buf[..made]);
                if status == flate2::Status::StreamEnd {
                    *left = 0;
                    *inflate = None;
                    return Ok(made);
                }
                if made > 0 {
                    return Ok(made);
                }
                if eof {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("the zip archive ends inside its entry's deflate data, after {out} bytes: the file is truncated"),
                    ));
                }
            },
        }
    }

    /// The entry's data is over: check it, then the rest of the archive.
    fn end_entry(&mut self) -> io::Result<()> {
        let State::Data { local, crc, out, consumed, .. } = std::mem::replace(&mut self.state, State::Done)
        else {
            unreachable!()
        };
        let crc = crc.finalize();
        let (want_crc, want_compressed, want_size) = if local.has_descriptor() {
            self.descriptor(&local)?
        } else {
            (local.entry.crc, local.entry.compressed, local.entry.size)
        };
        let name = &local.entry.name;
        let mismatch = |what: &str, got: String, want: String| {
            damaged(format!("{name}: its {what} is {got}, the archive records {want}")).into_io()
        };
        if crc != want_crc {
            return Err(mismatch("CRC-32", format!("{crc:08x}"), format!("{want_crc:08x}")));
        }
        if out != want_size {
            return Err(mismatch("size", out.to_string(), want_size.to_string()));
        }
        if consumed != want_compressed {
            return Err(mismatch("compressed size", consumed.to_string(), want_compressed.to_string()));
        }
        if let Some(e) = &self.expected {
            if (e.crc, e.size, e.compressed) != (crc, out, consumed) {
                return Err(
                    damaged(format!("{name}: its local header and the central directory disagree")).into_io()
                );
            }
        }
        self.rest()
    }

    /// After the entry: only directories, then the central directory and
    /// its end record. A second file is refused; a missing end is truncation.
    fn rest(&mut self) -> io::Result<()> {
        loop {
            let Some(sig) = self.signature()? else {
                return Err(damaged(
                    "it ends after its entry, without a central directory (the file is truncated)",
                )
                .into_io());
            };
            if &sig == LOCAL {
                let l = self.local_after(sig)?;
                if l.entry.is_dir() {
                    self.skip_dir(&l)?;
                    continue;
                }
                let first = self.first.clone().expect("entry read");
                return Err(Error::usage(format!(
                    "the zip archive holds more than one file ({} of {} bytes, then {}); bty flashes a zip of one \
                     disk image only: the target holds a partial write; list the archive with `unzip -l`, extract \
                     the image and flash that",
                    first.name, first.size, l.entry.name
                ))
                .into_io());
            }
            if &sig != CENTRAL && &sig != EOCD && &sig != EOCD64 {
                return Err(damaged("unexpected data after its entry").into_io());
            }
            // Keep the end of the directory to find its end record.
            let mut tail = sig.to_vec();
            let mut buf = [0u8; 64 << 10];
            loop {
                let n = self.r.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                tail.extend_from_slice(&buf[..n]);
                if tail.len() > 256 << 10 {
                    tail.drain(..tail.len() - (128 << 10));
                }
            }
            let ends = (0..tail.len().saturating_sub(21))
                .rev()
                .any(|i| &tail[i..i + 4] == EOCD && i + 22 + usize::from(le16(&tail, i + 20)) == tail.len());
            if !ends {
                return Err(damaged(
                    "its end of central directory record is missing (the file is truncated)",
                )
                .into_io());
            }
            return Ok(());
        }
    }
}

impl<R: BufRead> Read for EntryReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match &self.state {
                State::Done => return Ok(0),
                State::Start => self.begin()?,
                State::Data { .. } => {
                    let n = self.read_data(buf)?;
                    if n > 0 {
                        return Ok(n);
                    }
                    self.end_entry()?;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A zip written by hand: entries (name, data, deflate?, descriptor?).
    fn archive(entries: &[(&str, &[u8], bool, bool)]) -> Vec<u8> {
        let mut v = Vec::new();
        let mut cd = Vec::new();
        for &(name, data, deflate, desc) in entries {
            let offset = v.len() as u32;
            let packed = if deflate {
                let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            } else {
                data.to_vec()
            };
            let crc = crc32fast::hash(data);
            let method: u16 = if deflate { 8 } else { 0 };
            let flags: u16 = if desc { 8 } else { 0 };
            let (c, s, k) = if desc { (0, 0, 0) } else { (crc, packed.len() as u32, data.len() as u32) };
            v.extend(LOCAL);
            v.extend(20u16.to_le_bytes());
            v.extend(flags.to_le_bytes());
            v.extend(method.to_le_bytes());
            v.extend([0u8; 4]);
            v.extend(c.to_le_bytes());
            v.extend(s.to_le_bytes());
            v.extend(k.to_le_bytes());
            v.extend((name.len() as u16).to_le_bytes());
            v.extend(0u16.to_le_bytes());
            v.extend(name.as_bytes());
            v.extend(&packed);
            if desc {
                v.extend(DESCRIPTOR);
                v.extend(crc.to_le_bytes());
                v.extend((packed.len() as u32).to_le_bytes());
                v.extend((data.len() as u32).to_le_bytes());
            }
            cd.extend(CENTRAL);
            cd.extend([20, 0, 20, 0]);
            cd.extend(flags.to_le_bytes());
            cd.extend(method.to_le_bytes());
            cd.extend([0u8; 4]);
            cd.extend(crc.to_le_bytes());
            cd.extend((packed.len() as u32).to_le_bytes());
            cd.extend((data.len() as u32).to_le_bytes());
            cd.extend((name.len() as u16).to_le_bytes());
            cd.extend([0u8; 12]);
            cd.extend(offset.to_le_bytes());
            cd.extend(name.as_bytes());
        }
        let cd_offset = v.len() as u32;
        v.extend(&cd);
        v.extend(EOCD);
        v.extend([0u8; 4]);
        v.extend((entries.len() as u16).to_le_bytes());
        v.extend((entries.len() as u16).to_le_bytes());
        v.extend((cd.len() as u32).to_le_bytes());
        v.extend(cd_offset.to_le_bytes());
        v.extend(0u16.to_le_bytes());
        v
    }

    fn data() -> Vec<u8> {
        (0..200_000u32).map(|i| if i % 5000 < 2000 { 0 } else { (i % 249) as u8 }).collect()
    }

    fn stream(z: &[u8], expected: Option<Entry>) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        EntryReader::new(io::BufReader::new(z), expected).read_to_end(&mut out)?;
        Ok(out)
    }

    fn file(z: &[u8]) -> (tempfile::TempDir, Source) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.zip");
        std::fs::write(&p, z).unwrap();
        (dir, Source::File(p))
    }

    #[test]
    fn stored_deflated_and_descriptors() {
        let d = data();
        for (deflate, desc) in [(false, false), (true, false), (true, true)] {
            let z = archive(&[("dir/", b"", false, false), ("dir/disk.img", &d, deflate, desc)]);
            assert_eq!(stream(&z, None).unwrap(), d, "{deflate} {desc}");
            let (_t, src) = file(&z);
            let e = single_entry(&src).unwrap();
            assert_eq!((e.name.as_str(), e.size), ("dir/disk.img", d.len() as u64));
            assert_eq!(stream(&z, Some(e)).unwrap(), d);
        }
        // Stored with a descriptor streams only with the central directory's size.
        let z = archive(&[("disk.img", &d, false, true)]);
        let err = stream(&z, None).unwrap_err();
        assert_eq!(Error::from_io(err).unwrap().kind(), crate::ErrorKind::Usage);
        let (_t, src) = file(&z);
        assert_eq!(stream(&z, Some(single_entry(&src).unwrap())).unwrap(), d);
    }

    #[test]
    fn several_files_are_refused_with_their_names() {
        let d = data();
        let z = archive(&[("disk.img", &d, true, false), ("README", b"hello", false, false)]);
        let (_t, src) = file(&z);
        let err = single_entry(&src).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Usage);
        let msg = err.to_string();
        assert!(msg.contains("disk.img (200000 bytes)") && msg.contains("README (5 bytes)"), "{msg}");
        assert!(msg.contains("unzip -l"), "{msg}");
        // Streaming finds the second local header.
        let err = Error::from_io(stream(&z, None).unwrap_err()).unwrap();
        assert_eq!(err.kind(), crate::ErrorKind::Usage);
        assert!(err.to_string().contains("more than one file"), "{err}");
        let z = archive(&[("only-a-dir/", b"", false, false)]);
        let (_t, src) = file(&z);
        assert!(single_entry(&src).unwrap_err().to_string().contains("no file"));
    }

    #[test]
    fn encrypted_and_unknown_methods_are_refused() {
        let mut z = archive(&[("disk.img", b"abc", false, false)]);
        z[6] |= 1; // local header flags
        let cd = z.len() - 22 - (46 + 8);
        z[cd + 8] |= 1;
        let (_t, src) = file(&z);
        assert!(single_entry(&src).unwrap_err().to_string().contains("encrypted"));
        let mut z = archive(&[("disk.img", b"abc", false, false)]);
        z[8] = 12;
        z[cd + 10] = 12;
        let (_t, src) = file(&z);
        assert!(single_entry(&src).unwrap_err().to_string().contains("method 12"));
    }

    #[test]
    fn damage_is_an_integrity_error() {
        let d = data();
        for desc in [false, true] {
            let z = archive(&[("disk.img", &d, true, desc)]);
            for cut in [20, 40, z.len() / 2, z.len() - 30, z.len() - 1] {
                let err = stream(&z[..cut], None).unwrap_err();
                let e = Error::from_io(err);
                assert!(
                    e.as_ref().map_or(true, |e| e.kind() == crate::ErrorKind::Integrity),
                    "cut {cut}: {e:?}"
                );
            }
            let mut flipped = z.clone();
            flipped[1000] ^= 0x10;
            assert!(stream(&flipped, None).is_err());
        }
        let z = archive(&[("disk.img", &d, false, false)]);
        let mut flipped = z.clone();
        flipped[5000] ^= 1;
        let e = Error::from_io(stream(&flipped, None).unwrap_err()).unwrap();
        assert!(e.to_string().contains("CRC-32"), "{e}");
        let (_t, src) = file(&z[..z.len() - 5]);
        assert_eq!(central_directory(&src).unwrap_err().kind(), crate::ErrorKind::Integrity);
    }

    #[test]
    fn zip64_extra_fields() {
        let mut extra = vec![1, 0, 16, 0];
        extra.extend(5_000_000_000u64.to_le_bytes());
        extra.extend(4_000_000_000u64.to_le_bytes());
        let (mut s, mut c) = (0xFFFF_FFFFu64, 0xFFFF_FFFFu64);
        assert!(zip64_extra(&extra, &mut s, &mut c, None));
        assert_eq!((s, c), (5_000_000_000, 4_000_000_000));
        // Only the fields that overflowed are present, in order.
        let mut extra = vec![0x55, 0x54, 1, 0, 9, 1, 0, 8, 0];
        extra.extend(7_000_000_000u64.to_le_bytes());
        let (mut s, mut c) = (0xFFFF_FFFFu64, 100u64);
        assert!(zip64_extra(&extra, &mut s, &mut c, None));
        assert_eq!((s, c), (7_000_000_000, 100));
    }
}
