use bty_core::disks::{self, human_size};

#[derive(clap::Args)]
pub struct Args {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> i32 {
    let list = match disks::list_disks() {
        Ok(l) => l,
        Err(e) => return crate::report_error(&e, a.json),
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&list).expect("disks serialise"));
        return 0;
    }
    if list.is_empty() {
        println!("no disks found");
        return 0;
    }
    let rows: Vec<[String; 7]> = list
        .iter()
        .map(|d| {
            let mut flags = Vec::new();
            if d.holds_running_system {
                flags.push("SYSTEM".to_string());
            }
            if d.read_only {
                flags.push("ro".into());
            }
            if d.removable {
                flags.push("removable".into());
            }
            if !d.mountpoints.is_empty() {
                flags.push(format!("mounted: {}", d.mountpoints.join(",")));
            }
            [
                d.path.clone(),
                human_size(d.size_bytes),
                d.transport.clone().unwrap_or_else(|| "-".into()),
                d.model_label().unwrap_or_else(|| "-".into()),
                d.serial.clone().unwrap_or_else(|| "-".into()),
                d.partitions.len().to_string(),
                flags.join(" "),
            ]
        })
        .collect();
    crate::render::table(&["PATH", "SIZE", "TRAN", "MODEL", "SERIAL", "PARTS", "NOTES"], &rows);
    0
}
