//! `state.db`: connections, forward migrations and the rotation of databases
//! this binary does not understand.
//!
//! Writes go to one writer thread that owns the write connection (SQLite
//! allows one writer at a time anyway; queueing in-process is cheaper than
//! `SQLITE_BUSY` retries). It commits in groups: whatever writes are queued
//! when it becomes free run in one transaction, each inside its own
//! savepoint, and every caller is answered only after that transaction has
//! committed. A burst of PXE contacts then costs one commit, not one each,
//! and no acknowledged write is ever lost or merged with a failed one.
//! A couple of reader connections serve queries concurrently under WAL, on
//! tokio's blocking pool.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::Context;
use rusqlite::Connection;

use crate::clock;

/// Ordered schema scripts; `PRAGMA user_version` = how many have been applied.
/// Append only: an applied script is never edited.
pub const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/0001_initial.sql"),
    include_str!("../migrations/0002_list_index.sql"),
    include_str!("../migrations/0003_offers_and_bounds.sql"),
    include_str!("../migrations/0004_dhcp_sightings.sql"),
    include_str!("../migrations/0005_image_cache.sql"),
    include_str!("../migrations/0006_provisioning.sql"),
    include_str!("../migrations/0007_online_runs.sql"),
];

pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// `PRAGMA application_id` of a bty state database ("btyw" in ASCII), so a
/// file can be told apart from any other SQLite database. Stamped from
/// schema 3 on; databases at schemas 1 and 2 carry 0.
pub const APPLICATION_ID: i32 = 0x6274_7977;

const READERS: usize = 2;
/// How often the checkpointer folds the WAL back into the database file.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(250);
/// Longest a checkpoint waits for the writer to pause. Under the heaviest
/// load measured (1,000 machines contacted over and over) the WAL grows by
/// about 130 MiB a second, so this is also how far past the rewind bound it
/// can get.
const CHECKPOINT_DEFER_MAX: std::time::Duration = std::time::Duration::from_secs(1);

/// After this long without a commit, the checkpointer folds the whole WAL
/// back and truncates it to nothing.
const QUIET_FOR_TRUNCATE: std::time::Duration = std::time::Duration::from_secs(2);
/// A WAL of this many frames (pages; 128 MiB at 4 KiB) is rewound even
/// under load: see [`rewind_wal`]. Each rewind stalls writes for a
/// checkpoint of the last few frames and two fsyncs (about 10 ms measured),
/// so the bound trades WAL size against how often that happens. The
/// checkpointer notices the bound on its next pass, so under the heaviest
/// PXE load measured the WAL reached about twice this.
const WAL_RESTART_FRAMES: i64 = if cfg!(test) { 1024 } else { 32 * 1024 };

/// Frames the checkpointer leaves for the writer's rewind to copy.
const REWIND_LEFTOVER_FRAMES: i64 = 256;

const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Longest the writer waits for readers when it rewinds the WAL.
const REWIND_WAIT: std::time::Duration = std::time::Duration::from_millis(20);

/// Most writes folded into one commit; bounds how long one caller can wait.
const MAX_GROUP: usize = 256;

/// What the writer and the checkpointer tell each other: when the writer last
/// committed (the checkpointer stays out of bursts) and whether the WAL
/// should be rewound (the writer does that between commit groups).
struct Activity {
    start: std::time::Instant,
    last_commit_ms: AtomicU64,
    rewind: AtomicBool,
    /// Rewinds done, for tests and the curious.
    rewinds: AtomicU64,
    /// Held by whichever thread is checkpointing, so neither waits in
    /// SQLite's busy handler (which sleeps in steps of up to 100 ms) for
    /// the other's checkpoint lock.
    checkpointing: Mutex<()>,
}

impl Activity {
    fn new() -> Self {
        Activity {
            start: std::time::Instant::now(),
            last_commit_ms: AtomicU64::new(0),
            rewind: AtomicBool::new(false),
            rewinds: AtomicU64::new(0),
            checkpointing: Mutex::new(()),
        }
    }
    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }
    // Stored plus one: 0 means no commit yet.
    fn committed(&self) {
        self.last_commit_ms.store(self.now_ms() + 1, Ordering::Relaxed);
    }
    /// A commit within the last 100 ms.
    fn busy(&self) -> bool {
        self.quiet_for() < std::time::Duration::from_millis(100)
    }
    /// How long since the last commit (forever when there was none).
    fn quiet_for(&self) -> std::time::Duration {
        match self.last_commit_ms.load(Ordering::Relaxed) {
            0 => std::time::Duration::MAX,
            last => std::time::Duration::from_millis((self.now_ms() + 1).saturating_sub(last)),
        }
    }
    fn last_commit(&self) -> u64 {
        self.last_commit_ms.load(Ordering::Relaxed)
    }
}

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
    writer: mpsc::Sender<Box<dyn Job>>,
    /// Dropped with the last handle, which ends the checkpointer thread.
    _checkpointer: mpsc::Sender<()>,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
    path: PathBuf,
    activity: Arc<Activity>,
}

/// One queued write: run inside a savepoint, answered after the commit.
trait Job: Send {
    /// Run against the open transaction; `false` rolls this job back.
    fn run(&mut self, conn: &Connection) -> bool;
    /// Hand the result over once the group's fate is known.
    fn finish(self: Box<Self>, commit: Result<(), rusqlite::Error>);
}

struct WriteJob<T, E, F> {
    f: Option<F>,
    result: Option<Result<T, E>>,
    reply: tokio::sync::oneshot::Sender<Result<T, E>>,
}

impl<T, E, F> Job for WriteJob<T, E, F>
where
    F: FnOnce(&Connection) -> Result<T, E> + Send,
    T: Send,
    E: From<rusqlite::Error> + Send,
{
    fn run(&mut self, conn: &Connection) -> bool {
        let f = self.f.take().expect("a job runs once");
        let r = f(conn);
        let ok = r.is_ok();
        self.result = Some(r);
        ok
    }

    fn finish(self: Box<Self>, commit: Result<(), rusqlite::Error>) {
        let this = *self;
        let r = match (commit, this.result) {
            (Ok(()), Some(r)) => r,
            // A job that failed was rolled back on its own; its error stands.
            (Err(_), Some(Err(e))) => Err(e),
            (Err(e), _) => Err(E::from(e)),
            (Ok(()), None) => return,
        };
        let _ = this.reply.send(r);
    }
}

fn writer_loop(conn: Connection, jobs: mpsc::Receiver<Box<dyn Job>>, activity: Arc<Activity>) {
    while let Ok(first) = jobs.recv() {
        let mut group = vec![first];
        // Waking up for the first job can preempt the request threads on the
        // same core before they have queued the rest of a burst; stepping
        // aside once lets them, so a busy server commits in large groups.
        // With nothing else runnable this returns at once.
        std::thread::yield_now();
        while group.len() < MAX_GROUP {
            match jobs.try_recv() {
                Ok(j) => group.push(j),
                Err(_) => break,
            }
        }
        let commit = run_group(&conn, &mut group);
        activity.committed();
        for job in group {
            job.finish(commit.as_ref().map(|_| ()).map_err(clone_error));
        }
        if activity.rewind.load(Ordering::Relaxed) {
            rewind_wal(&conn, &activity);
        }
    }
}

/// Under sustained writes a PASSIVE checkpoint never reaches the end of the
/// WAL (the writer appends while it copies), so SQLite never starts the WAL
/// over and it grows by gigabytes. Past a bound the writer, between two
/// commit groups, runs a RESTART checkpoint itself: the checkpointer has
/// already copied all but the last few frames and no write is in flight to
/// wait for; the next commit writes the WAL from its start again. Done by
/// the checkpointer instead, RESTART held every new write back in SQLite's
/// busy handler, whose sleeps grow to 100 ms.
fn rewind_wal(conn: &Connection, activity: &Activity) {
    // The checkpointer is copying: it will ask again when it is done.
    let Ok(_checkpointing) = activity.checkpointing.try_lock() else { return };
    activity.rewind.store(false, Ordering::Relaxed);
    // Readers that still need old frames are waited for briefly; if they
    // outlast that, the checkpointer asks again after its next round.
    let _ = conn.busy_timeout(REWIND_WAIT);
    match conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |r| r.get::<_, i64>(0)) {
        Ok(0) => {
            activity.rewinds.fetch_add(1, Ordering::Relaxed);
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "WAL restart checkpoint failed; retrying"),
    }
    let _ = conn.busy_timeout(BUSY_TIMEOUT);
}

/// Fold committed WAL frames into the database file, off the writer's path.
/// PASSIVE never blocks the writer or readers; frames a reader still needs
/// are left for the next round.
fn checkpoint_loop(conn: Connection, stopped: mpsc::Receiver<()>, activity: Arc<Activity>) {
    let mut last = std::time::Instant::now();
    // The commit the last truncation followed; one truncation per quiet spell.
    let mut truncated_after = u64::MAX;
    let mut wal_large = false;
    loop {
        match stopped.recv_timeout(CHECKPOINT_EVERY) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        // In a burst of writes the checkpoint would compete with the writer
        // for the CPU and the disk; it waits for a pause, or a few seconds
        // at most so the WAL stays small. A WAL already past half the
        // rewind bound is not left to grow for those seconds.
        if activity.busy() && last.elapsed() < CHECKPOINT_DEFER_MAX && !wal_large {
            continue;
        }
        last = std::time::Instant::now();
        // PASSIVE cannot rewind a WAL that readers and the writer keep
        // using, so under steady load it only grows. In a quiet spell a
        // TRUNCATE checkpoint folds everything back and empties the file;
        // it waits (busy timeout) for a writer, which is idle by then.
        let quiet = activity.quiet_for() >= QUIET_FOR_TRUNCATE && activity.last_commit() != truncated_after;
        let mode = if quiet { "TRUNCATE" } else { "PASSIVE" };
        let done = {
            let _checkpointing = lock(&activity.checkpointing);
            let run = |mode: &str| {
                conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
                })
            };
            let mut done = run(mode);
            // Before asking the writer to rewind, catch up with what was
            // written during the pass (a pass over 128 MiB takes a few
            // hundred milliseconds; a pass reports the WAL's end as it was
            // when it began), so the writer's own checkpoint, which holds
            // up writes, has only the last few frames to copy.
            let mut passes = 0;
            while let Ok((_, frames, _)) = done {
                if frames < WAL_RESTART_FRAMES || passes == 4 {
                    break;
                }
                passes += 1;
                done = run("PASSIVE");
                if matches!(done, Ok((_, now, _)) if now - frames <= REWIND_LEFTOVER_FRAMES) {
                    break;
                }
            }
            done
        };
        wal_large = matches!(done, Ok((_, frames, _)) if frames >= WAL_RESTART_FRAMES / 2);
        match done {
            Ok((0, _, _)) if quiet => truncated_after = activity.last_commit(),
            // See [`rewind_wal`].
            Ok((_, frames, _)) if frames >= WAL_RESTART_FRAMES => {
                activity.rewind.store(true, Ordering::Relaxed)
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed; retrying"),
        }
    }
}

fn clone_error(e: &rusqlite::Error) -> rusqlite::Error {
    match e {
        rusqlite::Error::SqliteFailure(code, msg) => rusqlite::Error::SqliteFailure(*code, msg.clone()),
        other => rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
            Some(other.to_string()),
        ),
    }
}

/// Run a fixed statement through the statement cache: a group runs one
/// `SAVEPOINT` and one `RELEASE` per job, and parsing them each time was a
/// measurable share of the writer's time.
fn exec_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

fn run_group(conn: &Connection, group: &mut [Box<dyn Job>]) -> rusqlite::Result<()> {
    exec_cached(conn, "BEGIN IMMEDIATE")?;
    for job in group.iter_mut() {
        if let Err(e) = exec_cached(conn, "SAVEPOINT job") {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(e);
        }
        let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job.run(conn))).unwrap_or(false);
        let end = if ok {
            exec_cached(conn, "RELEASE job")
        } else {
            conn.execute_batch("ROLLBACK TO job; RELEASE job")
        };
        if let Err(e) = end {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(e);
        }
    }
    exec_cached(conn, "COMMIT").inspect_err(|_| {
        let _ = conn.execute_batch("ROLLBACK");
    })
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while it was held leaves what it guards usable: readers never
    // hold a transaction open across calls, and the checkpoint lock guards
    // nothing but turn-taking.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // NORMAL under WAL: a commit survives a process crash; only an OS crash
    // can lose the last transactions, never corrupt the file.
    conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;")?;
    // No journal_size_limit: a rewound WAL is overwritten in place, where
    // cutting it back at every rewind cost the first commit after it a
    // truncation (280 ms for 115 MiB measured under PXE load). Rewinds bound
    // it under load and quiet spells empty it.
    conn.pragma_update(None, "journal_size_limit", -1)?;
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
        if std::fs::metadata(path).map(|m| m.len() == 0).unwrap_or(true) {
            // Only possible before the file is initialised: freed pages
            // (aged-out history) can then go back to the file system in
            // small steps, never in a full VACUUM that stops every write.
            Connection::open(path)
                .and_then(|c| c.execute_batch("PRAGMA auto_vacuum = INCREMENTAL; PRAGMA journal_mode = WAL;"))
                .with_context(|| format!("cannot create database {}", path.display()))?;
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
        // Whatever an earlier run left in the WAL (a crash, or a WAL that
        // grew under load) is folded back and the file emptied.
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "cannot truncate the WAL at start");
        }
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            readers.push(Mutex::new(open_conn(path)?));
        }
        // The writer never checkpoints: SQLite's automatic checkpoint would
        // run inside a commit and hold up every caller in that group.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        let checkpoint_conn = open_conn(path)?;
        let (stop, stopped) = mpsc::channel::<()>();
        let activity = Arc::new(Activity::new());
        let seen = activity.clone();
        let shared = activity.clone();
        std::thread::Builder::new()
            .name("bty-db-checkpoint".into())
            .spawn(move || checkpoint_loop(checkpoint_conn, stopped, seen))
            .context("cannot start the database checkpoint thread")?;
        let (tx, rx) = mpsc::channel::<Box<dyn Job>>();
        std::thread::Builder::new()
            .name("bty-db-writer".into())
            .spawn(move || writer_loop(conn, rx, activity))
            .context("cannot start the database writer thread")?;
        let db = Db {
            inner: Arc::new(Inner {
                writer: tx,
                _checkpointer: stop,
                readers,
                next_reader: AtomicUsize::new(0),
                path: path.to_path_buf(),
                activity: shared,
            }),
        };
        Ok((db, reset))
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// How often the WAL was rewound under load (see `rewind_wal`).
    pub fn wal_rewinds(&self) -> u64 {
        self.inner.activity.rewinds.load(Ordering::Relaxed)
    }

    /// Run `f` atomically on the writer; returns once it has committed.
    /// `f` must not start its own transaction (it runs inside a savepoint).
    pub async fn write<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&Connection) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<rusqlite::Error> + Send + 'static,
    {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = Box::new(WriteJob { f: Some(f), result: None, reply });
        if self.inner.writer.send(job).is_err() {
            return Err(E::from(writer_gone()));
        }
        answer.await.unwrap_or_else(|_| Err(E::from(writer_gone())))
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
}

fn writer_gone() -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ABORT),
        Some(
            "the database write did not complete (it panicked, or the writer stopped); see the server log"
                .into(),
        ),
    )
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

    #[tokio::test]
    async fn fresh_database_is_stamped() {
        let dir = tempfile::tempdir().unwrap();
        let (db, reset) = Db::open(&dir.path().join("state.db")).unwrap();
        assert!(reset.is_none());
        assert_eq!(db.read(user_version).await.unwrap(), SCHEMA_VERSION);
    }

    #[test]
    fn the_checkpointer_waits_for_a_pause_in_writes() {
        let a = Activity::new();
        assert!(!a.busy(), "nothing committed yet");
        a.committed();
        assert!(a.busy(), "just committed");
        std::thread::sleep(std::time::Duration::from_millis(150));
        assert!(!a.busy(), "a pause of 150 ms");
    }

    #[tokio::test]
    async fn under_sustained_writes_the_wal_is_rewound() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let wal = dir.path().join("state.db-wal");
        let (db, _) = Db::open(&path).unwrap();
        db.write(|c| c.execute_batch("CREATE TABLE scratch (x BLOB)")).await.unwrap();
        // Writes without a pause long enough for a quiet spell's truncation,
        // past the time the checkpointer defers to a burst: only the
        // writer's rewinds can start the WAL over.
        let (mut written, mut largest) = (0u64, 0u64);
        let start = std::time::Instant::now();
        while db.wal_rewinds() < 2 && start.elapsed() < std::time::Duration::from_secs(30) {
            db.write(|c| {
                let mut ins = c.prepare_cached("INSERT INTO scratch (x) VALUES (zeroblob(8000))")?;
                for _ in 0..32 {
                    ins.execute([])?;
                }
                c.execute("DELETE FROM scratch WHERE rowid % 2 = 0", [])
            })
            .await
            .unwrap();
            written += 32 * 8192;
            largest = largest.max(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0));
        }
        assert!(db.wal_rewinds() >= 2, "no rewinds in 30 s ({written} bytes written, WAL {largest} bytes)");
    }

    #[tokio::test]
    async fn the_checkpointer_folds_the_wal_into_the_database_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let (db, _) = Db::open(&path).unwrap();
        let before = std::fs::metadata(&path).unwrap().len();
        db.write(|c| {
            for i in 0..256 {
                c.execute(
                    "INSERT INTO settings (key, value, updated_at) VALUES (?1, ?2, 't')",
                    (format!("k{i}"), "x".repeat(4096)),
                )?;
            }
            Ok::<_, rusqlite::Error>(())
        })
        .await
        .unwrap();
        // The writer itself never checkpoints; only the background thread
        // can have moved these pages into the main file.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::fs::metadata(&path).unwrap().len() < before + (1 << 20) {
            assert!(std::time::Instant::now() < deadline, "the WAL was not checkpointed within 10 s");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    #[tokio::test]
    async fn failed_writes_roll_back_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (db, _) = Db::open(&dir.path().join("state.db")).unwrap();
        let put = |k: &'static str, fail: bool| {
            let db = db.clone();
            async move {
                db.write(move |c| {
                    c.execute("INSERT INTO settings (key, value, updated_at) VALUES (?, 'v', 't')", [k])?;
                    if fail {
                        return Err(rusqlite::Error::QueryReturnedNoRows);
                    }
                    Ok(())
                })
                .await
            }
        };
        let (a, b, c) = tokio::join!(put("a", false), put("b", true), put("c", false));
        assert!(a.is_ok() && b.is_err() && c.is_ok());
        let keys: Vec<String> = db
            .read(|c| {
                let mut s = c.prepare("SELECT key FROM settings ORDER BY key")?;
                let rows = s.query_map([], |r| r.get(0))?;
                rows.collect::<rusqlite::Result<Vec<String>>>()
            })
            .await
            .unwrap();
        assert_eq!(keys, ["a", "c"]);
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
        let (_db, reset) = Db::open(&path).unwrap();
        let reset = reset.unwrap();
        assert_eq!(reset.found_version, Some(99));
        let name = reset.archived_to.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with("state.db.99.") && name.ends_with("Z.bak"), "{name}");
        let old = Connection::open(&reset.archived_to).unwrap();
        assert_eq!(old.query_row("SELECT x FROM future", [], |r| r.get::<_, i64>(0)).unwrap(), 42);
        assert_eq!(user_version(&Connection::open(&path).unwrap()).unwrap(), SCHEMA_VERSION);
    }

    #[test]
    fn foreign_database_is_archived() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        Connection::open(&path).unwrap().execute_batch("CREATE TABLE machines (mac TEXT);").unwrap();
        let (_db, reset) = Db::open(&path).unwrap();
        assert_eq!(reset.unwrap().found_version, None);
    }

    #[tokio::test]
    async fn a_fresh_database_vacuums_incrementally_and_the_wal_is_emptied_when_quiet() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let (db, _) = Db::open(&path).unwrap();
        let mode: i64 = db.read(|c| c.query_row("PRAGMA auto_vacuum", [], |r| r.get(0))).await.unwrap();
        assert_eq!(mode, 2, "incremental");
        db.write(|c| {
            for i in 0..512 {
                c.execute(
                    "INSERT INTO settings (key, value, updated_at) VALUES (?1, ?2, 't')",
                    (format!("k{i}"), "x".repeat(4096)),
                )?;
            }
            Ok::<_, rusqlite::Error>(())
        })
        .await
        .unwrap();
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        let wal = PathBuf::from(wal);
        assert!(std::fs::metadata(&wal).unwrap().len() > 1 << 20);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        while std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0) > 0 {
            assert!(std::time::Instant::now() < deadline, "the WAL was not truncated in a quiet spell");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let id: i64 = db.read(|c| c.query_row("PRAGMA application_id", [], |r| r.get(0))).await.unwrap();
        assert_eq!(id, 0x6274_7977);
    }
}
