//! Drawing. Everything readable without colour: the selection is a `>` marker
//! plus reverse video, borders are ASCII (serial consoles and BMC viewers often
//! lack line-drawing glyphs), and states are spelled out in words.

use bty_core::disks::human_size;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::symbols::border;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph, Row, Table, TableState, Wrap};
use ratatui::Frame;

use crate::app::{App, Outcome, ProgressView, Screen};

const ASCII: border::Set = border::Set {
    top_left: "+",
    top_right: "+",
    bottom_left: "+",
    bottom_right: "+",
    vertical_left: "|",
    vertical_right: "|",
    horizontal_top: "-",
    horizontal_bottom: "-",
};

fn block(title: &str) -> Block<'_> {
    Block::default().borders(Borders::ALL).border_set(ASCII).title(format!(" {title} "))
}

fn selected() -> Style {
    Style::default().add_modifier(Modifier::REVERSED)
}

pub fn draw(f: &mut Frame, app: &App) {
    let [header, steps, body, message, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .areas(f.area());

    f.render_widget(Paragraph::new(format!("bty-tui {} | {}", bty_core::VERSION, app.mode)), header);
    f.render_widget(Paragraph::new(steps_line(app.screen)), steps);
    match app.screen {
        Screen::Images => images(f, app, body),
        Screen::Disks => disks(f, app, body),
        Screen::Confirm => confirm(f, app, body),
        Screen::Flashing => flashing(f, app, body),
        Screen::Result => result(f, app, body),
    }
    if let Some(m) = &app.message {
        f.render_widget(
            Paragraph::new(format!("! {m}")).style(Style::default().add_modifier(Modifier::BOLD)),
            message,
        );
    }
    f.render_widget(Paragraph::new(app.footer()).style(selected()), footer);
    if app.help {
        help(f, body);
    }
}

fn steps_line(current: Screen) -> String {
    Screen::ORDER
        .iter()
        .enumerate()
        .map(|(i, s)| {
            if *s == current {
                format!("[{} {}]", i + 1, s.title())
            } else {
                format!(" {} {} ", i + 1, s.title())
            }
        })
        .collect::<Vec<_>>()
        .join(">")
}

fn opt_size(s: Option<u64>) -> String {
    s.map(human_size).unwrap_or_else(|| "?".into())
}

fn images(f: &mut Frame, app: &App, area: Rect) {
    let b = block("Choose an image");
    let inner = b.inner(area);
    f.render_widget(b, area);
    // Notices wrap; reserve their wrapped height, leaving room for the list.
    let width = usize::from(inner.width.max(1));
    let notice_rows: usize = app.notices.iter().map(|n| (n.chars().count() + 2).div_ceil(width)).sum();
    let notice_rows = notice_rows.min(usize::from(inner.height / 2)) as u16;
    let [notes, list] = Layout::vertical([Constraint::Length(notice_rows), Constraint::Min(1)]).areas(inner);
    let notice_lines: Vec<Line> = app.notices.iter().map(|n| Line::from(format!("! {n}"))).collect();
    f.render_widget(Paragraph::new(notice_lines).wrap(Wrap { trim: false }), notes);
    if app.images.is_empty() {
        let text = if app.images_loading {
            "loading the image list..."
        } else {
            "no images found (press r to look again)"
        };
        f.render_widget(Paragraph::new(text), list);
        return;
    }
    let rows = app.images.iter().map(|i| {
        Row::new(vec![
            i.name.clone(),
            i.format.map(|f| f.as_str().to_string()).unwrap_or_else(|| "?".into()),
            i.arch.clone().unwrap_or_else(|| "-".into()),
            opt_size(i.disk_size),
            opt_size(i.download_size),
            i.origin.as_str().to_string(),
        ])
    });
    let table = Table::new(
        rows,
        [
            Constraint::Min(20),
            Constraint::Length(6),
            Constraint::Length(7),
            Constraint::Length(9),
            Constraint::Length(9),
            Constraint::Length(7),
        ],
    )
    .header(Row::new(vec!["NAME", "FORMAT", "ARCH", "ON DISK", "DOWNLOAD", "SOURCE"]))
    .row_highlight_style(selected())
    .highlight_symbol("> ");
    let mut state = TableState::default().with_selected(Some(app.image_sel));
    f.render_stateful_widget(table, list, &mut state);
}

fn disks(f: &mut Frame, app: &App, area: Rect) {
    let title = match app.selected_image() {
        Some(i) => format!("Choose the disk to overwrite with {}", i.name),
        None => "Choose a disk".into(),
    };
    let b = block(&title);
    let inner = b.inner(area);
    f.render_widget(b, area);
    if app.disks.is_empty() {
        f.render_widget(Paragraph::new("no disks found (plug one in and press r)"), inner);
        return;
    }
    // Device paths are short; offered files may not be.
    let path_width = app.disks.iter().map(|d| d.path.chars().count()).max().unwrap_or(0).clamp(14, 32) as u16;
    let rows = app.disks.iter().map(|d| {
        Row::new(vec![
            d.path.clone(),
            opt_size(d.size),
            d.model.clone(),
            d.transport.clone(),
            d.serial.clone(),
            d.note.clone(),
        ])
    });
    let table = Table::new(
        rows,
        [
            Constraint::Length(path_width),
            Constraint::Length(10),
            Constraint::Min(10),
            Constraint::Length(6),
            Constraint::Length(14),
            Constraint::Length(7),
        ],
    )
    .header(Row::new(vec!["PATH", "SIZE", "MODEL", "TRAN", "SERIAL", "NOTE"]))
    .row_highlight_style(selected())
    .highlight_symbol("> ");
    let mut state = TableState::default().with_selected(Some(app.disk_sel));
    f.render_stateful_widget(table, inner, &mut state);
}

fn confirm(f: &mut Frame, app: &App, area: Rect) {
    let b = block("Confirm: dry-run plan");
    let mut lines: Vec<Line> = Vec::new();
    match &app.plan {
        None => lines.push(Line::from("checking the image and the disk...")),
        Some(Err(e)) => {
            lines.push(Line::from("The plan failed; nothing was written:"));
            lines.push(Line::from(e.clone()));
        }
        Some(Ok(p)) => {
            lines.extend(p.lines.iter().map(|l| Line::from(l.clone())));
            if p.problems.is_empty() {
                let disk = app.selected_disk().map(|d| d.path.as_str()).unwrap_or("the disk");
                lines.push(Line::from(""));
                lines.push(Line::from(Span::styled(
                    format!("Everything on {disk} will be lost. Press y to write, n to go back."),
                    Style::default().add_modifier(Modifier::BOLD),
                )));
            } else {
                lines.push(Line::from(""));
                lines.push(Line::from("Cannot write, because:"));
                lines.extend(p.problems.iter().map(|l| Line::from(format!("PROBLEM: {l}"))));
            }
        }
    }
    f.render_widget(Paragraph::new(lines).block(b).wrap(Wrap { trim: false }), area);
}

/// `[#####.....]` at any width: no colour, no block glyphs.
pub fn ascii_bar(fraction: f64, width: usize) -> String {
    let filled = ((fraction.clamp(0.0, 1.0) * width as f64).round() as usize).min(width);
    format!("[{}{}]", "#".repeat(filled), ".".repeat(width - filled))
}

fn seconds(s: f64) -> String {
    let s = s.round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

fn progress_lines(p: &ProgressView) -> Vec<Line<'static>> {
    let phases = ["write", "sync", "finalize", "verify"]
        .iter()
        .map(|ph| if *ph == p.phase { format!("[{ph}]") } else { ph.to_string() })
        .collect::<Vec<_>>()
        .join(" > ");
    if p.phase == "sync" || p.phase == "finalize" {
        // One fsync (or a few header writes) that reports nothing until it
        // returns: no bar, no percentage, just what is already written.
        let what = if p.phase == "sync" {
            "syncing: writing cached data to the disk..."
        } else {
            "finishing: partition table..."
        };
        return vec![
            Line::from(format!("phase:      {phases}")),
            Line::from(what),
            Line::from(format!("written:    {} of the image", human_size(p.bytes))),
            Line::from(format!("elapsed:    {}", seconds(p.elapsed_s))),
        ];
    }
    let pct = p.fraction.map(|f| format!(" {:3.0}%", f * 100.0)).unwrap_or_default();
    let mut lines = vec![
        Line::from(format!("phase:      {phases}")),
        Line::from(format!("{}{pct}", ascii_bar(p.fraction.unwrap_or(0.0), 50))),
        Line::from(format!(
            "image:      {} of {}",
            human_size(p.bytes),
            p.total.map(human_size).unwrap_or_else(|| "unknown".into())
        )),
    ];
    if p.source_total != p.total || p.source_bytes != p.bytes {
        lines.push(Line::from(format!(
            "read:       {} of {}",
            human_size(p.source_bytes),
            p.source_total.map(human_size).unwrap_or_else(|| "unknown".into())
        )));
    }
    lines.push(Line::from(format!("throughput: {}/s", human_size(p.rate_bps as u64))));
    lines.push(Line::from(format!(
        "elapsed:    {}   ETA: {}",
        seconds(p.elapsed_s),
        p.eta_s.map(seconds).unwrap_or_else(|| "-".into())
    )));
    lines
}

fn what_where(app: &App) -> String {
    format!(
        "{} -> {}",
        app.selected_image().map(|i| i.name.as_str()).unwrap_or("?"),
        app.selected_disk().map(|d| d.path.as_str()).unwrap_or("?")
    )
}

fn flashing(f: &mut Frame, app: &App, area: Rect) {
    let mut lines = vec![Line::from(format!("Flashing {}", what_where(app))), Line::from("")];
    match &app.progress {
        None => lines.push(Line::from("starting...")),
        Some(p) => lines.extend(progress_lines(p)),
    }
    lines.push(Line::from(""));
    if app.cancel_prompt {
        lines.push(Line::from(Span::styled(
            "Stop the flash? The disk will hold a partial write and will not boot. y/n",
            Style::default().add_modifier(Modifier::BOLD | Modifier::REVERSED),
        )));
    } else if app.cancelling {
        lines.push(Line::from("cancelling: waiting for the writer to stop..."));
    }
    f.render_widget(Paragraph::new(lines).block(block("Flashing")).wrap(Wrap { trim: false }), area);
}

fn result(f: &mut Frame, app: &App, area: Rect) {
    let mut lines = vec![Line::from(what_where(app)), Line::from("")];
    match &app.outcome {
        Some(Outcome::Done { lines: l }) => {
            lines.push(Line::from(Span::styled("DONE", Style::default().add_modifier(Modifier::BOLD))));
            lines.extend(l.iter().map(|s| Line::from(s.clone())));
        }
        Some(Outcome::Failed { message }) => {
            lines.push(Line::from(Span::styled("FAILED", Style::default().add_modifier(Modifier::BOLD))));
            lines.push(Line::from(message.clone()));
            lines
                .push(Line::from("The disk may hold a partial write; do not boot it before flashing again."));
        }
        Some(Outcome::Cancelled { bytes }) => {
            lines.push(Line::from(Span::styled("CANCELLED", Style::default().add_modifier(Modifier::BOLD))));
            lines.push(Line::from(format!(
                "Partial write: {} of the image was written to the disk (and synced) before the stop.",
                human_size(*bytes)
            )));
            lines.push(Line::from("The disk will not boot as it is; flash it again."));
        }
        None => {}
    }
    if let Some(r) = &app.report {
        lines.push(Line::from(""));
        lines.push(Line::from(format!("server: {r}")));
    }
    if app.reboot_prompt {
        lines.push(Line::from(""));
        lines.push(Line::from(Span::styled(
            "Reboot this machine now? y reboots, any other key goes back.",
            Style::default().add_modifier(Modifier::BOLD | Modifier::REVERSED),
        )));
    }
    f.render_widget(Paragraph::new(lines).block(block("Result")).wrap(Wrap { trim: false }), area);
}

const HELP: &[&str] = &[
    "Up/Down or k/j  move the selection (PgUp/PgDn, Home/End)",
    "Enter           choose the selected image or disk",
    "Esc or b        back to the previous screen",
    "r               reload images / re-scan disks",
    "y / n           write or go back on the confirm screen",
    "c               cancel a running flash (asks first)",
    "a               after a flash: flash another disk",
    "i               after a flash: back to the image list",
    "r               after a flash: reboot (asks first)",
    "q               quit (not while a flash is running)",
    "",
    "The disk holding the running system is listed but",
    "cannot be chosen. Nothing is written before y.",
];

fn help(f: &mut Frame, body: Rect) {
    let w = 62.min(body.width);
    let h = (HELP.len() as u16 + 2).min(body.height);
    let area = Rect::new(body.x + (body.width - w) / 2, body.y + (body.height - h) / 2, w, h);
    f.render_widget(Clear, area);
    let lines: Vec<Line> = HELP.iter().map(|l| Line::from(*l)).collect();
    f.render_widget(Paragraph::new(lines).block(block("Help")), area);
}

/// The screen as plain text, one line per row: what snapshot tests compare.
pub fn buffer_text(buf: &ratatui::buffer::Buffer) -> String {
    let mut out = String::new();
    for y in 0..buf.area.height {
        let mut line = String::new();
        for x in 0..buf.area.width {
            line.push_str(buf[(x, y)].symbol());
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}
