//! Trace replay: a JSON-lines file, one request per line.
//!
//! ```text
//! {"arrival_s": 0.0, "prompt_tokens": 32, "output_tokens": 16}
//! {"arrival_s": 0.5, "prompt_tokens": 128, "output_tokens": 64}
//! ```
//!
//! Every line is an object with exactly these three fields (unknown fields are refused).
//! Arrivals are seconds from the start of the run, finite, non-negative and in ascending order
//! (equal arrivals are fine); both token counts are at least 1. Blank lines are skipped. Line
//! numbers in errors count from 1 and include blank lines.

use std::io::{BufRead, BufReader, ErrorKind, Read};
use std::path::Path;

use serde::Deserialize;

use super::{MAX_REQUESTS, RequestSpec, TrafficError};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    arrival_s: f64,
    prompt_tokens: u32,
    output_tokens: u32,
}

/// The largest trace read: [`MAX_REQUESTS`] lines of about 64 bytes each, with headroom.
const MAX_TRACE_BYTES: u64 = 2 << 30;

/// Every request of the trace at `path` that arrives before `duration_s`, ids from 0. Only a
/// regular file of at most [`MAX_TRACE_BYTES`] is read (a FIFO or `/dev/zero` is refused).
pub(super) fn read(path: &Path, duration_s: f64) -> Result<Vec<RequestSpec>, TrafficError> {
    let (file, _) = crate::fsio::open_regular_capped(path, MAX_TRACE_BYTES).map_err(|e| {
        TrafficError::TraceRead {
            path: path.to_path_buf(),
            cause: e.into_io(),
        }
    })?;
    // Never more than the cap, even from a file that grows while it is read.
    let capped = file.take(MAX_TRACE_BYTES);
    parse(path, BufReader::new(capped), duration_s)
}

/// [`read`] over any reader; `path` only names the trace in errors.
pub(super) fn parse(
    path: &Path,
    reader: impl BufRead,
    duration_s: f64,
) -> Result<Vec<RequestSpec>, TrafficError> {
    let bad = |line: usize, problem: String| TrafficError::TraceLine {
        path: path.to_path_buf(),
        line,
        problem,
    };
    let mut out = Vec::new();
    let mut seen = 0u64;
    let mut last = 0.0f64;
    for (i, text) in reader.lines().enumerate() {
        let line = i + 1;
        let text = match text {
            Ok(t) => t,
            Err(e) if e.kind() == ErrorKind::InvalidData => {
                return Err(bad(line, "is not valid UTF-8".into()));
            }
            Err(source) => {
                return Err(TrafficError::TraceRead {
                    path: path.to_path_buf(),
                    cause: source,
                });
            }
        };
        if text.trim().is_empty() {
            continue;
        }
        let r: Line = serde_json::from_str(&text).map_err(|e| {
            bad(
                line,
                format!(
                    "is not a request object {{\"arrival_s\", \"prompt_tokens\", \"output_tokens\"}}: {e}"
                ),
            )
        })?;
        if !r.arrival_s.is_finite() || r.arrival_s < 0.0 {
            return Err(bad(
                line,
                format!(
                    "arrival_s must be a non-negative finite number of seconds, got {}",
                    r.arrival_s
                ),
            ));
        }
        if r.arrival_s < last {
            return Err(bad(
                line,
                format!(
                    "arrivals must be in ascending order, got arrival_s {} after {last}",
                    r.arrival_s
                ),
            ));
        }
        if r.prompt_tokens == 0 {
            return Err(bad(line, "prompt_tokens must be at least 1, got 0".into()));
        }
        if r.output_tokens == 0 {
            return Err(bad(line, "output_tokens must be at least 1, got 0".into()));
        }
        seen += 1;
        if seen > MAX_REQUESTS {
            return Err(bad(
                line,
                format!("the trace holds more than the cap of {MAX_REQUESTS} requests"),
            ));
        }
        last = r.arrival_s;
        if r.arrival_s < duration_s {
            out.push(RequestSpec {
                id: out.len() as u64,
                arrival_s: r.arrival_s,
                prompt_tokens: r.prompt_tokens,
                output_tokens: r.output_tokens,
            });
        }
    }
    if seen == 0 {
        return Err(TrafficError::TraceEmpty {
            path: path.to_path_buf(),
        });
    }
    Ok(out)
}
