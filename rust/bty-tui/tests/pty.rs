//! The real `bty-tui` binary in a pseudo-terminal: keys typed as an operator
//! would, the screen read back through a VT100 emulator, the written bytes
//! compared with the image.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use portable_pty::{native_pty_system, Child, CommandBuilder, PtySize};

struct Session {
    screen: Arc<Mutex<vt100::Parser>>,
    input: Box<dyn Write + Send>,
    child: Box<dyn Child + Send + Sync>,
    started: Instant,
}

impl Session {
    fn spawn(args: &[&str], env: &[(&str, &str)]) -> Session {
        let pty = native_pty_system()
            .openpty(PtySize { rows: 24, cols: 80, pixel_width: 0, pixel_height: 0 })
            .expect("openpty");
        let mut cmd = CommandBuilder::new(env!("CARGO_BIN_EXE_bty-tui"));
        cmd.args(args);
        cmd.env("TERM", "vt100");
        cmd.env_remove("BTY_IMAGE_ROOT");
        cmd.env_remove("BTY_TUI_EXTRA_TARGETS");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let started = Instant::now();
        let child = pty.slave.spawn_command(cmd).expect("spawn bty-tui");
        drop(pty.slave);
        let screen = Arc::new(Mutex::new(vt100::Parser::new(24, 80, 0)));
        let mut reader = pty.master.try_clone_reader().unwrap();
        let feed = screen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                feed.lock().unwrap().process(&buf[..n]);
            }
        });
        let input = pty.master.take_writer().unwrap();
        // The master must outlive the child or its terminal hangs up.
        std::mem::forget(pty.master);
        Session { screen, input, child, started }
    }

    fn text(&self) -> String {
        self.screen.lock().unwrap().screen().contents()
    }

    fn wait_for(&mut self, what: &str, timeout: Duration) -> Duration {
        let end = Instant::now() + timeout;
        loop {
            if self.text().contains(what) {
                return self.started.elapsed();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("bty-tui exited ({status:?}) before showing {what:?}; screen:\n{}", self.text());
            }
            assert!(
                Instant::now() < end,
                "no {what:?} on the screen after {timeout:?}; screen:\n{}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn send(&mut self, keys: &str) {
        self.input.write_all(keys.as_bytes()).unwrap();
        self.input.flush().unwrap();
    }

    fn exit_code(&mut self, timeout: Duration) -> u32 {
        let end = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.exit_code();
            }
            assert!(Instant::now() < end, "bty-tui did not exit; screen:\n{}", self.text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A 3 MiB disk-like image: data, a zero run (a hole in the file target) and data.
fn image_bytes() -> Vec<u8> {
    let mut v: Vec<u8> = (0..1024 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    v.extend(std::iter::repeat_n(0u8, 1024 * 1024));
    v.extend((0..1024 * 1024u32).map(|i| (i % 251) as u8));
    v
}

fn make_image_root(dir: &Path) -> (PathBuf, Vec<u8>) {
    let root = dir.join("images");
    std::fs::create_dir(&root).unwrap();
    let raw = image_bytes();
    std::fs::write(root.join("test.img.zst"), zstd::encode_all(&raw[..], 3).unwrap()).unwrap();
    std::fs::write(root.join("notes.txt"), "not an image").unwrap();
    (root, raw)
}

const LONG: Duration = Duration::from_secs(60);

#[test]
fn local_flash_to_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let (root, raw) = make_image_root(dir.path());
    let target = dir.path().join("target.img");
    let mut s = Session::spawn(
        &["--image-root", root.to_str().unwrap(), "--target-file", target.to_str().unwrap()],
        &[],
    );
    let first = s.wait_for("test.img.zst", Duration::from_secs(10));
    eprintln!("first screen with the image list after {first:?}");
    assert!(!s.text().contains("notes.txt"));

    s.send("\r");
    s.wait_for("Choose the disk to overwrite with test.img.zst", Duration::from_secs(10));
    let screen = s.text();
    let selected = screen.lines().find(|l| l.starts_with("|> ")).unwrap_or_default();
    assert!(
        selected.trim_end_matches([' ', '|']).ends_with("file"),
        "the file target is preselected:\n{screen}"
    );

    s.send("\r");
    s.wait_for("Press y to write", LONG);
    assert!(s.text().contains("format:  zstd"), "{}", s.text());
    assert!(!target.exists(), "nothing is written before the confirmation");

    s.send("y");
    s.wait_for("DONE", LONG);
    assert!(s.text().contains("read back and verified"), "{}", s.text());
    let written = std::fs::read(&target).unwrap();
    assert!(written == raw, "the target holds other bytes than the image ({} bytes)", written.len());

    s.send("q");
    assert_eq!(s.exit_code(Duration::from_secs(10)), 0);
}

#[test]
fn back_out_of_the_confirm_screen_and_quit() {
    let dir = tempfile::tempdir().unwrap();
    let (root, _) = make_image_root(dir.path());
    let target = dir.path().join("target.img");
    std::fs::write(&target, b"keep me").unwrap();
    let mut s = Session::spawn(
        &["--image-root", root.to_str().unwrap()],
        &[("BTY_TUI_EXTRA_TARGETS", target.to_str().unwrap())],
    );
    s.wait_for("test.img.zst", Duration::from_secs(10));
    s.send("?");
    s.wait_for("any key: close help", Duration::from_secs(10));
    s.send("x\r");
    s.wait_for("Choose the disk", Duration::from_secs(10));
    s.send("\r");
    s.wait_for("Press y to write", LONG);
    s.send("n");
    s.wait_for("Choose the disk", Duration::from_secs(10));
    s.send("\x1b");
    s.wait_for("Choose an image", Duration::from_secs(10));
    s.send("q");
    assert_eq!(s.exit_code(Duration::from_secs(10)), 0);
    assert_eq!(std::fs::read(&target).unwrap(), b"keep me");
}
