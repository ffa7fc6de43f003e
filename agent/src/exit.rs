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
        f.write_str(&chain(&self.error))
    }
}

/// `e` and its causes joined with `: `, each cause named once: one whose text is already in
/// the message (an error that prints its source, then also returns it) is not repeated.
pub fn chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let m = cause.to_string();
        if out.contains(&m) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&m);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cause_is_named_once() {
        let io = || std::io::Error::from_raw_os_error(20);
        let e = anyhow::Error::from(io())
            .context(format!("cannot read x: {}", io()))
            .context("x/config.json");
        assert_eq!(
            chain(&e),
            "x/config.json: cannot read x: Not a directory (os error 20)"
        );
        let e = anyhow::Error::from(io()).context("create x");
        assert_eq!(chain(&e), "create x: Not a directory (os error 20)");
    }
}
