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

    // r on the result screen asks first; any other key goes back. (Never
    // answer y here: the test may run as root.)
    s.send("r");
    s.wait_for("Reboot this machine now?", Duration::from_secs(10));
    assert!(s.text().contains("y:reboot now"), "{}", s.text());
    s.send("n");
    s.wait_for("r:reboot  a:flash another disk", Duration::from_secs(10));
    assert!(!s.text().contains("Reboot this machine now?"), "{}", s.text());

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

/// bty-web next to this test's `bty-tui` (built by `cargo build -p bty-web`), or `BTY_WEB_BIN`.
fn bty_web_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("BTY_WEB_BIN") {
        return Some(p.into());
    }
    let p = Path::new(env!("CARGO_BIN_EXE_bty-tui")).with_file_name("bty-web");
    p.exists().then_some(p)
}

struct Web {
    proc: std::process::Child,
    port: u16,
}

impl Drop for Web {
    fn drop(&mut self) {
        let _ = self.proc.kill();
        let _ = self.proc.wait();
    }
}

impl Web {
    fn start(bin: &Path, state: &Path) -> Web {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let proc = std::process::Command::new(bin)
            .env("BTY_PATHS_STATE_DIR", state)
            .env("BTY_SERVER_HOST", "127.0.0.1")
            .env("BTY_SERVER_PORT", port.to_string())
            .env("BTY_ADMIN_PASSWORD", "pty-test-password")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start bty-web");
        let web = Web { proc, port };
        let end = Instant::now() + Duration::from_secs(30);
        while web.http("GET", "/healthz", &[], "").0 != 200 {
            assert!(Instant::now() < end, "bty-web did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
        web
    }

    /// A bare HTTP/1.1 exchange: enough for a few open and session routes.
    fn http(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, String, String) {
        let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return (0, String::new(), String::new());
        };
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            req += &format!("{k}: {v}\r\n");
        }
        req += "\r\n";
        req += body;
        c.write_all(req.as_bytes()).unwrap();
        let mut resp = String::new();
        let _ = c.read_to_string(&mut resp);
        let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
        let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        (status, head.to_string(), body.to_string())
    }
}

#[test]
fn server_mode_flashes_from_bty_web_and_reports_done() {
    let Some(bin) = bty_web_binary() else {
        eprintln!("skipped: no bty-web binary next to bty-tui (cargo build -p bty-web) and no BTY_WEB_BIN");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(state.join("images")).unwrap();
    let raw = image_bytes();
    std::fs::write(state.join("images/served.img.zst"), zstd::encode_all(&raw[..], 3).unwrap()).unwrap();
    std::fs::write(
        state.join("catalog.toml"),
        "version = 1\n[[images]]\nname = \"served\"\nsrc = \"served.img.zst\"\n",
    )
    .unwrap();
    let web = Web::start(&bin, &state);
    let mac = "52-54-00-77-00-01";
    // The first PXE contact records the machine with the default policy, tui,
    // and mints the offer token its live environment reports with.
    let (status, _, script) = web.http("GET", &format!("/pxe/{mac}"), &[], "");
    assert_eq!(status, 200);
    let token = script
        .split_whitespace()
        .find_map(|w| w.strip_prefix("bty.token="))
        .expect("the script carries an offer token")
        .to_string();

    let target = dir.path().join("disk.img");
    let server = format!("http://127.0.0.1:{}", web.port);
    let mut s = Session::spawn(
        &[
            "--server",
            &server,
            "--mac",
            mac,
            "--image-root",
            dir.path().join("none").to_str().unwrap(),
            "--target-file",
            target.to_str().unwrap(),
        ],
        &[("BTY_OFFER_TOKEN", &token)],
    );
    s.wait_for("served", Duration::from_secs(20));
    assert!(s.text().contains("server"), "{}", s.text());
    s.send("\r");
    s.wait_for("Choose the disk", Duration::from_secs(10));
    s.send("\r");
    s.wait_for("Press y to write", LONG);
    s.send("y");
    s.wait_for("recorded the flash as done", LONG);
    assert!(std::fs::read(&target).unwrap() == raw, "the target holds other bytes than the image");
    s.send("q");
    assert_eq!(s.exit_code(Duration::from_secs(10)), 0);

    let (status, head, _) = web.http(
        "POST",
        "/auth/login",
        &[("Content-Type", "application/json")],
        r#"{"username":"bty","password":"pty-test-password"}"#,
    );
    assert_eq!(status, 200, "{head}");
    let cookie = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
        .map(|(_, v)| v.trim().split(';').next().unwrap().to_string())
        .expect("a session cookie");
    let (status, _, body) = web.http("GET", &format!("/machines/{mac}/flashes"), &[("Cookie", &cookie)], "");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"done\""), "the server has no done flash for {mac}: {body}");
}

#[test]
fn server_unreachable_keeps_local_mode() {
    let dir = tempfile::tempdir().unwrap();
    let (root, _) = make_image_root(dir.path());
    let mut s = Session::spawn(
        &["--server", "127.0.0.1:9", "--mac", "52:54:00:77:00:02", "--image-root", root.to_str().unwrap()],
        &[],
    );
    s.wait_for("server unreachable", Duration::from_secs(20));
    s.wait_for("test.img.zst", Duration::from_secs(5));
    s.send("q");
    assert_eq!(s.exit_code(Duration::from_secs(10)), 0);
}

/// A stand-in server with one raw image whose body trickles out, so a flash is still running
/// when the test cancels it; it keeps the status reports it receives.
struct SlowServer {
    port: u16,
    reports: Arc<Mutex<Vec<String>>>,
}

const SLOW_LEN: usize = 64 << 20;

impl SlowServer {
    fn start() -> SlowServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let reports = Arc::new(Mutex::new(Vec::new()));
        let kept = reports.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let kept = kept.clone();
                std::thread::spawn(move || SlowServer::serve(conn, kept));
            }
        });
        SlowServer { port, reports }
    }

    fn serve(mut c: std::net::TcpStream, reports: Arc<Mutex<Vec<String>>>) {
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            if c.read(&mut byte).unwrap_or(0) == 0 {
                return;
            }
            buf.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&buf).to_string();
        let header = |name: &str| {
            head.lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim().to_string())
        };
        let mut body = vec![0u8; header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0)];
        let _ = c.read_exact(&mut body);
        let mut words = head.split_whitespace();
        let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        let reply = |c: &mut std::net::TcpStream, status: &str, extra: &str, body: &[u8]| {
            let _ = c.write_all(
                format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n",
                    body.len()
                )
                .as_bytes(),
            );
            let _ = c.write_all(body);
        };
        match (method, path) {
            ("GET", "/images") => {
                let list =
                    format!(r#"[{{"name":"slow","src":"slow.img","format":"raw","size_bytes":{SLOW_LEN}}}]"#);
                reply(&mut c, "200 OK", "Content-Type: application/json\r\n", list.as_bytes());
            }
            ("HEAD", "/images/slow") => {
                let _ =
                    c.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {SLOW_LEN}\r\n\r\n").as_bytes());
            }
            ("GET", "/images/slow") => {
                if let Some(range) = header("range") {
                    let (a, b) = range.trim_start_matches("bytes=").split_once('-').unwrap();
                    let (a, b): (usize, usize) = (a.parse().unwrap(), b.parse().unwrap());
                    let b = b.min(SLOW_LEN - 1);
                    let extra = format!("Content-Range: bytes {a}-{b}/{SLOW_LEN}\r\n");
                    reply(&mut c, "206 Partial Content", &extra, &vec![0xab; b + 1 - a]);
                    return;
                }
                let _ =
                    c.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {SLOW_LEN}\r\n\r\n").as_bytes());
                let chunk = vec![0xabu8; 64 << 10];
                for _ in 0..SLOW_LEN / chunk.len() {
                    if c.write_all(&chunk).is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            ("POST", p) if p.starts_with("/pxe/") => {
                reports.lock().unwrap().push(format!("{p} {}", String::from_utf8_lossy(&body)));
                reply(&mut c, "204 No Content", "", b"");
            }
            _ => reply(&mut c, "404 Not Found", "", b""),
        }
    }
}

#[test]
fn cancel_asks_first_reports_a_partial_write_and_the_failure() {
    let srv = SlowServer::start();
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("disk.img");
    let server = format!("127.0.0.1:{}", srv.port);
    let mut s = Session::spawn(
        &[
            "--server",
            &server,
            "--mac",
            "52:54:00:77:00:03",
            "--image-root",
            dir.path().join("none").to_str().unwrap(),
            "--target-file",
            target.to_str().unwrap(),
        ],
        &[],
    );
    s.wait_for("> slow", Duration::from_secs(20));
    s.send("\r");
    s.wait_for("Choose the disk", Duration::from_secs(10));
    s.send("\r");
    s.wait_for("Press y to write", LONG);
    s.send("y");
    s.wait_for("throughput:", LONG);
    // Once a first 4 MiB chunk is on the target, so the count below is not zero.
    s.wait_for("image:      4.0 MiB of", LONG);
    s.send("c");
    s.wait_for("Stop the flash?", Duration::from_secs(10));
    s.send("n");
    s.wait_for("c:cancel", Duration::from_secs(10));
    assert!(!s.text().contains("CANCELLED"));
    s.send("c");
    s.wait_for("Stop the flash?", Duration::from_secs(10));
    s.send("y");
    s.wait_for("CANCELLED", LONG);
    assert!(s.text().contains("Partial write:"), "{}", s.text());
    // What the screen reports is what the target holds (the image is all
    // non-zero bytes, so the file's length is what was written).
    let screen = s.text().replace("|\n|", " ");
    let reported =
        screen.split("Partial write: ").nth(1).and_then(|r| r.split(" of the image").next()).unwrap();
    let held = std::fs::metadata(&target).map(|m| m.len()).unwrap_or(0);
    assert_eq!(reported, bty_core::disks::human_size(held), "{screen}");
    s.wait_for("recorded the failure", LONG);
    let reports = srv.reports.lock().unwrap().clone();
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert!(reports[0].starts_with("/pxe/52-54-00-77-00-03/status "), "{reports:?}");
    let (_, body) = reports[0].split_once(' ').unwrap();
    let report: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(report["status"], "failed");
    assert!(report["reason"].as_str().unwrap().contains("cancelled"), "{report}");
    s.send("q");
    assert_eq!(s.exit_code(Duration::from_secs(10)), 130);
}

/// The child half of `a_panic_restores_the_terminal`: set the terminal up
/// exactly as `bty-tui` does, drop the guard on the floor so only the panic
/// hook can restore anything, and panic. Does nothing unless that test runs
/// it (in a pseudo-terminal, as a separate process).
#[test]
fn panicking_child() {
    if std::env::var_os("BTY_TUI_TEST_PANIC_CHILD").is_none() {
        return;
    }
    bty_tui::term::install_panic_hook();
    let (_tui, guard) = bty_tui::term::setup().expect("terminal setup in the pty");
    std::mem::forget(guard);
    panic!("deliberate panic inside the TUI");
}

/// A panic must leave the operator's terminal usable: out of the alternate
/// screen, cursor shown, line editing and echo back on, and the panic
/// message readable after all that.
#[test]
fn a_panic_restores_the_terminal() {
    let pty = native_pty_system()
        .openpty(PtySize { rows: 24, cols: 80, pixel_width: 0, pixel_height: 0 })
        .expect("openpty");
    let mut cmd = CommandBuilder::new(std::env::current_exe().unwrap());
    cmd.args(["panicking_child", "--exact", "--nocapture", "--test-threads=1"]);
    cmd.env("BTY_TUI_TEST_PANIC_CHILD", "1");
    cmd.env("TERM", "vt100");
    cmd.env("RUST_BACKTRACE", "0");
    let mut child = pty.slave.spawn_command(cmd).expect("spawn the test binary");
    drop(pty.slave);
    let mut reader = pty.master.try_clone_reader().unwrap();
    let out = Arc::new(Mutex::new(Vec::new()));
    let sink = out.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    let end = Instant::now() + LONG;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < end, "the panicking child did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success(), "the child was meant to panic");

    // The terminal as the child left it (the master reads the slave's settings).
    let fd = pty.master.as_raw_fd().expect("pty master fd");
    let mut tio: libc::termios = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::tcgetattr(fd, &mut tio) }, 0, "tcgetattr on the pty");
    assert!(tio.c_lflag & libc::ICANON != 0, "line editing (ICANON) is back on");
    assert!(tio.c_lflag & libc::ECHO != 0, "echo is back on");

    std::thread::sleep(Duration::from_millis(200));
    let bytes = out.lock().unwrap().clone();
    let text = String::from_utf8_lossy(&bytes);
    let pos = |needle: &str| text.find(needle);
    let entered =
        pos("\x1b[?1049h").unwrap_or_else(|| panic!("never entered the alternate screen: {text:?}"));
    let left =
        text.rfind("\x1b[?1049l").unwrap_or_else(|| panic!("never left the alternate screen: {text:?}"));
    let shown =
        text.rfind("\x1b[?25h").unwrap_or_else(|| panic!("the cursor was never shown again: {text:?}"));
    let message =
        pos("deliberate panic inside the TUI").unwrap_or_else(|| panic!("no panic message: {text:?}"));
    assert!(entered < left && left < message && shown < message, "restored before the message: {text:?}");
}
