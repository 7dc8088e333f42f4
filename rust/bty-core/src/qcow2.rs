//! A native reader of qcow2 images (versions 2 and 3): the virtual disk as a
//! sequential byte stream, without `qemu-img` at run time.
//!
//! Only what a flasher needs is supported: standalone images with
//! uncompressed, deflate- or zstd-compressed clusters. Anything that would
//! make the stream differ from what `qemu-img convert -O raw` produces
//! (backing files, encryption, external data files, subclusters, unknown
//! incompatible features) is refused with a message that says how to convert
//! the image into something bty can write.
//!
//! Before any cluster is read the header is checked the way qemu checks it
//! when it opens an image (`qcow2_do_open`, `qcow2_validate_table`): cluster
//! size, header length, compression type, and every table's size and
//! offset. A header that qemu would refuse is refused here too, as damage
//! ([`crate::error::ErrorKind::Integrity`]); read on, such a header yields zeros or garbage
//! where the disk should be.

use std::io::{self, Read, Seek, SeekFrom};

use crate::error::{Error, Result};

const MAGIC: &[u8; 4] = b"QFI\xfb";
/// Size of a version 2 header; version 3 headers state their own length.
const V2_HEADER_LEN: usize = 72;
/// Offset of the compression type byte, present when the header is longer.
const COMPRESSION_TYPE_AT: usize = 104;
/// qemu's limits (`QCOW_MAX_L1_SIZE`, `QCOW_MAX_REFTABLE_SIZE`,
/// `QCOW_MAX_SNAPSHOTS`); they also bound what this reader allocates.
const MAX_L1_BYTES: u64 = 32 << 20;
const MAX_REFTABLE_BYTES: u64 = 8 << 20;
const MAX_SNAPSHOTS: u64 = 65536;
/// `sizeof(QCowSnapshotHeader)`: the fixed part of a snapshot table entry.
const SNAPSHOT_HEADER_LEN: u64 = 40;
/// qemu refuses longer backing file names.
const MAX_BACKING_NAME: u32 = 1023;

const INCOMPAT_DIRTY: u64 = 1 << 0;
const INCOMPAT_CORRUPT: u64 = 1 << 1;
const INCOMPAT_DATA_FILE: u64 = 1 << 2;
const INCOMPAT_COMPRESSION: u64 = 1 << 3;
const INCOMPAT_EXTL2: u64 = 1 << 4;
const INCOMPAT_KNOWN: u64 =
    INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2;

/// Header extension types (qcow2 specification, "Header extensions").
const EXT_END: u32 = 0;
const EXT_FEATURE_NAMES: u32 = 0x6803_f857;
const EXT_DATA_FILE: u32 = 0x4441_5441;

const L1_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const L2_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const L2_COMPRESSED: u64 = 1 << 62;
const L2_ZERO: u64 = 1;

/// The fields of a qcow2 header that matter for reading the virtual disk.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Qcow2Header {
    pub version: u32,
    pub backing_file_offset: u64,
    pub backing_file_size: u32,
    pub cluster_bits: u32,
    /// Size of the virtual disk in bytes, as qemu sees it: the header's size
    /// rounded down to whole 512-byte sectors (`bs->total_sectors`), which is
    /// what `qemu-img convert -O raw` writes.
    pub virtual_size: u64,
    /// The size the header states; qemu-img writes only multiples of 512,
    /// other tools may not.
    pub size_in_header: u64,
    pub crypt_method: u32,
    pub l1_size: u32,
    pub l1_table_offset: u64,
    pub refcount_table_offset: u64,
    pub refcount_table_clusters: u32,
    pub nb_snapshots: u32,
    pub snapshots_offset: u64,
    pub incompatible_features: u64,
    pub compatible_features: u64,
    pub autoclear_features: u64,
    pub refcount_order: u32,
    pub header_length: u32,
    /// 0 = deflate, 1 = zstd.
    pub compression_type: u8,
    pub has_backing_file: bool,
    /// The backing file's name, when the header bytes given hold it.
    pub backing_file: Option<String>,
    /// The external data file's name (header extension), when present.
    pub data_file: Option<String>,
    /// Names of incompatible features from the feature name table, by bit.
    pub feature_names: Vec<(u8, String)>,
    pub encrypted: bool,
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}
fn be_u64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap())
}

fn damaged(what: impl std::fmt::Display) -> Error {
    Error::integrity(format!(
        "qcow2 image is damaged: {what}; qemu refuses to open it too. Get a good copy of the image \
         (`qemu-img check` tells more)"
    ))
}

/// Parse and check the header from the first bytes of the file: at least
/// 104 bytes; the whole first cluster lets the backing and data file names
/// and the feature names be read too. Structural damage (cluster size, header
/// length, compression type) is an error here; whether bty can read the
/// image is [`Qcow2Header::check_supported`], whether its tables fit the file
/// [`Qcow2Header::check_tables`].
pub fn parse_header(head: &[u8]) -> Result<Qcow2Header> {
    if !head.starts_with(MAGIC) {
        return Err(Error::usage("not a qcow2 image: the file does not start with the qcow2 signature"));
    }
    if head.len() < V2_HEADER_LEN {
        return Err(Error::integrity(format!(
            "qcow2 header is truncated: got {} bytes, need at least {V2_HEADER_LEN}",
            head.len()
        )));
    }
    let version = be_u32(head, 4);
    if version != 2 && version != 3 {
        return Err(Error::failure(format!(
            "qcow2 version {version} is not supported (only versions 2 and 3); convert it with \
             `qemu-img convert -O qcow2 -o compat=1.1 IN OUT` or publish a raw image"
        )));
    }
    let mut h = Qcow2Header {
        version,
        backing_file_offset: be_u64(head, 8),
        backing_file_size: be_u32(head, 16),
        cluster_bits: be_u32(head, 20),
        virtual_size: be_u64(head, 24) / 512 * 512,
        size_in_header: be_u64(head, 24),
        crypt_method: be_u32(head, 32),
        l1_size: be_u32(head, 36),
        l1_table_offset: be_u64(head, 40),
        refcount_table_offset: be_u64(head, 48),
        refcount_table_clusters: be_u32(head, 56),
        nb_snapshots: be_u32(head, 60),
        snapshots_offset: be_u64(head, 64),
        incompatible_features: 0,
        compatible_features: 0,
        autoclear_features: 0,
        refcount_order: 4,
        header_length: V2_HEADER_LEN as u32,
        compression_type: 0,
        has_backing_file: false,
        backing_file: None,
        data_file: None,
        feature_names: Vec::new(),
        encrypted: false,
    };
    h.has_backing_file = h.backing_file_offset != 0;
    h.encrypted = h.crypt_method != 0;
    if !(9..=21).contains(&h.cluster_bits) {
        return Err(damaged(format!(
            "its cluster size 2^{} is outside the valid range (512 bytes to 2 MiB)",
            h.cluster_bits
        )));
    }
    let cluster_size = h.cluster_size();
    if version == 3 {
        if head.len() < 104 {
            return Err(Error::integrity(format!(
                "qcow2 version 3 header is truncated: got {} bytes, need at least 104",
                head.len()
            )));
        }
        h.incompatible_features = be_u64(head, 72);
        h.compatible_features = be_u64(head, 80);
        h.autoclear_features = be_u64(head, 88);
        h.refcount_order = be_u32(head, 96);
        h.header_length = be_u32(head, 100);
        if h.header_length < 104 {
            return Err(damaged(format!(
                "its header length {} is below the minimum of 104",
                h.header_length
            )));
        }
        if u64::from(h.header_length) > cluster_size {
            return Err(damaged(format!(
                "its header length {} exceeds the cluster size {cluster_size}",
                h.header_length
            )));
        }
        if h.header_length as usize > COMPRESSION_TYPE_AT {
            let Some(&t) = head.get(COMPRESSION_TYPE_AT) else {
                return Err(Error::integrity("qcow2 header is truncated before its compression type"));
            };
            h.compression_type = t;
        }
        let flagged = h.incompatible_features & INCOMPAT_COMPRESSION != 0;
        if flagged != (h.compression_type != 0) {
            return Err(damaged(format!(
                "its compression type is {} but the compression-type feature bit is {}",
                h.compression_type,
                if flagged { "set" } else { "clear" }
            )));
        }
        if h.refcount_order > 6 {
            return Err(damaged(format!(
                "its reference count width 2^{} bits exceeds 64 bits",
                h.refcount_order
            )));
        }
    }
    if h.has_backing_file {
        let (off, len) = (h.backing_file_offset, h.backing_file_size);
        if off > cluster_size || u64::from(len) > (cluster_size - off).min(u64::from(MAX_BACKING_NAME)) {
            return Err(damaged(format!(
                "its backing file name ({len} bytes at offset {off}) does not fit in the header cluster"
            )));
        }
        if let Some(name) = head.get(off as usize..off as usize + len as usize) {
            h.backing_file = Some(String::from_utf8_lossy(name).into_owned());
        }
    }
    if version == 3 {
        read_extensions(&mut h, head);
    }
    Ok(h)
}

/// Header extensions follow the header up to the backing file name (or the
/// end of the first cluster). Only names are taken from them, for messages,
/// so a damaged extension area is not an error: it is ignored.
fn read_extensions(h: &mut Qcow2Header, head: &[u8]) {
    let end = if h.has_backing_file { h.backing_file_offset } else { h.cluster_size() };
    let end = (end as usize).min(head.len());
    let mut at = h.header_length as usize;
    while at + 8 <= end {
        let (ty, len) = (be_u32(head, at), be_u32(head, at + 4) as usize);
        let Some(data) = head.get(at + 8..at + 8 + len).filter(|_| at + 8 + len <= end) else { return };
        match ty {
            EXT_END => return,
            EXT_DATA_FILE => h.data_file = Some(String::from_utf8_lossy(data).into_owned()),
            EXT_FEATURE_NAMES => {
                for entry in data.chunks_exact(48) {
                    // Type 0 names incompatible features.
                    if entry[0] == 0 {
                        let name = entry[2..].split(|&b| b == 0).next().unwrap_or_default();
                        h.feature_names.push((entry[1], String::from_utf8_lossy(name).into_owned()));
                    }
                }
            }
            _ => {}
        }
        at += 8 + len.div_ceil(8) * 8;
    }
}

impl Qcow2Header {
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// qemu marks an image corrupt when it finds inconsistent metadata while
    /// writing. It still opens such images read-only (which is all
    /// `qemu-img convert` needs), and so does bty, with this warning.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.incompatible_features & INCOMPAT_CORRUPT != 0 {
            out.push(
                "qcow2 image is marked corrupt by qemu (it found inconsistent metadata while writing); bty \
                 reads it read-only, as `qemu-img convert` would, but the disk may not hold what its author \
                 intended: run `qemu-img check` on it, and prefer a good copy"
                    .to_string(),
            );
        }
        if self.size_in_header != self.virtual_size {
            out.push(format!(
                "the qcow2 header states a size of {} bytes, not a multiple of 512; qemu uses (and \
                 `qemu-img convert` writes) the first {} bytes, and so does bty",
                self.size_in_header, self.virtual_size
            ));
        }
        out
    }

    /// Refuse images whose virtual disk this reader cannot reproduce exactly.
    pub fn check_supported(&self) -> Result<()> {
        let convert = "convert it with `qemu-img convert -O qcow2 IN OUT` (or `-O raw`) first";
        if self.has_backing_file {
            let name = match &self.backing_file {
                Some(n) => format!(" {n}"),
                None => String::new(),
            };
            return Err(Error::failure(format!(
                "qcow2 image has a backing file{name}: it holds only the differences to that file; flatten \
                 it with `qemu-img convert -O qcow2 IN OUT` first so the image holds the whole disk"
            )));
        }
        if self.encrypted {
            let method = match self.crypt_method {
                1 => "AES".to_string(),
                2 => "LUKS".to_string(),
                m => format!("method {m}"),
            };
            return Err(Error::failure(format!(
                "qcow2 image is encrypted ({method}); bty cannot decrypt it: {convert} without encryption"
            )));
        }
        let f = self.incompatible_features;
        if f & INCOMPAT_DATA_FILE != 0 {
            let name = self.data_file.as_deref().map(|n| format!(" {n}")).unwrap_or_default();
            return Err(Error::failure(format!(
                "qcow2 image keeps its data in an external data file{name}; the .qcow2 file alone holds no \
                 disk contents: {convert} next to that data file"
            )));
        }
        if f & INCOMPAT_EXTL2 != 0 {
            return Err(Error::failure(format!(
                "qcow2 image uses extended L2 entries (subclusters), which bty does not read; {convert}"
            )));
        }
        if f & !INCOMPAT_KNOWN != 0 {
            let names: Vec<String> = (0..64u8)
                .filter(|b| (f & !INCOMPAT_KNOWN) >> b & 1 == 1)
                .map(|b| match self.feature_names.iter().find(|(bit, _)| *bit == b) {
                    Some((_, n)) => format!("{n} (bit {b})"),
                    None => format!("bit {b}"),
                })
                .collect();
            return Err(Error::failure(format!(
                "qcow2 image uses incompatible features unknown to bty: {}; {convert} with a qemu-img that \
                 knows them",
                names.join(", ")
            )));
        }
        if self.compression_type > 1 {
            return Err(Error::failure(format!(
                "qcow2 image uses compression type {}, which bty does not know (deflate and zstd are \
                 supported); {convert}",
                self.compression_type
            )));
        }
        Ok(())
    }

    /// The checks of qemu's `qcow2_validate_table` and the L1 size check,
    /// plus one qemu leaves to the first read: every table lies inside the
    /// file. All of them are damage.
    pub fn check_tables(&self, file_len: u64) -> Result<()> {
        let cs = self.cluster_size();
        let table = |name: &str, offset: u64, entries: u64, entry_len: u64, max: u64| -> Result<()> {
            if entries > max / entry_len {
                return Err(damaged(format!(
                    "its {name} has {entries} entries, more than qemu's limit of {} ({name} too large)",
                    max / entry_len
                )));
            }
            if offset % cs != 0 {
                return Err(damaged(format!(
                    "its {name} offset {offset:#x} is not aligned to the {cs}-byte cluster size \
                     ({name} offset invalid)"
                )));
            }
            let end = offset.saturating_add(entries * entry_len);
            if entries > 0 && end > file_len {
                return Err(damaged(format!(
                    "its {name} (bytes {offset:#x}..{end:#x}) lies past the end of the {file_len}-byte file; \
                     the file is truncated or the header is wrong"
                )));
            }
            Ok(())
        };
        if self.refcount_table_clusters == 0 {
            return Err(damaged("it has no reference count table"));
        }
        table(
            "reference count table",
            self.refcount_table_offset,
            u64::from(self.refcount_table_clusters),
            cs,
            MAX_REFTABLE_BYTES,
        )?;
        table(
            "snapshot table",
            self.snapshots_offset,
            u64::from(self.nb_snapshots),
            SNAPSHOT_HEADER_LEN,
            SNAPSHOT_HEADER_LEN * MAX_SNAPSHOTS,
        )?;
        table("active L1 table", self.l1_table_offset, u64::from(self.l1_size), 8, MAX_L1_BYTES)?;
        if self.l1_needed() > i32::MAX as u64 {
            return Err(damaged(format!("its virtual size {} is too big", self.virtual_size)));
        }
        if u64::from(self.l1_size) < self.l1_needed() {
            return Err(damaged(format!(
                "its L1 table has {} entries but a {}-byte disk needs {} (L1 table is too small)",
                self.l1_size,
                self.virtual_size,
                self.l1_needed()
            )));
        }
        Ok(())
    }

    fn l2_entries(&self) -> u64 {
        self.cluster_size() / 8
    }

    /// L1 entries needed to map the whole virtual disk.
    fn l1_needed(&self) -> u64 {
        // qemu sizes the L1 table from the stated size (`size_to_l1`).
        let clusters = self.size_in_header.div_ceil(self.cluster_size());
        clusters.div_ceil(self.l2_entries())
    }
}

/// Where the bytes of one guest cluster come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cluster {
    Zero,
    Data(u64),
    Compressed { offset: u64, len: u64 },
}

/// The virtual disk of a qcow2 image as a sequential stream. Memory use is
/// bounded: the L1 table (at most 32 MiB, a few KiB for usual images), one
/// L2 table and one decompressed cluster.
pub struct Qcow2Reader<R: Read + Seek> {
    inner: R,
    header: Qcow2Header,
    file_len: u64,
    l1: Vec<u64>,
    /// The L2 table last read, by its host offset.
    l2: Option<(u64, Vec<u64>)>,
    /// The compressed cluster last decompressed, by its guest cluster index.
    cbuf: Option<(u64, Vec<u8>)>,
    pos: u64,
}

fn corrupt(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

impl<R: Read + Seek> Qcow2Reader<R> {
    /// Read and check the header and the L1 table. Refuses images this
    /// reader cannot reproduce exactly (see [`Qcow2Header::check_supported`]).
    pub fn open(mut inner: R) -> Result<Self> {
        let file_len =
            inner.seek(SeekFrom::End(0)).map_err(|e| Error::io("cannot seek in the qcow2 image", e))?;
        let read_head = |inner: &mut R, n: u64| -> Result<Vec<u8>> {
            let mut head = vec![0u8; n.min(file_len) as usize];
            inner
                .seek(SeekFrom::Start(0))
                .and_then(|_| inner.read_exact(&mut head))
                .map_err(|e| Error::io("cannot read the qcow2 header", e))?;
            Ok(head)
        };
        let header = parse_header(&read_head(&mut inner, 512)?)?;
        // The whole first cluster holds the extensions and the backing file
        // name, which the messages name.
        let header = match header.cluster_size() {
            cs if cs > 512 && file_len > 512 => parse_header(&read_head(&mut inner, cs)?)?,
            _ => header,
        };
        header.check_supported()?;
        header.check_tables(file_len)?;

        let l1_bytes = u64::from(header.l1_size) * 8;
        let mut raw = vec![0u8; l1_bytes as usize];
        inner
            .seek(SeekFrom::Start(header.l1_table_offset))
            .and_then(|_| inner.read_exact(&mut raw))
            .map_err(|e| Error::io("cannot read the qcow2 L1 table", e))?;
        let l1 = raw.chunks_exact(8).map(|c| u64::from_be_bytes(c.try_into().unwrap())).collect();
        Ok(Qcow2Reader { inner, header, file_len, l1, l2: None, cbuf: None, pos: 0 })
    }

    pub fn header(&self) -> &Qcow2Header {
        &self.header
    }

    pub fn virtual_size(&self) -> u64 {
        self.header.virtual_size
    }

    fn read_host(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let end = offset.saturating_add(buf.len() as u64);
        if end > self.file_len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "qcow2 image is truncated: data at host bytes {offset}..{end} lies beyond the end of the \
                     {}-byte file",
                    self.file_len
                ),
            ));
        }
        self.inner.seek(SeekFrom::Start(offset))?;
        self.inner.read_exact(buf)
    }

    /// The L2 table at `offset`, reading it unless it is the cached one.
    fn l2_table(&mut self, offset: u64) -> io::Result<&[u64]> {
        if self.l2.as_ref().map(|(o, _)| *o) != Some(offset) {
            if offset % self.header.cluster_size() != 0 {
                return Err(corrupt(format!(
                    "qcow2 L2 table offset {offset:#x} is not cluster-aligned; the image is damaged"
                )));
            }
            let mut raw = vec![0u8; self.header.cluster_size() as usize];
            self.read_host(offset, &mut raw)?;
            let table = raw.chunks_exact(8).map(|c| u64::from_be_bytes(c.try_into().unwrap())).collect();
            self.l2 = Some((offset, table));
        }
        Ok(&self.l2.as_ref().unwrap().1)
    }

    /// Where guest cluster `index` is stored.
    fn cluster(&mut self, index: u64) -> io::Result<Cluster> {
        let per_l2 = self.header.l2_entries();
        let l1_entry = self.l1.get((index / per_l2) as usize).copied().unwrap_or(0);
        let l2_offset = l1_entry & L1_OFFSET_MASK;
        if l2_offset == 0 {
            return Ok(Cluster::Zero);
        }
        let cluster_bits = self.header.cluster_bits;
        let v3 = self.header.version >= 3;
        let entry = self.l2_table(l2_offset)?[(index % per_l2) as usize];
        if entry & L2_COMPRESSED != 0 {
            // Host offset in the low x bits, then the count of extra 512-byte sectors.
            let x = 62 - (cluster_bits - 8);
            let offset = entry & ((1u64 << x) - 1);
            let sectors = (entry & ((1u64 << 62) - 1)) >> x;
            let len = (sectors + 1) * 512 - (offset & 511);
            return Ok(Cluster::Compressed { offset, len });
        }
        if v3 && entry & L2_ZERO != 0 {
            return Ok(Cluster::Zero);
        }
        let offset = entry & L2_OFFSET_MASK;
        if offset == 0 {
            return Ok(Cluster::Zero);
        }
        if offset % self.header.cluster_size() != 0 {
            return Err(corrupt(format!(
                "qcow2 cluster {index} is mapped to unaligned host offset {offset:#x}; the image is damaged"
            )));
        }
        Ok(Cluster::Data(offset))
    }

    fn decompress(&mut self, index: u64, offset: u64, len: u64) -> io::Result<()> {
        if self.cbuf.as_ref().map(|(i, _)| *i) == Some(index) {
            return Ok(());
        }
        // The last compressed cluster may claim sectors past the end of the file.
        let avail = self.file_len.saturating_sub(offset).min(len);
        let mut packed = vec![0u8; avail as usize];
        self.read_host(offset, &mut packed)?;
        let mut out = self.cbuf.take().map(|(_, b)| b).unwrap_or_default();
        out.resize(self.header.cluster_size() as usize, 0);
        let res = if self.header.compression_type == 1 {
            zstd::stream::read::Decoder::with_buffer(&packed[..])
                .map(|d| d.single_frame())
                .and_then(|mut d| d.read_exact(&mut out))
        } else {
            flate2::read::DeflateDecoder::new(&packed[..]).read_exact(&mut out)
        };
        res.map_err(|e| {
            corrupt(format!("cannot decompress qcow2 cluster {index} (host offset {offset:#x}): {e}; the image is damaged"))
        })?;
        self.cbuf = Some((index, out));
        Ok(())
    }

    /// Guest byte ranges `(offset, length)` that hold data: allocated and not
    /// marked as zero. Everything else reads as zeros and need not be written
    /// to a target known to read back zeros. Adjacent clusters are merged.
    pub fn allocated_extents(&mut self) -> Result<Vec<(u64, u64)>> {
        let cs = self.header.cluster_size();
        let clusters = self.header.virtual_size.div_ceil(cs);
        let per_l2 = self.header.l2_entries();
        let mut out: Vec<(u64, u64)> = Vec::new();
        let mut index = 0;
        while index < clusters {
            if self.l1[(index / per_l2) as usize] & L1_OFFSET_MASK == 0 {
                index = (index / per_l2 + 1) * per_l2;
                continue;
            }
            let c = self.cluster(index).map_err(|e| Error::io("cannot read the qcow2 cluster map", e))?;
            if c != Cluster::Zero {
                let start = index * cs;
                let len = cs.min(self.header.virtual_size - start);
                match out.last_mut() {
                    Some((s, l)) if *s + *l == start => *l += len,
                    _ => out.push((start, len)),
                }
            }
            index += 1;
        }
        Ok(out)
    }
}

impl<R: Read + Seek> Read for Qcow2Reader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let size = self.header.virtual_size;
        if self.pos >= size || buf.is_empty() {
            return Ok(0);
        }
        let cs = self.header.cluster_size();
        let want = (buf.len() as u64).min(size - self.pos) as usize;
        let index = self.pos / cs;
        let within = self.pos % cs;
        let mut n = (cs - within).min(want as u64) as usize;
        match self.cluster(index)? {
            Cluster::Zero => buf[..n].fill(0),
            Cluster::Compressed { offset, len } => {
                self.decompress(index, offset, len)?;
                let data = &self.cbuf.as_ref().unwrap().1;
                buf[..n].copy_from_slice(&data[within as usize..within as usize + n]);
            }
            Cluster::Data(host) => {
                // Extend over following clusters stored contiguously on the host,
                // so large reads become large host reads.
                let mut next = index + 1;
                while n < want {
                    let expect = host + (next - index) * cs;
                    if (next % self.header.l2_entries()) == 0 || self.cluster(next)? != Cluster::Data(expect)
                    {
                        break;
                    }
                    n = (n as u64 + cs).min(want as u64) as usize;
                    next += 1;
                }
                self.read_host(host + within, &mut buf[..n])?;
            }
        }
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::io::Write;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    const MIB: usize = 1 << 20;

    fn qemu_img() -> Option<&'static str> {
        let ok = Command::new("qemu-img").arg("--version").output().is_ok_and(|o| o.status.success());
        if !ok {
            println!("skipping: qemu-img is not installed");
        }
        ok.then_some("qemu-img")
    }

    fn run(args: &[&str]) -> bool {
        let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
        if !out.status.success() {
            println!("{:?} failed: {}", args, String::from_utf8_lossy(&out.stderr));
        }
        out.status.success()
    }

    /// A 5 MiB + 4 KiB raw disk: patterned data, compressible runs, holes,
    /// and a non-cluster-aligned tail.
    fn raw_fixture(dir: &Path) -> (PathBuf, Vec<u8>) {
        let mut data = vec![0u8; 5 * MIB + 4096];
        let mut x: u32 = 0x1234_5678;
        for (i, b) in data.iter_mut().enumerate() {
            let region = i / (256 << 10);
            if region % 3 == 1 {
                continue; // hole
            }
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *b = if region % 3 == 0 { (x & 0xff) as u8 } else { (i / 1000 % 7) as u8 };
        }
        // A lone non-zero byte in the tail.
        let last = data.len() - 10;
        data[last] = 0xAB;
        let p = dir.join("disk.raw");
        File::create(&p).unwrap().write_all(&data).unwrap();
        (p, data)
    }

    fn read_all(p: &Path) -> Result<Vec<u8>> {
        let mut r = Qcow2Reader::open(File::open(p).unwrap())?;
        let mut out = Vec::new();
        // Odd-sized reads exercise cluster boundaries.
        let mut buf = vec![0u8; 100_003];
        loop {
            let n = r.read(&mut buf).map_err(|e| Error::io("read", e))?;
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        assert_eq!(out.len() as u64, r.virtual_size());
        Ok(out)
    }

    fn convert(dir: &Path, raw: &Path, name: &str, extra: &[&str]) -> Option<PathBuf> {
        let out = dir.join(name);
        let mut args = vec!["qemu-img", "convert", "-f", "raw", "-O", "qcow2"];
        args.extend_from_slice(extra);
        args.push(raw.to_str().unwrap());
        args.push(out.to_str().unwrap());
        run(&args).then_some(out)
    }

    #[test]
    fn reads_images_made_by_qemu_img() {
        if qemu_img().is_none() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (raw, data) = raw_fixture(dir.path());
        let variants: &[(&str, &[&str])] = &[
            ("plain.qcow2", &[]),
            ("deflate.qcow2", &["-c"]),
            ("v2.qcow2", &["-o", "compat=0.10"]),
            ("v2c.qcow2", &["-c", "-o", "compat=0.10"]),
            ("small-clusters.qcow2", &["-c", "-o", "cluster_size=4096"]),
            ("big-clusters.qcow2", &["-o", "cluster_size=2M"]),
        ];
        for (name, extra) in variants {
            let q = convert(dir.path(), &raw, name, extra).expect("qemu-img convert");
            let got = read_all(&q).unwrap();
            assert!(got == data, "{name}: contents differ from the raw image");
            let h = parse_header(&std::fs::read(&q).unwrap()[..512]).unwrap();
            assert_eq!(h.virtual_size, data.len() as u64, "{name}");
            assert_eq!(h.version, if name.starts_with("v2") { 2 } else { 3 }, "{name}");
        }
        match convert(dir.path(), &raw, "zstd.qcow2", &["-c", "-o", "compression_type=zstd"]) {
            Some(q) => {
                let h = parse_header(&std::fs::read(&q).unwrap()[..512]).unwrap();
                assert_eq!(h.compression_type, 1);
                assert!(read_all(&q).unwrap() == data, "zstd: contents differ");
            }
            None => println!("qemu-img cannot write zstd-compressed qcow2 here; skipped that variant"),
        }
    }

    #[test]
    fn allocated_extents_skip_holes() {
        if qemu_img().is_none() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (raw, data) = raw_fixture(dir.path());
        let q = convert(dir.path(), &raw, "plain.qcow2", &[]).unwrap();
        let mut r = Qcow2Reader::open(File::open(&q).unwrap()).unwrap();
        let ext = r.allocated_extents().unwrap();
        assert!(!ext.is_empty());
        // Every non-zero byte lies in an extent, and the holes are not covered.
        let mut covered = vec![false; data.len()];
        for &(off, len) in &ext {
            assert!(off + len <= data.len() as u64);
            covered[off as usize..(off + len) as usize].fill(true);
        }
        assert!(data.iter().zip(&covered).all(|(&b, &c)| b == 0 || c));
        let hole = 256 << 10; // region 1 is a hole
        assert!(!covered[hole..2 * hole].iter().any(|&c| c));
        assert!(ext.windows(2).all(|w| w[0].0 + w[0].1 < w[1].0), "merged and sorted: {ext:?}");
        assert_eq!(ext.last().map(|(o, l)| o + l), Some(data.len() as u64));
    }

    /// A cluster that keeps its host allocation but carries the zero flag
    /// (what `write -z` leaves) reads as zeros and is not an extent.
    #[test]
    fn zero_flagged_clusters_read_as_zeros() {
        if qemu_img().is_none() {
            return;
        }
        if !Command::new("qemu-io").arg("--version").output().is_ok_and(|o| o.status.success()) {
            println!("skipping: qemu-io is not installed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let q = dir.path().join("z.qcow2");
        let qs = q.to_str().unwrap();
        assert!(run(&["qemu-img", "create", "-q", "-f", "qcow2", qs, "1M"]));
        assert!(run(&["qemu-io", "-c", "write -P 0xaa 0 192k", "-c", "write -z 64k 64k", qs]));
        let got = read_all(&q).unwrap();
        let mut want = vec![0u8; MIB];
        want[..64 << 10].fill(0xaa);
        want[128 << 10..192 << 10].fill(0xaa);
        assert!(got == want);
        let mut r = Qcow2Reader::open(File::open(&q).unwrap()).unwrap();
        assert_eq!(r.allocated_extents().unwrap(), vec![(0, 64 << 10), (128 << 10, 64 << 10)]);
    }

    #[test]
    fn refuses_backing_files() {
        if qemu_img().is_none() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (raw, _) = raw_fixture(dir.path());
        let base = convert(dir.path(), &raw, "base.qcow2", &[]).unwrap();
        let top = dir.path().join("top.qcow2");
        assert!(run(&[
            "qemu-img",
            "create",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            base.to_str().unwrap(),
            top.to_str().unwrap()
        ]));
        let err = Qcow2Reader::open(File::open(&top).unwrap()).err().unwrap();
        assert!(err.to_string().contains("backing file"), "{err}");
        assert!(err.to_string().contains("qemu-img convert"), "{err}");
        let h = parse_header(&std::fs::read(&top).unwrap()).unwrap();
        assert!(h.has_backing_file);
    }

    #[test]
    fn truncated_images_are_errors() {
        if qemu_img().is_none() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (raw, _) = raw_fixture(dir.path());
        for (name, extra) in [("t.qcow2", &[][..]), ("tc.qcow2", &["-c"][..])] {
            let q = convert(dir.path(), &raw, name, extra).unwrap();
            let len = std::fs::metadata(&q).unwrap().len();
            File::options().write(true).open(&q).unwrap().set_len(len - 70_000).unwrap();
            match read_all(&q) {
                Err(e) => assert!(
                    e.to_string().contains("truncated") || e.to_string().contains("decompress"),
                    "{e}"
                ),
                Ok(_) => panic!("{name}: a truncated image read without error"),
            }
        }
        let q = convert(dir.path(), &raw, "h.qcow2", &[]).unwrap();
        let head = std::fs::read(&q).unwrap();
        assert!(parse_header(&head[..50]).unwrap_err().to_string().contains("truncated"));
        let mut f = File::create(&q).unwrap();
        f.write_all(&head[..1000]).unwrap();
        drop(f);
        let err = Qcow2Reader::open(File::open(&q).unwrap()).err().unwrap();
        assert!(err.to_string().contains("truncated"), "{err}");
    }

    #[test]
    fn refuses_unknown_features_and_versions() {
        let mut h = vec![0u8; 512];
        h[..4].copy_from_slice(MAGIC);
        h[4..8].copy_from_slice(&3u32.to_be_bytes());
        h[20..24].copy_from_slice(&16u32.to_be_bytes());
        h[24..32].copy_from_slice(&(1u64 << 30).to_be_bytes());
        h[100..104].copy_from_slice(&112u32.to_be_bytes());
        let ok = parse_header(&h).unwrap();
        assert_eq!((ok.virtual_size, ok.cluster_size()), (1 << 30, 65536));
        ok.check_supported().unwrap();

        let mut bad = h.clone();
        bad[72..80].copy_from_slice(&(1u64 << 40).to_be_bytes());
        let e = parse_header(&bad).unwrap().check_supported().unwrap_err();
        assert!(e.to_string().contains("unknown"), "{e}");

        let mut enc = h.clone();
        enc[32..36].copy_from_slice(&2u32.to_be_bytes());
        let e = parse_header(&enc).unwrap().check_supported().unwrap_err();
        assert!(e.to_string().contains("encrypted"), "{e}");

        let mut ext = h.clone();
        ext[72..80].copy_from_slice(&INCOMPAT_DATA_FILE.to_be_bytes());
        let e = parse_header(&ext).unwrap().check_supported().unwrap_err();
        assert!(e.to_string().contains("external data file"), "{e}");

        let mut v4 = h.clone();
        v4[4..8].copy_from_slice(&4u32.to_be_bytes());
        assert!(parse_header(&v4).unwrap_err().to_string().contains("version 4"));
        assert!(parse_header(b"not qcow").is_err());
    }
    /// (offset, width, big-endian value) written over a header field.
    type Edit = (usize, usize, u64);

    /// A copy of `src` with `edits` applied.
    fn patched(src: &Path, name: &str, edits: &[Edit]) -> PathBuf {
        let mut b = std::fs::read(src).unwrap();
        for &(at, width, value) in edits {
            b[at..at + width].copy_from_slice(&value.to_be_bytes()[8 - width..]);
        }
        let p = src.with_file_name(name);
        std::fs::write(&p, b).unwrap();
        p
    }

    fn open_err(p: &Path) -> Error {
        match Qcow2Reader::open(File::open(p).unwrap()) {
            Ok(_) => panic!("{} opened", p.display()),
            Err(e) => e,
        }
    }

    fn qemu_refuses(p: &Path) -> bool {
        let out = Command::new("qemu-img").args(["info", "-U"]).arg(p).output().unwrap();
        !out.status.success()
    }

    /// Headers qemu refuses to open are refused here too, as damage, and
    /// never read as a disk of zeros.
    #[test]
    fn damaged_headers_are_refused_like_qemu_does() {
        if qemu_img().is_none() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (raw, _) = raw_fixture(dir.path());
        let q = convert(dir.path(), &raw, "good.qcow2", &[]).unwrap();
        let h = parse_header(&std::fs::read(&q).unwrap()[..512]).unwrap();
        let len = std::fs::metadata(&q).unwrap().len();
        let cases: &[(&str, &[Edit], &str)] = &[
            ("l1-misaligned", &[(40, 8, h.l1_table_offset + 512)], "active L1 table offset"),
            ("l1-past-end", &[(40, 8, (len + 65536) / 65536 * 65536)], "past the end"),
            ("l1-too-small", &[(36, 4, 0)], "L1 table is too small"),
            ("l1-too-large", &[(36, 4, 5 << 20)], "active L1 table has"),
            ("refcount-misaligned", &[(48, 8, h.refcount_table_offset + 8)], "reference count table offset"),
            ("refcount-none", &[(56, 4, 0)], "no reference count table"),
            ("refcount-too-large", &[(56, 4, 129)], "reference count table has 129"),
            ("snapshots-misaligned", &[(64, 8, 4096)], "snapshot table offset"),
            ("snapshots-past-end", &[(60, 4, 3), (64, 8, 1 << 40)], "snapshot table (bytes"),
            ("snapshots-too-many", &[(60, 4, 65537)], "snapshot table has 65537"),
            ("cluster-bits", &[(20, 4, 22)], "cluster size 2^22"),
            ("header-length", &[(100, 4, 70000)], "exceeds the cluster size"),
            ("compression-bit", &[(104, 1, 1)], "compression-type feature bit is clear"),
        ];
        for &(name, edits, want) in cases {
            let p = patched(&q, name, edits);
            // qemu leaves tables past the end of the file to the first read
            // (which then sees zeros); bty refuses them up front.
            if !name.ends_with("past-end") {
                assert!(qemu_refuses(&p), "{name}: qemu opens it, so bty must not refuse it");
            }
            let e = open_err(&p);
            assert_eq!(e.kind(), crate::error::ErrorKind::Integrity, "{name}: {e}");
            assert!(e.to_string().contains(want), "{name}: want {want:?}, got: {e}");
        }
    }

    #[test]
    fn corrupt_flag_reads_with_a_warning_like_qemu_img_convert() {
        if qemu_img().is_none() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (raw, data) = raw_fixture(dir.path());
        let q = convert(dir.path(), &raw, "good.qcow2", &[]).unwrap();
        let p = patched(&q, "corrupt.qcow2", &[(72, 8, INCOMPAT_CORRUPT)]);
        let r = Qcow2Reader::open(File::open(&p).unwrap()).unwrap();
        assert!(r.header().warnings()[0].contains("marked corrupt"));
        assert!(read_all(&p).unwrap() == data);
        let unknown = patched(&q, "unknown.qcow2", &[(72, 8, 1 << 10)]);
        let e = open_err(&unknown);
        assert!(e.to_string().contains("unknown to bty: bit 10"), "{e}");
    }

    #[test]
    fn unsupported_layouts_are_refused_by_name() {
        if qemu_img().is_none() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let data = d.join("data.raw");
        let ext = d.join("ext.qcow2");
        let sub = d.join("sub.qcow2");
        let (es, ss, ds) = (ext.to_str().unwrap(), sub.to_str().unwrap(), data.to_str().unwrap());
        assert!(run(&[
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            &format!("data_file={ds}"),
            es,
            "1M"
        ]));
        assert!(run(&["qemu-img", "create", "-q", "-f", "qcow2", "-o", "extended_l2=on", ss, "1M"]));
        let e = open_err(&ext);
        assert!(e.to_string().contains(&format!("external data file {ds}")), "{e}");
        assert_eq!(e.kind(), crate::error::ErrorKind::Failure);
        let e = open_err(&sub);
        assert!(e.to_string().contains("extended L2"), "{e}");
    }

    /// qemu-img rounds sizes up to 512 when it creates an image; a header
    /// that states another size is read as qemu reads it, rounded down.
    #[test]
    fn sizes_not_a_multiple_of_512_match_qemu_img_convert() {
        if qemu_img().is_none() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("odd.raw");
        let data: Vec<u8> = (0..MIB + 30).map(|i| (i % 253) as u8 + 1).collect();
        std::fs::write(&raw, &data).unwrap();
        let q = convert(dir.path(), &raw, "odd.qcow2", &[]).unwrap();
        let stated = patched(&q, "stated.qcow2", &[(24, 8, (MIB + 30) as u64)]);
        for p in [q, stated] {
            let want = dir.path().join("want.raw");
            assert!(run(&["qemu-img", "convert", "-O", "raw", p.to_str().unwrap(), want.to_str().unwrap()]));
            let want = std::fs::read(&want).unwrap();
            let got = read_all(&p).unwrap();
            assert_eq!(got.len(), want.len(), "{}", p.display());
            assert!(got == want, "{}", p.display());
        }
    }
}
