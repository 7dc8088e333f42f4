//! A read-only TFTP server for the iPXE binaries: RFC 1350 with the option
//! extension (RFC 2347) and the blksize, timeout, tsize and windowsize
//! options (RFC 2348, 2349, 7440), answering only the options asked for.
//!
//! One listening socket per local address (so a multi-homed appliance
//! answers each transfer from the address it was asked on), one socket per
//! transfer connected to the client, files served from memory through
//! [`crate::Host::boot_file`]. What firmware does that the RFCs do not
//! foresee is handled here: EDK2 asks for `tsize` and aborts with ERROR 8
//! before asking again (a *probe*, not a failure); clients repeat a request
//! whose answer they have not seen yet (the repeat is dropped); ACKs come
//! late or twice (only an ACK that moves the transfer on is acted on, so a
//! duplicate never doubles the traffic); block numbers pass 65,535 (they
//! roll over to 0, as tftp-hpa does); packets get lost (bounded retries
//! with a doubling timeout).

pub mod packet;

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::status::ServiceStatus;
use crate::Host;
use packet::{code, Packet};

/// The files this server hands out; anything else is "file not found".
pub const ALLOWED: [&str; 4] = ["undionly.kpxe", "undionly.kkpxe", "ipxe.efi", "snponly.efi"];

/// RFC 2348's range, and the default without the option.
const MIN_BLKSIZE: usize = 8;
const MAX_BLKSIZE: usize = 65464;
const DEFAULT_BLKSIZE: usize = 512;
/// IPv4 (20) + UDP (8) + TFTP (4) headers.
const HEADERS: usize = 32;
/// Larger windows gain nothing on a LAN and cost more on a loss.
pub const MAX_WINDOW: u16 = 8;
/// Requests that may wait for a transfer slot, per slot; more are dropped
/// unanswered (the client repeats its request).
const QUEUE_PER_SLOT: usize = 8;
/// How long a request waits for a slot: PXE ROMs repeat a request for
/// about this long before they give up on the server.
const QUEUE_WAIT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone)]
pub struct TftpConfig {
    /// Where to listen: one address, or unspecified (`0.0.0.0`) for every
    /// IPv4 address the host has when the server starts.
    pub address: IpAddr,
    pub port: u16,
    /// Transfers at once; more requests wait their turn (up to eight per
    /// transfer, for up to 20 s) and beyond that go unanswered.
    pub max_transfers: usize,
    /// Sends of one window before the transfer is given up.
    pub attempts: u32,
    /// First retransmission timeout when the client names none.
    pub timeout: Duration,
}

impl Default for TftpConfig {
    fn default() -> Self {
        TftpConfig {
            address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port: 69,
            max_transfers: 16384,
            attempts: 6,
            timeout: Duration::from_secs(1),
        }
    }
}

/// How a request ended, for metrics and the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every block acknowledged.
    Done,
    /// The client asked for options and then declined them (ERROR 8): the
    /// EDK2 size probe. It asks again right away.
    Probe,
    /// The client ended it with an error packet.
    Aborted(String),
    /// No acknowledgement after every retry.
    TimedOut,
    /// Not on the allow-list, or not in the boot directory.
    NotFound,
    /// Write requests, unknown modes, or the transfer cap reached.
    Refused(&'static str),
}

impl Outcome {
    /// The metrics label.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Done => "done",
            Outcome::Probe => "probe",
            Outcome::Aborted(_) => "aborted",
            Outcome::TimedOut => "timeout",
            Outcome::NotFound => "not_found",
            Outcome::Refused(_) => "refused",
        }
    }
}

/// One request and how it went, reported to [`Host::tftp_finished`].
#[derive(Debug, Clone)]
pub struct Transfer {
    pub peer: SocketAddr,
    pub local: IpAddr,
    pub file: String,
    pub outcome: Outcome,
    pub bytes: u64,
    pub blksize: usize,
    pub elapsed: Duration,
}

/// What the client asked for and what it gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub blksize: usize,
    pub windowsize: u16,
    pub timeout: Option<Duration>,
    /// The OACK to send (empty: no option was asked for, start with data).
    pub oack: Vec<(&'static str, String)>,
}

/// Answer only the options asked for, each within its bounds; unknown
/// options and values out of range are left out of the OACK (RFC 2347).
pub fn negotiate(requested: &[(&str, &str)], file_len: u64, max_blksize: usize) -> Negotiated {
    let mut n = Negotiated { blksize: DEFAULT_BLKSIZE, windowsize: 1, timeout: None, oack: Vec::new() };
    let max_blksize = max_blksize.clamp(DEFAULT_BLKSIZE, MAX_BLKSIZE);
    for (name, value) in requested {
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "blksize" => {
                if let Ok(v) = value.parse::<usize>() {
                    if v >= MIN_BLKSIZE {
                        n.blksize = v.min(max_blksize);
                        n.oack.push(("blksize", n.blksize.to_string()));
                    }
                }
            }
            // A read request carries 0; the answer is the file's size.
            "tsize" if value.parse::<u64>().is_ok() => n.oack.push(("tsize", file_len.to_string())),
            "timeout" => {
                if let Ok(v) = value.parse::<u64>() {
                    if (1..=255).contains(&v) {
                        n.timeout = Some(Duration::from_secs(v));
                        n.oack.push(("timeout", v.to_string()));
                    }
                }
            }
            "windowsize" => {
                if let Ok(v) = value.parse::<u32>() {
                    if (1..=65535).contains(&v) {
                        n.windowsize = (v as u16).min(MAX_WINDOW);
                        n.oack.push(("windowsize", n.windowsize.to_string()));
                    }
                }
            }
            _ => {}
        }
    }
    n
}

/// The name a client asked for, as the allow-list spells it: a leading
/// `/` (some firmware sends one) is dropped, anything with another `/`,
/// a `\` or `..` is not a boot file.
pub fn allowed_name(requested: &str) -> Option<&'static str> {
    let name = requested.strip_prefix('/').unwrap_or(requested);
    ALLOWED.iter().copied().find(|a| *a == name)
}

/// The largest block the link to `local` carries without fragments.
fn max_blksize_for(local: IpAddr) -> usize {
    let mtu = if_addrs::get_if_addrs()
        .ok()
        .and_then(|ifs| ifs.into_iter().find(|i| i.ip() == local))
        .and_then(|i| std::fs::read_to_string(format!("/sys/class/net/{}/mtu", i.name)).ok())
        .and_then(|s| s.trim().parse::<usize>().ok())
        .unwrap_or(1500);
    mtu.saturating_sub(HEADERS).clamp(DEFAULT_BLKSIZE, MAX_BLKSIZE)
}

/// Local addresses to listen on for `address`.
fn listen_addresses(address: IpAddr) -> std::io::Result<Vec<IpAddr>> {
    if !address.is_unspecified() {
        return Ok(vec![address]);
    }
    let mut v: Vec<IpAddr> =
        if_addrs::get_if_addrs()?.into_iter().map(|i| i.ip()).filter(|ip| ip.is_ipv4()).collect();
    v.sort();
    v.dedup();
    Ok(v)
}

/// A bound server, ready to [`run`](TftpServer::run).
pub struct TftpServer {
    sockets: Vec<(IpAddr, Arc<UdpSocket>)>,
    config: TftpConfig,
    host: Arc<dyn Host>,
    status: Arc<ServiceStatus>,
}

impl TftpServer {
    /// Bind the listening sockets; an error says which address failed and why
    /// (a port below 1024 needs `CAP_NET_BIND_SERVICE`).
    pub async fn bind(
        config: TftpConfig,
        host: Arc<dyn Host>,
        status: Arc<ServiceStatus>,
    ) -> Result<TftpServer, String> {
        let addrs = listen_addresses(config.address).map_err(|e| format!("cannot list addresses: {e}"))?;
        if addrs.is_empty() {
            return Err("no IPv4 address to listen on".into());
        }
        let mut sockets = Vec::new();
        for ip in addrs {
            let at = SocketAddr::new(ip, config.port);
            let s = UdpSocket::bind(at).await.map_err(|e| crate::status::bind_error("TFTP", at, &e))?;
            sockets.push((ip, Arc::new(s)));
        }
        let listening = sockets.iter().filter_map(|(_, s)| s.local_addr().ok()).collect();
        status.listening(listening);
        Ok(TftpServer { sockets, config, host, status })
    }

    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.sockets.iter().filter_map(|(_, s)| s.local_addr().ok()).collect()
    }

    /// Serve until the future is dropped; dropping it ends every transfer.
    pub async fn run(self) {
        let shared = Arc::new(Shared {
            config: self.config,
            host: self.host,
            status: self.status,
            permits: Arc::new(Semaphore::new(0)),
            queued: AtomicUsize::new(0),
            active: Mutex::new(HashSet::new()),
        });
        shared.permits.add_permits(shared.config.max_transfers.max(1));
        let mut listeners = JoinSet::new();
        for (ip, sock) in self.sockets {
            listeners.spawn(listen(shared.clone(), ip, sock));
        }
        while listeners.join_next().await.is_some() {}
    }
}

struct Shared {
    config: TftpConfig,
    host: Arc<dyn Host>,
    status: Arc<ServiceStatus>,
    permits: Arc<Semaphore>,
    /// Requests waiting for a permit.
    queued: AtomicUsize,
    /// Clients (address and port) with a transfer running: a repeated
    /// request from one of them is dropped, not answered twice.
    active: Mutex<HashSet<SocketAddr>>,
}

async fn listen(shared: Arc<Shared>, local: IpAddr, sock: Arc<UdpSocket>) {
    let max_blksize = max_blksize_for(local);
    let mut transfers = JoinSet::new();
    let mut buf = vec![0u8; 2048];
    loop {
        let (n, peer) = tokio::select! {
            r = sock.recv_from(&mut buf) => match r {
                Ok(r) => r,
                Err(e) => {
                    shared.status.error(format!("TFTP receive on {local}: {e}"));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            Some(_) = transfers.join_next(), if !transfers.is_empty() => continue,
        };
        shared.status.request(peer);
        let started = Instant::now();
        let report = |file: &str, outcome: Outcome| Transfer {
            peer,
            local,
            file: file.to_string(),
            outcome,
            bytes: 0,
            blksize: 0,
            elapsed: started.elapsed(),
        };
        let (write, filename, mode, options) = match packet::parse(&buf[..n]) {
            Ok(Packet::Request { write, filename, mode, options }) => (write, filename, mode, options),
            // Data, ACKs and errors belong to transfers, which have sockets
            // of their own; on the well-known port they are strays.
            Ok(_) => continue,
            Err(e) => {
                let _ = sock.send_to(&packet::error(code::ILLEGAL_OPERATION, &e.to_string()), peer).await;
                continue;
            }
        };
        if write {
            let _ =
                sock.send_to(&packet::error(code::ACCESS_VIOLATION, "this server is read-only"), peer).await;
            shared.host.tftp_finished(&report(filename, Outcome::Refused("write request")));
            continue;
        }
        if !mode.eq_ignore_ascii_case("octet") && !mode.eq_ignore_ascii_case("netascii") {
            let _ = sock.send_to(&packet::error(code::ILLEGAL_OPERATION, "mode must be octet"), peer).await;
            shared.host.tftp_finished(&report(filename, Outcome::Refused("mode")));
            continue;
        }
        let file = allowed_name(filename).and_then(|name| Some((name, shared.host.boot_file(name)?)));
        let Some((name, bytes)) = file else {
            let msg = format!("no such boot file; this server offers {}", ALLOWED.join(", "));
            let _ = sock.send_to(&packet::error(code::FILE_NOT_FOUND, &msg), peer).await;
            shared.host.tftp_finished(&report(filename, Outcome::NotFound));
            continue;
        };
        if !shared.active.lock().unwrap_or_else(|e| e.into_inner()).insert(peer) {
            continue;
        }
        // At the cap a request waits its turn (in order) instead of being
        // refused: firmware fails the boot on an error packet but repeats a
        // request that goes unanswered, and the repeats are dropped above.
        let queued = shared.queued.fetch_add(1, Ordering::Relaxed);
        if queued >= shared.config.max_transfers.max(1) * QUEUE_PER_SLOT {
            shared.queued.fetch_sub(1, Ordering::Relaxed);
            shared.active.lock().unwrap_or_else(|e| e.into_inner()).remove(&peer);
            shared.host.tftp_finished(&report(name, Outcome::Refused("busy")));
            continue;
        }
        let negotiated = negotiate(&options, bytes.len() as u64, max_blksize);
        let shared = shared.clone();
        transfers.spawn(async move {
            let permit = tokio::time::timeout(QUEUE_WAIT, shared.permits.clone().acquire_owned()).await;
            shared.queued.fetch_sub(1, Ordering::Relaxed);
            let Ok(Ok(permit)) = permit else {
                // The client has given up by now; it starts over with a new port.
                shared.active.lock().unwrap_or_else(|e| e.into_inner()).remove(&peer);
                shared.host.tftp_finished(&Transfer {
                    peer,
                    local,
                    file: name.to_string(),
                    outcome: Outcome::Refused("busy"),
                    bytes: 0,
                    blksize: 0,
                    elapsed: started.elapsed(),
                });
                return;
            };
            let (outcome, sent) = send_file(&shared.config, local, peer, &bytes, &negotiated).await;
            drop(permit);
            shared.active.lock().unwrap_or_else(|e| e.into_inner()).remove(&peer);
            if let Outcome::TimedOut = outcome {
                shared.status.error(format!("TFTP {name} to {peer}: no acknowledgement after every retry"));
            }
            shared.host.tftp_finished(&Transfer {
                peer,
                local,
                file: name.to_string(),
                outcome,
                bytes: sent,
                blksize: negotiated.blksize,
                elapsed: started.elapsed(),
            });
        });
    }
}

const GONE: &str = "the client closed its port (ICMP port unreachable)";

/// What came back while waiting for an acknowledgement.
enum Reply {
    Ack(u16),
    Error(u16, String),
    Timeout,
    /// ICMP port unreachable: the client closed its port (it gave up, or
    /// started over from another one).
    Gone,
}

async fn wait_reply(sock: &UdpSocket, timeout: Duration, buf: &mut [u8]) -> Reply {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, sock.recv(buf)).await {
            Err(_) => return Reply::Timeout,
            // ICMP port unreachable shows up as an error on a connected
            // socket; a transfer nobody listens to only holds a slot.
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Reply::Gone,
            Ok(Err(_)) => tokio::time::sleep_until(deadline).await,
            Ok(Ok(n)) => match packet::parse(&buf[..n]) {
                Ok(Packet::Ack { block }) => return Reply::Ack(block),
                Ok(Packet::Error { code, message }) => return Reply::Error(code, message.to_string()),
                _ => continue,
            },
        }
    }
}

/// Send `bytes` to `peer` from a socket of its own; returns how it ended and
/// the bytes acknowledged.
pub async fn send_file(
    config: &TftpConfig,
    local: IpAddr,
    peer: SocketAddr,
    bytes: &[u8],
    n: &Negotiated,
) -> (Outcome, u64) {
    let sock = match UdpSocket::bind(SocketAddr::new(local, 0)).await {
        Ok(s) => s,
        Err(_) => return (Outcome::Refused("no socket"), 0),
    };
    if sock.connect(peer).await.is_err() {
        return (Outcome::Refused("no route"), 0);
    }
    let first_timeout = n.timeout.unwrap_or(config.timeout);
    let mut buf = vec![0u8; 1024];
    let attempts = config.attempts.max(1);

    // The OACK is acknowledged with block 0 (or declined with ERROR 8).
    if !n.oack.is_empty() {
        let oack = packet::oack(&n.oack);
        let mut timeout = first_timeout;
        let mut acked = false;
        for _ in 0..attempts {
            let _ = sock.send(&oack).await;
            match wait_reply(&sock, timeout, &mut buf).await {
                Reply::Ack(0) => {
                    acked = true;
                    break;
                }
                Reply::Ack(_) => continue,
                Reply::Error(code::OPTION_REFUSED, _) => return (Outcome::Probe, 0),
                Reply::Error(_, m) => return (Outcome::Aborted(m), 0),
                Reply::Gone => return (Outcome::Aborted(GONE.into()), 0),
                Reply::Timeout => timeout = (timeout * 2).min(Duration::from_secs(8)),
            }
        }
        if !acked {
            return (Outcome::TimedOut, 0);
        }
    }

    let bs = n.blksize;
    // Blocks 1..=total; the last is shorter than bs (possibly empty).
    let total = bytes.len() as u64 / bs as u64 + 1;
    let block = |i: u64| {
        let start = ((i - 1) as usize * bs).min(bytes.len());
        &bytes[start..(start + bs).min(bytes.len())]
    };
    let window = u64::from(n.windowsize.max(1));
    let mut base = 1u64;
    let mut out = Vec::with_capacity(bs + 4);
    let mut timeout = first_timeout;
    let mut tries = 0;
    while base <= total {
        let last = (base + window - 1).min(total);
        for i in base..=last {
            let _ = sock.send(packet::data(&mut out, i as u16, block(i))).await;
        }
        // Wait for an ACK inside this window; duplicates and late ACKs of
        // earlier blocks are ignored (answering them would double the
        // traffic: the Sorcerer's Apprentice bug).
        loop {
            match wait_reply(&sock, timeout, &mut buf).await {
                Reply::Ack(k) => {
                    if let Some(i) = (base..=last).rev().find(|i| *i as u16 == k) {
                        base = i + 1;
                        tries = 0;
                        timeout = first_timeout;
                        break;
                    }
                }
                Reply::Error(_, m) => return (Outcome::Aborted(m), (base - 1) * bs as u64),
                Reply::Gone => return (Outcome::Aborted(GONE.into()), (base - 1) * bs as u64),
                Reply::Timeout => {
                    tries += 1;
                    if tries >= attempts {
                        let acked = ((base - 1) * bs as u64).min(bytes.len() as u64);
                        return (Outcome::TimedOut, acked);
                    }
                    timeout = (timeout * 2).min(Duration::from_secs(8));
                    break;
                }
            }
        }
    }
    (Outcome::Done, bytes.len() as u64)
}
