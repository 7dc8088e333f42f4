//! Machine records: the operator's binding (`PUT /machines/{mac}`) and what
//! the server observed, as stored in `machines` + `machine_labels`.

use std::collections::HashMap;

use bty_core::catalog::Catalog;
use bty_core::mac::MacAddr;
use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::Serialize;
use serde_json::Value;

use crate::clock;
use crate::policy::{BootState, Policy};
use crate::workflows::WorkflowStore;

pub const MAX_LABELS: usize = 32;
pub const MAX_LABEL_LEN: usize = 64;
pub const MAX_SERIAL_LEN: usize = 128;
pub const PROVISIONING_MODES: [&str; 3] = ["none", "cijoe-offline", "cijoe-online"];

/// A machine as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub mac: MacAddr,
    pub labels: Vec<String>,
    pub policy: String,
    pub state: String,
    pub image: Option<String>,
    pub target_disk_serial: Option<String>,
    pub sanboot_drive: Option<String>,
    pub provisioning_mode: String,
    /// The CIJOE workflow a cijoe provisioning mode runs.
    pub workflow: Option<String>,
    /// Where an online run reaches the machine; unset: its last-seen IP,
    /// port 22, user root.
    pub ssh_host: Option<String>,
    pub ssh_port: Option<u16>,
    pub ssh_user: Option<String>,
    pub discovered_at: Option<String>,
    pub last_seen_at: Option<String>,
    pub last_seen_ip: Option<String>,
    pub last_flashed_at: Option<String>,
    pub last_flash_status: Option<String>,
    pub last_flash_reason: Option<String>,
    pub inventory: Option<Value>,
    pub inventory_at: Option<String>,
    pub has_lshw: bool,
    /// Last seen by the ProxyDHCP service, as what kind of client, and
    /// what it was told to boot.
    pub dhcp_seen_at: Option<String>,
    pub dhcp_client: Option<String>,
    pub dhcp_boot_file: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

impl Machine {
    pub fn policy(&self) -> Policy {
        Policy::parse(&self.policy).unwrap_or(Policy::Tui)
    }
    pub fn state(&self) -> BootState {
        BootState::parse_or_pending(&self.state)
    }
}

const SELECT: &str = "SELECT m.mac, m.policy, m.state, m.image, m.target_disk_serial, m.sanboot_drive,
    m.provisioning_mode, m.discovered_at, m.last_seen_at, m.last_seen_ip, m.last_flashed_at,
    m.last_flash_status, m.last_flash_reason, m.inventory, m.inventory_at, m.lshw IS NOT NULL,
    m.created_at, m.updated_at,
    (SELECT group_concat(label, char(10)) FROM
        (SELECT label FROM machine_labels l WHERE l.mac = m.mac ORDER BY label)),
    m.dhcp_seen_at, m.dhcp_client, m.dhcp_boot_file, m.workflow, m.ssh_host, m.ssh_port, m.ssh_user
    FROM machines m";

/// [`SELECT`] without the inventory document and the labels, for the PXE
/// path: a boot decision needs neither, and parsing a machine's inventory
/// (and sorting its labels) on every contact is most of what a lookup costs.
const SELECT_FOR_BOOT: &str =
    "SELECT m.mac, m.policy, m.state, m.image, m.target_disk_serial, m.sanboot_drive,
    m.provisioning_mode, m.discovered_at, m.last_seen_at, m.last_seen_ip, m.last_flashed_at,
    m.last_flash_status, m.last_flash_reason, NULL, m.inventory_at, m.lshw IS NOT NULL,
    m.created_at, m.updated_at, NULL, m.dhcp_seen_at, m.dhcp_client, m.dhcp_boot_file,
    m.workflow, m.ssh_host, m.ssh_port, m.ssh_user
    FROM machines m";

/// A [`Machine`] from a row of [`SELECT`]'s columns.
pub(crate) fn from_row(r: &Row<'_>) -> rusqlite::Result<Machine> {
    let mac: String = r.get(0)?;
    let inventory: Option<String> = r.get(13)?;
    let labels: Option<String> = r.get(18)?;
    Ok(Machine {
        mac: mac.parse().map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
        })?,
        policy: r.get(1)?,
        state: r.get(2)?,
        image: r.get(3)?,
        target_disk_serial: r.get(4)?,
        sanboot_drive: r.get(5)?,
        provisioning_mode: r.get(6)?,
        discovered_at: r.get(7)?,
        last_seen_at: r.get(8)?,
        last_seen_ip: r.get(9)?,
        last_flashed_at: r.get(10)?,
        last_flash_status: r.get(11)?,
        last_flash_reason: r.get(12)?,
        inventory: inventory.and_then(|s| serde_json::from_str(&s).ok()),
        inventory_at: r.get(14)?,
        has_lshw: r.get(15)?,
        dhcp_seen_at: r.get(19)?,
        dhcp_client: r.get(20)?,
        dhcp_boot_file: r.get(21)?,
        workflow: r.get(22)?,
        ssh_host: r.get(23)?,
        ssh_port: r.get(24)?,
        ssh_user: r.get(25)?,
        created_at: r.get(16)?,
        updated_at: r.get(17)?,
        labels: labels.map(|s| s.split('\n').map(str::to_string).collect()).unwrap_or_default(),
    })
}

pub fn get(conn: &Connection, mac: MacAddr) -> rusqlite::Result<Option<Machine>> {
    conn.prepare_cached(&format!("{SELECT} WHERE m.mac = ?"))?
        .query_row([mac.to_string()], from_row)
        .optional()
}

/// The record as a boot decision needs it: `inventory` is `None` and
/// `labels` empty whatever is stored (see [`SELECT_FOR_BOOT`]).
pub fn get_for_boot(conn: &Connection, mac: MacAddr) -> rusqlite::Result<Option<Machine>> {
    conn.prepare_cached(&format!("{SELECT_FOR_BOOT} WHERE m.mac = ?"))?
        .query_row([mac.to_string()], from_row)
        .optional()
}

/// `GET /machines` filters; all optional, combined with AND.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub label: Option<String>,
    pub policy: Option<Policy>,
    /// Case-insensitive substring of MAC, labels, image, IP or disk serial.
    pub q: Option<String>,
}

/// The WHERE clause (after `WHERE 1 = 1`) and its arguments for `f`.
fn filter_sql(f: &ListFilter) -> (String, Vec<String>) {
    let mut sql = String::new();
    let mut args: Vec<String> = Vec::new();
    if let Some(label) = &f.label {
        // IN rather than EXISTS: the label's index yields the few machines
        // that carry it, instead of a probe for every machine.
        sql.push_str(" AND m.mac IN (SELECT l.mac FROM machine_labels l WHERE l.label = ?)");
        args.push(label.clone());
    }
    if let Some(p) = f.policy {
        sql.push_str(" AND m.policy = ?");
        args.push(p.as_str().into());
    }
    if let Some(q) = f.q.as_ref().filter(|q| !q.is_empty()) {
        sql.push_str(
            " AND (instr(lower(m.mac || ' ' || coalesce(m.image, '') || ' ' || coalesce(m.last_seen_ip, '') || ' '
                   || coalesce(m.target_disk_serial, '')), lower(?)) > 0
              OR EXISTS (SELECT 1 FROM machine_labels l WHERE l.mac = m.mac AND instr(lower(l.label), lower(?)) > 0))",
        );
        args.push(q.clone());
        args.push(q.clone());
    }
    (sql, args)
}

/// [`SELECT`] without the inventory document: a list reads many machines,
/// and their inventories are most of the bytes.
const SELECT_WITHOUT_INVENTORY: &str = "SELECT m.mac, m.policy, m.state, m.image, m.target_disk_serial,
    m.sanboot_drive, m.provisioning_mode, m.discovered_at, m.last_seen_at, m.last_seen_ip, m.last_flashed_at,
    m.last_flash_status, m.last_flash_reason, NULL, m.inventory_at, m.lshw IS NOT NULL,
    m.created_at, m.updated_at,
    (SELECT group_concat(label, char(10)) FROM
        (SELECT label FROM machine_labels l WHERE l.mac = m.mac ORDER BY label)),
    m.dhcp_seen_at, m.dhcp_client, m.dhcp_boot_file, m.workflow, m.ssh_host, m.ssh_port, m.ssh_user
    FROM machines m";

/// One page of `GET /machines`, in MAC order: at most `limit` machines
/// after `after`, and whether more follow. A cursor on the MAC rather than
/// an offset: machines discovered while a client pages through cannot shift
/// it onto a row it already had or past one it has not. `inventory` is
/// `None` unless `with_inventory`.
pub fn list_page(
    conn: &Connection,
    f: &ListFilter,
    after: Option<MacAddr>,
    limit: usize,
    with_inventory: bool,
) -> rusqlite::Result<(Vec<Machine>, bool)> {
    let (filter, mut args) = filter_sql(f);
    let select = if with_inventory { SELECT } else { SELECT_WITHOUT_INVENTORY };
    let mut sql = format!("{select} WHERE 1 = 1{filter}");
    if let Some(a) = after {
        sql.push_str(" AND m.mac > ?");
        args.push(a.to_string());
    }
    // One more than asked for says whether there is a next page.
    sql.push_str(&format!(" ORDER BY m.mac LIMIT {}", limit + 1));
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows: Vec<Machine> =
        stmt.query_map(rusqlite::params_from_iter(args), from_row)?.collect::<rusqlite::Result<_>>()?;
    let more = rows.len() > limit;
    rows.truncate(limit);
    Ok((rows, more))
}

/// What the machine list sorts on: a few short columns, so thousands of
/// machines are filtered and ordered without parsing their inventories or
/// gathering their labels; only the page shown is then read in full
/// ([`get_many`]). In no particular order: the caller sorts.
#[derive(Debug, Clone)]
pub struct ListKey {
    /// As stored: lower-case and fixed-width, so text order is MAC order.
    pub mac: String,
    pub policy: String,
    pub state: String,
    pub image: Option<String>,
    pub last_seen_at: Option<String>,
    pub last_flashed_at: Option<String>,
}

pub fn list_keys(conn: &Connection, f: &ListFilter) -> rusqlite::Result<Vec<ListKey>> {
    let (filter, args) = filter_sql(f);
    let sql = format!(
        "SELECT m.mac, m.policy, m.state, m.image, m.last_seen_at, m.last_flashed_at
         FROM machines m WHERE 1 = 1{filter}"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(args), |r| {
        Ok(ListKey {
            mac: r.get(0)?,
            policy: r.get(1)?,
            state: r.get(2)?,
            image: r.get(3)?,
            last_seen_at: r.get(4)?,
            last_flashed_at: r.get(5)?,
        })
    })?;
    rows.collect()
}

/// Full records of `macs` (as stored, see [`ListKey::mac`]), in that order;
/// ones deleted in the meantime are left out.
pub fn get_many(conn: &Connection, macs: &[&str]) -> rusqlite::Result<Vec<Machine>> {
    if macs.is_empty() {
        return Ok(Vec::new());
    }
    let marks = vec!["?"; macs.len()].join(", ");
    let mut stmt = conn.prepare(&format!("{SELECT} WHERE m.mac IN ({marks})"))?;
    let mut found: Vec<Machine> =
        stmt.query_map(rusqlite::params_from_iter(macs), from_row)?.collect::<rusqlite::Result<_>>()?;
    let order: HashMap<&str, usize> = macs.iter().enumerate().map(|(i, m)| (*m, i)).collect();
    found.sort_by_key(|m| order.get(m.mac.to_string().as_str()).copied().unwrap_or(usize::MAX));
    Ok(found)
}

/// A rejected field, reported as 422 `{"error", "field", "reason"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

fn field_err(field: &str, reason: impl Into<String>) -> FieldError {
    FieldError { field: field.into(), reason: reason.into() }
}

/// The operator's part of a machine record: the body of `PUT /machines/{mac}`.
/// A PUT replaces all of it; omitted optional fields become empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineInput {
    pub policy: Policy,
    pub image: Option<String>,
    pub target_disk_serial: Option<String>,
    pub sanboot_drive: Option<String>,
    pub provisioning_mode: String,
    pub workflow: Option<String>,
    pub ssh_host: Option<String>,
    pub ssh_port: Option<u16>,
    pub ssh_user: Option<String>,
    pub labels: Vec<String>,
}

const INPUT_FIELDS: [&str; 10] = [
    "policy",
    "image",
    "target_disk_serial",
    "sanboot_drive",
    "provisioning_mode",
    "workflow",
    "ssh_host",
    "ssh_port",
    "ssh_user",
    "labels",
];

fn opt_string(obj: &serde_json::Map<String, Value>, field: &str) -> Result<Option<String>, FieldError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.trim().to_string())),
        Some(_) => Err(field_err(field, "must be a string or null")),
    }
}

fn valid_label(l: &str) -> bool {
    let mut chars = l.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '='))
}

impl MachineInput {
    /// Validate a PUT body against the current catalog. The first problem wins,
    /// named by its field.
    /// `workflows`: where the named workflow must exist.
    pub fn from_json(
        body: &Value,
        catalog: &Catalog,
        workflows: &WorkflowStore,
    ) -> Result<MachineInput, FieldError> {
        let Some(obj) = body.as_object() else {
            return Err(field_err("", "the body must be a JSON object"));
        };
        if let Some(unknown) = obj.keys().find(|k| !INPUT_FIELDS.contains(&k.as_str())) {
            return Err(field_err(
                unknown,
                format!("unknown field; known fields are {}", INPUT_FIELDS.join(", ")),
            ));
        }
        let names: Vec<&str> = Policy::ALL.iter().map(|p| p.as_str()).collect();
        let policy = match obj.get("policy") {
            None | Some(Value::Null) => {
                return Err(field_err("policy", format!("is required: one of {}", names.join(", "))))
            }
            Some(Value::String(s)) => Policy::parse(s).ok_or_else(|| {
                field_err("policy", format!("unknown policy {s:?}; use one of {}", names.join(", ")))
            })?,
            Some(_) => return Err(field_err("policy", "must be a string")),
        };
        let image = opt_string(obj, "image")?;
        if let Some(name) = &image {
            if catalog.get(name).is_none() {
                return Err(field_err(
                    "image",
                    format!("no image named {name:?} in the catalog; GET /images lists the names"),
                ));
            }
        }
        let target_disk_serial = opt_string(obj, "target_disk_serial")?;
        if target_disk_serial
            .as_ref()
            .is_some_and(|s| s.len() > MAX_SERIAL_LEN || s.chars().any(char::is_control))
        {
            return Err(field_err(
                "target_disk_serial",
                format!("must be at most {MAX_SERIAL_LEN} printable characters"),
            ));
        }
        if policy.flashes() {
            if image.is_none() {
                return Err(field_err("image", format!("policy {policy} needs an image from the catalog")));
            }
            if target_disk_serial.is_none() {
                return Err(field_err(
                    "target_disk_serial",
                    format!("policy {policy} needs the serial of the disk to overwrite (see the machine's inventory)"),
                ));
            }
        }
        let sanboot_drive = opt_string(obj, "sanboot_drive")?;
        if let Some(d) = &sanboot_drive {
            let hex = d.strip_prefix("0x").or_else(|| d.strip_prefix("0X")).unwrap_or("");
            if hex.is_empty() || hex.len() > 2 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(field_err(
                    "sanboot_drive",
                    "must be a BIOS drive number such as 0x80 (first disk) or 0x81",
                ));
            }
        }
        let provisioning_mode = opt_string(obj, "provisioning_mode")?.unwrap_or_else(|| "none".into());
        if !PROVISIONING_MODES.contains(&provisioning_mode.as_str()) {
            return Err(field_err(
                "provisioning_mode",
                format!("use one of {}", PROVISIONING_MODES.join(", ")),
            ));
        }
        let workflow = opt_string(obj, "workflow")?;
        if let Some(w) = &workflow {
            if let Err(e) = crate::workflows::check_name(w) {
                return Err(field_err("workflow", e.to_string()));
            }
            if !workflows.exists(w) {
                return Err(field_err(
                    "workflow",
                    format!("no workflow named {w:?}; GET /workflows lists them"),
                ));
            }
        }
        if provisioning_mode != "none" && workflow.is_none() {
            return Err(field_err(
                "workflow",
                format!("provisioning mode {provisioning_mode} needs a workflow to run (PUT /workflows/NAME adds one)"),
            ));
        }
        let ssh_host = opt_string(obj, "ssh_host")?;
        if ssh_host.as_ref().is_some_and(|h| {
            h.len() > 253 || !h.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'))
        }) {
            return Err(field_err("ssh_host", "must be a host name or an IP address"));
        }
        let ssh_port = match obj.get("ssh_port") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.trim().is_empty() => None,
            Some(v) => {
                let n = v.as_u64().or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()));
                match n {
                    Some(n @ 1..=65535) => Some(n as u16),
                    _ => return Err(field_err("ssh_port", "must be a port number, 1 to 65535")),
                }
            }
        };
        let ssh_user = opt_string(obj, "ssh_user")?;
        if ssh_user.as_ref().is_some_and(|u| {
            let mut b = u.bytes();
            u.len() > 32
                || !b.next().is_some_and(|c| c.is_ascii_lowercase() || c == b'_')
                || !b.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'-'))
        }) {
            return Err(field_err(
                "ssh_user",
                "must be a Unix user name (lowercase letters, digits, `_`, `-`)",
            ));
        }
        // Count and length first, then a set: anything else lets a client
        // make the server do work that grows faster than what it sent (a
        // 1.9 MB list once took 39 s to de-duplicate, every request waiting).
        let labels: Vec<String> = match obj.get("labels") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => {
                if items.len() > MAX_LABELS {
                    return Err(field_err(
                        "labels",
                        format!("at most {MAX_LABELS} labels; {} were sent", items.len()),
                    ));
                }
                let mut set = std::collections::BTreeSet::new();
                for item in items {
                    let Some(l) = item.as_str() else {
                        return Err(field_err("labels", "must be an array of strings"));
                    };
                    if l.len() > MAX_LABEL_LEN || !valid_label(l) {
                        let shown: String = l.chars().take(MAX_LABEL_LEN + 1).collect();
                        return Err(field_err(
                            "labels",
                            format!("{shown:?}: a label starts with a letter or digit and has at most {MAX_LABEL_LEN} of letters, digits, `.`, `_`, `-`, `:`, `=`"),
                        ));
                    }
                    set.insert(l);
                }
                set.into_iter().map(str::to_string).collect()
            }
            Some(_) => return Err(field_err("labels", "must be an array of strings")),
        };
        Ok(MachineInput {
            policy,
            image,
            target_disk_serial,
            sanboot_drive,
            provisioning_mode,
            workflow,
            ssh_host,
            ssh_port,
            ssh_user,
            labels,
        })
    }
}

/// Replace the operator fields (creating the record if needed) and re-arm:
/// any save of a binding resets the state to the policy's starting state.
/// Returns the stored machine and whether it was created.
pub fn put(conn: &Connection, mac: MacAddr, input: &MachineInput) -> rusqlite::Result<(Machine, bool)> {
    let now = clock::now_rfc3339();
    let existed: bool =
        conn.query_row("SELECT count(*) FROM machines WHERE mac = ?", [mac.to_string()], |r| {
            r.get::<_, i64>(0)
        })? > 0;
    conn.execute(
        "INSERT INTO machines (mac, policy, image, target_disk_serial, sanboot_drive, provisioning_mode, state,
                               created_at, updated_at, workflow, ssh_host, ssh_port, ssh_user)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8, ?9, ?10, ?11, ?12)
         ON CONFLICT (mac) DO UPDATE SET policy = ?2, image = ?3, target_disk_serial = ?4, sanboot_drive = ?5,
             provisioning_mode = ?6, state = ?7, updated_at = ?8,
             workflow = ?9, ssh_host = ?10, ssh_port = ?11, ssh_user = ?12,
             offer_kind = NULL, offer_token_hash = NULL, offer_at = NULL",
        params![
            mac.to_string(),
            input.policy.as_str(),
            input.image,
            input.target_disk_serial,
            input.sanboot_drive,
            input.provisioning_mode,
            input.policy.armed_state().as_str(),
            now,
            input.workflow,
            input.ssh_host,
            input.ssh_port,
            input.ssh_user,
        ],
    )?;
    conn.execute("DELETE FROM machine_labels WHERE mac = ?", [mac.to_string()])?;
    for l in &input.labels {
        conn.execute("INSERT INTO machine_labels (mac, label) VALUES (?, ?)", params![mac.to_string(), l])?;
    }
    let m = get(conn, mac)?.ok_or(rusqlite::Error::QueryReturnedNoRows)?;
    Ok((m, !existed))
}

/// Machines bound to workflow `name` (at most `limit`).
pub fn using_workflow(conn: &Connection, name: &str, limit: usize) -> rusqlite::Result<Vec<String>> {
    let mut st = conn.prepare_cached("SELECT mac FROM machines WHERE workflow = ?1 ORDER BY mac LIMIT ?2")?;
    let rows = st.query_map(params![name, limit as i64], |r| r.get::<_, String>(0))?;
    rows.collect()
}

pub fn delete(conn: &Connection, mac: MacAddr) -> rusqlite::Result<bool> {
    Ok(conn.execute("DELETE FROM machines WHERE mac = ?", [mac.to_string()])? > 0)
}

pub fn count_by_policy(conn: &Connection) -> rusqlite::Result<Vec<(String, i64)>> {
    let mut stmt = conn.prepare_cached("SELECT policy, count(*) FROM machines GROUP BY policy")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect()
}

/// `(policy, state, count)`, for the dashboard.
pub fn count_by_policy_state(conn: &Connection) -> rusqlite::Result<Vec<(String, String, i64)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT policy, state, count(*) FROM machines GROUP BY policy, state ORDER BY policy, state",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    rows.collect()
}

/// Every label in use, sorted (the machine list's label filter).
pub fn all_labels(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare_cached("SELECT DISTINCT label FROM machine_labels ORDER BY label")?;
    let rows = stmt.query_map([], |r| r.get(0))?;
    rows.collect()
}

/// One flash attempt (`flash_history`).
#[derive(Debug, Clone, Serialize)]
pub struct FlashRecord {
    pub id: i64,
    pub image: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// `running`, `done`, `failed` or `abandoned` (PXE-booted again without a report).
    pub status: String,
    pub reason: Option<String>,
}

/// Newest first.
pub fn flashes(conn: &Connection, mac: MacAddr, limit: u32) -> rusqlite::Result<Vec<FlashRecord>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, image, started_at, finished_at, status, reason FROM flash_history
         WHERE mac = ? ORDER BY id DESC LIMIT ?",
    )?;
    let rows = stmt.query_map(params![mac.to_string(), limit], |r| {
        Ok(FlashRecord {
            id: r.get(0)?,
            image: r.get(1)?,
            started_at: r.get(2)?,
            finished_at: r.get(3)?,
            status: r.get(4)?,
            reason: r.get(5)?,
        })
    })?;
    rows.collect()
}

pub fn lshw(conn: &Connection, mac: MacAddr) -> rusqlite::Result<Option<String>> {
    conn.query_row("SELECT lshw FROM machines WHERE mac = ?", [mac.to_string()], |r| {
        r.get::<_, Option<String>>(0)
    })
    .optional()
    .map(Option::flatten)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn catalog() -> Catalog {
        Catalog::parse("version = 1\n[[images]]\nname = \"deb\"\nsrc = \"deb.img\"\n").unwrap()
    }

    fn check(body: Value) -> Result<MachineInput, FieldError> {
        let dir = tempfile::tempdir().unwrap();
        let store = WorkflowStore::new(dir.path());
        store.put("hostname", "doc: x\nsteps:\n- name: a\n  run: echo a\n", None).unwrap();
        MachineInput::from_json(&body, &catalog(), &store)
    }

    #[test]
    fn validation_names_the_field() {
        let cases = [
            (json!({}), "policy"),
            (json!({"policy": "bty-flash"}), "policy"),
            (json!({"policy": "flash"}), "image"),
            (json!({"policy": "flash", "image": "deb"}), "target_disk_serial"),
            (json!({"policy": "flash-once", "image": "nope", "target_disk_serial": "S"}), "image"),
            (json!({"policy": "tui", "sanboot_drive": "80"}), "sanboot_drive"),
            (json!({"policy": "tui", "labels": ["-x"]}), "labels"),
            (json!({"policy": "tui", "labels": "x"}), "labels"),
            (json!({"policy": "tui", "labels": vec!["a"; MAX_LABELS + 1]}), "labels"),
            (json!({"policy": "tui", "labels": ["x".repeat(MAX_LABEL_LEN + 1)]}), "labels"),
            (json!({"policy": "tui", "provisioning_mode": "cloud-init"}), "provisioning_mode"),
            (json!({"policy": "tui", "hostname": "x"}), "hostname"),
            (json!({"policy": "tui", "image": 3}), "image"),
            (
                json!({"policy": "flash", "image": "deb", "target_disk_serial": "S", "provisioning_mode": "cijoe-offline"}),
                "workflow",
            ),
            (json!({"policy": "tui", "provisioning_mode": "cijoe-online", "workflow": "nope"}), "workflow"),
            (json!({"policy": "tui", "workflow": "../x"}), "workflow"),
            (json!({"policy": "tui", "ssh_port": 0}), "ssh_port"),
            (json!({"policy": "tui", "ssh_port": "ssh"}), "ssh_port"),
            (json!({"policy": "tui", "ssh_host": "a b"}), "ssh_host"),
            (json!({"policy": "tui", "ssh_user": "Root"}), "ssh_user"),
        ];
        for (body, field) in cases {
            let err = check(body.clone()).unwrap_err();
            assert_eq!(err.field, field, "{body}: {err:?}");
            assert!(!err.reason.is_empty());
        }
    }

    #[test]
    fn valid_input_is_normalised() {
        let i = check(json!({"policy": "flash", "image": "deb", "target_disk_serial": " S1 ",
            "labels": ["rack=2", "b", "a", "b"], "sanboot_drive": "0x81"}))
        .unwrap();
        assert_eq!(i.labels, ["a", "b", "rack=2"]);
        assert_eq!(i.target_disk_serial.as_deref(), Some("S1"));
        assert_eq!(i.provisioning_mode, "none");
        let i = check(json!({"policy": "tui", "provisioning_mode": "cijoe-online", "workflow": "hostname",
            "ssh_host": "10.0.0.5", "ssh_port": "2222", "ssh_user": "bty"}))
        .unwrap();
        assert_eq!(
            (i.workflow.as_deref(), i.ssh_port, i.ssh_user.as_deref()),
            (Some("hostname"), Some(2222), Some("bty"))
        );
    }
}
