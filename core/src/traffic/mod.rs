//! Traffic generators: the requests a serving run receives, with their arrival times and lengths.
//!
//! Pure and deterministic: a [`TrafficSpec`] and its `seed` always give the same
//! [`RequestSpec`]s, on every build and platform (the generator is specified in this crate, see
//! `rng.rs`). Arrivals, prompt lengths and output lengths draw from three separate streams of the
//! seed, so changing one of them leaves the others as they were.
//!
//! # Profiles
//!
//! - `poisson`: a Poisson process at `rate` requests/s (exponential inter-arrival times).
//! - `step`: Poisson at `before` requests/s, then at `after` from `at_s` on.
//! - `ramp`: a non-homogeneous Poisson process whose rate rises (or falls) linearly from `from` to
//!   `to` over `over_s` seconds and stays at `to` afterwards (exact, by time-rescaling).
//! - `offline`: `count` requests all arriving at t = 0, like the paper's offline batch.
//! - `trace`: replay a JSON-lines file (format in [`trace`](self#traces)).
//!
//! Synthetic arrivals lie in `[0, duration_s)`; `offline` ignores the duration; a trace keeps the
//! requests arriving before `duration_s` (all of them when it is not given). At most
//! [`MAX_REQUESTS`] requests are generated; a spec that would make more is refused.
//!
//! # The `[traffic]` table
//!
//! A [`TrafficSpec`] deserializes from a flat table: `profile` names the profile, its parameters
//! sit beside it, and unknown or misplaced keys are refused.
//!
//! ```toml
//! [traffic]
//! profile = "poisson"                       # poisson | step | ramp | offline | trace
//! rate = 4.0                                # requests/s
//! prompt = { uniform = { min = 16, max = 64 } }
//! output = { fixed = 32 }
//! seed = 1                                  # optional, default 0
//! duration_s = 60.0                         # seconds
//! ```
//!
//! | profile   | parameters                 | `prompt`, `output` | `duration_s`           |
//! |-----------|----------------------------|--------------------|------------------------|
//! | `poisson` | `rate`                     | required           | required               |
//! | `step`    | `before`, `after`, `at_s`  | required           | required               |
//! | `ramp`    | `from`, `to`, `over_s`     | required           | required               |
//! | `offline` | `count`                    | required           | optional, ignored      |
//! | `trace`   | `path`                     | refused (in file)  | optional cut-off       |
//!
//! Rates are requests per second, times are seconds (plain numbers; integers are accepted).
//! Lengths ([`Lengths`]) are `{ fixed = N }` or `{ uniform = { min = A, max = B } }` (inclusive).
//! `seed` is unused by `trace`. The same shape serializes back (to TOML or JSON).
//!
//! # Traces
//!
//! One JSON object per line, `{"arrival_s": 0.5, "prompt_tokens": 32, "output_tokens": 16}`,
//! exactly these fields; arrivals finite, non-negative, ascending; token counts at least 1; blank
//! lines skipped. Errors name the file, the line (from 1) and the problem. A relative `path` is
//! opened from the current directory: whoever loads a scenario file resolves it first.

mod rng;
mod trace;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use rng::Rng;

/// The most requests a spec may generate (a trace may hold).
pub const MAX_REQUESTS: u64 = 10_000_000;
/// The most tokens a prompt or an output may have (a request's ids are allocated whole).
pub const MAX_TOKENS: u32 = 1 << 20;
/// The highest rate, requests per second.
pub const MAX_RATE: f64 = 1e6;
/// The latest time anything may happen, seconds (a week): durations, `at_s`, `over_s`, a
/// trace's arrivals.
pub const MAX_SECONDS: f64 = 7.0 * 24.0 * 3600.0;

/// One request to send: when it arrives and how long it is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RequestSpec {
    /// 0, 1, … in arrival order.
    pub id: u64,
    /// Seconds from the start of the run.
    pub arrival_s: f64,
    pub prompt_tokens: u32,
    pub output_tokens: u32,
}

/// A distribution of token counts. Serialized externally tagged, in snake case:
/// `{ fixed = 32 }`, `{ uniform = { min = 16, max = 64 } }` (TOML) or `{"fixed": 32}` (JSON).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Lengths {
    /// Always this many tokens (at least 1).
    Fixed(u32),
    /// Uniform over `min..=max`, `1 ≤ min ≤ max`.
    Uniform { min: u32, max: u32 },
}

/// How requests arrive. Standalone it (de)serializes internally tagged, e.g.
/// `{ profile = "poisson", rate = 4.0 }`; inside a [`TrafficSpec`] the same keys sit in the
/// `[traffic]` table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "profile", rename_all = "snake_case", deny_unknown_fields)]
pub enum Profile {
    /// Poisson at `rate` requests/s.
    Poisson { rate: f64 },
    /// Poisson at `before` requests/s until `at_s`, at `after` from then on.
    Step { before: f64, after: f64, at_s: f64 },
    /// Rate rising linearly from `from` to `to` over `over_s` seconds, `to` afterwards.
    Ramp { from: f64, to: f64, over_s: f64 },
    /// `count` requests, all at t = 0.
    Offline { count: u64 },
    /// Replay of a JSON-lines trace.
    Trace { path: PathBuf },
}

impl Profile {
    /// The profile's name as in the `profile` key.
    pub fn name(&self) -> &'static str {
        match self {
            Profile::Poisson { .. } => "poisson",
            Profile::Step { .. } => "step",
            Profile::Ramp { .. } => "ramp",
            Profile::Offline { .. } => "offline",
            Profile::Trace { .. } => "trace",
        }
    }
}

/// Everything that determines a run's traffic. Deserializes from (and serializes to) the flat
/// `[traffic]` table described in the [module docs](self), validating as it goes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawTraffic", into = "RawTraffic")]
pub struct TrafficSpec {
    pub profile: Profile,
    /// Prompt lengths (unused by `trace`, whose file gives them).
    pub prompt: Lengths,
    /// Output lengths (unused by `trace`).
    pub output: Lengths,
    /// Unused by `trace`.
    pub seed: u64,
    /// Synthetic arrivals lie in `[0, duration_s)`; ignored by `offline`; for `trace` a cut-off,
    /// `f64::INFINITY` for the whole file.
    pub duration_s: f64,
}

/// Why traffic was refused. Each names the rule and the value, or the file and line.
#[derive(Debug, thiserror::Error)]
pub enum TrafficError {
    /// A parameter breaks its rule.
    #[error("traffic `{field}`: {rule}, got {got}")]
    Invalid {
        field: &'static str,
        rule: &'static str,
        got: String,
    },
    /// A `[traffic]` table lacks a key its profile needs or has one it does not take.
    #[error("traffic profile `{profile}` {problem}")]
    Shape {
        profile: &'static str,
        problem: String,
    },
    /// More than [`MAX_REQUESTS`] requests.
    #[error(
        "traffic would generate about {expected:.0} requests, more than the cap of {cap}: lower the rate, the duration or the count"
    )]
    TooMany { expected: f64, cap: u64 },
    /// The cause is in the message, not chained, so a printed chain names it once.
    #[error("trace `{}`: cannot read the file: {cause}", .path.display())]
    TraceRead {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("trace `{}` line {line}: {problem}", .path.display())]
    TraceLine {
        path: PathBuf,
        line: usize,
        problem: String,
    },
    #[error("trace `{}` has no requests", .path.display())]
    TraceEmpty { path: PathBuf },
}

const RATE_RULE: &str = "must be a positive finite number of requests per second";
const RATE0_RULE: &str = "must be a non-negative finite number of requests per second";
const SECONDS_RULE: &str = "must be a positive finite number of seconds";

fn invalid(field: &'static str, rule: &'static str, got: impl ToString) -> TrafficError {
    TrafficError::Invalid {
        field,
        rule,
        got: got.to_string(),
    }
}

fn check_rate(field: &'static str, v: f64, zero_ok: bool) -> Result<(), TrafficError> {
    let ok = v.is_finite() && if zero_ok { v >= 0.0 } else { v > 0.0 };
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            if zero_ok { RATE0_RULE } else { RATE_RULE },
            v,
        ))
    }
}

fn check_seconds(field: &'static str, v: f64) -> Result<(), TrafficError> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(invalid(field, SECONDS_RULE, v))
    }
}

/// Upper bounds, checked after the request cap so a huge spec reports how many requests it
/// would make.
fn check_rate_bound(field: &'static str, v: f64) -> Result<(), TrafficError> {
    if v > MAX_RATE {
        return Err(invalid(
            field,
            "must be at most 1000000 requests per second",
            v,
        ));
    }
    Ok(())
}

fn check_seconds_bound(field: &'static str, v: f64) -> Result<(), TrafficError> {
    if v > MAX_SECONDS {
        return Err(invalid(field, "must be at most 604800 seconds (a week)", v));
    }
    Ok(())
}

impl Lengths {
    fn validate(self, field: &'static str) -> Result<(), TrafficError> {
        match self {
            Lengths::Fixed(0) => Err(invalid(field, "fixed lengths need at least 1 token", 0)),
            Lengths::Uniform { min, max } if min == 0 || min > max => Err(invalid(
                field,
                "uniform lengths need 1 ≤ min ≤ max",
                format!("min {min} max {max}"),
            )),
            Lengths::Fixed(n) | Lengths::Uniform { max: n, .. } if n > MAX_TOKENS => {
                Err(invalid(field, "lengths must be at most 1048576 tokens", n))
            }
            _ => Ok(()),
        }
    }

    fn draw(self, rng: &mut Rng) -> u32 {
        match self {
            Lengths::Fixed(n) => n,
            Lengths::Uniform { min, max } => rng.range_inclusive(min, max),
        }
    }
}

/// A ramp's integrated rate `Λ(t)` and its inverse (time-rescaling).
#[derive(Clone, Copy)]
struct Ramp {
    from: f64,
    to: f64,
    over_s: f64,
}

impl Ramp {
    /// Expected arrivals in `[0, t)`.
    fn integral(self, t: f64) -> f64 {
        let head = t.min(self.over_s);
        let mut v = self.from * head + (self.to - self.from) * head * head / (2.0 * self.over_s);
        if t > self.over_s {
            v += self.to * (t - self.over_s);
        }
        v
    }

    /// The time `t` with `Λ(t) = s`, or `None` when the rate is 0 from then on and `Λ` never
    /// reaches `s`.
    fn inverse(self, s: f64) -> Option<f64> {
        let peak = self.integral(self.over_s);
        if s <= peak {
            // a t² + b t = s with a = (to - from) / (2 over_s), b = from; the stable root.
            let a = (self.to - self.from) / (2.0 * self.over_s);
            let b = self.from;
            let root = (b * b + 4.0 * a * s).max(0.0).sqrt();
            let denom = b + root;
            if denom > 0.0 {
                return Some((2.0 * s / denom).min(self.over_s));
            }
            return if s <= 0.0 { Some(0.0) } else { None };
        }
        (self.to > 0.0).then(|| self.over_s + (s - peak) / self.to)
    }
}

fn push_capped(out: &mut Vec<f64>, t: f64, expected: f64) -> Result<(), TrafficError> {
    if out.len() as u64 >= MAX_REQUESTS {
        return Err(TrafficError::TooMany {
            expected: expected.max(MAX_REQUESTS as f64 + 1.0),
            cap: MAX_REQUESTS,
        });
    }
    out.push(t);
    Ok(())
}

/// Poisson arrivals at `rate` in `[start, end)`.
fn poisson(
    rng: &mut Rng,
    rate: f64,
    start: f64,
    end: f64,
    expected: f64,
    out: &mut Vec<f64>,
) -> Result<(), TrafficError> {
    if rate <= 0.0 {
        return Ok(());
    }
    let mut t = start;
    loop {
        t += rng.exp1() / rate;
        if t >= end {
            return Ok(());
        }
        push_capped(out, t, expected)?;
    }
}

// Stream numbers of the seed.
const ARRIVALS: u64 = 1;
const PROMPTS: u64 = 2;
const OUTPUTS: u64 = 3;
const PROMPT_IDS: u64 = 4;

impl TrafficSpec {
    /// Check every rule: rates, times, lengths, the request cap. Does not open a trace file.
    pub fn validate(&self) -> Result<(), TrafficError> {
        match self.profile {
            Profile::Poisson { rate } => check_rate("rate", rate, false)?,
            Profile::Step {
                before,
                after,
                at_s,
            } => {
                check_rate("before", before, true)?;
                check_rate("after", after, true)?;
                if before == 0.0 && after == 0.0 {
                    return Err(invalid(
                        "before`/`after",
                        "one of the rates must be positive",
                        "0 and 0",
                    ));
                }
                if !(at_s.is_finite() && at_s >= 0.0) {
                    return Err(invalid(
                        "at_s",
                        "must be a non-negative finite number of seconds",
                        at_s,
                    ));
                }
            }
            Profile::Ramp { from, to, over_s } => {
                check_rate("from", from, true)?;
                check_rate("to", to, true)?;
                if from == 0.0 && to == 0.0 {
                    return Err(invalid(
                        "from`/`to",
                        "one of the rates must be positive",
                        "0 and 0",
                    ));
                }
                check_seconds("over_s", over_s)?;
            }
            Profile::Offline { count } => {
                if count == 0 {
                    return Err(invalid("count", "must be at least 1 request", 0));
                }
            }
            Profile::Trace { ref path } => {
                if path.as_os_str().is_empty() {
                    return Err(invalid("path", "must name a JSON-lines trace file", "\"\""));
                }
                if self.duration_s.is_nan() || self.duration_s <= 0.0 {
                    return Err(invalid(
                        "duration_s",
                        "must be a positive number of seconds (infinite for the whole trace)",
                        self.duration_s,
                    ));
                }
                if self.duration_s.is_finite() {
                    check_seconds_bound("duration_s", self.duration_s)?;
                }
                return Ok(()); // lengths and seed are unused
            }
        }
        self.prompt.validate("prompt")?;
        self.output.validate("output")?;
        if !matches!(self.profile, Profile::Offline { .. }) {
            check_seconds("duration_s", self.duration_s)?;
        }
        let expected = self.expected_requests();
        if expected.is_nan() || expected > MAX_REQUESTS as f64 {
            return Err(TrafficError::TooMany {
                // NaN only from ∞ − ∞ in an overflowing ramp
                expected: if expected.is_nan() {
                    f64::INFINITY
                } else {
                    expected
                },
                cap: MAX_REQUESTS,
            });
        }
        match self.profile {
            Profile::Poisson { rate } => check_rate_bound("rate", rate)?,
            Profile::Step {
                before,
                after,
                at_s,
            } => {
                check_rate_bound("before", before)?;
                check_rate_bound("after", after)?;
                check_seconds_bound("at_s", at_s)?;
            }
            Profile::Ramp { from, to, over_s } => {
                check_rate_bound("from", from)?;
                check_rate_bound("to", to)?;
                check_seconds_bound("over_s", over_s)?;
            }
            Profile::Offline { .. } | Profile::Trace { .. } => {}
        }
        if !matches!(self.profile, Profile::Offline { .. }) {
            check_seconds_bound("duration_s", self.duration_s)?;
        }
        Ok(())
    }

    /// The end of the traffic, seconds: the duration, else (offline, a whole trace)
    /// [`MAX_SECONDS`].
    pub fn end_s(&self) -> f64 {
        match self.profile {
            Profile::Offline { .. } => MAX_SECONDS,
            _ if self.duration_s.is_finite() => self.duration_s.min(MAX_SECONDS),
            _ => MAX_SECONDS,
        }
    }

    /// The expected number of synthetic requests (exact for `offline`, 0 for `trace`).
    fn expected_requests(&self) -> f64 {
        let d = self.duration_s;
        match self.profile {
            Profile::Poisson { rate } => rate * d,
            Profile::Step {
                before,
                after,
                at_s,
            } => before * at_s.min(d) + after * (d - at_s).max(0.0),
            Profile::Ramp { from, to, over_s } => Ramp { from, to, over_s }.integral(d),
            Profile::Offline { count } => count as f64,
            Profile::Trace { .. } => 0.0,
        }
    }

    /// The requests, sorted by arrival with ids 0, 1, …; the same spec gives the same requests.
    /// A trace is read from its file here.
    pub fn generate(&self) -> Result<Vec<RequestSpec>, TrafficError> {
        self.validate()?;
        let expected = self.expected_requests();
        let mut rng = Rng::new(self.seed, ARRIVALS);
        let mut arrivals = Vec::new();
        let d = self.duration_s;
        match &self.profile {
            Profile::Trace { path } => {
                let reqs = trace::read(path, d)?;
                // The file's rules are its reader's; these bounds are every spec's.
                for r in &reqs {
                    let bad = |field, rule, got: String| TrafficError::Invalid {
                        field,
                        rule,
                        got: format!("{got} (request {} of trace `{}`)", r.id, path.display()),
                    };
                    if r.arrival_s > MAX_SECONDS {
                        return Err(bad(
                            "arrival_s",
                            "must be at most 604800 seconds (a week)",
                            r.arrival_s.to_string(),
                        ));
                    }
                    for (field, n) in [
                        ("prompt_tokens", r.prompt_tokens),
                        ("output_tokens", r.output_tokens),
                    ] {
                        if n > MAX_TOKENS {
                            return Err(bad(
                                field,
                                "must be at most 1048576 tokens",
                                n.to_string(),
                            ));
                        }
                    }
                }
                return Ok(reqs);
            }
            Profile::Offline { count } => arrivals = vec![0.0; *count as usize],
            Profile::Poisson { rate } => poisson(&mut rng, *rate, 0.0, d, expected, &mut arrivals)?,
            Profile::Step {
                before,
                after,
                at_s,
            } => {
                // Memoryless: the second process may start afresh at `at_s`.
                poisson(&mut rng, *before, 0.0, at_s.min(d), expected, &mut arrivals)?;
                poisson(&mut rng, *after, *at_s, d, expected, &mut arrivals)?;
            }
            Profile::Ramp { from, to, over_s } => {
                // Time-rescaling: unit-rate arrivals s_k mapped through Λ⁻¹.
                let ramp = Ramp {
                    from: *from,
                    to: *to,
                    over_s: *over_s,
                };
                let mut s = 0.0;
                loop {
                    s += rng.exp1();
                    match ramp.inverse(s) {
                        Some(t) if t < d => push_capped(&mut arrivals, t, expected)?,
                        _ => break,
                    }
                }
            }
        }
        let mut prompts = Rng::new(self.seed, PROMPTS);
        let mut outputs = Rng::new(self.seed, OUTPUTS);
        Ok(arrivals
            .into_iter()
            .enumerate()
            .map(|(i, arrival_s)| RequestSpec {
                id: i as u64,
                arrival_s,
                prompt_tokens: self.prompt.draw(&mut prompts),
                output_tokens: self.output.draw(&mut outputs),
            })
            .collect())
    }
}

/// The flat `[traffic]` table: what (de)serializes; checked into a [`TrafficSpec`].
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTraffic {
    profile: ProfileKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    before: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    after: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    at_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    from: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    to: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    over_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    count: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    path: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    prompt: Option<Lengths>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    output: Option<Lengths>,
    #[serde(default)]
    seed: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    duration_s: Option<f64>,
}

#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ProfileKind {
    Poisson,
    Step,
    Ramp,
    Offline,
    Trace,
}

impl ProfileKind {
    fn name(self) -> &'static str {
        match self {
            ProfileKind::Poisson => "poisson",
            ProfileKind::Step => "step",
            ProfileKind::Ramp => "ramp",
            ProfileKind::Offline => "offline",
            ProfileKind::Trace => "trace",
        }
    }

    fn params(self) -> &'static [&'static str] {
        match self {
            ProfileKind::Poisson => &["rate"],
            ProfileKind::Step => &["before", "after", "at_s"],
            ProfileKind::Ramp => &["from", "to", "over_s"],
            ProfileKind::Offline => &["count"],
            ProfileKind::Trace => &["path"],
        }
    }
}

impl TryFrom<RawTraffic> for TrafficSpec {
    type Error = TrafficError;

    fn try_from(r: RawTraffic) -> Result<Self, TrafficError> {
        let kind = r.profile;
        let profile = kind.name();
        let takes = kind.params();
        let present = [
            ("rate", r.rate.is_some()),
            ("before", r.before.is_some()),
            ("after", r.after.is_some()),
            ("at_s", r.at_s.is_some()),
            ("from", r.from.is_some()),
            ("to", r.to.is_some()),
            ("over_s", r.over_s.is_some()),
            ("count", r.count.is_some()),
            ("path", r.path.is_some()),
        ];
        for (key, is) in present {
            if is && !takes.contains(&key) {
                let list: Vec<String> = takes.iter().map(|k| format!("`{k}`")).collect();
                return Err(TrafficError::Shape {
                    profile,
                    problem: format!("does not take `{key}` (it takes {})", list.join(", ")),
                });
            }
        }
        fn need<T>(v: Option<T>, profile: &'static str, key: &str) -> Result<T, TrafficError> {
            v.ok_or_else(|| TrafficError::Shape {
                profile,
                problem: format!("needs `{key}`"),
            })
        }
        let (prompt, output) = if kind == ProfileKind::Trace {
            for (key, is) in [
                ("prompt", r.prompt.is_some()),
                ("output", r.output.is_some()),
            ] {
                if is {
                    return Err(TrafficError::Shape {
                        profile,
                        problem: format!(
                            "does not take `{key}` (lengths come from the trace file)"
                        ),
                    });
                }
            }
            // Unused by traces; any valid value will do.
            (Lengths::Fixed(1), Lengths::Fixed(1))
        } else {
            (
                need(r.prompt, profile, "prompt")?,
                need(r.output, profile, "output")?,
            )
        };
        let duration_s = match kind {
            ProfileKind::Offline | ProfileKind::Trace => r.duration_s.unwrap_or(f64::INFINITY),
            _ => need(r.duration_s, profile, "duration_s")?,
        };
        let profile = match kind {
            ProfileKind::Poisson => Profile::Poisson {
                rate: need(r.rate, profile, "rate")?,
            },
            ProfileKind::Step => Profile::Step {
                before: need(r.before, profile, "before")?,
                after: need(r.after, profile, "after")?,
                at_s: need(r.at_s, profile, "at_s")?,
            },
            ProfileKind::Ramp => Profile::Ramp {
                from: need(r.from, profile, "from")?,
                to: need(r.to, profile, "to")?,
                over_s: need(r.over_s, profile, "over_s")?,
            },
            ProfileKind::Offline => Profile::Offline {
                count: need(r.count, profile, "count")?,
            },
            ProfileKind::Trace => Profile::Trace {
                path: need(r.path, profile, "path")?,
            },
        };
        let spec = TrafficSpec {
            profile,
            prompt,
            output,
            seed: r.seed,
            duration_s,
        };
        spec.validate()?;
        Ok(spec)
    }
}

impl From<TrafficSpec> for RawTraffic {
    fn from(t: TrafficSpec) -> Self {
        let mut r = RawTraffic {
            profile: ProfileKind::Poisson,
            rate: None,
            before: None,
            after: None,
            at_s: None,
            from: None,
            to: None,
            over_s: None,
            count: None,
            path: None,
            prompt: Some(t.prompt),
            output: Some(t.output),
            seed: t.seed,
            duration_s: t.duration_s.is_finite().then_some(t.duration_s),
        };
        match t.profile {
            Profile::Poisson { rate } => r.rate = Some(rate),
            Profile::Step {
                before,
                after,
                at_s,
            } => {
                r.profile = ProfileKind::Step;
                (r.before, r.after, r.at_s) = (Some(before), Some(after), Some(at_s));
            }
            Profile::Ramp { from, to, over_s } => {
                r.profile = ProfileKind::Ramp;
                (r.from, r.to, r.over_s) = (Some(from), Some(to), Some(over_s));
            }
            Profile::Offline { count } => {
                r.profile = ProfileKind::Offline;
                r.count = Some(count);
                r.duration_s = None;
            }
            Profile::Trace { path } => {
                r.profile = ProfileKind::Trace;
                r.path = Some(path);
                (r.prompt, r.output) = (None, None);
            }
        }
        r
    }
}

#[cfg(test)]
mod tests;

/// The prompt token ids of request `id`: `len` ids below `vocab`, deterministic in
/// `(seed, id)` (a stream of its own, apart from arrivals and lengths).
pub fn prompt_ids(seed: u64, id: u64, len: u32, vocab: u32) -> Vec<u32> {
    let mut r = Rng::new(seed ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15), PROMPT_IDS);
    let max = vocab.max(1) - 1;
    (0..len).map(|_| r.range_inclusive(0, max)).collect()
}
