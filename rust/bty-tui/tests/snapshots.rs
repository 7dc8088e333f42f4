//! Rendered screens at 80x24 compared with text files in `tests/snapshots/`.
//! `BTY_UPDATE_SNAPSHOTS=1 cargo test -p bty-tui --test snapshots` rewrites
//! them; review the diff before committing.

use bty_core::format::ImageFormat;
use bty_tui::app::{App, DiskItem, ImageItem, Key, Origin, Outcome, PlanView, ProgressView};
use bty_tui::ui;
use ratatui::backend::TestBackend;
use ratatui::Terminal;

fn render(app: &App) -> String {
    let mut t = Terminal::new(TestBackend::new(80, 24)).unwrap();
    t.draw(|f| ui::draw(f, app)).unwrap();
    // The version changes with every release; the layout does not.
    ui::buffer_text(t.backend().buffer()).replace(bty_core::VERSION, "VERSION")
}

fn check(name: &str, app: &App) {
    let got = render(app);
    let path = format!("{}/tests/snapshots/{name}.txt", env!("CARGO_MANIFEST_DIR"));
    if std::env::var_os("BTY_UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, &got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{path}: {e}; run with BTY_UPDATE_SNAPSHOTS=1 to create it"));
    assert_eq!(got, want, "{name} differs from {path}:\n{got}");
}

fn image(name: &str, format: ImageFormat, disk: Option<u64>, download: u64, origin: Origin) -> ImageItem {
    ImageItem {
        name: name.into(),
        format: Some(format),
        arch: bty_core::format::arch_hint(name).map(str::to_string),
        disk_size: disk,
        download_size: Some(download),
        origin,
        location: format!("/var/lib/bty/images/{name}"),
        sha256: None,
    }
}

fn disk(path: &str, size: u64, model: &str, tran: &str, serial: &str, system: bool) -> DiskItem {
    DiskItem {
        path: path.into(),
        size: Some(size),
        model: model.into(),
        transport: tran.into(),
        serial: serial.into(),
        blocked: system.then(|| format!("{path} holds the running system and cannot be overwritten")),
        note: if system { "SYSTEM".into() } else { String::new() },
    }
}

fn app() -> App {
    let mut app = App::new("local /var/lib/bty/images", false);
    app.set_images(
        vec![
            image("debian-13-amd64.img.zst", ImageFormat::Zstd, Some(2 << 30), 412 << 20, Origin::Local),
            image("ubuntu-24.04-x86_64.qcow2", ImageFormat::Qcow2, Some(20 << 30), 3 << 30, Origin::Local),
            // A catalog entry's size is the download's; the size on disk is unknown.
            image("rocky-9-aarch64.img.xz", ImageFormat::Xz, None, 900 << 20, Origin::Catalog),
        ],
        vec![],
    );
    app
}

fn with_disks(mut app: App) -> App {
    app.handle(Key::Enter);
    app.set_disks(vec![
        disk("/dev/nvme0n1", 512 << 30, "Samsung SSD 980", "nvme", "S64ANS0T123456", true),
        disk("/dev/sda", 480 << 30, "INTEL SSDSC2KB480G8", "sata", "PHYF1234567", false),
        disk("/dev/sdb", 16 << 30, "SanDisk Ultra", "usb", "4C530001", false),
    ]);
    app
}

fn plan_lines() -> Vec<String> {
    vec![
        "source:  /var/lib/bty/images/debian-13-amd64.img.zst".into(),
        "format:  zstd".into(),
        "size:    412.0 MiB (432013312 bytes) published, 2.0 GiB (2147483648 bytes) on disk".into(),
        "target:  /dev/sda (block device, 480.0 GiB, INTEL SSDSC2KB480G8)".into(),
        "checks:  read-back verification".into(),
    ]
}

fn confirming() -> App {
    let mut app = with_disks(app());
    app.handle(Key::Enter);
    app.plan_ready(Ok(PlanView { lines: plan_lines(), problems: vec![] }));
    app
}

fn flashing() -> App {
    let mut app = confirming();
    app.handle(Key::Char('y'));
    app.progress(ProgressView {
        phase: "write".into(),
        bytes: 1 << 30,
        total: Some(2 << 30),
        source_bytes: 200 << 20,
        source_total: Some(412 << 20),
        rate_bps: 180.0 * 1048576.0,
        elapsed_s: 5.7,
        fraction: Some(0.5),
        eta_s: Some(5.7),
    });
    app
}

#[test]
fn images_screen() {
    check("images", &app());
}

#[test]
fn images_loading_and_server_unreachable() {
    let loading = App::new("server http://10.0.2.100 | mac 52-54-00-12-34-56", true);
    check("images-loading", &loading);
    let mut app = loading.clone();
    app.set_images(
        vec![],
        vec!["server unreachable: cannot fetch http://10.0.2.100/images: Connection refused. \
              Local images are still listed; press r to retry."
            .into()],
    );
    check("images-server-unreachable", &app);
}

#[test]
fn disks_screen_marks_the_system_disk() {
    let mut app = with_disks(app());
    check("disks", &app);
    app.handle(Key::Up);
    app.handle(Key::Enter);
    check("disks-system-refused", &app);
}

#[test]
fn confirm_screens() {
    check("confirm", &confirming());
    let mut app = with_disks(app());
    app.handle(Key::Enter);
    check("confirm-planning", &app);
    app.plan_ready(Ok(PlanView {
        lines: plan_lines(),
        problems: vec![
            "/dev/sda is in use (mounted at /mnt); unmount it first, bty never unmounts for you".into()
        ],
    }));
    app.handle(Key::Char('y'));
    check("confirm-problems", &app);
}

#[test]
fn flashing_and_cancel_prompt() {
    let mut app = flashing();
    check("flashing", &app);
    app.handle(Key::Char('c'));
    check("flashing-cancel-prompt", &app);
}

/// The sync phase is one fsync that reports nothing until it returns: no bar
/// and no percentage, the bytes already written.
#[test]
fn syncing() {
    let mut app = flashing();
    app.progress(ProgressView {
        phase: "sync".into(),
        bytes: 2 << 30,
        total: None,
        elapsed_s: 12.0,
        ..Default::default()
    });
    check("flashing-sync", &app);
}

#[test]
fn result_screens() {
    let mut app = flashing();
    app.finished(Outcome::Done {
        lines: vec![
            "flashed /var/lib/bty/images/debian-13-amd64.img.zst onto /dev/sda: 2.0 GiB in 11.4s (180.0 MiB/s)"
                .into(),
            "read back and verified".into(),
        ],
    });
    app.reported("recorded the flash as done".into());
    check("result-done", &app);
    app.handle(Key::Char('r'));
    check("result-reboot-prompt", &app);
    let mut app = flashing();
    app.handle(Key::Char('c'));
    app.handle(Key::Char('y'));
    app.finished(Outcome::Cancelled { bytes: 1 << 30 });
    check("result-cancelled", &app);
    let mut app = flashing();
    app.finished(Outcome::Failed { message: "integrity: SHA-256 mismatch".into() });
    check("result-failed", &app);
}

#[test]
fn help_overlay() {
    let mut app = app();
    app.handle(Key::Char('?'));
    check("help", &app);
}
