//! The SLO autoscaler's policy: pure and synchronous; the caller owns the clock and the node.
//!
//! Each evaluation looks at the requests that finished in the window — the last
//! [`Config::window_s`] seconds — and arrived after [`Inputs::since_s`] (the end of the last
//! configuration change: earlier ones waited on another config) — and decides one of:
//!
//! - **Up** one TP group (`DP+1`) when SLO attainment falls below [`Config::threshold`].
//!   Attainment is the share of the *counted* requests that met the SLO (TTFT ≤ α and TPOT ≤ β),
//!   where the counted requests are the window's finished ones plus the requests queued longer
//!   than α ([`Inputs::queued_over_ttft`]): those have already missed, so a stalled queue with
//!   nothing finishing still scales up.
//! - **Down** one group (`DP−1`) when the load would still meet the SLO with one group fewer.
//!   The estimate: the load spread over `dp−1` groups instead of `dp` makes each group's
//!   latencies grow by about `dp/(dp−1)`. So: attainment ≥ threshold + [`Config::margin`]
//!   (the hysteresis that keeps an up from being undone at once), the window's p90 TTFT and
//!   p90 TPOT times `dp/(dp−1)` still within α and β, nothing queued, and a full window since
//!   the last change. A node idle for a whole window (nothing finished, queued or running)
//!   also steps down.
//! - **Hold** otherwise, with the reason.
//!
//! Never within [`Config::cooldown_s`] of the last decision; never to a DP outside
//! `min_dp..=max_dp` (a DP already outside it — set by hand — is left alone); and no decision
//! on fewer than [`Config::min_requests`] counted requests (a handful of requests says little
//! about a load), except the idle step down.

use std::fmt;

use crate::metrics::{Slo, nearest_rank};

/// Counted requests below which no up or load-based down decision is taken (default).
pub const DEFAULT_MIN_REQUESTS: usize = 8;
/// Attainment above the threshold a step down needs (default): 5 points.
pub const DEFAULT_MARGIN: f64 = 0.05;

/// The autoscaler's settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Config {
    /// α (TTFT) and β (TPOT), seconds.
    pub slo: Slo,
    /// Attainment below which it scales up, in `(0, 1]`.
    pub threshold: f64,
    /// Seconds of finished requests an evaluation looks at.
    pub window_s: f64,
    /// Seconds after a decision during which no other is taken.
    pub cooldown_s: f64,
    /// Hysteresis: a step down needs attainment ≥ threshold + margin, in `[0, 1]`.
    pub margin: f64,
    pub min_dp: u32,
    pub max_dp: u32,
    /// Fewest counted requests a decision is based on (at least 1).
    pub min_requests: usize,
}

/// A setting outside its rule.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("autoscaler {field}: {rule}, got {got}")]
pub struct ConfigError {
    pub field: &'static str,
    pub rule: &'static str,
    pub got: String,
}

impl Config {
    /// Every setting within its rule.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field, rule, got: String| Err(ConfigError { field, rule, got });
        let pos = |v: f64| v.is_finite() && v > 0.0;
        if !pos(self.slo.ttft_s) {
            return bad(
                "ttft",
                "a positive number of seconds",
                self.slo.ttft_s.to_string(),
            );
        }
        if !pos(self.slo.tpot_s) {
            return bad(
                "tpot",
                "a positive number of seconds",
                self.slo.tpot_s.to_string(),
            );
        }
        if !(self.threshold > 0.0 && self.threshold <= 1.0) {
            return bad("threshold", "within 0 < x <= 1", self.threshold.to_string());
        }
        if !pos(self.window_s) {
            return bad(
                "window",
                "a positive number of seconds",
                self.window_s.to_string(),
            );
        }
        if !(self.cooldown_s.is_finite() && self.cooldown_s >= 0.0) {
            return bad("cooldown", "0 or more seconds", self.cooldown_s.to_string());
        }
        if !(0.0..=1.0).contains(&self.margin) {
            return bad("margin", "within 0..=1", self.margin.to_string());
        }
        if self.min_dp == 0 {
            return bad("min_dp", "at least 1", self.min_dp.to_string());
        }
        if self.min_dp > self.max_dp {
            return bad(
                "min_dp",
                "at most max_dp",
                format!("min_dp {} > max_dp {}", self.min_dp, self.max_dp),
            );
        }
        if self.min_requests == 0 {
            return bad("min_requests", "at least 1", "0".into());
        }
        Ok(())
    }
}

/// TPOT of a request: `(finish − first_token) / (output − 1)`; `None` for one token or none.
pub fn tpot_s(first_token_s: f64, finish_s: f64, output_tokens: u32) -> Option<f64> {
    (output_tokens > 1).then(|| (finish_s - first_token_s) / f64::from(output_tokens - 1))
}

/// One finished request as the policy sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    pub arrival_s: f64,
    pub finish_s: f64,
    pub ttft_s: f64,
    /// `None` for a single-token output: judged on its TTFT alone.
    pub tpot_s: Option<f64>,
}

impl Sample {
    fn attains(&self, slo: &Slo) -> bool {
        self.ttft_s <= slo.ttft_s && self.tpot_s.is_none_or(|t| t <= slo.tpot_s)
    }
}

/// What one evaluation sees.
#[derive(Clone, Copy, Debug)]
pub struct Inputs<'a> {
    pub now_s: f64,
    /// Finished requests (any order; those outside the window are ignored).
    pub samples: &'a [Sample],
    /// Only requests that arrived after this count, and the window starts no earlier (the end
    /// of the last configuration change).
    pub since_s: f64,
    pub dp: u32,
    pub queued: usize,
    pub running: usize,
    /// Requests queued longer than α now (they count as missing the SLO).
    pub queued_over_ttft: usize,
    pub last_decision_s: Option<f64>,
}

/// The figures a decision was made on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Figures {
    /// Met / counted; `None` when nothing was counted.
    pub attainment: Option<f64>,
    pub met: usize,
    /// Finished in the window plus queued over α.
    pub counted: usize,
    pub finished: usize,
    pub queued: usize,
    pub queued_over_ttft: usize,
    /// Seconds the window covered (shorter than the configured one after a change).
    pub span_s: f64,
    pub p90_ttft_s: Option<f64>,
    pub p90_tpot_s: Option<f64>,
}

/// Why nothing is done now.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Why {
    /// A decision was made less than the cooldown ago.
    Cooldown { until_s: f64 },
    /// Too few requests to judge the load.
    TooFew { counted: usize, need: usize },
    /// The current DP is outside `min_dp..=max_dp` (set by hand): left alone.
    OutOfRange { dp: u32 },
    /// Below the threshold, already at `max_dp`.
    AtMax,
    /// The SLO is met and one group fewer would not (or it is at `min_dp`).
    Meets,
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Why::Cooldown { until_s } => write!(f, "cooling down until {until_s:.1} s"),
            Why::TooFew { counted, need } => {
                write!(
                    f,
                    "{counted} requests in the window, {need} needed to decide"
                )
            }
            Why::OutOfRange { dp } => write!(f, "DP {dp} is outside the autoscaler's range"),
            Why::AtMax => write!(f, "the SLO is missed but DP is at its maximum"),
            Why::Meets => write!(f, "the SLO is met"),
        }
    }
}

/// The policy's answer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Decision {
    Hold { why: Why, figures: Figures },
    Up { to_dp: u32, figures: Figures },
    Down { to_dp: u32, figures: Figures },
}

impl Decision {
    pub fn figures(&self) -> &Figures {
        match self {
            Decision::Hold { figures, .. }
            | Decision::Up { figures, .. }
            | Decision::Down { figures, .. } => figures,
        }
    }

    /// The reason in words with its figures, e.g. "SLO attainment 62% < 90% over 30 s
    /// (TTFT ≤ 2 s, TPOT ≤ 100 ms; 41 requests)".
    pub fn explain(&self, cfg: &Config) -> String {
        let f = self.figures();
        let att = f.attainment.map_or("n/a".into(), pct);
        let slo = format!(
            "TTFT ≤ {}, TPOT ≤ {}; {} requests{}",
            secs(cfg.slo.ttft_s),
            secs(cfg.slo.tpot_s),
            f.counted,
            if f.queued_over_ttft > 0 {
                format!(
                    ", {} of them queued longer than the TTFT SLO",
                    f.queued_over_ttft
                )
            } else {
                String::new()
            }
        );
        let span = secs(f.span_s);
        match self {
            Decision::Up { .. } => format!(
                "SLO attainment {att} < {} over {span} ({slo})",
                pct(cfg.threshold)
            ),
            Decision::Down { .. } if f.finished == 0 => {
                format!("idle for {span}: nothing finished, queued or running ({slo})")
            }
            Decision::Down { to_dp, .. } => {
                let k = f64::from(*to_dp + 1) / f64::from(*to_dp);
                format!(
                    "SLO attainment {att} ≥ {} over {span}, and with one group fewer p90 TTFT \
                     {} ×{k:.2} = {} and p90 TPOT {} ×{k:.2} = {} stay within it, nothing \
                     queued ({slo})",
                    pct((cfg.threshold + cfg.margin).min(1.0)),
                    opt_secs(f.p90_ttft_s),
                    opt_secs(f.p90_ttft_s.map(|v| v * k)),
                    opt_secs(f.p90_tpot_s),
                    opt_secs(f.p90_tpot_s.map(|v| v * k)),
                )
            }
            Decision::Hold { why, .. } => {
                format!("hold: {why} (attainment {att} over {span}; {slo})")
            }
        }
    }
}

fn pct(v: f64) -> String {
    format!("{:.0}%", v * 100.0)
}

/// Seconds in the unit that reads best: "2 s", "100 ms", "1.5 ms".
pub fn secs(v: f64) -> String {
    if v >= 1.0 {
        format!("{} s", trim(v))
    } else {
        format!("{} ms", trim(v * 1000.0))
    }
}

fn opt_secs(v: Option<f64>) -> String {
    v.map_or("n/a".into(), secs)
}

fn trim(v: f64) -> String {
    let s = format!("{v:.1}");
    s.strip_suffix(".0").map_or(s.clone(), str::to_string)
}

/// Evaluate the policy once.
pub fn decide(cfg: &Config, i: &Inputs<'_>) -> Decision {
    let from = (i.now_s - cfg.window_s).max(i.since_s);
    let window: Vec<&Sample> = i
        .samples
        .iter()
        .filter(|s| s.finish_s >= from && s.finish_s <= i.now_s && s.arrival_s >= i.since_s)
        .collect();
    let met = window.iter().filter(|s| s.attains(&cfg.slo)).count();
    let over = i.queued_over_ttft.min(i.queued);
    let counted = window.len() + over;
    let mut ttft: Vec<f64> = window.iter().map(|s| s.ttft_s).collect();
    let mut tpot: Vec<f64> = window.iter().filter_map(|s| s.tpot_s).collect();
    ttft.sort_by(f64::total_cmp);
    tpot.sort_by(f64::total_cmp);
    let figures = Figures {
        attainment: (counted > 0).then(|| met as f64 / counted as f64),
        met,
        counted,
        finished: window.len(),
        queued: i.queued,
        queued_over_ttft: over,
        span_s: (i.now_s - from).max(0.0),
        p90_ttft_s: nearest_rank(&ttft, 90),
        p90_tpot_s: nearest_rank(&tpot, 90),
    };
    let hold = |why| Decision::Hold { why, figures };
    if let Some(last) = i.last_decision_s {
        let until_s = last + cfg.cooldown_s;
        // A NaN clock holds too.
        if i.now_s < until_s || i.now_s.is_nan() {
            return hold(Why::Cooldown { until_s });
        }
    }
    if i.dp < cfg.min_dp || i.dp > cfg.max_dp {
        return hold(Why::OutOfRange { dp: i.dp });
    }
    let idle =
        counted == 0 && i.queued == 0 && i.running == 0 && i.now_s - i.since_s >= cfg.window_s;
    if idle {
        return if i.dp > cfg.min_dp {
            Decision::Down {
                to_dp: i.dp - 1,
                figures,
            }
        } else {
            hold(Why::Meets)
        };
    }
    if counted < cfg.min_requests {
        return hold(Why::TooFew {
            counted,
            need: cfg.min_requests,
        });
    }
    let att = met as f64 / counted as f64;
    if att < cfg.threshold {
        return if i.dp < cfg.max_dp {
            Decision::Up {
                to_dp: i.dp + 1,
                figures,
            }
        } else {
            hold(Why::AtMax)
        };
    }
    // A step down waits for a full window since the last change: shedding capacity on the
    // first few requests after it would undo an up at once.
    let full = i.now_s - i.since_s >= cfg.window_s;
    if full && i.dp > cfg.min_dp && i.queued == 0 && window.len() >= cfg.min_requests {
        let k = f64::from(i.dp) / f64::from(i.dp - 1);
        let fits = |p: Option<f64>, slo: f64| p.is_none_or(|v| v * k <= slo);
        if att >= (cfg.threshold + cfg.margin).min(1.0)
            && fits(figures.p90_ttft_s, cfg.slo.ttft_s)
            && fits(figures.p90_tpot_s, cfg.slo.tpot_s)
        {
            return Decision::Down {
                to_dp: i.dp - 1,
                figures,
            };
        }
    }
    hold(Why::Meets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cfg() -> Config {
        Config {
            slo: Slo {
                ttft_s: 2.0,
                tpot_s: 0.1,
            },
            threshold: 0.9,
            window_s: 30.0,
            cooldown_s: 15.0,
            margin: DEFAULT_MARGIN,
            min_dp: 1,
            max_dp: 4,
            min_requests: DEFAULT_MIN_REQUESTS,
        }
    }

    fn samples(n: usize, ttft_s: f64, tpot_s: f64, at: f64) -> Vec<Sample> {
        (0..n)
            .map(|k| Sample {
                arrival_s: at - k as f64 * 0.1 - ttft_s - 1.0,
                finish_s: at - k as f64 * 0.1,
                ttft_s,
                tpot_s: Some(tpot_s),
            })
            .collect()
    }

    fn inputs(s: &[Sample], dp: u32) -> Inputs<'_> {
        Inputs {
            now_s: 100.0,
            samples: s,
            since_s: 0.0,
            dp,
            queued: 0,
            running: 1,
            queued_over_ttft: 0,
            last_decision_s: None,
        }
    }

    #[test]
    fn tpot_is_per_token_after_the_first() {
        assert_eq!(tpot_s(1.0, 3.0, 5), Some(0.5));
        assert_eq!(tpot_s(1.0, 3.0, 1), None);
        assert_eq!(tpot_s(1.0, 3.0, 0), None);
    }

    #[test]
    fn missing_the_slo_scales_up_one_group() {
        let mut s = samples(20, 3.0, 0.05, 99.0);
        s.extend(samples(20, 0.5, 0.05, 98.0));
        let d = decide(&cfg(), &inputs(&s, 2));
        let Decision::Up { to_dp: 3, figures } = d else {
            panic!("{d:?}")
        };
        assert_eq!(figures.attainment, Some(0.5));
        assert_eq!(figures.counted, 40);
        let why = d.explain(&cfg());
        assert!(
            why.contains("50% < 90% over 30 s") && why.contains("TTFT ≤ 2 s, TPOT ≤ 100 ms"),
            "{why}"
        );
    }

    #[test]
    fn a_stalled_queue_scales_up_with_nothing_finished() {
        let mut i = inputs(&[], 1);
        i.queued = 10;
        i.queued_over_ttft = 9;
        let d = decide(&cfg(), &i);
        assert!(matches!(d, Decision::Up { to_dp: 2, .. }), "{d:?}");
        assert_eq!(d.figures().attainment, Some(0.0));
        assert!(d.explain(&cfg()).contains("9 of them queued longer"));
    }

    #[test]
    fn few_requests_decide_nothing() {
        let s = samples(7, 9.0, 9.0, 99.0);
        let d = decide(&cfg(), &inputs(&s, 2));
        assert!(
            matches!(
                d,
                Decision::Hold {
                    why: Why::TooFew {
                        counted: 7,
                        need: 8
                    },
                    ..
                }
            ),
            "{d:?}"
        );
    }

    #[test]
    fn requests_outside_the_window_or_before_the_change_do_not_count() {
        let s = samples(40, 9.0, 9.0, 60.0);
        assert!(matches!(
            decide(&cfg(), &inputs(&s, 2)),
            Decision::Hold {
                why: Why::TooFew { counted: 0, .. },
                ..
            }
        ));
        let s = samples(40, 9.0, 9.0, 99.0);
        let mut i = inputs(&s, 2);
        i.since_s = 99.5;
        assert!(matches!(
            decide(&cfg(), &i),
            Decision::Hold {
                why: Why::TooFew { counted: 0, .. },
                ..
            }
        ));
        // Finished after the change but arrived before it (they waited on the old config).
        i.since_s = 95.0;
        assert!(s.iter().all(|x| x.finish_s >= 95.0 && x.arrival_s < 95.0));
        assert!(matches!(
            decide(&cfg(), &i),
            Decision::Hold {
                why: Why::TooFew { counted: 0, .. },
                ..
            }
        ));
    }

    #[test]
    fn light_load_scales_down_and_heavier_load_holds() {
        // p90 TTFT 0.5 s ×2 = 1 s ≤ 2 s, TPOT 20 ms ×2 ≤ 100 ms.
        let s = samples(20, 0.5, 0.02, 99.0);
        let d = decide(&cfg(), &inputs(&s, 2));
        assert!(matches!(d, Decision::Down { to_dp: 1, .. }), "{d:?}");
        assert!(d.explain(&cfg()).contains("×2.00"), "{}", d.explain(&cfg()));
        // TPOT 60 ms ×2 = 120 ms > 100 ms: one group fewer would miss.
        let s = samples(20, 0.5, 0.06, 99.0);
        let d = decide(&cfg(), &inputs(&s, 2));
        assert!(
            matches!(
                d,
                Decision::Hold {
                    why: Why::Meets,
                    ..
                }
            ),
            "{d:?}"
        );
        // ...but ×4/3 from dp4 fits.
        let d = decide(&cfg(), &inputs(&s, 4));
        assert!(matches!(d, Decision::Down { to_dp: 3, .. }), "{d:?}");
        // Anything queued holds, and so does a window not yet full since the last change.
        let s = samples(20, 0.5, 0.02, 99.0);
        let mut i = inputs(&s, 2);
        i.queued = 1;
        assert!(matches!(decide(&cfg(), &i), Decision::Hold { .. }));
        let mut i = inputs(&s, 2);
        i.since_s = 80.0;
        assert!(s.iter().all(|x| x.arrival_s >= 80.0));
        assert!(matches!(
            decide(&cfg(), &i),
            Decision::Hold {
                why: Why::Meets,
                ..
            }
        ));
    }

    #[test]
    fn the_margin_keeps_a_down_from_following_an_up() {
        // 92% attainment: above the threshold, below threshold + margin.
        let mut s = samples(92, 0.1, 0.01, 99.0);
        s.extend(samples(8, 5.0, 0.01, 99.0));
        let d = decide(&cfg(), &inputs(&s, 2));
        assert!(
            matches!(
                d,
                Decision::Hold {
                    why: Why::Meets,
                    ..
                }
            ),
            "{d:?}"
        );
    }

    #[test]
    fn bounds_and_cooldown_hold() {
        let bad = samples(20, 9.0, 9.0, 99.0);
        let good = samples(20, 0.1, 0.001, 99.0);
        assert!(matches!(
            decide(&cfg(), &inputs(&bad, 4)),
            Decision::Hold {
                why: Why::AtMax,
                ..
            }
        ));
        assert!(matches!(
            decide(&cfg(), &inputs(&good, 1)),
            Decision::Hold {
                why: Why::Meets,
                ..
            }
        ));
        assert!(matches!(
            decide(&cfg(), &inputs(&bad, 6)),
            Decision::Hold {
                why: Why::OutOfRange { dp: 6 },
                ..
            }
        ));
        let mut i = inputs(&bad, 2);
        i.last_decision_s = Some(90.0);
        assert!(matches!(
            decide(&cfg(), &i),
            Decision::Hold {
                why: Why::Cooldown { until_s: 105.0 },
                ..
            }
        ));
        i.last_decision_s = Some(85.0);
        assert!(matches!(decide(&cfg(), &i), Decision::Up { to_dp: 3, .. }));
    }

    #[test]
    fn an_idle_node_steps_down_after_a_whole_window() {
        let mut i = inputs(&[], 3);
        i.running = 0;
        assert!(matches!(
            decide(&cfg(), &i),
            Decision::Down { to_dp: 2, .. }
        ));
        i.since_s = 80.0;
        assert!(matches!(decide(&cfg(), &i), Decision::Hold { .. }));
        i.since_s = 0.0;
        i.running = 1;
        assert!(matches!(decide(&cfg(), &i), Decision::Hold { .. }));
    }

    #[test]
    fn settings_are_checked() {
        assert_eq!(cfg().validate(), Ok(()));
        let mut c = cfg();
        c.min_dp = 5;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("min_dp 5 > max_dp 4"), "{e}");
        for f in [
            |c: &mut Config| c.threshold = 0.0,
            |c: &mut Config| c.threshold = 1.5,
            |c: &mut Config| c.slo.ttft_s = f64::NAN,
            |c: &mut Config| c.window_s = 0.0,
            |c: &mut Config| c.min_dp = 0,
            |c: &mut Config| c.min_requests = 0,
        ] {
            let mut c = cfg();
            f(&mut c);
            assert!(c.validate().is_err(), "{c:?}");
        }
    }

    fn arb_sample() -> impl Strategy<Value = Sample> {
        (0.0..40.0f64, 0.0..5.0f64, proptest::option::of(0.0..0.3f64)).prop_map(
            |(back, ttft_s, tpot_s)| Sample {
                arrival_s: -back - ttft_s - 1.0,
                finish_s: -back,
                ttft_s,
                tpot_s,
            },
        )
    }

    proptest! {
        /// Over a run of evaluations: targets stay within min..=max and one group away, two
        /// decisions are never closer than the cooldown, an up only below the threshold and a
        /// down only at threshold + margin or idle.
        #[test]
        fn decisions_respect_bounds_cooldown_and_exclusivity(
            min_dp in 1u32..4,
            span in 0u32..4,
            start in 1u32..8,
            cooldown_s in 0.0..20.0f64,
            threshold in 0.05..=1.0f64,
            steps in proptest::collection::vec(
                (0.1..10.0f64, proptest::collection::vec(arb_sample(), 0..30), 0usize..20,
                 0usize..20, 0usize..3),
                1..40),
        ) {
            let c = Config {
                threshold,
                cooldown_s,
                min_dp,
                max_dp: min_dp + span,
                min_requests: 4,
                ..cfg()
            };
            let mut dp = start;
            let mut now = 0.0;
            let mut last: Option<f64> = None;
            for (dt, mut s, queued, over, running) in steps {
                now += dt;
                for x in &mut s {
                    x.finish_s += now;
                    x.arrival_s += now;
                }
                let i = Inputs {
                    now_s: now,
                    samples: &s,
                    since_s: 0.0,
                    dp,
                    queued,
                    running,
                    queued_over_ttft: over,
                    last_decision_s: last,
                };
                let d = decide(&c, &i);
                let f = *d.figures();
                prop_assert!(f.queued_over_ttft <= queued);
                match d {
                    Decision::Hold { .. } => {}
                    Decision::Up { to_dp, .. } | Decision::Down { to_dp, .. } => {
                        prop_assert!((c.min_dp..=c.max_dp).contains(&to_dp), "{d:?}");
                        prop_assert!((c.min_dp..=c.max_dp).contains(&dp));
                        prop_assert_eq!(to_dp.abs_diff(dp), 1);
                        if let Some(l) = last {
                            prop_assert!(now - l >= c.cooldown_s);
                        }
                        if matches!(d, Decision::Up { .. }) {
                            prop_assert!(to_dp == dp + 1);
                            prop_assert!(f.attainment.unwrap() < c.threshold);
                            prop_assert!(f.counted >= c.min_requests);
                        } else {
                            prop_assert!(to_dp + 1 == dp);
                            prop_assert_eq!(queued, 0);
                            let idle = f.counted == 0 && running == 0;
                            prop_assert!(
                                idle || f.attainment.unwrap()
                                    >= (c.threshold + c.margin).min(1.0)
                            );
                        }
                        dp = to_dp;
                        last = Some(now);
                    }
                }
            }
        }
    }
}
