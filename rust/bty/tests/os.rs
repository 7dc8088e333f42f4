//! `bty os show` and `bty os download` against releases signed with the real
//! minisign (Debian's): a good signature, a wrong key, a tampered manifest,
//! a trusted comment that disagrees, a truncated file and a wrong digest.
//! Every failure exits 4 and leaves nothing of the release behind.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{code, run, sha256_file, stderr, stdout};

struct Keys {
    public: PathBuf,
    secret: PathBuf,
}

fn keys(dir: &Path, name: &str) -> Keys {
    let (public, secret) = (dir.join(format!("{name}.pub")), dir.join(format!("{name}.sec")));
    let st =
        Command::new("minisign").args(["-G", "-W", "-f", "-p"]).arg(&public).arg("-s").arg(&secret).output();
    assert!(st.unwrap().status.success());
    Keys { public, secret }
}

fn sign(k: &Keys, file: &Path, comment: &str) {
    let st = Command::new("minisign")
        .args(["-S", "-s"])
        .arg(&k.secret)
        .arg("-m")
        .arg(file)
        .args(["-t", comment])
        .output();
    let st = st.unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
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
