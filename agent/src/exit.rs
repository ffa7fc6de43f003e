//! Exit codes, shared by every subcommand and documented in the README.

use std::process::ExitCode;

/// Success.
pub const OK: u8 = 0;
/// The command ran and failed (I/O, a backend call, an operation that failed).
pub const FAILED: u8 = 1;
/// Usage or configuration error: a bad flag, value, file or target. Nothing was changed.
pub const USAGE: u8 = 2;
/// The request is well-formed but refused by a rule of the system (not enough memory on a
/// device, not enough devices). Nothing was changed.
pub const REFUSED: u8 = 3;
/// The requested device backend is not available here (its vendor library did not load).
pub const BACKEND_UNAVAILABLE: u8 = 4;

/// An error with the exit code it maps to.
#[derive(Debug)]
pub struct CliError {
    pub code: u8,
    pub error: anyhow::Error,
}

impl CliError {
    pub fn new(code: u8, error: impl Into<anyhow::Error>) -> Self {
        Self {
            code,
            error: error.into(),
        }
    }

    pub fn usage(error: impl Into<anyhow::Error>) -> Self {
        Self::new(USAGE, error)
    }

    pub fn failed(error: impl Into<anyhow::Error>) -> Self {
        Self::new(FAILED, error)
    }

    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(self.code)
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.error)
    }
}
