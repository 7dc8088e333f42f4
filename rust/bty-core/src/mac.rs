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

impl MacAddr {
    pub const fn new(bytes: [u8; 6]) -> Self {
        MacAddr(bytes)
    }

    pub fn octets(&self) -> [u8; 6] {
        self.0
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
    fn serde_round_trip() {
        let m: MacAddr = serde_json::from_str("\"AA-BB-CC-DD-EE-FF\"").unwrap();
        assert_eq!(serde_json::to_string(&m).unwrap(), "\"aa:bb:cc:dd:ee:ff\"");
        assert!(serde_json::from_str::<MacAddr>("\"nope\"").is_err());
    }
}
