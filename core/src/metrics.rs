//! Serving metrics from timestamps: TTFT, TPOT, SLO attainment, throughput, downtime, and
//! per-expert load.
//!
//! Pure accumulators: the caller feeds timestamps in seconds since the run started (finite and
//! non-negative); nothing here reads a clock. Statistics are computed on demand, in
//! `O(n log n)` at most.
//!
//! Definitions:
//!
//! - TTFT = `first_token_s − arrival_s`; TPOT = `(finish_s − first_token_s) / (output_tokens − 1)`,
//!   0 for a single-token output.
//! - A request attains an [`Slo`] when TTFT ≤ `ttft_s` and TPOT ≤ `tpot_s`.
//! - Percentiles are nearest-rank ([`nearest_rank`]): the `p`-th percentile of `n` sorted values
//!   is the one of rank `⌈p·n/100⌉` (counting from 1), so it is always an observed value.
//! - A window `(start, end)` is the half-open interval `[start, end)`. Requests belong to it by
//!   their finish time, tokens by the time they were emitted. `None` means the whole run: every
//!   record, over the span from the earliest timestamp (normally the first arrival) to the latest
//!   (normally the last finish).
//! - A *step* is a decode step that completed: a [`Metrics::record_step`] call, or a
//!   [`Metrics::record_tokens`] call with at least one token. Downtime is the longest interval of
//!   the window without a step, the window's edges included.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The most points [`Metrics::series`] returns.
pub const MAX_BUCKETS: usize = 1_000_000;

/// When one finished request arrived, got its first token and finished.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RequestTiming {
    pub id: u64,
    pub arrival_s: f64,
    pub first_token_s: f64,
    pub finish_s: f64,
    /// Tokens generated, the first included (at least 1).
    pub output_tokens: u32,
}

impl RequestTiming {
    /// Time to first token.
    pub fn ttft_s(&self) -> f64 {
        self.first_token_s - self.arrival_s
    }

    /// Time per output token after the first; 0 for a single-token output.
    pub fn tpot_s(&self) -> f64 {
        if self.output_tokens <= 1 {
            0.0
        } else {
            (self.finish_s - self.first_token_s) / f64::from(self.output_tokens - 1)
        }
    }

    /// TTFT ≤ `slo.ttft_s` and TPOT ≤ `slo.tpot_s`.
    pub fn attains(&self, slo: &Slo) -> bool {
        self.ttft_s() <= slo.ttft_s && self.tpot_s() <= slo.tpot_s
    }
}

/// A latency service-level objective, in seconds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Slo {
    pub ttft_s: f64,
    pub tpot_s: f64,
}

/// Why a record or a query was refused. Each names the rule and the value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MetricsError {
    #[error("request {id}: {rule}, got {got}")]
    Timing {
        id: u64,
        rule: &'static str,
        got: String,
    },
    #[error("metrics `{field}`: {rule}, got {got}")]
    Invalid {
        field: &'static str,
        rule: &'static str,
        got: String,
    },
    #[error(
        "a series of {buckets} buckets of {bucket_s} s is more than the cap of {cap}: use larger buckets"
    )]
    TooManyBuckets {
        buckets: f64,
        bucket_s: f64,
        cap: usize,
    },
}

/// Mean, nearest-rank percentiles and maximum of a set of durations (seconds).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Stats {
    /// `None` for no values.
    pub fn of(mut values: Vec<f64>) -> Option<Self> {
        values.sort_by(f64::total_cmp);
        Some(Self {
            mean: values.iter().sum::<f64>() / values.len() as f64,
            p50: nearest_rank(&values, 50)?,
            p90: nearest_rank(&values, 90)?,
            p99: nearest_rank(&values, 99)?,
            max: *values.last()?,
        })
    }
}

/// The nearest-rank `p`-th percentile of ascending `sorted`: the value of rank `⌈p·n/100⌉`
/// (from 1, at least 1; `p` above 100 counts as 100). `None` when `sorted` is empty.
pub fn nearest_rank(sorted: &[f64], p: u32) -> Option<f64> {
    let n = sorted.len() as u128;
    let rank = (u128::from(p.min(100)) * n).div_ceil(100).max(1);
    sorted.get(usize::try_from(rank - 1).ok()?).copied()
}

/// The metrics of one window (or of the whole run).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// The interval measured: the window, or the whole run's span.
    pub start_s: f64,
    pub end_s: f64,
    /// Requests that finished in it.
    pub requests: u64,
    /// Tokens emitted in it.
    pub tokens: u64,
    /// `tokens / (end_s − start_s)`; 0 for an empty interval.
    pub tokens_per_s: f64,
    /// `requests / (end_s − start_s)`; 0 for an empty interval.
    pub requests_per_s: f64,
    /// `None` when no request finished.
    pub ttft: Option<Stats>,
    pub tpot: Option<Stats>,
    /// Share of the finished requests that attain the SLO; `None` without an SLO or requests.
    pub slo_attainment: Option<f64>,
    /// Downtime: the longest interval without a step.
    pub longest_gap_s: f64,
}

/// One bucket of [`Metrics::series`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// The bucket's start; it covers `[t_s, t_s + bucket_s)`.
    pub t_s: f64,
    pub tokens_per_s: f64,
    /// Requests finished per second.
    pub requests_per_s: f64,
    /// Share of the bucket's finished requests that attain the SLO; `None` without an SLO or
    /// requests.
    pub slo_attainment: Option<f64>,
}

/// An interval without a step.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Gap {
    pub start_s: f64,
    pub end_s: f64,
}

impl Gap {
    pub fn len_s(&self) -> f64 {
        self.end_s - self.start_s
    }
}

/// The accumulator of a serving run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Metrics {
    slo: Option<Slo>,
    requests: Vec<RequestTiming>,
    /// `(t_s, tokens)` per [`Metrics::record_tokens`].
    tokens: Vec<(f64, u64)>,
    steps: Vec<f64>,
}

fn check_time(field: &'static str, t_s: f64) -> Result<(), MetricsError> {
    if t_s.is_finite() && t_s >= 0.0 {
        Ok(())
    } else {
        Err(MetricsError::Invalid {
            field,
            rule: "must be a finite, non-negative number of seconds since the run started",
            got: t_s.to_string(),
        })
    }
}

/// `window` as `(start, end)`: `[start, end)` with `end ≥ start`; an inverted or non-finite window
/// is empty (`end = start`, or both 0 when `start` is not finite).
fn interval(window: (f64, f64)) -> (f64, f64) {
    let (start, end) = window;
    if start.is_finite() && end.is_finite() && end >= start {
        (start, end)
    } else if start.is_finite() {
        (start, start)
    } else {
        (0.0, 0.0)
    }
}

impl Metrics {
    /// An empty accumulator; SLO attainment is reported when `slo` is given.
    pub fn new(slo: Option<Slo>) -> Self {
        Self {
            slo,
            ..Self::default()
        }
    }

    pub fn slo(&self) -> Option<Slo> {
        self.slo
    }

    /// The finished requests, in the order recorded.
    pub fn requests(&self) -> &[RequestTiming] {
        &self.requests
    }

    /// A finished request. Its times must be finite, non-negative and ordered
    /// `arrival ≤ first token ≤ finish`, with at least one output token.
    pub fn record_request(&mut self, r: &RequestTiming) -> Result<(), MetricsError> {
        check_request(r)?;
        self.requests.push(*r);
        Ok(())
    }

    /// `n` tokens emitted at `t_s` (one decode step's output). With `n > 0` it is also a step.
    pub fn record_tokens(&mut self, t_s: f64, n: u64) -> Result<(), MetricsError> {
        check_time("t_s", t_s)?;
        self.tokens.push((t_s, n));
        Ok(())
    }

    /// A decode step completed at `t_s`.
    pub fn record_step(&mut self, t_s: f64) -> Result<(), MetricsError> {
        check_time("t_s", t_s)?;
        self.steps.push(t_s);
        Ok(())
    }

    /// Every timestamp recorded.
    fn times(&self) -> impl Iterator<Item = f64> + '_ {
        self.requests
            .iter()
            .flat_map(|r| [r.arrival_s, r.finish_s])
            .chain(self.tokens.iter().map(|&(t, _)| t))
            .chain(self.steps.iter().copied())
    }

    /// The whole run: from the earliest timestamp to the latest; `None` before any record.
    pub fn span(&self) -> Option<(f64, f64)> {
        self.times().fold(None, |acc, t| match acc {
            None => Some((t, t)),
            Some((lo, hi)) => Some((f64::min(lo, t), f64::max(hi, t))),
        })
    }

    /// `[start, end)` for a window; the span (end included) for the whole run.
    fn resolve(&self, window: Option<(f64, f64)>) -> (f64, f64, bool) {
        match window {
            Some(w) => {
                let (s, e) = interval(w);
                (s, e, false)
            }
            None => {
                let (s, e) = self.span().unwrap_or((0.0, 0.0));
                (s, e, true)
            }
        }
    }

    /// The metrics of `window` (`[start, end)`), or of the whole run for `None`. An inverted or
    /// non-finite window measures nothing: zero counts and rates, no statistics.
    pub fn summary(&self, window: Option<(f64, f64)>) -> Summary {
        let (start_s, end_s, all) = self.resolve(window);
        let inside = |t: f64| all || (t >= start_s && t < end_s);
        let done: Vec<&RequestTiming> = self
            .requests
            .iter()
            .filter(|r| inside(r.finish_s))
            .collect();
        let tokens = self
            .tokens
            .iter()
            .filter(|(t, _)| inside(*t))
            .fold(0u64, |acc, &(_, n)| acc.saturating_add(n));
        let len = end_s - start_s;
        let per_s = |n: f64| if len > 0.0 { n / len } else { 0.0 };
        let requests = done.len() as u64;
        Summary {
            start_s,
            end_s,
            requests,
            tokens,
            tokens_per_s: per_s(tokens as f64),
            requests_per_s: per_s(requests as f64),
            ttft: Stats::of(done.iter().map(|r| r.ttft_s()).collect()),
            tpot: Stats::of(done.iter().map(|r| r.tpot_s()).collect()),
            slo_attainment: self.attainment(done.iter().copied()),
            longest_gap_s: self.gap_in(start_s, end_s, all).len_s(),
        }
    }

    fn attainment<'a>(&self, done: impl Iterator<Item = &'a RequestTiming>) -> Option<f64> {
        let slo = self.slo?;
        let (mut n, mut ok) = (0u64, 0u64);
        for r in done {
            n += 1;
            ok += u64::from(r.attains(&slo));
        }
        (n > 0).then(|| ok as f64 / n as f64)
    }

    /// Throughput and SLO attainment per bucket of `bucket_s` seconds, from t = 0 to the bucket
    /// of the latest timestamp; empty before any record.
    pub fn series(&self, bucket_s: f64) -> Result<Vec<Point>, MetricsError> {
        if !(bucket_s.is_finite() && bucket_s > 0.0) {
            return Err(MetricsError::Invalid {
                field: "bucket_s",
                rule: "must be a positive finite number of seconds",
                got: bucket_s.to_string(),
            });
        }
        let Some((_, last)) = self.span() else {
            return Ok(Vec::new());
        };
        let buckets = (last / bucket_s).floor() + 1.0;
        if buckets > MAX_BUCKETS as f64 {
            return Err(MetricsError::TooManyBuckets {
                buckets,
                bucket_s,
                cap: MAX_BUCKETS,
            });
        }
        let n = buckets as usize;
        let index = |t: f64| ((t / bucket_s) as usize).min(n - 1);
        let mut tokens = vec![0u64; n];
        let mut done = vec![0u64; n];
        let mut ok = vec![0u64; n];
        for &(t, k) in &self.tokens {
            let i = index(t);
            tokens[i] = tokens[i].saturating_add(k);
        }
        for r in &self.requests {
            let i = index(r.finish_s);
            done[i] += 1;
            if let Some(slo) = &self.slo {
                ok[i] += u64::from(r.attains(slo));
            }
        }
        Ok((0..n)
            .map(|i| Point {
                t_s: i as f64 * bucket_s,
                tokens_per_s: tokens[i] as f64 / bucket_s,
                requests_per_s: done[i] as f64 / bucket_s,
                slo_attainment: (self.slo.is_some() && done[i] > 0)
                    .then(|| ok[i] as f64 / done[i] as f64),
            })
            .collect())
    }

    /// The longest interval of `window` (`[start, end)`, or the whole run for `None`) without a
    /// step, bounded by the window's edges; the first one on ties. Zero-length for an empty
    /// window.
    pub fn longest_gap(&self, window: Option<(f64, f64)>) -> Gap {
        let (start, end, all) = self.resolve(window);
        self.gap_in(start, end, all)
    }

    /// The length of [`Metrics::longest_gap`]: the downtime.
    pub fn longest_gap_s(&self, window: Option<(f64, f64)>) -> f64 {
        self.longest_gap(window).len_s()
    }

    fn gap_in(&self, start: f64, end: f64, all: bool) -> Gap {
        let mut steps: Vec<f64> = self
            .steps
            .iter()
            .copied()
            .chain(self.tokens.iter().filter(|&&(_, n)| n > 0).map(|&(t, _)| t))
            .filter(|&t| t >= start && (t < end || all))
            .collect();
        steps.sort_by(f64::total_cmp);
        let mut best = Gap {
            start_s: start,
            end_s: start,
        };
        let mut prev = start;
        for t in steps.into_iter().chain([end]) {
            if t - prev > best.len_s() {
                best = Gap {
                    start_s: prev,
                    end_s: t,
                };
            }
            prev = t;
        }
        best
    }
}

/// A finished request's timings are finite, non-negative, ordered, with at least one token.
fn check_request(r: &RequestTiming) -> Result<(), MetricsError> {
    let bad = |rule| MetricsError::Timing {
        id: r.id,
        rule,
        got: format!(
            "arrival {} first token {} finish {} output tokens {}",
            r.arrival_s, r.first_token_s, r.finish_s, r.output_tokens
        ),
    };
    let times = [r.arrival_s, r.first_token_s, r.finish_s];
    if !times.iter().all(|t| t.is_finite() && *t >= 0.0) {
        return Err(bad("times must be finite, non-negative seconds"));
    }
    if !(r.arrival_s <= r.first_token_s && r.first_token_s <= r.finish_s) {
        return Err(bad("times must be ordered arrival ≤ first token ≤ finish"));
    }
    if r.output_tokens == 0 {
        return Err(bad("a finished request has at least 1 output token"));
    }
    Ok(())
}

/// A bounded accumulator for a server that runs for weeks: the tokens of the last `window_s`
/// seconds and the last `max_requests` finished requests, with totals over the whole run.
/// Its statistics are of what it keeps: rates over a recent window, and TTFT, TPOT and SLO
/// attainment over the last `max_requests` requests. [`Rolling::metrics`] turns what it keeps
/// into a [`Metrics`] to summarize (a bounded copy, so a caller can compute outside its lock).
#[derive(Clone, Debug)]
pub struct Rolling {
    slo: Option<Slo>,
    window_s: f64,
    max_requests: usize,
    requests: std::collections::VecDeque<RequestTiming>,
    /// `(t_s, tokens)`, oldest first.
    tokens: std::collections::VecDeque<(f64, u64)>,
    total_requests: u64,
    total_tokens: u64,
}

/// Token records a [`Rolling`] keeps at most, whatever its window (a bound on memory even for
/// a pathological rate of decode steps).
pub const ROLLING_MAX_TOKEN_RECORDS: usize = 100_000;

impl Rolling {
    /// Keep `window_s` seconds of tokens (at least 1 s) and `max_requests` requests (at least 1).
    pub fn new(slo: Option<Slo>, window_s: f64, max_requests: usize) -> Self {
        Self {
            slo,
            window_s: if window_s.is_finite() {
                window_s.max(1.0)
            } else {
                1.0
            },
            max_requests: max_requests.max(1),
            requests: Default::default(),
            tokens: Default::default(),
            total_requests: 0,
            total_tokens: 0,
        }
    }

    /// A finished request, checked as [`Metrics::record_request`] does; the oldest kept one is
    /// dropped beyond `max_requests`.
    pub fn record_request(&mut self, r: &RequestTiming) -> Result<(), MetricsError> {
        check_request(r)?;
        if self.requests.len() == self.max_requests {
            self.requests.pop_front();
        }
        self.requests.push_back(*r);
        self.total_requests += 1;
        Ok(())
    }

    /// `n` tokens emitted at `t_s`; records older than `t_s − window_s` are dropped.
    pub fn record_tokens(&mut self, t_s: f64, n: u64) -> Result<(), MetricsError> {
        check_time("t_s", t_s)?;
        while self
            .tokens
            .front()
            .is_some_and(|&(t, _)| t < t_s - self.window_s)
            || self.tokens.len() >= ROLLING_MAX_TOKEN_RECORDS
        {
            self.tokens.pop_front();
        }
        self.tokens.push_back((t_s, n));
        self.total_tokens = self.total_tokens.saturating_add(n);
        Ok(())
    }

    /// Records held now: bounded by `max_requests` plus the token records of one window.
    pub fn stored(&self) -> usize {
        self.requests.len() + self.tokens.len()
    }

    /// Requests finished over the whole run.
    pub fn total_requests(&self) -> u64 {
        self.total_requests
    }

    /// Tokens emitted over the whole run (saturating).
    pub fn total_tokens(&self) -> u64 {
        self.total_tokens
    }

    /// What is kept, as a [`Metrics`] (steps are not kept: its gaps are between token records).
    pub fn metrics(&self) -> Metrics {
        Metrics {
            slo: self.slo,
            requests: self.requests.iter().copied().collect(),
            tokens: self.tokens.iter().copied().collect(),
            steps: Vec::new(),
        }
    }
}

/// Tokens routed to each expert, per MoE layer (e.g. router counts), for the load-aware planner.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpertLoad {
    /// Per layer, the count of each expert (index = expert id).
    pub layers: BTreeMap<u32, Vec<u64>>,
}

impl ExpertLoad {
    /// Zero counts for `experts` experts in each of `layers`: the shape the planner expects (one
    /// entry per expert) even for experts that never receive a token.
    pub fn zeroed(layers: impl IntoIterator<Item = u32>, experts: u32) -> Self {
        Self {
            layers: layers
                .into_iter()
                .map(|l| (l, vec![0; experts as usize]))
                .collect(),
        }
    }

    /// Add `count` to `expert` of `layer`, growing the layer to `expert + 1` entries if needed.
    /// Counts saturate at `u64::MAX`.
    pub fn add(&mut self, layer: u32, expert: u32, count: u64) {
        let v = self.layers.entry(layer).or_default();
        let i = expert as usize;
        if v.len() <= i {
            v.resize(i + 1, 0);
        }
        v[i] = v[i].saturating_add(count);
    }

    /// Add every count of `other` (layers and experts it has that this lacks are added).
    pub fn merge(&mut self, other: &ExpertLoad) {
        for (&layer, counts) in &other.layers {
            let v = self.layers.entry(layer).or_default();
            if v.len() < counts.len() {
                v.resize(counts.len(), 0);
            }
            for (a, &b) in v.iter_mut().zip(counts) {
                *a = a.saturating_add(b);
            }
        }
    }

    /// The counts as the planner's load map.
    pub fn as_f64(&self) -> BTreeMap<u32, Vec<f64>> {
        self.layers
            .iter()
            .map(|(&l, v)| (l, v.iter().map(|&c| c as f64).collect()))
            .collect()
    }

    /// Zero every count, keeping the layers and their number of experts.
    pub fn reset(&mut self) {
        for v in self.layers.values_mut() {
            v.fill(0);
        }
    }

    /// The sum of all counts (saturating).
    pub fn total(&self) -> u64 {
        self.layers
            .values()
            .flatten()
            .fold(0u64, |a, &c| a.saturating_add(c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rolling_accumulator_stays_bounded_over_a_long_run() {
        let mut r = Rolling::new(Some(SLO), 10.0, 1000);
        // A week at 100 decode steps/s would be 60 M records: here 2 M steps and 1 M requests.
        for i in 0..2_000_000u64 {
            let t = i as f64 * 0.01;
            r.record_tokens(t, 4).unwrap();
            if i % 2 == 0 {
                let id = i / 2;
                r.record_request(&req(id, t, t + 0.5, t + 1.0, 5)).unwrap();
            }
        }
        assert!(r.stored() <= 1000 + 1001, "{} records kept", r.stored());
        assert_eq!(r.total_requests(), 1_000_000);
        assert_eq!(r.total_tokens(), 8_000_000);
        let m = r.metrics();
        let now = 2_000_000.0 * 0.01;
        let recent = m.summary(Some((now - 10.0, now)));
        assert!(
            (recent.tokens_per_s - 400.0).abs() < 1.0,
            "{}",
            recent.tokens_per_s
        );
        let all = m.summary(None);
        assert_eq!(all.requests, 1000, "the last 1000 requests");
        assert_eq!(all.ttft.map(|s| s.p50), Some(0.5));
        assert_eq!(all.slo_attainment, Some(1.0));
        assert!(
            r.record_tokens(f64::NAN, 1).is_err(),
            "checked as Metrics checks"
        );
        assert!(r.record_request(&req(1, 2.0, 1.0, 3.0, 1)).is_err());
    }

    fn req(id: u64, arrival_s: f64, first_token_s: f64, finish_s: f64, n: u32) -> RequestTiming {
        RequestTiming {
            id,
            arrival_s,
            first_token_s,
            finish_s,
            output_tokens: n,
        }
    }

    const SLO: Slo = Slo {
        ttft_s: 1.0,
        tpot_s: 1.0,
    };

    /// Four requests and eight decode steps, hand-computed below.
    ///
    /// | id | arrival | first | finish | out | TTFT | TPOT | SLO (1 s, 1 s) |
    /// |----|---------|-------|--------|-----|------|------|----------------|
    /// | 0  | 0       | 1     | 5      | 5   | 1    | 1    | yes            |
    /// | 1  | 1       | 1.5   | 2.5    | 3   | 0.5  | 0.5  | yes            |
    /// | 2  | 2       | 5     | 5      | 1   | 3    | 0    | no (TTFT)      |
    /// | 3  | 3       | 4     | 10     | 4   | 1    | 2    | no (TPOT)      |
    fn run(slo: Option<Slo>) -> Metrics {
        let mut m = Metrics::new(slo);
        for r in [
            req(0, 0.0, 1.0, 5.0, 5),
            req(1, 1.0, 1.5, 2.5, 3),
            req(2, 2.0, 5.0, 5.0, 1),
            req(3, 3.0, 4.0, 10.0, 4),
        ] {
            m.record_request(&r).unwrap();
        }
        for (t, n) in [
            (1.0, 1),
            (1.5, 1),
            (2.0, 2),
            (2.5, 2),
            (4.0, 2),
            (5.0, 3),
            (7.0, 1),
            (10.0, 1),
        ] {
            m.record_tokens(t, n).unwrap();
        }
        m
    }

    #[test]
    fn ttft_tpot_and_slo_of_one_request() {
        let r = req(0, 1.0, 1.5, 3.5, 5);
        assert_eq!(r.ttft_s(), 0.5);
        assert_eq!(r.tpot_s(), 0.5);
        assert!(r.attains(&Slo {
            ttft_s: 0.5,
            tpot_s: 0.5
        }));
        assert!(!r.attains(&Slo {
            ttft_s: 0.4,
            tpot_s: 0.5
        }));
        assert!(!r.attains(&Slo {
            ttft_s: 0.5,
            tpot_s: 0.4
        }));
        assert_eq!(req(0, 1.0, 2.0, 9.0, 1).tpot_s(), 0.0);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(nearest_rank(&v, 50), Some(5.0));
        assert_eq!(nearest_rank(&v, 90), Some(9.0));
        assert_eq!(nearest_rank(&v, 99), Some(10.0));
        assert_eq!(nearest_rank(&v, 100), Some(10.0));
        assert_eq!(nearest_rank(&v, 500), Some(10.0));
        assert_eq!(nearest_rank(&v, 0), Some(1.0));
        assert_eq!(nearest_rank(&v, 1), Some(1.0));
        assert_eq!(nearest_rank(&v, 11), Some(2.0));
        let h: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(nearest_rank(&h, 99), Some(99.0));
        assert_eq!(nearest_rank(&[7.0], 50), Some(7.0));
        assert_eq!(nearest_rank(&[], 50), None);
        let s = Stats::of(vec![3.0, 1.0, 2.0]).unwrap();
        assert_eq!(
            s,
            Stats {
                mean: 2.0,
                p50: 2.0,
                p90: 3.0,
                p99: 3.0,
                max: 3.0
            }
        );
        assert_eq!(Stats::of(vec![]), None);
    }

    #[test]
    fn whole_run_summary() {
        let s = run(Some(SLO)).summary(None);
        assert_eq!((s.start_s, s.end_s), (0.0, 10.0));
        assert_eq!((s.requests, s.tokens), (4, 13));
        assert_eq!(s.tokens_per_s, 1.3);
        assert_eq!(s.requests_per_s, 0.4);
        assert_eq!(
            s.ttft,
            Some(Stats {
                mean: 1.375,
                p50: 1.0,
                p90: 3.0,
                p99: 3.0,
                max: 3.0
            })
        );
        assert_eq!(
            s.tpot,
            Some(Stats {
                mean: 0.875,
                p50: 0.5,
                p90: 2.0,
                p99: 2.0,
                max: 2.0
            })
        );
        assert_eq!(s.slo_attainment, Some(0.5));
        assert_eq!(s.longest_gap_s, 3.0); // 7 → 10
        assert_eq!(run(None).summary(None).slo_attainment, None);
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["ttft"]["p90"], 3.0);
    }

    #[test]
    fn window_filters_by_finish_and_emission_time() {
        let m = run(Some(SLO));
        let s = m.summary(Some((2.0, 6.0)));
        // Requests 1 (2.5), 0 (5) and 2 (5); request 3 finishes at 10.
        assert_eq!((s.requests, s.tokens), (3, 9));
        assert_eq!(s.tokens_per_s, 2.25);
        assert_eq!(s.requests_per_s, 0.75);
        assert_eq!(s.slo_attainment, Some(2.0 / 3.0));
        assert_eq!(s.ttft.unwrap().p50, 1.0); // of [0.5, 1, 3]
        assert_eq!(s.longest_gap_s, 1.5); // 2.5 → 4
        // Half-open: a request finishing at the end belongs to the next window.
        assert_eq!(m.summary(Some((2.0, 5.0))).requests, 1);
        assert_eq!(m.summary(Some((5.0, 10.0))).requests, 2);

        let empty = m.summary(Some((7.5, 9.5)));
        assert_eq!((empty.requests, empty.tokens), (0, 0));
        assert_eq!(
            (empty.ttft, empty.tpot, empty.slo_attainment),
            (None, None, None)
        );
        assert_eq!(empty.longest_gap_s, 2.0);

        for w in [
            (5.0, 2.0),
            (f64::NAN, 3.0),
            (1.0, f64::INFINITY),
            (3.0, 3.0),
        ] {
            let s = m.summary(Some(w));
            assert_eq!((s.requests, s.tokens), (0, 0), "{w:?}");
            assert_eq!(
                (s.tokens_per_s, s.requests_per_s, s.longest_gap_s),
                (0.0, 0.0, 0.0)
            );
        }
    }

    #[test]
    fn longest_gap_counts_the_window_edges() {
        let m = run(None);
        // Leading edge: nothing from 5.5 until the step at 7.
        assert_eq!(
            m.longest_gap(Some((5.5, 7.2))),
            Gap {
                start_s: 5.5,
                end_s: 7.0
            }
        );
        // Trailing edge: nothing after 7 until the window ends at 9.
        assert_eq!(
            m.longest_gap(Some((6.5, 9.0))),
            Gap {
                start_s: 7.0,
                end_s: 9.0
            }
        );
        // Ties: the first one.
        assert_eq!(
            m.longest_gap(Some((4.5, 9.0))),
            Gap {
                start_s: 5.0,
                end_s: 7.0
            }
        );
        assert_eq!(m.longest_gap_s(Some((8.0, 9.0))), 1.0);
        assert_eq!(m.longest_gap_s(None), 3.0);

        // Steps recorded alone count; token records with no tokens do not.
        let mut m = Metrics::new(None);
        m.record_step(1.0).unwrap();
        m.record_tokens(2.0, 0).unwrap();
        m.record_step(4.0).unwrap();
        assert_eq!(m.longest_gap_s(Some((0.0, 5.0))), 3.0);
        assert_eq!(Metrics::default().longest_gap_s(None), 0.0);
    }

    #[test]
    fn series_buckets() {
        let pts = run(Some(SLO)).series(2.0).unwrap();
        let t: Vec<f64> = pts.iter().map(|p| p.t_s).collect();
        assert_eq!(t, [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        let tok: Vec<f64> = pts.iter().map(|p| p.tokens_per_s).collect();
        assert_eq!(tok, [1.0, 2.0, 2.5, 0.5, 0.0, 0.5]);
        let req: Vec<f64> = pts.iter().map(|p| p.requests_per_s).collect();
        assert_eq!(req, [0.0, 0.5, 1.0, 0.0, 0.0, 0.5]);
        let slo: Vec<Option<f64>> = pts.iter().map(|p| p.slo_attainment).collect();
        assert_eq!(slo, [None, Some(1.0), Some(0.5), None, None, Some(0.0)]);
        assert!(
            run(None)
                .series(2.0)
                .unwrap()
                .iter()
                .all(|p| p.slo_attainment.is_none())
        );
        assert!(Metrics::default().series(1.0).unwrap().is_empty());

        let m = run(None);
        for b in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let e = m.series(b).unwrap_err();
            assert!(
                e.to_string().starts_with(
                    "metrics `bucket_s`: must be a positive finite number of seconds, got "
                ),
                "{e}"
            );
        }
        let e = m.series(1e-9).unwrap_err();
        assert!(matches!(e, MetricsError::TooManyBuckets { .. }), "{e}");
    }

    #[test]
    fn records_are_checked() {
        let mut m = Metrics::new(None);
        assert_eq!(
            m.record_request(&req(7, 2.0, 1.0, 3.0, 4))
                .unwrap_err()
                .to_string(),
            "request 7: times must be ordered arrival ≤ first token ≤ finish, got arrival 2 first token 1 finish 3 output tokens 4"
        );
        assert_eq!(
            m.record_request(&req(8, 1.0, 2.0, 1.5, 4))
                .unwrap_err()
                .to_string(),
            "request 8: times must be ordered arrival ≤ first token ≤ finish, got arrival 1 first token 2 finish 1.5 output tokens 4"
        );
        assert!(
            m.record_request(&req(9, f64::NAN, 1.0, 2.0, 1))
                .unwrap_err()
                .to_string()
                .starts_with(
                    "request 9: times must be finite, non-negative seconds, got arrival NaN"
                )
        );
        assert_eq!(
            m.record_request(&req(3, 1.0, 2.0, 3.0, 0))
                .unwrap_err()
                .to_string(),
            "request 3: a finished request has at least 1 output token, got arrival 1 first token 2 finish 3 output tokens 0"
        );
        assert_eq!(
            m.record_tokens(-1.0, 3).unwrap_err().to_string(),
            "metrics `t_s`: must be a finite, non-negative number of seconds since the run started, got -1"
        );
        assert!(m.record_step(f64::INFINITY).is_err());
        assert!(m.requests().is_empty());
        assert_eq!(m.span(), None);
        let s = m.summary(None);
        assert_eq!(
            (s.start_s, s.end_s, s.requests, s.tokens_per_s),
            (0.0, 0.0, 0, 0.0)
        );
    }

    #[test]
    fn expert_load_add_merge_reset() {
        let mut a = ExpertLoad::default();
        a.add(3, 2, 5);
        a.add(3, 0, 1);
        a.add(1, 0, 4);
        a.add(3, 2, 1);
        assert_eq!(a.layers[&3], [1, 0, 6]);
        assert_eq!(a.layers[&1], [4]);

        let mut b = ExpertLoad::zeroed([1, 3, 5], 4);
        b.add(1, 3, 2);
        b.merge(&a);
        assert_eq!(b.layers[&1], [4, 0, 0, 2]);
        assert_eq!(b.layers[&3], [1, 0, 6, 0]);
        assert_eq!(b.layers[&5], [0, 0, 0, 0]);
        assert_eq!(b.total(), 13);

        // Merging a wider load widens; the other way keeps the width.
        let mut c = a.clone();
        c.merge(&b);
        assert_eq!(c.layers[&3], [2, 0, 12, 0]);
        assert_eq!(c.layers[&5], [0, 0, 0, 0]);

        let f = b.as_f64();
        assert_eq!(f.keys().copied().collect::<Vec<_>>(), [1, 3, 5]);
        assert_eq!(f[&1], [4.0, 0.0, 0.0, 2.0]);
        assert_eq!(f[&3], [1.0, 0.0, 6.0, 0.0]);

        b.reset();
        assert_eq!(b, ExpertLoad::zeroed([1, 3, 5], 4));
        assert_eq!(b.total(), 0);

        let mut s = ExpertLoad::default();
        s.add(0, 0, u64::MAX);
        s.add(0, 0, 1);
        assert_eq!(s.layers[&0], [u64::MAX]);
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<ExpertLoad>(&json).unwrap(), s);
    }
}
