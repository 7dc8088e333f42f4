//! The appliance's own A/B updates as the server runs them: the slots'
//! status (and the tripwire when an update failed its health checks), the
//! latest release, and download or apply as one background job at a time.
//! The work itself is the engine's (`bty_core::osapply`), the same code as
//! `bty os`.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use bty_core::osapply::{self, Appliance, ApplyEvent, Status};
use bty_core::osupdate::{self, Release, ReleaseType};
use serde::Serialize;

use crate::audit::{self, Actor, EventQuery, NewEvent};
use crate::config::OsConfig;
use crate::db::Db;

/// Not an A/B appliance (a server on an ordinary disk), in words.
pub fn appliance(cfg: &OsConfig) -> Result<Appliance, String> {
    Appliance::detect(cfg.disk.as_deref(), cfg.esp.as_deref(), None).map_err(|e| e.to_string())
}

/// The verified release `version` (default latest) of `kind`.
pub fn release(cfg: &OsConfig, kind: ReleaseType, version: Option<&str>) -> bty_core::Result<Release> {
    osupdate::find_release(
        kind,
        None,
        cfg.source.as_deref(),
        version,
        cfg.pubkey.as_deref(),
        "set [os] source (BTY_OS_SOURCE)",
    )
}

/// Raise the failed-update tripwire once per failed version.
pub async fn note_failed_update(db: &Db, status: &Status) -> rusqlite::Result<()> {
    let Some(f) = status.failed_update.clone() else { return Ok(()) };
    db.write(move |c| {
        let seen = audit::query(
            c,
            &EventQuery {
                kind: Some("os.update.failed".into()),
                subject: Some(f.version.clone()),
                limit: 1,
                ..Default::default()
            },
        )?;
        if seen.is_empty() {
            let e = NewEvent::new("os.update.failed", Actor::System, f.message.clone())
                .subject("os-release", f.version.clone())
                .details(serde_json::json!({"failed": f.version, "running": f.running}));
            audit::insert(c, &e)?;
        }
        Ok(())
    })
    .await
}

/// A download or an apply running (or last run).
#[derive(Debug, Clone, Serialize)]
pub struct Job {
    pub id: u64,
    /// `download` or `apply`.
    pub action: &'static str,
    pub kind: ReleaseType,
    pub version: Option<String>,
    /// `running`, `done`, `failed`.
    pub state: &'static str,
    pub stage: String,
    pub detail: String,
    pub fraction: Option<f64>,
    pub started_at: String,
    pub ended_at: Option<String>,
}

/// One job at a time; the last one is kept for the page.
#[derive(Default, Clone)]
pub struct Jobs {
    current: Arc<Mutex<Option<Job>>>,
    next_id: Arc<Mutex<u64>>,
}

/// What an operator asked for.
#[derive(Debug, Clone)]
pub struct Request {
    pub action: &'static str,
    pub kind: ReleaseType,
    pub version: Option<String>,
    pub force: bool,
}

impl Jobs {
    pub fn current(&self) -> Option<Job> {
        self.current.lock().expect("job lock").clone()
    }

    fn update(&self, f: impl FnOnce(&mut Job)) {
        if let Some(j) = self.current.lock().expect("job lock").as_mut() {
            f(j);
        }
    }

    /// Start `req` in the background; refused while another job runs.
    pub fn start(
        &self,
        cfg: OsConfig,
        releases_dir: PathBuf,
        db: Db,
        actor: Actor,
        req: Request,
    ) -> Result<Job, String> {
        let job = {
            let mut cur = self.current.lock().expect("job lock");
            if let Some(j) = cur.as_ref().filter(|j| j.state == "running") {
                return Err(format!("{} of {} is still running", j.action, j.kind.as_str()));
            }
            let mut n = self.next_id.lock().expect("job lock");
            *n += 1;
            let job = Job {
                id: *n,
                action: req.action,
                kind: req.kind,
                version: req.version.clone(),
                state: "running",
                stage: "starting".into(),
                detail: String::new(),
                fraction: None,
                started_at: crate::clock::now_rfc3339(),
                ended_at: None,
            };
            *cur = Some(job.clone());
            job
        };
        let jobs = self.clone();
        let rt = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            let outcome = run(&jobs, &cfg, &releases_dir, &req);
            let (kind, summary, state) = match &outcome {
                Ok(msg) => {
                    (if req.action == "apply" { "os.applied" } else { "os.downloaded" }, msg.clone(), "done")
                }
                Err(e) => (
                    if req.action == "apply" { "os.apply.failed" } else { "os.download.failed" },
                    format!(
                        "{} of {} {} failed: {e}",
                        req.action,
                        req.kind.as_str(),
                        req.version.as_deref().unwrap_or("latest")
                    ),
                    "failed",
                ),
            };
            jobs.update(|j| {
                j.state = state;
                j.detail = summary.clone();
                j.ended_at = Some(crate::clock::now_rfc3339());
            });
            let e = NewEvent::new(kind, actor, summary)
                .subject("os-release", req.version.clone().unwrap_or_default());
            let _ = rt.block_on(audit::record(&db, e));
        });
        Ok(job)
    }
}

fn run(jobs: &Jobs, cfg: &OsConfig, releases_dir: &std::path::Path, req: &Request) -> Result<String, String> {
    let r = release(cfg, req.kind, req.version.as_deref()).map_err(|e| e.to_string())?;
    let version = r.manifest.version.clone();
    jobs.update(|j| j.version = Some(version.clone()));
    let stage = |stage: &str, detail: String| {
        jobs.update(|j| {
            j.stage = stage.to_string();
            j.detail = detail;
        })
    };
    if req.action == "download" {
        let dir = releases_dir.join(format!("{}-{version}", req.kind.as_str()));
        stage("downloading", format!("into {}", dir.display()));
        osupdate::download(&r, &dir, &mut |name, _| stage("downloading", format!("{name} verified")))
            .map_err(|e| e.to_string())?;
        return Ok(format!("{} {version} downloaded into {}", req.kind.as_str(), dir.display()));
    }
    let cancel = AtomicBool::new(false);
    let mut events = |ev: ApplyEvent| match ev {
        ApplyEvent::Stage { stage: s, detail } => stage(s, detail),
        ApplyEvent::Flash(p) => jobs.update(|j| j.fraction = p.fraction()),
    };
    let done = match req.kind {
        ReleaseType::Os => {
            let app = appliance(cfg)?;
            let plan = osapply::plan_os(&r, &app, req.force).map_err(|e| e.to_string())?;
            osapply::apply_os(&r, &app, plan, &cancel, &mut events).map_err(|e| e.to_string())?
        }
        ReleaseType::Efisys => {
            let esp = appliance(cfg)?.esp;
            let plan = osapply::plan_efisys(&r, &esp, req.force).map_err(|e| e.to_string())?;
            osapply::apply_efisys(&r, &esp, plan, &mut events).map_err(|e| e.to_string())?
        }
    };
    Ok(if done.plan.write {
        format!("{} {version} applied: {}", req.kind.as_str(), done.plan.why)
    } else {
        done.plan.why
    })
}
