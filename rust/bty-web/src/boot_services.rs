//! The network boot services (TFTP and ProxyDHCP from `bty-netboot`) wired
//! to this server: started and stopped as the operator's switches say (the
//! Settings page, `PUT /netboot/services/{name}`; `[tftp] enabled` and
//! `[proxy_dhcp] enabled` until a switch is used), and the
//! [`bty_netboot::Host`] they call back: boot files from the boot directory
//! held in memory, counters into `/metrics`, sightings and transfers into
//! the machine records and the audit log, written after the reply.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bty_core::mac::MacAddr;
use bty_netboot::dhcp::{ProxyConfig, ProxyServer, Sighting};
use bty_netboot::status::{ServiceStatus, Snapshot, State};
use bty_netboot::tftp::{self, Outcome, TftpServer, Transfer};
use serde_json::json;
use tokio::sync::oneshot;

use crate::audit::{self, Actor, NewEvent};
use crate::config::Config;
use crate::db::Db;
use crate::health::{ServiceHealth, ServiceState};
use crate::settings::{self, Service};
use bty_control::metrics::Metrics;

/// Boot files larger than this are not iPXE binaries.
const MAX_BOOT_FILE: u64 = 16 << 20;
/// A client repeats DISCOVER and REQUEST within seconds; one record of each
/// stage per this long is enough.
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
    /// The last sighting written per MAC: when, and of which kind of client.
    recent: Mutex<HashMap<[u8; 6], (Instant, &'static str)>>,
    /// The server's runtime: the services call back from threads of their
    /// own, and database work belongs here, not on theirs.
    runtime: tokio::runtime::Handle,
}

impl ServerHost {
    fn file_label(name: &str) -> &'static str {
        tftp::allowed_name(name).unwrap_or("other")
    }

    fn record(&self, e: NewEvent) {
        let db = self.db.clone();
        self.runtime.spawn(async move {
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
            // Repeats of one stage are coalesced; a new stage (the firmware's
            // PXE, then iPXE's own DHCP) is always written, so the record
            // shows how far the machine got.
            let stage = s.client.label();
            let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
            if recent
                .get(&s.mac)
                .is_some_and(|(t, seen)| *seen == stage && now.duration_since(*t) < SIGHTING_EVERY)
            {
                return;
            }
            if recent.len() >= SIGHTINGS_TRACKED {
                recent.retain(|_, (t, _)| now.duration_since(*t) < SIGHTING_EVERY);
                if recent.len() >= SIGHTINGS_TRACKED {
                    recent.clear();
                }
            }
            recent.insert(s.mac, (now, stage));
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
        self.runtime.spawn(async move {
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
    tftp: Option<ServiceThread>,
    proxy_dhcp: Option<ServiceThread>,
}

/// A service on a thread and a single-threaded runtime of its own: TFTP's
/// thousands of packets a second and ProxyDHCP's deadline (PXE firmware
/// waits about 2 s for an offer) never queue behind HTTP requests and
/// database work, nor behind each other, and a packet's wake-up stays on
/// one core instead of crossing the server's worker threads.
struct ServiceThread {
    stop: Option<oneshot::Sender<()>>,
    ended: oneshot::Receiver<()>,
}

impl ServiceThread {
    /// Start `service` on a new thread; it reports on `ready` whether it
    /// bound its sockets (they belong to the thread's runtime, so binding
    /// happens there too), then serves until stopped.
    async fn start<F, Fut>(name: &'static str, service: F) -> Result<ServiceThread, String>
    where
        F: FnOnce(oneshot::Sender<Result<(), String>>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let (ready_tx, ready) = oneshot::channel();
        let (stop, stop_rx) = oneshot::channel::<()>();
        let (ended_tx, ended) = oneshot::channel();
        std::thread::Builder::new()
            .name(format!("bty-{name}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("{name}: cannot start its runtime: {e}")));
                        return;
                    }
                };
                runtime.block_on(async move {
                    tokio::select! {
                        _ = service(ready_tx) => {}
                        _ = stop_rx => {}
                    }
                });
                // Dropping the runtime ends every transfer and closes its socket.
                drop(runtime);
                let _ = ended_tx.send(());
            })
            .map_err(|e| format!("{name}: cannot start its thread: {e}"))?;
        match ready.await {
            Ok(Ok(())) => Ok(ServiceThread { stop: Some(stop), ended }),
            Ok(Err(why)) => Err(why),
            Err(_) => Err(format!("{name}: its thread ended before it was ready")),
        }
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.ended).await;
    }
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
            runtime: tokio::runtime::Handle::current(),
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
                    if let Some(service) = slot.take() {
                        service.stop().await;
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
        for service in [running.tftp.take(), running.proxy_dhcp.take()].into_iter().flatten() {
            service.stop().await;
        }
    }

    pub fn status(&self, service: Service) -> &Arc<ServiceStatus> {
        match service {
            Service::Tftp => &self.tftp,
            Service::ProxyDhcp => &self.proxy_dhcp,
        }
    }

    /// The interface ProxyDHCP answers on and the address it tells clients
    /// to fetch from, with how they were chosen. Without `[proxy_dhcp]
    /// interface` the appliance picks the interface of the default route,
    /// else the only one with an IPv4 address, so that switching the
    /// service on in Settings works on a machine nobody configured.
    fn advertise(&self) -> Result<(String, Ipv4Addr, String), String> {
        let p = &self.config.proxy_dhcp;
        let (interface, why) = match p.interface.clone() {
            Some(i) => (i, "[proxy_dhcp] interface"),
            None => pick_interface(&ipv4_interfaces(), default_route_interface().as_deref())?,
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
        Ok((interface.clone(), address, format!("on {interface} ({why}), sending clients to {address}")))
    }

    async fn start(&self, service: Service) -> Result<ServiceThread, String> {
        let host: Arc<dyn bty_netboot::Host> = self.host.clone();
        match service {
            Service::Tftp => {
                let t = &self.config.tftp;
                // A transfer holds a socket: leave the other half of the
                // descriptors to HTTP, the database and upstream fetches.
                let fd_share = (crate::listener::fd_limit() / 2).max(1) as usize;
                if t.max_transfers > fd_share {
                    tracing::warn!(
                        "[tftp] max_transfers = {} is more than half the open-file limit; running at most {fd_share} \
                         transfers at once (raise LimitNOFILE / ulimit -n for more)",
                        t.max_transfers
                    );
                }
                let cfg = tftp::TftpConfig {
                    address: IpAddr::V4(t.address),
                    port: t.port,
                    max_transfers: t.max_transfers.min(fd_share),
                    ..tftp::TftpConfig::default()
                };
                let status = self.tftp.clone();
                ServiceThread::start("tftp", move |ready| async move {
                    match TftpServer::bind(cfg, host, status).await {
                        Ok(server) => {
                            let _ = ready.send(Ok(()));
                            server.run().await
                        }
                        Err(why) => {
                            let _ = ready.send(Err(why));
                        }
                    }
                })
                .await
            }
            Service::ProxyDhcp => {
                let (interface, address, setup) = self.advertise()?;
                let base = match &self.config.server.public_url {
                    Some(u) => u.clone(),
                    None => format!(
                        "http://{address}:{}",
                        *self.http_port.lock().unwrap_or_else(|e| e.into_inner())
                    ),
                };
                let mut cfg = ProxyConfig::new(Some(interface), address, base);
                cfg.efi_boot_file = self.config.proxy_dhcp.efi_boot_file.clone();
                let status = self.proxy_dhcp.clone();
                self.proxy_dhcp.set_up(setup);
                ServiceThread::start("proxydhcp", move |ready| async move {
                    match ProxyServer::bind(cfg, host, status).await {
                        Ok(server) => {
                            let _ = ready.send(Ok(()));
                            server.run().await
                        }
                        Err(why) => {
                            let _ = ready.send(Err(why));
                        }
                    }
                })
                .await
            }
        }
    }

    /// Each service's state for the dashboard and `GET /netboot/services`.
    pub fn health(&self) -> Vec<ServiceHealth> {
        Service::ALL.iter().map(|s| service_health(*s, &self.status(*s).snapshot())).collect()
    }
}

/// Up, non-loopback interfaces with an IPv4 address, by name.
fn ipv4_interfaces() -> Vec<String> {
    let mut v: Vec<String> = if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .filter(|i| i.ip().is_ipv4() && !i.is_loopback())
        .map(|i| i.name)
        .collect();
    v.sort();
    v.dedup();
    v
}

/// The interface of the IPv4 default route (`/proc/net/route`).
fn default_route_interface() -> Option<String> {
    let table = std::fs::read_to_string("/proc/net/route").ok()?;
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 2 && f[1] == "00000000").then(|| f[0].to_string())
    })
}

/// The interface ProxyDHCP answers on when none is configured.
fn pick_interface(
    candidates: &[String],
    default_route: Option<&str>,
) -> Result<(String, &'static str), String> {
    if let Some(d) = default_route.filter(|d| candidates.iter().any(|c| c == d)) {
        return Ok((d.to_string(), "the default route's interface"));
    }
    match candidates {
        [only] => Ok((only.clone(), "the only interface with an IPv4 address")),
        [] => Err("ProxyDHCP: no interface has an IPv4 address yet; give the LAN interface one (the LAN's \
                   DHCP server) or set [proxy_dhcp] interface (BTY_PROXY_DHCP_INTERFACE)"
            .into()),
        many => Err(format!(
            "ProxyDHCP: several interfaces have IPv4 addresses ({}) and none holds the default route; set \
             [proxy_dhcp] interface (BTY_PROXY_DHCP_INTERFACE) to the one PXE clients are on",
            many.join(", ")
        )),
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
            let setup = s.setup.as_ref().map(|h| format!(" {h}")).unwrap_or_default();
            format!("listening on {}{setup}{last}{errors}", addrs(&s.listening))
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

#[cfg(test)]
mod tests {
    use super::pick_interface;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn an_unconfigured_appliance_answers_on_its_default_route_or_its_only_interface() {
        let two = names(&["eth0", "eth1"]);
        assert_eq!(pick_interface(&two, Some("eth1")).unwrap().0, "eth1");
        assert_eq!(pick_interface(&names(&["enp1s0"]), None).unwrap().0, "enp1s0");
        // A default route through an interface without IPv4 (a tunnel) does not count.
        assert_eq!(pick_interface(&names(&["enp1s0"]), Some("wg0")).unwrap().0, "enp1s0");
        let e = pick_interface(&two, None).unwrap_err();
        assert!(e.contains("eth0, eth1") && e.contains("[proxy_dhcp] interface"), "{e}");
        assert!(pick_interface(&[], None).unwrap_err().contains("no interface"));
    }
}
