//! The live environment's agent: report inventory, fetch the plan, act on it,
//! report the outcome, reboot. Every step leaves a `bty: ...` marker on the
//! console and in the kernel log so serial-console automation can follow.

use std::sync::atomic::AtomicBool;
use std::time::Instant;

use bty_core::agent::{collect_inventory, BootArgs, ServerClient};
use bty_core::digest::Expected;
use bty_core::disks;
use bty_core::flash::{self, FlashRequest, Phase};
use bty_core::format::ImageFormat;
use bty_core::source::Source;
use bty_core::wire::{FlashStatus, Plan, PlanMode};
use bty_core::Error;

use crate::console::marker;

#[derive(clap::Args, Default)]
pub struct Args {
    /// bty-web base URL (default: `bty.server=` from /proc/cmdline).
    #[arg(long)]
    pub server: Option<String>,
    /// This machine's MAC as the server knows it (default: `bty.mac=`).
    #[arg(long)]
    pub mac: Option<String>,
    /// The offer token reports must carry (default: `bty.token=`).
    #[arg(long, env = "BTY_OFFER_TOKEN", hide_env_values = true)]
    pub offer_token: Option<String>,
    /// Stay up when done instead of rebooting (for trying the agent by hand).
    #[arg(long)]
    pub no_reboot: bool,
    /// Power off instead of rebooting when done (also `bty.poweroff=1`).
    #[arg(long)]
    pub poweroff: bool,
    /// Skip the read-back verification after flashing.
    #[arg(long)]
    pub no_verify: bool,
    /// How a `cijoe-offline` workflow runs after the flash.
    #[command(flatten)]
    pub provision: crate::cmd_provision::RunArgs,
}

pub fn run(mut a: Args) -> i32 {
    let boot = if a.server.is_none() || a.mac.is_none() || a.offer_token.is_none() {
        BootArgs::from_proc().unwrap_or_default()
    } else {
        BootArgs::default()
    };
    a.poweroff |= boot.poweroff;
    let (Some(server), Some(mac)) = (a.server.clone().or(boot.server), a.mac.clone().or(boot.mac)) else {
        marker("agent: no server or MAC (pass --server and --mac, or boot with bty.server= bty.mac=)");
        return 2;
    };
    let token = a.offer_token.clone().or(boot.token);
    let client = match ServerClient::new(&server, &mac) {
        Ok(c) => c.with_offer_token(token),
        Err(e) => {
            marker(&format!("agent: {e}"));
            return e.kind().exit_code();
        }
    };
    marker(&format!("agent {} for {} (server {})", bty_core::VERSION, client.mac(), client.base()));

    match collect_inventory() {
        Ok(inv) => match client.post_inventory(&inv) {
            Ok(()) => marker(&format!("inventory reported ({} disks)", inv.disks.len())),
            Err(e) => marker(&format!("inventory not reported: {e}")),
        },
        Err(e) => marker(&format!("inventory not collected: {e}")),
    }

    let plan = match client.plan(20) {
        Ok(p) => p,
        Err(e) => {
            marker(&format!("agent failed: {e}"));
            return 1;
        }
    };
    if let Some(r) = &plan.reason {
        marker(&format!("server says: {r}"));
    }
    marker(&format!("plan: {}", plan.mode.as_str()));
    match plan.mode {
        PlanMode::Flash => match flash_from_plan(&client, &plan, !a.no_verify) {
            Ok(disk) => {
                // The flash is recorded done before the workflow runs: a
                // failing or crashing workflow is a failed run on a flashed
                // machine, never a reason to flash it again.
                if plan.provisioning_mode == "cijoe-offline" {
                    crate::cmd_provision::provision(&client, std::path::Path::new(&disk), &a.provision);
                }
                finish(&a, "flash complete")
            }
            Err(e) => {
                let reason = e.to_string();
                marker(&format!("flash failed: {reason}"));
                if let Err(pe) = client.post_status(FlashStatus::Failed, Some(&reason), None, None) {
                    marker(&format!("could not report the failure: {pe}"));
                }
                // No reboot: a failed machine waits at the console for an operator.
                e.kind().exit_code()
            }
        },
        PlanMode::Inventory => finish(&a, "inventory complete"),
        PlanMode::Local => finish(&a, "nothing to do"),
        PlanMode::Interactive => interactive(&client),
    }
}

/// Flash as the plan says and report it done; the disk written.
fn flash_from_plan(client: &ServerClient, plan: &Plan, verify: bool) -> Result<String, Error> {
    let image =
        plan.image.as_ref().ok_or_else(|| Error::failure("the plan says flash but names no image"))?;
    let serial = plan
        .target_disk_serial
        .as_deref()
        .ok_or_else(|| Error::failure("the plan says flash but names no target disk serial"))?;
    let disk = disks::find_by_serial(serial)?.ok_or_else(|| {
        let seen: Vec<String> = disks::list_disks()
            .unwrap_or_default()
            .into_iter()
            .map(|d| format!("{} ({})", d.path, d.serial.unwrap_or_else(|| "no serial".into())))
            .collect();
        Error::failure(format!(
            "no disk with serial {serial:?} on this machine; disks here: {}",
            seen.join(", ")
        ))
    })?;
    let req = FlashRequest {
        source: Source::parse(&image.url)?,
        target: disk.path.clone().into(),
        expected: Expected { sha256: image.sha256.clone(), blake3: None },
        bmap: None,
        verify,
        format_hint: image.format.as_deref().and_then(ImageFormat::parse),
    };
    marker(&format!("flash starting: {} -> {} (serial {serial})", image.name, disk.path));
    let started = Instant::now();
    let p = flash::plan(&req)?;
    if !p.is_valid() {
        return Err(Error::failure(p.problems.join("; ")));
    }
    let cancel = AtomicBool::new(false);
    let mut next = 25u32;
    let mut phase = Phase::Write;
    let summary = flash::execute(&p, &req, &cancel, &mut |ev| {
        if ev.phase != phase {
            phase = ev.phase;
            next = 25;
            marker(ev.phase.as_str());
        }
        if let Some(f) = ev.fraction() {
            while next <= 100 && f * 100.0 >= f64::from(next) {
                marker(&format!("{} {next}%", ev.phase.as_str()));
                next += 25;
            }
        }
    })?;
    marker(&format!(
        "wrote {} in {:.1}s ({}/s){}",
        disks::human_size(summary.image_bytes),
        summary.seconds.total,
        disks::human_size(summary.throughput_bps as u64),
        if summary.verified { ", verified" } else { "" }
    ));
    client.post_status(
        FlashStatus::Done,
        None,
        Some(started.elapsed().as_secs_f64()),
        Some(summary.image_bytes),
    )?;
    Ok(disk.path)
}

fn interactive(client: &ServerClient) -> i32 {
    let mut tui = std::process::Command::new("bty-tui");
    tui.arg("--server").arg(client.base()).arg("--mac").arg(client.mac().to_string());
    // In the environment, not the argument list: other processes can read
    // arguments from /proc.
    if let Some(t) = client.offer_token() {
        tui.env("BTY_OFFER_TOKEN", t);
    }
    let status = tui.status();
    match status {
        Ok(s) => s.code().unwrap_or(1),
        Err(e) => {
            marker(&format!(
                "interactive mode needs bty-tui, which cannot be started here ({e}); \
                 use `bty flash` from this shell instead"
            ));
            1
        }
    }
}

fn finish(a: &Args, what: &str) -> i32 {
    if a.no_reboot {
        marker(&format!("{what}; staying up (--no-reboot)"));
        return 0;
    }
    let verb = if a.poweroff { "powering off" } else { "rebooting" };
    marker(&format!("{what}; {verb}"));
    // SAFETY: sync and reboot take no pointers; reboot only returns on failure.
    unsafe {
        libc::sync();
        libc::reboot(if a.poweroff { libc::RB_POWER_OFF } else { libc::RB_AUTOBOOT });
    }
    marker(&format!("{verb} failed: {}", std::io::Error::last_os_error()));
    1
}
