//! `bty flash` and `bty inspect` on the formats beyond the compressors of
//! flash.rs, made by the real tools: lz4 (frame, legacy, concatenated), LZMA-alone,
//! zip (deflate, stored, streamed, ZIP64, with a directory), Android sparse
//! images; their damaged copies; and the formats refused by name.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

const MIB: usize = 1 << 20;

/// 6 MiB of data with zero blocks, then 3 MiB of zeros: holes for the
/// sparse formats to describe and for the writer to leave in the target.
fn fixture(dir: &Path) -> (PathBuf, Vec<u8>) {
    let mut data = image_bytes(6 * MIB + 4096, 11);
    data.extend(vec![0u8; 3 * MIB]);
    let raw = dir.join("disk.img");
    write_file(&raw, &data);
    (raw, data)
}

/// Run a shell command in `dir`; `false` (with the reason printed) when it fails.
fn sh(dir: &Path, cmd: &str) -> bool {
    let o = Command::new("sh").arg("-c").arg(cmd).current_dir(dir).output().expect("run sh");
    if !o.status.success() {
        eprintln!("`{cmd}` failed: {}", String::from_utf8_lossy(&o.stderr));
    }
    o.status.success()
}

/// The tools each case needs; a missing one is installed when we are root
/// (as CI is), else the case is skipped with the reason printed.
fn ensure(tools: &[(&str, &str)]) -> bool {
    let missing: Vec<&str> = tools.iter().filter(|(t, _)| !have(t)).map(|(_, p)| *p).collect();
    if missing.is_empty() {
        return true;
    }
    if is_root() {
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends {} >/dev/null 2>&1",
                missing.join(" ")
            ))
            .status();
    }
    let still: Vec<&str> = tools.iter().filter(|(t, _)| !have(t)).map(|(t, _)| *t).collect();
    if !still.is_empty() {
        eprintln!("skipping: {} not installed and cannot be installed here", still.join(", "));
        return false;
    }
    true
}

const TOOLS: &[(&str, &str)] = &[
    ("lz4", "lz4"),
    ("xz", "xz-utils"),
    ("zip", "zip"),
    ("img2simg", "android-sdk-libsparse-utils"),
    ("simg2img", "android-sdk-libsparse-utils"),
];

/// (file name, shell command making it from disk.img in the same directory).
const CASES: &[(&str, &str)] = &[
    ("disk.img.lz4", "lz4 -q -f disk.img disk.img.lz4"),
    ("linked.img.lz4", "lz4 -q -f --content-size -BD -BX -B4 disk.img linked.img.lz4"),
    ("legacy.img.lz4", "lz4 -q -f -l disk.img legacy.img.lz4"),
    (
        "two.img.lz4",
        "head -c 3000000 disk.img | lz4 -q > two.img.lz4 && tail -c +3000001 disk.img | lz4 -q --content-size >> two.img.lz4",
    ),
    ("disk.img.lzma", "xz --format=lzma -1 -c disk.img > disk.img.lzma"),
    ("disk.img.zip", "zip -q disk.img.zip disk.img"),
    ("stored.zip", "zip -q -0 stored.zip disk.img"),
    ("streamed.zip", "cat disk.img | zip -q > streamed.zip"),
    ("zip64.zip", "zip -q -fz zip64.zip disk.img"),
    ("indir.zip", "mkdir -p d/sub && cp disk.img d/sub/ && zip -q -r indir.zip d"),
    ("disk.simg", "img2simg disk.img disk.simg"),
];

fn made(dir: &Path) -> Vec<(PathBuf, &'static str)> {
    CASES
        .iter()
        .map(|(name, cmd)| {
            assert!(sh(dir, cmd), "making {name}");
            (dir.join(name), *name)
        })
        .collect()
}

#[test]
fn every_new_format_flashes_byte_exact() {
    use std::os::unix::fs::MetadataExt;
    if !ensure(TOOLS) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_, data) = fixture(dir.path());
    for (src, name) in made(dir.path()) {
        let out = dir.path().join("out.img");
        let _ = std::fs::remove_file(&out);
        let o = run(&["flash", src.to_str().unwrap(), out.to_str().unwrap(), "--yes", "--verify"]);
        assert_eq!(code(&o), 0, "{name}: {}{}", stdout(&o), stderr(&o));
        assert!(std::fs::read(&out).unwrap() == data, "{name} wrote different bytes");
        let meta = std::fs::metadata(&out).unwrap();
        assert!(meta.blocks() * 512 < 8 * MIB as u64, "{name}: the target should have holes");
    }
    // The sparse image against the reference tool's output, too.
    assert!(sh(dir.path(), "simg2img disk.simg ref.img"));
    let out = dir.path().join("sim.img");
    let o = run(&["flash", dir.path().join("disk.simg").to_str().unwrap(), out.to_str().unwrap(), "--yes"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(std::fs::read(&out).unwrap() == std::fs::read(dir.path().join("ref.img")).unwrap());
}

#[test]
fn inspect_reports_the_new_formats_and_their_sizes() {
    if !ensure(TOOLS) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_, data) = fixture(dir.path());
    let cases = made(dir.path());
    let want: &[(&str, &str, Option<&str>)] = &[
        ("disk.img.lz4", "lz4", None),
        ("linked.img.lz4", "lz4", Some("lz4 frame header")),
        ("legacy.img.lz4", "lz4", None),
        ("disk.img.lzma", "lzma", None),
        ("disk.img.zip", "zip", Some("zip entry size (disk.img)")),
        ("streamed.zip", "zip", Some("zip entry size (-)")),
        ("zip64.zip", "zip", Some("zip entry size (disk.img)")),
        ("indir.zip", "zip", Some("zip entry size (d/sub/disk.img)")),
        ("disk.simg", "simg", Some("simg header")),
    ];
    for (name, format, source) in want {
        let (src, _) = cases.iter().find(|(_, n)| n == name).unwrap();
        let o = run(&["inspect", src.to_str().unwrap(), "--json"]);
        assert_eq!(code(&o), 0, "{name}: {}", stderr(&o));
        let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        assert_eq!(v["format"], *format, "{name}");
        match source {
            Some(s) => {
                assert_eq!(v["virtual_size"], data.len() as u64, "{name}: {v}");
                assert_eq!(v["virtual_size_source"], *s, "{name}");
            }
            None => {
                assert!(v["virtual_size"].is_null(), "{name}: {v}");
                assert!(v["virtual_size_source"].as_str().unwrap().starts_with("unknown"), "{name}: {v}");
            }
        }
        let o = run(&["inspect", src.to_str().unwrap()]);
        assert!(stdout(&o).contains(&format!("format:     {format}")), "{}", stdout(&o));
    }
}

fn assert_fails_4(src: &Path, what: &str) {
    let out = src.with_extension("out");
    let o = run(&["flash", src.to_str().unwrap(), out.to_str().unwrap(), "--yes"]);
    assert_eq!(code(&o), 4, "{what}: exit {}: {}{}", code(&o), stdout(&o), stderr(&o));
    assert!(!stdout(&o).contains("flashed"), "{what} reported success: {}", stdout(&o));
}

#[test]
fn truncated_and_corrupted_copies_fail_with_4() {
    if !ensure(TOOLS) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path());
    for (src, name) in made(dir.path()) {
        let bytes = std::fs::read(&src).unwrap();
        for (i, cut) in [bytes.len() / 3, bytes.len() * 2 / 3, bytes.len() - 1].into_iter().enumerate() {
            // Legacy lz4 has no end mark: only a cut inside a block shows.
            let p = dir.path().join(format!("cut{i}-{name}"));
            write_file(&p, &bytes[..cut]);
            assert_fails_4(&p, &format!("{name} cut at {cut}"));
        }
        let mut bad = bytes.clone();
        match name {
            // No checksum covers the data of these two: damage the framing.
            "legacy.img.lz4" => bad[4] ^= 0x40,
            "disk.simg" => bad[16] ^= 0x01,
            _ => {
                let at = bad.len() / 2;
                bad[at] ^= 0x5A;
            }
        }
        let p = dir.path().join(format!("bad-{name}"));
        write_file(&p, &bad);
        assert_fails_4(&p, &format!("{name} corrupted"));
        // Data joined after the end of the image is damage, not silently dropped.
        if !name.ends_with(".zip") {
            let mut joined = bytes.clone();
            joined.extend(b"trailing garbage");
            let p = dir.path().join(format!("joined-{name}"));
            write_file(&p, &joined);
            assert_fails_4(&p, &format!("{name} with data after its end"));
        }
    }
    // A sparse image's CRC32 chunk is checked: craft one that disagrees.
    let simg = std::fs::read(dir.path().join("disk.simg")).unwrap();
    let mut with_crc = simg.clone();
    let chunks = u32::from_le_bytes(with_crc[20..24].try_into().unwrap());
    with_crc[20..24].copy_from_slice(&(chunks + 1).to_le_bytes());
    with_crc.extend([0xC4, 0xCA, 0, 0, 0, 0, 0, 0, 16, 0, 0, 0, 1, 2, 3, 4]);
    let p = dir.path().join("crc.simg");
    write_file(&p, &with_crc);
    assert_fails_4(&p, "simg with a wrong CRC32 chunk");
}

#[test]
fn zip_over_http_streams_and_refuses_a_second_file() {
    if !ensure(&[("zip", "zip")]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_, data) = fixture(dir.path());
    assert!(sh(dir.path(), "zip -q one.zip disk.img && echo hi > README && zip -q two.zip disk.img README"));
    let out = dir.path().join("out.img");
    let one = std::fs::read(dir.path().join("one.zip")).unwrap();
    let (base, _h) = serve(one, None);
    let o = run(&["flash", &format!("{base}/one.zip"), out.to_str().unwrap(), "--yes"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(std::fs::read(&out).unwrap() == data);
    let (base, _h) = serve(std::fs::read(dir.path().join("two.zip")).unwrap(), None);
    let o = run(&["flash", &format!("{base}/two.zip"), out.to_str().unwrap(), "--yes"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("more than one file") && stderr(&o).contains("README"), "{}", stderr(&o));
    assert!(!stdout(&o).contains("flashed"));
}

/// Refused: exit 2, the format named, what to do, nothing written.
fn assert_refused(src: &Path, wants: &[&str]) {
    let out = src.with_extension("target");
    for args in [
        vec!["flash", src.to_str().unwrap(), out.to_str().unwrap(), "--yes"],
        vec!["inspect", src.to_str().unwrap()],
    ] {
        let o = run(&args);
        assert_eq!(code(&o), 2, "{}: {}{}", src.display(), stdout(&o), stderr(&o));
        for w in wants {
            assert!(stderr(&o).contains(w), "{}: {w:?} missing from {}", src.display(), stderr(&o));
        }
    }
    // Refusals found in the decoded bytes come after the target is opened
    // (a file target is then created empty); no byte of the image is written.
    let written = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    assert_eq!(written, 0, "{}: nothing may be written", src.display());
}

#[test]
fn formats_bty_does_not_decode_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let (raw, _) = fixture(dir.path());
    let d = dir.path();
    if ensure(&[("lzop", "lzop")]) {
        assert!(sh(d, "lzop -q -f -o disk.img.lzo disk.img"));
        assert_refused(&d.join("disk.img.lzo"), &["lzop-compressed", "lzop -d"]);
        // Misnamed: its bytes still tell.
        std::fs::copy(d.join("disk.img.lzo"), d.join("lzo-inside.img")).unwrap();
        assert_refused(&d.join("lzo-inside.img"), &["lzop-compressed"]);
    }
    if ensure(&[("7z", "p7zip-full")]) {
        assert!(sh(d, "7z a -bd -y disk.7z disk.img >/dev/null"));
        assert_refused(&d.join("disk.7z"), &["7-Zip archive", "7z x"]);
    }
    if ensure(&[("qemu-img", "qemu-utils")]) {
        for (fmt, opts, ext, want) in [
            ("vpc", "subformat=dynamic", "vhd", "VHD"),
            ("vpc", "subformat=fixed", "vhd", "VHD"),
            ("vhdx", "", "vhdx", "VHDX"),
            ("vmdk", "", "vmdk", "VMDK"),
            ("vmdk", "subformat=streamOptimized", "vmdk", "VMDK"),
            ("vdi", "", "vdi", "VDI"),
        ] {
            let name = format!("{fmt}-{}.{ext}", opts.replace('=', "-"));
            let o = if opts.is_empty() { String::new() } else { format!("-o {opts}") };
            assert!(sh(d, &format!("qemu-img convert -q -f raw -O {fmt} {o} disk.img {name}")));
            assert_refused(&d.join(&name), &[want, "qemu-img convert"]);
            // A fixed VHD is raw plus a footer: caught by its footer whatever its name.
            if opts == "subformat=fixed" {
                std::fs::copy(d.join(&name), d.join("fixed-vhd.img")).unwrap();
                assert_refused(&d.join("fixed-vhd.img"), &[want]);
            }
        }
    }
    // Crafted heads for formats without a tool here.
    let crafted: &[(&str, &[u8], &[&str])] = &[
        ("a.rar", b"Rar!\x1a\x07\x01\x00\x33\x92", &["RAR archive", "unrar x"]),
        ("a4.img", b"Rar!\x1a\x07\x00\xcf\x90", &["RAR archive"]),
        ("fs.img", b"hsqs\x10\0\0\0", &["squashfs", "whole disks"]),
        ("disk.img.lz", b"LZIP\x01\x0c", &["lzip -d"]),
        ("pkg.xar", b"xar!\0\x1c\0\x01", &["xar -xf"]),
        // A zlib stream whose first (stored) block inflates.
        ("disk.img.zz", b"\x78\x01\x01\x04\x00\xfb\xffbty!\x03\xfb\x01\x71", &["zlib stream", "zlib-flate"]),
        ("zlib.img", b"\x78\x01\x01\x04\x00\xfb\xffbty!\x03\xfb\x01\x71", &["zlib stream"]),
    ];
    for (name, head, wants) in crafted {
        let mut v = head.to_vec();
        v.resize(64 << 10, 0x11);
        write_file(&d.join(name), &v);
        assert_refused(&d.join(name), wants);
    }
    let mut dmg = vec![0x42u8; 64 << 10];
    let end = dmg.len() - 512;
    dmg[end..end + 4].copy_from_slice(b"koly");
    write_file(&d.join("mac.dmg"), &dmg);
    assert_refused(&d.join("mac.dmg"), &["dmg", "qemu-img convert -f dmg"]);

    // Zips bty does not flash.
    if ensure(&[("zip", "zip"), ("xz", "xz-utils")]) {
        assert!(sh(d, "echo notes > README && zip -q two.zip disk.img README"));
        assert_refused(
            &d.join("two.zip"),
            &["2 files", "disk.img (9441280 bytes)", "README (6 bytes)", "unzip -l"],
        );
        assert!(sh(d, "zip -q -P secret locked.zip disk.img"));
        assert_refused(&d.join("locked.zip"), &["encrypted"]);
        assert!(sh(d, "xz -1 -k -c disk.img > inner.img.xz && zip -q nested.zip inner.img.xz"));
        assert_refused(&d.join("nested.zip"), &["zip archive holding an xz-compressed file"]);
    }
    // An ISO is a raw image: it flashes as it is.
    let mut iso = std::fs::read(&raw).unwrap();
    iso[0x8001..0x8006].copy_from_slice(b"CD001");
    let p = d.join("live.iso");
    write_file(&p, &iso);
    let out = d.join("iso.out");
    let o = run(&["flash", p.to_str().unwrap(), out.to_str().unwrap(), "--yes"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(std::fs::read(&out).unwrap() == iso);
    // A raw disk that happens to start like a zlib header is still raw.
    let mut lookalike = std::fs::read(&raw).unwrap();
    lookalike[..2].copy_from_slice(b"\x78\x9c");
    for (i, b) in lookalike[2..512].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(37) | 0xC0;
    }
    let p = d.join("lookalike.img");
    write_file(&p, &lookalike);
    let o = run(&["flash", p.to_str().unwrap(), out.to_str().unwrap(), "--yes"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(std::fs::read(&out).unwrap() == lookalike);
}

#[test]
fn exit_codes_separate_damage_from_wrong_invocations() {
    let dir = tempfile::tempdir().unwrap();
    let (raw, _) = fixture(dir.path());
    let out = dir.path().join("out.img");
    // Named like a compressed image without its signature: damaged (or misnamed).
    let fake = dir.path().join("fake.img.lz4");
    std::fs::copy(&raw, &fake).unwrap();
    assert_fails_4(&fake, "a .lz4 name over raw bytes");
    let o = run(&["flash", "missing.img.zip", out.to_str().unwrap(), "--yes"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    let o = run(&["flash", raw.to_str().unwrap(), out.to_str().unwrap(), "--yes", "--bmap", "missing.bmap"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    let o = run(&["flash", "--help"]);
    assert!(stdout(&o).contains("damaged or inconsistent"), "{}", stdout(&o));
}
