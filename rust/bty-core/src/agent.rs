//! The live environment's side of the PXE contract: a small client for
//! `bty-web`'s open `/pxe/{mac}/...` routes, and the inventory it reports.
//! Used by `bty agent` and by `bty-tui --server`.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::mac::MacAddr;
use crate::wire::{
    FlashStatus, InventoryDisk, InventoryReport, Plan, PlanWorkflow, StatusReport, MAX_REASON_CHARS,
    OFFER_TOKEN_HEADER,
};

/// Settings the live environment receives on the kernel command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootArgs {
    pub server: Option<String>,
    pub mac: Option<String>,
    pub mode: Option<String>,
    /// The offer token (`bty.token=`) every report must carry.
    pub token: Option<String>,
    pub poweroff: bool,
}

impl BootArgs {
    /// Parse `bty.server=URL bty.mac=MAC bty.token=T bty.mode=interactive bty.poweroff=1`.
    pub fn parse(cmdline: &str) -> BootArgs {
        let mut a = BootArgs::default();
        for tok in cmdline.split_whitespace() {
            let Some((k, v)) = tok.split_once('=') else { continue };
            match k {
                "bty.server" => a.server = Some(v.to_string()),
                "bty.mac" => a.mac = Some(v.to_string()),
                "bty.mode" => a.mode = Some(v.to_string()),
                "bty.token" => a.token = Some(v.to_string()),
                "bty.poweroff" => a.poweroff = matches!(v, "1" | "yes" | "true"),
                _ => {}
            }
        }
        a
    }

    pub fn from_proc() -> Result<BootArgs> {
        let text = std::fs::read_to_string("/proc/cmdline")
            .map_err(|e| Error::io("cannot read /proc/cmdline", e))?;
        Ok(BootArgs::parse(&text))
    }
}

/// A client bound to one server and one machine.
#[derive(Clone)]
pub struct ServerClient {
    base: String,
    mac: MacAddr,
    offer_token: Option<String>,
    http: ureq::Agent,
}

impl ServerClient {
    /// `server` may be a bare host (`bty-server:8080`); `http://` is assumed.
    pub fn new(server: &str, mac: &str) -> Result<ServerClient> {
        let mac: MacAddr = mac.parse().map_err(|e| Error::usage(format!("{e}")))?;
        let mut base = server.trim().trim_end_matches('/').to_string();
        if base.is_empty() {
            return Err(Error::usage("the server URL is empty"));
        }
        if !base.contains("://") {
            base = format!("http://{base}");
        }
        Ok(ServerClient { base, mac, offer_token: None, http: crate::source::agent() })
    }

    /// The token of the offer that booted this live environment; the server
    /// refuses reports without it (HTTP 403).
    pub fn with_offer_token(mut self, token: Option<String>) -> ServerClient {
        self.offer_token = token.map(|t| t.trim().to_string()).filter(|t| !t.is_empty());
        self
    }

    pub fn offer_token(&self) -> Option<&str> {
        self.offer_token.as_deref()
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn mac(&self) -> MacAddr {
        self.mac
    }

    fn url(&self, tail: &str) -> String {
        format!("{}/pxe/{}{tail}", self.base, self.mac.hyphenated())
    }

    /// `GET /pxe/{mac}/plan`, retried while the network comes up.
    pub fn plan(&self, attempts: u32) -> Result<Plan> {
        let url = self.url("/plan");
        let mut last = None;
        for i in 0..attempts.max(1) {
            if i > 0 {
                std::thread::sleep(Duration::from_millis(500 * u64::from(i.min(6))));
            }
            match self.http.get(&url).call() {
                Ok(resp) if resp.status().is_success() => {
                    return resp.into_body().read_json::<Plan>().map_err(|e| {
                        Error::failure(format!("the server's plan at {url} is not valid: {e}"))
                    });
                }
                Ok(resp) => last = Some(format!("HTTP {}", resp.status().as_u16())),
                Err(e) => last = Some(e.to_string()),
            }
        }
        Err(Error::failure(format!(
            "cannot get the plan from {url}: {}; check the network and that bty-web is running",
            last.unwrap_or_default()
        )))
    }

    /// `GET /pxe/{mac}/workflow`: the offline workflow of this flash.
    pub fn workflow(&self) -> Result<PlanWorkflow> {
        let url = self.url("/workflow");
        let mut req = self.http.get(&url);
        if let Some(t) = &self.offer_token {
            req = req.header(OFFER_TOKEN_HEADER, t);
        }
        let resp = req.call().map_err(|e| Error::failure(format!("cannot reach {url}: {e}")))?;
        let status = resp.status().as_u16();
        if status != 200 {
            let text = resp.into_body().read_to_string().unwrap_or_default();
            return Err(Error::failure(format!("{url} answered HTTP {status}: {}", text.trim())));
        }
        resp.into_body()
            .read_json::<PlanWorkflow>()
            .map_err(|e| Error::failure(format!("the workflow at {url} is not valid: {e}")))
    }

    /// `POST /pxe/{mac}/cijoe`: an offline run's output (`tar.gz`), with
    /// cijoe's exit status or why it could not run. The server's answer
    /// (`{"run": id, "status": …}`).
    pub fn post_cijoe_report(
        &self,
        archive: &std::path::Path,
        exit: Option<i32>,
        reason: Option<&str>,
    ) -> Result<serde_json::Value> {
        let url = self.url("/cijoe");
        let f = std::fs::File::open(archive)
            .map_err(|e| Error::io(format!("cannot open {}", archive.display()), e))?;
        let mut req = self.http.post(&url).header("Content-Type", "application/gzip");
        if let Some(c) = exit {
            req = req.query("exit", c.to_string());
        }
        if let Some(r) = reason {
            req = req.query("reason", r.chars().take(MAX_REASON_CHARS).collect::<String>());
        }
        if let Some(t) = &self.offer_token {
            req = req.header(OFFER_TOKEN_HEADER, t);
        }
        let resp = req.send(f).map_err(|e| Error::failure(format!("cannot reach {url}: {e}")))?;
        let status = resp.status().as_u16();
        let text = resp.into_body().read_to_string().unwrap_or_default();
        if !(200..300).contains(&status) {
            return Err(Error::failure(format!("{url} answered HTTP {status}: {}", text.trim())));
        }
        Ok(serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
    }

    /// POST a report; on an HTTP error answer, its status with the error.
    fn post(
        &self,
        tail: &str,
        body: &impl serde::Serialize,
    ) -> std::result::Result<(), (Option<u16>, Error)> {
        let url = self.url(tail);
        let mut req = self.http.post(&url);
        if let Some(t) = &self.offer_token {
            req = req.header(OFFER_TOKEN_HEADER, t);
        }
        let resp =
            req.send_json(body).map_err(|e| (None, Error::failure(format!("cannot reach {url}: {e}"))))?;
        let status = resp.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(());
        }
        let text = resp.into_body().read_to_string().unwrap_or_default();
        let hint = match (status, &self.offer_token) {
            (403, None) => {
                " (this live environment has no offer token: boot it from bty-web, which puts bty.token= on the kernel command line)"
            }
            (403, Some(_)) => {
                " (the offer that booted this live environment has ended, or a newer boot of this machine replaced it)"
            }
            _ => "",
        };
        Err((Some(status), Error::failure(format!("{url} answered HTTP {status}: {}{hint}", text.trim()))))
    }

    fn post_json(&self, tail: &str, body: &impl serde::Serialize) -> Result<()> {
        self.post(tail, body).map_err(|(_, e)| e)
    }

    /// Report disks and hardware. When the `lshw` document makes the report
    /// larger than the server accepts (413), the report goes again without
    /// it: the disks are what the operator needs.
    pub fn post_inventory(&self, report: &InventoryReport) -> Result<()> {
        match self.post("/inventory", report) {
            Err((Some(413), _)) if report.lshw.is_some() => {
                let slim = InventoryReport { lshw: None, ..report.clone() };
                self.post_json("/inventory", &slim)
            }
            r => r.map_err(|(_, e)| e),
        }
    }

    /// `POST /pxe/{mac}/done`: the flash succeeded.
    pub fn post_done(&self, duration_s: Option<f64>, bytes: Option<u64>) -> Result<()> {
        let report =
            StatusReport { status: FlashStatus::Done, reason: None, duration_s, bytes_written: bytes };
        self.post_json("/done", &report)
    }

    /// Report the outcome of a flash. Reasons are cut to what the server accepts.
    pub fn post_status(
        &self,
        status: FlashStatus,
        reason: Option<&str>,
        duration_s: Option<f64>,
        bytes: Option<u64>,
    ) -> Result<()> {
        let reason = reason.map(|r| r.chars().take(MAX_REASON_CHARS).collect::<String>());
        self.post_json("/status", &StatusReport { status, reason, duration_s, bytes_written: bytes })
    }
}

/// Disks and hardware of this machine, read natively (`lshw -json` attached
/// when it is installed).
pub fn collect_inventory() -> Result<InventoryReport> {
    let disks = crate::disks::list_disks()?
        .into_iter()
        .filter(|d| d.transport.as_deref() != Some("loop"))
        .map(|d| InventoryDisk {
            path: d.path,
            size_bytes: Some(d.size_bytes),
            model: d.model,
            serial: d.serial,
            transport: d.transport,
            vendor: d.vendor,
            removable: d.removable,
            read_only: d.read_only,
        })
        .take(crate::wire::MAX_INVENTORY_DISKS)
        .collect();
    let hardware = serde_json::to_value(crate::hardware::summary()).ok();
    Ok(InventoryReport { disks, hardware, lshw: crate::hardware::lshw_json() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline() {
        let a = BootArgs::parse("console=ttyS0 bty.server=http://10.0.2.100 bty.mac=52-54-00-12-34-56 bty.token=abc123 bty.mode=interactive bty.poweroff=1 quiet");
        assert_eq!(a.token.as_deref(), Some("abc123"));
        assert_eq!(a.server.as_deref(), Some("http://10.0.2.100"));
        assert_eq!(a.mac.as_deref(), Some("52-54-00-12-34-56"));
        assert_eq!(a.mode.as_deref(), Some("interactive"));
        assert!(a.poweroff);
        assert_eq!(BootArgs::parse("root=/dev/sda"), BootArgs::default());
    }

    #[test]
    fn client_urls() {
        let c = ServerClient::new("bty-server:8080/", "52:54:00:AB:CD:EF").unwrap();
        assert_eq!(c.url("/plan"), "http://bty-server:8080/pxe/52-54-00-ab-cd-ef/plan");
        assert!(ServerClient::new("x", "nope").is_err());
    }
}
