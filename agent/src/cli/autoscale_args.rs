//! `emoe-agent serve --autoscale slo` and its flags.

use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};

use emoe_core::autoscale::{Config, DEFAULT_MARGIN, DEFAULT_MIN_REQUESTS, secs};
use emoe_core::metrics::Slo;

use crate::cluster::NodeOptions;
use crate::daemon::Daemon;
use crate::exit::CliError;

/// The bounds of every autoscaler duration.
const DURATION: std::ops::RangeInclusive<Duration> =
    Duration::from_millis(1)..=Duration::from_secs(3600);

/// Largest DP the flags accept (a node has far fewer devices).
const MAX_DP: u32 = 1024;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// No autoscaling.
    #[default]
    Off,
    /// Scale one TP group up or down to keep the latency SLO.
    Slo,
}

#[derive(Debug, Args)]
pub struct AutoscaleArgs {
    /// Scale DP by one TP group to keep the latency SLO: up when SLO attainment over the
    /// window falls below --slo-threshold, down when one group fewer would still meet it.
    #[arg(long, value_enum, default_value_t = Mode::Off)]
    pub autoscale: Mode,
    /// TTFT SLO (α): a request meets the SLO with TTFT at most this.
    #[arg(long, default_value = "2s", value_parser = parse_duration, value_name = "DURATION")]
    pub slo_ttft: Duration,
    /// TPOT SLO (β): a request meets the SLO with TPOT at most this.
    #[arg(long, default_value = "200ms", value_parser = parse_duration, value_name = "DURATION")]
    pub slo_tpot: Duration,
    /// The finished requests a decision looks at.
    #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    pub slo_window: Duration,
    /// Scale up when the share of requests meeting the SLO falls below this (0 < x <= 1).
    #[arg(long, default_value_t = 0.9, value_parser = parse_threshold)]
    pub slo_threshold: f64,
    /// Fewest TP groups (DP) the autoscaler scales down to.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=MAX_DP as i64))]
    pub min_dp: u32,
    /// Most TP groups (DP) the autoscaler scales up to (default: as many as the node's devices
    /// hold).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=MAX_DP as i64))]
    pub max_dp: Option<u32>,
    /// No decision within this long of the previous one.
    #[arg(long, default_value = "15s", value_parser = parse_duration, value_name = "DURATION")]
    pub autoscale_cooldown: Duration,
}

/// A duration within 1ms..=1h.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim()).map_err(|e| {
        format!(
            "`{}` is not a duration like 2s or 200ms ({e})",
            emoe_core::echo::echo(s)
        )
    })?;
    if !DURATION.contains(&d) {
        return Err(format!(
            "`{}` is outside 1ms..=1h",
            emoe_core::echo::echo(s)
        ));
    }
    Ok(d)
}

/// An attainment threshold within 0 < x <= 1.
fn parse_threshold(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{}` is not a number", emoe_core::echo::echo(s)))?;
    if !(v > 0.0 && v <= 1.0) {
        return Err(format!(
            "`{}` is outside 0 < x <= 1",
            emoe_core::echo::echo(s)
        ));
    }
    Ok(v)
}

impl AutoscaleArgs {
    /// The DP range for a node of `devices` devices (`None`: not known yet) starting at DP
    /// `dp`, TP `tp`; a range that cannot hold is refused (exit 2) naming both sides. The
    /// maximum is `None` while it depends on the devices.
    fn range(&self, devices: Option<u32>, dp: u32, tp: u32) -> Result<Option<u32>, CliError> {
        let usage = |m: String| Err(CliError::usage(anyhow::anyhow!(m)));
        let fit = devices.map(|n| n / tp.max(1));
        let max = self.max_dp.or(fit.map(|f| f.max(dp)));
        let max_flag = |m: u32| match self.max_dp {
            Some(_) => format!("--max-dp {m}"),
            None => format!("--max-dp {m} (the default: as many TP groups as the devices hold)"),
        };
        if let Some(max) = max
            && self.min_dp > max
        {
            return usage(format!(
                "--min-dp {} is above {}: the range is empty",
                self.min_dp,
                max_flag(max)
            ));
        }
        if self.min_dp > dp {
            return usage(format!(
                "--min-dp {} is above the starting DP {dp} (--config): start within the range",
                self.min_dp
            ));
        }
        if let Some(max) = max
            && max < dp
        {
            return usage(format!(
                "{} is below the starting DP {dp} (--config): start within the range",
                max_flag(max)
            ));
        }
        if let (Some(max), Some(fit), Some(n)) = (max, fit, devices)
            && max > fit
        {
            return usage(format!(
                "--max-dp {max} needs {} devices at TP {tp}; the node has {n}",
                u64::from(max) * u64::from(tp)
            ));
        }
        Ok(max)
    }

    /// The policy's settings for a node of `devices` devices starting at DP `dp`, TP `tp`.
    pub fn config(&self, devices: u32, dp: u32, tp: u32) -> Result<Config, CliError> {
        let max_dp = self.range(Some(devices), dp, tp)?.unwrap_or(dp);
        let cfg = Config {
            slo: Slo {
                ttft_s: self.slo_ttft.as_secs_f64(),
                tpot_s: self.slo_tpot.as_secs_f64(),
            },
            threshold: self.slo_threshold,
            window_s: self.slo_window.as_secs_f64(),
            cooldown_s: self.autoscale_cooldown.as_secs_f64(),
            margin: DEFAULT_MARGIN,
            min_dp: self.min_dp,
            max_dp,
            min_requests: DEFAULT_MIN_REQUESTS,
        };
        cfg.validate()
            .map_err(|e| CliError::usage(anyhow::anyhow!(e)))?;
        Ok(cfg)
    }

    /// Build the daemon with `build`; with `--autoscale slo`, the flags are checked against
    /// the starting config first (a bad range is refused before the model loads), then
    /// against the node's devices, and the autoscaler is turned on.
    pub fn build(
        &self,
        o: &NodeOptions,
        build: impl FnOnce() -> Result<(Arc<Daemon>, u32), CliError>,
    ) -> Result<(Arc<Daemon>, u32), CliError> {
        if self.autoscale == Mode::Off {
            return build();
        }
        self.range(o.devices, o.config.dp(), o.config.tp())?;
        let (daemon, vocab) = build()?;
        let active = daemon
            .active_parallel_config()
            .map_err(|e| CliError::failed(anyhow::anyhow!(e)))?;
        let devices = u32::try_from(daemon.devices()).unwrap_or(u32::MAX);
        let cfg = self.config(devices, active.dp(), active.tp())?;
        daemon
            .enable_autoscale(cfg)
            .map_err(|e| CliError::usage(anyhow::anyhow!(e)))?;
        eprintln!(
            "emoe-agent: autoscaling DP {}..={} on the SLO TTFT ≤ {}, TPOT ≤ {} (≥ {:.0}% over {})",
            cfg.min_dp,
            cfg.max_dp,
            secs(cfg.slo.ttft_s),
            secs(cfg.slo.tpot_s),
            cfg.threshold * 100.0,
            secs(cfg.window_s),
        );
        Ok((daemon, vocab))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(min_dp: u32, max_dp: Option<u32>) -> AutoscaleArgs {
        AutoscaleArgs {
            autoscale: Mode::Slo,
            slo_ttft: Duration::from_secs(2),
            slo_tpot: Duration::from_millis(200),
            slo_window: Duration::from_secs(30),
            slo_threshold: 0.9,
            min_dp,
            max_dp,
            autoscale_cooldown: Duration::from_secs(15),
        }
    }

    #[test]
    fn durations_and_thresholds_are_bounded() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        for bad in ["0s", "2h", "soon", "-1s"] {
            assert!(
                parse_duration(bad)
                    .unwrap_err()
                    .contains(&format!("`{bad}`")),
                "{bad}"
            );
        }
        assert_eq!(parse_threshold("0.95"), Ok(0.95));
        for bad in ["0", "1.01", "NaN", "-0.5", "most"] {
            assert!(
                parse_threshold(bad)
                    .unwrap_err()
                    .contains(&format!("`{bad}`")),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_dp_range_is_checked_against_the_node() {
        // 8 devices at TP 2: up to DP 4 by default.
        assert_eq!(args(1, None).config(8, 2, 2).unwrap().max_dp, 4);
        for (a, dp, want) in [
            (
                args(3, Some(2)),
                2,
                "--min-dp 3 is above --max-dp 2: the range is empty",
            ),
            (
                args(5, None),
                4,
                "--min-dp 5 is above --max-dp 4 (the default",
            ),
            (args(3, None), 2, "--min-dp 3 is above the starting DP 2"),
            (args(1, Some(1)), 2, "--max-dp 1 is below the starting DP 2"),
            (
                args(1, Some(5)),
                2,
                "--max-dp 5 needs 10 devices at TP 2; the node has 8",
            ),
        ] {
            let e = a.config(8, dp, 2).unwrap_err();
            assert_eq!(e.code, crate::exit::USAGE);
            let m = format!("{:#}", e.error);
            assert!(m.contains(want), "{m}");
        }
    }
}
