//! `bty os show` and `bty os download` against releases signed with the real
//! minisign (Debian's): a good signature, a wrong key, a tampered manifest,
//! a trusted comment that disagrees, a truncated file and a wrong digest.
//! Every failure exits 4 and leaves nothing of the release behind.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{code, run, sha256_file, stderr, stdout, Keys};

fn keys(dir: &Path, name: &str) -> Keys {
    common::minisign_keys(dir, name)
}

fn sign(k: &Keys, file: &Path, comment: &str) {
    common::minisign_sign(k, file, comment)
}

/// A release tree `base/latest`, `base/VERSION/{manifest.json,.minisig,files}`.
fn release(base: &Path, k: &Keys, version: &str, comment: &str) -> PathBuf {
    let dir = base.join(version);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(base.join("latest"), format!("{version}\n")).unwrap();
    std::fs::write(dir.join("root.img.zst"), common::image_bytes(300_000, 7)).unwrap();
    std::fs::write(dir.join("bty.efi"), common::image_bytes(50_000, 8)).unwrap();
    let file = |role: &str, name: &str| {
        let p = dir.join(name);
        serde_json::json!({"role": role, "name": name, "url": name, "sha256": sha256_file(&p),
                           "size": std::fs::metadata(&p).unwrap().len()})
    };
    let m = serde_json::json!({"version": version, "arch": "x86_64", "type": "os",
                                "files": [file("root", "root.img.zst"), file("uki", "bty.efi")]});
    std::fs::write(dir.join("manifest.json"), serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    sign(k, &dir.join("manifest.json"), comment);
    dir
}

fn have_minisign() -> bool {
    if common::have("minisign") {
        return true;
    }
    eprintln!("skipping: minisign is not installed (checks/deps.sh installs it)");
    false
}

fn os(args: &[&str], base: &Path, key: &Path) -> std::process::Output {
    let mut all = vec!["os"];
    all.extend_from_slice(args);
    let (b, k) = (base.display().to_string(), key.display().to_string());
    all.extend_from_slice(&["--source", &b, "--pubkey", &k]);
    run(&all)
}

#[test]
fn a_signed_release_is_shown_and_downloaded_verified() {
    if !have_minisign() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let k = keys(d.path(), "release");
    let base = d.path().join("rel");
    let dir = release(&base, &k, "1.2.0", "version=1.2.0 type=os");

    let o = os(&["show", "os"], &base, &k.public);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).contains("os release 1.2.0 (x86_64), signature verified"), "{}", stdout(&o));
    let o = os(&["show", "os", "--version", "1.2.0", "--json"], &base, &k.public);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["manifest"]["files"][0]["role"], "root");
    // --path: a manifest on disk, its signature beside it.
    let p = dir.join("manifest.json").display().to_string();
    let o = run(&["os", "show", "os", "--path", &p, "--pubkey", &k.public.display().to_string()]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    // The source and the key from bty.toml's [os], as on the appliance.
    let toml = d.path().join("bty.toml");
    std::fs::write(
        &toml,
        format!(
            "[os]\nsource = {:?}\npubkey = {:?}\n",
            base.display().to_string(),
            k.public.display().to_string()
        ),
    )
    .unwrap();
    let o = common::bty().args(["os", "show", "os"]).env("BTY_CONFIG_FILE", &toml).output().unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).contains("os release 1.2.0"), "{}", stdout(&o));
    std::fs::write(&toml, "[os\n").unwrap();
    let o = common::bty().args(["os", "show", "os"]).env("BTY_CONFIG_FILE", &toml).output().unwrap();
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("not valid TOML"), "{}", stderr(&o));
    // The wrong kind, no source: usage errors.
    assert_eq!(code(&os(&["show", "efisys"], &base, &k.public)), 2);
    assert_eq!(code(&run(&["os", "show", "os", "--pubkey", &k.public.display().to_string()])), 2);

    let out = d.path().join("dl");
    let o = os(&["download", "os", &out.display().to_string()], &base, &k.public);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    for f in ["root.img.zst", "bty.efi", "manifest.json", "manifest.json.minisig"] {
        assert_eq!(sha256_file(&out.join(f)), sha256_file(&dir.join(f)), "{f}");
    }
}

#[test]
fn bad_signatures_and_bad_files_exit_4_and_leave_nothing() {
    if !have_minisign() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let k = keys(d.path(), "release");
    let other = keys(d.path(), "other");
    let base = d.path().join("rel");
    let dir = release(&base, &k, "1.2.0", "version=1.2.0 type=os");
    let out = d.path().join("dl");
    let dl = |key: &Path| os(&["download", "os", &out.display().to_string()], &base, key);
    let nothing_left = || std::fs::read_dir(&out).map(|r| r.count()).unwrap_or(0) == 0;

    // Signed with another key.
    let o = dl(&other.public);
    assert_eq!(code(&o), 4, "{}", stderr(&o));
    assert!(stderr(&o).contains("does not verify"), "{}", stderr(&o));
    assert!(nothing_left());

    // The trusted comment names another version.
    release(&base, &k, "1.2.0", "version=1.3.0 type=os");
    let o = dl(&k.public);
    assert_eq!(code(&o), 4);
    assert!(stderr(&o).contains("trusted comment"), "{}", stderr(&o));
    release(&base, &k, "1.2.0", "version=1.2.0 type=efisys");
    assert_eq!(code(&dl(&k.public)), 4);

    // The manifest changed after it was signed.
    release(&base, &k, "1.2.0", "version=1.2.0 type=os");
    let m = std::fs::read_to_string(dir.join("manifest.json")).unwrap();
    std::fs::write(dir.join("manifest.json"), m.replace("x86_64", "aarch64")).unwrap();
    assert_eq!(code(&dl(&k.public)), 4);
    assert!(nothing_left());

    // A truncated file, then a corrupted one: the files before it are removed again.
    release(&base, &k, "1.2.0", "version=1.2.0 type=os");
    let uki = dir.join("bty.efi");
    let bytes = std::fs::read(&uki).unwrap();
    std::fs::write(&uki, &bytes[..bytes.len() / 2]).unwrap();
    let o = dl(&k.public);
    assert_eq!(code(&o), 4);
    assert!(stderr(&o).contains("truncated"), "{}", stderr(&o));
    assert!(nothing_left(), "{:?}", std::fs::read_dir(&out).unwrap().collect::<Vec<_>>());
    let mut flipped = bytes.clone();
    flipped[100] ^= 0xff;
    std::fs::write(&uki, &flipped).unwrap();
    let o = dl(&k.public);
    assert_eq!(code(&o), 4);
    assert!(stderr(&o).contains("SHA-256"), "{}", stderr(&o));
    assert!(nothing_left());
}

#[test]
fn status_and_check_read_the_slots_from_the_disk_and_the_esp() {
    if !have_minisign() || !common::have("sgdisk") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let k = keys(d.path(), "release");
    let base = d.path().join("rel");
    release(&base, &k, "1.2.0", "version=1.2.0 type=os");
    let disk = d.path().join("disk.img");
    std::fs::File::create(&disk).unwrap().set_len(64 << 20).unwrap();
    let st = Command::new("sgdisk")
        .args(["-o", "-n1:2048:+8M", "-t1:ef00", "-c1:ESP", "-n2:0:+16M", "-t2:8304", "-c2:bty-a"])
        .args(["-n3:0:+16M", "-t3:8304", "-c3:bty-b", "-n4:0:0", "-t4:8300", "-c4:bty-state"])
        .arg(&disk)
        .output()
        .unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let esp = d.path().join("esp");
    std::fs::create_dir_all(esp.join("EFI/Linux")).unwrap();
    std::fs::write(esp.join("EFI/Linux/bty-a_1.1.0.efi"), b"uki a").unwrap();
    std::fs::write(esp.join("EFI/Linux/bty-b_1.2.0+2-1.efi"), b"uki b").unwrap();
    let (disk_s, esp_s) = (disk.display().to_string(), esp.display().to_string());

    let o = run(&["os", "status", "--disk", &disk_s, "--esp", &esp_s, "--booted-slot", "a", "--json"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!((v["booted"].as_str(), v["state_partition"].as_u64()), (Some("a"), Some(4)));
    assert_eq!(
        (v["slots"][0]["version"].as_str(), v["slots"][0]["tries_left"].as_u64()),
        (Some("1.1.0"), None)
    );
    assert_eq!(
        (v["slots"][1]["version"].as_str(), v["slots"][1]["tries_left"].as_u64()),
        (Some("1.2.0"), Some(2))
    );
    let o = run(&["os", "status", "--disk", &disk_s, "--esp", &esp_s, "--booted-slot", "a"]);
    assert!(stdout(&o).contains("b (partition 3): version 1.2.0, 2 tries left, 1 done"), "{}", stdout(&o));

    let check = |slot: &str| {
        let mut a = vec!["check", "os", slot, "--esp", &esp_s];
        a.extend_from_slice(&["--disk", &disk_s]);
        code(&os(&a, &base, &k.public))
    };
    assert_eq!(check("b"), 0, "slot b holds the latest");
    assert_eq!(check("a"), 1, "slot a holds an older one");
    // Not an A/B disk.
    let plain = d.path().join("plain.img");
    std::fs::File::create(&plain).unwrap().set_len(8 << 20).unwrap();
    let o = run(&["os", "status", "--disk", &plain.display().to_string(), "--esp", &esp_s]);
    assert_eq!(code(&o), 1);

    // efisys: the ESP's loader files against the release's.
    let eb = d.path().join("efi-rel");
    let dir = eb.join("2.0.0");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(eb.join("latest"), "2.0.0\n").unwrap();
    std::fs::write(dir.join("BOOTX64.EFI"), b"systemd-boot 2").unwrap();
    let m = serde_json::json!({"version": "2.0.0", "arch": "x86_64", "type": "efisys", "files": [
        {"role": "esp", "name": "BOOTX64.EFI", "url": "BOOTX64.EFI", "sha256": sha256_file(&dir.join("BOOTX64.EFI")),
         "size": 14, "path": "EFI/BOOT/BOOTX64.EFI"}]});
    std::fs::write(dir.join("manifest.json"), serde_json::to_vec(&m).unwrap()).unwrap();
    sign(&k, &dir.join("manifest.json"), "version=2.0.0 type=efisys");
    std::fs::create_dir_all(esp.join("EFI/BOOT")).unwrap();
    std::fs::write(esp.join("EFI/BOOT/BOOTX64.EFI"), b"systemd-boot 1").unwrap();
    let efi = || code(&os(&["check", "efisys", "--esp", &esp_s], &eb, &k.public));
    assert_eq!(efi(), 1);
    std::fs::write(esp.join("EFI/BOOT/BOOTX64.EFI"), b"systemd-boot 2").unwrap();
    assert_eq!(efi(), 0);
}

#[test]
fn efisys_apply_replaces_loader_files_and_keeps_the_previous_ones() {
    if !have_minisign() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let k = keys(d.path(), "release");
    let esp = d.path().join("esp");
    std::fs::create_dir_all(esp.join("EFI/BOOT")).unwrap();
    std::fs::write(esp.join("EFI/BOOT/BOOTX64.EFI"), b"systemd-boot 1").unwrap();
    let esp_s = esp.display().to_string();
    let publish = |version: &str, body: &[u8]| {
        let eb = d.path().join("efi-rel");
        let dir = eb.join(version);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(eb.join("latest"), format!("{version}\n")).unwrap();
        std::fs::write(dir.join("BOOTX64.EFI"), body).unwrap();
        let m = serde_json::json!({"version": version, "arch": "x86_64", "type": "efisys", "files": [
            {"role": "esp", "name": "BOOTX64.EFI", "url": "BOOTX64.EFI", "sha256": sha256_file(&dir.join("BOOTX64.EFI")),
             "size": body.len(), "path": "EFI/BOOT/BOOTX64.EFI"}]});
        std::fs::write(dir.join("manifest.json"), serde_json::to_vec(&m).unwrap()).unwrap();
        sign(&k, &dir.join("manifest.json"), &format!("version={version} type=efisys"));
        eb
    };
    let eb = publish("2.0.0", b"systemd-boot 2");
    let apply = |extra: &[&str]| {
        let mut a = vec!["apply", "efisys", "--esp", &esp_s];
        a.extend_from_slice(extra);
        os(&a, &eb, &k.public)
    };
    let o = apply(&["--dry-run"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).contains("dry run"), "{}", stdout(&o));
    assert_eq!(std::fs::read(esp.join("EFI/BOOT/BOOTX64.EFI")).unwrap(), b"systemd-boot 1");

    // Another apply holds the ESP (flock(1) on it, as bty takes it): refused, nothing written.
    if common::have("flock") {
        let mut holder = Command::new("flock").arg("-o").arg(&esp).args(["sleep", "30"]).spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        let o = apply(&[]);
        holder.kill().unwrap();
        holder.wait().unwrap();
        assert_eq!(code(&o), 1, "{}", stderr(&o));
        assert!(stderr(&o).contains("another apply is running"), "{}", stderr(&o));
        assert_eq!(std::fs::read(esp.join("EFI/BOOT/BOOTX64.EFI")).unwrap(), b"systemd-boot 1");
    }
    let o = apply(&[]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(std::fs::read(esp.join("EFI/BOOT/BOOTX64.EFI")).unwrap(), b"systemd-boot 2");
    assert_eq!(std::fs::read(esp.join("EFI/bty/previous/BOOT/BOOTX64.EFI")).unwrap(), b"systemd-boot 1");
    let rec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(esp.join("EFI/bty/efisys.json")).unwrap()).unwrap();
    assert_eq!(rec["version"], "2.0.0");
    assert_eq!(code(&os(&["check", "efisys", "--esp", &esp_s], &eb, &k.public)), 0);
    // Again: nothing to do; an older release needs --force.
    let o = apply(&[]);
    assert!(stdout(&o).contains("nothing to do"), "{}", stdout(&o));
    let eb = publish("1.9.0", b"systemd-boot 1.9");
    let o = os(&["apply", "efisys", "--esp", &esp_s], &eb, &k.public);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(stderr(&o).contains("older"), "{}", stderr(&o));
    // A damaged file: exit 4 and the ESP as it was.
    let dir = eb.join("1.9.0");
    std::fs::write(dir.join("BOOTX64.EFI"), b"systemd-boot X.9").unwrap();
    let o = os(&["apply", "efisys", "--esp", &esp_s, "--force"], &eb, &k.public);
    assert_eq!(code(&o), 4, "{}", stderr(&o));
    assert_eq!(std::fs::read(esp.join("EFI/BOOT/BOOTX64.EFI")).unwrap(), b"systemd-boot 2");
    let leftovers: Vec<_> =
        std::fs::read_dir(esp.join("EFI/BOOT")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");
}

/// A one-route HTTP server answering every request with `status` and `body`.
fn health_server(status: &'static str, body: &'static str) -> String {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let mut buf = [0u8; 2048];
            let _ = s.read(&mut buf);
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    format!("http://{addr}/healthz")
}

#[test]
fn health_passes_on_an_ok_healthz_and_fails_otherwise() {
    let d = tempfile::tempdir().unwrap();
    let ok = health_server("200 OK", r#"{"status": "ok"}"#);
    let o = run(&["os", "health", "--url", &ok, "--timeout", "5"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let bad = health_server("503 Service Unavailable", r#"{"status": "degraded"}"#);
    let o = run(&["os", "health", "--url", &bad, "--timeout", "1"]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("503") && stderr(&o).contains("degraded"), "{}", stderr(&o));
    let o = run(&["os", "health", "--url", "http://127.0.0.1:9/healthz", "--timeout", "1"]);
    assert_eq!(code(&o), 1);
    // Healthy and blessing: no boot counter to strip is a blessed entry, not a failure.
    let esp = d.path().display().to_string();
    let o = run(&["os", "health", "--url", &ok, "--timeout", "5", "--bless", "--esp", &esp]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).contains("already blessed"), "{}", stdout(&o));
    std::fs::create_dir_all(d.path().join("EFI/Linux")).unwrap();
    std::fs::write(d.path().join("EFI/Linux/bty-b_1.2.0+1-2.efi"), b"uki").unwrap();
    let o = run(&["os", "bless", "--esp", &esp, "--entry", "bty-b_1.2.0+1-2.efi"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(d.path().join("EFI/Linux/bty-b_1.2.0.efi").exists());
}

#[test]
fn personalize_fills_the_secrets_partition_of_a_copy_or_in_place() {
    if !common::have("sgdisk") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("appliance.img");
    std::fs::File::create(&img).unwrap().set_len(48 << 20).unwrap();
    let st = Command::new("sgdisk")
        .args(["-o", "-n1:2048:+8M", "-t1:ef00", "-c1:ESP", "-n2:0:+8M", "-t2:8304", "-c2:bty-a"])
        .args(["-n3:0:+8M", "-t3:8304", "-c3:bty-b", "-n4:0:+1M", "-t4:8300", "-c4:bty-secrets"])
        .args(["-n5:0:0", "-t5:8300", "-c5:bty-state"])
        .arg(&img)
        .output()
        .unwrap();
    assert!(st.status.success());
    // A host's secrets as an operator packs them (tar.gz).
    let src = d.path().join("host1");
    std::fs::create_dir_all(src.join("ssh")).unwrap();
    std::fs::create_dir_all(src.join("bty")).unwrap();
    std::fs::write(src.join("ssh/ssh_host_ed25519_key"), b"PRIVATE").unwrap();
    std::fs::write(src.join("bty/admin-password"), b"s3cret\n").unwrap();
    let tgz = d.path().join("host1.tar.gz");
    let st =
        Command::new("tar").arg("-czf").arg(&tgz).arg("-C").arg(&src).args(["ssh", "bty"]).status().unwrap();
    assert!(st.success());
    let before = sha256_file(&img);

    let out = d.path().join("host1.img");
    let (img_s, out_s, tgz_s) =
        (img.display().to_string(), out.display().to_string(), tgz.display().to_string());
    let o = run(&["os", "personalize", &img_s, "--secrets", &tgz_s, "--output", &out_s]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).contains("2 secret file(s) in partition 4"), "{}", stdout(&o));
    assert_eq!(sha256_file(&img), before, "the built image is untouched");
    // The partition's bytes unpack as the appliance reads them at boot.
    let layout = bty_core::slots::read_layout(&out).unwrap();
    let p = layout.secrets.unwrap();
    let bytes = std::fs::read(&out).unwrap();
    let part = d.path().join("part");
    std::fs::write(&part, &bytes[p.start_bytes as usize..(p.start_bytes + p.size_bytes) as usize]).unwrap();
    let dir = d.path().join("run-secrets");
    let o = run(&[
        "os",
        "secrets",
        "unpack",
        &dir.display().to_string(),
        "--device",
        &part.display().to_string(),
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(std::fs::read(dir.join("ssh/ssh_host_ed25519_key")).unwrap(), b"PRIVATE");
    assert_eq!(std::fs::read(dir.join("bty/admin-password")).unwrap(), b"s3cret\n");
    // Only the secrets partition differs from the built image.
    let orig = std::fs::read(&img).unwrap();
    assert_eq!(orig[..p.start_bytes as usize], bytes[..p.start_bytes as usize]);
    assert_eq!(
        orig[(p.start_bytes + p.size_bytes) as usize..],
        bytes[(p.start_bytes + p.size_bytes) as usize..]
    );

    // The output exists: refused. In place without --secrets: emptied.
    assert_eq!(code(&run(&["os", "personalize", &img_s, "--secrets", &tgz_s, "--output", &out_s])), 2);
    let o = run(&["os", "personalize", &out_s, "--in-place"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(sha256_file(&out), before, "an emptied partition is all zeros again");
    // A tarball with a link in it: refused by name, nothing written.
    std::os::unix::fs::symlink("/etc/shadow", src.join("ssh/link")).unwrap();
    let bad = d.path().join("bad.tar");
    assert!(Command::new("tar")
        .arg("-cf")
        .arg(&bad)
        .arg("-C")
        .arg(&src)
        .arg("ssh")
        .status()
        .unwrap()
        .success());
    let o = run(&["os", "personalize", &out_s, "--in-place", "--secrets", &bad.display().to_string()]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("ssh/link"), "{}", stderr(&o));
    assert_eq!(sha256_file(&out), before);
}
