//! `bty-netboot`: the protocol services that get PXE firmware to bty-web's
//! HTTP routes: a read-only TFTP server for the iPXE binaries and a
//! ProxyDHCP responder that tells PXE clients where to boot from while the
//! LAN's DHCP server keeps assigning addresses.
//!
//! The crate knows neither HTTP nor the database: it talks to the control
//! plane through [`Host`], which `bty-web` implements (boot files from the
//! boot directory, sightings into the machine records, counters into
//! `/metrics`). Each service is bound first (so a busy port or a missing
//! capability is an error the operator sees at once) and then run as a
//! future that ends everything it started when it is dropped.

pub mod dhcp;
pub mod status;
pub mod tftp;

use std::fmt;
use std::sync::Arc;

/// Why a packet (TFTP or DHCP) was not read: what was wrong with it, in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(pub &'static str);

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for ParseError {}

/// What the services need from the rest of the server. Called on the hot
/// path: implementations return at once (hand slow work to a task).
pub trait Host: Send + Sync + 'static {
    /// An allow-listed boot file's bytes, or `None` when it is not in the
    /// boot directory.
    fn boot_file(&self, name: &str) -> Option<Arc<[u8]>>;
    /// A TFTP request ended (every request, whatever the outcome).
    fn tftp_finished(&self, transfer: &tftp::Transfer);
    /// A ProxyDHCP request was answered (or seen and left unanswered).
    fn dhcp_answered(&self, sighting: &dhcp::Sighting);
}
