//! The event loop: keys, I/O results and flash progress arrive on one channel;
//! the [`App`] decides, this module carries out its effects. Slow work (image
//! listing, planning, flashing, reporting) runs on threads so the screen keeps
//! answering.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::Instant;

use bty_core::agent::ServerClient;
use bty_core::digest::Expected;
use bty_core::disks::human_size;
use bty_core::flash::{self, FlashRequest, FlashSummary, Plan, Progress};
use bty_core::source::Source;
use bty_core::wire::FlashStatus;
use bty_core::ErrorKind;

use crate::app::{App, DiskItem, Effect, ImageItem, Key, Origin, Outcome, PlanView, ProgressView};
use crate::images::{ImageSources, Listing};
use crate::targets;
use crate::term::Tui;

pub enum Msg {
    Key(Key),
    Redraw,
    Images(Listing),
    Planned {
        seq: u64,
        result: Result<Box<(Plan, FlashRequest)>, String>,
    },
    Progress(ProgressView),
    Finished(Outcome),
    Reported(String),
    /// The terminal's input is gone (console closed).
    InputClosed,
}

pub struct Config {
    pub sources: ImageSources,
    pub extra_targets: Vec<PathBuf>,
    pub client: Option<ServerClient>,
    pub verify: bool,
}

pub struct Runner {
    cfg: Config,
    tx: Sender<Msg>,
    rx: Receiver<Msg>,
    plan_seq: u64,
    planned: Option<(Plan, FlashRequest)>,
    cancel: Arc<AtomicBool>,
    /// Exit status of the last flash (0 when none ran).
    last_status: i32,
    /// No more keys will come: leave once nothing is running.
    input_closed: bool,
    /// The flash worker, joined before exit so its report to the server is never cut off.
    worker: Option<std::thread::JoinHandle<()>>,
}

impl Runner {
    pub fn new(cfg: Config) -> Runner {
        let (tx, rx) = channel();
        Runner {
            cfg,
            tx,
            rx,
            plan_seq: 0,
            planned: None,
            cancel: Arc::new(AtomicBool::new(false)),
            last_status: 0,
            input_closed: false,
            worker: None,
        }
    }

    pub fn sender(&self) -> Sender<Msg> {
        self.tx.clone()
    }

    /// Run until the operator quits; returns the process exit code.
    pub fn run(&mut self, term: &mut Tui, app: &mut App) -> std::io::Result<i32> {
        self.apply(app, Effect::ReloadImages);
        loop {
            term.draw(|f| crate::ui::draw(f, app))?;
            let Ok(mut msg) = self.rx.recv() else { return Ok(self.last_status) };
            // Progress arrives faster than a serial line can repaint: apply
            // everything pending, then draw once.
            loop {
                if let Some(code) = self.on_msg(app, msg) {
                    if let Some(w) = self.worker.take() {
                        let _ = w.join();
                    }
                    return Ok(code);
                }
                match self.rx.try_recv() {
                    Ok(m) => msg = m,
                    Err(_) => break,
                }
            }
        }
    }

    fn on_msg(&mut self, app: &mut App, msg: Msg) -> Option<i32> {
        match msg {
            Msg::Key(k) => {
                let effect = app.handle(k);
                if effect == Effect::Quit {
                    return Some(self.last_status);
                }
                self.apply(app, effect);
            }
            Msg::Redraw => {}
            Msg::Images(l) => app.set_images(l.images, l.notices),
            Msg::Planned { seq, result } if seq == self.plan_seq => match result {
                Ok(planned) => {
                    app.plan_ready(Ok(plan_view(&planned.0)));
                    self.planned = Some(*planned);
                }
                Err(e) => app.plan_ready(Err(e)),
            },
            Msg::Planned { .. } => {}
            Msg::Progress(p) => app.progress(p),
            Msg::Finished(o) => {
                self.last_status = match &o {
                    Outcome::Done { .. } => 0,
                    Outcome::Failed { .. } => 1,
                    Outcome::Cancelled { .. } => ErrorKind::Cancelled.exit_code(),
                };
                app.finished(o);
                if self.input_closed {
                    return Some(self.last_status);
                }
            }
            Msg::Reported(r) => app.reported(r),
            Msg::InputClosed => {
                // A flash in progress is never abandoned half-way because the console went away.
                if app.screen != crate::app::Screen::Flashing {
                    return Some(self.last_status);
                }
                self.input_closed = true;
            }
        }
        None
    }

    fn apply(&mut self, app: &mut App, effect: Effect) {
        match effect {
            Effect::None | Effect::Quit => {}
            Effect::ReloadImages => {
                let sources = self.cfg.sources.clone();
                let tx = self.tx.clone();
                std::thread::spawn(move || {
                    let _ = tx.send(Msg::Images(sources.load()));
                });
            }
            // sysfs is fast; no thread needed.
            Effect::RescanDisks => match targets::scan(&self.cfg.extra_targets) {
                Ok(d) => app.set_disks(d),
                Err(e) => app.message = Some(e),
            },
            Effect::Plan { image, disk } => {
                self.plan_seq += 1;
                self.planned = None;
                let (Some(img), Some(d)) = (app.images.get(image), app.disks.get(disk)) else { return };
                let req = request(img, d, self.cfg.verify);
                let (tx, seq) = (self.tx.clone(), self.plan_seq);
                std::thread::spawn(move || {
                    let result = req
                        .and_then(|req| flash::plan(&req).map(|p| Box::new((p, req))))
                        .map_err(|e| e.to_string());
                    let _ = tx.send(Msg::Planned { seq, result });
                });
            }
            Effect::Flash => {
                let Some((plan, req)) = self.planned.take() else {
                    app.finished(Outcome::Failed { message: "no plan to execute".into() });
                    return;
                };
                self.cancel = Arc::new(AtomicBool::new(false));
                let cancel = self.cancel.clone();
                let tx = self.tx.clone();
                let client = self.cfg.client.clone();
                self.worker = Some(std::thread::spawn(move || flash_worker(plan, req, cancel, tx, client)));
            }
            Effect::Cancel => self.cancel.store(true, Ordering::SeqCst),
            Effect::Reboot => {
                // SAFETY: sync and reboot take no pointers; reboot only returns on failure.
                unsafe {
                    libc::sync();
                    libc::reboot(libc::RB_AUTOBOOT);
                }
                app.message = Some(format!("cannot reboot: {}", std::io::Error::last_os_error()));
            }
        }
    }
}

fn request(img: &ImageItem, disk: &DiskItem, verify: bool) -> bty_core::Result<FlashRequest> {
    Ok(FlashRequest {
        source: Source::parse(&img.location)?,
        target: PathBuf::from(&disk.path),
        expected: Expected { sha256: img.sha256.clone(), blake3: None },
        bmap: None,
        verify,
        // Local files were detected from their bytes; catalogs may declare a
        // format for names that say nothing.
        format_hint: if img.origin == Origin::Local { None } else { img.format },
    })
}

fn plan_view(plan: &Plan) -> PlanView {
    PlanView {
        lines: plan.human().lines().filter(|l| !l.starts_with("PROBLEM:")).map(str::to_string).collect(),
        problems: plan.problems.clone(),
    }
}

fn progress_view(p: &Progress) -> ProgressView {
    ProgressView {
        phase: p.phase.as_str().to_string(),
        bytes: p.bytes,
        total: p.total,
        source_bytes: p.source_bytes,
        source_total: p.source_total,
        rate_bps: p.rate_bps,
        elapsed_s: p.elapsed_s,
        fraction: p.fraction(),
        eta_s: p.eta_s(),
    }
}

pub fn summary_lines(s: &FlashSummary) -> Vec<String> {
    let mut out = vec![format!(
        "flashed {} onto {}: {} in {:.1}s ({}/s)",
        s.source,
        s.target,
        human_size(s.image_bytes),
        s.seconds.total,
        human_size(s.throughput_bps as u64)
    )];
    if s.verified {
        out.push("read back and verified".into());
    }
    if let Some(d) = &s.published {
        out.push(format!("sha256 {}", d.sha256));
    }
    if s.gpt_backup_moved {
        out.push("GPT backup header moved to the end of the disk".into());
    }
    if s.partition_table_reread == Some(false) {
        out.push("the kernel could not re-read the partition table; reboot before using it".into());
    }
    out
}

fn flash_worker(
    plan: Plan,
    req: FlashRequest,
    cancel: Arc<AtomicBool>,
    tx: Sender<Msg>,
    client: Option<ServerClient>,
) {
    let started = Instant::now();
    let mut written = 0u64;
    let result = flash::execute(&plan, &req, &cancel, &mut |p| {
        if p.phase == flash::Phase::Write {
            written = p.bytes;
        }
        let _ = tx.send(Msg::Progress(progress_view(p)));
    });
    let (outcome, report) = match result {
        Ok(s) => {
            let lines = summary_lines(&s);
            (Outcome::Done { lines }, Ok((started.elapsed().as_secs_f64(), s.image_bytes)))
        }
        Err(e) if e.kind() == ErrorKind::Cancelled => (
            Outcome::Cancelled { bytes: written },
            Err("cancelled by the operator; the disk holds a partial write".to_string()),
        ),
        Err(e) => (Outcome::Failed { message: e.to_string() }, Err(e.to_string())),
    };
    let _ = tx.send(Msg::Finished(outcome));
    let Some(client) = client else { return };
    let _ = tx.send(Msg::Reported("reporting the outcome...".into()));
    let answer = match report {
        Ok((secs, bytes)) => client.post_done(Some(secs), Some(bytes)).map(|()| "recorded the flash as done"),
        Err(reason) => client
            .post_status(FlashStatus::Failed, Some(&reason), None, None)
            .map(|()| "recorded the failure"),
    };
    let _ = tx.send(Msg::Reported(match answer {
        Ok(s) => s.to_string(),
        Err(e) => format!("could not report to the server: {e}"),
    }));
}
