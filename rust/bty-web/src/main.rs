//! `bty-web`: see the library crate for the server itself.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// glibc's allocator (arena locks, consolidation) took ~20% of the PXE hot
/// path under load; mimalloc is a drop-in with per-thread free lists.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "bty-web",
    version,
    about = "bty provisioning server: machines, boot policies, iPXE, images"
)]
struct Cli {
    /// Configuration file (default: $BTY_CONFIG_FILE, else $BTY_CONFIG_DIR/bty.toml if present).
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default).
    Serve,
    /// Print every configuration key, its effective value and where it came from.
    ShowConfig {
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Back up state.db (consistent while the server runs) into a new
    /// timestamped directory under DEST (default: [paths] backup_dir).
    Backup {
        #[arg(value_name = "DEST")]
        dest: Option<PathBuf>,
    },
    /// Put a backup (its directory, or a .db file) in place as state.db.
    /// bty-web must be stopped. The file must be a whole bty database (SQLite,
    /// bty's application_id, its tables, a known schema, PRAGMA integrity_check)
    /// before anything changes.
    Restore {
        #[arg(value_name = "SRC")]
        src: PathBuf,
        /// Replace an existing state.db (which is kept as state.db.pre-restore.<time>.bak).
        #[arg(long)]
        force: bool,
    },
    /// Write the portable bundle DEST/inventory.json (version 3: each machine's
    /// MAC, hardware and known disks; no bindings, catalog or audit log).
    Export {
        #[arg(value_name = "DEST")]
        dest: PathBuf,
    },
    /// Import a bundle (inventory.json, or the directory holding it). New
    /// machines get policy `inventory` and no binding; existing ones keep theirs.
    Import {
        #[arg(value_name = "SRC")]
        src: PathBuf,
    },
    /// Fetch the netboot artifacts of a release (<base>/<tag>/SHA256SUMS and
    /// the files it lists) into the boot directory, verified, all or nothing.
    FetchNetboot {
        /// Default: [netboot] release_base_url.
        #[arg(long, value_name = "URL")]
        base_url: Option<String>,
        /// Default: [netboot] tag, else v<this version>.
        #[arg(long)]
        tag: Option<String>,
    },
}

fn fetch_netboot(
    config: &bty_web::config::Config,
    base_url: Option<String>,
    tag: Option<String>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let base = base_url.or_else(|| config.netboot.release_base_url.clone()).context(
        "no release URL: pass --base-url or set [netboot] release_base_url (BTY_NETBOOT_RELEASE_BASE_URL)",
    )?;
    let tag = tag.unwrap_or_else(|| config.netboot.tag.clone());
    let rt = tokio::runtime::Runtime::new()?;
    let client = reqwest::Client::builder().connect_timeout(std::time::Duration::from_secs(15)).build()?;
    let fetcher = bty_web::netboot::Fetcher::new();
    fetcher.begin(&tag);
    let boot = config.paths.boot_dir.clone();
    let installed = rt.block_on(bty_web::netboot::fetch(&client, &base, &tag, &boot, &fetcher))?;
    for f in &installed.files {
        println!("{}  {}", f.sha256, boot.join(&f.name).display());
    }
    println!("netboot artifacts {} installed in {}", installed.tag, boot.display());
    Ok(())
}

/// The offline subcommands work on the database directly, like the server
/// would: same migrations, and an audit event for what they did.
fn offline(config: &bty_web::config::Config, command: Command) -> anyhow::Result<()> {
    use anyhow::Context;
    use bty_web::{audit, backup, bundle};
    let state_db = config.paths.state_dir.join(backup::DB_FILE);
    let record = |e: audit::NewEvent| -> anyhow::Result<()> {
        let c = rusqlite::Connection::open(&state_db)?;
        c.busy_timeout(std::time::Duration::from_secs(30))?;
        audit::insert(&c, &e)?;
        Ok(())
    };
    match command {
        Command::Backup { dest } => {
            if !state_db.is_file() {
                anyhow::bail!("no database at {} (set BTY_PATHS_STATE_DIR)", state_db.display());
            }
            let dir = dest.unwrap_or_else(|| config.paths.backup_dir.clone());
            match backup::create(&state_db, &dir) {
                Ok(info) => {
                    record(
                        audit::NewEvent::new(
                            "backup.created",
                            audit::Actor::System,
                            format!("backup {} (command line)", info.name),
                        )
                        .subject("backup", info.name.clone()),
                    )?;
                    println!("{}", dir.join(&info.name).display());
                }
                Err(e) => {
                    let _ = record(
                        audit::NewEvent::new(
                            "backup.failed",
                            audit::Actor::System,
                            format!("backup failed: {e:#}"),
                        )
                        .subject("backup", dir.display().to_string()),
                    );
                    return Err(e);
                }
            }
        }
        Command::Restore { src, force } => {
            let r = backup::restore(&src, &config.paths.state_dir, force)?;
            println!(
                "restored {} ({} machines, schema {}) to {}",
                r.restored_from.display(),
                r.machines,
                r.schema_version,
                state_db.display()
            );
            if let Some(p) = r.previous_kept_as {
                println!("the previous database is kept as {}", p.display());
            }
        }
        Command::Export { dest } => {
            let c =
                rusqlite::Connection::open_with_flags(&state_db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                    .with_context(|| {
                        format!("cannot open {} (set BTY_PATHS_STATE_DIR)", state_db.display())
                    })?;
            let b = bundle::export(&c)?;
            let path = bundle::write(&b, &dest)?;
            println!("exported {} machine(s) to {}", b.machines.len(), path.display());
        }
        Command::Import { src } => {
            let b = bundle::read(&src)?;
            let dir = &config.paths.state_dir;
            for w in backup::secure_state_dir(dir)? {
                eprintln!("bty-web: warning: {w}");
            }
            // The import writes in a transaction of its own, beside the
            // server's writer and its caches: only with the server stopped.
            let _lock = match backup::try_lock_state_dir(dir)? {
                Ok(lock) => lock,
                Err(held) => anyhow::bail!(
                    "bty-web is running on this state directory {} ({held}): stop it first, then import; \
                     a running server cannot import a bundle. Nothing was imported",
                    dir.display()
                ),
            };
            let (db, _) = bty_web::db::Db::open(&state_db)?;
            drop(db); // migrated; now import in one transaction of our own
            let mut c = rusqlite::Connection::open(&state_db)?;
            c.busy_timeout(std::time::Duration::from_secs(30))?;
            let tx = c.transaction()?;
            let r = bundle::import(&tx, &b)?;
            audit::insert(
                &tx,
                &audit::NewEvent::new(
                    "machines.imported",
                    audit::Actor::System,
                    format!(
                        "imported {}: {} new, {} updated, {} unchanged",
                        src.display(),
                        r.created,
                        r.updated,
                        r.unchanged
                    ),
                )
                .subject("system", "import")
                .details(serde_json::to_value(&r)?),
            )?;
            tx.commit()?;
            println!(
                "{} new, {} updated, {} unchanged (from {})",
                r.created,
                r.updated,
                r.unchanged,
                src.display()
            );
        }
        Command::FetchNetboot { base_url, tag } => fetch_netboot(config, base_url, tag)?,
        Command::Serve | Command::ShowConfig { .. } => unreachable!("handled by main"),
    }
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down: finishing in-flight requests (at most 10 s)");
    // Long image downloads would otherwise hold the process open indefinitely.
    tokio::spawn(async {
        tokio::time::sleep(std::time::Duration::from_secs(10)).await;
        std::process::exit(0);
    });
}

/// Colour in the log only for a person at a terminal: never into a file,
/// a pipe or the journal, and never with `NO_COLOR` set (no-color.org).
fn log_colours() -> bool {
    use std::io::IsTerminal;
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    // The log goes to standard output.
    !no_color && std::io::stdout().is_terminal()
}

fn main() -> ExitCode {
    // Everything bty-web writes is its own: the database (password hashes,
    // session CSRF tokens), its WAL, backups, bundles, boot files it serves
    // itself. Owner-only whatever umask the caller left, for every command.
    // SAFETY: umask only swaps the process's file mode mask.
    unsafe { libc::umask(0o077) };
    let cli = Cli::parse();
    let config = match bty_web::config::Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bty-web: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::ShowConfig { json } => {
            if json {
                println!("{}", serde_json::to_string_pretty(&config.shown()).expect("config rows serialise"));
            } else {
                print!("{}", config.render_text());
            }
            ExitCode::SUCCESS
        }
        c @ (Command::Backup { .. }
        | Command::Restore { .. }
        | Command::Export { .. }
        | Command::Import { .. }
        | Command::FetchNetboot { .. }) => match offline(&config, c) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bty-web: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Serve => {
            tracing_subscriber::fmt()
                .with_ansi(log_colours())
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_env("BTY_LOG")
                        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
                )
                .init();
            let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
            match runtime.block_on(bty_web::serve(config, shutdown_signal())) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("bty-web: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
