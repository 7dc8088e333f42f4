use std::path::PathBuf;
use std::process::ExitCode;

use bty_core::agent::ServerClient;
use bty_tui::app::App;
use bty_tui::images::ImageSources;
use bty_tui::runner::{Config, Msg, Runner};
use bty_tui::{targets, term};
use clap::Parser;
use ratatui::crossterm::event::{self, Event};

/// The interactive flasher: pick an image and a disk, confirm, flash.
///
/// Keys: Up/Down (or k/j) move, Enter chooses, Esc goes back, y confirms the
/// write, c cancels a running flash, ? shows help, q quits.
#[derive(Parser)]
#[command(name = "bty-tui", version = bty_core::VERSION)]
struct Args {
    /// Local image directory (the USB stick's BTY_IMAGES partition).
    #[arg(long, env = "BTY_IMAGE_ROOT", default_value = "/var/lib/bty/images")]
    image_root: PathBuf,
    /// A catalog.toml (path or http(s) URL) whose images are listed too.
    #[arg(long, value_name = "PATH|URL")]
    catalog: Option<String>,
    /// bty-web base URL: list its images, stream them from it, report the outcome.
    #[arg(long, requires = "mac")]
    server: Option<String>,
    /// This machine's MAC as the server knows it (server mode).
    #[arg(long, requires = "server")]
    mac: Option<String>,
    /// The offer token the server wants on reports (server mode; default:
    /// `bty.token=` from /proc/cmdline when booted by bty-web).
    #[arg(long, env = "BTY_OFFER_TOKEN", hide_env_values = true, requires = "server")]
    offer_token: Option<String>,
    /// Offer this file (or device) as a target, listed first; repeatable.
    /// Also `BTY_TUI_EXTRA_TARGETS=PATH:PATH`.
    #[arg(long, value_name = "PATH")]
    target_file: Vec<PathBuf>,
    /// Skip the read-back verification after writing.
    #[arg(long)]
    no_verify: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let client = match (&args.server, &args.mac) {
        (Some(s), Some(m)) => match ServerClient::new(s, m) {
            Ok(c) => {
                let token = args
                    .offer_token
                    .clone()
                    .or_else(|| bty_core::agent::BootArgs::from_proc().ok().and_then(|b| b.token));
                Some(c.with_offer_token(token))
            }
            Err(e) => {
                eprintln!("bty-tui: {e}");
                return ExitCode::from(2);
            }
        },
        _ => None,
    };
    let mode = match &client {
        Some(c) => format!("server {} | mac {}", c.base(), c.mac().hyphenated()),
        None => format!("local {}", args.image_root.display()),
    };
    let mut app = App::new(mode, client.is_some());
    let mut runner = Runner::new(Config {
        sources: ImageSources {
            root: args.image_root,
            catalog: args.catalog,
            server: client.as_ref().map(|c| c.base().to_string()),
        },
        extra_targets: targets::extra_targets(&args.target_file),
        client,
        verify: !args.no_verify,
    });

    term::install_panic_hook();
    let (mut tui, guard) = match term::setup() {
        Ok(t) => t,
        Err(e) => {
            term::restore();
            eprintln!("bty-tui: cannot set up the terminal: {e}");
            return ExitCode::from(1);
        }
    };
    let tx = runner.sender();
    std::thread::spawn(move || loop {
        let msg = match event::read() {
            Ok(Event::Key(k)) => match term::key(k) {
                Some(key) => Msg::Key(key),
                None => continue,
            },
            Ok(Event::Resize(..)) => Msg::Redraw,
            Ok(_) => continue,
            Err(_) => Msg::InputClosed,
        };
        let closed = matches!(msg, Msg::InputClosed);
        if tx.send(msg).is_err() || closed {
            return;
        }
    });
    let result = runner.run(&mut tui, &mut app);
    drop(guard);
    match result {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("bty-tui: terminal error: {e}");
            ExitCode::from(1)
        }
    }
}
