//! The audit log: every mutation and every PXE decision, in the `events` table.
//!
//! Failures start unacknowledged: they are the "tripwires" an operator must
//! look at and acknowledge (`GET /events?unacked=1`, `POST /events/{id}/ack`,
//! `POST /events/ack` for every match of a filter).
//!
//! What a request can make the log store is bounded: every text is cut to a
//! fixed length, events a client can repeat at will (refused reports, orphan
//! reports, failed logins) fold into one row per source and window with a
//! count, and the history unauthenticated clients cause ages out
//! ([`prune`]).

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use crate::clock;
use crate::db::Db;

/// Who caused an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    System,
    PxeClient,
    Operator(String),
    Token(String),
}

impl Actor {
    pub fn label(&self) -> String {
        match self {
            Actor::System => "system".into(),
            Actor::PxeClient => "pxe-client".into(),
            Actor::Operator(u) => format!("operator:{u}"),
            Actor::Token(n) => format!("token:{n}"),
        }
    }
}

/// An event about to be recorded.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub kind: &'static str,
    pub subject: Option<(&'static str, String)>,
    pub actor: Actor,
    pub source_ip: Option<String>,
    pub summary: String,
    pub details: serde_json::Value,
    /// Details the server serialised itself from values it bounds (see
    /// [`NewEvent::server_details`]); stored instead of `details`.
    pub details_text: Option<String>,
    /// Events with the same key within [`AGGREGATE_WINDOW_S`] fold into one.
    pub agg_key: Option<String>,
}

/// Longest summary, subject, actor or detail string stored (characters).
pub const MAX_TEXT_CHARS: usize = 500;
/// Longest source address stored.
const MAX_IP_CHARS: usize = 64;
/// Most elements of one detail array stored.
const MAX_DETAIL_ITEMS: usize = 32;
/// Largest details document stored (bytes of JSON).
const MAX_DETAILS_BYTES: usize = 8 * 1024;
/// Repeats of an aggregated event within this many seconds of its last
/// occurrence add to its count instead of adding a row.
pub const AGGREGATE_WINDOW_S: i64 = 600;

/// Cut `s` to `max` characters, marking the cut.
pub fn bounded(s: &str, max: usize) -> String {
    // No more bytes than the limit means no more characters either: the
    // common case, on the writer's path, skips the walk.
    if s.len() <= max {
        return s.to_string();
    }
    match s.char_indices().nth(max) {
        None => s.to_string(),
        Some((at, _)) => format!("{}… ({} bytes in all)", &s[..at], s.len()),
    }
}

fn bound_json(v: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::String(s) => Value::String(bounded(s, MAX_TEXT_CHARS)),
        Value::Array(a) => {
            let mut out: Vec<Value> = a.iter().take(MAX_DETAIL_ITEMS).map(bound_json).collect();
            if a.len() > MAX_DETAIL_ITEMS {
                out.push(Value::String(format!("… {} more", a.len() - MAX_DETAIL_ITEMS)));
            }
            Value::Array(out)
        }
        Value::Object(o) => Value::Object(
            o.iter().take(MAX_DETAIL_ITEMS).map(|(k, v)| (bounded(k, 64), bound_json(v))).collect(),
        ),
        other => other.clone(),
    }
}

/// Whether [`bound_json`] would leave `v` as it is (judged by bytes, which
/// are never fewer than characters).
fn within_bounds(v: &serde_json::Value) -> bool {
    use serde_json::Value;
    match v {
        Value::String(s) => s.len() <= MAX_TEXT_CHARS,
        Value::Array(a) => a.len() <= MAX_DETAIL_ITEMS && a.iter().all(within_bounds),
        Value::Object(o) => {
            o.len() <= MAX_DETAIL_ITEMS && o.iter().all(|(k, v)| k.len() <= 64 && within_bounds(v))
        }
        _ => true,
    }
}

fn bound_details(v: &serde_json::Value) -> String {
    // Details within every bound (PXE decisions, on the writer's path) are
    // stored as they are, without the copy that bounding makes.
    let text = if within_bounds(v) { v.to_string() } else { bound_json(v).to_string() };
    if text.len() <= MAX_DETAILS_BYTES {
        return text;
    }
    serde_json::json!({"truncated": true, "bytes": text.len()}).to_string()
}

impl NewEvent {
    pub fn new(kind: &'static str, actor: Actor, summary: impl Into<String>) -> Self {
        NewEvent {
            kind,
            subject: None,
            actor,
            source_ip: None,
            summary: summary.into(),
            details: serde_json::Value::Object(Default::default()),
            details_text: None,
            agg_key: None,
        }
    }
    /// Fold repeats (same kind and `key`) into one event with a count.
    pub fn aggregate(mut self, key: impl std::fmt::Display) -> Self {
        self.agg_key = Some(bounded(&format!("{}|{key}", self.kind), 200));
        self
    }
    pub fn subject(mut self, kind: &'static str, id: impl Into<String>) -> Self {
        self.subject = Some((kind, id.into()));
        self
    }
    pub fn machine(self, mac: impl std::fmt::Display) -> Self {
        self.subject("machine", mac.to_string())
    }
    pub fn ip(mut self, ip: Option<String>) -> Self {
        self.source_ip = ip;
        self
    }
    pub fn details(mut self, details: serde_json::Value) -> Self {
        self.details = details;
        self
    }
    /// Details made by the server from its own bounded values (enums, catalog
    /// names, its own reasons), serialised straight from `d`: no document to
    /// build, walk and copy on the writer's path for every PXE decision. A
    /// document over the size bound is still replaced by a note.
    pub fn server_details(mut self, d: &impl Serialize) -> Self {
        self.details_text = serde_json::to_string(d).ok();
        self
    }
}

/// An event filter's subject as stored: a MAC in any spelling becomes the
/// canonical one (events name machines that way); anything else stays as
/// given. Empty means no filter.
pub fn subject_filter(subject: &str) -> Option<String> {
    let subject = subject.trim();
    if subject.is_empty() {
        return None;
    }
    Some(
        subject
            .parse::<bty_core::mac::MacAddr>()
            .map(|m| m.to_string())
            .unwrap_or_else(|_| subject.to_string()),
    )
}

/// Failures and resets need an operator's eyes; everything else is history.
pub fn is_tripwire(kind: &str) -> bool {
    kind.ends_with("failed")
        || kind.ends_with(".reset")
        || kind == "pxe.client.orphan"
        || kind == "pxe.report.refused"
        || kind == "provisioning.drifted"
        || kind == "provisioning.host_key_changed"
}

/// Record as part of a larger write (PXE decisions record together with the
/// state change they describe, so the log cannot disagree with the machine).
pub fn insert(conn: &Connection, e: &NewEvent) -> rusqlite::Result<i64> {
    let now = clock::now_rfc3339();
    let summary = bounded(&e.summary, MAX_TEXT_CHARS);
    let details = match &e.details_text {
        Some(text) if text.len() <= MAX_DETAILS_BYTES => text.clone(),
        Some(text) => serde_json::json!({"truncated": true, "bytes": text.len()}).to_string(),
        None => bound_details(&e.details),
    };
    let acknowledged = !is_tripwire(e.kind);
    if let Some(key) = &e.agg_key {
        let since = clock::rfc3339(clock::now() - time::Duration::seconds(AGGREGATE_WINDOW_S));
        // The latest row of this key, if it is recent and (for a tripwire)
        // still unacknowledged: an acknowledged one stays as the operator saw it.
        let open: Option<i64> = conn
            .prepare_cached(
                "SELECT id FROM events WHERE agg_key = ?1 AND acknowledged = ?2
                     AND coalesce(last_ts, ts) >= ?3 ORDER BY id DESC LIMIT 1",
            )?
            .query_row(params![key, acknowledged, since], |r| r.get(0))
            .optional()?;
        if let Some(id) = open {
            conn.prepare_cached(
                "UPDATE events SET count = count + 1, last_ts = ?2, summary = ?3, details = ?4, source_ip = ?5
                 WHERE id = ?1",
            )?
            .execute(params![id, now, summary, details, e.source_ip.as_deref().map(|ip| bounded(ip, MAX_IP_CHARS))])?;
            return Ok(id);
        }
    }
    let (subject_kind, subject_id) = match &e.subject {
        Some((k, id)) => (Some(*k), Some(bounded(id, 128))),
        None => (None, None),
    };
    conn.prepare_cached(
        "INSERT INTO events (ts, kind, subject_kind, subject_id, actor, source_ip, summary, details, acknowledged, agg_key)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        now,
        e.kind,
        subject_kind,
        subject_id,
        bounded(&e.actor.label(), 160),
        e.source_ip.as_deref().map(|ip| bounded(ip, MAX_IP_CHARS)),
        summary,
        details,
        acknowledged,
        e.agg_key,
    ])?;
    Ok(conn.last_insert_rowid())
}

/// Record on its own.
pub async fn record(db: &Db, e: NewEvent) -> rusqlite::Result<i64> {
    db.write(move |c| insert(c, &e)).await
}

#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub id: i64,
    pub ts: String,
    pub kind: String,
    pub subject_kind: Option<String>,
    pub subject_id: Option<String>,
    pub actor: String,
    pub source_ip: Option<String>,
    pub summary: String,
    pub details: serde_json::Value,
    pub acknowledged: bool,
    /// How many times it happened (repeats within the window fold in).
    pub count: i64,
    /// When it last happened, if more than once.
    pub last_ts: Option<String>,
}

/// `GET /events` filters.
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    /// Exact kind, or a prefix ending in `*` (`machine.*`).
    pub kind: Option<String>,
    pub subject: Option<String>,
    pub unacked_only: bool,
    pub before_id: Option<i64>,
    pub limit: u32,
}

/// The least string greater than every string starting with `prefix`
/// (`"backup."` gives `"backup/"`); `None` for an empty prefix, which
/// matches everything.
fn prefix_end(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = char::from_u32(last as u32 + 1).or((last == '\u{D7FF}').then_some('\u{E000}'));
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// The conditions of `q` (after `WHERE 1 = 1`) and their arguments.
fn conditions(q: &EventQuery) -> (String, Vec<rusqlite::types::Value>) {
    let mut sql = String::new();
    let mut args: Vec<rusqlite::types::Value> = Vec::new();
    if let Some(k) = &q.kind {
        match k.strip_suffix('*') {
            // A range rather than substr(): the (kind, id) index answers it.
            Some(prefix) => {
                if let Some(end) = prefix_end(prefix) {
                    sql.push_str(" AND kind >= ? AND kind < ?");
                    args.push(prefix.to_string().into());
                    args.push(end.into());
                }
            }
            None => {
                sql.push_str(" AND kind = ?");
                args.push(k.clone().into());
            }
        }
    }
    if let Some(s) = &q.subject {
        sql.push_str(" AND subject_id = ?");
        args.push(s.clone().into());
    }
    if q.unacked_only {
        sql.push_str(" AND acknowledged = 0");
    }
    (sql, args)
}

pub fn query(conn: &Connection, q: &EventQuery) -> rusqlite::Result<Vec<Event>> {
    let (conds, mut args) = conditions(q);
    let mut sql = format!(
        "SELECT id, ts, kind, subject_kind, subject_id, actor, source_ip, summary, details, acknowledged, count, last_ts
         FROM events WHERE 1 = 1{conds}"
    );
    if let Some(b) = q.before_id {
        sql.push_str(" AND id < ?");
        args.push(b.into());
    }
    sql.push_str(" ORDER BY id DESC LIMIT ?");
    args.push(i64::from(q.limit).into());
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(args), |r| {
        let details: String = r.get(8)?;
        Ok(Event {
            id: r.get(0)?,
            ts: r.get(1)?,
            kind: r.get(2)?,
            subject_kind: r.get(3)?,
            subject_id: r.get(4)?,
            actor: r.get(5)?,
            source_ip: r.get(6)?,
            summary: r.get(7)?,
            details: serde_json::from_str(&details).unwrap_or(serde_json::Value::String(details)),
            acknowledged: r.get(9)?,
            count: r.get(10)?,
            last_ts: r.get(11)?,
        })
    })?;
    rows.collect()
}

/// How many unacknowledged events match `q`'s kind and subject.
pub fn count_unacked_matching(conn: &Connection, q: &EventQuery) -> rusqlite::Result<i64> {
    let q = EventQuery { unacked_only: true, ..q.clone() };
    let (conds, args) = conditions(&q);
    conn.query_row(
        &format!("SELECT count(*) FROM events WHERE 1 = 1{conds}"),
        rusqlite::params_from_iter(args),
        |r| r.get(0),
    )
}

/// Acknowledge every unacknowledged event matching `q`'s kind, subject
/// (`before_id` and `limit` are ignored); how many there were.
pub fn acknowledge_matching(conn: &Connection, q: &EventQuery) -> rusqlite::Result<usize> {
    let (conds, args) = conditions(q);
    conn.execute(
        &format!("UPDATE events SET acknowledged = 1 WHERE acknowledged = 0{conds}"),
        rusqlite::params_from_iter(args),
    )
}

/// Acknowledge one event; `false` if it does not exist.
pub fn acknowledge(conn: &Connection, id: i64) -> rusqlite::Result<bool> {
    let found: Option<i64> =
        conn.query_row("SELECT id FROM events WHERE id = ?", [id], |r| r.get(0)).optional()?;
    if found.is_none() {
        return Ok(false);
    }
    conn.execute("UPDATE events SET acknowledged = 1 WHERE id = ?", [id])?;
    Ok(true)
}

/// Every event kind recorded so far (the events page's filter suggestions).
pub fn kinds(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare_cached("SELECT DISTINCT kind FROM events ORDER BY kind")?;
    let rows = stmt.query_map([], |r| r.get(0))?;
    rows.collect()
}

/// Acknowledge several events at once; how many existed.
pub fn acknowledge_many(conn: &Connection, ids: &[i64]) -> rusqlite::Result<usize> {
    let mut n = 0;
    for id in ids {
        n += usize::from(acknowledge(conn, *id)?);
    }
    Ok(n)
}

pub fn unacknowledged_count(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("SELECT count(*) FROM events WHERE acknowledged = 0", [], |r| r.get(0))
}

/// Kinds that record what PXE clients did (anyone on the LAN can cause
/// them): they age out under [`prune`]. Operator and system events stay.
pub const PXE_HISTORY_KINDS: &[&str] = &[
    "machine.discovered",
    "machine.flash_failed",
    "machine.flashed",
    "machine.inventory",
    "pxe.client.orphan",
    "pxe.offered",
    "pxe.plan",
    "pxe.report.refused",
];

/// Rows deleted per write, so a prune never holds up PXE answers for long.
const PRUNE_BATCH: usize = 2000;

/// What [`prune`] removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub events: usize,
    pub flash_history: usize,
}

/// Every event with an id below the answer is older than `ts` (ids grow
/// with time), found by bisection over the primary key, so no index on `ts`
/// is needed. `None` when there are no events.
fn first_id_since(conn: &Connection, ts: &str) -> rusqlite::Result<Option<i64>> {
    let (min, max): (Option<i64>, Option<i64>) =
        conn.query_row("SELECT min(id), max(id) FROM events", [], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let (Some(mut lo), Some(max)) = (min, max) else { return Ok(None) };
    let mut hi = max + 1;
    let mut next = conn.prepare_cached("SELECT id, ts FROM events WHERE id >= ? ORDER BY id LIMIT 1")?;
    // Rows below `lo` are older than `ts`; rows from `hi` on are not.
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let row: Option<(i64, String)> = next.query_row([mid], |r| Ok((r.get(0)?, r.get(1)?))).optional()?;
        match row {
            Some((id, t)) if t.as_str() < ts => lo = id + 1,
            _ => hi = mid,
        }
    }
    Ok(Some(lo))
}

/// Age out the history PXE clients cause: events of [`PXE_HISTORY_KINDS`]
/// older than `max_age_days`, and beyond the newest `per_machine` of each
/// machine (its flash history likewise). Unacknowledged tripwires are never
/// deleted. Runs in small writes between PXE answers; freed pages are reused
/// by later inserts, and returned to the file system where the database was
/// created with incremental auto-vacuum.
async fn auto_vacuum_incremental(db: &Db) -> rusqlite::Result<bool> {
    db.read(|c| c.query_row("PRAGMA auto_vacuum", [], |r| r.get::<_, i64>(0))).await.map(|mode| mode == 2)
}

/// Machines checked for excess history per read in [`prune`].
const PRUNE_SCAN_PAGE: usize = 256;

pub async fn prune(db: &Db, max_age_days: u64, per_machine: u64) -> rusqlite::Result<Pruned> {
    let mut out = Pruned::default();
    let cutoff = clock::rfc3339(clock::now() - time::Duration::days(max_age_days as i64));
    let cut_id = db.read(move |c| first_id_since(c, &cutoff)).await?;
    if let Some(cut_id) = cut_id {
        for kind in PXE_HISTORY_KINDS {
            loop {
                let n = db
                    .write(move |c| {
                        c.prepare_cached(
                            "DELETE FROM events WHERE id IN (SELECT id FROM events
                                 WHERE kind = ?1 AND id < ?2 AND acknowledged = 1 ORDER BY id LIMIT ?3)",
                        )?
                        .execute(params![kind, cut_id, PRUNE_BATCH as i64])
                    })
                    .await?;
                out.events += n;
                if n < PRUNE_BATCH {
                    break;
                }
            }
        }
    }
    // Per machine: the id of its newest event (and flash) beyond the cap,
    // found a few hundred machines per read so a large fleet neither holds
    // one snapshot (and the WAL with it) for long nor hogs a core.
    let offset = per_machine as i64;
    let mut excess: Vec<(String, Option<i64>, Option<i64>)> = Vec::new();
    let mut after = String::new();
    loop {
        let from = after.clone();
        let (page, last) = db
            .read(move |c| {
                let mut macs =
                    c.prepare_cached("SELECT mac FROM machines WHERE mac > ?1 ORDER BY mac LIMIT ?2")?;
                let macs: Vec<String> = macs
                    .query_map(params![from, PRUNE_SCAN_PAGE as i64], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()?;
                let mut ev = c.prepare_cached(
                    "SELECT id FROM events WHERE subject_id = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2",
                )?;
                let mut fl = c.prepare_cached(
                    "SELECT id FROM flash_history WHERE mac = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2",
                )?;
                let mut out = Vec::new();
                for mac in &macs {
                    let e: Option<i64> = ev.query_row(params![mac, offset], |r| r.get(0)).optional()?;
                    let f: Option<i64> = fl.query_row(params![mac, offset], |r| r.get(0)).optional()?;
                    if e.is_some() || f.is_some() {
                        out.push((mac.clone(), e, f));
                    }
                }
                Ok::<_, rusqlite::Error>((out, macs.last().cloned()))
            })
            .await?;
        excess.extend(page);
        match last {
            Some(mac) => after = mac,
            None => break,
        }
    }
    // One machine's excess per write, at most PRUNE_BATCH rows each, so a
    // first prune of a large log never holds up PXE answers for long.
    let kinds = PXE_HISTORY_KINDS.iter().map(|k| format!("'{k}'")).collect::<Vec<_>>().join(", ");
    let del_events = format!(
        "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE subject_id = ?1 AND id <= ?2
             AND acknowledged = 1 AND kind IN ({kinds}) LIMIT {PRUNE_BATCH})"
    );
    for (mac, ev, fl) in excess {
        if let Some(id) = ev {
            loop {
                let (sql, mac) = (del_events.clone(), mac.clone());
                let n = db.write(move |c| c.prepare_cached(&sql)?.execute(params![mac, id])).await?;
                out.events += n;
                if n < PRUNE_BATCH {
                    break;
                }
            }
        }
        if let Some(id) = fl {
            let mac = mac.clone();
            out.flash_history += db
                .write(move |c| {
                    c.prepare_cached("DELETE FROM flash_history WHERE mac = ?1 AND id <= ?2")?
                        .execute(params![mac, id])
                })
                .await?;
        }
    }
    if out.events + out.flash_history > 0 && auto_vacuum_incremental(db).await? {
        // Only does something in a database created with incremental
        // auto-vacuum; a few thousand pages per write keep it short.
        loop {
            let free: i64 = db.read(|c| c.query_row("PRAGMA freelist_count", [], |r| r.get(0))).await?;
            if free == 0 {
                break;
            }
            // Each step of the statement frees one page: step it to the end.
            db.write(|c| {
                let mut stmt = c.prepare_cached("PRAGMA incremental_vacuum(4000)")?;
                let mut rows = stmt.query([])?;
                while rows.next()?.is_some() {}
                Ok::<_, rusqlite::Error>(())
            })
            .await?;
            if free <= 4000 {
                break;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_prefixes_become_ranges() {
        assert_eq!(prefix_end("backup."), Some("backup/".into()));
        assert_eq!(prefix_end("a\u{D7FF}"), Some("a\u{E000}".into()));
        assert_eq!(prefix_end("a\u{10FFFF}"), Some("b".into()));
        assert_eq!(prefix_end(""), None);
    }

    #[test]
    fn a_kind_prefix_matches_exactly_the_kinds_that_start_with_it() {
        let conn = Connection::open_in_memory().unwrap();
        for m in crate::db::MIGRATIONS {
            conn.execute_batch(m).unwrap();
        }
        for kind in ["backup.created", "backup.failed", "backups", "backup", "machine.flashed", "backup/x"] {
            insert(&conn, &NewEvent::new(kind, Actor::System, kind)).unwrap();
        }
        let kinds = |k: &str| -> Vec<String> {
            let q = EventQuery { kind: Some(k.into()), limit: 100, ..Default::default() };
            let mut v: Vec<String> = query(&conn, &q).unwrap().into_iter().map(|e| e.kind).collect();
            v.sort();
            v
        };
        assert_eq!(kinds("backup.*"), ["backup.created", "backup.failed"]);
        assert_eq!(kinds("backup*"), ["backup", "backup.created", "backup.failed", "backup/x", "backups"]);
        assert_eq!(kinds("*").len(), 6);
        assert_eq!(kinds("machine.flashed"), ["machine.flashed"]);
    }

    fn migrated() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        for m in crate::db::MIGRATIONS {
            conn.execute_batch(m).unwrap();
        }
        conn
    }

    #[test]
    fn details_within_bounds_are_stored_as_bounding_would_leave_them() {
        let edge = "x".repeat(MAX_TEXT_CHARS);
        let over = "é".repeat(MAX_TEXT_CHARS / 2 + 1); // more bytes than the limit, fewer characters
        for v in [
            serde_json::json!({"policy": "tui", "image": null, "n": 3, "ok": true}),
            serde_json::json!({"edge": edge, "list": vec![1; MAX_DETAIL_ITEMS]}),
            serde_json::json!({"over": over}),
            serde_json::json!({"list": vec![1; MAX_DETAIL_ITEMS + 1]}),
            serde_json::json!({"k".repeat(65): 1}),
        ] {
            assert_eq!(bound_details(&v), bound_json(&v).to_string(), "{v}");
        }
    }

    #[test]
    fn server_details_are_stored_as_serialised() {
        #[derive(Serialize)]
        struct D<'a> {
            image: Option<&'a str>,
            offer: &'a str,
        }
        let conn = migrated();
        let e = NewEvent::new("pxe.offered", Actor::PxeClient, "s")
            .server_details(&D { image: Some("debian"), offer: "flash" });
        insert(&conn, &e).unwrap();
        let stored: String = conn.query_row("SELECT details FROM events", [], |r| r.get(0)).unwrap();
        assert_eq!(stored, r#"{"image":"debian","offer":"flash"}"#);
        // The same document made as a JSON value is stored identically.
        let as_value = serde_json::json!({"offer": "flash", "image": "debian"});
        assert_eq!(bound_details(&as_value), stored);
    }

    #[test]
    fn stored_text_is_bounded() {
        let conn = migrated();
        let huge = "é".repeat(1 << 20);
        let e = NewEvent::new("auth.login.failed", Actor::Operator(huge.clone()), huge.clone())
            .subject("user", huge.clone())
            .ip(Some(huge.clone()))
            .details(
                serde_json::json!({"name": huge, "list": vec![1; 10_000], "nested": {"k": "v".repeat(5000)}}),
            );
        insert(&conn, &e).unwrap();
        let row: (String, String, String, String, String) = conn
            .query_row("SELECT summary, subject_id, actor, source_ip, details FROM events", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .unwrap();
        assert!(row.0.chars().count() < MAX_TEXT_CHARS + 40, "{}", row.0.len());
        assert!(row.0.ends_with(&format!("({} bytes in all)", huge.len())));
        assert!(row.1.chars().count() < 200 && row.2.chars().count() < 220 && row.3.chars().count() < 120);
        assert!(row.4.len() <= MAX_DETAILS_BYTES, "{}", row.4.len());
        let d: serde_json::Value = serde_json::from_str(&row.4).unwrap();
        assert_eq!(d["list"].as_array().unwrap().len(), MAX_DETAIL_ITEMS + 1);
    }

    #[test]
    fn repeats_fold_into_one_event_per_key() {
        let conn = migrated();
        for i in 0..50 {
            let ip = if i % 2 == 0 { "10.0.0.1" } else { "10.0.0.2" };
            let e = NewEvent::new("pxe.report.refused", Actor::PxeClient, format!("refused {i}"))
                .ip(Some(ip.into()))
                .aggregate(ip);
            insert(&conn, &e).unwrap();
        }
        let q = EventQuery { limit: 100, ..Default::default() };
        let events = query(&conn, &q).unwrap();
        assert_eq!(events.len(), 2);
        assert!(events.iter().all(|e| e.count == 25 && e.last_ts.is_some() && !e.acknowledged));
        assert_eq!(events[0].summary, "refused 49", "the summary is the latest");
        // Acknowledged, the next repeat is news again.
        assert_eq!(
            acknowledge_matching(&conn, &EventQuery { kind: Some("pxe.*".into()), ..q.clone() }).unwrap(),
            2
        );
        let e = NewEvent::new("pxe.report.refused", Actor::PxeClient, "again").aggregate("10.0.0.1");
        insert(&conn, &e).unwrap();
        assert_eq!(query(&conn, &q).unwrap().len(), 3);
        assert_eq!(count_unacked_matching(&conn, &q).unwrap(), 1);
    }

    #[test]
    fn the_age_cutoff_is_found_by_bisection() {
        let conn = migrated();
        assert_eq!(first_id_since(&conn, "2026").unwrap(), None);
        for (i, ts) in
            ["2026-01-01", "2026-01-02", "2026-01-03", "2026-01-05", "2026-01-08"].iter().enumerate()
        {
            conn.execute(
                "INSERT INTO events (id, ts, kind, actor, summary) VALUES (?1, ?2, 'pxe.plan', 'x', 'x')",
                params![(i as i64 + 1) * 10, ts],
            )
            .unwrap();
        }
        assert_eq!(first_id_since(&conn, "2025-12-31").unwrap(), Some(10));
        assert_eq!(first_id_since(&conn, "2026-01-03").unwrap(), Some(21));
        assert_eq!(first_id_since(&conn, "2026-01-04").unwrap(), Some(31));
        assert_eq!(first_id_since(&conn, "2026-01-08").unwrap(), Some(41));
        assert_eq!(first_id_since(&conn, "2027").unwrap(), Some(51));
    }

    #[tokio::test]
    async fn prune_ages_out_pxe_history_but_keeps_tripwires_and_operator_events() {
        let dir = tempfile::tempdir().unwrap();
        let (db, _) = crate::db::Db::open(&dir.path().join("state.db")).unwrap();
        db.write(|c| {
            c.execute_batch(
                "INSERT INTO machines (mac, created_at, updated_at) VALUES ('02:00:00:00:00:01', 't', 't')",
            )?;
            let old = "2000-01-01T00:00:00Z";
            let mut ins = c.prepare(
                "INSERT INTO events (ts, kind, subject_id, actor, summary, acknowledged) VALUES (?1, ?2, ?3, 'x', 'x', ?4)",
            )?;
            // Old: aged out unless a tripwire or an operator's.
            ins.execute(params![old, "pxe.offered", "02:00:00:00:00:01", true])?;
            ins.execute(params![old, "pxe.client.orphan", "02:00:00:00:00:09", false])?;
            ins.execute(params![old, "machine.updated", "02:00:00:00:00:01", true])?;
            // Recent: beyond the newest ten of the machine, the PXE ones go.
            for _ in 0..30 {
                ins.execute(params![crate::clock::now_rfc3339(), "pxe.plan", "02:00:00:00:00:01", true])?;
            }
            for _ in 0..15 {
                c.execute(
                    "INSERT INTO flash_history (mac, status) VALUES ('02:00:00:00:00:01', 'done')",
                    [],
                )?;
            }
            Ok::<_, rusqlite::Error>(())
        })
        .await
        .unwrap();
        let p = prune(&db, 30, 10).await.unwrap();
        assert_eq!(p, Pruned { events: 1 + 20, flash_history: 5 });
        let kinds: Vec<(String, i64)> = db
            .read(|c| {
                let mut s = c.prepare("SELECT kind, count(*) FROM events GROUP BY kind ORDER BY kind")?;
                let rows = s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
                rows.collect::<rusqlite::Result<Vec<_>>>()
            })
            .await
            .unwrap();
        assert_eq!(
            kinds,
            [("machine.updated".into(), 1), ("pxe.client.orphan".into(), 1), ("pxe.plan".into(), 10)]
        );
        assert_eq!(prune(&db, 30, 10).await.unwrap(), Pruned::default(), "a second run finds nothing");
    }

    #[tokio::test]
    async fn prune_walks_every_page_of_a_large_fleet() {
        let dir = tempfile::tempdir().unwrap();
        let (db, _) = crate::db::Db::open(&dir.path().join("state.db")).unwrap();
        let machines = PRUNE_SCAN_PAGE * 2 + 10;
        db.write(move |c| {
            let mut m = c.prepare("INSERT INTO machines (mac, created_at, updated_at) VALUES (?1, 't', 't')")?;
            let mut ev = c.prepare(
                "INSERT INTO events (ts, kind, subject_id, actor, summary, acknowledged) VALUES (?1, 'pxe.offered', ?2, 'x', 'x', 1)",
            )?;
            for i in 0..machines {
                let mac = format!("02:00:00:00:{:02x}:{:02x}", i >> 8, i & 255);
                m.execute([&mac])?;
                // The first, a middle and the last machine have 5 too many.
                let n = if i == 0 || i == PRUNE_SCAN_PAGE + 3 || i == machines - 1 { 15 } else { 10 };
                for _ in 0..n {
                    ev.execute(params![crate::clock::now_rfc3339(), mac])?;
                }
            }
            Ok::<_, rusqlite::Error>(())
        })
        .await
        .unwrap();
        assert_eq!(prune(&db, 30, 10).await.unwrap(), Pruned { events: 15, flash_history: 0 });
    }

    #[tokio::test]
    async fn pruned_pages_go_back_to_the_file_system() {
        let dir = tempfile::tempdir().unwrap();
        let (db, _) = crate::db::Db::open(&dir.path().join("state.db")).unwrap();
        db.write(|c| {
            let mut ins = c.prepare(
                "INSERT INTO events (ts, kind, actor, summary, details) VALUES ('2000-01-01T00:00:00Z', 'pxe.plan', 'x', 'x', ?1)",
            )?;
            for _ in 0..20_000 {
                ins.execute([&"d".repeat(400)])?;
            }
            Ok::<_, rusqlite::Error>(())
        })
        .await
        .unwrap();
        assert_eq!(prune(&db, 30, 10).await.unwrap().events, 20_000);
        let free: i64 = db.read(|c| c.query_row("PRAGMA freelist_count", [], |r| r.get(0))).await.unwrap();
        assert_eq!(free, 0, "incremental vacuum left {free} free pages");
    }
}
