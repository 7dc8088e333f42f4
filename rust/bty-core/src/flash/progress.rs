//! Progress reporting: one event type for every front end (terminal bar,
//! NDJSON, serial-console markers, the TUI).

/// Pipeline phases in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Streaming: read (or download), decompress, hash and write at once.
    Write,
    /// fsync of the target.
    Sync,
    /// Partition table fix-ups (GPT backup header) and re-read.
    Finalize,
    /// Read-back comparison.
    Verify,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Write => "write",
            Phase::Sync => "sync",
            Phase::Finalize => "finalize",
            Phase::Verify => "verify",
        }
    }
}

/// A snapshot of progress, emitted a few times per second and at phase changes.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Progress {
    pub phase: Phase,
    /// Image bytes processed in this phase (written, verified).
    pub bytes: u64,
    /// Total for this phase, when known.
    pub total: Option<u64>,
    /// Published (possibly compressed) bytes read or downloaded so far.
    pub source_bytes: u64,
    pub source_total: Option<u64>,
    /// Bytes per second in this phase so far.
    pub rate_bps: f64,
    pub elapsed_s: f64,
}

impl Progress {
    /// Fraction done in `[0, 1]`, preferring the image total and falling back
    /// to the published stream (compressed images of unknown size).
    pub fn fraction(&self) -> Option<f64> {
        match (self.total, self.source_total) {
            (Some(t), _) if t > 0 => Some((self.bytes as f64 / t as f64).min(1.0)),
            (_, Some(s)) if s > 0 => Some((self.source_bytes as f64 / s as f64).min(1.0)),
            _ => None,
        }
    }

    pub fn eta_s(&self) -> Option<f64> {
        let f = self.fraction()?;
        (f > 0.0 && self.elapsed_s > 0.5).then(|| self.elapsed_s * (1.0 - f) / f)
    }
}
