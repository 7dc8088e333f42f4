//! JSON exchanged between `bty-web` and the agent in the live environment.
//!
//! Server → agent types ([`Plan`]) tolerate unknown fields so an older agent
//! keeps working against a newer server; agent → server types reject unknown
//! fields so a typo in a report is an error instead of silently lost data.

use serde::{Deserialize, Serialize};

/// Longest `reason` a status report may carry (characters).
pub const MAX_REASON_CHARS: usize = 500;
/// The header every `/pxe/{mac}/...` report carries: the one-time token of
/// the offer that booted the live environment (`bty.token=` on its kernel
/// command line).
pub const OFFER_TOKEN_HEADER: &str = "X-Bty-Offer-Token";
/// Most disks one inventory report may list.
pub const MAX_INVENTORY_DISKS: usize = 64;

/// What the live environment should do, as decided by the machine's policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlanMode {
    /// Write `image` to the disk with serial `target_disk_serial`, then report.
    Flash,
    /// Start the interactive flasher for an operator at the console.
    Interactive,
    /// Report disks and hardware, then reboot.
    Inventory,
    /// Nothing to do: reboot into the local disk.
    Local,
}

impl PlanMode {
    pub fn as_str(self) -> &'static str {
        match self {
            PlanMode::Flash => "flash",
            PlanMode::Interactive => "interactive",
            PlanMode::Inventory => "inventory",
            PlanMode::Local => "local",
        }
    }
}

/// The image a flash plan writes. `url` is always the server's own
/// `/images/{name}`, so the agent streams through the server whatever the origin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanImage {
    pub name: String,
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
}

/// `GET /pxe/{mac}/plan`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub mode: PlanMode,
    #[serde(default)]
    pub image: Option<PlanImage>,
    #[serde(default)]
    pub target_disk_serial: Option<String>,
    /// `none`, `cijoe-offline` or `cijoe-online`.
    pub provisioning_mode: String,
    pub server_version: String,
    /// The server's `catalog.toml`, for the interactive flasher's image list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catalog_url: Option<String>,
    /// Why the plan is not what the policy asked for (for the console).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `GET /pxe/{mac}/workflow` (with the offer token): the offline CIJOE
/// workflow of a `cijoe-offline` flash, its task YAML and optional config
/// TOML, to run for at most `timeout_s` seconds; its output goes to
/// `POST /pxe/{mac}/cijoe`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanWorkflow {
    pub name: String,
    pub task: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    pub timeout_s: u64,
    /// The image the flash wrote, and its SHA-256 when the catalog has one
    /// (`config.bty.image`, `config.bty.digest`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlashStatus {
    Done,
    Failed,
}

impl FlashStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            FlashStatus::Done => "done",
            FlashStatus::Failed => "failed",
        }
    }
}

/// `POST /pxe/{mac}/status` (and the body of `POST /pxe/{mac}/done`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusReport {
    pub status: FlashStatus,
    /// Why it failed; at most [`MAX_REASON_CHARS`] characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_written: Option<u64>,
}

impl StatusReport {
    /// Bounds the server enforces; the message names the field.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if let Some(r) = &self.reason {
            let n = r.chars().count();
            if n > MAX_REASON_CHARS {
                return Err(("reason", format!("is {n} characters long; the limit is {MAX_REASON_CHARS}")));
            }
        }
        if self.duration_s.is_some_and(|d| !d.is_finite() || d < 0.0) {
            return Err(("duration_s", "must be a non-negative number of seconds".into()));
        }
        Ok(())
    }
}

/// One disk as the agent saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InventoryDisk {
    pub path: String,
    #[serde(default)]
    pub size_bytes: Option<u64>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub serial: Option<String>,
    #[serde(default)]
    pub transport: Option<String>,
    #[serde(default)]
    pub vendor: Option<String>,
    #[serde(default)]
    pub removable: bool,
    #[serde(default)]
    pub read_only: bool,
}

/// `POST /pxe/{mac}/inventory`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InventoryReport {
    pub disks: Vec<InventoryDisk>,
    /// Summary from `bty_core::hardware` (CPU, memory, NICs).
    #[serde(default)]
    pub hardware: Option<serde_json::Value>,
    /// Raw `lshw -json` output, when the live environment has lshw.
    #[serde(default)]
    pub lshw: Option<serde_json::Value>,
}

impl InventoryReport {
    /// Bounds the server enforces on the structured part; the message names
    /// the field.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.disks.len() > MAX_INVENTORY_DISKS {
            return Err((
                "disks".into(),
                format!("lists {} disks; the limit is {MAX_INVENTORY_DISKS}", self.disks.len()),
            ));
        }
        for (i, d) in self.disks.iter().enumerate() {
            let fields: [(&str, Option<&str>, usize); 5] = [
                ("path", Some(d.path.as_str()), 255),
                ("model", d.model.as_deref(), 128),
                ("serial", d.serial.as_deref(), 128),
                ("transport", d.transport.as_deref(), 32),
                ("vendor", d.vendor.as_deref(), 64),
            ];
            for (name, value, max) in fields {
                if let Some(v) = value {
                    if v.len() > max {
                        return Err((format!("disks[{i}].{name}"), format!("is longer than {max} bytes")));
                    }
                }
            }
            if d.path.is_empty() {
                return Err((format!("disks[{i}].path"), "must not be empty".into()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_shape() {
        let plan = Plan {
            mode: PlanMode::Flash,
            image: Some(PlanImage {
                name: "deb".into(),
                url: "http://srv/images/deb".into(),
                sha256: None,
                format: Some("xz".into()),
                size_bytes: Some(3),
            }),
            target_disk_serial: Some("S1".into()),
            provisioning_mode: "none".into(),
            server_version: "0.1.0".into(),
            catalog_url: None,
            reason: None,
        };
        let v = serde_json::to_value(&plan).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"mode":"flash","image":{"name":"deb","url":"http://srv/images/deb","format":"xz","size_bytes":3},
                "target_disk_serial":"S1","provisioning_mode":"none","server_version":"0.1.0"})
        );
        // Newer servers may add fields; older agents must still read the plan.
        let mut v2 = v.clone();
        v2["something_new"] = serde_json::json!(1);
        assert_eq!(serde_json::from_value::<Plan>(v2).unwrap(), plan);
    }

    #[test]
    fn reports_are_strict() {
        assert!(serde_json::from_str::<StatusReport>(r#"{"status":"done","oops":1}"#).is_err());
        assert!(serde_json::from_str::<StatusReport>(r#"{"status":"maybe"}"#).is_err());
        let long = StatusReport {
            status: FlashStatus::Failed,
            reason: Some("x".repeat(501)),
            duration_s: None,
            bytes_written: None,
        };
        assert_eq!(long.validate().unwrap_err().0, "reason");
        let inv: InventoryReport =
            serde_json::from_str(r#"{"disks":[{"path":"/dev/sda","serial":"S1"}]}"#).unwrap();
        assert!(inv.validate().is_ok());
        assert!(!inv.disks[0].removable);
        let bad =
            InventoryReport { disks: vec![InventoryDisk { path: "".into(), ..inv.disks[0].clone() }], ..inv };
        assert_eq!(bad.validate().unwrap_err().0, "disks[0].path");
    }
}
