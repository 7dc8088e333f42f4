//! Every committed seed and every saved regression, through its target's
//! body. A crash the fuzzer found is a file in `regressions/TARGET/`, and
//! from then on a failing test until bty-core is fixed.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Inputs take milliseconds; one taking this long is a hang the fuzzer
/// would report, so the replay reports it too.
const SLOW: Duration = Duration::from_secs(10);

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file() && !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect();
    files.sort();
    files
}

fn replay(target: &str) {
    let body = bty_fuzz::target(target).expect("a known target");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let seeds = inputs(&root.join("seeds").join(target));
    assert!(!seeds.is_empty(), "fuzz/seeds/{target}/ holds no seeds");
    let regressions = inputs(&root.join("regressions").join(target));
    let mut failed = Vec::new();
    for path in seeds.iter().chain(&regressions) {
        let data = std::fs::read(path).unwrap();
        let started = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| body(&data)));
        let took = started.elapsed();
        let shown = path.strip_prefix(root).unwrap_or(path).display().to_string();
        if outcome.is_err() {
            failed.push(format!("{shown}: panicked (message above)"));
        } else if took > SLOW {
            failed.push(format!("{shown}: took {took:?}"));
        }
    }
    assert!(
        failed.is_empty(),
        "{target}: {} of {} inputs fail; reproduce one with \
         `cargo run --manifest-path fuzz/Cargo.toml --bin replay -- {target} fuzz/FILE`:\n  {}",
        failed.len(),
        seeds.len() + regressions.len(),
        failed.join("\n  ")
    );
}

#[test]
fn format() {
    replay("format");
}

#[test]
fn qcow2() {
    replay("qcow2");
}

#[test]
fn simg() {
    replay("simg");
}

#[test]
fn bmap() {
    replay("bmap");
}

#[test]
fn partition() {
    replay("partition");
}

#[test]
fn catalog() {
    replay("catalog");
}

/// Every target has its afl binary and its seeds.
#[test]
fn every_target_has_a_binary_and_seeds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (name, _) in bty_fuzz::TARGETS {
        assert!(root.join("src/bin").join(format!("{name}.rs")).is_file(), "no src/bin/{name}.rs");
        assert!(root.join("seeds").join(name).is_dir(), "no seeds/{name}/");
    }
}

fn seed(target: &str, name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds").join(target).join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The seeds made by the real tools are accepted, so the fuzzer starts from
/// inputs that reach the end of every parser, not from its first error.
#[test]
fn seeds_from_the_real_tools_are_accepted() {
    use bty_core::{bmap, catalog, partition, qcow2, simg};
    use std::io::Read;

    for name in
        ["v3.qcow2", "v2.qcow2", "deflate.qcow2", "v2-deflate.qcow2", "zstd.qcow2", "zero-flagged.qcow2"]
    {
        let data = seed("qcow2", name);
        let mut r = qcow2::Qcow2Reader::open(std::io::Cursor::new(&data[..])).unwrap();
        let mut disk = Vec::new();
        r.read_to_end(&mut disk).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(disk.len(), 32 << 10, "{name}");
        assert_eq!(&disk[510..512], b"\x55\xaa", "{name}");
    }
    for name in ["backing-file.qcow2", "data-file.qcow2", "extended-l2.qcow2"] {
        let h = qcow2::parse_header(&seed("qcow2", name)).unwrap();
        assert!(h.check_supported().is_err(), "{name} is refused");
    }
    for name in ["img2simg.simg", "crc-fill.simg"] {
        let mut disk = Vec::new();
        simg::Reader::new(&seed("simg", name)[..])
            .read_to_end(&mut disk)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    for (name, verified) in [("sha256.bmap", true), ("v1.3-sha1.bmap", true), ("clearsigned.bmap", true)] {
        let text = String::from_utf8(seed("bmap", name)).unwrap();
        let b = bmap::load(&text, false).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(b.file_checksum_verified, verified, "{name}");
    }
    let text = String::from_utf8(seed("bmap", "no-checksum.bmap")).unwrap();
    bmap::load(&text, true).unwrap();
    for (name, partitions) in [("gpt-512.img", 3), ("gpt-4096.img", 1), ("mbr-logical.img", 4)] {
        let t = partition::read_table(&seed("partition", name)).unwrap().unwrap_or_else(|| panic!("{name}"));
        assert_eq!(t.partitions.len(), partitions, "{name}");
    }
    for name in ["full.toml", "empty.toml"] {
        catalog::Catalog::parse(&String::from_utf8(seed("catalog", name)).unwrap()).unwrap();
    }
    assert!(catalog::Catalog::parse(&String::from_utf8(seed("catalog", "problems.toml")).unwrap()).is_err());
}
