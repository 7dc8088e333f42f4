//! What happens when a machine talks to the server: PXE contacts, plan
//! requests, status and inventory reports. Each runs as one atomic database
//! write ([`crate::db::Db::write`]) that reads the record, applies
//! [`crate::policy`], stores the new state and records the audit event, so
//! concurrent contacts of one MAC serialise cleanly.
//!
//! Every live-environment offer mints a one-time token (stored as its
//! SHA-256 on the machine's row, replacing any earlier one); the live
//! environment gets it as `bty.token=` and reports carry it in
//! [`OFFER_TOKEN_HEADER`]. A report is applied only with the current offer's
//! token while that offer is outstanding; anything else changes nothing and
//! is recorded once per source and window (see `ARCHITECTURE.md`, "Trust on
//! the PXE side", for what a forged PXE contact can still do).

use bty_core::catalog::Catalog;
use bty_core::mac::MacAddr;
pub use bty_core::wire::OFFER_TOKEN_HEADER;
use bty_core::wire::{FlashStatus, InventoryReport, Plan, PlanImage, PlanMode, StatusReport};
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::audit::{self, Actor, NewEvent};
use crate::clock;
use crate::machines::{self, Machine};
use crate::policy::{self, BootState, Decision, ImageCheck, Offer, Report, ReportVerdict};
use crate::secret::{random_secret, sha256_hex};

#[derive(serde::Serialize)]
struct Discovered {
    policy: &'static str,
}

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
    discover(conn, mac, ip, now)
}

/// Create the record of a MAC known to be new (policy `tui`), recording
/// `machine.discovered` if this call inserted it.
fn discover(conn: &Connection, mac: MacAddr, ip: Option<&str>, now: &str) -> rusqlite::Result<bool> {
    let mac_s = mac.to_string();
    let inserted = conn
        .prepare_cached(
            "INSERT INTO machines (mac, policy, state, discovered_at, last_seen_at, last_seen_ip, created_at, updated_at)
             VALUES (?1, 'tui', 'idle', ?2, ?2, ?3, ?2, ?2) ON CONFLICT (mac) DO NOTHING",
        )?
        .execute(params![mac_s, now, ip])?
        > 0;
    if inserted {
        record_discovered(conn, mac, ip)?;
    }
    Ok(inserted)
}

/// What the ProxyDHCP service saw: a PXE client asked where to boot.
#[derive(Debug, Clone)]
pub struct DhcpSighting {
    pub mac: MacAddr,
    /// Its address, once it has one (the request on port 4011).
    pub ip: Option<String>,
    /// `BIOS PXE`, `UEFI PXE`, `UEFI HTTP`, `iPXE`, ...
    pub client: String,
    /// What it was told to boot; `None` when nothing was offered.
    pub boot_file: Option<String>,
}

/// Record a sighting on the machine's row; an unknown MAC gets its record
/// (policy `tui`) and `machine.discovered`, as on its first HTTP contact.
/// Returns whether the record is new.
pub fn record_dhcp_sighting(conn: &Connection, s: &DhcpSighting) -> rusqlite::Result<bool> {
    let now = clock::now_rfc3339();
    let update = |conn: &Connection| {
        conn.prepare_cached(
            "UPDATE machines SET dhcp_seen_at = ?2, dhcp_client = ?3, dhcp_boot_file = ?4,
                 last_seen_ip = coalesce(?5, last_seen_ip) WHERE mac = ?1",
        )?
        .execute(params![s.mac.to_string(), now, s.client, s.boot_file, s.ip])
    };
    if update(conn)? > 0 {
        return Ok(false);
    }
    let inserted = discover(conn, s.mac, s.ip.as_deref(), &now)?;
    update(conn)?;
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
    /// The new offer's token, for the live environment's kernel command
    /// line; `None` for a local boot.
    pub token: Option<String>,
}

/// A token for the offer a contact may make, minted before the write so the
/// single writer spends no time on randomness and hashing.
pub struct MintedToken {
    token: String,
    hash: String,
}

impl MintedToken {
    pub fn new() -> Self {
        let token = random_secret();
        let hash = sha256_hex(&token);
        MintedToken { token, hash }
    }
}

impl Default for MintedToken {
    fn default() -> Self {
        Self::new()
    }
}

pub fn contact(
    conn: &Connection,
    mac: MacAddr,
    ip: Option<&str>,
    catalog: &Catalog,
    minted: MintedToken,
) -> rusqlite::Result<Contact> {
    let now = clock::now_rfc3339();
    // A known MAC (the common case) costs one read and one UPDATE that
    // records the sighting together with the offer; a new one costs one
    // INSERT that carries its first offer. Writes run one at a time on the
    // writer connection, so nothing changes the row between read and write.
    let (m, minted) = match machines::get_for_boot(conn, mac)? {
        Some(m) => (m, minted),
        None => match first_contact(conn, mac, ip, &now, minted)? {
            Ok(contact) => return Ok(contact),
            // Unreachable with one writer; handled as a known machine.
            Err(minted) => {
                (machines::get_for_boot(conn, mac)?.ok_or(rusqlite::Error::QueryReturnedNoRows)?, minted)
            }
        },
    };
    known_contact(conn, m, mac, ip, &now, catalog, minted)
}

/// The contact of a MAC with a record.
fn known_contact(
    conn: &Connection,
    mut m: Machine,
    mac: MacAddr,
    ip: Option<&str>,
    now: &str,
    catalog: &Catalog,
    minted: MintedToken,
) -> rusqlite::Result<Contact> {
    let (policy, state) = (m.policy(), m.state());
    let image = image_check(&m, catalog);
    let d = policy::on_pxe(policy, state, image);
    if m.provisioning_mode == "cijoe-offline" && m.workflow.is_some() {
        unreported_workflow(conn, &m)?;
    }
    // A live offer replaces whatever offer was outstanding (the machine
    // booted again, so that live environment is gone); a local boot ends it.
    let token = if policy::is_live(d.offer) {
        conn.prepare_cached(
            "UPDATE machines SET last_seen_at = ?2, last_seen_ip = ?3, discovered_at = coalesce(discovered_at, ?2),
                 state = ?4, offer_kind = ?5, offer_token_hash = ?6, offer_at = ?2 WHERE mac = ?1",
        )?
        .execute(params![mac.to_string(), now, ip, d.next_state.as_str(), d.offer.as_str(), minted.hash])?;
        Some(minted.token)
    } else {
        conn.prepare_cached(
            "UPDATE machines SET last_seen_at = ?2, last_seen_ip = ?3, discovered_at = coalesce(discovered_at, ?2),
                 state = ?4, offer_kind = NULL, offer_token_hash = NULL, offer_at = NULL WHERE mac = ?1",
        )?
        .execute(params![mac.to_string(), now, ip, d.next_state.as_str()])?;
        None
    };
    m.state = d.next_state.as_str().to_string();
    m.last_seen_at = Some(now.to_string());
    m.last_seen_ip = ip.map(str::to_string);
    m.discovered_at.get_or_insert_with(|| now.to_string());
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
    record_offer(conn, &m, ip, policy, state, image, &d)?;
    Ok(Contact { machine: m, decision: d, discovered: false, token })
}

/// A flash that reported done left its offer open for the workflow's
/// report; a machine back at PXE without it never sent one: a failed run
/// that says so (the flash stays done).
fn unreported_workflow(conn: &Connection, m: &Machine) -> rusqlite::Result<()> {
    let kind: Option<String> = conn
        .prepare_cached("SELECT offer_kind FROM machines WHERE mac = ?1")?
        .query_row([m.mac.to_string()], |r| r.get(0))
        .optional()?
        .flatten();
    if kind.as_deref() != Some(PROVISIONING_OFFER) {
        return Ok(());
    }
    let run = crate::runs::FinishedRun {
        mac: m.mac,
        workflow: m.workflow.as_deref().unwrap_or_default(),
        image: m.image.as_deref(),
        mode: "offline",
        keep: usize::MAX,
    };
    let why = "the machine booted again before the live environment reported its workflow \
               (it crashed, lost power or the network, or cijoe hung past every timeout)";
    crate::runs::record(conn, &run, "failed", Some(why), &[])?;
    Ok(())
}

/// The first contact of a MAC: its record (policy `tui`) is inserted with
/// the first offer in one statement, and `machine.discovered` recorded.
/// `Err` gives the token back if a record existed after all.
fn first_contact(
    conn: &Connection,
    mac: MacAddr,
    ip: Option<&str>,
    now: &str,
    minted: MintedToken,
) -> rusqlite::Result<Result<Contact, MintedToken>> {
    let (policy, state, image) = (policy::Policy::Tui, BootState::Idle, ImageCheck::Present);
    let d = policy::on_pxe(policy, state, image);
    let live = policy::is_live(d.offer);
    let offer_kind = live.then(|| d.offer.as_str());
    let token_hash = live.then_some(minted.hash.as_str());
    let inserted = conn
        .prepare_cached(
            "INSERT INTO machines (mac, policy, state, discovered_at, last_seen_at, last_seen_ip, created_at,
                 updated_at, offer_kind, offer_token_hash, offer_at)
             VALUES (?1, ?2, ?3, ?4, ?4, ?5, ?4, ?4, ?6, ?7, CASE WHEN ?6 IS NULL THEN NULL ELSE ?4 END)
             ON CONFLICT (mac) DO NOTHING
             RETURNING mac, policy, state, image, target_disk_serial, sanboot_drive, provisioning_mode,
                 discovered_at, last_seen_at, last_seen_ip, last_flashed_at, last_flash_status,
                 last_flash_reason, NULL, inventory_at, lshw IS NOT NULL, created_at, updated_at, NULL,
                 dhcp_seen_at, dhcp_client, dhcp_boot_file, workflow, ssh_host, ssh_port, ssh_user",
        )?
        .query_row(
            params![mac.to_string(), policy.as_str(), d.next_state.as_str(), now, ip, offer_kind, token_hash],
            machines::from_row,
        )
        .optional()?;
    let Some(m) = inserted else {
        return Ok(Err(minted));
    };
    record_discovered(conn, mac, ip)?;
    record_offer(conn, &m, ip, policy, state, image, &d)?;
    let token = live.then_some(minted.token);
    Ok(Ok(Contact { machine: m, decision: d, discovered: true, token }))
}

/// Record `machine.discovered` for a record just inserted (policy `tui`).
fn record_discovered(conn: &Connection, mac: MacAddr, ip: Option<&str>) -> rusqlite::Result<()> {
    audit::insert(
        conn,
        &NewEvent::new("machine.discovered", Actor::PxeClient, format!("new machine {mac}"))
            .machine(mac)
            .ip(ip.map(str::to_string))
            .server_details(&Discovered { policy: policy::Policy::Tui.as_str() }),
    )?;
    Ok(())
}

/// Record `pxe.offered` for a decision about `m` (as it was before it).
fn record_offer(
    conn: &Connection,
    m: &Machine,
    ip: Option<&str>,
    policy: policy::Policy,
    state: BootState,
    image: ImageCheck,
    d: &Decision,
) -> rusqlite::Result<()> {
    let mac = m.mac;
    let image_missing = image == ImageCheck::Missing && policy.flashes();
    let reason = if image_missing {
        format!("image {:?} is not in the catalog: {}", m.image.as_deref().unwrap_or(""), d.reason)
    } else {
        d.reason.to_string()
    };
    audit::insert(
        conn,
        &NewEvent::new("pxe.offered", Actor::PxeClient, format!("{mac}: {} ({reason})", d.offer.as_str()))
            .machine(mac)
            .ip(ip.map(str::to_string))
            .server_details(&OfferedDetails {
                image: m.image.as_deref(),
                image_missing,
                next_state: d.next_state.as_str(),
                offer: d.offer.as_str(),
                policy: policy.as_str(),
                reason: &reason,
                state: state.as_str(),
            }),
    )?;
    Ok(())
}

/// The details of a `pxe.offered` event (fields in the order a JSON object
/// of them has always been stored: by name).
#[derive(serde::Serialize)]
struct OfferedDetails<'a> {
    image: Option<&'a str>,
    image_missing: bool,
    next_state: &'a str,
    offer: &'a str,
    policy: &'a str,
    reason: &'a str,
    state: &'a str,
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

/// What became of a report from a live environment.
#[derive(Debug, Clone)]
pub enum ReportOutcome {
    Accepted,
    /// Nothing changed; the reason is for the client (403) and the log.
    Refused(String),
}

/// The stored offer kind of a known machine, once the report's token is
/// its token; else why the report is not the current offer's.
fn stored_offer(
    conn: &Connection,
    mac: MacAddr,
    token: Option<&str>,
) -> rusqlite::Result<Result<String, String>> {
    let (kind, hash): (Option<String>, Option<String>) = conn
        .prepare_cached("SELECT offer_kind, offer_token_hash FROM machines WHERE mac = ?1")?
        .query_row([mac.to_string()], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?
        .unwrap_or_default();
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return Ok(Err(format!(
            "the report carries no {OFFER_TOKEN_HEADER} header; only the live environment bty-web booted \
             (it has the token as bty.token= on its kernel command line) may report for {mac}"
        )));
    };
    let (Some(kind), Some(hash)) = (kind, hash) else {
        return Ok(Err(format!(
            "no live environment is outstanding for {mac}: its offer ended (a report already came, the machine \
             booted its disk, or an operator saved its binding) or none was made"
        )));
    };
    if !bool::from(sha256_hex(token).as_bytes().ct_eq(hash.as_bytes())) {
        return Ok(Err(format!(
            "the offer token is not {mac}'s current one (it belongs to an earlier boot or another machine)"
        )));
    }
    Ok(Ok(kind))
}

/// The stored offer of a known machine, checked against the report's token:
/// the offer that sent it, or why the report is not the current offer's.
fn current_offer(
    conn: &Connection,
    mac: MacAddr,
    token: Option<&str>,
) -> rusqlite::Result<Result<Offer, String>> {
    let kind = match stored_offer(conn, mac, token)? {
        Ok(k) => k,
        Err(why) => return Ok(Err(why)),
    };
    let offer = match kind.as_str() {
        PROVISIONING_OFFER => {
            return Ok(Err(format!(
                "the flash of {mac} already reported done; only its workflow's report (POST /pxe/{mac}/cijoe) may follow"
            )))
        }
        "flash" => Offer::Flash,
        "inventory" => Offer::Inventory,
        "interactive" => Offer::Interactive,
        _ => return Ok(Err(format!("the stored offer of {mac} is not one bty-web makes ({kind:?})"))),
    };
    Ok(Ok(offer))
}

/// The offer kind left open after a `cijoe-offline` flash reported done:
/// the same token, good for the workflow and its one report.
const PROVISIONING_OFFER: &str = "provisioning";

fn end_offer(conn: &Connection, mac: MacAddr) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "UPDATE machines SET offer_kind = NULL, offer_token_hash = NULL, offer_at = NULL WHERE mac = ?1",
    )?
    .execute([mac.to_string()])?;
    Ok(())
}

/// Record a refusal (folded per source address and window) and say why.
fn refuse(
    conn: &Connection,
    mac: MacAddr,
    ip: Option<&str>,
    report: Report,
    known: bool,
    reason: String,
) -> rusqlite::Result<ReportOutcome> {
    let (kind, summary) = if known {
        ("pxe.report.refused", format!("{} report for {mac} refused: {reason}", report.as_str()))
    } else {
        (
            "pxe.client.orphan",
            format!(
                "{} report from unknown machine {mac}; it never PXE-booted from this server (or was deleted)",
                report.as_str()
            ),
        )
    };
    audit::insert(
        conn,
        &NewEvent::new(kind, Actor::PxeClient, summary)
            .machine(mac)
            .ip(ip.map(str::to_string))
            .details(json!({"report": report.as_str(), "mac": mac.to_string(), "reason": reason}))
            .aggregate(ip.unwrap_or("unknown")),
    )?;
    Ok(ReportOutcome::Refused(reason))
}

/// Check a report against the machine's outstanding offer: the machine and
/// the verdict, or the refusal already recorded.
fn admit(
    conn: &Connection,
    mac: MacAddr,
    ip: Option<&str>,
    token: Option<&str>,
    report: Report,
) -> rusqlite::Result<Result<(Machine, Offer, BootState), ReportOutcome>> {
    let Some(m) = machines::get(conn, mac)? else {
        let why = format!("unknown machine {mac}: it must PXE-boot from this server first");
        return refuse(conn, mac, ip, report, false, why).map(Err);
    };
    let offer = match current_offer(conn, mac, token)? {
        Ok(o) => o,
        Err(why) => return refuse(conn, mac, ip, report, true, why).map(Err),
    };
    match policy::on_report(m.policy(), m.state(), offer, report) {
        ReportVerdict::Accept { next_state, ends_offer } => {
            let provisions = report == Report::Done
                && offer == Offer::Flash
                && m.provisioning_mode == "cijoe-offline"
                && m.workflow.is_some();
            if ends_offer && provisions {
                // The workflow runs after the flash is recorded; its report
                // carries the same token, once.
                conn.prepare_cached("UPDATE machines SET offer_kind = ?2 WHERE mac = ?1")?
                    .execute(params![mac.to_string(), PROVISIONING_OFFER])?;
            } else if ends_offer {
                end_offer(conn, mac)?;
            }
            Ok(Ok((m, offer, next_state)))
        }
        ReportVerdict::Refuse(why) => refuse(conn, mac, ip, report, true, why.to_string()).map(Err),
    }
}

/// Check an offline provisioning report (`POST /pxe/{mac}/cijoe`): only the
/// live environment of the current flash offer, of a machine whose mode is
/// `cijoe-offline` with a workflow, may send one (or fetch the workflow):
/// before the flash's `done` (which then leaves the offer open for one more
/// report) or after it ([`end_provisioning`] closes it once the run is
/// recorded). The machine, or the refusal recorded.
pub fn admit_provisioning(
    conn: &Connection,
    mac: MacAddr,
    ip: Option<&str>,
    token: Option<&str>,
) -> rusqlite::Result<Result<Machine, ReportOutcome>> {
    let report = Report::Provisioning;
    let Some(m) = machines::get_for_boot(conn, mac)? else {
        let why = format!("unknown machine {mac}: it must PXE-boot from this server first");
        return refuse(conn, mac, ip, report, false, why).map(Err);
    };
    match stored_offer(conn, mac, token)? {
        Ok(kind) if kind == "flash" || kind == PROVISIONING_OFFER => {}
        Ok(other) => {
            let why =
                format!("a provisioning report belongs to a flash; the live environment was offered {other}");
            return refuse(conn, mac, ip, report, true, why).map(Err);
        }
        Err(why) => return refuse(conn, mac, ip, report, true, why).map(Err),
    }
    if m.provisioning_mode != "cijoe-offline" || m.workflow.is_none() {
        let why =
            format!("{mac} is not bound to an offline workflow (provisioning mode {})", m.provisioning_mode);
        return refuse(conn, mac, ip, report, true, why).map(Err);
    }
    Ok(Ok(m))
}

/// After an offline run is recorded: a flash that already reported done
/// has no more reports to make, so its offer ends.
pub fn end_provisioning(conn: &Connection, mac: MacAddr) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "UPDATE machines SET offer_kind = NULL, offer_token_hash = NULL, offer_at = NULL
         WHERE mac = ?1 AND offer_kind = ?2",
    )?
    .execute(params![mac.to_string(), PROVISIONING_OFFER])?;
    Ok(())
}

/// `POST /pxe/{mac}/status` and `/done`.
pub fn status(
    conn: &Connection,
    mac: MacAddr,
    ip: Option<&str>,
    token: Option<&str>,
    report: &StatusReport,
) -> rusqlite::Result<ReportOutcome> {
    let now = clock::now_rfc3339();
    let (m, offer, next) = match admit(conn, mac, ip, token, Report::from_status(report.status))? {
        Ok(v) => v,
        Err(refused) => return Ok(refused),
    };
    let st = report.status.as_str();
    if report.status == FlashStatus::Done {
        // A new system brings its own SSH host key: the next online run
        // pins it again.
        crate::runs::set_host_key(conn, mac, None)?;
    }
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
    let updated = if offer == Offer::Flash {
        conn.execute(
            "UPDATE flash_history SET status = ?2, finished_at = ?3, reason = ?4
             WHERE id = (SELECT max(id) FROM flash_history WHERE mac = ?1 AND status = 'running')",
            params![mac.to_string(), st, now, report.reason],
        )?
    } else {
        0
    };
    if updated == 0 {
        // The interactive flasher's outcome: history, not a policy's flash.
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
                "offer": offer.as_str(),
                "policy": m.policy,
                "state": m.state,
                "next_state": next.as_str(),
                "duration_s": report.duration_s,
                "bytes_written": report.bytes_written,
            }),
        ),
    )?;
    Ok(ReportOutcome::Accepted)
}

/// `POST /pxe/{mac}/inventory`: the latest report replaces the previous one.
pub fn inventory(
    conn: &Connection,
    mac: MacAddr,
    ip: Option<&str>,
    token: Option<&str>,
    report: &InventoryReport,
) -> rusqlite::Result<ReportOutcome> {
    let now = clock::now_rfc3339();
    let (m, offer, next) = match admit(conn, mac, ip, token, Report::Inventory)? {
        Ok(v) => v,
        Err(refused) => return Ok(refused),
    };
    let inv = json!({"disks": report.disks, "hardware": report.hardware});
    let lshw = report.lshw.as_ref().map(|v| v.to_string());
    conn.execute(
        "UPDATE machines SET state = ?2, inventory = ?3, inventory_at = ?4, lshw = coalesce(?5, lshw),
             last_seen_at = ?4, last_seen_ip = ?6 WHERE mac = ?1",
        params![mac.to_string(), next.as_str(), inv.to_string(), now, lshw, ip],
    )?;
    let serials: Vec<&str> = report.disks.iter().filter_map(|d| d.serial.as_deref()).collect();
    let summary = format!("{mac} reported {} disk(s)", report.disks.len());
    audit::insert(
        conn,
        &NewEvent::new("machine.inventory", Actor::PxeClient, summary)
            .machine(mac)
            .ip(ip.map(str::to_string))
            .details(json!({"disks": report.disks.len(), "serials": serials, "has_lshw": lshw.is_some(),
                   "offer": offer.as_str(), "policy": m.policy, "state": m.state, "next_state": next.as_str()})),
    )?;
    Ok(ReportOutcome::Accepted)
}

/// The offer a machine would get now, for display (no side effects).
pub fn preview(m: &Machine, catalog: &Catalog) -> Offer {
    policy::on_pxe(m.policy(), m.state(), image_check(m, catalog)).offer
}
