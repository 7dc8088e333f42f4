//! Fuzz target bodies for bty-core and bty-netboot, one per input format bty
//! parses (image formats, catalogs, and the TFTP and DHCP packets that
//! anyone on the LAN can send).
//!
//! Each body takes arbitrary bytes and must return normally: bad input is
//! an `Err` in bty-core, never a panic (including arithmetic overflow, as
//! the fuzz builds enable overflow checks), an allocation sized by a header
//! field rather than by the input, or a loop that does not end. The
//! afl-instrumented binaries in `src/bin/` call these, and so does the
//! replay test, which runs every committed seed and regression through them.
//!
//! Results are discarded on purpose: an error is a fine answer to garbage.
//! Where a body checks a property (`assert!`), it is one bty-core documents.

use std::cell::RefCell;
use std::io::{Cursor, Read, Seek, SeekFrom, Write};

use bty_core::source::Source;
use bty_core::{bmap, catalog, format, inspect, partition, qcow2, simg};

/// A target body: arbitrary bytes in, nothing out.
pub type Body = fn(&[u8]);

/// Every target: its name (the directory of its seeds and regressions, and
/// the name of its afl binary) and its body.
pub const TARGETS: &[(&str, Body)] = &[
    ("format", format),
    ("qcow2", qcow2),
    ("simg", simg),
    ("bmap", bmap),
    ("partition", partition),
    ("catalog", catalog),
    ("tftp", tftp),
    ("dhcp", dhcp),
];

/// The body of the target called `name`.
pub fn target(name: &str) -> Option<Body> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

/// How much of a decoded disk the readers are asked for. A few KiB of
/// header can describe an exabyte of zeros (that is what sparse formats are
/// for), so reading to the end would measure memset, not find bugs; the
/// first MiBs cover every code path a longer read would.
const MAX_DECODED: u64 = 8 << 20;

/// Read `r` to its end or to `limit` bytes, in uneven pieces so that reads
/// straddle cluster, chunk and block boundaries. Errors end the read.
fn drain(r: &mut impl Read, limit: u64) -> u64 {
    let mut buf = vec![0u8; 65_537];
    let sizes = [1usize, 511, 4096, 65_537, 3];
    let mut total = 0u64;
    for i in 0.. {
        if total >= limit {
            break;
        }
        let want = sizes[i % sizes.len()].min((limit - total) as usize);
        match r.read(&mut buf[..want]) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                assert!(n <= want, "a reader claimed {n} bytes read into a {want}-byte buffer");
                total += n as u64;
            }
        }
    }
    total
}

/// Input layout: an image name, a NUL byte, then the image file. Without a
/// NUL in the first 256 bytes the whole input is the file, unnamed. The name
/// matters: it decides between raw and a refusal for data without a magic.
fn split_name(data: &[u8]) -> (String, &[u8]) {
    match data.iter().take(256).position(|&b| b == 0) {
        Some(at) => (String::from_utf8_lossy(&data[..at]).into_owned(), &data[at + 1..]),
        None => (String::new(), data),
    }
}

/// A file name that can exist in a directory and keeps what detection reads
/// from the name (its suffixes).
fn file_name_for(name: &str) -> String {
    let base = name.rsplit('/').next().unwrap_or_default();
    let safe: String =
        base.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')).take(64).collect();
    if safe.trim_matches('.').is_empty() {
        "image".into()
    } else {
        safe
    }
}

thread_local! {
    /// One directory per process (afl runs many inputs in one process; the
    /// replay test runs targets on parallel threads).
    static SCRATCH: RefCell<Option<tempfile::TempDir>> = const { RefCell::new(None) };
}

/// Run `f` on a file named `name` holding `bytes`, in a private directory
/// that holds nothing else (so no sidecar is ever found next to it).
fn with_file<T>(name: &str, bytes: &[u8], f: impl FnOnce(&std::path::Path) -> T) -> T {
    SCRATCH.with(|cell| {
        let mut dir = cell.borrow_mut();
        let dir = dir.get_or_insert_with(|| tempfile::tempdir().expect("a scratch directory"));
        for e in std::fs::read_dir(dir.path()).expect("the scratch directory").flatten() {
            let _ = std::fs::remove_file(e.path());
        }
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).expect("writing the scratch file");
        f(&path)
    })
}

/// Format detection from the head (and tail) bytes and the name, then
/// `bty inspect` of the file: the size probes of every format, the first
/// MiB through its decoder (lz4, zip, gzip and bzip2 members, zstd, xz,
/// lzma, simg, qcow2), the check for a packed file inside, and the
/// partition table of what comes out.
pub fn format(data: &[u8]) {
    let (name, file) = split_name(data);
    let head = &file[..file.len().min(format::MAGIC_LEN)];
    let tail = &file[file.len().saturating_sub(format::TAIL_LEN)..];
    let detected = format::detect_with_tail(head, tail, &name);
    let _ = format::detect(head, &name);
    let _ = format::from_name(&name);
    let _ = format::arch_hint(&name);
    let _ = format::ImageFormat::parse(&name);
    if let Ok(f) = detected {
        let _ = format::refuse_inner(head, &name, f);
    }
    with_file(&file_name_for(&name), file, |path| {
        let src = Source::File(path.to_path_buf());
        let _ = inspect::inspect(&src);
        if let Ok(f) = format::detect_source(&src, head) {
            let _ = inspect::virtual_size(&src, f, head);
        }
    });
}

/// The qcow2 reader: header parsing and checks, the L1 table, the map of
/// allocated clusters, and the virtual disk read through it (the first
/// [`MAX_DECODED`] bytes: compressed, zero and data clusters alike).
pub fn qcow2(data: &[u8]) {
    if let Ok(h) = qcow2::parse_header(data) {
        let _ = h.warnings();
        let _ = h.check_supported();
        let _ = h.check_tables(data.len() as u64);
    }
    let Ok(mut r) = qcow2::Qcow2Reader::open(Cursor::new(data)) else { return };
    let size = r.virtual_size();
    // The map walks every cluster of the disk; a bigger disk only repeats
    // the same L2 lookups.
    if size <= MAX_DECODED {
        if let Ok(extents) = r.allocated_extents() {
            let mut end = 0;
            for (off, len) in extents {
                assert!(off >= end && len > 0, "extents are sorted, disjoint and not empty");
                end = off + len;
                assert!(end <= size, "an extent ends at {end}, past the {size}-byte disk");
            }
        }
    }
    let read = drain(&mut r, MAX_DECODED);
    assert!(read <= size, "read {read} bytes of a {size}-byte disk");
}

/// The Android sparse image header and the streaming reader over it.
pub fn simg(data: &[u8]) {
    let size = simg::Header::parse(data).map(|h| h.virtual_size());
    let mut r = simg::Reader::new(data);
    let read = drain(&mut r, MAX_DECODED);
    if let Ok(size) = size {
        assert!(read <= size, "read {read} bytes of a {size}-byte image");
    }
}

/// Block maps: plain, clearsigned and damaged, with and without the
/// map's own checksum, and what the flash plan derives from a loaded map.
pub fn bmap(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = bmap::clearsigned_message(&text);
    let _ = bmap::parse(&text);
    let _ = bmap::load(&text, false);
    let Ok(b) = bmap::load(&text, true) else { return };
    let _ = bmap::notes(&b);
    let mut end = 0;
    for (off, len) in b.byte_ranges() {
        assert!(off >= end, "ranges are sorted and disjoint");
        end = off.saturating_add(len);
        assert!(end <= b.image_size, "a range ends at {end}, past the {}-byte image", b.image_size);
    }
    let _ = b.mapped_bytes();
}

/// GPT and MBR tables read from an image head, and the relocation of the
/// backup GPT run on that head as if it had been written to a disk larger
/// than itself (and to one exactly its size).
pub fn partition(data: &[u8]) {
    if let Ok(Some(t)) = partition::read_table(data) {
        let _ = t.span_bytes();
    }
    // tmpfs where there is one: the relocation syncs the file after each
    // write, which on a disk would be most of the time spent here.
    let Ok(mut f) = tempfile::tempfile_in("/dev/shm").or_else(|_| tempfile::tempfile()) else { return };
    for disk_size in [data.len() as u64, data.len() as u64 + (1 << 20)] {
        for sector_size in [512, 4096] {
            let written = f
                .set_len(0)
                .and_then(|()| f.seek(SeekFrom::Start(0)))
                .and_then(|_| f.write_all(data))
                .and_then(|()| f.set_len(disk_size));
            if written.is_ok() {
                let _ = partition::relocate_gpt_backup(&f, disk_size, sector_size);
            }
        }
    }
}

/// `catalog.toml` parsing and validation; a catalog that parses renders
/// back to TOML that parses to the same catalog, as `Catalog::to_toml` says.
pub fn catalog(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = catalog::valid_image_name(&text);
    let Ok(c) = catalog::Catalog::parse(&text) else { return };
    let again = catalog::Catalog::parse(&c.to_toml()).expect("a rendered catalog parses");
    assert_eq!(again, c, "a catalog changes through to_toml and parse");
}

/// A TFTP packet: parsed without panicking, and a request's options
/// negotiated within RFC 2348/7440's bounds into an OACK that parses back
/// and names only options the request asked for.
pub fn tftp(data: &[u8]) {
    use bty_netboot::tftp::{self, packet};
    let Ok(p) = packet::parse(data) else { return };
    let packet::Packet::Request { options, filename, .. } = &p else { return };
    let _ = tftp::allowed_name(filename);
    let n = tftp::negotiate(options, data.len() as u64, 1468);
    assert!((8..=1468).contains(&n.blksize), "blksize {}", n.blksize);
    assert!((1..=tftp::MAX_WINDOW).contains(&n.windowsize), "windowsize {}", n.windowsize);
    // With no option to answer, the server sends no OACK but the first block.
    if n.oack.is_empty() {
        return;
    }
    let oack = packet::oack(&n.oack);
    let Ok(packet::Packet::Oack { options: back }) = packet::parse(&oack) else {
        panic!("our OACK does not parse: {oack:?}")
    };
    for (name, _) in back {
        assert!(
            options.iter().any(|(asked, _)| asked.eq_ignore_ascii_case(name)),
            "{name} was not asked for"
        );
    }
}

/// A DHCP message: parsed without panicking; any answer the ProxyDHCP
/// service makes parses back, keeps the transaction, and assigns no address.
pub fn dhcp(data: &[u8]) {
    use bty_netboot::dhcp::{self, packet, Port, ProxyConfig};
    let Ok(m) = packet::parse(data) else { return };
    let _ = dhcp::classify(&m);
    let cfg = ProxyConfig::new(None, std::net::Ipv4Addr::new(10, 0, 0, 2), "http://10.0.0.2:8080".into());
    for port in [Port::Dhcp, Port::BootServer] {
        let Some((raw, _)) = dhcp::answer(&m, port, &cfg) else { continue };
        if raw.is_empty() {
            continue;
        }
        let r = packet::parse(&raw).expect("our reply parses");
        assert_eq!(r.xid, m.xid);
        assert_eq!(r.yiaddr, std::net::Ipv4Addr::UNSPECIFIED, "a proxy never assigns an address");
        assert_eq!(r.op, packet::BOOTREPLY);
    }
    let encoded = m.encode();
    let again = packet::parse(&encoded).expect("a message re-encodes");
    assert_eq!(again.xid, m.xid);
}
