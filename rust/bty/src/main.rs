//! `bty`: inspect images, list disks, flash. A thin front end over `bty-core`.

mod cmd_disks;
mod cmd_flash;
mod cmd_inspect;
mod render;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  failure (I/O error, refused target, bad source)
  2  usage error (bad flags or input; a write without --yes)
  3  not permitted (writing a disk needs root)
  4  integrity failure (digest mismatch, truncated or corrupt stream, read-back mismatch)
  5  the target changed between planning and writing
  130 cancelled (Ctrl-C); the target holds a partial write";

#[derive(Parser)]
#[command(name = "bty", version, about = "Flash OS disk images onto disks, safely and fast", after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the disks of this machine (from sysfs; no lsblk needed).
    Disks(cmd_disks::Args),
    /// Describe an image: format, sizes, partition table, published digest.
    Inspect(cmd_inspect::Args),
    /// Write an image onto a disk or into a file.
    #[command(after_help = EXIT_CODES)]
    Flash(cmd_flash::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Disks(a) => cmd_disks::run(a),
        Command::Inspect(a) => cmd_inspect::run(a),
        Command::Flash(a) => cmd_flash::run(a),
    };
    ExitCode::from(code as u8)
}

/// Print an engine error the way every command does and return its exit code.
pub(crate) fn report_error(e: &bty_core::Error, json: bool) -> i32 {
    if json {
        let v = serde_json::json!({"event": "error", "kind": e.kind().as_str(), "message": e.to_string()});
        println!("{v}");
    } else {
        eprintln!("bty: error: {e}");
    }
    e.kind().exit_code()
}
