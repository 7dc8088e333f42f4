//! `bty flash` end to end: every format to files and loop devices, integrity
//! failures, HTTP sources, safety refusals and the documented exit codes.

mod common;

use std::path::Path;

use common::*;

const MIB: usize = 1 << 20;

fn fixture(dir: &Path, size: usize) -> (std::path::PathBuf, Vec<u8>) {
    let raw = dir.join("disk.img");
    let data = image_bytes(size, 7);
    write_file(&raw, &data);
    (raw, data)
}

/// The raw image and its zstd, xz, gzip, bzip2 and qcow2 versions.
fn every_format(raw: &Path) -> Vec<std::path::PathBuf> {
    let mut all = vec![raw.to_path_buf()];
    all.extend(["zst", "xz", "gz", "bz2", "qcow2"].iter().map(|ext| compress(raw, ext)));
    all
}

#[test]
fn every_format_to_a_file_is_byte_exact() {
    let dir = tempfile::tempdir().unwrap();
    let (raw, data) = fixture(dir.path(), 6 * MIB + 4096);
    for src in every_format(&raw) {
        let out = dir.path().join("out.img");
        let o = run(&["flash", src.to_str().unwrap(), out.to_str().unwrap(), "--yes", "--verify"]);
        assert_eq!(code(&o), 0, "{}: {}{}", src.display(), stdout(&o), stderr(&o));
        assert!(std::fs::read(&out).unwrap() == data, "{} wrote different bytes", src.display());
        assert!(stdout(&o).contains("verified"), "{}", stdout(&o));
    }
}

#[test]
fn zero_blocks_become_holes_in_file_targets() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let mut data = image_bytes(4 * MIB, 3);
    data.extend(vec![0u8; 12 * MIB]);
    let raw = dir.path().join("sparse.img");
    write_file(&raw, &data);
    let zst = compress(&raw, "zst");
    let out = dir.path().join("out.img");
    let o = run(&["flash", zst.to_str().unwrap(), out.to_str().unwrap(), "--yes"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let meta = std::fs::metadata(&out).unwrap();
    assert_eq!(meta.len(), data.len() as u64);
    assert!(
        meta.blocks() * 512 < 8 * MIB as u64,
        "target should be sparse, uses {} bytes",
        meta.blocks() * 512
    );
    assert!(std::fs::read(&out).unwrap() == data);
}

#[test]
fn digest_mismatch_is_an_integrity_failure_for_every_format() {
    let dir = tempfile::tempdir().unwrap();
    let (raw, _) = fixture(dir.path(), 2 * MIB);
    for src in every_format(&raw) {
        let out = dir.path().join("out.img");
        let wrong = "ab".repeat(32);
        let o = run(&[
            "flash",
            src.to_str().unwrap(),
            out.to_str().unwrap(),
            "--yes",
            "--sha256",
            &wrong,
            "--json",
        ]);
        assert_eq!(code(&o), 4, "{}: {}", src.display(), stdout(&o));
        let last: serde_json::Value = serde_json::from_str(stdout(&o).lines().last().unwrap()).unwrap();
        assert_eq!(last["event"], "error");
        assert_eq!(last["kind"], "integrity");
        assert!(last["message"].as_str().unwrap().contains("SHA-256 mismatch"));
        // The right digest passes.
        let good = sha256_file(&src);
        let o = run(&["flash", src.to_str().unwrap(), out.to_str().unwrap(), "--yes", "--sha256", &good]);
        assert_eq!(code(&o), 0, "{}: {}", src.display(), stderr(&o));
    }
}

#[test]
fn blake3_is_checked_too() {
    let dir = tempfile::tempdir().unwrap();
    let (raw, data) = fixture(dir.path(), MIB);
    let out = dir.path().join("out.img");
    let good = blake3_hex(&data);
    let o = run(&["flash", raw.to_str().unwrap(), out.to_str().unwrap(), "--yes", "--blake3", &good]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o =
        run(&["flash", raw.to_str().unwrap(), out.to_str().unwrap(), "--yes", "--blake3", &"0".repeat(64)]);
    assert_eq!(code(&o), 4);
}

fn blake3_hex(data: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x");
    write_file(&p, data);
    let o = run(&["flash", p.to_str().unwrap(), dir.path().join("y").to_str().unwrap(), "--yes", "--json"]);
    let last: serde_json::Value = serde_json::from_str(stdout(&o).lines().last().unwrap()).unwrap();
    last["published"]["blake3"].as_str().unwrap().to_string()
}

#[test]
fn the_written_checksum_names_its_algorithm() {
    let dir = tempfile::tempdir().unwrap();
    let (raw, _) = fixture(dir.path(), MIB);
    let out = dir.path().join("out.img");
    let o = run(&["flash", raw.to_str().unwrap(), out.to_str().unwrap(), "--yes", "--verify", "--json"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let last: serde_json::Value = serde_json::from_str(stdout(&o).lines().last().unwrap()).unwrap();
    assert_eq!(last["event"], "summary");
    assert_eq!(last["written_checksum"].as_str().map(str::len), Some(32), "{last}");
    assert_eq!(last["written_checksum_algorithm"], "xxh3-128-chunks", "{last}");
}

#[test]
fn a_directory_is_not_a_target() {
    let dir = tempfile::tempdir().unwrap();
    let (raw, _) = fixture(dir.path(), MIB);
    let target = dir.path().join("out");
    std::fs::create_dir(&target).unwrap();
    let o = run(&["flash", raw.to_str().unwrap(), target.to_str().unwrap(), "--yes"]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(stderr(&o).contains("is a directory"), "{}", stderr(&o));
}

#[test]
fn truncated_compressed_streams_are_integrity_failures() {
    let dir = tempfile::tempdir().unwrap();
    let (raw, _) = fixture(dir.path(), 3 * MIB);
    for ext in ["zst", "xz", "gz", "bz2", "qcow2"] {
        let full = compress(&raw, ext);
        let bytes = std::fs::read(&full).unwrap();
        let cut = dir.path().join(format!("cut.img.{ext}"));
        write_file(&cut, &bytes[..bytes.len() * 2 / 3]);
        let out = dir.path().join("out.img");
        let o = run(&["flash", cut.to_str().unwrap(), out.to_str().unwrap(), "--yes"]);
        let c = code(&o);
        assert_eq!(c, 4, "{ext}: exit {c}: {}", stderr(&o));
        assert!(!stdout(&o).contains("flashed"), "{ext}: reported success: {}", stdout(&o));
    }
}

#[test]
fn confirmation_and_dry_run_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let (raw, _) = fixture(dir.path(), MIB);
    let out = dir.path().join("out.img");
    let o = run(&["flash", raw.to_str().unwrap(), out.to_str().unwrap()]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("--yes"), "{}", stderr(&o));
    assert!(!out.exists(), "nothing may be written without --yes");
    let o = run(&["flash", raw.to_str().unwrap(), out.to_str().unwrap(), "--dry-run", "--yes"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(!out.exists(), "--dry-run wins over --yes");
    let o = run(&["flash", raw.to_str().unwrap(), "/nonexistent-dir/x.img", "--dry-run"]);
    assert_ne!(code(&o), 0);
    let o = run(&["flash", raw.to_str().unwrap(), raw.to_str().unwrap(), "--dry-run", "--json"]);
    assert_eq!(code(&o), 1, "same file must be an invalid plan: {}", stdout(&o));
    let plan: serde_json::Value = serde_json::from_str(stdout(&o).lines().next().unwrap()).unwrap();
    assert_eq!(plan["valid"], false);
    let o = run(&["flash", "nope.img", out.to_str().unwrap(), "--dry-run"]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("does not exist"), "{}", stderr(&o));
    let o = run(&["flash", "--bogus"]);
    assert_eq!(code(&o), 2);
}

#[test]
fn tarballs_are_refused_with_guidance() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path(), MIB);
    let tgz = dir.path().join("disk.tar.gz");
    let st = std::process::Command::new("tar")
        .arg("-czf")
        .arg(&tgz)
        .arg("-C")
        .arg(dir.path())
        .arg("disk.img")
        .status()
        .unwrap();
    assert!(st.success());
    let o = run(&["flash", tgz.to_str().unwrap(), dir.path().join("o").to_str().unwrap(), "--dry-run"]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("extract"), "{}", stderr(&o));
    // Misnamed: a .tar.gz called .img.gz is caught on its decompressed bytes.
    let sneaky = dir.path().join("sneaky.img.gz");
    std::fs::copy(&tgz, &sneaky).unwrap();
    let o = run(&["flash", sneaky.to_str().unwrap(), dir.path().join("o").to_str().unwrap(), "--yes"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
}

#[test]
fn json_progress_is_ndjson_with_a_summary() {
    let dir = tempfile::tempdir().unwrap();
    let (raw, data) = fixture(dir.path(), 8 * MIB);
    let zst = compress(&raw, "zst");
    let out = dir.path().join("out.img");
    let o = run(&["flash", zst.to_str().unwrap(), out.to_str().unwrap(), "--yes", "--json"]);
    assert_eq!(code(&o), 0);
    let events: Vec<serde_json::Value> =
        stdout(&o).lines().map(|l| serde_json::from_str(l).expect(l)).collect();
    assert_eq!(events[0]["event"], "plan");
    assert_eq!(events[0]["plan"]["format"], "zstd");
    assert_eq!(events[0]["plan"]["virtual_size"], data.len() as u64);
    assert!(events.iter().any(|e| e["event"] == "progress" && e["phase"] == "write"));
    let s = events.last().unwrap();
    assert_eq!(s["event"], "summary");
    assert_eq!(s["image_bytes"], data.len() as u64);
    assert_eq!(s["published"]["sha256"], sha256_file(&zst));
}

#[test]
fn http_source_and_a_dropped_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (raw, data) = fixture(dir.path(), 4 * MIB);
    let zst = std::fs::read(compress(&raw, "zst")).unwrap();
    let out = dir.path().join("out.img");

    let (base, _h) = serve(zst.clone(), None);
    let url = format!("{base}/images/disk.img.zst");
    let sha = bty_core::digest::sha256_hex(&zst);
    let o = run(&["flash", &url, out.to_str().unwrap(), "--yes", "--sha256", &sha]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(std::fs::read(&out).unwrap() == data);

    let o = run(&["inspect", &url, "--json"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));

    // Raw image whose server hangs up half-way while promising the full length.
    let (base, _h) = serve(data.clone(), Some(data.len() / 2));
    let o = run(&["flash", &format!("{base}/disk.img"), out.to_str().unwrap(), "--yes"]);
    assert_eq!(code(&o), 4, "{}{}", stdout(&o), stderr(&o));
    assert!(stderr(&o).contains("failed after"), "{}", stderr(&o));

    // Compressed image cut mid-stream.
    let (base, _h) = serve(zst.clone(), Some(zst.len() / 2));
    let o = run(&["flash", &format!("{base}/disk.img.zst"), out.to_str().unwrap(), "--yes"]);
    assert_eq!(code(&o), 4, "{}", stderr(&o));
}

#[test]
fn bmap_writes_only_mapped_ranges_and_checks_them() {
    let dir = tempfile::tempdir().unwrap();
    let bs = 4096usize;
    let mut data = vec![0u8; 64 * bs];
    let mapped = [(0usize, 3usize), (10, 10), (40, 63)];
    for &(a, b) in &mapped {
        for blk in a..=b {
            data[blk * bs..(blk + 1) * bs].fill((blk % 251) as u8 + 1);
        }
    }
    let raw = dir.path().join("img.img");
    write_file(&raw, &data);
    let ranges: String = mapped
        .iter()
        .map(|&(a, b)| {
            let sha = bty_core::digest::sha256_hex(&data[a * bs..(b + 1) * bs]);
            let span = if a == b { a.to_string() } else { format!("{a}-{b}") };
            format!("    <Range chksum=\"{sha}\"> {span} </Range>\n")
        })
        .collect();
    let mapped_count: usize = mapped.iter().map(|(a, b)| b - a + 1).sum();
    // With its own checksum, as bmaptool writes it: the file hashed with the
    // digest's place filled with zeros.
    let xml = |ranges: &str| {
        let zeros = "0".repeat(64);
        let text = format!(
            "<?xml version=\"1.0\" ?>\n<bmap version=\"2.0\">\n  <ImageSize> {} </ImageSize>\n  <BlockSize> {bs} </BlockSize>\n  <BlocksCount> 64 </BlocksCount>\n  <MappedBlocksCount> {mapped_count} </MappedBlocksCount>\n  <ChecksumType> sha256 </ChecksumType>\n  <BmapFileChecksum> {zeros} </BmapFileChecksum>\n  <BlockMap>\n{ranges}  </BlockMap>\n</bmap>\n",
            data.len()
        );
        text.replacen(&zeros, &bty_core::digest::sha256_hex(text.as_bytes()), 1)
    };
    let bmap = dir.path().join("img.bmap");
    std::fs::write(&bmap, xml(&ranges)).unwrap();
    // Pre-fill the target with garbage: unmapped blocks must stay untouched.
    let out = dir.path().join("out.img");
    write_file(&out, &vec![0xEEu8; data.len()]);
    let zst = compress(&raw, "zst");
    let o = run(&[
        "flash",
        zst.to_str().unwrap(),
        out.to_str().unwrap(),
        "--yes",
        "--bmap",
        bmap.to_str().unwrap(),
        "--verify",
    ]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    let got = std::fs::read(&out).unwrap();
    for &(a, b) in &mapped {
        assert_eq!(&got[a * bs..(b + 1) * bs], &data[a * bs..(b + 1) * bs]);
    }
    // A range checksum that does not match the image is an integrity failure.
    let wrong = ranges.replacen(&bty_core::digest::sha256_hex(&data[0..4 * bs]), &"0".repeat(64), 1);
    std::fs::write(&bmap, xml(&wrong)).unwrap();
    let o = run(&[
        "flash",
        zst.to_str().unwrap(),
        out.to_str().unwrap(),
        "--yes",
        "--bmap",
        bmap.to_str().unwrap(),
    ]);
    assert_eq!(code(&o), 4, "{}", stderr(&o));
}

#[test]
fn loop_device_flash_is_byte_exact_and_moves_the_gpt_backup() {
    let dir = tempfile::tempdir().unwrap();
    // A GPT image of 8 MiB with one partition, flashed onto a 32 MiB disk.
    let img = dir.path().join("gpt.img");
    let size = 8 * MIB as u64;
    {
        let f = std::fs::File::create(&img).unwrap();
        f.set_len(size).unwrap();
    }
    {
        let mbr =
            gpt::mbr::ProtectiveMBR::with_lb_size(u32::try_from((size / 512) - 1).unwrap_or(0xFF_FF_FF_FF));
        let mut f = std::fs::OpenOptions::new().read(true).write(true).open(&img).unwrap();
        mbr.overwrite_lba0(&mut f).unwrap();
        let mut disk = gpt::GptConfig::new()
            .writable(true)
            .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
            .create_from_device(f, None)
            .unwrap();
        disk.update_partitions(std::collections::BTreeMap::new()).unwrap();
        disk.add_partition("root", 4 * MIB as u64, gpt::partition_types::LINUX_FS, 0, None).unwrap();
        disk.write().unwrap();
    }
    let Some(lo) = Loop::new(dir.path(), 32 * MIB as u64) else { return };
    let zst = compress(&img, "zst");
    let o = run(&["flash", zst.to_str().unwrap(), &lo.dev, "--yes", "--verify", "--json"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    let summary: serde_json::Value = serde_json::from_str(stdout(&o).lines().last().unwrap()).unwrap();
    assert_eq!(summary["gpt_backup_moved"], true, "{summary}");
    assert_eq!(summary["verified"], true);
    let dev = std::fs::read(&lo.dev).unwrap();
    let orig = std::fs::read(&img).unwrap();
    // Partition entries (LBA 2..33) and data are the image's; only headers moved.
    assert!(dev[1024..34 * 512] == orig[1024..34 * 512], "partition entries changed");
    assert!(dev[34 * 512..orig.len() - 33 * 512] == orig[34 * 512..orig.len() - 33 * 512], "data changed");
    let disk = gpt::GptConfig::new().writable(false).open(&lo.dev).expect("both GPT headers valid");
    let backup = disk.backup_header().expect("backup header readable");
    assert_eq!(backup.current_lba, (32 * MIB as u64) / 512 - 1, "backup header at the disk's last LBA");
    assert_eq!(disk.partitions().len(), 1);
    if have("sgdisk") {
        let v = std::process::Command::new("sgdisk").arg("-v").arg(&lo.dev).output().unwrap();
        let text = String::from_utf8_lossy(&v.stdout);
        assert!(text.contains("No problems found"), "{text}");
    }
}

#[test]
fn loop_device_mounted_is_refused_and_small_disks_too() {
    let dir = tempfile::tempdir().unwrap();
    let (raw, _) = fixture(dir.path(), 16 * MIB);
    let Some(small) = Loop::new(dir.path(), 8 * MIB as u64) else { return };
    let o = run(&["flash", raw.to_str().unwrap(), &small.dev, "--dry-run"]);
    assert_eq!(code(&o), 1);
    assert!(stdout(&o).contains("too small"), "{}", stdout(&o));

    if !have("mkfs.ext4") {
        eprintln!("skipping mounted-target check: mkfs.ext4 not installed");
        return;
    }
    let Some(mut big) = Loop::new(dir.path(), 32 * MIB as u64) else { return };
    assert!(std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&big.dev)
        .status()
        .unwrap()
        .success());
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    assert!(std::process::Command::new("mount").arg(&big.dev).arg(&mnt).status().unwrap().success());
    big.mount = Some(mnt.clone());
    let o = run(&["flash", raw.to_str().unwrap(), &big.dev, "--yes"]);
    assert_eq!(code(&o), 1, "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("mounted") || stderr(&o).contains("mounted"), "{}{}", stdout(&o), stderr(&o));
}

#[test]
fn loop_device_every_format() {
    let dir = tempfile::tempdir().unwrap();
    let (raw, data) = fixture(dir.path(), 4 * MIB);
    let Some(lo) = Loop::new(dir.path(), 8 * MIB as u64) else { return };
    for src in every_format(&raw) {
        let o = run(&["flash", src.to_str().unwrap(), &lo.dev, "--yes"]);
        assert_eq!(code(&o), 0, "{}: {}", src.display(), stderr(&o));
        let dev = std::fs::read(&lo.dev).unwrap();
        assert!(dev[..data.len()] == data[..], "{}", src.display());
    }
}
