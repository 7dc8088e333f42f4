//! CIJOE runs: the live environment's offline report (`POST
//! /pxe/{mac}/cijoe`, open like every `/pxe` route but only with the current
//! flash offer's token), and the operator's view of runs.

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bty_control::online::{StartError, Which};
use bty_core::mac::MacAddr;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;
use tokio::io::AsyncWriteExt;

use crate::accounts::Principal;
use crate::error::ApiError;
use crate::handlers::pxe::offer_token;
use crate::handlers::MacParam;
use crate::runs::{self, FinishedRun, MAX_REPORT_BYTES};
use crate::state::{AppState, ClientIp};

#[derive(Deserialize, Default)]
pub struct ReportQuery {
    /// cijoe's exit status as the agent saw it.
    exit: Option<i32>,
    /// Why cijoe could not run, when it could not.
    reason: Option<String>,
}

/// `POST /pxe/{mac}/cijoe`: the body is a `tar.gz` of cijoe's output
/// directory. 201 with the run's id and status.
pub async fn pxe_report(
    State(app): State<AppState>,
    ip: ClientIp,
    MacParam(mac): MacParam,
    Query(q): Query<ReportQuery>,
    req: Request,
) -> Result<Response, ApiError> {
    let token = offer_token(req.headers());
    let ip_s = ip.string();
    let admitted = app
        .db
        .write(move |c| crate::pxe::admit_provisioning(c, mac, ip_s.as_deref(), token.as_deref()))
        .await?;
    let m = match admitted {
        Ok(m) => m,
        Err(crate::pxe::ReportOutcome::Refused(why)) => return Err(ApiError::Forbidden(why)),
        Err(crate::pxe::ReportOutcome::Accepted) => return Err(ApiError::internal("unexpected outcome")),
    };
    let base = app.config.paths.state_dir.join("cijoe").join(mac.to_string().replace(':', "-"));
    let incoming = base.join(format!(".incoming-{}", crate::secret::random_secret()));
    tokio::fs::create_dir_all(&incoming).await.map_err(ApiError::internal)?;
    // Removed on every way out but the one that keeps it (a client gone
    // mid-upload drops this handler).
    let mut guard = Incoming(Some(incoming.clone()));
    receive(req.into_body(), &incoming).await?;
    let (arch, out) = (incoming.join("report.tar.gz"), incoming.join("out"));
    let unpacked = {
        let (a, o) = (arch.clone(), out.clone());
        tokio::task::spawn_blocking(move || runs::unpack_report(&a, &o)).await.map_err(ApiError::internal)?
    };
    if let Err(why) = unpacked {
        return Err(ApiError::field("report", why));
    }
    let (status, why, steps) = {
        let (exit, reason) = (q.exit, q.reason.clone());
        tokio::task::spawn_blocking(move || runs::judge_offline(&out, exit, reason.as_deref()))
            .await
            .map_err(ApiError::internal)?
    };
    let (st, wh, sp) = (status.clone(), why.clone(), steps);
    let keep = app.config.cijoe.keep_runs;
    let (id, pruned) = app
        .db
        .write(move |c| {
            let rep = FinishedRun {
                mac,
                workflow: m.workflow.as_deref().unwrap_or_default(),
                image: m.image.as_deref(),
                mode: "offline",
                keep,
            };
            let recorded = runs::record(c, &rep, &st, wh.as_deref(), &sp)?;
            crate::pxe::end_provisioning(c, mac)?;
            Ok::<_, rusqlite::Error>(recorded)
        })
        .await?;
    let dir = runs::dir(&app.config.paths.state_dir, mac, id);
    match tokio::fs::rename(&incoming, &dir).await {
        Ok(()) => guard.0 = None,
        Err(e) => tracing::warn!(run = id, "cannot keep the run's files in {}: {e}", dir.display()),
    }
    for old in pruned {
        let _ = tokio::fs::remove_dir_all(runs::dir(&app.config.paths.state_dir, mac, old)).await;
    }
    app.machine_changed(mac);
    Ok((StatusCode::CREATED, Json(json!({"run": id, "status": status, "reason": why}))).into_response())
}

/// `GET /pxe/{mac}/workflow`: the offline workflow the live environment of
/// a `cijoe-offline` flash runs, with the offer token (403 without it).
pub async fn pxe_workflow(
    State(app): State<AppState>,
    ip: ClientIp,
    MacParam(mac): MacParam,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    let token = offer_token(&headers);
    let ip_s = ip.string();
    let admitted = app
        .db
        .write(move |c| crate::pxe::admit_provisioning(c, mac, ip_s.as_deref(), token.as_deref()))
        .await?;
    let m = match admitted {
        Ok(m) => m,
        Err(crate::pxe::ReportOutcome::Refused(why)) => return Err(ApiError::Forbidden(why)),
        Err(crate::pxe::ReportOutcome::Accepted) => return Err(ApiError::internal("unexpected outcome")),
    };
    let name = m.workflow.unwrap_or_default();
    let store = crate::handlers::workflows::store(&app);
    let n = name.clone();
    let wf = tokio::task::spawn_blocking(move || store.get(&n)).await.map_err(ApiError::internal)?;
    let wf = wf.map_err(|e| {
        ApiError::not_found(format!("{mac} is bound to workflow {name:?}, which cannot be read: {e}"))
    })?;
    let digest = m.image.as_deref().and_then(|n| app.catalog.get().get(n).and_then(|e| e.sha256.clone()));
    let body = bty_core::wire::PlanWorkflow {
        name,
        task: wf.task,
        config: wf.config,
        timeout_s: app.config.cijoe.timeout.as_secs(),
        image: m.image,
        digest,
    };
    Ok(([(header::CACHE_CONTROL, "no-store")], Json(body)).into_response())
}

/// An upload's directory until it becomes a run's.
struct Incoming(Option<std::path::PathBuf>);

impl Drop for Incoming {
    fn drop(&mut self) {
        if let Some(d) = self.0.take() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// The body into `dir/report.tar.gz`, at most [`MAX_REPORT_BYTES`].
async fn receive(body: Body, dir: &std::path::Path) -> Result<(), ApiError> {
    let mut f = tokio::fs::File::create(dir.join("report.tar.gz")).await.map_err(ApiError::internal)?;
    let mut stream = body.into_data_stream();
    let mut n = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadRequest(format!("the report was cut off: {e}")))?;
        n += chunk.len() as u64;
        if n > MAX_REPORT_BYTES {
            return Err(ApiError::PayloadTooLarge(format!(
                "a report may be at most {MAX_REPORT_BYTES} bytes"
            )));
        }
        f.write_all(&chunk).await.map_err(ApiError::internal)?;
    }
    f.flush().await.map_err(ApiError::internal)?;
    Ok(())
}

/// A run as the API shows it: the record and whether it is its machine's baseline.
fn with_baseline(run: &runs::Run, baseline: Option<i64>) -> serde_json::Value {
    let mut v = serde_json::to_value(run).unwrap_or_default();
    v["baseline"] = json!(baseline == Some(run.id));
    v
}

pub async fn list(State(app): State<AppState>, MacParam(mac): MacParam) -> Result<Response, ApiError> {
    let (runs, baseline) = app
        .db
        .read(move |c| {
            Ok::<_, rusqlite::Error>((runs::list(c, mac, runs::LIST_LIMIT)?, runs::baseline(c, mac)?))
        })
        .await?;
    Ok(Json(runs.iter().map(|r| with_baseline(r, baseline)).collect::<Vec<_>>()).into_response())
}

pub async fn get(State(app): State<AppState>, Path(id): Path<i64>) -> Result<Response, ApiError> {
    let found = app
        .db
        .read(move |c| -> rusqlite::Result<Option<(runs::Run, Option<i64>)>> {
            let Some(run) = runs::get(c, id)? else { return Ok(None) };
            let b = run.mac.parse().ok().map(|m| runs::baseline(c, m)).transpose()?.flatten();
            Ok(Some((run, b)))
        })
        .await?;
    found
        .map(|(r, b)| Json(with_baseline(&r, b)).into_response())
        .ok_or_else(|| ApiError::not_found(format!("no run {id}")))
}

/// Why run `r` has no report archive.
pub fn no_report(r: &runs::Run) -> String {
    match r.status.as_str() {
        "queued" | "running" => {
            format!("run {} is {}: its report archive is made when it ends", r.id, r.status)
        }
        _ => format!(
            "run {} has no report archive: it ended ({}{}) before cijoe wrote any output",
            r.id,
            r.status,
            r.reason.as_deref().map(|w| format!(": {w}")).unwrap_or_default()
        ),
    }
}

/// The run's whole output as it was reported, `tar.gz`.
pub async fn report(State(app): State<AppState>, Path(id): Path<i64>) -> Result<Response, ApiError> {
    let Some(run) = app.db.read(move |c| runs::get(c, id)).await? else {
        return Err(ApiError::not_found(format!("no run {id}")));
    };
    let mac: bty_core::mac::MacAddr = run.mac.parse().map_err(ApiError::internal)?;
    let path = runs::dir(&app.config.paths.state_dir, mac, id).join("report.tar.gz");
    let file = tokio::fs::File::open(&path).await.map_err(|_| ApiError::not_found(no_report(&run)))?;
    let len = file.metadata().await.map_err(ApiError::internal)?.len();
    Response::builder()
        .header(header::CONTENT_TYPE, "application/gzip")
        .header(header::CONTENT_LENGTH, len)
        .header(
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"bty-run-{id}-{}.tar.gz\"", run.mac.replace(':', "-")),
        )
        .body(Body::from_stream(tokio_util::io::ReaderStream::new(file)))
        .map_err(ApiError::internal)
}

/// Queue an online run of `mac` now (also the UI's "Run now" and "Run
/// again"): of its bound workflow, a past run's, or one by name.
pub async fn start_online(
    app: &AppState,
    who: &Principal,
    mac: MacAddr,
    which: Which,
) -> Result<i64, ApiError> {
    let why = match &which {
        Which::Rerun(id) => format!("run {id} run again by an operator"),
        _ => "started by an operator".to_string(),
    };
    match app.online.start_workflow(mac, which, who.actor(), &why).await {
        Ok(id) => Ok(id),
        Err(StartError::NoMachine(m)) => Err(ApiError::not_found(format!("no machine {m}"))),
        Err(StartError::NotOnline(why)) => Err(ApiError::Conflict(why)),
        Err(StartError::Invalid { field, reason }) => Err(ApiError::field(field, reason)),
        Err(StartError::WorkflowGone(why)) => Err(ApiError::Conflict(why)),
        Err(StartError::Db(e)) => Err(e.into()),
    }
}

/// What `POST /machines/{mac}/runs` may carry: at most one of the two.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StartBody {
    /// Run the workflow of this past online run of the machine again.
    rerun: Option<i64>,
    /// Run this workflow.
    workflow: Option<String>,
}

impl StartBody {
    fn which(self) -> Result<Which, ApiError> {
        match (self.rerun, self.workflow) {
            (Some(_), Some(_)) => {
                Err(ApiError::field("rerun", "give either rerun (a run's id) or workflow (a name), not both"))
            }
            (Some(id), None) => Ok(Which::Rerun(id)),
            (None, Some(name)) => Ok(Which::Named(name)),
            (None, None) => Ok(Which::Bound),
        }
    }
}

/// `POST /machines/{mac}/runs`: 202 with the queued run. Without a body the
/// machine's bound workflow runs; `{"rerun": ID}` runs a past run's
/// workflow again, `{"workflow": NAME}` a named one.
pub async fn create(
    State(app): State<AppState>,
    Extension(who): Extension<Principal>,
    MacParam(mac): MacParam,
    req: Request,
) -> Result<Response, ApiError> {
    let headers = req.headers().clone();
    let bytes = crate::error::body_bytes(req).await?;
    let body: StartBody = if bytes.iter().all(u8::is_ascii_whitespace) {
        StartBody::default()
    } else {
        crate::error::decode_json(&headers, &bytes)?
    };
    let id = start_online(&app, &who, mac, body.which()?).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({"run": id, "status": "queued"}))).into_response())
}

/// Cancel run `id` (also the UI's "Cancel").
pub async fn cancel_run(app: &AppState, who: &Principal, id: i64) -> Result<(), ApiError> {
    match app.online.cancel(id, who.actor()).await? {
        Some(_) => Ok(()),
        None => match app.db.read(move |c| runs::get(c, id)).await? {
            Some(r) => Err(ApiError::Conflict(format!("run {id} has already finished ({})", r.status))),
            None => Err(ApiError::not_found(format!("no run {id}"))),
        },
    }
}

/// `DELETE /runs/{id}`: cancel a queued or running run.
pub async fn cancel(
    State(app): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<i64>,
) -> Result<Response, ApiError> {
    cancel_run(&app, &who, id).await?;
    Ok(Json(json!({"run": id, "status": "cancelled"})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaselineBody {
    run: i64,
}

/// Make run `id` of `mac` its known-good baseline (also the UI's button):
/// only a passed online run of that machine.
pub async fn promote(app: &AppState, who: &Principal, mac: MacAddr, id: i64) -> Result<(), ApiError> {
    let actor = who.actor();
    let done = app
        .db
        .write(move |c| -> Result<Result<(), ApiError>, rusqlite::Error> {
            let Some(run) = runs::get(c, id)? else {
                return Ok(Err(ApiError::field("run", format!("no run {id}"))));
            };
            if run.mac != mac.to_string() {
                return Ok(Err(ApiError::field(
                    "run",
                    format!("run {id} belongs to {}, not {mac}", run.mac),
                )));
            }
            if run.mode != "online" || run.status != "passed" {
                return Ok(Err(ApiError::field(
                    "run",
                    format!(
                        "only a passed online run can be the baseline; run {id} is {} {}",
                        run.mode, run.status
                    ),
                )));
            }
            runs::set_baseline(c, mac, id, actor)?;
            Ok(Ok(()))
        })
        .await?;
    done?;
    app.machine_changed(mac);
    Ok(())
}

/// `PUT /machines/{mac}/baseline` with `{"run": ID}`.
pub async fn put_baseline(
    State(app): State<AppState>,
    Extension(who): Extension<Principal>,
    MacParam(mac): MacParam,
    crate::error::ApiJson(b): crate::error::ApiJson<BaselineBody>,
) -> Result<Response, ApiError> {
    promote(&app, &who, mac, b.run).await?;
    Ok(Json(json!({"mac": mac.to_string(), "baseline": b.run})).into_response())
}

/// Forget `mac`'s pinned SSH host key (also the UI's button); audited.
pub async fn forget_host_key(app: &AppState, who: &Principal, mac: MacAddr) -> Result<(), ApiError> {
    let actor = who.actor();
    app.db
        .write(move |c| {
            runs::set_host_key(c, mac, None)?;
            crate::audit::insert(
                c,
                &crate::audit::NewEvent::new(
                    "provisioning.host_key_forgotten",
                    actor,
                    format!("{mac}: pinned SSH host key forgotten; the next online run pins a new one"),
                )
                .machine(mac),
            )
        })
        .await?;
    app.machine_changed(mac);
    Ok(())
}

/// `DELETE /machines/{mac}/ssh-host-key`.
pub async fn delete_host_key(
    State(app): State<AppState>,
    Extension(who): Extension<Principal>,
    MacParam(mac): MacParam,
) -> Result<Response, ApiError> {
    forget_host_key(&app, &who, mac).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /cijoe/ssh-public-key`: the line images put in `authorized_keys`.
pub async fn ssh_public_key(State(app): State<AppState>) -> Response {
    let id = app.online.identity();
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], format!("{}\n", id.public)).into_response()
}
