//! HTTP handlers, one module per area. Handlers stay thin: extract, call the
//! domain module, shape the response.

pub mod auth;
pub mod backups;
pub mod cache;
pub mod events;
pub mod files;
pub mod machines;
pub mod netboot;
pub mod os;
pub mod pxe;
pub mod runs;
pub mod system;
pub mod ui;
pub mod workflows;

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use bty_core::mac::MacAddr;

use crate::error::ApiError;

/// A `{mac}` path segment, normalised and unicast; anything else is a 400
/// saying what a MAC looks like, or why a broadcast, multicast or all-zero
/// address cannot name a machine. Every route a MAC enters by (PXE, saving a
/// binding) takes this one.
pub struct MacParam(pub MacAddr);

impl<S: Send + Sync> FromRequestParts<S> for MacParam {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let AnyMacParam(mac) = AnyMacParam::from_request_parts(parts, state).await?;
        mac.unicast().map(MacParam).map_err(|e| ApiError::BadRequest(e.to_string()))
    }
}

/// A `{mac}` path segment that only has to be well-formed: for reading and
/// deleting records, so a machine stored under a group address before such
/// addresses were refused can still be looked at and removed.
pub struct AnyMacParam(pub MacAddr);

impl<S: Send + Sync> FromRequestParts<S> for AnyMacParam {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::BadRequest(format!("bad path: {e}")))?;
        raw.parse()
            .map(AnyMacParam)
            .map_err(|e: bty_core::mac::MacParseError| ApiError::BadRequest(e.to_string()))
    }
}
