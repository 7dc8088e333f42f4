//! Runtime settings the operator edits in the browser, kept in the `settings`
//! table (so they change without a restart and travel with backups), as
//! opposed to the startup configuration in `bty.toml` ([`crate::config`]).
//!
//! The backup schedule lives in the same table and is read and written by
//! [`crate::backup`]; this module owns the display settings and the
//! switches of the network boot services (TFTP, ProxyDHCP), which override
//! `[tftp] enabled` and `[proxy_dhcp] enabled` once the operator uses them.

use rusqlite::{params, Connection, OptionalExtension};
use time::macros::format_description;
use time::{OffsetDateTime, UtcOffset};

use crate::clock;
use crate::machines::FieldError;

pub const DISPLAY_TIMEZONE: &str = "display.timezone";
pub const TFTP_ENABLED: &str = "netboot.tftp.enabled";
pub const PROXY_DHCP_ENABLED: &str = "netboot.proxy_dhcp.enabled";

/// A network boot service's switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Tftp,
    ProxyDhcp,
}

impl Service {
    pub const ALL: [Service; 2] = [Service::Tftp, Service::ProxyDhcp];

    fn key(self) -> &'static str {
        match self {
            Service::Tftp => TFTP_ENABLED,
            Service::ProxyDhcp => PROXY_DHCP_ENABLED,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Service::Tftp => "TFTP",
            Service::ProxyDhcp => "ProxyDHCP",
        }
    }

    /// The form field and settings-event name: `tftp`, `proxy_dhcp`.
    pub fn field(self) -> &'static str {
        match self {
            Service::Tftp => "tftp",
            Service::ProxyDhcp => "proxy_dhcp",
        }
    }
}

/// How times are shown: a fixed offset from UTC. Named zones (with their
/// daylight-saving rules) would need a zone database in the binary; an
/// offset is exact and enough for an operator's screen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DisplayZone(pub UtcOffset);

impl Default for DisplayZone {
    fn default() -> Self {
        DisplayZone(UtcOffset::UTC)
    }
}

impl DisplayZone {
    /// `UTC`, `Z`, `+02:00`, `-05:30`, `+2`.
    pub fn parse(s: &str) -> Result<DisplayZone, String> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("utc") || s == "Z" || s.is_empty() {
            return Ok(DisplayZone(UtcOffset::UTC));
        }
        let bad = || format!("{s:?}: use UTC or an offset such as +02:00 or -05:30");
        let (sign, rest) = match s.as_bytes()[0] {
            b'+' => (1, &s[1..]),
            b'-' => (-1, &s[1..]),
            _ => return Err(bad()),
        };
        let (h, m) = rest.split_once(':').unwrap_or((rest, "0"));
        let h: i8 = h.parse().map_err(|_| bad())?;
        let m: i8 = m.parse().map_err(|_| bad())?;
        if !(0..=14).contains(&h) || !(0..60).contains(&m) {
            return Err(bad());
        }
        UtcOffset::from_hms(sign * h, sign * m, 0).map(DisplayZone).map_err(|_| bad())
    }

    /// The canonical spelling stored and shown: `UTC` or `+02:00`.
    pub fn label(&self) -> String {
        if self.0.is_utc() {
            return "UTC".into();
        }
        let (h, m, _) = self.0.as_hms();
        let sign = if self.0.is_negative() { '-' } else { '+' };
        format!("{sign}{:02}:{:02}", h.abs(), m.abs())
    }

    /// A stored RFC 3339 time as `2026-01-02 03:04:05`, in this zone.
    pub fn format(&self, rfc3339: &str) -> String {
        let Ok(t) = OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339) else {
            return rfc3339.to_string();
        };
        t.to_offset(self.0)
            .format(format_description!("[year]-[month]-[day] [hour]:[minute]:[second]"))
            .unwrap_or_else(|_| rfc3339.to_string())
    }

    pub fn format_opt(&self, rfc3339: Option<&str>) -> String {
        rfc3339.map(|t| self.format(t)).unwrap_or_default()
    }
}

fn get(conn: &Connection, key: &str) -> rusqlite::Result<Option<String>> {
    conn.query_row("SELECT value FROM settings WHERE key = ?1", [key], |r| r.get(0)).optional()
}

fn put(conn: &Connection, key: &str, value: &str) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO settings (key, value, updated_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
        params![key, value, clock::now_rfc3339()],
    )?;
    Ok(())
}

/// The display zone; an unreadable stored value reads as UTC.
pub fn display_zone(conn: &Connection) -> rusqlite::Result<DisplayZone> {
    Ok(get(conn, DISPLAY_TIMEZONE)?.and_then(|v| DisplayZone::parse(&v).ok()).unwrap_or_default())
}

pub fn validate_zone(s: &str) -> Result<DisplayZone, FieldError> {
    DisplayZone::parse(s).map_err(|reason| FieldError { field: "display_timezone".into(), reason })
}

pub fn set_display_zone(conn: &Connection, z: DisplayZone) -> rusqlite::Result<()> {
    put(conn, DISPLAY_TIMEZONE, &z.label())
}

/// The operator's switch for `service`: `None` until it was first used,
/// so the configuration's default applies.
pub fn service_switch(conn: &Connection, service: Service) -> rusqlite::Result<Option<bool>> {
    Ok(get(conn, service.key())?.and_then(|v| match v.as_str() {
        "on" => Some(true),
        "off" => Some(false),
        _ => None,
    }))
}

pub fn set_service_switch(conn: &Connection, service: Service, on: bool) -> rusqlite::Result<()> {
    put(conn, service.key(), if on { "on" } else { "off" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zones_parse_and_format() {
        assert_eq!(DisplayZone::parse("utc").unwrap().label(), "UTC");
        assert_eq!(DisplayZone::parse("+2").unwrap().label(), "+02:00");
        assert_eq!(DisplayZone::parse("-05:30").unwrap().label(), "-05:30");
        assert!(DisplayZone::parse("UTC+01:00").is_err());
        assert!(DisplayZone::parse("+15:00").is_err());
        assert!(DisplayZone::parse("Europe/Oslo").is_err());
        let z = DisplayZone::parse("+01:00").unwrap();
        assert_eq!(z.format("2026-01-02T23:30:00Z"), "2026-01-03 00:30:00");
        assert_eq!(z.format("garbage"), "garbage");
    }
}
