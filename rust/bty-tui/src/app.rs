//! The screen state machine. Pure: no terminal, no disks, no network. The
//! runner feeds it keys and results of I/O and carries out the [`Effect`]s it
//! returns, so every transition is testable without a terminal.

use bty_core::format::ImageFormat;

/// Keys the flasher reacts to, already decoded from the terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Up,
    Down,
    PageUp,
    PageDown,
    Home,
    End,
    Enter,
    Esc,
    Backspace,
    /// Ctrl-C: raw mode turns it into a key, so it is handled like one.
    Interrupt,
    Char(char),
}

/// What the runner must do after a transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    None,
    Quit,
    ReloadImages,
    RescanDisks,
    /// Probe the chosen image and disk (dry run); answer with [`App::plan_ready`].
    Plan {
        image: usize,
        disk: usize,
    },
    /// Execute the plan last delivered to [`App::plan_ready`].
    Flash,
    /// Set the engine's cancel flag.
    Cancel,
    Reboot,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Screen {
    Images,
    Disks,
    Confirm,
    Flashing,
    Result,
}

impl Screen {
    pub const ORDER: [Screen; 5] =
        [Screen::Images, Screen::Disks, Screen::Confirm, Screen::Flashing, Screen::Result];

    pub fn title(self) -> &'static str {
        match self {
            Screen::Images => "Image",
            Screen::Disks => "Disk",
            Screen::Confirm => "Confirm",
            Screen::Flashing => "Flash",
            Screen::Result => "Result",
        }
    }
}

/// Where an image was found; shown in the SOURCE column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Local,
    Catalog,
    Server,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Local => "local",
            Origin::Catalog => "catalog",
            Origin::Server => "server",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageItem {
    pub name: String,
    pub format: Option<ImageFormat>,
    pub arch: Option<String>,
    /// Bytes the image takes on the disk (decompressed, or a qcow2's virtual
    /// size), when known without reading it all.
    pub disk_size: Option<u64>,
    /// Bytes read or downloaded to flash it (the file as published).
    pub download_size: Option<u64>,
    pub origin: Origin,
    /// What [`bty_core::source::Source::parse`] gets: a path or a URL.
    pub location: String,
    pub sha256: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskItem {
    pub path: String,
    pub size: Option<u64>,
    pub model: String,
    pub transport: String,
    pub serial: String,
    /// Why this entry cannot be chosen (the running system's disk).
    pub blocked: Option<String>,
    /// Short marker for the NOTE column (`SYSTEM`, `file`, `mounted`).
    pub note: String,
}

/// The dry-run plan as shown on the confirm screen.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PlanView {
    pub lines: Vec<String>,
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct ProgressView {
    pub phase: String,
    pub bytes: u64,
    pub total: Option<u64>,
    pub source_bytes: u64,
    pub source_total: Option<u64>,
    pub rate_bps: f64,
    pub elapsed_s: f64,
    pub fraction: Option<f64>,
    pub eta_s: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Done {
        lines: Vec<String>,
    },
    Failed {
        message: String,
    },
    /// The operator cancelled; `bytes` reached the target before the stop.
    Cancelled {
        bytes: u64,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct App {
    /// `local` or `server URL, MAC ...`: the header line.
    pub mode: String,
    pub server_mode: bool,
    pub screen: Screen,
    pub help: bool,
    pub images: Vec<ImageItem>,
    pub images_loading: bool,
    /// Things the operator must know about the image list (server unreachable,
    /// catalog problems).
    pub notices: Vec<String>,
    pub image_sel: usize,
    pub disks: Vec<DiskItem>,
    pub disk_sel: usize,
    /// One-line feedback on the last key (refusals, hints).
    pub message: Option<String>,
    /// `None` while the plan is being computed.
    pub plan: Option<Result<PlanView, String>>,
    pub progress: Option<ProgressView>,
    pub cancel_prompt: bool,
    pub cancelling: bool,
    /// The result screen asks before rebooting: `r` means reload or re-scan
    /// on the other screens, so one stray key must not restart the machine.
    pub reboot_prompt: bool,
    pub outcome: Option<Outcome>,
    /// Server mode: what happened to the report of the outcome.
    pub report: Option<String>,
}

impl App {
    pub fn new(mode: impl Into<String>, server_mode: bool) -> App {
        App {
            mode: mode.into(),
            server_mode,
            screen: Screen::Images,
            help: false,
            images: Vec::new(),
            images_loading: true,
            notices: Vec::new(),
            image_sel: 0,
            disks: Vec::new(),
            disk_sel: 0,
            message: None,
            plan: None,
            progress: None,
            cancel_prompt: false,
            cancelling: false,
            reboot_prompt: false,
            outcome: None,
            report: None,
        }
    }

    pub fn selected_image(&self) -> Option<&ImageItem> {
        self.images.get(self.image_sel)
    }

    pub fn selected_disk(&self) -> Option<&DiskItem> {
        self.disks.get(self.disk_sel)
    }

    /// A finished, successful flash: the process exit code depends on it.
    pub fn succeeded(&self) -> bool {
        matches!(self.outcome, Some(Outcome::Done { .. }))
    }

    pub fn set_images(&mut self, images: Vec<ImageItem>, notices: Vec<String>) {
        let keep = self.selected_image().map(|i| i.location.clone());
        self.images = images;
        self.notices = notices;
        self.images_loading = false;
        self.image_sel = keep
            .and_then(|loc| self.images.iter().position(|i| i.location == loc))
            .unwrap_or(0)
            .min(self.images.len().saturating_sub(1));
    }

    /// New scan result. The selection follows the same path when it is still
    /// there; otherwise it lands on the first disk that may be chosen.
    pub fn set_disks(&mut self, disks: Vec<DiskItem>) {
        let keep = self.selected_disk().map(|d| d.path.clone());
        self.disks = disks;
        self.disk_sel = keep
            .and_then(|p| self.disks.iter().position(|d| d.path == p && d.blocked.is_none()))
            .or_else(|| self.disks.iter().position(|d| d.blocked.is_none()))
            .unwrap_or(0);
    }

    pub fn plan_ready(&mut self, plan: Result<PlanView, String>) {
        if self.screen == Screen::Confirm {
            self.plan = Some(plan);
        }
    }

    pub fn progress(&mut self, p: ProgressView) {
        if self.screen == Screen::Flashing {
            self.progress = Some(p);
        }
    }

    pub fn finished(&mut self, outcome: Outcome) {
        self.screen = Screen::Result;
        self.cancel_prompt = false;
        self.cancelling = false;
        self.outcome = Some(outcome);
        self.message = None;
    }

    pub fn reported(&mut self, what: String) {
        self.report = Some(what);
    }

    pub fn handle(&mut self, key: Key) -> Effect {
        if self.help {
            self.help = false;
            return Effect::None;
        }
        if key == Key::Char('?') && !self.cancel_prompt && !self.reboot_prompt {
            self.help = true;
            return Effect::None;
        }
        self.message = None;
        match self.screen {
            Screen::Images => self.on_images(key),
            Screen::Disks => self.on_disks(key),
            Screen::Confirm => self.on_confirm(key),
            Screen::Flashing => self.on_flashing(key),
            Screen::Result => self.on_result(key),
        }
    }

    fn on_images(&mut self, key: Key) -> Effect {
        if let Some(sel) = move_selection(key, self.image_sel, self.images.len()) {
            self.image_sel = sel;
            return Effect::None;
        }
        match key {
            Key::Enter | Key::Char(' ') => {
                if self.images.is_empty() {
                    self.message = Some(if self.images_loading {
                        "still loading the image list".into()
                    } else {
                        "no image to flash; put one in the image directory and press r".into()
                    });
                    return Effect::None;
                }
                self.screen = Screen::Disks;
                Effect::RescanDisks
            }
            Key::Char('r') => {
                self.images_loading = true;
                Effect::ReloadImages
            }
            Key::Char('q') | Key::Interrupt => Effect::Quit,
            _ => Effect::None,
        }
    }

    fn on_disks(&mut self, key: Key) -> Effect {
        if let Some(sel) = move_selection(key, self.disk_sel, self.disks.len()) {
            self.disk_sel = sel;
            return Effect::None;
        }
        match key {
            Key::Enter | Key::Char(' ') => match self.selected_disk() {
                None => {
                    self.message = Some("no disk found; plug one in and press r to re-scan".into());
                    Effect::None
                }
                Some(d) if d.blocked.is_some() => {
                    self.message = d.blocked.clone();
                    Effect::None
                }
                Some(_) => {
                    self.screen = Screen::Confirm;
                    self.plan = None;
                    Effect::Plan { image: self.image_sel, disk: self.disk_sel }
                }
            },
            Key::Char('r') => Effect::RescanDisks,
            Key::Esc | Key::Backspace | Key::Char('b') => {
                self.screen = Screen::Images;
                Effect::None
            }
            Key::Char('q') | Key::Interrupt => Effect::Quit,
            _ => Effect::None,
        }
    }

    fn on_confirm(&mut self, key: Key) -> Effect {
        match key {
            Key::Char('y') | Key::Char('Y') => match &self.plan {
                None => {
                    self.message = Some("still checking the image and the disk".into());
                    Effect::None
                }
                Some(Err(_)) => {
                    self.message = Some("the plan failed; press n to go back".into());
                    Effect::None
                }
                Some(Ok(p)) if !p.problems.is_empty() => {
                    self.message = Some("refusing to write: fix the problems listed, or go back".into());
                    Effect::None
                }
                Some(Ok(_)) => {
                    self.screen = Screen::Flashing;
                    self.progress = None;
                    self.outcome = None;
                    self.report = None;
                    Effect::Flash
                }
            },
            Key::Char('n') | Key::Char('N') | Key::Esc | Key::Backspace | Key::Char('b') => {
                self.screen = Screen::Disks;
                Effect::None
            }
            Key::Char('q') | Key::Interrupt => Effect::Quit,
            _ => Effect::None,
        }
    }

    fn on_flashing(&mut self, key: Key) -> Effect {
        if self.cancel_prompt {
            return match key {
                Key::Char('y') | Key::Char('Y') => {
                    self.cancel_prompt = false;
                    self.cancelling = true;
                    Effect::Cancel
                }
                Key::Char('n') | Key::Char('N') | Key::Esc => {
                    self.cancel_prompt = false;
                    Effect::None
                }
                _ => Effect::None,
            };
        }
        match key {
            Key::Char('c') | Key::Esc | Key::Interrupt if !self.cancelling => {
                self.cancel_prompt = true;
                Effect::None
            }
            Key::Char('q') => {
                self.message = Some("a flash is running: press c to cancel it first".into());
                Effect::None
            }
            _ => Effect::None,
        }
    }

    fn on_result(&mut self, key: Key) -> Effect {
        if self.reboot_prompt {
            self.reboot_prompt = false;
            return match key {
                Key::Char('y') | Key::Char('Y') => Effect::Reboot,
                _ => Effect::None,
            };
        }
        match key {
            Key::Char('r') => {
                self.reboot_prompt = true;
                Effect::None
            }
            Key::Char('a') => {
                self.screen = Screen::Disks;
                self.outcome = None;
                self.progress = None;
                self.report = None;
                Effect::RescanDisks
            }
            Key::Char('i') => {
                self.screen = Screen::Images;
                self.outcome = None;
                self.progress = None;
                self.report = None;
                Effect::None
            }
            Key::Char('q') | Key::Interrupt => Effect::Quit,
            _ => Effect::None,
        }
    }

    /// The footer: every action available on the current screen.
    pub fn footer(&self) -> &'static str {
        if self.help {
            return "any key: close help";
        }
        match self.screen {
            Screen::Images => "Up/Down:move  Enter:choose  r:reload  ?:help  q:quit",
            Screen::Disks => "Up/Down:move  Enter:choose  r:re-scan  Esc:back  ?:help  q:quit",
            Screen::Confirm => "y:WRITE  n/Esc:back  ?:help  q:quit",
            Screen::Flashing if self.cancel_prompt => "y:stop the flash  n/Esc:keep flashing",
            Screen::Flashing if self.cancelling => "cancelling...",
            Screen::Flashing => "c:cancel  ?:help",
            Screen::Result if self.reboot_prompt => "y:reboot now  any other key:back",
            Screen::Result => "r:reboot  a:flash another disk  i:image list  q:quit",
        }
    }
}

/// New selection for a movement key, or `None` when `key` does not move.
fn move_selection(key: Key, sel: usize, len: usize) -> Option<usize> {
    let last = len.saturating_sub(1);
    Some(match key {
        Key::Up | Key::Char('k') => sel.saturating_sub(1),
        Key::Down | Key::Char('j') => (sel + 1).min(last),
        Key::PageUp => sel.saturating_sub(10),
        Key::PageDown => (sel + 10).min(last),
        Key::Home | Key::Char('g') => 0,
        Key::End | Key::Char('G') => last,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn image(name: &str) -> ImageItem {
        ImageItem {
            name: name.into(),
            format: Some(ImageFormat::Zstd),
            arch: Some("x86_64".into()),
            disk_size: Some(4 << 20),
            download_size: Some(1 << 20),
            origin: Origin::Local,
            location: format!("/images/{name}"),
            sha256: None,
        }
    }

    pub(crate) fn disk(path: &str, blocked: bool) -> DiskItem {
        DiskItem {
            path: path.into(),
            size: Some(8 << 30),
            model: "QEMU HARDDISK".into(),
            transport: "sata".into(),
            serial: "S1".into(),
            blocked: blocked.then(|| format!("{path} holds the running system")),
            note: if blocked { "SYSTEM".into() } else { String::new() },
        }
    }

    fn ready() -> App {
        let mut app = App::new("local", false);
        app.set_images(vec![image("a.img.zst"), image("b.img.xz")], vec![]);
        app
    }

    #[test]
    fn walks_image_disk_confirm_flash_result() {
        let mut app = ready();
        assert_eq!(app.handle(Key::Down), Effect::None);
        assert_eq!(app.image_sel, 1);
        assert_eq!(app.handle(Key::Down), Effect::None);
        assert_eq!(app.image_sel, 1, "stops at the last entry");
        assert_eq!(app.handle(Key::Enter), Effect::RescanDisks);
        assert_eq!(app.screen, Screen::Disks);
        app.set_disks(vec![disk("/dev/sda", true), disk("/dev/sdb", false)]);
        assert_eq!(app.disk_sel, 1, "the system disk is skipped by default");
        assert_eq!(app.handle(Key::Enter), Effect::Plan { image: 1, disk: 1 });
        assert_eq!(app.screen, Screen::Confirm);
        assert_eq!(app.handle(Key::Char('y')), Effect::None, "no write before the plan is known");
        app.plan_ready(Ok(PlanView { lines: vec!["source: b".into()], problems: vec![] }));
        assert_eq!(app.handle(Key::Char('y')), Effect::Flash);
        assert_eq!(app.screen, Screen::Flashing);
        app.progress(ProgressView { phase: "write".into(), bytes: 5, ..Default::default() });
        assert_eq!(app.progress.as_ref().unwrap().bytes, 5);
        app.finished(Outcome::Done { lines: vec!["ok".into()] });
        assert_eq!(app.screen, Screen::Result);
        assert!(app.succeeded());
        assert_eq!(app.handle(Key::Char('a')), Effect::RescanDisks);
        assert_eq!(app.screen, Screen::Disks);
        assert!(app.outcome.is_none());
    }

    #[test]
    fn system_disk_cannot_be_chosen() {
        let mut app = ready();
        app.handle(Key::Enter);
        app.set_disks(vec![disk("/dev/sda", true)]);
        assert_eq!(app.handle(Key::Enter), Effect::None);
        assert_eq!(app.screen, Screen::Disks);
        assert!(app.message.as_deref().unwrap().contains("running system"));
    }

    #[test]
    fn problems_block_the_write() {
        let mut app = ready();
        app.handle(Key::Enter);
        app.set_disks(vec![disk("/dev/sdb", false)]);
        app.handle(Key::Enter);
        app.plan_ready(Ok(PlanView { lines: vec![], problems: vec!["too small".into()] }));
        assert_eq!(app.handle(Key::Char('y')), Effect::None);
        assert_eq!(app.screen, Screen::Confirm);
        app.plan_ready(Err("cannot open".into()));
        assert_eq!(app.handle(Key::Char('y')), Effect::None);
        assert_eq!(app.handle(Key::Char('n')), Effect::None);
        assert_eq!(app.screen, Screen::Disks);
        assert_eq!(app.handle(Key::Esc), Effect::None);
        assert_eq!(app.screen, Screen::Images);
    }

    #[test]
    fn cancel_needs_confirmation() {
        let mut app = ready();
        app.handle(Key::Enter);
        app.set_disks(vec![disk("/dev/sdb", false)]);
        app.handle(Key::Enter);
        app.plan_ready(Ok(PlanView::default()));
        app.handle(Key::Char('y'));
        assert_eq!(app.handle(Key::Char('q')), Effect::None, "no quitting mid-flash");
        assert_eq!(app.screen, Screen::Flashing);
        assert_eq!(app.handle(Key::Char('c')), Effect::None);
        assert!(app.cancel_prompt);
        assert_eq!(app.handle(Key::Char('n')), Effect::None);
        assert!(!app.cancel_prompt);
        app.handle(Key::Interrupt);
        assert_eq!(app.handle(Key::Char('y')), Effect::Cancel);
        assert!(app.cancelling);
        app.finished(Outcome::Cancelled { bytes: 42 });
        assert!(!app.succeeded());
        assert_eq!(app.handle(Key::Char('q')), Effect::Quit);
    }

    #[test]
    fn reboot_needs_confirmation() {
        let mut app = ready();
        app.finished(Outcome::Done { lines: vec![] });
        assert_eq!(app.handle(Key::Char('r')), Effect::None, "r alone never reboots");
        assert!(app.reboot_prompt);
        assert!(app.footer().starts_with("y:reboot now"));
        assert_eq!(app.handle(Key::Char('?')), Effect::None, "no help over the question");
        assert!(!app.reboot_prompt && !app.help, "any other key goes back");
        assert_eq!(app.screen, Screen::Result);
        app.handle(Key::Char('r'));
        assert_eq!(app.handle(Key::Char('r')), Effect::None, "a second r is not a yes");
        app.handle(Key::Char('r'));
        assert_eq!(app.handle(Key::Char('y')), Effect::Reboot);
        assert!(!app.reboot_prompt);
    }

    #[test]
    fn help_overlay_swallows_one_key() {
        let mut app = ready();
        app.handle(Key::Char('?'));
        assert!(app.help);
        assert_eq!(app.handle(Key::Char('q')), Effect::None);
        assert!(!app.help);
        assert_eq!(app.handle(Key::Char('q')), Effect::Quit);
    }

    #[test]
    fn empty_lists_explain_themselves() {
        let mut app = App::new("local", false);
        assert_eq!(app.handle(Key::Enter), Effect::None);
        assert!(app.message.as_deref().unwrap().contains("loading"));
        app.set_images(vec![], vec![]);
        assert_eq!(app.handle(Key::Enter), Effect::None);
        assert!(app.message.as_deref().unwrap().contains("no image"));
        assert_eq!(app.handle(Key::Char('r')), Effect::ReloadImages);
    }

    #[test]
    fn rescan_keeps_the_selection() {
        let mut app = ready();
        app.handle(Key::Enter);
        app.set_disks(vec![disk("/dev/sdb", false), disk("/dev/sdc", false)]);
        app.handle(Key::Down);
        app.set_disks(vec![disk("/dev/sda", false), disk("/dev/sdb", false), disk("/dev/sdc", false)]);
        assert_eq!(app.selected_disk().unwrap().path, "/dev/sdc");
        assert_eq!(app.handle(Key::Char('r')), Effect::RescanDisks);
    }
}
