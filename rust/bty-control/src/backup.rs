//! Backups of `state.db` and restoring them.
//!
//! A backup is a directory named after its UTC time (`2026-05-24T08-00-00Z`)
//! holding `state.db`, copied with SQLite's online backup API in one step —
//! one read transaction, so the copy is a consistent snapshot while the
//! server keeps writing (WAL lets the writer go on) — and the portable
//! `inventory.json` bundle made from that copy. It is written under a hidden
//! `.NAME.partial` name and renamed into place only once complete and checked,
//! so a listed backup is always a whole one.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::Context;
use rusqlite::{Connection, OpenFlags};
use serde::Serialize;

use crate::{bundle, clock, db};

pub const DB_FILE: &str = "state.db";
/// The file a running bty-web holds locked, so restore can tell it is running.
pub const LOCK_FILE: &str = "bty-web.lock";

#[derive(Debug, Clone, Serialize)]
pub struct BackupInfo {
    pub name: String,
    pub created_at: String,
    /// Bytes of `state.db` in the backup.
    pub bytes: u64,
    pub files: Vec<String>,
}

/// How often the scheduler makes a backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Cadence {
    Manual,
    Daily,
    Weekly,
}

impl Cadence {
    pub fn parse(s: &str) -> Option<Cadence> {
        match s {
            "manual" => Some(Cadence::Manual),
            "daily" => Some(Cadence::Daily),
            "weekly" => Some(Cadence::Weekly),
            _ => None,
        }
    }
    pub fn period_secs(self) -> Option<i64> {
        match self {
            Cadence::Manual => None,
            Cadence::Daily => Some(86_400),
            Cadence::Weekly => Some(7 * 86_400),
        }
    }
}

/// The schedule, kept in the `settings` table so it changes without a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Schedule {
    pub cadence: Cadence,
    /// Most recent backups kept after each scheduled run; 0 keeps all.
    pub keep: u32,
}

pub const SETTING_CADENCE: &str = "backup.schedule";
pub const SETTING_KEEP: &str = "backup.keep";
pub const DEFAULT_KEEP: u32 = 7;

pub fn load_schedule(conn: &Connection) -> rusqlite::Result<Schedule> {
    let get = |k: &str| -> rusqlite::Result<Option<String>> {
        use rusqlite::OptionalExtension;
        conn.query_row("SELECT value FROM settings WHERE key = ?1", [k], |r| r.get(0)).optional()
    };
    let cadence = get(SETTING_CADENCE)?.and_then(|v| Cadence::parse(&v)).unwrap_or(Cadence::Manual);
    let keep = get(SETTING_KEEP)?.and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_KEEP);
    Ok(Schedule { cadence, keep })
}

pub fn save_schedule(conn: &Connection, s: &Schedule) -> rusqlite::Result<()> {
    let now = clock::now_rfc3339();
    let cadence = serde_json::to_value(s.cadence).ok().and_then(|v| v.as_str().map(str::to_string));
    for (k, v) in [(SETTING_CADENCE, cadence.unwrap_or_default()), (SETTING_KEEP, s.keep.to_string())] {
        conn.execute(
            "INSERT INTO settings (key, value, updated_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            rusqlite::params![k, v, now],
        )?;
    }
    Ok(())
}

fn open_read_only(path: &Path) -> anyhow::Result<Connection> {
    let c =
        Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
            .with_context(|| format!("cannot open {}", path.display()))?;
    c.busy_timeout(std::time::Duration::from_secs(30))?;
    Ok(c)
}

/// `PRAGMA integrity_check` on a database file: `Ok(())` or every problem.
pub fn integrity_check(path: &Path) -> anyhow::Result<()> {
    let c = open_read_only(path)?;
    let rows: Vec<String> = c
        .prepare("PRAGMA integrity_check")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()
        .with_context(|| format!("cannot check {}", path.display()))?;
    if rows == ["ok"] {
        Ok(())
    } else {
        anyhow::bail!("{} fails PRAGMA integrity_check: {}", path.display(), rows.join("; "))
    }
}

/// Copy the live database at `src` to the new file `dest`, consistently.
pub fn snapshot(src: &Path, dest: &Path) -> anyhow::Result<()> {
    let from = open_read_only(src)?;
    create_private(dest)?;
    let mut to = Connection::open(dest).with_context(|| format!("cannot create {}", dest.display()))?;
    {
        let b = rusqlite::backup::Backup::new(&from, &mut to)?;
        // -1: every page in one step, inside one read transaction. Copying in
        // slices would restart whenever the server commits in between.
        loop {
            match b.step(-1).with_context(|| format!("cannot copy {}", src.display()))? {
                rusqlite::backup::StepResult::Done => break,
                _ => std::thread::sleep(std::time::Duration::from_millis(50)),
            }
        }
    }
    // A backup is one self-contained file: no WAL sidecar to forget when copying it.
    to.execute_batch("PRAGMA journal_mode = DELETE")?;
    drop(to);
    File::open(dest).and_then(|f| f.sync_all()).with_context(|| format!("cannot sync {}", dest.display()))?;
    Ok(())
}

fn valid_name(name: &str) -> bool {
    clock::parse_dir_stamp(name).is_some()
        && name.len() <= 40
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == 'T' || c == 'Z')
}

/// Make a backup of `state_db` in a new directory under `backup_dir`.
pub fn create(state_db: &Path, backup_dir: &Path) -> anyhow::Result<BackupInfo> {
    create_private_dir(backup_dir)
        .with_context(|| format!("cannot create backup directory {}", backup_dir.display()))?;
    let stamp = clock::dir_stamp(clock::now());
    let mut name = stamp.clone();
    let mut n = 1;
    while backup_dir.join(&name).exists() {
        name = format!("{stamp}-{n}");
        n += 1;
    }
    let partial = backup_dir.join(format!(".{name}.partial"));
    let _ = std::fs::remove_dir_all(&partial);
    create_private_dir(&partial).with_context(|| format!("cannot create {}", partial.display()))?;
    let made = (|| -> anyhow::Result<()> {
        let db_file = partial.join(DB_FILE);
        snapshot(state_db, &db_file)?;
        integrity_check(&db_file)?;
        let conn = open_read_only(&db_file)?;
        bundle::write(&bundle::export(&conn)?, &partial)?;
        Ok(())
    })();
    if let Err(e) = made {
        let _ = std::fs::remove_dir_all(&partial);
        return Err(e);
    }
    let done = backup_dir.join(&name);
    std::fs::rename(&partial, &done)
        .with_context(|| format!("cannot move the backup to {}", done.display()))?;
    File::open(backup_dir).and_then(|d| d.sync_all()).ok();
    info(backup_dir, &name).context("the backup vanished right after it was made")
}

fn info(backup_dir: &Path, name: &str) -> Option<BackupInfo> {
    let dir = backup_dir.join(name);
    let bytes = std::fs::metadata(dir.join(DB_FILE)).ok()?.len();
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let created_at = clock::from_unix(clock::parse_dir_stamp(name)?);
    Some(BackupInfo { name: name.to_string(), created_at, bytes, files })
}

/// Complete backups, newest first.
pub fn list(backup_dir: &Path) -> anyhow::Result<Vec<BackupInfo>> {
    let entries = match std::fs::read_dir(backup_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot list {}", backup_dir.display())),
    };
    let mut out: Vec<BackupInfo> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| valid_name(n))
        .filter_map(|n| info(backup_dir, &n))
        .collect();
    out.sort_by(|a, b| b.name.cmp(&a.name));
    Ok(out)
}

/// The path of one file of one backup, refusing anything but a listed
/// backup's plain file names (no traversal through `name` or `file`).
pub fn file_path(backup_dir: &Path, name: &str, file: &str) -> Option<PathBuf> {
    let b = list(backup_dir).ok()?.into_iter().find(|b| b.name == name)?;
    b.files.iter().any(|f| f == file).then(|| backup_dir.join(&b.name).join(file))
}

pub fn remove(backup_dir: &Path, name: &str) -> anyhow::Result<bool> {
    if !valid_name(name) || !backup_dir.join(name).join(DB_FILE).is_file() {
        return Ok(false);
    }
    std::fs::remove_dir_all(backup_dir.join(name))
        .with_context(|| format!("cannot delete backup {name} in {}", backup_dir.display()))?;
    Ok(true)
}

/// Delete all but the `keep` newest backups; the names deleted.
pub fn prune(backup_dir: &Path, keep: u32) -> anyhow::Result<Vec<String>> {
    if keep == 0 {
        return Ok(Vec::new());
    }
    let mut gone = Vec::new();
    for b in list(backup_dir)?.into_iter().skip(keep as usize) {
        if remove(backup_dir, &b.name)? {
            gone.push(b.name);
        }
    }
    Ok(gone)
}

/// Held while bty-web runs; [`restore`] refuses to run while anyone holds it.
pub struct StateLock {
    _file: File,
}

/// Files of the state directory that hold secrets (password hashes, session
/// CSRF tokens) or everything (the database and its WAL): owner only.
const PRIVATE_FILES: &[&str] =
    &[DB_FILE, "state.db-wal", "state.db-shm", "state.db-journal", "session-secret"];

/// Create the state directory owner-only (0700), or tighten an existing one
/// that allows more than 0710 and its private files (0600) that allow more,
/// whatever the umask. Group traversal is left alone: a deployment may let a
/// group reach a subdirectory (the appliance's `images/`), and traversal
/// lists and reads nothing. Returns a warning for each path it tightened,
/// for the caller to log.
pub fn secure_state_dir(state_dir: &Path) -> anyhow::Result<Vec<String>> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(state_dir).with_context(|| {
        format!(
            "cannot create state directory {} (set BTY_PATHS_STATE_DIR to a writable place)",
            state_dir.display()
        )
    })?;
    let mut warnings = Vec::new();
    let paths = std::iter::once((state_dir.to_path_buf(), 0o710))
        .chain(PRIVATE_FILES.iter().map(|f| (state_dir.join(f), 0o600)));
    for (path, allowed) in paths {
        use std::os::unix::fs::PermissionsExt;
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        let mode = meta.permissions().mode() & 0o7777;
        if meta.file_type().is_symlink() || mode & !allowed == 0 {
            continue;
        }
        let tight = mode & allowed;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(tight))
            .with_context(|| format!("cannot restrict {} to mode {tight:04o}", path.display()))?;
        warnings.push(format!(
            "{} was mode {mode:04o}, open to other users; now {tight:04o} (it holds password hashes and sessions)",
            path.display()
        ));
    }
    Ok(warnings)
}

/// Create `path` empty and owner-only, for SQLite to fill: SQLite creates a
/// new database with 0644 less the umask, and its `-wal` and `-shm` files
/// copy the database's mode.
pub fn create_private(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map(drop)
        .with_context(|| format!("cannot create {}", path.display()))
}

/// A directory owned by this user only, created with its parents if needed.
pub fn create_private_dir(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(path)
}

/// Who holds the state directory's lock.
#[derive(Debug)]
pub struct Held {
    pub lock_file: PathBuf,
    /// As the holder wrote it into the lock file (absent from an older bty-web).
    pub pid: Option<u32>,
}

impl std::fmt::Display for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.pid {
            Some(pid) => write!(f, "pid {pid}, holding {}", self.lock_file.display()),
            None => write!(f, "pid unknown, holding {}", self.lock_file.display()),
        }
    }
}

/// Take the state directory's lock, or say who holds it.
pub fn try_lock_state_dir(state_dir: &Path) -> anyhow::Result<Result<StateLock, Held>> {
    use std::io::Write;
    let path = state_dir.join(LOCK_FILE);
    let mut file = File::options()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    use std::os::fd::AsRawFd;
    // flock (not fcntl) locks: tied to this open file, released when the
    // process dies however it dies, so a killed server never leaves it behind.
    // SAFETY: flock takes a file descriptor that `file` keeps open.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    let err = std::io::Error::last_os_error();
    match rc {
        0 => {
            // Only for the messages of those refused; the lock is what counts.
            let _ = file.set_len(0).and_then(|()| writeln!(file, "{}", std::process::id()));
            Ok(Ok(StateLock { _file: file }))
        }
        _ if err.raw_os_error() == Some(libc::EWOULDBLOCK) => {
            let pid = std::fs::read_to_string(&path).ok().and_then(|t| t.trim().parse().ok());
            Ok(Err(Held { lock_file: path, pid }))
        }
        _ => Err(err).with_context(|| format!("cannot lock {}", path.display())),
    }
}

pub fn lock_state_dir(state_dir: &Path) -> anyhow::Result<StateLock> {
    match try_lock_state_dir(state_dir)? {
        Ok(lock) => Ok(lock),
        Err(held) => anyhow::bail!(
            "another bty-web is already running on the state directory {} ({held}); \
             stop it first, or give this one its own BTY_PATHS_STATE_DIR",
            state_dir.display()
        ),
    }
}

#[derive(Debug, Serialize)]
pub struct RestoreReport {
    pub restored_from: PathBuf,
    /// Where the database that was replaced went (with `--force`).
    pub previous_kept_as: Option<PathBuf>,
    pub schema_version: i64,
    pub machines: i64,
}

fn sidecars(path: &Path) -> [PathBuf; 3] {
    ["-wal", "-shm", "-journal"].map(|s| {
        let mut p = path.as_os_str().to_owned();
        p.push(s);
        PathBuf::from(p)
    })
}

/// The tables every bty state database has had since schema 1.
pub const EXPECTED_TABLES: &[&str] =
    &["machines", "events", "settings", "users", "sessions", "api_tokens", "flash_history", "machine_labels"];

/// Check that `path` is a whole bty state database this binary can use, and
/// return its schema version. Every refusal says what is wrong with the file.
pub fn check_bty_database(path: &Path) -> anyhow::Result<i64> {
    use std::io::Read;
    let shown = path.display();
    let mut head = [0u8; 100];
    let mut f = File::open(path).with_context(|| format!("cannot open {shown}"))?;
    let len = f.metadata().with_context(|| format!("cannot read {shown}"))?.len();
    let got = f.read(&mut head).with_context(|| format!("cannot read {shown}"))?;
    if got < 16 || &head[..16] != b"SQLite format 3\0" {
        anyhow::bail!("{shown} is not an SQLite database, so not a bty state database (expected a backup directory or its state.db)");
    }
    if got == head.len() {
        // The page count in the header is current when its "valid for" stamp
        // equals the change counter (always, for files SQLite 3.7+ wrote).
        let be = |at: usize| u32::from_be_bytes(head[at..at + 4].try_into().expect("4 bytes"));
        let page_size = match u16::from_be_bytes([head[16], head[17]]) {
            1 => 65_536,
            n => u64::from(n),
        };
        let declared = u64::from(be(28)) * page_size;
        if be(92) == be(24) && declared > len {
            anyhow::bail!("{shown} is truncated: {len} bytes of the {declared} its header declares (an incomplete copy?)");
        }
    }
    let c = open_read_only(path)?;
    let pragma = |name: &str| -> anyhow::Result<i64> {
        c.query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))
            .with_context(|| format!("cannot read PRAGMA {name} of {shown} (a damaged file?)"))
    };
    let version = pragma("user_version")?;
    let app_id = pragma("application_id")?;
    if version > db::SCHEMA_VERSION {
        anyhow::bail!(
            "{shown} has schema version {version}, newer than this bty-web knows ({}); restore it with the \
             bty-web that made it",
            db::SCHEMA_VERSION
        );
    }
    // Schemas 1 and 2 predate the application_id stamp.
    let legacy = app_id == 0 && (1..=2).contains(&version);
    if app_id != i64::from(db::APPLICATION_ID) && !legacy {
        anyhow::bail!(
            "{shown} is an SQLite database but not a bty state database (application_id {:#010x}, \
             schema version {version}; bty's is {:#010x})",
            app_id as u32,
            db::APPLICATION_ID
        );
    }
    if version < 1 {
        anyhow::bail!(
            "{shown} has no bty schema version (user_version {version}); it was not made by bty-web"
        );
    }
    let mut present = c.prepare("SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?1")?;
    let missing: Vec<&str> =
        EXPECTED_TABLES.iter().copied().filter(|t| !present.exists([t]).unwrap_or(false)).collect();
    if !missing.is_empty() {
        anyhow::bail!(
            "{shown} lacks the bty table(s) {}; it is not a bty state database",
            missing.join(", ")
        );
    }
    drop(present);
    drop(c);
    integrity_check(path).context("the file is damaged")?;
    Ok(version)
}

/// Put the database from `src` (a backup directory or a database file) in
/// place as `<state_dir>/state.db`. bty-web must be stopped; an existing
/// database is replaced only with `force`, and even then kept aside. The
/// source is checked to be a whole bty database before anything changes;
/// every error ends by saying where the state database that was in place is.
pub fn restore(src: &Path, state_dir: &Path, force: bool) -> anyhow::Result<RestoreReport> {
    let target = state_dir.join(DB_FILE);
    let mut aside = None;
    restore_steps(src, state_dir, force, &mut aside).map_err(|e| {
        let whereabouts = match &aside {
            Some(a) => format!(
                "The state database that was in place is kept as {}; move it back to {} to undo",
                a.display(),
                target.display()
            ),
            None if target.exists() => format!("The state database {} is untouched", target.display()),
            None => format!("Nothing was changed (there is no state database at {})", target.display()),
        };
        anyhow::anyhow!("{e:#}. {whereabouts}")
    })
}

fn restore_steps(
    src: &Path,
    state_dir: &Path,
    force: bool,
    aside: &mut Option<PathBuf>,
) -> anyhow::Result<RestoreReport> {
    let src_db = if src.is_dir() { src.join(DB_FILE) } else { src.to_path_buf() };
    if !src_db.is_file() {
        anyhow::bail!("{} is not a backup: no database file there (expected a backup directory holding {DB_FILE}, or a .db file)", src.display());
    }
    let version = check_bty_database(&src_db)?;
    for w in secure_state_dir(state_dir)? {
        eprintln!("bty-web: warning: {w}");
    }
    let _lock = lock_state_dir(state_dir).context("restore needs bty-web stopped")?;
    let target = state_dir.join(DB_FILE);
    if target.exists() && !force {
        anyhow::bail!(
            "{} already exists; pass --force to replace it (the current database is then kept as \
             {DB_FILE}.pre-restore.<time>.bak)",
            target.display()
        );
    }
    // The copy is made and checked next to the target first, so the
    // database in place is moved only once its replacement is ready.
    let tmp = state_dir.join(format!(".{DB_FILE}.restoring"));
    let _ = std::fs::remove_file(&tmp);
    let copied = snapshot(&src_db, &tmp).and_then(|()| integrity_check(&tmp));
    if let Err(e) = copied {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.context(format!("cannot copy {} into {}", src_db.display(), state_dir.display())));
    }
    if target.exists() {
        // Fold the WAL in first: the file moved aside must be complete on its own.
        Connection::open(&target)
            .and_then(|c| c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)"))
            .with_context(|| format!("cannot checkpoint {}", target.display()))?;
        let to = state_dir.join(format!("{DB_FILE}.pre-restore.{}.bak", clock::compact(clock::now())));
        std::fs::rename(&target, &to).with_context(|| format!("cannot move {} aside", target.display()))?;
        *aside = Some(to);
    }
    for side in sidecars(&target) {
        let _ = std::fs::remove_file(side);
    }
    if let Err(e) = std::fs::rename(&tmp, &target) {
        let _ = std::fs::remove_file(&tmp);
        if let Some(a) = aside.as_ref() {
            if std::fs::rename(a, &target).is_ok() {
                *aside = None;
            }
        }
        return Err(e).with_context(|| format!("cannot put the backup in place as {}", target.display()));
    }
    File::open(state_dir).and_then(|d| d.sync_all()).ok();
    let previous_kept_as = aside.clone();
    let c = Connection::open(&target)?;
    let machines = c.query_row("SELECT count(*) FROM machines", [], |r| r.get(0))?;
    crate::audit::insert(
        &c,
        &crate::audit::NewEvent::new(
            "system.restored",
            crate::audit::Actor::System,
            format!("state.db restored from {}", src_db.display()),
        )
        .subject("system", "state.db")
        .details(serde_json::json!({"from": src_db, "previous_kept_as": previous_kept_as})),
    )?;
    Ok(RestoreReport { restored_from: src_db, previous_kept_as, schema_version: version, machines })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn make_db(dir: &Path, machines: usize) -> PathBuf {
        let path = dir.join(DB_FILE);
        let mut c = Connection::open(&path).unwrap();
        c.execute_batch("PRAGMA journal_mode = WAL").unwrap();
        db::migrate(&mut c).unwrap();
        for i in 0..machines {
            c.execute(
                "INSERT INTO machines (mac, created_at, updated_at) VALUES (?1, 't', 't')",
                [format!("52:54:00:00:00:{i:02x}")],
            )
            .unwrap();
        }
        path
    }

    #[test]
    fn create_list_prune() {
        let dir = tempfile::tempdir().unwrap();
        let state = make_db(dir.path(), 3);
        let backups = dir.path().join("backups");
        let a = create(&state, &backups).unwrap();
        let b = create(&state, &backups).unwrap();
        assert_ne!(a.name, b.name);
        assert_eq!(a.files, ["inventory.json", "state.db"]);
        let c = Connection::open(backups.join(&b.name).join(DB_FILE)).unwrap();
        assert_eq!(c.query_row("SELECT count(*) FROM machines", [], |r| r.get::<_, i64>(0)).unwrap(), 3);
        assert_eq!(list(&backups).unwrap().len(), 2);
        assert!(file_path(&backups, &a.name, "../state.db").is_none());
        assert!(file_path(&backups, "..", "state.db").is_none());
        assert!(file_path(&backups, &a.name, "state.db").is_some());
        assert_eq!(prune(&backups, 1).unwrap().len(), 1);
        assert_eq!(list(&backups).unwrap().len(), 1);
    }

    #[test]
    fn restore_refuses_damage_and_overwrites_only_with_force() {
        let dir = tempfile::tempdir().unwrap();
        let src_dir = dir.path().join("src");
        std::fs::create_dir(&src_dir).unwrap();
        let state = make_db(&src_dir, 2);
        let backup = create(&state, &dir.path().join("b")).unwrap();
        let bdir = dir.path().join("b").join(&backup.name);

        let target = dir.path().join("target");
        let r = restore(&bdir, &target, false).unwrap();
        assert_eq!(r.machines, 2);
        let e = restore(&bdir, &target, false).unwrap_err();
        assert!(format!("{e:#}").contains("--force"), "{e:#}");
        let r = restore(&bdir, &target, true).unwrap();
        assert!(r.previous_kept_as.unwrap().exists());

        // A damaged file is refused before anything changes.
        let bad = dir.path().join("bad.db");
        let mut bytes = std::fs::read(bdir.join(DB_FILE)).unwrap();
        let n = bytes.len();
        bytes[n / 2..].iter_mut().for_each(|b| *b = 0xA5);
        std::fs::write(&bad, bytes).unwrap();
        let before = std::fs::read(target.join(DB_FILE)).unwrap();
        assert!(restore(&bad, &target, true).is_err());
        assert_eq!(std::fs::read(target.join(DB_FILE)).unwrap(), before);

        // And nothing happens while the state directory is locked by a server.
        let _held = lock_state_dir(&target).unwrap();
        let e = restore(&bdir, &target, true).unwrap_err();
        assert!(format!("{e:#}").contains("already running"), "{e:#}");
    }
}
