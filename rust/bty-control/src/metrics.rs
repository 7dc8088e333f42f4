//! Prometheus counters kept in memory (a hot PXE path must not write a
//! counter row per request), rendered in text format for `GET /metrics`.
//! Machine counts by policy are read from the database at scrape time.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

#[derive(Default)]
pub struct Metrics {
    /// (method, route template, status) → count; methods and routes from
    /// fixed sets.
    requests: Mutex<BTreeMap<(&'static str, &'static str, u16), u64>>,
    /// (policy, offer) → count.
    offers: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    pub flashes_done: AtomicU64,
    pub flashes_failed: AtomicU64,
    pub inventories: AtomicU64,
    pub discovered: AtomicU64,
    /// Reports refused for want of the current offer's token.
    pub reports_refused: AtomicU64,
    /// (file, result) → TFTP requests; files from the allow-list or `other`.
    tftp: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    /// (client kind, answered or not) → ProxyDHCP requests.
    dhcp: Mutex<BTreeMap<(&'static str, bool), u64>>,
}

impl Metrics {
    pub fn offer(&self, policy: &'static str, offer: &'static str) {
        *self.offers.lock().unwrap_or_else(|e| e.into_inner()).entry((policy, offer)).or_default() += 1;
    }

    /// Count a response; `method` and `route` come from fixed sets (the
    /// HTTP front interns them), so the label set stays bounded.
    pub fn request(&self, method: &'static str, route: &'static str, status: u16) {
        let key = (method, route, status);
        *self.requests.lock().unwrap_or_else(|e| e.into_inner()).entry(key).or_default() += 1;
    }

    pub fn tftp(&self, file: &'static str, result: &'static str) {
        *self.tftp.lock().unwrap_or_else(|e| e.into_inner()).entry((file, result)).or_default() += 1;
    }

    pub fn dhcp(&self, client: &'static str, answered: bool) {
        *self.dhcp.lock().unwrap_or_else(|e| e.into_inner()).entry((client, answered)).or_default() += 1;
    }

    pub fn render(&self, machines_by_policy: &[(String, i64)], unacked_events: i64) -> String {
        let mut out = String::new();
        out.push_str("# HELP bty_http_requests_total HTTP requests by method, route template and status.\n");
        out.push_str("# TYPE bty_http_requests_total counter\n");
        for ((m, r, s), n) in self.requests.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ =
                writeln!(out, "bty_http_requests_total{{method=\"{m}\",route=\"{r}\",status=\"{s}\"}} {n}");
        }
        out.push_str("# HELP bty_pxe_offers_total PXE scripts served by machine policy and offer.\n");
        out.push_str("# TYPE bty_pxe_offers_total counter\n");
        for ((p, o), n) in self.offers.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = writeln!(out, "bty_pxe_offers_total{{policy=\"{p}\",offer=\"{o}\"}} {n}");
        }
        out.push_str("# HELP bty_flashes_total Flash reports by result.\n# TYPE bty_flashes_total counter\n");
        let _ = writeln!(
            out,
            "bty_flashes_total{{result=\"done\"}} {}",
            self.flashes_done.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "bty_flashes_total{{result=\"failed\"}} {}",
            self.flashes_failed.load(Ordering::Relaxed)
        );
        out.push_str("# HELP bty_inventories_total Inventory reports received.\n# TYPE bty_inventories_total counter\n");
        let _ = writeln!(out, "bty_inventories_total {}", self.inventories.load(Ordering::Relaxed));
        out.push_str(
            "# HELP bty_pxe_reports_refused_total Reports refused: no, an old or another machine's offer token.\n\
             # TYPE bty_pxe_reports_refused_total counter\n",
        );
        let _ =
            writeln!(out, "bty_pxe_reports_refused_total {}", self.reports_refused.load(Ordering::Relaxed));
        out.push_str("# HELP bty_machines_discovered_total Unknown MACs recorded since start.\n");
        out.push_str("# TYPE bty_machines_discovered_total counter\n");
        let _ = writeln!(out, "bty_machines_discovered_total {}", self.discovered.load(Ordering::Relaxed));
        out.push_str("# HELP bty_tftp_requests_total TFTP read requests by file and result.\n");
        out.push_str("# TYPE bty_tftp_requests_total counter\n");
        for ((f, r), n) in self.tftp.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = writeln!(out, "bty_tftp_requests_total{{file=\"{f}\",result=\"{r}\"}} {n}");
        }
        out.push_str("# HELP bty_proxy_dhcp_requests_total ProxyDHCP requests from PXE clients by kind.\n");
        out.push_str("# TYPE bty_proxy_dhcp_requests_total counter\n");
        for ((c, a), n) in self.dhcp.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = writeln!(out, "bty_proxy_dhcp_requests_total{{client=\"{c}\",answered=\"{a}\"}} {n}");
        }
        out.push_str("# HELP bty_machines Machines by policy.\n# TYPE bty_machines gauge\n");
        for p in crate::policy::Policy::ALL {
            let n =
                machines_by_policy.iter().find(|(name, _)| name == p.as_str()).map(|(_, n)| *n).unwrap_or(0);
            let _ = writeln!(out, "bty_machines{{policy=\"{}\"}} {n}", p.as_str());
        }
        out.push_str("# HELP bty_events_unacknowledged Audit events waiting for acknowledgement.\n");
        out.push_str("# TYPE bty_events_unacknowledged gauge\n");
        let _ = writeln!(out, "bty_events_unacknowledged {unacked_events}");
        out
    }
}
