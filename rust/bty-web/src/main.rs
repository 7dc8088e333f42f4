//! `bty-web`: see the library crate for the server itself.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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

fn main() -> ExitCode {
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
        Command::Serve => {
            tracing_subscriber::fmt()
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
