//! ProxyDHCP (the PXE specification's "proxy DHCP service", RFC 4578's
//! options): next to the LAN's own DHCP server, which keeps assigning
//! addresses, answer PXE firmware with where to boot from, and nothing else.
//!
//! Only clients whose vendor class (option 60) starts with `PXEClient` or
//! `HTTPClient` are answered; no address is ever assigned (`yiaddr` 0). A
//! DISCOVER on port 67 gets an OFFER naming the boot server and file (as
//! pixiecore does, so firmware that skips the 4011 step still boots); a
//! REQUEST on port 4011 gets the same answer as an ACK. BIOS clients get
//! option 43 telling them to skip boot-server discovery. The boot file
//! depends on the client:
//!
//! | client | boot file |
//! |---|---|
//! | iPXE (user class `iPXE`, or its option 175) | `http://ADDR:PORT/pxe-bootstrap.ipxe`, which ends the chain loop |
//! | `HTTPClient` (UEFI HTTP boot) | `http://ADDR:PORT/boot/ipxe.efi`, option 60 `HTTPClient` |
//! | architecture 0 (BIOS) | `undionly.kpxe` over TFTP |
//! | EFI x64 (7, 9) and IA32 (6) | `snponly.efi` (configurable: `ipxe.efi`) over TFTP |
//!
//! Answers are built from memory; what was seen goes to
//! [`crate::Host::dhcp_answered`] after the reply is sent.

pub mod packet;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use tokio::net::UdpSocket;
use tokio::task::JoinSet;

use crate::status::ServiceStatus;
use crate::Host;
use packet::{msg, opt, Message};

/// The two ports a ProxyDHCP service listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// 67: broadcast DISCOVERs (and relayed ones).
    Dhcp,
    /// 4011: the PXE boot-server REQUEST, unicast.
    BootServer,
}

#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// The interface to answer on (`SO_BINDTODEVICE`); `None` binds to
    /// `listen` alone (tests on loopback).
    pub interface: Option<String>,
    pub listen: Ipv4Addr,
    /// The address clients are told to fetch from (TFTP and HTTP).
    pub advertise: Ipv4Addr,
    /// `http://ADDR:PORT` of bty-web, without a trailing slash.
    pub http_base: String,
    /// What EFI firmware gets over TFTP: `snponly.efi` (the firmware's own
    /// network driver, what works on most machines) or `ipxe.efi`.
    pub efi_boot_file: String,
    pub dhcp_port: u16,
    pub boot_server_port: u16,
    /// Where broadcast replies go (68, the DHCP client port).
    pub client_port: u16,
}

impl ProxyConfig {
    pub fn new(interface: Option<String>, advertise: Ipv4Addr, http_base: String) -> ProxyConfig {
        ProxyConfig {
            interface,
            listen: Ipv4Addr::UNSPECIFIED,
            advertise,
            http_base: http_base.trim_end_matches('/').to_string(),
            efi_boot_file: "snponly.efi".into(),
            dhcp_port: 67,
            boot_server_port: 4011,
            client_port: 68,
        }
    }
}

/// What kind of firmware asked, from options 60, 77, 93 and 175.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Client {
    Ipxe,
    HttpBoot,
    Bios,
    Efi,
    /// An architecture this server has no boot file for (arm64, ...).
    Unsupported(u16),
}

impl Client {
    pub fn label(self) -> &'static str {
        match self {
            Client::Ipxe => "iPXE",
            Client::HttpBoot => "UEFI HTTP",
            Client::Bios => "BIOS PXE",
            Client::Efi => "UEFI PXE",
            Client::Unsupported(_) => "unsupported architecture",
        }
    }
}

/// Who asked and what they were told, for [`Host::dhcp_answered`].
#[derive(Debug, Clone)]
pub struct Sighting {
    pub mac: [u8; 6],
    /// The client's address, once it has one (the 4011 request).
    pub ip: Option<Ipv4Addr>,
    pub arch: Option<u16>,
    pub client: Client,
    pub port: Port,
    /// The boot file offered; `None` when nothing was answered.
    pub boot_file: Option<String>,
}

fn has_ipxe_user_class(m: &Message<'_>) -> bool {
    // iPXE sends "iPXE" bare rather than RFC 3004's length-prefixed list;
    // a substring search reads both.
    m.option(opt::USER_CLASS).is_some_and(|v| v.windows(4).any(|w| w == b"iPXE"))
        || m.option(opt::IPXE_ENCAP).is_some()
}

/// Classify a PXE or HTTP-boot client; `None` for anyone else.
pub fn classify(m: &Message<'_>) -> Option<(Client, Option<u16>)> {
    let vendor = m.option(opt::VENDOR_CLASS)?;
    let http = vendor.starts_with(b"HTTPClient");
    if !http && !vendor.starts_with(b"PXEClient") {
        return None;
    }
    let arch = m.option(opt::CLIENT_ARCH).filter(|v| v.len() >= 2).map(|v| u16::from_be_bytes([v[0], v[1]]));
    let client = if has_ipxe_user_class(m) {
        Client::Ipxe
    } else if http {
        Client::HttpBoot
    } else {
        match arch.unwrap_or(0) {
            0 => Client::Bios,
            6 | 7 | 9 => Client::Efi,
            other => Client::Unsupported(other),
        }
    };
    Some((client, arch))
}

/// The reply to `m` received on `port`, or `None` when it is not ours to
/// answer. Pure: the server loop sends it and reports the sighting.
pub fn answer(m: &Message<'_>, port: Port, cfg: &ProxyConfig) -> Option<(Vec<u8>, Sighting)> {
    if m.op != packet::BOOTREQUEST {
        return None;
    }
    let mac = m.mac()?;
    let reply_type = match (port, m.message_type()?) {
        (Port::Dhcp, msg::DISCOVER) => msg::OFFER,
        // A REQUEST on 67 is the client taking the LAN server's address:
        // not ours. On 4011 it asks the boot server, which is us.
        (Port::BootServer, msg::REQUEST | msg::INFORM) => msg::ACK,
        _ => return None,
    };
    let (client, arch) = classify(m)?;
    let boot_file = match client {
        Client::Ipxe => format!("{}/pxe-bootstrap.ipxe", cfg.http_base),
        Client::HttpBoot => format!("{}/boot/ipxe.efi", cfg.http_base),
        Client::Bios => "undionly.kpxe".to_string(),
        Client::Efi => cfg.efi_boot_file.clone(),
        Client::Unsupported(_) => {
            let sighting = Sighting { mac, ip: None, arch, client, port, boot_file: None };
            return Some((Vec::new(), sighting));
        }
    };
    let uuid = m.option(opt::CLIENT_UUID);
    let vendor: &[u8] = if client == Client::HttpBoot { b"HTTPClient" } else { b"PXEClient" };
    let server = cfg.advertise.octets();
    let server_name = cfg.advertise.to_string();
    let mut options: Vec<(u8, &[u8])> = vec![
        (opt::MESSAGE_TYPE, std::slice::from_ref(&reply_type)),
        (opt::SERVER_ID, &server),
        (opt::VENDOR_CLASS, vendor),
    ];
    if let Some(u) = &uuid {
        options.push((opt::CLIENT_UUID, u));
    }
    // PXE discovery control: bit 3, "download the boot file in this
    // offer" — BIOS ROMs otherwise go looking for boot servers.
    const SKIP_DISCOVERY: [u8; 4] = [6, 1, 8, opt::END];
    if client == Client::Bios {
        options.push((opt::VENDOR_SPECIFIC, &SKIP_DISCOVERY));
    }
    if client != Client::HttpBoot && client != Client::Ipxe {
        options.push((opt::TFTP_SERVER, server_name.as_bytes()));
    }
    options.push((opt::BOOTFILE, boot_file.as_bytes()));
    let reply = Message {
        op: packet::BOOTREPLY,
        htype: m.htype,
        hlen: m.hlen,
        hops: 0,
        xid: m.xid,
        secs: 0,
        flags: m.flags,
        ciaddr: if port == Port::BootServer { m.ciaddr } else { Ipv4Addr::UNSPECIFIED },
        yiaddr: Ipv4Addr::UNSPECIFIED,
        siaddr: cfg.advertise,
        giaddr: m.giaddr,
        chaddr: m.chaddr,
        sname: server_name.as_bytes(),
        file: boot_file.as_bytes(),
        options,
    };
    let ip = (!m.ciaddr.is_unspecified()).then_some(m.ciaddr);
    let sighting = Sighting { mac, ip, arch, client, port, boot_file: Some(boot_file.clone()) };
    Some((reply.encode(), sighting))
}

/// A bound ProxyDHCP service, ready to [`run`](ProxyServer::run).
pub struct ProxyServer {
    dhcp: Arc<UdpSocket>,
    boot_server: Arc<UdpSocket>,
    config: Arc<ProxyConfig>,
    host: Arc<dyn Host>,
    status: Arc<ServiceStatus>,
}

fn udp_socket(at: SocketAddr, device: Option<&str>) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.set_broadcast(true)?;
    if let Some(dev) = device {
        s.bind_device(Some(dev.as_bytes()))?;
    }
    s.set_nonblocking(true)?;
    s.bind(&at.into())?;
    UdpSocket::from_std(s.into())
}

impl ProxyServer {
    pub async fn bind(
        config: ProxyConfig,
        host: Arc<dyn Host>,
        status: Arc<ServiceStatus>,
    ) -> Result<ProxyServer, String> {
        let dev = config.interface.as_deref();
        let on = |p: u16| SocketAddr::new(IpAddr::V4(config.listen), p);
        let what = |at: SocketAddr, e: std::io::Error| {
            let mut m = crate::status::bind_error("ProxyDHCP", at, &e);
            if let (Some(d), std::io::ErrorKind::NotFound | std::io::ErrorKind::InvalidInput) =
                (dev, e.kind())
            {
                m = format!("ProxyDHCP cannot use interface {d}: {e}");
            }
            m
        };
        let dhcp = udp_socket(on(config.dhcp_port), dev).map_err(|e| what(on(config.dhcp_port), e))?;
        let boot_server =
            udp_socket(on(config.boot_server_port), dev).map_err(|e| what(on(config.boot_server_port), e))?;
        let listening = [&dhcp, &boot_server].iter().filter_map(|s| s.local_addr().ok()).collect();
        status.listening(listening);
        Ok(ProxyServer {
            dhcp: Arc::new(dhcp),
            boot_server: Arc::new(boot_server),
            config: Arc::new(config),
            host,
            status,
        })
    }

    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        [&self.dhcp, &self.boot_server].iter().filter_map(|s| s.local_addr().ok()).collect()
    }

    /// Serve until the future is dropped.
    pub async fn run(self) {
        let mut set = JoinSet::new();
        for (sock, port) in [(self.dhcp, Port::Dhcp), (self.boot_server, Port::BootServer)] {
            set.spawn(serve(sock, port, self.config.clone(), self.host.clone(), self.status.clone()));
        }
        while set.join_next().await.is_some() {}
    }
}

async fn serve(
    sock: Arc<UdpSocket>,
    port: Port,
    cfg: Arc<ProxyConfig>,
    host: Arc<dyn Host>,
    status: Arc<ServiceStatus>,
) {
    let mut buf = vec![0u8; 1500];
    loop {
        let (n, peer) = match sock.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                status.error(format!("ProxyDHCP receive: {e}"));
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(m) = packet::parse(&buf[..n]) else { continue };
        let Some((reply, sighting)) = answer(&m, port, &cfg) else { continue };
        status.request(peer);
        if !reply.is_empty() {
            let to = match port {
                Port::BootServer => peer,
                Port::Dhcp if !m.giaddr.is_unspecified() => {
                    SocketAddr::new(IpAddr::V4(m.giaddr), cfg.dhcp_port)
                }
                Port::Dhcp => SocketAddr::new(IpAddr::V4(Ipv4Addr::BROADCAST), cfg.client_port),
            };
            if let Err(e) = sock.send_to(&reply, to).await {
                status.error(format!("ProxyDHCP reply to {to}: {e}"));
            }
        }
        host.dhcp_answered(&sighting);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ProxyConfig {
        ProxyConfig::new(None, Ipv4Addr::new(192, 168, 77, 2), "http://192.168.77.2:8080".into())
    }

    fn discover<'a>(vendor: &'a [u8], arch: &'a [u8], extra: Vec<(u8, &'a [u8])>) -> Message<'a> {
        let mut o = vec![(opt::MESSAGE_TYPE, &[msg::DISCOVER][..]), (opt::VENDOR_CLASS, vendor)];
        if !arch.is_empty() {
            o.push((opt::CLIENT_ARCH, arch));
        }
        o.extend(extra);
        Message::request([0x52, 0x54, 0, 0x12, 0x34, 0x56], 42, o)
    }

    fn reply_of(m: &Message<'_>, port: Port) -> (Vec<u8>, Sighting) {
        let (raw, s) = answer(m, port, &cfg()).expect("answered");
        (raw, s)
    }

    #[test]
    fn each_architecture_gets_its_boot_file_and_no_address() {
        let uuid = [0u8; 17];
        type Case<'a> = (&'a [u8], &'a [u8], Vec<(u8, &'a [u8])>, &'a str);
        let cases: [Case<'_>; 5] = [
            (b"PXEClient:Arch:00000:UNDI:002001", &[0, 0], vec![], "undionly.kpxe"),
            (b"PXEClient:Arch:00007:UNDI:003000", &[0, 7], vec![(opt::CLIENT_UUID, &uuid)], "snponly.efi"),
            (b"PXEClient:Arch:00009:UNDI:003016", &[0, 9], vec![], "snponly.efi"),
            (
                b"HTTPClient:Arch:00016:UNDI:003001",
                &[0, 16],
                vec![],
                "http://192.168.77.2:8080/boot/ipxe.efi",
            ),
            (
                b"PXEClient:Arch:00000:UNDI:002001",
                &[0, 0],
                vec![(opt::USER_CLASS, b"iPXE")],
                "http://192.168.77.2:8080/pxe-bootstrap.ipxe",
            ),
        ];
        for (vendor, arch, extra, want) in cases {
            let m = discover(vendor, arch, extra);
            let (raw, s) = reply_of(&m, Port::Dhcp);
            let r = packet::parse(&raw).unwrap();
            assert_eq!(r.op, packet::BOOTREPLY);
            assert_eq!(r.xid, 42);
            assert_eq!(r.yiaddr, Ipv4Addr::UNSPECIFIED, "never an address");
            assert_eq!(r.siaddr, Ipv4Addr::new(192, 168, 77, 2));
            assert_eq!(packet::field_text(r.file), want);
            assert_eq!(r.option(opt::BOOTFILE).unwrap(), want.as_bytes());
            assert_eq!(r.message_type(), Some(msg::OFFER));
            assert_eq!(r.option(opt::SERVER_ID).unwrap(), [192, 168, 77, 2]);
            let http = vendor.starts_with(b"HTTP");
            assert_eq!(
                r.option(opt::VENDOR_CLASS).unwrap(),
                if http { &b"HTTPClient"[..] } else { b"PXEClient" }
            );
            assert_eq!(r.option(opt::VENDOR_SPECIFIC).is_some(), s.client == Client::Bios, "{vendor:?}");
            assert_eq!(r.option(opt::CLIENT_UUID).is_some(), m.option(opt::CLIENT_UUID).is_some());
            assert_eq!(s.boot_file.as_deref(), Some(want));
        }
    }

    #[test]
    fn only_pxe_clients_on_the_right_port_are_answered() {
        let plain = Message::request([1, 2, 3, 4, 5, 6], 1, vec![(opt::MESSAGE_TYPE, &[msg::DISCOVER])]);
        assert!(answer(&plain, Port::Dhcp, &cfg()).is_none(), "no vendor class");
        let other = discover(b"MSFT 5.0", &[], vec![]);
        assert!(answer(&other, Port::Dhcp, &cfg()).is_none());
        // A REQUEST on 67 belongs to the LAN's server; on 4011 it is ours.
        let mut req = discover(b"PXEClient:Arch:00007", &[0, 7], vec![]);
        req.options[0] = (opt::MESSAGE_TYPE, &[msg::REQUEST]);
        req.ciaddr = Ipv4Addr::new(192, 168, 77, 120);
        assert!(answer(&req, Port::Dhcp, &cfg()).is_none());
        let (raw, s) = reply_of(&req, Port::BootServer);
        let r = packet::parse(&raw).unwrap();
        assert_eq!(r.message_type(), Some(msg::ACK));
        assert_eq!(r.ciaddr, req.ciaddr);
        assert_eq!(s.ip, Some(req.ciaddr));
        // A DISCOVER on 4011 is nonsense.
        assert!(answer(&discover(b"PXEClient", &[0, 0], vec![]), Port::BootServer, &cfg()).is_none());
        // arm64 is seen but not answered (no boot file for it).
        let (raw, s) = reply_of(&discover(b"PXEClient:Arch:00011", &[0, 11], vec![]), Port::Dhcp);
        assert!(raw.is_empty());
        assert_eq!(s.client, Client::Unsupported(11));
        let mut reply = discover(b"PXEClient", &[0, 0], vec![]);
        reply.op = packet::BOOTREPLY;
        assert!(answer(&reply, Port::Dhcp, &cfg()).is_none(), "another server's reply");
    }
}
