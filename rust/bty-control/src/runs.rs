//! CIJOE runs: their records (`cijoe_runs`), their files
//! (`<state>/cijoe/<mac>/<id>/`: `report.tar.gz` as it arrived or was made,
//! `out/` unpacked), and what an offline run reported by the live
//! environment becomes.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use bty_core::mac::MacAddr;
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use serde_json::json;

pub use crate::audit::Actor;
use crate::audit::{self, NewEvent};
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
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub steps: Vec<StepResult>,
    /// The digests (SHA-256) of the files the workflow left in cijoe's
    /// `artifacts/`, by path.
    pub artifacts: BTreeMap<String, String>,
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
        started_at: r.get(10)?,
        artifacts: serde_json::from_str(&r.get::<_, String>(11)?).unwrap_or_default(),
    })
}

const SELECT: &str = "SELECT id, mac, workflow, mode, status, reason, image, created_at, finished_at, steps,
     started_at, artifacts FROM cijoe_runs";

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

/// Where a machine's runs' files are.
pub fn machine_dir(state_dir: &Path, mac: MacAddr) -> PathBuf {
    state_dir.join("cijoe").join(mac.to_string().replace(':', "-"))
}

/// Uploads a stopped server left half-received (`cijoe/<mac>/.incoming-*`).
pub fn sweep_incoming(state_dir: &Path) -> usize {
    let mut n = 0;
    for m in std::fs::read_dir(state_dir.join("cijoe")).into_iter().flatten().flatten() {
        for e in std::fs::read_dir(m.path()).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().starts_with(".incoming-")
                && std::fs::remove_dir_all(e.path()).is_ok()
            {
                n += 1;
            }
        }
    }
    n
}

/// Where a run's files are.
pub fn dir(state_dir: &Path, mac: MacAddr, id: i64) -> PathBuf {
    machine_dir(state_dir, mac).join(id.to_string())
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
    let old = prune(conn, mac, r.keep)?;
    Ok((id, old))
}

/// Most artifact files digested per run, and the largest read.
const MAX_ARTIFACTS: usize = 1000;
const MAX_ARTIFACT_BYTES: u64 = 1 << 30;

/// SHA-256 of every regular file under `out/artifacts` (cijoe's place for
/// what a workflow keeps), by path relative to it.
pub fn artifact_digests(out: &Path) -> BTreeMap<String, String> {
    use sha2::Digest;
    let root = out.join("artifacts");
    let mut found = BTreeMap::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            let p = e.path();
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file() && found.len() < MAX_ARTIFACTS {
                let mut h = sha2::Sha256::new();
                let ok = std::fs::File::open(&p)
                    .and_then(|f| {
                        let mut f = f.take(MAX_ARTIFACT_BYTES);
                        let mut buf = vec![0u8; 64 << 10];
                        loop {
                            match f.read(&mut buf)? {
                                0 => return Ok(()),
                                n => h.update(&buf[..n]),
                            }
                        }
                    })
                    .is_ok();
                if let (true, Ok(rel)) = (ok, p.strip_prefix(&root)) {
                    found.insert(rel.to_string_lossy().into_owned(), hex::encode(h.finalize()));
                }
            }
        }
    }
    found
}

/// Queue an online run; its id.
pub fn queue(
    conn: &Connection,
    mac: MacAddr,
    workflow: &str,
    image: Option<&str>,
    actor: Actor,
    why: &str,
) -> rusqlite::Result<i64> {
    let now = clock::now_rfc3339();
    conn.execute(
        "INSERT INTO cijoe_runs (mac, workflow, mode, status, image, created_at) VALUES (?1, ?2, 'online', 'queued', ?3, ?4)",
        params![mac.to_string(), workflow, image, now],
    )?;
    let id = conn.last_insert_rowid();
    audit::insert(
        conn,
        &NewEvent::new(
            "provisioning.queued",
            actor,
            format!("{mac}: online run {id} of workflow {workflow} queued ({why})"),
        )
        .machine(mac)
        .details(json!({"run": id, "workflow": workflow, "mode": "online", "why": why})),
    )?;
    Ok(id)
}

/// A queued run starts; false when it is no longer queued (cancelled).
pub fn start(conn: &Connection, id: i64) -> rusqlite::Result<bool> {
    let n = conn.execute(
        "UPDATE cijoe_runs SET status = 'running', started_at = ?2 WHERE id = ?1 AND status = 'queued'",
        params![id, clock::now_rfc3339()],
    )?;
    Ok(n == 1)
}

/// Cancel a queued or running run: its status before, or None when it had
/// already finished (or does not exist).
pub fn cancel(conn: &Connection, id: i64, actor: Actor) -> rusqlite::Result<Option<String>> {
    let Some(run) = get(conn, id)? else { return Ok(None) };
    if run.status != "queued" && run.status != "running" {
        return Ok(None);
    }
    conn.execute(
        "UPDATE cijoe_runs SET status = 'cancelled', reason = 'cancelled by an operator', finished_at = ?2 WHERE id = ?1",
        params![id, clock::now_rfc3339()],
    )?;
    let mac: MacAddr = run.mac.parse().map_err(|_| rusqlite::Error::InvalidQuery)?;
    audit::insert(
        conn,
        &NewEvent::new(
            "provisioning.cancelled",
            actor,
            format!("{mac}: run {id} cancelled ({})", run.status),
        )
        .machine(mac)
        .details(json!({"run": id, "was": run.status})),
    )?;
    Ok(Some(run.status))
}

/// At start: runs a previous bty-web left queued or running cannot finish.
pub fn fail_unfinished(conn: &Connection) -> rusqlite::Result<usize> {
    conn.execute(
        "UPDATE cijoe_runs SET status = 'failed', reason = 'bty-web stopped before the run finished; start it again',
             finished_at = ?1 WHERE status IN ('queued', 'running')",
        [clock::now_rfc3339()],
    )
}

/// An online run's outcome.
pub struct Outcome<'a> {
    pub status: &'a str,
    pub reason: Option<&'a str>,
    pub steps: &'a [StepResult],
    pub artifacts: &'a BTreeMap<String, String>,
    /// The steps ran on the machine: false when the run stopped before any
    /// command reached it (a changed host key: cijoe counts the step whose
    /// connection was refused as failed) or was not trusted.
    pub reached: bool,
}

/// What finishing a run did besides storing it.
#[derive(Debug, Default)]
pub struct Finished {
    /// Runs pruned (their directories to delete).
    pub pruned: Vec<i64>,
    /// This run became the machine's baseline.
    pub baselined: bool,
    /// How it drifted from the baseline, when it did.
    pub drift: Option<String>,
}

/// Store an online run's outcome (unless it was cancelled meanwhile),
/// audit it, make the first passing run the baseline or compare with the
/// baseline (only when a step ran), and prune.
pub fn finish(conn: &Connection, id: i64, o: &Outcome<'_>, keep: usize) -> rusqlite::Result<Finished> {
    let mut done = Finished::default();
    let Some(run) = get(conn, id)? else { return Ok(done) };
    let mac: MacAddr = run.mac.parse().map_err(|_| rusqlite::Error::InvalidQuery)?;
    let n = conn.execute(
        "UPDATE cijoe_runs SET status = ?2, reason = ?3, steps = ?4, artifacts = ?5, finished_at = ?6
         WHERE id = ?1 AND status = 'running'",
        params![
            id,
            o.status,
            o.reason,
            serde_json::to_string(o.steps).unwrap_or_else(|_| "[]".into()),
            serde_json::to_string(o.artifacts).unwrap_or_else(|_| "{}".into()),
            clock::now_rfc3339()
        ],
    )?;
    if n == 0 {
        return Ok(done);
    }
    let (kind, summary) = if o.status == "passed" {
        ("provisioning.passed", format!("{mac}: workflow {} passed online (run {id})", run.workflow))
    } else {
        (
            "provisioning.failed",
            format!(
                "{mac}: workflow {} failed online (run {id}): {}",
                run.workflow,
                o.reason.unwrap_or("no reason given")
            ),
        )
    };
    audit::insert(
        conn,
        &NewEvent::new(kind, Actor::System, summary).machine(mac).details(json!({
            "run": id, "workflow": run.workflow, "mode": "online", "status": o.status, "reason": o.reason,
            "steps": o.steps.iter().map(|s| json!({"name": s.name, "status": s.status})).collect::<Vec<_>>(),
        })),
    )?;
    // A run in which no step ran on the machine (no SSH server, a refused
    // host key) says nothing about its state: no baseline, no drift.
    let ran = o.reached && o.steps.iter().any(|s| s.status != "skipped");
    match baseline(conn, mac)?.and_then(|b| if b == id { None } else { Some(b) }) {
        _ if !ran => {}
        None if o.status == "passed" => {
            set_baseline(conn, mac, id, Actor::System)?;
            done.baselined = true;
        }
        None => {}
        Some(b) => {
            if let Some(base) = get(conn, b)? {
                let now = get(conn, id)?.unwrap_or(run);
                if let Some(d) = drift(&base, &now) {
                    audit::insert(
                        conn,
                        &NewEvent::new(
                            "provisioning.drifted",
                            Actor::System,
                            format!("{mac} drifted from its known-good baseline at {d} (run {id}, baseline run {b})"),
                        )
                        .machine(mac)
                        .details(json!({"run": id, "baseline": b, "at": d})),
                    )?;
                    done.drift = Some(d);
                }
            }
        }
    }
    done.pruned = prune(conn, mac, keep)?;
    Ok(done)
}

/// Where `run` departs from `base`: the first step that passed in the
/// baseline and did not now (`step \`name\``), else the first artifact
/// whose digest changed or that is gone (`artifact \`path\``).
pub fn drift(base: &Run, run: &Run) -> Option<String> {
    for b in base.steps.iter().filter(|s| s.status == "passed") {
        let now = run.steps.iter().find(|s| s.name == b.name);
        if now.is_none_or(|s| s.status != "passed") {
            return Some(format!("step `{}`", b.name));
        }
    }
    for (path, digest) in &base.artifacts {
        if run.artifacts.get(path) != Some(digest) {
            return Some(format!("artifact `{path}`"));
        }
    }
    None
}

fn prune(conn: &Connection, mac: MacAddr, keep: usize) -> rusqlite::Result<Vec<i64>> {
    // The baseline is never pruned: it is what later runs are judged by.
    let old: Vec<i64> = {
        let mut st = conn.prepare_cached(
            "SELECT id FROM cijoe_runs WHERE mac = ?1 AND status NOT IN ('queued', 'running')
               AND id IS NOT (SELECT baseline_run FROM cijoe_machine WHERE mac = ?1)
             ORDER BY id DESC LIMIT -1 OFFSET ?2",
        )?;
        let rows =
            st.query_map(params![mac.to_string(), keep.clamp(1, i64::MAX as usize) as i64], |r| r.get(0))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    for o in &old {
        conn.execute("DELETE FROM cijoe_runs WHERE id = ?1", [o])?;
    }
    Ok(old)
}

pub fn baseline(conn: &Connection, mac: MacAddr) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached("SELECT baseline_run FROM cijoe_machine WHERE mac = ?1")?
        .query_row([mac.to_string()], |r| r.get(0))
        .optional()
        .map(Option::flatten)
}

/// Make `id` the machine's known-good baseline.
pub fn set_baseline(conn: &Connection, mac: MacAddr, id: i64, actor: Actor) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO cijoe_machine (mac, baseline_run) VALUES (?1, ?2)
         ON CONFLICT (mac) DO UPDATE SET baseline_run = excluded.baseline_run",
        params![mac.to_string(), id],
    )?;
    audit::insert(
        conn,
        &NewEvent::new("provisioning.baseline", actor, format!("{mac}: run {id} is the known-good baseline"))
            .machine(mac)
            .details(json!({"run": id})),
    )?;
    Ok(())
}

/// The SSH host key pinned for a machine (`type base64`).
pub fn host_key(conn: &Connection, mac: MacAddr) -> rusqlite::Result<Option<String>> {
    conn.prepare_cached("SELECT ssh_host_key FROM cijoe_machine WHERE mac = ?1")?
        .query_row([mac.to_string()], |r| r.get(0))
        .optional()
        .map(Option::flatten)
}

/// Pin (or, with None, forget) a machine's SSH host key. A flash forgets
/// it: the new system brings its own.
pub fn set_host_key(conn: &Connection, mac: MacAddr, key: Option<&str>) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO cijoe_machine (mac, ssh_host_key) VALUES (?1, ?2)
         ON CONFLICT (mac) DO UPDATE SET ssh_host_key = excluded.ssh_host_key",
        params![mac.to_string(), key],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(steps: &[(&str, &str)], artifacts: &[(&str, &str)]) -> Run {
        Run {
            id: 1,
            mac: "52:54:00:00:00:01".into(),
            workflow: "w".into(),
            mode: "online".into(),
            status: "passed".into(),
            reason: None,
            image: None,
            created_at: String::new(),
            started_at: None,
            finished_at: None,
            steps: steps
                .iter()
                .map(|(n, s)| StepResult {
                    name: n.to_string(),
                    status: s.to_string(),
                    elapsed_s: 0.0,
                    output: String::new(),
                })
                .collect(),
            artifacts: artifacts.iter().map(|(p, d)| (p.to_string(), d.to_string())).collect(),
        }
    }

    #[test]
    fn drift_names_the_first_step_or_artifact_that_departs() {
        let base =
            run(&[("packages", "passed"), ("tune", "failed"), ("users", "passed")], &[("pkgs.txt", "aa")]);
        assert_eq!(drift(&base, &base), None);
        // A step that failed in the baseline too is no drift.
        let same =
            run(&[("packages", "passed"), ("tune", "failed"), ("users", "passed")], &[("pkgs.txt", "aa")]);
        assert_eq!(drift(&base, &same), None);
        let failed =
            run(&[("packages", "failed"), ("tune", "passed"), ("users", "skipped")], &[("pkgs.txt", "aa")]);
        assert_eq!(drift(&base, &failed).as_deref(), Some("step `packages`"));
        let missing = run(&[("packages", "passed")], &[("pkgs.txt", "aa")]);
        assert_eq!(drift(&base, &missing).as_deref(), Some("step `users`"));
        let changed = run(&[("packages", "passed"), ("users", "passed")], &[("pkgs.txt", "bb")]);
        assert_eq!(drift(&base, &changed).as_deref(), Some("artifact `pkgs.txt`"));
        let gone = run(&[("packages", "passed"), ("users", "passed")], &[]);
        assert_eq!(drift(&base, &gone).as_deref(), Some("artifact `pkgs.txt`"));
    }

    fn migrated() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        for m in crate::db::MIGRATIONS {
            conn.execute_batch(m).unwrap();
        }
        conn.execute(
            "INSERT INTO machines (mac, created_at, updated_at) VALUES ('52:54:00:00:00:01', 'now', 'now')",
            [],
        )
        .unwrap();
        conn
    }

    fn finish_one(c: &Connection, status: &str, steps: &[(&str, &str)]) -> (i64, Finished) {
        finish_run(c, status, steps, true)
    }

    fn finish_run(c: &Connection, status: &str, steps: &[(&str, &str)], reached: bool) -> (i64, Finished) {
        let mac: MacAddr = "52:54:00:00:00:01".parse().unwrap();
        let id = queue(c, mac, "w", None, Actor::System, "test").unwrap();
        assert!(start(c, id).unwrap());
        let steps = run(steps, &[]).steps;
        let reason = (status != "passed").then_some("it failed");
        let o = Outcome { status, reason, steps: &steps, artifacts: &BTreeMap::new(), reached };
        (id, finish(c, id, &o, 20).unwrap())
    }

    fn drifts(c: &Connection) -> i64 {
        c.query_row("SELECT count(*) FROM events WHERE kind = 'provisioning.drifted'", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn a_run_in_which_no_step_ran_is_no_drift_and_no_baseline() {
        let c = migrated();
        let mac: MacAddr = "52:54:00:00:00:01".parse().unwrap();
        // Stopped before any step (a changed host key): nothing to judge.
        let (_, f) = finish_one(&c, "failed", &[]);
        assert!(!f.baselined && f.drift.is_none());
        assert_eq!(baseline(&c, mac).unwrap(), None);
        let (base, f) = finish_one(&c, "passed", &[("packages", "passed")]);
        assert!(f.baselined);
        assert_eq!(baseline(&c, mac).unwrap(), Some(base));
        for steps in [&[][..], &[("packages", "skipped")][..]] {
            let (_, f) = finish_one(&c, "failed", steps);
            assert_eq!((f.baselined, f.drift), (false, None));
        }
        // A refused host key: cijoe counts the step failed, it never ran.
        let (_, f) = finish_run(&c, "failed", &[("packages", "failed")], false);
        assert_eq!((f.baselined, f.drift), (false, None));
        assert_eq!(drifts(&c), 0);
        // A step that ran and failed where the baseline passed is drift.
        let (_, f) = finish_one(&c, "failed", &[("packages", "failed")]);
        assert_eq!(f.drift.as_deref(), Some("step `packages`"));
        assert_eq!(drifts(&c), 1);
    }

    #[test]
    fn artifacts_are_digested_by_path() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("artifacts/sub")).unwrap();
        std::fs::write(d.path().join("artifacts/sub/a.txt"), "abc").unwrap();
        let got = artifact_digests(d.path());
        assert_eq!(
            got.get("sub/a.txt").map(String::as_str),
            Some("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        );
        assert!(artifact_digests(&d.path().join("none")).is_empty());
    }
}
