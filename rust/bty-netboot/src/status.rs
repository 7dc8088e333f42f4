//! What a running service tells the dashboard: on or off, where it listens,
//! when it last heard a request and from whom, and its last error in words.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::SystemTime;

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Not enabled.
    #[default]
    Off,
    /// Enabled and bound.
    Listening,
    /// Enabled but could not start (the reason is `last_error`).
    Failed,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Snapshot {
    pub state: State,
    pub listening: Vec<SocketAddr>,
    pub requests: u64,
    pub last_request_at: Option<SystemTime>,
    pub last_request_from: Option<SocketAddr>,
    pub errors: u64,
    pub last_error: Option<String>,
    /// How the wiring set the service up, in words (the interface it
    /// chose and why), shown next to where it listens.
    pub setup: Option<String>,
}

/// Shared between a service and whoever shows its state; cheap to update
/// from the hot path (one uncontended lock).
#[derive(Debug, Default)]
pub struct ServiceStatus {
    inner: Mutex<Snapshot>,
}

impl ServiceStatus {
    fn with(&self, f: impl FnOnce(&mut Snapshot)) {
        f(&mut self.inner.lock().unwrap_or_else(|e| e.into_inner()));
    }

    pub fn snapshot(&self) -> Snapshot {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn listening(&self, at: Vec<SocketAddr>) {
        self.with(|s| {
            s.state = State::Listening;
            s.listening = at;
            s.last_error = None;
        });
    }

    pub fn set_up(&self, how: String) {
        self.with(|s| s.setup = Some(how));
    }

    /// The service could not start: it is off, and says why.
    pub fn failed(&self, why: String) {
        self.with(|s| {
            s.state = State::Failed;
            s.listening.clear();
            s.setup = None;
            s.errors += 1;
            s.last_error = Some(why);
        });
    }

    pub fn stopped(&self) {
        self.with(|s| {
            s.state = State::Off;
            s.listening.clear();
            s.setup = None;
        });
    }

    pub fn request(&self, from: SocketAddr) {
        self.with(|s| {
            s.requests += 1;
            s.last_request_at = Some(SystemTime::now());
            s.last_request_from = Some(from);
        });
    }

    pub fn error(&self, what: String) {
        self.with(|s| {
            s.errors += 1;
            s.last_error = Some(what);
        });
    }
}

/// A bind failure in an operator's words: which service, which address,
/// and what to do about the usual causes.
pub fn bind_error(service: &str, at: SocketAddr, e: &std::io::Error) -> String {
    let hint = match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            format!("port {} in use (another DHCP/TFTP server such as dnsmasq runs here?)", at.port())
        }
        std::io::ErrorKind::PermissionDenied => format!(
            "no permission to bind port {} (ports below 1024 need root or CAP_NET_BIND_SERVICE)",
            at.port()
        ),
        std::io::ErrorKind::AddrNotAvailable => format!("{} is not an address of this host", at.ip()),
        _ => e.to_string(),
    };
    format!("{service} cannot listen on {at}: {hint}")
}
