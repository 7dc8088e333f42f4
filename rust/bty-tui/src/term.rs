//! Terminal setup and, above all, restoration: on normal exit, on error (the
//! guard's `Drop`) and on panic (a hook), so an operator is never left with a
//! raw-mode console on a BMC.

use std::io::{self, Stdout};

use ratatui::backend::CrosstermBackend;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::crossterm::{cursor, execute, terminal};
use ratatui::layout::Rect;
use ratatui::{Terminal, TerminalOptions, Viewport};

use crate::app::Key;

pub type Tui = Terminal<CrosstermBackend<Stdout>>;

/// Size used when the terminal reports none: serial consoles say 0x0.
pub const FALLBACK: (u16, u16) = (80, 24);

pub struct Guard;

impl Drop for Guard {
    fn drop(&mut self) {
        restore();
    }
}

pub fn restore() {
    let _ = terminal::disable_raw_mode();
    let _ = execute!(io::stdout(), terminal::LeaveAlternateScreen, cursor::Show);
}

/// Restore the terminal before the default hook prints the panic message, so
/// the message is readable and the shell is usable.
pub fn install_panic_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore();
        previous(info);
    }));
}

pub fn setup() -> io::Result<(Tui, Guard)> {
    terminal::enable_raw_mode()?;
    let guard = Guard;
    execute!(io::stdout(), terminal::EnterAlternateScreen, cursor::Hide)?;
    let viewport = match terminal::size() {
        Ok((w, h)) if w > 0 && h > 0 => Viewport::Fullscreen,
        _ => Viewport::Fixed(Rect::new(0, 0, FALLBACK.0, FALLBACK.1)),
    };
    let term = Terminal::with_options(CrosstermBackend::new(io::stdout()), TerminalOptions { viewport })?;
    Ok((term, guard))
}

pub fn key(ev: KeyEvent) -> Option<Key> {
    if ev.kind == KeyEventKind::Release {
        return None;
    }
    if ev.modifiers.contains(KeyModifiers::CONTROL) {
        return matches!(ev.code, KeyCode::Char('c') | KeyCode::Char('d')).then_some(Key::Interrupt);
    }
    Some(match ev.code {
        KeyCode::Up => Key::Up,
        KeyCode::Down => Key::Down,
        KeyCode::PageUp => Key::PageUp,
        KeyCode::PageDown => Key::PageDown,
        KeyCode::Home => Key::Home,
        KeyCode::End => Key::End,
        KeyCode::Enter => Key::Enter,
        KeyCode::Esc => Key::Esc,
        KeyCode::Backspace => Key::Backspace,
        KeyCode::Char(c) => Key::Char(c),
        _ => return None,
    })
}
