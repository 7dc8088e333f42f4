//! Timestamps as the API and the database store them: RFC 3339 UTC with
//! whole seconds (`2026-01-02T03:04:05Z`), which sorts as text.

use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::OffsetDateTime;

pub fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

pub fn rfc3339(t: OffsetDateTime) -> String {
    t.replace_nanosecond(0).unwrap_or(t).format(&Rfc3339).unwrap_or_else(|_| t.unix_timestamp().to_string())
}

pub fn now_rfc3339() -> String {
    rfc3339(now())
}

pub fn unix_now() -> i64 {
    now().unix_timestamp()
}

/// `20260102T030405Z`, for file names.
pub fn compact(t: OffsetDateTime) -> String {
    t.format(format_description!("[year][month][day]T[hour][minute][second]Z"))
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

pub fn from_unix(secs: i64) -> String {
    OffsetDateTime::from_unix_timestamp(secs).map(rfc3339).unwrap_or_else(|_| secs.to_string())
}

/// `2026-01-02T03-04-05Z`: RFC 3339 made safe for directory names; sorts as text.
pub fn dir_stamp(t: OffsetDateTime) -> String {
    t.format(format_description!("[year]-[month]-[day]T[hour]-[minute]-[second]Z"))
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// The inverse of [`dir_stamp`] (ignoring any `-N` suffix), as unix seconds.
pub fn parse_dir_stamp(s: &str) -> Option<i64> {
    let s = s.get(..20)?;
    time::PrimitiveDateTime::parse(s, format_description!("[year]-[month]-[day]T[hour]-[minute]-[second]Z"))
        .ok()
        .map(|t| t.assume_utc().unix_timestamp())
}
