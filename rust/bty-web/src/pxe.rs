//! What happens when a machine talks to the server: PXE contacts, plan
//! requests, status and inventory reports. Each runs as one atomic database
//! write ([`crate::db::Db::write`]) that reads the record, applies
//! [`crate::policy`], stores the new state and records the audit event, so
//! concurrent contacts of one MAC serialise cleanly.

use bty_core::catalog::Catalog;
use bty_core::mac::MacAddr;
use bty_core::wire::{FlashStatus, InventoryReport, Plan, PlanImage, PlanMode, StatusReport};
use rusqlite::{params, Connection};
use serde_json::json;

use crate::audit::{self, Actor, NewEvent};
use crate::clock;
use crate::machines::{self, Machine};
use crate::policy::{self, Decision, ImageCheck, Offer};

/// Largest `lshw` document kept; a bigger one is dropped (the rest of the
/// inventory is still stored) so one odd machine cannot bloat the database.
pub const MAX_LSHW_BYTES: usize = 4 * 1024 * 1024;

/// Create the record of an unknown MAC (policy `tui`) and refresh last-seen.
/// Race-safe: concurrent first contacts insert exactly one row, and only the
/// one that inserted it records `machine.discovered`.
fn see(conn: &Connection, mac: MacAddr, ip: Option<&str>, now: &str) -> rusqlite::Result<bool> {
    let mac_s = mac.to_string();
    // Known MACs are the common case: one UPDATE. Writes run one at a time on
    // the single writer connection, so nothing can insert between the UPDATE
    // finding no row and the INSERT.
    let updated = conn
        .prepare_cached(
            "UPDATE machines SET last_seen_at = ?2, last_seen_ip = ?3,
                 discovered_at = coalesce(discovered_at, ?2) WHERE mac = ?1",
        )?
        .execute(params![mac_s, now, ip])?;
    if updated > 0 {
        return Ok(false);
    }
    let inserted = conn
        .prepare_cached(
            "INSERT INTO machines (mac, policy, state, discovered_at, last_seen_at, last_seen_ip, created_at, updated_at)
             VALUES (?1, 'tui', 'idle', ?2, ?2, ?3, ?2, ?2) ON CONFLICT (mac) DO NOTHING",
        )?
        .execute(params![mac_s, now, ip])?
        > 0;
    if inserted {
        audit::insert(
            conn,
            &NewEvent::new("machine.discovered", Actor::PxeClient, format!("new machine {mac}"))
                .machine(mac)
                .ip(ip.map(str::to_string))
                .details(json!({"policy": "tui"})),
        )?;
    }
    Ok(inserted)
}

fn image_check(m: &Machine, catalog: &Catalog) -> ImageCheck {
    match &m.image {
        Some(name) if catalog.get(name).is_some() => ImageCheck::Present,
        Some(_) => ImageCheck::Missing,
        // Flash policies cannot be saved without an image; a record without
        // one (hand-edited database) must not flash either.
        None if m.policy().flashes() => ImageCheck::Missing,
        None => ImageCheck::Present,
    }
}

/// The result of `GET /pxe/{mac}`.
#[derive(Debug, Clone)]
pub struct Contact {
    pub machine: Machine,
    pub decision: Decision,
    pub discovered: bool,
}

pub fn contact(
    conn: &Connection,
    mac: MacAddr,
    ip: Option<&str>,
    catalog: &Catalog,
) -> rusqlite::Result<Contact> {
    let now = clock::now_rfc3339();
    let discovered = see(conn, mac, ip, &now)?;
    let mut m = machines::get_for_boot(conn, mac)?.ok_or(rusqlite::Error::QueryReturnedNoRows)?;
    let (policy, state) = (m.policy(), m.state());
    let image = image_check(&m, catalog);
    let d = policy::on_pxe(policy, state, image);
    if d.next_state != state {
        conn.prepare_cached("UPDATE machines SET state = ?2 WHERE mac = ?1")?
            .execute(params![mac.to_string(), d.next_state.as_str()])?;
        m.state = d.next_state.as_str().to_string();
    }
    if d.abandons_flash {
        conn.execute(
            "UPDATE flash_history SET status = 'abandoned', finished_at = ?2,
                 reason = 'the machine PXE-booted again before reporting (crash or power loss?)'
             WHERE mac = ?1 AND status = 'running'",
            params![mac.to_string(), now],
        )?;
    }
    if d.starts_flash {
        conn.execute(
            "INSERT INTO flash_history (mac, image, started_at, status) VALUES (?1, ?2, ?3, 'running')",
            params![mac.to_string(), m.image, now],
        )?;
    }
    let reason = if image == ImageCheck::Missing && policy.flashes() {
        format!("image {:?} is not in the catalog: {}", m.image.as_deref().unwrap_or(""), d.reason)
    } else {
        d.reason.to_string()
    };
    audit::insert(
        conn,
        &NewEvent::new("pxe.offered", Actor::PxeClient, format!("{mac}: {} ({reason})", d.offer.as_str()))
            .machine(mac)
            .ip(ip.map(str::to_string))
            .details(json!({
                "policy": policy.as_str(),
                "state": state.as_str(),
                "next_state": d.next_state.as_str(),
                "offer": d.offer.as_str(),
                "reason": reason,
                "image": m.image,
                "image_missing": image == ImageCheck::Missing && policy.flashes(),
            })),
    )?;
    Ok(Contact { machine: m, decision: d, discovered })
}

/// The result of `GET /pxe/{mac}/plan` before URLs are filled in.
#[derive(Debug, Clone)]
pub struct PlanDecision {
    pub machine: Machine,
    pub mode: PlanMode,
    pub reason: Option<String>,
}

pub fn plan(
    conn: &Connection,
    mac: MacAddr,
    ip: Option<&str>,
    catalog: &Catalog,
) -> rusqlite::Result<PlanDecision> {
    let now = clock::now_rfc3339();
    see(conn, mac, ip, &now)?;
    let m = machines::get_for_boot(conn, mac)?.ok_or(rusqlite::Error::QueryReturnedNoRows)?;
    let image = image_check(&m, catalog);
    let (mode, why) = policy::plan(m.policy(), m.state(), image);
    let reason = why.map(|w| match (&m.image, image) {
        (Some(name), ImageCheck::Missing) => format!("{w} ({name:?})"),
        _ => w.to_string(),
    });
    audit::insert(
        conn,
        &NewEvent::new("pxe.plan", Actor::PxeClient, format!("{mac}: plan {}", mode.as_str()))
            .machine(mac)
            .ip(ip.map(str::to_string))
            .details(json!({"policy": m.policy, "state": m.state, "mode": mode.as_str(), "reason": reason, "image": m.image})),
    )?;
    Ok(PlanDecision { machine: m, mode, reason })
}

/// Fill in the URLs: the image is always fetched through this server.
pub fn build_plan(d: &PlanDecision, base: &str, catalog: &Catalog) -> Plan {
    let image = match d.mode {
        PlanMode::Flash => d.machine.image.as_deref().and_then(|n| catalog.get(n)).map(|e| PlanImage {
            name: e.name.clone(),
            url: format!("{base}/images/{}", e.name),
            sha256: e.sha256.clone(),
            format: e.format.map(|f| f.as_str().to_string()),
            size_bytes: e.size_bytes,
        }),
        _ => None,
    };
    Plan {
        mode: d.mode,
        target_disk_serial: if d.mode == PlanMode::Flash {
            d.machine.target_disk_serial.clone()
        } else {
            None
        },
        image,
        provisioning_mode: d.machine.provisioning_mode.clone(),
        server_version: crate::VERSION.to_string(),
        catalog_url: (d.mode == PlanMode::Interactive).then(|| format!("{base}/catalog.toml")),
        reason: d.reason.clone(),
    }
}

fn orphan(conn: &Connection, mac: MacAddr, ip: Option<&str>, what: &str) -> rusqlite::Result<()> {
    audit::insert(
        conn,
        &NewEvent::new(
            "pxe.client.orphan",
            Actor::PxeClient,
            format!(
                "{what} from unknown machine {mac}; it never PXE-booted from this server (or was deleted)"
            ),
        )
        .machine(mac)
        .ip(ip.map(str::to_string))
        .details(json!({"report": what})),
    )?;
    Ok(())
}

/// `POST /pxe/{mac}/status` and `/done`. `None`: unknown MAC (recorded as orphan).
pub fn status(
    conn: &Connection,
    mac: MacAddr,
    ip: Option<&str>,
    report: &StatusReport,
) -> rusqlite::Result<Option<Machine>> {
    let now = clock::now_rfc3339();
    let Some(m) = machines::get(conn, mac)? else {
        orphan(conn, mac, ip, "status report")?;
        return Ok(None);
    };
    let next = policy::on_status(m.policy(), m.state(), report.status);
    let st = report.status.as_str();
    match report.status {
        FlashStatus::Done => conn.execute(
            "UPDATE machines SET state = ?2, last_flashed_at = ?3, last_flash_status = 'done', last_flash_reason = NULL,
                 last_seen_at = ?3, last_seen_ip = ?4 WHERE mac = ?1",
            params![mac.to_string(), next.as_str(), now, ip],
        )?,
        FlashStatus::Failed => conn.execute(
            "UPDATE machines SET state = ?2, last_flash_status = 'failed', last_flash_reason = ?5,
                 last_seen_at = ?3, last_seen_ip = ?4 WHERE mac = ?1",
            params![mac.to_string(), next.as_str(), now, ip, report.reason],
        )?,
    };
    let updated = conn.execute(
        "UPDATE flash_history SET status = ?2, finished_at = ?3, reason = ?4
         WHERE id = (SELECT max(id) FROM flash_history WHERE mac = ?1 AND status = 'running')",
        params![mac.to_string(), st, now, report.reason],
    )?;
    if updated == 0 {
        // A report without an offer (interactive flash, or a USB-booted agent).
        conn.execute(
            "INSERT INTO flash_history (mac, image, finished_at, status, reason) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![mac.to_string(), m.image, now, st, report.reason],
        )?;
    }
    let (kind, summary) = match report.status {
        FlashStatus::Done => {
            ("machine.flashed", format!("{mac} flashed {}", m.image.as_deref().unwrap_or("an image")))
        }
        FlashStatus::Failed => (
            "machine.flash_failed",
            format!("{mac} flash failed: {}", report.reason.as_deref().unwrap_or("no reason given")),
        ),
    };
    audit::insert(
        conn,
        &NewEvent::new(kind, Actor::PxeClient, summary).machine(mac).ip(ip.map(str::to_string)).details(
            json!({
                "status": st,
                "reason": report.reason,
                "image": m.image,
                "policy": m.policy,
                "state": m.state,
                "next_state": next.as_str(),
                "duration_s": report.duration_s,
                "bytes_written": report.bytes_written,
            }),
        ),
    )?;
    let out = machines::get(conn, mac)?;
    Ok(out)
}

/// `POST /pxe/{mac}/inventory`. `None`: unknown MAC (recorded as orphan).
pub fn inventory(
    conn: &Connection,
    mac: MacAddr,
    ip: Option<&str>,
    report: &InventoryReport,
) -> rusqlite::Result<Option<Machine>> {
    let now = clock::now_rfc3339();
    let Some(m) = machines::get(conn, mac)? else {
        orphan(conn, mac, ip, "inventory report")?;
        return Ok(None);
    };
    let next = policy::on_inventory(m.policy(), m.state());
    let inv = json!({"disks": report.disks, "hardware": report.hardware});
    let lshw = report.lshw.as_ref().map(|v| v.to_string());
    let lshw_dropped = lshw.as_ref().is_some_and(|s| s.len() > MAX_LSHW_BYTES);
    let lshw = lshw.filter(|_| !lshw_dropped);
    conn.execute(
        "UPDATE machines SET state = ?2, inventory = ?3, inventory_at = ?4, lshw = coalesce(?5, lshw),
             last_seen_at = ?4, last_seen_ip = ?6 WHERE mac = ?1",
        params![mac.to_string(), next.as_str(), inv.to_string(), now, lshw, ip],
    )?;
    let serials: Vec<&str> = report.disks.iter().filter_map(|d| d.serial.as_deref()).collect();
    let mut summary = format!("{mac} reported {} disk(s)", report.disks.len());
    if lshw_dropped {
        summary.push_str(&format!("; lshw larger than {MAX_LSHW_BYTES} bytes was not stored"));
    }
    audit::insert(
        conn,
        &NewEvent::new("machine.inventory", Actor::PxeClient, summary)
            .machine(mac)
            .ip(ip.map(str::to_string))
            .details(json!({"disks": report.disks.len(), "serials": serials, "lshw_dropped": lshw_dropped,
                   "policy": m.policy, "state": m.state, "next_state": next.as_str()})),
    )?;
    let out = machines::get(conn, mac)?;
    Ok(out)
}

/// The offer a machine would get now, for display (no side effects).
pub fn preview(m: &Machine, catalog: &Catalog) -> Offer {
    policy::on_pxe(m.policy(), m.state(), image_check(m, catalog)).offer
}
