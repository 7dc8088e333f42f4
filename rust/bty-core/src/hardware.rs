//! Hardware summary for the agent's inventory, read from /proc and /sys.
//! Missing pieces are `None`, never errors: an inventory with gaps beats none.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct HardwareSummary {
    pub cpu_model: Option<String>,
    pub cpu_threads: u32,
    pub cpu_cores: Option<u32>,
    pub memory_bytes: Option<u64>,
    pub nics: Vec<Nic>,
    pub dmi: Dmi,
    pub kernel: Option<String>,
    pub arch: String,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Nic {
    pub name: String,
    pub mac: Option<String>,
    pub driver: Option<String>,
    pub speed_mbps: Option<u64>,
    pub operstate: Option<String>,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Dmi {
    pub sys_vendor: Option<String>,
    pub product_name: Option<String>,
    pub product_serial: Option<String>,
    pub board_vendor: Option<String>,
    pub board_name: Option<String>,
    pub bios_vendor: Option<String>,
    pub bios_version: Option<String>,
}

fn read(p: &Path) -> Option<String> {
    let s = std::fs::read_to_string(p).ok()?;
    let t = s.trim();
    (!t.is_empty()).then(|| t.to_string())
}

pub fn summary() -> HardwareSummary {
    summary_at(Path::new("/proc"), Path::new("/sys"))
}

/// The summary read from other roots (tests use fake trees).
pub fn summary_at(proc_root: &Path, sys_root: &Path) -> HardwareSummary {
    let cpuinfo = read(&proc_root.join("cpuinfo")).unwrap_or_default();
    let field = |line: &str, key: &str| {
        line.split_once(':').filter(|(k, _)| k.trim() == key).map(|(_, v)| v.trim().to_string())
    };
    let cpu_model = cpuinfo.lines().find_map(|l| field(l, "model name").or_else(|| field(l, "Model")));
    let cpu_threads = cpuinfo.lines().filter(|l| field(l, "processor").is_some()).count() as u32;
    let mut cores = std::collections::HashSet::new();
    let mut phys = String::new();
    for l in cpuinfo.lines() {
        if let Some(p) = field(l, "physical id") {
            phys = p;
        }
        if let Some(c) = field(l, "core id") {
            cores.insert((phys.clone(), c));
        }
    }
    let memory_bytes = read(&proc_root.join("meminfo")).and_then(|m| {
        m.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
    });
    let mut nics = Vec::new();
    let net = sys_root.join("class/net");
    if let Ok(rd) = std::fs::read_dir(&net) {
        for e in rd.flatten() {
            let dir: PathBuf = e.path();
            let name = e.file_name().to_string_lossy().to_string();
            // Physical NICs have a backing device; bridges, veths and lo do not.
            if name == "lo" || !dir.join("device").exists() {
                continue;
            }
            let driver = std::fs::read_link(dir.join("device/driver"))
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().to_string()));
            nics.push(Nic {
                mac: read(&dir.join("address")),
                driver,
                speed_mbps: read(&dir.join("speed"))
                    .and_then(|s| s.parse::<i64>().ok())
                    .filter(|&s| s > 0)
                    .map(|s| s as u64),
                operstate: read(&dir.join("operstate")),
                name,
            });
        }
    }
    nics.sort_by(|a, b| a.name.cmp(&b.name));
    let dmi_dir = sys_root.join("class/dmi/id");
    let d = |f: &str| read(&dmi_dir.join(f));
    HardwareSummary {
        cpu_model,
        cpu_threads,
        cpu_cores: (!cores.is_empty()).then_some(cores.len() as u32),
        memory_bytes,
        nics,
        dmi: Dmi {
            sys_vendor: d("sys_vendor"),
            product_name: d("product_name"),
            product_serial: d("product_serial"),
            board_vendor: d("board_vendor"),
            board_name: d("board_name"),
            bios_vendor: d("bios_vendor"),
            bios_version: d("bios_version"),
        },
        kernel: read(&proc_root.join("sys/kernel/osrelease")),
        arch: std::env::consts::ARCH.to_string(),
    }
}

/// `lshw -json` when lshw is installed: the one optional subprocess, because
/// its detail (firmware, buses) is worth attaching and not worth re-implementing.
pub fn lshw_json() -> Option<serde_json::Value> {
    let mut child = Command::new("lshw")
        .args(["-json", "-quiet"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let mut out = child.stdout.take()?;
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut out, &mut buf).ok().map(|_| buf)
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
    let buf = reader.join().ok()??;
    serde_json::from_slice(&buf).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_tree() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("proc");
        let s = t.path().join("sys");
        std::fs::create_dir_all(p.join("sys/kernel")).unwrap();
        std::fs::write(
            p.join("cpuinfo"),
            "processor\t: 0\nmodel name\t: Test CPU\nphysical id\t: 0\ncore id\t: 0\n\nprocessor\t: 1\nmodel name\t: Test CPU\nphysical id\t: 0\ncore id\t: 0\n",
        )
        .unwrap();
        std::fs::write(p.join("meminfo"), "MemTotal:        2048 kB\n").unwrap();
        std::fs::write(p.join("sys/kernel/osrelease"), "6.1.0\n").unwrap();
        std::fs::create_dir_all(s.join("class/net/eth0/device")).unwrap();
        std::fs::write(s.join("class/net/eth0/address"), "52:54:00:12:34:56\n").unwrap();
        std::fs::write(s.join("class/net/eth0/speed"), "-1\n").unwrap();
        std::fs::create_dir_all(s.join("class/net/lo")).unwrap();
        std::fs::create_dir_all(s.join("class/dmi/id")).unwrap();
        std::fs::write(s.join("class/dmi/id/sys_vendor"), "QEMU\n").unwrap();
        let h = summary_at(&p, &s);
        assert_eq!(h.cpu_model.as_deref(), Some("Test CPU"));
        assert_eq!(h.cpu_threads, 2);
        assert_eq!(h.cpu_cores, Some(1));
        assert_eq!(h.memory_bytes, Some(2048 * 1024));
        assert_eq!(h.nics.len(), 1);
        assert_eq!(h.nics[0].mac.as_deref(), Some("52:54:00:12:34:56"));
        assert_eq!(h.nics[0].speed_mbps, None);
        assert_eq!(h.dmi.sys_vendor.as_deref(), Some("QEMU"));
        assert_eq!(h.kernel.as_deref(), Some("6.1.0"));
    }

    #[test]
    fn host_summary() {
        let h = summary();
        assert!(h.cpu_threads >= 1);
        assert!(h.memory_bytes.unwrap_or(0) > 0);
    }
}
