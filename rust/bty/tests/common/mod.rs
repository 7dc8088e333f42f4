//! Fixtures for the CLI tests: deterministic images, external compressors,
//! a loopback HTTP server that can misbehave, and loop devices.
#![allow(dead_code)]

pub mod oci_registry;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn bty() -> Command {
    Command::new(env!("CARGO_BIN_EXE_bty"))
}

pub fn run(args: &[&str]) -> Output {
    bty().args(args).output().expect("run bty")
}

pub fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A deterministic image: 4 KiB blocks, about 60% pseudo-random data and 40%
/// zero blocks, like a real partially filled disk.
pub fn image_bytes(size: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; size];
    let mut x = seed | 1;
    for (i, block) in v.chunks_mut(4096).enumerate() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if x % 10 < 6 || i == 0 {
            for (j, b) in block.iter_mut().enumerate() {
                // Compressible-ish text-like data.
                *b = b"bty image data "[(j + i) % 15] ^ ((x >> (j % 32)) as u8 & 0x3);
            }
        }
    }
    v
}

pub fn write_file(path: &Path, data: &[u8]) {
    std::fs::write(path, data).unwrap();
}

pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Compress `raw` with the external tool for `ext`, returning the new path.
pub fn compress(raw: &Path, ext: &str) -> PathBuf {
    let out = PathBuf::from(format!("{}.{ext}", raw.display()));
    let status = match ext {
        "zst" => Command::new("zstd").args(["-q", "-f", "-3", "-o"]).arg(&out).arg(raw).status(),
        "xz" => Command::new("sh")
            .arg("-c")
            .arg(format!("xz -T2 -c -1 '{}' > '{}'", raw.display(), out.display()))
            .status(),
        "gz" => Command::new("sh")
            .arg("-c")
            .arg(format!("gzip -c -1 '{}' > '{}'", raw.display(), out.display()))
            .status(),
        "bz2" => Command::new("sh")
            .arg("-c")
            .arg(format!("bzip2 -c -1 '{}' > '{}'", raw.display(), out.display()))
            .status(),
        "qcow2" => Command::new("qemu-img")
            .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
            .arg(raw)
            .arg(&out)
            .status(),
        _ => panic!("unknown ext {ext}"),
    }
    .unwrap_or_else(|e| panic!("cannot run compressor for {ext}: {e}"));
    assert!(status.success(), "compressing {ext} failed");
    out
}

pub fn sha256_file(p: &Path) -> String {
    bty_core::digest::sha256_hex(&std::fs::read(p).unwrap())
}

/// Serve `body` over HTTP/1.1 on loopback. `cut_after` closes the connection
/// after that many body bytes while still announcing the full length.
pub fn serve(body: Vec<u8>, cut_after: Option<usize>) -> (String, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let h = std::thread::spawn(move || {
        listener.set_nonblocking(false).unwrap();
        // Serve until idle for a while: HEAD, ranged reads and the full GET.
        listener.set_nonblocking(true).unwrap();
        let mut idle = std::time::Instant::now();
        loop {
            match listener.accept() {
                Ok((mut s, _)) => {
                    idle = std::time::Instant::now();
                    s.set_nonblocking(false).unwrap();
                    let mut req = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&req).to_string();
                    let path = text.split_whitespace().nth(1).unwrap_or("/").to_string();
                    if path.ends_with(".sha256") || path.ends_with(".bmap") {
                        let _ = s.write_all(
                            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                        );
                        continue;
                    }
                    let range = text
                        .lines()
                        .find(|l| l.to_ascii_lowercase().starts_with("range: bytes="))
                        .map(|l| l[13..].trim().to_string());
                    let (status, slice) = match range {
                        Some(r) => {
                            let (a, b) = r.split_once('-').unwrap();
                            let a: usize = a.parse().unwrap();
                            let b: usize = b.parse::<usize>().unwrap_or(body.len() - 1).min(body.len() - 1);
                            ("206 Partial Content", &body[a.min(body.len())..=b.max(a).min(body.len() - 1)])
                        }
                        None => ("200 OK", &body[..]),
                    };
                    let head = format!(
                        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        slice.len()
                    );
                    let _ = s.write_all(head.as_bytes());
                    if text.starts_with("HEAD") {
                        continue;
                    }
                    let n = match (cut_after, status) {
                        (Some(c), "200 OK") => c.min(slice.len()),
                        _ => slice.len(),
                    };
                    let _ = s.write_all(&slice[..n]);
                }
                Err(_) => {
                    if idle.elapsed() > std::time::Duration::from_secs(10) {
                        return;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
            }
        }
    });
    (format!("http://{addr}"), h)
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A loop device over a sparse file; detached (and unmounted) on drop.
pub struct Loop {
    pub dev: String,
    pub backing: PathBuf,
    pub mount: Option<PathBuf>,
}

impl Loop {
    /// `None` (with the reason printed) when loop devices cannot be used here.
    pub fn new(dir: &Path, size: u64) -> Option<Loop> {
        if !is_root() {
            eprintln!("skipping loop-device test: needs root");
            return None;
        }
        let backing = dir.join(format!("loop-{size}.img"));
        std::fs::File::create(&backing).unwrap().set_len(size).unwrap();
        let out = Command::new("losetup").args(["-f", "--show"]).arg(&backing).output().ok()?;
        if !out.status.success() {
            eprintln!("skipping loop-device test: losetup failed: {}", String::from_utf8_lossy(&out.stderr));
            return None;
        }
        let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Some(Loop { dev, backing, mount: None })
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        if let Some(m) = &self.mount {
            let _ = Command::new("umount").arg(m).status();
        }
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

/// A minisign key pair made with the real `minisign`, as release signers do.
pub struct Keys {
    pub public: PathBuf,
    pub secret: PathBuf,
}

pub fn minisign_keys(dir: &Path, name: &str) -> Keys {
    let (public, secret) = (dir.join(format!("{name}.pub")), dir.join(format!("{name}.sec")));
    let st =
        Command::new("minisign").args(["-G", "-W", "-f", "-p"]).arg(&public).arg("-s").arg(&secret).output();
    assert!(st.unwrap().status.success());
    Keys { public, secret }
}

/// Sign `file` (`file.minisig` beside it) with `comment` as the trusted comment.
pub fn minisign_sign(k: &Keys, file: &Path, comment: &str) {
    let st = Command::new("minisign")
        .args(["-S", "-s"])
        .arg(&k.secret)
        .arg("-m")
        .arg(file)
        .args(["-t", comment])
        .output()
        .unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
}
