//! The bty engine: image formats, sources, the flash pipeline, disk discovery,
//! the image catalog and the wire types shared by `bty`, `bty-tui` and `bty-web`.
//!
//! The binaries are thin front ends over this crate; see `ARCHITECTURE.md` at the
//! repository root for where each concern lives.

pub mod agent;
pub mod appliance_secrets;
pub mod bmap;
pub mod catalog;
pub mod cijoe;
pub mod concat;
pub mod digest;
pub mod disks;
pub mod error;
pub mod flash;
pub mod format;
pub mod hardware;
pub mod inspect;
mod lz4;
pub mod mac;
pub mod oci;
pub mod osapply;
pub mod osupdate;
pub mod partition;
pub mod provision;
pub mod qcow2;
pub mod simg;
pub mod slots;
pub mod source;
pub mod wire;
pub mod zip;

pub use error::{Error, ErrorKind, Result};

/// The version every binary reports; one number for the whole workspace.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
