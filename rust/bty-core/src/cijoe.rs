//! What bty hands a CIJOE workflow: the `[bty]` config table (and, for
//! online runs, the SSH transport), shared by the live environment's
//! offline runs and the server's online ones.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The `[bty]` table bty hands a workflow (`{{ config.bty.… }}`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct BtyValues {
    pub mac: String,
    pub image: Option<String>,
    pub digest: Option<String>,
    /// Offline: where the written root filesystem is mounted.
    pub target_root: Option<String>,
    /// Offline: the disk that was flashed.
    pub target_disk: Option<String>,
    /// Online: the address the machine is reached at.
    pub host: Option<String>,
}

/// The config file bty writes for a run: `[bty]`, and (online) the SSH
/// transport with the server's key.
pub fn bty_config(values: &BtyValues, ssh: Option<&SshTransport>) -> String {
    let mut t = toml::Table::new();
    t.insert("bty".into(), toml::Value::try_from(values).unwrap_or(toml::Value::Table(Default::default())));
    if let Some(s) = ssh {
        let mut tr = toml::Table::new();
        tr.insert("hostname".into(), s.host.clone().into());
        tr.insert("port".into(), i64::from(s.port).into());
        tr.insert("username".into(), s.user.clone().into());
        tr.insert("key_filename".into(), s.key_file.display().to_string().into());
        // Never ask for or fall back to passwords or an agent's keys.
        tr.insert("look_for_keys".into(), false.into());
        tr.insert("allow_agent".into(), false.into());
        let mut transports = toml::Table::new();
        transports.insert("ssh".into(), tr.into());
        let mut cijoe = toml::Table::new();
        cijoe.insert("transport".into(), transports.into());
        t.insert("cijoe".into(), cijoe.into());
    }
    toml::to_string(&t).unwrap_or_default()
}

#[derive(Debug, Clone)]
pub struct SshTransport {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub key_file: PathBuf,
}
