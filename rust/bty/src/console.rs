//! The `bty: ...` markers the live environment leaves on the console and in
//! the kernel log, so serial-console automation can follow the agent.

use std::io::Write;

/// Console + kernel-log marker. The kernel log copy uses debug level so it
/// lands in dmesg/journal without printing twice on the console.
pub fn marker(msg: &str) {
    let line = format!("bty: {msg}");
    eprintln!("{line}");
    if let Ok(mut k) = std::fs::OpenOptions::new().write(true).open("/dev/kmsg") {
        let _ = k.write_all(format!("<7>{line}\n").as_bytes());
    }
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        if let Ok(mut c) = std::fs::OpenOptions::new().write(true).open("/dev/console") {
            let _ = c.write_all(format!("{line}\r\n").as_bytes());
        }
    }
}
