//! The audit log: every mutation and every PXE decision, in the `events` table.
//!
//! Failures start unacknowledged: they are the "tripwires" an operator must
//! look at and acknowledge (`GET /events?unacked=1`, `POST /events/{id}/ack`).

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
        }
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
}

/// Failures and resets need an operator's eyes; everything else is history.
pub fn is_tripwire(kind: &str) -> bool {
    kind.ends_with("failed") || kind.ends_with(".reset") || kind == "pxe.client.orphan"
}

/// Record as part of a larger write (PXE decisions record together with the
/// state change they describe, so the log cannot disagree with the machine).
pub fn insert(conn: &Connection, e: &NewEvent) -> rusqlite::Result<i64> {
    let (subject_kind, subject_id) = match &e.subject {
        Some((k, id)) => (Some(*k), Some(id.as_str())),
        None => (None, None),
    };
    conn.prepare_cached(
        "INSERT INTO events (ts, kind, subject_kind, subject_id, actor, source_ip, summary, details, acknowledged)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        clock::now_rfc3339(),
        e.kind,
        subject_kind,
        subject_id,
        e.actor.label(),
        e.source_ip,
        e.summary,
        e.details.to_string(),
        !is_tripwire(e.kind),
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

pub fn query(conn: &Connection, q: &EventQuery) -> rusqlite::Result<Vec<Event>> {
    let mut sql = String::from(
        "SELECT id, ts, kind, subject_kind, subject_id, actor, source_ip, summary, details, acknowledged
         FROM events WHERE 1 = 1",
    );
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
        })
    })?;
    rows.collect()
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
}
