//! Test data other tools write, generated here at test time: images shaped
//! like bmaptool's generator makes them (data, holes, sizes a byte either
//! side of a block), each compressed by every compressor users ship images
//! with, and qcow2 images in the variants `qemu-img` can write. Every flash
//! is compared byte for byte with what the reference tool makes of the same
//! file (`zstd -dc`, `gzip -dc`, `simg2img`, `qemu-img convert -O raw`, …).

mod common;

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

const KIB: u64 = 1024;
const MIB: u64 = 1 << 20;

fn sh(cmd: &str) -> bool {
    let o = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    if !o.status.success() {
        eprintln!("{cmd}: {}", String::from_utf8_lossy(&o.stderr));
    }
    o.status.success()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A sparse image as bmaptool's test generator lays one out: runs of data
/// (pseudo-random and compressible) between holes, of `size` bytes.
fn generated_image(dir: &Path, name: &str, size: u64, seed: u64) -> PathBuf {
    let path = dir.join(name);
    let mut f = std::fs::File::create(&path).unwrap();
    f.set_len(size).unwrap();
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut at = 0u64;
    while at < size {
        let run = (next() % (256 * KIB)).max(1);
        let hole = next() % 3 == 0;
        let len = run.min(size - at);
        if !hole {
            let compressible = next() % 2 == 0;
            let bytes: Vec<u8> =
                (0..len).map(|i| if compressible { (i % 61) as u8 } else { (next() & 0xff) as u8 }).collect();
            f.seek(SeekFrom::Start(at)).unwrap();
            f.write_all(&bytes).unwrap();
        }
        at += len;
    }
    path
}

/// `cmd` writes the compressed file; `reference` writes what a user's own
/// decompressor makes of it.
struct Compressor {
    name: &'static str,
    tool: &'static str,
    ext: &'static str,
    cmd: &'static str,
    reference: &'static str,
}

const COMPRESSORS: &[Compressor] = &[
    Compressor {
        name: "zstd",
        tool: "zstd",
        ext: "zst",
        cmd: "zstd -q -3 -c IN > OUT",
        reference: "zstd -dc IN > REF",
    },
    Compressor {
        name: "pzstd",
        tool: "pzstd",
        ext: "zst",
        cmd: "pzstd -q -p 2 -c IN > OUT",
        reference: "zstd -dc IN > REF",
    },
    Compressor {
        name: "xz multi-block",
        tool: "xz",
        ext: "xz",
        cmd: "xz -T2 --block-size=256KiB -1 -c IN > OUT",
        reference: "xz -dc IN > REF",
    },
    Compressor {
        name: "gzip",
        tool: "gzip",
        ext: "gz",
        cmd: "gzip -1 -c IN > OUT",
        reference: "gzip -dc IN > REF",
    },
    Compressor {
        name: "pigz",
        tool: "pigz",
        ext: "gz",
        cmd: "pigz -p 2 -b 128 -c IN > OUT",
        reference: "gzip -dc IN > REF",
    },
    Compressor {
        name: "concatenated gzip",
        tool: "gzip",
        ext: "gz",
        cmd: "head -c 100000 IN | gzip -c > OUT && tail -c +100001 IN | gzip -c >> OUT",
        reference: "gzip -dc IN > REF",
    },
    Compressor {
        name: "bzip2",
        tool: "bzip2",
        ext: "bz2",
        cmd: "bzip2 -1 -c IN > OUT",
        reference: "bzip2 -dc IN > REF",
    },
    Compressor {
        name: "pbzip2",
        tool: "pbzip2",
        ext: "bz2",
        cmd: "pbzip2 -p2 -b1 -1 -c IN > OUT",
        reference: "bzip2 -dc IN > REF",
    },
    Compressor {
        name: "lz4",
        tool: "lz4",
        ext: "lz4",
        cmd: "lz4 -q -c IN > OUT",
        reference: "lz4 -dc IN > REF",
    },
    Compressor {
        name: "lz4 legacy",
        tool: "lz4",
        ext: "lz4",
        cmd: "lz4 -q -l -c IN > OUT",
        reference: "lz4 -dc IN > REF",
    },
    Compressor {
        name: "zip",
        tool: "zip",
        ext: "zip",
        cmd: "cd DIR && zip -q -j OUT IN",
        reference: "unzip -p IN > REF",
    },
    Compressor {
        name: "simg",
        tool: "img2simg",
        ext: "simg",
        cmd: "img2simg IN OUT",
        reference: "simg2img IN REF",
    },
];

fn fill(template: &str, input: &Path, out: &Path) -> String {
    template
        .replace("DIR", s(input.parent().unwrap()))
        .replace("IN", &format!("'{}'", s(input)))
        .replace("OUT", &format!("'{}'", s(out)))
}

#[test]
fn every_compressor_users_ship_flashes_what_its_own_decompressor_makes() {
    let dir = tempfile::tempdir().unwrap();
    // A block multiple, a byte short of one and a byte over one (bmaptool's
    // generator does the same), all with holes.
    let sizes = [4 * MIB, 4 * MIB - 1, 4 * MIB + 1];
    let mut checked = 0;
    for (i, size) in sizes.iter().enumerate() {
        let raw = generated_image(dir.path(), &format!("gen{i}.img"), *size, i as u64 + 7);
        for c in COMPRESSORS {
            if !have(c.tool) {
                eprintln!("skipping {}: {} is not installed", c.name, c.tool);
                continue;
            }
            let tag = c.name.replace(' ', "-");
            let packed = dir.path().join(format!("gen{i}-{tag}.img.{}", c.ext));
            assert!(sh(&fill(c.cmd, &raw, &packed)), "{}: compressing failed", c.name);
            let reference = dir.path().join(format!("gen{i}-{tag}.ref"));
            let cmd = c.reference.replace("REF", &format!("'{}'", s(&reference)));
            assert!(sh(&fill(&cmd, &packed, &packed)), "{}: the reference decompressor failed", c.name);
            let out = dir.path().join(format!("gen{i}-{tag}.out"));
            let o = run(&["flash", s(&packed), s(&out), "--yes", "--verify"]);
            assert_eq!(code(&o), 0, "{} ({size} bytes): {}{}", c.name, stdout(&o), stderr(&o));
            let (got, want) = (std::fs::read(&out).unwrap(), std::fs::read(&reference).unwrap());
            assert_eq!(got.len(), want.len(), "{} ({size} bytes): length", c.name);
            assert!(got == want, "{} ({size} bytes): bty wrote other bytes than {}", c.name, c.reference);
            // A damaged copy is never written as if it were whole.
            let mut bytes = std::fs::read(&packed).unwrap();
            bytes.truncate(bytes.len() * 2 / 3);
            let cut = dir.path().join(format!("gen{i}-{tag}-cut.img.{}", c.ext));
            std::fs::write(&cut, bytes).unwrap();
            let o = run(&["flash", s(&cut), s(&dir.path().join("cut.out")), "--yes"]);
            assert_ne!(code(&o), 0, "{}: a truncated copy flashed: {}", c.name, stdout(&o));
            checked += 1;
        }
    }
    assert!(checked >= sizes.len() * 4, "too few compressors available ({checked} checks)");
}

fn qemu_img(args: &str) -> bool {
    sh(&format!("qemu-img {args}"))
}

/// Every qcow2 variant `qemu-img` writes flashes exactly what
/// `qemu-img convert -O raw` makes of it.
#[test]
fn qcow2_variants_qemu_img_writes_flash_exactly() {
    if !have("qemu-img") {
        eprintln!("skipping: qemu-img is not installed (apt install qemu-utils)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = generated_image(dir.path(), "base.img", 6 * MIB, 3);
    let r = s(&raw);
    let mut variants: Vec<(String, String)> = Vec::new();
    for compat in ["0.10", "1.1"] {
        for cluster in ["512", "4k", "64k", "2M"] {
            variants.push((
                format!("compat={compat} cluster_size={cluster}"),
                format!("-o compat={compat},cluster_size={cluster}"),
            ));
        }
    }
    for prealloc in ["off", "metadata", "falloc", "full"] {
        variants.push((format!("preallocation={prealloc}"), format!("-o preallocation={prealloc}")));
    }
    for bits in ["1", "8", "16", "64"] {
        variants.push((format!("refcount_bits={bits}"), format!("-o refcount_bits={bits}")));
    }
    variants.push(("deflate-compressed clusters".into(), "-c".into()));
    variants.push(("zstd-compressed clusters".into(), "-c -o compression_type=zstd".into()));
    variants.push(("lazy refcounts".into(), "-o compat=1.1,lazy_refcounts=on".into()));
    for (i, (what, opts)) in variants.iter().enumerate() {
        let q = dir.path().join(format!("v{i}.qcow2"));
        assert!(qemu_img(&format!("convert -q -f raw -O qcow2 {opts} '{r}' '{}'", s(&q))), "{what}");
        check_against_qemu(&q, what);
    }
    // Internal snapshots and persistent dirty bitmaps: the active layer is what counts.
    let q = dir.path().join("snap.qcow2");
    assert!(qemu_img(&format!("convert -q -f raw -O qcow2 '{r}' '{}'", s(&q))));
    assert!(qemu_img(&format!("snapshot -c before '{}'", s(&q))));
    assert!(sh(&format!("qemu-io -c 'write -P 0xab 1M 64k' '{}' >/dev/null 2>&1 || true", s(&q))));
    assert!(qemu_img(&format!("bitmap --add '{}' dirty0", s(&q))));
    check_against_qemu(&q, "internal snapshot and dirty bitmap");
}

fn check_against_qemu(q: &Path, what: &str) {
    let reference = q.with_extension("ref");
    assert!(qemu_img(&format!("convert -q -O raw '{}' '{}'", s(q), s(&reference))), "{what}");
    let out = q.with_extension("out");
    let o = run(&["flash", s(q), s(&out), "--yes", "--verify"]);
    assert_eq!(code(&o), 0, "{what}: {}{}", stdout(&o), stderr(&o));
    let (got, want) = (std::fs::read(&out).unwrap(), std::fs::read(&reference).unwrap());
    assert_eq!(got.len(), want.len(), "{what}: length");
    assert!(got == want, "{what}: bty wrote other bytes than qemu-img convert");
}

/// What bty refuses, it refuses by name and before writing anything.
#[test]
fn qcow2_features_bty_cannot_reproduce_are_refused() {
    if !have("qemu-img") {
        eprintln!("skipping: qemu-img is not installed (apt install qemu-utils)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = s(dir.path());
    let raw = generated_image(dir.path(), "base.img", 2 * MIB, 5);
    let r = s(&raw);
    let cases = [
        ("extended_l2.qcow2", format!("convert -q -f raw -O qcow2 -o compat=1.1,extended_l2=on '{r}' {d}/extended_l2.qcow2"), "extended l2"),
        ("backing.qcow2", format!("convert -q -f raw -O qcow2 '{r}' {d}/base.qcow2 && qemu-img create -q -f qcow2 -b {d}/base.qcow2 -F qcow2 {d}/backing.qcow2"), "backing file"),
        ("datafile.qcow2", format!("create -q -f qcow2 -o data_file={d}/data.raw {d}/datafile.qcow2 2M"), "data file"),
        (
            "luks.qcow2",
            format!("create -q --object secret,id=sec0,data=pw -f qcow2 -o encrypt.format=luks,encrypt.key-secret=sec0 {d}/luks.qcow2 2M"),
            "encrypt",
        ),
    ];
    for (name, make, want) in cases {
        assert!(qemu_img(&make), "{name}");
        let out = dir.path().join(format!("{name}.out"));
        let o = run(&["flash", &format!("{d}/{name}"), s(&out), "--yes"]);
        assert_ne!(code(&o), 0, "{name} flashed");
        let err = stderr(&o).to_lowercase();
        assert!(err.contains(want), "{name}: {}", stderr(&o));
        assert!(std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0) == 0, "{name}: bytes were written");
    }
}
