//! The operator's health checklist (dashboard): is everything in place for
//! machines to network-boot and flash? Each check says what is wrong and
//! what to do, in words; `/healthz` stays the machine-readable liveness probe.

use std::path::Path;

use serde::Serialize;

use crate::catalog::CatalogStore;
use crate::config::Config;

/// Below this much free space a directory is a warning.
const LOW_SPACE_BYTES: u64 = 2 << 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
    Info,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    pub detail: String,
}

/// A network boot service's state, as the HTTP front reads it from the
/// running service (this crate does not run them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceState {
    Off,
    Listening,
    Failed,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServiceHealth {
    /// `TFTP`, `ProxyDHCP`.
    pub name: &'static str,
    /// `tftp`, `proxy_dhcp`: the config section and the switch's name.
    pub field: &'static str,
    pub state: ServiceState,
    pub listening: Vec<String>,
    pub requests: u64,
    pub errors: u64,
    pub last_error: Option<String>,
    /// The state in words, with what to do.
    pub detail: String,
}

fn check(name: &'static str, status: Status, detail: impl Into<String>) -> Check {
    Check { name, status, detail: detail.into() }
}

/// Free and total bytes of the file system holding `path` (statvfs).
pub fn free_space(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    let frag = st.f_frsize as u64;
    Some((st.f_bavail as u64 * frag, st.f_blocks as u64 * frag))
}

/// `1.5 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

/// The boot artifacts the iPXE scripts reference: `(name, size if present)`.
pub fn boot_artifacts(config: &Config) -> Vec<(String, Option<u64>)> {
    let b = &config.boot;
    let mut names = vec![b.kernel.clone(), b.initrd.clone()];
    names.extend(b.squashfs.clone());
    names
        .into_iter()
        .map(|n| {
            let size = std::fs::metadata(config.paths.boot_dir.join(&n)).ok().map(|m| m.len());
            (n, size)
        })
        .collect()
}

/// The release installed in the boot directory (`netboot.json`), if any.
pub fn boot_version(config: &Config) -> Option<String> {
    crate::netboot::installed(&config.paths.boot_dir).map(|i| i.tag)
}

/// The release the artifacts should be: `[netboot] tag` (`v<version>` by default).
pub fn wanted_boot_version(config: &Config) -> String {
    config.netboot.tag.clone()
}

/// Every check, in the order the dashboard shows them.
pub fn checklist(
    config: &Config,
    catalog: &CatalogStore,
    default_password: bool,
    services: &[ServiceHealth],
) -> Vec<Check> {
    let mut out = Vec::new();
    let boot_dir = config.paths.boot_dir.display().to_string();
    let missing: Vec<String> =
        boot_artifacts(config).into_iter().filter(|(_, s)| s.is_none()).map(|(n, _)| n).collect();
    out.push(if missing.is_empty() {
        check("Netboot artifacts", Status::Ok, format!("present in {boot_dir}"))
    } else {
        check(
            "Netboot artifacts",
            Status::Fail,
            format!("missing in {boot_dir}: {}; upload them on the Netboot page", missing.join(", ")),
        )
    });
    let wanted = wanted_boot_version(config);
    out.push(match boot_version(config) {
        Some(v) if v == wanted => check("Netboot version", Status::Ok, format!("{v}, matching this server")),
        Some(v) => check(
            "Netboot version",
            Status::Warn,
            format!("{v} installed; this server expects {wanted} (fetch it on the Netboot page)"),
        ),
        None => check(
            "Netboot version",
            Status::Warn,
            format!(
                "unknown: the files in {boot_dir} were not installed by a release fetch (expected {wanted})"
            ),
        ),
    });
    let images = catalog.get().images.len();
    let location = catalog.location();
    out.push(match (catalog.last_error(), images) {
        (Some(e), _) => check("Catalog", Status::Fail, format!("last load failed: {e}")),
        (None, 0) if catalog.is_missing() => check(
            "Catalog",
            Status::Warn,
            format!(
                "missing: {location} does not exist, so no image can be flashed. Add an image on the Images \
                 page (which creates the file), or write the file by hand as the README's section \
                 \"The image catalog\" shows and reload it there"
            ),
        ),
        (None, 0) => check(
            "Catalog",
            Status::Warn,
            format!("loaded from {location} but empty: no image can be flashed; add one on the Images page"),
        ),
        (None, n) => check("Catalog", Status::Ok, format!("{n} image(s) from {location}")),
    });
    for sv in services {
        let status = match sv.state {
            ServiceState::Off => Status::Info,
            ServiceState::Listening => Status::Ok,
            ServiceState::Failed => Status::Fail,
        };
        out.push(check(sv.name, status, sv.detail.clone()));
    }
    for (name, dir) in
        [("Free space: state", &config.paths.state_dir), ("Free space: images", &config.paths.images_dir)]
    {
        out.push(match free_space(dir) {
            Some((free, total)) => {
                let status = if free < LOW_SPACE_BYTES { Status::Warn } else { Status::Ok };
                check(
                    name,
                    status,
                    format!("{} free of {} in {}", human_bytes(free), human_bytes(total), dir.display()),
                )
            }
            None => check(name, Status::Fail, format!("cannot read {}", dir.display())),
        });
    }
    out.push(if default_password {
        check(
            "Admin password",
            Status::Fail,
            "the default password `bty` is still in use: change it on the Account page",
        )
    } else {
        check("Admin password", Status::Ok, "changed from the default")
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_words() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
        assert!(free_space(Path::new("/")).is_some_and(|(f, t)| f <= t && t > 0));
        assert!(free_space(Path::new("/no/such/dir")).is_none());
    }
}
