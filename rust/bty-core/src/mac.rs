//! MAC addresses as machines are identified by: parsed leniently (firmware,
//! DHCP logs and operators all spell them differently), shown one way.

use std::fmt;
use std::str::FromStr;

/// A 48-bit Ethernet MAC address. Displays as lowercase `aa:bb:cc:dd:ee:ff`,
/// the one spelling the server stores and compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MacAddr([u8; 6]);

/// Why a string is not a MAC address; the message shows what one looks like.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{input}` is not a MAC address: expected six hex byte pairs such as aa:bb:cc:dd:ee:ff, AA-BB-CC-DD-EE-FF or aabbccddeeff")]
pub struct MacParseError {
    input: String,
}

/// A well-formed MAC that no network card has; the message says which kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{}", describe_not_unicast(.0))]
pub struct NotUnicast(pub MacAddr);

fn describe_not_unicast(m: &MacAddr) -> String {
    let kind = if m.0 == [0xff; 6] {
        "the broadcast address"
    } else if m.0 == [0; 6] {
        "all zeros, which firmware reports when it has no address"
    } else {
        "a multicast address (the low bit of its first octet is set)"
    };
    format!("{m} is {kind}; a network card's MAC is unicast, e.g. 52:54:00:12:34:56")
}

impl MacAddr {
    pub const fn new(bytes: [u8; 6]) -> Self {
        MacAddr(bytes)
    }

    pub fn octets(&self) -> [u8; 6] {
        self.0
    }

    /// Whether a network card could have this address: not multicast (the
    /// low bit of the first octet, which broadcast `ff:ff:ff:ff:ff:ff` has
    /// too) and not all zeros. Locally administered unicast addresses, such
    /// as QEMU's `52:54:00:…`, are unicast.
    pub fn is_unicast(&self) -> bool {
        self.0[0] & 1 == 0 && self.0 != [0; 6]
    }

    /// `self` if [`MacAddr::is_unicast`], else why not: a machine is never
    /// identified by a group address, so one arriving as an identity is a
    /// typo or a forgery.
    pub fn unicast(self) -> Result<MacAddr, NotUnicast> {
        if self.is_unicast() {
            Ok(self)
        } else {
            Err(NotUnicast(self))
        }
    }

    /// `aa-bb-cc-dd-ee-ff`: the form iPXE's `${mac:hexhyp}` produces, and safe
    /// in file names.
    pub fn hyphenated(&self) -> String {
        let b = self.0;
        format!("{:02x}-{:02x}-{:02x}-{:02x}-{:02x}-{:02x}", b[0], b[1], b[2], b[3], b[4], b[5])
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3], b[4], b[5])
    }
}

fn hex_pair(s: &str) -> Option<u8> {
    if s.len() != 2 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u8::from_str_radix(s, 16).ok()
}

impl FromStr for MacAddr {
    type Err = MacParseError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = || MacParseError { input: input.chars().take(64).collect() };
        let s = input.trim();
        let mut out = [0u8; 6];
        if s.len() == 12 {
            for (i, byte) in out.iter_mut().enumerate() {
                *byte = hex_pair(s.get(2 * i..2 * i + 2).ok_or_else(err)?).ok_or_else(err)?;
            }
            return Ok(MacAddr(out));
        }
        // One separator style throughout: `aa:bb-cc...` is more likely a typo
        // than a real address.
        let sep = if s.contains(':') { ':' } else { '-' };
        let parts: Vec<&str> = s.split(sep).collect();
        if parts.len() != 6 {
            return Err(err());
        }
        for (byte, part) in out.iter_mut().zip(parts) {
            *byte = hex_pair(part).ok_or_else(err)?;
        }
        Ok(MacAddr(out))
    }
}

impl serde::Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_common_spellings() {
        let want = "aa:bb:cc:0d:ee:ff";
        for s in [
            "aa:bb:cc:0d:ee:ff",
            "AA:BB:CC:0D:EE:FF",
            "aa-bb-cc-0d-ee-ff",
            "AaBbCc0dEeFf",
            " aa:bb:cc:0d:ee:ff ",
        ] {
            assert_eq!(s.parse::<MacAddr>().unwrap().to_string(), want, "{s}");
        }
        assert_eq!("aa:bb:cc:0d:ee:ff".parse::<MacAddr>().unwrap().hyphenated(), "aa-bb-cc-0d-ee-ff");
    }

    #[test]
    fn refuses_the_rest() {
        for s in [
            "",
            "aa:bb:cc:dd:ee",
            "aa:bb:cc:dd:ee:ff:00",
            "aa:bb-cc:dd:ee:ff",
            "a:bb:cc:dd:ee:ff0",
            "gg:bb:cc:dd:ee:ff",
            "aabbccddeef",
            "+a:bb:cc:dd:ee:ff",
            "aa.bb.cc.dd.ee.ff",
            "ééééééé",
            "éééééé",
        ] {
            let err = s.parse::<MacAddr>().unwrap_err();
            assert!(err.to_string().contains("aa:bb:cc:dd:ee:ff"), "{s}: {err}");
        }
    }

    #[test]
    fn unicast_and_the_rest() {
        for s in ["52:54:00:12:34:56", "aa:bb:cc:dd:ee:ff", "02:00:00:00:00:01", "00:00:00:00:00:01"] {
            let m: MacAddr = s.parse().unwrap();
            assert!(m.is_unicast(), "{s}");
            assert_eq!(m.unicast(), Ok(m));
        }
        for (s, says) in [
            ("ff:ff:ff:ff:ff:ff", "broadcast"),
            ("00:00:00:00:00:00", "all zeros"),
            ("01:00:5e:00:00:01", "multicast"),
            ("33:33:00:00:00:01", "multicast"),
            ("03:00:00:00:00:00", "multicast"),
        ] {
            let m: MacAddr = s.parse().unwrap();
            assert!(!m.is_unicast(), "{s}");
            let err = m.unicast().unwrap_err().to_string();
            assert!(err.starts_with(s) && err.contains(says) && err.contains("unicast"), "{err}");
        }
    }

    #[test]
    fn serde_round_trip() {
        let m: MacAddr = serde_json::from_str("\"AA-BB-CC-DD-EE-FF\"").unwrap();
        assert_eq!(serde_json::to_string(&m).unwrap(), "\"aa:bb:cc:dd:ee:ff\"");
        assert!(serde_json::from_str::<MacAddr>("\"nope\"").is_err());
    }
}
