//! Real-world images flash exactly or are refused: qcow2 headers checked as
//! qemu checks them, SHA-1 and clearsigned block maps, padded gzip and bzip2
//! files, `file:` URLs and origins whose HEAD fails. Fixtures are made with
//! the stock tools (qemu-img, gzip, bzip2) at test time.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

const MIB: usize = 1 << 20;

fn qemu_img() -> bool {
    let ok = have("qemu-img");
    if !ok {
        eprintln!("skipping: qemu-img is not installed (apt install qemu-utils)");
    }
    ok
}

fn sh(cmd: &str) {
    let o = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(o.status.success(), "{cmd}: {}", String::from_utf8_lossy(&o.stderr));
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Overwrite big-endian `value` (`width` bytes) at `at` in a copy of `src`.
fn patched(src: &Path, name: &str, at: usize, width: usize, value: u64) -> PathBuf {
    let mut b = std::fs::read(src).unwrap();
    b[at..at + width].copy_from_slice(&value.to_be_bytes()[8 - width..]);
    let p = src.with_file_name(name);
    std::fs::write(&p, b).unwrap();
    p
}

fn flash(src: &str, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["flash", src, s(out), "--yes"];
    args.extend_from_slice(extra);
    run(&args)
}

/// What `qemu-img convert -O raw` makes of `q`.
fn qemu_raw(q: &Path) -> Vec<u8> {
    let out = q.with_extension("ref.raw");
    sh(&format!("qemu-img convert -O raw '{}' '{}'", q.display(), out.display()));
    std::fs::read(out).unwrap()
}

fn qcow2_fixture(dir: &Path) -> (PathBuf, Vec<u8>) {
    let raw = dir.join("disk.img");
    let data = image_bytes(3 * MIB, 11);
    write_file(&raw, &data);
    (compress(&raw, "qcow2"), data)
}

#[test]
fn damaged_qcow2_headers_are_integrity_failures_not_zeros() {
    if !qemu_img() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (q, _) = qcow2_fixture(dir.path());
    let l1 = u64::from_be_bytes(std::fs::read(&q).unwrap()[40..48].try_into().unwrap());
    let len = std::fs::metadata(&q).unwrap().len();
    let misaligned = patched(&q, "misaligned.qcow2", 40, 8, l1 + 512);
    let past_end = patched(&q, "past-end.qcow2", 40, 8, (len / 65536 + 4) * 65536);
    for (p, want) in [(misaligned, "active L1 table offset"), (past_end, "past the end")] {
        let out = dir.path().join("out.img");
        let o = flash(s(&p), &out, &[]);
        assert_eq!(code(&o), 4, "{}: {}{}", p.display(), stdout(&o), stderr(&o));
        assert!(stderr(&o).contains(want) && stderr(&o).contains("damaged"), "{}", stderr(&o));
        assert!(!out.exists(), "nothing is written for a damaged header");
        let o = run(&["flash", s(&p), s(&out), "--dry-run"]);
        assert_eq!(code(&o), 4, "the plan refuses it too: {}", stderr(&o));
    }
    // qemu-img itself refuses the misaligned one.
    let o =
        Command::new("qemu-img").args(["info"]).arg(dir.path().join("misaligned.qcow2")).output().unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("Active L1 table offset invalid"));
}

#[test]
fn qcow2_marked_corrupt_flashes_with_a_warning() {
    if !qemu_img() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (q, data) = qcow2_fixture(dir.path());
    let p = patched(&q, "corrupt.qcow2", 72, 8, 1 << 1);
    let out = dir.path().join("out.img");
    let o = flash(s(&p), &out, &["--verify"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).contains("WARNING: qcow2 image is marked corrupt"), "{}", stdout(&o));
    assert!(std::fs::read(&out).unwrap() == data);
    assert!(qemu_raw(&p) == data, "qemu-img convert reads it the same way");
}

#[test]
fn qcow2_layouts_bty_cannot_reproduce_are_refused_by_name() {
    if !qemu_img() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (base, _) = qcow2_fixture(d);
    let top = d.join("top.qcow2");
    sh(&format!("qemu-img create -q -f qcow2 -F qcow2 -b '{}' '{}'", base.display(), top.display()));
    let ext = d.join("ext.qcow2");
    let data_file = d.join("ext.data");
    sh(&format!("qemu-img create -q -f qcow2 -o data_file='{}' '{}' 1M", data_file.display(), ext.display()));
    let sub = d.join("sub.qcow2");
    sh(&format!("qemu-img create -q -f qcow2 -o extended_l2=on '{}' 1M", sub.display()));
    let base_name = base.display().to_string();
    let data_name = data_file.display().to_string();
    let cases = [
        (&top, vec![format!("has a backing file {base_name}"), "qemu-img convert -O qcow2 IN OUT".into()]),
        (&ext, vec![format!("external data file {data_name}")]),
        (&sub, vec!["extended L2".to_string()]),
    ];
    for (p, wants) in cases {
        let o = flash(s(p), &d.join("out.img"), &[]);
        assert_eq!(code(&o), 1, "{}: {}", p.display(), stderr(&o));
        for w in wants {
            assert!(stderr(&o).contains(&w), "{}: want {w:?} in {}", p.display(), stderr(&o));
        }
        assert!(!d.join("out.img").exists());
    }
}

#[test]
fn qcow2_zstd_and_odd_sizes_match_qemu_img_convert() {
    if !qemu_img() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let raw = d.join("odd.img");
    write_file(&raw, &image_bytes(MIB + 30, 5));
    let zstd = d.join("zstd.qcow2");
    let made = Command::new("qemu-img")
        .args(["convert", "-q", "-c", "-f", "raw", "-O", "qcow2", "-o", "compression_type=zstd"])
        .arg(&raw)
        .arg(&zstd)
        .status()
        .unwrap()
        .success();
    let plain = d.join("plain.qcow2");
    sh(&format!("qemu-img convert -q -f raw -O qcow2 '{}' '{}'", raw.display(), plain.display()));
    // qemu-img rounds a new image's size up to 512; a header stating 1 MiB + 30
    // (other writers) is read by qemu as its first 1 MiB.
    let stated = patched(&plain, "stated.qcow2", 24, 8, (MIB + 30) as u64);
    let mut images = vec![plain, stated];
    if made {
        images.push(zstd);
    } else {
        eprintln!("this qemu-img cannot write zstd-compressed qcow2; that variant is skipped");
    }
    for q in images {
        let out = d.join("out.img");
        let o = flash(s(&q), &out, &[]);
        assert_eq!(code(&o), 0, "{}: {}", q.display(), stderr(&o));
        let want = qemu_raw(&q);
        let got = std::fs::read(&out).unwrap();
        assert_eq!(got.len(), want.len(), "{}", q.display());
        assert!(got == want, "{}: bytes differ from qemu-img convert", q.display());
    }
}

/// An image whose 4 KiB blocks are mapped in `ranges`, and a bmap `version`
/// written by hand with `ty` checksums; `file_sum` fills in the file's own
/// checksum in the tag that version uses.
struct BmapCase {
    data: Vec<u8>,
    image: PathBuf,
}

const BS: usize = 4096;
const RANGES: [(usize, usize); 3] = [(0, 3), (10, 10), (40, 63)];

fn bmap_image(dir: &Path) -> BmapCase {
    let mut data = vec![0u8; 64 * BS];
    for &(a, b) in &RANGES {
        for blk in a..=b {
            data[blk * BS..(blk + 1) * BS].fill((blk % 251) as u8 + 1);
        }
    }
    let image = dir.join("map.img");
    write_file(&image, &data);
    BmapCase { data, image }
}

fn hex_digest(ty: &str, data: &[u8]) -> String {
    let t =
        if ty == "sha1" { bty_core::bmap::ChecksumType::Sha1 } else { bty_core::bmap::ChecksumType::Sha256 };
    t.hex_digest(data)
}

fn bmap_xml(c: &BmapCase, version: &str, ty: &str, file_sum: bool) -> String {
    let v13 = version == "1.3";
    let attr = if v13 { "sha1" } else { "chksum" };
    let ranges: String = RANGES
        .iter()
        .map(|&(a, b)| {
            let sum = hex_digest(ty, &c.data[a * BS..(b + 1) * BS]);
            let span = if a == b { a.to_string() } else { format!("{a}-{b}") };
            format!("        <Range {attr}=\"{sum}\"> {span} </Range>\n")
        })
        .collect();
    let mapped: usize = RANGES.iter().map(|(a, b)| b - a + 1).sum();
    let zeros = "0".repeat(if ty == "sha1" { 40 } else { 64 });
    let (tag, kind) = if v13 {
        ("BmapFileSHA1", String::new())
    } else {
        ("BmapFileChecksum", format!("    <ChecksumType> {ty} </ChecksumType>\n"))
    };
    let sum_line = if file_sum { format!("    <{tag}> {zeros} </{tag}>\n") } else { String::new() };
    let xml = format!(
        "<?xml version=\"1.0\" ?>\n<!-- written by hand -->\n<bmap version=\"{version}\">\n    <ImageSize> {} \
         </ImageSize>\n    <BlockSize> {BS} </BlockSize>\n    <BlocksCount> 64 </BlocksCount>\n    \
         <MappedBlocksCount> {mapped} </MappedBlocksCount>\n{kind}{sum_line}    <BlockMap>\n{ranges}    \
         </BlockMap>\n</bmap>\n",
        c.data.len()
    );
    if file_sum {
        xml.replacen(&zeros, &hex_digest(ty, xml.as_bytes()), 1)
    } else {
        xml
    }
}

fn flash_with_bmap(c: &BmapCase, bmap: &str, extra: &[&str]) -> (std::process::Output, Vec<u8>) {
    let out = c.image.with_file_name("out.img");
    write_file(&out, &vec![0xEE; c.data.len()]);
    let mut args = vec!["--bmap", bmap, "--verify"];
    args.extend_from_slice(extra);
    let o = flash(s(&c.image), &out, &args);
    (o, std::fs::read(&out).unwrap())
}

fn mapped_equal(c: &BmapCase, got: &[u8]) -> bool {
    RANGES.iter().all(|&(a, b)| got[a * BS..(b + 1) * BS] == c.data[a * BS..(b + 1) * BS])
}

#[test]
fn sha1_block_maps_are_verified_per_range() {
    let dir = tempfile::tempdir().unwrap();
    let c = bmap_image(dir.path());
    for (version, ty) in [("1.3", "sha1"), ("2.0", "sha1")] {
        let bmap = dir.path().join("map.bmap");
        std::fs::write(&bmap, bmap_xml(&c, version, ty, true)).unwrap();
        let (o, got) = flash_with_bmap(&c, s(&bmap), &[]);
        assert_eq!(code(&o), 0, "{version}: {}{}", stdout(&o), stderr(&o));
        assert!(mapped_equal(&c, &got));

        // A damaged image: one mapped byte changed is caught by its range's SHA-1.
        let mut bad = c.data.clone();
        bad[10 * BS + 7] ^= 1;
        let damaged = BmapCase { data: bad, image: dir.path().join("damaged.img") };
        write_file(&damaged.image, &damaged.data);
        let (o, _) = flash_with_bmap(&damaged, s(&bmap), &[]);
        assert_eq!(code(&o), 4, "{}", stderr(&o));
        assert!(stderr(&o).contains("SHA1"), "{}", stderr(&o));
    }
}

#[test]
fn a_block_map_without_its_own_checksum_needs_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let c = bmap_image(dir.path());
    let bmap = dir.path().join("map.bmap");
    std::fs::write(&bmap, bmap_xml(&c, "2.0", "sha256", false)).unwrap();
    let (o, _) = flash_with_bmap(&c, s(&bmap), &[]);
    assert_eq!(code(&o), 4, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("BmapFileChecksum") && stderr(&o).contains("--bmap-unverified"),
        "{}",
        stderr(&o)
    );
    let (o, got) = flash_with_bmap(&c, s(&bmap), &["--bmap-unverified"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).contains("no checksum of its own"), "{}", stdout(&o));
    assert!(mapped_equal(&c, &got));
    // A damaged map (its text changed after it was written) is exit 4 too.
    let good = bmap_xml(&c, "2.0", "sha256", true);
    std::fs::write(&bmap, good.replace("written by hand", "written by hand!")).unwrap();
    let (o, _) = flash_with_bmap(&c, s(&bmap), &[]);
    assert_eq!(code(&o), 4, "{}", stderr(&o));
}

/// `gpg --clearsign` output, made by hand: armor headers, dash-escaped
/// lines, a signature block (never checked, so any bytes do).
fn clearsign(text: &str) -> String {
    let mut out = "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n\n".to_string();
    for line in text.lines() {
        if line.starts_with('-') {
            out += "- ";
        }
        out += line;
        out += "\n";
    }
    out + "-----BEGIN PGP SIGNATURE-----\n\niHUEARYKAB0WIQTe\n=Zz0q\n-----END PGP SIGNATURE-----\n"
}

#[test]
fn clearsigned_block_maps_are_found_and_read() {
    let dir = tempfile::tempdir().unwrap();
    let c = bmap_image(dir.path());
    // A line starting with a dash is escaped in the signed message.
    let xml =
        bmap_xml(&c, "2.0", "sha256", false).replace("<!-- written by hand -->", "<!--\n-- by hand -->");
    let zeros = "0".repeat(64);
    let xml = xml.replace(
        "    <BlockMap>",
        &format!("    <BmapFileChecksum> {zeros} </BmapFileChecksum>\n    <BlockMap>"),
    );
    let xml = xml.replacen(&zeros, &hex_digest("sha256", xml.as_bytes()), 1);
    let signed = clearsign(&xml);
    assert!(signed.contains("\n- -- by hand"));
    std::fs::write(dir.path().join("map.img.bmap.asc"), &signed).unwrap();
    let (o, got) = flash_with_bmap(&c, "auto", &[]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("does not check the signature"), "{}", stdout(&o));
    assert!(mapped_equal(&c, &got));

    // Changed inside the signature: refused, and not called damaged.
    std::fs::write(
        dir.path().join("map.img.bmap.asc"),
        signed.replace("<BlockSize> 4096", "<BlockSize>  4096"),
    )
    .unwrap();
    let (o, _) = flash_with_bmap(&c, "auto", &[]);
    assert_eq!(code(&o), 4, "{}", stderr(&o));
    assert!(stderr(&o).contains("bty does not check the signature"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("damaged"), "{}", stderr(&o));

    std::fs::remove_file(dir.path().join("map.img.bmap.asc")).unwrap();
    let (o, _) = flash_with_bmap(&c, "auto", &[]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("no block map next to"), "{}", stderr(&o));
}

#[test]
fn zero_padding_after_gzip_and_bzip2_is_ignored_and_noted() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("pad.img");
    let data = image_bytes(2 * MIB, 9);
    write_file(&raw, &data);
    for ext in ["gz", "bz2"] {
        let packed = std::fs::read(compress(&raw, ext)).unwrap();
        let padded = dir.path().join(format!("padded.img.{ext}"));
        write_file(&padded, &[packed.clone(), vec![0u8; 4096]].concat());
        let tool = if ext == "gz" { "gzip" } else { "bzip2" };
        // The reference tool decodes it to the same bytes.
        let o = Command::new(tool).arg("-dc").arg(&padded).output().unwrap();
        assert!(o.stdout == data, "{tool} -dc");
        let out = dir.path().join("out.img");
        let o = flash(s(&padded), &out, &["--verify"]);
        assert_eq!(code(&o), 0, "{ext}: {}", stderr(&o));
        assert!(stdout(&o).contains("4096 bytes of zero padding after the"), "{}", stdout(&o));
        assert!(std::fs::read(&out).unwrap() == data);

        let junk = dir.path().join(format!("junk.img.{ext}"));
        write_file(&junk, &[packed.clone(), vec![0u8; 512], b"trailing junk".to_vec()].concat());
        let o = flash(s(&junk), &out, &[]);
        assert_eq!(code(&o), 4, "{ext}: {}", stderr(&o));
        assert!(stderr(&o).contains("neither another one nor zero padding"), "{}", stderr(&o));
        assert!(!stdout(&o).contains("flashed"));
    }
}

#[test]
fn multi_member_gzip_decodes_fully_and_its_size_is_unknown() {
    let dir = tempfile::tempdir().unwrap();
    let a = image_bytes(MIB, 1);
    let b = image_bytes(MIB / 2, 2);
    let (pa, pb) = (dir.path().join("a.img"), dir.path().join("b.img"));
    write_file(&pa, &a);
    write_file(&pb, &b);
    let two = dir.path().join("two.img.gz");
    write_file(
        &two,
        &[std::fs::read(compress(&pa, "gz")).unwrap(), std::fs::read(compress(&pb, "gz")).unwrap()].concat(),
    );
    let out = dir.path().join("out.img");
    let o = flash(s(&two), &out, &[]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(std::fs::read(&out).unwrap() == [a, b.clone()].concat());
    // The last member's ISIZE (512 KiB) is not the image's size.
    let o = run(&["inspect", s(&two), "--json"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert!(v["virtual_size"].is_null() && v["virtual_size_hint"].is_null(), "{v}");
    assert!(v["virtual_size_source"].as_str().unwrap().starts_with("unknown"), "{v}");
    let o = run(&["inspect", s(&two)]);
    assert!(!stdout(&o).contains(&b.len().to_string()), "{}", stdout(&o));
}

#[test]
fn file_urls_with_one_slash_and_other_hosts() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("u.img");
    let data = image_bytes(MIB, 4);
    write_file(&raw, &data);
    let out = dir.path().join("out.img");
    for url in [
        format!("file:{}", raw.display()),
        format!("file://{}", raw.display()),
        format!("file://localhost{}", raw.display()),
    ] {
        let o = flash(&url, &out, &[]);
        assert_eq!(code(&o), 0, "{url}: {}", stderr(&o));
        assert!(std::fs::read(&out).unwrap() == data);
    }
    let o = flash(&format!("file://nas{}", raw.display()), &out, &[]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("host `nas`") && stderr(&o).contains("local files"), "{}", stderr(&o));
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Get {
    /// 206 with Content-Range for a ranged GET.
    Ranges,
    /// Ranges ignored: 200 with the whole Content-Length.
    Whole,
    /// Ranges ignored and no Content-Length: the body ends with the connection.
    NoLength,
}

/// An origin whose HEAD fails with `head_status` and an error page; GET
/// serves `body` as `get` says.
fn serve_bad_head(body: Vec<u8>, head_status: &'static str, get: Get) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut c) = conn else { return };
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match c.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let text = String::from_utf8_lossy(&req).to_string();
            let path = text.split_whitespace().nth(1).unwrap_or("/").to_string();
            if path.ends_with(".sha256") || path.ends_with(".bmap") {
                let _ =
                    c.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                continue;
            }
            if text.starts_with("HEAD") {
                let page = "<html>method not implemented</html>";
                let _ = write!(
                    c,
                    "HTTP/1.1 {head_status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    page.len()
                );
                continue;
            }
            let range = text
                .lines()
                .find(|l| l.to_ascii_lowercase().starts_with("range: bytes="))
                .map(|l| l[13..].trim().to_string());
            match range.filter(|_| get == Get::Ranges) {
                Some(r) => {
                    let (a, b) = r.split_once('-').unwrap();
                    let (a, b): (usize, usize) =
                        (a.parse().unwrap(), b.parse::<usize>().unwrap().min(body.len() - 1));
                    let _ = write!(
                        c,
                        "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {a}-{b}/{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len(),
                        b + 1 - a
                    );
                    let _ = c.write_all(&body[a..=b]);
                }
                None if get == Get::NoLength => {
                    let _ = write!(c, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
                    let _ = c.write_all(&body);
                }
                None => {
                    let _ = write!(
                        c,
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = c.write_all(&body);
                }
            }
        }
    });
    format!("http://{addr}")
}

#[test]
fn a_failing_head_never_gives_the_error_pages_length_as_the_size() {
    let dir = tempfile::tempdir().unwrap();
    let data = image_bytes(MIB, 8);
    let out = dir.path().join("out.img");
    let cases = [
        ("501 Not Implemented", Get::Ranges, Some(data.len() as u64)),
        ("405 Method Not Allowed", Get::Whole, Some(data.len() as u64)),
        ("501 Not Implemented", Get::NoLength, None),
    ];
    for (status, get, size) in cases {
        let base = serve_bad_head(data.clone(), status, get);
        let url = format!("{base}/disk.img");
        let o = run(&["flash", &url, s(&out), "--dry-run", "--json"]);
        assert_eq!(code(&o), 0, "{status}: {}{}", stdout(&o), stderr(&o));
        let plan: serde_json::Value = serde_json::from_str(stdout(&o).lines().next().unwrap()).unwrap();
        assert_eq!(plan["plan"]["published_size"], serde_json::json!(size), "{status} {get:?}: {plan}");
        let o = run(&["inspect", &url, "--json"]);
        let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        assert_eq!(v["compressed_size"], serde_json::json!(size), "{status} {get:?}: {v}");
        if size.is_none() {
            let o = run(&["inspect", &url]);
            let line = stdout(&o).lines().find(|l| l.starts_with("published:")).unwrap().to_string();
            assert!(line.ends_with("unknown"), "{line}");
        }
        let o = flash(&url, &out, &[]);
        assert_eq!(code(&o), 0, "{status}: {}", stderr(&o));
        assert!(std::fs::read(&out).unwrap() == data);
    }
}

/// The sync phase is one fsync: its event carries the bytes written and no
/// total, so no front end draws a percentage for it.
#[test]
fn the_sync_phase_reports_what_was_written_and_no_total() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("s.img");
    write_file(&raw, &image_bytes(2 * MIB, 6));
    let o = flash(s(&raw), &dir.path().join("out.img"), &["--json"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let events: Vec<serde_json::Value> =
        stdout(&o).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let sync = events.iter().find(|e| e["phase"] == "sync").expect("a sync event");
    assert_eq!(sync["bytes"], (2 * MIB) as u64, "{sync}");
    assert!(sync["total"].is_null() && sync["source_total"].is_null(), "{sync}");
    let writes: Vec<u64> =
        events.iter().filter(|e| e["phase"] == "write").map(|e| e["bytes"].as_u64().unwrap()).collect();
    assert_eq!(writes.last(), Some(&((2 * MIB) as u64)));
}
