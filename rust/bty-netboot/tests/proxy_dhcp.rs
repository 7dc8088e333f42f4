//! ProxyDHCP over real sockets: relayed requests on loopback (any user),
//! and, as root, a real layer-2 segment in network namespaces this test
//! makes: the LAN's own DHCP server (dnsmasq, addresses only), the proxy,
//! and a client broadcasting DISCOVER the way PXE firmware does, which must
//! get one offer with an address (the LAN's) and one with a boot file (ours)
//! for each architecture.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket as StdUdp};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bty_netboot::dhcp::packet::{self, msg, opt, Message};
use bty_netboot::dhcp::{Client, ProxyConfig, ProxyServer, Sighting};
use bty_netboot::status::ServiceStatus;
use bty_netboot::tftp::Transfer;

#[derive(Default)]
struct Seen(Mutex<Vec<Sighting>>);

impl bty_netboot::Host for Seen {
    fn boot_file(&self, _: &str) -> Option<Arc<[u8]>> {
        None
    }
    fn tftp_finished(&self, _: &Transfer) {}
    fn dhcp_answered(&self, s: &Sighting) {
        self.0.lock().unwrap().push(s.clone());
    }
}

fn free_udp_port(ip: &str) -> u16 {
    StdUdp::bind((ip, 0)).unwrap().local_addr().unwrap().port()
}

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xab, 0xcd, 0xef];

fn pxe_discover(vendor: &[u8], arch: u16, giaddr: Ipv4Addr) -> Vec<u8> {
    let arch = arch.to_be_bytes();
    let uuid = [0u8, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16];
    let mut m = Message::request(
        MAC,
        0x1234_5678,
        vec![
            (opt::MESSAGE_TYPE, &[msg::DISCOVER]),
            (opt::VENDOR_CLASS, vendor),
            (opt::CLIENT_ARCH, &arch),
            (opt::CLIENT_UUID, &uuid),
        ],
    );
    m.giaddr = giaddr;
    m.encode()
}

#[tokio::test]
async fn relayed_discovers_are_answered_to_the_relay_and_4011_requests_to_the_client() {
    let dhcp_port = free_udp_port("127.0.0.1");
    let boot_port = free_udp_port("127.0.0.1");
    let mut cfg = ProxyConfig::new(None, Ipv4Addr::new(127, 0, 0, 1), "http://127.0.0.1:8080".into());
    cfg.listen = Ipv4Addr::LOCALHOST;
    cfg.dhcp_port = dhcp_port;
    cfg.boot_server_port = boot_port;
    let seen = Arc::new(Seen::default());
    let status = Arc::new(ServiceStatus::default());
    let server = ProxyServer::bind(cfg, seen.clone(), status.clone()).await.unwrap();
    let task = tokio::spawn(server.run());

    // A relay at 127.0.0.2 forwards the DISCOVER; the answer goes back to it.
    let relay = tokio::net::UdpSocket::bind(("127.0.0.2", dhcp_port)).await.unwrap();
    let to = SocketAddr::from(([127, 0, 0, 1], dhcp_port));
    relay
        .send_to(&pxe_discover(b"PXEClient:Arch:00000:UNDI:002001", 0, Ipv4Addr::new(127, 0, 0, 2)), to)
        .await
        .unwrap();
    let mut buf = vec![0u8; 1500];
    let started = Instant::now();
    let (n, _) = tokio::time::timeout(Duration::from_secs(3), relay.recv_from(&mut buf))
        .await
        .expect("an offer")
        .unwrap();
    assert!(started.elapsed() < Duration::from_millis(100), "answered from memory: {:?}", started.elapsed());
    let offer = packet::parse(&buf[..n]).unwrap();
    assert_eq!(offer.message_type(), Some(msg::OFFER));
    assert_eq!(packet::field_text(offer.file), "undionly.kpxe");
    assert_eq!(offer.giaddr, Ipv4Addr::new(127, 0, 0, 2));
    assert_eq!(offer.option(opt::CLIENT_UUID).unwrap().len(), 17, "option 97 echoed");

    // The boot-server request on 4011, unicast from the client's address.
    let client = tokio::net::UdpSocket::bind("127.0.0.3:0").await.unwrap();
    let mut req = packet::parse(&pxe_discover(b"PXEClient:Arch:00007:UNDI:003000", 7, Ipv4Addr::UNSPECIFIED))
        .unwrap()
        .encode();
    // Turn the DISCOVER into a REQUEST with the client's address.
    let mut m = packet::parse(&req).unwrap();
    m.options[0] = (opt::MESSAGE_TYPE, &[msg::REQUEST]);
    m.ciaddr = Ipv4Addr::new(127, 0, 0, 3);
    req = m.encode();
    client.send_to(&req, ("127.0.0.1", boot_port)).await.unwrap();
    let (n, _) = tokio::time::timeout(Duration::from_secs(3), client.recv_from(&mut buf))
        .await
        .expect("an ACK")
        .unwrap();
    let ack = packet::parse(&buf[..n]).unwrap();
    assert_eq!(ack.message_type(), Some(msg::ACK));
    assert_eq!(packet::field_text(ack.file), "snponly.efi");
    assert_eq!(ack.yiaddr, Ipv4Addr::UNSPECIFIED);

    let seen = seen.0.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].client, Client::Bios);
    assert_eq!(seen[1].ip, Some(Ipv4Addr::new(127, 0, 0, 3)));
    assert_eq!(status.snapshot().requests, 2);
    task.abort();
}

// ---- a real layer-2 segment (root) -----------------------------------------------------------

fn ip(args: &str) {
    let out = Command::new("ip").args(args.split_whitespace()).output().expect("ip (iproute2)");
    assert!(out.status.success(), "ip {args}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Namespaces `<tag>-lan` (a bridge), `-dhcp` (the LAN's DHCP server),
/// `-srv` (the proxy) and `-cli` (the client), removed on drop.
struct Segment {
    tag: String,
    dnsmasq: Option<std::process::Child>,
}

impl Segment {
    fn new() -> Segment {
        let tag = format!("btyp{}", std::process::id() % 100_000);
        let s = Segment { tag: tag.clone(), dnsmasq: None };
        for n in ["lan", "dhcp", "srv", "cli"] {
            ip(&format!("netns add {tag}-{n}"));
        }
        ip(&format!("-n {tag}-lan link add br0 type bridge"));
        ip(&format!("-n {tag}-lan link set br0 up"));
        for (n, dev, addr) in [
            ("dhcp", "d0", Some("192.168.77.1/24")),
            ("srv", "s0", Some("192.168.77.2/24")),
            ("cli", "c0", None),
        ] {
            ip(&format!("link add {dev} netns {tag}-{n} type veth peer name {dev}p netns {tag}-lan"));
            ip(&format!("-n {tag}-lan link set {dev}p master br0 up"));
            if let Some(a) = addr {
                ip(&format!("-n {tag}-{n} addr add {a} dev {dev}"));
            }
            ip(&format!("-n {tag}-{n} link set {dev} up"));
            ip(&format!("-n {tag}-{n} link set lo up"));
        }
        s
    }

    fn netns(&self, n: &str) -> String {
        format!("/run/netns/{}-{n}", self.tag)
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        if let Some(mut c) = self.dnsmasq.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for n in ["cli", "srv", "dhcp", "lan"] {
            let _ = Command::new("ip").args(["netns", "del", &format!("{}-{n}", self.tag)]).status();
        }
    }
}

/// Run `f` on a thread inside the network namespace at `path`.
fn in_netns<T: Send + 'static>(
    path: String,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        let ns = std::fs::File::open(&path).unwrap();
        // SAFETY: a valid namespace fd; setns changes only this thread's namespace.
        assert_eq!(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns {path}");
        f()
    })
}

/// Broadcast one DISCOVER from `c0` and collect every offer for 2 s.
fn broadcast_discover(vendor: &'static [u8], arch: u16) -> Vec<(Ipv4Addr, Ipv4Addr, String)> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
    s.set_reuse_address(true).unwrap();
    s.set_broadcast(true).unwrap();
    s.bind_device(Some(b"c0")).unwrap();
    s.bind(&SocketAddr::from(([0, 0, 0, 0], 68)).into()).unwrap();
    let s: StdUdp = s.into();
    s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    s.send_to(&pxe_discover(vendor, arch, Ipv4Addr::UNSPECIFIED), ("255.255.255.255", 67)).unwrap();
    let mut offers = Vec::new();
    let until = Instant::now() + Duration::from_secs(2);
    let mut buf = [0u8; 1500];
    while Instant::now() < until {
        if let Ok((n, _)) = s.recv_from(&mut buf) {
            let m = packet::parse(&buf[..n]).unwrap();
            if m.xid == 0x1234_5678 && m.message_type() == Some(msg::OFFER) {
                let server = m.option(opt::SERVER_ID).map(|v| Ipv4Addr::new(v[0], v[1], v[2], v[3])).unwrap();
                offers.push((server, m.yiaddr, packet::field_text(m.file).to_string()));
            }
        }
    }
    offers
}

#[test]
fn on_a_real_segment_each_architecture_gets_an_address_from_the_lan_and_a_boot_file_from_bty() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping the layer-2 ProxyDHCP test: needs root (network namespaces)");
        return;
    }
    let mut seg = Segment::new();
    let dnsmasq = Command::new("ip")
        .args([
            "netns",
            "exec",
            &format!("{}-dhcp", seg.tag),
            "dnsmasq",
            "-d",
            "--conf-file=/dev/null",
            "--port=0",
        ])
        .args([
            "-i",
            "d0",
            "--bind-interfaces",
            "--dhcp-range=192.168.77.100,192.168.77.150,1h",
            "--leasefile-ro",
            "--no-ping",
        ]) // dnsmasq pings an address for 3 s before offering it; the client here listens 2 s
        .args(&[] as &[&str])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("dnsmasq (checks/deps.sh installs dnsmasq-base)");
    seg.dnsmasq = Some(dnsmasq);

    let seen = Arc::new(Seen::default());
    let host = seen.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let proxy = in_netns(seg.netns("srv"), move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let cfg = ProxyConfig::new(
                Some("s0".into()),
                Ipv4Addr::new(192, 168, 77, 2),
                "http://192.168.77.2:8080".into(),
            );
            let server = ProxyServer::bind(cfg, host, Arc::new(ServiceStatus::default())).await.unwrap();
            ready_tx.send(()).unwrap();
            tokio::select! {
                _ = server.run() => {}
                _ = stop_rx => {}
            }
        })
    });
    ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    std::thread::sleep(Duration::from_millis(500)); // dnsmasq binds

    let cases: [(&'static [u8], u16, &str); 3] = [
        (b"PXEClient:Arch:00000:UNDI:002001", 0, "undionly.kpxe"),
        (b"PXEClient:Arch:00007:UNDI:003000", 7, "snponly.efi"),
        (b"HTTPClient:Arch:00016:UNDI:003001", 16, "http://192.168.77.2:8080/boot/ipxe.efi"),
    ];
    for (vendor, arch, want) in cases {
        let offers = in_netns(seg.netns("cli"), move || broadcast_discover(vendor, arch)).join().unwrap();
        let lan: Vec<_> = offers.iter().filter(|o| o.0 == Ipv4Addr::new(192, 168, 77, 1)).collect();
        let ours: Vec<_> = offers.iter().filter(|o| o.0 == Ipv4Addr::new(192, 168, 77, 2)).collect();
        assert_eq!(lan.len(), 1, "one offer from the LAN's server: {offers:?}");
        assert!(!lan[0].1.is_unspecified(), "the LAN's server assigns the address: {offers:?}");
        assert_eq!(ours.len(), 1, "one offer from bty: {offers:?}");
        assert_eq!(ours[0].1, Ipv4Addr::UNSPECIFIED, "bty assigns no address");
        assert_eq!(ours[0].2, want, "arch {arch}");
    }
    let _ = stop_tx.send(());
    proxy.join().unwrap();
    let seen = seen.0.lock().unwrap();
    assert_eq!(
        seen.iter().map(|s| s.client).collect::<Vec<_>>(),
        vec![Client::Bios, Client::Efi, Client::HttpBoot]
    );
}
