//! `bty-control`: the provisioning server's control plane, without HTTP.
//!
//! The rules and the state of `bty-web`: configuration, the database and its
//! migrations, machines and their boot policies, PXE decisions and offer
//! tokens, the iPXE scripts, the audit log, accounts, sessions and API
//! tokens, settings, backups, bundles, netboot fetching, the image catalog
//! and its edits, the operator's health checks and the metrics counters.
//! `bty-web` is the HTTP front over it; nothing here knows axum, hyper or
//! tower.

pub mod accounts;
pub mod appliance_os;
pub mod audit;
pub mod backup;
pub mod bundle;
pub mod cache;
pub mod catalog;
pub mod catalog_edit;
pub mod cijoe;
pub mod clock;
pub mod config;
pub mod db;
pub mod health;
pub mod ipxe;
pub mod machines;
pub mod metrics;
pub mod netboot;
pub mod online;
pub mod password;
pub mod policy;
pub mod pxe;
pub mod runs;
pub mod secret;
pub mod settings;
pub mod ssh_identity;
pub mod workflows;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
