use bty_core::source::Source;

#[derive(clap::Args)]
pub struct Args {
    /// Image file or http(s):// URL.
    source: String,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> i32 {
    let info = Source::parse(&a.source).and_then(|s| bty_core::inspect::inspect(&s));
    match info {
        Ok(info) if a.json => {
            println!("{}", serde_json::to_string_pretty(&info).expect("image info serialises"));
            0
        }
        Ok(info) => {
            print!("{}", info.human());
            0
        }
        Err(e) => crate::report_error(&e, a.json),
    }
}
