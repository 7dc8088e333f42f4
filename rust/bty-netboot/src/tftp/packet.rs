//! TFTP packets (RFC 1350) with options (RFC 2347), parsed without
//! allocating beyond the option list and encoded into a caller's buffer.
//!
//! Parsing is strict where a lenient reading could be exploited (strings
//! must end in NUL and be printable ASCII, at most [`MAX_OPTIONS`] options)
//! and lenient where firmware is known to differ (option names and the mode
//! are case-insensitive; a trailing NUL-less byte run after the last option
//! is ignored, as tftp-hpa and dnsmasq ignore it).

pub use crate::ParseError;

pub const RRQ: u16 = 1;
pub const WRQ: u16 = 2;
pub const DATA: u16 = 3;
pub const ACK: u16 = 4;
pub const ERROR: u16 = 5;
pub const OACK: u16 = 6;

/// More options than any client sends; a request with more is refused.
pub const MAX_OPTIONS: usize = 16;
/// The longest file name or option string accepted.
pub const MAX_STRING: usize = 255;

/// Error codes (RFC 1350, RFC 2347).
pub mod code {
    pub const NOT_DEFINED: u16 = 0;
    pub const FILE_NOT_FOUND: u16 = 1;
    pub const ACCESS_VIOLATION: u16 = 2;
    pub const ILLEGAL_OPERATION: u16 = 4;
    pub const UNKNOWN_TID: u16 = 5;
    /// The client declined the options: EDK2's size probe ends this way.
    pub const OPTION_REFUSED: u16 = 8;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet<'a> {
    /// A read or write request (`write` for WRQ).
    Request {
        write: bool,
        filename: &'a str,
        mode: &'a str,
        options: Vec<(&'a str, &'a str)>,
    },
    Data {
        block: u16,
        data: &'a [u8],
    },
    Ack {
        block: u16,
    },
    Error {
        code: u16,
        message: &'a str,
    },
    Oack {
        options: Vec<(&'a str, &'a str)>,
    },
}

/// Split off one NUL-terminated printable-ASCII string.
fn take_str(buf: &[u8]) -> Result<(&str, &[u8]), ParseError> {
    let end = buf.iter().position(|&b| b == 0).ok_or(ParseError("string without its terminating NUL"))?;
    let s = &buf[..end];
    if s.len() > MAX_STRING {
        return Err(ParseError("string longer than 255 bytes"));
    }
    if !s.iter().all(|b| (0x20..0x7f).contains(b)) {
        return Err(ParseError("string is not printable ASCII"));
    }
    // Printable ASCII is UTF-8.
    let s = std::str::from_utf8(s).map_err(|_| ParseError("string is not printable ASCII"))?;
    Ok((s, &buf[end + 1..]))
}

fn take_options(mut rest: &[u8]) -> Result<Vec<(&str, &str)>, ParseError> {
    let mut options = Vec::new();
    // Some clients pad the packet; bytes after the last complete pair that
    // contain no NUL are not an option.
    while rest.contains(&0) {
        let (name, r) = take_str(rest)?;
        let (value, r) = take_str(r).map_err(|_| ParseError("option without a value"))?;
        if options.len() == MAX_OPTIONS {
            return Err(ParseError("more than 16 options"));
        }
        options.push((name, value));
        rest = r;
    }
    Ok(options)
}

pub fn parse(buf: &[u8]) -> Result<Packet<'_>, ParseError> {
    if buf.len() < 4 {
        return Err(ParseError("shorter than any TFTP packet"));
    }
    let opcode = u16::from_be_bytes([buf[0], buf[1]]);
    let body = &buf[2..];
    let word = || u16::from_be_bytes([body[0], body[1]]);
    match opcode {
        RRQ | WRQ => {
            let (filename, rest) = take_str(body)?;
            let (mode, rest) = take_str(rest)?;
            if filename.is_empty() {
                return Err(ParseError("empty file name"));
            }
            Ok(Packet::Request { write: opcode == WRQ, filename, mode, options: take_options(rest)? })
        }
        DATA => Ok(Packet::Data { block: word(), data: &body[2..] }),
        ACK => Ok(Packet::Ack { block: word() }),
        ERROR => {
            let msg = &body[2..];
            // The message is informational; a missing NUL or odd bytes do not
            // make the error less of an error.
            let end = msg.iter().position(|&b| b == 0).unwrap_or(msg.len());
            let message = std::str::from_utf8(&msg[..end.min(MAX_STRING)]).unwrap_or("");
            Ok(Packet::Error { code: word(), message })
        }
        OACK => Ok(Packet::Oack { options: take_options(body)? }),
        _ => Err(ParseError("unknown opcode")),
    }
}

/// Encoders write into `out` (cleared first) and return it as a slice.
pub fn data<'b>(out: &'b mut Vec<u8>, block: u16, payload: &[u8]) -> &'b [u8] {
    out.clear();
    out.extend_from_slice(&DATA.to_be_bytes());
    out.extend_from_slice(&block.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

pub fn ack(block: u16) -> [u8; 4] {
    let [a, b] = ACK.to_be_bytes();
    let [c, d] = block.to_be_bytes();
    [a, b, c, d]
}

pub fn error(code: u16, message: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + message.len());
    out.extend_from_slice(&ERROR.to_be_bytes());
    out.extend_from_slice(&code.to_be_bytes());
    out.extend(message.bytes().filter(|b| (0x20..0x7f).contains(b)).take(MAX_STRING));
    out.push(0);
    out
}

pub fn oack(options: &[(&str, String)]) -> Vec<u8> {
    let mut out = OACK.to_be_bytes().to_vec();
    for (name, value) in options {
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.extend_from_slice(value.as_bytes());
        out.push(0);
    }
    out
}

/// A request as a client sends it (tests and the benchmark's client).
pub fn request(write: bool, filename: &str, mode: &str, options: &[(&str, &str)]) -> Vec<u8> {
    let mut out = (if write { WRQ } else { RRQ }).to_be_bytes().to_vec();
    for s in [filename, mode].into_iter().chain(options.iter().flat_map(|(n, v)| [*n, *v])) {
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_options_keep_their_order() {
        let raw = request(
            false,
            "snponly.efi",
            "octet",
            &[("tsize", "0"), ("blksize", "1468"), ("windowsize", "4")],
        );
        let Packet::Request { write, filename, mode, options } = parse(&raw).unwrap() else { panic!() };
        assert!(!write);
        assert_eq!((filename, mode), ("snponly.efi", "octet"));
        assert_eq!(options, vec![("tsize", "0"), ("blksize", "1468"), ("windowsize", "4")]);
    }

    #[test]
    fn malformed_packets_are_refused_with_a_reason() {
        assert!(parse(b"\x00\x01").is_err());
        assert!(parse(b"\x00\x01file\x00octet").is_err(), "mode without NUL");
        assert!(parse(b"\x00\x01\x00octet\x00").is_err(), "empty name");
        assert!(parse(b"\x00\x01fi\x01le\x00octet\x00").is_err(), "control byte");
        assert!(parse(b"\x00\x01file\x00octet\x00tsize\x00").is_err(), "option without value");
        assert!(parse(b"\x00\x09\x00\x00").is_err(), "opcode");
        let mut many = request(false, "f", "octet", &[]);
        for i in 0..17 {
            many.extend_from_slice(format!("o{i}\x001\x00").as_bytes());
        }
        assert!(parse(&many).is_err());
        // Padding after the options is not an option.
        let mut padded = request(false, "f", "octet", &[("tsize", "0")]);
        padded.extend_from_slice(b"xx");
        assert!(matches!(parse(&padded), Ok(Packet::Request { options, .. }) if options.len() == 1));
    }

    #[test]
    fn errors_acks_and_data() {
        assert_eq!(
            parse(&error(code::OPTION_REFUSED, "User aborted the transfer")).unwrap(),
            Packet::Error { code: 8, message: "User aborted the transfer" }
        );
        assert_eq!(parse(b"\x00\x05\x00\x08").unwrap(), Packet::Error { code: 8, message: "" });
        assert_eq!(parse(&ack(65535)).unwrap(), Packet::Ack { block: 65535 });
        let mut buf = Vec::new();
        assert_eq!(parse(data(&mut buf, 7, b"abc")).unwrap(), Packet::Data { block: 7, data: b"abc" });
        let o = oack(&[("blksize", "1468".into())]);
        assert_eq!(parse(&o).unwrap(), Packet::Oack { options: vec![("blksize", "1468")] });
    }
}
