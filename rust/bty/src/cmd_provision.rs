//! `bty provision`: the offline CIJOE step of a `cijoe-offline` flash, as
//! the agent runs it after a verified flash, and as an operator may run it
//! again from the live environment's shell. It finds the written root
//! filesystem, mounts it with /dev, /proc and /sys bound inside, runs the
//! workflow bty-web hands out for this boot (with the offer token), unmounts
//! and uploads cijoe's whole output. A failed workflow is a failed run on a
//! flashed machine: the flash stays done.

use std::path::{Path, PathBuf};

use bty_core::agent::{BootArgs, ServerClient};
use bty_core::cijoe::BtyValues;
use bty_core::provision::{self, Mounted, OfflineRun};
use bty_core::Error;

use crate::console::marker;

#[derive(clap::Args, Default)]
pub struct Args {
    /// The disk that was flashed.
    #[arg(long)]
    pub disk: PathBuf,
    /// bty-web base URL (default: `bty.server=` from /proc/cmdline).
    #[arg(long)]
    pub server: Option<String>,
    /// This machine's MAC as the server knows it (default: `bty.mac=`).
    #[arg(long)]
    pub mac: Option<String>,
    /// The offer token of this boot (default: `bty.token=`).
    #[arg(long, env = "BTY_OFFER_TOKEN", hide_env_values = true)]
    pub offer_token: Option<String>,
    #[command(flatten)]
    pub run: RunArgs,
}

/// Where and with what the workflow runs (shared with `bty agent`).
#[derive(clap::Args, Clone)]
pub struct RunArgs {
    /// The cijoe executable.
    #[arg(long, env = "BTY_CIJOE", default_value = "cijoe")]
    pub cijoe: String,
    /// Where the root filesystem is mounted.
    #[arg(long, default_value = provision::TARGET_ROOT)]
    pub target_root: PathBuf,
    /// Working directory for the task, configs, cijoe's output and the archive.
    #[arg(long, default_value = "/run/bty/cijoe")]
    pub work_dir: PathBuf,
}

impl Default for RunArgs {
    fn default() -> RunArgs {
        RunArgs {
            cijoe: std::env::var("BTY_CIJOE").unwrap_or_else(|_| "cijoe".into()),
            target_root: provision::TARGET_ROOT.into(),
            work_dir: "/run/bty/cijoe".into(),
        }
    }
}

pub fn run(a: Args) -> i32 {
    let boot = if a.server.is_none() || a.mac.is_none() || a.offer_token.is_none() {
        BootArgs::from_proc().unwrap_or_default()
    } else {
        BootArgs::default()
    };
    let (Some(server), Some(mac)) = (a.server.or(boot.server), a.mac.or(boot.mac)) else {
        marker("provision: no server or MAC (pass --server and --mac, or boot with bty.server= bty.mac=)");
        return 2;
    };
    let client = match ServerClient::new(&server, &mac) {
        Ok(c) => c.with_offer_token(a.offer_token.or(boot.token)),
        Err(e) => {
            marker(&format!("provision: {e}"));
            return e.kind().exit_code();
        }
    };
    if provision(&client, &a.disk, &a.run) {
        0
    } else {
        1
    }
}

/// Run the offline workflow against `disk` and report it; whether the run
/// was reported as passed.
pub fn provision(client: &ServerClient, disk: &Path, opts: &RunArgs) -> bool {
    let work = opts.work_dir.join(format!(
        "run-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    ));
    let out = work.join("out");
    let (exit, reason) = match attempt(client, disk, opts, &work) {
        Ok(exit) => (exit.code, exit.reason),
        Err(e) => {
            let why = e.to_string();
            provision::note(&out, &format!("not run: {why}"));
            (None, Some(why))
        }
    };
    let _ = std::fs::create_dir_all(&out);
    let archive = work.join("report.tar.gz");
    if let Err(e) = provision::pack(&out, &archive) {
        marker(&format!("provisioning: cannot pack the report: {e}"));
        return false;
    }
    match client.post_cijoe_report(&archive, exit, reason.as_deref()) {
        Ok(v) => {
            let status = v["status"].as_str().unwrap_or("?").to_string();
            let why = v["reason"].as_str().map(|r| format!(": {r}")).unwrap_or_default();
            marker(&format!("provisioning {status} (run {}){why}", v["run"]));
            status == "passed"
        }
        Err(e) => {
            marker(&format!("provisioning: the report did not reach the server: {e}"));
            false
        }
    }
}

fn attempt(
    client: &ServerClient,
    disk: &Path,
    opts: &RunArgs,
    work: &Path,
) -> Result<provision::CijoeExit, Error> {
    let wf = client.workflow()?;
    marker(&format!("provisioning: workflow {} (cijoe-offline)", wf.name));
    let root = provision::choose_root(disk)?;
    marker(&format!("provisioning: root filesystem {}", root.why));
    let out = work.join("out");
    let mut device = provision::partition_device(disk, root.partition, root.start_bytes, root.size_bytes)?;
    let mounted = Mounted::mount(&device.path, root.fstype, &opts.target_root)?;
    device.release();
    marker(&format!(
        "provisioning: {} ({}) mounted at {}",
        device.path.display(),
        device.how,
        mounted.root().display()
    ));
    let values = BtyValues {
        mac: client.mac().to_string(),
        image: wf.image.clone(),
        digest: wf.digest.clone(),
        target_root: Some(mounted.root().display().to_string()),
        target_disk: Some(disk.display().to_string()),
        host: None,
    };
    let run = OfflineRun { command: opts.cijoe.clone(), work: work.to_path_buf(), values };
    let mut exit = provision::run_cijoe(&wf, &run);
    provision::note(
        &out,
        &format!("root filesystem: {} ({}), mounted from {}", disk.display(), root.why, device.how),
    );
    if let Err(e) = mounted.unmount() {
        let why = format!("the root filesystem could not be unmounted cleanly: {e}");
        marker(&format!("provisioning: {why}"));
        provision::note(&out, &why);
        exit.reason.get_or_insert(why);
    }
    Ok(exit)
}
