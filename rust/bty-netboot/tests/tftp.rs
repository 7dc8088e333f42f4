//! The TFTP server on loopback against an in-process client that behaves as
//! firmware does (EDK2's size probe, windows, duplicate requests and ACKs,
//! a lossy link, block-number rollover), and against the TFTP clients
//! people use: curl, atftp and tftp-hpa.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bty_netboot::dhcp::Sighting;
use bty_netboot::status::ServiceStatus;
use bty_netboot::tftp::packet::{self, code, Packet};
use bty_netboot::tftp::{Outcome, TftpConfig, TftpServer, Transfer};
use tokio::net::UdpSocket;

#[derive(Default)]
struct TestHost {
    files: HashMap<&'static str, Arc<[u8]>>,
    done: Mutex<Vec<Transfer>>,
}

impl bty_netboot::Host for TestHost {
    fn boot_file(&self, name: &str) -> Option<Arc<[u8]>> {
        self.files.get(name).cloned()
    }
    fn tftp_finished(&self, t: &Transfer) {
        self.done.lock().unwrap().push(t.clone());
    }
    fn dhcp_answered(&self, _: &Sighting) {}
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

struct Server {
    addr: SocketAddr,
    host: Arc<TestHost>,
    status: Arc<ServiceStatus>,
    _task: tokio::task::JoinHandle<()>,
}

async fn server(files: &[(&'static str, Vec<u8>)], tweak: impl FnOnce(&mut TftpConfig)) -> Server {
    let host = Arc::new(TestHost {
        files: files.iter().map(|(n, b)| (*n, Arc::from(b.clone().into_boxed_slice()))).collect(),
        ..TestHost::default()
    });
    let mut cfg = TftpConfig { address: IpAddr::V4(Ipv4Addr::LOCALHOST), port: 0, ..TftpConfig::default() };
    cfg.timeout = Duration::from_millis(200);
    tweak(&mut cfg);
    let status = Arc::new(ServiceStatus::default());
    let s = TftpServer::bind(cfg, host.clone(), status.clone()).await.unwrap();
    let addr = s.local_addrs()[0];
    Server { addr, host, status, _task: tokio::spawn(s.run()) }
}

impl Server {
    /// The transfers reported so far, once `n` have been.
    async fn finished(&self, n: usize) -> Vec<Transfer> {
        for _ in 0..200 {
            let d = self.host.done.lock().unwrap().clone();
            if d.len() >= n {
                return d;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("only {:?} transfers finished", self.host.done.lock().unwrap());
    }
}

async fn recv(sock: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = vec![0u8; 70000];
    let (n, from) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
        .await
        .expect("an answer within 5 s")
        .unwrap();
    buf.truncate(n);
    (buf, from)
}

/// A client as firmware is: request, acknowledge each window's last block
/// (or every block, `ack_twice` acknowledging it twice), reassemble.
async fn fetch(
    to: SocketAddr,
    name: &str,
    options: &[(&str, &str)],
    ack_twice: bool,
) -> (Vec<u8>, Vec<(String, String)>, usize) {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.send_to(&packet::request(false, name, "octet", options), to).await.unwrap();
    let mut data = Vec::new();
    let mut oack = Vec::new();
    let mut blksize = 512;
    let mut window = 1usize;
    let mut expect: u16 = 1;
    let mut datas = 0;
    let mut in_window = 0;
    loop {
        let (raw, from) = recv(&sock).await;
        match packet::parse(&raw).unwrap() {
            Packet::Oack { options } => {
                for (k, v) in &options {
                    if *k == "blksize" {
                        blksize = v.parse().unwrap();
                    }
                    if *k == "windowsize" {
                        window = v.parse().unwrap();
                    }
                }
                oack = options.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
                sock.send_to(&packet::ack(0), from).await.unwrap();
            }
            Packet::Data { block, data: d } => {
                datas += 1;
                assert_eq!(block, expect, "blocks in order on a loss-free link");
                data.extend_from_slice(d);
                expect = expect.wrapping_add(1);
                in_window += 1;
                let last = d.len() < blksize;
                if in_window == window || last {
                    in_window = 0;
                    sock.send_to(&packet::ack(block), from).await.unwrap();
                    if ack_twice {
                        sock.send_to(&packet::ack(block), from).await.unwrap();
                    }
                }
                if last {
                    return (data, oack, datas);
                }
            }
            Packet::Error { code, message } => panic!("ERROR {code} {message}"),
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn plain_requests_get_512_byte_blocks_and_an_empty_last_block_when_the_size_is_a_multiple() {
    let s = server(&[("undionly.kpxe", pattern(1300)), ("ipxe.efi", pattern(1024))], |_| {}).await;
    let (got, oack, n) = fetch(s.addr, "undionly.kpxe", &[], false).await;
    assert_eq!(got, pattern(1300));
    assert!(oack.is_empty(), "no options asked, no OACK");
    assert_eq!(n, 3);
    let (got, _, n) = fetch(s.addr, "/ipxe.efi", &[], false).await;
    assert_eq!(got, pattern(1024));
    assert_eq!(n, 3, "two full blocks and an empty one");
    let done = s.finished(2).await;
    assert!(done.iter().all(|t| t.outcome == Outcome::Done && t.local == IpAddr::V4(Ipv4Addr::LOCALHOST)));
    assert_eq!(s.status.snapshot().requests, 2);
}

#[tokio::test]
async fn the_edk2_size_probe_then_the_windowed_transfer() {
    let file = pattern(200_000);
    let s = server(&[("snponly.efi", file.clone())], |_| {}).await;
    // The probe: tsize, blksize and windowsize, then ERROR 8 on the OACK.
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let ask = [("tsize", "0"), ("blksize", "1468"), ("windowsize", "4")];
    sock.send_to(&packet::request(false, "snponly.efi", "octet", &ask), s.addr).await.unwrap();
    let (raw, from) = recv(&sock).await;
    let Packet::Oack { options } = packet::parse(&raw).unwrap() else { panic!("{raw:?}") };
    assert_eq!(options, vec![("tsize", "200000"), ("blksize", "1468"), ("windowsize", "4")]);
    assert_ne!(from, s.addr, "a transfer answers from a port of its own");
    sock.send_to(&packet::error(code::OPTION_REFUSED, "User aborted the transfer"), from).await.unwrap();
    // The real download, as EDK2 asks for it the second time.
    let (got, oack, n) =
        fetch(s.addr, "snponly.efi", &[("blksize", "1468"), ("windowsize", "4")], false).await;
    assert_eq!(got, file);
    assert_eq!(oack, vec![("blksize".into(), "1468".into()), ("windowsize".into(), "4".into())]);
    assert_eq!(n, 200_000 / 1468 + 1);
    let done = s.finished(2).await;
    assert_eq!(done[0].outcome, Outcome::Probe);
    assert_eq!(done[1].outcome, Outcome::Done);
    assert_eq!(done[1].bytes, 200_000);
}

#[tokio::test]
async fn options_are_bounded_and_only_those_asked_for_are_answered() {
    let s = server(&[("ipxe.efi", pattern(5000))], |_| {}).await;
    let (got, oack, _) =
        fetch(s.addr, "ipxe.efi", &[("BLKSIZE", "100000"), ("windowsize", "64"), ("foo", "bar")], false)
            .await;
    assert_eq!(got, pattern(5000));
    // Loopback's MTU is 65536: 65536 - 32.
    assert_eq!(oack, vec![("blksize".into(), "65464".into()), ("windowsize".into(), "8".into())]);
    let (_, oack, _) = fetch(s.addr, "ipxe.efi", &[("timeout", "3"), ("blksize", "4")], false).await;
    assert_eq!(oack, vec![("timeout".into(), "3".into())], "blksize 4 is below RFC 2348's 8");
}

#[tokio::test]
async fn duplicate_acks_never_double_the_traffic_and_duplicate_requests_start_one_transfer() {
    let file = pattern(51_200);
    let s = server(&[("undionly.kpxe", file.clone())], |_| {}).await;
    let (got, _, n) = fetch(s.addr, "undionly.kpxe", &[], true).await;
    assert_eq!(got, file);
    assert_eq!(n, 101, "one DATA per block: no Sorcerer's Apprentice");

    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let rrq = packet::request(false, "undionly.kpxe", "octet", &[]);
    sock.send_to(&rrq, s.addr).await.unwrap();
    sock.send_to(&rrq, s.addr).await.unwrap();
    let (first, tid) = recv(&sock).await;
    assert!(matches!(packet::parse(&first).unwrap(), Packet::Data { block: 1, .. }));
    // Nothing else arrives until block 1 is acknowledged: the repeat was dropped
    // (a second transfer would have sent its own block 1 from another port).
    let mut buf = [0u8; 600];
    let extra = tokio::time::timeout(Duration::from_millis(150), sock.recv_from(&mut buf)).await;
    assert!(extra.is_err(), "a second answer: {extra:?}");
    sock.send_to(&packet::error(code::NOT_DEFINED, "enough"), tid).await.unwrap();
    let done = s.finished(2).await;
    assert_eq!(done[1].outcome, Outcome::Aborted("enough".into()));
}

#[tokio::test]
async fn block_numbers_roll_over_past_65535() {
    // 70,000 blocks of 8 bytes, 8 to a window.
    let file = pattern(8 * 70_000 + 3);
    let s = server(&[("ipxe.efi", file.clone())], |_| {}).await;
    let (got, _, n) = fetch(s.addr, "ipxe.efi", &[("blksize", "8"), ("windowsize", "8")], false).await;
    assert_eq!(n, 70_001);
    assert!(got == file, "content after rollover");
    assert_eq!(s.finished(1).await[0].outcome, Outcome::Done);
}

#[tokio::test]
async fn refusals_say_why() {
    let s = server(&[("ipxe.efi", pattern(10))], |c| c.max_transfers = 1).await;
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for (req, want_code, what) in [
        (packet::request(false, "../etc/passwd", "octet", &[]), code::FILE_NOT_FOUND, "offers"),
        (packet::request(false, "snponly.efi", "octet", &[]), code::FILE_NOT_FOUND, "offers"),
        (packet::request(true, "ipxe.efi", "octet", &[]), code::ACCESS_VIOLATION, "read-only"),
        (packet::request(false, "ipxe.efi", "mail", &[]), code::ILLEGAL_OPERATION, "octet"),
        (b"\x00\x01garbage".to_vec(), code::ILLEGAL_OPERATION, "NUL"),
    ] {
        sock.send_to(&req, s.addr).await.unwrap();
        let (raw, _) = recv(&sock).await;
        let Packet::Error { code, message } = packet::parse(&raw).unwrap() else { panic!("{raw:?}") };
        assert_eq!(code, want_code, "{message}");
        assert!(message.contains(what), "{message}");
    }
}

#[tokio::test]
async fn at_the_cap_a_request_waits_its_turn_instead_of_failing_the_boot() {
    // A long retransmit timeout: any second block-1 seen below is a second
    // transfer, not a repeat of the first.
    let s = server(&[("ipxe.efi", pattern(2000))], |c| {
        c.max_transfers = 1;
        c.timeout = Duration::from_secs(5);
    })
    .await;
    let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    a.send_to(&packet::request(false, "ipxe.efi", "octet", &[]), s.addr).await.unwrap();
    let (_, a_tid) = recv(&a).await;
    // The second client hears nothing while the only slot is taken, not an
    // error (firmware would give up the boot on one) ...
    b.send_to(&packet::request(false, "ipxe.efi", "octet", &[]), s.addr).await.unwrap();
    let mut buf = [0u8; 600];
    let early = tokio::time::timeout(Duration::from_millis(300), b.recv_from(&mut buf)).await;
    assert!(early.is_err(), "answered while the slot was taken: {early:?}");
    // ... and its repeated request is not queued twice.
    b.send_to(&packet::request(false, "ipxe.efi", "octet", &[]), s.addr).await.unwrap();
    // When the first transfer ends, the waiting one starts.
    a.send_to(&packet::error(code::NOT_DEFINED, "enough"), a_tid).await.unwrap();
    let (raw, _) = recv(&b).await;
    assert!(matches!(packet::parse(&raw).unwrap(), Packet::Data { block: 1, .. }));
    let extra = tokio::time::timeout(Duration::from_millis(200), b.recv_from(&mut buf)).await;
    assert!(extra.is_err(), "a second transfer for the repeated request: {extra:?}");
}

#[tokio::test]
async fn a_client_that_closes_its_port_frees_the_slot_at_once() {
    // Six tries with a doubling timeout would hold the slot for about 17 s;
    // the ICMP port unreachable answering the first repeat ends it.
    let s = server(&[("ipxe.efi", pattern(2000))], |c| c.timeout = Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        sock.send_to(&packet::request(false, "ipxe.efi", "octet", &[]), s.addr).await.unwrap();
        let _ = recv(&sock).await;
    }
    let t = &s.finished(1).await[0];
    assert!(matches!(&t.outcome, Outcome::Aborted(m) if m.contains("ICMP")), "{:?}", t.outcome);
    assert!(started.elapsed() < Duration::from_millis(1500), "{:?}", started.elapsed());
}

#[tokio::test]
async fn a_silent_client_is_given_up_after_the_retries() {
    let s = server(&[("ipxe.efi", pattern(2000))], |c| {
        c.attempts = 3;
        c.timeout = Duration::from_millis(50);
    })
    .await;
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.send_to(&packet::request(false, "ipxe.efi", "octet", &[]), s.addr).await.unwrap();
    let mut blocks = 0;
    let mut buf = [0u8; 600];
    while let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(800), sock.recv_from(&mut buf)).await {
        blocks += 1;
    }
    assert_eq!(blocks, 3, "block 1 sent once per attempt");
    let t = &s.finished(1).await[0];
    assert_eq!(t.outcome, Outcome::TimedOut);
    assert!(s.status.snapshot().last_error.unwrap().contains("no acknowledgement"));
}

/// A relay between client and server that drops every `nth` packet each way.
async fn lossy_relay(server: SocketAddr, nth: usize) -> SocketAddr {
    let front = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let at = front.local_addr().unwrap();
    tokio::spawn(async move {
        let front = Arc::new(front);
        let mut buf = vec![0u8; 70000];
        // client address -> (socket towards the server, the server's transfer port)
        let mut back: Option<(Arc<UdpSocket>, Arc<Mutex<SocketAddr>>)> = None;
        let mut count = 0usize;
        loop {
            let (n, client) = front.recv_from(&mut buf).await.unwrap();
            count += 1;
            if count % nth == 0 {
                continue;
            }
            let (sock, peer) = back.get_or_insert_with(|| {
                let sock = Arc::new(std::net::UdpSocket::bind("127.0.0.1:0").unwrap());
                sock.set_nonblocking(true).unwrap();
                let sock = Arc::new(UdpSocket::from_std(Arc::try_unwrap(sock).unwrap()).unwrap());
                let peer = Arc::new(Mutex::new(server));
                let (s2, p2, f2) = (sock.clone(), peer.clone(), front.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 70000];
                    let mut count = 0usize;
                    loop {
                        let (n, from) = s2.recv_from(&mut buf).await.unwrap();
                        *p2.lock().unwrap() = from;
                        count += 1;
                        if count % nth == 0 {
                            continue;
                        }
                        f2.send_to(&buf[..n], client).await.unwrap();
                    }
                });
                (sock, peer)
            });
            let to = *peer.lock().unwrap();
            sock.send_to(&buf[..n], to).await.unwrap();
        }
    });
    at
}

#[tokio::test]
async fn a_lossy_link_still_delivers_every_byte() {
    let file = pattern(300_000);
    let s = server(&[("snponly.efi", file.clone())], |c| c.timeout = Duration::from_millis(100)).await;
    let relay = lossy_relay(s.addr, 7).await;
    // A tolerant client: re-acknowledges the last in-order block on a gap or
    // a timeout, as RFC 7440 has it.
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let rrq = packet::request(false, "snponly.efi", "octet", &[("blksize", "1400"), ("windowsize", "4")]);
    sock.send_to(&rrq, relay).await.unwrap();
    let mut data = Vec::new();
    let mut next: u16 = 1;
    let mut got_oack = false;
    let mut buf = vec![0u8; 2000];
    loop {
        let r = tokio::time::timeout(Duration::from_millis(300), sock.recv_from(&mut buf)).await;
        let Ok(Ok((n, _))) = r else {
            // Lost: the request, the OACK's ACK, or a window's ACK.
            if !got_oack {
                sock.send_to(&rrq, relay).await.unwrap();
            } else {
                sock.send_to(&packet::ack(next.wrapping_sub(1)), relay).await.unwrap();
            }
            continue;
        };
        match packet::parse(&buf[..n]).unwrap() {
            Packet::Oack { .. } => {
                got_oack = true;
                sock.send_to(&packet::ack(0), relay).await.unwrap();
            }
            Packet::Data { block, data: d } if block == next => {
                data.extend_from_slice(d);
                next = next.wrapping_add(1);
                if d.len() < 1400 {
                    sock.send_to(&packet::ack(block), relay).await.unwrap();
                    break;
                }
                if block % 4 == 0 {
                    sock.send_to(&packet::ack(block), relay).await.unwrap();
                }
            }
            Packet::Data { .. } => {
                // A gap: say where we are.
                sock.send_to(&packet::ack(next.wrapping_sub(1)), relay).await.unwrap();
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(data == file, "every byte, in order, despite the losses");
}

fn tool(name: &str) -> std::path::PathBuf {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| {
        panic!("{name} is needed for this test: checks/deps.sh installs it (atftp, tftp-hpa, curl)")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_atftp_and_tftp_hpa_download_the_same_bytes() {
    let file = pattern(1_500_000);
    let s = server(&[("snponly.efi", file.clone())], |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let port = s.addr.port().to_string();
    let runs: Vec<(&str, Vec<String>, std::path::PathBuf)> = vec![
        (
            "curl",
            vec![
                "-sS".into(),
                "--tftp-blksize".into(),
                "1468".into(),
                "-o".into(),
                dir.path().join("curl.efi").display().to_string(),
                format!("tftp://127.0.0.1:{port}/snponly.efi"),
            ],
            dir.path().join("curl.efi"),
        ),
        (
            "atftp",
            vec![
                "--option".into(),
                "blksize 1468".into(),
                "--option".into(),
                "tsize".into(),
                "-g".into(),
                "-r".into(),
                "snponly.efi".into(),
                "-l".into(),
                dir.path().join("atftp.efi").display().to_string(),
                "127.0.0.1".into(),
                port.clone(),
            ],
            dir.path().join("atftp.efi"),
        ),
        (
            "tftp",
            vec![
                "-m".into(),
                "binary".into(),
                "127.0.0.1".into(),
                port.clone(),
                "-c".into(),
                "get".into(),
                "snponly.efi".into(),
                dir.path().join("hpa.efi").display().to_string(),
            ],
            dir.path().join("hpa.efi"),
        ),
    ];
    for (name, args, out) in runs {
        let bin = tool(name);
        let result = tokio::time::timeout(
            Duration::from_secs(60),
            tokio::process::Command::new(bin).args(&args).output(),
        )
        .await
        .unwrap_or_else(|_| panic!("{name} did not finish in 60 s"))
        .unwrap();
        assert!(result.status.success(), "{name}: {}", String::from_utf8_lossy(&result.stderr));
        let got = std::fs::read(&out).unwrap_or_else(|e| panic!("{name} wrote nothing: {e}"));
        assert!(got == file, "{name}: {} bytes, want {}", got.len(), file.len());
    }
    let done = s.finished(3).await;
    assert!(done.iter().all(|t| t.outcome == Outcome::Done), "{done:?}");
}
