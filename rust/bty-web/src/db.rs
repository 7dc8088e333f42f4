//! `state.db`: connections, forward migrations and the rotation of databases
//! this binary does not understand.
//!
//! One writer connection serialises every write (SQLite allows one writer at
//! a time anyway; queueing in-process is cheaper than `SQLITE_BUSY` retries)
//! and a couple of reader connections serve queries concurrently under WAL.
//! Blocking SQLite calls run on tokio's blocking pool, never on the async
//! workers.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::Context;
use rusqlite::Connection;

use crate::clock;

/// Ordered schema scripts; `PRAGMA user_version` = how many have been applied.
/// Append only: an applied script is never edited.
pub const MIGRATIONS: &[&str] = &[include_str!("../migrations/0001_initial.sql")];

pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

const READERS: usize = 2;

/// A database that was set aside because this binary could not use it.
#[derive(Debug, Clone)]
pub struct SchemaReset {
    /// `user_version` found, or `None` for a database without one (not made by bty-web).
    pub found_version: Option<i64>,
    pub archived_to: PathBuf,
}

#[derive(Clone)]
pub struct Db {
    inner: Arc<Inner>,
}

struct Inner {
    writer: Mutex<Connection>,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
    path: PathBuf,
}

fn lock(m: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    // A panic while holding a connection leaves SQLite itself consistent
    // (the transaction is rolled back when the guard's statement drops).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // NORMAL under WAL: a commit survives a process crash; only an OS crash
    // can lose the last transactions, never corrupt the file.
    conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;")?;
    Ok(())
}

fn user_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
}

fn has_tables(conn: &Connection) -> rusqlite::Result<bool> {
    conn.query_row("SELECT count(*) FROM sqlite_master WHERE type = 'table'", [], |r| r.get::<_, i64>(0))
        .map(|n| n > 0)
}

/// Apply every migration past the stamped version, each in its own transaction.
pub fn migrate(conn: &mut Connection) -> anyhow::Result<()> {
    let current = user_version(conn)?;
    for (i, script) in MIGRATIONS.iter().enumerate().skip(current.max(0) as usize) {
        let version = i as i64 + 1;
        let tx = conn.transaction()?;
        tx.execute_batch(script).with_context(|| format!("applying schema migration {version}"))?;
        tx.pragma_update(None, "user_version", version)?;
        tx.commit()?;
        tracing::info!(version, "applied schema migration");
    }
    Ok(())
}

fn archive_name(path: &Path, version: Option<i64>) -> PathBuf {
    let base =
        path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "state.db".into());
    let v = version.map(|v| v.to_string()).unwrap_or_else(|| "unversioned".into());
    let stamp = clock::compact(clock::now());
    let mut candidate = path.with_file_name(format!("{base}.{v}.{stamp}.bak"));
    let mut n = 1;
    while candidate.exists() {
        candidate = path.with_file_name(format!("{base}.{v}.{stamp}.{n}.bak"));
        n += 1;
    }
    candidate
}

/// Move an unusable database aside: fold its WAL into the main file first so
/// the archive is complete, then drop the sidecars so the fresh database does
/// not pick them up.
fn rotate(path: &Path, conn: Connection, version: Option<i64>) -> anyhow::Result<SchemaReset> {
    let _ = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)");
    drop(conn);
    let archived_to = archive_name(path, version);
    std::fs::rename(path, &archived_to)
        .with_context(|| format!("cannot move {} aside to {}", path.display(), archived_to.display()))?;
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut side = path.as_os_str().to_owned();
        side.push(suffix);
        match std::fs::remove_file(PathBuf::from(side)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot remove {}{suffix}", path.display())),
        }
    }
    Ok(SchemaReset { found_version: version, archived_to })
}

fn open_conn(path: &Path) -> anyhow::Result<Connection> {
    let conn = Connection::open(path).with_context(|| format!("cannot open database {}", path.display()))?;
    configure(&conn).with_context(|| format!("cannot configure database {}", path.display()))?;
    Ok(conn)
}

impl Db {
    /// Open (creating if needed) and migrate `path`. A database stamped with a
    /// newer schema than this binary knows, or one bty-web did not create, is
    /// archived next to it and replaced by a fresh one; the caller records the
    /// returned [`SchemaReset`] as an audit event.
    pub fn open(path: &Path) -> anyhow::Result<(Db, Option<SchemaReset>)> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| {
                format!("cannot create state directory {} (set BTY_PATHS_STATE_DIR)", dir.display())
            })?;
        }
        let mut conn = open_conn(path)?;
        let version = user_version(&conn)?;
        let mut reset = None;
        if version > SCHEMA_VERSION {
            tracing::warn!(
                found = version,
                known = SCHEMA_VERSION,
                "database is from a newer bty-web; archiving it"
            );
            reset = Some(rotate(path, conn, Some(version))?);
            conn = open_conn(path)?;
        } else if version == 0 && has_tables(&conn)? {
            tracing::warn!("database was not created by this bty-web (no schema version); archiving it");
            reset = Some(rotate(path, conn, None)?);
            conn = open_conn(path)?;
        }
        migrate(&mut conn)?;
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            readers.push(Mutex::new(open_conn(path)?));
        }
        let db = Db {
            inner: Arc::new(Inner {
                writer: Mutex::new(conn),
                readers,
                next_reader: AtomicUsize::new(0),
                path: path.to_path_buf(),
            }),
        };
        Ok((db, reset))
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Run `f` on the writer connection on the blocking pool.
    pub async fn write<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut Connection) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: Send + 'static,
    {
        let inner = self.inner.clone();
        join(tokio::task::spawn_blocking(move || f(&mut lock(&inner.writer))).await)
    }

    /// Run `f` on one of the reader connections on the blocking pool.
    pub async fn read<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&Connection) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: Send + 'static,
    {
        let inner = self.inner.clone();
        join(
            tokio::task::spawn_blocking(move || {
                let i = inner.next_reader.fetch_add(1, Ordering::Relaxed) % inner.readers.len();
                f(&lock(&inner.readers[i]))
            })
            .await,
        )
    }

    /// Synchronous access for startup work that runs before serving.
    pub fn write_blocking<T>(&self, f: impl FnOnce(&mut Connection) -> T) -> T {
        f(&mut lock(&self.inner.writer))
    }
}

fn join<T>(r: Result<T, tokio::task::JoinError>) -> T {
    match r {
        Ok(v) => v,
        // Re-raise a panic from the database closure in the request task,
        // exactly as if it had happened there.
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_database_is_stamped() {
        let dir = tempfile::tempdir().unwrap();
        let (db, reset) = Db::open(&dir.path().join("state.db")).unwrap();
        assert!(reset.is_none());
        let v = db.write_blocking(|c| user_version(c).unwrap());
        assert_eq!(v, SCHEMA_VERSION);
    }

    #[test]
    fn newer_database_is_archived_with_its_wal_folded_in() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let c = open_conn(&path).unwrap();
            c.execute_batch(
                "CREATE TABLE future (x); INSERT INTO future VALUES (42); PRAGMA user_version = 99;",
            )
            .unwrap();
        }
        let (db, reset) = Db::open(&path).unwrap();
        let reset = reset.unwrap();
        assert_eq!(reset.found_version, Some(99));
        let name = reset.archived_to.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with("state.db.99.") && name.ends_with("Z.bak"), "{name}");
        let old = Connection::open(&reset.archived_to).unwrap();
        assert_eq!(old.query_row("SELECT x FROM future", [], |r| r.get::<_, i64>(0)).unwrap(), 42);
        assert_eq!(db.write_blocking(|c| user_version(c).unwrap()), SCHEMA_VERSION);
    }

    #[test]
    fn foreign_database_is_archived() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        Connection::open(&path).unwrap().execute_batch("CREATE TABLE machines (mac TEXT);").unwrap();
        let (_db, reset) = Db::open(&path).unwrap();
        assert_eq!(reset.unwrap().found_version, None);
    }
}
