//! `/ui/machines`: the list (search, filters, sorting, pages, live rows over
//! server-sent events), adding by MAC, and a machine's page with its
//! assignment form.

use std::convert::Infallible;

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use bty_control::online::Which;
use bty_core::mac::MacAddr;
use futures_util::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::{field_errors, query, Ctx, Fields, PageMeta, UiError};
use crate::audit::{self, EventQuery};
use crate::error::ApiError;
use crate::handlers::machines as api;
use crate::handlers::{AnyMacParam, MacParam};
use crate::health::human_bytes;
use crate::machines::{self, ListFilter, ListKey, Machine, MachineInput, PROVISIONING_MODES};
use crate::policy::{self, BootState, Policy};
use crate::settings::DisplayZone;
use crate::state::{AppState, ClientIp};

const PER_PAGE: usize = 50;

/// Sortable columns: (key, heading).
const COLUMNS: [(&str, &str); 7] = [
    ("mac", "MAC"),
    ("", "Labels"),
    ("policy", "Policy"),
    ("state", "State"),
    ("image", "Image"),
    ("last_seen", "Last seen"),
    ("last_flashed", "Last flashed"),
];

fn state_words(m: &Machine) -> &'static str {
    describe_stored(&m.policy, &m.state)
}

/// The state in words from the stored policy and state, read as
/// [`Machine::policy`] and [`Machine::state`] read them.
fn describe_stored(policy: &str, state: &str) -> &'static str {
    policy::describe(Policy::parse(policy).unwrap_or(Policy::Tui), BootState::parse_or_pending(state))
}

/// One row of the list, as the page and the live stream render it.
fn row(m: &Machine, zone: &DisplayZone) -> Value {
    let failed = m.state() == BootState::Failed;
    json!({
        "mac": m.mac.to_string(),
        "href": format!("/ui/machines/{}", m.mac),
        "labels": m.labels,
        "policy": m.policy,
        "state_words": state_words(m),
        "reason": if failed { m.last_flash_reason.clone() } else { None },
        "failed": failed,
        "image": m.image,
        "last_seen": zone.format_opt(m.last_seen_at.as_deref()),
        "last_seen_ip": m.last_seen_ip,
        "last_flashed": zone.format_opt(m.last_flashed_at.as_deref()),
    })
}

#[derive(Deserialize, Default)]
pub struct ListParams {
    q: Option<String>,
    label: Option<String>,
    policy: Option<String>,
    sort: Option<String>,
    dir: Option<String>,
    page: Option<String>,
    notice: Option<String>,
}

fn sort_keys(keys: &mut [ListKey], key: &str, descending: bool) {
    let words = |k: &ListKey| describe_stored(&k.policy, &k.state);
    let order = |a: &ListKey, b: &ListKey| match key {
        "policy" => a.policy.cmp(&b.policy),
        "state" => words(a).cmp(words(b)),
        "image" => a.image.cmp(&b.image),
        "last_seen" => a.last_seen_at.cmp(&b.last_seen_at),
        "last_flashed" => a.last_flashed_at.cmp(&b.last_flashed_at),
        _ => std::cmp::Ordering::Equal,
    };
    keys.sort_by(|a, b| {
        let o = order(a, b).then_with(|| a.mac.cmp(&b.mac));
        if descending {
            o.reverse()
        } else {
            o
        }
    });
}

pub async fn list(ctx: Ctx, Query(p): Query<ListParams>) -> Result<Response, UiError> {
    list_page(ctx, p, StatusCode::OK, json!({}), "").await
}

async fn list_page(
    ctx: Ctx,
    p: ListParams,
    status: StatusCode,
    errors: Value,
    new_mac: &str,
) -> Result<Response, UiError> {
    let q = p.q.unwrap_or_default();
    let label = p.label.unwrap_or_default();
    let policy_s = p.policy.unwrap_or_default();
    let sort =
        p.sort.filter(|s| COLUMNS.iter().any(|(k, _)| !k.is_empty() && k == s)).unwrap_or("mac".into());
    let dir = if p.dir.as_deref() == Some("desc") { "desc" } else { "asc" };
    let filter = ListFilter {
        label: Some(label.clone()).filter(|l| !l.is_empty()),
        policy: Policy::parse(&policy_s),
        q: Some(q.clone()).filter(|q| !q.is_empty()),
    };
    // Filter and order on short columns, then read only the page in full:
    // the page costs the same with fifty machines or ten thousand.
    let requested = p.page.and_then(|s| s.parse::<usize>().ok()).unwrap_or(1);
    let (sort_key, descending) = (sort.clone(), dir == "desc");
    let (page_rows, matching, page, pages, labels) = ctx
        .app
        .db
        .read(move |c| {
            let mut keys = machines::list_keys(c, &filter)?;
            sort_keys(&mut keys, &sort_key, descending);
            let pages = keys.len().div_ceil(PER_PAGE).max(1);
            let page = requested.clamp(1, pages);
            let macs: Vec<&str> =
                keys.iter().skip((page - 1) * PER_PAGE).take(PER_PAGE).map(|k| k.mac.as_str()).collect();
            let rows = machines::get_many(c, &macs)?;
            Ok::<_, rusqlite::Error>((rows, keys.len(), page, pages, machines::all_labels(c)?))
        })
        .await?;
    let shown: Vec<Value> = page_rows.iter().map(|m| row(m, &ctx.zone)).collect();

    let url = |sort: &str, dir: &str, page: usize| {
        let page = if page > 1 { page.to_string() } else { String::new() };
        format!(
            "/ui/machines{}",
            query(&[
                ("q", &q),
                ("label", &label),
                ("policy", &policy_s),
                ("sort", if sort == "mac" && dir == "asc" { "" } else { sort }),
                ("dir", if dir == "asc" { "" } else { dir }),
                ("page", &page),
            ])
        )
    };
    let columns: Vec<Value> = COLUMNS
        .iter()
        .map(|(key, heading)| {
            if key.is_empty() {
                return json!({"label": heading});
            }
            let active = *key == sort;
            let next_dir = if active && dir == "asc" { "desc" } else { "asc" };
            json!({
                "label": heading,
                "href": url(key, next_dir, 1),
                "aria_sort": if active { Some(if dir == "asc" { "ascending" } else { "descending" }) } else { None },
                "arrow": if active { Some(if dir == "asc" { "▲" } else { "▼" }) } else { None },
            })
        })
        .collect();
    let filtered = !q.is_empty() || !label.is_empty() || !policy_s.is_empty();
    let data = json!({
        "q": q,
        "label": label,
        "policy": policy_s,
        "sort": if sort == "mac" { "" } else { &sort },
        "dir": if dir == "asc" { "" } else { dir },
        "labels": labels,
        "policies": Policy::ALL.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
        "filtered": filtered,
        "rows": shown,
        "shown": shown.len(),
        "matching": matching,
        "columns": columns,
        "page": page,
        "pages": if pages > 1 { Some(pages) } else { None },
        "prev": (page > 1).then(|| url(&sort, dir, page - 1)),
        "next": (page < pages).then(|| url(&sort, dir, page + 1)),
        "errors": errors,
        "new_mac": new_mac,
        // New machines can join the live list only where they belong
        // without a reload: all machines, in MAC order, on one page.
        "insert_new": matching == 0 || (!filtered && sort == "mac" && dir == "asc" && pages == 1),
    });
    let meta =
        PageMeta { name: "machines", title: "Machines".into(), nav: "machines", notice: p.notice.as_deref() };
    ctx.page(status, meta, data)
}

/// `POST /ui/machines`: add a machine by MAC with the default policy.
pub async fn add(ctx: Ctx, ip: ClientIp, Form(f): Form<Vec<(String, String)>>) -> Result<Response, UiError> {
    let f = Fields(f);
    let raw = f.get("mac").trim().to_string();
    let parsed = raw.parse::<MacAddr>().map_err(|e| e.to_string());
    let mac = match parsed.and_then(|m| m.unicast().map_err(|e| e.to_string())) {
        Ok(m) => m,
        Err(e) => {
            let errors = field_errors("mac", &e);
            return list_page(ctx, ListParams::default(), StatusCode::UNPROCESSABLE_ENTITY, errors, &raw)
                .await;
        }
    };
    if ctx.app.db.read(move |c| machines::get(c, mac)).await?.is_some() {
        return Ok(Redirect::to(&format!("/ui/machines/{mac}")).into_response());
    }
    let input = MachineInput::from_json(
        &json!({"policy": "tui"}),
        &ctx.app.catalog.get(),
        &crate::handlers::workflows::store(&ctx.app),
    )?;
    api::save(&ctx.app, &ctx.who, ip, mac, input).await?;
    Ok(Redirect::to(&format!("/ui/machines/{mac}?notice=added")).into_response())
}

/// `GET /ui/machines/stream`: a `machine` event with the re-rendered row
/// whenever a machine changes (`row` is null once it is deleted).
pub async fn stream(State(app): State<AppState>) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let rx = app.changes.subscribe();
    let app_shutdown = app.shutdown.clone();
    let changes = futures_util::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(mac) => return Some((mac, rx)),
                // A slow page misses some updates; the next ones still come.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    let events = changes.then(move |mac: MacAddr| {
        let app = app.clone();
        async move {
            let found = app
                .db
                .read(move |c| {
                    Ok::<_, rusqlite::Error>((machines::get(c, mac)?, crate::settings::display_zone(c)?))
                })
                .await;
            let html = match found {
                Ok((Some(m), zone)) => app.ui.render("machine_row", &row(&m, &zone)).ok(),
                _ => None,
            };
            let data = json!({"mac": mac.to_string(), "row": html});
            Ok(SseEvent::default().event("machine").data(data.to_string()))
        }
    });
    // Ends when the server shuts down; the browser reconnects to the next one.
    let events = events.take_until(app_shutdown.cancelled_owned());
    Sse::new(events).keep_alive(KeepAlive::default())
}

#[derive(Deserialize, Default)]
pub struct ShowQuery {
    notice: Option<String>,
}

pub async fn show(
    ctx: Ctx,
    AnyMacParam(mac): AnyMacParam,
    Query(q): Query<ShowQuery>,
) -> Result<Response, UiError> {
    machine_page(&ctx, mac, StatusCode::OK, q.notice.as_deref(), None, json!({})).await
}

fn option(value: &str, text: String, selected: bool) -> Value {
    json!({"value": value, "text": text, "selected": selected})
}

fn duration(start: Option<&str>, end: Option<&str>) -> String {
    let parse = |t: Option<&str>| t.and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok());
    match (parse(start), parse(end)) {
        (Some(a), Some(b)) => {
            let s = (b - a).whole_seconds().max(0);
            if s >= 60 {
                format!("{} min {} s", s / 60, s % 60)
            } else {
                format!("{s} s")
            }
        }
        _ => String::new(),
    }
}

/// The assignment form's values: the record's, or what was just submitted.
struct FormValues {
    policy: String,
    image: String,
    disk: String,
    mode: String,
    labels: String,
    sanboot: String,
    workflow: String,
    ssh_host: String,
    ssh_port: String,
    ssh_user: String,
}

async fn machine_page(
    ctx: &Ctx,
    mac: MacAddr,
    status: StatusCode,
    notice: Option<&str>,
    submitted: Option<FormValues>,
    errors: Value,
) -> Result<Response, UiError> {
    let found = ctx
        .app
        .db
        .read(move |c| {
            let Some(m) = machines::get(c, mac)? else { return Ok(None) };
            let flashes = machines::flashes(c, mac, 20)?;
            let events = audit::query(
                c,
                &EventQuery { subject: Some(mac.to_string()), limit: 20, ..Default::default() },
            )?;
            let runs = crate::runs::list(c, mac, crate::runs::LIST_LIMIT)?;
            let pins = (crate::runs::baseline(c, mac)?, crate::runs::host_key(c, mac)?);
            Ok::<_, rusqlite::Error>(Some((m, flashes, events, runs, pins)))
        })
        .await?;
    let Some((m, flashes, events, runs, (baseline, host_key))) = found else {
        return Err(ApiError::not_found(format!("no machine {mac}")).into());
    };
    let catalog = ctx.app.catalog.get();
    let inv = m.inventory.clone().unwrap_or(Value::Null);
    let disks: Vec<&Value> =
        inv.get("disks").and_then(Value::as_array).map(|d| d.iter().collect()).unwrap_or_default();
    let str_of = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let disk_rows: Vec<Value> = disks
        .iter()
        .map(|d| {
            json!({
                "path": str_of(d, "path"),
                "model": str_of(d, "model"),
                "serial": str_of(d, "serial"),
                "transport": str_of(d, "transport"),
                "size": d.get("size_bytes").and_then(Value::as_u64).map(human_bytes).unwrap_or_default(),
            })
        })
        .collect();
    let hw = inv.get("hardware").filter(|h| h.is_object()).map(|h| {
        let threads = h.get("cpu_threads").and_then(Value::as_u64).unwrap_or(0);
        let cpu = format!("{} ({threads} threads)", str_of(h, "cpu_model"));
        let memory = h.get("memory_bytes").and_then(Value::as_u64).map(human_bytes).unwrap_or_default();
        let dmi = h.get("dmi").cloned().unwrap_or(Value::Null);
        let system =
            format!("{} {}", str_of(&dmi, "sys_vendor"), str_of(&dmi, "product_name")).trim().to_string();
        let nics: Vec<String> = h
            .get("nics")
            .and_then(Value::as_array)
            .map(|ns| {
                ns.iter()
                    .map(|n| {
                        let speed =
                            n.get("speed_mbps").and_then(Value::as_u64).map(|s| format!(", {s} Mb/s"));
                        format!("{} {}{}", str_of(n, "name"), str_of(n, "mac"), speed.unwrap_or_default())
                    })
                    .collect()
            })
            .unwrap_or_default();
        json!({"cpu": cpu, "memory": memory, "system": system, "nics": nics})
    });

    let v = submitted.unwrap_or_else(|| FormValues {
        policy: m.policy.clone(),
        image: m.image.clone().unwrap_or_default(),
        disk: m.target_disk_serial.clone().unwrap_or_default(),
        mode: m.provisioning_mode.clone(),
        labels: m.labels.join(" "),
        sanboot: m.sanboot_drive.clone().unwrap_or_default(),
        workflow: m.workflow.clone().unwrap_or_default(),
        ssh_host: m.ssh_host.clone().unwrap_or_default(),
        ssh_port: m.ssh_port.map(|p| p.to_string()).unwrap_or_default(),
        ssh_user: m.ssh_user.clone().unwrap_or_default(),
    });
    let policies: Vec<Value> = Policy::ALL
        .iter()
        .map(|p| {
            let what = match p {
                Policy::Tui => "interactive flasher",
                Policy::Flash => "flash on every other boot",
                Policy::FlashOnce => "flash once, then the disk",
                Policy::Inventory => "report hardware, then the disk",
                Policy::Local => "boot the local disk",
            };
            option(p.as_str(), format!("{p}: {what}"), p.as_str() == v.policy)
        })
        .collect();
    let mut images = vec![option("", "(none)".into(), v.image.is_empty())];
    for e in &catalog.images {
        let size = e.size_bytes.map(|s| format!(", {}", human_bytes(s))).unwrap_or_default();
        images.push(option(&e.name, format!("{}{size}", e.name), e.name == v.image));
    }
    if !v.image.is_empty() && catalog.get(&v.image).is_none() {
        images.push(option(&v.image, format!("{} (not in the catalog)", v.image), true));
    }
    let mut disk_opts = vec![option("", "(none)".into(), v.disk.is_empty())];
    for d in &disks {
        let serial = str_of(d, "serial");
        if serial.is_empty() {
            continue;
        }
        let size = d.get("size_bytes").and_then(Value::as_u64).map(human_bytes).unwrap_or_default();
        let text = format!("{serial}: {} {size} ({})", str_of(d, "model"), str_of(d, "path"));
        disk_opts.push(option(&serial, text, serial == v.disk));
    }
    if !v.disk.is_empty() && !disks.iter().any(|d| str_of(d, "serial") == v.disk) {
        disk_opts.push(option(&v.disk, format!("{} (not in the inventory)", v.disk), true));
    }
    let modes: Vec<Value> =
        PROVISIONING_MODES.iter().map(|md| option(md, md.to_string(), *md == v.mode)).collect();
    let store = crate::handlers::workflows::store(&ctx.app);
    let known = tokio::task::spawn_blocking(move || store.list()).await.unwrap_or_default();
    let mut workflows = vec![option("", "(none)".into(), v.workflow.is_empty())];
    for w in &known {
        workflows.push(option(&w.name, format!("{}: {}", w.name, w.doc), w.name == v.workflow));
    }
    if !v.workflow.is_empty() && !known.iter().any(|w| w.name == v.workflow) {
        workflows.push(option(&v.workflow, format!("{} (not among the workflows)", v.workflow), true));
    }

    let flash_rows: Vec<Value> = flashes
        .iter()
        .map(|f| {
            let class = match f.status.as_str() {
                "done" => "ok",
                "failed" | "abandoned" => "fail",
                _ => "info",
            };
            json!({
                "started": ctx.time(f.started_at.as_deref()),
                "image": f.image,
                "status": f.status,
                "class": class,
                "reason": f.reason,
                "duration": duration(f.started_at.as_deref(), f.finished_at.as_deref()),
            })
        })
        .collect();
    let next_boot = crate::pxe::preview(&m, &catalog).as_str();
    let online = (m.provisioning_mode == "cijoe-online" && m.workflow.is_some()).then(|| {
        let host = m.ssh_host.clone().or(m.last_seen_ip.clone()).unwrap_or_else(|| "(no address yet)".into());
        json!({
            "target": format!("{}@{host}:{}", m.ssh_user.as_deref().unwrap_or("root"), m.ssh_port.unwrap_or(22)),
            "host_key": host_key.as_deref().and_then(bty_control::ssh_identity::fingerprint),
        })
    });
    let data = json!({
        "m": m,
        "state_words": state_words(&m),
        "failed": m.state() == BootState::Failed,
        "next_boot": next_boot,
        "times": {
            "discovered": ctx.time(m.discovered_at.as_deref()),
            "last_seen": ctx.time(m.last_seen_at.as_deref()),
            "last_flashed": ctx.time(m.last_flashed_at.as_deref()),
            "updated": ctx.time(Some(&m.updated_at)),
            "inventory": ctx.time(m.inventory_at.as_deref()),
        },
        "disks": disk_rows,
        "hw": hw,
        "form": {
            "policies": policies,
            "images": images,
            "disks": disk_opts,
            "modes": modes,
            "labels": v.labels,
            "sanboot_drive": v.sanboot,
            "workflows": workflows,
            "ssh_host": v.ssh_host,
            "ssh_port": v.ssh_port,
            "ssh_user": v.ssh_user,
        },
        "errors": errors,
        "flashes": flash_rows,
        "runs": runs.iter().map(|r| run_row(ctx, r, baseline)).collect::<Vec<_>>(),
        "online": online,
        "events": events.iter().map(|e| ctx.event_row(e)).collect::<Vec<_>>(),
    });
    let meta = PageMeta { name: "machine", title: format!("Machine {mac}"), nav: "machines", notice };
    ctx.page(status, meta, data)
}

/// A run as the machine page and the run page show it.
pub fn run_row(ctx: &Ctx, r: &crate::runs::Run, baseline: Option<i64>) -> Value {
    let class = match r.status.as_str() {
        "passed" => "ok",
        "failed" | "cancelled" => "fail",
        _ => "info",
    };
    json!({
        "id": r.id,
        "workflow": r.workflow,
        "mode": r.mode,
        "status": r.status,
        "class": class,
        "reason": r.reason,
        "finished": ctx.time(r.finished_at.as_deref().or(Some(&r.created_at))),
        "passed": r.steps.iter().filter(|s| s.status == "passed").count(),
        "steps": r.steps.len(),
        "baseline": baseline == Some(r.id),
    })
}

/// A run, its machine's baseline run and the machine.
type RunWithContext = (crate::runs::Run, Option<i64>, Option<Machine>);

/// `GET /ui/runs/{id}`: one run's steps with their output, and its archive.
pub async fn run_page(
    ctx: Ctx,
    axum::extract::Path(id): axum::extract::Path<i64>,
) -> Result<Response, UiError> {
    let found = ctx
        .app
        .db
        .read(move |c| -> rusqlite::Result<Option<RunWithContext>> {
            let Some(run) = crate::runs::get(c, id)? else { return Ok(None) };
            let mac: Option<MacAddr> = run.mac.parse().ok();
            let b = mac.map(|m| crate::runs::baseline(c, m)).transpose()?.flatten();
            let m = mac.map(|m| machines::get(c, m)).transpose()?.flatten();
            Ok(Some((run, b, m)))
        })
        .await?;
    let Some((run, baseline, machine)) = found else {
        return Err(ApiError::not_found(format!("no run {id}")).into());
    };
    let open = run.status == "queued" || run.status == "running";
    let online_machine =
        machine.is_some_and(|m| m.provisioning_mode == "cijoe-online" && m.workflow.is_some());
    let artifacts: Vec<Value> = run.artifacts.iter().map(|(p, d)| json!({"path": p, "digest": d})).collect();
    let steps: Vec<Value> = run
        .steps
        .iter()
        .map(|s| {
            let class = match s.status.as_str() {
                "passed" => "ok",
                "failed" => "fail",
                _ => "info",
            };
            json!({"name": s.name, "status": s.status, "class": class,
                   "elapsed": format!("{:.1} s", s.elapsed_s), "output": s.output})
        })
        .collect();
    let archive = run
        .mac
        .parse()
        .map(|m| crate::runs::dir(&ctx.app.config.paths.state_dir, m, id).join("report.tar.gz"))
        .ok();
    let report = match archive {
        Some(a) => tokio::fs::try_exists(a).await.unwrap_or(false),
        None => false,
    };
    let data = json!({"run": run_row(&ctx, &run, baseline), "mac": run.mac, "image": run.image, "steps": steps,
        "open": open, "artifacts": artifacts, "rerun": online_machine && !open && run.mode == "online",
        "report": report, "no_report": (!report).then(|| crate::handlers::runs::no_report(&run)),
        "promotable": run.mode == "online" && run.status == "passed" && baseline != Some(run.id)});
    let meta = PageMeta { name: "run", title: format!("Run {id}"), nav: "machines", notice: None };
    ctx.page(StatusCode::OK, meta, data)
}

/// `POST /ui/machines/{mac}`: the assignment form, validated exactly as
/// `PUT /machines/{mac}` validates its JSON.
pub async fn assign(
    ctx: Ctx,
    ip: ClientIp,
    MacParam(mac): MacParam,
    Form(f): Form<Vec<(String, String)>>,
) -> Result<Response, UiError> {
    let f = Fields(f);
    let labels: Vec<&str> = f.get("labels").split([' ', ',', '\n', '\t']).filter(|l| !l.is_empty()).collect();
    let body = json!({
        "policy": f.get("policy"),
        "image": f.get("image"),
        "target_disk_serial": f.get("target_disk_serial"),
        "sanboot_drive": f.get("sanboot_drive"),
        "provisioning_mode": f.get("provisioning_mode"),
        "workflow": f.get("workflow"),
        "ssh_host": f.get("ssh_host"),
        "ssh_port": f.get("ssh_port"),
        "ssh_user": f.get("ssh_user"),
        "labels": labels,
    });
    let workflows = crate::handlers::workflows::store(&ctx.app);
    match MachineInput::from_json(&body, &ctx.app.catalog.get(), &workflows) {
        Ok(input) => {
            if ctx.app.db.read(move |c| machines::get(c, mac)).await?.is_none() {
                return Err(ApiError::not_found(format!("no machine {mac}")).into());
            }
            api::save(&ctx.app, &ctx.who, ip, mac, input).await?;
            Ok(Redirect::to(&format!("/ui/machines/{mac}?notice=saved")).into_response())
        }
        Err(e) => {
            let submitted = FormValues {
                policy: f.get("policy").into(),
                image: f.get("image").into(),
                disk: f.get("target_disk_serial").into(),
                mode: f.get("provisioning_mode").into(),
                labels: f.get("labels").into(),
                sanboot: f.get("sanboot_drive").into(),
                workflow: f.get("workflow").into(),
                ssh_host: f.get("ssh_host").into(),
                ssh_port: f.get("ssh_port").into(),
                ssh_user: f.get("ssh_user").into(),
            };
            let errors = field_errors(&e.field, &e.reason);
            machine_page(&ctx, mac, StatusCode::UNPROCESSABLE_ENTITY, None, Some(submitted), errors).await
        }
    }
}

pub async fn delete(ctx: Ctx, ip: ClientIp, AnyMacParam(mac): AnyMacParam) -> Result<Response, UiError> {
    if !api::delete_one(&ctx.app, &ctx.who, ip, mac).await? {
        return Err(ApiError::not_found(format!("no machine {mac}")).into());
    }
    Ok(Redirect::to("/ui/machines?notice=deleted").into_response())
}

/// The stored inventory as a download.
pub async fn inventory_json(ctx: Ctx, AnyMacParam(mac): AnyMacParam) -> Result<Response, UiError> {
    let m = ctx.app.db.read(move |c| machines::get(c, mac)).await?;
    let Some(inv) = m.and_then(|m| m.inventory) else {
        return Err(ApiError::not_found(format!("no inventory for {mac} yet")).into());
    };
    let body = serde_json::to_string_pretty(&inv).map_err(ApiError::internal)?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/json".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{}-inventory.json\"", mac.hyphenated()),
            ),
        ],
        body,
    )
        .into_response())
}

/// `POST /ui/machines/{mac}/runs`: queue an online run of the machine's
/// workflow, or with `rerun=ID` of that past run's; to its page.
pub async fn start_run(
    ctx: Ctx,
    MacParam(mac): MacParam,
    Form(f): Form<Vec<(String, String)>>,
) -> Result<Response, UiError> {
    let f = Fields(f);
    let which = match f.get("rerun").trim() {
        "" => Which::Bound,
        id => {
            Which::Rerun(id.parse().map_err(|_| ApiError::field("rerun", format!("not a run id: {id:?}")))?)
        }
    };
    let id = crate::handlers::runs::start_online(&ctx.app, &ctx.who, mac, which).await?;
    Ok(Redirect::to(&format!("/ui/runs/{id}")).into_response())
}

/// `POST /ui/runs/{id}/cancel`.
pub async fn cancel_run(
    ctx: Ctx,
    axum::extract::Path(id): axum::extract::Path<i64>,
) -> Result<Response, UiError> {
    crate::handlers::runs::cancel_run(&ctx.app, &ctx.who, id).await?;
    Ok(Redirect::to(&format!("/ui/runs/{id}")).into_response())
}

/// `POST /ui/runs/{id}/baseline`.
pub async fn promote_run(
    ctx: Ctx,
    axum::extract::Path(id): axum::extract::Path<i64>,
) -> Result<Response, UiError> {
    let Some(run) = ctx.app.db.read(move |c| crate::runs::get(c, id)).await? else {
        return Err(ApiError::not_found(format!("no run {id}")).into());
    };
    let mac: MacAddr = run.mac.parse().map_err(ApiError::internal)?;
    crate::handlers::runs::promote(&ctx.app, &ctx.who, mac, id).await?;
    Ok(Redirect::to(&format!("/ui/runs/{id}")).into_response())
}

/// `POST /ui/machines/{mac}/ssh-host-key/forget`.
pub async fn forget_host_key(ctx: Ctx, MacParam(mac): MacParam) -> Result<Response, UiError> {
    crate::handlers::runs::forget_host_key(&ctx.app, &ctx.who, mac).await?;
    Ok(Redirect::to(&format!("/ui/machines/{mac}?notice=saved")).into_response())
}
