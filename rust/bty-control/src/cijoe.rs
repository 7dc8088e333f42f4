//! Running a CIJOE workflow and reading what it did.
//!
//! cijoe (0.9) is run as `cijoe TASK -c CONFIG… -o OUT --monitor`: exit 0
//! when every step passed, 5 when a step failed, 22 when the task is
//! invalid. Its `OUT/task.state` (YAML) has each step's `status` counters
//! and elapsed time; each step's commands leave `OUT/NNN_<step>/cmd_NN.output`.
//! A run is judged from both: the exit status says whether it passed, the
//! state file which step did what. A run that cannot start (no cijoe), dies,
//! or outlives its timeout is a failed run with that reason, never a pass.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_yaml_ng::Value as Yaml;

pub use bty_core::cijoe::{bty_config, BtyValues, SshTransport};

/// Output kept per step in a run's record (the whole output stays in the
/// run's directory and its archive).
pub const STEP_OUTPUT_BYTES: usize = 64 << 10;
/// Largest `task.state` read, and most steps taken from it.
const MAX_STATE_BYTES: u64 = 16 << 20;
const MAX_STEPS: usize = 1000;

/// What to run.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// The cijoe executable (`[cijoe] command`).
    pub command: String,
    pub task: PathBuf,
    /// Configs in order; later ones override earlier ones.
    pub configs: Vec<PathBuf>,
    /// cijoe's output directory; it must not exist yet.
    pub output: PathBuf,
    pub timeout: Duration,
    /// Extra environment for cijoe (the host-key pinning of online runs).
    pub env: Vec<(String, String)>,
}

/// A run's result.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RunOutcome {
    /// `passed` or `failed`.
    pub status: String,
    /// Why it failed, in words (the first failed step, a timeout, …).
    pub reason: Option<String>,
    pub exit_code: Option<i32>,
    pub elapsed_s: f64,
    pub steps: Vec<StepResult>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct StepResult {
    pub name: String,
    /// `passed`, `failed`, or `skipped` (not run: an earlier step failed).
    pub status: String,
    pub elapsed_s: f64,
    /// The step's command output, at most [`STEP_OUTPUT_BYTES`].
    pub output: String,
}

/// Run cijoe and judge the run. The process (and anything it started, in
/// its own process group) is killed at the timeout or when this future is
/// dropped (a cancelled run).
pub async fn run(spec: &RunSpec) -> RunOutcome {
    let started = Instant::now();
    let fail = |reason: String, exit_code: Option<i32>, steps: Vec<StepResult>| RunOutcome {
        status: "failed".into(),
        reason: Some(reason),
        exit_code,
        elapsed_s: started.elapsed().as_secs_f64(),
        steps,
    };
    let log = match std::fs::create_dir_all(spec.output.parent().unwrap_or(Path::new(".")))
        .and_then(|_| std::fs::File::create(spec.output.with_extension("log")))
    {
        Ok(f) => f,
        Err(e) => return fail(format!("cannot create the run's directory: {e}"), None, vec![]),
    };
    let mut cmd = tokio::process::Command::new(&spec.command);
    cmd.arg(&spec.task);
    for c in &spec.configs {
        cmd.arg("-c").arg(c);
    }
    cmd.arg("-o").arg(&spec.output).arg("--monitor");
    cmd.current_dir(spec.output.parent().unwrap_or(Path::new(".")));
    let err_log = match log.try_clone() {
        Ok(f) => f,
        Err(e) => return fail(format!("cannot open the run's log: {e}"), None, vec![]),
    };
    cmd.stdin(std::process::Stdio::null()).stdout(log).stderr(err_log);
    cmd.envs(spec.env.iter().map(|(k, v)| (k, v)));
    cmd.process_group(0).kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return fail(
                format!("cijoe is not installed: {:?} was not found (set [cijoe] command)", spec.command),
                None,
                vec![],
            )
        }
        Err(e) => return fail(format!("cannot start {}: {e}", spec.command), None, vec![]),
    };
    let pid = child.id();
    // A cancelled run drops this future: the whole group goes with it.
    let _group = GroupKill(pid);
    let waited = tokio::time::timeout(spec.timeout, child.wait()).await;
    let status = match waited {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return fail(format!("cannot wait for cijoe: {e}"), None, read_steps(&spec.output)),
        Err(_) => {
            kill_group(pid);
            let _ = child.wait().await;
            return fail(
                format!("timed out after {} s; the workflow was stopped", spec.timeout.as_secs()),
                None,
                read_steps(&spec.output),
            );
        }
    };
    // A step may have left children behind in the group.
    kill_group(pid);
    let steps = read_steps(&spec.output);
    let code = status.code();
    let first_failed = steps.iter().find(|s| s.status == "failed").map(|s| s.name.clone());
    match code {
        Some(0) if first_failed.is_none() && !steps.is_empty() => RunOutcome {
            status: "passed".into(),
            reason: None,
            exit_code: code,
            elapsed_s: started.elapsed().as_secs_f64(),
            steps,
        },
        Some(0) if steps.is_empty() => {
            fail("cijoe ended without a state file (no step ran)".into(), code, steps)
        }
        Some(22) => fail(format!("cijoe refused the task (exit 22); see {}", log_name(spec)), code, steps),
        Some(c) => {
            let why = match first_failed {
                Some(s) => format!("step `{s}` failed (cijoe exit {c})"),
                None => format!("cijoe exited with {c}; see {}", log_name(spec)),
            };
            fail(why, code, steps)
        }
        None => fail(format!("cijoe was killed ({status})"), None, steps),
    }
}

fn log_name(spec: &RunSpec) -> String {
    spec.output
        .with_extension("log")
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

struct GroupKill(Option<u32>);

impl Drop for GroupKill {
    fn drop(&mut self) {
        kill_group(self.0);
    }
}

fn kill_group(pid: Option<u32>) {
    if let Some(pid) = pid {
        // SAFETY: a signal to the process group this run started.
        unsafe {
            libc::kill(-(pid as i32), libc::SIGKILL);
        }
    }
}

/// The steps of a run from its output directory (empty without a state file).
pub fn read_steps(output: &Path) -> Vec<StepResult> {
    let mut text = String::new();
    let read = std::fs::File::open(output.join("task.state"))
        .and_then(|f| std::io::Read::read_to_string(&mut std::io::Read::take(f, MAX_STATE_BYTES), &mut text));
    if read.is_err() {
        return vec![];
    }
    let Ok(state) = serde_yaml_ng::from_str::<Yaml>(&text) else { return vec![] };
    let Some(steps) = state.get("steps").and_then(Yaml::as_sequence) else { return vec![] };
    steps
        .iter()
        .take(MAX_STEPS)
        .map(|s| {
            let name = s.get("name").and_then(Yaml::as_str).unwrap_or("?").to_string();
            let id = s.get("id").and_then(Yaml::as_str).unwrap_or("").to_string();
            let st = s.get("status");
            let count = |k: &str| st.and_then(|v| v.get(k)).and_then(Yaml::as_u64).unwrap_or(0);
            let status = if count("failed") > 0 {
                "failed"
            } else if count("passed") > 0 {
                "passed"
            } else {
                "skipped"
            };
            let elapsed_s = st.and_then(|v| v.get("elapsed")).and_then(Yaml::as_f64).unwrap_or(0.0);
            // The id names the step's directory; a reported state file may
            // say anything, so only one plain component is followed.
            let plain = !id.is_empty()
                && Path::new(&id).components().count() == 1
                && matches!(Path::new(&id).components().next(), Some(std::path::Component::Normal(_)));
            let output = if plain { step_output(&output.join(&id)) } else { String::new() };
            StepResult { name, status: status.into(), elapsed_s, output }
        })
        .collect()
}

/// A step's `cmd_NN.output` files in order, capped.
fn step_output(dir: &Path) -> String {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "output"))
        .collect();
    files.sort();
    let mut out = String::new();
    for f in files {
        let mut bytes = Vec::new();
        let read = std::fs::File::open(&f).and_then(|h| {
            std::io::Read::read_to_end(&mut std::io::Read::take(h, STEP_OUTPUT_BYTES as u64 + 1), &mut bytes)
        });
        if read.is_err() {
            continue;
        }
        out.push_str(&String::from_utf8_lossy(&bytes));
        if out.len() > STEP_OUTPUT_BYTES {
            let mut cut = STEP_OUTPUT_BYTES;
            while !out.is_char_boundary(cut) {
                cut -= 1;
            }
            out.truncate(cut);
            out.push_str("\n… (cut; the whole output is in the run's archive)\n");
            break;
        }
    }
    out
}
