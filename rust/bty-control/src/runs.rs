//! CIJOE runs: their records (`cijoe_runs`), their files
//! (`<state>/cijoe/<mac>/<id>/`: `report.tar.gz` as it arrived or was made,
//! `out/` unpacked), and what an offline run reported by the live
//! environment becomes.

use std::io::Read;
use std::path::{Component, Path, PathBuf};

use bty_core::mac::MacAddr;
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use serde_json::json;

use crate::audit::{self, Actor, NewEvent};
use crate::cijoe::{self, StepResult};
use crate::clock;

/// Most runs a machine's run list shows.
pub const LIST_LIMIT: usize = 100;
/// Largest report archive accepted, and the most it may unpack to.
pub const MAX_REPORT_BYTES: u64 = 64 << 20;
pub const MAX_UNPACKED_BYTES: u64 = 512 << 20;
/// Most entries (files, directories, anything) a report may hold.
pub const MAX_ENTRIES: usize = 20_000;

#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub id: i64,
    pub mac: String,
    pub workflow: String,
    pub mode: String,
    pub status: String,
    pub reason: Option<String>,
    pub image: Option<String>,
    pub created_at: String,
    pub finished_at: Option<String>,
    pub steps: Vec<StepResult>,
}

fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Run> {
    let steps: String = r.get(9)?;
    Ok(Run {
        id: r.get(0)?,
        mac: r.get(1)?,
        workflow: r.get(2)?,
        mode: r.get(3)?,
        status: r.get(4)?,
        reason: r.get(5)?,
        image: r.get(6)?,
        created_at: r.get(7)?,
        finished_at: r.get(8)?,
        steps: serde_json::from_str(&steps).unwrap_or_default(),
    })
}

const SELECT: &str =
    "SELECT id, mac, workflow, mode, status, reason, image, created_at, finished_at, steps FROM cijoe_runs";

pub fn get(conn: &Connection, id: i64) -> rusqlite::Result<Option<Run>> {
    conn.prepare_cached(&format!("{SELECT} WHERE id = ?1"))?.query_row([id], from_row).optional()
}

/// A machine's runs, newest first, without their steps' output.
pub fn list(conn: &Connection, mac: MacAddr, limit: usize) -> rusqlite::Result<Vec<Run>> {
    let mut st = conn.prepare_cached(&format!("{SELECT} WHERE mac = ?1 ORDER BY id DESC LIMIT ?2"))?;
    let rows = st.query_map(params![mac.to_string(), limit as i64], from_row)?;
    rows.map(|r| {
        r.map(|mut run| {
            for s in &mut run.steps {
                s.output.clear();
            }
            run
        })
    })
    .collect()
}

/// Where a run's files are.
pub fn dir(state_dir: &Path, mac: MacAddr, id: i64) -> PathBuf {
    state_dir.join("cijoe").join(mac.to_string().replace(':', "-")).join(id.to_string())
}

/// A finished run to record: the machine (for an offline one the token
/// check already passed, see `pxe::admit_provisioning`), its workflow and
/// image, and how many of the machine's runs to keep.
pub struct FinishedRun<'a> {
    pub mac: MacAddr,
    pub workflow: &'a str,
    pub image: Option<&'a str>,
    /// `offline` or `online`.
    pub mode: &'a str,
    pub keep: usize,
}

/// Unpack a report archive (`tar.gz` of cijoe's output directory) into
/// `dest`: regular files and directories only, every path inside `dest`,
/// at most [`MAX_UNPACKED_BYTES`] in all.
pub fn unpack_report(archive: &Path, dest: &Path) -> Result<(), String> {
    let f = std::fs::File::open(archive).map_err(|e| format!("cannot open the report: {e}"))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(f));
    std::fs::create_dir_all(dest).map_err(|e| format!("cannot create {}: {e}", dest.display()))?;
    let mut total = 0u64;
    let mut count = 0usize;
    let entries = tar.entries().map_err(|e| format!("not a tar.gz archive: {e}"))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("the archive is damaged: {e}"))?;
        count += 1;
        // Every entry costs its header and its data, kept or not.
        total += 512 + entry.size();
        if count > MAX_ENTRIES || total > MAX_UNPACKED_BYTES {
            return Err(format!(
                "the archive holds more than {MAX_ENTRIES} entries or {MAX_UNPACKED_BYTES} bytes"
            ));
        }
        let path = entry.path().map_err(|e| format!("an entry has a bad name: {e}"))?.into_owned();
        if path.components().any(|c| !matches!(c, Component::Normal(_) | Component::CurDir)) {
            return Err(format!("the archive names a path outside its directory: {}", path.display()));
        }
        let kind = entry.header().entry_type();
        let target = dest.join(&path);
        let io = |e: std::io::Error| format!("cannot unpack {}: {e}", path.display());
        if kind.is_dir() {
            // Made here, with the server's own modes, not the archive's.
            std::fs::create_dir_all(&target).map_err(io)?;
        } else if kind.is_file() {
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(io)?;
            }
            let mut out = std::fs::File::create(&target).map_err(io)?;
            std::io::copy(&mut (&mut entry).take(MAX_UNPACKED_BYTES), &mut out).map_err(io)?;
        }
        // Links and devices have no place in a report: skipped.
    }
    Ok(())
}

/// Judge an offline report from what was unpacked and what the agent said:
/// cijoe's exit status as it saw it (when cijoe ran at all), and its reason
/// when cijoe could not run (not installed, no root filesystem, timed out).
pub fn judge_offline(
    out: &Path,
    exit_code: Option<i32>,
    agent_reason: Option<&str>,
) -> (String, Option<String>, Vec<StepResult>) {
    let steps = cijoe::read_steps(out);
    let failed = steps.iter().find(|s| s.status == "failed").map(|s| s.name.clone());
    let reason = if let Some(why) = agent_reason.filter(|w| !w.trim().is_empty()) {
        Some(why.trim().to_string())
    } else if let Some(step) = failed {
        Some(format!("step `{step}` failed"))
    } else if steps.is_empty() {
        Some("the report holds no cijoe state (task.state): no step ran".to_string())
    } else {
        match exit_code {
            Some(0) | None => None,
            Some(c) => Some(format!("cijoe exited with {c}")),
        }
    };
    let status = if reason.is_none() { "passed" } else { "failed" };
    (status.to_string(), reason, steps)
}

/// Record a finished run, its tripwire when it failed, and prune old runs.
/// Returns the id and the directories of pruned runs (to delete).
pub fn record(
    conn: &Connection,
    r: &FinishedRun<'_>,
    status: &str,
    reason: Option<&str>,
    steps: &[StepResult],
) -> rusqlite::Result<(i64, Vec<i64>)> {
    let now = clock::now_rfc3339();
    let mac = r.mac;
    let steps_json = serde_json::to_string(steps).unwrap_or_else(|_| "[]".into());
    conn.execute(
        "INSERT INTO cijoe_runs (mac, workflow, mode, status, reason, image, steps, created_at, finished_at)
         VALUES (?1, ?2, ?8, ?3, ?4, ?5, ?6, ?7, ?7)",
        params![mac.to_string(), r.workflow, status, reason, r.image, steps_json, now, r.mode],
    )?;
    let id = conn.last_insert_rowid();
    let (kind, summary) = if status == "passed" {
        ("provisioning.passed", format!("{mac}: workflow {} passed {}", r.workflow, r.mode))
    } else {
        (
            "provisioning.failed",
            format!(
                "{mac}: workflow {} failed {}: {}",
                r.workflow,
                r.mode,
                reason.unwrap_or("no reason given")
            ),
        )
    };
    audit::insert(
        conn,
        &NewEvent::new(kind, Actor::PxeClient, summary).machine(mac).details(json!({
            "run": id, "workflow": r.workflow, "mode": r.mode, "status": status, "reason": reason,
            "steps": steps.iter().map(|s| json!({"name": s.name, "status": s.status})).collect::<Vec<_>>(),
        })),
    )?;
    let old: Vec<i64> = {
        let mut st = conn
            .prepare_cached("SELECT id FROM cijoe_runs WHERE mac = ?1 ORDER BY id DESC LIMIT -1 OFFSET ?2")?;
        let rows = st.query_map(params![mac.to_string(), r.keep.max(1) as i64], |r| r.get(0))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    for o in &old {
        conn.execute("DELETE FROM cijoe_runs WHERE id = ?1", [o])?;
    }
    Ok((id, old))
}
