//! The boot storm's clients (`bench/netboot.sh` runs this inside its
//! clients' network namespace): N simulated BIOS PXE clients, each doing
//! what a PXE ROM does, against whatever answers ProxyDHCP and TFTP on the
//! segment (bty-web, or dnsmasq as the anchor):
//!
//! 1. DISCOVER, broadcast, with options 60/93/97, until an OFFER from the
//!    server (4 tries, 2 s more patience each time);
//! 2. REQUEST to the server's port 4011, until an ACK (4 tries);
//! 3. TFTP read of the boot file at the given blksize, each block
//!    acknowledged, the last ACK (or the request) repeated after 2 s of
//!    silence, given up after 5 silences in a row;
//! 4. with `--http PORT`, `GET /pxe/{mac}` on the server.
//!
//! One thread for every client and one socket each, so the clients cost the machine
//! as little as possible and the servers' cost is what the figures show.
//! Prints one JSON object: completions, failures by phase, p50/p99 per
//! phase in milliseconds, and duplicate data blocks seen (the servers'
//! retransmissions).
//!
//! ```text
//! boot_storm SERVER CLIENT_IP INTERFACE N [--ramp S] [--http PORT] [--blksize B] [--bytes N]
//! ```

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bty_netboot::dhcp::packet::{self as dhcp, msg, opt, Message};
use bty_netboot::tftp::packet::{self as tftp, Packet};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::mpsc;

const VENDOR: &[u8] = b"PXEClient:Arch:00000:UNDI:002001";
const PHASES: [&str; 5] = ["dhcp", "pxe4011", "tftp", "http", "total"];

struct Args {
    server: Ipv4Addr,
    client_ip: Ipv4Addr,
    interface: String,
    clients: u32,
    ramp: Duration,
    http: Option<u16>,
    blksize: usize,
    bytes: Option<u64>,
}

fn args() -> Result<Args, String> {
    let v: Vec<String> = std::env::args().skip(1).collect();
    let usage =
        "usage: boot_storm SERVER CLIENT_IP INTERFACE N [--ramp S] [--http PORT] [--blksize B] [--bytes N]";
    if v.len() < 4 {
        return Err(usage.into());
    }
    let bad = |what: &str, s: &str| format!("{what}: cannot read {s:?}; {usage}");
    let mut a = Args {
        server: v[0].parse().map_err(|_| bad("SERVER", &v[0]))?,
        client_ip: v[1].parse().map_err(|_| bad("CLIENT_IP", &v[1]))?,
        interface: v[2].clone(),
        clients: v[3].parse().map_err(|_| bad("N", &v[3]))?,
        ramp: Duration::from_secs(2),
        http: None,
        blksize: 1468,
        bytes: None,
    };
    let mut rest = v[4..].iter();
    while let Some(flag) = rest.next() {
        let value = rest.next().ok_or_else(|| format!("{flag} needs a value; {usage}"))?;
        match flag.as_str() {
            "--ramp" => a.ramp = Duration::from_secs_f64(value.parse().map_err(|_| bad(flag, value))?),
            "--http" => a.http = Some(value.parse().map_err(|_| bad(flag, value))?),
            "--blksize" => a.blksize = value.parse().map_err(|_| bad(flag, value))?,
            "--bytes" => a.bytes = Some(value.parse().map_err(|_| bad(flag, value))?),
            _ => return Err(format!("unknown option {flag}; {usage}")),
        }
    }
    Ok(a)
}

#[derive(Default)]
struct Tally {
    samples: HashMap<&'static str, Vec<Duration>>,
    failures: HashMap<&'static str, u32>,
    duplicate_blocks: u64,
}

struct Storm {
    args: Args,
    /// Clients waiting for an offer, by transaction id.
    waiting: Mutex<HashMap<u32, mpsc::UnboundedSender<Vec<u8>>>>,
    broadcast: UdpSocket,
    tally: Mutex<Tally>,
}

fn broadcast_socket(interface: &str) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.set_broadcast(true)?;
    s.bind_device(Some(interface.as_bytes()))?;
    // Ten thousand offers arrive within seconds.
    s.set_recv_buffer_size(16 << 20)?;
    s.set_nonblocking(true)?;
    s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, 68)).into())?;
    UdpSocket::from_std(s.into())
}

/// A request as a BIOS PXE ROM sends it; `item` is the boot item picked
/// from an offer's menu (option 43, suboption 71), for a server that
/// offered one (dnsmasq's `pxe-service`).
fn request(kind: u8, xid: u32, mac: [u8; 6], ciaddr: Ipv4Addr, item: Option<[u8; 2]>) -> Vec<u8> {
    let arch = [0u8, 0];
    let mut uuid = [0u8; 17];
    uuid[1..7].copy_from_slice(&mac);
    let kind = [kind];
    let boot_item = item.map(|t| [71, 4, t[0], t[1], 0, 0, opt::END]);
    let mut options = vec![
        (opt::MESSAGE_TYPE, &kind[..]),
        (opt::VENDOR_CLASS, VENDOR),
        (opt::CLIENT_ARCH, &arch),
        (opt::CLIENT_UUID, &uuid),
    ];
    if let Some(b) = &boot_item {
        options.push((opt::VENDOR_SPECIFIC, b));
    }
    let mut m = Message::request(mac, xid, options);
    m.ciaddr = ciaddr;
    m.encode()
}

/// The first boot item type of an offer's PXE menu (option 43, suboption 9).
fn menu_item(data: &[u8]) -> Option<[u8; 2]> {
    let v = dhcp::parse(data).ok()?.option(opt::VENDOR_SPECIFIC)?;
    let mut j = 0;
    while j + 1 < v.len() && v[j] != opt::END {
        let len = v[j + 1] as usize;
        if v[j] == 9 && len >= 2 && j + 3 < v.len() {
            return Some([v[j + 2], v[j + 3]]);
        }
        j += 2 + len;
    }
    None
}

/// The reply's message type and boot file, when it comes from `server`.
fn reply_from(data: &[u8], server: Ipv4Addr) -> Option<(u8, String)> {
    let m = dhcp::parse(data).ok()?;
    let from =
        m.option(opt::SERVER_ID).filter(|v| v.len() == 4).map(|v| Ipv4Addr::new(v[0], v[1], v[2], v[3]));
    if from != Some(server) {
        return None;
    }
    let mut file = dhcp::field_text(m.file).to_string();
    if file.is_empty() {
        if let Some(v) = m.option(opt::BOOTFILE) {
            file = dhcp::field_text(&v).to_string();
        }
    }
    Some((m.message_type()?, file))
}

impl Storm {
    fn sample(&self, phase: &'static str, d: Duration) {
        self.tally.lock().unwrap().samples.entry(phase).or_default().push(d);
    }

    async fn dispatch(self: Arc<Self>) {
        let mut buf = vec![0u8; 1500];
        loop {
            let Ok((n, _)) = self.broadcast.recv_from(&mut buf).await else { continue };
            if n < 240 {
                continue;
            }
            let xid = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
            if let Some(tx) = self.waiting.lock().unwrap().get(&xid) {
                let _ = tx.send(buf[..n].to_vec());
            }
        }
    }

    async fn client(self: Arc<Self>, i: u32) -> Result<(), &'static str> {
        // Spread power-on over the ramp without a random number generator.
        let spread = (u64::from(i).wrapping_mul(2_654_435_761) % 1_000_000) as f64 / 1e6;
        tokio::time::sleep(self.args.ramp.mul_f64(spread)).await;
        let mac = [0x52, 0x54, 0x01, (i >> 16) as u8, (i >> 8) as u8, i as u8];
        let xid = 0x1000_0000 + i;
        let server = self.args.server;
        let t0 = Instant::now();

        let (tx, mut rx) = mpsc::unbounded_channel();
        self.waiting.lock().unwrap().insert(xid, tx);
        let discover = request(msg::DISCOVER, xid, mac, Ipv4Addr::UNSPECIFIED, None);
        let mut offered = None;
        'tries: for attempt in 0..4u32 {
            let _ = self.broadcast.send_to(&discover, (Ipv4Addr::BROADCAST, 67)).await;
            let end = tokio::time::Instant::now() + Duration::from_secs(u64::from(2 + attempt * 2));
            while let Ok(Some(data)) = tokio::time::timeout_at(end, rx.recv()).await {
                if let Some((msg::OFFER, file)) = reply_from(&data, server) {
                    offered = Some((file, menu_item(&data)));
                    break 'tries;
                }
            }
        }
        self.waiting.lock().unwrap().remove(&xid);
        let Some((offered, item)) = offered else { return Err("dhcp") };
        let t1 = Instant::now();
        self.sample("dhcp", t1 - t0);

        let sock = UdpSocket::bind((self.args.client_ip, 0)).await.map_err(|_| "socket")?;
        let req = request(msg::REQUEST, xid, mac, self.args.client_ip, item);
        let mut buf = vec![0u8; 65536];
        let mut acked = None;
        'ask: for attempt in 0..4u64 {
            let _ = sock.send_to(&req, (server, 4011)).await;
            let end = tokio::time::Instant::now() + Duration::from_secs(1 + attempt);
            while let Ok(Ok((n, _))) = tokio::time::timeout_at(end, sock.recv_from(&mut buf)).await {
                if let Some((msg::ACK, file)) = reply_from(&buf[..n], server) {
                    acked = Some(file);
                    break 'ask;
                }
            }
        }
        let Some(acked) = acked else { return Err("pxe4011") };
        let t2 = Instant::now();
        self.sample("pxe4011", t2 - t1);

        let file = if acked.is_empty() { offered } else { acked };
        let got = self.tftp(&sock, &file, &mut buf).await;
        if got.is_none() || self.args.bytes.is_some_and(|b| got != Some(b)) {
            return Err("tftp");
        }
        let t3 = Instant::now();
        self.sample("tftp", t3 - t2);

        if let Some(port) = self.args.http {
            let mac = mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
            let get = async {
                let mut s = TcpStream::connect((server, port)).await.ok()?;
                let req =
                    format!("GET /pxe/{mac} HTTP/1.1\r\nHost: {server}:{port}\r\nConnection: close\r\n\r\n");
                s.write_all(req.as_bytes()).await.ok()?;
                let mut body = Vec::new();
                s.read_to_end(&mut body).await.ok()?;
                body.starts_with(b"HTTP/1.1 200").then_some(())
            };
            if tokio::time::timeout(Duration::from_secs(20), get).await.ok().flatten().is_none() {
                return Err("http");
            }
            self.sample("http", t3.elapsed());
        }
        self.sample("total", t0.elapsed());
        Ok(())
    }

    /// The bytes received, or `None` when the transfer failed.
    async fn tftp(&self, sock: &UdpSocket, file: &str, buf: &mut [u8]) -> Option<u64> {
        let blksize = self.args.blksize.to_string();
        let rrq = tftp::request(false, file, "octet", &[("blksize", &blksize)]);
        let server = SocketAddr::from((self.args.server, 69));
        let _ = sock.send_to(&rrq, server).await;
        let (mut size, mut expect, mut block_len) = (0u64, 1u16, 512usize);
        let mut peer: Option<SocketAddr> = None;
        let mut last: Option<[u8; 4]> = None;
        let mut silences = 0;
        let mut duplicates = 0u64;
        let result = loop {
            let (n, from) = match tokio::time::timeout(Duration::from_secs(2), sock.recv_from(buf)).await {
                Ok(Ok(r)) => r,
                Ok(Err(_)) => break None,
                Err(_) => {
                    silences += 1;
                    if silences > 5 {
                        break None;
                    }
                    match last {
                        Some(ack) => sock.send_to(&ack, peer.unwrap_or(server)).await,
                        None => sock.send_to(&rrq, server).await,
                    }
                    .ok();
                    continue;
                }
            };
            silences = 0;
            if peer.is_some_and(|p| p != from) {
                continue;
            }
            match tftp::parse(&buf[..n]) {
                Ok(Packet::Oack { options }) => {
                    peer = Some(from);
                    if options.iter().any(|(k, _)| k.eq_ignore_ascii_case("blksize")) {
                        block_len = self.args.blksize;
                    }
                    let ack = tftp::ack(0);
                    last = Some(ack);
                    let _ = sock.send_to(&ack, from).await;
                }
                Ok(Packet::Data { block, data }) => {
                    peer = Some(from);
                    if block == expect {
                        size += data.len() as u64;
                        expect = expect.wrapping_add(1);
                        let ack = tftp::ack(block);
                        last = Some(ack);
                        let _ = sock.send_to(&ack, from).await;
                        if data.len() < block_len {
                            break Some(size);
                        }
                    } else {
                        duplicates += 1;
                        if let Some(ack) = last {
                            let _ = sock.send_to(&ack, from).await;
                        }
                    }
                }
                Ok(Packet::Error { .. }) => break None,
                _ => {}
            }
        };
        self.tally.lock().unwrap().duplicate_blocks += duplicates;
        result
    }
}

fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit on this process with a valid struct.
    unsafe {
        let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < l.rlim_max {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

/// User + system CPU this process used.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct passed.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return 0.0;
    }
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

fn ms(v: &mut [Duration], q: f64) -> f64 {
    v.sort();
    let i = ((q * v.len() as f64) as usize).min(v.len().saturating_sub(1));
    v.get(i).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

fn main() {
    let args = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("boot_storm: {e}");
            std::process::exit(2);
        }
    };
    raise_fd_limit();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    let out = rt.block_on(async move {
        let broadcast = match broadcast_socket(&args.interface) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("boot_storm: cannot bind port 68 on {}: {e}", args.interface);
                std::process::exit(1);
            }
        };
        let n = args.clients;
        let storm = Arc::new(Storm { args, waiting: Mutex::default(), broadcast, tally: Mutex::default() });
        let dispatcher = tokio::spawn(storm.clone().dispatch());
        let started = Instant::now();
        let mut clients = tokio::task::JoinSet::new();
        for i in 0..n {
            clients.spawn(storm.clone().client(i));
        }
        while let Some(r) = clients.join_next().await {
            if let Ok(Err(phase)) = r {
                *storm.tally.lock().unwrap().failures.entry(phase).or_default() += 1;
            }
        }
        let took = started.elapsed().as_secs_f64();
        dispatcher.abort();
        let mut t = std::mem::take(&mut *storm.tally.lock().unwrap());
        let mut phases = Vec::new();
        for p in PHASES {
            let v = t.samples.entry(p).or_default();
            phases.push(format!("\"{p}\": [{}, {:.1}, {:.1}]", v.len(), ms(v, 0.5), ms(v, 0.99)));
        }
        let failures: Vec<String> = t.failures.iter().map(|(k, v)| format!("\"{k}\": {v}")).collect();
        format!(
            "{{\"clients\": {n}, \"took_s\": {took:.3}, \"client_cpu_s\": {:.2}, \"completed\": {}, \
             \"failures\": {{{}}}, \"duplicate_blocks\": {}, \"phases\": {{{}}}}}",
            cpu_seconds(),
            t.samples.get("total").map_or(0, Vec::len),
            failures.join(", "),
            t.duplicate_blocks,
            phases.join(", ")
        )
    });
    println!("{out}");
}
