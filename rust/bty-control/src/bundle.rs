//! The portable export bundle (`inventory.json`, version 3): what is expensive
//! to collect again — each machine's MAC, hardware summary, `lshw` and known
//! disks — and nothing else. Bindings, the catalog, the audit log and settings
//! stay behind on purpose: an import lands on a fresh server and the operator
//! binds machines again.

use std::path::{Path, PathBuf};

use anyhow::Context;
use bty_core::mac::MacAddr;
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::clock;

pub const EXPORT_VERSION: u32 = 3;
pub const ACCEPTED_VERSIONS: &[u32] = &[3];
pub const FILE_NAME: &str = "inventory.json";

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    pub bty_export_version: u32,
    pub exported_at: String,
    pub exported_by: String,
    pub machines: Vec<BundleMachine>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BundleMachine {
    pub mac: String,
    /// The hardware summary the live agent reported (CPU, memory, NICs, DMI).
    #[serde(default)]
    pub hardware: Option<Value>,
    /// `lshw -json` output, when the live environment had lshw.
    #[serde(default)]
    pub hw_lshw: Option<Value>,
    #[serde(default)]
    pub known_disks: Vec<Value>,
    #[serde(default)]
    pub inventory_at: Option<String>,
    #[serde(default)]
    pub discovered_at: Option<String>,
    #[serde(default)]
    pub last_seen_at: Option<String>,
}

/// What an import did.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct ImportReport {
    /// New machines (policy `inventory`, no binding).
    pub created: usize,
    /// Existing machines whose inventory was older or missing: hardware updated, binding kept.
    pub updated: usize,
    /// Existing machines with an inventory at least as new: left alone.
    pub unchanged: usize,
}

pub fn export(conn: &Connection) -> rusqlite::Result<Bundle> {
    let mut stmt = conn.prepare(
        "SELECT mac, inventory, lshw, inventory_at, discovered_at, last_seen_at FROM machines ORDER BY mac",
    )?;
    let machines = stmt
        .query_map([], |r| {
            let inventory: Option<String> = r.get(1)?;
            let lshw: Option<String> = r.get(2)?;
            let inv: Value = inventory.and_then(|s| serde_json::from_str(&s).ok()).unwrap_or(Value::Null);
            Ok(BundleMachine {
                mac: r.get(0)?,
                hardware: inv.get("hardware").filter(|v| !v.is_null()).cloned(),
                hw_lshw: lshw.and_then(|s| serde_json::from_str(&s).ok()),
                known_disks: inv.get("disks").and_then(Value::as_array).cloned().unwrap_or_default(),
                inventory_at: r.get(3)?,
                discovered_at: r.get(4)?,
                last_seen_at: r.get(5)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Bundle {
        bty_export_version: EXPORT_VERSION,
        exported_at: clock::now_rfc3339(),
        exported_by: format!("bty-web {}", crate::VERSION),
        machines,
    })
}

/// Write `DEST/inventory.json` (DEST is a directory, created if needed).
pub fn write(bundle: &Bundle, dest_dir: &Path) -> anyhow::Result<PathBuf> {
    crate::backup::create_private_dir(dest_dir)
        .with_context(|| format!("cannot create export directory {}", dest_dir.display()))?;
    let path = dest_dir.join(FILE_NAME);
    let tmp = dest_dir.join(format!(".{FILE_NAME}.partial"));
    let text = serde_json::to_vec_pretty(bundle).context("cannot serialise the bundle")?;
    // Owner-only like the state it comes from: it lists every machine's hardware.
    let _ = std::fs::remove_file(&tmp);
    let written = {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::File::options()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| f.write_all(&text))
    };
    written.with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::File::open(&tmp).and_then(|f| f.sync_all()).ok();
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// Read a bundle from a file or from a directory holding `inventory.json`,
/// checking its version and every MAC before anything is imported.
pub fn read(src: &Path) -> anyhow::Result<Bundle> {
    let path = if src.is_dir() { src.join(FILE_NAME) } else { src.to_path_buf() };
    let text = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    parse(&text).with_context(|| format!("{} is not an importable bundle", path.display()))
}

const TOP_FIELDS: &[&str] = &["bty_export_version", "exported_at", "exported_by", "machines"];
const MACHINE_FIELDS: &[&str] =
    &["mac", "hardware", "hw_lshw", "known_disks", "inventory_at", "discovered_at", "last_seen_at"];

fn kind(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) if s.len() <= 40 => format!("the string {s:?}"),
        Value::String(_) => "a string".into(),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

/// What a field may hold; `None` when `v` fits.
fn mismatch(v: &Value, want: &str) -> Option<String> {
    let fits = match want {
        "a string" => v.is_string(),
        "a string or null" => v.is_string() || v.is_null(),
        "an object or null" => v.is_object() || v.is_null(),
        "an object, an array or null" => v.is_object() || v.is_array() || v.is_null(),
        "an array of objects" => v.as_array().is_some_and(|a| a.iter().all(Value::is_object)),
        "an array" => v.is_array(),
        _ => unreachable!("a type named above"),
    };
    (!fits).then(|| format!("must be {want}, not {}", kind(v)))
}

fn check(path: String, v: Option<&Value>, want: &str, required: bool) -> Option<String> {
    match v {
        None => required.then(|| format!("{path}: missing")),
        Some(v) => mismatch(v, want).map(|m| format!("{path}: {m}")),
    }
}

/// Strict, like the import it guards: a field this version does not define,
/// or one of the wrong type, is refused by its path (`machines[2].mac`), all
/// of them at once, before anything is imported.
pub fn parse(text: &[u8]) -> anyhow::Result<Bundle> {
    let raw: Value = serde_json::from_slice(text).context("not valid JSON")?;
    let Some(top) = raw.as_object() else {
        anyhow::bail!("the bundle is {}, not a JSON object", kind(&raw));
    };
    let accepted = ACCEPTED_VERSIONS.iter().map(u32::to_string).collect::<Vec<_>>().join(", ");
    match top.get("bty_export_version") {
        Some(Value::Number(n)) if n.is_u64() => {
            let v = n.as_u64().expect("checked");
            if !u32::try_from(v).is_ok_and(|v| ACCEPTED_VERSIONS.contains(&v)) {
                anyhow::bail!(
                    "bundle version {v} is not supported: this bty-web imports bty_export_version {accepted}; \
                     export again with a matching bty-web"
                );
            }
        }
        Some(other) => anyhow::bail!(
            "bty_export_version must be an integer such as {EXPORT_VERSION}, not {}; nothing imported",
            kind(other)
        ),
        None => anyhow::bail!(
            "no bty_export_version field: this bty-web imports bty_export_version {accepted} \
             (the inventory.json that `bty-web export` writes)"
        ),
    }
    let mut problems = Vec::new();
    for name in ["exported_at", "exported_by"] {
        problems.extend(check(name.into(), top.get(name), "a string", true));
    }
    problems.extend(check("machines".into(), top.get("machines"), "an array", true));
    let unknown = |keys: &mut dyn Iterator<Item = &String>, known: &[&str], at: &str| -> Vec<String> {
        keys.filter(|k| !known.contains(&k.as_str()))
            .map(|k| format!("{at}{k}: unknown field (version 3 defines {})", known.join(", ")))
            .collect()
    };
    let mut extra = unknown(&mut top.keys(), TOP_FIELDS, "");
    let mut macs: std::collections::HashMap<MacAddr, usize> = std::collections::HashMap::new();
    for (i, m) in top.get("machines").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let Some(obj) = m.as_object() else {
            problems.push(format!("machines[{i}]: must be an object, not {}", kind(m)));
            continue;
        };
        extra.extend(unknown(&mut obj.keys(), MACHINE_FIELDS, &format!("machines[{i}].")));
        for (name, want, required) in [
            ("mac", "a string", true),
            ("hardware", "an object or null", false),
            ("hw_lshw", "an object, an array or null", false),
            ("known_disks", "an array of objects", false),
            ("inventory_at", "a string or null", false),
            ("discovered_at", "a string or null", false),
            ("last_seen_at", "a string or null", false),
        ] {
            problems.extend(check(format!("machines[{i}].{name}"), obj.get(name), want, required));
        }
        if let Some(text) = obj.get("mac").and_then(Value::as_str) {
            match text.parse::<MacAddr>() {
                Err(_) => problems.push(format!("machines[{i}].mac {text:?}: not a MAC address")),
                Ok(mac) => {
                    if let Some(first) = macs.insert(mac, i) {
                        problems.push(format!(
                            "machines[{i}].mac {text:?}: the same machine as machines[{first}]"
                        ));
                    }
                }
            }
        }
    }
    problems.extend(extra);
    if !problems.is_empty() {
        anyhow::bail!("{} problem(s), nothing imported: {}", problems.len(), problems.join("; "));
    }
    serde_json::from_value(raw).context("the bundle's fields do not match version 3")
}

/// Import inside the caller's transaction (all or nothing).
pub fn import(conn: &Connection, bundle: &Bundle) -> rusqlite::Result<ImportReport> {
    let now = clock::now_rfc3339();
    let mut report = ImportReport::default();
    for m in &bundle.machines {
        let mac = m.mac.parse::<MacAddr>().expect("checked by parse()").to_string();
        let has_inventory = m.hardware.is_some() || !m.known_disks.is_empty();
        let inventory = has_inventory
            .then(|| serde_json::json!({"disks": m.known_disks, "hardware": m.hardware}).to_string());
        let lshw = m.hw_lshw.as_ref().map(Value::to_string);
        let existing: Option<Option<String>> = conn
            .query_row("SELECT inventory_at FROM machines WHERE mac = ?1", [&mac], |r| r.get(0))
            .optional()?;
        match existing {
            None => {
                // Known hardware means no need to boot the inventory live
                // environment again: the machine boots its disk until re-armed.
                let state = if has_inventory { "inventoried" } else { "pending" };
                conn.execute(
                    "INSERT INTO machines (mac, policy, state, discovered_at, last_seen_at, inventory,
                                           inventory_at, lshw, created_at, updated_at)
                     VALUES (?1, 'inventory', ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)",
                    params![
                        mac,
                        state,
                        m.discovered_at,
                        m.last_seen_at,
                        inventory,
                        m.inventory_at,
                        lshw,
                        now
                    ],
                )?;
                report.created += 1;
            }
            Some(local_at) => {
                let newer = has_inventory
                    && match (&local_at, &m.inventory_at) {
                        (None, _) => true,
                        (Some(l), Some(b)) => b > l,
                        (Some(_), None) => false,
                    };
                if newer {
                    conn.execute(
                        "UPDATE machines SET inventory = ?2, inventory_at = ?3, lshw = coalesce(?4, lshw),
                                             updated_at = ?5 WHERE mac = ?1",
                        params![mac, inventory, m.inventory_at, lshw, now],
                    )?;
                    report.updated += 1;
                } else {
                    report.unchanged += 1;
                }
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(crate::db::MIGRATIONS[0]).unwrap();
        c
    }

    #[test]
    fn round_trip_keeps_hardware_and_drops_bindings() {
        let c = db();
        c.execute(
            "INSERT INTO machines (mac, policy, image, target_disk_serial, state, inventory, inventory_at, lshw,
                                   discovered_at, created_at, updated_at)
             VALUES ('52:54:00:00:00:01', 'flash', 'debian', 'S1', 'flashed',
                     '{\"disks\":[{\"path\":\"/dev/vda\",\"serial\":\"S1\"}],\"hardware\":{\"cpu_threads\":4}}',
                     '2026-01-01T00:00:00Z', '{\"id\":\"box\"}', '2025-12-01T00:00:00Z', 't', 't')",
            [],
        )
        .unwrap();
        let bundle = export(&c).unwrap();
        let text = serde_json::to_vec(&bundle).unwrap();
        let back = parse(&text).unwrap();
        assert_eq!(back.machines[0].known_disks[0]["serial"], "S1");
        let fresh = db();
        assert_eq!(import(&fresh, &back).unwrap(), ImportReport { created: 1, updated: 0, unchanged: 0 });
        let (policy, image, state, lshw): (String, Option<String>, String, String) = fresh
            .query_row("SELECT policy, image, state, lshw FROM machines", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .unwrap();
        assert_eq!((policy.as_str(), image, state.as_str()), ("inventory", None, "inventoried"));
        assert_eq!(lshw, "{\"id\":\"box\"}");
        // Importing the same bundle again changes nothing.
        assert_eq!(import(&fresh, &back).unwrap(), ImportReport { created: 0, updated: 0, unchanged: 1 });
    }

    #[test]
    fn parsing_is_strict_and_names_each_field() {
        let refused = |text: &str| parse(text.as_bytes()).unwrap_err().to_string();
        for v in [r#""3""#, "3.0", "-3", "null", "[3]"] {
            let e = refused(&format!(
                r#"{{"bty_export_version": {v}, "exported_at": "t", "exported_by": "x", "machines": []}}"#
            ));
            assert!(e.contains("bty_export_version must be an integer such as 3"), "{v}: {e}");
        }
        let e = refused(r#""just a string""#);
        assert!(e.contains("not a JSON object"), "{e}");
        let e = refused(
            r#"{"bty_export_version": 3, "exported_at": "t", "exported_by": "x", "extra": 1,
                "machines": [{"mac": "52:54:00:00:00:01"}, {"mac": "52:54:00:00:00:02"},
                             {"mac": 5, "hardware": [], "known_disks": [1], "inventory_at": 7, "colour": "red"},
                             {"mac": "52-54-00-00-00-01"}, "nope", {}]}"#,
        );
        for want in [
            "extra: unknown field",
            "machines[2].colour: unknown field",
            "machines[2].mac: must be a string, not the number 5",
            "machines[2].hardware: must be an object or null, not an array",
            "machines[2].known_disks: must be an array of objects",
            "machines[2].inventory_at: must be a string or null, not the number 7",
            "machines[3].mac \"52-54-00-00-00-01\": the same machine as machines[0]",
            "machines[4]: must be an object, not the string \"nope\"",
            "machines[5].mac: missing",
            "nothing imported",
        ] {
            assert!(e.contains(want), "{want} not in: {e}");
        }
        let e = refused(r#"{"bty_export_version": 3, "machines": {}}"#);
        assert!(
            e.contains("exported_at: missing") && e.contains("machines: must be an array, not an object"),
            "{e}"
        );
        // What export writes parses back, nulls included.
        let c = db();
        c.execute(
            "INSERT INTO machines (mac, created_at, updated_at) VALUES ('52:54:00:00:00:09', 't', 't')",
            [],
        )
        .unwrap();
        let text = serde_json::to_vec_pretty(&export(&c).unwrap()).unwrap();
        assert_eq!(parse(&text).unwrap().machines.len(), 1);
    }

    #[test]
    fn other_versions_and_bad_macs_are_refused_whole() {
        let e = parse(br#"{"bty_export_version": 2, "machines": []}"#).unwrap_err().to_string();
        assert!(e.contains("version 2 is not supported") && e.contains("bty_export_version 3"), "{e}");
        let e = parse(br#"{"machines": []}"#).unwrap_err().to_string();
        assert!(e.contains("no bty_export_version"), "{e}");
        let e = parse(
            br#"{"bty_export_version": 3, "exported_at": "t", "exported_by": "x",
                 "machines": [{"mac": "52:54:00:00:00:01"}, {"mac": "nope"}]}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("machines[1].mac \"nope\"") && e.contains("nothing imported"), "{e}");
    }
}
