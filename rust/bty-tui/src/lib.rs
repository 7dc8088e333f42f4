//! `bty-tui`: the interactive flasher for consoles (serial, BMC, SSH, tty1).
//!
//! [`app`] is the pure screen state machine, [`ui`] draws it, [`runner`]
//! carries out what it asks for with `bty-core` (the same flash engine as
//! `bty`), [`term`] owns the terminal.

pub mod app;
pub mod images;
pub mod runner;
pub mod targets;
pub mod term;
pub mod ui;
