//! The network boot services (TFTP and ProxyDHCP from `bty-netboot`) wired
//! to this server: started and stopped as the operator's switches say (the
//! Settings page, `PUT /netboot/services/{name}`; `[tftp] enabled` and
//! `[proxy_dhcp] enabled` until a switch is used), and the
//! [`bty_netboot::Host`] they call back: boot files from the boot directory
//! held in memory, counters into `/metrics`, sightings and transfers into
//! the machine records and the audit log, written after the reply.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bty_core::mac::MacAddr;
use bty_netboot::dhcp::{ProxyConfig, ProxyServer, Sighting};
use bty_netboot::status::{ServiceStatus, Snapshot, State};
use bty_netboot::tftp::{self, Outcome, TftpServer, Transfer};
use serde_json::json;
use tokio::task::JoinHandle;

use crate::audit::{self, Actor, NewEvent};
use crate::config::Config;
use crate::db::Db;
use crate::health::{ServiceHealth, ServiceState};
use crate::settings::{self, Service};
use bty_control::metrics::Metrics;

/// Boot files larger than this are not iPXE binaries.
const MAX_BOOT_FILE: u64 = 16 << 20;
/// A client repeats DISCOVER and REQUEST within seconds; one record of it
/// per this long is enough.
const SIGHTING_EVERY: Duration = Duration::from_secs(30);
const SIGHTINGS_TRACKED: usize = 50_000;

/// A boot file held in memory, with what tells whether it is still current.
struct CachedFile {
    modified: SystemTime,
    len: u64,
    bytes: Arc<[u8]>,
}

/// The callbacks the services make, with what they need and nothing more.
pub struct ServerHost {
    db: Db,
    metrics: Arc<Metrics>,
    boot_dir: PathBuf,
    changes: tokio::sync::broadcast::Sender<MacAddr>,
    /// Boot files by name, re-read when the file changes.
    files: Mutex<HashMap<&'static str, CachedFile>>,
    recent: Mutex<HashMap<[u8; 6], Instant>>,
}

impl ServerHost {
    fn file_label(name: &str) -> &'static str {
        tftp::allowed_name(name).unwrap_or("other")
    }

    fn record(&self, e: NewEvent) {
        let db = self.db.clone();
        tokio::spawn(async move {
            if let Err(err) = audit::record(&db, e).await {
                tracing::warn!(error = %err, "cannot record a network boot event");
            }
        });
    }
}

impl bty_netboot::Host for ServerHost {
    fn boot_file(&self, name: &str) -> Option<Arc<[u8]>> {
        let name = tftp::allowed_name(name)?;
        let path = self.boot_dir.join(name);
        let meta = std::fs::metadata(&path).ok().filter(|m| m.is_file() && m.len() <= MAX_BOOT_FILE)?;
        let modified = meta.modified().ok()?;
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = files.get(name) {
            if f.modified == modified && f.len == meta.len() {
                return Some(f.bytes.clone());
            }
        }
        let bytes: Arc<[u8]> = std::fs::read(&path).ok()?.into();
        files.insert(name, CachedFile { modified, len: bytes.len() as u64, bytes: bytes.clone() });
        Some(bytes)
    }

    fn tftp_finished(&self, t: &Transfer) {
        let file = Self::file_label(&t.file);
        self.metrics.tftp(file, t.outcome.label());
        let ip = t.peer.ip().to_string();
        let details = json!({"file": t.file, "peer": t.peer.to_string(), "local": t.local.to_string(),
                             "result": t.outcome.label(), "bytes": t.bytes, "blksize": t.blksize,
                             "ms": t.elapsed.as_millis() as u64});
        let event = match &t.outcome {
            Outcome::Done => NewEvent::new(
                "netboot.tftp.served",
                Actor::PxeClient,
                format!("TFTP sent {} ({} bytes) to {ip}", t.file, t.bytes),
            ),
            Outcome::TimedOut | Outcome::Aborted(_) => NewEvent::new(
                "netboot.tftp.failed",
                Actor::PxeClient,
                match &t.outcome {
                    Outcome::Aborted(m) => {
                        format!("TFTP transfer of {} to {ip} aborted by the client: {m}", t.file)
                    }
                    _ => format!(
                        "TFTP transfer of {} to {ip} stopped: no acknowledgement after every retry \
                         (packet loss, or a firewall between the machine and this server)",
                        t.file
                    ),
                },
            ),
            Outcome::NotFound if file != "other" => NewEvent::new(
                "netboot.tftp.failed",
                Actor::PxeClient,
                format!(
                    "{ip} asked for {} over TFTP, which is not in the boot directory; \
                     install the iPXE binaries there (the `ipxe` package's files)",
                    t.file
                ),
            ),
            // Probes are the first half of a normal UEFI boot; refusals and
            // unknown names are counted in /metrics, not logged per packet.
            _ => return,
        };
        self.record(
            event
                .subject("tftp", file)
                .ip(Some(ip.clone()))
                .aggregate(format!("{ip}|{file}"))
                .details(details),
        );
    }

    fn dhcp_answered(&self, s: &Sighting) {
        self.metrics.dhcp(s.client.label(), s.boot_file.is_some());
        let now = Instant::now();
        {
            let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
            if recent.get(&s.mac).is_some_and(|t| now.duration_since(*t) < SIGHTING_EVERY) {
                return;
            }
            if recent.len() >= SIGHTINGS_TRACKED {
                recent.retain(|_, t| now.duration_since(*t) < SIGHTING_EVERY);
                if recent.len() >= SIGHTINGS_TRACKED {
                    recent.clear();
                }
            }
            recent.insert(s.mac, now);
        }
        let mac = MacAddr::new(s.mac);
        if !mac.is_unicast() {
            return;
        }
        let client = match s.client {
            bty_netboot::dhcp::Client::Unsupported(arch) => format!("unsupported architecture {arch}"),
            c => c.label().to_string(),
        };
        let sighting = crate::pxe::DhcpSighting {
            mac,
            ip: s.ip.map(|i| i.to_string()),
            client,
            boot_file: s.boot_file.clone(),
        };
        let db = self.db.clone();
        let changes = self.changes.clone();
        tokio::spawn(async move {
            match db.write(move |c| crate::pxe::record_dhcp_sighting(c, &sighting)).await {
                Ok(_) => {
                    let _ = changes.send(mac);
                }
                Err(e) => tracing::warn!(error = %e, %mac, "cannot record a ProxyDHCP sighting"),
            }
        });
    }
}

#[derive(Default)]
struct Running {
    tftp: Option<JoinHandle<()>>,
    proxy_dhcp: Option<JoinHandle<()>>,
}

/// The services, their switches and their state.
pub struct BootServices {
    config: Arc<Config>,
    db: Db,
    host: Arc<ServerHost>,
    pub tftp: Arc<ServiceStatus>,
    pub proxy_dhcp: Arc<ServiceStatus>,
    running: tokio::sync::Mutex<Running>,
    /// The HTTP port machines reach bty-web on (known once it listens).
    http_port: Mutex<u16>,
}

impl BootServices {
    pub fn new(
        config: Arc<Config>,
        db: Db,
        metrics: Arc<Metrics>,
        changes: tokio::sync::broadcast::Sender<MacAddr>,
    ) -> BootServices {
        let host = Arc::new(ServerHost {
            db: db.clone(),
            metrics,
            boot_dir: config.paths.boot_dir.clone(),
            changes,
            files: Mutex::new(HashMap::new()),
            recent: Mutex::new(HashMap::new()),
        });
        BootServices {
            http_port: Mutex::new(config.server.port),
            config,
            db,
            host,
            tftp: Arc::default(),
            proxy_dhcp: Arc::default(),
            running: tokio::sync::Mutex::new(Running::default()),
        }
    }

    pub fn set_http_port(&self, port: u16) {
        *self.http_port.lock().unwrap_or_else(|e| e.into_inner()) = port;
    }

    /// Whether `service` should run: the operator's switch, else the config.
    pub async fn wanted(&self, service: Service) -> bool {
        let switch = self.db.read(move |c| settings::service_switch(c, service)).await.ok().flatten();
        switch.unwrap_or(match service {
            Service::Tftp => self.config.tftp.enabled,
            Service::ProxyDhcp => self.config.proxy_dhcp.enabled,
        })
    }

    /// Start what should run and is not, stop what runs and should not.
    pub async fn apply(&self) {
        for service in Service::ALL {
            let want = self.wanted(service).await;
            let mut running = self.running.lock().await;
            let slot = match service {
                Service::Tftp => &mut running.tftp,
                Service::ProxyDhcp => &mut running.proxy_dhcp,
            };
            let status = self.status(service);
            match (want, slot.is_some()) {
                (true, false) => match self.start(service).await {
                    Ok(task) => {
                        *slot = Some(task);
                        let at = status.snapshot().listening;
                        tracing::info!(service = service.name(), listening = ?at, "network boot service started");
                    }
                    Err(why) => {
                        tracing::error!("{why}");
                        status.failed(why.clone());
                        let e = NewEvent::new("netboot.service.failed", Actor::System, why)
                            .subject("service", service.field())
                            .aggregate(service.field());
                        let _ = audit::record(&self.db, e).await;
                    }
                },
                (false, true) => {
                    if let Some(task) = slot.take() {
                        task.abort();
                        let _ = task.await;
                    }
                    status.stopped();
                    tracing::info!(service = service.name(), "network boot service stopped");
                }
                (false, false) => status.stopped(),
                (true, true) => {}
            }
        }
    }

    /// Stop everything (shutdown).
    pub async fn stop(&self) {
        let mut running = self.running.lock().await;
        for task in [running.tftp.take(), running.proxy_dhcp.take()].into_iter().flatten() {
            task.abort();
            let _ = task.await;
        }
    }

    pub fn status(&self, service: Service) -> &Arc<ServiceStatus> {
        match service {
            Service::Tftp => &self.tftp,
            Service::ProxyDhcp => &self.proxy_dhcp,
        }
    }

    /// The address ProxyDHCP tells clients to fetch from.
    fn advertise(&self) -> Result<(String, Ipv4Addr), String> {
        let p = &self.config.proxy_dhcp;
        let Some(interface) = p.interface.clone() else {
            return Err("ProxyDHCP needs an interface to answer on: set [proxy_dhcp] interface \
                        (BTY_PROXY_DHCP_INTERFACE), e.g. eth0"
                .into());
        };
        let address = match p.advertise_address {
            Some(a) => a,
            None => interface_ipv4(&interface).ok_or_else(|| {
                format!(
                    "ProxyDHCP: interface {interface} has no IPv4 address (or does not exist); give it one \
                     or set [proxy_dhcp] advertise_address"
                )
            })?,
        };
        Ok((interface, address))
    }

    async fn start(&self, service: Service) -> Result<JoinHandle<()>, String> {
        let host: Arc<dyn bty_netboot::Host> = self.host.clone();
        match service {
            Service::Tftp => {
                let t = &self.config.tftp;
                let cfg = tftp::TftpConfig {
                    address: IpAddr::V4(t.address),
                    port: t.port,
                    max_transfers: t.max_transfers,
                    ..tftp::TftpConfig::default()
                };
                let server = TftpServer::bind(cfg, host, self.tftp.clone()).await?;
                Ok(tokio::spawn(server.run()))
            }
            Service::ProxyDhcp => {
                let (interface, address) = self.advertise()?;
                let base = match &self.config.server.public_url {
                    Some(u) => u.clone(),
                    None => format!(
                        "http://{address}:{}",
                        *self.http_port.lock().unwrap_or_else(|e| e.into_inner())
                    ),
                };
                let mut cfg = ProxyConfig::new(Some(interface), address, base);
                cfg.efi_boot_file = self.config.proxy_dhcp.efi_boot_file.clone();
                let server = ProxyServer::bind(cfg, host, self.proxy_dhcp.clone()).await?;
                Ok(tokio::spawn(server.run()))
            }
        }
    }

    /// Each service's state for the dashboard and `GET /netboot/services`.
    pub fn health(&self) -> Vec<ServiceHealth> {
        Service::ALL.iter().map(|s| service_health(*s, &self.status(*s).snapshot())).collect()
    }
}

fn interface_ipv4(name: &str) -> Option<Ipv4Addr> {
    if_addrs::get_if_addrs().ok()?.into_iter().find_map(|i| match i.ip() {
        IpAddr::V4(a) if i.name == name => Some(a),
        _ => None,
    })
}

fn addrs(v: &[SocketAddr]) -> String {
    v.iter().map(SocketAddr::to_string).collect::<Vec<_>>().join(", ")
}

pub fn service_health(service: Service, s: &Snapshot) -> ServiceHealth {
    let state = match s.state {
        State::Off => ServiceState::Off,
        State::Listening => ServiceState::Listening,
        State::Failed => ServiceState::Failed,
    };
    let last = match (s.last_request_at, s.last_request_from) {
        (Some(t), Some(from)) => {
            let ago = t.elapsed().map(|d| d.as_secs()).unwrap_or(0);
            format!("; {} request(s), the last from {} {ago} s ago", s.requests, from.ip())
        }
        _ => "; no request yet".into(),
    };
    let detail = match s.state {
        State::Off => format!(
            "off: turn it on in Settings when bty-web should answer PXE firmware itself ([{}] enabled)",
            service.field()
        ),
        State::Listening => {
            let errors = match &s.last_error {
                Some(e) => format!("; {} error(s), the last: {e}", s.errors),
                None => String::new(),
            };
            format!("listening on {}{last}{errors}", addrs(&s.listening))
        }
        State::Failed => s.last_error.clone().unwrap_or_else(|| "failed to start".into()),
    };
    ServiceHealth {
        name: service.name(),
        field: service.field(),
        state,
        listening: s.listening.iter().map(SocketAddr::to_string).collect(),
        requests: s.requests,
        errors: s.errors,
        last_error: s.last_error.clone(),
        detail,
    }
}
