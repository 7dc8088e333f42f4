//! One error type for the engine. Every error carries a [`ErrorKind`] that the
//! binaries map to their documented exit codes, and a message written for the
//! operator: what failed and what to do about it.

use std::fmt;

/// Broad classes of failure. Each maps to one stable process exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// Generic failure: I/O, a refused target, a bad source.
    Failure,
    /// A wrong invocation: bad flags, a missing image file, a write without
    /// `--yes`, or an input bty does not flash (a tarball, an lzop file, a zip
    /// of several files...), refused by name with what to do instead.
    Usage,
    /// The operation needs privileges the process does not have.
    NotPermitted,
    /// The image is damaged or inconsistent: its bytes do not match their
    /// digest, the stream ended early, a checksum inside the format failed, its
    /// container metadata (qcow2, zip, simg headers) or its block map is
    /// malformed or disagrees with the data.
    Integrity,
    /// The target changed between planning and writing (re-plugged, mounted, resized).
    TargetChanged,
    /// The operator cancelled (Ctrl-C); the target may hold a partial write.
    Cancelled,
}

impl ErrorKind {
    /// Exit codes documented in `bty --help` and the README.
    pub fn exit_code(self) -> i32 {
        match self {
            ErrorKind::Failure => 1,
            ErrorKind::Usage => 2,
            ErrorKind::NotPermitted => 3,
            ErrorKind::Integrity => 4,
            ErrorKind::TargetChanged => 5,
            ErrorKind::Cancelled => 130,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Failure => "failure",
            ErrorKind::Usage => "usage",
            ErrorKind::NotPermitted => "not-permitted",
            ErrorKind::Integrity => "integrity",
            ErrorKind::TargetChanged => "target-changed",
            ErrorKind::Cancelled => "cancelled",
        }
    }
}

/// An engine error: a kind and an operator-facing message.
#[derive(Debug, thiserror::Error)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    #[source]
    source: Option<std::io::Error>,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(src) = &self.source {
            write!(f, ": {src}")?;
        }
        Ok(())
    }
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error { kind, message: message.into(), source: None }
    }
    pub fn failure(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Failure, message)
    }
    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Usage, message)
    }
    pub fn integrity(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Integrity, message)
    }
    pub fn target_changed(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::TargetChanged, message)
    }
    /// Wrap an I/O error with what was being done. Permission errors become
    /// [`ErrorKind::NotPermitted`] so callers can say "run as root".
    pub fn io(context: impl Into<String>, err: std::io::Error) -> Self {
        let kind = match err.kind() {
            std::io::ErrorKind::PermissionDenied => ErrorKind::NotPermitted,
            _ => ErrorKind::Failure,
        };
        Error { kind, message: context.into(), source: Some(err) }
    }
    /// Carry this error through an `io::Read` implementation; the pipeline
    /// recovers it with [`Error::from_io`] so its kind survives the trip.
    pub fn into_io(self) -> std::io::Error {
        std::io::Error::other(self)
    }
    /// The engine error inside `e` if it was made by [`Error::into_io`].
    pub fn from_io(e: std::io::Error) -> std::result::Result<Error, std::io::Error> {
        if e.get_ref().is_some_and(|inner| inner.is::<Error>()) {
            let inner = e.into_inner().expect("checked above");
            Ok(*inner.downcast::<Error>().expect("checked above"))
        } else {
            Err(e)
        }
    }
    /// The same error filed under another kind.
    pub fn with_kind(mut self, kind: ErrorKind) -> Self {
        self.kind = kind;
        self
    }
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
    pub fn message(&self) -> &str {
        &self.message
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
