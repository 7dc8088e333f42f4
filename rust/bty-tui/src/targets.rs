//! The disk list: whole disks from sysfs plus explicitly offered files.

use std::path::PathBuf;

use bty_core::disks::{self, Disk};

use crate::app::DiskItem;

/// Colon-separated extra targets (regular files or devices), like `--target-file`.
pub const EXTRA_TARGETS_ENV: &str = "BTY_TUI_EXTRA_TARGETS";

/// Explicit targets first (they were asked for by name), then the disks.
/// Empty devices (unused loop devices, card readers without a card) are left
/// out: nothing can be written to them.
pub fn scan(extra: &[PathBuf]) -> Result<Vec<DiskItem>, String> {
    let mut out: Vec<DiskItem> = extra.iter().map(|p| extra_item(p)).collect();
    let found = disks::list_disks().map_err(|e| format!("cannot list disks: {e}"))?;
    out.extend(found.iter().filter(|d| d.size_bytes > 0).map(disk_item));
    Ok(out)
}

pub fn disk_item(d: &Disk) -> DiskItem {
    let blocked = d
        .holds_running_system
        .then(|| format!("{} holds the running system and cannot be overwritten", d.path));
    let note = if d.holds_running_system {
        "SYSTEM"
    } else if !d.mountpoints.is_empty() {
        "mounted"
    } else if d.read_only {
        "ro"
    } else {
        ""
    };
    DiskItem {
        path: d.path.clone(),
        size: Some(d.size_bytes),
        model: d.model_label().unwrap_or_default(),
        transport: d.transport.clone().unwrap_or_default(),
        serial: d.serial.clone().unwrap_or_default(),
        blocked,
        note: note.into(),
    }
}

fn extra_item(p: &std::path::Path) -> DiskItem {
    let meta = std::fs::metadata(p).ok();
    let is_file = meta.as_ref().is_none_or(|m| m.is_file());
    DiskItem {
        path: p.display().to_string(),
        size: meta.filter(|m| m.is_file()).map(|m| m.len()),
        model: if is_file { "regular file".into() } else { "device".into() },
        transport: String::new(),
        serial: String::new(),
        blocked: None,
        note: if is_file { "file".into() } else { String::new() },
    }
}

/// `--target-file` values plus the environment's list.
pub fn extra_targets(flags: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = flags.to_vec();
    if let Some(v) = std::env::var_os(EXTRA_TARGETS_ENV) {
        out.extend(std::env::split_paths(&v).filter(|p| !p.as_os_str().is_empty()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_come_first_and_are_marked() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("t.img");
        std::fs::write(&f, [0u8; 512]).unwrap();
        let missing = dir.path().join("new.img");
        let list = scan(&[f.clone(), missing.clone()]).unwrap();
        assert_eq!(list[0].path, f.display().to_string());
        assert_eq!(list[0].size, Some(512));
        assert_eq!(list[0].note, "file");
        assert_eq!(list[1].size, None, "a file to be created has no size yet");
        assert!(list.iter().all(|d| d.size != Some(0)));
    }
}
