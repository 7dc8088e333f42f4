//! Terminal rendering shared by the commands: tables and progress.

use std::io::IsTerminal;

use bty_core::disks::human_size;
use bty_core::flash::{Phase, Progress};

pub fn table(headers: &[&str], rows: &[[String; 7]]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r.iter()) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let s: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(headers.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

/// How progress is shown: a live bar on a terminal, milestone lines
/// (`bty: write 25%`) on anything else so serial-console automation can follow,
/// or NDJSON events.
pub enum ProgressView {
    Bar(indicatif::ProgressBar),
    Milestones { next: u32, phase: Option<Phase> },
    Json,
}

impl ProgressView {
    pub fn new(json: bool) -> Self {
        if json {
            ProgressView::Json
        } else if std::io::stderr().is_terminal() {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template("{prefix:>8} [{bar:40}] {msg}")
                    .expect("static template")
                    .progress_chars("=> "),
            );
            ProgressView::Bar(bar)
        } else {
            ProgressView::Milestones { next: 25, phase: None }
        }
    }

    pub fn update(&mut self, p: &Progress) {
        match self {
            ProgressView::Json => {
                let mut v = serde_json::to_value(p).expect("progress serialises");
                v["event"] = "progress".into();
                println!("{v}");
            }
            ProgressView::Bar(bar) if p.phase != Phase::Write && p.phase != Phase::Verify => {
                // One fsync or a few header writes: nothing to measure, so no percentage.
                bar.set_prefix(p.phase.as_str());
                bar.set_message(match p.phase {
                    Phase::Sync => {
                        format!("{} written; the disk is writing out its cached data...", human_size(p.bytes))
                    }
                    _ => "partition table...".to_string(),
                });
            }
            ProgressView::Bar(bar) => {
                bar.set_prefix(p.phase.as_str());
                bar.set_length(1000);
                bar.set_position((p.fraction().unwrap_or(0.0) * 1000.0) as u64);
                let mut msg = format!(
                    "{}{} {}/s",
                    human_size(p.bytes),
                    p.total.map(|t| format!(" / {}", human_size(t))).unwrap_or_default(),
                    human_size(p.rate_bps as u64)
                );
                if p.phase == Phase::Write && p.source_bytes > 0 && p.source_total != p.total {
                    msg += &format!(" (read {})", human_size(p.source_bytes));
                }
                if let Some(eta) = p.eta_s() {
                    msg += &format!(" ETA {}s", eta.round() as u64);
                }
                bar.set_message(msg);
            }
            ProgressView::Milestones { next, phase } => {
                if *phase != Some(p.phase) {
                    *phase = Some(p.phase);
                    *next = 25;
                    if p.phase != Phase::Write {
                        eprintln!("bty: {}", p.phase.as_str());
                    }
                }
                if let Some(f) = p.fraction() {
                    while *next <= 100 && f * 100.0 >= *next as f64 {
                        eprintln!("bty: {} {}%", p.phase.as_str(), next);
                        *next += 25;
                    }
                }
            }
        }
    }

    pub fn finish(&self) {
        if let ProgressView::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}
