//! `bty`: inspect images, list disks, flash. A thin front end over `bty-core`.

mod cmd_agent;
mod cmd_disks;
mod cmd_flash;
mod cmd_inspect;
mod cmd_os;
mod cmd_provision;
mod console;
mod render;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  failure (I/O error, refused target, unreachable source, an image bty cannot reproduce
     such as a qcow2 with a backing file)
  2  wrong invocation: bad flags, a missing image or .bmap file, a write without --yes, or an
     input bty does not flash (tarball, lzo, 7z, rar, vhd, vmdk, zip of several files...),
     refused by name with what to do
  3  not permitted (writing a disk needs root)
  4  the image is damaged or inconsistent: digest mismatch, truncated or corrupt stream, data
     after a compressed stream, a failed checksum inside the format, bad container metadata
     (qcow2, zip, simg) or block map, read-back mismatch; never reported as done
  5  the target changed between planning and writing
  130 cancelled (Ctrl-C); the target holds a partial write";

#[derive(Parser)]
#[command(name = "bty", version, about = "Flash OS disk images onto disks, safely and fast", after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Run as the live-environment agent against this bty-web (with --mac).
    #[arg(long, requires = "mac")]
    server: Option<String>,
    /// This machine's MAC, for --server.
    #[arg(long, requires = "server")]
    mac: Option<String>,
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
    /// Live-environment agent: report inventory, follow the server's plan, report, reboot.
    /// Reads bty.server= and bty.mac= from /proc/cmdline unless given.
    Agent(cmd_agent::Args),
    /// The offline CIJOE step of a `cijoe-offline` flash: mount the written root filesystem,
    /// run the workflow bty-web hands out for this boot, report it (the agent does this after
    /// a verified flash; run it again by hand from the live environment's shell).
    Provision(cmd_provision::Args),
    /// The appliance's own releases: show a verified release manifest, download a release.
    #[command(after_help = EXIT_CODES)]
    Os(cmd_os::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        Some(Command::Disks(a)) => cmd_disks::run(a),
        Some(Command::Inspect(a)) => cmd_inspect::run(a),
        Some(Command::Flash(a)) => cmd_flash::run(a),
        Some(Command::Agent(a)) => cmd_agent::run(a),
        Some(Command::Provision(a)) => cmd_provision::run(a),
        Some(Command::Os(a)) => cmd_os::run(a),
        None if cli.server.is_some() => {
            cmd_agent::run(cmd_agent::Args { server: cli.server, mac: cli.mac, ..Default::default() })
        }
        None => {
            let _ = <Cli as clap::CommandFactory>::command().print_help();
            2
        }
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
