//! Run fuzz inputs through a target body outside afl, with the panic
//! message and backtrace a crash needs to be understood:
//!
//!     cargo run --manifest-path fuzz/Cargo.toml --bin replay -- TARGET FILE...
//!
//! Without files it reads one input from standard input.
use std::io::Read;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let names: Vec<&str> = bty_fuzz::TARGETS.iter().map(|(n, _)| *n).collect();
    let Some(body) = args.next().as_deref().and_then(bty_fuzz::target) else {
        eprintln!("usage: replay TARGET [FILE...]; targets: {}", names.join(", "));
        return ExitCode::from(2);
    };
    let files: Vec<String> = args.collect();
    if files.is_empty() {
        let mut data = Vec::new();
        if let Err(e) = std::io::stdin().read_to_end(&mut data) {
            eprintln!("replay: cannot read standard input: {e}");
            return ExitCode::FAILURE;
        }
        body(&data);
    }
    for f in &files {
        match std::fs::read(f) {
            Ok(data) => {
                eprintln!("replay: {f}");
                body(&data);
            }
            Err(e) => {
                eprintln!("replay: cannot read {f}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    eprintln!("replay: no panic");
    ExitCode::SUCCESS
}
