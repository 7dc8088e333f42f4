//! DHCPv4 messages (RFC 2131, options RFC 2132): the fixed BOOTP header,
//! the magic cookie and the options, parsed into borrowed slices and
//! encoded from a [`Message`].
//!
//! A codec of our own rather than `dhcproto`: ProxyDHCP needs a dozen
//! options, and the crate would bring a DNS library (hickory-proto) and a
//! newer minimum Rust; this one is short enough to read in one sitting and
//! is fuzzed (`fuzz/`) like the image parsers.

pub use crate::ParseError;
use std::net::Ipv4Addr;

pub const BOOTREQUEST: u8 = 1;
pub const BOOTREPLY: u8 = 2;
pub const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];
/// op .. file: everything before the cookie.
pub const HEADER_LEN: usize = 236;

pub mod opt {
    pub const PAD: u8 = 0;
    pub const VENDOR_SPECIFIC: u8 = 43;
    pub const MESSAGE_TYPE: u8 = 53;
    pub const SERVER_ID: u8 = 54;
    pub const VENDOR_CLASS: u8 = 60;
    pub const TFTP_SERVER: u8 = 66;
    pub const BOOTFILE: u8 = 67;
    pub const USER_CLASS: u8 = 77;
    pub const CLIENT_ARCH: u8 = 93;
    pub const CLIENT_NDI: u8 = 94;
    pub const CLIENT_UUID: u8 = 97;
    pub const IPXE_ENCAP: u8 = 175;
    pub const END: u8 = 255;
}

pub mod msg {
    pub const DISCOVER: u8 = 1;
    pub const OFFER: u8 = 2;
    pub const REQUEST: u8 = 3;
    pub const ACK: u8 = 5;
    pub const INFORM: u8 = 8;
}

/// One DHCP message. Options keep their wire order; a code that appears
/// more than once (RFC 3396 long options) is concatenated by [`Message::option`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message<'a> {
    pub op: u8,
    pub htype: u8,
    pub hlen: u8,
    pub hops: u8,
    pub xid: u32,
    pub secs: u16,
    pub flags: u16,
    pub ciaddr: Ipv4Addr,
    pub yiaddr: Ipv4Addr,
    pub siaddr: Ipv4Addr,
    pub giaddr: Ipv4Addr,
    pub chaddr: [u8; 16],
    pub sname: &'a [u8],
    pub file: &'a [u8],
    pub options: Vec<(u8, &'a [u8])>,
}

/// Options beyond this many are not a client's.
pub const MAX_OPTIONS: usize = 128;

fn ip(b: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(b[0], b[1], b[2], b[3])
}

pub fn parse(buf: &[u8]) -> Result<Message<'_>, ParseError> {
    if buf.len() < HEADER_LEN + 4 {
        return Err(ParseError("shorter than a DHCP message"));
    }
    if buf[HEADER_LEN..HEADER_LEN + 4] != MAGIC_COOKIE {
        return Err(ParseError("no DHCP magic cookie (plain BOOTP)"));
    }
    let mut chaddr = [0u8; 16];
    chaddr.copy_from_slice(&buf[28..44]);
    let mut options = Vec::new();
    let mut rest = &buf[HEADER_LEN + 4..];
    loop {
        match rest.first() {
            // No END: what was read is what there is (some clients stop short).
            None => break,
            Some(&opt::END) => break,
            Some(&opt::PAD) => rest = &rest[1..],
            Some(&code) => {
                let len = *rest.get(1).ok_or(ParseError("option without its length"))? as usize;
                let value = rest.get(2..2 + len).ok_or(ParseError("option longer than the message"))?;
                if options.len() == MAX_OPTIONS {
                    return Err(ParseError("more than 128 options"));
                }
                options.push((code, value));
                rest = &rest[2 + len..];
            }
        }
    }
    Ok(Message {
        op: buf[0],
        htype: buf[1],
        hlen: buf[2],
        hops: buf[3],
        xid: u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]),
        secs: u16::from_be_bytes([buf[8], buf[9]]),
        flags: u16::from_be_bytes([buf[10], buf[11]]),
        ciaddr: ip(&buf[12..16]),
        yiaddr: ip(&buf[16..20]),
        siaddr: ip(&buf[20..24]),
        giaddr: ip(&buf[24..28]),
        chaddr,
        sname: &buf[44..108],
        file: &buf[108..236],
        options,
    })
}

impl<'a> Message<'a> {
    /// An option's value; repeated codes concatenated (RFC 3396).
    pub fn option(&self, code: u8) -> Option<Vec<u8>> {
        let mut parts = self.options.iter().filter(|(c, _)| *c == code).map(|(_, v)| *v).peekable();
        parts.peek()?;
        Some(parts.flatten().copied().collect())
    }

    pub fn message_type(&self) -> Option<u8> {
        self.options.iter().find(|(c, _)| *c == opt::MESSAGE_TYPE).and_then(|(_, v)| v.first().copied())
    }

    /// The client's Ethernet address, when it has one.
    pub fn mac(&self) -> Option<[u8; 6]> {
        (self.htype == 1 && self.hlen == 6).then(|| self.chaddr[..6].try_into().expect("six bytes"))
    }

    /// Encode, options in the order given, then END; padded to the 300
    /// bytes BOOTP relays and old clients expect at least.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(548);
        out.extend_from_slice(&[self.op, self.htype, self.hlen, self.hops]);
        out.extend_from_slice(&self.xid.to_be_bytes());
        out.extend_from_slice(&self.secs.to_be_bytes());
        out.extend_from_slice(&self.flags.to_be_bytes());
        for a in [self.ciaddr, self.yiaddr, self.siaddr, self.giaddr] {
            out.extend_from_slice(&a.octets());
        }
        out.extend_from_slice(&self.chaddr);
        let mut fixed = |field: &[u8], len: usize| {
            let n = field.len().min(len - 1);
            out.extend_from_slice(&field[..n]);
            out.resize(out.len() + (len - n), 0);
        };
        fixed(self.sname, 64);
        fixed(self.file, 128);
        out.extend_from_slice(&MAGIC_COOKIE);
        for (code, value) in &self.options {
            // Longer values are split into several options (RFC 3396).
            for chunk in value.chunks(255) {
                out.push(*code);
                out.push(chunk.len() as u8);
                out.extend_from_slice(chunk);
            }
            if value.is_empty() {
                out.extend_from_slice(&[*code, 0]);
            }
        }
        out.push(opt::END);
        if out.len() < 300 {
            out.resize(300, 0);
        }
        out
    }

    /// A blank request from `mac` (tests, the benchmark's clients).
    pub fn request(mac: [u8; 6], xid: u32, options: Vec<(u8, &'a [u8])>) -> Message<'a> {
        let mut chaddr = [0u8; 16];
        chaddr[..6].copy_from_slice(&mac);
        Message {
            op: BOOTREQUEST,
            htype: 1,
            hlen: 6,
            hops: 0,
            xid,
            secs: 0,
            flags: 0x8000,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            yiaddr: Ipv4Addr::UNSPECIFIED,
            siaddr: Ipv4Addr::UNSPECIFIED,
            giaddr: Ipv4Addr::UNSPECIFIED,
            chaddr,
            sname: &[],
            file: &[],
            options,
        }
    }
}

/// A NUL-padded fixed field as text (empty when it is not printable).
pub fn field_text(field: &[u8]) -> &str {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    std::str::from_utf8(&field[..end]).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_long_and_repeated_options() {
        let long = vec![7u8; 300];
        let m = Message::request(
            [0x52, 0x54, 0, 1, 2, 3],
            0xdead_beef,
            vec![
                (opt::MESSAGE_TYPE, &[msg::DISCOVER]),
                (opt::VENDOR_CLASS, b"PXEClient:Arch:00007"),
                (200, &long),
            ],
        );
        let raw = m.encode();
        let back = parse(&raw).unwrap();
        assert_eq!(back.xid, 0xdead_beef);
        assert_eq!(back.mac(), Some([0x52, 0x54, 0, 1, 2, 3]));
        assert_eq!(back.message_type(), Some(msg::DISCOVER));
        assert_eq!(back.option(opt::VENDOR_CLASS).unwrap(), b"PXEClient:Arch:00007");
        assert_eq!(back.option(200).unwrap(), long, "split into two and joined again");
        assert_eq!(back.option(opt::CLIENT_ARCH), None);
    }

    #[test]
    fn malformed_messages_are_refused() {
        assert!(parse(&[0u8; 100]).is_err());
        let mut raw = Message::request([0; 6], 1, vec![]).encode();
        raw[HEADER_LEN] = 0;
        assert!(parse(&raw).is_err(), "cookie");
        let mut raw = Message::request([0; 6], 1, vec![]).encode();
        raw.truncate(HEADER_LEN + 4);
        raw.extend_from_slice(&[opt::VENDOR_CLASS, 20, b'P']);
        assert!(parse(&raw).is_err(), "option past the end");
        raw.truncate(HEADER_LEN + 4);
        raw.push(opt::VENDOR_CLASS);
        assert!(parse(&raw).is_err(), "no length");
        raw.truncate(HEADER_LEN + 4);
        for _ in 0..200 {
            raw.extend_from_slice(&[1, 0]);
        }
        assert!(parse(&raw).is_err(), "too many options");
    }
}
